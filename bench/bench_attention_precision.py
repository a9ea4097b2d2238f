"""Attention under bf16 autocast on CPU: fp32 (what ``zoo.nn.transformer.SelfAttention`` does there since
2026-12-06: q, k, v upcast, autocast off, SDPA's fp32 kernels) against the attention before (bf16 q, k, v through
SDPA's MATH backend; its flash kernel in bf16 was slower still). The measurement behind
``zoo.precision.fp32_attention_preferred``.

    OMP_NUM_THREADS=1 python bench/bench_attention_precision.py [--reps 3]

One ``SelfAttention`` (qkv and output projections included, as a model runs it) forward + backward under
``torch.autocast("cpu", bfloat16)``, at the shapes of the zoo's transformers: the unCLIP prior (48 text + 4 tail
positions), CLIP's text tower, DALL·E at 8x8 / 16x16 / 32x32 codes (dense causal and the paper's block-sparse row
pattern). Interleaved, best of ``--reps``, CPU-time clock; prints ms per step and old / new. Asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from zoo.nn import transformer as tm
from zoo.nn.block_sparse import BlockSparseMask
from zoo.nn.sparse_masks import dalle_mask
from zoo.precision import describe_cpu

# name, batch, heads, head dim, text length, grid side (0: no image part), mask kind ("causal" or a DALL·E pattern)
SHAPES = [
    ("unCLIP prior (shapes)", 128, 4, 32, 52, 0, "causal"),
    ("CLIP text tower", 128, 4, 32, 32, 0, "causal"),
    ("DALL·E 8x8 codes", 16, 8, 64, 48, 8, "causal"),
    ("DALL·E 16x16 codes", 8, 8, 64, 48, 16, "causal"),
    ("DALL·E 16x16 row (block-sparse)", 8, 8, 64, 48, 16, "row"),
    ("DALL·E 32x32 codes", 2, 8, 64, 48, 32, "causal"),
]


@contextlib.contextmanager
def half_attention():
    """The attention as it was: bf16 q, k, v through SDPA's MATH backend (``fp32_attention_preferred`` off)."""
    saved = tm.fp32_attention_preferred
    tm.fp32_attention_preferred = lambda device_type, dtype: False
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        tm.fp32_attention_preferred = saved


def step_fn(attn: tm.SelfAttention, x: torch.Tensor, mask, old: bool):
    def run() -> float:
        xg = x.detach().requires_grad_()
        t0 = time.process_time()
        with half_attention() if old else contextlib.nullcontext(), torch.autocast("cpu", dtype=torch.bfloat16):
            y = attn(xg, mask)
        y.float().sum().backward()
        return time.process_time() - t0

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    print(describe_cpu())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    for name, b, h, d, text, grid, kind in SHAPES:
        torch.manual_seed(0)
        n = text + grid * grid
        attn = tm.SelfAttention(h * d, h, d)
        x = torch.randn(b, n, h * d)
        mask = None if kind == "causal" else BlockSparseMask(dalle_mask(kind, text, grid, grid), block=grid)
        fns = {"old": step_fn(attn, x, mask, True), "new": step_fn(attn, x, mask, False)}
        for fn in fns.values():
            fn()  # warm-up
        best = {k: float("inf") for k in fns}
        for _ in range(args.reps):
            for k, fn in fns.items():
                best[k] = min(best[k], fn())
        print(
            f"{name:34s} batch {b:3d}, {h} heads x {d}, length {n:4d}: bf16 attention (before) "
            f"{best['old'] * 1e3:8.1f} ms | fp32 attention (now) {best['new'] * 1e3:8.1f} ms | "
            f"before / now {best['old'] / best['new']:.2f}x"
        )


if __name__ == "__main__":
    main()
