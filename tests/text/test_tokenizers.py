"""Text tokenizers (CLIP BPE via open_clip, trained byte-level BPE via tokenizers): fixed-length encodings, padding,
truncation that keeps EOT, empty and non-ASCII captions, round trips, vocab sizes, save/reload, load_or_train."""

from __future__ import annotations

import pickle

import pytest
import torch

from zoo.text import (
    ClipBPETokenizer,
    LazyTrainedBPE,
    TextTokenizer,
    TrainedBPETokenizer,
)

CAPTIONS = [
    f"a {s} {c} {sh} at the {r} {col}"
    for s in ("small", "large")
    for c in ("red", "blue", "green")
    for sh in ("circle", "star")
    for r in ("top", "bottom")
    for col in ("left", "right")
]
ASCII = ["a small red circle at the top left", "a large blue star at the bottom right", "two green stars"]
NON_ASCII = "un café à zürich 日本 ★"


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> TrainedBPETokenizer:
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    return TrainedBPETokenizer.train(CAPTIONS * 5, vocab_size=300, path=path, context_length=16)


@pytest.fixture(scope="module")
def clip() -> ClipBPETokenizer:
    return ClipBPETokenizer(context_length=16)


BOTH = ["bpe", "clip"]


def test_clip_bpe_is_the_real_clip_vocabulary(clip):
    assert isinstance(clip, TextTokenizer)
    assert clip.vocab_size == 49408 and clip.pad_id == 0
    assert (clip.sot_id, clip.eot_id) == (49406, 49407)
    assert clip.encode("a photo of a cat")[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]


@pytest.mark.parametrize("name", BOTH)
def test_round_trip_fixed_length_and_padding(name, request):
    tok = request.getfixturevalue(name)
    ids = tok.encode(ASCII)
    assert ids.shape == (3, 16) and ids.dtype == torch.long
    assert tok.decode(ids) == ASCII
    assert tok.decode(ids[1]) == ASCII[1:2]  # a single row works too
    assert tok.encode(ASCII[0]).shape == (1, 16)  # a single string is a batch of one
    assert (ids[:, 0] == tok.sot_id).all()
    for row in ids:
        n = int((row != tok.pad_id).sum())
        assert row[n - 1] == tok.eot_id and (row[n:] == tok.pad_id).all() and (row[: n - 1] != tok.eot_id).all()
    assert 0 <= int(ids.min()) and int(ids.max()) < tok.vocab_size


@pytest.mark.parametrize("name", BOTH)
def test_truncation_keeps_eot_and_empty_caption(name, request):
    tok = request.getfixturevalue(name)
    long = " ".join(["red circle"] * 50)
    ids = tok.encode([long, ""])
    assert ids.shape == (2, 16)
    assert ids[0, 0] == tok.sot_id and ids[0, -1] == tok.eot_id and (ids[0] != tok.pad_id).all()
    assert tok.decode(ids[:1])[0] == " ".join(long.split()[: len(tok.decode(ids[:1])[0].split())])  # a prefix
    assert ids[1, :2].tolist() == [tok.sot_id, tok.eot_id] and (ids[1, 2:] == tok.pad_id).all()
    assert tok.decode(ids[1:]) == [""]


@pytest.mark.parametrize("name", BOTH)
def test_decode_without_eot_drops_trailing_pads(name, request):
    tok = request.getfixturevalue(name)
    ids = tok.encode("a red star")
    n = int((ids[0] != tok.pad_id).sum())
    ids[0, n - 1] = tok.pad_id  # an unfinished sample: no EOT
    assert tok.decode(ids) == ["a red star"]


def test_non_ascii(bpe, clip):
    roomy = TrainedBPETokenizer(bpe.path, context_length=64)
    assert roomy.decode(roomy.encode(NON_ASCII)) == [NON_ASCII]  # byte-level: nothing is unknown
    assert roomy.decode(roomy.encode("Un Café À ZÜRICH")) == ["un café à zürich"]  # lower-cased
    assert bpe.unk_id is not None and bpe.unk_id not in roomy.encode(NON_ASCII)
    ids = clip.encode(NON_ASCII)
    assert ids.shape == (1, 16) and clip.decode(ids) == [NON_ASCII]
    # open_clip pads with id 0, which is also the byte "!": decode cuts at EOT, so a real one survives
    assert clip.decode(clip.encode("wow !!!!!")) == ["wow !!!!!"]


def test_trained_vocab_special_ids_and_reload(bpe, tmp_path):
    assert bpe.vocab_size <= 300 and bpe.requested_vocab_size == 300
    assert (bpe.pad_id, bpe.unk_id, bpe.sot_id, bpe.eot_id) == (0, 1, 2, 3)
    again = TrainedBPETokenizer(bpe.path, context_length=16)
    assert again.vocab_size == bpe.vocab_size
    assert torch.equal(again.encode(CAPTIONS), bpe.encode(CAPTIONS))
    # fitting learnt merges: a frequent word is one token
    assert (bpe.encode("circle")[0] != bpe.pad_id).sum() == 3
    with pytest.raises(FileNotFoundError) as e:
        TrainedBPETokenizer(tmp_path / "nope" / "tokenizer.json")
    assert str(tmp_path / "nope" / "tokenizer.json") in str(e.value) and "train" in str(e.value)
    with pytest.raises(ValueError, match="vocab_size"):
        TrainedBPETokenizer.train(CAPTIONS, vocab_size=100, path=None)


def test_large_requested_vocab_reports_the_real_size(tmp_path):
    tok = TrainedBPETokenizer.train(CAPTIONS, vocab_size=16384, path=tmp_path / "t.json", context_length=8)
    assert tok.requested_vocab_size == 16384 and 260 < tok.vocab_size < 1000
    assert int(tok.encode(CAPTIONS).max()) < tok.vocab_size
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write leaves no temp file


def test_tokenizers_pickle_for_dataloader_workers(bpe, clip):
    for tok in (bpe, clip):
        copy = pickle.loads(pickle.dumps(tok))
        assert torch.equal(copy.encode(ASCII), tok.encode(ASCII))


def test_load_or_train_fits_once(tmp_path):
    path = tmp_path / "sub" / "tokenizer.json"
    calls = []

    def captions():
        calls.append(1)
        return iter(CAPTIONS)

    first = TrainedBPETokenizer.load_or_train(path, captions, vocab_size=290, context_length=12)
    second = TrainedBPETokenizer.load_or_train(path, captions, vocab_size=290, context_length=12)
    assert calls == [1] and path.is_file()
    assert torch.equal(first.encode(CAPTIONS), second.encode(CAPTIONS))
    # the lazy wrapper used by conf/data/tokenizer/bpe.yaml reloads the same file without fitting again
    lazy = LazyTrainedBPE(path, vocab_size=290, context_length=12)
    lazy.ensure_ready(captions)
    assert calls == [1] and torch.equal(lazy.encode(CAPTIONS), first.encode(CAPTIONS))
    fresh = LazyTrainedBPE(tmp_path / "other.json", vocab_size=290, context_length=12)
    with pytest.raises(RuntimeError, match="ensure_ready"):
        fresh.vocab_size
    fresh.ensure_ready(captions)
    assert calls == [1, 1] and fresh.vocab_size == first.vocab_size


# ------------------------------------------------------------------------- (merged from test_text_tokenizers.py;
# same bpe / clip fixtures)
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
def test_truncation_keeps_eot_and_empty_caption_at_context_16(name, request):
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


def test_clip_bpe_vocab_size_may_be_stated_but_not_changed():
    # a config composing a trained BPE's settings under CLIP BPE states CLIP's size; any other size is an error
    assert ClipBPETokenizer(context_length=16, vocab_size=49408).vocab_size == 49408
    with pytest.raises(ValueError, match="data.tokenizer.vocab_size=49408"):
        ClipBPETokenizer(context_length=16, vocab_size=1024)
