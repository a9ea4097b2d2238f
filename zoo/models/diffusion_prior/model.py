"""unCLIP's diffusion prior network (Ramesh et al. 2022, sec. 2.1): caption -> CLIP image embedding, plain PyTorch.

A decoder-only causal transformer (``zoo.nn.transformer.Transformer``) over the sequence::

    [ text_0 .. text_{L-1} ; text_emb ; time ; x_t ; query ]        (L + 4 positions, causal mask)
      encoded text tokens    CLIP text  t     noised    learned final
                             embedding        image emb query

The output of the final query position (the only one that sees everything) goes through a linear head and predicts
the UN-NOISED image embedding x0 (``GaussianDiffusion(model_mean_type="x0")``).

Encoded text tokens (``text_input``), a choice:
* ``"tokens"`` (default of ``tiny`` / ``shapes``): learned embeddings of the CLIP token ids (``clip_text_tokens``,
  always written by ``zoo-embed``); the prior's own causal transformer does the text encoding. Positions holding
  ``pad_id`` (open_clip pads with 0 after the end-of-text token) use a learned per-position pad vector, as DALL·E's
  transformer does, so no per-example key mask is needed.
* ``"encodings"`` (default of ``paper``, as in the paper and Karlo): the per-token outputs of CLIP's text tower
  (``clip_text_encodings`` (B, L, text_enc_dim) + ``clip_text_mask`` (B, L), ``zoo-embed text_encodings=true``)
  projected to the width; masked-out positions use the same learned pad vectors.
* ``"none"``: no text tokens, only the CLIP text embedding (an ablation; the sequence is 4 long).

Null condition (classifier-free guidance; the Lit drops the text 10% of the time): every text position takes its
learned pad vector (the "all pads" caption) and the text embedding is replaced by a learned ``null_text_emb``.

Inputs are in the diffusion's scaled units (the Lit multiplies CLIP embeddings by its ``embed_scale``); learned
positional embeddings are added to every position. Timesteps go through sinusoidal features and an MLP
(``zoo.nn.embeddings.TimestepEmbedder``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.models.presets import check_dropout, check_sizes, resolve_preset
from zoo.nn.embeddings import TimestepEmbedder
from zoo.nn.transformer import KVCache, Transformer, gpt2_init_

TEXT_INPUTS = ("tokens", "encodings", "none")


@dataclass
class DiffusionPriorConfig:
    clip_dim: int = 128  # CLIP embedding width (the diffused vector)
    dim: int = 256  # transformer width
    n_layers: int = 4
    n_heads: int = 4
    head_dim: int = 64
    mlp_ratio: int = 4
    dropout: float = 0.0
    text_input: str = "tokens"  # tokens | encodings | none (see the module docstring)
    text_len: int = 48  # CLIP context length (open_clip's tokenizer pads/truncates to it)
    text_vocab: int = 49408  # CLIP BPE vocabulary (text_input=tokens)
    text_enc_dim: int = 128  # width of CLIP's per-token text encodings (text_input=encodings)
    pad_id: int = 0  # open_clip's pad id (text_input=tokens)

    def __post_init__(self):
        # 0 layers / heads / width built and trained a prior without blocks, attention or a stream without a word; a
        # 0 text_len one that reads no caption tokens (text_input=none is that ablation, by name)
        sizes = ("clip_dim", "dim", "n_layers", "n_heads", "head_dim", "mlp_ratio", "text_vocab", "text_enc_dim")
        check_sizes(self, sizes + (("text_len",) if self.text_input != "none" else ()), "diffusion prior")
        check_dropout(self)

    @property
    def n_text(self) -> int:
        return 0 if self.text_input == "none" else self.text_len

    @property
    def seq_len(self) -> int:  # text tokens, text embedding, timestep, x_t, final query
        return self.n_text + 4


PRESETS: dict[str, DiffusionPriorConfig] = {
    "tiny": DiffusionPriorConfig(
        clip_dim=16, dim=32, n_layers=2, n_heads=2, head_dim=16, text_len=8, text_vocab=64, text_enc_dim=16
    ),
    # the shapes CLIP (zoo/models/clip/configs/zoo-clip-shapes.json): 128-d embeddings, 48-token context, width 128.
    # 7.2M parameters, 6.3M of them the CLIP-vocabulary token table (a sparse lookup); 0.8M in the transformer.
    "shapes": DiffusionPriorConfig(
        clip_dim=128, dim=128, n_layers=4, n_heads=4, head_dim=32, text_len=48, text_vocab=49408, text_enc_dim=128
    ),
    # unCLIP: "1B parameters" with ViT-H/16 CLIP (1024-d embeddings, text tower width 1024, 77-token context).
    # Width 2048 / 32 heads x 64, 24 blocks: the paper's appendix ("a Transformer with width 2048 and 24 blocks") and
    # Table 3 (2048 / 24 / 32 heads); 24 x 12 x 2048^2 = 1.2B, the size Table 3 rounds to 1B. Karlo (kakaobrain/karlo)
    # and diffusers' PriorTransformer use 20 layers, a departure not copied. Measured count: PAPER_PARAMS.
    "paper": DiffusionPriorConfig(
        clip_dim=1024,
        dim=2048,
        n_layers=24,
        n_heads=32,
        head_dim=64,
        text_input="encodings",
        text_len=77,
        text_vocab=49408,
        text_enc_dim=1024,
    ),
}

# Parameter count of the ``paper`` preset, measured on the meta device (tests/models/test_diffusion_prior.py).
PAPER_PARAMS = 1_225_718_784


def build_config(preset: str = "shapes", net: Optional[Mapping[str, Any]] = None) -> DiffusionPriorConfig:
    cfg = resolve_preset(PRESETS, DiffusionPriorConfig, preset, net, "diffusion prior")
    if cfg.text_input not in TEXT_INPUTS:
        from zoo.errors import ConfigError

        raise ConfigError(f"model.net.text_input={cfg.text_input!r}; choose one of {TEXT_INPUTS}")
    return cfg


@dataclass
class TextCache:
    """What a sampler reuses across steps for a batch of captions (``DiffusionPriorNet.text_cache``): the text
    positions' keys/values in every block but the last (``kv``) and the last block's ln1 outputs there (``h_last``
    (B, n_text, dim))."""

    kv: KVCache
    h_last: torch.Tensor


class DiffusionPriorNet(nn.Module):
    """forward(x_t (B, D), t (B,), text_emb (B, D), text_tokens=None (B, L), text_encodings=None (B, L, E),
    text_mask=None (B, L) bool, drop_text=None (B,) bool) -> predicted x0 (B, D). All embeddings in scaled units."""

    def __init__(self, cfg: DiffusionPriorConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        if cfg.text_input == "tokens":
            self.text_tok = nn.Embedding(cfg.text_vocab, d)
        elif cfg.text_input == "encodings":
            self.text_proj = nn.Linear(cfg.text_enc_dim, d)
        self.text_pad_emb = nn.Parameter(torch.empty(cfg.n_text, d))  # pads and the null caption, per position
        self.text_emb_proj = nn.Linear(cfg.clip_dim, d)
        self.null_text_emb = nn.Parameter(torch.empty(d))  # the CLIP text embedding of the null condition
        self.time_embed = TimestepEmbedder(d, d)
        self.x_proj = nn.Linear(cfg.clip_dim, d)
        self.query = nn.Parameter(torch.empty(d))
        self.pos = nn.Parameter(torch.empty(cfg.seq_len, d))
        self.transformer = Transformer(d, cfg.n_layers, cfg.n_heads, cfg.head_dim, cfg.mlp_ratio, cfg.dropout)
        self.head = nn.Linear(d, cfg.clip_dim)
        self.register_buffer(
            "causal_mask", torch.ones(cfg.seq_len, cfg.seq_len, dtype=torch.bool).tril(), persistent=False
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:  # GPT-2 style (zoo.nn.transformer.gpt2_init_)
        gpt2_init_(self, self.transformer, (self.text_pad_emb, self.null_text_emb, self.query, self.pos))

    # -- pieces
    def embed_text(
        self,
        batch: int,
        text_tokens: Optional[torch.Tensor],
        text_encodings: Optional[torch.Tensor],
        text_mask: Optional[torch.Tensor],
        drop_text: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """(B, n_text, dim): token embeddings / projected encodings, pad vectors where masked or dropped."""
        c = self.cfg
        pad = self.text_pad_emb.unsqueeze(0).expand(batch, -1, -1)  # (B, L, d)
        if c.text_input == "none":
            return pad
        if c.text_input == "tokens":
            if text_tokens is None:
                raise ValueError("text_input=tokens needs text_tokens (B, L) (zoo-embed's clip_text_tokens)")
            if text_tokens.shape[1] != c.text_len:
                raise ValueError(
                    f"text_tokens have {text_tokens.shape[1]} positions, the prior expects "
                    f"text_len={c.text_len} (model.net.text_len)"
                )
            tok = self.text_tok(text_tokens)
            keep = text_tokens != c.pad_id  # (B, L)
        else:
            if text_encodings is None:
                raise ValueError("text_input=encodings needs text_encodings (B, L, E) (zoo-embed text_encodings=true)")
            if text_encodings.shape[1:] != (c.text_len, c.text_enc_dim):
                raise ValueError(
                    f"text_encodings {tuple(text_encodings.shape[1:])} != (text_len, text_enc_dim) = "
                    f"({c.text_len}, {c.text_enc_dim}) (model.net.text_len / text_enc_dim)"
                )
            tok = self.text_proj(text_encodings.to(self.text_proj.weight.dtype))
            keep = (
                text_mask.bool()
                if text_mask is not None
                else torch.ones(text_encodings.shape[:2], dtype=torch.bool, device=tok.device)
            )
        if drop_text is not None:
            keep = keep & ~drop_text.bool().unsqueeze(1)
        return torch.where(keep.unsqueeze(-1), tok, pad.to(tok.dtype))

    def sequence(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        text_emb: torch.Tensor,
        text_tokens: Optional[torch.Tensor] = None,
        text_encodings: Optional[torch.Tensor] = None,
        text_mask: Optional[torch.Tensor] = None,
        drop_text: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """The transformer's input (B, L + 4, dim)."""
        b = x_t.shape[0]
        text = self.embed_text(b, text_tokens, text_encodings, text_mask, drop_text)  # (B, L, d)
        tail = self.tail(x_t, t, text_emb, drop_text)  # (B, 4, d)
        return torch.cat([text.to(tail.dtype), tail], dim=1) + self.pos

    def tail(
        self, x_t: torch.Tensor, t: torch.Tensor, text_emb: torch.Tensor, drop_text: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """The last 4 positions [text_emb ; time ; x_t ; query] (B, 4, dim), before positional embeddings."""
        b = x_t.shape[0]
        w = self.x_proj.weight
        temb = self.text_emb_proj(text_emb.to(w.dtype))  # (B, d)
        if drop_text is not None:
            temb = torch.where(drop_text.bool().unsqueeze(1), self.null_text_emb.to(temb.dtype), temb)
        time = self.time_embed(t)  # (B, d)
        x = self.x_proj(x_t.to(w.dtype))  # (B, d)
        query = self.query.expand(b, -1)
        return torch.stack([temb, time.to(temb.dtype), x, query.to(temb.dtype)], dim=1)  # (B, 4, d)

    # -- only the final query's output is read
    # ``forward`` needs the transformer output at the LAST position only. Every block but the last runs on every
    # position (its outputs are the last block's keys/values); the last block runs at the final query only
    # (``_last_block``), its keys/values folded into the query: for a head with query q the score of position j is
    # q . (W_k h_j + b_k) = (W_k^T q) . h_j + const, and its output sum_j a_j (W_v h_j + b_v) = W_v (sum_j a_j h_j) + b_v
    # (h = the block's ln1 output, sum_j a_j = 1). The same function as the full stack's last position (the constant
    # q . b_k cancels in the softmax, so b_k's gradient is 0 here as there) in (B, H, S) x dim multiply-adds instead
    # of the keys' and values' (B, S) x dim x 2 H D: the last layer costs ~nothing, 1 / n_layers of the transformer
    # saved (25% for shapes' 4 layers). It rounds differently from ``head(hidden(...)[:, -1])`` (another summation
    # order; tests/test_prior_cli.py checks values and gradients against it).
    def _last_block(
        self, x_last: torch.Tensor, h: torch.Tensor, h_prefix: Optional[torch.Tensor] = None, k: int = 0
    ) -> torch.Tensor:
        """The last block and the final LayerNorm at the final position only: x_last (B, dim) is the block's input
        there, h (B, S, dim) its ``ln1`` output at every position -> (B, dim). With ``h_prefix`` (K + 1, L, dim)
        (``_shared_null``), h holds the positions after the prefix only, and row r's prefix is
        ``h_prefix[min(r, K)]``."""
        blk = self.transformer.blocks[-1]
        attn = blk.attn
        b, _, d = h.shape
        nh, hd = attn.n_heads, attn.head_dim
        w_q, w_k, w_v = attn.qkv.weight.split(nh * hd)  # (H D, d) each
        b_q, _, b_v = attn.qkv.bias.split(nh * hd)
        q = F.linear(h[:, -1], w_q, b_q).view(b, nh, hd) * hd**-0.5  # (B, H, D), SDPA's scale
        qk = torch.einsum("bne,ned->bnd", q, w_k.view(nh, hd, d))  # (B, H, d): W_k^T q per head
        scores = torch.bmm(qk, h.transpose(1, 2))  # (B, H, S): the final query sees every position
        if h_prefix is not None:
            scores = torch.cat([self._per_prefix(qk, h_prefix, k, transpose=True), scores], dim=-1)
        probs = scores.softmax(-1)
        if attn.dropout and self.training:
            probs = F.dropout(probs, attn.dropout)
        if h_prefix is None:
            ctx = torch.bmm(probs, h)  # (B, H, d): sum_j a_j h_j
        else:
            p_prefix, p_tail = probs.split([h_prefix.shape[1], h.shape[1]], dim=-1)
            ctx = self._per_prefix(p_prefix, h_prefix, k) + torch.bmm(p_tail, h)
        y = torch.einsum("bnd,ned->bne", ctx, w_v.view(nh, hd, d)) + b_v.view(nh, hd)  # (B, H, D)
        r = x_last + blk.drop(attn.proj(y.reshape(b, nh * hd)))
        r = r + blk.drop(blk.mlp(blk.ln2(r)))
        return self.transformer.ln_f(r)

    def readout(self, x: torch.Tensor) -> torch.Tensor:
        """The transformer's final (ln_f) output at the last position (B, dim) of the input sequence x (B, S, dim)."""
        blocks = self.transformer.blocks
        for blk in blocks[:-1]:
            x = blk(x, self.causal_mask)
        return self._last_block(x[:, -1], blocks[-1].ln1(x))

    # -- sampling with the text prefix computed once
    # Under the causal mask the text positions see only earlier text positions: their keys and values do not depend
    # on t, x_t or the text embedding, so a sampler computes them once per caption (``text_cache``) and each of its
    # steps runs only the last 4 positions (``forward_cached``): (L + 4) / 4 = 13x fewer positions for shapes. The
    # last block reads the text positions through its ln1 outputs (``_last_block``), so those are what is cached
    # for it; ``forward_cached`` gives ``forward``'s result bit for bit.
    def text_cache(
        self,
        batch: int,
        text_tokens: Optional[torch.Tensor] = None,
        text_encodings: Optional[torch.Tensor] = None,
        text_mask: Optional[torch.Tensor] = None,
        drop_text: Optional[torch.Tensor] = None,
    ) -> TextCache:
        """The text positions' keys/values in every block but the last and the last block's ln1 outputs there
        (B = ``batch``)."""
        c = self.cfg
        p = self.transformer.ln_f.weight
        kv = KVCache(batch, c.n_layers - 1, c.n_heads, c.seq_len, c.head_dim, p.dtype, p.device)
        if not c.n_text:
            return TextCache(kv, p.new_zeros(batch, 0, c.dim))
        x = self.embed_text(batch, text_tokens, text_encodings, text_mask, drop_text)
        return TextCache(kv, self._prefix(x, kv))

    def _prefix(self, text: torch.Tensor, kv) -> torch.Tensor:
        """The text positions (B, n_text, dim) through every block but the last, their keys/values going to ``kv``
        (a ``KVCache``, or ``_Recorder`` with autograd) -> the last block's ln1 outputs there (B, n_text, dim)."""
        x = text + self.pos[: self.cfg.n_text]
        for i, blk in enumerate(self.transformer.blocks[:-1]):
            x = blk(x, self.causal_mask, kv, i, 0)
        return self.transformer.blocks[-1].ln1(x)

    def expand_cache(self, cache: TextCache, rows: torch.Tensor) -> TextCache:
        """A cache whose row i is row ``rows[i]`` of ``cache``: a sampler computes the prefix once per distinct
        caption (and once for the null one) and gives it to every candidate row that shares it."""
        c = self.cfg
        kv = KVCache(len(rows), c.n_layers - 1, c.n_heads, c.seq_len, c.head_dim, cache.kv.k.dtype, rows.device)
        kv.copy_rows(cache.kv, rows)
        return TextCache(kv, cache.h_last.index_select(0, rows))

    def forward_cached(
        self,
        cache: TextCache,
        x_t: torch.Tensor,
        t: torch.Tensor,
        text_emb: torch.Tensor,
        drop_text: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``forward`` for the captions whose ``text_cache`` is ``cache`` (same rows, same ``drop_text``); writes
        only positions >= n_text of the cache, so one cache serves every step."""
        n, blocks = self.cfg.n_text, self.transformer.blocks
        x = self.tail(x_t, t, text_emb, drop_text) + self.pos[n:]
        for i, blk in enumerate(blocks[:-1]):
            x = blk(x, self.causal_mask, cache.kv, i, n)
        h = blocks[-1].ln1(x)
        h = torch.cat([cache.h_last.to(h.dtype), h], dim=1)  # (B, L + 4, d)
        return self.head(self._last_block(x[:, -1], h))

    def hidden(self, *args, **kwargs) -> torch.Tensor:
        """Transformer outputs at every position (B, L + 4, dim) (tests use it to check the causal structure)."""
        return self.transformer(self.sequence(*args, **kwargs), [self.causal_mask] * self.cfg.n_layers)

    # -- training with the null caption's prefix computed once
    # A row whose text is dropped (classifier-free guidance's 10%) has the null caption: every text position holds its
    # pad vector, the same for every such row. Under the causal mask the text positions see only text positions, so
    # the whole text prefix (every block but the last, and the last block's ln1 there) is one and the same
    # computation for all of them. ``forward`` then runs it once per batch (``_shared_null``): the rows are put kept
    # first, the prefix pass runs over the K kept captions plus ONE null caption, and the 4 tail positions of every
    # row attend to the keys / values of their own prefix (row r < K) or the null one (``_per_prefix``: a batched
    # matmul for the kept rows, a broadcast one for the dropped rows; no gathered copies). Autograd sums the dropped
    # rows' gradients into the one null prefix. At shapes' size (48 text positions, batch 128, 10% dropped) a step is
    # 21.7 GFLOP instead of 24.2 and trains 4-5% more samples/s (AVX2 EPYC, one thread; the tail's small matmuls and
    # the slices cost part of the saving; bench/bench_prior.py's "unshared" variant). The same function as the full
    # sequence (tests/test_prior_cli.py checks values and gradients). Not with live dropout (one mask per row).
    # Under torch.compile the count below is a data-dependent branch (a graph break, or an error with fullgraph=True),
    # and the shared path's row split has data-dependent shapes too: a traced prior takes the full sequence instead.
    # Not in half precision: under bf16 (autocast or bf16 weights) the tail's many tiny matmuls (4 x 32 by 32 x 48 at
    # shapes' size) cost more than the prefix FLOPs they save. Measured with bench/bench_prior.py's "unshared" variant
    # on an Intel Xeon with AMX, one thread: bf16 606.6 shared against 635.0 unshared samples/s (559.4 / 632.0 in
    # another run), fp32 430.0 against 422.1; on an AVX2-only EPYC (fp32 only) sharing gives 1.04-1.05x.
    def _shares_null(self, drop_text: Optional[torch.Tensor]) -> bool:
        return (
            drop_text is not None
            and self.cfg.n_text > 0
            and not torch.compiler.is_compiling()
            and not self._computes_in_half(drop_text.device.type)
            and not (self.training and self.cfg.dropout > 0)
            and int(drop_text.sum()) >= 2  # one dropped row: nothing to share
        )

    def _computes_in_half(self, device_type: str) -> bool:
        half = (torch.bfloat16, torch.float16)
        autocast = torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) in half
        return autocast or self.query.dtype in half

    def _shared_null(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        text_emb: torch.Tensor,
        text_tokens: Optional[torch.Tensor],
        text_encodings: Optional[torch.Tensor],
        text_mask: Optional[torch.Tensor],
        drop_text: torch.Tensor,
    ) -> torch.Tensor:
        """``forward`` with the null caption's prefix computed once (see above) -> (B, D)."""
        n, blocks = self.cfg.n_text, self.transformer.blocks
        drop = drop_text.bool()
        kept, dropped = (~drop).nonzero().squeeze(1), drop.nonzero().squeeze(1)
        order = torch.cat([kept, dropped])  # kept rows first; the output is put back in the input's order
        k = len(kept)
        own = self.embed_text(
            k,
            None if text_tokens is None else text_tokens.index_select(0, kept),
            None if text_encodings is None else text_encodings.index_select(0, kept),
            None if text_mask is None else text_mask.index_select(0, kept),
            None,
        )  # (K, L, d)
        kv = _Recorder()
        h_prefix = self._prefix(torch.cat([own, self.text_pad_emb.unsqueeze(0).to(own.dtype)]), kv)  # (K + 1, L, d)
        x = self.tail(x_t[order], t[order], text_emb[order], drop[order]) + self.pos[n:]  # (B, 4, d)
        for blk, (kp, vp) in zip(blocks[:-1], kv.kv):
            x = self._tail_block(blk, x, kp, vp, k)
        h = blocks[-1].ln1(x)
        y = self.head(self._last_block(x[:, -1], h, h_prefix, k))
        return y.index_select(0, torch.argsort(order))

    @staticmethod
    def _per_prefix(a: torch.Tensor, b: torch.Tensor, k: int, transpose: bool = False) -> torch.Tensor:
        """Row r of ``a`` (B, ...) times its prefix's ``b`` (K + 1, ...): ``b[r]`` for r < K, the null ``b[K]`` for the
        rest (``b`` transposed in its last two dims if asked)."""
        if transpose:
            b = b.transpose(-1, -2)
        # split, not a[:k] / a[k:]: a slice's backward writes its gradient into a zero-filled copy of the whole tensor
        a_own, a_null = a.split([k, a.shape[0] - k])
        b_own, b_null = b.split([k, 1])
        return torch.cat([torch.matmul(a_own, b_own), torch.matmul(a_null, b_null[0])])

    def _tail_block(self, blk, x: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor, k: int) -> torch.Tensor:
        """One block at the 4 tail positions x (B, 4, dim), attending to the prefix keys / values kp, vp
        (K + 1, H, L, D) of each row and causally to the tail (no dropout: see ``_shares_null``)."""
        attn = blk.attn
        b, m, _ = x.shape
        nh, hd = attn.n_heads, attn.head_dim
        q, kt, vt = attn.qkv(blk.ln1(x)).view(b, m, 3, nh, hd).permute(2, 0, 3, 1, 4)  # (B, H, 4, D) each
        q = q * hd**-0.5
        tail_mask = self.causal_mask[-m:, -m:]
        scores = torch.cat(
            [
                self._per_prefix(q, kp, k, transpose=True),  # (B, H, 4, L)
                torch.matmul(q, kt.transpose(-1, -2)).masked_fill(~tail_mask, float("-inf")),  # (B, H, 4, 4)
            ],
            dim=-1,
        ).softmax(-1)
        s_prefix, s_tail = scores.split([kp.shape[2], m], dim=-1)
        y = self._per_prefix(s_prefix, vp, k) + torch.matmul(s_tail, vt)  # (B, H, 4, D)
        x = x + attn.proj(y.transpose(1, 2).reshape(b, m, nh * hd))
        return x + blk.mlp(blk.ln2(x))

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        text_emb: torch.Tensor,
        text_tokens: Optional[torch.Tensor] = None,
        text_encodings: Optional[torch.Tensor] = None,
        text_mask: Optional[torch.Tensor] = None,
        drop_text: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if self._shares_null(drop_text):
            return self._shared_null(x_t, t, text_emb, text_tokens, text_encodings, text_mask, drop_text)
        x = self.sequence(x_t, t, text_emb, text_tokens, text_encodings, text_mask, drop_text)
        return self.head(self.readout(x))  # (B, D): x0 from the final query (= head(hidden(...)[:, -1]))


class _Recorder:
    """The KV-cache interface of ``zoo.nn.transformer.SelfAttention`` (``update``) that only records each block's
    keys / values (with autograd) for ``DiffusionPriorNet._shared_null``'s tail positions."""

    def __init__(self):
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] = []

    def update(self, layer: int, start_pos: int, k: torch.Tensor, v: torch.Tensor):
        # contiguous once: the tail's matmuls (``_per_prefix``) copy a strided (permuted qkv) operand on every use,
        # forward and backward
        k, v = k.contiguous(), v.contiguous()
        self.kv.append((k, v))
        return k, v


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
