"""zoo.callbacks.TimeBudget: the step count and the cosine schedule are fitted into a wall-clock budget."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

from zoo.callbacks import time_budget as tb
from zoo.callbacks.time_budget import TimeBudget
from zoo.models.base import WarmupCosine, cosine_with_warmup


class _Clock:
    """A fake monotonic clock: each training step costs ``sec_per_step`` seconds."""

    def __init__(self, sec_per_step: float):
        self.t, self.dt = 0.0, sec_per_step

    def __call__(self) -> float:
        return self.t


class _Tiny(L.LightningModule):
    def __init__(self, clock: _Clock, warmup: int = 2, total: int = 10_000):
        super().__init__()
        self.clock = clock
        self.lin = torch.nn.Linear(4, 1)
        self.sched = functools.partial(cosine_with_warmup, warmup_steps=warmup, total_steps=total, min_ratio=0.1)
        self.lrs: list[float] = []

    def training_step(self, batch, batch_idx):
        self.clock.t += self.clock.dt
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])
        return self.lin(batch[0]).pow(2).mean()

    def train_dataloader(self):
        x = torch.randn(4096, 4)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=2)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=1.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.sched(opt), "interval": "step"}}


def _trainer(budget: TimeBudget, max_steps: int = 10_000, **kw) -> L.Trainer:
    kw = {"limit_val_batches": 0, "enable_progress_bar": False, **kw}
    return L.Trainer(
        max_steps=max_steps,
        max_epochs=-1,
        callbacks=[budget],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        **kw,
    )


def _fit(monkeypatch, sec_per_step: float, minutes: float, max_steps: int = 10_000, **kw):
    clock = _Clock(sec_per_step)
    monkeypatch.setattr(tb.time, "monotonic", clock)
    model = _Tiny(clock)
    budget = TimeBudget(minutes=minutes, calibrate_steps=5, warmup_steps=2, min_steps=3, **kw)
    trainer = _trainer(budget, max_steps)
    trainer.fit(model)
    return trainer, model, budget


def test_steps_and_schedule_fit_the_budget(monkeypatch):
    # 1 s per step, 1 minute, 6% kept in reserve: 56 steps (60 * 0.94 = 56.4), whatever max_steps says
    trainer, model, budget = _fit(monkeypatch, 1.0, 1.0, reserve=0.06)
    assert budget.planned_steps == 56 and trainer.global_step == 56
    assert budget.sec_per_step == pytest.approx(1.0)
    fn = trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    assert isinstance(fn, WarmupCosine) and fn.total_steps == 56
    # the cosine decay ends on the budget's last step: the last lr is near min_ratio, the middle one near half-way
    assert model.lrs[-1] == pytest.approx(WarmupCosine(2, 56, 0.1)(55))
    assert model.lrs[-1] < 0.11 and 0.5 < model.lrs[28] < 0.6


def test_a_slower_machine_gets_fewer_steps_and_the_cap_holds(monkeypatch):
    trainer_slow, _, b_slow = _fit(monkeypatch, 4.0, 1.0)
    assert b_slow.planned_steps == 14 and trainer_slow.global_step == 14  # 60 * 0.94 / 4
    trainer_cap, _, b_cap = _fit(monkeypatch, 0.01, 1.0, max_steps=40)  # 5,640 would fit; max_steps caps it
    assert b_cap.planned_steps == 40 and trainer_cap.global_step == 40


def test_hard_stop_when_the_machine_slows_down(monkeypatch):
    # the plan is made at 1 s/step; then the steps turn 10x slower: training stops at 1.25x the budget
    clock = _Clock(1.0)
    monkeypatch.setattr(tb.time, "monotonic", clock)
    model = _Tiny(clock)
    orig = model.training_step

    def step(batch, batch_idx):
        if batch_idx >= 10:
            clock.dt = 10.0
        return orig(batch, batch_idx)

    model.training_step = step
    budget = TimeBudget(minutes=1.0, calibrate_steps=5, warmup_steps=2, recheck_fraction=None)
    trainer = _trainer(budget)
    trainer.fit(model)
    assert clock.t <= 1.25 * 60 + 10 and trainer.global_step < budget.planned_steps


def _fit_with_speed_change(monkeypatch, change_at: int, before: float, after: float, **kw):
    """A run whose steps cost ``before`` seconds up to batch ``change_at`` and ``after`` from there on (another job
    on the same cores ends, or starts)."""
    clock = _Clock(before)
    monkeypatch.setattr(tb.time, "monotonic", clock)
    model = _Tiny(clock)
    orig = model.training_step

    def step(batch, batch_idx):
        clock.dt = before if batch_idx < change_at else after
        return orig(batch, batch_idx)

    model.training_step = step
    budget = TimeBudget(minutes=10.0, calibrate_steps=5, warmup_steps=2, min_steps=3, reserve=0.06, **kw)
    trainer = _trainer(budget)
    trainer.fit(model)
    return trainer, clock, budget


def test_a_load_that_ends_midway_does_not_cut_the_run_short(monkeypatch):
    # 600 s budget, 564 s usable. Steps cost 2 s for the first 100 batches (200 s: a second job on the cores), then
    # 1 s. The first plan (14 s in, 2 s/step) aims at 282 steps. The 40% re-measure (240 s, step 140) times the
    # steps since that plan, still mostly loaded (1.70 s/step), and aims to end at 430 s; the 70% re-measure
    # (420 s) sees only 1 s steps and fills the budget: 464 steps, 564 s.
    trainer, clock, budget = _fit_with_speed_change(monkeypatch, 100, 2.0, 1.0)
    assert budget.sec_per_step == pytest.approx(1.0)
    assert 564 - 2 <= clock.t <= 564 + 2
    assert not budget.in_tail  # the re-measures alone filled it
    # with the 40% re-measure alone (the old rule, whose window was the whole run: the same 1.70 s/step here) and no
    # tail, the run ends at 430 s, a quarter of the budget unused; the tail then fills it at the final learning rate
    trainer1, clock1, _ = _fit_with_speed_change(monkeypatch, 100, 2.0, 1.0, recheck_fraction=0.4, tail_fraction=0.999)
    assert clock1.t < 564 - 60
    trainer2, clock2, budget2 = _fit_with_speed_change(monkeypatch, 100, 2.0, 1.0, recheck_fraction=0.4)
    assert budget2.in_tail and 564 - 2 <= clock2.t <= 564 + 2


def test_a_load_that_starts_midway_is_planned_for(monkeypatch):
    # the reverse: 1 s steps, then 2 s from batch 100 (200 s in): the re-measures shorten the plan so the run ends
    # inside its budget instead of at the hard stop (1.25x)
    trainer, clock, budget = _fit_with_speed_change(monkeypatch, 100, 1.0, 2.0)
    assert budget.sec_per_step == pytest.approx(2.0)
    assert 564 - 4 <= clock.t <= 564 + 4


def _fit_with_a_load_between(monkeypatch, start: int, end: int, slow: float, **kw):
    """1 s steps, ``slow`` s steps for batches start..end-1 (another job on the cores for a while)."""
    clock = _Clock(1.0)
    monkeypatch.setattr(tb.time, "monotonic", clock)
    model = _Tiny(clock)
    orig = model.training_step

    def step(batch, batch_idx):
        clock.dt = slow if start <= batch_idx < end else 1.0
        return orig(batch, batch_idx)

    model.training_step = step
    budget = TimeBudget(minutes=10.0, calibrate_steps=5, warmup_steps=2, min_steps=3, reserve=0.06, **kw)
    trainer = _trainer(budget)
    trainer.fit(model)
    return trainer, model, clock, budget


def test_a_short_load_during_a_re_measure_does_not_leave_the_budget_unused(monkeypatch):
    # 600 s budget, 564 s usable. 1 s steps, but 5 s steps for batches 30-79 (a job beside it). The first plan (7 s
    # in) aims at 564 steps; the 40% re-measure (240 s, step 72) times 3.58 s/step since then and aims at 162. The
    # load ends at batch 80, so step 162 comes at 362 s, before the 70% re-measure: the run used to stop there, 202 s
    # of its budget unused. It goes on at the cosine's final learning rate and ends within the budget.
    trainer, model, clock, budget = _fit_with_a_load_between(monkeypatch, 30, 80, 5.0)
    assert budget.in_tail
    assert 564 - 4 <= clock.t <= 564 + 4, clock.t
    fn = trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    assert fn.total_steps == 162  # the schedule ended where it was planned to, not re-fitted later
    assert trainer.global_step > 162 + 150
    assert all(lr == pytest.approx(0.1) for lr in model.lrs[163:])  # min_ratio 0.1 of lr 1.0, no jump back up
    assert model.lrs[150] > 0.1  # still decaying before the end of the schedule
    # without a tail (tail_fraction near 1: never), the run stops at step 162, 362 s in
    trainer0, _, clock0, budget0 = _fit_with_a_load_between(monkeypatch, 30, 80, 5.0, tail_fraction=0.999)
    assert not budget0.in_tail and trainer0.global_step == 162 and clock0.t < 400


def test_a_quiet_run_has_no_tail(monkeypatch):
    trainer, model, clock, budget = _fit_with_a_load_between(monkeypatch, 0, 0, 1.0)
    assert not budget.in_tail and trainer.global_step == 564


def test_bad_budget_is_refused():
    with pytest.raises(ValueError, match="minutes"):
        TimeBudget(minutes=0)
    with pytest.raises(ValueError, match="recheck_fraction"):
        TimeBudget(minutes=1, recheck_fraction=[0.4, 1.5])


class _BarTotals(L.Callback):
    """Records the train bar's total after every batch (placed after the budget, so it sees the plan's resize)."""

    def __init__(self):
        self.totals: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        bar = trainer.progress_bar_callback
        if isinstance(bar, RichProgressBar):
            task = next(t for t in bar.progress.tasks if t.id == bar.train_progress_bar_id)
            self.totals.append(task.total)
        else:
            self.totals.append(bar.train_progress_bar.total)


@pytest.mark.parametrize("bar_cls", [TQDMProgressBar, RichProgressBar])
def test_the_progress_bar_shows_the_planned_steps(monkeypatch, bar_cls):
    # Lightning sizes the epoch's bar from max_steps (10,000) when the epoch starts; the plan (56 steps) must reach
    # the bar, or it shows "56/10000" and an ETA for 10,000 steps
    clock = _Clock(1.0)
    monkeypatch.setattr(tb.time, "monotonic", clock)
    budget = TimeBudget(minutes=1.0, calibrate_steps=5, warmup_steps=2, min_steps=3, reserve=0.06)
    totals = _BarTotals()
    trainer = L.Trainer(
        max_steps=10_000,
        max_epochs=-1,
        callbacks=[bar_cls(), budget, totals],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(_Tiny(clock))
    assert trainer.global_step == 56
    assert totals.totals[0] == 2048  # before the plan: the epoch's 2,048 batches (fewer than max_steps)
    assert totals.totals[-1] == 56


class _TinyWithVal(_Tiny):
    """4 batches an epoch, one validation batch; counts validations."""

    def __init__(self, clock):
        super().__init__(clock)
        self.validations = 0

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=2)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(2, 4)), batch_size=2)

    def validation_step(self, batch, batch_idx):
        self.validations += 1


@pytest.mark.parametrize("every_n_epochs, expected", [(1, 14), (None, 1)])
def test_validation_moves_to_the_end_only_where_it_counts_steps(monkeypatch, every_n_epochs, expected):
    # check_val_every_n_epoch=null (the budgeted experiments): one validation, at the budget's last step (56).
    # Epoch-based validation (4 batches an epoch): a val_check_batch of 56 was never reached inside an epoch and
    # the run did not validate at all; it is left alone (a validation at each of the 14 epochs' ends)
    clock = _Clock(1.0)
    monkeypatch.setattr(tb.time, "monotonic", clock)
    model = _TinyWithVal(clock)
    budget = TimeBudget(minutes=1.0, calibrate_steps=5, warmup_steps=2, min_steps=3, reserve=0.06)
    trainer = _trainer(
        budget,
        limit_val_batches=None,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=every_n_epochs,
        val_check_interval=None if every_n_epochs else 10_000,
    )
    trainer.fit(model)
    assert trainer.global_step == 56 and model.validations == expected


def test_with_gradient_accumulation_steps_are_timed_whole_and_validated_once_at_the_end(monkeypatch):
    # trainer.accumulate_grad_batches=3, each batch 1 s: 3 s a step (4 batches an epoch: steps of 3 and 1 batches).
    # TimeBudget timed from a micro-batch part-way into a step (a plan of more steps than fit: the run ended at the
    # hard stop) and set the validation interval, which Lightning counts in batches, to the step count: it
    # validated every steps/3 steps and not at the end
    clock = _Clock(1.0)
    monkeypatch.setattr(tb.time, "monotonic", clock)
    model = _TinyWithVal(clock)
    steps_at_validation = []
    model.validation_step = lambda batch, batch_idx: steps_at_validation.append(model.trainer.global_step)
    budget = TimeBudget(minutes=1.0, calibrate_steps=4, warmup_steps=2, min_steps=3, recheck_fraction=None)
    trainer = _trainer(
        budget,
        limit_val_batches=None,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=None,
        val_check_interval=10_000,
        accumulate_grad_batches=3,
    )
    trainer.fit(model)
    assert budget.sec_per_step == pytest.approx(2.0)  # an epoch's 4 batches make 2 steps
    assert clock.t <= 60 * (1 - 0.06) + 3 and not budget._hard_stopped
    assert steps_at_validation == [trainer.global_step] == [budget.planned_steps]


def test_under_ddp_every_rank_follows_rank_zeros_plan(monkeypatch):
    # This process plays rank 1 of 2 on a clock 3x slower than rank 0's. Planning from its own clock it stopped
    # at its own step count (a hard stop or a plan a step apart from rank 0's left the other rank waiting for its
    # gradients forever) and re-fitted its own schedule (ranks at different learning rates). Now it takes rank 0's
    # plan: 40 steps from step 7 on, and rank 0's schedule.
    clock = _Clock(3.0)
    monkeypatch.setattr(tb.time, "monotonic", clock)
    monkeypatch.setattr(L.Trainer, "world_size", property(lambda self: 2))
    monkeypatch.setattr(L.Trainer, "global_rank", property(lambda self: 1))
    model = _Tiny(clock)
    budget = TimeBudget(minutes=1.0, calibrate_steps=5, warmup_steps=2, min_steps=3, reserve=0.06)
    trainer = _trainer(budget)
    sent = []

    def broadcast(obj, src=0):  # what rank 0 sends: (planned steps, in tail, rechecks done, s/step, hard stop)
        if not isinstance(obj, tuple):  # Lightning's own broadcasts (its log dir)
            return obj
        sent.append(obj)
        return (40 if trainer.global_step >= 7 else None, False, 0, 1.0, False)

    monkeypatch.setattr(trainer.strategy, "broadcast", broadcast)
    trainer.fit(model)
    assert trainer.global_step == 40 and budget.planned_steps == 40 and len(sent) == 40
    assert trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0].total_steps == 40
    assert model.lrs[-1] == pytest.approx(WarmupCosine(2, 40, 0.1)(39))


@pytest.mark.parametrize("world", [1, 2])
def test_a_restored_plan_is_not_followed(monkeypatch, world):
    # resumed (alone, or rank 0 of 2): the checkpoint's plan (5 steps) is the earlier run's record. Under DDP it was
    # followed at once, cutting the run to 5 steps before this run's first measure (56 steps at 1 s/step); and
    # reaching it before that measure counted as "planned steps done early", so the run went on at the final
    # learning rate, its schedule never fitted
    clock = _Clock(1.0)
    monkeypatch.setattr(tb.time, "monotonic", clock)
    monkeypatch.setattr(L.Trainer, "world_size", property(lambda self: world))
    monkeypatch.setattr(L.Trainer, "global_rank", property(lambda self: 0))
    budget = TimeBudget(minutes=1.0, calibrate_steps=5, warmup_steps=2, min_steps=3, reserve=0.06)
    budget.load_state_dict({"planned_steps": 5, "sec_per_step": 9.0})
    trainer = _trainer(budget)
    monkeypatch.setattr(trainer.strategy, "broadcast", lambda obj, src=0: obj)  # rank 0 hears itself
    trainer.fit(_Tiny(clock))
    assert trainer.global_step == 56 and budget.planned_steps == 56
    assert not budget.in_tail and trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0].total_steps == 56


def test_an_interrupted_run_resumed_trains_the_rest_of_its_budget_on_its_schedule(monkeypatch, tmp_path):
    """1 s a step, a 1-minute budget: 56 steps straight. Interrupted at step 30 (Ctrl-C, preemption) and resumed from
    its checkpoint, the run got a fresh full minute: 30 + 56 steps, its cosine re-fitted to 86 and the learning rate
    back up from 0.42 to 0.74 of its peak. The seconds used travel in the checkpoint (``used_s``): the resumed leg
    trains the remaining 26 steps, its schedule that of the straight run. A run whose budget is spent trains nothing."""
    _, straight, _ = _fit(monkeypatch, 1.0, 1.0, reserve=0.06)

    class _StoppedAt30(_Tiny):
        def on_train_batch_end(self, *args):
            if self.trainer.global_step == 30:
                self.trainer.should_stop = True

    clock = _Clock(1.0)
    monkeypatch.setattr(tb.time, "monotonic", clock)
    first = _StoppedAt30(clock)
    budget = TimeBudget(minutes=1.0, calibrate_steps=5, warmup_steps=2, min_steps=3, reserve=0.06)
    trainer = _trainer(budget)
    trainer.fit(first)
    assert trainer.global_step == 30
    trainer.save_checkpoint(tmp_path / "stopped.ckpt")
    assert torch.load(tmp_path / "stopped.ckpt", weights_only=True)["callbacks"]["TimeBudget"]["used_s"] == 30.0

    clock.t += 1000.0  # another process, another day: the monotonic clock restarted elsewhere
    resumed = _Tiny(clock)
    budget = TimeBudget(minutes=1.0, calibrate_steps=5, warmup_steps=2, min_steps=3, reserve=0.06)
    trainer = _trainer(budget)
    trainer.fit(resumed, ckpt_path=tmp_path / "stopped.ckpt")
    assert trainer.global_step == 56 and budget.planned_steps == 56
    assert trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0].total_steps == 56
    torch.testing.assert_close(first.lrs + resumed.lrs, straight.lrs)
    trainer.save_checkpoint(tmp_path / "done.ckpt")

    spent = _Tiny(clock)
    trainer = _trainer(TimeBudget(minutes=1.0, calibrate_steps=5, warmup_steps=2, min_steps=3, reserve=0.06))
    trainer.fit(spent, ckpt_path=tmp_path / "done.ckpt")
    assert trainer.global_step == 56 and not spent.lrs


@pytest.mark.parametrize(
    "bad",
    [
        {"minutes": float("nan")},  # planned nothing, never stopped
        {"minutes": float("inf")},
        {"reserve": 1.0},  # no step fits: min_steps only
        {"reserve": -0.1},
        {"hard_stop": 0.5},  # stopped at half the budget, the schedule cut part-way
        {"hard_stop": float("nan")},  # never stopped
        {"min_steps": -3},
        {"min_steps": 2.5},  # int() took 2
        {"calibrate_steps": 2.5},
        {"recheck_fraction": [0.4, "x"]},
    ],
)
def test_every_budget_option_is_checked_with_its_fix(bad):
    from zoo.errors import ConfigError

    kw = {"minutes": 1.0, **bad}
    key = next(iter(bad))
    with pytest.raises(ConfigError, match=rf"callbacks\.time_budget\.{key}=.*fix: callbacks\.time_budget\.{key}="):
        TimeBudget(**kw)


def test_a_sample_grid_every_0_epochs_is_refused():
    from zoo.callbacks import SampleGridCallback
    from zoo.errors import ConfigError

    for bad in (0, -2, 1.5):
        with pytest.raises(ConfigError, match=r"every_n_epochs.*fix: callbacks\.sample_grid\.every_n_epochs=1"):
            SampleGridCallback(every_n_epochs=bad)
    assert SampleGridCallback(every_n_epochs=3).every_n_epochs == 3


def test_the_epochs_bound_the_plan_and_the_schedule(monkeypatch):
    """A run bounded by epochs (trainer/default.yaml's max_epochs=10, max_steps=-1): 56 steps fit the budget but two
    epochs of 8 batches are 16 steps. The cosine was fitted to 56 and the run ended at step 16 near its peak learning
    rate; now the plan and the schedule are 16 steps and the last step runs near min_ratio."""
    clock = _Clock(1.0)
    monkeypatch.setattr(tb.time, "monotonic", clock)
    model = _Tiny(clock)
    budget = TimeBudget(minutes=1.0, calibrate_steps=5, warmup_steps=2, min_steps=3)
    trainer = L.Trainer(
        max_steps=-1,
        max_epochs=2,
        limit_train_batches=8,
        limit_val_batches=0,
        callbacks=[budget],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    trainer.fit(model)
    fn = trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    assert trainer.global_step == 16 and budget.planned_steps == 16 and fn.total_steps == 16
    assert model.lrs[-1] == pytest.approx(WarmupCosine(2, 16, 0.1)(15)) and model.lrs[-1] < 0.12
