"""Likelihood terms of the diffusion variational bound (torch only). All in nats, elementwise (no reduction).

The VLB of Improved DDPM is a sum of KL(q(x_{t-1}|x_t,x_0) ‖ p(x_{t-1}|x_t)) for t > 0 and, at t = 0, the negative
log-likelihood of the data under p(x_0|x_1): for 8-bit images, the Gaussian's mass on each pixel's bin
(``discretized_gaussian_log_likelihood``); for continuous data (e.g. CLIP embeddings) its density
(``gaussian_log_likelihood``).
"""

from __future__ import annotations

import math

import torch


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) per element; arguments broadcast.

    KL = ½ [log σ₂² − log σ₁² + (σ₁² + (μ₁ − μ₂)²)/σ₂² − 1]; written with exp of log differences so that tiny
    variances (β_1 ≈ 1e-4 and below) never underflow to a 0 divisor.
    """
    logvar1, logvar2 = torch.as_tensor(logvar1), torch.as_tensor(logvar2)
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Φ(x) by the tanh approximation 0.5 (1 + tanh(√(2/π) (x + 0.044715 x³))) (max error ~3e-4).

    Improved DDPM's published bits/dim use this approximation, so we keep it for comparable numbers."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor, bins: int = 256
) -> torch.Tensor:
    """log P(x) per element under N(means, e^{2 log_scales}) for data quantised to ``bins`` levels in [-1, 1]
    (8 bits: 256).

    A level x owns the interval [x − h, x + h], h = 1/(bins−1) half the spacing between levels; the two extreme
    levels own the tails (−∞, −1 + h] and [1 − h, ∞), so the bins cover the real line and their masses sum to 1.
    Probabilities are floored at 1e-12 before the log so an impossible bin costs ~27.6 nats instead of −inf.
    """
    if x.shape != means.shape:
        raise ValueError(f"x {tuple(x.shape)} and means {tuple(means.shape)} must have the same shape")
    half = 1.0 / (bins - 1)
    inv_std = torch.exp(-log_scales)
    upper = approx_standard_normal_cdf(inv_std * (x - means + half))  # Φ at the bin's upper edge
    lower = approx_standard_normal_cdf(inv_std * (x - means - half))  # Φ at its lower edge
    tiny = 1e-12
    edge = 1.0 - half  # 0.999 for 8 bits up to rounding: a level beyond it is an extreme one
    log_p = torch.where(
        x < -edge,
        torch.log(upper.clamp(min=tiny)),  # lowest level: P(X ≤ upper edge)
        torch.where(
            x > edge,
            torch.log((1.0 - lower).clamp(min=tiny)),  # highest level: P(X ≥ lower edge)
            torch.log((upper - lower).clamp(min=tiny)),
        ),
    )
    return log_p


def gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """log N(x; means, e^{2 log_scales}) per element (a density: continuous data such as embeddings)."""
    return -0.5 * (math.log(2 * math.pi) + 2.0 * log_scales + (x - means) ** 2 * torch.exp(-2.0 * log_scales))
