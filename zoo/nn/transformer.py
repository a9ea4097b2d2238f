"""DALL·E 1 stage-2 transformer: a decoder-only transformer over [text BPE tokens ; image tokens], torch only.

Pieces (small, one job each):
- ``KVCache``: PREALLOCATED keys/values (n_layers, B, heads, max_len, head_dim), written in place at ``start_pos``
  (no growing ``torch.cat``); attention reads the view ``[:start_pos + n]``.
- ``Transformer``: pre-LN blocks (LN -> attention -> residual, LN -> GELU MLP x4 -> residual) with attention through
  ``F.scaled_dot_product_attention`` and one boolean mask per layer (True = may attend). Masks are the FULL
  (L, L) masks of the stream; the transformer takes rows ``[start_pos, start_pos + n)`` and columns
  ``[0, start_pos + n)``, so one-token-at-a-time decoding uses exactly the rows of training's masks.
- ``DalleTransformer``: embeddings, masks per layer (``zoo.nn.sparse_masks``), two output heads, the loss.

Sequence layout (input positions 0 .. T + N - 2, with T = text_len and N = grid_h * grid_w)::

    input   : text_0 .. text_{T-1}, img_0 .. img_{N-2}
    predicts: text_1 .. text_{T-1}, img_0 .. img_{N-1}

There is no extra start-of-image token: the last text position (T - 1) predicts the first image token, and the
input at position T + p is image token p predicting image token p + 1. text_0 is not predicted (tokenizers put a
start token there). Masks are built over T + N positions (the last row is simply never used).

Embeddings: text token embedding, except that a text position holding ``pad_id`` uses its own learned pad vector
(``text_pad_emb[i]`` for position i, as in the paper: "each text position has its own learned padding token");
1-D learned text position embedding; image token embedding plus learned row and column embeddings (2-D).

Output restriction: two heads. Text positions (0 .. T - 2) go through ``text_head`` (text vocabulary only), image
positions (T - 1 .. T + N - 2) through ``image_head`` (image vocabulary only); a text position therefore cannot put
probability on an image token or vice versa (equivalent to one joint head with -inf masking, without the waste).

Loss: cross-entropy on text and image predictions, ``loss = w * text_loss + (1 - w) * image_loss`` with
w = ``loss_text_weight`` (paper: 1/8 text, 7/8 image). Text targets that are pads are included by default
(``text_loss_on_pad``), as the paper's fixed 256-token text stream is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from zoo.nn.sparse_masks import dalle_mask, layer_pattern


# --------------------------------------------------------------------------------------------------- KV cache
class KVCache:
    """Preallocated per-layer keys and values: ``k``, ``v`` of shape (n_layers, B, H, max_len, D)."""

    def __init__(self, batch: int, n_layers: int, n_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device=None):
        shape = (n_layers, batch, n_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len

    def update(self, layer: int, start_pos: int, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, H, n, D) at [start_pos, start_pos + n) in place; return views of [0, start_pos + n)."""
        end = start_pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: positions up to {end} > max_len {self.max_len}")
        self.k[layer, :, :, start_pos:end] = k
        self.v[layer, :, :, start_pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


# -------------------------------------------------------------------------------------------------- blocks
class SelfAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int, head_dim: int, dropout: float = 0.0):
        super().__init__()
        self.n_heads, self.head_dim, self.dropout = n_heads, head_dim, dropout
        self.qkv = nn.Linear(dim, 3 * n_heads * head_dim)
        self.proj = nn.Linear(n_heads * head_dim, dim)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor], cache: Optional[KVCache] = None,
                layer: int = 0, start_pos: int = 0) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, n, D)
        if cache is not None:
            k, v = cache.update(layer, start_pos, k, v)  # (B, H, start_pos + n, D)
            k, v = k.to(q.dtype), v.to(q.dtype)  # cache may be fp32 under bf16 autocast
        elif start_pos != 0:
            raise ValueError("start_pos > 0 needs a KVCache holding the earlier positions")
        end = start_pos + n
        if mask is None:  # dense causal
            mask = torch.ones(end, end, dtype=torch.bool, device=x.device).tril()
        m = mask[start_pos:end, :end]  # the rows of the full mask for the new positions, (n, start_pos + n)
        dropout_p = self.dropout if self.training else 0.0
        if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
            # CPU flash kernel is slow in bf16 with a mask (measured 2.3x slower fwd+bwd than MATH at L=111)
            with sdpa_kernel(SDPBackend.MATH):
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=m, dropout_p=dropout_p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=m, dropout_p=dropout_p)  # (B, H, n, D)
        return self.proj(y.transpose(1, 2).reshape(b, n, self.n_heads * self.head_dim))


class Block(nn.Module):
    def __init__(self, dim: int, n_heads: int, head_dim: int, mlp_ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, n_heads, head_dim, dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mask, cache=None, layer=0, start_pos=0):
        x = x + self.drop(self.attn(self.ln1(x), mask, cache, layer, start_pos))
        return x + self.drop(self.mlp(self.ln2(x)))


class Transformer(nn.Module):
    """Pre-LN decoder stack with a final LayerNorm. ``forward(x_emb (B, n, dim), layer_masks, cache, start_pos)``
    processes positions [start_pos, start_pos + n); with a cache they attend to every cached position before them
    (subject to each layer's mask). ``layer_masks``: one full (>= L, >= L) bool mask per layer (None = causal)."""

    def __init__(self, dim: int, n_layers: int, n_heads: int, head_dim: int, mlp_ratio: int = 4,
                 dropout: float = 0.0):
        super().__init__()
        self.dim, self.n_layers, self.n_heads, self.head_dim = dim, n_layers, n_heads, head_dim
        self.blocks = nn.ModuleList(Block(dim, n_heads, head_dim, mlp_ratio, dropout) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(dim)

    def forward(self, x_emb: torch.Tensor, layer_masks: Sequence[Optional[torch.Tensor]],
                cache: Optional[KVCache] = None, start_pos: int = 0) -> torch.Tensor:
        if len(layer_masks) != self.n_layers:
            raise ValueError(f"need one mask per layer ({self.n_layers}), got {len(layer_masks)}")
        x = x_emb
        for i, (block, mask) in enumerate(zip(self.blocks, layer_masks)):
            x = block(x, mask, cache, i, start_pos)
        return self.ln_f(x)


# ---------------------------------------------------------------------------------------------- DALL·E model
@dataclass
class DalleTransformerConfig:
    dim: int = 256
    n_layers: int = 8
    n_heads: int = 8
    head_dim: int = 32
    text_len: int = 48
    text_vocab: int = 1024
    image_vocab: int = 512
    grid_h: int = 8
    grid_w: int = 8
    conv_kernel: int = 11
    pattern: str = "paper"  # sparse_masks.PATTERNS: paper | full | row | column | conv
    dropout: float = 0.0
    loss_text_weight: float = 1 / 8
    pad_id: int = 0
    mlp_ratio: int = 4
    text_loss_on_pad: bool = True

    @property
    def image_len(self) -> int:
        return self.grid_h * self.grid_w

    @property
    def seq_len(self) -> int:  # mask size; the model's inputs are one shorter
        return self.text_len + self.image_len


PRESETS: dict[str, DalleTransformerConfig] = {
    "tiny": DalleTransformerConfig(dim=64, n_layers=4, n_heads=4, head_dim=16, text_len=8, text_vocab=64,
                                   image_vocab=32, grid_h=4, grid_w=4, conv_kernel=3),
    "shapes": DalleTransformerConfig(dim=256, n_layers=8, n_heads=8, head_dim=32, text_len=48, text_vocab=1024,
                                     image_vocab=512, grid_h=8, grid_w=8, conv_kernel=5),
    # Ramesh et al. 2021: 64 layers, 62 heads x 64 = 3968 wide, 256 BPE tokens (16384) + 32x32 image tokens (8192)
    "paper": DalleTransformerConfig(dim=3968, n_layers=64, n_heads=62, head_dim=64, text_len=256, text_vocab=16384,
                                    image_vocab=8192, grid_h=32, grid_w=32, conv_kernel=11),
}


def make_config(preset: str = "shapes", **overrides) -> DalleTransformerConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown DALL·E transformer preset {preset!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[preset], **overrides)


class DalleTransformer(nn.Module):
    def __init__(self, cfg: DalleTransformerConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.text_emb = nn.Embedding(cfg.text_vocab, d)
        self.text_pad_emb = nn.Parameter(torch.empty(cfg.text_len, d))  # one learned pad vector per text position
        self.text_pos = nn.Parameter(torch.empty(cfg.text_len, d))
        self.image_emb = nn.Embedding(cfg.image_vocab, d)
        self.image_row = nn.Parameter(torch.empty(cfg.grid_h, d))
        self.image_col = nn.Parameter(torch.empty(cfg.grid_w, d))
        self.transformer = Transformer(d, cfg.n_layers, cfg.n_heads, cfg.head_dim, cfg.mlp_ratio, cfg.dropout)
        self.text_head = nn.Linear(d, cfg.text_vocab, bias=False)
        self.image_head = nn.Linear(d, cfg.image_vocab, bias=False)
        self.layer_kinds = layer_pattern(cfg.n_layers, cfg.pattern)
        for kind in sorted(set(self.layer_kinds)):  # one (L, L) buffer per distinct kind, shared by its layers
            self.register_buffer(f"mask_{kind}", dalle_mask(kind, cfg.text_len, cfg.grid_h, cfg.grid_w,
                                                            cfg.conv_kernel), persistent=False)
        self.reset_parameters()

    def reset_parameters(self):  # GPT-2 style: N(0, 0.02); residual output projections scaled by 1/sqrt(2 L)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        for blk in self.transformer.blocks:
            for lin in (blk.attn.proj, blk.mlp[2]):
                nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * self.cfg.n_layers))
        for p in (self.text_pad_emb, self.text_pos, self.image_row, self.image_col):
            nn.init.normal_(p, std=0.02)

    # -- pieces
    def layer_masks(self) -> list[torch.Tensor]:
        return [getattr(self, f"mask_{k}") for k in self.layer_kinds]

    def embed(self, text: Optional[torch.Tensor] = None, image: Optional[torch.Tensor] = None,
              image_start: int = 0) -> torch.Tensor:
        """Embeddings of [text (B, T) ; image (B, n) at raster positions image_start ..] -> (B, T + n, dim).
        Either part may be None (decoding feeds one image token at a time)."""
        parts = []
        if text is not None:
            t = text.shape[1]
            if t != self.cfg.text_len:
                raise ValueError(f"text has {t} tokens, the model expects text_len={self.cfg.text_len}")
            tok = self.text_emb(text)  # (B, T, d)
            pad = self.text_pad_emb.to(tok.dtype).expand_as(tok)
            parts.append(torch.where((text == self.cfg.pad_id).unsqueeze(-1), pad, tok) + self.text_pos)
        if image is not None and image.shape[1] > 0:
            idx = torch.arange(image_start, image_start + image.shape[1], device=image.device)
            pos = self.image_row[idx // self.cfg.grid_w] + self.image_col[idx % self.cfg.grid_w]  # (n, d)
            parts.append(self.image_emb(image) + pos)
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def new_cache(self, batch: int, dtype: Optional[torch.dtype] = None, device=None) -> KVCache:
        p = self.text_pos
        c = self.cfg
        return KVCache(batch, c.n_layers, c.n_heads, c.seq_len, c.head_dim, dtype or p.dtype, device or p.device)

    def hidden(self, x_emb: torch.Tensor, cache: Optional[KVCache] = None, start_pos: int = 0) -> torch.Tensor:
        return self.transformer(x_emb, self.layer_masks(), cache, start_pos)

    # -- training
    def forward(self, text: torch.Tensor, image: torch.Tensor):
        """text (B, T), image (B, h, w) or (B, N) -> (text_logits (B, T-1, text_vocab), image_logits (B, N,
        image_vocab)); text_logits[:, i] predicts text[:, i+1], image_logits[:, p] predicts image token p."""
        image = image.flatten(1)
        h = self.hidden(self.embed(text, image[:, :-1]))  # (B, T + N - 1, d)
        t = self.cfg.text_len
        return self.text_head(h[:, : t - 1]), self.image_head(h[:, t - 1:])

    def loss(self, text: torch.Tensor, image: torch.Tensor) -> dict[str, torch.Tensor]:
        image = image.flatten(1)
        text_logits, image_logits = self(text, image)
        ignore = -100 if self.cfg.text_loss_on_pad else self.cfg.pad_id
        up = (lambda x: x.float() if x.dtype in (torch.float16, torch.bfloat16) else x)  # CE in >= fp32
        text_loss = F.cross_entropy(up(text_logits).flatten(0, 1), text[:, 1:].flatten(), ignore_index=ignore)
        image_loss = F.cross_entropy(up(image_logits).flatten(0, 1), image.flatten())
        w = self.cfg.loss_text_weight
        return {"loss": w * text_loss + (1 - w) * image_loss, "text_loss": text_loss, "image_loss": image_loss}

    # -- decoding
    def next_image_logits(self, text: Optional[torch.Tensor] = None, image: Optional[torch.Tensor] = None,
                          image_start: int = 0, cache: Optional[KVCache] = None, start_pos: int = 0) -> torch.Tensor:
        """Image logits (B, image_vocab) predicted at the LAST of the given positions. Uncached: pass the whole
        prefix (text, image[:, :p]) -> distribution of image token p. Cached: pass only the new positions with
        start_pos (= T + image_start for image-only chunks)."""
        h = self.hidden(self.embed(text, image, image_start), cache, start_pos)
        return self.image_head(h[:, -1])
