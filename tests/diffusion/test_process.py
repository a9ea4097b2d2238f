"""GaussianDiffusion: forward process, parameterisations, reverse step, VLB terms and losses."""

import math

import pytest
import torch

from zoo.diffusion.losses import (
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    gaussian_log_likelihood,
    normal_kl,
)
from zoo.diffusion.process import GaussianDiffusion
from zoo.diffusion.schedules import NoiseSchedule, cosine_schedule, linear_schedule

SMALL = NoiseSchedule.from_betas([0.1, 0.2, 0.3])  # ᾱ = 0.9, 0.72, 0.504


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("shape", [(5, 3, 4, 4), (5, 7)])
def test_parameterisation_round_trips(shape):
    p = GaussianDiffusion(cosine_schedule(1000))
    g = gen()
    x0, eps = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 900, 998])
    x_t = p.q_sample(x0, t, eps)
    ac = p.schedule.alphas_cumprod[t].view(-1, *([1] * (len(shape) - 1)))
    torch.testing.assert_close(x_t, ac.sqrt() * x0 + (1 - ac).sqrt() * eps)
    torch.testing.assert_close(p.x0_from_eps(x_t, t, eps), x0)
    torch.testing.assert_close(p.eps_from_x0(x_t, t, x0), eps)
    v = p.v_from_x0_eps(x0, t, eps)
    torch.testing.assert_close(v, ac.sqrt() * eps - (1 - ac).sqrt() * x0)
    torch.testing.assert_close(p.x0_from_v(x_t, t, v), x0)
    torch.testing.assert_close(p.eps_from_v(x_t, t, v), eps)


def test_q_posterior_is_bayes_rule():
    """q(x_{t−1} | x_t, x_0) ∝ q(x_t | x_{t−1}) q(x_{t−1} | x_0), worked out by hand for the 3-step schedule."""
    p = GaussianDiffusion(SMALL)
    x0, x_t = torch.tensor([[0.7, -0.2]], dtype=torch.float64), torch.tensor([[0.1, 0.9]], dtype=torch.float64)
    for i, (ac_prev, alpha) in enumerate([(1.0, 0.9), (0.9, 0.8), (0.72, 0.7)]):
        mean, var, log_var = p.q_posterior_mean_variance(x0, x_t, torch.tensor([i]))
        beta = 1 - alpha
        if i == 0:  # x_0 is known exactly
            torch.testing.assert_close(mean, x0)
            assert var.item() == 0.0
            continue
        precision = 1 / (1 - ac_prev) + alpha / beta
        hand_mean = (math.sqrt(ac_prev) / (1 - ac_prev) * x0 + math.sqrt(alpha) / beta * x_t) / precision
        torch.testing.assert_close(mean, hand_mean)
        assert var.item() == pytest.approx(1 / precision, rel=1e-12)
        assert log_var.item() == pytest.approx(math.log(1 / precision), rel=1e-12)


@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
def test_p_mean_variance_with_perfect_prediction_is_the_posterior(mean_type):
    p = GaussianDiffusion(linear_schedule(100), model_mean_type=mean_type)
    g = gen(1)
    x0, eps = (
        torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64),
        torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64),
    )
    t = torch.tensor([1, 5, 50, 99])
    x_t = p.q_sample(x0, t, eps)
    out = {"eps": eps, "x0": x0, "v": p.v_from_x0_eps(x0, t, eps)}[mean_type]
    step = p.p_mean_variance(out, x_t, t)
    torch.testing.assert_close(step.pred_x0, x0)
    torch.testing.assert_close(step.pred_eps, eps)
    torch.testing.assert_close(step.mean, p.q_posterior_mean_variance(x0, x_t, t)[0])
    assert torch.broadcast_shapes(step.variance.shape, x_t.shape) == x_t.shape


def test_clipping_clamps_x0_and_rederives_eps():
    p = GaussianDiffusion(linear_schedule(100), model_mean_type="x0")
    x_t = torch.randn(3, 4, dtype=torch.float64, generator=gen())
    t = torch.tensor([3, 40, 80])
    step = p.p_mean_variance(
        torch.full((3, 4), 2.5, dtype=torch.float64), x_t, t, clip_denoised=True, clip_range=(-2.0, 2.0)
    )
    assert torch.equal(step.pred_x0, torch.full((3, 4), 2.0, dtype=torch.float64))
    torch.testing.assert_close(p.x0_from_eps(x_t, t, step.pred_eps), step.pred_x0)


def test_variance_types():
    s = SMALL
    x = torch.zeros(3, 2, dtype=torch.float64)
    t = torch.tensor([0, 1, 2])
    small = GaussianDiffusion(s).p_mean_variance(torch.zeros(3, 2, dtype=torch.float64), x, t)
    torch.testing.assert_close(small.log_variance[:, 0], s.posterior_log_variance_clipped)
    large = GaussianDiffusion(s, model_var_type="fixed_large").p_mean_variance(torch.zeros_like(x), x, t)
    # β_t, except t = 0 takes β̃_1: the last step is not noisier than the posterior there
    torch.testing.assert_close(large.variance[:, 0], torch.stack([s.posterior_variance[1], s.betas[1], s.betas[2]]))
    learned = GaussianDiffusion(s, model_var_type="learned_range", loss_type="hybrid")
    for v, frac in ((-1.0, 0.0), (1.0, 1.0), (0.0, 0.5), (0.3, 0.65)):
        out = torch.cat([torch.zeros(3, 2), torch.full((3, 2), v)], 1).double()
        lv = learned.p_mean_variance(out, x, t).log_variance[:, 0]
        hand = [
            frac * math.log(s.betas[i].item()) + (1 - frac) * math.log(s.posterior_variance[max(i, 1)].item())
            for i in range(3)
        ]
        torch.testing.assert_close(lv, torch.tensor(hand, dtype=torch.float64))


def test_options_are_validated():
    with pytest.raises(ValueError, match="model_mean_type"):
        GaussianDiffusion(SMALL, model_mean_type="score")
    with pytest.raises(ValueError, match="hybrid"):
        GaussianDiffusion(SMALL, model_var_type="learned_range")  # mse would never train the variance
    with pytest.raises(ValueError, match="hybrid"):
        GaussianDiffusion(SMALL, loss_type="hybrid")
    p = GaussianDiffusion(SMALL, model_var_type="learned_range", loss_type="hybrid")
    with pytest.raises(ValueError, match="2C"):
        p.p_mean_variance(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1]))


# ---- losses -------------------------------------------------------------------------------------------------------


def test_normal_kl_matches_torch_distributions():
    g = gen(2)
    m1, m2, lv1, lv2 = (torch.randn(50, generator=g, dtype=torch.float64) for _ in range(4))
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp())
    )
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), ref)


def test_gaussian_log_likelihood_matches_torch_distributions():
    g = gen(3)
    x, m, ls = (torch.randn(50, generator=g, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(gaussian_log_likelihood(x, m, ls), torch.distributions.Normal(m, ls.exp()).log_prob(x))


def test_approx_cdf_is_close_to_phi():
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    assert (approx_standard_normal_cdf(x) - torch.special.ndtr(x)).abs().max() < 3e-4


def test_discretized_likelihood_is_a_distribution_over_256_levels():
    levels = torch.linspace(-1, 1, 256, dtype=torch.float64)
    for mean, log_scale in ((0.3, -2.0), (-0.99, -4.0), (1.5, 0.0)):
        logp = discretized_gaussian_log_likelihood(
            levels, torch.full_like(levels, mean), torch.full_like(levels, log_scale)
        )
        assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
    # a middle level: the mass of its bin [x − 1/255, x + 1/255]
    x, m, ls = 0.2, 0.25, math.log(0.1)
    cdf = lambda z: 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))  # noqa: E731
    hand = math.log(cdf((x - m + 1 / 255) / 0.1) - cdf((x - m - 1 / 255) / 0.1))
    got = discretized_gaussian_log_likelihood(
        torch.tensor([x], dtype=torch.float64),
        torch.tensor([m], dtype=torch.float64),
        torch.tensor([ls], dtype=torch.float64),
    )
    assert got.item() == pytest.approx(hand, rel=1e-10)


def test_hybrid_loss_vb_term_by_hand():
    """learned_range + hybrid on the 3-step schedule with a fixed 'network' output: vb (bits/dim) and the total."""
    p = GaussianDiffusion(SMALL, model_mean_type="eps", model_var_type="learned_range", loss_type="hybrid")
    levels = torch.linspace(-1, 1, 256, dtype=torch.float64)
    x0 = levels[torch.tensor([[0, 100], [170, 255]])]  # (B=2, D=2): two of them extreme levels
    noise = torch.tensor([[0.5, -1.0], [0.3, 0.2]], dtype=torch.float64)
    eps_hat = torch.tensor([[0.4, -0.8], [0.1, 0.0]], dtype=torch.float64)
    v_hat = torch.tensor([[0.2, -0.6], [0.9, -0.1]], dtype=torch.float64)
    model = lambda x, t: torch.cat([eps_hat, v_hat], 1)  # noqa: E731
    ac, betas, post_var = [0.9, 0.72, 0.504], [0.1, 0.2, 0.3], [0.0, 0.2 * 0.1 / 0.28, 0.3 * 0.28 / 0.496]
    cdf = lambda z: 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))  # noqa: E731

    def hand(b, t):
        terms = []
        for d in range(2):
            x, n, e, v = x0[b, d].item(), noise[b, d].item(), eps_hat[b, d].item(), v_hat[b, d].item()
            x_t = math.sqrt(ac[t]) * x + math.sqrt(1 - ac[t]) * n
            acp = ac[t - 1] if t else 1.0
            c1, c2 = betas[t] * math.sqrt(acp) / (1 - ac[t]), (1 - acp) * math.sqrt(1 - betas[t]) / (1 - ac[t])
            x0_hat = (x_t - math.sqrt(1 - ac[t]) * e) / math.sqrt(ac[t])
            mu_p = c1 * x0_hat + c2 * x_t
            frac = (v + 1) / 2
            lv_p = frac * math.log(betas[t]) + (1 - frac) * math.log(post_var[max(t, 1)])
            if t == 0:
                s = math.exp(0.5 * lv_p)
                if x < -0.99:
                    pr = cdf((x - mu_p + 1 / 255) / s)
                elif x > 0.99:
                    pr = 1 - cdf((x - mu_p - 1 / 255) / s)
                else:
                    pr = cdf((x - mu_p + 1 / 255) / s) - cdf((x - mu_p - 1 / 255) / s)
                terms.append(-math.log(pr))
            else:
                mu_q, lv_q = c1 * x + c2 * x_t, math.log(post_var[t])
                terms.append(0.5 * (lv_p - lv_q + math.exp(lv_q - lv_p) + (mu_q - mu_p) ** 2 / math.exp(lv_p) - 1))
        return sum(terms) / 2 / math.log(2)  # mean over dims, nats -> bits

    for t_pair in ([2, 1], [0, 0], [1, 0]):
        t = torch.tensor(t_pair)
        out = p.training_losses(model, x0, t, noise=noise)
        vb_hand = [hand(b, t_pair[b]) for b in range(2)]
        torch.testing.assert_close(out["vb"], torch.tensor(vb_hand, dtype=torch.float64), rtol=1e-9, atol=1e-12)
        mse = ((eps_hat - noise) ** 2).mean(1)
        torch.testing.assert_close(out["mse"], mse)
        torch.testing.assert_close(out["loss"], mse + 0.001 * 3 * out["vb"])


def test_vb_gradient_is_stopped_through_the_mean():
    p = GaussianDiffusion(linear_schedule(100), model_var_type="learned_range", loss_type="hybrid")
    x0 = torch.rand(4, 3, generator=gen()) * 2 - 1
    raw = torch.zeros(4, 6, requires_grad=True)
    out = p.training_losses(lambda x, t: raw * 1.0 + 0.1, x0, torch.tensor([0, 30, 60, 99]), generator=gen(1))
    (grad,) = torch.autograd.grad(out["vb"].sum(), raw)
    assert torch.equal(grad[:, :3], torch.zeros(4, 3)) and grad[:, 3:].abs().sum() > 0


@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
def test_training_losses_targets_and_timesteps(mean_type):
    """mse is against ε / x_0 / v; the network sees original timesteps of a respaced process; works on (B, D)."""
    p = GaussianDiffusion(cosine_schedule(100), model_mean_type=mean_type, decoder_nll="gaussian").respaced(10)
    x0, noise = (
        torch.randn(3, 5, generator=gen(), dtype=torch.float64),
        torch.randn(3, 5, generator=gen(1), dtype=torch.float64),
    )
    t = torch.tensor([0, 4, 9])
    seen = {}

    def oracle(x_t, ts):
        seen["t"] = ts
        return {"eps": noise, "x0": x0, "v": p.v_from_x0_eps(x0, t, noise)}[mean_type]

    out = p.training_losses(oracle, x0, t, noise=noise)
    assert seen["t"].tolist() == [0, 44, 99]
    assert out["mse"].abs().max().item() < 1e-20 and torch.equal(out["loss"], out["mse"])
    assert set(out) == {"loss", "mse", "vb"} and out["vb"].shape == (3,) and not out["vb"].requires_grad


@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
def test_min_snr_weighting_weighs_the_implied_x0_error_by_min_snr_gamma(mean_type):
    """Min-SNR-γ: whatever the target, the loss is min(SNR_t, γ) · ‖x̂_0 − x_0‖² for a prediction whose implied x_0
    is off by δ. On the 3-step schedule SNR = ᾱ/(1 − ᾱ) = 9, 2.571.., 1.016.., so γ = 5 caps only t = 0."""
    gamma = 5.0
    p = GaussianDiffusion(SMALL, model_mean_type=mean_type, snr_gamma=gamma, decoder_nll="gaussian")
    x0 = torch.randn(3, 4, generator=gen(), dtype=torch.float64)
    noise = torch.randn(3, 4, generator=gen(1), dtype=torch.float64)
    delta = torch.randn(3, 4, generator=gen(2), dtype=torch.float64) * 0.1
    t = torch.tensor([0, 1, 2])
    x_t = p.q_sample(x0, t, noise)
    x0_hat = x0 + delta
    eps_hat = p.eps_from_x0(x_t, t, x0_hat)
    pred = {"eps": eps_hat, "x0": x0_hat, "v": p.v_from_x0_eps(x0_hat, t, eps_hat)}[mean_type]
    out = p.training_losses(lambda x, ts: pred, x0, t, noise=noise)
    snr = [0.9 / 0.1, 0.72 / 0.28, 0.504 / 0.496]
    want = torch.tensor([min(s, gamma) for s in snr], dtype=torch.float64) * (delta**2).mean(1)
    torch.testing.assert_close(out["loss"], want, rtol=1e-9, atol=1e-15)
    # 'mse' stays the target's own (unweighted) error: ε's is SNR · δ², v's (SNR + 1) · δ², x_0's δ²
    scale = {"eps": snr, "x0": [1.0] * 3, "v": [s + 1 for s in snr]}[mean_type]
    torch.testing.assert_close(out["mse"], torch.tensor(scale, dtype=torch.float64) * (delta**2).mean(1))
    assert p.respaced([0, 2]).snr_gamma == gamma


def test_min_snr_weighting_with_hybrid_loss_and_its_limits():
    """The VLB term of 'hybrid' is not reweighted; ε with γ ≥ every SNR is plain L_simple; γ must be > 0."""
    p = GaussianDiffusion(SMALL, model_var_type="learned_range", loss_type="hybrid", snr_gamma=2.0)
    plain = GaussianDiffusion(SMALL, model_var_type="learned_range", loss_type="hybrid")
    x0 = torch.rand(2, 3, generator=gen(), dtype=torch.float64) * 2 - 1
    out_fn = lambda x, t: torch.cat([x * 0.3, torch.full_like(x, 0.2)], 1)  # noqa: E731
    t = torch.tensor([0, 2])
    a, b = (q.training_losses(out_fn, x0, t, generator=gen(3)) for q in (p, plain))
    torch.testing.assert_close(a["vb"], b["vb"])
    w = torch.tensor([2.0 / 9.0, 1.0], dtype=torch.float64)  # ε weights min(SNR, 2) / SNR at SNR 9 and 1.016
    torch.testing.assert_close(a["loss"], w * b["mse"] + 0.001 * 3 * b["vb"])
    big = GaussianDiffusion(SMALL, snr_gamma=100.0)
    torch.testing.assert_close(big.mse_weights(torch.tensor([0, 1, 2])), torch.ones(3, dtype=torch.float64))
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="snr_gamma"):
            GaussianDiffusion(SMALL, snr_gamma=bad)
