"""Caption quality: the shapes caption parser round-trips every template of the world; attribute precision / recall
on hand-made captions against hand-computed values; BLEU / ROUGE-L through torchmetrics; the command end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from eval.captions import attribute_scores, caption_counts, ground_truth, main, parse_caption, text_scores
from zoo.data import shapes
from zoo.data.shapes import ShapesDataset, captions_for, main_subject, sample_attributes


def _descriptive(attrs, d: int, o: int) -> str:
    """A descriptive caption of ``attrs`` with descriptive template ``d`` and object template ``o`` for every object
    (the world's own building blocks, so every template is exercised, not only those a random draw picks)."""
    body = shapes._join([shapes._OBJECT_TEMPLATES[o].format(**ob) for ob in attrs["objects"]])
    text = shapes._DESCRIPTIVE_TEMPLATES[d].format(
        count=shapes.count_phrase(len(attrs["objects"])), bg=attrs["background"], body=body
    )
    return shapes._articles(text)


def test_parser_round_trips_every_descriptive_template():
    rng = np.random.default_rng(0)
    for d in range(len(shapes._DESCRIPTIVE_TEMPLATES)):
        for o in range(len(shapes._OBJECT_TEMPLATES)):
            for _ in range(20):
                attrs = sample_attributes(rng, max_objects=9)
                assert parse_caption(_descriptive(attrs, d, o)) == ground_truth(attrs), _descriptive(attrs, d, o)


def test_parser_round_trips_the_world_captions():
    ds = ShapesDataset("train", size=1500, max_objects=9)
    for i in range(1500):
        attrs, caps, _ = ds.scene(i)
        assert parse_caption(caps["descriptive"]) == ground_truth(attrs), caps["descriptive"]
        subject = main_subject(attrs)
        assert parse_caption(caps["short"]) == {
            "objects": [(None, subject["colour"], subject["shape"], None)],
            "count": None,
            "background": None,
        }, caps["short"]
        # alt text: whatever it states is true of the scene's main subject (no hallucinated facts)
        alt = parse_caption(caps["alt"])
        assert alt["count"] is None and alt["background"] is None
        for size, colour, shape, pos in alt["objects"]:
            assert size is None and pos is None and shape == subject["shape"] and colour in (None, subject["colour"])


def test_parser_reads_every_short_and_alt_template():
    attrs = {
        "background": "gray",
        "objects": [
            {"shape": "heart", "colour": "orange", "size": "large", "position": "top left", "row": 0, "col": 0}
        ],
    }
    for t in shapes._SHORT_TEMPLATES:
        assert parse_caption(shapes._articles(t.format(colour="orange", shape="heart")))["objects"] == [
            (None, "orange", "heart", None)
        ]
    named = {
        "{colour} {shape} clipart free download": [(None, "orange", "heart", None)],
        "{shape} icon": [(None, None, "heart", None)],
        "{shape}s and more": [(None, None, "heart", None)],
    }
    for t in shapes._ALT_TEMPLATES:
        text = t.format(num=1234, bg="gray", colour="orange", shape="heart")
        assert parse_caption(text) == {"objects": named.get(t, []), "count": None, "background": None}, text
    assert captions_for(attrs, np.random.default_rng(0))  # the templates above are the world's


SCENE = {
    "background": "gray",
    "objects": [
        {"shape": "circle", "colour": "red", "size": "large", "position": "top left", "row": 0, "col": 0},
        {"shape": "star", "colour": "blue", "size": "small", "position": "middle center", "row": 1, "col": 1},
    ],
}
HAND = [
    # 10 facts stated, 9 right (the star's colour); the green star contradicts its match: hallucinated
    "two objects on a gray background: a large red circle at the top left and a small green star in the middle center",
    "a red circle",  # 2 facts, both right
    "a large red circle, a yellow heart and a blue star",  # 7 facts, 5 right: the yellow heart has no object left
]


def test_attribute_precision_recall_by_hand():
    one = caption_counts(parse_caption(HAND[0]), ground_truth(SCENE))
    assert (one["facts_pred"], one["facts_correct"], one["facts_true"], one["hallucinated"]) == (10, 9, 10, 1)
    r = attribute_scores(HAND, [SCENE] * 3)
    assert r["precision"] == pytest.approx(16 / 19) and r["recall"] == pytest.approx(16 / 30)
    assert r["f1"] == pytest.approx(2 * (16 / 19) * (16 / 30) / (16 / 19 + 16 / 30))
    assert r["object_precision"] == pytest.approx(4 / 6) and r["object_recall"] == pytest.approx(4 / 6)
    assert r["hallucinated_per_caption"] == pytest.approx(2 / 3)
    assert r["colour_precision"] == pytest.approx(4 / 6) and r["colour_recall"] == pytest.approx(4 / 6)
    assert r["shape_precision"] == pytest.approx(5 / 6) and r["shape_recall"] == pytest.approx(5 / 6)
    assert r["size_precision"] == 1.0 and r["size_recall"] == pytest.approx(3 / 6)
    assert r["count_precision"] == 1.0 and r["count_recall"] == pytest.approx(1 / 3)
    assert r["position_precision"] == 1.0 and r["position_recall"] == pytest.approx(2 / 6)
    perfect = attribute_scores([_descriptive(SCENE, 0, 0)], [SCENE])
    assert perfect["precision"] == perfect["recall"] == perfect["object_precision"] == 1.0
    empty = attribute_scores(["untitled"], [SCENE])
    assert empty["precision"] is None and empty["recall"] == 0.0


def test_text_scores():
    same = text_scores(["a red circle at the top left"], ["a red circle at the top left"])
    assert same["bleu4"] == pytest.approx(1.0) and same["rougeL"] == pytest.approx(1.0)
    part = text_scores(["a red circle at the top"], ["a red circle at the top left"])
    assert part["rougeL"] == pytest.approx(12 / 13, abs=1e-4)  # LCS 6: P 6/6, R 6/7
    # BLEU-4: precisions 1 (n = 1..4), brevity penalty exp(1 - 7/6)
    assert part["bleu4"] == pytest.approx(math.exp(1 - 7 / 6), abs=1e-4)


def test_command_writes_results(tmp_path):
    from zoo.checkpoint import atomic_torch_save
    from zoo.models.captioner.lit import CaptionerLit
    from zoo.text import TrainedBPETokenizer

    ds = ShapesDataset("val", size=6)
    tok = TrainedBPETokenizer.train([c for i in range(6) for c in ds.scene(i)[1].values()], vocab_size=300)
    net = {"vocab_size": 300, "pad_id": tok.pad_id, "sot_id": tok.sot_id, "eot_id": tok.eot_id}
    torch.manual_seed(0)
    lit = CaptionerLit(preset="tiny", net=net, text_tokenizer=tok.to_spec())
    ckpt = tmp_path / "captioner.ckpt"
    atomic_torch_save(
        {
            "zoo_component": "captioner",
            "state_dict": lit.state_dict(),
            "hyper_parameters": {**dict(lit.hparams), "text_tokenizer": tok.to_spec()},
            "zoo_config": {
                "data": {
                    "_target_": "zoo.data.modules.ShapesDataModule",
                    "val_size": 6,
                    "caption_style": "descriptive",
                    "tokenizer": None,
                }
            },
        },
        ckpt,
    )
    feats = tmp_path / "val.pt"
    atomic_torch_save({"clip_image_emb": torch.nn.functional.normalize(torch.randn(6, 32), dim=-1)}, feats)
    out = tmp_path / "report"
    results = main(
        [f"ckpt={ckpt}", f"features={feats}", f"out={out}", "decoding=[greedy,beam,nucleus]", "beam_width=2"]
    )
    saved = json.loads((out / "results.json").read_text())
    assert [r["decoding"] for r in saved["rows"]] == ["greedy", "beam", "nucleus"] and saved["n"] == 6
    assert saved["reference_style"] == "descriptive" and len(saved["references"]) == 6
    for row in saved["rows"]:
        assert 0 <= row["bleu4"] <= 1 and "attr_precision" in row and "object_recall" in row
    assert "| decoding |" in (out / "results.md").read_text()
    assert results["rows"][0]["decoding"] == "greedy"
    with pytest.raises(SystemExit):
        main([f"ckpt={ckpt}", "bogus=1"])
