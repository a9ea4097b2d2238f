"""unCLIP's diffusion upsamplers (Ramesh et al., 2022): a super-resolution ADM U-Net (plain PyTorch).

PAPER_FACTS "unCLIP": two ×4 upsamplers, 64 -> 256 (700M, Gaussian-blur corruption of the conditioning image) and
256 -> 1024 (300M, BSR degradation); both trained on random crops a quarter of the target size, with no attention
layers and no text conditioning; sampled with 27 and 15 DDIM steps.

The network is ``zoo.nn.unet.SuperResUNet`` (the low-resolution image bilinearly upsampled to x_t's size and
concatenated to its channels: 3 + 3 = 6 input channels) with ``attention_resolutions=()``, no middle attention and
no context: every layer is a convolution, a pointwise op or a GroupNorm, so the network trained on crops runs on the
full image (only GroupNorm's statistics see the whole input). No class or text embedding: the timestep is the only
global input.

``UpsamplerConfig`` also carries what defines a stage besides its layout: ``image_size`` (the TARGET side),
``scale`` (×4), ``corruption`` (``blur`` | ``bsr``, see ``zoo.data.degradations``) and ``crop_fraction`` (training
crops are ``image_size // crop_fraction`` pixels on a side: the paper's "one-fourth the target size", read as a
quarter of the side, i.e. 64 px crops for the 256 px model, 16 px of conditioning).

Presets (parameter counts measured on the meta device, ``count_upsampler_params``; tests/models/test_upsampler.py
re-measures them):

- ``tiny``: tests. 8 -> 32 px, blur, width 8, two levels: 44.4K parameters.
- ``shapes_32_128``: the shapes world's first stage (blur), 32 -> 128 px, width 32, mult (1, 2, 2): 1.64M.
- ``shapes_128_512``: the shapes world's second stage (BSR), 128 -> 512 px, width 32, mult (1, 1, 2, 2): 1.83M.
- ``paper_64_256``: 64 -> 256, blur. The layout is our recollection of the unCLIP paper's hyper-parameter table
  (NOT in PAPER_FACTS, verify): 320 channels, 3 ResBlocks per level, channel multipliers (1, 2, 3, 4), dropout 0.1,
  BigGAN resampling blocks. Measured 729.7M (729,702,083) against the paper's 700M (288 channels would give 591M, 352 give 883M).
- ``paper_256_1024``: 256 -> 1024, BSR: 192 channels, 2 ResBlocks per level, (1, 1, 2, 2, 4, 4) (the same source,
  verify); measured 282.1M (282,059,139) against the paper's 300M (224 channels would give 384M).
  The paper's table (from memory) also gives this stage a linear noise schedule: ``model.schedule=linear``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from zoo.models.presets import check_unet_sizes
from zoo.nn.unet import SuperResUNet, UNetConfig

__all__ = [
    "UpsamplerConfig",
    "UPSAMPLER_PRESETS",
    "PRESETS",
    "Upsampler",
    "count_upsampler_params",
    "UPSAMPLER_PAPER_PARAMS",
    "DEFAULT_SAMPLE_STEPS",
    "CORRUPTIONS",
]

CORRUPTIONS = ("blur", "bsr")  # zoo.data.degradations.CORRUPTIONS (kept here so model.py imports torch only)
# unCLIP samples the first stage (blur-trained, 64 -> 256) with 27 DDIM steps and the second (BSR, 256 -> 1024)
# with 15 (PAPER_FACTS "unCLIP"): the default of each stage follows its corruption.
DEFAULT_SAMPLE_STEPS = {"blur": 27, "bsr": 15}


@dataclass(frozen=True)
class UpsamplerConfig:
    """A ×``scale`` diffusion upsampler: the stage (target size, scale, corruption, crops) and its U-Net."""

    image_size: int = 128  # TARGET side (the low-resolution input is image_size // scale)
    scale: int = 4
    corruption: str = "blur"  # conditioning corruption in training: blur (first stage) | bsr (second stage)
    crop_fraction: int = 4  # training crops: image_size // crop_fraction pixels on a side
    in_channels: int = 3  # x_t (and the low-resolution image: the U-Net's input conv takes 2x this)
    width: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    dropout: float = 0.0
    resblock_updown: bool = False
    learn_sigma: bool = False  # True: learned-range variance + hybrid loss (Improved DDPM); False: eps, mse
    max_groups: int = 32

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        check_unet_sizes(self, "upsampler")
        if self.corruption not in CORRUPTIONS:
            raise ValueError(f"corruption={self.corruption!r}; expected one of {CORRUPTIONS}")
        if self.scale < 1 or self.crop_fraction < 1:
            raise ValueError(f"scale and crop_fraction must be >= 1, got {self.scale}, {self.crop_fraction}")
        d = self.divisor
        for name, side in (("image_size", self.image_size), ("training crop", self.train_crop)):
            if side < 1 or side % self.scale or side % d:
                raise ValueError(
                    f"{name} {side} must be a positive multiple of the scale ({self.scale}) and of the U-Net's "
                    f"divisor {d} (2 ** (levels - 1)) (image_size={self.image_size}, crop_fraction="
                    f"{self.crop_fraction})"
                )

    @property
    def divisor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def low_res_size(self) -> int:
        return self.image_size // self.scale

    @property
    def train_crop(self) -> int:
        """Side of the high-resolution training crops (its conditioning crop is train_crop // scale)."""
        return self.image_size // self.crop_fraction

    @property
    def default_sample_steps(self) -> int:
        return DEFAULT_SAMPLE_STEPS[self.corruption]

    def unet_config(self) -> UNetConfig:
        """The SuperResUNet's config: no attention anywhere, no context, no class embedding."""
        return UNetConfig(
            in_channels=self.in_channels,
            out_channels=self.in_channels,
            width=self.width,
            channel_mult=self.channel_mult,
            num_res_blocks=self.num_res_blocks,
            attention_resolutions=(),
            image_size=self.image_size,
            dropout=self.dropout,
            learn_sigma=self.learn_sigma,
            resblock_updown=self.resblock_updown,
            context_dim=None,
            max_groups=self.max_groups,
            attention_in_middle=False,
        )

    def to_dict(self) -> dict:
        return asdict(self)


UPSAMPLER_PRESETS: dict[str, UpsamplerConfig] = {
    "tiny": UpsamplerConfig(
        image_size=32, scale=4, corruption="blur", width=8, channel_mult=(1, 2), num_res_blocks=1, max_groups=8
    ),
    "shapes_32_128": UpsamplerConfig(
        image_size=128, scale=4, corruption="blur", width=32, channel_mult=(1, 2, 2), num_res_blocks=2
    ),
    "shapes_128_512": UpsamplerConfig(
        image_size=512, scale=4, corruption="bsr", width=32, channel_mult=(1, 1, 2, 2), num_res_blocks=2
    ),
    "paper_64_256": UpsamplerConfig(
        image_size=256,
        scale=4,
        corruption="blur",
        width=320,
        channel_mult=(1, 2, 3, 4),
        num_res_blocks=3,
        dropout=0.1,
        resblock_updown=True,
    ),
    "paper_256_1024": UpsamplerConfig(
        image_size=1024,
        scale=4,
        corruption="bsr",
        width=192,
        channel_mult=(1, 1, 2, 2, 4, 4),
        num_res_blocks=2,
        resblock_updown=True,
    ),
}
PRESETS = UPSAMPLER_PRESETS  # the name zoo.models.presets.resolve_preset callers use

# Measured with count_upsampler_params on the meta device (paper: 700M and 300M).
UPSAMPLER_PAPER_PARAMS = {"paper_64_256": 729_702_083, "paper_256_1024": 282_059_139}


class Upsampler(nn.Module):
    """``forward(x_t, t, low_res) -> (B, C or 2C, H, W)``: x_t (B, C, H, W) at the target size (or a crop of it),
    low_res (B, C, H / scale, W / scale) its conditioning image, t (B,) original timesteps."""

    def __init__(self, cfg: UpsamplerConfig):
        super().__init__()
        self.cfg = cfg
        self.unet = SuperResUNet(cfg.unet_config(), low_res_channels=cfg.in_channels)

    @property
    def input_channels(self) -> int:
        """Channels of the U-Net's first convolution: x_t's plus the upsampled low-resolution image's."""
        return self.unet.input_blocks[0][0].in_channels

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, low_res: torch.Tensor) -> torch.Tensor:
        s = self.cfg.scale
        if low_res.shape[-2] * s != x_t.shape[-2] or low_res.shape[-1] * s != x_t.shape[-1]:
            raise ValueError(f"low_res {tuple(low_res.shape[-2:])} x {s} != x_t {tuple(x_t.shape[-2:])}")
        return self.unet(x_t, t, low_res=low_res)


def count_upsampler_params(cfg: UpsamplerConfig | str) -> int:
    """Parameters of an upsampler (a config or a preset name), built on the meta device (no memory)."""
    if isinstance(cfg, str):
        cfg = UPSAMPLER_PRESETS[cfg]
    with torch.device("meta"):
        net = Upsampler(cfg)
    return sum(p.numel() for p in net.parameters())
