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


def _in_raster_order(attrs: dict, caption: str) -> bool:
    """Whether the caption names the scene's objects top left first (positions are unique words per scene)."""
    named = sorted(attrs["objects"], key=lambda o: caption.index(o["position"]))
    return [(o["row"], o["col"]) for o in named] == sorted((o["row"], o["col"]) for o in attrs["objects"])


def test_shuffled_captions_keep_the_bag_of_words_and_remove_the_order_cue():
    ds = ShapesDataset("val", size=160)
    n = foils_out_of_order = true_out_of_order = 0
    for i in range(160):
        attrs = ds.scene(i)[0]
        foil = probe.swapped(attrs, "position") if len(attrs["objects"]) > 1 else attrs
        if not probe.differs(attrs, foil):
            continue
        n += 1
        cap, foil_cap = probe.caption(attrs, i, "shuffled"), probe.caption(foil, i, "shuffled")
        assert cap != foil_cap and _words(cap) == _words(foil_cap)
        assert _in_raster_order(attrs, probe.caption(attrs, i))  # raster captions: the true one always in order...
        foils_out_of_order += not _in_raster_order(foil, probe.caption(foil, i))
        true_out_of_order += not _in_raster_order(attrs, cap)
    # ... and every position foil out of it: a cue that needs no binding. Shuffled: true captions out of order too
    assert n > 40 and foils_out_of_order == n
    assert 0.4 < true_out_of_order / n < 0.9, (true_out_of_order, n)
