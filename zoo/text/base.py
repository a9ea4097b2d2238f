"""The one interface every text tokenizer offers: fixed-length LongTensor encodings (torch only).

Hostile text is handled here, once, for every tokenizer (``sanitize_text``): ``bytes`` are decoded as UTF-8 with
``errors="replace"``; lone surrogates (what Python makes of invalid UTF-8 on a command line, or of a broken JSON
escape) become U+FFFD (command-line bytes that were valid UTF-8 are recovered); control characters other than tab
and newlines become a space. Each change and each truncation to the context is logged with the prompt it concerns
(logger ``zoo.text``; one message per ``encode`` call, and after ``MAX_WARNINGS`` calls per tokenizer the rest go to
DEBUG so a training loop over long captions does not flood the log).
"""

from __future__ import annotations

import abc
import logging
import re
from typing import Any, ClassVar, Optional, Sequence, Union

import torch

log = logging.getLogger("zoo.text")
MAX_WARNINGS = 5  # per tokenizer instance and kind (sanitised / truncated); later ones are logged at DEBUG

_SURROGATES = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # Unicode category Cc minus tab, \n, \r


def _short(text, n: int = 80) -> str:
    """``repr`` of a prompt, shortened for a log line."""
    r = repr(text)
    return r if len(r) <= n else r[: n - 4] + "...'"


def sanitize_text(text: Union[str, bytes, bytearray, None]) -> tuple[str, int]:
    """(clean text, number of characters replaced). See the module doc for the rules."""
    if text is None:
        return "", 0
    if isinstance(text, (bytes, bytearray)):
        decoded = bytes(text).decode("utf-8", errors="replace")
        bad = decoded.count("\ufffd") - bytes(text).count("\ufffd".encode())
        clean, n = sanitize_text(decoded)
        return clean, bad + n
    if not isinstance(text, str):  # a NaN from a CSV's empty cell would otherwise become the caption "nan"
        raise TypeError(
            f"a caption must be a str (or bytes, or None for the empty caption), got {type(text).__name__} "
            f"{_short(text)}"
        )
    replaced = 0
    if _SURROGATES.search(text):
        try:  # invalid UTF-8 bytes in argv arrive as U+DC80..U+DCFF (surrogateescape): decode them back, replacing
            fixed = text.encode("utf-8", "surrogateescape").decode("utf-8", errors="replace")
        except UnicodeEncodeError:  # other lone surrogates: valid pairs are joined, the rest replaced
            fixed = text.encode("utf-16", "surrogatepass").decode("utf-16", errors="replace")
        replaced += max(1, fixed.count("\ufffd") - text.count("\ufffd"))
        text = fixed
    text, n = _CONTROL.subn(" ", text)
    return text, replaced + n


class TextTokenizer(abc.ABC):
    """Captions <-> LongTensor (B, context_length).

    ``encode`` lays out each caption as ``[SOT] tokens... [EOT] pad pad ...``; a caption too long for the context is
    truncated and still ends with ``[EOT]`` (so a model always sees where the text stops). ``""`` (or ``None``) is
    just ``[SOT] [EOT]`` plus padding. ``decode`` reads each row up to its first ``[EOT]`` (or, without one, up to
    the trailing padding), drops ``[SOT]`` and returns the text.

    Subclasses set ``vocab_size``, ``pad_id``, ``sot_id``, ``eot_id``, ``context_length`` and implement ``_ids`` /
    ``_text`` for one caption without the special tokens.

    ``encode`` also takes ``bytes`` and sanitises every caption first (``sanitize_text``), with a warning naming the
    prompt; a caption cut to fit the context is reported in one warning per call, saying to how many tokens.
    """

    vocab_size: int
    pad_id: int
    sot_id: int
    eot_id: int
    context_length: int

    # -- specs: plain values that rebuild a tokenizer without its files (self-contained checkpoints) ----------
    spec_kind: ClassVar[Optional[str]] = None  # a subclass that can be rebuilt from a spec names its kind
    _spec_kinds: ClassVar[dict[str, type]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("spec_kind"):
            TextTokenizer._spec_kinds[cls.spec_kind] = cls

    def to_spec(self) -> Optional[dict[str, Any]]:
        """Plain values (str / int) that rebuild this tokenizer with ``TextTokenizer.from_spec``, or None when it
        cannot be described that way."""
        return None

    @classmethod
    def from_spec(cls, spec: Optional[dict[str, Any]]) -> Optional["TextTokenizer"]:
        """The tokenizer a ``to_spec()`` dict describes (None for an empty spec); the class is chosen by the
        spec's ``kind`` among the registered ``spec_kind``s (a spec never names code)."""
        if not spec:
            return None
        kind = spec.get("kind")
        target = TextTokenizer._spec_kinds.get(kind)
        if target is None:
            raise ValueError(f"unknown text tokenizer kind {kind!r}; known kinds: {sorted(TextTokenizer._spec_kinds)}")
        if not issubclass(target, cls):
            raise ValueError(f"a {kind!r} spec describes a {target.__name__}, not a {cls.__name__}")
        return target._from_spec(spec)

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "TextTokenizer":
        raise NotImplementedError

    @abc.abstractmethod
    def _ids(self, text: str) -> list[int]:
        """Token ids of one caption, without SOT/EOT."""

    @abc.abstractmethod
    def _text(self, ids: list[int]) -> str:
        """Inverse of ``_ids``."""

    def encode(self, texts: Union[str, bytes, Sequence[Union[str, bytes]]]) -> torch.Tensor:
        """LongTensor (B, context_length); a single string (or bytes) gives B = 1."""
        if isinstance(texts, (str, bytes, bytearray)):
            texts = [texts]
        elif not isinstance(texts, Sequence):
            try:
                texts = list(texts)
            except TypeError:
                raise TypeError(
                    f"encode takes a caption (str or bytes) or a sequence of them, got {type(texts).__name__} "
                    f"{_short(texts)}"
                ) from None
        if self.context_length < 2:
            raise ValueError(f"context_length must be >= 2 (SOT + EOT), got {self.context_length}")
        out = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        room = self.context_length - 2  # tokens left between SOT and EOT
        sanitised: list[tuple[Union[str, bytes], int]] = []
        truncated: list[tuple[str, int]] = []
        for i, raw in enumerate(texts):
            try:
                text, replaced = sanitize_text(raw)
            except TypeError as e:
                raise TypeError(f"caption {i} of {len(texts)}: {e}") from None
            if replaced:
                sanitised.append((raw, replaced))
            body = self._ids(text)
            if len(body) > room:
                truncated.append((text, len(body)))
            ids = [self.sot_id, *body[:room], self.eot_id]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        if sanitised:
            raw, n = sanitised[0]
            more = f" (and {len(sanitised) - 1} more of the {len(texts)} prompts)" if len(sanitised) > 1 else ""
            self._warn(
                "sanitised",
                "prompt %s: replaced %d undecodable, surrogate or control character(s) with U+FFFD or a space%s",
                _short(raw),
                n,
                more,
            )
        if truncated:
            text, n = truncated[0]
            more = f" (and {len(truncated) - 1} more of the {len(texts)} prompts)" if len(truncated) > 1 else ""
            self._warn(
                "truncated",
                "prompt %s has %d tokens: truncated to %d tokens (context_length %d = [SOT] + %d + [EOT])%s",
                _short(text),
                n,
                room,
                self.context_length,
                room,
                more,
            )
        return out

    def _warn(self, kind: str, msg: str, *args) -> None:
        """WARNING for the first ``MAX_WARNINGS`` calls of each kind on this tokenizer, then DEBUG."""
        counts = self.__dict__.setdefault("_warnings", {})
        counts[kind] = counts.get(kind, 0) + 1
        if counts[kind] <= MAX_WARNINGS:
            last = (
                " (further %s-prompt warnings from this tokenizer go to DEBUG)" % kind
                if counts[kind] == MAX_WARNINGS
                else ""
            )
            log.warning(msg + last, *args)
        else:
            log.debug(msg, *args)

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
