"""DALL·E transformer benchmarks: sampling speed with/without the KV cache, training throughput fp32 vs bf16.

    OMP_NUM_THREADS=1 python bench/bench_dalle_sampling.py [--grids 8 16] [--train-batch 16] [--steps 4]
        [--bf16-anyway]

bf16 (its matmul peak, its training row) runs only on a CPU with native bf16 (``zoo.precision.bench_bf16``);
``--bf16-anyway`` times it elsewhere too (the emulation, ~100x slower than fp32 on an AVX2-only CPU).

1. Matmul peak of this machine (fp32 and bf16), measured here with a large square matmul.
2. Sampling seconds per image, cached vs uncached (the uncached path recomputes the whole prefix every step), for
   the ``shapes`` preset with its grid overridden to 8x8 and 16x16, at batch 1 and 8 (DALL·E draws many samples
   per caption for reranking); ratio printed (requirement: >= 10x at 16x16). At batch 1 a cached step of this
   7M-parameter model is bound by reading the weights (~28 MB per token), so batching raises the ratio.
3. Training tokens/s for the ``shapes`` preset, fp32 vs bf16 autocast, and model FLOPs utilisation (MFU) against
   the measured peak of the same dtype. Model FLOPs per step = 6 * (matmul parameters) * tokens + attention
   (QK^T and AV as dense masked matmuls: 4 * L^2 * heads * head_dim per layer forward, x3 for forward+backward).
4. Peak memory: the process's peak resident set size (``ru_maxrss``) after each part (monotonic: a part's own
   peak is visible only where it exceeds the earlier ones).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from zoo.models.dalle.model import PRESETS, DalleTransformer, DalleTransformerConfig
from zoo.models.presets import resolve_preset
from zoo.nn.sampling import sample_image_tokens
from zoo.precision import bench_bf16, describe_cpu


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports ru_maxrss in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 6) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def sampling_seconds(model, batch: int, use_cache: bool) -> float:
    text = torch.randint(1, model.cfg.text_vocab, (batch, model.cfg.text_len))
    t0 = time.perf_counter()
    sample_image_tokens(model, text, top_k=64, use_cache=use_cache, generator=torch.Generator().manual_seed(0))
    return (time.perf_counter() - t0) / batch


def train_flops_per_step(model, batch: int) -> float:
    c = model.cfg
    matmul_params = sum(
        p.numel() for n, p in model.named_parameters() if p.dim() == 2 and ("transformer" in n or "head" in n)
    )
    seq = c.seq_len - 1
    tokens = batch * seq
    attn = 4 * seq * seq * c.n_heads * c.head_dim * c.n_layers * batch
    return 6 * matmul_params * tokens + 3 * attn


def train_tokens_per_s(model, batch: int, steps: int, bf16: bool) -> tuple[float, float]:
    c = model.cfg
    text = torch.randint(1, c.text_vocab, (batch, c.text_len))
    image = torch.randint(0, c.image_vocab, (batch, c.grid_h, c.grid_w))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model.loss(text, image)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t0) / steps
    return batch * (c.seq_len - 1) / dt, train_flops_per_step(model, batch) / dt


def main():
    print(describe_cpu())  # what the figures below were measured on
    ap = argparse.ArgumentParser()
    ap.add_argument("--grids", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--sample-batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--bf16-anyway", action="store_true", help="time bf16 even where the CPU only emulates it")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    dtypes = [("fp32", torch.float32)] + ([("bf16", torch.bfloat16)] if bench_bf16(args.bf16_anyway) else [])

    peak = {name: matmul_peak(dt) for name, dt in dtypes}
    if "bf16" in peak:
        print(
            f"matmul peak (2048^3): fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s "
            f"({peak['bf16'] / peak['fp32']:.1f}x)"
        )
    else:
        print(f"matmul peak (2048^3): fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s")

    print("\nsampling, shapes preset (dim 256, 8 layers, text 48), top_k=64, seconds per image:")
    for g in args.grids:
        cfg = resolve_preset(PRESETS, DalleTransformerConfig, "shapes", {"grid_h": g, "grid_w": g}, "DALL·E")
        model = DalleTransformer(cfg).eval()
        for b in args.sample_batches:
            cached = sampling_seconds(model, b, True)
            uncached = sampling_seconds(model, b, False)
            print(
                f"  {g:>2}x{g:<2} ({g * g:>4} tokens) batch {b}: cached {cached:7.3f} s/img  "
                f"uncached {uncached:7.3f} s/img  speed-up {uncached / cached:5.1f}x  "
                f"(peak RSS so far {peak_rss_mb():.0f} MB)"
            )

    model = DalleTransformer(PRESETS["shapes"]).train()
    n = sum(p.numel() for p in model.parameters())
    print(f"\ntraining, shapes preset ({n / 1e6:.1f}M params, seq {model.cfg.seq_len - 1}), batch {args.train_batch}:")
    for name, dtype in dtypes:
        tps, flops = train_tokens_per_s(model, args.train_batch, args.steps, dtype == torch.bfloat16)
        print(
            f"  {name}: {tps:8.0f} tokens/s  {flops / 1e9:6.1f} GFLOP/s  MFU {100 * flops / peak[name]:5.1f}%  "
            f"(peak RSS so far {peak_rss_mb():.0f} MB)"
        )


if __name__ == "__main__":
    main()
