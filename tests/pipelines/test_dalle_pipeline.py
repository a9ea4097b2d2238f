"""DallePipeline: CLIP reranking keeps the best-scoring candidates in order; generate's contract; seeding."""

from __future__ import annotations

import pytest
import torch

H = None  # tests/helpers_dalle.py, set by the fixture below for every test of this module


@pytest.fixture(autouse=True, scope="module")
def _helpers(dalle_helpers):
    global H
    H = dalle_helpers


CAPTIONS = [
    "a large red circle at the top left",
    "a small blue square at the bottom right",
    "a green triangle in the middle center",
]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory, _helpers):
    from zoo.models.clip.scorer import ClipScorer
    from zoo.models.dalle.lit import DalleLit
    from zoo.pipelines.dalle import DallePipeline

    tmp = tmp_path_factory.mktemp("dalle_pipe")
    torch.manual_seed(0)
    dalle = DalleLit(
        preset="tiny", net=dict(H.TINY_NET), image_tokenizer_ckpt=str(H.tiny_tokenizer_ckpt(tmp / "tok.ckpt"))
    )
    dalle.text_tokenizer = H.tiny_bpe(context_length=16)
    scorer = ClipScorer.from_lightning_checkpoint(str(H.tiny_clip_ckpt(tmp / "clip.ckpt")))
    return DallePipeline(dalle, scorer, n_candidates=6, batch_size=8, seed=3)


def test_rerank_keeps_best_scoring_candidates_in_order(pipe):
    cands = pipe.candidates(CAPTIONS, 6)  # (3, 6, 3, H, W)
    assert cands.shape == (3, 6, 3, H.RESOLUTION, H.RESOLUTION)
    out = pipe.sample(CAPTIONS, n_candidates=6, n_keep=3)
    assert torch.equal(pipe.candidates(CAPTIONS, 6), cands)  # seeded: same candidates on every call
    images, scores = out["images"], out["scores"]
    assert images.shape == (3, 3, 3, H.RESOLUTION, H.RESOLUTION) and scores.shape == (3, 3)
    for i, caption in enumerate(CAPTIONS):
        all_scores = pipe.scorer.clip_score(cands[i], [caption] * 6)  # independent scoring of every candidate
        best = torch.argsort(all_scores, descending=True)[:3]
        assert torch.equal(images[i], cands[i][best])  # the 3 best, best first
        torch.testing.assert_close(scores[i], all_scores[best], atol=1e-4, rtol=1e-4)
        assert (scores[i][:-1] >= scores[i][1:]).all()
        assert len(set(all_scores.tolist())) > 1  # candidates differ, so the test can fail


def test_n_keep_above_n_candidates_draws_n_keep(pipe):
    """n_keep = 4 of n_candidates = 2: four images drawn and kept (as GLIDE / unCLIP do), not two silently."""
    out = pipe.sample(CAPTIONS[:1], n_candidates=2, n_keep=4)
    assert out["images"].shape[:2] == (1, 4) and out["n_candidates"] == 4
    cands = pipe.candidates(CAPTIONS[:1], 4)[0]
    kept = [next(j for j in range(4) if torch.equal(img, cands[j])) for img in out["images"][0]]
    assert sorted(kept) == [0, 1, 2, 3]  # every candidate once, reordered by score


def test_without_a_clip_only_the_kept_images_are_drawn(pipe, monkeypatch):
    """No CLIP to rank them: sample(n_keep=k) draws k candidates and generate() one (GLIDE's rule), the same images
    as the first k of n_candidates. All n_candidates (32 by default) were drawn and the first k kept: zoo-sample
    without generator.clip_ckpt took 4x the time for n_keep=8 and recorded n_candidates=32."""
    from zoo.pipelines.dalle import DallePipeline

    plain = DallePipeline(pipe.dalle, None, n_candidates=6, batch_size=8, seed=3)
    drawn: list = []
    real = plain.candidates
    monkeypatch.setattr(plain, "candidates", lambda caps, n=None: (drawn.append(n), real(caps, n))[1])
    out = plain.sample(CAPTIONS[:2], n_keep=2)
    assert drawn == [2] and out["n_candidates"] == 2 and out["scores"] is None
    assert torch.equal(out["images"], real(CAPTIONS[:2], 6)[:, :2])  # the first two of six, as before
    drawn.clear()
    assert torch.equal(plain.generate(CAPTIONS[:2]), out["images"][:, 0]) and drawn == [1]


def test_generate_returns_one_best_image_per_caption(pipe):
    images = pipe.generate(CAPTIONS)
    assert images.shape == (3, 3, H.RESOLUTION, H.RESOLUTION) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    torch.testing.assert_close(images, pipe.sample(CAPTIONS, pipe.n_candidates, n_keep=1)["images"][:, 0])


def test_several_batches_are_seeded_and_complete(pipe):
    """Captions split over several transformer batches (progress bar path): every caption gets its candidates, and
    the same seed gives the same images."""
    from zoo.pipelines.dalle import DallePipeline

    split = DallePipeline(pipe.dalle, pipe.scorer, n_candidates=4, batch_size=4, seed=5, progress=True)
    a = split.candidates(CAPTIONS)
    assert a.shape == (3, 4, 3, H.RESOLUTION, H.RESOLUTION)
    assert torch.equal(a, split.candidates(CAPTIONS))
    assert not torch.equal(
        a, DallePipeline(pipe.dalle, None, n_candidates=4, batch_size=4, seed=6).candidates(CAPTIONS)
    )


def test_without_clip_keeps_sampling_order(pipe):
    from zoo.pipelines.dalle import DallePipeline

    p = DallePipeline(pipe.dalle, None, n_candidates=5, batch_size=8, seed=3)
    out = p.sample(CAPTIONS[:2], n_keep=2)
    assert out["scores"] is None
    assert torch.equal(out["images"], p.candidates(CAPTIONS[:2])[:, :2])


def test_a_checkpoint_without_image_tokenizer_is_refused_at_load_or_given_one(tmp_path):
    """A DALL·E trained from zoo-tokenize codes alone carries no image tokenizer: zoo-sample / zoo-serve / zoo-eval
    loaded it and raised "no image tokenizer to decode with" only after sampling every candidate's codes (zoo-serve:
    on every request). Now from_checkpoints refuses it with the fix, and generator.image_tokenizer_ckpt decodes it."""
    from zoo.checkpoint import atomic_torch_save
    from zoo.errors import ConfigError
    from zoo.export import checkpoint_dict
    from zoo.models.dalle.lit import DalleLit
    from zoo.pipelines.dalle import DallePipeline

    dalle = DalleLit(preset="tiny", net=dict(H.TINY_NET))
    dalle.text_tokenizer = H.tiny_bpe(context_length=16)
    state = checkpoint_dict(dalle)  # no tokenizer_spec: as trained from zoo-tokenize codes alone
    state["hyper_parameters"]["text_tokenizer"] = dalle.text_tokenizer.to_spec()
    ckpt = atomic_torch_save(state, tmp_path / "dalle.ckpt")
    with pytest.raises(ConfigError, match="has no image tokenizer.*fix: generator.image_tokenizer_ckpt="):
        DallePipeline.from_checkpoints(str(ckpt))
    tok = H.tiny_tokenizer_ckpt(tmp_path / "tok.ckpt")
    pipe = DallePipeline.from_checkpoints(str(ckpt), image_tokenizer_ckpt=str(tok), n_candidates=1)
    assert pipe.candidates(["a red circle"], 1).shape == (1, 1, 3, H.RESOLUTION, H.RESOLUTION)


def test_an_image_tokenizer_given_to_a_checkpoint_that_carries_one_is_a_warning(tmp_path, caplog):
    """generator.image_tokenizer_ckpt only serves a checkpoint without a tokenizer; given to one that carries its
    own it was ignored without a word."""
    import logging

    from zoo.export import checkpoint_dict
    from zoo.models.dalle.lit import DalleLit
    from zoo.pipelines.dalle import DallePipeline

    ckpt = tmp_path / "dalle.ckpt"
    dalle = DalleLit(
        preset="tiny", net=dict(H.TINY_NET), image_tokenizer_ckpt=str(H.tiny_tokenizer_ckpt(tmp_path / "t"))
    )
    dalle.text_tokenizer = H.tiny_bpe(context_length=16)
    state = checkpoint_dict(dalle)
    dalle.on_save_checkpoint(state)
    torch.save(state, ckpt)
    with caplog.at_level(logging.WARNING, logger="zoo.pipelines.dalle"):
        DallePipeline.from_checkpoints(str(ckpt))
        assert "ignored" not in caplog.text
        DallePipeline.from_checkpoints(str(ckpt), image_tokenizer_ckpt=str(tmp_path / "other.ckpt"))
    assert "generator.image_tokenizer_ckpt=" in caplog.text and "ignored" in caplog.text


@pytest.mark.parametrize("n_averaged,use_ema,want", [(0, True, "raw"), (4, True, "ema"), (4, False, "raw")])
def test_checkpoint_weights_follow_the_ema_and_an_unstarted_ema_falls_back_to_the_trained_weights(
    tmp_path, n_averaged, use_ema, want
):
    """A DALL·E trained with callbacks=ema: the EMA once it has started; before its first update the state_dict is
    the INITIAL weights (Lightning's callback), so the trained current_model_state is used (it sampled the initial
    transformer); use_ema=False: trained."""
    from zoo.checkpoint import atomic_torch_save
    from zoo.export import checkpoint_dict
    from zoo.models.dalle.lit import DalleLit
    from zoo.pipelines.dalle import DallePipeline

    torch.manual_seed(0)
    tok = H.tiny_tokenizer_ckpt(tmp_path / "tok.ckpt")
    dalle = DalleLit(preset="tiny", net=dict(H.TINY_NET), image_tokenizer_ckpt=str(tok))
    dalle.text_tokenizer = H.tiny_bpe(context_length=16)
    state = checkpoint_dict(dalle)
    state["hyper_parameters"]["text_tokenizer"] = dalle.text_tokenizer.to_spec()
    trained = state["state_dict"]
    other = {k: v + 1 if v.is_floating_point() else v for k, v in trained.items()}
    state.update(
        state_dict=other, current_model_state=trained, averaging_state={"n_averaged": torch.tensor(n_averaged)}
    )
    ckpt = atomic_torch_save(state, tmp_path / "dalle.ckpt")
    pipe = DallePipeline.from_checkpoints(str(ckpt), image_tokenizer_ckpt=str(tok), use_ema=use_ema, n_candidates=1)
    expect = trained if want == "raw" else other
    loaded = pipe.dalle.state_dict()
    assert pipe.weights == want
    assert all(torch.equal(loaded[k], expect[k]) for k in expect if k in loaded)


def test_candidate_i_is_drawn_under_seed_plus_i_whatever_n_and_batch_size(pipe):
    """Candidate i of every caption is DalleLit.generate(captions, seed=seed + i): the same images at another
    batch_size and nested over n (one generator for all candidates made both change every image)."""
    from zoo.pipelines.dalle import DallePipeline

    caps = CAPTIONS[:2]
    big = DallePipeline(pipe.dalle, None, n_candidates=4, batch_size=8, seed=3).candidates(caps)  # one batch
    small = DallePipeline(pipe.dalle, None, n_candidates=4, batch_size=2, seed=3).candidates(caps)  # one per batch
    assert torch.equal(big, small)
    assert torch.equal(
        DallePipeline(pipe.dalle, None, n_candidates=2, batch_size=8, seed=3).candidates(caps), big[:, :2]
    )
    for i in range(4):
        assert torch.equal(big[:, i], pipe.dalle.generate(caps, seed=3 + i))
    assert not torch.equal(big[:, 0], big[:, 1])  # candidates differ, so the test can fail


@pytest.mark.parametrize(
    "knob",
    [{"top_k": -3}, {"top_k": 2.5}, {"top_p": 0}, {"top_p": -0.5}, {"top_p": 90}, {"temperature": -1.0}],
)
def test_sampling_options_the_sampler_would_misread_are_refused_before_sampling(pipe, knob, tmp_path):
    """A negative top_k was no filter, a fractional one rounded, top_p <= 0 and a negative temperature greedy decoding,
    top_p=90 no filter, all without a word; now a ConfigError naming generator.<key> (before the checkpoint is read,
    in from_checkpoints), and from DalleLit.generate (its own options)."""
    from zoo.errors import ConfigError
    from zoo.pipelines.dalle import DallePipeline

    key = next(iter(knob))
    with pytest.raises(ConfigError, match=rf"generator\.{key}=\S+ must be .*\(fix: generator\.{key}="):
        DallePipeline(pipe.dalle, None, **knob)
    with pytest.raises(ConfigError, match=rf"generator\.{key}=\S+ must be .*\(fix: generator\.{key}="):
        DallePipeline.from_checkpoints(str(tmp_path / "missing.ckpt"), **knob)
    with pytest.raises(ConfigError, match=rf"^{key}=\S+ must be"):
        pipe.dalle.generate(CAPTIONS[:1], **knob)


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -2.0, "abc"])
def test_a_guidance_scale_that_is_no_finite_number_from_0_is_refused(pipe, scale, tmp_path):
    """generator.guidance_scale=nan was taken and drew every token from NaN logits (Gumbel-max of NaN: token 0), inf
    and -2 too, without a word; a word was float()'s ValueError after the checkpoint was read. Now a ConfigError
    naming the key, as the GLIDE and unCLIP pipelines' scales, before the checkpoint is read."""
    from zoo.errors import ConfigError
    from zoo.pipelines.dalle import DallePipeline

    with pytest.raises(ConfigError, match="generator.guidance_scale=.* must be a number >= 0: the guidance scale"):
        DallePipeline(pipe.dalle, None, guidance_scale=scale)
    with pytest.raises(ConfigError, match="generator.guidance_scale=.* must be a number >= 0: the guidance scale"):
        DallePipeline.from_checkpoints(str(tmp_path / "missing.ckpt"), guidance_scale=scale)


@pytest.mark.parametrize("knob", [{"n_candidates": 0}, {"batch_size": 2.5}])
def test_a_bad_count_is_refused_before_the_checkpoint_loads(knob, tmp_path):
    """generator.n_candidates=0 / batch_size=2.5 were refused only after the DALL·E (and the CLIP) had loaded."""
    from zoo.errors import ConfigError
    from zoo.pipelines.dalle import DallePipeline

    key = next(iter(knob))
    with pytest.raises(ConfigError, match=rf"generator.{key}=\S+ must be a whole number"):
        DallePipeline.from_checkpoints(str(tmp_path / "missing.ckpt"), **knob)


def test_sampling_edge_values_that_mean_something_still_sample(pipe):
    """temperature 0 (greedy), top_k 0 (no filter) or above the vocabulary (every token), top_p 1 (no filter)."""
    from zoo.pipelines.dalle import DallePipeline

    plain = DallePipeline(pipe.dalle, None, n_candidates=1, seed=3).candidates(CAPTIONS[:1])
    for knob in ({"top_k": 0}, {"top_k": 10_000}, {"top_p": 1.0}):
        assert torch.equal(
            DallePipeline(pipe.dalle, None, n_candidates=1, seed=3, **knob).candidates(CAPTIONS[:1]), plain
        )
    greedy = DallePipeline(pipe.dalle, None, n_candidates=2, seed=3, temperature=0).candidates(CAPTIONS[:1])
    assert torch.equal(greedy[:, 0], greedy[:, 1])  # no noise: every seed gives the argmax image
    assert torch.equal(
        DallePipeline(pipe.dalle, None, n_candidates=1, seed=3, top_k=1).candidates(CAPTIONS[:1]), greedy[:, :1]
    )


def test_guidance_of_a_dalle_that_never_trained_the_null_caption_is_a_warning(caplog):
    """text_dropout=0: the all-pad null caption was never trained; guiding with it extrapolates from an untrained
    unconditional stream. A WARNING naming the scale when the pipeline is built and when training starts (the sample
    grid's scale); none at guidance 1 or for a model that dropped captions."""
    import logging

    from zoo.models.dalle.lit import DalleLit
    from zoo.pipelines.dalle import DallePipeline

    never = DalleLit(preset="tiny", text_dropout=0.0, grid_guidance_scale=3.0)
    with caplog.at_level(logging.WARNING, logger="zoo.models.dalle.lit"):
        DallePipeline(never, None, guidance_scale=1.0)
        DallePipeline(DalleLit(preset="tiny", text_dropout=0.1), None, guidance_scale=3.0)
        assert "never trained" not in caplog.text
        DallePipeline(never, None, guidance_scale=3.0)
        assert "generator.guidance_scale=3.0" in caplog.text and "model.text_dropout=0.15" in caplog.text
        never.setup("fit")
        assert "model.grid_guidance_scale=3.0" in caplog.text


def test_no_captions_is_a_clear_error(pipe):
    with pytest.raises(ValueError, match="no captions"):
        pipe.candidates([])
    with pytest.raises(ValueError, match="no captions"):
        pipe.generate([])


def test_n_candidates_without_a_clip_to_rerank_them_is_a_warning_as_glide_s(pipe, caplog):
    """zoo-sample of a DALL·E with generator.n_candidates=4, n_keep=2 and no generator.clip_ckpt drew and kept 2 and
    said nothing of the 4 (GLIDE's pipeline warns). Now the same one WARNING, naming both fixes; the count left out
    (generator.n_candidates=null, the config's default: 32 for a CLIP to rank), one candidate, or a CLIP: nothing."""
    import logging

    from zoo.pipelines.dalle import DEFAULT_CANDIDATES, DallePipeline

    with caplog.at_level(logging.WARNING):
        plain = DallePipeline(pipe.dalle, None, n_candidates=4, batch_size=8, seed=3)
        lines = [r.getMessage() for r in caplog.records if "n_candidates" in r.getMessage()]
        assert len(lines) == 1 and "generator.n_candidates=4 ignored: no CLIP reranks the samples" in lines[0]
        assert "fix: generator.clip_ckpt=" in lines[0] and "leave generator.n_candidates out" in lines[0]
        assert plain.sample(CAPTIONS[:1], n_keep=2)["n_candidates"] == 2  # what the warning says: n_keep drawn
        caplog.clear()
        assert DallePipeline(pipe.dalle, None).n_candidates == DEFAULT_CANDIDATES
        DallePipeline(pipe.dalle, None, n_candidates=1)
        assert DallePipeline(pipe.dalle, pipe.scorer, n_candidates=4).n_candidates == 4
    assert not [r for r in caplog.records if "n_candidates" in r.getMessage()]


def test_zoo_eval_says_its_own_clip_ranks_instead_of_no_clip_reranks(pipe, caplog, monkeypatch):
    """zoo-eval generator=dalle generator.n_candidates=32 clip.checkpoint=<clip> logged the pipeline's "ignored: no
    CLIP reranks the samples" while zoo-eval reranked with its own CLIP over rerank.candidates (found by helper-126).
    Built by zoo-eval, the count is said to be unused by zoo-eval, naming rerank.candidates; built as zoo-sample
    builds it, the pipeline's warning stays."""
    import logging
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    import zoo.config
    from eval.cli import build_generator as eval_build
    from zoo.pipelines.base import build_generator as sample_build
    from zoo.pipelines.dalle import DallePipeline

    # the real pipeline constructor (where the warning lives), without writing a DALL·E checkpoint
    monkeypatch.setattr(zoo.config, "instantiate", lambda node, what: DallePipeline(pipe.dalle, None, **node.kw))
    node = OmegaConf.create({"_target_": "zoo.pipelines.dalle.DallePipeline", "n_candidates": 32})
    node.kw = {"n_candidates": 32, "batch_size": 8}
    eval_set = SimpleNamespace(name="shapes", resolution=32)

    def lines():
        return [r.getMessage() for r in caplog.records if "n_candidates" in r.getMessage()]

    with caplog.at_level(logging.WARNING):
        eval_build(node, eval_set)
        assert len(lines()) == 1 and "generator.n_candidates=32 not used: zoo-eval" in lines()[0], lines()
        assert "no CLIP reranks" not in caplog.text and "rerank.candidates=" in lines()[0]
        caplog.clear()
        sample_build(node)
        assert len(lines()) == 1 and "generator.n_candidates=32 ignored: no CLIP reranks the samples" in lines()[0]
        caplog.clear()
        node.n_candidates, node.kw = 1, {"n_candidates": 1}  # glide.yaml's and unclip.yaml's default: no pool asked
        eval_build(node, eval_set)
        assert not lines()
