"""Speed of the built-in shapes world on one thread (target: >= 2,000 images/s at 32 px).

    python bench/bench_shapes.py [--n 4000] [--resolutions 32 64 128 256] [--repeats 3]

For each resolution prints:
  full/s    samples/s of ``ShapesDataset.__getitem__`` (scene + captions + render + tensor), the number a DataLoader
            worker sees; best of ``--repeats`` passes (the machine is shared, the best pass is the least disturbed)
  render/s  ``render_scene`` alone on pre-sampled scenes
  scene/s   scene + captions alone (no pixels)
  warm-up   one-off cost of computing the memoised coverage masks of that resolution (paid once per process/worker)
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from zoo.data import shapes
from zoo.data.shapes import ShapesDataset, render_scene
from zoo.precision import describe_cpu


def _rate(fn, n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(n):
            fn(i)
        best = min(best, time.perf_counter() - t)
    return n / best


def main() -> None:
    print(describe_cpu())  # what the figures below were measured on
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4000, help="samples per pass at 32 px (scaled down ~1/res above)")
    ap.add_argument("--resolutions", type=int, nargs="+", default=list(shapes.RESOLUTIONS))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(
        f"shapes world v{shapes.WORLD_VERSION}, one thread (torch.set_num_threads(1), "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})"
    )
    print(f"{'resolution':>10} {'full/s':>9} {'render/s':>9} {'scene/s':>9} {'warm-up':>9}")
    for res in args.resolutions:
        n = max(200, args.n * 32 // res)
        ds = ShapesDataset("train", n, resolution=res)
        shapes._cell_coverage.cache_clear()
        t = time.perf_counter()
        for shape in shapes.SHAPES:  # every mask this resolution can need
            for size in shapes.SIZES:
                for cell in range(9):
                    shapes._cell_coverage(shape, size, cell // 3, cell % 3, res)
        warm = time.perf_counter() - t
        scenes = [ds.scene(i)[0] for i in range(n)]
        full = _rate(lambda i: ds[i], n, args.repeats)
        render = _rate(lambda i: render_scene(scenes[i], res), n, args.repeats)
        scene = _rate(lambda i: ds.scene(i), n, args.repeats)
        print(f"{res:>10} {full:>9.0f} {render:>9.0f} {scene:>9.0f} {warm * 1e3:>7.0f}ms")


if __name__ == "__main__":
    main()
