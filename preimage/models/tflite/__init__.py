"""Import quantised TensorFlow Lite image classifiers as float PyTorch ``torch.fx`` graphs.

:func:`import_tflite` parses a ``.tflite`` flatbuffer (with the ``tflite`` package), dequantises
its weights and biases (``real = scale · (q − zero_point)``, per tensor or per channel) and builds a
:class:`TFLiteNet`: a :class:`torch.fx.GraphModule` with one node per TFLite operator, working in
NCHW, whose convolutions and fully connected layers are real ``nn.Conv2d`` / ``nn.Linear``
submodules holding float weights. Any node can therefore be cut out with ``torch.fx`` (see
:meth:`TFLiteNet.truncate`) and inverted.

The module's input is an RGB batch ``(B, 3, H, W)`` on a 0–255 scale; it starts with the model's
own input quantisation (``real = scale · (pixel − zero_point)``, as the interpreter sees a uint8
pixel), so nobody preprocesses by hand. Its output is the model's output (for the MobileNets, the
softmax probabilities ``(B, num_classes)``).

One job per module:

* :mod:`.parse`: the flatbuffer → :class:`TFLiteSpec` (tensors, operators, options; no torch);
* :mod:`.naming`: readable layer names (``conv1``, ``block{k}_{part}``, ``conv_last``, ``avgpool``,
  ``classifier``, ``logits``, ``softmax``; see there);
* :mod:`.ops`: the runtime functions and modules the graph calls (TF padding, NHWC axes, the
  integer emulation);
* :mod:`.convert`: :func:`build_net`, a registry of converters, one per operator kind;
* :mod:`.net`: :class:`TFLiteNet` and its truncation;
* :mod:`.reference`: :class:`ReferenceInterpreter`, the TFLite interpreter the tests compare with.

Node ``X`` is the output of op ``X`` *after* its fused activation (ReLU6 for most MobileNet ops);
when the op has a fused activation, or when quantisation is emulated, node ``X_preact`` is the
value before the activation / rounding. The submodule holding the weights of op ``X`` is also
called ``X`` (``net.block3_expand.weight``).

With ``emulate_quantization=True`` every activation is fake-quantised with its TFLite scale and
zero point (rounded half away from zero and clamped to the integer range, the fused activation
becoming the clamp, as the integer kernels do); gradients pass straight through inside the clamp
range. The input pixels are then rounded to integers too.

Supported operators: CONV_2D, DEPTHWISE_CONV_2D (SAME padding computed per input size, TF style:
the extra row/column goes at the bottom/right; VALID), AVERAGE_POOL_2D, MAX_POOL_2D, MEAN, ADD,
RESHAPE, SQUEEZE, FULLY_CONNECTED, SOFTMAX, QUANTIZE, DEQUANTIZE; fused activations NONE, RELU,
RELU_N1_TO_1, RELU6. Anything else raises :class:`UnsupportedOpError` naming the op.
"""

from __future__ import annotations

from .convert import build_net, import_tflite
from .net import TFLiteNet
from .ops import fake_quant
from .parse import TFLiteError, TFLiteSpec, UnsupportedOpError, parse_tflite
from .reference import ReferenceInterpreter

__all__ = [
    "TFLiteError", "UnsupportedOpError", "TFLiteNet", "TFLiteSpec", "import_tflite", "parse_tflite",
    "build_net", "fake_quant", "ReferenceInterpreter",
]
