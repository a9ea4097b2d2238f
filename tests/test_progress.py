"""Progress in any log: LogProgress (training) and track (plain loops) write plain lines when stdout is not a
terminal, and leave the terminal to the progress bars when it is."""

from __future__ import annotations

import io
import logging
import re
import sys

import lightning as L
import pytest
import torch

from zoo.callbacks.progress import StepRichProgressBar, default_progress_bar
from zoo.progress import LogLines, format_duration, format_rate, track
from zoo.train import train

TINY = [
    "model=dvae",
    "model.preset=tiny",
    "data=shapes",
    "data.train_size=64",
    "data.val_size=16",
    "data.batch_size=8",
    "logger=none",
    "trainer=cpu",
    "trainer.precision=32-true",
    "trainer.num_sanity_val_steps=0",
    "test=false",
]
STEP_LINE = re.compile(r"^step (\d+)/(\d+) \(\d+%\) \| [\d.]+ (it/s|s/it) \| loss -?[\d.]+(e[-+]\d+)? \| eta \S+$")


class FakeStdout(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "zoo.progress"]


def test_training_logs_plain_lines_when_stdout_is_not_a_terminal(train_cfg, caplog, monkeypatch):
    monkeypatch.setattr(sys, "stdout", FakeStdout(tty=False))
    caplog.set_level(logging.INFO, logger="zoo.progress")
    cfg = train_cfg(
        *TINY,
        "trainer.max_steps=10",
        "trainer.enable_progress_bar=false",
        "callbacks.log_progress.every_n_steps=3",
        "callbacks.log_progress.every_seconds=null",
    )
    assert train(cfg)["global_step"] == 10
    lines = _lines(caplog)
    steps = [m for m in map(STEP_LINE.match, lines) if m]
    assert [int(m[1]) for m in steps] == [1, 3, 6, 9], lines  # the first step, then every multiple of 3
    assert all(int(m[2]) == 10 for m in steps)
    val = [line for line in lines if line.startswith("val @ step 8 | ")]  # the end of the first epoch
    assert len(val) == 1 and re.search(r"\| val/loss -?[\d.]+", val[0]) and "| took " in val[0], lines
    assert any(re.match(r"train done: 10 steps in \S+ \([\d.]+ (it/s|s/it)\)$", line) for line in lines), lines


def test_training_is_silent_on_a_terminal_unless_forced(train_cfg, caplog, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "stdout", FakeStdout(tty=True))
    caplog.set_level(logging.INFO, logger="zoo.progress")
    common = [
        *TINY,
        "trainer.max_steps=3",
        "trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=true",
        "callbacks.log_progress.every_n_steps=1",
    ]
    train(train_cfg(*common))
    assert _lines(caplog) == []  # the progress bar shows progress on a terminal
    forced = train_cfg(*common, "callbacks.log_progress.force=true")
    forced.paths.output_dir = str(tmp_path / "forced")
    train(forced)
    assert [int(m[1]) for m in map(STEP_LINE.match, _lines(caplog)) if m] == [1, 2, 3]


def test_track_logs_every_n_items_and_yields_them_unchanged(caplog, monkeypatch):
    monkeypatch.setattr(sys, "stdout", FakeStdout(tty=False))
    caplog.set_level(logging.INFO, logger="zoo.progress")
    items = ["a", "b", {"c": 1}, None, 5]
    bar = track(iter(items), total=len(items), desc="demo", unit="img", every=2, every_seconds=None)
    assert isinstance(bar, LogLines)
    assert list(bar) == items
    lines = _lines(caplog)
    assert len(lines) == 3, lines
    assert re.match(r"^demo: 2/5 img \(40%\) \| [\d.]+ (img/s|s/img) \| eta \S+$", lines[0]), lines
    assert lines[1].startswith("demo: 4/5 img (80%) | ")
    assert re.match(r"^demo: done 5 img in \S+ \(", lines[2]), lines


def test_track_update_postfix_and_time_trigger(caplog, monkeypatch):
    monkeypatch.setattr(sys, "stdout", FakeStdout(tty=False))
    caplog.set_level(logging.INFO, logger="zoo.progress")
    with track(total=4, desc="gen", every_seconds=0.0) as bar:  # 0 s: a line at every update
        for _ in range(2):
            bar.set_postfix(loss="0.5")
            bar.update(2)
    lines = _lines(caplog)
    assert len(lines) == 3, lines
    assert lines[0].startswith("gen: 2/4 it (50%) | ") and "| loss 0.5 | eta " in lines[0], lines
    assert lines[1].startswith("gen: 4/4 it (100%) | ")
    assert lines[2].startswith("gen: done 4 it in ") and lines[2].endswith("| loss 0.5")
    caplog.clear()
    assert list(track(range(3), desc="quiet", every=1, disable=True)) == [0, 1, 2]  # disable silences both modes
    list(track(range(3), desc="nested", leave=False))  # quick leave=False loop: no "done" line
    assert _lines(caplog) == []


def test_track_is_tqdm_on_a_terminal(monkeypatch):
    from tqdm.auto import tqdm

    monkeypatch.setattr(sys, "stdout", FakeStdout(tty=True))
    bar = track(range(3), desc="bar", file=io.StringIO())
    assert isinstance(bar, tqdm)
    assert list(bar) == [0, 1, 2]


@pytest.mark.parametrize(
    "seconds, text", [(4.2, "4.2s"), (42, "42s"), (587, "9m47s"), (7500, "2h05m"), (float("inf"), "?")]
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_format_rate():
    assert format_rate(3.21) == "3.21 it/s"
    assert format_rate(0.25, "step") == "4 s/step"


def test_the_total_follows_a_time_budget_replan_up_and_down(caplog, monkeypatch):
    """TimeBudget plans max_steps after its first timed steps, then re-plans (possibly upwards): each printed line
    shows the current plan (a run once printed 'step 5750/5668 (101%)' after a re-plan to 6474)."""
    from types import SimpleNamespace

    from zoo.callbacks.progress import LogProgress

    class FakeTrainer(SimpleNamespace):
        @property
        def estimated_stepping_batches(self):
            return min(self.max_steps, self.epoch_cap)

    trainer = FakeTrainer(max_steps=20000, epoch_cap=10**9, global_step=0, callback_metrics={}, is_global_zero=True)
    cb = LogProgress(every_n_steps=1, every_seconds=None, force=True)
    cb.active = True
    caplog.set_level(logging.INFO, logger="zoo.progress")
    cb.on_train_start(trainer, None)
    totals = []
    for step, max_steps in ((1, 20000), (2, 5668), (3, 5668), (4, 6474), (5, 3000)):
        trainer.max_steps, trainer.global_step = max_steps, step
        cb.on_train_batch_end(trainer, None, {"loss": None}, None, step)
        totals.append(int(re.search(r"step \d+/(\d+)", _lines(caplog)[-1]).group(1)))
    assert totals == [20000, 5668, 5668, 6474, 3000]
    trainer.epoch_cap = 4000  # an epoch limit below the plan still caps the total
    trainer.max_steps, trainer.global_step = 7000, 6
    cb.on_train_batch_end(trainer, None, {"loss": None}, None, 6)
    assert "step 6/4000" in _lines(caplog)[-1]


def test_counts_in_plain_lines_take_the_plural(caplog, monkeypatch):
    monkeypatch.setattr(sys, "stdout", FakeStdout(tty=False))
    caplog.set_level(logging.INFO, logger="zoo.progress")
    list(track(range(3), total=3, desc="recaption", unit="caption", every=2, every_seconds=None))
    list(track(range(1), total=1, desc="one", unit="batch", every=1, every_seconds=None))
    lines = _lines(caplog)
    # the count takes the plural; a rate stays "caption/s" (or "s/caption")
    assert re.match(r"^recaption: 2/3 captions \(66%\) \| [\d.]+ (caption/s|s/caption)", lines[0]), lines
    assert re.match(r"^recaption: done 3 captions in ", lines[-3]), lines
    assert lines[-2].startswith("one: 1/1 batch (100%)") and re.match(r"^one: done 1 batch in ", lines[-1]), lines


class _Steps(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)
        self.descriptions: list[str] = []

    def training_step(self, batch, batch_idx):
        bar = self.trainer.progress_bar_callback
        self.descriptions.append(next(t for t in bar.progress.tasks if t.id == bar.train_progress_bar_id).description)
        return self.lin(batch[0]).pow(2).mean()

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(
    "max_epochs, max_steps, expected", [(-1, 6, ["Epoch 0", "Epoch 1"]), (2, -1, ["Epoch 0/1", "Epoch 1/1"])]
)
def test_the_rich_bar_names_the_epoch_without_minus_two(max_epochs, max_steps, expected):
    # Lightning's rich bar says "Epoch 0/-2" when a run is bounded by max_steps (max_epochs=-1)
    model = _Steps()
    trainer = L.Trainer(
        max_epochs=max_epochs,
        max_steps=max_steps,
        callbacks=[StepRichProgressBar()],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(model)
    seen = sorted({d.strip() for d in model.descriptions})
    assert seen == expected, seen  # 4 batches an epoch: 6 steps reach the second epoch


def test_train_installs_the_step_bar_where_lightning_would_add_its_own():
    assert isinstance(default_progress_bar([], True), StepRichProgressBar)
    assert default_progress_bar([], False) is None  # trainer.enable_progress_bar=false
    mine = L.pytorch.callbacks.TQDMProgressBar()
    assert default_progress_bar([mine], True) is None  # a bar the user configured stands
