"""VectorQuantizer: STE gradients, commitment on the encoder side, EMA arithmetic by hand, dead-code restart,
k-means init, cosine codes, no statistics updates in eval mode."""

from __future__ import annotations

import pytest
import torch

from zoo.nn.quantizers import VectorQuantizer, kmeans


def _as_map(vectors: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (1, D, N, 1), the (B, D, h, w) layout the quantizer takes."""
    return vectors.t().reshape(1, vectors.shape[1], vectors.shape[0], 1)


def _two_code_vq(**kw) -> VectorQuantizer:
    vq = VectorQuantizer(2, 2, restart_dead_codes=False, **kw)
    with torch.no_grad():
        vq.embed.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
        if vq.ema:
            vq.embed_sum.copy_(vq.embed)
        vq.cluster_size.fill_(1.0)
    return vq


def test_ste_gradient_reaches_encoder_weights():
    torch.manual_seed(0)
    enc = torch.nn.Conv2d(3, 4, 1)
    vq = VectorQuantizer(8, 4)
    out = vq(enc(torch.randn(2, 3, 4, 4)))
    assert out["z_q"].shape == (2, 4, 4, 4) and out["codes"].shape == (2, 4, 4) and out["codes"].dtype == torch.long
    (out["z_q"] ** 2).sum().backward()  # a decoder-side loss
    assert enc.weight.grad is not None and enc.weight.grad.abs().sum() > 0


def test_forward_value_is_the_code_and_gradient_is_identity():
    vq = _two_code_vq(ema=False).eval()
    z = _as_map(torch.tensor([[0.2, 0.1], [0.9, 1.3]])).requires_grad_(True)
    out = vq(z)
    torch.testing.assert_close(out["z_q"].detach(), _as_map(torch.tensor([[0.0, 0.0], [1.0, 1.0]])))
    out["z_q"].sum().backward()
    torch.testing.assert_close(z.grad, torch.ones_like(z))


def test_commitment_is_encoder_side_and_codebook_loss_codebook_side():
    enc = torch.nn.Conv2d(3, 2, 1)
    vq = _two_code_vq(ema=False, beta=0.25)
    out = vq(enc(torch.randn(2, 3, 4, 4)))
    out["commitment"].backward(retain_graph=True)
    assert enc.weight.grad.abs().sum() > 0
    assert vq.embed.grad is None or vq.embed.grad.abs().sum() == 0
    enc.zero_grad()
    out["codebook_loss"].backward()
    assert vq.embed.grad.abs().sum() > 0
    assert enc.weight.grad is None or enc.weight.grad.abs().sum() == 0


def test_commitment_value_is_beta_times_mse_to_the_code():
    vq = _two_code_vq(ema=False, beta=0.25).eval()
    v = torch.tensor([[0.2, 0.1], [0.9, 1.3]])
    out = vq(_as_map(v))
    assert out["codes"].flatten().tolist() == [0, 1]
    by_hand = 0.25 * ((0.2**2 + 0.1**2) + (0.1**2 + 0.3**2)) / 4
    assert out["commitment"].item() == pytest.approx(by_hand)
    assert out["codebook_loss"].item() == pytest.approx(by_hand / 0.25)


def test_ema_update_matches_hand_computation():
    # 2 codes, 4 vectors, decay 0.5, Laplace smoothing eps = 0.1 so the smoothing is visible
    vq = _two_code_vq(ema=True, decay=0.5, eps=0.1).train()
    z = torch.tensor([[0.1, 0.0], [0.9, 1.0], [1.2, 1.1], [0.8, 0.7]])
    out = vq(_as_map(z))
    assert out["codes"].flatten().tolist() == [0, 1, 1, 1]
    # N_k <- 0.5 N_k + 0.5 n_k = 0.5*[1, 1] + 0.5*[1, 3] = [1, 2]
    # m_k <- 0.5 m_k + 0.5 sum_k  (m_0 = e_0 = (0, 0), m_1 = e_1 = (1, 1))
    m0 = [0.5 * 0.0 + 0.5 * 0.1, 0.5 * 0.0 + 0.5 * 0.0]
    m1 = [0.5 * 1.0 + 0.5 * (0.9 + 1.2 + 0.8), 0.5 * 1.0 + 0.5 * (1.0 + 1.1 + 0.7)]
    # Laplace smoothing: N'_k = (N_k + eps) / (n + K eps) * n with n = sum_k N_k = 3, K = 2
    n = 3.0
    s0, s1 = (1 + 0.1) / (n + 0.2) * n, (2 + 0.1) / (n + 0.2) * n
    torch.testing.assert_close(vq.cluster_size, torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(vq.embed_sum, torch.tensor([m0, m1]))
    torch.testing.assert_close(vq.embed, torch.tensor([[m0[0] / s0, m0[1] / s0], [m1[0] / s1, m1[1] / s1]]))


def test_no_statistics_update_in_eval_mode():
    vq = _two_code_vq(ema=True, decay=0.5).eval()
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    vq(_as_map(torch.randn(6, 2)))
    for k, v in vq.state_dict().items():
        assert torch.equal(before[k], v), k


def test_dead_code_is_restarted_on_a_recent_encoder_output():
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 2, decay=0.5, dead_threshold=0.2, restart_dead_codes=True, buffer_size=64).train()
    with torch.no_grad():
        vq.embed.copy_(torch.tensor([[0.0, 0.0], [100.0, 100.0], [-100.0, 100.0], [100.0, -100.0]]))
        vq.embed_sum.copy_(vq.embed)
    z = torch.rand(1, 2, 4, 4)  # every vector lands on code 0; codes 1..3 are never used
    recent = z.permute(0, 2, 3, 1).reshape(-1, 2)
    restarted = False
    for _ in range(4):  # usage of the unused codes decays 1 -> 0.5 -> 0.25 -> 0.125 < 0.2
        vq(z)
        if (vq.embed[1:].abs() < 50).all():
            restarted = True
            break
    assert restarted
    for k in range(1, 4):  # each one sits exactly on one of the recent encoder outputs
        assert torch.cdist(vq.embed[k : k + 1], recent).min() < 1e-6
        if vq.ema:
            torch.testing.assert_close(vq.embed_sum[k], vq.embed[k] * vq.cluster_size[k])


def test_restart_disabled_leaves_dead_codes():
    vq = VectorQuantizer(4, 2, decay=0.5, dead_threshold=0.2, restart_dead_codes=False).train()
    with torch.no_grad():
        vq.embed.copy_(torch.tensor([[0.0, 0.0], [100.0, 100.0], [-100.0, 100.0], [100.0, -100.0]]))
        vq.embed_sum.copy_(vq.embed)
    for _ in range(6):
        vq(torch.rand(1, 2, 4, 4))
    assert (vq.embed[1:].abs() > 50).all()


@pytest.mark.parametrize("restart_after", [None, 20])  # the EMA sums follow the fresh codes' usage either way
def test_kmeans_init_puts_codes_on_clusters(restart_after):
    torch.manual_seed(0)
    centers = torch.tensor([[5.0, 5.0], [-5.0, 5.0], [0.0, -5.0]])
    pts = torch.cat([c + 0.1 * torch.randn(50, 2) for c in centers])
    vq = VectorQuantizer(3, 2, kmeans_init=True, restart_dead_codes=False, restart_after=restart_after).train()
    vq(_as_map(pts))
    assert bool(vq.initialized)
    assert torch.cdist(centers, vq.embed).min(1).values.max() < 0.5


def _reference_kmeans_pp_seeds(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """The straightforward k-means++ seeding (distances to every seed recomputed for each new one)."""
    n = x.shape[0]
    centroids = x[torch.randint(n, (1,), generator=generator)].clone()
    for _ in range(1, k):
        d2 = torch.cdist(x, centroids).min(1).values.pow(2)
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / n)
        centroids = torch.cat([centroids, x[torch.multinomial(probs, 1, generator=generator)]])
    return centroids


@pytest.mark.parametrize("n", [20, 300])  # torch.cdist's exact path (<= 25 rows) and its matmul path
def test_kmeans_pp_seeding_is_linear_in_the_codes_and_draws_the_reference_seeds(n, monkeypatch):
    """Recomputing every seed's distances for each new seed cost O(N*K^2): minutes for a 1024-code codebook's first
    batch. Each point's running minimum needs N distances per seed, and draws the same seeds."""
    x = torch.randn(n, 8, generator=torch.Generator().manual_seed(0))
    x[5:9] = x[4]  # repeated points: zero distances, and the uniform fallback once all are seeds
    k = 24
    want = _reference_kmeans_pp_seeds(x, k, torch.Generator().manual_seed(1))
    cdist, computed = torch.cdist, []

    def counting_cdist(a, b, *args, **kwargs):
        computed.append(a.shape[0] * b.shape[0])
        return cdist(a, b, *args, **kwargs)

    monkeypatch.setattr(torch, "cdist", counting_cdist)
    got = kmeans(x, k, iters=0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(got, want)
    assert sum(computed) <= n * k


def test_l2_normalized_codes_are_unit_vectors_and_cosine_nearest():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 8, l2_normalize=True).train()
    z = torch.randn(2, 8, 3, 3) * 5
    out = vq(z)
    torch.testing.assert_close(out["z_q"].norm(dim=1), torch.ones(2, 3, 3))
    flat = torch.nn.functional.normalize(z.permute(0, 2, 3, 1).reshape(-1, 8), dim=-1)
    cos = flat @ vq.codebook().t()
    vq.eval()
    assert torch.equal(vq(z)["codes"].flatten(), cos.argmax(1))


def test_perplexity_bounds():
    vq = VectorQuantizer(8, 2).eval()
    out = vq(torch.randn(1, 2, 8, 8))
    assert 1.0 <= out["perplexity"].item() <= 8.0 + 1e-5


# ------------------------------------------------------------------------- (merged from test_vector_quantizer.py)
_vq = _two_code_vq  # the two-code quantizer both halves of this module were written against


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


def test_ema_update_matches_hand_computation_four_vectors():
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


def test_kmeans_init_puts_codes_on_three_clusters():
    torch.manual_seed(0)
    centers = torch.tensor([[5.0, 5.0], [-5.0, 5.0], [0.0, -5.0]])
    pts = torch.cat([c + 0.1 * torch.randn(50, 2) for c in centers])
    vq = VectorQuantizer(3, 2, kmeans_init=True, restart_dead_codes=False)
    vq.train()
    vq(pts.t().reshape(1, 2, 150, 1))
    d = torch.cdist(centers, vq.embed)
    assert d.min(1).values.max() < 0.5


@pytest.mark.parametrize("after", [1, 5, 20])
def test_restart_after_n_unused_steps(after):
    """restart_after=N: a code no vector picks is re-seeded at the N-th step, not before, whatever the decay and
    threshold (the default, usage 1 at decay 0.99 / threshold 0.03, would wait 349 steps)."""
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 2, decay=0.99, dead_threshold=0.03, restart_after=after, buffer_size=64).train()
    torch.testing.assert_close(vq.embed_sum, vq.embed * vq.cluster_size[:, None])  # consistent EMA state from the start
    with torch.no_grad():
        vq.embed.copy_(torch.tensor([[0.0, 0.0], [100.0, 100.0], [-100.0, 100.0], [100.0, -100.0]]))
        vq.embed_sum.copy_(vq.embed * vq.cluster_size[:, None])
    z = torch.rand(1, 2, 4, 4)  # every vector picks code 0
    for step in range(1, after + 1):
        vq(z)
        far = (vq.embed[1:].abs() > 50).all(dim=1)
        assert far.all() if step < after else not far.any(), (step, vq.cluster_size)
    recent = z.permute(0, 2, 3, 1).reshape(-1, 2)
    assert torch.cdist(vq.embed[1:], recent).min(dim=1).values.max() < 1e-6  # re-seeded on encoder outputs
    torch.testing.assert_close(vq.embed_sum[1:], vq.embed[1:] * vq.cluster_size[1:, None])
    torch.testing.assert_close(VectorQuantizer(4, 2).cluster_size, torch.ones(4))  # None: the old usage 1
    with pytest.raises(ValueError, match="restart_after"):
        VectorQuantizer(4, 2, restart_after=0)


_DDP_KMEANS_SCRIPT = """
import sys, torch, torch.distributed as dist, torch.multiprocessing as mp
from zoo.nn.quantizers import VectorQuantizer

def run(rank, init_file, ema, out):
    dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        vq = VectorQuantizer(4, 2, ema=ema, kmeans_init=True, restart_dead_codes=False).train()
        pts = torch.randn(16, 2, generator=torch.Generator().manual_seed(rank)) + 10 * rank  # each rank its shard
        vq(pts.t().reshape(1, 2, 16, 1))
        torch.save(vq.codebook().detach(), out + "." + str(rank))
    finally:
        dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(run, args=(sys.argv[1], sys.argv[2] == "1", sys.argv[3]), nprocs=2)
"""


@pytest.mark.parametrize("ema", [True, False])
def test_kmeans_init_gives_every_ddp_rank_the_same_codebook(tmp_path, ema):
    """Each rank clustered its own data: with ema=False (a Parameter codebook DDP never re-synchronises) the ranks
    kept different codebooks for the whole run, tokenizing the same image differently."""
    import subprocess
    import sys

    script, out = tmp_path / "ddp_kmeans.py", str(tmp_path / "codebook")
    script.write_text(_DDP_KMEANS_SCRIPT)
    subprocess.run([sys.executable, str(script), str(tmp_path / "pg"), "1" if ema else "0", out], check=True)
    c0, c1 = torch.load(f"{out}.0"), torch.load(f"{out}.1")
    torch.testing.assert_close(c0, c1, rtol=0, atol=0)


@pytest.mark.parametrize("ema", [True, False])
def test_bf16_autocast_changes_neither_codes_nor_codebook_statistics(ema):
    """Under bf16-mixed the distance matmul and the EMA sums ran in bf16: ~0.5% of vectors got a code that was not
    their nearest (so training and encode disagreed) and the EMA codebook drifted by bf16 rounding every step."""
    torch.manual_seed(0)
    vq = VectorQuantizer(512, 64, ema=ema, restart_dead_codes=False).train()
    ref = VectorQuantizer(512, 64, ema=ema, restart_dead_codes=False).train()
    ref.load_state_dict(vq.state_dict())
    z = torch.randn(8, 64, 16, 16) * 0.3 + 1.0  # an offset: |z|^2 large next to the gaps between code distances
    flat = z.permute(0, 2, 3, 1).reshape(-1, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nearest = vq.nearest(flat)
        out = vq(z)
    want = ref(z)
    assert torch.equal(nearest, want["codes"].flatten())  # both from the codebook before the update
    assert torch.equal(out["codes"], want["codes"])
    torch.testing.assert_close(vq.codebook(), ref.codebook(), rtol=0, atol=1e-6)
    torch.testing.assert_close(vq.cluster_size, ref.cluster_size, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kwargs", [{"decay": 1.0}, {"decay": 1.5}, {"decay": 0.0}, {"beta": -0.25}])
def test_decay_outside_the_open_unit_interval_and_negative_beta_are_refused(kwargs):
    """decay 1 left the EMA codebook where it started forever; above 1 it diverged (silently, both)."""
    with pytest.raises(ValueError, match="decay|beta"):
        VectorQuantizer(8, 4, **kwargs)
