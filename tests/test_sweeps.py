"""Sweeps that run: ``hparams_search=optuna`` (a 2-trial Optuna study through the real ``zoo-train -m``) and the
submitit launcher (``launcher=local_submitit``, the local executor standing in for ``launcher=slurm``), each on a
tiny dVAE for a step or two; and the SLURM launcher's config composing with the plugin installed."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e '.[sweep]' (in the dev extra)")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[slurm]' (in the dev extra)")

# A tiny dVAE, 1-2 steps, no W&B, no test pass. train_size 128: the Optuna config's batch sizes go up to 128 and the
# training loader drops its last partial batch.
TINY = [
    "model=dvae",
    "model.preset=tiny",
    "data.train_size=128",
    "data.val_size=8",
    "data.test_size=8",
    "trainer=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.num_sanity_val_steps=0",
    "logger=csv",
    "test=false",
]


def _zoo_train(args, tmp_path: Path, timeout: float = 600):
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    done = subprocess.run(
        [sys.executable, "-m", "zoo.train", "-m", *args, f"paths.root_dir={tmp_path}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    return done


def _jobs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


@pytest.mark.slow
def test_optuna_sweep_best_value_is_the_best_trial(tmp_path):
    sweep = tmp_path / "optuna"
    _zoo_train(
        ["hparams_search=optuna", "hydra.sweeper.n_trials=2", *TINY, "trainer.max_steps=1", f"hydra.sweep.dir={sweep}"],
        tmp_path,
    )
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    jobs = _jobs(sweep)
    assert [p.name for p in jobs] == ["0", "1"]
    # what each trial's main() returned: cfg.optimized_metric (val/loss) of the metrics train(cfg) returned and wrote
    returned = [json.loads((job / "metrics.json").read_text())["val/loss"] for job in jobs]
    assert results["name"] == "optuna" and results["best_value"] == pytest.approx(min(returned), rel=1e-12)
    best = jobs[returned.index(min(returned))]
    overrides = yaml.safe_load((best / ".hydra" / "overrides.yaml").read_text())
    for key, value in results["best_params"].items():  # the best params are the best trial's sampled overrides
        assert any(o.startswith(f"{key}=") and float(o.split("=", 1)[1]) == pytest.approx(value) for o in overrides)
    assert results["best_job_dir"] == str(best)  # where the best trial ran (RecordBestTrialJobDir)


def _job(sweep: Path, n: int, overrides: list[str], value: float | None) -> Path:
    job = sweep / str(n)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"optimized_metric": "val/loss"}))
    if value is not None:
        (job / "metrics.json").write_text(json.dumps({"val/loss": value}))
    return job


def test_optuna_results_name_the_best_trials_job_dir(tmp_path, caplog):
    """optimization_results.yaml gave best_params and best_value only; a user then searched the job folders for the
    run that won. The job whose overrides are the best params (and whose metrics hold the best value, when two
    trials drew the same params) is now written beside them as best_job_dir, and logged."""
    import logging

    from omegaconf import OmegaConf

    from zoo.hydra_callbacks import RecordBestTrialJobDir

    sweep = tmp_path / "sweep"
    lr = 0.0006554064060987877
    _job(sweep, 0, [f"model.optimizer.lr={lr * 2}", "data.batch_size=64", "test=False"], 0.9)
    _job(sweep, 1, [f"model.optimizer.lr={lr}", "data.batch_size=128", "test=False"], 0.7)
    best = _job(sweep, 2, [f"model.optimizer.lr={lr}", "data.batch_size=128", "test=False"], 0.5)  # same params
    results = {"name": "optuna", "best_params": {"model.optimizer.lr": lr, "data.batch_size": 128}, "best_value": 0.5}
    (sweep / "optimization_results.yaml").write_text(yaml.safe_dump(results))
    config = OmegaConf.create(
        {
            "hydra": {
                "sweeper": {"_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"},
                "sweep": {"dir": str(sweep)},
            }
        }
    )
    with caplog.at_level(logging.INFO, logger="zoo.hydra_callbacks"):
        RecordBestTrialJobDir().on_multirun_end(config)
    written = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert written == {**results, "best_job_dir": str(best)}
    assert any(str(best) in r.getMessage() for r in caplog.records)
    # a stored study's best trial from an earlier sweep: no job here has its params -- said, not guessed
    results["best_params"]["data.batch_size"] = 32
    (sweep / "optimization_results.yaml").write_text(yaml.safe_dump(results))
    RecordBestTrialJobDir().on_multirun_end(config)
    assert yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_job_dir"] is None
    # another sweeper's multirun is left alone
    config.hydra.sweeper._target_ = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
    (sweep / "optimization_results.yaml").write_text(yaml.safe_dump(results))
    RecordBestTrialJobDir().on_multirun_end(config)
    assert "best_job_dir" not in yaml.safe_load((sweep / "optimization_results.yaml").read_text())


@pytest.mark.slow
def test_submitit_local_executor_trains_and_writes_metrics(tmp_path):
    """launcher=local_submitit: the job runs in a process of its own started by submitit (the path launcher=slurm
    takes minus the queue), writes its metrics.json, and its return value comes back through submitit's pickle."""
    sweep = tmp_path / "submitit"
    _zoo_train(
        ["launcher=local_submitit", *TINY, "data.batch_size=64", "trainer.max_steps=2", f"hydra.sweep.dir={sweep}"],
        tmp_path,
    )
    (job,) = _jobs(sweep)
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["global_step"] == 2 and "val/loss" in metrics
    (result,) = (sweep / ".submitit").glob("*/*_0_result.pkl")  # written by the submitit job process
    status, job_return = pickle.loads(result.read_bytes())
    assert status == "success" and job_return.return_value == pytest.approx(metrics["val/loss"])
    assert job_return.hydra_cfg.hydra.runtime.output_dir == str(job)
    assert list(result.parent.glob("*_0_log.out"))  # the job's own stdout, kept by submitit


def test_slurm_launcher_config_composes_with_the_plugin(tmp_path):
    """launcher=slurm resolves to submitit's SLURM launcher with one task (and GPU) per trainer device."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["launcher=slurm", "trainer=ddp", "trainer.devices=4", "hparams_search=optuna"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.tasks_per_node == 4 and launcher.gpus_per_node == 4 and launcher.nodes == 1
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.sweeper.n_trials == 20
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        local = compose("train", overrides=["launcher=local_submitit"], return_hydra_config=True)
    assert local.hydra.launcher._target_.endswith("submitit_launcher.LocalLauncher")
