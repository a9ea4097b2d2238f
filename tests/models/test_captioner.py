"""DALL·E 3's captioner: cached == uncached decoding, beam width 1 == greedy, it overfits a fixed batch, the paper
preset's size, and zoo-train end to end (alt pre-training, then a descriptive fine-tune through init_from) with
load_module rebuilding a module that captions."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import pytest
import torch

from zoo.errors import ConfigError
from zoo.models.captioner.lit import CaptionerLit
from zoo.models.captioner.model import (
    PAPER_PARAMS,
    PRESETS,
    Captioner,
    CaptionerConfig,
    beam_search,
    build_config,
    sample_captions,
)
from zoo.text import TrainedBPETokenizer

D = 32  # the tiny preset's CLIP width


def _model(seed: int = 0, **net) -> Captioner:
    torch.manual_seed(seed)
    return Captioner(build_config("tiny", net)).double().eval()


def _emb(n: int, seed: int = 1, dim: int = D) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------------------------- decoding
def test_cached_decoding_equals_uncached():
    m, e = _model(), _emb(4)
    greedy = sample_captions(m, e, max_len=24)
    assert torch.equal(greedy, sample_captions(m, e, max_len=24, use_cache=False))
    assert (greedy[:, 0] == m.cfg.sot_id).all() and greedy.shape == (4, 24)
    for w in (1, 3):
        assert torch.equal(
            beam_search(m, e, beam_width=w, max_len=24), beam_search(m, e, beam_width=w, max_len=24, use_cache=False)
        )
    draws = [
        sample_captions(
            m, e, temperature=1.0, top_p=0.9, max_len=24, use_cache=c, generator=torch.Generator().manual_seed(3)
        )
        for c in (True, False)
    ]
    assert torch.equal(*draws)


def test_beam_width_one_is_greedy_and_wider_beams_score_at_least_as_well():
    m, e = _model(seed=2), _emb(6, seed=5)
    greedy = sample_captions(m, e, max_len=20)
    beam1, s1 = beam_search(m, e, beam_width=1, max_len=20, return_scores=True)
    assert torch.equal(beam1, greedy)
    _, s4 = beam_search(m, e, beam_width=4, length_penalty=0.0, max_len=20, return_scores=True)
    assert (s4 >= s1 - 1e-9).all()  # with no length normalisation the wider search never finds a worse sequence


def test_decoding_stops_at_eot_and_pads_after():
    m = _model()
    with torch.no_grad():  # make EOT the argmax after the second caption token
        m.head.weight[m.cfg.eot_id].zero_()
    cfg = m.cfg
    out = sample_captions(m, _emb(3), max_len=16)
    for row in out.tolist():
        if cfg.eot_id in row:
            k = row.index(cfg.eot_id)
            assert all(t == cfg.pad_id for t in row[k + 1 :])


def test_patch_tokens_prefix():
    m = _model(patch_dim=8, n_patches=5)
    patches = torch.randn(2, 5, 8, dtype=torch.float64)
    tokens = sample_captions(m, _emb(2), patches, max_len=10)
    assert torch.equal(tokens, sample_captions(m, _emb(2), patches, max_len=10, use_cache=False))
    assert torch.equal(beam_search(m, _emb(2), patches, beam_width=1, max_len=10), tokens)
    with pytest.raises(ValueError, match="patch"):
        sample_captions(m, _emb(2), max_len=10)


def test_prefix_emb_norm_lifts_the_image_above_the_prefix_positions():
    """Without the option the image-dependent part of the prefix starts far below the learned positions beside it
    (a unit-norm embedding through a std-0.02 MLP); with it, above them. Either way the prefix depends on the
    embedding's direction only (it is normalised first), and checkpoints without the field load as before."""
    z = torch.nn.functional.normalize(_emb(256, dim=128), dim=-1)

    def image_part_vs_positions(norm: bool) -> float:
        torch.manual_seed(0)
        m = Captioner(build_config("shapes", {"prefix_emb_norm": norm})).double()
        with torch.no_grad():
            p = m.embed_prefix(z)
            assert torch.allclose(m.embed_prefix(3.7 * z), p)  # scale-invariant in the embedding
            return ((p - p.mean(0)).pow(2).mean().sqrt() / m.prefix_pos.pow(2).mean().sqrt()).item()

    off, on = image_part_vs_positions(False), image_part_vs_positions(True)
    assert off < 0.25 and on > 1.0, (off, on)  # measured at init: 0.16 and 1.9
    assert CaptionerConfig().prefix_emb_norm is False and PRESETS["shapes"].prefix_emb_norm is False


def test_decoding_options_are_refused_not_replaced():
    """A negative temperature made nucleus decoding greedy, and caption(method="beam", beam_width=0) ran the
    module's default width (a falsy 0 read as "unset")."""
    with pytest.raises(ConfigError, match=r"model\.temperature=-1\.0 must be a number >= 0"):
        CaptionerLit(preset="tiny", temperature=-1.0)
    with pytest.raises(
        ConfigError, match=r"^model\.beam_width=0 must be a whole number >= 1: .*\(fix: model\.beam_width=4\)$"
    ):
        CaptionerLit(preset="tiny", beam_width=0)
    lit = CaptionerLit(preset="tiny")
    with pytest.raises(ConfigError, match=r"^beam_width=0 must be a whole number >= 1"):
        lit.caption_tokens(_emb(2).float(), method="beam", beam_width=0, max_len=6)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"method": "nucleus", "top_p": 0.0}, r"^top_p=0\.0 must be a number in \(0, 1\]"),
        ({"method": "nucleus", "top_p": 5.0}, r"^top_p=5\.0 must be a number in \(0, 1\]"),
        ({"method": "nucleus", "temperature": -1.0}, r"^temperature=-1\.0 must be a number >= 0"),
        ({"method": "beam", "beam_width": 2.5}, r"^beam_width=2\.5 must be a whole number >= 1"),
        ({"method": "beam", "length_penalty": float("nan")}, r"^length_penalty=nan must be a finite number"),
        ({"method": "greedy", "max_len": 0}, r"^max_len=0 must be a whole number >= 1 or null: .*\(fix: max_len=None"),
        ({"method": "beam", "max_len": -3}, r"^max_len=-3 must be a whole number >= 1 or null"),
    ],
)
def test_caption_options_given_in_python_are_checked_as_the_config_s(options, message):
    """caption(...) / caption_tokens(...) called from Python took options the config refuses: top_p=0 or a negative
    temperature decoded greedily under method="nucleus", top_p=5 and beam_width=2.5 ran unsaid, a NaN length
    penalty made every final score NaN (beam 0 won), max_len=0 decoded the full text_len and a negative one was
    torch's "negative dimension". The prompt upsampler's upsample shares the check."""
    from zoo.models.prompt_upsampler.lit import PromptUpsamplerLit

    lit = CaptionerLit(preset="tiny", text_tokenizer=_tokenizer_spec())
    with pytest.raises(ConfigError, match=message):
        lit.caption(_emb(2).float(), **options)
    up = PromptUpsamplerLit(preset="tiny", text_tokenizer=_tokenizer_spec())
    with pytest.raises(ConfigError, match=message):
        up.upsample(["a red circle"], **options)


# ------------------------------------------------------------------------------------------------- learning
CAPTIONS = [
    "a red circle",
    "two objects on a gray background: a small blue star at the top left and a large green heart in the middle center",
    "the yellow cross",
    "cool shapes wallpaper",
    "a large purple triangle at the bottom right",
    "an orange square icon",
]


def test_overfits_a_fixed_batch():
    tok = TrainedBPETokenizer.train(CAPTIONS * 4, vocab_size=300, context_length=64)
    net = {"vocab_size": 300, "text_len": 64, "pad_id": tok.pad_id, "sot_id": tok.sot_id, "eot_id": tok.eot_id}
    torch.manual_seed(0)
    model = Captioner(build_config("tiny", net))
    emb = torch.nn.functional.normalize(torch.randn(len(CAPTIONS), D), dim=-1)
    tokens = tok.encode(CAPTIONS)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for step in range(200):
        loss = model.loss(emb, tokens)["loss"]
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.05 * first
    assert tok.decode(sample_captions(model, emb)) == CAPTIONS
    assert tok.decode(beam_search(model, emb, beam_width=3)) == CAPTIONS


def test_presets_and_paper_size():
    assert set(PRESETS) == {"tiny", "shapes", "paper"}
    with torch.device("meta"):
        paper = Captioner(PRESETS["paper"])
    assert sum(p.numel() for p in paper.parameters()) == PAPER_PARAMS
    with pytest.raises(ConfigError, match="valid"):
        build_config("tiny", {"width": 3})
    assert isinstance(CaptionerLit(preset="tiny").cfg, CaptionerConfig)


# ------------------------------------------------------------------------------------------------- zoo-train
def _tokenizer_spec() -> dict:
    return TrainedBPETokenizer.train(CAPTIONS * 4, vocab_size=300, context_length=24).to_spec()


def _embed_file(path: Path, n: int, seed: int = 0, dim: int = D, meta: Optional[dict] = None) -> Path:
    from zoo.checkpoint import atomic_torch_save

    g = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)
    atomic_torch_save(
        {
            "clip_image_emb": emb,
            "clip_text_emb": emb.roll(1, 0),
            "clip_text_tokens": torch.randint(1, 100, (n, 16), generator=g),
            **({"meta": meta} if meta else {}),
        },
        path,
    )
    return path


def test_zoo_train_alt_then_descriptive_fine_tune_and_load_module(train_cfg, tmp_path):
    from omegaconf import open_dict

    from zoo.checkpoint import load_module
    from zoo.train import train

    train_file, val_file = _embed_file(tmp_path / "train.pt", 24), _embed_file(tmp_path / "val.pt", 8, seed=1)
    common = [
        "model.preset=tiny",
        "data.train_size=24",
        "data.val_size=8",
        "data.test_size=8",
        "data.batch_size=8",
        f"data.features.train={train_file}",
        f"data.features.val={val_file}",
        "logger=csv",
        "trainer.max_steps=3",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "trainer.num_sanity_val_steps=0",
        "trainer.max_time=null",
    ]
    cfg = train_cfg("experiment=dalle3/captioner_alt", *common, "data.tokenizer.vocab_size=400")
    metrics = train(cfg)
    assert metrics["global_step"] == 3 and "val/loss" in metrics
    alt_ckpt = tmp_path / "alt.ckpt"
    shutil.copy(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", alt_ckpt)
    alt = load_module(alt_ckpt)
    assert isinstance(alt, CaptionerLit) and alt.text_tokenizer is not None
    # the BPE was fitted on every caption style: a descriptive caption takes few tokens
    desc = (
        "two objects on a gray background: a small blue star at the top left and a large green heart at the "
        "bottom right"
    )
    assert len(alt.text_tokenizer._ids(desc)) < 40

    cfg = train_cfg("experiment=dalle3/captioner_descriptive", *common[1:], f"model.init_from={alt_ckpt}")
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run_ft")
    assert cfg.data.caption_style == "descriptive"
    model = CaptionerLit(**{k: v for k, v in cfg.model.items() if k not in ("_target_", "optimizer", "scheduler")})
    assert model.hparams["preset"] == "tiny"  # architecture and tokenizer come from the alt checkpoint
    assert torch.equal(model.net.tok_emb.weight, alt.net.tok_emb.weight)
    metrics = train(cfg)
    assert metrics["global_step"] == 3
    ft = load_module(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert ft.hparams["init_from"] is None  # not reopened on rebuild
    assert ft.text_tokenizer.to_spec() == alt.text_tokenizer.to_spec()
    emb = torch.load(val_file, weights_only=True)["clip_image_emb"][:3]
    for method in ("greedy", "beam", "nucleus"):
        caps = ft.caption(emb, method=method, max_len=12)
        assert len(caps) == 3 and all(isinstance(c, str) for c in caps)
    assert ft.caption(emb, method="beam", beam_width=1, max_len=12) == ft.caption(emb, method="greedy", max_len=12)


def test_the_captioner_keeps_its_clip_and_refuses_embeddings_of_another(train_cfg, tmp_path):
    """A captioner reads one CLIP's vectors; another CLIP of the same width (a CLIP retrained in place, the rebuilt
    chain of experiments/dalle3) passed every shape check, and zoo-recaption / eval.captions captioned its embeddings
    as noise, a fine-tune trained on them. The zoo-embed fingerprint now travels into the checkpoint and is
    compared."""
    from eval.captions import evaluate
    from zoo.checkpoint import load_module
    from zoo.recaption import run as recaption_run
    from zoo.train import train

    a, b = (
        _embed_file(tmp_path / "a.pt", 8, meta={"clip_fingerprint": "a" * 16}),
        _embed_file(tmp_path / "b.pt", 8, meta={"clip_fingerprint": "b" * 16}),
    )
    cfg = _tiny_captioner_cfg(train_cfg, a, f"data.features.val={a}", "data.batch_size=8", *QUICK)
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert load_module(ckpt).clip_fingerprint == "a" * 16
    with pytest.raises(ConfigError, match=r"another CLIP \(fingerprint b{16}\).*trained on \(fingerprint a{16}\)"):
        evaluate({"ckpt": str(ckpt), "features": str(b), "split": "val", "truth": False})
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        rc = compose("recaption", overrides=[f"ckpt={ckpt}", f"features={b}", f"out={tmp_path / 'c.pt'}"])
    with pytest.raises(ConfigError, match="another CLIP"):
        recaption_run(rc)
    ft = _tiny_captioner_cfg(
        train_cfg, b, f"data.features.val={b}", "data.batch_size=8", f"model.init_from={ckpt}", *QUICK
    )
    ft.paths.output_dir = str(tmp_path / "ft")
    with pytest.raises(ConfigError, match="trained on the embeddings of another CLIP"):
        train(ft)


def test_a_resumed_run_keeps_the_tokenizer_it_trained_with(train_cfg, tmp_path):
    """Resumed (ckpt_path=last) on other data (here another train_size: the BPE cache key changes, so check_data
    refitted it), the run took the new BPE and its weights read every caption as other token ids, silently."""
    from zoo.checkpoint import load_module
    from zoo.train import train

    def run(n: int, steps: int, *extra: str):
        cfg = _tiny_captioner_cfg(
            train_cfg,
            _embed_file(tmp_path / f"f{n}.pt", n),
            f"data.train_size={n}",
            "data.tokenizer.vocab_size=300",
            f"data.features.val={_embed_file(tmp_path / 'val.pt', 8)}",
            "data.batch_size=4",
            f"trainer.max_steps={steps}",
            *QUICK[1:],
            *extra,
        )
        train(cfg)
        return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"

    first = load_module(run(8, 1)).text_tokenizer.to_spec()
    resumed = load_module(run(40, 2, "ckpt_path=last"))
    assert resumed.text_tokenizer.to_spec() == first


def test_check_data_names_the_fixes(train_cfg, tmp_path):
    from zoo.train import check_compatibility, instantiate

    cfg = train_cfg("model=captioner", "model.preset=tiny", "data.train_size=8", "data.val_size=8")
    with pytest.raises(ConfigError, match="data.features.train"):
        check_compatibility(instantiate(cfg.model), instantiate(cfg.data))
    feats = _embed_file(tmp_path / "f.pt", 8)
    cfg = train_cfg(
        "model=captioner", "model.preset=tiny", "data.train_size=8", "data.val_size=8", f"data.features.train={feats}"
    )
    with pytest.raises(ConfigError, match="data/tokenizer=bpe"):
        check_compatibility(instantiate(cfg.model), instantiate(cfg.data))
    cfg = train_cfg(
        "model=captioner",
        "model.preset=shapes",
        "data.train_size=8",
        "data.val_size=8",
        f"data.features.train={feats}",
        "data/tokenizer=bpe",
    )
    with pytest.raises(ConfigError, match="model.net.embed_dim=32"):
        check_compatibility(instantiate(cfg.model), instantiate(cfg.data))
    cfg = train_cfg("experiment=dalle3/captioner_short", f"model.init_from={tmp_path / 'missing.ckpt'}")
    with pytest.raises(ConfigError, match="model.init_from"):
        check_compatibility(instantiate(cfg.model), instantiate(cfg.data))


QUICK = (  # a one-step zoo-train run (no test split: these features files are train / val only)
    "trainer.max_steps=1",
    "logger=csv",
    "trainer.enable_progress_bar=false",
    "trainer.num_sanity_val_steps=0",
    "test=false",
)


def _tiny_captioner_cfg(train_cfg, train_features: Path, *extra: str):
    """A tiny captioner on 8 shapes scenes with the data's BPE and these train features."""
    return train_cfg(
        "model=captioner",
        "model.preset=tiny",
        "data.train_size=8",
        "data.val_size=8",
        "data/tokenizer=bpe",
        f"data.features.train={train_features}",
        *extra,
    )


def test_patch_tokens_without_patch_features_are_refused_before_training(train_cfg, tmp_path):
    """model.net.patch_dim > 0 on zoo-embed features (which carry no clip_image_patches) passed check_data and died
    on a ValueError at the first training step."""
    from zoo.train import check_compatibility, instantiate

    cfg = _tiny_captioner_cfg(
        train_cfg, _embed_file(tmp_path / "f.pt", 8), "+model.net.patch_dim=16", "+model.net.n_patches=4"
    )
    with pytest.raises(ConfigError, match=r"no clip_image_patches.*fix: model.net.patch_dim=0"):
        check_compatibility(instantiate(cfg.model), instantiate(cfg.data))


def test_a_fine_tune_refuses_net_fields_it_would_ignore(train_cfg, tmp_path):
    """model.init_from replaces preset and net with the source's: model.net.prefix_emb_norm=true given on the
    fine-tune was dropped silently. Refused, naming the field; a field equal to the source's passes. Features of
    another CLIP width name the features as the fix (model.net.embed_dim cannot change a fine-tune's network)."""
    from zoo.checkpoint import atomic_torch_save
    from zoo.train import check_compatibility, fit_tiny_to_data, instantiate

    net = {"vocab_size": 300, "text_len": 24}
    src = CaptionerLit(preset="tiny", net=net, text_tokenizer=_tokenizer_spec())
    alt = tmp_path / "alt.ckpt"
    atomic_torch_save(
        {
            "zoo_component": "captioner",
            "hyper_parameters": {"preset": "tiny", "net": net, "text_tokenizer": _tokenizer_spec()},
            "state_dict": src.state_dict(),
        },
        alt,
    )
    with pytest.raises(ConfigError, match=r"model.net.prefix_emb_norm=True: a fine-tune takes its network"):
        CaptionerLit(net={"prefix_emb_norm": True, "text_len": 24}, init_from=str(alt))
    ft = CaptionerLit(net={"text_len": 24}, init_from=str(alt))
    assert ft.cfg.text_len == 24 and ft.hparams["preset"] == "tiny"
    wide = _embed_file(tmp_path / "wide.pt", 8, dim=2 * D)
    cfg = train_cfg(
        "experiment=dalle3/captioner_descriptive",
        f"model.init_from={alt}",
        "data.train_size=8",
        "data.val_size=8",
        f"data.features.train={wide}",
        f"data.features.val={wide}",
    )
    model, dm = instantiate(cfg.model), instantiate(cfg.data)
    with pytest.raises(ConfigError, match=r"64-d but the captioner expects 32 \(fix: data.features"):
        check_compatibility(fit_tiny_to_data(model, dm), dm)


def test_check_data_checks_the_val_features_too(train_cfg, tmp_path):
    """Only data.features.train was checked: a val file without clip_image_emb (a zoo-tokenize file) or of another
    CLIP width failed at the first validation, after the training steps when sanity checks are off. Now refused."""
    from zoo.checkpoint import atomic_torch_save
    from zoo.train import check_compatibility, instantiate

    feats = _embed_file(tmp_path / "f.pt", 8)
    codes = atomic_torch_save({"image_tokens": torch.zeros(8, 2, 2, dtype=torch.long)}, tmp_path / "codes.pt")
    wide = atomic_torch_save(
        {"clip_image_emb": torch.nn.functional.normalize(torch.randn(8, 2 * D), dim=-1)}, tmp_path / "wide.pt"
    )
    for val, says in [(codes, "has no clip_image_emb"), (wide, f"holds {2 * D}-d embeddings, train {D}-d")]:
        cfg = _tiny_captioner_cfg(train_cfg, feats, f"data.features.val={val}")
        with pytest.raises(ConfigError, match=f"data.features.val={val} {says}"):
            check_compatibility(instantiate(cfg.model), instantiate(cfg.data))


@pytest.mark.parametrize("method", ["greedy", "nucleus", "beam"])
def test_decoding_never_emits_sot_pad_or_ids_the_tokenizer_lacks(method):
    """A network whose vocab_size exceeds the fitted BPE's (1024 vs a few hundred on shapes), or barely trained, gave
    mass to ids with no text and to [SOT] / [PAD]: decode() dropped them without a word (a fresh captioner's captions
    were ''). Here the network is random and 60 of its 64 ids are past the tokenizer's 4-word vocabulary."""
    torch.manual_seed(0)
    cfg = CaptionerConfig(dim=32, n_layers=1, n_heads=2, head_dim=16, vocab_size=64, text_len=12, embed_dim=8)
    net = Captioner(cfg)
    emb = torch.randn(6, 8)
    n_valid = 6  # [PAD] 0, 1, [SOT] 2, [EOT] 3, 4, 5
    if method == "beam":
        out = beam_search(net, emb, beam_width=3, n_valid=n_valid)
    else:
        temp = 0.0 if method == "greedy" else 1.0
        gen = torch.Generator().manual_seed(1)
        out = sample_captions(net, emb, temperature=temp, top_p=0.95, generator=gen, n_valid=n_valid)
    for row in out.tolist():
        assert row[0] == cfg.sot_id
        body = row[1 : row.index(cfg.eot_id) + 1] if cfg.eot_id in row else row[1:]
        assert body and all(t < n_valid and t not in (cfg.sot_id, cfg.pad_id) for t in body), row
        assert all(t == cfg.pad_id for t in row[1 + len(body) :]), row  # only [PAD] after [EOT]
    # without n_valid the network's own vocabulary stands, [SOT] and [PAD] still never drawn
    out = sample_captions(net, emb)
    assert not ((out[:, 1:] == cfg.sot_id).any())


@pytest.mark.parametrize(
    "option, value",
    [("temperature", "hot"), ("length_penalty", "x"), ("top_p", "high"), ("length_penalty", float("nan"))],
)
def test_a_decoding_option_that_is_no_number_names_the_option(option, value):
    """float('hot') was Python's bare 'could not convert string to float', naming no option; a NaN length_penalty
    was taken at construction (every beam's score NaN, argmax then took beam 0)."""
    from zoo.models.prompt_upsampler.lit import PromptUpsamplerLit

    for cls in (CaptionerLit, PromptUpsamplerLit):
        with pytest.raises(
            ConfigError, match=rf"^model\.{option}=.* must be a (finite )?number.*\(fix: model\.{option}="
        ):
            cls(preset="tiny", **{option: value})


def test_each_validation_writes_the_captioner_s_captions_of_the_first_val_items(train_cfg, tmp_path):
    """A captioner draws no image, so no sample grid showed what it writes during training: each validation now
    writes its greedy captions of the first val items beside their true ones (samples/captions_step<N>.tsv)."""
    from zoo.checkpoint import load_module
    from zoo.train import train

    features = _embed_file(tmp_path / "train.pt", 16)
    cfg = train_cfg(
        "model=captioner",
        "model.preset=tiny",
        "data.train_size=16",
        "data.val_size=16",
        "data.test_size=16",
        "data.batch_size=8",
        "data/tokenizer=bpe",
        f"data.features.train={features}",
        f"data.features.val={_embed_file(tmp_path / 'val.pt', 16, seed=1)}",
        f"data.features.test={_embed_file(tmp_path / 'test.pt', 16, seed=2)}",
        "logger=csv",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "trainer.enable_progress_bar=false",
        "test=false",
    )
    train(cfg)
    out = Path(cfg.paths.output_dir)
    files = sorted((out / "samples").glob("captions_step*.tsv"))
    assert [f.name for f in files] == ["captions_step0000002.tsv", "captions_step0000004.tsv"]  # not the sanity check
    rows = [line.split("\t") for line in files[-1].read_text().splitlines()]
    assert rows[0] == ["caption", "sample"] and len(rows) == 1 + CaptionerLit.n_sample_captions

    model = load_module(out / "checkpoints" / "last.ckpt")
    val_emb = torch.load(tmp_path / "val.pt", weights_only=True)["clip_image_emb"][: CaptionerLit.n_sample_captions]
    # the samples are the trained model's greedy captions of those items, in order
    assert [r[1] for r in rows[1:]] == model.caption(val_emb, method="greedy")
    assert all(r[0] for r in rows[1:])  # each beside its true caption
