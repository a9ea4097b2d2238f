"""``make demo``: the main job, end to end, on the built-in shapes world (CPU, no downloads).

Stages: image tokenizer (VQ-VAE), CLIP, DALL·E transformer (``zoo-train``), reranked samples (``zoo-sample``) and
DALL·E Figure 9 on shapes (``zoo-eval``). Each is an ordinary command (printed before it runs, so you can re-run or
tweak it); a stage that finished earlier is reused (``DEMO_FRESH=1`` redoes all). The stages
write into ``logs/demo/<stage>`` and later stages find earlier checkpoints there.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

DEMO_DIR = Path("logs/demo")

# (stage name, zoo-train overrides). Experiments hold the settings; the demo only picks them.
STAGES: list[tuple[str, list[str]]] = [
    ("tokenizer", ["experiment=demo/tokenizer"]),
    ("clip", ["experiment=demo/clip"]),
    ("dalle", ["experiment=demo/dalle"]),
]

# After training: DALL·E samples for these prompts (shapes-world wording), reranked by the demo's CLIP.
SAMPLE_PROMPTS = [
    "a large red circle at the top left and a small blue square at the bottom right",
    "a large green triangle in the middle center",
    "a small yellow star at the top right and a large purple heart at the bottom left",
    "one object on a white background: a large blue cross, at the middle left",
]


def run_sampling(prompts: list[str] = SAMPLE_PROMPTS) -> Path:
    """zoo-sample on the demo's DALL·E checkpoint: 32 candidates per prompt, CLIP-reranked, best 8 as a grid."""
    out_dir = DEMO_DIR / "dalle_samples"
    clip = DEMO_DIR / "clip" / "checkpoints" / "last.ckpt"
    overrides = [
        f"ckpt={DEMO_DIR / 'dalle' / 'checkpoints' / 'last.ckpt'}",
        f"generator.clip_ckpt={clip if clip.is_file() else 'null'}",
        f"prompts={json.dumps(prompts)}",
        "generator.n_candidates=32",
        "n_keep=8",
        f"hydra.run.dir={out_dir}",
    ]
    print(f"\n=== demo stage 'dalle_samples': {shlex.join(['zoo-sample', *overrides])}", flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "zoo.sample", *overrides], check=True)
    print(f"=== stage 'dalle_samples' finished in {time.perf_counter() - t0:.0f} s", flush=True)
    return out_dir


def run_eval() -> dict:
    """zoo-eval on the demo's DALL·E: DALL·E 1 Figure 9 (metrics vs blur radius and vs CLIP-reranked candidates)."""
    out_dir = DEMO_DIR / "eval"
    overrides = ["experiment=dalle1/fig9", f"hydra.run.dir={out_dir}"]
    print(f"\n=== demo stage 'eval': {shlex.join(['zoo-eval', *overrides])}", flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "eval.cli", *overrides], check=True)
    print(f"=== stage 'eval' finished in {time.perf_counter() - t0:.0f} s", flush=True)
    plots = sorted(str(p) for p in out_dir.glob("*.png"))
    return {
        "run_dir": str(out_dir),
        "metrics": {},
        "last_grid": plots[0] if plots else None,
        "results": str(out_dir / "results.md"),
        "plots": plots,
    }


def finished(run_dir: Path) -> bool:
    """A stage is done when its run wrote metrics.json. Re-running ``make demo`` after an interruption (or after
    changing a later stage) keeps finished stages; ``DEMO_FRESH=1`` or deleting logs/demo/<stage> redoes them."""
    return os.environ.get("DEMO_FRESH", "0") != "1" and (run_dir / "metrics.json").is_file()


def run_stage(name: str, overrides: list[str]) -> Path:
    run_dir = DEMO_DIR / name
    if finished(run_dir):
        print(f"\n=== demo stage '{name}': reusing {run_dir} (finished earlier; DEMO_FRESH=1 redoes it)", flush=True)
        return run_dir
    cmd = [sys.executable, "-m", "zoo.train", *overrides, f"hydra.run.dir={run_dir}"]
    print(f"\n=== demo stage '{name}': {shlex.join(['zoo-train', *overrides, f'hydra.run.dir={run_dir}'])}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(f"=== stage '{name}' finished in {time.perf_counter() - t0:.0f} s", flush=True)
    return run_dir


def main() -> None:
    summary = {}
    for name, overrides in STAGES:
        run_dir = run_stage(name, overrides)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        grids = sorted((run_dir / "samples").glob("*.png"))
        summary[name] = {"run_dir": str(run_dir), "metrics": metrics, "last_grid": str(grids[-1]) if grids else None}
    if any(name == "dalle" for name, _ in STAGES):
        out_dir = run_sampling()
        written = json.loads((out_dir / "samples.json").read_text())
        summary["dalle_samples"] = {
            "run_dir": str(out_dir),
            "metrics": {},
            "last_grid": next(iter(written.values()))["grid"] if written else None,
            "clip_scores": {p: w.get("clip_scores") for p, w in written.items()},
        }
        summary["eval"] = run_eval()
    print("\n=== demo summary")
    for name, s in summary.items():
        shown = {
            k: round(v, 4) for k, v in s["metrics"].items() if isinstance(v, float) and k.startswith(("val/", "test/"))
        }
        print(f"{name}: {s['run_dir']}\n  metrics: {shown}\n  grid: {s['last_grid']}")
    (DEMO_DIR / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
