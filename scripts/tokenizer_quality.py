"""Train an image tokenizer on the shapes world for a fixed CPU-time budget; print val PSNR and codebook usage.

    python scripts/tokenizer_quality.py --model dvae --minutes 10
    python scripts/tokenizer_quality.py --model dvae --minutes 10 --set recon_loss=mse
    python scripts/tokenizer_quality.py --model vqvae --minutes 10

Plain training loop (bf16 autocast if native, channels_last) so the figure measures the model, not the framework. PSNR is
on reconstructions from the argmax / nearest codes: what the stage-2 transformer will see. Hyper-parameters
(schedules, lr) default to conf/model/<model>.yaml, as `zoo-train model=<model>` uses them; --set / --lr override.
The budget is CPU time (time.process_time) = minutes x torch threads, so contention from other processes
lengthens the wall time but not the amount of training.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from zoo.data.shapes import ShapesDataset
from zoo.precision import autocast_dtype, describe_cpu

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
AMP = autocast_dtype("cpu")  # bf16 where the CPU computes it natively, else None (fp32)


def yaml_defaults(model: str) -> tuple[dict, float]:
    """The LitModule kwargs and the lr of conf/model/<model>.yaml (without _target_ / optimizer / scheduler)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(CONF / f"{model}.yaml"))
    lr = cfg.get("optimizer", {}).get("lr", 1e-3)
    kw = {k: v for k, v in cfg.items() if k not in ("_target_", "optimizer", "scheduler")}
    return kw, lr


# Hydra's spellings (what `zoo-train model=dvae ...` takes) on top of Python literals
WORDS = {"true": True, "false": False, "null": None, "none": None}


def parse_value(text: str) -> Any:
    """A ``--set`` value: a Python literal (1, 1e-3, [4, 8], 'x', True), Hydra's true / false / null, else the string
    itself (``recon_loss=mse``). ``ast.literal_eval``, not ``eval``: a command-line value must not run code, and a
    word such as ``min`` or ``id`` stays a string instead of becoming a builtin."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return WORDS.get(text.strip().lower(), text)


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> ``{k: parse_value(v)}``; ValueError naming an item without ``=`` or without a key."""
    out = {}
    for kv in items:
        k, eq, v = kv.partition("=")
        if not eq or not k.strip():
            raise ValueError(f"--set {kv!r}: expected key=value (fix: e.g. --set recon_loss=mse kl_weight_max=1)")
        out[k.strip()] = parse_value(v)
    return out


def lit_class(model: str) -> type:
    if model == "dvae":
        from zoo.models.dvae.lit import DVAELit

        return DVAELit
    from zoo.models.vqvae.lit import VQVAELit

    return VQVAELit


def unknown_options(model: str, overrides: dict) -> Optional[str]:
    """A message naming the ``--set`` keys the model's LitModule does not take (None when all fit). Without it a
    network field given bare (``--set restart_after=20``) or another model's option (``--model vqvae --set
    recon_loss=mse``) was a TypeError traceback from the constructor, without the fix."""
    cls = lit_class(model)
    takes = set(inspect.signature(cls.__init__).parameters) - {"self", "optimizer", "scheduler"}
    unknown = sorted(set(overrides) - takes)
    if not unknown:
        return None
    return (
        f"--set {', '.join(unknown)}: not options of {cls.__name__} (it takes {', '.join(sorted(takes))}); a field of "
        f"the network is set as net.<field>, e.g. --set net.{unknown[0]}={overrides[unknown[0]]!r}"
    )


def build(model: str, overrides: dict):
    return lit_class(model)(**overrides)


def evaluate(lit, val: torch.Tensor) -> dict[str, float]:
    tok = lit.tokenizer
    lit.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=AMP or torch.bfloat16, enabled=AMP is not None):
        codes = torch.cat([tok.encode(val[i : i + 256]) for i in range(0, len(val), 256)])
        recon = torch.cat([tok.decode(codes[i : i + 256]).float() for i in range(0, len(val), 256)])
    lit.train()
    mse = F.mse_loss(recon.add(1).div(2), val.add(1).div(2)).item()
    counts = torch.bincount(codes.flatten(), minlength=tok.codebook_size)
    return {"psnr": 10 * torch.log10(torch.tensor(1 / mse)).item(), "usage": 100 * (counts > 0).float().mean().item()}


def main() -> None:
    print(describe_cpu())
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="dvae", choices=["dvae", "vqvae"])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=None, help="default: the yaml's optimizer.lr")
    ap.add_argument("--eval-every", type=int, default=200, help="steps between val evaluations; 0: only the final")
    ap.add_argument("--set", nargs="*", default=[], help="LitModule kwargs, e.g. recon_loss=mse kl_weight_max=1")
    args = ap.parse_args()
    # here, not as a ZeroDivisionError after the first step (--eval-every 0) or torch.stack's "expected a non-empty
    # list of Tensors" (--batch-size 0)
    if args.eval_every < 0 or args.batch_size < 1:
        ap.error(f"--eval-every must be >= 0 and --batch-size >= 1, got {args.eval_every} and {args.batch_size}")
    overrides, yaml_lr = yaml_defaults(args.model)
    overrides["net"] = dict(overrides.get("net") or {})
    args.lr = yaml_lr if args.lr is None else args.lr
    try:
        for k, v in parse_sets(args.set).items():
            if k.startswith("net."):
                overrides.setdefault("net", {})[k[4:]] = v
            else:
                overrides[k] = v
    except ValueError as e:
        ap.error(str(e))
    problem = unknown_options(args.model, overrides)
    if problem:
        ap.error(problem)
    torch.manual_seed(0)
    lit = build(args.model, overrides)
    opt = torch.optim.AdamW(lit.parameters(), lr=args.lr)
    train = ShapesDataset("train", 10**7, 32)
    vds = ShapesDataset("val", 1024, 32)
    val = torch.stack([vds[i]["image"] for i in range(len(vds))])
    t0, step = time.process_time(), 0
    budget = args.minutes * 60 * torch.get_num_threads()  # CPU seconds over all threads
    print(
        f"{args.model} {overrides} lr={args.lr} bs={args.batch_size} budget={args.minutes} min x {torch.get_num_threads()} threads"
    )
    while time.process_time() - t0 < budget:
        idx = range(step * args.batch_size, (step + 1) * args.batch_size)
        x = torch.stack([train[i]["image"] for i in idx])
        with torch.autocast("cpu", dtype=AMP or torch.bfloat16, enabled=AMP is not None):
            r = lit.forward_loss(x, step=step)
        opt.zero_grad(set_to_none=True)
        r["loss"].backward()
        opt.step()
        step += 1
        if args.eval_every and step % args.eval_every == 0:
            m = evaluate(lit, val)
            print(
                f"step {step:5d}  cpu {((time.process_time() - t0) / 60 / torch.get_num_threads()):5.1f} min  "
                f"loss {r['loss'].item():.4f}  val psnr {m['psnr']:.2f} dB  usage {m['usage']:.1f}%",
                flush=True,
            )
    m = evaluate(lit, val)
    print(f"FINAL {args.model} steps={step} val_psnr={m['psnr']:.2f}dB codebook_usage={m['usage']:.1f}%")


if __name__ == "__main__":
    main()
