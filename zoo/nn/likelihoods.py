"""Reconstruction likelihoods for image autoencoders (torch only).

The logit-Laplace distribution (DALL·E, Ramesh et al. 2021, sec. A.3) models a pixel x in (0, 1) as
    f(x | mu, b) = 1 / (2 b x (1 - x)) * exp(-|logit(x) - mu| / b),
i.e. a Laplace distribution on logit(x); the 1/(x(1-x)) factor is the Jacobian of the logit. Pixels are first
squeezed into (eps, 1 - eps) with eps = 0.1 so that the density's support excludes the poles at 0 and 1.
"""

from __future__ import annotations

import torch

LOGIT_LAPLACE_EPS = 0.1


def map_pixels(x01: torch.Tensor, eps: float = LOGIT_LAPLACE_EPS) -> torch.Tensor:
    """[0, 1] -> [eps, 1 - eps]."""
    return (1 - 2 * eps) * x01 + eps


def unmap_pixels(x: torch.Tensor, eps: float = LOGIT_LAPLACE_EPS) -> torch.Tensor:
    """[eps, 1 - eps] -> [0, 1] (clamped)."""
    return ((x - eps) / (1 - 2 * eps)).clamp(0, 1)


def logit_laplace_nll(x: torch.Tensor, mu: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """Elementwise negative log density of the logit-Laplace distribution at x in (0, 1) (already mapped).

    -log f = log 2 + log b + log x + log(1 - x) + |logit(x) - mu| / b
    """
    x = x.clamp(1e-6, 1 - 1e-6)
    logit_x = torch.log(x) - torch.log1p(-x)
    return (
        torch.log(torch.tensor(2.0, dtype=x.dtype, device=x.device))
        + log_b
        + torch.log(x)
        + torch.log1p(-x)
        + (logit_x - mu).abs() * torch.exp(-log_b)
    )
