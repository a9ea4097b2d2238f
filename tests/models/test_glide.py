"""GLIDE: shapes, text reaching every attention block, the null condition, guidance at scale 1, overfitting a batch,
zoo-train -> load_module -> generate, and the paper preset's parameter count (meta device)."""

from __future__ import annotations

import pytest
import torch

from zoo.diffusion.samplers import ddim_sample
from zoo.models.glide.lit import GlideLit
from zoo.models.glide.model import GLIDE_PAPER_TOTAL_PARAMS, GLIDE_PRESETS, Glide, count_glide_params
from zoo.nn.unet import GLIDE_PAPER_PARAMS, AttentionBlock

TINY = GLIDE_PRESETS["tiny"]


def _tokens(b: int = 2, n_real: int = 5, seed: int = 1) -> torch.Tensor:
    """(B, text_len): [random non-pad ids] then pads."""
    g = torch.Generator().manual_seed(seed)
    tok = torch.full((b, TINY.text_len), TINY.pad_id, dtype=torch.long)
    tok[:, :n_real] = torch.randint(1, TINY.text_vocab, (b, n_real), generator=g)
    return tok


def _inputs(b: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 16, 16, generator=g), torch.randint(0, 1000, (b,), generator=g)


def test_output_shapes():
    torch.manual_seed(0)
    net = Glide(TINY).eval()
    x, t = _inputs()
    assert net(x, t, _tokens()).shape == (2, 6, 16, 16)  # [eps ; v]
    assert net(x, t, _tokens()[:, :7]).shape == (2, 6, 16, 16)  # shorter text is right-padded
    cond = net.encode_text(_tokens())
    assert cond["context"].shape == (2, TINY.text_len, TINY.text_width)
    assert cond["emb"].shape == (2, 4 * TINY.width)
    assert cond["context_mask"][:, :5].all() and not cond["context_mask"][:, 5:].any()


def test_bf16_autocast_forward_is_finite(perturb):
    torch.manual_seed(0)
    net = perturb(Glide(TINY)).eval()
    x, t = _inputs()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, t, torch.cat([_tokens(1), net.null_tokens(1)]))
    assert out.shape == (2, 6, 16, 16) and torch.isfinite(out.float()).all()


def test_text_reaches_every_attention_block(perturb):
    """The caption's token embeddings get a gradient through each attention block's context projection, and the
    final-token projection (added to the timestep embedding) gets one too."""
    torch.manual_seed(0)
    net = perturb(Glide(TINY)).train()
    blocks = [m for m in net.unet.modules() if isinstance(m, AttentionBlock)]
    assert len(blocks) >= 5  # down, middle and up path
    x, t = _inputs()
    tok = _tokens()
    embeds = []

    def keep(module, inp, out):
        out.retain_grad()
        embeds.append(out)

    hook = net.text.token_embedding.register_forward_hook(keep)
    (net(x, t, tok) ** 2).mean().backward()
    hook.remove()
    for i, blk in enumerate(blocks):
        g = blk.context_kv.weight.grad
        assert g is not None and g.abs().sum() > 0, f"attention block {i} received no text"
    assert net.text_proj.weight.grad.abs().sum() > 0
    grad = embeds[0].grad
    assert grad[:, :5].abs().sum() > 0  # the real tokens influence the output
    # per block: the text embedding's gradient flowing through that block's context projection alone
    for i, blk in enumerate(blocks):
        net.zero_grad()
        captured = {}
        h = blk.context_kv.register_forward_hook(lambda m, inp, out: captured.update(inp=inp[0]) and None)
        out = net(x, t, tok)
        h.remove()
        (gin,) = torch.autograd.grad((out**2).mean(), captured["inp"])
        assert gin[:, :5].abs().sum() > 0, f"attention block {i}: no gradient to the text tokens"


def test_padding_is_masked_in_unet_but_empty_caption_is_finite(perturb):
    torch.manual_seed(0)
    net = perturb(Glide(TINY)).eval()
    x, t = _inputs()
    empty = net(x, t, net.null_tokens(2))
    assert torch.isfinite(empty).all()  # all pads: no empty attention row anywhere
    # with a causal encoder, what follows the real tokens cannot change them: the caption's encoding is padding-free
    tok = _tokens()
    a, b = net.encode_text(tok), net.encode_text(tok[:, :10])
    torch.testing.assert_close(a["context"][:, :5], b["context"][:, :5], rtol=0, atol=0)


def test_dropped_caption_is_the_null_condition(perturb):
    torch.manual_seed(0)
    lit = GlideLit(preset="tiny", text_dropout=0.999)
    perturb(lit.net).eval()
    x, t = _inputs()
    tok = _tokens()
    dropped = lit.drop_captions(tok, torch.Generator().manual_seed(0))
    assert torch.equal(dropped, lit.net.null_tokens(2))
    explicit = lit.net(x, t, lit.net.null_tokens(2))
    assert torch.equal(lit.net(x, t, dropped), explicit)
    assert torch.equal(lit.net(x, t, None), explicit)  # None == the empty caption
    assert not torch.equal(lit.net(x, t, tok), explicit)


def test_guidance_scale_one_is_the_conditional_model_bit_for_bit(nn_helpers):
    lit = nn_helpers.sampling_lit(GlideLit)
    caps = ["a red circle", "two blue squares"]
    got = lit.generate(caps, seed=3, guidance_scale=1.0, steps=4)
    # the unguided reference, written out: conditional model only, same seed, same respaced DDIM
    text = lit.encode_captions(caps)
    cond = lit.net.encode_text(text)
    ref = ddim_sample(
        lit.process.respaced(4),
        lambda x, t: lit.net.denoise(x, t, cond),
        (2, 3, 16, 16),
        generator=torch.Generator().manual_seed(3),
        clip_denoised=True,  # the model's sampler clips the predicted x0 to the image range
    ).clamp(-1, 1)
    assert torch.equal(got, ref)
    guided = lit.generate(caps, seed=3, guidance_scale=3.0, steps=4)
    assert guided.shape == got.shape and not torch.equal(guided, got)


def test_guided_model_fn_is_one_batched_forward(nn_helpers):
    """At scale s the model_fn equals guide_learned_variance of separate cond / uncond forwards (up to batching
    round-off), computed with a single (2B) forward of the denoiser per call."""
    from zoo.nn.guidance import guide_learned_variance

    lit = nn_helpers.sampling_lit(GlideLit)
    text = lit.encode_captions(["a red circle", "a green triangle"])
    x, t = _inputs()
    calls = []
    h = lit.net.unet.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        out = lit.model_fn(text, 2.5)(x, t)
    h.remove()
    assert calls == [4]
    with torch.no_grad():
        cond, uncond = lit.net(x, t, text), lit.net(x, t, None)
    torch.testing.assert_close(out, guide_learned_variance(uncond, cond, 2.5), rtol=1e-4, atol=1e-5)


def test_sampling_a_module_left_in_training_mode_uses_no_dropout(perturb):
    """sample_tokens on a module in training mode (a fresh one, or one a training loop left so) ran the U-Net with
    its dropout on: two draws from one seed differed, and neither was the eval-mode sample."""
    torch.manual_seed(0)
    lit = GlideLit(preset="tiny", net={"dropout": 0.5})
    perturb(lit.net)
    tok = torch.randint(1, 100, (2, 8), generator=torch.Generator().manual_seed(1))

    def draw():
        return lit.sample_tokens(tok, guidance_scale=2.0, steps=2, generator=torch.Generator().manual_seed(0))

    assert lit.training
    a, b = draw(), draw()
    assert lit.training  # the caller's mode is restored
    lit.eval()
    assert torch.equal(a, b) and torch.equal(a, draw())


def test_samplers_and_candidates(nn_helpers):
    lit = nn_helpers.sampling_lit(GlideLit)
    caps = ["a red circle"]
    for sampler in ("ddim", "ddpm"):
        imgs = lit.generate(caps, n=2, steps=3, sampler=sampler)
        assert imgs.shape == (2, 3, 16, 16) and imgs.abs().max() <= 1
    cand = lit.candidates(caps, 2, steps=2)
    assert cand.shape == (1, 2, 3, 16, 16)
    # nested in n: the same noise, so the same image. Batch 1 vs 2 may round differently, and 2 DDIM steps from
    # t = T divide the model's rounding by sqrt(alpha_bar_T) (about 0.006 on the cosine schedule): a pixel now and
    # then lands 0.04 away (1 of 768 in one make test run). Other noise would move nearly every pixel by O(1), so
    # "the same noise" is: all but a few pixels within 1e-4, none far off.
    one = lit.candidates(caps, 1, steps=2)[:, 0]
    diff = (cand[:, 0] - one).abs()
    assert (diff <= 1e-4).float().mean() >= 0.99 and diff.max() < 0.2, (float(diff.max()), int((diff > 1e-4).sum()))
    assert (lit.candidates(caps, 1, steps=2, seed=1)[:, 0] - one).abs().mean() > 0.05  # another seed is not "close"


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_batched_candidates_are_the_seeded_samples(nn_helpers, monkeypatch, sampler):
    """Candidate i is generate(captions, seed=seed + i): several share a denoiser batch up to batch_size rows, each
    drawing from its own seed's generator; a diffusers scheduler or an explicit generator go one at a time."""
    lit = nn_helpers.sampling_lit(GlideLit)
    caps = ["a red circle", "a blue square", "a green star"]
    calls = []
    real = lit.sample_tokens
    monkeypatch.setattr(lit, "sample_tokens", lambda text, *a, **kw: calls.append(len(text)) or real(text, *a, **kw))
    knobs = dict(steps=3, sampler=sampler, eta=0.7)
    got = lit.candidates(caps, 5, seed=10, batch_size=6, **knobs)  # 2 candidates (6 rows) per batch: 2 + 2 + 1
    assert got.shape == (3, 5, 3, 16, 16) and calls == [6, 6, 3]
    for i in range(5):
        torch.testing.assert_close(got[:, i], lit.generate(caps, seed=10 + i, **knobs), rtol=0, atol=1e-4)
    assert not torch.equal(got[:, 0], got[:, 1])
    calls.clear()
    lit.candidates(caps, 2, seed=10, batch_size=5, **knobs)  # fewer rows than 2 candidates: one at a time
    assert calls == [3, 3]
    calls.clear()
    lit.candidates(caps, 2, seed=10, generator=torch.Generator().manual_seed(0), **knobs)  # one stream for all
    assert calls == [3, 3]
    calls.clear()
    lit.candidates(caps, 2, steps=2, sampler="euler")  # a stochastic diffusers scheduler draws its own step noise
    assert calls == [3, 3]


@pytest.mark.parametrize("solver", ["dpm++", "unipc"])
def test_deterministic_diffusers_solvers_batch_candidates(nn_helpers, monkeypatch, solver):
    """DPM-Solver++ and UniPC draw no noise in their steps: candidates share a batch (only x_T per seed)."""
    lit = nn_helpers.sampling_lit(GlideLit)
    caps = ["a red circle", "a blue square"]
    calls = []
    real = lit.sample_tokens
    monkeypatch.setattr(lit, "sample_tokens", lambda text, *a, **kw: calls.append(len(text)) or real(text, *a, **kw))
    got = lit.candidates(caps, 3, seed=2, steps=4, sampler=solver)
    assert calls == [6] and got.shape == (2, 3, 3, 16, 16)
    for i in range(3):
        torch.testing.assert_close(
            got[:, i], lit.generate(caps, seed=2 + i, steps=4, sampler=solver), rtol=0, atol=1e-4
        )


def test_tiny_glide_overfits_a_fixed_batch(nn_helpers):
    torch.manual_seed(0)
    lit = GlideLit(preset="tiny", text_dropout=0.0)
    g = torch.Generator().manual_seed(0)
    # 4 fixed images (smooth colour fields) and captions
    base = torch.rand(4, 3, 1, 1, generator=g) * 2 - 1
    x0 = (base + 0.3 * torch.linspace(-1, 1, 16)[None, None, :, None]).clamp(-1, 1).expand(4, 3, 16, 16)
    batch = {"image": x0.contiguous(), "text_tokens": _tokens(4)}
    start, end = nn_helpers.overfit(lit, batch)  # eval MSE on fixed timesteps / noise, before and after 40 steps
    assert end < 0.35 * start, (start, end)  # measured: 1.04 -> 0.19 in 40 steps


def test_paper_preset_parameter_count():
    assert count_glide_params("paper") == GLIDE_PAPER_TOTAL_PARAMS
    with torch.device("meta"):
        net = Glide(GLIDE_PRESETS["paper"])
    unet = sum(p.numel() for p in net.unet.parameters())
    text = sum(p.numel() for p in net.text.parameters())
    assert unet == GLIDE_PAPER_PARAMS  # the 2.3B ADM of zoo.nn.unet's glide_paper preset
    assert 1.2e9 <= text <= 1.35e9  # the 24-block, 2048-wide text transformer (1.2B) plus its embeddings
    assert 3.5e9 <= GLIDE_PAPER_TOTAL_PARAMS <= 3.6e9


def test_train_checkpoint_load_and_generate(train_cfg, train_helpers):
    from zoo.checkpoint import load_module

    T = train_helpers
    cfg = train_cfg(
        "model=glide",
        "model.preset=tiny",
        "model.grid_captions=2",
        "model.grid_steps=2",
        *T.SHAPES_BPE,
        "data.resolution=16",
        *T.sizes(24),
        *T.ONE_EPOCH,
    )
    _, last, ckpt = T.train_checked(cfg, "glide", global_step=3)
    assert ckpt["hyper_parameters"]["text_tokenizer"]["kind"] == "trained_bpe"  # self-contained
    model = load_module(last)
    assert isinstance(model, GlideLit)
    imgs = model.generate(["a red circle", "a blue square in the top left"], n=2, steps=3, guidance_scale=2.0)
    assert imgs.shape == (4, 3, 16, 16) and torch.isfinite(imgs).all() and imgs.abs().max() <= 1


@pytest.mark.parametrize("scale", [1.0, 2.5])
@pytest.mark.parametrize("model", ["glide", "unclip_decoder"])
def test_large_sampling_calls_run_the_network_16_images_at_a_time(nn_helpers, monkeypatch, model, scale):
    """Past CANDIDATE_BATCH images a sampling call runs the network on slices of rows (cheaper per image on a CPU):
    the same output as one call, the conditioning sliced with the rows ([cond ; uncond] under guidance)."""
    import zoo.models.glide.lit as glide_lit

    if model == "glide":
        lit = nn_helpers.sampling_lit(GlideLit)
        make = lambda text: lit.model_fn(text, scale)  # noqa: E731
    else:
        from zoo.models.unclip_decoder.lit import UnclipDecoderLit

        lit = nn_helpers.sampling_lit(UnclipDecoderLit)
        emb = torch.randn(20, lit.cfg.clip_dim, generator=torch.Generator().manual_seed(1))
        make = lambda text: lit.decoder_model_fn(text, emb, scale)  # noqa: E731
    text = lit.encode_captions([f"a red circle {i}" for i in range(20)])
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(20, 3, 16, 16, generator=g), torch.randint(0, 1000, (20,), generator=g)
    calls = []
    real = lit.net.denoise
    monkeypatch.setattr(lit.net, "denoise", lambda x, *a, **kw: calls.append(len(x)) or real(x, *a, **kw))
    with torch.no_grad():
        sliced = make(text)(x, t)
        rows = 2 if scale != 1.0 else 1
        assert calls == [16 * rows, 4 * rows]
        monkeypatch.setattr(glide_lit, "CANDIDATE_BATCH", 1000)
        whole = make(text)(x, t)
    assert calls[2:] == [20 * rows]
    torch.testing.assert_close(sliced, whole, rtol=0, atol=1e-5)


def test_an_inpainting_mask_outside_0_1_is_refused_before_sampling(nn_helpers):
    """A 0/255 mask (a mask image's pixels) was taken as weights 0/255: the known-region lerp and the masked-image
    channels extrapolated and the "kept" pixels came out as noise, without a word."""
    lit = nn_helpers.sampling_lit(GlideLit)
    image = torch.zeros(1, 3, 16, 16)
    mask = torch.full((1, 1, 16, 16), 255.0)
    mask[..., 4:12, 4:12] = 0
    calls = []
    lit.net.unet.register_forward_pre_hook(lambda m, args: calls.append(1))
    with pytest.raises(ValueError, match=r"mask values must be in \[0, 1\].*got 0..255.*mask / 255"):
        lit.inpaint(["a red circle"], image, mask, steps=2)
    assert not calls  # refused before the first denoiser call
    out = lit.inpaint(["a red circle"], image, mask / 255, steps=2)  # the fix the message names works
    assert torch.equal(
        out[(mask / 255).bool().expand_as(out)], image.expand_as(out)[(mask / 255).bool().expand_as(out)]
    )


def test_inpaint_masks_on_a_text_to_image_glide_are_refused_before_training_but_its_checkpoint_loads(tmp_path):
    """model.inpaint_masks={rect_prob: 0.5} on model=glide (inpaint false) trained a plain GLIDE without a word: the
    masks are drawn only for an inpainting model. Refused by zoo-train's model checks (check_data) and a Trainer.fit
    (setup "fit"), naming the fix; the empty default and an inpainting model pass, and a checkpoint saved with such
    hyper-parameters still loads and samples (it is a plain model)."""
    from zoo.checkpoint import atomic_torch_save, load_module
    from zoo.errors import ConfigError

    lit = GlideLit(preset="tiny", inpaint_masks={"rect_prob": 0.5})
    fix = r"inpaint_masks=\{'rect_prob': 0.5\}.*model.inpaint=false.*fix: model.inpaint=true or model=glide_inpaint"
    with pytest.raises(ConfigError, match=fix):
        lit.check_data(None)  # first of the model's checks: the data (here none) is not read
    with pytest.raises(ConfigError, match=fix):
        lit.setup("fit")
    lit.setup("validate")  # evaluating a plain model is fine
    for ok in (GlideLit(preset="tiny"), GlideLit(preset="tiny", inpaint=True, inpaint_masks={"rect_prob": 0.5})):
        ok.check_inpaint_masks()
    GlideLit(preset="tiny", net={"inpaint": True}, inpaint_masks={"rect_prob": 0.5}).check_inpaint_masks()
    path = tmp_path / "glide.ckpt"
    atomic_torch_save(
        {"zoo_component": "glide", "hyper_parameters": dict(lit.hparams), "state_dict": lit.state_dict()}, path
    )
    loaded = load_module(str(path))
    assert isinstance(loaded, GlideLit) and not loaded.is_inpainting_model
    assert loaded.sample_tokens(_tokens(1), steps=2).shape == (1, 3, 16, 16)


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_grid_captions_that_is_not_a_positive_count_is_refused_when_built(n, train_cfg):
    """model.grid_captions=0 failed after the first training epoch (sample_grid reshaped no images) and -1 drew
    len - 1 grid rows: a ConfigError when the model is built, whose fix for "no grids" composes."""
    from zoo.errors import ConfigError
    from zoo.models.unclip_decoder.lit import UnclipDecoderLit

    for lit in (GlideLit, UnclipDecoderLit):  # the decoder's constructor does not run GlideLit's: checked on its own
        with pytest.raises(
            ConfigError, match=r"model.grid_captions=\S+ must be a whole number >= 1.*~callbacks.sample"
        ):
            lit(preset="tiny", grid_captions=n)
    assert "sample_grid" not in train_cfg("model=glide", "~callbacks.sample_grid").callbacks


@pytest.mark.parametrize(
    "kw, key",
    [
        ({"num_timesteps": 2.5}, "model.num_timesteps"),  # int() trained a 2-step diffusion
        ({"num_timesteps": True}, "model.num_timesteps"),
        ({"text_dropout": "0.2"}, "model.text_dropout"),  # a TypeError from the comparison
        ({"text_dropout": False}, "model.text_dropout"),  # a rate of 0: no null caption trained
        ({"inpaint": "false"}, "model.inpaint"),  # a word is truthy: an inpainting model
        ({"replace_known": "no"}, "model.replace_known"),
        ({"freeze_text": "no", "text_init": "clip.ckpt"}, "model.freeze_text"),
    ],
)
def test_options_of_the_wrong_kind_are_refused_when_built(kw, key):
    """Hydra hands over 2.5, "0.2" or a word as they are written; int() / bool() took them for other values without a
    word. The unCLIP decoder's constructor checks its own (it does not run GlideLit's)."""
    from zoo.errors import ConfigError
    from zoo.models.unclip_decoder.lit import UnclipDecoderLit

    lits = (GlideLit, UnclipDecoderLit) if key not in ("model.inpaint", "model.replace_known") else (GlideLit,)
    for lit in lits:
        with pytest.raises(ConfigError, match=key):
            lit(preset="tiny", **kw)


@pytest.mark.parametrize(
    "lit_path, net, field",
    [
        ("zoo.models.glide.lit.GlideLit", {"channel_mult": [1, 2.5]}, "channel_mult"),  # int(): a (1, 2) U-Net
        ("zoo.models.glide.lit.GlideLit", {"text_causal": "no"}, "text_causal"),  # a word is truthy: causal
        ("zoo.models.glide.lit.GlideLit", {"width": 8.5}, "width"),  # a TypeError deep in torch
        ("zoo.models.unclip_decoder.lit.UnclipDecoderLit", {"clip_emb_norm": "no"}, "clip_emb_norm"),
        ("zoo.models.upsampler.lit.UpsamplerLit", {"channel_mult": [1, 2.5]}, "channel_mult"),
        ("zoo.models.upsampler.lit.UpsamplerLit", {"learn_sigma": "no"}, "learn_sigma"),
        ("zoo.models.noised_clip.lit.NoisedClipLit", {"channel_mult": [1, 1.5]}, "channel_mult"),
        ("zoo.models.diffusion_prior.lit.DiffusionPriorLit", {"n_layers": 2.5}, "n_layers"),
        ("zoo.models.ar_prior.lit.ARPriorLit", {"dropout": "0.1"}, "dropout"),
    ],
)
def test_a_network_field_of_the_wrong_kind_is_refused_when_built(lit_path, net, field):
    """model.net.<field> overrides reach the config dataclasses as Hydra wrote them (resolve_preset checks their kinds)."""
    import importlib

    from zoo.errors import ConfigError

    module, name = lit_path.rsplit(".", 1)
    lit = getattr(importlib.import_module(module), name)
    with pytest.raises(ConfigError, match=rf"model\.net\.{field}=.+ must be"):
        lit(preset="tiny", net=net)


class _Fitted(Exception):
    """Raised in place of the BPE fit: the run got past the checks that need no text tokenizer."""


@pytest.mark.parametrize(
    "overrides, says",
    [
        (["model=glide", "data.resolution=48"], "data.resolution=48 but the GLIDE model is built for 32 px"),
        (["model=glide", "++model.inpaint_masks.rect_prob=0.5"], "model.inpaint_masks="),
        (["model=unclip_decoder"], "data.features.train has none"),
        (["model=unclip_decoder", "model.clip_ckpt=/nonexistent/clip.ckpt"], "model.clip_ckpt: no file"),
        (["model=glide", "model.preset=tiny", "data.resolution=48"], None),  # tiny takes 48 px: not refused
    ],
    ids=["resolution", "inpaint masks", "decoder without embeddings", "decoder without its CLIP", "tiny"],
)
def test_zoo_train_refuses_the_image_side_before_fitting_the_bpe(train_cfg, monkeypatch, overrides, says):
    """zoo-train model=glide data=folder data/tokenizer=bpe data.resolution=48 fitted the data's BPE before refusing
    the 32 px GLIDE (check_data runs after prepare_tokenizer; the unCLIP decoder's missing embeddings too). The checks
    that need no text tokenizer now come first; a tiny preset, which takes the data's resolution after the fit, is
    still let through to it."""
    import re

    import zoo.data.datamodule
    from zoo.errors import ConfigError
    from zoo.train import train

    def no_fit(self):
        raise _Fitted

    monkeypatch.setattr(zoo.data.datamodule.ImageTextDataModule, "prepare_tokenizer", no_fit)
    cfg = train_cfg(*overrides, "data/tokenizer=bpe", "data.tokenizer.context_length=48", "logger=none", "trainer=cpu")
    if says is None:
        with pytest.raises(_Fitted):
            train(cfg)
    else:
        with pytest.raises(ConfigError, match=re.escape(says)):
            train(cfg)
