"""The generator interface shared by ``zoo-sample`` and ``zoo-eval``, and its adapters.

A **generator** is anything with ``generate(captions: list[str]) -> FloatTensor (len(captions), 3, H, W)`` in
[-1, 1] (``Generator``). Reranking and "several images per prompt" need several independent samples per caption:
``candidates(captions, n) -> (len(captions), n, 3, H, W)`` (``CandidateGenerator``). ``as_candidate_generator``
gives any generator that call: the object's own ``candidates`` when it has one, otherwise ``generate`` called n
times, candidate i under torch seed ``seed + i`` (and with the object's ``seed`` attribute set to ``seed + i`` if it
has one), so candidate i of a caption is the same whatever n is asked -- reranking curves are nested.

A generator that reranks its own candidates (``zoo.pipelines.dalle.DallePipeline``: CLIP) also has
``sample(captions, n_keep=k) -> {"images": (B, k, 3, H, W), "scores": (B, k) or None, ...}``, best first
(``RerankingGenerator``); ``keep_best`` uses it when there, else the first k candidates.

Both entry points build their generator from one config group, ``conf/generator/<name>.yaml`` (``_target_`` + the
generator's arguments): ``zoo-eval generator=<name>`` and ``zoo-sample generator=<name>``. ``zoo-sample ckpt=<file>``
is the short form: the file's registered component name (``zoo.registry.component_in``, read with the safe loader;
never anything the file names) picks the option in ``CHECKPOINT_GENERATORS`` and the argument the file goes to.

Naming convention for pipeline knobs (diffusers' unCLIP pipeline style, for every pipeline that follows): a knob that
belongs to one stage of a multi-stage pipeline is prefixed with that stage -- ``prior_guidance_scale``,
``prior_steps``, ``decoder_guidance_scale``, ``decoder_steps``, ``upsampler_steps`` -- and a single-stage pipeline uses
the bare name (``guidance_scale``, ``temperature``, ``top_k``/``top_p`` for logit filtering). Counts of images have
their own names: ``n_candidates`` (samples drawn per caption), ``n_keep`` (the best of them kept after reranking);
``top_k`` always means the logit filter. Checkpoints are ``<stage>_ckpt`` (``dalle_ckpt``, ``clip_ckpt``, later
``prior_ckpt``, ``decoder_ckpt``). Every pipeline takes a ``seed`` and is a pure function of (seed, captions, knobs).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Optional, Protocol, runtime_checkable

import torch

from zoo.config import with_article

log = logging.getLogger(__name__)

# zoo-sample ckpt=<file>: registered component name -> (conf/generator/ option, the argument the file goes to).
# Adding a pipeline for a new component: one line here and its yaml in conf/generator/.
CHECKPOINT_GENERATORS: dict[str, tuple[str, str]] = {
    "dalle": ("dalle", "dalle_ckpt"),
    "glide": ("glide", "glide_ckpt"),
    "unclip_decoder": ("unclip", "decoder_ckpt"),  # also needs generator.prior_ckpt= and generator.clip_ckpt=
    # a prior makes CLIP image embeddings, which unCLIP's decoder turns into images
    "diffusion_prior": ("unclip", "prior_ckpt"),  # also needs generator.decoder_ckpt= and generator.clip_ckpt=
    "ar_prior": ("unclip", "prior_ckpt"),
}

RANGE_TOLERANCE = 1e-3  # float round-off of [-1, 1] outputs (decoders, resizes) is tolerated


@runtime_checkable
class Generator(Protocol):
    """Anything that turns captions into images: ``generate(captions) -> (len(captions), 3, H, W)`` in [-1, 1]."""

    def generate(self, captions: list[str]) -> torch.Tensor: ...


@runtime_checkable
class CandidateGenerator(Protocol):
    """``candidates(captions, n) -> (len(captions), n, 3, H, W)`` in [-1, 1]: n independent samples per caption."""

    def candidates(self, captions: list[str], n: int) -> torch.Tensor: ...


@runtime_checkable
class RerankingGenerator(Protocol):
    """``sample(captions, n_keep=k) -> {"images": (B, k, 3, H, W), "scores": (B, k) or None}``, best first."""

    def sample(self, captions: list[str], n_keep: int = 1) -> dict[str, Any]: ...


def whole_count(value: Any, key: str, fix: int, minimum: int = 1) -> int:
    """A generator's count knob (``n_candidates``, ``n_keep``, ``batch_size``; ``invert_refine`` from 0) as an int, or
    a ``ConfigError`` naming ``generator.<key>`` and ``fix`` when it is not a whole number >= ``minimum``: ``int()``
    took 1.5 for 1 without a word, and a batch size of 0 or less failed mid-sampling as range()'s 'arg 3 must not be
    zero' (or sampled nothing). 2.0 is refused as every count option refuses it (``zoo.errors.is_whole``)."""
    from zoo.errors import check_whole

    return check_whole(f"generator.{key}", value, minimum, fix)


def check_counts(knobs, options: dict[str, Any], given_only: bool = False) -> dict[str, Any]:
    """A pipeline's count knobs through ``whole_count``, in ``knobs``' order: ``knobs`` is its ``COUNT_KNOBS`` table of
    ``(key, fix)`` or ``(key, fix, minimum)``, ``options`` the values by key. ``from_checkpoints`` passes its keyword
    options with ``given_only`` (an unset or None count is the constructor's default: nothing to check yet), so a bad
    count is refused before any checkpoint loads; ``__init__`` checks every count and keeps the returned values."""
    return {
        key: whole_count(options.get(key), key, fix, *minimum)
        for key, fix, *minimum in knobs
        if not (given_only and options.get(key) is None)
    }


# Set by build_generator(ranked_by=...) while an entry point that draws and ranks the candidates itself (zoo-eval: its
# own clip node over rerank.candidates) builds the generator: the pipeline's count and CLIP are not used there, so
# warn_unranked_candidates' "no CLIP reranks the samples" would be false (found: zoo-eval generator=dalle
# generator.n_candidates=32 clip.checkpoint=<clip> said so while its CLIP reranked; helper-126, data=folder)
_RANKED_ELSEWHERE: ContextVar[Optional[str]] = ContextVar("ranked_elsewhere", default=None)


def warn_unranked_candidates(n_candidates: Optional[int], scorer: Any, default: str) -> None:
    """One warning, when the pipeline is built, that a ``generator.n_candidates`` given above 1 is not drawn: without
    a CLIP nothing ranks the samples, so ``sample`` draws the ``n_keep`` it keeps (candidate i does not depend on the
    count: the first n_keep of more would be the same images, for more time). The DALL·E and GLIDE pipelines share
    it (unCLIP's needs its CLIP, which always reranks): DALL·E's took the count without a word (found: zoo-sample of
    a DALL·E with generator.n_candidates=4, n_keep=2 and no clip_ckpt drew and kept 2). A warning, not an error:
    the count is only the pool a CLIP would rank, and the images kept are the ones asked for. ``default``: what the
    pipeline draws when the count is left out, for the fix."""
    if n_candidates is not None and n_candidates > 1 and scorer is None and _RANKED_ELSEWHERE.get() is None:
        log.warning(
            "generator.n_candidates=%d ignored: no CLIP reranks the samples, so each prompt gets its first n_keep "
            "images, unranked (fix: generator.clip_ckpt=<zoo-train model=clip last.ckpt> to keep the CLIP-best n_keep "
            "of %d, or leave generator.n_candidates out: %s)",
            n_candidates,
            n_candidates,
            default,
        )


def check_images(images, min_count: int = 1, what: str = "images") -> torch.Tensor:
    """Raise ``ValueError`` with a fix unless ``images`` is a float (N, 3, H, W) tensor in [-1, 1], N >= min_count."""
    if not torch.is_tensor(images):
        raise ValueError(f"{what}: expected a torch.Tensor (N, 3, H, W) in [-1, 1], got {type(images).__name__}")
    if images.dim() != 4:
        hint = " (a single image? add a batch dim with x.unsqueeze(0))" if images.dim() == 3 else ""
        raise ValueError(f"{what}: expected shape (N, 3, H, W), got {tuple(images.shape)}{hint}")
    if images.shape[1] != 3:
        hint = " (grayscale? use x.expand(-1, 3, -1, -1))" if images.shape[1] == 1 else ""
        hint = " (channels-last? use x.permute(0, 3, 1, 2))" if images.shape[-1] == 3 else hint
        raise ValueError(f"{what}: expected 3 channels (N, 3, H, W), got shape {tuple(images.shape)}{hint}")
    if not images.is_floating_point():
        raise ValueError(
            f"{what}: expected float images in [-1, 1], got dtype {images.dtype} "
            f"(uint8 [0, 255] images: convert with x.float() / 127.5 - 1)"
        )
    if images.shape[0] < min_count:
        raise ValueError(f"{what}: need at least {min_count} images, got {images.shape[0]}")
    if images.numel() == 0:
        raise ValueError(f"{what}: empty tensor {tuple(images.shape)}")
    finite = torch.isfinite(images)
    if not bool(finite.all()):
        bad = int((~finite).flatten(1).any(1).sum())
        raise ValueError(f"{what}: {bad} of {images.shape[0]} images contain NaN or Inf values")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1 - RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        hint = " ([0, 255] images: use x / 127.5 - 1)" if hi > 2 else " (clamp model outputs with x.clamp(-1, 1))"
        raise ValueError(f"{what}: values must lie in [-1, 1], got min {lo:.4g}, max {hi:.4g}{hint}")
    return images


def check_generated(images, n: int, what: str = "generator output") -> torch.Tensor:
    """The generator's output as a float tensor (n, 3, H, W) in [-1, 1], or a ValueError saying what is wrong."""
    check_images(images, what=what)
    if images.shape[0] != n:
        raise ValueError(f"{what}: asked for {n} images (one per caption), got {images.shape[0]}")
    return images


class RepeatedCandidates:
    """``candidates(captions, n)`` from any ``generate``: n calls, call i under seed ``seed + i``.

    Each call runs inside ``torch.random.fork_rng`` with ``torch.manual_seed(seed + i)`` (the caller's RNG state is
    left untouched) and, if the generator exposes a ``seed`` attribute, with that attribute set to ``seed + i``
    (restored afterwards). Candidate i therefore does not depend on n.
    """

    def __init__(self, generator: Generator, seed: int = 0):
        if not callable(getattr(generator, "generate", None)):
            raise TypeError(f"{type(generator).__name__} has no generate(captions) method")
        self.generator, self.seed = generator, int(seed)

    def candidate(self, captions: list[str], i: int) -> torch.Tensor:
        """Candidate ``i`` for every caption: (B, 3, H, W)."""
        g, s = self.generator, self.seed + int(i)
        has_seed = hasattr(g, "seed")
        old = getattr(g, "seed", None)
        try:
            if has_seed:
                g.seed = s
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(s)
                out = g.generate(list(captions))
        finally:
            if has_seed:
                g.seed = old
        return check_generated(out, len(captions), f"{type(g).__name__}.generate (candidate {i})")

    def candidates(self, captions: list[str], n: int) -> torch.Tensor:
        if int(n) < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        return torch.stack([self.candidate(captions, i) for i in range(int(n))], dim=1)  # (B, n, 3, H, W)


# Batches of captions drawn one after another (zoo-eval's blur, rerank and diversity loops) each start from their own
# seed: batch j's candidate i runs under seed + CHUNK_SEED_STRIDE * j + i. Every batch used to start from ``seed``, so
# caption k and caption k + batch_size got the same noise (the same caption in two batches, the same image); a
# protocol of 256 captions in batches of 32 held 8 copies of one set of noise draws. The stride is far above any
# candidate count, so no two (batch, candidate) pairs share a seed; batch 0 keeps ``seed``.
CHUNK_SEED_STRIDE = 1_000_003


def chunk_seed(seed: int, chunk: int) -> int:
    """The base seed of the ``chunk``-th batch of captions drawn from one generator (see CHUNK_SEED_STRIDE)."""
    return int(seed) + CHUNK_SEED_STRIDE * int(chunk)


@contextmanager
def seeded_chunk(candidate_generator, seed: int, chunk: int):
    """``candidate_generator`` (a pipeline or ``RepeatedCandidates``) with its ``seed`` set to ``chunk_seed(seed,
    chunk)`` inside the block, restored after. A generator whose seed picks a stored image rather than noise (an
    image folder: ``seed_is_candidate_index``) is left alone: its candidate i is the caption's i-th image."""
    g = candidate_generator
    inner = g.generator if isinstance(g, RepeatedCandidates) else g
    if getattr(inner, "seed_is_candidate_index", False) or not hasattr(g, "seed"):
        yield g
        return
    old = g.seed
    g.seed = chunk_seed(seed, chunk)
    try:
        yield g
    finally:
        g.seed = old


def as_candidate_generator(generator, seed: int = 0) -> CandidateGenerator:
    """The generator itself if it has ``candidates(captions, n)``, else ``RepeatedCandidates(generator, seed)``."""
    if callable(getattr(generator, "candidates", None)):
        return generator
    return RepeatedCandidates(generator, seed)


def keep_best(generator, captions: list[str], n_keep: int, seed: int = 0) -> dict[str, Any]:
    """``n_keep`` images per caption, best first: ``{"images": (B, n_keep, 3, H, W), "scores": (B, n_keep) or None}``.

    A ``RerankingGenerator`` reranks its own candidates (``sample``); any other generator gives its first
    ``n_keep`` candidates (``as_candidate_generator``), unscored."""
    captions = list(captions)
    if callable(getattr(generator, "sample", None)):
        return generator.sample(captions, n_keep=int(n_keep))
    images = as_candidate_generator(generator, seed).candidates(captions, int(n_keep))
    return {"images": images, "scores": None}


class PromptUpsampled:
    """A generator whose prompts are rewritten by a prompt upsampler before it sees them (DALL·E 3's upsampling).

    ``generator``: any generator; ``upsampler``: anything with ``upsample(prompts, seed=..., **options) -> list[str]``
    (``zoo.models.prompt_upsampler.lit.PromptUpsamplerLit``). Every method of the inner generator that takes
    captions (``generate``, and when it has them ``candidates``, ``candidate``, ``sample``, ``inpaint``) gets the
    rewritten captions; everything else (``seed``, ``n_keep``, ``hparams``, other methods) is the inner generator's,
    so the wrapper is used wherever the generator was. The rewrite of a call is a pure function of (captions, seed):
    the seed is the inner generator's ``seed`` when it has one (``RepeatedCandidates`` sets it per candidate, so
    repeated candidates of one short prompt are generated from different plausible scenes), else ``seed``; a
    generator's own ``candidates`` / ``sample`` share one rewrite per caption. ``last_prompts`` holds the last
    call's ``{prompt: rewrite}``, ``all_prompts`` every call's (``{prompt: [rewrite, ...]}``, in call order: one per
    repeated candidate), which ``zoo-sample`` writes into ``samples.json``; ``forget_prompts()`` empties both.
    """

    # method -> position of its captions argument
    _CAPTION_ARG = {"generate": 0, "candidates": 0, "candidate": 0, "sample": 0, "inpaint": 2}
    _OWN = ("generator", "upsampler", "options", "last_prompts", "all_prompts", "_seed")

    def __init__(self, generator, upsampler, seed: int = 0, **options):
        if not callable(getattr(generator, "generate", None)):
            raise TypeError(f"{type(generator).__name__} has no generate(captions) method")
        if not callable(getattr(upsampler, "upsample", None)):
            raise TypeError(f"{type(upsampler).__name__} has no upsample(prompts) method")
        self.generator, self.upsampler = generator, upsampler
        self.options = {k: v for k, v in options.items() if v is not None}
        self._seed = int(seed)
        self.last_prompts: dict[str, str] = {}
        self.all_prompts: dict[str, list[str]] = {}

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._OWN:
            object.__setattr__(self, name, value)
        else:  # seed, n_keep, ...: the inner generator's knobs
            setattr(self.generator, name, value)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in self._OWN:
            raise AttributeError(name)
        attr = getattr(self.generator, name)
        if name in self._CAPTION_ARG and callable(attr):
            return self._wrap(attr, self._CAPTION_ARG[name])
        return attr

    def rewrite(self, captions) -> list[str]:
        """The upsampled captions (one per caption)."""
        captions = [captions] if isinstance(captions, str) else list(captions)
        seed = getattr(self.generator, "seed", None)
        seed = self._seed if seed is None else int(seed)
        out = list(self.upsampler.upsample(captions, seed=seed, **self.options))
        if len(out) != len(captions):
            raise RuntimeError(f"the prompt upsampler returned {len(out)} prompts for {len(captions)}")
        self.last_prompts = dict(zip(captions, out))
        for caption, rewritten in zip(captions, out):
            self.all_prompts.setdefault(caption, []).append(rewritten)
        return out

    def forget_prompts(self) -> None:
        """Start a fresh record (``last_prompts``, ``all_prompts``): a long-running caller (zoo-serve) calls it per
        request, or the record grows with every prompt it was ever given."""
        self.last_prompts, self.all_prompts = {}, {}

    def _wrap(self, method, index: int):
        import functools

        @functools.wraps(method)
        def call(*args, **kwargs):
            if "captions" in kwargs:
                kwargs["captions"] = self.rewrite(kwargs["captions"])
            elif len(args) > index:
                args = (*args[:index], self.rewrite(args[index]), *args[index + 1 :])
            return method(*args, **kwargs)

        return call

    def generate(self, captions: list[str]) -> torch.Tensor:
        return self.generator.generate(self.rewrite(captions))


def load_prompt_upsampler(path: str | Path, device: str = "cpu"):
    """A ``prompt_upsampler`` checkpoint (``zoo-train model=prompt_upsampler``), rebuilt through the registry."""
    from zoo.checkpoint import load_module

    up = load_module(path, map_location=device, expect=("prompt_upsampler",), option="generator.prompt_upsampler")
    return up.to(device)


def build_generator(node, what: str = "generator", ranked_by: Optional[str] = None):
    """The generator of a ``conf/generator/`` node (the user's config, never a file's), for ``zoo-sample`` and
    ``zoo-eval`` alike: required keys and ``*_ckpt`` / ``checkpoint`` files are checked first (``ConfigError``
    naming the fix), then ``zoo.config.instantiate``; the result must have ``generate(captions)``. With
    ``prompt_upsampler`` set (a ``model=prompt_upsampler`` checkpoint; the key is not passed to the target), the
    generator is wrapped in ``PromptUpsampled``: prompts are rewritten before it sees them. ``ranked_by``: an entry
    point that draws each caption's candidates and ranks them itself (zoo-eval) says how, with the fix; a
    ``{what}.n_candidates`` given is then warned about as not used, in those words, instead of the pipeline's "no
    CLIP reranks" (``warn_unranked_candidates``), which is zoo-sample's."""
    from omegaconf import DictConfig, OmegaConf, open_dict

    from zoo.config import instantiate
    from zoo.errors import ConfigError

    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError(f"no {what} configured (fix: {what}=real_blurred | folder | dalle)")
    target = str(node._target_)
    missing = [k for k in node if OmegaConf.is_missing(node, k)]
    if missing:
        raise ConfigError(
            f"{what} {target} needs {what}.{missing[0]} (fix: {what}.{missing[0]}="
            f"{'/path/to/samples' if missing[0] == 'path' else '...'})"
        )
    from zoo.errors import check_device

    check_device(node.get("device"), f"{what}.device")
    for key in node:
        if str(key).endswith(("ckpt", "checkpoint")) and node[key] not in (None, ""):
            path = Path(str(node[key])).expanduser()
            if not path.is_file():
                hints = {  # the command that makes each kind of checkpoint (first matching key fragment)
                    "dalle": "train one with `make demo` (logs/demo/dalle) or zoo-train",
                    "noised_clip": "train one with zoo-train experiment=glide/noised_clip_shapes",
                    "glide": "train one with zoo-train experiment=leaderboard/glide",
                    "prior": "train one with `make demo` (logs/demo/prior) or zoo-train experiment=leaderboard/prior",
                    "decoder": "train one with `make demo` (logs/demo/decoder) or zoo-train",
                    "clip": "e.g. `make demo`'s CLIP, or zoo-train experiment=clip/shapes",
                }
                hint = next((f" -- {h}" for frag, h in hints.items() if frag in key), "")
                raise ConfigError(
                    f"{what}.{key}: checkpoint not found: {path} (fix: {what}.{key}=/path/to/file.ckpt{hint})"
                )
    upsampler_path = node.get("prompt_upsampler") if "prompt_upsampler" in node else None
    if "prompt_upsampler" in node:
        node = node.copy()  # the caller's node keeps the key
        with open_dict(node):
            del node["prompt_upsampler"]
    if upsampler_path not in (None, "") and not Path(str(upsampler_path)).expanduser().is_file():
        raise ConfigError(
            f"{what}.prompt_upsampler: checkpoint not found: {upsampler_path} (fix: {what}.prompt_upsampler=<a "
            f"zoo-train model=prompt_upsampler last.ckpt>, or null)"
        )
    given = node.get("n_candidates") if "n_candidates" in node else None
    # above 1 only: glide.yaml / unclip.yaml default to 1, which asks for no pool (and a bad count is the pipeline's
    # error to give)
    if ranked_by is not None and isinstance(given, (int, float)) and not isinstance(given, bool) and given > 1:
        log.warning("%s.n_candidates=%s not used: %s", what, given, ranked_by)
    token = _RANKED_ELSEWHERE.set(ranked_by)
    try:
        gen = instantiate(node, what)
    finally:
        _RANKED_ELSEWHERE.reset(token)
    if not callable(getattr(gen, "generate", None)):
        raise ConfigError(
            f"{what} {target} built {with_article(type(gen).__name__)}, which has no "
            f"generate(captions) -> images method (fix: point _target_ at a Generator)"
        )
    if upsampler_path not in (None, ""):
        device = str(node.get("device") or "cpu") if "device" in node else "cpu"
        seed = node.get("seed") if "seed" in node else 0
        upsampler = load_prompt_upsampler(Path(str(upsampler_path)).expanduser(), device)
        gen = PromptUpsampled(gen, upsampler, seed=int(seed or 0))
    return gen


def checkpoint_generator(component: str) -> Optional[tuple[str, str]]:
    """(conf/generator/ option, checkpoint argument) that samples a ``component`` checkpoint, or None."""
    return CHECKPOINT_GENERATORS.get(component)


__all__ = [
    "CHECKPOINT_GENERATORS",
    "CandidateGenerator",
    "Generator",
    "PromptUpsampled",
    "RepeatedCandidates",
    "RerankingGenerator",
    "as_candidate_generator",
    "build_generator",
    "check_generated",
    "check_images",
    "checkpoint_generator",
    "keep_best",
    "load_prompt_upsampler",
]
