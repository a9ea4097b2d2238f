"""Block-sparse attention for fixed boolean masks (DALL·E 1's row / column / conv patterns), torch only.

A dense boolean mask given to ``F.scaled_dot_product_attention`` costs as much as full attention: every (query, key)
score is computed, then most are thrown away. ``BlockSparseMask`` wraps such a mask (the FULL (L, L) bool mask of the
stream, True = may attend) and computes only what is needed, with the same result up to float rounding:

- **Training / prefill** (queries [0, n), keys [0, n)): positions are optionally reordered by ``perm`` (DALL·E's
  column layers use column-major image order, so that a column's allowed keys are contiguous), the queries are cut
  into blocks of ``block`` consecutive (reordered) positions, and for each block the union of the keys any of its
  queries may attend is gathered (``index_select``; text keys included). Blocks whose key counts are close are
  batched into one SDPA call over (block, gathered keys) with the mask restricted to them; padded key slots are
  masked out, padded query slots are dropped. The permutation is folded into the gather indices, so q / k / v are
  never permuted as a whole and the output is put back in place by one ``index_select``. Autograd goes through
  the gathers (their backward is ``index_add``), so gradients are those of the dense-mask attention.
- **Cached decoding** (one query row at ``start_pos``): only the allowed keys of that row are read from the cache:
  its all-allowed prefix (DALL·E: the text) and one strided range holding the rest (row: the last w + 1 image
  tokens; column: the grid column, step w; conv: the k x k window's bounding rows), both as views (a gather would
  copy, and copying keys costs as much as attending to them), with one softmax over the two score parts.
  Several rows at ``start_pos > 0`` (chunked prefill) use the block plan on those rows.

A plain causal mask (``tril``; DALL·E's ``full`` kind) runs SDPA with ``is_causal`` (training / prefill) or
without a mask (one decoding row): no plan, no mask read. Every other plan is computed once from the dense mask
(torch ops, milliseconds) and cached per (start_pos, n, device).
Where blocking would not save enough — the planned score count is above ``max_density`` of the dense one, or the
sequence is shorter than ``min_len`` — the dense-mask SDPA runs instead, so the wrapper is never much slower than
dense. With a ``key_padding_mask`` the dense path runs (DALL·E never passes one).

Written by hand: PyTorch's FlexAttention needs ``torch.compile`` (a C++ toolchain and compile time per shape) to be
fast on CPU, and xformers / FlashAttention block-sparse kernels are CUDA only (see bench/bench_sparse_attention.py).

Example::

    bs = BlockSparseMask(dalle_mask("row", 256, 32, 32), block=32)
    y = bs.attention(q, k, v)                       # q, k, v (B, H, n, D), n <= 1280 -> (B, H, n, D)
    y = bs.attention(q1, k_cache, v_cache, start_pos=p)   # one decoding row: q1 (B, H, 1, D), caches (B, H, p+1, D)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["BlockSparseMask", "column_major_perm", "ATTN_IMPLS"]

ATTN_IMPLS = ("dense", "block_sparse")


def column_major_perm(text_len: int, h: int, w: int, device=None) -> torch.Tensor:
    """(T + h*w,) long: new order -> old position. Text first (unchanged), then the image in column-major order, so
    DALL·E's column attention (same column, rows above) has contiguous allowed keys."""
    img = torch.arange(h * w, device=device).view(h, w).t().reshape(-1)  # column-major raster indices
    return torch.cat([torch.arange(text_len, device=device), text_len + img])


@dataclass
class _Group:
    """Query blocks sharing one SDPA call: G blocks of ``block`` queries, K gathered keys each."""

    q_idx: torch.Tensor  # (G * block,) query positions (rows of q; padded slots repeat a valid row)
    k_idx: torch.Tensor  # (G * K,) key positions (padded slots point at key 0 and are masked out)
    mask: Optional[torch.Tensor]  # (G, block, K) bool, or None when every entry is allowed
    shape: tuple[int, int, int]  # (G, block, K)
    _additive: Optional[torch.Tensor] = None

    def additive(self, dtype: torch.dtype) -> torch.Tensor:
        """(1, G, block, K) float mask: 0 where allowed, -inf elsewhere (what SDPA would build from the bool one on
        every call)."""
        if self._additive is None or self._additive.dtype != dtype:
            zero = torch.zeros((), dtype=dtype, device=self.mask.device)
            self._additive = torch.where(
                self.mask, zero, torch.tensor(float("-inf"), dtype=dtype, device=self.mask.device)
            )[None]
        return self._additive


@dataclass
class _Plan:
    groups: list[_Group]
    out_idx: torch.Tensor  # (n,) row of the concatenated group outputs holding each query's result
    density: float  # planned scores / dense scores


class BlockSparseMask:
    """A dense (L, L) bool mask plus its block-sparse execution plans.

    Args:
        dense: (L, L) bool, True = may attend (``zoo.nn.sparse_masks.dalle_mask``); kept as ``.dense`` for the
            dense path and for anything that needs the plain mask.
        perm: optional (L,) long permutation (new order -> old position) used to form query blocks; e.g.
            ``column_major_perm`` for column attention. It changes only which queries share a block.
        block: queries per block (DALL·E: one grid line, ``w`` for raster layers, ``h`` for column-major ones).
        max_density: run the dense path when the plan computes more than this fraction of the dense scores.
        min_len: run the dense path for sequences shorter than this (the gathers' overhead dominates).
    """

    def __init__(
        self,
        dense: torch.Tensor,
        perm: Optional[torch.Tensor] = None,
        block: int = 32,
        max_density: float = 0.45,
        min_len: int = 0,
    ):
        if dense.dim() != 2 or dense.shape[0] != dense.shape[1] or dense.dtype != torch.bool:
            raise ValueError(f"BlockSparseMask needs one (L, L) bool mask, got {tuple(dense.shape)} {dense.dtype}")
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self.dense = dense
        # a plain causal mask (DALL·E's ``full``): SDPA's own causal path beats any plan (no mask, half the blocks)
        self.causal = bool(torch.equal(dense, torch.ones_like(dense).tril()))
        self.perm = perm
        self.block = int(block)
        self.max_density = float(max_density)
        self.min_len = int(min_len)
        self._plans: dict[tuple, Optional[_Plan]] = {}
        self._spans: dict[str, list] = {}

    # ----------------------------------------------------------------------------------------------- plans
    def plan(self, start_pos: int, n: int, device) -> Optional[_Plan]:
        """The cached plan for query rows [start_pos, start_pos + n) over keys [0, start_pos + n), or None (dense)."""
        key = (start_pos, n, str(device))
        if key not in self._plans:
            self._plans[key] = self._make_plan(start_pos, n, torch.device(device))
        return self._plans[key]

    def _make_plan(self, s: int, n: int, device: torch.device) -> Optional[_Plan]:
        end = s + n
        if end < self.min_len:
            return None
        m = self.dense[s:end, :end].to(device)
        if s == 0 and self.perm is not None:  # reorder queries and keys together; indices mapped back below
            order = self.perm.to(device)
            order = order[order < n]  # the permutation restricted to the first n positions (keeps its order)
        else:
            order = torch.arange(s, end, device=device)
        local = order - s  # query rows of q (q holds positions [s, end))
        m = m[local]  # (n, end) rows in block order; keys still in original positions
        b = min(self.block, n)
        nb = math.ceil(n / b)
        pad = nb * b - n
        rows = torch.cat([local, local[-1:].expand(pad)])  # padded query slots repeat the last query
        mb = torch.cat([m, m[-1:].expand(pad, end)]).view(nb, b, end)  # (nb, b, end)
        need = mb.any(1)  # (nb, end): keys any query of the block may attend
        cnt = need.sum(1)  # (nb,)
        if (cnt == 0).any():
            raise ValueError("a query may attend no key (an all-False mask row); attention would be NaN")
        # group blocks with similar key counts: sorted by count, a new group when the count drops below 3/4
        by_cnt = torch.argsort(cnt, descending=True, stable=True).tolist()
        cnts = cnt.tolist()
        groups_b: list[list[int]] = []
        for i in by_cnt:
            if groups_b and cnts[i] >= 0.75 * cnts[groups_b[-1][0]]:
                groups_b[-1].append(i)
            else:
                groups_b.append([i])
        groups, slots, planned = [], [], 0
        for members in groups_b:
            sel = torch.tensor(members, device=device)
            k_len = cnts[members[0]]
            nd = need[sel]  # (G, end)
            # indices of the True entries, in key order, first k_len per block (padded with key 0)
            k_idx = torch.argsort((~nd).to(torch.int8), dim=1, stable=True)[:, :k_len]  # (G, K)
            valid = torch.arange(k_len, device=device)[None, :] < cnt[sel][:, None]  # (G, K)
            k_idx = torch.where(valid, k_idx, torch.zeros_like(k_idx))
            gm = torch.gather(mb[sel], 2, k_idx[:, None, :].expand(len(members), b, k_len))
            gm = gm & valid[:, None, :]  # (G, b, K)
            q_idx = rows.view(nb, b)[sel].reshape(-1)
            groups.append(_Group(q_idx, k_idx.reshape(-1), None if bool(gm.all()) else gm, (len(members), b, k_len)))
            slots.append(torch.arange(nb * b, device=device).view(nb, b)[sel].reshape(-1))
            planned += len(members) * b * k_len
        density = planned / float(n * end)
        if density > self.max_density:
            return None
        # output row of each query: concatenated group outputs are in `slots` order; slot j (< n) holds local[j]
        slot_of = torch.cat(slots)  # (nb * b,) slot index of each concatenated output row
        where = torch.empty(nb * b, dtype=torch.long, device=device)
        where[slot_of] = torch.arange(nb * b, device=device)  # slot -> concatenated row
        out_idx = torch.empty(n, dtype=torch.long, device=device)
        out_idx[local] = where[:n]  # query row -> concatenated row
        return _Plan(groups, out_idx, density)

    def row_spans(self, device) -> list[tuple[int, int, int, int, Optional[torch.Tensor]]]:
        """For each query row i (keys <= i): ``(a, lo, hi, step, sub)``: keys [0, a) are all allowed (DALL·E: the
        text), the others lie in the strided range ``lo:hi:step`` (row: a window; column: one grid column, step w;
        conv: the bounding window) and ``sub`` (bool, one per key of that range, or None when all are allowed) says
        which. Both ranges are views of the KV cache, so decoding reads only them and copies nothing."""
        key = str(device)
        if key not in self._spans:
            m = (self.dense & torch.ones_like(self.dense).tril()).cpu()
            lead = m.int().cumprod(1).sum(1).tolist()  # length of the all-allowed prefix of each row
            spans = []
            for i, a in enumerate(lead):
                rest = torch.nonzero(m[i, a : i + 1]).flatten()
                if rest.numel() == 0:
                    spans.append((a, 0, 0, 1, None))
                    continue
                rest = (rest + a).tolist()
                step = 0
                for x, y in zip(rest, rest[1:], strict=False):
                    step = math.gcd(step, y - x)
                step = max(step, 1)
                lo, hi = rest[0], rest[-1] + 1
                sub = m[i, lo:hi:step]
                spans.append((a, lo, hi, step, None if bool(sub.all()) else sub.to(device)))
            self._spans[key] = spans
        return self._spans[key]

    def _one_row(self, q, k, v, start_pos: int, dropout_p: float) -> torch.Tensor:
        """One decoding query over the allowed prefix and strided range of its keys (views: nothing copied); the
        two score parts share one softmax, so this is the masked attention of that row."""
        a, lo, hi, step, sub = self.row_spans(q.device)[start_pos]
        if not a and hi <= lo:  # the planned path's message (a bare torch.cat error on an empty list otherwise)
            raise ValueError(f"query row {start_pos} may attend no key (an all-False mask row); attention would be NaN")
        scale = q.shape[-1] ** -0.5
        scores, values = [], []
        if a:
            scores.append(q @ k[:, :, :a].transpose(-1, -2))  # (B, H, 1, a)
            values.append(v[:, :, :a])
        if hi > lo:
            sc = q @ k[:, :, lo:hi:step].transpose(-1, -2)  # (B, H, 1, m)
            if sub is not None:
                sc = sc.masked_fill(~sub, float("-inf"))
            scores.append(sc)
            values.append(v[:, :, lo:hi:step])
        # softmax in >= fp32: fp32 for half / bf16, the inputs' own dtype for fp64 (fp32 would round a float64
        # model's decoding to fp32, unlike the dense and planned paths)
        acc = torch.promote_types(q.dtype, torch.float32)
        p = torch.softmax(torch.cat(scores, -1) * scale, dim=-1, dtype=acc).to(v.dtype)
        if dropout_p > 0:
            p = F.dropout(p, dropout_p)
        if len(values) == 1:
            return p @ values[0]
        return p[..., :a] @ values[0] + p[..., a:] @ values[1]

    # ------------------------------------------------------------------------------------------- attention
    def attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        start_pos: int = 0,
        dropout_p: float = 0.0,
        key_padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """q (B, H, n, D) at positions [start_pos, start_pos + n); k, v (B, H, start_pos + n, D) -> (B, H, n, D),
        equal to SDPA with ``attn_mask = dense[start_pos:start_pos + n, :start_pos + n]``."""
        n, end = q.shape[2], k.shape[2]
        if end != start_pos + n:
            raise ValueError(f"keys cover {end} positions; expected start_pos + n = {start_pos + n}")
        if key_padding_mask is None and self.causal and (start_pos == 0 or n == 1):
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=n > 1)
        if key_padding_mask is None:
            if n == 1:
                if end >= self.min_len:
                    return self._one_row(q, k, v, start_pos, dropout_p)
            else:
                plan = self.plan(start_pos, n, q.device)
                if plan is not None:
                    return self._planned(plan, q, k, v, dropout_p)
        m = self.dense[start_pos:end, :end]
        if key_padding_mask is not None:
            m = m & key_padding_mask[:, None, None, :end].bool()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m, dropout_p=dropout_p)

    @staticmethod
    def _planned(plan: _Plan, q, k, v, dropout_p: float) -> torch.Tensor:
        bsz, h, _, d = q.shape
        outs = []
        for g in plan.groups:
            gn, b, kl = g.shape
            # 4-D with the blocks as the second dim, so the mask (1, G, b, K) broadcasts over B * H without a copy
            # and SDPA takes its fused CPU kernel (5-D inputs fall back to the slower math path)
            qg = q.index_select(2, g.q_idx).view(bsz * h, gn, b, d)
            kg = k.index_select(2, g.k_idx).view(bsz * h, gn, kl, d)
            vg = v.index_select(2, g.k_idx).view(bsz * h, gn, kl, d)
            m = None if g.mask is None else g.additive(q.dtype)
            y = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=m, dropout_p=dropout_p)  # (B*H, G, b, D)
            outs.append(y.view(bsz, h, gn * b, d))
        y = outs[0] if len(outs) == 1 else torch.cat(outs, 2)
        return y.index_select(2, plan.out_idx)
