"""COCO-format folders and WebDataset shards written by the tests: loading, caption rules, corrupt files skipped."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from zoo.data.coco import CocoCaptions
from zoo.data.webdataset import make_webdataset


def _png_bytes(colour, size=(40, 30), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture
def coco_root(tmp_path) -> Path:
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for part in ("train", "val"):
        d = root / f"{part}2014"
        d.mkdir()
        images, anns = [], []
        for i in range(6):
            name = f"{part}_{i}.jpg"
            images.append({"id": i, "file_name": name})
            for j in range(3):
                anns.append({"image_id": i, "id": i * 10 + j, "caption": f"{part} image {i} caption {j}"})
            if i == 2:
                (d / name).write_bytes(b"this is not a jpeg")  # corrupt
            elif i == 4:
                pass  # listed in the JSON but missing on disk
            else:
                (d / name).write_bytes(_png_bytes((40 * i, 80, 200), fmt="JPEG"))
        (root / "annotations" / f"captions_{part}2014.json").write_text(
            json.dumps({"images": images, "annotations": anns})
        )
    return root


def test_coco_train_samples_and_corrupt_files_skipped(coco_root):
    ds = CocoCaptions(str(coco_root), "train", resolution=16)
    assert len(ds) == 6
    seen = [ds[i] for i in range(len(ds))]
    assert ds.skipped == 2 and sorted(ds.skipped_files) == ["train_2.jpg", "train_4.jpg"]
    for s in seen:
        assert s["image"].shape == (3, 16, 16) and s["image"].dtype == torch.float32
        assert -1 <= s["image"].min() and s["image"].max() <= 1
        assert s["caption"].startswith(f"train image {s['index']} caption")
    # train draws among the image's captions
    drawn = {ds[0]["caption"] for _ in range(30)}
    assert len(drawn) > 1 and all(c.startswith("train image 0") for c in drawn)
    assert ds.scan(progress=False) == ["train_2.jpg", "train_4.jpg"]


def test_coco_val_test_fixed_and_disjoint(coco_root):
    val = CocoCaptions(str(coco_root), "val", resolution=16)
    test = CocoCaptions(str(coco_root), "test", resolution=16)
    assert {n for n, _ in val.items}.isdisjoint({n for n, _ in test.items})
    assert len(val) + len(test) == 6
    assert val[0]["caption"] == val[0]["caption"] == "val image 0 caption 0"


def test_coco_missing_paths_are_named(tmp_path, coco_root):
    with pytest.raises(FileNotFoundError, match="data.root"):
        CocoCaptions(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="captions_train2017.json"):
        CocoCaptions(str(coco_root), year=2017)


@pytest.fixture
def shards(tmp_path) -> list[str]:
    import webdataset as wds

    urls = []
    n = 0
    for s in range(3):
        url = str(tmp_path / f"shard-{s:05d}.tar")
        with wds.TarWriter(url) as w:
            for i in range(5):
                key = f"{s:02d}{i:03d}"
                if s == 1 and i == 2:
                    w.write({"__key__": key, "jpg": b"garbage", "txt": "broken"})
                    continue
                sample = {"__key__": key, "png": _png_bytes((10 * i, 20 * s, 90))}
                sample["json" if i % 2 else "txt"] = json.dumps({"caption": f"cap {key}"}) if i % 2 else f"cap {key}"
                w.write(sample)
                n += 1
        urls.append(url)
    return urls


@pytest.mark.parametrize("workers", [0, 2])
def test_webdataset_every_good_sample_once_and_corrupt_skipped(shards, workers):
    ds = make_webdataset(shards, resolution=16, shuffle_buffer=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
    got = [s for s in loader]
    keys = sorted(s["key"] for s in got)
    assert len(keys) == 14 and len(set(keys)) == 14 and "01002" not in keys
    for s in got:
        assert s["image"].shape == (3, 16, 16) and s["caption"] == f"cap {s['key']}"
    if workers == 0:
        assert ds.skip_counter.skipped == 1


def test_webdataset_ranks_get_disjoint_shards(shards, monkeypatch):
    import webdataset as wds
    import webdataset.utils as wu

    seen = []
    for rank in range(2):
        monkeypatch.setattr(wu, "pytorch_worker_info", lambda group=None, r=rank: (r, 2, 0, 1))
        monkeypatch.setattr(
            wds.shardlists, "pytorch_worker_info", lambda group=None, r=rank: (r, 2, 0, 1), raising=False
        )
        ds = make_webdataset(shards, resolution=16, shuffle_buffer=0)
        seen.append({s["key"][:2] for s in ds})
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == {"00", "01", "02"}
