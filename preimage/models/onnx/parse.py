"""Reading an ``.onnx`` file into a small, immutable intermediate representation (no torch).

:func:`parse_onnx` parses the protobuf with the ``onnx`` package (data only: nothing in the file
is executed, and tensors stored outside the file are refused), runs ``onnx.checker``, and returns
an :class:`OnnxSpec`: the nodes in graph order (:class:`OnnxNode`: op type, name, input/output
value names, attributes as plain Python values), the constants (initializers and ``Constant``
nodes) as numpy arrays, the one image input with its shape, and the model's metadata.

Every problem with the file raises :class:`OnnxError` naming the file and what is wrong; an
operator outside :data:`SUPPORTED_OPS` raises :class:`UnsupportedOnnxOpError` naming it and the
supported set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import PreimageError

__all__ = ["OnnxError", "UnsupportedOnnxOpError", "OnnxNode", "OnnxSpec", "parse_onnx", "SUPPORTED_OPS",
           "MAX_FILE_BYTES"]

#: Operators the importer translates (default ONNX domain), in the order messages list them.
SUPPORTED_OPS = (
    "Conv", "Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "MaxPool",
    "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LRN", "BatchNormalization", "Gemm", "MatMul",
    "Add", "Sub", "Mul", "Div", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Concat", "Pad",
    "ReduceMean", "Softmax", "Transpose", "Dropout", "Identity", "Constant",
)
#: Largest file read (ONNX files over 2 GiB keep their weights outside the file, which is refused).
MAX_FILE_BYTES = 2 ** 31
_FLOAT_TYPES = (1, 10, 11)  # FLOAT, FLOAT16, DOUBLE


class OnnxError(PreimageError, ValueError):
    """A file that is not a usable ONNX image model (unreadable, truncated, invalid, dynamic size)."""


class UnsupportedOnnxOpError(OnnxError):
    """The model uses an operator, attribute value or graph structure this importer does not translate."""


@dataclass(eq=False)
class OnnxNode:
    """One ONNX node: ``op`` (``"Conv"`` …), its ``name`` (may be empty), input value names
    (``""`` for an absent optional input), output value names, attributes (ints, floats, strings
    as ``str``, lists, tensors as numpy arrays) and its position ``index`` in the graph."""

    op: str
    name: str
    inputs: list
    outputs: list
    attrs: dict = field(default_factory=dict)
    index: int = 0

    @property
    def where(self) -> str:
        """``"node 12 (Conv 'conv1')"`` for messages."""
        label = self.name or (self.outputs[0] if self.outputs else "")
        return f"node {self.index} ({self.op} {label!r})"


@dataclass(eq=False)
class OnnxSpec:
    """A parsed model: nodes in order, constants by value name, the image input's name and shape
    ``(N, 3, H, W)`` (dimensions may be strings for symbolic sizes, ``None`` when unknown; a file
    whose input is NHWC has ``input_layout`` ``"NHWC"``, the shape is still given as NCHW), the
    graph output names, the default-domain opset, metadata (``metadata_props`` plus ``doc_string``
    and ``producer_name``) and the source path."""

    nodes: list
    constants: dict
    input_name: str
    input_shape: tuple
    outputs: list
    opset: int
    metadata: dict
    source: str
    shapes: dict = field(default_factory=dict)
    input_layout: str = "NCHW"


def _s(v) -> str:
    """A protobuf string field as ``str`` (invalid UTF-8 in a corrupted file comes back as bytes)."""
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise OnnxError(f"{path}: no such file")
    if path.is_dir():
        raise OnnxError(f"{path}: is a folder, not an .onnx file")
    size = path.stat().st_size
    if size < 16:
        raise OnnxError(f"{path}: {size} bytes is too short to be an ONNX model")
    if size > MAX_FILE_BYTES:
        raise OnnxError(f"{path}: {size} bytes is over the 2 GiB protobuf limit (external data is not supported)")
    return path.read_bytes()


def _load_proto(path: Path, raw: bytes):
    import onnx
    from google.protobuf.message import DecodeError
    model = onnx.ModelProto()
    try:
        model.ParseFromString(raw)
    except (DecodeError, ValueError, RuntimeError, TypeError, OverflowError, MemoryError) as exc:
        raise OnnxError(f"{path}: not an ONNX model, or a truncated/corrupted one (protobuf: "
                        f"{type(exc).__name__}: {exc})") from None
    if model.ir_version <= 0 or not model.HasField("graph") or len(model.graph.node) == 0:
        raise OnnxError(f"{path}: not an ONNX model (no graph nodes / IR version; truncated or another kind of file)")
    return model


def _skeleton(model, limit: int = 1 << 16):
    """A copy of ``model`` whose large initializers are graph inputs of the same type and shape
    instead (no data): what the checker and shape inference see, so that they do not copy hundreds
    of megabytes. The tensors' own sizes are checked when they are read (:func:`_tensor`)."""
    import onnx
    from onnx import helper
    g, src = onnx.GraphProto(), model.graph
    g.name, g.doc_string = src.name, src.doc_string
    for field_name in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(g, field_name).extend(getattr(src, field_name))
    listed = {i.name for i in src.input}
    for t in src.initializer:
        if len(t.raw_data) > limit:
            if t.name not in listed:
                g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            g.initializer.append(t)
    sk = onnx.ModelProto()
    sk.ir_version, sk.producer_name, sk.producer_version = model.ir_version, model.producer_name, model.producer_version
    sk.domain, sk.model_version, sk.doc_string = model.domain, model.model_version, model.doc_string
    sk.opset_import.extend(model.opset_import)
    sk.functions.extend(model.functions)
    sk.graph.CopyFrom(g)
    return sk


def _check(path: Path, model) -> None:
    import onnx
    for t in list(model.graph.initializer):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise OnnxError(f"{path}: tensor {_s(t.name)!r} is stored in an external file, which is not supported "
                            "(save the model with its weights inside the .onnx file)")
    try:
        onnx.checker.check_model(_skeleton(model))
    except Exception as exc:  # noqa: BLE001 - the checker's C++ errors have several types
        msg = " ".join(str(exc).split())[:300]
        raise OnnxError(f"{path}: invalid ONNX model (onnx.checker: {msg})") from None


def _attr_value(a):
    from onnx import helper, numpy_helper
    v = helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, list) and v and isinstance(v[0], bytes):
        return [s.decode("utf-8", "replace") for s in v]
    if hasattr(v, "dims") and hasattr(v, "data_type"):
        return numpy_helper.to_array(v)
    if isinstance(v, list):
        return list(v)
    return v


def _tensor(path: Path, t) -> np.ndarray:
    """An initializer / constant tensor as a numpy array, its size checked against its dims."""
    from onnx import numpy_helper
    dims = [int(d) for d in t.dims]
    if any(d < 0 for d in dims) or int(np.prod(dims, dtype=np.float64)) > 2 ** 31:
        raise OnnxError(f"{path}: tensor {_s(t.name)!r} has invalid dimensions {dims}")
    try:
        arr = numpy_helper.to_array(t)
    except Exception as exc:  # noqa: BLE001 - malformed data of any kind
        raise OnnxError(f"{path}: tensor {_s(t.name)!r} cannot be read ({type(exc).__name__}: {exc})") from None
    if list(arr.shape) != dims:
        raise OnnxError(f"{path}: tensor {_s(t.name)!r} holds {arr.size} values for dimensions {dims}")
    return arr


def _nodes(path: Path, graph) -> tuple[list, dict]:
    nodes, constants = [], {}
    for k, n in enumerate(graph.node):
        op, name, domain = _s(n.op_type), _s(n.name), _s(n.domain)
        inputs, outputs = [_s(v) for v in n.input], [_s(v) for v in n.output]
        where = f"{path.name}, node {k} ({op} {name or (outputs[0] if outputs else '')!r})"
        if domain not in ("", "ai.onnx"):
            raise UnsupportedOnnxOpError(f"{where}: operator {domain}.{op} of a custom domain is not "
                                         f"supported (supported: {', '.join(SUPPORTED_OPS)})")
        if op not in SUPPORTED_OPS:
            raise UnsupportedOnnxOpError(f"{where}: operator {op} is not supported "
                                         f"(supported: {', '.join(SUPPORTED_OPS)})")
        if not outputs or not outputs[0]:
            raise OnnxError(f"{where}: the node has no output")
        try:
            attrs = {_s(a.name): _attr_value(a) for a in n.attribute}
        except Exception as exc:  # noqa: BLE001
            raise OnnxError(f"{where}: unreadable attribute ({type(exc).__name__}: {exc})") from None
        if op == "Constant":
            if "value" not in attrs or not isinstance(attrs["value"], np.ndarray):
                raise UnsupportedOnnxOpError(f"{where}: only Constant nodes with a tensor 'value' are supported")
            constants[outputs[0]] = np.asarray(attrs["value"])
            continue
        nodes.append(OnnxNode(op, name, inputs, outputs, attrs, k))
    return nodes, constants


def _input(path: Path, graph, constants: dict) -> tuple[str, tuple, str]:
    inputs = [i for i in graph.input if _s(i.name) not in constants]
    if len(inputs) != 1:
        raise OnnxError(f"{path}: the graph has {len(inputs)} non-constant inputs "
                        f"({', '.join(_s(i.name) for i in inputs)}); expected one image input")
    inp = inputs[0]
    name = _s(inp.name)
    tt = inp.type.tensor_type
    if tt.elem_type not in _FLOAT_TYPES:
        raise OnnxError(f"{path}: input {name!r} has element type {tt.elem_type}; a float image input "
                        "(N, 3, H, W) is expected")
    dims = []
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        else:
            dims.append(_s(d.dim_param) or None)
    if len(dims) == 4 and dims[1] != 3 and dims[3] == 3:  # NHWC (TensorFlow exports)
        return name, (dims[0], 3, dims[1], dims[2]), "NHWC"
    if len(dims) != 4 or dims[1] != 3:
        raise OnnxError(f"{path}: input {name!r} has shape {tuple(dims)}; an image input (N, 3, H, W) "
                        "or (N, H, W, 3) is expected (3 channels)")
    return name, tuple(dims), "NCHW"


def _fix_input(path: Path, model, name: str, shape: tuple, input_size, layout: str = "NCHW") -> tuple:
    """The input shape ``(1, 3, H, W)`` to run at: ``input_size`` ``(H, W)`` when given, else the
    file's static size (an :class:`OnnxError` when the file's size is dynamic). Writes it into
    the graph's input so that shape inference sees it."""
    if input_size is not None:
        h, w = (int(v) for v in input_size)
    elif isinstance(shape[2], int) and isinstance(shape[3], int):
        h, w = shape[2], shape[3]
    else:
        raise OnnxError(f"{path}: the input {name!r} has a dynamic size {tuple(shape)}; give the size to run "
                        "at (--input-size H,W, or input_size=(H, W))")
    for inp in model.graph.input:
        if _s(inp.name) == name:
            dims = inp.type.tensor_type.shape.dim
            for d, v in zip(dims, (1, 3, h, w) if layout == "NCHW" else (1, h, w, 3)):
                d.Clear()
                d.dim_value = v
    return (1, 3, h, w)


def _shapes(model) -> dict:
    """Value name → static shape (tuple of ints, ``None`` for unknown dims) from ONNX shape
    inference; values it cannot infer are absent."""
    import onnx
    try:
        inferred = onnx.shape_inference.infer_shapes(_skeleton(model), strict_mode=False)
    except Exception:  # noqa: BLE001 - inference is best effort; converters check what they need
        return {}
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            out[_s(vi.name)] = tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in tt.shape.dim)
    return out


def parse_onnx(path: str | Path, input_size=None) -> OnnxSpec:
    """Parse and check one ``.onnx`` file (see the module docstring). ``input_size``: ``(H, W)``
    to run at (required when the file's input size is dynamic; default the file's).

    Raises :class:`OnnxError` (missing, truncated, corrupted or invalid file; no single NCHW
    3-channel float input; a dynamic size without ``input_size``; external data) or
    :class:`UnsupportedOnnxOpError`.
    """
    path = Path(path)
    model = _load_proto(path, _read_bytes(path))
    _check(path, model)
    opset = max([o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] or [0])
    if opset < 1:
        raise OnnxError(f"{path}: no default-domain opset (field opset_import)")
    graph = model.graph
    nodes, constants = _nodes(path, graph)
    for t in graph.initializer:
        constants[_s(t.name)] = _tensor(path, t)
    for name, v in list(constants.items()):
        if not isinstance(v, np.ndarray):
            raise OnnxError(f"{path}: constant {name!r} is not a tensor")
    name, shape, layout = _input(path, graph, constants)
    shape = _fix_input(path, model, name, shape, input_size, layout)
    meta = {_s(p.key): _s(p.value) for p in model.metadata_props}
    meta.setdefault("producer_name", _s(model.producer_name))
    meta.setdefault("doc_string", _s(model.doc_string or graph.doc_string))
    outputs = [_s(o.name) for o in graph.output]
    if not outputs:
        raise OnnxError(f"{path}: the graph has no outputs")
    return OnnxSpec(nodes, constants, name, shape, outputs, opset, meta, str(path), _shapes(model), layout)
