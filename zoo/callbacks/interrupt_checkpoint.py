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

Stopped inside a validation of the fit (a mid-epoch ``val_check_interval`` one or the end-of-epoch one, with its
sample grid), the state was part-way into it: the val loop's counters said some batches were done and the RNG had
moved on by the validation's draws; Lightning resumed such a state by skipping the validation (its metrics.csv
row, not logged yet, was lost) or by finishing it on the wrong val batches (a wrong row), and every later row drew
other noise than an uninterrupted run. The saved state is now that from before the validation (the val loop
"started, no batch done", the RNG as the step left it), which Lightning resumes by running the whole validation
again, at the same logging step, then training on. A validation counts as done once its metrics have gone to the
loggers (redone after that, its row would be logged twice).

Stopped after a step and its validation, before the next step (SIGTERM is acted on there, or at the end of the
epoch; Ctrl-C in the top-k checkpoint save or while the next batch loads), the state was one Lightning misreads:
it skipped a validation it had already counted, so every later row was logged one step late, and after the last
step of an epoch it also ran an empty epoch and went on in the epoch after next (other data). It is now saved in
the shape of the regular step-boundary save of that step (``last.ckpt``'s: step done, logging step not yet
counted, epoch not yet ended) with the RNG as the next step would find it, which Lightning resumes with that step.

Stopped in a step's ``on_train_batch_end`` hooks (Ctrl-C while ``last.ckpt`` is saved at a step's end: found on a
``zoo-train model=glide`` run stopped in the save at an epoch's last step), the state was that save's, which
Lightning resumes by counting the step as done *and its validation as run*: the resumed run had no validation row
and no sample grid at that step, and the step's own metrics.csv row (logged after those hooks) was lost. The step's
bookkeeping is finished now (its row logged), and when a validation is due after the step the state is that of the
validation's start, which Lightning resumes by running it.

Stopped part-way through a gradient accumulation (``trainer.accumulate_grad_batches`` > 1: after or inside a
micro-batch whose gradients wait for the next; SIGTERM is acted on between micro-batches), the accumulated gradients
are not in any checkpoint, yet the loader position, the loop counters and the RNG said those micro-batches were
done: the resume stepped the optimizer on the remaining micro-batches' gradients alone, and logged every row one
step late. The saved state is that of the last optimizer step's end (what ``last.ckpt`` records there), so the
resume redoes the whole accumulation.

So ``interrupted.ckpt`` is never behind a ``last.ckpt`` of the same step, and ``ckpt_path=last`` takes it on a tie.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

from lightning.pytorch.callbacks import OnExceptionCheckpoint

from zoo.callbacks.checkpoint_info import _rng_state, _set_rng_state


class InterruptCheckpoint(OnExceptionCheckpoint):
    """``OnExceptionCheckpoint`` that saves only once this run has trained a step (same arguments)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.start_step: Optional[int] = None  # the global step training started at (after a restore)
        self.saved = False
        self._in_validation = False  # a validation of the fit has begun and its metrics are not logged yet
        self._logging_step = 0  # the logging step (_batches_that_stepped) as the last step's on_train_batch_end saw it
        self._mid_accumulation = False  # micro-batches of an optimizer step not taken yet have been trained
        self._step_end_state: Optional[tuple[int, dict]] = None  # with accumulation: (epoch, fit loop) at a step's end
        self._saving_step_end = False

    def on_train_start(self, trainer, pl_module) -> None:
        self.start_step = trainer.global_step
        self._mid_accumulation, self._step_end_state = False, None
        self._keep_rng()
        # A validation is done once its metrics are handed to the loggers (the row is written then, or when
        # Lightning finalizes the loggers on the way out). The callbacks' on_validation_end comes later (the
        # checkpoint callbacks', ours among them, last): a Ctrl-C in the top-k save would pass for one inside it.
        connector = trainer._logger_connector
        log_eval_end_metrics = connector.log_eval_end_metrics
        if getattr(log_eval_end_metrics, "_zoo_interrupt_checkpoint", None) is self:
            return

        def logged(*args: Any, **kwargs: Any) -> None:
            log_eval_end_metrics(*args, **kwargs)
            self._in_validation = False

        logged._zoo_interrupt_checkpoint = self  # type: ignore[attr-defined]
        connector.log_eval_end_metrics = logged

    # The RNG states as the next step finds them (CheckpointInfo saves torch's CPU and CUDA and Python's): after a step, and
    # again after a validation (CheckpointInfo has put them back as the step left them by then) -- as last.ckpt
    # records them.
    def on_train_batch_end(self, trainer, pl_module, *args: Any, **kwargs: Any) -> None:
        if trainer.accumulate_grad_batches > 1:
            if trainer.fit_loop.epoch_loop._should_accumulate():  # a micro-batch: no optimizer step at its end
                self._mid_accumulation = True
                return
            self._mid_accumulation = False
            # the loops as last.ckpt records them at this step's end (its save runs in this same hook)
            self._step_end_state = (trainer.current_epoch, copy.deepcopy(trainer.fit_loop.state_dict()))
        self._keep_rng()
        self._logging_step = trainer.fit_loop.epoch_loop._batches_that_stepped

    def on_validation_start(self, trainer, pl_module) -> None:
        # the RNG is still the one kept at the step's end (the val loader has a generator of its own)
        self._in_validation = not trainer.sanity_checking and trainer.state.fn == "fit"

    def on_validation_end(self, trainer, pl_module) -> None:
        self._in_validation = False
        if not trainer.sanity_checking and not self._mid_accumulation:  # (mid-way: the last step's end is kept)
            self._keep_rng()

    def _keep_rng(self) -> None:
        self._rng = _rng_state()  # CUDA's too: on a GPU the noise is drawn there

    def _put_back_rng(self) -> None:
        _set_rng_state(self._rng)

    def on_exception(self, trainer, *args: Any, **kwargs: Any) -> None:
        if self.start_step is None or trainer.global_step <= self.start_step:
            return
        epoch_loop = trainer.fit_loop.epoch_loop
        progress = epoch_loop.batch_progress
        # an optimizer step taken, its on_train_batch_end hooks running (the step-boundary save of last.ckpt among
        # them, ours after it): the flags our hook sets are still the previous step's
        in_end_hooks = progress.current.processed == progress.current.ready == progress.current.completed + 1
        at_step_end = in_end_hooks and not epoch_loop._should_accumulate()
        # (a micro-batch's: its gradients wait for the next, in no checkpoint -- the first one after a step too)
        mid_accumulation = self._mid_accumulation or (in_end_hooks and epoch_loop._should_accumulate())
        if mid_accumulation and self._step_end_state is not None and not at_step_end:
            # the loops and the RNG as the last optimizer step left them: the resume redoes the whole accumulation
            self._put_back_rng()
            self._saving_step_end = True
            try:
                self._save(trainer)
            finally:
                self._saving_step_end = False
            self.saved = True
            return
        # the state is changed in place: the run is ending
        if progress.current.processed < progress.current.ready:  # inside a step: save the state from before it
            from zoo.data.loader import ResumableDataLoader

            loader = trainer.fit_loop._combined_loader
            for dl in loader.flattened if loader is not None else []:
                if isinstance(dl, ResumableDataLoader):
                    dl._batches_done = progress.current.processed  # the batches of this epoch whose step was done
            self._put_back_rng()
            if trainer.accumulate_grad_batches == 1:
                # the logging step: a restore adds the 1 that a step-boundary save (last.ckpt) has not counted yet;
                # saved after the step counted it, every row of the resumed run was logged one step late
                epoch_loop._batches_that_stepped -= 1
        elif at_step_end:
            self._finish_step_end(trainer)
        elif self._in_validation:
            self._rewind_validation(trainer)
        elif 0 < progress.current.completed == progress.current.ready:
            self._as_step_boundary(trainer)
        self._save(trainer)
        self.saved = True

    def _save(self, trainer) -> None:
        # the whole state (optimizer, loops, callbacks: what a resume needs), said so: Lightning's own on_exception
        # passes no weights_only, and its save then logged "`weights_only` was not set, defaulting to `False`" on
        # every interrupt, which read like an unsafe load (it is the save's "weights only" switch)
        trainer.save_checkpoint(self.ckpt_path, weights_only=False)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self._saving_step_end:
            checkpoint["epoch"], checkpoint["loops"]["fit_loop"] = copy.deepcopy(self._step_end_state)

    def _rewind_validation(self, trainer) -> None:
        """The val loop's counters as Lightning saves them "mid-evaluation" with no batch done, which it resumes
        by running the whole validation (after the step: its logging step is not counted yet, as Lightning wants
        it there), and the RNG as the validation found it."""
        self._validation_not_run(trainer)
        self._put_back_rng()

    @staticmethod
    def _validation_not_run(trainer) -> None:
        """The val loop "started, no batch done" (the counters of this epoch's earlier validations kept)."""
        progress = trainer.fit_loop.epoch_loop.val_loop.batch_progress
        earlier = progress.total.completed - progress.current.completed  # val batches of this epoch's earlier ones
        for tracker, base in ((progress.total, earlier), (progress.current, 0)):
            tracker.ready = tracker.started = base + 1  # on restore, all are reset to the completed count
            tracker.processed = tracker.completed = base
        progress.is_last_batch = False

    def _finish_step_end(self, trainer) -> None:
        """Stopped in a step's on_train_batch_end hooks (Ctrl-C in the step-boundary save of last.ckpt): the counters
        are those of that save, which Lightning resumes by counting the step as done and its validation as run. The
        step's bookkeeping that the hooks' end would have done is finished here (its metrics.csv row, else lost),
        and when a validation is due after this step the state is that of its start ("started, no batch done"),
        which Lightning resumes by running it, at the same logging step, as an uninterrupted run does. The RNG is
        the one the step left (nothing after the step draws before the validation; our own hook, which keeps it,
        comes after the checkpoint saves and has not run)."""
        epoch_loop = trainer.fit_loop.epoch_loop
        connector = trainer._logger_connector
        connector.on_batch_end()
        epoch_loop.batch_progress.increment_completed()
        connector.update_train_step_metrics()
        if epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher):
            self._validation_not_run(trainer)
        else:  # back to the step-boundary save's shape, which Lightning resumes by training on
            for tracker in (epoch_loop.batch_progress.total, epoch_loop.batch_progress.current):
                tracker.completed -= 1

    def _as_step_boundary(self, trainer) -> None:
        """A state after a finished step (and its validation, if one was due) as the step-boundary save of that step
        records it: the step's batch not yet marked completed (Lightning resumes that by counting it and training
        on, the validation counted as done), the logging step as the step's end saw it, the epoch not yet ended
        (Lightning ends it on resume). The RNG stays as it is (``CheckpointInfo`` puts it back after a validation)."""
        fit_loop = trainer.fit_loop
        progress = fit_loop.epoch_loop.batch_progress
        for tracker in (progress.total, progress.current):
            tracker.completed -= 1
        fit_loop.epoch_loop._batches_that_stepped = self._logging_step
        epochs = fit_loop.epoch_progress
        if epochs.current.processed == epochs.current.started:  # the epoch was ended (SIGTERM is acted on after it)
            for tracker in (epochs.total, epochs.current):
                tracker.processed = tracker.completed = tracker.started - 1
