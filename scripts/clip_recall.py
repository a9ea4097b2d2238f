"""Text->image and image->text recall@1/@5 of a trained CLIP on a val batch of shapes scenes with descriptive captions.

python scripts/clip_recall.py <checkpoint from zoo-train model=clip> [--n 64]
"""

from __future__ import annotations

import argparse

import torch

from zoo.data.shapes import ShapesDataset
from zoo.models.clip.lit import recall_at_k
from zoo.models.clip.scorer import ClipScorer
from zoo.precision import describe_cpu


def main() -> None:
    print(describe_cpu())  # what the figures below were measured on
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--resolution", type=int, default=32)
    args = ap.parse_args()
    scorer = ClipScorer.from_lightning_checkpoint(args.ckpt)
    ds = ShapesDataset("val", args.n, args.resolution)
    images = torch.stack([ds[i]["image"] for i in range(args.n)])
    captions = [ds[i]["captions"]["descriptive"] for i in range(args.n)]
    sim = scorer.encode_text(captions) @ scorer.encode_image(images).t()  # (texts, images)
    print(
        f"n={args.n} t2i_r@1={recall_at_k(sim, 1):.3f} t2i_r@5={recall_at_k(sim, 5):.3f} "
        f"i2t_r@1={recall_at_k(sim.t(), 1):.3f} i2t_r@5={recall_at_k(sim.t(), 5):.3f}"
    )


if __name__ == "__main__":
    main()
