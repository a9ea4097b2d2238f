"""Shared builders for the network tests (no tests here; tests get ``perturb`` from the fixture of that name in
tests/conftest.py)."""

from __future__ import annotations

import torch
import torch.nn as nn


def perturb(net: nn.Module, std: float = 0.1, seed: int = 0) -> nn.Module:
    """Randomise the zero-initialised layers (output conv, ResBlock conv2, attention proj_out): a fresh net
    outputs zeros and passes no gradient back through them, which would make most tests vacuous."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return net


class WordTokenizer:
    """A stand-in text tokenizer: one id per word (4 + ``word_hash(word) % 60``), [SOT]=2 ... [EOT]=3, pads 0
    (enough for sampling tests)."""

    vocab_size, pad_id, sot_id, eot_id, context_length = 64, 0, 2, 3, 16

    def __init__(self, word_hash=hash):
        self.word_hash = word_hash

    def encode(self, captions):
        out = torch.zeros(len(captions), self.context_length, dtype=torch.long)
        for i, c in enumerate(captions):
            ids = [2, *[4 + (self.word_hash(w) % 60) for w in c.split()][:14], 3]
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def to_spec(self):
        return None


def sampling_lit(cls):
    """A tiny ``cls`` (``GlideLit`` or a subclass) seeded 0, its zero-initialised layers perturbed, with the
    ``WordTokenizer``, in eval mode."""
    torch.manual_seed(0)
    lit = cls(preset="tiny")
    perturb(lit.net)
    lit.text_tokenizer = WordTokenizer()
    return lit.eval()


def overfit(lit, batch, steps: int = 40, lr: float = 5e-3) -> tuple[float, float]:
    """The eval MSE of a GLIDE-like ``lit`` on ``batch`` (fixed timesteps and noise, so the two are comparable)
    before and after ``steps`` Adam steps on its training loss."""
    opt = torch.optim.Adam(lit.parameters(), lr=lr)

    def eval_loss():
        with torch.no_grad():
            return lit.forward_loss(batch, train=False, generator=torch.Generator().manual_seed(1))["mse"].item()

    start = eval_loss()
    for _ in range(steps):
        loss = lit.forward_loss(batch, train=True)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return start, eval_loss()


def fit(m, x, steps: int = 150, lr: float = 3e-3, pass_step: bool = False) -> tuple[float, float]:
    """``steps`` AdamW steps of an image tokenizer ``m`` on the batch ``x`` (``m.forward_loss(x[, step=i])``) -> the
    mean training MSE of the first 5 and of the last 5 steps."""
    opt = torch.optim.AdamW(m.parameters(), lr=lr)
    mses = []
    for step in range(steps):
        r = m.forward_loss(x, step=step) if pass_step else m.forward_loss(x)
        opt.zero_grad()
        r["loss"].backward()
        opt.step()
        mses.append(r["mse"].item())
    return sum(mses[:5]) / 5, sum(mses[-5:]) / 5
