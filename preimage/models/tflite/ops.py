"""The runtime pieces a :class:`~preimage.models.tflite.TFLiteNet` graph calls.

Module-level functions and ``nn.Module`` subclasses, so that ``torch.fx`` code generation and
pickling can refer to them by name. All tensors are NCHW (TFLite's NHWC axes are translated where
an operator takes axes). Float ops:

* :class:`TFConv2d` / :class:`TFLinear`: ``nn.Conv2d`` with TensorFlow SAME/VALID padding, and
  ``nn.Linear`` fed like FULLY_CONNECTED (NHWC flattening);
* :func:`tflite_input` (pixels 0–255 → the model's real input), :func:`tf_pool2d`, :func:`tf_mean`,
  :func:`tf_reshape`, :func:`tf_squeeze`, :func:`tf_softmax`, :func:`relu_n1_to_1` and the fused
  activations :data:`FLOAT_ACTIVATIONS`.

Integer emulation (``emulate_quantization=True``): :func:`fake_quant` rounds an activation to its
TFLite grid; :class:`Emulation` (held by the conv / linear modules) and :func:`emulated_add`,
:func:`emulated_pool`, :func:`emulated_mean`, :func:`emulated_softmax` reproduce the interpreter's
integer kernels in the forward value while the gradient stays the float op's (straight through).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["same_pad", "Emulation", "TFConv2d", "TFLinear", "tflite_input", "round_half_away", "fake_quant",
           "emulated_add", "emulated_pool", "emulated_mean", "emulated_softmax", "tf_pool2d", "tf_mean",
           "tf_reshape", "tf_squeeze", "tf_softmax", "relu_n1_to_1", "FLOAT_ACTIVATIONS"]


def same_pad(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF "SAME" padding along one axis of ``size`` pixels: ``(before, after)`` so that the output
    has ``ceil(size / stride)`` positions; the odd pixel goes after."""
    out = -(-size // stride)
    eff = (kernel - 1) * dilation + 1
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


class Emulation:
    """Integer data for exact emulation of a quantised conv / fully connected op, as the
    interpreter's (XNNPACK) kernels compute it: ``acc = Σ (q_in − zp_in)(q_w − zp_w) + q_bias``
    exactly, then ``round_half_even(float32(acc) · float32(s_in · s_w / s_out))``."""

    def __init__(self, w_int: np.ndarray, b_int: np.ndarray | None, in_scale: float,
                 requant: np.ndarray, out_scale: float):
        self.w_int = w_int.astype(np.int32)            # torch layout
        self.b_int = None if b_int is None else b_int.astype(np.int64)
        self.in_scale = float(in_scale)
        self.requant = requant.astype(np.float32)      # (out_channels,)
        self.out_scale = float(out_scale)

    def _tensors(self, device: torch.device) -> tuple:
        """(weights float64, bias float64 or None, requantisation scales float32) on ``device``."""
        return (torch.as_tensor(self.w_int, device=device).double(),
                None if self.b_int is None else torch.as_tensor(self.b_int, device=device).double(),
                torch.as_tensor(self.requant, device=device))

    def apply(self, linear_op, x: torch.Tensor, y: torch.Tensor, channel_dim: int) -> torch.Tensor:
        """``y`` (the float op's result) with the interpreter's value: ``linear_op(q_in, w, b)``
        on the exact integers (float64) of the fake-quantised input ``x``, requantised per
        channel (``channel_dim`` of the result); the gradient stays ``y``'s."""
        w, b, requant = self._tensors(x.device)
        acc = linear_op(_ints(x, self.in_scale), w, b)  # exact integer accumulators
        shape = [1] * acc.dim()
        shape[channel_dim] = -1
        q = torch.round(acc.float() * requant.view(shape))  # float32, ties to even (lrintf)
        return _ste(y, q.double() * self.out_scale)


class TFConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow padding, ``(B, C_in, H, W)`` → ``(B, C_out, h, w)``:
    ``tf_padding`` is ``"VALID"`` (none) or ``"SAME"``
    (output = ceil(input / stride); the padding is computed for each input size and is asymmetric
    when odd, the extra row/column at the bottom/right, as TensorFlow does).

    With ``emulation`` set (``emulate_quantization=True``) the forward value is the interpreter's
    requantised integer result (before the activation clamp); the gradient is the float conv's."""

    def __init__(self, *args, tf_padding: str = "VALID", **kwargs):
        super().__init__(*args, padding=0, **kwargs)
        self.tf_padding = tf_padding
        self.emulation: Emulation | None = None

    def extra_repr(self) -> str:
        extra = ", emulated" if self.emulation is not None else ""
        return super().extra_repr() + f", tf_padding={self.tf_padding!r}{extra}"

    def _tf_conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.tf_padding == "SAME":
            (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
            pt, pb = same_pad(x.shape[-2], kh, sh, dh)
            pl, pr = same_pad(x.shape[-1], kw, sw, dw)
            if pt == pb and pl == pr:
                return F.conv2d(x, weight, bias, self.stride, (pt, pl), self.dilation, self.groups)
            x = F.pad(x, (pl, pr, pt, pb))
        return F.conv2d(x, weight, bias, self.stride, 0, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W)`` → ``(B, C_out, h, w)``, ``h = ceil(H / stride)`` with SAME padding."""
        y = self._tf_conv(x, self.weight, self.bias)
        e = self.emulation
        if e is None:
            return y
        return e.apply(self._tf_conv, x, y, 1)


class TFLinear(nn.Linear):
    """``nn.Linear`` fed like TFLite's FULLY_CONNECTED, → ``(B, out_features)``: a 4-D NCHW input
    is flattened in NHWC order; other inputs are flattened to ``(-1, in_features)`` unless
    ``keep_num_dims``.
    ``emulation`` as for :class:`TFConv2d`."""

    def __init__(self, *args, keep_num_dims: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.keep_num_dims = keep_num_dims
        self.emulation: Emulation | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` (flattened in NHWC order) or ``(..., in_features)`` → ``(N, out_features)``
        (``N`` the number of flattened rows; the leading dims kept with ``keep_num_dims``)."""
        if x.dim() == 4:
            x = x.permute(0, 2, 3, 1)
        if not self.keep_num_dims:
            x = x.reshape(-1, self.in_features)
        y = F.linear(x, self.weight, self.bias)
        e = self.emulation
        if e is None:
            return y
        return e.apply(F.linear, x, y, -1)


def tflite_input(x: torch.Tensor, scale: float, mean_pixel: float, emulate: bool) -> torch.Tensor:
    """Pixels ``(B, 3, H, W)`` on 0–255 → the model's real-valued input ``scale·(x − mean_pixel)``.
    When emulating quantisation the pixels are first rounded and clamped to 0–255 (gradient passes
    straight through)."""
    if not torch.is_tensor(x) or x.dim() != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"expected an RGB batch of shape (B, 3, H, W) on 0–255, got {shape}")
    if emulate:
        xc = x.clamp(0.0, 255.0)
        x = xc + (torch.round(xc) - xc).detach()
    return (x - mean_pixel) * scale


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """``x`` (any shape) rounded to integers, halves away from zero (TFLite's rounding); same shape."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def fake_quant(x: torch.Tensor, scale: float, zero_point: int, qmin: int, qmax: int) -> torch.Tensor:
    """Round ``x`` to the TFLite grid ``scale·(q − zero_point)``, ``q`` an integer in
    ``[qmin, qmax]`` (half away from zero, as TFLite's requantisation). The forward value is the
    quantised one; the gradient is that of ``clamp`` to the representable range."""
    lo, hi = (qmin - zero_point) * scale, (qmax - zero_point) * scale
    xc = x.clamp(lo, hi)
    q = round_half_away(xc / scale).clamp(qmin - zero_point, qmax - zero_point)
    return xc + (q * scale - xc).detach()


def _ste(y: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    return y + (real.to(y.dtype) - y).detach()


def _ints(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Exact integers ``q − zero_point`` (float64) of a fake-quantised tensor."""
    return torch.round(x.detach().double() / scale)


def _add_params(ratio_a: float, ratio_b: float) -> tuple[int, int, int]:
    """XNNPACK's quantised-add parameters: (a multiplier, b multiplier, shift); the larger
    multiplier has 21 bits."""
    ra, rb = np.float32(ratio_a), np.float32(ratio_b)
    exponent = int(np.frexp(np.float32(max(ra, rb)))[1]) - 1  # floor(log2(max ratio))
    shift = min(max(20 - exponent, 12), 30)
    return int(np.rint(np.float32(ra * np.float32(2.0 ** shift)))), \
        int(np.rint(np.float32(rb * np.float32(2.0 ** shift)))), shift


def emulated_add(a: torch.Tensor, b: torch.Tensor, scale_a: float, scale_b: float,
                 scale_out: float) -> torch.Tensor:
    """Quantised ADD of two same-shape tensors as the interpreter computes it (fixed-point
    multipliers, round half up); the value is the output grid point (not yet clamped), the
    gradient that of ``a + b``."""
    ma, mb, shift = _add_params(scale_a / scale_out, scale_b / scale_out)
    acc = _ints(a, scale_a) * ma + _ints(b, scale_b) * mb + 2.0 ** (shift - 1)
    return _ste(a + b, torch.floor(acc / 2.0 ** shift) * scale_out)


def emulated_pool(x: torch.Tensor, kind: str, kernel, stride, padding: str, scale_in: float,
                  scale_out: float) -> torch.Tensor:
    """Quantised average / max pooling of ``(B, C, H, W)`` (integer averages rounded half away
    from zero), as :func:`tf_pool2d` shapes it; gradient of the float pooling."""
    q = tf_pool2d(_ints(x, scale_in), kind, kernel, stride, padding)
    return _ste(tf_pool2d(x, kind, kernel, stride, padding), round_half_away(q * (scale_in / scale_out)) * scale_out)


def emulated_mean(x: torch.Tensor, axes, keep_dims: bool, scale_in: float, scale_out: float) -> torch.Tensor:
    """Quantised MEAN (rounded half away from zero), as :func:`tf_mean` shapes it; gradient of
    the float mean."""
    q = tf_mean(_ints(x, scale_in), axes, keep_dims)
    return _ste(tf_mean(x, axes, keep_dims), round_half_away(q * (scale_in / scale_out)) * scale_out)


def emulated_softmax(x: torch.Tensor, beta: float, scale_in: float, scale_out: float) -> torch.Tensor:
    """Quantised SOFTMAX: the float softmax of the integer inputs, rounded to the output grid;
    ``(B, C)`` or ``(B, C, H, W)`` → same shape, gradient of the float softmax."""
    p = tf_softmax(_ints(x, scale_in) * scale_in, beta)
    return _ste(tf_softmax(x, beta), round_half_away(p / scale_out) * scale_out)


def tf_pool2d(x: torch.Tensor, kind: str, kernel: tuple[int, int], stride: tuple[int, int],
              padding: str) -> torch.Tensor:
    """TF average / max pooling (``kind`` ``"avg"`` / ``"max"``) of ``(B, C, H, W)`` →
    ``(B, C, h, w)``; ``padding`` ``"SAME"`` (``h = ceil(H / stride)``, padded cells excluded
    from averages) or ``"VALID"``."""
    if padding == "SAME":
        pt, pb = same_pad(x.shape[-2], kernel[0], stride[0], 1)
        pl, pr = same_pad(x.shape[-1], kernel[1], stride[1], 1)
        if kind == "max":
            x = F.pad(x, (pl, pr, pt, pb), value=float("-inf"))
            return F.max_pool2d(x, kernel, stride)
        ones = torch.ones_like(x[:1, :1])
        num = F.avg_pool2d(F.pad(x, (pl, pr, pt, pb)), kernel, stride)
        den = F.avg_pool2d(F.pad(ones, (pl, pr, pt, pb)), kernel, stride)
        return num / den
    if kind == "max":
        return F.max_pool2d(x, kernel, stride)
    return F.avg_pool2d(x, kernel, stride)


def tf_mean(x: torch.Tensor, axes: tuple[int, ...], keep_dims: bool) -> torch.Tensor:
    """TFLite MEAN with NHWC ``axes`` applied to an NCHW 4-D tensor (or any other tensor as is)."""
    if x.dim() == 4:
        x = x.permute(0, 2, 3, 1)
        out = x.mean(dim=axes, keepdim=keep_dims)
        return out.permute(0, 3, 1, 2) if keep_dims else out
    return x.mean(dim=axes, keepdim=keep_dims)


def tf_reshape(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """TFLite RESHAPE of a batch: ``shape`` excludes the batch dimension; 4-D tensors are NCHW
    here and NHWC in TFLite, so they are permuted around the reshape."""
    if x.dim() == 4:
        x = x.permute(0, 2, 3, 1)
    out = x.reshape((x.shape[0],) + tuple(shape))
    return out.permute(0, 3, 1, 2) if out.dim() == 4 else out


def tf_squeeze(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """TFLite SQUEEZE with NHWC ``dims`` (never the batch dimension)."""
    if x.dim() == 4:
        x = x.permute(0, 2, 3, 1)
    out = x
    for d in sorted(dims, reverse=True):
        out = out.squeeze(d)
    return out.permute(0, 3, 1, 2) if out.dim() == 4 else out


def tf_softmax(x: torch.Tensor, beta: float) -> torch.Tensor:
    """Softmax of ``beta · x`` over the TFLite last axis (channels: dim 1 of a 4-D NCHW tensor,
    else the last dim); same shape, values in [0, 1]."""
    return torch.softmax(x * beta if beta != 1.0 else x, dim=1 if x.dim() == 4 else -1)


def relu_n1_to_1(x: torch.Tensor) -> torch.Tensor:
    """TFLite's RELU_N1_TO_1 activation: ``x`` (any shape) clamped to [−1, 1]."""
    return torch.clamp(x, -1.0, 1.0)


FLOAT_ACTIVATIONS = {"RELU": F.relu, "RELU6": F.relu6, "RELU_N1_TO_1": relu_n1_to_1}
