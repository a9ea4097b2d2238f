"""unCLIP's AR prior: PCA + buckets, the dot-product token, KV-cached sampling, learning, zoo-train end to end, and
the paper preset's size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from zoo.errors import ConfigError
from zoo.models.ar_prior.lit import ARPriorLit
from zoo.models.ar_prior.model import PAPER_PARAMS, PRESETS, ARPrior, build_config, sample_codes, upper_quantile_mask
from zoo.models.ar_prior.pca import EmbeddingPCA, ScalarBins

D = 32  # the tiny preset's CLIP width (zoo-clip-tiny)


def _low_rank(n: int, dim: int = D, rank: int = 6, noise: float = 0.01, seed: int = 0) -> torch.Tensor:
    """Unit vectors near a rank-`rank` affine subspace (like CLIP embeddings: a few directions hold most variance)."""
    world = torch.Generator().manual_seed(1234)  # one subspace for every split; `seed` picks the samples
    basis = torch.linalg.qr(torch.randn(dim, dim, generator=world))[0][:, :rank]  # (dim, rank)
    offset = 0.5 * torch.randn(dim, generator=world)
    scales = torch.logspace(0, -0.7, rank)
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, rank, generator=g) * scales) @ basis.t() + offset
    z = z + noise * torch.randn(n, dim, generator=g)
    return F.normalize(z, dim=-1)


def _pairs(n: int, seed: int = 0):
    """Synthetic zoo-embed rows: image embeddings, text embeddings correlated with them, CLIP-like caption tokens."""
    g = torch.Generator().manual_seed(seed + 1)
    img = _low_rank(n, seed=seed)
    txt = F.normalize(img + 0.8 * torch.randn(n, D, generator=g) / D**0.5, dim=-1)
    tokens = torch.zeros(n, 32, dtype=torch.long)
    tokens[:, 0] = 49406  # open_clip's start-of-text
    tokens[:, 1:6] = torch.randint(300, 49000, (n, 5), generator=g)
    tokens[:, 6] = 49407  # end-of-text; the rest is padding (0)
    return img, txt, tokens


# ----------------------------------------------------------------------------------------------------------- PCA
@pytest.mark.parametrize("bucketing", ["quantile", "uniform"])
def test_pca_keeps_99_percent_and_round_trips(bucketing):
    x = _low_rank(4000)
    pca = EmbeddingPCA(D, n_buckets=1024, variance_kept=0.99, bucketing=bucketing).fit(x[:3000])
    assert pca.variance_ratio() > 0.99 and pca.variance_ratio(pca.k - 1) <= 0.99  # the fewest that hold > 99%
    assert 6 <= pca.k < D  # the low-rank structure is found, the noise directions dropped
    held_out = x[3000:]
    codes = pca.encode(held_out)
    assert codes.dtype == torch.long and codes.shape == (1000, pca.k)
    assert int(codes.min()) >= 0 and int(codes.max()) < 1024
    cos = F.cosine_similarity(pca.decode(codes), held_out, dim=-1)
    assert cos.mean() > 0.99 and cos.min() > 0.95, (float(cos.mean()), float(cos.min()))
    # out-of-distribution inputs still map into range (end buckets)
    far = pca.encode(10 * torch.randn(8, D))
    assert int(far.min()) >= 0 and int(far.max()) < 1024


def test_quantile_buckets_are_equally_used_and_state_travels():
    x = _low_rank(8192)
    pca = EmbeddingPCA(D, n_buckets=64, variance_kept=0.99).fit(x)
    counts = torch.stack([torch.bincount(c, minlength=64) for c in pca.encode(x).t()])  # (K, 64)
    assert int(counts.min()) > 0.8 * 8192 / 64 and int(counts.max()) < 1.2 * 8192 / 64  # equal mass
    fresh = EmbeddingPCA(D, n_buckets=64)
    assert not fresh.fitted
    fresh.load_state_dict(pca.state_dict())  # fixed buffer shapes: loads without knowing K beforehand
    assert fresh.k == pca.k and torch.equal(fresh.encode(x[:100]), pca.encode(x[:100]))
    assert EmbeddingPCA(D, n_components=5).fit(x).k == 5


def test_dot_product_bins_are_ordered_and_equal_mass():
    v = torch.randn(6400).mul(0.1).add(0.3)
    bins = ScalarBins(64).fit(v)
    ids = bins.encode(v)
    assert int(ids.min()) == 0 and int(ids.max()) == 63
    assert torch.bincount(ids, minlength=64).min() >= 90
    order = v.argsort()
    assert (ids[order].diff() >= 0).all()  # ids increase with the dot product
    assert (bins.centres.diff() > 0).all()


# ------------------------------------------------------------------------------------------------------ sampling
def _model(seed=0, **net) -> ARPrior:
    torch.manual_seed(seed)
    return ARPrior(build_config("tiny", {"text_vocab": 49408, **net}))


def test_upper_quantile_mask_is_the_upper_half():
    mask = upper_quantile_mask(torch.zeros(3, 64), 0.5)
    assert mask[:, 32:].all() and not mask[:, :32].any()
    logits = torch.randn(5, 16)
    m = upper_quantile_mask(logits, 0.5)
    cdf = logits.softmax(-1).cumsum(-1)
    assert torch.equal(m, cdf > 0.5) and m.any(-1).all()


@pytest.mark.parametrize("q", [1.0, 1.5, -0.1])
def test_dot_quantile_outside_0_1_is_refused(q):
    # dot_quantile=1 emptied the mask, every logit -inf, and the LOWEST bin (0) was drawn: the opposite of the intent
    model = _model().double()
    _, txt, tokens = _pairs(4)
    with pytest.raises(ValueError, match="dot_quantile"):
        sample_codes(model, tokens, txt.double(), n_codes=2, dot_quantile=q, generator=torch.Generator())
    with pytest.raises(ValueError, match="dot_quantile"):
        upper_quantile_mask(torch.zeros(2, 8), q)


def test_dot_token_is_sampled_from_the_upper_half():
    model = _model().double()
    _, txt, tokens = _pairs(64)
    with torch.no_grad():
        model.dot_head.weight.zero_()  # uniform predicted distribution over the 16 bins: upper half = bins 8 .. 15
    g = torch.Generator().manual_seed(0)
    _, dot = sample_codes(model, tokens, txt.double(), n_codes=2, generator=g)
    assert int(dot.min()) >= 8 and len(dot.unique()) > 4
    _, dot_all = sample_codes(model, tokens, txt.double(), n_codes=2, dot_quantile=None, generator=g)
    assert int(dot_all.min()) < 8  # unrestricted sampling does reach the lower half

    trained_like = _model(seed=1).double()  # a non-uniform distribution: every draw lies above its median
    with torch.no_grad():
        trained_like.dot_head.weight.normal_(0, 0.5)
    _, dot = sample_codes(trained_like, tokens, txt.double(), n_codes=2, generator=g)
    h = trained_like.hidden(trained_like.embed_prefix(tokens, txt.double()))
    cdf = trained_like.dot_head(h[:, -1]).softmax(-1).cumsum(-1)
    assert (cdf.gather(1, dot[:, None]) > 0.5).all()


@pytest.mark.parametrize("guidance_scale,top_k", [(1.0, None), (3.0, 20)])
def test_cached_sampling_equals_uncached(guidance_scale, top_k):
    model = _model().double()
    _, txt, tokens = _pairs(4)
    kw = dict(n_codes=12, guidance_scale=guidance_scale, top_k=top_k, temperature=0.9)
    cached = sample_codes(model, tokens, txt.double(), use_cache=True, generator=torch.Generator().manual_seed(3), **kw)
    plain = sample_codes(model, tokens, txt.double(), use_cache=False, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(cached[0], plain[0]) and torch.equal(cached[1], plain[1])
    assert cached[0].shape == (4, 12) and int(cached[0].max()) < model.cfg.n_buckets


@pytest.mark.parametrize("bad", [{"top_k": -3}, {"top_k": 2.5}, {"top_p": 90}, {"top_p": 0}, {"temperature": -1}])
def test_sampling_options_filter_logits_would_misread_are_refused(bad):
    """ARPriorLit.sample went straight to filter_logits, which read top_k=-3 and top_p=90 as no filter and top_p=0
    or a negative temperature as greedy: a ConfigError (the DALL·E sampler's check_sampling) before any draw."""
    from zoo.errors import ConfigError

    lit = _fitted_lit()
    _, txt, tokens = _pairs(2)
    with pytest.raises(ConfigError, match="must be"):
        lit.sample(txt, tokens, **bad)


# ------------------------------------------------------------------------------------------------------ learning
def _fitted_lit(n_fit=512, **kw) -> ARPriorLit:
    lit = ARPriorLit(preset="tiny", **kw)
    img, txt, _ = _pairs(n_fit, seed=5)
    lit.fit_discretisation(img, txt)
    return lit


def test_tiny_prior_overfits_a_fixed_batch():
    torch.manual_seed(0)
    lit = _fitted_lit(text_dropout=0.0, net={"text_vocab": 1024})  # a small caption vocabulary keeps the test fast
    img, txt, tokens = _pairs(16, seed=9)
    tokens = tokens % 1024
    batch = {"clip_image_emb": img, "clip_text_emb": txt, "clip_text_tokens": tokens}
    opt = torch.optim.AdamW(lit.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss = lit.forward_loss(batch, train=True)["loss"]
        first = float(loss) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < first / 10, (first, float(loss))
    emb, codes, _ = lit.sample(txt[:4], tokens[:4], temperature=0.0, dot_quantile=0.0, return_codes=True)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert (codes == lit.pca.encode(img[:4])).float().mean() > 0.9  # greedy sampling reproduces the memorised codes


def test_lit_checks_and_options():
    with pytest.raises(ConfigError, match="bucketing"):
        ARPriorLit(preset="tiny", bucketing="kmeans")
    with pytest.raises(ConfigError, match="preset"):
        ARPriorLit(preset="huge")
    lit = ARPriorLit(preset="tiny")
    with pytest.raises(ConfigError, match="data.features.train"):
        lit.check_data(type("DM", (), {"features": {}})())
    with pytest.raises(ConfigError, match="embed_dim"):
        lit.fit_discretisation(torch.randn(10, 64), torch.randn(10, 64))


# ----------------------------------------------------------------------------------------------- zoo-train e2e
def _write_embed_file(path: Path, n: int, seed: int) -> Path:
    from zoo.checkpoint import atomic_torch_save

    img, txt, tokens = _pairs(n, seed=seed)
    return atomic_torch_save(
        {"clip_image_emb": img, "clip_text_emb": txt, "clip_text_tokens": tokens, "meta": {"n": n, "dim": D}}, path
    )


def test_zoo_train_checkpoints_and_load_module_samples(train_cfg, tmp_path):
    from zoo.checkpoint import load_module
    from zoo.train import train

    train_file = _write_embed_file(tmp_path / "train_clip.pt", 64, seed=0)
    val_file = _write_embed_file(tmp_path / "val_clip.pt", 16, seed=1)
    cfg = train_cfg(
        "experiment=unclip/ar_prior_shapes",
        "model.preset=tiny",
        "data.train_size=64",
        "data.val_size=16",
        "data.test_size=16",
        "data.batch_size=16",
        f"data.features.train={train_file}",
        f"data.features.val={val_file}",
        "logger=csv",
        "trainer.max_steps=4",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "trainer.num_sanity_val_steps=0",
        "trainer.max_time=null",
    )
    metrics = train(cfg)
    assert metrics["global_step"] == 4
    assert "val/loss" in metrics and metrics["val/pca_cos"] > 0.9
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert raw["zoo_component"] == "ar_prior"
    model = load_module(ckpt)
    assert isinstance(model, ARPriorLit) and model.fitted  # the PCA came with the checkpoint, no data needed
    assert torch.equal(model.pca.components, raw["state_dict"]["pca.components"])
    _, txt, tokens = _pairs(3, seed=2)
    emb = model.sample(txt, tokens, guidance_scale=2.0, top_p=0.9, generator=torch.Generator().manual_seed(0))
    assert emb.shape == (3, D) and torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)


# ------------------------------------------------------------------------------------------------------- sizes
def test_paper_preset_parameter_count_on_meta():
    with torch.device("meta"):
        net = ARPrior(PRESETS["paper"])
    n = sum(p.numel() for p in net.parameters())
    assert n == PAPER_PARAMS
    assert 1.0e9 < n < 1.5e9  # "1B" (unCLIP Table 3)
    c = PRESETS["paper"]
    assert (c.dim, c.n_layers, c.n_heads * c.head_dim, c.embed_dim, c.n_buckets) == (2048, 24, 2048, 1024, 1024)


def test_check_data_checks_the_val_features_too(train_cfg, tmp_path):
    """Only data.features.train was checked: a val file without the zoo-embed keys (e.g. a zoo-tokenize file)
    failed with "batch lacks [...]" at the first validation, after the training steps when sanity checks are off
    (experiment=leaderboard/ar_prior). Now refused by check_data, naming the file."""
    from zoo.checkpoint import atomic_torch_save
    from zoo.train import check_compatibility, instantiate

    train_file = _write_embed_file(tmp_path / "train.pt", 8, seed=0)
    codes = atomic_torch_save({"image_tokens": torch.zeros(8, 2, 2, dtype=torch.long)}, tmp_path / "codes.pt")
    cfg = train_cfg(
        "model=ar_prior",
        "model.preset=tiny",
        "data.train_size=8",
        "data.val_size=8",
        f"data.features.train={train_file}",
        f"data.features.val={codes}",
    )
    with pytest.raises(ConfigError, match=f"data.features.val={codes} lacks .*clip_image_emb.*not a zoo-embed file"):
        check_compatibility(instantiate(cfg.model), instantiate(cfg.data))


def _one_step_on_features(model: str, tmp_path: Path, splits: tuple[str, ...]) -> list[str]:
    """zoo-train overrides: a one-step tiny ``model`` run on zoo-embed-style files for ``splits`` only."""
    args = [f"model={model}", "model.preset=tiny", "data.train_size=8", "data.val_size=8", "data.test_size=8"]
    args += [f"data.features.{s}={_write_embed_file(tmp_path / f'{s}.pt', 8, seed=i)}" for i, s in enumerate(splits)]
    args += ["logger=csv", "trainer.max_steps=1", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]
    if model == "captioner":
        args += ["data/tokenizer=bpe", "data.tokenizer.vocab_size=400"]
    return args


@pytest.mark.parametrize("model", ["ar_prior", "captioner"])
def test_train_features_without_val_features_are_refused_when_the_run_validates(train_cfg, tmp_path, model):
    """data.features.train and no .val: the val batches lack the features, and the run stopped at its first
    validation (after every training step with sanity checks off). Refused before training, unless validation is
    off (trainer.limit_val_batches=0, as a train-only run may be)."""
    from zoo.train import check_compatibility, instantiate, train, validates

    args = [*_one_step_on_features(model, tmp_path, ("train",)), "trainer.num_sanity_val_steps=0"]
    cfg = train_cfg(*args)
    assert validates(cfg)
    with pytest.raises(ConfigError, match=r"no data.features.val: validation reads .*clip_image_emb.*split=val"):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()  # refused before any step
    off = train_cfg(*args, "trainer.limit_val_batches=0")
    assert not validates(off)
    check_compatibility(instantiate(off.model), instantiate(off.data), validates(off))  # a train-only run is fine


@pytest.mark.parametrize("model", ["ar_prior", "captioner", "diffusion_prior"])
def test_train_and_val_features_without_test_features_are_refused_when_the_run_tests(train_cfg, tmp_path, model):
    """zoo-train's default test=true with data.features.train / .val and no .test: the run trained to the end, then
    its test batches lacked the features (the captioner's 'batch lacks clip_image_emb', the priors' likewise). Refused
    before training, unless the test stage is off (test=false)."""
    from zoo.train import check_compatibility, fit_tiny_to_data, instantiate, tests, train

    args = _one_step_on_features(model, tmp_path, ("train", "val"))
    cfg = train_cfg(*args, "test=true")
    assert tests(cfg)
    with pytest.raises(ConfigError, match=r"no data.features.test: the test stage reads .*clip_image_emb.*test=false"):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()  # refused before any step
    off = train_cfg(*args, "test=false")
    assert not tests(off)
    dm = instantiate(off.data)
    check_compatibility(fit_tiny_to_data(instantiate(off.model), dm), dm, True, tests(off))


@pytest.mark.parametrize(
    "kw, key",
    [
        ({"n_components": 1.5}, "n_components"),  # kept 1 component
        ({"n_components": True}, "n_components"),
        ({"variance_kept": "0.99"}, "variance_kept"),  # a TypeError from the comparison
        ({"uniform_std": -4.0}, "uniform_std"),  # inverted bucket edges
        ({"text_dropout": "0.1"}, "model.text_dropout"),
        ({"dot_quantile": "0.5"}, "model.dot_quantile"),
    ],
)
def test_options_of_the_wrong_kind_are_refused_when_built(kw, key):
    with pytest.raises(ConfigError, match=key):
        ARPriorLit(preset="tiny", **kw)
