"""Batched optimisers for the inversion objective.

The paper's method is momentum gradient descent (m = 0.9) with a staged learning-rate schedule,
momentum reset at each stage change (as the authors' code does), from Gaussian noise of norm 1
in σ-units (i.e. norm σ in pixels)::

    v ← m·v − η_t ∇E(u);   u ← u + v

It runs on a whole batch at once (N images × R restarts × K regularisation settings); every
sample's energy is independent, so the batch is a set of independent problems sharing kernels.
Adam and L-BFGS are available as options.

Interrupted runs resume: with ``checkpoint`` set, the state (u, v, iteration, settings
fingerprint) is written atomically to a safetensors file every ``checkpoint_every`` iterations and
read back on the next call with the same settings.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .objective import InversionObjective

#: Stages (iterations, learning-rate multiplier) of the authors' shallow schedule: 800 iterations.
SHALLOW_SCHEDULE = ((200, 1.0), (200, 0.1), (200, 0.01), (200, 0.001))
#: Stages of the authors' CNN schedule: 400 iterations.
CNN_SCHEDULE = ((100, 1.0), (200, 0.1), (100, 0.01))

SCHEDULES = {"shallow": SHALLOW_SCHEDULE, "cnn": CNN_SCHEDULE}


def make_schedule(schedule: str | Sequence[tuple[int, float]], iterations: int | None = None
                  ) -> tuple[tuple[int, float], ...]:
    """Resolve a schedule name or stage list, optionally rescaled to ``iterations`` in total
    (stage lengths kept in proportion)."""
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
        stages = SCHEDULES[schedule]
    else:
        stages = tuple((int(n), float(f)) for n, f in schedule)
    if not stages or any(n < 0 for n, _ in stages):
        raise ValueError(f"invalid schedule {stages}")
    if iterations is not None:
        total = sum(n for n, _ in stages)
        if iterations < 1:
            raise ValueError("iterations must be at least 1")
        cuts = [round(iterations * sum(n for n, _ in stages[:i + 1]) / total) for i in range(len(stages))]
        lens = [cuts[0]] + [cuts[i] - cuts[i - 1] for i in range(1, len(cuts))]
        stages = tuple((n, f) for n, (_, f) in zip(lens, stages) if n > 0)
    return stages


@dataclass
class OptimResult:
    """What an optimisation returns.

    ``u``: final variables ``(N, C, H, W)``; ``energy``: final per-sample terms (floats, lists of
    length N) under keys data/alpha/tv/total; ``history``: per-sample totals every
    ``record_every`` iterations, ``(T, N)``; ``iterations``: iterations run in total;
    ``resumed_from``: iteration a checkpoint was resumed from (0 if none).
    """

    u: torch.Tensor
    energy: dict[str, list[float]]
    history: torch.Tensor
    iterations: int
    resumed_from: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def gaussian_init(n: int, shape: Sequence[int], seed: int | torch.Generator | None = 0,
                  device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``n`` Gaussian noise images ``(n, C, H, W)``, each scaled to unit norm (σ in pixels)."""
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed or 0))
    u = torch.randn((n,) + tuple(shape), generator=gen, dtype=torch.float64)
    u = u / u.flatten(1).norm(dim=1).view(-1, *([1] * len(shape)))
    return u.to(device=device, dtype=dtype)


def _fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _save_checkpoint(path: Path, u: torch.Tensor, v: torch.Tensor, it: int, fp: str,
                     lr: torch.Tensor | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tensors = {"u": u.detach().cpu().contiguous(), "v": v.detach().cpu().contiguous()}
    if lr is not None:  # per-sample rates after divergence back-offs
        tensors["lr"] = lr.detach().cpu().contiguous()
    save_file(tensors, str(tmp),
              metadata={"iteration": str(it), "fingerprint": fp})
    os.replace(tmp, path)


def _load_checkpoint(path: Path, fp: str):
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("fingerprint") != fp:
            return None
        t = load_file(str(path))
        return t["u"], t["v"], int(meta["iteration"]), t.get("lr")
    except Exception:  # a torn or foreign file: start over rather than fail
        return None


def minimise(objective: InversionObjective, u0: torch.Tensor, *, lr: float | Sequence[float],
             schedule: str | Sequence[tuple[int, float]] = "shallow", iterations: int | None = None,
             method: str = "momentum", momentum: float = 0.9, progress: bool | str = True,
             record_every: int = 10, checkpoint: str | Path | None = None, checkpoint_every: int = 50,
             callback: Callable[[int, torch.Tensor], None] | None = None,
             stop_on_divergence: bool = True, max_backoffs: int = 8) -> OptimResult:
    """Minimise ``objective`` from ``u0`` ``(N, C, H, W)``.

    Args:
        objective: an :class:`InversionObjective` for a batch of N.
        u0: initial variables (see :func:`gaussian_init`).
        lr: base learning rate η (multiplied by each stage's factor); with ``method="momentum"``
            a sequence of N values gives each sample its own rate (batched learning-rate sweeps).
        schedule: ``"shallow"`` (800 its), ``"cnn"`` (400 its) or ``[(iterations, factor), …]``.
        iterations: rescale the schedule to this many iterations.
        method: ``"momentum"`` (the paper's), ``"adam"`` or ``"lbfgs"``.
        progress: show a tqdm bar (a string is used as its description).
        record_every: record per-sample energies every this many iterations.
        checkpoint: file to save/resume state (safetensors), written atomically.
        callback: called as ``callback(iteration, u)`` after each recorded iteration.
        stop_on_divergence: when a sample's energy stops being finite, with ``method="momentum"``
            the sample is put back to its last finite state (checked every ``record_every``
            iterations), its velocity zeroed and its own rate halved, up to ``max_backoffs`` times
            (the high-order α-norm makes too large a rate blow up rather than oscillate); then,
            or with the other methods, ``FloatingPointError`` is raised. When False the sample is
            left non-finite (its energy reads NaN/Inf) and the others go on (learning-rate sweeps).
        max_backoffs: most rate halvings per sample before giving up (0: raise at once).
    Returns:
        :class:`OptimResult`.
    """
    import time

    stages = make_schedule(schedule, iterations)
    total = sum(n for n, _ in stages)
    if method not in ("momentum", "adam", "lbfgs"):
        raise ValueError(f"unknown method {method!r}; valid: momentum, adam, lbfgs")
    lr_t = torch.as_tensor(lr, dtype=u0.dtype, device=u0.device).flatten()
    if lr_t.numel() not in (1, u0.shape[0]) or not torch.isfinite(lr_t).all() or (lr_t <= 0).any():
        raise ValueError(f"lr must be positive and finite, one value or one per sample; got {lr}")
    if lr_t.numel() > 1 and method != "momentum":
        raise ValueError("per-sample learning rates need method='momentum'")
    lr_b = lr_t.view(-1, *([1] * (u0.dim() - 1))).expand(u0.shape[0], *([1] * (u0.dim() - 1))).clone()
    lr = float(lr_t[0]) if lr_t.numel() == 1 else lr_t.tolist()
    settings = dict(lr=lr, stages=stages, method=method, momentum=momentum, shape=list(u0.shape),
                    init=float(u0.double().sum()), lambda_tv=objective.lambda_tv.tolist(),
                    lambda_alpha=objective.lambda_alpha.tolist(), target=float(objective.target.double().sum()))
    fp = _fingerprint(settings)
    u = u0.detach().clone()
    v = torch.zeros_like(u)
    start = 0
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is not None and ckpt.exists():
        loaded = _load_checkpoint(ckpt, fp)
        if loaded is not None:
            u, v, start = (loaded[0].to(u0), loaded[1].to(u0), loaded[2])
            if loaded[3] is not None and loaded[3].shape == lr_b.shape:
                lr_b = loaded[3].to(u0)
    resumed_from = start
    backoff = stop_on_divergence and method == "momentum" and max_backoffs > 0
    safe_u = u.detach().clone() if backoff else None  # last state with a finite energy, per sample
    backoffs = torch.zeros(u.shape[0], dtype=torch.long)
    e_start = None  # per-sample energy where this run started: only states below it are kept as safe
    u.requires_grad_(True)

    opt = None
    if method == "adam":
        opt = torch.optim.Adam([u], lr=lr)
    elif method == "lbfgs":
        opt = torch.optim.LBFGS([u], lr=lr, max_iter=1, history_size=20, line_search_fn="strong_wolfe")

    history = []
    desc = progress if isinstance(progress, str) else "inverting"
    bar = tqdm(total=total, initial=start, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    t0 = time.perf_counter()
    it = 0
    last_terms = None
    for n_stage, factor in stages:
        stage_start, stage_end = it, it + n_stage
        it = stage_end
        if stage_end <= start:
            continue
        eta = None if method == "momentum" else lr * factor  # momentum: per-sample lr_b · factor
        if method == "momentum":
            if stage_start >= start:  # momentum reset at each rate change (kept when resuming mid-stage)
                v.zero_()
        elif opt is not None:
            for g in opt.param_groups:
                g["lr"] = eta
        for k in range(max(stage_start, start), stage_end):
            def closure():
                if u.grad is not None:
                    u.grad = None
                terms = objective(u)
                terms.total.sum().backward()
                closure.terms = terms
                return terms.total.sum()
            if method == "momentum":
                closure()
                if e_start is None:
                    e_start = closure.terms.total.detach().cpu()
                if backoff and ((k + 1) % record_every == 0 or k + 1 == total):
                    u_eval = u.detach().clone()  # the state whose energy is recorded below
                with torch.no_grad():
                    v.mul_(momentum).sub_((lr_b * factor) * u.grad)
                    u.add_(v)
            else:
                opt.step(closure)
            last_terms = closure.terms
            step = k + 1
            if step % record_every == 0 or step == total:
                with torch.no_grad():
                    tot = last_terms.total.detach().cpu()
                bad = ~torch.isfinite(tot)
                if stop_on_divergence and bad.any():
                    if not backoff or int(backoffs[bad].max()) >= max_backoffs:
                        bar.close()
                        raise FloatingPointError(
                            f"the objective diverged (non-finite) at iteration {step}"
                            + (f" after {max_backoffs} rate halvings" if backoff else "")
                            + f"; lower the learning rate (now {lr_b.flatten().tolist() if backoff else lr})")
                    with torch.no_grad():  # back off: last finite state, no velocity, half the rate
                        idx = bad.nonzero().flatten().to(u.device)
                        u[idx] = safe_u[idx]
                        v[idx] = 0
                        lr_b[idx] = lr_b[idx] / 2
                        backoffs[bad] += 1
                        tot = tot.clone()
                        tot[bad] = float("nan")
                elif backoff:
                    keep = (tot <= e_start).nonzero().flatten().to(u.device)
                    with torch.no_grad():
                        safe_u[keep] = u_eval[keep]
                history.append(tot)
                bar.set_postfix(E=f"{float(tot.mean()):.4g}", data=f"{float(last_terms.data.detach().mean()):.4g}")
                if callback is not None:
                    callback(step, u.detach())
            if ckpt is not None and step % checkpoint_every == 0 and step < total:
                _save_checkpoint(ckpt, u, v, step, fp, lr_b)
            bar.update(1)
    bar.close()
    seconds = time.perf_counter() - t0
    u = u.detach()
    with torch.no_grad():
        final = objective(u)
    energy = {k: getattr(final, k).detach().cpu().double().tolist() for k in ("data", "alpha", "tv", "total")}
    if ckpt is not None:
        _save_checkpoint(ckpt, u, v, total, fp, lr_b)
    hist = torch.stack(history) if history else torch.zeros(0, u.shape[0])
    extra = {}
    if int(backoffs.sum()):
        extra = {"backoffs": backoffs.tolist(), "final_lr": lr_b.flatten().tolist()}
    return OptimResult(u=u, energy=energy, history=hist, iterations=total, resumed_from=resumed_from,
                       seconds=seconds, extra=extra)
