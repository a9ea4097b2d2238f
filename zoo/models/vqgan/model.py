"""taming-transformers' VQGAN / Gumbel-VQ as a zoo ``ImageTokenizer`` (published weights; plain PyTorch).

The network is ``zoo.nn.taming_vq`` (taming's parameter names and shapes); this module adds the config dataclass
(the fields of taming's ``model.params`` / ``ddconfig``, under the same names), the presets and the tokenizer
interface. ``zoo-convert kind=taming_vq|taming_gumbel`` fills it from a taming checkpoint; it is not trained here.

encode: images -> ``encoder`` -> ``quant_conv`` -> codes (VQ: nearest ``quantize.embedding`` entry; Gumbel: argmax of
``quantize.proj`` logits). decode: codes -> ``quantize`` lookup -> ``post_quant_conv`` -> ``decoder`` -> images.

Images: taming's models take and return pixels in [-1, 1], which is also the zoo's convention, so nothing is
rescaled: ``to_taming_pixels`` / ``from_taming_pixels`` below are the one place that says so (the output is clamped
to [-1, 1], as taming's own image saving does).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn

from zoo.errors import ConfigError
from zoo.models.presets import check_sizes
from zoo.nn.image_tokenizer import ImageTokenizer, no_autocast
from zoo.nn.taming_vq import NORM_GROUPS, GumbelCodebook, NearestCodebook, TamingDecoder, TamingEncoder


@dataclass(frozen=True)
class TamingVQGANConfig:
    """taming's config values, same names (``embed_dim``, ``n_embed`` from ``model.params``; the rest from
    ``model.params.ddconfig``; ``in_channels`` / ``out_ch`` are 3 and ``double_z`` False for every VQGAN, so they
    are not fields). ``resolution`` is the image size the tokenizer is used at by default and the size
    ``attn_resolutions`` refers to: level i works at ``resolution // 2**i`` and has attention if that is listed."""

    resolution: int = 256
    ch: int = 128
    ch_mult: tuple[int, ...] = field(default=(1, 1, 2, 2, 4))
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = field(default=(16,))
    z_channels: int = 256
    embed_dim: int = 256
    n_embed: int = 1024
    quantizer: Literal["vq", "gumbel"] = "vq"  # VQModel (VectorQuantizer2) | GumbelVQ (GumbelQuantize)
    resamp_with_conv: bool = True  # False: average-pool down / plain nearest up (no published VQGAN uses it)

    def __post_init__(self):
        if self.quantizer not in ("vq", "gumbel"):
            raise ConfigError(f"quantizer={self.quantizer!r}; choose vq (VQModel) or gumbel (GumbelVQ)")
        if not self.ch_mult:
            raise ConfigError("ch_mult is empty (taming's ddconfig.ch_mult lists one multiplier per level)")
        # 0 widths or 0 resblocks per level failed in the first step's conv (taming's blocks need one per level to
        # change width); n_embed=1 trained a tokenizer whose every image is the same code (the dVAE and VQ-VAE refuse)
        check_sizes(self, ("resolution", "ch", "num_res_blocks", "z_channels", "embed_dim"), "taming VQGAN")
        check_sizes(self, ("n_embed",), "taming VQGAN", least=2)
        if min(self.ch_mult) < 1:
            raise ConfigError(
                f"model.net.ch_mult={list(self.ch_mult)}: every level's multiplier must be at least 1 "
                f"(fix: e.g. model.net.ch_mult=[1, 1, 2, 2, 4])"
            )
        bad = [self.ch * m for m in self.ch_mult if (self.ch * m) % NORM_GROUPS]
        if bad:
            raise ConfigError(
                f"widths {bad} (ch * ch_mult) are not multiples of {NORM_GROUPS}, the GroupNorm group count "
                f"taming's blocks use (fix: model.net.ch=<multiple of {NORM_GROUPS}>)"
            )
        if self.resolution % self.downsample_factor:
            raise ConfigError(
                f"resolution={self.resolution} is not a multiple of the downsample factor {self.downsample_factor}"
            )
        if self.quantizer == "gumbel" and self.z_channels != self.embed_dim:
            raise ConfigError(
                f"GumbelVQ's quantize.proj reads z_channels={self.z_channels} channels from quant_conv's "
                f"embed_dim={self.embed_dim}: taming's GumbelVQ only runs when they are equal"
            )

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def as_net(self) -> dict[str, Any]:
        """Plain values (lists, not tuples) for ``hyper_parameters["net"]``."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


PRESETS: dict[str, TamingVQGANConfig] = {
    # for tests: 16 px -> 4x4 grid of 32 codes; widths 32/64/64, attention at 8 px (level 1) and in the middle
    "tiny": TamingVQGANConfig(
        resolution=16,
        ch=32,
        ch_mult=(1, 2, 2),
        num_res_blocks=1,
        attn_resolutions=(8,),
        z_channels=8,
        embed_dim=8,
        n_embed=32,
    ),
    # "paper": taming-transformers' ImageNet VQGAN f16 with 1024 codes (configs/imagenet_vqgan.yaml; the published
    # vqgan_imagenet_f16_1024 checkpoint): 256 px -> 16x16 grid, ch 128, ch_mult 1,1,2,2,4, 2 resblocks per level,
    # attention at 16 px, z_channels = embed_dim = 256.
    "paper": TamingVQGANConfig(),
    # the published vqgan_imagenet_f16_16384: the same network with 16384 codes
    "imagenet_f16_16384": TamingVQGANConfig(n_embed=16384),
    # the published vqgan_gumbel_f8 (OpenImages, GumbelVQ): 256 px -> 32x32 grid of 8192 codes, ch_mult 1,1,2,4,
    # attention at 32 px
    "gumbel_f8": TamingVQGANConfig(ch_mult=(1, 1, 2, 4), attn_resolutions=(32,), n_embed=8192, quantizer="gumbel"),
}


def to_taming_pixels(images: torch.Tensor) -> torch.Tensor:
    """Our images ([-1, 1]) -> what taming's encoder reads ([-1, 1], from uint8 x as x / 127.5 - 1): the same."""
    return images


def from_taming_pixels(images: torch.Tensor) -> torch.Tensor:
    """taming's decoder output -> our images in [-1, 1] (clamped, as taming clamps before saving an image)."""
    return images.clamp(-1, 1)


class TamingVQGAN(nn.Module, ImageTokenizer):
    """The VQGAN with taming's state-dict layout: ``encoder``, ``quant_conv``, ``quantize``, ``post_quant_conv``,
    ``decoder`` (``loss.*``, the discriminator and LPIPS of training, is not part of it)."""

    def __init__(self, cfg: TamingVQGANConfig):
        super().__init__()
        self.cfg = cfg
        self.codebook_size = cfg.n_embed
        self.downsample_factor = cfg.downsample_factor
        self.resolution = cfg.resolution
        arch = dict(
            ch=cfg.ch,
            ch_mult=cfg.ch_mult,
            num_res_blocks=cfg.num_res_blocks,
            attn_resolutions=cfg.attn_resolutions,
            resolution=cfg.resolution,
            z_channels=cfg.z_channels,
            resamp_with_conv=cfg.resamp_with_conv,
        )
        self.encoder = TamingEncoder(**arch)
        self.decoder = TamingDecoder(**arch)
        if cfg.quantizer == "gumbel":
            self.quantize: nn.Module = GumbelCodebook(cfg.z_channels, cfg.n_embed, cfg.embed_dim)
        else:
            self.quantize = NearestCodebook(cfg.n_embed, cfg.embed_dim)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def prequant(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [-1, 1] -> what the quantizer reads (B, embed_dim, H/f, W/f)."""
        x = to_taming_pixels(images).to(self.quant_conv.weight.dtype)
        return self.quant_conv(self.encoder(x))

    def encode_with_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes (B, h, w), the quantizer's input (B, embed_dim, h, w)): for exporters that want both."""
        h = self.prequant(images)
        return self.quantize.codes(h), h

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.check_images(images)
        with no_autocast(images):
            return self.quantize.codes(self.prequant(images))

    def decode_features(self, z_q: torch.Tensor) -> torch.Tensor:
        """Quantized vectors (B, embed_dim, h, w) -> taming's raw decoder output (not clamped)."""
        return self.decoder(self.post_quant_conv(z_q))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        self.check_codes(codes)
        z_q = self.quantize.lookup(codes.long()).to(self.post_quant_conv.weight.dtype)
        return from_taming_pixels(self.decode_features(z_q).float())
