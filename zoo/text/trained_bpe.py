"""A byte-level BPE fitted on a dataset's captions with HuggingFace ``tokenizers`` (DALL·E used 16,384 tokens).

Model: NFKC + lower-case normaliser, byte-level pre-tokeniser (prefix space) and decoder, BPE merges; special
tokens ``[PAD]`` = 0, ``[UNK]`` = 1, ``[SOT]`` = 2, ``[EOT]`` = 3, then the 256 byte symbols, then the merges.
Byte-level means any Unicode caption encodes without unknown tokens and decodes back (after lower-casing/NFKC).
Whitespace is not part of a caption's identity: every run of whitespace (spaces, tabs, newlines) becomes one space
and the ends are stripped, before fitting and before encoding (``squeeze_whitespace``), so "a red  circle\n" typed
at sampling time is the "a red circle" the model was trained on. (Done in Python, not in tokenizer.json, so that
tokenizers fitted before behave the same way.)
Saved and reloaded as one ``tokenizer.json`` (written atomically: temp file + ``os.replace``; mode 0o664 and new
folders 0o775 whatever the umask, so a cache on shared storage is readable by the group).

The fitted-on-first-use cache (``LazyTrainedBPE``) is keyed by what it was fitted on: the DataModule passes a
"fit key" (data identity -- e.g. shapes world version/seed/size/caption style, or the COCO root and annotation file
-- plus the requested vocabulary size and ``BPE_FORMAT``); the file is ``<stem>-<digest of the key>.json`` with the
key itself beside it in ``<stem>-<digest>.key.json``, so a tokenizer fitted on other captions is never reused, and
several keys share one cache folder without overwriting each other.

The vocabulary actually reached can be smaller than requested on a small corpus (there are only so many merges
to make): ``vocab_size`` is always the real size, ``requested_vocab_size`` what was asked for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from zoo.text.base import TextTokenizer, sanitize_text

log = logging.getLogger("zoo.text")
SPECIALS = ["[PAD]", "[UNK]", "[SOT]", "[EOT]"]
MIN_VOCAB = 256 + len(SPECIALS)  # the byte alphabet plus the special tokens
# Part of every fit key: bump when a change to ``train`` (normaliser, pre-tokeniser, trainer options) would fit a
# different tokenizer on the same captions, so that cached files from before are refitted.
BPE_FORMAT = 1
FILE_MODE, DIR_MODE = 0o664, 0o775  # group-readable caches (shared storage), independent of the umask


def squeeze_whitespace(text: str) -> str:
    """One space for every run of whitespace, none at the ends."""
    return " ".join(text.split())


def _make_dirs(folder: Path) -> None:
    """``mkdir -p`` that sets DIR_MODE on the folders it creates (only those: never chmods an existing parent)."""
    created = []
    while not folder.exists():
        created.append(folder)
        folder = folder.parent
    for d in reversed(created):
        try:
            d.mkdir()
        except FileExistsError:  # another process made it meanwhile
            continue
        os.chmod(d, DIR_MODE)


def _atomic_write_text(path: Path, text: str) -> None:
    _make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fit_key_digest(key: dict) -> str:
    """12 hex digits naming a fit key (canonical JSON: sorted keys)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def keyed_paths(path: str | os.PathLike, key: dict) -> tuple[Path, Path]:
    """(tokenizer file, key file) for ``key``: ``dir/tokenizer.json`` -> ``dir/tokenizer-<digest>.json`` and
    ``dir/tokenizer-<digest>.key.json``."""
    path = Path(path).expanduser()
    stem = path.name[: -len(".json")] if path.name.endswith(".json") else path.name
    digest = fit_key_digest(key)
    return path.with_name(f"{stem}-{digest}.json"), path.with_name(f"{stem}-{digest}.key.json")


class TrainedBPETokenizer(TextTokenizer):
    """Load with ``TrainedBPETokenizer(path)``; make one with ``TrainedBPETokenizer.train(captions, ...)`` or
    ``TrainedBPETokenizer.load_or_train(path, captions_fn, ...)``."""

    spec_kind = "trained_bpe"

    def __init__(self, path: str | os.PathLike, context_length: int = 64):
        from tokenizers import Tokenizer

        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"tokenizer file not found: {path} (fix: fit one with "
                f"TrainedBPETokenizer.train(captions, vocab_size=..., path='{path}') or "
                f"TrainedBPETokenizer.load_or_train(...), or use data/tokenizer=bpe, which fits it on the training "
                f"captions the first time)"
            )
        self._setup(Tokenizer.from_file(str(path)), path, context_length)

    def _setup(self, tok, path: Optional[Path], context_length: int) -> None:
        if int(context_length) < 2:
            raise ValueError(f"context_length must be >= 2 (SOT + EOT), got {context_length}")
        # A caption's own text never becomes a special token: without this, tokenizers matches the literal text
        # "[EOT]" / "[PAD]" / "[SOT]" in a caption to the special ids (a caption ending mid-way for the model and for
        # ``decode``, a pad id inside the text). Not part of tokenizer.json, so it is set on every load.
        tok.encode_special_tokens = True
        self._tok, self.path, self.context_length = tok, path, int(context_length)
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        ids = {s: tok.token_to_id(s) for s in SPECIALS}
        missing = [s for s in ("[PAD]", "[SOT]", "[EOT]") if ids[s] is None]
        if missing:
            raise ValueError(
                f"{path or 'tokenizer'} lacks the special tokens {missing} (fix: refit it with "
                f"TrainedBPETokenizer.train)"
            )
        self.pad_id, self.sot_id, self.eot_id = ids["[PAD]"], ids["[SOT]"], ids["[EOT]"]
        self.unk_id = ids["[UNK]"]  # None in tokenizer.json files fitted before [UNK] was added
        self.requested_vocab_size = self.vocab_size

    def _ids(self, text: str) -> list[int]:
        return self._tok.encode(squeeze_whitespace(text), add_special_tokens=False).ids

    def _text(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True).strip()

    @classmethod
    def train(
        cls,
        captions: Iterable[str],
        vocab_size: int = 16384,
        path: str | os.PathLike | None = None,
        context_length: int = 64,
    ) -> "TrainedBPETokenizer":
        """Fit on ``captions``; save ``tokenizer.json`` at ``path`` (atomically) unless ``path`` is None."""
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

        vocab_size = int(vocab_size)
        if vocab_size < MIN_VOCAB:
            raise ValueError(
                f"vocab_size must be >= {MIN_VOCAB} (256 bytes + {len(SPECIALS)} special tokens), got {vocab_size}"
            )
        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIALS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        # the captions as encode() will see them: sanitised (never a crash on a lone surrogate) and squeezed
        texts = (squeeze_whitespace(sanitize_text(c)[0]) for c in captions)
        tok.train_from_iterator((t for t in texts if t), trainer=trainer)
        if path is not None:
            path = Path(path).expanduser()
            _atomic_write_text(path, tok.to_str())  # a kill mid-write never leaves a broken tokenizer.json
        self = cls.__new__(cls)
        self._setup(tok, path, context_length)
        self.requested_vocab_size = vocab_size
        return self

    @classmethod
    def load_or_train(
        cls,
        path: str | os.PathLike,
        captions_fn: Callable[[], Iterable[str]],
        vocab_size: int = 16384,
        context_length: int = 64,
    ) -> "TrainedBPETokenizer":
        """Load ``path`` if it exists, else fit on ``captions_fn()`` (called only then) and save it there.
        An existing file is used as is, whatever ``vocab_size`` it was fitted with (put the size in the path)."""
        if Path(path).expanduser().is_file():
            tok = cls(path, context_length)
            tok.requested_vocab_size = int(vocab_size)
            return tok
        return cls.train(captions_fn(), vocab_size=vocab_size, path=path, context_length=context_length)

    def to_spec(self) -> dict[str, Any]:
        """The whole ``tokenizer.json`` as a string, so a checkpoint needs no tokenizer file."""
        return {"kind": self.spec_kind, "json": self._tok.to_str(), "context_length": int(self.context_length)}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "TrainedBPETokenizer":
        from tokenizers import Tokenizer

        self = cls.__new__(cls)
        self._setup(Tokenizer.from_str(spec["json"]), None, spec["context_length"])
        return self

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_tok"] = self._tok.to_str()  # DataLoader workers pickle the collate function that holds us
        return state

    def __setstate__(self, state: dict) -> None:
        from tokenizers import Tokenizer

        state["_tok"] = Tokenizer.from_str(state["_tok"])
        state["_tok"].encode_special_tokens = True  # as in _setup (not saved in the JSON)
        self.__dict__.update(state)


class LazyTrainedBPE(TextTokenizer):
    """A trained BPE that fits itself on the training captions the first time a DataModule asks for it
    (``ensure_ready``, called from ``ImageTextDataModule.setup`` / ``prepare_tokenizer``), then reloads it on every
    later run with the same fit key. Used by ``conf/data/tokenizer/bpe.yaml``.

    ``path`` names the cache: with a ``fit_key`` (what every zoo DataModule passes) the file actually used is
    ``keyed_paths(path, key)[0]`` (``self.file``), and it is reused only if the key stored beside it equals this
    run's; without one, ``path`` itself is loaded if it exists (the caller vouches for it) or fitted."""

    def __init__(self, path: str | os.PathLike, vocab_size: int = 16384, context_length: int = 64):
        self.path, self.requested_vocab = Path(path).expanduser(), int(vocab_size)
        self.context_length = int(context_length)
        self.file: Optional[Path] = None  # the tokenizer.json in use, once ready
        self._inner: Optional[TrainedBPETokenizer] = None

    def _load(self, inner: TrainedBPETokenizer) -> None:
        self._inner = inner
        self.file = inner.path
        self.vocab_size, self.pad_id, self.sot_id, self.eot_id = (
            inner.vocab_size,
            inner.pad_id,
            inner.sot_id,
            inner.eot_id,
        )

    def fit_key(self, data_key: dict) -> dict:
        """The full key of a fit: the data's identity, the requested vocabulary and the BPE format."""
        return {"bpe_format": BPE_FORMAT, "vocab_size": self.requested_vocab, "data": data_key}

    def ensure_ready(self, captions_fn: Callable[[], Iterable[str]], fit_key: Optional[dict] = None) -> None:
        """Load or fit (once per instance). ``fit_key``: a JSON-able dict naming the captions (data identity)."""
        if self._inner is not None:
            return
        if fit_key is None:
            self._load(
                TrainedBPETokenizer.load_or_train(self.path, captions_fn, self.requested_vocab, self.context_length)
            )
            return
        key = self.fit_key(fit_key)
        key = json.loads(json.dumps(key, sort_keys=True, default=str))  # what the key file will hold
        file, key_file = keyed_paths(self.path, key)
        if file.is_file():
            stored = None
            try:
                stored = json.loads(key_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                pass
            if stored == key:
                log.info("BPE tokenizer: reusing %s (fitted on %s)", file, json.dumps(key["data"], sort_keys=True))
                self._load(TrainedBPETokenizer(file, self.context_length))
                self._inner.requested_vocab_size = self.requested_vocab
                return
            log.warning(
                "BPE tokenizer: %s was fitted on %s, not on this run's data %s: refitting it",
                file,
                "unknown data (no readable key file)" if stored is None else json.dumps(stored, sort_keys=True),
                json.dumps(key, sort_keys=True),
            )
        else:
            if self.path.is_file():
                log.warning(
                    "BPE tokenizer: not reusing %s (it has no record of the captions it was fitted on); "
                    "fitting %s instead",
                    self.path,
                    file,
                )
            log.info(
                "BPE tokenizer: fitting %d tokens on %s -> %s",
                self.requested_vocab,
                json.dumps(key["data"], sort_keys=True),
                file,
            )
        key_file.unlink(missing_ok=True)  # never a key file beside a tokenizer it does not describe
        tok = TrainedBPETokenizer.train(
            captions_fn(), vocab_size=self.requested_vocab, path=file, context_length=self.context_length
        )
        _atomic_write_text(key_file, json.dumps(key, indent=1, sort_keys=True) + "\n")
        self._load(tok)

    def _require(self) -> TrainedBPETokenizer:
        if self._inner is None:
            raise RuntimeError(f"BPE at {self.path} not fitted yet: call ensure_ready(captions_fn) first")
        return self._inner

    def __getattr__(self, name: str):
        # vocab_size / pad_id / ... before fitting: a clear error instead of a bare AttributeError
        if name in ("vocab_size", "pad_id", "sot_id", "eot_id"):
            self._require()
        raise AttributeError(name)

    def to_spec(self) -> dict[str, Any]:
        """The fitted BPE's spec (a ``trained_bpe`` spec: it rebuilds as a ``TrainedBPETokenizer``)."""
        return self._require().to_spec()

    def _ids(self, text: str) -> list[int]:
        return self._require()._ids(text)

    def _text(self, ids: list[int]) -> str:
        return self._require()._text(ids)
