"""Gradient guidance of a diffusion sampler by a noised image-text model: GLIDE's CLIP guidance (torch only).

GLIDE (Nichol et al., 2021, §2.4, after Dhariwal & Nichol's classifier guidance) perturbs the reverse-process mean
with the gradient of the image-caption dot product of a CLIP trained on NOISED images:

    μ̂(x_t | c) = μ(x_t) + s · Σ(x_t) · ∇_{x_t} ( f(x_t, t) · g(c) )

``f(x_t, t)`` is the noised image tower (it sees the timestep), ``g(c)`` the caption's text embedding, ``s`` the
guidance scale, Σ the step's variance (learned or fixed). This is the ancestral ("ddpm") sampler. For DDIM the same
gradient conditions the score instead (Song et al.; Dhariwal & Nichol Alg. 2): ε̂' = ε̂ − √(1 − ᾱ_t) · s · ∇.

Conventions as ``zoo.diffusion.samplers``: ``model_fn(x_t, t)`` and ``cond_fn(x_t, t)`` receive ORIGINAL timesteps;
randomness only from ``generator`` (the noise stream is ``ddpm_sample``'s / ``ddim_sample``'s, so a zero gradient
reproduces them bit for bit).

API::

    cond_fn = dot_product_gradient(lambda x, t: noised_clip.encode_image(x, t), text_emb, scale=s)
    x0 = clip_guided_sample(process.respaced(50), model_fn, cond_fn, shape, generator=g)
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from zoo.diffusion.noise import randn
from zoo.diffusion.process import GaussianDiffusion, ReverseStep
from zoo.diffusion.samplers import ModelFn, Progress, _run, _start, check_eta, ddim_step

__all__ = ["CondFn", "dot_product_gradient", "condition_mean", "condition_eps", "clip_guided_sample"]

CondFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, original t) -> s · ∇_x log p(c | x_t)


def dot_product_gradient(
    image_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    text_emb: torch.Tensor,
    scale: float,
    logit_scale: float = 1.0,
) -> CondFn:
    """``cond_fn(x_t, t) = scale · ∇_x Σ_b logit_scale · f(x_t, t)_b · g_b`` (per sample: the examples of a batch are
    independent, so the gradient of the sum is each example's own). ``image_fn(x, t) -> (B, D)``, ``text_emb``
    (B, D). Evaluated in float32 with gradients enabled whatever the caller's mode."""

    def cond_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x_in = x.detach().float().requires_grad_(True)
            score = (image_fn(x_in, t).float() * text_emb.to(x_in.device, torch.float32)).sum() * logit_scale
            (grad,) = torch.autograd.grad(score, x_in)
        return (grad * scale).to(x.dtype)

    return cond_fn


def condition_mean(step: ReverseStep, grad: torch.Tensor) -> torch.Tensor:
    """GLIDE's CLIP-guided mean: μ + Σ · grad (``grad`` already carries the scale s)."""
    return step.mean + step.variance * grad


def condition_eps(
    process: GaussianDiffusion, model_output: torch.Tensor, x: torch.Tensor, t: torch.Tensor, grad: torch.Tensor
) -> torch.Tensor:
    """The output with the ε it implies moved to ε − √(1 − ᾱ_t) · grad (score conditioning, for DDIM); ``t``
    indexes the process. A learned-variance half is kept as is. An ε-predicting process shifts its output directly;
    a v-predicting one by the same shift divided by √ᾱ_t (at fixed x_t, ε = √ᾱ_t · v + √(1 − ᾱ_t) · x_t)."""
    if process.model_mean_type not in ("eps", "v"):
        raise ValueError(f"condition_eps needs model_mean_type 'eps' or 'v', not {process.model_mean_type!r}")
    out, var = process.split_output(model_output.to(x.dtype))
    shift = process.coef("sqrt_1m_ac", t, x) * grad
    if process.model_mean_type == "v":
        shift = shift / process.coef("sqrt_ac", t, x)
    out = out - shift
    return out if var is None else torch.cat([out, var], dim=1)


@torch.no_grad()
def clip_guided_sample(
    process: GaussianDiffusion,
    model_fn: ModelFn,
    cond_fn: CondFn,
    shape: Sequence[int],
    *,
    sampler: str = "ddpm",
    eta: float = 0.0,
    generator: Optional[torch.Generator] = None,
    device=None,
    dtype: torch.dtype = torch.float32,
    x_T: Optional[torch.Tensor] = None,
    clip_denoised: bool = False,
    clip_range: tuple[float, float] = (-1.0, 1.0),
    progress: Optional[Progress] = None,
) -> torch.Tensor:
    """Sampling over every step of ``process`` with ``cond_fn``'s gradient guiding each step -> x_0 of ``shape``.

    ``sampler="ddpm"``: ancestral, mean shifted by Σ · grad (GLIDE). ``"ddim"`` (eta): ε shifted by
    −√(1 − ᾱ_t) · grad. ``cond_fn`` is evaluated at (x_t, original t) every step; a cond_fn returning zeros gives
    exactly ``ddpm_sample`` / ``ddim_sample``."""
    if sampler not in ("ddpm", "ddim"):
        raise ValueError(f"CLIP guidance runs the 'ddpm' or 'ddim' sampler, got {sampler!r}")
    eta = check_eta(eta)
    x = _start(shape, x_T, generator, device, dtype)

    def ddpm(output, x, t):
        noise = randn(x.shape, generator, device=x.device, dtype=x.dtype)
        out = process.p_mean_variance(output, x, t, clip_denoised, clip_range)
        mean = condition_mean(out, cond_fn(x, process.model_timesteps(t)))
        not_last = (t != 0).to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return mean + (not_last * torch.exp(0.5 * out.log_variance)) * noise, out.pred_x0

    def ddim(output, x, t):
        noise = randn(x.shape, generator, device=x.device, dtype=x.dtype) if eta > 0 else None
        output = condition_eps(process, output, x, t, cond_fn(x, process.model_timesteps(t)))
        return ddim_step(process, output, x, t, eta, noise, clip_denoised, clip_range)

    return _run(process, model_fn, x, ddpm if sampler == "ddpm" else ddim, [], progress)
