"""Text tokenizers: round trips, fixed length, truncation keeps EOT, empty and non-ASCII captions, save/reload."""
from __future__ import annotations

import pytest
import torch

from zoo.text import ClipBPETokenizer, LazyTrainedBPE, TrainedBPETokenizer

CAPTIONS = [f"a {s} {c} {sh} at the {r} {col}" for s in ("small", "large") for c in ("red", "blue", "green")
            for sh in ("circle", "star") for r in ("top", "bottom") for col in ("left", "right")]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    return TrainedBPETokenizer.train(CAPTIONS * 5, path=path, vocab_size=300, context_length=16)


@pytest.fixture(scope="module")
def clip():
    return ClipBPETokenizer(context_length=16)


@pytest.mark.parametrize("name", ["bpe", "clip"])
def test_round_trip_and_fixed_length(name, request):
    tok = request.getfixturevalue(name)
    texts = ["a small red circle at the top left", "a large blue star at the bottom right"]
    ids = tok.encode(texts)
    assert ids.shape == (2, 16) and ids.dtype == torch.long
    assert tok.decode(ids) == texts
    assert (ids[:, 0] == tok.sot_id).all()
    n = (ids[0] != tok.pad_id).sum().item()
    assert ids[0, n - 1] == tok.eot_id and (ids[0, n:] == tok.pad_id).all()


@pytest.mark.parametrize("name", ["bpe", "clip"])
def test_truncation_keeps_eot_and_empty_caption(name, request):
    tok = request.getfixturevalue(name)
    long = " ".join(["red circle"] * 50)
    ids = tok.encode([long, ""])
    assert ids[0, -1] == tok.eot_id and (ids[0] != tok.pad_id).all()
    assert ids[1, :2].tolist() == [tok.sot_id, tok.eot_id] and (ids[1, 2:] == tok.pad_id).all()
    assert tok.decode(ids[1:]) == [""]


def test_non_ascii_round_trips_with_byte_level_bpe(bpe, clip):
    text = "un café à zürich 日本 ★"
    roomy = _long(bpe)
    assert roomy.decode(roomy.encode(text))[0] == text
    assert clip.encode(text).shape == (1, 16)  # CLIP's BPE normalises but must not crash


def _long(tok):
    """Same tokenizer with room for a long caption."""
    return TrainedBPETokenizer(tok.path, context_length=64)


def test_trained_vocab_and_reload(bpe, tmp_path):
    assert bpe.vocab_size <= 300
    again = TrainedBPETokenizer(bpe.path, context_length=16)
    assert torch.equal(again.encode(CAPTIONS), bpe.encode(CAPTIONS))
    # frequent words become single tokens after fitting
    assert bpe.encode("red circle")[0, 1:3].tolist() != [bpe.pad_id, bpe.pad_id]
    with pytest.raises(FileNotFoundError, match="nope.json"):
        TrainedBPETokenizer(tmp_path / "nope.json")


def test_lazy_bpe_fits_once_then_reloads(tmp_path):
    path = tmp_path / "t" / "tokenizer.json"
    calls = []

    def captions():
        calls.append(1)
        return iter(CAPTIONS)

    lazy = LazyTrainedBPE(path, vocab_size=280, context_length=12)
    lazy.ensure_ready(captions)
    lazy.ensure_ready(captions)
    assert calls == [1] and path.is_file()
    again = LazyTrainedBPE(path, vocab_size=280, context_length=12)
    again.ensure_ready(captions)
    assert calls == [1]
    assert torch.equal(again.encode(CAPTIONS[:3]), lazy.encode(CAPTIONS[:3]))
