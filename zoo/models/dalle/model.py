"""DALL·E 1 stage 2 (plain PyTorch, no Lightning): the decoder-only transformer over [text BPE tokens ; image
tokens], its config dataclass and size presets, and what a self-contained checkpoint needs.

- ``DalleTransformerConfig`` and ``PRESETS`` (``tiny`` / ``shapes`` / ``paper``); resolve them with
  ``zoo.models.presets.resolve_preset(PRESETS, DalleTransformerConfig, preset, net, "DALL·E transformer")``.
- ``DalleTransformer``: embeddings, one sparse mask per layer (``zoo.nn.sparse_masks``), the generic pre-LN stack
  with its KV cache (``zoo.nn.transformer.Transformer`` / ``KVCache``; masks are the FULL (L, L) masks of the stream,
  so one-token-at-a-time decoding uses exactly the rows of training's masks), two output heads, the loss.
- ``image_tokenizer_spec`` / ``image_tokenizer_from_spec``: rebuild the frozen image tokenizer (dVAE / VQ-VAE)
  from plain values (its registered component name + hyper-parameters + resolution, through ``zoo.registry``); its
  weights travel in the DALL·E state dict, so no tokenizer file is needed at sampling time. (The text tokenizer
  describes itself: ``TextTokenizer.to_spec()`` / ``TextTokenizer.from_spec(spec)`` in ``zoo.text``.)

Parameter count of ``paper`` (measured in tests/models/test_dalle.py on the meta device): 12,292,808,448
(the paper quotes "12 billion").

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
(``text_loss_on_pad``), as the paper's fixed 256-token text stream is. Each head's cross-entropy goes through
``head_cross_entropy`` (no log-probability tensors; the logits' memory becomes their gradient): with a 49k-word BPE
vocabulary that is most of a training step's non-matmul time.

Speed paths with the same results (up to float rounding): ``full`` layers pass no mask (the stream's full mask is
the causal mask), so the stack's causal attention runs; decoding's prefill computes each distinct prefix once
(guidance's null captions) and the last block only for the last position (``Transformer(..., last_only=True)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.models.presets import check_dropout, check_sizes
from zoo.nn.block_sparse import ATTN_IMPLS, BlockSparseMask, column_major_perm
from zoo.nn.image_tokenizer import find_image_tokenizer
from zoo.nn.sparse_masks import dalle_mask, layer_pattern
from zoo.nn.transformer import KVCache, Transformer, decode_linear, gpt2_init_

BLOCK_SPARSE_MIN_LEN = 256  # shorter streams attend densely (measured in bench/bench_sparse_attention.py)
PAPER_PARAMS = 12_292_808_448  # measured: sum(p.numel()) of DalleTransformer(PRESETS["paper"]) on the meta device

__all__ = [
    "PRESETS",
    "DalleTransformer",
    "DalleTransformerConfig",
    "image_tokenizer_spec",
    "image_tokenizer_from_spec",
    "PAPER_PARAMS",
    "head_cross_entropy",
]


# ---------------------------------------------------------------------------------------------- the loss
_CE_CHUNK = 1 << 18  # logits per chunk of rows in the softmax passes (1 MB in fp32: the rows stay in cache)


def _ce_rows(logits: torch.Tensor) -> int:
    """Rows per pass: on the CPU a cache-sized chunk per thread (the row ops split rows over threads, so fewer rows
    than threads would leave threads idle); all rows at once elsewhere (one kernel launch)."""
    if logits.device.type != "cpu":
        return max(1, logits.shape[0])
    return max(1, _CE_CHUNK // max(1, logits.shape[1])) * torch.get_num_threads()


class _HeadCrossEntropy(torch.autograd.Function):
    """``F.cross_entropy(F.linear(h, weight), target, ignore_index)`` (mean over the kept rows) without the
    log-probability tensors. Forward: the logits (kept, in >= fp32) and their per-row logsumexp, a few rows at a
    time. Backward: the logits are turned IN PLACE into the gradient ``(softmax - onehot) * grad / n_kept``, a few
    rows at a time while they are in cache, then the two matmuls of a linear layer's backward (in the forward's
    matmul dtype: bf16 under autocast). Autograd's version would allocate, fill and read three more (N, V) tensors
    (log-probabilities, their zero-filled gradient, the logits' gradient); for a 49k-word text head that is most of
    the non-matmul time of a training step. The logits never leave this function, so reusing them is safe (a second
    backward through the same graph is refused by autograd's version check)."""

    @staticmethod
    def forward(ctx, h, weight, target, ignore_index: int):
        logits = F.linear(h, weight)  # (N, V), under autocast in its dtype
        mm_dtype = logits.dtype
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        n = logits.shape[0]
        rows = _ce_rows(logits)
        lse = torch.empty(n, dtype=logits.dtype, device=logits.device)
        for i in range(0, n, rows):
            torch.logsumexp(logits[i : i + rows], -1, out=lse[i : i + rows])
        keep = target != ignore_index
        tgt = torch.where(keep, target, torch.zeros_like(target))
        picked = logits.gather(1, tgt[:, None]).squeeze(1)
        # rows kept, at least 1: no kept row (e.g. text_loss_on_pad=False and every caption of the batch dropped to
        # all pads) is a loss of 0 with zero gradients, not F.cross_entropy's 0 / 0 = NaN in the logged loss
        n_kept = keep.sum().clamp(min=1)
        ctx.save_for_backward(h, weight, logits, lse, tgt, keep, n_kept)
        ctx.mm_dtype = mm_dtype
        return torch.where(keep, lse - picked, torch.zeros_like(lse)).sum() / n_kept

    @staticmethod
    def backward(ctx, grad):
        h, weight, g, lse, tgt, keep, n_kept = ctx.saved_tensors
        scale = torch.where(keep, grad / n_kept, torch.zeros_like(lse))  # (N,)
        n = g.shape[0]
        rows = _ce_rows(g)
        for i in range(0, n, rows):  # softmax * scale, in place
            g[i : i + rows].sub_(lse[i : i + rows, None]).exp_().mul_(scale[i : i + rows, None])
        g.index_put_((torch.arange(n, device=g.device), tgt), -scale, accumulate=True)  # - onehot * scale
        gm = g.to(ctx.mm_dtype)
        grad_h = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_h = (gm @ weight.to(ctx.mm_dtype)).to(h.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = (gm.t() @ h.to(ctx.mm_dtype)).to(weight.dtype)
        return grad_h, grad_w, None, None


def head_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, ignore_index: int = -100
) -> torch.Tensor:
    """Mean cross-entropy of the bias-free head ``h (N, d) @ weight (V, d).T`` against ``target`` (N,) (rows whose
    target is ``ignore_index`` excluded), equal to ``F.cross_entropy(F.linear(h, weight), target,
    ignore_index=ignore_index)`` up to float rounding, with the softmax in >= fp32; see ``_HeadCrossEntropy``.
    When every row is ignored the result is 0 (F.cross_entropy gives NaN)."""
    return _HeadCrossEntropy.apply(h, weight, target, ignore_index)


# ---------------------------------------------------------------------------------------------- the network
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
    # dense: SDPA with the (L, L) bool masks; block_sparse: compute only the blocks the masks allow (zoo.nn.block_sparse;
    # same results; faster from 16x16 grids on, and the dense path runs by itself where blocking would not pay)
    attn_impl: str = "block_sparse"

    def __post_init__(self):
        # values that were accepted silently: a text weight outside [0, 1] gives the other loss a negative weight
        # (training then maximises it); a pad id outside the text vocabulary was an IndexError at the first pad target
        from zoo.errors import ConfigError

        if not 0.0 <= self.loss_text_weight <= 1.0:
            raise ConfigError(
                f"loss_text_weight must be in [0, 1] (loss = w * text + (1 - w) * image; paper: 1/8), "
                f"got {self.loss_text_weight} (fix: model.net.loss_text_weight=0.125)"
            )
        if not 0 <= self.pad_id < self.text_vocab:
            raise ConfigError(
                f"pad_id {self.pad_id} is not a token of the text vocabulary (text_vocab={self.text_vocab}) "
                f"(fix: model.net.pad_id=<the text tokenizer's pad id>)"
            )
        # 0 layers / heads / width built and trained a transformer without blocks, attention or a stream, without
        # a word; a 0 grid was a ZeroDivisionError in the first step
        sizes = ("dim", "n_layers", "n_heads", "head_dim", "mlp_ratio", "text_len", "text_vocab", "image_vocab")
        check_sizes(self, (*sizes, "grid_h", "grid_w"), "DALL·E transformer")
        check_dropout(self)
        # a wrong name was a ValueError from the network's build that did not say which option to change
        try:
            layer_pattern(self.n_layers, self.pattern)
        except ValueError as e:
            raise ConfigError(f"model.net.pattern={self.pattern!r}: {e} (fix: model.net.pattern=paper)") from None
        if self.attn_impl not in ATTN_IMPLS:
            raise ConfigError(
                f"model.net.attn_impl={self.attn_impl!r}; choose one of {list(ATTN_IMPLS)} "
                f"(fix: model.net.attn_impl=block_sparse)"
            )

    @property
    def image_len(self) -> int:
        return self.grid_h * self.grid_w

    @property
    def seq_len(self) -> int:  # mask size; the model's inputs are one shorter
        return self.text_len + self.image_len


PRESETS: dict[str, DalleTransformerConfig] = {
    "tiny": DalleTransformerConfig(
        dim=64,
        n_layers=4,
        n_heads=4,
        head_dim=16,
        text_len=8,
        text_vocab=64,
        image_vocab=32,
        grid_h=4,
        grid_w=4,
        conv_kernel=3,
    ),
    "shapes": DalleTransformerConfig(
        dim=256,
        n_layers=8,
        n_heads=8,
        head_dim=32,
        text_len=48,
        text_vocab=1024,
        image_vocab=512,
        grid_h=8,
        grid_w=8,
        conv_kernel=5,
    ),
    # Ramesh et al. 2021: 64 layers, 62 heads x 64 = 3968 wide, 256 BPE tokens (16384) + 32x32 image tokens (8192)
    "paper": DalleTransformerConfig(
        dim=3968,
        n_layers=64,
        n_heads=62,
        head_dim=64,
        text_len=256,
        text_vocab=16384,
        image_vocab=8192,
        grid_h=32,
        grid_w=32,
        conv_kernel=11,
    ),
}


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
        self.transformer = Transformer(
            d, cfg.n_layers, cfg.n_heads, cfg.head_dim, cfg.mlp_ratio, cfg.dropout, attn_impl=cfg.attn_impl
        )
        self.text_head = nn.Linear(d, cfg.text_vocab, bias=False)
        self.image_head = nn.Linear(d, cfg.image_vocab, bias=False)
        self.layer_kinds = layer_pattern(cfg.n_layers, cfg.pattern)
        for kind in sorted(set(self.layer_kinds)):  # one (L, L) buffer per distinct kind, shared by its layers
            self.register_buffer(
                f"mask_{kind}",
                dalle_mask(kind, cfg.text_len, cfg.grid_h, cfg.grid_w, cfg.conv_kernel),
                persistent=False,
            )
        self._block_sparse: dict[str, tuple[torch.Tensor, BlockSparseMask]] = {}  # kind -> (buffer, its wrapper)
        # Codes decoding may draw: the image tokenizer's codebook when it is smaller than image_vocab (check_data
        # allows that). The head's extra codes are never trained towards but keep a little probability; a sample
        # that drew one was an IndexError in the tokenizer's decode, after every token had been sampled.
        self.sampled_codes: Optional[int] = None
        self.reset_parameters()

    def reset_parameters(self) -> None:  # GPT-2 style (zoo.nn.transformer.gpt2_init_)
        gpt2_init_(self, self.transformer, (self.text_pad_emb, self.text_pos, self.image_row, self.image_col))

    # -- pieces
    def layer_masks(self) -> list[torch.Tensor]:
        return [getattr(self, f"mask_{k}") for k in self.layer_kinds]

    def embed(
        self, text: Optional[torch.Tensor] = None, image: Optional[torch.Tensor] = None, image_start: int = 0
    ) -> torch.Tensor:
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

    def attention_masks(self) -> list:
        """Per-layer masks for the transformer: ``None`` for ``full`` layers (the stream's full mask IS the causal
        mask: text before image, text never sees image, so the stack's own causal attention runs, without reading a
        mask), the dense buffers (``attn_impl=dense``), or ``BlockSparseMask`` wrappers of them (``block_sparse``):
        query blocks of whole grid lines (about 64 tokens), column layers in column-major image order so that a
        column's keys are contiguous. Rebuilt when a buffer moves device."""
        if self.cfg.attn_impl != "block_sparse":
            return [None if k == "full" else m for k, m in zip(self.layer_kinds, self.layer_masks(), strict=True)]
        c, out = self.cfg, {"full": None}
        for kind in set(self.layer_kinds) - {"full"}:
            buf = getattr(self, f"mask_{kind}")
            hit = self._block_sparse.get(kind)
            if hit is None or hit[0] is not buf:
                line = c.grid_h if kind == "column" else c.grid_w  # tokens per grid line in block order
                perm = column_major_perm(c.text_len, c.grid_h, c.grid_w) if kind == "column" else None
                hit = self._block_sparse[kind] = (
                    buf,
                    BlockSparseMask(buf, perm, block=line * max(1, round(64 / line)), min_len=BLOCK_SPARSE_MIN_LEN),
                )
            out[kind] = hit[1]
        return [out[k] for k in self.layer_kinds]

    def hidden(
        self, x_emb: torch.Tensor, cache: Optional[KVCache] = None, start_pos: int = 0, last_only: bool = False
    ) -> torch.Tensor:
        return self.transformer(x_emb, self.attention_masks(), cache, start_pos, last_only=last_only)

    # -- training
    def forward(self, text: torch.Tensor, image: torch.Tensor):
        """text (B, T), image (B, h, w) or (B, N) -> (text_logits (B, T-1, text_vocab), image_logits (B, N,
        image_vocab)); text_logits[:, i] predicts text[:, i+1], image_logits[:, p] predicts image token p."""
        h_text, h_image = self._training_hidden(text, image.flatten(1))
        return self.text_head(h_text), self.image_head(h_image)

    def _training_hidden(self, text: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states of the text positions 0 .. T-2 (B, T-1, d) and image positions T-1 .. (B, N, d)."""
        h = self.hidden(self.embed(text, image[:, :-1]))  # (B, T + N - 1, d)
        t = self.cfg.text_len
        return h[:, : t - 1], h[:, t - 1 :]

    def loss(self, text: torch.Tensor, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cross-entropy of both heads, each through ``head_cross_entropy`` (the logits are never returned, so their
        memory is reused for the gradient; same value and gradients as ``F.cross_entropy`` on ``forward``'s logits)."""
        image = image.flatten(1)
        h_text, h_image = self._training_hidden(text, image)
        ignore = -100 if self.cfg.text_loss_on_pad else self.cfg.pad_id
        text_loss = head_cross_entropy(h_text.flatten(0, 1), self.text_head.weight, text[:, 1:].flatten(), ignore)
        image_loss = head_cross_entropy(h_image.flatten(0, 1), self.image_head.weight, image.flatten())
        w = self.cfg.loss_text_weight
        return {"loss": w * text_loss + (1 - w) * image_loss, "text_loss": text_loss, "image_loss": image_loss}

    # -- decoding
    def next_image_logits(
        self,
        text: Optional[torch.Tensor] = None,
        image: Optional[torch.Tensor] = None,
        image_start: int = 0,
        cache: Optional[KVCache] = None,
        start_pos: int = 0,
    ) -> torch.Tensor:
        """Image logits (B, image_vocab) predicted at the LAST of the given positions. Uncached: pass the whole
        prefix (text, image[:, :p]) -> distribution of image token p. Cached: pass only the new positions with
        start_pos (= T + image_start for image-only chunks)."""
        if cache is not None and start_pos == 0 and text is not None and text.shape[0] > 1:
            prefix = text if image is None else torch.cat([text, image], 1)
            uniq, inverse = torch.unique(prefix, dim=0, return_inverse=True)
            if uniq.shape[0] < prefix.shape[0]:  # e.g. guidance's null captions: prefill each distinct one once
                t = self.cfg.text_len
                c = cache
                small = KVCache(
                    uniq.shape[0], c.n_layers, c.n_heads, prefix.shape[1], c.head_dim, c.k.dtype, c.k.device
                )
                h = self.hidden(self.embed(uniq[:, :t], uniq[:, t:], image_start), small, 0, last_only=True)
                cache.copy_rows(small, inverse)
                return self._decodable(decode_linear(h[:, -1], self.image_head)[inverse])
        h = self.hidden(self.embed(text, image, image_start), cache, start_pos, last_only=True)
        return self._decodable(decode_linear(h[:, -1], self.image_head, cache))  # packed per decoding session

    def _decodable(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits with the codes past ``sampled_codes`` at the dtype's lowest finite value (not -inf: guidance
        subtracts the unconditional logits from the conditional ones, and -inf - -inf is NaN)."""
        n = self.sampled_codes
        if n is not None and n < logits.shape[-1]:
            logits[..., n:] = torch.finfo(logits.dtype).min
        return logits


# ------------------------------------------------------------------------------------------ image tokenizer
def tokenizer_fingerprint(tok: torch.nn.Module) -> Optional[str]:
    """A short digest of an image tokenizer's weights: zoo-tokenize records it in its files, a DALL·E trained on
    them keeps it, and the tokenizer given to decode its samples must match it. The digest CLIP files use
    (``clip_fingerprint``: names, shapes and strided values of every float tensor, milliseconds even for big
    models), so the same weights from a step checkpoint or last.ckpt agree."""
    from zoo.models.clip.scorer import clip_fingerprint

    return clip_fingerprint(tok)


def image_tokenizer_spec(
    ckpt: dict[str, Any], resolution: Optional[int] = None, option: str = "model.image_tokenizer_ckpt"
) -> dict[str, Any]:
    """Plain-value description of the tokenizer inside a zoo-train checkpoint dict (loaded weights_only): its
    registered component name (``dvae`` / ``vqvae``), hyper-parameters and resolution. ``option``: the option that
    gave the file (zoo-sample's is ``generator.image_tokenizer_ckpt``), the fix another kind of checkpoint names."""
    from zoo.registry import IMAGE_TOKENIZERS, checked_hparams, component_in

    name = component_in(ckpt, "the image tokenizer checkpoint")
    if name not in IMAGE_TOKENIZERS:
        from zoo.config import with_article
        from zoo.errors import ConfigError

        raise ConfigError(
            f"the image tokenizer checkpoint holds {with_article(name)} model, not an image tokenizer "
            f"({' or '.join(IMAGE_TOKENIZERS)}) (fix: {option}=<a {' / '.join(IMAGE_TOKENIZERS)} checkpoint>)"
        )
    hp = checked_hparams(name, ckpt.get("hyper_parameters", {}), "the image tokenizer checkpoint")
    return {"component": name, "hyper_parameters": hp, "resolution": resolution}


def image_tokenizer_from_spec(spec: dict[str, Any], state_dict: Optional[dict[str, torch.Tensor]] = None):
    """Build the ``ImageTokenizer`` described by ``spec`` (random weights unless ``state_dict``: the LightningModule's
    state dict). The class comes from the component registry by name (a spec from a file never names code); specs
    written before the registry (``zoo_class``) are read through the registry's table of known class paths."""
    from zoo.registry import IMAGE_TOKENIZERS, check_plain, checked_hparams, component_class, component_in

    check_plain(spec, "image tokenizer spec")
    name = spec.get("component") or component_in({"zoo_class": spec.get("zoo_class")}, "image tokenizer spec")
    if name not in IMAGE_TOKENIZERS:
        from zoo.registry import UnsafeCheckpointError

        raise UnsafeCheckpointError(
            f"image tokenizer spec names {name!r}; only {IMAGE_TOKENIZERS} are image tokenizers"
        )
    lit = component_class(name)(**checked_hparams(name, spec.get("hyper_parameters", {}), "image tokenizer spec"))
    if state_dict is not None:
        lit.load_state_dict(state_dict)
    tok = find_image_tokenizer(lit)
    if spec.get("resolution"):
        tok.resolution = int(spec["resolution"])
    return tok
