"""``last.ckpt`` that is also written at the final step, from inside the training loop.

Lightning's ``ModelCheckpoint(every_n_train_steps=K, save_last=True)`` saves at multiples of K. When ``max_steps`` is
not a multiple of K, the final state would only be saved after ``fit`` returns, when Lightning has already marked the
epoch finished while our loader's position says it stopped part-way: resuming to a larger ``max_steps`` would then
start a new epoch and skip the rest of this one, so "train N, resume to 2N" would differ from "train 2N". Saving the
final step from ``on_train_batch_end`` records the same mid-epoch state as every other step checkpoint.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (use with ``save_last=True``) that also saves ``last.ckpt`` when ``max_steps`` is reached."""

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        max_steps = int(trainer.max_steps or -1)
        if not self.save_last or max_steps <= 0 or trainer.global_step < max_steps:
            return
        if self._should_skip_saving_checkpoint(trainer):  # already saved at this step (a multiple of K), or not fitting
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._last_global_step_saved = trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        # Lightning's on_train_end writes last.ckpt even under fast_dev_run, where it says "checkpointing is
        # suppressed": a one-batch debug run (debug=fdr) then left the newest resume point of its task_name
        if trainer.fast_dev_run:
            return
        super().on_train_end(trainer, pl_module)
