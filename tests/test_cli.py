"""The zoo-train command line as users run it: multirun sweeps with W&B offline, and 2-process DDP on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY = [
    "model=dvae",
    "model.preset=tiny",
    "data.train_size=32",
    "data.val_size=8",
    "data.test_size=8",
    "data.batch_size=8",
    "trainer=cpu",
    "trainer.max_steps=2",
    "trainer.enable_progress_bar=false",
    "trainer.num_sanity_val_steps=0",
]


def _run(args, cwd, timeout=600, pythonpath=None):
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "zoo.train", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    return done


def test_multirun_makes_one_dir_and_one_wandb_run_per_job(tmp_path):
    _run(
        [
            "-m",
            *TINY,
            "logger=wandb",
            "data.batch_size=4,8",
            f"paths.log_dir={tmp_path}/logs",
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
        tmp_path,
    )
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    run_ids = set()
    for job in jobs:
        assert (job / "metrics.json").is_file()
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, f"{job}: expected one offline W&B run, got {runs}"
        run_ids.add(runs[0].name.rsplit("-", 1)[-1])
    assert len(run_ids) == 2
    assert "data.batch_size=4" in (jobs[0] / ".hydra" / "overrides.yaml").read_text()
    assert "data.batch_size=8" in (jobs[1] / ".hydra" / "overrides.yaml").read_text()


def test_a_sweep_into_a_used_sweep_dir_sets_the_earlier_jobs_aside(tmp_path):
    """The tables' sweeps write to a fixed hydra.sweep.dir (logs/eval/glide/guidance_sweep/0..5). A second sweep with
    fewer or other values overwrote jobs 0..k and left the rest, which eval.leaderboard then read as one table of
    both sweeps. The earlier jobs are now moved to <sweep dir>/earlier/<time>/ before the new ones start."""
    from pathlib import Path

    sweep = tmp_path / "sweep"
    common = [*TINY, "logger=none", "test=false", f"paths.log_dir={tmp_path}/logs", f"hydra.sweep.dir={sweep}"]
    # this clone's code (the installed zoo may be another checkout's)
    env_path = str(Path(__file__).resolve().parents[1])
    _run(["-m", *common, "data.batch_size=4,8"], tmp_path, pythonpath=env_path)
    _run(["-m", *common, "data.batch_size=2"], tmp_path, pythonpath=env_path)
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert jobs == ["0"], f"jobs of the earlier sweep left beside the new one: {jobs}"
    assert "data.batch_size=2" in (sweep / "0" / ".hydra" / "overrides.yaml").read_text()
    (earlier,) = (sweep / "earlier").iterdir()
    assert sorted(p.name for p in earlier.iterdir()) == ["0", "1", "multirun.yaml"]
    assert "data.batch_size=8" in (earlier / "1" / ".hydra" / "overrides.yaml").read_text()


def test_a_sweep_resumes_each_job_from_its_own_directory(tmp_path):
    """``-m ... ckpt_path=last``: a job without a checkpoint of its own fell back to "the newest run of task_name",
    which in a sweep is whichever job wrote last: job 0 went on from the earlier sweep's job 1 (another learning
    rate), job 1 from this sweep's job 0. Now each job resumes its own folder of the same hydra.sweep.dir (kept in
    place, not set aside), else the newest earlier run of its own settings, else starts from scratch."""
    import torch

    sweep, other = (tmp_path / "logs" / "train" / "multiruns" / name for name in ("a", "b"))  # where -m puts them
    env_path = str(Path(__file__).resolve().parents[1])  # this clone's code
    common = [*TINY, "logger=none", "test=false", f"paths.log_dir={tmp_path}/logs"]
    _run(["-m", *common, "model.optimizer.lr=1e-3,2e-3", f"hydra.sweep.dir={sweep}"], tmp_path, pythonpath=env_path)
    lr = lambda job: torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)["optimizer_states"][0][
        "param_groups"
    ][0]["lr"]
    assert [lr(sweep / j) for j in ("0", "1")] == [1e-3, 2e-3]
    resume = ["trainer.max_steps=3", "ckpt_path=last"]
    _run(
        ["-m", *common, "model.optimizer.lr=1e-3,2e-3", *resume, f"hydra.sweep.dir={sweep}"],
        tmp_path,
        pythonpath=env_path,
    )
    assert not (sweep / "earlier").exists()
    for j in "01":
        log = (sweep / j / "train.log").read_text()
        assert f"resuming from {sweep / j / 'checkpoints' / 'last.ckpt'}" in log, log[-2000:]
        assert json.loads((sweep / j / "metrics.json").read_text())["global_step"] == 3
    # another sweep dir: lr 2e-3 goes on from the run of lr 2e-3; lr 3e-3 has none and starts from scratch
    _run(
        ["-m", *common, "model.optimizer.lr=2e-3,3e-3", *resume, f"hydra.sweep.dir={other}"],
        tmp_path,
        pythonpath=env_path,
    )
    log = (other / "0" / "train.log").read_text()
    assert f"resuming from {sweep / '1' / 'checkpoints' / 'last.ckpt'}" in log, log[-2000:]
    log = (other / "1" / "train.log").read_text()
    assert "resuming from" not in log and "starting from scratch" in log, log[-2000:]
    assert [lr(other / j) for j in "01"] == [2e-3, 3e-3]  # each job's own optimizer, not another job's
    # the first dir again with another list: its job 0 (lr 1e-3) is not job 0 of this sweep (lr 3e-3): set aside
    _run(["-m", *common, "model.optimizer.lr=3e-3", *resume, f"hydra.sweep.dir={sweep}"], tmp_path, pythonpath=env_path)
    assert [p.name for p in (sweep / "earlier").iterdir()] and lr(sweep / "0") == 3e-3
    assert f"resuming from {other / '1' / 'checkpoints' / 'last.ckpt'}" in (sweep / "0" / "train.log").read_text()


def test_a_sweep_into_a_sweep_dir_still_running_is_refused(tmp_path, capsys):
    """Setting the earlier jobs aside also moved a job that was still running: it went on writing to its old path,
    recreated empty, where the new sweep's job of the same number wrote too. A running zoo-train holds its job
    directory's lock, so the new sweep is now refused before it moves or writes anything."""
    from omegaconf import OmegaConf

    from zoo.hydra_callbacks import SetAsideEarlierSweep
    from zoo.train import lock_run_dir

    sweep = tmp_path / "sweep"
    for job in ("0", "1"):
        (sweep / job).mkdir(parents=True)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    holder = lock_run_dir(sweep / "1")  # job 1 of the earlier sweep is still training
    try:
        with pytest.raises(SystemExit) as exit_info:
            SetAsideEarlierSweep().on_multirun_start(config)
    finally:
        holder.close()
    assert exit_info.value.code == 2
    assert "holds job 1 of a sweep that is still running (pid" in capsys.readouterr().err
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1"]
    SetAsideEarlierSweep().on_multirun_start(config)  # that sweep has ended: set aside as before
    assert [p.name for p in sweep.iterdir()] == ["earlier"]


def test_a_sweep_over_task_names_links_its_jobs_into_the_sweep_dir(tmp_path):
    """`-m experiment=a,b` (or task_name=a,b) put job 0 under logs/a/multiruns/<time>/0 and job 1 under
    logs/b/multiruns/<time>/1, leaving the sweep's own folder (logs/train/multiruns/<time>) with multirun.yaml alone:
    eval.leaderboard and a reader found no job there. Each job is now linked there under its number."""
    from pathlib import Path

    logs = tmp_path / "logs"
    args = ["-m", *TINY, "logger=none", "test=false", f"paths.log_dir={logs}", "task_name=row_a,row_b"]
    _run(args, tmp_path, pythonpath=str(Path(__file__).resolve().parents[1]))
    (sweep,) = (logs / "train" / "multiruns").iterdir()
    assert (sweep / "multirun.yaml").is_file()
    (job0,) = (logs / "row_a" / "multiruns").glob("*/0")
    (job1,) = (logs / "row_b" / "multiruns").glob("*/1")
    assert (sweep / "0").resolve() == job0.resolve() and (sweep / "1").resolve() == job1.resolve()
    assert (sweep / "1" / "metrics.json").is_file()


def test_a_failing_sweep_job_is_named(tmp_path):
    """A job's config error in a -m sweep printed only "error: ..." (its exit skips Hydra's "Error executing job"
    line), so a sweep's log did not say which job failed, where, or that the rest never ran."""
    from pathlib import Path

    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))
    for debug in ("ZOO_DEBUG", "HYDRA_FULL_ERROR"):  # the error as users read it, not the traceback
        env.pop(debug, None)
    args = [*TINY, "logger=none", f"paths.log_dir={tmp_path}/logs", f"hydra.sweep.dir={tmp_path}/sweep"]
    done = subprocess.run(
        [sys.executable, "-m", "zoo.train", "-m", *args, "data.resolution=34,32"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"multirun job 0 ({tmp_path}/sweep/0; " in done.stderr and "data.resolution=34) failed" in done.stderr
    assert "the jobs after it did not run" in done.stderr and "error: the shapes world" in done.stderr
    assert not (tmp_path / "sweep" / "1").exists()


@pytest.mark.slow
def test_ddp_cpu_trains_with_two_processes(tmp_path):
    run = tmp_path / "run"
    done = _run([*TINY, "trainer=ddp_cpu", "logger=csv", f"hydra.run.dir={run}", f"paths.log_dir={tmp_path}"], tmp_path)
    out = done.stdout + done.stderr
    assert "GLOBAL_RANK: 1" in out or "MEMBER: 2/2" in out, out[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 2


def _assert_job_config_has(args: list[str], line: str) -> None:
    """`python -m zoo.train <args> --cfg job` (the real entry point, its open_overrides included) prints ``line``."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), HYDRA_FULL_ERROR="1")
    done = subprocess.run(
        [sys.executable, "-m", "zoo.train", *args, "--cfg", "job"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and line in done.stdout, (args, done.stderr[-2000:])


def test_model_net_fields_are_set_without_plus():
    """README: `model.net.<field>=...` overrides one field of the preset's dataclass, and every ConfigError hint
    says `fix: model.net.<field>=...`. Hydra refused such a field when the config did not list it already ("Key
    'n_layers' is not in struct"), while `+` fails when an experiment does list it; both forms now work as written."""
    for args, line in [
        (["model=dalle", "model.net.n_layers=1", "model.net.text_vocab=413"], "text_vocab: 413"),
        (["model=vqvae", "model.net.codebook_size=64"], "codebook_size: 64"),
        (["experiment=dalle1/train_shapes", "model.net.grid_h=8"], "grid_h: 8"),  # listed by the experiment
        (["model=vqvae", "+model.net.codebook_size=64"], "codebook_size: 64"),  # the explicit form still works
        # the whole node as one dict (conf/model/clip.yaml's form; nested open_clip configs), merged into it
        (
            ["model=clip", "model.net={embed_dim:64,vision_cfg:{width:128}}"],
            "embed_dim: 64\n    vision_cfg:\n      width: 128",
        ),
        (["experiment=dalle1/train_shapes", "model.net={n_layers:2}"], "grid_h: 12\n    grid_w: 12\n    n_layers: 2"),
    ]:
        _assert_job_config_has(args, line)


def test_inpaint_mask_fields_are_set_without_plus():
    """conf/model/glide_inpaint.yaml's example and MaskConfig's fix text write model.inpaint_masks.rect_prob=0.5 (and
    the dict model.inpaint_masks={...}); the node is {} in the yaml, so Hydra refused both ("Key 'rect_prob' is not in
    struct") unless written with ++ (found by helper-126). zoo-train opens the node as it opens model.net."""
    for args, line in [
        (["model=glide_inpaint", "model.inpaint_masks.rect_prob=0.5"], "inpaint_masks:\n    rect_prob: 0.5\n"),
        (
            ["model=glide_inpaint", "model.inpaint_masks={rect_prob:0.25,stroke_prob:0.5}"],
            "inpaint_masks:\n    rect_prob: 0.25\n    stroke_prob: 0.5\n",
        ),
    ]:
        _assert_job_config_has(args, line)


def test_open_overrides_only_touches_fields_of_the_open_node():
    from zoo.config import open_overrides

    args = ["model.net.n_layers=2", "+model.net.dim=8", "++model.net.x=1", "model.preset=tiny", "model.net={}"]
    args += ["model.network=x", "+model.net={a:1}"]
    assert open_overrides(args, ("model.net.",)) == [
        "++model.net.n_layers=2",
        "+model.net.dim=8",
        "++model.net.x=1",
        "model.preset=tiny",
        "++model.net={}",  # the whole node: merged into it, as Hydra's plain form, with new keys allowed
        "model.network=x",
        "+model.net={a:1}",
    ]
