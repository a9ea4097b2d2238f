"""Train for a wall-clock budget instead of a step count, and finish the learning-rate schedule inside it.

``trainer.max_time`` stops a run when time is up, wherever its schedule is: a cosine decay cut at 40% leaves the
model at a high learning rate. ``TimeBudget`` instead measures this machine's seconds per step over the first
steps, then sets the run's step count to what fits in the budget — ``trainer.max_steps``, the cosine schedule's
``total_steps`` (``zoo.models.base.WarmupCosine``) and the validation interval (one validation, at the end) — so a
fast CPU (native bf16) trains more steps than a slow one and both end their schedule on time. ``make demo`` uses it
so the demo fits its half hour on either kind of CPU.

The step count is re-estimated at each of ``recheck_fraction`` (fractions of the budget: 0.4 and 0.7) from the rate
of the steps since the previous plan, not since the start: a machine's speed drifts with its load, and the recent
rate is what the rest of the run will see (a run planned while another job shared its cores, which then ended, kept
the loaded rate and stopped at 36 of its 45 minutes). As a last resort, training stops at ``hard_stop`` × the
budget. The configured ``trainer.max_steps`` stays an upper bound; ``min_steps`` a lower one (a very slow machine still trains that many steps, late).

A plan made while the machine was briefly loaded can also run out early: the load ends after a re-measure, the
planned steps go by fast, and the run stopped with part of its budget unused (seen: 3.5 of 7 minutes, when tests ran
beside ``make demo``'s decoder during its 40% re-measure). When the planned steps are done with more than
``tail_fraction`` of the budget still to use, the run goes on at the schedule's final learning rate (its cosine has
ended: ``min_ratio`` of the peak) for the steps that fit, re-measured as before; the schedule is not re-fitted then,
which would jump the learning rate back up.

The budget is the RUN's, across resumes: the seconds trained so far travel in the checkpoint (``used_s``), and a run
interrupted at 4 of its 10 minutes and resumed with ``ckpt_path=last`` trains for the remaining 6, re-measuring this
machine's rate; its cosine ends where the uninterrupted run's would have (a fresh full budget re-fitted the schedule
to 4 + 10 minutes of steps, and the learning rate jumped back up). A run whose budget is spent stops at once and says
so (fix: a larger ``minutes``, which then counts the earlier legs too).

    callbacks.time_budget: {_target_: zoo.callbacks.TimeBudget, minutes: 5}
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Optional, Sequence, Union

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

from zoo.callbacks.progress import planned_steps
from zoo.errors import ConfigError, check_number, check_whole, is_number, shown
from zoo.progress import format_duration

log = logging.getLogger("zoo.progress")


class TimeBudget(L.Callback):
    def __init__(
        self,
        minutes: float,
        calibrate_steps: int = 10,
        warmup_steps: int = 3,
        min_steps: int = 20,
        recheck_fraction: Union[float, Sequence[float], None] = (0.4, 0.7),
        reserve: float = 0.06,
        hard_stop: float = 1.25,
        validate_at_end: bool = True,
        tail_fraction: float = 0.1,
    ):
        # Each value is checked here, with the option to set: a NaN budget planned nothing and never stopped, a
        # reserve of 1 or more planned no step (min_steps only), a hard_stop below 1 cut the run before its schedule
        # ended, a negative min_steps allowed a plan of no steps
        problems: list[str] = []
        key = "callbacks.time_budget."
        check_number(key + "minutes", minutes, 0, low_open=True, fix=30, problems=problems)
        for name, value, least, why in (
            ("calibrate_steps", calibrate_steps, 1, ""),
            ("warmup_steps", warmup_steps, 0, ""),
            ("min_steps", min_steps, 0, "0: no lower bound"),
        ):
            check_whole(key + name, value, least, why=why, problems=problems)
        why = "the share of the budget kept for the final validation and checkpoint"
        check_number(
            key + "reserve", reserve, 0, 1, high_open=True, fix="0.06, the default", why=why, problems=problems
        )
        why = "training stops at hard_stop x the budget as a last resort"
        check_number(key + "hard_stop", hard_stop, 1, fix="1.25, the default", why=why, problems=problems)
        check_number(
            key + "tail_fraction", tail_fraction, 0, 1, low_open=True, high_open=True, fix=0.1, problems=problems
        )
        if recheck_fraction is None:
            fractions: list[Any] = []
        elif is_number(recheck_fraction):
            fractions = [recheck_fraction]
        elif isinstance(recheck_fraction, Sequence) and not isinstance(recheck_fraction, str):  # from the config
            fractions = list(recheck_fraction)
        else:
            fractions = [recheck_fraction]
        if any(not is_number(f, 0, 1, low_open=True, high_open=True) for f in fractions):
            problems.append(
                f"{key}recheck_fraction={shown(recheck_fraction)} must be numbers in (0, 1): fractions of the budget "
                f"(fix: {key}recheck_fraction=[0.4,0.7], or null for no re-measure)"
            )
        if problems:
            raise ConfigError("; ".join(problems))
        self.budget_s = float(minutes) * 60.0
        self.calibrate_steps = int(calibrate_steps)
        self.warmup_steps = int(warmup_steps)
        self.min_steps = int(min_steps)
        self.recheck_fractions = sorted(float(f) for f in fractions)
        self.reserve = float(reserve)  # share of the budget kept for the final validation / checkpoint
        self.hard_stop = float(hard_stop)
        self.validate_at_end = bool(validate_at_end)
        self.tail_fraction = float(tail_fraction)
        self.in_tail = False  # the schedule has ended; steps that still fit run at its final learning rate
        self.planned_steps: Optional[int] = None
        self.sec_per_step: Optional[float] = None
        self._t_fit = 0.0
        self._t_timed = 0.0
        self._step_timed = 0
        self._cap = 0
        self._rechecks_done = 0
        self._hard_stopped = False  # the hard stop has fired (followed by every rank under DDP)
        self._plans_made = 0  # plans made by this run (not restored)
        self._used_before = 0.0  # training seconds of the earlier legs of a resumed run (the checkpoint's used_s)
        self._running = False

    # --- hooks ---------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t_fit = time.monotonic() - self._used_before  # elapsed() counts the earlier legs of a resumed run
        self._running = True
        self._start_step = trainer.global_step
        self._plans_made = 0
        # re-measures due at fractions of the budget the earlier legs passed: not all at once on the first steps
        self._rechecks_done = sum(f * self.budget_s <= self._used_before for f in self.recheck_fractions)
        cap = trainer.max_steps
        self._cap = cap if cap is not None and cap > 0 else 10**9
        # the epochs bound the run too (trainer.max_epochs, 10 in trainer/default.yaml): a plan past them fitted the
        # cosine to steps the run never reached, and it ended near its peak learning rate (16 steps of a 136-step
        # schedule: 0.98 of the peak)
        by_epochs = planned_steps(trainer)  # max_epochs x the steps an epoch makes, within max_steps
        if by_epochs is not None and by_epochs < self._cap:
            self._cap = by_epochs
            if trainer.is_global_zero:
                log.info(
                    "time budget: trainer.max_epochs=%s bounds the run at %d steps, whatever fits the budget (fix: "
                    "trainer.max_epochs=-1 to let the budget decide)",
                    trainer.max_epochs,
                    self._cap,
                )
        if trainer.is_global_zero:  # under DDP rank 0 plans (and says so) for every rank
            earlier = (
                f", {format_duration(self._used_before)} of it used before this resume" if self._used_before else ""
            )
            log.info(
                "time budget: %s of training%s (steps fitted after %d timed steps)",
                format_duration(self.budget_s),
                earlier,
                self.calibrate_steps,
            )
        # spent: not one more step (at the earlier legs' last measured rate) fits in what the budget has left
        if self._used_before and self._used_before + (self.sec_per_step or 0.0) > self.budget_s * (1.0 - self.reserve):
            if trainer.is_global_zero:
                log.warning(
                    "time budget: the earlier legs of this run used %s of its %s: nothing left to train (fix: a "
                    "larger callbacks.time_budget.minutes, which counts them too)",
                    format_duration(self._used_before),
                    format_duration(self.budget_s),
                )
            # (should_stop set here is reset when the epoch starts: the step cap is what stops the loop at once)
            trainer.fit_loop.epoch_loop.max_steps = trainer.global_step
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._used_before = time.monotonic() - self._t_fit  # what a checkpoint written after fit ends records
        self._running = False

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.fit_loop.epoch_loop._should_accumulate():
            # a micro-batch of a gradient accumulation, not a step's end: timed from one, the measure started part-way
            # into a step and the plan held more steps than fit (the run ended at the hard stop)
            return
        if trainer.world_size > 1:
            # Several processes (DDP): each would plan from its own clock, and a plan one step apart (or a hard stop
            # on one rank only) leaves a rank waiting for the others' gradients forever at the end of the budget;
            # a schedule re-fitted on one rank only trains the ranks at different learning rates. Rank 0 plans;
            # every rank follows its plan, after every step (one small broadcast).
            if trainer.global_rank == 0:
                self._step_end(trainer, batch_idx)
            self._follow_rank_zero(trainer, batch_idx)
            return
        self._step_end(trainer, batch_idx)

    def _follow_rank_zero(self, trainer: L.Trainer, batch_idx: int) -> None:
        # a plan restored from a checkpoint is only the record of the earlier run: nothing to follow until rank 0
        # has planned in this one (a resumed run re-measures)
        planned_here = self.planned_steps if self._plans_made else None
        state = (planned_here, self.in_tail, self._rechecks_done, self.sec_per_step, self._hard_stopped)
        planned, in_tail, rechecks, sec_per_step, hard_stopped = trainer.strategy.broadcast(state, src=0)
        self._rechecks_done, self.sec_per_step = rechecks, sec_per_step
        self.in_tail = in_tail  # before _apply: in the tail the schedule is not re-fitted, on any rank
        if planned is not None and (planned != self.planned_steps or trainer.fit_loop.epoch_loop.max_steps != planned):
            self.planned_steps = planned
            self._apply(trainer, planned)
            _resize_train_bar(trainer, planned, batch_idx)
        if hard_stopped and not self._hard_stopped:
            self._hard_stopped = True
            trainer.should_stop = True

    def _step_end(self, trainer: L.Trainer, batch_idx: int) -> None:
        done = trainer.global_step - self._start_step
        now = time.monotonic()
        if done == self.warmup_steps:  # the first steps pay for allocation / kernel selection: not timed
            self._t_timed, self._step_timed = now, trainer.global_step
        elif done == self.warmup_steps + self.calibrate_steps:
            self._plan(trainer, now, "measured", batch_idx)
        elif (
            self._rechecks_done < len(self.recheck_fractions)
            and self._plans_made  # a plan of this run (a restored one is the earlier run's record)
            and now - self._t_fit >= self.recheck_fractions[self._rechecks_done] * self.budget_s
        ):
            self._rechecks_done += 1
            self._plan(trainer, now, "re-measured", batch_idx)
        elif (
            self._plans_made
            and trainer.global_step >= self.planned_steps
            and trainer.global_step < self._cap
            and now - self._t_fit < (1.0 - self.reserve - self.tail_fraction) * self.budget_s
        ):
            self.in_tail = True  # before _plan: the schedule stays ended
            self._plan(
                trainer, now, "planned steps done early; going on at the final learning rate, re-measured", batch_idx
            )
        if now - self._t_fit > self.hard_stop * self.budget_s and not trainer.should_stop:
            log.warning(
                "time budget: %s used (%.0f%% of the budget): stopping at step %d",
                format_duration(now - self._t_fit),
                100 * self.hard_stop,
                trainer.global_step,
            )
            self._hard_stopped = True
            trainer.should_stop = True

    # --- planning ------------------------------------------------------------------------------------------
    def _plan(self, trainer: L.Trainer, now: float, how: str, batch_idx: Optional[int] = None) -> None:
        steps_timed = trainer.global_step - self._step_timed
        if steps_timed <= 0:
            return
        # validation runs between steps inflate the measured rate a little: the plan errs on the short side
        self.sec_per_step = (now - self._t_timed) / steps_timed
        # the next re-measure times only the steps after this plan: the recent rate predicts the rest of the run
        self._t_timed, self._step_timed = now, trainer.global_step
        left = self.budget_s * (1.0 - self.reserve) - (now - self._t_fit)
        steps = trainer.global_step + max(0, int(left / self.sec_per_step))
        steps = min(self._cap, max(self.min_steps, steps))
        self.planned_steps = steps
        self._plans_made += 1
        self._apply(trainer, steps)
        if batch_idx is not None:
            _resize_train_bar(trainer, steps, batch_idx)
        log.info(
            "time budget: %s %.3g s/step -> %d steps in all (%s)",
            how,
            self.sec_per_step,
            steps,
            format_duration(self.budget_s),
        )

    def _apply(self, trainer: L.Trainer, steps: int) -> None:
        trainer.fit_loop.epoch_loop.max_steps = steps
        for sched_cfg in [] if self.in_tail else trainer.lr_scheduler_configs:
            for fn in getattr(sched_cfg.scheduler, "lr_lambdas", []):
                if hasattr(fn, "total_steps"):
                    fn.total_steps = steps
        # only where validation counts steps across epochs (check_val_every_n_epoch=null, as the budgeted
        # experiments set it): with epoch-based validation a val_check_batch past the epoch's length was never
        # reached, and the run did not validate at all
        if (
            self.validate_at_end
            and trainer.check_val_every_n_epoch is None
            and isinstance(trainer.val_check_batch, int)
            and trainer.num_val_batches
        ):
            # one validation (and sample grid), on the last step of the budget. Lightning counts that interval in
            # batches (every micro-batch of a gradient accumulation); set as the step count, a run with
            # trainer.accumulate_grad_batches=k validated (and drew a grid) every steps/k steps, ran past its budget
            # into the hard stop and missed the end
            trainer.val_check_batch = max(
                1, trainer.fit_loop.epoch_loop.total_batch_idx + 1 + _batches_for(trainer, steps)
            )

    def state_dict(self) -> dict[str, Any]:
        used = time.monotonic() - self._t_fit if self._running else self._used_before
        return {"planned_steps": self.planned_steps, "sec_per_step": self.sec_per_step, "used_s": used}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # a resumed run re-measures (it may be on another machine); the old plan is kept only for the record, the
        # seconds already trained count against the budget (checkpoints from before used_s: none)
        self.planned_steps = state_dict.get("planned_steps")
        self.sec_per_step = state_dict.get("sec_per_step")
        self._used_before = float(state_dict.get("used_s") or 0.0)


def _batches_for(trainer: L.Trainer, steps: int) -> int:
    """The training batches after the current one until ``global_step`` reaches ``steps``: ``accumulate_grad_batches``
    a step, and the short step Lightning takes on an epoch's last batches."""
    left = max(0, steps - trainer.global_step)
    acc = max(1, int(trainer.accumulate_grad_batches))
    n = trainer.num_training_batches
    if not isinstance(n, int) or n < 1:  # a streamed epoch of unknown length: no epoch end in sight
        return left * acc
    in_epoch = n - (trainer.fit_loop.epoch_loop.batch_idx + 1)  # this epoch's batches still to come
    here = math.ceil(in_epoch / acc)  # the steps they make
    if left <= here:
        return min(left * acc, in_epoch)
    epochs, rest = divmod(left - here, math.ceil(n / acc))
    return in_epoch + epochs * n + rest * acc


def _resize_train_bar(trainer: L.Trainer, steps: int, batch_idx: int) -> None:
    """Give the progress bar of the running epoch the new step count.

    Lightning sizes the epoch's bar once, when the epoch starts, from ``max_steps`` (3000 in a budgeted experiment
    config, an upper bound); the plan then cuts the run to a few hundred steps, and the bar went on showing
    "370/3000" with an ETA for 3000 steps. Later epochs are sized from the new ``max_steps`` by Lightning itself.
    Rich and tqdm bars are handled; another bar (or none) is left alone."""
    bar = getattr(trainer, "progress_bar_callback", None)
    if bar is None:
        return
    # batches this epoch: the ones done (batch_idx + 1, this hook runs after the batch) plus those the plan has left
    total = batch_idx + 1 + _batches_for(trainer, steps)
    n_batches = trainer.num_training_batches
    if isinstance(n_batches, (int, float)) and n_batches < total:
        total = n_batches
    if isinstance(bar, RichProgressBar):
        if bar.progress is not None and bar.train_progress_bar_id is not None:
            bar.progress.update(bar.train_progress_bar_id, total=total)
    elif isinstance(bar, TQDMProgressBar):
        try:
            tqdm_bar = bar.train_progress_bar
        except TypeError:  # its property raises before the bar exists
            return
        tqdm_bar.total = total
        tqdm_bar.refresh()
