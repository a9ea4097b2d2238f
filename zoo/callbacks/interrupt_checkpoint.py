"""``interrupted.ckpt`` on Ctrl-C / SIGTERM / a crash, but only of a run that has trained a step since it started.

Lightning's ``OnExceptionCheckpoint`` saves whatever state the trainer is in. Before this run's first optimizer step
that state holds nothing new and is worse than nothing:

- a resume whose restore failed (e.g. other model settings) saved the model *as built*, at step 0, over the file it
  was resuming when that was ``interrupted.ckpt`` (a SIGTERM'd run's only state): the run's training was gone;
- Ctrl-C in the sanity check or in the first step saved a step-0 checkpoint whose loop and data-loader state is
  part-way into that step: resumed, it skipped the first batch, logged every row one step late or lost the first
  epoch's validation, where simply running the command again starts the run exactly.

So nothing is saved until the run has trained past the step it started at (0, or the resumed checkpoint's); the
resumed file, if any, stays the resume point. ``saved`` says whether this run wrote the file (``zoo.train`` words
its message on it).
"""

from __future__ import annotations

from typing import Any, Optional

from lightning.pytorch.callbacks import OnExceptionCheckpoint


class InterruptCheckpoint(OnExceptionCheckpoint):
    """``OnExceptionCheckpoint`` that saves only once this run has trained a step (same arguments)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.start_step: Optional[int] = None  # the global step training started at (after a restore)
        self.saved = False

    def on_train_start(self, trainer, pl_module) -> None:
        self.start_step = trainer.global_step

    def on_exception(self, trainer, *args: Any, **kwargs: Any) -> None:
        if self.start_step is None or trainer.global_step <= self.start_step:
            return
        super().on_exception(trainer, *args, **kwargs)
        self.saved = True
