"""Training the VQ-VAE (Lightning): MSE reconstruction + commitment (+ codebook loss without EMA)."""
from __future__ import annotations

from typing import Any, Optional

import lightning as L
import torch
import torch.nn.functional as F

from zoo.errors import ConfigError
from zoo.models.vqvae.model import VQVAE, build_config
from zoo.nn.image_tokenizer import codebook_stats, psnr_from_mse


class VQVAELit(L.LightningModule):
    def __init__(self, preset: str = "shapes", net: Optional[dict[str, Any]] = None, optimizer=None, scheduler=None):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.cfg = build_config(preset, net)
        self.vqvae = VQVAE(self.cfg).to(memory_format=torch.channels_last)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.grid_nrow = 8

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
            **({} if self.cfg.ema else {"train/codebook_loss": r["codebook_loss"]}),
        })
        self.log("loss", r["loss"], prog_bar=True, logger=False)
        return r["loss"]

    # --------------------------------------------------------------------------------------------- evaluation
    def on_validation_epoch_start(self) -> None:
        self._eval_stats = {
            "counts": torch.zeros(self.cfg.codebook_size, dtype=torch.long, device=self.device),
            "sse": torch.zeros((), dtype=torch.float64, device=self.device),
            "n": torch.zeros((), dtype=torch.float64, device=self.device),
        }

    on_test_epoch_start = on_validation_epoch_start

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        images = batch["image"]
        r = self.forward_loss(images)  # eval mode: nearest codes, no codebook update
        err = (r["recon"].float().clamp(-1, 1).add(1).div(2) - images.float().add(1).div(2)).pow(2)
        st = self._eval_stats
        st["counts"] += torch.bincount(r["codes"].flatten(), minlength=self.cfg.codebook_size)
        st["sse"] += err.sum().double()
        st["n"] += err.numel()
        self.log_dict({f"{stage}/loss": r["loss"], f"{stage}/commitment": r["commitment"]},
                      batch_size=images.shape[0])

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def _log_epoch(self, stage: str) -> None:
        """recon_mse / psnr over the whole epoch (PSNR of the epoch MSE), codebook usage and perplexity."""
        st = getattr(self, "_eval_stats", None)
        if st is None or st["n"] == 0:
            return
        if self.trainer.world_size > 1:
            st = {k: self.all_gather(v).sum(0) for k, v in st.items()}
        mse = (st["sse"] / st["n"]).float()
        usage, perplexity = codebook_stats(st["counts"])
        self.log_dict({f"{stage}/recon_mse": mse, f"{stage}/psnr": psnr_from_mse(mse),
                       f"{stage}/codebook_usage": usage, f"{stage}/perplexity": perplexity})

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

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
