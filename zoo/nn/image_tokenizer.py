"""The interface every image tokenizer (dVAE, VQ-VAE, ...) offers to the rest of the zoo (torch only)."""

from __future__ import annotations

import abc

import torch


class ImageTokenizer(abc.ABC):
    """Image <-> grid of discrete codes. The DALL·E transformer and eval use only this."""

    codebook_size: int
    downsample_factor: int
    resolution: int

    @property
    def grid_size(self) -> tuple[int, int]:
        side = self.resolution // self.downsample_factor
        return side, side

    @abc.abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [-1, 1] -> LongTensor codes (B, H/f, W/f). Deterministic, and the same codes
        under autocast as without (``no_autocast``): tokens must not depend on the caller's precision."""

    @abc.abstractmethod
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """LongTensor codes (B, h, w) -> images (B, 3, h*f, w*f) in [-1, 1]."""


def no_autocast(images: torch.Tensor) -> torch.autocast:
    """A context in which autocast is off on ``images``' device: an encoder run inside a bf16-mixed training step
    (DALL·E's on-the-fly tokens) gave 1-2% other codes than the float32 ``zoo-tokenize`` / eval encode."""
    return torch.autocast(images.device.type, enabled=False)


def psnr_from_mse(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB for images in [0, 1]: 10 log10(1 / mse)."""
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def codebook_stats(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Code histogram (K,) -> (usage in % of the codebook, perplexity exp(H) of the code distribution)."""
    counts = counts.float()
    p = counts / counts.sum().clamp_min(1)
    nz = p[p > 0]
    return 100.0 * (counts > 0).float().mean(), torch.exp(-(nz * nz.log()).sum())


def find_image_tokenizer(module: torch.nn.Module) -> "ImageTokenizer":
    """The ``ImageTokenizer`` held by a LightningModule (a direct child), or the module itself."""
    if isinstance(module, ImageTokenizer):
        return module
    for child in module.children():
        if isinstance(child, ImageTokenizer):
            return child
    raise ValueError(f"{type(module).__name__} holds no ImageTokenizer (fix: pass a dvae/vqvae checkpoint)")
