"""An interrupted ``make demo FULL=1`` (hours on a CPU) resumes its fixed-step training stage from the last
checkpoint, counts the stage's time over all its runs, and lets a training child save before the demo exits."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from zoo import demo


@pytest.fixture
def demo_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "DEMO_DIR", tmp_path / "demo_full")
    monkeypatch.delenv("DEMO_FRESH", raising=False)
    return demo.DEMO_DIR


def _with_checkpoint(run_dir: Path, name: str = "last.ckpt") -> None:
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / name).write_bytes(b"x")


def _interrupting(calls: list):
    """A run_child stand-in that records the command, then is interrupted (Ctrl-C) as the stage runs."""

    def run(cmd):
        calls.append(cmd)
        raise KeyboardInterrupt

    return run


def test_only_a_fixed_step_stage_with_a_checkpoint_resumes(demo_dir, monkeypatch):
    fixed = demo.Stage("dalle", ["experiment=demo/full/dalle"], expect_s=60)
    budgeted = demo.Stage("prior", ["experiment=demo/prior"], minutes=1.5)
    assert not demo.resumable(fixed, demo_dir / "dalle")  # nothing saved yet
    _with_checkpoint(demo_dir / "dalle", "interrupted.ckpt")
    _with_checkpoint(demo_dir / "prior")
    assert demo.resumable(fixed, demo_dir / "dalle")
    assert not demo.resumable(budgeted, demo_dir / "prior")  # its budget is re-fitted from scratch
    monkeypatch.setenv("DEMO_FRESH", "1")
    assert not demo.resumable(fixed, demo_dir / "dalle")


def test_run_train_passes_ckpt_path_last_and_sums_the_legs(demo_dir, monkeypatch, capsys):
    stage = demo.Stage("tokenizer", ["experiment=demo/full/tokenizer"], expect_s=60)
    run_dir = demo_dir / "tokenizer"
    _with_checkpoint(run_dir)
    calls = []
    monkeypatch.setattr(demo, "run_child", _interrupting(calls))
    with pytest.raises(KeyboardInterrupt):
        demo.run_train(stage, {})
    assert "ckpt_path=last" in calls[0]
    assert len(demo.earlier_legs("tokenizer")) == 1  # the interrupted leg is kept

    demo.record_leg("tokenizer", 100.0)  # a second interrupted leg of 100 s
    before = sum(demo.earlier_legs("tokenizer"))
    monkeypatch.setattr(demo, "run_child", lambda cmd: (calls.append(cmd), time.sleep(0.05)))
    timings = {}
    demo.run_train(stage, timings)
    assert "ckpt_path=last" in calls[-1]
    assert before + 0.05 <= timings["tokenizer"] < before + 5
    assert demo.earlier_legs("tokenizer") == []  # counted once, then cleared
    assert "interrupted one(s)" in capsys.readouterr().out


def test_a_budgeted_stage_records_no_leg_and_starts_over(demo_dir, monkeypatch):
    stage = demo.Stage("decoder", ["experiment=demo/decoder"], minutes=4.5)
    _with_checkpoint(demo_dir / "decoder")
    calls = []
    monkeypatch.setattr(demo, "run_child", _interrupting(calls))
    with pytest.raises(KeyboardInterrupt):
        demo.run_train(stage, {})
    assert not any(a.startswith("ckpt_path=") for a in calls[0])
    assert demo.earlier_legs("decoder") == []
    # zoo-train refuses a run without ckpt_path beside an earlier run's checkpoints (it would resume from them):
    # starting over removes the interrupted run's directory first (the new run's settings record is all it holds)
    assert [p.name for p in (demo_dir / "decoder").iterdir()] == [demo.SETTINGS_FILE]


def test_demo_fresh_starts_a_fixed_step_stage_over_in_an_emptied_directory(demo_dir, monkeypatch):
    stage = demo.Stage("tokenizer", ["experiment=demo/full/tokenizer"], expect_s=60)
    _with_checkpoint(demo_dir / "tokenizer", "interrupted.ckpt")
    monkeypatch.setenv("DEMO_FRESH", "1")
    calls = []
    monkeypatch.setattr(demo, "run_child", _interrupting(calls))
    with pytest.raises(KeyboardInterrupt):
        demo.run_train(stage, {})
    assert not any(a.startswith("ckpt_path=") for a in calls[0])
    assert not (demo_dir / "tokenizer" / "checkpoints").exists()


def test_a_stage_started_over_does_not_count_the_abandoned_runs_time(demo_dir, monkeypatch):
    """An interrupted fixed-step stage's legs (stage_legs.json) were added to the time of a run that started the
    stage over (DEMO_FRESH=1, or an input rebuilt since): the stage's time held a run it did not continue."""
    stage = demo.Stage("tokenizer", ["experiment=demo/full/tokenizer"], expect_s=60)
    _with_checkpoint(demo_dir / "tokenizer")
    demo.record_leg("tokenizer", 100.0)
    monkeypatch.setenv("DEMO_FRESH", "1")
    monkeypatch.setattr(demo, "run_child", lambda cmd: None)
    timings = {}
    demo.run_train(stage, timings)
    assert timings["tokenizer"] < 50 and demo.earlier_legs("tokenizer") == []


@pytest.mark.parametrize("why", ["DEMO_FRESH=1", "its tokenizer rebuilt"])
def test_an_interrupted_full_stage_started_over_leaves_no_checkpoint_behind(demo_dir, monkeypatch, why):
    """make demo FULL=1 interrupted in a fixed-step stage leaves its legs (stage_legs.json) and its checkpoints; a
    later run that starts the stage over (DEMO_FRESH=1, or an input rebuilt since) cleared the legs but kept the
    checkpoints, and zoo-train refused to start beside them ("holds an earlier run's checkpoints ... fix:
    ckpt_path=last", which would have resumed the stale run): that make demo stopped there."""
    stage = demo.Stage("dalle", ["experiment=demo/full/dalle"], expect_s=60)
    _with_checkpoint(demo_dir / "dalle", "interrupted.ckpt")
    demo.record_leg("dalle", 100.0)
    if why == "DEMO_FRESH=1":
        monkeypatch.setenv("DEMO_FRESH", "1")
    else:
        old = time.time() - 3600
        os.utime(demo_dir / "dalle" / "checkpoints" / "interrupted.ckpt", (old, old))
        _with_checkpoint(demo_dir / "tokenizer")
    seen = []

    def run_child(cmd):  # what zoo-train's check_no_earlier_run looks at, when the child starts
        checkpoints = demo_dir / "dalle" / "checkpoints"
        seen.append((cmd, sorted(p.name for p in checkpoints.glob("*")) if checkpoints.is_dir() else []))

    monkeypatch.setattr(demo, "run_child", run_child)
    demo.run_train(stage, {})
    ((cmd, left),) = seen
    assert not any(a.startswith("ckpt_path=") for a in cmd) and left == []
    assert demo.earlier_legs("dalle") == []


def test_sigterm_to_the_demo_lets_the_child_save_first(tmp_path):
    """SIGTERM to the demo process alone: run_child passes it on and waits, so the child's own SIGTERM handler
    (zoo-train's: save interrupted.ckpt) runs before the demo exits with 128 + 15."""
    child = tmp_path / "child.py"
    child.write_text(
        textwrap.dedent(
            f"""
            import signal, sys, time
            def save(signum, frame):
                time.sleep(0.5)  # saving takes a moment
                open({str(tmp_path / "saved")!r}, "w").write("state")
                sys.exit(143)
            signal.signal(signal.SIGTERM, save)
            open({str(tmp_path / "started")!r}, "w").write("")
            time.sleep(60)
            """
        )
    )
    parent = (
        "import signal, sys; from zoo import demo; "
        "signal.signal(signal.SIGTERM, demo._exit_on_sigterm); "
        f"demo.run_child([sys.executable, {str(child)!r}])"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], cwd=Path(demo.__file__).parents[1])
    deadline = time.time() + 60
    while not (tmp_path / "started").exists():
        assert time.time() < deadline and proc.poll() is None, "the child never started"
        time.sleep(0.05)
    t0 = time.time()
    os.kill(proc.pid, signal.SIGTERM)  # the demo only, not its process group
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert (tmp_path / "saved").read_text() == "state"  # the child saved before the demo went
    assert time.time() - t0 < 30


def test_finished_stage_times_are_kept_across_runs(demo_dir):
    """A resumed demo reuses finished stages; their times stay on file so its summary can give the whole demo's."""
    demo.finish("judge", time.perf_counter() - 2.0, {})
    demo.finish("tokenizer", time.perf_counter() - 3.0, {})
    times = json.loads(demo.times_file().read_text())
    assert set(times) == {"judge", "tokenizer"}
    assert 2.0 <= times["judge"] < 10 and 3.0 <= times["tokenizer"] < 11


def test_starting_over_never_deletes_the_directory_of_a_running_zoo_train(demo_dir, monkeypatch):
    """A second make demo starting a budgeted stage over would remove the stage directory of the first one's running
    zoo-train (which holds the directory's lock): it stops with an error instead and touches nothing."""
    from zoo.train import lock_run_dir

    stage = demo.Stage("decoder", ["experiment=demo/decoder"], minutes=4.5)
    run_dir = demo_dir / "decoder"
    _with_checkpoint(run_dir)
    calls = []

    def run_child(cmd):  # not KeyboardInterrupt: that would end the test session, not fail this test
        calls.append(cmd)
        raise RuntimeError("the stage was started")

    monkeypatch.setattr(demo, "run_child", run_child)
    holder = lock_run_dir(run_dir)  # the running one
    try:
        with pytest.raises(SystemExit, match="in use by a running zoo-train"):
            demo.run_train(stage, {})
        assert (run_dir / "checkpoints" / "last.ckpt").is_file() and calls == []
    finally:
        holder.close()


def test_a_stage_built_from_an_earlier_clip_or_tokenizer_is_redone(demo_dir, monkeypatch, capsys):
    """A stage was reused whenever its directory held metrics.json, also when its input had been rebuilt since
    (logs/demo/clip deleted, or a DEMO_FRESH=1 run interrupted after its CLIP stage): the embeddings of the earlier
    CLIP, the prior and decoder trained on them, and the unCLIP samples stage failed on their CLIP fingerprints
    after everything else had run. A stage older than one of its inputs is redone (make's rule), also one that
    would resume from a checkpoint of before the rebuild."""
    for name in ("tokenizer", "clip", "dalle", "prior", "decoder"):
        _with_checkpoint(demo_dir / name)
        (demo_dir / name / "metrics.json").write_text("{}")
    (demo_dir / "embed").mkdir()
    for split in ("train", "val", "test"):
        demo.features(split).write_bytes(b"x")
    old = time.time() - 3600
    for p in demo_dir.rglob("*"):
        os.utime(p, (old, old))
    demo.ckpt("clip").write_bytes(b"the CLIP trained again")
    calls = []
    monkeypatch.setattr(demo, "run_child", calls.append)

    demo.run_embed({}, 1.0)
    assert [c[2] for c in calls] == ["zoo.embed"] * 3
    stages = {s.name: s for s in demo.training_stages()}
    demo.run_train(stages["dalle"], {})  # its tokenizer is older than it: reused
    assert len(calls) == 3
    demo.run_train(stages["decoder"], {})
    assert calls[-1][2] == "zoo.train" and "redoing it" in capsys.readouterr().out
    for split in ("train", "val", "test"):  # what the zoo-embed runs above wrote
        demo.features(split).write_bytes(b"new embeddings")
    demo.run_train(stages["prior"], {})
    assert len(calls) == 5 and not any(a.startswith("ckpt_path=") for a in calls[-1])

    fixed = demo.Stage("dalle", ["experiment=demo/full/dalle"], expect_s=60)  # FULL=1: would resume
    (demo_dir / "dalle" / "metrics.json").unlink()
    assert demo.resumable(fixed, demo_dir / "dalle")
    demo.ckpt("tokenizer").write_bytes(b"the tokenizer trained again")
    assert not demo.resumable(fixed, demo_dir / "dalle")


def test_an_embed_split_interrupted_before_its_clip_changed_starts_over(demo_dir, monkeypatch):
    """zoo-embed keeps an interrupted split's rows in <out>.partial/ and resumes from them. When the demo CLIP was
    retrained since, make demo redid the split under its new settings record, but left that folder: zoo-embed then
    refused to run ("holds the rows of an interrupted zoo-embed run with other arguments") until the user deleted
    it. The rows of a run whose record differs are removed first; with the record unchanged they are kept."""
    from zoo.feature_rows import work_dir_of

    demo.ckpt("clip").parent.mkdir(parents=True)
    demo.ckpt("clip").write_bytes(b"the demo CLIP")
    calls = []
    monkeypatch.setattr(demo, "run_child", _interrupting(calls))
    with pytest.raises(KeyboardInterrupt):
        demo.run_embed({}, 1.0)  # the train split's record is written, then its zoo-embed is interrupted
    work = work_dir_of(demo.features("train"))
    work.mkdir(parents=True)
    (work / "rows_000000000000.pt").write_bytes(b"the first 4,096 rows")
    with pytest.raises(KeyboardInterrupt):
        demo.run_embed({}, 1.0)  # the same settings: zoo-embed resumes from its rows
    assert (work / "rows_000000000000.pt").is_file() and len(calls) == 2
    demo.ckpt("clip").write_bytes(b"the demo CLIP, trained again")
    with pytest.raises(KeyboardInterrupt):
        demo.run_embed({}, 1.0)
    assert not work.exists() and len(calls) == 3 and calls[-1][2] == "zoo.embed"


@pytest.mark.parametrize("problem", ["not writable", "full"])
def test_a_logs_dir_the_demo_cannot_fill_is_an_error_before_any_stage(tmp_path, monkeypatch, problem):
    """A read-only or full logs dir was a Python traceback only after the judge (minutes) or a stage had trained:
    the first state write, zoo-train failing to make its run dir, or torch's 'unexpected pos' RuntimeError when a
    stage saved its checkpoint on a full disk. Now an error naming the dir, the problem and the fix, first."""
    import shutil

    if problem == "not writable":  # (the tests may run as root, whom permissions do not stop: a file in the way)
        (tmp_path / "logs").write_text("")
        monkeypatch.setattr(demo, "DEMO_DIR", tmp_path / "logs" / "demo")
    else:
        monkeypatch.setattr(demo, "DEMO_DIR", tmp_path / "demo")
        monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 * 2**30, 10 * 2**30, 2**20))
    monkeypatch.delenv("FULL", raising=False)
    monkeypatch.setenv("DEMO_START", str(time.time()))

    def stage_started(*args, **kwargs):
        raise AssertionError("a stage started")

    monkeypatch.setattr(demo, "run_judge", stage_started)
    monkeypatch.setattr(demo, "run_train", stage_started)
    with pytest.raises(SystemExit) as e:
        demo.main()
    msg = str(e.value)
    assert str(demo.DEMO_DIR) in msg and "fix:" in msg and "ZOO_LOG_DIR=" in msg
    assert ("MB free" in msg) == (problem == "full")
