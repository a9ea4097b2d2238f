"""The one interface every text tokenizer offers: fixed-length LongTensor encodings (torch only)."""
from __future__ import annotations

import abc
from typing import Sequence, Union

import torch


class TextTokenizer(abc.ABC):
    """``encode`` -> LongTensor (B, context_length): [SOT] tokens [EOT] then ``pad_id``; a caption that is too long
    is truncated and still ends with EOT. ``decode`` drops SOT/EOT/pads."""

    vocab_size: int
    pad_id: int
    sot_id: int
    eot_id: int
    context_length: int

    @abc.abstractmethod
    def _ids(self, text: str) -> list[int]:
        """Token ids of one caption, without SOT/EOT."""

    @abc.abstractmethod
    def _text(self, ids: list[int]) -> str:
        """Inverse of ``_ids``."""

    def encode(self, texts: Union[str, Sequence[str]]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        out = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [self.sot_id, *self._ids(text or "")][: self.context_length - 1] + [self.eot_id]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, tokens: torch.Tensor) -> list[str]:
        if tokens.dim() == 1:
            tokens = tokens.unsqueeze(0)
        special = {self.pad_id, self.sot_id, self.eot_id}
        texts = []
        for row in tokens.tolist():
            ids = []
            for t in row:
                if t == self.eot_id:
                    break
                if t not in special:
                    ids.append(t)
            texts.append(self._text(ids))
        return texts
