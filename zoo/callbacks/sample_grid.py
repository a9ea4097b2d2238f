"""Writes what a generative model makes as a PNG grid after each validation, and logs it to W&B.

Any LightningModule that defines ``sample_grid(batch) -> (N, 3, H, W) in [-1, 1]`` gets this for free
(reconstructions for tokenizers, samples for generators). The same first validation batch is used every
time, so grids of successive epochs are comparable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torchvision.utils import save_image

from zoo.errors import check_whole


def _take(batch: Any, n: int) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch[:n].detach().cpu()
    if isinstance(batch, dict):
        return {k: _take(v, n) for k, v in batch.items()}
    if isinstance(batch, list):
        return batch[:n]
    return batch


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


class SampleGridCallback(L.Callback):
    """Save ``<dirpath>/<prefix>_step{global_step}.png`` after validation and log it as ``wandb.Image``."""

    def __init__(
        self, dirpath: Optional[str] = None, n_samples: int = 16, every_n_epochs: int = 1, prefix: str = "samples"
    ):
        # n_samples=0 failed on a ZeroDivisionError at the first validation, after the training steps before it;
        # every_n_epochs=0 or a negative count was taken for 1 (a grid every epoch) without a word
        no_grids = "callbacks.sample_grid=null for no grids"
        check_whole("callbacks.sample_grid.n_samples", n_samples, 1, f"16, or {no_grids}")
        check_whole(
            "callbacks.sample_grid.every_n_epochs",
            every_n_epochs,
            1,
            f"1 for a grid after every validation, or {no_grids}",
        )
        self.dirpath = dirpath
        self.n_samples = n_samples
        self.every_n_epochs = every_n_epochs
        self.prefix = prefix
        self._batch: Any = None
        self.last_path: Optional[Path] = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self._batch is None and batch_idx == 0 and dataloader_idx == 0:
            self._batch = _take(batch, self.n_samples)

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self._batch is None or not hasattr(pl_module, "sample_grid"):
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self.write(trainer, pl_module)

    def write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Optional[Path]:
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            images = pl_module.sample_grid(_to_device(self._batch, pl_module.device))
        pl_module.train(was_training)
        if images is None:  # the module cannot draw images now (it said why): no grid, and the run goes on
            return None
        images = images.detach().float().cpu().clamp(-1, 1).add(1).div(2)
        dirpath = Path(self.dirpath or Path(trainer.default_root_dir) / "samples")
        dirpath.mkdir(parents=True, exist_ok=True)
        path = dirpath / f"{self.prefix}_step{trainer.global_step:07d}.png"
        nrow = int(getattr(pl_module, "grid_nrow", 8))
        save_image(images, path, nrow=nrow, padding=2, pad_value=1.0)
        self.last_path = path
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                logger.log_image(key=f"{self.prefix}/grid", images=[str(path)], step=trainer.global_step)
        return path
