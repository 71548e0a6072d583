"""The representation contract: every attribute invert, the CLI and the experiments read is
declared on Representation with its default, and the representations set their own values."""

import importlib
import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from preimage.invert import invert
from preimage.models.receptive_field import receptive_field_box
from preimage.paper import LAMBDA_TV, lambda_tv_for_depth
from preimage.representations.base import Representation, as_representation
from preimage.representations.cnn import CNNLayer
from preimage.representations.dsift import DenseSIFT
from preimage.representations.glyph import hog_glyph
from preimage.representations.hog import HOG

CONTRACT = ("name", "input_channels", "mean_pixel", "input_size", "min_size", "lambda_tv", "schedule", "lr",
            "render_code", "receptive_field_box", "check_input")


class Pool(Representation):
    def forward(self, x):
        return F.avg_pool2d(x, 4)


class Strided(nn.Module):
    """Convolutions with strides and padding, a pooling and a global head (fc)."""

    input_size = (37, 41)

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 5, stride=2, padding=1)
        self.pool = nn.MaxPool2d(3, 2)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = self.conv2(self.pool(F.relu(self.conv1(x / 255.0))))
        return self.fc(x.mean((2, 3)))


def test_base_declares_every_attribute_with_its_default():
    for attr in CONTRACT:
        assert attr in vars(Representation) or hasattr(Representation, attr), attr
    rep = Pool()
    assert rep.name == "Pool" and Representation.name == "Representation"
    assert tuple(rep.input_channels) == (1, 3) and rep.mean_pixel == 128.0
    assert rep.input_size is None and rep.min_size == (1, 1)
    assert rep.lambda_tv == LAMBDA_TV and rep.schedule == "shallow" and rep.lr == 1e-3
    assert rep.render_code(torch.rand(2, 3, 3)) is None and rep.receptive_field_box(3) is None


def test_subclasses_name_themselves_unless_they_say_otherwise():
    class Mine(Pool):
        pass

    class Named(Pool):
        name = "my-pool"

    class Sub(Named):
        pass

    assert Mine().name == "Mine" and Named().name == "my-pool" and Sub().name == "Sub"


def test_the_representations_declare_their_values():
    hog, dsift = HOG(), DenseSIFT()
    assert (hog.name, hog.schedule, hog.lr, hog.lambda_tv) == ("HOG", "shallow", 3e-3, LAMBDA_TV)
    assert (dsift.name, dsift.schedule, dsift.lr, dsift.lambda_tv) == ("DenseSIFT", "shallow", 3e-4, LAMBDA_TV)
    for layer in ("conv1", "pool", "conv2", "fc"):
        rep = CNNLayer(Strided(), layer)
        assert (rep.name, rep.schedule, rep.lr) == ("CNNLayer", "cnn", 1e-2)
        assert rep.lambda_tv == lambda_tv_for_depth(rep.relative_depth)
    assert DenseSIFT().render_code(torch.rand(128, 2, 2)) is None


@pytest.mark.parametrize("variant", ["uoctti", "dalaltriggs"])
def test_hog_renders_its_glyph(variant):
    hog = HOG(variant=variant, num_orientations=6)
    code = hog(torch.rand(1, 1, 40, 48) * 255)[0]
    assert torch.equal(hog.render_code(code), hog_glyph(code, variant=variant))


@pytest.mark.parametrize("size", [None, (50, 61)])
def test_cnn_receptive_field_box_equals_the_models(size):
    model = Strided()
    for layer in ("conv1", "pool", "conv2", "fc"):
        rep = CNNLayer(model, layer, input_size=size)
        for window in (1, 2, 3, 5, 100):
            expected = receptive_field_box(model, layer, n=window, input_size=size)
            assert rep.receptive_field_box(window) == expected, (layer, window)
    with pytest.raises(ValueError, match="at least 1"):
        rep.receptive_field_box(0)


def test_as_representation_wraps_plain_modules():
    pool = Pool()
    assert as_representation(pool) is pool
    plain = nn.AvgPool2d(4)
    rep = as_representation(plain)
    assert isinstance(rep, Representation) and rep.name == "AvgPool2d" and rep.lr == Representation.lr
    x = torch.rand(2, 5, 8, 8)  # a plain module declares no channels: no check
    rep.check_input(x)
    assert torch.equal(rep(x), plain(x))
    with pytest.raises(TypeError, match="nn.Module"):
        as_representation(lambda x: x)


def test_invert_reads_the_contract_not_class_names():
    """A class called HOG that is not the HOG gets the contract's defaults; a plain module too."""

    class HOG(Pool):  # noqa: F811 - the name is the point
        pass

    class Fast(Pool):
        lr = 2e-3
        schedule = ((3, 1.0), (2, 0.1))

    x = torch.rand(1, 1, 16, 16) * 255
    assert invert(HOG(), x, iterations=2, progress=False).settings["lr"] == [1e-3]
    fast = invert(Fast(), x, progress=False, lambda_tv=50.0).settings
    assert fast["representation"] == "Fast" and fast["lr"] == [pytest.approx(2e-3 * 5 / 50)]
    assert fast["schedule"] == [[3, 1.0], [2, 0.1]]
    plain = invert(nn.AvgPool2d(4), x, iterations=2, progress=False).settings
    assert plain["representation"] == "AvgPool2d" and plain["lr"] == [1e-3]
    source = inspect.getsource(importlib.import_module("preimage.invert"))
    assert "getattr(" not in source and "type(rep" not in source and "inversion_defaults" not in source
