"""Input and output: images (:mod:`.images`), pictures (:mod:`.draw`), an inversion's files
(:mod:`.artefacts`) and content-keyed, atomically written files (:mod:`.cache`)."""

from .images import (array_to_tensor, centre_crop, default_image, group_by_shape, limit_side, load_image,
                     resize, resize_and_crop, save_image, stretch, to_grey, to_uint8)

__all__ = ["array_to_tensor", "centre_crop", "default_image", "group_by_shape", "limit_side", "load_image",
           "resize", "resize_and_crop", "save_image", "stretch", "to_grey", "to_uint8"]
