"""The unCLIP pipeline: knobs reach their stages, shapes per stage, slerp, the bipartite latent, manipulations, seeds.

Tiny checkpoints, trained a couple of steps here, with agreeing dims: CLIP ``tiny`` (32-d, 32-token context, 32 px),
diffusion prior ``tiny`` widened to 32-d / CLIP's vocabulary and context, AR prior ``tiny`` (32-d), decoder ``tiny``
(16 px, 32-d embedding, a tiny BPE), two ``tiny`` upsamplers (x4 each: 16 -> 64 -> 256 at inference).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from zoo.pipelines.unclip import UnclipPipeline, slerp

D = 32
CAPS = ["a large red circle at the top left", "a small blue square at the bottom right"]


def _save(lit, component: str, path: Path, **extra_hp) -> Path:
    from zoo.checkpoint import atomic_torch_save

    hp = {**dict(lit.hparams), **extra_hp}
    atomic_torch_save({"zoo_component": component, "hyper_parameters": hp, "state_dict": lit.state_dict()}, path)
    return path


def _train(lit, loss_fn, steps: int = 2):
    opt = torch.optim.Adam(lit.parameters(), lr=1e-3)
    lit.train()
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return lit.eval()


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth coloured blobs in [-1, 1] (n, 3, size, size)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 1, 1, generator=g) * 1.6 - 0.8
    ramp = torch.linspace(-1, 1, size)
    return (
        (base + 0.3 * ramp[None, None, :, None] * torch.rand(n, 3, 1, 1, generator=g))
        .expand(n, 3, size, size)
        .clamp(-1, 1)
        .contiguous()
    )


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, dalle_helpers):
    from zoo.models.ar_prior.lit import ARPriorLit
    from zoo.models.clip.scorer import ClipScorer
    from zoo.models.diffusion_prior.lit import DiffusionPriorLit
    from zoo.models.unclip_decoder.lit import UnclipDecoderLit
    from zoo.models.upsampler.lit import UpsamplerLit

    d = tmp_path_factory.mktemp("unclip")
    out = {"clip": dalle_helpers.tiny_clip_ckpt(d / "clip.ckpt")}
    clip = ClipScorer.from_lightning_checkpoint(str(out["clip"]))
    imgs = _images(8, 32)
    img_emb, txt_emb = clip.encode_image(imgs), clip.encode_text(CAPS * 4)
    tokens = clip.tokenize(CAPS * 4)

    torch.manual_seed(0)
    prior = DiffusionPriorLit(
        preset="tiny",
        net={"clip_dim": D, "text_len": tokens.shape[1], "text_vocab": 49408},
        embed_scale=5.0,
        sample_steps=4,
    )
    batch = {"clip_image_emb": img_emb, "clip_text_emb": txt_emb, "clip_text_tokens": tokens}
    _train(prior, lambda: prior.forward_loss(batch, 0.1)["loss"])
    out["prior"] = _save(prior, "diffusion_prior", d / "prior.ckpt")

    torch.manual_seed(0)
    ar = ARPriorLit(preset="tiny", net={"n_buckets": 16}, n_components=4)
    g = torch.Generator().manual_seed(0)
    many_img = F.normalize(img_emb.repeat(8, 1) + 0.1 * torch.randn(64, D, generator=g), dim=-1)
    ar.fit_discretisation(many_img, txt_emb.repeat(8, 1))
    _train(ar, lambda: ar.forward_loss(batch, train=True)["loss"])
    out["ar"] = _save(ar, "ar_prior", d / "ar.ckpt")

    torch.manual_seed(0)
    bpe = dalle_helpers.tiny_bpe(context_length=32)
    dec = UnclipDecoderLit(preset="tiny", sample_steps=4)
    dec.text_tokenizer = bpe
    x16 = F.interpolate(imgs, size=16, mode="bilinear", antialias=True)
    dbatch = {"image": x16, "text_tokens": bpe.encode(CAPS * 4), "clip_image_emb": img_emb}
    _train(dec, lambda: dec.forward_loss(dbatch, train=True)["loss"])
    out["decoder"] = _save(dec, "unclip_decoder", d / "decoder.ckpt", text_tokenizer=bpe.to_spec())

    for i in (1, 2):
        torch.manual_seed(i)
        up = UpsamplerLit(preset="tiny", sample_steps=3)
        _train(up, lambda: up.forward_loss({"image": imgs})["loss"], steps=1)
        out[f"up{i}"] = _save(up, "upsampler", d / f"up{i}.ckpt")
    return out


def _pipe(ckpts, prior="diffusion", ups=2, **kw) -> UnclipPipeline:
    kw.setdefault("prior_steps", 2)
    kw.setdefault("decoder_steps", 2)
    kw.setdefault("upsampler_steps", 1)
    prior_ckpt = {"diffusion": ckpts["prior"], "ar": ckpts["ar"]}.get(prior)
    return UnclipPipeline.from_checkpoints(
        prior_ckpt, ckpts["decoder"], ckpts["clip"], [ckpts["up1"], ckpts["up2"]][:ups], prior=prior, **kw
    )


def _spy(monkeypatch, obj, name: str) -> list[dict]:
    calls: list[dict] = []
    real = getattr(obj, name)

    def wrapper(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append({"args": args, "kwargs": kwargs, "out": out})
        return out

    monkeypatch.setattr(obj, name, wrapper)
    return calls


@pytest.mark.parametrize("stage", ["decoder", "prior", "ar"])
def test_a_stage_trained_on_another_clip_of_the_same_widths_is_refused(ckpts, stage, tmp_path):
    """A decoder or prior names the CLIP of its training embeddings (``clip_fingerprint``): another CLIP of the same
    widths passed every shape check and the decoder drew from vectors of another space. Refused at construction
    when it differs; the same CLIP, or a checkpoint that names none (written before the fingerprint), builds."""
    from zoo.checkpoint import atomic_torch_save, safe_load
    from zoo.errors import ConfigError
    from zoo.models.clip.scorer import ClipScorer

    fp = ClipScorer.from_lightning_checkpoint(str(ckpts["clip"])).fingerprint
    ckpt = safe_load(ckpts[stage])
    prior = "ar" if stage == "ar" else "diffusion"
    for trained, refused in ((fp, False), (None, False), ("0123456789abcdef", True)):
        ckpt["hyper_parameters"]["clip_fingerprint"] = trained
        paths = {**ckpts, stage: atomic_torch_save(ckpt, tmp_path / f"{stage}.ckpt")}
        if refused:
            with pytest.raises(ConfigError, match="another CLIP .fingerprint 0123456789abcdef. than the pipeline's"):
                _pipe(paths, prior=prior, ups=0)
        else:
            pipe = _pipe(paths, prior=prior, ups=0)
            module = pipe.decoder if stage == "decoder" else pipe.prior_model
            assert module.clip_fingerprint == trained


# ------------------------------------------------------------------------------------------------------ slerp
def test_slerp_endpoints_norm_and_angle():
    g = torch.Generator().manual_seed(0)
    a, b = F.normalize(torch.randn(5, D, generator=g), dim=-1), F.normalize(torch.randn(5, D, generator=g), dim=-1)
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    ts = torch.linspace(0, 1, 7)
    for t in ts:
        torch.testing.assert_close(slerp(a, b, t).norm(dim=-1), torch.ones(5), rtol=0, atol=1e-5)
    # the angle to a grows linearly in t
    theta = torch.arccos((a * b).sum(-1))
    mid = slerp(a, b, 0.25)
    torch.testing.assert_close(torch.arccos((mid * a).sum(-1).clamp(-1, 1)), 0.25 * theta, rtol=0, atol=1e-4)
    # a batch of t against one pair, and parallel inputs (linear fallback, no NaN)
    strip = slerp(a[:1], b[:1], ts[:, None])
    assert strip.shape == (7, D) and torch.equal(strip[0], a[0]) and torch.equal(strip[-1], b[0])
    same = slerp(a, a.clone(), 0.3)
    torch.testing.assert_close(same, a, rtol=0, atol=1e-6)
    assert math.isclose(
        float(slerp(torch.tensor([1.0, 0]), torch.tensor([0.0, 1]), 0.5)[0]), math.sqrt(0.5), abs_tol=1e-6
    )


# ------------------------------------------------------------------------------------------------------ stages
def test_output_shapes_per_enabled_stage(ckpts):
    pipe = _pipe(ckpts, stages=["prior", "decoder"])
    assert pipe.generate(CAPS).shape == (2, 3, 16, 16)
    pipe = _pipe(ckpts, stages=["prior", "decoder", "upsampler1"])
    assert pipe.generate(CAPS).shape == (2, 3, 64, 64)
    pipe = _pipe(ckpts)  # all stages: 16 -> 64 -> 256
    out = pipe.generate(CAPS[:1])
    assert out.shape == (1, 3, 256, 256) and out.abs().max() <= 1 and torch.isfinite(out).all()
    cands = _pipe(ckpts, ups=0).candidates(CAPS, 2)
    assert cands.shape == (2, 2, 3, 16, 16)
    from zoo.errors import ConfigError

    with pytest.raises(ConfigError, match="decoder"):
        _pipe(ckpts, stages=["prior"])
    with pytest.raises(ConfigError, match="prior"):
        _pipe(ckpts, stages=["decoder"])  # a diffusion prior given but not run
    with pytest.raises(ConfigError, match="upsampler3"):
        _pipe(ckpts, stages=["decoder", "upsampler3"], prior="none")


@pytest.mark.parametrize(
    "kind,net,what",
    [
        ("diffusion", {"clip_dim": 16}, "CLIP width is 16"),
        ("diffusion", {"clip_dim": D, "text_len": 8, "text_vocab": 49408}, "text_len=8"),
        ("diffusion", {"clip_dim": D, "text_vocab": 64}, "embeds 64"),
        ("ar", {"embed_dim": 16}, "CLIP width is 16"),
        ("ar", {"text_len": 8}, "text_len=8"),
    ],
)
def test_a_prior_of_another_clip_is_refused_when_the_pipeline_is_built(ckpts, kind, net, what):
    """The prior's embedding width, context and token vocabulary must be the pipeline CLIP's: a ConfigError naming
    the fix at construction, not a bare shape / index error once sampling started."""
    from zoo.checkpoint import load_module
    from zoo.errors import ConfigError
    from zoo.models.ar_prior.lit import ARPriorLit
    from zoo.models.clip.scorer import ClipScorer
    from zoo.models.diffusion_prior.lit import DiffusionPriorLit

    decoder = load_module(str(ckpts["decoder"]))
    clip = ClipScorer.from_lightning_checkpoint(str(ckpts["clip"]))
    if kind == "diffusion":
        ctx = clip.tokenize(["a"]).shape[1]
        prior = DiffusionPriorLit(preset="tiny", net={"text_len": ctx, **net}, embed_scale=5.0, sample_steps=2)
    else:
        prior = ARPriorLit(preset="tiny", net={"n_buckets": 16, **net}, n_components=4)
    with pytest.raises(ConfigError, match=what):
        UnclipPipeline(decoder, clip, prior, decoder_steps=2, prior_steps=None)


@pytest.mark.parametrize("n_averaged,use_ema,want", [(0, True, "raw"), (5, True, "ema"), (5, False, "raw")])
def test_stage_weights_follow_the_ema_and_an_unstarted_ema_falls_back_to_the_trained_weights(
    ckpts, tmp_path, n_averaged, use_ema, want
):
    """The EMA callback's layout (average in state_dict, trained weights in current_model_state): the EMA when it
    has started; before its first update (n_averaged 0: Lightning's callback wrote the INITIAL weights as the
    average) the trained weights, as the GLIDE pipeline does, never the initial ones; use_ema=False: trained."""
    from zoo.checkpoint import atomic_torch_save, safe_load

    ckpt = safe_load(ckpts["decoder"])
    trained = ckpt["state_dict"]
    g = torch.Generator().manual_seed(0)
    other = {k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in trained.items()}
    ckpt.update(state_dict=other, current_model_state=trained, averaging_state={"n_averaged": torch.tensor(n_averaged)})
    path = tmp_path / "decoder_ema.ckpt"
    atomic_torch_save(ckpt, path)
    pipe = UnclipPipeline.from_checkpoints(None, path, ckpts["clip"], prior="none", use_ema=use_ema, decoder_steps=2)
    expect = trained if want == "raw" else other
    loaded = pipe.decoder.state_dict()
    assert pipe.weights == {"decoder": want}
    assert all(torch.equal(loaded[k], expect[k]) for k in expect)


def test_upsampler_chain_off_its_training_resolution_warns(ckpts, caplog):
    """The tiny decoder gives 16 px and the tiny upsamplers were trained 8 -> 32 px: the chain runs (fully
    convolutional) but each mismatched link is a WARNING naming the upsampler and both sizes; a matched link is
    not."""
    import dataclasses
    import logging

    with caplog.at_level(logging.WARNING, logger="zoo.pipelines.unclip"):
        pipe = _pipe(ckpts, ups=2)
    lines = [r.getMessage() for r in caplog.records if "trained 8 -> 32 px" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "upsampler1" in lines[0] and "the decoder gives 16 px" in lines[0] and "output 64 px" in lines[0]
    assert "upsampler2" in lines[1] and "upsampler1 gives 64 px" in lines[1]
    caplog.clear()
    pipe.decoder.cfg = dataclasses.replace(pipe.decoder.cfg, image_size=8)  # now upsampler1 fits, upsampler2 not
    with caplog.at_level(logging.WARNING, logger="zoo.pipelines.unclip"):
        pipe._warn_resolution_chain()
    lines = [r.getMessage() for r in caplog.records if "trained" in r.getMessage()]
    assert len(lines) == 1 and "upsampler2" in lines[0] and "upsampler1 gives 32 px" in lines[0]


def test_the_resolution_warning_follows_the_upsamplers_that_stages_runs(ckpts, caplog):
    """With ``stages=[..., upsampler2]`` the decoder feeds upsampler2 directly. The warning walked every loaded
    upsampler: a decoder -> upsampler2 mismatch went unwarned when the full chain fitted (a 64 px decoder into a
    256 -> 1024 stage), and a link that never runs was warned instead."""
    import dataclasses
    import logging

    pipe = _pipe(ckpts, ups=2, stages=["prior", "decoder", "upsampler2"])
    pipe.decoder.cfg = dataclasses.replace(pipe.decoder.cfg, image_size=8)
    up2 = pipe.upsamplers[1]
    up2.cfg = dataclasses.replace(up2.cfg, image_size=128)  # 32 -> 128: the full chain 8 -> 32 -> 128 fits
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="zoo.pipelines.unclip"):
        pipe._warn_resolution_chain()
    lines = [r.getMessage() for r in caplog.records if "trained" in r.getMessage()]
    assert len(lines) == 1 and "upsampler2 was trained 32 -> 128 px but the decoder gives 8 px" in lines[0], lines
    pipe.stages = ["prior", "decoder", "upsampler1"]  # 8 -> 32 fits; upsampler2 does not run
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="zoo.pipelines.unclip"):
        pipe._warn_resolution_chain()
    assert not [r for r in caplog.records if "trained" in r.getMessage()]


def test_every_knob_reaches_its_stage(ckpts, monkeypatch):
    pipe = _pipe(
        ckpts,
        prior_guidance_scale=2.5,
        prior_steps=3,
        prior_n_candidates=3,
        prior_eta=0.1,
        decoder_guidance_scale=1.7,
        decoder_steps=2,
        decoder_sampler="ddpm",
        decoder_eta=0.3,
        upsampler_steps=[1, 2],
        upsampler_eta=0.2,
        upsampler_tile="train_crop",
    )
    p = _spy(monkeypatch, pipe.prior_model, "sample")
    d = _spy(monkeypatch, pipe.decoder, "sample")
    u1 = _spy(monkeypatch, pipe.upsamplers[0], "upsample")
    u2 = _spy(monkeypatch, pipe.upsamplers[1], "upsample")
    pipe.generate(CAPS)
    kw = p[0]["kwargs"]
    assert (kw["steps"], kw["guidance_scale"], kw["n_candidates"], kw["eta"]) == (3, 2.5, 3, 0.1)
    text_emb, text_tokens = p[0]["args"][:2]
    torch.testing.assert_close(text_emb, pipe.clip.encode_text(CAPS))  # the caption's CLIP text embedding ...
    assert torch.equal(text_tokens, pipe.clip.tokenize(CAPS))  # ... and CLIP tokens
    args, kw = d[0]["args"], d[0]["kwargs"]
    assert torch.equal(args[0], pipe.decoder.encode_captions(CAPS))  # the decoder's own BPE
    assert torch.equal(args[1], p[0]["out"])  # the prior's embedding
    assert (kw["decoder_guidance_scale"], kw["steps"], kw["sampler"], kw["eta"]) == (1.7, 2, "ddpm", 0.3)
    assert torch.equal(u1[0]["args"][0], d[0]["out"])
    assert (u1[0]["kwargs"]["steps"], u1[0]["kwargs"]["eta"], u1[0]["kwargs"]["tile"]) == (1, 0.2, "train_crop")
    assert (u2[0]["kwargs"]["steps"], u2[0]["kwargs"]["eta"], u2[0]["kwargs"]["tile"]) == (2, 0.2, "train_crop")
    assert u2[0]["args"][0].shape[-1] == 64

    # the AR prior gets its guidance scale; text_emb / none feed the decoder the text embedding / zeros
    ar = _pipe(ckpts, prior="ar", ups=0, prior_guidance_scale=2.0)
    a = _spy(monkeypatch, ar.prior_model, "sample")
    assert ar.generate(CAPS).shape == (2, 3, 16, 16)
    assert a[0]["kwargs"]["guidance_scale"] == 2.0
    for mode in ("text_emb", "none"):
        pipe = _pipe(ckpts, prior=mode, ups=0, stages=["decoder"])
        d = _spy(monkeypatch, pipe.decoder, "sample")
        pipe.generate(CAPS)
        want = pipe.clip.encode_text(CAPS) if mode == "text_emb" else torch.zeros(2, D)
        torch.testing.assert_close(d[0]["args"][1], want)


def test_stages_given_as_one_word_is_that_stage(ckpts):
    """generator.stages=decoder (Hydra gives the string) was split into characters: "stages has ['d', 'e', ...]"."""
    pipe = _pipe(ckpts, prior="text_emb", ups=0, stages="decoder")
    assert pipe.stages == ["decoder"]
    assert pipe.generate(CAPS[:1]).shape == (1, 3, 16, 16)


@pytest.mark.parametrize("n", [0, -1, 1.5])
def test_a_bad_prior_n_candidates_is_refused_when_the_pipeline_is_built(ckpts, n):
    """generator.prior_n_candidates=0 / -1 passed construction and failed mid-sampling with a bare IndexError
    (argmax of no candidates) or RuntimeError (negative repeats); 1.5 was silently truncated to one draw."""
    from zoo.errors import ConfigError

    with pytest.raises(ConfigError, match=r"generator.prior_n_candidates=\S+ must be a whole number >= 1"):
        _pipe(ckpts, ups=0, prior_n_candidates=n)


@pytest.mark.parametrize("n", [-1, 1.5, "2"])
def test_a_bad_invert_refine_is_refused_when_the_pipeline_is_built(ckpts, n):
    """generator.invert_refine went through int(): 1.5 refined once and -1 not at all, without a word. Zero (no
    refinement, the default) and whole numbers are kept."""
    from zoo.errors import ConfigError

    with pytest.raises(ConfigError, match=r"generator.invert_refine=\S+ must be a whole number >= 0.*invert_refine=0"):
        _pipe(ckpts, ups=0, prior="text_emb", stages=["decoder"], invert_refine=n)
    assert _pipe(ckpts, ups=0, prior="text_emb", stages=["decoder"], invert_refine=0).invert_refine == 0
    assert _pipe(ckpts, ups=0, prior="text_emb", stages=["decoder"], invert_refine=2).invert_refine == 2
    with pytest.raises(ConfigError, match=r"generator.invert_refine=2\.0 must be"):  # as every count refuses 2.0
        _pipe(ckpts, ups=0, prior="text_emb", stages=["decoder"], invert_refine=2.0)


@pytest.mark.parametrize("prior,sampler", [("diffusion", "ddim"), ("diffusion", "ddpm"), ("ar", "ddim")])
def test_batched_candidates_are_the_one_at_a_time_candidates(ckpts, monkeypatch, prior, sampler):
    """Candidates share the decoder's and upsampler's batches, each candidate's rows drawing from its own seed's
    generator (the prior's too, diffusion or AR): the same images as one seed at a time (batch_size = the captions),
    to float rounding; a stochastic diffusers decoder sampler draws one candidate at a time."""
    kw = dict(prior=prior, ups=1, seed=7, decoder_sampler=sampler, decoder_eta=0.5, upsampler_eta=0.5)
    alone = _pipe(ckpts, batch_size=len(CAPS), **kw)
    d_alone = _spy(monkeypatch, alone.decoder, "sample")
    want = alone.candidates(CAPS, 3)
    pipe = _pipe(ckpts, **kw)
    d = _spy(monkeypatch, pipe.decoder, "sample")
    u = _spy(monkeypatch, pipe.upsamplers[0], "upsample")
    pr = _spy(monkeypatch, pipe.prior_model, "sample")
    got = pipe.candidates(CAPS, 3)
    assert [c["args"][0].shape[0] for c in pr] == [6]  # the prior too: one call for the 3 candidates
    assert got.shape == want.shape == (2, 3, 3, 64, 64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    assert not torch.equal(got[:, 0], got[:, 1])  # the candidates differ: each has its own noise
    assert [c["args"][1].shape[0] for c in d_alone] == [2, 2, 2]  # one candidate (2 captions) per call
    assert [c["args"][1].shape[0] for c in d] == [6] and [c["args"][0].shape[0] for c in u] == [6]
    if prior == "ar":
        return
    diffusers = _pipe(ckpts, ups=0, seed=7, decoder_sampler="euler")
    d = _spy(monkeypatch, diffusers.decoder, "sample")
    assert diffusers.candidates(CAPS, 2).shape == (2, 2, 3, 16, 16) and len(d) == 2


def test_seed_determinism_candidates_and_reranking(ckpts):
    pipe = _pipe(ckpts, ups=1, seed=3)
    one = pipe.candidates(CAPS, 1)
    two = pipe.candidates(CAPS, 2)
    torch.testing.assert_close(one[:, 0], two[:, 0], rtol=0, atol=1e-4)  # candidate i: the same noise whatever n
    assert torch.equal(_pipe(ckpts, ups=1, seed=3).generate(CAPS), one[:, 0])
    assert not torch.equal(_pipe(ckpts, ups=1, seed=4).generate(CAPS), one[:, 0])
    out = _pipe(ckpts, ups=1, seed=3, n_candidates=2).sample(CAPS, n_keep=2)
    assert out["images"].shape == (2, 2, 3, 64, 64) and (out["scores"][:, 0] >= out["scores"][:, 1]).all()
    cos = torch.einsum(
        "bnd,bd->bn", pipe.clip.encode_image(two.flatten(0, 1)).view(2, 2, -1), pipe.clip.encode_text(CAPS)
    )
    best = cos.argmax(1)
    want = two[torch.arange(2), best]
    assert torch.equal(_pipe(ckpts, ups=1, seed=3, n_candidates=2).generate(CAPS), want)


# ------------------------------------------------------------------------------------------------------ manipulations
def test_variations_eta0_with_inverted_latent_reproduce_the_input(ckpts):
    pipe = _pipe(ckpts, ups=0, prior="text_emb", stages=["decoder"], decoder_steps=10, decoder_guidance_scale=1.0)
    x = _images(2, 16, seed=5)
    rec = pipe.variations(x, n=1, eta=0.0)[:, 0]
    lat = pipe.invert(x)
    rand = pipe.decode_latent(
        lat["image_emb"], torch.randn(lat["x_T"].shape, generator=torch.Generator().manual_seed(0))
    )
    assert torch.equal(rec, pipe.decode_latent(lat["image_emb"], lat["x_T"], eta=0.0))
    err, err_rand = (rec - x).abs().mean().item(), (rand - x).abs().mean().item()
    assert err < 0.05 and err < 0.1 * err_rand, (err, err_rand)  # measured: 0.014 vs 0.97
    # eta > 0: variations differ from each other and from the reconstruction, deterministic by seed
    v = pipe.variations(x, n=2, eta=1.0)
    assert v.shape == (2, 2, 3, 16, 16) and not torch.equal(v[:, 0], v[:, 1])
    assert torch.equal(v, pipe.variations(x, n=2, eta=1.0))
    # the two variations share a decoder call, each from its own seed's generator: as one at a time
    alone = _pipe(
        ckpts, ups=0, prior="text_emb", stages=["decoder"], decoder_steps=10, decoder_guidance_scale=1.0, batch_size=2
    )
    torch.testing.assert_close(v, alone.variations(x, n=2, eta=1.0), rtol=0, atol=1e-4)
    assert not torch.allclose(v[:, 0], rec)
    # with an upsampler the variations come out at its size
    up = _pipe(ckpts, ups=1, prior="text_emb", stages=["decoder", "upsampler"])
    assert up.variations(x, n=1).shape == (2, 1, 3, 64, 64)


@pytest.mark.parametrize("latent", ["fixed", "slerp"])
def test_interpolation_endpoints_are_the_two_images_decodes(ckpts, latent):
    pipe = _pipe(ckpts, ups=0, prior="text_emb", stages=["decoder"], decoder_steps=3)
    a, b = _images(1, 16, seed=1), _images(1, 16, seed=2)
    strip = pipe.interpolate(a, b, n_steps=4, latent=latent)
    assert strip.shape == (1, 4, 3, 16, 16)
    if latent == "fixed":
        x_T = torch.randn(a.shape, generator=torch.Generator().manual_seed(pipe.seed))
        xa = xb = x_T
    else:
        xa, xb = pipe.invert(a)["x_T"], pipe.invert(b)["x_T"]
    dec_a = pipe.decode_latent(pipe.image_embedding(a), xa)
    dec_b = pipe.decode_latent(pipe.image_embedding(b), xb)
    torch.testing.assert_close(strip[:, 0], dec_a, rtol=0, atol=1e-5)
    torch.testing.assert_close(strip[:, -1], dec_b, rtol=0, atol=1e-5)
    assert not torch.allclose(strip[:, 1], strip[:, 0])
    # the frames are decoded 4 to a call here; one frame per call gives the same strip
    alone = _pipe(ckpts, ups=0, prior="text_emb", stages=["decoder"], decoder_steps=3, batch_size=1)
    torch.testing.assert_close(alone.interpolate(a, b, n_steps=4, latent=latent), strip, rtol=0, atol=1e-5)


def test_text_diff_slerps_toward_the_normalised_text_difference(ckpts, monkeypatch):
    import zoo.pipelines.unclip as unclip_module

    pipe = _pipe(ckpts, ups=0, prior="text_emb", stages=["decoder"], decoder_steps=3, invert_refine=2)
    inv_calls = _spy(monkeypatch, unclip_module, "ddim_invert")
    x = _images(1, 16, seed=3)
    d = _spy(monkeypatch, pipe.decoder, "decoder_model_fn")
    s = _spy(monkeypatch, pipe, "decode_latent")
    out = pipe.text_diff(x, "a red circle", "a blue square", n_steps=3, max_t=0.5)
    assert out.shape == (1, 3, 3, 16, 16)
    z_i = pipe.image_embedding(x)
    z_d = F.normalize(pipe.clip.encode_text(["a blue square"]) - pipe.clip.encode_text(["a red circle"]), dim=-1)
    embs = d[-1]["args"][1]  # the 3 frames in one decoder call (DDIM eta 0 draws no noise): one row each
    torch.testing.assert_close(embs[:1], z_i)
    torch.testing.assert_close(embs[-1:], slerp(z_i, z_d, 0.5), rtol=0, atol=1e-6)
    inv = pipe.invert(x)["x_T"]
    assert len(s) == 1 and torch.equal(s[0]["args"][1], inv.repeat(3, 1, 1, 1))  # the image's own latent throughout
    assert s[0]["args"][2] == 0.0  # DDIM eta 0
    assert inv_calls[0]["kwargs"]["refine"] == 2 and inv_calls[0]["args"][0].num_timesteps == 3  # invert knobs


# ------------------------------------------------------------------------------------------------------ configs
def _generator_overrides(ckpts, *extra: str) -> list[str]:
    return [
        "generator=unclip",
        f"generator.prior_ckpt={ckpts['prior']}",
        f"generator.decoder_ckpt={ckpts['decoder']}",
        f"generator.clip_ckpt={ckpts['clip']}",
        "generator.prior_steps=2",
        "generator.decoder_steps=2",
        "generator.upsampler_steps=1",
        *extra,
    ]


def test_zoo_eval_config_builds_the_pipeline(ckpts, tmp_path):
    from tests.conftest import compose_cfg  # registered by pytest under this name (importlib mode)
    from zoo.pipelines.base import CHECKPOINT_GENERATORS, build_generator

    cfg = compose_cfg(
        tmp_path,
        _generator_overrides(ckpts, f"generator.upsampler_ckpts=[{ckpts['up1']}]", "seed=7"),
        module="conf.eval",
        name="eval",
    )
    pipe = build_generator(cfg.generator)
    assert isinstance(pipe, UnclipPipeline) and pipe.seed == 7 and pipe.prior == "diffusion"
    assert pipe.candidates(CAPS[:1], 2).shape == (1, 2, 3, 64, 64)  # what zoo-eval calls
    assert CHECKPOINT_GENERATORS["unclip_decoder"] == ("unclip", "decoder_ckpt")


def test_zoo_sample_writes_grids_per_prompt(ckpts, tmp_path):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from zoo.sample import sample

    GlobalHydra.instance().clear()
    overrides = _generator_overrides(
        ckpts,
        f"out_dir={tmp_path / 'out'}",
        f"paths.root_dir={tmp_path}",
        "n_keep=2",
        "generator.n_candidates=3",
        f"prompts={json.dumps(CAPS)}",
    )
    # the short form: ckpt=<decoder> fills generator.decoder_ckpt
    overrides = [o for o in overrides if not o.startswith("generator.decoder_ckpt")] + [f"ckpt={ckpts['decoder']}"]
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose("sample", overrides=overrides)
    written = sample(cfg)
    entries = [v for v in written.values() if isinstance(v, dict) and "grid" in v]
    assert len(entries) == 2 and all(Path(e["grid"]).is_file() and len(e["images"]) == 2 for e in entries)
    assert all(e["clip_scores"][0] >= e["clip_scores"][1] for e in entries)


def test_manipulation_cli_writes_a_grid(ckpts, tmp_path):
    from torchvision.utils import save_image

    from zoo.pipelines.unclip import main

    img = tmp_path / "a.png"
    save_image(_images(1, 16, seed=4)[0].add(1).div(2), img)
    out = tmp_path / "var.png"
    main(
        [
            "variations",
            str(img),
            "--decoder-ckpt",
            str(ckpts["decoder"]),
            "--clip-ckpt",
            str(ckpts["clip"]),
            "-n",
            "2",
            "--decoder-steps",
            "2",
            "--out",
            str(out),
        ]
    )
    assert out.is_file()


def test_manipulation_cli_out_may_be_a_directory_and_a_bad_extension_fails_first(ckpts, tmp_path, monkeypatch):
    """--out without an extension crashed in PIL ("unknown file extension") after the whole sampling; it is a
    directory now, and an extension PIL cannot write is refused before any checkpoint is loaded."""
    from torchvision.utils import save_image

    from zoo.pipelines import unclip

    img = tmp_path / "a.png"
    save_image(_images(1, 16, seed=4)[0].add(1).div(2), img)
    args = ["--decoder-ckpt", str(ckpts["decoder"]), "--clip-ckpt", str(ckpts["clip"]), "-n", "2", "--decoder-steps"]
    written = unclip.main(["variations", str(img), *args, "2", "--out", str(tmp_path / "grids")])
    assert written["grid"] == str(tmp_path / "grids" / "variations.png") and Path(written["grid"]).is_file()

    def must_not_load(*a, **k):
        raise AssertionError("checkpoints loaded before --out was checked")

    monkeypatch.setattr(unclip.UnclipPipeline, "from_checkpoints", must_not_load)
    with pytest.raises(SystemExit) as e:
        unclip.main(["variations", str(img), *args, "2", "--out", str(tmp_path / "v.xyz")])
    assert e.value.code == 2


@pytest.mark.parametrize(
    "argv, said",
    [
        (["interpolate", "x.png"], "interpolate takes two images"),
        (["text_diff", "x.png", "--caption-from", "a red circle"], "--caption-to"),
        (["variations", "x.png", "--eta", "-1"], "--eta -1.0"),
        (["variations", "x.png", "--eta", "nan"], "--eta nan"),
        (["text_diff", "x.png", "--caption-to", "a blue circle", "--max-t", "nan"], "--max-t nan"),
        (["variations", "x.png", "--decoder-steps", "0"], "--decoder-steps 0"),
        (["variations", "x.png", "--upsampler-steps", "-1"], "--upsampler-steps -1"),
        (["variations", "x.png", "--decoder-guidance-scale", "nan"], "--decoder-guidance-scale nan"),
    ],
)
def test_manipulation_cli_options_are_checked_before_any_checkpoint_loads(argv, said, monkeypatch, capsys):
    """A second image missing for interpolate or --caption-to for text_diff were refused only after the decoder and
    the CLIP had loaded; a negative or NaN --eta was DDIM's ValueError traceback after the inversion, a NaN --max-t
    NaN frames; --decoder-steps 0 or a NaN --decoder-guidance-scale were refused after the load, naming
    generator.<key>, an option this command does not have. Now errors naming the option, before anything loads."""
    from zoo.pipelines import unclip

    def must_not_load(*a, **k):
        raise AssertionError("checkpoints loaded before the options were checked")

    monkeypatch.setattr(unclip.UnclipPipeline, "from_checkpoints", must_not_load)
    with pytest.raises(SystemExit) as e:
        unclip.main([*argv, "--decoder-ckpt", "d", "--clip-ckpt", "c"])
    assert e.value.code == 2 and said in capsys.readouterr().err


def test_manipulation_cli_takes_images_of_different_sizes(ckpts, tmp_path):
    """Two photos of different sizes (variations a.png b.png) were torch.cat's 'Sizes of tensors must match'
    traceback; each is brought to the decoder's resolution by the pipeline, so the grid has a row per image."""
    from PIL import Image

    from zoo.pipelines.unclip import main

    Image.new("RGB", (40, 30), (200, 20, 20)).save(tmp_path / "a.png")
    Image.new("RGB", (16, 16), (20, 20, 200)).save(tmp_path / "b.png")
    args = ["--decoder-ckpt", str(ckpts["decoder"]), "--clip-ckpt", str(ckpts["clip"]), "--decoder-steps", "2"]
    for mode, extra in (("variations", []), ("text_diff", ["--caption-to", "a blue square"])):
        out = tmp_path / f"{mode}.png"
        main([mode, str(tmp_path / "a.png"), str(tmp_path / "b.png"), *args, *extra, "-n", "2", "--out", str(out)])
        with Image.open(out) as grid:  # 2 rows of 2 16 px images, torchvision's 2 px padding
            assert grid.size == (2 + 2 * 18, 2 + 2 * 18)


def test_manipulation_cli_reads_images_upright_and_refuses_unreadable_files(tmp_path):
    """A photo stored landscape with an EXIF orientation tag (a phone's portrait) is read upright, as the data
    loaders and the GLIDE inpainting CLI read it (it was read sideways); an unreadable file is a ConfigError."""
    from PIL import Image

    from zoo.errors import ConfigError
    from zoo.pipelines.unclip import _load_image

    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "portrait.jpg", exif=exif.tobytes())
    x = _load_image(str(tmp_path / "portrait.jpg"))
    assert x.shape == (1, 3, 40, 20) and -1 <= float(x.min()) and float(x.max()) <= 1
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ConfigError, match="broken.png"):
        _load_image(str(tmp_path / "broken.png"))


def test_manipulations_centre_crop_a_non_square_image_as_clip_does_never_squash_it():
    """The decoder's half of the bipartite latent (DDIM inversion) sees the image as the training data and the CLIP
    (z_i) see it: short side to the decoder's resolution, centre crop. It was squashed to a square, so x_T came from a
    distorted picture while z_i described the centre crop."""
    from zoo.pipelines.unclip import _as_images

    wide = torch.cat([torch.full((1, 3, 16, 16), v) for v in (-1.0, 0.5, 1.0)], dim=-1)  # three 16 px blocks
    x = _as_images(wide, 16, "image")
    assert x.shape == (1, 3, 16, 16)
    torch.testing.assert_close(x, torch.full_like(x, 0.5))  # the middle block exactly
    tall = wide.transpose(-1, -2)
    y = _as_images(tall, 8, "image")  # downscaled: the antialiasing filter only blurs the crop's border rows
    assert y.shape == (1, 3, 8, 8)
    torch.testing.assert_close(y[..., 2:6, :], torch.full((1, 3, 4, 8), 0.5), atol=1e-3, rtol=0)


def test_zero_frames_or_variations_are_refused_up_front(ckpts, tmp_path, monkeypatch):
    """n = 0 variations / frames failed after the DDIM inversion with torch.cat's "expected a non-empty list of
    Tensors" or an IndexError; now a ValueError naming the argument (the CLI: before any checkpoint loads). inf was
    int()'s OverflowError and NaN its "cannot convert float NaN to integer", neither naming the argument."""
    from zoo.pipelines import unclip

    pipe = _pipe(ckpts, prior="none", ups=0, stages=["decoder"])
    img = _images(1, 16, seed=4)
    for call, what in (
        (lambda: pipe.variations(img, n=0), "variations: n"),
        (lambda: pipe.interpolate(img, img, n_steps=0), "interpolate: n_steps"),
        (lambda: pipe.text_diff(img, "a", "b", n_steps=0), "text_diff: n_steps"),
        (lambda: pipe.variations(img, n=float("inf")), "variations: n=inf must be a whole number"),
        (lambda: pipe.interpolate(img, img, n_steps=float("nan")), "interpolate: n_steps=nan must be a whole number"),
    ):
        with pytest.raises(ValueError, match=what):
            call()

    def must_not_load(*a, **k):
        raise AssertionError("checkpoints loaded before -n was checked")

    monkeypatch.setattr(unclip.UnclipPipeline, "from_checkpoints", must_not_load)
    with pytest.raises(SystemExit) as e:
        unclip.main(["variations", "x.png", "--decoder-ckpt", "d", "--clip-ckpt", "c", "-n", "0"])
    assert e.value.code == 2


def test_upsampler_tile_is_checked_against_the_upsamplers_that_stages_runs(caplog):
    """generator.upsampler_tile was checked against every loaded upsampler: with stages=[..., upsampler1] a tile that
    fits upsampler1 was refused because upsampler2 (which never runs) could not take it. A tile that does not fit a
    stage that runs is still refused up front, naming the generator key and the upsampler; upsampler knobs set while
    no upsampler runs are a WARNING (ignored), as the AR prior's diffusion-only knobs are."""
    import logging

    from zoo.errors import ConfigError
    from zoo.models.unclip_decoder.lit import UnclipDecoderLit
    from zoo.models.upsampler.lit import UpsamplerLit

    torch.manual_seed(0)
    dec = UnclipDecoderLit(preset="tiny", sample_steps=2)
    up1 = UpsamplerLit(preset="tiny", sample_steps=1)  # U-Net divisor 2: a 12 px window fits
    up2 = UpsamplerLit(preset="tiny", net={"channel_mult": [1, 2, 2, 2]}, sample_steps=1)  # divisor 8: it does not
    kw = dict(prior="none", upsampler_tile=12)
    pipe = UnclipPipeline(dec, None, None, [up1, up2], stages=["decoder", "upsampler1"], **kw)
    assert pipe.upsampler_tile == 12
    for stages in (["decoder", "upsampler2"], ["decoder", "upsampler"]):
        with pytest.raises(ConfigError, match="generator.upsampler_tile=12 does not fit upsampler2: .*divisor 8"):
            UnclipPipeline(dec, None, None, [up1, up2], stages=stages, **kw)
    for ups, stages in (([up1, up2], ["decoder"]), ([], ["decoder", "upsampler"])):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="zoo.pipelines.unclip"):
            UnclipPipeline(dec, None, None, ups, stages=stages, upsampler_eta=0.5, **kw)
        lines = [r.getMessage() for r in caplog.records if "no upsampler runs" in r.getMessage()]
        assert len(lines) == 1 and lines[0].startswith("upsampler_eta, upsampler_tile ignored"), lines


@pytest.mark.parametrize("prior", ["text_emb", "none"])
def test_prior_knobs_without_a_prior_model_are_a_warning(prior, caplog):
    """prior=text_emb | none run no prior model, so prior_guidance_scale / prior_steps / prior_n_candidates /
    prior_eta were ignored without a word (an ablation sweep over them changed nothing); the AR prior already warned
    about the knobs it ignores. Unset knobs warn nothing."""
    import logging

    from zoo.models.unclip_decoder.lit import UnclipDecoderLit

    dec = UnclipDecoderLit(preset="tiny", sample_steps=2)
    kw = dict(prior=prior, stages=["decoder"])
    with caplog.at_level(logging.WARNING, logger="zoo.pipelines.unclip"):
        UnclipPipeline(dec, None, None, [], prior_guidance_scale=3.0, prior_eta=0.5, **kw)
        lines = [r.getMessage() for r in caplog.records if "runs no prior model" in r.getMessage()]
        assert lines == [
            f"prior_guidance_scale, prior_eta ignored: prior={prior} runs no prior model (prior=diffusion "
            f"| ar with generator.prior_ckpt does)"
        ], lines
        caplog.clear()
        UnclipPipeline(dec, None, None, [], **kw)
    assert not [r for r in caplog.records if "ignored" in r.getMessage()]


def test_a_decoder_eta_the_decoder_sampler_does_not_take_is_a_warning(caplog):
    """decoder_eta with decoder_sampler=ddpm (or a diffusers scheduler) was ignored without a word (only ddim draws
    with an eta). A WARNING; with ddim (given, or the checkpoint's) nothing."""
    import logging

    from zoo.models.unclip_decoder.lit import UnclipDecoderLit

    dec = UnclipDecoderLit(preset="tiny", sample_steps=2)
    kw = dict(prior="none", stages=["decoder"], decoder_eta=0.5)
    with caplog.at_level(logging.WARNING, logger="zoo.pipelines.unclip"):
        UnclipPipeline(dec, None, None, [], decoder_sampler="ddpm", **kw)
        lines = [r.getMessage() for r in caplog.records if "eta" in r.getMessage()]
        assert lines == ["decoder_eta=0.5 ignored: only the ddim decoder sampler takes an eta, not ddpm"], lines
        caplog.clear()
        UnclipPipeline(dec, None, None, [], decoder_sampler="ddim", **kw)
        UnclipPipeline(dec, None, None, [], **kw)  # the checkpoint's sampler: ddim
    assert not [r for r in caplog.records if "eta" in r.getMessage()]


def test_upsampler_steps_with_too_few_values_names_the_count():
    """upsampler_steps=[1] for two upsamplers was checked value by value first, and the list itself reached the
    step check: "must be a whole number ..., got [1] (fix: generator.upsampler_steps=50)". The count is checked
    first now."""
    from zoo.errors import ConfigError
    from zoo.models.unclip_decoder.lit import UnclipDecoderLit
    from zoo.models.upsampler.lit import UpsamplerLit

    ups = [UpsamplerLit(preset="tiny"), UpsamplerLit(preset="tiny")]
    with pytest.raises(ConfigError, match=r"upsampler_steps has 1 values for 2 upsamplers \(fix: one value"):
        UnclipPipeline(UnclipDecoderLit(preset="tiny"), None, None, ups, prior="none", upsampler_steps=[1])


@pytest.mark.parametrize("steps", [2.5, "abc", "25", [2.5], [1, "x"]])
def test_upsampler_steps_of_the_wrong_kind_are_a_config_error(steps):
    """generator.upsampler_steps=2.5 was "'float' object is not iterable", abc (a string) int()'s "invalid literal
    ... 'a'", "25" two values (one per character) and [2.5] silently 2 steps: now the step check's ConfigError
    naming the key."""
    from zoo.errors import ConfigError
    from zoo.models.unclip_decoder.lit import UnclipDecoderLit
    from zoo.models.upsampler.lit import UpsamplerLit

    ups = [UpsamplerLit(preset="tiny")] * (2 if isinstance(steps, list) and len(steps) == 2 else 1)
    with pytest.raises(ConfigError, match=r"generator\.upsampler_steps=.* must be a whole number"):
        UnclipPipeline(UnclipDecoderLit(preset="tiny"), None, None, ups, prior="none", upsampler_steps=steps)


@pytest.mark.parametrize(
    "knob, said",
    [
        ({"prior": "Diffusion"}, "prior='Diffusion'; choose"),
        ({"stages": ["prior", "decoder", "upsampler2"]}, r"stages has \['upsampler2'\]"),
        ({"stages": "prior"}, "stages must include decoder"),
        ({"prior": "ar", "stages": ["decoder"]}, "stages lacks prior but prior=ar"),
        ({"n_keep": 0}, "generator.n_keep=0 must be"),
        ({"batch_size": 2.5}, "generator.batch_size=2.5 must be"),
        (
            {"decoder_guidance_scale": -1.0},
            "generator.decoder_guidance_scale=-1.0 must be a number >= 0: the guidance scale",
        ),
        ({"decoder_sampler": "eular"}, "generator.decoder_sampler='eular' is not a sampler"),
        ({"decoder_eta": float("nan")}, "generator.decoder_eta=nan must be a number >= 0: the DDIM eta"),
    ],
)
def test_options_that_need_no_model_are_refused_before_any_checkpoint_loads(knob, said, tmp_path, monkeypatch):
    """A misspelt prior or stage, a bad count, a decoder guidance scale / eta / sampler that cannot work were refused
    only after the prior, the decoder, the upsamplers and the CLIP had loaded (minutes at the paper's sizes)."""
    import zoo.checkpoint
    from zoo.errors import ConfigError

    def must_not_load(*a, **k):
        raise AssertionError("a checkpoint was loaded before the options were checked")

    monkeypatch.setattr(zoo.checkpoint, "load_module", must_not_load)
    missing = str(tmp_path / "missing.ckpt")
    with pytest.raises(ConfigError, match=said):
        UnclipPipeline.from_checkpoints(missing, missing, missing, [missing], **knob)


def test_guidance_with_a_null_condition_a_stage_never_trained_is_a_warning(caplog):
    """The GLIDE and DALL·E pipelines warn when they guide with a null their model never trained; unCLIP did not: a
    decoder with emb_dropout=0 (its null, empty caption + zero embedding together, never seen) guided at its own
    scale 3, or a prior with text_dropout=0 at prior_guidance_scale 2, sampled without a word. The paper's rates, a
    scale of 1 or a null_dropout are quiet."""
    import logging

    from zoo.models.diffusion_prior.lit import DiffusionPriorLit
    from zoo.models.unclip_decoder.lit import UnclipDecoderLit

    torch.manual_seed(0)
    untrained = UnclipDecoderLit(preset="tiny", emb_dropout=0.0)
    paper = UnclipDecoderLit(preset="tiny")
    prior = DiffusionPriorLit(preset="tiny", net={"clip_dim": D}, text_dropout=0.0, guidance_scale=2.0)
    cases = [
        (dict(decoder=untrained, prior="none"), "decoder never trains its null condition"),
        (dict(decoder=untrained, prior="none", decoder_guidance_scale=1.0), None),
        (dict(decoder=UnclipDecoderLit(preset="tiny", emb_dropout=0.0, null_dropout=0.1), prior="none"), None),
        (dict(decoder=paper, prior="none"), None),
        (dict(decoder=paper, prior_model=prior, prior="diffusion"), "the diffusion prior has text_dropout=0"),
        (dict(decoder=paper, prior_model=prior, prior="diffusion", prior_guidance_scale=1.0), None),
    ]
    for kw, said in cases:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="zoo.pipelines.unclip"):
            UnclipPipeline(clip=None, **kw)
        warned = [r.getMessage() for r in caplog.records if "never train" in r.getMessage()]
        assert (said is None and not warned) or (said is not None and said in " ".join(warned)), (kw, warned)


def test_one_upsampler_checkpoint_given_as_a_string_is_that_checkpoint(ckpts):
    """generator.upsampler_ckpts=<path> (no brackets: Hydra gives the string) was read one character at a time:
    "checkpoint not found: /"."""
    for one in (str(ckpts["up1"]), ckpts["up1"]):
        pipe = UnclipPipeline.from_checkpoints(None, ckpts["decoder"], ckpts["clip"], one, prior="none")
        assert len(pipe.upsamplers) == 1 and pipe.weights["upsampler1"]


def test_manipulation_cli_never_replaces_an_input_image_nor_a_grid_it_named_itself(tmp_path, monkeypatch, capsys):
    """The manipulation CLI shares the inpaint CLI's --out: one of the images as --out is refused before any
    checkpoint loads (it overwrote the input); the default name and <dir>/<mode>.png become <stem>-<n>.png beside an
    earlier grid instead of replacing it; a file named with --out is the user's choice and is replaced."""
    from torchvision.utils import save_image

    from zoo.errors import ConfigError
    from zoo.pipelines import unclip

    monkeypatch.chdir(tmp_path)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for i, img in enumerate((a, b)):
        save_image(_images(1, 16, seed=i)[0].add(1).div(2), img)
    before = a.read_bytes(), b.read_bytes()

    def must_not_load(*args, **kwargs):
        raise AssertionError("checkpoints loaded before --out was checked")

    monkeypatch.setattr(unclip.UnclipPipeline, "from_checkpoints", must_not_load)
    with pytest.raises(SystemExit) as e:
        unclip.main(["interpolate", "a.png", "b.png", "--decoder-ckpt", "d", "--clip-ckpt", "c", "--out", str(b)])
    assert e.value.code == 2
    assert f"--out {b}: that is the input image b.png, the grid would replace it" in capsys.readouterr().err
    assert (a.read_bytes(), b.read_bytes()) == before
    default = "unclip_manipulation.png"
    assert unclip._grid_path(None, "variations", ["a.png"], default) == Path(default)
    Path(default).write_bytes(b"earlier")
    assert unclip._grid_path(None, "variations", ["a.png"], default) == Path("unclip_manipulation-1.png")
    (tmp_path / "grids").mkdir()
    (tmp_path / "grids" / "variations.png").write_bytes(b"earlier")
    (tmp_path / "grids" / "variations-1.png").write_bytes(b"earlier")
    got = unclip._grid_path("grids", "variations", ["a.png"], default)
    assert got == Path("grids") / "variations-2.png"
    assert unclip._grid_path(default, "variations", ["a.png"], default) == Path(default)  # named: replaced as asked
    with pytest.raises(ConfigError, match="that is the input image a.png"):
        unclip._grid_path("./a.png", "variations", ["a.png"], default)
