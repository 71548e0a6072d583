"""How a CNN layer's passes are executed (issue 12, "cheaper passes"): one forward + backward to the
input of MobileNet v2 layers, per image, for each execution of :class:`~preimage.representations.cnn.CNNLayer`.

**Executions** (``--executions``), in one run, interleaved:

* ``nchw``: :data:`~preimage.representations.cnn.PLAIN_EXECUTION`, the execution before this benchmark
  existed (one NCHW pass over the whole batch);
* ``channels-last``: channels-last memory format, one pass over the batch;
* ``chunked:M``: channels-last, on CPU in chunks whose largest activation is at most M MiB
  (``chunked:default`` is :data:`~preimage.representations.cnn.CPU_CHUNK_BYTES`, what ``CNNLayer``
  does by default);
* ``compiled`` (opt-in): ``chunked:default`` with ``torch.compile`` of the truncated network
  (inductor; needs a C++ compiler on CPU). Its compile time is reported apart, not in the pass
  times; a failure to compile is recorded in its row.

**Measured** per (layer, size, batch, execution): milliseconds of CPU time per image of one forward
and backward to the input (``time.process_time``, median over ``--repeats`` after a warm-up; one
torch thread by default, so the numbers do not depend on the other load of a shared machine as
much as wall time does), the images per pass (``CNNLayer.chunk_size``), the ratio to ``nchw`` at
the same batch and to ``nchw`` at batch 1, and the largest difference of the codes from ``nchw``'s
(float rounding only). The executions' rounds alternate, so a change of load hits all alike.

Usage::

    python benchmarks/bench_execution.py [--threads 1] [--layers conv1,block5_add,block10_add,block16_add]
        [--sizes 224,64] [--batches 1,8,64] [--executions nchw,channels-last,chunked:default,...]
        [--repeats 5] [--out FILE.json]

writes the JSON (``_harness``) and a Markdown table beside ``--out`` (``FILE.md``). ``--quick``: one
layer at 32², batches 1 and 2, one repeat. Batch 64 runs at sizes ≤ 64 only (``--max-pixels``).
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from pathlib import Path

import _harness as bench  # first: it makes the checkout importable
import torch

from preimage.models import get_model  # noqa: E402
from preimage.representations.cnn import CPU_CHUNK_BYTES, PLAIN_EXECUTION, CNNLayer  # noqa: E402


def execution_options(name: str) -> dict:
    """``CNNLayer`` keyword arguments of an execution name (see the module docstring)."""
    if name == "compiled":
        return {"channels_last": True, "chunk_bytes": CPU_CHUNK_BYTES}
    if name == "nchw":
        return dict(PLAIN_EXECUTION)
    if name == "channels-last":
        return {"channels_last": True, "chunk_bytes": None}
    if name.startswith("chunked:"):
        mib = name.split(":", 1)[1]
        return {"channels_last": True,
                "chunk_bytes": CPU_CHUNK_BYTES if mib == "default" else int(float(mib) * (1 << 20))}
    raise ValueError(f"unknown execution {name!r} (nchw, channels-last, chunked:MIB, chunked:default)")


def pass_seconds(rep: CNNLayer, x: torch.Tensor) -> float:
    """CPU seconds of one forward + backward of ``rep`` to the input batch ``x``."""
    x = x.detach().requires_grad_(True)
    t0 = time.process_time()
    y = rep(x)
    (y * y).sum().backward()
    return time.process_time() - t0


def bench_layer(model, layer: str, size: int, batch: int, executions: list[str], repeats: int) -> list[dict]:
    """Every execution on one (layer, size, batch): rows with ms per image and the code difference."""
    reps = {e: CNNLayer(model, layer, input_size=(size, size), **execution_options(e)) for e in executions}
    x = 255 * torch.rand((batch, 3, size, size), generator=torch.Generator().manual_seed(0))
    compile_seconds = None
    if "compiled" in reps:
        try:
            compile_seconds = compile_net(reps["compiled"], x)
        except Exception as e:  # noqa: BLE001 - inductor's failures are many; the row says which
            executions = [e2 for e2 in executions if e2 != "compiled"]
            failed = {"layer": layer, "size": size, "batch": batch, "execution": "compiled",
                      "error": f"{type(e).__name__}: {str(e)[:200]}"}
            return [failed] + bench_layer(model, layer, size, batch, executions, repeats)
    with torch.no_grad():
        codes = {e: r(x) for e, r in reps.items()}
    times: dict[str, list[float]] = {e: [] for e in executions}
    for e, r in reps.items():  # warm-up
        pass_seconds(r, x)
    for k in range(repeats):
        for e in (executions if k % 2 == 0 else executions[::-1]):
            times[e].append(pass_seconds(reps[e], x))
    base = codes.get("nchw", next(iter(codes.values())))
    return [{"layer": layer, "size": size, "batch": batch, "execution": e,
             "images_per_pass": reps[e].chunk_size(x),
             "ms_per_image": 1e3 * statistics.median(times[e]) / batch,
             "max_abs_difference": float((codes[e] - base).abs().max()),
             "code_scale": float(base.abs().max()),
             **({"compile_seconds": compile_seconds} if e == "compiled" else {})} for e in executions]


def compile_net(rep: CNNLayer, x: torch.Tensor) -> float:
    """Replace ``rep.net`` by its ``torch.compile``d version and compile it for ``x`` (a forward and
    a backward): the wall seconds that took."""
    rep.net = torch.compile(rep.net)
    t0 = time.perf_counter()
    pass_seconds(rep, x)
    return time.perf_counter() - t0


def add_ratios(rows: list[dict]) -> None:
    """``vs_nchw`` (to ``nchw`` at the same layer, size and batch) and ``vs_nchw_batch1`` (to
    ``nchw`` at batch 1): costs per image, below 1 is faster."""
    nchw = {(r["layer"], r["size"], r["batch"]): r["ms_per_image"] for r in rows
            if r["execution"] == "nchw" and "error" not in r}
    smallest = {}
    for (layer, size, batch), ms in sorted(nchw.items(), key=lambda kv: kv[0][2]):
        smallest.setdefault((layer, size), ms)
    for r in (r for r in rows if "error" not in r):
        same, one = nchw.get((r["layer"], r["size"], r["batch"])), smallest.get((r["layer"], r["size"]))
        r["vs_nchw"] = r["ms_per_image"] / same if same else None
        r["vs_nchw_batch1"] = r["ms_per_image"] / one if one else None


def _parse(argv):
    ap = bench.parser(__doc__.splitlines()[0], repeats=5)
    ap.set_defaults(threads=1)
    ap.add_argument("--layers", default="conv1,block5_add,block10_add,block16_add")
    ap.add_argument("--sizes", default="224,64", help="square input sides, comma-separated")
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--executions", default="nchw,channels-last,chunked:1,chunked:default,chunked:16")
    ap.add_argument("--max-pixels", type=int, default=8 * 224 * 224,
                    help="skip (size, batch) pairs with more pixels per pass than this (default 8 × 224²)")
    args = ap.parse_args(argv)
    return bench.quick(args, layers="block3_add", sizes="32", batches="1,2", repeats=1)


def main(argv=None) -> int:
    """Measure every (layer, size, batch, execution), emit the JSON and write the Markdown."""
    args = _parse(argv)
    bench.setup(args)
    executions = [e.strip() for e in args.executions.split(",") if e.strip()]
    for e in executions:
        execution_options(e)  # fail early on a bad name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_model("mobilenet_v2")
    rows = []
    with bench.Stopwatch() as sw:
        for size in (int(s) for s in args.sizes.split(",")):
            for batch in (int(b) for b in args.batches.split(",")):
                if batch * size * size > args.max_pixels:
                    continue
                for layer in (s.strip() for s in args.layers.split(",") if s.strip()):
                    for row in bench_layer(model, layer, size, batch, executions, args.repeats):
                        rows.append(row)
                        bench.progress(row)
    add_ratios(rows)
    out = bench.emit("bench_execution", args, {"rows": rows, "total_seconds": sw.seconds,
                                               "settings": {"cpu_chunk_bytes": CPU_CHUNK_BYTES}})
    if args.out:
        Path(args.out).with_suffix(".md").write_text(markdown(out))
    return 0


def markdown(out: dict) -> str:
    """The run's Markdown table."""
    mach = out["machine"]
    lines = [f"# CNN layer execution ({out['benchmark']})", "",
             f"MobileNet v2, one forward + backward to the input, CPU ms per image (median of "
             f"{out['settings']['repeats']}); {mach['torch_threads']} torch thread(s) on {mach['cpu']} (load average "
             f"at the end {mach['load_average_1min']}); the default chunk budget is "
             f"{out['settings']['cpu_chunk_bytes'] / (1 << 20):g} MiB; {out['total_seconds'] / 60:.1f} min in all.", "",
             "| layer | size | batch | execution | images / pass | ms / image | × nchw (same batch) "
             "| × nchw batch 1 | max. code difference |", "|---|---|---|---|---|---|---|---|---|"]
    fmt = (lambda v: "—" if v is None or not math.isfinite(v) else f"{v:.2f}")
    for r in out["rows"]:
        if "error" in r:
            lines.append(f"| {r['layer']} | {r['size']}² | {r['batch']} | {r['execution']} | failed: {r['error'][:80]} "
                         "| | | | |")
            continue
        name = r["execution"] + (f" (compiling: {r['compile_seconds']:.0f} s)" if r.get("compile_seconds") else "")
        lines.append(f"| {r['layer']} | {r['size']}² | {r['batch']} | {name} | {r['images_per_pass']} "
                     f"| {r['ms_per_image']:.1f} | {fmt(r['vs_nchw'])} | {fmt(r['vs_nchw_batch1'])} "
                     f"| {r['max_abs_difference']:.1e} (of {r['code_scale']:.0f}) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
