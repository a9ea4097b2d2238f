"""A noised CLIP (GLIDE §2.4, CLIP guidance): image features of NOISED images x_t at timestep t, text features of
captions, trained contrastively (plain PyTorch).

Our choice of towers (the simplest that fits the zoo; GLIDE's own noised CLIPs are ViTs, which we do not copy):

- Image tower ``NoisedImageEncoder``: the encoder half of the ADM U-Net (as ADM's noised classifiers): an input
  conv, ``num_res_blocks`` ``zoo.nn.unet.ResBlock`` per level with the timestep embedding applied as scale-shift in
  every block (``zoo.nn.embeddings.TimestepEmbedder``, original timesteps 0..T-1), a 2x ``Downsample`` between
  levels, a middle ResBlock, then GroupNorm -> SiLU -> global average pool -> Linear to ``embed_dim``. No attention
  (the images are small; global pooling gives the image-level feature). The timestep is the only way the tower
  knows the noise level, so the same x at another t gives other features.
- Text tower: GLIDE's ``TextEncoder`` (``zoo.models.glide.model``: token + position embeddings, a causal pre-LN
  transformer, pads as learned inputs), its final-position output -> Linear to ``embed_dim``. It reads the same
  ``text_tokens`` as GLIDE (``data/tokenizer=bpe``).

Both features are L2-normalised; ``logit_scale`` is CLIP's learned temperature (log 1/0.07 at init, clamped to
log 100 in training). The CLIP-guidance score is the dot product f(x_t, t) · g(c) (``zoo.diffusion.guidance``).

API::

    net = NoisedClip(NOISED_CLIP_PRESETS["shapes"])
    f = net.encode_image(x_t, t)        # (B, D) unit norm; t original timesteps (B,)
    g = net.encode_text(text_tokens)    # (B, D) unit norm
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.models.glide.model import TextEncoder, check_text_fields
from zoo.models.presets import check_sizes, check_unet_sizes
from zoo.nn.embeddings import TimestepEmbedder
from zoo.nn.unet import Downsample, ResBlock, group_norm

__all__ = [
    "NoisedClipConfig",
    "NOISED_CLIP_PRESETS",
    "PRESETS",
    "NoisedImageEncoder",
    "NoisedClip",
    "count_noised_clip_params",
]


@dataclass(frozen=True)
class NoisedClipConfig:
    """Shape of a noised CLIP: the image tower (ADM encoder), the text tower (GLIDE's text encoder), the embedding."""

    # ---- image tower
    image_size: int = 32
    in_channels: int = 3
    width: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    dropout: float = 0.0
    max_groups: int = 32
    # ---- joint embedding
    embed_dim: int = 128
    # ---- text tower (field names as GlideConfig's: GLIDE's TextEncoder reads them)
    text_vocab: int = 1024
    text_len: int = 48
    text_width: int = 128
    text_layers: int = 3
    text_heads: int = 4
    text_causal: bool = True
    pad_id: int = 0

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        check_unet_sizes(self, "noised CLIP")
        check_sizes(self, ("embed_dim",), "noised CLIP")
        check_text_fields(self)
        if self.image_size % (2 ** (len(self.channel_mult) - 1)):
            raise ValueError(f"image_size {self.image_size} not divisible by 2^{len(self.channel_mult) - 1}")

    def to_dict(self) -> dict:
        return asdict(self)


NOISED_CLIP_PRESETS: dict[str, NoisedClipConfig] = {
    # tests: 16 px, two levels, 8 wide; a 2-layer 16-wide text encoder over GLIDE tiny's 32 tokens
    "tiny": NoisedClipConfig(
        image_size=16,
        width=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        max_groups=8,
        embed_dim=16,
        text_vocab=1024,
        text_len=32,
        text_width=16,
        text_layers=2,
        text_heads=2,
    ),
    # the shapes world at 32 px beside GLIDE's shapes preset (same 48-token captions); towers about zoo-clip-shapes'
    "shapes": NoisedClipConfig(
        image_size=32,
        width=64,
        channel_mult=(1, 2, 2),
        num_res_blocks=2,
        embed_dim=128,
        text_vocab=1024,
        text_len=48,
        text_width=128,
        text_layers=3,
        text_heads=4,
    ),
    # GLIDE's base model resolution (64 px). NOT a published size: GLIDE's noised CLIPs are ViTs whose exact shape is
    # not in PAPER_FACTS; this is an ADM encoder at 64 px with a CLIP-B-sized text tower (width 512, 12 layers,
    # 8 heads, 77 tokens of CLIP's 49,408-token BPE) and a 512-d embedding.
    "paper": NoisedClipConfig(
        image_size=64,
        width=192,
        channel_mult=(1, 2, 3, 4),
        num_res_blocks=3,
        embed_dim=512,
        text_vocab=49408,
        text_len=77,
        text_width=512,
        text_layers=12,
        text_heads=8,
    ),
}
PRESETS = NOISED_CLIP_PRESETS


class NoisedImageEncoder(nn.Module):
    """(x_t (B, C, H, W), t (B,) original timesteps) -> features (B, embed_dim), not normalised."""

    def __init__(self, cfg: NoisedClipConfig):
        super().__init__()
        ted, g = 4 * cfg.width, cfg.max_groups
        self.time_embed = TimestepEmbedder(cfg.width, ted)
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.width, 3, padding=1)
        blocks: list[nn.Module] = []
        ch = cfg.width
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(ch, ted, mult * cfg.width, dropout=cfg.dropout, max_groups=g))
                ch = mult * cfg.width
            if level < len(cfg.channel_mult) - 1:
                blocks.append(Downsample(ch))
        blocks.append(ResBlock(ch, ted, ch, dropout=cfg.dropout, max_groups=g))  # middle
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = group_norm(ch, g)
        self.proj = nn.Linear(ch, cfg.embed_dim)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        e = self.time_embed(t)  # (B, 4 width)
        h = self.conv_in(x_t)  # (B, width, H, W)
        for block in self.blocks:
            h = block(h, e) if isinstance(block, ResBlock) else block(h)
        h = F.silu(self.norm_out(h)).mean(dim=(2, 3))  # (B, ch): global average pool
        return self.proj(h)  # (B, embed_dim)


class NoisedClip(nn.Module):
    """``encode_image(x_t, t)``, ``encode_text(tokens)`` (unit norm, (B, embed_dim)) and ``logit_scale``."""

    def __init__(self, cfg: NoisedClipConfig):
        super().__init__()
        self.cfg = cfg
        self.visual = NoisedImageEncoder(cfg)
        self.text = TextEncoder(cfg)  # GLIDE's text transformer (reads the text_* fields)
        self.text_proj = nn.Linear(cfg.text_width, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def pad_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L <= text_len) -> (B, text_len), right-padded with pad_id."""
        n = self.cfg.text_len
        if tokens.shape[1] > n:
            raise ValueError(
                f"text has {tokens.shape[1]} tokens; the model takes {n} (data.tokenizer.context_length "
                f"<= model.net.text_len)"
            )
        return F.pad(tokens, (0, n - tokens.shape[1]), value=self.cfg.pad_id).long()

    def encode_image(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(x_t, t), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        _, last = self.text(self.pad_text(tokens))
        return F.normalize(self.text_proj(last), dim=-1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (image features, text features), each (B, embed_dim), unit norm."""
        return self.encode_image(x_t, t), self.encode_text(tokens)


def count_noised_clip_params(cfg: NoisedClipConfig | str) -> int:
    """Parameters of a noised CLIP (a config or a preset name), built on the meta device."""
    if isinstance(cfg, str):
        cfg = NOISED_CLIP_PRESETS[cfg]
    with torch.device("meta"):
        net = NoisedClip(cfg)
    return sum(p.numel() for p in net.parameters())
