"""The lucent algorithm, re-expressed as :func:`preimage.invert.invert` settings (a baseline).

lucent (torch-lucent 0.1.8; Olah et al., Distill 2017) renders an image as a Fourier-parameterised,
colour-decorrelated image through a sigmoid, optimised by Adam at 5e-2 for 512 steps at a constant
rate, with no image prior. Given preimage's normalised L2 loss to a target code as its objective,
that is :data:`LUCENT` below; :data:`LUCENT_TRANSFORMS` are its standard transforms (pad 12,
jitter 8, random scale, random rotation, jitter 4), which a caller applies through
:func:`preimage.optim.minimise`'s ``transform``.
"""

from __future__ import annotations

#: invert() keyword arguments of the lucent configuration (iterations: give the budget's).
LUCENT = {
    "param": "fourier",
    "param_options": {"bounded": True, "margin": 0.0},
    "method": "adam",
    "lr": 5e-2,
    "lambda_tv": 0.0,
    "lambda_alpha": 0.0,
    "schedule": [[512, 1.0]],
    "grad_leak": 0.0,  # lucent differentiates the network exactly
}

#: lucent's ``transform.standard_transforms``: (kind, argument) in the order applied.
LUCENT_TRANSFORMS = (
    ("pad", 12),
    ("jitter", 8),
    ("scale", (1.0, 0.975, 1.025, 0.95, 1.05)),
    ("rotate", tuple(range(-5, 6))),
    ("jitter", 4),
)
