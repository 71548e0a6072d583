"""The experiments of the paper, in report order, and the plan of a run.

========  ==================================================================================
table1    HOG, HOGb, DSIFT inverted (λ_V = 5, β = 2) + HOGgle, eval images in grey; error
          in both conventions (:mod:`preimage.metrics`) and seconds per image
table2    CaffeNet (CNN-A) layer structure: channels and receptive fields vs the paper's Table 2
table3    every block of the MobileNets × λ_V ∈ {0.5, 5, 50}, eval images, both conventions
fig1      several restarts from the deepest layer (fc8 analogue)
fig2      TV β = 1 vs β = 2 on an early layer (norm1 analogue)
fig3      HOG, HOGb, DSIFT beside HOGgle and the HOG glyphs
fig4      HOG at λ_V = 0.5, 5, 50
fig5      one image from every (selected) layer, λ_V by relative depth as in the paper
fig6      multiple restarts from the deepest four layers
fig7      the deepest layer at λ_V = 0.5, 5, 50
fig8      central 5×5 neighbourhood of spatial layers, with the receptive-field box
fig9      first vs second half of the channels of conv1 / norm1 / norm2 analogues
fig10     deep-layer (pool5 analogue) reconstructions of several images
priors    one image through four depths: pixels (the paper's), Fourier, Deep Image Prior, lucent
maximise  16 channels of three blocks maximised, class images, caricatures at three depths (IJCV 2016)
========  ==================================================================================

A new experiment is one :class:`~.base.Experiment` object (in :mod:`.tables` or
:mod:`.figures`) added to :data:`REGISTRY` below, at its place in the report.
"""

from __future__ import annotations

from typing import Sequence

from ..errors import PreimageError
from .base import Config, Context, Experiment, Plan
from .figures import FIGURES
from .tables import TABLE1, TABLE2, TABLE3

__all__ = ["REGISTRY", "EXPERIMENTS", "resolve_only", "build_plan"]

#: name → experiment, in the order of the report.
REGISTRY: dict[str, Experiment] = {e.name: e for e in (TABLE1, TABLE2, TABLE3, *FIGURES)}
#: The experiment names (``--only``), in report order.
EXPERIMENTS: tuple[str, ...] = tuple(REGISTRY)


def resolve_only(only: str | Sequence[str] | None) -> list[str]:
    """Experiment names from ``--only`` (comma list; ``figs``/``tables`` expand), in report order.

    Raises :class:`~preimage.errors.PreimageError` for an unknown name.
    """
    if not only:
        return list(EXPERIMENTS)
    items = only.split(",") if isinstance(only, str) else list(only)
    wanted: set[str] = set()
    for it in (i.strip().lower() for i in items):
        if not it:
            continue
        if it in ("figs", "figures"):
            wanted |= {e for e in EXPERIMENTS if e.startswith("fig")}
        elif it == "tables":
            wanted |= {e for e in EXPERIMENTS if e.startswith("table")}
        elif it in ("table3a", "table3-analogue"):
            wanted.add("table3")
        elif it.startswith("figure"):
            wanted.add("fig" + it[6:])
        elif it in EXPERIMENTS:
            wanted.add(it)
        else:
            raise PreimageError(f"unknown experiment {it!r}; valid: {', '.join(EXPERIMENTS)}, figs, tables")
    return [e for e in EXPERIMENTS if e in wanted]


def build_plan(config: Config, only: str | Sequence[str] | None = None) -> Plan:
    """Every unit of the selected experiments (all by default), deduplicated, in a stable order.

    Experiments that cannot run here (a missing model or representation) are listed in
    ``plan.skipped`` with the reason instead of failing the whole plan. Raises
    :class:`~preimage.errors.PreimageError` when the eval images themselves are missing.
    """
    from ..data import missing_reason, shared_dir
    exps = resolve_only(only)
    plan = Plan(config, exps)
    ctx = Context(config)
    if shared_dir() is None:
        raise PreimageError(missing_reason("the eval images"))
    try:
        ctx.image_names()
    except FileNotFoundError as exc:
        raise PreimageError(str(exc)) from None
    for exp in exps:
        try:
            REGISTRY[exp].plan(plan, ctx)
        except Exception as exc:  # noqa: BLE001 - one experiment's planning failure is reported, not fatal
            plan.skipped[exp] = f"planning failed: {type(exc).__name__}: {exc}"
    return plan
