"""Helpers shared by the tests (``from helpers import ...``; conftest.py puts tests/ on the path):

* :mod:`.images`: synthetic image builders and the evaluation images (or a skip);
* :mod:`.vlfeat`: VLFeat references through cyvlfeat (or a skip);
* :mod:`.fx`: values inside fx-traced networks.
"""

from .fx import node_value
from .images import blurred_noise, eval_image_paths, noisy_ramp, seeded_noise, step_edge, textured, waves
from .vlfeat import cyvlfeat, vlfeat_dsift, vlfeat_hog

__all__ = ["node_value", "blurred_noise", "eval_image_paths", "noisy_ramp", "seeded_noise", "step_edge",
           "textured", "waves", "cyvlfeat", "vlfeat_dsift", "vlfeat_hog"]
