"""CLIP throughput: training pairs/s and embedding images/s and texts/s, fp32 vs bf16 autocast.

    python bench/bench_clip.py [--preset shapes] [--batch 128]
"""
from __future__ import annotations

import argparse
import time

import torch

from zoo.data.shapes import ShapesDataset
from zoo.models.clip.lit import ClipLit


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="shapes")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    lit = ClipLit(preset=args.preset)
    lit.loss_fn.world_size = 1
    ds = ShapesDataset("train", args.batch, lit.image_size)
    batch = {"image": torch.stack([ds[i]["image"] for i in range(args.batch)]),
             "caption": [ds[i]["caption"] for i in range(args.batch)]}
    scorer = lit.scorer()
    opt = torch.optim.AdamW(lit.parameters(), lr=1e-4)
    print(f"preset={args.preset} arch={lit.arch} batch={args.batch} threads={torch.get_num_threads()}")
    print(f"{'prec':5} {'train pairs/s':>14} {'images/s':>10} {'texts/s':>10}")
    for prec in ("fp32", "bf16"):
        auto = dict(device_type="cpu", dtype=torch.bfloat16, enabled=prec == "bf16")

        def step():
            with torch.autocast(**auto):
                img, txt = lit.embed(batch)
                loss = lit.loss_fn(img.float(), txt.float(), lit.clip.logit_scale.exp())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        train = args.batch * args.steps / (time.perf_counter() - t)
        with torch.autocast(**auto):
            t = time.perf_counter()
            for _ in range(args.steps):
                scorer.encode_image(batch["image"])
            ips = args.batch * args.steps / (time.perf_counter() - t)
            t = time.perf_counter()
            for _ in range(args.steps):
                scorer.encode_text(batch["caption"])
            tps = args.batch * args.steps / (time.perf_counter() - t)
        print(f"{prec:5} {train:>14.1f} {ips:>10.1f} {tps:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
