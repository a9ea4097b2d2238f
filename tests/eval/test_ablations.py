"""eval.ablations: the blur ablation (a blurry generator looks better once both sides are blurred: FD at radius 8 <
FD at radius 0, on FD_CLIP and on FID with random Inception weights), the reranking ablation (more candidates ->
higher CLIP score, nested best-of-first-n, hand-computed), the judge metrics, and argument errors. CPU, no network.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eval.ablations import (
    MetricSuite,
    blur_ablation,
    check_radii,
    nested_best,
    rerank_ablation,
)
from eval.generators import RealBlurredGenerator, generate_images
from eval.metrics import RealStatsCache, frechet_distance, inception_score
from eval.shapes_protocol import ShapesProtocol


class PoolScorer:
    """A stand-in CLIP: L2-normalised 4x4 average-pooled pixels (48-d), blind to captions (all text = e_0)."""

    def encode_image(self, images):
        f = F.adaptive_avg_pool2d(images.float(), 4).flatten(1)
        return F.normalize(f, dim=-1)

    def encode_text(self, captions):
        t = torch.zeros(len(captions), 48)
        t[:, 0] = 1
        return t


@pytest.fixture(scope="module")
def shapes_set():
    return ShapesProtocol(n=24, split="val", resolution=32, seed=0).load()


def test_nested_best_by_hand():
    s = torch.tensor([[0.1, 0.5, 0.2, 0.9], [0.7, 0.1, 0.8, 0.3]])
    best = nested_best(s, [1, 2, 4, 3])
    assert best[1].tolist() == [0, 0] and best[2].tolist() == [1, 0]
    assert best[3].tolist() == [1, 2] and best[4].tolist() == [3, 2]
    with pytest.raises(ValueError, match="outside"):
        nested_best(s, [5])


def test_blur_ablation_fd_clip_blurry_generator_gains_from_blur(shapes_set):
    """A generator that outputs the real images blurred by sigma 2: sharp real vs blurry fakes differ (radius 0),
    once both are blurred by 8 the difference almost vanishes. Blurring only the fakes would not show this."""
    gen = RealBlurredGenerator(radius=2).bind(shapes_set)
    fakes = generate_images(gen, shapes_set.captions, batch_size=10, progress=False)
    suite = MetricSuite(["fd_clip", "clip_score"], clip=PoolScorer(), progress=False)
    rows = blur_ablation(fakes, shapes_set, suite, radii=[0, 1, 2, 4, 8], progress=False)
    fd = [r["fd_clip"] for r in rows]
    assert [r["radius"] for r in rows] == [0, 1, 2, 4, 8]
    assert fd[-1] < fd[0] / 3, fd
    assert fd[0] > 0
    # against the formula: radius 0 = FD between plain features
    direct = frechet_distance(
        PoolScorer().encode_image(shapes_set.real.tensor()), PoolScorer().encode_image(fakes.tensor())
    )
    assert fd[0] == pytest.approx(direct, rel=1e-6)
    # a sharp generator (the real images themselves) has FD 0 at every radius
    exact = generate_images(RealBlurredGenerator(radius=0).bind(shapes_set), shapes_set.captions, progress=False)
    assert all(abs(r["fd_clip"]) < 1e-6 for r in blur_ablation(exact, shapes_set, suite, [0, 4], progress=False))


def test_blur_ablation_fid_with_random_inception(tmp_path):
    from eval.features import (
        INCEPTION_FILENAME,
        InceptionFeatures,
        make_random_inception_weights,
    )

    es = ShapesProtocol(n=10, split="val", resolution=32, seed=1).load()
    ex = InceptionFeatures(make_random_inception_weights(tmp_path / INCEPTION_FILENAME))
    fakes = generate_images(RealBlurredGenerator(radius=2).bind(es), es.captions, progress=False)
    cache = RealStatsCache(tmp_path / "stats")
    suite = MetricSuite(["fid", "is"], inception=ex, cache=cache, is_splits=2, progress=False)
    rows = blur_ablation(fakes, es, suite, radii=[0, 8], progress=False)
    assert rows[1]["fid"] < rows[0]["fid"], rows
    assert len(list((tmp_path / "stats").glob("*.pt"))) == 2  # real statistics cached per radius
    assert rows[0]["is"] >= 1.0 and "is_std" in rows[0]


class ValueGenerator:
    """Candidate i of caption c is a constant image of value v(seed, c) in [0, 1) (seeded, so candidates differ)."""

    def __init__(self):
        self.seed = 0

    def value(self, seed, caption):
        return float(torch.rand(1, generator=torch.Generator().manual_seed(1000 * seed + int(caption))))

    def generate(self, captions):
        v = torch.tensor([self.value(self.seed, c) for c in captions])
        return (v.view(-1, 1, 1, 1) * 2 - 1).expand(-1, 3, 8, 8).clone()


class ValueScorer:
    """cos(image, any caption) = the image's value v (in [0, 1)), so CLIP score = 100 v."""

    def encode_image(self, images):
        v = ((images[:, 0, 0, 0] + 1) / 2).clamp(0, 1)
        return torch.stack([v, (1 - v**2).clamp_min(0).sqrt()], 1)

    def encode_text(self, captions):
        return torch.tensor([[1.0, 0.0]]).expand(len(captions), 2)


def test_rerank_more_candidates_higher_clip_score():
    from eval.eval_set import EvalSet, ImageBank

    n = 40
    caps = [str(i) for i in range(n)]
    es = EvalSet("stub", "val", caps, ImageBank.from_tensor(torch.zeros(n, 3, 8, 8)), 8)
    suite = MetricSuite(["clip_score"], clip=ValueScorer(), progress=False)
    gen = ValueGenerator()
    rows, banks = rerank_ablation(
        gen, es, suite, ValueScorer(), candidates=[1, 2, 4, 8], batch_size=7, seed=5, progress=False
    )
    scores = [r["clip_score"] for r in rows]
    assert [r["candidates"] for r in rows] == [1, 2, 4, 8]
    assert all(b > a for a, b in zip(scores, scores[1:])), scores
    # by hand: best of the values of candidates 0..k-1, uint8-quantised like the stored images; caption j of batch
    # b (7 captions a batch) draws candidate i under chunk_seed(5, b) + i
    from zoo.pipelines.base import chunk_seed

    for row in rows:
        k = row["candidates"]
        best = [max(gen.value(chunk_seed(5, j // 7) + i, c) for i in range(k)) for j, c in enumerate(caps)]
        q = [round(b * 255) / 255 for b in best]  # (2v-1) -> uint8 -> back
        assert row["clip_score"] == pytest.approx(100 * sum(q) / n, abs=0.3)
        assert row["rerank_cos"] == pytest.approx(sum(best) / n, abs=1e-5)
    assert gen.seed == 0  # restored


def test_judge_metrics_with_a_stub_judge(shapes_set):
    class Oracle:
        """Reads back the ground truth for real images (pixel-equal), an empty scene otherwise."""

        def __init__(self, es):
            self.real, self.attrs = es.real.tensor(), es.attributes

        def _match(self, x):
            d = (x[:, None] - self.real[None]).abs().flatten(2).amax(-1)  # (B, N)
            return [int(i) if d[b, i] < 1e-3 else None for b, i in enumerate(d.argmin(1))]

        def read(self, x):
            return [self.attrs[i] if i is not None else {"background": "none", "objects": []} for i in self._match(x)]

        def class_probs(self, x):
            p = torch.full((len(x), 4), 0.25)
            for b, i in enumerate(self._match(x)):
                if i is not None:
                    p[b] = F.one_hot(torch.tensor(i % 4), 4).float()
            return p

    es = shapes_set
    suite = MetricSuite(
        ["prompt_fidelity", "attribute_accuracy", "is_judge"], judge=Oracle(es), is_splits=2, progress=False
    )
    real = suite.evaluate(es.real, es)
    assert real["prompt_fidelity"] == 1.0 and real["attribute_accuracy"] == 1.0
    assert real["is_judge"] == pytest.approx(
        inception_score(torch.log(Oracle(es).class_probs(es.real.tensor()).clamp_min(1e-12)), splits=2)[0]
    )
    blurred = suite.evaluate(es.real, es, blur_radius=1)  # blurred images no longer match: fidelity drops
    assert blurred["prompt_fidelity"] == 0.0 and blurred["is_judge"] == pytest.approx(1.0)
    assert blurred["attribute_accuracy"] == 0.0  # nothing read: every object missed, no background right
    # half the scenes read correctly, half empty: by hand from the judge's attribute_accuracy definition
    from eval.judge import attribute_accuracy

    mixed = torch.cat([es.real.tensor()[:12], torch.zeros(12, 3, 32, 32)])
    half = suite.evaluate(mixed, es)
    acc = attribute_accuracy(Oracle(es).read(mixed), es.attributes)
    n_obj = sum(len(a["objects"]) for a in es.attributes)
    n_first = sum(len(a["objects"]) for a in es.attributes[:12])
    assert acc["shape"] == pytest.approx(n_first / n_obj) and acc["background"] == 0.5
    assert half["attribute_accuracy"] == pytest.approx((4 * n_first / n_obj + 0.5) / 5)
    assert half["prompt_fidelity"] == 0.5
    # subject accuracy (what a short prompt asks for): the oracle reads the first 12 scenes right, so it is 0.5, and
    # a reading that keeps only each scene's main subject (nothing else, wrong background) still scores 1.0 on it
    assert half["attributes"]["subject"] == 0.5
    from eval.judge import subject_accuracy
    from zoo.data.shapes import main_subject

    only_subject = [{"background": "none", "objects": [main_subject(a)]} for a in es.attributes]
    assert subject_accuracy(only_subject, es.attributes) == 1.0
    recoloured = [{"background": "none", "objects": [{**main_subject(a), "colour": "?"}]} for a in es.attributes]
    assert subject_accuracy(recoloured, es.attributes) == 0.0


def test_argument_errors(shapes_set):
    with pytest.raises(ValueError, match="unknown metrics"):
        MetricSuite(["fidd"])
    with pytest.raises(ValueError, match="inception"):
        MetricSuite(["fid"], clip=PoolScorer())
    with pytest.raises(ValueError, match="too large"):
        check_radii([0, 16], 32)
    suite = MetricSuite(["clip_score"], clip=PoolScorer(), progress=False)
    with pytest.raises(ValueError, match="captions"):
        suite.evaluate(torch.zeros(3, 3, 32, 32), shapes_set)
    from eval.eval_set import EvalSet

    no_attrs = EvalSet("x", "val", shapes_set.captions, shapes_set.real, 32)
    with pytest.raises(ValueError, match="attributes"):
        MetricSuite(["prompt_fidelity"], judge=object(), progress=False).evaluate(shapes_set.real, no_attrs)


class _NoiseGenerator:
    """An image that is pure noise from torch's global RNG (the caption ignored): what every batch of a weakly
    conditioned diffusion model shares when batches share a seed."""

    def generate(self, captions):
        return torch.rand(len(captions), 3, 4, 4) * 2 - 1


class _SeededPipeline:
    """A pipeline with its own candidates(): candidate i of every caption from a generator seeded by seed + i (as
    GLIDE / unCLIP draw x_T: the rows of a batch in order)."""

    def __init__(self):
        self.seed = 0

    def generate(self, captions):
        return self.candidates(captions, 1)[:, 0]

    def candidates(self, captions, n):
        out = [
            torch.rand(len(captions), 3, 4, 4, generator=torch.Generator().manual_seed(self.seed + i)) for i in range(n)
        ]
        return torch.stack(out, dim=1) * 2 - 1


@pytest.mark.parametrize("make", [_NoiseGenerator, _SeededPipeline])
def test_every_batch_of_captions_draws_its_own_noise(make):
    # zoo-eval drew every batch of captions under the same seed: caption k and caption k + batch_size got the same
    # noise (64 captions in batches of 8: 8 distinct images)
    from eval.ablations import rerank_select
    from eval.eval_set import EvalSet, ImageBank

    caps = [f"caption {i}" for i in range(64)]
    x = generate_images(make(), caps, batch_size=8, seed=0, progress=False).tensor()
    assert len(torch.unique(x.flatten(1), dim=0)) == 64
    again = generate_images(make(), caps, batch_size=8, seed=0, progress=False).tensor()
    assert torch.equal(x, again)  # still a pure function of the seed
    first = generate_images(make(), caps[:8], batch_size=8, seed=0, progress=False).tensor()
    assert torch.equal(x[:8], first)  # the first batch keeps the run's seed

    class _Scorer:
        def encode_image(self, im):
            return F.normalize(im.flatten(1)[:, :4], dim=-1)

        def encode_text(self, c):
            return F.normalize(torch.ones(len(c), 4), dim=-1)

    es = EvalSet("stub", "val", caps, ImageBank.from_tensor(x), 4)
    banks, _ = rerank_select(make(), es, _Scorer(), [1, 4], batch_size=8, progress=False)
    assert len(torch.unique(banks[4].tensor().flatten(1), dim=0)) == 64


def test_a_folders_candidate_i_stays_its_ith_image(tmp_path):
    # an image folder's seed picks the caption's i-th image, not noise: batches are not offset for it
    from eval.generators import FolderGenerator, save_folder

    x = torch.rand(6, 3, 4, 4) * 2 - 1
    save_folder(x, ["a", "b", "c", "a", "b", "c"], tmp_path / "s")
    got = generate_images(FolderGenerator(tmp_path / "s"), ["a", "b", "c", "a"], batch_size=2, progress=False).tensor()
    want = torch.stack([x[0], x[1], x[2], x[0]])  # candidate 0 of each caption: its first image, in every batch
    assert (got - want).abs().max() <= 2 / 255 + 1e-6  # uint8 rounding of the stored images


def test_clip_score_caption_embeddings_are_not_keyed_by_object_id():
    # the cache used id(eval_set): a later EvalSet at a freed object's address got the earlier captions' embeddings
    from eval.eval_set import EvalSet, ImageBank

    class _Scorer:  # cos(image, caption) = +1 for "match", -1 for "mismatch"
        def encode_image(self, x):
            e = torch.zeros(len(x), 2)
            e[:, 0] = 1
            return e

        def encode_text(self, caps):
            return torch.tensor([[1.0, 0.0] if c == "match" else [-1.0, 0.0] for c in caps])

    suite = MetricSuite(["clip_score"], clip=_Scorer(), progress=False)
    fakes = ImageBank.from_tensor(torch.zeros(4, 3, 8, 8))
    for i in range(50):
        cap = "match" if i % 2 == 0 else "mismatch"
        score = suite.evaluate(fakes, EvalSet("stub", "val", [cap] * 4, fakes, 8))["clip_score"]
        assert score == (100.0 if cap == "match" else 0.0), (i, cap, score)


def test_real_blurred_at_radius_0_is_the_real_set_even_with_repeated_captions():
    # short captions repeat (a protocol of 64 has fewer distinct ones): every repeat got the first scene with that
    # caption, so the radius-0 check generator was not the real set (FD_CLIP 0.003 instead of 0)
    es = ShapesProtocol(n=64, split="val", resolution=32, seed=0, caption_style="short").load()
    assert len(set(es.captions)) < len(es.captions)
    real = es.real.tensor()
    fakes = generate_images(RealBlurredGenerator(radius=0).bind(es), es.captions, batch_size=8, progress=False)
    assert torch.equal(fakes.tensor(), real)
    # an arbitrary list of captions (not a slice of the protocol): each caption's first scene, as before
    gen = RealBlurredGenerator(radius=0).bind(es)
    c = es.captions[5]
    assert torch.equal(gen.generate([c, es.captions[0]])[0], real[es.captions.index(c)])


def test_a_folder_of_the_protocols_images_is_the_real_set_even_with_repeated_captions(tmp_path):
    # every repeat of a caption was served the caption's first image: a folder holding exactly the protocol's images
    # scored as a set with duplicates
    from eval.generators import FolderGenerator, save_folder

    es = ShapesProtocol(n=64, split="val", resolution=32, seed=0, caption_style="short").load()
    assert len(set(es.captions)) < len(es.captions)
    real = es.real.tensor()
    save_folder(real, list(es.captions), tmp_path / "s")
    folder = FolderGenerator(tmp_path / "s").bind(es)
    got = generate_images(folder, es.captions, batch_size=8, progress=False).tensor()
    assert (got - real).abs().max() <= 1e-6


def test_save_folder_killed_while_writing_its_index_keeps_the_previous_index(tmp_path, monkeypatch):
    """captions.json was written in place: a kill mid-write left it truncated, and the next save_folder into the
    folder failed with a JSONDecodeError, the captions of every image written before lost."""
    import io
    import json

    from eval.generators import FolderGenerator, save_folder

    folder = tmp_path / "s"
    save_folder(torch.zeros(2, 3, 8, 8), ["a red circle", "a blue square"], folder)
    real_open = io.open

    class Dying:  # a text file the process dies in, halfway through its write
        def __init__(self, f):
            self.f = f

        def write(self, text):
            self.f.write(text[: len(text) // 2])
            self.f.flush()
            raise KeyboardInterrupt

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def dying_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return Dying(f) if "w" in mode and "b" not in mode else f

    monkeypatch.setattr(io, "open", dying_open)
    with pytest.raises(KeyboardInterrupt):
        save_folder(torch.zeros(1, 3, 8, 8), ["a green star"], folder, start=2)
    monkeypatch.setattr(io, "open", real_open)
    assert json.loads((folder / "captions.json").read_text()) == {
        "000000.png": "a red circle",
        "000001.png": "a blue square",
    }
    save_folder(torch.zeros(1, 3, 8, 8), ["a green star"], folder, start=2)  # the run resumes
    assert FolderGenerator(folder).generate(["a green star"]).shape == (1, 3, 8, 8)
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")], "temp file left behind"


def test_fd_clip_with_a_shared_cache_keeps_each_clips_real_features_apart(shapes_set, tmp_path):
    """Two CLIPs of one width and one real-statistics cache: the default clip_id was "clip" for both, so the second
    CLIP's FD_CLIP was computed against the first one's cached real features (0.60 for real images against
    themselves, measured; uncached ~0). A ClipScorer is now named by the fingerprint of its weights; another CLIP
    object must be named (clip_id) when its real features would be cached."""
    from zoo.models.clip.model import clip_config, create_clip, tokenizer_for
    from zoo.models.clip.scorer import ClipScorer

    cfg = clip_config("tiny")
    scorers = []
    for seed in (0, 1):  # the same architecture, other weights
        torch.manual_seed(seed)
        scorers.append(ClipScorer.from_model(create_clip(cfg), tokenizer_for(cfg)))
    cache = RealStatsCache(tmp_path / "real_stats")
    real = shapes_set.real.tensor()
    for scorer in scorers:
        suite = MetricSuite(["fd_clip"], clip=scorer, cache=cache, progress=False)
        assert suite.clip_id.startswith(f"clip-{scorer.fingerprint};prep=")
        assert suite.evaluate(real, shapes_set)["fd_clip"] == pytest.approx(0.0, abs=1e-3)  # the real set itself
    assert scorers[0].fingerprint != scorers[1].fingerprint and len(list((tmp_path / "real_stats").iterdir())) == 2
    with pytest.raises(ValueError, match="needs clip_id naming the CLIP"):
        MetricSuite(["fd_clip"], clip=PoolScorer(), cache=cache, progress=False)
    assert MetricSuite(["fd_clip"], clip=PoolScorer(), cache=cache, clip_id="pool", progress=False).clip_id == "pool"
    assert MetricSuite(["fd_clip"], clip=PoolScorer(), progress=False).clip_id is None  # nothing cached: no name


def test_fd_clip_cache_keeps_one_clips_real_features_apart_per_preprocessing(tmp_path):
    """The same CLIP weights with another interpolation / resize mode (a library-built ClipScorer) were keyed by the
    weights' fingerprint alone: the second scorer read the first one's cached real features, and FD_CLIP of the real
    images against themselves was not 0. The key now names the scorer's preprocessing too."""
    from zoo.models.clip.model import clip_config, create_clip, tokenizer_for
    from zoo.models.clip.scorer import ClipScorer

    es = ShapesProtocol(n=8, split="val", resolution=48, seed=1).load()  # 48 px: the tiny CLIP (32 px) resizes
    cfg = clip_config("tiny")
    torch.manual_seed(0)
    a = ClipScorer.from_model(create_clip(cfg), tokenizer_for(cfg))
    b = ClipScorer(a.model, a.tokenizer, a.image_size, a.mean.flatten().tolist(), a.std.flatten().tolist())
    b.interpolation, b.resize_mode = "bilinear", "squash"
    cache = RealStatsCache(tmp_path / "real_stats")
    real = es.real.tensor()
    suites = [MetricSuite(["fd_clip"], clip=s, cache=cache, progress=False) for s in (a, b)]
    for suite in suites:
        assert suite.evaluate(real, es)["fd_clip"] == pytest.approx(0.0, abs=1e-9)  # the real set itself
    assert suites[0].clip_id != suites[1].clip_id and a.fingerprint == b.fingerprint
    assert len(list((tmp_path / "real_stats").iterdir())) == 2


def test_generated_images_as_a_generator_or_a_list_of_batches_are_scored_as_a_tensor(shapes_set):
    """evaluate / blur_ablation take "an iterable of batches": a one-shot generator served the first metric group (or
    radius) only, and the judge then read zero images (prompt fidelity 0.0 for the real scenes themselves, silently);
    a list of batches was refused, its len() counting batches ("2 generated images for 24 captions")."""

    class Oracle:  # reads back the ground truth of a real scene, nothing otherwise
        def __init__(self, es):
            self.real, self.attrs = es.real.tensor(), es.attributes

        def read(self, x):
            d = (x[:, None] - self.real[None]).abs().flatten(2).amax(-1)  # (B, N)
            empty = {"background": "none", "objects": []}
            return [self.attrs[int(i)] if d[b, i] < 1e-3 else empty for b, i in enumerate(d.argmin(1))]

    es, real = shapes_set, shapes_set.real.tensor()
    suite = MetricSuite(["fd_clip", "prompt_fidelity"], clip=PoolScorer(), judge=Oracle(es), progress=False)
    expected = suite.evaluate(real, es)
    assert expected["prompt_fidelity"] == 1.0
    for fakes in ((b for b in (real[:10], real[10:])), [real[:10], real[10:]]):
        assert suite.evaluate(fakes, es) == expected
    rows = blur_ablation((b for b in (real[:10], real[10:])), es, suite, [0, 0], progress=False)
    assert [r["prompt_fidelity"] for r in rows] == [1.0, 1.0]
    with pytest.raises(ValueError, match="23 generated images for 24 captions"):
        suite.evaluate((b for b in (real[:10], real[10:23])), es)


def test_a_sample_folder_read_as_image_files_with_an_undecodable_file_is_an_error(shapes_set, tmp_path):
    """ImageFiles skips a file that fails to decode (right for a real set): as generated images, the judge's readings
    then shifted against the captions after it (prompt fidelity 0.21 for 23 intact real scenes of 24, silently)."""
    from eval.eval_set import ImageFiles
    from eval.generators import save_folder

    es, real = shapes_set, shapes_set.real.tensor()
    save_folder(real, es.captions, tmp_path)
    files = sorted(tmp_path.glob("*.png"))
    suite = MetricSuite(["fd_clip"], clip=PoolScorer(), progress=False)
    assert suite.evaluate(ImageFiles(files), es)["fd_clip"] == pytest.approx(0.0, abs=1e-6)
    data = files[5].read_bytes()
    files[5].write_bytes(data[: len(data) // 2])  # truncated past its header
    with pytest.raises(ValueError, match=r"23 generated images for 24 captions \(1 unreadable: .*000005.png"):
        suite.evaluate(ImageFiles(files), es)
