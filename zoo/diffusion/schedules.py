"""Noise schedules of the Gaussian diffusion process (torch only, float64).

Conventions (those of improved-diffusion, which GLIDE and unCLIP build on):

* Timesteps are 0-based: index ``t`` in ``0 .. T-1`` is the paper's step ``t + 1``. ``alphas_cumprod[t]`` is
  ``ᾱ_{t+1}``, the signal level of the *input* the network sees at index ``t``; ``alphas_cumprod_prev[t]`` is the
  level after denoising that step (1 for ``t = 0``: clean data).
* Everything is a float64 CPU tensor: products of 1000 factors and ``1 - ᾱ`` near ``ᾱ ≈ 1`` lose digits in float32.
  ``GaussianDiffusion`` casts the tables to the sample's dtype and device once.
* A respaced schedule keeps ``timestep_map``: ``timestep_map[i]`` is the original timestep of index ``i``, which is
  what the network is given (it was trained on the original ``t``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence, Union

import torch

Steps = Union[int, str, Sequence[int]]


def _on_cpu(fn):
    """Schedule tables are CPU float64 data (``GaussianDiffusion`` copies them to each device it runs on), also when
    a module is built under ``with torch.device("meta")`` (counting a paper preset's parameters, or zoo-train's
    memory check): there every factory call would make a meta tensor and the checks below (``.all()``) fail."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.device("cpu"):
            return fn(*args, **kwargs)

    return wrapper


@dataclass(frozen=True)
class NoiseSchedule:
    """The tables of one (possibly respaced) schedule; all (T,) float64 except ``timestep_map`` (T,) int64.

    ``posterior_*`` describe q(x_{t-1} | x_t, x_0) = N(coef1 · x_0 + coef2 · x_t, posterior_variance).
    ``posterior_log_variance_clipped`` replaces the 0 variance at t = 0 by the one at t = 1 (so its log is finite);
    it is the lower end of the learned-range interpolation and the 'fixed_small' log variance.
    """

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor  # multiplies x_0
    posterior_mean_coef2: torch.Tensor  # multiplies x_t
    timestep_map: torch.Tensor

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    @property
    def is_respaced(self) -> bool:
        return not torch.equal(self.timestep_map, torch.arange(self.num_timesteps))

    @classmethod
    @_on_cpu
    def from_betas(cls, betas, timestep_map=None) -> "NoiseSchedule":
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        return cls._build(betas, torch.cumprod(1.0 - betas, 0), timestep_map)

    @classmethod
    @_on_cpu
    def from_alphas_cumprod(cls, alphas_cumprod, timestep_map=None) -> "NoiseSchedule":
        """β_t = 1 − ᾱ_t / ᾱ_{t−1} (ᾱ_{−1} = 1); ᾱ is kept exactly as given (not re-multiplied from β)."""
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        prev = torch.cat([ac.new_ones(1), ac[:-1]])
        return cls._build(1.0 - ac / prev, ac, timestep_map)

    @classmethod
    def _build(cls, betas: torch.Tensor, ac: torch.Tensor, timestep_map) -> "NoiseSchedule":
        if betas.dim() != 1 or betas.numel() < 1:
            raise ValueError("betas must be a non-empty 1-D sequence")
        if not bool(((betas > 0) & (betas < 1)).all()):
            # β = 1 leaves no signal (ᾱ = 0): x̂_0 = x_t / √ᾱ is infinite and every sample is NaN
            raise ValueError("betas must lie in (0, 1)")
        n = betas.shape[0]
        tmap = torch.arange(n) if timestep_map is None else torch.as_tensor(timestep_map, dtype=torch.int64).flatten()
        if tmap.shape[0] != n:
            raise ValueError(f"timestep_map has {tmap.shape[0]} entries for {n} betas")
        prev = torch.cat([ac.new_ones(1), ac[:-1]])
        alphas = 1.0 - betas
        post_var = betas * (1.0 - prev) / (1.0 - ac)
        # index 0 has variance 0 (x_0 is determined); borrow index 1's so the log is finite. A 1-step schedule has no
        # index 1: use β_0, the only finite choice.
        post_log_var = torch.log(torch.cat([post_var[1:2] if n > 1 else betas[:1], post_var[1:]]))
        return cls(
            betas=betas,
            alphas_cumprod=ac,
            alphas_cumprod_prev=prev,
            posterior_variance=post_var,
            posterior_log_variance_clipped=post_log_var,
            posterior_mean_coef1=betas * torch.sqrt(prev) / (1.0 - ac),
            posterior_mean_coef2=(1.0 - prev) * torch.sqrt(alphas) / (1.0 - ac),
            timestep_map=tmap,
        )


# The fewest timesteps of the linear schedule: its β_T = 0.02 · 1000/T is < 1 only for T > 20.
LINEAR_MIN_TIMESTEPS = 21


@_on_cpu
def linear_betas(num_timesteps: int = 1000) -> torch.Tensor:
    """DDPM's β from 1e-4 to 0.02, both ends scaled by 1000/T so any T gives about the same ᾱ_T. (T,) float64."""
    scale = 1000.0 / num_timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)


def cosine_alpha_bar(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """f(t)/f(0) for t in [0, 1] (continuous time), f(t) = cos²(((t + s)/(1 + s)) · π/2)."""
    f = lambda u: torch.cos((u + s) / (1 + s) * (math.pi / 2)) ** 2  # noqa: E731
    return f(t) / f(torch.zeros_like(t))


@_on_cpu
def cosine_betas(num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal: β_t = 1 − ᾱ(t+1)/ᾱ(t) on the grid t/T, clipped at ``max_beta`` (the last steps, where
    ᾱ → 0, would otherwise give β ≈ 1 and a singular final step). Unclipped, cumprod(1 − β)[t] = ᾱ((t+1)/T)."""
    grid = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    ab = cosine_alpha_bar(grid, s)
    return (1.0 - ab[1:] / ab[:-1]).clamp(max=max_beta)


def linear_schedule(num_timesteps: int = 1000) -> NoiseSchedule:
    return NoiseSchedule.from_betas(linear_betas(num_timesteps))


def cosine_schedule(num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
    return NoiseSchedule.from_betas(cosine_betas(num_timesteps, s, max_beta))


def get_schedule(
    name: str, num_timesteps: int = 1000, keys: tuple[str, str] = ("model.schedule", "model.num_timesteps")
) -> NoiseSchedule:
    """By name, for configs: 'linear' or 'cosine'. A bad name or step count is a ``ConfigError`` naming the config
    keys (``keys``: the schedule's and the step count's), raised while the model is built, before any data loads."""
    from zoo.errors import ConfigError, check_whole

    makers = {"linear": linear_schedule, "cosine": cosine_schedule}
    if name not in makers:
        raise ConfigError(
            f"{keys[0]}={name!r} is not a noise schedule: choose one of {', '.join(sorted(makers))} "
            f"(fix: {keys[0]}=cosine)"
        )
    check_whole(keys[1], num_timesteps, 1, 1000, why="the diffusion's number of timesteps")
    if name == "linear" and num_timesteps < LINEAR_MIN_TIMESTEPS:
        raise ConfigError(
            f"{keys[0]}=linear needs {keys[1]} >= {LINEAR_MIN_TIMESTEPS}, got {num_timesteps}: its last β is "
            f"0.02 · 1000/T, which reaches 1 at T = 20 (no signal left, NaN samples) "
            f"(fix: {keys[1]}=1000, or {keys[0]}=cosine for few timesteps)"
        )
    return makers[name](num_timesteps)


def space_timesteps(num_timesteps: int, steps: Steps) -> list[int]:
    """The kept original timesteps, sorted ascending.

    ``steps``: an int N (or its string) -> N evenly spaced indices from 0 to T−1 inclusive, rounded
    (improved-diffusion's one-section ``space_timesteps``); 'ddimN' -> the integer stride with ``range(0, T, stride)`` of exactly N items
    (DDIM's spacing; error if none exists); a sequence -> those timesteps.
    """
    if isinstance(steps, str):
        if steps.startswith("ddim"):
            n = int(steps[len("ddim") :])
            for stride in range(1, num_timesteps + 1):
                if len(range(0, num_timesteps, stride)) == n:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(f"no integer stride gives exactly {n} of {num_timesteps} steps")
        steps = int(steps)
    if isinstance(steps, int):
        if not 1 <= steps <= num_timesteps:
            raise ValueError(f"cannot take {steps} steps out of {num_timesteps}")
        if steps == 1:
            return [num_timesteps - 1]  # the one step must start from the noisiest level
        stride = (num_timesteps - 1) / (steps - 1)
        return [round(i * stride) for i in range(steps)]
    kept = sorted({int(s) for s in steps})
    if not kept or kept[0] < 0 or kept[-1] >= num_timesteps:
        raise ValueError(f"timesteps must be a non-empty subset of 0..{num_timesteps - 1}")
    return kept


def respace(schedule: NoiseSchedule, steps: Steps) -> NoiseSchedule:
    """The schedule restricted to a subsequence S (see ``space_timesteps``): ᾱ'_i = ᾱ_{S_i},
    β'_i = 1 − ᾱ_{S_i}/ᾱ_{S_{i−1}}; posterior (hence 'fixed_*' and learned-range) variances are re-derived from β'.
    ``timestep_map`` composes, so respacing a respaced schedule still maps to the original timesteps."""
    kept = torch.tensor(space_timesteps(schedule.num_timesteps, steps), dtype=torch.int64)
    return NoiseSchedule.from_alphas_cumprod(schedule.alphas_cumprod[kept], schedule.timestep_map[kept])
