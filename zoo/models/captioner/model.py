"""DALL·E 3's image captioner: a causal language model over caption BPE tokens, conditioned on CLIP image features.

Plain PyTorch (no Lightning). The network is the generic pre-LN ``zoo.nn.transformer.Transformer`` (dense causal
mask) with a prefix built from the image, a token embedding and an LM head; the decoders reuse ``zoo.nn.sampling``'s
``filter_logits`` (top-k / top-p) and ``gumbel_pick`` in small KV-cached loops (the cache: ``zoo.nn.transformer.
KVCache``; beam search reorders it along the batch dimension).

Sequence (k = ``n_prefix``, P = patch tokens when ``patch_dim > 0``, L = ``text_len``)::

    position : 0 .. k-1                k .. k+P-1                 k+P          k+P+1 .. k+P+L-1
    input    : F(i) -> k prefix        CLIP patch tokens          [SOT]        t_1 .. t_{L-1}
               tokens (MLP)            (linear, optional)
    predicts :  -                       -                         t_1          t_2 .. (EOT, then padding)

- F(i): the CLIP image embedding (B, D) (``clip_image_emb`` from ``zoo-embed``), L2-normalised (and scaled to unit
  RMS with ``prefix_emb_norm``), then mapped by a two-layer MLP (D -> dim -> k * dim; the ClipCap "prefix" mapping)
  to k tokens, plus a learned position each.
- patch tokens (optional, ``patch_dim > 0``): the CLIP ViT's per-patch outputs (B, P, patch_dim), P <= n_patches,
  projected to dim; a batch carries them as ``clip_image_patches``.
- caption: the tokenizer's layout ``[SOT] tokens [EOT] [PAD] ...`` (``zoo.text.TextTokenizer.encode``) right-padded
  to ``text_len``; learned positions; the LM head is tied to the token embedding (GPT-2).

Loss: next-token cross-entropy over the caption (EOT included, padding after it ignored), in fp32.

Decoding (all KV-cached; ``use_cache=False`` recomputes the whole prefix every step and is the tests' reference):
``sample_captions`` (greedy at ``temperature=0``, else ancestral sampling, with ``top_p`` nucleus and ``top_k``
filters) and ``beam_search`` (width W; finished beams stay in the beam, extended by padding at no cost; the final
pick divides each beam's log-probability by ``length ** length_penalty``; W = 1 is exactly greedy).

Presets (parameter counts measured on the meta device, tests/models/test_captioner.py):
    tiny    dim 64, 2 layers, 4 x 16 heads, vocab 1024, text_len 64, CLIP dim 32 (zoo-clip-tiny), 2 prefix tokens:
            180,288 parameters (65,536 of them the tied token embedding / LM head).
    shapes  dim 256, 4 layers, 8 x 32 heads, vocab 1024 (data/tokenizer=bpe's size), text_len 64, CLIP dim 128
            (zoo-clip-shapes), 4 prefix tokens: 3,735,296 parameters.
    paper   DALL·E 3 does not publish its captioner's size ("a language model conditioned on CLIP image
            embeddings"); "paper" is our stand-in: a GPT-2-medium-shaped decoder (width 1024, 24 layers, 16 x 64
            heads), DALL·E 1's 16,384-token BPE and 256-token text context, unCLIP's CLIP ViT-H/16 image embedding
            (1024-d) and ClipCap's 10 prefix tokens: 330,906,624 parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.errors import ConfigError
from zoo.models.presets import check_dropout, check_sizes, resolve_preset
from zoo.nn.sampling import filter_logits, gumbel_pick
from zoo.nn.transformer import KVCache, Transformer, gpt2_init_


@dataclass
class CaptionerConfig:
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 8
    head_dim: int = 32
    mlp_ratio: int = 4
    dropout: float = 0.0
    vocab_size: int = 1024  # caption BPE vocabulary (>= the tokenizer's)
    text_len: int = 64  # caption tokens incl. [SOT] and [EOT] (>= the tokenizer's context_length)
    pad_id: int = 0  # zoo.text.TrainedBPETokenizer: [PAD] = 0, [SOT] = 2, [EOT] = 3
    sot_id: int = 2
    eot_id: int = 3
    embed_dim: int = 128  # CLIP image embedding width D
    n_prefix: int = 4  # prefix tokens the embedding is mapped to (k)
    patch_dim: int = 0  # CLIP patch-token width; 0 = no patch tokens
    n_patches: int = 0  # most patch tokens a batch may carry
    # The L2-normalised CLIP embedding has entries of ~0.09 (128-d), and the GPT-2-initialised prefix MLP (std 0.02)
    # turns it into image-dependent prefix parts far smaller than the learned positions added to them: RMS 0.0064
    # against prefix_pos 0.0196 (and token embeddings 0.030) in the trained descriptive captioner, the imbalance
    # unCLIP's decoder had (UnclipDecoderConfig.clip_emb_norm). True: the embedding is scaled to unit RMS (x sqrt(D))
    # before the MLP. False = as before (and in checkpoints made before the option).
    prefix_emb_norm: bool = False

    def __post_init__(self):
        # 0 heads / layers / width built and trained a transformer without attention, blocks or a stream without a
        # word, and n_prefix=0 without patch tokens a captioner that never reads the image (an unconditional LM)
        check_sizes(
            self, ("dim", "n_layers", "n_heads", "head_dim", "mlp_ratio", "vocab_size", "embed_dim"), "captioner"
        )
        check_sizes(self, ("text_len",), "captioner", least=2)  # [SOT] and [EOT]
        if self.prefix_len < 1:
            raise ConfigError(
                f"captioner: n_prefix={self.n_prefix} and no patch tokens (patch_dim={self.patch_dim}): the image "
                f"embedding would reach no position (fix: model.net.n_prefix=4)"
            )
        check_dropout(self)

    @property
    def prefix_len(self) -> int:  # positions before [SOT]
        return self.n_prefix + (self.n_patches if self.patch_dim > 0 else 0)

    @property
    def max_len(self) -> int:
        return self.prefix_len + self.text_len


PRESETS: dict[str, CaptionerConfig] = {
    "tiny": CaptionerConfig(
        dim=64, n_layers=2, n_heads=4, head_dim=16, vocab_size=1024, text_len=64, embed_dim=32, n_prefix=2
    ),
    # zoo-clip-shapes embeddings (128-d); data/tokenizer=bpe (1024 tokens, context 64)
    "shapes": CaptionerConfig(
        dim=256, n_layers=4, n_heads=8, head_dim=32, vocab_size=1024, text_len=64, embed_dim=128, n_prefix=4
    ),
    # not published by DALL·E 3: GPT-2-medium shape, DALL·E 1 BPE/context, ViT-H/16 embedding, ClipCap prefix length
    "paper": CaptionerConfig(
        dim=1024, n_layers=24, n_heads=16, head_dim=64, vocab_size=16384, text_len=256, embed_dim=1024, n_prefix=10
    ),
}

PAPER_PARAMS = 330_906_624  # measured: sum(p.numel()) of Captioner(PRESETS["paper"]) on the meta device


def build_config(preset: str = "shapes", net: Optional[dict[str, Any]] = None) -> CaptionerConfig:
    return resolve_preset(PRESETS, CaptionerConfig, preset, net, "captioner")


class PrefixLM:
    """The decoding interface ``sample_captions`` / ``beam_search`` drive, shared by every prefix-conditioned causal
    LM here (the captioner: a CLIP-embedding prefix; the prompt upsampler: a short-prompt prefix). A subclass has
    ``tok_emb``, ``text_pos`` (output positions), ``transformer``, ``head`` and ``cfg.max_len``, and embeds its own
    prefix."""

    def embed_tokens(self, tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Output tokens (B, n) at output positions start .. start + n - 1 -> (B, n, dim)."""
        return self.tok_emb(tokens) + self.text_pos[start : start + tokens.shape[1]]

    def hidden(self, x: torch.Tensor, cache: Optional[KVCache] = None, start_pos: int = 0) -> torch.Tensor:
        return self.transformer(x, None, cache, start_pos)  # None: dense causal

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h)

    def new_cache(
        self, batch: int, max_len: Optional[int] = None, dtype: Optional[torch.dtype] = None, device=None
    ) -> KVCache:
        return self.transformer.new_cache(batch, max_len or self.cfg.max_len, dtype, device)


class Captioner(PrefixLM, nn.Module):
    """Prefix mapping, the generic causal ``Transformer`` and a tied LM head."""

    def __init__(self, cfg: CaptionerConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.prefix_map = nn.Sequential(nn.Linear(cfg.embed_dim, d), nn.GELU(), nn.Linear(d, cfg.n_prefix * d))
        self.prefix_pos = nn.Parameter(torch.empty(cfg.n_prefix, d))
        if cfg.patch_dim > 0:
            if cfg.n_patches < 1:
                raise ValueError("patch_dim > 0 needs n_patches >= 1 (the most patch tokens a batch carries)")
            self.patch_proj = nn.Linear(cfg.patch_dim, d)
            self.patch_pos = nn.Parameter(torch.empty(cfg.n_patches, d))
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.text_pos = nn.Parameter(torch.empty(cfg.text_len, d))
        self.transformer = Transformer(d, cfg.n_layers, cfg.n_heads, cfg.head_dim, cfg.mlp_ratio, cfg.dropout)
        self.head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # tied (GPT-2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        extra = [self.prefix_pos, self.text_pos] + ([self.patch_pos] if self.cfg.patch_dim > 0 else [])
        gpt2_init_(self, self.transformer, extra)

    # ------------------------------------------------------------------------------------------- embeddings
    def embed_prefix(self, image_emb: torch.Tensor, patches: Optional[torch.Tensor] = None) -> torch.Tensor:
        """CLIP image embedding (B, D) [+ patch tokens (B, P, patch_dim)] -> (B, prefix_len, dim).

        Fewer than ``n_patches`` patch tokens are allowed (the stream is then shorter: callers take the length from
        the returned tensor)."""
        c = self.cfg
        if image_emb.dim() != 2 or image_emb.shape[1] != c.embed_dim:
            raise ValueError(
                f"image embedding of shape {tuple(image_emb.shape)}; the captioner takes (B, "
                f"{c.embed_dim}) (net.embed_dim)"
            )
        w = self.prefix_map[0].weight
        z = F.normalize(image_emb.to(w.dtype), dim=-1)
        if c.prefix_emb_norm:  # unit RMS instead of unit norm (the config's comment)
            z = z * c.embed_dim**0.5
        x = self.prefix_map(z).view(len(z), c.n_prefix, c.dim) + self.prefix_pos  # (B, k, dim)
        if c.patch_dim > 0:
            if patches is None:
                raise ValueError(
                    f"this captioner takes CLIP patch tokens (net.patch_dim={c.patch_dim}): pass "
                    f"clip_image_patches (B, P <= {c.n_patches}, {c.patch_dim})"
                )
            p = patches.shape[1]
            if p > c.n_patches or patches.shape[2] != c.patch_dim:
                raise ValueError(
                    f"patch tokens of shape {tuple(patches.shape)}; the captioner takes (B, <= "
                    f"{c.n_patches}, {c.patch_dim})"
                )
            x = torch.cat([x, self.patch_proj(patches.to(w.dtype)) + self.patch_pos[:p]], 1)
        elif patches is not None:
            raise ValueError("patch tokens given but the captioner has none (net.patch_dim=0)")
        return x

    # ------------------------------------------------------------------------------------------- training
    def forward(
        self, image_emb: torch.Tensor, tokens: torch.Tensor, patches: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """tokens (B, n) starting with [SOT] -> logits (B, n - 1, V); logits[:, j] predicts tokens[:, j + 1]."""
        if tokens.shape[1] > self.cfg.text_len:
            raise ValueError(f"captions of {tokens.shape[1]} tokens; the captioner takes text_len={self.cfg.text_len}")
        prefix = self.embed_prefix(image_emb, patches)
        x = torch.cat([prefix, self.embed_tokens(tokens[:, :-1])], 1)  # (B, prefix + n - 1, dim)
        h = self.hidden(x)
        return self.logits(h[:, prefix.shape[1] :])

    def loss(
        self, image_emb: torch.Tensor, tokens: torch.Tensor, patches: Optional[torch.Tensor] = None
    ) -> dict[str, torch.Tensor]:
        logits = self(image_emb, tokens, patches)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()  # CE in >= fp32
        target = tokens[:, 1:]
        keep = target != self.cfg.pad_id
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=self.cfg.pad_id)
        with torch.no_grad():
            acc = ((logits.argmax(-1) == target) & keep).sum() / keep.sum().clamp(min=1)
        return {"loss": loss, "token_acc": acc}


# ------------------------------------------------------------------------------------------------ decoding
def never_drawn(cfg: CaptionerConfig, n_valid: Optional[int], device) -> torch.Tensor:
    """(V,) bool: the ids decoding must never emit after [SOT]. [SOT] and [PAD] are never targets there (the loss
    ignores [PAD]; [SOT] starts every caption), yet an untrained or briefly trained network gives them mass (a fresh
    captioner repeats [SOT], which decodes to ''); and ids from ``n_valid`` up (the fitted BPE's vocabulary, when the
    network's ``vocab_size`` is larger: 1024 against a 300-400-word BPE on shapes) have no text, so the tokenizer
    dropped them from the decoded caption without a word."""
    banned = torch.zeros(cfg.vocab_size, dtype=torch.bool, device=device)
    if n_valid is not None and 0 < int(n_valid) < cfg.vocab_size:
        banned[int(n_valid) :] = True
    banned[[cfg.sot_id, cfg.pad_id]] = True
    return banned


def _finish(out: torch.Tensor, done: torch.Tensor, tok: torch.Tensor, pos: int, cfg: CaptionerConfig) -> torch.Tensor:
    """Write tok (B,) at caption position pos (padding where already done); return the updated done mask."""
    out[:, pos] = torch.where(done, torch.full_like(tok, cfg.pad_id), tok)
    return done | (tok == cfg.eot_id)


@torch.no_grad()
def sample_captions(
    model: Captioner,
    image_emb: torch.Tensor,
    patches: Optional[torch.Tensor] = None,
    temperature: float = 0.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    max_len: Optional[int] = None,
    use_cache: bool = True,
    generator: Optional[torch.Generator] = None,
    n_valid: Optional[int] = None,
) -> torch.Tensor:
    """Caption tokens (B, max_len) laid out as the tokenizer's (``[SOT] ... [EOT] [PAD] ...``; a caption that hits
    ``max_len`` has no EOT). ``temperature <= 0``: greedy (argmax). Otherwise every token is drawn from
    softmax(filtered logits / temperature) with Gumbel-max noise from ``generator`` (``filter_logits``: ``top_p``
    nucleus, ``top_k``), identical draws in the cached and uncached paths. [SOT], [PAD] and ids from ``n_valid`` (the
    tokenizer's vocabulary size) up are never drawn (``never_drawn``)."""
    cfg = model.cfg
    n = min(max_len or cfg.text_len, cfg.text_len)
    b, device = image_emb.shape[0], image_emb.device
    out = torch.full((b, n), cfg.pad_id, dtype=torch.long, device=device)
    out[:, 0] = cfg.sot_id
    done = torch.zeros(b, dtype=torch.bool, device=device)
    banned = never_drawn(cfg, n_valid, device)

    def pick(logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float().masked_fill(banned, float("-inf"))
        if temperature > 0:
            logits = filter_logits(logits / temperature, top_k, top_p)
        return gumbel_pick(logits, 1.0 if temperature > 0 else 0.0, generator)

    was_training = model.training
    model.eval()
    try:
        prefix = model.embed_prefix(image_emb, patches)  # (B, k [+ P], dim)
        p0 = prefix.shape[1]
        if use_cache:
            cache = model.new_cache(b, p0 + n, device=device)
            h = model.hidden(torch.cat([prefix, model.embed_tokens(out[:, :1])], 1), cache)
            logits = model.logits(h[:, -1])
            for t in range(1, n):
                done = _finish(out, done, pick(logits), t, cfg)
                if bool(done.all()) or t + 1 >= n:
                    break
                h = model.hidden(model.embed_tokens(out[:, t : t + 1], start=t), cache, p0 + t)  # token t at p0 + t
                logits = model.logits(h[:, -1])
        else:
            for t in range(1, n):
                h = model.hidden(torch.cat([prefix, model.embed_tokens(out[:, :t])], 1))
                done = _finish(out, done, pick(model.logits(h[:, -1])), t, cfg)
                if bool(done.all()):
                    break
    finally:
        model.train(was_training)
    return out


def _reorder(cache: KVCache, index: torch.Tensor) -> None:
    """Keep the cache rows ``index`` (batch dimension) in place of the current ones (beam search)."""
    cache.k = cache.k.index_select(1, index)
    cache.v = cache.v.index_select(1, index)


@torch.no_grad()
def beam_search(
    model: Captioner,
    image_emb: torch.Tensor,
    patches: Optional[torch.Tensor] = None,
    beam_width: int = 4,
    length_penalty: float = 1.0,
    max_len: Optional[int] = None,
    use_cache: bool = True,
    return_scores: bool = False,
    n_valid: Optional[int] = None,
):
    """Beam search: caption tokens (B, max_len) in the tokenizer's layout (and, with ``return_scores``, the chosen
    beams' summed log-probabilities (B,)).

    W = ``beam_width`` hypotheses per image, all in one batch of B * W (the KV cache is reordered by
    ``index_select`` after each step). At start only beam 0 is live (the others are -inf) so that the W beams are
    distinct. A beam that emitted [EOT] stays in the beam, extended by [PAD] at log-probability 0 (so it competes
    with the live ones on its final score). The search stops when every beam is finished or at ``max_len``; the
    result is the beam maximising ``logp / length ** length_penalty`` (length: tokens after [SOT], EOT included).
    With W = 1 every step keeps the argmax: exactly greedy decoding. Live beams never take [SOT], [PAD] or ids from
    ``n_valid`` up (``never_drawn``)."""
    cfg = model.cfg
    if beam_width < 1:
        raise ValueError(f"beam_width must be >= 1, got {beam_width}")
    n = min(max_len or cfg.text_len, cfg.text_len)
    b, w, device = image_emb.shape[0], int(beam_width), image_emb.device
    v = cfg.vocab_size
    bw = b * w
    seq = torch.full((bw, n), cfg.pad_id, dtype=torch.long, device=device)
    seq[:, 0] = cfg.sot_id
    scores = torch.full((b, w), float("-inf"), dtype=torch.float64, device=device)
    scores[:, 0] = 0.0
    done = torch.zeros(bw, dtype=torch.bool, device=device)
    lengths = torch.zeros(bw, dtype=torch.long, device=device)
    finished_row = torch.full((v,), float("-inf"), dtype=torch.float64, device=device)
    finished_row[cfg.pad_id] = 0.0
    banned = never_drawn(cfg, n_valid, device)

    was_training = model.training
    model.eval()
    try:
        emb = image_emb.repeat_interleave(w, 0)  # (B W, D), beams of an image adjacent
        pat = patches.repeat_interleave(w, 0) if patches is not None else None
        prefix = model.embed_prefix(emb, pat)
        p0 = prefix.shape[1]
        cache = model.new_cache(bw, p0 + n, device=device) if use_cache else None
        h = model.hidden(torch.cat([prefix, model.embed_tokens(seq[:, :1])], 1), cache)
        logits = model.logits(h[:, -1])
        for t in range(1, n):
            logp = logits.double().masked_fill(banned, float("-inf")).log_softmax(-1)  # (B W, V)
            logp = torch.where(done[:, None], finished_row, logp)
            cand = (scores.view(bw, 1) + logp).view(b, w * v)
            top, idx = cand.topk(w, dim=-1)  # (B, W)
            src = (idx // v + torch.arange(b, device=device)[:, None] * w).flatten()  # parent rows (B W,)
            tok = (idx % v).flatten()
            seq, done, lengths = seq[src], done[src], lengths[src]
            seq[:, t] = torch.where(done, torch.full_like(tok, cfg.pad_id), tok)
            lengths = lengths + (~done).long()
            done = done | (tok == cfg.eot_id)
            scores = top
            if bool(done.all()) or t + 1 >= n:
                break
            if use_cache:
                _reorder(cache, src)
                h = model.hidden(model.embed_tokens(seq[:, t : t + 1], start=t), cache, p0 + t)
            else:
                h = model.hidden(torch.cat([prefix, model.embed_tokens(seq[:, : t + 1])], 1))
            logits = model.logits(h[:, -1])
    finally:
        model.train(was_training)
    norm = scores / lengths.view(b, w).clamp(min=1).double().pow(length_penalty)
    best = norm.argmax(-1)  # (B,)
    rows = best + torch.arange(b, device=device) * w
    out = seq[rows]
    return (out, scores.gather(1, best[:, None]).squeeze(1)) if return_scores else out
