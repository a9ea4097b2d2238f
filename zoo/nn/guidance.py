"""Classifier-free guidance: THE formula, shared by the DALL·E token sampler and every diffusion model (torch only).

guided = uncond + s · (cond − uncond), computed with ``torch.lerp(uncond, cond, s)``. lerp evaluates
``cond − (cond − uncond) · (1 − s)`` for s ≥ 0.5, so s = 1 returns ``cond`` bit for bit (a guided sampler at scale 1
reproduces the unguided one exactly) and s = 0 returns ``uncond``. Batched layout, where both streams run as one
batch of 2B: [cond ; uncond] along dim 0 (cond first).
"""

from __future__ import annotations

import torch


def guide(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """uncond + scale · (cond − uncond); exactly ``cond`` at scale 1. Same shapes and dtype."""
    return torch.lerp(uncond, cond, scale)


def guide_learned_variance(uncond: torch.Tensor, cond: torch.Tensor, scale: float, dim: int = 1) -> torch.Tensor:
    """Guidance for outputs [ε ; v] split in halves along ``dim`` (a learned-variance diffusion model, 2C channels):
    ε is guided, v comes from the conditional output (GLIDE). Exactly ``cond`` at scale 1."""
    eps_u, _ = uncond.chunk(2, dim=dim)
    eps_c, var_c = cond.chunk(2, dim=dim)
    return torch.cat([guide(eps_u, eps_c, scale), var_c], dim=dim)


def guide_batched(output: torch.Tensor, scale: float, learned_variance: bool = False) -> torch.Tensor:
    """(2B, ...) laid out [cond ; uncond] -> the guided (B, ...); ``learned_variance`` guides only the first half of
    dim 1 (see ``guide_learned_variance``)."""
    cond, uncond = output.chunk(2, dim=0)
    return guide_learned_variance(uncond, cond, scale) if learned_variance else guide(uncond, cond, scale)
