"""What a visualisation maximises: batched, composable objectives on a representation's code, and
the energy that :func:`preimage.optim.minimise` descends (IJCV 2016, Mahendran & Vedaldi,
"Visualizing deep convolutional neural networks using natural pre-images").

An :class:`Objective` maps a batch of codes ``(N, C, h, w)`` (or ``(N, D)``) to ``(N,)`` scores to
*maximise*. It holds ``n`` *units* (a unit: one channel, one neuron, one class, one direction, one
image's code); sample ``b`` of a batch of ``N = R·n`` is scored on unit ``b mod n`` (restart
``b // n``), so ``channel(range(64))`` visualises 64 channels as one batch. Objectives compose::

    obj = channel(range(16)) + 0.5 * neuron(range(16), position=(3, 3))    # both 16 units
    obj = class_logit([282]) - 0.1 * class_logit([281])                     # one unit
    obj = sum(channel([c]) for c in (1, 2))                                # sum() works too

Factories: :func:`neuron` (a channel at one position, default the centre: IJCV's maximisation
target), :func:`channel` (the mean of a channel map), :func:`class_logit` (an entry of a vector
code, e.g. a ``logits`` layer), :func:`direction` (a direction in channel space) and
:func:`caricature` (IJCV's "enhance": the inner product with the rectified code of an image
normalised by its squared norm, ``⟨max(Φ(I), 0)/‖max(Φ(I), 0)‖², Φ(x)⟩``, equal to 1 at ``x = I``).

:class:`MaximisationObjective` is the energy, per sample, in the σ-units of
:mod:`preimage.objective` (``u``, image ``m + σ·B(u)``)::

    E(u) = −f(Φ(m + σ·B(u))) / s  +  λ_α Σ|u|^α  +  λ_V TV^β(u)

with ``f`` the objective, ``s`` a per-sample scale (the unit's typical response on natural images,
IJCV's ``M``; 1 for a caricature, whose score is 1 at the image) and ``B`` the bounded range
(:func:`bounded_range`): IJCV's projection of each pixel's colour vector into a ball of radius 160
grey levels around the mean pixel, here also clipped to 0–255 (see its docstring). The priors act
on ``u`` itself, so a pixel pushed past the bound is pulled back by the α-norm instead of sticking.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .objective import EnergyTerms, _per_sample, alpha_norm, natural_sigma, total_variation
from .paper import IJCV_BOUND  # re-exported: the default ``bound``

__all__ = ["Objective", "neuron", "channel", "class_logit", "direction", "caricature", "caricature_target",
           "bounded_range", "MaximisationObjective", "IJCV_BOUND"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _units(values, name: str) -> list:
    """A unit list from one value or a sequence (a range, list, tensor); raises when empty."""
    if torch.is_tensor(values):
        values = values.flatten().tolist()
    values = [values] if isinstance(values, (int, float, str)) else list(values)
    if not values:
        raise ValueError(f"{name}: no units given")
    return values


class Objective:
    """A batched score to maximise: ``obj(code)`` → ``(N,)`` (see the module docstring).

    Args:
        score: ``score(code, unit)`` → ``(N,)``: ``code`` ``(N, ...)``, ``unit`` ``(N,)`` long,
            the unit index (``0 … n−1``) each sample is scored on.
        n: number of units.
        labels: one label per unit (for captions and JSON).
    """

    def __init__(self, score: ScoreFn, n: int, labels: Sequence[str]):
        if int(n) < 1 or len(labels) != int(n):
            raise ValueError(f"an objective needs n ≥ 1 units and n labels, got n={n}, {len(labels)} labels")
        self.score, self.n, self.labels = score, int(n), [str(s) for s in labels]

    def unit_index(self, batch: int, device=None) -> torch.Tensor:
        """``(batch,)`` long: the unit of each sample (``b mod n``); ``batch`` must be a multiple of n."""
        if batch % self.n:
            raise ValueError(f"a batch of {batch} samples is not a whole number of restarts of {self.n} units")
        return torch.arange(batch, device=device) % self.n

    def __call__(self, code: torch.Tensor) -> torch.Tensor:
        """``code`` ``(N, ...)`` → scores ``(N,)`` (in the code's dtype)."""
        return self.score(code, self.unit_index(code.shape[0], code.device))

    # -- composition ---------------------------------------------------------------------------
    def _combine(self, other: "Objective", op: Callable, sym: str) -> "Objective":
        if not isinstance(other, Objective):
            return NotImplemented
        if self.n != other.n and 1 not in (self.n, other.n):
            raise ValueError(f"cannot combine objectives of {self.n} and {other.n} units")
        n = max(self.n, other.n)
        a, b = self, other

        def score(code, unit):
            return op(a.score(code, unit % a.n), b.score(code, unit % b.n))
        labels = [f"{a.labels[i % a.n]} {sym} {b.labels[i % b.n]}" for i in range(n)]
        return Objective(score, n, labels)

    def __add__(self, other):
        if isinstance(other, (int, float)) and other == 0:
            return self
        return self._combine(other, torch.add, "+")

    def __radd__(self, other):  # sum([...]) starts from 0
        return self.__add__(other)

    def __sub__(self, other):
        return self._combine(other, torch.sub, "−")

    def __mul__(self, weight):
        """Scale by a number, or by ``n`` per-unit weights (a sequence or tensor)."""
        w = torch.as_tensor(weight, dtype=torch.float64).flatten()
        if w.numel() not in (1, self.n):
            raise ValueError(f"weights: give one number or {self.n} (one per unit), got {w.numel()}")
        inner = self.score

        def score(code, unit):
            ww = w.to(code.device, code.dtype)
            return inner(code, unit) * (ww if ww.numel() == 1 else ww[unit])
        text = f"{float(w[0]):g}" if w.numel() == 1 else "w"
        return Objective(score, self.n, [f"{text}·{s}" for s in self.labels])

    __rmul__ = __mul__

    def __neg__(self):
        return self * -1.0

    def __repr__(self) -> str:
        shown = ", ".join(self.labels[:4]) + (", …" if self.n > 4 else "")
        return f"Objective({self.n} units: {shown})"


# ----------------------------------------------------------------------------------------------
# Factories
# ----------------------------------------------------------------------------------------------

def _check_channels(code: torch.Tensor, channels: torch.Tensor, what: str) -> None:
    c = code.shape[1]
    if int(channels.max()) >= c or int(channels.min()) < 0:
        raise ValueError(f"{what} {int(channels.max())} out of range: the code has {c} channels (0–{c - 1})")


def _position(code: torch.Tensor, position) -> tuple[int, int]:
    h, w = code.shape[-2:]
    if position is None or position == "centre" or position == "center":
        return h // 2, w // 2
    y, x = (int(v) for v in position)
    if not (0 <= y < h and 0 <= x < w):
        raise ValueError(f"neuron position {(y, x)} outside the {h}×{w} code map")
    return y, x


def neuron(channels, position: str | tuple[int, int] = "centre") -> Objective:
    """One neuron per unit: channel ``channels[i]`` at ``position`` ``(y, x)`` of the code map
    (``"centre"``: ``(h//2, w//2)``, IJCV's target). Code ``(N, C, h, w)``; a code without spatial
    axes ``(N, C)`` takes the channel itself. Score: the activation (code units)."""
    chans = _units(channels, "neuron")
    idx = torch.tensor([int(c) for c in chans])

    def score(code, unit):
        ch = idx.to(code.device)[unit]
        _check_channels(code, ch, "neuron channel")
        rows = torch.arange(code.shape[0], device=code.device)
        if code.dim() == 2:
            return code[rows, ch]
        y, x = _position(code, position)
        return code[rows, ch, y, x]
    where = "" if position in ("centre", "center") else f"@{tuple(position)}"
    return Objective(score, len(chans), [f"neuron {c}{where}" for c in chans])


def channel(channels) -> Objective:
    """One channel per unit: the mean of channel ``channels[i]`` over the code map ``(N, C, h, w)``
    (or the entry of a vector code ``(N, C)``). Score in code units."""
    chans = _units(channels, "channel")
    idx = torch.tensor([int(c) for c in chans])

    def score(code, unit):
        ch = idx.to(code.device)[unit]
        _check_channels(code, ch, "channel")
        rows = torch.arange(code.shape[0], device=code.device)
        picked = code[rows, ch]
        return picked.flatten(1).mean(1) if picked.dim() > 1 else picked
    return Objective(score, len(chans), [f"channel {c}" for c in chans])


def class_logit(classes, labels: Sequence[str] | None = None) -> Objective:
    """One class per unit: entry ``classes[i]`` of a vector code ``(N, K)`` (a ``logits`` layer;
    ``(N, K, 1, 1)`` works too). ``labels``: the class names for captions."""
    ks = _units(classes, "class_logit")
    idx = torch.tensor([int(k) for k in ks])
    names = list(labels) if labels is not None else [f"class {k}" for k in ks]

    def score(code, unit):
        if code.dim() > 2 and code.shape[2:].numel() != 1:
            raise ValueError(f"class_logit needs a vector code (N, K) such as a logits layer; this layer gives "
                             f"{tuple(code.shape[1:])}")
        flat = code.flatten(1)
        k = idx.to(code.device)[unit]
        if int(k.max()) >= flat.shape[1] or int(k.min()) < 0:
            raise ValueError(f"class {int(k.max())} out of range: the code has {flat.shape[1]} entries")
        return flat[torch.arange(flat.shape[0], device=code.device), k]
    return Objective(score, len(ks), names)


def direction(vectors: torch.Tensor, position: str | tuple[int, int] | None = None) -> Objective:
    """One direction per unit: ``vectors`` ``(n, C)`` (a single ``(C,)`` is one unit), each
    normalised to unit length; score ``⟨v, Φ(x)[:, y, x]⟩`` averaged over the map (``position``
    None) or at one position (``"centre"`` or ``(y, x)``). Code ``(N, C, h, w)`` or ``(N, C)``."""
    v = torch.as_tensor(vectors, dtype=torch.float32)
    v = v[None] if v.dim() == 1 else v
    if v.dim() != 2 or not torch.isfinite(v).all() or (v.norm(dim=1) == 0).any():
        raise ValueError("direction needs finite, non-zero vectors (n, C)")
    v = v / v.norm(dim=1, keepdim=True)

    def score(code, unit):
        if code.shape[1] != v.shape[1]:
            raise ValueError(f"direction of {v.shape[1]} channels for a code of {code.shape[1]}")
        vv = v.to(code.device, code.dtype)[unit]                      # (N, C)
        if code.dim() == 2:
            return (code * vv).sum(1)
        if position is not None:
            y, x = _position(code, position)
            return (code[:, :, y, x] * vv).sum(1)
        return torch.einsum("nc,nc...->n...", vv, code).flatten(1).mean(1)
    return Objective(score, v.shape[0], [f"direction {i}" for i in range(v.shape[0])])


def caricature_target(codes: torch.Tensor) -> torch.Tensor:
    """IJCV's enhance target ``max(c, 0)/‖max(c, 0)‖²`` of codes ``(n, ...)`` → ``(n, ...)``.
    Raises ``ValueError`` for a code with no positive entry."""
    pos = codes.detach().clamp_min(0)
    norm2 = pos.flatten(1).pow(2).sum(1)
    if (norm2 == 0).any():
        raise ValueError("a caricature needs a code with some positive entries; this layer gives none")
    return pos / norm2.view(-1, *([1] * (codes.dim() - 1)))


def caricature(codes: torch.Tensor, labels: Sequence[str] | None = None) -> Objective:
    """One image's code per unit: ``codes`` ``(n, ...)`` (the layer's codes of the images);
    score ``⟨max(c, 0)/‖max(c, 0)‖², Φ(x)⟩``, 1 at the image itself (IJCV's caricature)."""
    target = caricature_target(torch.as_tensor(codes))
    names = list(labels) if labels is not None else [f"caricature {i}" for i in range(target.shape[0])]

    def score(code, unit):
        t = target.to(code.device, code.dtype)[unit]
        if t.shape != code.shape:
            raise ValueError(f"caricature target of shape {tuple(t.shape[1:])}, code {tuple(code.shape[1:])}")
        return (t * code).flatten(1).sum(1)
    return Objective(score, target.shape[0], names)


# ----------------------------------------------------------------------------------------------
# The energy
# ----------------------------------------------------------------------------------------------

def bounded_range(u: torch.Tensor, sigma: float, mean_pixel: torch.Tensor, bound: float | None = IJCV_BOUND,
                  clip: bool = True) -> torch.Tensor:
    """IJCV's bounded range, differentiable: ``u`` ``(N, C, H, W)`` σ-units → ``(N, C, H, W)``.

    Each pixel's colour deviation ``σ·u_p`` (grey levels) is scaled into the ball of radius
    ``bound`` (IJCV: 160; ``None``: no ball), ``x_p ← x_p·min(1, bound/‖x_p‖)``; then, with
    ``clip``, ``m + σ·u`` is clipped to 0–255 (``mean_pixel`` ``m`` ``(1, C, 1, 1)``). IJCV projects
    after every step; here the projection is part of the forward map, so it works for every
    parameterisation (Fourier and DIP parameters are not pixels). The clip is this library's
    choice (the reference is silent on it): the ball lets a channel reach 128 + 160, which an
    8-bit image cannot hold, and the activations reported must be those of the saved image.
    """
    x = sigma * u
    if bound is not None:
        norm = x.pow(2).sum(1, keepdim=True).clamp_min(1e-24).sqrt()
        x = x * (float(bound) / norm).clamp(max=1.0)
    if clip:
        m = mean_pixel.to(x.dtype)
        x = torch.maximum(torch.minimum(x, 255.0 - m), -m)
    return x / sigma


class MaximisationObjective(nn.Module):
    """``E(u)`` of the module docstring for a batch of N, in :func:`preimage.optim.minimise`'s
    interface (``forward(u, seen)`` → :class:`~preimage.objective.EnergyTerms`).

    Args:
        representation: Φ, ``(N, C, H, W)`` on 0–255 → codes ``(N, ...)`` (frozen).
        objective: the :class:`Objective` (N a multiple of its units).
        image_shape: ``(C, H, W)``.
        scale: ``s``, one value or N positive values (score units).
        lambda_alpha, lambda_tv, alpha, beta: the priors, as in
            :class:`~preimage.objective.InversionObjective`.
        bound, clip: :func:`bounded_range` (``bound=None, clip=False``: unbounded).
        mean_pixel: ``m`` on 0–255 (default the representation's, else 128); ``sigma``: σ (default
            :func:`~preimage.objective.natural_sigma` of ``image_shape``).
    Attributes: ``target`` ``(N,)``, the scales (the name :func:`~preimage.optim.minimise`'s
    checkpoint fingerprint reads).
    """

    def __init__(self, representation: nn.Module, objective: Objective, image_shape: Sequence[int], n: int,
                 scale: float | Sequence[float] | torch.Tensor = 1.0, lambda_alpha=0.0, lambda_tv=0.0,
                 alpha: float = 6.0, beta: float = 2.0, bound: float | None = IJCV_BOUND, clip: bool = True,
                 mean_pixel: float | Sequence[float] | None = None, sigma: float | None = None):
        super().__init__()
        self.representation, self.objective = representation, objective
        for p in representation.parameters():
            p.requires_grad_(False)
        objective.unit_index(int(n))  # n must be whole restarts of the units
        self.image_shape = tuple(int(s) for s in image_shape[-3:])
        self.alpha, self.beta, self.bound, self.clip = float(alpha), float(beta), bound, bool(clip)
        self.sigma = float(sigma) if sigma is not None else natural_sigma(self.image_shape)
        if mean_pixel is None:
            mean_pixel = getattr(representation, "mean_pixel", 128.0)
        mp = torch.as_tensor(mean_pixel, dtype=torch.float32).flatten()
        self.register_buffer("mean_pixel", mp.view(1, -1, 1, 1))
        s = _per_sample(scale, int(n), "scale")
        if (s <= 0).any():
            raise ValueError(f"scale must be positive, got {s.tolist()}")
        self.register_buffer("target", s.float())
        self.register_buffer("lambda_alpha", _per_sample(lambda_alpha, int(n), "lambda_alpha").float())
        self.register_buffer("lambda_tv", _per_sample(lambda_tv, int(n), "lambda_tv").float())

    @property
    def batch_size(self) -> int:
        """N, the number of samples (restarts × units) this energy prices."""
        return self.target.shape[0]

    def bounded(self, u: torch.Tensor) -> torch.Tensor:
        """``u`` ``(N, C, H, W)`` → its :func:`bounded_range` ``(N, C, H, W)`` (σ-units)."""
        return bounded_range(u, self.sigma, self.mean_pixel, self.bound, self.clip)

    def image(self, u: torch.Tensor) -> torch.Tensor:
        """``u`` ``(N, C, H, W)`` → the image Φ sees, ``m + σ·B(u)`` on 0–255, ``(N, C, H, W)``."""
        return self.mean_pixel.to(u.dtype) + self.sigma * self.bounded(u)

    def score(self, u: torch.Tensor) -> torch.Tensor:
        """The objective's raw scores ``(N,)`` (code units) of the image of ``u``."""
        return self.objective(self.representation(self.image(u)))

    def forward(self, u: torch.Tensor, seen: torch.Tensor | None = None) -> EnergyTerms:
        """Per-sample terms of ``u`` ``(N, C, H, W)``; the data term scores ``seen`` (a transformed
        ``u``) when given, the priors always act on ``u``."""
        data = -self.score(u if seen is None else seen) / self.target.to(u.dtype)
        reg_a = self.lambda_alpha.to(u.dtype) * alpha_norm(u, self.alpha)
        reg_v = self.lambda_tv.to(u.dtype) * total_variation(u, self.beta)
        return EnergyTerms(data=data, alpha=reg_a, tv=reg_v)
