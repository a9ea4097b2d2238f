"""Prompt upsampling (DALL·E 3, small): the upsampler overfits a few (short, descriptive) pairs of the shapes world and
its sampled rewrites parse to scenes consistent with the short prompt; one prompt expands into several scenes; the
PromptUpsampled wrapper rewrites prompts before the inner generator sees them; build_generator applies it from
generator.prompt_upsampler; zoo-train writes a checkpoint load_module rebuilds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from eval.captions import parse_caption
from zoo.errors import ConfigError
from zoo.models.captioner.model import sample_captions
from zoo.models.prompt_upsampler.lit import PromptUpsamplerLit
from zoo.models.prompt_upsampler.model import PRESETS, PromptUpsampler, build_config
from zoo.pipelines.base import PromptUpsampled, RepeatedCandidates, build_generator, keep_best


def _pairs(n: int = 6) -> list[tuple[str, str]]:
    from zoo.data.shapes import ShapesDataset

    ds = ShapesDataset("train", size=100, resolution=16, max_objects=2)
    pairs: dict[str, str] = {}  # distinct short prompts (one scene each), so greedy decoding has one right answer
    for i in range(len(ds)):
        c = ds.scene(i)[1]
        pairs.setdefault(c["short"], c["descriptive"])
        if len(pairs) == n:
            break
    return list(pairs.items())


def _tokenizer(pairs, context_length=64):
    from zoo.text import TrainedBPETokenizer

    return TrainedBPETokenizer.train([t for p in pairs for t in p] * 4, vocab_size=400, context_length=context_length)


def _trained_lit(pairs, steps: int = 250, seed: int = 0) -> PromptUpsamplerLit:
    tok = _tokenizer(pairs)
    torch.manual_seed(seed)
    lit = PromptUpsamplerLit(
        preset="tiny", net={"vocab_size": 400, "prompt_len": 16, "text_len": 64}, text_tokenizer=tok.to_spec()
    )
    opt = torch.optim.AdamW(lit.parameters(), lr=3e-3)
    prompts, targets = [p for p, _ in pairs], [t for _, t in pairs]
    first = None
    for _ in range(steps):
        loss = lit.pair_loss(prompts, targets)["loss"]
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    lit.first_loss, lit.last_loss = first, float(loss)
    return lit.eval()


@pytest.fixture(scope="module")
def overfit():
    pairs = _pairs(6)
    return pairs, _trained_lit(pairs)


def test_overfits_a_few_pairs_and_greedy_reproduces_them(overfit):
    pairs, lit = overfit
    assert lit.last_loss < 0.05 * lit.first_loss
    assert lit.upsample([p for p, _ in pairs], method="greedy") == [t for _, t in pairs]
    assert lit.upsample([p for p, _ in pairs], method="beam", beam_width=2) == [t for _, t in pairs]


def _consistent(short: str, rewrite: str) -> bool:
    """The rewrite names an object with the short prompt's stated colour and shape."""
    ((_, colour, shape, _),) = parse_caption(short)["objects"]
    objects = parse_caption(rewrite)["objects"]
    return any(o[1] == colour and o[2] == shape for o in objects)


def test_sampled_rewrites_parse_to_scenes_consistent_with_the_prompt(overfit):
    pairs, lit = overfit
    prompts = [p for p, _ in pairs]
    for seed in range(3):
        rewrites = lit.upsample(prompts, seed=seed)  # nucleus, the default
        assert lit.upsample(prompts, seed=seed) == rewrites  # a pure function of the seed
        for short, rewrite in zip(prompts, rewrites):
            parsed = parse_caption(rewrite)
            assert parsed["objects"] and parsed["count"] == len(parsed["objects"]), rewrite
            assert _consistent(short, rewrite), (short, rewrite)


def test_one_prompt_expands_into_several_scenes():
    short = "a red circle"
    targets = [
        "one object on a gray background: a large red circle at the top left",
        "two objects on a black background: a small blue star at the middle center and a large red circle at "
        "the bottom right",
    ]
    lit = _trained_lit(
        [
            (short, targets[0]),
            (short, targets[1]),
            ("a green heart", "one object on a white background: a small green heart at the top right"),
        ],
        steps=200,
    )
    outs = lit.expand(short, 16, seed=0, top_p=1.0)
    assert len(set(outs)) >= 2  # several plausible scenes
    assert sum(o in targets for o in outs) >= 12
    assert all(_consistent(short, o) for o in outs if o in targets)


def test_a_rewrite_does_not_depend_on_the_other_prompts_of_the_call():
    """One generator for the batch drew (batch, vocabulary) noise per token: the same prompt and seed were rewritten
    otherwise when other prompts came along (zoo-sample prompts=[a] vs [a, b], eval.captions' batch_size), and
    expand(p, 2) was not the first two of expand(p, 4)."""
    pairs = _pairs()
    torch.manual_seed(0)
    lit = PromptUpsamplerLit(preset="tiny", text_tokenizer=_tokenizer(pairs).to_spec())  # untrained: varied draws
    a, b = pairs[0][0], pairs[1][0]
    alone = lit.upsample([a], seed=3, max_len=16)
    assert lit.upsample([a, b], seed=3, max_len=16)[0] == alone[0]
    assert lit.upsample([a, b], seed=3, max_len=16)[1] != lit.upsample([a, b], seed=4, max_len=16)[1]
    four = lit.expand(a, 4, seed=3, max_len=16)
    assert lit.expand(a, 2, seed=3, max_len=16) == four[:2] and four[0] == alone[0] and len(set(four)) > 1


def test_a_prompt_longer_than_prompt_len_is_said_to_be_cut(caplog):
    """A prompt longer than net.prompt_len (e.g. an already descriptive one given to a generator with an upsampler)
    lost its tail and [EOT] without a word, and was rewritten from the cut prompt."""
    pairs = _pairs()
    lit = PromptUpsamplerLit(preset="tiny", net={"prompt_len": 8}, text_tokenizer=_tokenizer(pairs).to_spec())
    short, descriptive = pairs[0]
    with caplog.at_level("WARNING", logger="zoo.prompt_upsampler"):
        lit.upsample([short], max_len=4)
    assert "cut" not in caplog.text
    with caplog.at_level("WARNING", logger="zoo.prompt_upsampler"):
        lit.upsample([short, descriptive], max_len=4)
    assert "1 of 2 prompts are longer than its net.prompt_len=8 tokens and were cut" in caplog.text


def test_upsample_encodes_each_prompt_once_with_the_same_rewrites(caplog):
    """upsample encoded every prompt twice a call (once for the model, once more to warn about cut prompts). Once
    now: the tokenizer sees each prompt once, the rewrites are those of the model on tokenize()'s input, and a prompt
    past net.prompt_len is still said to be cut."""
    from zoo.models.captioner.model import sample_captions

    pairs = _pairs()
    torch.manual_seed(0)
    lit = PromptUpsamplerLit(preset="tiny", net={"prompt_len": 8}, text_tokenizer=_tokenizer(pairs).to_spec()).eval()
    prompts = [pairs[0][0], pairs[1][1]]  # a short prompt and a descriptive one, longer than 8 tokens
    want = lit.text_tokenizer.decode(
        sample_captions(
            lit.net, lit.tokenize(prompts, 8), temperature=0.0, max_len=6, n_valid=lit.text_tokenizer.vocab_size
        ).cpu()
    )
    seen = []
    encode = lit.text_tokenizer.encode
    lit.text_tokenizer.encode = lambda texts: (seen.extend(texts), encode(texts))[1]
    with caplog.at_level("WARNING", logger="zoo.prompt_upsampler"):
        out = lit.upsample(prompts, method="greedy", max_len=6)
    assert out == want
    assert sorted(seen) == sorted(prompts)  # each prompt encoded once
    assert "1 of 2 prompts are longer than its net.prompt_len=8 tokens and were cut" in caplog.text


def test_model_decodes_with_the_captioners_sampler_and_presets():
    torch.manual_seed(0)
    m = PromptUpsampler(build_config("tiny", {"prompt_len": 8})).double().eval()
    prompt = torch.randint(4, 200, (3, 8))
    out = sample_captions(m, prompt, max_len=12)
    assert torch.equal(out, sample_captions(m, prompt, max_len=12, use_cache=False)) and out.shape == (3, 12)
    assert set(PRESETS) == {"tiny", "shapes", "paper"}
    with pytest.raises(ConfigError, match="valid"):
        build_config("tiny", {"width": 3})


def test_a_tokenizer_context_longer_than_the_output_is_refused():
    """Targets are cut to text_len: with a 64-token tokenizer and text_len 12 a long descriptive target lost its
    [EOT] and the upsampler was trained on rewrites that never end, silently."""
    pairs = _pairs(2)
    tok = _tokenizer(pairs, context_length=64)
    lit = PromptUpsamplerLit(preset="tiny", net={"vocab_size": 400, "text_len": 12}, text_tokenizer=tok.to_spec())
    with pytest.raises(ConfigError, match=r"context_length \(64\).*fix: model.net.text_len=64"):
        lit._check_tokenizer(tok)
    PromptUpsamplerLit(preset="tiny", net={"vocab_size": 400, "text_len": 64})._check_tokenizer(tok)


# ------------------------------------------------------------------------------------------------- the wrapper
class Spy:
    """A generator that records the captions it sees."""

    def __init__(self):
        self.seen: list[list[str]] = []
        self.seed = 7

    def generate(self, captions):
        self.seen.append(list(captions))
        return torch.zeros(len(captions), 3, 4, 4)


class Rewriter:
    def __init__(self):
        self.calls = []

    def upsample(self, prompts, seed=0, **options):
        self.calls.append(seed)
        return [f"{p} [seed {seed}]" for p in prompts]


def test_wrapper_rewrites_prompts_before_the_inner_generator_sees_them():
    spy, up = Spy(), Rewriter()
    gen = PromptUpsampled(spy, up)
    out = gen.generate(["a red circle", "a blue star"])
    assert out.shape == (2, 3, 4, 4)
    assert spy.seen == [["a red circle [seed 7]", "a blue star [seed 7]"]]  # the inner generator's seed
    assert gen.last_prompts == {"a red circle": "a red circle [seed 7]", "a blue star": "a blue star [seed 7]"}
    # the wrapper stands in for the generator: knobs and missing methods are the inner one's
    assert gen.seed == 7 and not callable(getattr(gen, "candidates", None)) and not hasattr(gen, "sample")
    gen.seed = 3
    assert spy.seed == 3
    # repeated candidates: candidate i under seed + i, so each gets its own rewrite
    spy.seen.clear()
    images = keep_best(gen, ["a red circle"], 3, seed=10)["images"]
    assert images.shape == (1, 3, 3, 4, 4)
    assert spy.seen == [[f"a red circle [seed {s}]"] for s in (10, 11, 12)] and spy.seed == 3
    assert gen.all_prompts["a red circle"] == ["a red circle [seed 7]"] + [
        f"a red circle [seed {s}]" for s in (10, 11, 12)
    ]
    assert isinstance(RepeatedCandidates(gen).generator, PromptUpsampled)
    gen.forget_prompts()  # zoo-serve, per request: a fresh record, the inner generator untouched
    assert gen.all_prompts == {} and gen.last_prompts == {} and spy.seed == 3
    gen.generate(["a blue star"])
    assert gen.all_prompts == {"a blue star": ["a blue star [seed 3]"]}


def test_wrapper_rewrites_the_captions_of_every_method_the_inner_generator_has():
    class Full(Spy):
        def candidates(self, captions, n_candidates=None):
            self.seen.append(list(captions))
            return torch.zeros(len(captions), n_candidates or 1, 3, 4, 4)

        def sample(self, captions, n_keep=1):
            self.seen.append(list(captions))
            return {"images": torch.zeros(len(captions), n_keep, 3, 4, 4), "scores": None}

        def inpaint(self, image, mask, captions, replace_known=None):
            self.seen.append(list(captions))
            return {"images": image}

    spy = Full()
    gen = PromptUpsampled(spy, Rewriter(), seed=0)
    gen.candidates(["x"], 2)
    gen.sample(captions=["y"], n_keep=2)
    gen.inpaint(torch.zeros(1, 3, 4, 4), torch.ones(1, 1, 4, 4), ["z"])
    assert spy.seen == [["x [seed 7]"], ["y [seed 7]"], ["z [seed 7]"]]
    assert keep_best(gen, ["w"], 2)["images"].shape == (1, 2, 3, 4, 4)  # its own sample(), rewritten
    assert spy.seen[-1] == ["w [seed 7]"]


def _save(lit: PromptUpsamplerLit, path: Path) -> Path:
    from zoo.checkpoint import atomic_torch_save

    hp = {**dict(lit.hparams), "text_tokenizer": lit.text_tokenizer.to_spec()}
    atomic_torch_save(
        {"zoo_component": "prompt_upsampler", "hyper_parameters": hp, "state_dict": lit.state_dict()}, path
    )
    return path


def test_build_generator_applies_prompt_upsampler(overfit, tmp_path):
    pairs, lit = overfit
    ckpt = _save(lit, tmp_path / "upsampler.ckpt")
    node = OmegaConf.create(
        {
            "seed": 5,
            "generator": {
                "_target_": "eval.generators.RealBlurredGenerator",
                "radius": 1.0,
                "seed": "${seed}",
                "prompt_upsampler": None,
            },
        }
    )
    plain = build_generator(node.generator)
    assert not isinstance(plain, PromptUpsampled)
    node.generator.prompt_upsampler = str(ckpt)
    gen = build_generator(node.generator)
    assert isinstance(gen, PromptUpsampled) and gen.radius == 1.0 and "prompt_upsampler" in node.generator
    rewrites = gen.rewrite([p for p, _ in pairs])
    assert rewrites == lit.upsample([p for p, _ in pairs], seed=gen.seed)  # the checkpoint's model, its seed
    node.generator.prompt_upsampler = str(tmp_path / "missing.ckpt")
    with pytest.raises(ConfigError, match="prompt_upsampler"):
        build_generator(node.generator)
    import conf

    for name in ("dalle", "glide", "unclip"):
        assert OmegaConf.load(Path(conf.__file__).parent / "generator" / f"{name}.yaml").prompt_upsampler is None


def test_trains_on_recaptioned_pairs_served_by_the_datamodule(tmp_path):
    """target_style may be a synthetic style of data.synthetic_captions (zoo-recaption's file)."""
    from zoo.checkpoint import atomic_torch_save
    from zoo.data.modules import ShapesDataModule

    f = atomic_torch_save({"captions": [f"a red circle number {i}" for i in range(12)], "meta": {}}, tmp_path / "s.pt")
    dm = ShapesDataModule(
        train_size=12,
        val_size=4,
        test_size=4,
        resolution=16,
        batch_size=4,
        synthetic_captions={"synthetic_descriptive": str(f)},
    )
    lit = PromptUpsamplerLit(preset="tiny", target_style="synthetic_descriptive")
    lit.check_data(dm)  # fits its own BPE on the pairs (no data tokenizer)
    assert lit.text_tokenizer is not None
    batch = next(iter(dm.train_dataloader()))
    prompts, targets = lit.batch_pairs(batch)
    assert all(t.startswith("a red circle number") for t in targets) and prompts == [
        c["short"] for c in batch["captions"]
    ]
    assert torch.isfinite(lit.forward_loss(batch)["loss"])
    with pytest.raises(ConfigError, match="synthetic_short"):
        PromptUpsamplerLit(preset="tiny", prompt_style="synthetic_short").check_data(dm)


# ------------------------------------------------------------------------------------------------- zoo-train
def test_zoo_train_and_load_module(train_cfg, tmp_path):
    from zoo.checkpoint import load_module
    from zoo.train import train

    cfg = train_cfg(
        "model=prompt_upsampler",
        "model.preset=tiny",
        "data.train_size=24",
        "data.val_size=8",
        "data.test_size=8",
        "data.batch_size=8",
        "logger=csv",
        "trainer.max_steps=3",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "trainer.num_sanity_val_steps=0",
    )
    metrics = train(cfg)
    assert metrics["global_step"] == 3 and "val/loss" in metrics
    ckpt = tmp_path / "up.ckpt"
    shutil.copy(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", ckpt)
    lit = load_module(ckpt, expect=("prompt_upsampler",))
    assert isinstance(lit, PromptUpsamplerLit) and lit.text_tokenizer is not None
    assert len(lit.upsample(["a red circle", "the blue star"], max_len=8)) == 2


def test_a_resumed_run_keeps_the_tokenizer_it_trained_with(train_cfg, tmp_path):
    """Resumed (ckpt_path=last) on more training scenes, check_data refitted the in-memory BPE on the new pairs and the
    run went on with it: the weights read every caption as other token ids, silently."""
    from zoo.checkpoint import load_module
    from zoo.train import train

    def run(n: int, steps: int, *extra: str) -> Path:
        cfg = train_cfg(
            "model=prompt_upsampler",
            "model.preset=tiny",
            f"data.train_size={n}",
            "data.val_size=8",
            "data.batch_size=8",
            "logger=csv",
            f"trainer.max_steps={steps}",
            "trainer.enable_progress_bar=false",
            "trainer.num_sanity_val_steps=0",
            "trainer.limit_val_batches=0",
            "test=false",
            *extra,
        )
        train(cfg)
        return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"

    first = load_module(run(16, 1)).text_tokenizer.to_spec()
    assert load_module(run(200, 2, "ckpt_path=last")).text_tokenizer.to_spec() == first
