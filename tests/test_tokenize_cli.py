"""zoo-tokenize: a trained tokenizer encodes a split to a token file that the DataModule then serves."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from zoo.checkpoint import load_module, safe_load
from zoo.tokenize import tokenize
from zoo.train import instantiate, train

DATA = ["data.train_size=24", "data.val_size=8", "data.test_size=8", "data.batch_size=8"]


def test_tokenize_split_and_serve_tokens(train_cfg, tmp_path):
    cfg = train_cfg(
        "model=vqvae",
        "model.preset=tiny",
        *DATA,
        "logger=none",
        "trainer=cpu",
        "trainer.max_steps=2",
        "trainer.enable_progress_bar=false",
        "test=false",
    )
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    out = tmp_path / "tokens_val.pt"
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        tcfg = compose(
            "tokenize",
            overrides=[
                f"tokenizer_ckpt={ckpt}",
                "split=val",
                f"out={out}",
                *DATA,
                "batch_size=3",
                f"paths.root_dir={tmp_path}",
            ],
        )
    tokenize(tcfg)
    saved = safe_load(out)
    model = load_module(ckpt)
    dm = instantiate(tcfg.data)
    images = torch.stack([dm.dataset("val")[i]["image"] for i in range(8)])
    assert torch.equal(saved["image_tokens"], model.tokenizer.encode(images))
    assert saved["image_tokens"].shape == (8, 16, 16) and saved["codebook_size"] == 64
    assert saved["meta"]["split"] == "val"
    # which images (image codes do not depend on the captions): the DataModule refuses the file for other scenes
    assert saved["meta"]["data"] == {"images": instantiate(tcfg.data).features_identity("val")["images"]}

    # the DataModule serves them as batch["image_tokens"], aligned with the images
    from omegaconf import OmegaConf

    dm2 = instantiate(OmegaConf.merge(tcfg.data, {"features": {"val": str(out)}}))
    batch = next(iter(dm2.val_dataloader()))
    assert torch.equal(batch["image_tokens"], saved["image_tokens"][: len(batch["index"])])

    # the val codes given as another split of the same size are refused (they would be served to other images)
    import pytest

    from zoo.errors import ConfigError

    dm3 = instantiate(OmegaConf.merge(tcfg.data, {"test_size": 8, "features": {"test": str(out)}}))
    with pytest.raises(ConfigError, match=f"data.features.test={out} holds the val split's features"):
        dm3.dataset("test")


def _tokenize_cfg(tmp_path, ckpt, *overrides):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return compose(
            "tokenize",
            overrides=[f"tokenizer_ckpt={ckpt}", "split=val", *DATA, f"paths.root_dir={tmp_path}", *overrides],
        )


def test_tokenize_refuses_another_resolution_than_the_tokenizer_trained_at(tmp_path, dalle_helpers, caplog):
    """A tokenizer trained at 16 px encodes 32 px images too, into an 8x8 grid instead of the 4x4 it learned, and
    zoo-tokenize wrote that file without a word. Now a ConfigError naming both resolutions and the fix, before any
    file is written; a checkpoint that does not record its resolution (no zoo_config) gets a warning instead."""
    import logging

    import pytest

    from zoo.errors import ConfigError

    ckpt = dalle_helpers.tiny_tokenizer_ckpt(tmp_path / "tok.ckpt")  # zoo_config.data.resolution = 16
    out = tmp_path / "tokens.pt"
    with pytest.raises(ConfigError, match=r"trained at 16 px but data.resolution=32.*fix: data.resolution=16"):
        tokenize(_tokenize_cfg(tmp_path, ckpt, "data.resolution=32", f"out={out}"))
    assert not out.exists()
    tokenize(_tokenize_cfg(tmp_path, ckpt, "data.resolution=16", f"out={out}"))
    assert safe_load(out)["image_tokens"].shape[1:] == (4, 4)

    raw = torch.load(ckpt, weights_only=True)
    del raw["zoo_config"]  # written before the run record (or by zoo-convert)
    torch.save(raw, tmp_path / "old.ckpt")
    with caplog.at_level(logging.WARNING, logger="zoo.tokenize"):
        tokenize(_tokenize_cfg(tmp_path, tmp_path / "old.ckpt", "data.resolution=32", f"out={out}"))
    assert "does not record the resolution it was trained at" in caplog.text
    assert safe_load(out)["image_tokens"].shape[1:] == (8, 8)


def test_tokenize_refuses_another_kind_of_checkpoint_naming_its_option(tmp_path, dalle_helpers):
    """A CLIP checkpoint as tokenizer_ckpt was refused with "this input takes dvae or vqvae or vqgan (fix: pass a
    checkpoint of the right kind)", which named no option; the fix now says which one."""
    import pytest

    from zoo.errors import ConfigError

    clip = dalle_helpers.tiny_clip_ckpt(tmp_path / "clip.ckpt")
    with pytest.raises(ConfigError, match="holds a clip checkpoint") as info:
        tokenize(_tokenize_cfg(tmp_path, clip, f"out={tmp_path / 'tokens.pt'}"))
    assert "(fix: tokenizer_ckpt=<a dvae / vqvae / vqgan checkpoint>)" in str(info.value)
    assert not (tmp_path / "tokens.pt").exists()


def test_tokenize_refuses_a_bad_batch_size_or_split_before_the_checkpoint_loads(tmp_path):
    """batch_size=0 / -2 was torch's bare "batch_size should be a positive integer value", batch_size=2.5 ran with
    2, batch_size=abc was int()'s ValueError, all after the checkpoint had loaded; zoo-embed checked these up front.
    Now the same ConfigError naming the option and the fix (the checkpoint here does not even exist)."""
    import pytest

    from zoo.errors import ConfigError

    missing = tmp_path / "never_written.ckpt"
    for value in ["0", "-2", "2.5", "abc", "true"]:
        with pytest.raises(ConfigError, match=r"batch_size=\S+ must be a whole number >= 1 \(fix: batch_size=256\)"):
            tokenize(_tokenize_cfg(tmp_path, missing, f"batch_size={value}"))
    with pytest.raises(ConfigError, match=r"unknown split 'vall'.*fix: split=train, val or test"):
        tokenize(_tokenize_cfg(tmp_path, missing, "split=vall"))


def test_a_dalle_on_zoo_tokenize_codes_is_decoded_only_by_the_tokenizer_that_wrote_them(tmp_path, dalle_helpers):
    """A DALL·E trained from zoo-tokenize codes alone was sampled with any generator.image_tokenizer_ckpt of the same
    codebook and grid: another tokenizer (found: a VQ-VAE given for a dVAE's codes, both tiny, 64 codes, 16x16)
    decoded the samples into other images without a word, and model.image_tokenizer_ckpt=<another> beside the codes
    trained on one tokenizer's codes and sampled through the other's decoder. zoo-tokenize now records the weights'
    fingerprint; check_data refuses codes of another tokenizer than model.image_tokenizer_ckpt (or train and val
    codes of two), a codes-only model keeps the fingerprint in its hyper-parameters, and loading another tokenizer
    to decode its samples is refused, naming the one that wrote the codes."""
    import pytest
    from omegaconf import OmegaConf

    from zoo.errors import ConfigError
    from zoo.models.dalle.lit import DalleLit
    from zoo.registry import checked_hparams

    H = dalle_helpers
    wrote = H.tiny_tokenizer_ckpt(tmp_path / "wrote.ckpt", seed=0)
    other = H.tiny_tokenizer_ckpt(tmp_path / "other.ckpt", seed=1)  # same codebook and grid, other weights
    res = f"data.resolution={H.RESOLUTION}"
    files = {}
    for name, split, ckpt in (("train", "train", wrote), ("val", "val", wrote), ("val_other", "val", other)):
        files[name] = tmp_path / f"{name}.pt"
        tokenize(_tokenize_cfg(tmp_path, ckpt, res, f"split={split}", f"out={files[name]}"))
    assert safe_load(files["train"])["meta"]["tokenizer"] == str(wrote)
    assert (
        safe_load(files["val"])["meta"]["tokenizer_fingerprint"]
        != safe_load(files["val_other"])["meta"]["tokenizer_fingerprint"]
    )

    def datamodule(train, val):
        cfg = _tokenize_cfg(tmp_path, wrote, res)
        dm = instantiate(OmegaConf.merge(cfg.data, {"features": {"train": str(train), "val": str(val)}}))
        dm.tokenizer = H.tiny_bpe(context_length=16)
        return dm

    net = {**H.TINY_NET, "grid_h": 4, "grid_w": 4}
    with pytest.raises(
        ConfigError, match=f"holds the codes of the image tokenizer {wrote}.*fix: model.image_tokenizer_ckpt={wrote}"
    ):
        DalleLit(preset="tiny", net=net, image_tokenizer_ckpt=str(other)).check_data(
            datamodule(files["train"], files["val"])
        )
    DalleLit(preset="tiny", net=net, image_tokenizer_ckpt=str(wrote)).check_data(
        datamodule(files["train"], files["val"])
    )
    with pytest.raises(ConfigError, match="written by different image tokenizers"):
        DalleLit(preset="tiny", net=net).check_data(datamodule(files["train"], files["val_other"]))

    codes_only = DalleLit(preset="tiny", net=net)
    codes_only.check_data(datamodule(files["train"], files["val"]))
    kept = checked_hparams("dalle", dict(codes_only.hparams), "test")  # what load_module rebuilds it from
    assert kept["image_codes_tokenizer"]["path"] == str(wrote)
    sampler = DalleLit(**kept)
    with pytest.raises(
        ConfigError, match=f"not the image tokenizer that wrote.*fix: generator.image_tokenizer_ckpt={wrote}"
    ):
        sampler.load_image_tokenizer(str(other))
    assert sampler.image_tokenizer is None
    sampler.load_image_tokenizer(str(wrote))
    assert sampler.image_tokenizer is not None


def test_the_default_out_is_not_replaced_by_codes_of_other_inputs(tmp_path, dalle_helpers, monkeypatch):
    """The default out, <cache>/tokens/<data>_<split>_image_tokens.pt, names the data option and split only: a run with
    another tokenizer (or resolution, or image folder) replaced the codes there without a word (found by helper-126).
    Now refused before any image is encoded, naming both fixes; the same inputs rewrite it, and out= or
    overwrite=true replace it."""
    import pytest
    from hydra.core.hydra_config import HydraConfig

    from zoo.errors import ConfigError

    monkeypatch.setattr(HydraConfig.instance(), "cfg", HydraConfig.instance().cfg)  # restored after the test

    def default_out_cfg(ckpt, *overrides):
        GlobalHydra.instance().clear()
        with initialize_config_module(config_module="conf", version_base="1.3"):
            cfg = compose(
                "tokenize",
                overrides=[f"tokenizer_ckpt={ckpt}", "split=val", *DATA, f"paths.root_dir={tmp_path}", *overrides],
                return_hydra_config=True,
            )
        HydraConfig.instance().set_config(cfg)  # the default out reads hydra:runtime.choices.data, as zoo-tokenize
        return cfg

    first = dalle_helpers.tiny_tokenizer_ckpt(tmp_path / "a.ckpt", seed=0)
    other = dalle_helpers.tiny_tokenizer_ckpt(tmp_path / "b.ckpt", seed=1)
    out = tokenize(default_out_cfg(first, "data.resolution=16"))
    assert out.name == "shapes_val_image_tokens.pt"
    codes = safe_load(out)["image_tokens"]
    with pytest.raises(ConfigError, match=r"made from other inputs .*the tokenizer weights.*fix: out=.*overwrite=true"):
        tokenize(default_out_cfg(other, "data.resolution=16"))
    assert torch.equal(safe_load(out)["image_tokens"], codes) and safe_load(out)["meta"]["tokenizer"] == str(first)
    assert tokenize(default_out_cfg(first, "data.resolution=16")) == out  # the same inputs: a rerun rewrites it
    tokenize(default_out_cfg(other, "data.resolution=16", "overwrite=true"))
    assert safe_load(out)["meta"]["tokenizer"] == str(other)
    tokenize(_tokenize_cfg(tmp_path, first, "data.resolution=16", f"out={out}"))  # out= named: the user's choice
    assert safe_load(out)["meta"]["tokenizer"] == str(first)
