"""``make demo``: the main job, end to end, on the built-in shapes world (CPU, no downloads), in about 30 minutes.

Stages (each an ordinary command, printed with its expected time before it runs, so you can re-run or tweak it):

1. ``judge``      the shapes judge zoo-eval scores prompt fidelity with (trained once, cached in .zoo_cache/judge);
   first, because it needs no trained model and its wall time measures this CPU's speed
2. ``tokenizer``  VQ-VAE image tokenizer, 32 px -> 8x8 codes             (zoo-train experiment=demo/tokenizer)
3. ``clip``       the shapes CLIP: reranks DALL·E, conditions unCLIP     (zoo-train experiment=demo/clip)
4. ``dalle``      the DALL·E 1 transformer over the tokenizer's codes    (zoo-train experiment=demo/dalle)
5. ``embed``      CLIP embeddings of the scenes, for the prior           (zoo-embed, train / val / test)
6. ``prior``      unCLIP's diffusion prior: caption -> image embedding   (zoo-train experiment=demo/prior)
7. ``decoder``    unCLIP's decoder: embedding + caption -> 32 px image   (zoo-train experiment=demo/decoder)
8. ``dalle_samples`` / ``unclip_samples``: the demo prompts, best 8 of 32 (DALL·E) / 8 (unCLIP) by CLIP (zoo-sample)
9. ``unclip_manipulations``: variations of a scene and an interpolation strip between two (python -m
   zoo.pipelines.unclip)
10. ``eval``      DALL·E 1 Figure 9 on shapes: metrics vs blur radius and vs reranked candidates (zoo-eval)

Training stages run for a wall-clock budget (``zoo.callbacks.TimeBudget``: it measures this CPU's seconds per step
and fits the step count and the learning-rate schedule into the budget). The budgets are not fixed: ``Schedule``
gives each training stage its share of the time left before the target (``DEMO_MINUTES``, 30, counted from when
``make demo`` started, set-up included), after the predicted time of the fixed-work stages. So the demo takes about
30 minutes on a CPU with native bf16 and on an AVX2-only one alike; the fast CPU trains more steps and draws better
scenes. ``make demo FULL=1`` runs the long settings instead (the DALL·E 1 stages at 48 px for fixed step counts, the
unCLIP stages with 3x the budget, the reference width-64 judge; about 2 to 3.2 hours by the CPU, see ``FULL_S``) into ``logs/demo_full``.

Stages write into ``logs/demo/<stage>``, with a record of the settings each was built from (``demo_settings.json``:
its composed config, its command, the contents of its inputs from earlier stages, the CPU's precision,
``DEMO_BUDGET_SCALE``, the shapes world; not the time budget, fitted anew on every run). A stage that finished earlier is
reused while its record matches (``DEMO_FRESH=1`` redoes all), so an interrupted demo picks up where it stopped; one
whose settings or inputs changed is redone, with a line naming what changed, and so are the stages built from it
(``stage_inputs``). A stage from before the records is reused with a warning (``why_redo``). With FULL=1 an
interrupted training stage also resumes from its last checkpoint, if its settings are unchanged (its time is the sum
of its runs, kept in ``stage_legs.json``); a budgeted stage starts over. ``DEMO_BUDGET_SCALE=0.1`` scales every training budget (a smoke run).
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


def env_flag(name: str) -> bool:
    """A make demo switch (FULL, DEMO_FRESH): 1 on, 0 or unset off. Any other value was read as off without a word:
    DEMO_FRESH=true reused every finished stage, make demo FULL=yes ran the 30-minute demo."""
    value = os.environ.get(name, "").strip()
    if value not in ("", "0", "1"):
        raise SystemExit(f"error: {name}={value} is not a make demo switch (fix: {name}=1 for on, {name}=0 for off)")
    return value == "1"


def env_number(name: str, default: float, what: str) -> float:
    """A positive number of make demo (DEMO_MINUTES, DEMO_BUDGET_SCALE): a word was float()'s ValueError traceback, and
    0 trained every stage for 0 minutes."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not 0 < number < float("inf"):
        raise SystemExit(
            f"error: {name}={value} must be a positive number, {what} (fix: {name}={default:g}, the default)"
        )
    return number


FULL = env_flag("FULL")


def zoo_path(var: str, name: str) -> Path:
    """Where conf/paths/default.yaml puts a path the configs share: $<var> when set, else <name> under $ZOO_ROOT (the
    launch directory when unset). The demo read ZOO_LOG_DIR / ZOO_CACHE_DIR alone: with ZOO_ROOT set (as the
    experiments READMEs' runs are) it wrote ./logs/demo where zoo-eval and make leaderboard read $ZOO_ROOT/logs/demo,
    and trained its judge in ./.zoo_cache where its own eval stage looked in $ZOO_ROOT/.zoo_cache (and trained another)."""
    return Path(os.environ.get(var) or Path(os.environ.get("ZOO_ROOT") or ".") / name)


# Under the log dir the configs read the demo's outputs from (${paths.log_dir}/demo/...: the eval generators, the
# leaderboard and unCLIP experiments, experiments/leaderboard/run.sh).
DEMO_DIR = zoo_path("ZOO_LOG_DIR", "logs") / ("demo_full" if FULL else "demo")
SCALE = env_number("DEMO_BUDGET_SCALE", 1.0, "the factor on every training budget")
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


def clip_batch_override() -> list[str]:
    """The demo CLIP's batch for this CPU. Its budget buys ~230 steps of 128 with native bf16 but ~60 in fp32, and
    60 steps leave a contrastive CLIP at chance: in fp32, the CLIP share of the AVX2 demo run (63 steps of 128, 4.0 min
    on one thread) reached text-to-image R@1 0.05 on the test scenes, 126 steps of 64 in the same time 0.43.
    With native bf16, halving the batch buys nothing (462 x 64: R@1 0.80 in 13.9 min, 231 x 128: 0.82 in 9.3 min,
    one thread each on a busy machine), so the batch stays 128 there. Those were ViT figures; the ResNet tower make
    demo trains now (``shapes_rn``) is fast enough in fp32 that the smaller batch no longer pays: 4 minutes on one
    thread with AVX2 kernels, 305 steps of 128 reach R@1 0.93 and 543 of 64 reach 0.90 (within the noise of 256
    test scenes). A whole AVX2 demo with it at 64 (39af835, fresh clone, AVX2 kernels, fp32): 584 steps, R@1 0.91,
    and the demo in 27 min 50 s. 64 and 128 tie within noise, so the override stays."""
    from zoo.precision import cpu_has_native_bf16

    return [] if cpu_has_native_bf16() else ["data.batch_size=64"]


def training_stages() -> list[Stage]:
    tok, clip = ckpt("tokenizer"), ckpt("clip")
    feats = [f"data.features.{s}={features(s)}" for s in ("train", "val", "test")]
    unclip = [
        Stage("prior", ["experiment=demo/prior", *feats], minutes=1.5 * (3 if FULL else 1)),
        Stage("decoder", ["experiment=demo/decoder", f"model.clip_ckpt={clip}"], minutes=4.5 * (3 if FULL else 1)),
    ]
    if FULL:  # the long DALL·E 1 settings (fixed step counts): 48 px, 12x12 codes
        return [
            Stage("tokenizer", ["experiment=demo/full/tokenizer"], expect_s=FULL_S["tokenizer"]),
            Stage("clip", ["experiment=demo/full/clip"], expect_s=FULL_S["clip"]),
            Stage(
                "dalle", ["experiment=demo/full/dalle", f"model.image_tokenizer_ckpt={tok}"], expect_s=FULL_S["dalle"]
            ),
            *unclip,
        ]
    # Nominal budgets (minutes): their *shares* of the time left are what counts. Before each training stage the
    # Schedule turns "deadline - now - the predicted time of the fixed-work stages still to come" into this stage's
    # share, so a slower CPU (no native bf16: fp32 everywhere) or a slow setup shortens training instead of
    # overrunning the 30 minutes, and a fast one trains longer.
    return [
        Stage("tokenizer", ["experiment=demo/tokenizer"], minutes=3),
        Stage("clip", ["experiment=demo/clip", *clip_batch_override()], minutes=2.5),
        Stage("dalle", ["experiment=demo/dalle", f"model.image_tokenizer_ckpt={tok}"], minutes=6.5),
        *unclip,
    ]


# Fixed-work stages (they do a set amount of work, not a time budget): seconds measured on a quiet 2-core
# AVX512-BF16 CPU (fresh clone, ac2f20f: embed 41 s, samples 13 s / 22 s, manipulations 28 s, eval 49 s), rounded up.
FIXED_S = {"embed": 50, "dalle_samples": 20, "unclip_samples": 30, "unclip_manipulations": 35, "eval": 60}
# The judge (400 steps x 128 scenes at width 32) on that CPU with bf16 autocast, and in fp32 on a CPU without native
# bf16: 5 min 27 s measured with torch forced onto AVX2 kernels (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
# MKL_ENABLE_INSTRUCTIONS=AVX2 ZOO_FORCE_NATIVE_BF16=0) on the same machine. Its measured time over the one for this
# precision says how fast this machine is against the reference one.
JUDGE_S = {True: 150, False: 330}
# The fixed-work stages are inference at small batches: in that AVX2 run they took 172 s against 153 s with native
# bf16 (1.12x), not the judge's 2.2x, so a CPU without native bf16 scales them by this much only.
FIXED_NO_BF16 = 1.2


# make demo FULL=1's stages (wall seconds) on its reference machine, a quiet 2-core AMD EPYC with avx512_bf16 and no
# AMX, fresh clone of 06bdf65 (2026-12-02), timed end to end over three runs (two interruptions, resumed): judge
# 4 min 54 s; tokenizer 1,200 steps, 30 min 18 s; CLIP (ResNet tower) 200 steps, 1 min 34 s; DALL·E 2,000 steps,
# 123 min 34 s; embed 37 s; samples 24 s / 26 s; manipulations 28 s; the 48 px Figure 9 eval 11 min 38 s (prior and
# decoder are budgeted: 4.5 and 13.5 minutes). All stages 191 min 17 s, with set-up 3 h 13 min. On an Intel Xeon with
# AMX the DALL·E 1 stages took 16 / 11 (ViT CLIP) / 63 minutes: bf16 matmuls there are several times faster.
FULL_S = {
    "judge": 294,
    "tokenizer": 1818,
    "clip": 94,
    "dalle": 7414,
    "embed": 37,
    "dalle_samples": 24,
    "unclip_samples": 26,
    "unclip_manipulations": 28,
    "eval": 698,
}


class FullPace:
    """The expected stage times of ``make demo FULL=1``: ``FULL_S`` scaled by this CPU's speed against the reference
    machine, measured by the judge when this run trains it (its wall time over ``FULL_S["judge"]``)."""

    def __init__(self):
        self.factor = 1.0
        self.why = "the reference machine's times (AMD EPYC, avx512_bf16, no AMX)"

    def measured(self, judge_s: float) -> None:
        self.factor = min(max(judge_s / FULL_S["judge"], 0.25), 6.0)
        self.why = f"the reference times x {self.factor:.2f} (the judge: {fmt(judge_s)} vs {fmt(FULL_S['judge'])})"

    def expect(self, name: str) -> float:
        return FULL_S[name] * self.factor

    def total(self, stages: list[Stage]) -> float:
        """All stages: the fixed-work ones (FULL_S) scaled, the budgeted ones (the unCLIP stages) by their budget."""
        budgeted = sum(s.minutes * SCALE * 60 + STARTUP_S for s in stages if s.minutes is not None)
        return budgeted + sum(self.expect(n) for n in FULL_S)


PACE = FullPace()  # used when FULL


class Schedule:
    """Fits ``make demo`` into its wall-time target (``DEMO_MINUTES``, 30) counted from when ``make demo`` started
    (``DEMO_START``, set by the Makefile, so a fresh clone's venv set-up counts too).

    The judge runs first: it is fixed work (400 steps) that needs no trained model, so its wall time against
    ``JUDGE_S`` measures this CPU's speed factor, which scales the predicted time of the other fixed-work stages.
    Each training stage then gets its nominal share of what is left."""

    MARGIN_S = 90  # kept back for process start-up jitter and the summary
    MIN_SHARE = 0.35  # below this share of a stage's nominal budget, warn: the target cannot be met here
    MAX_SHARE = 2.0  # a fast CPU trains longer, up to twice the nominal budget

    def __init__(self, stages: list[Stage]):
        start = os.environ.get("DEMO_START", "").strip()
        now = time.time()
        self.start = float(start) if start else now
        self.setup_s = now - self.start  # before the demo began: make's venv set-up, the interpreter's start
        self.target_s = env_number("DEMO_MINUTES", 30.0, "the demo's target in minutes") * 60
        self.deadline = self.start + self.target_s - self.MARGIN_S
        self.nominal = {s.name: s.minutes * 60 for s in stages if s.minutes is not None}
        self.done: set[str] = set()
        self.budgets: dict[str, float] = {}  # the TimeBudget minutes each training stage was given
        from zoo.precision import cpu_has_native_bf16

        self.native_bf16 = cpu_has_native_bf16()
        self.factor = 1.0  # this machine's speed against the reference one, at this precision
        self.factor_why = "assumed (no judge trained in this run)"

    @property
    def judge_s(self) -> float:
        """The judge's expected wall time on the reference machine at this CPU's precision."""
        return JUDGE_S[self.native_bf16]

    def measured(self, name: str, seconds: float, expected: float) -> None:
        """A fixed-work stage took ``seconds`` where ``expected`` was predicted for the reference machine."""
        self.factor = min(max(seconds / expected, 0.5), 6.0)
        self.factor_why = f"measured by the {name} stage ({fmt(seconds)} vs {fmt(expected)} on the reference machine)"

    def expect(self, name: str) -> float:
        """A fixed-work stage's predicted wall time on this machine."""
        return FIXED_S[name] * self.factor * (1.0 if self.native_bf16 else FIXED_NO_BF16)

    def fixed_left(self) -> float:
        return sum(self.expect(k) for k in FIXED_S if k not in self.done)

    def budget_minutes(self, stage: Stage) -> float:
        """This training stage's TimeBudget: its nominal share of the training time left before the deadline."""
        left = [n for n in self.nominal if n not in self.done]
        startup = STARTUP_S * len(left)
        available = self.deadline - time.time() - self.fixed_left() - startup
        share = available * self.nominal[stage.name] / sum(self.nominal[n] for n in left)
        lo, hi = self.MIN_SHARE * self.nominal[stage.name], self.MAX_SHARE * self.nominal[stage.name]
        if share < lo:
            print(
                f"    WARNING: only {fmt(max(share, 0))} left for '{stage.name}' within the {fmt(self.target_s)} target;"
                f" training it for {fmt(lo)} instead (the demo will run over; DEMO_MINUTES=<n> sets the target)",
                flush=True,
            )
        return min(max(share, lo), hi) / 60

    def describe(self) -> str:
        used = time.time() - self.start
        return (
            f"target {fmt(self.target_s)} from the start of `make demo` ({fmt(used)} used so far, "
            f"{fmt(max(self.deadline - time.time(), 0))} left); speed factor {self.factor:.2f}, {self.factor_why}"
        )


def shown(cmd: list[str]) -> str:
    """A stage's command as the user can run it: ``zoo-train`` / ``python`` of the demo's venv. make demo runs in
    .venv without activating it, so in the user's shell the bare ``zoo-train ...`` it printed was 'command not found'
    (or another Python's); the venv's bin dir goes in front unless the shell already finds the venv's own."""
    venv_bin = Path(sys.executable).parent
    found = shutil.which(cmd[0])
    if found is None or not os.path.samefile(Path(found).parent, venv_bin):
        exe = venv_bin / cmd[0]
        if exe.is_file():
            exe = exe.absolute()
            cmd = [str(exe.relative_to(Path.cwd()) if exe.is_relative_to(Path.cwd()) else exe), *cmd[1:]]
    return shlex.join(cmd)


def announce(name: str, cmd: list[str], expect_s: float) -> float:
    print(f"\n=== demo stage '{name}' (expected ~{fmt(expect_s)}): {shown(cmd)}", flush=True)
    return time.perf_counter()


def fmt(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def legs_file() -> Path:
    """Wall seconds of the interrupted runs ("legs") of fixed-step stages that will resume: an interrupted
    ``make demo FULL=1`` (hours on a CPU) picks a stage up from its last checkpoint, and the stage's time is then the
    sum of its legs, not just the last one."""
    return DEMO_DIR / "stage_legs.json"


def times_file() -> Path:
    """Wall seconds of every stage that finished, over all runs of the demo into DEMO_DIR."""
    return DEMO_DIR / "stage_times.json"


def _load(f: Path) -> dict:
    """A demo state file (stage timings, legs); a damaged one (a kill mid-write by a version that wrote in place)
    is set aside with a warning: it only tunes the next plan, and make demo must not stop on it."""
    if not f.is_file():
        return {}
    try:
        data = json.loads(f.read_text())
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        print(f"    WARNING: {f} is damaged; starting its record afresh (kept as {f.name}.damaged)", flush=True)
        f.replace(f.with_name(f.name + ".damaged"))
        return {}
    return data


def _save(f: Path, data: dict) -> None:
    from zoo.checkpoint import atomic_write_text

    f.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(f, json.dumps(data, indent=2))  # a kill mid-write keeps the previous record whole


def earlier_legs(name: str) -> list[float]:
    return _load(legs_file()).get(name, [])


def record_leg(name: str, seconds: float) -> None:
    legs = _load(legs_file())
    legs[name] = [*legs.get(name, []), round(seconds, 1)]
    _save(legs_file(), legs)


def finish(name: str, t0: float, timings: dict[str, float]) -> None:
    leg = time.perf_counter() - t0
    before = earlier_legs(name)
    timings[name] = leg + sum(before)
    how = f" ({fmt(leg)} in this run + {fmt(sum(before))} in {len(before)} interrupted one(s))" if before else ""
    print(f"=== stage '{name}' finished in {fmt(timings[name])}{how}", flush=True)
    # kept across runs: a resumed demo's summary still has the time of the stages it reuses
    _save(times_file(), {**_load(times_file()), name: round(timings[name], 1)})
    if before:  # counted now: the stage is finished
        _save(legs_file(), {k: v for k, v in _load(legs_file()).items() if k != name})


def run_child(cmd: list[str]) -> None:
    """``subprocess.run(cmd, check=True)``, except that an interruption of the demo (Ctrl-C, or SIGTERM turned into
    SystemExit by ``main``) lets a training child save its state first: subprocess.run would SIGKILL it at once.
    A signal sent to the whole process group (Ctrl-C, a scheduler) reaches the child itself; one sent to the demo
    alone is passed on after a moment."""
    proc = subprocess.Popen(cmd)
    try:
        rc = proc.wait()
    except BaseException:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # zoo-train saves interrupted.ckpt on SIGTERM
            try:
                proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise
    if rc:
        raise subprocess.CalledProcessError(rc, cmd)


def resumable(
    stage: Stage, run_dir: Path, settings: Optional[dict] = None, changes: Optional[list[str]] = None
) -> bool:
    """A fixed-step stage (FULL=1) with a checkpoint from an interrupted run resumes from it (``ckpt_path=last``),
    if that run's settings record matches ``settings`` (the stage's settings now).
    A budgeted stage starts over instead: its step count and learning-rate schedule are fitted to a budget that an
    interruption has already spent part of. ``changes``: ``record_changes`` of the record against the settings, from
    a caller that has compared them already (``run_train``), given instead of ``settings``."""
    if stage.minutes is not None or env_flag("DEMO_FRESH"):
        return False
    saved = [run_dir / "checkpoints" / n for n in ("last.ckpt", "interrupted.ckpt")]
    saved = [p for p in saved if p.is_file()]
    if settings is not None:
        changes = record_changes(settings_file(stage.name), settings)
    if changes is not None:  # checkpoints trained with other settings or inputs: start over
        return bool(saved) and not changes
    # no record (a run from before records): a checkpoint from before an input was rebuilt trained on the earlier
    # input, start over
    return bool(saved) and not any(newer_input(stage.name, p) for p in saved)


def stage_inputs(name: str) -> list[Path]:
    """The files of earlier stages that stage ``name`` is built from. A stage reused though one of them is newer
    (retrained since: ``logs/demo/clip`` deleted, or a ``DEMO_FRESH=1`` run interrupted after its CLIP stage) would
    pair an earlier run's model with a new one: embeddings of the old CLIP under the new one, a prior and decoder
    trained on them, and the unCLIP samples stage failing on their CLIP fingerprints after everything else ran."""
    return {
        "dalle": [ckpt("tokenizer")],
        "embed": [ckpt("clip")],
        "prior": [features(s) for s in ("train", "val", "test")],
        "decoder": [ckpt("clip")],
    }.get(name, [])


def newer_input(name: str, output: Path) -> Optional[Path]:
    """An input of stage ``name`` written after ``output`` (one of the stage's files), or None (make's rule)."""
    if not output.is_file():
        return None
    built = output.stat().st_mtime_ns
    return next((p for p in stage_inputs(name) if p.is_file() and p.stat().st_mtime_ns > built), None)


def finished(run_dir: Path) -> bool:
    """A stage is done when its run wrote metrics.json (or its outputs). Re-running ``make demo`` after an
    interruption keeps finished stages; ``DEMO_FRESH=1`` or deleting logs/demo/<stage> redoes them."""
    return not env_flag("DEMO_FRESH") and (run_dir / "metrics.json").is_file()


# The per-stage settings record. A finished stage was reused by file times alone (``newer_input``): after an edit of
# conf/experiment/demo/<stage>.yaml, another override, another DEMO_BUDGET_SCALE, a change of the shapes world or a
# CPU that trains in another precision, make demo reused the old stage and reported its figures as the new settings'.
# Now each stage writes what it is built from beside its outputs, before its command runs (so the record also says
# what the checkpoints of an interrupted FULL=1 stage were trained with), and is reused, or resumed, only while the
# record matches. Left out, on purpose: the TimeBudget minutes (fitted to the time left before the deadline, they
# differ on every run, so with them nothing would be reused after an interruption; the summary gives the budget each
# reused stage ran with, ``given_budget``), hence DEMO_MINUTES too (the deadline); hydra.run.dir and the paths of the
# demo's folder (the same files under another ZOO_LOG_DIR, written as ``<demo>``); and the git commit (a commit of
# the README would redo the whole demo; the inputs are recorded by content instead).
SETTINGS_FILE = "demo_settings.json"
DEMO_PATH = "<demo>"  # DEMO_DIR in a record
_VARYING = ("hydra.run.dir=", "callbacks.time_budget.minutes=")
reused_without_record: list[str] = []  # the stages this run reused on file times alone, for the summary


def settings_file(name: str, split: Optional[str] = None) -> Path:
    """Where stage ``name``'s settings record is: in its run dir; beside its features file for a split of embed."""
    return features(split).with_suffix(".settings.json") if name == "embed" else DEMO_DIR / name / SETTINGS_FILE


def _portable(value):
    """``value`` (a config, an override, a path) with the demo folder's own path written as ``<demo>``."""
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v) for v in value]
    if not isinstance(value, str):
        return value
    key, eq, rest = value.partition("=")
    if eq and "/" not in key:  # an override: key=value
        return f"{key}={_portable(rest)}"
    demo = str(DEMO_DIR)
    return DEMO_PATH + value[len(demo) :] if value == demo or value.startswith(demo + os.sep) else value


@functools.lru_cache(maxsize=1)
def world_fingerprint() -> str:
    """The shapes world every stage trains on, by what it draws: 16 scenes of each split rendered at the demo's 32 and
    48 px, with their captions. ``WORLD_VERSION`` is bumped by hand; an edit of zoo/data/shapes.py that forgets to is
    caught by this, and one that leaves the scenes alone (a comment) does not redo the demo."""
    import hashlib

    from zoo.data.shapes import WORLD_VERSION, ShapesDataset, render_scene

    h = hashlib.sha256()
    for split in ("train", "val", "test"):
        ds = ShapesDataset(split=split, size=16)
        for i in range(16):
            attributes, captions, _ = ds.scene(i)
            h.update(json.dumps(captions, sort_keys=True).encode())
            for resolution in (32, 48):
                h.update(render_scene(attributes, resolution).tobytes())
    return f"v{WORLD_VERSION} {h.hexdigest()[:16]}"


def composed_config(config_name: str, overrides: list[str]) -> dict:
    """The config a stage's command composes from ``overrides`` (conf/<config_name>.yaml, as zoo-train / zoo-embed
    compose it), interpolations unresolved: the yaml as written, which is what an edit changes. (Resolved, they would
    hold this machine's paths and environment.)"""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="conf", version_base="1.3"):
            return OmegaConf.to_container(compose(config_name, overrides=overrides), resolve=False)
    except Exception as e:  # a yaml edit that does not compose: said now, not after the stages before it ran
        raise SystemExit(
            f"error: make demo cannot compose the config of {shlex.join(overrides)}: {e} (fix: correct that setting "
            f"or the yaml it names, then run make demo again)"
        ) from None
    finally:
        GlobalHydra.instance().clear()


def stage_settings(name: str, config_name: str, overrides: list[str]) -> dict:
    """What stage ``name`` is built from when its command runs with ``overrides`` (see ``SETTINGS_FILE``)."""
    from importlib.metadata import PackageNotFoundError, version

    from zoo.data.datamodule import file_digest  # content, not time; memoised per (path, size, mtime) in a run
    from zoo.precision import resolve_precision

    overrides = [o for o in overrides if not o.startswith(_VARYING)]
    try:
        zoo_version = version("dalle-zoo")
    except PackageNotFoundError:
        zoo_version = None
    return {
        "command": _portable(overrides),
        "config": _portable(composed_config(config_name, overrides)),
        "inputs": {_portable(str(p)): file_digest(p) for p in stage_inputs(name)},
        # trainer.precision=auto and inference's autocast: what this CPU runs (another CPU may pick another)
        "auto_precision": str(resolve_precision("auto", "cpu")[0]),
        "budget_scale": SCALE,  # DEMO_BUDGET_SCALE=0.1 is a smoke run: its stages are not the demo's
        "shapes_world": world_fingerprint(),
        "zoo_version": zoo_version,
    }


_ABSENT = object()
# The record's entries besides the config, the command and the inputs, as the redo line names them.
_RECORD_ENTRIES = {
    "auto_precision": "the precision this CPU trains in (trainer.precision=auto)",
    "budget_scale": "DEMO_BUDGET_SCALE",
    "shapes_world": "the shapes world's scenes (zoo/data/shapes.py)",
    "zoo_version": "the dalle-zoo version",
}


def _flat(node, prefix: str = "") -> dict:
    """A config as dotted keys (``model.net.depth``) to leaf values."""
    if not isinstance(node, dict) or not node:
        return {prefix: node}
    return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}.{key}" if prefix else key).items()}


def _value(v) -> str:
    text = "(unset)" if v is _ABSENT else v if isinstance(v, str) else json.dumps(v)
    return text if len(text) <= 60 else text[:57] + "..."


def settings_changes(old: dict, new: dict) -> list[str]:
    """What differs between a stage's record and its settings now, each as a phrase; empty when they match."""
    changes = []
    old_in, new_in = old.get("inputs") or {}, new.get("inputs") or {}
    for p in sorted(old_in.keys() | new_in.keys()):
        if old_in.get(p) != new_in.get(p):
            shown = p.replace(DEMO_PATH, str(DEMO_DIR), 1)
            changes.append(f"its input {shown} changed (redone since)" if p in old_in else f"it now reads {shown}")
    command = shlex.join(new.get("command") or [])
    # where a config key comes from: the stage's experiment (conf/experiment/<name>.yaml), else its whole command
    where = next((o for o in new.get("command") or [] if o.startswith("experiment=")), command)
    o, n = _flat(old.get("config") or {}), _flat(new.get("config") or {})
    for k in sorted(o.keys() | n.keys()):
        if o.get(k, _ABSENT) != n.get(k, _ABSENT):
            changes.append(f"{k} changed {_value(o.get(k, _ABSENT))} -> {_value(n.get(k, _ABSENT))} ({where})")
    for key, what in _RECORD_ENTRIES.items():
        if old.get(key, _ABSENT) != new.get(key, _ABSENT):
            changes.append(f"{what} changed {_value(old.get(key, _ABSENT))} -> {_value(new.get(key, _ABSENT))}")
    if not changes and old.get("command") != new.get("command"):
        changes.append(f"its command changed {shlex.join(old.get('command') or [])} -> {command}")
    return changes


def record_changes(record: Path, settings: dict) -> Optional[list[str]]:
    """``settings_changes`` against the record in file ``record``; None when there is none (a stage from before make
    demo kept records)."""
    if not record.is_file():
        return None
    try:
        saved = json.loads(record.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        saved = None
    if not isinstance(saved, dict):
        return [f"its settings record {record} is unreadable"]
    return settings_changes(saved, settings)


def _phrase(changes: list[str]) -> str:
    more = f"; and {len(changes) - 3} more" if len(changes) > 3 else ""
    return "; ".join(changes[:3]) + more


def why_redo(name: str, changes: Optional[list[str]], record: Path, output: Path, folder: Path) -> Optional[str]:
    """Why finished stage ``name`` (its ``output``, in ``folder``) must be redone, or None to reuse it; ``changes``:
    ``record_changes`` of its settings record ``record`` against the settings now.

    A stage without a record (finished before make demo kept them) is reused with a warning, by make's rule on its
    inputs' times as before: redoing it unasked could cost most of the 30 minutes, and whether its settings are
    still those of the configs cannot be told. The warning, and the summary, name it and how to redo it."""
    if changes is not None:
        return _phrase(changes) if changes else None
    newer = newer_input(name, output)
    if newer is not None:
        return f"{newer} was rebuilt after it finished"
    print(
        f"    WARNING: {output} has no record of the settings it was built from (made before make demo kept one in "
        f"{record.name}): reusing it, though its settings may not be the configs' now (fix: DEMO_FRESH=1 make demo, "
        f"or delete {folder}, redoes it)",
        flush=True,
    )
    if name not in reused_without_record:
        reused_without_record.append(name)
    return None


def start_over(name: str, run_dir: Path) -> None:
    """Clear what an earlier run of stage ``name`` left before a new run of it starts: its interrupted legs' time
    (an abandoned run's time, after DEMO_FRESH=1 or an input rebuilt, is not this run's) and its directory. Both, not
    one or the other: an interrupted FULL=1 stage has legs *and* checkpoints, and zoo-train refuses a new run in a
    directory that holds an earlier run's checkpoints (it would resume from them)."""
    if earlier_legs(name):
        _save(legs_file(), {k: v for k, v in _load(legs_file()).items() if k != name})
    if not (run_dir / "checkpoints").is_dir():
        return
    # a zoo-train that still runs there (another make demo) keeps its files: they are not deleted from under it
    from zoo.train import run_dir_holder

    holder = run_dir_holder(run_dir)
    if holder:
        raise SystemExit(
            f"error: {run_dir} is in use by a running zoo-train ({holder}), another make demo? (fix: wait for it "
            f"to end, or ZOO_LOG_DIR=<another dir> make demo)"
        )
    print(f"\n=== demo stage '{name}': starting over, removing the earlier run in {run_dir}", flush=True)
    shutil.rmtree(run_dir)


def run_train(stage: Stage, timings: dict[str, float], schedule: Optional[Schedule] = None) -> Path:
    run_dir = DEMO_DIR / stage.name
    record = settings_file(stage.name)
    settings = stage_settings(stage.name, "train", stage.overrides)
    changes = record_changes(record, settings)  # once: it decides the redo, the resume and what is said of them
    if finished(run_dir):
        why = why_redo(stage.name, changes, record, run_dir / "metrics.json", run_dir)
        if why is None:
            print(f"\n=== demo stage '{stage.name}': reusing {run_dir} (finished earlier; DEMO_FRESH=1 redoes it)")
            return run_dir
        print(f"\n=== demo stage '{stage.name}': redoing it, {why}", flush=True)
    elif stage.minutes is None and not env_flag("DEMO_FRESH") and changes:
        print(f"\n=== demo stage '{stage.name}': not resuming its interrupted run, {_phrase(changes)}", flush=True)
    overrides = [*stage.overrides, f"hydra.run.dir={run_dir}"]
    resume = resumable(stage, run_dir, changes=changes)
    if resume:
        overrides.append("ckpt_path=last")
    else:
        start_over(stage.name, run_dir)
        # no finished mark of an earlier run may stay beside the new record: interrupted, this run would leave a
        # stage that looks finished with the new settings
        (run_dir / "metrics.json").unlink(missing_ok=True)
    _save(record, settings)  # before the run: it also says what an interrupted run's checkpoints were trained with
    expect = stage.expect_s * (PACE.factor if FULL else 1.0)
    if stage.minutes is not None:
        minutes = (schedule.budget_minutes(stage) if schedule is not None else stage.minutes) * SCALE
        minutes = round(minutes, 2)
        if schedule is not None:
            schedule.budgets[stage.name] = minutes
        overrides.append(f"callbacks.time_budget.minutes={minutes:g}")
        expect = minutes * 60 + STARTUP_S
    if resume:
        print(f"\n=== demo stage '{stage.name}': resuming the interrupted run in {run_dir} from its last checkpoint")
    t0 = announce(stage.name, ["zoo-train", *overrides], expect)
    try:
        run_child([sys.executable, "-m", "zoo.train", *overrides])
    except BaseException:
        if stage.minutes is None:  # it will resume: keep this leg's time for the stage's total
            record_leg(stage.name, time.perf_counter() - t0)
        raise
    finish(stage.name, t0, timings)
    return run_dir


def given_budget(run_dir: Path) -> Optional[float]:
    """The TimeBudget minutes a finished training stage ran with (its zoo-train command's override): a demo that
    reuses the stage reports it beside the budgets it gives itself. summary.json held this run's budgets only, so the
    summary of a demo resumed after an interruption lacked the budgets of the stages it reused (the README's table)."""
    import yaml

    try:
        overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) or []
    except (OSError, yaml.YAMLError):
        return None
    for o in overrides:
        key, _, value = str(o).partition("=")
        if key == "callbacks.time_budget.minutes":
            try:
                return float(value)
            except ValueError:
                return None
    return None


def run_embed(timings: dict[str, float], expect_s: float) -> None:
    """zoo-embed of the prior's splits (sizes as in experiment=demo/prior) with the demo CLIP."""
    sizes = {"train": 4096, "val": 256, "test": 256}
    fresh = env_flag("DEMO_FRESH")
    size_args = [
        f"data.train_size={sizes['train']}",
        f"data.val_size={sizes['val']}",
        f"data.test_size={sizes['test']}",
    ]
    commands = {
        s: [f"clip.checkpoint={ckpt('clip')}", "data=shapes", *size_args, f"split={s}", f"out={features(s)}"]
        for s in sizes
    }
    settings = {s: stage_settings("embed", "embed", c) for s, c in commands.items()}
    todo = []
    for s in sizes:
        # a split embedded with other settings, or by another CLIP than the demo's checkpoint now, is embedded again
        record = settings_file("embed", s)
        why = (
            None
            if fresh or not features(s).is_file()
            else why_redo("embed", record_changes(record, settings[s]), record, features(s), features(s).parent)
        )
        if why is not None:
            print(f"\n=== demo stage 'embed': redoing the {s} split, {why}", flush=True)
        if fresh or not features(s).is_file() or why is not None:
            todo.append(s)
    if not todo:
        print(f"\n=== demo stage 'embed': reusing {features('train').parent}")
        return
    t0 = announce("embed", ["zoo-embed", f"clip.checkpoint={ckpt('clip')}", "split=<train|val|test>"], expect_s)
    for split in todo:
        overrides = [*commands[split], f"hydra.run.dir={DEMO_DIR / 'embed' / split}"]
        features(split).unlink(missing_ok=True)  # (as in run_train: no earlier output beside the new record)
        clear_stale_rows(split, settings[split], fresh)
        _save(settings_file("embed", split), settings[split])
        print(f"    {shown(['zoo-embed', *overrides])}", flush=True)
        run_child([sys.executable, "-m", "zoo.embed", *overrides])
    finish("embed", t0, timings)


def clear_stale_rows(split: str, settings: dict, fresh: bool) -> None:
    """Remove the rows an interrupted zoo-embed of ``split`` left (``<out>.partial/``) when that run's settings
    record differs from ``settings`` (or DEMO_FRESH=1): they belong to the stale run. Its CLIP retrained, the redone
    split's zoo-embed refused to run ("holds the rows of an interrupted zoo-embed run with other arguments ... delete
    <out>.partial") until the user deleted it. With the record unchanged they are kept: zoo-embed resumes from them."""
    from zoo.feature_rows import work_dir_of

    work = work_dir_of(features(split))
    if not work.is_dir() or not (fresh or record_changes(settings_file("embed", split), settings)):
        return
    print(f"    removing {work}: the rows of an interrupted zoo-embed run with the earlier settings", flush=True)
    shutil.rmtree(work)


def run_sample(name: str, overrides: list[str], expect_s: float, timings: dict[str, float]) -> dict:
    out_dir = DEMO_DIR / name
    overrides = [*overrides, f"prompts={json.dumps(SAMPLE_PROMPTS)}", f"hydra.run.dir={out_dir}"]
    t0 = announce(name, ["zoo-sample", *overrides], expect_s)
    run_child([sys.executable, "-m", "zoo.sample", *overrides])
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


def run_manipulations(timings: dict[str, float], expect_s: float) -> dict:
    out_dir = DEMO_DIR / "unclip_manipulations"
    scenes = scene_images(out_dir)
    common = [f"--decoder-ckpt={ckpt('decoder')}", f"--clip-ckpt={ckpt('clip')}", "--decoder-steps=25"]
    jobs = {
        "variations": ["variations", str(scenes[0]), "-n", "6", "--eta", "0.5", "--decoder-guidance-scale", "2"],
        "interpolation": ["interpolate", str(scenes[0]), str(scenes[1]), "-n", "6", "--latent", "slerp"],
    }
    t0 = announce(
        "unclip_manipulations", ["python", "-m", "zoo.pipelines.unclip", "<variations|interpolate>"], expect_s
    )
    grids = {}
    for what, args in jobs.items():
        out = out_dir / f"{what}.png"
        cmd = [sys.executable, "-m", "zoo.pipelines.unclip", *args, *common, f"--out={out}"]
        print(f"    {shown(['python', *cmd[1:]])}", flush=True)
        run_child(cmd)
        grids[what] = str(out)
    finish("unclip_manipulations", t0, timings)
    return {"run_dir": str(out_dir), "metrics": {}, "last_grid": grids["interpolation"], "grids": grids}


JUDGE_WIDTH = 32  # the cheaper judge (conf/eval/eval.yaml judge.width): the reference width-64 one costs 2.5x more


def judge_dir() -> Path:
    """Where zoo-eval's judge.dir (${paths.cache_dir}/judge) is: the eval stage reads the judge the demo trained."""
    return zoo_path("ZOO_CACHE_DIR", ".zoo_cache") / "judge"


def run_judge(timings: dict[str, float], schedule: Optional[Schedule] = None) -> None:
    """The shapes judge that zoo-eval scores prompt fidelity with: trained once (400 steps) and cached under
    .zoo_cache/judge, shown as its own stage so its time is not hidden inside the eval. It runs first: it needs no
    trained model, and its wall time tells the Schedule how fast this CPU is."""
    resolution = 48 if FULL else 32
    width = 64 if FULL else JUDGE_WIDTH
    node = {"dir": str(judge_dir()), "steps": 400, "batch_size": 128, "width": width}
    code = (  # logging configured: the judge's progress lines (zoo.progress, INFO) reach the demo's log
        "import logging; logging.basicConfig(level=logging.INFO, format='[%(asctime)s][%(name)s] %(message)s'); "
        "from omegaconf import OmegaConf; from eval.cli import build_judge; "
        f"build_judge(OmegaConf.create({node!r}), {resolution}, True)"
    )
    from eval.cli import judge_path  # (fails here, not in the subprocess, if eval is not installed)

    cached = judge_path(node, resolution)  # the file zoo-eval's build_judge reads and writes
    if cached.is_file():
        print(f"\n=== demo stage 'judge': reusing {cached}")
        return
    # 400 steps x 128 scenes at width 32 (~35 GFLOP a step): 2.1 min on a quiet 2-core AVX512-BF16 CPU, 5.5 min
    # in fp32 with torch forced onto AVX2 kernels (JUDGE_S)
    expect = schedule.judge_s if schedule is not None else PACE.expect("judge")
    t0 = announce("judge", ["python", "-c", code], expect)
    run_child([sys.executable, "-c", code])
    finish("judge", t0, timings)
    if FULL:
        PACE.measured(timings["judge"])
        print(f"    expected stage times from here on: {PACE.why}", flush=True)
    if schedule is not None:
        schedule.measured("judge", timings["judge"], expect)


def run_eval(timings: dict[str, float], expect_s: float) -> dict:
    """zoo-eval on the demo's DALL·E: DALL·E 1 Figure 9 (metrics vs blur radius and vs CLIP-reranked candidates)."""
    out_dir = DEMO_DIR / "eval"
    overrides = ["experiment=dalle1/fig9", f"hydra.run.dir={out_dir}", f"judge.width={64 if FULL else JUDGE_WIDTH}"]
    overrides += [f"generator.dalle_ckpt={ckpt('dalle')}", f"clip.checkpoint={ckpt('clip')}"]
    if FULL:  # 48 px scenes, the whole Figure 9 (256 captions, up to 32 candidates)
        overrides += ["protocol.resolution=48"]
    else:  # 32 px scenes; 128 captions and up to 8 candidates keep it to about a minute
        overrides += ["protocol.resolution=32", "protocol.n=128", "rerank.candidates=[1,2,4,8]", "blur.candidates=8"]
    t0 = announce("eval", ["zoo-eval", *overrides], expect_s)
    run_child([sys.executable, "-m", "eval.cli", *overrides])
    finish("eval", t0, timings)
    plots = sorted(str(p) for p in out_dir.glob("*.png"))
    return {
        "run_dir": str(out_dir),
        "metrics": {},
        "last_grid": plots[0] if plots else None,
        "results": str(out_dir / "results.md"),
        "plots": plots,
    }


# What a whole make demo leaves under DEMO_DIR: 493 MB measured (logs/demo: CLIP 191, DALL·E 136, prior 83, decoder
# 59, tokenizer 17 MB, the rest under 10 MB), with some room for the W&B files and the log lines on top.
DEMO_NEEDS_MB = 600


def _size(p: Path) -> int:
    try:
        return p.lstat().st_size if p.is_file() else 0
    except OSError:  # gone meanwhile
        return 0


def check_log_dir() -> None:
    """A logs dir make demo cannot write, or without room for its stages, is an error before anything runs: it was a
    Python traceback at the first state write after the judge had trained (minutes), or zoo-train's failure to make
    its run dir, and a full disk torch's 'unexpected pos' RuntimeError when a stage saved its checkpoint."""
    fix = "ZOO_LOG_DIR=<a writable dir with room> make demo writes there instead"
    try:
        DEMO_DIR.mkdir(parents=True, exist_ok=True)
        probe = DEMO_DIR / ".write_test"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as e:
        raise SystemExit(f"error: make demo cannot write its outputs to {DEMO_DIR}: {e.strerror or e} (fix: {fix})")
    held = sum(_size(p) for p in DEMO_DIR.rglob("*"))  # an interrupted demo's finished stages stay
    need = DEMO_NEEDS_MB * 2**20 - held
    free = shutil.disk_usage(DEMO_DIR).free
    if free < need:
        raise SystemExit(
            f"error: {DEMO_DIR} has {free / 2**20:.0f} MB free, and make demo writes about {DEMO_NEEDS_MB} MB there "
            f"({held / 2**20:.0f} MB of it written already) (fix: free {(need - free) / 2**20:.0f} MB there, or {fix})"
        )


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through run_child / run_train: the child saves, the leg is recorded


def main() -> None:
    """make demo. SIGTERM unwinds it (``_exit_on_sigterm``) while it runs; the caller's handler is put back after,
    since a process that goes on (a test calling main) would otherwise keep ours, and Lightning installs its own
    SIGTERM handler (interrupted.ckpt, exit 143) only where none is set: a later in-process zoo-train exited 130."""
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        _run()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run() -> None:
    t_start = time.perf_counter()
    reused_without_record.clear()
    env_flag("DEMO_FRESH")  # read first when a training stage starts, after the judge (minutes): checked now
    from zoo.precision import describe_cpu

    stages = training_stages()
    schedule = None if FULL else Schedule(stages)
    print(f"make demo{' FULL=1' if FULL else ''}: {describe_cpu()}")
    if schedule is None:
        print(f"expected total ~{fmt(PACE.total(stages))} ({PACE.why}); outputs under {DEMO_DIR}/", flush=True)
    else:
        print(f"{schedule.describe()}; outputs under {DEMO_DIR}/", flush=True)
    timings: dict[str, float] = {}
    summary: dict[str, dict] = {}

    def expect(name: str) -> float:
        return PACE.expect(name) if schedule is None else schedule.expect(name)

    def done(name: str) -> None:
        if schedule is not None:
            schedule.done.add(name)
            print(f"    schedule: {schedule.describe()}", flush=True)

    check_log_dir()
    run_judge(timings, schedule)
    for stage in stages:
        if stage.name == "prior":
            run_embed(timings, expect("embed"))
            done("embed")
        run_dir = run_train(stage, timings, schedule)
        if schedule is not None and stage.name not in schedule.budgets:  # reused: what its own run was given
            given = given_budget(run_dir)
            if given is not None:
                schedule.budgets[stage.name] = given
        done(stage.name)
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
        expect("dalle_samples"),
        timings,
    )
    done("dalle_samples")
    unclip = ["generator=unclip", f"generator.prior_ckpt={ckpt('prior')}", f"generator.decoder_ckpt={ckpt('decoder')}"]
    unclip += [
        f"generator.clip_ckpt={ckpt('clip')}",
        "generator.n_candidates=8",
        "n_keep=8",
        "generator.decoder_steps=25",
    ]
    summary["unclip_samples"] = run_sample("unclip_samples", unclip, expect("unclip_samples"), timings)
    done("unclip_samples")
    summary["unclip_manipulations"] = run_manipulations(timings, expect("unclip_manipulations"))
    done("unclip_manipulations")
    summary["eval"] = run_eval(timings, expect("eval"))
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
    if reused_without_record:
        summary["reused_without_settings_record"] = list(reused_without_record)
        print(
            f"  reused without a settings record (finished before make demo kept one; their settings may not be the "
            f"configs' now; DEMO_FRESH=1 redoes all): {', '.join(reused_without_record)}"
        )
    summary["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    summary["total_s"] = round(total, 1)
    # An interrupted demo run again reuses finished stages: their time is in stage_times.json from the earlier run.
    all_stages = _load(times_file())
    summary["stage_times_all_runs_s"] = all_stages
    summary["stages_total_all_runs_s"] = round(sum(all_stages.values()), 1)
    if set(all_stages) != set(timings):
        print(f"  stages' time over all runs of this demo (reused ones included): {fmt(sum(all_stages.values()))}")
    if schedule is not None:
        since_start = time.time() - schedule.start
        summary["schedule"] = {
            "target_s": schedule.target_s,
            "since_make_demo_started_s": round(since_start, 1),
            "setup_s": round(schedule.setup_s, 1),
            "speed_factor": round(schedule.factor, 3),
            "speed_factor_from": schedule.factor_why,
            "training_budgets_min": schedule.budgets,
        }
        print(
            f"  `make demo` wall time (set-up included when started by make): {fmt(since_start)} of the "
            f"{fmt(schedule.target_s)} target; training budgets (min): {schedule.budgets}"
        )
    (DEMO_DIR / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
