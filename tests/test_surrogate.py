"""preimage.models.surrogate: clipping activations with a leaky gradient, the value exact."""

import math

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from preimage.models.surrogate import leak_clipping_gradients, leaky_clip
from preimage.representations.cnn import CNNLayer


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


def test_the_pass_replaces_every_clipping_activation_and_keeps_values():
    torch.manual_seed(0)
    net = _Net().eval()
    gm = fx.symbolic_trace(net)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    exact = net(x)
    assert leak_clipping_gradients(gm, 0.05) == 6
    assert torch.equal(gm(x), exact)
    targets = [n.target for n in gm.graph.nodes if n.op in ("call_function", "call_module")]
    assert leaky_clip in targets and torch.tanh in targets and F.relu6 not in targets
    assert targets.count(torch.clamp) == 1
    # some unit clips, so the gradients differ, and only there
    g_exact = torch.autograd.grad(exact.sum(), x)[0]
    g_leaky = torch.autograd.grad(gm(x).sum(), x)[0]
    assert not torch.allclose(g_exact, g_leaky)


def test_zero_leak_changes_nothing_and_a_bad_leak_is_refused():
    gm = fx.symbolic_trace(_Net())
    code = gm.code
    assert leak_clipping_gradients(gm, 0.0) == 0 and gm.code == code
    with pytest.raises(ValueError, match="leak"):
        leak_clipping_gradients(gm, 1.0)


def test_cnn_layer_grad_leak_keeps_the_code_and_changes_the_gradient():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU6(), nn.Conv2d(8, 8, 3), nn.ReLU())
    exact = CNNLayer(net, "3", input_size=(16, 16))
    leaky = CNNLayer(net, "3", input_size=(16, 16), grad_leak=0.05)
    assert leaky.grad_leak == 0.05 and "grad_leak=0.05" in repr(leaky)
    x = (torch.rand(2, 3, 16, 16) * 255).requires_grad_()
    assert torch.equal(exact(x), leaky(x))
    g0 = torch.autograd.grad(exact(x).sum(), x)[0]
    g1 = torch.autograd.grad(leaky(x).sum(), x)[0]
    assert not torch.allclose(g0, g1)
