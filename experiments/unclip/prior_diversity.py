"""How different are a prior's samples for one caption, and how different should they be?

Mean over the first 32 shapes val captions of the mean pairwise 1 - cos between 4 sampled CLIP image embeddings
(seeds 0..3), for the leaderboard's diffusion prior (best of 2 and best of 1) and AR prior (when it exists); and two
references from real scenes:

- **real, same caption**: the spread a perfect prior would sample. For a ``descriptive`` caption it is 0: the caption
  names every object's shape, colour, size and cell and the background, and the world renders those attributes to
  one image (no jitter), so a caption has exactly one true image. For a ``short`` caption ("a red circle") it is the
  spread of the real scenes whose main subject is that colour and shape: for each caption, 4 val scenes with the
  same main subject (the caption's own scene and the next three found).
- **real, different scenes**: 32 different val scenes, for scale.

    python experiments/unclip/prior_diversity.py                          # after make demo and make leaderboard
    ZOO_LOG_DIR=<logs> python experiments/unclip/prior_diversity.py --style short

It separates the prior's share of unCLIP's sample diversity from the decoder's (experiments/unclip/README.md,
section 3).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from eval.metrics import pairwise_cosine_distance as pairwise_distance  # zoo-eval's diversity measure
from zoo.data.shapes import ShapesDataset, main_subject
from zoo.pipelines.unclip import UnclipPipeline


def same_subject_scenes(ds: ShapesDataset, index: int, k: int, search: ShapesDataset) -> list[int]:
    """``index`` and the first ``k - 1`` other scenes of ``search`` whose main subject has the same colour and shape
    (what a short caption names)."""
    want = main_subject(ds.scene(index)[0])
    found = [index]
    for j in range(len(search)):
        if len(found) == k:
            break
        subject = main_subject(search.scene(j)[0])
        if j != index and (subject["colour"], subject["shape"]) == (want["colour"], want["shape"]):
            found.append(j)
    if len(found) < k:
        raise ValueError(f"only {len(found)} val scenes share scene {index}'s main subject (fix: a larger --search)")
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--logs", default=os.environ.get("ZOO_LOG_DIR", "logs"), help="the make demo / leaderboard logs")
    p.add_argument("--style", default="descriptive", choices=["descriptive", "short"], help="the val captions' style")
    p.add_argument("--captions", type=int, default=32)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--search", type=int, default=4096, help="val scenes searched for a short caption's real twins")
    args = p.parse_args()
    torch.set_num_threads(1)
    logs = Path(args.logs)
    decoder = logs / "leaderboard/decoder/checkpoints/last.ckpt"
    clip = logs / "demo/clip/checkpoints/last.ckpt"
    ds = ShapesDataset("val", size=args.captions, resolution=32, caption_style=args.style)
    captions = [ds[i]["caption"] for i in range(args.captions)]
    pipe = None
    for prior, run, candidates in (("diffusion", "prior", 2), ("diffusion", "prior", 1), ("ar", "ar_prior", None)):
        ckpt = logs / "leaderboard" / run / "checkpoints/last.ckpt"
        if not ckpt.is_file():
            print(f"{prior} prior: no {ckpt}, skipped")
            continue
        kw = {"prior_n_candidates": candidates} if candidates else {}
        pipe = UnclipPipeline.from_checkpoints(str(ckpt), str(decoder), str(clip), prior=prior, **kw)
        e = torch.stack([pipe.embeddings(captions, torch.Generator().manual_seed(s)) for s in range(args.samples)], 1)
        what = f"best of {candidates}" if candidates else "its defaults"
        print(f"{prior} prior ({what}): {pairwise_distance(F.normalize(e.float(), dim=-1)):.4f}", flush=True)
    if pipe is None:
        raise SystemExit(f"no prior checkpoint under {logs}/leaderboard (fix: make leaderboard, or --logs)")

    def embed(images: list[torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return F.normalize(pipe.clip.encode_image(torch.stack(images)).float(), dim=-1)

    if args.style == "short":
        search = ShapesDataset("val", size=args.search, resolution=32)
        twins = [same_subject_scenes(ds, i, args.samples, search) for i in range(args.captions)]
        e = torch.stack([embed([search[j]["image"] for j in group]) for group in twins])
        print(
            f"real, same caption ({args.samples} val scenes with the caption's main subject): "
            f"{pairwise_distance(e):.4f}"
        )
    else:
        print(
            "real, same caption: 0 (a descriptive caption fixes every attribute; the world renders them to one image)"
        )
    real = embed([ds[i]["image"] for i in range(args.captions)])
    print(f"real, {args.captions} different scenes: {pairwise_distance(real.unsqueeze(0)):.4f}")


if __name__ == "__main__":
    main()
