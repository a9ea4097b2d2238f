"""Does a CLIP bind each attribute to its object? A two-alternative test on two-object val scenes.

For every val scene with two or more objects, the scene's own descriptive caption is set against a foil that swaps
one attribute between the first two objects (their cells, or their colours, or their sizes) and leaves every word of
the caption in place: a bag of words cannot tell the two apart, only a model that binds "red" and "top left" to
"circle" can. The test is run both ways:

- **caption -> image**: the caption against the two images (the scene, and the scene with the attribute swapped);
- **image -> caption**: the scene against the two captions (its own, and the swapped one).

A pair counts as right when the true one has the higher cosine. Chance is 50%. For scale, the same test with a
**control** foil that changes one object's attribute to a value no object in the scene has (e.g. a colour that is
not in the caption): a model that reads the words at all gets that one right.

    python experiments/clip/binding_probe.py --clip logs/demo/clip/checkpoints/last.ckpt [--n 512]
        [--object-order shuffled]

``--object-order shuffled``: both captions of a pair list the objects in one random order per scene (the same
permutation of the object list for the scene and its foil) instead of top left first. With raster captions a
position foil is itself out of raster order (its first-listed object moved to a later cell), a cue that a CLIP
trained on raster captions can read without binding anything (image -> caption); shuffled captions remove that cue.

GLIDE with a frozen CLIP text tower inherits whatever this CLIP's text tower does not bind
(experiments/glide/README.md, the 6,000-step demo prompts).
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import numpy as np
import torch

from zoo.data.shapes import COLOURS, ShapesDataset, captions_for, render_scene
from zoo.models.clip.scorer import ClipScorer, trained_scene_resolution

SWAPS = ("position", "colour", "size")


def swapped(attributes: dict[str, Any], what: str) -> dict[str, Any]:
    """The scene with ``what`` exchanged between its first two objects (cells: row and col together)."""
    out = copy.deepcopy(attributes)
    a, b = out["objects"][0], out["objects"][1]
    keys = ("row", "col", "position") if what == "position" else (what,)
    for k in keys:
        a[k], b[k] = b[k], a[k]
    return out


def control(attributes: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """The scene with the first object's colour changed to one no object of the scene has."""
    out = copy.deepcopy(attributes)
    used = {o["colour"] for o in out["objects"]} | {out["background"]}
    out["objects"][0]["colour"] = str(rng.choice(sorted(set(COLOURS) - used)))
    return out


def caption(attributes: dict[str, Any], index: int, order: str = "raster") -> str:
    """The world's descriptive caption, with the template draws fixed per scene (same words for scene and foil);
    ``order="shuffled"``: the objects listed in a permutation fixed per scene (the same for scene and foil)."""
    perm = None
    if order == "shuffled":
        perm = np.random.default_rng([11, index]).permutation(len(attributes["objects"]))
    return captions_for(attributes, np.random.default_rng([7, index]), perm)["descriptive"]


def image(attributes: dict[str, Any], resolution: int) -> torch.Tensor:
    pixels = render_scene(attributes, resolution)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))).float().div(127.5).sub(1.0)


def differs(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether the foil is another scene. A swap between equal values (two red objects), or between two objects
    that differ in nothing else (then both captions are true of one image), is no test: such scenes are skipped."""

    def objects(s: dict[str, Any]) -> list[tuple]:
        return sorted((o["shape"], o["colour"], o["size"], o["row"], o["col"]) for o in s["objects"])

    return objects(a) != objects(b)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", required=True, help="a zoo-train CLIP last.ckpt")
    p.add_argument("--n", type=int, default=512, help="val scenes searched (those with 2+ objects are used)")
    p.add_argument("--resolution", type=int, default=None, help="default: the resolution the CLIP trained at")
    p.add_argument("--object-order", default="raster", choices=("raster", "shuffled"), help="captions' object order")
    args = p.parse_args()
    torch.set_num_threads(1)
    scorer = ClipScorer.from_lightning_checkpoint(args.clip)
    args.resolution = trained_scene_resolution(args.clip, args.resolution)
    ds = ShapesDataset("val", size=args.n, resolution=args.resolution)
    rng = np.random.default_rng(0)
    rows = []
    for what in (*SWAPS, "control (a colour not in the scene)"):
        t2i, i2t = [], []
        for i in range(args.n):
            attrs = ds.scene(i)[0]
            if len(attrs["objects"]) < 2:
                continue
            foil = control(attrs, rng) if what.startswith("control") else swapped(attrs, what)
            if not differs(attrs, foil):
                continue
            with torch.no_grad():
                imgs = scorer.encode_image(torch.stack([image(attrs, args.resolution), image(foil, args.resolution)]))
                caps = scorer.encode_text([caption(attrs, i, args.object_order), caption(foil, i, args.object_order)])
            sim = imgs @ caps.T  # [scene, foil] x [caption, foil caption]
            t2i.append(bool(sim[0, 0] > sim[1, 0]))  # the caption picks the scene over the foil image
            i2t.append(bool(sim[0, 0] > sim[0, 1]))  # the scene picks its caption over the foil caption
        rows.append((what, len(t2i), float(np.mean(t2i)), float(np.mean(i2t))))
    print(f"CLIP {args.clip}; {args.n} val scenes, those with 2+ objects, {args.object_order} captions; chance 50%")
    print("| foil swaps, between the first two objects | pairs | caption -> image | image -> caption |")
    print("|---|---:|---:|---:|")
    for what, n, a, b in rows:
        print(f"| {what} | {n} | {a:.1%} | {b:.1%} |")


if __name__ == "__main__":
    main()
