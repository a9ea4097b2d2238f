"""``interrupted.ckpt`` on Ctrl-C / SIGTERM / a crash, but only of a run that has trained a step since it started.

Lightning's ``OnExceptionCheckpoint`` saves whatever state the trainer is in. Before this run's first optimizer step
that state holds nothing new and is worse than nothing:

- a resume whose restore failed (e.g. other model settings) saved the model *as built*, at step 0, over the file it
  was resuming when that was ``interrupted.ckpt`` (a SIGTERM'd run's only state): the run's training was gone;
- Ctrl-C in the sanity check or in the first step saved a step-0 checkpoint whose loop and data-loader state is
  part-way into that step: resumed, it skipped the first batch, logged every row one step late or lost the first
  epoch's validation, where simply running the command again starts the run exactly.

So nothing is saved until the run has trained past the step it started at (0, or the resumed checkpoint's); the
resumed file, if any, stays the resume point.

Stopped inside a later step (Ctrl-C lands wherever the run is), the state is also part-way into that step: the
loop will redo the step, but the data loader had already counted its batch as consumed and the forward pass had
already drawn its noise, so the resume skipped a batch and drew other noise than an uninterrupted run (and logged
every row one step late). The saved loader position, RNG states and logging step are those from before the step
(what ``last.ckpt`` holds at a step boundary). ``saved`` says whether this run wrote the file (``zoo.train`` words
its message on it).
"""

from __future__ import annotations

import random
from typing import Any, Optional

import torch
from lightning.pytorch.callbacks import OnExceptionCheckpoint


class InterruptCheckpoint(OnExceptionCheckpoint):
    """``OnExceptionCheckpoint`` that saves only once this run has trained a step (same arguments)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.start_step: Optional[int] = None  # the global step training started at (after a restore)
        self.saved = False

    def on_train_start(self, trainer, pl_module) -> None:
        self.start_step = trainer.global_step
        self._keep_rng()

    # The RNG states as the next step finds them (CheckpointInfo saves torch's CPU and Python's): after a step, and
    # again after a validation (which draws too) -- where last.ckpt records them.
    def on_train_batch_end(self, trainer, pl_module, *args: Any, **kwargs: Any) -> None:
        self._keep_rng()

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._keep_rng()

    def _keep_rng(self) -> None:
        self._rng = (torch.get_rng_state(), random.getstate())

    def on_exception(self, trainer, *args: Any, **kwargs: Any) -> None:
        if self.start_step is None or trainer.global_step <= self.start_step:
            return
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        if progress.processed < progress.ready:  # inside a step: save the state from before it (the run is ending)
            from zoo.data.loader import ResumableDataLoader

            loader = trainer.fit_loop._combined_loader
            for dl in loader.flattened if loader is not None else []:
                if isinstance(dl, ResumableDataLoader):
                    dl._batches_done = progress.processed  # the batches of this epoch whose step was done
            torch.set_rng_state(self._rng[0])
            random.setstate(self._rng[1])
            if trainer.accumulate_grad_batches == 1:
                # the logging step: a restore adds the 1 that a step-boundary save (last.ckpt) has not counted yet;
                # saved after the step counted it, every row of the resumed run was logged one step late
                trainer.fit_loop.epoch_loop._batches_that_stepped -= 1
        super().on_exception(trainer, *args, **kwargs)
        self.saved = True
