"""Text->image and image->text recall@1/@5 of a trained CLIP on a val batch of shapes scenes with descriptive captions.

python scripts/clip_recall.py <checkpoint from zoo-train model=clip> [--n 64] [--resolution <px>]

The scenes are rendered at the resolution the CLIP trained at (the checkpoint's data.resolution; 32 when it does
not record one), unless --resolution says otherwise.
"""

from __future__ import annotations

import argparse

import torch

from zoo.data.shapes import ShapesDataset
from zoo.models.clip.lit import recall_at_k
from zoo.models.clip.scorer import ClipScorer, trained_scene_resolution
from zoo.precision import describe_cpu


def main() -> None:
    print(describe_cpu())  # what the figures below were measured on
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--resolution", type=int, default=None, help="default: the resolution the CLIP trained at")
    args = ap.parse_args()
    scorer = ClipScorer.from_lightning_checkpoint(args.ckpt)
    resolution = trained_scene_resolution(args.ckpt, args.resolution)
    ds = ShapesDataset("val", args.n, resolution)
    images = torch.stack([ds[i]["image"] for i in range(args.n)])
    captions = [ds[i]["captions"]["descriptive"] for i in range(args.n)]
    sim = scorer.encode_text(captions) @ scorer.encode_image(images).t()  # (texts, images)
    print(
        f"n={args.n} resolution={resolution} t2i_r@1={recall_at_k(sim, 1):.3f} t2i_r@5={recall_at_k(sim, 5):.3f} "
        f"i2t_r@1={recall_at_k(sim.t(), 1):.3f} i2t_r@5={recall_at_k(sim.t(), 5):.3f}"
    )


if __name__ == "__main__":
    main()
