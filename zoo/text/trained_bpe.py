"""A byte-level BPE fitted on a dataset's captions with HuggingFace ``tokenizers`` (DALL·E used 16,384 tokens).

Model: NFKC + lower-case normaliser, byte-level pre-tokeniser (prefix space) and decoder, BPE merges; special
tokens ``[PAD]`` = 0, ``[UNK]`` = 1, ``[SOT]`` = 2, ``[EOT]`` = 3, then the 256 byte symbols, then the merges.
Byte-level means any Unicode caption encodes without unknown tokens and decodes back (after lower-casing/NFKC).
Saved and reloaded as one ``tokenizer.json`` (written atomically: temp file + ``os.replace``).

The vocabulary actually reached can be smaller than requested on a small corpus (there are only so many merges
to make): ``vocab_size`` is always the real size, ``requested_vocab_size`` what was asked for.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Optional

from zoo.text.base import TextTokenizer

SPECIALS = ["[PAD]", "[UNK]", "[SOT]", "[EOT]"]
MIN_VOCAB = 256 + len(SPECIALS)  # the byte alphabet plus the special tokens


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class TrainedBPETokenizer(TextTokenizer):
    """Load with ``TrainedBPETokenizer(path)``; make one with ``TrainedBPETokenizer.train(captions, ...)`` or
    ``TrainedBPETokenizer.load_or_train(path, captions_fn, ...)``."""

    def __init__(self, path: str | os.PathLike, context_length: int = 64):
        from tokenizers import Tokenizer

        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"tokenizer file not found: {path} (fix: fit one with "
                f"TrainedBPETokenizer.train(captions, vocab_size=..., path='{path}') or "
                f"TrainedBPETokenizer.load_or_train(...), or use data/tokenizer=bpe, which fits it on the training "
                f"captions the first time)")
        self._setup(Tokenizer.from_file(str(path)), path, context_length)

    def _setup(self, tok, path: Optional[Path], context_length: int) -> None:
        if int(context_length) < 2:
            raise ValueError(f"context_length must be >= 2 (SOT + EOT), got {context_length}")
        self._tok, self.path, self.context_length = tok, path, int(context_length)
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        ids = {s: tok.token_to_id(s) for s in SPECIALS}
        missing = [s for s in ("[PAD]", "[SOT]", "[EOT]") if ids[s] is None]
        if missing:
            raise ValueError(f"{path or 'tokenizer'} lacks the special tokens {missing} (fix: refit it with "
                             f"TrainedBPETokenizer.train)")
        self.pad_id, self.sot_id, self.eot_id = ids["[PAD]"], ids["[SOT]"], ids["[EOT]"]
        self.unk_id = ids["[UNK]"]  # None in tokenizer.json files fitted before [UNK] was added
        self.requested_vocab_size = self.vocab_size

    def _ids(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def _text(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True).strip()

    @classmethod
    def train(cls, captions: Iterable[str], vocab_size: int = 16384, path: str | os.PathLike | None = None,
              context_length: int = 64) -> "TrainedBPETokenizer":
        """Fit on ``captions``; save ``tokenizer.json`` at ``path`` (atomically) unless ``path`` is None."""
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

        vocab_size = int(vocab_size)
        if vocab_size < MIN_VOCAB:
            raise ValueError(f"vocab_size must be >= {MIN_VOCAB} (256 bytes + {len(SPECIALS)} special tokens), "
                             f"got {vocab_size}")
        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator((c for c in captions if c), trainer=trainer)
        if path is not None:
            path = Path(path).expanduser()
            _atomic_write_text(path, tok.to_str())  # a kill mid-write never leaves a broken tokenizer.json
        self = cls.__new__(cls)
        self._setup(tok, path, context_length)
        self.requested_vocab_size = vocab_size
        return self

    @classmethod
    def load_or_train(cls, path: str | os.PathLike, captions_fn: Callable[[], Iterable[str]],
                      vocab_size: int = 16384, context_length: int = 64) -> "TrainedBPETokenizer":
        """Load ``path`` if it exists, else fit on ``captions_fn()`` (called only then) and save it there.
        An existing file is used as is, whatever ``vocab_size`` it was fitted with (put the size in the path)."""
        if Path(path).expanduser().is_file():
            tok = cls(path, context_length)
            tok.requested_vocab_size = int(vocab_size)
            return tok
        return cls.train(captions_fn(), vocab_size=vocab_size, path=path, context_length=context_length)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_tok"] = self._tok.to_str()  # DataLoader workers pickle the collate function that holds us
        return state

    def __setstate__(self, state: dict) -> None:
        from tokenizers import Tokenizer

        state["_tok"] = Tokenizer.from_str(state["_tok"])
        self.__dict__.update(state)


class LazyTrainedBPE(TextTokenizer):
    """A trained BPE that fits itself on the training captions the first time a DataModule asks for it
    (``ensure_ready``, called from ``ImageTextDataModule.setup``), then reloads ``path`` on every later run.
    Used by ``conf/data/tokenizer/bpe.yaml``."""

    def __init__(self, path: str | os.PathLike, vocab_size: int = 16384, context_length: int = 64):
        self.path, self.requested_vocab = Path(path).expanduser(), int(vocab_size)
        self.context_length = int(context_length)
        self._inner: Optional[TrainedBPETokenizer] = None
        if self.path.is_file():
            self._load(TrainedBPETokenizer(self.path, context_length))

    def _load(self, inner: TrainedBPETokenizer) -> None:
        self._inner = inner
        self.vocab_size, self.pad_id, self.sot_id, self.eot_id = inner.vocab_size, inner.pad_id, inner.sot_id, inner.eot_id

    def ensure_ready(self, captions_fn: Callable[[], Iterable[str]]) -> None:
        if self._inner is None:
            self._load(TrainedBPETokenizer.load_or_train(self.path, captions_fn, self.requested_vocab,
                                                         self.context_length))

    def _require(self) -> TrainedBPETokenizer:
        if self._inner is None:
            raise RuntimeError(f"BPE at {self.path} not fitted yet: call ensure_ready(captions_fn) first")
        return self._inner

    def __getattr__(self, name: str):
        # vocab_size / pad_id / ... before fitting: a clear error instead of a bare AttributeError
        if name in ("vocab_size", "pad_id", "sot_id", "eot_id"):
            self._require()
        raise AttributeError(name)

    def _ids(self, text: str) -> list[int]:
        return self._require()._ids(text)

    def _text(self, ids: list[int]) -> str:
        return self._require()._text(ids)
