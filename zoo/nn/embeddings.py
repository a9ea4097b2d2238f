"""Sinusoidal embeddings of (diffusion) timesteps, torch only.

Shared by the ADM U-Net (``zoo.nn.unet``) and the unCLIP diffusion prior: both turn a timestep t (int or float,
possibly fractional after respacing) into a fixed feature vector that a small MLP then projects.

Layout follows ADM / improved-diffusion (``timestep_embedding`` in their ``nn.py``): frequencies
``exp(-log(max_period) * i / half)`` for i in [0, half), features ``[cos(t * f), sin(t * f)]`` (cosines FIRST),
a zero column appended when ``dim`` is odd. Keeping that order means a state dict converted from OpenAI's
checkpoints sees the same features in the same columns of the first MLP layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) int or float timesteps -> (B, dim) float32 features ``[cos(t f_i), sin(t f_i)]``.

    Always computed in float32, whatever the ambient autocast: t reaches 1000 and bf16 has 8 bits of mantissa, so
    ``t * f`` in bf16 would be off by whole radians at the high frequencies (the features would be noise).
    A 0-dim ``t`` is treated as a batch of one.
    """
    if dim < 1:
        raise ValueError(f"embedding dim must be >= 1, got {dim}")
    t = torch.as_tensor(t)
    if t.ndim == 0:
        t = t[None]
    if t.ndim != 1:
        raise ValueError(f"timesteps must be (B,), got shape {tuple(t.shape)}")
    half = dim // 2
    with torch.autocast(device_type=t.device.type, enabled=False):
        freqs = torch.exp(
            -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / max(half, 1)
        )  # (half,)
        args = t.float()[:, None] * freqs[None]  # (B, half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2 * half)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)  # (B, dim)
    return emb


class SinusoidalEmbedding(nn.Module):
    """Module wrapper of :func:`timestep_embedding` (no parameters): (B,) -> (B, dim)."""

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        self.dim, self.max_period = dim, max_period

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return timestep_embedding(t, self.dim, self.max_period)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_period={self.max_period:g}"


class TimestepEmbedder(nn.Module):
    """Sinusoidal features -> Linear -> SiLU -> Linear: (B,) timesteps -> (B, out_dim).

    ADM's ``time_embed`` (feature width = model width, out_dim = 4 x model width); the diffusion prior uses the same
    module with its transformer width.
    """

    def __init__(self, freq_dim: int, out_dim: int, max_period: float = 10000.0):
        super().__init__()
        self.features = SinusoidalEmbedding(freq_dim, max_period)
        self.mlp = nn.Sequential(nn.Linear(freq_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # Features are float32; match the weights when the module itself was cast (e.g. .to(torch.bfloat16)).
        return self.mlp(self.features(t).to(self.mlp[0].weight.dtype))  # (B, out_dim)
