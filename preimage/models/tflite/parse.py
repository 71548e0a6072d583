"""Parsing a ``.tflite`` flatbuffer into a small, immutable intermediate representation.

:func:`parse_tflite` reads one file (subgraph 0), or a chain of files run one after the other, with
the ``tflite`` package and returns a :class:`TFLiteSpec`: the operators (:class:`TFLiteOp`) in
execution order, each with its input/output :class:`TFLiteTensor` records (static NHWC shape,
storage dtype, quantisation, constant data as numpy arrays) and its builtin options as a plain
dict. Nothing here knows about PyTorch; :mod:`.convert` turns a spec into a module.

Every problem with the file raises :class:`TFLiteError` naming the file and what was being read;
an operator outside :data:`SUPPORTED_OPS` raises :class:`UnsupportedOpError` naming it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ...errors import PreimageError

__all__ = ["TFLiteError", "UnsupportedOpError", "TFLiteTensor", "TFLiteOp", "TFLiteSpec", "parse_tflite",
           "SUPPORTED_OPS", "QRANGE"]


class TFLiteError(PreimageError, ValueError):
    """A file that is not a usable TensorFlow Lite model (unreadable, truncated, inconsistent)."""


class UnsupportedOpError(TFLiteError):
    """The model uses an operator, activation or option this importer does not translate."""


_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16,
           9: np.int8, 10: np.float64}
#: Integer range of each quantised storage type.
QRANGE = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127),
          np.dtype(np.int16): (-32768, 32767)}
_ACTIVATIONS = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}
_PADDINGS = {0: "SAME", 1: "VALID"}


@dataclass(eq=False)
class TFLiteTensor:
    """One TFLite tensor: static NHWC shape, storage dtype, quantisation, constant data.

    ``scale``: float64 array of length 1 (per tensor) or C (per channel, along ``qdim``), or
    ``None``; ``zero_point``: int64 array of the same length; ``data``: the constant value as
    stored (typed and shaped like ``shape``) or ``None`` for activations.
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: np.ndarray | None = None       # float64, length 1 (per tensor) or C (per channel)
    zero_point: np.ndarray | None = None  # int64, same length
    qdim: int = 0
    data: np.ndarray | None = None        # constant value as stored (typed, shaped) or None

    @property
    def quantized(self) -> bool:
        """Whether the tensor is stored as integers with a quantisation scale."""
        return self.scale is not None and np.issubdtype(self.dtype, np.integer)

    @property
    def per_tensor(self) -> tuple[float, int] | None:
        """(scale, zero_point) of a per-tensor quantised tensor, else None."""
        if self.scale is None or len(self.scale) != 1:
            return None
        return float(self.scale[0]), int(self.zero_point[0])

    def real(self) -> np.ndarray:
        """The constant's real value (float32 array of ``shape``), dequantised per tensor or per
        channel: ``scale · (q − zero_point)``."""
        if self.data is None:
            raise TFLiteError(f"tensor {self.name!r} has no constant data")
        if not self.quantized or np.issubdtype(self.data.dtype, np.floating):
            return self.data.astype(np.float32)
        q = self.data.astype(np.float64)
        scale, zp = self.scale, self.zero_point.astype(np.float64)
        if len(scale) > 1:
            if not 0 <= self.qdim < q.ndim or q.shape[self.qdim] != len(scale):
                raise TFLiteError(
                    f"tensor {self.name!r}: {len(scale)} per-channel scales do not match dimension "
                    f"{self.qdim} of shape {q.shape} (field quantization.quantized_dimension)")
            view = [1] * q.ndim
            view[self.qdim] = len(scale)
            scale, zp = scale.reshape(view), zp.reshape(view)
        return (scale * (q - zp)).astype(np.float32)


@dataclass(eq=False)
class TFLiteOp:
    """One operator: its kind (``"CONV_2D"`` …), input tensors (``None`` for an absent optional
    input), its single output, its builtin options, where it is (for messages) and the index of
    its file in a chain (``part``)."""

    kind: str
    inputs: list            # of TFLiteTensor | None (optional inputs are None)
    outputs: list           # of TFLiteTensor
    options: dict = field(default_factory=dict)
    where: str = ""         # "file.tflite, operator 12" for error messages
    part: int = 0           # index of the file in a composition


@dataclass(eq=False)
class TFLiteSpec:
    """A parsed model (or a chain of models): the operators in execution order, the graph input
    and output tensors, and the source file(s). Built by :func:`parse_tflite`; immutable by
    convention, so it can be cached and turned into any number of fresh modules."""

    ops: list
    input: TFLiteTensor
    output: TFLiteTensor
    sources: tuple[str, ...]


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise TFLiteError(msg)


# --------------------------------------------------------------------------------------------
# Builtin options: one reader per supported operator kind
# --------------------------------------------------------------------------------------------

def _options(op, cls_name: str, where: str, required: bool = True):
    import tflite
    table = op.BuiltinOptions()
    if table is None:
        if required:
            raise TFLiteError(f"{where}: missing builtin options (field builtin_options, {cls_name})")
        return None
    opts = getattr(tflite, cls_name)()
    opts.Init(table.Bytes, table.Pos)
    return opts


def _act(o) -> str:
    return _ACTIVATIONS.get(o.FusedActivationFunction(), f"code {o.FusedActivationFunction()}")


def _pad(o) -> str:
    return _PADDINGS.get(o.Padding(), f"code {o.Padding()}")


def _conv_options(op, where: str) -> dict:
    o = _options(op, "Conv2DOptions", where)
    return dict(padding=_pad(o), stride=(o.StrideH(), o.StrideW()), activation=_act(o),
                dilation=(o.DilationHFactor() or 1, o.DilationWFactor() or 1))


def _depthwise_options(op, where: str) -> dict:
    o = _options(op, "DepthwiseConv2DOptions", where)
    return dict(padding=_pad(o), stride=(o.StrideH(), o.StrideW()), activation=_act(o),
                dilation=(o.DilationHFactor() or 1, o.DilationWFactor() or 1),
                depth_multiplier=o.DepthMultiplier())


def _pool_options(op, where: str) -> dict:
    o = _options(op, "Pool2DOptions", where)
    return dict(padding=_pad(o), stride=(o.StrideH(), o.StrideW()),
                kernel=(o.FilterHeight(), o.FilterWidth()), activation=_act(o))


def _add_options(op, where: str) -> dict:
    o = _options(op, "AddOptions", where, required=False)
    return dict(activation=_act(o) if o is not None else "NONE")


def _fully_connected_options(op, where: str) -> dict:
    o = _options(op, "FullyConnectedOptions", where, required=False)
    if o is None:
        return dict(activation="NONE", keep_num_dims=False, weights_format=0)
    return dict(activation=_act(o), keep_num_dims=bool(o.KeepNumDims()), weights_format=o.WeightsFormat())


def _softmax_options(op, where: str) -> dict:
    o = _options(op, "SoftmaxOptions", where, required=False)
    return dict(beta=float(o.Beta()) if o is not None else 1.0)


def _reshape_options(op, where: str) -> dict:
    o = _options(op, "ReshapeOptions", where, required=False)
    shape = None
    if o is not None and o.NewShapeLength() > 0:
        shape = [int(v) for v in o.NewShapeAsNumpy()]
    return dict(new_shape=shape)


def _squeeze_options(op, where: str) -> dict:
    o = _options(op, "SqueezeOptions", where, required=False)
    dims = [int(v) for v in o.SqueezeDimsAsNumpy()] if o is not None and o.SqueezeDimsLength() else []
    return dict(squeeze_dims=dims)


def _mean_options(op, where: str) -> dict:
    o = _options(op, "ReducerOptions", where, required=False)
    return dict(keep_dims=bool(o.KeepDims()) if o is not None else False)


def _no_options(op, where: str) -> dict:
    return {}


#: Operator kind → reader of its builtin options (a dict). Its keys are the operators the parser
#: accepts, in the order error messages list them; :data:`.convert.CONVERTERS` translates them.
_OPTION_READERS: dict[str, Callable[[object, str], dict]] = {
    "CONV_2D": _conv_options, "DEPTHWISE_CONV_2D": _depthwise_options,
    "AVERAGE_POOL_2D": _pool_options, "MAX_POOL_2D": _pool_options, "MEAN": _mean_options,
    "ADD": _add_options, "RESHAPE": _reshape_options, "SQUEEZE": _squeeze_options,
    "FULLY_CONNECTED": _fully_connected_options, "SOFTMAX": _softmax_options,
    "QUANTIZE": _no_options, "DEQUANTIZE": _no_options,
}

#: The TFLite operator kinds this importer reads and translates.
SUPPORTED_OPS = tuple(_OPTION_READERS)


# --------------------------------------------------------------------------------------------
# Reading one file
# --------------------------------------------------------------------------------------------

class _FileReader:
    """Reads subgraph 0 of one flatbuffer; :attr:`what` names the part being read, for the error
    raised when the flatbuffer turns out malformed."""

    def __init__(self, path: Path, raw: bytes, part: int):
        self.path, self.raw, self.part = path, raw, part
        self.what = "the model header"
        self.tensors: dict[int, TFLiteTensor] = {}

    def read(self) -> TFLiteSpec:
        """The file's :class:`TFLiteSpec` (raises TFLiteError / UnsupportedOpError, or whatever
        the flatbuffer accessors raise on a malformed file)."""
        import tflite
        path = self.path
        self.model = tflite.Model.GetRootAsModel(self.raw, 0)
        self.what = "field subgraphs"
        _check(self.model.SubgraphsLength() >= 1, f"{path}: no subgraphs (field subgraphs is empty)")
        self.graph = graph = self.model.Subgraphs(0)
        self.n_buffers = self.model.BuffersLength()
        self.n_tensors = graph.TensorsLength()
        ops = [self.op(k) for k in range(graph.OperatorsLength())]
        self.what = "field subgraphs[0].inputs/outputs"
        ins = [int(i) for i in graph.InputsAsNumpy()] if graph.InputsLength() else []
        outs = [int(i) for i in graph.OutputsAsNumpy()] if graph.OutputsLength() else []
        _check(len(ins) == 1, f"{path}: the model has {len(ins)} inputs, expected 1")
        _check(len(outs) == 1, f"{path}: the model has {len(outs)} outputs, expected 1")
        _check(len(ops) > 0, f"{path}: the model has no operators")
        return TFLiteSpec(ops, self.tensor(ins[0]), self.tensor(outs[0]), (str(path),))

    def op(self, k: int) -> TFLiteOp:
        """Operator ``k``, its kind checked against :data:`SUPPORTED_OPS`."""
        from tflite.utils import BUILTIN_OPCODE2NAME
        path, model = self.path, self.model
        self.what = f"operator {k}"
        where = f"{path.name}, operator {k}"
        op = self.graph.Operators(k)
        idx = op.OpcodeIndex()
        _check(0 <= idx < model.OperatorCodesLength(),
               f"{path}: operator {k} has opcode index {idx} out of range (field opcode_index)")
        oc = model.OperatorCodes(idx)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        kind = BUILTIN_OPCODE2NAME.get(code, f"builtin code {code}")
        if kind == "CUSTOM":
            custom = (oc.CustomCode() or b"?").decode("utf-8", "replace")
            raise UnsupportedOpError(f"{where}: custom operator {custom!r} is not supported "
                                     f"(supported: {', '.join(SUPPORTED_OPS)})")
        if kind not in SUPPORTED_OPS:
            raise UnsupportedOpError(f"{where}: operator {kind} is not supported "
                                     f"(supported: {', '.join(SUPPORTED_OPS)})")
        inputs = [self.tensor(int(i)) if i >= 0 else None for i in
                  (op.InputsAsNumpy() if op.InputsLength() else [])]
        outputs = [self.tensor(int(i)) for i in (op.OutputsAsNumpy() if op.OutputsLength() else [])]
        _check(len(outputs) == 1, f"{where}: {kind} has {len(outputs)} outputs, expected 1")
        _check(len(inputs) >= 1 and inputs[0] is not None, f"{where}: {kind} has no input")
        self.what = f"options of operator {k} ({kind})"
        options = _OPTION_READERS[kind](op, where)
        return TFLiteOp(kind, inputs, outputs, options, where, self.part)

    def tensor(self, i: int) -> TFLiteTensor:
        """Tensor ``i`` (read once, then shared by every operator that uses it)."""
        if i in self.tensors:
            return self.tensors[i]
        path = self.path
        _check(0 <= i < self.n_tensors, f"{path}: tensor index {i} out of range (0..{self.n_tensors - 1})")
        self.what = f"tensor {i}"
        t = self.graph.Tensors(i)
        tname = (t.Name() or b"").decode("utf-8", "replace")
        self.what = f"tensor {i} ({tname})"
        code = t.Type()
        _check(code in _DTYPES, f"{path}: tensor {tname!r} has unsupported type code {code} "
                                f"(field tensors[{i}].type)")
        dtype = np.dtype(_DTYPES[code])
        shape = tuple(int(s) for s in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        _check(all(s >= 0 for s in shape), f"{path}: tensor {tname!r} has negative dimensions {shape}")
        out = TFLiteTensor(tname, shape, dtype)
        self._quantization(t, out)
        self._constant(t, out)
        self.tensors[i] = out
        return out

    def _quantization(self, t, out: TFLiteTensor) -> None:
        """Fill ``out``'s scale, zero point and quantised dimension from the flatbuffer tensor ``t``."""
        q = t.Quantization()
        if q is None or q.ScaleLength() <= 0:
            return
        path, tname = self.path, out.name
        scale = q.ScaleAsNumpy().astype(np.float64)
        zp = (q.ZeroPointAsNumpy().astype(np.int64) if q.ZeroPointLength()
              else np.zeros(len(scale), np.int64))
        _check(len(zp) == len(scale), f"{path}: tensor {tname!r} has {len(scale)} scales but "
                                      f"{len(zp)} zero points (field quantization)")
        _check(bool(np.all(np.isfinite(scale)) and np.all(scale > 0)),
               f"{path}: tensor {tname!r} has a non-positive or non-finite quantisation scale")
        out.scale, out.zero_point, out.qdim = scale, zp, int(q.QuantizedDimension())

    def _constant(self, t, out: TFLiteTensor) -> None:
        """Fill ``out.data`` from the tensor's buffer, when it has a non-empty one."""
        b = t.Buffer()
        if not 0 < b < self.n_buffers:
            return
        raw, shape, dtype = self.raw, out.shape, out.dtype
        buf = self.model.Buffers(b)
        off = buf.Offset()
        if off > 1:  # large models keep buffers after the flatbuffer
            data = np.frombuffer(raw, np.uint8, count=max(buf.Size(), 0), offset=off) \
                if off + buf.Size() <= len(raw) else np.zeros(0, np.uint8)
        else:
            data = buf.DataAsNumpy()
        if not isinstance(data, int) and len(data) > 0:
            need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            _check(len(data) == need,
                   f"{self.path}: tensor {out.name!r} needs {need} bytes of data for shape {shape} "
                   f"({dtype}) but its buffer {b} holds {len(data)} (truncated or corrupt file)")
            out.data = np.frombuffer(np.asarray(data).tobytes(), dtype).reshape(shape)


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, after checking that it exists and carries the TFLite identifier."""
    if not path.exists():
        raise TFLiteError(f"{path}: no such file")
    if path.is_dir():
        raise TFLiteError(f"{path}: is a folder, not a .tflite file")
    raw = path.read_bytes()
    if len(raw) < 8:
        raise TFLiteError(f"{path}: {len(raw)} bytes is too short to be a TensorFlow Lite model")
    if raw[4:8] != b"TFL3":
        raise TFLiteError(f"{path}: not a TensorFlow Lite model (file identifier {raw[4:8]!r}, "
                          f"expected b'TFL3')")
    return raw


def _parse_file(path: Path, part: int) -> TFLiteSpec:
    """One .tflite file → TFLiteSpec (subgraph 0). Raises TFLiteError / UnsupportedOpError."""
    import tflite  # noqa: F401 - fail early, with ImportError, when the package is missing

    reader = _FileReader(path, _read_bytes(path), part)
    try:
        return reader.read()
    except PreimageError:
        raise
    except (IndexError, struct.error, ValueError, TypeError, AttributeError, OverflowError,
            UnicodeDecodeError, MemoryError) as exc:
        raise TFLiteError(f"{path}: malformed or truncated TensorFlow Lite file while reading "
                          f"{reader.what} ({type(exc).__name__}: {exc})") from None


def parse_tflite(paths: str | Path | Sequence[str | Path]) -> TFLiteSpec:
    """Parse one ``.tflite`` file, or a chain of them run one after the other (each file's single
    input takes the previous file's single output: e.g. an embedding extractor then a head).

    The graph input must be an RGB image ``(1, H, W, 3)`` (uint8, int8 or float32). Raises
    :class:`TFLiteError` (malformed file, incompatible chain) or :class:`UnsupportedOpError`.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise TFLiteError("no .tflite file given")
    specs = [_parse_file(p, k) for k, p in enumerate(paths)]
    ops = list(specs[0].ops)
    for prev, nxt in zip(specs, specs[1:]):
        a, b = prev.output, nxt.input
        if tuple(a.shape) != tuple(b.shape):
            raise TFLiteError(f"cannot chain {Path(prev.sources[0]).name} → {Path(nxt.sources[0]).name}: "
                              f"output shape {a.shape} ≠ input shape {b.shape}")
        # a synthetic QUANTIZE carries the value across (identity unless the grids differ)
        ops.append(TFLiteOp("QUANTIZE", [a], [b], {}, f"chain {Path(nxt.sources[0]).name}", nxt.ops[0].part))
        ops.extend(nxt.ops)
    spec = TFLiteSpec(ops, specs[0].input, specs[-1].output, tuple(s.sources[0] for s in specs))
    _validate_input(spec)
    return spec


def _validate_input(spec: TFLiteSpec) -> None:
    t = spec.input
    src = spec.sources[0]
    if len(t.shape) != 4 or t.shape[3] != 3:
        raise TFLiteError(f"{src}: expected an RGB image input of shape (1, H, W, 3), found {t.shape}")
    if t.dtype not in (np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.float32)):
        raise TFLiteError(f"{src}: unsupported input type {t.dtype} (uint8, int8 or float32 expected)")
    if t.dtype != np.dtype(np.float32) and t.per_tensor is None:
        raise TFLiteError(f"{src}: the quantised input {t.name!r} has no per-tensor scale/zero point")
