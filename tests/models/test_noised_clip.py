"""Noised CLIP and CLIP guidance: the contrastive loss falls on a fixed batch, the timestep changes the features,
CLIP guidance at scale 0 is the unguided sampler bit for bit (ddpm and ddim), one guided step is the hand-computed
μ + s Σ ∇(f·g) and moves the score up, guided samples score higher, zoo-train -> load_module."""

from __future__ import annotations

import pytest
import torch

from zoo.diffusion.guidance import clip_guided_sample, condition_mean, dot_product_gradient
from zoo.models.glide.lit import GlideLit
from zoo.models.noised_clip.lit import NoisedClipLit, clip_guided_generate
from zoo.models.noised_clip.model import NOISED_CLIP_PRESETS, NoisedClip

TINY = NOISED_CLIP_PRESETS["tiny"]


def _tokens(b: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tok = torch.zeros(b, TINY.text_len, dtype=torch.long)
    tok[:, :6] = torch.randint(1, TINY.text_vocab, (b, 6), generator=g)
    return tok


def _pair(nn_helpers):
    """A tiny GLIDE and a tiny noised CLIP sharing a word tokenizer (with a hash of the word that is stable across
    processes), in eval mode."""
    glide = nn_helpers.sampling_lit(GlideLit)
    clip = NoisedClipLit(preset="tiny")
    nn_helpers.perturb(clip.net, std=0.3, seed=1)
    glide.text_tokenizer = clip.text_tokenizer = nn_helpers.WordTokenizer(word_hash=lambda w: sum(map(ord, w)))
    return glide, clip.eval()


def test_shapes_and_timestep_changes_the_features(perturb):
    torch.manual_seed(0)
    net = perturb(NoisedClip(TINY)).eval()
    x = torch.randn(3, 3, 16, 16)
    f0, f1 = net.encode_image(x, torch.full((3,), 10)), net.encode_image(x, torch.full((3,), 900))
    assert f0.shape == (3, TINY.embed_dim) and net.encode_text(_tokens(3)).shape == (3, TINY.embed_dim)
    torch.testing.assert_close(f0.norm(dim=-1), torch.ones(3))
    assert (f0 - f1).abs().max() > 1e-3  # the same x_t at another noise level: other features
    assert not torch.allclose(net.encode_image(x, torch.full((3,), 10)), net.encode_image(x.flip(-1), 10))


def test_contrastive_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    lit = NoisedClipLit(preset="tiny")
    g = torch.Generator().manual_seed(0)
    colours = torch.rand(8, 3, 1, 1, generator=g) * 2 - 1
    batch = {"image": colours.expand(8, 3, 16, 16).contiguous(), "text_tokens": _tokens(8)}
    t_eval = torch.full((8,), 200)  # fixed, moderately noised

    def eval_loss():
        with torch.no_grad():
            return lit.forward_loss(batch, generator=torch.Generator().manual_seed(1), t=t_eval)["loss"].item()

    start = eval_loss()
    opt = torch.optim.Adam(lit.parameters(), lr=3e-3)
    for _ in range(40):
        loss = lit.forward_loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = eval_loss()
    assert end < 0.5 * start, (start, end)  # ln 8 = 2.08 at chance


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_clip_guidance_scale_zero_is_the_unguided_sampler_bit_for_bit(sampler, nn_helpers):
    glide, clip = _pair(nn_helpers)
    caps = ["a red circle", "two blue squares"]
    want = glide.generate(caps, seed=3, guidance_scale=1.0, steps=4, sampler=sampler)
    got = clip_guided_generate(glide, clip, caps, scale=0.0, seed=3, steps=4, sampler=sampler)
    assert torch.equal(got, want)
    guided = clip_guided_generate(glide, clip, caps, scale=50.0, seed=3, steps=4, sampler=sampler)
    assert not torch.equal(guided, want)


def test_one_guided_step_is_the_hand_computed_mean_and_raises_the_score(nn_helpers):
    glide, clip = _pair(nn_helpers)
    proc = glide.process.respaced(10)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 16, 16, generator=g)
    idx = torch.full((4,), 5)
    t = proc.model_timesteps(idx)
    text = glide.encode_captions(["a red circle"] * 4)
    ctok = clip.encode_captions(["a red circle", "a blue square", "a green triangle", "two red circles"])
    with torch.no_grad():
        step = proc.p_mean_variance(glide.model_fn(text, 1.0)(x, t), x, idx)
    s = 20.0
    # by hand: autograd of the summed dot products, one example at a time
    grads = []
    for i in range(4):
        xi = x[i : i + 1].clone().requires_grad_(True)
        score = (clip.net.encode_image(xi, t[i : i + 1]) * clip.net.encode_text(ctok[i : i + 1])).sum()
        grads.append(torch.autograd.grad(score, xi)[0])
    grad = torch.cat(grads)
    want = step.mean + step.variance * s * grad
    got = condition_mean(step, clip.cond_fn(ctok, s)(x, t))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # the guided mean scores higher than the unguided one under the noised CLIP (first order: s Σ |∇|² > 0)
    with torch.no_grad():
        t_prev = proc.model_timesteps(idx - 1)
        before, after = clip.score(step.mean, t_prev, ctok), clip.score(got, t_prev, ctok)
    assert (after > before).all(), (before, after)


@pytest.mark.parametrize("sampler,scale", [("ddpm", 100.0), ("ddim", 2.0)])
def test_clip_guided_samples_score_higher_on_average(sampler, scale, nn_helpers):
    """A denoiser that is exact for data ~ N(0, 0.5² I) (so samples stay in range), guided by a fixed tiny noised
    CLIP: the final samples' noised-CLIP score at t = 0 is higher with guidance, on average and for most captions.
    (A randomly perturbed GLIDE would saturate its samples at the [-1, 1] clamp, hiding any effect.)"""
    from zoo.diffusion.process import GaussianDiffusion
    from zoo.diffusion.schedules import get_schedule

    _, clip = _pair(nn_helpers)
    full = GaussianDiffusion(get_schedule("cosine", 1000))
    proc = full.respaced(10)
    var = 0.25

    def model_fn(x, t):  # E[eps | x_t] for Gaussian data: sqrt(1 - a) x_t / (a var + 1 - a)
        a = full.coef("sqrt_ac", t, x) ** 2  # t: original timesteps
        return (1 - a).sqrt() * x / (a * var + 1 - a)

    caps = ["a red circle", "a blue square", "a green triangle", "two red circles"] * 2
    tok = clip.encode_captions(caps)
    shape = (len(caps), 3, 16, 16)
    zero = torch.zeros(len(caps), dtype=torch.long)
    out = {}
    for s in (0.0, scale):
        x = clip_guided_sample(
            proc, model_fn, clip.cond_fn(tok, s), shape, sampler=sampler, generator=torch.Generator().manual_seed(0)
        )
        with torch.no_grad():
            out[s] = clip.score(x, zero, tok)
    gain = out[scale] - out[0.0]
    # measured: every caption gains (mean +0.010 ddpm at s=100, +0.035 ddim at s=2, scores around -0.13)
    assert gain.mean() > 0.005 and (gain > 0).float().mean() >= 0.75, (out[0.0], out[scale])


def test_direct_sampler_matches_with_zero_gradient(nn_helpers):
    """``clip_guided_sample`` with a cond_fn of zeros is ``ddpm_sample`` (the loop shares its noise stream)."""
    from zoo.diffusion.samplers import ddpm_sample

    glide, _ = _pair(nn_helpers)
    proc = glide.process.respaced(3)
    fn = glide.model_fn(glide.encode_captions(["a red circle"]), 1.0)
    a = ddpm_sample(proc, fn, (1, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    cond = dot_product_gradient(lambda x, t: x.flatten(1), torch.zeros(1, 3 * 16 * 16), scale=1.0)
    b = clip_guided_sample(proc, fn, cond, (1, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_train_checkpoint_load(train_cfg, train_helpers):
    from zoo.checkpoint import load_module
    from zoo.train import train

    T = train_helpers
    cfg = train_cfg(
        "model=noised_clip", "model.preset=tiny", *T.SHAPES_BPE, "data.resolution=16", *T.sizes(), *T.ONE_EPOCH
    )
    metrics = train(cfg)
    assert metrics["global_step"] == 2 and "val/loss" in metrics
    last = T.last_ckpt(cfg)
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["zoo_component"] == "noised_clip"
    assert ckpt["hyper_parameters"]["text_tokenizer"]["kind"] == "trained_bpe"
    model = load_module(last)
    assert isinstance(model, NoisedClipLit) and model.cfg == TINY
    tok = model.encode_captions(["a red circle", "a blue square"])
    assert model.score(torch.zeros(2, 3, 16, 16), torch.zeros(2, dtype=torch.long), tok).shape == (2,)


def _configured_optimizer(model: NoisedClipLit) -> torch.optim.Optimizer:
    """conf/model/noised_clip.yaml's optimizer (AdamW, weight decay 0.1) over the module's parameter groups."""
    from functools import partial

    model.optimizer_factory = partial(torch.optim.AdamW, lr=3e-4, betas=(0.9, 0.98), weight_decay=0.1)
    return model.configure_optimizers()


def test_weight_decay_spares_the_temperature_gains_biases_and_embeddings():
    torch.manual_seed(0)
    model = NoisedClipLit(preset="tiny")
    opt = _configured_optimizer(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(3):  # zero gradients: only the decoupled weight decay can move a parameter
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
    spared = ("logit_scale", "position_embedding", "token_embedding.weight", "ln_f.weight", "norm_out.weight")
    for n, p in model.named_parameters():
        if any(n.endswith(s) for s in spared) or p.ndim < 2:
            assert torch.equal(p, before[n]), f"{n} was weight-decayed"
    assert not torch.equal(model.net.visual.proj.weight, before["net.visual.proj.weight"])  # matrices still decay


def test_resuming_a_one_group_optimizer_state_keeps_each_parameters_moments():
    torch.manual_seed(0)
    model = NoisedClipLit(preset="tiny")
    params = [p for p in model.parameters() if p.requires_grad]
    old = torch.optim.AdamW(params, lr=3e-4, weight_decay=0.1)  # the layout before the two groups
    for p in params:
        p.grad = torch.randn_like(p)
    old.step()
    ckpt = {"optimizer_states": [old.state_dict()], "lr_schedulers": [{"base_lrs": [3e-4], "_last_lr": [3e-4]}]}
    model.on_load_checkpoint(ckpt)
    opt = _configured_optimizer(model)
    opt.load_state_dict(ckpt["optimizer_states"][0])  # raised "different number of parameter groups" before
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    for p in params:
        torch.testing.assert_close(opt.state[p]["exp_avg"], old.state[p]["exp_avg"])
    assert ckpt["lr_schedulers"][0]["base_lrs"] == [3e-4, 3e-4]


@pytest.mark.parametrize("t", [2.5, True])
def test_a_step_count_that_is_not_whole_is_refused_when_built(t):
    # int() noised with a 2-step process, which no GLIDE model (1000 steps) it would guide shares
    from zoo.errors import ConfigError

    with pytest.raises(ConfigError, match="model.num_timesteps"):
        NoisedClipLit(preset="tiny", num_timesteps=t)
