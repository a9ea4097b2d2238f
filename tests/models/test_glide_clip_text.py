"""GLIDE's caption encoder initialised from a CLIP text tower (``model.text_init``, ``model.freeze_text``): the copied
encoder computes exactly the CLIP's per-token encodings, shape mismatches name the field to change, and zoo-train
trains around a frozen copy whose checkpoint samples without the CLIP file."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from zoo.errors import ConfigError
from zoo.models.clip.model import clip_config, create_clip, text_token_encodings
from zoo.models.glide.model import GLIDE_PRESETS, Glide, clip_text_state_dict

# The tiny CLIP's text tower (zoo-clip-tiny.json): CLIP BPE, 32 positions, width 64, 2 layers, 2 heads, causal.
CLIP_TEXT = dict(text_vocab=49408, text_len=32, text_width=64, text_layers=2, text_heads=2, text_pool="argmax")
CLIP_TEXT_ARGS = [f"++model.net.{k}={v}" for k, v in CLIP_TEXT.items()]


def _tiny_clip(seed: int = 0):
    """The tiny open_clip CLIP with every text parameter perturbed: LayerNorms at (1, 0) and zero biases would hide a
    swapped or dropped tensor in the copy."""
    torch.manual_seed(seed)
    model = create_clip(clip_config("tiny", None, None)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("visual"):
                p.add_(0.05 * torch.randn_like(p))
    return model


def _clip_tokens(n: int = 3, seed: int = 1) -> torch.Tensor:
    """(n, 32) CLIP BPE rows: SOT, random word ids, EOT (the highest id), pads, of different lengths."""
    g = torch.Generator().manual_seed(seed)
    tok = torch.zeros(n, 32, dtype=torch.long)
    for i in range(n):
        k = 3 + 7 * i
        tok[i, 0] = 49406
        tok[i, 1 : k + 1] = torch.randint(1, 49000, (k,), generator=g)
        tok[i, k + 1] = 49407
    return tok


def test_copied_encoder_computes_the_clip_token_encodings():
    clip = _tiny_clip()
    net = Glide(replace(GLIDE_PRESETS["tiny"], **CLIP_TEXT)).eval()
    net.text.load_clip_text(clip)
    tok = _clip_tokens()
    want, mask = text_token_encodings(clip, tok)
    with torch.no_grad():
        got, pooled = net.text(tok)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    eot = tok.argmax(-1)
    torch.testing.assert_close(pooled, want[torch.arange(3), eot], rtol=1e-5, atol=1e-5)  # argmax pooling = EOT
    assert (net.encode_text(tok)["context_mask"] == mask).all()  # pads masked in the U-Net exactly as CLIP's mask
    # the default GLIDE pooling reads the last position instead
    last = Glide(replace(GLIDE_PRESETS["tiny"], **{**CLIP_TEXT, "text_pool": "last"})).eval()
    last.text.load_clip_text(clip)
    with torch.no_grad():
        torch.testing.assert_close(last.text(tok)[1], want[:, -1], rtol=1e-5, atol=1e-5)


def test_mismatched_shapes_name_the_fields_to_change():
    cfg = replace(GLIDE_PRESETS["tiny"], **{**CLIP_TEXT, "text_layers": 3, "text_width": 32, "text_heads": 4})
    with pytest.raises(ValueError) as e:
        clip_text_state_dict(_tiny_clip(), cfg)
    msg = str(e.value)
    assert "model.net.text_layers=2" in msg and "model.net.text_width=64" in msg and "model.net.text_heads=2" in msg
    with pytest.raises(ValueError, match="text_causal=true"):
        clip_text_state_dict(_tiny_clip(), replace(GLIDE_PRESETS["tiny"], **CLIP_TEXT, text_causal=False))
    with pytest.raises(ValueError, match="text_pool"):
        replace(GLIDE_PRESETS["tiny"], text_pool="mean")


def test_freeze_text_needs_text_init():
    from zoo.models.glide.lit import GlideLit

    with pytest.raises(ConfigError, match="model.text_init"):
        GlideLit(preset="tiny", freeze_text=True)


def _train_args(clip_ckpt, *extra: str) -> list[str]:
    return [
        "model=glide",
        "model.preset=tiny",
        "model.grid_captions=2",
        "model.grid_steps=2",
        "data=shapes",
        "data/tokenizer=clip_bpe",
        "data.tokenizer.context_length=32",
        "data.resolution=16",
        *CLIP_TEXT_ARGS,
        f"model.text_init={clip_ckpt}",
        *extra,
    ]


def test_zoo_train_around_a_frozen_clip_text_tower(train_cfg, train_helpers, dalle_helpers, tmp_path):
    from zoo.checkpoint import load_module
    from zoo.models.clip.scorer import ClipScorer
    from zoo.models.glide.lit import GlideLit

    T = train_helpers
    clip_ckpt = dalle_helpers.tiny_clip_ckpt(tmp_path / "clip.ckpt", seed=3)
    clip = ClipScorer.from_lightning_checkpoint(str(clip_ckpt)).model
    want = clip_text_state_dict(clip, replace(GLIDE_PRESETS["tiny"], **CLIP_TEXT))
    cfg = train_cfg(*_train_args(clip_ckpt, "model.freeze_text=true"), *T.sizes(24), *T.ONE_EPOCH)
    _, last, ckpt = T.train_checked(cfg, "glide", global_step=3)
    sd = ckpt["state_dict"]
    for k, v in want.items():  # copied, then kept through 3 optimizer steps
        assert torch.equal(sd[f"net.text.{k}"], v), k
    clip_ckpt.unlink()  # sampling from the trained checkpoint never reads the CLIP file
    model = load_module(last)
    assert isinstance(model, GlideLit) and not any(p.requires_grad for p in model.net.text.parameters())
    imgs = model.generate(["a red circle", "a blue square at the top left"], n=1, steps=2, guidance_scale=2.0)
    assert imgs.shape == (2, 3, 16, 16) and torch.isfinite(imgs).all()


def test_text_init_with_another_tokenizer_fails_before_training(train_cfg, train_helpers, dalle_helpers, tmp_path):
    from zoo.train import train

    T = train_helpers
    clip_ckpt = dalle_helpers.tiny_clip_ckpt(tmp_path / "clip.ckpt")
    args = _train_args(clip_ckpt, "data/tokenizer=bpe", "data.tokenizer.vocab_size=300")
    args.remove("data/tokenizer=clip_bpe")
    with pytest.raises(ConfigError, match="data/tokenizer=clip_bpe"):
        train(train_cfg(*args, *T.sizes(24), *T.ONE_EPOCH))
    args = _train_args(tmp_path / "missing.ckpt")
    with pytest.raises(ConfigError, match="no file"):
        train(train_cfg(*args, *T.sizes(24), *T.ONE_EPOCH))


def test_argmax_pooling_needs_a_tokenizer_whose_end_of_text_is_the_highest_id():
    """text_pool=argmax finds CLIP BPE's end-of-text as the highest id; under the trained BPE (EOT = 3) it pooled the
    caption's highest-id word instead, mid-caption for a causal encoder, and check_data accepted it."""
    from types import SimpleNamespace

    from zoo.models.glide.lit import GlideLit
    from zoo.text import ClipBPETokenizer
    from zoo.text.trained_bpe import TrainedBPETokenizer

    bpe = TrainedBPETokenizer.train(["a red circle at the top left", "two blue squares"] * 20, 300, None, 32)
    lit = GlideLit(preset="tiny", net={"text_pool": "argmax"})
    with pytest.raises(ConfigError, match="text_pool=last"):
        lit.check_data(SimpleNamespace(tokenizer=bpe, resolution=16))
    GlideLit(preset="tiny", net={"text_pool": "last"}).check_data(SimpleNamespace(tokenizer=bpe, resolution=16))
    clip_lit = GlideLit(preset="tiny", net={k: v for k, v in CLIP_TEXT.items()})
    clip_lit.check_data(SimpleNamespace(tokenizer=ClipBPETokenizer(context_length=32), resolution=16))
