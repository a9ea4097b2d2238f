"""The DALL·E 1 Figure 9 ablations, for any generator: metrics against Gaussian blur radius, and against the number
of CLIP-reranked candidates per caption.

- ``MetricSuite`` computes, on one set of generated images (aligned with an ``EvalSet``'s captions), whichever of
  these it has the networks for:

  ==================  =========================================================================================
  ``fid``, ``kid``,   FID / KID (vs the real set) and Inception Score on torch-fidelity's Inception
  ``is``              (``eval.metrics.compute_metrics``; real statistics cached per blur radius)
  ``fd_clip``         Fréchet distance on CLIP image embeddings (``eval.metrics``' formula; real side cached)
  ``clip_score``      mean over pairs of 100 * max(cos(image, caption), 0) (``ClipScorer``'s convention)
  ``prompt_fidelity`` shapes judge: fraction of images whose objects/background match the caption's attributes
  ``attribute_``      shapes judge: mean of the per-attribute accuracies (shape, colour, size, position of each
  ``accuracy``        asked-for object; background), each also reported under ``attributes``
  ``is_judge``        a domain Inception Score: IS on the judge's (shape x colour) class distribution
  ==================  =========================================================================================

  The blur (``zoo.data.degradations.gaussian_blur``: radius = Gaussian standard deviation in pixels, at the evaluation
  resolution) is applied to generated *and* real images before every metric, as in the paper's Fig. 9(a).

- ``blur_ablation``: one row per radius (default 0, 1, 2, 4, 8) on the same generated images.
- ``rerank_ablation``: ``max(n)`` candidates per caption are drawn once; for each n the CLIP-best of the *first*
  n is kept (``nested_best``), so the curve over n = 1, 2, 4, ..., 32 costs one generation of 32 candidates and is
  monotone in the reranking score by construction (Fig. 9(c): the paper draws 512 and keeps 1 of the top 32).
  Note: when the reranking CLIP is also the CLIP of ``clip_score``/``fd_clip`` (the default), the CLIP score rewards
  reranking directly; the judge's prompt fidelity and FID are the independent readings.
- ``diversity_ablation``: k samples for each of the first n captions (candidate i under seed + i, the reranking
  path), scored by the mean pairwise CLIP cosine distance (``eval.metrics.pairwise_cosine_distance``) and, with the
  shapes judge, by the fraction of distinct scenes the judge reads. Fidelity alone rewards a generator that draws
  one good image per caption every time (high guidance); this is the other side of that trade-off.

``timing`` (a dict the caller passes) receives the seconds spent inside the generator's calls only, and the number
of images they drew: sampling speed without the metrics' time.
"""

from __future__ import annotations

import time
from typing import Any, Optional, Sequence

import torch

from eval.eval_set import EvalSet, ImageBank, resize_for_eval
from eval.features import check_images, iter_image_batches
from eval.metrics import (
    clip_features,
    compute_metrics,
    frechet_distance,
    inception_score,
    pairwise_cosine_distance,
)
from zoo.data.degradations import blur_kernel_size, gaussian_blur
from zoo.errors import ConfigError, check_whole, is_whole, shown
from zoo.kinds import is_list
from zoo.models.clip.scorer import clip_score_from_cos
from zoo.pipelines.base import as_candidate_generator, seeded_chunk
from zoo.progress import track

INCEPTION_METRICS = ("fid", "kid", "is")
CLIP_METRICS = ("fd_clip", "clip_score")
JUDGE_METRICS = ("prompt_fidelity", "attribute_accuracy", "is_judge")
ALL_METRICS = INCEPTION_METRICS + CLIP_METRICS + JUDGE_METRICS
NEEDS = {
    **{m: "inception" for m in INCEPTION_METRICS},
    **{m: "clip" for m in CLIP_METRICS},
    **{m: "judge" for m in JUDGE_METRICS},
}
RERANK_CANDIDATES = (1, 2, 4, 8, 16, 32)
DALLE_BLUR_RADII = (0, 1, 2, 4, 8)  # Fig. 9(a)'s radii
# Which direction is better, for reports and plots.
HIGHER_IS_BETTER = {
    "fid": False,
    "kid": False,
    "is": True,
    "fd_clip": False,
    "clip_score": True,
    "prompt_fidelity": True,
    "attribute_accuracy": True,
    "is_judge": True,
}


def check_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    metrics = tuple(str(m).lower() for m in metrics)
    unknown = [m for m in metrics if m not in ALL_METRICS]
    if unknown or not metrics:
        raise ConfigError(
            f"unknown metrics {unknown}; choose from {list(ALL_METRICS)} (fix: metrics=auto, or e.g. "
            f"metrics=[fd_clip,clip_score])"
        )
    return tuple(dict.fromkeys(metrics))


def check_suite_options(batch_size: int, is_splits: int, kid_subsets: int, kid_subset_size: int) -> None:
    """A ConfigError naming the fix for a metric setting no metric can run with (zoo-eval checks them before the judge
    trains or anything is generated: they failed only in the metrics, after every sample was drawn, a zero
    feature_batch_size as range()'s "arg 3 must not be zero")."""
    for name, value, low, default in (
        ("feature_batch_size", batch_size, 1, 50),
        ("is_splits", is_splits, 1, 10),
        ("kid_subsets", kid_subsets, 1, 100),
        ("kid_subset_size", kid_subset_size, 2, 1000),
    ):
        check_whole(f"eval.{name}", value, low, default)  # int() took 2.5 for 2


def check_candidates(candidates, option: str = "rerank.candidates") -> list[int]:
    """The candidate counts, sorted and without repeats; a ConfigError naming ``option`` and the fix for anything but
    a non-empty list of whole numbers >= 1 (int() took 1.5 or true for 1, and a count without brackets was list()'s
    TypeError). zoo-eval calls it before anything loads, ``rerank_select`` again for library callers."""
    ns = list(candidates) if is_list(candidates) else candidates
    if not (isinstance(ns, list) and ns and all(is_whole(n, 1) for n in ns)):
        raise ConfigError(f"{option}={shown(ns)} must be a list of whole numbers >= 1 (fix: {option}=[1,2,4,8,16,32])")
    return sorted(set(ns))


def _check_radius(r, resolution: Optional[int], where: str, fix: str, smaller: str) -> float:
    try:
        if isinstance(r, bool):  # float(True) is 1.0
            raise TypeError
        value = float(r)
        k = blur_kernel_size(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: a blur radius must be a finite number >= 0, got {r!r} (fix: {fix})") from None
    if value and resolution is not None and k // 2 >= int(resolution):
        raise ConfigError(
            f"{where}: blur radius {r} needs a {k}x{k} kernel: too large for {resolution}px images "
            f"(fix: {smaller}, or protocol.eval_resolution >= {k // 2 + 1})"
        )
    return value


def check_radii(radii: Sequence[float], resolution: Optional[int] = None, option: str = "blur.radii") -> list[float]:
    """The radii as floats; a ConfigError naming ``option`` and the fix for anything but a non-empty list of finite
    radii >= 0, and (given ``resolution``) for a kernel that does not fit ``resolution``-pixel images. zoo-eval calls
    it without the resolution before anything loads and with it once the protocol has loaded, before any model;
    ``blur_ablation`` again for library callers (one radius without brackets was list()'s TypeError, an empty list
    drew every image and scored none)."""
    if not is_list(radii):
        raise ConfigError(
            f"{option}={shown(radii)} must be a list of radii (fix: {option}=[{radii}] for one radius, or "
            f"{option}=[0,1,2,4,8])"
        )
    if not len(radii):
        raise ConfigError(f"{option} is empty (fix: {option}=[0,1,2,4,8], or drop blur from ablations)")
    where = f"{option}={list(radii)}"
    return [_check_radius(r, resolution, where, f"e.g. {option}=[0,1,2,4,8]", "smaller radii") for r in radii]


def check_blur_radius(radius: float, resolution: Optional[int] = None, option: str = "rerank.blur_radius") -> float:
    """One radius (the rerank ablation's) as ``check_radii`` checks each of its list, named ``option``."""
    return _check_radius(radius, resolution, f"{option}={radius}", f"{option}=0", f"a smaller {option}")


def generated_set(fakes, n: int):
    """``fakes`` as a re-iterable set of exactly ``n`` images: a tensor or an ``ImageBank`` as it is; any other
    iterable of batches (a generator, a list, a DataLoader, ``ImageFiles``) read once into an ``ImageBank`` (uint8,
    as zoo-eval keeps its own samples) and counted.

    Each metric group and each blur radius reads the images again: a one-shot generator of batches served the first
    one only, and the judge then scored zero images against every caption (prompt fidelity 0.0 for perfect images,
    without a word); a list's len() counts its batches, so a list of batches was refused as "2 generated images".
    ``ImageFiles`` skips a file that fails to decode (right for a real set, a distribution): a sample folder's
    readings then shifted against the captions after it; counted here, that is an error."""
    skipped: list = []
    if not (torch.is_tensor(fakes) or isinstance(fakes, ImageBank)):
        bank = ImageBank()
        for batch in iter_image_batches(fakes, bank.batch_size):
            bank.add(batch)
        skipped = list(getattr(fakes, "skipped", None) or [])  # ImageFiles' files that failed to decode
        fakes = bank
    if len(fakes) != n:
        unreadable = f" ({len(skipped)} unreadable: {', '.join(skipped[:3])})" if skipped else ""
        raise ValueError(f"{len(fakes)} generated images for {n} captions{unreadable}")
    return fakes


def _blurred(source, radius: float, batch_size: int):
    """Batches of ``source`` blurred by ``radius`` (re-created on each call)."""
    for batch in iter_image_batches(source, batch_size):
        yield gaussian_blur(batch, radius) if radius else batch


def _clip_preprocess_tag(clip) -> str:
    """``;prep=<size>,<resize mode>,<interpolation>,<digest of mean/std>`` of a ``ClipScorer`` (empty for a CLIP without
    these attributes). The weights' fingerprint alone keyed the cached real features: the same weights with another
    interpolation, resize mode, input size or normalisation read the first scorer's real features, and FD_CLIP was
    silently wrong (zoo-eval's own ident names the arch / tag that set the preprocessing)."""
    import hashlib

    size, mode, interp = (getattr(clip, k, None) for k in ("image_size", "resize_mode", "interpolation"))
    mean, std = getattr(clip, "mean", None), getattr(clip, "std", None)
    if size is None and mode is None and interp is None and mean is None and std is None:
        return ""
    norm = [[round(float(v), 6) for v in torch.as_tensor(t).flatten()] for t in (mean, std) if t is not None]
    digest = hashlib.sha256(repr(norm).encode()).hexdigest()[:8]
    return f";prep={size},{mode},{interp},{digest}"


class MetricSuite:
    """The metrics to compute and the networks they need (``None`` where absent; asking for a metric whose network
    is missing is a ValueError).

    Args:
        metrics: names from ``ALL_METRICS``.
        inception: ``eval.features.InceptionFeatures`` (fid/kid/is).
        clip: a ``ClipScorer`` or anything with ``encode_image``/``encode_text`` returning L2-normalised rows.
        judge: ``eval.judge.ShapesJudge`` (needs the protocol's ground-truth ``attributes``).
        cache: ``eval.metrics.RealStatsCache`` for real-image statistics (Inception and CLIP), or None.
        clip_id: names the CLIP and its weights in cache keys (different CLIPs must not share an entry). None: a
            ``ClipScorer``'s fingerprint of its weights (``clip_fingerprint``) and its preprocessing (input size,
            resize mode, interpolation, mean/std); any other CLIP with a cache that
            would hold its real features (``fd_clip``) must be named, or two CLIPs of one width read each other's.
    """

    def __init__(
        self,
        metrics: Sequence[str],
        inception=None,
        clip=None,
        judge=None,
        cache=None,
        clip_id: Optional[str] = None,
        batch_size: int = 50,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        is_splits: int = 10,
        progress: bool = True,
    ):
        self.metrics = check_metrics(metrics)
        self.inception, self.clip, self.judge, self.cache = inception, clip, judge, cache
        have = {"inception": inception is not None, "clip": clip is not None, "judge": judge is not None}
        missing = [m for m in self.metrics if not have[NEEDS[m]]]
        if missing:
            raise ValueError(
                f"metrics {missing} need a {sorted({NEEDS[m] for m in missing})} network that was not given"
            )
        check_suite_options(batch_size, is_splits, kid_subsets, kid_subset_size)
        self.clip_id, self.batch_size = self._clip_cache_id(clip_id, clip, cache), int(batch_size)
        self.kid_subsets, self.kid_subset_size, self.is_splits = int(kid_subsets), int(kid_subset_size), int(is_splits)
        self.progress = progress
        self._text_emb: dict[int, torch.Tensor] = {}

    def _clip_cache_id(self, clip_id: Optional[str], clip, cache) -> Optional[str]:
        """The CLIP's name in real-feature cache keys. A fixed default ("clip") gave every CLIP one entry: FD_CLIP
        of a second CLIP of the same width was computed against the first one's real features, without a word."""
        if clip_id is not None or clip is None or cache is None or "fd_clip" not in self.metrics:
            return clip_id
        fingerprint = getattr(clip, "fingerprint", None)
        if isinstance(fingerprint, str) and fingerprint:
            return f"clip-{fingerprint}{_clip_preprocess_tag(clip)}"
        raise ValueError(
            f"MetricSuite: fd_clip with a real-statistics cache needs clip_id naming the CLIP and its weights "
            f"({type(clip).__name__} has no fingerprint; fix: clip_id='<name>-<weights digest>', or cache=None)"
        )

    def uses(self, group: str) -> list[str]:
        return [m for m in self.metrics if NEEDS[m] == group]

    # -- one row ------------------------------------------------------------------------------------------------
    def evaluate(self, fakes, eval_set: EvalSet, blur_radius: float = 0.0) -> dict[str, Any]:
        """All metrics of ``fakes`` (tensor, ``ImageBank`` or iterable of batches, aligned with ``eval_set``;
        ``generated_set``)."""
        fakes = generated_set(fakes, len(eval_set))
        out: dict[str, Any] = {}
        if self.uses("inception"):
            out.update(self._inception(fakes, eval_set, blur_radius))
        if self.uses("clip"):
            out.update(self._clip(fakes, eval_set, blur_radius))
        if self.uses("judge"):
            out.update(self._judge(fakes, eval_set, blur_radius))
        return out

    def _inception(self, fakes, eval_set, r) -> dict[str, Any]:
        wanted = self.uses("inception")
        if self.cache is not None:
            real = eval_set.stats_key(self.inception.extractor_id, r)
            kw = {"cache": self.cache, "real_images": eval_set.real}
        else:
            real, kw = eval_set.real, {}
        n = len(eval_set)
        res = compute_metrics(
            real,
            fakes,
            self.inception,
            wanted,
            blur_radius=r,
            batch_size=self.batch_size,
            kid_subsets=self.kid_subsets,
            kid_subset_size=min(self.kid_subset_size, n),
            is_splits=min(self.is_splits, n),
            progress=self.progress,
            **kw,
        )
        out = {}
        if "fid" in wanted:
            out["fid"] = res["fid"]
        if "kid" in wanted:
            out.update(kid=res["kid_mean"], kid_std=res["kid_std"], kid_subset_size=res["kid_subset_size"])
        if "is" in wanted:
            out.update({"is": res["is_mean"], "is_std": res["is_std"]})
        return out

    def _clip_features(self, source, r, desc) -> torch.Tensor:
        return clip_features(self.clip, _blurred(source, r, self.batch_size), self.batch_size, self.progress, desc)

    def _clip(self, fakes, eval_set, r) -> dict[str, Any]:
        wanted = self.uses("clip")
        fake = self._clip_features(fakes, r, f"CLIP features (fake, blur {r:g})")
        out: dict[str, Any] = {}
        if "clip_score" in wanted:
            key = tuple(eval_set.captions)  # not id(eval_set): Python reuses a freed object's id
            if key not in self._text_emb:
                self._text_emb[key] = torch.as_tensor(self.clip.encode_text(list(eval_set.captions))).float().cpu()
            cos = (fake * self._text_emb[key]).sum(-1)
            out["clip_score"] = float(clip_score_from_cos(cos).mean())
        if "fd_clip" in wanted:
            compute = lambda: self._clip_features(eval_set.real, r, f"CLIP features (real, blur {r:g})")  # noqa: E731
            if self.cache is not None:
                real = self.cache.get_or_compute(eval_set.stats_key(self.clip_id, r), compute)["features"]
            else:
                real = compute()
            out["fd_clip"] = frechet_distance(real, fake)
        return out

    @torch.no_grad()
    def _judge(self, fakes, eval_set, r) -> dict[str, Any]:
        from eval.judge import attribute_accuracy, prompt_fidelity, subject_accuracy

        if eval_set.attributes is None:
            raise ValueError(f"the judge metrics need ground-truth attributes; the {eval_set.name} protocol has none")
        wanted = self.uses("judge")
        read, probs = [], []
        for batch in track(
            _blurred(fakes, r, self.batch_size),
            desc=f"shapes judge (blur {r:g})",
            disable=not self.progress,
            leave=False,
        ):
            if "prompt_fidelity" in wanted or "attribute_accuracy" in wanted:
                read.extend(self.judge.read(batch))
            if "is_judge" in wanted:
                probs.append(self.judge.class_probs(batch))
        out: dict[str, Any] = {}
        if "prompt_fidelity" in wanted:
            out["prompt_fidelity"] = prompt_fidelity(read, eval_set.attributes)
        if "attribute_accuracy" in wanted:
            acc = attribute_accuracy(read, eval_set.attributes)
            parts = ("shape", "colour", "size", "position", "background")
            out["attribute_accuracy"] = sum(acc[k] for k in parts) / len(parts)
            acc["subject"] = subject_accuracy(read, eval_set.attributes)  # what a short prompt asks for
            out["attributes"] = acc
        if "is_judge" in wanted:
            p = torch.cat(probs).float()
            mean, std = inception_score(p.clamp_min(1e-12).log(), splits=min(self.is_splits, len(p)))
            out.update(is_judge=mean, is_judge_std=std)
        return out


# ---------------------------------------------------------------------------------------------------- ablations
def blur_ablation(
    fakes, eval_set: EvalSet, suite: MetricSuite, radii: Sequence[float] = DALLE_BLUR_RADII, progress: bool = True
) -> list[dict[str, Any]]:
    """DALL·E Fig. 9(a): one row ``{"radius": r, <metrics>}`` per radius, blurring generated and real images."""
    radii = check_radii(radii, eval_set.resolution)
    fakes = generated_set(fakes, len(eval_set))  # read once: every radius reads the images again
    rows = []
    for r in track(radii, desc="blur ablation", disable=not progress):
        rows.append({"radius": r, **suite.evaluate(fakes, eval_set, blur_radius=r)})
    return rows


def nested_best(scores: torch.Tensor, ns: Sequence[int]) -> dict[int, torch.Tensor]:
    """For each n: index (B,) of the highest score among the first n candidates of each row of ``scores`` (B, N)."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be (B, N), got {tuple(scores.shape)}")
    out = {}
    for n in ns:
        if not 1 <= int(n) <= scores.shape[1]:
            raise ValueError(f"n={n} outside 1..{scores.shape[1]} candidates")
        out[int(n)] = scores[:, : int(n)].argmax(1)
    return out


def _draw_candidates(cand, caps: list[str], n: int, timing: Optional[dict]) -> torch.Tensor:
    """``cand.candidates(caps, n)`` checked to be (B, n, 3, H, W); its wall time and image count added to
    ``timing`` (only the generator's call is timed: sampling speed without the metrics' time)."""
    t = time.perf_counter()
    x = cand.candidates(caps, n)  # (B, n, 3, H, W)
    if timing is not None:
        timing["seconds"] = timing.get("seconds", 0.0) + time.perf_counter() - t
        timing["images"] = timing.get("images", 0) + len(caps) * n
    if not torch.is_tensor(x) or x.dim() != 5 or tuple(x.shape[:2]) != (len(caps), n):
        raise ValueError(
            f"candidates({len(caps)} captions, {n}) returned shape "
            f"{tuple(getattr(x, 'shape', ()))}, expected ({len(caps)}, {n}, 3, H, W)"
        )
    return x


@torch.no_grad()
def rerank_select(
    generator,
    eval_set: EvalSet,
    scorer,
    candidates: Sequence[int] = RERANK_CANDIDATES,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
    timing: Optional[dict] = None,
) -> tuple[dict[int, ImageBank], dict[int, float]]:
    """Draw ``max(candidates)`` candidates per caption once; for each n keep the CLIP-best of the first n.

    ``generator`` is anything ``as_candidate_generator`` accepts; ``scorer`` has ``encode_image``/``encode_text``
    (L2-normalised; a ``ClipScorer``). Candidates are resized to the protocol's resolution before scoring.
    Returns the kept images per n (aligned with ``eval_set.captions``) and the mean cosine of the kept images.
    ``timing``: a dict that receives ``seconds`` (inside the generator) and ``images`` (drawn).
    """
    ns = check_candidates(candidates)
    batch_size = check_whole("rerank.batch_size", batch_size, 1, 8)
    cand = as_candidate_generator(generator, seed)
    n_max, res = ns[-1], eval_set.resolution
    banks = {n: ImageBank() for n in ns}
    kept_cos: dict[int, list[torch.Tensor]] = {n: [] for n in ns}
    captions = list(eval_set.captions)
    with track(
        total=len(captions) * n_max, desc=f"generate {n_max} candidates/caption", unit="img", disable=not progress
    ) as bar:
        for j, i in enumerate(range(0, len(captions), batch_size)):
            caps = captions[i : i + batch_size]
            with seeded_chunk(cand, seed, j):  # each batch its own noise (zoo.pipelines.base.CHUNK_SEED_STRIDE)
                x = _draw_candidates(cand, caps, n_max, timing)  # (B, n_max, 3, H, W)
            flat = resize_for_eval(check_images(x.flatten(0, 1), what="candidates"), res)
            x = flat.view(len(caps), n_max, *flat.shape[1:])
            img = torch.as_tensor(scorer.encode_image(flat)).float().cpu().view(len(caps), n_max, -1)
            txt = torch.as_tensor(scorer.encode_text(caps)).float().cpu()
            scores = torch.einsum("bnd,bd->bn", img, txt)  # (B, n_max) cosine
            rows = torch.arange(len(caps))
            for n, best in nested_best(scores, ns).items():
                banks[n].add(x[rows, best])
                kept_cos[n].append(scores[rows, best])
            bar.update(len(caps) * n_max)
    return banks, {n: float(torch.cat(v).mean()) for n, v in kept_cos.items()}


def rerank_ablation(
    generator,
    eval_set: EvalSet,
    suite: MetricSuite,
    scorer,
    candidates: Sequence[int] = RERANK_CANDIDATES,
    batch_size: int = 8,
    seed: int = 0,
    blur_radius: float = 0.0,
    progress: bool = True,
    timing: Optional[dict] = None,
) -> tuple[list[dict[str, Any]], dict[int, ImageBank]]:
    """DALL·E Fig. 9(c): metrics of the CLIP-best of n candidates per caption, for each n in ``candidates``
    (``rerank_select``). Returns the rows ``{"candidates": n, "rerank_cos": mean cosine of the kept image,
    <metrics>}`` and the kept images per n. ``timing`` as ``rerank_select``'s."""
    blur_radius = check_blur_radius(blur_radius, eval_set.resolution)  # not after every candidate is drawn
    banks, kept_cos = rerank_select(generator, eval_set, scorer, candidates, batch_size, seed, progress, timing)
    out = []
    for n in track(sorted(banks), desc="rerank ablation metrics", disable=not progress):
        # blur_radius recorded: eval.leaderboard reads only unblurred rows as a run's fidelity
        row = {"candidates": n, "rerank_cos": kept_cos[n], "blur_radius": float(blur_radius)}
        row.update(suite.evaluate(banks[n], eval_set, blur_radius=blur_radius))
        out.append(row)
    return out, banks


def scene_key(scene: dict[str, Any]) -> tuple:
    """A hashable form of one judge reading (``ShapesJudge.read``): background plus the sorted objects, so two
    images read as the same scene exactly when their keys are equal."""
    objects = sorted(
        (int(o["row"]), int(o["col"]), str(o["shape"]), str(o["colour"]), str(o["size"])) for o in scene["objects"]
    )
    return (str(scene["background"]), tuple(objects))


def check_diversity(captions: int, samples: int, batch_size: int) -> None:
    """A ConfigError naming the fix for settings the diversity ablation cannot run (zoo-eval checks them before it
    generates anything)."""
    check_whole("diversity.samples", samples, 2, 4, why="pairs of samples of one caption are compared")
    check_whole("diversity.captions", captions, 1, 32)
    check_whole("diversity.batch_size", batch_size, 1, 8)


@torch.no_grad()
def diversity_ablation(
    generator,
    eval_set: EvalSet,
    scorer,
    captions: int = 32,
    samples: int = 4,
    batch_size: int = 8,
    seed: int = 0,
    judge=None,
    progress: bool = True,
    timing: Optional[dict] = None,
) -> dict[str, Any]:
    """Sample diversity: ``samples`` images for each of the first ``captions`` captions (candidate i under
    seed + i, as ``rerank_select`` draws them), resized to the protocol's resolution and embedded by ``scorer``.

    Returns ``{"pairwise_clip_distance": mean over captions of the mean over pairs i < j of 1 - cos(e_i, e_j),
    "captions": n, "samples": k, "judge_distinct": mean over captions of (distinct judge readings) / k, or None
    without a judge}``. ``judge_distinct`` is 1/k when every sample of a caption is read as the same scene, 1
    when all k are read differently. ``timing`` as ``rerank_select``'s.
    """
    check_diversity(captions, samples, batch_size)
    n, k = min(int(captions), len(eval_set)), int(samples)
    cand = as_candidate_generator(generator, seed)
    caps_all, res = list(eval_set.captions)[:n], eval_set.resolution
    embs: list[torch.Tensor] = []
    distinct: list[float] = []
    with track(total=n * k, desc=f"diversity: {k} samples/caption", unit="img", disable=not progress) as bar:
        for j, i in enumerate(range(0, n, int(batch_size))):
            caps = caps_all[i : i + int(batch_size)]
            with seeded_chunk(cand, seed, j):
                x = _draw_candidates(cand, caps, k, timing)
            flat = resize_for_eval(check_images(x.flatten(0, 1), what="candidates"), res)  # (B * k, 3, R, R)
            embs.append(torch.as_tensor(scorer.encode_image(flat)).float().cpu().view(len(caps), k, -1))
            if judge is not None:
                keys = [scene_key(s) for s in judge.read(flat)]
                distinct += [len(set(keys[b * k : (b + 1) * k])) / k for b in range(len(caps))]
            bar.update(len(caps) * k)
    return {
        "pairwise_clip_distance": pairwise_cosine_distance(torch.cat(embs)),
        "captions": n,
        "samples": k,
        "judge_distinct": sum(distinct) / len(distinct) if distinct else None,
    }


__all__ = [
    "ALL_METRICS",
    "CLIP_METRICS",
    "HIGHER_IS_BETTER",
    "INCEPTION_METRICS",
    "JUDGE_METRICS",
    "MetricSuite",
    "RERANK_CANDIDATES",
    "blur_ablation",
    "check_blur_radius",
    "check_candidates",
    "check_metrics",
    "check_diversity",
    "check_radii",
    "check_suite_options",
    "diversity_ablation",
    "generated_set",
    "nested_best",
    "rerank_ablation",
    "rerank_select",
    "scene_key",
]
