"""Receptive fields computed from the graph: hand-checkable nets, functional forms, unions,
fully-connected layers, and an independent check against the gradient's support."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from preimage.errors import UnknownNameError
from preimage.models.fx import trace_model
from preimage.models.receptive_field import center_window, receptive_field, receptive_field_box, receptive_fields


class Sized(nn.Sequential):
    def __init__(self, *mods, size=(32, 32)):
        super().__init__(*mods)
        self.input_size = size


def rf(model, layer):
    r = receptive_field(model, layer)
    return r.total_size[0], r.stride[0], r.start[0]


def test_stacked_convs_and_strides():
    m = Sized(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3, stride=2), nn.Conv2d(4, 4, 3))
    assert rf(m, "0") == (3, 1, 0)
    assert rf(m, "1") == (5, 1, 0)
    assert rf(m, "2") == (7, 2, 0)
    assert rf(m, "3") == (7 + 2 * 2, 2, 0)


def test_padding_dilation_and_ceil_pooling():
    m = Sized(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(3, 2, ceil_mode=True),
              nn.Conv2d(4, 4, 3, dilation=2, padding=2), nn.AvgPool2d(2), size=(30, 30))
    assert rf(m, "0") == (3, 1, -1)
    assert rf(m, "1") == (5, 2, -1)
    assert rf(m, "2") == (5 + 4 * 2, 2, -1 - 2 * 2)
    assert rf(m, "3") == (13 + 2, 4, -5)
    t = trace_model(m)
    assert t.shapes[t.node("1").name][-1] == 15  # ceil((30 - 3) / 2) + 1


def test_rectangular_kernels_are_per_axis():
    m = Sized(nn.Conv2d(3, 4, (3, 5), stride=(1, 2), padding=(0, 1)), nn.Conv2d(4, 4, (1, 3)))
    r = receptive_field(m, "1")
    assert r.size == (3, 5 + 2 * 2) and r.stride == (1, 2) and r.start == (0, -1)


class Functional(nn.Module):
    input_size = (32, 32)

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 3, 3, 3))

    def forward(self, x):
        x = F.conv2d(x, self.w, stride=2, padding=1)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = F.avg_pool2d(x, 3, stride=1, padding=1)
        x = F.pad(x, (2, 0, 1, 0))
        return torch.sigmoid(x)


def test_functional_forms_match_module_rules():
    m = Functional()
    assert rf(m, "conv2d") == (3, 2, -1)
    assert rf(m, "relu") == (3, 2, -1)
    assert rf(m, "max_pool2d") == (5, 4, -1)
    assert rf(m, "avg_pool2d") == (13, 4, -5)
    r = receptive_field(m, "pad")
    assert r.size == (13, 13) and r.start == (-5 - 4, -5 - 8)
    assert receptive_field(m, "sigmoid") == r


class Branches(nn.Module):
    input_size = (20, 20)

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 5, padding=2)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], dim=1)
        z = self.c(y) + self.a(x)          # the module ``a`` is called twice
        g = z.mean((2, 3), keepdim=True)   # global context, broadcast back
        return z * torch.sigmoid(g)


def test_elementwise_union_and_repeated_calls():
    m = Branches()
    assert rf(m, "a") == (3, 1, -1)
    assert rf(m, "b") == (5, 1, -2)
    assert rf(m, "cat") == (5, 1, -2)
    assert rf(m, "a#2") == (3, 1, -1)
    assert rf(m, "add") == (5, 1, -2)
    # a global mean covers the whole (padded) input; multiplying by it does too
    assert rf(m, "mean")[0] == 5 + 19
    r = receptive_field(m, "mul")
    assert r.total_size[0] == 24 and r.size[0] == 5 and r.fixed == (-2, -2, 22, 22)
    assert receptive_field_box(m, "mul", n=1) == (0, 0, 20, 20)
    assert receptive_field_box(m, "add", center=(7, 9), n=1) == (5, 7, 10, 12)


def test_flatten_linear_and_adaptive_pools_cover_the_input():
    m = Sized(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10), nn.ReLU(), size=(8, 8))
    assert rf(m, "2")[0] == 3 + 5 == 8 and not receptive_field(m, "2").spatial
    assert receptive_field_box(m, "3") == (0, 0, 8, 8)
    m = Sized(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(2), nn.AdaptiveMaxPool2d(1), size=(8, 8))
    assert rf(m, "1") == (4, 4, 0)
    assert rf(m, "2")[0] == 8
    # non-divisible: windows of 3 on a 5-pixel input (0-3, 1-4), all of it together
    m = Sized(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(2), nn.Flatten(), size=(5, 5))
    assert rf(m, "1")[0] == 3 and rf(m, "2")[0] == 5


def test_unknown_layer_lists_names():
    m = Sized(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(UnknownNameError, match="valid layers: 0, 1"):
        receptive_field(m, "conv9")


def test_upsampling_gives_unknown_field_with_warning():
    m = Sized(nn.Conv2d(3, 4, 3), nn.Upsample(scale_factor=2), nn.Conv2d(4, 4, 3))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        fields = receptive_fields(m)
    assert fields["0"] is not None and fields["1"] is None and fields["2"] is None


def test_center_window_matches_the_objective_mask():
    from preimage.masks import central_window_mask
    for h, w, n in [(13, 13, 5), (27, 27, 5), (6, 6, 5), (14, 13, 4), (3, 3, 5), (55, 55, 1)]:
        r0, r1, c0, c1 = center_window(h, w, n)
        mask = central_window_mask((1, h, w), n)[0, 0]
        expect = torch.zeros(h, w)
        expect[r0:r1, c0:c1] = 1
        assert torch.equal(mask, expect), (h, w, n)


# --- independent check: the support of the gradient of one unit equals its computed field ------

class Positive(nn.Module):
    """Linear (no ReLU), positive weights: every pixel in the field has a non-zero gradient."""
    input_size = (41, 37)

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 5, stride=2, padding=2)
        self.p1 = nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.c2 = nn.Conv2d(4, 4, 3, dilation=2, padding=1)
        self.c3 = nn.Conv2d(4, 4, (3, 1), padding=(1, 0))
        for p in self.parameters():
            nn.init.uniform_(p, 0.1, 1.0)

    def forward(self, x):
        y = self.c2(self.p1(self.c1(x)))
        y = y + F.pad(y, (1, 0, 0, 0))[..., :, :-1]   # shifted copy: a union
        return self.c3(y)


def _grad_support(model, layer_out, i, j, size):
    x = torch.ones(1, 3, *size, requires_grad=True)
    layer_out(x)[0, :, i, j].sum().backward()
    nz = (x.grad.abs().sum((0, 1)) > 0)
    rows, cols = nz.any(1).nonzero()[:, 0], nz.any(0).nonzero()[:, 0]
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


@pytest.mark.parametrize("layer", ["c1", "p1", "c2", "add", "c3"])
def test_field_equals_gradient_support(layer):
    from preimage.representations.cnn import CNNLayer
    m = Positive()
    rep = CNNLayer(m, layer)
    h, w = rep.output_shape[-2:]
    for i, j in [(0, 0), (h // 2, w // 3), (h - 1, w - 1)]:
        assert receptive_field_box(m, layer, center=(i, j), n=1) == _grad_support(m, rep, i, j, m.input_size)
