"""eval.leaderboard over synthetic zoo-eval results (rows, values, markdown, JSON, PNG; Hydra multirun dirs; --by
sweeps; errors that name the path), the conf/eval/experiment/leaderboard rows composing to what they name, and one
end-to-end pass: two zoo-eval runs of a leaderboard row (with the real_blurred stand-in generator) into a leaderboard.
CPU, no network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.leaderboard import (
    build_leaderboard,
    find_runs,
    leaderboard_row,
    main,
    markdown_leaderboard,
    write_leaderboard,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_results(
    name: str,
    fidelity: float,
    clip_score: float,
    fd_clip: float,
    distance: float | None = 0.2,
    sec: float | None = 0.5,
    params: dict | None = None,
    training: dict | None = None,
) -> dict:
    """A results.json as zoo-eval writes it (the keys the leaderboard reads), blur rows at radius 0 and 2."""
    r0 = {
        "radius": 0.0,
        "fd_clip": fd_clip,
        "clip_score": clip_score,
        "prompt_fidelity": fidelity,
        "attribute_accuracy": 0.8,
        "attributes": {"shape": 0.7, "colour": 0.9, "size": 0.8, "position": 0.85, "background": 0.75, "count": 0.6},
    }
    blurred = {**r0, "radius": 2.0, "fd_clip": 99.0, "prompt_fidelity": 0.0}  # must not be read
    out = {
        "task_name": f"leaderboard_{name}",
        "protocol": {"dataset": "shapes", "split": "val", "n": 256, "resolution": 32},
        "generator": {"name": name, "target": f"zoo.pipelines.{name}", "params": params or {}},
        "blur_candidates": 1,
        "blur": [r0, blurred],
        "cpu": "cpu: Test CPU | torch capability AVX2 | native bf16: no",
        "training": training or {},
    }
    if distance is not None:
        out["diversity"] = {"pairwise_clip_distance": distance, "captions": 32, "samples": 4, "judge_distinct": 0.5}
    if sec is not None:
        out["sec_per_image"], out["sec_per_image_from"] = sec, "blur"
    return out


def write_run(folder: Path, results: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results))
    return folder


@pytest.fixture
def four_rows(tmp_path):
    runs = tmp_path / "eval" / "leaderboard"
    dalle = write_run(
        runs / "dalle",
        fake_results(
            "dalle", 0.25, 24.0, 0.31, 0.12, 0.05, training={"dalle": {"global_step": 2000, "cpu": "cpu: Train CPU"}}
        ),
    )
    glide = write_run(runs / "glide", fake_results("glide", 0.5, 26.5, 0.2, 0.08, 1.5, {"guidance_scale": 3}))
    diff = write_run(runs / "unclip_diffusion", fake_results("unclip", 0.4, 25.0, 0.25, 0.2, 0.9))
    ar = write_run(runs / "unclip_ar", fake_results("unclip", 0.35, 24.5, 0.27, 0.21, None))
    return [dalle, glide, diff, ar]


def test_rows_values_and_files(four_rows, tmp_path):
    rows = build_leaderboard(four_rows)
    assert [r["label"] for r in rows] == ["dalle", "glide", "unclip (unclip_diffusion)", "unclip (unclip_ar)"]
    d = rows[0]
    # the radius-0 blur row, not the blurred one
    assert (d["prompt_fidelity"], d["clip_score"], d["fd_clip"]) == (0.25, 24.0, 0.31)
    assert d["attributes"]["shape"] == 0.7 and d["blur_candidates"] == 1
    assert (d["pairwise_clip_distance"], d["judge_distinct"], d["sec_per_image"]) == (0.12, 0.5, 0.05)
    assert (
        d["training"] == {"dalle": {"global_step": 2000, "cpu": "cpu: Train CPU"}}
        and d["train_cpu"] == "cpu: Train CPU"
    )
    assert rows[3]["sec_per_image"] is None and rows[1]["train_cpu"] is None

    paths = write_leaderboard(rows, tmp_path / "board", title="Shapes leaderboard")
    saved = json.loads((tmp_path / "board" / "leaderboard.json").read_text())
    assert saved["title"] == "Shapes leaderboard" and [r["label"] for r in saved["rows"]] == [r["label"] for r in rows]
    assert saved["rows"][1]["fd_clip"] == 0.2 and saved["rows"][2]["pairwise_clip_distance"] == 0.2
    assert saved["columns"] == [
        "prompt_fidelity",
        "attribute_accuracy",
        "clip_score",
        "fd_clip",
        "pairwise_clip_distance",
        "judge_distinct",
        "sec_per_image",
    ]
    assert saved["plot_panels"] == [f"bar:{c}" for c in saved["columns"]]  # no --by: bars, no scatter
    md = paths["md"].read_text()
    assert md.startswith("# Shapes leaderboard\n")
    assert (
        "| run | prompt fidelity ↑ | attribute accuracy ↑ | CLIP score ↑ | FD_CLIP ↓ | pairwise CLIP distance ↑ | "
        "distinct judge readings ↑ | s / image ↓ |"
    ) in md
    assert "| glide | 50.0% | 80.0% | 26.50 | 0.2000 | 0.0800 | 50.0% | 1.5 |" in md
    assert "| unclip (unclip_ar) | 35.0% | 80.0% | 24.50 | 0.2700 | 0.2100 | 50.0% | – |" in md
    assert "| run | shape ↑ | colour ↑ | size ↑ | position ↑ | background ↑ | count ↑ |" in md
    assert "- protocol: shapes val, 256 captions at 32 px" in md and "one image per caption" in md
    assert "dalle 2000 steps" in md and "training CPU: cpu: Train CPU" in md and "on cpu: Test CPU" in md
    png = paths["png"].read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 5000


def test_labels_option_and_label_key(four_rows):
    rows = build_leaderboard(four_rows, labels=["DALL·E", "GLIDE", "unCLIP diffusion", "unCLIP AR"])
    assert [r["label"] for r in rows] == ["DALL·E", "GLIDE", "unCLIP diffusion", "unCLIP AR"]
    rows = build_leaderboard(four_rows, label_key="task_name")
    assert rows[0]["label"] == "leaderboard_dalle"
    assert rows[3]["label"] == "leaderboard_unclip (unclip_ar)"  # two runs share it: told apart by their run dirs
    with pytest.raises(ValueError, match=r"3 labels for 4 runs .*one label per run"):
        build_leaderboard(four_rows, labels=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"dalle/results.json has no 'generator.nope' .*--labels"):
        build_leaderboard(four_rows, label_key="generator.nope")


def test_multirun_dir_expands_and_by_sorts_plots_and_scatters(tmp_path):
    sweep = tmp_path / "multiruns" / "2026-01-01_00-00-00"
    scales = [5.0, 1.0, 3.0]  # job order differs from the key's order
    for job, g in enumerate(scales):
        write_run(
            sweep / str(job),
            fake_results("glide", 0.3 + 0.05 * g, 25 + g, 0.3 - 0.02 * g, 0.3 - 0.04 * g, 1.0, {"guidance_scale": g}),
        )
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    assert find_runs([sweep]) == [sweep / "0", sweep / "1", sweep / "2"]
    by = "generator.params.guidance_scale"
    rows = build_leaderboard([sweep], by=by)
    assert [r["by"] for r in rows] == [1.0, 3.0, 5.0]
    assert [r["label"] for r in rows] == ["glide guidance_scale=1", "glide guidance_scale=3", "glide guidance_scale=5"]
    assert [r["pairwise_clip_distance"] for r in rows] == pytest.approx([0.26, 0.18, 0.10])
    paths = write_leaderboard(rows, tmp_path / "out", by=by)
    saved = json.loads(paths["json"].read_text())
    assert saved["by"] == by
    assert saved["plot_panels"][-1] == "scatter:pairwise_clip_distance:prompt_fidelity"
    assert saved["plot_panels"][0] == "line:prompt_fidelity"
    md = paths["md"].read_text()
    assert "| run | guidance_scale | prompt fidelity ↑ |" in md and "| glide guidance_scale=3 | 3 | 45.0% |" in md
    assert paths["png"].read_bytes()[:8] == PNG_MAGIC


def test_by_must_be_a_number_in_every_run(tmp_path):
    a = write_run(tmp_path / "a", fake_results("glide", 0.4, 25, 0.2, params={"guidance_scale": 3}))
    b = write_run(tmp_path / "b", fake_results("glide", 0.4, 25, 0.2, params={"guidance_scale": None}))
    with pytest.raises(ValueError, match=r"b/results.json: --by generator.params.guidance_scale is None, not a number"):
        build_leaderboard([a, b], by="generator.params.guidance_scale")
    with pytest.raises(ValueError, match=r"a/results.json has no 'generator.params.steps' \(missing 'steps'\)"):
        build_leaderboard([a], by="generator.params.steps")


def test_missing_results_are_errors_that_name_the_path(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=rf"{empty} has no results.json .*fix: run zoo-eval there first"):
        find_runs([empty])
    with pytest.raises(FileNotFoundError, match=r"no_such_dir: no such run directory"):
        find_runs([tmp_path / "no_such_dir"])
    parent = tmp_path / "leaderboard"
    write_run(parent / "dalle", fake_results("dalle", 0.2, 24, 0.3))
    write_run(parent / "glide", fake_results("glide", 0.2, 24, 0.3))
    with pytest.raises(FileNotFoundError, match=r"its subfolders dalle, glide hold one: pass them"):
        find_runs([parent])
    sweep = tmp_path / "sweep"
    write_run(sweep / "0", fake_results("glide", 0.2, 24, 0.3))
    (sweep / "1").mkdir()  # a job that failed
    with pytest.raises(FileNotFoundError, match=rf"job\(s\) {sweep / '1'} have no results.json"):
        find_runs([sweep])
    # a results.json file stands for its run dir
    assert find_runs([parent / "dalle" / "results.json"]) == [parent / "dalle"]


def test_no_blur_row_at_radius_0_leaves_the_fidelity_empty():
    res = fake_results("glide", 0.4, 25, 0.2)
    res["blur"] = res["blur"][1:]  # radius 2 only
    row = leaderboard_row(res, Path("/runs/glide"))
    assert row["prompt_fidelity"] is None and row["fd_clip"] is None and row["pairwise_clip_distance"] == 0.2
    md = markdown_leaderboard([row])
    assert "none of these runs has a blur row at radius 0" in md


def test_command_line(four_rows, tmp_path, capsys):
    out = tmp_path / "cli_out"
    paths = main([*map(str, four_rows), "--out", str(out), "--labels", "A,B,C,D", "--title", "T"])
    assert set(paths) == {"md", "json", "png"} and all(p.is_file() for p in paths.values())
    printed = capsys.readouterr().out
    assert printed.startswith("# T\n") and "| A | 25.0% |" in printed and "wrote " in printed
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "nowhere"), "--out", str(out)])
    assert e.value.code == 2 and "nowhere: no such run directory" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ experiment rows
def _compose_raw(overrides: list[str]) -> dict:
    """conf/eval/eval.yaml with the Hydra node kept and nothing resolved (the checkpoints need not exist)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="conf.eval", version_base="1.3"):
        cfg = compose("eval", overrides=overrides, return_hydra_config=True)
    return OmegaConf.to_container(cfg, resolve=False)


ROWS = {
    "dalle": ("zoo.pipelines.dalle.DallePipeline.from_checkpoints", {"dalle_ckpt": "demo/dalle"}),
    "glide": (
        "zoo.pipelines.glide.GlidePipeline.from_checkpoints",
        {"glide_ckpt": "leaderboard/glide", "guidance_scale": 3, "steps": 25, "sampler": "ddpm"},
    ),
    "unclip_diffusion": (
        "zoo.pipelines.unclip.UnclipPipeline.from_checkpoints",
        {
            "prior_ckpt": "leaderboard/prior",
            "decoder_ckpt": "leaderboard/decoder",
            "clip_ckpt": "demo/clip",
            "decoder_steps": 25,
            "decoder_sampler": "ddpm",  # as GLIDE's row: the same sampler on both diffusion decoders
        },
    ),
    "unclip_ar": (
        "zoo.pipelines.unclip.UnclipPipeline.from_checkpoints",
        {
            "prior_ckpt": "leaderboard/ar_prior",
            "decoder_ckpt": "leaderboard/decoder",
            "clip_ckpt": "demo/clip",
            "decoder_steps": 25,
            "decoder_sampler": "ddpm",  # as GLIDE's row: the same sampler on both diffusion decoders
        },
    ),
}


@pytest.mark.parametrize("row", sorted(ROWS))
def test_leaderboard_experiment_rows_compose(row, tmp_path):
    from tests.conftest import compose_cfg

    target, expect = ROWS[row]
    raw = _compose_raw([f"experiment=leaderboard/{row}"])
    assert raw["hydra"]["run"]["dir"] == f"${{paths.log_dir}}/eval/leaderboard/{row}"
    cfg = compose_cfg(tmp_path, [f"experiment=leaderboard/{row}"], module="conf.eval", name="eval")
    assert list(cfg.ablations) == ["blur", "diversity"]
    assert list(cfg.blur.radii) == [0] and cfg.blur.candidates == 1
    assert cfg.protocol._target_ == "eval.shapes_protocol.ShapesProtocol"
    assert (cfg.protocol.n, cfg.protocol.resolution) == (256, 32)
    assert (cfg.diversity.captions, cfg.diversity.samples) == (32, 4)
    assert cfg.generator._target_ == target
    for key, value in expect.items():
        if key.endswith("_ckpt"):  # resolved under paths.log_dir (tmp_path/logs here); need not exist to compose
            assert cfg.generator[key] == str(tmp_path / "logs" / value / "checkpoints" / "last.ckpt"), key
        else:
            assert cfg.generator[key] == value, key
    first = (Path(__file__).resolve().parents[2] / f"conf/eval/experiment/leaderboard/{row}.yaml").read_text()
    assert f"# zoo-eval experiment=leaderboard/{row}\n" in "\n".join(first.splitlines()[:2]) + "\n"


def test_a_leaderboard_row_runs_end_to_end_into_a_leaderboard(tmp_path, monkeypatch):
    """experiment=leaderboard/dalle with the real_blurred stand-in for the DALL·E: two blur radii as a --by sweep."""
    from omegaconf import open_dict

    from eval.cli import evaluate
    from tests.conftest import compose_cfg

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no Inception weights: fid/kid/is skipped
    fast = [
        "experiment=leaderboard/dalle",
        "generator=real_blurred",
        "generator.mismatch=0",
        "protocol.n=12",
        "diversity.captions=4",
        "diversity.samples=2",
        "metrics=[fd_clip,clip_score]",  # the judge's columns are test_cli's; this checks the plumbing
        "clip.checkpoint=null",
        "clip.arch=zoo-clip-tiny",
        "logger=none",
        "progress=false",
        "eval.is_splits=2",
    ]
    runs = []
    for radius in (2, 0):
        cfg = compose_cfg(tmp_path, fast + [f"generator.radius={radius}"], module="conf.eval", name="eval")
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "eval" / f"r{radius}")
            del cfg.generator["dalle_ckpt"]  # the row's DALL·E checkpoint key, meaningless to the stand-in
        evaluate(cfg)
        runs.append(tmp_path / "eval" / f"r{radius}")
    rows = build_leaderboard(runs, by="generator.params.radius")
    assert [r["by"] for r in rows] == [0.0, 2.0] and rows[0]["label"] == "real_blurred radius=0"
    for row, run in zip(rows, reversed(runs)):
        saved = json.loads((run / "results.json").read_text())
        assert row["fd_clip"] == saved["blur"][0]["fd_clip"] and row["sec_per_image"] == saved["sec_per_image"] > 0
        assert row["pairwise_clip_distance"] == pytest.approx(0.0, abs=1e-6)  # mismatch=0: seed-blind stand-in
    assert abs(rows[0]["fd_clip"]) < 1e-6 < rows[1]["fd_clip"]  # the unblurred real images are the real set
    paths = write_leaderboard(rows, tmp_path / "board", by="generator.params.radius")
    assert paths["png"].read_bytes()[:8] == PNG_MAGIC


def test_plots_show_shares_in_percent_as_the_tables_do(tmp_path, monkeypatch):
    """results.md / leaderboard.md print prompt fidelity and attribute accuracy in %; the PNGs plotted the same
    numbers on a bare 0-1 axis (0.0625 beside a table's 6.2%). Their panels now plot percent and say "(%)"."""
    import eval.leaderboard as lb
    import eval.report as report

    figures = []

    def keep(fig, path, title, fontsize=10):
        figures.append(fig)
        return Path(path)

    monkeypatch.setattr(report, "save_figure", keep)
    monkeypatch.setattr(lb, "save_figure", keep)
    rows = [
        {"radius": 0.0, "prompt_fidelity": 0.25, "attribute_accuracy": 0.8, "clip_score": 30.0},
        {"radius": 2.0, "prompt_fidelity": 0.125, "attribute_accuracy": 0.5, "clip_score": 20.0},
    ]
    report.plot_ablation(rows, "radius", "blur radius (σ, px)", "t", tmp_path / "blur.png")
    panels = {ax.get_title(): list(ax.lines[0].get_ydata()) for ax in figures[0].axes if ax.lines}
    assert panels["prompt fidelity ↑ (%)"] == pytest.approx([25.0, 12.5])
    assert panels["attribute accuracy ↑ (%)"] == pytest.approx([80.0, 50.0])
    assert panels["CLIP score ↑"] == pytest.approx([30.0, 20.0])  # not a share: unchanged

    sweep = tmp_path / "sweep"
    for job, g in enumerate([1.0, 3.0]):
        write_run(sweep / str(job), fake_results("glide", 0.1 * g, 25.0, 0.3, 0.2, 1.0, {"guidance_scale": g}))
    by = "generator.params.guidance_scale"
    lb.plot_leaderboard(build_leaderboard([sweep], by=by), tmp_path / "lb.png", by=by)
    axes = {ax.get_title(): ax for ax in figures[1].axes if ax.lines}
    assert list(axes["prompt fidelity ↑ (%)"].lines[0].get_ydata()) == pytest.approx([10.0, 30.0])
    scatter = next(ax for t, ax in axes.items() if t.startswith("fidelity vs diversity"))
    assert scatter.get_ylabel() == "prompt fidelity ↑ (%)"
    assert list(scatter.lines[0].get_ydata()) == pytest.approx([10.0, 30.0])


def test_a_sweep_of_rerank_only_rows_gives_its_table(tmp_path):
    """zoo-eval -m experiment=dalle1/rerank_n1,dalle1/rerank_n2 (ablations: [rerank], no blur row): each job's
    unblurred rerank row is its fidelity; the leaderboard was empty (no fidelity column, 'no blur row at radius 0')."""
    sweep = tmp_path / "multirun"
    for job, n, fidelity in ((0, 1, 0.2), (1, 2, 0.3)):
        res = fake_results("dalle", 0.0, 20.0, 0.5, distance=None, sec=0.1)
        del res["blur"], res["blur_candidates"]
        res["rerank"] = [
            {"candidates": n, "rerank_cos": 0.3, "blur_radius": 0.0, "prompt_fidelity": fidelity, "clip_score": 30.0}
        ]
        write_run(sweep / str(job), res)
    rows = build_leaderboard([sweep])
    assert [(r["label"], r["prompt_fidelity"], r["blur_candidates"]) for r in rows] == [
        ("dalle, best of 1", 0.2, 1),
        ("dalle, best of 2", 0.3, 2),
    ]
    md = markdown_leaderboard(rows)
    assert "the unblurred images (rerank row), the CLIP-best of 1 / 2 candidates" in md
    assert "| dalle, best of 2 | 30.0% |" in md
    # a rerank row of blurred images (rerank.blur_radius=2) is not the run's fidelity
    res["rerank"][0]["blur_radius"] = 2.0
    assert leaderboard_row(res, sweep / "1")["prompt_fidelity"] is None


@pytest.mark.parametrize(
    "results, says",
    [
        ("[]", "it holds a JSON list, not an object"),
        ('{"generator": {"name": "g"}, "blur": {"0": {"fid": 1.0}}}', "'blur' is not a list of rows"),
        ('{"generator": {"name": "g"}, "blur": [{"radius": 0, "fid": "n/a"}]}', "non-numeric ['fid']"),
        ('{"generator": {"name": "g"}, "diversity": [0.3]}', "'diversity' is a list, not an object"),
        ('{"generator": {"name": "g"}, "training": {"d": {"train_minutes": "5m"}}}', "training.d has non-numeric"),
    ],
)
def test_results_json_of_another_layout_is_named(tmp_path, capsys, results, says):
    """A results.json of another layout (an older zoo-eval's, a hand edit) was an AttributeError / TypeError /
    "Unknown format code" traceback naming no file; now "error: <file> is not a zoo-eval results file ...: <what>"."""
    from eval.leaderboard import main

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text(results)
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "run"), "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'run' / 'results.json'} is not a zoo-eval results file" in err and says in err.replace(
        "\n", " "
    )
    assert "rerun zoo-eval" in err


def test_protocol_variants_of_the_same_size_are_not_comparable(tmp_path):
    # shapes with short vs descriptive captions read alike ("shapes val, 256 captions at 32 px"): no warning
    rows = []
    for style in ("descriptive", "short"):
        res = fake_results(f"glide_{style}", 0.4, 25.0, 0.2)
        res["protocol"]["protocol"] = f"shapes-v2;seed=0;style={style};objects=1-3;render=32"
        rows.append(leaderboard_row(res, tmp_path / style))
    md = markdown_leaderboard(rows)
    assert "not comparable" in md and "style=short" in md and "style=descriptive" in md
    same = [leaderboard_row(fake_results("a", 0.4, 25.0, 0.2), tmp_path / "a")] * 2
    assert "not comparable" not in markdown_leaderboard(same)


def test_rows_scored_by_different_clips_are_flagged(tmp_path):
    a, b = fake_results("a", 0.4, 25.0, 0.2), fake_results("b", 0.4, 25.0, 0.2)
    a["clip"], b["clip"] = "clip:zoo@1234", "clip:ViT-B-32:openai"
    md = markdown_leaderboard([leaderboard_row(a, tmp_path / "a"), leaderboard_row(b, tmp_path / "b")])
    assert "scored by different CLIPs" in md
    b["clip"] = a["clip"]
    md = markdown_leaderboard([leaderboard_row(a, tmp_path / "a"), leaderboard_row(b, tmp_path / "b")])
    assert "different CLIPs" not in md


def test_rows_scored_with_different_inception_weights_are_flagged_and_old_files_read_as_unknown(tmp_path):
    """results.json did not say which Inception weights scored FID / KID / IS: two runs scored with different weights
    (random test weights, a fine-tune saved under the official name) sat side by side without a word, while other
    CLIPs and judges were flagged. zoo-eval now records the file's name and full sha256; older files still load."""

    def run(name, sha=None, fid=12.0):
        res = fake_results(name, 0.4, 25.0, 0.2)
        res["blur"][0]["fid"] = fid
        if sha is not None:
            res["inception"] = {
                "file": "weights-inception-2015-12-05-6726825d.pth",
                "sha256": sha * 64,
                "extractor": f"inception-v3-compat@{sha * 8}",
            }
        return write_run(tmp_path / name, res)

    a, b, a2, old = run("a", "a"), run("b", "b"), run("a2", "a"), run("old")
    md = markdown_leaderboard(build_leaderboard([a, b]))
    assert "scored by different Inception weights" in md and "sha256 bbbbbbbbbbbbbbbb" in md
    assert "different Inception weights" not in markdown_leaderboard(build_leaderboard([a, a2]))
    rows = build_leaderboard([a, old])  # an older results.json without the record: read, shown as unknown
    assert rows[1]["inception_id"] is None and rows[1]["fid"] == 12.0
    md = markdown_leaderboard(rows)
    assert "different Inception weights" not in md and "Inception weights: unknown" in md
    assert "FID / KID / IS of old: Inception weights unknown" in md
    bad = fake_results("bad", 0.4, 25.0, 0.2)
    bad["inception"] = "inception-v3-compat@12345678"
    with pytest.raises(ValueError, match="'inception' is a str, not an object"):
        build_leaderboard([write_run(tmp_path / "bad", bad)])
