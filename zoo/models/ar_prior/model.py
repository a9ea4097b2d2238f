"""unCLIP's autoregressive prior (the paper's ablation): caption -> PCA bucket codes of the CLIP image embedding.

Plain PyTorch (no Lightning). The network is the generic pre-LN ``zoo.nn.transformer.Transformer`` with a dense
causal mask, plus its embeddings and two heads; the sampler reuses ``zoo.nn.sampling``'s ``filter_logits`` (top-k /
top-p) and ``gumbel_pick`` and ``zoo.nn.guidance.guide`` (classifier-free guidance), in a small KV-cached loop.

Sequence (T = text_len caption tokens, K = number of kept PCA components, ``EmbeddingPCA``)::

    position : 0 .. T-1          T                     T+1             T+2 .. T+K
    input    : caption tokens    CLIP text embedding   dot-product     c_0 .. c_{K-2}
                                 (projected)           bin token
    predicts :  -                dot-product bin       c_0             c_1 .. c_{K-1}

- caption tokens: the CLIP token ids of the batch (``clip_text_tokens``, right-padded with ``pad_id`` to
  text_len), token embedding + learned position.
- CLIP text embedding z_t: a linear projection, plus a learned position vector.
- dot-product token: the bin of z_t · z_i (``ScalarBins``, equal-mass bins of the training dot products, ids
  ordered by value). Training: the true bin, predicted from position T (a CE term, so the model learns
  p(bin | caption)). Sampling: drawn from the UPPER part of that predicted distribution -- the bins at or above its
  ``dot_quantile`` quantile (0.5: the paper's "top half"; it swept 50/70/85/95% and kept 50%) -- then fed back.
- codes: the PCA bucket ids in decreasing-variance order; ONE shared code embedding and ONE head (bucket id b means
  "training quantile b/n_buckets" for every component under quantile bucketing) plus a learned position per
  component.
- null caption (classifier-free guidance): every caption token -> ``pad_id`` AND the text-embedding token -> a learned
  ``null_cond`` vector; the dot token is kept (it is the sampling control, fed identically to both streams).

Loss: cross-entropy averaged over the K + 1 predictions (dot bin and codes); ``dot_loss`` / ``code_loss`` reported.

Presets (parameter counts measured on the meta device, tests/models/test_ar_prior.py):
    tiny    dim 64, 2 layers, 4 x 16 heads, text_len 32, CLIP dim 32 (zoo-clip-tiny), 256 buckets, 16 dot bins:
            3,303,424 parameters (3,162,112 of them the 49408-token caption embedding).
    shapes  dim 128, 4 layers, 4 x 32 heads (the diffusion prior's shapes size), text_len 48, CLIP dim 128
            (zoo-clip-shapes), 1024 buckets, 64 dot bins: 7,435,520 parameters (6,324,224 of them the caption
            embedding; 0.8M in the transformer).
    paper   the diffusion prior's Table 3 transformer, width 2048, depth 24, 32 heads (x 64), text_len 77 (the
            paper CLIP's context; see below), CLIP dim 1024 (ViT-H/16), 1024 buckets, 64 dot bins: 1,318,606,848
            parameters ("1B" in Table 3).
            Table 3 gives the paper's AR prior as a text encoder of that same shape (2048 / 24 / 32, context 256)
            plus a separate latent decoder (width 1664, depth 24, 26 heads, context 384); here caption and codes
            share one decoder-only stream, as the diffusion prior does, so the 2048 / 24 / 32 shape is the one kept.
            The number of dot-product bins is not published (64 is our choice). Table 3's text context 256 is its
            priors' own caption tokenizer's; here both priors read the one CLIP's tokens (``clip_text_tokens``,
            ViT-H-14's 77, as the diffusion prior's paper preset), so 256 only added 179 positions that are always
            pad.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.models.presets import check_dropout, check_sizes, resolve_preset
from zoo.nn.guidance import guide
from zoo.nn.sampling import filter_logits, gumbel_pick
from zoo.nn.transformer import KVCache, Transformer, gpt2_init_


@dataclass
class ARPriorConfig:
    dim: int = 256
    n_layers: int = 8
    n_heads: int = 8
    head_dim: int = 32
    mlp_ratio: int = 4
    dropout: float = 0.0
    text_len: int = 48  # caption tokens (CLIP ids), right-padded with pad_id; CLIP's context length
    text_vocab: int = 49408  # open_clip's BPE
    pad_id: int = 0  # open_clip pads with 0
    embed_dim: int = 128  # CLIP embedding width D (also the most PCA components there can be)
    n_buckets: int = 1024  # buckets per PCA component (paper: 1024)
    n_dot_bins: int = 64  # bins of the text-image dot product

    def __post_init__(self):
        # 0 layers / heads / width built and trained a prior without blocks, attention or a stream without a word;
        # one bucket per component quantises every embedding to the same codes
        sizes = ("dim", "n_layers", "n_heads", "head_dim", "mlp_ratio", "text_len", "text_vocab", "embed_dim")
        check_sizes(self, (*sizes, "n_dot_bins"), "AR prior")
        check_sizes(self, ("n_buckets",), "AR prior", least=2)
        check_dropout(self)

    @property
    def max_len(self) -> int:  # longest input: T caption + text embedding + dot token + (D - 1) codes
        return self.text_len + 1 + self.embed_dim


PRESETS: dict[str, ARPriorConfig] = {
    "tiny": ARPriorConfig(
        dim=64, n_layers=2, n_heads=4, head_dim=16, text_len=32, embed_dim=32, n_buckets=256, n_dot_bins=16
    ),
    # the shapes CLIP (zoo-clip-shapes: 128-d, 48-token context); the diffusion prior's shapes transformer size, so
    # the two priors are compared at equal width / depth (as the paper compares them at 1B each)
    "shapes": ARPriorConfig(
        dim=128, n_layers=4, n_heads=4, head_dim=32, text_len=48, embed_dim=128, n_buckets=1024, n_dot_bins=64
    ),
    # unCLIP Table 3: the priors' transformer is 2048 wide, 24 deep, 32 heads; CLIP ViT-H/16 (1024-d). text_len is the
    # paper CLIP's context (77, the diffusion prior's too): the captions are that CLIP's tokens (zoo-embed's
    # clip_text_tokens), so Table 3's 256 (its own caption tokenizer's context) left 179 positions always pad
    "paper": ARPriorConfig(
        dim=2048, n_layers=24, n_heads=32, head_dim=64, text_len=77, embed_dim=1024, n_buckets=1024, n_dot_bins=64
    ),
}

PAPER_PARAMS = 1_318_606_848  # measured: sum(p.numel()) of ARPrior(PRESETS["paper"]) on the meta device


def build_config(preset: str = "shapes", net: Optional[dict[str, Any]] = None) -> ARPriorConfig:
    return resolve_preset(PRESETS, ARPriorConfig, preset, net, "AR prior")


class ARPrior(nn.Module):
    """The AR prior's network: embeddings, the generic causal ``Transformer``, the dot-bin and code heads."""

    def __init__(self, cfg: ARPriorConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.text_emb = nn.Embedding(cfg.text_vocab, d)
        self.text_pos = nn.Parameter(torch.empty(cfg.text_len, d))
        self.cond_proj = nn.Linear(cfg.embed_dim, d)  # CLIP text embedding -> one token
        self.null_cond = nn.Parameter(torch.empty(d))  # the text-embedding token of the null caption
        self.cond_pos = nn.Parameter(torch.empty(2, d))  # positions T (text embedding) and T + 1 (dot token)
        self.dot_emb = nn.Embedding(cfg.n_dot_bins, d)
        self.code_emb = nn.Embedding(cfg.n_buckets, d)  # shared by every component
        self.code_pos = nn.Parameter(torch.empty(cfg.embed_dim, d))  # one per PCA component
        self.transformer = Transformer(d, cfg.n_layers, cfg.n_heads, cfg.head_dim, cfg.mlp_ratio, cfg.dropout)
        self.dot_head = nn.Linear(d, cfg.n_dot_bins, bias=False)
        self.code_head = nn.Linear(d, cfg.n_buckets, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:  # GPT-2 style (zoo.nn.transformer.gpt2_init_)
        gpt2_init_(self, self.transformer, (self.text_pos, self.null_cond, self.cond_pos, self.code_pos))

    # ------------------------------------------------------------------------------------------- embeddings
    def embed_prefix(
        self, text_tokens: torch.Tensor, text_emb: torch.Tensor, drop: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """caption tokens (B, T), CLIP text embedding (B, D), drop (B,) bool (null caption) -> (B, T + 1, dim)."""
        c = self.cfg
        if text_tokens.shape[1] != c.text_len:
            raise ValueError(f"caption has {text_tokens.shape[1]} tokens; the model takes text_len={c.text_len}")
        if drop is not None:
            text_tokens = torch.where(drop[:, None], torch.full_like(text_tokens, c.pad_id), text_tokens)
        tok = self.text_emb(text_tokens) + self.text_pos  # (B, T, dim)
        cond = self.cond_proj(text_emb.to(self.cond_proj.weight.dtype))  # (B, dim)
        if drop is not None:
            cond = torch.where(drop[:, None], self.null_cond.to(cond.dtype).expand_as(cond), cond)
        return torch.cat([tok, (cond + self.cond_pos[0])[:, None]], 1)

    def embed_dot(self, dot_bins: torch.Tensor) -> torch.Tensor:
        """(B,) -> (B, 1, dim)."""
        return (self.dot_emb(dot_bins) + self.cond_pos[1])[:, None]

    def embed_codes(self, codes: torch.Tensor, start: int = 0) -> torch.Tensor:
        """codes (B, n) of components start .. start + n - 1 -> (B, n, dim)."""
        return self.code_emb(codes) + self.code_pos[start : start + codes.shape[1]]

    def hidden(self, x: torch.Tensor, cache: Optional[KVCache] = None, start_pos: int = 0) -> torch.Tensor:
        return self.transformer(x, [None] * self.cfg.n_layers, cache, start_pos)  # None: dense causal

    def new_cache(self, batch: int, n_codes: int, dtype: Optional[torch.dtype] = None, device=None) -> KVCache:
        c, p = self.cfg, self.text_pos
        return KVCache(
            batch, c.n_layers, c.n_heads, c.text_len + 1 + n_codes, c.head_dim, dtype or p.dtype, device or p.device
        )

    # ------------------------------------------------------------------------------------------- training
    def forward(
        self,
        text_tokens: torch.Tensor,
        text_emb: torch.Tensor,
        dot_bins: torch.Tensor,
        codes: torch.Tensor,
        drop: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (dot_logits (B, n_dot_bins), code_logits (B, K, n_buckets)); code_logits[:, j] predicts codes[:, j]."""
        k = codes.shape[1]
        if not 1 <= k <= self.cfg.embed_dim:
            raise ValueError(f"got {k} codes per embedding; the model takes 1 .. embed_dim={self.cfg.embed_dim}")
        x = torch.cat(
            [self.embed_prefix(text_tokens, text_emb, drop), self.embed_dot(dot_bins), self.embed_codes(codes[:, :-1])],
            1,
        )  # (B, T + 1 + K, dim)
        h = self.hidden(x)
        t = self.cfg.text_len
        return self.dot_head(h[:, t]), self.code_head(h[:, t + 1 :])

    def loss(
        self,
        text_tokens: torch.Tensor,
        text_emb: torch.Tensor,
        dot_bins: torch.Tensor,
        codes: torch.Tensor,
        drop: Optional[torch.Tensor] = None,
    ) -> dict[str, torch.Tensor]:
        dot_logits, code_logits = self(text_tokens, text_emb, dot_bins, codes, drop)
        up = lambda x: x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # CE in >= fp32
        dot_loss = F.cross_entropy(up(dot_logits), dot_bins)
        code_loss = F.cross_entropy(up(code_logits).flatten(0, 1), codes.flatten())
        k = codes.shape[1]
        with torch.no_grad():
            acc = (code_logits.argmax(-1) == codes).float().mean()
        return {
            "loss": (k * code_loss + dot_loss) / (k + 1),
            "code_loss": code_loss,
            "dot_loss": dot_loss,
            "code_acc": acc,
        }


# ------------------------------------------------------------------------------------------------ sampling
def upper_quantile_mask(logits: torch.Tensor, q: float) -> torch.Tensor:
    """Bool mask (B, V) of the bins at or above the q-quantile of softmax(logits) with bins ordered by value: bin b is
    kept iff P(bin <= b) > q (so the bin where the CDF crosses q is kept, and at least one bin always is). For q = 0.5
    this is the paper's "top half of the distribution" of the dot product. ``q`` in [0, 1); the comparison is against
    q times the summed mass, so float rounding of the CDF's last value (1 − 1e-16) cannot empty the mask."""
    if not 0.0 <= q < 1.0:
        raise ValueError(f"dot_quantile={q!r}; expected a number in [0, 1) (0.5: the paper's upper half)")
    cdf = logits.double().softmax(-1).cumsum(-1)
    return cdf > q * cdf[..., -1:]


@torch.no_grad()
def sample_codes(
    model: ARPrior,
    text_tokens: torch.Tensor,
    text_emb: torch.Tensor,
    n_codes: int,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    guidance_scale: float = 1.0,
    dot_quantile: Optional[float] = 0.5,
    dot_bins: Optional[torch.Tensor] = None,
    use_cache: bool = True,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample (codes (B, n_codes), dot_bins (B,)) for captions text_tokens (B, T) and CLIP text embeddings (B, D).

    The dot bin is drawn from the (guided) predicted distribution restricted to its upper part
    (``upper_quantile_mask`` with ``dot_quantile``; None or 0 = unrestricted), unless ``dot_bins`` is given. Every draw
    goes through ``filter_logits`` (top-k / top-p, after ``temperature``) and the Gumbel-max ``gumbel_pick`` of
    ``zoo.nn.sampling`` (noise from ``generator``, the same draws in the cached and uncached paths).
    ``guidance_scale != 1`` runs the null-caption stream alongside ([cond ; uncond] as one batch of 2B) and guides
    every logit with ``zoo.nn.guidance.guide`` (exactly the conditional logits at scale 1). ``use_cache=False``
    recomputes the whole prefix at every step (the reference the KV cache is tested against).
    """
    if dot_quantile is not None and not 0.0 <= dot_quantile < 1.0:  # 1 emptied the mask: the LOWEST bin was drawn
        raise ValueError(f"dot_quantile={dot_quantile!r}; expected None or a number in [0, 1) (0.5: the upper half)")
    b = text_tokens.shape[0]
    t = model.cfg.text_len
    device = text_tokens.device
    guided = guidance_scale != 1.0
    streams = 2 if guided else 1
    tokens = text_tokens.repeat(streams, 1)
    emb = text_emb.repeat(streams, 1)
    drop = None
    if guided:
        drop = torch.zeros(2 * b, dtype=torch.bool, device=device)
        drop[b:] = True

    def pick(logits: torch.Tensor, upper: Optional[float] = None) -> torch.Tensor:  # (streams B, V) -> (B,)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        if guided:
            cond, uncond = logits.chunk(2)
            logits = guide(uncond, cond, guidance_scale)
        if upper:
            logits = logits.masked_fill(~upper_quantile_mask(logits, upper), float("-inf"))
        logits = filter_logits(logits / temperature if temperature > 0 else logits, top_k, top_p)
        return gumbel_pick(logits, 1.0 if temperature > 0 else 0.0, generator)

    codes = torch.zeros(b, n_codes, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:
        prefix = model.embed_prefix(tokens, emb, drop)  # (streams B, T + 1, dim)
        cache = model.new_cache(streams * b, n_codes, device=device) if use_cache else None
        h = model.hidden(prefix, cache)
        dot = dot_bins.to(device).long() if dot_bins is not None else pick(model.dot_head(h[:, -1]), dot_quantile)
        dot_tok = model.embed_dot(dot.repeat(streams))
        if use_cache:
            logits = model.code_head(model.hidden(dot_tok, cache, t + 1)[:, -1])
            for j in range(n_codes):
                codes[:, j] = pick(logits)
                if j + 1 < n_codes:  # feed c_j at position T + 2 + j; its output predicts c_{j+1}
                    x = model.embed_codes(codes[:, j : j + 1].repeat(streams, 1), start=j)
                    logits = model.code_head(model.hidden(x, cache, t + 2 + j)[:, -1])
        else:
            for j in range(n_codes):
                x = torch.cat([prefix, dot_tok, model.embed_codes(codes[:, :j].repeat(streams, 1))], 1)
                codes[:, j] = pick(model.code_head(model.hidden(x)[:, -1]))
    finally:
        model.train(was_training)
    return codes, dot
