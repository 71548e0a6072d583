"""Importing the user's own networks: per model, the import time, the forward agreement with the
reference runtime (onnxruntime for ONNX, the TFLite interpreter for TFLite) on eval images, and
the time to invert one middle layer.

Models: a CaffeNet ONNX file laid out like the ONNX model zoo's (full size, 61 M weights, written
here with random weights), CaffeNet-like / MobileNet-like / small-ResNet networks exported with
``torch.onnx.export`` (tests/helpers/onnx_nets.py), and the shared TFLite MobileNets (v2, v1
0.25 128) by path.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_import.py --threads 1 --out import.json
    .venv/bin/python benchmarks/bench_import.py --quick          # smoke run

Agreement: ``max |y - ref| / max |ref|`` over the images and whether every top-1 matches; for the
quantised TFLite files also with ``emulate_quantization=True`` (the interpreter's integer kernels),
in output quantisation steps. Inversion: ``preimage.invert`` of the middle layer named below for
``--iters`` iterations, one image, wall seconds.
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from _harness import emit, parser, progress, quick, setup  # puts the checkout on sys.path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.onnx_nets import caffenet_like, caffenet_zoo_onnx, export, mobilenet_like, small_resnet  # noqa: E402

from preimage.data import eval_images, spread  # noqa: E402
from preimage.io.images import load_image, resize  # noqa: E402
from preimage.models import get_model  # noqa: E402

#: model → (how it is made, mid layer to invert)
ONNX_MODELS = {
    "caffenet_zoo_onnx": ("zoo", "conv3"),
    "caffenet_like_onnx": ("caffenet_like", "conv_8_Conv"),
    "mobilenet_like_onnx": ("mobilenet_like", "add_5_Add"),
    "small_resnet_onnx": ("small_resnet", "relu_5_Relu_1"),
}
TFLITE_MODELS = {"mobilenet_v2_tflite": ("mobilenet_v2_1.0_224_quant.tflite", "block10_add"),
                 "mobilenet_v1_small_tflite": ("mobilenet_v1_0.25_128_quant.tflite", "block7_pointwise")}
_MAKERS = {"caffenet_like": (caffenet_like, 227), "mobilenet_like": (mobilenet_like, 224),
           "small_resnet": (small_resnet, 224)}


def _onnx_file(kind: str, folder: Path, quick_run: bool) -> Path:
    if kind == "zoo":
        return caffenet_zoo_onnx(folder / "caffenet_zoo.onnx", fc=256 if quick_run else 4096)
    fn, size = _MAKERS[kind]
    return export(fn(), folder / f"{kind}.onnx", size)


def _images(n: int, size) -> torch.Tensor:
    return torch.stack([resize(load_image(p, mode="rgb"), tuple(size)) for p in spread(eval_images(), n)])


def _agreement(y: np.ndarray, ref: np.ndarray) -> dict:
    return {"max_rel_diff": float(np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-12)),
            "top1_agree": bool((y.argmax(1) == ref.argmax(1)).all())}


def _onnx_agreement(path: Path, net, x: torch.Tensor) -> dict:
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    xin = net.preprocessing.apply(x).numpy()
    ref = np.concatenate([sess.run(None, {name: xin[i:i + 1]})[0] for i in range(len(x))])
    with torch.no_grad():
        y = net(x).numpy()
    return _agreement(y.reshape(len(x), -1), ref.reshape(len(x), -1))


def _tflite_agreement(path: Path, net, x: torch.Tensor) -> dict:
    from preimage.models.tflite import ReferenceInterpreter, import_tflite
    ref = ReferenceInterpreter([path])
    real = ref(x, dequantize=True)
    with torch.no_grad():
        y = net(x).double().numpy()
        emu = import_tflite(path, emulate_quantization=True)(x.round()).double().numpy()
    step = ref.output_quantization[0]
    out = _agreement(y, real)
    out["emulated_max_steps"] = float(np.abs(emu - real).max() / step) if step else None
    out["emulated_top1_agree"] = bool((emu.argmax(1) == real.argmax(1)).all())
    return out


def _invert_seconds(net, layer: str, image: torch.Tensor, iters: int) -> dict:
    from preimage.invert import invert
    from preimage.representations.cnn import CNNLayer
    rep = CNNLayer(net, layer)
    t0 = time.perf_counter()
    res = invert(rep, image[None], iterations=iters, progress=False)
    return {"invert_layer": layer, "invert_iters": iters, "invert_seconds": time.perf_counter() - t0,
            "invert_relative_error": float(res.relative_errors.min())}


def _measure(name: str, path: Path, layer: str, kind: str, args) -> dict:
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = get_model(str(path))
    rec = {"model": name, "file": path.name, "file_mb": path.stat().st_size / 1e6,
           "import_seconds": time.perf_counter() - t0, "layers": len(net.layer_names)}
    x = _images(args.images, net.input_size)
    rec.update(_onnx_agreement(path, net, x) if kind == "onnx" else _tflite_agreement(path, net, x))
    rec.update(_invert_seconds(net, layer, x[0], args.iters))
    progress(rec)
    return rec


def main() -> None:
    ap = parser(__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=8, help="eval images for the agreement (default 8)")
    ap.add_argument("--iters", type=int, default=50, help="iterations of the timed inversion (default 50)")
    args = quick(ap.parse_args(), images=2, iters=3)
    setup(args)
    from preimage.data import shared_dir
    shared = shared_dir()
    if shared is None:
        raise SystemExit("bench_import needs the shared data (PREIMAGE_DATA): eval images and MobileNets")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (kind, layer) in ONNX_MODELS.items():
            rows.append(_measure(name, _onnx_file(kind, Path(tmp), args.quick), layer, "onnx", args))
    for name, (fname, layer) in TFLITE_MODELS.items():
        rows.append(_measure(name, shared / "models" / fname, layer, "tflite", args))
    emit("bench_import", args, {"models": rows})


if __name__ == "__main__":
    main()
