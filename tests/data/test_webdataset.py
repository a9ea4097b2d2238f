"""WebDataset shards written by the test: every good sample once per pass (workers, ranks), bad samples counted."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from zoo.data.collate import collate_samples
from zoo.data.webdataset import make_webdataset, split_shards, webdataset_length

N_SHARDS, PER_SHARD = 3, 5
CORRUPT = "01002"


def _image_bytes(colour, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    import webdataset as wds

    d = tmp_path_factory.mktemp("shards")
    for s in range(N_SHARDS):
        with wds.TarWriter(str(d / f"{s:05d}.tar")) as w:
            for i in range(PER_SHARD):
                key = f"{s:02d}{i:03d}"
                if key == CORRUPT:
                    w.write({"__key__": key, "jpg": b"\xff\xd8garbage, not a jpeg", "txt": "broken"})
                    continue
                ext, fmt = [("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP")][i % 3]
                sample = {"__key__": key, ext: _image_bytes((10 * i, 60 * s, 90), fmt)}
                if i % 2:  # img2dataset writes both; json-only samples must work too
                    sample["json"] = json.dumps({"caption": f"cap {key}", "url": "http://x"}).encode()
                else:
                    sample["txt"] = f"cap {key}"
                w.write(sample)
    return d


GOOD = sorted(f"{s:02d}{i:03d}" for s in range(N_SHARDS) for i in range(PER_SHARD) if f"{s:02d}{i:03d}" != CORRUPT)


@pytest.fixture
def shards(shard_dir) -> list[str]:
    return [str(shard_dir / f"{s:05d}.tar") for s in range(N_SHARDS)]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("shuffle_buffer", [0, 4])
def test_every_good_sample_once_per_pass_and_corrupt_counted(shards, workers, shuffle_buffer):
    ds = make_webdataset(shards, resolution=16, shuffle_buffer=shuffle_buffer)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
    got = list(loader)
    assert sorted(s["key"] for s in got) == GOOD  # each good sample exactly once, the corrupt one skipped
    for s in got:
        assert set(s) == {"image", "caption", "key"}
        assert s["image"].shape == (3, 16, 16) and s["image"].dtype == torch.float32
        assert s["image"].min() >= -1 and s["image"].max() <= 1
        assert s["caption"] == f"cap {s['key']}"
    assert ds.skip_counter.skipped == 1  # also with workers: the count is shared with the main process


def test_brace_urls_batches_and_caption_key(shard_dir):
    pattern = str(shard_dir / "{00000..00002}.tar")
    ds = make_webdataset(pattern, resolution=8, shuffle_buffer=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate_samples)
    batches = list(loader)
    assert batches[0]["image"].shape == (4, 3, 8, 8) and len(batches[0]["caption"]) == 4
    assert sum(len(b["key"]) for b in batches) == len(GOOD)
    # json only: the txt-only samples have no caption -> skipped and counted, never a crash
    json_only = make_webdataset(pattern, resolution=8, shuffle_buffer=0, caption_key=("json",))
    keys = [s["key"] for s in json_only]
    assert keys and all(int(k[-3:]) % 2 == 1 for k in keys)
    assert json_only.skip_counter.skipped == len(GOOD) + 1 - len(keys)


def test_ranks_get_disjoint_shards(shards, monkeypatch):
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        ds = make_webdataset(
            shards, resolution=8, shuffle_buffer=3, seed=5
        )  # shard order shuffled the same on all ranks
        seen.append({s["key"] for s in ds})
    assert seen[0] and seen[1] and seen[0].isdisjoint(seen[1])
    assert sorted(seen[0] | seen[1]) == GOOD
    # the dealing rule itself: rank first, then worker; every shard exactly once
    urls = [f"s{i}" for i in range(10)]
    parts = [split_shards(urls, r, 2, w, 3) for r in range(2) for w in range(3)]
    assert sorted(u for p in parts for u in p) == sorted(urls)
    assert split_shards(urls, 1, 2) == ["s1", "s3", "s5", "s7", "s9"]


@pytest.mark.parametrize("workers", [0, 2])
def test_epoch_length_gives_sized_epochs_that_continue_the_stream(shards, workers):
    ds = make_webdataset(shards, resolution=8, shuffle_buffer=0, epoch_length=9)
    assert len(ds) == 9
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers, persistent_workers=workers > 0)
    epochs = [[s["key"] for s in loader] for _ in range(2)]
    assert [len(e) for e in epochs] == [9, 9]
    assert set(epochs[0] + epochs[1]) == set(GOOD)  # the second epoch goes on where the first stopped


def test_length_and_missing_shards(shard_dir, shards, tmp_path):
    assert webdataset_length(shards) == N_SHARDS * PER_SHARD  # tar headers (the corrupt sample is still a sample)
    (shard_dir / "00000_stats.json").write_text(json.dumps({"successes": 3, "failed_to_download": 2}))
    try:
        assert webdataset_length(str(shard_dir / "{00000..00002}.tar")) == 3 + 2 * PER_SHARD  # img2dataset stats
    finally:
        (shard_dir / "00000_stats.json").unlink()
    missing = str(tmp_path / "nope-{000..001}.tar")
    with pytest.raises(FileNotFoundError) as e:
        make_webdataset(missing, resolution=8)
    assert str(tmp_path / "nope-000.tar") in str(e.value) and "data.train_urls" in str(e.value)


def test_truncated_shard_is_skipped_not_fatal(shards, tmp_path):
    broken = tmp_path / "broken.tar"
    data = Path(shards[2]).read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    ds = make_webdataset([shards[0], str(broken)], resolution=8, shuffle_buffer=0)
    keys = [s["key"] for s in ds]
    assert set(k for k in GOOD if k.startswith("00")) <= set(keys)
    assert ds.skip_counter.skipped >= 1


def test_workers_forked_after_main_process_reads_start_their_own_streams(shards):
    # two shards of 5 and 4 good samples, one per worker; 8 samples per epoch -> 4 per worker, no wrap-around
    ds = make_webdataset(shards[:2], resolution=8, shuffle_buffer=4, epoch_length=8)
    first = [s["key"] for s, _ in zip(ds, range(5))]  # e.g. fitting a BPE on captions: a suspended stream
    assert len(first) == 5
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    keys = [s["key"] for s in loader]
    # forked workers must not resume the parent's suspended stream (shared file offsets -> duplicates, read errors)
    assert len(keys) == 8 and len(set(keys)) == 8 and {k[:2] for k in keys} == {"00", "01"}
    assert ds.skip_counter.skipped <= 1


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("epoch_length", [None, 14])
def test_skip_count_does_not_grow_with_passes(shards, workers, epoch_length, caplog):
    """The same corrupt sample met on every pass counts (and warns) once, in the main process and in workers."""
    ds = make_webdataset(shards, resolution=8, shuffle_buffer=4, epoch_length=epoch_length)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers, persistent_workers=workers > 0)
    with caplog.at_level(logging.WARNING, logger="zoo.data.webdataset"):
        counts = []
        for _ in range(4):
            list(loader)
            counts.append(ds.skip_counter.skipped)
    assert counts[-1] == 1 and counts == sorted(counts) and max(counts) == 1  # was 1, 2, 3, 4
    if workers == 0:  # workers log in their own processes
        assert sum("skipping a bad webdataset sample" in r.getMessage() for r in caplog.records) == 1


def test_truncated_shard_counts_once_over_passes(shards, tmp_path):
    broken = tmp_path / "broken.tar"
    data = Path(shards[2]).read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    ds = make_webdataset([shards[0], str(broken)], resolution=8, shuffle_buffer=0)
    list(ds)
    first = ds.skip_counter.skipped
    list(ds)
    list(ds)
    assert first >= 1 and ds.skip_counter.skipped == first


def test_skip_counter_copies_keep_the_seen_set(shards):
    import pickle

    ds = make_webdataset(shards, resolution=8, shuffle_buffer=0)
    list(ds)
    copy = pickle.loads(pickle.dumps(ds.skip_counter))  # plain pickle (e.g. deepcopy of the datamodule)
    assert copy.skipped == 1 and copy.examples == ds.skip_counter.examples
    copy.skip(ValueError("again"), item=copy.examples[0])
    assert copy.skipped == 1  # already seen: not counted again
    copy.skip(ValueError("new"), item="another#key")
    assert copy.skipped == 2 and ds.skip_counter.skipped == 1  # an unshared copy


def test_datamodule_summarises_skips_at_the_end_of_fit(shard_dir, caplog):
    from zoo.data.modules import WebDataModule

    dm = WebDataModule(
        train_urls=str(shard_dir / "{00000..00002}.tar"),
        resolution=8,
        batch_size=4,
        num_workers=0,
        epoch_length=None,
        shuffle_buffer=0,
    )
    dm.setup("fit")
    for _ in range(2):
        for _ in dm.train_dataloader():
            pass
    with caplog.at_level(logging.WARNING, logger="zoo.data.datamodule"):
        dm.teardown("fit")  # Lightning calls it at the end of trainer.fit (also after Ctrl-C)
    msgs = [r.getMessage() for r in caplog.records if r.name == "zoo.data.datamodule"]
    assert len(msgs) == 1 and "skipped 1 bad WebDataset samples/shards in the train split" in msgs[0], msgs
    assert f"#{CORRUPT}" in msgs[0]  # names the sample: <shard url>#<key>
    assert dm.skip_counts() == {
        "train": {
            "skipped": 1,
            "examples": [f"{shard_dir / '00001.tar'}#{CORRUPT}"],
            "what": "bad WebDataset samples/shards",
        }
    }


@pytest.mark.parametrize("epoch_length", [None, 8])
def test_a_split_whose_every_sample_is_unreadable_is_an_error_not_empty_epochs(tmp_path, epoch_length):
    """Shards with no readable sample (here every image is garbage; an empty shard too): each pass ended at once, and
    fit ran empty epochs for ever (max_steps / max_time are checked after batches). Now the first empty epoch of the
    loader is a ConfigError naming what was skipped and the fix."""
    import webdataset as wds

    from zoo.data.modules import WebDataModule
    from zoo.errors import ConfigError

    with wds.TarWriter(str(tmp_path / "00000.tar")) as w:
        for i in range(6):
            w.write({"__key__": f"{i:03d}", "jpg": b"\xff\xd8garbage", "txt": "a caption"})
    with wds.TarWriter(str(tmp_path / "00001.tar")):
        pass  # an empty shard
    kw = dict(resolution=8, batch_size=4, num_workers=0, epoch_length=epoch_length, shuffle_buffer=0)
    dm = WebDataModule(train_urls=str(tmp_path / "00000.tar"), val_urls=str(tmp_path / "00001.tar"), **kw)
    dm.setup("fit")
    with pytest.raises(ConfigError, match=r"train split streamed no sample in a whole epoch: 6 bad samples .*fix: "):
        list(dm.train_dataloader())
    with pytest.raises(ConfigError, match=r"val split streamed no sample .*its 1 shards gave this process nothing"):
        list(dm.val_dataloader())


def test_a_split_without_shards_of_its_own_is_named(shards, caplog):
    """data.val_urls / test_urls left null read the training shards: validation then measured training data, and a
    checkpoint monitor on a val metric selected by it, without a word. Each split built that way now warns, naming
    the shards it reads and the option to set; a split given its own shards says nothing."""
    from zoo.data.modules import WebDataModule

    def warnings(**urls):
        dm = WebDataModule(resolution=8, batch_size=4, num_workers=0, shuffle_buffer=0, **urls)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="zoo.data.modules"):
            for split in ("train", "val", "test"):
                dm.build_dataset(split)
        return [r.getMessage() for r in caplog.records if r.name == "zoo.data.modules"]

    msgs = warnings(train_urls=shards)
    assert len(msgs) == 2 and "data.val_urls is not set: the val split reads data.train_urls" in msgs[0]
    assert "training data" in msgs[0] and "fix: data.val_urls=" in msgs[0]
    assert "data.test_urls is not set: the test split reads data.train_urls" in msgs[1]
    msgs = warnings(train_urls=shards[:2], val_urls=shards[2:])
    assert len(msgs) == 1 and "the test split reads data.val_urls, the validation shards" in msgs[0]
    assert warnings(train_urls=shards[:1], val_urls=shards[1:2], test_urls=shards[2:]) == []


@pytest.mark.parametrize("workers", [0, 1])
def test_sample_order_reshuffles_every_pass_with_one_shard(shards, workers):
    """The shuffle buffer was seeded from the *previous* pass (the shard list counted a pass only at its first
    shard, after the buffer had been built): passes 0 and 1 had the same order -- every epoch, with one shard."""
    ds = make_webdataset(shards[:1], resolution=8, shuffle_buffer=5, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers, persistent_workers=workers > 0)
    passes = [[s["key"] for s in loader] for _ in range(3)]
    assert all(sorted(p) == sorted(passes[0]) for p in passes) and len(passes[0]) == PER_SHARD
    assert passes[0] != passes[1] and passes[1] != passes[2]


def test_index_features_refuse_a_stream(shards, tmp_path):
    """zoo-tokenize / zoo-embed rows are served by index; a WebDataset stream has none (and is shuffled): the commands
    wrote epoch_length rows in stream order (repeating samples past one pass) and the DataModule then failed in the
    first step (NotImplementedError), or advised data.epoch_length."""
    from zoo.data.modules import WebDataModule
    from zoo.embed import embed_dataset
    from zoo.errors import ConfigError
    from zoo.tokenize import tokenize_dataset

    ds = make_webdataset(shards, resolution=8, shuffle_buffer=4, epoch_length=20)

    class Tok:
        codebook_size = 2

        def encode(self, x):
            return (x[:, 0, ::4, ::4] > 0).long()

    with pytest.raises(
        ConfigError, match="data=coco, data=folder data.root=<your image-caption folder>, or data=shapes"
    ):
        tokenize_dataset(Tok(), ds, tmp_path / "tok.pt", batch_size=4)
    with pytest.raises(
        ConfigError, match="data=coco, data=folder data.root=<your image-caption folder>, or data=shapes"
    ):
        embed_dataset(object(), ds, tmp_path / "emb.pt", batch_size=4, progress=False)
    assert not list(tmp_path.iterdir())
    torch.save({"image_tokens": torch.zeros(20, 2, 2, dtype=torch.long), "meta": {"split": "train"}}, tmp_path / "t.pt")
    for epoch_length in (20, None):
        dm = WebDataModule(
            train_urls=shards,
            resolution=8,
            batch_size=4,
            epoch_length=epoch_length,
            features={"train": tmp_path / "t.pt"},
        )
        with pytest.raises(
            ConfigError, match="data.features.train=.*streams its samples.*data=coco, data=folder or data=shapes"
        ):
            dm.setup("fit")


def test_spawned_workers_read_only_their_ranks_shards(shards, monkeypatch):
    """Lightning's DDP sets no RANK variable: a DataLoader worker started by spawn/forkserver (ddp_spawn, Python 3.14's
    default) sees no torch.distributed group, and webdataset's split_by_node gave it rank 0 of 1 -- every rank read
    every shard. The rank of the process that starts the workers is now carried to them."""
    import multiprocessing

    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    import zoo.data.webdataset as zwds

    monkeypatch.setattr(zwds, "mp", multiprocessing.get_context("spawn"))  # the skip counter's lock, as under spawn
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dist.init_process_group("fake", rank=1, world_size=2, store=FakeStore())  # rank 1 of 2, no partner needed
    try:
        ds = make_webdataset(shards, resolution=8, shuffle_buffer=0)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1, multiprocessing_context="spawn")
        keys = {s["key"] for s in loader}
    finally:
        dist.destroy_process_group()
    assert keys == {k for k in GOOD if k.startswith("01")}  # shards[1::2]: only shard 1 of 0, 1, 2


@pytest.mark.parametrize("epoch_length", [None, 10])
def test_fitting_a_bpe_on_the_captions_leaves_the_training_order_of_the_seed_alone(shard_dir, epoch_length):
    """train_captions read the training split's own stream: the fit moved its pass counter (and, with epoch_length,
    its position), so a run that fitted its BPE trained on another sample order than a rerun of the same seed that
    found the BPE cached. The fit now reads a stream of its own, sharing only the skip counter."""
    from zoo.data.modules import WebDataModule

    def first_epoch(fit: bool) -> list[str]:
        dm = WebDataModule(
            train_urls=str(shard_dir / "{00000..00002}.tar"),
            val_urls=str(shard_dir / "00000.tar"),
            resolution=8,
            batch_size=2,
            shuffle_buffer=4,
            epoch_length=epoch_length,
        )
        dm.setup("fit")
        if fit:  # what prepare_tokenizer does on a tokenizer-cache miss
            assert len(list(dm.tokenizer_captions())) == len(GOOD)
            assert dm.skip_counts()["train"]["skipped"] == 1
        order = [c for batch in dm.train_dataloader() for c in batch["caption"]]
        assert dm.skip_counts().get("train", {}).get("skipped", 0) <= 1  # the corrupt sample counts once at most
        return order

    assert first_epoch(fit=True) == first_epoch(fit=False)
