"""Does ``torch.compile`` (Inductor) speed up our training steps on this CPU? Eager vs compiled, same weights, same
batch, timed interleaved.

    OMP_NUM_THREADS=1 python bench/bench_compile.py [--threads 1] [--reps 4] [--models unet,prior-shapes,prior-peer-readme]

Models (the training step is forward + loss + backward + fused AdamW; only the network is compiled, as a user
would wrap ``lit.net``):

* ``unet``: the ADM U-Net ``shapes`` preset (width 64, mult 1,2,4, attention at 16 and 8), 32 px, batch 16,
  epsilon MSE, as in ``bench/bench_unet.py``; eager with ``conv_backend`` as given (default ``auto``: our Winograd
  kernels on an AVX2 CPU with one thread) and with torch's kernels; compiled (where ``zoo.nn.conv`` steps aside:
  Inductor calls torch's convolution);
* ``prior-shapes`` / ``prior-peer-readme``: the diffusion prior's configs of ``bench/bench_prior.py`` (per-token
  encodings as text input, batch 128 / 32).

Inductor's own knobs: ``--no-layout-opt`` turns off its convolution layout optimisation (channels_last for the
convolutions it sees). bf16 rows only where the CPU computes bf16 natively (``zoo.precision.bench_bf16``).

Prints the compile time (first two steps), ms per step (best of ``--reps`` interleaved rounds of two steps, CPU-time
clock with one thread, wall clock with more) and eager / compiled. Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoo.nn.conv import effective_conv_backend, set_conv_backend  # noqa: E402
from zoo.precision import bench_bf16, describe_cpu  # noqa: E402


def unet_steps(conv_backend: str, bf16: bool) -> dict[str, Callable[[], None]]:
    from zoo.nn.unet import UNet, make_unet_config

    cfg = make_unet_config("shapes", context_dim=None)
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    noise, t = torch.randn_like(x), torch.randint(0, 1000, (16,), generator=torch.Generator().manual_seed(1))
    amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext

    def make(compiled: bool, backend: str) -> Callable[[], None]:
        torch.manual_seed(0)
        net = UNet(cfg).train()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
        fwd = torch.compile(net) if compiled else net

        def step():
            set_conv_backend(backend)  # each side its own kernels, interleaved in one process
            with amp():
                out = fwd(x, t)
            loss = F.mse_loss(out.float()[:, :3], noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    steps = {f"eager conv_backend={conv_backend}": make(False, conv_backend)}
    if conv_backend != "torch":
        steps["eager conv_backend=torch"] = make(False, "torch")
    steps["compiled"] = make(True, "torch")
    return steps


def prior_steps(config: str, bf16: bool) -> dict[str, Callable[[], None]]:
    import bench_prior as bp

    c = next(c for c in bp.CONFIGS if c.name == config)
    batch = bp.inputs(c, c.batch)
    steps = {}
    for name in ("eager", "compiled"):
        lit = bp.ours(c, "encodings")
        if name == "compiled":
            lit.net = torch.compile(lit.net)
        steps[name] = bp.ours_train_step(lit, batch, bf16)
    return steps


def run(label: str, steps: dict[str, Callable[[], None]], reps: int, clock: Callable[[], float]) -> None:
    print(f"\n{label}", flush=True)
    for name, fn in steps.items():
        t0 = time.perf_counter()
        fn()
        fn()
        print(f"  {name:<28} first two steps {time.perf_counter() - t0:7.1f} s", flush=True)
    best = {k: float("inf") for k in steps}
    for _ in range(reps):
        for k, fn in steps.items():
            t0 = clock()
            fn()
            fn()
            best[k] = min(best[k], (clock() - t0) / 2)
    ref = next(iter(best.values()))
    for k, v in best.items():
        print(f"  {k:<28} {v * 1e3:8.0f} ms a step   {ref / v:5.2f}x the first row", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--models", default="unet,prior-shapes,prior-peer-readme")
    ap.add_argument("--conv-backend", default="auto", choices=("auto", "torch", "nnpack", "winograd"))
    ap.add_argument("--no-layout-opt", action="store_true", help="Inductor's layout_optimization off")
    ap.add_argument("--bf16-anyway", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import torch._inductor.config as inductor_config

    if args.no_layout_opt:
        inductor_config.layout_optimization = False
    print(describe_cpu())
    set_conv_backend(args.conv_backend)
    backend, why = effective_conv_backend()
    threads = torch.get_num_threads()
    print(
        f"torch {torch.__version__}; threads {threads} of {os.cpu_count()} cores; load average "
        + ", ".join(f"{v:.1f}" for v in os.getloadavg())
        + f"; conv_backend={args.conv_backend} -> {backend} ({why}); "
        f"inductor layout_optimization={inductor_config.layout_optimization}"
    )
    clock = time.process_time if threads == 1 else time.perf_counter
    print(f"clock: {'CPU time' if threads == 1 else 'wall'}")
    precisions = (False, True) if bench_bf16(args.bf16_anyway) else (False,)
    for bf16 in precisions:
        prec = "bf16 autocast" if bf16 else "fp32"
        for model in args.models.split(","):
            torch._dynamo.reset()
            if model == "unet":
                run(f"U-Net shapes, 32 px, batch 16, {prec}", unet_steps(args.conv_backend, bf16), args.reps, clock)
            elif model.startswith("prior-"):
                name = model.removeprefix("prior-")
                run(f"diffusion prior {name}, {prec}", prior_steps(name, bf16), args.reps, clock)
            else:
                raise SystemExit(f"--models: unknown {model!r} (unet, prior-shapes, prior-peer-readme)")


if __name__ == "__main__":
    main()
