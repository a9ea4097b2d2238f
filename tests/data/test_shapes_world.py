"""The built-in shapes world: determinism, disjoint splits, attributes <-> captions <-> pixels, caption mix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoo.data.shapes import BACKGROUNDS, COLOURS, NUMBER_WORDS, RESOLUTIONS, SHAPES, ShapesDataset, main_subject


def test_deterministic_from_seed_split_index():
    a, b = ShapesDataset("train", 50, seed=3), ShapesDataset("train", 50, seed=3)
    for i in (0, 7, 49):
        assert torch.equal(a[i]["image"], b[i]["image"]) and a[i]["captions"] == b[i]["captions"]
    assert not torch.equal(a[0]["image"], a[1]["image"])
    assert not torch.equal(a[0]["image"], ShapesDataset("train", 50, seed=4)[0]["image"])


def test_splits_are_different_streams():
    tr, va, te = (ShapesDataset(s, 200) for s in ("train", "val", "test"))
    scenes = [{repr(d.scene(i)[0]) for i in range(200)} for d in (tr, va, te)]
    # independent streams: identical scenes can only happen by chance (few-object scenes), never systematically
    assert len(scenes[0] & scenes[1]) < 10 and len(scenes[0] & scenes[2]) < 10
    assert tr[0]["attributes"] != va[0]["attributes"]


def test_world_has_required_vocabulary():
    assert {"circle", "square", "triangle", "star", "heart", "cross"} <= set(SHAPES)
    assert len(COLOURS) >= 8 and len(BACKGROUNDS) >= 2


@pytest.mark.parametrize("i", range(40))
def test_captions_agree_with_attributes(i):
    s = ShapesDataset("val", 40)[i]
    attrs, caps = s["attributes"], s["captions"]
    d = caps["descriptive"]
    assert attrs["background"] in d and NUMBER_WORDS[len(attrs["objects"])] in d
    for o in attrs["objects"]:
        assert o["colour"] in d and o["shape"] in d and o["size"] in d and o["position"] in d
    subject = main_subject(attrs)
    assert subject["colour"] in caps["short"] and subject["shape"] in caps["short"]
    assert s["caption"] == d  # default style
    assert len({o["position"] for o in attrs["objects"]}) == len(attrs["objects"])  # one object per cell


def test_pixels_agree_with_attributes():
    ds = ShapesDataset("train", 400, resolution=64, min_objects=1, max_objects=1)
    checked = 0
    for i in range(400):
        s = ds[i]
        o = s["attributes"]["objects"][0]
        if o["shape"] not in ("circle", "square"):  # centres of these are always filled
            continue
        img = ((s["image"] + 1) * 127.5).round().permute(1, 2, 0).numpy()
        cell = 64 / 3
        cy, cx = int((o["row"] + 0.5) * cell), int((o["col"] + 0.5) * cell)
        assert np.abs(img[cy, cx] - COLOURS[o["colour"]]).max() <= 2
        far_r, far_c = (2 if o["row"] == 0 else 0), (2 if o["col"] == 0 else 0)
        fy, fx = int((far_r + 0.5) * cell), int((far_c + 0.5) * cell)
        assert np.abs(img[fy, fx] - BACKGROUNDS[s["attributes"]["background"]]).max() <= 2
        checked += 1
    assert checked > 50


@pytest.mark.parametrize("res", RESOLUTIONS)
def test_image_format_and_antialiasing(res):
    s = ShapesDataset("train", 4, resolution=res)[0]
    x = s["image"]
    assert x.shape == (3, res, res) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    colours = {tuple(p) for p in x.permute(1, 2, 0).reshape(-1, 3).tolist()}
    assert len(colours) > len(s["attributes"]["objects"]) + 1  # blended edge pixels exist


def test_caption_mix_proportions():
    ds = ShapesDataset("train", 2000, caption_mix={"descriptive": 0.95, "alt": 0.05})
    styles = [ds.scene(i)[2] for i in range(2000)]
    frac_alt = styles.count("alt") / 2000
    assert 0.03 < frac_alt < 0.07 and styles.count("short") == 0
    # the mix changes captions, never the scenes
    plain = ShapesDataset("train", 2000)
    assert all(plain.scene(i)[0] == ds.scene(i)[0] for i in range(50))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"caption_style": "poetic"}, "descriptive"),
        ({"caption_mix": {"verbose": 1.0}}, "valid styles"),
        ({"caption_mix": {"alt": -1.0}}, ">= 0"),
        ({"caption_mix": {"alt": 0.0}}, "sum"),
        ({"resolution": 8}, "resolution"),
        ({"split": "dev"}, "split"),
    ],
)
def test_bad_arguments_name_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ShapesDataset(**kwargs)
