"""zoo-sample: a tokenizer checkpoint's reconstructions grid; a DALL·E checkpoint through the shared generator config
(short ckpt= form and long generator= form); output names; renamed options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from zoo.errors import ConfigError
from zoo.sample import sample
from zoo.train import train


def _sample_cfg(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return compose("sample", overrides=list(overrides))


def test_sample_writes_reconstruction_grid(train_cfg, tmp_path, train_helpers):
    T = train_helpers
    cfg = train_cfg("model=dvae", "model.preset=tiny", *T.sizes(), *T.TWO_STEPS)
    train(cfg)
    ckpt = T.last_ckpt(cfg)
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        scfg = compose(
            "sample", overrides=[f"ckpt={ckpt}", f"out_dir={tmp_path / 'out'}", f"paths.root_dir={tmp_path}"]
        )
    written = sample(scfg)
    png = Path(written["reconstructions"]["grid"])
    w, h = Image.open(png).size
    assert png.is_file() and w > 32 and h > 32  # a grid of input | reconstruction pairs


def test_prompts_for_a_tokenizer_checkpoint_are_ignored_with_a_warning(train_cfg, tmp_path, train_helpers, caplog):
    """A dVAE draws nothing from text: prompts given with its ckpt= produce its reconstruction grid and a WARNING
    saying so (they were ignored silently)."""
    import logging

    T = train_helpers
    cfg = train_cfg("model=dvae", "model.preset=tiny", *T.sizes(), *T.TWO_STEPS)
    train(cfg)
    over = [f"ckpt={T.last_ckpt(cfg)}", f"out_dir={tmp_path / 'out'}", 'prompts=["a red circle"]']
    with caplog.at_level(logging.WARNING, logger="zoo.sample"):
        written = sample(_sample_cfg(*over))
    assert list(written) == ["reconstructions"]
    assert any("dvae checkpoint" in r.getMessage() and "prompts ignored" in r.getMessage() for r in caplog.records)


def test_sample_dalle_writes_grid_images_and_clip_scores(train_cfg, tmp_path, dalle_helpers, train_helpers):
    """zoo-sample on a tiny DALL·E checkpoint (zoo-train, 2 steps) with a tiny CLIP: grid + images + scores; the
    short form (ckpt=) and the long form (generator=dalle generator.dalle_ckpt=) are the same run."""
    import json

    H, T = dalle_helpers, train_helpers
    cfg = train_cfg(*T.tiny_dalle(H, tmp_path))
    train(cfg)
    ckpt = T.last_ckpt(cfg)
    clip = H.tiny_clip_ckpt(tmp_path / "clip.ckpt")
    # two prompts that slug alike and one given twice: every one gets its own files and samples.json entry
    prompts = [
        "a large red circle at the top left",
        "a small blue square at the bottom right",
        "A large red circle at the top left!",
        "a large red circle at the top left",
    ]
    knobs = [
        f"generator.clip_ckpt={clip}",
        f"paths.root_dir={tmp_path}",
        f"prompts={json.dumps(prompts)}",
        "generator.n_candidates=6",
        "n_keep=4",
        "generator.guidance_scale=1.5",
        "generator.top_k=16",
    ]
    written = sample(_sample_cfg(f"ckpt={ckpt}", f"out_dir={tmp_path / 'out'}", *knobs))
    long_form = sample(
        _sample_cfg("generator=dalle", f"generator.dalle_ckpt={ckpt}", f"out_dir={tmp_path / 'long'}", *knobs)
    )
    assert [e["clip_scores"] for e in long_form.values()] == [e["clip_scores"] for e in written.values()]
    saved = json.loads((tmp_path / "out" / "samples.json").read_text())
    keys = prompts[:3] + [prompts[3] + " #2"]
    assert list(saved) == keys == list(written) and [saved[k]["prompt"] for k in keys] == prompts
    assert len({saved[k]["grid"] for k in keys}) == 4 and len({f for k in keys for f in saved[k]["images"]}) == 16
    for prompt in keys:
        entry = saved[prompt]
        w, h = Image.open(entry["grid"]).size
        assert w > 2 * H.RESOLUTION and h >= H.RESOLUTION  # 4 images, nrow=4
        assert len(entry["images"]) == 4 and all(Path(f).is_file() for f in entry["images"])
        assert Image.open(entry["images"][0]).size == (H.RESOLUTION, H.RESOLUTION)
        scores = entry["clip_scores"]
        assert len(scores) == 4 and scores == sorted(scores, reverse=True) and all(0 <= s <= 100 for s in scores)


def test_save_grid_enlarges_pixels_without_smoothing(tmp_path):
    """grid_scale=s: every sample pixel becomes an s x s block of the same colour (nearest), padding scales too."""
    import numpy as np
    import torch

    from zoo.errors import ConfigError
    from zoo.sample import save_grid

    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 6, 6, generator=g)  # in [0, 1]; save_grid takes the models' [-1, 1]
    save_grid(images * 2 - 1, tmp_path / "x1.png", nrow=2, scale=1)
    save_grid(images * 2 - 1, tmp_path / "x4.png", nrow=2, scale=4)
    one, four = np.asarray(Image.open(tmp_path / "x1.png")), np.asarray(Image.open(tmp_path / "x4.png"))
    assert four.shape[0] == 4 * one.shape[0] and four.shape[1] == 4 * one.shape[1]
    pad = 2 * 4
    tile = four[pad : pad + 24, pad : pad + 24]  # first image, 6x6 pixels -> 24x24
    expected = (images[0].permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
    assert np.array_equal(tile[::4, ::4], expected) and np.array_equal(
        tile, np.kron(expected, np.ones((4, 4, 1), np.uint8))
    )
    with pytest.raises(ConfigError, match="grid_scale"):
        save_grid(images, tmp_path / "x0.png", nrow=2, scale=0)


def test_prompt_file_names_are_unique_and_keep_their_prompt():
    from zoo.sample import _output_names, _slug

    assert _slug("a red circle") != _slug("A red circle!") and _slug("") != _slug("   ")
    assert _slug("a red circle").startswith("a_red_circle-") and _slug("").startswith("prompt-")
    assert _slug("a red circle") == _slug("a red circle")  # stable: the same prompt, the same name
    assert _slug("x \udcff") != _slug("x \udcfe")  # surrogates (invalid UTF-8 from argv) hash without crashing
    names = _output_names(["a", "a", "A!", "a", "a #2"])
    assert len({k for k, _ in names}) == 5 and len({s for _, s in names}) == 5
    assert [k for k, _ in names][:4] == ["a", "a #2", "A!", "a #3"]


def test_sample_never_overwrites_one_prompt_with_another(tmp_path, monkeypatch):
    """zoo-sample with a text-to-image generator: prompts that read alike, blank ones and a repeat -> distinct files."""
    import json

    import torch

    import zoo.pipelines.base

    class Generator:
        def generate(self, captions):
            value = (len(captions[0]) % 7) / 7.0  # a different image per prompt
            return torch.full((len(captions), 3, 4, 4), value)

    monkeypatch.setattr(zoo.pipelines.base, "build_generator", lambda *a, **k: Generator())
    prompts = ["a red circle", "A red circle!", "", "   ", "a red circle"]
    scfg = _sample_cfg(
        f"out_dir={tmp_path / 'out'}",
        f"paths.root_dir={tmp_path}",
        f"prompts={json.dumps(prompts)}",
        "n_keep=2",
        "grid_scale=1",
    )
    written = sample(scfg)
    saved = json.loads((tmp_path / "out" / "samples.json").read_text())
    assert saved == written and len(saved) == 5
    assert [e["prompt"] for e in saved.values()] == prompts
    assert all(len(e["images"]) == 2 and "clip_scores" not in e for e in saved.values())
    grids = [e["grid"] for e in saved.values()]
    assert len(set(grids)) == 5 and all(Path(g).is_file() for g in grids)
    assert len(list((tmp_path / "out").glob("*.png"))) == 5  # nothing overwritten


@pytest.mark.parametrize(
    "old, new",
    [
        ("top_k=8", "n_keep"),
        ("clip_ckpt=x.ckpt", "generator.clip_ckpt"),
        ("sample_top_k=4", "generator.top_k"),
        ("n_per_prompt=2", "n_keep"),
    ],
)
def test_renamed_options_name_the_new_one(tmp_path, old, new):
    from zoo.errors import ConfigError

    with pytest.raises(ConfigError, match=f"renamed: {old.split('=')[0]}= -> {new}"):
        sample(_sample_cfg(old, f"out_dir={tmp_path / 'out'}", 'prompts=["a"]'))


def test_checkpoint_of_another_generator_names_the_option(train_cfg, tmp_path):
    """ckpt=<dalle file> with a generator that takes no dalle_ckpt: the error names generator=dalle."""
    from zoo.errors import ConfigError

    ckpt = tmp_path / "fake.ckpt"
    torch.save({"zoo_component": "dalle", "state_dict": {}}, ckpt)
    with pytest.raises(ConfigError, match="generator=dalle"):
        sample(
            _sample_cfg(
                f"ckpt={ckpt}", "generator=folder", "generator.path=/x", f"out_dir={tmp_path / 'o'}", 'prompts=["a"]'
            )
        )


def test_sample_dalle_without_prompts_writes_its_val_grid(train_cfg, tmp_path, dalle_helpers, train_helpers):
    """zoo-sample ckpt=<dalle ckpt> with no prompts: the model's grid on val captions (sample.yaml). The val data is
    rebuilt from the checkpoint without its text tokenizer node, so the captions are tokenized with the model's own
    tokenizer (it raised KeyError: 'text_tokens')."""
    H, T = dalle_helpers, train_helpers
    cfg = train_cfg(*T.tiny_dalle(H, tmp_path))
    train(cfg)
    written = sample(_sample_cfg(f"ckpt={T.last_ckpt(cfg)}", f"out_dir={tmp_path / 'out'}", "prompts=[]"))
    assert list(written) == ["val_samples"]  # real | sample pairs, not a tokenizer's reconstructions
    w, h = Image.open(written["val_samples"]["grid"]).size
    assert w > 2 * H.RESOLUTION and h > H.RESOLUTION


def test_prompt_given_without_brackets_is_one_prompt(tmp_path, monkeypatch):
    """prompts='a red circle' (a string, not a list) is one prompt: it was iterated into one prompt per character
    (12 folders of samples for " ", "a", "c", ...)."""
    import zoo.pipelines.base as base

    seen = []

    def fake_keep_best(generator, prompts, n_keep, seed=0):
        seen.append(list(prompts))
        return {"images": torch.zeros(len(prompts), n_keep, 3, 4, 4), "scores": None}

    monkeypatch.setattr(base, "build_generator", lambda node, what: object())
    monkeypatch.setattr(base, "keep_best", fake_keep_best)
    written = sample(_sample_cfg("prompts=a red circle", "n_keep=1", f"out_dir={tmp_path}"))
    assert seen == [["a red circle"]] and list(written) == ["a red circle"]


@pytest.mark.parametrize(
    "bad", ["nrow=0", "nrow=-1", "nrow=abc", "grid_scale=0", "grid_scale=1.5", "n_keep=abc", "seed=abc"]
)
def test_bad_grid_and_count_options_fail_before_sampling(tmp_path, monkeypatch, bad):
    """nrow and grid_scale were first read when the grids were saved, after the whole sampling (nrow=0: a
    ZeroDivisionError inside torchvision; nrow=-1 a negative tensor size; grid_scale=1.5 silently 1), and n_keep=abc /
    seed=abc were bare ValueError tracebacks: a ConfigError naming the key, before any image is drawn."""
    import zoo.pipelines.base as base

    drawn = []
    monkeypatch.setattr(base, "build_generator", lambda node, what: object())
    monkeypatch.setattr(base, "keep_best", lambda *a, **k: drawn.append(1))
    key = bad.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{key}=\S+ must be a whole number"):
        sample(_sample_cfg('prompts=["a red circle"]', f"out_dir={tmp_path}", bad))
    assert not drawn


def test_sample_run_json_records_what_reproduces_the_images(tmp_path, monkeypatch):
    """samples.json named only prompts and files; Hydra's .hydra/ is in the run dir, not in an out_dir= elsewhere,
    and names checkpoints by a path that the next save overwrites. sample_run.json beside the images holds the seed,
    n_keep, the generator's options, each checkpoint's path and content digest, and the weights each stage used."""
    import hashlib
    import json

    import zoo.pipelines.base as base

    class Fixed:
        weights = "ema"

        def generate(self, captions):
            return torch.zeros(len(captions), 3, 8, 8)

    monkeypatch.setattr(base, "build_generator", lambda node, what: Fixed())
    ckpt = tmp_path / "dalle.ckpt"
    ckpt.write_bytes(b"weights v1")
    out = tmp_path / "elsewhere"
    cfg = _sample_cfg(
        'prompts=["a red circle"]', f"out_dir={out}", f"generator.dalle_ckpt={ckpt}", "seed=7", "n_keep=2"
    )
    sample(cfg)
    record = json.loads((out / "sample_run.json").read_text())
    digest = hashlib.blake2b(b"weights v1", digest_size=16).hexdigest()
    assert record["seed"] == 7 and record["n_keep"] == 2 and record["prompts"] == ["a red circle"]
    assert record["checkpoints"] == {"generator.dalle_ckpt": {"path": str(ckpt.resolve()), "blake2b": digest}}
    assert record["generator"]["n_candidates"] is None  # as configured: 32 for a CLIP to rank, none here
    assert record["generator"]["seed"] == 7  # resolved ${seed}
    assert record["weights"] == "ema"


def _count_checkpoint_hashes(monkeypatch) -> list:
    """A generator that draws zeros, and the list of files zoo.data.datamodule.file_digest reads (each call as in a
    new process: no in-process memo), for the tests of zoo-sample's digest cache."""
    import zoo.data.datamodule as datamodule
    import zoo.pipelines.base as base

    class Fixed:
        def generate(self, captions):
            return torch.zeros(len(captions), 3, 8, 8)

    monkeypatch.setattr(base, "build_generator", lambda node, what: Fixed())
    hashed = []
    real = datamodule.file_digest

    def counting(path):
        hashed.append(Path(path))
        datamodule._DIGESTS.clear()
        return real(path)

    monkeypatch.setattr(datamodule, "file_digest", counting)
    return hashed


def test_sample_run_json_hashes_a_checkpoint_once_per_file_version(tmp_path, monkeypatch):
    """Every run hashed every checkpoint whole before sampling (GBs at paper sizes). The digest is kept in
    paths.cache_dir per file version: a second run reads it without reading the file; the file rewritten in place,
    same size and its mtime put back, is hashed again and recorded with its new digest."""
    import hashlib
    import os

    hashed = _count_checkpoint_hashes(monkeypatch)
    ckpt = tmp_path / "dalle.ckpt"
    ckpt.write_bytes(b"weights v1")
    out = tmp_path / "o"
    over = ['prompts=["a red circle"]', f"out_dir={out}", f"generator.dalle_ckpt={ckpt}", "n_keep=1"]
    over.append(f"paths.cache_dir={tmp_path / 'cache'}")

    def recorded():
        sample(_sample_cfg(*over))
        return json.loads((out / "sample_run.json").read_text())["checkpoints"]["generator.dalle_ckpt"]["blake2b"]

    v1 = hashlib.blake2b(b"weights v1", digest_size=16).hexdigest()
    assert recorded() == v1 and len(hashed) == 1
    assert recorded() == v1 and len(hashed) == 1  # from the cache: the file not read again
    st = ckpt.stat()
    ckpt.write_bytes(b"weights v2")  # same size
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old mtime
    assert recorded() == hashlib.blake2b(b"weights v2", digest_size=16).hexdigest() and len(hashed) == 2


@pytest.mark.parametrize("inside", [False, True])
def test_an_out_dir_that_is_a_file_is_refused_before_the_generator_is_built(tmp_path, monkeypatch, inside):
    """out_dir=<an existing file> (or a folder under one) was mkdir's FileExistsError / NotADirectoryError traceback;
    now a ConfigError naming out_dir and the file, before the generator is built."""
    import zoo.pipelines.base as base

    built = []
    monkeypatch.setattr(base, "build_generator", lambda node, what: built.append(1))
    (tmp_path / "grid.png").write_bytes(b"")
    out = tmp_path / "grid.png" / "sub" if inside else tmp_path / "grid.png"
    with pytest.raises(ConfigError, match=r"^out_dir=.*grid\.png is a file, not a folder"):
        sample(_sample_cfg('prompts=["a red circle"]', f"out_dir={out}"))
    assert not built


@pytest.mark.parametrize("bad", ["n_keep=0", "generator.n_candidates=0"])
def test_zero_images_asked_is_a_config_error(train_cfg, tmp_path, dalle_helpers, train_helpers, bad):
    """n_keep=0 or generator.n_candidates=0 fail with a ConfigError naming the key, before sampling (they raised
    ZeroDivisionError from inside the pipeline)."""
    from zoo.errors import ConfigError

    H, T = dalle_helpers, train_helpers
    cfg = train_cfg(*T.tiny_dalle(H, tmp_path))
    train(cfg)
    key = bad.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        sample(_sample_cfg(f"ckpt={T.last_ckpt(cfg)}", 'prompts=["a red circle"]', f"out_dir={tmp_path / 'o'}", bad))


def test_samples_json_records_the_upsampled_prompts(tmp_path, monkeypatch):
    """With a prompt upsampler (DALL·E 3), samples.json says what each prompt was rewritten to: one rewrite per
    repeated candidate (each candidate's seed), none for a generator without an upsampler."""
    import json

    import zoo.pipelines.base as base

    class Gen:
        seed = 9  # its own, set apart from seed=4: candidate i is drawn (and rewritten) under 9 + i

        def generate(self, captions):
            return torch.zeros(len(captions), 3, 4, 4)

    class Rewriter:
        def upsample(self, prompts, seed=0):
            return [f"{p}, scene {seed}" for p in prompts]

    monkeypatch.setattr(base, "build_generator", lambda node, what: base.PromptUpsampled(Gen(), Rewriter()))
    sample(_sample_cfg('prompts=["a red circle"]', "n_keep=2", "seed=4", f"out_dir={tmp_path}"))
    entry = json.loads((tmp_path / "samples.json").read_text())["a red circle"]
    assert entry["upsampled_prompts"] == ["a red circle, scene 9", "a red circle, scene 10"]
    monkeypatch.setattr(base, "build_generator", lambda node, what: Gen())
    sample(_sample_cfg('prompts=["a red circle"]', "n_keep=2", f"out_dir={tmp_path / 'plain'}"))
    assert "upsampled_prompts" not in json.loads((tmp_path / "plain" / "samples.json").read_text())["a red circle"]


def _stamped(path: Path, component: str) -> Path:
    """A file that says it holds ``component`` (all zoo-sample reads before it picks the generator)."""
    from zoo.checkpoint import atomic_torch_save

    atomic_torch_save({"zoo_component": component, "state_dict": {}}, path)
    return path


@pytest.mark.parametrize("component", ["diffusion_prior", "ar_prior"])
def test_a_prior_checkpoint_goes_to_the_unclip_generator(tmp_path, monkeypatch, component):
    """A prior draws CLIP image embeddings, not images: ckpt=<prior> with prompts is unCLIP's prior_ckpt (it used to
    warn "prompts ignored, writing its own sample grid" and then fail: a prior has no grid), and without prompts the
    error says how to sample it."""
    import zoo.pipelines.base
    from zoo.errors import ConfigError

    ckpt = _stamped(tmp_path / "prior.ckpt", component)
    seen = {}

    class Generator:
        def generate(self, captions):
            return torch.zeros(len(captions), 3, 4, 4)

    def build(node, what):
        seen.update(node)
        return Generator()

    monkeypatch.setattr(zoo.pipelines.base, "build_generator", build)
    common = [f"out_dir={tmp_path / 'out'}", f"paths.root_dir={tmp_path}", f"ckpt={ckpt}"]
    sample(_sample_cfg(*common, "generator=unclip", 'prompts=["a red circle"]'))
    assert seen["prior_ckpt"] == str(ckpt) and seen["decoder_ckpt"] is None
    with pytest.raises(ConfigError, match=r"add generator=unclip.*generator.prior_ckpt="):
        sample(_sample_cfg(*common, 'prompts=["a red circle"]'))
    article = "an" if component == "ar_prior" else "a"  # "is a ar_prior checkpoint" before zoo.config.with_article
    with pytest.raises(ConfigError, match=rf"is {article} {component} checkpoint: it turns captions into CLIP image"):
        sample(_sample_cfg(*common))


@pytest.mark.parametrize("component", ["clip", "noised_clip", "captioner", "prompt_upsampler"])
@pytest.mark.parametrize("prompts", ['prompts=["a red circle"]', "prompts=[]"])
def test_a_checkpoint_that_draws_no_images_says_what_it_is_for(tmp_path, component, prompts):
    from zoo.errors import ConfigError

    ckpt = _stamped(tmp_path / "m.ckpt", component)
    with pytest.raises(ConfigError, match=rf"is a {component} checkpoint, which draws no images \(fix: it "):
        sample(_sample_cfg(f"out_dir={tmp_path / 'out'}", f"paths.root_dir={tmp_path}", f"ckpt={ckpt}", prompts))


def test_prompts_file_adds_one_prompt_per_line_and_the_bar_is_on(tmp_path, monkeypatch):
    import zoo.pipelines.base as base

    seen, nodes = [], []

    def fake_keep_best(generator, prompts, n_keep, seed=0):
        seen.append(list(prompts))
        return {"images": torch.zeros(len(prompts), n_keep, 3, 4, 4), "scores": None}

    monkeypatch.setattr(base, "build_generator", lambda node, what: nodes.append(node) or object())
    monkeypatch.setattr(base, "keep_best", fake_keep_best)
    f = tmp_path / "prompts.txt"
    f.write_text("# the demo's prompts\na red circle\n\n  a blue star  \n# done\n", encoding="utf-8")
    sample(_sample_cfg('prompts=["a green heart"]', f"prompts_file={f}", "n_keep=1", f"out_dir={tmp_path / 'o'}"))
    assert seen == [["a green heart", "a red circle", "a blue star"]]
    assert nodes[0].progress is True  # zoo-sample shows a bar per generator call (progress=false: quiet)
    sample(_sample_cfg(f"prompts_file={f}", "progress=false", "n_keep=1", f"out_dir={tmp_path / 'q'}"))
    assert nodes[1].progress is False and seen[1] == ["a red circle", "a blue star"]
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n", encoding="utf-8")
    for path, message in [(tmp_path / "missing.txt", "no such file"), (empty, "no prompts in it")]:
        with pytest.raises(ConfigError, match=message):
            sample(_sample_cfg(f"prompts_file={path}", f"out_dir={tmp_path / 'x'}"))


def test_a_second_run_into_the_same_out_dir_leaves_only_its_own_images(tmp_path, monkeypatch):
    """out_dir= given twice (n_keep=4, then 2): the prompt's folder held the first run's 02.png, 03.png beside the
    second run's two images, which samples.json does not list."""
    import zoo.pipelines.base as base

    def fake_keep_best(generator, prompts, n_keep, seed=0):
        return {"images": torch.zeros(len(prompts), n_keep, 3, 4, 4), "scores": None}

    monkeypatch.setattr(base, "build_generator", lambda node, what: object())
    monkeypatch.setattr(base, "keep_best", fake_keep_best)
    out = tmp_path / "o"
    for k in (4, 2):
        written = sample(_sample_cfg('prompts=["a red circle"]', f"n_keep={k}", f"out_dir={out}"))
    entry = written["a red circle"]
    folder = Path(entry["images"][0]).parent
    (folder / "notes.png").write_bytes(b"mine")  # a file zoo-sample did not name is left alone
    sample(_sample_cfg('prompts=["a red circle"]', "n_keep=2", f"out_dir={out}"))
    assert sorted(p.name for p in folder.iterdir()) == ["00.png", "01.png", "notes.png"]
    assert [Path(f).name for f in entry["images"]] == ["00.png", "01.png"]


def test_a_long_prompt_list_is_sampled_and_written_a_part_at_a_time(tmp_path, monkeypatch):
    """A prompts_file of thousands of lines was one generator call: every image held in memory until the last was
    drawn, nothing written before (a crash lost them all). Now PROMPTS_PER_CALL prompts per call, each part written
    (and listed in samples.json) before the next is drawn."""
    import json

    import zoo.pipelines.base as base
    from zoo.sample import PROMPTS_PER_CALL

    calls = []

    def fake_keep_best(generator, prompts, n_keep, seed=0):
        calls.append(list(prompts))
        if len(calls) == 3:
            raise MemoryError("pretend")
        return {"images": torch.zeros(len(prompts), n_keep, 3, 4, 4), "scores": None}

    monkeypatch.setattr(base, "build_generator", lambda node, what: object())
    monkeypatch.setattr(base, "keep_best", fake_keep_best)
    f = tmp_path / "prompts.txt"
    f.write_text("".join(f"prompt {i}\n" for i in range(2 * PROMPTS_PER_CALL + 3)), encoding="utf-8")
    out = tmp_path / "o"
    with pytest.raises(MemoryError):
        sample(_sample_cfg(f"prompts_file={f}", "n_keep=1", f"out_dir={out}"))
    assert [len(c) for c in calls] == [PROMPTS_PER_CALL, PROMPTS_PER_CALL, 3]
    listed = json.loads((out / "samples.json").read_text())
    assert list(listed) == [f"prompt {i}" for i in range(2 * PROMPTS_PER_CALL)]
    assert all(Path(e["grid"]).is_file() and Path(e["images"][0]).is_file() for e in listed.values())


def test_each_call_of_a_long_prompt_list_draws_from_its_own_seed(tmp_path, monkeypatch):
    """Every call of PROMPTS_PER_CALL prompts started from the seed, so prompt k and prompt k + 16 were drawn from the
    same noise: a prompt listed twice, 16 apart, got the same images (measured on unCLIP: identical PNGs). Call j now
    runs under chunk_seed(seed, j), as zoo-eval's batches; call 0 (every list of up to 16 prompts) keeps the seed, and
    the generator's seed is restored after. A generator without a seed gets the call's seed through keep_best."""
    import zoo.pipelines.base as base
    from zoo.pipelines.base import chunk_seed
    from zoo.sample import PROMPTS_PER_CALL

    class Seeded:
        seed = 5

        def __init__(self):
            self.seen = []

        def candidates(self, captions, n):
            self.seen.append(self.seed)
            return torch.zeros(len(captions), n, 3, 4, 4)

        def generate(self, captions):
            return self.candidates(captions, 1)[:, 0]

    class Plain:
        def __init__(self):
            self.seen = []

        def generate(self, captions):
            self.seen.append(torch.initial_seed())
            return torch.zeros(len(captions), 3, 4, 4)

    prompts = json.dumps(["a red circle"] * (PROMPTS_PER_CALL + 1))
    seeded = Seeded()
    for generator, want in ((seeded, [5, chunk_seed(5, 1)]), (Plain(), [3, chunk_seed(3, 1)])):
        monkeypatch.setattr(base, "build_generator", lambda node, what, g=generator: g)
        sample(_sample_cfg(f"prompts={prompts}", "n_keep=1", "seed=3", f"out_dir={tmp_path / 'o'}"))
        assert generator.seen == want
    assert seeded.seed == 5  # restored


def test_a_generator_with_its_own_seed_and_only_generate_is_drawn_under_that_seed(tmp_path, monkeypatch):
    """A generator with a seed set apart from zoo-sample's seed and no candidates(): seeded_chunk set its seed from
    its own, but keep_best got the call's seed from cfg.seed, and RepeatedCandidates then drew candidate i under that
    one (the generator's seed overwritten): two rules for one seed. Now both use the generator's: candidate i of call
    j runs under chunk_seed(generator.seed, j) + i, for the torch RNG and the generator's seed alike."""
    import zoo.pipelines.base as base
    from zoo.pipelines.base import chunk_seed
    from zoo.sample import PROMPTS_PER_CALL

    class OwnSeed:
        seed = 5

        def __init__(self):
            self.seen = []

        def generate(self, captions):
            self.seen.append((self.seed, torch.initial_seed()))
            return torch.zeros(len(captions), 3, 4, 4)

    gen = OwnSeed()
    monkeypatch.setattr(base, "build_generator", lambda node, what: gen)
    prompts = json.dumps(["a red circle"] * (PROMPTS_PER_CALL + 1))
    sample(_sample_cfg(f"prompts={prompts}", "n_keep=2", "seed=3", f"out_dir={tmp_path / 'o'}"))
    assert gen.seen == [(chunk_seed(5, j) + i,) * 2 for j in (0, 1) for i in (0, 1)]
    assert gen.seed == 5  # restored


@pytest.mark.parametrize("prompts", ['prompts=[1984,"a red circle"]', "prompts=[true]", "prompts=[3.5]", "prompts=7"])
def test_a_prompt_hydra_reads_as_a_number_is_refused_before_sampling(tmp_path, monkeypatch, prompts):
    """prompts=[1984] reached the file naming as an int after every prompt was sampled ('int' object has no
    attribute 'lower')."""
    import zoo.pipelines.base as base

    monkeypatch.setattr(base, "build_generator", lambda node, what: pytest.fail("built the generator"))
    with pytest.raises(
        ConfigError, match=r"prompts.*(is not text, Hydra read it as a (number|bool) \(fix: quote it|a list of prompts)"
    ):
        sample(_sample_cfg(prompts, f"out_dir={tmp_path / 'o'}"))


def test_a_prompts_file_with_a_byte_order_mark_reads_as_its_text(tmp_path):
    """Windows Notepad's UTF-8 starts with U+FEFF and ends lines with CRLF: the mark is not a prompt's first
    character, and a first '# comment' line stays a comment."""
    from zoo.sample import read_prompts_file

    f = tmp_path / "prompts.txt"
    f.write_bytes("\ufeffa red circle\r\n\r\n  un cercle bleu é \r\n".encode("utf-8"))
    assert read_prompts_file(str(f)) == ["a red circle", "un cercle bleu é"]
    f.write_bytes("\ufeff# the demo's prompts\r\na red circle\r\n".encode("utf-8"))
    assert read_prompts_file(str(f)) == ["a red circle"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA device")
def test_a_cuda_generator_without_a_gpu_names_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"generator\.device=cuda, but no CUDA device .*generator\.device=cpu"):
        sample(_sample_cfg("generator=glide", "generator.device=cuda", 'prompts=["x"]', f"out_dir={tmp_path}"))


@pytest.mark.parametrize("device", ["gpu", "cpux"])
def test_a_device_that_is_no_torch_device_is_named_not_called_a_corrupt_checkpoint(tmp_path, device):
    """generator.device=gpu (a typo) failed inside the checkpoint load and was reported as a truncated or corrupt
    checkpoint ("use another checkpoint"): a ConfigError naming the option before anything loads."""
    with pytest.raises(ConfigError, match=rf"generator\.device={device} is not a torch device .*generator\.device=cpu"):
        sample(_sample_cfg("generator=glide", f"generator.device={device}", 'prompts=["x"]', f"out_dir={tmp_path}"))


@pytest.mark.parametrize("option", ["progress=maybe", "generator.use_ema=no"])
def test_a_switch_given_as_a_word_is_refused_before_anything_loads(tmp_path, option):
    """progress=maybe and generator.use_ema=no reached bool() as strings and meant true, without a word."""
    key = option.split("=")[0]
    with pytest.raises(ConfigError, match=rf"{key}='\S+' must be true or false"):
        sample(_sample_cfg("generator=glide", option, 'prompts=["x"]', f"out_dir={tmp_path}"))


def test_a_run_folder_or_an_export_given_as_ckpt_is_named(tmp_path):
    """ckpt=<run dir> was "checkpoint not found: <run dir>" although it exists (zoo-export names it, with the file
    to give); ckpt=<a zoo-export folder> too, and its model.safetensors "was not written by zoo-train"."""
    from zoo.export import checkpoint_dict, save_export
    from zoo.models.vqvae.lit import VQVAELit

    lit = VQVAELit(preset="tiny")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save(checkpoint_dict(lit), tmp_path / "run" / "checkpoints" / "last.ckpt")
    save_export(lit, tmp_path / "export")
    out = f"out_dir={tmp_path / 'out'}"
    with pytest.raises(ConfigError, match=r"is a folder; zoo-sample reads a checkpoint file \(fix: ckpt=.*last.ckpt\)"):
        sample(_sample_cfg(f"ckpt={tmp_path / 'run'}", out))
    for ckpt in (tmp_path / "export", tmp_path / "export" / "model.safetensors"):
        with pytest.raises(ConfigError, match=r"zoo-export folder.*zoo-sample reads the zoo-train checkpoint \(fix: "):
            sample(_sample_cfg(f"ckpt={ckpt}", out))
    assert not (tmp_path / "out").exists()  # refused before anything is written


@pytest.mark.parametrize("reader", ["checkpoint_component", "trained_scene_resolution"])
def test_a_checkpoints_plain_values_are_read_without_its_weights(tmp_path, reader):
    """zoo-sample ckpt=<file> loaded the whole checkpoint to read its component name (a paper DALL·E's GBs), before
    the generator read it again; trained_scene_resolution (scripts/clip_recall.py, binding_probe.py) loaded a whole
    CLIP for data.resolution. Memory-mapped now (zoo.checkpoint.peek_checkpoint): the bytes the process reads
    (/proc/self/io rchar) stay far below the 128 MB of weights; a file that is not a checkpoint, or one that names
    code, is still refused by name."""
    import pickle

    from zoo.checkpoint import UnsafeCheckpointError
    from zoo.models.clip.scorer import trained_scene_resolution
    from zoo.sample import checkpoint_component

    io = Path("/proc/self/io")
    if not io.is_file():
        pytest.skip("needs Linux's /proc/self/io to count the bytes read")

    def bytes_read() -> int:
        return int(next(line for line in io.read_text().splitlines() if line.startswith("rchar:")).split()[1])

    read, want = {
        "checkpoint_component": (checkpoint_component, "dalle"),
        "trained_scene_resolution": (trained_scene_resolution, 96),
    }[reader]
    ckpt = tmp_path / "big.ckpt"
    weights = {"w": torch.ones(32 << 20)}
    torch.save({"state_dict": weights, "zoo_component": "dalle", "zoo_config": {"data": {"resolution": 96}}}, ckpt)
    before = bytes_read()
    assert read(str(ckpt)) == want
    assert bytes_read() - before < 16 << 20  # the whole load read all 128 MB
    code = tmp_path / "code.ckpt"
    code.write_bytes(pickle.dumps({"zoo_component": print}))  # names a global: could run code
    with pytest.raises(UnsafeCheckpointError, match="refused to load"):
        read(str(code))


def test_a_ckpt_that_is_no_checkpoint_is_refused_by_name(tmp_path):
    from zoo.checkpoint import CorruptCheckpointError

    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all" * 100)
    with pytest.raises(CorruptCheckpointError, match=r"garbage\.ckpt is (corrupt|truncated)"):
        sample(_sample_cfg(f"ckpt={garbage}", f"out_dir={tmp_path / 'o'}"))


def test_the_digest_cache_prunes_entries_of_deleted_or_replaced_checkpoints(tmp_path, monkeypatch):
    """The digest cache wrote one small file per checkpoint version and never removed any: a sweep of many
    checkpoints, or one path re-trained many times, grew paths.cache_dir/file_digests without bound. Now each path
    has one entry and a run that hashes prunes the entries of checkpoints deleted or saved again since; a live
    checkpoint's entry stays and its next run still reads the digest without reading the file."""
    hashed = _count_checkpoint_hashes(monkeypatch)
    cache = tmp_path / "cache"
    entries = cache / "file_digests"
    entries.mkdir(parents=True)
    (entries / ("0" * 32)).write_text("1" * 32)  # an earlier release's per-version entry: no run reads it

    def run(ckpt):
        sample(
            _sample_cfg(
                'prompts=["a red circle"]',
                f"out_dir={tmp_path / 'o'}",
                f"generator.dalle_ckpt={ckpt}",
                "n_keep=1",
                f"paths.cache_dir={cache}",
            )
        )

    sweep = [tmp_path / f"step{i}.ckpt" for i in range(4)]
    for i, ckpt in enumerate(sweep):
        ckpt.write_bytes(b"weights %d" % i)
        run(ckpt)
    assert len(list(entries.iterdir())) == 4  # one per live checkpoint; the old-format entry pruned
    for ckpt in sweep[:2]:
        ckpt.unlink()  # the sweep's early checkpoints deleted
    sweep[2].write_bytes(b"weights 2, trained again")  # and one path saved again
    run(sweep[2])
    assert len(list(entries.iterdir())) == 2  # the deleted ones' entries gone, the re-saved path has one
    hashed.clear()
    run(sweep[3])
    run(sweep[2])
    assert hashed == []  # both live entries kept, and read without hashing the files


def test_the_short_form_takes_the_options_of_the_checkpoint_s_own_generator(tmp_path):
    """zoo-sample ckpt=<glide ckpt> generator.steps=4 failed in Hydra ("Key 'steps' is not in struct"): the default
    generator=dalle was composed before the file was read (found by helper-126). The file's generator is now chosen on
    the command line first (real `python -m zoo.sample ... --cfg job`); a generator the user names, a checkpoint that
    draws no images from text or a missing file leave the command line as given."""
    import os
    import subprocess
    import sys

    from zoo.checkpoint import atomic_torch_save
    from zoo.sample import short_form_generator

    files = {}
    for component in ("glide", "unclip_decoder", "dalle", "vqvae"):
        files[component] = str(atomic_torch_save({"zoo_component": component, "state_dict": {}}, tmp_path / component))
    assert short_form_generator([f"ckpt={files['glide']}", "generator.steps=4"])[0] == "generator=glide"
    assert short_form_generator([f"ckpt={files['unclip_decoder']}"])[0] == "generator=unclip"
    for args in (
        [f"ckpt={files['glide']}", "generator=glide", "generator.steps=4"],
        [f"ckpt={files['glide']}", "+generator=dalle"],
        [f"ckpt={files['vqvae']}"],
        [f"ckpt={tmp_path / 'missing.ckpt'}"],
        ["generator.steps=4"],
    ):
        assert short_form_generator(args) == args
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "zoo.sample", f"ckpt={files['glide']}", "generator.steps=4", "--cfg", "job"],
        cwd=root,
        env=dict(os.environ, PYTHONPATH=str(root), HYDRA_FULL_ERROR="1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "  glide_ckpt: null\n" in done.stdout and "  steps: 4\n" in done.stdout, (
        done.stderr[-2000:]
    )
