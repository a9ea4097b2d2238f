"""unCLIP prior benchmark: training samples/s (fp32, bf16 autocast), sampling ms per embedding (64 DDIM steps, best
of 2), the diffusion core's sampler overhead per step; side by side with lucidrains/DALLE2-pytorch's
``DiffusionPrior`` / ``DiffusionPriorNetwork`` when ``PEER_DALLE2=<checkout>`` is set.

    OMP_NUM_THREADS=1 python bench/bench_prior.py [--threads 1] [--reps 3] [--steps 6] [--train-only]
        [--configs shapes,peer-readme] [--optimizer fused|foreach|single] [--clock cpu|wall] [--half-attention]
        [--bf16-anyway]
    PEER_DALLE2=/tmp/peer_dalle2 python bench/bench_prior.py

The bf16 lines (training, sampling, sampler overhead) run only on a CPU with native bf16
(``zoo.precision.bench_bf16``); ``--bf16-anyway`` times them elsewhere too (the emulation, ~100x slower
than fp32 on an AVX2-only CPU).

Configs (``CONFIGS``):
* ``shapes``: our ``shapes`` preset (width 128, 4 layers, 4 heads x 32, 48 caption tokens, CLIP dim 128), batch 128;
  ours as trained (``text_input=tokens``) and, for the peer comparison, with per-token encodings
  (``text_input=encodings``, the peer's only text input);
* ``peer-readme``: the peer README's prior network (dim 512, depth 6, 8 heads x 64) at CLIP ViT-B/32's 77-token
  context, batch 32.

Peer comparison, equal work: the peer's network has width = CLIP dim and takes (B, L, dim) text encodings, so ours
runs with ``text_input=encodings`` and ``text_enc_dim = clip_dim = dim``; the peer's ``max_text_len`` is set to our
``text_len`` (its default pads every caption to 256 tokens, 5x our 48-token sequence: that default is NOT what is
compared, the printed lengths say so). Both: x0 prediction, cosine schedule, 1000 steps, 10% text dropout,
AdamW; the peer's rotary embeddings + relative position bias + SwiGLU feed-forward are its own design. Both sides are
timed interleaved (ours, peer, ours, peer, ...) on the same threads, best of ``--reps``; ratio = ours / peer.
Ours computes the text prefix of the null caption (the dropped 10%) once per batch, the peer once per dropped row
(``DiffusionPriorNet._shared_null``: the same function, ~10% fewer FLOPs at shapes size); "ours encodings unshared"
is ours with that turned off, timed in the same rotation, and its ratio is printed beside.
Optimizer (``--optimizer``): the SAME ``torch.optim.AdamW`` for both sides, by default ``fused=True`` (one pass over
the parameters; the default for-loop AdamW costs ~165 ms a step at peer-readme's 20-25M parameters on one core, the
same for both and no part of either model). Clock (``--clock``): ``cpu`` (default) times the process's CPU seconds
(``time.process_time``), which other jobs time-slicing the same cores do not inflate; ``wall`` is
``time.perf_counter``. ``--half-attention`` adds, in bf16, a variant "ours encodings half-attn": the attention as
it was until 2026-12-06 (``half_attention``: bf16 q, k, v through SDPA's MATH backend, where the code now upcasts to
fp32, ``zoo.precision.fp32_attention_preferred``), timed in the same rotation.
Sampling: ours ``DiffusionPriorLit.sample`` (DDIM η = 0, 64 steps, 2 candidates, best by dot product); the peer's
``p_sample_loop`` with 64 DDIM steps on the 2 x repeated captions + its top-1 selection (its ``sample`` minus the
CLIP text encoding; its DDIM default η = 1; its tqdm bars replaced by a pass-through). Prints figures, asserts nothing. Peer code is read from
the given checkout, never copied here.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_attention_precision import half_attention  # noqa: E402  (bench/ is the script's folder)

from zoo.diffusion.process import GaussianDiffusion  # noqa: E402
from zoo.diffusion.samplers import ddim_sample  # noqa: E402
from zoo.diffusion.schedules import cosine_schedule  # noqa: E402
from zoo.models.diffusion_prior.lit import DiffusionPriorLit  # noqa: E402
from zoo.precision import bench_bf16, describe_cpu  # noqa: E402


@dataclass
class BenchConfig:
    name: str
    dim: int
    n_layers: int
    n_heads: int
    head_dim: int
    text_len: int
    batch: int
    sample_batch: int  # captions per sampling call


CONFIGS = [BenchConfig("shapes", 128, 4, 4, 32, 48, 128, 16), BenchConfig("peer-readme", 512, 6, 8, 64, 77, 32, 8)]


# ------------------------------------------------------------------------------------------------ timing
CLOCK: Callable[[], float] = time.process_time  # --clock cpu (default) | wall (time.perf_counter)


def best_seconds(fn: Callable[[], None], reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = CLOCK()
        fn()
        best = min(best, CLOCK() - t0)
    return best


def adamw(params, lr: float, kind: str) -> torch.optim.Optimizer:
    """The same AdamW for both sides: ``fused`` (one pass), ``foreach`` or ``single`` (torch's CPU default)."""
    extra = {"fused": {"fused": True}, "foreach": {"foreach": True}, "single": {"foreach": False}}[kind]
    return torch.optim.AdamW(params, lr=lr, **extra)


def patched(fn: Callable[[], None]) -> Callable[[], None]:
    def run():
        with half_attention():
            fn()

    return run


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def inputs(c: BenchConfig, b: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 49408, (b, c.text_len), generator=g)
    n_real = c.text_len // 3  # a caption of a third of the context, then pads
    tokens[:, n_real:] = 0
    mask = torch.zeros(b, c.text_len, dtype=torch.bool)
    mask[:, :n_real] = True
    enc = torch.randn(b, c.text_len, c.dim, generator=g) * mask.unsqueeze(-1)  # zeros at pads (the peer's mask rule)
    return {
        "clip_image_emb": F.normalize(torch.randn(b, c.dim, generator=g), dim=-1),
        "clip_text_emb": F.normalize(torch.randn(b, c.dim, generator=g), dim=-1),
        "clip_text_tokens": tokens,
        "clip_text_encodings": enc,
        "clip_text_mask": mask,
    }


# ------------------------------------------------------------------------------------------------ ours
def ours(c: BenchConfig, text_input: str) -> DiffusionPriorLit:
    torch.manual_seed(0)
    net = {
        "clip_dim": c.dim,
        "dim": c.dim,
        "n_layers": c.n_layers,
        "n_heads": c.n_heads,
        "head_dim": c.head_dim,
        "text_len": c.text_len,
        "text_input": text_input,
        "text_enc_dim": c.dim,
    }
    return DiffusionPriorLit(preset="shapes", net=net, embed_scale=float(c.dim) ** 0.5)


def ours_train_step(lit: DiffusionPriorLit, batch, bf16: bool, optimizer: str = "fused") -> Callable[[], None]:
    opt = adamw(lit.parameters(), 1e-4, optimizer)
    lit.train()

    def step():
        with autocast(bf16):
            loss = lit.forward_loss(batch, lit.text_dropout)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def ours_sample(lit: DiffusionPriorLit, batch, bf16: bool, steps: int = 64) -> Callable[[], None]:
    lit.eval()
    feed = lit._sample_inputs({k: v for k, v in batch.items() if k != "clip_image_emb"})

    def run():
        with autocast(bf16):
            lit.sample(**feed, steps=steps, n_candidates=2, generator=torch.Generator().manual_seed(0))

    return run


# ------------------------------------------------------------------------------------------------ the peer
def import_peer(root: str):
    """``dalle2_pytorch.dalle2_pytorch`` from a checkout, without its package ``__init__`` (which imports the
    trainers, accelerate, W&B trackers... that the prior does not use)."""
    pkg_dir = Path(root).expanduser() / "dalle2_pytorch"
    if not (pkg_dir / "dalle2_pytorch.py").is_file():
        raise SystemExit(f"PEER_DALLE2={root}: no dalle2_pytorch/dalle2_pytorch.py there (a DALLE2-pytorch checkout)")
    pkg = types.ModuleType("dalle2_pytorch")
    pkg.__path__ = [str(pkg_dir)]
    sys.modules["dalle2_pytorch"] = pkg
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = importlib.import_module("dalle2_pytorch.dalle2_pytorch")
    mod.tqdm = lambda it, *a, **k: it  # its sampling loops wrap every step in a tqdm bar: not what is measured
    return mod


def peer(mod, c: BenchConfig):
    torch.manual_seed(0)
    net = mod.DiffusionPriorNetwork(
        dim=c.dim, depth=c.n_layers, dim_head=c.head_dim, heads=c.n_heads, max_text_len=c.text_len
    )
    return mod.DiffusionPrior(
        net=net, image_embed_dim=c.dim, timesteps=1000, cond_drop_prob=0.1, condition_on_text_encodings=True
    )


def peer_train_step(prior, batch, bf16: bool, optimizer: str = "fused") -> Callable[[], None]:
    opt = adamw(prior.parameters(), 1e-4, optimizer)
    prior.train()
    img, txt, enc = batch["clip_image_emb"], batch["clip_text_emb"], batch["clip_text_encodings"]

    def step():
        with autocast(bf16):  # it scales image_embed in place: give it a copy
            loss = prior(text_embed=txt, image_embed=img.clone(), text_encodings=enc)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def peer_sample(prior, batch, bf16: bool, steps: int = 64) -> Callable[[], None]:
    """Its ``DiffusionPrior.sample`` without the CLIP: 2 draws per caption, 64 DDIM steps, keep the top-1 by
    similarity with the text embedding."""
    prior.eval()
    txt, enc = batch["clip_text_emb"], batch["clip_text_encodings"]
    b, d = txt.shape
    cond = {"text_embed": txt.repeat_interleave(2, 0), "text_encodings": enc.repeat_interleave(2, 0)}

    @torch.no_grad()
    def run():
        with autocast(bf16):
            emb = prior.p_sample_loop((2 * b, d), text_cond=cond, cond_scale=1.0, timesteps=steps).view(b, 2, d)
            sims = (F.normalize(emb.float(), dim=-1) * F.normalize(txt, dim=-1).unsqueeze(1)).sum(-1)
            emb[torch.arange(b), sims.argmax(1)]

    return run


# ------------------------------------------------------------------------------------------------ sampler overhead
def sampler_overhead_ms(b: int, d: int, steps: int, reps: int) -> float:
    """ms per step of ``ddim_sample`` with an identity-cost network (the process's own arithmetic and loop)."""
    proc = GaussianDiffusion(cosine_schedule(1000), "x0", "fixed_small", "mse").respaced(steps)
    out = torch.randn(b, d)
    run = lambda: ddim_sample(proc, lambda x, t: out, (b, d), generator=torch.Generator().manual_seed(0))  # noqa
    run()
    return best_seconds(run, reps) / steps * 1e3


def net_forward_ms(lit: DiffusionPriorLit, batch, b: int, bf16: bool, reps: int) -> float:
    """ms of one network call of a sampling step at batch 2b (the 2 candidates; the text prefix cached, as
    ``DiffusionPriorLit.sample`` runs it), for the overhead ratio."""
    lit.eval()
    c = lit.condition({k: v[:b].repeat_interleave(2, 0) for k, v in batch.items()})
    text = {k: v for k, v in c.items() if k != "text_emb"}
    x, t = torch.randn(2 * b, lit.cfg.clip_dim), torch.full((2 * b,), 500)
    with torch.no_grad(), autocast(bf16):
        cache = lit.net.text_cache(2 * b, **text)

    @torch.no_grad()
    def run():
        with autocast(bf16):
            for _ in range(8):
                lit.net.forward_cached(cache, x, t, c["text_emb"])

    run()
    return best_seconds(run, reps) / 8 * 1e3


# ------------------------------------------------------------------------------------------------ main
def train_rate(make_step: Callable[[], None], batch_size: int, steps: int) -> Callable[[], float]:
    """A closure that runs ``steps`` training steps and returns samples/s."""

    def measure() -> float:
        t0 = CLOCK()
        for _ in range(steps):
            make_step()
        return batch_size * steps / (CLOCK() - t0)

    return measure


def step_gflop(step: Callable[[], None]) -> float:
    """GFLOP of one training step (forward + backward; torch's ``FlopCounterMode`` counts matrix multiplies and
    attention, the work that sets a step's time here), run once untimed."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / 1e9


def bench_config(c: BenchConfig, args, peer_mod) -> None:
    print(
        f"\n== {c.name}: width {c.dim}, {c.n_layers} layers, {c.n_heads} heads x {c.head_dim}, text length "
        f"{c.text_len} (sequence {c.text_len + 4}), CLIP dim {c.dim}, train batch {c.batch}, sampling "
        f"{c.sample_batch} captions x 2 candidates x 64 DDIM steps"
    )
    batch = inputs(c, c.batch)
    sbatch = {k: v[: c.sample_batch] for k, v in batch.items()}
    variants = [("ours tokens", "tokens"), ("ours encodings", "encodings")]
    lits = {name: ours(c, ti) for name, ti in variants}
    for name, lit in lits.items():
        print(
            f"   {name}: {sum(p.numel() for p in lit.net.transformer.parameters()) / 1e6:.2f}M transformer params, "
            f"{sum(p.numel() for p in lit.parameters()) / 1e6:.2f}M total"
        )
    prior = peer(peer_mod, c) if peer_mod else None
    if prior is not None:
        print(
            f"   peer DiffusionPrior: {sum(p.numel() for p in prior.net.causal_transformer.parameters()) / 1e6:.2f}M "
            f"transformer params (SwiGLU feed-forward), {sum(p.numel() for p in prior.parameters()) / 1e6:.2f}M "
            f"total; max_text_len={c.text_len} (its default 256 not used)"
        )
    for bf16 in (False, True) if args.bf16 else (False,):
        prec = "bf16" if bf16 else "fp32"
        # training: interleaved, best of reps
        raw = {name: ours_train_step(lit, batch, bf16, args.optimizer) for name, lit in lits.items()}
        # the same network computing the null caption's prefix once per dropped row, as the peer does (the
        # shared prefix is ours: DiffusionPriorNet._shared_null); its ratio says what the sharing is worth
        unshared = ours(c, "encodings")
        unshared.net._shares_null = lambda drop_text: False
        raw["ours encodings unshared"] = ours_train_step(unshared, batch, bf16, args.optimizer)
        if args.half_attention and bf16:
            raw["ours encodings half-attn"] = patched(
                ours_train_step(ours(c, "encodings"), batch, bf16, args.optimizer)
            )
        if prior is not None:
            raw["peer"] = peer_train_step(prior, batch, bf16, args.optimizer)
        steps = {name: train_rate(fn, c.batch, args.steps) for name, fn in raw.items()}
        for fn in steps.values():  # warm-up
            fn()
        best = {k: 0.0 for k in steps}
        for _ in range(args.reps):
            for k, fn in steps.items():
                best[k] = max(best[k], fn())
        line = " | ".join(f"{k} {v:,.1f}" for k, v in best.items())
        ratio = ""
        if prior is not None:
            ratio = (
                f" | ours encodings / peer = {best['ours encodings'] / best['peer']:.2f}x"
                f" (unshared: {best['ours encodings unshared'] / best['peer']:.2f}x)"
            )
            if "ours encodings half-attn" in best:
                ratio += (
                    f" | ours encodings half-attn / peer = {best['ours encodings half-attn'] / best['peer']:.2f}x "
                    "(the attention before 2026-12-06: bf16 through SDPA's MATH backend)"
                )
        print(f"   train samples/s {prec} ({args.clock} clock, AdamW {args.optimizer}): {line}{ratio}")
        if not bf16:  # the work per step, the same in both precisions: ratio of rates = ratio of work x efficiency
            gf = {k: step_gflop(raw[k]) for k in ("ours encodings", "ours encodings unshared", "peer") if k in raw}
            print(
                "   GFLOP per training step (rate at the fp32 samples/s above): "
                + " | ".join(f"{k} {g:.1f} ({g * best[k] / c.batch:.0f} GFLOP/s)" for k, g in gf.items())
            )
        if args.train_only:
            continue
        # sampling
        runs = {
            "ours tokens": ours_sample(lits["ours tokens"], sbatch, bf16),
            "ours encodings": ours_sample(lits["ours encodings"], sbatch, bf16),
        }
        if prior is not None:
            runs["peer"] = peer_sample(prior, sbatch, bf16)
        for fn in runs.values():
            fn()
        ms = {k: float("inf") for k in runs}
        for _ in range(args.sample_reps):
            for k, fn in runs.items():
                ms[k] = min(ms[k], best_seconds(fn, 1) * 1e3 / c.sample_batch)
        line = " | ".join(f"{k} {v:.2f}" for k, v in ms.items())
        ratio = f" | peer / ours encodings = {ms['peer'] / ms['ours encodings']:.2f}x" if prior is not None else ""
        print(f"   sampling ms per embedding {prec} (64 DDIM steps, best of {args.sample_reps}): {line}{ratio}")
        net_ms = net_forward_ms(lits["ours tokens"], batch, c.sample_batch, bf16, args.reps)
        over = sampler_overhead_ms(2 * c.sample_batch, c.dim, 64, args.reps)
        print(
            f"   sampler overhead {prec}: {over:.3f} ms/step (ddim_sample, identity network, batch "
            f"{2 * c.sample_batch} x {c.dim}) vs {net_ms:.2f} ms per (text-cached) network call = "
            f"{100 * over / net_ms:.1f}%"
        )


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions (best kept)")
    ap.add_argument("--sample-reps", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6, help="training steps per timed repetition")
    ap.add_argument("--configs", default=",".join(c.name for c in CONFIGS))
    ap.add_argument("--train-only", action="store_true", help="skip the sampling and sampler-overhead figures")
    ap.add_argument("--optimizer", choices=("fused", "foreach", "single"), default="fused", help="AdamW, both sides")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="process CPU time or wall clock")
    ap.add_argument(
        "--half-attention", action="store_true", help="add the bf16 attention of before 2026-12-06 as a variant"
    )
    ap.add_argument("--bf16-anyway", action="store_true", help="time bf16 even where the CPU only emulates it")
    args = ap.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    print(describe_cpu())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    args.bf16 = bench_bf16(args.bf16_anyway)  # decided once, with the reason printed when no
    peer_dir = os.environ.get("PEER_DALLE2")
    peer_mod = import_peer(peer_dir) if peer_dir else None
    if peer_mod is None:
        print("peer: skipped (set PEER_DALLE2=<lucidrains/DALLE2-pytorch checkout> to compare)")
    else:
        print(f"peer: {peer_dir} (dalle2_pytorch.dalle2_pytorch.DiffusionPrior / DiffusionPriorNetwork)")
    wanted = set(args.configs.split(","))
    for c in CONFIGS:
        if c.name in wanted:
            bench_config(c, args, peer_mod)


if __name__ == "__main__":
    main()
