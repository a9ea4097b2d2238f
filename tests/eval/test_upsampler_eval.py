"""python -m eval.upsampler on a tiny upsampler checkpoint (random weights, 8 -> 32 px), a tiny CLIP and a judge trained
for two steps: files written, the identity row handled, the bicubic row equal to a direct torchmetrics call."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from eval import upsampler as U


def _tiny_upsampler_ckpt(path, corruption: str = "blur", seed: int = 0):
    """A zoo-train-like checkpoint of the ``tiny`` upsampler preset (32 px target, x4) with random weights."""
    from zoo.checkpoint import atomic_torch_save
    from zoo.models.upsampler.lit import UpsamplerLit

    torch.manual_seed(seed)
    lit = UpsamplerLit(preset="tiny", corruption=corruption)
    atomic_torch_save(
        {
            "zoo_component": "upsampler",
            "hyper_parameters": dict(lit.hparams),
            "state_dict": lit.state_dict(),
            "global_step": 7,
        },
        path,
    )
    return path


def _ckpt(tmp_path, run: str, corruption: str, seed: int = 0):
    d = tmp_path / run / "checkpoints"
    d.mkdir(parents=True, exist_ok=True)
    return _tiny_upsampler_ckpt(d / "last.ckpt", corruption, seed)


COMMON = ["--n", "4", "--steps", "2", "--batch-size", "3", "--judge-steps", "2", "--judge-batch-size", "4"]


def test_report_files_identity_and_bicubic_match_torchmetrics(tmp_path, dalle_helpers):
    blur = _ckpt(tmp_path, "up_blur", "blur")
    bsr = _ckpt(tmp_path, "up_bsr", "bsr", seed=1)
    clip = dalle_helpers.tiny_clip_ckpt(tmp_path / "clip.ckpt")
    out = tmp_path / "report"
    argv = [str(blur), str(bsr), "--out", str(out), "--clip", str(clip), "--judge-dir", str(tmp_path / "judge")]
    res = U.main(argv + COMMON + ["--inputs", "clean", "blur", "--no-progress"])

    # files
    for f in ("results.json", "results.md", "strip.png", "strip_blur.png"):
        assert (out / f).is_file(), f
    saved = json.loads((out / "results.json").read_text())  # strict JSON: no Infinity / NaN
    assert saved["data"]["high_resolution"] == 32 and saved["data"]["low_resolution"] == 8
    assert [c["corruption"] for c in saved["checkpoints"]] == ["blur", "bsr"]
    assert [c["sample_steps"] for c in saved["checkpoints"]] == [2, 2] and saved["checkpoints"][0]["global_step"] == 7
    assert list(saved["inputs"]) == ["clean", "blur"]
    assert len(list((tmp_path / "judge").glob("shapes_judge_v*_32px_2x4_j*.pt"))) == 1  # zoo-eval's cache name
    from PIL import Image

    w, h = Image.open(out / "strip.png").size
    assert (w, h) == (5 * 32 + 6 * 2, 4 * 32 + 5 * 2)  # low | bicubic | 2 upsamplers | real, 4 scenes

    rows = {r["label"]: r for r in res["inputs"]["clean"]["rows"]}
    assert list(rows)[0] == "bicubic" and list(rows)[-1] == "real (identity)"
    assert {r["method"] for r in rows.values()} == {"bicubic", "upsampler", "real"}

    # the identity row: PSNR infinite (null in JSON, "inf" in markdown), SSIM 1, FD_CLIP 0
    real = rows["real (identity)"]
    assert real["psnr"] is None and real["psnr_inf"] == 4 and real["psnr_finite"] is None
    assert real["ssim"] == pytest.approx(1.0, abs=1e-5) and abs(real["fd_clip"]) < 1e-4
    saved_real = saved["inputs"]["clean"]["rows"][-1]
    assert saved_real["psnr"] is None and saved_real["psnr_inf"] == 4
    md = (out / "results.md").read_text()
    assert "| real (identity) | inf |" in md and "## Input: blur" in md

    # the bicubic row equals a direct torchmetrics call on the same images
    real_img, _, _ = U.render_scenes("test", 4, 32)
    from zoo.data.degradations import downsample

    bic = F.interpolate(downsample(real_img, 4, "bicubic"), size=(32, 32), mode="bicubic", align_corners=False)
    bic = bic.clamp(-1, 1)
    p, t = (bic + 1) / 2, (real_img + 1) / 2
    assert rows["bicubic"]["psnr"] == pytest.approx(float(peak_signal_noise_ratio(p, t, data_range=1.0, dim=(1, 2, 3))))
    assert rows["bicubic"]["ssim"] == pytest.approx(float(structural_similarity_index_measure(p, t, data_range=1.0)))
    assert math.isfinite(rows["bicubic"]["psnr"]) and rows["bicubic"]["psnr"] > 10

    # every computed metric is there; the upsampler rows carry their speed and the checks compare with bicubic
    for r in rows.values():
        assert {"ssim", "fd_clip", "prompt_fidelity", "attribute_accuracy", "attr_shape", "attr_count"} <= set(r)
    ups = [r for r in rows.values() if r["method"] == "upsampler"]
    assert len(ups) == 2 and all(r["sec_per_image"] > 0 and math.isfinite(r["psnr"]) for r in ups)
    assert set(res["inputs"]["clean"]["checks"]) == {r["label"] for r in ups}
    assert "beats_bicubic_fd_clip" in res["inputs"]["clean"]["checks"][ups[0]["label"]]
    # the blur inputs differ from the clean ones (the training corruption), and so does bicubic's score
    assert res["inputs"]["blur"]["rows"][0]["psnr"] != rows["bicubic"]["psnr"]


def test_identity_psnr_is_handled_directly():
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    m = U.pixel_metrics(x, x)
    assert m["psnr"] is None and m["psnr_inf"] == 3 and m["ssim"] == pytest.approx(1.0, abs=1e-5)
    y = x.clone()
    y[0] = (y[0] + 0.1).clamp(-1, 1)  # one image differs: mean over the other two is still inf
    m = U.pixel_metrics(y, x)
    assert m["psnr"] is None and m["psnr_inf"] == 2 and math.isfinite(m["psnr_finite"]) and m["psnr_finite"] > 20


def test_upsampler_outputs_do_not_depend_on_the_batch_size(tmp_path):
    lit, step = U.load_upsampler(str(_ckpt(tmp_path, "run", "blur")))
    assert step == 7
    low = torch.rand(4, 3, 8, 8) * 2 - 1
    x_T = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a, _ = U.run_upsampler(lit, low, x_T, steps=2, batch_size=1)
    b, _ = U.run_upsampler(lit, low, x_T, steps=2, batch_size=4)
    assert a.shape == (4, 3, 32, 32) and torch.allclose(a, b, atol=1e-5)


def test_the_upsamplers_step_is_read_without_its_weights_a_second_time(tmp_path):
    """load_upsampler read the whole checkpoint a second time for its global_step (a paper upsampler's GBs): now
    memory-mapped (zoo.checkpoint.peek_checkpoint), the bytes read stay near one file's size, not two."""
    from pathlib import Path

    io = Path("/proc/self/io")
    if not io.is_file():
        pytest.skip("needs Linux's /proc/self/io to count the bytes read")

    def bytes_read() -> int:
        return int(next(line for line in io.read_text().splitlines() if line.startswith("rchar:")).split()[1])

    path = _ckpt(tmp_path, "run", "blur")
    ck = torch.load(path, weights_only=True)
    ck["optimizer_states"] = [{"big": torch.ones(16 << 20)}]  # 64 MB that only a whole load reads
    torch.save(ck, path)
    size = path.stat().st_size
    before = bytes_read()
    lit, step = U.load_upsampler(str(path))
    assert step == 7
    assert bytes_read() - before < 1.5 * size  # two whole loads read it twice


def test_one_row_per_tile_mode(tmp_path):
    ckpt = _ckpt(tmp_path, "run", "blur")
    argv = [str(ckpt), "--clip", "none", "--no-judge", "--out", str(tmp_path / "o"), "--no-progress"]
    res = U.main(argv + COMMON + ["--tile", "0", "train_crop", "--tile-overlap", "4"])
    rows = res["inputs"]["clean"]["rows"]
    labels = [r["label"] for r in rows if r["method"] == "upsampler"]
    assert labels == ["upsampler (blur, run), whole image", "upsampler (blur, run), 8 px tiles, overlap 4"]
    assert res["sampling"]["tiles"] == ["0", "train_crop"]


def test_user_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        U.main([str(tmp_path / "missing.ckpt"), "--no-progress"])
    assert e.value.code == 2 and "upsampler checkpoint not found" in capsys.readouterr().err
    ckpt = _ckpt(tmp_path, "run", "blur")
    with pytest.raises(SystemExit) as e:  # render needs a low side the world renders (8 px is not)
        U.main([str(ckpt), "--inputs", "render", "--clip", "none", "--no-judge", "--out", str(tmp_path / "o")] + COMMON)
    assert e.value.code == 2 and "--inputs render" in capsys.readouterr().err


def test_judge_cell_reads_a_finer_view(tmp_path):
    """--judge-cell 32: a judge whose network reads a 96 px view. Detail that exists only above 48 px (a one-pixel
    checkerboard at 96 px, which the 48 px view averages to flat grey) reaches it and not the default judge; it is
    saved and loaded with its cell (old files, without one, load as 16) and cached under its own name."""
    from eval.judge import ShapesJudge, Vocab, load_judge, save_judge

    torch.manual_seed(0)
    vocab = Vocab.from_world()
    coarse, fine = ShapesJudge(vocab, width=16).eval(), ShapesJudge(vocab, width=16, cell=32).eval()
    assert len(coarse.stem) == 0 and len(fine.stem) == 3  # one conv + GELU + pool at 32 px per cell
    checker = (torch.arange(96).view(1, -1) + torch.arange(96).view(-1, 1)) % 2 * 2.0 - 1  # +-1, period 2 px
    flat = torch.zeros(1, 3, 96, 96)
    textured = checker.expand(1, 3, 96, 96).clone()
    with torch.no_grad():
        for judge, sees in ((coarse, False), (fine, True)):
            a, b = judge(flat), judge(textured)
            assert a["shape"].shape == (1, 9, len(vocab.shapes) + 1) and a["background"].shape[0] == 1
            differs = any(not torch.allclose(a[k], b[k], atol=1e-5) for k in a)
            assert differs == sees, (judge.cell, differs)
    for bad in (8, 24, 48):
        with pytest.raises(ValueError, match="cell"):
            ShapesJudge(vocab, cell=bad)
    # save / load keep the cell; a file from before the option loads as a 16 px-cell judge
    save_judge(fine, tmp_path / "fine.pt")
    again = load_judge(tmp_path / "fine.pt")
    assert again.cell == 32 and torch.allclose(again(textured)["shape"], fine(textured)["shape"], atol=1e-6)
    save_judge(coarse, tmp_path / "coarse.pt")
    old = torch.load(tmp_path / "coarse.pt", weights_only=True)
    del old["cell"]
    torch.save(old, tmp_path / "old.pt")
    assert load_judge(tmp_path / "old.pt").cell == 16
    # the report: its own cached file and the 96 px view recorded
    ckpt = _ckpt(tmp_path, "run", "blur")
    argv = [str(ckpt), "--clip", "none", "--out", str(tmp_path / "o"), "--judge-dir", str(tmp_path / "j")]
    res = U.main(argv + COMMON + ["--judge-cell", "32", "--no-progress"])
    assert res["judge"]["input_side"] == 96 and "_cell32_" in res["judge"]["path"]
    assert [p.name for p in (tmp_path / "j").glob("*.pt")] == [Path(res["judge"]["path"]).name]
    with pytest.raises(SystemExit) as e:
        U.main(argv + COMMON + ["--judge-cell", "24", "--no-progress"])
    assert e.value.code == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--inputs", "clean", "render"], r"--inputs render \(the upsamplers' low side is 8 px\)"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--eta", "-1"], "--eta must be a finite number >= 0"),
        (["--eta", "nan"], "--eta must be a finite number >= 0"),  # passed "< 0": ran on
        (["--judge-resolution", "20"], "--judge-resolution: .* not 20"),
    ],
)
def test_bad_options_fail_before_any_work(tmp_path, capsys, monkeypatch, extra, message):
    """--inputs clean render sampled every upsampler on the clean inputs (and wrote strip.png) before the render
    mode found that the world cannot render 8 px scenes; --batch-size 0 / --steps 0 were a ValueError traceback after
    the judge had trained, --judge-resolution 20 named data.resolution (not an option here) after logging 'training
    the judge', --eta -1 or nan ran. Each is now exit 2 with the option named, before a judge, a CLIP or a sample."""
    from zoo.models.upsampler.lit import UpsamplerLit

    def no(*a, **k):
        raise AssertionError("work started before the options were checked")

    monkeypatch.setattr(UpsamplerLit, "upsample", no)
    monkeypatch.setattr(U, "load_judge", no)
    ckpt = _ckpt(tmp_path, "run", "blur")
    out = tmp_path / "o"
    argv = [str(ckpt), "--clip", "none", "--out", str(out), "--judge-dir", str(tmp_path / "j"), "--no-progress"]
    with pytest.raises(SystemExit) as e:
        U.main(argv + ["--n", "4"] + extra)
    assert e.value.code == 2 and re.search(message, capsys.readouterr().err)
    assert not out.exists()


def test_a_corrupt_checkpoint_or_clip_file_is_a_one_line_error(tmp_path, capsys):
    """Only ConfigError was reported as 'error: ...' (exit 2): a corrupt upsampler or CLIP file (zoo.checkpoint's
    CorruptCheckpointError, a user error for every other entry point) was a traceback with exit 1."""
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    good = _ckpt(tmp_path, "run", "blur")
    for argv in ([str(bad), "--clip", "none"], [str(good), "--clip", str(bad)]):
        with pytest.raises(SystemExit) as e:
            U.main(argv + ["--no-judge", "--out", str(tmp_path / "o"), "--no-progress"] + COMMON)
        assert e.value.code == 2 and f"error: {bad} is corrupt" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        U.main([str(good), "--threads", "0", "--clip", "none", "--no-judge", "--out", str(tmp_path / "o")] + COMMON)
    assert e.value.code == 2 and "--threads must be >= 1" in capsys.readouterr().err


def test_an_unreadable_cached_judge_names_the_cache_fix(tmp_path, capsys):
    """A truncated judge cache file said 'use another checkpoint (e.g. the run's last.ckpt or a step*.ckpt)' (not the
    fix for a cache) and a torch file of another layout was a KeyError traceback; both now name the file and the
    fix (delete it to retrain, or another --judge-dir)."""
    ckpt = _ckpt(tmp_path, "run", "blur")
    jdir = tmp_path / "j"
    jdir.mkdir()
    cached = U.judge_path(jdir, 32, 2, 4)
    argv = [str(ckpt), "--clip", "none", "--judge-dir", str(jdir), "--out", str(tmp_path / "o"), "--no-progress"]
    for content in (b"truncated", None):
        if content is None:
            torch.save({"state_dict": {}}, cached)
        else:
            cached.write_bytes(content)
        with pytest.raises(SystemExit) as e:
            U.main(argv + COMMON)
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"the cached shapes judge {cached} cannot be read" in err and "delete it" in err


@pytest.mark.parametrize("n_averaged,expect", [(0, "trained"), (5, "average")])
def test_a_checkpoint_saved_before_its_ema_started_is_scored_with_its_trained_weights(tmp_path, n_averaged, expect):
    """The upsampler experiments average weights from step 100 (callbacks.ema.update_starting_at_step). A checkpoint
    written before that holds the INITIAL weights as its "average" in ``state_dict``; eval.upsampler scored those (a
    random network) while zoo-sample and the unCLIP pipeline take the trained ones. Now the same rule as theirs."""
    from zoo.checkpoint import atomic_torch_save, safe_load

    path = _ckpt(tmp_path, "run", "blur")
    ckpt = safe_load(path)
    trained = {k: v + 0.5 if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    ckpt.update(current_model_state=trained, averaging_state={"n_averaged": torch.tensor(n_averaged)})
    atomic_torch_save(ckpt, path)
    lit, step = U.load_upsampler(str(path))
    want = trained if expect == "trained" else ckpt["state_dict"]
    for k, v in lit.state_dict().items():
        assert torch.equal(v, want[k]), k
    assert step == 7


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_native_bf16_warns_before_sampling(tmp_path, monkeypatch, caplog, native):
    """--bf16 (the README's measured commands use it) on an AVX2-only CPU ran the emulated bf16, 20-100x slower than
    fp32, without a word; it now warns before anything loads, naming --bf16 and the fix. Not on a native-bf16 CPU."""
    import inspect
    import logging

    from zoo.precision import ENV_OVERRIDE

    monkeypatch.setenv(ENV_OVERRIDE, "1" if native else "0")
    used = []
    real = U.run_upsampler

    def spy(*a, **k):
        bf16 = inspect.signature(real).bind(*a, **k).arguments.get("bf16", False)
        used.append((bf16, "--bf16" in caplog.text))  # (bf16 sampling, warned before it)
        return real(*a, **k)

    monkeypatch.setattr(U, "run_upsampler", spy)
    ckpt = _ckpt(tmp_path, "run", "blur")
    argv = [str(ckpt), "--clip", "none", "--no-judge", "--out", str(tmp_path / "o"), "--no-progress", "--bf16"]
    with caplog.at_level(logging.WARNING):
        res = U.main(argv + COMMON)
    assert res["sampling"]["bf16"] is True and used and all(bf16 for bf16, _ in used)  # the explicit option holds
    if native:
        assert "native bf16" not in caplog.text
    else:
        assert all(warned for _, warned in used)
        assert "--bf16 on a CPU without native bf16" in caplog.text and "fix: drop --bf16" in caplog.text
