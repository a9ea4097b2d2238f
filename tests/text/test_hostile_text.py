"""Hostile prompts through both tokenizers: invalid UTF-8, lone surrogates, control characters, over-long text.

Each is sanitised (never a crash) with a warning naming the prompt; a truncation says to how many tokens, once per
``encode`` call, and a training loop over long captions does not flood the log.
"""

from __future__ import annotations

import logging
import pickle

import pytest
import torch

from zoo.text import ClipBPETokenizer, TrainedBPETokenizer
from zoo.text.base import MAX_WARNINGS, sanitize_text

CAPTIONS = [
    "a large red circle at the top left",
    "a small blue square at the bottom right",
    "two green triangles on a white background",
] * 10


@pytest.fixture(scope="module")
def bpe():
    return TrainedBPETokenizer.train(CAPTIONS, vocab_size=300, context_length=16)


@pytest.fixture(scope="module")
def clip():
    return ClipBPETokenizer(context_length=16)


def _fresh(tok):
    tok.__dict__.pop("_warnings", None)  # the per-instance warning budget
    return tok


# what Python hands a program for `zoo-sample prompts='["a r\xc3\xa9d \xff circle"]'`: argv is decoded with
# surrogateescape, so the invalid byte \xff arrives as the lone surrogate \udcff
ARGV_PROMPT = b"a r\xc3\xa9d \xff circle".decode("utf-8", "surrogateescape")
HOSTILE = [ARGV_PROMPT, "a \ud800 lone high surrogate", "nul\x00 and escape\x1b[31m red", "c1 control \x85 here"]


def test_sanitize_rules():
    assert sanitize_text(ARGV_PROMPT) == ("a réd \ufffd circle", 1)  # valid bytes recovered, the bad one replaced
    assert sanitize_text("x \ud800 y") == ("x \ufffd y", 1)
    assert sanitize_text("\ud83d\ude00 ok") == ("\U0001f600 ok", 1)  # a surrogate pair in a str is joined
    assert sanitize_text("tab\tnew\nline\x00") == ("tab\tnew\nline ", 1)  # tab / newlines kept, NUL -> space
    assert sanitize_text(b"by\xfftes \xef\xbf\xbd") == ("by\ufffdtes \ufffd", 1)  # a real U+FFFD is not counted
    assert sanitize_text(None) == ("", 0) and sanitize_text("plain") == ("plain", 0)


@pytest.mark.parametrize("name", ["bpe", "clip"])
def test_hostile_prompts_encode_with_a_warning_naming_the_prompt(name, request, caplog):
    tok = _fresh(request.getfixturevalue(name))
    for prompt in HOSTILE:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="zoo.text"):
            tokens = tok.encode(prompt)  # the trained BPE raised TypeError on surrogates before
        assert tokens.shape == (1, 16) and int(tokens[0, 0]) == tok.sot_id and tok.eot_id in tokens[0].tolist()
        decoded = tok.decode(tokens)[0]
        assert "\x00" not in decoded and "\x1b" not in decoded and not any(0xD800 <= ord(c) <= 0xDFFF for c in decoded)
        msgs = [r.getMessage() for r in caplog.records if "replaced" in r.getMessage()]
        assert len(msgs) == 1 and repr(prompt)[:20] in msgs[0], msgs
    _fresh(tok)
    with caplog.at_level(logging.WARNING, logger="zoo.text"):
        assert torch.equal(tok.encode(b"a red \xff circle"), tok.encode("a red \ufffd circle"))  # bytes: replace
    assert any("b'a red \\xff circle'" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("name", ["bpe", "clip"])
def test_truncation_warns_once_per_call_saying_to_how_many_tokens(name, request, caplog):
    tok = _fresh(request.getfixturevalue(name))
    long = " ".join(["a large red circle at the top left"] * 6)
    with caplog.at_level(logging.WARNING, logger="zoo.text"):
        tokens = tok.encode([long, "a red circle", long + " again"])
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1, msgs  # one message for the call, not one per prompt or token
    assert "truncated to 14 tokens" in msgs[0] and "context_length 16" in msgs[0] and "1 more of the 3" in msgs[0]
    assert repr(long)[:30] in msgs[0]
    assert tokens[0, -1] == tok.eot_id  # still ends with EOT
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="zoo.text"):
        tok.encode("a red circle")  # fits: silent
    assert not caplog.records


def test_warnings_rate_limited_for_training_loops(bpe, caplog):
    tok = _fresh(bpe)
    long = " ".join(["a small blue square"] * 10)
    with caplog.at_level(logging.DEBUG, logger="zoo.text"):
        for _ in range(MAX_WARNINGS + 20):  # e.g. the collate function of every batch
            tok.encode([long] * 4)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == MAX_WARNINGS and "go to DEBUG" in warnings[-1].getMessage()
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 20


@pytest.mark.parametrize("literal", ["[EOT]", "[PAD]", "[SOT]", "[UNK]"])
def test_trained_bpe_special_token_text_in_a_caption_is_ordinary_text(bpe, literal):
    """A caption quoting "[EOT]" must not end the caption (nor put a pad or SOT id inside it), also after a pickle
    (DataLoader workers) and a spec round trip (checkpoints)."""
    caption = f"a sign saying {literal} here"
    wide = TrainedBPETokenizer.from_spec({**bpe.to_spec(), "context_length": 64})  # room for the whole caption
    for tok in (wide, pickle.loads(pickle.dumps(wide)), TrainedBPETokenizer.from_spec(wide.to_spec())):
        row = tok.encode(caption)[0].tolist()
        body = row[1 : row.index(tok.eot_id)]
        assert not {tok.pad_id, tok.sot_id, tok.eot_id, tok.unk_id} & set(body), (literal, row)
        assert tok.decode(tok.encode(caption)) == [caption.lower()]


@pytest.mark.parametrize(
    "caption",
    ['a sign that says "sale!".', 'a man shouting "stop!", waving', "hi!?.", "a note: <end_of_text> <START_OF_TEXT>"],
)
def test_clip_bpe_caption_ids_are_never_pad_sot_or_eot(caption):
    """open_clip gives a bare "!" the id 0 (= pad_id, masked as padding by every model) and turns the text
    "<end_of_text>" into the EOT id; between SOT and EOT there is only text, and ordinary captions are unchanged."""
    clip = ClipBPETokenizer(context_length=32)
    row = clip.encode(caption)[0].tolist()
    body = row[1 : row.index(clip.eot_id)]
    assert body and not {clip.pad_id, clip.sot_id, clip.eot_id} & set(body), row
    assert row.count(clip.sot_id) == row.count(clip.eot_id) == 1, row  # the text did not end early
    assert pickle.loads(pickle.dumps(clip)).encode(caption)[0].tolist() == row
    plain = "a cat, sitting! on a mat."  # no bare "!": exactly open_clip's ids
    expected = [clip.sot_id, *clip._tok.encode(plain), clip.eot_id]
    assert clip.encode(plain)[0, : len(expected)].tolist() == expected


@pytest.mark.parametrize("name", ["bpe", "clip"])
def test_non_string_caption_is_refused_with_a_clear_message(name, request):
    """A NaN (an empty cell of a captions CSV) used to become the caption "nan", an int its digits."""
    tok = request.getfixturevalue(name)
    with pytest.raises(TypeError, match=r"caption 1 of 2: a caption must be a str .* got float nan"):
        tok.encode(["a red circle", float("nan")])
    with pytest.raises(TypeError, match="a caption .* or a sequence of them, got int 123"):
        tok.encode(123)
    assert tok.encode(("a red circle", None)).shape == (2, 16)  # a tuple, and None for the empty caption, still work


def test_trained_bpe_whitespace_runs_and_ends_do_not_change_the_tokens(bpe):
    """A trailing space, a double space or a newline in a prompt gave extra or different tokens (the model was
    trained on stripped, single-spaced captions); and fitting no longer crashes on a lone surrogate."""
    plain = bpe.encode("a large red circle")
    for variant in (
        "a large red circle ",
        "  a large  red circle",
        "a large\nred\tcircle\r\n",
        "a large\u3000red circle",
    ):
        assert torch.equal(bpe.encode(variant), plain), variant
    tok = TrainedBPETokenizer.train(["a red \ud800 circle", "a  blue\nsquare "] * 5, vocab_size=270)
    assert tok.decode(tok.encode("a  blue\nsquare ")) == ["a blue square"]
