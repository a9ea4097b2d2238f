"""DALL·E's discrete VAE (Ramesh et al. 2021, appendix A): bottleneck-resblock encoder/decoder, plain PyTorch.

Encoder: 7x7 stem -> ``n_groups`` groups of ``n_blk_per_group`` bottleneck resblocks (widths n_hid * 1, 2, 4, 8, ...)
with 2x max-pooling between groups -> ReLU + 1x1 conv to ``vocab_size`` logits per grid cell.
Decoder mirrors it: 1x1 conv from the (relaxed) one-hot codes -> groups with nearest-neighbour 2x upsampling ->
ReLU + 1x1 conv to 2x3 channels (logit-Laplace mu and ln b per pixel channel; 3 for the MSE ablation).
Each resblock's residual branch is multiplied by ``post_gain = 1 / n_layers**2`` (n_layers = total resblocks), the
paper's way of keeping the identity path dominant at initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.errors import ConfigError
from zoo.nn.image_tokenizer import ImageTokenizer, no_autocast
from zoo.nn.likelihoods import unmap_pixels


@dataclass(frozen=True)
class DVAEConfig:
    resolution: int = 32
    vocab_size: int = 512
    n_hid: int = 48
    n_groups: int = 3  # downsample factor = 2 ** (n_groups - 1)
    n_blk_per_group: int = 1
    n_init: int = 128  # decoder width right after the 1x1 input conv (paper: 128)
    out_channels: int = 6  # 6 = logit-Laplace (mu, ln b); 3 = MSE ablation
    width_mults: tuple[int, ...] = field(default=(1, 2, 4, 8))
    # Initial scale of the code logits: the final 1x1 conv's weights are multiplied by this after the
    # variance-preserving init. With gain 1 the logits spread ~0.5 nats, far below the Gumbel noise (std 1.28), so
    # the relaxed samples carry almost nothing about the image until the encoder has grown its logits ~10x
    # (see scripts/tokenizer_quality.py). The paper does not say; 1.0 is the released model's plain init.
    logit_init_gain: float = 1.0

    def __post_init__(self):
        # n_groups beyond width_mults built fewer groups with a max-pool after the last one (and a post_gain for
        # resblocks that did not exist); 0 failed with a ZeroDivisionError
        if not 1 <= self.n_groups <= len(self.width_mults):
            raise ConfigError(
                f"dVAE n_groups={self.n_groups}: needs 1..{len(self.width_mults)}, one width multiplier per group "
                f"(width_mults={list(self.width_mults)}; fix: model.net.n_groups, or a longer model.net.width_mults)"
            )
        if self.n_blk_per_group < 1:
            raise ConfigError(f"dVAE n_blk_per_group={self.n_blk_per_group}: needs at least 1 resblock per group")
        # each resblock's bottleneck is its width // 4, n_hid the narrowest: n_hid 2 or 3 (or n_init 0) built a conv
        # with no channels, whose init was a bare "ZeroDivisionError: 0.0 cannot be raised to a negative power"
        if self.n_hid < 4 or self.n_init < 1:
            raise ConfigError(
                f"dVAE n_hid={self.n_hid}, n_init={self.n_init}: needs n_hid >= 4 (its resblocks' bottleneck is "
                f"n_hid // 4 wide) and n_init >= 1 (paper: 256 and 128; fix: model.net.n_hid=16, model.net.n_init=32)"
            )
        if self.out_channels not in (3, 6):
            raise ConfigError(f"dVAE out_channels={self.out_channels}: 6 (logit-Laplace mu, ln b) or 3 (MSE)")
        # 0 was a ZeroDivisionError while building; 1 trained a tokenizer whose every image is the same code
        if self.vocab_size < 2:
            raise ConfigError(
                f"dVAE vocab_size={self.vocab_size}: needs at least 2 codes (paper: 8192; fix: model.net.vocab_size=512)"
            )

    @property
    def n_layers(self) -> int:
        return self.n_groups * self.n_blk_per_group

    @property
    def downsample_factor(self) -> int:
        return 2 ** (self.n_groups - 1)


PRESETS: dict[str, DVAEConfig] = {
    # for tests: 32 px -> 16x16 grid of 64 codes, 2 groups x 1 block; trains in seconds
    "tiny": DVAEConfig(
        resolution=32, vocab_size=64, n_hid=16, n_groups=2, n_blk_per_group=1, n_init=32, logit_init_gain=8.0
    ),
    # the shapes world: 32 px -> 8x8 grid of 512 codes (3 groups -> 2 max-pools, downsample 4), widths 64/128/256.
    # logit_init_gain 8: code logits start ~4 nats apart, above the Gumbel noise, so the relaxed codes carry
    # information from step 0 (measured: usage 10-15% vs 2-4% with gain 1 after 200-300 steps).
    "shapes": DVAEConfig(
        resolution=32, vocab_size=512, n_hid=64, n_groups=3, n_blk_per_group=1, n_init=128, logit_init_gain=8.0
    ),
    # the paper: 256 px -> 32x32 grid of 8192 codes, widths 256..2048, 4 groups x 2 blocks (post_gain 1/64),
    # the released model's plain variance-preserving init
    "paper": DVAEConfig(resolution=256, vocab_size=8192, n_hid=256, n_groups=4, n_blk_per_group=2, n_init=128),
}


class _ResBlock(nn.Module):
    """id_path(x) + post_gain * res_path(x); res_path: four ReLU-conv pairs n_in -> n_out/4 -> n_out/4 -> n_out/4
    -> n_out with the subclass's ``kernels`` (odd sizes, "same" padding)."""

    kernels: tuple[int, int, int, int]

    def __init__(self, n_in: int, n_out: int, post_gain: float):
        super().__init__()
        hid = n_out // 4
        self.id_path = nn.Conv2d(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        widths = (n_in, hid, hid, hid, n_out)
        layers = []
        for i, k in enumerate(self.kernels):  # ReLUs after the first act in place on a conv output only they read
            layers += [nn.ReLU(inplace=i > 0), nn.Conv2d(widths[i], widths[i + 1], k, padding=k // 2)]
        self.res_path = nn.Sequential(*layers)
        self.post_gain = post_gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.add(self.id_path(x), self.res_path(x), alpha=self.post_gain)  # one fused pass


class EncoderBlock(_ResBlock):
    kernels = (3, 3, 3, 1)


class DecoderBlock(_ResBlock):
    kernels = (1, 3, 3, 3)


class DVAE(nn.Module, ImageTokenizer):
    """Encoder/decoder pair; ``encode``/``decode`` are the ``ImageTokenizer`` view (argmax codes, no noise)."""

    def __init__(self, cfg: DVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.codebook_size = cfg.vocab_size
        self.downsample_factor = cfg.downsample_factor
        self.resolution = cfg.resolution
        self.post_gain = 1.0 / cfg.n_layers**2
        widths = [cfg.n_hid * m for m in cfg.width_mults[: cfg.n_groups]]

        enc: list[nn.Module] = [nn.Conv2d(3, widths[0], 7, padding=3)]
        n_in = widths[0]
        for g, w in enumerate(widths):
            for _ in range(cfg.n_blk_per_group):
                enc.append(EncoderBlock(n_in, w, self.post_gain))
                n_in = w
            if g < cfg.n_groups - 1:
                enc.append(nn.MaxPool2d(2))
        enc += [nn.ReLU(), nn.Conv2d(n_in, cfg.vocab_size, 1)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [nn.Conv2d(cfg.vocab_size, cfg.n_init, 1)]
        n_in = cfg.n_init
        for g, w in enumerate(reversed(widths)):
            for _ in range(cfg.n_blk_per_group):
                dec.append(DecoderBlock(n_in, w, self.post_gain))
                n_in = w
            if g < cfg.n_groups - 1:
                dec.append(nn.Upsample(scale_factor=2, mode="nearest"))
        dec += [nn.ReLU(), nn.Conv2d(n_in, cfg.out_channels, 1)]
        self.decoder = nn.Sequential(*dec)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The released DALL·E dVAE's init: conv weights N(0, 1 / (n_in * k * k)), zero biases (variance
        preserving, unlike PyTorch's default which shrinks activations ~sqrt(3)x per layer); then the logit gain."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=(m.in_channels * m.kernel_size[0] * m.kernel_size[1]) ** -0.5)
                nn.init.zeros_(m.bias)
        self.encoder[-1].weight.mul_(self.cfg.logit_init_gain)

    # -- training-time pieces ----------------------------------------------------------------------------------
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """images in [-1, 1] (B, 3, H, W) -> code logits (B, K, H/f, W/f)."""
        return self.encoder(images.contiguous(memory_format=torch.channels_last))

    def decode_soft(self, z: torch.Tensor) -> torch.Tensor:
        """(relaxed) one-hot codes (B, K, h, w) -> decoder output (B, out_channels, H, W)."""
        return self.decoder(z.contiguous(memory_format=torch.channels_last))

    def output_to_image(self, out: torch.Tensor) -> torch.Tensor:
        """Decoder output -> image in [-1, 1]: sigmoid(mu), the logit-Laplace's median (not its mean; the released
        model's reconstruction), mapped back from (eps, 1-eps)."""
        x01 = (
            unmap_pixels(torch.sigmoid(out[:, :3].float()))
            if self.cfg.out_channels == 6
            else torch.sigmoid(out.float())
        )
        return x01 * 2 - 1

    # -- ImageTokenizer ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.check_images(images)
        with no_autocast(images):
            return self.logits(images.to(self.encoder[0].weight.dtype)).argmax(1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        self.check_codes(codes)
        # any integer dtype, as the other tokenizers take (one_hot alone refuses all but int64)
        z = F.one_hot(codes.long(), self.codebook_size).permute(0, 3, 1, 2).to(next(self.parameters()).dtype)
        return self.output_to_image(self.decode_soft(z))
