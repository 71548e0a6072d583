import pytest
import torch

from preimage.errors import InvalidTargetError
from preimage.invert import invert, invert_images
from preimage.representations.base import Representation


class Pool(Representation):
    input_channels = (1, 3)

    def forward(self, x):
        return torch.nn.functional.avg_pool2d(x, 4)


def test_batched_shapes_restarts_and_settings():
    imgs = torch.rand(2, 1, 16, 16) * 255
    res = invert(Pool(), imgs, restarts=3, lambda_tv=[0.5, 5.0], iterations=40, lr=5e-3, progress=False)
    assert res.reconstructions.shape == (2, 3, 2, 1, 16, 16)
    assert res.codes.shape == (2, 3, 2, 1, 4, 4)
    assert res.relative_errors.shape == (2, 3, 2)
    # restarts start from different noise, so their results differ
    assert not torch.allclose(res.reconstructions[0, 0, 0], res.reconstructions[0, 1, 0])
    # more TV → smoother result (lower raw TV per unit λ)
    tv_low = res.energy["tv"][:, :, 0] / 0.5
    tv_high = res.energy["tv"][:, :, 1] / 5.0
    assert (tv_high < tv_low).all()
    assert res.best().shape == (2, 2, 1, 16, 16)


def test_reconstruction_matches_code_of_a_smooth_image():
    x = torch.linspace(60, 200, 32).view(1, 1, 1, 32).expand(1, 1, 32, 32).contiguous()
    res = invert(Pool(), x, iterations=300, lr=1e-2, lambda_tv=0.5, progress=False)
    assert res.relative_errors.item() < 0.05


def test_chunks_give_the_same_answer_as_one_batch():
    imgs = torch.rand(3, 1, 16, 16) * 255
    a = invert(Pool(), imgs, iterations=20, lr=1e-2, progress=False)
    b = invert(Pool(), imgs, iterations=20, lr=1e-2, progress=False, max_batch=2)
    assert torch.allclose(a.reconstructions, b.reconstructions, atol=1e-4)


def test_invert_from_code_and_bad_targets():
    code = torch.rand(1, 1, 4, 4) * 100 + 10
    res = invert(Pool(), target=code, image_shape=(1, 16, 16), iterations=10, lr=1e-2, progress=False)
    assert res.reconstructions.shape == (1, 1, 1, 1, 16, 16)
    bad = code.clone()
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(InvalidTargetError, match="NaN/Inf"):
        invert(Pool(), target=bad, image_shape=(1, 16, 16), progress=False)
    with pytest.raises(ValueError, match="either images"):
        invert(Pool(), target=code)
    with pytest.raises(ValueError, match="equal"):
        invert(Pool(), torch.rand(1, 1, 16, 16), lambda_tv=[1, 2], lambda_alpha=[1, 2, 3], progress=False)


def test_invert_images_groups_sizes_and_keeps_order():
    ims = [torch.rand(1, 16, 16) * 255, torch.rand(1, 20, 24) * 255, torch.rand(1, 16, 16) * 255]
    out = invert_images(Pool(), ims, iterations=5, lr=1e-2, progress=False)
    assert [tuple(o.reconstructions.shape[-2:]) for o in out] == [(16, 16), (20, 24), (16, 16)]
    assert torch.equal(out[2].targets[0], Pool()(ims[2][None])[0])


def test_default_tv_weight_is_the_representations_own():
    """A representation with a ``lambda_tv`` (a CNN layer: the paper's weight for its depth) sets
    the default λ_V; others get the paper's λ_V = 5; an explicit value always wins."""
    from preimage.objective import default_lambdas

    class Deep(Pool):
        lambda_tv = 50.0

    x = torch.rand(1, 1, 16, 16) * 255
    plain = invert(Pool(), x, iterations=2, lr=1e-3, progress=False)
    deep = invert(Deep(), x, iterations=2, lr=1e-3, progress=False)
    given = invert(Deep(), x, iterations=2, lr=1e-3, lambda_tv=0.5, progress=False)
    ref = default_lambdas((1, 16, 16))[1]
    assert float(plain.lambda_tv[0]) == pytest.approx(ref)
    assert float(deep.lambda_tv[0]) == pytest.approx(10 * ref)   # β = 2: λ_V does not scale with size
    assert float(given.lambda_tv[0]) == pytest.approx(0.5)
