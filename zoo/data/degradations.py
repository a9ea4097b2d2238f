"""Image degradations: Gaussian blur of radius r -- the DALL·E figure 9(a) ablation (``eval.ablations`` blurs real
images and samples, then FID/IS) -- and the two corruptions of unCLIP's upsamplers' conditioning images
(``BlurCorruption`` for 64 -> 256, ``BSRDegradation`` for 256 -> 1024; see "unCLIP upsampler corruptions" below).

Definition of the radius: r is the *standard deviation* of the Gaussian in pixels, as in Pillow's
``ImageFilter.GaussianBlur(radius)`` (whose ``radius`` is the standard deviation) -- the reading of the DALL·E /
DM-GAN figure (radii 0, 1, 2, 4, 8). It is applied at the images' own resolution (DALL·E: 256x256), before the
metric's resize to 299; to blur images of another resolution "as much" relative to the frame, scale r by res/256.

Implementation: ``torchvision.transforms.functional.gaussian_blur`` with ``sigma = r`` and an odd kernel of size
``2 * ceil(3 r) + 1`` (it covers +-3 standard deviations, >99.7% of the mass; Pillow's box-filter approximation
is of the same Gaussian). torchvision pads with edge *reflection*, Pillow extends the edge pixels: they differ
only within ~3r pixels of the border. ``r = 0`` is the identity (the same tensor is returned).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torchvision.io import decode_jpeg, encode_jpeg
from torchvision.transforms.functional import gaussian_blur as _tv_gaussian_blur

from zoo.errors import ConfigError


def blur_kernel_size(radius: float) -> int:
    """Odd kernel size ``2 * ceil(3 r) + 1`` used for standard deviation ``r`` (r = 0 -> 1, i.e. no blur)."""
    if radius < 0 or not math.isfinite(radius):
        raise ValueError(f"blur radius must be a finite number >= 0, got {radius}")
    return 2 * math.ceil(3 * radius) + 1


def gaussian_blur(images: torch.Tensor, radius: float) -> torch.Tensor:
    """Blur images (N, 3, H, W) or (3, H, W) in [-1, 1] with a Gaussian of standard deviation ``radius`` pixels."""
    k = blur_kernel_size(radius)
    if radius == 0:
        return images
    if not torch.is_tensor(images) or images.dim() not in (3, 4) or not images.is_floating_point():
        raise ValueError("gaussian_blur expects a float tensor (N, C, H, W) or (C, H, W) in [-1, 1]")
    h, w = images.shape[-2:]
    if k // 2 >= min(h, w):
        # torchvision's reflect padding needs the half-width below the image side.
        raise ValueError(
            f"blur radius {radius} needs a {k}x{k} kernel, too large for {h}x{w} images "
            f"(the half-width {k // 2} must be < {min(h, w)}; use a smaller radius or larger images)"
        )
    out = _tv_gaussian_blur(images, kernel_size=[k, k], sigma=[float(radius), float(radius)])
    return out.clamp_(-1.0, 1.0)  # a normalised kernel keeps values in range; clamp only float round-off


class GaussianBlur:
    """Callable ``images -> gaussian_blur(images, radius)`` (picklable; usable as ``extract(..., transform=)``)."""

    def __init__(self, radius: float):
        blur_kernel_size(radius)  # validate
        self.radius = float(radius)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(images, self.radius)

    def __repr__(self) -> str:
        return f"GaussianBlur(radius={self.radius:g}, kernel={blur_kernel_size(self.radius)}, sigma=radius)"


# =============================================================================================================
# unCLIP upsampler corruptions
# =============================================================================================================
# unCLIP (PAPER_FACTS "unCLIP"): the 64 -> 256 upsampler's conditioning image is corrupted with Gaussian blur, the
# 256 -> 1024 one with the BSR degradation (JPEG artefacts, sensor noise, bilinear/bicubic resizing, Gaussian
# noise). Both map a HIGH-resolution batch (B, C, H, W) in [-1, 1] to its LOW-resolution conditioning
# (B, C, H / scale, W / scale) in [-1, 1]. All randomness comes from an optional ``torch.Generator`` (None = torch's
# global generator): parameters are drawn on the generator's device and noise tensors are drawn there and moved to
# the images' device, so a seed gives the same corruption on any device. Each image of a batch gets its own
# parameters. ``return_params=True`` also returns one dict per image with what was drawn (tests, logging).
#
# Blur corruption (``BlurCorruption``): antialiased bicubic downsampling by ``scale``, then ``gaussian_blur`` (above)
# with sigma ~ U(sigma_range) in LOW-resolution pixels. Our reading: the corruption is the conditioning augmentation
# of Cascaded Diffusion Models (Ho et al., 2021; unCLIP cites Saharia et al. for it), which blurs the low-resolution
# input with sigma in [0.4, 0.6]; that is the default range. Not in PAPER_FACTS: tune ``sigma_range``.
#
# BSR degradation (``BSRDegradation``): a simplified BSRGAN (Zhang et al., 2021) / Real-ESRGAN (Wang et al., 2021)
# first-order pipeline, one pass:
#   the five operations below, each applied with its own probability, and the resize to the target size (``final``,
#   always applied), in a random order (torch.randperm), with BSRGAN's one constraint: the intermediate ``resize``
#   comes before ``final`` (BSRGAN swaps its "downsample2" / "downsample3" to keep the one to the target last of
#   the two). So noise, blur and JPEG act at the OUTPUT resolution too, as in BSRGAN: were every operation applied
#   before a final downsampling by >= 2x, its antialiasing would average the noise away (a std of 20 grey levels
#   reached the conditioning as 3-5) and smooth out the JPEG blocks.
#     blur     Gaussian kernel, isotropic (sigma_x = sigma_y) or, with ``anisotropic_prob``, anisotropic with
#              sigma_x, sigma_y ~ U(blur_sigma_range) and a random rotation; sigma in pixels of the image as it is
#              at that point; kernel 2 * ceil(3 sigma_max) + 1 capped at ``max_kernel_size`` and by the image side
#              (reflect padding); normalised, so it never leaves [-1, 1].
#     resize   down-resize to a factor U(resize_range) of the current side (bilinear / bicubic / area, antialiased
#              except area, which is a box filter anyway).
#     final    resize to exactly (H / scale, W / scale) with a random mode among ``resize_modes`` (``final_mode``).
#     gaussian additive white noise, std ~ U(gaussian_noise_range) grey levels of 255 (BSRGAN: 2-25), per channel,
#              at the resolution of that point of the order.
#     sensor   shot (Poisson) noise: y = Poisson(u * peak) / peak on u = (x + 1) / 2 in [0, 1] with
#              log10(peak) ~ U(sensor_log10_peak_range) (BSRGAN's 10 ** U(2, 4)); its variance is u / peak (signal-
#              dependent, as a camera sensor's). BSRGAN's full camera-pipeline noise model is NOT reproduced.
#     jpeg     torchvision.io encode_jpeg/decode_jpeg of the 8-bit image at quality ~ U{jpeg_quality_range} (30-95,
#              as BSRGAN), on the CPU.
#   then, with ``final_jpeg_prob`` (1: BSRGAN's "final JPEG compression noise", always applied), one more JPEG of
#   the output at its own quality ~ U{jpeg_quality_range}, and a clamp.
# Left out (simplifications): BSRGAN's second blur, its upsampling resizes, Real-ESRGAN's second-order pass, sinc
# filters and grey-scale noise. Values are clamped to [-1, 1] after every operation.

CORRUPTIONS = ("blur", "bsr")
RESIZE_MODES = ("bilinear", "bicubic", "area")
BSR_OPERATIONS = ("blur", "resize", "gaussian", "sensor", "jpeg")  # the optional ones; "final" is always applied
BSR_STEPS = BSR_OPERATIONS + ("final",)  # what ``order`` shuffles


def _check_batch(images: torch.Tensor, what: str) -> None:
    if not torch.is_tensor(images) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError(
            f"{what} expects a float tensor (N, C, H, W) in [-1, 1], got "
            f"{type(images).__name__}{tuple(images.shape) if torch.is_tensor(images) else ''}"
        )


def _gen_device(generator: Optional[torch.Generator]) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _uniform(lo: float, hi: float, generator: Optional[torch.Generator]) -> float:
    u = torch.rand((), generator=generator, device=_gen_device(generator)).item()
    return float(lo) + (float(hi) - float(lo)) * u


def _bernoulli(p: float, generator: Optional[torch.Generator]) -> bool:
    return p >= 1.0 or (p > 0.0 and torch.rand((), generator=generator, device=_gen_device(generator)).item() < p)


def _randint(lo: int, hi: int, generator: Optional[torch.Generator]) -> int:
    """Uniform integer in [lo, hi] (both included)."""
    return int(torch.randint(int(lo), int(hi) + 1, (), generator=generator, device=_gen_device(generator)).item())


def _choice(options: Sequence[str], generator: Optional[torch.Generator]) -> str:
    return options[_randint(0, len(options) - 1, generator)]


def _check_range(
    name: str, r: Sequence[float], lo: float = 0.0, hi: float = math.inf, whole: bool = False, fix: str = ""
) -> tuple[float, float]:
    """``r`` as (low, high): two finite numbers (whole ones with ``whole``: a YAML 30.0 is taken as 30) with
    lo <= low <= high <= hi, else a ConfigError naming ``name`` and the ``fix``."""
    kind = "whole numbers" if whole else "finite numbers"
    bad = ConfigError(
        f"{name} must be (low, high) with {lo} <= low <= high <= {hi}, two {kind}, got {r!r}"
        + (f" (fix: {fix})" if fix else "")
    )
    if isinstance(r, (str, bytes)) or not isinstance(r, Sequence) and not _is_list_config(r):
        raise bad  # a scalar (``blur_sigma_range=0.5``) or a string, not a pair
    values = list(r)
    # true is a number to Python (1.0), inf passed "<= inf" and failed at the first step (blur) or ran (noise of
    # infinite std: every pixel -1 or 1); a fractional JPEG quality was drawn as int(low) without a word
    if len(values) != 2 or not all(_is_number(v) and math.isfinite(v) for v in values):
        raise bad
    if whole and not all(float(v).is_integer() for v in values):
        raise bad
    low, high = (int(v) for v in values) if whole else (float(v) for v in values)
    if not (lo <= low <= high <= hi):
        raise bad
    return low, high


def _is_number(v: Any) -> bool:
    """A real number that is not a bool (a YAML ``true`` is 1 to Python) nor a string."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_scale(scale: Any) -> int:
    if not (_is_number(scale) and float(scale).is_integer() and scale >= 1):
        # int() took 2.5 for 2 and "4" for 4
        raise ConfigError(
            f"scale must be a whole number >= 1, got {scale!r} (fix: a whole factor, e.g. 4 as unCLIP's upsamplers)"
        )
    return int(scale)


def _is_list_config(v: Any) -> bool:
    """An OmegaConf ListConfig (what Hydra passes for a YAML list), without importing omegaconf here."""
    return type(v).__name__ == "ListConfig"


def resize(images: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """(N, C, H, W) -> (N, C, *size): ``bilinear`` / ``bicubic`` antialiased (low-pass first when shrinking, as PIL),
    ``area`` (box average; for non-integer factors PyTorch's adaptive average); bicubic overshoot clamped to
    [-1, 1]."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r}; expected one of {RESIZE_MODES}")
    size = (int(size[0]), int(size[1]))
    if tuple(images.shape[-2:]) == size:
        return images
    if mode == "area":
        out = F.interpolate(images, size=size, mode="area")
    else:
        out = F.interpolate(images, size=size, mode=mode, align_corners=False, antialias=True)
    return out.clamp(-1.0, 1.0)


def downsample(images: torch.Tensor, scale: int, mode: str = "bicubic") -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H / scale, W / scale); H and W must be multiples of ``scale``."""
    h, w = images.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"image {h}x{w} is not divisible by the scale {scale}")
    return resize(images, (h // scale, w // scale), mode)


def gaussian_kernel2d(
    sigma_x: float, sigma_y: Optional[float] = None, theta: float = 0.0, size: Optional[int] = None
) -> torch.Tensor:
    """A normalised (size, size) float64 Gaussian kernel with standard deviations ``sigma_x`` / ``sigma_y`` along
    the axes rotated by ``theta`` radians (anisotropic when they differ; isotropic when sigma_y is None).
    Default size ``blur_kernel_size(max sigma)``."""
    sigma_y = sigma_x if sigma_y is None else sigma_y
    if min(sigma_x, sigma_y) <= 0:
        raise ValueError(f"kernel standard deviations must be > 0, got {sigma_x}, {sigma_y}")
    size = blur_kernel_size(max(sigma_x, sigma_y)) if size is None else int(size)
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be odd and >= 1, got {size}")
    c, s = math.cos(theta), math.sin(theta)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    cov = rot @ torch.diag(torch.tensor([sigma_x**2, sigma_y**2], dtype=torch.float64)) @ rot.T
    r = torch.arange(size, dtype=torch.float64) - size // 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    pos = torch.stack([xx, yy], -1)  # (k, k, 2): (x, y)
    quad = torch.einsum("...i,ij,...j->...", pos, torch.linalg.inv(cov), pos)
    k = torch.exp(-0.5 * quad)
    return k / k.sum()


def filter2d(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve every channel of (N, C, H, W) with a (k, k) kernel, reflect padding (half-width < min(H, W))."""
    k = kernel.shape[-1]
    h, w = images.shape[-2:]
    if k // 2 >= min(h, w):
        raise ValueError(f"a {k}x{k} kernel is too large for {h}x{w} images (reflect padding)")
    c = images.shape[1]
    weight = kernel.to(images.dtype).to(images.device).expand(c, 1, k, k)
    x = F.pad(images, [k // 2] * 4, mode="reflect")
    return F.conv2d(x, weight, groups=c)


def add_gaussian_noise(images: torch.Tensor, sigma: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Additive white Gaussian noise of std ``sigma`` GREY LEVELS (of 255), i.e. ``2 sigma / 255`` in [-1, 1]
    units, independent per pixel and channel; clamped to [-1, 1]."""
    noise = torch.randn(images.shape, generator=generator, device=_gen_device(generator), dtype=torch.float32)
    return (images + noise.to(images.device, images.dtype) * (2.0 * float(sigma) / 255.0)).clamp(-1.0, 1.0)


def add_sensor_noise(images: torch.Tensor, peak: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Shot (Poisson) noise: u = (x + 1) / 2, y = Poisson(u * peak) / peak (``peak`` photons for white), back to
    [-1, 1]. Var(y) = u / peak: the noise grows with the signal, as a camera sensor's."""
    u = ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)
    y = torch.poisson((u * float(peak)).to(_gen_device(generator)), generator=generator).to(images.device) / peak
    return (y * 2.0 - 1.0).clamp(-1.0, 1.0).to(images.dtype)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> uint8 [0, 255] (rounded), on the CPU."""
    return ((images.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def jpeg_compress(images: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG round trip (torchvision.io, CPU) of (N, 3, H, W) in [-1, 1] at ``quality`` (1-100): 8-bit quantisation
    plus JPEG's block artefacts; returns the decoded images in [-1, 1] on the input's device and dtype."""
    quality = int(quality)
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in [1, 100], got {quality}")
    u8 = to_uint8(images)
    encoded = encode_jpeg(list(u8), quality=quality)
    decoded = torch.stack([decode_jpeg(e) for e in encoded])
    return (decoded.float() / 127.5 - 1.0).to(images.device, images.dtype)


# ------------------------------------------------------------------------------------------------- first stage
class BlurCorruption:
    """unCLIP's first-stage (64 -> 256) conditioning: ``images`` (N, C, H, W) -> antialiased bicubic downsampling
    by ``scale`` -> Gaussian blur with sigma ~ U(sigma_range) LOW-resolution pixels, drawn per image (the blur is
    ``gaussian_blur``'s: kernel 2 ceil(3 sigma) + 1, reflect padding). sigma = 0 is allowed (no blur)."""

    kind = "blur"

    def __init__(self, scale: int = 4, sigma_range: Sequence[float] = (0.4, 0.6)):
        self.scale = _check_scale(scale)
        self.sigma_range = _check_range(
            "the blur corruption's sigma_range", sigma_range, fix="model.blur_sigma_range=[0.4, 0.6], the default"
        )

    def sample_params(self, generator: Optional[torch.Generator] = None) -> dict[str, float]:
        return {"sigma": _uniform(*self.sigma_range, generator)}

    def apply(self, images: torch.Tensor, params: Mapping[str, float]) -> torch.Tensor:
        """Downsample and blur (N, C, H, W) with the given parameters (the same for every image)."""
        return gaussian_blur(downsample(images, self.scale, "bicubic"), params["sigma"])

    def __call__(self, images: torch.Tensor, generator: Optional[torch.Generator] = None, return_params: bool = False):
        _check_batch(images, "BlurCorruption")
        params = [self.sample_params(generator) for _ in range(images.shape[0])]
        out = torch.cat([self.apply(images[i : i + 1], p) for i, p in enumerate(params)])
        return (out, params) if return_params else out

    def __repr__(self) -> str:
        return f"BlurCorruption(scale={self.scale}, sigma_range={self.sigma_range})"


# ------------------------------------------------------------------------------------------------ second stage
@dataclass(frozen=True)
class BSRConfig:
    """Ranges and probabilities of ``BSRDegradation`` (see the section comment above for each operation)."""

    blur_prob: float = 1.0
    blur_sigma_range: tuple[float, float] = (0.2, 3.0)  # pixels of the image when the blur is applied
    anisotropic_prob: float = 0.5
    max_kernel_size: int = 21
    resize_prob: float = 1.0
    resize_range: tuple[float, float] = (0.5, 1.0)  # intermediate side factor (the final resize does the rest)
    resize_modes: tuple[str, ...] = RESIZE_MODES
    gaussian_noise_prob: float = 0.5
    gaussian_noise_range: tuple[float, float] = (2.0, 25.0)  # std in grey levels of 255
    sensor_noise_prob: float = 0.5
    sensor_log10_peak_range: tuple[float, float] = (2.0, 4.0)  # Poisson peak (photons for white) = 10 ** U(.)
    jpeg_prob: float = 1.0
    jpeg_quality_range: tuple[int, int] = (30, 95)
    final_jpeg_prob: float = 1.0  # BSRGAN's last step: a JPEG of the output (quality from jpeg_quality_range)

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, list) or _is_list_config(v):  # YAML lists (Hydra passes ListConfig)
                object.__setattr__(self, f.name, tuple(v))
        # every field is checked here, when the upsampler is built (not at its first training step), and named
        # with its default as the fix; a wrong kind was float()'s bare error, true a probability of 1
        for f in fields(self):
            if f.name.endswith("_prob"):
                v = getattr(self, f.name)
                if not (_is_number(v) and 0.0 <= v <= 1.0):
                    raise ConfigError(
                        f"BSR option {f.name} must be a probability in [0, 1], got {v!r} "
                        f"(fix: model.bsr.{f.name}={f.default}, the default)"
                    )
        ranges = {  # field: (lowest, highest, whole numbers)
            "blur_sigma_range": (1e-3, math.inf, False),
            "resize_range": (1e-3, 1.0, False),
            "gaussian_noise_range": (0.0, math.inf, False),
            # a peak above ~10 ** 18 photons overflows torch.poisson's int64 counts (a black image, silently); above
            # 10 ** 6 the noise is already below one grey level
            "sensor_log10_peak_range": (-3.0, 10.0, False),
            "jpeg_quality_range": (1, 100, True),  # a quality of 30.5 was drawn as int(30.5)
        }
        for name, (lo, hi, whole) in ranges.items():
            default = list(getattr(BSRConfig, name))
            value = _check_range(
                f"BSR option {name}", getattr(self, name), lo, hi, whole, fix=f"model.bsr.{name}={default}, the default"
            )
            object.__setattr__(self, name, value)
        modes = self.resize_modes
        if isinstance(modes, str) or not modes or any(m not in RESIZE_MODES for m in modes):
            raise ConfigError(
                f"BSR option resize_modes={modes!r} must be a non-empty list of {list(RESIZE_MODES)} "
                f"(fix: model.bsr.resize_modes=[bilinear, bicubic, area], the default)"
            )
        k = self.max_kernel_size
        # 20.5 passed "odd" and became an even kernel at the first blur
        if not (_is_number(k) and float(k).is_integer() and k >= 1 and int(k) % 2 == 1):
            raise ConfigError(
                f"BSR option max_kernel_size must be an odd whole number >= 1, got {k!r} "
                f"(fix: model.bsr.max_kernel_size=21, the default)"
            )
        object.__setattr__(self, "max_kernel_size", int(k))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class BSRDegradation:
    """unCLIP's second-stage (256 -> 1024) conditioning: a simplified BSRGAN degradation (see the section comment):
    blur / resize / Gaussian noise / sensor noise / JPEG, each with its probability, and the resize to
    (H / scale, W / scale), in a random order per image (the intermediate resize before the one to the target
    size), then a final JPEG of the output (``final_jpeg_prob``). ``BSRDegradation(scale=4, **BSRConfig fields)``."""

    kind = "bsr"

    def __init__(self, scale: int = 4, config: Optional[BSRConfig] = None, **overrides: Any):
        self.scale = _check_scale(scale)
        base = config if config is not None else BSRConfig()
        valid = {f.name for f in fields(BSRConfig)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise ValueError(f"unknown BSR degradation option(s) {unknown}; valid: {sorted(valid)}")
        self.config = replace(base, **overrides) if overrides else base

    def sample_params(self, generator: Optional[torch.Generator] = None) -> dict[str, Any]:
        """One image's draw: ``order`` (the steps applied, in order: the operations drawn and ``final``, the resize
        to the target size, always after ``resize``) and each operation's parameters (None when skipped), plus
        ``final_mode`` of the resize to the target size and ``final_jpeg`` (``{"quality": q}`` or None)."""
        c = self.config
        perm = torch.randperm(len(BSR_STEPS), generator=generator, device=_gen_device(generator)).tolist()
        order = [BSR_STEPS[i] for i in perm]
        i_resize, i_final = order.index("resize"), order.index("final")
        if i_resize > i_final:  # BSRGAN: the random downsampling precedes the one to the target size
            order[i_resize], order[i_final] = order[i_final], order[i_resize]
        p: dict[str, Any] = {}
        # Every draw happens whether or not the operation is applied, so the stream (and thus the other draws) of a
        # seed does not depend on the probabilities.
        apply = {"blur": _bernoulli(c.blur_prob, generator), "final": True}
        aniso = _bernoulli(c.anisotropic_prob, generator)
        sx, sy = _uniform(*c.blur_sigma_range, generator), _uniform(*c.blur_sigma_range, generator)
        theta = _uniform(0.0, math.pi, generator)
        p["blur"] = {"sigma_x": sx, "sigma_y": sy if aniso else sx, "theta": theta if aniso else 0.0}
        apply["resize"] = _bernoulli(c.resize_prob, generator)
        p["resize"] = {"factor": _uniform(*c.resize_range, generator), "mode": _choice(c.resize_modes, generator)}
        apply["gaussian"] = _bernoulli(c.gaussian_noise_prob, generator)
        p["gaussian"] = {"sigma": _uniform(*c.gaussian_noise_range, generator)}
        apply["sensor"] = _bernoulli(c.sensor_noise_prob, generator)
        p["sensor"] = {"peak": 10.0 ** _uniform(*c.sensor_log10_peak_range, generator)}
        apply["jpeg"] = _bernoulli(c.jpeg_prob, generator)
        p["jpeg"] = {"quality": _randint(*c.jpeg_quality_range, generator)}
        final_mode = _choice(c.resize_modes, generator)
        final_jpeg = _bernoulli(c.final_jpeg_prob, generator)
        final_quality = _randint(*c.jpeg_quality_range, generator)
        params: dict[str, Any] = {op: (p[op] if apply[op] else None) for op in BSR_OPERATIONS}
        params["order"] = [op for op in order if apply[op]]
        params["final_mode"] = final_mode
        params["final_jpeg"] = {"quality": final_quality} if final_jpeg else None
        return params

    def apply(
        self, images: torch.Tensor, params: Mapping[str, Any], generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """Degrade (N, C, H, W) with one parameter draw (noise is drawn from ``generator``)."""
        h, w = images.shape[-2:]
        if h % self.scale or w % self.scale:
            raise ValueError(f"image {h}x{w} is not divisible by the scale {self.scale}")
        x = images
        for op in params["order"]:
            q = params.get(op)
            if op == "blur":
                side = min(x.shape[-2:])
                size = min(
                    blur_kernel_size(max(q["sigma_x"], q["sigma_y"])), self.config.max_kernel_size, 2 * (side - 1) + 1
                )
                x = filter2d(x, gaussian_kernel2d(q["sigma_x"], q["sigma_y"], q["theta"], size)).clamp(-1.0, 1.0)
            elif op == "resize":
                ch, cw = x.shape[-2:]
                x = resize(x, (max(1, round(ch * q["factor"])), max(1, round(cw * q["factor"]))), q["mode"])
            elif op == "gaussian":
                x = add_gaussian_noise(x, q["sigma"], generator)
            elif op == "sensor":
                x = add_sensor_noise(x, q["peak"], generator)
            elif op == "jpeg":
                x = jpeg_compress(x, q["quality"])
            elif op == "final":
                x = resize(x, (h // self.scale, w // self.scale), params["final_mode"])
        if "final" not in params["order"]:  # hand-made params without it: the resize to the target size comes last
            x = resize(x, (h // self.scale, w // self.scale), params["final_mode"])
        if params.get("final_jpeg") is not None:
            x = jpeg_compress(x, params["final_jpeg"]["quality"])
        return x.clamp(-1.0, 1.0)

    def __call__(self, images: torch.Tensor, generator: Optional[torch.Generator] = None, return_params: bool = False):
        _check_batch(images, "BSRDegradation")
        params, out = [], []
        for i in range(images.shape[0]):
            p = self.sample_params(generator)
            out.append(self.apply(images[i : i + 1], p, generator))
            params.append(p)
        out_t = torch.cat(out)
        return (out_t, params) if return_params else out_t

    def __repr__(self) -> str:
        return f"BSRDegradation(scale={self.scale}, {self.config})"


def make_corruption(
    kind: str, scale: int = 4, blur_sigma_range: Sequence[float] = (0.4, 0.6), bsr: Optional[Mapping[str, Any]] = None
):
    """The upsampler conditioning corruption ``kind`` (``blur`` | ``bsr``) for a ×``scale`` upsampler."""
    if kind == "blur":
        return BlurCorruption(scale, blur_sigma_range)
    if kind == "bsr":
        return BSRDegradation(scale, **dict(bsr or {}))
    raise ValueError(f"unknown corruption {kind!r}; expected one of {CORRUPTIONS}")


# --------------------------------------------------------------------------------------------------- crops
def paired_random_crop(
    high: torch.Tensor, low: torch.Tensor, crop: int, generator: Optional[torch.Generator] = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crop a high-resolution batch (N, C, H, W) and its low-resolution version (N, C, H / s, W / s) at MATCHING
    coordinates: per image, a (crop, crop) window of ``high`` whose corner is a multiple of s, and the
    (crop / s, crop / s) window of ``low`` at corner / s, so both show the same part of the scene.
    Returns (high crops, low crops, corners (N, 2) = (top, left) in high-resolution pixels)."""
    n, _, h, w = high.shape
    lh, lw = low.shape[-2:]
    if h % lh or w % lw or h // lh != w // lw or low.shape[0] != n:
        raise ValueError(f"low-resolution batch {tuple(low.shape)} is not an integer downscale of {tuple(high.shape)}")
    s = h // lh
    crop = int(crop)
    if crop % s or not 0 < crop <= min(h, w):
        raise ValueError(f"crop {crop} must be a positive multiple of the scale {s} and <= {min(h, w)}")
    lc = crop // s
    tops = torch.randint(0, lh - lc + 1, (n,), generator=generator, device=_gen_device(generator))
    lefts = torch.randint(0, lw - lc + 1, (n,), generator=generator, device=_gen_device(generator))
    hi_c, lo_c = [], []
    for i, (top, left) in enumerate(zip(tops.tolist(), lefts.tolist(), strict=True)):
        lo_c.append(low[i, :, top : top + lc, left : left + lc])
        hi_c.append(high[i, :, top * s : (top + lc) * s, left * s : (left + lc) * s])
    return torch.stack(hi_c), torch.stack(lo_c), torch.stack([tops, lefts], 1).cpu() * s


__all__ = [
    "GaussianBlur",
    "blur_kernel_size",
    "gaussian_blur",
    "CORRUPTIONS",
    "RESIZE_MODES",
    "BSR_OPERATIONS",
    "BSR_STEPS",
    "resize",
    "downsample",
    "gaussian_kernel2d",
    "filter2d",
    "add_gaussian_noise",
    "add_sensor_noise",
    "to_uint8",
    "jpeg_compress",
    "BlurCorruption",
    "BSRConfig",
    "BSRDegradation",
    "make_corruption",
    "paired_random_crop",
]
