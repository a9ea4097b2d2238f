"""Which CPU convolution kernel is fastest for the U-Net's 3x3 convolutions: oneDNN (torch's default) or NNPACK.

    OMP_NUM_THREADS=1 python bench/bench_conv_backends.py [--batch 16] [--reps 3]

Why: the ADM U-Net's fp32 training step is convolution-bound (``bench/bench_unet.py --flops``: its 3x3
convolutions run at ~90% of the CPU's fp32 matmul rate through oneDNN), so at equal work the step cannot get much
faster with the same kernels. NNPACK, also compiled into torch's CPU builds, computes 3x3 stride-1 convolutions
with Winograd transforms (fewer multiplies than the direct convolution, at ~10x its rounding error in fp32).
torch only uses it when oneDNN is disabled and only for the forward; this script measures, on this CPU:

1. per convolution shape of the ``shapes`` U-Net at 32 px (batch ``--batch``): forward, and forward + backward,
   for oneDNN and for an NNPACK forward with oneDNN's backward (``NNPackForwardConv``, a custom autograd function;
   the backward is ``aten.convolution_backward`` as torch's own conv uses it), with the NNPACK output's error
   against a float64 reference next to oneDNN's;
2. the whole ``shapes`` U-Net: training step (forward, MSE, backward, fused AdamW) and no-grad forward (what a
   sampler runs), the stock network against every 3x3 stride-1 convolution through ``NNPackForwardConv`` and
   against only those with 64+ input channels at 16 px or more (where the table has NNPACK ahead on AVX2).
   Interleaved rounds on the CPU-time clock, best round per side (``bench_unet.interleaved_best``).

Nothing in zoo/ uses NNPACK; this is the measurement a change there would need. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench_unet import interleaved_best  # noqa: E402  (bench/ is sys.path[0] when a script there runs)

from zoo.nn.unet import UNet, make_unet_config  # noqa: E402
from zoo.precision import describe_cpu  # noqa: E402


class NNPackForwardConv(torch.autograd.Function):
    """conv2d(x, w, b, padding=pad, stride 1) with NNPACK's forward and oneDNN's backward."""

    @staticmethod
    def forward(ctx, x, w, b, pad: int):
        ctx.save_for_backward(x, w)
        ctx.pad, ctx.has_bias = pad, b is not None
        return torch._nnpack_spatial_convolution(x.contiguous(), w, b, [pad] * 4)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        needs = ctx.needs_input_grad
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad,
            x,
            w,
            [w.shape[0]] if ctx.has_bias else None,
            [1, 1],  # stride
            [ctx.pad] * 2,
            [1, 1],  # dilation
            False,  # transposed
            [0, 0],  # output padding
            1,  # groups
            [needs[0], needs[1], ctx.has_bias and needs[2]],
        )
        return gx, gw, gb, None


def nnpack_eligible(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    return (
        conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.padding == (1, 1)
        and conv.groups == 1
        and x.device.type == "cpu"
        and x.dtype == torch.float32
    )


@contextlib.contextmanager
def nnpack_convs(min_channels: int = 1, min_size: int = 1):
    """Every eligible ``nn.Conv2d`` forward with at least ``min_channels`` input channels at ``min_size`` px or more
    goes through ``NNPackForwardConv`` inside the block."""
    stock = nn.Conv2d._conv_forward

    def routed(self, x, w, b):
        big = x.shape[1] >= min_channels and x.shape[-1] >= min_size
        return NNPackForwardConv.apply(x, w, b, 1) if big and nnpack_eligible(self, x) else stock(self, x, w, b)

    nn.Conv2d._conv_forward = routed
    try:
        yield
    finally:
        nn.Conv2d._conv_forward = stock


def conv_shapes(net: UNet, x: torch.Tensor, t: torch.Tensor) -> list[tuple[int, int, int]]:
    """Distinct (in, out, input size) of the network's 3x3 stride-1 convolutions, largest size first."""
    seen = []

    def record(m, inp, out):
        if nnpack_eligible(m, inp[0]):
            key = (inp[0].shape[1], m.out_channels, inp[0].shape[2])
            if key not in seen:
                seen.append(key)

    hooks = [m.register_forward_hook(record) for m in net.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        net(x, t)
    for h in hooks:
        h.remove()
    return sorted(seen, key=lambda k: (-k[2], k[0], k[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3, help="interleaved rounds (best kept)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(describe_cpu())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    # _nnpack_available() also initialises NNPACK; without that call its convolution fails
    if not torch._nnpack_available():
        print("NNPACK: not available in this torch build; nothing to compare")
        return

    cfg = make_unet_config("shapes", context_dim=None)
    torch.manual_seed(0)
    net = UNet(cfg)
    for m in net.modules():  # the zero-initialised output convolutions would make the error check vacuous
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=(2.0 / (m.in_channels * 9)) ** 0.5)
    x = torch.randn(args.batch, cfg.in_channels, args.size, args.size)
    t = torch.randint(0, 1000, (args.batch,))

    print(f"\n3x3 stride-1 convolutions of the shapes U-Net at {args.size} px, batch {args.batch}: ms per call")
    print(
        f"  {'in':>4} {'out':>4} {'px':>3} | {'oneDNN fwd':>10} {'NNPACK fwd':>10} | {'oneDNN f+b':>10} {'NNPACK f+b':>10}"
        f" | rel. error oneDNN / NNPACK"
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
                for name, y in (
                    ("onednn", F.conv2d(xin, w, b, padding=1)),
                    ("nnpack", NNPackForwardConv.apply(xin, w, b, 1)),
                )
            }
        with torch.no_grad():
            fwd = interleaved_best(
                {
                    "onednn": lambda: F.conv2d(xin, w, b, padding=1),
                    "nnpack": lambda: NNPackForwardConv.apply(xin, w, b, 1),
                },
                args.reps,
                calls=2,
                warmup=1,
            )
        both = interleaved_best(
            {
                "onednn": lambda: F.conv2d(xin, w, b, padding=1).backward(grad),
                "nnpack": lambda: NNPackForwardConv.apply(xin, w, b, 1).backward(grad),
            },
            args.reps,
            calls=2,
            warmup=1,
        )
        print(
            f"  {cin:>4} {cout:>4} {hw:>3} | {fwd['onednn'] * 1e3:>10.1f} {fwd['nnpack'] * 1e3:>10.1f} | "
            f"{both['onednn'] * 1e3:>10.1f} {both['nnpack'] * 1e3:>10.1f} | {err['onednn']:.1e} / {err['nnpack']:.1e}",
            flush=True,
        )

    # the whole network, stock and with every 3x3 stride-1 convolution's forward through NNPACK
    with torch.no_grad():
        y_stock = net(x, t)
        with nnpack_convs():
            y_nnpack = net(x, t)
    rel = float((y_stock - y_nnpack).abs().max() / y_stock.abs().max())
    noise = torch.randn(args.batch, cfg.in_channels, args.size, args.size)

    # routes: None = stock; {} = every 3x3 stride-1 conv; the last = where the table above has NNPACK ahead on an
    # AVX2 AMD EPYC (64+ input channels at 16 px and more)
    routes = {"oneDNN": None, "NNPACK all": {}, "NNPACK 64+ ch, 16+ px": {"min_channels": 64, "min_size": 16}}

    def trainer(model, route):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def step():
            with contextlib.nullcontext() if route is None else nnpack_convs(**route):
                loss = F.mse_loss(model(x, t)[:, : cfg.in_channels], noise)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()

        return step

    def forward(model, route):
        @torch.no_grad()
        def run():
            with contextlib.nullcontext() if route is None else nnpack_convs(**route):
                model(x, t)

        return run

    print(f"\nthe shapes U-Net, {args.size} px, batch {args.batch}; outputs differ by {rel:.1e} (max abs / max abs)")
    for label, make in (("training step", trainer), ("no-grad forward", forward)):
        nets = {name: (net if route is None else UNet(cfg)) for name, route in routes.items()}
        for model in nets.values():
            model.load_state_dict(net.state_dict())
        best = interleaved_best({name: make(nets[name], route) for name, route in routes.items()}, args.reps, 2, 1)
        print(
            f"  {label:<16} "
            + " | ".join(f"{name} {sec * 1e3:.0f} ms ({best['oneDNN'] / sec:.2f}x)" for name, sec in best.items()),
            flush=True,
        )


if __name__ == "__main__":
    main()
