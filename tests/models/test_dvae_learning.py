"""The dVAE learns: loss falls by a large factor on a fixed batch (both likelihoods)."""
from __future__ import annotations

import pytest
import torch

from zoo.data.shapes import ShapesDataset
from zoo.models.dvae.lit import DVAELit


@pytest.mark.parametrize("recon_loss", ["logit_laplace", "mse"])
def test_overfits_fixed_batch(recon_loss):
    torch.manual_seed(0)
    ds = ShapesDataset("train", 8, 32)
    x = torch.stack([ds[i]["image"] for i in range(8)])
    m = DVAELit(preset="tiny", recon_loss=recon_loss, temperature_steps=150, kl_steps=50, kl_weight_max=0.5)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    mses = []
    for step in range(150):
        r = m.forward_loss(x, step=step)
        opt.zero_grad()
        r["loss"].backward()
        opt.step()
        mses.append(r["mse"].item())
    assert sum(mses[-5:]) / 5 < sum(mses[:5]) / 5 / 5, (mses[:5], mses[-5:])
