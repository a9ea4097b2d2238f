"""Random inpainting masks: rectangles and free-form brush strokes (torch only, seeded).

GLIDE's inpainting model is fine-tuned "by erasing random regions of training examples" and feeding the rest, plus
the mask, as extra input channels (PAPER_FACTS "GLIDE"). The paper does not publish its region distribution; we draw
the two kinds common in the inpainting literature:

- ``rectangle``: one axis-aligned box of area fraction ~ U[rect_area] and aspect ratio ~ log-U[1/rect_aspect,
  rect_aspect] (clipped to the image), at a uniform position;
- ``strokes``: free-form brush strokes (DeepFill v2 / LaMa style): each stroke is a random polyline of
  ``stroke_vertices`` segments (random directions, lengths U[stroke_length] x size) drawn with a round brush of width
  U[stroke_width] x size; strokes are added until the erased fraction reaches a target ~ U[stroke_area] (at most
  ``max_strokes``), so its coverage is about the target (a final stroke may overshoot it);
- ``all``: everything erased (nothing known), so an inpainting model also generates from the caption alone.

Convention (the same as ``zoo.diffusion.samplers.known_region`` and GLIDE's ``inpaint_mask``): **1 = known pixel,
0 = erased** (to be generated). Rasterisation is done by hand (distance of each pixel centre to each segment) because
no torch-only library draws thick polylines; it is vectorised over pixels.

    masks = random_masks(8, 32, generator=torch.Generator().manual_seed(0))            # (8, 1, 32, 32) float
    masks, kinds = random_masks(8, 32, generator=g, return_kinds=True)                 # kinds: (8,) index into KINDS
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional

import torch

__all__ = ["KINDS", "MaskConfig", "mask_config", "random_masks", "rectangle_mask", "stroke_mask"]

KINDS = ("rectangle", "strokes", "all")


@dataclass(frozen=True)
class MaskConfig:
    """The distribution of training masks (fractions are of the image side or area)."""

    rect_prob: float = 0.45  # P(one rectangle)
    stroke_prob: float = 0.45  # P(brush strokes); the rest (0.1) erases the whole image
    rect_area: tuple[float, float] = (0.1, 0.5)  # erased area fraction of the rectangle
    rect_aspect: float = 3.0  # max height/width ratio (and its inverse)
    stroke_area: tuple[float, float] = (0.1, 0.45)  # target erased fraction of the strokes
    stroke_vertices: tuple[int, int] = (2, 6)  # segments per stroke (inclusive range)
    stroke_length: tuple[float, float] = (0.1, 0.4)  # segment length / size
    stroke_width: tuple[float, float] = (0.06, 0.15)  # brush width / size (at least 1 px)
    max_strokes: int = 8

    def __post_init__(self):
        for name in ("rect_area", "stroke_area", "stroke_length", "stroke_width", "stroke_vertices"):
            value = getattr(self, name)
            # a scalar (rect_area=0.3) failed with "cannot unpack non-iterable float"; a fractional vertex count was
            # accepted and failed in torch.randint at the first training step
            whole = name == "stroke_vertices"
            ok = isinstance(value, (tuple, list)) and len(value) == 2
            # inf passed "<= 1" checks of a length or width (a stroke of infinite length: NaN points at angle 0)
            ok = ok and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in value)
            if ok and whole:
                ok = all(float(v).is_integer() for v in value)
            if not ok:
                kind = "whole numbers" if whole else "numbers"
                raise ValueError(f"MaskConfig.{name} must be a range [lo, hi] of two {kind}, got {value!r}")
            lo, hi = (int(v) for v in value) if whole else (float(v) for v in value)
            object.__setattr__(self, name, (lo, hi))
            if not 0 <= lo <= hi:
                raise ValueError(f"MaskConfig.{name} must be a range (lo <= hi), got {(lo, hi)}")
        for name in ("rect_prob", "stroke_prob", "rect_aspect"):
            value = getattr(self, name)
            # a string was a TypeError from a comparison below (not naming the option); an aspect of inf or nan
            # was accepted and failed at the first training step ("cannot convert float NaN to integer")
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(
                    f"MaskConfig.{name} must be a finite number, got {value!r} "
                    f"(fix: model.inpaint_masks.{name}={getattr(MaskConfig, name)}, the default)"
                )
        m = self.max_strokes
        if isinstance(m, bool) or not isinstance(m, numbers.Real) or not float(m).is_integer():
            raise ValueError(f"MaskConfig.max_strokes must be a whole number, got {self.max_strokes!r}")
        object.__setattr__(self, "max_strokes", int(self.max_strokes))
        if not (0 <= self.rect_prob and 0 <= self.stroke_prob and self.rect_prob + self.stroke_prob <= 1):
            raise ValueError(
                f"MaskConfig: rect_prob ({self.rect_prob}) + stroke_prob ({self.stroke_prob}) must be "
                f"probabilities summing to <= 1 (the rest erases the whole image)"
            )
        if self.rect_area[1] > 1 or self.stroke_area[1] > 1:
            raise ValueError("MaskConfig: area fractions must be <= 1")
        if self.rect_aspect < 1 or self.max_strokes < 1 or self.stroke_vertices[0] < 1:
            raise ValueError("MaskConfig: rect_aspect >= 1, max_strokes >= 1 and stroke_vertices >= 1 are required")


def mask_config(values: Optional[Mapping[str, Any]] = None) -> MaskConfig:
    """A ``MaskConfig`` from plain values (a config node or checkpoint hyper-parameters); unknown keys -> ValueError."""
    values = dict(values or {})
    known = {f.name for f in fields(MaskConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown mask option(s) {unknown}; choose from {sorted(known)}")
    return MaskConfig(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in values.items()})


def _uniform(lo: float, hi: float, g: torch.Generator) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def rectangle_mask(size: int, generator: torch.Generator, cfg: MaskConfig = MaskConfig()) -> torch.Tensor:
    """(size, size) bool, True = erased: one box of area fraction ~ U[rect_area] (before clipping/rounding)."""
    g = generator
    area = _uniform(*cfg.rect_area, g) * size * size
    log_r = _uniform(-math.log(cfg.rect_aspect), math.log(cfg.rect_aspect), g)
    h = min(size, max(1, round(math.sqrt(area * math.exp(log_r)))))
    w = min(size, max(1, round(area / h)))
    top = int(torch.randint(0, size - h + 1, (), generator=g))
    left = int(torch.randint(0, size - w + 1, (), generator=g))
    m = torch.zeros(size, size, dtype=torch.bool)
    m[top : top + h, left : left + w] = True
    return m


def _draw_segments(m: torch.Tensor, pts: torch.Tensor, width: float) -> None:
    """Erase (in place) every pixel whose centre is within width/2 of the polyline ``pts`` (V, 2) in pixel units."""
    size = m.shape[0]
    c = torch.arange(size, dtype=torch.float32) + 0.5
    p = torch.stack(torch.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2)  # (P, 2) pixel centres (row, col)
    a, b = pts[:-1], pts[1:]  # (S, 2) segment ends
    ab = b - a
    t = ((p[None] - a[:, None]) * ab[:, None]).sum(-1) / (ab * ab).sum(-1).clamp(min=1e-8)[:, None]  # (S, P)
    nearest = a[:, None] + t.clamp(0, 1)[..., None] * ab[:, None]  # (S, P, 2)
    d = (p[None] - nearest).norm(dim=-1).amin(0)  # (P,)
    m |= (d <= width / 2).reshape(size, size)


def stroke_mask(size: int, generator: torch.Generator, cfg: MaskConfig = MaskConfig()) -> torch.Tensor:
    """(size, size) bool, True = erased: brush strokes until the erased fraction reaches ~U[stroke_area]."""
    g = generator
    target = _uniform(*cfg.stroke_area, g)
    m = torch.zeros(size, size, dtype=torch.bool)
    for _ in range(cfg.max_strokes):
        n_seg = int(torch.randint(cfg.stroke_vertices[0], cfg.stroke_vertices[1] + 1, (), generator=g))
        width = max(1.0, _uniform(*cfg.stroke_width, g) * size)
        pts = [torch.rand(2, generator=g) * size]
        for _ in range(n_seg):
            angle = _uniform(0.0, 2 * math.pi, g)
            length = _uniform(*cfg.stroke_length, g) * size
            step = torch.tensor([math.sin(angle), math.cos(angle)]) * length
            pts.append((pts[-1] + step).clamp(0, size))
        _draw_segments(m, torch.stack(pts), width)
        if float(m.float().mean()) >= target:
            break
    return m


def random_masks(
    n: int,
    size: int,
    generator: Optional[torch.Generator] = None,
    cfg: Optional[MaskConfig] = None,
    device=None,
    return_kinds: bool = False,
):
    """``n`` masks (n, 1, size, size) float32, **1 = known, 0 = erased**, each a rectangle, strokes or all erased
    (probabilities ``cfg.rect_prob``, ``cfg.stroke_prob``, the rest). Drawn on the CPU from ``generator`` (a CPU
    ``torch.Generator``; None = torch's global RNG), then moved to ``device``. ``return_kinds``: also (n,) long,
    indices into ``KINDS``."""
    cfg = cfg or MaskConfig()
    g = generator
    if g is None:
        g = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))
    erased, kinds = [], []
    for _ in range(int(n)):
        u = float(torch.rand((), generator=g))
        if u < cfg.rect_prob:
            kinds.append(0)
            erased.append(rectangle_mask(size, g, cfg))
        elif u < cfg.rect_prob + cfg.stroke_prob:
            kinds.append(1)
            erased.append(stroke_mask(size, g, cfg))
        else:
            kinds.append(2)
            erased.append(torch.ones(size, size, dtype=torch.bool))
    if erased:
        masks = (~torch.stack(erased)).float()[:, None]
    else:
        masks = torch.ones(0, 1, size, size)
    masks = masks.to(device) if device is not None else masks
    if return_kinds:
        return masks, torch.tensor(kinds, dtype=torch.long)
    return masks
