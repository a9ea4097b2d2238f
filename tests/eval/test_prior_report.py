"""eval/prior.py: the unCLIP prior report (cos to the true image embedding, text->image R@1/R@5, FD) on tiny
synthetic zoo-embed features and tiny priors trained for a few steps here; the metrics against hand computation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from eval.prior import (
    checks,
    cosine_to_truth,
    embedding_metrics,
    markdown_table,
    prior_report,
    recall_at,
    retrieval_ranks,
)
from zoo.errors import ConfigError

D, L, VOCAB = 16, 8, 64  # the tiny diffusion prior's clip_dim / text_len / text_vocab; the AR prior set to match


def _features(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Paired embeddings with a modality gap: image = normalise(text + gap + noise), tokens from the caption id."""
    g = torch.Generator().manual_seed(seed)
    txt = F.normalize(torch.randn(n, D, generator=g), dim=-1)
    gap = torch.zeros(D)
    gap[0] = 1.5
    img = F.normalize(txt + gap + 0.3 * torch.randn(n, D, generator=g), dim=-1)
    tokens = torch.randint(1, VOCAB, (n, L), generator=g)
    tokens[:, 5:] = 0
    return {"clip_image_emb": img, "clip_text_emb": txt, "clip_text_tokens": tokens}


def _save_features(path: Path, feats: dict) -> Path:
    from zoo.checkpoint import atomic_torch_save

    n = len(feats["clip_image_emb"])
    return atomic_torch_save({**feats, "meta": {"n": n, "dim": D}}, path)


def _save_module(lit, path: Path) -> Path:
    """What zoo-train's checkpoint holds for load_module: the component stamp, hyper-parameters and weights."""
    from zoo.checkpoint import atomic_torch_save
    from zoo.registry import component_name_of

    return atomic_torch_save(
        {
            "zoo_component": component_name_of(lit),
            "hyper_parameters": dict(lit.hparams),
            "state_dict": lit.state_dict(),
        },
        path,
    )


def _train(lit, feats, steps: int = 15) -> None:
    opt = torch.optim.AdamW(lit.parameters(), lr=3e-3)
    lit.train()
    for _ in range(steps):
        loss = lit.forward_loss(feats, 0.1) if hasattr(lit, "embed_scale") else lit.forward_loss(feats, train=True)
        opt.zero_grad()
        loss["loss"].backward()
        opt.step()
    lit.eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from zoo.models.ar_prior.lit import ARPriorLit
    from zoo.models.diffusion_prior.lit import DiffusionPriorLit, embedding_scale

    d = tmp_path_factory.mktemp("prior_report")
    train, val = _features(64, 0), _features(24, 1)
    torch.manual_seed(0)
    diff = DiffusionPriorLit(preset="tiny", sample_steps=8, embed_scale=embedding_scale(train["clip_image_emb"]))
    _train(diff, train)
    ar = ARPriorLit(
        preset="tiny", net={"embed_dim": D, "text_len": L, "text_vocab": VOCAB, "n_buckets": 16, "n_dot_bins": 4}
    )
    ar.fit_discretisation(train["clip_image_emb"], train["clip_text_emb"])
    _train(ar, train)
    return {
        "train": _save_features(d / "train.pt", train),
        "val": _save_features(d / "val.pt", val),
        "diffusion": _save_module(diff, d / "diffusion.ckpt"),
        "ar": _save_module(ar, d / "ar.ckpt"),
        "val_feats": val,
    }


def _cfg(tmp_path: Path, overrides: list[str]):
    from tests.conftest import compose_cfg  # registered by pytest under this name (importlib mode)

    cfg = compose_cfg(
        tmp_path, ["progress=false", f"out={tmp_path / 'report'}", *overrides], module="conf.eval", name="prior"
    )
    return cfg


# ------------------------------------------------------------------------------------------------ metrics by hand
def test_retrieval_ranks_and_recall_by_hand():
    y = torch.eye(4)  # images e0..e3
    z = torch.tensor(
        [
            [1.0, 0, 0, 0],  # caption 0 -> image 0 first: rank 0
            [0.9, 0.5, 0, 0],  # caption 1: image 0 scores higher than image 1: rank 1
            [0.1, 0.2, 0.3, 0.9],  # caption 2: only image 3 scores above image 2: rank 1
            [0.0, 0, 0, 1],
        ]
    )  # caption 3: rank 0
    ranks = retrieval_ranks(z, y)
    assert ranks.tolist() == [0, 1, 1, 0]
    assert recall_at(ranks, 1) == 0.5 and recall_at(ranks, 2) == 1.0
    # ties count for the true image
    assert retrieval_ranks(torch.ones(2, 2), torch.eye(2)).tolist() == [0, 0]


def test_embedding_metrics_by_hand():
    g = torch.Generator().manual_seed(0)
    y = F.normalize(torch.randn(40, 8, generator=g), dim=-1)
    m = embedding_metrics(y, y)
    assert m["cos"] == pytest.approx(1.0) and m["r@1"] == 1.0 and m["r@5"] == 1.0
    assert abs(m["fd"]) < 1e-6
    z = F.normalize(torch.randn(40, 8, generator=g), dim=-1)
    assert cosine_to_truth(z, y) == pytest.approx(float((z * y).sum(-1).mean()), abs=1e-6)
    # FD is the closed form |mu_a - mu_b|^2 + tr(Sa + Sb - 2 (Sa Sb)^1/2); shifting one set by c adds |c|^2
    shift = torch.zeros(8)
    shift[2] = 0.7
    from eval.metrics import frechet_distance

    assert frechet_distance(y + shift, y) == pytest.approx(0.49, abs=1e-5)


def test_checks_compare_with_the_baseline_and_ddim_ddpm():
    rows = [
        {"name": "b", "method": "text_baseline", "cos": 0.2, "fd": 1.0},
        {"name": "d", "method": "diffusion_prior", "cos": 0.5, "fd": 0.30, "params": {"sampler": "ddim"}},
        {"name": "p", "method": "diffusion_prior", "cos": 0.5, "fd": 0.31, "params": {"sampler": "ddpm"}},
        {"name": "a", "method": "ar_prior", "cos": 0.1, "fd": 0.5, "params": {}},
    ]
    c = checks(rows)
    assert c["d"] == {"cos_above_baseline": True, "fd_below_baseline": True}
    assert c["a"] == {"cos_above_baseline": False, "fd_below_baseline": True}
    assert c["ddim_vs_ddpm_fd"]["within_5_percent"]
    assert c["ddim_vs_ddpm_fd"]["relative_difference"] == pytest.approx(0.01 / 0.31)


# ------------------------------------------------------------------------------------------------ the report
def test_report_end_to_end(files, tmp_path):
    cfg = _cfg(
        tmp_path,
        [
            f"features={files['val']}",
            f"reference_features={files['train']}",
            f"diffusion_ckpt={files['diffusion']}",
            f"ar_ckpt={files['ar']}",
            "batch_size=10",
            "diffusion.steps=8",
            "diffusion.ddpm_steps=20",
            "sweep.diffusion_guidance=[2]",
            "sweep.ar_guidance=[2]",
        ],
    )
    res = prior_report(cfg)
    out = Path(cfg.out)
    assert {p.name for p in out.iterdir()} >= {"results.json", "results.md", "prior.png"}
    saved = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in saved["rows"]] == [
        "text embedding (baseline)",
        "diffusion prior (DDIM 8)",
        "diffusion prior (DDPM 20)",
        "AR prior",
    ]
    assert len(saved["sweep"]) == 2 and saved["n"] == 24
    # the baseline's figures by hand from the features
    val = files["val_feats"]
    txt, img = F.normalize(val["clip_text_emb"], dim=-1), F.normalize(val["clip_image_emb"], dim=-1)
    base = res["rows"][0]
    assert base["cos"] == pytest.approx(float((txt * img).sum(-1).mean()), abs=1e-6)
    sim = txt @ img.T
    rank = (sim > sim.diagonal()[:, None]).sum(1)
    assert base["r@1"] == pytest.approx(float((rank == 0).float().mean()))
    assert base["r@5"] == pytest.approx(float((rank < 5).float().mean()))
    from eval.metrics import frechet_distance

    assert base["fd"] == pytest.approx(frechet_distance(txt, img), rel=1e-6)
    ref = frechet_distance(F.normalize(torch.load(files["train"])["clip_image_emb"][:24], dim=-1), img)
    assert res["reference"]["fd"] == pytest.approx(ref, rel=1e-6)
    for r in res["rows"] + res["sweep"]:
        assert -1 <= r["cos"] <= 1 and 0 <= r["r@1"] <= r["r@5"] <= 1 and r["fd"] >= -1e-6
    assert "ddim_vs_ddpm_fd" in res["checks"]
    md = (out / "results.md").read_text()
    assert "text embedding (baseline)" in md and "## Sweep" in md and "DDIM vs DDPM FD" in md


def test_report_reproducible_and_batch_independent(files, tmp_path):
    """Batch i is sampled under seed + i: the same config gives the same numbers; the baseline never depends on the
    batch size."""
    common = [
        f"features={files['val']}",
        f"diffusion_ckpt={files['diffusion']}",
        "diffusion.steps=4",
        "diffusion.ddpm_steps=null",
        "plot=false",
    ]
    a = prior_report(_cfg(tmp_path / "a", common + ["batch_size=8"]))
    b = prior_report(_cfg(tmp_path / "b", common + ["batch_size=8"]))
    c = prior_report(_cfg(tmp_path / "c", common + ["batch_size=24"]))
    assert [r["cos"] for r in a["rows"]] == [r["cos"] for r in b["rows"]]
    assert a["rows"][0]["cos"] == c["rows"][0]["cos"]
    assert not (tmp_path / "a" / "report" / "prior.png").exists()
    assert "| diffusion prior (DDIM 4) |" in markdown_table(a["rows"])


def test_errors_name_the_fix(files, tmp_path):
    with pytest.raises(ConfigError, match="features="):
        prior_report(_cfg(tmp_path, []))
    with pytest.raises(ConfigError, match="experiment=unclip/prior_shapes"):
        prior_report(_cfg(tmp_path, [f"features={files['val']}", "diffusion_ckpt=/nonexistent/last.ckpt"]))
    with pytest.raises(ConfigError, match="n=100"):
        prior_report(_cfg(tmp_path, [f"features={files['val']}", "n=100"]))
    # a checkpoint of the other kind is refused, naming the option that gave it
    with pytest.raises(ConfigError, match="holds a diffusion_prior checkpoint; this input takes ar_prior") as info:
        prior_report(_cfg(tmp_path, [f"features={files['val']}", f"ar_ckpt={files['diffusion']}"]))
    assert "(fix: ar_ckpt=<an ar_prior checkpoint>)" in str(info.value)


def test_console_entry_point(files, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "cli"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "eval.prior",
            f"features={files['val']}",
            f"out={out}",
            f"hydra.run.dir={tmp_path / 'hydra'}",
            "progress=false",
            "plot=false",
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| text embedding (baseline) |" in r.stdout and (out / "results.json").is_file()


# ------------------------------------------------------------------------------------------------ the sampler it runs
@pytest.mark.parametrize("text_input", ["tokens", "encodings", "none"])
def test_cached_text_prefix_equals_the_full_forward(text_input):
    """DiffusionPriorNet.forward_cached (text keys/values computed once per sampling run, what the report's DDIM-64
    and DDPM-1000 rows use) equals the full forward, with and without the null condition."""
    from zoo.models.diffusion_prior.model import DiffusionPriorNet, build_config

    torch.manual_seed(0)
    net = DiffusionPriorNet(build_config("tiny", {"text_input": text_input})).eval()
    b = 6
    tokens = torch.randint(1, VOCAB, (b, L))
    tokens[:, 4:] = 0
    text = {
        "tokens": {"text_tokens": tokens},
        "encodings": {"text_encodings": torch.randn(b, L, 16), "text_mask": tokens != 0},
        "none": {},
    }[text_input]
    drop = torch.tensor([False, True] * 3)
    with torch.no_grad():
        cache = net.text_cache(b, **text, drop_text=drop)
        for step in range(3):  # one cache serves every step
            x, t, emb = torch.randn(b, D), torch.randint(0, 1000, (b,)), torch.randn(b, D)
            want = net(x, t, emb, **text, drop_text=drop)
            got = net.forward_cached(cache, x, t, emb, drop_text=drop)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_reference_features_of_another_clip_refused_before_sampling(files, tmp_path, monkeypatch):
    """reference_features of another CLIP width was read after every prior had sampled, and frechet_distance then
    failed on the shapes (a traceback at the end of the report's work). Now a ConfigError before any sampling."""
    import eval.prior
    from zoo.checkpoint import atomic_torch_save

    wide = atomic_torch_save(
        {"clip_image_emb": torch.randn(64, 7), "clip_text_emb": torch.randn(64, 7)}, tmp_path / "w.pt"
    )

    def sampled(*a, **k):
        raise AssertionError("sampling started before reference_features was checked")

    monkeypatch.setattr(eval.prior, "run_sampler", sampled)
    with pytest.raises(ConfigError, match=f"reference_features={wide} holds 7-d embeddings"):
        prior_report(_cfg(tmp_path, [f"features={files['val']}", f"reference_features={wide}"]))


def test_reference_features_of_the_same_images_refused(files, tmp_path):
    """reference_features=<the features file itself> reported an FD floor of exactly 0 ('the FD between two samples of
    real image embeddings'), and another file of the same split a floor from the same distribution of captions;
    both are refused now. The split zoo-embed wrote into the file's meta is in results.json."""
    from zoo.checkpoint import atomic_torch_save

    with pytest.raises(ConfigError, match="holds the same 24 image embeddings as features="):
        prior_report(_cfg(tmp_path, [f"features={files['val']}", f"reference_features={files['val']}"]))
    val = {**files["val_feats"], "meta": {"split": "val", "clip": "c.ckpt"}}
    a = atomic_torch_save(val, tmp_path / "val_a.pt")
    other = {**_features(30, 5), "meta": {"split": "val", "clip": "c.ckpt"}}  # other captions, the same split
    b = atomic_torch_save(other, tmp_path / "val_b.pt")
    with pytest.raises(ConfigError, match="is the val split, like features="):
        prior_report(_cfg(tmp_path, [f"features={a}", f"reference_features={b}"]))
    # a train file with a few scenes identical to val ones (the shapes world renders some alike) is a valid floor
    train = _features(64, 0)
    train["clip_image_emb"][:3] = val["clip_image_emb"][:3]
    twins = atomic_torch_save({**train, "meta": {"split": "train", "clip": "c.ckpt"}}, tmp_path / "train_twins.pt")
    assert prior_report(_cfg(tmp_path, [f"features={a}", f"reference_features={twins}", "plot=false"]))["reference"]
    res = prior_report(_cfg(tmp_path, [f"features={a}", f"reference_features={files['train']}", "plot=false"]))
    assert res["reference"]["fd"] > 0 and res["features_meta"] == {"split": "val", "clip": "c.ckpt"}
    assert "16-d CLIP embeddings, val split)" in (tmp_path / "report" / "results.md").read_text()


def test_every_prior_checked_against_the_features_before_any_sampling(files, tmp_path, monkeypatch):
    """A missing ar_ckpt, or a features file without the clip_text_tokens the AR prior reads, was found only after the
    diffusion prior's DDIM and DDPM-1000 rows had sampled (and their work was lost); features without the tokens the
    diffusion prior reads were a ValueError traceback at its turn. Now one ConfigError each before any row samples."""
    import eval.prior
    from zoo.checkpoint import atomic_torch_save

    def sampled(name, *a, **k):
        raise AssertionError(f"{name} sampled before the priors were checked")

    monkeypatch.setattr(eval.prior, "run_sampler", sampled)
    no_tokens = {k: v for k, v in files["val_feats"].items() if k != "clip_text_tokens"}
    bare = atomic_torch_save(no_tokens, tmp_path / "no_tokens.pt")
    diff = f"diffusion_ckpt={files['diffusion']}"
    with pytest.raises(ConfigError, match="ar_prior checkpoint not found"):
        prior_report(_cfg(tmp_path, [f"features={files['val']}", diff, "ar_ckpt=/nonexistent/last.ckpt"]))
    with pytest.raises(ConfigError, match=f"the ar_prior needs clip_text_tokens and features={bare} lacks it"):
        prior_report(_cfg(tmp_path, [f"features={bare}", f"ar_ckpt={files['ar']}"]))
    with pytest.raises(ConfigError, match="the diffusion_prior needs clip_text_tokens"):
        prior_report(_cfg(tmp_path, [f"features={bare}", diff]))


def test_a_prior_or_reference_of_another_clip_refused_before_sampling(files, tmp_path, monkeypatch):
    """Features, reference features and priors name their CLIP (zoo-embed's meta ``clip_fingerprint``, the prior's
    checkpoint): another CLIP of the same width gave a report of near-chance cosines, or an FD "floor" between two
    embedding spaces, without a word. Refused before any sampling; the same CLIP, or a side that names none, runs."""
    import eval.prior
    from zoo.checkpoint import atomic_torch_save, safe_load

    def sampled(name, *a, **k):
        raise AssertionError(f"{name} sampled before the CLIPs were compared")

    val = atomic_torch_save({**files["val_feats"], "meta": {"clip_fingerprint": "aaaa"}}, tmp_path / "val_a.pt")
    train = atomic_torch_save({**_features(64, 0), "meta": {"clip_fingerprint": "bbbb"}}, tmp_path / "train_b.pt")
    ckpt = safe_load(files["diffusion"])
    ckpt["hyper_parameters"]["clip_fingerprint"] = "bbbb"
    prior_b = atomic_torch_save(ckpt, tmp_path / "prior_b.ckpt")
    monkeypatch.setattr(eval.prior, "run_sampler", sampled)
    with pytest.raises(ConfigError, match="was trained on the embeddings of another CLIP .fingerprint bbbb. than"):
        prior_report(_cfg(tmp_path, [f"features={val}", f"diffusion_ckpt={prior_b}"]))
    with pytest.raises(ConfigError, match="was embedded by another CLIP .fingerprint bbbb. than features="):
        prior_report(_cfg(tmp_path, [f"features={val}", f"reference_features={train}"]))
    monkeypatch.undo()
    same = atomic_torch_save({**files["val_feats"], "meta": {"clip_fingerprint": "bbbb"}}, tmp_path / "val_b.pt")
    res = prior_report(_cfg(tmp_path, [f"features={same}", f"diffusion_ckpt={prior_b}", "plot=false", "n=8"]))
    assert res["features_meta"]["clip_fingerprint"] == "bbbb"


def test_a_sweep_without_its_prior_is_refused(files, tmp_path):
    """sweep.diffusion_guidance=[1,2] with ar_ckpt but no diffusion_ckpt ran and wrote a report without a single
    sweep row (the option was silently ignored); now a ConfigError naming the missing checkpoint."""
    with pytest.raises(ConfigError, match=r"sweep.diffusion_guidance=\[1, 2\] sweeps the prior of diffusion_ckpt"):
        prior_report(
            _cfg(tmp_path, [f"features={files['val']}", f"ar_ckpt={files['ar']}", "sweep.diffusion_guidance=[1,2]"])
        )
    with pytest.raises(ConfigError, match="fix: ar_ckpt="):
        prior_report(_cfg(tmp_path, [f"features={files['val']}", "sweep.ar_guidance=[2]"]))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["batch_size=0"], "batch_size=0 must be a whole number >= 1"),
        (["diffusion.steps=0"], "diffusion.steps=0"),
        (["diffusion.n_candidates=0"], "diffusion.n_candidates=0"),
        (["sweep.diffusion_steps=[8,0]"], "sweep.diffusion_steps=0"),
        # the AR prior's token sampling: filter_logits read a negative top_k and a top_p above 1 as no filter
        (["ar.top_k=-3"], r"ar\.top_k=-3 must be a whole number >= 0"),
        (["ar.top_p=90"], r"ar\.top_p=90 must be a number in \(0, 1\]"),
        (["ar.temperature=-1"], r"ar\.temperature=-1 must be a number >= 0"),
    ],
)
def test_zero_counts_refused_before_any_sampling(files, tmp_path, monkeypatch, extra, message):
    """A 0 batch size, step count or candidate count was a ValueError / IndexError traceback at the row that used it
    (sweep.diffusion_steps=[..., 0] after every main row had sampled); now a ConfigError first."""
    import eval.prior

    def sampled(name, *a, **k):
        raise AssertionError(f"{name} sampled before the options were checked")

    monkeypatch.setattr(eval.prior, "run_sampler", sampled)
    with pytest.raises(ConfigError, match=message):
        prior_report(_cfg(tmp_path, [f"features={files['val']}", f"diffusion_ckpt={files['diffusion']}", *extra]))


def test_an_all_captions_file_is_read_at_each_images_first_caption_copying_only_the_rows_read(tmp_path):
    """A zoo-embed captions=all file (COCO train, e.g. the FD floor's reference) was copied to one row per image in
    every caption key, all of it, and kept whole behind the first ``n`` rows read; the reference (image rows only)
    paid the copy too. Now the same values, the text keys' storage n rows."""
    from eval.prior import load_features
    from zoo.checkpoint import atomic_torch_save
    from zoo.data.datamodule import first_caption_rows

    counts = torch.tensor([3, 5, 4, 1, 2, 5])
    m = int(counts.sum())
    one = _features(m, 3)  # m caption rows; 6 images
    feats = {**one, "clip_image_emb": one["clip_image_emb"][: len(counts)], "clip_caption_counts": counts}
    path = atomic_torch_save({**feats, "meta": {"split": "train", "captions": "all"}}, tmp_path / "all.pt")
    old = first_caption_rows(feats)  # what the readers got: one row per image, its first caption
    for n in (None, 2, 4):
        got = load_features(str(path), n)
        assert got.keys() == old.keys()
        for k, v in got.items():
            assert torch.equal(v, old[k][:n]), (k, n)
            if k != "clip_image_emb":  # (the image rows are the file's own: no copy)
                assert v.untyped_storage().nbytes() == v.nbytes, (k, n)  # holds the rows read, not every image's
    ref = load_features(str(path), 4, images_only=True)
    assert ref.keys() == {"clip_image_emb"} and torch.equal(ref["clip_image_emb"], feats["clip_image_emb"][:4])
    # n counts images there (6, one caption each), not the file's 20 caption rows: the message says so
    with pytest.raises(ConfigError, match=r"holds 6 images \(one caption each: the first\) \(fix: n=<2\.\.6>"):
        load_features(str(path), 7)
