"""Lightning's ``EMAWeightAveraging``, except before its first update.

The EMA starts averaging at ``update_starting_at_step`` (100 in ``conf/callbacks/ema.yaml``: the first steps'
weights are noise the average should not carry). Until then Lightning's "average" is a copy of the *initial*
weights, and Lightning still swaps it in for validation (so val/loss and the sample grids show an untrained model),
writes it into checkpoints' ``state_dict`` (what samplers load) and copies it over the trained weights when
``fit`` ends: a run shorter than 100 steps ended with its initial weights. Here, while nothing has been averaged
(``n_averaged == 0``), validation, checkpoints and the end of training use the current weights; from the first
update on, behaviour is Lightning's. A checkpoint keeps Lightning's layout either way (``current_model_state`` +
``averaging_state``), so resuming restores both.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import EMAWeightAveraging


class EMA(EMAWeightAveraging):
    """``EMAWeightAveraging`` that stands aside until it has averaged once (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._swapped = False

    def averaged(self) -> bool:
        """Whether the average holds anything yet (its first update copies the weights, later ones blend)."""
        return self._average_model is not None and int(self._average_model.n_averaged) > 0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._swapped = self.averaged()
        if self._swapped:
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._swapped:  # undo exactly what the start did: no update happens during validation
            super().on_validation_epoch_end(trainer, pl_module)
        self._swapped = False

    def on_train_end(self, trainer, pl_module) -> None:
        if self.averaged():
            super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._average_model is not None and not self.averaged() and "current_model_state" in checkpoint:
            # the "average" is the initial weights: samplers loading state_dict get the trained ones instead
            checkpoint["state_dict"] = checkpoint["current_model_state"]
