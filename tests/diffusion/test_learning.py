"""A tiny MLP denoiser learns a 2-D toy with the hybrid loss (learned range): both terms go down."""

import torch
from torch import nn

from zoo.diffusion.process import GaussianDiffusion
from zoo.diffusion.samplers import ddim_sample
from zoo.diffusion.schedules import cosine_schedule


class TinyDenoiser(nn.Module):
    """(B, 2) x_t and original timesteps (B,) -> (B, 4) = [ε ; v] (learned range)."""

    def __init__(self, num_timesteps: int, width: int = 64):
        super().__init__()
        self.t_emb = nn.Embedding(num_timesteps, width)
        self.inp = nn.Linear(2, width)
        self.body = nn.Sequential(nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 4))

    def forward(self, x, t):
        return self.body(self.inp(x) + self.t_emb(t))


def toy_batch(n: int, g: torch.Generator) -> torch.Tensor:
    """Two blobs at (±0.5, ±0.5) with std 0.1: a bimodal target an untrained net cannot fit."""
    centres = torch.tensor([[0.5, 0.5], [-0.5, -0.5]])
    return centres[torch.randint(0, 2, (n,), generator=g)] + 0.1 * torch.randn(n, 2, generator=g)


def test_tiny_mlp_learns_the_toy():
    torch.manual_seed(0)
    p = GaussianDiffusion(cosine_schedule(100), "eps", "learned_range", "hybrid", decoder_nll="gaussian")
    net = TinyDenoiser(100)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g_eval = torch.Generator().manual_seed(1)
    x_eval = toy_batch(1024, g_eval)
    t_eval, n_eval = p.sample_timesteps(1024, generator=g_eval), torch.randn(1024, 2, generator=g_eval)

    def evaluate():
        with torch.no_grad():
            out = p.training_losses(net, x_eval, t_eval, noise=n_eval)
        return out["mse"].mean().item(), out["vb"].mean().item()

    mse0, vb0 = evaluate()
    g = torch.Generator().manual_seed(2)
    for _ in range(200):
        x0 = toy_batch(128, g)
        loss = p.training_losses(net, x0, p.sample_timesteps(128, generator=g), generator=g)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    mse1, vb1 = evaluate()
    assert mse1 < 0.7 * mse0, (mse0, mse1)
    assert vb1 < vb0, (vb0, vb1)
    # and its samples move towards the blobs: within 0.35 of a centre are ~10% of N(0, I) draws, ~50% here after
    # only 200 steps (clipping x̂_0 to [-1, 1] tames the cosine schedule's 1/√ᾱ at the noisiest step)
    x = ddim_sample(p.respaced(25), net, (512, 2), generator=torch.Generator().manual_seed(3), clip_denoised=True)
    dist = torch.cdist(x, torch.tensor([[0.5, 0.5], [-0.5, -0.5]])).min(1).values
    assert (dist < 0.35).float().mean() > 0.3
