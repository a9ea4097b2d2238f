"""Side by side with lucidrains/DALLE-pytorch (``PEER_DALLE=<checkout>``): AR training, cached generation, dVAE.

    PEER_DALLE=/tmp/peer_dalle OMP_NUM_THREADS=1 python bench/bench_vs_dalle_pytorch.py [--threads 1] [--reps 5]
        [--parts train gen dvae] [--clock auto|cpu|wall] [--quick] [--no-bf16]

Without ``PEER_DALLE`` it prints why it is skipped and exits 0 (``make bench`` runs it like every ``bench_*.py``);
with it set, a peer that does not import is an error (exit 1), not a skip. The peer's code is imported from the
given checkout, never copied here: its package ``__init__`` (which pulls in the OpenAI / taming VAEs, youtokentome,
transformers) is replaced by a bare package module, and ``dalle_pytorch.vae`` by a stub holding the two class names
``dalle_pytorch.dalle_pytorch`` imports. The peer needs ``einops``, ``rotary-embedding-torch`` and
``axial_positional_embedding`` (``pip install`` into the venv; NOT dependencies of this project).

Measuring. Both sides run in this one process on the same threads (``--threads``, default ``OMP_NUM_THREADS`` or
1), interleaved (ours, peer, ours, peer, ...) for ``--reps`` rounds after a warm-up run of each. Reported: the
median time of each side and the MEDIAN of the per-round ratios peer / ours (= ours / peer speed), so that a
disturbance of one round (a shared machine) moves one ratio, not the verdict. Clock (``--clock``): ``auto`` = the
process's CPU seconds (``time.process_time``) at 1 thread, which other jobs time-slicing the core do not inflate,
and the wall clock at more threads (CPU seconds would then count idle spinning threads). fp32, the peer's default;
bf16 autocast training rows are added only where the CPU has native bf16 (``zoo.precision.cpu_has_native_bf16``;
``--no-bf16`` drops them). The first line names the CPU, torch's CPU capability and the thread count; the last
line is ``BENCH_JSON {...}`` (the ratios, targets and machine), which ``bench/run_all.py`` stores.

``--quick``: a smoke test (every code path, under a minute at 1 thread): the same four parts at toy sizes (width 64,
32 text tokens, vocabularies of 500 / 256, batch 2) and one round. Its ratios say nothing about speed.

1. AR training tokens/s (forward + backward + AdamW step) at the peer's ``train_dalle.py`` configuration: width 512,
   8 heads x 64, 256 text tokens, batch 4, no dropout, ``shift_tokens`` / ``rotary_emb`` off (its flags' defaults:
   learned text positions + axial image positions, like ours), ``num_text_tokens`` = 49,408 (its default
   tokenizer, CLIP's BPE; ``--text-vocab 10000`` = its README / ``DALLE()`` default), 8,192 image codes (its
   ``train_vae.py`` default), image grids 8x8 and 16x16 (its ``DiscreteVAE`` with ``num_layers=3`` at 64 / 128 px).
   Depth 4 (``--depth``; train_dalle's default is 2), so that the README's sparse cycle ``('full', 'axial_row',
   'axial_col', 'conv_like')`` appears whole. Two attention settings: full (dense causal everywhere) and sparse
   (the peer: that cycle, its default sparse classes; ours: the same cycle of OUR masks,
   ``pattern="full,row,column,conv"``, with a 5x5 conv window, the size of its ``conv_like`` kernel; its axial_row
   is the query's own grid row, our row the w + 1 previous tokens, see ``zoo.nn.sparse_masks``). Same size: the
   peer's feed-forward is GEGLU (x4: 12 d^2 weights), ours GELU at ``mlp_ratio=6`` (12 d^2 weights, the same
   FLOPs); parameter counts are printed. Both optimise with ``torch.optim.AdamW(fused=True)`` (the same optimizer
   code on both sides, in its fastest form: what is compared are the models; ``--plain-adamw`` for torch's default).
   Tokens per step = batch x (256 + grid^2) on both sides (the same examples; both are given image token ids, no
   VAE in the step). Printed beside the ratio: FLOPs per step of each side (``FlopCounterMode``; attention counted
   densely where SDPA runs over whole rows), because the designs differ: the peer computes ONE joint head over text +
   image vocabularies at every position (then masks half of it), ours a text head on text positions and an image
   head on image positions (the paper's output restriction), and ours computes only the allowed blocks of its
   sparse masks.
2. Cached generation of one image's tokens per caption (batch 4 captions, full attention, fp32): image tokens/s.
   Ours: ``zoo.nn.sampling.sample_image_tokens`` (cached; no top-k: the peer's default ``filter_thres=0.5`` keeps
   every image logit of its joint head). The peer's final ``vae.decode`` is replaced by a pass-through (tokens
   only on both sides). Guidance 3 (8x8 and 16x16): the peer's fastest path, ``generate_images(text,
   use_cache=True, cond_scale=3)`` (a cached conditional and a cached null stream per token). Guidance 1 (8x8;
   ``--gen-g1-grids``): the peer's public path ``generate_images(use_cache=True, cond_scale=1)`` silently drops
   its cache (``forward_with_cond_scale`` at ``cond_scale == 1`` calls ``forward`` without it, so every token
   recomputes the whole prefix and its joint-head logits: the slowest run of the benchmark); so the peer also
   runs its generate loop with its cached ``forward(text, image, cache=cache)`` (what ``generate_images`` runs for
   the conditional stream at ``cond_scale != 1``; same top-k + Gumbel sampling), and the verdict is taken against
   the FASTER of the two (both ratios are printed and stored).
   The uncached public path is timed in the first ``--slow-reps`` rounds only (default 1).
3. dVAE training step (forward + backward + AdamW) per FLOP: ours (the ``shapes`` preset: 32 px -> 8x8 of 512
   codes, the paper's bottleneck resblocks, logit-Laplace loss) vs its ``DiscreteVAE`` at the matching size (32 px,
   2 stride-2 convs -> 8x8, 512 codes, hidden 64, 1 resblock, codebook dim 512, MSE loss), batch 64. GFLOP/s each
   (``FlopCounterMode``; the architectures differ, so per FLOP is what compares). Then the cost of the
   Gumbel-softmax sample in our step: ``F.gumbel_softmax`` (what our dVAE used, and what the peer's DiscreteVAE
   uses; its noise is ``exponential_()``) vs ours (``zoo.models.dvae.lit.gumbel_softmax``: one float32 uniform
   draw, in-place logs, softmax along memory order), forward and forward + backward, and its share of a step.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import statistics
import sys
import time
import types
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoo.models.dalle.model import DalleTransformer, DalleTransformerConfig  # noqa: E402
from zoo.nn.sampling import sample_image_tokens  # noqa: E402
from zoo.precision import cpu_has_native_bf16, describe_cpu  # noqa: E402

PEER_SPARSE = ("full", "axial_row", "axial_col", "conv_like")
OUR_SPARSE = "full,row,column,conv"  # the same cycle of our mask kinds
TARGETS = {"train": 2.0, "gen g1": 20.0, "gen g3": 3.0, "dvae": 1.0}  # issue #18 item 4
PEER_DEPS = "einops rotary-embedding-torch axial_positional_embedding"


@dataclass(frozen=True)
class Sizes:
    """The compared configuration (module docstring, part 1); ``QUICK`` shrinks it for a smoke test."""

    dim: int = 512
    heads: int = 8
    head_dim: int = 64
    text_len: int = 256
    text_vocab: int = 49_408  # train_dalle.py's default tokenizer (CLIP's BPE); --text-vocab
    image_vocab: int = 8192
    depth: int = 4  # train_dalle.py's default is 2; 4 holds the README's sparse cycle once
    batch: int = 4
    gen_batch: int = 4
    dvae_batch: int = 64
    fused_adamw: bool = True


QUICK = Sizes(
    dim=64, heads=2, head_dim=32, text_len=32, text_vocab=500, image_vocab=256, batch=2, gen_batch=2, dvae_batch=4
)
S = Sizes()  # set in main()
CLOCK: Callable[[], float] = time.process_time  # set in main() (--clock)


# ------------------------------------------------------------------------------------------------ measuring
def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def interleaved(
    fns: dict[str, Callable[[], None]], reps: int, warm: Optional[set] = None, rounds: Optional[dict] = None
) -> dict[str, list[Optional[float]]]:
    """Seconds per run of each callable, run in turn (a, b, a, b, ...) for ``reps`` rounds after one warm-up run
    of each callable named in ``warm`` (default: all). ``rounds[name] = k`` runs that callable in the first k rounds
    only (a slow path); its later entries are None."""
    for k, f in fns.items():
        if warm is None or k in warm:
            f()
    times: dict[str, list[Optional[float]]] = {k: [] for k in fns}
    for r in range(reps):
        for k, f in fns.items():
            if rounds is not None and r >= rounds.get(k, reps):
                times[k].append(None)
                continue
            t0 = CLOCK()
            f()
            times[k].append(CLOCK() - t0)
    return times


def med(ts: list[Optional[float]]) -> float:
    return statistics.median(t for t in ts if t is not None)


def ratio(times: dict, ours: str = "ours", peer: str = "peer") -> float:
    """Median over rounds of peer seconds / ours seconds (the two runs of a round are adjacent in time)."""
    return statistics.median(p / o for o, p in zip(times[ours], times[peer], strict=True) if p is not None)


# SDPA's CPU kernel is not in FlopCounterMode's table: count it like the other SDPA kernels (dense, whole rows)
def _sdpa_cpu(query, key, value, *args, out_val=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query.shape, key.shape, value.shape)


def _sdpa_cpu_backward(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


_sdpa_cpu._get_raw = _sdpa_cpu_backward._get_raw = True  # called with the tensors themselves
_CPU_SDPA = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward,
}


def count_flops(fn: Callable[[], None]) -> int:
    with FlopCounterMode(display=False, custom_mapping=_CPU_SDPA) as fc:
        fn()
    return fc.get_total_flops()


def n_params(m: torch.nn.Module) -> float:
    return sum(p.numel() for p in m.parameters() if p.requires_grad) / 1e6


def adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-4, fused=S.fused_adamw or None)


def row(name: str, r: float, target: Optional[float], **extra) -> dict:
    return {
        "name": name,
        "ratio": round(r, 3),
        "target": target,
        "met": None if target is None else r >= target,
        **extra,
    }


def verdict(r: dict) -> str:
    if r["target"] is None:
        return "no target"
    return f"target >= {r['target']:g}x: {'met' if r['met'] else 'NOT met'}"


# ------------------------------------------------------------------------------------------------ the peer
def import_peer(root: str):
    """``dalle_pytorch.dalle_pytorch`` from a checkout, without the package ``__init__`` and ``vae.py`` (OpenAI /
    taming VAEs: downloads, omegaconf, taming-transformers), which the DALLE / DiscreteVAE classes do not need."""
    pkg_dir = Path(root).expanduser() / "dalle_pytorch"
    if not (pkg_dir / "dalle_pytorch.py").is_file():
        raise SystemExit(f"PEER_DALLE={root}: no dalle_pytorch/dalle_pytorch.py there (a DALLE-pytorch checkout)")
    pkg = types.ModuleType("dalle_pytorch")
    pkg.__path__ = [str(pkg_dir)]
    sys.modules["dalle_pytorch"] = pkg
    vae = types.ModuleType("dalle_pytorch.vae")  # only isinstance() targets are used from it
    vae.OpenAIDiscreteVAE = type("OpenAIDiscreteVAE", (), {})
    vae.VQGanVAE = type("VQGanVAE", (), {})
    sys.modules["dalle_pytorch.vae"] = vae
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module("dalle_pytorch.dalle_pytorch")
    except ImportError as e:  # the comparison was asked for: an error, not a skip
        raise SystemExit(f"PEER_DALLE={root}: the peer does not import ({e}); pip install {PEER_DEPS}") from e


def peer_dalle(mod, grid: int, attn_types):
    torch.manual_seed(0)
    vae = mod.DiscreteVAE(image_size=grid * 8, num_layers=3, num_tokens=S.image_vocab, codebook_dim=512, hidden_dim=64)
    return mod.DALLE(
        dim=S.dim,
        vae=vae,
        num_text_tokens=S.text_vocab,
        text_seq_len=S.text_len,
        depth=S.depth,
        heads=S.heads,
        dim_head=S.head_dim,
        attn_types=attn_types,
        shift_tokens=False,
        rotary_emb=False,
    )


def our_dalle(grid: int, pattern: str) -> DalleTransformer:
    torch.manual_seed(0)
    cfg = DalleTransformerConfig(
        dim=S.dim,
        n_layers=S.depth,
        n_heads=S.heads,
        head_dim=S.head_dim,
        text_len=S.text_len,
        text_vocab=S.text_vocab,
        image_vocab=S.image_vocab,
        grid_h=grid,
        grid_w=grid,
        conv_kernel=5,
        pattern=pattern,
        mlp_ratio=6,
    )
    return DalleTransformer(cfg)


def data(grid: int, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(1, S.text_vocab, (batch, S.text_len), generator=g)
    text[:, S.text_len // 4 :] = 0  # a caption of a quarter of the context, then pads (pad id 0 on both sides)
    image = torch.randint(0, S.image_vocab, (batch, grid * grid), generator=g)
    return text, image


# ------------------------------------------------------------------------------------------------ 1. training
def train_steps(ours: DalleTransformer, peer, text, image, bf16: bool):
    opt_o, opt_p = adamw(ours.parameters()), adamw([p for p in peer.parameters() if p.requires_grad])
    ours.train()
    peer.train()

    def step_ours():
        with autocast(bf16):
            loss = ours.loss(text, image)["loss"]
        opt_o.zero_grad(set_to_none=True)
        loss.backward()
        opt_o.step()

    def step_peer():
        with autocast(bf16):
            loss = peer(text.clone(), image, return_loss=True)  # clone: it may write the text in place
        opt_p.zero_grad(set_to_none=True)
        loss.backward()
        opt_p.step()

    return step_ours, step_peer


def training_part(mod, grids, reps: int, dtypes) -> list[dict]:
    rows = []
    print(
        f"\n1. AR training tokens/s: width {S.dim}, depth {S.depth}, {S.heads} heads x {S.head_dim}, text "
        f"{S.text_len} (vocabulary {S.text_vocab:,}), {S.image_vocab:,} image codes, batch {S.batch}, AdamW"
        f"{' (fused)' if S.fused_adamw else ''}; medians of {reps} interleaved rounds; ratio = ours / peer",
        flush=True,
    )
    for attn, our_pat, peer_types in (("full", "full", ("full",)), ("sparse", OUR_SPARSE, PEER_SPARSE)):
        for g in grids:
            ours, peer = our_dalle(g, our_pat), peer_dalle(mod, g, peer_types)
            text, image = data(g, S.batch)
            tokens = S.batch * (S.text_len + g * g)
            for prec, bf16 in dtypes:
                so, sp = train_steps(ours, peer, text, image, bf16)
                fo, fp = count_flops(so), count_flops(sp)  # also the warm-up step of each
                t = interleaved({"ours": so, "peer": sp}, reps, warm=set())
                r, to, tp = ratio(t), med(t["ours"]), med(t["peer"])
                print(
                    f"   {attn:6} {g:>2}x{g:<2} {prec}: ours {tokens / to:6.0f} tok/s ({n_params(ours):.1f}M "
                    f"params, {fo / 1e9:6.1f} GFLOP/step, {fo / to / 1e9:5.1f} GFLOP/s) | peer {tokens / tp:6.0f} "
                    f"tok/s ({n_params(peer):.1f}M, {fp / 1e9:6.1f} GFLOP/step, {fp / tp / 1e9:5.1f} GFLOP/s) | "
                    f"{r:.2f}x",
                    flush=True,
                )
                name = f"AR training tokens/s, {attn} attention, {g}x{g}, {prec}"
                rows.append(row(name, r, TARGETS["train"], ours_s=to, peer_s=tp, ours_flop=fo, peer_flop=fp))
            del ours, peer
    return rows


# ------------------------------------------------------------------------------------------------ 2. generation
def peer_cached_generate(mod, peer, text: torch.Tensor) -> torch.Tensor:
    """The peer's ``generate_images`` loop (no priming image, ``filter_thres=0.5``, temperature 1) with its cached
    ``forward`` called directly: what ``forward_with_cond_scale`` runs for the conditional stream at
    ``cond_scale != 1``, and would run at ``cond_scale == 1`` if it kept the cache."""
    t_len, total = peer.text_seq_len, peer.text_seq_len + peer.image_seq_len
    out, cache = text[:, :t_len], {}
    for _ in range(t_len, total):
        logits = peer(out[:, :t_len], out[:, t_len:], cache=cache)[:, -1, :]
        sample = mod.gumbel_sample(mod.top_k(logits, thres=0.5), temperature=1.0, dim=-1) - peer.num_text_tokens
        out = torch.cat((out, sample[:, None]), dim=-1)
    return out[:, -peer.image_seq_len :]


def generation_part(mod, g3_grids, g1_grids, reps: int, slow_reps: int) -> list[dict]:
    rows = []
    b = S.gen_batch
    print(
        f"\n2. cached generation of one image's tokens per caption, full attention, batch {b}, fp32: image tokens/s, "
        f"medians of {reps} interleaved rounds; ratio = ours / peer",
        flush=True,
    )
    plan = [(g, 3.0) for g in g3_grids] + [(g, 1.0) for g in g1_grids]
    models = {}
    for g, scale in sorted(plan):
        if g not in models:
            ours, peer = our_dalle(g, "full").eval(), peer_dalle(mod, g, ("full",)).eval()
            peer.vae.decode = lambda seq: seq  # tokens only, on both sides
            models[g] = (ours, peer)
        ours, peer = models[g]
        text, _ = data(g, b)

        def run_ours(ours=ours, text=text, scale=scale):
            sample_image_tokens(ours, text, guidance_scale=scale, generator=torch.Generator().manual_seed(0))

        def run_peer(peer=peer, text=text, scale=scale):  # its public path
            with torch.no_grad():
                peer.generate_images(text.clone(), cond_scale=scale, use_cache=True)

        def run_peer_cached(peer=peer, text=text):
            with torch.no_grad():
                peer_cached_generate(mod, peer, text.clone())

        n = b * g * g
        if scale != 1.0:
            t = interleaved({"ours": run_ours, "peer": run_peer}, reps)
            r, to, tp = ratio(t), med(t["ours"]), med(t["peer"])
            print(
                f"   {g:>2}x{g:<2} guidance {scale:g}: ours {n / to:7.1f} tok/s ({to:.2f} s) | peer "
                f"generate_images(use_cache=True) {n / tp:7.1f} tok/s ({tp:.2f} s) | {r:.1f}x",
                flush=True,
            )
            rows.append(
                row(f"cached generation, guidance {scale:g}, {g}x{g}", r, TARGETS["gen g3"], ours_s=to, peer_s=tp)
            )
            continue
        # guidance 1: the public path (uncached, slow: first slow_reps rounds only, no warm-up) and the cached loop
        fns = {"ours": run_ours, "peer cached": run_peer_cached, "peer": run_peer}
        t = interleaved(fns, reps, warm={"ours", "peer cached"}, rounds={"peer": min(slow_reps, reps)})
        r_pub, r_cached = ratio(t, peer="peer"), ratio(t, peer="peer cached")
        to, tp, tc = med(t["ours"]), med(t["peer"]), med(t["peer cached"])
        fastest = "cached forward loop" if tc <= tp else "generate_images"
        r = r_cached if tc <= tp else r_pub
        print(
            f"   {g:>2}x{g:<2} guidance 1: ours {n / to:7.1f} tok/s ({to:.2f} s) | peer generate_images(use_cache=True,"
            f" cond_scale=1) {n / tp:7.1f} tok/s ({tp:.2f} s, uncached: it drops the cache; "
            f"{sum(x is not None for x in t['peer'])} run(s)) -> {r_pub:.1f}x | peer cached forward loop "
            f"{n / tc:7.1f} tok/s ({tc:.2f} s) -> {r_cached:.1f}x",
            flush=True,
        )
        rows.append(
            row(
                f"cached generation, guidance 1, {g}x{g} (vs the peer's fastest: {fastest})",
                r,
                TARGETS["gen g1"],
                ours_s=to,
                peer_s=min(tp, tc),
                ratio_vs_generate_images=round(r_pub, 3),
                ratio_vs_cached_loop=round(r_cached, 3),
            )
        )
    return rows


# ------------------------------------------------------------------------------------------------ 3. dVAE
def dvae_part(mod, reps: int) -> list[dict]:
    from zoo.models.dvae.lit import DVAELit, gumbel_softmax

    rows = []
    b = S.dvae_batch
    torch.manual_seed(0)
    lit = DVAELit(preset="shapes")
    res, k = lit.cfg.resolution, lit.cfg.vocab_size
    peer = mod.DiscreteVAE(
        image_size=res, num_layers=2, num_tokens=k, codebook_dim=512, hidden_dim=64, num_resnet_blocks=1
    )
    x = torch.rand(b, 3, res, res) * 2 - 1
    x01 = (x + 1) / 2  # the peer normalises [0, 1] images itself
    opt_o, opt_p = adamw(lit.parameters()), adamw(peer.parameters())

    def step_ours():
        loss = lit.forward_loss(x, step=0)["loss"]
        opt_o.zero_grad(set_to_none=True)
        loss.backward()
        opt_o.step()

    def step_peer():
        loss = peer(x01, return_loss=True)
        opt_p.zero_grad(set_to_none=True)
        loss.backward()
        opt_p.step()

    with torch.no_grad():
        logits = lit.dvae.logits(x).float()  # (B, K, h, w), in the step's layout (for the Gumbel timing below)
    grid = f"{logits.shape[2]}x{logits.shape[3]}"
    fo, fp = count_flops(step_ours), count_flops(step_peer)
    t = interleaved({"ours": step_ours, "peer": step_peer}, reps * 2)
    to, tp = med(t["ours"]), med(t["peer"])
    per_flop = ratio(t) * fo / fp  # (fo / t_ours) / (fp / t_peer), per round
    print(
        f"\n3. dVAE training step, batch {b} x {res} px -> {grid} of {k} codes, fp32, medians of "
        f"{reps * 2} interleaved rounds:\n"
        f"   ours (paper dVAE, shapes preset, {n_params(lit):.2f}M params): {to * 1e3:7.1f} ms, "
        f"{fo / 1e9:6.2f} GFLOP -> {fo / to / 1e9:5.1f} GFLOP/s\n"
        f"   peer (DiscreteVAE, {n_params(peer):.2f}M params): {tp * 1e3:7.1f} ms, {fp / 1e9:6.2f} GFLOP -> "
        f"{fp / tp / 1e9:5.1f} GFLOP/s\n"
        f"   per FLOP: ours / peer = {per_flop:.2f}x (images/s: {ratio(t):.2f}x, different networks)",
        flush=True,
    )
    rows.append(row("dVAE training GFLOP/s (per FLOP)", per_flop, TARGETS["dvae"], ours_s=to, peer_s=tp))
    sample = {
        "F.gumbel_softmax": lambda: F.gumbel_softmax(logits, tau=1.0, hard=False, dim=1),
        "ours": lambda: gumbel_softmax(logits, 1.0, dim=1),
    }
    tf = interleaved(sample, reps * 4)
    lr = logits.detach().requires_grad_()
    grads = {  # forward + backward of the sample, as in training
        "F.gumbel_softmax": lambda: F.gumbel_softmax(lr, tau=1.0, hard=False, dim=1).backward(logits),
        "ours": lambda: gumbel_softmax(lr, 1.0, dim=1).backward(logits),
    }
    tb = interleaved(grads, reps * 4)
    old, new = med(tb["F.gumbel_softmax"]), med(tb["ours"])
    step_old = to - new + old  # the same step with F.gumbel_softmax's sample
    speedup = ratio(tb, peer="F.gumbel_softmax")
    print(
        f"   Gumbel-softmax sample of the {tuple(logits.shape)} logits: forward {med(tf['F.gumbel_softmax']) * 1e3:.2f}"
        f" -> {med(tf['ours']) * 1e3:.2f} ms ({ratio(tf, peer='F.gumbel_softmax'):.1f}x), forward + backward "
        f"{old * 1e3:.2f} -> {new * 1e3:.2f} ms ({speedup:.1f}x): {100 * old / step_old:.1f}% of a step with "
        f"F.gumbel_softmax -> {100 * new / to:.1f}% with ours",
        flush=True,
    )
    rows.append(
        row(
            "Gumbel-softmax sample, forward + backward, ours vs F.gumbel_softmax (speed-up)",
            speedup,
            None,
            share_of_step_before=round(old / step_old, 4),
            share_of_step_after=round(new / to, 4),
        )
    )
    return rows


# ------------------------------------------------------------------------------------------------ main
def main(argv=None) -> None:
    global S, CLOCK
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    ap.add_argument("--reps", type=int, default=5, help="interleaved rounds (medians reported)")
    ap.add_argument("--slow-reps", type=int, default=1, help="rounds of the peer's uncached guidance-1 path")
    ap.add_argument("--grids", type=int, nargs="+", default=[8, 16], help="training and guidance-3 grids")
    ap.add_argument("--gen-g1-grids", type=int, nargs="*", default=[8])
    ap.add_argument("--parts", nargs="+", default=["train", "gen", "dvae"], choices=["train", "gen", "dvae"])
    ap.add_argument("--clock", choices=("auto", "cpu", "wall"), default="auto")
    ap.add_argument("--no-bf16", action="store_true", help="no bf16 training rows even on a native-bf16 CPU")
    ap.add_argument("--text-vocab", type=int, default=None, help="10000: the README's / DALLE()'s default")
    ap.add_argument("--depth", type=int, default=None)
    ap.add_argument("--plain-adamw", action="store_true", help="torch's default AdamW instead of fused=True")
    ap.add_argument("--quick", action="store_true", help="smoke test: toy sizes, one round (ratios meaningless)")
    args = ap.parse_args(argv)
    S = QUICK if args.quick else Sizes()
    if args.text_vocab is not None:
        S = replace(S, text_vocab=args.text_vocab)
    if args.depth is not None:
        S = replace(S, depth=args.depth)
    S = replace(S, fused_adamw=not args.plain_adamw)
    reps = 1 if args.quick else args.reps
    torch.set_num_threads(args.threads)
    clock = args.clock if args.clock != "auto" else ("cpu" if torch.get_num_threads() == 1 else "wall")
    CLOCK = time.process_time if clock == "cpu" else time.perf_counter
    cap = torch.backends.cpu.get_cpu_capability()
    print(describe_cpu())
    print(
        f"torch {torch.__version__}, CPU capability {cap}, {torch.get_num_threads()} thread(s) each side, {clock} "
        f"clock, load average {os.getloadavg()[0]:.1f} (on {os.cpu_count()} CPUs)"
        + (" | QUICK smoke test: toy sizes, one round, the ratios say nothing" if args.quick else ""),
        flush=True,
    )
    summary = {"capability": cap, "threads": torch.get_num_threads(), "clock": clock, "quick": args.quick}
    peer_dir = os.environ.get("PEER_DALLE")
    if not peer_dir:
        print("skipped: set PEER_DALLE=<lucidrains/DALLE-pytorch checkout> to compare")
        print("BENCH_JSON " + json.dumps({**summary, "skipped": "PEER_DALLE not set"}))
        return
    mod = import_peer(peer_dir)
    print(f"peer: {peer_dir} (dalle_pytorch.dalle_pytorch.DALLE / DiscreteVAE)", flush=True)
    dtypes = [("fp32", False)]
    if args.no_bf16:
        print("bf16 training rows: off (--no-bf16)")
    elif cpu_has_native_bf16():
        dtypes.append(("bf16", True))
    else:
        print("bf16 training rows: skipped (no native bf16 on this CPU: emulated bf16 would time the emulation)")
    rows = []
    if "train" in args.parts:
        rows += training_part(mod, args.grids, reps, dtypes)
    if "gen" in args.parts:
        rows += generation_part(mod, args.grids, args.gen_g1_grids, reps, args.slow_reps)
    if "dvae" in args.parts:
        rows += dvae_part(mod, reps)
    print(f"\nsummary, ours / peer, median of rounds (CPU capability {cap}, {torch.get_num_threads()} thread(s)):")
    for r in rows:
        print(f"   {r['name']}: {r['ratio']:.2f}x ({verdict(r)})")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    print("BENCH_JSON " + json.dumps({**summary, "peer": peer_dir, "rows": rows}))


if __name__ == "__main__":
    main()
