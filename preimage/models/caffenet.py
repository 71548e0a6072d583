"""CaffeNet, the Caffe reference ImageNet network (``bvlc_reference_caffenet``): the paper's CNN-A.

The network is Krizhevsky et al.'s AlexNet as trained in Caffe, with two differences from the
original paper that matter here: pooling comes *before* local response normalisation (layer order
``conv1 relu1 pool1 norm1 conv2 relu2 pool2 norm2 …``), and conv2/conv4/conv5 are grouped
convolutions (two groups, as on the original two GPUs). Its 20 layers, with the paper's Table 2
channel counts and receptive fields on a 227×227 input:

======  ======  ========  =====  ======  ========  =====  ======  ========
layer   chans   field     layer  chans   field     layer  chans   field
======  ======  ========  =====  ======  ========  =====  ======  ========
conv1   96      11        conv2  256     51        conv3  384     99
relu1   96      11        relu2  256     51        relu3  384     99
pool1   96      19        pool2  256     67        conv4  384     131
norm1   96      19        norm2  256     67        relu4  384     131
conv5   256     163       fc6    4096    355       fc7    4096    355
relu5   256     163       relu6  4096    355       relu7  4096    355
pool5   256     195       fc8    1000    355
======  ======  ========  =====  ======  ========  =====  ======  ========

(these are computed from the modules by :mod:`preimage.models.receptive_field`, not stored).

Details that follow Caffe exactly:

* max pooling 3×3, stride 2, with Caffe's *ceil* rounding of the output size (``ceil_mode=True``);
* LRN across channels, size 5, α = 1e-4, β = 0.75, k = 1, with Caffe's convention
  ``b = a / (k + α/n · Σ_{window} a²)^β`` (α divided by the window size n; zero padding at the
  channel ends), which is what ``torch.nn.LocalResponseNorm`` computes;
* fc6/fc7/fc8 are convolutions (6×6, 1×1, 1×1), so on a 227×227 input their outputs are
  ``(B, C, 1, 1)``; Caffe ``InnerProduct`` weights ``(out, in)`` are reshaped on loading
  (``(4096, 9216)`` → ``(4096, 256, 6, 6)``, the same memory order);
* dropout is omitted (inference only); no softmax (fc8 is the last layer).

Input: an RGB batch ``(B, 3, H, W)`` on 0–255 (227×227 for the paper). The model converts it to
Caffe's BGR order and subtracts the ILSVRC-12 mean: by default the per-channel mean of Caffe's
``imagenet_mean.binaryproto`` (B, G, R = 104.007, 116.669, 122.679), or a full mean image
(``mean_image=``: a ``.npy`` or safetensors file, or an array, ``(3, 256, 256)`` or
``(3, 227, 227)`` in Caffe's BGR order on 0–255, centre-cropped to the input size as Caffe does
at test time).

Weights are not distributed with preimage: pass a safetensors file or a PyTorch state dict (loaded
with ``torch.load(weights_only=True)``) with keys ``conv1.weight``, ``conv1.bias``, …,
``fc8.bias`` (converted from Caffe's ``bvlc_reference_caffenet.caffemodel``). Without weights the
network is randomly initialised and a warning says that reconstructions are then meaningless.

torchvision's ``alexnet`` is a *different network* (the "one weird trick" variant: 64/192/384/256/256
convolution filters, no LRN, no groups, an adaptive pool before the classifier): its weights cannot
be converted into CaffeNet. It is available as ``torchvision:alexnet`` through
:func:`preimage.models.get_model`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from ..errors import PreimageError
from ..io.images import centre_crop

__all__ = ["CaffeNet", "caffenet", "load_weights", "save_weights", "LAYER_NAMES", "CAFFE_MEAN_BGR",
           "WeightsError"]

#: The 20 layers of CNN-A in the paper's order.
LAYER_NAMES = ("conv1", "relu1", "pool1", "norm1", "conv2", "relu2", "pool2", "norm2", "conv3", "relu3",
               "conv4", "relu4", "conv5", "relu5", "pool5", "fc6", "relu6", "fc7", "relu7", "fc8")

#: Per-channel mean of Caffe's ILSVRC-12 mean image (``imagenet_mean.binaryproto``), B, G, R, 0–255.
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)

# name → (in channels, out channels, kernel, stride, padding, groups)
_CONVS = {
    "conv1": (3, 96, 11, 4, 0, 1),
    "conv2": (96, 256, 5, 1, 2, 2),
    "conv3": (256, 384, 3, 1, 1, 1),
    "conv4": (384, 384, 3, 1, 1, 2),
    "conv5": (384, 256, 3, 1, 1, 2),
    "fc6": (256, 4096, 6, 1, 0, 1),
    "fc7": (4096, 4096, 1, 1, 0, 1),
    "fc8": (4096, 1000, 1, 1, 0, 1),
}


class WeightsError(PreimageError, ValueError):
    """A weights file that does not match the network (missing/unexpected keys, wrong shapes)."""


class CaffeNet(nn.Module):
    """CaffeNet (CNN-A): RGB ``(B, 3, H, W)`` on 0–255 → fc8 scores ``(B, 1000, h, w)``
    (``h = w = 1`` for a 227×227 input). See the module docstring for the exact layers.

    Attributes: ``input_size`` ``(227, 227)``, ``mean_pixel`` (the RGB mean, 0–255, that the
    inversion's mean-subtracted variable is offset by), ``layer_names`` (the 20 layers),
    ``num_classes`` 1000. Build it with :func:`caffenet`.
    """

    input_size = (227, 227)
    layer_names = LAYER_NAMES
    #: the paper's spelling of the pooling layers
    layer_aliases = {"mpool1": "pool1", "mpool2": "pool2", "mpool5": "pool5"}
    num_classes = 1000

    def __init__(self, mean_image: torch.Tensor | None = None, seed: int | None = 0):
        """``mean_image``: BGR ``(3, H, W)`` tensor on 0–255 (``None``: per-channel Caffe mean);
        ``seed``: random He-normal initialisation seed, ``None`` to leave the weights uninitialised
        (only when they are loaded right after, as :func:`caffenet` does)."""
        super().__init__()
        for name in LAYER_NAMES:
            if name in _CONVS:
                cin, cout, k, s, p, g = _CONVS[name]
                # built on the meta device: no time spent on an initialisation that is overwritten
                setattr(self, name, nn.Conv2d(cin, cout, k, stride=s, padding=p, groups=g, device="meta"))
            elif name.startswith("relu"):
                setattr(self, name, nn.ReLU(inplace=False))
            elif name.startswith("pool"):
                setattr(self, name, nn.MaxPool2d(3, stride=2, ceil_mode=True))
            else:  # norm
                setattr(self, name, nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0))
        self.to_empty(device="cpu")
        if seed is not None:
            _init_random(self, seed)
        if mean_image is None:
            mean = torch.tensor(CAFFE_MEAN_BGR, dtype=torch.float32).view(1, 3, 1, 1)
        else:
            mean = torch.as_tensor(mean_image, dtype=torch.float32)
            if mean.dim() != 3 or mean.shape[0] != 3:
                raise ValueError(f"mean image must be (3, H, W) in BGR order, got {tuple(mean.shape)}")
            (h, w), (H, W) = mean.shape[-2:], self.input_size
            if h < H or w < W:
                raise ValueError(f"mean image {h}×{w} is smaller than the {H}×{W} input")
            mean = centre_crop(mean, self.input_size).unsqueeze(0)  # as Caffe does at test time
        #: BGR mean subtracted after the RGB→BGR flip: (1, 3, 1, 1) or (1, 3, 227, 227)
        self.register_buffer("mean_bgr", mean, persistent=False)
        m = mean.mean(dim=(0, 2, 3))
        self.mean_pixel = tuple(float(v) for v in m.flip(0))  # RGB

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, 3, H, W)`` RGB on 0–255 → fc8 ``(B, 1000, h, w)``."""
        x = torch.flip(x, dims=(1,)) - self.mean_bgr
        for name in LAYER_NAMES:
            x = getattr(self, name)(x)
        return x

    def extra_repr(self) -> str:
        mean = "per-channel" if self.mean_bgr.shape[-1] == 1 else "image"
        return f"input_size={self.input_size}, mean={mean}"


def _read_mean_image(mean_image) -> torch.Tensor:
    if isinstance(mean_image, (str, os.PathLike)):
        p = Path(mean_image)
        if not p.exists():
            raise FileNotFoundError(f"mean image {p} does not exist")
        if p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
            return torch.from_numpy(np.asarray(arr, dtype=np.float32))
        from safetensors.torch import load_file
        tensors = load_file(str(p))
        if len(tensors) != 1:
            raise ValueError(f"{p} must hold exactly one tensor (the mean image), has {sorted(tensors)}")
        return next(iter(tensors.values())).float()
    return torch.as_tensor(np.asarray(mean_image, dtype=np.float32))


def _init_random(model: CaffeNet, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in _CONVS:
            conv = getattr(model, name)
            fan_in = conv.weight[0].numel()
            conv.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=g)
            conv.bias.zero_()


def _read_state(weights) -> dict[str, torch.Tensor]:
    if isinstance(weights, Mapping):
        return dict(weights)
    p = Path(weights)
    if not p.exists():
        raise FileNotFoundError(f"CaffeNet weights {p} do not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(p))
    try:
        state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, or one that needs unpickling arbitrary objects
        try:
            from safetensors.torch import load_file
            return load_file(str(p))
        except Exception:
            raise WeightsError(f"cannot read CaffeNet weights from {p}: not a safetensors file and not "
                               f"a state dict loadable with torch.load(weights_only=True) ({e})") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise WeightsError(f"{p} holds a {type(state).__name__}, not a state dict")
    return dict(state)


def load_weights(model: CaffeNet, weights) -> CaffeNet:
    """Load ``weights`` (a safetensors / torch state-dict file path, or a mapping name → tensor)
    into ``model`` in place. Fully-connected weights may be given in Caffe's ``(out, in)`` form.
    Raises :class:`WeightsError` listing every missing key, unexpected key and wrong shape."""
    state = _read_state(weights)
    expected = {k: v for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    bad, fixed = [], {}
    for k, ref in expected.items():
        if k not in state:
            continue
        v = state[k]
        if not torch.is_tensor(v):
            bad.append(f"{k}: not a tensor ({type(v).__name__})")
            continue
        if tuple(v.shape) != tuple(ref.shape) and v.numel() == ref.numel() and v.dim() == 2 \
                and k.endswith(".weight") and k.split(".")[0] in ("fc6", "fc7", "fc8"):
            v = v.reshape(ref.shape)  # Caffe InnerProduct layout (out, in) = (out, C*H*W)
        if tuple(v.shape) != tuple(ref.shape):
            bad.append(f"{k}: got {tuple(v.shape)}, expected {tuple(ref.shape)}")
            continue
        fixed[k] = v.to(ref.dtype)
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append("missing keys: " + ", ".join(missing))
        if unexpected:
            parts.append("unexpected keys: " + ", ".join(unexpected))
        if bad:
            parts.append("wrong shapes: " + "; ".join(bad))
        src = weights if not isinstance(weights, Mapping) else "the given state dict"
        raise WeightsError(f"CaffeNet weights from {src} do not match the network ("
                           + " | ".join(parts) + "). Expected keys: conv1..conv5, fc6..fc8 "
                           ".weight/.bias as written by preimage.models.caffenet.save_weights")
    model.load_state_dict(fixed, strict=True)
    return model


def caffenet(weights=None, mean_image=None, seed: int = 0) -> CaffeNet:
    """Build CaffeNet in eval mode with frozen-ready weights.

    ``weights``: path to a ``.safetensors`` file or a torch state dict (``torch.load`` with
    ``weights_only=True``), or a mapping; ``None`` → random (He-normal, ``seed``) weights with a
    warning, fine for tests and timing but useless for reconstructions.
    ``mean_image``: optional BGR ``(3, 256, 256)``/``(3, 227, 227)`` mean on 0–255 (path to
    ``.npy``/safetensors, or an array); default the per-channel Caffe ILSVRC-12 mean.
    Returns a :class:`CaffeNet` taking RGB ``(B, 3, H, W)`` on 0–255.
    """
    mean = None if mean_image is None else _read_mean_image(mean_image)
    model = CaffeNet(mean_image=mean, seed=seed if weights is None else None)
    if weights is None:
        warnings.warn("CaffeNet has random weights (no weights file given): reconstructions from it are "
                      "meaningless. Pass weights= a safetensors file converted from the Caffe reference "
                      "model.", stacklevel=2)
    else:
        load_weights(model, weights)
    return model.eval()


def save_weights(model: nn.Module, path) -> Path:
    """Write ``model``'s state dict (parameters and persistent buffers) to a safetensors file."""
    from safetensors.torch import save_file
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt", "model": type(model).__name__})
    return path
