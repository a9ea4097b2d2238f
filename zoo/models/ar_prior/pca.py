"""The AR prior's discrete view of a CLIP image embedding: PCA, then one bucket id per kept component (torch only).

unCLIP (Ramesh et al., 2022, §2.2): "we reduce the dimensionality of the CLIP image embeddings z_i by applying PCA
[...] retaining only 319 principal components out of the original 1,024 [less than 1% average mean-squared error
in reconstructing the image representations]. After applying PCA, we order the principal components by decreasing
eigenvalue magnitude, quantize each of the 319 dimensions into 1,024 discrete buckets". Nothing public implements
it, so it is written here by hand (torch.linalg; no sklearn in the training loop or the checkpoint).

``EmbeddingPCA``
    ``fit(emb (N, D))``: mean and the full eigenbasis of the (float64) covariance, ``torch.linalg.eigh``; keeps the
    fewest leading components whose explained variance exceeds ``variance_kept`` (0.99: the paper's "< 1% MSE"), or
    exactly ``n_components``; then the bucket edges and centres of each kept component.
    ``encode(emb (B, D)) -> LongTensor (B, K)``, ``decode(codes (B, K)) -> (B, D)`` (not re-normalised: callers
    that want unit CLIP embeddings normalise, as ``ARPriorLit.sample`` does).
    All state is buffers of FIXED shapes -- ``mean`` (D,), ``components`` (D, D) (rows = principal directions,
    decreasing variance; rows >= K unused), ``explained_variance`` (D,), ``n_components`` (scalar; 0 = not fitted),
    ``edges`` (D, n_buckets - 1), ``centres`` (D, n_buckets) -- so a module built from the config alone loads any
    fitted state dict (the checkpoint carries the PCA; ``load_module`` needs no data).

Bucketing (``bucketing=``):
    ``quantile`` (default): equal-mass buckets, interior edges at the empirical quantiles i/n_buckets of each
        component's training coefficients; a bucket decodes to the mean of the training coefficients that fell in
        it (the MSE-optimal value for those edges; an empty bucket -- only when N < n_buckets -- to the midpoint of
        its edges).
    ``uniform``: n_buckets equal-width buckets over ± ``uniform_std`` standard deviations of each component
        (values beyond are clamped to the end buckets), centres at the bucket midpoints.
    Why quantile: at 1024 buckets both quantisation errors are negligible next to the PCA truncation (measured on
    Gaussian-like coefficients, 16k samples: per-component quantisation MSE 8e-5 of the variance for quantile,
    5e-6 for uniform ±4 std, against the 1e-2 that the dropped components cost), so the choice is made on the
    learning side: (1) every one of the n_buckets classes occurs equally often in training -- with uniform buckets
    27% of the 1024 were never seen in that measurement, dead softmax rows the prior can still sample at
    temperature 1; (2) bucket id b means the same thing for every component ("quantile b/n"), which is what lets
    the AR prior share one code embedding and one output head across all K positions; (3) scale-free, no range to
    choose. ``uniform`` stays available (e.g. for fits on fewer samples than buckets, where quantile edges repeat).

``ScalarBins``: the same equal-mass quantile bucketing for one scalar -- the text-image dot product z_t · z_i of the
AR prior's conditioning token, whose bins are then ordered by dot product and equally likely in training.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from zoo.errors import is_number, is_whole

BUCKETINGS = ("quantile", "uniform")


def quantile_edges(x: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """Interior edges of ``n_buckets`` equal-mass buckets per column of x (N, K): (K, n_buckets - 1), the empirical
    quantiles i / n_buckets (linear interpolation), non-decreasing. Uses a sort (``torch.quantile`` refuses large
    inputs)."""
    n = x.shape[0]
    if n < 1:
        raise ValueError("need at least one sample to place bucket edges")
    xs = x.double().sort(0).values  # (N, K)
    q = torch.arange(1, n_buckets, dtype=torch.float64) / n_buckets * (n - 1)  # (n_buckets - 1,) fractional ranks
    lo = q.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    w = (q - lo.double()).unsqueeze(1)  # (n_buckets - 1, 1)
    edges = xs[lo] * (1 - w) + xs[hi] * w  # (n_buckets - 1, K)
    return edges.t().contiguous()


def bucketize(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """values (B, K), per-column interior edges (K, n_buckets - 1) -> bucket ids (B, K) in [0, n_buckets - 1];
    bucket b holds edges[b - 1] <= v < edges[b]."""
    ids = torch.searchsorted(edges.contiguous(), values.t().contiguous().to(edges.dtype), right=True)  # (K, B)
    return ids.t().contiguous()


def bucket_means(values: torch.Tensor, ids: torch.Tensor, n_buckets: int, fallback: torch.Tensor) -> torch.Tensor:
    """Per-column mean of values (N, K) in each bucket (ids (N, K)) -> (K, n_buckets); empty buckets take
    ``fallback`` (K, n_buckets)."""
    k = values.shape[1]
    sums = torch.zeros(k, n_buckets, dtype=torch.float64)
    counts = torch.zeros(k, n_buckets, dtype=torch.float64)
    sums.scatter_add_(1, ids.t(), values.t().double())
    counts.scatter_add_(1, ids.t(), torch.ones_like(values.t(), dtype=torch.float64))
    return torch.where(counts > 0, sums / counts.clamp(min=1), fallback.double())


def _midpoints(edges: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Bucket midpoints from interior edges (K, n - 1) and the outer bounds lo, hi (K,) -> (K, n)."""
    full = torch.cat([lo[:, None], edges, hi[:, None]], 1)  # (K, n + 1)
    return (full[:, :-1] + full[:, 1:]) / 2


class EmbeddingPCA(nn.Module):
    """PCA + per-component bucketing of D-dim embeddings into (B, K) ids in [0, n_buckets). See the module doc."""

    def __init__(
        self,
        dim: int,
        n_buckets: int = 1024,
        variance_kept: float = 0.99,
        n_components: Optional[int] = None,
        bucketing: str = "quantile",
        uniform_std: float = 4.0,
    ):
        super().__init__()
        if bucketing not in BUCKETINGS:
            raise ValueError(f"unknown bucketing {bucketing!r}; choose one of {BUCKETINGS}")
        # numbers only: 1.5 components were kept as 1 and true as 1, a string "0.99" failed on the comparison
        if not is_number(variance_kept, 0, 1, low_open=True):
            raise ValueError(f"variance_kept must be a number in (0, 1], got {variance_kept!r}")
        if n_components is not None and not (is_whole(n_components, 1) and n_components <= dim):
            raise ValueError(f"n_components must be null or a whole number in [1, {dim}], got {n_components!r}")
        if not is_whole(n_buckets, 2):
            raise ValueError(f"n_buckets must be a whole number >= 2, got {n_buckets!r}")
        if not is_number(uniform_std, 0, low_open=True):  # -4 std made every uniform bucket edge inverted
            raise ValueError(f"uniform_std must be a number > 0 (standard deviations), got {uniform_std!r}")
        self.dim, self.n_buckets = dim, n_buckets
        self.variance_kept, self.fixed_components = float(variance_kept), n_components
        self.bucketing, self.uniform_std = bucketing, float(uniform_std)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("components", torch.zeros(dim, dim))  # rows: principal directions, decreasing variance
        self.register_buffer("explained_variance", torch.zeros(dim))
        self.register_buffer("n_components", torch.zeros((), dtype=torch.long))  # K; 0 = not fitted
        self.register_buffer("edges", torch.zeros(dim, n_buckets - 1))  # interior bucket edges, rows < K used
        self.register_buffer("centres", torch.zeros(dim, n_buckets))  # decoded value of each bucket

    # ------------------------------------------------------------------------------------------------ state
    @property
    def fitted(self) -> bool:
        return int(self.n_components) > 0

    @property
    def k(self) -> int:
        """Number of kept components (the code sequence length)."""
        if not self.fitted:
            raise RuntimeError("EmbeddingPCA is not fitted: call fit(embeddings) or load a fitted state dict")
        return int(self.n_components)

    def variance_ratio(self, k: Optional[int] = None) -> float:
        """Fraction of the total variance held by the first k components (default: the kept ones)."""
        ev = self.explained_variance.double()
        return float(ev[: (self.k if k is None else k)].sum() / ev.sum().clamp(min=1e-30))

    # ------------------------------------------------------------------------------------------------ fit
    @torch.no_grad()
    def fit(self, emb: torch.Tensor) -> "EmbeddingPCA":
        """Fit on training embeddings (N, D) (on CPU, float64 covariance); returns self."""
        x = emb.detach().to("cpu", torch.float64)
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected embeddings (N, {self.dim}), got {tuple(emb.shape)}")
        if x.shape[0] < 2:
            raise ValueError("need at least 2 embeddings to fit the PCA")
        mean = x.mean(0)
        xc = x - mean
        cov = xc.t() @ xc / (x.shape[0] - 1)  # (D, D)
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        evals, evecs = evals.flip(0).clamp(min=0), evecs.flip(1)  # decreasing; columns are the directions
        # a deterministic sign per direction (largest-|.| entry positive) so refits give identical codes
        idx = evecs.abs().argmax(0)
        sign = evecs.gather(0, idx[None]).sign()
        evecs = evecs * torch.where(sign == 0, torch.ones_like(sign), sign)
        if self.fixed_components is not None:
            k = int(self.fixed_components)
        else:
            ratio = evals.cumsum(0) / evals.sum().clamp(min=1e-30)
            k = int((ratio < self.variance_kept - 1e-12).sum()) + 1  # fewest components reaching variance_kept
            k = min(k, self.dim)
        comps = evecs.t()  # (D, D) rows
        coeff = xc @ comps[:k].t()  # (N, K)
        if self.bucketing == "quantile":
            edges = quantile_edges(coeff, self.n_buckets)  # (K, n - 1)
            mids = _midpoints(edges, coeff.min(0).values, coeff.max(0).values)
            centres = bucket_means(coeff, bucketize(coeff, edges), self.n_buckets, mids)
        else:  # uniform over mean ± uniform_std std (the coefficients are centred: mean 0)
            std = coeff.std(0).clamp(min=1e-12)
            span = torch.linspace(-1, 1, self.n_buckets + 1, dtype=torch.float64)[None] * (
                self.uniform_std * std[:, None]
            )
            edges = span[:, 1:-1].contiguous()
            centres = (span[:, :-1] + span[:, 1:]) / 2
        self.mean.copy_(mean)
        self.components.copy_(comps)
        self.explained_variance.copy_(evals)
        self.n_components.fill_(k)
        self.edges.zero_()
        self.centres.zero_()
        self.edges[:k] = edges.to(self.edges.dtype)
        self.centres[:k] = centres.to(self.centres.dtype)
        return self

    # ------------------------------------------------------------------------------------------- encode/decode
    def project(self, emb: torch.Tensor) -> torch.Tensor:
        """(B, D) -> PCA coefficients (B, K), in the buffers' precision even under autocast (bucket edges are finer
        than bf16's resolution)."""
        k = self.k
        with torch.autocast(emb.device.type, enabled=False):
            return (emb.to(self.mean.dtype) - self.mean) @ self.components[:k].t()

    def unproject(self, coeff: torch.Tensor) -> torch.Tensor:
        """PCA coefficients (B, K') with K' <= D -> (B, D) (autocast off, as ``project``)."""
        with torch.autocast(coeff.device.type, enabled=False):
            return self.mean + coeff.to(self.components.dtype) @ self.components[: coeff.shape[1]]

    @torch.no_grad()
    def encode(self, emb: torch.Tensor) -> torch.Tensor:
        """(B, D) embeddings -> bucket ids (B, K) in [0, n_buckets)."""
        return bucketize(self.project(emb), self.edges[: self.k])

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """bucket ids (B, K) -> embeddings (B, D) (each component at its bucket's centre)."""
        k = self.k
        if codes.shape[-1] != k:
            raise ValueError(f"expected {k} codes per embedding, got {codes.shape[-1]}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.n_buckets):
            raise ValueError(f"bucket ids must be in [0, {self.n_buckets})")
        coeff = self.centres[:k].gather(1, codes.t().long()).t()  # (B, K)
        return self.unproject(coeff)

    def extra_repr(self) -> str:
        kept = f"K={int(self.n_components)}" if self.fitted else "not fitted"
        return f"dim={self.dim}, n_buckets={self.n_buckets}, bucketing={self.bucketing}, {kept}"


class ScalarBins(nn.Module):
    """Equal-mass bins of a scalar (the text-image dot product): ``fit(values (N,))``, ``encode(v (B,)) -> ids``,
    ``decode(ids) -> bin means``. Bin ids increase with the value, so the "upper half" of bins is the upper half of
    the training distribution. Buffers of fixed shape: ``edges`` (n_bins - 1,), ``centres`` (n_bins,)."""

    def __init__(self, n_bins: int = 64):
        super().__init__()
        if n_bins < 2:
            raise ValueError(f"n_bins must be >= 2, got {n_bins}")
        self.n_bins = n_bins
        self.register_buffer("edges", torch.zeros(n_bins - 1))
        self.register_buffer("centres", torch.zeros(n_bins))
        self.register_buffer("fitted_flag", torch.zeros((), dtype=torch.bool))

    @property
    def fitted(self) -> bool:
        return bool(self.fitted_flag)

    @torch.no_grad()
    def fit(self, values: torch.Tensor) -> "ScalarBins":
        v = values.detach().to("cpu", torch.float64).reshape(-1, 1)
        edges = quantile_edges(v, self.n_bins)  # (1, n - 1)
        mids = _midpoints(edges, v.min(0).values, v.max(0).values)
        centres = bucket_means(v, bucketize(v, edges), self.n_bins, mids)
        self.edges.copy_(edges[0])
        self.centres.copy_(centres[0])
        self.fitted_flag.fill_(True)
        return self

    @torch.no_grad()
    def encode(self, values: torch.Tensor) -> torch.Tensor:
        return torch.searchsorted(self.edges, values.to(self.edges.dtype).contiguous(), right=True)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        return self.centres[ids.long()]
