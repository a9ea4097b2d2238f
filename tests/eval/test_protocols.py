"""zoo.pipelines.base's Generator / CandidateGenerator interfaces and their adapter; eval's shapes and MS-COCO
protocols (seeded caption draws, real sets, resizing), the folder and real_blurred generators. CPU, no network."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from eval.coco_protocol import CocoProtocol
from eval.eval_set import ImageBank, resize_for_eval
from eval.generators import (
    FolderGenerator,
    RealBlurredGenerator,
    generate_images,
    save_folder,
)
from eval.shapes_protocol import ShapesProtocol
from zoo.data.degradations import gaussian_blur
from zoo.errors import ConfigError
from zoo.pipelines.base import (
    CandidateGenerator,
    Generator,
    RepeatedCandidates,
    as_candidate_generator,
    check_generated,
)


class SeededStub:
    """generate(): constant images whose value is a function of (seed attribute, caption, torch RNG draw)."""

    def __init__(self):
        self.seed = 123
        self.calls = []

    def generate(self, captions):
        self.calls.append(self.seed)
        noise = torch.rand(len(captions))  # depends on the torch seed the adapter sets
        vals = torch.tensor([(hash((self.seed, c)) % 1000) / 1000 for c in captions]) * 0.5 + noise * 0.1
        return (vals.view(-1, 1, 1, 1) * 2 - 1).expand(-1, 3, 4, 4).clone()


def test_adapter_candidates_are_nested_and_leave_rng_and_seed_alone():
    caps = ["a", "b", "c"]
    gen = SeededStub()
    assert isinstance(gen, Generator) and not isinstance(gen, CandidateGenerator)
    cand = as_candidate_generator(gen, seed=10)
    assert isinstance(cand, RepeatedCandidates) and isinstance(cand, CandidateGenerator)
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    four = cand.candidates(caps, 4)
    after = torch.rand(1)
    assert torch.equal(before, after)  # the caller's RNG stream is untouched (fork_rng)
    assert four.shape == (3, 4, 3, 4, 4)
    assert gen.seed == 123 and gen.calls == [10, 11, 12, 13]  # seed attribute set per candidate, then restored
    two = cand.candidates(caps, 2)
    torch.testing.assert_close(two, four[:, :2], rtol=0, atol=0)  # candidate i does not depend on n
    assert not torch.equal(four[:, 0], four[:, 1])

    class Own:
        def generate(self, captions):
            raise AssertionError

        def candidates(self, captions, n):
            return torch.zeros(len(captions), n, 3, 2, 2)

    own = Own()
    assert as_candidate_generator(own) is own


def test_generate_images_batches_and_validates():
    gen = SeededStub()
    bank = generate_images(gen, [str(i) for i in range(7)], batch_size=3, resolution=8, seed=10, progress=False)
    assert len(bank) == 7 and bank.tensor().shape == (7, 3, 8, 8)
    from zoo.pipelines.base import chunk_seed

    assert gen.calls == [chunk_seed(10, b) for b in range(3)]  # candidate 0, each batch under its own seed

    class Bad:
        def __init__(self, out):
            self.out = out

        def generate(self, captions):
            return self.out

    for out, match in [
        (torch.zeros(2, 3, 4, 4), "asked for 3"),
        (torch.full((3, 3, 4, 4), float("nan")), "NaN"),
        (torch.zeros(3, 1, 4, 4), "3 channels"),
        (torch.zeros(3, 3, 4, 4) + 5, r"\[-1, 1\]"),
    ]:
        with pytest.raises(ValueError, match=match):
            generate_images(Bad(out), ["a", "b", "c"], progress=False)
    with pytest.raises(ValueError, match="asked for 2"):
        check_generated(torch.zeros(3, 3, 4, 4), 2)


def test_resize_for_eval_is_antialiased():
    x = torch.ones(1, 3, 64, 64)
    x[..., ::2, :] = -1  # 1-pixel stripes: aliasing would keep them at half size
    y = resize_for_eval(x, 16)
    assert y.shape == (1, 3, 16, 16)
    assert y.abs().max() < 0.2  # low-passed to the mean (a plain bicubic/bilinear resize would alias to +-1)
    assert resize_for_eval(x, 64) is x
    wide = resize_for_eval(torch.zeros(2, 3, 32, 64), 16)  # shorter side to 16, centre crop
    assert wide.shape == (2, 3, 16, 16)


def test_image_bank_round_trip():
    x = torch.rand(5, 3, 8, 8) * 2 - 1
    bank = ImageBank.from_tensor(x, batch_size=2)
    assert len(bank) == 5 and [b.shape[0] for b in bank] == [2, 2, 1]
    assert (bank.tensor() - x).abs().max() <= 1 / 127.5 / 2 + 1e-6  # uint8 storage: half a grey level
    with pytest.raises(ValueError, match="size changed"):
        bank.add(torch.zeros(1, 3, 4, 4))


def test_shapes_protocol_matches_the_dataset():
    from zoo.data.shapes import ShapesDataset

    es = ShapesProtocol(n=6, split="val", resolution=32, seed=3).load()
    ds = ShapesDataset("val", size=6, resolution=32, seed=3)
    assert es.captions == [ds[i]["caption"] for i in range(6)]
    assert es.attributes == [ds[i]["attributes"] for i in range(6)]
    real = torch.stack([ds[i]["image"] for i in range(6)])
    torch.testing.assert_close(es.real.tensor(), real, rtol=0, atol=1e-6)  # rendered uint8: exact round trip
    torch.testing.assert_close(es.real_images([4, 1]), real[[4, 1]], rtol=0, atol=1e-6)
    again = ShapesProtocol(n=6, split="val", resolution=32, seed=3).load()
    assert again.captions == es.captions and again.protocol == es.protocol
    other = ShapesProtocol(n=6, split="val", resolution=32, seed=4).load()
    assert other.captions != es.captions and other.protocol != es.protocol
    big = ShapesProtocol(n=2, resolution=32, eval_resolution=64).load()
    assert big.resolution == 64 and big.real.tensor().shape == (2, 3, 64, 64)
    key = es.stats_key("ex", blur_radius=2)
    assert (key.dataset, key.n, key.blur_radius, key.resolution) == ("shapes", 6, 2.0, 32)
    with pytest.raises(ConfigError, match="protocol.n"):
        ShapesProtocol(n=1)
    # refused when the protocol is built (before the generator), named as zoo-eval's option, not data.resolution
    with pytest.raises(ConfigError, match=r"protocol.resolution=20.*fix: protocol.resolution=32"):
        ShapesProtocol(n=4, resolution=20)


def test_shapes_protocol_object_order():
    """protocol.object_order=shuffled: the same scenes (real images, attributes: what the judge checks) with captions
    that list the objects in another order; its own key, so no cache of raster statistics or captions is reused."""
    raster = ShapesProtocol(n=40, split="val", resolution=32).load()
    shuffled = ShapesProtocol(n=40, split="val", resolution=32, object_order="shuffled").load()
    assert shuffled.attributes == raster.attributes
    torch.testing.assert_close(shuffled.real.tensor(), raster.real.tensor(), rtol=0, atol=0)
    differ = [a != b for a, b in zip(raster.captions, shuffled.captions)]
    multi = [len(a["objects"]) > 1 for a in raster.attributes]
    assert not any(d and not m for d, m in zip(differ, multi)) and sum(differ) >= 5  # only multi-object captions
    assert shuffled.protocol == raster.protocol + ";order=shuffled"
    with pytest.raises(ConfigError, match="object_order.*shuffled"):
        ShapesProtocol(n=4, object_order="reversed")


def _fake_coco(root, n_images=5):
    from PIL import Image

    (root / "annotations").mkdir(parents=True)
    (root / "val2014").mkdir()
    images, anns = [], []
    rng = np.random.default_rng(0)
    for i in range(n_images):
        name = f"COCO_val2014_{i:012d}.jpg"
        Image.fromarray(rng.integers(0, 255, (40 + 10 * i, 60, 3), dtype=np.uint8)).save(root / "val2014" / name)
        images.append({"id": 100 + i, "file_name": name})
        for k in range(5):
            anns.append({"id": 1000 + 10 * i + k, "image_id": 100 + i, "caption": f"image {i} caption {k}"})
    (root / "annotations" / "captions_val2014.json").write_text(json.dumps({"images": images, "annotations": anns}))


def test_coco_protocol_seeded_one_caption_per_image(tmp_path):
    _fake_coco(tmp_path)
    proto = CocoProtocol(str(tmp_path), n=3, seed=0, eval_resolution=64)
    es = proto.load()
    assert len(es) == 3 and es.resolution == 64 and es.name == "coco2014"
    img_ids = [int(c.split()[1]) for c in es.captions]
    assert len(set(img_ids)) == 3  # one caption per image, no image twice
    files, caps = proto.sample()
    assert [int(f[-8:-4]) for f in files] == img_ids  # caption i belongs to real image i
    assert CocoProtocol(str(tmp_path), n=3, seed=0).sample() == (files, caps)  # fixed seed
    seeds = {tuple(CocoProtocol(str(tmp_path), n=3, seed=s).sample()[1]) for s in range(6)}
    assert len(seeds) > 1
    batches = list(es.real)
    assert sum(len(b) for b in batches) == 3 and batches[0].shape[1:] == (3, 64, 64)
    assert CocoProtocol(str(tmp_path), n=99).load().captions.__len__() == 5  # all of val when n exceeds it
    with pytest.raises(ConfigError, match="protocol.root"):
        CocoProtocol(str(tmp_path / "nowhere")).load()


def test_coco_protocol_refuses_fewer_than_two_images_before_generating(tmp_path):
    # protocol.n=1 generated its sample, then failed in the statistics ("need at least 2 samples"); n=0 failed with
    # "the image bank is empty", n=-1 with random.sample's "Sample larger than population or is negative"
    _fake_coco(tmp_path, n_images=1)
    for n in (1, 0, -1):
        with pytest.raises(ConfigError, match=f"protocol.n must be >= 2.*got {n}"):
            CocoProtocol(str(tmp_path), n=n)
    with pytest.raises(ConfigError, match="found 1 readable image.*statistics need two"):
        CocoProtocol(str(tmp_path), n=2).load()  # a val set of one image


@pytest.mark.parametrize(
    "text, says",
    [
        ('{"images": [{"id": 1, "file_name": "a.jpg"}], "annot', "JSONDecodeError"),  # a truncated download
        ('{"images": [], "categories": []}', "KeyError: 'annotations'"),  # instances_val2014.json under this name
        ('{"images": [{"id": 1}], "annotations": [{"id": 1, "image_id": 1}]}', "KeyError: 'caption'"),
    ],
)
def test_coco_protocol_names_a_broken_captions_file(tmp_path, text, says):
    # was a bare JSONDecodeError / KeyError naming neither the file nor the fix
    _fake_coco(tmp_path)
    (tmp_path / "annotations" / "captions_val2014.json").write_text(text)
    with pytest.raises(ConfigError, match=f"captions_val2014.json is not an MS-COCO captions file.*{says}.*fix:"):
        CocoProtocol(str(tmp_path), n=2).load()


def test_coco_protocol_replaces_unreadable_files_before_generating(tmp_path, caplog):
    # one missing or non-image file among the drawn ones ended zoo-eval when the real images were read, after
    # every sample had been generated; now it is replaced by another readable val image (with its own caption)
    _fake_coco(tmp_path, n_images=8)
    clean_files, clean_caps = CocoProtocol(str(tmp_path), n=4, seed=0).sample()
    (tmp_path / "val2014" / clean_files[1]).write_bytes(b"\xff\xd8 not a jpeg")
    (tmp_path / "val2014" / clean_files[3]).unlink()
    proto = CocoProtocol(str(tmp_path), n=4, seed=0, eval_resolution=32)
    with caplog.at_level("WARNING", logger="zoo.eval"):
        es = proto.load()
    files, caps = proto.sample()
    assert len(es) == 4 and [s for s, _ in proto.skipped] == [clean_files[1], clean_files[3]]
    assert (files[0], files[2]) == (clean_files[0], clean_files[2]) and (caps[0], caps[2]) == (
        clean_caps[0],
        clean_caps[2],
    )
    assert len(set(files)) == 4 and not set(files) & {clean_files[1], clean_files[3]}
    for f, c in zip(files, caps):  # a replacement's caption is one of its own image's
        assert int(f[-8:-4]) == int(c.split()[1])
    assert "2 unreadable image file(s)" in caplog.text and clean_files[1] in caplog.text
    assert es.describe()["skipped_unreadable"] == [clean_files[1], clean_files[3]]
    assert sum(len(b) for b in es.real) == 4
    # nothing left to draw from: the set is smaller, not broken
    assert len(CocoProtocol(str(tmp_path), n=8, seed=0).load()) == 6


def test_coco_real_stats_key_follows_the_image_files_not_only_their_names(tmp_path):
    # two COCO roots with the same annotation file (a re-encoded or filtered copy, a second download) shared one
    # real-stats cache entry: FID against the second silently used the first's statistics
    import shutil

    from PIL import Image

    _fake_coco(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # copy2: same bytes, same mtimes
    shutil.copytree(tmp_path / "a", tmp_path / "c")

    def load(root):
        return CocoProtocol(str(root), n=3, seed=0, eval_resolution=32).load()

    def key(root):
        return load(root).stats_key("inception@x").filename()

    files, _ = CocoProtocol(str(tmp_path / "a"), n=3, seed=0).sample()
    assert key(tmp_path / "a") == key(tmp_path / "a") == key(tmp_path / "b")  # stable; a faithful copy shares it
    f = tmp_path / "c" / "val2014" / files[0]
    Image.open(f).convert("RGB").save(f, quality=20)  # a re-encoded copy of one drawn image
    assert key(tmp_path / "c") != key(tmp_path / "a")
    # the reported protocol (the leaderboard's "comparable" test) still names the drawn files only
    assert load(tmp_path / "c").protocol == load(tmp_path / "a").protocol


def test_shapes_real_stats_key_is_unchanged():
    # the data digest that MS-COCO keys carry is not added to the shapes world's (its protocol string determines
    # the scenes): the real statistics already cached for shapes stay valid
    key = ShapesProtocol(n=4).load().stats_key("inception@x", 2)
    assert key.filename() == "shapes-val-32px-blur2-a45ba408febf21e7.pt"


def test_image_files_skip_a_file_that_fails_to_decode(tmp_path, caplog):
    from PIL import Image

    from eval.eval_set import ImageFiles

    good = [tmp_path / f"{i}.png" for i in range(3)]
    for i, f in enumerate(good):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(f)
    truncated = tmp_path / "t.png"
    truncated.write_bytes(good[0].read_bytes()[:40])  # a PNG header, no image data
    files = ImageFiles([good[0], truncated, good[1], good[2]], resolution=8, batch_size=2)
    with caplog.at_level("WARNING", logger="zoo.eval"):
        batches = list(files)
    assert [len(b) for b in batches] == [2, 1] and files.skipped == [str(truncated)]
    assert "skipping unreadable image" in caplog.text


def test_folder_generator_round_trip(tmp_path):
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    caps = ["a", "b", "a", "c"]
    save_folder(x, caps, tmp_path / "s")
    gen = FolderGenerator(tmp_path / "s")
    out = gen.generate(["c", "a", "b"])
    exp = torch.stack([x[3], x[0], x[1]])
    assert (out - exp).abs().max() <= 1 / 127.5 / 2 + 1e-6
    cand = as_candidate_generator(gen).candidates(["a"], 3)  # the caption's images in turn, cycling
    assert (cand[0, 1] - x[2]).abs().max() < 0.01 and (cand[0, 2] - x[0]).abs().max() < 0.01
    with pytest.raises(ValueError, match="no image"):
        gen.generate(["zzz"])
    txt = tmp_path / "t"
    save_folder(x[:2], ["p", "q"], txt)
    (txt / "captions.json").unlink()
    (txt / "captions.txt").write_text("p\nq\n")
    assert FolderGenerator(txt).generate(["q"]).shape == (1, 3, 8, 8)
    (txt / "captions.txt").write_text("p\n")
    with pytest.raises(ConfigError, match="1 captions but"):
        FolderGenerator(txt)
    with pytest.raises(ConfigError, match="generator.path"):
        FolderGenerator(tmp_path / "missing")


def test_real_blurred_generator():
    es = ShapesProtocol(n=8, resolution=32).load()
    real = es.real.tensor()
    sharp = RealBlurredGenerator(radius=0).bind(es)
    torch.testing.assert_close(sharp.generate(es.captions[2:5]), real[2:5])
    blurry = RealBlurredGenerator(radius=2).bind(es)
    torch.testing.assert_close(blurry.generate(es.captions[:3]), gaussian_blur(real[:3], 2))
    swapped = RealBlurredGenerator(radius=0, mismatch=1.0).bind(es).generate(es.captions)
    assert all(not torch.equal(swapped[i], real[i]) for i in range(8))
    half = RealBlurredGenerator(radius=0, mismatch=0.5, seed=1).bind(es)
    c = as_candidate_generator(half, seed=0).candidates(es.captions, 4)
    assert any(not torch.equal(c[i, 0], c[i, j]) for i in range(8) for j in range(1, 4))  # candidates differ
    with pytest.raises(RuntimeError, match="bind"):
        RealBlurredGenerator().generate(["x"])
    with pytest.raises(ConfigError, match="mismatch"):
        RealBlurredGenerator(mismatch=2)


def test_folder_generator_names_an_unreadable_image(tmp_path):
    """zoo-eval generator=folder with a corrupt file: a ConfigError naming the file, when the folder is opened for a
    non-image (it was PIL's UnidentifiedImageError traceback mid-run) and when pixels are read for a truncated one."""
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    save_folder(x, ["a", "b", "c"], tmp_path / "s")
    files = sorted((tmp_path / "s").glob("*.png"))
    good = files[2].read_bytes()
    files[1].write_bytes(b"not an image")
    with pytest.raises(ConfigError, match=f"unreadable image {files[1]}"):
        FolderGenerator(tmp_path / "s")
    files[1].write_bytes(good)
    files[2].write_bytes(good[: len(good) // 2])  # a valid header, truncated pixel data
    gen = FolderGenerator(tmp_path / "s")
    assert gen.generate(["a"]).shape == (1, 3, 8, 8)
    with pytest.raises(ConfigError, match=f"unreadable image {files[2]}"):
        gen.generate(["c"])


def test_folder_generator_reads_16_bit_grayscale_at_its_brightness(tmp_path):
    """A 16-bit grayscale PNG (PIL mode I;16) came out almost all white: PIL's convert("RGB") clips every value to 255
    instead of scaling, so zoo-eval scored white squares for a folder of mid-grey samples. It now reads as the same
    grey an 8-bit copy of the image gives (within a rounding step)."""
    from PIL import Image

    ramp = np.linspace(0, 65535, 8 * 8).reshape(8, 8).astype(np.uint16)
    (tmp_path / "s").mkdir()
    Image.fromarray(ramp).save(tmp_path / "s" / "g16.png")
    Image.fromarray((ramp // 257).astype(np.uint8)).save(tmp_path / "s" / "g8.png")
    (tmp_path / "s" / "captions.json").write_text('{"g16.png": "sixteen", "g8.png": "eight"}')
    assert Image.open(tmp_path / "s" / "g16.png").mode == "I;16"
    gen = FolderGenerator(tmp_path / "s")
    sixteen, eight = gen.generate(["sixteen", "eight"])
    assert (sixteen - eight).abs().max() <= 2 / 127.5 + 1e-6
    assert abs(float(sixteen.mean())) < 0.05  # a mid-grey ramp, not white (+1)


@pytest.mark.parametrize(
    "index, says",
    [
        ('{"000000.png": "a red', "is not valid JSON"),  # truncated
        ("", "is not valid JSON"),  # zero bytes
        ('[{"file": "000000.png"}]', "is not a captions index"),  # an entry without its caption
        ("[1, 2]", "is not a captions index"),
    ],
)
def test_folder_generator_names_a_garbled_captions_json(tmp_path, index, says):
    """A truncated, empty or hand-edited captions.json was a JSONDecodeError / KeyError / TypeError traceback that did
    not name the file; now a ConfigError naming it and the layout to write."""
    save_folder(torch.zeros(1, 3, 8, 8), ["a red circle"], tmp_path / "s")
    (tmp_path / "s" / "captions.json").write_text(index)
    with pytest.raises(ConfigError, match=f"{tmp_path / 's' / 'captions.json'} {says}.*fix: rewrite it as"):
        FolderGenerator(tmp_path / "s")


def test_folder_generator_refuses_mixed_sizes_when_opened(tmp_path):
    """Images of two sizes without generator.resolution: a ValueError traceback when a batch stacked them, mid-run
    (after the judge and the metrics were built). Now a ConfigError when the folder is opened, naming two files and
    their sizes; generator.resolution reads them all at one size."""
    save_folder(torch.zeros(1, 3, 8, 8), ["a"], tmp_path / "s")
    save_folder(torch.zeros(1, 3, 12, 12), ["b"], tmp_path / "s", start=1)
    with pytest.raises(
        ConfigError, match="different sizes, e.g. 000000.png 8x8 and 000001.png 12x12.*generator.resolution"
    ):
        FolderGenerator(tmp_path / "s")
    assert FolderGenerator(tmp_path / "s", resolution=8).generate(["a", "b"]).shape == (2, 3, 8, 8)
