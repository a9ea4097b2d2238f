"""``make demo``: the main job, end to end, on the built-in shapes world (CPU, no downloads), in about 30 minutes.

Stages (each an ordinary command, printed with its expected time before it runs, so you can re-run or tweak it):

1. ``tokenizer``  VQ-VAE image tokenizer, 32 px -> 8x8 codes             (zoo-train experiment=demo/tokenizer)
2. ``clip``       the shapes CLIP: reranks DALL·E, conditions unCLIP     (zoo-train experiment=demo/clip)
3. ``dalle``      the DALL·E 1 transformer over the tokenizer's codes    (zoo-train experiment=demo/dalle)
4. ``embed``      CLIP embeddings of the scenes, for the prior           (zoo-embed, train / val / test)
5. ``prior``      unCLIP's diffusion prior: caption -> image embedding   (zoo-train experiment=demo/prior)
6. ``decoder``    unCLIP's decoder: embedding + caption -> 32 px image   (zoo-train experiment=demo/decoder)
7. ``dalle_samples`` / ``unclip_samples``: the demo prompts, best 8 of 32 (DALL·E) / 8 (unCLIP) by CLIP (zoo-sample)
8. ``unclip_manipulations``: variations of a scene and an interpolation strip between two (python -m
   zoo.pipelines.unclip)
9. ``judge``      the shapes judge zoo-eval scores prompt fidelity with (trained once, cached in .zoo_cache/judge)
10. ``eval``      DALL·E 1 Figure 9 on shapes: metrics vs blur radius and vs reranked candidates (zoo-eval)

Training stages run for a wall-clock budget (``zoo.callbacks.TimeBudget``: it measures this CPU's seconds per step
and fits the step count and the learning-rate schedule into the budget), so the demo takes about the same time on a
CPU with native bf16 as on an AVX2-only one; the fast CPU trains more steps and draws better scenes.
``make demo FULL=1`` runs the long settings instead (the DALL·E 1 stages at 48 px for fixed step counts, the
unCLIP stages with 3x the budget; about 1.9 hours) into ``logs/demo_full``.

Stages write into ``logs/demo/<stage>``; a stage that finished earlier is reused (``DEMO_FRESH=1`` redoes all), so an
interrupted demo picks up where it stopped. ``DEMO_BUDGET_SCALE=0.1`` scales every training budget (a smoke run).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

FULL = os.environ.get("FULL", "0") == "1"
DEMO_DIR = Path("logs/demo_full" if FULL else "logs/demo")
SCALE = float(os.environ.get("DEMO_BUDGET_SCALE", "1"))
STARTUP_S = 25  # a zoo-train process: imports, data set-up, model build, the final checkpoint

# After training: samples for these prompts (shapes-world wording), reranked by the demo's CLIP.
SAMPLE_PROMPTS = [
    "a large red circle at the top left and a small blue square at the bottom right",
    "a large green triangle in the middle center",
    "a small yellow star at the top right and a large purple heart at the bottom left",
    "one object on a white background: a large blue cross, at the middle left",
]


@dataclass
class Stage:
    name: str
    overrides: list[str]
    minutes: Optional[float] = None  # the TimeBudget of a training stage (None: fixed step counts, FULL=1)
    expect_s: float = 0.0  # expected wall time of a fixed-work stage (measured on a 2-core AVX512 CPU)
    extra: list[str] = field(default_factory=list)


def ckpt(stage: str) -> Path:
    return DEMO_DIR / stage / "checkpoints" / "last.ckpt"


def features(split: str) -> Path:
    return DEMO_DIR / "embed" / f"{split}.pt"


def training_stages() -> list[Stage]:
    tok, clip = ckpt("tokenizer"), ckpt("clip")
    feats = [f"data.features.{s}={features(s)}" for s in ("train", "val", "test")]
    unclip = [
        Stage("prior", ["experiment=demo/prior", *feats], minutes=1.5 * (3 if FULL else 1)),
        Stage("decoder", ["experiment=demo/decoder", f"model.clip_ckpt={clip}"], minutes=4.5 * (3 if FULL else 1)),
    ]
    if FULL:  # the long DALL·E 1 settings (fixed step counts): 48 px, 12x12 codes
        return [
            Stage("tokenizer", ["experiment=demo/full/tokenizer"], expect_s=16 * 60),
            Stage("clip", ["experiment=demo/full/clip"], expect_s=11 * 60),
            Stage("dalle", ["experiment=demo/full/dalle", f"model.image_tokenizer_ckpt={tok}"], expect_s=63 * 60),
            *unclip,
        ]
    return [
        # budgets: a quiet 2-core AVX512-BF16 run took 29 min 29 s in all with tokenizer 3.5 and DALL·E 7 minutes
        # (plus ~3 min of setup on a fresh clone); half a minute off each keeps a fresh clone inside 30 minutes
        Stage("tokenizer", ["experiment=demo/tokenizer"], minutes=3),
        Stage("clip", ["experiment=demo/clip"], minutes=2.5),
        Stage("dalle", ["experiment=demo/dalle", f"model.image_tokenizer_ckpt={tok}"], minutes=6.5),
        *unclip,
    ]


def announce(name: str, cmd: list[str], expect_s: float) -> float:
    print(f"\n=== demo stage '{name}' (expected ~{fmt(expect_s)}): {shlex.join(cmd)}", flush=True)
    return time.perf_counter()


def fmt(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def finish(name: str, t0: float, timings: dict[str, float]) -> None:
    timings[name] = time.perf_counter() - t0
    print(f"=== stage '{name}' finished in {fmt(timings[name])}", flush=True)


def finished(run_dir: Path) -> bool:
    """A stage is done when its run wrote metrics.json (or its outputs). Re-running ``make demo`` after an
    interruption keeps finished stages; ``DEMO_FRESH=1`` or deleting logs/demo/<stage> redoes them."""
    return os.environ.get("DEMO_FRESH", "0") != "1" and (run_dir / "metrics.json").is_file()


def run_train(stage: Stage, timings: dict[str, float]) -> Path:
    run_dir = DEMO_DIR / stage.name
    if finished(run_dir):
        print(f"\n=== demo stage '{stage.name}': reusing {run_dir} (finished earlier; DEMO_FRESH=1 redoes it)")
        return run_dir
    overrides = [*stage.overrides, f"hydra.run.dir={run_dir}"]
    expect = stage.expect_s
    if stage.minutes is not None:
        minutes = stage.minutes * SCALE
        overrides.append(f"callbacks.time_budget.minutes={minutes:g}")
        expect = minutes * 60 + STARTUP_S
    t0 = announce(stage.name, ["zoo-train", *overrides], expect)
    subprocess.run([sys.executable, "-m", "zoo.train", *overrides], check=True)
    finish(stage.name, t0, timings)
    return run_dir


def run_embed(timings: dict[str, float]) -> None:
    """zoo-embed of the prior's splits (sizes as in experiment=demo/prior) with the demo CLIP."""
    sizes = {"train": 4096, "val": 256, "test": 256}
    todo = [s for s in sizes if not features(s).is_file() or os.environ.get("DEMO_FRESH", "0") == "1"]
    if not todo:
        print(f"\n=== demo stage 'embed': reusing {features('train').parent}")
        return
    size_args = [
        f"data.train_size={sizes['train']}",
        f"data.val_size={sizes['val']}",
        f"data.test_size={sizes['test']}",
    ]
    t0 = announce("embed", ["zoo-embed", f"clip.checkpoint={ckpt('clip')}", "split=<train|val|test>"], 70)
    for split in todo:
        overrides = [f"clip.checkpoint={ckpt('clip')}", "data=shapes", *size_args, f"split={split}"]
        overrides += [f"out={features(split)}", f"hydra.run.dir={DEMO_DIR / 'embed' / split}"]
        print(f"    zoo-embed {shlex.join(overrides)}", flush=True)
        subprocess.run([sys.executable, "-m", "zoo.embed", *overrides], check=True)
    finish("embed", t0, timings)


def run_sample(name: str, overrides: list[str], expect_s: float, timings: dict[str, float]) -> dict:
    out_dir = DEMO_DIR / name
    overrides = [*overrides, f"prompts={json.dumps(SAMPLE_PROMPTS)}", f"hydra.run.dir={out_dir}"]
    t0 = announce(name, ["zoo-sample", *overrides], expect_s)
    subprocess.run([sys.executable, "-m", "zoo.sample", *overrides], check=True)
    finish(name, t0, timings)
    written = json.loads((out_dir / "samples.json").read_text())
    return {
        "run_dir": str(out_dir),
        "metrics": {},
        "last_grid": next(iter(written.values()))["grid"] if written else None,
        "grids": [w["grid"] for w in written.values()],
        "clip_scores": {p: w.get("clip_scores") for p, w in written.items()},
    }


def scene_images(out_dir: Path) -> list[Path]:
    """Two val scenes of the shapes world (32 px PNGs): the inputs of the variations and the interpolation."""
    import torch
    from torchvision.utils import save_image

    from zoo.data.shapes import ShapesDataset

    ds = ShapesDataset(split="val", size=8, resolution=32)
    paths = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for i in (1, 2):
        item = ds[i]
        p = out_dir / f"scene{i}.png"
        save_image(torch.as_tensor(item["image"]).add(1).div(2).clamp(0, 1), p)
        (out_dir / f"scene{i}.txt").write_text(str(item["caption"]) + "\n")
        paths.append(p)
    return paths


def run_manipulations(timings: dict[str, float]) -> dict:
    out_dir = DEMO_DIR / "unclip_manipulations"
    scenes = scene_images(out_dir)
    common = [f"--decoder-ckpt={ckpt('decoder')}", f"--clip-ckpt={ckpt('clip')}", "--decoder-steps=25"]
    jobs = {
        "variations": ["variations", str(scenes[0]), "-n", "6", "--eta", "0.5", "--decoder-guidance-scale", "2"],
        "interpolation": ["interpolate", str(scenes[0]), str(scenes[1]), "-n", "6", "--latent", "slerp"],
    }
    t0 = announce("unclip_manipulations", ["python", "-m", "zoo.pipelines.unclip", "<variations|interpolate>"], 40)
    grids = {}
    for what, args in jobs.items():
        out = out_dir / f"{what}.png"
        cmd = [sys.executable, "-m", "zoo.pipelines.unclip", *args, *common, f"--out={out}"]
        print(f"    {shlex.join(['python', *cmd[1:]])}", flush=True)
        subprocess.run(cmd, check=True)
        grids[what] = str(out)
    finish("unclip_manipulations", t0, timings)
    return {"run_dir": str(out_dir), "metrics": {}, "last_grid": grids["interpolation"], "grids": grids}


def run_judge(timings: dict[str, float]) -> None:
    """The shapes judge that zoo-eval scores prompt fidelity with: trained once (400 steps) and cached under
    .zoo_cache/judge, shown as its own stage so its time is not hidden inside the eval."""
    resolution = 48 if FULL else 32
    judge_dir = Path(os.environ.get("ZOO_CACHE_DIR", ".zoo_cache")) / "judge"  # zoo-eval's judge.dir
    code = (  # logging configured: the judge's progress lines (zoo.progress, INFO) reach the demo's log
        "import logging; logging.basicConfig(level=logging.INFO, format='[%(asctime)s][%(name)s] %(message)s'); "
        "from omegaconf import OmegaConf; from eval.cli import build_judge; "
        f"build_judge(OmegaConf.create({{'dir': '{judge_dir}', 'steps': 400, 'batch_size': 128}}), {resolution}, True)"
    )
    from eval.cli import build_judge  # noqa: F401  (fail here, not in the subprocess, if eval is not installed)
    from zoo.data.shapes import WORLD_VERSION

    cached = judge_dir / f"shapes_judge_v{WORLD_VERSION}_{resolution}px_400x128.pt"
    if cached.is_file():
        print(f"\n=== demo stage 'judge': reusing {cached}")
        return
    # 400 steps x 128 scenes, ~120 GFLOP a step: measured 7 min 17 s on a quiet 2-core AVX512-BF16 CPU before the
    # judge ran channels_last (step 1.4x faster in fp32, 1.1-1.8x in bf16, timed under load); longer in fp32 on a CPU without native bf16
    t0 = announce("judge", ["python", "-c", code], 330)
    subprocess.run([sys.executable, "-c", code], check=True)
    finish("judge", t0, timings)


def run_eval(timings: dict[str, float]) -> dict:
    """zoo-eval on the demo's DALL·E: DALL·E 1 Figure 9 (metrics vs blur radius and vs CLIP-reranked candidates)."""
    out_dir = DEMO_DIR / "eval"
    overrides = ["experiment=dalle1/fig9", f"hydra.run.dir={out_dir}"]
    overrides += [f"generator.dalle_ckpt={ckpt('dalle')}", f"clip.checkpoint={ckpt('clip')}"]
    expect = 400
    if FULL:  # 48 px scenes, the whole Figure 9 (256 captions, up to 32 candidates)
        overrides += ["protocol.resolution=48"]
    else:  # 32 px scenes; 128 captions and up to 8 candidates keep it to a couple of minutes
        overrides += ["protocol.resolution=32", "protocol.n=128", "rerank.candidates=[1,2,4,8]", "blur.candidates=8"]
        expect = 120
    t0 = announce("eval", ["zoo-eval", *overrides], expect)
    subprocess.run([sys.executable, "-m", "eval.cli", *overrides], check=True)
    finish("eval", t0, timings)
    plots = sorted(str(p) for p in out_dir.glob("*.png"))
    return {
        "run_dir": str(out_dir),
        "metrics": {},
        "last_grid": plots[0] if plots else None,
        "results": str(out_dir / "results.md"),
        "plots": plots,
    }


def main() -> None:
    t_start = time.perf_counter()
    from zoo.precision import describe_cpu

    stages = training_stages()
    budget = sum((s.minutes * SCALE * 60 + STARTUP_S) if s.minutes is not None else s.expect_s for s in stages)
    # embed, the two sample stages, manipulations, the judge, eval
    budget += 70 + 60 + 60 + 40 + 150 + (400 if FULL else 120)
    print(f"make demo{' FULL=1' if FULL else ''}: {describe_cpu()}")
    print(f"expected total ~{fmt(budget)}; outputs under {DEMO_DIR}/", flush=True)
    timings: dict[str, float] = {}
    summary: dict[str, dict] = {}
    for stage in stages:
        if stage.name == "prior":
            run_embed(timings)
        run_dir = run_train(stage, timings)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        grids = sorted((run_dir / "samples").glob("*.png"))
        summary[stage.name] = {
            "run_dir": str(run_dir),
            "metrics": metrics,
            "last_grid": str(grids[-1]) if grids else None,
        }
    summary["dalle_samples"] = run_sample(
        "dalle_samples",
        [f"ckpt={ckpt('dalle')}", f"generator.clip_ckpt={ckpt('clip')}", "generator.n_candidates=32", "n_keep=8"],
        60,
        timings,
    )
    unclip = ["generator=unclip", f"generator.prior_ckpt={ckpt('prior')}", f"generator.decoder_ckpt={ckpt('decoder')}"]
    unclip += [
        f"generator.clip_ckpt={ckpt('clip')}",
        "generator.n_candidates=8",
        "n_keep=8",
        "generator.decoder_steps=25",
    ]
    summary["unclip_samples"] = run_sample("unclip_samples", unclip, 60, timings)
    summary["unclip_manipulations"] = run_manipulations(timings)
    run_judge(timings)
    summary["eval"] = run_eval(timings)
    total = time.perf_counter() - t_start
    print(f"\n=== demo summary ({describe_cpu()}): {fmt(total)} in all")
    for name, s in summary.items():
        shown = {
            k: round(v, 4)
            for k, v in s["metrics"].items()
            if isinstance(v, float) and k.startswith(("val/", "test/")) and "/" in k
        }
        took = f" [{fmt(timings[name])}]" if name in timings else " [reused]"
        print(f"{name}{took}: {s['run_dir']}\n  metrics: {shown}\n  grid: {s['last_grid']}")
    print(f"  DALL·E Figure 9 table: {summary['eval']['results']}")
    summary["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    summary["total_s"] = round(total, 1)
    (DEMO_DIR / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
