"""Networks for the ONNX importer's tests and benchmark: PyTorch models exported with
``torch.onnx.export`` (a CaffeNet-like with LRN and groups, a MobileNet-like with depthwise
convolutions and residual adds, a small ResNet) and a CaffeNet ONNX file written node by node in
the ONNX model zoo's layout (``bvlc_reference_caffenet``: unnamed nodes, Caffe2 blob names
``conv1_1``, ``conv1_2`` …, input ``data_0`` in BGR minus the mean pixel)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class _LRN(torch.autograd.Function):
    """``F.local_response_norm`` exported as one ONNX ``LRN`` node (torch decomposes it otherwise)."""

    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        return F.local_response_norm(x, size, alpha, beta, k)

    @staticmethod
    def symbolic(g, x, size, alpha, beta, k):
        return g.op("LRN", x, size_i=size, alpha_f=alpha, beta_f=beta, bias_f=k)


class LRN(nn.Module):
    def forward(self, x):
        return _LRN.apply(x, 5, 1e-4, 0.75, 1.0)


def caffenet_like(width: float = 0.25, fc: int = 256, classes: int = 1000) -> nn.Module:
    """CaffeNet's layer sequence (grouped conv2/4/5, LRN after pooling, ceil-mode pools, fc6-8 as
    Linear after a flatten), with ``width`` × its channels; input 227×227."""
    c = [max(2, int(round(v * width)) // 2 * 2) for v in (96, 256, 384, 384, 256)]
    return nn.Sequential(
        nn.Conv2d(3, c[0], 11, 4), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True), LRN(),
        nn.Conv2d(c[0], c[1], 5, 1, 2, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True), LRN(),
        nn.Conv2d(c[1], c[2], 3, 1, 1), nn.ReLU(), nn.Conv2d(c[2], c[3], 3, 1, 1, groups=2), nn.ReLU(),
        nn.Conv2d(c[3], c[4], 3, 1, 1, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Flatten(), nn.Linear(c[4] * 36, fc), nn.ReLU(), nn.Dropout(), nn.Linear(fc, fc), nn.ReLU(),
        nn.Dropout(), nn.Linear(fc, classes)).eval()


class _InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        mid = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.block(x)
        return x + y if self.use_res else y


def mobilenet_like(classes: int = 1000) -> nn.Module:
    """A small MobileNet v2: depthwise convolutions, ReLU6 (Clip), residual adds, global average
    pooling; input 224×224."""
    layers = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6()]
    cfg = [(16, 16, 1), (16, 24, 2), (24, 24, 1), (24, 32, 2), (32, 32, 1), (32, 64, 2), (64, 64, 1)]
    layers += [_InvertedResidual(a, b, s, 4) for a, b, s in cfg]
    layers += [nn.Conv2d(64, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU6(),
               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(128, classes)]
    return _randomise_bn(nn.Sequential(*layers)).eval()


class _Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.down = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


def small_resnet(classes: int = 1000) -> nn.Module:
    """A ResNet-10-like: 7×7 stem, max pool, four stages of one basic block, global average pool."""
    net = nn.Sequential(nn.Conv2d(3, 16, 7, 2, 3, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
                        _Basic(16, 16, 1), _Basic(16, 32, 2), _Basic(32, 64, 2), _Basic(64, 64, 2),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes))
    return _randomise_bn(net).eval()


def _randomise_bn(net: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return net


def export(net: nn.Module, path: Path, size: int, opset: int = 13, dynamic: bool = False) -> Path:
    """``torch.onnx.export`` (the TorchScript exporter: offline, no onnxscript) at ``size``×``size``."""
    kwargs = {"dynamic_axes": {"x": {0: "N", 2: "H", 3: "W"}}} if dynamic else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(1, 3, size, size), str(path), dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["logits"], **kwargs)
    return Path(path)


# name → (out channels, in channels per group, kernel, stride, pad, groups)
_CAFFE_CONVS = {"conv1": (96, 3, 11, 4, 0, 1), "conv2": (256, 48, 5, 1, 2, 2), "conv3": (384, 256, 3, 1, 1, 1),
                "conv4": (384, 192, 3, 1, 1, 2), "conv5": (256, 192, 3, 1, 1, 2)}


def caffenet_zoo_onnx(path: Path, size: int = 227, fc: int = 4096, classes: int = 1000, seed: int = 0,
                      opset: int = 9) -> Path:
    """A CaffeNet ONNX file laid out like the model zoo's ``bvlc_reference_caffenet`` (nodes
    without names; outputs ``conv1_1``, ``conv1_2`` (the in-place ReLU) … ``fc6_1``, ``fc6_2``,
    ``fc6_3`` (dropout), ``prob_1``; input ``data_0`` ``(1, 3, size, size)``), random weights;
    ``fc`` < 4096 shrinks fc6/fc7 for speed."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def weight(name, shape, fan_in):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape, dtype=np.float32)
                                              * np.float32((2.0 / fan_in) ** 0.5)), name))

    def bias(name, n):
        inits.append(numpy_helper.from_array(np.full(n, 0.01, np.float32), name))

    x = "data_0"
    for k, pool, norm in ((1, True, True), (2, True, True), (3, False, False), (4, False, False), (5, True, False)):
        name = f"conv{k}"
        cout, cpg, ks, s, p, g = _CAFFE_CONVS[name]
        weight(f"{name}_w_0", (cout, cpg, ks, ks), cpg * ks * ks)
        bias(f"{name}_b_0", cout)
        nodes.append(helper.make_node("Conv", [x, f"{name}_w_0", f"{name}_b_0"], [f"{name}_1"], kernel_shape=[ks, ks],
                                      strides=[s, s], pads=[p] * 4, group=g, dilations=[1, 1]))
        nodes.append(helper.make_node("Relu", [f"{name}_1"], [f"{name}_2"]))
        x = f"{name}_2"
        if pool:
            nodes.append(helper.make_node("MaxPool", [x], [f"pool{k}_1"], kernel_shape=[3, 3], strides=[2, 2],
                                          ))
            x = f"pool{k}_1"
        if norm:
            nodes.append(helper.make_node("LRN", [x], [f"norm{k}_1"], size=5, alpha=1e-4, beta=0.75, bias=1.0))
            x = f"norm{k}_1"
    inits.append(numpy_helper.from_array(np.array([1, -1], np.int64), "OC2_DUMMY_1"))
    nodes.append(helper.make_node("Reshape", [x, "OC2_DUMMY_1"], ["OC2_DUMMY_0"]))
    x, fan = "OC2_DUMMY_0", 256 * 6 * 6
    for k, out in ((6, fc), (7, fc), (8, classes)):
        weight(f"fc{k}_w_0", (out, fan), fan)
        bias(f"fc{k}_b_0", out)
        nodes.append(helper.make_node("Gemm", [x, f"fc{k}_w_0", f"fc{k}_b_0"], [f"fc{k}_1"], transB=1))
        x, fan = f"fc{k}_1", out
        if k < 8:
            nodes.append(helper.make_node("Relu", [x], [f"fc{k}_2"]))
            nodes.append(helper.make_node("Dropout", [f"fc{k}_2"], [f"fc{k}_3"], ratio=0.5))
            x = f"fc{k}_3"
    nodes.append(helper.make_node("Softmax", [x], ["prob_1"]))
    graph = helper.make_graph(nodes, "caffenet", [helper.make_tensor_value_info("data_0", TensorProto.FLOAT,
                                                                                 [1, 3, size, size])],
                              [helper.make_tensor_value_info("prob_1", TensorProto.FLOAT, [1, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnx-caffe2")
    model.ir_version = 4 if opset <= 9 else 7
    onnx.save(model, str(path))
    return Path(path)
