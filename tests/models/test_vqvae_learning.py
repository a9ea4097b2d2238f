"""The VQ-VAE learns a fixed batch; encode/decode shapes and dtypes; bad presets named."""
from __future__ import annotations

import pytest
import torch

from zoo.data.shapes import ShapesDataset
from zoo.models.vqvae.lit import VQVAELit


def test_overfits_fixed_batch():
    torch.manual_seed(0)
    ds = ShapesDataset("train", 8, 32)
    x = torch.stack([ds[i]["image"] for i in range(8)])
    m = VQVAELit(preset="tiny", net={"kmeans_init": True})
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    mses = []
    for _ in range(150):
        r = m.forward_loss(x)
        opt.zero_grad()
        r["loss"].backward()
        opt.step()
        mses.append(r["mse"].item())
    assert sum(mses[-5:]) / 5 < sum(mses[:5]) / 5 / 5, (mses[:5], mses[-5:])


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
