import numpy as np
import pytest
import torch
from PIL import Image

from preimage.errors import ImageReadError
from preimage.io.images import default_image, load_image, save_image, stretch


def test_rgb_grey_and_native(tmp_path):
    arr = (np.arange(30 * 20 * 3) % 256).astype(np.uint8).reshape(20, 30, 3)
    Image.fromarray(arr).save(tmp_path / "c.png")
    rgb = load_image(tmp_path / "c.png")
    assert rgb.shape == (3, 20, 30) and rgb.dtype == torch.float32
    assert torch.equal(rgb, torch.from_numpy(arr).permute(2, 0, 1).float())
    grey = load_image(tmp_path / "c.png", mode="grey")
    expected = arr.astype(np.float64) @ np.array([0.2989, 0.5870, 0.1140])
    assert grey.shape == (1, 20, 30) and np.allclose(grey[0].numpy(), expected, atol=1e-3)
    Image.fromarray(arr[..., 0]).save(tmp_path / "g.png")
    assert load_image(tmp_path / "g.png", mode="rgb").shape == (3, 20, 30)
    assert load_image(tmp_path / "g.png", mode="native").shape == (1, 20, 30)


def test_rgba_is_composited_on_white(tmp_path):
    arr = np.zeros((4, 4, 4), np.uint8)
    arr[..., 0] = 255
    arr[:2, ..., 3] = 255  # top half opaque red, bottom transparent
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img[:, 0, 0].tolist() == [255, 0, 0] and img[:, 3, 0].tolist() == [255, 255, 255]


def test_16bit_and_palette(tmp_path):
    arr = np.full((8, 8), 65535, np.uint16)
    arr[0, 0] = 0
    Image.fromarray(arr).save(tmp_path / "d.png")
    img = load_image(tmp_path / "d.png", mode="grey")
    assert img.max() == pytest.approx(255.0) and img.min() == 0
    p = Image.new("P", (5, 5))
    p.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    p.putpixel((1, 1), 1)
    p.save(tmp_path / "p.png")
    img = load_image(tmp_path / "p.png")
    assert img[:, 1, 1].tolist() == [10, 20, 30]


def test_bad_files_raise_clear_errors(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"this is not an image")
    with pytest.raises(ImageReadError, match="cannot read"):
        load_image(tmp_path / "junk.png")
    with pytest.raises(ImageReadError, match="folder"):
        load_image(tmp_path)
    Image.new("L", (100, 100)).save(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match="over the limit"):
        load_image(tmp_path / "big.png", max_pixels=5000)
    # a truncated JPEG
    Image.new("RGB", (64, 64), "red").save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t2.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageReadError):
        load_image(tmp_path / "t2.jpg")


def test_default_image_and_roundtrip(tmp_path):
    img, name = default_image("grey")
    assert img.shape == (1, 227, 227) and name == "astronaut"
    save_image(img, tmp_path / "x.png")
    back = load_image(tmp_path / "x.png", mode="grey")
    assert (back - img.round()).abs().max() <= 1


def test_stretch():
    x = torch.tensor([[[[-10.0, 10.0]]], [[[5.0, 5.0]]]])
    s = stretch(x)
    assert s[0].flatten().tolist() == [0.0, 255.0] and s[1].flatten().tolist() == [127.5, 127.5]
