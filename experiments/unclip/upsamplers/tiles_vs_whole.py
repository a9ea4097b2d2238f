"""Whole-image vs tiled sampling of unCLIP upsamplers on a few shapes test scenes: mean PSNR against the real 128 px
scene and the mean absolute shift of each image's mean colour (a tint of the whole background shows up there).

    python experiments/unclip/upsamplers/tiles_vs_whole.py logs/unclip/upsampler_shapes_32_128_v/checkpoints/last.ckpt \
        [more checkpoints] [--n 8]

Same scenes, inputs (clean bicubic x1/4), x_T (seed 0) and 27 DDIM steps as ``python -m eval.upsampler``, with bf16
autocast (its ``--bf16``) where the CPU computes bf16 natively and fp32 elsewhere (``zoo.precision``: emulated bf16 is
20-100x slower); rows: the whole image (the paper), 32 px tiles without overlap, with 8 px overlap.
"""

from __future__ import annotations

import argparse

import torch

from eval.upsampler import load_upsampler, psnr_per_image, render_scenes
from zoo.data.degradations import downsample
from zoo.precision import autocast_dtype, describe_cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    real, _, _ = render_scenes("test", a.n, 128)
    low = downsample(real.float(), 4, "bicubic")
    x_T = torch.randn(real.shape, generator=torch.Generator().manual_seed(0))
    amp = autocast_dtype("cpu")  # bf16 only where native: on an AVX2-only CPU the emulation would take hours
    print(describe_cpu(), "| bf16 autocast" if amp else "| fp32", flush=True)

    def unit(x):
        return (x.clamp(-1, 1) + 1) / 2

    for path in a.checkpoints:
        lit, step = load_upsampler(path)
        for tile, overlap, what in (
            (0, None, "whole image"),
            ("train_crop", 0, "tiles, no overlap"),
            ("train_crop", 8, "tiles, overlap 8"),
        ):
            with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
                x = lit.upsample(
                    low, x_T=x_T, tile=tile, tile_overlap=overlap, generator=torch.Generator().manual_seed(1)
                )
            x = x.float()
            psnr = psnr_per_image(unit(x), unit(real)).mean().item()
            shift = (x - real).mean((2, 3)).abs().mean().item()
            print(f"{path} (step {step}) | {what}: PSNR {psnr:.2f} dB, mean colour shift {shift:.3f}", flush=True)


if __name__ == "__main__":
    main()
