"""VQ-VAE: presets, ImageTokenizer view, learning a fixed batch, Lightning wiring (bf16), config errors."""

from __future__ import annotations

import pytest
import torch

from zoo.data.shapes import ShapesDataset
from zoo.models.vqvae import PRESETS, VQVAE
from zoo.models.vqvae.lit import VQVAELit
from zoo.nn.image_tokenizer import ImageTokenizer


def _shapes(n: int, res: int = 32) -> torch.Tensor:
    ds = ShapesDataset("train", n, res)
    return torch.stack([ds[i]["image"] for i in range(n)])


def test_paper_preset_builds_on_meta():
    with torch.device("meta"):
        m = VQVAE(PRESETS["paper"])
    assert isinstance(m, ImageTokenizer)
    assert m.grid_size == (32, 32) and m.codebook_size == 8192 and m.downsample_factor == 8


def test_encode_decode_shapes_and_dtypes():
    torch.manual_seed(0)
    m = VQVAELit(preset="shapes").tokenizer.eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    codes = m.encode(x)
    assert codes.shape == (2, 8, 8) and codes.dtype == torch.long and m.grid_size == (8, 8)
    assert int(codes.min()) >= 0 and int(codes.max()) < m.codebook_size
    out = m.decode(codes)
    assert out.shape == x.shape and out.dtype == torch.float32 and out.abs().max() <= 1
    # encode uses the same nearest-code rule as the training forward pass
    assert torch.equal(codes, m(x)["codes"])


def test_presets_and_bad_options():
    assert set(PRESETS) >= {"tiny", "shapes", "paper"}
    m = VQVAELit(preset="tiny", net={"codebook_size": 32, "l2_normalize": True})
    assert m.tokenizer.codebook_size == 32 and m.tokenizer.quantizer.l2_normalize
    with pytest.raises(ValueError, match="shapes"):
        VQVAELit(preset="big")
    with pytest.raises(ValueError, match="codebook_size"):
        VQVAELit(preset="tiny", net={"n_codes": 3})


@pytest.mark.parametrize("net", [{"kmeans_init": True}, {"ema": False}])
def test_overfits_a_fixed_batch(net, nn_helpers):
    torch.manual_seed(0)
    x = _shapes(8)
    m = VQVAELit(preset="tiny", net=net)
    first, last = nn_helpers.fit(m, x)
    assert last < first / 5, (first, last)


def test_encoder_gets_gradient_through_the_quantizer():
    torch.manual_seed(0)
    m = VQVAELit(preset="tiny")
    r = m.forward_loss(_shapes(2))
    torch.nn.functional.mse_loss(r["recon"], torch.zeros_like(r["recon"])).backward()  # decoder-side loss only
    enc_grads = [p.grad for p in m.tokenizer.encoder.parameters()]
    assert all(g is not None for g in enc_grads) and sum(g.abs().sum() for g in enc_grads) > 0


def test_tokenizer_interface():
    m = VQVAELit(preset="shapes").eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    codes = m.tokenizer.encode(x)
    assert codes.shape == (2, 8, 8) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < 512
    assert m.tokenizer.grid_size == (8, 8) and m.tokenizer.downsample_factor == 4
    out = m.tokenizer.decode(codes)
    assert out.shape == x.shape and out.dtype == torch.float32 and out.abs().max() <= 1
    with torch.device("meta"):
        paper = VQVAELit(preset="paper")
    assert paper.tokenizer.grid_size == (32, 32) and paper.tokenizer.codebook_size == 8192
    with pytest.raises(ValueError, match="shapes"):
        VQVAELit(preset="big")


@pytest.mark.parametrize("n", [0, 1])
def test_a_codebook_of_fewer_than_two_codes_is_refused_when_built(n):
    """0 was an IndexError in the first training step; 1 trained a tokenizer that gives every image the same code."""
    from zoo.errors import ConfigError

    with pytest.raises(ConfigError, match=f"codebook_size={n}: needs at least 2 codes"):
        VQVAELit(preset="tiny", net={"codebook_size": n})


@pytest.mark.parametrize("net", [{"dim": 0}, {"channels": 0}, {"n_down": -1}, {"n_res": -1}])
def test_sizes_that_cannot_build_a_network_are_refused_when_built(net):
    """dim 0 was a ZeroDivisionError, channels 0 a conv error, and n_down -1 a 0.5 downsample factor with a float
    grid_size (64.0)."""
    from zoo.errors import ConfigError

    with pytest.raises(ConfigError, match="needs dim and channels >= 1, n_down and n_res >= 0"):
        VQVAELit(preset="tiny", net=net)
