"""Any layer of any CNN as a representation: :class:`CNNLayer`, :func:`list_layers`.

The model's preprocessing lives in the model: its ``forward`` takes an RGB batch ``(B, 3, H, W)``
on 0–255 (e.g. :func:`preimage.models.caffenet.caffenet`, the MobileNets and the wrapped
torchvision models of :func:`preimage.models.get_model`). Optional model attributes:
``input_size`` ``(H, W)``, ``mean_pixel`` (RGB, 0–255), ``layer_names`` (the layers to list).

Layer names: the module's qualified name for a module call (``conv1``, ``features.3``; a module
called several times is ``name``, ``name#2``, …) and the ``torch.fx`` node name for a function or
method call (``add``, ``flatten``); fx node names are accepted as aliases, and so is the qualified
name of a container module (its last operation, e.g. ``layer3`` of a ResNet).

The model is truncated with ``torch.fx``: a new graph whose output is the chosen node, dead code
removed, so nothing after the layer is computed. A model that cannot be traced falls back to a
forward hook on the named module that stops the forward pass (module names only, no receptive
fields).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.fx as fx
from torch import nn

from ..errors import UnknownNameError
from ..models.fx import TracedModel, model_input_size, trace_model
from ..models.receptive_field import ReceptiveField, center_window, units_box
from ..models.graph_module import truncate_graph_module
from ..models.surrogate import LeakyClip, check_leak, is_clipping, leak_clipping_gradients, set_gradient_leak
from ..paper import lambda_tv_for_depth
from .base import Representation

__all__ = ["CNNLayer", "LayerInfo", "list_layers", "CPU_CHUNK_BYTES", "PLAIN_EXECUTION", "DEFAULT_GRAD_LEAK",
           "FOURIER_OPTIMISER", "QUASI_NEWTON_DEPTH", "DEEP_CLIPPED_DEPTH", "DEEP_CLIPPED_SCHEDULE"]

#: The gradient leak of a traced layer's clipping activations that preimage's own recipes use
#: (``CNNLayer.grad_leak``; the paper's method uses the exact gradient). Chosen on 8 train/ images
#: (MobileNet v2, 224², 400 iterations, normalised error): it lowers the error at every depth past
#: conv1 (conv_last 32.6 → 25.6 %; ℓ = 0.02 and 0.1 were worse, 0.3 diverged), see
#: :mod:`preimage.models.surrogate`.
DEFAULT_GRAD_LEAK = 0.05

#: The optimiser and trial rate of preimage's own recipe on a Fourier image of a CNN layer
#: (``CNNLayer.recipe_optimiser``): per-sample L-BFGS (:class:`preimage.optim.LBFGS`), whose step
#: costs one network pass like Adam's. Measured on 4 train/ images, MobileNet v2, 224², relative
#: code error % at 400 iterations, Adam (0.05, the Fourier image's own) → L-BFGS: conv1 0.68 →
#: 0.27, block5_add 11.0 → 7.3, block10_expand (clipped) 5.7 → 2.6, block16_expand (clipped, depth
#: 0.83) 8.3 → 7.2, block16_add 13.6 → 12.0; at block10_add L-BFGS reaches the paper's final error
#: on every image by iteration 90 (Adam: 130–280, the paper: 360–400). Not at the deepest layers
#: (:data:`QUASI_NEWTON_DEPTH`).
FOURIER_OPTIMISER: tuple[str, float] = ("lbfgs", 1.0)
#: Layers at this relative depth or deeper keep the Fourier image's Adam (``recipe_optimiser`` is
#: empty): on the same 4 train/ images L-BFGS is worse at three of MobileNet v2's four blocks there,
#: ``block17_project`` (0.92) 21.3 → 23.5 %, ``conv_last`` (0.94, clipped) 18.6 % with Adam's
#: 2000-iteration schedule → 45.9 % at 400, ``avgpool`` (0.95) 9.8 → 10.6 %, and better only at
#: ``logits`` (0.98), 8.3 → 5.9 %.
QUASI_NEWTON_DEPTH = 0.9

#: A layer whose code is the output of a clipping activation (ReLU, ReLU6, …) at this relative depth
#: or deeper gets :data:`DEEP_CLIPPED_SCHEDULE` for preimage's own recipes (``recipe_schedule``):
#: its code, mostly units at the bound, is still far from matched after the default 400 iterations.
#: Measured on 8 train/ images, MobileNet v2, with the leak (normalised error, 400 iterations →
#: this schedule): ``conv_last`` (depth 0.94) 25.6 → 14.4 %, ``block17_depthwise`` (0.91)
#: 15.5 → 7.4 %; shallower clipped codes are matched at 400: ``block16_expand`` (0.83) 10.2 %,
#: ``block14_depthwise`` 11.2 %, ``block10_expand`` 8.5 % (and unclipped deep ones: ``avgpool``
#: 8.4 %, ``logits`` 6.1 %, ``block16_add`` 10.1 %).
DEEP_CLIPPED_DEPTH = 0.9
#: 2000 iterations, the rate ×0.3 and ×0.1 over the last 600 (stopping samples early on a 0.1 %
#: tolerance over 50 iterations instead ended ``conv_last`` at 18.2 %).
DEEP_CLIPPED_SCHEDULE: tuple[tuple[int, float], ...] = ((1400, 1.0), (400, 0.3), (200, 0.1))

#: On CPU a traced layer runs its batch in chunks whose largest activation is at most this many
#: bytes, so that consecutive operations find their input in the cache (benchmarks/bench_execution.py
#: measures it against other budgets on MobileNet v2 at 224² and 64²: at 224² a chunk is one image).
CPU_CHUNK_BYTES = 4 << 20
#: ``CNNLayer(model, layer, **PLAIN_EXECUTION)``: the batch in one NCHW pass, the execution before
#: channels-last and chunking (the benchmarks' "today", and the exact pass tests compare against).
PLAIN_EXECUTION = {"channels_last": False, "chunk_bytes": None}

@dataclass(frozen=True)
class LayerInfo:
    """One layer of a network, for an input of the model's ``input_size``.

    ``output_shape``: ``(C, h, w)`` (or ``(D,)``), batch axis excluded; ``channels``: ``C``;
    ``rf_size``/``rf_stride``/``rf_start``: ``(rows, cols)`` in input pixels, see
    :class:`~preimage.models.receptive_field.ReceptiveField` (``rf_size`` is its ``total_size``;
    ``None`` when unknown);
    ``index``: 1-based rank among the listed layers; ``depth``: ``index / count`` in ``(0, 1]``.
    """

    name: str
    type: str
    output_shape: tuple[int, ...]
    channels: int
    rf_size: tuple[float, float] | None
    rf_stride: tuple[float, float] | None
    rf_start: tuple[float, float] | None
    index: int
    depth: float

    @property
    def lambda_tv(self) -> float:
        """The paper's TV weight for this depth (:func:`preimage.paper.lambda_tv_for_depth`)."""
        return lambda_tv_for_depth(self.depth)


# --------------------------------------------------------------------------------------------
# listing
# --------------------------------------------------------------------------------------------

def _op_type(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def _traced_infos(t: TracedModel) -> list[LayerInfo]:
    names = t.valid_names()
    infos = []
    for k, name in enumerate(names, 1):
        node = t.node(name)
        shape = tuple(t.shapes[node.name][1:])
        rf: ReceptiveField | None = t.rfs.get(node.name)
        infos.append(LayerInfo(
            name=name, type=_op_type(node, t.gm), output_shape=shape,
            channels=int(shape[0]) if shape else 1,
            rf_size=rf.total_size if rf else None, rf_stride=rf.stride if rf else None,
            rf_start=rf.start if rf else None, index=k, depth=k / len(names)))
    return infos


def _leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if n and not any(True for _ in m.children())]


def _hooked_infos(model: nn.Module, input_size) -> list[LayerInfo]:
    """Listing for models fx cannot trace: leaf modules in call order, shapes from a dummy run."""
    hw = model_input_size(model, input_size)
    calls: list[tuple[str, nn.Module, tuple]] = []
    counts: dict[str, int] = {}
    handles = []
    for name, mod in _leaf_modules(model):
        def hook(m, inp, out, name=name):
            if torch.is_tensor(out):
                k = counts[name] = counts.get(name, 0) + 1
                calls.append((name if k == 1 else f"{name}#{k}", m, tuple(out.shape[1:])))
        handles.append(mod.register_forward_hook(hook))
    try:
        dev = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.no_grad():
            model(torch.full((1, 3, *hw), 128.0, device=dev))
    finally:
        for h in handles:
            h.remove()
    listed = getattr(model, "layer_names", None)
    if listed:
        calls = [c for c in calls if c[0] in set(listed)]
    n = len(calls)
    return [LayerInfo(name, type(m).__name__, shape, int(shape[0]) if shape else 1, None, None, None, k, k / n)
            for k, (name, m, shape) in enumerate(calls, 1)]


def list_layers(model: nn.Module, input_size=None) -> list[LayerInfo]:
    """Every layer of ``model`` in execution order, as :class:`LayerInfo` (name, op type,
    output shape for a ``(1, 3, H, W)`` input, channels, receptive field, relative depth).

    ``input_size``: ``(H, W)``, default the model's ``input_size`` attribute (else 224). Only the
    names in the model's ``layer_names`` attribute are listed when it has one (CaffeNet: the
    paper's 20 layers). Runs the model once on a dummy image.
    """
    try:
        t = trace_model(model, input_size)
    except _TRACE_ERRORS:
        return _hooked_infos(model, input_size)
    return _traced_infos(t)


# symbolic_trace raises many kinds of errors (TraceError for data-dependent control flow,
# TypeError/AttributeError/… from code that does not accept proxies): any of them → hooks
_TRACE_ERRORS = (Exception,)


# --------------------------------------------------------------------------------------------
# the representation
# --------------------------------------------------------------------------------------------

class _StopForward(Exception):
    """Raised by the forward hook once the layer has been computed (hook fallback only)."""

    def __init__(self, output):
        super().__init__("stop")
        self.output = output


def _freeze(model: nn.Module) -> None:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)


def _model_device(model: nn.Module) -> torch.device | None:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return None


class CNNLayer(Representation):
    """Layer ``layer`` of ``model``: RGB ``(B, 3, H, W)`` on 0–255 → activations ``(B, C, h, w)``
    (or ``(B, D)`` after a flatten).

    ``model``: an ``nn.Module`` whose forward takes RGB 0–255 images (it is switched to eval mode
    and its parameters are frozen in place: ``requires_grad=False``). ``layer``: see the module
    docstring; an unknown name raises :class:`~preimage.errors.UnknownNameError` listing the valid
    ones. ``input_size`` ``(H, W)`` and ``mean_pixel`` (RGB on 0–255) default to the model's
    attributes (``None`` and 128 when absent).

    Attributes: ``layer``, ``output_shape`` (code shape without batch for ``input_size``),
    ``receptive_field`` (or ``None``), ``info`` (:class:`LayerInfo`), ``relative_depth``,
    ``lambda_tv`` (the paper's TV weight for that depth), ``traced`` (False in hook mode).
    The module moves with ``.to(device)`` and stays in eval mode.

    Execution (traced layers; the values are the same up to float rounding): with
    ``channels_last`` the batch runs in channels-last memory format (oneDNN's fast kernels on CPU;
    a network that needs NCHW strides, e.g. a ``.view``, falls back to NCHW on its first call);
    on CPU a batch runs in chunks whose largest activation fits ``chunk_bytes`` (``None``: one
    pass), computed from the layer's activation shapes. The code comes back NCHW-contiguous.

    ``grad_leak`` ℓ (0 ≤ ℓ < 1; ``None``: :data:`DEFAULT_GRAD_LEAK` for a traced layer, 0 for a
    hook-mode one): inside :meth:`leaking_gradients` (which :func:`~preimage.invert.invert` enters
    with ℓ, except for ``method="paper"``) the clipping activations (ReLU, ReLU6, hardtanh, ONNX's
    Clip) pass ℓ of the gradient where they clip; the code is unchanged, and outside that block the
    gradient is exact (:mod:`preimage.models.surrogate`, which has the train/ measurements: ℓ = 0.05
    lowers MobileNet v2's ``conv_last`` inversion error from 32.6 % to 25.6 % at 400 iterations).

    Inverted by default through a Fourier image (``param = "fourier"``: its schedule, prior scale
    and sigmoid range, calibrated on train/) optimised by per-sample L-BFGS
    (``recipe_optimiser``, :data:`FOURIER_OPTIMISER`) up to :data:`QUASI_NEWTON_DEPTH`, by its
    Adam deeper; a layer whose code is a clipping activation's output at relative depth ≥
    :data:`DEEP_CLIPPED_DEPTH` declares ``recipe_schedule =`` :data:`DEEP_CLIPPED_SCHEDULE` (2000
    iterations) for it;
    ``invert(..., method="paper")`` takes the paper's pixels, CNN schedule (``schedule = "cnn"``,
    400 iterations) and momentum at ``lr = 1e-2``.
    """

    input_channels = (3,)
    param = "fourier"
    schedule = "cnn"
    lr = 1e-2  # tuned on the train images (benchmarks/tune_lr.py)

    def __init__(self, model: nn.Module, layer: str, input_size: tuple[int, int] | None = None,
                 mean_pixel: float | Sequence[float] | None = None, channels_last: bool = True,
                 chunk_bytes: int | None = CPU_CHUNK_BYTES, grad_leak: float | None = None):
        super().__init__()
        if grad_leak is not None:
            check_leak(grad_leak)
        self.channels_last = bool(channels_last)
        self.chunk_bytes = None if chunk_bytes is None else int(chunk_bytes)
        self._peak: tuple[int, tuple[int, int]] | None = None  # largest activation per image, for (H, W)
        if not isinstance(model, nn.Module):
            raise TypeError(f"CNNLayer needs an nn.Module, got {type(model).__name__}")
        _freeze(model)
        size = input_size if input_size is not None else getattr(model, "input_size", None)
        self.input_size = None if size is None else model_input_size(model, size)
        mp = mean_pixel if mean_pixel is not None else getattr(model, "mean_pixel", 128.0)
        try:
            self.mean_pixel = tuple(float(v) for v in mp)  # per channel (tuple, list, array, tensor)
        except TypeError:
            self.mean_pixel = float(mp)
        self.layer = str(layer)
        self._active = False
        device = _model_device(model)

        try:
            traced = trace_model(model, self.input_size)
        except _TRACE_ERRORS as e:
            traced = None
            trace_error = e
        if traced is not None:
            self.traced = True
            node = traced.node(self.layer)  # UnknownNameError listing the valid names
            self.net = truncate_graph_module(traced.gm, node)
            leak_clipping_gradients(self.net)  # exact until leaking_gradients()
            self.grad_leak = DEFAULT_GRAD_LEAK if grad_leak is None else float(grad_leak)
            _freeze(self.net)
            infos = {traced.node(i.name): i for i in _traced_infos(traced)}
            self.output_shape = tuple(traced.shapes[node.name][1:])
            self.receptive_field = traced.rfs.get(node.name)
            self._field_input_size = traced.input_size  # (H, W) the field and output_shape are for
            self.info = infos.get(node) or self._unlisted_info(traced, node, traced.layer_name.get(node, self.layer))
            self._peak = self._peak_activation(traced)
            clipped = self._clipped_output()
        else:
            self.traced = False
            self.grad_leak = 0.0
            if grad_leak:
                raise ValueError(f"grad_leak needs a model torch.fx can trace ({type(trace_error).__name__})")
            modules = dict(model.named_modules())
            if self.layer not in modules or not self.layer:
                valid = [n for n, _ in _leaf_modules(model)] + [n for n in modules if n and n not in
                                                                dict(_leaf_modules(model))]
                raise UnknownNameError(
                    f"unknown layer {layer!r} for {type(model).__name__} (not traceable by torch.fx: "
                    f"{type(trace_error).__name__}; only module names work); valid layers: " + ", ".join(valid))
            self.net = model
            self._hook = modules[self.layer].register_forward_hook(self._stop_hook)
            self.receptive_field = None
            self.output_shape = None
            # depth from the module's rank among the leaf modules (definition order): listing the
            # layers in call order would run the whole model
            leaves = [n for n, _ in _leaf_modules(model)]
            k = leaves.index(self.layer) + 1 if self.layer in leaves else len(leaves)
            shape: tuple = ()
            if self.input_size is not None:
                with torch.no_grad():
                    shape = tuple(self(torch.full((1, 3, *self.input_size), 128.0,
                                                  device=device or torch.device("cpu"))).shape[1:])
                self.output_shape = shape
            clipped = is_clipping(modules[self.layer])
            self.info = LayerInfo(self.layer, type(modules[self.layer]).__name__, shape,
                                  int(shape[0]) if shape else 0, None, None, None, k, k / max(len(leaves), 1))
        self.relative_depth = self.info.depth if self.info is not None else 1.0
        self.lambda_tv = lambda_tv_for_depth(self.relative_depth)
        self.recipe_schedule = (DEEP_CLIPPED_SCHEDULE if clipped and self.relative_depth >= DEEP_CLIPPED_DEPTH
                                else None)
        deep = self.relative_depth >= QUASI_NEWTON_DEPTH  # keeps the Fourier image's Adam
        self.recipe_optimiser = {} if deep else {"fourier": FOURIER_OPTIMISER}
        if device is not None:
            self.to(device)

    def _clipped_output(self) -> bool:
        """Whether the traced layer's code is the output of a clipping activation."""
        out = next(n for n in self.net.graph.nodes if n.op == "output").args[0]
        return (isinstance(out, fx.Node) and out.op == "call_module"
                and isinstance(self.net.get_submodule(out.target), LeakyClip))

    @staticmethod
    def _unlisted_info(t: TracedModel, node: fx.Node, name: str) -> LayerInfo:
        """Info for a node not in the model's ``layer_names``: depth from the listed layers before it."""
        order = {n: i for i, n in enumerate(t.gm.graph.nodes)}
        listed = t.valid_names()
        k = sum(1 for n in listed if order[t.node(n)] <= order[node])
        shape = tuple(t.shapes[node.name][1:])
        rf = t.rfs.get(node.name)
        return LayerInfo(name, _op_type(node, t.gm), shape, int(shape[0]) if shape else 1,
                         rf.total_size if rf else None, rf.stride if rf else None, rf.start if rf else None,
                         max(k, 1), max(k, 1) / max(len(listed), 1))

    def _peak_activation(self, t: TracedModel) -> tuple[int, tuple[int, int]] | None:
        """(elements of the truncated net's largest activation for one image, the (H, W) it is for)."""
        sizes = [math.prod(shape[1:]) for n in self.net.graph.nodes
                 if (shape := t.shapes.get(n.name)) is not None and len(shape) > 1]
        return (max(sizes), tuple(t.input_size)) if sizes and t.input_size is not None else None

    def chunk_size(self, x: torch.Tensor) -> int:
        """Images per pass for the batch ``x`` ``(B, 3, H, W)``: ``B`` off CPU, without
        ``chunk_bytes`` or for an untraced layer; else as many as keep the largest activation
        (scaled to ``H × W``) within ``chunk_bytes``, at least 1."""
        if self.chunk_bytes is None or self._peak is None or x.device.type != "cpu" or x.dim() != 4:
            return int(x.shape[0])
        elems, (h0, w0) = self._peak
        per_image = elems * x.element_size() * (x.shape[-2] * x.shape[-1]) / max(h0 * w0, 1)
        return max(1, min(int(x.shape[0]), int(self.chunk_bytes // max(per_image, 1.0))))

    def _run_traced(self, x: torch.Tensor) -> torch.Tensor:
        """The truncated net on ``x`` in chunks (:meth:`chunk_size`), channels-last when asked."""
        k = self.chunk_size(x)
        run = (lambda v: self.net(v)) if k >= x.shape[0] else (lambda v: torch.cat([self.net(c) for c in v.split(k)]))
        if self.channels_last and x.dim() == 4:
            try:
                return run(x.contiguous(memory_format=torch.channels_last)).contiguous()
            except RuntimeError:
                y = run(x)  # raises when the net fails in NCHW too
                self.channels_last = False  # the net needs NCHW strides
                return y
        return run(x)

    @contextmanager
    def leaking_gradients(self, leak: float) -> Iterator[None]:
        """Within the block the clipping activations leak ``leak`` (0 ≤ leak < 1) of the gradient
        where they clip; exact again afterwards. A hook-mode layer accepts only 0."""
        if not self.traced:
            with super().leaking_gradients(leak):
                yield
            return
        set_gradient_leak(self.net, leak)
        try:
            yield
        finally:
            set_gradient_leak(self.net, 0.0)

    def code_stride(self) -> int | None:
        """The layer's receptive-field stride (rows), or ``None`` when unknown (hook mode)."""
        rf = self.receptive_field
        return None if rf is None else max(1, int(round(float(rf.stride[0]))))

    def receptive_field_box(self, window: int) -> tuple[int, int, int, int] | None:
        """Input-pixel box ``(top, left, bottom, right)`` seen by the central ``window × window``
        units of the code (the window :func:`preimage.masks.central_window_mask` selects), for an
        input of ``input_size``: bottom/right exclusive, clipped to the input, so
        ``image[..., top:bottom, left:right]`` is the region. A code without spatial axes (fc)
        sees the whole field of its unit; ``None`` when the receptive field is unknown."""
        if int(window) < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        rf = self.receptive_field
        if rf is None:
            return None
        hw = tuple(self.output_shape[1:]) if len(self.output_shape) == 3 else None
        units = center_window(hw[0], hw[1], int(window)) if hw is not None else None
        return units_box(rf, hw, self._field_input_size, units)

    def _stop_hook(self, module, inputs, output):
        if self._active:
            raise _StopForward(output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, 3, H, W)`` RGB on 0–255 → the layer's activations ``(B, ...)``."""
        self.check_input(x)
        if self.traced:
            return self._run_traced(x)
        self._active = True
        try:
            self.net(x)
        except _StopForward as stop:
            out = stop.output
        else:
            raise RuntimeError(f"layer {self.layer!r} was not called during the forward pass")
        finally:
            self._active = False
        if not torch.is_tensor(out):
            raise TypeError(f"layer {self.layer!r} outputs a {type(out).__name__}, not a tensor")
        return out

    def train(self, mode: bool = True) -> "CNNLayer":
        """The wrapped network always stays in eval mode (no dropout, frozen BatchNorm)."""
        super().train(mode)
        self.net.eval()
        return self

    def extra_repr(self) -> str:
        rf = self.receptive_field
        rf_s = "" if rf is None else f", receptive_field={tuple(int(v) if float(v).is_integer() else v for v in rf.total_size)}"
        return (f"layer={self.layer!r}, output_shape={self.output_shape}, input_size={self.input_size}"
                f"{rf_s}, traced={self.traced}" + (f", grad_leak={self.grad_leak:g}" if self.grad_leak else ""))
