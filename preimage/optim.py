"""Batched optimisers for the inversion objective.

The paper's method is momentum gradient descent (m = 0.9) with a staged learning-rate schedule,
momentum reset at each stage change (as the authors' code does), from Gaussian noise of norm 1
in σ-units (i.e. norm σ in pixels)::

    v ← m·v − η_t ∇E(u);   u ← u + v

It runs on a whole batch at once (N images × R restarts × K regularisation settings); every
sample's energy is independent, so the batch is a set of independent problems sharing kernels.
Adam and a per-sample L-BFGS (:class:`LBFGS`, one network pass a step) are available; L-BFGS on a
Fourier image is preimage's default for CNN layers.

Pieces:

* a *stepper* per method (:class:`Momentum`, :class:`Adam`, :class:`LBFGS`) owns the variables
  (the parameters of a :class:`~preimage.params.base.Parameterisation`: ``u`` itself for pixels,
  Fourier coefficients, a generator's weights; all sample-major) and the method's state; ``step`` makes one iteration, ``settle`` checks a recorded energy
  for divergence, ``state_dict``/``load_state_dict`` give and take the whole state;
* :class:`DivergenceBackoff`, the momentum stepper's policy when a sample's energy stops being
  finite (back to its last finite state, its own rate halved);
* :func:`minimise` runs a schedule's stages with a stepper, records energies, shows progress and
  checkpoints, and returns an :class:`OptimResult`;
* :class:`EarlyStop` (``minimise(tol=...)``, opt-in): each sample leaves a stage when its energy has
  converged (relative improvement over a window below ``tol``), so the schedule advances per
  sample; a sample past its last stage is frozen and leaves the data term's batch.

The data term may see a transformed image (jitter, scale, rotation: ``transform``) while the
priors act on the untransformed one.

Interrupted runs resume: with ``checkpoint`` set, the stepper's whole state (parameters, velocity or
Adam/L-BFGS state, per-sample rates, halving counts; with ``tol`` also each sample's stage,
window and whether it has finished), the iteration and a settings fingerprint (``tol`` and
``window`` included) are written atomically to a safetensors file every ``checkpoint_every``
iterations and read back on the next call with the same settings.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from .io.cache import atomic_write_bytes, stable_key, tensors_bytes
from .objective import EnergyTerms, InversionObjective
from .paper import MOMENTUM, SCHEDULES
from .params import Parameterisation
from .params.pixel import PixelParam, unit_noise

METHODS = ("momentum", "adam", "lbfgs")
#: ``minimise(tol=...)``: iterations over which a sample's relative improvement is measured.
DEFAULT_WINDOW = 20
#: ``minimise(tol=...)``: convergence is checked every this many iterations (one device sync).
CHECK_EVERY = 5
#: Bumped when the checkpoint layout changes: older checkpoints are then ignored (started over).
CHECKPOINT_FORMAT = 4  # 4: L-BFGS's per-sample history


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


def gaussian_init(n: int, shape: Sequence[int], seed: int | torch.Generator | None = 0,
                  device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``n`` Gaussian noise images ``(n, C, H, W)``, each scaled to unit norm (σ in pixels)
    (:func:`preimage.params.pixel.unit_noise`)."""
    return unit_noise(n, shape, seed).to(device=device, dtype=dtype)


@dataclass
class OptimResult:
    """What an optimisation of N samples returns.

    Attributes:
        u: final variables ``(N, C, H, W)``.
        energy: final per-sample terms (lists of N floats) under keys data/alpha/tv/total.
        history: per-sample totals every ``record_every`` iterations, ``(T, N)`` (NaN where a
            sample diverged and was backed off).
        iterations: iterations of the schedule in total.
        backoffs: ``(N,)`` int64, rate halvings of each sample after divergence (all zero for
            methods without back-off), counted over the whole run, resumed parts included.
        final_lr: ``(N,)`` float64, each sample's base learning rate at the end (the given rate
            halved ``backoffs`` times; without a stage factor).
        resumed_from: iteration a checkpoint was resumed from (0 if none).
        seconds: wall time of this call's iterations.
        iterations_used: ``(N,)`` int64, iterations each sample was optimised (``iterations`` for
            all without ``tol``; fewer for a sample that converged early).
        final_stage: ``(N,)`` int64, index of the schedule stage each sample ended in.
    """

    u: torch.Tensor
    energy: dict[str, list[float]]
    history: torch.Tensor
    iterations: int
    backoffs: torch.Tensor
    final_lr: torch.Tensor
    resumed_from: int = 0
    seconds: float = 0.0
    iterations_used: torch.Tensor | None = None
    final_stage: torch.Tensor | None = None


# ----------------------------------------------------------------------------------------------
# Steppers
# ----------------------------------------------------------------------------------------------

Transform = Callable[[torch.Tensor, int], torch.Tensor]


class Closure:
    """``closure()``: E summed over the batch, with every variable's ``grad`` set; ``terms`` holds
    the last evaluation's per-sample :class:`~preimage.objective.EnergyTerms` ``(N,)`` each.

    ``u = param()`` each call; the data term sees ``transform(u, iteration)`` when a transform is
    given (the priors always see ``u``); :attr:`iteration` is set by the loop.

    :meth:`restrict` limits the evaluation to a subset of the samples (the others' gradients
    are zero and their terms keep the values of their last evaluation, :attr:`last`).
    """

    def __init__(self, objective: InversionObjective, param: Parameterisation, transform: Transform | None = None):
        self.objective, self.param, self.transform = objective, param, transform
        self.variables = [t for t in param.parameters() if t.requires_grad]
        self.terms: EnergyTerms | None = None
        self.last: EnergyTerms | None = None  # detached, (N,) each
        self.iteration = 0
        self.active: torch.Tensor | None = None
        self._part: InversionObjective | None = None

    def restrict(self, active: torch.Tensor | None) -> None:
        """Evaluate only the samples ``active`` ``(M,)`` int64 (ascending) from now on; ``None``:
        all N. The transform still sees the whole batch (its random draws do not depend on it)."""
        if active is None:
            self.active, self._part = None, None
            return
        self.active = active.to(self.objective.target.device)
        self._part = self.objective.subset(self.active)

    def __call__(self) -> torch.Tensor:
        for t in self.variables:
            t.grad = None
        u = self.param()
        seen = None if self.transform is None else self.transform(u, self.iteration)
        if self.active is None:
            terms = self.objective(u, seen)
        else:
            idx = self.active
            terms = self._part(u[idx], None if seen is None else seen[idx])
        terms.total.sum().backward()
        self.terms = self._remember(terms)
        return terms.total.sum()

    def _remember(self, terms: EnergyTerms) -> EnergyTerms:
        """Keep the evaluated terms in :attr:`last` (scattered into rows :attr:`active` when
        restricted); returns the terms of all N samples."""
        with torch.no_grad():
            if self.active is None:
                self.last = EnergyTerms(terms.data.detach(), terms.alpha.detach(), terms.tv.detach())
                return terms
            parts = []
            for key in ("data", "alpha", "tv"):
                full = getattr(self.last, key).clone()
                full[self.active] = getattr(terms, key).detach()
                parts.append(full)
            self.last = EnergyTerms(*parts)
            return self.last


def _rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """A sample-major tensor viewed as ``(N, -1)``: row i is sample i's values."""
    return t.view(n, -1)


class Stepper:
    """One optimisation method on the variables of ``param`` (a
    :class:`~preimage.params.base.Parameterisation` of N samples; every variable sample-major).

    ``lr``: the base rate as given (a float, or N floats for the momentum stepper), multiplied by
    each stage's factor (:meth:`start_stage`).
    """

    #: Whether a non-finite energy raises at :meth:`settle` (``minimise(stop_on_divergence=...)``).
    stop_on_divergence = True

    def __init__(self, param: Parameterisation, lr: float | list[float]):
        self.param = param
        self.names = [k for k, t in param.named_parameters() if t.requires_grad]
        self.variables = [t for t in param.parameters() if t.requires_grad]
        self.n = int(param.n)
        self.lr = lr

    def start_stage(self, factor: float, reset: bool) -> None:
        """Enter a stage at rate ``lr · factor``; ``reset``: the stage starts here (not resumed
        in its middle)."""
        raise NotImplementedError

    def set_stage_factors(self, factors: torch.Tensor, reset: torch.Tensor) -> None:
        """Per-sample stages (``minimise(tol=...)``), instead of :meth:`start_stage`: sample i
        runs at rate ``lr_i · factors[i]`` from now on (``factors`` ``(N,)`` float64, ≥ 0; 0
        freezes the sample exactly); ``reset`` ``(N,)`` bool: those samples enter a new stage."""
        raise ValueError(f"{type(self).__name__} has one rate for the batch: no per-sample stages")

    def step(self, closure: Closure, recorded: bool = False) -> EnergyTerms:
        """One iteration; returns the energy terms evaluated (at the state before the update).
        ``recorded``: :meth:`settle` will be called with this iteration's energy."""
        raise NotImplementedError

    def settle(self, total: torch.Tensor, iteration: int) -> torch.Tensor:
        """Check the recorded per-sample energy ``total`` ``(N,)`` (CPU) of ``iteration``: raise
        ``FloatingPointError`` when one is not finite (and :attr:`stop_on_divergence`); returns
        the energy to record."""
        if self.stop_on_divergence and not torch.isfinite(total).all():
            raise FloatingPointError(f"the objective diverged (non-finite) at iteration {iteration}; "
                                     f"lower the learning rate (now {self.lr})")
        return total

    def rates(self) -> torch.Tensor:
        """``(N,)`` float64: each sample's base rate now."""
        return torch.full((self.n,), float(self.lr), dtype=torch.float64)

    def halvings(self) -> torch.Tensor:
        """``(N,)`` int64: rate halvings of each sample so far."""
        return torch.zeros(self.n, dtype=torch.long)

    def state_dict(self) -> dict[str, Any]:
        """The whole state: tensors, numbers and lists of tensors, keyed by name (the variables
        under ``param.<name>``)."""
        return {f"param.{k}": t.detach() for k, t in zip(self.names, self.variables)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take a state of :meth:`state_dict` (same batch and shapes)."""
        with torch.no_grad():
            for k, t in zip(self.names, self.variables):
                t.copy_(state[f"param.{k}"])


class DivergenceBackoff:
    """What the momentum stepper does when a sample's energy stops being finite.

    The high-order α-norm makes too large a rate blow up rather than oscillate. At each recorded
    iteration a sample whose energy is not finite is put back to its last finite state (the last
    recorded state with an energy not above the run's starting energy), its velocity zeroed and
    its own rate halved, up to ``max_halvings`` times; then ``FloatingPointError`` is raised.
    """

    def __init__(self, variables: Sequence[torch.Tensor], n: int, max_halvings: int):
        self.max_halvings = int(max_halvings)
        self.n = int(n)
        self.safe = [t.detach().clone() for t in variables]  # last state with a finite energy
        self.halvings = torch.zeros(self.n, dtype=torch.long)
        self.start_energy: torch.Tensor | None = None  # only states below it are kept as safe

    def observe(self, total: torch.Tensor) -> None:
        """Note the energy ``(N,)`` of an evaluation (the first one is the starting energy)."""
        if self.start_energy is None:
            self.start_energy = total.detach().cpu()

    def accept(self, total: torch.Tensor, evaluated: Sequence[torch.Tensor]) -> None:
        """All of ``total`` is finite: keep ``evaluated`` (the variables of that energy) as the
        safe state of the samples not above their starting energy."""
        with torch.no_grad():
            for safe, ev in zip(self.safe, evaluated):
                keep = (total <= self.start_energy).nonzero().flatten().to(ev.device)
                _rows(safe, self.n)[keep] = _rows(ev, self.n)[keep]

    def restore(self, variables: Sequence[torch.Tensor], idx: torch.Tensor) -> None:
        """Put the samples ``idx`` of ``variables`` back to their safe state."""
        with torch.no_grad():
            for t, safe in zip(variables, self.safe):
                _rows(t, self.n)[idx] = _rows(safe, self.n)[idx]

    def charge(self, bad: torch.Tensor, iteration: int, rates: torch.Tensor) -> None:
        """Count one halving for the samples ``bad`` ``(N,)`` bool; raise ``FloatingPointError``
        when one of them has had ``max_halvings`` already."""
        if int(self.halvings[bad].max()) >= self.max_halvings:
            raise FloatingPointError(
                f"the objective diverged (non-finite) at iteration {iteration} after {self.max_halvings} "
                f"rate halvings; lower the learning rate (now {rates.flatten().tolist()})")
        self.halvings[bad] += 1

    def state_dict(self) -> dict[str, Any]:
        """``backoff.safe`` (a list of the variables' safe values), ``backoff.halvings`` ``(N,)``
        int64 and, once known, ``backoff.start_energy`` ``(N,)``."""
        state = {"backoff.safe": self.safe, "backoff.halvings": self.halvings}
        if self.start_energy is not None:
            state["backoff.start_energy"] = self.start_energy
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take a state of :meth:`state_dict`."""
        self.safe = [t.to(s, copy=True) for t, s in zip(state["backoff.safe"], self.safe)]
        self.halvings = state["backoff.halvings"].to(torch.long).clone()
        start = state.get("backoff.start_energy")
        self.start_energy = None if start is None else start.clone()


class Momentum(Stepper):
    """The paper's momentum descent ``v ← m·v − η_t ∇E; θ ← θ + v`` with per-sample rates, on
    every variable θ of the parameterisation.

    ``lr``: one rate or N (one per sample); ``backoff``: the divergence policy, or ``None``
    (then :meth:`settle` raises, or lets non-finite samples go on when ``stop_on_divergence`` is
    False).
    """

    def __init__(self, param: Parameterisation, lr: float | list[float], momentum: float = MOMENTUM,
                 backoff: DivergenceBackoff | None = None):
        super().__init__(param, lr)
        self.momentum = momentum
        self.v = [torch.zeros_like(t) for t in self.variables]
        first = self.variables[0]
        t = torch.as_tensor(lr, dtype=first.dtype, device=first.device).flatten()
        self.lr_b = t.view(-1, 1).expand(self.n, 1).clone()  # (N, 1)
        self.backoff = backoff
        self.factor: float | torch.Tensor = 1.0  # the stage's factor, or (N, 1) per sample
        self._evaluated: list[torch.Tensor] | None = None

    def start_stage(self, factor: float, reset: bool) -> None:
        self.factor = factor
        if reset:  # momentum reset at each rate change (kept when resuming mid-stage)
            for v in self.v:
                v.zero_()

    def set_stage_factors(self, factors: torch.Tensor, reset: torch.Tensor) -> None:
        """Per-sample factors ``(N,)`` on the rates; the velocity of the samples ``reset``
        ``(N,)`` bool is zeroed (momentum reset at a sample's stage change; a frozen sample,
        factor 0 and no velocity, then stays exactly where it is)."""
        with torch.no_grad():
            self.factor = factors.to(self.lr_b.device, self.lr_b.dtype).view(-1, 1)
            idx = reset.nonzero().flatten().to(self.lr_b.device)
            for v in self.v:
                _rows(v, self.n)[idx] = 0

    def step(self, closure: Closure, recorded: bool = False) -> EnergyTerms:
        closure()
        if self.backoff is not None:
            self.backoff.observe(closure.terms.total)
            if recorded:  # the state whose energy is recorded
                self._evaluated = [t.detach().clone() for t in self.variables]
        with torch.no_grad():
            for t, v in zip(self.variables, self.v):
                rows_v = _rows(v, self.n)
                rows_v.mul_(self.momentum).addcmul_(t.grad.reshape(self.n, -1), self.lr_b * self.factor, value=-1)
                _rows(t, self.n).add_(rows_v)
        return closure.terms

    def settle(self, total: torch.Tensor, iteration: int) -> torch.Tensor:
        if self.backoff is None:
            return super().settle(total, iteration)
        bad = ~torch.isfinite(total)
        if not bad.any():
            self.backoff.accept(total, self._evaluated)
            return total
        self.backoff.charge(bad, iteration, self.lr_b)
        idx = bad.nonzero().flatten().to(self.lr_b.device)
        self.backoff.restore(self.variables, idx)  # back off: last finite state, no velocity, half the rate
        with torch.no_grad():
            for v in self.v:
                _rows(v, self.n)[idx] = 0
            self.lr_b[idx] = self.lr_b[idx] / 2
        total = total.clone()
        total[bad] = float("nan")
        return total

    def rates(self) -> torch.Tensor:
        return self.lr_b.flatten().detach().cpu().double()

    def halvings(self) -> torch.Tensor:
        return super().halvings() if self.backoff is None else self.backoff.halvings.clone()

    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "v": self.v, "lr": self.lr_b}
        if self.backoff is not None:
            state.update(self.backoff.state_dict())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for v, saved in zip(self.v, state["v"]):
            v.copy_(saved)
        self.lr_b.copy_(state["lr"])
        if self.backoff is not None:
            if "backoff.halvings" in state:
                self.backoff.load_state_dict(state)
            else:  # saved without back-off (max_backoffs=0): the loaded state is the safe one
                self.backoff.safe = [t.detach().clone() for t in self.variables]


class _TorchStepper(Stepper):
    """A ``torch.optim`` method on the variables; variable i's per-parameter state is saved under
    ``opt.<i>.<key>``."""

    def __init__(self, param: Parameterisation, lr: float, make: Callable[[list], torch.optim.Optimizer]):
        super().__init__(param, lr)
        self.optimizer = make(self.variables)
        self.row_factor: torch.Tensor | None = None  # (N,) per-sample stage factors, or None

    def start_stage(self, factor: float, reset: bool) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * factor

    def step(self, closure: Closure, recorded: bool = False) -> EnergyTerms:
        if self.row_factor is None:
            self.optimizer.step(closure)
            return closure.terms
        before = [t.detach().clone() for t in self.variables]
        self.optimizer.step(closure)
        self._scale_rows(before)
        return closure.terms

    def _scale_rows(self, before: Sequence[torch.Tensor]) -> None:
        """Per-sample stages: sample i's update (from ``before``, the variables before the
        step) times its factor, ``θ ← θ₀ + f_i (θ − θ₀)``; rows with factor 1 are untouched."""
        scaled = (self.row_factor != 1).nonzero().flatten()
        if scaled.numel() == 0:
            return
        with torch.no_grad():
            for t, old in zip(self.variables, before):
                rows, rows0 = _rows(t, self.n), _rows(old, self.n)
                idx = scaled.to(t.device)
                f = self.row_factor[scaled].to(t.device, t.dtype).view(-1, 1)
                rows[idx] = rows0[idx] + f * (rows[idx] - rows0[idx])

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        for i, t in enumerate(self.variables):
            for key, value in self.optimizer.state.get(t, {}).items():
                state[f"opt.{i}.{key}"] = value
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for i, t in enumerate(self.variables):
            prefix = f"opt.{i}."
            self.optimizer.state[t] = {key[len(prefix):]: _to_device(value, t.device)
                                       for key, value in state.items() if key.startswith(prefix)}


class Adam(_TorchStepper):
    """Adam (``torch.optim.Adam``) at rate ``lr`` × the stage factor; one rate for the batch, or
    per-sample stage factors (:meth:`set_stage_factors`)."""

    def __init__(self, param: Parameterisation, lr: float):
        super().__init__(param, lr, lambda v: torch.optim.Adam(v, lr=lr))

    def set_stage_factors(self, factors: torch.Tensor, reset: torch.Tensor) -> None:
        """Per-sample factors ``(N,)``: the optimiser runs at the base rate and each sample's
        update is multiplied by its factor after the step, which is exact (Adam's step is linear
        in its rate; its moments do not depend on it). ``reset`` is ignored: Adam's moments are
        kept across stages, as with :meth:`start_stage`. Factor 0 freezes a sample exactly."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        self.row_factor = factors.detach().cpu().double().clone()


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products of two ``(N, D)`` tensors: ``(N,)``, one BLAS dot per row (on CPU
    6× faster than a batched ``bmm`` or a product and sum, with no ``(N, D)`` temporary)."""
    return torch.stack([a[i].dot(b[i]) for i in range(a.shape[0])])


class LBFGS(Stepper):
    """Per-sample L-BFGS: every sample keeps its own curvature history (its last ``history``
    pairs ``s = Δθ``, ``y = Δ∇E``) and finds its own step length by backtracking until the
    Armijo condition ``E(θ + t·d) ≤ E(θ) + c₁·t·∇E·d`` holds (up to :attr:`ROUNDING`); the
    samples are evaluated together, and only those still searching are evaluated again.

    A step costs one evaluation of the objective plus one per backtrack (rare once the history
    has scaled the direction): the gradient of the accepted point starts the next step. A sample
    with no history (or whose direction stopped descending) takes a gradient step of length
    ``lr / ‖∇E‖₁``; with history the trial length is ``lr`` (1: the quasi-Newton step) × the
    stage factor. A sample that finds no acceptable length within :attr:`MAX_BACKTRACKS` stays
    where it is and forgets its history. With a transform (jitter) the objective changes every
    step, so the starting point is evaluated again each step.

    State: ``lbfgs.s``, ``lbfgs.y`` ``(history, N, D)`` (D: the variables' elements per sample),
    ``lbfgs.rho`` ``(history, N)`` (``1 / s·y``; 0 marks an empty or skipped pair),
    ``lbfgs.gamma`` ``(history, N)`` (``s·y / y·y``, the pair's scale of the initial inverse
    Hessian) and ``lbfgs.count``, the pairs written so far.
    """

    C1 = 1e-4
    MAX_BACKTRACKS = 10
    #: relative change of E taken as rounding (float32 sums of ~10⁵ terms), not as an increase
    ROUNDING = 1e-6

    def __init__(self, param: Parameterisation, lr: float, history: int = 10):
        super().__init__(param, lr)
        first = self.variables[0]
        dim = sum(t.numel() // self.n for t in self.variables)
        self.s = first.new_zeros(history, self.n, dim)
        self.y = first.new_zeros(history, self.n, dim)
        self.rho = first.new_zeros(history, self.n)
        self.gamma = first.new_zeros(history, self.n)
        self.count = 0
        self.factor = torch.ones(self.n, dtype=first.dtype, device=first.device)
        self._at: tuple[torch.Tensor, torch.Tensor, EnergyTerms] | None = None  # (E, ∇E, terms) now

    def start_stage(self, factor: float, reset: bool) -> None:
        self.factor.fill_(float(factor))

    def set_stage_factors(self, factors: torch.Tensor, reset: torch.Tensor) -> None:
        """Per-sample factors ``(N,)`` on the trial step; 0 freezes a sample exactly. ``reset``
        is ignored (the history stays valid across stages)."""
        self.factor = factors.to(self.factor.device, self.factor.dtype).clone()

    def _flat(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """``(N, D)``: a copy of the variables' (or their gradients') rows side by side."""
        return torch.cat([_rows(t, self.n) for t in tensors], dim=1)

    def _assign(self, x0: torch.Tensor, d: torch.Tensor, t: torch.Tensor) -> None:
        """Set the variables to ``x0 + t·d`` (``(N, D)``, ``(N, D)``, ``(N,)``)."""
        at = 0
        with torch.no_grad():
            for v in self.variables:
                width = v.numel() // self.n
                torch.addcmul(x0[:, at:at + width], d[:, at:at + width], t[:, None], out=_rows(v, self.n))
                at += width

    def _evaluate(self, closure: Closure, rows: torch.Tensor | None):
        """``(E (N,), ∇E (N, D), terms)`` with rows ``rows`` (None: the closure's own active
        samples) evaluated now; the closure's own restriction is put back after."""
        outer = closure.active
        if rows is not None:
            closure.restrict(rows)
        try:
            closure()
        finally:
            if rows is not None:
                closure.restrict(outer)
        terms = closure.terms
        detached = EnergyTerms(terms.data.detach().clone(), terms.alpha.detach().clone(), terms.tv.detach().clone())
        grad = self._flat([t.grad if t.grad is not None else torch.zeros_like(t) for t in self.variables])
        return detached.total.to(grad.dtype), grad, detached

    def _direction(self, g: torch.Tensor) -> torch.Tensor:
        """``-H·g`` per sample by the two-loop recursion over the kept pairs (newest first), the
        initial inverse Hessian scaled by each sample's newest ``gamma``."""
        q = g.clone()
        slots = [(self.count - 1 - i) % self.s.shape[0] for i in range(min(self.count, self.s.shape[0]))]
        slots = [j for j in slots if bool((self.rho[j] > 0).any())]
        alphas = []
        for j in slots:
            a = self.rho[j] * _dot(self.s[j], q)
            q.addcmul_(self.y[j], a[:, None], value=-1)
            alphas.append(a)
        gamma = torch.zeros_like(q[:, 0])
        for j in slots:
            gamma = torch.where((gamma == 0) & (self.rho[j] > 0), self.gamma[j], gamma)
        q.mul_(torch.where(gamma > 0, gamma, torch.ones_like(gamma))[:, None])
        for j, a in zip(reversed(slots), reversed(alphas)):
            b = self.rho[j] * _dot(self.y[j], q)
            q.addcmul_(self.s[j], (a - b)[:, None])
        return q.neg_()

    def step(self, closure: Closure, recorded: bool = False) -> EnergyTerms:
        if self._at is None or closure.transform is not None:
            self._at = self._evaluate(closure, None)
        f0, g0, terms0 = self._at
        with torch.no_grad():
            d = self._direction(g0)
            gd = _dot(g0, d)
            fresh = ~(gd < 0) | ~(self.rho > 0).any(0)  # not a descent direction, or no history
            if fresh.any():
                self.rho[:, fresh] = 0
                scale = (self.lr / g0.abs().sum(1).clamp_min(1e-30))[:, None]
                d = torch.where(fresh[:, None], -g0 * scale, d)
                gd = _dot(g0, d)
            t = torch.where(fresh, torch.ones_like(gd), torch.full_like(gd, self.lr)) * self.factor
        self._search(closure, d, gd, t)
        return terms0

    def _searching(self, closure: Closure, t: torch.Tensor) -> torch.Tensor:
        """``(N,)`` bool: the samples that move this step (a positive trial length, evaluated)."""
        searching = t > 0
        if closure.active is not None:
            running = torch.zeros_like(searching)
            running[closure.active.to(searching.device)] = True
            searching &= running
        return searching

    def _search(self, closure: Closure, d: torch.Tensor, gd: torch.Tensor, t: torch.Tensor) -> None:
        """Backtrack each searching sample until Armijo holds; then keep the new pairs."""
        f0, g0, terms0 = self._at
        with torch.no_grad():
            x0 = self._flat(self.variables)
        f, g, terms = f0, g0, terms0
        searching = self._searching(closure, t)
        every = bool(searching.all())
        taken = torch.zeros_like(t)
        last = taken
        for _ in range(self.MAX_BACKTRACKS + 1):
            idx = searching.nonzero().flatten()
            if idx.numel() == 0:
                break
            last = torch.where(searching, t, taken)
            self._assign(x0, d, last)
            running = self.n if closure.active is None else closure.active.numel()
            fn, gn, tn = self._evaluate(closure, None if idx.numel() == running else idx)
            ok = searching & torch.isfinite(fn) & (fn <= f0 + self.C1 * t * gd + self.ROUNDING * f0.abs())
            if every and bool(ok.all()):  # the common step: every sample accepts its first trial
                f, g, terms = fn, gn, tn
            else:
                f, g = torch.where(ok, fn, f), torch.where(ok[:, None], gn, g)
                terms = EnergyTerms(*(torch.where(ok.to(a.device), b, a) for a, b in
                                      ((terms.data, tn.data), (terms.alpha, tn.alpha), (terms.tv, tn.tv))))
            every = False
            taken = torch.where(ok, t, taken)
            searching &= ~ok
            # quadratic interpolation of E along d, kept within [0.1 t, 0.5 t]
            curv = fn - f0 - gd * t
            guess = torch.where(torch.isfinite(fn) & (curv > 0), -gd * t * t / (2 * curv), 0.1 * t)
            t = torch.where(searching, torch.minimum(torch.maximum(guess, 0.1 * t), 0.5 * t), t)
        if not torch.equal(last, taken):  # the variables are where the last trial put them
            self._assign(x0, d, taken)
        with torch.no_grad():
            self._remember(d, taken, g, g0, searching)
        self._at = (f, g, terms)

    def _remember(self, d, taken, g, g0, failed) -> None:
        """Write the pair of this step (``s = taken·d``, ``y = g − g0``) into the next slot;
        samples that did not move, or whose pair has no positive curvature, keep none there;
        ``failed`` ``(N,)`` bool samples forget their whole history."""
        slot = self.count % self.s.shape[0]
        s, y = self.s[slot], self.y[slot]
        torch.mul(d, taken[:, None], out=s)
        torch.sub(g, g0, out=y)
        sy, yy = _dot(s, y), _dot(y, y)
        good = (taken > 0) & (sy > 1e-10 * yy)
        self.rho[slot] = torch.where(good, 1 / sy.clamp_min(1e-30), torch.zeros_like(sy))
        self.gamma[slot] = torch.where(good, sy / yy.clamp_min(1e-30), torch.zeros_like(sy))
        self.rho[:, failed] = 0
        self.count += 1

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "lbfgs.s": self.s, "lbfgs.y": self.y, "lbfgs.rho": self.rho,
                "lbfgs.gamma": self.gamma, "lbfgs.count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for key in ("s", "y", "rho", "gamma"):
            getattr(self, key).copy_(state[f"lbfgs.{key}"])
        self.count = int(state["lbfgs.count"])
        self._at = None


def _to_device(value, device):
    """Tensors of a loaded optimiser state back on ``device`` (0-dim counters stay on the CPU)."""
    if torch.is_tensor(value):
        return value.to(device) if value.dim() > 0 else value
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    return value


def make_stepper(method: str, param: Parameterisation, lr: float | list[float], momentum: float = MOMENTUM,
                 max_backoffs: int = 8, stop_on_divergence: bool = True) -> Stepper:
    """The stepper of ``method`` (``"momentum"``, ``"adam"`` or ``"lbfgs"``) on ``param``'s variables.

    The momentum stepper backs off divergence (:class:`DivergenceBackoff`) when
    ``stop_on_divergence`` and ``max_backoffs > 0``; the others raise on divergence when
    ``stop_on_divergence``.
    """
    if method == "momentum":
        backoff = None
        if stop_on_divergence and max_backoffs > 0:
            backoff = DivergenceBackoff([t for t in param.parameters() if t.requires_grad], param.n, max_backoffs)
        stepper: Stepper = Momentum(param, lr, momentum, backoff)
    elif method == "adam":
        stepper = Adam(param, lr)
    elif method == "lbfgs":
        stepper = LBFGS(param, lr)
    else:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    stepper.stop_on_divergence = stop_on_divergence
    return stepper


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------

def _flatten_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
    """A stepper state → (tensors, layout): numbers go in the layout, lists of tensors by index."""
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, Any] = {}
    for key, value in state.items():
        if torch.is_tensor(value):
            tensors[key] = value
            layout[key] = {"tensor": key}
        elif isinstance(value, (list, tuple)):
            names = [None if v is None else f"{key}.{i}" for i, v in enumerate(value)]
            tensors.update({n: v for n, v in zip(names, value) if n is not None})
            layout[key] = {"list": names}
        else:
            layout[key] = {"value": value}
    return tensors, layout


def _unflatten_state(tensors: dict[str, torch.Tensor], layout: dict) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for key, spec in layout.items():
        if "tensor" in spec:
            state[key] = tensors[spec["tensor"]]
        elif "list" in spec:
            state[key] = [None if n is None else tensors[n] for n in spec["list"]]
        else:
            state[key] = spec["value"]
    return state


class Checkpoint:
    """A safetensors file holding a stepper's whole state at an iteration, for one fingerprint
    of the settings; written atomically every ``every`` iterations (``path=None``: no file)."""

    def __init__(self, path: str | Path | None, fingerprint: str, every: int = 50):
        self.path = Path(path) if path else None
        self.fingerprint = fingerprint
        self.every = int(every)

    def due(self, iteration: int, total: int) -> bool:
        """Whether to save after ``iteration`` of ``total`` (the last one is saved by the caller)."""
        return self.path is not None and iteration % self.every == 0 and iteration < total

    def save(self, stepper: Stepper, iteration: int) -> None:
        """Write ``stepper``'s state at ``iteration``."""
        if self.path is None:
            return
        tensors, layout = _flatten_state(stepper.state_dict())
        meta = {"iteration": str(iteration), "fingerprint": self.fingerprint,
                "layout": json.dumps(layout)}
        atomic_write_bytes(self.path, tensors_bytes(tensors, meta))

    def restore(self, stepper: Stepper) -> int:
        """Load the saved state into ``stepper`` and return its iteration; 0 (stepper untouched)
        when there is no file, it belongs to other settings, or it is torn or foreign."""
        if self.path is None or not self.path.exists():
            return 0
        from safetensors import safe_open
        from safetensors.torch import load_file
        try:
            with safe_open(str(self.path), "pt") as f:
                meta = f.metadata() or {}
            if meta.get("fingerprint") != self.fingerprint:
                return 0
            state = _unflatten_state(load_file(str(self.path)), json.loads(meta["layout"]))
            iteration = int(meta["iteration"])
        except Exception:  # a torn or foreign file: start over rather than fail
            return 0
        stepper.load_state_dict(state)
        return iteration


# ----------------------------------------------------------------------------------------------
# Early stopping (per-sample stages)
# ----------------------------------------------------------------------------------------------

class EarlyStop:
    """Per-sample stages and convergence for ``minimise(tol=...)``.

    Sample i runs stage j of ``stages`` for at most the stage's ``n_j`` iterations counted from
    when it entered it, and leaves it early once its total energy improved by less than ``tol``
    (relative) over the last ``window`` iterations spent in the stage::

        (E[k − window] − E[k]) / |E[k − window]| < tol

    where ``E[k]`` is the lowest energy of the sample in its stage up to iteration k (a running
    minimum: momentum's overshoot and a non-smooth energy's jitter, about 1 % on HOG, count
    neither as progress nor as convergence; with the raw energies a single rise over the window
    ended stages whatever ``tol``). Checked every :data:`CHECK_EVERY` iterations; a non-finite
    ratio never counts. The sample then enters stage j + 1; after the last stage it is finished
    (frozen, its iterations counted in :attr:`used`). A sample never runs more iterations than
    the schedule in total, so the loop ends by the schedule's end.

    State (all ``(N,)``, on the CPU): ``stage`` (index), ``entered`` (iteration the stage began),
    ``since`` (iteration the convergence window counts from: the stage's start, or the last
    back-off), ``used`` (iterations of a finished sample), ``done`` (bool); on the energies'
    device: ``best`` ``(N,)`` (the running minimum) and ``ring`` ``(window + 1, N)`` (its last
    values).
    """

    def __init__(self, stages: Sequence[tuple[int, float]], n: int, tol: float, window: int):
        self.stages = tuple((int(m), float(f)) for m, f in stages)
        self.n, self.tol, self.window = int(n), float(tol), int(window)
        self.stage = torch.zeros(self.n, dtype=torch.long)
        self.entered = torch.zeros(self.n, dtype=torch.long)
        self.since = torch.zeros(self.n, dtype=torch.long)
        self.used = torch.zeros(self.n, dtype=torch.long)
        self.done = torch.zeros(self.n, dtype=torch.bool)
        self.ring: torch.Tensor | None = None
        self.best: torch.Tensor | None = None
        if self.stages[0][0] == 0:  # empty first stage(s)
            for i in range(self.n):
                self._next(i, 0, from_stage=0)

    def _next(self, i: int, at: int, from_stage: int | None = None) -> None:
        """Sample ``i`` leaves its stage after ``at`` iterations: into the next non-empty stage,
        or finished."""
        j = (int(self.stage[i]) if from_stage is None else from_stage - 1) + 1
        while j < len(self.stages) and self.stages[j][0] == 0:
            j += 1
        if j >= len(self.stages):
            self.done[i], self.used[i] = True, at
            return
        self.stage[i], self.entered[i], self.since[i] = j, at, at
        if self.ring is not None:
            self.best[i] = float("inf")

    def factors(self) -> torch.Tensor:
        """``(N,)`` float64: each sample's stage factor, 0 for a finished one."""
        f = torch.tensor([self.stages[j][1] for j in self.stage.tolist()], dtype=torch.float64)
        return f.masked_fill(self.done, 0.0)

    def active(self) -> torch.Tensor | None:
        """``(M,)`` int64 indices of the samples still running; ``None`` when all are."""
        return None if not self.done.any() else (~self.done).nonzero().flatten()

    def observe(self, k: int, total: torch.Tensor) -> None:
        """Take iteration ``k``'s energies ``(N,)`` into the running minimum (NaN ignored) and
        keep it (any device; no synchronisation)."""
        if self.ring is None:
            self.ring = torch.full((self.window + 1, self.n), float("nan"), dtype=total.dtype, device=total.device)
            self.best = torch.full((self.n,), float("inf"), dtype=total.dtype, device=total.device)
        elif self.ring.device != total.device:  # loaded from a checkpoint
            self.ring, self.best = self.ring.to(total.device), self.best.to(total.device)
        self.best = torch.fmin(self.best, total.detach())
        self.ring[k % (self.window + 1)] = self.best

    def restart_window(self, rows: torch.Tensor, k: int) -> None:
        """Samples ``rows`` ``(N,)`` bool were backed off at iteration ``k``: their window and
        running minimum start again after it."""
        self.since[rows] = k + 1
        if self.ring is not None:
            self.best[rows.to(self.best.device)] = float("inf")

    def converged(self, k: int) -> torch.Tensor:
        """``(N,)`` bool: running samples whose window ending at iteration ``k`` improved by less
        than ``tol`` (all False between checks)."""
        ready = ~self.done & (k - self.since >= self.window)
        if (k + 1) % CHECK_EVERY or self.ring is None or not ready.any():
            return torch.zeros(self.n, dtype=torch.bool)
        w = self.window + 1
        old = self.ring[(k - self.window) % w].detach().cpu().double()
        new = self.ring[k % w].detach().cpu().double()
        rel = (old - new) / old.abs()
        return ready & torch.isfinite(rel) & (rel < self.tol)

    def advance(self, k: int) -> torch.Tensor:
        """After iteration ``k``: samples whose stage is used up or converged move on; returns
        them ``(N,)`` bool."""
        length = torch.tensor([self.stages[j][0] for j in self.stage.tolist()], dtype=torch.long)
        moving = ~self.done & ((k + 1 - self.entered >= length) | self.converged(k))
        for i in moving.nonzero().flatten().tolist():
            self._next(i, k + 1)
        return moving

    def state_dict(self) -> dict[str, Any]:
        """The state under ``stop.<name>`` (see the class docstring)."""
        state = {f"stop.{k}": getattr(self, k) for k in ("stage", "entered", "since", "used", "done")}
        if self.ring is not None:
            state["stop.ring"], state["stop.best"] = self.ring, self.best
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take a state of :meth:`state_dict`."""
        for k in ("stage", "entered", "since", "used", "done"):
            setattr(self, k, state[f"stop.{k}"].clone())
        ring = state.get("stop.ring")
        self.ring = None if ring is None else ring.clone()
        self.best = None if ring is None else state["stop.best"].clone()


class _Saved:
    """What a checkpoint holds with early stopping: the stepper's state, the :class:`EarlyStop`
    state and the closure's last per-sample terms (the energies finished samples keep)."""

    def __init__(self, stepper: Stepper, stop: EarlyStop, closure: Closure):
        self.stepper, self.stop, self.closure = stepper, stop, closure

    def state_dict(self) -> dict[str, Any]:
        """The three in one dict (keys ``stop.…`` and ``last.data|alpha|tv``, ``(N,)`` each)."""
        state = {**self.stepper.state_dict(), **self.stop.state_dict()}
        if self.closure.last is not None:
            state.update({f"last.{k}": getattr(self.closure.last, k) for k in ("data", "alpha", "tv")})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take a state of :meth:`state_dict`."""
        self.stepper.load_state_dict(state)
        self.stop.load_state_dict(state)
        if "last.data" in state:
            dev = self.closure.objective.target.device
            self.closure.last = EnergyTerms(*(state[f"last.{k}"].to(dev).clone() for k in ("data", "alpha", "tv")))


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------

class _Recorder:
    """Energies every ``every`` iterations (checked by the stepper), progress bar and callback."""

    def __init__(self, total: int, start: int, every: int, progress: bool | str,
                 callback: Callable[[int, torch.Tensor], None] | None):
        self.total, self.every, self.callback = total, int(every), callback
        self.history: list[torch.Tensor] = []
        desc = progress if isinstance(progress, str) else "inverting"
        self.bar = tqdm(total=total, initial=start, desc=desc, disable=not progress, leave=False,
                        dynamic_ncols=True)

    def due(self, step: int) -> bool:
        """Whether iteration ``step`` (1-based) is recorded."""
        return step % self.every == 0 or step == self.total

    def record(self, step: int, terms: EnergyTerms, stepper: Stepper) -> None:
        """Record iteration ``step``'s energies (after the stepper's divergence check)."""
        with torch.no_grad():
            total = terms.total.detach().cpu()
        total = stepper.settle(total, step)
        self.history.append(total)
        self.bar.set_postfix(E=f"{float(total.mean()):.4g}", data=f"{float(terms.data.detach().mean()):.4g}")
        if self.callback is not None:
            with torch.no_grad():
                self.callback(step, stepper.param().detach())

    def stacked(self, n: int) -> torch.Tensor:
        """The recorded energies ``(T, n)``."""
        return torch.stack(self.history) if self.history else torch.zeros(0, n)


def _run_stages(stepper: Stepper, closure: Closure, stages, start: int, recorder: _Recorder,
                checkpoint: Checkpoint) -> None:
    """Iterations ``start`` … end of ``stages`` (a stage's rate set on entry, momentum reset at
    the start of each stage not resumed in its middle)."""
    end = 0
    for n_stage, factor in stages:
        stage_start, end = end, end + n_stage
        if end <= start:
            continue
        stepper.start_stage(factor, reset=stage_start >= start)
        for k in range(max(stage_start, start), end):
            step = k + 1
            closure.iteration = k
            recorded = recorder.due(step)
            terms = stepper.step(closure, recorded)
            if recorded:
                recorder.record(step, terms, stepper)
            if checkpoint.due(step, recorder.total):
                checkpoint.save(stepper, step)
            recorder.bar.update(1)


def _apply_stages(stepper: Stepper, closure: Closure, stop: EarlyStop, reset: torch.Tensor) -> None:
    """Give the stepper each sample's stage factor (``reset`` ``(N,)`` bool: samples entering a
    stage) and limit the closure to the samples still running."""
    stepper.set_stage_factors(stop.factors(), reset)
    closure.restrict(stop.active())


def _after_record(stop: EarlyStop, closure: Closure, recorded: torch.Tensor, k: int) -> None:
    """A recorded energy ``(N,)`` that reads NaN marks a back-off: the sample's window starts
    again; a finished sample backed off keeps its restored state and reads 0 from then on (its
    last evaluated energy is not that state's)."""
    bad = ~torch.isfinite(recorded)
    if not bad.any():
        return
    stop.restart_window(bad, k)
    frozen = (bad & stop.done).nonzero().flatten()
    if frozen.numel() and closure.last is not None:
        for key in ("data", "alpha", "tv"):
            getattr(closure.last, key)[frozen.to(closure.last.data.device)] = 0


def _run_early(stepper: Stepper, closure: Closure, stop: EarlyStop, start: int, recorder: _Recorder,
               checkpoint: Checkpoint) -> None:
    """Iterations ``start`` … of ``minimise(tol=...)``: stages advance per sample
    (:class:`EarlyStop`); finished samples are frozen and left out of the data term; ends when
    every sample has finished."""
    saved = _Saved(stepper, stop, closure)
    _apply_stages(stepper, closure, stop, torch.full((stop.n,), start == 0))
    for k in range(start, recorder.total):
        if bool(stop.done.all()):
            break
        step = k + 1
        closure.iteration = k
        recorded = recorder.due(step)
        terms = stepper.step(closure, recorded)
        stop.observe(k, terms.total)
        if recorded:
            recorder.record(step, terms, stepper)
            _after_record(stop, closure, recorder.history[-1], k)
        moved = stop.advance(k)
        if moved.any():
            _apply_stages(stepper, closure, stop, moved)
        if checkpoint.due(step, recorder.total):
            checkpoint.save(saved, step)
        recorder.bar.update(1)


def _rates(lr: float | Sequence[float], method: str, n: int, dtype: torch.dtype) -> float | list[float]:
    """Validate ``lr``: one positive finite rate, or one per sample (momentum only), rounded to
    the variables' ``dtype``."""
    t = torch.as_tensor(lr, dtype=dtype).flatten()
    if t.numel() not in (1, n) or not torch.isfinite(t).all() or (t <= 0).any():
        raise ValueError(f"lr must be positive and finite, one value or one per sample; got {lr}")
    if t.numel() > 1 and method != "momentum":
        raise ValueError("per-sample learning rates need method='momentum'")
    return float(t[0]) if t.numel() == 1 else t.tolist()


def _fingerprint(objective: InversionObjective, param: Parameterisation, lr, stages, method: str,
                 momentum: float, transform: Transform | None, early: dict | None = None) -> str:
    """Key of everything that determines the optimisation (a checkpoint is resumed only under it);
    ``early``: the early-stopping settings (``tol``, ``window``), absent without them."""
    variables = {k: [list(t.shape), float(t.detach().double().sum())] for k, t in param.named_parameters()}
    key = dict(
        format=CHECKPOINT_FORMAT, lr=lr, stages=stages, method=method, momentum=momentum,
        param=type(param).__name__, variables=variables, transform=repr(transform),
        lambda_tv=objective.lambda_tv.tolist(), lambda_alpha=objective.lambda_alpha.tolist(),
        target=float(objective.target.double().sum()))
    if early is not None:
        key["early_stop"] = early
    return stable_key(key)


def _early_stop(tol: float | None, window: int, method: str, stages, n: int) -> EarlyStop | None:
    """The :class:`EarlyStop` of ``minimise(tol=...)`` (None without ``tol``), arguments checked."""
    if tol is None:
        return None
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        raise ValueError(f"tol must be a finite number ≥ 0 (a relative improvement), got {tol!r}")
    if isinstance(window, bool) or int(window) != window or window < 1:
        raise ValueError(f"window must be a whole number of iterations ≥ 1, got {window!r}")
    return EarlyStop(stages, n, float(tol), int(window))


def as_parameterisation(variables: torch.Tensor | Parameterisation) -> Parameterisation:
    """``variables`` itself when it is a parameterisation; an initial ``u`` ``(N, C, H, W)`` →
    a :class:`~preimage.params.pixel.PixelParam` holding a copy of it."""
    if isinstance(variables, Parameterisation):
        return variables
    if not torch.is_tensor(variables) or variables.dim() != 4:
        raise ValueError("minimise needs an initial u (N, C, H, W) or a Parameterisation")
    param = PixelParam(tuple(variables.shape[1:]), variables.shape[0]).to(variables.device, variables.dtype)
    with torch.no_grad():
        param.u.copy_(variables)
    return param


def minimise(objective: InversionObjective, variables: torch.Tensor | Parameterisation, *,
             lr: float | Sequence[float], schedule: str | Sequence[tuple[int, float]] = "shallow",
             iterations: int | None = None, method: str = "momentum", momentum: float = MOMENTUM,
             progress: bool | str = True, record_every: int = 10, checkpoint: str | Path | None = None,
             checkpoint_every: int = 50, callback: Callable[[int, torch.Tensor], None] | None = None,
             stop_on_divergence: bool = True, max_backoffs: int = 8,
             transform: Transform | None = None, tol: float | None = None,
             window: int = DEFAULT_WINDOW) -> OptimResult:
    """Minimise ``objective`` over ``variables``.

    Args:
        objective: an :class:`InversionObjective` for a batch of N.
        variables: the initial ``u`` ``(N, C, H, W)`` (see :func:`gaussian_init`; optimised as
            pixels, a copy), or a :class:`~preimage.params.base.Parameterisation` of N samples
            (optimised in place).
        lr: base learning rate η (multiplied by each stage's factor); with ``method="momentum"``
            a sequence of N values gives each sample its own rate (batched learning-rate sweeps).
        schedule: ``"shallow"`` (800 its), ``"cnn"`` (400 its) or ``[(iterations, factor), …]``.
        iterations: rescale the schedule to this many iterations.
        method: ``"momentum"`` (the paper's), ``"adam"`` or ``"lbfgs"`` (see :func:`make_stepper`).
        progress: show a tqdm bar (a string is used as its description).
        record_every: record per-sample energies every this many iterations.
        checkpoint: file to save/resume state (safetensors), written atomically.
        callback: called as ``callback(iteration, u)`` after each recorded iteration.
        stop_on_divergence: when a sample's energy stops being finite (checked at recorded
            iterations), with ``method="momentum"`` it is backed off (:class:`DivergenceBackoff`)
            up to ``max_backoffs`` times; then, or with the other methods, ``FloatingPointError``
            is raised. When False the sample is left non-finite (its energy reads NaN/Inf) and
            the others go on (learning-rate sweeps).
        max_backoffs: most rate halvings per sample before giving up (0: raise at once).
        transform: ``transform(u, iteration)`` → the ``(N, C, H, W)`` the data term sees at that
            0-based iteration (jitter and the like, :mod:`preimage.transforms`); the priors and
            the final energies use ``u`` itself.
        tol, window: opt-in per-sample early stopping (:class:`EarlyStop`): a sample whose
            lowest total energy improved by less than ``tol`` (relative, ≥ 0) over its last
            ``window`` iterations in a stage moves to its next stage (the schedule advances per sample);
            after the last it is frozen and its data term is no longer evaluated. ``None``: the
            whole schedule for every sample.
    Returns:
        :class:`OptimResult`.
    """
    stages = make_schedule(schedule, iterations)
    total = sum(n for n, _ in stages)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    param = as_parameterisation(variables)
    lr = _rates(lr, method, param.n, next(param.parameters()).dtype)
    stop = _early_stop(tol, window, method, stages, param.n)
    early = None if stop is None else dict(tol=stop.tol, window=stop.window, check_every=CHECK_EVERY)
    ckpt = Checkpoint(checkpoint, _fingerprint(objective, param, lr, stages, method, momentum, transform, early),
                      checkpoint_every)
    stepper = make_stepper(method, param, lr, momentum, max_backoffs, stop_on_divergence)
    closure = Closure(objective, param, transform)
    saved = stepper if stop is None else _Saved(stepper, stop, closure)
    start = ckpt.restore(saved)
    recorder = _Recorder(total, start, record_every, progress, callback)
    t0 = time.perf_counter()
    try:
        if stop is None:
            _run_stages(stepper, closure, stages, start, recorder, ckpt)
        else:
            _run_early(stepper, closure, stop, start, recorder, ckpt)
    finally:
        recorder.bar.close()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        u = param().detach()
        final = objective(u)
    ckpt.save(saved, total)
    return OptimResult(
        u=u, energy={k: getattr(final, k).detach().cpu().double().tolist() for k in ("data", "alpha", "tv", "total")},
        history=recorder.stacked(param.n), iterations=total, backoffs=stepper.halvings(),
        final_lr=stepper.rates(), resumed_from=start, seconds=seconds, **_usage(stop, stages, total, param.n))


def _usage(stop: EarlyStop | None, stages, total: int, n: int) -> dict[str, torch.Tensor]:
    """``iterations_used`` and ``final_stage`` ``(N,)`` int64 of a finished run: the whole schedule
    (its last non-empty stage) without early stopping, else what :class:`EarlyStop` counted."""
    if stop is None:
        last = max(i for i, (m, _) in enumerate(stages) if m > 0) if total else len(stages) - 1
        return dict(iterations_used=torch.full((n,), total, dtype=torch.long),
                    final_stage=torch.full((n,), last, dtype=torch.long))
    used = torch.where(stop.done, stop.used, torch.full_like(stop.used, total))
    return dict(iterations_used=used, final_stage=stop.stage.clone())
