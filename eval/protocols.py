"""The old import path of the evaluation protocols, split by job (configs written before the split still work):

- ``zoo.pipelines.base``: the ``Generator`` / ``CandidateGenerator`` interfaces and ``as_candidate_generator``
- ``eval.eval_set``: ``EvalSet``, ``ImageBank``, ``ImageFiles``, ``load_image``, ``resize_for_eval``
- ``eval.generators``: ``FolderGenerator``, ``RealBlurredGenerator``, ``save_folder``, ``generate_images``
- ``eval.shapes_protocol``: ``ShapesProtocol``; ``eval.coco_protocol``: ``CocoProtocol``
"""

from eval.coco_protocol import CocoProtocol
from eval.eval_set import EvalSet, ImageBank, ImageFiles, load_image, resize_for_eval
from eval.generators import (
    FolderGenerator,
    RealBlurredGenerator,
    generate_images,
    save_folder,
)
from eval.shapes_protocol import ShapesProtocol
from zoo.pipelines.base import (
    CandidateGenerator,
    Generator,
    RepeatedCandidates,
    as_candidate_generator,
    check_generated,
)

__all__ = [
    "CandidateGenerator",
    "CocoProtocol",
    "EvalSet",
    "FolderGenerator",
    "Generator",
    "ImageBank",
    "ImageFiles",
    "RealBlurredGenerator",
    "RepeatedCandidates",
    "ShapesProtocol",
    "as_candidate_generator",
    "check_generated",
    "generate_images",
    "load_image",
    "resize_for_eval",
    "save_folder",
]
