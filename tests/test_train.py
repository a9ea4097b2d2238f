"""zoo-train end to end on the tiny dVAE and the shapes world: metrics, grids, checkpoints, exact resume."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zoo.errors import ConfigError
from zoo.train import train


def _state(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=True)


def test_train_writes_metrics_grid_and_checkpoints(train_cfg, tmp_path, tiny_dvae):
    cfg = train_cfg(*tiny_dvae, "trainer.max_epochs=1")
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["global_step"] == 8 == metrics["global_step"]
    assert "val/loss" in saved and "test/loss" in saved
    # the training cost the leaderboard reports beside each row
    # (a fast CPU trains these 8 tiny steps in under 0.3 s, which rounds to 0.0 minutes)
    assert saved["threads"] == torch.get_num_threads() and 0 <= saved["train_minutes"] < 30
    assert saved["cpu"].startswith("cpu: ")  # zoo.precision.describe_cpu's line
    assert list((run / "samples").glob("*.png")), "sample grid PNG missing"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    ckpt = _state(run / "checkpoints" / "last.ckpt")  # weights_only load must work for our own checkpoints
    assert ckpt["zoo_component"] == "dvae"  # a registry name, never an import path
    assert ckpt["zoo_config"]["model"]["preset"] == "tiny"


def test_resume_is_exact_mid_epoch(train_cfg, tmp_path, tiny_dvae):
    """train 6 steps == train 3 steps, stop, resume to 6 (same weights: data position, optimizer and RNG restored)."""
    common = [
        *tiny_dvae,
        "test=false",
        "callbacks.last_checkpoint.every_n_train_steps=1",
        "trainer.limit_val_batches=0",
    ]
    straight = train_cfg(*common, "trainer.max_steps=6")
    train(straight)
    ref = _state(Path(straight.paths.output_dir) / "checkpoints" / "last.ckpt")

    first = train_cfg(*common, "trainer.max_steps=3")
    with_dir = Path(first.paths.output_dir).parent / "resumed"
    first.paths.output_dir = str(with_dir)
    train(first)
    ckpt = with_dir / "checkpoints" / "last.ckpt"
    assert _state(ckpt)["global_step"] == 3
    second = train_cfg(*common, "trainer.max_steps=6", "ckpt_path=last")
    second.paths.output_dir = str(with_dir)
    metrics = train(second)
    assert metrics["global_step"] == 6
    got = _state(ckpt)
    assert got["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches_done"] == 6
    for k, v in ref["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][k], v, rtol=0, atol=0, msg=f"weights differ at {k}")


def test_bad_resolution_fails_before_training(train_cfg, tiny_dvae):
    cfg = train_cfg(*tiny_dvae, "data.resolution=34", "model.preset=shapes")
    with pytest.raises(ConfigError, match="resolution"):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_missing_ckpt_path_is_a_config_error(train_cfg, tiny_dvae):
    cfg = train_cfg(*tiny_dvae, "ckpt_path=/nonexistent/last.ckpt")
    with pytest.raises(ConfigError, match="ckpt_path"):
        train(cfg)


def _zoo_train(args: list[str], cwd: Path, **kw) -> subprocess.Popen:
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "zoo.train", *args], cwd=cwd, env=env, **kw)


def test_kill_then_resume_continues_from_saved_step(tmp_path, tiny_dvae, train_helpers):
    run_dir = tmp_path / "run"
    args = [
        *tiny_dvae,
        *train_helpers.long_run(run_dir, tmp_path),
    ]
    proc = _zoo_train(args, tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run_dir / "checkpoints" / "last.ckpt"
    # a kill at any moment leaves a loadable file (atomic writes)
    saved_step = train_helpers.kill_once_saved(proc, last, timeout=120, poll=0.5)
    assert saved_step >= 2
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "zoo.train",
            *args,
            "ckpt_path=last",
            f"trainer.max_steps={saved_step + 2}",
            "test=false",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {last}" in done.stderr + done.stdout
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == saved_step + 2


def test_ema_callback_trains_checkpoints_and_resumes(train_cfg, tiny_dvae):
    common = [
        *tiny_dvae,
        "callbacks=ema",
        "callbacks.ema.update_starting_at_step=1",
        "callbacks.ema.decay=0.5",
        "test=false",
        "trainer.limit_val_batches=0",
        "callbacks.last_checkpoint.every_n_train_steps=1",
    ]
    cfg = train_cfg(*common, "trainer.max_steps=3")
    train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    ckpt = _state(last)  # the EMA callback's extra state must load with weights_only=True too
    assert "averaging_state" in ckpt or "current_model_state" in ckpt
    again = train_cfg(*common, "trainer.max_steps=5", "ckpt_path=last")
    again.paths.output_dir = cfg.paths.output_dir
    assert train(again)["global_step"] == 5


def test_val_check_interval_longer_than_an_epoch_fails_before_fit(train_cfg, train_helpers):
    """A step-based experiment (dalle1/train_shapes: val_check_interval 400, max_epochs -1) on a smaller
    data.train_size: Lightning raised its ValueError from inside trainer.fit (a traceback, exit 1, an
    interrupted.ckpt at step 0). It is now a ConfigError before anything runs, naming both fixes; with
    check_val_every_n_epoch=null the same interval validates across epochs and trains."""
    T = train_helpers
    cfg = train_cfg(
        *T.DVAE_SHAPES, "data.train_size=16", "trainer.max_steps=6", "trainer.val_check_interval=5", "test=false"
    )
    with pytest.raises(ConfigError, match=r"val_check_interval=5 .* 2 training batches.*check_val_every_n_epoch=null"):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()
    cfg = train_cfg(
        *T.DVAE_SHAPES,
        "data.train_size=16",
        "trainer.max_steps=6",
        "trainer.val_check_interval=5",
        "trainer.check_val_every_n_epoch=null",
        "test=false",
    )
    assert train(cfg)["global_step"] == 6


@pytest.mark.parametrize(
    "limit, batches", [("trainer.limit_train_batches=4", 4), ("trainer.limit_train_batches=0.25", 2)]
)
def test_val_check_interval_longer_than_a_limited_epoch_fails_before_fit(train_cfg, tiny_dvae, limit, batches):
    """limit_train_batches cuts the epoch (a count, or a fraction of its 8 batches): val_check_interval=6 was
    Lightning's ValueError with a traceback from inside trainer.fit; the check skipped any limit."""
    cfg = train_cfg(*tiny_dvae, "trainer.max_steps=6", "trainer.val_check_interval=6", "test=false", limit)
    with pytest.raises(ConfigError, match=rf"val_check_interval=6 is more than the {batches} training batches"):
        train(cfg)


def test_val_check_interval_longer_than_an_epoch_is_fine_without_validation(train_cfg, tiny_dvae):
    """With validation off (limit_val_batches=0) Lightning never checks the interval: the run was refused, naming
    fixes the user did not need, when only the experiment's val_check_interval outgrew a smaller data set."""
    cfg = train_cfg(
        *tiny_dvae, "trainer.max_steps=2", "trainer.val_check_interval=10", "trainer.limit_val_batches=0", "test=false"
    )
    assert train(cfg)["global_step"] == 2


def test_failed_resume_leaves_no_checkpoint_that_shadows_the_real_one(train_cfg, train_helpers, tmp_path):
    """Run A trains 4 steps; run B resumes it (ckpt_path=last: the newest run of task_name) with another network
    (model.net.n_hid), so Lightning's restore fails. B used to leave interrupted.ckpt of its fresh model at step 0
    (OnExceptionCheckpoint), which the next, correct ckpt_path=last then picked as the newest file: training silently
    restarted from scratch. Now B fails with a ConfigError naming the mismatch and leaves no checkpoint, and run C
    resumes A's step 4."""
    T = train_helpers
    common = [*T.DVAE_SHAPES, "test=false", "trainer.limit_val_batches=0"]

    def run_cfg(name, *extra):
        cfg = train_cfg(*common, *extra)
        cfg.paths.output_dir = str(tmp_path / "logs" / cfg.task_name / "runs" / name)
        return cfg

    assert train(run_cfg("a", "trainer.max_steps=4"))["global_step"] == 4
    b = run_cfg("b", "trainer.max_steps=8", "ckpt_path=last", "+model.net.n_hid=8")
    with pytest.raises(ConfigError, match=r"does not fit the configured model"):
        train(b)
    assert not list((tmp_path / "logs" / b.task_name / "runs" / "b").rglob("*.ckpt"))
    assert train(run_cfg("c", "trainer.max_steps=8", "ckpt_path=last"))["global_step"] == 8


def test_failed_resume_keeps_the_interrupted_checkpoint_it_resumed(train_cfg, train_helpers, tmp_path):
    """A run stopped by SIGTERM before its first last.ckpt has only interrupted.ckpt. Resuming it with a wrong model
    setting failed (good), but OnExceptionCheckpoint first saved the untrained model over that very file and the
    clean-up then deleted it: the run's training was gone. Nothing is saved before a run has trained a step now."""
    T = train_helpers
    common = [*T.DVAE_SHAPES, "test=false", "trainer.limit_val_batches=0", "logger=none"]
    cfg = train_cfg(*common, "trainer.max_steps=4")
    train(cfg)
    ckpts = Path(cfg.paths.output_dir) / "checkpoints"
    (ckpts / "last.ckpt").rename(ckpts / "interrupted.ckpt")  # the SIGTERM'd run's only state
    with pytest.raises(ConfigError, match=r"does not fit the configured model"):
        train(train_cfg(*common, "trainer.max_steps=8", "ckpt_path=last", "+model.net.n_hid=8"))
    assert sorted(p.name for p in ckpts.iterdir()) == ["interrupted.ckpt"]
    assert _state(ckpts / "interrupted.ckpt")["global_step"] == 4
    assert train(train_cfg(*common, "trainer.max_steps=6", "ckpt_path=last"))["global_step"] == 6


def test_resume_with_no_steps_left_warns(train_cfg, tiny_dvae, caplog):
    """ckpt_path=last with trainer.max_steps at or below the checkpoint's step trains nothing: a WARNING names the
    step and the fix (Lightning ended fit without a word); the run still exits cleanly (a requeued finished job)."""
    import logging

    common = [*tiny_dvae, "test=false", "trainer.limit_val_batches=0"]
    cfg = train_cfg(*common, "trainer.max_steps=3")
    train(cfg)
    again = train_cfg(*common, "trainer.max_steps=3", "ckpt_path=last")
    again.paths.output_dir = cfg.paths.output_dir
    with caplog.at_level(logging.WARNING, logger="zoo.train"):
        assert train(again)["global_step"] == 3
    assert any("is at step 3 and trainer.max_steps=3" in r.getMessage() for r in caplog.records)


def test_a_cosine_schedule_without_a_length_fails_before_training(train_cfg, tiny_dvae):
    """The experiments' ``total_steps: ${trainer.max_steps}`` in a run bounded by epochs (max_steps=-1) was -1: the
    learning rate fell to min_ratio of its peak right after the warm-up (0.0001 instead of 0.002 from step 3 on)."""
    schedule = [
        "+model.scheduler._target_=zoo.models.base.cosine_with_warmup",
        "+model.scheduler._partial_=true",
        "+model.scheduler.warmup_steps=2",
        "+model.scheduler.total_steps=${trainer.max_steps}",
    ]
    cfg = train_cfg(*tiny_dvae, *schedule, "trainer.max_epochs=1", "trainer.max_steps=-1")
    with pytest.raises(ConfigError, match=r"total_steps=-1.*fix: trainer\.max_steps="):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


@pytest.mark.parametrize(
    "bad, says",
    [
        ("trainer.accumulate_grad_batches=0", "accumulate_grad_batches=0"),  # ZeroDivisionError at the first step
        ("trainer.accumulate_grad_batches=-1", "accumulate_grad_batches=-1"),  # trained, on other gradients
        ("trainer.val_check_interval=0", "val_check_interval=0"),  # ZeroDivisionError after the first step
        ("callbacks.sample_grid.n_samples=0", "n_samples"),  # ZeroDivisionError at the first validation
        ("callbacks.log_progress.every_n_steps=0", "every_n_steps"),  # a ValueError with a traceback
    ],
)
def test_bad_trainer_and_callback_counts_are_config_errors_before_training(train_cfg, tiny_dvae, bad, says):
    """Counts Lightning or a callback cannot use are ConfigErrors (printed without a traceback) before any step;
    they failed part-way into training (leaving an interrupted.ckpt) or trained silently on other gradients."""
    cfg = train_cfg(*tiny_dvae, "trainer.max_steps=3", "test=false", bad)
    with pytest.raises(ConfigError, match=says):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


@pytest.mark.parametrize(
    "bad, says",
    [
        ("trainer.max_steps=-2", "max_steps=-2"),  # Lightning's traceback, once the data and model were built
        ("trainer.max_epochs=0.5", "max_epochs=0.5"),  # "must be Optional", after the build
        ("trainer.limit_val_batches=2.5", "limit_val_batches=2.5"),
        ("trainer.limit_train_batches=-1", "limit_train_batches=-1"),
        ("trainer.val_check_interval=1.5", "val_check_interval=1.5"),
        ("trainer.val_check_interval=true", "val_check_interval=True"),  # validated after every batch
        ("trainer.val_check_interval=abc", "val_check_interval='abc' is not a duration"),
        ("trainer.check_val_every_n_epoch=0", "check_val_every_n_epoch=0"),  # ZeroDivisionError mid-run
        ("trainer.check_val_every_n_epoch=-1", "check_val_every_n_epoch=-1"),  # every epoch, silently
        ("trainer.log_every_n_steps=-1", "log_every_n_steps=-1"),  # every step, silently
        ("trainer.num_sanity_val_steps=-2", "num_sanity_val_steps=-2"),  # no sanity check, silently
        ("trainer.gradient_clip_val=-1", "gradient_clip_val=-1"),  # clipped nothing, silently
        ("+trainer.gradient_clip_algorithm=nrom", "gradient_clip_algorithm='nrom'"),
        ("trainer.precision=bf17", "precision='bf17'"),
    ],
)
def test_bad_trainer_options_are_config_errors_before_anything_is_built(train_cfg, tiny_dvae, monkeypatch, bad, says):
    """Every count / limit of the trainer node is checked before the data or the model is built: Lightning checked
    some only in Trainer(...), built after them (a BPE fit, a dataset), with a Hydra traceback, and took others as
    given (a ZeroDivisionError part-way into training, or another behaviour than asked without a word)."""
    import zoo.train

    built = []
    monkeypatch.setattr(zoo.train, "instantiate", lambda node, what="config", **k: built.append(what))
    cfg = train_cfg(*tiny_dvae, "trainer.max_steps=3", "test=false", bad)
    with pytest.raises(ConfigError, match=re.escape(says) + r".*fix: "):
        train(cfg)
    assert not built


def test_good_trainer_options_pass_the_checks(train_cfg, tiny_dvae):
    """What Lightning accepts and the experiments use passes (a fraction, a step count, a duration, 0 to switch off,
    a whole float such as 2.0, which Lightning takes as 2)."""
    from zoo.train import check_trainer_counts

    for good in (
        "trainer.val_check_interval=0.25",
        "trainer.val_check_interval=400",
        "trainer.val_check_interval=2.0",
        "trainer.val_check_interval=00:00:30:00",
        "trainer.limit_val_batches=0",
        "trainer.limit_train_batches=0.5",
        "trainer.log_every_n_steps=0",
        "trainer.check_val_every_n_epoch=null",
        "trainer.max_epochs=-1",
        "trainer.num_sanity_val_steps=-1",
        "trainer.gradient_clip_val=1",
        "trainer.gradient_clip_val=0.5",
    ):
        check_trainer_counts(train_cfg(*tiny_dvae, good).trainer)


def test_a_resume_that_keeps_a_shorter_saved_schedule_says_so(train_cfg, tiny_dvae, caplog):
    """Trained to 4 steps with total_steps: ${trainer.max_steps}, resumed to 8: the schedule restored from the
    checkpoint ends at step 4, and steps 4-8 ran at min_ratio of the peak, the configured total_steps=8 unused,
    without a word."""
    import logging

    common = [
        *tiny_dvae,
        "+model.scheduler._target_=zoo.models.base.cosine_with_warmup",
        "+model.scheduler._partial_=true",
        "+model.scheduler.warmup_steps=1",
        "+model.scheduler.total_steps=${trainer.max_steps}",
        "test=false",
        "trainer.limit_val_batches=0",
    ]
    train(train_cfg(*common, "trainer.max_steps=4"))
    with caplog.at_level(logging.WARNING, logger="zoo.train"):
        assert train(train_cfg(*common, "trainer.max_steps=8", "ckpt_path=last"))["global_step"] == 8
    assert any(
        "total_steps=4, not the configured model.scheduler.total_steps=8" in r.getMessage() for r in caplog.records
    )


def test_a_bad_model_knob_fails_before_the_tokenizer_is_fitted(train_cfg, monkeypatch):
    """The model is built before the data's tokenizer is prepared (a first BPE fit costs ~40 s): a misspelt
    model.net field fails without it."""
    from zoo.data.datamodule import ImageTextDataModule

    fitted = []
    monkeypatch.setattr(ImageTextDataModule, "prepare_tokenizer", lambda self: fitted.append(self))
    cfg = train_cfg("model=dalle", "model.preset=tiny", "data/tokenizer=bpe", "++model.net.n_layerz=2")
    with pytest.raises(ConfigError, match="n_layerz"):
        train(cfg)
    assert fitted == []


def test_resume_continues_the_wandb_run(train_cfg, tiny_dvae, monkeypatch):
    """ckpt_path=last in the same run directory logs to the checkpoint's W&B run (same id), not to a second run
    of the same name: `wandb sync <run>/wandb/offline-run-*` then uploads one run whose history continues."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    common = [*tiny_dvae, "logger=wandb", "test=false", "trainer.limit_val_batches=0"]
    first = train_cfg(*common, "trainer.max_steps=2")
    run = Path(first.paths.output_dir)
    train(first)
    second = train_cfg(*common, "trainer.max_steps=4", "ckpt_path=last")
    second.paths.output_dir = str(run)
    assert train(second)["global_step"] == 4
    pieces = sorted((run / "wandb").glob("offline-run-*"))
    assert len(pieces) == 2, pieces
    ids = {f.stem for p in pieces for f in p.glob("run-*.wandb")}
    assert len(ids) == 1, f"the resumed training opened another W&B run: {ids}"


def test_final_checkpoint_says_weights_only_false(train_cfg, tiny_dvae, tmp_path):
    """The last.ckpt written after fit is the resume point, so it is saved with its training state and says so:
    left unset, Lightning logged "`weights_only` was not set, defaulting to `False`" at the end of every run (when
    no ModelCheckpoint had saved that step already)."""
    from zoo.train import _save_final_last

    calls = []

    class Trainer:  # what _save_final_last reads of a Lightning Trainer
        checkpoint_callbacks: list = []
        global_step = 3
        fast_dev_run = 0

        def save_checkpoint(self, filepath, weights_only=None, storage_options=None):
            calls.append(weights_only)

    _save_final_last(Trainer(), tmp_path / "last.ckpt")
    assert calls == [False]
    # and a real run's last.ckpt holds that state (optimizer, loops), readable with weights_only=True
    cfg = train_cfg(*tiny_dvae, "test=false", "trainer.max_steps=3")
    train(cfg)
    ckpt = _state(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 3 and ckpt["optimizer_states"] and "loops" in ckpt


def test_loggers_get_the_hyper_parameters_once(train_cfg, tiny_dvae):
    """The loggers record one set: the run config with the model's own hyper-parameters under model. Lightning
    logged model.hparams a second time, flattened at the top level (preset, net, ... beside model), and there its
    net (completed by the Lit: out_channels) differed from the run config's model.net."""
    import yaml

    cfg = train_cfg(*tiny_dvae, "test=false", "trainer.max_steps=1", "trainer.limit_val_batches=0")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    (hparams_file,) = run.rglob("hparams.yaml")  # CSVLogger's record of every log_hyperparams call
    logged = yaml.safe_load(hparams_file.read_text())
    assert set(logged) == set(cfg), sorted(set(logged) ^ set(cfg))
    built = _state(run / "checkpoints" / "last.ckpt")["hyper_parameters"]
    assert logged["model"]["net"] == built["net"] and logged["model"]["preset"] == "tiny"
    assert logged["model"]["_target_"] == cfg.model._target_  # the run config's own keys stay


def test_debug_fdr_leaves_no_resume_point(train_cfg, tiny_dvae):
    """debug=fdr (Lightning's fast_dev_run: "checkpointing is suppressed") still wrote last.ckpt at step 1 after fit:
    the newest run of its task_name, which a later ckpt_path=last resumed, and the reason a second debug run in the
    same directory was refused."""
    cfg = train_cfg(*tiny_dvae, "debug=fdr")
    assert cfg.trainer.fast_dev_run
    assert train(cfg)["global_step"] == 1
    ckpts = Path(cfg.paths.output_dir) / "checkpoints"
    assert not (ckpts.is_dir() and any(ckpts.iterdir())), sorted(p.name for p in ckpts.iterdir())
    assert train(cfg)["global_step"] == 1  # again, in the same directory


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA device")
@pytest.mark.parametrize("trainer", ["gpu", "ddp", "fsdp"])
def test_a_gpu_trainer_without_a_gpu_fails_before_anything_is_built(train_cfg, tiny_dvae, tmp_path, trainer):
    cfg = train_cfg(*tiny_dvae, f"trainer={trainer}")
    with pytest.raises(ConfigError, match=r"no CUDA device is visible .*trainer=cpu"):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_resume_with_another_text_tokenizer_is_refused(train_cfg, dalle_helpers, train_helpers, tmp_path):
    """A resumed DALL·E took the DataModule's BPE without comparing it with the one its checkpoint was trained with:
    a BPE fitted on other captions (here the short caption style) with the same vocabulary size loaded silently and
    every caption became other token ids. Refused before training; the same tokenizer still resumes."""
    common = train_helpers.tiny_dalle(dalle_helpers, tmp_path)
    first = train_cfg(*common)
    train(first)
    run = first.paths.output_dir
    other = train_cfg(*common, "data.caption_style=short", "trainer.max_steps=4", "ckpt_path=last")
    other.paths.output_dir = run
    with pytest.raises(ConfigError, match="another text tokenizer.*trained_bpe.*fingerprint"):
        train(other)
    again = train_cfg(*common, "trainer.max_steps=4", "ckpt_path=last")
    again.paths.output_dir = run
    assert train(again)["global_step"] == 4


def test_a_test_only_run_tests_the_weights_of_ckpt_path(train_cfg, tiny_dvae, tmp_path, caplog):
    """``train=false test=true ckpt_path=<last.ckpt>`` tested the model as built (untrained) and wrote its metrics
    to metrics.json as the checkpoint's: the test stage passed no checkpoint unless the run had trained. It now tests
    the file's weights and reports the file's step; without ckpt_path a WARNING says the model is untrained."""
    import logging

    trained = train_cfg(*tiny_dvae, "trainer.max_steps=8", "test=false", "trainer.precision=32-true")
    train(trained)
    last = Path(trained.paths.output_dir) / "checkpoints" / "last.ckpt"
    only = ["train=false", "test=true", "trainer.precision=32-true"]
    of_file = train_cfg(*tiny_dvae, *only, f"ckpt_path={last}")
    of_file.paths.output_dir = str(tmp_path / "test_of_file")
    tested = train(of_file)
    untrained = train_cfg(*tiny_dvae, *only)
    untrained.paths.output_dir = str(tmp_path / "test_untrained")
    with caplog.at_level(logging.WARNING, logger="zoo.train"):
        baseline = train(untrained)
    assert tested["global_step"] == 8 and baseline["global_step"] == 0
    assert tested["test/loss"] != baseline["test/loss"]
    assert any("evaluates the model as built (untrained)" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "bad, says",
    [
        ("callbacks.sample_grid.n_samples=0", "callbacks.sample_grid.n_samples"),  # after the data and the model
        ("+callbacks.sample_grid.every_n_epochs=0", "callbacks.sample_grid.every_n_epochs"),  # taken for 1, unsaid
        ("+callbacks.time_budget={_target_:zoo.callbacks.TimeBudget,minutes:1,hard_stop:0.5}", "hard_stop=0.5"),
        ("+callbacks.time_budget={_target_:zoo.callbacks.TimeBudget,minutes:1,reserve:1.5}", "reserve=1.5"),
        ("+callbacks.time_budget={_target_:zoo.callbacks.TimeBudget,minutes:1,min_steps:-3}", "min_steps=-3"),
    ],
)
def test_bad_callback_options_fail_before_the_data_and_the_model_are_built(
    train_cfg, tiny_dvae, monkeypatch, bad, says
):
    """A callback's options are checked by its constructor, which ran after the data and the model were built (a
    dataset made, a BPE fitted); some were not checked at all (a hard stop before the budget ended, a reserve of the
    whole budget, a negative min_steps, a sample grid every 0 epochs)."""
    import zoo.config
    import zoo.train

    built = []

    def recording(node, what="config", **k):
        built.append(what)
        return zoo.config.instantiate(node, what, **k)

    monkeypatch.setattr(zoo.train, "instantiate", recording)
    cfg = train_cfg(*tiny_dvae, "trainer.max_steps=3", "test=false", bad)
    with pytest.raises(ConfigError, match=re.escape(says) + r".*fix: "):
        train(cfg)
    assert "data" not in built and "model" not in built, built


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU accelerator's devices")
@pytest.mark.parametrize("devices", ["abc", "0", "-1", "[0]", "1.5"])
def test_bad_cpu_devices_fail_before_anything_is_built(train_cfg, tiny_dvae, monkeypatch, devices):
    """trainer.devices=abc / 0 / -1 / a device list on the CPU failed inside Trainer(...), after the data and the
    model, as a Hydra traceback; what Lightning's CPU accelerator takes still passes."""
    import zoo.train
    from zoo.train import check_accelerator

    built = []
    monkeypatch.setattr(zoo.train, "instantiate", lambda node, what="config", **k: built.append(what))
    cfg = train_cfg(*tiny_dvae, "trainer.max_steps=3", "test=false", f"trainer.devices={devices}")
    with pytest.raises(ConfigError, match=r"trainer\.devices=.* is not a number of CPU processes .*fix: "):
        train(cfg)
    assert not built
    for good in ("1", "2", "auto", "'3'"):
        check_accelerator(train_cfg(*tiny_dvae, f"trainer.devices={good}").trainer)
    check_accelerator(train_cfg(*tiny_dvae, "trainer.accelerator=auto", "trainer.devices=auto").trainer)


@pytest.mark.parametrize(
    "bad, says",
    [
        ("callbacks.model_checkpoint.save_top_k=-2", "callbacks.model_checkpoint: Invalid value for save_top_k=-2"),
        ("callbacks.model_checkpoint.mode=mn", "callbacks.model_checkpoint: `mode` can be min, max but got mn"),
        ("callbacks.last_checkpoint.every_n_train_steps=-1", "callbacks.last_checkpoint: Invalid value for every_n"),
    ],
)
def test_a_callback_option_lightning_refuses_is_a_config_error(train_cfg, tiny_dvae, bad, says):
    """Lightning's MisconfigurationException from a callback's constructor came wrapped in Hydra's
    InstantiationException (a traceback); it is a ConfigError naming the entry and the fix."""
    cfg = train_cfg(*tiny_dvae, "trainer.max_steps=3", "test=false", bad)
    with pytest.raises(ConfigError, match=re.escape(says) + r".*fix: .*=null to leave it out"):
        train(cfg)


@pytest.mark.parametrize(
    "model, typo, meant",
    [
        ("glide", "+model.predicton=v", "model.prediction"),
        ("dvae", "+model.kl_weigth_max=2.0", "model.kl_weight_max"),
        ("dvae", "+model.optimizer.weight_decya=0.1", "model.optimizer.weight_decay"),
    ],
)
def test_a_misspelt_model_option_added_with_plus_is_named_before_training(train_cfg, model, typo, meant):
    """Hydra suggests the ``+`` form for a misspelt ``model.predicton=v``; with it the model's constructor failed
    with "GlideLit.__init__() got an unexpected keyword argument 'predicton'" under "Error executing job". Now a
    ConfigError before anything runs, naming the option, the close one and the fix."""
    key = typo[1:].split("=")[0]
    value = typo.split("=")[1]
    cfg = train_cfg(f"model={model}", "model.preset=tiny", "data=shapes", "logger=none", "trainer=cpu", typo)
    with pytest.raises(ConfigError) as e:
        train(cfg)
    message = str(e.value)
    assert f"{key} is not an option" in message
    assert f"did you mean {meant}?" in message
    assert f"fix: {meant}={value} in place of +{key}={value}" in message
    assert meant.rsplit(".", 1)[1] in message.split("the options of ")[1]
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_a_missing_optimized_metric_says_why_or_nothing_when_no_validation_was_asked_for(
    train_cfg, tiny_dvae, caplog, tmp_path
):
    """trainer.max_steps=3 on a tiny preset (8 batches an epoch, validation at its end) warned only
    "optimized_metric=val/loss was not logged". Now the warning says that no validation ran within the steps and how
    to get one (following it logs val/loss); a run that asked for no validation (limit_val_batches=0) is quiet; a
    metric missing after validation ran (a misspelt name) still lists what was logged."""
    import logging

    from zoo.train import objective

    def warnings(*overrides: str) -> tuple[object, list[str]]:
        caplog.clear()
        cfg = train_cfg(*tiny_dvae, "trainer.max_steps=3", "test=false", *overrides)
        cfg.paths.output_dir = str(tmp_path / "runs" / str(len(list(tmp_path.glob("runs/*")))))  # a run dir each
        with caplog.at_level(logging.WARNING, logger="zoo.train"):
            value = objective(cfg)
        return value, [r.getMessage() for r in caplog.records if "optimized_metric" in r.getMessage()]

    value, said = warnings()
    assert value is None and len(said) == 1
    assert "optimized_metric=val/loss was not logged: no validation ran within the run's 3 training steps" in said[0]
    assert "at the end of each epoch" in said[0] and "fix: trainer.val_check_interval=<at most 3 steps>" in said[0]
    value, said = warnings("trainer.val_check_interval=3")  # the fix: a validation within the run
    assert isinstance(value, float) and not said
    assert warnings("trainer.limit_val_batches=0") == (None, [])
    value, said = warnings("trainer.val_check_interval=3", "optimized_metric=val/losss")
    assert value is None and len(said) == 1 and said[0].startswith("optimized_metric=val/losss was not logged; logged:")
    assert "'val/loss'" in said[0]


def test_a_resume_file_of_another_component_is_named_with_its_article(tmp_path):
    """ckpt_path=<an upsampler checkpoint> for another model said "holds a upsampler checkpoint": the templates wrote
    "a {name}" (zoo.config.with_article now, for every component, class or kind a message names)."""
    from zoo.checkpoint import atomic_torch_save
    from zoo.config import with_article
    from zoo.models.dvae.lit import DVAELit
    from zoo.train import check_resume_file

    path = tmp_path / "up.ckpt"
    stamp = {"state_dict": {}, "hyper_parameters": {}, "pytorch-lightning_version": "2.4.0", "loops": {}}
    atomic_torch_save({"zoo_component": "upsampler", **stamp}, path)
    with pytest.raises(
        ConfigError,
        match=r"holds an upsampler checkpoint but the model is dvae \(fix: model=upsampler, or a dvae checkpoint\)",
    ):
        check_resume_file(str(path), DVAELit(preset="tiny"))
    said = [with_article(w) for w in ("ar_prior", "ARPriorLit", "UpsamplerLit", "glide", "MS-COCO", "U-Net", "VQGAN")]
    assert said == ["an ar_prior", "an ARPriorLit", "an UpsamplerLit", "a glide", "an MS-COCO", "a U-Net", "a VQGAN"]
