"""trainer.precision=auto picks what the hardware runs fast; no config hard-codes bf16; bad values fail early."""

from __future__ import annotations

import logging
import platform
import re
from pathlib import Path

import pytest
import torch

import conf
from zoo import precision as zp
from zoo.errors import ConfigError

CONF = Path(conf.__file__).parent
EXPERIMENTS = sorted(
    str(p.relative_to(CONF / "experiment").with_suffix("")) for p in (CONF / "experiment").rglob("*.yaml")
)
TINY = [
    "model=dvae",
    "model.preset=tiny",
    "data=shapes",
    "data.train_size=8",
    "data.val_size=8",
    "data.test_size=8",
    "data.batch_size=8",
    "logger=csv",
    "trainer=cpu",
    "trainer.enable_progress_bar=false",
    "train=false",
    "test=false",
]


@pytest.fixture
def native(monkeypatch):
    def force(on: bool):
        monkeypatch.setenv(zp.ENV_OVERRIDE, "1" if on else "0")

    return force


def test_auto_follows_native_bf16_on_cpu(native):
    native(True)
    assert zp.cpu_has_native_bf16()
    prec, why = zp.resolve_precision("auto", "cpu")
    assert prec == "bf16-mixed" and "native bf16" in why
    native(False)
    assert not zp.cpu_has_native_bf16()
    prec, why = zp.resolve_precision("auto", "cpu")
    assert prec == "32-true" and "no native bf16" in why


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_auto_without_cuda(native):
    native(True)
    assert zp.resolve_precision("auto", "auto")[0] == "bf16-mixed"  # Lightning's auto falls back to the CPU
    assert zp.resolve_precision("auto", "gpu")[0] == "32-true"  # (Lightning then reports the missing GPU itself)
    assert zp.autocast_dtype("cuda") is None


@pytest.mark.parametrize("value", ["32-true", "bf16-mixed", "bf16-true", "16-mixed", "64-true", 32, "bf16"])
def test_explicit_values_pass_through(native, value):
    native(True)
    assert zp.resolve_precision(value, "cpu") == (value, "set explicitly")


def test_explicit_bf16_on_cpu_without_native_bf16_warns(native, caplog):
    native(False)
    with caplog.at_level(logging.WARNING, logger="zoo.precision"):
        assert zp.resolve_precision("bf16-mixed", "cpu")[0] == "bf16-mixed"
    assert "trainer.precision=auto" in caplog.text and "native bf16" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="zoo.precision"):
        zp.resolve_precision("32-true", "cpu")
        native(True)
        zp.resolve_precision("bf16-mixed", "cpu")
    assert caplog.text == ""


@pytest.mark.parametrize("bad", ["bf16-mix", "fp32", "half", 8])
def test_invalid_precision_lists_the_valid_values(bad):
    with pytest.raises(ConfigError) as e:
        zp.resolve_precision(bad, "cpu")
    msg = str(e.value)
    assert "auto" in msg and "32-true" in msg and "bf16-mixed" in msg and "fix: " in msg


def test_autocast_dtype_and_describe_cpu(native):
    native(True)
    assert zp.autocast_dtype("cpu") is torch.bfloat16 and zp.autocast_dtype(torch.device("cpu")) is torch.bfloat16
    assert "native bf16: yes" in zp.describe_cpu()
    native(False)
    assert zp.autocast_dtype("cpu") is None and zp.autocast_dtype("meta") is None
    line = zp.describe_cpu()
    assert "native bf16: no" in line and "capability" in line and "\n" not in line


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64", reason="reads /proc/cpuinfo")
def test_detection_reads_cpuinfo_flags(monkeypatch):
    monkeypatch.delenv(zp.ENV_OVERRIDE, raising=False)
    flags = Path("/proc/cpuinfo").read_text().split()
    assert zp.cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_fp32_attention_only_for_reduced_precision_on_cpu():
    assert zp.fp32_attention_preferred("cpu", torch.bfloat16)
    assert not zp.fp32_attention_preferred("cpu", torch.float32)
    assert not zp.fp32_attention_preferred("cuda", torch.bfloat16)


def test_no_config_hard_codes_bf16():
    """Every precision in conf/ is auto (trainer presets inherit it from trainer/default.yaml); no bf16 anywhere."""
    offenders = []
    for path in sorted(CONF.rglob("*.yaml")):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            m = re.match(r"\s*precision\s*:\s*(\S+)", code)
            if "bf16" in code or (m and m.group(1).strip("'\"") != "auto"):
                offenders.append(f"{path.relative_to(CONF)}:{i}: {line.strip()}")
    assert not offenders, "hard-coded precision (use auto):\n" + "\n".join(offenders)


@pytest.mark.parametrize("trainer", sorted(p.stem for p in (CONF / "trainer").glob("*.yaml")))
def test_every_trainer_preset_defaults_to_auto(train_cfg, trainer):
    assert train_cfg(f"trainer={trainer}").trainer.precision == "auto"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_defaults_to_auto(train_cfg, experiment):
    assert train_cfg(f"experiment={experiment}").trainer.precision == "auto"


def _built_trainer(train_cfg, monkeypatch, *overrides):
    """Run zoo.train.train without fitting (train=false test=false) and return the Trainer it built."""
    import zoo.train

    built = {}
    real = zoo.train.instantiate

    def spy(*args, **kw):
        obj = real(*args, **kw)
        if type(obj).__name__ == "Trainer":
            built["trainer"] = obj
        return obj

    monkeypatch.setattr(zoo.train, "instantiate", spy)
    zoo.train.train(train_cfg(*TINY, *overrides))
    return built["trainer"]


def test_train_resolves_auto_to_fp32_without_native_bf16(train_cfg, monkeypatch, native, caplog):
    native(False)
    with caplog.at_level(logging.INFO, logger="zoo.train"):
        trainer = _built_trainer(train_cfg, monkeypatch)
    assert trainer.precision == "32-true"
    assert "precision: 32-true (CPU has no native bf16" in caplog.text


def test_train_resolves_auto_to_bf16_with_native_bf16(train_cfg, monkeypatch, native, caplog):
    native(True)
    with caplog.at_level(logging.INFO, logger="zoo.train"):
        trainer = _built_trainer(train_cfg, monkeypatch)
    assert trainer.precision == "bf16-mixed"
    assert "precision: bf16-mixed (CPU has native bf16" in caplog.text


def test_train_keeps_an_explicit_precision(train_cfg, monkeypatch, native):
    native(True)
    assert _built_trainer(train_cfg, monkeypatch, "trainer.precision=32-true").precision == "32-true"


def test_invalid_precision_fails_before_training(train_cfg):
    from zoo.train import train

    cfg = train_cfg(*TINY[:-2], "trainer.precision=bf16-mix")
    with pytest.raises(ConfigError, match="valid: auto"):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_inception_autocast_auto_follows_the_cpu(native, tmp_path):
    from eval.features import INCEPTION_FILENAME, InceptionFeatures, make_random_inception_weights

    weights = make_random_inception_weights(tmp_path / INCEPTION_FILENAME)
    native(False)
    assert InceptionFeatures(weights, autocast_dtype="auto").autocast_dtype is None
    native(True)
    assert InceptionFeatures(weights, autocast_dtype="auto").autocast_dtype is torch.bfloat16


def test_bench_bf16_times_bf16_only_where_native_or_asked(monkeypatch, capsys):
    monkeypatch.setenv(zp.ENV_OVERRIDE, "0")  # an AVX2-only CPU: bf16 would be emulated
    assert zp.bench_bf16() is False
    assert "bf16 rows: skipped" in capsys.readouterr().out  # the benchmark says why its bf16 row is missing
    assert zp.bench_bf16(anyway=True) is True  # --bf16-anyway times the emulation
    monkeypatch.setenv(zp.ENV_OVERRIDE, "1")
    assert zp.bench_bf16() is True
    assert capsys.readouterr().out == ""


def test_invalid_conv_backend_fails_before_training_and_changes_nothing(train_cfg):
    from zoo.nn import conv as zconv
    from zoo.train import train

    before = zconv.conv_backend()
    cfg = train_cfg(*TINY[:-2], "conv_backend=fft")
    with pytest.raises(ConfigError, match="conv_backend='fft'.*auto, torch, nnpack, winograd"):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()
    assert zconv.conv_backend() == before


def test_conv_backend_key_defaults_to_the_environment_variable(train_cfg, monkeypatch):
    monkeypatch.setenv("ZOO_CONV_BACKEND", "torch")
    assert train_cfg(*TINY).conv_backend == "torch"
    monkeypatch.delenv("ZOO_CONV_BACKEND")
    assert train_cfg(*TINY).conv_backend == "auto"
    assert train_cfg(*TINY, "conv_backend=nnpack").conv_backend == "nnpack"  # the key wins over the variable


@pytest.mark.parametrize("on", [False, True])
def test_tiles_vs_whole_script_autocasts_bf16_only_where_native(native, monkeypatch, capsys, on):
    """experiments/unclip/upsamplers/tiles_vs_whole.py ran its upsamplers under a hard-coded bf16 autocast: on an
    AVX2-only CPU every row timed (and waited for) the emulation, 20-100x slower than fp32. Now zoo.precision decides."""
    import importlib.util
    import sys
    from types import SimpleNamespace

    root = CONF.parent
    spec = importlib.util.spec_from_file_location(
        "tiles_vs_whole", root / "experiments/unclip/upsamplers/tiles_vs_whole.py"
    )
    tv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tv)
    seen = []

    def upsample(low, x_T, **kw):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return x_T

    monkeypatch.setattr(tv, "render_scenes", lambda split, n, size: (torch.zeros(n, 3, 16, 16), None, None))
    monkeypatch.setattr(tv, "load_upsampler", lambda path: (SimpleNamespace(upsample=upsample), 1))
    monkeypatch.setattr(sys, "argv", ["tiles_vs_whole.py", "run.ckpt", "--n", "2"])
    native(on)
    tv.main()
    assert seen == [torch.bfloat16 if on else None] * 3
    assert ("| bf16 autocast" if on else "| fp32") in capsys.readouterr().out


def test_scripts_detect_native_bf16_only_through_zoo_precision():
    """bench/bench_unet.py read /proc/cpuinfo itself for its header: under ZOO_FORCE_NATIVE_BF16=0 (the README's way
    to measure as an AVX2-only CPU) it printed 'native bf16: no' on its first line, 'yes' on its second, and skipped
    the bf16 rows. The detection lives in zoo.precision only, so every script honours the override alike."""
    root = CONF.parent
    offenders = [
        f"{p.relative_to(root)}:{i}"
        for folder in ("zoo", "eval", "bench", "scripts", "experiments")
        for p in sorted((root / folder).rglob("*.py"))
        if p != root / "zoo/precision.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"""open\(\s*["']/proc/cpuinfo""", line)
    ]
    assert not offenders, "reads /proc/cpuinfo itself (use zoo.precision):\n" + "\n".join(offenders)


@pytest.mark.parametrize("value", ["16-mixed", "16"])
def test_fp16_mixed_on_cpu_without_native_bf16_warns_as_bf16_does(native, caplog, value):
    """Lightning runs 16-mixed (and the legacy 16) on the CPU as bf16 autocast: on a CPU without native bf16 that is
    the emulation bf16-mixed warns about, but 16-mixed passed without a word."""
    import lightning as L

    trainer = L.Trainer(accelerator="cpu", precision=value, logger=False, enable_checkpointing=False)
    assert trainer.precision_plugin.autocast_context_manager().fast_dtype is torch.bfloat16  # the premise
    native(False)
    with caplog.at_level(logging.WARNING, logger="zoo.precision"):
        assert zp.resolve_precision(value, "cpu") == (value, "set explicitly")
    assert f"trainer.precision={value}" in caplog.text and "bf16 autocast" in caplog.text
    assert "fix: trainer.precision=auto" in caplog.text
    caplog.clear()
    native(True)
    with caplog.at_level(logging.WARNING, logger="zoo.precision"):
        zp.resolve_precision(value, "cpu")
    assert caplog.text == ""


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64", reason="reads /proc/cpuinfo")
def test_fp16_weights_on_cpu_without_native_fp16_warn(monkeypatch, caplog):
    """trainer.precision=16-true holds fp16 weights: on an AVX2-only CPU fp16 matmuls are emulated (1.2 GFLOP/s
    against fp32's 71 measured on AVX2 kernels), and it passed without a word."""
    monkeypatch.setattr(zp, "_cpuinfo_flags", lambda: frozenset({"avx", "avx2", "fma"}))
    with caplog.at_level(logging.WARNING, logger="zoo.precision"):
        assert zp.resolve_precision("16-true", "cpu") == ("16-true", "set explicitly")
    assert "trainer.precision=16-true on a CPU without native fp16" in caplog.text and "fix: " in caplog.text
    caplog.clear()
    monkeypatch.setattr(zp, "_cpuinfo_flags", lambda: frozenset({"avx2", "avx512_fp16"}))
    with caplog.at_level(logging.WARNING, logger="zoo.precision"):
        zp.resolve_precision("16-true", "cpu")
    assert caplog.text == ""


def test_sdpa_computes_half_precision_cpu_attention_in_fp32(monkeypatch):
    """zoo.precision.sdpa (the U-Net's attention): under bf16 autocast on CPU, SDPA itself runs on fp32 q, k, v
    (autocast off around it: it would cast them back to bf16) and the result comes back in q's dtype; an fp32 call
    outside autocast is passed through unchanged."""
    import torch.nn.functional as F

    real, seen = F.scaled_dot_product_attention, []

    def spy(q, k, v, **kw):
        y = real(q, k, v, **kw)
        seen.append((q.dtype, y.dtype, kw.get("attn_mask").dtype if kw.get("attn_mask") is not None else None))
        return y

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g) for _ in range(3))
    additive = torch.zeros(5, 5).masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), float("-inf"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
        y = zp.sdpa(qb, kb, vb, attn_mask=additive.bfloat16())
    assert seen == [(torch.float32, torch.float32, torch.float32)] and y.dtype == torch.bfloat16
    exact = real(qb.double(), kb.double(), vb.double(), attn_mask=additive.double())
    torch.testing.assert_close(y.double(), exact, rtol=2**-7, atol=1e-6)  # only the final rounding to bf16
    seen.clear()
    assert torch.equal(zp.sdpa(q, k, v, is_causal=True), real(q, k, v, is_causal=True))
    assert seen == [(torch.float32, torch.float32, None)]
