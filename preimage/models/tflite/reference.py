"""The reference: the original ``.tflite`` file(s) run by the TFLite interpreter.

Used by the tests and ``benchmarks/validate_tflite.py`` to check the imported nets; needs the
optional dependency ``ai-edge-litert`` (imported when an interpreter is made).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = ["ReferenceInterpreter"]


class ReferenceInterpreter:
    """Runs the original ``.tflite`` file(s) with ``ai_edge_litert``'s interpreter, chained as
    :func:`parse_tflite` chains them, one image at a time.

    ``__call__(pixels)``: ``(B, 3, H, W)`` tensor on 0–255 (rounded and clamped to integers, then
    cast to the model's input type: uint8 as is, int8 as ``pixel − 128``) → ``(B, num_classes)``
    numpy array of the raw (quantised) outputs. ``dequantize`` gives real values instead.
    """

    def __init__(self, paths: str | Path | Sequence[str | Path], num_threads: int = 1):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("the reference interpreter needs `pip install ai-edge-litert`") from exc
        if isinstance(paths, (str, Path)):
            paths = [paths]
        self.interpreters = []
        for p in paths:
            it = Interpreter(model_path=str(p), num_threads=num_threads)
            it.allocate_tensors()
            self.interpreters.append(it)

    @property
    def output_quantization(self) -> tuple[float, int]:
        """``(scale, zero_point)`` of the (last) model's output; ``(0.0, 0)`` for a float output.
        Real value = ``scale · (raw − zero_point)``."""
        s, zp = self.interpreters[-1].get_output_details()[0]["quantization"]
        return float(s), int(zp)

    def __call__(self, pixels: torch.Tensor, dequantize: bool = False) -> np.ndarray:
        first = self.interpreters[0].get_input_details()[0]
        x = pixels.detach().cpu().double().round().clamp(0, 255).permute(0, 2, 3, 1).numpy()
        x = (x - 128).astype(np.int8) if first["dtype"] == np.int8 else x.astype(first["dtype"])
        outs = []
        for img in x:
            v = img[None]
            for it in self.interpreters:
                d_in = it.get_input_details()[0]
                it.set_tensor(d_in["index"], v.astype(d_in["dtype"]))
                it.invoke()
                d_out = it.get_output_details()[0]
                v = it.get_tensor(d_out["index"])
            outs.append(v.reshape(-1))
        out = np.stack(outs)
        s, zp = self.output_quantization
        return s * (out.astype(np.float64) - zp) if dequantize and s > 0 else out
