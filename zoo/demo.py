"""``make demo``: the main job, end to end, on the built-in shapes world (CPU, no downloads).

Each stage is an ordinary ``zoo-train`` command (printed before it runs, so you can re-run or tweak it); the stages
write into ``logs/demo/<stage>`` and later stages find earlier checkpoints there.
"""
from __future__ import annotations

import json
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
]


def run_stage(name: str, overrides: list[str]) -> Path:
    run_dir = DEMO_DIR / name
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
    print("\n=== demo summary")
    for name, s in summary.items():
        shown = {k: round(v, 4) for k, v in s["metrics"].items() if isinstance(v, float) and k.startswith(("val/", "test/"))}
        print(f"{name}: {s['run_dir']}\n  metrics: {shown}\n  grid: {s['last_grid']}")
    (DEMO_DIR / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
