"""Stamps every checkpoint with what is needed to rebuild its model, and makes resumption exact.

Lightning restores weights, optimizer, schedulers, loop counters and (through ``ResumableDataLoader``) the data
position, but not the random number generators; models that draw noise every step (Gumbel-softmax, diffusion
timesteps, caption dropout) would then diverge from an uninterrupted run. We save and restore the torch and Python
RNG states so that "train 2N steps" and "train N, kill, resume N" give the same weights.
"""

from __future__ import annotations

import random
from typing import Any, Optional

import lightning as L
import torch


class CheckpointInfo(L.Callback):
    """Adds ``zoo_component`` (the LightningModule's name in ``zoo.registry``: a name, not an import path, so a
    file can only ever choose among the project's own components), ``zoo_config`` (the resolved run config, plain
    dicts/strings only so that ``weights_only=True`` loads it) and ``zoo_rng`` to every checkpoint."""

    def __init__(self, config: Optional[dict[str, Any]] = None):
        self.config = config or {}

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        from zoo.registry import component_name_of

        checkpoint["zoo_component"] = component_name_of(pl_module)
        checkpoint["zoo_config"] = self.config
        version, state, gauss = random.getstate()
        checkpoint["zoo_rng"] = {
            "torch": torch.get_rng_state(),
            "python": [version, list(state), gauss],
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        rng = checkpoint.get("zoo_rng")
        if not rng:
            return
        torch.set_rng_state(rng["torch"])
        version, state, gauss = rng["python"]
        random.setstate((version, tuple(state), gauss))
