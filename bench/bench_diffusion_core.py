"""Diffusion-core benchmark: the sampler's own cost per step, excluding the network.

    OMP_NUM_THREADS=1 python bench/bench_diffusion_core.py [--steps 50] [--reps 3]

The network is replaced by an identity-cost ``model_fn`` (it returns a preallocated tensor), so the figures are
what the process adds per step: the coefficient gathers, the x̂_0 / posterior arithmetic, the noise draw (DDPM)
and the loop. Shapes: a unCLIP prior embedding batch (B, 768), 64x64 and 256x256 image batches. Compared with
one ``diffusers`` scheduler step (DDIMScheduler, DPMSolverMultistepScheduler) on the same tensors. Prints figures,
asserts nothing.
"""

from __future__ import annotations

import argparse
import time

import torch

from zoo.diffusion.process import GaussianDiffusion
from zoo.diffusion.samplers import ddim_sample, ddpm_sample
from zoo.diffusion.schedules import cosine_schedule

SHAPES = [(16, 768), (4, 3, 64, 64), (4, 3, 256, 256)]


def best_ms_per_step(run, steps: int, reps: int) -> float:
    run()  # warm-up (table casts, allocator)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best / steps * 1e3


def ours(kind: str, shape, steps: int, reps: int, learned: bool) -> float:
    base = cosine_schedule(1000)
    proc = GaussianDiffusion(
        base, "eps", "learned_range" if learned else "fixed_small", "hybrid" if learned else "mse"
    ).respaced(steps)
    out_shape = (shape[0], shape[1] * (2 if learned else 1), *shape[2:])
    out = torch.randn(out_shape) * 0.1
    model_fn = lambda x, t: out  # noqa: E731  identity cost: no network
    sample = ddpm_sample if kind == "ddpm" else ddim_sample
    return best_ms_per_step(
        lambda: sample(proc, model_fn, shape, generator=torch.Generator().manual_seed(0)), steps, reps
    )


def diffusers_ms(name: str, shape, steps: int, reps: int) -> float:
    from zoo.diffusion.diffusers_adapter import make_scheduler

    proc = GaussianDiffusion(cosine_schedule(1000))
    out = torch.randn(shape) * 0.1

    def run():
        sched = make_scheduler(proc, name)
        sched.set_timesteps(steps)
        x = torch.randn(shape)
        for ts in sched.timesteps:
            x = sched.step(out, ts, sched.scale_model_input(x, ts), return_dict=False)[0]

    return best_ms_per_step(run, steps, reps)


def main() -> None:
    from zoo.precision import describe_cpu

    print(describe_cpu())  # what the figures below were measured on
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    print(
        f"cpu capability: {torch.backends.cpu.get_cpu_capability()}  torch {torch.__version__}  "
        f"threads {torch.get_num_threads()}"
    )
    print(f"sampler overhead per step (ms, best of {args.reps}, {args.steps} steps, network excluded)")
    try:
        import diffusers  # noqa: F401

        has_diffusers = True
    except ImportError:
        has_diffusers = False
        print("(diffusers not installed: its columns are skipped; pip install diffusers)")
    header = f"{'shape':>20} {'elems':>9} {'DDPM':>8} {'DDPM-LR':>8} {'DDIM':>8}"
    if has_diffusers:
        header += f" {'hf DDIM':>8} {'hf DPM++':>8}"
    print(header)
    for shape in SHAPES:
        n = 1
        for d in shape:
            n *= d
        row = (
            f"{str(tuple(shape)):>20} {n:>9} {ours('ddpm', shape, args.steps, args.reps, False):8.3f} "
            f"{ours('ddpm', shape, args.steps, args.reps, True):8.3f} "
            f"{ours('ddim', shape, args.steps, args.reps, False):8.3f}"
        )
        if has_diffusers:
            row += (
                f" {diffusers_ms('DDIMScheduler', shape, args.steps, args.reps):8.3f}"
                f" {diffusers_ms('DPMSolverMultistepScheduler', shape, args.steps, args.reps):8.3f}"
            )
        print(row, flush=True)
    print("DDPM-LR: learned-range variance (2C outputs). DDPM includes drawing the step's noise; DDIM (eta=0) none.")


if __name__ == "__main__":
    main()
