"""Image-tokenizer throughput: training images/s and encode images/s, fp32 vs bf16 autocast, and peak memory.

    python bench/bench_tokenizers.py [--presets shapes paper] [--steps 5] [--bf16-anyway]

The bf16 rows run only on a CPU with native bf16 (``zoo.precision.bench_bf16``); ``--bf16-anyway`` times
them elsewhere too (the emulation, ~100x slower than fp32 on an AVX2-only CPU).

Peak memory is the process's max resident set size (resource.getrusage), read after each configuration, so it
is cumulative: the largest configuration run so far. The paper preset (256 px) runs at batch 2.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from zoo.precision import bench_bf16, describe_cpu


def bench(model_name: str, preset: str, precision: str, steps: int) -> dict:
    from zoo.models.dvae.lit import DVAELit
    from zoo.models.vqvae.lit import VQVAELit

    lit = (DVAELit if model_name == "dvae" else VQVAELit)(preset=preset)
    tok = lit.tokenizer
    res = tok.resolution
    bs = 64 if res <= 64 else 2
    x = torch.rand(bs, 3, res, res) * 2 - 1
    opt = torch.optim.AdamW(lit.parameters(), lr=1e-4)
    auto = dict(device_type="cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def step():
        with torch.autocast(**auto):
            loss = lit.forward_loss(x)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    train_ips = bs * steps / (time.perf_counter() - t)
    lit.eval()
    with torch.no_grad(), torch.autocast(**auto):
        tok.encode(x)
        t = time.perf_counter()
        for _ in range(steps):
            tok.encode(x)
        enc_ips = bs * steps / (time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"train": train_ips, "encode": enc_ips, "peak_mb": peak, "bs": bs, "res": res}


def main() -> None:
    print(describe_cpu())  # what the figures below were measured on
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["shapes", "paper"])
    ap.add_argument("--models", nargs="+", default=["dvae", "vqvae"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--bf16-anyway", action="store_true", help="time bf16 even where the CPU only emulates it")
    args = ap.parse_args()
    print(f"threads={torch.get_num_threads()}")
    precisions = ("fp32", "bf16") if bench_bf16(args.bf16_anyway) else ("fp32",)
    print(
        f"{'model':6} {'preset':7} {'res':>4} {'bs':>3} {'prec':5} {'train img/s':>12} {'encode img/s':>13} {'peak RSS MB':>12}"
    )
    for m in args.models:
        for p in args.presets:
            for prec in precisions:
                r = bench(m, p, prec, args.steps)
                print(
                    f"{m:6} {p:7} {r['res']:>4} {r['bs']:>3} {prec:5} {r['train']:>12.1f} {r['encode']:>13.1f} "
                    f"{r['peak_mb']:>12.0f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
