"""The fitted-BPE cache (data/tokenizer=bpe) is keyed by what it was fitted on: never reused for other captions.

Composed as zoo-train composes it: a tokenizer fitted for caption_style=short is not reused for descriptive, a
changed COCO root or annotation file refits, the same key reuses; cache files are group-readable whatever the umask.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
from pathlib import Path

import pytest
from hydra.utils import instantiate
from PIL import Image

from zoo.data.modules import CocoDataModule
from zoo.text import LazyTrainedBPE, TrainedBPETokenizer


@pytest.fixture
def fits(monkeypatch):
    """Records every BPE fit (each call of TrainedBPETokenizer.train)."""
    calls: list[Path] = []
    real = TrainedBPETokenizer.train.__func__

    def train(cls, captions, vocab_size=16384, path=None, context_length=64):
        calls.append(Path(path))
        return real(cls, captions, vocab_size=vocab_size, path=path, context_length=context_length)

    monkeypatch.setattr(TrainedBPETokenizer, "train", classmethod(train))
    return calls


def _shapes_bpe(train_cfg, *overrides):
    cfg = train_cfg(
        "data/tokenizer=bpe",
        "data.tokenizer.vocab_size=300",
        "data.train_size=24",
        "data.val_size=4",
        "data.test_size=4",
        *overrides,
    )
    dm = instantiate(cfg.data)
    dm.prepare_tokenizer()  # what zoo-train does before building the model
    return dm.tokenizer


def test_caption_style_short_is_not_reused_for_descriptive(train_cfg, fits, caplog):
    short = _shapes_bpe(train_cfg, "data.caption_style=short")
    assert len(fits) == 1 and short.file.is_file()
    with caplog.at_level(logging.INFO, logger="zoo.text"):
        desc = _shapes_bpe(train_cfg, "data.caption_style=descriptive")
    assert len(fits) == 2 and desc.file != short.file and desc.file.parent == short.file.parent
    assert any("fitting" in r.getMessage() and "descriptive" in r.getMessage() for r in caplog.records)
    key = json.loads(desc.file.with_name(desc.file.name[: -len(".json")] + ".key.json").read_text())
    assert key["data"]["caption_style"] == "descriptive" and key["vocab_size"] == 300
    # the same key reuses its file (no refit), for either style; so does a caption_mix only when it is the same
    again = _shapes_bpe(train_cfg, "data.caption_style=short")
    assert len(fits) == 2 and again.file == short.file and again.vocab_size == short.vocab_size
    _shapes_bpe(train_cfg, "data.caption_style=descriptive", "data.caption_mix={descriptive: 0.9, alt: 0.1}")
    _shapes_bpe(train_cfg, "data.caption_style=descriptive", "data.world_seed=1")
    _shapes_bpe(train_cfg, "data.caption_style=descriptive", "data.train_size=32")
    assert len(fits) == 5
    _shapes_bpe(train_cfg, "data.caption_style=descriptive", "data.resolution=64")  # captions do not change
    assert len(fits) == 5


def test_bpe_fit_styles_all_is_one_tokenizer_for_every_blend(train_cfg, fits, tmp_path):
    """data.bpe_fit_styles=all fits on alt + short + descriptive of every training scene, keyed apart from the
    served captions, so runs on different caption blends (DALL·E 3's experiment) share one file and one vocabulary."""
    from zoo.data.shapes import ShapesDataset

    alt = _shapes_bpe(train_cfg, "data.bpe_fit_styles=all", "data.caption_style=alt")
    assert len(fits) == 1
    mixed = _shapes_bpe(
        train_cfg, "data.bpe_fit_styles=all", "data.caption_mix={descriptive: 0.95, alt: 0.05}"
    )  # another blend: the same file, no refit
    assert len(fits) == 1 and mixed.file == alt.file
    key = json.loads(alt.file.with_name(alt.file.name[: -len(".json")] + ".key.json").read_text())
    assert key["data"]["caption_style"] == "all styles" and key["data"]["caption_mix"] is None
    served = _shapes_bpe(train_cfg, "data.caption_style=alt")  # the default fits on what training sees
    assert len(fits) == 2 and served.file != alt.file
    # what it was fitted on: every style of the 24 training scenes (the alt-only fit never saw "descriptive" words)
    text = ShapesDataset("train", size=24, resolution=32, seed=0).scene(0)[1]["descriptive"]
    assert len(alt._require()._ids(text)) < len(served._require()._ids(text))
    with pytest.raises(Exception, match="bpe_fit_styles"):
        _shapes_bpe(train_cfg, "data.bpe_fit_styles=some")


def test_cache_files_are_group_readable_whatever_the_umask(train_cfg, tmp_path, fits):
    old = os.umask(0o077)
    try:
        tok = _shapes_bpe(train_cfg, "data.caption_style=short")
    finally:
        os.umask(old)
    key_file = tok.file.with_name(tok.file.name[: -len(".json")] + ".key.json")
    for f in (tok.file, key_file):
        assert stat.S_IMODE(f.stat().st_mode) == 0o664, f
    for d in (tok.file.parent, tok.file.parent.parent, tmp_path / "cache"):  # folders the fit created
        assert stat.S_IMODE(d.stat().st_mode) == 0o775, d


def test_stale_or_unkeyed_file_is_refitted_with_a_message(train_cfg, fits, caplog):
    tok = _shapes_bpe(train_cfg, "data.caption_style=short")
    key_file = tok.file.with_name(tok.file.name[: -len(".json")] + ".key.json")
    key = json.loads(key_file.read_text())
    key_file.write_text(json.dumps({**key, "data": {**key["data"], "caption_style": "alt"}}))  # tampered / stale
    with caplog.at_level(logging.WARNING, logger="zoo.text"):
        _shapes_bpe(train_cfg, "data.caption_style=short")
    assert len(fits) == 2 and any("refitting" in r.getMessage() for r in caplog.records)
    assert json.loads(key_file.read_text()) == key
    # a tokenizer.json from before fit keys (no record of its captions) is not reused either
    legacy = tok.file.with_name("tokenizer.json")
    shutil.copy(tok.file, legacy)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="zoo.text"):
        _shapes_bpe(train_cfg, "data.caption_style=descriptive")
    assert len(fits) == 3 and any("not reusing" in r.getMessage() for r in caplog.records)


def _coco_root(root: Path, captions: list[str]) -> Path:
    (root / "annotations").mkdir(parents=True)
    (root / "train2014").mkdir()
    images, anns = [], []
    for i, cap in enumerate(captions):
        name = f"{i}.png"
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / "train2014" / name)
        images.append({"id": i, "file_name": name})
        anns.append({"image_id": i, "id": i, "caption": cap})
    (root / "annotations" / "captions_train2014.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return root


def test_coco_root_or_annotations_change_refits(tmp_path, fits):
    a = _coco_root(tmp_path / "coco_a", ["a dog on a sofa", "two cats in a sink", "a red bus"])
    b = _coco_root(tmp_path / "coco_b", ["a plate of pasta", "a surfer on a wave", "a clock tower"])
    cache = tmp_path / "cache" / "tokenizer.json"

    def fit(root):
        dm = CocoDataModule(
            root=str(root),
            resolution=8,
            num_workers=0,
            tokenizer=LazyTrainedBPE(cache, vocab_size=280, context_length=12),
        )
        dm.prepare_tokenizer()
        return dm.tokenizer

    first = fit(a)
    assert len(fits) == 1 and fit(a).file == first.file and len(fits) == 1  # same key: reused
    other = fit(b)
    assert len(fits) == 2 and other.file != first.file
    ann = a / "annotations" / "captions_train2014.json"
    meta = json.loads(ann.read_text())
    meta["annotations"][0]["caption"] = "a completely different first caption"
    ann.write_text(json.dumps(meta))  # the same root, new captions
    assert fit(a).file != first.file and len(fits) == 3
