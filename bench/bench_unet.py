"""ADM U-Net benchmark on the CPU: training images/s and forward latency, fp32 vs bf16, contiguous vs channels_last.

    OMP_NUM_THREADS=1 python bench/bench_unet.py [--preset shapes] [--size 32] [--batch 16] [--steps 4] [--threads N]
    OMP_NUM_THREADS=1 python bench/bench_unet.py --flops     # FLOPs per step, ours vs peer; per-convolution GFLOP/s
    PEER_DALLE2=<checkout> OMP_NUM_THREADS=1 python bench/bench_unet.py --compare-only --threads 1   # the 1.5x figure

On a machine shared with other jobs use one thread: OpenMP threads competing for busy cores were measured several
times slower than one thread (fp32 forward 7.2 s per batch with 2 threads at load average 5, vs 1.3 s with 1).
    PEER_DALLE2=/path/to/DALLE2-pytorch python bench/bench_unet.py     # also time lucidrains' Unet

1. The machine: torch's CPU capability (AVX2 / AVX512 / ...) and whether the CPU has native bf16 instructions
   (avx512_bf16 / amx_bf16 flags). Without them bf16 autocast is EMULATED and usually slower than fp32.
2. For the preset (default ``shapes``: width 64, mult (1,2,4), 2 res blocks, attention at 16 and 8) at 32 px,
   batch 16, epsilon-prediction training step = forward + MSE backward + AdamW step: images/s, and no-grad forward
   ms per batch, for fp32 / bf16 autocast x contiguous / channels_last (the memory format of the weights AND the
   input). Median of ``--steps`` timed steps after 2 warm-up steps. bf16 rows only where the CPU has native bf16
   (``--bf16-anyway`` times the emulation: minutes a step on an AVX2-only CPU).
3. Peak memory: the process's peak resident set size (ru_maxrss) after each configuration (monotonic: a
   configuration's own peak shows only where it exceeds the earlier ones).
4. Optional peer: lucidrains/DALLE2-pytorch ``Unet(dim=64, dim_mults=(1,2,4))`` (its default: attention only in
   the middle; also with ``self_attn=(False, True, True)``, attention at 16 and 8 like ours) on the same batch,
   when ``PEER_DALLE2`` points at a checkout whose dependencies (einops, kornia, x-clip, ...) are installed.
5. With the peer: ours / peer training images/s (the issue's 1.5x), both with attention at 16 and 8, timed
   interleaved on the CPU-time clock (``compare_with_peer``), per precision and layout; also in the last line,
   ``BENCH_JSON {...}``, which ``bench/run_all.py`` keeps.
6. Our convolutions go through ``zoo.nn.conv`` as in training (``--conv-backend``, default ``auto``: our Winograd
   F(4x4, 3x3) kernels on an AVX2 CPU with one thread (NNPACK's where they are unavailable), torch's otherwise); a
   line says which ran. ``--flops`` counts them as direct convolutions whatever ran.

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from collections import Counter
from contextlib import nullcontext
from typing import Optional

import torch
import torch.nn.functional as F

from zoo.nn.unet import UNET_PRESETS, UNet, count_params, make_unet_config


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KB


def _timed(fn, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_net(
    make_net, call, in_channels: int, size: int, batch: int, steps: int, bf16: bool, channels_last: bool
) -> tuple[float, float]:
    """(train images/s, forward ms) of ``call(net, x_t, t)`` for one precision / layout."""
    step, net, x, t, amp = train_step_fn(make_net, call, in_channels, size, batch, bf16, channels_last)
    step_s = _timed(step, steps)
    net.eval()

    @torch.no_grad()
    def forward():
        with amp():
            call(net, x, t)

    fwd_s = _timed(forward, steps)
    return batch / step_s, fwd_s * 1e3


def precisions(args) -> tuple[bool, ...]:
    """bf16 flags to time: fp32 always, bf16 autocast where ``main`` decided to (``zoo.precision.bench_bf16``)."""
    return (False, True) if args.bf16 else (False,)


def interleaved_best(fns: dict, reps: int, calls: int, warmup: int = 0, clock=time.process_time) -> dict:
    """Seconds per call of each function: ``reps`` rounds, each running every function ``calls`` times in turn
    (ours, peer, ours, peer, ...), on the process's CPU-time clock, best round per function, after ``warmup``
    untimed calls of each. A load change on a shared machine hits every function alike, and time slices lost to
    other jobs are not counted. With several threads the CPU-time clock also counts the time idle pool threads
    spin; pass ``clock=time.perf_counter`` there (and keep the machine otherwise idle)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    best = {k: float("inf") for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = clock()
            for _ in range(calls):
                fn()
            best[k] = min(best[k], (clock() - t0) / calls)
    return best


def run_table(name: str, make_net, call, in_channels: int, args) -> None:
    print(f"\n{name}: {args.size} px, batch {args.batch}, median of {args.steps} steps")
    print(f"  {'precision':<10} {'layout':<15} {'train img/s':>12} {'fwd ms/batch':>13} {'peak RSS MB':>12}")
    for bf16 in precisions(args):
        for cl in (False, True):
            ips, fwd_ms = bench_net(make_net, call, in_channels, args.size, args.batch, args.steps, bf16, cl)
            print(
                f"  {'bf16' if bf16 else 'fp32':<10} {'channels_last' if cl else 'contiguous':<15} "
                f"{ips:>12.1f} {fwd_ms:>13.1f} {peak_rss_mb():>12.0f}",
                flush=True,
            )


def peer_unet_class():
    """lucidrains/DALLE2-pytorch's ``Unet`` from the ``PEER_DALLE2`` checkout, or None (with the reason printed)."""
    path = os.environ.get("PEER_DALLE2")
    if not path:
        print("\npeer lucidrains/DALLE2-pytorch: skipped (set PEER_DALLE2=<dir of a DALLE2-pytorch checkout>)")
        return None
    sys.path.insert(0, path)
    try:
        from dalle2_pytorch.dalle2_pytorch import Unet
    except Exception as exc:  # its own dependency list is long (einops, kornia, x-clip, coca-pytorch, ...)
        print(f"\npeer lucidrains/DALLE2-pytorch: skipped, import failed: {type(exc).__name__}: {exc}")
        return None
    return Unet


def peer_call(net, x, t):
    return net(x, t.float(), image_embed=None)


def peer_dalle2(args) -> None:
    PeerUnet = peer_unet_class()
    if PeerUnet is None:
        return
    for label, kw in (
        ("default: attention in the middle only", {}),
        ("self_attn=(False, True, True): attention at 16 and 8", {"self_attn": (False, True, True)}),
    ):

        def make(kw=kw):
            return PeerUnet(dim=64, dim_mults=(1, 2, 4), channels=3, **kw)

        n = sum(p.numel() for p in make().parameters())
        run_table(
            f"peer DALLE2-pytorch Unet(dim=64, dim_mults=(1,2,4)), {label}, {n / 1e6:.1f}M params",
            make,
            peer_call,
            3,
            args,
        )


def train_step_fn(make_net, call, in_channels: int, size: int, batch: int, bf16: bool, channels_last: bool):
    """One epsilon-prediction training step (forward, MSE, backward, fused AdamW: one pass over the parameters,
    both sides) of a fresh network on a fixed batch, as a closure, run once here (the warm-up allocations);
    returned with the network, its inputs and the autocast context factory: (step, net, x, t, amp)."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = make_net().to(memory_format=fmt).train()
    x = torch.randn(batch, in_channels, size, size).to(memory_format=fmt)
    noise = torch.randn_like(x)
    t = torch.randint(0, 1000, (batch,))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
    amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext

    def step():
        with amp():
            out = call(net, x, t)
        loss = F.mse_loss(out.float()[:, : noise.shape[1]], noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    return step, net, x, t, amp


def compare_with_peer(make_ours, call_ours, in_channels: int, args) -> Optional[dict]:
    """The issue's figure, ours / peer training images/s, both sides at attention 16 and 8, timed interleaved
    (``interleaved_best``: ``--reps`` rounds of ``--steps`` steps each). One row per precision and layout."""
    if args.preset != "shapes":  # the peer below is built as the shapes preset's twin (width 64, mult 1,2,4)
        print(f"\nours / peer: skipped (the peer is configured as the shapes preset; --preset {args.preset})")
        return None
    PeerUnet = peer_unet_class()
    if PeerUnet is None:
        return None
    attn_16_8 = {"dim": 64, "dim_mults": (1, 2, 4), "channels": 3, "self_attn": (False, True, True)}
    print(
        f"\nours / peer (self_attn at 16 and 8), {args.size} px, batch {args.batch}, interleaved, CPU-time clock, "
        f"best of {args.reps} rounds of {args.steps} steps:"
    )
    rows = []
    for bf16 in precisions(args):
        for cl in (False, True):
            shape = (args.size, args.batch, bf16, cl)
            sides = {
                "ours": train_step_fn(make_ours, call_ours, in_channels, *shape)[0],
                "peer": train_step_fn(lambda: PeerUnet(**attn_16_8), peer_call, 3, *shape)[0],
            }
            best = interleaved_best(sides, args.reps, args.steps)
            ours_ips, peer_ips = args.batch / best["ours"], args.batch / best["peer"]
            row = {
                "precision": "bf16" if bf16 else "fp32",
                "layout": "channels_last" if cl else "contiguous",
                "ours_img_s": round(ours_ips, 2),
                "peer_img_s": round(peer_ips, 2),
                "ratio": round(ours_ips / peer_ips, 3),
            }
            rows.append(row)
            print(
                f"  {row['precision']:<5} {row['layout']:<14} ours {ours_ips:6.2f} img/s | peer {peer_ips:6.2f} img/s | "
                f"ours / peer = {row['ratio']:.2f}x (target 1.5x)",
                flush=True,
            )
    return {"rows": rows, "target": 1.5}


def flop_report(make_ours, call_ours, in_channels: int, args) -> None:
    """``--flops``: FLOPs of one training step (forward + backward, torch.utils.flop_counter; SDPA not counted) of
    ours and of the peer (when ``PEER_DALLE2`` imports), and a per-shape table of our convolutions' GFLOP/s forward
    and backward: where the fp32 step's time goes and how close each convolution runs to the CPU's peak."""
    from torch.utils.flop_counter import FlopCounterMode

    from zoo.nn.conv import set_conv_backend

    x = torch.randn(args.batch, in_channels, args.size, args.size)
    t = torch.randint(0, 1000, (args.batch,))
    nets = [("ours", make_ours, call_ours)]
    PeerUnet = peer_unet_class()
    if PeerUnet is not None:
        attn_16_8 = {"dim": 64, "dim_mults": (1, 2, 4), "channels": 3, "self_attn": (False, True, True)}
        nets.append(("peer (self_attn at 16 and 8)", lambda: PeerUnet(**attn_16_8), peer_call))
    print(
        f"\nFLOPs of one training step, {args.size} px, batch {args.batch} (attention kernels not counted; our "
        "convolutions counted as direct ones, conv_backend=torch):"
    )
    for name, make, call in nets:
        counter = FlopCounterMode(display=False)
        # Count the network's work, not a route's: FlopCounterMode does not see NNPACK's or our Winograd kernels'
        # convolutions (or counts only their transforms' bmm), so under conv_backend=auto on an AVX2 CPU ours
        # came out at ~60% of its FLOPs (128 of 213 G at batch 16 with NNPACK), and the ours / peer ratio with it.
        set_conv_backend("torch")
        try:
            with counter:
                call(make(), x, t).float().square().mean().backward()
        finally:
            set_conv_backend(args.conv_backend)
        by_op = {str(k).split(".")[-1]: v / 1e9 for k, v in counter.get_flop_counts()["Global"].items()}
        print(
            f"  {name}: {counter.get_total_flops() / 1e9:.1f} GFLOP ("
            + ", ".join(f"{k} {v:.1f}" for k, v in by_op.items())
            + ")"
        )

    shapes: Counter[tuple] = Counter()  # (in, out, kernel, stride, input size) -> calls per forward

    def record(m, inp, out):
        shapes[(inp[0].shape[1], m.out_channels, m.kernel_size[0], m.stride[0], inp[0].shape[2])] += 1

    net = make_ours()
    hooks = [m.register_forward_hook(record) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    call_ours(net, x, t)
    for h in hooks:
        h.remove()
    print(
        "\nour convolutions alone through torch's kernels (fp32, contiguous; the routes: bench_conv_backends.py), "
        "GFLOP/s and ms per call; backward = input + weight grads:"
    )
    total_f = total_b = 0.0
    for (cin, cout, k, stride, hw), count in sorted(shapes.items(), key=lambda kv: (-kv[0][4], kv[0][:2])):
        conv = torch.nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)
        xin = torch.randn(args.batch, cin, hw, hw, requires_grad=cin != in_channels)
        grad = torch.randn_like(conv(xin))
        flops = 2 * args.batch * cin * cout * k * k * grad.shape[2] * grad.shape[3]
        fwd = _timed(lambda: conv(xin), args.steps)
        both = _timed(lambda: conv(xin).backward(grad), args.steps)
        bwd = max(both - fwd, 1e-9)
        total_f, total_b = total_f + fwd * count, total_b + bwd * count
        n_grads = 2 if xin.requires_grad else 1
        print(
            f"  {cin:4d} -> {cout:4d} k{k} stride {stride} at {hw:2d} px (x{count:2d}): forward {flops / fwd / 1e9:6.1f} "
            f"GFLOP/s {fwd * 1e3:6.1f} ms, backward {n_grads * flops / bwd / 1e9:6.1f} GFLOP/s {bwd * 1e3:6.1f} ms"
        )
    print(f"  per training step: forward {total_f:.2f} s, backward {total_b:.2f} s")


def main() -> None:
    from zoo.precision import bench_bf16, describe_cpu

    print(describe_cpu())  # what the figures below were measured on
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="shapes", choices=sorted(UNET_PRESETS))
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--flops", action="store_true", help="FLOPs per step (ours, peer) and our convolutions' rates")
    ap.add_argument("--reps", type=int, default=4, help="interleaved rounds of the ours / peer comparison")
    ap.add_argument("--compare-only", action="store_true", help="only the interleaved ours / peer ratio")
    ap.add_argument("--bf16-anyway", action="store_true", help="time bf16 even where the CPU only emulates it")
    ap.add_argument(
        "--conv-backend",
        default="auto",
        choices=("auto", "torch", "nnpack", "winograd"),
        help="our U-Net's 3x3 convolutions (zoo.nn.conv; auto: our Winograd kernels on AVX2 CPUs with one thread)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # before NNPACK's first call, which fixes its pool's size
    from zoo.nn.conv import effective_conv_backend, set_conv_backend

    set_conv_backend(args.conv_backend)

    # (native bf16 is describe_cpu's, first line: it honours ZOO_FORCE_NATIVE_BF16 as the bf16 rows' decision does)
    print(f"torch {torch.__version__}; cpu capability: {torch.backends.cpu.get_cpu_capability()}")
    # Timings on a shared machine are only as good as its idle cores: print the load next to the thread count.
    print(
        f"threads: {torch.get_num_threads()} of {os.cpu_count()} cores; load average (1, 5, 15 min): "
        + ", ".join(f"{v:.1f}" for v in os.getloadavg())
    )
    backend, why = effective_conv_backend()
    print(f"our convolutions: conv_backend={args.conv_backend} -> {backend} ({why})")
    summary_conv = f"{args.conv_backend} -> {backend}"
    print("parameters (meta device): " + ", ".join(f"{n} {count_params(n) / 1e6:,.2f}M" for n in UNET_PRESETS))

    cfg = make_unet_config(args.preset)
    if cfg.context_dim is not None:  # time the unconditional net: context cost is the text encoder's business
        cfg = make_unet_config(args.preset, context_dim=None)
    if args.flops:
        flop_report(lambda: UNet(cfg), lambda net, x, t: net(x, t), cfg.in_channels, args)
        return
    args.bf16 = bench_bf16(args.bf16_anyway)  # decided once, with the reason printed when no
    summary = {
        "machine": describe_cpu(),
        "preset": args.preset,
        "size": args.size,
        "batch": args.batch,
        "conv_backend": summary_conv,
    }
    if args.compare_only:
        summary["peer"] = compare_with_peer(lambda: UNet(cfg), lambda net, x, t: net(x, t), cfg.in_channels, args)
        print("BENCH_JSON " + json.dumps(summary))
        return
    n = sum(p.numel() for p in UNet(cfg).parameters())
    run_table(
        f"zoo UNet preset {args.preset!r} ({n / 1e6:.1f}M params)",
        lambda: UNet(cfg),
        lambda net, x, t: net(x, t),
        cfg.in_channels,
        args,
    )
    peer_dalle2(args)
    summary["peer"] = compare_with_peer(lambda: UNet(cfg), lambda net, x, t: net(x, t), cfg.in_channels, args)
    print(f"\npeak RSS of the whole run: {peak_rss_mb():.0f} MB")
    print("BENCH_JSON " + json.dumps(summary))


if __name__ == "__main__":
    main()
