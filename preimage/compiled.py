"""One switch for preimage's optional compiled CPU loops (numba).

Two hot spots of an inversion on a CPU run as compiled loops when numba is installed: HOG's
per-pixel stage and block normalisation (:mod:`preimage.representations.hog_numba`) and the
objective's priors (:mod:`preimage.objective_numba`). Each agrees with its torch form to float
rounding; the torch forms run on other devices, without numba, or when the loops are switched off
here — by ``PREIMAGE_COMPILED=0`` in the environment, or for a block of code::

    from preimage import compiled
    with compiled.disabled():      # e.g. to time the torch forms (benchmarks/)
        invert(rep, x)

Loading a module of loops imports numba (about 0.3 s, once per process); each loop is compiled on
its first call and cached on disk by numba (seconds the first time on a machine, milliseconds
after).
"""

from __future__ import annotations

import importlib
import os
import sys
from contextlib import contextmanager
from types import ModuleType

_enabled = os.environ.get("PREIMAGE_COMPILED", "1").strip().lower() not in ("0", "false", "no", "off")
_modules: dict[str, ModuleType | None] = {}
#: What each module of loops is and how long compiling it takes (this 2-core machine), for the line
#: printed when it is compiled for the first time.
LABELS = {"representations.hog_numba": ("HOG's CPU loops", "10–20 s"),
          "objective_numba": ("the priors' CPU loops", "a few seconds")}


def available() -> bool:
    """Whether numba can be imported (whatever the switch says)."""
    return load("objective_numba", force=True) is not None


def enabled() -> bool:
    """Whether the compiled loops are used where available (the switch)."""
    return _enabled


def load(name: str, force: bool = False) -> ModuleType | None:
    """The loops of ``preimage.<name>`` (e.g. ``"representations.hog_numba"``), or ``None`` when
    they are switched off (unless ``force``) or numba is not installed."""
    if not (_enabled or force):
        return None
    if name not in _modules:
        try:
            _modules[name] = importlib.import_module(f"preimage.{name}")
        except ImportError:  # no numba: the torch forms, silently
            _modules[name] = None
        except Exception as e:  # numba is there but cannot set the loops up (e.g. no cache folder)
            _modules[name] = None
            print(f"preimage: {LABELS.get(name, (name,))[0]} are unavailable ({type(e).__name__}: {e}); "
                  "using the torch forms", file=sys.stderr, flush=True)
        else:
            _announce(_modules[name], *LABELS.get(name, (name, "seconds")))
    return _modules[name]


def _announce(module: ModuleType, label: str, takes: str) -> None:
    """One line on stderr when a public loop of ``module`` is not in numba's on-disk cache yet
    (its first use on this machine compiles it: seconds, not milliseconds)."""
    try:
        from numba.core.registry import CPUDispatcher

        paths = [f._cache._cache_file._index_path for k, f in vars(module).items()
                 if isinstance(f, CPUDispatcher) and not k.startswith("_")]
    except Exception:  # numba's internals moved: say nothing rather than fail
        return
    if any(not os.path.exists(p) for p in paths):
        print(f"preimage: compiling {label} with numba (first use on this machine, {takes}; cached after)",
              file=sys.stderr, flush=True)


@contextmanager
def disabled():
    """Use the torch forms inside the block (this process, all threads)."""
    global _enabled
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before
