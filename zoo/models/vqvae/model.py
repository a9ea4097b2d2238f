"""VQ-VAE image tokenizer: conv encoder -> VectorQuantizer -> conv decoder (plain PyTorch).

Same ``ImageTokenizer`` interface and presets as the dVAE, so the DALL·E transformer and eval can swap them.
Downsampling is by strided 4x4 convolutions, upsampling by nearest + 3x3 conv; resblocks are pre-activation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from zoo.nn.image_tokenizer import ImageTokenizer, no_autocast
from zoo.nn.quantizers import VectorQuantizer


@dataclass(frozen=True)
class VQVAEConfig:
    resolution: int = 32
    codebook_size: int = 512
    dim: int = 64  # code vector size
    channels: int = 64
    n_down: int = 2  # downsample factor = 2 ** n_down
    n_res: int = 2  # resblocks at the lowest resolution (encoder and decoder)
    beta: float = 0.25
    ema: bool = True
    decay: float = 0.99
    l2_normalize: bool = False
    kmeans_init: bool = False
    restart_dead_codes: bool = True
    dead_threshold: float = 0.03
    restart_after: Optional[int] = None  # steps unused before a code is re-seeded (None: ~349 at decay 0.99)

    def __post_init__(self):
        from zoo.errors import ConfigError

        # dim / channels 0 was a ZeroDivisionError or a conv error while building; n_down -1 built a network whose
        # grid_size was a float (64.0) with a 0.5 downsample factor
        if self.dim < 1 or self.channels < 1 or self.n_down < 0 or self.n_res < 0:
            raise ConfigError(
                f"VQ-VAE dim={self.dim}, channels={self.channels}, n_down={self.n_down}, n_res={self.n_res}: needs dim "
                f"and channels >= 1, n_down and n_res >= 0 (fix: model.net.<field>, e.g. the shapes preset's 64, 96, 2, 2)"
            )
        # 0 was an IndexError in the first step's nearest-code search; 1 trained a tokenizer whose every image is the
        # same code
        if self.codebook_size < 2:
            raise ConfigError(
                f"VQ-VAE codebook_size={self.codebook_size}: needs at least 2 codes (paper: 8192; fix: "
                f"model.net.codebook_size=512)"
            )

    @property
    def downsample_factor(self) -> int:
        return 2**self.n_down


PRESETS: dict[str, VQVAEConfig] = {
    "tiny": VQVAEConfig(codebook_size=64, dim=16, channels=16, n_down=1, n_res=1),
    "shapes": VQVAEConfig(codebook_size=512, dim=64, channels=96, n_down=2, n_res=2),
    # 256 px -> 32x32 grid of 8192 codes
    "paper": VQVAEConfig(resolution=256, codebook_size=8192, dim=256, channels=256, n_down=3, n_res=4),
}


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(nn.GELU(), nn.Conv2d(ch, ch, 3, padding=1), nn.GELU(), nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class VQVAE(nn.Module, ImageTokenizer):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.codebook_size = cfg.codebook_size
        self.downsample_factor = cfg.downsample_factor
        self.resolution = cfg.resolution
        ch = cfg.channels
        enc: list[nn.Module] = [nn.Conv2d(3, ch, 3, padding=1)]
        for _ in range(cfg.n_down):
            enc += [ResBlock(ch), nn.Conv2d(ch, ch, 4, stride=2, padding=1)]
        enc += [ResBlock(ch) for _ in range(cfg.n_res)] + [nn.GELU(), nn.Conv2d(ch, cfg.dim, 1)]
        self.encoder = nn.Sequential(*enc)
        self.quantizer = VectorQuantizer(
            cfg.codebook_size,
            cfg.dim,
            beta=cfg.beta,
            ema=cfg.ema,
            decay=cfg.decay,
            l2_normalize=cfg.l2_normalize,
            kmeans_init=cfg.kmeans_init,
            restart_dead_codes=cfg.restart_dead_codes,
            dead_threshold=cfg.dead_threshold,
            restart_after=cfg.restart_after,
        )
        dec: list[nn.Module] = [nn.Conv2d(cfg.dim, ch, 3, padding=1)] + [ResBlock(ch) for _ in range(cfg.n_res)]
        for _ in range(cfg.n_down):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1), ResBlock(ch)]
        dec += [nn.GELU(), nn.Conv2d(ch, 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        z_e = self.encoder(images.contiguous(memory_format=torch.channels_last))
        q = self.quantizer(z_e)
        q["recon"] = self.decoder(q["z_q"].contiguous(memory_format=torch.channels_last))
        q["z_e"] = z_e
        return q

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.check_images(images)
        with no_autocast(images):
            x = images.to(self.encoder[0].weight.dtype).contiguous(memory_format=torch.channels_last)
            z = self.encoder(x).float()
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        if self.cfg.l2_normalize:
            flat = torch.nn.functional.normalize(flat, dim=-1)
        return self.quantizer.nearest(flat).view(b, h, w)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        self.check_codes(codes)
        z = self.quantizer.lookup(codes).to(next(self.decoder.parameters()).dtype)
        return self.decoder(z.contiguous(memory_format=torch.channels_last)).float().clamp(-1, 1)
