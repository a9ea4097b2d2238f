"""An exactly known denoiser: for data x_0 ~ N(μ, σ² I), x_t = √ᾱ x_0 + √(1−ᾱ) ε is Gaussian and
E[ε | x_t] = √(1−ᾱ) (x_t − √ᾱ μ) / (ᾱ σ² + 1 − ᾱ) in closed form (the optimal ε-prediction)."""

import pytest
import torch

MU, SIGMA = 0.3, 0.5


def gaussian_eps_fn(alphas_cumprod: torch.Tensor, mu: float = MU, sigma: float = SIGMA):
    """model_fn(x_t, original timesteps) -> exact ε for N(mu, sigma²) data under the *original* ᾱ table."""

    def model_fn(x, t):
        ac = alphas_cumprod.to(x.dtype)[t].view(-1, *([1] * (x.dim() - 1)))
        return (1 - ac).sqrt() * (x - ac.sqrt() * mu) / (ac * sigma**2 + 1 - ac)

    return model_fn


@pytest.fixture
def gaussian_eps():
    return gaussian_eps_fn
