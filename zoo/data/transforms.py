"""Image preprocessing shared by the file-based datasets: RGB, resize shorter side (antialiased bicubic),
center crop, to a float tensor in [-1, 1]."""
from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import v2


def image_transform(resolution: int):
    return v2.Compose([
        v2.PILToTensor(),
        v2.Resize(resolution, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.CenterCrop(resolution),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize([0.5] * 3, [0.5] * 3),
    ])


def load_rgb(path_or_file) -> Image.Image:
    """Open and fully decode an image (so a truncated file fails here, where it can be skipped)."""
    with Image.open(path_or_file) as im:
        im.load()
        return im.convert("RGB")
