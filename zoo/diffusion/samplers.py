"""Samplers for a ``GaussianDiffusion``: DDPM ancestral, DDIM(η), DDIM inversion, known-region hook (torch only).

Conventions:

* ``model_fn(x_t, timesteps) -> output`` with ``timesteps`` the *original* timesteps (B,) int64 — the sampler maps
  the process's indices through ``timestep_map``. Conditioning and guidance live in ``model_fn`` (see
  ``zoo.nn.guidance``), not here.
* The number of steps is the process's: sample with ``process.respaced(50)`` for 50 steps.
* Randomness comes only from ``generator`` (initial noise, per-step noise, the known-region noising), so the same
  seed gives the same samples. DDPM draws one noise tensor per step (also at the last step, where it is unused), so
  the stream does not depend on the schedule's content.
* Levels: the step at index i maps x at level ᾱ_i to level ᾱ_{i−1} (``ac_prev``); level "−1" is clean data.
  A hook ``hook(x, i) -> x`` is called on the initial x with i = T−1 and after the step at index i with i − 1.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from zoo.diffusion.noise import randn
from zoo.diffusion.process import GaussianDiffusion

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Hook = Callable[[torch.Tensor, int], torch.Tensor]
Progress = Callable[[int, int, torch.Tensor, torch.Tensor], None]  # (steps done, total, x, pred_x0)


def in_row_slices(n: int, size: int, fn: Callable[[slice], torch.Tensor]) -> torch.Tensor:
    """``fn(rows)`` over consecutive slices of at most ``size`` of ``n`` rows, concatenated; ``fn(slice(0, n))``
    when n <= size. For a sampler's network call on a CPU, where a call too large for the caches costs more per
    image than several smaller ones (``zoo.diffusion.noise.CANDIDATE_BATCH``); the rows are independent, so the
    result is the same."""
    if n <= size:
        return fn(slice(0, n))
    return torch.cat([fn(slice(i, min(i + size, n))) for i in range(0, n, size)])


def _full_t(i: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)


def ddpm_step(
    process: GaussianDiffusion,
    model_output: torch.Tensor,
    x: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    clip_denoised: bool = False,
    clip_range: tuple[float, float] = (-1.0, 1.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ancestral step x_t -> x_{t−1} = mean + σ noise (no noise where t = 0). Returns (x_{t−1}, x̂_0)."""
    out = process.p_mean_variance(model_output, x, t, clip_denoised, clip_range)
    not_last = (t != 0).to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return out.mean + (not_last * torch.exp(0.5 * out.log_variance)) * noise, out.pred_x0


def check_eta(eta, option: str = "eta") -> float:
    """DDIM's η as a float; ValueError (zoo.errors' ConfigError, worded as every option) unless it is a finite number
    >= 0: float() took the string "0.5" and true as 1. (A negative η is not |η|: σ² = η² β̃ shrinks the ε̂ term as
    |η| would while the noise term, added only for η > 0, is dropped -- neither sampler.)"""
    from zoo.errors import check_number

    return float(check_number(option, eta, 0, fix=0, why="the DDIM eta (0: deterministic DDIM, 1: DDPM's variance)"))


def ddim_step(
    process: GaussianDiffusion,
    model_output: torch.Tensor,
    x: torch.Tensor,
    t: torch.Tensor,
    eta: float = 0.0,
    noise: Optional[torch.Tensor] = None,
    clip_denoised: bool = False,
    clip_range: tuple[float, float] = (-1.0, 1.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step: x_{t−1} = √ᾱ_{t−1} x̂_0 + √(1 − ᾱ_{t−1} − σ²) ε̂ + σ noise, σ = η √β̃_t (Song et al. eq. 12/16).

    η = 0 is deterministic (``noise`` unused); η = 1 has DDPM's posterior variance. A learned variance is ignored.
    Returns (x_{t−1}, x̂_0)."""
    eta = check_eta(eta)
    pred_x0, pred_eps = process.predictions(model_output, x, t, clip_denoised, clip_range)
    sigma = eta * process.coef("ddim_sigma1", t, x)
    ac_prev = process.coef("ac_prev", t, x)
    x_prev = process.coef("sqrt_ac_prev", t, x) * pred_x0 + (1.0 - ac_prev - sigma**2).clamp(min=0).sqrt() * pred_eps
    if eta > 0:
        if noise is None:
            raise ValueError("ddim_step with eta > 0 needs noise")
        x_prev = x_prev + sigma * noise  # σ = 0 at t = 0 (ᾱ_{−1} = 1), so no mask is needed
    return x_prev, pred_x0


def ddim_reverse_step(
    process: GaussianDiffusion,
    model_output: torch.Tensor,
    x: torch.Tensor,
    t: torch.Tensor,
    x_eval: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The inverse of the η = 0 DDIM step at index t: x at level ᾱ_{t−1} -> level ᾱ_t, given the output of the
    network evaluated at (``x_eval``, t); ``x_eval`` defaults to x (the true input x_t is unknown; the ODE is smooth,
    so this costs O(step) error). ε̂ is the ε the output implies at its own input ``x_eval`` (for an x_0- or
    v-predicting network the conversion needs that input); x̂_0 is re-derived from x at its own level, which makes
    this step the exact algebraic inverse of ``ddim_step`` when both see the same ε̂."""
    _, eps = process.predictions(model_output, x if x_eval is None else x_eval, t)
    x0 = (x - process.coef("sqrt_1m_ac_prev", t, x) * eps) / process.coef("sqrt_ac_prev", t, x)
    return process.coef("sqrt_ac", t, x) * x0 + process.coef("sqrt_1m_ac", t, x) * eps


def known_region(
    process: GaussianDiffusion, x_known: torch.Tensor, mask: torch.Tensor, generator: Optional[torch.Generator] = None
) -> Hook:
    """A hook re-imposing known values after every step (inpainting by replacement; RePaint without resampling).

    ``mask`` broadcasts against x, 1 where ``x_known`` is given (soft values blend). At level i the known part is a
    fresh q_sample(x_known, i); after the last step (level −1) it is ``x_known`` itself, so the result holds the
    known values exactly."""

    def hook(x: torch.Tensor, i: int) -> torch.Tensor:
        known = x_known.to(x.dtype)
        if i >= 0:
            known = process.q_sample(known, _full_t(i, x), generator=generator)
        return torch.lerp(x, known, mask.to(x.dtype))  # lerp is exact at weights 0 and 1

    return hook


def _start(shape: Sequence[int], x_T: Optional[torch.Tensor], generator, device, dtype) -> torch.Tensor:
    if x_T is not None:
        return x_T.to(device=device or x_T.device, dtype=dtype)
    if device is None:
        device = generator.device if generator is not None else "cpu"
    return randn(shape, generator, device=device, dtype=dtype)


def _hooks(process, known, hook, generator) -> list[Hook]:
    hooks = []
    if known is not None:
        hooks.append(known_region(process, known[0], known[1], generator))
    if hook is not None:
        hooks.append(hook)
    return hooks


def _run(
    process: GaussianDiffusion,
    model_fn: ModelFn,
    x: torch.Tensor,
    step,
    hooks: list[Hook],
    progress: Optional[Progress],
) -> torch.Tensor:
    n = process.num_timesteps
    for h in hooks:
        x = h(x, n - 1)
    for done, i in enumerate(reversed(range(n)), start=1):
        t = _full_t(i, x)
        x, pred_x0 = step(model_fn(x, process.model_timesteps(t)), x, t)
        for h in hooks:
            x = h(x, i - 1)
        if progress is not None:
            progress(done, n, x, pred_x0)
    return x


@torch.no_grad()
def ddpm_sample(
    process: GaussianDiffusion,
    model_fn: ModelFn,
    shape: Sequence[int],
    *,
    generator: Optional[torch.Generator] = None,
    device=None,
    dtype: torch.dtype = torch.float32,
    x_T: Optional[torch.Tensor] = None,
    clip_denoised: bool = False,
    clip_range: tuple[float, float] = (-1.0, 1.0),
    known: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    hook: Optional[Hook] = None,
    progress: Optional[Progress] = None,
) -> torch.Tensor:
    """Ancestral sampling over every step of ``process`` -> x_0 of ``shape``. ``known=(x_known, mask)`` keeps the
    masked values (see ``known_region``); ``hook`` runs after it; ``x_T`` replaces the initial noise."""
    x = _start(shape, x_T, generator, device, dtype)

    def step(output, x, t):
        noise = randn(x.shape, generator, device=x.device, dtype=x.dtype)
        return ddpm_step(process, output, x, t, noise, clip_denoised, clip_range)

    return _run(process, model_fn, x, step, _hooks(process, known, hook, generator), progress)


@torch.no_grad()
def ddim_sample(
    process: GaussianDiffusion,
    model_fn: ModelFn,
    shape: Sequence[int],
    *,
    eta: float = 0.0,
    generator: Optional[torch.Generator] = None,
    device=None,
    dtype: torch.dtype = torch.float32,
    x_T: Optional[torch.Tensor] = None,
    clip_denoised: bool = False,
    clip_range: tuple[float, float] = (-1.0, 1.0),
    known: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    hook: Optional[Hook] = None,
    progress: Optional[Progress] = None,
) -> torch.Tensor:
    """DDIM sampling over every step of ``process`` -> x_0; η = 0 (default) is deterministic given x_T.
    Arguments as ``ddpm_sample``."""
    eta = check_eta(eta)  # before any network call
    x = _start(shape, x_T, generator, device, dtype)

    def step(output, x, t):
        noise = randn(x.shape, generator, device=x.device, dtype=x.dtype) if eta > 0 else None
        return ddim_step(process, output, x, t, eta, noise, clip_denoised, clip_range)

    return _run(process, model_fn, x, step, _hooks(process, known, hook, generator), progress)


@torch.no_grad()
def ddim_invert(
    process: GaussianDiffusion,
    model_fn: ModelFn,
    x0: torch.Tensor,
    refine: int = 0,
    progress: Optional[Callable[[int, int, torch.Tensor], None]] = None,
) -> torch.Tensor:
    """Deterministic DDIM inversion x_0 -> x_T (level ᾱ_{T−1}, where ``ddim_sample`` starts), so that
    ``ddim_sample(process, model_fn, x0.shape, x_T=ddim_invert(process, model_fn, x0))`` returns ≈ x0.

    Plain inversion (``refine=0``) evaluates the network at the step's start point, an O(1/steps) error
    (measured on a Gaussian toy: ~0.06 max abs at 50 steps, ~0.003 at 1000). ``refine=k`` re-evaluates it k times
    at the current estimate of the step's end point: a fixed-point iteration towards the exact inverse of the
    sampler's step (k + 1 network calls per step). No clipping: it would make the map non-invertible."""
    x = x0
    n = process.num_timesteps
    for i in range(n):
        t = _full_t(i, x)
        timesteps = process.model_timesteps(t)
        x_next = ddim_reverse_step(process, model_fn(x, timesteps), x, t)
        for _ in range(refine):  # the sampler will evaluate at (x_next, t): use the ε it will see
            x_next = ddim_reverse_step(process, model_fn(x_next, timesteps), x, t, x_eval=x_next)
        x = x_next
        if progress is not None:
            progress(i + 1, n, x)
    return x


OWN_SAMPLERS = ("ddim", "ddpm")


def sampler_known(name: str) -> bool:
    """``ddim`` | ``ddpm`` | a diffusers scheduler alias (``zoo.diffusion.diffusers_adapter.ALIASES``) or class name."""
    from zoo.diffusion.diffusers_adapter import ALIASES, scheduler_class

    if name in OWN_SAMPLERS or name in ALIASES:
        return True
    try:
        return scheduler_class(name) is not None
    except ImportError:  # pragma: no cover - diffusers is a dependency; without it the name cannot run anyway
        return False


def check_sampling_knobs(num_timesteps: int, knobs: dict) -> None:
    """A ``ConfigError`` naming the config key and its fix for a sampling knob that cannot work, before any model
    runs (a bad value otherwise fails mid-sampling, or after training at the first sample grid, or is silently
    taken: a negative DDIM eta drops the step noise while shrinking the ε̂ term, neither DDIM nor DDPM). ``knobs``: config key -> value (None: not set, skipped); the key's
    ending says what it is: ``...steps`` (an int in [1, num_timesteps]), ``...sampler`` (a known sampler),
    ``...eta`` (>= 0), ``...guidance_scale`` (>= 0: 0 is the unconditional model, 1 the conditional one)."""
    from zoo.diffusion.diffusers_adapter import ALIASES
    from zoo.errors import ConfigError, check_number, check_whole

    for key, value in knobs.items():
        if value is None:
            continue
        if key.endswith("steps"):
            why = f"sampling steps, at most the diffusion's {num_timesteps} timesteps"
            check_whole(key, value, 1, min(50, num_timesteps), most=num_timesteps, why=why)
        elif key.endswith("sampler"):
            if not isinstance(value, str) or not sampler_known(value):
                names = ", ".join([*OWN_SAMPLERS, *sorted(k for k in ALIASES if k not in OWN_SAMPLERS)])
                raise ConfigError(
                    f"{key}={value!r} is not a sampler: choose one of {names} or a diffusers scheduler class name "
                    f"(fix: {key}=ddim)"
                )
        elif key.endswith("eta"):
            check_eta(value, key)
        elif key.endswith("clip_guidance_scale"):  # s of CLIP guidance's mean shift, not a classifier-free scale
            check_number(key, value, 0, fix=0, why="the CLIP guidance scale (0: unguided)")
        elif key.endswith("guidance_scale"):
            check_number(
                key, value, 0, fix=1, why="the guidance scale (1: the conditional model, 0: the unconditional one)"
            )
        else:
            raise ValueError(f"check_sampling_knobs: no check for {key!r}")
