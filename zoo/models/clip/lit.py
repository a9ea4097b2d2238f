"""Training CLIP (Lightning) with open_clip's contrastive loss and learnable temperature.

Val reports text->image and image->text recall@1/@5 over the whole val epoch. Shapes captions repeat (two scenes
can share a caption), so recall counts a hit only for the paired index — a strict lower bound.
"""
from __future__ import annotations

from typing import Any, Optional

import lightning as L
import math
import open_clip
import torch

from zoo.models.clip.model import arch_for, create_clip, preprocess_cfg
from zoo.models.clip.scorer import ClipScorer


def recall_at_k(sim: torch.Tensor, k: int) -> float:
    """sim (N_queries, N_targets), query i's match is target i."""
    topk = sim.topk(min(k, sim.shape[1]), dim=1).indices
    return (topk == torch.arange(sim.shape[0], device=sim.device)[:, None]).any(1).float().mean().item()


class ClipLit(L.LightningModule):
    def __init__(self, preset: str = "shapes", arch: Optional[str] = None, net: Optional[dict[str, Any]] = None,
                 pretrained: Optional[str] = None, checkpoint: Optional[str] = None, optimizer=None, scheduler=None):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.arch = arch_for(preset, arch)
        self.clip = create_clip(self.arch, pretrained=pretrained, checkpoint=checkpoint, **dict(net or {}))
        self.tokenize = open_clip.get_tokenizer(self.arch)
        size, mean, std = preprocess_cfg(self.clip)
        self.image_size = size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.loss_fn = open_clip.ClipLoss()

    def scorer(self) -> ClipScorer:
        """A ClipScorer over this module's weights (shares them)."""
        size, mean, std = preprocess_cfg(self.clip)
        return ClipScorer(self.clip, self.tokenize, size, mean, std, device=self.device)

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().add(1).div(2)
        if x.shape[-1] != self.image_size:
            x = torch.nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic",
                                                antialias=True, align_corners=False).clamp(0, 1)
        return (x - self.mean) / self.std

    def embed(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.clip.encode_image(self._pixels(batch["image"]), normalize=True)
        txt = self.clip.encode_text(self.tokenize(batch["caption"]).to(self.device), normalize=True)
        return img, txt

    def setup(self, stage: str) -> None:
        # DDP: gather features from all ranks so each rank sees every negative
        self.loss_fn = open_clip.ClipLoss(local_loss=False, gather_with_grad=True, cache_labels=True,
                                          rank=self.global_rank, world_size=self.trainer.world_size)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        img, txt = self.embed(batch)
        loss = self.loss_fn(img.float(), txt.float(), self.clip.logit_scale.exp())
        self.log_dict({"train/loss": loss, "train/logit_scale": self.clip.logit_scale.exp()})
        self.log("loss", loss, prog_bar=True, logger=False)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        with torch.no_grad():  # CLIP's clamp: temperature no sharper than 1/100
            self.clip.logit_scale.clamp_(0, math.log(100))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        img, txt = self.embed(batch)
        self._val.append((img.float(), txt.float()))

    def on_validation_epoch_end(self) -> None:
        self._log_retrieval("val")

    def on_test_epoch_end(self) -> None:
        self._log_retrieval("test")

    def _log_retrieval(self, stage: str) -> None:
        if not self._val:
            return
        img = torch.cat([a for a, _ in self._val])
        txt = torch.cat([b for _, b in self._val])
        self._val.clear()
        logits = self.clip.logit_scale.exp() * txt @ img.t()  # (texts, images)
        labels = torch.arange(len(txt), device=txt.device)
        loss = (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.t(), labels)) / 2
        self.log_dict({
            f"{stage}/loss": loss, f"{stage}/t2i_r@1": recall_at_k(logits, 1), f"{stage}/t2i_r@5": recall_at_k(logits, 5),
            f"{stage}/i2t_r@1": recall_at_k(logits.t(), 1), f"{stage}/i2t_r@5": recall_at_k(logits.t(), 5),
        }, sync_dist=True)

    test_step = validation_step

    def configure_optimizers(self):
        # no weight decay on gains, biases, embeddings and the temperature (as open_clip's training does)
        decay, no_decay = [], []
        for n, p in self.named_parameters():
            (no_decay if p.ndim < 2 or "logit_scale" in n or "embedding" in n or "ln" in n else decay).append(p)
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        opt = (self.optimizer_factory or (lambda p: torch.optim.AdamW(p, lr=5e-4, weight_decay=0.1)))(groups)
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "step"}}
