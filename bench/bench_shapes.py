"""Rendering speed of the built-in shapes world, one thread (target: >= 2,000 images/s at 32 px).

    python bench/bench_shapes.py [--n 2000]
"""
from __future__ import annotations

import argparse
import time

import torch

from zoo.data.shapes import RESOLUTIONS, ShapesDataset


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"{'resolution':>10} {'images/s':>10}   (one thread, image + captions + attributes per sample)")
    for res in RESOLUTIONS:
        n = max(100, args.n * 32 // res)
        ds = ShapesDataset("train", n, resolution=res)
        ds[0]
        t = time.perf_counter()
        for i in range(n):
            ds[i]
        print(f"{res:>10} {n / (time.perf_counter() - t):>10.0f}")


if __name__ == "__main__":
    main()
