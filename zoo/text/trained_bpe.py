"""A byte-level BPE fitted on a dataset's captions with HuggingFace ``tokenizers`` (DALL·E used 16,384 tokens).

Saved and reloaded as ``tokenizer.json``. Byte-level means any Unicode caption encodes without unknown tokens.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Optional

from zoo.text.base import TextTokenizer

SPECIALS = ["[PAD]", "[SOT]", "[EOT]"]


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


class TrainedBPETokenizer(TextTokenizer):
    """Load with ``TrainedBPETokenizer(path)``; make one with ``TrainedBPETokenizer.train(captions, ...)``."""

    def __init__(self, path: str | os.PathLike, context_length: int = 64):
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"tokenizer file not found: {path} (fix: fit one with TrainedBPETokenizer.train(captions, path=...), "
                f"or use data/tokenizer=bpe which fits it on the training captions the first time)"
            )
        self.path = path
        self._tok = Tokenizer.from_file(str(path))
        self.context_length = int(context_length)
        self.vocab_size = self._tok.get_vocab_size()
        self.pad_id, self.sot_id, self.eot_id = (self._tok.token_to_id(s) for s in SPECIALS)

    def _ids(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def _text(self, ids: list[int]) -> str:
        return self._tok.decode(ids).strip()

    @classmethod
    def train(cls, captions: Iterable[str], path: str | os.PathLike, vocab_size: int = 16384,
              context_length: int = 64) -> "TrainedBPETokenizer":
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(captions, trainer=trainer)
        _atomic_write_text(Path(path), tok.to_str())  # a kill mid-write never leaves a broken tokenizer.json
        return cls(path, context_length)


class LazyTrainedBPE(TextTokenizer):
    """A trained BPE that fits itself on the training captions the first time a DataModule asks for it
    (``ensure_ready``), then reloads ``path`` on every later run. Used by ``conf/data/tokenizer/bpe.yaml``."""

    def __init__(self, path: str | os.PathLike, vocab_size: int = 16384, context_length: int = 64):
        self.path, self.requested_vocab = Path(path), int(vocab_size)
        self.context_length = int(context_length)
        self._inner: Optional[TrainedBPETokenizer] = None
        if self.path.is_file():
            self._load(TrainedBPETokenizer(self.path, context_length))

    def _load(self, inner: TrainedBPETokenizer) -> None:
        self._inner = inner
        self.vocab_size, self.pad_id, self.sot_id, self.eot_id = inner.vocab_size, inner.pad_id, inner.sot_id, inner.eot_id

    def ensure_ready(self, captions_fn: Callable[[], Iterable[str]]) -> None:
        if self._inner is None:
            self._load(TrainedBPETokenizer.train(captions_fn(), self.path, self.requested_vocab, self.context_length))

    def _require(self) -> TrainedBPETokenizer:
        if self._inner is None:
            raise RuntimeError(f"BPE at {self.path} not fitted yet: call ensure_ready(captions_fn) first")
        return self._inner

    def _ids(self, text: str) -> list[int]:
        return self._require()._ids(text)

    def _text(self, ids: list[int]) -> str:
        return self._require()._text(ids)
