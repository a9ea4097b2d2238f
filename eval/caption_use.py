"""Does a text-to-image diffusion model use its captions, and at which noise levels?

    python -m eval.caption_use logs/glide/shapes_long/checkpoints/last.ckpt logs/glide/shapes_long_v/checkpoints/last.ckpt
    python -m eval.caption_use <ckpt> --t 50 400 800 950 --n 256 --raw --out logs/eval/glide/caption_use

For ``n`` held-out scenes of the shapes world (the ``val`` split, descriptive captions, world seed 0, rendered at the
model's size) and each timestep t of ``--t``, one x_t per scene is drawn (noise from ``--seed``, shared by every
checkpoint) and the GLIDE checkpoint predicts x0 from it three times: with the scene's own caption, with the empty
caption (the unconditional model of classifier-free guidance) and with another scene's caption (a fixed
permutation). Reported per t: the mean squared error of the predicted x0 (clamped to [-1, 1], as the samplers clip
it) against the real scene, for each of the three, and ``gain`` = 1 − true / empty.

How to read it: a model that reads its captions has true < empty < shuffled, most of all at the high noise levels
where x_t holds almost nothing of the image and a sample's background, colours and layout are decided. Equal
columns at a t mean the caption changes nothing there: classifier-free guidance at that t only amplifies noise.
The x0 error (not the ε error the model may be trained on) makes ε-, v- and x0-predicting models comparable: an ε
error at high noise is the x0 error times SNR(t), so ε-MSE tables hide exactly those steps.

Writes ``results.json`` / ``results.md`` to ``--out`` when given; prints the table either way.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional, Sequence

import torch

DEFAULT_T = (50, 200, 400, 600, 800, 950)
CONDITIONS = ("true", "empty", "shuffled")


def scenes(n: int, resolution: int, split: str = "val") -> tuple[torch.Tensor, list[str]]:
    """The first ``n`` scenes of a shapes split (descriptive captions): images (n, 3, R, R) in [-1, 1], captions."""
    from zoo.data.shapes import ShapesDataset

    ds = ShapesDataset(split=split, size=n, resolution=resolution, caption_style="descriptive")
    items = [ds[i] for i in range(n)]
    return torch.stack([it["image"] for it in items]), [it["caption"] for it in items]


@torch.no_grad()
def caption_use(
    glide, x0: torch.Tensor, captions: Sequence[str], timesteps: Sequence[int], seed: int = 0, batch_size: int = 64
) -> list[dict]:
    """Per timestep: {'t', 'true', 'empty', 'shuffled', 'gain'} (x0 MSEs; ``glide`` a ``GlideLit``, eval mode)."""
    process = glide.process
    n = len(captions)
    if n < 2:
        raise ValueError("caption_use needs at least 2 scenes (the shuffled caption is another scene's)")
    if max(timesteps) >= process.num_timesteps or min(timesteps) < 0:
        raise ValueError(f"timesteps must be in [0, {process.num_timesteps - 1}], got {list(timesteps)}")
    text = glide.encode_captions(list(captions)).cpu()
    # another scene's caption for every scene: a rotation by half the set (a permutation without fixed points)
    shuffled = text.roll(n // 2, dims=0)
    empty = glide.net.null_tokens(n)
    rows = []
    for t_val in timesteps:
        g = torch.Generator().manual_seed(int(seed) * 100_003 + int(t_val))
        noise = torch.randn(x0.shape, generator=g)
        t = torch.full((n,), int(t_val), dtype=torch.long)
        x_t = process.q_sample(x0, t, noise=noise)
        row = {"t": int(t_val)}
        for name, tokens in zip(CONDITIONS, (text, empty, shuffled)):
            err = 0.0
            for i in range(0, n, batch_size):
                s = slice(i, i + batch_size)
                out = glide.net(x_t[s].to(glide.device), t[s].to(glide.device), text_tokens=tokens[s].to(glide.device))
                pred, _ = process.predictions(out.float().cpu(), x_t[s], t[s], clip_denoised=True)
                err += float(((pred - x0[s]) ** 2).sum())
            row[name] = err / x0.numel()
        row["gain"] = 1.0 - row["true"] / row["empty"] if row["empty"] > 0 else 0.0
        rows.append(row)
    return rows


def to_markdown(results: dict) -> str:
    lines = [
        "# Caption use by noise level (x0 MSE; lower is better)",
        "",
        f"{results['n']} `{results['split']}` scenes of the shapes world, descriptive captions; "
        f"{'raw' if results['raw'] else 'EMA'} weights; x_t noise from seed {results['seed']}.",
        "",
    ]
    for ck in results["checkpoints"]:
        lines += [
            f"## `{ck['checkpoint']}` (prediction {ck['prediction']}, step {ck['global_step']})",
            "",
            "| t | true caption | empty caption | another scene's caption | gain = 1 − true / empty |",
            "|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['t']} | {r['true']:.5f} | {r['empty']:.5f} | {r['shuffled']:.5f} | {r['gain']:+.1%} |"
            for r in ck["rows"]
        ]
        lines.append("")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", help="zoo-train GLIDE checkpoints (model=glide)")
    ap.add_argument("--t", type=int, nargs="+", default=list(DEFAULT_T), help="timesteps of the training process")
    ap.add_argument("--n", type=int, default=128, help="scenes (default 128)")
    ap.add_argument("--split", default="val", choices=("train", "val", "test"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--raw", action="store_true", help="the raw weights instead of the EMA ones")
    ap.add_argument("--out", type=Path, default=None, help="folder for results.json / results.md")
    args = ap.parse_args(argv)

    from zoo.checkpoint import peek_checkpoint
    from zoo.pipelines.glide import load_glide

    results = {"n": args.n, "split": args.split, "seed": args.seed, "raw": bool(args.raw), "checkpoints": []}
    images = {}
    for path in args.checkpoints:
        glide, _ = load_glide(str(path), use_ema=not args.raw, option=None)
        glide.eval()
        size = glide.cfg.image_size
        if size not in images:
            images[size] = scenes(args.n, size, args.split)
        x0, captions = images[size]
        ckpt_meta = peek_checkpoint(path)  # its global_step only: the tensors are mapped, not read
        rows = caption_use(glide, x0, captions, args.t, seed=args.seed)
        results["checkpoints"].append(
            {
                "checkpoint": str(path),
                "prediction": glide.process.model_mean_type,
                "global_step": int(ckpt_meta.get("global_step", -1)),
                "rows": rows,
            }
        )
    md = to_markdown(results)
    print(md)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
        (args.out / "results.md").write_text(md + "\n")
        print(f"wrote {args.out / 'results.json'}, {args.out / 'results.md'}")
    return results


if __name__ == "__main__":
    main()
