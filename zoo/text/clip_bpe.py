"""CLIP's byte-level BPE (49,408 tokens) through open_clip; its vocabulary file ships in the wheel (offline)."""
from __future__ import annotations

from zoo.text.base import TextTokenizer


class ClipBPETokenizer(TextTokenizer):
    def __init__(self, context_length: int = 77):
        from open_clip.tokenizer import SimpleTokenizer

        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (SOT + EOT), got {context_length}")
        self._tok = SimpleTokenizer()
        self.context_length = int(context_length)
        self.vocab_size = len(self._tok.encoder)
        self.sot_id = self._tok.all_special_ids[0]
        self.eot_id = self._tok.all_special_ids[1]
        self.pad_id = 0  # open_clip pads with 0 (the "!" token); EOT always precedes the padding

    def _ids(self, text: str) -> list[int]:
        return self._tok.encode(text)

    def _text(self, ids: list[int]) -> str:
        return self._tok.decode(ids).strip()
