"""Noise schedules: closed forms, the posterior tables, respacing (improved-diffusion's formulas)."""

import math

import pytest
import torch

from zoo.diffusion.schedules import (
    NoiseSchedule,
    cosine_schedule,
    get_schedule,
    linear_betas,
    linear_schedule,
    respace,
    space_timesteps,
)


def f_cos(u: float, s: float = 0.008) -> float:
    return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2


def test_linear_schedule_closed_form():
    s = linear_schedule(1000)
    assert s.betas.dtype == torch.float64 and s.num_timesteps == 1000
    assert s.betas[0].item() == pytest.approx(1e-4, rel=1e-12) and s.betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    b1 = 1e-4 + (0.02 - 1e-4) / 999
    assert s.alphas_cumprod[0].item() == pytest.approx(1 - 1e-4, rel=1e-14)
    assert s.alphas_cumprod[1].item() == pytest.approx((1 - 1e-4) * (1 - b1), rel=1e-14)
    prod = 1.0
    for i in range(1000):  # the product by hand
        prod *= 1 - (1e-4 + (0.02 - 1e-4) * i / 999)
    assert s.alphas_cumprod[-1].item() == pytest.approx(prod, rel=1e-10)
    assert s.alphas_cumprod[-1].item() == pytest.approx(4.0358297653756754e-05, rel=1e-9)
    # T = 100: both ends scaled by 1000 / T
    b = linear_betas(100)
    assert b[0].item() == pytest.approx(1e-3) and b[-1].item() == pytest.approx(0.2)


def test_cosine_schedule_closed_form():
    s = cosine_schedule(1000)
    ac = s.alphas_cumprod
    # ᾱ at index i is f((i+1)/T)/f(0) wherever β was not clipped (all but the last step)
    assert bool((s.betas[:-1] < 0.999).all()) and s.betas[-1].item() == 0.999
    for i in (0, 1, 249, 499, 750, 998):
        assert ac[i].item() == pytest.approx(f_cos((i + 1) / 1000) / f_cos(0.0), rel=1e-11), i
    assert ac[499].item() == pytest.approx(0.49384359044063775, rel=1e-11)
    assert ac[-1].item() == pytest.approx(ac[-2].item() * (1 - 0.999), rel=1e-12)


def test_from_alphas_cumprod_matches_from_betas():
    s = cosine_schedule(200)
    r = NoiseSchedule.from_alphas_cumprod(s.alphas_cumprod)
    torch.testing.assert_close(r.betas, s.betas, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(r.posterior_variance, s.posterior_variance, rtol=1e-9, atol=1e-14)


def test_posterior_tables_small_case():
    s = NoiseSchedule.from_betas([0.1, 0.2, 0.3])
    # ᾱ = 0.9, 0.72, 0.504; ᾱ_prev = 1, 0.9, 0.72
    torch.testing.assert_close(s.alphas_cumprod, torch.tensor([0.9, 0.72, 0.504], dtype=torch.float64))
    torch.testing.assert_close(s.alphas_cumprod_prev, torch.tensor([1.0, 0.9, 0.72], dtype=torch.float64))
    var1, var2 = 0.2 * 0.1 / 0.28, 0.3 * 0.28 / 0.496  # β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)
    torch.testing.assert_close(s.posterior_variance, torch.tensor([0.0, var1, var2], dtype=torch.float64))
    torch.testing.assert_close(
        s.posterior_log_variance_clipped,
        torch.tensor([math.log(var1), math.log(var1), math.log(var2)], dtype=torch.float64),
    )
    torch.testing.assert_close(
        s.posterior_mean_coef1,
        torch.tensor(
            [0.1 * 1.0 / 0.1, 0.2 * math.sqrt(0.9) / 0.28, 0.3 * math.sqrt(0.72) / 0.496], dtype=torch.float64
        ),
    )
    torch.testing.assert_close(
        s.posterior_mean_coef2,
        torch.tensor([0.0, 0.1 * math.sqrt(0.8) / 0.28, 0.28 * math.sqrt(0.7) / 0.496], dtype=torch.float64),
    )


def test_respace_1000_to_50_is_the_published_formula():
    base = linear_schedule(1000)
    kept = space_timesteps(1000, 50)
    assert kept == [round(i * 999 / 49) for i in range(50)] and kept[0] == 0 and kept[-1] == 999
    r = respace(base, 50)
    assert r.num_timesteps == 50 and r.timestep_map.tolist() == kept and r.is_respaced and not base.is_respaced
    ac = base.alphas_cumprod
    torch.testing.assert_close(r.alphas_cumprod, ac[kept], rtol=0, atol=0)
    for i in range(50):
        prev = ac[kept[i - 1]].item() if i else 1.0
        assert r.betas[i].item() == pytest.approx(1 - ac[kept[i]].item() / prev, rel=1e-12)
    # the posterior is re-derived from the respaced β (what learned-range variances interpolate)
    i = 10
    expect = r.betas[i] * (1 - ac[kept[i - 1]]) / (1 - ac[kept[i]])
    assert r.posterior_variance[i].item() == pytest.approx(expect.item(), rel=1e-12)


def test_space_timesteps_forms():
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(1000, "50") == space_timesteps(1000, 50)
    assert space_timesteps(10, [7, 3, 3, 0]) == [0, 3, 7]
    assert space_timesteps(1000, 1) == [999]
    assert space_timesteps(5, 5) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        space_timesteps(1000, "ddim999")  # no integer stride gives 999 steps
    with pytest.raises(ValueError):
        space_timesteps(10, 11)
    with pytest.raises(ValueError):
        space_timesteps(10, [3, 10])


def test_respacing_composes_to_original_timesteps():
    base = cosine_schedule(1000)
    twice = respace(respace(base, "ddim100"), [0, 5, 99])
    assert twice.timestep_map.tolist() == [0, 50, 990]
    torch.testing.assert_close(twice.alphas_cumprod, base.alphas_cumprod[[0, 50, 990]], rtol=0, atol=0)


def test_get_schedule():
    assert torch.equal(get_schedule("cosine", 10).betas, cosine_schedule(10).betas)
    with pytest.raises(ValueError, match="linear"):
        get_schedule("sigmoid")


def test_bad_schedule_settings_are_config_errors_naming_the_key():
    """A misspelt schedule or a step count below 1 fails while the model is built, naming the key and its fix (0
    steps failed deep inside with "betas must be a non-empty 1-D sequence")."""
    from zoo.errors import ConfigError
    from zoo.models.diffusion_prior.lit import DiffusionPriorLit
    from zoo.models.glide.lit import GlideLit

    with pytest.raises(ConfigError, match=r"model\.schedule='cosin'.*fix: model\.schedule=cosine"):
        get_schedule("cosin")
    for bad in (0, -5, 2.5):
        with pytest.raises(
            ConfigError,
            match=r"model\.num_timesteps=.* must be a whole number >= 1: .*\(fix: model\.num_timesteps=1000\)",
        ):
            get_schedule("linear", bad)
    with pytest.raises(ConfigError, match=r"model\.num_timesteps"):
        GlideLit(preset="tiny", num_timesteps=0)
    with pytest.raises(ConfigError, match=r"model\.timesteps"):  # the prior's own key name
        DiffusionPriorLit(preset="tiny", timesteps=0)


def test_linear_schedule_with_too_few_timesteps_is_a_config_error_and_a_beta_of_one_is_refused():
    """The linear schedule's last β is 0.02 · 1000/T: at T = 20 it is 1 (ᾱ = 0, so x̂_0 = x_t / √ᾱ is infinite and
    every sample was NaN), below 20 it exceeds 1 (a bare "betas must lie in (0, 1]" naming no key). Both are a
    ConfigError naming the keys when the model is built; T = 21 works."""
    from zoo.errors import ConfigError

    for bad in (1, 10, 20):
        with pytest.raises(ConfigError, match=r"model\.schedule=linear needs model\.num_timesteps >= 21.*fix:"):
            get_schedule("linear", bad)
    assert bool((get_schedule("linear", 21).alphas_cumprod > 0).all())
    assert get_schedule("cosine", 1).num_timesteps == 1  # cosine clips β at 0.999: any T works
    with pytest.raises(ValueError, match=r"betas must lie in \(0, 1\)"):
        NoiseSchedule.from_betas([0.5, 1.0])
