"""HOGgle: the paired-dictionary HOG inversion baseline (Vondrick et al., ICCV 2013), as compared
with in the paper's Table 1 (66.2 ± 13.7 % error, 2–3 s per image).

* **Training** (:mod:`.pairs`, :mod:`.training`): grey training images (BT.601 luma, 0–255) are
  described by the paper's HOG (:class:`preimage.representations.hog.HOG`, UoCTTI, cell 8, the 27
  channels 18 directed + 9 undirected). A training pair is a window of 5×5 HOG cells (675 numbers,
  layout ``(27, 5, 5)``) and the 56×56 grey patch covering the 7×7 cells around it
  (:mod:`.geometry`). Each half is centred and L2-normalised, the halves are concatenated
  (675 + 3136 = 3811 numbers), and one joint dictionary is learned by online dictionary learning
  with non-negative codes (λ = ``alpha``).
* **Codes** (:mod:`.lasso`): a batched ADMM positive lasso, or scikit-learn's ``sparse_encode``.
* **Inversion** (:mod:`.inversion`): every 5×5 window of the zero-padded HOG map is coded against
  the HOG half of the atoms; the grey half gives a patch per window, blended by a Gaussian-weighted
  average and min–max stretched to [0, 255].
* **The dictionary** (:mod:`.dictionary`): safetensors or ``.npz`` files, never unpickled; the
  default one (:mod:`.default`) is trained on the shared training images the first time it is
  needed (announced on stderr, with progress bars; ≈ 1 minute on two cores) and cached under a name
  that carries the stamp of its whole recipe (:mod:`.recipe`: settings, images, HOG, training
  code); a file of another recipe is never reused.
* **Table 1** (:mod:`.evaluation`): target and reconstruction codes of a set of images.

Differences from ihog: ihog uses DPM's 32-channel HOG (27 + 4 texture + a zero truncation
channel), SPAMS (exact LARS codes, ≈ 10⁶ windows of PASCAL images) and divides the accumulated
patches by the overlap *count*; here the HOG is the paper's 27 channels, the dictionary is learned
on 25 600 windows (25 mini-batches of 1024, drawn from a pool of 2·10⁵) of the project's 200
ImageNet training images, and the accumulation is a Gaussian-weighted average. Longer training
did not lower the error: on 30 held-out training images (dictionaries trained on the other 170),
400 batches (the former default, ≈ 6 minutes) gave 67.1 %, 50 batches 66.9 %, 25 batches 66.3 %
(paper's convention, paired difference −0.8 ± 0.5 points).

Speed: by default the work runs on one torch thread (:func:`._threads.torch_threads`): on the
shared two-core machine, two threads were slower whenever other processes were busy.
"""

from ._threads import DEFAULT_THREADS, torch_threads
from .default import (CACHE_ENV, DICTIONARY_ENV, default_dictionary_path, default_recipe, load_or_train_default,
                      train_command)
from .dictionary import DEFAULT_ALPHA, HoggleDictionary
from .evaluation import HoggleCodes, evaluate_hoggle, hoggle_codes
from .geometry import CELL_SIZE, GREY_DIM, HOG_CHANNELS, HOG_DIM, HOG_WINDOW, PATCH_SIZE, compute_hog
from .inversion import DEFAULT_PAD, SIGMA, assemble_patches, gaussian_window, hoggle_invert_image, invert_hoggle
from .lasso import lasso_setup, positive_codes, positive_lasso
from .pairs import extract_pairs, valid_window_range
from .recipe import DEFAULT_N_ATOMS, TRAINING_VERSION, Recipe
from .training import train_hoggle

__all__ = ["HoggleDictionary", "train_hoggle", "invert_hoggle", "hoggle_invert_image", "hoggle_codes",
           "HoggleCodes", "evaluate_hoggle", "train_command", "default_dictionary_path", "load_or_train_default",
           "Recipe", "default_recipe", "TRAINING_VERSION",
           "extract_pairs", "valid_window_range", "compute_hog", "gaussian_window", "assemble_patches",
           "positive_lasso", "positive_codes", "lasso_setup", "torch_threads",
           "CELL_SIZE", "HOG_CHANNELS", "HOG_WINDOW", "PATCH_SIZE", "HOG_DIM", "GREY_DIM", "SIGMA", "DEFAULT_PAD",
           "DEFAULT_ALPHA", "DEFAULT_N_ATOMS", "DEFAULT_THREADS", "CACHE_ENV", "DICTIONARY_ENV"]
