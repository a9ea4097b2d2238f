"""CLIP zero-shot classification (eval/zeroshot.py): prompt-ensemble weights against a hand computation, labels of
the shapes tasks, an oracle encoder classifies perfectly, the linear probe learns a separable problem, and the
command runs end to end on a tiny CLIP."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from eval.zeroshot import (
    SHAPES_TASKS,
    accuracy,
    ensemble_text_weights,
    evaluate_embeddings,
    fill,
    linear_probe,
    main,
    shapes_split,
    task_targets,
    zero_shot_logits,
)


def _table_encoder(dim: int = 8, seed: int = 0):
    """encode_text that maps each distinct string to a fixed random (unnormalised) vector."""
    g = torch.Generator().manual_seed(seed)
    table: dict[str, torch.Tensor] = {}

    def encode(texts):
        for t in texts:
            if t not in table:
                table[t] = torch.randn(dim, generator=g) * (1 + len(table))  # various norms: normalised per prompt
        return torch.stack([table[t] for t in texts])

    return encode, table


def test_ensemble_weights_match_a_hand_computation():
    encode, table = _table_encoder()
    labels, templates = ["circle", "orange"], ["a {}", "a photo of a {}", "{} icon"]
    w = ensemble_text_weights(encode, labels, templates)
    assert w.shape == (2, 8)
    assert fill("a {}", "orange") == "an orange"  # articles as the world writes them
    for c, label in enumerate(labels):
        vecs = [table[fill(t, label)] for t in templates]
        mean = sum(v / v.norm() for v in vecs) / len(vecs)
        assert torch.allclose(w[c], mean / mean.norm(), atol=1e-6)
    # named-field labels and templates
    w2 = ensemble_text_weights(encode, [{"colour": "red", "shape": "star"}], ["a {colour} {shape}"])
    assert torch.allclose(w2[0], F.normalize(table["a red star"], dim=0), atol=1e-6)
    img = torch.randn(5, 8)
    assert torch.allclose(zero_shot_logits(img, w), F.normalize(img, dim=-1) @ w.t())


def test_shapes_tasks_labels_and_an_oracle_encoder_is_perfect():
    images, attrs = shapes_split("test", 40, resolution=16)
    assert images.shape == (40, 3, 16, 16) and all(len(a["objects"]) == 1 for a in attrs)
    for name, task in SHAPES_TASKS.items():
        y = task_targets(task, attrs)
        assert y.shape == (40,) and 0 <= int(y.min()) and int(y.max()) < len(task["labels"])
    y = task_targets(SHAPES_TASKS["colour_shape"], attrs)
    first = SHAPES_TASKS["colour_shape"]["labels"][int(y[0])]
    assert first == {"colour": attrs[0]["objects"][0]["colour"], "shape": attrs[0]["objects"][0]["shape"]}

    # oracle: every prompt of a class maps to that class's direction; the image embedding is its scene's class
    # directions summed over tasks (orthogonal one-hot blocks), so every task is classified perfectly
    blocks, offset = {}, 0
    for name, task in SHAPES_TASKS.items():
        blocks[name] = offset
        offset += len(task["labels"])
    dim = offset

    def encode(texts):
        out = torch.zeros(len(texts), dim)
        for i, t in enumerate(texts):
            for name, task in SHAPES_TASKS.items():
                for c, label in enumerate(task["labels"]):
                    if t in {fill(tp, label) for tp in task["templates"]}:
                        out[i, blocks[name] + c] = 1.0
        return out

    emb = torch.zeros(len(attrs), dim)
    for name, task in SHAPES_TASKS.items():
        emb[torch.arange(len(attrs)), blocks[name] + task_targets(task, attrs)] = 1.0
    rows = evaluate_embeddings(encode, emb, attrs, tasks=["shape", "colour", "size", "position", "background"])
    assert [r["zeroshot"] for r in rows] == [1.0] * 5
    assert rows[0]["classes"] == 6 and abs(rows[0]["chance"] - 1 / 6) < 1e-9 and "linear_probe" not in rows[0]


def test_linear_probe_learns_a_separable_problem():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 3
    y = torch.randint(0, 4, (400,), generator=g)
    x = centres[y] + 0.5 * torch.randn(400, 16, generator=g) + 5.0  # offset: the probe standardises
    probe = linear_probe(x[:300], y[:300], 4, epochs=20)
    with torch.no_grad():
        assert accuracy(probe(x[300:]), y[300:]) > 0.97
        untrained = linear_probe(x[:300], y[:300], 4, epochs=0)
        assert accuracy(untrained(x[300:]), y[300:]) < 0.7
    # deterministic given the seed
    again = linear_probe(x[:300], y[:300], 4, epochs=2, seed=1)
    assert torch.equal(again.linear.weight, linear_probe(x[:300], y[:300], 4, epochs=2, seed=1).linear.weight)


def test_command_on_a_tiny_clip(dalle_helpers, tmp_path):
    ckpt = dalle_helpers.tiny_clip_ckpt(tmp_path / "clip.ckpt")
    out = tmp_path / "report"
    results = main(
        [
            f"clip_ckpt={ckpt}",
            "n=24",
            "n_train=24",
            "resolution=16",
            "probe_epochs=2",
            f"out={out}",
            "tasks=[shape,colour_shape]",
        ]
    )
    assert [r["task"] for r in results["rows"]] == ["shape", "colour_shape"]
    for r in results["rows"]:
        assert 0.0 <= r["zeroshot"] <= 1.0 and 0.0 <= r["linear_probe"] <= 1.0
    assert json.loads((out / "results.json").read_text())["n"] == 24
    assert "| shape | 6 |" in (out / "results.md").read_text()
    with pytest.raises(SystemExit):
        main([f"clip_ckpt={tmp_path / 'missing.ckpt'}"])
    with pytest.raises(SystemExit):
        main([f"clip_ckpt={ckpt}", "bogus=1"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["n_train=1"], "n_train=1 must be a whole number >= 2"),
        (["probe_epochs=0"], "probe_epochs=0 must be a whole number >= 1: n_train=0 for no probe"),
        (["tasks=[shape,bogus]"], r"tasks=\['bogus'\]: choose from"),
        (["n=0"], "n=0 must be a whole number >= 1"),
        (["resolution=20"], r"got resolution=20 \(fix: resolution=32,"),
    ],
)
def test_bad_options_exit_2_before_any_scene_is_embedded(dalle_helpers, tmp_path, monkeypatch, capsys, extra, message):
    """n_train=1 reported a linear-probe "accuracy" from NaN logits (one training scene has no std to standardise by:
    argmax of NaN is class 0, so the share of class 0); probe_epochs=0 an untrained probe's. An unknown task or n=0
    was a ValueError traceback after every scene had been rendered and embedded, resolution=20 named data.resolution
    (not an option here). All are now exit 2 naming the option, before any scene is rendered."""
    import re

    import eval.zeroshot as Z

    def no(*a, **k):
        raise AssertionError("scenes rendered before the options were checked")

    monkeypatch.setattr(Z, "shapes_split", no)
    ckpt = dalle_helpers.tiny_clip_ckpt(tmp_path / "clip.ckpt")
    with pytest.raises(SystemExit) as e:
        main([f"clip_ckpt={ckpt}", "n=8", "n_train=8", "resolution=16", f"out={tmp_path / 'o'}", *extra])
    assert e.value.code == 2 and re.search(message, capsys.readouterr().err)
    with pytest.raises(ValueError, match="at least 2 training samples"):
        linear_probe(torch.randn(1, 4), torch.zeros(1), 2)


def test_default_out_is_under_zoo_log_dir(dalle_helpers, tmp_path, monkeypatch):
    """Without out=, the report went to ./logs/eval_zeroshot whatever $ZOO_LOG_DIR said (conf/paths' log_dir and
    eval.upsampler's default honour it); now <$ZOO_LOG_DIR>/eval_zeroshot/<time>."""
    ckpt = dalle_helpers.tiny_clip_ckpt(tmp_path / "clip.ckpt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ZOO_LOG_DIR", str(tmp_path / "scratch"))
    main([f"clip_ckpt={ckpt}", "n=4", "n_train=0", "resolution=16", "tasks=[size]"])
    assert len(list((tmp_path / "scratch" / "eval_zeroshot").glob("*/results.json"))) == 1
    assert not (tmp_path / "logs").exists()


def test_results_name_the_world_seed_and_the_probe_settings(dalle_helpers, tmp_path):
    """results.json / results.md did not record the world seed, the probe's epochs or its seed (two tables made with
    other settings could not be told apart), and n_train=0 read 'linear probe trained on 0 training scenes'."""
    ckpt = dalle_helpers.tiny_clip_ckpt(tmp_path / "clip.ckpt")
    common = [f"clip_ckpt={ckpt}", "n=4", "resolution=16", "tasks=[size]", "world_seed=3"]
    res = main(common + ["n_train=4", "probe_epochs=2", "seed=5", f"out={tmp_path / 'a'}"])
    saved = json.loads((tmp_path / "a" / "results.json").read_text())
    assert (
        (saved["world_seed"], saved["probe_epochs"], saved["probe_seed"])
        == (3, 2, 5)
        == (
            res["world_seed"],
            res["probe_epochs"],
            res["probe_seed"],
        )
    )
    assert (
        "world seed 3); linear probe trained on 4 training scenes (2 epochs, seed 5)"
        in (tmp_path / "a" / "results.md").read_text()
    )
    main(common + ["n_train=0", f"out={tmp_path / 'b'}"])
    assert "no linear probe (n_train=0)" in (tmp_path / "b" / "results.md").read_text()
    assert json.loads((tmp_path / "b" / "results.json").read_text())["probe_epochs"] is None
