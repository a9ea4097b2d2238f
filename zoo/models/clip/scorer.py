"""``ClipScorer``: the one place images and captions are scored with CLIP (reranking, eval's CLIP score, FD_CLIP).

Importable without Lightning. Wraps any ClipLike (``encode_text(tokens)``, ``encode_image(pixels)``,
``logit_scale``) with its tokenizer and its own preprocessing: images in [-1, 1] of any size are resized
(bicubic, antialiased) to the model's image size and normalised with its mean/std.

CLIP score convention (named in every result that uses it): per image-caption pair 100 * max(cos, 0), then
averaged — the per-sample clamp of Hessel et al.'s CLIPScore with DALL·E 3's / torchmetrics' scale of 100.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

CLIP_SCORE_CONVENTION = "100*max(cos,0) per pair, averaged"


class ClipScorer:
    def __init__(self, model, tokenizer: Callable[[Sequence[str]], torch.Tensor], image_size: int,
                 mean: Sequence[float], std: Sequence[float], device: str | torch.device = "cpu", batch_size: int = 256):
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.device = torch.device(device)
        self.batch_size = batch_size

    # -- constructors ---------------------------------------------------------------------------------------
    @classmethod
    def from_open_clip(cls, arch: str, pretrained: Optional[str] = None, checkpoint: Optional[str] = None,
                       device: str = "cpu", **kw) -> "ClipScorer":
        import open_clip

        from zoo.models.clip.model import create_clip, preprocess_cfg

        model = create_clip(arch, pretrained=pretrained, checkpoint=checkpoint)
        size, mean, std = preprocess_cfg(model)
        return cls(model, open_clip.get_tokenizer(arch), size, mean, std, device=device, **kw)

    @classmethod
    def from_lightning_checkpoint(cls, path: str, device: str = "cpu", **kw) -> "ClipScorer":
        """A checkpoint written by ``zoo-train model=clip`` (weights_only load; arch read from its hparams)."""
        from zoo.checkpoint import safe_load
        from zoo.models.clip.model import arch_for

        ckpt = safe_load(path)
        hp = ckpt.get("hyper_parameters", {})
        return cls.from_open_clip(arch_for(hp.get("preset"), hp.get("arch")), checkpoint=path, device=device, **kw)

    # -- encoders ---------------------------------------------------------------------------------------------
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] (N, 3, H, W) any size -> the model's normalised input."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (N, 3, H, W), got {tuple(images.shape)}")
        x = images.to(self.device, torch.float32).add(1).div(2)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", antialias=True,
                              align_corners=False).clamp(0, 1)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        out = [self.model.encode_image(self.preprocess(images[i : i + self.batch_size]))
               for i in range(0, len(images), self.batch_size)]
        return F.normalize(torch.cat(out).float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, captions: Sequence[str]) -> torch.Tensor:
        captions = list(captions)
        out = [self.model.encode_text(self.tokenizer(captions[i : i + self.batch_size]).to(self.device))
               for i in range(0, len(captions), self.batch_size)]
        return F.normalize(torch.cat(out).float(), dim=-1)

    # -- scores ------------------------------------------------------------------------------------------------
    def similarity(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        """Cosine similarity matrix (N_images, N_captions)."""
        return self.encode_image(images) @ self.encode_text(captions).t()

    def clip_score(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        """Per-pair CLIP score 100 * max(cos(image_i, caption_i), 0) -> (N,)."""
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images but {len(captions)} captions: clip_score scores pairs")
        cos = (self.encode_image(images) * self.encode_text(captions)).sum(-1)
        return 100 * cos.clamp_min(0)

    def rerank(self, images: torch.Tensor, caption: str, top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep the ``top_k`` candidates most similar to ``caption``: (images, cosine scores, indices), best first."""
        scores = self.similarity(images, [caption])[:, 0]
        k = min(int(top_k), len(images))
        best = torch.topk(scores, k).indices
        return images[best.to(images.device)], scores[best], best
