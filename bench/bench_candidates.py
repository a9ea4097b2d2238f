"""Batched vs one-at-a-time candidates of a GLIDE model: sampling ms per image, and how far the images differ.

    OMP_NUM_THREADS=1 python bench/bench_candidates.py [--ckpt logs/.../last.ckpt] [--captions 1 2 4] [--n 8]
        [--steps 5] [--reps 2] [--threads 1]
    python bench/bench_candidates.py --threads 2      # the default of zoo-sample on a 2-core machine

What ``zoo-sample`` / ``zoo-serve`` / ``GlideLit.candidates`` do for n candidates of B captions:

* **one at a time** (before; still the path for a diffusers scheduler): candidate i is ``generate(captions,
  seed=seed + i)``, a denoiser batch of B rows (2B with classifier-free guidance) per candidate;
* **batched** (now, ``ddim`` / ``ddpm``): up to ``batch_size`` rows of several candidates in one denoiser batch, each
  candidate's rows drawing from its own seed's generator (``zoo.diffusion.noise.RowGenerators``), so the noise is
  the same and the images agree to float rounding (the max abs difference is printed).

The model: ``--ckpt`` (a GLIDE checkpoint), else the ``shapes`` preset freshly initialised (32 px, width 64; its zero-initialised
layers made small and random) with a word-hash stand-in tokenizer: speed does not depend on the weights. Both ways timed interleaved, best of ``--reps``;
one thread on the CPU-time clock, several on the wall clock (idle pool threads spin, which CPU time would count).
Then the other way round: one large sampling call (GLIDE ``generate`` of 32 captions; the ``shapes_32_128``
upsampler, untrained, on 16 images) in one piece vs in slices (16 images; ``CALL_POSITIONS`` pixels), as sampling
now runs them. Prints figures and a ``BENCH_JSON`` line; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_unet import interleaved_best  # noqa: E402

from zoo.precision import describe_cpu  # noqa: E402


class StandInTokenizer:
    """One id per word (a hash), [SOT] ... [EOT], pads 0: enough to drive the text encoder at its real length."""

    pad_id, sot_id, eot_id = 0, 2, 3

    def __init__(self, vocab_size: int, context_length: int):
        self.vocab_size, self.context_length = vocab_size, context_length

    def encode(self, captions):
        out = torch.zeros(len(captions), self.context_length, dtype=torch.long)
        for i, c in enumerate(captions):
            words = [4 + sum(map(ord, w)) % (self.vocab_size - 4) for w in c.split()]
            ids = [self.sot_id, *words[: self.context_length - 2], self.eot_id]
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def to_spec(self):
        return None


def load_glide(ckpt: str | None):
    from zoo.models.glide.lit import GlideLit

    if ckpt:
        from zoo.checkpoint import load_module

        return load_module(ckpt, expect=("glide",)).eval()
    torch.manual_seed(0)
    lit = GlideLit(preset="shapes")
    with torch.no_grad():  # zero-initialised layers (ADM's output convolutions) made small and random, so that the
        for p in lit.parameters():  # images depend on the network and the rounding comparison means something
            if p.dim() > 1 and not p.any():
                p.normal_(0.0, 0.02)
    lit.text_tokenizer = StandInTokenizer(lit.cfg.text_vocab, lit.cfg.text_len)
    return lit.eval()


CAPTIONS = [
    "a large red circle at the top left",
    "a small blue square at the bottom right",
    "a green triangle in the middle",
    "a yellow star at the top right",
    "a purple heart at the bottom left",
    "a large orange circle in the middle",
    "a small pink square at the top",
    "a cyan star at the bottom",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=None, help="a GLIDE checkpoint (default: the shapes preset, untrained)")
    ap.add_argument("--captions", type=int, nargs="+", default=[1, 2, 4], help="captions per call (B)")
    ap.add_argument("--n", type=int, default=8, help="candidates per caption")
    ap.add_argument("--steps", type=int, default=5, help="DDIM steps")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--batch-size", type=int, default=64, help="rows per denoiser batch when batched")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # before NNPACK's first call, which fixes its pool's size
    from zoo.nn.conv import effective_conv_backend

    threads = torch.get_num_threads()
    print(describe_cpu())
    print(f"torch {torch.__version__}; threads {threads}; conv backend {effective_conv_backend()[0]}")
    glide = load_glide(args.ckpt)
    c = glide.cfg
    print(
        f"model: {'checkpoint ' + args.ckpt if args.ckpt else 'shapes preset, untrained'}, {c.image_size} px; "
        f"{args.n} candidates, DDIM {args.steps} steps, guidance {glide.hparams.guidance_scale} (2 rows a caption)"
    )
    clock = time.process_time if threads == 1 else time.perf_counter
    rows = []
    for b in args.captions:
        caps = CAPTIONS[:b]
        knobs = dict(seed=0, steps=args.steps, sampler="ddim")
        out = {}

        def batched():
            out["batched"] = glide.candidates(caps, args.n, batch_size=args.batch_size, **knobs)

        def alone():
            out["alone"] = glide.candidates(caps, args.n, batch_size=b, **knobs)  # batch_size = B: one at a time

        best = interleaved_best({"alone": alone, "batched": batched}, args.reps, 1, warmup=0, clock=clock)
        images = b * args.n
        diff = (out["batched"] - out["alone"]).abs().max().item()
        row = {
            "captions": b,
            "alone_ms_per_image": round(1e3 * best["alone"] / images, 1),
            "batched_ms_per_image": round(1e3 * best["batched"] / images, 1),
            "speedup": round(best["alone"] / best["batched"], 2),
            "max_abs_diff": diff,
        }
        rows.append(row)
        print(
            f"  {b} caption(s) x {args.n}: one at a time {row['alone_ms_per_image']:7.1f} ms/image | batched "
            f"{row['batched_ms_per_image']:7.1f} ms/image | {row['speedup']:.2f}x | images differ by at most {diff:.1e}",
            flush=True,
        )
    sliced = sliced_calls(glide, args, clock)
    print("BENCH_JSON " + json.dumps({"machine": describe_cpu(), "threads": threads, "rows": rows, "sliced": sliced}))


def sliced_calls(glide, args, clock) -> list[dict]:
    """The other way round: one large sampling call run on slices (GLIDE: 16 images; the upsampler: CALL_POSITIONS
    pixels) against the same call in one piece (the module constants raised for the comparison)."""
    import zoo.models.glide.lit as glide_lit
    import zoo.models.upsampler.lit as up_lit

    print(f"\nlarge calls, one piece vs slices, DDIM {args.steps} steps, best of {args.reps}:")
    torch.manual_seed(0)
    up = up_lit.UpsamplerLit(preset="shapes_32_128").eval()  # untrained: speed only
    low = torch.rand(16, 3, up.cfg.low_res_size, up.cfg.low_res_size) * 2 - 1
    cases = {
        "GLIDE generate, 32 captions": (
            glide_lit,
            "CANDIDATE_BATCH",
            lambda: glide.generate((CAPTIONS * 4)[:32], seed=0, steps=args.steps, sampler="ddim"),
        ),
        f"upsampler {up.cfg.low_res_size} -> {up.cfg.image_size} px, 16 images": (
            up_lit,
            "CALL_POSITIONS",
            lambda: up.upsample(low, steps=args.steps, generator=torch.Generator().manual_seed(0), tile=0),
        ),
    }
    rows = []
    for name, (module, const, call) in cases.items():
        sliced_value, out = getattr(module, const), {}

        def run(key: str, value: int, call=call, module=module, const=const, out=out):
            def fn():
                setattr(module, const, value)
                out[key] = call()

            return fn

        best = interleaved_best(
            {"whole": run("whole", 10**9), "sliced": run("sliced", sliced_value)}, args.reps, 1, clock=clock
        )
        setattr(module, const, sliced_value)
        diff = (out["whole"] - out["sliced"]).abs().max().item()
        row = {"call": name, "whole_s": round(best["whole"], 2), "sliced_s": round(best["sliced"], 2)}
        row.update(speedup=round(best["whole"] / best["sliced"], 2), max_abs_diff=diff)
        rows.append(row)
        print(
            f"  {name}: one piece {row['whole_s']:.2f} s | sliced {row['sliced_s']:.2f} s | {row['speedup']:.2f}x | "
            f"images differ by at most {diff:.1e}",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    main()
