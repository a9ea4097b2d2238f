"""zoo.data.degradations (Gaussian blur): radius = Gaussian standard deviation (Pillow's GaussianBlur reading), kernel 2*ceil(3r)+1, r=0 identity.

The "FD rises with blur radius" check needs the Inception fixture and lives in tests/eval/test_metrics.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from eval.ablations import DALLE_BLUR_RADII
from zoo.data.degradations import GaussianBlur, blur_kernel_size, gaussian_blur


def _smooth_images(n=2, size=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 12, 12, generator=g)
    return torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False) * 2 - 1


def test_kernel_size_rule():
    assert [blur_kernel_size(r) for r in DALLE_BLUR_RADII] == [1, 7, 13, 25, 49]
    assert blur_kernel_size(0.5) == 5
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            blur_kernel_size(bad)


def test_radius_zero_is_identity():
    x = _smooth_images()
    assert gaussian_blur(x, 0) is x
    assert GaussianBlur(0)(x) is x


def test_radius_is_standard_deviation_of_an_impulse_response():
    for r in (1, 2, 4):
        x = torch.full((1, 3, 65, 65), -1.0)
        x[..., 32, 32] = 1.0
        y = gaussian_blur(x, r)[0, 0] + 1  # response to an impulse of height 2 (background -1 -> 0)
        w = y.sum(0)  # marginal along columns
        pos = torch.arange(65, dtype=torch.float64) - 32
        var = float((w.double() * pos**2).sum() / w.double().sum())
        # the kernel is truncated at 3 sigma, which removes ~3% of the variance
        assert var == pytest.approx(r**2, rel=0.05), (r, var)


def test_matches_pillow_gaussian_blur_radius():
    """Pillow's ImageFilter.GaussianBlur(radius) (radius = std): ours with sigma=r agrees away from the borders
    (Pillow approximates the Gaussian with box filters and extends edges), and sigma=r/2 or 2r clearly do not."""
    from PIL import Image, ImageFilter

    x = _smooth_images(n=1)
    u8 = ((x[0] + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    xq = torch.from_numpy(u8).permute(2, 0, 1)[None].float() / 127.5 - 1
    for r in (1, 2, 4):
        pil = np.asarray(Image.fromarray(u8).filter(ImageFilter.GaussianBlur(r))).astype(np.float32)
        m = 3 * r + 2
        err = {}
        for s in (r / 2, r, 2 * r):
            ours = ((gaussian_blur(xq, s) + 1) * 127.5)[0].permute(1, 2, 0).numpy()
            err[s] = float(np.abs(ours - pil)[m:-m, m:-m].mean())
        assert err[r] < 1.5, err  # < 1.5 grey levels of 255 on average
        assert err[r] * 2.5 < min(err[r / 2], err[2 * r]), err


def test_shapes_range_and_batching():
    x = _smooth_images(n=3, size=64)
    y = gaussian_blur(x, 2)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= -1 and y.max() <= 1
    assert y.std() < x.std()  # smoother
    torch.testing.assert_close(gaussian_blur(x[1], 2), y[1])  # (3, H, W) works and batching changes nothing
    assert "sigma=radius" in repr(GaussianBlur(2))


def test_radius_too_large_for_image_is_a_clear_error():
    with pytest.raises(ValueError, match="too large"):
        gaussian_blur(torch.zeros(1, 3, 16, 16), 8)  # kernel 49, half-width 24 >= 16
    with pytest.raises(ValueError):
        gaussian_blur(torch.zeros(1, 3, 16, 16, dtype=torch.uint8), 1)
