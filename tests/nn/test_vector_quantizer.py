"""VectorQuantizer: STE gradients, commitment side, EMA arithmetic by hand, dead-code restart, k-means init."""
from __future__ import annotations

import pytest
import torch

from zoo.nn.quantizers import VectorQuantizer


def _vq(**kw):
    vq = VectorQuantizer(2, 2, restart_dead_codes=False, **kw)
    with torch.no_grad():
        vq.embed.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
        if vq.ema:
            vq.embed_sum.copy_(vq.embed)
            vq.cluster_size.fill_(1.0)
    return vq


def test_ste_gradient_reaches_encoder_and_commitment_is_encoder_side():
    enc = torch.nn.Conv2d(3, 2, 1)
    vq = _vq(ema=False)
    x = torch.randn(2, 3, 4, 4)
    out = vq(enc(x))
    # decoder-side loss on z_q: its gradient flows through the straight-through estimator to the encoder
    out["z_q"].sum().backward(retain_graph=True)
    assert enc.weight.grad is not None and enc.weight.grad.abs().sum() > 0
    # the commitment term alone gives no gradient to the codebook (beta sits on the encoder side)
    vq.embed.grad = None
    enc.weight.grad = None
    out["commitment"].backward(retain_graph=True)
    assert vq.embed.grad is None or vq.embed.grad.abs().sum() == 0
    assert enc.weight.grad.abs().sum() > 0
    # the codebook loss moves the codebook and not the encoder
    enc.zero_grad()
    out["codebook_loss"].backward()
    assert vq.embed.grad.abs().sum() > 0 and (enc.weight.grad is None or enc.weight.grad.abs().sum() == 0)


def test_commitment_value_is_beta_times_mse():
    vq = _vq(ema=False, beta=0.25)
    z = torch.tensor([0.2, 0.1, 0.9, 1.3]).view(1, 2, 2, 1)  # two vectors: (0.2, 0.9) -> code 0? no: nearest
    vq.eval()
    out = vq(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 2)
    q = vq.embed[out["codes"].flatten()]
    assert out["commitment"].item() == pytest.approx(0.25 * ((flat - q) ** 2).mean().item())


def test_ema_update_matches_hand_computation():
    vq = _vq(ema=True, decay=0.5, eps=0.0)
    # 4 vectors: three near code 1, one near code 0
    z = torch.tensor([[0.1, 0.0], [0.9, 1.0], [1.2, 1.1], [0.8, 0.7]])
    vq.train()
    out = vq(z.t().reshape(1, 2, 4, 1))
    assert out["codes"].flatten().tolist() == [0, 1, 1, 1]
    # cluster_size = 0.5 * 1 + 0.5 * [1, 3] = [1, 2];  embed_sum = 0.5 * e + 0.5 * sums
    cs = torch.tensor([1.0, 2.0])
    es0 = 0.5 * torch.tensor([0.0, 0.0]) + 0.5 * torch.tensor([0.1, 0.0])
    es1 = 0.5 * torch.tensor([1.0, 1.0]) + 0.5 * (z[1] + z[2] + z[3])
    torch.testing.assert_close(vq.cluster_size, cs)
    torch.testing.assert_close(vq.embed[0], es0 / cs[0])
    torch.testing.assert_close(vq.embed[1], es1 / cs[1])


def test_dead_codes_are_restarted_from_recent_encoder_outputs():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 2, decay=0.5, dead_threshold=0.1, restart_dead_codes=True)
    with torch.no_grad():
        vq.embed.copy_(torch.full((8, 2), 100.0))  # all codes far away...
        vq.embed[0] = 0.0  # ...but code 0, which takes every vector
        vq.embed_sum.copy_(vq.embed)
    z = torch.rand(1, 2, 4, 4)
    vq.train()
    for _ in range(6):
        vq(z)
    recent = z.permute(0, 2, 3, 1).reshape(-1, 2)
    # every once-dead code now sits on one of the encoder outputs
    for k in range(1, 8):
        assert torch.cdist(vq.embed[k : k + 1], recent).min() < 1e-5 or vq.cluster_size[k] >= 0.1
    assert (vq.embed[1:] < 50).all()


def test_kmeans_init_puts_codes_on_clusters():
    torch.manual_seed(0)
    centers = torch.tensor([[5.0, 5.0], [-5.0, 5.0], [0.0, -5.0]])
    pts = torch.cat([c + 0.1 * torch.randn(50, 2) for c in centers])
    vq = VectorQuantizer(3, 2, kmeans_init=True, restart_dead_codes=False)
    vq.train()
    vq(pts.t().reshape(1, 2, 150, 1))
    d = torch.cdist(centers, vq.embed)
    assert d.min(1).values.max() < 0.5
