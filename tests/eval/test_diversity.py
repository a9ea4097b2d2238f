"""Sample diversity: eval.metrics.pairwise_cosine_distance against hand-computed values, and
eval.ablations.diversity_ablation with a generator whose candidate i is known (it paints one block per seed), a
pooled-pixel stand-in CLIP and a stand-in judge: candidate i drawn under seed + i, the distance, the distinct-reading
fraction and the generator-only timing. CPU, no network."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from eval.ablations import diversity_ablation, scene_key
from eval.metrics import pairwise_cosine_distance
from eval.shapes_protocol import ShapesProtocol


# ------------------------------------------------------------------------------------------------ the math
def test_orthogonal_samples_are_distance_one_identical_zero_opposite_two():
    eye = torch.eye(4).unsqueeze(0)  # one caption, 4 mutually orthogonal unit samples
    assert pairwise_cosine_distance(eye) == pytest.approx(1.0, abs=1e-12)
    same = torch.tensor([0.3, -1.2, 2.0]).expand(5, 4, 3)  # 5 captions, 4 identical samples each
    assert pairwise_cosine_distance(same) == pytest.approx(0.0, abs=1e-12)
    opposite = torch.tensor([[[1.0, 2.0], [-1.0, -2.0]]])
    assert pairwise_cosine_distance(opposite) == pytest.approx(2.0, abs=1e-12)


def test_mean_over_captions_of_mean_over_pairs_by_hand():
    # caption 0: e1 = x, e2 = y, e3 = (x + y) / sqrt 2 -> pairs 1, 1 - 1/sqrt2, 1 - 1/sqrt2 -> (3 - sqrt2) / 3
    # caption 1: three identical samples -> 0.   Mean over captions: (3 - sqrt2) / 6 = 0.26430...
    c0 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # unnormalised row 3: the distance uses cosines
    c1 = torch.tensor([[2.0, 1.0]] * 3)
    got = pairwise_cosine_distance(torch.stack([c0, c1]))
    assert got == pytest.approx((3 - math.sqrt(2)) / 6, abs=1e-12)
    # each caption weighs the same: caption 0 alone is twice the two-caption mean
    assert pairwise_cosine_distance(c0[None]) == pytest.approx((3 - math.sqrt(2)) / 3, abs=1e-12)
    assert pairwise_cosine_distance(c0[None].numpy()) == pytest.approx((3 - math.sqrt(2)) / 3, abs=1e-12)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.ones(3, 1, 8), r"at least two samples"),
        (torch.ones(3, 8), r"\(captions, samples >= 2, dim\)"),
        (torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]), r"zero or non-finite"),
        (torch.tensor([[[1.0, 0.0], [float("nan"), 0.0]]]), r"zero or non-finite"),
    ],
)
def test_bad_embeddings_are_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        pairwise_cosine_distance(bad)


# ------------------------------------------------------------------------------------------------ the ablation
class BlockPainter:
    """generate(): a black image with one white 8x8 block, at block index ``seed % 16`` (16 blocks of a 32 px
    image); the seeds it was called under are kept in ``calls``. Under a 4x4-pooled CLIP stand-in, different blocks
    embed as orthogonal one-hot vectors."""

    def __init__(self, period: int = 16):
        self.seed, self.period, self.calls = 0, period, []

    def generate(self, captions):
        self.calls.append(self.seed)
        x = torch.zeros(len(captions), 3, 32, 32)
        r, c = divmod(self.seed % self.period, 4)
        x[:, :, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8] = 1.0
        return x


class PoolScorer:
    def encode_image(self, images):
        return F.normalize(F.adaptive_avg_pool2d(images.float(), 4).flatten(1), dim=-1)


class BlockJudge:
    """Reads the white block's column parity as the shape: blocks 0, 2 -> "circle", 1, 3 -> "square"."""

    def read(self, images):
        out = []
        for img in images:
            col = int(img[0].amax(0).argmax()) // 8
            shape = "circle" if col % 2 == 0 else "square"
            out.append(
                {
                    "background": "black",
                    "objects": [{"row": 0, "col": 0, "shape": shape, "colour": "white", "size": "small"}],
                }
            )
        return out


@pytest.fixture(scope="module")
def small_set():
    return ShapesProtocol(n=6, split="val", resolution=32, seed=0).load()


def test_diversity_ablation_draws_candidate_i_under_seed_plus_i(small_set):
    gen, timing = BlockPainter(), {}
    res = diversity_ablation(
        gen,
        small_set,
        PoolScorer(),
        captions=5,
        samples=4,
        batch_size=2,
        seed=10,
        judge=BlockJudge(),
        progress=False,
        timing=timing,
    )
    # 3 caption batches (2, 2, 1) x candidates i = 0..3, batch b under chunk_seed(10, b) + i (each batch its own noise)
    from zoo.pipelines.base import chunk_seed

    assert gen.calls == [chunk_seed(10, b) + i for b in range(3) for i in range(4)]
    # blocks 10..13 differ: 4 one-hot embeddings per caption -> every pair orthogonal
    assert res["pairwise_clip_distance"] == pytest.approx(1.0, abs=1e-6)
    assert res["captions"] == 5 and res["samples"] == 4
    # 4 consecutive seeds sit in 4 consecutive columns -> parities alternate circle / square: 2 of 4 distinct
    assert res["judge_distinct"] == pytest.approx(0.5)
    assert timing["images"] == 5 * 4 and timing["seconds"] > 0


def test_diversity_of_a_generator_that_ignores_the_seed_is_zero(small_set):
    gen = BlockPainter(period=1)  # always block 0
    res = diversity_ablation(gen, small_set, PoolScorer(), captions=100, samples=3, judge=BlockJudge(), progress=False)
    assert res["captions"] == len(small_set) == 6  # more captions asked than the protocol has: all of them
    assert res["pairwise_clip_distance"] == pytest.approx(0.0, abs=1e-6)
    assert res["judge_distinct"] == pytest.approx(1 / 3)
    no_judge = diversity_ablation(gen, small_set, PoolScorer(), captions=2, samples=2, progress=False)
    assert no_judge["judge_distinct"] is None


def test_diversity_argument_errors(small_set):
    with pytest.raises(ValueError, match=r"diversity.samples=4"):
        diversity_ablation(BlockPainter(), small_set, PoolScorer(), samples=1, progress=False)
    with pytest.raises(ValueError, match=r"diversity.captions=32"):
        diversity_ablation(BlockPainter(), small_set, PoolScorer(), captions=0, progress=False)


def test_scene_key_ignores_object_order_but_not_attributes():
    a = {"row": 0, "col": 1, "shape": "circle", "colour": "red", "size": "small"}
    b = {"row": 2, "col": 2, "shape": "square", "colour": "blue", "size": "large"}
    assert scene_key({"background": "white", "objects": [a, b]}) == scene_key(
        {"background": "white", "objects": [b, a]}
    )
    assert scene_key({"background": "white", "objects": [a]}) != scene_key({"background": "black", "objects": [a]})
    assert scene_key({"background": "white", "objects": [a]}) != scene_key(
        {"background": "white", "objects": [{**a, "colour": "green"}]}
    )
