"""Run our ``model_fn`` under a Hugging Face ``diffusers`` scheduler (DPM-Solver++, Euler, UniPC, DDIM, DDPM).

diffusers is optional (a dev dependency): it is imported inside the functions, and a missing install raises an
ImportError that says ``pip install diffusers``. The scheduler is built from *our* schedule — ``trained_betas`` are
the process's betas (float32 inside diffusers) and ``prediction_type`` its mean type — so a network trained with
``GaussianDiffusion`` needs no conversion. A respaced process works too: the scheduler then treats the kept steps as
its training steps and the network still receives original timesteps through ``timestep_map``.

Differences from our samplers: the scheduler picks its own inference timesteps (we default to
``timestep_spacing='trailing'``, which starts at the noisiest step and gives integer timesteps); a learned variance
is dropped (only the mean half of the output is passed); clipping and thresholding are the scheduler's options.
Schedulers that place fractional timesteps (Euler with ``use_karras_sigmas=True``: 435.19, 367.10, ...) step at the
exact sigma, but the network is told the nearest integer step (at most half a training step off): our networks and
the model_fns around them (guidance, CLIP guidance's noise-level tables) are defined on integer timesteps.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Optional, Sequence, Union

import torch

from zoo.diffusion.noise import RowGenerators, randn
from zoo.diffusion.process import GaussianDiffusion

ALIASES = {
    "dpm++": "DPMSolverMultistepScheduler",
    "dpmsolver": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "unipc": "UniPCMultistepScheduler",
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
}
PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


def import_diffusers():
    try:
        import diffusers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "running a diffusers scheduler needs the optional package diffusers: pip install diffusers"
        ) from e
    return diffusers


def scheduler_class(name: str):
    """The diffusers scheduler class of a class name or an alias in ``ALIASES``, or None if there is none."""
    cls = getattr(import_diffusers(), ALIASES.get(str(name), str(name)), None)
    return cls if isinstance(cls, type) and hasattr(cls, "set_timesteps") else None


def make_scheduler(process: GaussianDiffusion, name: str = "DPMSolverMultistepScheduler", **overrides: Any):
    """A diffusers scheduler (class name or alias in ``ALIASES``) configured with the process's betas and
    prediction type; ``overrides`` are passed to its constructor (e.g. ``use_karras_sigmas=True``)."""
    cls = scheduler_class(name)
    if cls is None:
        raise ValueError(f"{name!r} is not a diffusers scheduler (aliases: {sorted(ALIASES)})")
    accepted = inspect.signature(cls.__init__).parameters
    config: dict[str, Any] = {
        "num_train_timesteps": process.num_timesteps,
        "trained_betas": process.schedule.betas.tolist(),
        "prediction_type": PREDICTION_TYPES[process.model_mean_type],
    }
    # our samplers never clip unless asked; DDPM/DDIM schedulers clip by default
    for key, value in (("timestep_spacing", "trailing"), ("clip_sample", False)):
        if key in accepted:
            config[key] = value
    config.update(overrides)
    return cls(**config)


# Schedulers whose steps draw no noise: with them only x_T is random, so candidates can share a batch (RowGenerators).
_DETERMINISTIC = ("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler")


def draws_step_noise(sched) -> bool:
    """Whether ``sched.step`` may draw random noise. False only for the schedulers known to be deterministic (DPM-Solver
    with an ODE ``algorithm_type``, UniPC); Euler draws a noise tensor at every step even when ``s_churn`` = 0 leaves
    it unused, which moves the generator that later stages (an upsampler) would read."""
    if type(sched).__name__ not in _DETERMINISTIC:
        return True
    return str(getattr(sched.config, "algorithm_type", "")).startswith("sde")


def takes_row_generators(process: GaussianDiffusion, scheduler: str) -> bool:
    """Whether ``diffusers_sample`` with this scheduler name takes RowGenerators (no noise drawn in its steps)."""
    try:
        return not draws_step_noise(make_scheduler(process, scheduler))
    except (ImportError, ValueError):  # no diffusers, or not a scheduler: the sampler itself will say so
        return False


@torch.no_grad()
def diffusers_sample(
    process: GaussianDiffusion,
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    shape: Sequence[int],
    *,
    scheduler: Union[str, Any] = "DPMSolverMultistepScheduler",
    steps: int = 25,
    generator: Optional[torch.Generator] = None,
    device=None,
    dtype: torch.dtype = torch.float32,
    x_T: Optional[torch.Tensor] = None,
    scheduler_kwargs: Optional[dict[str, Any]] = None,
    step_kwargs: Optional[dict[str, Any]] = None,
    progress: Optional[Callable[[int, int, torch.Tensor], None]] = None,
) -> torch.Tensor:
    """Sample x_0 of ``shape`` in ``steps`` network calls of a diffusers scheduler (name, alias or instance).

    ``model_fn(x_t, timesteps)`` as for our samplers (original timesteps, (B,) int64; the input is the scheduler's
    ``scale_model_input``, i.e. an ordinary x_t for every scheduler here). ``x_T`` is standard normal noise (it is
    multiplied by the scheduler's ``init_noise_sigma``). ``generator`` draws the initial noise and, for stochastic
    schedulers, their step noise."""
    sched = make_scheduler(process, scheduler, **(scheduler_kwargs or {})) if isinstance(scheduler, str) else scheduler
    rows = isinstance(generator, RowGenerators)
    if rows and draws_step_noise(sched):  # its steps would draw from one generator for every row
        raise ValueError(
            f"{type(sched).__name__} draws noise in its steps, from one torch.Generator, not RowGenerators (batched "
            f"candidates): sample candidates with ddim, ddpm, dpm++ or unipc, or one seed at a time"
        )
    if x_T is None:
        if device is None:
            device = generator.device if generator is not None else "cpu"
        x_T = randn(shape, generator, device=device, dtype=dtype)
    x = x_T.to(device=device or x_T.device, dtype=dtype)
    sched.set_timesteps(steps, device=x.device)
    x = x * sched.init_noise_sigma
    step_args = dict(step_kwargs or {})
    if "generator" in inspect.signature(sched.step).parameters and not rows:
        step_args.setdefault("generator", generator)
    n = len(sched.timesteps)
    for done, ts in enumerate(sched.timesteps, start=1):
        x_in = sched.scale_model_input(x, ts)
        # the scheduler's timesteps index our (possibly respaced) schedule; the network wants original timesteps
        idx = int(round(float(ts)))
        t = torch.full((x.shape[0],), min(max(idx, 0), process.num_timesteps - 1), dtype=torch.long, device=x.device)
        mean_part, _ = process.split_output(model_fn(x_in, process.model_timesteps(t)))
        x = sched.step(mean_part.to(x.dtype), ts, x, return_dict=False, **step_args)[0]
        if progress is not None:
            progress(done, n, x)
    return x
