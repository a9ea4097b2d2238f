"""The built-in ``shapes`` world: procedurally rendered, captioned scenes that need no download.

Each scene has 1-3 objects, each with a shape, a colour, a size and one of 3x3 named grid positions (one object per
cell), on a named background colour. Everything is a pure function of (seed, split, index), so train/val/test are
reproducible and disjoint streams (the split enters the RNG seed), and any sample can be regenerated anywhere.

Rendering is anti-aliased by 4x4 supersampling inside each object's bounding box only (numpy, vectorised), which
keeps the world fast enough to be generated on the fly (see bench/bench_shapes.py).

Each sample carries the ground truth ``attributes`` and three caption styles (DALL·E 3's terms):
``alt`` (web-like alt text: partial, sometimes noisy or off-topic), ``short`` (main subject only) and
``descriptive`` (every object with colour, size and position, the count and the background).
"""
from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

SHAPES = ("circle", "square", "triangle", "star", "heart", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "green": (34, 170, 60),
    "blue": (40, 90, 230),
    "yellow": (245, 215, 30),
    "purple": (140, 60, 200),
    "orange": (250, 135, 20),
    "cyan": (30, 205, 215),
    "pink": (250, 125, 190),
    "white": (248, 248, 248),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (18, 18, 18),
    "gray": (115, 115, 115),
    "white": (248, 248, 248),
    "brown": (105, 65, 35),
}
SIZES = ("small", "large")
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")
POSITIONS = tuple(f"{r} {c}" for r in ROWS for c in COLS)
CAPTION_STYLES = ("alt", "short", "descriptive")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
RESOLUTIONS = (32, 64, 128, 256)
NUMBER_WORDS = ("zero", "one", "two", "three")

# object side as a fraction of a grid cell
_SIZE_FRACTION = {"small": 0.55, "large": 0.92}
_SS = 4  # supersampling factor per axis


# --------------------------------------------------------------------------------------------- scene sampling
def sample_attributes(rng: np.random.Generator, max_objects: int = 3, min_objects: int = 1) -> dict[str, Any]:
    """Draw a scene: background, then 1-3 objects in distinct cells with a colour unlike the background."""
    if not 1 <= min_objects <= max_objects <= 9:
        raise ValueError(f"need 1 <= min_objects <= max_objects <= 9, got {min_objects}, {max_objects}")
    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    n = int(rng.integers(min_objects, max_objects + 1))
    cells = rng.choice(9, size=n, replace=False)
    colours = [c for c in COLOURS if c != background]
    objects = []
    for cell in cells:
        row, col = divmod(int(cell), 3)
        objects.append(
            {
                "shape": SHAPES[rng.integers(len(SHAPES))],
                "colour": colours[rng.integers(len(colours))],
                "size": SIZES[rng.integers(len(SIZES))],
                "position": f"{ROWS[row]} {COLS[col]}",
                "row": row,
                "col": col,
            }
        )
    objects.sort(key=lambda o: (o["row"], o["col"]))  # raster order: captions read like the image
    return {"background": background, "objects": objects}


# --------------------------------------------------------------------------------------------- rendering
def _star_radius(theta: np.ndarray, outer: float = 1.0, inner: float = 0.45) -> np.ndarray:
    # Straight-edged 5-point star with a tip pointing up: radius of the edge between a tip (angle 0) and the
    # inner vertex (angle 36 deg), by the polar equation of the line through the two vertices.
    sector = 2 * math.pi / 5
    phi = np.abs(((theta + math.pi / 2) % sector) - sector / 2)  # 0 at inner vertex... measured from mid-sector
    phi = sector / 2 - phi  # 0 at the tip, sector/2 at the inner vertex
    a = sector / 2
    # line through (outer, 0) and (inner*cos a, inner*sin a): r(phi) = outer*inner*sin(a) / (outer*sin(phi) + inner*sin(a - phi))
    return outer * inner * math.sin(a) / (outer * np.sin(phi) + inner * np.sin(a - phi))


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Point-in-shape test in local coordinates u (right), v (down), both in [-1, 1]."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (np.abs(u) <= 0.82) & (np.abs(v) <= 0.82)
    if shape == "triangle":  # apex up
        return (v <= 0.8) & (np.abs(u) <= (v + 0.95) * (1.0 / 1.75))
    if shape == "star":
        r = np.sqrt(u * u + v * v)
        theta = np.arctan2(v, u)
        return r <= _star_radius(theta) * 1.05
    if shape == "heart":
        x = u * 1.25
        y = -(v * 1.25) + 0.25  # classic implicit heart, point down
        return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0
    if shape == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


@lru_cache(maxsize=64)
def _subpixel_offsets(n: int) -> np.ndarray:
    return (np.arange(n * _SS, dtype=np.float32) + 0.5) / _SS  # sample centres in pixel units from bbox origin


def render_scene(attributes: dict[str, Any], resolution: int = 32) -> np.ndarray:
    """Render a scene to uint8 (H, W, 3), anti-aliased."""
    img = np.empty((resolution, resolution, 3), dtype=np.float32)
    img[:] = BACKGROUNDS[attributes["background"]]
    cell = resolution / 3.0
    for obj in attributes["objects"]:
        half = 0.5 * _SIZE_FRACTION[obj["size"]] * cell
        cx = (obj["col"] + 0.5) * cell + obj.get("dx", 0.0) * cell
        cy = (obj["row"] + 0.5) * cell + obj.get("dy", 0.0) * cell
        x0, x1 = max(int(math.floor(cx - half)), 0), min(int(math.ceil(cx + half)), resolution)
        y0, y1 = max(int(math.floor(cy - half)), 0), min(int(math.ceil(cy + half)), resolution)
        w, h = x1 - x0, y1 - y0
        xs = (x0 + _subpixel_offsets(w) - cx) / half
        ys = (y0 + _subpixel_offsets(h) - cy) / half
        inside = _inside(obj["shape"], xs[None, :], ys[:, None])  # (h*SS, w*SS)
        alpha = inside.reshape(h, _SS, w, _SS).mean(axis=(1, 3), dtype=np.float32)[..., None]
        patch = img[y0:y1, x0:x1]
        patch += alpha * (np.asarray(COLOURS[obj["colour"]], dtype=np.float32) - patch)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------- captions
def _phrase(obj: dict[str, Any], rng: np.random.Generator) -> str:
    templates = (
        "a {size} {colour} {shape} at the {position}",
        "a {size} {colour} {shape} in the {position}",
        "a {colour} {shape}, {size}, at the {position}",
        "one {size} {colour} {shape} at the {position}",
    )
    return templates[rng.integers(len(templates))].format(**obj)


def _join(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def main_subject(attributes: dict[str, Any]) -> dict[str, Any]:
    """The object a short caption names: the first large object in raster order, else the first object."""
    objs = attributes["objects"]
    return next((o for o in objs if o["size"] == "large"), objs[0])


def _articles(text: str) -> str:
    return re.sub(r"\b([Aa]) ([aeiou])", lambda m: f"{m.group(1)}n {m.group(2)}", text)


def captions_for(attributes: dict[str, Any], rng: np.random.Generator) -> dict[str, str]:
    """All three caption styles for a scene, with template variety drawn from ``rng``."""
    objs = attributes["objects"]
    n = len(objs)
    bg = attributes["background"]
    count = f"{NUMBER_WORDS[n]} object" + ("s" if n > 1 else "")
    body = _join([_phrase(o, rng) for o in objs])
    descriptive_templates = (
        "{count} on a {bg} background: {body}",
        "a {bg} background with {count}: {body}",
        "{body}, on a {bg} background ({count} in total)",
        "an image of {count} on a {bg} background: {body}",
    )
    descriptive = descriptive_templates[rng.integers(len(descriptive_templates))].format(count=count, bg=bg, body=body)

    subject = main_subject(attributes)
    short_templates = ("a {colour} {shape}", "the {colour} {shape}", "{colour} {shape}")
    short = short_templates[rng.integers(len(short_templates))].format(**subject)

    alt_templates = (
        "IMG_{num}.png",
        "abstract geometric shapes wallpaper",
        "{colour} thing",
        "{shape} icon",
        "{colour} {shape} clipart free download",
        "cool {bg} poster",
        "untitled",
        "shapes",
        "{shape}s and more",
    )
    alt = alt_templates[rng.integers(len(alt_templates))].format(
        num=int(rng.integers(1000, 10000)), bg=bg, **subject
    )
    return {"alt": alt, "short": _articles(short), "descriptive": _articles(descriptive)}


# --------------------------------------------------------------------------------------------- dataset
def _normalise_mix(caption_mix: Optional[dict[str, float]]) -> Optional[tuple[tuple[str, ...], np.ndarray]]:
    if not caption_mix:
        return None
    for style, p in caption_mix.items():
        if style not in CAPTION_STYLES:
            raise ValueError(f"unknown caption style {style!r} in caption_mix; valid styles: {CAPTION_STYLES}")
        if p < 0:
            raise ValueError(f"caption_mix proportions must be >= 0, got {style}={p}")
    total = float(sum(caption_mix.values()))
    if total <= 0:
        raise ValueError("caption_mix proportions sum to 0 (fix: e.g. {descriptive: 0.95, alt: 0.05})")
    styles = tuple(caption_mix)
    return styles, np.cumsum([caption_mix[s] / total for s in styles])


class ShapesDataset(Dataset):
    """``size`` scenes of the shapes world for one split, rendered on access (deterministic per index)."""

    def __init__(
        self,
        split: str = "train",
        size: int = 10000,
        resolution: int = 32,
        seed: int = 0,
        caption_style: str = "descriptive",
        caption_mix: Optional[dict[str, float]] = None,
        min_objects: int = 1,
        max_objects: int = 3,
    ):
        if split not in SPLIT_IDS:
            raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLIT_IDS)}")
        if int(resolution) < 16:
            # any side >= 16 renders (objects need a few pixels); RESOLUTIONS are the ones we test and benchmark
            raise ValueError(f"resolution {resolution} too small; use >= 16, e.g. one of {RESOLUTIONS} (data.resolution=...)")
        if caption_style not in CAPTION_STYLES:
            raise ValueError(f"unknown caption_style {caption_style!r}; valid styles: {CAPTION_STYLES}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if not 1 <= min_objects <= max_objects <= 9:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= 9, got {min_objects}, {max_objects}")
        self.split, self.size, self.resolution, self.seed = split, int(size), int(resolution), int(seed)
        self.caption_style = caption_style
        self.mix = _normalise_mix(caption_mix)
        self.min_objects, self.max_objects = min_objects, max_objects

    def __len__(self) -> int:
        return self.size

    def scene(self, index: int) -> tuple[dict[str, Any], dict[str, str], str]:
        """(attributes, all captions, chosen style) of sample ``index`` without rendering it."""
        if not 0 <= index < self.size:
            raise IndexError(index)
        sid = SPLIT_IDS[self.split]
        rng = np.random.default_rng([self.seed, sid, index])
        attributes = sample_attributes(rng, self.max_objects, self.min_objects)
        # Captions and the style draw use their own stream so that changing the mix never changes the scenes.
        crng = np.random.default_rng([self.seed, sid, index, 1])
        captions = captions_for(attributes, crng)
        if self.mix is None:
            style = self.caption_style
        else:
            styles, cdf = self.mix
            style = styles[int(np.searchsorted(cdf, crng.random(), side="right").clip(max=len(styles) - 1))]
        return attributes, captions, style

    def __getitem__(self, index: int) -> dict[str, Any]:
        attributes, captions, style = self.scene(index)
        pixels = render_scene(attributes, self.resolution)
        image = torch.from_numpy(pixels).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
        return {
            "image": image,
            "caption": captions[style],
            "captions": captions,
            "caption_style": style,
            "attributes": attributes,
            "index": index,
        }
