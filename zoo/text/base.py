"""The one interface every text tokenizer offers: fixed-length LongTensor encodings (torch only)."""
from __future__ import annotations

import abc
from typing import Sequence, Union

import torch


class TextTokenizer(abc.ABC):
    """Captions <-> LongTensor (B, context_length).

    ``encode`` lays out each caption as ``[SOT] tokens... [EOT] pad pad ...``; a caption too long for the context is
    truncated and still ends with ``[EOT]`` (so a model always sees where the text stops). ``""`` (or ``None``) is
    just ``[SOT] [EOT]`` plus padding. ``decode`` reads each row up to its first ``[EOT]`` (or, without one, up to
    the trailing padding), drops ``[SOT]`` and returns the text.

    Subclasses set ``vocab_size``, ``pad_id``, ``sot_id``, ``eot_id``, ``context_length`` and implement ``_ids`` /
    ``_text`` for one caption without the special tokens.
    """

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
        """LongTensor (B, context_length); a single string gives B = 1."""
        if isinstance(texts, str):
            texts = [texts]
        if self.context_length < 2:
            raise ValueError(f"context_length must be >= 2 (SOT + EOT), got {self.context_length}")
        out = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [self.sot_id, *self._ids(text or "")][: self.context_length - 1] + [self.eot_id]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, tokens: torch.Tensor) -> list[str]:
        """Texts of a LongTensor (B, L) or (L,)."""
        if tokens.dim() == 1:
            tokens = tokens.unsqueeze(0)
        texts = []
        for row in tokens.tolist():
            if self.eot_id in row:
                row = row[: row.index(self.eot_id)]
            else:  # no EOT (e.g. a model's unfinished sample): drop the trailing padding only
                while row and row[-1] == self.pad_id:
                    row.pop()
            texts.append(self._text([t for t in row if t != self.sot_id]))
        return texts

    def __call__(self, texts: Union[str, Sequence[str]]) -> torch.Tensor:
        return self.encode(texts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, context_length={self.context_length})"
