"""eval.features / eval.metrics against the libraries they wrap, offline.

The FID Inception gets RANDOM weights (kaiming-normal convs; torch's default init gives degenerate features) written
to a temp file once per module (~96 MB, never committed) and passed through the option users use
(``InceptionFeatures(weights_path=...)``, torch-fidelity's ``feature_extractor_weights_path``). Inception on CPU
costs ~0.1-0.5 s per image here, so the image sets are small and every extraction is reused.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn as nn

from eval.features import (
    INCEPTION_FILENAME,
    INCEPTION_URL,
    InceptionFeatures,
    make_random_inception_weights,
    to_uint8,
)
from eval.metrics import (
    RealStatsCache,
    RealStatsKey,
    _frechet_distance_low_rank,
    compute_metrics,
    fd_clip,
    fid_statistics,
    frechet_distance,
    frechet_distance_from_statistics,
    inception_score,
    kid,
)
from zoo.data.degradations import gaussian_blur
from zoo.errors import MissingWeightsError

N = 12  # images per side (Inception at 299 px on 2 shared CPU cores: ~0.1-0.5 s per image)
KID_SUBSETS = 10
KID_SUBSET_SIZE = 10  # < N so the seeded subset draw matters
IS_SPLITS = 2  # N / 10 splits would hold 1 image each (IS = 1 per split)


class _Uint8Dataset(torch.utils.data.Dataset):
    """What torch-fidelity takes: a Dataset returning bare uint8 CHW tensors."""

    def __init__(self, images_u8):
        self.images = images_u8

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def _shapes(split, n, resolution, **kw):
    from zoo.data.shapes import ShapesDataset

    ds = ShapesDataset(split=split, size=n, resolution=resolution, **kw)
    return torch.stack([ds[i]["image"] for i in range(n)])


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_random_inception_weights(tmp_path_factory.mktemp("inception") / INCEPTION_FILENAME, seed=0)


@pytest.fixture(scope="module")
def extractor(weights):
    return InceptionFeatures(weights_path=weights)


@pytest.fixture(scope="module")
def images():
    real = _shapes("val", N, 64)  # (N, 3, 64, 64) in [-1, 1]
    fake = _shapes("train", N, 32, max_objects=1)  # another distribution *and* another size
    return real, fake


@pytest.fixture(scope="module")
def ours(extractor, images):
    """compute_metrics end to end; the features it extracted are recorded for the other tests."""
    real, fake = images
    recorded = []
    original = extractor.extract

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        recorded.append(out)
        return out

    extractor.extract = spy
    try:
        result = compute_metrics(
            real,
            fake,
            extractor,
            ("fid", "kid", "is"),
            batch_size=8,
            kid_subsets=KID_SUBSETS,
            kid_subset_size=KID_SUBSET_SIZE,
            is_splits=IS_SPLITS,
            progress=False,
        )
    finally:
        del extractor.extract
    fake_feats, real_feats = recorded  # compute_metrics extracts the fakes first
    return result, real_feats, fake_feats


@pytest.fixture(scope="module")
def reference(weights, images):
    """torch-fidelity's calculate_metrics on the same images as uint8 (input1 = fake: IS is computed on input1)."""
    from torch_fidelity import calculate_metrics

    real, fake = images
    return calculate_metrics(
        input1=_Uint8Dataset(to_uint8(fake)),
        input2=_Uint8Dataset(to_uint8(real)),
        fid=True,
        kid=True,
        isc=True,
        cuda=False,
        cache=False,
        verbose=False,
        save_cpu_ram=True,
        batch_size=8,
        feature_extractor_weights_path=str(weights),
        kid_subsets=KID_SUBSETS,
        kid_subset_size=KID_SUBSET_SIZE,
        isc_splits=IS_SPLITS,
    )


# ------------------------------------------------------------------------------------------ parity with the libraries
def test_uint8_mapping_round_trips_dataset_images(images):
    real, _ = images
    u8 = to_uint8(real)
    assert u8.dtype == torch.uint8
    torch.testing.assert_close(u8.float() / 127.5 - 1, real, atol=1e-6, rtol=0)


def test_features_are_informative(ours):
    _, real_feats, fake_feats = ours
    assert real_feats["2048"].shape == (N, 2048) and real_feats["logits_unbiased"].shape == (N, 1008)
    assert real_feats["2048"].std(0).mean() > 1e-3  # random kaiming weights: not the degenerate default init


def test_fid_kid_is_match_torch_fidelity(ours, reference):
    result, real_feats, fake_feats = ours
    assert result["n_real"] == result["n_fake"] == N and result["kid_subset_size"] == KID_SUBSET_SIZE
    assert result["fid"] == pytest.approx(reference["frechet_inception_distance"], rel=1e-3)
    assert result["fid"] > 0.05  # the two sets differ (random weights: small absolute values)
    assert result["kid_mean"] == pytest.approx(reference["kernel_inception_distance_mean"], rel=1e-3, abs=1e-6)
    assert result["kid_std"] == pytest.approx(reference["kernel_inception_distance_std"], rel=1e-3, abs=1e-6)
    assert result["is_mean"] == pytest.approx(reference["inception_score_mean"], rel=1e-3)
    assert result["is_std"] == pytest.approx(reference["inception_score_std"], rel=1e-3, abs=1e-6)
    assert result["is_mean"] > 1.05  # not the degenerate IS = 1
    # the functional API gives the same numbers from the same features
    assert frechet_distance(real_feats["2048"], fake_feats["2048"]) == pytest.approx(result["fid"], rel=1e-9)
    # KID's seeded subset draw: torch-fidelity draws for input1 (fake) first
    km, ks = kid(fake_feats["2048"], real_feats["2048"], KID_SUBSETS, KID_SUBSET_SIZE)
    expected = (reference["kernel_inception_distance_mean"], reference["kernel_inception_distance_std"])
    assert (km, ks) == pytest.approx(expected, rel=1e-3, abs=1e-6)
    assert inception_score(fake_feats["logits_unbiased"], splits=IS_SPLITS) == pytest.approx(
        (result["is_mean"], result["is_std"]), rel=1e-12
    )


def test_features_match_torchmetrics_antialias_false(weights, images, ours):
    """torchmetrics' NoTrainInceptionV3 (antialias=False, same weights file) sees the same features."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    real, _ = images
    _, real_feats, _ = ours
    tm = NoTrainInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights), antialias=False
    )
    with torch.no_grad():
        f = tm(to_uint8(real[:2]))
    torch.testing.assert_close(f, real_feats["2048"][:2], rtol=1e-4, atol=1e-5)


class _Projection(nn.Module):
    """A fixed 2048 -> 64 random projection used as torchmetrics' custom ``feature`` module: torchmetrics' FID
    runs torch.linalg.eigvals on D x D, ~1 min at D = 2048 on this CPU, so the statistic is compared at D = 64."""

    def __init__(self, d_in=2048, d_out=64):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.register_buffer("p", torch.randn(d_in, d_out, generator=g, dtype=torch.float64) / math.sqrt(d_in))
        self.num_features = d_out

    def forward(self, feats):
        return feats.double() @ self.p


def test_fid_and_kid_statistics_match_torchmetrics(ours):
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    _, real_feats, fake_feats = ours
    proj = _Projection()
    pr, pf = proj(real_feats["2048"]), proj(fake_feats["2048"])
    fid_tm = FrechetInceptionDistance(feature=proj, reset_real_features=False)
    fid_tm.update(real_feats["2048"], real=True)
    fid_tm.update(fake_feats["2048"], real=False)
    # N = 16 < D = 64: torchmetrics' eigvals of a rank-deficient product carries ~1e-5 relative noise
    assert frechet_distance(pr, pf) == pytest.approx(float(fid_tm.compute()), rel=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kid_tm = KernelInceptionDistance(feature=_Projection(), subsets=3, subset_size=N)
    kid_tm.update(real_feats["2048"], real=True)
    kid_tm.update(fake_feats["2048"], real=False)
    mean_tm, _ = kid_tm.compute()  # subset_size = N: every subset is the whole set, any permutation
    assert kid(pr, pf, subsets=3, subset_size=N)[0] == pytest.approx(float(mean_tm), rel=1e-4, abs=1e-7)


def test_low_rank_fid_equals_library_eigvals():
    """The hand-written N <= D path (nuclear norm) against torch-fidelity's fid_statistics_to_metric."""
    g = torch.Generator().manual_seed(0)
    for n_a, n_b, d in ((20, 25, 48), (30, 30, 30), (100, 80, 32)):
        a = torch.randn(n_a, d, generator=g) * 0.5 + 0.2
        b = torch.randn(n_b, d, generator=g) @ (torch.eye(d) + 0.3 * torch.randn(d, d, generator=g))
        lib = frechet_distance_from_statistics(fid_statistics(a), fid_statistics(b))
        assert _frechet_distance_low_rank(a, b) == pytest.approx(lib, rel=1e-6)
        assert frechet_distance(a, b) == pytest.approx(lib, rel=1e-6)
    assert abs(frechet_distance(a, a)) < 1e-6


# ------------------------------------------------------------------------------------------ blur ablation
def test_fd_rises_monotonically_with_blur_radius(extractor, images, ours):
    """DALL·E fig. 9(a) reading: FD(blurred real, real) for radii 0, 1, 2, 4, 8 is increasing.

    12 images a side to bound the time (4 x 12 extra Inception passes). With these random weights the FDs were
    0.19, 0.46, 0.85, 1.30 (r = 1, 2, 4, 8) at 8 images, 0.18, 0.47, 1.05, 1.85 at 12 and 0.17, 0.46, 1.06, 1.87
    at 32: a wide margin."""
    real, _ = images
    _, real_feats, _ = ours
    orig = real_feats["2048"]
    fds = [frechet_distance(orig, orig)]
    for r in (1, 2, 4, 8):
        blurred = extractor.extract(real, batch_size=12, progress=False, transform=lambda x: gaussian_blur(x, r))
        fds.append(frechet_distance(orig, blurred["2048"]))
    assert abs(fds[0]) < 1e-6
    assert all(b > a for a, b in zip(fds, fds[1:])), fds


# ------------------------------------------------------------------------------------------ real-stats cache
def test_real_stats_cache_round_trip_and_keys(tmp_path, extractor, images, ours):
    real, fake = images
    _, real_feats, fake_feats = ours
    cache = RealStatsCache(tmp_path / "stats")
    key = RealStatsKey("shapes", "val", 64, extractor.extractor_id, n=N, blur_radius=0)
    assert cache.load(key) is None
    saved = cache.save(key, real_feats["2048"])
    loaded = cache.load(key)  # weights_only load
    for k in ("mu", "sigma", "features"):
        torch.testing.assert_close(loaded[k], saved[k], rtol=0, atol=0)
    assert loaded["n"] == N and loaded["mu"].dtype == torch.float64
    # every protocol field changes the file
    variants = [RealStatsKey("shapes", "val", 64, extractor.extractor_id, n=N, blur_radius=r) for r in (1, 2, 4, 8)] + [
        RealStatsKey("shapes", "val", 64, extractor.extractor_id, n=N + 1),
        RealStatsKey("shapes", "test", 64, extractor.extractor_id, n=N),
        RealStatsKey("shapes", "val", 32, extractor.extractor_id, n=N),
        RealStatsKey("shapes", "val", 64, "inception-v3-compat@00000000", n=N),
        RealStatsKey("coco", "val", 64, extractor.extractor_id, n=N),
    ]
    paths = {cache.path(k) for k in [key, *variants]}
    assert len(paths) == len(variants) + 1
    assert all(cache.load(k) is None for k in variants)
    # FID / KID from the cache == from features (few fakes to keep the test fast)
    few = fake[:3]
    with pytest.warns(UserWarning, match="subset size lowered"):
        res = compute_metrics(key, few, extractor, ("fid", "kid"), cache=cache, progress=False, kid_subsets=3)
    assert res["n_real"] == N and res["n_fake"] == 3 and res["kid_subset_size"] == 3
    assert res["fid"] == pytest.approx(frechet_distance(real_feats["2048"], fake_feats["2048"][:3]), rel=1e-4)
    expected_kid = kid(fake_feats["2048"][:3], real_feats["2048"], subsets=3, subset_size=3)[0]
    assert res["kid_mean"] == pytest.approx(expected_kid, rel=1e-3, abs=1e-6)
    # a statistics-only entry (FID via the eigvals path; KID refused) stores no features
    key2 = RealStatsKey("shapes", "val", 64, extractor.extractor_id, n=N, protocol="stats-only")
    cache.save(key2, real_feats["2048"], store_features=False)
    assert "features" not in cache.load(key2)
    # a key made for another extractor or radius is refused before any extraction
    with pytest.raises(ValueError, match="extractor"):
        compute_metrics(variants[7], few, extractor, ("fid",), cache=cache, progress=False)
    with pytest.raises(ValueError, match="blur_radius"):
        compute_metrics(variants[0], few, extractor, ("fid",), cache=cache, progress=False)
    with pytest.raises(FileNotFoundError, match="real_images"):
        compute_metrics(variants[5], few, extractor, ("fid",), cache=cache, progress=False)


# ------------------------------------------------------------------------------------------ offline weights
def test_missing_weights_is_one_clear_error_without_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))

    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(MissingWeightsError) as e:
        InceptionFeatures()
    msg = str(e.value)
    assert INCEPTION_FILENAME in msg and INCEPTION_URL in msg
    assert f"eval.inception_weights=/path/to/{INCEPTION_FILENAME}" in msg
    assert str(tmp_path / "empty_torch_home") in msg  # where it looked
    with pytest.raises(MissingWeightsError, match="nowhere.pth"):
        InceptionFeatures(weights_path=tmp_path / "nowhere.pth")


def test_weights_from_torch_hub_cache(tmp_path, monkeypatch, weights):
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / INCEPTION_FILENAME).symlink_to(weights)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ex = InceptionFeatures()
    assert ex.weights_path.name == INCEPTION_FILENAME


def test_not_inception_weights_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"w": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match="FID Inception"):
        InceptionFeatures(weights_path=bad)


# ------------------------------------------------------------------------------------------ input validation
@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(1, 3, 32, 32), "at least 2"),
        (torch.full((2, 3, 32, 32), float("nan")), "NaN"),
        (torch.zeros(2, 1, 32, 32), "3 channels"),
        (torch.zeros(2, 32, 32, 3), "channels"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "uint8"),
        (torch.rand(2, 3, 32, 32) * 255, r"\[-1, 1\]"),
        (torch.rand(2, 3, 32, 32) * 1.2, "clamp"),
        (torch.zeros(3, 32, 32), "unsqueeze"),
        ("not a tensor", "Tensor"),
    ],
)
def test_bad_images_raise_value_error(extractor, bad, match):
    with pytest.raises(ValueError, match=match):
        extractor.extract(bad, progress=False)


def test_bad_batch_inside_an_iterable_is_caught(extractor):
    batches = [{"image": torch.full((2, 3, 8, 8), float("nan"))}]  # DataLoader-style dict batches
    with pytest.raises(ValueError, match="NaN"):
        extractor.extract(iter(batches), progress=False)
    with pytest.raises(ValueError, match="at least 2"):
        extractor.extract([], progress=False)


def test_metric_argument_errors():
    a, b = torch.randn(8, 4), torch.randn(8, 4)
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(a[:1], b)
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(a, torch.randn(8, 5))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(a, b * float("nan"))
    with pytest.raises(ValueError, match="subset_size"):
        kid(a, b, subset_size=9)
    with pytest.raises(ValueError, match="splits"):
        inception_score(torch.randn(4, 10), splits=5)
    with pytest.raises(ValueError, match="unknown metrics"):
        compute_metrics(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), None, ("fidd",))


# ------------------------------------------------------------------------------------------ FD_CLIP
class _FakeScorer:
    """Any object with encode_image([-1, 1] images) -> (N, D) normalised features (ClipScorer's interface)."""

    def __init__(self):
        self.calls = 0

    def encode_image(self, images):
        self.calls += 1
        f = nn.functional.adaptive_avg_pool2d(images, 4).flatten(1)  # (N, 48)
        return f / f.norm(dim=-1, keepdim=True)


def test_fd_clip_uses_encode_image_features(images):
    real, fake = images
    scorer = _FakeScorer()
    value = fd_clip(scorer, real, fake, batch_size=5)
    expected = frechet_distance(scorer.encode_image(real), scorer.encode_image(fake))
    assert value == pytest.approx(expected, rel=1e-9) and value > 0
    assert scorer.calls == 2 * math.ceil(N / 5) + 2
    assert fd_clip(scorer, real, real) == pytest.approx(0.0, abs=1e-9)


def test_truncated_real_stats_cache_says_delete_it_not_use_another_checkpoint(tmp_path):
    """A cache file cut short (a full disk, a copy that stopped) was reported with the checkpoint advice "use another
    checkpoint (e.g. the run's last.ckpt ...)", which means nothing for a cache; the fix named is deleting it."""
    from zoo.checkpoint import CorruptCheckpointError

    cache = RealStatsCache(tmp_path / "stats")
    key = RealStatsKey("shapes", "val", 64, "inception-v3-compat@00000000", n=4)
    cache.save(key, torch.randn(4, 8, generator=torch.Generator().manual_seed(0)))
    path = cache.path(key)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CorruptCheckpointError, match=r"truncated or corrupt.*delete .*recomputed") as err:
        cache.load(key)
    assert "last.ckpt" not in str(err.value)


def test_real_stats_cache_takes_a_set_with_skipped_files(tmp_path):
    # a real file truncated past its header is skipped when read (ImageFiles): the cache got fewer rows than the
    # drawn set's n and refused them ("key says n=6 but 5 feature rows were given")
    from eval.metrics import RealStatsCache, RealStatsKey

    cache = RealStatsCache(tmp_path)
    key = RealStatsKey("coco2014", "val", 32, "clip:x", n=6, blur_radius=0.0, protocol="p")
    rec = cache.save(key, torch.randn(5, 4))
    assert rec["n"] == 5 and cache.load(key)["n"] == 5
    with pytest.raises(ValueError, match="n=6 but 7"):
        cache.save(key, torch.randn(7, 4))


def test_a_truncated_inception_file_says_download_it_again(tmp_path):
    from eval.features import INCEPTION_URL

    bad = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save({"w": torch.zeros(1000)}, bad)
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(Exception, match=rf"download {INCEPTION_URL} again .*eval\.inception_weights="):
        InceptionFeatures(weights_path=bad)


def test_weights_identity_is_the_files_full_sha256_hashed_once_per_file_version(tmp_path, weights, monkeypatch):
    """results.json records which Inception weights scored FID / KID / IS (file name and full sha256); the ~96 MB
    file is hashed once per (path, size, mtime_ns), and again when it is rewritten."""
    import hashlib
    import os

    import eval.features as features

    ex = InceptionFeatures(weights_path=weights)
    ident = ex.weights_identity
    assert ident["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert ident["file"] == INCEPTION_FILENAME and ident["extractor"] == f"inception-v3-compat@{ident['sha256'][:8]}"
    hashed = []
    sha256 = hashlib.sha256
    monkeypatch.setattr(features.hashlib, "sha256", lambda *a: hashed.append(1) or sha256(*a))
    copy = tmp_path / "copy.pth"
    copy.write_bytes(b"one")
    first = features.file_sha256(copy)
    assert features.file_sha256(copy) == first and features.file_digest(copy) == first[:8]
    assert len(hashed) == 1  # three look-ups, one read of the file
    copy.write_bytes(b"two")
    os.utime(copy, ns=(1, 1))
    assert features.file_sha256(copy) == hashlib.sha256(b"two").hexdigest()
