"""What a worker does with a job: build the representation and the image, invert with live
progress frames, write the run's files with :func:`preimage.io.artefacts.write_inversion`.

Progress comes from :class:`ProgressProbe`, a :class:`~preimage.representations.base.Representation`
wrapping the job's own: every optimisation step passes the current images through it, so it sees
the reconstructions (and their codes) as they form, computes each sample's energy with the
objective's own terms, and stops the run by raising :class:`~preimage.serve.jobs.JobCancelled`
once the job is cancelled.
"""

from __future__ import annotations

import base64
import functools
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from ..data import eval_images
from ..errors import PreimageError, UnknownNameError
from ..io.artefacts import inversion_pictures, picture_name, write_inversion
from ..io.cache import png_bytes
from ..io.images import default_image, limit_side, load_image, resize, save_image, stretch, to_uint8
from ..masks import code_mask
from ..objective import InversionObjective, alpha_norm, total_variation
from ..params import parameterisation_class
from ..representations.base import Representation
from .config import ServeConfig
from .jobs import Job, JobCancelled, JobSpec

#: The astronaut bundled with scikit-image, always available as a sample.
ASTRONAUT = "astronaut"
#: Progress frames: at most this many per run, and at least this many seconds apart (the first
#: and last frames always go out).
FRAMES_PER_RUN, FRAME_SECONDS = 60, 0.15


@functools.lru_cache(maxsize=1)
def sample_paths() -> dict[str, Path | None]:
    """Sample name → file (the shared data's evaluation images when present; the astronaut → None);
    looked up once per process."""
    out: dict[str, Path | None] = {ASTRONAUT: None}
    try:
        out.update({p.stem: p for p in eval_images()})
    except (PreimageError, FileNotFoundError, OSError):
        pass
    return out


class Models:
    """The networks the server offers, loaded once on first use (thread-safe), and their
    :class:`~preimage.representations.cnn.CNNLayer` per layer (a few kept)."""

    def __init__(self, cfg: ServeConfig, keep_layers: int = 16):
        self.cfg = cfg
        self._models: dict[str, torch.nn.Module] = {}
        self._layers: OrderedDict = OrderedDict()
        self._infos: dict[str, list] = {}
        self._keep = keep_layers
        self._lock = threading.Lock()

    def model(self, name: str) -> torch.nn.Module:
        """The model called ``name`` (only names the server was started with; else
        :class:`UnknownNameError`)."""
        from ..models import get_model
        if name not in self.cfg.models:
            raise UnknownNameError(f"unknown model {name!r}; this server offers: {', '.join(self.cfg.models)}")
        with self._lock:
            if name not in self._models:
                self._models[name] = get_model(self.cfg.model_specs.get(name, name),
                                               weights=self.cfg.model_weights.get(name))
            return self._models[name]

    def layers(self, name: str) -> list[dict]:
        """The model's layers: name, type, channels, output shape, receptive field (size, stride)."""
        from ..representations.cnn import list_layers
        model = self.model(name)
        with self._lock:
            if name not in self._infos:
                self._infos[name] = [
                    {"name": i.name, "type": i.type, "channels": i.channels, "output_shape": list(i.output_shape),
                     "rf_size": None if i.rf_size is None else [float(v) for v in i.rf_size],
                     "rf_stride": None if i.rf_stride is None else [float(v) for v in i.rf_stride],
                     "depth": i.depth} for i in list_layers(model)]
            return self._infos[name]

    def layer(self, name: str, layer: str):
        """The ``CNNLayer`` of ``name``'s ``layer`` (unknown layers: :class:`UnknownNameError`)."""
        from ..representations.cnn import CNNLayer
        model = self.model(name)
        with self._lock:
            key = (name, layer)
            if key not in self._layers:
                self._layers[key] = CNNLayer(model, layer)
                while len(self._layers) > self._keep:
                    self._layers.popitem(last=False)
            self._layers.move_to_end(key)
            return self._layers[key]


def job_target(spec: JobSpec, cfg: ServeConfig, models: Models) -> tuple[Representation, torch.Tensor, dict]:
    """The job's representation, its image ``(C, H, W)`` on 0–255 and what ``result.json``
    records about them."""
    from ..representations import get_representation
    if spec.model is not None:
        rep = models.layer(spec.model, spec.layer)
        info = {"model": spec.model, "layer": spec.layer}
        mode = "rgb"
    else:
        rep = get_representation(spec.representation)
        info = {"rep": spec.representation}
        mode = "rgb" if spec.colour and spec.representation != "dsift" else "grey"
    if spec.upload is not None:
        path = cfg.data_dir / "uploads" / f"{spec.upload}.png"
        if not path.is_file():
            raise UnknownNameError(f"no uploaded image {spec.upload!r} (upload it with POST /api/images)")
        img, name = load_image(path, mode=mode, max_pixels=cfg.max_upload_pixels), "upload"
    else:
        samples = sample_paths()
        if spec.sample not in samples:
            raise UnknownNameError(f"unknown sample {spec.sample!r}; see GET /api/samples")
        path = samples[spec.sample]
        img = default_image(mode)[0] if path is None else load_image(path, mode=mode)
        name = spec.sample
    if spec.model is not None and rep.input_size:
        img = resize(img, tuple(rep.input_size))
    else:
        img = limit_side(img, min(spec.max_side, cfg.max_side))
    rep.check_input(img[None])
    return rep, img, {"image": name, **info}


class ProgressProbe(Representation):
    """``inner`` under the same contract, reporting the optimisation as it goes.

    Each forward of a ``(B, C, H, W)`` batch of the job's ``batch`` samples counts one step;
    ``on_frame(step, images (B, C, H, W), energies (B,))`` is called for the steps due
    (:data:`FRAMES_PER_RUN`, :data:`FRAME_SECONDS`; :meth:`flush` reports a last step not yet
    reported). Raises :class:`JobCancelled` at the next step
    once ``cancelled`` is set.
    """

    def __init__(self, inner: Representation, batch: int, iterations: int, target: torch.Tensor,
                 image_shape: tuple[int, int, int], tvs: list[float], alphas: list[float],
                 mask: torch.Tensor | None, on_frame, cancelled: threading.Event):
        super().__init__()
        self.inner = inner
        for attr, value in vars(Representation).items():  # the whole declared contract, as the inner one has it
            if not attr.startswith("_") and not callable(value) and not isinstance(value, property):
                setattr(self, attr, getattr(inner, attr))
        self.batch, self.iterations, self.on_frame, self.cancelled = batch, iterations, on_frame, cancelled
        self.every = max(1, iterations // FRAMES_PER_RUN)
        self.step, self.last = 0, 0.0
        self.pending: tuple | None = None  # (step, images, codes) of a step not yet reported
        k = len(tvs)  # the objective of the B = R·K samples, b = r·K + k, to price each frame
        self.objective = InversionObjective(inner, target.expand(batch, *target.shape[1:]), image_shape,
                                            lambda_alpha=[alphas[b % k] for b in range(batch)],
                                            lambda_tv=[tvs[b % k] for b in range(batch)], mask=mask,
                                            mean_pixel=inner.mean_pixel)

    def check_input(self, x: torch.Tensor) -> None:
        """The inner representation's check."""
        self.inner.check_input(x)

    def render_code(self, code: torch.Tensor):
        """The inner representation's picture of a code ``(D, h, w)``."""
        return self.inner.render_code(code)

    def receptive_field_box(self, window: int):
        """The inner representation's box."""
        return self.inner.receptive_field_box(window)

    def leaking_gradients(self, leak: float):
        """The inner representation's leaky gradient."""
        return self.inner.leaking_gradients(leak)

    def code_stride(self):
        """The inner representation's stride."""
        return self.inner.code_stride()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` on 0–255 → the inner code ``(B, ...)``; reports due steps."""
        if self.cancelled.is_set():
            raise JobCancelled()
        code = self.inner(x)
        optimising = torch.is_grad_enabled() and x.requires_grad  # not the target's or the final codes
        if optimising and x.shape[0] == self.batch and self.step < self.iterations:
            self.step += 1
            now = time.monotonic()
            due = self.step == 1 or self.step == self.iterations or (
                self.step % self.every == 0 and now - self.last >= FRAME_SECONDS)
            self.pending = (self.step, x.detach().clone(), code.detach())
            if due:
                self.last = now
                self.flush()
        return code

    def flush(self) -> None:
        """Report the latest step if its frame has not gone out yet (an optimisation that ended
        before ``iterations`` steps): the last step's frame always precedes the end of the run."""
        if self.pending is not None:
            step, x, code = self.pending
            self.pending = None
            with torch.no_grad():
                self.on_frame(step, x, self._energy(x, code))

    def _energy(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """The energy (:class:`~preimage.objective.InversionObjective`'s terms) of images ``x``
        ``(B, C, H, W)`` whose codes are ``code``: ``(B,)``, in sample order b = r·K + k."""
        obj = self.objective
        u = (x - obj.mean_pixel.to(x.dtype)) / obj.sigma
        return (obj.data_term(code) + obj.lambda_alpha.to(x.dtype) * alpha_norm(u, obj.alpha)
                + obj.lambda_tv.to(x.dtype) * total_variation(u, obj.beta)).double()


#: Longest side of one reconstruction in a progress frame.
FRAME_SIDE = 192


def frame_png(images: torch.Tensor, restarts: int, settings: int, pad: int = 2) -> str:
    """A PNG data URL of ``images`` ``(R·K, C, H, W)`` on 0–255 (each min–max stretched,
    downscaled to :data:`FRAME_SIDE`) in a grid of R rows × K columns."""
    shown = limit_side(stretch(images.float().cpu()), FRAME_SIDE)
    c, h, w = shown.shape[1:]
    canvas = torch.full((c, restarts * (h + pad) - pad, settings * (w + pad) - pad), 255.0)
    for b in range(shown.shape[0]):
        r, k = divmod(b, settings)
        canvas[:, r * (h + pad):r * (h + pad) + h, k * (w + pad):k * (w + pad) + w] = shown[b]
    png = png_bytes(to_uint8(canvas), compress_level=1)
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _write(run_dir: Path, result, rep: Representation, img: torch.Tensor, info: dict,
           neighbourhood: int | None) -> list[str]:
    """The run's files through :func:`write_inversion` (+ ``code.png``, the code's picture);
    returns their names."""
    box = rep.receptive_field_box(neighbourhood) if neighbourhood else None
    pictures = inversion_pictures(result, img[None], code_picture=rep.render_code, box=box, images=[0])
    written = write_inversion(run_dir, result, pictures, info, code_caption=f"{rep.name} code")
    names = [p.name for p in written.values()]
    if picture_name("code") in pictures:
        save_image(pictures[picture_name("code")], run_dir / "code.png")
        names.append("code.png")
    r_all, k_all = result.reconstructions.shape[1:3]
    for r in range(r_all):
        for k in range(k_all):
            kind = "boxed" if box is not None else "recon"
            tile = f"{picture_name(kind, 0, r, k)}.png"
            save_image(pictures[picture_name(kind, 0, r, k)], run_dir / tile)
            names.append(tile)
    return sorted(names)


def run_job(job: Job, cfg: ServeConfig, models: Models) -> tuple[dict, list[str]]:
    """Run ``job`` (in a worker thread): invert its image, publishing ``progress`` events
    ``{iteration, iterations, seconds (since the job started), energy (R×K), frame (PNG data URL)}``; returns the summary and the
    names of the files written into ``data_dir/runs/<id>/``."""
    from ..invert import invert, lambda_settings
    t0 = time.monotonic()
    spec = job.spec
    rep, img, info = job_target(spec, cfg, models)
    with torch.no_grad():
        target = rep(img[None])
    mask = code_mask(target.shape[1:], spec.neighbourhood, spec.channels)
    param = spec.param or rep.param  # None: the representation's own (pixels; Fourier for CNN layers)
    tvs, alphas = lambda_settings(rep, tuple(img.shape), spec.lambda_tv, None, 6.0, 2.0,
                                  parameterisation_class(param).prior_scale)
    r, k = spec.restarts, len(tvs)

    def on_frame(step: int, images: torch.Tensor, energy: torch.Tensor) -> None:
        job.publish("progress", {"iteration": step, "iterations": spec.iterations, "seconds": time.monotonic() - t0,
                                 "energy": np.asarray(energy.view(r, k).tolist()).round(6).tolist(),
                                 "lambda_tv": tvs, "frame": frame_png(images, r, k)})

    probe = ProgressProbe(rep, r * k, spec.iterations, target, tuple(img.shape), tvs, alphas, mask, on_frame,
                          job.cancelled)
    result = invert(probe, img[None], restarts=r, lambda_tv=tvs, lambda_alpha=alphas, iterations=spec.iterations,
                    param=param, jitter=spec.jitter, mask=mask, seed=spec.seed, progress=False)
    probe.flush()
    files = _write(cfg.data_dir / "runs" / job.id, result, rep, img, info, spec.neighbourhood)
    errors = result.relative_errors[0]
    kind = "boxed" if spec.neighbourhood and rep.receptive_field_box(spec.neighbourhood) else "recon"
    tiles = [{"file": f"{picture_name(kind, 0, i, j)}.png", "restart": i, "lambda_tv": tvs[j],
              "error": float(errors[i, j])} for i in range(r) for j in range(k)]
    summary = {"image_shape": list(img.shape), "lambda_tv": tvs, "restarts": r, "param": param,
               "relative_errors": errors.tolist(), "best_error": float(errors.min()), "tiles": tiles,
               "seconds": round(result.seconds, 3), **info}
    return summary, files
