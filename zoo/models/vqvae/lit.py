"""Training the VQ-VAE (Lightning): MSE reconstruction + commitment (+ codebook loss without EMA)."""
from __future__ import annotations

from typing import Any, Optional

import lightning as L
import torch
import torch.nn.functional as F

from zoo.errors import ConfigError
from zoo.models.dvae.lit import psnr_from_mse
from zoo.models.vqvae.model import VQVAE, build_config


class VQVAELit(L.LightningModule):
    def __init__(self, preset: str = "shapes", net: Optional[dict[str, Any]] = None, optimizer=None, scheduler=None):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.cfg = build_config(preset, net)
        self.vqvae = VQVAE(self.cfg).to(memory_format=torch.channels_last)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.grid_nrow = 8
        self._counts: Optional[torch.Tensor] = None

    @property
    def tokenizer(self) -> VQVAE:
        return self.vqvae

    def forward_loss(self, images: torch.Tensor, step: Optional[int] = None) -> dict[str, torch.Tensor]:
        q = self.vqvae(images)
        recon = F.mse_loss(q["recon"].float(), images.float())  # in [-1, 1]: 4x the [0, 1] MSE
        q["mse"] = recon.detach() / 4
        q["loss"] = recon + q["loss"]
        return q

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        r = self.forward_loss(batch["image"])
        self.log_dict({
            "train/loss": r["loss"], "train/recon_mse": r["mse"], "train/psnr": psnr_from_mse(r["mse"]),
            "train/commitment": r["commitment"], "train/perplexity": r["perplexity"],
            "train/beta": self.cfg.beta,
        })
        self.log("loss", r["loss"], prog_bar=True, logger=False)
        return r["loss"]

    def on_validation_epoch_start(self) -> None:
        self._counts = torch.zeros(self.cfg.codebook_size, dtype=torch.long, device=self.device)

    on_test_epoch_start = on_validation_epoch_start

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        images = batch["image"]
        r = self.forward_loss(images)
        self._counts += torch.bincount(r["codes"].flatten(), minlength=self.cfg.codebook_size)
        self.log_dict({f"{stage}/loss": r["loss"], f"{stage}/recon_mse": r["mse"],
                       f"{stage}/psnr": psnr_from_mse(r["mse"])}, batch_size=images.shape[0])

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def _log_usage(self, stage: str) -> None:
        counts = self._counts
        if counts is None or counts.sum() == 0:
            return
        if self.trainer.world_size > 1:
            counts = self.all_gather(counts).sum(0)
        p = counts.float() / counts.sum()
        self.log(f"{stage}/codebook_usage", 100.0 * (counts > 0).float().mean(), rank_zero_only=True)
        self.log(f"{stage}/perplexity", torch.exp(-(p[p > 0] * p[p > 0].log()).sum()), rank_zero_only=True)

    def on_validation_epoch_end(self) -> None:
        self._log_usage("val")

    def on_test_epoch_end(self) -> None:
        self._log_usage("test")

    @torch.no_grad()
    def sample_grid(self, batch: dict[str, Any]) -> torch.Tensor:
        images = batch["image"][: self.grid_nrow]
        recon = self.vqvae.decode(self.vqvae.encode(images))
        return torch.stack([images.float(), recon.float()], 1).flatten(0, 1)

    def check_data(self, datamodule) -> None:
        res = getattr(datamodule, "resolution", None)
        f = self.cfg.downsample_factor
        if res is not None and res % f:
            raise ConfigError(f"data.resolution={res} is not divisible by the VQ-VAE downsample factor {f} "
                              f"(fix: data.resolution={res - res % f or f}, or model.net.n_down)")
        if res is not None:
            self.vqvae.resolution = res

    def configure_optimizers(self):
        opt = (self.optimizer_factory or (lambda p: torch.optim.AdamW(p, lr=1e-3)))(self.parameters())
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "step"}}
