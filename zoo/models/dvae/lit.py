"""Training the dVAE with the paper's objective (Lightning).

loss = NLL_recon + beta * KL(q(z|x) || uniform), both per pixel x channel (the paper normalises the ELB this way):
- q(z|x): the encoder's categorical over ``vocab_size`` codes at every grid cell; the decoder sees a Gumbel-softmax
  relaxed sample with temperature tau (annealed 1 -> 1/16; ``gumbel_softmax``: F.gumbel_softmax's distribution
  from one float32 uniform draw, ~3x faster), the KL uses the categorical logits directly;
- NLL_recon: logit-Laplace (paper) on pixels mapped to (eps, 1-eps), eps = 0.1, or MSE (``recon_loss=mse``);
- beta ramps 0 -> 6.6 (paper: over the first 5k updates; tau over 150k) on configurable step schedules.
Validation uses the tokens stage 2 will see: argmax codes, no noise.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F

from zoo.errors import ConfigError
from zoo.models.base import ImageTokenizerLit
from zoo.models.dvae.model import DVAE, PRESETS, DVAEConfig
from zoo.models.presets import resolve_preset
from zoo.nn.annealing import SCHEDULES
from zoo.nn.image_tokenizer import psnr_from_mse
from zoo.nn.likelihoods import LOGIT_LAPLACE_EPS, logit_laplace_nll, map_pixels


def gumbel_softmax(
    logits: torch.Tensor, tau: float, dim: int = 1, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """The relaxed one-hot sample softmax((logits + g) / tau), g ~ Gumbel(0, 1) iid: ``F.gumbel_softmax(logits,
    tau, hard=False, dim=dim)``'s distribution, ~3x faster on the CPU. The noise comes from ONE float32 uniform
    draw u, in place: E = -log(1 - u) ~ Exp(1) (the inverse CDF, as ``exponential_`` builds it) and g = -log E;
    F.gumbel_softmax calls ``exponential_()``, which on the CPU draws doubles (~5x the cost of the uniform). u = 0
    (one draw in 2^24) counts as the middle of its bin, 2^-25, so that g stays finite. ``(logits + g) / tau`` is one
    fused op, and the softmax runs along memory order: for channels_last (B, K, h, w) ``logits`` and dim 1 it is
    taken over the last dim of the (B, h, w, K) view (torch's softmax over a strided dim is ~3x slower); the result
    keeps the layout of ``logits``."""
    if dim < 0:
        dim += logits.dim()
    x = logits
    if logits.dim() == 4 and dim == 1 and logits.is_contiguous(memory_format=torch.channels_last):
        x, dim = logits.permute(0, 2, 3, 1), 3  # contiguous (B, h, w, K)
    u = torch.empty(x.shape, dtype=torch.float32, device=x.device).uniform_(generator=generator).clamp_(min=2.0**-25)
    noise = u.neg_().log1p_().neg_().log_().mul_(-1.0 / tau)  # g / tau = -log(E) / tau, E = -log(1 - u)
    y = torch.add(noise.to(x.dtype), x, alpha=1.0 / tau).softmax(dim)  # (logits + g) / tau
    return y.permute(0, 3, 1, 2) if x is not logits else y


def kl_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(logits) || uniform) summed over codes, per grid cell: (B, K, h, w) -> (B, h, w). For
    channels_last logits the softmax runs over the last dim of the (B, h, w, K) view (along memory)."""
    x, dim = logits.float(), 1
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        x, dim = x.permute(0, 2, 3, 1), 3
    logq = F.log_softmax(x, dim=dim)
    return (logq.exp() * logq).sum(dim) + math.log(logits.shape[1])


class DVAELit(ImageTokenizerLit):
    def __init__(
        self,
        preset: str = "shapes",
        net: Optional[dict[str, Any]] = None,
        recon_loss: str = "logit_laplace",
        temperature_start: float = 1.0,
        temperature_end: float = 1.0 / 16,
        temperature_steps: int = 150_000,
        temperature_schedule: str = "cosine",
        kl_weight_max: float = 6.6,
        kl_steps: int = 5_000,
        kl_schedule: str = "cosine",
        optimizer=None,
        scheduler=None,
    ):
        super().__init__(optimizer, scheduler)
        if recon_loss not in ("logit_laplace", "mse"):
            raise ConfigError(f"model.recon_loss={recon_loss!r}; expected logit_laplace (paper) or mse (ablation)")
        for name in (temperature_schedule, kl_schedule):
            if name not in SCHEDULES:
                raise ConfigError(f"unknown schedule {name!r}; expected one of {sorted(SCHEDULES)}")
        # Refused here, not at the step where they break: a temperature <= 0 divides by zero (or flips the softmax)
        # only once the annealing reaches it, possibly 150k steps in; an exponential ramp cannot start at beta = 0.
        if not (temperature_start > 0 and temperature_end > 0):
            raise ConfigError(
                f"model.temperature_start={temperature_start}, model.temperature_end={temperature_end}: the Gumbel-"
                f"softmax temperature must stay > 0 (paper: 1 -> 1/16, model.temperature_end=0.0625)"
            )
        if kl_weight_max < 0:
            raise ConfigError(f"model.kl_weight_max={kl_weight_max} is negative (paper: 6.6; 0 disables the KL term)")
        for key, steps in (("temperature_steps", temperature_steps), ("kl_steps", kl_steps)):
            if steps < 0:
                raise ConfigError(f"model.{key}={steps} is negative (0: the end value from the first step)")
        if kl_schedule == "exponential" and kl_steps > 0:
            raise ConfigError(
                "model.kl_schedule=exponential: the KL weight ramps up from 0, which no geometric schedule leaves "
                "(fix: model.kl_schedule=cosine, the paper's, or linear)"
            )
        net = dict(net or {})
        net.setdefault("out_channels", 6 if recon_loss == "logit_laplace" else 3)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.cfg = resolve_preset(PRESETS, DVAEConfig, preset, net, "dVAE")
        want = 6 if recon_loss == "logit_laplace" else 3
        if self.cfg.out_channels != want:  # else a shape error at the first step's loss
            raise ConfigError(
                f"model.net.out_channels={self.cfg.out_channels} does not fit model.recon_loss={recon_loss}, whose "
                f"decoder emits {want} channels ({'mu and ln b per RGB channel' if want == 6 else 'RGB'}) (fix: "
                f"drop model.net.out_channels; it follows recon_loss)"
            )
        # channels_last: oneDNN's convolutions run ~1.8x faster on this CPU in that layout (bench/bench_tokenizers.py)
        self.dvae = DVAE(self.cfg).to(memory_format=torch.channels_last)

    @property
    def tokenizer(self) -> DVAE:
        """The ``ImageTokenizer`` this module trains."""
        return self.dvae

    # --------------------------------------------------------------------------------------------- schedules
    def temperature(self, step: Optional[int] = None) -> float:
        h = self.hparams
        step = self.global_step if step is None else step
        return SCHEDULES[h.temperature_schedule](step, h.temperature_start, h.temperature_end, h.temperature_steps)

    def kl_weight(self, step: Optional[int] = None) -> float:
        h = self.hparams
        step = self.global_step if step is None else step
        return SCHEDULES[h.kl_schedule](step, 0.0, h.kl_weight_max, h.kl_steps)

    # --------------------------------------------------------------------------------------------- losses
    def recon_nll(self, out: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Mean reconstruction loss per pixel x channel."""
        x01 = (images.float() + 1) / 2
        out = out.float()
        if self.hparams.recon_loss == "mse":
            return F.mse_loss(torch.sigmoid(out), x01)
        mu, log_b = out[:, :3], out[:, 3:]
        return logit_laplace_nll(map_pixels(x01, LOGIT_LAPLACE_EPS), mu, log_b).mean()

    def forward_loss(self, images: torch.Tensor, step: Optional[int] = None) -> dict[str, torch.Tensor]:
        logits = self.dvae.logits(images)
        tau = self.temperature(step)
        z = gumbel_softmax(logits.float(), tau, dim=1).to(logits.dtype)
        out = self.dvae.decode_soft(z)
        recon = self.recon_nll(out, images)
        # KL summed over the grid, normalised by the number of pixel channels, as the recon term is.
        kl = kl_to_uniform(logits).flatten(1).sum(1).mean() / (3 * images.shape[-1] * images.shape[-2])
        beta = self.kl_weight(step)
        with torch.no_grad():
            mse = F.mse_loss(self.dvae.output_to_image(out).add(1).div(2), (images.float() + 1) / 2)
        return {"loss": recon + beta * kl, "recon": recon, "kl": kl, "mse": mse, "logits": logits}

    # --------------------------------------------------------------------------------------------- lightning
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        r = self.forward_loss(batch["image"])
        self.log_metrics(
            "train",
            {
                "loss": r["loss"],
                "recon_nll": r["recon"],
                "kl": r["kl"],
                "recon_mse": r["mse"],
                "psnr": psnr_from_mse(r["mse"]),
                "temperature": self.temperature(),
                "kl_weight": self.kl_weight(),
            },
        )
        return r["loss"]

    # --------------------------------------------------------------------------------------------- evaluation
    def eval_step(self, batch: dict[str, Any], stage: str) -> None:
        """Loss as in training (noisy relaxation); reconstruction metrics from argmax tokens (what stage 2 sees)."""
        images = batch["image"]
        r = self.forward_loss(images)
        # under autocast (bf16-mixed) the loss's logits are bf16: their argmax is not quite what encode gives stage 2
        codes = self.dvae.encode(images) if torch.is_autocast_enabled(images.device.type) else r["logits"].argmax(1)
        self.accumulate(codes, self.dvae.decode(codes), images)
        self.log_metrics(stage, {"loss": r["loss"], "kl": r["kl"], "recon_nll": r["recon"]}, batch_size=images.shape[0])

    def check_data(self, datamodule) -> None:
        """Refuses a resolution the downsampling does not divide; adapts the tokenizer's resolution (and so its
        grid size) to the data's otherwise (the network is convolutional)."""
        res = getattr(datamodule, "resolution", None)
        f = self.cfg.downsample_factor
        if res is not None and res % f:
            raise ConfigError(
                f"data.resolution={res} is not divisible by the dVAE downsample factor {f} "
                f"(fix: data.resolution={res - res % f or f}, or a model.preset / model.net.n_groups that fits)"
            )
        if res is not None and res != self.cfg.resolution:
            # The network is convolutional, so it runs at any multiple of f; grid_size follows the data.
            self.dvae.resolution = res
