"""Drawing and CLIP-reranking a pipeline's candidates (one copy for the DALL·E, GLIDE and unCLIP pipelines)."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from zoo.progress import track


class ClipRerank:
    """Mixin: ``rerank`` for a pipeline whose ``self.scorer`` is a ``ClipScorer`` or None."""

    def rerank(
        self, candidates: torch.Tensor, captions: Sequence[str], n_keep: int
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Keep the ``n_keep`` best of each caption's candidates (B, N, 3, H, W) by CLIP score, best first -> (B, k,
        ...), CLIP scores (B, k) (``ClipScorer.rerank_batched``, never re-implemented); without a CLIP the first
        ``n_keep`` in sampling order (scores None)."""
        k = min(int(n_keep), candidates.shape[1])
        if self.scorer is None:
            return candidates[:, :k], None
        from zoo.models.clip.scorer import clip_score_from_cos

        picked, cos, _ = self.scorer.rerank_batched(candidates, list(captions), k)
        return picked, clip_score_from_cos(cos)


def seeded_candidates(
    sample_seeds: Callable[[list[str], list[int]], torch.Tensor],
    captions: Sequence[str],
    n: int,
    seed: int,
    per_batch: int,
    progress: Optional[bool],
    desc: str,
) -> torch.Tensor:
    """(B, n, 3, H, W), ``per_batch`` candidates per call: ``sample_seeds(captions, seeds)`` returns (len(seeds) * B,
    3, H, W), candidate-major, candidate j of every caption drawn under ``seeds[j]`` (its own generator,
    ``zoo.diffusion.noise.RowGenerators``); candidate i's seed is ``seed + i`` whatever n and ``per_batch`` are. A
    progress bar in candidates when ``progress`` (None: when n > 1)."""
    captions = [captions] if isinstance(captions, str) else list(captions)
    n, per_batch = int(n), max(1, int(per_batch))
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    show = progress if progress is not None else n > 1
    out = []
    with track(total=n, desc=desc, unit="candidate", disable=not show) as bar:
        for start in range(0, n, per_batch):
            seeds = list(range(seed + start, seed + min(start + per_batch, n)))
            images = sample_seeds(captions, seeds)
            out.append(images.view(len(seeds), len(captions), *images.shape[1:]).transpose(0, 1))
            bar.update(len(seeds))
    return torch.cat(out, dim=1)
