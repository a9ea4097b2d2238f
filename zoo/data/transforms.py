"""Image preprocessing shared by the file-based datasets (COCO folders, WebDataset shards).

PIL image -> RGB (transparent pixels composited on white) -> resize the shorter side to ``resolution``
(bicubic, antialiased) -> center crop ``resolution`` -> FloatTensor (3, R, R) in [-1, 1].

Train and eval use the same deterministic center crop: the papers' small-data recipes gain little from random
crops, and a deterministic transform keeps resumed runs and cached features (zoo-tokenize, zoo-embed) exact.
"""
from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import v2


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB copy of ``im``; images with transparency are composited on white (not on black garbage under alpha)."""
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


class ImageTransform:
    """Picklable callable (DataLoader workers pickle the dataset): PIL image -> FloatTensor (3, R, R) in [-1, 1]."""

    def __init__(self, resolution: int, train: bool = False):
        resolution = int(resolution)
        if resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {resolution}")
        self.resolution, self.train = resolution, bool(train)
        self.pipeline = v2.Compose([
            v2.PILToTensor(),  # uint8 (3, H, W): resizing uint8 clamps bicubic overshoot to [0, 255]
            v2.Resize(resolution, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(resolution),
            v2.ToDtype(torch.float32, scale=True),  # [0, 1]
            v2.Normalize([0.5] * 3, [0.5] * 3),  # [-1, 1]
        ])

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.pipeline(to_rgb(image))

    def __repr__(self) -> str:
        return f"ImageTransform(resolution={self.resolution}, train={self.train})"


def image_transform(resolution: int, train: bool = False) -> ImageTransform:
    """The transform for ``resolution``; ``train`` is accepted for symmetry but the crop is the same (see above)."""
    return ImageTransform(resolution, train)


def load_rgb(path_or_file) -> Image.Image:
    """Open and fully decode an image, so that a truncated or corrupt file fails here, where it can be skipped."""
    with Image.open(path_or_file) as im:
        im.load()
        return to_rgb(im)
