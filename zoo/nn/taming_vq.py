"""The VQGAN autoencoder of taming-transformers (Esser et al. 2021), laid out so a published state dict loads as is.

Torch only. Written for ``zoo-convert`` (``kind=taming_vq`` / ``taming_gumbel``): every parameter has the name and
shape it has in CompVis/taming-transformers (``taming/modules/diffusionmodules/model.py`` ``Encoder`` / ``Decoder``,
``taming/models/vqgan.py`` ``VQModel`` / ``GumbelVQ``, ``taming/modules/vqvae/quantize.py`` ``VectorQuantizer2`` /
``GumbelQuantize``), so the conversion is a rename-free copy checked key by key. Only inference is implemented (no
losses, no dropout: every published config has ``dropout: 0.0``, no Gumbel sampling).

The layout, for ``ch_mult`` of length L (level i has width ``ch * ch_mult[i]``; level i works at ``resolution / 2**i``):

- ``encoder``: ``conv_in`` (3x3, 3 -> ch); ``down.{i}`` for i = 0..L-1, each with ``block.{j}`` (``num_res_blocks``
  resnet blocks; the first of a level changes the width, with a 1x1 ``nin_shortcut`` when it does), ``attn.{j}``
  (an attention block after each resnet block, only at levels whose resolution is in ``attn_resolutions``) and, for
  i < L-1, ``downsample.conv`` (pad right/bottom by one, then a stride-2 3x3 conv with no padding); ``mid.block_1``,
  ``mid.attn_1``, ``mid.block_2``; ``norm_out``; ``conv_out`` (3x3 -> ``z_channels``; VQGAN configs have
  ``double_z: False``).
- ``decoder``: ``conv_in`` (3x3, z_channels -> the widest level), ``mid`` as above, then ``up.{i}`` visited from
  i = L-1 down to 0 (the index is the level, as in the encoder), each with ``num_res_blocks + 1`` resnet blocks,
  attention as above and, for i > 0, ``upsample.conv`` (nearest 2x, then a 3x3 conv); ``norm_out``; ``conv_out``
  (3x3 -> 3 image channels).
- Resnet block: GroupNorm -> swish -> conv3x3 -> GroupNorm -> swish -> conv3x3, plus the (projected) input.
  GroupNorm has 32 groups and eps 1e-6 everywhere; swish is x * sigmoid(x) (``F.silu``).
- Attention block: single-head self-attention over the h*w positions: GroupNorm, 1x1 convs ``q``, ``k``, ``v``,
  softmax(q k^T / sqrt(C)) v, 1x1 ``proj_out``, added to the input.
- Quantizers: ``NearestCodebook`` (``embedding``, VQModel: the code is the nearest entry by squared Euclidean
  distance, ties to the lowest index) and ``GumbelCodebook`` (``proj`` 1x1 conv to code logits and ``embed``,
  GumbelVQ: the code is the argmax of the logits).

Images: taming's models read and write pixels in [-1, 1] (its data pipeline maps uint8 x to x / 127.5 - 1), which is
the zoo's ``ImageTokenizer`` convention too; ``zoo.models.vqgan.model`` says so where images enter and leave.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.nn.conv import Conv2d, nchw_for_route

NORM_GROUPS = 32  # taming's Normalize(): GroupNorm(num_groups=32, eps=1e-6, affine=True)
NORM_EPS = 1e-6


def group_norm(channels: int) -> nn.GroupNorm:
    if channels % NORM_GROUPS:
        raise ValueError(f"taming's GroupNorm has {NORM_GROUPS} groups: {channels} channels are not divisible by it")
    return nn.GroupNorm(NORM_GROUPS, channels, eps=NORM_EPS)


class ResnetBlock(nn.Module):
    """norm1 -> swish -> conv1 -> norm2 -> swish -> conv2, plus the input (through a 1x1 ``nin_shortcut`` when the
    width changes). No timestep embedding (taming's autoencoder has ``temb_ch = 0``)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions of a feature map, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = Conv2d(channels, channels, 1)
        self.k = Conv2d(channels, channels, 1)
        self.v = Conv2d(channels, channels, 1)
        self.proj_out = Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)

        def tokens(conv: nn.Module) -> torch.Tensor:  # (B, 1, h*w, C): one head
            return conv(y).flatten(2).transpose(1, 2).unsqueeze(1)

        out = F.scaled_dot_product_attention(tokens(self.q), tokens(self.k), tokens(self.v))  # scale 1/sqrt(C)
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Halve the resolution: zero-pad one column right and one row below, then a stride-2 3x3 conv without padding
    (``resamp_with_conv``); 2x2 average pooling otherwise (no parameters)."""

    def __init__(self, channels: int, with_conv: bool = True):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, stride=2) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is None:
            return F.avg_pool2d(x, 2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour 2x, then a 3x3 conv (``resamp_with_conv``)."""

    def __init__(self, channels: int, with_conv: bool = True):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x if self.conv is None else self.conv(x)


class Level(nn.Module):
    """One resolution level: resnet blocks ``block.{j}``, each followed by ``attn.{j}`` when the level has attention.
    The encoder adds ``downsample``, the decoder ``upsample`` (applied by the owner after the blocks)."""

    def __init__(self, widths: Sequence[tuple[int, int]], attention: bool):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(i, o) for i, o in widths)
        self.attn = nn.ModuleList(AttnBlock(o) for _, o in widths) if attention else nn.ModuleList()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for j, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[j](h)
        return h


class Mid(nn.Module):
    """resnet block -> attention -> resnet block at the lowest resolution (both encoder and decoder)."""

    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


def attention_levels(resolution: int, n_levels: int, attn_resolutions: Sequence[int]) -> list[bool]:
    """Which levels carry attention blocks: level i works at ``resolution // 2**i``."""
    return [resolution // 2**i in set(int(r) for r in attn_resolutions) for i in range(n_levels)]


class TamingEncoder(nn.Module):
    """Images (B, in_channels, H, W) -> features (B, z_channels, H / 2**(L-1), W / 2**(L-1))."""

    def __init__(
        self,
        *,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        resolution: int,
        z_channels: int,
        in_channels: int = 3,
        resamp_with_conv: bool = True,
    ):
        super().__init__()
        n = len(ch_mult)
        attn = attention_levels(resolution, n, attn_resolutions)
        self.conv_in = Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        width = ch
        for i, mult in enumerate(ch_mult):
            out = ch * mult
            level = Level([(width if j == 0 else out, out) for j in range(num_res_blocks)], attn[i])
            width = out
            if i != n - 1:
                level.downsample = Downsample(width, resamp_with_conv)
            self.down.append(level)
        self.mid = Mid(width)
        self.norm_out = group_norm(width)
        self.conv_out = Conv2d(width, z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        last = len(self.down) - 1
        for i, level in enumerate(self.down):
            h = level(h)
            if i != last:
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class TamingDecoder(nn.Module):
    """Features (B, z_channels, h, w) -> images (B, out_ch, h * 2**(L-1), w * 2**(L-1)) (not clamped)."""

    def __init__(
        self,
        *,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        resolution: int,
        z_channels: int,
        out_ch: int = 3,
        resamp_with_conv: bool = True,
    ):
        super().__init__()
        n = len(ch_mult)
        attn = attention_levels(resolution, n, attn_resolutions)
        width = ch * ch_mult[-1]
        self.conv_in = Conv2d(z_channels, width, 3, padding=1)
        self.mid = Mid(width)
        levels: list[nn.Module] = [nn.Module()] * n
        for i in reversed(range(n)):  # built from the lowest resolution up, stored at index = level
            out = ch * ch_mult[i]
            level = Level([(width if j == 0 else out, out) for j in range(num_res_blocks + 1)], attn[i])
            width = out
            if i != 0:
                level.upsample = Upsample(width, resamp_with_conv)
            levels[i] = level
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(width)
        self.conv_out = Conv2d(width, out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # codebook lookups arrive channels_last-strided, and every convolution after would keep that layout on
        # oneDNN; NCHW lets the NNPACK route take them where it is on (decode 1.7x on an AVX2 CPU, one thread)
        h = self.mid(self.conv_in(nchw_for_route(z)))
        for i in reversed(range(len(self.up))):
            h = self.up[i](h)
            if i != 0:
                h = self.up[i].upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class NearestCodebook(nn.Module):
    """VQModel's quantizer at inference: ``embedding`` (n_embed, embed_dim); a vector's code is its nearest entry."""

    def __init__(self, n_embed: int, embed_dim: int, chunk: int = 4096):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)
        self.chunk = chunk  # rows of distances computed at once (bounds memory at chunk x n_embed floats)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """(B, embed_dim, h, w) -> (B, h, w): argmin_k ||z||^2 + ||e_k||^2 - 2 z.e_k (the lowest k on ties)."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()
        e = self.embedding.weight.float()
        e2 = e.pow(2).sum(1)
        # an exported graph (ONNX) keeps a dynamic batch axis only without the data-dependent chunking
        chunks = [flat] if torch.onnx.is_in_onnx_export() else flat.split(self.chunk)
        # autocast off: under bf16-mixed (DALL·E's on-the-fly tokens, export's encode_with_features) the distance
        # matmul ran in bf16 and a fraction of vectors took a code that is not their nearest
        with torch.autocast(z.device.type, enabled=False):
            out = [(rows.pow(2).sum(1, keepdim=True) + e2 - 2 * rows @ e.t()).argmin(1) for rows in chunks]
        return torch.cat(out).view(b, h, w)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) long -> (B, embed_dim, h, w)."""
        return self.embedding(codes).permute(0, 3, 1, 2)


class GumbelCodebook(nn.Module):
    """GumbelVQ's quantizer at inference: ``proj`` (1x1 conv, features -> n_embed logits) and ``embed``
    (n_embed, embed_dim). A position's code is the argmax of its logits: the noise-free choice (taming's forward
    draws Gumbel noise even in eval mode, so its own codes are random; the argmax is their mode)."""

    def __init__(self, in_channels: int, n_embed: int, embed_dim: int):
        super().__init__()
        self.proj = Conv2d(in_channels, n_embed, 1)
        self.embed = nn.Embedding(n_embed, embed_dim)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.proj(z)  # (B, n_embed, h, w)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        return self.logits(z).argmax(1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return self.embed(codes).permute(0, 3, 1, 2)
