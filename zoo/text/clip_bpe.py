"""CLIP's byte-level BPE (49,408 tokens) through open_clip's ``SimpleTokenizer``; its vocabulary file
(``bpe_simple_vocab_16e6.txt.gz``) ships inside the open_clip wheel, so this works offline.

CLIP's tokenizer cleans text first (ftfy, HTML unescape, whitespace, lower case), and its decoder puts a space
after every word-final token, so ``decode`` gives back lower-cased text with punctuation spaced out
("a cat, sitting." -> "a cat , sitting ."). Lower-case words separated by single spaces round-trip exactly.

Two departures from ``SimpleTokenizer.encode``, both so that the ids between SOT and EOT are only ever text:

- the literal text ``<start_of_text>`` / ``<end_of_text>`` in a caption is ordinary text (open_clip's regex turns it
  into the special ids: a caption would end mid-way, and CLIP's pooling, which takes the first EOT, would too);
- the pad id 0 is also CLIP's id of a bare, non-word-final ``!`` (e.g. in ``says "sale!".``), and every model masks
  ``tokens == pad_id`` as padding; a word whose BPE would hold that token is split after the ``!`` so it becomes
  ``!</w>`` (256), and id 0 never appears before EOT. Other captions encode exactly as open_clip does.
"""

from __future__ import annotations

from typing import Any, Optional

from zoo.text.base import TextTokenizer

BARE_BANG = "!"  # CLIP's token 0: "!" not at the end of a word (the byte "!" is its own byte symbol)


class ClipBPETokenizer(TextTokenizer):
    spec_kind = "clip_bpe"

    def __init__(self, context_length: int = 77, vocab_size: Optional[int] = None):
        """``vocab_size``: optional, and then it must be CLIP's fixed 49,408 (a config that composes a trained BPE's
        settings under this tokenizer says so explicitly instead of silently keeping the BPE's size)."""
        import regex  # open_clip's own dependency (its word regex uses Unicode classes)
        from open_clip.tokenizer import SimpleTokenizer

        if int(context_length) < 2:
            raise ValueError(f"context_length must be >= 2 (SOT + EOT), got {context_length}")
        self._tok = SimpleTokenizer(context_length=int(context_length))
        # open_clip's word regex minus its leading "<start_of_text>|<end_of_text>|" alternatives (none has a "|")
        specials = {"<start_of_text>", "<end_of_text>"}
        words = "|".join(a for a in self._tok.pat.pattern.split("|") if a not in specials)
        self._pat = regex.compile(words, self._tok.pat.flags)
        self.context_length = int(context_length)
        self.vocab_size = len(self._tok.encoder)  # 49408
        if vocab_size is not None and int(vocab_size) != self.vocab_size:
            raise ValueError(
                f"CLIP BPE's vocabulary is fixed at {self.vocab_size} tokens, not {vocab_size} "
                f"(fix: data.tokenizer.vocab_size={self.vocab_size}, or leave it out)"
            )
        self.sot_id = self._tok.sot_token_id  # 49406, <start_of_text>
        self.eot_id = self._tok.eot_token_id  # 49407, <end_of_text>
        # open_clip pads with 0, also CLIP's id of a bare "!": _ids never emits it, so 0 before EOT is never text.
        self.pad_id = 0

    def _ids(self, text: str) -> list[int]:
        """``SimpleTokenizer.encode`` without its special-token regex and without a bare ``!`` (id 0 = pad)."""
        tok, ids = self._tok, []
        for word in self._pat.findall(tok.clean_fn(text)):
            ids += self._word_ids("".join(tok.byte_encoder[b] for b in word.encode("utf-8")))
        return ids

    def _word_ids(self, word: str) -> list[int]:
        pieces = self._tok.bpe(word).split(" ")
        if BARE_BANG not in pieces:
            return [self._tok.encoder[p] for p in pieces]
        # cut right after the first bare "!": the left part then ends in "!</w>"; the bare "!" is never the last
        # piece (that one ends in "</w>"), so both parts are shorter and this ends
        cut = sum(len(p) for p in pieces[: pieces.index(BARE_BANG) + 1])
        return self._word_ids(word[:cut]) + self._word_ids(word[cut:])

    def _text(self, ids: list[int]) -> str:
        return " ".join(self._tok.decode(ids).split())

    def to_spec(self) -> dict[str, Any]:
        return {"kind": self.spec_kind, "context_length": int(self.context_length)}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "ClipBPETokenizer":
        return cls(context_length=spec["context_length"])
