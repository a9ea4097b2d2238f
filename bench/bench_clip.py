"""CLIP throughput: training pairs/s and embedding images/s and texts/s (ClipScorer), fp32 vs bf16 autocast.

    OMP_NUM_THREADS=2 python bench/bench_clip.py [--preset shapes] [--arch ViT-B-32] [--batch 128] [--steps 5]
        [--bf16-anyway]

Prints a table; times are wall-clock medians over ``--steps`` after one warm-up step. Not a test. The bf16 row runs
only on a CPU with native bf16 (``zoo.precision.bench_bf16``); ``--bf16-anyway`` times it elsewhere too
(the emulation, ~100x slower than fp32 on an AVX2-only CPU).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from zoo.data.shapes import ShapesDataset
from zoo.models.clip.lit import ClipLit
from zoo.precision import bench_bf16, describe_cpu


def _median_rate(fn, n_items: int, steps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return n_items / statistics.median(times)


def main() -> None:
    print(describe_cpu())  # what the figures below were measured on
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="shapes")
    ap.add_argument("--arch", default=None, help="any open_clip architecture instead of the preset's")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--resolution", type=int, default=32, help="data resolution (the model resizes to its own)")
    ap.add_argument("--bf16-anyway", action="store_true", help="time bf16 even where the CPU only emulates it")
    args = ap.parse_args()

    torch.manual_seed(0)
    lit = ClipLit(preset=args.preset, arch=args.arch)
    ds = ShapesDataset("train", args.batch, args.resolution)
    items = [ds[i] for i in range(args.batch)]
    batch = {"image": torch.stack([s["image"] for s in items]), "caption": [s["caption"] for s in items]}
    opt = torch.optim.AdamW(lit.parameters(), lr=1e-5)
    n_params = sum(p.numel() for p in lit.parameters())
    print(
        f"arch={lit.arch} ({n_params / 1e6:.1f} M params, image {lit.image_size}px) batch={args.batch} "
        f"threads={torch.get_num_threads()}"
    )
    precisions = ("fp32", "bf16") if bench_bf16(args.bf16_anyway) else ("fp32",)
    print("| precision | train pairs/s | embed images/s | embed texts/s |")
    print("|---|---:|---:|---:|")
    for prec in precisions:
        autocast = dict(device_type="cpu", dtype=torch.bfloat16, enabled=prec == "bf16")

        def train_step():
            lit.train()
            with torch.autocast(**autocast):
                img, txt = lit.embed(batch)
                loss = lit.loss_fn(img.float(), txt.float(), lit.clip.logit_scale.exp())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        train = _median_rate(train_step, args.batch, args.steps)
        scorer = lit.scorer()  # eval mode, shares the weights

        def enc_img():
            with torch.autocast(**autocast):
                scorer.encode_image(batch["image"])

        def enc_txt():
            with torch.autocast(**autocast):
                scorer.encode_text(batch["caption"])

        ips = _median_rate(enc_img, args.batch, args.steps)
        tps = _median_rate(enc_txt, args.batch, args.steps)
        print(f"| {prec} | {train:,.0f} | {ips:,.0f} | {tps:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
