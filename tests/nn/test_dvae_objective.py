"""The dVAE's paper objective: logit-Laplace density, pixel mapping, schedules, KL, argmax tokens."""

from __future__ import annotations

import math

import pytest
import torch

from zoo.models.dvae.lit import DVAELit, kl_to_uniform
from zoo.nn.annealing import cosine_anneal, exponential_anneal, linear_ramp
from zoo.nn.likelihoods import logit_laplace_nll, map_pixels, unmap_pixels


def _density(x: float, mu: float, b: float) -> float:
    """f(x|mu,b) = 1/(2 b x (1-x)) * exp(-|logit(x) - mu| / b), written out with plain math."""
    logit = math.log(x / (1 - x))
    return 1.0 / (2 * b * x * (1 - x)) * math.exp(-abs(logit - mu) / b)


@pytest.mark.parametrize("x,mu,b", [(0.5, 0.0, 1.0), (0.2, -0.3, 0.5), (0.85, 1.2, 0.1), (0.1, 2.0, 3.0)])
def test_logit_laplace_nll_equals_density_formula(x, mu, b):
    got = logit_laplace_nll(
        torch.tensor([x], dtype=torch.float64),
        torch.tensor([mu], dtype=torch.float64),
        torch.tensor([math.log(b)], dtype=torch.float64),
    )
    assert got.item() == pytest.approx(-math.log(_density(x, mu, b)), rel=1e-9)


def test_logit_laplace_integrates_to_one():
    # the Jacobian term is what makes it a density on (0, 1): integrate numerically
    x = torch.linspace(1e-5, 1 - 1e-5, 400_001, dtype=torch.float64)
    nll = logit_laplace_nll(x, torch.tensor(0.7, dtype=torch.float64), torch.tensor(math.log(0.4), dtype=torch.float64))
    assert torch.trapezoid(torch.exp(-nll), x).item() == pytest.approx(1.0, abs=1e-3)


def test_pixel_mapping_round_trip_and_range():
    x = torch.rand(1000)
    m = map_pixels(x)
    assert m.min() >= 0.1 - 1e-7 and m.max() <= 0.9 + 1e-7
    torch.testing.assert_close(unmap_pixels(m), x)
    assert unmap_pixels(torch.tensor([0.0, 1.0])).tolist() == [0.0, 1.0]  # clamped


@pytest.mark.parametrize("fn", [cosine_anneal, linear_ramp, exponential_anneal])
def test_schedules_hit_endpoints(fn):
    assert fn(0, 1.0, 1 / 16, 1000) == pytest.approx(1.0)
    assert fn(1000, 1.0, 1 / 16, 1000) == pytest.approx(1 / 16)
    assert fn(5000, 1.0, 1 / 16, 1000) == pytest.approx(1 / 16)
    mid = fn(500, 1.0, 1 / 16, 1000)
    assert 1 / 16 < mid < 1.0


def test_lit_temperature_and_kl_weight_schedules():
    m = DVAELit(preset="tiny", temperature_steps=100, kl_steps=10)
    assert m.temperature(0) == pytest.approx(1.0) and m.temperature(100) == pytest.approx(1 / 16)
    assert m.temperature(10**6) == pytest.approx(1 / 16)
    assert m.kl_weight(0) == 0.0 and m.kl_weight(10) == pytest.approx(6.6) and m.kl_weight(11) == pytest.approx(6.6)


def test_kl_to_uniform_values():
    k = 8
    uniform = torch.zeros(2, k, 3, 3)
    assert kl_to_uniform(uniform).abs().max() < 1e-6
    peaked = torch.full((1, k, 1, 1), -1e4)
    peaked[0, 0] = 0
    assert kl_to_uniform(peaked).item() == pytest.approx(math.log(k), rel=1e-5)


def test_paper_preset_shapes():
    with torch.device("meta"):
        m = DVAELit(preset="paper")
    assert m.dvae.codebook_size == 8192 and m.dvae.grid_size == (32, 32) and m.dvae.post_gain == 1 / 64
    assert m.dvae.encoder[0].kernel_size == (7, 7)
    widths = [b.res_path[-1].out_channels for b in m.dvae.encoder if hasattr(b, "res_path")]
    assert widths == [256, 256, 512, 512, 1024, 1024, 2048, 2048]


def test_tokens_are_argmax_and_decode_shapes():
    torch.manual_seed(0)
    m = DVAELit(preset="tiny").eval()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    codes = m.dvae.encode(x)
    assert codes.dtype == torch.long and codes.shape == (3, 16, 16)
    torch.testing.assert_close(codes, m.dvae.logits(x).argmax(1))
    assert torch.equal(codes, m.dvae.encode(x))  # deterministic: no Gumbel noise
    out = m.dvae.decode(codes)
    assert out.shape == x.shape and out.dtype == torch.float32 and out.min() >= -1 and out.max() <= 1
