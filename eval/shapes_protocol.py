"""The zero-shot protocol on the built-in shapes world (``protocol=shapes``): captions, real scenes and the
ground-truth attributes the shapes judge checks."""

from __future__ import annotations

from typing import Optional

import torch

from eval.eval_set import EvalSet, ImageBank, resize_for_eval
from zoo.errors import ConfigError


class ShapesProtocol:
    """The zero-shot protocol on the built-in shapes world: ``n`` scenes of ``split`` (a pure function of ``seed``),
    their ``caption_style`` captions, the rendered scenes as real images, the scene attributes as ground truth.

    ``resolution`` is the world's rendering size (the models' size, 32 px by default) and also the evaluation size
    unless ``eval_resolution`` is given (then generated and real images are both resized to it)."""

    def __init__(
        self,
        n: int = 1000,
        split: str = "val",
        resolution: int = 32,
        seed: int = 0,
        caption_style: str = "descriptive",
        min_objects: int = 1,
        max_objects: int = 3,
        eval_resolution: Optional[int] = None,
        object_order: str = "raster",
    ):
        if int(n) < 2:
            raise ConfigError(f"protocol.n must be >= 2 (statistics need two samples), got {n}")
        from zoo.data.shapes import check_object_order, check_resolution

        # checked here, before the generator is built, and named as zoo-eval's option (the world's own check, at
        # load, would say data.resolution)
        resolution = check_resolution(resolution, "protocol.resolution")
        self.n, self.split, self.resolution, self.seed = int(n), split, int(resolution), int(seed)
        self.caption_style, self.min_objects, self.max_objects = caption_style, int(min_objects), int(max_objects)
        self.eval_resolution = int(eval_resolution) if eval_resolution else self.resolution
        self.object_order = check_object_order(object_order, "protocol.object_order")

    def load(self, progress: bool = False) -> EvalSet:
        from zoo.data.shapes import WORLD_VERSION, ShapesDataset
        from zoo.progress import track

        ds = ShapesDataset(
            self.split,
            size=self.n,
            resolution=self.resolution,
            seed=self.seed,
            caption_style=self.caption_style,
            min_objects=self.min_objects,
            max_objects=self.max_objects,
            object_order=self.object_order,
        )
        bank = ImageBank()
        captions, attributes, chunk = [], [], []
        for i in track(range(self.n), desc="render shapes (real)", disable=not progress, leave=False):
            s = ds[i]
            captions.append(s["caption"])
            attributes.append(s["attributes"])
            chunk.append(s["image"])
            if len(chunk) == 256 or i == self.n - 1:
                bank.add(resize_for_eval(torch.stack(chunk), self.eval_resolution))
                chunk = []
        protocol = (
            f"shapes-v{WORLD_VERSION};seed={self.seed};style={self.caption_style};"
            f"objects={self.min_objects}-{self.max_objects};render={self.resolution}"
            + (f";order={self.object_order}" if self.object_order != "raster" else "")  # raster keys as before
        )
        return EvalSet(
            "shapes",
            self.split,
            captions,
            bank,
            self.eval_resolution,
            attributes,
            protocol,
            info={"generation_resolution": self.resolution, "caption_style": self.caption_style, "seed": self.seed},
        )
