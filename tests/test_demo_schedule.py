"""make demo's Schedule: training budgets are the nominal shares of the time left before the target, after the
predicted fixed-work stages, so a slower CPU trains less instead of overrunning."""

import json
import os
import sys
import time
from pathlib import Path

import pytest

from zoo import demo


@pytest.fixture
def stages():
    return [s for s in demo.training_stages() if s.minutes is not None]


def _schedule(monkeypatch, stages, minutes: float, used_s: float, native: str) -> "demo.Schedule":
    monkeypatch.setenv("ZOO_FORCE_NATIVE_BF16", native)
    monkeypatch.setenv("DEMO_MINUTES", str(minutes))
    monkeypatch.setenv("DEMO_START", str(time.time() - used_s))
    return demo.Schedule(stages)


def test_budgets_fill_the_time_left_in_nominal_shares(monkeypatch, stages):
    sched = _schedule(monkeypatch, stages, minutes=30, used_s=180, native="1")  # 3 min of set-up already spent
    assert sched.factor == 1.0
    nominal = {s.name: s.minutes for s in stages}
    left = 30 * 60 - 180 - sched.MARGIN_S - sum(demo.FIXED_S.values()) - demo.STARTUP_S * len(stages)
    first = stages[0]
    got = sched.budget_minutes(first)
    want = left * nominal[first.name] / sum(nominal.values()) / 60
    assert got == pytest.approx(want, abs=0.05)  # (seconds pass while torch imports)
    # the stages' budgets, if each took exactly its budget, end at the deadline
    total = 0.0
    for st in stages:
        b = sched.budget_minutes(st)
        total += b * 60 + demo.STARTUP_S
        sched.deadline -= b * 60 + demo.STARTUP_S  # as if that much wall time passed
        sched.done.add(st.name)
    # every budget was computed against the same remaining time, so the sum is that time
    assert total == pytest.approx(left + demo.STARTUP_S * len(stages), abs=20)


def test_a_slower_cpu_gets_shorter_training(monkeypatch, stages):
    fast = _schedule(monkeypatch, stages, 30, 180, native="1").budget_minutes(stages[0])
    slow_sched = _schedule(monkeypatch, stages, 30, 180, native="0")
    # without native bf16 the judge is expected to take longer, and the inference stages a little longer
    assert slow_sched.judge_s > demo.JUDGE_S[True] and slow_sched.factor == 1.0
    assert slow_sched.fixed_left() == pytest.approx(sum(demo.FIXED_S.values()) * demo.FIXED_NO_BF16)
    slow = slow_sched.budget_minutes(stages[0])
    assert slow < fast
    # a judge 1.5x slower than the reference machine's at this precision: the fixed stages are predicted 1.5x longer
    slow_sched.measured("judge", slow_sched.judge_s * 1.5, slow_sched.judge_s)
    assert slow_sched.factor == pytest.approx(1.5)
    assert slow_sched.expect("eval") == pytest.approx(demo.FIXED_S["eval"] * 1.5 * demo.FIXED_NO_BF16)
    assert slow_sched.budget_minutes(stages[0]) < slow


def test_no_time_left_warns_and_keeps_a_floor(monkeypatch, stages, capsys):
    sched = _schedule(monkeypatch, stages, minutes=30, used_s=29 * 60, native="1")
    got = sched.budget_minutes(stages[0])
    assert got == pytest.approx(sched.MIN_SHARE * stages[0].minutes)
    assert "WARNING" in capsys.readouterr().out


def test_a_fast_cpu_is_capped(monkeypatch, stages):
    sched = _schedule(monkeypatch, stages, minutes=300, used_s=0, native="1")
    assert sched.budget_minutes(stages[0]) == pytest.approx(sched.MAX_SHARE * stages[0].minutes)


@pytest.mark.parametrize("native", ["0", "1"])
def test_clip_stage_halves_its_batch_without_native_bf16(monkeypatch, native):
    """fp32 buys ~60 CLIP steps of 128 in the budget, too few to leave chance; 64 doubles the steps (demo.py)."""
    monkeypatch.setenv("ZOO_FORCE_NATIVE_BF16", native)
    (clip,) = [s for s in demo.training_stages() if s.name == "clip"]
    assert clip.overrides[0] == "experiment=demo/clip"
    assert ("data.batch_size=64" in clip.overrides) == (native == "0")


def test_full_expectations_scale_with_the_judge():
    """make demo FULL=1 prints each stage's expected time: the reference machine's, times the judge's measured speed;
    a budgeted stage takes its budget whatever the CPU."""
    pace = demo.FullPace()
    stages = [demo.Stage("dalle", [], expect_s=demo.FULL_S["dalle"]), demo.Stage("prior", [], minutes=4.5)]
    budgeted = 4.5 * demo.SCALE * 60 + demo.STARTUP_S
    before = pace.total(stages)
    assert pace.expect("dalle") == demo.FULL_S["dalle"]
    pace.measured(2 * demo.FULL_S["judge"])  # a CPU half as fast
    assert pace.expect("dalle") == pytest.approx(2 * demo.FULL_S["dalle"])
    assert pace.total(stages) - budgeted == pytest.approx(2 * (before - budgeted))  # only the fixed work doubles
    assert before - budgeted > 3600  # the fixed work is hours: the budget is the smaller part
    pace.measured(1e6)  # an absurd judge time (a suspended laptop) is clamped
    assert pace.factor == 6.0


@pytest.mark.parametrize("var", ["ZOO_LOG_DIR", "ZOO_ROOT"])
def test_demo_writes_where_the_configs_read_it(monkeypatch, tmp_path, var):
    """With ZOO_LOG_DIR set (the README's shared-storage setting) make demo wrote ./logs/demo while zoo-eval's
    generators, the leaderboard experiments and experiments/leaderboard/run.sh read $ZOO_LOG_DIR/demo: after a
    finished make demo, `make leaderboard` said "$ZOO_LOG_DIR/demo/clip/... is missing (fix: run make demo first)".
    With ZOO_ROOT set (conf/paths: the root of logs/ and .zoo_cache/; the experiments READMEs' runs set it) the same,
    and the demo trained its judge in ./.zoo_cache where its eval stage (zoo-eval's judge.dir) did not look."""
    import importlib
    from pathlib import Path

    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    for name in ("ZOO_LOG_DIR", "ZOO_ROOT", "ZOO_CACHE_DIR", "FULL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(var, str(tmp_path / "shared"))
    importlib.reload(demo)
    try:
        GlobalHydra.instance().clear()
        with initialize_config_module(config_module="conf.eval", version_base="1.3"):
            cfg = compose("eval", overrides=["generator=dalle"])
        assert Path(cfg.generator.dalle_ckpt) == demo.ckpt("dalle").absolute()
        assert Path(cfg.clip.checkpoint) == demo.ckpt("clip").absolute()
        assert Path(cfg.judge.dir) == demo.judge_dir().absolute()
        with initialize_config_module(config_module="conf", version_base="1.3"):
            train = compose("train", overrides=["experiment=demo/dalle"])
        assert Path(train.model.image_tokenizer_ckpt) == demo.ckpt("tokenizer").absolute()
    finally:
        GlobalHydra.instance().clear()
        monkeypatch.delenv(var)
        importlib.reload(demo)


def test_the_demo_state_files_survive_a_kill_mid_write_and_a_damaged_one_does_not_stop_the_demo(
    monkeypatch, tmp_path, capsys
):
    """stage_legs.json / stage_times.json were rewritten in place: a kill inside the write left a truncated file, and
    the next make demo stopped on its JSONDecodeError. A failed write now keeps the previous record whole; a damaged
    file (from an older version) is set aside with a warning and the record starts afresh."""
    import zoo.checkpoint

    monkeypatch.setattr(demo, "DEMO_DIR", tmp_path)
    demo.record_leg("dalle", 12.0)
    assert demo.earlier_legs("dalle") == [12.0]

    def killed(fd):
        raise KeyboardInterrupt  # the kill arrives while the new contents are on their way to disk

    monkeypatch.setattr(zoo.checkpoint.os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        demo.record_leg("dalle", 30.0)
    monkeypatch.undo()
    monkeypatch.setattr(demo, "DEMO_DIR", tmp_path)
    assert demo.earlier_legs("dalle") == [12.0]  # the previous record, whole

    demo.legs_file().write_text('{"dalle": [12.0, 3')  # what a kill mid-write left before
    assert demo.earlier_legs("dalle") == []
    assert "is damaged" in capsys.readouterr().out and (tmp_path / "stage_legs.json.damaged").is_file()
    demo.record_leg("dalle", 5.0)
    assert demo.earlier_legs("dalle") == [5.0]


def test_the_summary_of_a_resumed_demo_holds_every_stages_budget_and_the_set_up(monkeypatch, tmp_path):
    """summary.json's training budgets (the README's make demo table) were those of the stages this run trained: a
    demo resumed after an interruption reported none for the stages it reused. Each reused stage's budget is the one
    its own zoo-train ran with; the set-up before the demo (make's venv, DEMO_START) is kept too."""
    monkeypatch.setattr(demo, "DEMO_DIR", tmp_path / "demo")
    monkeypatch.delenv("DEMO_FRESH", raising=False)
    monkeypatch.delenv("FULL", raising=False)
    monkeypatch.setenv("DEMO_START", str(time.time() - 120))
    for split in ("train", "val", "test"):  # (before the prior that read them)
        demo.features(split).parent.mkdir(parents=True, exist_ok=True)
        demo.features(split).write_bytes(b"x")
        os.utime(demo.features(split), (time.time() - 60, time.time() - 60))
    given = {"tokenizer": 3.71, "clip": 3.18, "dalle": 8.52, "prior": 2.13, "decoder": 6.79}
    for name, minutes in given.items():
        run = demo.DEMO_DIR / name
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(
            f"- experiment=demo/{name}\n- callbacks.time_budget.minutes={minutes:g}\n"
        )
        (run / "metrics.json").write_text('{"global_step": 10}')

    def ran(name, *args):
        return {"run_dir": str(demo.DEMO_DIR / name), "metrics": {}, "last_grid": None, "results": "results.md"}

    monkeypatch.setattr(demo, "run_judge", lambda timings, schedule: None)
    monkeypatch.setattr(demo, "run_child", lambda cmd: pytest.fail(f"a stage ran: {cmd}"))
    monkeypatch.setattr(demo, "run_sample", lambda name, *a: ran(name))
    monkeypatch.setattr(demo, "run_manipulations", lambda *a: ran("unclip_manipulations"))
    monkeypatch.setattr(demo, "run_eval", lambda *a: ran("eval"))
    demo.main()
    summary = json.loads((demo.DEMO_DIR / "summary.json").read_text())
    assert summary["schedule"]["training_budgets_min"] == given
    assert 115 <= summary["schedule"]["setup_s"] < 150


@pytest.mark.parametrize(
    "name, value", [("DEMO_FRESH", "true"), ("FULL", "yes"), ("DEMO_MINUTES", "45min"), ("DEMO_BUDGET_SCALE", "0")]
)
def test_a_knob_make_demo_does_not_understand_is_an_error_naming_it(monkeypatch, tmp_path, name, value):
    """DEMO_FRESH=true reused every finished stage and FULL=yes ran the 30-minute demo (both read as off without a
    word); DEMO_MINUTES=45min was float()'s ValueError traceback; DEMO_BUDGET_SCALE=0 gave every stage 0 minutes."""
    import importlib

    monkeypatch.setenv(name, value)
    try:
        with pytest.raises(SystemExit, match=f"{name}={value}.*fix: {name}="):
            importlib.reload(demo)  # FULL, DEMO_BUDGET_SCALE: read as the demo starts
            monkeypatch.setattr(demo, "DEMO_DIR", tmp_path / "demo")
            monkeypatch.setattr(demo, "run_judge", lambda *a: pytest.fail("the judge, the first stage, started"))
            demo.main()  # DEMO_FRESH, DEMO_MINUTES: before any stage
    finally:
        monkeypatch.delenv(name)
        importlib.reload(demo)


def test_each_command_the_demo_prints_runs_from_the_users_shell(monkeypatch, capsys, tmp_path):
    """make demo runs in .venv without activating it; it printed each stage's command as `zoo-train ...` / `python
    ...`, which the user's shell (no venv on PATH) answered with 'command not found' or another Python."""
    import shlex
    import shutil

    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the user's shell after make demo: no .venv/bin
    for cmd in (["zoo-train", "experiment=demo/tokenizer"], ["python", "-c", "print(1)"], ["zoo-eval", "a=b"]):
        demo.announce("stage", cmd, 1.0)
        printed = capsys.readouterr().out.split(": ", 1)[1].strip()
        exe, *args = shlex.split(printed)
        assert args == cmd[1:]
        found = shutil.which(exe)
        assert found and os.path.samefile(found, Path(sys.executable).parent / cmd[0]), printed
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:/usr/bin:/bin")  # an activated venv: as it is
    demo.announce("stage", ["zoo-train", "x=1"], 1.0)
    assert capsys.readouterr().out.rstrip().endswith(": zoo-train x=1")


def test_main_puts_the_callers_sigterm_handler_back(monkeypatch, tmp_path):
    """main() set its SIGTERM handler for good: a process going on after it (the test suite) kept it, so Lightning,
    which installs its own only where none is set, left a later in-process zoo-train's SIGTERM to the demo's handler
    (exit 130 instead of 143, no SIGTERM path): tests/test_reliability.py's SIGTERM tests failed after this file."""
    import signal

    monkeypatch.setenv("DEMO_MINUTES", "45min")  # main() stops at its knob check, before any stage
    monkeypatch.setattr(demo, "DEMO_DIR", tmp_path / "demo")
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit, match="DEMO_MINUTES"):
        demo.main()
    assert signal.getsignal(signal.SIGTERM) is before
