"""CocoCaptions on a tiny COCO-format tree written by the test: samples, caption rules, splits, bad files."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image

from zoo.data.coco import CocoCaptions
from zoo.data.collate import collate_samples
from zoo.data.transforms import image_transform

N_IMAGES = 8
BAD = {2: "corrupt", 5: "missing"}  # train and val both have one corrupt and one missing file


def _image_bytes(i: int, fmt: str) -> bytes:
    mode = ("RGB", "L", "RGBA", "P")[i % 4]
    im = Image.new("RGB", (24 + 8 * i, 20 + 4 * (i % 3)), (30 * i, 100, 250 - 20 * i)).convert(mode)
    if fmt == "JPEG" and mode in ("RGBA", "P"):
        im = im.convert("RGB")
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def _captions(part: str, i: int) -> list[str]:
    return [f"{part} image {i} caption {j}" for j in range(2 + i % 4)]  # 2-5 captions per image


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    (root / "annotations").mkdir()
    for part in ("train", "val"):
        d = root / f"{part}2014"
        d.mkdir()
        images, anns = [], []
        for i in range(N_IMAGES):
            image_id = 1000 + 7 * i  # ids are not ordinals; the JSON lists them out of order below
            name = f"COCO_{part}2014_{image_id:012d}.{'jpg' if i % 2 else 'png'}"
            images.append({"id": image_id, "file_name": name, "width": 0, "height": 0})
            for j, c in enumerate(_captions(part, i)):
                anns.append({"image_id": image_id, "id": image_id * 10 + j, "caption": c + "  "})
            if BAD.get(i) == "corrupt":
                (d / name).write_bytes(b"\xff\xd8 this is not an image at all")
            elif BAD.get(i) == "missing":
                pass  # listed in the JSON, absent on disk
            else:
                (d / name).write_bytes(_image_bytes(i, "JPEG" if i % 2 else "PNG"))
        images.reverse()
        (root / "annotations" / f"captions_{part}2014.json").write_text(
            json.dumps({"images": images, "annotations": anns})
        )
    return root


def _image_number(caption: str) -> int:
    return int(caption.split()[2])


def test_train_samples_shapes_and_bad_files_skipped_and_counted(coco_root):
    ds = CocoCaptions(str(coco_root), "train", resolution=16)
    assert len(ds) == N_IMAGES and ds.skipped == 0
    samples = [ds[i] for i in range(len(ds))]
    assert ds.skipped == 2
    assert sorted(ds.skipped_files) == sorted(ds.items[i][0] for i in BAD)
    for s in samples:
        assert set(s) == {"image", "caption", "index"}
        assert s["image"].shape == (3, 16, 16) and s["image"].dtype == torch.float32
        assert s["image"].min() >= -1 and s["image"].max() <= 1
        assert s["index"] not in BAD and _image_number(s["caption"]) == s["index"]
        assert s["caption"] in _captions("train", s["index"])  # stripped, and belongs to the image
    # a bad index serves the next readable one; a second pass does not count the same files again
    assert ds[2]["index"] == 3 and ds[5]["index"] == 6
    [ds[i] for i in range(len(ds))]
    assert ds.skipped == 2
    assert sorted(ds.scan(progress=False)) == sorted(ds.items[i][0] for i in BAD)


def test_train_captions_vary_belong_to_image_and_are_seeded(coco_root):
    ds = CocoCaptions(str(coco_root), "train", resolution=8)
    drawn = [ds[3]["caption"] for _ in range(40)]
    assert set(drawn) == set(_captions("train", 3))  # 3 captions, 40 draws: all of them show up
    again = CocoCaptions(str(coco_root), "train", resolution=8)
    assert [again[3]["caption"] for _ in range(40)] == drawn  # same seed -> same draws
    other = CocoCaptions(str(coco_root), "train", resolution=8, seed=1)
    assert [other[3]["caption"] for _ in range(40)] != drawn


def test_val_and_test_are_fixed_disjoint_halves_of_val(coco_root):
    val = CocoCaptions(str(coco_root), "val", resolution=8)
    test = CocoCaptions(str(coco_root), "test", resolution=8)
    names = lambda ds: [n for n, _ in ds.items]  # noqa: E731
    assert set(names(val)).isdisjoint(names(test))
    assert len(val) + len(test) == N_IMAGES
    # sorted by image id: even ordinals -> val, odd -> test
    assert [_image_number(c[0]) for _, c in val.items] == [0, 2, 4, 6]
    assert [_image_number(c[0]) for _, c in test.items] == [1, 3, 5, 7]
    for ds in (val, test):
        for i in range(len(ds)):
            first = ds[i]
            assert first["caption"] == ds[i]["caption"] == ds.items[first["index"]][1][0]  # fixed: first caption
    assert val[1]["index"] == 2 and test[2]["index"] == 3  # ordinals 2 (val) and 5 (test) are the bad files
    assert val.skipped == 1 and test.skipped == 1
    assert len(CocoCaptions(str(coco_root), "val", resolution=8, max_items=3)) == 3


def test_missing_root_json_or_image_folder_name_the_path_and_option(tmp_path, coco_root):
    nowhere = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as e:
        CocoCaptions(str(nowhere))
    assert str(nowhere) in str(e.value) and "data.root=/path/to/coco" in str(e.value)
    with pytest.raises(FileNotFoundError) as e:
        CocoCaptions(str(coco_root), year=2017)
    assert str(coco_root / "annotations" / "captions_train2017.json") in str(e.value)
    assert "data.root" in str(e.value)
    half = tmp_path / "half"
    (half / "annotations").mkdir(parents=True)
    (half / "annotations" / "captions_val2014.json").write_text(
        (coco_root / "annotations" / "captions_val2014.json").read_text()
    )
    with pytest.raises(FileNotFoundError, match="val2014"):
        CocoCaptions(str(half), "val")
    with pytest.raises(ValueError, match="split"):
        CocoCaptions(str(coco_root), "validation")


def test_an_image_folder_without_the_listed_files_is_refused_when_built(tmp_path, coco_root, caplog):
    """An empty train2014/ (the zip unpacked into train2014/train2014/): every file was skipped one by one at the first
    sample, a warning per file of the split (83k lines for COCO train), then a RuntimeError naming no fix."""
    import shutil

    root = tmp_path / "coco"
    shutil.copytree(coco_root / "annotations", root / "annotations")
    shutil.copytree(coco_root / "train2014", root / "train2014" / "train2014")
    with caplog.at_level("WARNING"), pytest.raises(FileNotFoundError) as e:
        CocoCaptions(str(root), "train")
    says = str(e.value)
    assert f"none of the {N_IMAGES} files of captions_train2014.json looked up is in {root / 'train2014'}" in says
    assert "holds a folder train2014/: move its files up" in says and "fix: data.root=" in says
    assert not caplog.records  # nothing skipped one by one
    # some files present (a partial download): built, the missing ones are skipped and counted as met
    assert len(CocoCaptions(str(coco_root), "train")) == N_IMAGES


def test_bpe_fit_captions_are_read_without_decoding_the_images(coco_root, monkeypatch):
    """data/tokenizer=bpe on data=coco: the fit's captions were read through ds[i], which decoded and resized every
    training image (about 7 minutes for train2014 on one core) before training. Now no image is opened, and the
    captions are the draws the dataset serves."""
    import zoo.data.coco as coco
    from zoo.data.modules import CocoDataModule

    served = [CocoCaptions(str(coco_root), "train", resolution=8)[i]["caption"] for i in range(N_IMAGES)]
    dm = CocoDataModule(root=str(coco_root), resolution=8)

    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was decoded to read the captions")

    monkeypatch.setattr(coco, "load_rgb", no_decoding)
    captions = list(dm.train_captions())
    assert len(captions) == N_IMAGES
    readable = [i for i in range(N_IMAGES) if i not in BAD]  # a bad file's index serves its neighbour's caption
    assert [captions[i] for i in readable] == [served[i] for i in readable]


def test_dataloader_workers_report_skips_to_the_main_process(coco_root):
    ds = CocoCaptions(str(coco_root), "train", resolution=8)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate_samples)
    batches = list(loader)
    served = torch.cat([b["index"] for b in batches]).tolist()
    assert len(served) == N_IMAGES and set(served) == set(range(N_IMAGES)) - set(BAD)
    assert batches[0]["image"].shape == (3, 3, 8, 8)
    assert ds.skipped == 2  # counted in the workers, visible here (shared memory)
    assert sorted(ds.skipped_files) == sorted(ds.items[i][0] for i in BAD)
    copy = pickle.loads(pickle.dumps(ds))  # plain pickling works too (an unshared copy of the flags)
    assert copy.skipped == 2 and copy[0]["image"].shape == (3, 8, 8)


def test_transform_resizes_shorter_side_and_center_crops():
    # 60x30: a white 30x30 centre with black 15-pixel bands left and right -> the centre crop is white
    im = Image.new("RGB", (60, 30), (0, 0, 0))
    im.paste((255, 255, 255), (15, 0, 45, 30))
    x = image_transform(10, train=True)(im)
    assert x.shape == (3, 10, 10) and x.dtype == torch.float32
    assert torch.allclose(x[:, :, 1:-1], torch.ones(3, 10, 8), atol=0.05)
    # grayscale and transparent inputs become RGB; transparent pixels are white
    assert torch.allclose(image_transform(4, train=False)(Image.new("RGBA", (8, 8), (0, 0, 0, 0))), torch.ones(3, 4, 4))
    g = image_transform(4, train=False)(Image.new("L", (8, 8), 0))
    assert torch.allclose(g, -torch.ones(3, 4, 4))


def test_skipped_images_are_summarised_when_training_ends(coco_root, caplog):
    """A real trainer.fit over COCO with 2 unreadable images: one summary line at the end naming them."""
    import logging

    import lightning as L

    from zoo.data.modules import CocoDataModule

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, _):
            return (batch["image"].mean() - self.w).pow(2)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = CocoDataModule(root=str(coco_root), resolution=8, batch_size=4, num_workers=0)
    trainer = L.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        accelerator="cpu",
    )
    with caplog.at_level(logging.WARNING):
        trainer.fit(Tiny(), datamodule=dm)
    msgs = [r.getMessage() for r in caplog.records if r.name == "zoo.data.datamodule"]
    assert len(msgs) == 1, msgs  # two epochs, each bad file met twice: still one line, each file once
    assert "skipped 2 unreadable images in the train split" in msgs[0]
    assert all(dm.dataset("train").items[i][0] in msgs[0] for i in BAD)


def test_exif_orientation_is_applied():
    """A portrait phone photo is stored landscape with EXIF orientation 6; it was loaded (and trained on) sideways."""
    from zoo.data.transforms import load_rgb

    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (20, 0, 40, 20))  # stored: left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: top red, bottom blue
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    buf.seek(0)
    upright = load_rgb(buf)
    assert upright.size == (20, 40)
    top, bottom = upright.getpixel((10, 5)), upright.getpixel((10, 35))
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]
    broken = Image.Exif()
    broken[0x0112] = 99  # an orientation that does not exist: the pixels as stored, not a skipped image
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=broken.tobytes())
    buf.seek(0)
    assert load_rgb(buf).size == (40, 20)


def test_features_and_synthetic_captions_follow_the_served_image(coco_root):
    """An unreadable image is replaced by the next readable one; its per-index rows (zoo-tokenize / zoo-embed
    features, zoo-recaption captions) were looked up by the *requested* index: e.g. a file that became unreadable
    after zoo-tokenize served image k+1 with image k's codes. They now follow the served index."""
    from zoo.data.datamodule import FeatureAttached, SyntheticCaptioned

    ds = CocoCaptions(str(coco_root), split="val", resolution=8)  # val = even ordinals: index 1 is the corrupt 2
    n = len(ds)
    rows = {"image_tokens": torch.arange(n).view(n, 1, 1)}  # row k belongs to item k
    synthetic = SyntheticCaptioned(ds, {"syn": [f"syn {k}" for k in range(n)]}, {"syn": 1.0})
    for i in range(n):
        sample = FeatureAttached(synthetic, rows)[i]
        assert int(sample["image_tokens"]) == sample["index"] and sample["caption"] == f"syn {sample['index']}"
    assert FeatureAttached(ds, rows)[1]["index"] == 2


def test_a_blend_of_synthetic_and_coco_captions_batches(coco_root, tmp_path):
    """data=coco with data.synthetic_captions and a blend naming alt (DALL·E 3's {synthetic: 0.95, alt: 0.05}): only
    synthetic samples had a caption_style key, and the collate (the first sample's keys) raised KeyError
    'caption_style' at the first batch mixing both. Every sample now says its style, COCO's own being alt."""
    from zoo.data.modules import CocoDataModule

    path = tmp_path / "syn.pt"
    torch.save({"captions": [f"syn {k}" for k in range(N_IMAGES)], "meta": {}}, path)
    dm = CocoDataModule(
        root=str(coco_root),
        resolution=8,
        batch_size=N_IMAGES,
        synthetic_captions={"synthetic_descriptive": str(path)},
        caption_mix={"synthetic_descriptive": 0.5, "alt": 0.5},
    )
    dm.setup("fit")
    (batch,) = list(dm.train_dataloader())
    assert set(batch["caption_style"]) == {"synthetic_descriptive", "alt"}  # a mixed batch
    for caption, style in zip(batch["caption"], batch["caption_style"], strict=True):
        assert caption.startswith("syn ") == (style == "synthetic_descriptive")


@pytest.mark.parametrize("workers", [0, 2])
def test_caption_draws_depend_on_epoch_not_on_process_history(coco_root, workers):
    """Train captions were drawn from a per-process counter: a run resumed at epoch 2 (fresh dataset, counters at 0)
    replayed epoch 0's (image, caption) pairs instead of the uninterrupted run's epoch 2."""
    from zoo.data.loader import ResumableDataLoader

    def loader():
        ds = CocoCaptions(str(coco_root), split="train", resolution=8, seed=3)
        kw = dict(num_workers=workers, persistent_workers=workers > 0, collate_fn=collate_samples)
        return ResumableDataLoader(ds, batch_size=2, shuffle=True, seed=0, **kw)

    def epoch(dl, e):
        dl.sampler.set_epoch(e)
        return [c for b in dl for c in b["caption"]]

    uninterrupted = loader()
    captions = [epoch(uninterrupted, e) for e in range(3)]
    assert epoch(loader(), 2) == captions[2]
    assert sorted(captions[0]) != sorted(captions[2])  # still a new draw every epoch
    assert all(_image_number(c) in range(N_IMAGES) for c in captions[2])


def test_embed_and_tokenize_record_the_rows_a_bad_file_left_to_its_neighbour(coco_root, tmp_path, caplog):
    """zoo-embed / zoo-tokenize write row r from the sample requested at r; for an unreadable file that sample is the
    next readable image, so row r holds its neighbour's features. Harmless while the file stays bad (the DataModule
    serves the neighbour's own row), wrong once the file is repaired; nothing said so. The rows are now listed in the
    file's meta['substituted_rows'] and in one warning naming the command to run again."""
    import logging

    from zoo.embed import embed_dataset
    from zoo.tokenize import tokenize_dataset

    ds = CocoCaptions(str(coco_root), "train", resolution=8)  # BAD: 2 and 5 serve 3 and 6

    class Tok:
        codebook_size = 4

        def encode(self, x):
            return (x[:, 0, ::4, ::4] > 0).long()

    class Scorer:
        image_size = 8

        def tokenize(self, captions):
            return torch.zeros(len(captions), 3, dtype=torch.long)

        def encode_image(self, x):
            return x.flatten(1)[:, :4]

        def encode_text(self, captions):
            return torch.ones(len(captions), 4)

    with caplog.at_level(logging.WARNING):
        tok = torch.load(tokenize_dataset(Tok(), ds, tmp_path / "t.pt", batch_size=3), weights_only=True)
        emb = torch.load(
            embed_dataset(Scorer(), ds, tmp_path / "e.pt", batch_size=3, progress=False), weights_only=True
        )
    assert tok["meta"]["substituted_rows"] == sorted(BAD) == emb["meta"]["substituted_rows"]
    torch.testing.assert_close(tok["image_tokens"][2], tok["image_tokens"][3])  # the neighbour's codes
    msgs = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "substituted_rows" in r.getMessage()
    ]
    assert len(msgs) == 2 and "zoo-tokenize: 2 rows hold the image tokens" in msgs[0] and "rows 2, 5" in msgs[0]
    assert "zoo-embed: 2 rows hold the CLIP embeddings" in msgs[1] and "run zoo-embed again" in msgs[1]


def test_a_feature_file_knows_its_annotation_file_by_content_not_size(coco_root, tmp_path, caplog):
    """Feature files recorded the COCO annotation file by its size only: one edited in place to the same size (two
    images' file names swapped, a caption reworded) passed, and every row was served for another image. The record
    now holds its blake2b digest too (no path: a moved copy still matches); a file written before the digest was
    recorded is still served, with a warning saying what was not checked and the fix."""
    import logging
    import shutil

    from zoo.checkpoint import atomic_torch_save
    from zoo.data.modules import CocoDataModule
    from zoo.errors import ConfigError

    root = tmp_path / "coco"
    shutil.copytree(coco_root, root)
    made = CocoDataModule(root=str(root), resolution=8).features_identity("val")

    def features(meta_data, name):
        n = len(CocoCaptions(str(root), split="val", resolution=8))
        rows = {"clip_image_emb": torch.randn(n, 4), "meta": {"split": "val", "data": meta_data}}
        return str(atomic_torch_save(rows, tmp_path / name))

    path = features(made, "f.pt")
    moved = tmp_path / "elsewhere"
    shutil.copytree(root, moved)
    assert "clip_image_emb" in CocoDataModule(root=str(moved), resolution=8, features={"val": path}).dataset("val")[0]

    ann = root / "annotations" / "captions_val2014.json"
    text = ann.read_text()
    edited = text.replace("val image 0 caption", "val image 9 caption")
    assert edited != text and len(edited) == len(text)
    ann.write_text(edited)
    with pytest.raises(
        ConfigError, match=r"other images than this run's val split \(annotations_blake2b: .*fix: re-run"
    ):
        CocoDataModule(root=str(root), resolution=8, features={"val": path}).dataset("val")

    # written before the digest: compared on its size, served, and told how to get the full check
    old = {
        "images": {k: v for k, v in made["images"].items() if k != "annotations_blake2b"},
        "captions": made["captions"],
    }
    with caplog.at_level(logging.WARNING, logger="zoo.data.datamodule"):
        ds = CocoDataModule(root=str(root), resolution=8, features={"val": features(old, "old.pt")}).dataset("val")
    assert "clip_image_emb" in ds[0]
    assert "written before the annotation file's content entered its record" in caplog.text
    assert "re-run the zoo-embed / zoo-tokenize command" in caplog.text


def test_a_val_feature_file_keeps_its_text_features_under_another_seed(coco_root, tmp_path):
    """val / test serve every image's first caption whatever data.seed, but the record held the seed for every split:
    a zoo-embed val file made under seed 0 lost its text embeddings in a run with seed 1 (a seed sweep), and a model
    that needs them then stopped. Only the train split's record holds it now; files written before are read so too."""
    from zoo.checkpoint import atomic_torch_save
    from zoo.data.modules import CocoDataModule

    def file_for(split, meta_data, name):
        n = len(CocoCaptions(str(coco_root), split=split, resolution=8))
        rows = {"clip_image_emb": torch.randn(n, 4), "clip_text_emb": torch.randn(n, 4)}
        return str(atomic_torch_save({**rows, "meta": {"split": split, "data": meta_data}}, tmp_path / name))

    made = CocoDataModule(root=str(coco_root), resolution=8, seed=0)
    old = {**made.features_identity("val"), "captions": {"caption_seed": 0}}  # as written before
    for data in (made.features_identity("val"), old):
        path = file_for("val", data, "val.pt")
        served = CocoDataModule(root=str(coco_root), resolution=8, seed=1, features={"val": path}).dataset("val")[0]
        assert "clip_text_emb" in served
    # the train split draws its captions from data.seed: another seed serves other captions than the file describes
    path = file_for("train", made.features_identity("train"), "train.pt")
    served = CocoDataModule(root=str(coco_root), resolution=8, seed=1, features={"train": path}).dataset("train")[0]
    assert "clip_image_emb" in served and "clip_text_emb" not in served


def test_the_skip_warning_names_the_files_by_the_dataset_s_image_kind(coco_root, caplog):
    """The skip warning said "MS-COCO image" in CocoCaptions' own words, so data=folder's FolderCaptions copied the
    whole _mark_bad to say "image". The name is a class attribute now: COCO's and the folder's warnings come from one
    method, and a subclass over other files names them by setting it."""
    import logging

    from zoo.data.folder import FolderCaptions

    class Photos(CocoCaptions):
        image_kind = "holiday photo"

    assert "_mark_bad" not in vars(FolderCaptions) and FolderCaptions.image_kind == "image"
    for cls, said in ((CocoCaptions, "MS-COCO image"), (Photos, "holiday photo")):
        ds = cls(str(coco_root), "train", resolution=8)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="zoo.data.coco"):
            [ds[i] for i in range(len(ds))]
        lines = [r.getMessage() for r in caplog.records if "skipping unreadable" in r.getMessage()]
        assert len(lines) == len(BAD) and all(m.startswith(f"skipping unreadable {said} ") for m in lines)
