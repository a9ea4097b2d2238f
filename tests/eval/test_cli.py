"""zoo-eval through Hydra: compose conf/eval exactly as the console script does, run evaluate(cfg) on a tiny shapes
protocol (tiny random CLIP, a judge trained for a few steps) and check results.json / results.md / PNGs / the offline
W&B run; config errors name their fix (unknown generator, missing checkpoint or path, missing weights); every
dalle1 experiment row composes to the row it names; the console entry point runs. CPU, no network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zoo.errors import ConfigError, MissingWeightsError

FAST = [
    "protocol.n=16",
    "judge.steps=20",
    "judge.batch_size=16",
    "progress=false",
    "clip.checkpoint=null",
    "clip.arch=zoo-clip-tiny",
    "rerank.candidates=[1,2,4]",
    "rerank.batch_size=8",
    "eval.is_splits=2",
]


def compose_eval_cfg(tmp_path: Path, overrides: list[str]):
    """conf/eval/eval.yaml composed as zoo-eval composes it (tests/conftest.py)."""
    from tests.conftest import (
        compose_cfg,  # registered by pytest under this name (importlib mode)
    )

    return compose_cfg(tmp_path, overrides, module="conf.eval", name="eval")


@pytest.fixture(autouse=True)
def offline_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no Inception weights anywhere
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_zoo_eval_writes_results_tables_plots_and_wandb(tmp_path):
    from eval.cli import evaluate

    cfg = compose_eval_cfg(tmp_path, FAST + ["logger=wandb"])
    results = evaluate(cfg)
    run = tmp_path / "run"
    for name in ("results.json", "results.md", "blur.png", "rerank.png", "samples.png", "samples_rerank_n4.png"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    saved = json.loads((run / "results.json").read_text())
    assert [r["radius"] for r in saved["blur"]] == [0, 1, 2, 4, 8]
    assert [r["candidates"] for r in saved["rerank"]] == [1, 2, 4]
    assert saved["metrics"] == ["fd_clip", "clip_score", "prompt_fidelity", "attribute_accuracy", "is_judge"]
    for m in ("fid", "kid", "is"):  # no Inception offline: skipped with the option that fixes it
        assert "eval.inception_weights=" in saved["skipped"][m]
    for row in saved["blur"] + saved["rerank"]:
        assert set(saved["metrics"]) <= set(row)
    # rerank n=1 and blur radius 0 are the same images (candidate 0 under the run's seed)
    assert saved["rerank"][0]["fd_clip"] == pytest.approx(saved["blur"][0]["fd_clip"])
    # reranking by the same CLIP cannot lower the kept cosine
    cos = [r["rerank_cos"] for r in saved["rerank"]]
    assert cos == sorted(cos)
    # sampling time: rerank drew 4 candidates for each of the 16 captions; blur reused its n=1 images (no draw)
    assert saved["sampling"]["rerank"]["images"] == 16 * 4 and "blur" not in saved["sampling"]
    assert saved["sec_per_image_from"] == "rerank"
    assert saved["sec_per_image"] == pytest.approx(saved["sampling"]["rerank"]["seconds"] / 64, rel=1e-2, abs=1e-5)
    assert saved["cpu"].startswith("cpu: ")
    md = (run / "results.md").read_text()
    assert (
        "| blur radius (σ, px) | FD_CLIP ↓ | CLIP score ↑ | prompt fidelity ↑ | attribute accuracy ↑ | IS (judge) ↑ |"
    ) in md
    assert "| candidates |" in md and "skipped **fid, kid, is**" in md
    # header + one line per radius / per n, and the sampling-time table (header + the rerank draw)
    assert md.count("\n| ") == (1 + 5) + (1 + 3) + (1 + 1)
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and results["wandb_dir"]
    # results.json says where the W&B run is (it was written before the run existed and never held the key)
    assert json.loads((run / "results.json").read_text())["wandb_dir"] == results["wandb_dir"]
    # conventions only for the numbers reported: FID/KID/IS were skipped, so no Inception convention
    assert set(saved["conventions"]) == {"blur radius", "CLIP score", "FD_CLIP", "judge"}
    assert "FID/KID/IS:" not in md and "- CLIP score:" in md
    media = offline[0] / "files" / "media"
    for key in ("blur", "rerank"):  # a wandb.Table and a wandb.Image per ablation
        assert list(media.glob(f"table/eval/{key}_table_*.table.json")), key
        assert list(media.glob(f"images/eval/{key}_plot_*.png")), key


def test_explicit_metrics_and_single_ablation(tmp_path):
    from eval.cli import evaluate

    cfg = compose_eval_cfg(
        tmp_path, FAST + ["logger=none", "metrics=[prompt_fidelity]", "ablations=[blur]", "blur.radii=[0,2]"]
    )
    saved = evaluate(cfg)
    assert saved["metrics"] == ["prompt_fidelity"] and saved["skipped"] == {}
    assert set(saved["conventions"]) == {"blur radius", "judge"}  # no CLIP score / FID conventions without them
    assert [r["radius"] for r in saved["blur"]] == [0, 2] and "rerank" not in saved
    assert not (tmp_path / "run" / "rerank.png").exists() and not (tmp_path / "run" / "wandb").exists()


def test_blur_rows_can_score_reranked_images(tmp_path):
    from eval.cli import evaluate

    cfg = compose_eval_cfg(
        tmp_path, FAST + ["logger=none", "metrics=[fd_clip]", "blur.candidates=4", "blur.radii=[0,1]"]
    )
    both = evaluate(cfg)
    assert both["blur_candidates"] == 4
    assert both["blur"][0]["fd_clip"] == pytest.approx(both["rerank"][-1]["fd_clip"])  # the n=4 images, reused
    alone = evaluate(
        compose_eval_cfg(
            tmp_path / "alone", FAST + ["logger=none", "metrics=[fd_clip]", "blur.candidates=4", "ablations=[blur]"]
        )
    )
    assert [r["fd_clip"] for r in alone["blur"][:2]] == pytest.approx([r["fd_clip"] for r in both["blur"]])
    assert "CLIP-best of 4 candidates" in (tmp_path / "alone" / "run" / "results.md").read_text()


def test_blur_candidates_without_a_clip_fail_before_the_judge_trains(tmp_path, monkeypatch):
    # experiment=dalle1/fig9 (blur.candidates=32) without the demo CLIP: the ConfigError came when the blur ablation
    # began, after the shapes judge had trained (400 steps by default, minutes)
    import eval.judge
    from eval.cli import evaluate

    def no_training(*a, **k):
        raise AssertionError("the judge trained before the configuration error")

    monkeypatch.setattr(eval.judge, "train_judge", no_training)
    fast = [o for o in FAST if not o.startswith("clip.")]
    cfg = compose_eval_cfg(
        tmp_path,
        fast + ["logger=none", "clip.checkpoint=/nonexistent/clip.ckpt", "blur.candidates=4", "ablations=[blur]"],
    )
    with pytest.raises(ConfigError, match=r"blur.candidates=4 reranks with CLIP.*/nonexistent/clip.ckpt.*fix"):
        evaluate(cfg)


def test_diversity_ablation_and_sampling_time_through_the_cli(tmp_path):
    """ablations=[blur,diversity]: identical candidates (mismatch=0: each caption's own scene whatever the seed) are
    distance 0 and one judge reading in three; swapped scenes (mismatch=1) are apart. The blur row's own draw is
    timed and shown in results.md."""
    from eval.cli import evaluate

    div = ["ablations=[blur,diversity]", "blur.radii=[0]", "diversity.captions=6", "diversity.samples=3"]
    same = evaluate(compose_eval_cfg(tmp_path, FAST + ["logger=none", "generator.mismatch=0", *div]))
    d = same["diversity"]
    assert (d["captions"], d["samples"]) == (6, 3)
    assert abs(d["pairwise_clip_distance"]) < 1e-6 and d["judge_distinct"] == pytest.approx(1 / 3)
    s = same["sampling"]
    assert s["blur"]["images"] == 16 and s["diversity"]["images"] == 6 * 3 and "rerank" not in s
    assert same["sec_per_image_from"] == "blur" and same["sec_per_image"] > 0
    assert same["sec_per_image"] == pytest.approx(s["blur"]["seconds"] / 16, rel=1e-2, abs=1e-5)
    md = (tmp_path / "run" / "results.md").read_text()
    assert "## Sample diversity" in md and "| 6 | 3 | 0.0000 | 33.3% |" in md
    assert "## Sampling time" in md and "| blur | 16 |" in md and "| diversity | 18 |" in md
    cfg = compose_eval_cfg(tmp_path, FAST + ["logger=none", "generator.mismatch=1", *div])
    cfg.paths.output_dir = str(tmp_path / "apart")  # same judge cache as above: trained once
    apart = evaluate(cfg)
    assert apart["diversity"]["pairwise_clip_distance"] > 1e-3
    assert 1 / 3 <= apart["diversity"]["judge_distinct"] <= 1


def test_diversity_is_skipped_with_the_reason_when_there_is_no_clip(tmp_path):
    from eval.cli import evaluate

    cfg = compose_eval_cfg(
        tmp_path,
        FAST
        + [
            "logger=none",
            "ablations=[blur,diversity]",
            "blur.radii=[0]",
            "clip.arch=null",
            "clip.checkpoint=/no/c.ckpt",
        ],
    )
    res = evaluate(cfg)
    assert "diversity" not in res and "fix: clip.checkpoint=" in res["skipped"]["diversity"]
    assert res["metrics"] == ["prompt_fidelity", "attribute_accuracy", "is_judge"]  # the judge rows still run
    assert "skipped **fd_clip, clip_score, diversity**" in (tmp_path / "run" / "results.md").read_text()


def test_folder_generator_through_the_cli(tmp_path):
    """Samples saved elsewhere (here: the protocol's own real scenes) score as the real set: FD_CLIP 0."""
    from eval.cli import evaluate
    from eval.generators import save_folder
    from eval.shapes_protocol import ShapesProtocol

    es = ShapesProtocol(n=16, resolution=32).load()
    save_folder(es.real.tensor(), es.captions, tmp_path / "samples")
    cfg = compose_eval_cfg(
        tmp_path,
        FAST
        + [
            "logger=none",
            "generator=folder",
            f"generator.path={tmp_path}/samples",
            "metrics=[fd_clip]",
            "ablations=[blur]",
            "blur.radii=[0,2]",
        ],
    )
    res = evaluate(cfg)
    assert res["generator"]["name"] == "FolderGenerator" or res["generator"]["target"].endswith("FolderGenerator")
    assert [abs(r["fd_clip"]) < 1e-6 for r in res["blur"]] == [True, True]


def test_folder_missing_captions_refused_before_any_long_work(tmp_path, monkeypatch):
    """A sample folder with images for 8 of the protocol's 16 captions: a ValueError traceback once generation
    reached them, after the judge was trained (minutes at the default 400 steps). Now a ConfigError naming the folder
    and the count, before the judge or any metric network is built."""
    import eval.cli
    from eval.cli import evaluate
    from eval.generators import save_folder
    from eval.shapes_protocol import ShapesProtocol

    es = ShapesProtocol(n=16, resolution=32).load()
    save_folder(es.real.tensor()[:8], es.captions[:8], tmp_path / "samples")

    def long_work(*a, **k):
        raise AssertionError("the metrics were built before the folder was checked")

    monkeypatch.setattr(eval.cli, "build_suite", long_work)
    cfg = compose_eval_cfg(
        tmp_path, FAST + ["logger=none", "generator=folder", f"generator.path={tmp_path}/samples", "ablations=[blur]"]
    )
    with pytest.raises(ConfigError, match=f"sample folder {tmp_path}/samples has no image for 8 of the 16 captions"):
        evaluate(cfg)


def test_coco_protocol_through_the_cli(tmp_path):
    """A 5-image fake MS-COCO: captions/real images at eval_resolution; the judge metrics are skipped with a reason."""
    import importlib.util

    from eval.cli import evaluate

    spec = importlib.util.spec_from_file_location("tp", Path(__file__).with_name("test_protocols.py"))
    tp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tp)
    tp._fake_coco(tmp_path / "coco")
    cfg = compose_eval_cfg(
        tmp_path,
        FAST
        + [
            "logger=none",
            "protocol=coco",
            f"protocol.root={tmp_path}/coco",
            "protocol.n=4",
            "protocol.eval_resolution=64",
            "ablations=[blur]",
            "blur.radii=[0,1]",
            "generator.mismatch=0",
            "generator.radius=1",
        ],
    )
    res = evaluate(cfg)
    assert (
        res["protocol"]["dataset"] == "coco2014" and res["protocol"]["n"] == 4 and res["protocol"]["resolution"] == 64
    )
    assert res["metrics"] == ["fd_clip", "clip_score"]
    assert "ground-truth attributes" in res["skipped"]["prompt_fidelity"]
    assert res["blur"][1]["fd_clip"] < res["blur"][0]["fd_clip"]  # sigma-1 fakes: blurring both sides closes the gap


def test_judge_metrics_on_coco_fail_before_the_generator_loads(tmp_path, monkeypatch):
    """metrics=[prompt_fidelity] on a protocol without scene attributes was refused in build_suite, after the
    generator's checkpoints had loaded; now once the protocol has loaded, before the generator."""
    import importlib.util

    import eval.cli
    from eval.cli import evaluate

    spec = importlib.util.spec_from_file_location("tp", Path(__file__).with_name("test_protocols.py"))
    tp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tp)
    tp._fake_coco(tmp_path / "coco")

    def too_late(*a, **k):
        raise AssertionError("reached before the configuration error")

    monkeypatch.setattr(eval.cli, "build_generator", too_late)
    coco = ["logger=none", "protocol=coco", f"protocol.root={tmp_path}/coco", "protocol.n=4", "ablations=[blur]"]
    cfg = compose_eval_cfg(tmp_path, FAST + coco + ["metrics=[prompt_fidelity,fd_clip]"])
    with pytest.raises(ConfigError, match=r"\['prompt_fidelity'\] need ground-truth scene attributes.*fix: drop"):
        evaluate(cfg)


def test_unknown_generator_lists_the_options(tmp_path):
    with pytest.raises(Exception) as e:
        compose_eval_cfg(tmp_path, ["generator=nonexistent"])
    msg = str(e.value)
    assert "generator/nonexistent" in msg
    assert all(opt in msg for opt in ("real_blurred", "folder", "dalle"))


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["generator=dalle"], r"generator.dalle_ckpt: checkpoint not found: .*fix: generator.dalle_ckpt="),
        (["generator=folder"], r"fix: generator.path=/path/to/samples"),
        (["generator=folder", "generator.path=/no/such/dir"], r"generator.path="),
        (["protocol=coco"], r"fix: protocol.root=/path/to/coco"),
        (["metrics=[clip_score]", "clip.arch=null", "clip.checkpoint=/no/clip.ckpt"], r"fix: clip.checkpoint="),
        (["ablations=[blurr]"], r"ablations=\[blur,rerank\]"),
        (["ablations=[blur,diversity]", "diversity.samples=1"], r"fix: diversity.samples=4"),
        (["blur.radii=[0,16]"], r"protocol.eval_resolution"),
        (["generator._target_=builtins.dict"], r"no generate\(captions\)"),
        (["generator._target_=zoo.no_such_module.Gen"], r"cannot build generator"),
        (["ablations=[rerank]", "rerank.blur_radius=16"], r"rerank\.blur_radius=16: .*too large"),
        (["ablations=[rerank]", "rerank.blur_radius=-1"], r"rerank\.blur_radius=-1"),
        *(  # a cuda device on a machine without one: torch's "Found no NVIDIA driver" came from inside a load
            []
            if torch.cuda.is_available()
            else [
                (["eval.device=cuda"], r"eval\.device=cuda, but no CUDA device .*fix: eval\.device=cpu"),
                (["clip.device=cuda"], r"fix: clip\.device=cpu"),
            ]
        ),
    ],
)
def test_config_errors_name_the_fix(tmp_path, overrides, match):
    from eval.cli import evaluate

    cfg = compose_eval_cfg(tmp_path, ["protocol.n=4", "logger=none", "progress=false", *overrides])
    with pytest.raises((ConfigError, ValueError), match=match):
        evaluate(cfg)


def test_missing_inception_weights_named_when_fid_is_asked_for(tmp_path):
    from eval.cli import evaluate

    cfg = compose_eval_cfg(tmp_path, ["protocol.n=4", "logger=none", "progress=false", "metrics=[fid]"])
    with pytest.raises(MissingWeightsError, match="eval.inception_weights="):
        evaluate(cfg)
    # metrics=auto skips Inception only when no file was named; a named file that is missing is an error
    cfg = compose_eval_cfg(
        tmp_path,
        ["protocol.n=4", "logger=none", "progress=false", "judge.steps=20", "eval.inception_weights=/no/w.pth"],
    )
    with pytest.raises(MissingWeightsError, match="/no/w.pth"):
        evaluate(cfg)


def test_dalle1_experiment_rows_compose(tmp_path):
    rows = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "conf/eval/experiment/dalle1").glob("*.yaml"))
    assert {f"blur_r{r}" for r in (0, 1, 2, 4, 8)} | {f"rerank_n{n}" for n in (1, 2, 4, 8, 16, 32)} <= set(rows)
    for row in rows:
        cfg = compose_eval_cfg(tmp_path, [f"experiment=dalle1/{row}"])
        assert cfg.generator._target_ == "zoo.pipelines.dalle.DallePipeline.from_checkpoints"
        if row.startswith("blur_r"):
            assert list(cfg.ablations) == ["blur"] and list(cfg.blur.radii) == [int(row[6:])]
        elif row.startswith("rerank_n"):
            assert list(cfg.ablations) == ["rerank"] and list(cfg.rerank.candidates) == [int(row[8:])]
        elif row == "fig9":
            assert list(cfg.ablations) == ["blur", "rerank"] and cfg.protocol.n == 256
        elif row == "coco":
            assert cfg.protocol._target_ == "eval.coco_protocol.CocoProtocol" and cfg.protocol.n == 30000
    cfg = compose_eval_cfg(tmp_path, ["experiment=dalle1/fig9", "generator=real_blurred"])
    assert cfg.generator._target_ == "eval.generators.RealBlurredGenerator"


def test_console_entry_point_runs(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1", TORCH_HOME=str(tmp_path / "th"))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "eval.cli",
            "protocol.n=8",
            "judge.steps=20",
            "judge.batch_size=8",
            "logger=none",
            "metrics=[prompt_fidelity]",
            "ablations=[blur]",
            "blur.radii=[0,1]",
            f"hydra.run.dir={tmp_path}/run",
            f"paths.cache_dir={tmp_path}/cache",
            "progress=false",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "results.md").is_file() and (tmp_path / "run" / ".hydra" / "config.yaml").is_file()
    assert "prompt fidelity" in done.stdout


def test_judge_width_is_its_own_cached_instrument(tmp_path):
    """judge.width picks the judge's CNN width; the reference width 64 has no width in its file name, any other width is
    cached apart (so a demo's cheaper judge never stands in for the reference one), and a silly width is refused."""
    from omegaconf import OmegaConf

    from eval.cli import build_judge
    from eval.judge import judge_code_digest
    from zoo.errors import ConfigError

    node = OmegaConf.create({"dir": str(tmp_path), "steps": 2, "batch_size": 4, "width": 16})
    judge = build_judge(node, 32, False)
    assert judge.features[0].out_channels == 16
    files = sorted(p.name for p in tmp_path.glob("*.pt"))
    assert len(files) == 1 and files[0].endswith(f"_32px_2x4_w16_j{judge_code_digest()}.pt")
    node.width = 64
    assert build_judge(node, 32, False).features[0].out_channels == 64
    assert len(list(tmp_path.glob(f"*_32px_2x4_j{judge_code_digest()}.pt"))) == 1  # the reference name, no width
    node.width = 4
    with pytest.raises(ConfigError, match="judge.width"):
        build_judge(node, 32, False)


def test_an_unreadable_cached_judge_names_the_cache_and_its_fix(tmp_path):
    """zoo-eval's judge cache: a truncated file said "use another checkpoint (e.g. the run's last.ckpt)", a run's
    fix, not a cache's; a torch file of another layout was a bare KeyError, and a judge of another width cached
    under this name a RuntimeError from load_state_dict. Each is now a ConfigError naming the file, "delete it" and
    judge.dir=."""
    from omegaconf import OmegaConf

    from eval.cli import build_judge, judge_path
    from eval.judge import ShapesJudge, Vocab, save_judge
    from zoo.errors import ConfigError

    node = OmegaConf.create({"dir": str(tmp_path), "steps": 2, "batch_size": 4, "width": 16})
    cached = judge_path(node, 32)

    def mismatched():  # a width-8 judge's weights filed as a width-16 one
        save_judge(ShapesJudge(Vocab.from_world(), width=8, resolution=32), cached)
        torch.save({**torch.load(cached, weights_only=True), "width": 16}, cached)

    for write in (lambda: cached.write_bytes(b"truncated"), lambda: torch.save({"state_dict": {}}, cached), mismatched):
        write()
        with pytest.raises(ConfigError, match="cached shapes judge") as e:
            build_judge(node, 32, False)
        assert str(cached) in str(e.value) and "delete it" in str(e.value) and "judge.dir=<another dir>" in str(e.value)


@pytest.mark.parametrize(
    "bad, key",
    [
        (["metrics=[fd_clip,clip_scor]"], "metrics="),
        (["blur.radii=[0,-1]"], "blur.radii="),
        (["blur.radii=2"], "blur.radii=[2] for one radius"),  # was list()'s TypeError
        (["blur.radii=[]"], "blur.radii is empty"),  # drew every image and scored none
        (["ablations=[rerank]", "rerank.candidates=[0,2]"], "rerank.candidates="),
        (["ablations=[diversity]", "diversity.samples=1"], "diversity.samples="),
        (["ablations=[]"], "no ablation to run"),
        (["ablations=[blurr]"], "unknown ablations"),
    ],
)
def test_bad_ablation_settings_are_config_errors(tmp_path, bad, key):
    """A misspelt metric, a negative blur radius, 0 reranking candidates or 1 diversity sample are user errors:
    a ConfigError naming the key to fix, which zoo-eval prints as one `error:` line with exit status 2 (they were
    plain ValueErrors: a full traceback and status 1)."""
    from eval.cli import evaluate

    cfg = compose_eval_cfg(tmp_path, FAST + ["metrics=[fd_clip]", "logger=none", *bad])
    with pytest.raises(ConfigError, match=key.replace("[", r"\[")):
        evaluate(cfg)


@pytest.mark.parametrize(
    "bad",
    [
        "eval.feature_batch_size=0",
        "eval.is_splits=0",
        "eval.kid_subsets=0",
        "eval.kid_subset_size=1",
        "batch_size=0",
        "rerank.batch_size=0",
        "eval.feature_batch_size=2.5",  # ran at 2
        "eval.kid_subsets=2.5",
        "batch_size=2.5",
    ],
)
def test_bad_metric_settings_fail_before_the_judge_trains_or_anything_is_generated(tmp_path, monkeypatch, bad):
    # they failed in the metrics after every sample was drawn (feature_batch_size=0 as range()'s "arg 3 must not be
    # zero"), or not at all when no metric used them; a zero generation batch size when generation began
    import eval.cli
    import eval.judge
    from eval.cli import evaluate

    def too_late(*a, **k):
        raise AssertionError("reached before the configuration error")

    monkeypatch.setattr(eval.judge, "train_judge", too_late)
    monkeypatch.setattr(eval.cli, "generate_images", too_late)
    cfg = compose_eval_cfg(tmp_path, FAST + ["logger=none", "ablations=[blur,rerank]", bad])
    key = bad.split("=")[0]
    with pytest.raises(ConfigError, match=key + r"=[\d.]+ must be a whole number >= \d \(fix: " + key):
        evaluate(cfg)


def test_wandb_run_has_the_config_and_the_sample_grids(tmp_path, monkeypatch):
    """The eval's W&B run carried tables and plots but neither the run's config (a sweep's runs could not be told
    apart: which guidance scale, which prior) nor the sample grids; both are logged now, and "wrote" names the grids."""
    import wandb

    from eval.cli import evaluate

    seen = {}
    real_init = wandb.init

    def init(**kwargs):
        seen.update(kwargs)
        return real_init(**kwargs)

    monkeypatch.setattr(wandb, "init", init)
    cfg = compose_eval_cfg(tmp_path, FAST + ["logger=wandb", "ablations=[blur]", "blur.radii=[0]", "seed=3"])
    evaluate(cfg)
    config = seen["config"]
    assert config["seed"] == 3 and config["blur"]["radii"] == [0] and config["protocol"]["n"] == 16
    assert config["generator"]["_target_"] == cfg.generator._target_
    (offline,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    assert list((offline / "files" / "media").glob("images/eval/samples_*.png")), "sample grid not logged"


def test_results_md_names_the_clip_and_the_judge_its_numbers_depend_on(tmp_path):
    """results.md listed conventions for the blur radius, CLIP score and FID but not for FD_CLIP (a distance whose
    scale depends on the CLIP) nor for the judge's metrics (a width-32 or 20-step judge reads other numbers than the
    README's width-64 reference): two runs' tables could not be checked for comparability."""
    from eval.cli import evaluate

    cfg = compose_eval_cfg(tmp_path, FAST + ["logger=none", "ablations=[blur]", "blur.radii=[0]", "judge.width=32"])
    results = evaluate(cfg)
    md = (tmp_path / "run" / "results.md").read_text()
    assert (
        results["clip"]
        and f"FD_CLIP: Fréchet distance between the unit-norm image embeddings ({results['clip']})" in md
    )
    assert "shapes judge shapes_judge_v" in md and "(width 32, 20 steps;" in md


def test_the_clip_cache_ident_names_net_overrides_and_the_random_init_seed(tmp_path, dalle_helpers):
    # two different CLIPs shared one cached-real-features entry: clip.net overrides on the same checkpoint, or a
    # random-init CLIP built under another seed
    from omegaconf import OmegaConf

    from eval.cli import build_clip

    def ident(seed=0, **node):
        torch.manual_seed(seed)  # what evaluate() does with cfg.seed before building the CLIP
        base = {"checkpoint": None, "arch": "zoo-clip-tiny", "pretrained": None, "device": "cpu", "net": None}
        return build_clip(OmegaConf.create({**base, **node}))[1]

    assert ident(0) == ident(0) and ident(0) != ident(1)
    assert ident(0) != ident(0, net={"embed_dim": 16}) and ident(0, net={"embed_dim": 16}) == ident(
        0, net={"embed_dim": 16}
    )
    ckpt = dalle_helpers.tiny_clip_ckpt(tmp_path / "clip.ckpt")
    with_file = ident(0, checkpoint=str(ckpt), arch=None)
    assert with_file == ident(1, checkpoint=str(ckpt), arch=None)  # a checkpoint's weights do not depend on the seed


def test_the_clip_cache_ident_names_the_tag_beside_a_file_and_a_file_given_as_the_tag(tmp_path, monkeypatch):
    # clip.arch + clip.checkpoint with and without clip.pretrained=openai (the tag sets QuickGELU and the
    # preprocessing) shared one cached-real-features entry, and so did two contents of a file given as
    # clip.pretrained=/path (keyed by its path)
    from omegaconf import OmegaConf

    from eval.cli import build_clip
    from zoo.models.clip.scorer import ClipScorer

    monkeypatch.setattr(ClipScorer, "from_config", staticmethod(lambda node: object()))  # only the ident is read

    def ident(**node):
        base = {"checkpoint": None, "arch": "ViT-B-32", "pretrained": None, "device": "cpu", "net": None}
        return build_clip(OmegaConf.create({**base, **node}))[1]

    weights = tmp_path / "open_clip.pt"
    weights.write_bytes(b"weights, first training")
    assert ident(checkpoint=str(weights)) != ident(checkpoint=str(weights), pretrained="openai")
    first = ident(pretrained=str(weights))
    assert first == ident(checkpoint=str(weights))  # the same file, the same CLIP (create_clip loads it as such)
    weights.write_bytes(b"weights, retrained")
    assert ident(pretrained=str(weights)) != first
    assert ident(pretrained="openai") == "clip:ViT-B-32:openai"  # a tag's entry keeps its name


def test_a_clip_checkpoint_under_home_is_loaded(tmp_path, monkeypatch, dalle_helpers):
    # clip.checkpoint=~/clip.ckpt (bash leaves a ~ after "clip.checkpoint=" alone) passed the existence check, which
    # expands it, and then the loader said "checkpoint not found: ~/clip.ckpt"
    from omegaconf import OmegaConf

    from eval.cli import build_clip

    ckpt = dalle_helpers.tiny_clip_ckpt(tmp_path / "clip.ckpt")
    monkeypatch.setenv("HOME", str(tmp_path))
    node = {"checkpoint": "~/clip.ckpt", "arch": None, "pretrained": None, "device": "cpu", "net": None}
    scorer, ident = build_clip(OmegaConf.create(node))
    assert ident == build_clip(OmegaConf.create({**node, "checkpoint": str(ckpt)}))[1]
    assert scorer.encode_text(["a red circle"]).shape[0] == 1


def test_the_judge_dir_under_home_is_expanded(tmp_path, monkeypatch):
    # judge.dir=~/cache/judge made a folder literally named "~" in the working directory
    from omegaconf import OmegaConf

    from eval.cli import judge_path

    monkeypatch.setenv("HOME", str(tmp_path))
    path = judge_path(OmegaConf.create({"dir": "~/cache/judge"}), 32)
    assert path.parent == tmp_path / "cache" / "judge"


def test_an_edit_of_the_judges_code_trains_a_new_judge(tmp_path, monkeypatch):
    """The cached shapes judge was keyed by the world's version, steps, width and resolution only: after an edit of
    eval/judge.py (its network, its training), the judge the old code trained was read silently. The digest of the
    judge's source is in the name now: an edited copy gives another file (a new judge trains), the same code the same
    one, and zoo-eval and the upsampler report still share it."""
    import eval.judge as J
    import eval.upsampler as U
    from eval.cli import judge_path

    node = {"dir": str(tmp_path)}
    source = tmp_path / "judge.py"
    source.write_bytes(Path(J.__file__).read_bytes())
    now = judge_path(node, 32)
    monkeypatch.setattr(J, "JUDGE_SOURCE", source, raising=False)
    assert judge_path(node, 32) == now == U.judge_path(tmp_path, 32, 400, 128)  # the same code: the same judge
    source.write_text(source.read_text() + "\n# the judge's network or training, edited\n")
    edited = judge_path(node, 32)
    assert edited != now and edited.parent == now.parent and edited == U.judge_path(tmp_path, 32, 400, 128)


def test_rerank_rows_scored_at_a_blur_radius_say_so(tmp_path):
    """rerank.blur_radius=2 scores the reranked images (and the real ones) blurred: results.md's rerank table, its
    plot and the conventions said nothing of it, so its FD_CLIP / FID read as the unblurred images' own."""
    from eval.cli import evaluate
    from eval.report import markdown_report

    cfg = compose_eval_cfg(
        tmp_path, FAST + ["logger=none", "metrics=[fd_clip]", "ablations=[rerank]", "rerank.blur_radius=2"]
    )
    saved = evaluate(cfg)
    assert {r["blur_radius"] for r in saved["rerank"]} == {2.0}
    assert "blur radius" in saved["conventions"]
    md = (tmp_path / "run" / "results.md").read_text()
    assert "Scored at blur radius 2 (rerank.blur_radius" in md
    unblurred = {**saved, "rerank": [{**r, "blur_radius": 0.0} for r in saved["rerank"]]}
    assert "rerank.blur_radius" not in markdown_report(unblurred)  # unblurred rows as before


@pytest.mark.parametrize(
    "bad, key",
    [
        ("blur.candidates=0", "blur.candidates"),
        ("blur.candidates=-2", "blur.candidates"),
        ("blur.candidates=2.5", "blur.candidates"),
        ("rerank.candidates=[0,2]", "rerank.candidates"),
        ("rerank.candidates=8", "rerank.candidates"),
    ],
)
def test_bad_candidate_counts_fail_before_the_judge_trains_or_anything_is_generated(tmp_path, monkeypatch, bad, key):
    """blur.candidates=0 (a reading of "no reranking") was refused by rerank_select when the blur ablation began --
    after the judge trained and the rerank ablation drew every candidate -- and the message named rerank.candidates;
    rerank.candidates=8 (not a list) was list()'s TypeError."""
    import eval.cli
    import eval.judge
    from eval.cli import evaluate

    def too_late(*a, **k):
        raise AssertionError("reached before the configuration error")

    for module, name in ((eval.judge, "train_judge"), (eval.cli, "generate_images"), (eval.cli, "rerank_ablation")):
        monkeypatch.setattr(module, name, too_late)
    cfg = compose_eval_cfg(tmp_path, FAST + ["logger=none", "ablations=[blur,rerank]", bad])
    with pytest.raises(ConfigError, match=rf"^{key}=.+ must be .*\(fix: {key}="):
        evaluate(cfg)


@pytest.mark.parametrize(
    "bad, call",
    [
        ("blur.radii=2", lambda lib: lib.blur(radii=2)),
        ("blur.radii=[]", lambda lib: lib.blur(radii=[])),
        ("blur.radii=[0,-1]", lambda lib: lib.blur(radii=[0, -1])),
        ("blur.radii=[0,16]", lambda lib: lib.blur(radii=[0, 16])),
        ("rerank.candidates=8", lambda lib: lib.select(candidates=8)),
        ("rerank.candidates=[0,2]", lambda lib: lib.select(candidates=[0, 2])),
        ("rerank.candidates=[1.5,2]", lambda lib: lib.select(candidates=[1.5, 2])),
        ("rerank.batch_size=0", lambda lib: lib.select(batch_size=0)),
        ("rerank.blur_radius=-1", lambda lib: lib.rerank(blur_radius=-1)),
        ("rerank.blur_radius=16", lambda lib: lib.rerank(blur_radius=16)),
    ],
)
def test_a_bad_ablation_value_gives_one_message_from_zoo_eval_and_from_the_library(tmp_path, monkeypatch, bad, call):
    """zoo-eval and eval.ablations each had their own checks: the library took rerank candidates [1.5, 2] for [1, 2],
    failed on a count without brackets or a zero batch size with Python's TypeError / range() error, scored an empty
    radius list as no rows, and refused a bad rerank blur radius only after every candidate was drawn; zoo-eval's
    rerank.blur_radius=-1 named blur.radii as the fix. One set of checks now: the same message, naming the option and
    its fix, from both -- before zoo-eval builds a model and before the library draws an image."""
    import eval.cli
    from eval.ablations import MetricSuite, blur_ablation, rerank_ablation, rerank_select
    from eval.cli import evaluate
    from eval.eval_set import EvalSet

    def too_late(*a, **k):
        raise AssertionError("reached before the configuration error")

    for name in ("build_generator", "build_suite", "generate_images", "rerank_ablation"):
        monkeypatch.setattr(eval.cli, name, too_late)
    cfg = compose_eval_cfg(tmp_path, FAST + ["logger=none", "ablations=[blur,rerank]", bad])
    with pytest.raises(ConfigError) as from_cli:
        evaluate(cfg)
    message = str(from_cli.value)
    assert message.startswith(bad.split("=")[0]) and "(fix: " in message  # names the option, then the fix

    drawn: list[int] = []

    class Gen:
        def generate(self, captions, **kw):
            drawn.append(len(captions))
            return torch.zeros(len(captions), 3, 32, 32)

    class Scorer:
        def encode_image(self, x):
            return torch.nn.functional.normalize(torch.ones(len(x), 4), dim=-1)

        def encode_text(self, captions):
            return torch.nn.functional.normalize(torch.ones(len(captions), 4), dim=-1)

    es = EvalSet("x", "val", ["a red circle"] * 4, torch.zeros(4, 3, 32, 32), 32)  # zoo-eval's FAST protocol: 32 px
    suite = MetricSuite(["clip_score"], clip=Scorer(), progress=False)

    class Lib:
        blur = staticmethod(lambda radii: blur_ablation(torch.zeros(4, 3, 32, 32), es, suite, radii, progress=False))
        select = staticmethod(
            lambda candidates=(1, 2), batch_size=8: rerank_select(
                Gen(), es, Scorer(), candidates, batch_size, progress=False
            )
        )
        rerank = staticmethod(
            lambda blur_radius: rerank_ablation(
                Gen(), es, suite, Scorer(), [1, 2], blur_radius=blur_radius, progress=False
            )
        )

    with pytest.raises(ConfigError) as from_library:
        call(Lib)
    assert str(from_library.value) == str(from_cli.value)
    assert drawn == []  # refused before any image was drawn


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (["metrics=[fd_clip,clip_scor]"], ConfigError, r"unknown metrics \['clip_scor'\]"),
        (["judge.width=4"], ConfigError, r"judge.width=4 must be a whole number >= 8.*fix: judge.width=64"),
        (["judge.steps=0"], ConfigError, r"judge.steps=0 must be .*fix: judge.steps=400"),  # was torch's "size must be"
        (
            ["judge.batch_size=2.5"],
            ConfigError,
            r"judge.batch_size=2.5 must be .*fix: judge.batch_size=128",
        ),  # ran at 2
        (["metrics=[clip_score]", "clip.arch=null", "clip.checkpoint=/no/clip.ckpt"], ConfigError, r"need a CLIP"),
        (["metrics=[fid]", "eval.inception_weights=/no/w.pth"], MissingWeightsError, r"/no/w.pth"),
        (["seed=1.5"], ConfigError, r"seed=1.5 must be a whole number \(fix: seed=0\)"),  # ran at seed 1
        (["ablations=[diversity]", "diversity.samples=2.5"], ConfigError, r"fix: diversity.samples=4"),  # ran at 2
        (["progress=no"], ConfigError, r"progress='no' must be true or false"),  # read as true
        (["eval.cache_real_stats=off"], ConfigError, r"eval.cache_real_stats='off' must be true or false"),
    ],
)
def test_settings_build_suite_refuses_fail_before_the_protocol_and_the_generator_load(
    tmp_path, monkeypatch, bad, error, match
):
    """A misspelt metric, a bad judge setting, a missing CLIP or Inception file the run cannot skip were refused in
    build_suite, after the protocol and the generator's checkpoints had loaded; a fractional seed or diversity.samples
    ran as its integer part."""
    import eval.cli
    from eval.cli import evaluate

    def too_late(*a, **k):
        raise AssertionError("reached before the configuration error")

    for name in ("build_protocol", "build_generator"):
        monkeypatch.setattr(eval.cli, name, too_late)
    cfg = compose_eval_cfg(tmp_path, FAST + ["logger=none", *bad])
    with pytest.raises(error, match=match):
        evaluate(cfg)


def test_results_json_records_the_inception_weights_of_fid(tmp_path):
    """results.json named the CLIP and the judge but not the Inception weights behind FID / KID / IS: the leaderboard
    could not tell runs scored with different weights apart. Now the file's name and full sha256 (and in results.md's
    conventions)."""
    import hashlib

    from eval.cli import evaluate
    from eval.features import INCEPTION_FILENAME, make_random_inception_weights

    weights = make_random_inception_weights(tmp_path / "w" / INCEPTION_FILENAME)
    cfg = compose_eval_cfg(
        tmp_path,
        FAST
        + ["protocol.n=8", "logger=none", "ablations=[blur]", "blur.radii=[0]", "metrics=[fid]"]
        + [f"eval.inception_weights={weights}"],
    )
    evaluate(cfg)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert saved["inception"] == {
        "file": INCEPTION_FILENAME,
        "sha256": sha,
        "extractor": f"inception-v3-compat@{sha[:8]}",
    }
    assert saved["blur"][0]["fid"] is not None and f"(sha256 {sha})" in (tmp_path / "run" / "results.md").read_text()
    no_fid = compose_eval_cfg(tmp_path, FAST + ["logger=none", "ablations=[blur]", "blur.radii=[0]"])
    assert evaluate(no_fid)["inception"] is None  # no weights offline: FID skipped, nothing to name


def test_a_dalle_drawing_another_size_than_the_protocol_is_warned_about(tmp_path, dalle_helpers, caplog):
    """zoo-eval resized a DALL·E's samples to protocol.resolution without a word (found: a 32 px DALL·E under
    experiment=dalle1/fig9 protocol.resolution=64 ran to the end, its samples upsampled against sharp 64 px scenes;
    the 48 px DALL·E of make demo FULL=1 under fig9's 32 px likewise). Now a warning naming both sizes and
    protocol.resolution=<the generator's>; none when they agree or the generator is not a DALL·E."""
    import logging
    from types import SimpleNamespace

    from eval.cli import warn_resized_samples
    from zoo.models.dalle.lit import DalleLit

    H = dalle_helpers
    ckpt = H.tiny_tokenizer_ckpt(tmp_path / "tok.ckpt")  # 16 px -> 4x4 codes
    dalle = DalleLit(preset="tiny", net={**H.TINY_NET, "grid_h": 4, "grid_w": 4}, image_tokenizer_ckpt=str(ckpt))
    gen = SimpleNamespace(dalle=dalle)
    with caplog.at_level(logging.WARNING, logger="zoo.eval"):
        assert warn_resized_samples(gen, SimpleNamespace(name="shapes", resolution=H.RESOLUTION)) is None
        assert not caplog.records
        assert warn_resized_samples(gen, SimpleNamespace(name="shapes", resolution=64)) == H.RESOLUTION
        assert warn_resized_samples(SimpleNamespace(), SimpleNamespace(name="shapes", resolution=64)) is None
    assert len(caplog.records) == 1
    assert f"draws {H.RESOLUTION} px images and shapes evaluates at 64 px" in caplog.text
    assert f"protocol.resolution={H.RESOLUTION}" in caplog.text


def test_generator_keys_reach_the_rows_of_an_experiment_sweep(tmp_path):
    """experiments/dalle1's "one row per run" sweep on another DALL·E (zoo-eval -m experiment=dalle1/blur_r0,...
    generator.dalle_ckpt=<ckpt>) failed before any job: Hydra composes a multirun's command line without its sweep
    overrides, on the default real_blurred generator ("Key 'dalle_ckpt' is not in struct"). The generator keys of
    such a sweep are now set with ++: that sweep-less composition passes and every row gets the key on its own
    generator. Other command lines are left as they were (a misspelt generator key there stays Hydra's error)."""
    from hydra.errors import ConfigCompositionException

    from eval.cli import open_generator_keys_in_experiment_sweeps as opened

    rows = ["dalle1/blur_r0", "dalle1/rerank_n2"]
    args = ["-m", f"experiment={','.join(rows)}", "generator.dalle_ckpt=/x/dalle.ckpt", "protocol.n=8"]

    def sweepless(a):  # what Hydra composes before launching the jobs
        return [x for x in a if x != "-m" and not x.startswith("experiment=")]

    with pytest.raises(ConfigCompositionException):  # the plain key, on real_blurred
        compose_eval_cfg(tmp_path, sweepless(args))
    compose_eval_cfg(tmp_path, sweepless(opened(args)))
    for row in rows:
        cfg = compose_eval_cfg(tmp_path, [f"experiment={row}", *sweepless(opened(args))])
        assert cfg.generator._target_ == "zoo.pipelines.dalle.DallePipeline.from_checkpoints"
        assert cfg.generator.dalle_ckpt == "/x/dalle.ckpt" and cfg.protocol.n == 8
    assert opened(args[1:]) == args[1:]  # not a multirun
    assert opened([*args, "generator=dalle"]) == [*args, "generator=dalle"]  # the key is known already
    assert opened(["-m", "experiment=dalle1/fig9", "generator.x=1"]) == [
        "-m",
        "experiment=dalle1/fig9",
        "generator.x=1",
    ]


def test_results_md_says_which_clip_and_counts_ranked_the_candidates_not_the_generator_s_own(
    tmp_path, train_cfg, dalle_helpers, train_helpers
):
    """results.md's generator line showed a DALL·E's own generator.clip_ckpt (None) and n_candidates (32) as its
    settings, while zoo-eval drew the candidates itself and ranked them with clip.checkpoint over rerank.candidates.
    The line now holds the settings used; the ranking CLIP and counts have a line of their own, and the generator's
    unused ones are said to be unused (results.json: generator.not_used, ranking)."""
    from eval.cli import evaluate
    from zoo.train import train

    H, T = dalle_helpers, train_helpers
    dalle_cfg = train_cfg(*T.tiny_dalle(H, tmp_path / "dalle"))
    train(dalle_cfg)
    own_clip, eval_clip = H.tiny_clip_ckpt(tmp_path / "own.ckpt"), H.tiny_clip_ckpt(tmp_path / "eval.ckpt", seed=1)
    overrides = [
        "generator=dalle",
        f"generator.dalle_ckpt={T.last_ckpt(dalle_cfg)}",
        f"generator.clip_ckpt={own_clip}",
        "generator.n_candidates=6",
        f"clip.checkpoint={eval_clip}",
        "protocol.n=4",
        f"protocol.resolution={H.RESOLUTION}",
        "metrics=[clip_score]",
        "ablations=[rerank]",
        "rerank.candidates=[1,2]",
        "progress=false",
        "logger=none",
    ]
    saved = evaluate(compose_eval_cfg(tmp_path, overrides))
    md = (tmp_path / "run" / "results.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("- generator: `dalle`"))
    assert "dalle_ckpt" in line and "n_candidates" not in line and "clip_ckpt" not in line
    assert f"- candidates ranked by zoo-eval's CLIP (clip.checkpoint={eval_clip}; `{saved['clip']}`)" in md
    assert "rerank.candidates=[1, 2]" in md
    unused = f"generator.clip_ckpt={own_clip}, generator.n_candidates=6"
    assert f"not used by zoo-eval (it draws the candidates and ranks them with its own CLIP): {unused}" in md
    assert saved["generator"]["not_used"] == {"clip_ckpt": str(own_clip), "n_candidates": 6}
    assert saved["ranking"]["rerank.candidates"] == [1, 2] and "clip" not in saved["training"]
