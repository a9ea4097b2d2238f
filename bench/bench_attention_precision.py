"""Attention under bf16 autocast on CPU: fp32 (what ``zoo.nn.transformer.SelfAttention`` does there since
2026-12-06: q, k, v upcast, autocast off, SDPA's fp32 kernels) against the attention before (bf16 q, k, v through
SDPA's MATH backend; its flash kernel in bf16 was slower still). The measurement behind
``zoo.precision.fp32_attention_preferred``.

    OMP_NUM_THREADS=1 python bench/bench_attention_precision.py [--reps 3]

One ``SelfAttention`` (qkv and output projections included, as a model runs it) forward + backward under
``torch.autocast("cpu", bfloat16)``, at the shapes of the zoo's transformers: the unCLIP prior (48 text + 4 tail
positions), CLIP's text tower, DALL·E at 8x8 / 16x16 / 32x32 codes (dense causal and the paper's block-sparse row
pattern). Interleaved, best of ``--reps``, CPU-time clock; prints ms per step and old / new. ``--models`` adds whole
bf16 steps, the same switch: the DALL·E ``shapes`` preset's training step (batch 4, 16x16 and 32x32 codes) and its
cached sampling (batch 2, 16x16), and the U-Net ``shapes`` training step (32 px, batch 16; the U-Net's attention goes
through ``zoo.precision.sdpa``). Asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import zoo.precision as zp
from zoo.nn import transformer as tm
from zoo.nn.block_sparse import BlockSparseMask
from zoo.nn.sparse_masks import dalle_mask

# name, batch, heads, head dim, text length, grid side (0: no image part), mask kind ("causal" or a DALL·E pattern)
SHAPES = [
    ("unCLIP prior (shapes)", 128, 4, 32, 52, 0, "causal"),
    ("CLIP text tower", 128, 4, 32, 32, 0, "causal"),
    ("DALL·E 8x8 codes", 16, 8, 64, 48, 8, "causal"),
    ("DALL·E 16x16 codes", 8, 8, 64, 48, 16, "causal"),
    ("DALL·E 16x16 row (block-sparse)", 8, 8, 64, 48, 16, "row"),
    ("DALL·E 32x32 codes", 2, 8, 64, 48, 32, "causal"),
]


@contextlib.contextmanager
def half_attention(math: bool = True):
    """The attention as it was (``fp32_attention_preferred`` off): bf16 q, k, v, through SDPA's MATH backend
    (``math``: what ``SelfAttention`` forced) or torch's own choice (what the U-Net had)."""
    saved = tm.fp32_attention_preferred, zp.fp32_attention_preferred
    tm.fp32_attention_preferred = zp.fp32_attention_preferred = lambda device_type, dtype: False
    try:
        with sdpa_kernel(SDPBackend.MATH) if math else contextlib.nullcontext():
            yield
    finally:
        tm.fp32_attention_preferred, zp.fp32_attention_preferred = saved


def step_fn(attn: tm.SelfAttention, x: torch.Tensor, mask, old: bool):
    def run() -> float:
        xg = x.detach().requires_grad_()
        t0 = time.process_time()
        with half_attention() if old else contextlib.nullcontext(), torch.autocast("cpu", dtype=torch.bfloat16):
            y = attn(xg, mask)
        y.float().sum().backward()
        return time.process_time() - t0

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--models", action="store_true", help="also whole bf16 steps: DALL·E training / sampling, U-Net")
    args = ap.parse_args()
    print(zp.describe_cpu())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    for name, b, h, d, text, grid, kind in SHAPES:
        torch.manual_seed(0)
        n = text + grid * grid
        attn = tm.SelfAttention(h * d, h, d)
        x = torch.randn(b, n, h * d)
        mask = None if kind == "causal" else BlockSparseMask(dalle_mask(kind, text, grid, grid), block=grid)
        fns = {"old": step_fn(attn, x, mask, True), "new": step_fn(attn, x, mask, False)}
        for fn in fns.values():
            fn()  # warm-up
        best = {k: float("inf") for k in fns}
        for _ in range(args.reps):
            for k, fn in fns.items():
                best[k] = min(best[k], fn())
        print(
            f"{name:34s} batch {b:3d}, {h} heads x {d}, length {n:4d}: bf16 attention (before) "
            f"{best['old'] * 1e3:8.1f} ms | fp32 attention (now) {best['new'] * 1e3:8.1f} ms | "
            f"before / now {best['old'] / best['new']:.2f}x"
        )

    if args.models:
        models(args.reps)


def ab(name: str, fn, reps: int, math: bool = True, unit: str = "ms") -> None:
    """fn() under the old attention and the new, interleaved, best of reps, CPU-time clock."""

    def timed(old: bool) -> float:
        t0 = time.process_time()
        with half_attention(math) if old else contextlib.nullcontext():
            fn()
        return time.process_time() - t0

    timed(True), timed(False)  # warm-up
    best = {True: float("inf"), False: float("inf")}
    for _ in range(reps):
        for old in (True, False):
            best[old] = min(best[old], timed(old))
    scale = 1e3 if unit == "ms" else 1.0
    print(
        f"{name:48s} before {best[True] * scale:8.2f} {unit} | now {best[False] * scale:8.2f} {unit} | "
        f"before / now {best[True] / best[False]:.2f}x"
    )


def models(reps: int) -> None:
    from zoo.models.dalle.model import PRESETS, DalleTransformer, DalleTransformerConfig
    from zoo.models.presets import resolve_preset
    from zoo.nn.sampling import sample_image_tokens

    for grid in (16, 32):
        torch.manual_seed(0)
        cfg = resolve_preset(PRESETS, DalleTransformerConfig, "shapes", {"grid_h": grid, "grid_w": grid}, "DALL·E")
        model = DalleTransformer(cfg)
        text = torch.randint(1, cfg.text_vocab, (4, cfg.text_len))
        image = torch.randint(0, cfg.image_vocab, (4, grid, grid))

        def train_step():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model.loss(text, image)["loss"]
            model.zero_grad(set_to_none=True)
            loss.backward()

        ab(f"DALL·E shapes {grid}x{grid} training step, batch 4", train_step, reps)
        if grid == 16:

            def sample():
                with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
                    sample_image_tokens(
                        model, text[:2], top_k=64, use_cache=True, generator=torch.Generator().manual_seed(0)
                    )

            ab("DALL·E shapes 16x16 cached sampling, batch 2", sample, max(1, reps - 1), unit="s")
    from bench_unet import train_step_fn  # bench/ is this script's folder

    from zoo.nn.unet import UNet, make_unet_config

    ucfg = make_unet_config("shapes", context_dim=None)
    step = train_step_fn(lambda: UNet(ucfg), lambda net, x, t: net(x, t), ucfg.in_channels, 32, 16, True, True)[0]
    ab("U-Net shapes training step, 32 px, batch 16", step, reps, math=False)


if __name__ == "__main__":
    main()
