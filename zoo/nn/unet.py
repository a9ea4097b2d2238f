"""The ADM U-Net (Dhariwal & Nichol, 2021) with GLIDE's text context, torch only.

The denoiser of every pixel-space diffusion model in the zoo: GLIDE's 64 px base model (and its inpainting variant,
which only adds input channels), unCLIP's decoder and, through :class:`SuperResUNet`, the upsamplers.

Pieces (small, one job each):

- ``ResBlock``: GroupNorm -> SiLU -> conv3x3, then "adaptive group norm": the timestep embedding is projected to a
  per-channel (scale, shift) and applied as ``norm(h) * (1 + scale) + shift``, then SiLU -> dropout -> conv3x3 whose
  weights start at zero (so every block starts as the identity). With ``up``/``down`` it is BigGAN's resampling
  residual block: the resampling happens inside, on both the residual and the skip path.
- ``Downsample`` / ``Upsample``: stride-2 conv (or 2x2 average pool) / nearest x2 then conv3x3; used when
  ``resblock_updown`` is off.
- ``AttentionBlock``: multi-head self-attention over the H*W positions with ``num_head_channels`` channels per
  head, through ``F.scaled_dot_product_attention``. With a ``context`` (GLIDE: the text encoder's token outputs,
  (B, L, context_dim)) each block projects the tokens to its own keys and values and puts them IN FRONT of the
  image's keys and values, so every image position can attend to the text; an optional ``context_mask``
  (B, L) bool (True = real token, the convention of GLIDE's ``mask`` and of SDPA's boolean masks) removes padded
  tokens. Image keys are never masked, so no row of the attention is empty. Output projection starts at zero.
- ``UNet``: input conv, a down path of ``num_res_blocks`` ResBlocks (+ attention) per level and a downsample
  between levels, a middle ResBlock-Attention-ResBlock, an up path of ``num_res_blocks + 1`` blocks per level fed
  with the down path's activations (skip connections by concatenation), GroupNorm -> SiLU -> zero-initialised
  conv. A fresh network therefore outputs exactly zero.
- ``SuperResUNet``: concatenates the bilinearly upsampled low-resolution image to x_t; no attention, so it is
  fully convolutional (trained on crops, applied at full size).

Conditioning API (one forward for all models)::

    UNet.forward(x_t, t, *, context=None, context_mask=None, emb=None) -> (B, C or 2C, H, W)

``emb`` (B, time_embed_dim) is ADDED to the timestep embedding: GLIDE's projection of the text encoder's final
token, unCLIP's projection of the CLIP image embedding. The caller owns that projection (and the text encoder);
the U-Net owns only the per-attention-layer context projections (GLIDE's ``encoder_kv``), which is why the
``glide_paper`` parameter count includes them. ``learn_sigma`` doubles the output channels: the first C are
epsilon (or x0 / v, the process decides), the last C the variance interpolation v of Improved DDPM.

Precision and layout: GroupNorm statistics and softmax run in float32 (GroupNorm explicitly, softmax inside
SDPA); everything else follows autocast, so ``torch.autocast("cpu", dtype=torch.bfloat16)`` works. Convolutions,
GroupNorm and the attention's token view all accept channels_last input without copies (the attention reads
(B, H*W, C) tokens, which IS the channels_last layout).

References read (not copied): openai/guided-diffusion and openai/glide-text2im ``unet.py`` (block order,
scale-shift norm, the ``encoder_kv`` context, zero-initialised layers) and ``model_creation.py`` (preset numbers).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.nn.conv import Conv2d
from zoo.nn.embeddings import TimestepEmbedder
from zoo.precision import sdpa

__all__ = [
    "UNetConfig",
    "UNET_PRESETS",
    "make_unet_config",
    "with_coords",
    "UNet",
    "SuperResUNet",
    "ResBlock",
    "AttentionBlock",
    "Downsample",
    "Upsample",
    "GroupNorm32",
    "count_params",
    "GLIDE_PAPER_PARAMS",
    "GLIDE_RELEASED_PARAMS",
    "UPSAMPLE_PAPER_PARAMS",
]


# ------------------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class UNetConfig:
    """Shape of an ADM U-Net. ``image_size`` is the TRAINING resolution; it only serves to turn
    ``attention_resolutions`` (in pixels, as written in the papers: "attention at 32, 16 and 8") into downsampling
    factors. The network itself accepts any size divisible by 2 ** (len(channel_mult) - 1)."""

    in_channels: int = 3  # channels of x_t plus any extra input (GLIDE inpainting: +3 masked image +1 mask)
    out_channels: int = 3  # C; the network outputs 2C when learn_sigma
    width: int = 64  # ADM "model_channels"; level i has width * channel_mult[i] channels
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2  # per level on the way down (num_res_blocks + 1 on the way up)
    attention_resolutions: tuple[int, ...] = (16, 8)  # pixel resolutions (at image_size) with attention
    image_size: int = 32
    num_head_channels: int = 64  # channels per attention head (ADM / GLIDE: 64); heads = channels // this
    dropout: float = 0.0
    learn_sigma: bool = False  # Improved DDPM learned-range variance: output 2C channels
    resblock_updown: bool = False  # BigGAN-style resampling ResBlocks instead of Downsample/Upsample
    conv_resample: bool = True  # Downsample/Upsample with a conv (else avg-pool / plain nearest)
    context_dim: Optional[int] = None  # width of context tokens (GLIDE: xf_width); None = no context projections
    max_groups: int = 32  # GroupNorm groups = gcd(max_groups, channels): 32 as in ADM, fewer for tiny widths
    attention_in_middle: bool = True  # ADM always has it; upsamplers without attention turn it off
    # CoordConv (Liu et al., 2018): two more input channels holding each pixel's row and column in [-1, 1]. Not in
    # ADM / GLIDE. A convolutional U-Net knows where a pixel is only through zero padding, and its attention layers
    # have no position embeddings; captions that name absolute places ("at the top left", the shapes world) need it.
    coord_channels: bool = False

    def __post_init__(self):
        # Hydra/YAML hand us lists; the dataclass is frozen and hashable only with tuples.
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions))
        if not self.channel_mult:
            raise ValueError("channel_mult must have at least one level")
        for r in self.attention_resolutions:
            if r < 1 or self.image_size % r:
                raise ValueError(f"attention resolution {r} does not divide image_size {self.image_size}")

    @property
    def time_embed_dim(self) -> int:
        """Width of the timestep embedding (ADM: 4 x model width) and of the extra ``emb`` the caller adds."""
        return 4 * self.width

    @property
    def output_channels(self) -> int:
        return self.out_channels * (2 if self.learn_sigma else 1)

    @property
    def attention_factors(self) -> frozenset[int]:
        """Downsampling factors (1 = full resolution) at which attention blocks sit."""
        return frozenset(self.image_size // r for r in self.attention_resolutions)

    @property
    def unreached_attention(self) -> tuple[int, ...]:
        """The ``attention_resolutions`` that no level works at (image_size // r is not a level's downsampling factor
        2**i): they get no attention block. ADM drops them without a word; ``UNet`` warns."""
        levels = {2**i for i in range(len(self.channel_mult))}
        return tuple(r for r in self.attention_resolutions if self.image_size // r not in levels)

    @property
    def divisor(self) -> int:
        """Input height and width must be multiples of this (one halving per level transition)."""
        return 2 ** (len(self.channel_mult) - 1)

    def to_dict(self) -> dict:
        return asdict(self)


# Named presets. Numbers of the paper models, with their sources:
# - glide_paper: GLIDE (Nichol et al., 2021), the 64 px base model: ADM U-Net of 2.3B parameters, text encoder of
#   width 2048 whose tokens feed every attention layer (PAPER_FACTS "GLIDE"), so context_dim = xf_width = 2048.
#   The block layout (channel_mult (1,2,3,4) for 64 px, num_res_blocks 3, attention at 32,16,8, num_head_channels
#   64, resblock_updown, scale-shift norm, dropout 0.1, learned sigma = out_channels 6) is openai/glide-text2im
#   glide_text2im/model_creation.py (model_and_diffusion_defaults + create_model). The released defaults use
#   num_channels 192: the small "GLIDE (filtered)" model. The width of the 2.3B model is not in the release; 512
#   is our reconstruction: this layout then measures 2.24B (GLIDE_PAPER_PARAMS), the neighbouring multiples of 64
#   give 1.73B (448) and 2.81B (576).
# - glide_released: the released base model's U-Net (model_creation.py defaults: 192 channels, xf_width 512).
# - upsample_paper: GLIDE's 64 -> 256 text-conditional upsampler: the released upsampler layout
#   (model_and_diffusion_defaults_upsampler: image_size 256, channel_mult (1,1,2,2,4,4), num_res_blocks 2,
#   attention 32,16,8, resblock_updown) with text width 1024 (PAPER_FACTS) and 384 base channels (the GLIDE paper's
#   upsampler section, from our reading of the paper; not in PAPER_FACTS, so verify before relying on it).
#   unCLIP's upsamplers drop attention and text (PAPER_FACTS "unCLIP"): use ``replace(cfg,
#   attention_resolutions=(), attention_in_middle=False, context_dim=None)`` for those.
_GLIDE_PAPER = UNetConfig(
    in_channels=3,
    out_channels=3,
    width=512,
    channel_mult=(1, 2, 3, 4),
    num_res_blocks=3,
    attention_resolutions=(32, 16, 8),
    image_size=64,
    num_head_channels=64,
    dropout=0.1,
    learn_sigma=True,
    resblock_updown=True,
    context_dim=2048,
)
UNET_PRESETS: dict[str, UNetConfig] = {
    # Tests: two levels, one block each, attention at 8 px with context tokens; ~50K parameters, ms per step.
    "tiny": UNetConfig(
        width=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        image_size=16,
        num_head_channels=8,
        context_dim=8,
        max_groups=8,
    ),
    # The shapes-dataset GLIDE on a CPU: 32 px, attention at 16 and 8 (2 and 4 heads of 64).
    "shapes": UNetConfig(
        width=64,
        channel_mult=(1, 2, 4),
        num_res_blocks=2,
        attention_resolutions=(16, 8),
        image_size=32,
        num_head_channels=64,
    ),
    "glide_paper": _GLIDE_PAPER,
    "glide_released": replace(_GLIDE_PAPER, width=192, context_dim=512),
    # SuperResUNet presets: in_channels is x_t's; the low-resolution image's channels are added by the subclass.
    "upsample_tiny": UNetConfig(
        width=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(),
        image_size=32,
        max_groups=8,
        attention_in_middle=False,
    ),
    "upsample_shapes": UNetConfig(
        width=32,
        channel_mult=(1, 2, 2),
        num_res_blocks=2,
        attention_resolutions=(),
        image_size=64,
        attention_in_middle=False,
    ),
    "upsample_paper": UNetConfig(
        in_channels=3,
        out_channels=3,
        width=384,
        channel_mult=(1, 1, 2, 2, 4, 4),
        num_res_blocks=2,
        attention_resolutions=(32, 16, 8),
        image_size=256,
        num_head_channels=64,
        learn_sigma=True,
        resblock_updown=True,
        context_dim=1024,
    ),
}

# Parameter counts measured with count_params() on the meta device (tests/nn/test_unet.py re-measures them).
# Cross-check of the layout: the same code with width 192, no context and a 1000-class embedding (0.77M) gives
# 295.1M + 0.77M = 296M, the size the ADM paper gives for its ImageNet 64x64 model.
# glide_paper: 2.24B against the paper's "2.3B" visual part (context projections 2048 -> 2C in every attention
#   block are 140.6M of it; text encoder and the final-token projection excluded: the caller owns them).
GLIDE_PAPER_PARAMS = 2_238_164_486
# glide_released: 308.3M; plus the released 512-wide, 16-layer text encoder (~77M by our estimate) ~385M in all.
GLIDE_RELEASED_PARAMS = 308_334_918
# upsample_paper: 1.29B U-Net; with a 1024-wide text encoder the total is ~1.6B against the paper's "1.5 billion"
#   (the paper does not give that encoder's depth, so the text part is the uncertain term).
UPSAMPLE_PAPER_PARAMS = 1_286_091_654


def make_unet_config(preset: str = "shapes", **overrides) -> UNetConfig:
    """A preset with fields overridden, e.g. ``make_unet_config("shapes", context_dim=256, learn_sigma=True)``."""
    if preset not in UNET_PRESETS:
        raise KeyError(f"unknown U-Net preset {preset!r}; known: {sorted(UNET_PRESETS)}")
    return replace(UNET_PRESETS[preset], **overrides)


# ------------------------------------------------------------------------------------------------------ layers
def with_coords(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C + 2, H, W): x with its pixels' row and column coordinates appended, each running
    linearly from -1 (top / left pixel) to 1 (bottom / right pixel), in x's dtype. A function of the size only, so a
    network trained at one size sees the same extremes at another (its cells' coordinates scale with the image)."""
    b, _, hh, ww = x.shape
    rows = torch.linspace(-1.0, 1.0, hh, device=x.device, dtype=x.dtype).view(1, 1, hh, 1).expand(b, 1, hh, ww)
    cols = torch.linspace(-1.0, 1.0, ww, device=x.device, dtype=x.dtype).view(1, 1, 1, ww).expand(b, 1, hh, ww)
    return torch.cat([x, rows, cols], dim=1)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm whose statistics are computed in float32 and whose output has the input's dtype.

    Under bf16 autocast the activations are bf16; a mean/variance over thousands of bf16 values loses the small
    differences that normalisation exists to expose. Upcasting just this op is what ADM's GroupNorm32 does too.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Weights upcast too, so a module cast wholesale with .to(torch.bfloat16) works as well as autocast.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(
                x.dtype
            )


def group_norm(channels: int, max_groups: int = 32) -> GroupNorm32:
    # gcd keeps groups a divisor of channels: 32 for every ADM width, 8 or 16 for tiny test widths.
    return GroupNorm32(math.gcd(max_groups, channels), channels)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters: residual branches then start as the identity (ADM's zero_module)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class Downsample(nn.Module):
    """Halve H and W: stride-2 conv3x3 (``use_conv``) or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool = True):
        super().__init__()
        self.op = Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour, then conv3x3 (``use_conv``) to smooth the blocky result."""

    def __init__(self, channels: int, use_conv: bool = True):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1) if use_conv else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ResBlock(nn.Module):
    """ADM residual block with scale-shift ("adaptive group norm") timestep conditioning.

    ``h = conv1(SiLU(GN(x)))``; ``h = GN(h) * (1 + scale) + shift`` with (scale, shift) = Linear(SiLU(emb));
    ``out = skip(x) + conv2(dropout(SiLU(h)))`` with conv2 zero-initialised. ``up``/``down`` (BigGAN): resample
    after the first norm+SiLU and on the skip path, by nearest x2 / 2x2 average pool (no extra parameters).
    """

    def __init__(
        self,
        in_channels: int,
        emb_dim: int,
        out_channels: Optional[int] = None,
        *,
        dropout: float = 0.0,
        up: bool = False,
        down: bool = False,
        max_groups: int = 32,
    ):
        super().__init__()
        if up and down:
            raise ValueError("a ResBlock resamples up or down, not both")
        out_channels = out_channels or in_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = group_norm(in_channels, max_groups)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1)
        self.resample = (
            Upsample(in_channels, use_conv=False) if up else Downsample(in_channels, use_conv=False) if down else None
        )
        # One projection gives both halves: (B, 2 * out) -> scale, shift.
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels)
        self.norm2 = group_norm(out_channels, max_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(Conv2d(out_channels, out_channels, 3, padding=1))
        # A 1x1 conv only where the channel count changes (ADM's default; its 3x3 option is never used).
        self.skip = nn.Identity() if in_channels == out_channels else Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(x))  # (B, Cin, H, W)
        if self.resample is not None:
            h, x = self.resample(h), self.resample(x)  # (B, Cin, H', W')
        h = self.conv1(h)  # (B, Cout, H', W')
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)  # 2 x (B, Cout, 1, 1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over spatial positions, optionally also over context tokens (GLIDE).

    Heads have ``num_head_channels`` channels each (at least one head when the block is narrower than that).
    Context tokens get their own per-block key/value projection (GLIDE's ``encoder_kv``) and are concatenated IN
    FRONT of the image keys/values: queries are the image positions only.
    """

    def __init__(
        self, channels: int, num_head_channels: int = 64, context_dim: Optional[int] = None, max_groups: int = 32
    ):
        super().__init__()
        head_dim = min(num_head_channels, channels)
        if channels % head_dim:
            raise ValueError(f"attention channels {channels} not divisible by num_head_channels {head_dim}")
        self.channels, self.head_dim, self.heads = channels, head_dim, channels // head_dim
        self.context_dim = context_dim
        self.norm = group_norm(channels, max_groups)
        # Linear layers over (B, T, C) tokens == ADM's 1x1 conv1d over (B, C, T), minus two transposes.
        self.qkv = nn.Linear(channels, 3 * channels)
        self.context_kv = nn.Linear(context_dim, 2 * channels) if context_dim else None
        self.proj_out = zero_init(nn.Linear(channels, channels))

    def forward(
        self, x: torch.Tensor, context: Optional[torch.Tensor] = None, context_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        b, c, hh, ww = x.shape
        # (B, C, H, W) -> (B, HW, C): a view for channels_last input, one copy otherwise.
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, T, C), T = H * W
        q, k, v = self.qkv(tokens).view(b, -1, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # q, k, v: (B, heads, T, head_dim)
        mask = None
        if context is not None:
            if self.context_kv is None:
                raise ValueError("context given but this U-Net was built with context_dim=None")
            n_ctx = context.shape[1]
            ck, cv = self.context_kv(context).view(b, n_ctx, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
            # ck, cv: (B, heads, L, head_dim); text first, as in GLIDE (order is irrelevant to attention itself)
            k = torch.cat([ck.to(k.dtype), k], dim=2)  # (B, heads, L + T, head_dim)
            v = torch.cat([cv.to(v.dtype), v], dim=2)
            if context_mask is not None:
                if context_mask.shape != (b, n_ctx):
                    raise ValueError(f"context_mask must be (B, L) = {(b, n_ctx)}, got {tuple(context_mask.shape)}")
                keep_image = torch.ones(b, q.shape[2], dtype=torch.bool, device=x.device)
                mask = torch.cat([context_mask.to(torch.bool), keep_image], dim=1)[:, None, None, :]
                # mask: (B, 1, 1, L + T), True = may attend; broadcast over heads and queries
        out = sdpa(q, k, v.to(q.dtype), attn_mask=mask)  # (B, heads, T, head_dim); fp32 on CPU (zoo.precision)
        out = self.proj_out(out.transpose(1, 2).reshape(b, -1, c))  # (B, T, C)
        # (B, T, C) -> (B, C, H, W) with channels_last strides (a view, no copy)
        return x + out.transpose(1, 2).reshape(b, c, hh, ww)


class EmbedSequential(nn.ModuleList):
    """A chain of ResBlocks / AttentionBlocks / resamplers, each given the inputs it needs."""

    def forward(
        self,
        h: torch.Tensor,
        emb: torch.Tensor,
        context: Optional[torch.Tensor] = None,
        context_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, AttentionBlock):
                h = layer(h, context, context_mask)
            else:
                h = layer(h)
        return h


# ------------------------------------------------------------------------------------------------------ U-Net
class UNet(nn.Module):
    """ADM U-Net: ``forward(x_t, t, *, context=None, context_mask=None, emb=None) -> (B, C or 2C, H, W)``."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        self.in_channels = cfg.in_channels  # what forward's x_t (plus caller-side extras) must have
        self.time_embed_dim = cfg.time_embed_dim
        ted, g = cfg.time_embed_dim, cfg.max_groups
        attn_at = cfg.attention_factors
        if cfg.unreached_attention:  # e.g. a preset's (16, 8) kept when image_size doubled: 8 px is now no level's
            import logging

            reached = [r for r in cfg.attention_resolutions if r not in cfg.unreached_attention]
            logging.getLogger("zoo.nn.unet").warning(
                "U-Net: attention_resolutions %s are not the resolution of any level at image_size %d with %d levels "
                "(%s): no attention there, only at %s (fix: model.net.attention_resolutions=<resolutions among "
                "those>, or another channel_mult)",
                list(cfg.unreached_attention),
                cfg.image_size,
                len(cfg.channel_mult),
                [cfg.image_size // 2**i for i in range(len(cfg.channel_mult))],
                reached or "no level",
            )

        def res(cin, cout, **kw):
            return ResBlock(cin, ted, cout, dropout=cfg.dropout, max_groups=g, **kw)

        def attn(ch):
            return AttentionBlock(ch, cfg.num_head_channels, cfg.context_dim, max_groups=g)

        self.time_embed = TimestepEmbedder(cfg.width, ted)
        ch = cfg.width * cfg.channel_mult[0]
        self.input_blocks = nn.ModuleList([EmbedSequential([Conv2d(self._conv_in_channels(), ch, 3, padding=1)])])
        skip_channels = [ch]  # channels of every activation the up path will concatenate, in push order
        ds = 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, cfg.width * mult)]
                ch = cfg.width * mult
                if ds in attn_at:
                    layers.append(attn(ch))
                self.input_blocks.append(EmbedSequential(layers))
                skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                down = res(ch, ch, down=True) if cfg.resblock_updown else Downsample(ch, cfg.conv_resample)
                self.input_blocks.append(EmbedSequential([down]))
                skip_channels.append(ch)
                ds *= 2

        middle: list[nn.Module] = [res(ch, ch)]
        if cfg.attention_in_middle:
            middle.append(attn(ch))
        middle.append(res(ch, ch))
        self.middle_block = EmbedSequential(middle)

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), cfg.width * mult)]
                ch = cfg.width * mult
                if ds in attn_at:
                    layers.append(attn(ch))
                if level and i == cfg.num_res_blocks:  # last block of a level (not the top one): go up
                    layers.append(res(ch, ch, up=True) if cfg.resblock_updown else Upsample(ch, cfg.conv_resample))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(layers))
        assert not skip_channels and ds == 1

        self.out = nn.Sequential(group_norm(ch, g), nn.SiLU(), zero_init(Conv2d(ch, cfg.output_channels, 3, padding=1)))

    def _conv_in_channels(self) -> int:
        return self.cfg.in_channels + (2 if self.cfg.coord_channels else 0)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        *,
        context: Optional[torch.Tensor] = None,
        context_mask: Optional[torch.Tensor] = None,
        emb: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """x_t (B, in_channels, H, W); t (B,) int or float timesteps (or a scalar, broadcast);
        context (B, L, context_dim) tokens; context_mask (B, L) bool, True = real token; emb (B, time_embed_dim)
        added to the timestep embedding. Returns (B, out_channels * (2 if learn_sigma else 1), H, W)."""
        b, _, hh, ww = x_t.shape
        d = self.cfg.divisor
        if hh % d or ww % d:
            raise ValueError(f"input {hh}x{ww} must be divisible by {d} ({len(self.cfg.channel_mult)} levels)")
        t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(b)
        e = self.time_embed(t)  # (B, time_embed_dim)
        if emb is not None:
            e = e + emb.to(e.dtype)
        if context is not None and self.cfg.context_dim is None:
            raise ValueError("context given but this U-Net was built with context_dim=None")
        if context_mask is not None and context is None:
            raise ValueError("context_mask given without context")

        h, hs = (with_coords(x_t) if self.cfg.coord_channels else x_t), []
        for block in self.input_blocks:
            h = block(h, e, context, context_mask)
            hs.append(h)
        h = self.middle_block(h, e, context, context_mask)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), e, context, context_mask)
        return self.out(h)  # (B, C or 2C, H, W)

    def attention_blocks(self) -> list[AttentionBlock]:
        return [m for m in self.modules() if isinstance(m, AttentionBlock)]


class SuperResUNet(UNet):
    """U-Net conditioned on a low-resolution image (the upsamplers of GLIDE and unCLIP).

    ``forward(x_t, t, *, low_res, ...)`` resizes ``low_res`` to x_t's size (bilinear, no antialiasing, as
    glide-text2im does) and concatenates it to x_t's channels; the input conv takes
    ``cfg.in_channels + low_res_channels`` channels. Without attention every layer is local except GroupNorm's
    statistics, so the network trained on crops runs on full images (unCLIP trains on quarter-size crops).
    """

    def __init__(self, cfg: UNetConfig, low_res_channels: Optional[int] = None):
        self.low_res_channels = cfg.out_channels if low_res_channels is None else low_res_channels
        super().__init__(cfg)

    def _conv_in_channels(self) -> int:
        return super()._conv_in_channels() + self.low_res_channels

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, *, low_res: torch.Tensor, **kwargs) -> torch.Tensor:
        if low_res.shape[1] != self.low_res_channels:
            raise ValueError(f"low_res has {low_res.shape[1]} channels, expected {self.low_res_channels}")
        up = F.interpolate(low_res, size=x_t.shape[-2:], mode="bilinear", align_corners=False, antialias=False)
        return super().forward(torch.cat([x_t, up.to(x_t.dtype)], dim=1), t, **kwargs)  # (B, Cin + Clr, H, W) in


def build_unet(cfg: UNetConfig, super_res: bool = False) -> UNet:
    return SuperResUNet(cfg) if super_res else UNet(cfg)


def count_params(cfg: UNetConfig | str, super_res: bool = False) -> int:
    """Parameters of the U-Net of ``cfg`` (a config or a preset name), built on the meta device (no memory)."""
    if isinstance(cfg, str):
        super_res = super_res or cfg.startswith("upsample")
        cfg = UNET_PRESETS[cfg]
    with torch.device("meta"):
        net = build_unet(cfg, super_res)
    return sum(p.numel() for p in net.parameters())
