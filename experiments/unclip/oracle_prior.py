"""Is it the prior or the decoder? unCLIP's decoder fed four image embeddings for the same val captions.

The leaderboard's unCLIP rows put objects in the named cell about 30% of the time, even with a CLIP whose image
embedding holds the cell (linear probe 0.93). This separates the two stages: the same decoder, captions, seeds
and sampler, with the image embedding taken from

- ``true``: the CLIP embedding of the val scene itself (a perfect prior: the ceiling the decoder allows),
- ``prior``: the trained prior's sample (what the leaderboard row does),
- ``text_emb``: the caption's CLIP text embedding used as the image embedding (the paper's middle ablation),
- ``none``: the decoder's null embedding (caption only),

each scored by the shapes judge (per-attribute accuracy, prompt fidelity, as zoo-eval), with the cosine of each
embedding to the true one. Settings follow ``conf/eval/experiment/leaderboard/unclip_diffusion.yaml``.

    python experiments/unclip/oracle_prior.py --prior logs/leaderboard/prior/checkpoints/last.ckpt \
        --decoder logs/leaderboard/decoder/checkpoints/last.ckpt --clip logs/demo/clip/checkpoints/last.ckpt \
        --n 128 --out logs/eval/unclip/oracle_prior

``--judge`` defaults to the 32 px judge zoo-eval caches under ``.zoo_cache/judge`` (trained there first if absent):
its file name carries the judge code's digest, so a path written into a command goes stale after an edit of
eval/judge.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from eval.cli import build_judge
from eval.judge import attribute_accuracy, load_judge, prompt_fidelity, subject_accuracy
from zoo.data.shapes import ShapesDataset
from zoo.pipelines.unclip import UnclipPipeline
from zoo.precision import describe_cpu

SOURCES = ("true", "prior", "text_emb", "none")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", required=True, help="a zoo-train diffusion_prior (or ar_prior) last.ckpt")
    ap.add_argument("--decoder", required=True, help="a zoo-train unclip_decoder last.ckpt")
    ap.add_argument("--clip", required=True, help="the CLIP both were trained on (make demo's)")
    ap.add_argument(
        "--judge",
        default=None,
        help="a shapes judge file (default: the 32 px judge zoo-eval caches in .zoo_cache/judge, trained if absent)",
    )
    ap.add_argument("--n", type=int, default=128, help="val scenes (the first n, descriptive captions)")
    ap.add_argument("--guidance", type=float, default=3.0, help="decoder guidance (the leaderboard's: 3)")
    ap.add_argument("--steps", type=int, default=25, help="decoder steps (respaced DDPM, the leaderboard's)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="logs/eval/unclip/oracle_prior")
    args = ap.parse_args()
    print(describe_cpu(), "| threads", torch.get_num_threads())

    pipe = UnclipPipeline.from_checkpoints(
        args.prior,
        args.decoder,
        args.clip,
        decoder_steps=args.steps,
        decoder_sampler="ddpm",
        decoder_guidance_scale=args.guidance,
    )
    judge = (
        load_judge(args.judge) if args.judge else build_judge(OmegaConf.create({"dir": ".zoo_cache/judge"}), 32, True)
    )
    ds = ShapesDataset("val", size=args.n, caption_style="descriptive")
    items = [ds[i] for i in range(args.n)]
    truth = [it["attributes"] for it in items]
    # the scenes' own CLIP embeddings, once: the "true" row's input and every row's reference
    true_all = F.normalize(pipe.image_embedding(torch.stack([it["image"] for it in items])).float(), dim=-1)
    rows = {}
    for source in SOURCES:
        images, cos = [], []
        for b0 in range(0, args.n, args.batch):
            batch = items[b0 : b0 + args.batch]
            caps = [it["caption"] for it in batch]
            true = true_all[b0 : b0 + args.batch]
            gen = torch.Generator().manual_seed(args.seed + b0)  # the same seeds for every source
            if source == "true":
                emb = true
            else:
                pipe.prior = source if source != "prior" else pipe._prior_kind(pipe.prior_model)
                emb = pipe.embeddings(caps, generator=gen)
            if source != "none":
                cos.append((F.normalize(emb.float(), dim=-1) * true).sum(1))
            gen = torch.Generator().manual_seed(args.seed + 10_000 + b0)
            images.append(pipe.decode(emb, caps, generator=gen).clamp(-1, 1))
        images = torch.cat(images)
        read = judge.read(images)
        acc = attribute_accuracy(read, truth)
        rows[source] = {
            **{k: round(v, 4) for k, v in acc.items()},
            "prompt_fidelity": round(prompt_fidelity(read, truth), 4),
            "subject": round(subject_accuracy(read, truth), 4),
            "cos_to_true": round(torch.cat(cos).mean().item(), 4) if cos else None,
        }
        print(source, rows[source], flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "cpu": describe_cpu(), "rows": rows}, indent=2))
    cols = ["position", "shape", "colour", "size", "background", "count", "subject", "prompt_fidelity", "cos_to_true"]
    lines = ["| image embedding | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for source, r in rows.items():
        cells = [
            ("–" if r[c] is None else (f"{r[c]:.3f}" if c == "cos_to_true" else f"{100 * r[c]:.1f}%")) for c in cols
        ]
        lines.append(f"| {source} | " + " | ".join(cells) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
