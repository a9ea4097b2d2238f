"""Windowed evaluation of a fully convolutional denoiser: the network sees overlapping tiles of x_t (and of its
low-resolution conditioning), and the outputs are averaged where tiles overlap, at every sampling step.

Why: unCLIP's upsamplers train on random crops a quarter of the target size and are applied "fully
convolutionally" at the full size. Their U-Net's GroupNorm layers normalise over the whole spatial extent, so at the
full size every layer sees statistics of a field 16x larger (4x per side) than in training. On the shapes world, where a crop is
mostly flat background, that shift tints whole backgrounds (experiments/unclip/README.md, section 4). Feeding the
network windows of its training size removes the shift while the sampler still draws ONE image: the denoising step
runs on the whole x_t with the averaged prediction, so neighbouring tiles agree (MultiDiffusion's averaging, Bar-Tal
et al. 2023, applied to the model output of each step). torch only.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch


def window_starts(size: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of windows of side ``tile`` covering [0, size) with at least ``overlap`` shared pixels between
    neighbours, the last window flush with the end. Every start is a multiple of ``align`` (the upsampling factor,
    so a window maps onto whole low-resolution pixels)."""
    if tile <= 0 or overlap < 0 or overlap >= tile:
        raise ValueError(f"tile {tile} and overlap {overlap}: need tile > 0 and 0 <= overlap < tile")
    if tile % align or size % align:
        raise ValueError(f"tile {tile} and size {size} must be multiples of {align} (the upsampling factor)")
    if tile >= size:
        return [0]
    stride = (tile - overlap) // align * align  # rounded down: the overlap only grows
    if stride <= 0:
        raise ValueError(f"tile {tile} - overlap {overlap} leaves no stride that is a multiple of {align}")
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


def tiled_call(
    fn: Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor],
    x: torch.Tensor,
    t: torch.Tensor,
    cond: Optional[torch.Tensor],
    tile: int,
    overlap: int,
    scale: int = 1,
) -> torch.Tensor:
    """``fn(x, t, cond)`` evaluated on overlapping ``tile`` x ``tile`` windows of x (B, C, H, W) and averaged where
    they overlap -> (B, C_out, H, W). ``cond`` (B, C', H / scale, W / scale) or None is windowed alongside (its
    windows are the same regions at 1 / scale). All windows of the batch go through ``fn`` as one batch. With
    ``tile`` >= H and W this is exactly ``fn(x, t, cond)``."""
    b, _, h, w = x.shape
    ys, xs = window_starts(h, tile, overlap, scale), window_starts(w, tile, overlap, scale)
    if tile >= h and tile >= w:
        return fn(x, t, cond)
    th, tw = min(tile, h), min(tile, w)
    windows = [(y, x0) for y in ys for x0 in xs]
    xw = torch.cat([x[..., y : y + th, x0 : x0 + tw] for y, x0 in windows])
    cw = None
    if cond is not None:
        s = scale
        cw = torch.cat([cond[..., y // s : (y + th) // s, x0 // s : (x0 + tw) // s] for y, x0 in windows])
    out = fn(xw, t.repeat(len(windows)), cw)
    acc = out.new_zeros((b, out.shape[1], h, w))
    count = out.new_zeros((1, 1, h, w))
    for k, (y, x0) in enumerate(windows):
        acc[..., y : y + th, x0 : x0 + tw] += out[k * b : (k + 1) * b]
        count[..., y : y + th, x0 : x0 + tw] += 1
    return acc / count
