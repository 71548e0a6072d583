"""CaffeNet (CNN-A): structure, the paper's Table 2 (computed), Caffe semantics (LRN, groups, ceil
pooling, BGR mean), weights I/O. Weights are made by the tests (random or hand-set)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from preimage.models import caffenet as cn
from preimage.models.caffenet import CAFFE_MEAN_BGR, LAYER_NAMES, WeightsError, caffenet, save_weights
from preimage.models.receptive_field import receptive_field_box
from preimage.representations.cnn import PLAIN_EXECUTION, CNNLayer, list_layers

# The paper's Table 2 (CNN-A), typed from the paper to compare with what is computed.
PAPER_LAYERS = "conv1 relu1 mpool1 norm1 conv2 relu2 mpool2 norm2 conv3 relu3 conv4 relu4 conv5 relu5 mpool5 " \
               "fc6 relu6 fc7 relu7 fc8".split()
PAPER_CHANNELS = [96, 96, 96, 96, 256, 256, 256, 256, 384, 384, 384, 384, 256, 256, 256, 4096, 4096, 4096, 4096,
                  1000]
PAPER_FIELDS = [11, 11, 19, 19, 51, 51, 67, 67, 99, 99, 131, 131, 163, 163, 195, 355, 355, 355, 355, 355]

SPATIAL = {"conv1": 55, "relu1": 55, "pool1": 27, "norm1": 27, "conv2": 27, "relu2": 27, "pool2": 13,
           "norm2": 13, "conv3": 13, "relu3": 13, "conv4": 13, "relu4": 13, "conv5": 13, "relu5": 13,
           "pool5": 6}


@pytest.fixture(scope="module")
def net():
    with pytest.warns(UserWarning, match="random weights.*meaningless"):
        return caffenet(seed=1)


def test_layers_and_table2_are_computed(net):
    infos = list_layers(net)
    assert [i.name for i in infos] == list(LAYER_NAMES)
    assert [i.name.replace("pool", "mpool") for i in infos] == PAPER_LAYERS
    assert [i.channels for i in infos] == PAPER_CHANNELS
    assert [i.rf_size for i in infos] == [(f, f) for f in PAPER_FIELDS]
    assert [i.rf_stride[0] for i in infos] == [4, 4, 8, 8, 8, 8, 16, 16, 16, 16, 16, 16, 16, 16, 32] + [32] * 5
    for i in infos:
        s = SPATIAL.get(i.name, 1)
        assert i.output_shape == (i.channels, s, s), i.name
    # the paper's layer spelling is accepted too
    assert CNNLayer(net, "mpool5").output_shape == (256, 6, 6)


def test_outputs_equal_full_model_intermediates(net):
    acts = {}
    hooks = [getattr(net, n).register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(n, o)) for n in LAYER_NAMES]
    x = torch.rand(1, 3, 227, 227) * 255
    try:
        with torch.no_grad():
            out = net(x)
    finally:
        for h in hooks:
            h.remove()
    assert out.shape == (1, 1000, 1, 1)
    for name in ("conv1", "norm2", "pool5", "fc8"):
        with torch.no_grad():
            y = CNNLayer(net, name, **PLAIN_EXECUTION)(x)  # exact: the plain NCHW pass
        torch.testing.assert_close(y, acts[name], rtol=1e-5, atol=1e-4)


def test_preprocessing_is_bgr_minus_caffe_mean(net):
    x = torch.rand(1, 3, 227, 227) * 255
    bgr = x.flip(1) - torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    expect = F.conv2d(bgr, net.conv1.weight, net.conv1.bias, stride=4)
    with torch.no_grad():
        torch.testing.assert_close(CNNLayer(net, "conv1")(x), expect, rtol=1e-5, atol=1e-4)
    assert net.mean_pixel == pytest.approx(CAFFE_MEAN_BGR[::-1])


def test_lrn_matches_caffe_formula(net):
    a = torch.randn(1, 12, 3, 4) * 30
    n, alpha, beta, k = 5, 1e-4, 0.75, 1.0
    sq = F.pad(a.pow(2), (0, 0, 0, 0, n // 2, n // 2))  # zero padding over channels
    s = torch.stack([sq[:, c:c + n].sum(1) for c in range(a.shape[1])], 1)
    expect = a / (k + alpha / n * s) ** beta
    torch.testing.assert_close(net.norm1(a), expect, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(net.norm2(a), expect, rtol=1e-6, atol=1e-6)


def test_grouped_convolutions_are_independent(net):
    x = torch.randn(1, 96, 27, 27)
    y = net.conv2(x)
    x2 = x.clone()
    x2[:, 48:] += torch.randn(1, 48, 27, 27)      # change only group 2's input channels
    y2 = net.conv2(x2)
    torch.testing.assert_close(y2[:, :128], y[:, :128])
    assert not torch.allclose(y2[:, 128:], y[:, 128:])
    for name, groups in [("conv1", 1), ("conv2", 2), ("conv3", 1), ("conv4", 2), ("conv5", 2)]:
        assert getattr(net, name).groups == groups


def test_ceil_mode_pooling(net):
    # 224 input: conv1 → 54, Caffe's ceil rounding gives 27 after pool1 (floor would give 26)
    m = net
    infos = {i.name: i for i in list_layers(m, input_size=(224, 224))}
    assert infos["conv1"].output_shape[-1] == 54 and infos["pool1"].output_shape[-1] == 27
    assert all(getattr(m, p).ceil_mode for p in ("pool1", "pool2", "pool5"))


def test_receptive_field_boxes(net):
    assert receptive_field_box(net, "conv1", n=1) == (108, 108, 119, 119)  # unit 27: 4·27 … +11
    assert receptive_field_box(net, "conv1", n=5) == (100, 100, 127, 127)  # units 25…29
    assert receptive_field_box(net, "pool1", center=(0, 0), n=1) == (0, 0, 19, 19)
    assert receptive_field_box(net, "conv5", n=1) == (32, 32, 195, 195)    # unit 6: -64 + 16·6 … +163
    assert receptive_field_box(net, "fc8") == (0, 0, 227, 227)


def test_safetensors_round_trip(net, tmp_path):
    p = save_weights(net, tmp_path / "caffenet.safetensors")
    m = caffenet(weights=p)
    for k, v in net.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    assert not m.training


def test_torch_state_dict_and_caffe_fc_layout(net, tmp_path):
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["fc6.weight"] = state["fc6.weight"].reshape(4096, 256 * 6 * 6)   # Caffe InnerProduct layout
    state["fc8.weight"] = state["fc8.weight"].reshape(1000, 4096)
    torch.save(state, tmp_path / "w.pt")
    m = caffenet(weights=tmp_path / "w.pt")
    assert torch.equal(m.fc6.weight, net.fc6.weight) and torch.equal(m.fc8.weight, net.fc8.weight)


def test_bad_weights_list_the_problems(net, tmp_path):
    state = {k: v for k, v in net.state_dict().items() if k != "conv3.bias"}
    state["conv2.weight"] = torch.zeros(256, 96, 5, 5)   # ungrouped shape
    state["features.0.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError) as e:
        caffenet(weights=state)
    msg = str(e.value)
    assert "missing keys: conv3.bias" in msg and "unexpected keys: features.0.weight" in msg
    assert "conv2.weight: got (256, 96, 5, 5), expected (256, 48, 5, 5)" in msg
    # a pickled module is refused (weights_only) with a clear error
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    with pytest.raises(WeightsError, match="weights_only"):
        caffenet(weights=tmp_path / "module.pt")
    with pytest.raises(FileNotFoundError):
        caffenet(weights=tmp_path / "absent.safetensors")


def test_mean_image_is_centre_cropped(net, tmp_path):
    rng = np.random.default_rng(0)
    mean = rng.uniform(90, 130, size=(3, 256, 256)).astype(np.float32)
    np.save(tmp_path / "mean.npy", mean)
    m = caffenet(weights=net.state_dict(), mean_image=tmp_path / "mean.npy")
    crop = torch.from_numpy(mean[:, 14:241, 14:241])
    assert torch.equal(m.mean_bgr[0], crop)
    assert m.mean_pixel == pytest.approx(tuple(crop.mean((1, 2)).flip(0).tolist()))
    x = torch.rand(1, 3, 227, 227) * 255
    expect = F.conv2d(x.flip(1) - crop, m.conv1.weight, m.conv1.bias, stride=4)
    with torch.no_grad():
        torch.testing.assert_close(CNNLayer(m, "conv1")(x), expect, rtol=1e-5, atol=1e-4)
    from safetensors.torch import save_file
    save_file({"mean": torch.from_numpy(mean[:, 14:241, 14:241].copy())}, str(tmp_path / "mean.safetensors"))
    m2 = caffenet(weights=net.state_dict(), mean_image=tmp_path / "mean.safetensors")
    assert torch.equal(m2.mean_bgr[0], crop)


def test_docstring_says_torchvision_alexnet_differs():
    doc = cn.__doc__
    assert "torchvision" in doc and "different network" in doc and "64" in doc and "no LRN" in doc
