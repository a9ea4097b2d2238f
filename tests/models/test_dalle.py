"""DALL·E stage 2 as a component: learning, caption dropout, data checks, self-contained checkpoints, zoo-train,
the paper preset's size."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from zoo.errors import ConfigError
from zoo.models.dalle.lit import DalleLit

H = None  # tests/helpers_dalle.py, set by the fixture below for every test of this module


@pytest.fixture(autouse=True)
def _helpers(dalle_helpers):
    global H
    H = dalle_helpers


def _fixed_batch(b=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(4, 300, (b, 16), generator=g)
    text[:, 10:] = 0  # padding
    return {"text_tokens": text, "image_tokens": torch.randint(0, 32, (b, 4, 4), generator=g)}


# ------------------------------------------------------------------------------------------------- learning
def test_overfits_a_fixed_batch():
    torch.manual_seed(0)
    model = DalleLit(preset="tiny", net=dict(H.TINY_NET), text_dropout=0.0)
    batch = _fixed_batch()
    opt = torch.optim.AdamW(model.transformer.parameters(), lr=3e-3)
    first = None
    for step in range(150):
        r = model.forward_loss(batch, train=True)
        first = first if first is not None else {k: float(v) for k, v in r.items()}
        opt.zero_grad()
        r["loss"].backward()
        opt.step()
    last = {k: float(v) for k, v in model.forward_loss(batch, train=False).items()}
    assert first["image_loss"] == pytest.approx(torch.log(torch.tensor(32.0)).item(), abs=0.3)  # ~uniform at init
    assert last["image_loss"] < first["image_loss"] / 10, (first, last)
    assert last["loss"] < first["loss"] / 8
    # the loss is the paper's 1/8 text + 7/8 image mixture
    assert last["loss"] == pytest.approx(last["text_loss"] / 8 + 7 * last["image_loss"] / 8, rel=1e-4)


def test_caption_dropout_rate_and_all_pad():
    torch.manual_seed(0)
    model = DalleLit(preset="tiny", net=dict(H.TINY_NET), text_dropout=0.2)
    text = torch.randint(4, 300, (20000, 16))
    out = model.drop_captions(text)
    dropped = (out == model.cfg.pad_id).all(1)
    assert abs(dropped.float().mean().item() - 0.2) < 0.015
    assert torch.equal(out[~dropped], text[~dropped])  # the others untouched
    assert torch.equal(DalleLit(preset="tiny", net=dict(H.TINY_NET), text_dropout=0.0).drop_captions(text), text)
    # validation never drops: eval loss is deterministic
    model.eval()
    b = _fixed_batch()
    assert torch.equal(model.forward_loss(b, train=False)["loss"], model.forward_loss(b, train=False)["loss"])
    with pytest.raises(ValueError, match="text_dropout"):
        DalleLit(preset="tiny", text_dropout=1.0)


# ---------------------------------------------------------------------------------------------- check_data
def _dm(tok, resolution=None, features=None):
    return SimpleNamespace(tokenizer=tok, resolution=resolution or H.RESOLUTION, features=features or {})


def test_check_data_errors_name_their_fix(tmp_path):
    tok = H.tiny_bpe(context_length=16)
    ckpt = H.tiny_tokenizer_ckpt(tmp_path / "tok.ckpt")
    ok = DalleLit(preset="tiny", net=dict(H.TINY_NET), image_tokenizer_ckpt=str(ckpt))
    ok.check_data(_dm(tok))  # fits
    assert ok.text_tokenizer is tok

    small_vocab = DalleLit(preset="tiny", image_tokenizer_ckpt=str(ckpt), net={**H.TINY_NET, "text_vocab": 64})
    with pytest.raises(ConfigError, match=r"model.net.text_vocab=300"):
        small_vocab.check_data(_dm(tok))
    big_grid = DalleLit(preset="tiny", image_tokenizer_ckpt=str(ckpt), net={**H.TINY_NET, "grid_h": 8, "grid_w": 8})
    with pytest.raises(ConfigError, match=r"grid.*fix: model.net.grid_h=4 model.net.grid_w=4"):
        big_grid.check_data(_dm(tok))  # 16 px / 4 = 4x4 != 8x8
    with pytest.raises(ConfigError, match="data.tokenizer.context_length=16"):
        ok.check_data(_dm(H.tiny_bpe(context_length=24)))
    missing = DalleLit(preset="tiny", net=dict(H.TINY_NET), image_tokenizer_ckpt=str(tmp_path / "nope.ckpt"))
    with pytest.raises(ConfigError, match="not found.*fix: model.image_tokenizer_ckpt="):
        missing.check_data(_dm(tok))
    with pytest.raises(ConfigError, match="data/tokenizer=bpe"):
        ok.check_data(_dm(None))
    small_codebook = DalleLit(preset="tiny", image_tokenizer_ckpt=str(ckpt), net={**H.TINY_NET, "image_vocab": 16})
    with pytest.raises(ConfigError, match="image_vocab=32"):
        small_codebook.check_data(_dm(tok))
    # precomputed tokens (for every split the run reads: train and val) and no tokenizer checkpoint is fine
    codes = {"train": "tokens.pt", "val": "tokens_val.pt"}
    DalleLit(preset="tiny", net=dict(H.TINY_NET)).check_data(_dm(tok, features=codes))


def test_check_data_reports_every_mismatch_at_once(tmp_path):
    """Text vocabulary, text length, grid and image vocabulary all wrong: one ConfigError listing the four fixes
    (they came one per attempt; then the text length came in a second round behind the vocabulary)."""
    tok = H.tiny_bpe(context_length=16)
    ckpt = H.tiny_tokenizer_ckpt(tmp_path / "tok.ckpt")
    bad = DalleLit(
        preset="tiny",
        image_tokenizer_ckpt=str(ckpt),
        net={**H.TINY_NET, "text_vocab": 64, "text_len": 8, "image_vocab": 16, "grid_h": 8, "grid_w": 8},
    )
    with pytest.raises(ConfigError) as info:
        bad.check_data(_dm(tok))
    msg = str(info.value)
    assert msg.startswith("4 mismatches")
    fixes = ("model.net.text_vocab=300", "model.net.text_len=16", "model.net.grid_h=4 model.net.grid_w=4")
    for fix in (*fixes, "model.net.image_vocab=32"):
        assert fix in msg, fix
    assert bad.text_tokenizer is None  # nothing half-applied


def test_check_data_refuses_a_resolution_the_tokenizer_was_not_trained_at(tmp_path):
    """The frozen tokenizer encodes any multiple of its downsample factor, but at another size than it trained at
    its codes are another grid than it learned: check_data adapted the tokenizer to data.resolution without a word
    (a model grid made to match trained on them). Refused, naming both resolutions and data.resolution=<trained>;
    a tokenizer checkpoint that does not record its resolution is still adapted (nothing to compare with)."""
    tok = H.tiny_bpe(context_length=16)
    ckpt = H.tiny_tokenizer_ckpt(tmp_path / "tok.ckpt")  # trained at 16 px (its zoo_config)
    grid8 = {**H.TINY_NET, "grid_h": 8, "grid_w": 8}  # what 32 px gives with this tokenizer
    model = DalleLit(preset="tiny", image_tokenizer_ckpt=str(ckpt), net=grid8)
    with pytest.raises(ConfigError, match=r"trained at 16 px but data.resolution=32 \(fix: data.resolution=16"):
        model.check_data(_dm(tok, resolution=32))
    raw = torch.load(ckpt, weights_only=True)
    del raw["zoo_config"]  # a tokenizer checkpoint without the run record
    torch.save(raw, tmp_path / "old.ckpt")
    old = DalleLit(preset="tiny", image_tokenizer_ckpt=str(tmp_path / "old.ckpt"), net=grid8)
    old.check_data(_dm(tok, resolution=32))
    assert tuple(old.image_tokenizer.grid_size) == (8, 8)


def test_a_grid_mismatch_offers_another_data_resolution_only_when_the_tokenizer_allows_one(tmp_path):
    """A model grid other than the tokenizer's at the resolution it trained at offered "or data.resolution=<grid x
    factor>" (found with experiment=dalle1/train_shapes data.resolution=32 and a 32 px tokenizer: "or
    data.resolution=24"), a size the same check refuses for that tokenizer. Only the model.net.grid fix is offered
    then; a tokenizer that does not record its resolution still gets the data.resolution alternative."""
    tok = H.tiny_bpe(context_length=16)
    ckpt = H.tiny_tokenizer_ckpt(tmp_path / "tok.ckpt")  # trained at 16 px: 4x4 codes
    grid8 = {**H.TINY_NET, "grid_h": 8, "grid_w": 8}
    with pytest.raises(ConfigError) as info:
        DalleLit(preset="tiny", image_tokenizer_ckpt=str(ckpt), net=grid8).check_data(_dm(tok, resolution=16))
    assert "fix: model.net.grid_h=4 model.net.grid_w=4)" in str(info.value)
    assert "data.resolution=32" not in str(info.value)
    raw = torch.load(ckpt, weights_only=True)
    del raw["zoo_config"]  # no record of the resolution it trained at
    torch.save(raw, tmp_path / "old.ckpt")
    old = DalleLit(preset="tiny", image_tokenizer_ckpt=str(tmp_path / "old.ckpt"), net=grid8)
    with pytest.raises(ConfigError, match=r"model.net.grid_w=4, or data.resolution=32\)"):
        old.check_data(_dm(tok, resolution=16))


def test_check_data_checks_zoo_tokenize_codes_against_the_model(train_cfg, tmp_path):
    """Trained from a zoo-tokenize file (no tokenizer checkpoint), a grid or a code the model lacks was an IndexError
    in the first step; now a ConfigError naming the fixes, and model.preset=tiny takes the file's grid."""
    from zoo.checkpoint import atomic_torch_save
    from zoo.train import fit_tiny_to_data, instantiate

    codes = torch.randint(0, 64, (8, 8, 8))  # 8 images: an 8x8 grid of 64 codes
    path = atomic_torch_save({"image_tokens": codes, "codebook_size": 64, "grid_size": [8, 8]}, tmp_path / "t.pt")
    cfg = train_cfg("data/tokenizer=bpe", "data.tokenizer.vocab_size=300", "data.tokenizer.context_length=16")
    cfg.data.update(train_size=8, val_size=8, test_size=8, features={"train": str(path), "val": str(path)})
    dm = instantiate(cfg.data)
    dm.tokenizer = H.tiny_bpe(context_length=16)  # (no BPE fit here)
    model = DalleLit(preset="tiny", net=dict(H.TINY_NET))  # 4x4 grid of 32 codes
    with pytest.raises(ConfigError) as info:
        model.check_data(dm)
    assert "model.net.grid_h=8 model.net.grid_w=8" in str(info.value)
    assert f"hold code {int(codes.max())} but the model's image_vocab is 32" in str(info.value)
    tiny = fit_tiny_to_data(DalleLit(preset="tiny"), dm)
    tiny.check_data(dm)
    assert (tiny.cfg.grid_h, tiny.cfg.grid_w, tiny.cfg.image_vocab) == (8, 8, int(codes.max()) + 1)


def test_tiny_takes_the_codebook_a_zoo_tokenize_file_records_over_its_largest_code(train_cfg, tmp_path):
    """zoo-tokenize records the tokenizer's codebook beside the codes; load_features dropped it, so a tiny DALL·E
    from codes took image_vocab = largest train code + 1 (61 of a 64-code book: a val code above it was refused, and
    the codes no train image used could never be sampled). A file without the record keeps the old rule."""
    from zoo.checkpoint import atomic_torch_save
    from zoo.train import fit_tiny_to_data, instantiate

    codes = torch.randint(0, 40, (8, 8, 8))  # the train images use codes < 40 of the 64
    for record, vocab in (({"codebook_size": 64}, 64), ({}, int(codes.max()) + 1)):
        path = atomic_torch_save({"image_tokens": codes, "grid_size": [8, 8], **record}, tmp_path / f"t{vocab}.pt")
        cfg = train_cfg("data/tokenizer=bpe", "data.tokenizer.vocab_size=300", "data.tokenizer.context_length=16")
        cfg.data.update(train_size=8, val_size=8, test_size=8, features={"train": str(path), "val": str(path)})
        dm = instantiate(cfg.data)
        dm.tokenizer = H.tiny_bpe(context_length=16)
        tiny = fit_tiny_to_data(DalleLit(preset="tiny"), dm)
        tiny.check_data(dm)
        assert tiny.cfg.image_vocab == vocab, record


def test_a_run_from_codes_needs_test_codes_for_the_test_stage_before_it_trains(train_cfg, tmp_path):
    """zoo-train model=dalle data=shapes data.features.train=<codes> data.features.val=<codes> trained, validated,
    then stopped at the test stage (zoo-train's default test=true) on 'batch has no image_tokens'. The test split's
    codes are now asked for before any step (zoo.train.check_compatibility), unless there is no test stage or an
    image tokenizer encodes the test images."""
    from zoo.checkpoint import atomic_torch_save
    from zoo.train import check_compatibility, fit_tiny_to_data, instantiate

    def tokens(split):
        codes = torch.randint(0, 64, (8, 8, 8))
        return str(atomic_torch_save({"image_tokens": codes, "codebook_size": 64}, tmp_path / f"{split}.pt"))

    files = {s: tokens(s) for s in ("train", "val", "test")}
    for given, tests, refused in [
        (("train", "val"), True, True),
        (("train", "val"), False, False),
        (files, True, False),
    ]:
        cfg = train_cfg("data/tokenizer=bpe", "data.tokenizer.vocab_size=300", "data.tokenizer.context_length=16")
        cfg.data.update(train_size=8, val_size=8, test_size=8, features={s: files[s] for s in given})
        dm = instantiate(cfg.data)
        dm.tokenizer = H.tiny_bpe(context_length=16)
        model = fit_tiny_to_data(DalleLit(preset="tiny"), dm)
        if refused:
            with pytest.raises(ConfigError, match="no data.features.test: the test stage reads image_tokens") as e:
                check_compatibility(model, dm, validates=True, tests=tests)
            # codes are zoo-tokenize's (the message said "zoo-embed file" and `zoo-embed ... split=test`)
            assert "`zoo-tokenize tokenizer_ckpt=" in str(e.value) and "split=test`" in str(e.value)
            assert "zoo-embed" not in str(e.value)
        else:
            check_compatibility(model, dm, validates=True, tests=tests)
    encoder = DalleLit(preset="tiny", image_tokenizer_ckpt=str(H.tiny_tokenizer_ckpt(tmp_path / "t.ckpt")))
    assert encoder.val_features_needed == ()  # it encodes the test images itself


def test_check_data_checks_the_val_codes_too(train_cfg, tmp_path):
    """Trained from zoo-tokenize files without a tokenizer, only the train file was checked: val codes of another
    grid were an IndexError, a zoo-embed file (no image_tokens) or no val file a "batch has no image_tokens"
    RuntimeError, all at the first validation, after the training steps. Now check_data refuses each up front."""
    from zoo.checkpoint import atomic_torch_save
    from zoo.train import fit_tiny_to_data, instantiate

    def tokens(grid, name):
        codes = torch.randint(0, 64, (8, grid, grid))
        return str(atomic_torch_save({"image_tokens": codes, "codebook_size": 64}, tmp_path / name))

    train = tokens(8, "train.pt")
    embed = str(atomic_torch_save({"clip_image_emb": torch.randn(8, 4)}, tmp_path / "embed.pt"))
    cases = [
        (tokens(4, "val4.pt"), "the image tokens of data.features.val are a 4x4 grid but the model expects 8x8"),
        (embed, f"data.features.val={embed} holds no image_tokens (a zoo-embed file?)"),
        (None, "data.features.train gives image codes but data.features.val none"),
    ]
    for val, says in cases:
        cfg = train_cfg("data/tokenizer=bpe", "data.tokenizer.vocab_size=300", "data.tokenizer.context_length=16")
        features = {"train": train, **({"val": val} if val else {})}
        cfg.data.update(train_size=8, val_size=8, test_size=8, features=features)
        dm = instantiate(cfg.data)
        dm.tokenizer = H.tiny_bpe(context_length=16)
        model = fit_tiny_to_data(DalleLit(preset="tiny"), dm)  # fits the train codes' 8x8 grid
        with pytest.raises(ConfigError, match=re.escape(says)):
            model.check_data(dm)


@pytest.mark.parametrize("case", ["trained at another resolution", "no tokenizer checkpoint"])
def test_zoo_train_refuses_the_image_tokenizer_before_fitting_the_bpe(train_cfg, tmp_path, monkeypatch, case):
    """zoo-train experiment=dalle1/train_shapes with a 32 px tokenizer at data.resolution=48 fitted the BPE (48 s on
    the shapes captions) before refusing the tokenizer: check_data ran after prepare_tokenizer. The image-side
    refusals now come first; a fit here fails the test."""
    import zoo.data.datamodule
    from zoo.train import train

    def no_fit(self):
        raise AssertionError("the BPE was fitted before the image tokenizer was checked")

    monkeypatch.setattr(zoo.data.datamodule.ImageTextDataModule, "prepare_tokenizer", no_fit)
    if case == "no tokenizer checkpoint":
        ckpt, says = tmp_path / "absent.ckpt", "image tokenizer checkpoint not found"
    else:  # the tiny tokenizer records 16 px; the data is 32 px
        ckpt, says = H.tiny_tokenizer_ckpt(tmp_path / "t.ckpt"), f"trained at {H.RESOLUTION} px but data.resolution=32"
    cfg = train_cfg(
        "model=dalle",
        "model.preset=tiny",
        f"model.image_tokenizer_ckpt={ckpt}",
        "data/tokenizer=bpe",
        "data.tokenizer.vocab_size=300",
        "data.resolution=32",
        "logger=none",
        "trainer=cpu",
    )
    with pytest.raises(ConfigError, match=re.escape(says)):
        train(cfg)


def test_tiny_preset_takes_the_grid_of_its_image_tokenizer_over_the_experiments(train_cfg, tmp_path):
    """experiment=dalle1/train_shapes sets model.net.grid_h/w=12 (its 48 px tokenizer); with model.preset=tiny,
    data.resolution=32 and a 32 px tokenizer the run stopped on "makes a 8x8 grid ... expects 12x12". The tiny run
    now takes the tokenizer's grid; a grid given on the command line still wins and is still checked."""
    from zoo.checkpoint import atomic_torch_save
    from zoo.models.vqvae.lit import VQVAELit
    from zoo.train import train

    net = dict(H.TINY_TOKENIZER_NET)  # downsample 4: an 8x8 grid at 32 px
    ckpt = atomic_torch_save(
        {
            "zoo_class": "zoo.models.vqvae.lit.VQVAELit",
            "hyper_parameters": {"preset": "tiny", "net": net},
            "state_dict": VQVAELit(preset="tiny", net=net).state_dict(),
            "zoo_config": {"data": {"resolution": 32}},
        },
        tmp_path / "tok32.ckpt",
    )
    run = (
        "experiment=dalle1/train_shapes",
        "model.preset=tiny",
        "data.resolution=32",
        f"model.image_tokenizer_ckpt={ckpt}",
        "data.tokenizer.vocab_size=300",
        "data.tokenizer.context_length=16",
        "data.train_size=16",
        "data.val_size=8",
        "data.test_size=8",
        "data.batch_size=8",
        "logger=none",
        "trainer.max_steps=1",
        "trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false",
        "callbacks=none",
    )
    with pytest.raises(ConfigError, match=re.escape("expects 12x8 (fix: model.net.grid_h=8 model.net.grid_w=8")):
        train(train_cfg(*run, "model.net.grid_h=12"))  # the user's grid (before any checkpoint is written)
    assert train(train_cfg(*run))["global_step"] == 1
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert (saved["hyper_parameters"]["net"]["grid_h"], saved["hyper_parameters"]["net"]["grid_w"]) == (8, 8)


def test_another_kind_of_checkpoint_is_refused_naming_its_option(train_cfg, tmp_path):
    """A checkpoint of another component was refused with "fix: pass a checkpoint of the right kind" (load_module)
    or named model.image_tokenizer_ckpt at sampling too; each refusal now names the option that gave the file."""
    from zoo.pipelines.dalle import DallePipeline
    from zoo.train import train

    clip, tok = H.tiny_clip_ckpt(tmp_path / "clip.ckpt"), H.tiny_tokenizer_ckpt(tmp_path / "tok.ckpt")
    cfg = train_cfg("model=dalle", f"model.image_tokenizer_ckpt={clip}", "logger=none", "trainer=cpu")
    with pytest.raises(ConfigError, match="holds a clip model") as info:
        train(cfg)
    assert "(fix: model.image_tokenizer_ckpt=<a dvae / vqvae / vqgan checkpoint>)" in str(info.value)
    with pytest.raises(ConfigError, match="holds a vqvae checkpoint; this input takes dalle") as info:
        DallePipeline.from_checkpoints(str(tok))  # zoo-sample / zoo-eval generator=dalle
    assert "(fix: generator.dalle_ckpt=<a dalle checkpoint>)" in str(info.value)
    lit = DalleLit(preset="tiny")  # a DALL·E trained from zoo-tokenize codes is given its decoder at sampling
    with pytest.raises(
        ConfigError, match=re.escape("(fix: generator.image_tokenizer_ckpt=<a dvae / vqvae / vqgan checkpoint>)")
    ):
        lit.load_image_tokenizer(str(clip), option="generator.image_tokenizer_ckpt")


def test_unknown_preset_or_field():
    with pytest.raises(ValueError, match="tiny"):
        DalleLit(preset="huge")
    with pytest.raises(ValueError, match="valid"):
        DalleLit(preset="tiny", net={"depth": 3})


def test_frozen_tokenizer_is_not_trained(tmp_path):
    model = DalleLit(
        preset="tiny", net=dict(H.TINY_NET), image_tokenizer_ckpt=str(H.tiny_tokenizer_ckpt(tmp_path / "t.ckpt"))
    )
    model.train()
    assert not model.image_tokenizer.training
    assert all(not p.requires_grad for p in model.image_tokenizer.parameters())
    opt = model.configure_optimizers()
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not in_opt & {id(p) for p in model.image_tokenizer.parameters()}
    assert in_opt == {id(p) for p in model.transformer.parameters()}


# --------------------------------------------------------------------- zoo-train -> checkpoint -> generate
def test_zoo_train_then_self_contained_checkpoint_generates(train_cfg, tmp_path):
    from zoo.checkpoint import load_module
    from zoo.train import train

    tok_ckpt = H.tiny_tokenizer_ckpt(tmp_path / "tokenizer.ckpt")
    cfg = train_cfg(
        "model=dalle",
        "model.preset=tiny",
        f"model.image_tokenizer_ckpt={tok_ckpt}",
        "+model.net.text_vocab=512",
        "+model.net.text_len=16",
        "+model.net.image_vocab=32",
        "data=shapes",
        "data/tokenizer=bpe",
        "data.tokenizer.vocab_size=300",
        "data.tokenizer.context_length=16",
        f"data.resolution={H.RESOLUTION}",
        "data.train_size=24",
        "data.val_size=8",
        "data.test_size=8",
        "data.batch_size=8",
        "trainer=cpu",
        "trainer.max_steps=3",
        "trainer.precision=bf16-mixed",
        "logger=csv",
        "trainer.enable_progress_bar=false",
        "trainer.num_sanity_val_steps=0",
        "test=false",
    )
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    assert metrics["global_step"] == 3
    for k in ("train/loss", "train/text_loss", "train/image_loss", "val/loss", "val/text_loss", "val/image_loss"):
        assert k in metrics, k
    assert list((run / "samples").glob("*.png")), "sample grid missing"
    ckpt_path = run / "checkpoints" / "last.ckpt"
    raw = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # plain values only
    assert raw["zoo_component"] == "dalle"
    assert raw["hyper_parameters"]["text_tokenizer"]["kind"] == "trained_bpe"
    tok_sd = {k[len("image_tokenizer.") :]: v for k, v in raw["state_dict"].items() if k.startswith("image_tokenizer.")}
    assert tok_sd, "frozen tokenizer weights missing from the checkpoint"

    # nothing but the checkpoint is needed: remove the tokenizer checkpoint and the BPE file
    tok_ckpt.unlink()
    for f in Path(cfg.paths.cache_dir).rglob("tokenizer.json"):
        f.unlink()
    model = load_module(ckpt_path)
    ref = H.tiny_tokenizer_ckpt(tmp_path / "again.ckpt")  # same seed -> same weights as the frozen one
    ref_sd = torch.load(ref, weights_only=True)["state_dict"]
    for k, v in model.image_tokenizer.state_dict().items():
        torch.testing.assert_close(v, ref_sd["vqvae." + k], rtol=0, atol=0)
    assert model.image_tokenizer.grid_size == (4, 4)
    captions = ["a large red circle at the top left", "a small blue square at the bottom right"]
    a = model.generate(captions, n=3, seed=1, top_k=8, guidance_scale=2.0)
    b = model.generate(captions, n=3, seed=1, top_k=8, guidance_scale=2.0)
    assert a.shape == (6, 3, H.RESOLUTION, H.RESOLUTION) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b)  # seeded
    assert not torch.equal(a, model.generate(captions, n=3, seed=2, top_k=8, guidance_scale=2.0))
    # priming with images keeps their top token rows
    primed = model.generate(captions[:1], n=2, seed=0, prime=a[:1], prime_rows=2)
    tok = model.image_tokenizer.encode(primed)
    assert torch.equal(tok[:, :2], model.image_tokenizer.encode(a[:1])[:, :2].expand(2, -1, -1))


def test_legacy_checkpoint_with_tokenizer_ckpt_loads(tmp_path):
    """A checkpoint written before the rename (``tokenizer_ckpt`` in its hyper-parameters, ``zoo_class`` import path,
    the text tokenizer spec as the old code wrote it) still loads and generates, without the tokenizer file."""
    from zoo.checkpoint import atomic_torch_save, load_module

    tok_ckpt = H.tiny_tokenizer_ckpt(tmp_path / "tokenizer.ckpt")
    bpe = H.tiny_bpe(context_length=16)
    torch.manual_seed(0)
    lit = DalleLit(preset="tiny", net=dict(H.TINY_NET), image_tokenizer_ckpt=str(tok_ckpt))
    hp = {
        "preset": "tiny",
        "net": dict(H.TINY_NET),
        "tokenizer_ckpt": str(tok_ckpt),
        "text_dropout": 0.15,
        "grid_captions": 8,
        "grid_top_k": None,
        "grid_guidance_scale": 1.0,
        "tokenizer_spec": lit._tokenizer_spec,
        "text_tokenizer": {"kind": "trained_bpe", "json": bpe._tok.to_str(), "context_length": 16},
    }
    path = tmp_path / "legacy_dalle.ckpt"
    atomic_torch_save(
        {"zoo_class": "zoo.models.dalle.lit.DalleLit", "hyper_parameters": hp, "state_dict": lit.state_dict()}, path
    )
    tok_ckpt.unlink()  # the rebuild never opens it: the tokenizer's weights are in the state dict
    model = load_module(path)
    assert model.hparams["image_tokenizer_ckpt"] is None and "tokenizer_ckpt" not in model.hparams
    for k, v in lit.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
    captions = ["a large red circle at the top left"]
    assert torch.equal(model.tokenize_text(captions), lit.pad_text(bpe.encode(captions)))
    assert model.generate(captions, n=2, seed=0).shape == (2, 3, H.RESOLUTION, H.RESOLUTION)


def test_text_tokenizer_spec_round_trip():
    from zoo.text import ClipBPETokenizer, TextTokenizer, TrainedBPETokenizer

    bpe = H.tiny_bpe(context_length=16)
    spec = bpe.to_spec()
    assert spec["kind"] == "trained_bpe" and isinstance(spec["json"], str) and spec["context_length"] == 16
    back = TextTokenizer.from_spec(spec)
    assert isinstance(back, TrainedBPETokenizer) and back.path is None
    caps = ["a small blue square at the bottom right"]
    assert torch.equal(back.encode(caps), bpe.encode(caps))
    clip = TextTokenizer.from_spec(ClipBPETokenizer(context_length=12).to_spec())
    assert isinstance(clip, ClipBPETokenizer) and clip.context_length == 12
    assert TextTokenizer.from_spec(None) is None
    with pytest.raises(ValueError, match="known kinds"):
        TextTokenizer.from_spec({"kind": "nope"})


# ------------------------------------------------------------------------------------------------ presets
def test_paper_preset_is_12_billion_parameters():
    from zoo.models.dalle.model import PAPER_PARAMS, PRESETS, DalleTransformer, DalleTransformerConfig
    from zoo.models.presets import resolve_preset

    cfg = resolve_preset(PRESETS, DalleTransformerConfig, "paper", None, "DALL·E transformer")
    assert (cfg.n_layers, cfg.n_heads, cfg.head_dim, cfg.dim) == (64, 62, 64, 3968)
    assert (cfg.text_len, cfg.grid_h * cfg.grid_w, cfg.text_vocab, cfg.image_vocab) == (256, 1024, 16384, 8192)
    with torch.device("meta"):
        model = DalleTransformer(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert n == PAPER_PARAMS
    assert 11.5e9 < n < 12.5e9  # "12 billion parameters"


def test_sample_grid_without_an_image_tokenizer_does_not_stop_the_run(tmp_path, caplog):
    """Trained from zoo-tokenize codes alone (no model.image_tokenizer_ckpt), the sample-grid callback raised "no
    image tokenizer to decode with" at the first validation and stopped the run. Now no grid is written, a warning
    says why and how to get one, and validation goes on."""
    from types import SimpleNamespace

    from zoo.callbacks.sample_grid import SampleGridCallback

    model = DalleLit(preset="tiny", net=dict(H.TINY_NET))
    batch = {**_fixed_batch(b=2), "caption": ["a", "b"], "image": torch.zeros(2, 3, 16, 16)}
    grid = SampleGridCallback(dirpath=str(tmp_path / "samples"))
    grid._batch = batch
    trainer = SimpleNamespace(default_root_dir=str(tmp_path), global_step=0, loggers=[])
    with caplog.at_level("WARNING"):
        assert grid.write(trainer, model) is None
        grid.write(trainer, model)
    warnings = [r.getMessage() for r in caplog.records if "no sample grids" in r.getMessage()]
    assert len(warnings) == 1 and "model.image_tokenizer_ckpt=" in warnings[0]
    assert not (tmp_path / "samples").exists()


def test_a_grid_top_k_the_sampler_would_misread_is_refused_when_built():
    with pytest.raises(ConfigError, match=r"model\.grid_top_k=.* must be a whole number >= 0"):
        DalleLit(preset="tiny", grid_top_k=-1)


@pytest.mark.parametrize("kw", [{}, {"guidance_scale": 3.0, "top_p": 0.9, "temperature": 0.5}])
def test_an_image_vocab_larger_than_the_codebook_samples_only_decodable_codes(tmp_path, kw):
    """check_data allows image_vocab above the tokenizer's codebook; the head's extra codes kept some probability,
    and a sample that drew one was an IndexError in decode after every token had been drawn. Guided sampling too
    (masked logits must not become NaN when the unconditional ones are subtracted)."""
    model = DalleLit(
        preset="tiny",
        net={**H.TINY_NET, "image_vocab": 64},
        image_tokenizer_ckpt=str(H.tiny_tokenizer_ckpt(tmp_path / "t.ckpt")),
    )
    model.text_tokenizer = H.tiny_bpe(context_length=16)
    assert model.image_tokenizer.codebook_size == 32
    text = model.tokenize_text(["a small blue square"] * 4)
    tokens = model.generate_tokens(text, generator=torch.Generator().manual_seed(0), **kw)
    assert int(tokens.max()) < 32 and tokens.unique().numel() > 1
    assert model.generate(["a small blue square"], n=2, **kw).shape == (2, 3, H.RESOLUTION, H.RESOLUTION)


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_grid_captions_that_is_not_a_positive_count_is_refused_when_built(bad):
    """0 failed at the first validation (sample_grid: torch.cat of no batches), -1 drew len - 1 grid rows."""
    with pytest.raises(ConfigError, match=r"model.grid_captions=\S+ must be a whole number >= 1"):
        DalleLit(preset="tiny", grid_captions=bad)
