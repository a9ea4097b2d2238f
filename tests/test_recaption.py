"""zoo-recaption (DALL·E 3's dataset recaptioning): the file loads with weights_only and carries the captioner's
digest; a run killed after k chunks resumes to the identical file (greedy and nucleus); the Hydra command composes
and runs; the DataModule serves the synthetic captions at the mix ratio, deterministically per (seed, index)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from zoo.errors import ConfigError

D = 32  # the captioner's tiny preset CLIP width
WORDS = [
    "a red circle",
    "a large blue star at the top left",
    "two objects on a gray background",
    "a small green heart in the middle center",
    "the yellow cross",
    "cool shapes wallpaper",
]


def _captioner_ckpt(path: Path) -> Path:
    from zoo.checkpoint import atomic_torch_save
    from zoo.models.captioner.lit import CaptionerLit
    from zoo.text import TrainedBPETokenizer

    tok = TrainedBPETokenizer.train(WORDS * 4, vocab_size=300, context_length=24)
    net = {"vocab_size": 300, "text_len": 24}
    torch.manual_seed(0)
    lit = CaptionerLit(preset="tiny", net=net, text_tokenizer=tok.to_spec())
    hp = {"preset": "tiny", "net": net, "text_tokenizer": tok.to_spec()}
    atomic_torch_save(
        {
            "zoo_component": "captioner",
            "hyper_parameters": hp,
            "state_dict": lit.state_dict(),
            "zoo_config": {"data": {"caption_style": "descriptive"}},
        },
        path,
    )
    return path


def _features(path: Path, n: int) -> Path:
    from zoo.checkpoint import atomic_torch_save

    emb = torch.nn.functional.normalize(torch.randn(n, D, generator=torch.Generator().manual_seed(0)), dim=-1)
    atomic_torch_save({"clip_image_emb": emb, "clip_text_emb": emb}, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("recaption")
    return _captioner_ckpt(d / "captioner.ckpt"), _features(d / "train_clip.pt", 21)


def _run(ckpt, feats, out, decoding="greedy", fail_after=None, monkeypatch=None, batch_size=4):
    from zoo.checkpoint import load_module
    from zoo.embed import load_embeddings
    from zoo.recaption import file_digest, recaption

    cap = load_module(ckpt, expect=("captioner",))
    emb = load_embeddings(feats)["clip_image_emb"]
    calls = []

    def embeddings(a, b):
        if fail_after is not None and len(calls) >= fail_after:
            raise KeyboardInterrupt("simulated kill")
        calls.append((a, b))
        return emb[a:b]

    path = recaption(
        cap,
        embeddings,
        len(emb),
        out,
        captioner_digest=file_digest(ckpt),
        style="synthetic_descriptive",
        source={"features": str(feats)},
        decoding={"method": decoding},
        seed=3,
        batch_size=batch_size,
        chunk_size=5,
        progress=False,
    )
    return path, calls


@pytest.mark.parametrize("decoding", ["greedy", "nucleus"])
def test_file_loads_weights_only_and_resume_after_kill_is_identical(files, tmp_path, decoding):
    ckpt, feats = files
    ref, calls = _run(ckpt, feats, tmp_path / "ref.pt", decoding)
    assert len(calls) == 5  # 21 items in chunks of 5
    obj = torch.load(ref, weights_only=True)
    assert set(obj) == {"captions", "meta"} and len(obj["captions"]) == 21
    assert all(isinstance(c, str) for c in obj["captions"])
    meta = obj["meta"]
    assert meta["n"] == 21 and meta["style"] == "synthetic_descriptive"
    assert meta["captioner_digest"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert not list(tmp_path.glob(".ref.pt.chunks-*"))  # the work directory is gone

    out = tmp_path / "resumed.pt"
    with pytest.raises(KeyboardInterrupt):
        _run(ckpt, feats, out, decoding, fail_after=2)
    assert not out.exists()
    work = list(tmp_path.glob(".resumed.pt.chunks-*"))
    assert len(work) == 1 and len(list(work[0].glob("chunk-*.pt"))) == 2  # the kill left the finished chunks
    _, calls = _run(ckpt, feats, out, decoding)
    assert calls == [(10, 15), (15, 20), (20, 21)]  # finished chunks skipped
    assert torch.load(out, weights_only=True)["captions"] == obj["captions"]


@pytest.mark.parametrize("decoding", ["greedy", "nucleus"])
def test_a_resume_with_another_batch_size_is_identical_to_an_uninterrupted_run(files, tmp_path, decoding):
    """One generator per chunk, consumed batch by batch as (batch, vocabulary) draws, gave another nucleus caption to
    16 of 21 items at batch_size 2 than at 4: a run killed at 4 and restarted at 2 (e.g. after running out of memory)
    mixed two sampling streams. Each item draws from its own generator now: the batch size changes no caption."""
    ckpt, feats = files
    by4 = torch.load(_run(ckpt, feats, tmp_path / "by4.pt", decoding)[0], weights_only=True)["captions"]
    by3 = torch.load(_run(ckpt, feats, tmp_path / "by3.pt", decoding, batch_size=3)[0], weights_only=True)
    assert by3["captions"] == by4
    out = tmp_path / "resumed.pt"
    with pytest.raises(KeyboardInterrupt):
        _run(ckpt, feats, out, decoding, fail_after=2)
    _, calls = _run(ckpt, feats, out, decoding, batch_size=2)
    assert calls == [(10, 15), (15, 20), (20, 21)]  # the finished chunks are reused
    assert torch.load(out, weights_only=True)["captions"] == by4


def test_a_restart_with_changed_options_says_the_finished_chunks_are_not_reused(files, tmp_path, caplog):
    ckpt, feats = files
    out = tmp_path / "out.pt"
    with pytest.raises(KeyboardInterrupt):
        _run(ckpt, feats, out, "nucleus", fail_after=2)
    with caplog.at_level("WARNING", logger="zoo.recaption"):
        _, calls = _run(ckpt, feats, out, "greedy")
    assert calls[0] == (0, 5) and "not reused" in caplog.text


def _compose(tmp_path, *overrides):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return compose("recaption", overrides=[*overrides, f"paths.root_dir={tmp_path}"])


def test_zoo_recaption_command(files, tmp_path):
    from zoo.recaption import load_recaptions, run

    ckpt, feats = files
    out = tmp_path / "captions.pt"
    cfg = _compose(tmp_path, f"ckpt={ckpt}", f"features={feats}", f"out={out}", "chunk_size=8", "progress=false")
    assert run(cfg) == out
    r = load_recaptions(out)
    assert len(r["captions"]) == 21 and r["meta"]["style"] == "synthetic_descriptive"  # from the checkpoint's data
    assert r["meta"]["decoding"] == {}  # the checkpoint's defaults
    with pytest.raises(ConfigError, match="captioner"):
        run(_compose(tmp_path, f"ckpt={tmp_path / 'missing.ckpt'}", f"features={feats}", f"out={out}"))
    with pytest.raises(ConfigError, match="32-d"):
        wide = _features(tmp_path / "wide.pt", 4)
        from zoo.checkpoint import atomic_torch_save

        atomic_torch_save({"clip_image_emb": torch.randn(4, 16)}, wide)
        run(_compose(tmp_path, f"ckpt={ckpt}", f"features={wide}", f"out={out}"))


def test_zoo_recaption_computes_embeddings_with_a_clip(files, tmp_path, dalle_helpers):
    from zoo.recaption import load_recaptions, run

    ckpt, _ = files
    clip = dalle_helpers.tiny_clip_ckpt(tmp_path / "clip.ckpt")  # 32-d, the tiny captioner's width
    out = tmp_path / "captions.pt"
    common = [f"ckpt={ckpt}", f"clip.checkpoint={clip}", "data.train_size=7", "data.resolution=16", f"out={out}"]
    run(_compose(tmp_path, *common, "chunk_size=3", "progress=false", "style=synthetic_short"))
    r = load_recaptions(out)
    assert len(r["captions"]) == 7 and r["meta"]["style"] == "synthetic_short" and r["meta"]["split"] == "train"
    with pytest.raises(ConfigError, match="features="):
        run(_compose(tmp_path, f"ckpt={ckpt}", f"out={out}"))


def test_the_resume_key_of_a_clip_run_holds_the_resolution_and_the_clip_weights(tmp_path, dalle_helpers):
    """With clip.checkpoint, the resume key's source was the clip node, the data identity (no resolution) and the
    split: a run restarted at another data.resolution, or after the CLIP was retrained in place, reused the finished
    chunks' captions of other embeddings."""
    from zoo.recaption import _embedding_source

    clip = dalle_helpers.tiny_clip_ckpt(tmp_path / "clip.ckpt")

    def source(*extra):
        cfg = _compose(tmp_path, f"clip.checkpoint={clip}", "data.train_size=4", *extra)
        return _embedding_source(cfg, D)[2]

    at16 = source("data.resolution=16")
    assert source("data.resolution=16") == at16 != source("data.resolution=32")
    dalle_helpers.tiny_clip_ckpt(tmp_path / "clip.ckpt", seed=1)  # retrained in place: the same path
    assert source("data.resolution=16") != at16


def test_a_clip_run_embeds_one_encoder_batch_of_images_at_a_time(tmp_path, dalle_helpers, monkeypatch):
    """The clip.checkpoint path stacked a whole chunk's images before encoding them (1,024 items at 256 px: 1.5 GB
    more memory, growing with chunk_size); now one encoder batch at a time, with the same embeddings bit for bit."""
    from zoo.models.clip.scorer import ClipScorer
    from zoo.recaption import _embedding_source

    clip = dalle_helpers.tiny_clip_ckpt(tmp_path / "clip.ckpt")
    build, encode = ClipScorer.from_config, ClipScorer.encode_image
    seen: list[int] = []

    def small_batches(c):
        scorer = build(c)
        scorer.batch_size = 3  # 7 items: batches of 3, 3, 1
        return scorer

    def counted(self, images):
        seen.append(len(images))
        return encode(self, images)

    monkeypatch.setattr(ClipScorer, "from_config", staticmethod(small_batches))
    monkeypatch.setattr(ClipScorer, "encode_image", counted)
    cfg = _compose(tmp_path, f"clip.checkpoint={clip}", "data.train_size=7", "data.resolution=16")
    embeddings, n, _ = _embedding_source(cfg, D)
    got = embeddings(0, n)
    assert n == 7 and seen and max(seen) <= 3  # never more than one encoder batch of images at once

    # what the whole chunk stacked and encoded at once gives
    from zoo.config import instantiate

    ds = instantiate(cfg.data, "data").dataset("train")
    scorer = small_batches(cfg.clip)

    def whole(a, b):
        return encode(scorer, torch.stack([ds[i]["image"] for i in range(a, b)])).cpu()

    assert torch.equal(got, whole(0, n))
    assert torch.equal(embeddings(2, 7), whole(2, 7))  # a later chunk: batches counted from its start, as before


# ------------------------------------------------------------------------------------------------- serving
def _synthetic_file(path: Path, n: int) -> Path:
    from zoo.checkpoint import atomic_torch_save

    atomic_torch_save(
        {
            "captions": [f"synthetic caption {i}" for i in range(n)],
            "meta": {"captioner_digest": "0" * 64, "style": "synthetic_descriptive", "n": n},
        },
        path,
    )
    return path


def _shapes(tmp_path, n=2000, **kw):
    from zoo.data.modules import ShapesDataModule

    f = _synthetic_file(tmp_path / "syn.pt", n)
    return ShapesDataModule(
        train_size=n,
        val_size=4,
        test_size=4,
        resolution=16,
        seed=kw.pop("seed", 0),
        synthetic_captions={"synthetic_descriptive": str(f)},
        **kw,
    )


def test_datamodule_serves_synthetic_captions_at_the_mix_ratio_deterministically(tmp_path):
    dm = _shapes(tmp_path, caption_mix={"synthetic_descriptive": 0.95, "alt": 0.05})
    ds = dm.dataset("train")
    styles = [ds.style_of(i) for i in range(len(ds))]
    share = sum(s == "synthetic_descriptive" for s in styles) / len(styles)
    assert abs(share - 0.95) < 0.02  # binomial sd ~0.005 at n=2000
    for i in (0, 1, 7, 123, 1999):
        s = ds[i]
        assert s["captions"]["synthetic_descriptive"] == f"synthetic caption {i}"  # every sample carries every style
        if styles[i] == "synthetic_descriptive":
            assert s["caption"] == f"synthetic caption {i}" and s["caption_style"] == "synthetic_descriptive"
        else:  # the rest of the mix: the world's own alt text
            assert s["caption_style"] == "alt" and s["caption"] == s["captions"]["alt"]
    # deterministic: a fresh module (another process, a resume) draws the same styles; another seed does not
    again = _shapes(tmp_path, caption_mix={"synthetic_descriptive": 0.95, "alt": 0.05}).dataset("train")
    assert [again.style_of(i) for i in range(len(ds))] == styles
    other = _shapes(tmp_path, seed=1, caption_mix={"synthetic_descriptive": 0.95, "alt": 0.05}).dataset("train")
    assert [other.style_of(i) for i in range(len(ds))] != styles
    assert dm.dataset("val")[0]["caption_style"] == "descriptive"  # the mix is the training split's only
    # the tokenizer cache key changes with the synthetic captions
    assert "synthetic_captions" in dm.data_identity()
    half = _shapes(tmp_path, caption_mix={"synthetic_descriptive": 0.5, "short": 0.5}).dataset("train")
    share = sum(half.style_of(i) is not None for i in range(len(half))) / len(half)
    assert abs(share - 0.5) < 0.05
    assert {half[i]["caption_style"] for i in range(40)} == {"synthetic_descriptive", "short"}


def test_datamodule_checks(tmp_path):
    with pytest.raises(ConfigError, match="unknown caption style"):
        _shapes(tmp_path, n=10, caption_mix={"synthetic_short": 1.0})
    with pytest.raises(ConfigError, match="own styles"):
        from zoo.data.modules import ShapesDataModule

        ShapesDataModule(
            train_size=10, val_size=4, test_size=4, resolution=16, synthetic_captions={"alt": str(tmp_path / "x.pt")}
        )
    dm = _shapes(tmp_path, n=10, caption_mix={"synthetic_descriptive": 1.0})
    dm.sizes["train"] = 12  # a file of another split size
    with pytest.raises(ConfigError, match="rows"):
        dm.dataset("train")


def test_train_config_composes_with_synthetic_captions(train_cfg, tmp_path):
    from zoo.config import instantiate

    f = _synthetic_file(tmp_path / "syn.pt", 16)
    cfg = train_cfg(
        "data.train_size=16",
        "data.resolution=16",
        f"data.synthetic_captions={{synthetic_descriptive: {f}}}",
        "data.caption_mix={synthetic_descriptive: 0.95, alt: 0.05}",
    )
    dm = instantiate(cfg.data, "data")
    caps = [dm.dataset("train")[i]["caption"] for i in range(16)]
    assert sum(c.startswith("synthetic caption") for c in caps) >= 12


def test_misspelt_split_is_a_config_error(files, tmp_path):
    """split=vall: refused with the valid splits. With features= it was only written into the output's meta (a
    file labelled 'vall'); zoo-tokenize / zoo-embed / recaption with a CLIP died on a ValueError traceback from the
    DataModule."""
    from zoo.data.modules import ShapesDataModule
    from zoo.recaption import run

    ckpt, feats = files
    with pytest.raises(ConfigError, match=r"unknown split 'vall'.*fix: split="):
        run(_compose(tmp_path, f"ckpt={ckpt}", f"features={feats}", f"out={tmp_path / 'c.pt'}", "split=vall"))
    assert not (tmp_path / "c.pt").exists()
    with pytest.raises(ConfigError, match=r"unknown split 'tset'.*fix: split="):
        ShapesDataModule(train_size=8, val_size=8, test_size=8).dataset("tset")


def test_features_of_another_split_are_refused(files, tmp_path):
    """features= written by zoo-embed split=val, recaptioned as split=train: refused naming both splits (the
    captions would have been served to the train split's images, matched by index)."""
    from zoo.checkpoint import atomic_torch_save
    from zoo.recaption import run

    ckpt, feats = files
    val = tmp_path / "val_clip.pt"
    atomic_torch_save({**torch.load(feats, weights_only=True), "meta": {"split": "val"}}, val)
    with pytest.raises(ConfigError, match=r"holds the val split's embeddings.*fix: split=val"):
        run(_compose(tmp_path, f"ckpt={ckpt}", f"features={val}", f"out={tmp_path / 'c.pt'}", "split=train"))
    assert not (tmp_path / "c.pt").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        (["decoding=beam", "beam_width=0"], r"beam_width=0 must be a whole number >= 1"),
        (["decoding=nucleus", "top_p=0"], r"top_p=0 must be a number in \(0, 1\]"),
        (["decoding=nucleus", "top_p=1.5"], r"top_p=1\.5 must be a number in \(0, 1\]"),
        (["decoding=nucleus", "temperature=-1"], r"temperature=-1 must be a number >= 0"),
        (["chunk_size=0"], r"chunk_size=0 must be a whole number >= 1 or null \(fix: chunk_size=1024\)"),
        (["batch_size=0"], r"batch_size=0 must be a whole number >= 1 or null \(fix: batch_size=64\)"),
        (["batch_size=2.5"], "batch_size=2.5 must be a whole number >= 1"),
        (["seed=1.5"], "seed=1.5 must be a whole number"),
        (["device=gpu"], r"device=gpu is not a torch device \(fix: device=cpu"),
        (["progress=no"], r"progress='no' must be true or false"),  # was read as true
    ],
)
def test_bad_decoding_options_are_refused_before_any_work(files, tmp_path, options, message):
    """They ran: beam_width=0 / chunk_size=0 / batch_size=0 as the defaults, top_p=0 and a negative temperature as
    greedy decoding, each with the given value written into the file's meta as what produced the captions."""
    from zoo.recaption import run

    ckpt, feats = files
    out = tmp_path / "c.pt"
    with pytest.raises(ConfigError, match=message):
        run(_compose(tmp_path, f"ckpt={ckpt}", f"features={feats}", f"out={out}", "progress=false", *options))
    assert not out.exists() and not list(tmp_path.glob(".c.pt.chunks-*"))  # refused before the work directory


def test_an_untrained_clip_or_a_missing_gpu_is_refused_before_anything_loads(files, tmp_path):
    """clip.arch without clip.pretrained / clip.checkpoint is an untrained CLIP: it was built and the first chunk's
    images embedded, then refused as another width (or as "another CLIP", or captioned as noise when the captioner
    names no CLIP); device=gpu was reported as a truncated or corrupt captioner checkpoint."""
    from zoo.recaption import run

    ckpt, _ = files
    common = [f"ckpt={ckpt}", f"out={tmp_path / 'c.pt'}", "data.train_size=3", "progress=false"]
    with pytest.raises(ConfigError, match=r"clip.arch=ViT-B-32 without clip.pretrained.*untrained CLIP"):
        run(_compose(tmp_path, *common, "clip.arch=ViT-B-32"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"clip.device=cuda, but no CUDA device.*fix: clip.device=cpu"):
            run(_compose(tmp_path, *common, "clip.arch=ViT-B-32", "clip.pretrained=openai", "+clip.device=cuda"))
    assert not list(tmp_path.glob(".c.pt.chunks-*"))


def test_empty_captions_are_counted_and_warned_about(files, tmp_path, caplog, monkeypatch):
    """A captioner that ends its captions at once (undertrained, or fed another CLIP's embeddings) wrote a file of
    empty strings without a word, and data.caption_mix served them as 95% of the training captions."""
    from zoo.models.captioner.lit import CaptionerLit

    ckpt, feats = files
    ref = torch.load(_run(ckpt, feats, tmp_path / "ref.pt", "nucleus")[0], weights_only=True)
    assert ref["meta"]["empty"] == sum(not c.strip() for c in ref["captions"]) < 21

    def eot_first(self, emb, *args, **kwargs):  # [SOT] [EOT]: the empty caption
        out = torch.full((len(emb), 4), self.cfg.pad_id)
        out[:, 0], out[:, 1] = self.cfg.sot_id, self.cfg.eot_id
        return out

    monkeypatch.setattr(CaptionerLit, "caption_tokens", eot_first)
    with caplog.at_level("WARNING", logger="zoo.recaption"):
        path, _ = _run(ckpt, feats, tmp_path / "empty.pt")
    assert torch.load(path, weights_only=True)["meta"]["empty"] == 21
    assert "21 of 21 captions are empty (items 0, 1, 2, 3, 4, 5, 6, 7, ...)" in caplog.text


def test_an_output_path_that_is_a_directory_is_refused_before_captioning(files, tmp_path):
    """out=<a directory> failed with IsADirectoryError from the final atomic rename, after every chunk had been
    captioned."""
    from zoo.recaption import run

    ckpt, feats = files
    (tmp_path / "outdir").mkdir()
    with pytest.raises(ConfigError, match=r"is a directory \(fix: out=.*captions.pt"):
        run(_compose(tmp_path, f"ckpt={ckpt}", f"features={feats}", f"out={tmp_path / 'outdir'}", "progress=false"))
    assert not list(tmp_path.glob(".outdir.chunks-*"))


def test_the_default_output_names_the_style(files, tmp_path):
    """out= left at its default wrote <data>_<split>_captions.pt for every captioner: recaptioning with the short and
    then the descriptive captioner overwrote the short captions, and the first run's serving hint pointed
    synthetic_short at the file that now held descriptive ones."""
    import torch

    from zoo.recaption import load_recaptions, run

    ckpt, feats = files
    short = tmp_path / "short.ckpt"
    obj = torch.load(ckpt, weights_only=True)
    obj["zoo_config"] = {"data": {"caption_style": "short"}}
    torch.save(obj, short)
    paths = [run(_compose(tmp_path, f"ckpt={c}", f"features={feats}", "progress=false")) for c in (short, ckpt)]
    # <data> is Hydra's data choice when its runtime is set (zoo-recaption: "shapes"), else "data"
    assert paths[0].name.endswith("_train_synthetic_short.pt") and paths[1].name.endswith(
        "_train_synthetic_descriptive.pt"
    )
    assert paths[0].parent == paths[1].parent == Path(_compose(tmp_path).paths.cache_dir) / "recaptions"
    assert [load_recaptions(p)["meta"]["style"] for p in paths] == ["synthetic_short", "synthetic_descriptive"]
