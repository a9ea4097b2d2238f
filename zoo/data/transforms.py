"""Image preprocessing: PIL files for the file-based datasets (COCO folders, WebDataset shards), and the one tensor
resize/crop (``resize_center_crop``) used by eval (``eval.eval_set.resize_for_eval``), CLIP
(``zoo.models.clip.scorer.resize_for_clip``) and the upsamplers.

PIL image -> upright (EXIF orientation) -> RGB (transparent pixels composited on white) -> resize the shorter side to ``resolution``
(bicubic, antialiased) -> center crop ``resolution`` -> FloatTensor (3, R, R) in [-1, 1].

Train and eval use the same deterministic center crop: the papers' small-data recipes gain little from random
crops, and a deterministic transform keeps resumed runs and cached features (zoo-tokenize, zoo-embed) exact.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torchvision.transforms import v2


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB copy of ``im``; images with transparency are composited on white (not on black garbage under alpha)."""
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16") or im.mode == "I":
        # 16-bit grayscale (a 16-bit PNG opens as I;16, or I in older Pillow): PIL's convert("RGB") clips each value
        # to 255 instead of scaling, so a mid-grey 16-bit image came out almost all white. Scale 0..65535 to 0..255.
        a = np.asarray(im, dtype=np.float64)
        im = Image.fromarray((np.clip(a, 0, 65535) / 257.0).round().astype(np.uint8))
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
        self.pipeline = v2.Compose(
            [
                v2.PILToTensor(),  # uint8 (3, H, W): resizing uint8 clamps bicubic overshoot to [0, 255]
                v2.Resize(resolution, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
                v2.CenterCrop(resolution),
                v2.ToDtype(torch.float32, scale=True),  # [0, 1]
                v2.Normalize([0.5] * 3, [0.5] * 3),  # [-1, 1]
            ]
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.pipeline(to_rgb(image))

    def __repr__(self) -> str:
        return f"ImageTransform(resolution={self.resolution}, train={self.train})"


def image_transform(resolution: int, train: bool = False) -> ImageTransform:
    """The transform for ``resolution``; ``train`` is accepted for symmetry but the crop is the same (see above)."""
    return ImageTransform(resolution, train)


def load_rgb(path_or_file) -> Image.Image:
    """Open and fully decode an image, so that a truncated or corrupt file fails here, where it can be skipped.

    The EXIF orientation is applied (a phone's portrait photo is stored landscape with an orientation tag: every
    viewer shows it upright, so its caption describes it upright); a damaged EXIF block leaves the pixels as stored
    rather than losing a decodable image."""
    with Image.open(path_or_file) as im:
        im.load()
        try:
            upright = ImageOps.exif_transpose(im)
        except Exception:  # unreadable EXIF: the image itself decoded fine
            upright = im
        return to_rgb(upright)


def resize_center_crop(
    x: torch.Tensor,
    size: int,
    resize_mode: str = "shortest",
    interpolation: str = "bicubic",
    fill: float = 0.0,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> torch.Tensor:
    """A batch of images (N, C, H, W) -> (N, C, size, size), antialiased like PIL's resize (clean-fid's point:
    downsampling must low-pass first); the input itself when it already has that size.

    ``shortest``: short side to ``size`` (torchvision's ``Resize(int)``: long side floored), then centre crop
    (torchvision's ``CenterCrop``) -- ``ImageTransform``'s geometry on tensors; ``longest``: long side to ``size``,
    then pad with ``fill``; ``squash``: both sides to ``size``. ``interpolation``: ``bicubic`` or ``bilinear``.
    Bicubic overshoot is clamped to ``value_range``."""
    size = int(size)
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    if interpolation not in ("bicubic", "bilinear"):  # 'nearest' was taken as bicubic without a word
        raise ValueError(f"interpolation must be bicubic or bilinear, got {interpolation!r}")
    mode = interpolation
    if resize_mode == "squash":
        new = (size, size)
    elif resize_mode == "shortest":
        new = (size, max(size, int(size * w / h))) if h <= w else (max(size, int(size * h / w)), size)
    elif resize_mode == "longest":
        scale = size / max(h, w)
        new = (max(1, round(h * scale)), max(1, round(w * scale)))
    else:
        raise ValueError(f"resize_mode must be shortest, longest or squash, got {resize_mode!r}")
    x = F.interpolate(
        x if x.is_floating_point() else x.float(), size=new, mode=mode, antialias=True, align_corners=False
    ).clamp(*value_range)
    nh, nw = x.shape[-2:]
    if resize_mode == "shortest" and (nh, nw) != (size, size):
        top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
        x = x[..., top : top + size, left : left + size]
    elif resize_mode == "longest" and (nh, nw) != (size, size):
        pt, pl = (size - nh) // 2, (size - nw) // 2
        x = F.pad(x, (pl, size - nw - pl, pt, size - nh - pt), value=fill)
    return x
