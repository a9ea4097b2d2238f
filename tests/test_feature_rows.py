"""zoo-embed / zoo-tokenize resume: an interrupted run keeps its rows in ``<out>.partial/`` and the same command
continues there, writing the file an uninterrupted run writes; other arguments are refused (``zoo.feature_rows``)."""

from __future__ import annotations

import pytest
import torch

from zoo.checkpoint import safe_load
from zoo.errors import ConfigError
from zoo.feature_rows import work_dir_of


class Interrupted(Exception):
    """Stands for Ctrl-C / a kill in the middle of a run."""


def _counting(obj, name, fail_at=None):
    """Wrap ``obj.name`` to count its calls (rows seen) and raise ``Interrupted`` on call ``fail_at``."""
    seen, original = [], getattr(obj, name)

    def wrapped(x, *args, **kwargs):
        if fail_at is not None and len(seen) + 1 == fail_at:
            raise Interrupted
        seen.append(len(x))
        return original(x, *args, **kwargs)

    setattr(obj, name, wrapped)
    return seen


def _tiny_scorer(tmp_path, seed=1):
    from zoo.models.clip.model import create_clip
    from zoo.models.clip.scorer import ClipScorer

    torch.manual_seed(seed)
    path = tmp_path / f"clip{seed}.pt"
    torch.save({"state_dict": create_clip("zoo-clip-tiny").state_dict()}, path)
    return ClipScorer.from_open_clip("zoo-clip-tiny", checkpoint=str(path))


def test_an_interrupted_zoo_embed_run_resumes_to_the_uninterrupted_file(tmp_path, caplog):
    """zoo-embed kept nothing of an interrupted run (the split was held in memory and written at the end), so hours
    of COCO embedding were redone from row 0. Now the re-run embeds only the rows after the last chunk and the file
    equals an uninterrupted run's, tensor for tensor and meta for meta; the work folder is gone afterwards."""
    import logging

    from zoo.data.shapes import ShapesDataset
    from zoo.embed import embed_dataset

    ds = ShapesDataset("val", 17, 32)
    kw = dict(batch_size=3, progress=False, text_encodings=True, chunk_rows=5, meta={"split": "val"})
    ref = safe_load(embed_dataset(_tiny_scorer(tmp_path), ds, tmp_path / "ref.pt", **kw))

    out = tmp_path / "emb" / "val.pt"
    scorer = _tiny_scorer(tmp_path)
    _counting(scorer, "encode_image", fail_at=4)  # chunks of 2 batches (6 rows): rows 0-5 saved, 6-8 lost
    with caplog.at_level(logging.WARNING, logger="zoo.feature_rows"), pytest.raises(Interrupted):
        embed_dataset(scorer, ds, out, **kw)
    assert not out.exists() and "rows 0-5 of 17 are kept" in caplog.text
    scorer = _tiny_scorer(tmp_path)
    seen = _counting(scorer, "encode_image")
    embed_dataset(scorer, ds, out, **kw)
    assert sum(seen) == 17 - 6
    got = safe_load(out)
    assert got.keys() == ref.keys() and got["meta"] == ref["meta"]
    for k in ref:
        if isinstance(ref[k], torch.Tensor):
            assert torch.equal(got[k], ref[k]), k
    assert not work_dir_of(out).exists()


def test_zoo_embed_refuses_to_resume_under_other_arguments(tmp_path):
    """The rows of an interrupted run are not mixed with those of another CLIP or other options: a ConfigError
    names the folder, what differs and the fix; the same arguments then still resume."""
    from zoo.data.shapes import ShapesDataset
    from zoo.embed import embed_dataset

    ds = ShapesDataset("val", 12, 32)
    out = tmp_path / "val.pt"
    kw = dict(batch_size=2, progress=False, chunk_rows=2)
    scorer = _tiny_scorer(tmp_path)
    _counting(scorer, "encode_image", fail_at=3)
    with pytest.raises(Interrupted):
        embed_dataset(scorer, ds, out, **kw)
    work = work_dir_of(out)
    with pytest.raises(ConfigError, match=rf"{work} holds the rows of an interrupted zoo-embed run .*clip_fingerprint"):
        embed_dataset(_tiny_scorer(tmp_path, seed=2), ds, out, **kw)
    with pytest.raises(ConfigError, match=rf"text_encodings: False there, True now.*fix: .*delete {work}"):
        embed_dataset(_tiny_scorer(tmp_path), ds, out, **{**kw, "text_encodings": True})
    with pytest.raises(ConfigError, match="batch_size: 2 there, 3 now"):
        embed_dataset(_tiny_scorer(tmp_path), ds, out, **{**kw, "batch_size": 3})
    with pytest.raises(ConfigError, match="items: 12 there, 10 now"):
        embed_dataset(_tiny_scorer(tmp_path), ShapesDataset("val", 10, 32), out, **kw)
    scorer = _tiny_scorer(tmp_path)
    seen = _counting(scorer, "encode_image")
    embed_dataset(scorer, ds, out, **kw)
    assert sum(seen) == 12 - 4 and len(safe_load(out)["clip_image_emb"]) == 12


def test_an_interrupted_zoo_tokenize_run_resumes_to_the_uninterrupted_file(tmp_path, dalle_helpers):
    """zoo-tokenize had the same all-or-nothing write: an interrupted run restarted the split from row 0. Now the
    command continues after the last chunk and writes the uninterrupted run's file; another tokenizer checkpoint at
    the same path (retrained in place) or other data is refused instead of mixing their codes."""
    from zoo.checkpoint import load_module
    from zoo.tokenize import image_tokenizer_of, tokenize

    from .test_tokenize_cli import _tokenize_cfg

    ckpt = dalle_helpers.tiny_tokenizer_ckpt(tmp_path / "tok.ckpt")
    ref, out = tmp_path / "ref.pt", tmp_path / "tokens.pt"
    tokenize(_tokenize_cfg(tmp_path, ckpt, "data.resolution=16", f"out={ref}", "batch_size=3"))

    calls = []
    original = type(image_tokenizer_of(load_module(ckpt))).encode

    def interrupted(self, x):
        calls.append(len(x))
        if len(calls) == 3:  # the default chunk is 4,096 rows; 2 batches of 3 here
            raise Interrupted
        return original(self, x)

    import zoo.feature_rows

    mp = pytest.MonkeyPatch()
    mp.setattr(zoo.feature_rows, "CHUNK_ROWS", 6)
    mp.setattr(type(image_tokenizer_of(load_module(ckpt))), "encode", interrupted)
    try:
        with pytest.raises(Interrupted):
            tokenize(_tokenize_cfg(tmp_path, ckpt, "data.resolution=16", f"out={out}", "batch_size=3"))
        with pytest.raises(ConfigError, match="world_seed"):  # other scenes
            tokenize(
                _tokenize_cfg(tmp_path, ckpt, "data.resolution=16", "data.world_seed=7", f"out={out}", "batch_size=3")
            )
        dalle_helpers.tiny_tokenizer_ckpt(ckpt, seed=1)  # retrained in place: same path, other weights
        with pytest.raises(ConfigError, match="tokenizer_fingerprint"):
            tokenize(_tokenize_cfg(tmp_path, ckpt, "data.resolution=16", f"out={out}", "batch_size=3"))
        dalle_helpers.tiny_tokenizer_ckpt(ckpt, seed=0)
        calls.clear()
        tokenize(_tokenize_cfg(tmp_path, ckpt, "data.resolution=16", f"out={out}", "batch_size=3"))
    finally:
        mp.undo()
    assert sum(calls) == 8 - 6  # the val split's 8 images: only the 2 after the kept chunk
    got, want = safe_load(out), safe_load(ref)
    assert torch.equal(got["image_tokens"], want["image_tokens"]) and got["meta"] == want["meta"]
    assert {k: v for k, v in got.items() if k != "image_tokens"} == {
        k: v for k, v in want.items() if k != "image_tokens"
    }
    assert not work_dir_of(out).exists()


def test_a_run_stopped_before_its_first_chunk_does_not_block_other_arguments(tmp_path):
    """A run that failed before it saved any rows (a bad option, an early Ctrl-C) left run.json behind, and every
    later run with other arguments was refused for a folder that held nothing to keep. Now they start over."""
    from zoo.data.shapes import ShapesDataset
    from zoo.embed import embed_dataset

    ds, out = ShapesDataset("val", 6, 32), tmp_path / "val.pt"
    scorer = _tiny_scorer(tmp_path)
    _counting(scorer, "encode_image", fail_at=1)
    with pytest.raises(Interrupted):
        embed_dataset(scorer, ds, out, batch_size=2, progress=False, chunk_rows=2)
    embed_dataset(_tiny_scorer(tmp_path), ds, out, batch_size=3, progress=False)
    assert len(safe_load(out)["clip_image_emb"]) == 6 and not work_dir_of(out).exists()


def test_an_existing_folder_as_the_output_is_refused_before_any_row_is_encoded(tmp_path):
    """out=<an existing folder> (where the user wants the file to go): the whole split was encoded, then
    os.replace's IsADirectoryError lost it all. Now a ConfigError naming the option and a file name, up front."""
    from zoo.data.shapes import ShapesDataset
    from zoo.embed import embed_dataset
    from zoo.tokenize import tokenize_dataset

    (tmp_path / "embeddings").mkdir()
    scorer = _tiny_scorer(tmp_path)
    seen = _counting(scorer, "encode_image")
    fix = rf"fix: out={tmp_path / 'embeddings' / 'name.pt'}"
    with pytest.raises(ConfigError, match=rf"out={tmp_path / 'embeddings'} is a folder, but zoo-embed .*{fix}"):
        embed_dataset(scorer, ShapesDataset("val", 4, 32), tmp_path / "embeddings", batch_size=2, progress=False)
    assert not seen

    class Tok:
        codebook_size = 4

        def encode(self, x):
            seen.append(len(x))
            return (x[:, 0, ::4, ::4] > 0).long()

    with pytest.raises(ConfigError, match="is a folder, but zoo-tokenize writes one file"):
        tokenize_dataset(Tok(), ShapesDataset("val", 4, 32), tmp_path / "embeddings", batch_size=2, progress=False)
    assert not seen


def test_a_single_row_is_named_in_the_singular(tmp_path, caplog):
    """ "1 rows hold the image tokens ... (rows 3; ...) If you repair those files" and "rows 0-0 of 5 are kept": the
    usual case of one unreadable file, or an interruption after the first chunk, now reads in the singular; more
    than one row keeps the plural."""
    import logging

    from zoo.data.datamodule import report_substituted_rows
    from zoo.data.shapes import ShapesDataset
    from zoo.embed import embed_dataset

    log = logging.getLogger("zoo.feature_rows")
    with caplog.at_level(logging.WARNING, logger="zoo.feature_rows"):
        report_substituted_rows([3], "zoo-tokenize", "image tokens", log)
        report_substituted_rows([3, 5], "zoo-tokenize", "image tokens", log)
    one, two = (r.getMessage() for r in caplog.records)
    assert "zoo-tokenize: 1 row holds the image tokens of the next readable image, its own file" in one
    assert "(row 3;" in one and "If you repair that file" in one
    assert "2 rows hold the image tokens of the next readable image, their own files" in two
    assert "(rows 3, 5;" in two and "If you repair those files" in two
    caplog.clear()

    scorer = _tiny_scorer(tmp_path)
    _counting(scorer, "encode_image", fail_at=2)  # one row per chunk: row 0 saved, then interrupted
    kw = dict(batch_size=1, progress=False, chunk_rows=1, meta={"split": "val"})
    with caplog.at_level(logging.WARNING, logger="zoo.feature_rows"), pytest.raises(Interrupted):
        embed_dataset(scorer, ShapesDataset("val", 5, 32), tmp_path / "e.pt", **kw)
    assert "zoo-embed interrupted: row 0 of 5 is kept in" in caplog.text and "resumes after it" in caplog.text
