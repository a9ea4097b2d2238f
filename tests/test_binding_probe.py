"""experiments/clip/binding_probe.py: its foils change which object has an attribute and nothing else, so a bag of
words cannot tell them from the true caption; the control foil changes a word."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np

from zoo.data.shapes import ShapesDataset

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("binding_probe", ROOT / "experiments/clip/binding_probe.py")
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)


def _words(text: str) -> list[str]:
    """The caption's words as a bag, articles aside ("a orange" is written "an orange")."""
    return sorted(w for w in re.findall(r"[a-z]+", text) if w not in ("a", "an"))


def test_swap_foils_keep_the_bag_of_words_and_change_the_image():
    ds = ShapesDataset("val", size=64)
    tested = 0
    for i in range(64):
        attrs = ds.scene(i)[0]
        if len(attrs["objects"]) < 2:
            continue
        for what in probe.SWAPS:
            foil = probe.swapped(attrs, what)
            if not probe.differs(attrs, foil):
                continue
            tested += 1
            a, b = attrs["objects"], foil["objects"]
            key = "position" if what == "position" else what
            assert (b[0][key], b[1][key]) == (a[1][key], a[0][key])  # exchanged between the first two objects
            assert a[2:] == b[2:] and attrs["background"] == foil["background"]
            cap, foil_cap = probe.caption(attrs, i), probe.caption(foil, i)
            assert cap != foil_cap and _words(cap) == _words(foil_cap)
            assert not np.array_equal(probe.image(attrs, 32).numpy(), probe.image(foil, 32).numpy())
    assert tested > 40


def test_control_foil_names_a_colour_the_scene_does_not_have():
    ds = ShapesDataset("val", size=32)
    rng = np.random.default_rng(0)
    for i in range(32):
        attrs = ds.scene(i)[0]
        foil = probe.control(attrs, rng)
        used = {o["colour"] for o in attrs["objects"]} | {attrs["background"]}
        assert foil["objects"][0]["colour"] not in used
        assert _words(probe.caption(attrs, i)) != _words(probe.caption(foil, i))
