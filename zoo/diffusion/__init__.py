"""Torch-only Gaussian diffusion core: schedules, the process (losses, reverse step), samplers.

Takes tensors and callables, never owns weights. ``diffusers_adapter`` (optional diffusers schedulers) is not
imported here: import it explicitly.
"""

from zoo.diffusion.process import GaussianDiffusion, ReverseStep, mean_flat
from zoo.diffusion.samplers import ddim_invert, ddim_sample, ddpm_sample, known_region
from zoo.diffusion.schedules import (
    NoiseSchedule,
    cosine_schedule,
    get_schedule,
    linear_schedule,
    respace,
    space_timesteps,
)

__all__ = [
    "GaussianDiffusion",
    "NoiseSchedule",
    "ReverseStep",
    "cosine_schedule",
    "ddim_invert",
    "ddim_sample",
    "ddpm_sample",
    "get_schedule",
    "known_region",
    "linear_schedule",
    "mean_flat",
    "respace",
    "space_timesteps",
]
