"""FID, KID, Inception Score and FD_CLIP on features, a real-statistics cache, and ``compute_metrics``.

The statistics are torch-fidelity's own functions (``fid_features_to_statistics``/``fid_statistics_to_metric``,
``kid_features_to_metric``, ``isc_features_to_metric``), called on features from ``eval.features.InceptionFeatures``
(torch-fidelity's extractor), so a number from here is a torch-fidelity number; tests/eval/test_metrics.py checks
them end to end against ``torch_fidelity.calculate_metrics`` and torchmetrics.

One formula is written by hand, for speed, and says so: when both feature sets have at most as many samples as
dimensions (N <= 2048: tests, small ablations) ``frechet_distance`` computes tr sqrt(S_a S_b) as the nuclear norm of
an N_a x N_b matrix instead of torch-fidelity's eigvals of the 2048 x 2048 product (10-25 s per call on 2 CPU
cores). It is the same quantity (see ``_frechet_distance_low_rank``) and is tested against the library.

Protocol notes (which numbers are comparable):
- Inputs are [-1, 1] images; preprocessing is ``eval.features`` (uint8 rounding, torch-fidelity's TF1 bilinear
  resize to 299).
- FID/KID use the 2048-d pool features; IS uses ``logits_unbiased``, 10 splits, seeded shuffle (rng_seed 2020), as
  torch-fidelity; KID: cubic polynomial kernel, 100 subsets of 1000 (``compute_metrics`` lowers the subset size to
  the number of samples when there are fewer and reports the size used).
- FID is biased upwards for small N; only compare FIDs computed with the same N (the papers use 30,000).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch_fidelity.metric_fid import (
    KEY_METRIC_FID,
    fid_features_to_statistics,
    fid_statistics_to_metric,
)
from torch_fidelity.metric_isc import (
    KEY_METRIC_ISC_MEAN,
    KEY_METRIC_ISC_STD,
    isc_features_to_metric,
)
from torch_fidelity.metric_kid import (
    KEY_METRIC_KID_MEAN,
    KEY_METRIC_KID_STD,
    kid_features_to_metric,
)

from eval.features import (
    ImageSource,
    InceptionFeatures,
    check_images,
    iter_image_batches,
)
from zoo.checkpoint import atomic_torch_save, safe_load
from zoo.data.degradations import gaussian_blur

METRICS = ("fid", "kid", "is")
DEFAULT_SEED = 2020  # torch-fidelity's rng_seed (IS split shuffle, KID subsets)
PREPROCESS = "uint8-round,tf1-bilinear-299"  # eval.features; part of every cache key


# ----------------------------------------------------------------------------------------------- validation
def _as_features(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not torch.is_tensor(x):
        raise ValueError(f"{name}: expected a (N, D) tensor of features, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name}: expected features of shape (N, D), got {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"{name}: need at least 2 samples, got {x.shape[0]}")
    if not x.is_floating_point():
        x = x.float()
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: features contain NaN or Inf")
    return x.detach().cpu()


def _pair(feats_a, feats_b) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _as_features(feats_a, "feats_a"), _as_features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    return a, b


# ----------------------------------------------------------------------------------------------- FID
def fid_statistics(features) -> dict[str, torch.Tensor]:
    """``{"mu": (D,), "sigma": (D, D)}`` float64, from torch-fidelity's ``fid_features_to_statistics``."""
    f = _as_features(features, "features").double()  # float64 in: mu and sigma both float64
    stats = fid_features_to_statistics(f)
    return {"mu": torch.from_numpy(np.asarray(stats["mu"])), "sigma": torch.from_numpy(np.asarray(stats["sigma"]))}


def frechet_distance_from_statistics(stats_a: dict, stats_b: dict) -> float:
    """FID between two ``fid_statistics`` dicts with torch-fidelity's ``fid_statistics_to_metric`` (eigvals)."""

    def np_stats(s):
        mu, sigma = (torch.as_tensor(s[k]).double().cpu().numpy() for k in ("mu", "sigma"))
        return {"mu": mu, "sigma": sigma}

    sa, sb = np_stats(stats_a), np_stats(stats_b)
    if sa["mu"].shape != sb["mu"].shape:
        raise ValueError(f"statistics of different dimension: {sa['mu'].shape} vs {sb['mu'].shape}")
    return float(fid_statistics_to_metric(sa, sb, verbose=False)[KEY_METRIC_FID])


def _frechet_distance_low_rank(a: torch.Tensor, b: torch.Tensor) -> float:
    """Exact FID for N_a, N_b <= D via an N_a x N_b SVD (hand-written: the library only offers the D x D eigvals).

    With centred, scaled features A = (X_a - mu_a) / sqrt(N_a - 1) (N_a x D), S_a = A^T A and likewise S_b = B^T B.
    S_a S_b = A^T (A B^T B) has the same non-zero eigenvalues as (A B^T)(A B^T)^T, whose eigenvalues are the
    squared singular values of A B^T. Hence tr sqrt(S_a S_b) = sum of singular values of A B^T (nuclear norm), and
    tr S_a = ||A||_F^2. No eigen-solver on a non-symmetric matrix, so no spurious complex parts either.
    """
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    A = (a - mu_a) / (a.shape[0] - 1) ** 0.5  # (N_a, D)
    B = (b - mu_b) / (b.shape[0] - 1) ** 0.5  # (N_b, D)
    tr_covmean = torch.linalg.svdvals(A @ B.T).sum()  # (N_a, N_b) -> nuclear norm
    fd = (mu_a - mu_b).square().sum() + A.square().sum() + B.square().sum() - 2 * tr_covmean
    return float(fd)


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N_a, D), (N_b, D): FID on Inception features.

    N >= D on either side: torch-fidelity's statistics and ``fid_statistics_to_metric``; otherwise the exact
    low-rank form (same value, milliseconds instead of seconds).
    """
    a, b = _pair(feats_a, feats_b)
    if max(a.shape[0], b.shape[0]) <= a.shape[1]:
        return _frechet_distance_low_rank(a, b)
    return frechet_distance_from_statistics(fid_statistics(a), fid_statistics(b))


# ----------------------------------------------------------------------------------------------- KID, IS
def kid(
    feats_a,
    feats_b,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: Optional[float] = None,
    coef0: float = 1.0,
    seed: int = DEFAULT_SEED,
) -> tuple[float, float]:
    """Kernel Inception Distance (mean, std over subsets) with torch-fidelity's ``kid_features_to_metric``.

    Polynomial kernel (x.y * gamma + coef0) ** degree, gamma = 1/D by default; unbiased MMD^2 on ``subsets`` random
    subsets of ``subset_size`` from each side, drawn with ``np.random.RandomState(seed)``.
    """
    a, b = _pair(feats_a, feats_b)
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    if not 2 <= subset_size <= min(a.shape[0], b.shape[0]):
        raise ValueError(
            f"KID subset_size={subset_size} must be between 2 and the smaller sample count "
            f"({a.shape[0]} vs {b.shape[0]}); pass subset_size <= {min(a.shape[0], b.shape[0])}"
        )
    out = kid_features_to_metric(
        a.float(),
        b.float(),
        kid_subsets=subsets,
        kid_subset_size=subset_size,
        kid_kernel="poly",
        kid_kernel_poly_degree=degree,
        kid_kernel_poly_gamma=gamma,
        kid_kernel_poly_coef0=coef0,
        rng_seed=seed,
        verbose=False,
    )
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD])


def inception_score(logits, splits: int = 10, shuffle: bool = True, seed: int = DEFAULT_SEED) -> tuple[float, float]:
    """Inception Score (mean, std over ``splits``) of (N, classes) logits with torch-fidelity's
    ``isc_features_to_metric`` (use Inception's ``logits_unbiased``; samples shuffled with RandomState(seed))."""
    x = _as_features(logits, "logits")
    if not 1 <= splits <= x.shape[0]:
        raise ValueError(f"splits must be between 1 and the number of samples ({x.shape[0]}), got {splits}")
    out = isc_features_to_metric(x.float(), splits=splits, shuffle=shuffle, rng_seed=seed)
    return float(out[KEY_METRIC_ISC_MEAN]), float(out[KEY_METRIC_ISC_STD])


# ----------------------------------------------------------------------------------------------- FD_CLIP
@torch.no_grad()
def clip_features(
    scorer, images: ImageSource, batch_size: int = 64, progress: bool = False, desc: str = "CLIP features"
) -> torch.Tensor:
    """(N, D) image features from any object with ``encode_image(images in [-1, 1]) -> (N, D)``."""
    from zoo.progress import track

    feats = []
    for batch in track(iter_image_batches(images, batch_size), desc=desc, disable=not progress, leave=False):
        check_images(batch)
        feats.append(torch.as_tensor(scorer.encode_image(batch)).detach().float().cpu())
    if not feats:
        raise ValueError("no images given")
    return torch.cat(feats)


def fd_clip(
    scorer, images_a: ImageSource, images_b: ImageSource, batch_size: int = 64, progress: bool = False
) -> float:
    """FD_CLIP: the Fréchet distance computed on CLIP image embeddings instead of Inception pool features
    (Kynkäänniemi et al. 2023). ``scorer`` is e.g. ``zoo.models.clip.scorer.ClipScorer``; its ``encode_image``
    takes [-1, 1] images and returns normalised features. Compare values only for the same CLIP model."""
    fa = clip_features(scorer, images_a, batch_size, progress)
    fb = clip_features(scorer, images_b, batch_size, progress)
    return frechet_distance(fa, fb)


# ----------------------------------------------------------------------------------------------- diversity
def pairwise_cosine_distance(embeddings) -> float:
    """Sample diversity: mean over groups of the mean over pairs i < j of ``1 - cos(e_i, e_j)``, for embeddings
    (n, k, d) = k samples of each of n captions (``zoo-eval``'s diversity ablation, on CLIP image embeddings).

    0 when every caption's samples embed identically, 1 for mutually orthogonal embeddings (up to 2 for opposite
    ones). Rows are L2-normalised here, so unnormalised features give the same number as their unit rows. Each
    caption weighs the same whatever its samples; float64 so that identical samples read 0, not -1e-7.
    """
    e = torch.as_tensor(embeddings)
    if e.dim() != 3 or e.shape[0] < 1 or e.shape[1] < 2 or e.shape[2] < 1:
        raise ValueError(
            f"embeddings must be (captions, samples >= 2, dim), got {tuple(e.shape)} "
            f"(a distance needs at least two samples per caption)"
        )
    e = e.double()
    norms = e.norm(dim=-1)
    if not torch.isfinite(e).all() or (norms == 0).any():
        raise ValueError("embeddings hold a zero or non-finite row: its cosine is undefined")
    e = e / norms.unsqueeze(-1)
    k = e.shape[1]
    i, j = torch.triu_indices(k, k, offset=1)
    dist = 1.0 - (e[:, i] * e[:, j]).sum(-1)  # (n, k(k-1)/2): one distance per unordered pair
    return float(dist.mean(1).mean())


# ----------------------------------------------------------------------------------------------- real-stats cache
@dataclass(frozen=True)
class RealStatsKey:
    """What identifies statistics of real images. Anything that changes the numbers must be here.

    ``extractor`` should be ``InceptionFeatures.extractor_id`` (names the weights file by hash); ``n`` the number
    of real images (``None``: all of the split); ``blur_radius`` the Gaussian blur standard deviation applied;
    ``protocol`` free text for anything else (e.g. "coco2014-val-center-crop").
    """

    dataset: str
    split: str
    resolution: int
    extractor: str
    n: Optional[int] = None
    blur_radius: float = 0.0
    protocol: str = ""

    def protocol_string(self) -> str:
        n = "all" if self.n is None else str(int(self.n))
        return f"{self.protocol};n={n};blur_sigma={float(self.blur_radius):g};prep={PREPROCESS}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "protocol_string": self.protocol_string()}

    def filename(self) -> str:
        fields = (self.dataset, self.split, str(int(self.resolution)), self.extractor, self.protocol_string())
        digest = hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{self.dataset}-{self.split}-{int(self.resolution)}px")
        return f"{slug}-blur{float(self.blur_radius):g}-{digest}.pt"


class RealStatsCache:
    """On-disk cache of real-image statistics: ``mu``, ``sigma`` (float64) and, for KID, the features.

    One file per ``RealStatsKey`` in ``cache_dir``, written atomically (``atomic_torch_save``) and read with
    ``weights_only=True`` (``safe_load``); the key is stored inside the file and checked on load.
    """

    FORMAT = 1

    def __init__(self, cache_dir: Union[str, os.PathLike]):
        self.cache_dir = Path(cache_dir).expanduser()

    def path(self, key: RealStatsKey) -> Path:
        return self.cache_dir / key.filename()

    def load(self, key: RealStatsKey) -> Optional[dict]:
        """The stored record (``mu``, ``sigma``, ``n``, optional ``features``) or ``None`` on a miss."""
        path = self.path(key)
        if not path.is_file():
            return None
        # a cache entry is not a checkpoint to swap for another: the fix for a truncated one is to drop it
        rec = safe_load(path, fix=f"delete {path}: the statistics are recomputed and cached again on the next run")
        if not isinstance(rec, dict) or rec.get("key") != key.as_dict():
            stored = rec.get("key") if isinstance(rec, dict) else None
            raise ValueError(f"{path} does not hold the statistics for {key} (stored key: {stored!r}); delete it")
        return rec

    def save(self, key: RealStatsKey, features: torch.Tensor, store_features: bool = True) -> dict:
        """Compute statistics of (N, D) ``features`` and write them; returns the record."""
        f = _as_features(features, "features").float()
        # fewer rows than the key's n: real files the protocol drew but ImageFiles could not decode (truncated past
        # their header; skipped and warned about); the key names the drawn set, the record its row count
        if key.n is not None and f.shape[0] > int(key.n):
            raise ValueError(f"key says n={key.n} but {f.shape[0]} feature rows were given")
        rec = {"format": self.FORMAT, "key": key.as_dict(), "n": int(f.shape[0]), **fid_statistics(f)}
        if store_features:
            rec["features"] = f
        atomic_torch_save(rec, self.path(key))
        return rec

    def get_or_compute(
        self, key: RealStatsKey, compute: Callable[[], torch.Tensor], store_features: bool = True
    ) -> dict:
        """The cached record, or ``compute()`` -> (N, D) features, saved then returned."""
        rec = self.load(key)
        if rec is None:
            rec = self.save(key, compute(), store_features=store_features)
        return rec


# ----------------------------------------------------------------------------------------------- compute_metrics
def _blur_transform(radius: float):
    return None if not radius else (lambda x: gaussian_blur(x, radius))


def compute_metrics(
    real: Union[ImageSource, RealStatsKey],
    fake: ImageSource,
    extractor: InceptionFeatures,
    metrics: Sequence[str] = METRICS,
    *,
    cache: Optional[RealStatsCache] = None,
    real_images: Optional[ImageSource] = None,
    blur_radius: float = 0.0,
    batch_size: int = 50,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    is_splits: int = 10,
    seed: int = DEFAULT_SEED,
    progress: bool = True,
) -> dict[str, Any]:
    """FID / KID / IS of ``fake`` images against ``real`` ones (both [-1, 1], any size), batched, with progress bars.

    ``real`` is images (a tensor (N, 3, H, W), an iterable of batches or a DataLoader of dict batches) or a
    ``RealStatsKey`` looked up in ``cache``; on a miss the statistics are computed from ``real_images`` and stored.
    ``blur_radius`` (Gaussian standard deviation, ``zoo.data.degradations``) is applied to both sides (DALL·E fig. 9a).
    IS is computed on ``fake`` only. Returns ``{"fid", "kid_mean", "kid_std", "is_mean", "is_std", "n_real",
    "n_fake", "kid_subset_size", "blur_radius", "extractor"}`` (only the requested metrics).
    """
    metrics = tuple(m.lower() for m in metrics)
    unknown = set(metrics) - set(METRICS)
    if unknown or not metrics:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {METRICS}")
    if isinstance(real, RealStatsKey):  # check the key before any extraction
        if cache is None:
            raise ValueError("a RealStatsKey needs cache=RealStatsCache(dir)")
        if real.extractor != extractor.extractor_id:
            raise ValueError(
                f"cached statistics were made with {real.extractor!r}, this extractor is {extractor.extractor_id!r} "
                f"(key extractor must be InceptionFeatures.extractor_id)"
            )
        if float(real.blur_radius) != float(blur_radius):
            raise ValueError(f"key blur_radius {real.blur_radius} != blur_radius {blur_radius}: make a key per radius")
    transform = _blur_transform(blur_radius)
    out: dict[str, Any] = {"extractor": extractor.extractor_id, "blur_radius": float(blur_radius)}

    fake_feats = extractor.extract(fake, batch_size, progress, desc="Inception features (fake)", transform=transform)
    out["n_fake"] = int(fake_feats["2048"].shape[0])
    if "is" in metrics:
        out["is_mean"], out["is_std"] = inception_score(fake_feats["logits_unbiased"], splits=is_splits, seed=seed)
    if not {"fid", "kid"} & set(metrics):
        return out

    real_rec: dict[str, Any]
    if isinstance(real, RealStatsKey):
        rec = cache.load(real)
        if rec is None:
            if real_images is None:
                raise FileNotFoundError(
                    f"no cached real statistics for {real} in {cache.cache_dir}; pass real_images= to compute them"
                )
            feats = extractor.extract(real_images, batch_size, progress, "Inception features (real)", transform)
            rec = cache.save(real, feats["2048"], store_features=True)
        real_rec = rec
    else:
        feats = extractor.extract(real, batch_size, progress, "Inception features (real)", transform)
        real_rec = {"features": feats["2048"], "n": int(feats["2048"].shape[0])}
    out["n_real"] = int(real_rec["n"])

    if "fid" in metrics:
        if "features" in real_rec:
            out["fid"] = frechet_distance(real_rec["features"], fake_feats["2048"])
        else:
            out["fid"] = frechet_distance_from_statistics(real_rec, fid_statistics(fake_feats["2048"]))
    if "kid" in metrics:
        if "features" not in real_rec:
            raise ValueError("KID needs the real features; this cache entry has statistics only (store_features=False)")
        size = min(kid_subset_size, out["n_real"], out["n_fake"])
        if size < kid_subset_size:
            warnings.warn(f"KID subset size lowered from {kid_subset_size} to {size} (number of samples)")
        out["kid_subset_size"] = size
        # (fake, real) order = torch-fidelity's calculate_metrics(input1=fake, input2=real): the seeded subset
        # draw then picks the same samples, so the numbers match torch-fidelity's exactly.
        out["kid_mean"], out["kid_std"] = kid(fake_feats["2048"], real_rec["features"], kid_subsets, size, seed=seed)
    return out


__all__ = [
    "METRICS",
    "RealStatsCache",
    "RealStatsKey",
    "clip_features",
    "compute_metrics",
    "fd_clip",
    "fid_statistics",
    "frechet_distance",
    "frechet_distance_from_statistics",
    "inception_score",
    "kid",
    "pairwise_cosine_distance",
]
