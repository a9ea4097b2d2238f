"""A generic pre-LN transformer with a preallocated KV cache, torch only.

Reused by every sequence model of the zoo: the DALL·E 1 stream (``zoo.models.dalle.model.DalleTransformer`` adds
its embeddings, sparse masks and heads on top), the diffusion / AR priors, the GLIDE text encoder and the captioner.
No embeddings and no output head live here: callers embed their tokens and project the hidden states themselves.

Pieces (small, one job each):
- ``KVCache``: PREALLOCATED keys/values (n_layers, B, heads, max_len, head_dim), written in place at ``start_pos``
  (no growing ``torch.cat``); attention reads the view ``[:start_pos + n]``. ``copy_rows`` fills it from a smaller
  cache (a prefix computed once for several sequences that share it).
- ``SelfAttention``: multi-head attention through ``F.scaled_dot_product_attention`` with an optional boolean mask
  (True = may attend) and an optional key padding mask.
- ``Block``: LN -> attention -> residual, LN -> GELU MLP (x ``mlp_ratio``) -> residual.
- ``Transformer``: ``n_layers`` blocks and a final LayerNorm.

Masks. ``Transformer(..., causal=True)`` attends causally when no mask is given (SDPA's own ``is_causal`` path for a
fresh sequence, no mask at all for one cached decoding row); ``causal=False`` attends to every position (an
encoder). A given ``mask`` is the FULL (L, L) bool mask of the stream (or (B, 1, L, L) / (B, H, L, L)
per example), one for all layers or a sequence of one per layer; the attention takes rows
``[start_pos, start_pos + n)`` and columns ``[0, start_pos + n)``, so one-token-at-a-time decoding with a cache uses
exactly the rows of training's masks. ``key_padding_mask`` (B, L) bool (True = a real token) hides padded keys
and is combined with the mask. Every query must be allowed at least one key (an all-False row gives NaN).

Sparse masks that pay (``attn_impl``). A mask may also be a ``zoo.nn.block_sparse.BlockSparseMask`` (a dense (L, L)
bool mask plus its block-sparse plans): with ``Transformer(..., attn_impl="block_sparse")`` attention then computes
only the (query block, key) pairs that the mask allows, in training and in one-row cached decoding alike, with the
same results as the dense mask up to float rounding; plain (L, L) bool masks are wrapped automatically. With
``attn_impl="dense"`` (the default here) a ``BlockSparseMask`` is used through its dense mask.

Next-token prefill. ``forward(..., last_only=True)`` returns the last position's state only: the last block attends,
projects and runs its MLP for that position alone, while every position's keys and values are still computed (and
cached); what a sampler's prefill needs, for less work.

Example (a causal prior over already-embedded tokens)::

    net = Transformer(dim=256, n_layers=6, n_heads=8, head_dim=32)
    h = net(x)                                   # (B, L, 256), causal
    h = net(x, key_padding_mask=tokens != pad)   # causal and padded keys hidden
    enc = Transformer(256, 4, 8, 32, causal=False)(x, key_padding_mask=keep)   # bidirectional text encoder
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.nn.block_sparse import ATTN_IMPLS, BlockSparseMask
from zoo.precision import fp32_attention_preferred  # torch-only: the project's one place for bf16 kernel choices

__all__ = ["KVCache", "SelfAttention", "Block", "Transformer", "decode_linear"]


# --------------------------------------------------------------------------------------------------- KV cache
class KVCache:
    """Preallocated per-layer keys and values: ``k``, ``v`` of shape (n_layers, B, H, max_len, D)."""

    def __init__(
        self,
        batch: int,
        n_layers: int,
        n_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device=None,
    ):
        shape = (n_layers, batch, n_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.n_layers, self.n_heads, self.head_dim = n_layers, n_heads, head_dim

    def copy_rows(self, src: "KVCache", rows: torch.Tensor) -> None:
        """Sequence i of this cache := sequence ``rows[i]`` of ``src``, for ``src``'s first ``src.max_len``
        positions (a prefill computed once per distinct prefix, then shared)."""
        n = src.max_len
        self.k[:, :, :, :n] = src.k.index_select(1, rows)
        self.v[:, :, :, :n] = src.v.index_select(1, rows)

    def update(self, layer: int, start_pos: int, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, H, n, D) at [start_pos, start_pos + n) in place; return views of [0, start_pos + n)."""
        end = start_pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: positions up to {end} > max_len {self.max_len}")
        self.k[layer, :, :, start_pos:end] = k
        self.v[layer, :, :, start_pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


# ----------------------------------------------------------------------------------------- decoding linears
DECODE_ROWS = (3, 32)  # rows (tokens x sequences) for which decode_linear uses MKL's packed GEMM
# session (a decoding loop's KV cache) -> {linear: (key, weak ref to its weight, packed weight or None)}
_PACKED: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()
_MKL_PACKED_OK: Optional[bool] = None


def _mkl_packed_ok() -> bool:
    """Whether torch's MKL packed-GEMM linear (``torch.ops.mkl._mkl_linear``, what inductor's CPU freezing uses)
    exists and computes a linear layer in this build; checked once."""
    global _MKL_PACKED_OK
    if _MKL_PACKED_OK is None:
        try:
            w, x = torch.randn(8, 4), torch.randn(4, 4)
            packed = torch.ops.mkl._mkl_reorder_linear_weight(w, 4)
            ok = torch.allclose(torch.ops.mkl._mkl_linear(x, packed, w, None, 4), x @ w.t(), atol=1e-5)
        except Exception:  # no MKL in this build, or the private op changed: plain F.linear
            ok = False
        _MKL_PACKED_OK = bool(ok and torch.backends.mkl.is_available())
    return _MKL_PACKED_OK


def decode_linear(x: torch.Tensor, lin: nn.Linear, session: object = None) -> torch.Tensor:
    """``lin(x)``. For a few rows (``DECODE_ROWS``: one decoding step of a few sequences) of fp32 on the CPU
    without autograd or autocast, inside a decoding ``session``, through MKL's packed GEMM: the product runs ~2x
    faster than MKL's small-M GEMM on the (out, in) weight (measured at 4-16 rows x 512 -> 512..8192; a step of 4-8
    sequences is bound by reading the weights). Same values as ``lin(x)`` up to float rounding.

    ``session``: the decoding loop's ``KVCache`` (any weak-referenceable object that lives as long as the loop);
    None = plain ``lin(x)``. A weight is packed at its second use in a session (a one-off call does not pay for the
    packing) and the packed copy lives as long as the session. Why per session: a write through ``param.data``
    (Lightning's EMA swaps the average in and out with ``.data.copy_``) changes no version counter, storage or
    shape, so a cache that outlived the loop gave the next sampling call the previous weights; a new loop (a new
    KV cache) now always packs the weights as they are. Within a session an in-place update (version counter) or
    a replaced weight is still noticed."""
    w = lin.weight
    m = x.numel() // max(1, x.shape[-1])
    if (
        session is None
        or not DECODE_ROWS[0] <= m <= DECODE_ROWS[1]
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or w.dtype != torch.float32
        or torch.is_autocast_enabled("cpu")
        or (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad))
        or not _mkl_packed_ok()
    ):
        return lin(x)
    try:
        packs = _PACKED.setdefault(session, {})
    except TypeError:  # a session that cannot be weakly referenced: nothing to tie the packed copy to
        return lin(x)
    key = (m, w._version, w.data_ptr(), tuple(w.shape))
    hit = packs.get(lin)
    # the weak reference tells a replaced weight (a new Parameter) that happens to reuse the storage and version
    if hit is None or hit[0] != key or hit[1]() is not w:
        packs[lin] = (key, weakref.ref(w), None)  # first use: plain; packed if used again unchanged
        return lin(x)
    if hit[2] is None:
        hit = packs[lin] = (key, hit[1], torch.ops.mkl._mkl_reorder_linear_weight(w, m))
    return torch.ops.mkl._mkl_linear(x, hit[2], w, lin.bias, m)  # no autograd here (checked above)


# -------------------------------------------------------------------------------------------------- blocks
class SelfAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int, head_dim: int, dropout: float = 0.0):
        super().__init__()
        self.n_heads, self.head_dim, self.dropout = n_heads, head_dim, dropout
        self.qkv = nn.Linear(dim, 3 * n_heads * head_dim)
        self.proj = nn.Linear(n_heads * head_dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        mask: Optional[torch.Tensor],
        cache: Optional[KVCache] = None,
        layer: int = 0,
        start_pos: int = 0,
        causal: bool = True,
        key_padding_mask: Optional[torch.Tensor] = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """x (B, n, dim) at positions [start_pos, start_pos + n) -> (B, n, dim), or (B, 1, dim) for the last
        position only with ``last_only`` (keys and values of all n positions are still computed and cached).

        mask: the full (L, L) (or (B, 1|H, L, L)) bool mask, True = may attend; None = causal if ``causal`` else
        no mask. key_padding_mask: (B, >= start_pos + n) bool, True = a real key."""
        b, n, _ = x.shape
        q, k, v = decode_linear(x, self.qkv, cache).view(b, n, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out_dtype = q.dtype
        # CPU half-precision attention kernels are the slow ones (zoo.precision.fp32_attention_preferred): there the
        # attention runs in fp32, with autocast off around it (autocast would cast q, k, v back to bf16 for SDPA)
        fp32 = fp32_attention_preferred(q.device.type, q.dtype)
        attn_dtype = torch.float32 if fp32 else q.dtype
        if cache is not None:
            k, v = cache.update(layer, start_pos, k, v)  # (B, H, start_pos + n, D)
        q, k, v = q.to(attn_dtype), k.to(attn_dtype), v.to(attn_dtype)  # (the cache may be fp32 under bf16 autocast)
        in_fp32 = torch.autocast(x.device.type, enabled=False) if fp32 else contextlib.nullcontext()
        if cache is None and start_pos != 0:
            raise ValueError("start_pos > 0 needs a KVCache holding the earlier positions")
        end = start_pos + n
        if last_only and n > 1:  # one query: the last position
            q, start_pos, n = q[:, :, -1:], end - 1, 1
        dropout_p = self.dropout if self.training else 0.0
        if isinstance(mask, BlockSparseMask):  # only the allowed (query block, key) work; see zoo.nn.block_sparse
            with in_fp32:
                y = mask.attention(q, k, v, start_pos, dropout_p, key_padding_mask).to(out_dtype)  # (B, H, n, D)
            return decode_linear(y.transpose(1, 2).reshape(b, n, self.n_heads * self.head_dim), self.proj, cache)
        is_causal = False
        if mask is None and causal:  # dense causal
            if key_padding_mask is None and n > 1 and start_pos == 0:
                is_causal = True  # SDPA's own causal path: no mask to build or read
            elif n > 1 or key_padding_mask is not None:
                mask = torch.ones(end, end, dtype=torch.bool, device=x.device).tril()
            # one row (cached decoding) without padding: every key up to it is allowed, no mask
        m = None if mask is None else mask[..., start_pos:end, :end]  # rows for the new positions, (n, start_pos + n)
        if key_padding_mask is not None:
            kp = key_padding_mask[:, None, None, :end].bool()  # (B, 1, 1, start_pos + n)
            m = kp if m is None else m & kp
        with in_fp32:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=m, dropout_p=dropout_p, is_causal=is_causal)
        y = y.to(out_dtype)  # (B, H, n, D)
        return decode_linear(y.transpose(1, 2).reshape(b, n, self.n_heads * self.head_dim), self.proj, cache)


class Block(nn.Module):
    def __init__(self, dim: int, n_heads: int, head_dim: int, mlp_ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, n_heads, head_dim, dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mask, cache=None, layer=0, start_pos=0, causal=True, key_padding_mask=None, last_only=False):
        a = self.attn(self.ln1(x), mask, cache, layer, start_pos, causal, key_padding_mask, last_only)
        if a.shape[1] != x.shape[1]:  # last_only: the residual of the last position
            x = x[:, -a.shape[1] :]  # (a full-length slice would cost its backward a zero-filled copy of x)
        x = x + self.drop(a)
        h = decode_linear(self.mlp[1](decode_linear(self.ln2(x), self.mlp[0], cache)), self.mlp[2], cache)  # = mlp
        return x + self.drop(h)


class Transformer(nn.Module):
    """Pre-LN stack with a final LayerNorm: ``forward(x (B, n, dim), mask=None, cache=None, start_pos=0, *,
    key_padding_mask=None) -> (B, n, dim)`` processes positions [start_pos, start_pos + n); with a cache they attend
    to every cached position before them (subject to the mask). See the module docstring for the masks."""

    def __init__(
        self,
        dim: int,
        n_layers: int,
        n_heads: int,
        head_dim: int,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
        causal: bool = True,
        attn_impl: str = "dense",
    ):
        super().__init__()
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"unknown attn_impl {attn_impl!r}; valid: {ATTN_IMPLS}")
        self.dim, self.n_layers, self.n_heads, self.head_dim = dim, n_layers, n_heads, head_dim
        self.causal = causal
        self.attn_impl = attn_impl
        self._wrapped: dict = {}  # plain (L, L) masks wrapped as BlockSparseMask (attn_impl="block_sparse")
        self.blocks = nn.ModuleList(Block(dim, n_heads, head_dim, mlp_ratio, dropout) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(dim)

    def new_cache(self, batch: int, max_len: int, dtype: Optional[torch.dtype] = None, device=None) -> KVCache:
        """An empty cache for ``batch`` sequences of up to ``max_len`` positions (dtype/device of the weights)."""
        p = self.ln_f.weight
        return KVCache(batch, self.n_layers, self.n_heads, max_len, self.head_dim, dtype or p.dtype, device or p.device)

    def forward(
        self,
        x: torch.Tensor,
        mask: Union[None, torch.Tensor, BlockSparseMask, Sequence[Optional[torch.Tensor]]] = None,
        cache: Optional[KVCache] = None,
        start_pos: int = 0,
        *,
        key_padding_mask: Optional[torch.Tensor] = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """``mask``: None, one bool mask for every layer, or a sequence of one mask (or None) per layer.
        ``last_only``: return (B, 1, dim), the last position's state only; the last block then attends, projects
        and runs its MLP for that position alone (every position's keys / values are still computed and cached):
        a prefill that only needs the next-token distribution skips most of the last block's work."""
        if mask is None or isinstance(mask, (torch.Tensor, BlockSparseMask)):
            layer_masks = [mask] * self.n_layers
        else:
            layer_masks = list(mask)
            if len(layer_masks) != self.n_layers:
                raise ValueError(f"need one mask per layer ({self.n_layers}), got {len(layer_masks)}")
        layer_masks = [self._for_impl(m) for m in layer_masks]
        last = len(self.blocks) - 1
        for i, (block, m) in enumerate(zip(self.blocks, layer_masks)):
            x = block(x, m, cache, i, start_pos, self.causal, key_padding_mask, last_only and i == last)
        return self.ln_f(x)

    def _for_impl(self, m):
        """The mask as this stack's ``attn_impl`` uses it: a BlockSparseMask's dense mask for ``dense``; a plain
        (L, L) bool mask wrapped (once; cached by identity) for ``block_sparse``."""
        if isinstance(m, BlockSparseMask):
            return m if self.attn_impl == "block_sparse" else m.dense
        if self.attn_impl == "block_sparse" and m is not None and m.dim() == 2 and m.dtype == torch.bool:
            key = (m.data_ptr(), tuple(m.shape), str(m.device))
            hit = self._wrapped.get(key)
            if hit is None or hit.dense is not m:
                hit = self._wrapped[key] = BlockSparseMask(m, block=64)
            return hit
        return m


def gpt2_init_(root: nn.Module, transformer: Transformer, extra: Sequence[torch.Tensor] = ()) -> None:
    """GPT-2 initialisation of ``root`` (every Linear / Embedding ~ N(0, 0.02), biases 0), with the residual output
    projections of ``transformer``'s blocks scaled by 1/sqrt(2 L) so the residual stream's variance does not grow
    with depth, and the raw parameters in ``extra`` (learned positions, pad / null / query vectors) ~ N(0, 0.02).
    Skipped on the meta device (nothing to initialise when only counting parameters)."""
    import math

    if any(p.is_meta for p in root.parameters()):
        return
    for m in root.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    n_layers = len(transformer.blocks)
    for blk in transformer.blocks:
        for lin in (blk.attn.proj, blk.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * n_layers))
    for p in extra:
        nn.init.normal_(p, std=0.02)
