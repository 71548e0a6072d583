"""CNNLayer (any model, any layer), list_layers, paper_lambda_tv, the model registry, the layers
table, and the MobileNets of the shared data (skipped without it)."""

import enum
import importlib.util
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from preimage.data import missing_reason, shared_dir
from preimage.errors import PreimageError, UnknownNameError
from preimage.models import MODEL_NAMES, get_model
from preimage.representations.layers_table import format_layers
from preimage.paper import lambda_tv_for_depth as paper_lambda_tv
from preimage.representations.cnn import PLAIN_EXECUTION, CNNLayer, list_layers
from helpers import node_value


class Boom(nn.Module):
    def forward(self, x):
        raise AssertionError("a module after the layer was computed")


class Small(nn.Module):
    input_size = (16, 16)
    mean_pixel = (120.0, 110.0, 100.0)

    def __init__(self, tail: nn.Module | None = None):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.conv = nn.Conv2d(8, 8, 3)
        self.drop = nn.Dropout(0.5)
        self.tail = tail if tail is not None else nn.Identity()

    def forward(self, x):
        x = self.body(x / 255.0)
        y = F.relu(self.conv(x))
        y = self.drop(y)
        return self.tail(y.flatten(1))


class Untraceable(Small):
    def forward(self, x):
        x = self.body(x / 255.0)
        if x.sum() > 0:          # data-dependent control flow: torch.fx cannot trace this
            x = x * 1.0
        return self.tail(F.relu(self.conv(x)).flatten(1))


def _intermediate(model, module, x):
    out = {}
    h = module.register_forward_hook(lambda m, i, o: out.__setitem__("y", o))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    return out["y"]


def test_truncation_computes_nothing_after_the_layer():
    m = Small(tail=nn.Linear(7, 2))     # raises (wrong input width) whenever it is called
    with pytest.raises(RuntimeError):
        m(torch.zeros(1, 3, 16, 16))
    rep = CNNLayer(m, "relu")
    assert rep.traced and "tail" not in dict(rep.net.named_modules())
    x = torch.rand(3, 3, 16, 16) * 255
    y = rep(x)
    assert y.shape == (3, 8, 6, 6) and rep.output_shape == (8, 6, 6)
    ref = Small()
    ref.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("tail")}, strict=False)
    ref.tail = nn.Identity()
    ref.eval()
    torch.testing.assert_close(y, ref(x).view(3, 8, 6, 6))
    with pytest.raises(ValueError, match="cannot be computed for a 16×16 input"):
        CNNLayer(m, "tail")


def test_outputs_equal_intermediate_activations():
    m = Small().eval()
    x = torch.rand(2, 3, 16, 16) * 255
    for name, module in [("body.0", m.body[0]), ("body.2", m.body[2]), ("conv", m.conv)]:
        torch.testing.assert_close(CNNLayer(m, name)(x), _intermediate(m, module, x))
    # a container module's name means its output (here the pooled map)
    torch.testing.assert_close(CNNLayer(m, "body")(x), _intermediate(m, m.body, x))


class NeedsNCHW(Small):
    """A net whose ``.view`` needs NCHW strides: channels-last input makes it raise."""

    def forward(self, x):
        y = self.body(x / 255.0)
        return y.view(y.shape[0], -1)


def test_chunked_channels_last_execution_equals_the_plain_pass():
    m = Small().eval()
    fast = CNNLayer(m, "conv", chunk_bytes=3 * 8 * 16 * 16 * 4)  # the largest map (8×16²) 3 images at a time
    plain = CNNLayer(m, "conv", **PLAIN_EXECUTION)
    x = torch.rand(7, 3, 16, 16) * 255
    assert fast.chunk_size(x) == 3 and plain.chunk_size(x) == 7
    assert fast.chunk_size(torch.rand(7, 3, 32, 32)) == 1  # 4× the pixels: 4× the bytes per image
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = fast(xa), plain(xb)
    assert ya.is_contiguous() and ya.shape == yb.shape == (7, 8, 6, 6)
    torch.testing.assert_close(ya, yb, rtol=1e-4, atol=1e-5)
    (ya * yb.detach()).sum().backward()
    (yb * yb.detach()).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-6)


def test_a_net_that_needs_nchw_falls_back_to_it():
    rep = CNNLayer(NeedsNCHW().eval(), "view")
    x = torch.rand(2, 3, 16, 16) * 255
    with pytest.raises(RuntimeError):  # the premise: this net fails on channels-last input
        rep.net(x.contiguous(memory_format=torch.channels_last))
    y = rep(x)
    assert rep.channels_last is False and y.shape == (2, 8 * 8 * 8)
    torch.testing.assert_close(y, rep.net(x))


def test_a_pickled_layer_keeps_its_graph():
    """The truncated graph pickles node by node (fx's own pickling re-traces and renames nodes)."""
    import pickle
    rep = CNNLayer(Small(), "relu")
    back = pickle.loads(pickle.dumps(rep))
    assert [n.name for n in back.net.graph.nodes] == [n.name for n in rep.net.graph.nodes]
    x = torch.rand(2, 3, 16, 16) * 255
    torch.testing.assert_close(back(x), rep(x), rtol=0, atol=0)
    assert back.output_shape == rep.output_shape and back.layer == rep.layer


def test_unknown_layer_lists_valid_names():
    with pytest.raises(UnknownNameError) as e:
        CNNLayer(Small(), "conv9")
    msg = str(e.value)
    assert "valid layers:" in msg and "body.0" in msg and "relu" in msg and "flatten" in msg


def test_frozen_eval_gradients_reach_the_input():
    m = Small()
    m.train()
    rep = CNNLayer(m, "drop")
    assert not m.training and all(not p.requires_grad for p in m.parameters())
    rep.train()                      # the network stays in eval mode: dropout off
    assert not rep.net.training
    x = (torch.rand(2, 3, 16, 16) * 255).requires_grad_()
    y = rep(x)
    torch.testing.assert_close(y, rep(x))
    y.pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()


def test_attributes_from_the_model_or_arguments():
    rep = CNNLayer(Small(), "conv")
    assert rep.input_size == (16, 16) and rep.mean_pixel == (120.0, 110.0, 100.0)
    assert rep.input_channels == (3,)
    rep = CNNLayer(Small(), "conv", input_size=(20, 24), mean_pixel=128)
    assert rep.input_size == (20, 24) and rep.mean_pixel == 128.0 and rep.output_shape == (8, 8, 10)
    with pytest.raises(ValueError, match="channels"):
        rep(torch.zeros(1, 1, 16, 16))


def test_hook_fallback_for_untraceable_models():
    m = Untraceable(tail=Boom())
    rep = CNNLayer(m, "conv")
    assert not rep.traced and rep.output_shape == (8, 6, 6)
    x = (torch.rand(2, 3, 16, 16) * 255).requires_grad_()
    y = rep(x)
    y.sum().backward()
    assert y.shape == (2, 8, 6, 6) and x.grad.abs().sum() > 0
    with pytest.raises(UnknownNameError, match="valid layers: .*body.0"):
        CNNLayer(m, "relu")
    infos = list_layers(Untraceable())
    assert [i.name for i in infos][:3] == ["body.0", "body.1", "body.2"] and infos[0].rf_size is None
    # the model itself still runs normally outside the representation (the hook is inactive)
    with pytest.raises(AssertionError, match="after the layer"):
        m(x)


def test_repeated_module_calls_are_numbered():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 3, 3, padding=1)
            self.r = nn.ReLU()

        def forward(self, x):
            return self.r(self.c(self.r(self.c(x))))

    m = Twice()
    names = [i.name for i in list_layers(m, input_size=(8, 8))]
    assert names == ["c", "r", "c#2", "r#2"]
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(CNNLayer(m, "c#2", input_size=(8, 8))(x), m.c(m.r(m.c(x))))


def test_list_layers_fields_and_depth():
    infos = list_layers(Small())
    by = {i.name: i for i in infos}
    assert by["body.0"].output_shape == (8, 16, 16) and by["body.0"].rf_size == (3, 3)
    assert by["body.2"].rf_size == (4, 4) and by["body.2"].rf_stride == (2, 2)
    assert by["conv"].rf_size == (8, 8) and by["flatten"].output_shape == (288,)
    assert [i.index for i in infos] == list(range(1, len(infos) + 1))
    assert infos[-1].depth == 1.0 and all(0 < i.depth <= 1 for i in infos)


def test_paper_lambda_tv_mapping():
    lams = [paper_lambda_tv(k / 20) for k in range(1, 21)]
    assert lams == [0.5] * 6 + [5.0] * 6 + [50.0] * 8
    assert paper_lambda_tv(0.0) == 0.5 and paper_lambda_tv(1.0) == 50.0
    with pytest.raises(ValueError):
        paper_lambda_tv(1.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_matches_cpu():
    m = Small()
    rep = CNNLayer(m, "conv")
    x = torch.rand(2, 3, 16, 16) * 255
    y_cpu = rep(x)
    rep = rep.to("cuda")
    xg = x.cuda().requires_grad_()
    y = rep(xg)
    y.sum().backward()
    torch.testing.assert_close(y.cpu(), y_cpu, rtol=1e-4, atol=1e-4)
    assert xg.grad is not None


# --- registry ----------------------------------------------------------------------------------

def test_unknown_model_lists_names():
    with pytest.raises(UnknownNameError) as e:
        get_model("vgg99")
    for n in MODEL_NAMES:
        assert n in str(e.value)
    assert "torchvision:NAME" in str(e.value)


def test_missing_torchvision_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)   # import torchvision → ImportError
    with pytest.raises(PreimageError, match=r"torchvision is not installed; pip install 'preimage\[torchvision\]'"):
        get_model("torchvision:alexnet")


class _TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def _fake_torchvision():
    class TinyNet_Weights(enum.Enum):
        IMAGENET1K_V1 = "v1"
        DEFAULT = "v1"

        @classmethod
        def verify(cls, obj):
            return cls[obj.replace(cls.__name__ + ".", "")] if isinstance(obj, str) else obj

        def transforms(self):
            return types.SimpleNamespace(crop_size=[32], mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])

        @property
        def meta(self):
            return {"categories": [str(i) for i in range(10)]}

    built = {}

    def get_model(name, weights=None):
        torch.manual_seed(0)
        built["net"] = _TinyNet()
        built["weights"] = weights
        return built["net"]

    models = types.SimpleNamespace(list_models=lambda module=None: ["tinynet"],
                                   get_model_weights=lambda name: TinyNet_Weights, get_model=get_model)
    tv = types.ModuleType("torchvision")
    tv.models = models
    return tv, built


def test_torchvision_wrapper_with_a_fake_torchvision(monkeypatch):
    tv, built = _fake_torchvision()
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    m = get_model("torchvision:tinynet")
    assert built["weights"].name == "IMAGENET1K_V1" and not m.training
    assert m.input_size == (32, 32) and m.mean_pixel == pytest.approx((127.5, 102.0, 76.5)) and m.num_classes == 10
    x = torch.rand(2, 3, 32, 32) * 255
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(m(x), built["net"]((x / 255 - mean) / std))
        # layer names are torchvision's own; the preprocessing is not listed
        assert [i.name for i in list_layers(m)] == ["features.0", "features.1", "pool", "flatten", "fc"]
        torch.testing.assert_close(CNNLayer(m, "features.1")(x),
                                   built["net"].features((x / 255 - mean) / std))
        torch.testing.assert_close(CNNLayer(m, "features")(x), CNNLayer(m, "features.1")(x))
    with pytest.raises(UnknownNameError, match="IMAGENET1K_V1"):
        get_model("torchvision:tinynet", weights="IMAGENET9K")
    with pytest.raises(UnknownNameError, match="torchvision:tinynet"):
        get_model("torchvision:resnet9000")
    with pytest.warns(UserWarning, match="random weights"):
        get_model("torchvision:tinynet", weights="random")
    assert built["weights"] is None


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="torchvision not installed")
def test_real_torchvision_alexnet():
    m = get_model("torchvision:alexnet", weights="random")
    rep = CNNLayer(m, "features.0")
    assert rep.output_shape == (64, 55, 55) and rep.receptive_field.size == (11, 11)


def test_format_layers_table():
    text = format_layers(Small())
    lines = text.splitlines()
    assert lines[0].startswith("Small: ") and "input 16×16" in lines[0]
    row = next(ln for ln in lines if " body.2 " in ln)
    assert "MaxPool2d" in row and "8×8×8" in row
    text = format_layers("caffenet")
    assert "355" in text and "LocalResponseNorm" in text and len(text.splitlines()) == 4 + 20


# --- the shared MobileNets ---------------------------------------------------------------------

def _mobilenet_v2():
    if shared_dir() is None:
        pytest.skip(missing_reason())
    try:
        return get_model("mobilenet_v2")
    except (ImportError, FileNotFoundError) as e:
        pytest.skip(f"mobilenet_v2 unavailable: {e}")


@pytest.fixture(scope="module")
def mobilenet_v2():
    return _mobilenet_v2()


def test_mobilenet_v2_layer(mobilenet_v2):
    m = mobilenet_v2
    infos = {i.name: i for i in list_layers(m)}
    assert list(infos) == list(m.layer_names)
    assert infos["conv1"].rf_size == (3, 3) and infos["conv1"].rf_stride == (2, 2)
    assert infos["conv_last"].rf_size == (491, 491) and infos["conv_last"].rf_stride == (32, 32)
    rep = CNNLayer(m, "block6_add", **PLAIN_EXECUTION)  # exact: the plain NCHW pass
    assert rep.output_shape == (32, 28, 28) and rep.input_size == (224, 224)
    assert rep.mean_pixel == tuple(float(v) for v in m.mean_pixel)
    x = (torch.rand(2, 3, 224, 224) * 255).requires_grad_()
    y = rep(x)
    node = next(n for n in m.graph.nodes if n.name == "block6_add")
    torch.testing.assert_close(y.detach(), node_value(m, node, x.detach()), rtol=1e-5, atol=1e-5)
    y[:, :, 14, 14].sum().backward()
    # the gradient of one unit stays inside its computed receptive field
    from preimage.models.receptive_field import receptive_field_box
    top, left, bottom, right = receptive_field_box(m, "block6_add", center=(14, 14), n=1)
    nz = x.grad.abs().sum((0, 1)) > 0
    rows, cols = nz.any(1).nonzero()[:, 0], nz.any(0).nonzero()[:, 0]
    assert top <= rows.min() and rows.max() < bottom and left <= cols.min() and cols.max() < right
    assert (bottom - top) - (rows.max() - rows.min() + 1) <= 4   # and nearly fills it
