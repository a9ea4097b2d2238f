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

    def check_images(self, images: torch.Tensor) -> None:
        """A ValueError naming the problem and the fix unless ``images`` is a float batch (B, 3, H, W) whose sides the
        downsampling divides. Why: the strided encoders took what they were given. A side of 4f + 1 px was cropped
        to a 4 x 4 grid that decodes to 4f px; a uint8 image (what ``torchvision.io.read_image`` returns) was read
        as pixel values 0..255 and gave other codes; an unbatched (3, H, W) image was a conv rank error."""
        f = int(self.downsample_factor)
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(
                f"{type(self).__name__}.encode takes images (B, 3, H, W) in [-1, 1], got {shape} (fix: one image "
                f"(3, H, W) as images[None]; RGB with 3 channels, e.g. image.convert('RGB') in PIL)"
            )
        if not images.is_floating_point():
            raise ValueError(
                f"{type(self).__name__}.encode takes float images in [-1, 1], got {images.dtype} (fix: for 8-bit "
                f"pixels, images.float() / 127.5 - 1)"
            )
        h, w = images.shape[-2:]
        if h % f or w % f:
            raise ValueError(
                f"{type(self).__name__}.encode: images of {h}x{w} px, but the encoder downsamples by {f}, so each "
                f"side must be a multiple of {f} (fix: resize or crop to {max(f, h // f * f)}x{max(f, w // f * f)}, "
                f"e.g. the tokenizer's {self.resolution} px)"
            )

    def check_codes(self, codes: torch.Tensor) -> None:
        """A ValueError naming the problem and the fix unless ``codes`` is an integer grid batch (B, h, w) of codes in
        [0, codebook_size). Out-of-range codes were 'IndexError: index out of range in self' (VQ-VAE / VQGAN) or
        a one_hot error (dVAE); 2-D codes a permute error. The range is not checked while an exporter traces (a
        data-dependent branch; the exported graphs document their input)."""
        name = f"{type(self).__name__}.decode"
        if not isinstance(codes, torch.Tensor) or codes.dim() != 3:
            shape = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise ValueError(f"{name} takes codes (B, h, w), got {shape} (fix: one grid (h, w) as codes[None])")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"{name} takes integer codes, got {codes.dtype} (fix: codes.long())")
        if codes.numel() and not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            lo, hi = (int(v) for v in codes.aminmax())
            if lo < 0 or hi >= self.codebook_size:
                raise ValueError(
                    f"{name}: codes from {lo} to {hi}, but the codebook holds {self.codebook_size} codes (0 to "
                    f"{self.codebook_size - 1}) (fix: codes of this tokenizer; a transformer whose image vocabulary "
                    f"is larger than the codebook must not draw the rest, as DALL·E's sampler does not)"
                )

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
