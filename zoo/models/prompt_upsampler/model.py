"""Prompt upsampler: a short prompt -> a descriptive caption, with a causal LM over caption BPE tokens.

Plain PyTorch (no Lightning). DALL·E 3 asks an LLM (GPT-4) to "upsample" short user prompts into descriptive ones;
here the text-to-text model is the captioner's decoder with the *short prompt's tokens* as its prefix instead of the
CLIP image embedding: the generic pre-LN ``zoo.nn.transformer.Transformer`` (dense causal), a token embedding shared
by prompt and output, and a tied LM head. It exposes the captioner's decoding interface (``embed_prefix``,
``embed_tokens``, ``hidden``, ``logits``, ``new_cache``, ``cfg.{text_len, vocab_size, pad_id, sot_id, eot_id}``), so
``zoo.models.captioner.model.sample_captions`` (greedy / nucleus, KV-cached) and ``beam_search`` decode it unchanged.

Sequence (P = ``prompt_len``, L = ``text_len``)::

    position : 0 .. P-1                          P          P+1 .. P+L-1
    input    : [SOT] prompt [EOT] [PAD] ...      [SOT]      t_1 .. t_{L-1}
               (prompt positions)                (output positions)
    predicts :  -                                t_1        t_2 .. (EOT, then padding)

The prompt is laid out as the tokenizer encodes it, right-padded (or cut) to ``prompt_len``; padding positions are
attended to like any token (the layout is the same in training and sampling). Loss: next-token cross-entropy over the
output (EOT included, padding ignored), in fp32.

Presets (parameters measured on the meta device in tests/models/test_prompt_upsampler.py):
    tiny    dim 64, 2 layers, 4 x 16 heads, vocab 1024, prompt 24 / output 64 tokens: 171,264 parameters.
    shapes  dim 256, 4 layers, 8 x 32 heads, vocab 1024 (data/tokenizer=bpe's size), prompt 32 / output 64 tokens:
            3,446,272 parameters.
    paper   DALL·E 3 uses GPT-4, whose size is not published; "paper" is our stand-in, GPT-2-small-shaped (width 768,
            12 layers, 12 x 64 heads) over DALL·E 1's 16,384-token BPE, prompt 64 / output 256 tokens (the paper's
            upsampled prompts are 15-80 words): 97,884,672 parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.models.captioner.model import PrefixLM
from zoo.models.presets import check_dropout, check_sizes, resolve_preset
from zoo.nn.transformer import Transformer, gpt2_init_


@dataclass
class PromptUpsamplerConfig:
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 8
    head_dim: int = 32
    mlp_ratio: int = 4
    dropout: float = 0.0
    vocab_size: int = 1024  # caption BPE vocabulary (>= the tokenizer's)
    prompt_len: int = 32  # prompt tokens incl. [SOT] and [EOT]; longer prompts are cut
    text_len: int = 64  # output tokens incl. [SOT] and [EOT]
    pad_id: int = 0  # zoo.text.TrainedBPETokenizer: [PAD] = 0, [SOT] = 2, [EOT] = 3
    sot_id: int = 2
    eot_id: int = 3

    def __post_init__(self):
        # 0 heads / layers / width built and trained without attention, blocks or a stream without a word, and
        # prompt_len=0 an upsampler that never reads the prompt
        sizes = ("dim", "n_layers", "n_heads", "head_dim", "mlp_ratio", "vocab_size")
        check_sizes(self, sizes, "prompt upsampler")
        check_sizes(self, ("prompt_len", "text_len"), "prompt upsampler", least=2)  # [SOT] and [EOT]
        check_dropout(self)

    @property
    def prefix_len(self) -> int:
        return self.prompt_len

    @property
    def max_len(self) -> int:
        return self.prompt_len + self.text_len


PRESETS: dict[str, PromptUpsamplerConfig] = {
    "tiny": PromptUpsamplerConfig(
        dim=64, n_layers=2, n_heads=4, head_dim=16, vocab_size=1024, prompt_len=24, text_len=64
    ),
    "shapes": PromptUpsamplerConfig(
        dim=256, n_layers=4, n_heads=8, head_dim=32, vocab_size=1024, prompt_len=32, text_len=64
    ),
    # DALL·E 3's upsampler is GPT-4 (size unpublished): a GPT-2-small-shaped stand-in over DALL·E 1's BPE
    "paper": PromptUpsamplerConfig(
        dim=768, n_layers=12, n_heads=12, head_dim=64, vocab_size=16384, prompt_len=64, text_len=256
    ),
}


def build_config(preset: str = "shapes", net: Optional[dict[str, Any]] = None) -> PromptUpsamplerConfig:
    return resolve_preset(PRESETS, PromptUpsamplerConfig, preset, net, "prompt_upsampler")


class PromptUpsampler(PrefixLM, nn.Module):
    """Token embedding (shared by prompt and output), prompt / output positions, the causal ``Transformer``, tied
    LM head. Decoded by the captioner's ``sample_captions`` / ``beam_search`` with the prompt tokens in place of the
    image embedding."""

    def __init__(self, cfg: PromptUpsamplerConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.prompt_pos = nn.Parameter(torch.empty(cfg.prompt_len, d))
        self.text_pos = nn.Parameter(torch.empty(cfg.text_len, d))
        self.transformer = Transformer(d, cfg.n_layers, cfg.n_heads, cfg.head_dim, cfg.mlp_ratio, cfg.dropout)
        self.head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # tied (GPT-2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        gpt2_init_(self, self.transformer, [self.prompt_pos, self.text_pos])

    def embed_prefix(self, prompt_tokens: torch.Tensor, patches: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Prompt token ids (B, P <= prompt_len) -> (B, P, dim). ``patches`` exists for the captioner's decoders
        (always None here)."""
        if patches is not None:
            raise ValueError("the prompt upsampler takes no patch tokens")
        if prompt_tokens.dim() != 2 or prompt_tokens.shape[1] > self.cfg.prompt_len:
            raise ValueError(
                f"prompt tokens of shape {tuple(prompt_tokens.shape)}; the upsampler takes (B, <= "
                f"{self.cfg.prompt_len}) (net.prompt_len)"
            )
        return self.tok_emb(prompt_tokens.long()) + self.prompt_pos[: prompt_tokens.shape[1]]

    def forward(self, prompt_tokens: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """prompt (B, P), output tokens (B, n) starting with [SOT] -> logits (B, n - 1, V) predicting tokens[:, 1:]."""
        if tokens.shape[1] > self.cfg.text_len:
            raise ValueError(f"outputs of {tokens.shape[1]} tokens; the upsampler takes text_len={self.cfg.text_len}")
        prefix = self.embed_prefix(prompt_tokens)
        h = self.hidden(torch.cat([prefix, self.embed_tokens(tokens[:, :-1])], 1))  # (B, P + n - 1, dim)
        return self.logits(h[:, prefix.shape[1] :])

    def loss(self, prompt_tokens: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self(prompt_tokens, tokens)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()  # CE in >= fp32
        target = tokens[:, 1:]
        keep = target != self.cfg.pad_id
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=self.cfg.pad_id)
        with torch.no_grad():
            acc = ((logits.argmax(-1) == target) & keep).sum() / keep.sum().clamp(min=1)
        return {"loss": loss, "token_acc": acc}
