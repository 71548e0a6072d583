"""preimage.models.surrogate: clipping activations with a leaky gradient, the value exact."""

import math

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from preimage.invert import invert, resolve_schedule
from preimage.paper import CNN_SCHEDULE
from preimage.params.base import CONSTANT_SCHEDULE
from preimage.models.surrogate import LeakyClip, leak_clipping_gradients, leaky_clip, set_gradient_leak
from preimage.representations.cnn import (DEEP_CLIPPED_DEPTH, DEEP_CLIPPED_SCHEDULE, DEFAULT_GRAD_LEAK,
                                         FOURIER_OPTIMISER, QUASI_NEWTON_DEPTH, CNNLayer)


@pytest.mark.parametrize("lo, hi", [(0.0, 6.0), (0.0, math.inf), (-1.0, 1.0), (-math.inf, 2.0)])
def test_leaky_clip_is_clamp_forward_and_leaks_where_it_clips(lo, hi):
    x = torch.linspace(-3, 9, 49, requires_grad=True)
    y = leaky_clip(x, lo, hi, 0.1)
    assert torch.equal(y, x.clamp(None if math.isinf(lo) else lo, None if math.isinf(hi) else hi))
    g = torch.randn_like(x)
    y.backward(g)
    inside = (x > lo) & (x < hi)
    assert inside.any() and (~inside).any()
    assert torch.allclose(x.grad, torch.where(inside, g, 0.1 * g))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.ReLU6()
        self.conv2 = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        x = F.relu6(self.conv(x))
        x = self.act(x)
        x = F.hardtanh(torch.relu(self.conv2(x)), -0.5, 0.5)
        x = torch.clamp(x, 0.0, 0.4) + torch.clamp(x, min=x.mean())  # a bound from the graph: kept
        return F.relu(x) + torch.tanh(x)  # tanh is not clipping: kept


def _leaky_clips(gm):
    return [m for m in gm.modules() if isinstance(m, LeakyClip)]


def test_the_pass_replaces_every_clipping_activation_and_keeps_values():
    torch.manual_seed(0)
    net = _Net().eval()
    gm = fx.symbolic_trace(net)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    exact = net(x)
    assert leak_clipping_gradients(gm, 0.05) == 6
    assert len(_leaky_clips(gm)) == 6 and all(m.leak == 0.05 for m in _leaky_clips(gm))
    assert torch.equal(gm(x), exact)
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert torch.tanh in targets and F.relu6 not in targets and F.hardtanh not in targets
    assert targets.count(torch.clamp) == 1  # the bound computed in the graph
    # some unit clips, so the gradients differ, and only there
    g_exact = torch.autograd.grad(exact.sum(), x)[0]
    g_leaky = torch.autograd.grad(gm(x).sum(), x)[0]
    assert not torch.allclose(g_exact, g_leaky)


def test_at_zero_leak_values_and_gradients_are_the_original_ones_and_the_leak_switches():
    torch.manual_seed(0)
    net = _Net().eval()
    gm = fx.symbolic_trace(net)
    assert leak_clipping_gradients(gm) == 6 and {m.exact for m in _leaky_clips(gm)} == {"relu", "hardtanh", "clamp"}
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    g_net = torch.autograd.grad(net(x).sum(), x)[0]
    assert torch.equal(gm(x), net(x)) and torch.equal(torch.autograd.grad(gm(x).sum(), x)[0], g_net)
    assert set_gradient_leak(gm, 0.05) == 6
    assert not torch.allclose(torch.autograd.grad(gm(x).sum(), x)[0], g_net)
    set_gradient_leak(gm, 0.0)
    assert torch.equal(torch.autograd.grad(gm(x).sum(), x)[0], g_net)
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="leak"):
            leak_clipping_gradients(fx.symbolic_trace(_Net()), bad)
        with pytest.raises(ValueError, match="leak"):
            set_gradient_leak(gm, bad)


def _grad(rep, x):
    return torch.autograd.grad(rep(x).sum(), x)[0]


def test_cnn_layer_leaks_only_inside_leaking_gradients():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU6(), nn.Conv2d(8, 8, 3), nn.ReLU())
    exact = CNNLayer(net, "3", input_size=(16, 16), grad_leak=0.0)
    layer = CNNLayer(net, "3", input_size=(16, 16))
    assert layer.grad_leak == DEFAULT_GRAD_LEAK and exact.grad_leak == 0.0
    assert f"grad_leak={DEFAULT_GRAD_LEAK:g}" in repr(layer)
    x = (torch.rand(2, 3, 16, 16) * 255).requires_grad_()
    assert torch.equal(exact(x), layer(x)) and torch.equal(_grad(exact, x), _grad(layer, x))
    with layer.leaking_gradients(layer.grad_leak):
        assert torch.equal(exact(x), layer(x))
        assert not torch.allclose(_grad(exact, x), _grad(layer, x))
    assert torch.equal(_grad(exact, x), _grad(layer, x))  # exact again afterwards
    with pytest.raises(ValueError, match="leak"):
        CNNLayer(net, "3", input_size=(16, 16), grad_leak=1.5)


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.ReLU()

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = x + 1
        return self.act(self.conv(x))


def test_a_hook_mode_layer_has_no_leak_and_refuses_one():
    layer = CNNLayer(_Untraceable(), "conv", input_size=(8, 8))
    assert not layer.traced and layer.grad_leak == 0.0
    with layer.leaking_gradients(0.0):
        pass
    with pytest.raises(ValueError, match="leak"):
        with layer.leaking_gradients(0.05):
            pass
    with pytest.raises(ValueError, match="trace"):
        CNNLayer(_Untraceable(), "conv", input_size=(8, 8), grad_leak=0.05)


def test_invert_leaks_in_its_own_recipes_and_never_in_the_papers():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU6(), nn.Conv2d(8, 8, 3), nn.ReLU())
    layer = CNNLayer(net, "3", input_size=(16, 16))
    x = torch.rand(1, 3, 16, 16) * 255
    seen = []
    layer.register_forward_hook(lambda m, i, o: seen.append({c.leak for c in m.modules() if isinstance(c, LeakyClip)}))
    res = invert(layer, x, iterations=2, progress=False)
    assert res.settings["grad_leak"] == DEFAULT_GRAD_LEAK and {DEFAULT_GRAD_LEAK} in seen
    seen.clear()
    res = invert(layer, x, iterations=2, method="paper", progress=False)
    assert res.settings["grad_leak"] == 0.0 and all(s == {0.0} for s in seen)
    assert {c.leak for c in layer.modules() if isinstance(c, LeakyClip)} == {0.0}


def test_a_deep_clipped_code_declares_the_long_recipe_schedule_and_invert_takes_it():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU6(), nn.Conv2d(8, 8, 3), nn.ReLU())
    deep, shallow = CNNLayer(net, "3", input_size=(16, 16)), CNNLayer(net, "1", input_size=(16, 16))
    linear = CNNLayer(net, "2", input_size=(16, 16))
    assert deep.relative_depth >= DEEP_CLIPPED_DEPTH and deep.recipe_schedule == DEEP_CLIPPED_SCHEDULE
    assert shallow.recipe_schedule is None and linear.recipe_schedule is None  # shallow; not clipped
    x = torch.rand(1, 3, 16, 16) * 255
    stages = [list(s) for s in DEEP_CLIPPED_SCHEDULE]
    assert invert(deep, x, iterations=20, progress=False).settings["schedule"] == [[14, 1.0], [4, 0.3], [2, 0.1]]
    assert invert(deep, x, iterations=None, schedule=[(3, 1.0)], progress=False).settings["schedule"] == [[3, 1.0]]
    assert resolve_schedule(deep, "fourier", None, None) == tuple(map(tuple, stages))
    assert resolve_schedule(deep, "dip", None, None) == tuple(map(tuple, stages))
    assert resolve_schedule(deep, "pixel", None, None) == CNN_SCHEDULE  # pixels and the paper: theirs
    assert resolve_schedule(linear, "fourier", None, None) == CONSTANT_SCHEDULE
    hooked = CNNLayer(_Untraceable(), "act", input_size=(8, 8))
    assert hooked.relative_depth >= DEEP_CLIPPED_DEPTH and hooked.recipe_schedule == DEEP_CLIPPED_SCHEDULE
    # the deepest layers keep the Fourier image's Adam, clipped or not; shallower ones take L-BFGS
    assert deep.recipe_optimiser == {} and hooked.recipe_optimiser == {}
    assert shallow.recipe_optimiser == linear.recipe_optimiser == {"fourier": FOURIER_OPTIMISER}
    last_linear = CNNLayer(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU6(), nn.Conv2d(8, 8, 3)), "2", input_size=(16, 16))
    assert last_linear.relative_depth >= QUASI_NEWTON_DEPTH and last_linear.recipe_optimiser == {}
    assert last_linear.recipe_schedule is None
    assert invert(deep, x, iterations=2, progress=False).settings["method"] == "adam"
    assert invert(linear, x, iterations=2, progress=False).settings["method"] == "lbfgs"


def test_invert_refuses_a_bad_leak_before_optimising():
    layer = CNNLayer(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), "1", input_size=(8, 8))
    x = torch.rand(1, 3, 8, 8) * 255
    for bad in (1.0, -0.5):
        with pytest.raises(ValueError, match="leak must be in"):
            invert(layer, x, iterations=1, grad_leak=bad, progress=False)
    with pytest.raises(ValueError, match="exact gradient"):
        invert(layer, x, iterations=1, grad_leak=0.05, method="paper", progress=False)
