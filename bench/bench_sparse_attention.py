"""Dense-mask vs block-sparse attention (zoo.nn.block_sparse) for DALL·E 1's row / column / conv masks.

    OMP_NUM_THREADS=1 python bench/bench_sparse_attention.py [--grids 8 16 32] [--texts 64 256] [--repeats 5]

Every comparison runs the two implementations interleaved (dense, sparse, dense, sparse, ...) on the same inputs and
reports the median time of each and their ratio (dense / sparse: > 1 means block-sparse is faster), so background
load hits both alike. Parts:

1. Attention alone, per layer kind (row, column, conv; full for reference) at 8x8, 16x16, 32x32 grids with 64 and
   256 text tokens: forward, and forward + backward, for q/k/v (batch 2, 8 heads x 32). Block-sparse here is the
   planned path itself (no dense fallback), with the block size DalleTransformer uses; the planned fraction of the
   dense scores ("density") is printed beside it.
2. A whole DalleTransformer training step (``shapes`` preset, 8 layers, the paper's row/column/conv pattern, text 48,
   AdamW) at 16x16 and 32x32 grids, attn_impl dense vs block_sparse with the same weights, fp32 and bf16 autocast
   (bf16 only on a CPU with native bf16, ``zoo.precision.bench_bf16``; ``--bf16-anyway`` times the emulation).
3. Cached generation tokens/s (same model, sampling seeded identically; the tokens are checked equal).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from zoo.models.dalle.model import BLOCK_SPARSE_MIN_LEN, PRESETS, DalleTransformer, DalleTransformerConfig
from zoo.models.presets import resolve_preset
from zoo.nn.block_sparse import BlockSparseMask, column_major_perm
from zoo.nn.sampling import sample_image_tokens
from zoo.nn.sparse_masks import dalle_mask
from zoo.precision import bench_bf16, describe_cpu


def interleaved(fns: dict, repeats: int) -> dict:
    """Median seconds of each callable, run in turn ``repeats`` times after one warm-up each."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def block_for(kind: str, h: int, w: int) -> int:  # what DalleTransformer.attention_masks uses
    line = h if kind == "column" else w
    return line * max(1, round(64 / line))


def attention_part(grids, texts, repeats, batch=2, heads=8, head_dim=32):
    print(
        f"\n1. attention alone: batch {batch}, {heads} heads x {head_dim}; ms (median of {repeats}), "
        f"ratio = dense / block-sparse"
    )
    print(
        f"   {'grid':>5} {'text':>4} {'kind':>6} {'L':>5} {'density':>7} | {'fwd dense':>9} {'sparse':>7} "
        f"{'ratio':>6} | {'f+b dense':>9} {'sparse':>7} {'ratio':>6}"
    )
    for g in grids:
        for t in texts:
            n = t + g * g - 1
            q, k, v = (torch.randn(batch, heads, n, head_dim, requires_grad=True) for _ in range(3))
            for kind in ("row", "column", "conv", "full"):
                m = dalle_mask(kind, t, g, g, 11)
                perm = column_major_perm(t, g, g) if kind == "column" else None
                bs = BlockSparseMask(m, perm, block=block_for(kind, g, g), max_density=2.0)
                bs.causal = False  # the planned path itself, also for the causal 'full' mask (normally SDPA causal)
                plan = bs.plan(0, n, "cpu")
                dense_m = m[:n, :n]
                fwd = interleaved(
                    {
                        "dense": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=dense_m),
                        "sparse": lambda: bs.attention(q, k, v),
                    },
                    repeats,
                )
                fb = interleaved(
                    {
                        "dense": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=dense_m).sum().backward(),
                        "sparse": lambda: bs.attention(q, k, v).sum().backward(),
                    },
                    repeats,
                )
                print(
                    f"   {g:>2}x{g:<2} {t:>4} {kind:>6} {n:>5} {plan.density:>7.2f} | {fwd['dense'] * 1e3:>9.1f} "
                    f"{fwd['sparse'] * 1e3:>7.1f} {fwd['dense'] / fwd['sparse']:>5.2f}x | {fb['dense'] * 1e3:>9.1f} "
                    f"{fb['sparse'] * 1e3:>7.1f} {fb['dense'] / fb['sparse']:>5.2f}x",
                    flush=True,
                )


def model_pair(grid: int):
    """(dense, block_sparse) shapes-preset transformers with the paper's pattern and the same weights."""
    torch.manual_seed(0)
    models = []
    for impl in ("dense", "block_sparse"):
        cfg = resolve_preset(
            PRESETS,
            DalleTransformerConfig,
            "shapes",
            {"grid_h": grid, "grid_w": grid, "pattern": "paper", "attn_impl": impl},
            "DALL·E",
        )
        models.append(DalleTransformer(cfg))
    models[1].load_state_dict(models[0].state_dict())
    return models


def training_part(grids, batch, repeats, bf16_anyway: bool = False):
    dtypes = [("fp32", False)] + ([("bf16", True)] if bench_bf16(bf16_anyway) else [])  # says why when it skips
    print(
        f"\n2. DalleTransformer training step (shapes preset: dim 256, 8 layers, text 48, paper pattern "
        f"row/column/conv), batch {batch}, AdamW; tokens/s (median of {repeats}), ratio = sparse / dense"
    )
    for g in grids:
        dense, sparse = model_pair(g)
        c = dense.cfg
        text = torch.randint(1, c.text_vocab, (batch, c.text_len))
        image = torch.randint(0, c.image_vocab, (batch, g, g))
        tokens = batch * (c.seq_len - 1)
        for name, bf16 in dtypes:
            steps = {}
            for label, m in (("dense", dense), ("sparse", sparse)):
                opt = torch.optim.AdamW(m.parameters(), lr=1e-4)

                def step(m=m, opt=opt):
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        loss = m.loss(text, image)["loss"]
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()

                steps[label] = step
            t = interleaved(steps, repeats)
            print(
                f"   {g:>2}x{g:<2} (seq {c.seq_len - 1:>4}) {name}: dense {tokens / t['dense']:>7.0f} tokens/s, "
                f"block-sparse {tokens / t['sparse']:>7.0f} tokens/s, ratio {t['dense'] / t['sparse']:.2f}x",
                flush=True,
            )


def generation_part(grids, batch, repeats):
    print(
        f"\n3. cached generation (shapes preset, paper pattern, fp32, top_k 64), batch {batch}: image tokens/s "
        f"(median of {repeats}), ratio = sparse / dense; tokens checked identical"
    )
    for g in grids:
        dense, sparse = (m.eval() for m in model_pair(g))
        text = torch.randint(1, dense.cfg.text_vocab, (batch, dense.cfg.text_len))
        out = {}

        def gen(m, key):
            out[key] = sample_image_tokens(m, text, top_k=64, generator=torch.Generator().manual_seed(0))

        t = interleaved({"dense": lambda: gen(dense, "dense"), "sparse": lambda: gen(sparse, "sparse")}, repeats)
        same = torch.equal(out["dense"], out["sparse"])
        n = batch * g * g
        print(
            f"   {g:>2}x{g:<2}: dense {n / t['dense']:>6.0f} tokens/s, block-sparse {n / t['sparse']:>6.0f} tokens/s, "
            f"ratio {t['dense'] / t['sparse']:.2f}x, tokens identical: {same}",
            flush=True,
        )


def main():
    print(describe_cpu())  # what the figures below were measured on
    ap = argparse.ArgumentParser()
    ap.add_argument("--grids", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--texts", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train-grids", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--train-batch", type=int, default=4)
    ap.add_argument("--gen-grids", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--gen-batch", type=int, default=8)
    ap.add_argument("--gen-repeats", type=int, default=2)
    ap.add_argument("--parts", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--bf16-anyway", action="store_true", help="time bf16 even where the CPU only emulates it")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} "
        f"(on {os.cpu_count()} CPUs), DalleTransformer attends densely below {BLOCK_SPARSE_MIN_LEN} tokens"
    )
    if 1 in args.parts:
        attention_part(args.grids, args.texts, args.repeats)
    if 2 in args.parts:
        training_part(args.train_grids, args.train_batch, max(3, args.repeats - 2), args.bf16_anyway)
    if 3 in args.parts:
        generation_part(args.gen_grids, args.gen_batch, args.gen_repeats)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
