"""Parity with Hugging Face diffusers' DDPMScheduler / DDIMScheduler step on random inputs, and the adapter.

diffusers keeps its tables in float32, where 1 − ᾱ_t/ᾱ_{t−1} at small t loses most of its digits; the step
parity tests therefore hand the scheduler our float64 ᾱ table and float64 inputs, so that they compare the
formulas (to ~1e-12) rather than float32 rounding. The float32 tables themselves are compared separately."""

import sys

import pytest
import torch

from zoo.diffusion.process import GaussianDiffusion
from zoo.diffusion.samplers import ddim_step, ddpm_step
from zoo.diffusion.schedules import cosine_schedule, linear_schedule

diffusers = pytest.importorskip("diffusers")

PRED = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("var_type", ["fixed_small", "fixed_large", "learned_range"])
@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
def test_ddpm_step_matches_ddpm_scheduler(mean_type, var_type):
    base = cosine_schedule(1000)
    learned = var_type == "learned_range"
    p = GaussianDiffusion(base, mean_type, var_type, "hybrid" if learned else "mse")
    sched = diffusers.DDPMScheduler(
        num_train_timesteps=1000,
        trained_betas=base.betas.tolist(),
        prediction_type=PRED[mean_type],
        variance_type=var_type,
        clip_sample=False,
    )
    sched.set_timesteps(1000)
    sched.alphas_cumprod, sched.one = base.alphas_cumprod, torch.tensor(1.0, dtype=torch.float64)
    g = gen()
    for t in (1, 7, 250, 600, 980):  # t = 0 adds no noise and both agree trivially; diffusers' log β̃_0 is −46
        x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
        out = torch.randn(2, 6 if learned else 3, 4, 4, generator=g, dtype=torch.float64)
        if learned:
            out[:, 3:] = torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1  # v in [−1, 1]
        ref = sched.step(out, t, x, generator=gen(t)).prev_sample  # draws randn(x.shape) from the generator
        noise = torch.randn(x.shape, generator=gen(t), dtype=torch.float64)
        ours, _ = ddpm_step(p, out, x, torch.full((2,), t), noise)
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
def test_ddim_step_matches_ddim_scheduler(mean_type, eta):
    base = linear_schedule(1000)
    # diffusers' 'leading' spacing with 50 steps = our 'ddim50' (0, 20, ..., 980); set_alpha_to_one = ᾱ_{−1} = 1
    p = GaussianDiffusion(base, mean_type).respaced("ddim50")
    sched = diffusers.DDIMScheduler(
        num_train_timesteps=1000,
        trained_betas=base.betas.tolist(),
        prediction_type=PRED[mean_type],
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="leading",
    )
    sched.set_timesteps(50)
    assert sched.timesteps.tolist() == p.schedule.timestep_map.flip(0).tolist()
    sched.alphas_cumprod, sched.final_alpha_cumprod = base.alphas_cumprod, torch.tensor(1.0, dtype=torch.float64)
    g = gen(1)
    for i in (0, 1, 17, 49):
        x, out, noise = (torch.randn(3, 2, 5, generator=g, dtype=torch.float64) for _ in range(3))
        ts = int(p.schedule.timestep_map[i])
        ref = sched.step(out, ts, x, eta=eta, variance_noise=noise if eta > 0 else None).prev_sample
        ours, _ = ddim_step(p, out, x, torch.full((3,), i), eta=eta, noise=noise)
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def test_posterior_matches_ddpm_scheduler_tables():
    base = linear_schedule(1000)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, trained_betas=base.betas.tolist())
    torch.testing.assert_close(base.alphas_cumprod.float(), sched.alphas_cumprod, rtol=1e-5, atol=1e-7)
    t = torch.arange(1, 1000, 37)
    ref_var = torch.stack([sched._get_variance(int(i)) for i in t])
    torch.testing.assert_close(base.posterior_variance[t].float(), ref_var, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("name", ["DPMSolverMultistepScheduler", "euler", "unipc"])
def test_adapter_samples_the_data_distribution(name, gaussian_eps):
    from zoo.diffusion.diffusers_adapter import diffusers_sample, make_scheduler

    base = cosine_schedule(1000)
    p = GaussianDiffusion(base, "eps", "learned_range", "hybrid")
    fn = gaussian_eps(base.alphas_cumprod)
    seen = []

    def two_c(x, t):  # learned-range output: the adapter must pass on only the mean half
        seen.append(t)
        return torch.cat([fn(x, t), torch.zeros_like(x)], 1)

    x = diffusers_sample(p, two_c, (4000, 2), scheduler=name, steps=15, generator=gen())
    assert len(seen) == 15 and seen[0].dtype == torch.long and seen[0][0].item() == 999
    assert abs(x.mean().item() - 0.3) < 0.03 and abs(x.std().item() - 0.5) < 0.05
    assert make_scheduler(p, name).config.prediction_type == "epsilon"


def test_adapter_on_a_respaced_process_maps_to_original_timesteps(gaussian_eps):
    from zoo.diffusion.diffusers_adapter import diffusers_sample

    base = linear_schedule(1000)
    p = GaussianDiffusion(base, "eps").respaced(100)
    fn = gaussian_eps(base.alphas_cumprod)
    seen = []
    # (10 steps on the linear schedule undershoot the std, ~0.41: too few steps at low noise, not a bug)
    x = diffusers_sample(
        p, lambda x, t: seen.append(int(t[0])) or fn(x, t), (2000, 2), scheduler="dpm++", steps=20, generator=gen()
    )
    assert set(seen) <= set(p.schedule.timestep_map.tolist()) and seen[0] == 999
    assert abs(x.mean().item() - 0.3) < 0.04 and abs(x.std().item() - 0.5) < 0.06


def test_adapter_error_names_the_install(monkeypatch):
    from zoo.diffusion.diffusers_adapter import make_scheduler

    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    with pytest.raises(ImportError, match="pip install diffusers"):
        make_scheduler(GaussianDiffusion(linear_schedule(1000)), "euler")


def test_adapter_rejects_unknown_names():
    from zoo.diffusion.diffusers_adapter import make_scheduler

    with pytest.raises(ValueError, match="not a diffusers scheduler"):
        make_scheduler(GaussianDiffusion(linear_schedule(1000)), "NoSuchScheduler")
