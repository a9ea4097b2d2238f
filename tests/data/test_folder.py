"""data=folder: a plain folder of images beside same-stem .txt captions (DALLE-pytorch's --image_text_folder), on
folders the tests write: pairing in nested folders, the left-out files said once, the no-pairs error, splits by a
hash of the path that stay put when files are added, COCO's caption draw and bad-file skipping, zoo-train and
zoo-embed on it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from zoo.data.folder import IMAGE_EXTENSIONS, FolderCaptions, FolderDataModule, scan_folder, split_point
from zoo.data.loader import EpochIndex
from zoo.errors import ConfigError


def _image(path: Path, i: int, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12 + i % 5, 10 + i % 3), (17 * i % 256, 90, 200 - 7 * i % 200)).save(path, fmt)


def _captions(i: int) -> list[str]:
    return [f"picture {i} caption {j}" for j in range(1 + i % 4)]  # 1-4 captions per image


def _pair(root: Path, rel: str, i: int) -> None:
    """``root/rel.png`` (or the extension in ``rel``) and ``root/<rel stem>.txt`` with picture i's captions, with blank
    lines and padding around them (ignored)."""
    path = root / (rel if Path(rel).suffix else rel + ".png")
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}.get(path.suffix.lower(), "PNG")
    _image(path, i, fmt)
    path.with_suffix(".txt").write_text("\n\n".join(f"  {c} " for c in _captions(i)) + "\n\n")


def _folder(root: Path, n: int = 12) -> Path:
    """n pairs spread over nested folders and every image extension, plus files that make no pair."""
    for i in range(n):
        ext = IMAGE_EXTENSIONS[i % len(IMAGE_EXTENSIONS)]
        _pair(root, f"set{i % 3}/{'deep/' * (i % 2)}img{i:03d}{ext.upper() if i == 7 else ext}", i)
    _image(root / "no_caption.png", 99)  # an image without a .txt
    (root / "set1" / "no_image.txt").write_text("a caption whose image is missing\n")
    _image(root / "set2" / "blank.png", 98)
    (root / "set2" / "blank.txt").write_text("\n   \n")  # a .txt without a caption
    (root / ".hidden").mkdir()
    _pair(root / ".hidden", "copy", 97)  # hidden folders are left out
    return root


def _number(caption: str) -> int:
    return int(caption.split()[1])


def test_pairs_in_nested_folders_and_left_out_files_are_counted_and_said_once(tmp_path, caplog):
    root = _folder(tmp_path / "f")
    _image(root / "set0" / "alone.png", 96)  # a second image without a .txt: counts are said in the right number
    scan = scan_folder(root)
    assert len(scan.pairs) == 12
    rels = [rel for rel, _ in scan.pairs]
    assert rels == sorted(rels, key=lambda r: (Path(r).parent.parts, Path(r).name))  # a folder's files, then its subs
    for rel, captions in scan.pairs:
        i = int(Path(rel).stem[3:])
        assert captions == _captions(i)  # empty lines and padding dropped, file order kept
        assert (root / rel).is_file()
    assert scan.images_without_txt == ["no_caption.png", "set0/alone.png"]
    assert scan.txt_without_image == ["set1/no_image.txt"]
    assert scan.txt_without_caption == ["set2/blank.txt"]
    assert any(rel.endswith("img007.PNG") for rel, _ in scan.pairs)  # extensions in any case
    assert scan_folder(root).pairs == scan.pairs  # deterministic

    with caplog.at_level(logging.WARNING, logger="zoo.data.folder"):
        dm = FolderDataModule(root=str(root), resolution=8, batch_size=2)
        dm.setup("fit")
        dm.dataset("test")
    warnings = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(warnings) == 1, warnings
    said = ("2 images without a .txt", "1 .txt file without an image", "1 .txt file without a caption")
    for what in (*said, "no_caption.png", "set0/alone.png", "set1/no_image.txt", "set2/blank.txt"):
        assert what in warnings[0]
    assert sum(len(v) for k, v in dm.split_items.items() if k != "test") == 12


def test_a_second_image_of_one_stem_is_left_out_and_named(tmp_path):
    root = tmp_path / "f"
    _pair(root, "a.jpg", 1)
    _image(root / "a.png", 2)
    _pair(root, "b.png", 3)
    scan = scan_folder(root)
    assert [rel for rel, _ in scan.pairs] == ["a.jpg", "b.png"]
    assert scan.images_sharing_txt == ["a.png"]


@pytest.mark.parametrize("layout", ["empty", "images only", "apart", "empty captions"])
def test_a_folder_without_pairs_is_a_config_error_naming_root_extensions_and_fix(tmp_path, layout):
    root = tmp_path / "f"
    root.mkdir()
    if layout == "images only":
        _image(root / "x" / "a.jpg", 1, "JPEG")
    elif layout == "apart":  # DALLE-pytorch pairs by stem across folders; here a .txt must sit beside its image
        _image(root / "images" / "0001.png", 1)
        (root / "texts").mkdir()
        (root / "texts" / "0001.txt").write_text("a caption\n")
    elif layout == "empty captions":
        _image(root / "a.png", 1)
        (root / "a.txt").write_text("\n\n")
    with pytest.raises(ConfigError) as err:
        FolderDataModule(root=str(root), resolution=8)
    msg = str(err.value)
    assert f"data.root={root.resolve()}" in msg and "*.jpg" in msg and "*.webp" in msg and "fix:" in msg
    if layout == "apart":
        assert "images/0001.png and texts/0001.txt share a stem but not a folder" in msg
    if layout == "empty captions":
        assert "without a caption, e.g. a.txt" in msg


def test_a_missing_root_and_bad_fractions_are_config_errors(tmp_path):
    _folder(tmp_path / "f", 4)
    with pytest.raises(ConfigError, match=r"data.root=.*nowhere.* is not a folder \(fix: data.root="):
        FolderDataModule(root=str(tmp_path / "nowhere"))
    for kw, match in (
        ({"val_fraction": 1.0}, r"data.val_fraction=1.0 must be a number in \[0, 1\)"),
        ({"test_fraction": -0.1}, r"data.test_fraction=-0.1"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "leave nothing to train on"),
        ({"val_fraction": 0.0}, r"the val split is empty .*fix: data.val_fraction=0.01"),
    ):
        with pytest.raises(ConfigError, match=match):
            FolderDataModule(root=str(tmp_path / "f"), **kw)


def _splits(dm: FolderDataModule) -> dict[str, str]:
    """rel path -> split (a test split that serves the val pairs, data.test_fraction=0, is not its own split)."""
    held_out = ("train", "val", "test") if dm.test_fraction else ("train", "val")
    return {rel: split for split in held_out for rel, _ in dm.split_items[split]}


def test_splits_follow_the_path_hash_and_stay_put_when_files_are_added(tmp_path):
    root = tmp_path / "f"
    for i in range(60):
        _pair(root, f"d{i % 4}/p{i}", i)
    dm = FolderDataModule(root=str(root), resolution=8, val_fraction=0.2, test_fraction=0.1)
    before = _splits(dm)
    assert len(before) == 60 and set(before.values()) == {"train", "val", "test"}
    for rel, split in before.items():
        u = split_point(rel)
        assert split == ("val" if u < 0.2 else "test" if u < 0.3 else "train")
    assert sum(len(dm.split_items[s]) for s in ("train", "val", "test")) == 60  # each pair in one split
    for i in range(60, 100):  # new files, some in new folders, some sorting before the old ones
        _pair(root, f"{'a' if i % 2 else 'd1'}/p{i}", i)
    after = _splits(FolderDataModule(root=str(root), resolution=8, val_fraction=0.2, test_fraction=0.1, seed=5))
    assert len(after) == 100
    assert {rel: after[rel] for rel in before} == before  # no existing item changed split (nor with another seed)


def test_a_small_folder_still_gets_one_val_pair_the_same_one_every_time(tmp_path):
    root = tmp_path / "f"
    for i in range(3):
        _pair(root, f"p{i}", i)
    splits = [_splits(FolderDataModule(root=str(root), resolution=8)) for _ in range(2)]
    assert splits[0] == splits[1]
    assert sorted(splits[0].values()) == ["train", "train", "val"]
    (val,) = [rel for rel, s in splits[0].items() if s == "val"]
    assert val == min(splits[0], key=split_point)
    # no test fraction: the test split serves the val pairs
    dm = FolderDataModule(root=str(root), resolution=8)
    assert [it[0] for it in dm.dataset("test").items] == [val]


def test_val_root_inside_root_is_left_out_of_the_training_pairs(tmp_path):
    root = tmp_path / "f"
    for i in range(6):
        _pair(root, f"train/p{i}", i)
    for i in range(6, 9):
        _pair(root, f"val/q{i}", i)
    dm = FolderDataModule(root=str(root), val_root=str(root / "val"), resolution=8)
    assert [rel for rel, _ in dm.split_items["val"]] == ["q6.png", "q7.png", "q8.png"]
    assert all(rel.startswith("train/") for rel, _ in dm.split_items["train"]) and len(dm.split_items["train"]) == 6
    assert dm.dataset("val")[0]["caption"] == _captions(6)[0]
    # a val_root holding the training pairs is refused (the whole tree was excluded: "no pairs" named no cause)
    for val_root, train_root in ((root, root), (root, root / "train")):
        with pytest.raises(ConfigError, match=r"data.val_root=.* holds data.root=.*fix: data.val_root=<a folder"):
            FolderDataModule(root=str(train_root), val_root=str(val_root), resolution=8)


def test_train_draws_one_caption_per_epoch_reproducibly_val_serves_the_first(tmp_path):
    root = _folder(tmp_path / "f", 24)
    dm = FolderDataModule(root=str(root), resolution=8, val_fraction=0.2, seed=3)
    train = dm.dataset("train")

    def draws(ds, epoch):
        return [ds[EpochIndex(i, epoch)]["caption"] for i in range(len(ds))]

    epochs = [draws(train, e) for e in range(4)]
    for e, captions in enumerate(epochs):
        for i, c in enumerate(captions):
            assert c in train.caption_choices(i) and _number(c) == int(Path(train.items[i][0]).stem[3:])
        # a fresh DataModule (a resumed run) draws the same captions for that epoch
        assert draws(FolderDataModule(root=str(root), resolution=8, val_fraction=0.2, seed=3).dataset("train"), e) == (
            captions
        )
    assert len({tuple(c) for c in epochs}) > 1  # the draw changes from epoch to epoch
    other = draws(FolderDataModule(root=str(root), resolution=8, val_fraction=0.2, seed=4).dataset("train"), 0)
    assert other != epochs[0]  # and with the seed
    val = dm.dataset("val")
    for i in range(len(val)):
        assert val[EpochIndex(i, 2)]["caption"] == val.items[i][1][0] == val.caption_choices(i)[0]
        assert len(val.caption_choices(i)) == 1
    assert any(len(train.caption_choices(i)) > 1 for i in range(len(train)))
    # the captions a BPE is fitted on are read without decoding an image: epoch 0's draws
    assert list(dm.train_captions()) == epochs[0]


@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_an_unreadable_image_is_skipped_counted_and_summarised(tmp_path, damage, caplog):
    root = tmp_path / "f"
    for i in range(6):
        _pair(root, f"p{i}", i)
    bad = root / "p2.png"
    if damage == "corrupt":
        bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    else:
        bad.write_bytes(bad.read_bytes()[:-30])
    dm = FolderDataModule(root=str(root), resolution=8, batch_size=2, val_fraction=0.2)
    split = next(s for s in ("train", "val") if any(rel == "p2.png" for rel, _ in dm.split_items[s]))
    ds = dm.dataset(split)
    k = [rel for rel, _ in ds.items].index("p2.png")
    with caplog.at_level(logging.WARNING):
        served = [ds[i]["index"] for i in range(len(ds))] + [ds[i]["index"] for i in range(len(ds))]
        assert k not in served and ds[k]["index"] == (k + 1) % len(ds)
        assert ds.skipped == 1 and ds.skipped_files == ["p2.png"]
        assert dm.skip_counts() == {split: {"skipped": 1, "examples": ["p2.png"], "what": "unreadable images"}}
        dm.log_skip_summary()
    lines = [r.getMessage() for r in caplog.records]
    assert sum("skipping unreadable image" in m and "p2.png" in m for m in lines) == 1  # said once, not per access
    assert any(m.startswith(f"data summary: skipped 1 unreadable images in the {split} split: p2.png") for m in lines)


def test_dataloader_workers_report_skips_to_the_main_process(tmp_path):
    root = tmp_path / "f"
    for i in range(8):
        _pair(root, f"p{i}", i)
    (root / "p5.png").write_bytes(b"not an image")
    items = scan_folder(root).pairs
    ds = FolderCaptions(root, items, "train", resolution=8)
    from zoo.data.collate import collate_samples

    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate_samples)
    served = torch.cat([b["index"] for b in loader]).tolist()
    assert len(served) == 8 and 5 not in served
    assert ds.skipped == 1 and ds.skipped_files == ["p5.png"]


def test_zoo_train_on_a_folder_trains_and_writes_a_checkpoint(tmp_path, train_cfg, train_helpers):
    from zoo.train import train

    root = _folder(tmp_path / "f", 10)
    (root / "set0" / "img000.png").write_bytes(b"broken")
    cfg = train_cfg(
        "model=vqvae",
        "model.preset=tiny",
        "data=folder",
        f"data.root={root}",
        "data.resolution=16",
        "data.batch_size=2",
        "data.num_workers=0",
        *train_helpers.TWO_STEPS,
    )
    metrics = train(cfg)
    assert metrics["global_step"] == 2
    last = train_helpers.last_ckpt(cfg)
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["zoo_component"] == "vqvae"
    assert ckpt["zoo_config"]["data"]["_target_"] == "zoo.data.folder.FolderDataModule"
    # the data config a checkpoint carries rebuilds the DataModule through the registry (zoo-sample's grids)
    from zoo.registry import datamodule_from_file_config

    dm = datamodule_from_file_config(ckpt["zoo_config"]["data"], str(last))
    assert isinstance(dm, FolderDataModule) and dm.root == root.resolve()


def _tiny_clip(tmp_path: Path):
    """(checkpoint file, ClipScorer) of an untrained tiny CLIP."""
    from zoo.models.clip.model import create_clip
    from zoo.models.clip.scorer import ClipScorer

    torch.manual_seed(1)
    clip = tmp_path / "clip.pt"
    torch.save({"state_dict": create_clip("zoo-clip-tiny").state_dict()}, clip)
    return clip, ClipScorer.from_open_clip("zoo-clip-tiny", checkpoint=str(clip))


def _embed(clip: Path, root: Path, resolution: int, split: str, out: Path) -> Path:
    """zoo-embed of ``split`` of the folder ``root`` into ``out``."""
    from omegaconf import OmegaConf

    from zoo.embed import embed

    data = {"_target_": "zoo.data.folder.FolderDataModule", "root": str(root), "resolution": resolution}
    cfg = {"clip": {"arch": "zoo-clip-tiny", "checkpoint": str(clip)}, "data": data, "split": split, "out": str(out)}
    embed(OmegaConf.merge(OmegaConf.create(cfg), {"batch_size": 4, "seed": 0}))  # captions=auto: all, on train
    return out


def test_zoo_embed_captions_all_on_a_folder_is_served_per_drawn_caption(tmp_path):
    from zoo.checkpoint import safe_load

    clip, scorer = _tiny_clip(tmp_path)
    root = _folder(tmp_path / "f", 10)
    out = _embed(clip, root, scorer.image_size, "train", tmp_path / "train.pt")
    feats = safe_load(out)
    dm = FolderDataModule(root=str(root), resolution=scorer.image_size, batch_size=2, features={"train": str(out)})
    ds = dm.dataset("train")
    base = ds.base
    assert feats["meta"]["captions"] == "all"
    assert feats["clip_caption_counts"].tolist() == [len(c) for _, c in base.items]
    assert len(feats["clip_text_emb"]) == sum(len(c) for _, c in base.items)
    for epoch in (0, 1):
        for i in range(len(ds)):
            s = ds[EpochIndex(i, epoch)]
            want = scorer.encode_text([s["caption"]])[0]
            torch.testing.assert_close(s["clip_text_emb"], want, atol=1e-5, rtol=1e-4)
    # the seed draws when served: a file made under seed 0 keeps its text rows under seed 1 (every caption is in it)
    other_seed = FolderDataModule(root=str(root), resolution=scorer.image_size, seed=1, features={"train": str(out)})
    assert "clip_text_emb" in other_seed.dataset("train")[0]
    # a folder with other images (a training image renamed, the count kept) is refused, naming the file
    rel = Path(base.items[0][0])
    new = next(
        rel.with_stem(f"renamed{k}") for k in range(100) if split_point(str(rel.with_stem(f"renamed{k}"))) > 0.01
    )
    (root / rel).rename(root / new)
    (root / rel).with_suffix(".txt").rename((root / new).with_suffix(".txt"))
    moved = FolderDataModule(root=str(root), resolution=scorer.image_size, features={"train": str(out)})
    assert len(moved.split_items["train"]) == len(base.items)
    with pytest.raises(ConfigError, match=f"data.features.train={out} was made from other images"):
        moved.dataset("train")


def test_the_test_split_serves_the_val_split_s_features_when_it_is_the_val_split(tmp_path):
    """test_fraction=0: the test split is the val split's pairs, so zoo-train's test stage (test=true, the default)
    serves data.features.val: it was refused before training ('no data.features.test', the priors) or stopped after
    it (DALL·E from zoo-tokenize codes: 'batch has no image_tokens'), for want of a file of the same pairs."""
    from types import SimpleNamespace

    from zoo.train import check_compatibility

    clip, scorer = _tiny_clip(tmp_path)
    root = _folder(tmp_path / "f", 10)
    res = scorer.image_size
    files = {s: str(_embed(clip, root, res, s, tmp_path / f"{s}.pt")) for s in ("train", "val")}
    prior = SimpleNamespace(val_features_needed=("clip_image_emb",))  # what the priors' evaluation batches read
    dm = FolderDataModule(root=str(root), resolution=res, batch_size=2, features=files)
    check_compatibility(prior, dm, validates=True, tests=True)
    val, test = dm.dataset("val"), dm.dataset("test")
    assert len(test) == len(val) == len(dm.split_items["val"])
    for i in range(len(val)):
        torch.testing.assert_close(test[i]["clip_image_emb"], val[i]["clip_image_emb"])
        assert test[i]["caption"] == val[i]["caption"]
    # a folder with test pairs of its own: their features are still asked for, and val's never served as test's
    held = FolderDataModule(root=str(root), resolution=res, test_fraction=0.5, features=files)
    assert held.split_items["test"] and "clip_image_emb" not in held.dataset("test")[0]
    with pytest.raises(ConfigError, match="no data.features.test"):
        check_compatibility(prior, held, validates=True, tests=True)


def test_a_copied_folder_keeps_its_tokenizer_and_other_captions_refit(tmp_path):
    """The BPE fitted on a folder's captions was keyed by the folder's path too: a copy of the same folder elsewhere
    (or the folder moved) fitted it again (found: zoo-train data.root=<a copy> logged 'fitting', not 'reusing').
    The key is the training captions; a changed caption still changes it."""
    import shutil

    root = _folder(tmp_path / "f")
    copy = Path(shutil.copytree(root, tmp_path / "elsewhere" / "copy"))

    def key(folder: Path) -> dict:
        return FolderDataModule(root=str(folder), resolution=8).tokenizer_fit_key()

    assert key(copy) == key(root)
    train_rel = FolderDataModule(root=str(copy), resolution=8).split_items["train"][0][0]
    (copy / train_rel).with_suffix(".txt").write_text("another caption\n")
    assert key(copy) != key(root)
