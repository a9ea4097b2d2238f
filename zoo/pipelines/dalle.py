"""DALL·E 1 inference: text -> BPE tokens -> transformer samples -> image-tokenizer decode -> CLIP rerank.

    pipe = DallePipeline.from_checkpoints("logs/.../dalle/last.ckpt", clip_ckpt="logs/demo/clip/checkpoints/last.ckpt")
    images = pipe.generate(["a large red circle at the top left"])        # (1, 3, H, W) in [-1, 1]: best of 32
    out = pipe.sample(captions, n_candidates=32, n_keep=8)                 # images (B, 8, 3, H, W), scores (B, 8)

Reranking goes through ``ClipScorer.rerank_batched`` (never re-implemented here); ``scores`` are CLIP scores,
``100 * max(cos, 0)`` per (image, caption) pair (``zoo.models.clip.scorer.CLIP_SCORE_CONVENTION``), best first.
Without a CLIP model the candidates are kept in sampling order and ``scores`` is None.

A ``zoo.pipelines.base`` generator (``generate``, ``candidates``, and ``sample`` as a ``RerankingGenerator``), built
by ``conf/generator/dalle.yaml`` for both ``zoo-sample`` and ``zoo-eval``. Sampling knobs are attributes, named by the
convention in ``zoo.pipelines.base``: ``n_candidates``, ``temperature``, ``top_k`` / ``top_p`` (logit filtering),
``guidance_scale`` (classifier-free guidance with the all-pad null caption), ``batch_size`` (images per transformer
batch), ``seed``; ``sample(..., n_keep=k)`` keeps the best k. Results are a pure function of (seed, captions,
settings): candidate i of every caption is drawn under ``seed + i``, whatever n and ``batch_size`` are.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import torch

from zoo.config import with_article
from zoo.diffusion.noise import seeded_row_generators
from zoo.errors import ConfigError
from zoo.pipelines.base import check_counts, warn_unranked_candidates
from zoo.pipelines.candidates import ClipRerank, seeded_candidates

log = logging.getLogger(__name__)


# (key, fix) of the count knobs, checked by zoo.pipelines.base.check_counts
COUNT_KNOBS = (("n_candidates", 32), ("batch_size", 64))
# n_candidates left out (generator.n_candidates=null): the pool a CLIP ranks (the paper reranks 512; 32 on shapes)
DEFAULT_CANDIDATES = 32


def check_guidance(scale) -> None:
    """``generator.guidance_scale`` as the GLIDE and unCLIP pipelines take it (``check_sampling_knobs``: a finite
    number >= 0, a ConfigError naming the key): NaN and inf were taken and sampled every caption's tokens from NaN /
    inf logits without a word, a negative scale pushed away from the caption, and a word was float()'s ValueError
    after the checkpoints had loaded."""
    from zoo.diffusion.samplers import check_sampling_knobs

    check_sampling_knobs(1, {"generator.guidance_scale": scale})


class DallePipeline(ClipRerank):
    def __init__(
        self,
        dalle,
        scorer=None,
        n_candidates: Optional[int] = None,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        guidance_scale: float = 1.0,
        batch_size: int = 64,
        seed: int = 0,
        progress: Optional[bool] = None,
    ):
        self.dalle = dalle.eval()
        self.scorer = scorer
        # None: DEFAULT_CANDIDATES for a CLIP to rank (without one sample() draws n_keep); a count given without a
        # CLIP is not drawn, and said so (GLIDE's rule)
        given = n_candidates
        n_candidates = DEFAULT_CANDIDATES if n_candidates is None else n_candidates
        counts = check_counts(COUNT_KNOBS, dict(n_candidates=n_candidates, batch_size=batch_size))
        self.n_candidates, self.batch_size = counts["n_candidates"], counts["batch_size"]
        warn_unranked_candidates(given, scorer, "n_keep drawn, or 32 with a clip_ckpt")
        self.temperature = float(temperature)
        from zoo.models.dalle.lit import check_sampling

        check_sampling(temperature, top_k, top_p, "generator.")  # when built, before any token is drawn
        self.top_k = top_k  # logit filter
        self.top_p = top_p
        check_guidance(guidance_scale)
        self.guidance_scale = float(guidance_scale)
        dalle.warn_untrained_null({"generator.guidance_scale": self.guidance_scale})
        self.seed = int(seed)
        self.progress = progress  # None: a bar only when there is more than one batch
        self.weights = "as given"  # from_checkpoints: "ema" | "raw" | "raw (no EMA in checkpoint)"

    @classmethod
    def from_checkpoints(
        cls,
        dalle_ckpt: str,
        clip_ckpt: Optional[str] = None,
        device: str = "cpu",
        image_tokenizer_ckpt: Optional[str] = None,
        use_ema: bool = True,
        **kw,
    ) -> "DallePipeline":
        """A zoo-train DALL·E checkpoint (self-contained: tokenizers inside) and optionally a zoo-train CLIP one.

        Trained with the EMA callback, the transformer samples with its EMA (``use_ema``, default) or its raw weights
        (``use_ema=False``); a checkpoint saved before the EMA's first update (its "average" is the initial weights)
        falls back to the raw weights with a warning, as the GLIDE and unCLIP pipelines do
        (``zoo.checkpoint.load_module``'s ``ema``); ``pipe.weights`` says which were loaded.

        ``image_tokenizer_ckpt``: the dVAE / VQ-VAE that decodes its codes, for a checkpoint trained from zoo-tokenize
        files alone (no ``model.image_tokenizer_ckpt``), which carries none; without it such a checkpoint is refused
        here, where it was a RuntimeError only after every candidate's codes had been sampled."""
        from zoo.checkpoint import load_module
        from zoo.models.dalle.lit import DalleLit, check_sampling

        # the sampling options before the checkpoints are read (__init__ checks them again for a direct build)
        check_sampling(kw.get("temperature", 1.0), kw.get("top_k"), kw.get("top_p"), "generator.")
        check_guidance(kw.get("guidance_scale", 1.0))
        # n_candidates=0 was refused only once the checkpoints had loaded
        check_counts(COUNT_KNOBS, kw, given_only=True)
        dalle = load_module(
            dalle_ckpt, map_location=device, expect=("dalle",), ema=use_ema, option="generator.dalle_ckpt"
        )
        if not isinstance(dalle, DalleLit):
            raise ValueError(
                f"{dalle_ckpt} holds {with_article(type(dalle).__name__)}, not a DALL·E transformer (model=dalle)"
            )
        weights = dalle.loaded_weights
        if dalle.image_tokenizer is None:
            if not image_tokenizer_ckpt:
                raise ConfigError(
                    f"the DALL·E checkpoint {dalle_ckpt} has no image tokenizer to decode its samples (it was trained "
                    f"from zoo-tokenize codes without model.image_tokenizer_ckpt) (fix: "
                    f"generator.image_tokenizer_ckpt=<the dvae/vqvae checkpoint that wrote its training codes>)"
                )
            dalle.load_image_tokenizer(str(image_tokenizer_ckpt), option="generator.image_tokenizer_ckpt")
            grid, want = tuple(dalle.image_tokenizer.grid_size), (dalle.cfg.grid_h, dalle.cfg.grid_w)
            if grid != want:
                raise ConfigError(
                    f"the image tokenizer {image_tokenizer_ckpt} makes a {grid[0]}x{grid[1]} grid but the DALL·E "
                    f"checkpoint {dalle_ckpt} samples {want[0]}x{want[1]} codes (fix: generator.image_tokenizer_ckpt="
                    f"<the tokenizer that wrote its training codes>)"
                )
            dalle.image_tokenizer.to(device)
        elif image_tokenizer_ckpt:  # the checkpoint's own tokenizer wrote its training codes: it decodes them
            log.warning(
                "generator.image_tokenizer_ckpt=%s ignored: the DALL·E checkpoint %s carries the image tokenizer it "
                "trained with (the option is for a checkpoint trained from zoo-tokenize codes alone)",
                image_tokenizer_ckpt,
                dalle_ckpt,
            )
        scorer = None
        if clip_ckpt:
            from zoo.models.clip.scorer import ClipScorer

            scorer = ClipScorer.from_lightning_checkpoint(str(clip_ckpt), device=device)
        pipe = cls(dalle.to(device), scorer, **kw)
        pipe.weights = weights
        return pipe

    # ------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def candidates(self, captions: Sequence[str], n_candidates: Optional[int] = None) -> torch.Tensor:
        """All samples: (B, n_candidates, 3, H, W) in [-1, 1]. Candidate i of every caption is
        ``dalle.generate(captions, seed=seed + i)`` (as ``zoo.pipelines.base`` asks), so it does not depend on n or
        on ``batch_size``: several candidates share a transformer batch of up to ``batch_size`` images, each
        candidate's rows drawing their Gumbel noise from its own seed's generator
        (``zoo.diffusion.noise.RowGenerators``). One generator for all of them made every image depend on n and on
        ``batch_size`` (reranking curves over n were not nested; a smaller batch for memory gave other images). As in
        the GLIDE and unCLIP pipelines, a candidate still depends on the captions drawn with it, and on
        ``batch_size`` when the captions alone are more than a batch."""
        captions = [captions] if isinstance(captions, str) else list(captions)
        if not captions:  # was a ZeroDivisionError (and before that torch.cat's 'expected a non-empty list')
            raise ValueError("DallePipeline got no captions to sample (fix: give at least one prompt)")
        n = int(n_candidates or self.n_candidates)
        per_batch = max(1, self.batch_size // len(captions))  # candidates per transformer batch
        return seeded_candidates(self._draw_seeds, captions, n, self.seed, per_batch, self.progress, "dalle sample")

    def _draw_seeds(self, captions: list[str], seeds: list[int]) -> torch.Tensor:
        """Candidates under ``seeds`` in one transformer batch: (len(seeds) * B, 3, H, W), candidate-major."""
        knobs = dict(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        if len(seeds) == 1:  # the candidate alone: batch_size chunks of one seed's generator, as generate() draws it
            return self.dalle.generate(
                captions, seed=seeds[0], guidance_scale=self.guidance_scale, batch_size=self.batch_size, **knobs
            )
        rows = seeded_row_generators(len(captions), seeds, self.dalle.device)
        return self.dalle.generate(
            captions * len(seeds),
            guidance_scale=self.guidance_scale,
            generator=rows,
            batch_size=len(captions) * len(seeds),
            **knobs,
        )

    @torch.no_grad()
    def sample(
        self, captions: Sequence[str], n_candidates: Optional[int] = None, n_keep: int = 1, **renamed
    ) -> dict[str, Any]:
        """``max(n_candidates, n_keep)`` samples per caption (as GLIDE's and unCLIP's pipelines), reranked by CLIP;
        the ``n_keep`` best of each, best first: dict(images (B, n_keep, 3, H, W) in [-1, 1], scores (B, n_keep)
        CLIP scores or None, n_candidates). Before, ``n_keep`` above ``n_candidates`` silently kept fewer. Without a
        CLIP only ``n_keep`` are drawn (as GLIDE's pipeline): nothing ranks them, and candidate i does not depend on
        n, so drawing all ``n_candidates`` (32 by default) and keeping the first ``n_keep`` gave the same images at 4x
        (zoo-sample's n_keep=8) to 32x (``generate``) the sampling time, recorded as a best of 32."""
        if renamed:
            hint = (
                " (top_k is the logit filter, an attribute; the number of images kept is n_keep)"
                if "top_k" in renamed
                else ""
            )
            raise TypeError(f"DallePipeline.sample() got unexpected arguments {sorted(renamed)}{hint}")
        captions = [captions] if isinstance(captions, str) else list(captions)
        if int(n_keep) < 1:
            raise ConfigError(f"n_keep must be >= 1, got {n_keep} (fix: n_keep=1)")
        n = max(int(n_candidates or self.n_candidates), int(n_keep)) if self.scorer is not None else int(n_keep)
        cands = self.candidates(captions, n)
        images, scores = self.rerank(cands, captions, n_keep)
        return {"images": images, "scores": scores, "n_candidates": n}

    @torch.no_grad()
    def generate(self, captions: list[str]) -> torch.Tensor:
        """One image per caption, the CLIP-best of ``n_candidates`` (without a CLIP, candidate 0): FloatTensor
        (len(captions), 3, H, W) in [-1, 1]."""
        return self.sample(captions, self.n_candidates, n_keep=1)["images"][:, 0]

    __call__ = generate
