"""Logit-Laplace likelihood (DALL·E appendix A.3): NLL against the density written out by hand, pixel mapping."""

from __future__ import annotations

import math

import pytest
import torch

from zoo.nn.likelihoods import LOGIT_LAPLACE_EPS, logit_laplace_nll, map_pixels, unmap_pixels


def density_by_hand(x: float, mu: float, b: float) -> float:
    """f(x | mu, b) = 1 / (2 b x (1 - x)) * exp(-|logit(x) - mu| / b), plain python math."""
    logit = math.log(x) - math.log(1 - x)
    return 1.0 / (2.0 * b * x * (1.0 - x)) * math.exp(-abs(logit - mu) / b)


CASES = [(0.5, 0.0, 1.0), (0.2, -0.3, 0.5), (0.85, 1.2, 0.1), (0.1, 2.0, 3.0), (0.9, -2.0, 0.05), (0.33, 0.33, 2.0)]


@pytest.mark.parametrize("x,mu,b", CASES)
def test_nll_equals_minus_log_density_by_hand(x, mu, b):
    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    got = logit_laplace_nll(t(x), t(mu), t(math.log(b))).item()
    assert got == pytest.approx(-math.log(density_by_hand(x, mu, b)), rel=1e-10, abs=1e-12)


def test_nll_is_elementwise_on_image_tensors_and_keeps_the_jacobian():
    # per pixel x channel, one value each; the Jacobian term -log(1/(x(1-x))) is what differs from a Laplace on logit(x)
    torch.manual_seed(0)
    x = map_pixels(torch.rand(2, 3, 4, 4, dtype=torch.float64))
    mu = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    log_b = torch.randn(2, 3, 4, 4, dtype=torch.float64) * 0.3
    nll = logit_laplace_nll(x, mu, log_b)
    assert nll.shape == x.shape
    for idx in [(0, 0, 0, 0), (1, 2, 3, 1), (0, 1, 2, 3)]:
        xi, mi, bi = x[idx].item(), mu[idx].item(), math.exp(log_b[idx].item())
        assert nll[idx].item() == pytest.approx(-math.log(density_by_hand(xi, mi, bi)), rel=1e-10)
    logit = torch.log(x) - torch.log1p(-x)
    laplace_on_logit = math.log(2) + log_b + (logit - mu).abs() / log_b.exp()
    torch.testing.assert_close(nll - laplace_on_logit, torch.log(x) + torch.log1p(-x))


def test_density_integrates_to_one_on_the_unit_interval():
    x = torch.linspace(1e-6, 1 - 1e-6, 400_001, dtype=torch.float64)
    for mu, b in [(0.7, 0.4), (-1.0, 1.5)]:
        nll = logit_laplace_nll(
            x, torch.tensor(mu, dtype=torch.float64), torch.tensor(math.log(b), dtype=torch.float64)
        )
        assert torch.trapezoid(torch.exp(-nll), x).item() == pytest.approx(1.0, abs=2e-3)


def test_gradient_is_finite_at_the_mapped_extremes():
    x = map_pixels(torch.tensor([0.0, 1.0]))
    mu = torch.zeros(2, requires_grad=True)
    log_b = torch.zeros(2, requires_grad=True)
    logit_laplace_nll(x, mu, log_b).sum().backward()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(log_b.grad).all()


def test_map_unmap_round_trip_and_range():
    assert LOGIT_LAPLACE_EPS == 0.1
    x = torch.rand(10_000)
    m = map_pixels(x)
    assert m.min() >= 0.1 - 1e-7 and m.max() <= 0.9 + 1e-7
    torch.testing.assert_close(unmap_pixels(m), x)
    assert map_pixels(torch.tensor([0.0, 0.5, 1.0])).tolist() == pytest.approx([0.1, 0.5, 0.9])
    # outside (eps, 1 - eps) unmap clamps to [0, 1]
    assert unmap_pixels(torch.tensor([0.0, 0.05, 0.95, 1.0])).tolist() == [0.0, 0.0, 1.0, 1.0]
