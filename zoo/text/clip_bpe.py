"""CLIP's byte-level BPE (49,408 tokens) through open_clip's ``SimpleTokenizer``; its vocabulary file
(``bpe_simple_vocab_16e6.txt.gz``) ships inside the open_clip wheel, so this works offline.

CLIP's tokenizer cleans text first (ftfy, HTML unescape, whitespace, lower case), and its decoder puts a space
after every word-final token, so ``decode`` gives back lower-cased text with punctuation spaced out
("a cat, sitting." -> "a cat , sitting ."). Lower-case words separated by single spaces round-trip exactly.
"""

from __future__ import annotations

from typing import Any, Optional

from zoo.text.base import TextTokenizer


class ClipBPETokenizer(TextTokenizer):
    spec_kind = "clip_bpe"

    def __init__(self, context_length: int = 77, vocab_size: Optional[int] = None):
        """``vocab_size``: optional, and then it must be CLIP's fixed 49,408 (a config that composes a trained BPE's
        settings under this tokenizer says so explicitly instead of silently keeping the BPE's size)."""
        from open_clip.tokenizer import SimpleTokenizer

        if int(context_length) < 2:
            raise ValueError(f"context_length must be >= 2 (SOT + EOT), got {context_length}")
        self._tok = SimpleTokenizer(context_length=int(context_length))
        self.context_length = int(context_length)
        self.vocab_size = len(self._tok.encoder)  # 49408
        if vocab_size is not None and int(vocab_size) != self.vocab_size:
            raise ValueError(
                f"CLIP BPE's vocabulary is fixed at {self.vocab_size} tokens, not {vocab_size} "
                f"(fix: data.tokenizer.vocab_size={self.vocab_size}, or leave it out)"
            )
        self.sot_id = self._tok.sot_token_id  # 49406, <start_of_text>
        self.eot_id = self._tok.eot_token_id  # 49407, <end_of_text>
        # open_clip pads with 0 (also the id of the byte "!"): decode cuts at EOT, so a real "!" is never dropped.
        self.pad_id = 0

    def _ids(self, text: str) -> list[int]:
        return self._tok.encode(text)

    def _text(self, ids: list[int]) -> str:
        return " ".join(self._tok.decode(ids).split())

    def to_spec(self) -> dict[str, Any]:
        return {"kind": self.spec_kind, "context_length": int(self.context_length)}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "ClipBPETokenizer":
        return cls(context_length=spec["context_length"])
