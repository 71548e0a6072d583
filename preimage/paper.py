"""Every number of the paper and of the authors' code, in one place (``shared/paper/NUMBERS.md``).

Mahendran & Vedaldi, "Understanding Deep Image Representations by Inverting Them" (CVPR 2015):
its tables, regularisation weights, the depth rule that picks λ_V per layer, σ, and the authors'
optimisation schedules. The method (:mod:`preimage.objective`, :mod:`preimage.optim`), the
representations and the experiments read these values from here and nowhere else.
"""

from __future__ import annotations

import math

# ----------------------------------------------------------------------------------------------
# Objective
# ----------------------------------------------------------------------------------------------

#: σ of the authors' code: norm of a mean-subtracted 227×227×3 natural image.
SIGMA_REFERENCE = 27098.12
#: The reference image size (pixels × channels) σ and the paper's λ values refer to.
REFERENCE_SHAPE = (3, 227, 227)
REFERENCE_NUMEL = REFERENCE_SHAPE[0] * REFERENCE_SHAPE[1] * REFERENCE_SHAPE[2]
#: RMS grey level per pixel implied by :data:`SIGMA_REFERENCE` (≈ 68.9).
SIGMA_PER_PIXEL = SIGMA_REFERENCE / math.sqrt(REFERENCE_NUMEL)
#: Exponents of the α-norm and TV priors.
ALPHA = 6.0
BETA = 2.0
#: The paper's fixed λ_α (Table 1, Table 3).
LAMBDA_ALPHA = 2.16e8
#: The paper's three TV weights λ₁, λ₂, λ₃ (β = 2); Table 1 uses λ₂ = 5.
LAMBDAS_TV = (0.5, 5.0, 50.0)
#: λ_V of Table 1 (and of any representation without a depth).
LAMBDA_TV = LAMBDAS_TV[1]
#: Dynamic range B and gradient fraction a of the paper's λ heuristics.
HEURISTIC_B = 128.0
HEURISTIC_A = 0.01

# ----------------------------------------------------------------------------------------------
# Optimiser (the authors' code)
# ----------------------------------------------------------------------------------------------

#: Momentum of the paper's gradient descent.
MOMENTUM = 0.9
#: Stages (iterations, learning-rate multiplier) of the authors' shallow schedule: 800 iterations.
SHALLOW_SCHEDULE = ((200, 1.0), (200, 0.1), (200, 0.01), (200, 0.001))
#: Stages of the authors' CNN schedule: 400 iterations.
CNN_SCHEDULE = ((100, 1.0), (200, 0.1), (100, 0.01))
SCHEDULES = {"shallow": SHALLOW_SCHEDULE, "cnn": CNN_SCHEDULE}

# ----------------------------------------------------------------------------------------------
# Visualisation (IJCV 2016, "Visualizing deep convolutional neural networks using natural
# pre-images", and its code core/get_defaults.m)
# ----------------------------------------------------------------------------------------------

#: The bound ``B = 2σ = 160`` grey levels on each pixel's colour norm (activation maximisation,
#: caricatures).
IJCV_BOUND = 160.0
#: Iterations of the maximisation and of "enhance" (caricatures): one stage.
IJCV_ITERATIONS = 300

# ----------------------------------------------------------------------------------------------
# The depth rule: λ_V by a layer's relative depth (Table 3's bold choices)
# ----------------------------------------------------------------------------------------------

#: CNN-A has 20 layers; layers 1–6 use λ₁, 7–12 λ₂, 13–20 λ₃.
CNNA_DEPTH = 20
DEPTH_CUTS = (6, 12)


def lambda_tv_for_depth(relative_depth: float) -> float:
    """The paper's λ_V for a layer at ``relative_depth`` ∈ [0, 1] (layer index / layer count).

    CNN-A layers 1–6 of 20 (depth ≤ 0.3) get λ₁ = 0.5, layers 7–12 (≤ 0.6) λ₂ = 5, the rest
    λ₃ = 50. Raises ``ValueError`` outside [0, 1].
    """
    d = float(relative_depth)
    if not 0.0 <= d <= 1.0:
        raise ValueError(f"relative depth must be in [0, 1], got {d}")
    if d <= DEPTH_CUTS[0] / CNNA_DEPTH + 1e-9:
        return LAMBDAS_TV[0]
    if d <= DEPTH_CUTS[1] / CNNA_DEPTH + 1e-9:
        return LAMBDAS_TV[1]
    return LAMBDAS_TV[2]


def analogue(names, paper_index: int, of: int = CNNA_DEPTH) -> str:
    """The layer of ``names`` at the relative depth of CNN-A's layer ``paper_index`` (1-based)
    of ``of``: ``names[round(k / of · len) − 1]``, clipped."""
    names = list(names)
    i = max(1, min(len(names), round(paper_index / of * len(names))))
    return names[i - 1]


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------

#: Table 1, mean ± std of the error in percent (the paper's convention).
TABLE1 = {"hoggle": (66.20, 13.7), "hog": (28.10, 7.9), "hogb": (10.67, 5.2), "dsift": (10.89, 7.5)}
#: Table 1 runtimes as the paper states them (seconds per image).
TABLE1_SECONDS = {"hoggle": "2–3", "hog": "≈60", "hogb": "≈60", "dsift": "≈60"}

_CNNA_NAMES = ("conv1 relu1 mpool1 norm1 conv2 relu2 mpool2 norm2 conv3 relu3 conv4 relu4 conv5 relu5 "
               "mpool5 fc6 relu6 fc7 relu7 fc8").split()
_CNNA_CHANNELS = (96, 96, 96, 96, 256, 256, 256, 256, 384, 384, 384, 384, 256, 256, 256, 4096, 4096, 4096,
                  4096, 1000)
_CNNA_RF = (11, 11, 19, 19, 51, 51, 67, 67, 99, 99, 131, 131, 163, 163, 195, 355, 355, 355, 355, 355)
#: Table 2: (name, channels, receptive field) of the 20 CNN-A layers.
TABLE2 = tuple(zip(_CNNA_NAMES, _CNNA_CHANNELS, _CNNA_RF))

_T3_MEAN = (
    (10.0, 11.3, 21.9, 20.3, 12.4, 12.9, 15.5, 15.9, 14.5, 16.5, 14.9, 13.8, 12.6, 15.6, 16.6, 12.4, 15.8, 12.8,
     10.5, 5.3),
    (20.2, 22.4, 30.3, 28.2, 20.0, 17.4, 18.2, 18.4, 14.4, 15.1, 13.3, 14.0, 15.4, 13.9, 15.5, 14.2, 13.7, 15.4,
     10.8, 5.9),
    (40.8, 45.2, 54.1, 48.1, 39.7, 32.8, 32.7, 32.4, 25.6, 26.9, 23.3, 23.9, 25.7, 20.1, 19.0, 18.6, 18.7, 17.1,
     15.5, 8.5),
)
_T3_STD = (
    (5.0, 5.5, 9.2, 5.0, 3.1, 5.3, 4.7, 4.6, 4.7, 5.3, 3.8, 3.8, 2.8, 5.1, 4.6, 3.5, 4.5, 6.4, 1.9, 1.1),
    (9.3, 10.3, 13.6, 7.6, 4.9, 5.0, 5.5, 5.0, 3.6, 3.3, 2.6, 2.8, 2.7, 3.2, 3.5, 3.7, 3.1, 10.3, 1.6, 0.9),
    (17.0, 18.7, 22.7, 11.8, 9.1, 7.7, 8.0, 7.0, 5.6, 5.2, 4.1, 4.6, 4.3, 4.3, 4.3, 4.9, 3.8, 3.4, 2.1, 1.3),
)
_T3_NAMES = ("conv1 relu1 pool1 norm1 conv2 relu2 pool2 norm2 conv3 relu3 conv4 relu4 conv5 relu5 pool5 fc6 "
             "relu6 fc7 relu7 fc8").split()
#: Table 3: layer → [(mean, std) for λ₁, λ₂, λ₃], percent.
TABLE3 = {name: [(_T3_MEAN[k][i], _T3_STD[k][i]) for k in range(3)] for i, name in enumerate(_T3_NAMES)}
#: Table 3's bold (chosen) λ index per layer: the depth rule.
TABLE3_CHOICE = {name: LAMBDAS_TV.index(lambda_tv_for_depth((i + 1) / CNNA_DEPTH))
                 for i, name in enumerate(_T3_NAMES)}
