"""make demo reuses a finished stage only while the settings it was built from are the same: each stage keeps a
record of them (its composed config, command, inputs' contents, the CPU's precision, DEMO_BUDGET_SCALE, the shapes
world) beside its outputs. It was file times alone: an edited conf/experiment/demo/<stage>.yaml reused the old stage
and reported its figures as the new settings'."""

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from zoo import demo


@pytest.fixture
def demo_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "DEMO_DIR", tmp_path / "demo")
    for name in ("DEMO_FRESH", "FULL", "DEMO_MINUTES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DEMO_START", str(time.time()))
    return demo.DEMO_DIR


@pytest.fixture
def conf(tmp_path, monkeypatch):
    """A copy of conf/ that the demo composes its stages' configs from, for the tests to edit (the checkout's own
    conf/ is shared)."""
    copy = tmp_path / "pkg" / "conf"
    shutil.copytree(Path(demo.__file__).parents[1] / "conf", copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.syspath_prepend(str(copy.parent))

    def conf_modules():
        return {m: sys.modules.pop(m) for m in list(sys.modules) if m == "conf" or m.startswith("conf.")}

    checkout = conf_modules()  # the copy is imported as `conf` from here on
    yield copy
    conf_modules()
    sys.modules.update(checkout)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} in {path}"
    path.write_text(text.replace(old, new))


class FakeChildren:
    """A run_child stand-in: each zoo-train writes a new checkpoint (other contents each time, as a real run's) and
    metrics.json, each zoo-embed its features file; ``interrupt_at`` is a stage that is interrupted (Ctrl-C)."""

    def __init__(self, interrupt_at=None):
        self.ran, self.commands, self.interrupt_at = [], {}, interrupt_at

    def __call__(self, cmd):
        args = dict(a.split("=", 1) for a in cmd[3:] if "=" in a)
        if cmd[2] == "zoo.embed":
            self.ran.append("embed")
            Path(args["out"]).parent.mkdir(parents=True, exist_ok=True)
            Path(args["out"]).write_bytes(os.urandom(16))
            return
        assert cmd[2] == "zoo.train", cmd
        run_dir = Path(args["hydra.run.dir"])
        self.ran.append(run_dir.name)
        self.commands[run_dir.name] = cmd
        if run_dir.name == self.interrupt_at:
            raise KeyboardInterrupt
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run_dir / "checkpoints" / "last.ckpt").write_bytes(os.urandom(16))
        (run_dir / "metrics.json").write_text('{"global_step": 10}')


def _run_demo(monkeypatch, children: FakeChildren) -> list[str]:
    """make demo with its stages faked: what it trained / embedded, in order."""

    def ran(name, *args):
        return {"run_dir": str(demo.DEMO_DIR / name), "metrics": {}, "last_grid": None, "results": "results.md"}

    monkeypatch.setattr(demo, "run_judge", lambda timings, schedule: None)
    monkeypatch.setattr(demo, "run_child", children)
    monkeypatch.setattr(demo, "run_sample", lambda name, *a: ran(name))
    monkeypatch.setattr(demo, "run_manipulations", lambda *a: ran("unclip_manipulations"))
    monkeypatch.setattr(demo, "run_eval", lambda *a: ran("eval"))
    demo.main()
    return children.ran


ALL = ["tokenizer", "clip", "dalle", "embed", "embed", "embed", "prior", "decoder"]


@pytest.mark.parametrize(
    "stage, old, new, change, redone",
    [
        ("tokenizer", "n_res: 1", "n_res: 2", "model.net.n_res changed 1 -> 2", ["tokenizer", "dalle"]),
        ("prior", "lr: 0.001", "lr: 0.0005", "model.optimizer.lr changed 0.001 -> 0.0005", ["prior"]),
        (
            "clip",
            "warmup_steps: 10",
            "warmup_steps: 30",
            "model.scheduler.warmup_steps changed 10 -> 30",
            ["clip", "embed", "embed", "embed", "prior", "decoder"],
        ),
    ],
)
def test_an_edited_experiment_yaml_redoes_its_stage_and_the_stages_built_from_it(
    demo_dir, conf, monkeypatch, capsys, stage, old, new, change, redone
):
    assert _run_demo(monkeypatch, FakeChildren()) == ALL
    _edit(conf / "experiment" / "demo" / f"{stage}.yaml", old, new)
    capsys.readouterr()
    assert _run_demo(monkeypatch, FakeChildren()) == redone  # the stages before it and beside it: reused
    out = capsys.readouterr().out
    assert f"=== demo stage '{stage}': redoing it, {change} (experiment=demo/{stage})" in out
    if len(redone) > 1:  # the stages after it say which input changed
        assert f"its input {demo.ckpt(stage)} changed (redone since)" in out
    assert _run_demo(monkeypatch, FakeChildren()) == []  # unchanged since: all reused


def test_other_settings_of_the_same_command_redo_the_stage(demo_dir, monkeypatch, capsys):
    """The CPU's precision (trainer.precision=auto: another CPU picks another), DEMO_BUDGET_SCALE (0.1: a smoke run)
    and the shapes world's scenes (an edit of zoo/data/shapes.py) are part of a stage's settings too."""
    import zoo.data.shapes

    children = FakeChildren()
    monkeypatch.setattr(demo, "run_child", children)
    stage = demo.Stage("tokenizer", ["experiment=demo/tokenizer"], minutes=3)
    monkeypatch.setenv("ZOO_FORCE_NATIVE_BF16", "1")
    demo.run_train(stage, {})
    demo.run_train(stage, {})
    assert children.ran == ["tokenizer"]

    monkeypatch.setenv("ZOO_FORCE_NATIVE_BF16", "0")
    demo.run_train(stage, {})
    assert (
        "precision this CPU trains in (trainer.precision=auto) changed bf16-mixed -> 32-true" in capsys.readouterr().out
    )

    monkeypatch.setattr(demo, "SCALE", 0.1)
    demo.run_train(stage, {})
    assert "DEMO_BUDGET_SCALE changed 1.0 -> 0.1" in capsys.readouterr().out

    real = zoo.data.shapes.render_scene
    monkeypatch.setattr(zoo.data.shapes, "render_scene", lambda a, r=32: 255 - real(a, r))  # a changed renderer
    demo.world_fingerprint.cache_clear()
    try:
        demo.run_train(stage, {})
    finally:
        demo.world_fingerprint.cache_clear()
    assert "the shapes world's scenes (zoo/data/shapes.py) changed" in capsys.readouterr().out
    assert children.ran == ["tokenizer"] * 4


def test_an_interrupted_demo_resumes_and_reuses_the_stages_it_finished(demo_dir, monkeypatch, capsys):
    """The TimeBudget each stage gets is fitted to the time left before the deadline, so it differs on every run: it
    is not in the record, or an interrupted demo would reuse nothing."""
    first = FakeChildren(interrupt_at="dalle")
    with pytest.raises(KeyboardInterrupt):
        _run_demo(monkeypatch, first)
    assert first.ran == ["tokenizer", "clip", "dalle"]
    monkeypatch.setenv("DEMO_START", str(time.time() - 600))  # resumed later: less time left, smaller budgets
    second = FakeChildren()
    assert _run_demo(monkeypatch, second) == ["dalle", "embed", "embed", "embed", "prior", "decoder"]

    def budget(cmd):
        return next(a for a in cmd if a.startswith("callbacks.time_budget.minutes="))

    assert budget(first.commands["dalle"]) != budget(second.commands["dalle"])
    out = capsys.readouterr().out
    assert "'tokenizer': reusing" in out and "'clip': reusing" in out
    assert _run_demo(monkeypatch, FakeChildren()) == []


def test_a_stage_from_before_the_records_is_reused_with_a_warning_naming_it(demo_dir, monkeypatch, capsys):
    """Stages finished by a make demo from before the records are reused (by their inputs' file times, as then), with
    a warning at the stage and in the summary naming them and how to redo them: redoing them unasked could cost most
    of the 30 minutes, and whether their settings are still the configs' cannot be told."""
    assert _run_demo(monkeypatch, FakeChildren()) == ALL
    for name in ("prior", "decoder"):
        demo.settings_file(name).unlink()
    for split in ("train", "val", "test"):
        demo.settings_file("embed", split).unlink()
    capsys.readouterr()
    assert _run_demo(monkeypatch, FakeChildren()) == []
    out = capsys.readouterr().out
    assert out.count("WARNING:") == 5 and "has no record of the settings it was built from" in out
    assert f"DEMO_FRESH=1 make demo, or delete {demo_dir / 'prior'}" in out
    assert "reused without a settings record" in out
    summary = json.loads((demo_dir / "summary.json").read_text())
    assert summary["reused_without_settings_record"] == ["embed", "prior", "decoder"]
    # a record-less stage older than an input rebuilt since is redone, as before (make's rule): the CLIP's
    old = time.time() - 3600
    for p in demo_dir.rglob("*"):
        os.utime(p, (old, old))
    os.utime(demo.ckpt("clip"), None)
    assert _run_demo(monkeypatch, FakeChildren()) == ["embed", "embed", "embed", "prior", "decoder"]
    assert json.loads(demo.settings_file("decoder").read_text())["command"][0] == "experiment=demo/decoder"


def test_an_interrupted_full_stage_with_other_settings_starts_over(demo_dir, monkeypatch, capsys):
    """make demo FULL=1 resumes an interrupted fixed-step stage from its checkpoint, but not one whose record says
    it was trained with other settings: that would go on training the old run under the new settings' name."""
    stage = demo.Stage("dalle", ["experiment=demo/full/dalle"], expect_s=60)
    children = FakeChildren(interrupt_at="dalle")
    monkeypatch.setattr(demo, "run_child", children)
    with pytest.raises(KeyboardInterrupt):
        demo.run_train(stage, {})
    (demo_dir / "dalle" / "checkpoints").mkdir(parents=True)
    (demo_dir / "dalle" / "checkpoints" / "interrupted.ckpt").write_bytes(b"x")
    assert demo.resumable(stage, demo_dir / "dalle", demo.stage_settings("dalle", "train", stage.overrides))
    with pytest.raises(KeyboardInterrupt):
        demo.run_train(stage, {})
    assert "ckpt_path=last" in children.commands["dalle"]

    other = demo.Stage("dalle", ["experiment=demo/full/dalle", "model.text_dropout=0.3"], expect_s=60)
    with pytest.raises(KeyboardInterrupt):
        demo.run_train(other, {})
    assert "ckpt_path=last" not in children.commands["dalle"]
    assert not (demo_dir / "dalle" / "checkpoints").exists()
    assert "not resuming its interrupted run, model.text_dropout changed 0.15 -> 0.3" in capsys.readouterr().out


def test_a_record_holds_no_path_of_the_demo_folder_and_no_budget(demo_dir):
    """The same stage under another ZOO_LOG_DIR (the folder moved) has the same record; so has one given another
    budget."""
    stage = demo.training_stages()[2]
    assert stage.name == "dalle"
    settings = demo.stage_settings("dalle", "train", [*stage.overrides, "callbacks.time_budget.minutes=3.1"])
    text = json.dumps(settings)
    assert str(demo_dir) not in text and "<demo>/tokenizer/checkpoints/last.ckpt" in text
    assert settings == demo.stage_settings("dalle", "train", [*stage.overrides, "callbacks.time_budget.minutes=9"])
    assert settings != demo.stage_settings("dalle", "train", [*stage.overrides, "seed=1"])


def test_an_unreadable_record_redoes_its_stage(demo_dir, monkeypatch, capsys):
    """A record that cannot be read says nothing about what the stage was built from: the stage is redone (not
    reused as one from before the records), and the line says why."""
    children = FakeChildren()
    monkeypatch.setattr(demo, "run_child", children)
    stage = demo.Stage("prior", ["experiment=demo/prior"], minutes=1.5)
    demo.run_train(stage, {})
    demo.settings_file("prior").write_text('{"command": ["experiment=demo/pr')  # a hand edit gone wrong
    demo.run_train(stage, {})
    assert children.ran == ["prior", "prior"]
    assert f"redoing it, its settings record {demo.settings_file('prior')} is unreadable" in capsys.readouterr().out
    demo.run_train(stage, {})  # written whole again by the redo
    assert children.ran == ["prior", "prior"]
