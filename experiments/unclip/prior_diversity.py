"""How different are a prior's samples for one caption? Mean over the first 32 shapes val captions of the mean pairwise
1 - cos between 4 sampled CLIP image embeddings (seeds 0..3), for the leaderboard's diffusion prior (best of 2 and
best of 1) and AR prior; and, for scale, between the real image embeddings of 32 different val scenes.

    python experiments/unclip/prior_diversity.py     # after make demo and make leaderboard

It separates the prior's share of unCLIP's sample diversity from the decoder's (experiments/unclip/README.md,
section 3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zoo.data.shapes import ShapesDataset
from zoo.pipelines.unclip import UnclipPipeline

LOGS = "logs"
DECODER = f"{LOGS}/leaderboard/decoder/checkpoints/last.ckpt"
CLIP = f"{LOGS}/demo/clip/checkpoints/last.ckpt"


def pairwise_distance(e: torch.Tensor) -> float:
    """(captions, samples, D) unit vectors -> mean over captions of the mean over pairs of 1 - cos."""
    sims = torch.einsum("cid,cjd->cij", e, e)
    i, j = torch.triu_indices(e.shape[1], e.shape[1], 1)
    return (1 - sims[:, i, j]).mean().item()


def main() -> None:
    torch.set_num_threads(1)
    ds = ShapesDataset("val", size=32, resolution=32)
    captions = [ds[i]["caption"] for i in range(32)]
    pipe = None
    for prior, run, candidates in (("diffusion", "prior", 2), ("diffusion", "prior", 1), ("ar", "ar_prior", None)):
        kw = {"prior_n_candidates": candidates} if candidates else {}
        ckpt = f"{LOGS}/leaderboard/{run}/checkpoints/last.ckpt"
        pipe = UnclipPipeline.from_checkpoints(ckpt, DECODER, CLIP, prior=prior, **kw)
        e = torch.stack([pipe.embeddings(captions, torch.Generator().manual_seed(s)) for s in range(4)], 1)
        what = f"best of {candidates}" if candidates else "its defaults"
        print(f"{prior} prior ({what}): {pairwise_distance(F.normalize(e.float(), dim=-1)):.4f}", flush=True)
    with torch.no_grad():
        real = F.normalize(pipe.clip.encode_image(torch.stack([ds[i]["image"] for i in range(32)])).float(), dim=-1)
    print(f"32 different real scenes: {((1 - real @ real.T).sum() / (32 * 31)).item():.4f}")


if __name__ == "__main__":
    main()
