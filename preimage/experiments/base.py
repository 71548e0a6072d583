"""What every experiment shares: the configuration, units, the plan, the planning context, and the
:class:`Experiment` base class.

An experiment of the paper (a table or a figure) is one :class:`Experiment` object with a name,
a title, a description, :meth:`Experiment.plan` (add its units to a :class:`Plan`) and
:meth:`Experiment.render` (turn the finished units into a report section). The objects live in
:mod:`.tables` and :mod:`.figures` and are listed, in report order, in :mod:`.registry`.

A *unit* (:class:`Unit`) is a JSON-serialisable dict of parameters with a stable key; the worker
side (:mod:`.units`) computes it. The helpers below build those parameter dicts, so every
experiment (and :mod:`preimage.evaluate`) describes its units the same way:

* ``invert``: one batched :func:`preimage.invert.invert` call (:func:`invert_params`);
* ``codes``: the codes of a set of images, for the normaliser of the error (:func:`codes_params`);
* ``hoggle``: the HOGgle baseline on a batch of images;
* ``layers``: a network's layer structure.

Image preprocessing (``preprocess``, ``size``) is a unit parameter, one per experiment:
``"native"`` (the file's size; ``size`` = longest side limit or ``None``), ``"squash"`` (resized to
``size = [H, W]`` without cropping) or ``"crop"`` (shorter side to ``size = S``, centre S×S crop).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..data import spread
from ..errors import PreimageError
from ..io.cache import stable_key
from ..paper import lambda_tv_for_depth
from ..invert import RECIPE_VERSION

if TYPE_CHECKING:  # pragma: no cover
    from .report import Collected, Section

__all__ = ["Config", "PRESETS", "Unit", "Plan", "Context", "Experiment", "config_from", "layer_lambda",
           "invert_params", "codes_params", "hoggle_params",
           "shallow_preprocess", "shallow_unavailable", "image_batches", "shallow_rep", "cnn_rep", "describe_preprocess", "UNIT_VERSION",
           "unit_model_options", "model_options_for", "check_model_options", "options_text"]

#: Bump to invalidate every stored unit (changes every key).
UNIT_VERSION = 2

#: The image preprocessing a unit can ask for (see the module docstring).
PREPROCESS = ("native", "squash", "crop")


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    """What a reproduction runs. Presets: :data:`PRESETS` (``full``, ``standard``, ``quick``, ``tiny``).

    Sizes: ``None`` keeps the native size (shallow) or the model's input size (CNN); an integer
    S resizes the shorter side to S and crops the centre S×S. Iterations ``None``: the library's
    schedules (800 shallow, 400 CNN).

    The ``standard`` preset's cost, estimated from measured CPU seconds (one torch thread, this
    machine, 2026-12-02, background load 5–8): one iteration of one image costs HOG 5.2 ms, HOGb
    5.3 ms, DSIFT 4.5 ms at 128×128 (30 / 45 / 70 ms at the eval images' native 375×500), and for
    MobileNet-v2 at 224×224 (forward + backward to the block) 69 ms on average over its 21 blocks
    (conv1 11, block5_add 65, block10_add 75, block16_add 92, avgpool 106 ms); whole units of 4
    images × 3 λ for 16 iterations agreed within 5 % (block5_add 45, block16_add 104 ms). Units of
    the paper's method (800 shallow, 400 CNN iterations): Table 1 on 100 images at 128×128
    ≈ 1,600 core-s (at native size ≈ 11,600: that alone would fill the 2 h); the layer table,
    4 spread blocks (conv1, block5_add, block10_add, block16_add) × 3 λ × 20 images ≈ 5,900; the
    figures at 224×224 ≈ 2,100 (fig5 on the 4 blocks; maximise at its quick settings); the HOGgle
    dictionary, trained once per machine (≈ 10 min on two cores by its docstring: ≈ 1,200, none
    when cached; the runner submits one HOGgle unit first and the rest last, so one worker trains
    it). Total ≈ 10,800 core-s:
    ≈ 1.5 h on 2 worker processes (the default on 2 cores), a 25 % margin under 2 h. Measured on
    2026-12-02 (channels-last, chunked CNN passes; Dask's MALLOC_TRIM_THRESHOLD_ undone): 1 h 21 min
    wall, 9,720 s of worker compute (Table 1 1,250 s, the layer table 6,550 s). One more
    layer-table block costs ≈ 1,300–2,200 core-s, one more image ≈ 300. The full preset by the same
    measurements: ≈ 317,000 core-s (88 core-hours).
    """

    preset: str = "full"
    n_images: int = 100                 # eval images for the tables (the first n, sorted)
    layer_images: int | None = None     # eval images of the layer table (Table 3), spread; None: n_images
    fig_images: int = 5                 # images for fig10 (the others use the first one or two)
    shallow_size: int | None = None
    cnn_size: int | None = None
    shallow_iterations: int | None = None
    cnn_iterations: int | None = None
    batch_images: int = 4               # images per unit (one batched invert call)
    shallow_reps: tuple[str, ...] = ("hog", "hogb", "dsift")
    hoggle: str = "default"            # "default" (trained once, cached), "tiny", "none"
    table3_models: tuple[str, ...] = ("mobilenet_v2", "mobilenet_v1")
    figure_model: str = "mobilenet_v2"
    max_layers: int | None = None       # Table 3 / Fig. 5: a subset of the blocks (preimage.data.spread)
    fig1_restarts: int = 5
    fig6_restarts: int = 3
    fig8_layers: int = 6
    seed: int = 0
    # how the run's own models load (:func:`unit_model_options`; the CLI's model options), or None
    model_options: dict | None = None

    def to_dict(self) -> dict:
        """The configuration as a JSON-ready dict (recorded in the store)."""
        return dataclasses.asdict(self)


PRESETS: dict[str, Config] = {
    "full": Config(),
    "quick": Config(preset="quick", n_images=3, fig_images=2, shallow_size=64, cnn_size=96,
                    shallow_iterations=300, cnn_iterations=80, batch_images=3, hoggle="tiny",
                    table3_models=("mobilenet_v2",), max_layers=4, fig1_restarts=3, fig6_restarts=2,
                    fig8_layers=3),
    # standard: this 2-core machine in < 2 h (the estimate and its basis: the Config docstring).
    "standard": Config(preset="standard", shallow_size=128, layer_images=20, table3_models=("mobilenet_v2",),
                       max_layers=4),
    "tiny": Config(preset="tiny", n_images=2, fig_images=2, shallow_size=32, cnn_size=64,
                   shallow_iterations=4, cnn_iterations=3, batch_images=2, hoggle="none",
                   table3_models=("mobilenet_v2",), max_layers=2, fig1_restarts=2, fig6_restarts=2,
                   fig8_layers=2),
}

_OPTIONAL_INTS = ("shallow_size", "cnn_size", "shallow_iterations", "cnn_iterations", "max_layers",
                  "layer_images")


def _coerce(name: str, text: str, current: Any) -> Any:
    """A ``--set`` value (text) as the type of the setting ``name``; ``ValueError`` when invalid."""
    if isinstance(current, tuple) or name in ("shallow_reps", "table3_models"):
        return tuple(t.strip() for t in text.split(",") if t.strip())
    if name in _OPTIONAL_INTS:
        return None if text.lower() in ("none", "null", "") else int(text)
    if isinstance(current, bool):
        return text.lower() in ("1", "true", "yes")
    if isinstance(current, int):
        return int(text)
    if name == "hoggle" and text not in ("default", "tiny", "none"):
        raise ValueError(text)
    return text


def config_from(preset: str = "full", overrides: Sequence[str] | dict | None = None, *,
                model_options: dict | None = None) -> Config:
    """A preset with ``KEY=VALUE`` overrides (strings as on the command line, or a dict), and the
    loading options of the run's models (keyword arguments of :func:`unit_model_options`, as the
    CLI's model options; checked by :func:`check_model_options`).

    Raises :class:`~preimage.errors.PreimageError` for an unknown preset, setting or bad value.
    """
    if preset not in PRESETS:
        raise PreimageError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    cfg = _with_overrides(PRESETS[preset], overrides)
    options = unit_model_options(**(model_options or {}))
    if options:
        cfg = dataclasses.replace(cfg, model_options=options)
        check_model_options(cfg)
    return cfg


def _with_overrides(cfg: Config, overrides: Sequence[str] | dict | None) -> Config:
    """``cfg`` with the ``KEY=VALUE`` overrides of :func:`config_from`."""
    if not overrides:
        return cfg
    fields = {f.name for f in dataclasses.fields(Config)} - {"model_options"}
    items = overrides.items() if isinstance(overrides, dict) else [o.split("=", 1) for o in overrides]
    changes = {}
    for item in items:
        if len(item) != 2:
            raise PreimageError(f"--set expects KEY=VALUE, got {'='.join(item)!r}")
        k, v = item[0].strip(), item[1]
        if k not in fields or k == "preset":
            raise PreimageError(f"unknown setting {k!r}; valid: {', '.join(sorted(fields - {'preset'}))}")
        try:
            changes[k] = _coerce(k, v, getattr(cfg, k)) if isinstance(v, str) else v
        except ValueError:
            raise PreimageError(f"bad value for {k}: {v!r}") from None
    return dataclasses.replace(cfg, **changes)


# ----------------------------------------------------------------------------------------------
# Units and the plan
# ----------------------------------------------------------------------------------------------

@dataclass
class Unit:
    """One unit of work: ``params`` (JSON-serialisable, includes ``experiment`` and ``kind``)
    and its stable ``key`` (:func:`preimage.io.cache.stable_key` of the parameters)."""

    params: dict
    key: str = ""

    def __post_init__(self):
        self.params = {"v": UNIT_VERSION, **self.params}
        self.key = stable_key(self.params)

    @property
    def experiment(self) -> str:
        """The experiment the unit belongs to (its store folder)."""
        return self.params["experiment"]

    @property
    def kind(self) -> str:
        """``invert``, ``codes``, ``hoggle`` or ``layers``."""
        return self.params["kind"]


@dataclass
class Plan:
    """The units of a run, deduplicated, with what could not be planned and notes for the report."""

    config: Config
    experiments: list[str]
    units: list[Unit] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)   # experiment (or part) → reason
    notes: dict[str, list[str]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)     # facts for the report (e.g. the λ rule per layer)

    def add(self, params: dict) -> Unit:
        """Add a unit (once: an equal unit already planned is not repeated); returns it."""
        u = Unit(params)
        if all(x.key != u.key for x in self.units):
            self.units.append(u)
        return u

    def note(self, experiment: str, text: str) -> None:
        """A note shown in the experiment's section of the report."""
        self.notes.setdefault(experiment, []).append(text)

    def by_experiment(self) -> dict[str, list[Unit]]:
        """Units grouped by experiment, in plan order."""
        out: dict[str, list[Unit]] = {}
        for u in self.units:
            out.setdefault(u.experiment, []).append(u)
        return out


# ----------------------------------------------------------------------------------------------
# Unit parameters
# ----------------------------------------------------------------------------------------------

def shallow_rep(name: str) -> dict:
    """The ``rep`` parameter of a shallow representation (:func:`preimage.representations.get_representation`)."""
    return {"type": "shallow", "name": name}


def cnn_rep(model: str, layer: str, model_options: dict | None = None) -> dict:
    """The ``rep`` parameter of one layer of a network (:func:`preimage.models.get_model`);
    ``model_options`` (:func:`unit_model_options`: how the network loads) join it, and so its unit's
    key, only when there are any (a rep without them is the one stored before they existed)."""
    rep = {"type": "cnn", "model": model, "layer": layer}
    if model_options:
        rep["model_options"] = dict(model_options)
    return rep


#: The preprocessing settings a unit's model options may hold (:func:`preimage.models.get_model`'s
#: ``preprocess`` mapping).
_PREPROCESS_KEYS = ("preset", "order", "scale", "mean", "std")


def _json_value(value):
    """A setting as a JSON value: strings and numbers as they are, sequences as lists."""
    if isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    raise PreimageError(f"model option {value!r} is not a string, a number or a list of them")


def _preprocess_option(preprocess) -> dict | None:
    """``preprocess`` (None, a preset name, a Preprocessing or a mapping) as a JSON dict of the
    settings given (checked by building it once), or None."""
    from ..models.preprocess import Preprocessing, make_preprocessing
    if preprocess is None:
        return None
    if isinstance(preprocess, Preprocessing):
        preprocess = {k: v for k, v in preprocess.settings().items() if k in _PREPROCESS_KEYS}
    elif isinstance(preprocess, str):
        preprocess = {"preset": preprocess}
    unknown = set(preprocess) - set(_PREPROCESS_KEYS)
    if unknown:
        raise PreimageError(f"unknown preprocessing settings {sorted(unknown)}; valid: {', '.join(_PREPROCESS_KEYS)}")
    out = {k: _json_value(preprocess[k]) for k in _PREPROCESS_KEYS if preprocess.get(k) is not None}
    if "preset" in out:
        out["preset"] = str(out["preset"]).strip().lower()
    if "order" in out:
        out["order"] = str(out["order"]).strip().upper()
    make_preprocessing(out.get("preset"), **{k: v for k, v in out.items() if k != "preset"})  # raises when invalid
    return out or None


def unit_model_options(preprocess=None, weights=None, input_size=None, model_dir=None) -> dict | None:
    """How a unit's network loads, as JSON values for its ``rep`` (:func:`cnn_rep`, hence its key):
    the keyword arguments of :func:`preimage.models.get_model` that were given, normalised, or None
    when none was.

    ``preprocess``: a preset name, a :class:`~preimage.models.preprocess.Preprocessing` or a mapping
    (``preset``, ``order``, ``scale``, ``mean``, ``std``; the given ones are kept as given, the
    channel order upper-case); ``weights``: a file (stored as its absolute path) or a torchvision
    weights name; ``input_size``: ``(H, W)``, ``"H,W"`` or one number (stored as ``[H, W]``);
    ``model_dir``: a folder or a list of them (absolute paths). Raises
    :class:`~preimage.errors.PreimageError` for an invalid setting.
    """
    from ..models.preprocess import parse_input_size
    out: dict[str, Any] = {}
    prep = _preprocess_option(preprocess)
    if prep:
        out["preprocess"] = prep
    if weights is not None:
        w = Path(str(weights)).expanduser()
        out["weights"] = str(w.resolve()) if w.exists() else str(weights)
    if input_size is not None:
        out["input_size"] = list(parse_input_size(input_size))
    dirs = [model_dir] if isinstance(model_dir, (str, Path)) else list(model_dir or [])
    if dirs:
        out["model_dir"] = [str(Path(str(d)).expanduser().resolve()) for d in dirs]
    return out or None


#: The model options each kind of model (:func:`preimage.models.model_kind`) takes in a
#: reproduction, where one set of options serves every model of the run: the user's files and
#: factories take their preprocessing and size; named models keep their own settings and take
#: only the folders to search (the MobileNets); caffenet and torchvision:NAME take none.
_TAKES = {"onnx": {"preprocess", "input_size", "model_dir"}, "tflite": {"preprocess", "input_size", "model_dir"},
          "unknown": {"preprocess", "input_size", "model_dir"}, "factory": {"preprocess", "input_size", "weights"},
          "named": {"model_dir"}, "torchvision": set()}


def _takes(spec: str, strict: bool) -> set[str]:
    """The option names :func:`model_options_for` keeps for the model ``spec``."""
    from ..models import model_kind
    kind = model_kind(spec)
    caffenet = str(spec).strip().lower() == "caffenet"
    if strict:  # the model named on the command line: get_model judges (and refuses) the rest
        searched = kind not in ("torchvision", "factory") and not caffenet
        return {"preprocess", "weights", "input_size"} | ({"model_dir"} if searched else set())
    return set() if caffenet else _TAKES.get(kind, set())


def model_options_for(spec: str, options: dict | None, *, strict: bool = True) -> dict | None:
    """The part of ``options`` (:func:`unit_model_options`) that applies to the model ``spec``, or
    None. ``model_dir`` is kept only for models looked up on the search path (MobileNets, files).
    ``strict=False`` (a reproduction: one set of options for all its models) also drops what the
    model's kind does not take (see ``_TAKES``); ``strict=True`` keeps it, so that
    :func:`preimage.models.get_model` refuses it with its own message."""
    if not options:
        return None
    keep = _takes(spec, strict)
    out = {k: v for k, v in options.items() if k in keep}
    return out or None


def check_model_options(config: Config) -> None:
    """Raise :class:`~preimage.errors.PreimageError` when one of ``config.model_options`` applies to
    none of the run's models (``table3_models``, ``figure_model``), which would silently ignore it."""
    models = list(dict.fromkeys([*config.table3_models, config.figure_model]))
    for key in config.model_options or {}:
        if not any(key in _takes(m, strict=False) for m in models):
            flag = "--" + key.replace("_", "-")
            raise PreimageError(f"{flag} applies to none of this run's models ({', '.join(models)}): the model "
                                "options are for .onnx/.tflite files and package.module:factory models (--model-dir "
                                "also for the MobileNets); name one with --set figure_model=… or --set table3_models=…")


def options_text(options: dict | None) -> str:
    """``"preprocess preset=caffe, input_size=[64, 64]"``: model options for reports and tables."""
    parts = []
    for k, v in (options or {}).items():
        if isinstance(v, dict):
            parts.append(f"{k} " + " ".join(f"{kk}={vv}" for kk, vv in v.items()))
        else:
            parts.append(f"{k}={v}")
    return ", ".join(parts)


def invert_params(experiment: str, rep: dict, images: Sequence[str], *, mode: str, preprocess: str, size,
                  lambdas: Sequence[float], iterations: int | None, lambda_scaling: str = "image",
                  lr: float | None = None, beta: float = 2.0, restarts: int = 1, seed: int = 0,
                  window: int | None = None, channels: str | None = None, save: str = "all",
                  code_picture: bool = False, box: bool = False, options: dict | None = None) -> dict:
    """Parameters of an ``invert`` unit: one batched :func:`preimage.invert.invert` call.

    ``images`` share one size after ``preprocess``/``size``; ``lambdas`` are λ_V values (K
    settings). ``lambda_scaling="image"``: each is a reference λ_V at 227×227×3 carried to the
    image size with λ_α by :func:`preimage.objective.default_lambdas`; ``"none"``: passed to
    ``invert`` unchanged (λ_α its default). ``save``: ``"all"``, ``"first"`` (pictures of the first
    image only, no reconstruction tensors) or ``"none"``. ``window``/``channels``: a code mask
    (:func:`preimage.masks.code_mask`); ``code_picture``: store the target code's picture;
    ``box``: store reconstructions with the receptive field of the window drawn. ``options``: more
    :func:`preimage.invert.invert` keyword arguments (JSON values: ``param``, ``param_options``,
    ``method``, ``jitter``, ``schedule``, ``lambda_tv``/``lambda_alpha`` overrides …), part of the key;
    none (or ``{"method": "paper"}`` alone, stored as none) is the paper's method; any other
    options carry :data:`preimage.invert.RECIPE_VERSION` in the key.
    """
    if options == {"method": "paper"}:
        options = None
    if preprocess not in PREPROCESS:
        raise ValueError(f"preprocess must be one of {PREPROCESS}, not {preprocess!r}")
    return {"experiment": experiment, "kind": "invert", "rep": rep, "images": list(images), "mode": mode,
            "preprocess": preprocess, "size": size, "lambda_tv": [float(v) for v in lambdas],
            "lambda_scaling": lambda_scaling, "beta": float(beta), "alpha": 6.0, "restarts": int(restarts),
            "seed": int(seed), "iterations": iterations, "lr": lr, "window": window, "channels": channels,
            "save": save, "code_picture": bool(code_picture), "box": bool(box),
            **({"options": dict(options), "recipe": RECIPE_VERSION} if options else {})}


def codes_params(experiment: str, rep: dict, images: Sequence[str], batches: Sequence[Sequence[str]], *,
                 mode: str, preprocess: str, size) -> dict:
    """Parameters of a ``codes`` unit: the codes of the set ``images`` (in this order: the order of
    the normaliser's sums and of the scored table), computed in ``batches`` (the batches of the
    ``invert`` units, so that each code is bit for bit the target its inversion used)."""
    if sorted(images) != sorted(n for b in batches for n in b):
        raise ValueError("the batches must hold the set's images, each once")
    return {"experiment": experiment, "kind": "codes", "rep": rep, "images": list(images),
            "batches": [list(b) for b in batches], "mode": mode, "preprocess": preprocess, "size": size}


def hoggle_params(experiment: str, images: Sequence[str], *, preprocess: str, size, dictionary: str,
                  save: str = "all") -> dict:
    """Parameters of a ``hoggle`` unit: HOGgle on grey images (``dictionary``: ``default`` or ``tiny``)."""
    return {"experiment": experiment, "kind": "hoggle", "images": list(images), "preprocess": preprocess,
            "size": size, "dictionary": dictionary, "save": save}


def shallow_preprocess(config: Config) -> tuple[str, int | None]:
    """``(preprocess, size)`` of the shallow experiments: native size, or crop to ``shallow_size``."""
    return ("native", None) if config.shallow_size is None else ("crop", int(config.shallow_size))


def shallow_unavailable(name: str) -> str | None:
    """Why the shallow representation ``name`` cannot be built here, or None."""
    try:
        from ..representations import get_representation
        get_representation(name)
    except Exception as exc:  # noqa: BLE001 - the reason is reported
        return f"representation {name!r} unavailable: {type(exc).__name__}: {exc}"
    return None


def describe_preprocess(preprocess: str, size, mode: str) -> str:
    """One sentence stating a table's image preprocessing, for the report."""
    colour = "grey (BT.601)" if mode == "grey" else "RGB"
    if preprocess == "crop":
        return f"images resized (shorter side to {size}, antialiased) and centre-cropped to {size}×{size}, {colour}"
    if preprocess == "squash":
        return (f"images resized to {size[0]}×{size[1]} (antialiased, aspect not kept, no crop: the authors' "
                f"code for CaffeNet), {colour}")
    limit = f", longest side limited to {size}" if size else ""
    return f"images at their native size{limit}, {colour}, as the authors' code"


def layer_lambda(names: Sequence[str], layer: str) -> float:
    """The paper's λ_V for ``layer`` by its relative depth among ``names``
    (:func:`preimage.paper.lambda_tv_for_depth`)."""
    return lambda_tv_for_depth((list(names).index(layer) + 1) / len(names))


# ----------------------------------------------------------------------------------------------
# Planning context
# ----------------------------------------------------------------------------------------------

class Context:
    """Lazily gathered facts the planners need: image names and shapes, model block names."""

    def __init__(self, config: Config):
        self.config = config
        self._models: dict[str, Any] = {}
        self._names: list[str] | None = None
        self._shapes: dict[tuple, tuple] = {}

    def image_names(self) -> list[str]:
        """File names of the eval images, sorted."""
        if self._names is None:
            from ..data import eval_images
            self._names = [p.name for p in eval_images()]
        return self._names

    def batches(self, names: Sequence[str], mode: str, preprocess: str, size) -> list[list[str]]:
        """``names`` in batches of ``config.batch_images``: images of one size after preprocessing
        together (groups in order of first appearance), see :func:`image_batches`."""
        shape = self.shape_of(mode, preprocess, size) if preprocess == "native" else None  # else one size
        return image_batches(names, max(1, self.config.batch_images), shape)

    def shape_of(self, mode: str, preprocess: str, size):
        """A function image name → its ``(C, H, W)`` after preprocessing (cached)."""
        def shape(name: str) -> tuple:
            """``(C, H, W)`` of image ``name`` after preprocessing."""
            key = (name, mode, preprocess, canonical_size(size))
            if key not in self._shapes:
                from .units import load_unit_image
                self._shapes[key] = tuple(load_unit_image(name, mode, preprocess, size).shape)
            return self._shapes[key]
        return shape

    def model_options(self, name: str) -> dict | None:
        """The run's model options (``config.model_options``) that apply to the model ``name``
        (:func:`model_options_for`, not strict), or None."""
        return model_options_for(name, self.config.model_options, strict=False)

    def model(self, name: str) -> dict:
        """``{"blocks": all block names, "usable": those computable at the CNN size, "size": S,
        "input_size": (H, W)}``; raises with the reason when the model is unavailable."""
        if name not in self._models:
            try:
                self._models[name] = self._model_info(name)
            except Exception as exc:  # noqa: BLE001 - the reason is reported
                self._models[name] = exc
        info = self._models[name]
        if isinstance(info, Exception):
            raise info
        return info

    def _model_info(self, name: str) -> dict:
        """The facts of :meth:`model` (raises when the model cannot be built)."""
        from ..models import get_model
        from ..models.fx import model_input_size
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = get_model(name, **(self.model_options(name) or {}))
        blocks = list(getattr(model, "block_names", None) or model.layer_names)
        h, w = model_input_size(model)
        size = int(self.config.cnn_size or min(h, w))
        usable = blocks
        if size < min(h, w):
            # fixed-window global pooling (and what follows) needs the full input size
            cut = next((i for i, b in enumerate(blocks) if b.startswith(("avgpool", "pool", "logits"))), len(blocks))
            usable = blocks[:cut]
        return {"blocks": blocks, "usable": usable, "size": size, "input_size": [h, w]}


def canonical_size(size):
    """A ``size`` parameter in its JSON form (tuples → lists), hashable as a tuple for caches."""
    return tuple(size) if isinstance(size, (list, tuple)) else size


def image_batches(names: Sequence[str], batch: int, shape=None) -> list[list[str]]:
    """``names`` in batches of at most ``batch``; with ``shape`` (name → image shape), only images of
    one shape together, the groups in order of their first image, each in chunks of ``batch``."""
    groups: dict[Any, list[str]] = {}
    for n in names:
        groups.setdefault(shape(n) if shape is not None else None, []).append(n)
    return [g[i:i + batch] for g in groups.values() for i in range(0, len(g), batch)]


# ----------------------------------------------------------------------------------------------
# Experiments
# ----------------------------------------------------------------------------------------------

class Experiment:
    """One table or figure of the paper: everything about it in one object.

    Attributes:
        name: the ``--only`` name (``table1``, ``fig4`` …) and the report section's id.
        title: the section title.
        text: what the experiment shows (the first paragraph of its section).
    """

    name: str = ""
    title: str = ""
    text: str = ""

    def plan(self, plan: Plan, ctx: Context) -> None:
        """Add this experiment's units to ``plan`` (or record in ``plan.skipped`` why it cannot run)."""
        raise NotImplementedError

    def render(self, collected: "Collected") -> "Section":
        """The report section of this experiment from the finished units in ``collected``."""
        raise NotImplementedError

    def table_images(self, plan: Plan, ctx: Context, n: int | None = None) -> list[str] | None:
        """``n`` (default the config's ``n_images``) eval images spread over the set, or None (the
        reason in ``plan.skipped``) when there are fewer than two: a table's error is normalised by
        the pairwise distances of its codes."""
        names = spread(ctx.image_names(), plan.config.n_images if n is None else n)
        if len(names) < 2:
            plan.skipped[self.name] = "needs at least two eval images (the error is normalised by pairwise distances)"
            return None
        return names

    def __repr__(self) -> str:
        return f"<Experiment {self.name}>"
