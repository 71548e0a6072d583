"""preimage: reconstruct images from their representations.

Mahendran & Vedaldi, "Understanding Deep Image Representations by Inverting Them" (CVPR 2015),
as a batched PyTorch library. A representation is a differentiable ``torch.nn.Module`` mapping an
image batch ``(B, C, H, W)`` on a 0–255 scale to a code; the objective and the optimiser know
nothing else about it (a new representation subclasses :class:`Representation`, which declares
the defaults :func:`invert` reads)::

    import preimage
    rep = preimage.get_representation("hog")
    x0 = preimage.load_image("cat.jpg", mode="grey")[None]    # (1, 1, H, W), 0–255
    result = preimage.invert(rep, x0, restarts=4)
    preimage.save_image(preimage.stretch(result.best()[0, 0]), "cat-from-hog.png")
"""

from .version import __version__  # noqa: E402

from .errors import ImageReadError, InvalidTargetError, PreimageError, UnknownNameError  # noqa: E402
from .io.images import load_image, save_image, stretch  # noqa: E402
from .invert import Inversion, invert, invert_images  # noqa: E402
from .metrics import normalised_errors, pairwise_normaliser, relative_error  # noqa: E402
from .objective import InversionObjective, default_lambdas  # noqa: E402
from .params import get_parameterisation  # noqa: E402
from .representations import Representation, get_representation  # noqa: E402
from .visualize import Visualisation, caricature, visualize  # noqa: E402

__all__ = [
    "PreimageError", "ImageReadError", "InvalidTargetError", "UnknownNameError",
    "load_image", "save_image", "stretch", "Inversion", "invert", "invert_images",
    "normalised_errors", "pairwise_normaliser", "relative_error", "InversionObjective",
    "default_lambdas", "get_representation", "Representation", "get_parameterisation",
    "visualize", "caricature", "Visualisation",
]
