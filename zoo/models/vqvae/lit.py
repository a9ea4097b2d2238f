"""Training the VQ-VAE (Lightning): MSE reconstruction + commitment (+ codebook loss without EMA)."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from zoo.errors import ConfigError
from zoo.models.base import ImageTokenizerLit
from zoo.models.presets import resolve_preset
from zoo.models.vqvae.model import PRESETS, VQVAE, VQVAEConfig
from zoo.nn.image_tokenizer import psnr_from_mse


class VQVAELit(ImageTokenizerLit):
    def __init__(self, preset: str = "shapes", net: Optional[dict[str, Any]] = None, optimizer=None, scheduler=None):
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.cfg = resolve_preset(PRESETS, VQVAEConfig, preset, net, "VQ-VAE")
        self.vqvae = VQVAE(self.cfg).to(memory_format=torch.channels_last)

    @property
    def tokenizer(self) -> VQVAE:
        """The ``ImageTokenizer`` this module trains."""
        return self.vqvae

    def forward_loss(self, images: torch.Tensor, step: Optional[int] = None) -> dict[str, torch.Tensor]:
        q = self.vqvae(images)
        recon = F.mse_loss(q["recon"].float(), images.float())  # in [-1, 1]: 4x the [0, 1] MSE
        q["mse"] = recon.detach() / 4
        q["loss"] = recon + q["loss"]
        return q

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        r = self.forward_loss(batch["image"])
        self.log_metrics(
            "train",
            {
                "loss": r["loss"],
                "recon_mse": r["mse"],
                "psnr": psnr_from_mse(r["mse"]),
                "commitment": r["commitment"],
                "perplexity": r["perplexity"],
                **({} if self.cfg.ema else {"codebook_loss": r["codebook_loss"]}),
            },
        )
        return r["loss"]

    # --------------------------------------------------------------------------------------------- evaluation
    def eval_step(self, batch: dict[str, Any], stage: str) -> None:
        images = batch["image"]
        r = self.forward_loss(images)  # eval mode: nearest codes, no codebook update
        if torch.is_autocast_enabled(images.device.type):  # bf16 encoder output: not quite encode's codes (stage 2's)
            codes = self.vqvae.encode(images)
            self.accumulate(codes, self.vqvae.decode(codes), images)
        else:
            self.accumulate(r["codes"], r["recon"], images)
        self.log_metrics(stage, {"loss": r["loss"], "commitment": r["commitment"]}, batch_size=images.shape[0])

    def check_data(self, datamodule) -> None:
        """Refuses a resolution the downsampling does not divide; sets the tokenizer's resolution (and so its grid
        size) to the data's otherwise (the network is convolutional)."""
        res = getattr(datamodule, "resolution", None)
        f = self.cfg.downsample_factor
        if res is not None and res % f:
            raise ConfigError(
                f"data.resolution={res} is not divisible by the VQ-VAE downsample factor {f} "
                f"(fix: data.resolution={res - res % f or f}, or model.net.n_down)"
            )
        if res is not None:
            self.vqvae.resolution = res
