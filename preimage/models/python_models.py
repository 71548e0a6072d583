"""A user's own PyTorch network by factory: ``package.module:factory`` (``--model`` on the CLI).

:func:`load_factory` imports ``package.module`` (the user's own code, which they asked to run;
a model *file* is never executed), calls ``factory()`` and checks that it returns an
``nn.Module``; ``weights=`` loads a state dict from a safetensors file, or a PyTorch file read with
``torch.load(weights_only=True)`` (no unpickling of arbitrary objects). :func:`with_preprocessing`
then puts the model's :class:`~preimage.models.preprocess.Preprocessing` in front, so the result
takes RGB ``(B, 3, H, W)`` on 0–255 like every preimage model. Traceable networks keep their own
layer names (``features.0``, ``layer3.1.conv2`` …).
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.fx as fx
from torch import nn

from ..errors import PreimageError
from .fx import layer_names_of
from .preprocess import Preprocessing

__all__ = ["FactoryError", "ModelWeightsError", "is_factory_spec", "load_factory", "load_state_dict",
           "with_preprocessing", "PreprocessedModel"]

_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class FactoryError(PreimageError, ValueError):
    """``--model package.module:factory`` that cannot be imported, called, or gives no module."""


class ModelWeightsError(PreimageError, ValueError):
    """A weights file that cannot be read or does not fit the network."""


def is_factory_spec(text: str) -> bool:
    """Whether ``text`` looks like ``package.module:factory``."""
    return bool(_SPEC.match(str(text).strip()))


def load_factory(spec: str) -> nn.Module:
    """``package.module:factory`` → ``factory()``, an ``nn.Module`` (the current folder is
    importable too). Raises :class:`FactoryError` naming the spec and the problem."""
    mod_name, _, fn_name = str(spec).strip().partition(":")
    added = False
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
        added = True
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise FactoryError(f"--model {spec}: cannot import module {mod_name!r} ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
        raise FactoryError(f"--model {spec}: importing {mod_name!r} failed ({type(exc).__name__}: {exc})") from None
    finally:
        if added:
            sys.path.remove(str(Path.cwd()))
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise FactoryError(f"--model {spec}: module {mod_name!r} has no callable {fn_name!r}")
    try:
        model = fn()
    except Exception as exc:  # noqa: BLE001 - the user's factory failed
        raise FactoryError(f"--model {spec}: {fn_name}() failed ({type(exc).__name__}: {exc})") from None
    if not isinstance(model, nn.Module):
        raise FactoryError(f"--model {spec}: {fn_name}() returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a PyTorch file holding a state dict (read with
    ``torch.load(weights_only=True)``; a ``{"state_dict": …}`` wrapper is unwrapped).
    Raises :class:`ModelWeightsError`."""
    p = Path(path)
    if not p.is_file():
        raise ModelWeightsError(f"--weights {p}: no such file")
    try:
        from safetensors.torch import load_file
        return dict(load_file(str(p)))
    except Exception:  # noqa: BLE001 - not a safetensors file: try a weights-only torch file
        pass
    try:
        state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt, or needs unpickling arbitrary objects
        msg = " ".join(str(exc).split())[:200]
        raise ModelWeightsError(f"--weights {p}: neither a safetensors file nor a state dict loadable with "
                                f"torch.load(weights_only=True) ({type(exc).__name__}: {msg})") from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise ModelWeightsError(f"--weights {p}: holds a {type(state).__name__}, not a state dict of tensors")
    return dict(state)


def load_weights_into(model: nn.Module, path: str | Path) -> nn.Module:
    """Load ``path`` (:func:`load_state_dict`) into ``model`` strictly; a mismatch raises
    :class:`ModelWeightsError` listing missing/unexpected keys and wrong shapes."""
    state = load_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad = [f"{k}: file {tuple(state[k].shape)}, model {tuple(v.shape)}" for k, v in own.items()
           if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or bad:
        parts = [f"{what}: {', '.join(items[:6])}{' …' if len(items) > 6 else ''}"
                 for what, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("wrong shapes", bad)) if items]
        raise ModelWeightsError(f"--weights {path} does not match the network ({'; '.join(parts)})")
    model.load_state_dict(state, strict=True)
    return model


class PreprocessedModel(nn.Module):
    """Fallback for networks fx cannot trace: RGB 0–255 → ``net(preprocessing(x))`` (layer names
    then start with ``net.``)."""

    def __init__(self, net: nn.Module, prep: Preprocessing):
        super().__init__()
        self.net = net
        self.bgr = prep.order == "BGR"
        a, b = prep.coefficients()
        self.register_buffer("preprocess_a", a, persistent=False)
        self.register_buffer("preprocess_b", b, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, 3, H, W)`` RGB on 0–255 → the network's output."""
        if self.bgr:
            x = torch.flip(x, dims=(1,))
        return self.net(x * self.preprocess_a - self.preprocess_b)


def _insert_preprocessing(gm: fx.GraphModule, prep: Preprocessing) -> None:
    """Insert ``flip`` (BGR) / ``mul`` / ``sub`` nodes after the graph's input."""
    a, b = prep.coefficients()
    gm.register_buffer("preprocess_a", a, persistent=False)
    gm.register_buffer("preprocess_b", b, persistent=False)
    g = gm.graph
    ph = next(n for n in g.nodes if n.op == "placeholder")
    with g.inserting_after(ph):
        na = g.get_attr("preprocess_a")
    with g.inserting_after(na):
        nb = g.get_attr("preprocess_b")
    steps = ([(torch.flip, lambda v: (v, (1,)))] if prep.order == "BGR" else []) + \
        [(torch.mul, lambda v: (v, na)), (torch.sub, lambda v: (v, nb))]
    last, src, first = nb, ph, None
    for fn, args in steps:
        with g.inserting_after(last):
            last = g.call_function(fn, args(src))
        first = first or last
        src = last
    ph.replace_all_uses_with(src, delete_user_cb=lambda n: n is not first)
    g.lint()
    gm.recompile()


def with_preprocessing(net: nn.Module, prep: Preprocessing, input_size=(224, 224)) -> nn.Module:
    """``net`` (expecting ``prep``'s input) → a model taking RGB ``(B, 3, H, W)`` on 0–255, in eval
    mode, with ``input_size``, ``mean_pixel``, ``preprocessing`` and (when traced) ``layer_names``
    (the network's own layers, the preprocessing left out)."""
    net = net.eval()
    try:
        gm = fx.symbolic_trace(net)
    except Exception:  # noqa: BLE001 - data-dependent control flow etc.: hook-based layers only
        model: nn.Module = PreprocessedModel(net, prep)
    else:
        before = set(gm.graph.nodes)
        _insert_preprocessing(gm, prep)
        names = layer_names_of(gm.graph)[0]
        gm.layer_names = [k for k, n in names.items() if n in before]
        model = gm
    model.input_size = (int(input_size[0]), int(input_size[1]))
    model.mean_pixel = prep.mean_pixel
    model.preprocessing = prep
    return model.eval()
