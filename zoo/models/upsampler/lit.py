"""Training and sampling unCLIP's diffusion upsamplers with Lightning.

Training, per batch of real images ``image`` (B, 3, S, S) at the TARGET size S (the DataModule's resolution):

1. degrade the FULL image to its conditioning (B, 3, S / 4, S / 4): ``BlurCorruption`` (first stage) or
   ``BSRDegradation`` (second stage) from ``zoo.data.degradations``, parameters drawn per image;
2. cut a random (S / 4)-pixel crop of the image and the matching (S / 16)-pixel crop of the conditioning at the
   same place (``paired_random_crop``: corner a multiple of the scale, so the two crops show the same scene region);
3. the diffusion loss (``zoo.diffusion.GaussianDiffusion``: cosine schedule of 1000 steps, eps (or v) prediction; with
   ``net.learn_sigma`` the learned-range variance and hybrid loss) on the high-resolution crop, conditioned on the
   low-resolution crop.

Why degrade first, then crop: at inference the network sees a conditioning image degraded as a WHOLE. Blurring,
resizing or JPEG-coding a crop instead would change what it learns near the crop's borders (reflect padding where
the real image has content, resampling kernels cut off, JPEG's 8x8 block grid anchored at the crop's corner rather
than the image's), and a crop of a crop's degradation is not a crop of the image's. Degrading once and cropping
both at matching coordinates gives exactly the statistics of a window of the inference-time input. (It costs a
degradation of the full image per step; the U-Net, the expensive part, still only sees the crops.)

Sampling (``upsample``): the network is fully convolutional (no attention), so it runs on the full target size:
DDIM (``eta`` 0 by default) over ``steps`` respaced steps, 27 for a blur-trained (first) stage and 15 for a
BSR-trained (second) stage by default (the paper), predicted x0 clipped to [-1, 1]. ``sample_tile`` instead feeds
the network overlapping windows of its training-crop size at every step and averages their outputs
(``zoo.diffusion.tiling``): its GroupNorm then sees the statistics it was trained on. On shapes that removes the
background tint of full-size sampling (experiments/unclip/README.md, section 4).

Residual diffusion (``residual=True``, off by default: the paper's upsamplers diffuse the image itself). The
process diffuses ``x_high - bicubic(low)`` instead of ``x_high``, as SRDiff (Li et al., 2022) does, and ``upsample``
returns ``bicubic(low) + the sampled residual`` (x0 clipped so that the sum stays in [-1, 1]). The network and its
conditioning are unchanged; what changes is what it has to generate: only what bicubic interpolation misses
(edges, texture). Colours and layout, which a short-trained image upsampler gets wrong (backgrounds tinted,
section 4 of experiments/unclip/README.md), come from the bicubic base. In training the base is the bicubic
upsampling of the WHOLE degraded image, cropped at the high-resolution crop's coordinates: a crop's own bicubic
upsampling would differ near its border (the kernel reads pixels outside the crop), and at sampling the base is the
whole image's.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from zoo.data.degradations import blur_kernel_size, make_corruption, paired_random_crop
from zoo.diffusion.process import GaussianDiffusion, check_snr_gamma
from zoo.diffusion.samplers import check_sampling_knobs, ddim_sample, in_row_slices
from zoo.diffusion.schedules import get_schedule
from zoo.diffusion.tiling import tiled_call, window_starts
from zoo.errors import ConfigError, check_switch, check_whole, is_whole
from zoo.models.base import ZooLit, resolve_preset, unmet_sizes
from zoo.models.glide.lit import check_prediction
from zoo.models.upsampler.model import UPSAMPLER_PRESETS, Upsampler, UpsamplerConfig


def build_config(
    preset: str = "shapes_32_128",
    net: Optional[dict[str, Any]] = None,
    corruption: Optional[str] = None,
    scale: Optional[int] = None,
) -> UpsamplerConfig:
    """The preset with ``net`` overrides; ``corruption`` / ``scale`` are shorthands for ``net.corruption`` /
    ``net.scale`` (None = the preset's)."""
    net = dict(net or {})
    for key, value in (("corruption", corruption), ("scale", scale)):
        if value is None:
            continue
        if key in net and net[key] != value:
            raise ConfigError(f"model.{key}={value!r} contradicts model.net.{key}={net[key]!r} (fix: set only one)")
        net[key] = value
    try:
        return resolve_preset(UPSAMPLER_PRESETS, UpsamplerConfig, preset, net, "upsampler")
    except ValueError as e:  # the dataclass's own checks (divisibility, corruption name)
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"upsampler config: {e}") from None


# Output pixels (images x H x W) per network call when sampling. A larger call is slower per image on a CPU: the
# shapes upsampler at 128 px (no tiling) costs 163 / 175 / 158 / 177 / 262 ms per image at 1 / 2 / 4 / 8 / 16 images
# on one thread, 115 / 109 / 107 / 119 / 165 on two (AVX2 AMD EPYC). A batch of images (batched candidates, many
# captions) is therefore sampled 4 images at a time at 128 px, 1 at 256 px, 16 at 64 px; the noise is drawn for the
# whole batch, so only the speed changes.
CALL_POSITIONS = 4 * 128 * 128
DEFAULT_BLUR_SIGMA_RANGE = (0.4, 0.6)  # UpsamplerLit's blur_sigma_range (conf/model/upsampler.yaml)


class UpsamplerLit(ZooLit):
    """Args:
    preset: ``tiny`` | ``shapes_32_128`` (blur) | ``shapes_128_512`` (BSR) | ``paper_64_256`` |
        ``paper_256_1024`` (``zoo.models.upsampler.model.UPSAMPLER_PRESETS``); ``net`` overrides fields.
    corruption: ``blur`` | ``bsr`` (None = the preset's); scale: ×scale (None = the preset's, 4).
    blur_sigma_range: the blur corruption's sigma range in low-resolution pixels.
    bsr: overrides of ``zoo.data.degradations.BSRConfig`` fields (e.g. ``{jpeg_quality_range: [50, 95]}``).
    num_timesteps, schedule: the training diffusion process (1000, cosine).
    prediction: ``eps`` (the paper's) or ``v``. An eps upsampler trained for CPU minutes shifts flat backgrounds'
        colour (brown to grey or purple in its sample grids): the colour is decided at high noise, where the eps
        loss gives the image error almost no weight, the same failure as GLIDE's captions (``GlideLit``).
    snr_gamma: null or γ for Min-SNR-γ loss weighting (``GaussianDiffusion``'s docstring).
    residual: diffuse the residual over bicubic upsampling instead of the image (module docstring; SRDiff).
    sample_steps: DDIM steps of ``upsample`` (None = 27 for blur, 15 for bsr); eta: DDIM eta (0).
    sample_tile: None (the paper: the network on the whole target-size image), ``train_crop`` (windows of the
        training crop's side) or a side in pixels: ``upsample`` evaluates the network on overlapping windows and
        averages the outputs at every step (module docstring). sample_tile_overlap: pixels shared by neighbours
        (None: a quarter of the window).
    grid_images, grid_steps: ``sample_grid`` (rows of low-res | bicubic | upsampled | real; steps None = the
        sampling default).
    """

    compile_module = "net"  # compile=true: the training step is one call of net (inside the diffusion loss)

    grid_nrow = 4  # low-res (nearest) | bicubic | upsampled | real

    def __init__(
        self,
        preset: str = "shapes_32_128",
        net: Optional[dict[str, Any]] = None,
        corruption: Optional[str] = None,
        scale: Optional[int] = None,
        blur_sigma_range: Sequence[float] = DEFAULT_BLUR_SIGMA_RANGE,
        bsr: Optional[dict[str, Any]] = None,
        num_timesteps: int = 1000,
        schedule: str = "cosine",
        prediction: str = "eps",
        snr_gamma: Optional[float] = None,
        residual: bool = False,
        sample_steps: Optional[int] = None,
        eta: float = 0.0,
        sample_tile: Optional[int | str] = None,
        sample_tile_overlap: Optional[int] = None,
        grid_images: int = 4,
        grid_steps: Optional[int] = None,
        optimizer=None,
        scheduler=None,
    ):
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.cfg = build_config(preset, net, corruption, scale)
        self.net = Upsampler(self.cfg)
        learned = self.cfg.learn_sigma
        self.process = GaussianDiffusion(
            get_schedule(schedule, num_timesteps),  # which refuses 2.5 or true (int() took them for 2 or 1 step)
            model_mean_type=check_prediction(prediction),
            model_var_type="learned_range" if learned else "fixed_small",
            loss_type="hybrid" if learned else "mse",
            snr_gamma=check_snr_gamma(snr_gamma, "model.snr_gamma"),
        )
        try:
            self.corruption = make_corruption(self.cfg.corruption, self.cfg.scale, blur_sigma_range, bsr)
        except ValueError as e:
            raise ConfigError(f"upsampler corruption: {e}") from None
        self._check_corruption_options(blur_sigma_range, bsr)
        self.resolve_tile(sample_tile, sample_tile_overlap)  # a bad tile fails here, before training
        # the sampling defaults a checkpoint carries, refused here: a bad one failed at the first sample grid (after
        # an epoch of training), or was taken silently (2.5 steps as 2, a negative eta, more steps than timesteps)
        check_sampling_knobs(
            self.process.num_timesteps,
            {"model.sample_steps": sample_steps, "model.eta": eta, "model.grid_steps": grid_steps},
        )
        # 0 failed after the first epoch (no images to lay out), 2.5 drew 2
        fix = "4; no sample grids at all: ~callbacks.sample_grid"
        check_whole("model.grid_images", grid_images, 1, fix, why="val images in each sample grid")
        self.residual = check_switch("model.residual", residual)  # bool("false") was true: residual diffusion

    def _check_corruption_options(self, blur_sigma_range, bsr) -> None:
        """Warn about the other corruption's options (they are ignored) and check that the blur fits the
        conditioning image (a ``tiny`` preset is checked by ``check_data``, once zoo-train has fitted it to the
        data's resolution)."""
        if self.cfg.corruption == "blur":
            if self.hparams.preset != "tiny":
                self._check_blur_fits()
            if bsr:
                warnings.warn(
                    f"model.bsr={dict(bsr)} is ignored: this upsampler's corruption is blur (model.corruption=bsr "
                    f"uses it)",
                    stacklevel=3,
                )
        # compared as written: float() of each entry failed with a bare ValueError on an option that is ignored here
        elif not (isinstance(blur_sigma_range, Sequence) and list(blur_sigma_range) == list(DEFAULT_BLUR_SIGMA_RANGE)):
            warnings.warn(
                f"model.blur_sigma_range={blur_sigma_range!r} is ignored: this upsampler's corruption is bsr "
                f"(its blur is model.bsr.blur_sigma_range)",
                stacklevel=3,
            )

    def _check_blur_fits(self) -> None:
        """The blur corruption's widest kernel must fit the whole conditioning image (``gaussian_blur``'s reflect
        padding), else training would fail at its first step."""
        c = self.cfg
        if c.corruption != "blur":
            return
        hi = self.corruption.sigma_range[1]
        k = blur_kernel_size(hi)
        if k // 2 >= c.low_res_size:
            raise ConfigError(
                f"model.blur_sigma_range={list(self.corruption.sigma_range)}: a blur of sigma {hi:g} needs a "
                f"{k}x{k} kernel, too wide for the {c.low_res_size} px conditioning image ({c.image_size} / "
                f"{c.scale}; the half-width {k // 2} must be < {c.low_res_size}) (fix: a smaller range, e.g. the "
                f"default [0.4, 0.6])"
            )

    def sampling_windows(self, tile=None, overlap: Optional[int] = None) -> Optional[tuple[int, int]]:
        """``resolve_tile`` with this checkpoint's defaults: ``tile`` None = ``sample_tile``, ``overlap`` None =
        ``sample_tile_overlap`` (checkpoints from before tiling have neither: the whole image)."""
        hp = self.hparams
        return self.resolve_tile(
            hp.get("sample_tile") if tile is None else tile,
            hp.get("sample_tile_overlap") if overlap is None else overlap,
        )

    def resolve_tile(self, tile, overlap) -> Optional[tuple[int, int]]:
        """(window side, overlap) for ``upsample``, or None for whole-image sampling; ``tile`` None / 0 -> None,
        ``train_crop`` -> the training crop's side. Checked against the U-Net's divisor and the scale."""
        if tile is None or (tile == 0 and is_whole(tile)):  # false == 0 to Python: no "whole image" for a bool
            return None
        side = self.cfg.train_crop if tile == "train_crop" else tile
        # int() took 8.5 for 8 and true for 1
        why = "a window side in pixels (train_crop: the training crop's; null or 0: the whole image)"
        check_whole("model.sample_tile", side, 1, "train_crop", why=why)
        why = "pixels shared by neighbouring windows (null: a quarter of the window)"
        overlap = check_whole(
            "model.sample_tile_overlap", side // 4 if overlap is None else overlap, 0, "null", why=why
        )
        try:
            if side % self.cfg.divisor:
                raise ValueError(f"it must be a multiple of the U-Net's divisor {self.cfg.divisor}")
            window_starts(self.cfg.image_size, side, overlap, self.cfg.scale)
        except ValueError as e:
            raise ConfigError(
                f"model.sample_tile={tile!r} / sample_tile_overlap={overlap}: {e} "
                f"(fix: sample_tile=train_crop, i.e. {self.cfg.train_crop}, and sample_tile_overlap=null, a quarter)"
            ) from None
        return side, overlap

    def default_optimizer(self, params) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=1e-4)

    @property
    def sample_steps(self) -> int:
        steps = self.hparams.sample_steps
        return int(self.cfg.default_sample_steps if steps is None else steps)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    # ------------------------------------------------------------------------------------------ data
    def data_sizes(self, datamodule) -> dict[str, Any]:
        """data.resolution as the target size, when the scale and the U-Net's levels divide it (else check_data
        refuses it with the fix)."""
        res, c = getattr(datamodule, "resolution", None), self.cfg
        if res is None or res % (c.scale * c.crop_fraction) or res % (c.divisor * c.crop_fraction):
            return {}
        return unmet_sizes(c, {"image_size": int(res)})

    def check_data(self, datamodule) -> None:
        """The data's resolution is the upsampler's target size (``net.image_size``)."""
        res = getattr(datamodule, "resolution", None)
        c = self.cfg
        if res is not None and int(res) != c.image_size:
            raise ConfigError(
                f"data.resolution={res} but the upsampler's target size is {c.image_size} px "
                f"({c.low_res_size} -> {c.image_size}) (fix: data.resolution={c.image_size}, or "
                f"model.net.image_size={res} if {res} is a multiple of {c.scale * c.crop_fraction} and of "
                f"{c.divisor * c.crop_fraction})"
            )
        self._check_blur_fits()

    @torch.no_grad()
    def degrade(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """High-resolution images (B, 3, H, W) in [-1, 1] -> their corrupted conditioning (B, 3, H / s, W / s)
        (the training corruption; randomness from a CPU ``generator``). Always in fp32, outside autocast: the
        corruption is data preparation, and some of its resizes (antialiased bicubic/area) have no bf16 kernel on
        the CPU, which made bf16-mixed training crash in the BSR stage."""
        with torch.autocast(images.device.type, enabled=False):
            return self.corruption(images.float(), generator)

    @staticmethod
    def bicubic_base(low: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Bicubic upsampling of ``low`` to ``size`` (align_corners False), overshoot clamped to [-1, 1]: the
        baseline eval.upsampler compares with, and the base of residual diffusion."""
        return F.interpolate(low.float(), size=size, mode="bicubic", align_corners=False).clamp(-1, 1)

    @torch.no_grad()
    def training_crops(
        self, images: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """``training_pair`` plus, for a residual upsampler, the bicubic base at the high-resolution crops'
        coordinates (B, 3, c, c) (None otherwise): the base of the whole degraded image, cropped (module
        docstring). The same random draws as ``training_pair``."""
        low_full = self.degrade(images, generator)
        high, low, corners = paired_random_crop(images.float(), low_full, self.cfg.train_crop, generator)
        if not self.residual:
            return high, low, None
        base_full = self.bicubic_base(low_full, tuple(images.shape[-2:]))
        c = self.cfg.train_crop
        base = torch.stack([base_full[i, :, y : y + c, x : x + c] for i, (y, x) in enumerate(corners.tolist())])
        return high, low, base

    @torch.no_grad()
    def training_pair(
        self, images: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(high-resolution crops (B, 3, c, c), conditioning crops (B, 3, c / s, c / s)), c = ``cfg.train_crop``:
        the full images are degraded FIRST, then both are cropped at matching coordinates (module docstring)."""
        high, low, _ = self.training_crops(images, generator)
        return high, low

    # ------------------------------------------------------------------------------------------ training
    def forward_loss(
        self,
        batch: dict[str, Any],
        generator: Optional[torch.Generator] = None,
        diffusion_generator: Optional[torch.Generator] = None,
    ) -> dict[str, torch.Tensor]:
        high, low, base = self.training_crops(batch["image"], generator)
        high, low = high.to(self.device), low.to(self.device)
        x_start = high if base is None else high - base.to(self.device)  # residual diffusion: what bicubic misses
        t = self.process.sample_timesteps(high.shape[0], device=high.device, generator=diffusion_generator)
        terms = self.process.training_losses(
            self.net, x_start, t, model_kwargs={"low_res": low}, generator=diffusion_generator
        )
        return {k: v.mean() for k, v in terms.items()}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        r = self.forward_loss(batch)
        self.log_metrics("train", r, batch_size=len(batch["image"]))
        return r["loss"]

    def eval_step(self, batch: dict[str, Any], stage: str) -> None:
        # fixed corruption, crops, timesteps and noise, so successive validations are comparable
        r = self.forward_loss(
            batch,
            generator=torch.Generator().manual_seed(0),
            diffusion_generator=torch.Generator(device=self.device).manual_seed(1),
        )
        self.log_metrics(stage, r, batch_size=len(batch["image"]))

    # ------------------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def upsample(
        self,
        low_res: torch.Tensor,
        steps: Optional[int] = None,
        eta: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
        x_T: Optional[torch.Tensor] = None,
        tile: Optional[int | str] = None,
        tile_overlap: Optional[int] = None,
    ) -> torch.Tensor:
        """Low-resolution images (B, 3, h, w) in [-1, 1] -> (B, 3, h * scale, w * scale) in [-1, 1], the network
        applied fully convolutionally at that size, or on overlapping windows (``tile``: None = ``sample_tile``,
        0 = the whole image, ``train_crop`` or a side; ``tile_overlap`` None = ``sample_tile_overlap``). DDIM with
        ``steps`` (default ``sample_steps``: 27 for a blur stage, 15 for a BSR stage) and ``eta`` (default
        ``hparams.eta``, 0: deterministic given x_T); randomness from ``generator`` (on the module's device).
        A residual upsampler samples the residual and returns bicubic(low_res) + it, x0 clipped so that the sum
        stays in [-1, 1]."""
        # given from Python, as the config's are: int() ran steps=2.5 as 2 and true as 1, float() took eta="0.5"
        check_sampling_knobs(self.process.num_timesteps, {"steps": steps, "eta": eta})
        steps = self.sample_steps if steps is None else steps
        eta = float(self.hparams.eta if eta is None else eta)
        windows = self.sampling_windows(tile, tile_overlap)
        s = self.cfg.scale
        low = low_res.to(self.device).float()
        shape = (low.shape[0], self.cfg.in_channels, low.shape[-2] * s, low.shape[-1] * s)
        if shape[-2] % self.cfg.divisor or shape[-1] % self.cfg.divisor:
            raise ValueError(
                f"output {shape[-2]}x{shape[-1]} must be divisible by {self.cfg.divisor} "
                f"(the U-Net's levels); pad the low-resolution input"
            )
        was_training = self.training
        self.eval()
        try:
            if windows is None:
                one = lambda x, t, low: self.net(x, t, low)  # noqa: E731
            else:
                one = lambda x, t, low: tiled_call(self.net, x, t, low, windows[0], windows[1], s)  # noqa: E731
            m = max(1, CALL_POSITIONS // (shape[-2] * shape[-1]))  # images per network call
            fn = lambda x, t: in_row_slices(len(x), m, lambda r: one(x[r], t[r], low[r]))  # noqa: E731

            base = self.bicubic_base(low, shape[-2:]) if self.residual else None
            x = ddim_sample(
                self.process.respaced(steps),
                fn,
                shape,
                eta=eta,
                generator=generator,
                device=self.device,
                x_T=x_T,
                clip_denoised=True,
                clip_range=(-1.0, 1.0) if base is None else (-1.0 - base, 1.0 - base),  # base + x0 in [-1, 1]
            )
        finally:
            self.train(was_training)
        if base is not None:
            x = base + x.float()
        return x.float().clamp(-1, 1)

    @torch.no_grad()
    def sample_grid(self, batch: dict[str, Any]) -> torch.Tensor:
        """Rows of low-res (nearest-upsampled) | bicubic | upsampled | real for the first ``grid_images`` images,
        their conditioning degraded with a fixed seed and sampled with a fixed seed."""
        n = min(int(self.hparams.grid_images), len(batch["image"]))
        real = batch["image"][:n].float().to(self.device)
        low = self.degrade(real.cpu(), torch.Generator().manual_seed(0)).to(self.device)
        up = self.upsample(low, steps=self.hparams.grid_steps, generator=torch.Generator(self.device).manual_seed(0))
        size = real.shape[-2:]
        nearest = F.interpolate(low, size=size, mode="nearest")
        bicubic = self.bicubic_base(low, tuple(size))
        return torch.stack([nearest, bicubic, up, real], 1).flatten(0, 1)
