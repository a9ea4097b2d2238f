"""The unCLIP decoder (Ramesh et al., 2022): GLIDE conditioned on a CLIP image embedding (plain PyTorch).

``UnclipDecoder`` IS a ``zoo.models.glide.model.Glide`` (same text encoder, U-Net and final-token path) with two
extra projections of the CLIP image embedding z_i (PAPER_FACTS "unCLIP", decoder):

- ``clip_emb_proj``: z_i (B, clip_dim) -> (B, 4 x U-Net width), ADDED to the timestep embedding (beside GLIDE's
  final-token projection);
- ``clip_tokens_proj``: z_i -> ``clip_tokens`` (4) extra context tokens (B, 4, text_width), CONCATENATED after the
  text encoder's token outputs; they are always valid in the context mask (only text pads are masked).
- ``clip_emb_norm`` (on in conf/model/unclip_decoder.yaml, off in the presets and in checkpoints made before it):
  z_i scaled to unit RMS before both projections and the tokens LayerNormed, so the embedding enters at the
  caption tokens' scale (2 x text_width more parameters).

The null condition (classifier-free guidance on the embedding) is the zero embedding plus the empty caption:
``forward(x_t, t, None, None)`` == ``forward(x_t, t, null_tokens, zeros)``. A zero embedding still reaches the
network through the projections' biases: that is the learned "no image embedding" input.

API::

    net = UnclipDecoder(UNCLIP_DECODER_PRESETS["shapes"])
    out = net(x_t, t, text_tokens, image_emb)         # (B, 6, H, W) = [eps ; v]
    cond = net.encode(text_tokens, image_emb)          # once per sampling run ...
    out = net.denoise(x_t, t, cond)                    # ... then every step (Glide.denoise)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn as nn

from zoo.models.glide.model import GLIDE_PRESETS, Glide, GlideConfig

__all__ = [
    "UnclipDecoderConfig",
    "UNCLIP_DECODER_PRESETS",
    "PRESETS",
    "UnclipDecoder",
    "count_decoder_params",
    "UNCLIP_DECODER_PAPER_PARAMS",
]


@dataclass(frozen=True)
class UnclipDecoderConfig(GlideConfig):
    """GLIDE's fields (``GlideConfig``) plus the CLIP image embedding's width and its number of context tokens."""

    clip_dim: int = 128  # the CLIP embedding width (zoo-clip-tiny 32, zoo-clip-shapes 128, ViT-H/16 1024)
    clip_tokens: int = 4  # unCLIP: 4 extra context tokens
    # Scale z_i to unit RMS before its projections and LayerNorm its context tokens (as the text encoder's are).
    # A unit-norm CLIP embedding has entries of about 1/sqrt(clip_dim): through a default-initialised Linear its
    # tokens start ~14x smaller (RMS) than the LayerNormed text tokens they sit beside in every attention layer, and
    # are still ~9x smaller after 1,317 steps, so a decoder trained for minutes barely reads it. False = as before.
    clip_emb_norm: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.clip_dim < 1 or self.clip_tokens < 0:
            raise ValueError(f"clip_dim must be >= 1 and clip_tokens >= 0, got {self.clip_dim}, {self.clip_tokens}")


def _from_glide(name: str, **extra) -> UnclipDecoderConfig:
    return UnclipDecoderConfig(**{**asdict(GLIDE_PRESETS[name]), **extra})


# Presets: GLIDE's, plus the CLIP width of the matching zoo CLIP preset. ``paper``: unCLIP's decoder is "a modified
# GLIDE, 3.5B" generating 64 px, so it is GLIDE's paper preset conditioned on ViT-H/16's 1024-d embedding, with
# unCLIP's Table 3 text context of 256 tokens (GLIDE's released model reads 128).
UNCLIP_DECODER_PRESETS: dict[str, UnclipDecoderConfig] = {
    "tiny": _from_glide("tiny", clip_dim=32),  # zoo-clip-tiny's embed_dim
    "shapes": _from_glide("shapes", clip_dim=128),  # zoo-clip-shapes's embed_dim
    "paper": _from_glide("paper", clip_dim=1024, text_len=256),  # ViT-H/16 (unCLIP's CLIP); Table 3's context
}
PRESETS = UNCLIP_DECODER_PRESETS

# count_decoder_params("paper") on the meta device (tests re-measure it): GLIDE's 3,554,151,942 + the embedding ->
# timestep projection 1024 -> 2048 (2,099,200) + the embedding -> 4 tokens projection 1024 -> 4 x 2048 (8,396,800)
# + 128 more text positions (256 - 128) x 2048 (262,144).
UNCLIP_DECODER_PAPER_PARAMS = 3_564_910_086


class UnclipDecoder(Glide):
    """GLIDE + CLIP image embedding: ``forward(x_t, t, text_tokens=None, image_emb=None) -> (B, 2C, H, W)``
    (None = the empty caption / the zero embedding)."""

    def __init__(self, cfg: UnclipDecoderConfig):
        super().__init__(cfg)
        self.clip_emb_proj = nn.Linear(cfg.clip_dim, self.unet.time_embed_dim)  # z_i -> + timestep embedding
        self.clip_tokens_proj = nn.Linear(cfg.clip_dim, cfg.clip_tokens * cfg.text_width)  # z_i -> 4 context tokens
        self.clip_tokens_norm = nn.LayerNorm(cfg.text_width) if cfg.clip_emb_norm else nn.Identity()

    def null_embedding(self, batch: int, device=None) -> torch.Tensor:
        """The dropped CLIP embedding: zeros (batch, clip_dim)."""
        return torch.zeros(batch, self.cfg.clip_dim, device=device or self.clip_emb_proj.weight.device)

    def encode(
        self,
        text_tokens: Optional[torch.Tensor],
        image_emb: Optional[torch.Tensor],
        batch: Optional[int] = None,
        device=None,
    ) -> dict[str, torch.Tensor]:
        """The U-Net's conditioning (``Glide.encode_text``'s dict with the embedding added): "context"
        (B, L + clip_tokens, text_width), "context_mask" (B, L + clip_tokens) bool, "emb" (B, 4 x width).
        ``text_tokens`` None = the empty caption, ``image_emb`` None = the zero embedding (``batch`` gives B then)."""
        if batch is None:
            for x in (text_tokens, image_emb):
                if x is not None:
                    batch = x.shape[0]
                    break
        cond = self.encode_text(text_tokens, batch=batch, device=device)
        b = cond["context"].shape[0]
        if image_emb is None:
            image_emb = self.null_embedding(b, cond["context"].device)
        if image_emb.shape != (b, self.cfg.clip_dim):
            raise ValueError(f"image_emb must be (B={b}, clip_dim={self.cfg.clip_dim}), got {tuple(image_emb.shape)}")
        image_emb = image_emb.to(self.clip_emb_proj.weight.dtype)
        if self.cfg.clip_emb_norm:  # unit RMS per row; the null (zero) embedding stays zero
            image_emb = image_emb * torch.rsqrt(image_emb.pow(2).mean(-1, keepdim=True) + 1e-12)
        tokens = self.clip_tokens_proj(image_emb).view(b, self.cfg.clip_tokens, self.cfg.text_width)  # (B, 4, W)
        tokens = self.clip_tokens_norm(tokens)
        context = torch.cat([cond["context"], tokens.to(cond["context"].dtype)], dim=1)  # (B, L + 4, W)
        always = torch.ones(b, self.cfg.clip_tokens, dtype=torch.bool, device=context.device)
        return {
            "context": context,
            "context_mask": torch.cat([cond["context_mask"], always], dim=1),
            "emb": cond["emb"] + self.clip_emb_proj(image_emb).to(cond["emb"].dtype),
        }

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        text_tokens: Optional[torch.Tensor] = None,
        image_emb: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """x_t (B, C, H, W), t (B,) timesteps, text_tokens (B, <= text_len) or None, image_emb (B, clip_dim) or None
        -> (B, 2C, H, W) = [eps ; v]."""
        return self.denoise(x_t, t, self.encode(text_tokens, image_emb, batch=x_t.shape[0], device=x_t.device))


def count_decoder_params(cfg: UnclipDecoderConfig | str) -> int:
    """Parameters of an unCLIP decoder (a config or a preset name), built on the meta device (no memory)."""
    if isinstance(cfg, str):
        cfg = UNCLIP_DECODER_PRESETS[cfg]
    with torch.device("meta"):
        net = UnclipDecoder(cfg)
    return sum(p.numel() for p in net.parameters())
