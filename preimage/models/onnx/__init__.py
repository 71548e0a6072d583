"""Import ONNX image classifiers as float PyTorch ``torch.fx`` graphs: :func:`load_onnx`.

Our own small importer (``onnx2torch`` would pull torchvision): the file is parsed and checked
with the ``onnx`` package (data only, nothing executed; external weight files refused), then each
node becomes a real ``nn.Conv2d``/``nn.Linear``/``nn.BatchNorm2d``/``nn.LocalResponseNorm``/pooling
submodule or a standard torch function in a :class:`OnnxNet` (a ``torch.fx.GraphModule``), so any
layer can be cut out, inverted, and has an exact receptive field.

The module's input is an RGB batch ``(B, 3, H, W)`` on 0–255; it starts with the model's own
preprocessing (:mod:`.metadata`: the file's metadata, the Caffe zoo layout, or arguments).

Layer names: ONNX node names, else output names (the zoo's Caffe conversions give Caffe's names:
``conv1 relu1 pool1 norm1 … fc8 prob``); see :mod:`.naming`.

One job per module:

* :mod:`.parse`: the protobuf → :class:`OnnxSpec` (nodes, constants, input, shapes; no torch);
* :mod:`.naming`: layer names and aliases;
* :mod:`.metadata`: the preprocessing the file asks for;
* :mod:`.convert`: :func:`build_net` and the registry of converters (layers);
* :mod:`.shape_ops`: converters of reshaping, joining and reducing operators;
* :mod:`.net`: :class:`OnnxNet` and its truncation.

Supported operators: :data:`SUPPORTED_OPS` (Conv with groups/dilations/padding, Relu, LeakyRelu,
Clip, Sigmoid, Tanh, HardSigmoid, HardSwish, MaxPool, AveragePool, GlobalAveragePool,
GlobalMaxPool, LRN, BatchNormalization, Gemm, MatMul, Add, Sub, Mul, Div, Flatten, Reshape,
Squeeze, Unsqueeze, Concat, Pad, ReduceMean, Softmax, Transpose, Dropout, Identity, Constant).
Anything else raises :class:`UnsupportedOnnxOpError` naming the op and the supported set. An NHWC
image input (TensorFlow exports) is accepted; its Transpose to NCHW folds away.
"""

from __future__ import annotations

from pathlib import Path

from .convert import build_net
from .metadata import default_preprocessing, resolve_preprocessing
from .net import OnnxNet
from .parse import SUPPORTED_OPS, OnnxError, OnnxSpec, UnsupportedOnnxOpError, parse_onnx

__all__ = ["load_onnx", "OnnxNet", "OnnxError", "UnsupportedOnnxOpError", "OnnxSpec", "parse_onnx",
           "build_net", "SUPPORTED_OPS", "default_preprocessing"]


def load_onnx(path: str | Path, input_size=None, preprocess=None, *, order=None, scale=None, mean=None,
              std=None) -> OnnxNet:
    """Import an ONNX image model as a float :class:`OnnxNet`.

    Args:
        path: the ``.onnx`` file (weights inside it).
        input_size: ``(H, W)`` to run at; required when the file's input size is dynamic.
        preprocess: a preset name (``caffe``, ``torchvision``, ``tf``, ``raw``) or a
            :class:`~preimage.models.preprocess.Preprocessing`; default: the file's own (metadata,
            Caffe layout) or ``torchvision`` with a warning.
        order, scale, mean, std: override parts of it (``"BGR"``, ``1/255``, 3 numbers …).

    Returns:
        a module mapping ``(B, 3, H, W)`` RGB images on 0–255 to the model's first output, in
        eval mode, with ``input_size``, ``mean_pixel``, ``preprocessing``, ``layer_names``.

    Raises:
        OnnxError: unreadable / truncated / corrupted / invalid file, no image input, a dynamic
            size without ``input_size``, bad preprocessing metadata.
        UnsupportedOnnxOpError: an operator, attribute or structure that is not translated.
    """
    spec = parse_onnx(path, input_size)
    prep = resolve_preprocessing(spec, preprocess, order=order, scale=scale, mean=mean, std=std)
    return build_net(spec, prep)
