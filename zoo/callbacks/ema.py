"""Lightning's ``EMAWeightAveraging``, except before its first update.

The EMA starts averaging at ``update_starting_at_step`` (100 in ``conf/callbacks/ema.yaml``: the first steps'
weights are noise the average should not carry). Until then Lightning's "average" is a copy of the *initial*
weights, and Lightning still swaps it in for validation (so val/loss and the sample grids show an untrained model),
writes it into checkpoints' ``state_dict`` (what samplers load) and copies it over the trained weights when
``fit`` ends: a run shorter than 100 steps ended with its initial weights. Here, while nothing has been averaged
(``n_averaged == 0``), validation, checkpoints and the end of training use the current weights; from the first
update on, behaviour is Lightning's. A checkpoint keeps Lightning's layout either way (``current_model_state`` +
``averaging_state``), so resuming restores both.

A checkpoint written after ``fit`` has ended (``last.ckpt`` of a run stopped by ``max_epochs``, ``max_time``, early
stopping or TimeBudget's hard stop: Lightning's checkpoint callbacks save it in ``on_train_end``, after this callback
has copied the average over the model) would have recorded the average as ``current_model_state`` too: the trained
weights were lost, and a resume went on training from the average. The trained weights are kept aside when fit ends
and written as ``current_model_state`` instead. Likewise, interrupted inside a validation (Ctrl-C, a crash), the
average is swapped back out before ``interrupted.ckpt`` is written.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import EMAWeightAveraging

from zoo.errors import ConfigError, check_number, check_whole


class EMA(EMAWeightAveraging):
    """``EMAWeightAveraging`` that stands aside until it has averaged once (see the module docstring)."""

    def __init__(self, *args, decay: float = 0.999, **kwargs):
        from torch.optim.swa_utils import get_ema_multi_avg_fn

        _check_options(decay, kwargs)
        # Lightning averages with get_ema_avg_fn, decay * ema + (1 - decay) * p, which is not exact when ema == p: a
        # frozen tensor (model.freeze_text's CLIP tower) drifted by rounding, ~16% of its entries after 2,000 updates,
        # and the drift was copied over the model when fit ended. The foreach lerp, ema + (1 - decay) (p - ema), is
        # the same average and leaves an unchanged tensor exactly as it is. AveragedModel takes one of the two, and
        # EMAWeightAveraging always passes avg_fn: swapped in the kwargs it builds the AveragedModel with
        super().__init__(*args, decay=decay, **kwargs)
        self._kwargs.pop("avg_fn", None)
        self._kwargs["multi_avg_fn"] = get_ema_multi_avg_fn(decay)
        self._swapped = False
        self._trained_state: dict[str, Any] | None = None  # the model's own weights once fit has ended

    def on_fit_start(self, trainer, pl_module) -> None:
        self._trained_state = None
        super().on_fit_start(trainer, pl_module)

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

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # Ctrl-C or a crash inside a validation: the average is still swapped into the model. Swap back before the
        # checkpoint callbacks (Lightning calls them after this one) write interrupted.ckpt, or it records the
        # average as the trained weights and the trained ones as the average
        if self._swapped:
            super().on_validation_epoch_end(trainer, pl_module)
            self._swapped = False

    def on_train_end(self, trainer, pl_module) -> None:
        if self.averaged():
            # what the resume point must hold as the trained weights (see the module docstring)
            # on the CPU: a second copy of a large model on its accelerator could run out of memory at the very end
            self._trained_state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}
            super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._average_model is not None and not self.averaged() and "current_model_state" in checkpoint:
            # the "average" is the initial weights: samplers loading state_dict get the trained ones instead
            checkpoint["state_dict"] = checkpoint["current_model_state"]
        elif self._trained_state is not None and "current_model_state" in checkpoint:
            # saved after fit ended: the model holds the average now, the trained weights were kept aside
            checkpoint["current_model_state"] = self._trained_state


def _check_options(decay: Any, kwargs: dict[str, Any]) -> None:
    """The options Lightning takes without a word and averages wrongly with: decay=nan made every weight NaN (the
    model at the end of fit, the validations, the checkpoints' state_dict); decay=1 kept the first update's weights
    (the model after update_starting_at_step steps) as the final model; update_every_n_steps=0 never averaged (the
    run trained without an EMA). Lightning itself refuses a decay outside [0, 1], with no option named."""
    problems: list[str] = []
    why = "1 would never move from the first update's weights"
    check_number("callbacks.ema.decay", decay, 0, 1, high_open=True, fix=0.999, why=why, problems=problems)
    why = "0 never averages: callbacks=default for no EMA"
    check_whole(
        "callbacks.ema.update_every_n_steps", kwargs.get("update_every_n_steps", 1), 1, why=why, problems=problems
    )
    for key in ("update_starting_at_step", "update_starting_at_epoch"):
        check_whole(f"callbacks.ema.{key}", kwargs.get(key), 0, "0, or null", none_ok=True, problems=problems)
    if problems:
        raise ConfigError("; ".join(problems))
