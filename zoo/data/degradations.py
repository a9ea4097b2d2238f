"""Image degradations: Gaussian blur of radius r -- the DALL·E figure 9(a) ablation (``eval.ablations`` blurs real
images and samples, then FID/IS) and the corruption of unCLIP's 64 -> 256 upsampler. (BSR degradation for the
256 -> 1024 upsampler goes here too.)

Definition of the radius: r is the *standard deviation* of the Gaussian in pixels, as in Pillow's
``ImageFilter.GaussianBlur(radius)`` (whose ``radius`` is the standard deviation) -- the reading of the DALL·E /
DM-GAN figure (radii 0, 1, 2, 4, 8). It is applied at the images' own resolution (DALL·E: 256x256), before the
metric's resize to 299; to blur images of another resolution "as much" relative to the frame, scale r by res/256.

Implementation: ``torchvision.transforms.functional.gaussian_blur`` with ``sigma = r`` and an odd kernel of size
``2 * ceil(3 r) + 1`` (it covers +-3 standard deviations, >99.7% of the mass; Pillow's box-filter approximation
is of the same Gaussian). torchvision pads with edge *reflection*, Pillow extends the edge pixels: they differ
only within ~3r pixels of the border. ``r = 0`` is the identity (the same tensor is returned).
"""
from __future__ import annotations

import math

import torch
from torchvision.transforms.functional import gaussian_blur as _tv_gaussian_blur


def blur_kernel_size(radius: float) -> int:
    """Odd kernel size ``2 * ceil(3 r) + 1`` used for standard deviation ``r`` (r = 0 -> 1, i.e. no blur)."""
    if radius < 0 or not math.isfinite(radius):
        raise ValueError(f"blur radius must be a finite number >= 0, got {radius}")
    return 2 * math.ceil(3 * radius) + 1


def gaussian_blur(images: torch.Tensor, radius: float) -> torch.Tensor:
    """Blur images (N, 3, H, W) or (3, H, W) in [-1, 1] with a Gaussian of standard deviation ``radius`` pixels."""
    k = blur_kernel_size(radius)
    if radius == 0:
        return images
    if not torch.is_tensor(images) or images.dim() not in (3, 4) or not images.is_floating_point():
        raise ValueError("gaussian_blur expects a float tensor (N, C, H, W) or (C, H, W) in [-1, 1]")
    h, w = images.shape[-2:]
    if k // 2 >= min(h, w):
        # torchvision's reflect padding needs the half-width below the image side.
        raise ValueError(
            f"blur radius {radius} needs a {k}x{k} kernel, too large for {h}x{w} images "
            f"(the half-width {k // 2} must be < {min(h, w)}; use a smaller radius or larger images)"
        )
    out = _tv_gaussian_blur(images, kernel_size=[k, k], sigma=[float(radius), float(radius)])
    return out.clamp_(-1.0, 1.0)  # a normalised kernel keeps values in range; clamp only float round-off


class GaussianBlur:
    """Callable ``images -> gaussian_blur(images, radius)`` (picklable; usable as ``extract(..., transform=)``)."""

    def __init__(self, radius: float):
        blur_kernel_size(radius)  # validate
        self.radius = float(radius)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(images, self.radius)

    def __repr__(self) -> str:
        return f"GaussianBlur(radius={self.radius:g}, kernel={blur_kernel_size(self.radius)}, sigma=radius)"


__all__ = ["GaussianBlur", "blur_kernel_size", "gaussian_blur"]
