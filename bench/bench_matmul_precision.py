"""fp32 vs bf16 matmul throughput on this CPU: the measurement behind ``trainer.precision=auto``.

    python bench/bench_matmul_precision.py            # 1024² x 1024², all torch threads
    python bench/bench_matmul_precision.py --threads 1 --size 2048

On a CPU with native bf16 (AVX512-BF16 / AMX) bf16 is several times faster than fp32; on an AVX2-only CPU torch
emulates it and bf16 is ~100x slower (the issue's figure: 128 GFLOP/s fp32 vs 0.9 GFLOP/s bf16), which is why
``precision: auto`` picks 32-true there. Prints the ``describe_cpu()`` line first, then GFLOP/s per dtype and what
``trainer.precision=auto`` resolves to on this machine.
"""

from __future__ import annotations

import argparse
import time

import torch

from zoo.precision import describe_cpu, resolve_precision


def gflops(n: int, dtype: torch.dtype, min_seconds: float) -> float:
    """Best-of-repeats GFLOP/s of an (n, n) @ (n, n) matmul in ``dtype``; times at least ``min_seconds``."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm-up (kernel selection, oneDNN primitive creation)
    best, spent = float("inf"), 0.0
    while spent < min_seconds:
        t0 = time.perf_counter()
        a @ b
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
    return 2 * n**3 / best / 1e9


def main() -> None:
    print(describe_cpu())  # what the figures below were measured on
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=1.0, help="minimum timed seconds per dtype")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    fp32 = gflops(args.size, torch.float32, args.seconds)
    bf16 = gflops(args.size, torch.bfloat16, args.seconds)
    precision, why = resolve_precision("auto", "cpu")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.size}² matmul")
    print(f"fp32 {fp32:8.1f} GFLOP/s")
    print(f"bf16 {bf16:8.1f} GFLOP/s ({bf16 / fp32:.2f}x fp32)")
    print(f"trainer.precision=auto -> {precision} ({why})")


if __name__ == "__main__":
    main()
