"""The built-in shapes world (zoo/data/shapes.py): determinism, independent splits, captions <-> attributes <->
pixels, caption mixes, argument checks, image format at every resolution, anti-aliasing."""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest
import torch

from zoo.data import shapes as world
from zoo.data.collate import collate_samples
from zoo.data.shapes import (
    BACKGROUNDS,
    CAPTION_STYLES,
    COLOURS,
    POSITIONS,
    RESOLUTIONS,
    SHAPES,
    SIZES,
    ShapesDataset,
    captions_for,
    main_subject,
    render_scene,
    sample_attributes,
)

NUMBERS = {1: "one", 2: "two", 3: "three", 9: "nine"}


def _pixels(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) float in 0..255."""
    return ((image + 1) * 127.5).permute(1, 2, 0).numpy()


def _cell_centre(res: int, row: int, col: int) -> tuple[int, int]:
    cell = res / 3
    return int((row + 0.5) * cell), int((col + 0.5) * cell)


# ------------------------------------------------------------------------------------------------ vocabulary
def test_vocabulary():
    assert {"circle", "square", "triangle", "star", "heart", "cross"} <= set(SHAPES)
    assert len(COLOURS) >= 8 and len(BACKGROUNDS) >= 3 and set(SIZES) == {"small", "large"}
    assert list(POSITIONS) == [f"{r} {c}" for r in ("top", "middle", "bottom") for c in ("left", "center", "right")]
    # colours clearly distinguishable from each other and from every background they can be drawn on
    rgb = {k: np.array(v, float) for k, v in COLOURS.items()}
    for a, b in itertools.combinations(rgb, 2):
        assert np.linalg.norm(rgb[a] - rgb[b]) > 75, (a, b)
    for bg, bg_rgb in BACKGROUNDS.items():
        for name, c in rgb.items():
            if name != bg:
                assert np.linalg.norm(c - np.array(bg_rgb, float)) > 75, (name, bg)


# ------------------------------------------------------------------------------------------------ determinism
def test_same_seed_split_index_gives_the_same_sample():
    a, b = ShapesDataset("train", 60, seed=3), ShapesDataset("train", 60, seed=3)
    b[59], b[10]  # access order must not matter
    for i in (0, 10, 59):
        x, y = a[i], b[i]
        assert torch.equal(x["image"], y["image"])
        assert x["captions"] == y["captions"] and x["attributes"] == y["attributes"] and x["index"] == i


def test_different_index_or_seed_gives_different_samples():
    ds = ShapesDataset("train", 50, seed=3)
    images = [ds[i]["image"] for i in range(50)]
    same = sum(torch.equal(images[i], images[j]) for i, j in itertools.combinations(range(50), 2))
    assert same <= 1  # a repeat of a one-object scene is possible, but rare
    other = ShapesDataset("train", 50, seed=4)
    assert sum(torch.equal(images[i], other[i]["image"]) for i in range(50)) <= 1


def test_splits_are_independent_streams():
    n = 200
    tr, va, te = (ShapesDataset(s, n, seed=0) for s in ("train", "val", "test"))
    attrs = {name: [d.scene(i)[0] for i in range(n)] for name, d in (("train", tr), ("val", va), ("test", te))}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        # index-aligned samples differ (the split is in the seed material) ...
        assert sum(x == y for x, y in zip(attrs[a], attrs[b])) <= 2
        # ... and overlap between the sets is only chance repeats of simple scenes
        sa, sb = {repr(x) for x in attrs[a]}, {repr(x) for x in attrs[b]}
        assert len(sa & sb) < 10
    train_imgs = {tr[i]["image"].numpy().tobytes() for i in range(n)}
    assert sum(va[i]["image"].numpy().tobytes() in train_imgs for i in range(n)) < 10


# ------------------------------------------------------------------------------------------------ captions
@pytest.mark.parametrize("max_objects", [3, 9])
def test_captions_agree_with_attributes(max_objects):
    ds = ShapesDataset("val", 150, seed=1, max_objects=max_objects)
    for i in range(len(ds)):
        s = ds[i]
        attrs, caps = s["attributes"], s["captions"]
        objs = attrs["objects"]
        assert set(caps) == set(CAPTION_STYLES) and s["caption"] == caps["descriptive"] == caps[s["caption_style"]]
        d = caps["descriptive"]
        n = len(objs)
        assert 1 <= n <= max_objects and len({o["position"] for o in objs}) == n  # one object per cell
        assert f"{world.NUMBER_WORDS[n]} object" in d and attrs["background"] + " background" in d
        for o in objs:
            assert o["position"] == POSITIONS[3 * o["row"] + o["col"]]
            assert o["colour"] != attrs["background"]
            for word in (o["colour"], o["shape"], o["size"], o["position"]):
                assert word in d, (word, d)
        # each object's colour and shape are named together ("red star"); objects are read in raster order
        assert all(f"{o['colour']} {o['shape']}" in d for o in objs)
        spots = [d.index(o["position"]) for o in objs]
        assert spots == sorted(spots)
        subject = main_subject(attrs)
        assert f"{subject['colour']} {subject['shape']}" in caps["short"]
        assert len(caps["short"].split()) <= 4 and caps["alt"]


def test_main_subject_is_first_large_else_first_object():
    small = {"shape": "star", "colour": "red", "size": "small", "position": "top left", "row": 0, "col": 0}
    large = {"shape": "heart", "colour": "blue", "size": "large", "position": "bottom right", "row": 2, "col": 2}
    assert main_subject({"background": "gray", "objects": [small, large]}) is large
    assert main_subject({"background": "gray", "objects": [small, dict(small, row=1, position="middle left")]}) is small


def test_descriptive_count_word_and_single_object():
    attrs = {
        "background": "black",
        "objects": [{"shape": "star", "colour": "red", "size": "large", "position": "top left", "row": 0, "col": 0}],
    }
    caps = captions_for(attrs, np.random.default_rng(0))
    assert "one object" in caps["descriptive"] and "objects" not in caps["descriptive"]
    assert "large red star" in caps["descriptive"] or "red star, large" in caps["descriptive"]
    assert "red star" in caps["short"]


def test_caption_templates_vary_deterministically():
    ds = ShapesDataset("train", 300)
    caps = [ds.scene(i)[1] for i in range(300)]
    openings = {c["descriptive"].split(":")[0].split(" background")[0].split()[0] for c in caps}
    assert len(openings) >= 3  # several phrasings of the descriptive caption
    assert len({c["short"].split()[0] for c in caps}) >= 3
    alts = [c["alt"] for c in caps]
    on_topic = sum(any(w in a for w in (*COLOURS, *SHAPES)) for a in alts)
    assert 0.2 * len(alts) < on_topic < 0.8 * len(alts)  # alt text: partly about the image, partly noise
    assert any(a.endswith((".png", ".JPG")) for a in alts)
    assert caps == [ds.scene(i)[1] for i in range(300)]


# ------------------------------------------------------------------------------------------------ caption mix
def test_caption_mix_proportions_and_independence():
    n = 2000
    mixed = ShapesDataset("train", n, caption_mix={"descriptive": 0.95, "alt": 0.05})
    plain = ShapesDataset("train", n)
    styles = []
    for i in range(n):
        attrs, caps, style = mixed.scene(i)
        styles.append(style)
        if i < 100:  # the mix changes which caption is used, never the scene or its captions
            assert (attrs, caps) == plain.scene(i)[:2]
    assert abs(styles.count("alt") / n - 0.05) < 0.02 and styles.count("short") == 0
    assert styles == [mixed.scene(i)[2] for i in range(n)]  # deterministic per index
    assert mixed[7]["caption"] == mixed[7]["captions"][mixed[7]["caption_style"]]

    # unnormalised proportions are normalised
    three = ShapesDataset("train", n, caption_mix={"alt": 1, "short": 1, "descriptive": 2})
    styles = [three.scene(i)[2] for i in range(n)]
    for style, want in (("alt", 0.25), ("short", 0.25), ("descriptive", 0.5)):
        assert abs(styles.count(style) / n - want) < 0.04, style


def _listed_positions(attributes: dict, caption: str) -> list[str]:
    """The scene's object positions in the order the caption names them (positions are unique per scene and none
    is a substring of another)."""
    positions = [o["position"] for o in attributes["objects"]]
    assert all(caption.count(p) == 1 for p in positions), caption
    return sorted(positions, key=caption.index)


def test_object_order_shuffled_permutes_only_the_listing():
    n = 1500
    raster, shuffled = ShapesDataset("train", n), ShapesDataset("train", n, object_order="shuffled")
    counts: dict[int, dict[tuple, int]] = {2: {}, 3: {}}
    for i in range(n):
        attrs, caps, style = raster.scene(i)
        attrs_s, caps_s, style_s = shuffled.scene(i)
        # the scene, the style and the other caption styles are untouched; raster captions list top left first
        assert (attrs_s, style_s, caps_s["short"], caps_s["alt"]) == (attrs, style, caps["short"], caps["alt"])
        raster_order = [o["position"] for o in attrs["objects"]]
        assert _listed_positions(attrs, caps["descriptive"]) == raster_order
        listed = _listed_positions(attrs, caps_s["descriptive"])
        k = len(raster_order)
        if k == 1:
            assert caps_s["descriptive"] == caps["descriptive"]
        else:  # every object still named with its own colour and shape (every template reads "{colour} {shape}")
            assert all(f"{o['colour']} {o['shape']}" in caps_s["descriptive"] for o in attrs["objects"])
            assert f"{world.NUMBER_WORDS[k]} objects" in caps_s["descriptive"]
            perm = tuple(raster_order.index(p) for p in listed)
            counts[k][perm] = counts[k].get(perm, 0) + 1
    # every order occurs about equally often (the permutation is uniform), the raster order included
    for k, perms in counts.items():
        total = sum(perms.values())
        assert len(perms) == (2 if k == 2 else 6) and total > 200, (k, perms)
        for perm, c in perms.items():
            assert abs(c / total - 1 / len(perms)) < 0.1, (k, perm, c, total)
    again = ShapesDataset("train", n, object_order="shuffled")  # deterministic per index, not per instance
    assert [again.scene(i)[1] for i in range(20)] == [shuffled.scene(i)[1] for i in range(20)]
    assert np.array_equal(shuffled[3]["image"].numpy(), raster[3]["image"].numpy())


def test_captions_for_order_must_be_a_permutation():
    attrs = sample_attributes(np.random.default_rng(1), max_objects=3, min_objects=3)
    caps = captions_for(attrs, np.random.default_rng(2), order=[2, 1, 0])
    assert _listed_positions(attrs, caps["descriptive"]) == [o["position"] for o in attrs["objects"]][::-1]
    for bad in ([0, 1], [0, 0, 1], [1, 2, 3]):
        with pytest.raises(ValueError, match="permutation"):
            captions_for(attrs, np.random.default_rng(2), order=bad)


def test_single_caption_style():
    for style in CAPTION_STYLES:
        s = ShapesDataset("test", 5, caption_style=style)[3]
        assert s["caption"] == s["captions"][style] and s["caption_style"] == style


# ------------------------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"caption_style": "poetic"}, "valid styles.*descriptive"),
        ({"caption_mix": {"verbose": 1.0}}, "valid styles.*descriptive"),
        ({"caption_mix": {"alt": -1.0, "descriptive": 2.0}}, ">= 0"),
        ({"caption_mix": {"alt": float("nan")}}, ">= 0"),
        ({"caption_mix": {"alt": 0.0, "short": 0}}, "sum"),
        ({"caption_mix": {}}, "non-empty"),
        ({"resolution": 8}, "resolution.*fix"),
        ({"resolution": 34}, "multiple of 16"),
        ({"resolution": 0}, "resolution"),
        ({"split": "dev"}, "split.*train"),
        ({"size": 0}, "size"),
        ({"min_objects": 3, "max_objects": 2}, "min_objects"),
        ({"max_objects": 10}, "max_objects"),
        ({"min_objects": 0}, "min_objects"),
        ({"object_order": "random"}, "object_order='random'.*shuffled"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ShapesDataset(**kwargs)


def test_index_out_of_range():
    ds = ShapesDataset("val", 3)
    with pytest.raises(IndexError):
        ds[3]
    assert len(ds) == 3


# ------------------------------------------------------------------------------------------------ pixels
@pytest.mark.parametrize("res", [*RESOLUTIONS, 48])
def test_image_format(res):
    ds = ShapesDataset("train", 3, resolution=res)
    for i in range(3):
        x = ds[i]["image"]
        assert x.shape == (3, res, res) and x.dtype == torch.float32 and x.is_contiguous()
        assert x.min() >= -1 and x.max() <= 1 and x.min() < x.max()
        # images are exact uint8 renders: render_scene(attributes) / 127.5 - 1
        raw = render_scene(ds[i]["attributes"], res)
        assert raw.dtype == np.uint8 and raw.shape == (res, res, 3)
        torch.testing.assert_close(x, torch.from_numpy(raw).permute(2, 0, 1).float() / 127.5 - 1)


@pytest.mark.parametrize("res", [32, 64])
def test_every_cell_centre_shows_its_object_or_the_background(res):
    ds = ShapesDataset("train", 150, resolution=res, seed=5)
    for i in range(len(ds)):
        s = ds[i]
        img = _pixels(s["image"])
        attrs = s["attributes"]
        occupied = {(o["row"], o["col"]): o for o in attrs["objects"]}
        for row, col in itertools.product(range(3), range(3)):
            y, x = _cell_centre(res, row, col)
            o = occupied.get((row, col))
            want = COLOURS[o["colour"]] if o else BACKGROUNDS[attrs["background"]]
            assert np.abs(img[y, x] - want).max() <= 3.0, (i, row, col, o)  # (thin small crosses: 99% cover)
        # the image corners belong to no object
        for y, x in ((0, 0), (0, res - 1), (res - 1, 0), (res - 1, res - 1)):
            assert np.abs(img[y, x] - BACKGROUNDS[attrs["background"]]).max() <= 1.0


def _coverage(s) -> float:
    """Fraction of the object's cell covered by its colour (single-object scenes), from the pixels."""
    img = _pixels(s["image"])
    o = s["attributes"]["objects"][0]
    bg, fg = np.array(BACKGROUNDS[s["attributes"]["background"]], float), np.array(COLOURS[o["colour"]], float)
    alpha = ((img - bg) @ (fg - bg)) / ((fg - bg) @ (fg - bg))  # projected blend weight per pixel
    return float(alpha.clip(0, 1).sum()) / (img.shape[0] / 3) ** 2


def test_sizes_are_readable_and_objects_stay_in_their_cell():
    ds = ShapesDataset("train", 400, resolution=32, seed=2, max_objects=1)
    cover = {(shape, size): [] for shape in SHAPES for size in SIZES}
    for i in range(len(ds)):
        s = ds[i]
        o = s["attributes"]["objects"][0]
        cover[(o["shape"], o["size"])].append(_coverage(s))
        img = _pixels(s["image"])
        bg = np.array(BACKGROUNDS[s["attributes"]["background"]], float)
        ys, xs = np.nonzero(np.abs(img - bg).max(axis=2) > 1)
        cell = 32 / 3
        assert ys.min() >= int(o["row"] * cell) and ys.max() < np.ceil((o["row"] + 1) * cell)
        assert xs.min() >= int(o["col"] * cell) and xs.max() < np.ceil((o["col"] + 1) * cell)
    for shape in SHAPES:
        small, large = np.mean(cover[(shape, "small")]), np.mean(cover[(shape, "large")])
        assert large > 2.2 * small, shape  # area ratio is (0.88 / 0.52)^2 ~ 2.9
        assert 0.25 < large < 0.8 and small > 0.08, (shape, small, large)


@pytest.mark.parametrize("res", RESOLUTIONS)
def test_edges_are_anti_aliased(res):
    ds = ShapesDataset("train", 20, resolution=res)
    for i in range(20):
        s = ds[i]
        img = s["image"].permute(1, 2, 0).reshape(-1, 3)
        assert len(torch.unique(img, dim=0)) > len(s["attributes"]["objects"]) + 1
    # a lone circle: many pixels strictly between the object and background colours
    attrs = {
        "background": "black",
        "objects": [
            {"shape": "circle", "colour": "white", "size": "large", "position": "middle center", "row": 1, "col": 1}
        ],
    }
    grey = render_scene(attrs, res)[..., 0].astype(int)
    partial = ((grey > BACKGROUNDS["black"][0] + 2) & (grey < COLOURS["white"][0] - 2)).sum()
    assert partial >= res // 4 and len(np.unique(grey)) >= 6


def test_shapes_differ_from_each_other():
    def mask(shape: str, size: str = "large") -> np.ndarray:
        attrs = {
            "background": "black",
            "objects": [
                {"shape": shape, "colour": "white", "size": size, "position": "middle center", "row": 1, "col": 1}
            ],
        }
        return render_scene(attrs, 32)[..., 0].astype(float) / 255

    for size in SIZES:
        masks = {shape: mask(shape, size) for shape in SHAPES}
        for a, b in itertools.combinations(SHAPES, 2):
            assert np.abs(masks[a] - masks[b]).sum() > (2.0 if size == "large" else 0.8), (a, b, size)
    # up is up: the triangle's apex and the heart's point
    tri, heart = mask("triangle"), mask("heart")
    assert tri[11:14].sum() < tri[18:21].sum() and heart[11:14].sum() > heart[18:21].sum()


# ------------------------------------------------------------------------------------------------ functional API
def test_sample_attributes_and_captions_for():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        a = sample_attributes(rng, max_objects=3, min_objects=2)
        assert 2 <= len(a["objects"]) <= 3 and a["background"] in BACKGROUNDS
        assert [(o["row"], o["col"]) for o in a["objects"]] == sorted((o["row"], o["col"]) for o in a["objects"])
        seen |= {(o["shape"], o["colour"], o["size"], o["position"]) for o in a["objects"]}
    # every value of every attribute occurs
    for k, vocab in enumerate((SHAPES, COLOURS, SIZES, POSITIONS)):
        assert {t[k] for t in seen} == set(vocab)
    full = sample_attributes(np.random.default_rng(1), max_objects=9, min_objects=9)
    assert sorted(o["position"] for o in full["objects"]) == sorted(POSITIONS)
    caps = captions_for(full, np.random.default_rng(2))
    assert "nine objects" in caps["descriptive"]
    with pytest.raises(ValueError):
        sample_attributes(rng, max_objects=2, min_objects=3)


def test_batches_through_the_shared_collate_and_pickle():
    ds = pickle.loads(pickle.dumps(ShapesDataset("train", 8, caption_mix={"short": 1, "descriptive": 1})))
    batch = collate_samples([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 32, 32) and len(batch["caption"]) == 4
    assert batch["index"].tolist() == [0, 1, 2, 3] and isinstance(batch["attributes"][0], dict)


def test_datamodule_object_order():
    from zoo.data.modules import ShapesDataModule
    from zoo.errors import ConfigError

    kw = {"train_size": 30, "val_size": 4, "test_size": 4}
    raster, shuffled = ShapesDataModule(**kw), ShapesDataModule(object_order="shuffled", **kw)
    want = ShapesDataset("train", 30, object_order="shuffled")
    assert [shuffled.dataset("train")[i]["caption"] for i in range(30)] == [want[i]["caption"] for i in range(30)]
    assert [raster.dataset("train")[i]["caption"] for i in range(30)] != [want[i]["caption"] for i in range(30)]
    # a trained BPE fitted on raster captions is not reused for shuffled ones; raster keys are those of before
    assert "object_order" not in raster.data_identity()
    assert shuffled.data_identity() == {**raster.data_identity(), "object_order": "shuffled"}
    with pytest.raises(ConfigError, match="data.object_order.*shuffled"):
        ShapesDataModule(object_order="bottom first", **kw)
