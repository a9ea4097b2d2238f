"""Which CPU convolution kernel is fastest for the U-Net's 3x3 convolutions: oneDNN (torch's default), our
Winograd F(4x4, 3x3) kernels (``zoo.nn.winograd``) or NNPACK.

    OMP_NUM_THREADS=1 python bench/bench_conv_backends.py [--route winograd|nnpack] [--batch 16] [--reps 3] [--threads N]

Each run compares oneDNN with one route (``--route``, default ``winograd``: forward, input AND weight gradient by
our kernels; ``nnpack``: NNPACK's forward and input gradient, oneDNN's weight gradient); run it once per route.

Why: the ADM U-Net's fp32 training step is convolution-bound (``bench/bench_unet.py --flops``: its 3x3
convolutions run at ~90% of the CPU's fp32 matmul rate through oneDNN), so at equal work the step cannot get much
faster with the same kernels. NNPACK, also compiled into torch's CPU builds, computes 3x3 stride-1 convolutions
with Winograd transforms (fewer multiplies than the direct convolution, at ~10x its rounding error in fp32).
``zoo.nn.conv.Conv2d`` (the U-Net's convolution) routes the forward and the input gradient through it when the
process's ``conv_backend`` is ``nnpack`` (``auto`` picks it on AVX2 CPUs); this script is the measurement behind
that choice, on this CPU:

1. per convolution shape of the ``shapes`` U-Net at 32 px (batch ``--batch``): forward, and forward + backward,
   through oneDNN and through the route (``zoo.nn.conv._WinogradConv3x3`` or ``_NNPackConv3x3``), with the route's
   output error against a float64 reference next to oneDNN's, and whether the route's thresholds
   (``zoo.nn.conv._winograd_work`` / ``_enough_work``) would take it;
2. single images (batch 1, 64-512 px), forward only: what an upsampler's sampler runs;
3. the whole ``shapes`` U-Net under ``conv_backend=torch`` and the route's backend: training step (forward, MSE, backward,
   fused AdamW) at batch ``--batch``, and the no-grad forward (what a sampler runs) at batch ``--batch`` and 1;
4. the shapes upsamplers (width 32): one image's sampling forward at 128 / 512 px and a training step on crops;
5. taming's VQGAN (the ``vqgan`` tokenizer's published layouts): one 256 px image's encode and decode.

Interleaved rounds, best round per side (``bench_unet.interleaved_best``): on the CPU-time clock with one thread,
on the wall clock with more (keep the machine otherwise idle then).
NNPACK sizes its thread pool at its first call (from ``torch.get_num_threads()``), so ``--threads`` is set before
anything runs. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench_unet import interleaved_best  # noqa: E402  (bench/ is sys.path[0] when a script there runs)

from zoo.nn import conv as zconv  # noqa: E402
from zoo.nn.unet import UNet, make_unet_config  # noqa: E402
from zoo.precision import describe_cpu  # noqa: E402


def eligible(m: nn.Module) -> bool:
    """A 3x3 stride-1 padding-1 convolution (whatever its channels): the shapes the route can compute."""
    return (
        isinstance(m, nn.Conv2d)
        and m.kernel_size == (3, 3)
        and m.stride == (1, 1)
        and m.padding == (1, 1)
        and m.groups == 1
    )


def conv_shapes(net: UNet, x: torch.Tensor, t: torch.Tensor) -> list[tuple[int, int, int]]:
    """Distinct (in, out, input size) of the network's 3x3 stride-1 convolutions, largest size first."""
    seen = []

    def record(m, inp, out):
        if eligible(m):
            key = (inp[0].shape[1], m.out_channels, inp[0].shape[2])
            if key not in seen:
                seen.append(key)

    hooks = [m.register_forward_hook(record) for m in net.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        net(x, t)
    for h in hooks:
        h.remove()
    return sorted(seen, key=lambda k: (-k[2], k[0], k[1]))


ROUTE = "winograd"  # --route: set by main()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--route", choices=("winograd", "nnpack"), default="winograd", help="the route against oneDNN")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3, help="interleaved rounds (best kept)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--skip-shapes", action="store_true", help="no per-convolution tables")
    ap.add_argument("--skip-upsamplers", action="store_true", help="no upsampler rows")
    ap.add_argument("--skip-vqgan", action="store_true", help="no taming VQGAN rows")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)  # before NNPACK's first call, which fixes its pool's size
    # one thread: the CPU-time clock (robust to other jobs); more: the wall clock, since CPU time would also count
    # the spinning of idle pool threads (NNPACK's and OpenMP's differ there), so keep the machine otherwise idle
    clock = time.process_time if args.threads == 1 else time.perf_counter
    print(describe_cpu())
    backend, why = zconv.effective_conv_backend(zconv.resolve_conv_backend("auto"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); conv_backend=auto: {backend} ({why})")
    global ROUTE
    ROUTE = args.route
    if ROUTE == "nnpack" and not zconv._nnpack_available():
        print("NNPACK: not available in this torch build; nothing to compare")
        return
    if ROUTE == "winograd" and not zconv.winograd.available()[0]:
        print(f"Winograd kernels unavailable: {zconv.winograd.available()[1]}")
        return
    route = (zconv._WinogradConv3x3 if ROUTE == "winograd" else zconv._NNPackConv3x3).apply
    label = {"winograd": "Winograd", "nnpack": "NNPACK"}[ROUTE]

    def thresholds(cin: int, cout: int, batch: int, hw: int) -> bool:
        if ROUTE == "winograd":
            return min(cin, cout) >= zconv.MIN_CHANNELS_LARGE and zconv._winograd_work(cin, cout, batch, hw, hw)
        return zconv._enough_work(min(cin, cout), batch, hw * hw)

    def timed(onednn, nnpack) -> dict:
        """Seconds per call of each, interleaved, best of ``--reps`` rounds of 2 calls."""
        return interleaved_best({"onednn": onednn, ROUTE: nnpack}, args.reps, calls=2, warmup=1, clock=clock)

    cfg = make_unet_config("shapes", context_dim=None)
    torch.manual_seed(0)
    net = UNet(cfg)
    for m in net.modules():  # the zero-initialised output convolutions would make the error check vacuous
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=(2.0 / (m.in_channels * 9)) ** 0.5)
    x = torch.randn(args.batch, cfg.in_channels, args.size, args.size)
    t = torch.randint(0, 1000, (args.batch,))

    if not args.skip_shapes:
        print(f"\n3x3 stride-1 convolutions of the shapes U-Net at {args.size} px, batch {args.batch}: ms per call")
        print(
            f"  {'in':>4} {'out':>4} {'px':>3} | {'oneDNN fwd':>10} {label + ' fwd':>12} | {'oneDNN f+b':>10}"
            f" {label + ' f+b':>12} | rel. error oneDNN / {label} | routed by the thresholds"
        )
        for cin, cout, hw in conv_shapes(net, x, t):
            xin = torch.randn(args.batch, cin, hw, hw, requires_grad=True)
            w = (torch.randn(cout, cin, 3, 3) * (2.0 / (cin * 9)) ** 0.5).requires_grad_()
            b = torch.randn(cout, requires_grad=True)
            grad = torch.randn(args.batch, cout, hw, hw)
            ref = F.conv2d(xin.double(), w.double(), b.double(), padding=1)
            with torch.no_grad():
                err = {
                    name: float((y.double() - ref).abs().max() / ref.abs().max())
                    for name, y in (("onednn", F.conv2d(xin, w, b, padding=1)), (ROUTE, route(xin, w, b)))
                }
                fwd = timed(lambda: F.conv2d(xin, w, b, padding=1), lambda: route(xin, w, b))
            both = timed(lambda: F.conv2d(xin, w, b, padding=1).backward(grad), lambda: route(xin, w, b).backward(grad))
            routed = thresholds(cin, cout, args.batch, hw)
            print(
                f"  {cin:>4} {cout:>4} {hw:>3} | {fwd['onednn'] * 1e3:>10.1f} {fwd[ROUTE] * 1e3:>12.1f} | "
                f"{both['onednn'] * 1e3:>10.1f} {both[ROUTE] * 1e3:>12.1f} | "
                f"{err['onednn']:.1e} / {err[ROUTE]:.1e}{'':>13} | {'yes' if routed else 'no'}",
                flush=True,
            )

    if not args.skip_shapes:
        # what an upsampler's sampler runs: one image at a time, large
        print("\nsingle images (batch 1), forward only (a sampler's call): ms per call")
        print(f"  {'in=out':>6} {'px':>4} | {'oneDNN':>8} {label:>8} | routed by the thresholds")
        for ch, hw in (
            (32, 64),
            (32, 128),
            (32, 512),
            (64, 64),
            (128, 64),
            (192, 64),
            (64, 128),
            (128, 128),
            (64, 256),
        ):
            xin, w, b = torch.randn(1, ch, hw, hw), torch.randn(ch, ch, 3, 3) * (2.0 / (ch * 9)) ** 0.5, torch.randn(ch)
            with torch.no_grad():
                fwd = timed(lambda: F.conv2d(xin, w, b, padding=1), lambda: route(xin, w, b))
            routed = thresholds(ch, ch, 1, hw)
            print(
                f"  {ch:>6} {hw:>4} | {fwd['onednn'] * 1e3:>8.1f} {fwd[ROUTE] * 1e3:>8.1f} | {'yes' if routed else 'no'}",
                flush=True,
            )

    # the whole network under each backend (the same weights: one network, the backend switched around each call)
    def under(name, fn):
        def run():
            zconv.set_conv_backend(name)
            fn()

        return run

    with torch.no_grad():
        zconv.set_conv_backend("torch")
        y_torch = net(x, t)
        zconv.set_conv_backend(ROUTE)
        y_route = net(x, t)
    rel = float((y_torch - y_route).abs().max() / y_torch.abs().max())
    noise = torch.randn_like(x)
    nets = {"torch": net, ROUTE: UNet(cfg)}
    nets[ROUTE].load_state_dict(net.state_dict())
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True) for k, m in nets.items()}

    def train_step(name):
        def step():
            loss = F.mse_loss(nets[name](x, t)[:, : cfg.in_channels], noise)
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            opts[name].step()

        return step

    def forward(batch):
        @torch.no_grad()
        def run():
            net(x[:batch], t[:batch])

        return run

    print(f"\nthe shapes U-Net, {args.size} px; outputs differ by {rel:.1e} (max abs / max abs)")
    summary: dict[str, float] = {}
    rows = [(f"training step, batch {args.batch}", {k: train_step(k) for k in nets}, 2)]
    rows += [(f"no-grad forward, batch {b}", {k: forward(b) for k in nets}, 2 if b > 1 else 8) for b in (args.batch, 1)]
    for row, fns, calls in rows:
        best = interleaved_best({k: under(k, fn) for k, fn in fns.items()}, args.reps, calls, 1, clock)
        summary[f"shapes unet {row}"] = round(best["torch"] / best[ROUTE], 3)
        print(
            f"  {row:<26} torch {best['torch'] * 1e3:.0f} ms | {ROUTE} {best[ROUTE] * 1e3:.0f} ms "
            f"({best['torch'] / best[ROUTE]:.2f}x)",
            flush=True,
        )

    if not args.skip_upsamplers:
        summary.update(upsampler_rows(under, args.reps, clock))
    if not args.skip_vqgan:
        summary.update(vqgan_rows(under, args.reps, clock))
    zconv.set_conv_backend(None)
    print(
        "BENCH_JSON " + json.dumps({"machine": describe_cpu(), "threads": args.threads, f"torch_over_{ROUTE}": summary})
    )


def backend_row(label: str, under, fn, reps: int, clock) -> float:
    """Time ``fn`` under conv_backend=torch and the route's (interleaved, one call a round), print a row, return
    torch time / route time."""
    best = interleaved_best({k: under(k, fn) for k in ("torch", ROUTE)}, reps, 1, 1, clock)
    ratio = best["torch"] / best[ROUTE]
    print(
        f"  {label} torch {best['torch'] * 1e3:.0f} ms | {ROUTE} {best[ROUTE] * 1e3:.0f} ms ({ratio:.2f}x)",
        flush=True,
    )
    return round(ratio, 3)


def upsampler_rows(under, reps: int, clock) -> dict:
    """The shapes upsamplers (SuperResUNet, width 32): one image's sampling forward at the full size and a training
    step on a batch of 8 crops, under each backend; returns {row: torch time / route time}."""
    from zoo.models.upsampler.model import UPSAMPLER_PRESETS
    from zoo.nn.unet import SuperResUNet

    ratios = {}
    # which of their convolutions the route takes: the thresholds' column of the tables above (NNPACK: 32-channel
    # ones from 128 px; our Winograd kernels: any of 32+ channels with enough tiles)
    print(f"\nthe shapes upsamplers (width 32), conv_backend=torch vs {ROUTE}")
    for name in ("shapes_32_128", "shapes_128_512"):
        up = UPSAMPLER_PRESETS[name]
        torch.manual_seed(0)
        net = SuperResUNet(up.unet_config())
        x, low = torch.randn(1, 3, up.image_size, up.image_size), torch.randn(1, 3, up.low_res_size, up.low_res_size)
        crop, b = up.train_crop, 8
        xc, lc = torch.randn(b, 3, crop, crop), torch.randn(b, 3, crop // up.scale, crop // up.scale)
        tc = torch.randint(0, 1000, (b,))
        opt = torch.optim.AdamW(net.parameters(), lr=1e-5, fused=True)

        @torch.no_grad()
        def sample_call():
            net(x, torch.tensor([500]), low_res=low)

        def train_step():
            loss = F.mse_loss(net(xc, tc, low_res=lc), xc)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for label, fn in (
            (f"forward, 1 x {up.image_size} px", sample_call),
            (f"training step, {b} x {crop} px", train_step),
        ):
            ratios[f"{name} {label}"] = backend_row(f"{name:<15} {label:<27}", under, fn, reps, clock)
    return ratios


def vqgan_rows(under, reps: int, clock) -> dict:
    """taming's VQGAN (``vqgan`` tokenizer, the published f16 and Gumbel f8 layouts, random weights): one 256 px
    image's encode and decode under each backend; returns {row: torch time / route time}."""
    from zoo.models.vqgan.model import PRESETS, TamingVQGAN

    print("\ntaming VQGAN (zoo-convert's vqgan tokenizer), one 256 px image")
    ratios = {}
    for name in ("paper", "gumbel_f8"):
        torch.manual_seed(0)
        m = TamingVQGAN(PRESETS[name]).eval()
        x = torch.rand(1, 3, 256, 256) * 2 - 1
        with torch.no_grad():
            codes = m.encode(x)
        for label, fn in (("encode", lambda: m.encode(x)), ("decode", lambda: m.decode(codes))):
            ratios[f"vqgan {name} {label}"] = backend_row(
                f"{name:<10} {label:<7}", under, torch.no_grad()(fn), reps, clock
            )
    return ratios


if __name__ == "__main__":
    main()
