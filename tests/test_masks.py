"""Masks on a code: central windows, channel subsets, and their validation."""

import pytest

from preimage.errors import PreimageError
from preimage.masks import central_window_mask, channel_mask, code_mask


def test_masks():
    m = central_window_mask((10, 7, 9), 5)
    assert m.shape == (1, 10, 7, 9) and m.sum() == 10 * 25
    assert m[0, 0, 1:6, 2:7].all() and m[0, 0, 0].sum() == 0
    c = channel_mask((10, 3, 3), "first-half")
    assert c[0, :5].all() and c[0, 5:].sum() == 0
    assert channel_mask((10, 3, 3), "second-half")[0, 5:].all()
    assert channel_mask((10, 3, 3), "2:4").sum() == 2 * 9
    with pytest.raises(ValueError, match="not understood"):
        channel_mask((10, 3, 3), "third-half")


def test_code_mask_combines_window_and_channels():
    m = code_mask((10, 7, 9), window=3, channels="first-half")
    assert m.shape == (1, 10, 7, 9) and m.sum() == 5 * 9
    assert m[0, :5, 2:5, 3:6].all()
    assert code_mask((10, 7, 9)) is None


def test_code_mask_rejects_a_window_larger_than_the_map():
    with pytest.raises(PreimageError, match="does not fit the code's 14×14 map: choose 1 to 14"):
        code_mask((32, 14, 14), window=500)
    with pytest.raises(PreimageError, match="needs a spatial code"):
        code_mask((1000,), window=5)
    with pytest.raises(PreimageError, match="not understood"):
        code_mask((10, 3, 3), channels="third-half")
