"""Training progress as plain log lines, for runs whose stdout is not a terminal (log files, CI, nohup).

Lightning's progress bar redraws one line with ``\\r``: in a log file that is nothing readable between the model
summary and the end. ``LogProgress`` writes, to the ``zoo.progress`` logger (Hydra sends it to stdout and the run's
log file), a line at the first step, at every multiple of ``every_n_steps`` optimizer steps and at least every
``every_seconds`` seconds, whichever comes first (checked after each batch):

    step 120/2000 (6%) | 3.2 it/s | loss 1.234 | eta 9m47s
    val @ step 200 | val/loss 1.101 | val/psnr 21.3 | took 4.1s
    train done: 2000 steps in 10m12s (3.27 it/s)

On a terminal the progress bar is left alone and this callback is silent, unless ``force=True`` or the trainer has
no progress bar (``trainer.enable_progress_bar=false``). The rate is over the steps since the previous line
(validation time excluded); the ETA is the remaining steps at that rate. The total is ``trainer.max_steps`` or
Lightning's ``estimated_stepping_batches``; without one (an endless iterable dataset) the line has no total or ETA.
The loss is the mean of the training-step losses since the previous line (``outputs``), else the newest
``train/loss`` / ``loss`` in ``trainer.callback_metrics`` (manual optimization).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Optional

import lightning as L
import torch

from zoo.errors import check_number, check_whole
from zoo.progress import format_count, format_duration, format_rate, plural, stdout_is_tty

log = logging.getLogger("zoo.progress")

LOSS_KEYS = ("train/loss", "train/loss_step", "loss")


def _metric_str(v: Any) -> str:
    try:
        return f"{float(v):.4g}"
    except (TypeError, ValueError):
        return str(v)


def planned_steps(trainer: "L.Trainer") -> Optional[int]:
    """The optimizer steps this fit runs at most, or None when nothing bounds them: Lightning's
    ``estimated_stepping_batches`` (``max_epochs`` x the steps of an epoch after ``limit_train_batches`` and
    ``accumulate_grad_batches``, within ``max_steps``; ``max_steps`` with endless epochs or an iterable dataset), else
    ``max_steps`` when that cannot be computed (a dataloader without ``len()``). LogProgress's total and the cap of
    ``zoo.callbacks.TimeBudget``'s plan: one reading of Lightning's value for both."""
    try:
        total = float(trainer.estimated_stepping_batches)
    except Exception:  # e.g. a dataloader without len(): fall back to max_steps
        total = float(trainer.max_steps if trainer.max_steps is not None else -1)
    return int(total) if math.isfinite(total) and total > 0 else None


class LogProgress(L.Callback):
    def __init__(self, every_n_steps: int = 50, every_seconds: Optional[float] = 30.0, force: bool = False):
        key = "callbacks.log_progress."
        check_whole(key + "every_n_steps", every_n_steps, 1, "50, or null for time-based lines only", none_ok=True)
        # NaN or inf seconds wrote no time-based line ever, as null does: null is the way to say so
        check_number(
            key + "every_seconds",
            every_seconds,
            0,
            low_open=True,
            fix="30, or null for step-based lines only",
            none_ok=True,
        )
        self.every_n_steps = int(every_n_steps) if every_n_steps else None
        self.every_seconds = float(every_seconds) if every_seconds is not None else None
        self.force = bool(force)
        self.active = False
        self._seen_max_steps: Optional[int] = None  # the max_steps the printed total was computed from
        self._reset_interval(0)

    # --- state -------------------------------------------------------------------------------------------
    def _reset_interval(self, step: int) -> None:
        self._last_step = step
        self._last_time = time.monotonic()
        self._loss_sum: Optional[torch.Tensor] = None
        self._loss_n = 0

    # --- hooks -------------------------------------------------------------------------------------------
    def _wanted(self, trainer: "L.Trainer") -> bool:
        no_bar = getattr(trainer, "progress_bar_callback", None) is None
        return trainer.is_global_zero and (self.force or no_bar or not stdout_is_tty())

    def on_fit_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self.active = self._wanted(trainer)

    def on_train_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if not self.active:
            return
        self._total = planned_steps(trainer)
        self._seen_max_steps = trainer.max_steps
        self._start_time, self._start_step = time.monotonic(), trainer.global_step
        self._reset_interval(trainer.global_step)
        what = f"{int(self._total)} steps" if self._total else "no fixed number of steps"
        start = f" from step {trainer.global_step}" if trainer.global_step else ""
        log.info("train start: %s%s (a line every %s)", what, start, self._every_str())

    def _every_str(self) -> str:
        parts = []
        if self.every_n_steps:
            parts.append(f"{self.every_n_steps} steps")
        if self.every_seconds:
            parts.append(format_duration(self.every_seconds))
        return " or ".join(parts)

    def on_train_batch_end(
        self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.active:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if torch.is_tensor(loss) and loss.numel() == 1:
            loss = loss.detach().float().reshape(())
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss  # no device sync per step
            self._loss_n += 1
        step = trainer.global_step
        if step <= self._last_step:
            return  # gradient accumulation: no optimizer step yet
        now = time.monotonic()
        n = self.every_n_steps
        due_steps = n is not None and step // n > self._last_step // n  # on multiples of n: step 50, 100, ...
        due_time = self.every_seconds is not None and now - self._last_time >= self.every_seconds
        first = self._last_step == self._start_step  # the first step (slow compile/warm-up) shows we are running
        if due_steps or due_time or first:
            self._emit(trainer, step, now)

    def _loss(self, trainer: "L.Trainer") -> Optional[float]:
        if self._loss_n:
            return float(self._loss_sum) / self._loss_n
        metrics = trainer.callback_metrics
        for k in LOSS_KEYS:
            if k in metrics:
                try:
                    return float(metrics[k])
                except (TypeError, ValueError):
                    pass
        return None

    def _emit(self, trainer: "L.Trainer", step: int, now: float) -> None:
        dt = now - self._last_time
        rate = (step - self._last_step) / dt if dt > 0 else float("nan")
        # zoo.callbacks.TimeBudget sets max_steps mid-run (its plan, then a re-plan that may raise it): the total
        # follows every change, still capped by the epochs (estimated_stepping_batches reads the new max_steps)
        if trainer.max_steps != self._seen_max_steps:
            self._seen_max_steps = trainer.max_steps
            self._total = planned_steps(trainer)
        parts = [f"step {format_count(step, self._total)}", format_rate(rate)]
        loss = self._loss(trainer)
        if loss is not None:
            parts.append(f"loss {loss:.4g}")
        if self._total and rate > 0 and math.isfinite(rate):
            parts.append(f"eta {format_duration(max(self._total - step, 0) / rate)}")
        log.info("%s", " | ".join(parts))
        self._reset_interval(step)

    def on_validation_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self._val_start = time.monotonic()

    def on_validation_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if not self.active or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self._log_metrics(
            f"val @ step {trainer.global_step}",
            trainer,
            ("val",),
            time.monotonic() - getattr(self, "_val_start", time.monotonic()),
        )
        # the training rate of the next line should not count the time spent validating
        self._last_time += time.monotonic() - getattr(self, "_val_start", time.monotonic())

    def on_test_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if self._wanted(trainer):
            self._log_metrics("test", trainer, ("test",), None)

    def _log_metrics(self, head: str, trainer: "L.Trainer", prefixes: tuple[str, ...], took: Optional[float]) -> None:
        metrics = {k: v for k, v in sorted(trainer.callback_metrics.items()) if k.startswith(prefixes)}
        parts = [head] + [f"{k} {_metric_str(v)}" for k, v in metrics.items()]
        if took is not None:
            parts.append(f"took {format_duration(took)}")
        log.info("%s", " | ".join(parts))

    def on_train_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if not self.active:
            return
        elapsed = time.monotonic() - self._start_time
        steps = trainer.global_step - self._start_step
        log.info(
            "train done: %d %s in %s (%s)",
            steps,
            plural("step", steps),
            format_duration(elapsed),
            format_rate(steps / elapsed if elapsed > 0 else float("nan")),
        )

    def on_exception(self, trainer: "L.Trainer", pl_module: "L.LightningModule", exception: BaseException) -> None:
        if not self.active or not hasattr(self, "_start_time"):
            return
        log.info(
            "train stopped at step %d after %s (%s)",
            trainer.global_step,
            format_duration(time.monotonic() - self._start_time),
            type(exception).__name__,
        )


class StepRichProgressBar(L.pytorch.callbacks.RichProgressBar):
    """Lightning's rich progress bar, without the "Epoch 0/-2" it shows on step-bounded runs.

    Most experiments bound a run by ``trainer.max_steps`` with ``max_epochs=-1`` (endless epochs); Lightning's bar
    then prints the epoch as ``{epoch}/{max_epochs - 1}``, i.e. "Epoch 0/-2". Here it is "Epoch 0" there, and
    Lightning's own text otherwise. ``zoo.train`` installs it where Lightning would install its rich bar."""

    def _get_train_description(self, current_epoch: int) -> str:
        max_epochs = self.trainer.max_epochs
        if max_epochs is None or max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        description = f"Epoch {current_epoch}"
        # Lightning pads to the validation bar's text so the two do not flicker
        return f"{description:{len(self.validation_description)}}"


def default_progress_bar(callbacks: list, enable_progress_bar: bool) -> Optional[L.Callback]:
    """The bar to add to ``callbacks``: ``StepRichProgressBar`` where Lightning would add its rich bar (bars on, none
    configured, rich installed), else None (Lightning's own choice stands)."""
    from lightning.pytorch.callbacks.progress import ProgressBar
    from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE

    if not enable_progress_bar or not _RICH_AVAILABLE or any(isinstance(c, ProgressBar) for c in callbacks):
        return None
    return StepRichProgressBar()
