"""Caption quality: the shapes caption parser round-trips every template of the world; attribute precision / recall
on hand-made captions against hand-computed values; BLEU / ROUGE-L through torchmetrics; the command end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from eval.captions import (
    attribute_scores,
    caption_counts,
    evaluate,
    ground_truth,
    main,
    parse_caption,
    text_scores,
)
from zoo.data import shapes
from zoo.data.shapes import ShapesDataset, captions_for, main_subject, sample_attributes
from zoo.errors import ConfigError


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


def _captioner_files(tmp_path):
    """A tiny captioner checkpoint (BPE of 6 val scenes' captions) and a features file of 6 val embeddings."""
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
    return ckpt, feats


def test_command_writes_results(tmp_path, capsys):
    from zoo.checkpoint import atomic_torch_save

    ckpt, feats = _captioner_files(tmp_path)
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
    # a zoo-embed file of another split: it was scored against this split's scenes, silently
    train = tmp_path / "train.pt"
    emb = torch.nn.functional.normalize(torch.randn(6, 32), dim=-1)
    atomic_torch_save({"clip_image_emb": emb, "meta": {"split": "train"}}, train)
    with pytest.raises(SystemExit):
        main([f"ckpt={ckpt}", f"features={train}", f"out={tmp_path / 'r2'}", "decoding=greedy"])
    assert "holds the train split's embeddings but split=val (fix: split=train" in capsys.readouterr().err


def test_command_adds_ground_truth_rows(tmp_path):
    """truth=true (default) scores the world's own captions of every style: the reference style's row is perfect
    text-wise, the descriptive row perfect attribute-wise, the short row precise but incomplete."""
    from zoo.checkpoint import atomic_torch_save
    from zoo.models.captioner.lit import CaptionerLit
    from zoo.text import TrainedBPETokenizer

    ds = ShapesDataset("val", size=8)
    tok = TrainedBPETokenizer.train([c for i in range(8) for c in ds.scene(i)[1].values()], vocab_size=300)
    net = {"vocab_size": 300, "pad_id": tok.pad_id, "sot_id": tok.sot_id, "eot_id": tok.eot_id}
    lit = CaptionerLit(preset="tiny", net=net, text_tokenizer=tok.to_spec())
    data = {"_target_": "zoo.data.modules.ShapesDataModule", "val_size": 8, "caption_style": "short", "tokenizer": None}
    ckpt = atomic_torch_save(
        {
            "zoo_component": "captioner",
            "state_dict": lit.state_dict(),
            "hyper_parameters": {**dict(lit.hparams), "text_tokenizer": tok.to_spec()},
            "zoo_config": {"data": data},
        },
        tmp_path / "c.ckpt",
    )
    feats = atomic_torch_save({"clip_image_emb": torch.randn(8, 32)}, tmp_path / "val.pt")
    out = tmp_path / "r"
    res = main([f"ckpt={ckpt}", f"features={feats}", f"out={out}", "decoding=greedy"])
    truth = {r["decoding"]: r for r in res["truth_rows"]}
    assert set(truth) == {
        "ground truth `alt`",
        "ground truth `short`",
        "ground truth `descriptive`",
        "another scene's `short` (chance)",
    }
    chance = truth["another scene's `short` (chance)"]
    assert chance["attr_precision"] < 1.0 and chance["hallucinated_per_caption"] > 0
    # (BLEU-4 of 2-4-word captions is degenerate: few or no 4-grams; ROUGE-L is the text metric that reads them)
    assert res["reference_style"] == "short" and truth["ground truth `short`"]["rougeL"] == pytest.approx(1.0)
    d, s = truth["ground truth `descriptive`"], truth["ground truth `short`"]
    assert d["attr_precision"] == d["attr_recall"] == d["object_precision"] == 1.0
    assert s["attr_precision"] == 1.0 and s["attr_recall"] < 0.5 and s["hallucinated_per_caption"] == 0.0
    assert "ground truth `descriptive`" in (out / "results.md").read_text()
    res = main([f"ckpt={ckpt}", f"features={feats}", f"out={out}", "decoding=greedy", "truth=false"])
    assert res["truth_rows"] == []


def test_plausible_and_kept_by_hand():
    from eval.captions import keeps_prompt, scene_plausible, upsampling_scores

    full = parse_caption(HAND[0])
    assert scene_plausible(full) and scene_plausible(parse_caption(_descriptive(SCENE, 2, 1)))
    assert not scene_plausible(parse_caption(HAND[0].replace("two objects", "three objects")))  # count disagrees
    assert not scene_plausible(parse_caption(HAND[0].replace("middle center", "top left")))  # one cell, two objects
    assert not scene_plausible(
        parse_caption(HAND[0].replace("gray background", "blue background").replace("green", "blue"))
    )
    assert not scene_plausible(parse_caption(HAND[2]))  # no count, no background, no positions
    assert keeps_prompt(parse_caption("a red circle"), full)
    assert keeps_prompt(parse_caption("the green star icon"), full)
    assert not keeps_prompt(parse_caption("a blue star"), full)  # the star is green there
    assert not keeps_prompt(parse_caption("a red circle and a red circle"), full)  # one-to-one
    assert not keeps_prompt(parse_caption("one object: a red circle"), full)  # the count disagrees
    prompts = ["a red circle", "a blue star"]
    rewrites = [[HAND[0], HAND[0], "untitled"], [HAND[0]]]
    r = upsampling_scores(prompts, rewrites, [SCENE, SCENE], [_descriptive(SCENE, 0, 0)] * 2)
    assert r["rewrites"] == 4 and r["kept"] == pytest.approx(2 / 4) and r["plausible"] == pytest.approx(3 / 4)
    assert r["distinct"] == pytest.approx((2 + 1) / 2)
    assert r["attr_recall"] == pytest.approx(27 / 40) and r["recall_when_kept"] == pytest.approx(18 / 20)


def test_upsampler_command(tmp_path):
    from zoo.checkpoint import atomic_torch_save
    from zoo.models.prompt_upsampler.lit import PromptUpsamplerLit
    from zoo.text import TrainedBPETokenizer

    ds = ShapesDataset("val", size=6)
    tok = TrainedBPETokenizer.train([c for i in range(6) for c in ds.scene(i)[1].values()], vocab_size=300)
    net = {"vocab_size": 300, "pad_id": tok.pad_id, "sot_id": tok.sot_id, "eot_id": tok.eot_id, "text_len": 16}
    torch.manual_seed(0)
    lit = PromptUpsamplerLit(preset="tiny", net=net, text_tokenizer=tok.to_spec())
    data = {"_target_": "zoo.data.modules.ShapesDataModule", "val_size": 6, "tokenizer": None}
    ckpt = atomic_torch_save(
        {
            "zoo_component": "prompt_upsampler",
            "state_dict": lit.state_dict(),
            "hyper_parameters": {**dict(lit.hparams), "text_tokenizer": tok.to_spec()},
            "zoo_config": {"data": data},
        },
        tmp_path / "u.ckpt",
    )
    out = tmp_path / "r"
    res = main(
        [f"upsampler={ckpt}", "n=6", "samples=3", "decoding=[greedy,nucleus]", f"out={out}", "expand=[a red circle]"]
    )
    rows = {r["decoding"]: r for r in res["rows"]}
    assert list(rows) == ["prompt (no upsampling)", "greedy", "nucleus"]
    assert rows["greedy"]["rewrites"] == 6 and rows["nucleus"]["rewrites"] == 18 and rows["nucleus"]["samples"] == 3
    p = rows["prompt (no upsampling)"]
    assert p["kept"] == 1.0 and p["attr_precision"] == 1.0 and p["plausible"] == 0.0  # a short caption is no scene
    assert res["prompts"] == [ds.scene(i)[1]["short"] for i in range(6)]
    assert len(res["expanded"]["a red circle"]) == 3 and len(res["examples"]["nucleus"][0]) == 3
    md = (out / "results.md").read_text()
    assert "# Prompt upsampling" in md and "| kept | plausible |" in md and "- nucleus: `" in md
    again = main([f"upsampler={ckpt}", "n=6", "samples=3", "decoding=nucleus", f"out={tmp_path / 'r2'}"])
    assert again["examples"]["nucleus"] == res["examples"]["nucleus"]  # seeded
    with pytest.raises(SystemExit):
        main([f"upsampler={ckpt}", f"ckpt={ckpt}"])
    # prompts= of another split (zoo-recaption's meta): scored against this split's scenes, silently
    train_prompts = atomic_torch_save(
        {"captions": ["a red circle"] * 6, "meta": {"split": "train", "style": "synthetic_short"}}, tmp_path / "p.pt"
    )
    with pytest.raises(ConfigError, match=r"captions of the train split but split=val \(fix: split=train"):
        evaluate({"upsampler": str(ckpt), "n": 6, "prompts": str(train_prompts), "decoding": "greedy"})


def test_recaptions_command(tmp_path):
    """recaptions=<zoo-recaption file>: its captions scored against the scenes of its split (default world when the
    captioner named in its meta is gone); the world's own descriptive captions score perfectly."""
    from zoo.checkpoint import atomic_torch_save

    ds = ShapesDataset("train", size=6)
    caps = [ds.scene(i)[1]["descriptive"] for i in range(6)]
    meta = {"style": "synthetic_descriptive", "split": "train", "captioner": str(tmp_path / "gone.ckpt")}
    f = atomic_torch_save({"captions": caps, "meta": meta}, tmp_path / "rec.pt")
    res = main([f"recaptions={f}", f"out={tmp_path / 'r'}"])
    (row,) = res["rows"]
    assert res["n"] == 6 and res["split"] == "train" and res["reference_style"] == "descriptive"
    assert row["attr_precision"] == row["attr_recall"] == row["plausible"] == 1.0 and row["rougeL"] == pytest.approx(1)
    assert "another scene's `descriptive` (chance)" in {r["decoding"] for r in res["truth_rows"]}
    assert "zoo-recaption `synthetic_descriptive`" in (tmp_path / "r" / "results.md").read_text()
    with pytest.raises(SystemExit):
        main([f"recaptions={f}", f"upsampler={f}"])


def test_command_refuses_a_damaged_features_file_with_the_zoo_embed_fix(tmp_path):
    """features= was read with a bare safe_load: a truncated file said "use another checkpoint (e.g. the run's
    last.ckpt ...)", no fix for a zoo-embed file, and NaN embeddings were captioned and scored without a word. It is
    now read as every zoo-embed consumer reads it (load_embeddings): "re-run the zoo-embed command", NaN refused. The
    features are read before anything is decoded, so no captioner is needed to see it."""
    from zoo.checkpoint import CorruptCheckpointError, atomic_torch_save
    from zoo.models.captioner.lit import CaptionerLit

    lit = CaptionerLit(preset="tiny", net={"vocab_size": 64})
    ckpt = atomic_torch_save(
        {"zoo_component": "captioner", "state_dict": lit.state_dict(), "hyper_parameters": dict(lit.hparams)},
        tmp_path / "c.ckpt",
    )
    emb = torch.nn.functional.normalize(torch.randn(4, 32), dim=-1)
    good = atomic_torch_save({"clip_image_emb": emb}, tmp_path / "good.pt")
    (tmp_path / "trunc.pt").write_bytes(good.read_bytes()[:300])
    emb[1, 0] = float("nan")
    nan = atomic_torch_save({"clip_image_emb": emb}, tmp_path / "nan.pt")
    with pytest.raises(CorruptCheckpointError, match="re-run the zoo-embed command") as e:
        evaluate({"ckpt": str(ckpt), "features": str(tmp_path / "trunc.pt")})
    assert "last.ckpt" not in str(e.value)
    with pytest.raises(ConfigError, match=f"{nan} is damaged.*'clip_image_emb' holds NaN"):
        evaluate({"ckpt": str(ckpt), "features": str(nan)})


@pytest.mark.parametrize("mode", ["ckpt", "upsampler"])
@pytest.mark.parametrize(
    "options, message",
    [
        ({"decoding": ["greedy", "bogus"]}, "unknown decoding 'bogus'"),
        ({"decoding": "beam", "beam_width": 0}, r"beam_width=0 must be a whole number >= 1"),
        ({"decoding": "nucleus", "top_p": 0}, r"top_p=0 must be a number in \(0, 1\]"),
        ({"decoding": "nucleus", "temperature": -1}, r"temperature=-1 must be a number >= 0"),
    ],
)
def test_decoding_options_are_checked_before_loading_or_decoding(tmp_path, mode, options, message):
    """An unknown method failed only after the methods before it had decoded the split; beam_width=0 ran the
    checkpoint's width and top_p=0 / a negative temperature decoded greedily, under the row's given label."""
    with pytest.raises(ConfigError, match=message):  # before the (missing) checkpoint is even opened
        evaluate({mode: str(tmp_path / "missing.ckpt"), "features": str(tmp_path / "missing.pt"), **options})


@pytest.mark.parametrize("mode", ["ckpt", "upsampler", "recaptions"])
@pytest.mark.parametrize(
    "options, message",
    [
        ({"n": -3}, r"n=-3 must be a whole number >= 1 or null"),
        ({"n": 2.5}, r"n=2.5 must be a whole number >= 1 or null"),
        ({"batch_size": 0}, r"batch_size=0 must be a whole number >= 1 \(fix: batch_size=256\)"),
        ({"samples": 0}, r"samples=0 must be a whole number >= 1"),
        ({"examples": -1}, r"examples=-1 must be a whole number >= 0"),
        ({"seed": 1.5}, r"seed=1.5 must be a whole number \(fix: seed=0\)"),
    ],
)
def test_count_options_are_checked_before_loading(tmp_path, mode, options, message):
    """n=-3 scored no image and wrote a report of BLEU 0; batch_size=0 was range()'s "arg 3 must not be zero" after
    the captioner had loaded; n=2.5 and batch_size=2.5 ran with 2."""
    with pytest.raises(ConfigError, match=message):  # before the (missing) files are even opened
        evaluate({mode: str(tmp_path / "missing.ckpt"), "features": str(tmp_path / "missing.pt"), **options})


def test_nucleus_captions_do_not_depend_on_the_batch_size(tmp_path):
    """One generator for the split drew (batch, vocabulary) noise per token: the nucleus row's captions and scores
    changed with batch_size. Item j now draws from its (seed, j) stream, zoo-recaption's: the same captions at any
    batch_size, in CaptionerLit.caption(seed=...) too, and the ones zoo-recaption writes with that seed."""
    from zoo.checkpoint import load_module
    from zoo.recaption import recaption

    ckpt, feats = _captioner_files(tmp_path)
    common = {"ckpt": str(ckpt), "features": str(feats), "decoding": "nucleus", "truth": False, "seed": 5}
    by_batch = [evaluate({**common, "batch_size": bs})["examples"]["nucleus"] for bs in (6, 4, 1)]
    assert by_batch[0] == by_batch[1] == by_batch[2] and len(set(by_batch[0])) > 1
    lit = load_module(ckpt, expect=("captioner",))
    emb = torch.load(feats, weights_only=True)["clip_image_emb"]
    assert lit.caption(emb, batch_size=4, method="nucleus", seed=5) == by_batch[0]
    assert lit.caption(emb, batch_size=4, method="nucleus", seed=6) != by_batch[0]
    out = recaption(
        lit,
        lambda a, b: emb[a:b],
        6,
        tmp_path / "rec.pt",
        captioner_digest="x",
        style="synthetic_descriptive",
        decoding={"method": "nucleus"},
        seed=5,
        chunk_size=4,
        progress=False,
    )
    assert torch.load(out, weights_only=True)["captions"] == by_batch[0]
