"""unCLIP decoder: shapes, the embedding reaching the timestep embedding and the 4 context tokens, the null condition
and the independent dropouts, guidance 1 == conditional, overfitting a batch, zoo-train -> load_module -> generate,
and the paper preset's parameter count (meta device)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from zoo.diffusion.samplers import ddim_sample
from zoo.errors import ConfigError
from zoo.models.glide.model import count_glide_params
from zoo.models.unclip_decoder.lit import UnclipDecoderLit
from zoo.models.unclip_decoder.model import (
    UNCLIP_DECODER_PAPER_PARAMS,
    UNCLIP_DECODER_PRESETS,
    UnclipDecoder,
    count_decoder_params,
)
from zoo.nn.unet import AttentionBlock

TINY = UNCLIP_DECODER_PRESETS["tiny"]
D = TINY.clip_dim


def _tokens(b: int = 2, n_real: int = 5, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tok = torch.full((b, TINY.text_len), TINY.pad_id, dtype=torch.long)
    tok[:, :n_real] = torch.randint(1, TINY.text_vocab, (b, n_real), generator=g)
    return tok


def _inputs(b: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(b, D, generator=g), dim=-1)
    return torch.randn(b, 3, 16, 16, generator=g), torch.randint(0, 1000, (b,), generator=g), emb


def _net(perturb) -> UnclipDecoder:
    torch.manual_seed(0)
    return perturb(UnclipDecoder(TINY)).eval()


def test_output_shapes_and_context_layout(perturb):
    net = _net(perturb)
    x, t, emb = _inputs()
    assert net(x, t, _tokens(), emb).shape == (2, 6, 16, 16)
    assert net(x, t, _tokens()[:, :7], emb).shape == (2, 6, 16, 16)
    cond = net.encode(_tokens(), emb)
    assert cond["context"].shape == (2, TINY.text_len + 4, TINY.text_width)
    assert cond["emb"].shape == (2, 4 * TINY.width)
    mask = cond["context_mask"]
    assert mask[:, :5].all() and not mask[:, 5 : TINY.text_len].any() and mask[:, TINY.text_len :].all()
    # the 4 embedding tokens stay valid for the empty caption (so its context is never only masked pads)
    assert net.encode(None, None, batch=2)["context_mask"][:, -4:].all()


def test_embedding_reaches_timestep_embedding_and_every_attention_layer(perturb):
    net = _net(perturb)
    x, t, emb = _inputs()
    emb = emb.clone().requires_grad_(True)
    seen = []
    hooks = [
        blk.context_kv.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
        for blk in net.unet.attention_blocks()
    ]
    net(x, t, _tokens(), emb).square().sum().backward()
    for h in hooks:
        h.remove()
    assert len(seen) == len(net.unet.attention_blocks()) >= 4 and set(seen) == {TINY.text_len + 4}
    for proj in (net.clip_emb_proj, net.clip_tokens_proj):  # both paths carry gradient from the output
        assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    assert emb.grad.abs().sum() > 0

    # each path alone changes the output: cut one, the embedding still matters through the other
    for cut in ("clip_emb_proj", "clip_tokens_proj"):
        net2 = _net(perturb)
        with torch.no_grad():
            getattr(net2, cut).weight.zero_()
        a, b = net2(x, t, _tokens(), emb.detach()), net2(x, t, _tokens(), -emb.detach())
        assert not torch.allclose(a, b), cut
    # and the 4 tokens go through the attention's context keys/values: gradient at every attention block
    net.zero_grad()
    emb2 = emb.detach().clone().requires_grad_(True)
    net(x, t, _tokens(), emb2).square().sum().backward()
    assert all(
        blk.context_kv.weight.grad.abs().sum() > 0 for blk in net.unet.modules() if isinstance(blk, AttentionBlock)
    )


def test_clip_emb_norm_scales_the_embedding_to_the_text_tokens(perturb):
    """clip_emb_norm: z_i at unit RMS (so its scale does not matter), LayerNormed tokens, the zero embedding still
    the null condition; off, a unit-norm z_i's tokens are far smaller than the text tokens beside them."""
    x, t, emb = _inputs()
    torch.manual_seed(0)
    plain = UnclipDecoder(TINY).eval()
    torch.manual_seed(0)
    normed = perturb(UnclipDecoder(replace(TINY, clip_emb_norm=True))).eval()
    n_text = TINY.text_len

    def rms(v):
        return v.pow(2).mean().sqrt().item()

    ctx = plain.encode(_tokens(), emb)["context"]
    assert rms(ctx[:, n_text:]) < 0.2 * rms(ctx[:, :n_text])  # the imbalance the option removes
    ctx = normed.encode(_tokens(), emb)["context"]
    assert 0.5 < rms(ctx[:, n_text:]) / rms(ctx[:, :n_text]) < 2  # LayerNormed, like the text tokens
    with torch.no_grad():  # unit RMS: the projection sees sqrt(D) * z_i for a unit-norm z_i, whatever its scale
        scaled = normed.clip_emb_proj(emb * D**0.5)
        torch.testing.assert_close(
            normed.encode(_tokens(), 7 * emb)["emb"] - normed.encode(_tokens(), None, batch=2)["emb"],
            scaled - normed.clip_emb_proj(torch.zeros(2, D)),
        )
    torch.testing.assert_close(normed(x, t, _tokens(), emb), normed(x, t, _tokens(), 3 * emb))
    assert torch.equal(normed(x, t, None, None), normed(x, t, None, torch.zeros(2, D)))
    assert not torch.allclose(normed(x, t, None, None), normed(x, t, None, emb))


def test_null_condition_and_independent_dropouts(perturb):
    net = _net(perturb)
    x, t, emb = _inputs()
    null = net(x, t, None, None)
    assert torch.equal(null, net(x, t, net.null_tokens(2), torch.zeros(2, D)))
    assert not torch.allclose(null, net(x, t, _tokens(), emb))
    lit = UnclipDecoderLit(preset="tiny")
    assert lit.text_dropout == 0.5 and lit.emb_dropout == 0.1  # unCLIP's defaults
    n = 4000
    tok = _tokens(n, seed=3)
    e = torch.nn.functional.normalize(torch.randn(n, D), dim=-1)
    g = torch.Generator().manual_seed(0)
    dt = (lit.drop_captions(tok, g) == TINY.pad_id).all(1)
    de = (lit.drop_embeddings(e, g) == 0).all(1)
    assert abs(dt.float().mean().item() - 0.5) < 0.04 and abs(de.float().mean().item() - 0.1) < 0.03
    both = (dt & de).float().mean().item()
    assert abs(both - 0.05) < 0.02  # independent draws: 0.5 x 0.1
    # a row whose caption and embedding were both dropped is exactly the null condition
    lit = UnclipDecoderLit(preset="tiny", text_dropout=0.7, emb_dropout=0.7)
    lit.net = net
    x8, t8, e8 = _inputs(8, seed=5)
    g = torch.Generator().manual_seed(1)
    tok8, e8 = lit.drop_captions(_tokens(8), g), lit.drop_embeddings(e8, g)
    both = (tok8 == TINY.pad_id).all(1) & (e8 == 0).all(1)
    assert 0 < both.sum() < 8
    torch.testing.assert_close(net(x8, t8, tok8, e8)[both], net(x8, t8, None, None)[both], rtol=0, atol=1e-6)


def test_null_dropout_adds_the_joint_null_on_top_of_the_independent_draws():
    n = 4000
    tok = _tokens(n, seed=3)
    e = torch.nn.functional.normalize(torch.randn(n, D), dim=-1)
    # 0 (the default) is the paper's scheme: drop_conditions == the two independent drops, same generator state
    lit = UnclipDecoderLit(preset="tiny", text_dropout=0.2)
    assert lit.null_dropout == 0.0
    t0, e0 = lit.drop_conditions(tok, e, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    assert torch.equal(t0, lit.drop_captions(tok, g)) and torch.equal(e0, lit.drop_embeddings(e, g))
    # with p: P(both) = p + (1 - p) * 0.2 * 0.1 = 0.2 + 0.8 * 0.02 = 0.216; P(caption dropped) = 0.2 + 0.8 * 0.2 = 0.36
    lit = UnclipDecoderLit(preset="tiny", text_dropout=0.2, emb_dropout=0.1, null_dropout=0.2)
    td, ed = lit.drop_conditions(tok, e, torch.Generator().manual_seed(0))
    dt, de = (td == TINY.pad_id).all(1), (ed == 0).all(1)
    assert abs((dt & de).float().mean().item() - 0.216) < 0.03
    assert abs(dt.float().mean().item() - 0.36) < 0.03 and abs(de.float().mean().item() - 0.28) < 0.03
    # rows left alone keep their caption and embedding exactly
    keep = ~dt & ~de
    assert torch.equal(td[keep], tok[keep]) and torch.equal(ed[keep], e[keep])
    with pytest.raises(ConfigError, match="null_dropout"):
        UnclipDecoderLit(preset="tiny", null_dropout=1.0)


def test_decoder_guidance_one_is_the_conditional_model_bit_for_bit(nn_helpers):
    lit = nn_helpers.sampling_lit(UnclipDecoderLit)
    caps = ["a red circle", "two blue squares"]
    _, _, emb = _inputs()
    got = lit.generate(caps, emb, seed=3, decoder_guidance_scale=1.0, steps=4)
    cond = lit.net.encode(lit.encode_captions(caps), emb)
    ref = ddim_sample(
        lit.process.respaced(4),
        lambda x, t: lit.net.denoise(x, t, cond),
        (2, 3, 16, 16),
        generator=torch.Generator().manual_seed(3),
        clip_denoised=True,  # the model's sampler clips the predicted x0 to the image range
    ).clamp(-1, 1)
    assert torch.equal(got, ref)
    guided = lit.generate(caps, emb, seed=3, decoder_guidance_scale=3.0, steps=4)
    assert guided.shape == got.shape and not torch.equal(guided, got)
    # from embeddings alone (the unCLIP pipeline): the empty caption, n per embedding
    imgs = lit.generate_from_embeddings(emb, n=2, steps=2, decoder_guidance_scale=2.0)
    assert imgs.shape == (4, 3, 16, 16) and imgs.abs().max() <= 1


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_an_embedding_of_another_width_is_named_at_every_guidance_scale(scale):
    lit = UnclipDecoderLit(preset="tiny")
    with pytest.raises(ValueError, match=f"clip_dim={D}"):  # guided: a bare torch.cat size error before
        lit.sample(_tokens(2), torch.randn(2, 2 * D), decoder_guidance_scale=scale, steps=2)
    with pytest.raises(ValueError, match="for 3 captions"):
        lit.sample(_tokens(3), torch.randn(2, D), decoder_guidance_scale=scale, steps=2)


def test_glides_caption_only_model_fn_refuses_the_decoder():
    """GlideLit.model_fn (what clip_guided_generate samples with) ran the decoder without its embedding: no timestep
    projection and no 4 context tokens, an input it never saw in training, silently."""
    lit = UnclipDecoderLit(preset="tiny")
    with pytest.raises(NotImplementedError, match="decoder_model_fn"):
        lit.model_fn(_tokens(2), 3.0)
    assert lit.decoder_model_fn(_tokens(2), torch.randn(2, D), 3.0) is not None


def test_sampling_a_decoder_left_in_training_mode_uses_no_dropout(perturb):
    torch.manual_seed(0)
    lit = UnclipDecoderLit(preset="tiny", net={"dropout": 0.5})
    perturb(lit.net)
    emb = torch.randn(2, D, generator=torch.Generator().manual_seed(2))

    def draw():
        return lit.sample(_tokens(2), emb, 2.0, steps=2, generator=torch.Generator().manual_seed(0))

    a, b = draw(), draw()
    assert lit.training  # the caller's mode is restored
    lit.eval()
    assert torch.equal(a, b) and torch.equal(a, draw())


def test_tiny_decoder_overfits_a_fixed_batch(nn_helpers):
    torch.manual_seed(0)
    lit = UnclipDecoderLit(preset="tiny", text_dropout=0.0, emb_dropout=0.0)
    g = torch.Generator().manual_seed(0)
    base = torch.rand(4, 3, 1, 1, generator=g) * 2 - 1
    x0 = (base + 0.3 * torch.linspace(-1, 1, 16)[None, None, :, None]).clamp(-1, 1).expand(4, 3, 16, 16)
    batch = {
        "image": x0.contiguous(),
        "text_tokens": _tokens(4),
        "clip_image_emb": torch.nn.functional.normalize(torch.randn(4, D, generator=g), dim=-1),
    }
    start, end = nn_helpers.overfit(lit, batch)  # eval MSE on fixed timesteps / noise, before and after 40 steps
    assert end < 0.35 * start, (start, end)


def test_paper_preset_parameter_count_and_registry():
    from zoo.registry import component_class, component_name_of

    assert count_decoder_params("paper") == UNCLIP_DECODER_PAPER_PARAMS
    # GLIDE's 3.5B plus the two projections of the 1024-d ViT-H embedding (2048 + 4 x 2048 outputs, with biases)
    # and the positions of unCLIP's 256-token text context (Table 3; GLIDE's paper preset reads 128)
    assert UNCLIP_DECODER_PAPER_PARAMS - count_glide_params("paper") == 1025 * 2048 + 1025 * 4 * 2048 + 128 * 2048
    assert UNCLIP_DECODER_PRESETS["paper"].text_len == 256
    assert component_class("unclip_decoder") is UnclipDecoderLit
    assert component_name_of(UnclipDecoderLit) == "unclip_decoder"  # not "glide", its base class


def _features_file(path: Path, n: int, meta: dict | None = None):
    from zoo.checkpoint import atomic_torch_save

    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(n, D, generator=g), dim=-1)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(
        {
            "clip_image_emb": emb,
            "clip_text_emb": emb.roll(1, 0),
            "clip_text_tokens": torch.randint(1, 100, (n, 32), generator=g),
            **({"meta": meta} if meta else {}),
        },
        path,
    )
    return path


def test_train_checkpoint_load_and_generate(train_cfg, tmp_path, train_helpers):
    from zoo.checkpoint import load_module

    T = train_helpers
    files = {s: _features_file(tmp_path / "emb" / f"{s}.pt", n) for s, n in (("train", 16), ("val", 8), ("test", 8))}
    cfg = train_cfg(
        "model=unclip_decoder",
        "model.preset=tiny",
        "model.grid_captions=2",
        "model.grid_steps=2",
        *T.SHAPES_BPE,
        "data.resolution=16",
        *T.sizes(),
        *[f"data.features.{s}={p}" for s, p in files.items()],
        *T.ONE_EPOCH,
    )
    _, last, ckpt = T.train_checked(cfg, "unclip_decoder", global_step=2)
    model = load_module(last)
    # the CLI's decoder scales the embedding (conf/model/unclip_decoder.yaml), and the checkpoint rebuilds it so
    assert isinstance(model, UnclipDecoderLit) and model.cfg == replace(TINY, clip_emb_norm=True)
    assert isinstance(model.net.clip_tokens_norm, torch.nn.LayerNorm)
    for k, v in ckpt["state_dict"].items():
        assert torch.equal(model.state_dict()[k], v), k
    emb = torch.load(files["val"], weights_only=True)["clip_image_emb"][:2]
    imgs = model.generate(["a red circle", "a blue square"], emb, steps=2, decoder_guidance_scale=2.0)
    assert imgs.shape == (2, 3, 16, 16) and torch.isfinite(imgs).all()


def test_frozen_clip_in_the_loop_embeds_batches_without_features(dalle_helpers, tmp_path):
    from zoo.models.clip.scorer import ClipScorer

    ckpt = dalle_helpers.tiny_clip_ckpt(tmp_path / "clip.ckpt")  # zoo-clip-tiny: 32-d == the tiny decoder's clip_dim
    torch.manual_seed(0)
    lit = UnclipDecoderLit(preset="tiny", clip_ckpt=str(ckpt))
    x0 = torch.rand(2, 3, 16, 16) * 2 - 1
    emb = lit.image_embedding({"image": x0})
    want = ClipScorer.from_lightning_checkpoint(str(ckpt)).encode_image(x0)
    torch.testing.assert_close(emb, want)
    assert not any(k.startswith("_clip") or "clip." in k for k in lit.state_dict())  # not part of the weights
    loss = lit.forward_loss({"image": x0, "text_tokens": _tokens(2)}, train=True)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is None for p in lit.clip_scorer().model.parameters())


def _frozen_clip_decoder(T, clip) -> list[str]:
    """zoo-train overrides: the tiny decoder on 16 px shapes embedding its batches with the frozen CLIP ``clip``."""
    return [
        "model=unclip_decoder",
        "model.preset=tiny",
        f"model.clip_ckpt={clip}",
        "model.grid_captions=2",
        "model.grid_steps=2",
        *T.SHAPES_BPE,
        "data.resolution=16",
        *T.sizes(),
        *T.ONE_EPOCH,
    ]


def test_features_of_another_clip_than_the_frozen_one_are_refused(train_cfg, tmp_path, train_helpers, dalle_helpers):
    """With ``model.clip_ckpt`` the frozen CLIP embeds the batches without features and the zoo-embed files the
    rest: files of another CLIP (their meta's ``clip_fingerprint``) mixed two spaces in one run, silently. The
    same CLIP's files train, and the checkpoint keeps that CLIP's fingerprint."""
    from zoo.errors import ConfigError
    from zoo.models.clip.scorer import ClipScorer
    from zoo.train import train

    T = train_helpers
    clip = dalle_helpers.tiny_clip_ckpt(tmp_path / "clip.ckpt")
    fp = ClipScorer.from_lightning_checkpoint(str(clip)).fingerprint

    def run(tag: str, fingerprint: str):
        files = {
            s: _features_file(tmp_path / tag / f"{s}.pt", n, {"clip_fingerprint": fingerprint})
            for s, n in (("train", 16), ("val", 8), ("test", 8))
        }
        cfg = train_cfg(*_frozen_clip_decoder(T, clip), *[f"data.features.{s}={p}" for s, p in files.items()])
        cfg.paths.output_dir = str(tmp_path / tag / "run")
        return train(cfg)

    with pytest.raises(ConfigError, match="different CLIPs"):
        run("other", "0123456789abcdef")
    run("same", fp)
    ckpt = torch.load(tmp_path / "same" / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["clip_fingerprint"] == fp


def test_missing_embeddings_is_a_config_error(train_cfg):
    import pytest

    from zoo.errors import ConfigError
    from zoo.train import check_compatibility, instantiate

    cfg = train_cfg(
        "model=unclip_decoder",
        "model.preset=tiny",
        "data=shapes",
        "data/tokenizer=bpe",
        "data.tokenizer.vocab_size=300",
        "data.tokenizer.context_length=32",
        "data.resolution=16",
        "data.train_size=8",
        "data.val_size=8",
    )
    with pytest.raises(ConfigError, match="clip_ckpt|data.features"):
        check_compatibility(instantiate(cfg.model), instantiate(cfg.data))


def test_a_missing_frozen_clip_names_the_option(tmp_path):
    import pytest

    from zoo.errors import ConfigError

    lit = UnclipDecoderLit(preset="tiny", clip_ckpt=str(tmp_path / "nope.ckpt"))
    with pytest.raises(ConfigError, match=r"model\.clip_ckpt: no file .*nope\.ckpt .*model\.clip_ckpt="):
        lit.clip_scorer()


def test_zoo_sample_grid_of_a_decoder_trained_on_a_frozen_clip_takes_that_clip(
    tmp_path, train_cfg, train_helpers, dalle_helpers
):
    """zoo-sample ckpt=<decoder> without prompts (the README: any checkpoint gives its sample grid) failed for a
    decoder trained with model.clip_ckpt and no zoo-embed files: the rebuild does not reopen the stored CLIP path,
    and the error gave training advice (model.clip_ckpt=). Now generator.clip_ckpt gives it the CLIP (checked by
    fingerprint), and without it the ConfigError names that option and the stored path."""
    from zoo.errors import ConfigError
    from zoo.pipelines.grid import checkpoint_sample_grid
    from zoo.train import train

    T = train_helpers
    clip = dalle_helpers.tiny_clip_ckpt(tmp_path / "clip.ckpt")
    other = dalle_helpers.tiny_clip_ckpt(tmp_path / "other.ckpt", seed=1)
    train(train_cfg(*_frozen_clip_decoder(T, clip)))
    ckpt = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match=rf"generator.clip_ckpt=<the CLIP it trained with, {clip}>"):
        checkpoint_sample_grid(ckpt)
    with pytest.raises(ConfigError, match="is another CLIP than the one"):
        checkpoint_sample_grid(ckpt, clip_ckpt=str(other))
    images, nrow = checkpoint_sample_grid(ckpt, clip_ckpt=str(clip))
    assert images.shape[1:] == (3, 16, 16) and len(images) == 4 and torch.isfinite(images).all()


@pytest.mark.parametrize("name", ["text_dropout", "emb_dropout", "null_dropout"])
@pytest.mark.parametrize("value", ["0.1", True, -0.1, float("nan")])
def test_a_dropout_rate_that_is_not_a_probability_is_refused_when_built(name, value):
    # "0.1" (a string) failed with a TypeError from the comparison, and true passed as a rate
    with pytest.raises(ConfigError, match=rf"model\.{name}=.+ must be a number in \[0, 1\): the probability"):
        UnclipDecoderLit(preset="tiny", **{name: value})


def test_training_a_decoder_that_never_trains_its_null_but_guides_its_grids_is_a_warning(caplog):
    """The decoder guides against the empty caption and the zero embedding together, trained text_dropout x
    emb_dropout (+ null_dropout) of the time. GlideLit's training-time warning read GLIDE's guidance_scale, which the
    decoder lacks, so emb_dropout=0 (or text_dropout=0) with the default grid guidance 3 trained without a word."""
    import logging

    def warned() -> list[str]:
        return [r.getMessage() for r in caplog.records if "never trains its null condition" in r.getMessage()]

    with caplog.at_level(logging.WARNING):
        UnclipDecoderLit(preset="tiny", emb_dropout=0.0).setup("fit")
        assert len(warned()) == 1 and "model.grid_guidance_scale=3.0" in warned()[0], warned()
        caplog.clear()
        UnclipDecoderLit(preset="tiny").setup("fit")  # the paper's 50% x 10%
        UnclipDecoderLit(preset="tiny", emb_dropout=0.0, null_dropout=0.1).setup("fit")  # the joint null drawn
        UnclipDecoderLit(preset="tiny", text_dropout=0.0, decoder_guidance_scale=1.0, grid_guidance_scale=1.0).setup(
            "fit"
        )
    assert not warned()
