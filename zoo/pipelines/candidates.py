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
    sample: Callable[[list[str], int], torch.Tensor],
    captions: Sequence[str],
    n: int,
    seed: int,
    progress: Optional[bool],
    desc: str,
) -> torch.Tensor:
    """(B, n, 3, H, W): candidate i of every caption is ``sample(captions, seed + i)`` (B images), so candidate i is
    the same whatever n is (nested reranking curves). A progress bar when ``progress`` (None: when n > 1)."""
    captions = [captions] if isinstance(captions, str) else list(captions)
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    show = progress if progress is not None else n > 1
    out = [sample(captions, seed + i) for i in track(range(n), desc=desc, unit="candidate", disable=not show)]
    return torch.stack(out, dim=1)
