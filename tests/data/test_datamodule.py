"""ImageTextDataModule: options checked before training starts (through the shapes world, which needs no files)."""

from __future__ import annotations

import pytest

from zoo.data.modules import ShapesDataModule
from zoo.errors import ConfigError

SMALL = dict(train_size=4, val_size=4, test_size=4, resolution=32)


def test_a_batch_larger_than_the_train_split_is_refused_not_trained_for_zero_steps():
    """drop_last left no training batch: Lightning stopped fit with 'No training batches' and the run exited 0,
    testing and saving an untrained model."""
    dm = ShapesDataModule(batch_size=8, **SMALL)
    dm.setup("fit")
    with pytest.raises(ConfigError, match=r"data.batch_size=8 is more than the 4 items of the train split.*fix"):
        dm.train_dataloader()
    assert len(dm.val_dataloader()) == 1  # evaluation keeps its partial batch
    assert len(ShapesDataModule(batch_size=4, **SMALL).train_dataloader()) == 1


@pytest.mark.parametrize(
    "kwargs, says",
    [
        # a misspelt split's file was silently never read; a plain path was an AttributeError
        (dict(features={"training": "x.pt"}), r"data.features.training: unknown split 'training'.*fix: "),
        (dict(features="x.pt"), r"data.features must map a split to a file.*fix: data.features.train="),
        (
            dict(eval_batch_size=-1),
            r"data.eval_batch_size=-1 must be a whole number >= 1 or null",
        ),  # was torch's message, no option
        (dict(world_seed=-1), r"data.world_seed=-1 must be a whole number >= 0.*fix: "),  # numpy's, no option named
        (dict(world_seed=1.5), r"data.world_seed=1.5 must be a whole number >= 0"),  # truncated to world 1 silently
    ],
)
def test_bad_shapes_and_shared_options_name_the_option_and_the_fix(kwargs, says):
    with pytest.raises(ConfigError, match=says):
        ShapesDataModule(**{**SMALL, **kwargs})


@pytest.mark.parametrize(
    "kwargs, says",
    [
        # int() took them for another count without a word (32.5 -> 32 px, 2.5 -> batches of 2, true -> 1)
        (dict(resolution=32.5), r"data.resolution=32.5 must be a whole number >= 1 \(fix: "),
        (dict(batch_size=2.5), r"data.batch_size=2.5 must be a whole number >= 1 \(fix: "),
        (dict(batch_size=True), r"data.batch_size=true must be a whole number >= 1"),
        (dict(eval_batch_size=2.5), r"data.eval_batch_size=2.5 must be a whole number >= 1 or null"),
        (dict(num_workers=1.5), r"data.num_workers=1.5 must be a whole number >= 0 \(fix: "),
        (dict(seed=1.5), r"data.seed=1.5 must be a whole number \(fix: "),
        # a string was the comparison's bare TypeError or int()'s ValueError
        (dict(batch_size="8"), r"data.batch_size='8' must be a whole number >= 1"),
        (dict(seed="abc"), r"data.seed='abc' must be a whole number"),
    ],
)
def test_sizes_counts_and_the_seed_must_be_whole_numbers_in_every_datamodule(tmp_path, kwargs, says):
    from zoo.data.modules import CocoDataModule, WebDataModule

    with pytest.raises(ConfigError, match=says):
        ShapesDataModule(**{**SMALL, **kwargs})
    with pytest.raises(ConfigError, match=says):
        CocoDataModule(root=str(tmp_path), **kwargs)
    with pytest.raises(ConfigError, match=says):
        WebDataModule(train_urls=str(tmp_path / "x.tar"), **kwargs)


def test_a_resolution_below_one_names_the_option_when_built_not_at_set_up(tmp_path):
    """coco / webdataset took data.resolution=0 and failed at set-up with 'resolution must be >= 1' (no option)."""
    from zoo.data.modules import CocoDataModule, WebDataModule

    for bad in (0, -8):
        with pytest.raises(ConfigError, match=rf"data.resolution={bad} must be a whole number >= 1 \(fix: "):
            CocoDataModule(root=str(tmp_path), resolution=bad)
        with pytest.raises(ConfigError, match=r"data.resolution=\S+ must be a whole number >= 1"):
            WebDataModule(train_urls=str(tmp_path / "x.tar"), resolution=bad)
    for split in ("train", "val", "test"):  # int() took 8.5 scenes for 8 and true for 1
        for bad in (8.5, True):
            with pytest.raises(ConfigError, match=rf"data.{split}_size=\S+ must be a whole number >= 1"):
                ShapesDataModule(**{**SMALL, f"{split}_size": bad})


def test_coco_max_items_that_is_not_a_positive_count_is_refused(tmp_path):
    """max_items=-1 (a common spelling of "all") sliced off the last image of every split without a word."""
    from zoo.data.modules import CocoDataModule

    for bad in (-1, 0, 2.5):
        with pytest.raises(ConfigError, match=r"data.max_items=\S+ must be a whole number >= 1.*data.max_items=null"):
            CocoDataModule(root=str(tmp_path), max_items=bad)
    assert CocoDataModule(root=str(tmp_path), max_items=None).max_items is None


@pytest.mark.parametrize(
    "kwargs, says",
    [
        (dict(shuffle_buffer=-1), r"data.shuffle_buffer=-1 must be a whole number >= 0.*fix: "),  # training unshuffled
        (dict(epoch_length=-5), r"data.epoch_length=-5 must be a whole number.*fix: "),  # failed at len()
    ],
)
def test_bad_webdataset_options_are_refused_when_built(tmp_path, kwargs, says):
    from zoo.data.modules import WebDataModule

    with pytest.raises(ConfigError, match=says):
        WebDataModule(train_urls=str(tmp_path / "x.tar"), **kwargs)


def _features_file(tmp_path, dm: ShapesDataModule, split: str, n: int, name: str = "f.pt", record: bool = True):
    """A zoo-embed-like file of ``n`` rows for ``split`` of ``dm`` (with zoo-embed's record of its data)."""
    import torch

    from zoo.checkpoint import atomic_torch_save

    meta = {"split": split, **({"data": dm.features_identity(split)} if record else {})}
    feats = {
        "clip_image_emb": torch.randn(n, 8),
        "clip_text_emb": torch.randn(n, 8),
        "clip_text_tokens": torch.randint(1, 50, (n, 6)),
        "meta": meta,
    }
    return atomic_torch_save(feats, tmp_path / name)


def test_a_feature_file_of_other_images_is_refused_and_of_other_captions_serves_only_its_image_features(
    tmp_path, caplog
):
    """zoo-embed / zoo-tokenize files record the data they were made from (features_identity). Served with a
    DataModule of another world seed (other scenes, same count) they were read by index as if they described these
    items, without a word: a ConfigError naming the difference. With other captions only (a caption style, as the
    DALL·E 3 captioners of three styles share one embedding file) the image embeddings are right and served; the
    text ones describe captions this run does not serve, so they are dropped with a warning."""
    import logging

    path = _features_file(tmp_path, ShapesDataModule(**SMALL), "val", 4)
    same = ShapesDataModule(**SMALL, features={"val": str(path)}).dataset("val")[0]
    assert {"clip_image_emb", "clip_text_emb", "clip_text_tokens"} <= set(same)
    with pytest.raises(
        ConfigError, match=r"other images than this run's val split \(world_seed: 0 in the file, 1 here"
    ):
        ShapesDataModule(**SMALL, world_seed=1, features={"val": str(path)}).dataset("val")
    with caplog.at_level(logging.WARNING, logger="zoo.data.datamodule"):
        short = ShapesDataModule(**SMALL, caption_style="short", features={"val": str(path)}).dataset("val")[0]
    assert "clip_image_emb" in short and not any(k.startswith("clip_text_") for k in short)
    assert "caption_style: 'descriptive' in the file, 'short' here" in caplog.text
    # the training split's caption blend is part of its captions; val / test never blend, so it is not theirs
    train = _features_file(tmp_path, ShapesDataModule(**SMALL), "train", 4, "t.pt")
    mixed = dict(SMALL, caption_mix={"descriptive": 0.5, "alt": 0.5})
    assert "clip_text_emb" not in ShapesDataModule(**mixed, features={"train": str(train)}).dataset("train")[0]
    assert "clip_text_emb" in ShapesDataModule(**mixed, features={"val": str(path)}).dataset("val")[0]
    # a file written before the record was kept is served as before
    old = _features_file(tmp_path, ShapesDataModule(**SMALL), "val", 4, "old.pt", record=False)
    assert "clip_text_emb" in ShapesDataModule(**SMALL, world_seed=1, features={"val": str(old)}).dataset("val")[0]


def test_a_train_feature_file_knows_its_synthetic_captions_by_content(tmp_path, caplog):
    """The train split's record named the zoo-recaption files by size only: a recaption of the same byte count (another
    captioner's "a tan square" for "a red square") kept serving text embeddings of captions no longer served. The
    record now holds their digest; the text features are dropped with the usual warning."""
    import logging

    import torch

    syn = tmp_path / "syn.pt"
    torch.save({"captions": [f"a red square {k}" for k in range(4)], "meta": {}}, syn)
    opts = dict(SMALL, synthetic_captions={"synthetic_descriptive": str(syn)}, caption_mix={"synthetic_descriptive": 1})
    path = _features_file(tmp_path, ShapesDataModule(**opts), "train", 4)
    assert "clip_text_emb" in ShapesDataModule(**opts, features={"train": str(path)}).dataset("train")[0]
    size = syn.stat().st_size
    torch.save({"captions": [f"a tan square {k}" for k in range(4)], "meta": {}}, syn)
    assert syn.stat().st_size == size
    with caplog.at_level(logging.WARNING, logger="zoo.data.datamodule"):
        served = ShapesDataModule(**opts, features={"train": str(path)}).dataset("train")[0]
    assert "clip_image_emb" in served and "clip_text_emb" not in served
    assert "synthetic_captions_blake2b" in caplog.text


@pytest.mark.parametrize("before, after", [(2, 4), (3, 6), (4, 2)])
def test_a_mid_epoch_resume_with_another_batch_size_finishes_the_epoch(tmp_path, before, after):
    """The loader skips the samples seen (samples_done), but Lightning restored its count of the epoch's batches in
    the old size and ended the epoch when it reached the new length: 3 batches of 2, then batches of 4 of 24 scenes
    stopped after 3 of the 4 full batches left, and 4 scenes of that epoch were never trained on. Now the resumed
    epoch serves every full batch left, each scene once, and the next epoch is whole."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    seen: list[tuple[int, list[int]]] = []

    class _Fit(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(1, 1)

        def training_step(self, batch, batch_idx):
            seen.append((self.current_epoch, batch["index"].tolist()))
            return self.lin(batch["image"].mean((1, 2, 3))[:, None]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def data(batch_size):
        return ShapesDataModule(train_size=24, val_size=4, test_size=4, resolution=16, batch_size=batch_size)

    quiet = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    save = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_last=True, save_top_k=0)
    L.Trainer(max_steps=3, callbacks=[save], default_root_dir=tmp_path, **quiet).fit(_Fit(), datamodule=data(before))
    first = [i for _, b in seen for i in b]
    seen.clear()
    trainer = L.Trainer(max_epochs=2, enable_checkpointing=False, default_root_dir=tmp_path, **quiet)
    trainer.fit(_Fit(), datamodule=data(after), ckpt_path=str(tmp_path / "last.ckpt"))
    rest = [i for epoch, b in seen if epoch == 0 for i in b]
    assert len(rest) == (24 - len(first)) // after * after  # every full batch left
    assert len(set(first + rest)) == len(first + rest)  # none twice
    assert sum(epoch == 1 for epoch, _ in seen) == 24 // after


def test_the_feature_file_check_reads_a_large_float16_column_a_block_at_a_time():
    """check_feature_tensors ran torch.isfinite over whole columns: a float16 encodings column was copied to float32
    with a bool mask beside it, 2.5x the column at once (a 4 GB all-captions file peaked at 14 GB). Measured in a
    fresh process (its peak RSS), with two bad rows that must still be counted."""
    import json
    import subprocess
    import sys

    code = """
import json, resource, torch
from zoo.data.datamodule import check_feature_tensors
from zoo.errors import ConfigError
x = torch.full((4000, 77, 1024), 0.5, dtype=torch.float16)  # 600 MB, every page touched
x[10, 3, 7], x[3000, 76, 0] = float("inf"), float("nan")
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
before = peak()
try:
    check_feature_tensors({"clip_text_encodings": x}, "f.pt", "re-run")
    said = None
except ConfigError as e:
    said = str(e)
print(json.dumps({"grew": peak() - before, "column": x.numel() * 2, "said": said}))
"""
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert "'clip_text_encodings' holds NaN or infinite values in 2 of its 4000 rows" in got["said"]
    assert got["grew"] < got["column"] / 2, got  # (a block of rows as float32: ~100 MB; the whole column was 1.5 GB)


def test_a_feature_file_is_served_from_the_files_pages_not_a_private_copy(tmp_path):
    """load_features / load_embeddings map the file (safe_load(mmap=True)): its tensors are page cache the OS can
    drop and DataLoader workers / DDP ranks share, so a feature file larger than memory (COCO train's per-caption
    encodings, ~65 GB) can still be served. Values equal a plain load; a legacy (non-zip) file is read whole."""
    import torch

    from zoo.checkpoint import safe_load
    from zoo.data.datamodule import load_features
    from zoo.embed import load_embeddings

    def mapped(path) -> bool:
        with open("/proc/self/maps") as f:
            return str(path) in f.read()

    obj = {"clip_image_emb": torch.randn(64, 8), "clip_text_emb": torch.randn(64, 8), "meta": {"split": "train"}}
    path = tmp_path / "train.pt"
    torch.save(obj, path)
    for load in (lambda: load_features(path, "train"), lambda: load_embeddings(path)):
        feats = load()
        assert mapped(path)
        assert torch.equal(feats["clip_image_emb"], obj["clip_image_emb"])
        assert torch.equal(feats["clip_text_emb"], obj["clip_text_emb"])
        del feats
        import gc

        gc.collect()
        assert not mapped(path)  # the mapping goes with the tensors
    legacy = tmp_path / "legacy.pt"
    torch.save(obj, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(load_features(legacy, "train")["clip_image_emb"], obj["clip_image_emb"])
    assert not mapped(legacy)
    assert torch.equal(safe_load(legacy, mmap=True)["clip_text_emb"], obj["clip_text_emb"])
