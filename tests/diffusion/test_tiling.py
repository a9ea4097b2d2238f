"""zoo.diffusion.tiling: window placement, and windowed evaluation equal to the whole-image call for networks whose
output at a pixel depends only on that pixel (so any difference would be the windowing's arithmetic)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zoo.diffusion.tiling import tiled_call, window_starts


def test_window_starts_cover_the_image_aligned_to_the_scale():
    assert window_starts(128, 32, 8, 4) == [0, 24, 48, 72, 96]  # stride 24, the last flush with the end
    assert window_starts(128, 32, 0, 4) == [0, 32, 64, 96]
    assert window_starts(100, 32, 8, 4) == [0, 24, 48, 68]  # the last start moved back to 100 - 32
    assert window_starts(32, 32, 8, 4) == [0] and window_starts(16, 32, 8, 4) == [0]
    assert window_starts(128, 32, 6, 4) == [0, 24, 48, 72, 96]  # stride 26 rounded down to a multiple of 4
    for size, tile, overlap, align in ((128, 32, 32, 4), (128, 32, -1, 4), (128, 30, 8, 4), (128, 4, 2, 4)):
        with pytest.raises(ValueError):
            window_starts(size, tile, overlap, align)


def _pointwise(x, t, cond):
    """A per-pixel 'network' that uses x_t, the timestep and the nearest-upsampled low-res conditioning."""
    up = F.interpolate(cond, scale_factor=4, mode="nearest")
    return torch.cat([2.0 * x + up + t.view(-1, 1, 1, 1), x * up], dim=1)


def test_windowed_equals_whole_for_a_pointwise_network():
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(3, 3, 64, 48, generator=g), torch.randn(3, 3, 16, 12, generator=g)
    t = torch.tensor([5, 50, 500])
    whole = _pointwise(x, t, cond)
    calls = []

    def fn(a, b, c):
        calls.append(tuple(a.shape))
        return _pointwise(a, b, c)

    tiled = tiled_call(fn, x, t, cond, tile=16, overlap=8, scale=4)
    assert tiled.shape == (3, 6, 64, 48)
    torch.testing.assert_close(tiled, whole)
    assert calls == [(3 * 7 * 5, 3, 16, 16)]  # 7 x 5 windows of the 3 images, one batched call
    assert tiled_call(_pointwise, x, t, cond, tile=64, overlap=8, scale=4).equal(whole)  # one window: the plain call


def test_windows_see_only_their_region():
    """A network that returns each window's own mean: inside windows that do not overlap, the output is that
    region's mean (the windows are cut where they should be)."""
    x = torch.arange(16.0).repeat(16, 1).view(1, 1, 16, 16)  # column index
    out = tiled_call(lambda a, t, c: a.mean((2, 3), keepdim=True).expand_as(a), x, torch.zeros(1), None, 8, 0)
    assert out[0, 0, 0, 0].item() == pytest.approx(3.5) and out[0, 0, 0, 15].item() == pytest.approx(11.5)
