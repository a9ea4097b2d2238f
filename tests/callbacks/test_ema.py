"""zoo.callbacks.EMA: Lightning's EMAWeightAveraging, except that before its first update validation, checkpoints
and the end of fit use the current (trained) weights instead of a copy of the initial ones."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from zoo.callbacks import EMA


class _Lin(L.LightningModule):
    """A linear layer pulled towards 1.0 on a fixed batch: its weight moves every step (lr 0.1), so initial,
    trained and averaged weights are all different. Records the weight each validation saw."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(4, 1)
        self.initial = self.lin.weight.detach().clone()
        self.val_weights: list[torch.Tensor] = []

    def _loss(self, batch):
        return (self.lin(batch[0]) - 1.0).pow(2).mean()

    def training_step(self, batch, batch_idx):
        return self._loss(batch)

    def validation_step(self, batch, batch_idx):
        self.val_weights.append(self.lin.weight.detach().clone())
        self.log("val/loss", self._loss(batch))

    def _loader(self):
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=8)

    train_dataloader = val_dataloader = _loader

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(callbacks, **kw) -> L.Trainer:
    """A quiet CPU trainer; ``kw``: the run's length and validation schedule."""
    return L.Trainer(
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **kw,
    )


# validations after steps 2, 4, ...
EVERY_2 = {"num_sanity_val_steps": 0, "val_check_interval": 2, "check_val_every_n_epoch": None}


def _fit(tmp_path, start: int, steps: int = 4):
    model, ema = _Lin(), EMA(decay=0.5, update_starting_at_step=start)
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=steps)
    trainer = _trainer([ema, ckpt], max_steps=steps, **EVERY_2)  # validations after steps 2 and 4
    trainer.fit(model)
    raw = torch.load(tmp_path / "last.ckpt", weights_only=True)
    return model, ema, raw


def test_before_the_first_update_everything_uses_the_trained_weights(tmp_path):
    model, ema, ckpt = _fit(tmp_path, start=100)  # 4 steps: never averaged
    assert not ema.averaged()
    w = model.lin.weight.detach()
    assert not torch.allclose(w, model.initial)  # fit ended with the trained weights (Lightning: the initial ones)
    assert all(not torch.allclose(v, model.initial) for v in model.val_weights)  # validation saw training's progress
    assert not torch.allclose(model.val_weights[0], model.val_weights[1])
    torch.testing.assert_close(ckpt["state_dict"]["lin.weight"], w, rtol=0, atol=0)  # what samplers load
    torch.testing.assert_close(ckpt["current_model_state"]["lin.weight"], w, rtol=0, atol=0)
    assert int(ckpt["averaging_state"]["n_averaged"]) == 0  # Lightning's layout kept: resuming restores both


def test_after_the_first_update_it_is_lightnings_ema(tmp_path):
    model, ema, ckpt = _fit(tmp_path, start=1)  # updates after steps 2, 3 and 4
    assert ema.averaged()
    avg = ema._average_model.module.lin.weight.detach()
    torch.testing.assert_close(model.lin.weight.detach(), avg, rtol=0, atol=0)  # fit ends on the average
    torch.testing.assert_close(ckpt["state_dict"]["lin.weight"], avg, rtol=0, atol=0)
    assert not torch.allclose(ckpt["current_model_state"]["lin.weight"], avg)  # the raw weights, kept apart


class _LinRecording(_Lin):
    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.trained = {k: v.detach().clone() for k, v in self.state_dict().items()}


def _fit_epochs(path, epochs: int, resume: bool = False):
    from zoo.callbacks.last_checkpoint import LastCheckpoint

    model, ema = _LinRecording(), EMA(decay=0.5, update_starting_at_step=1)
    # every_n_train_steps above the run's length: last.ckpt is written when fit ends (on_train_end), after EMA
    # copied the average over the model -- the case of a run stopped by max_epochs, max_time or early stopping
    ckpt = LastCheckpoint(dirpath=path, save_top_k=0, save_last=True, every_n_train_steps=100)
    trainer = _trainer([ema, ckpt], max_epochs=epochs, limit_val_batches=0)
    trainer.fit(model, ckpt_path=str(path / "last.ckpt") if resume else None)
    return model, ema


def test_a_checkpoint_written_when_fit_ends_keeps_the_trained_weights_apart(tmp_path):
    model, ema = _fit_epochs(tmp_path / "a", 3)  # one step an epoch: 3 steps, averaged after steps 2 and 3
    raw = torch.load(tmp_path / "a" / "last.ckpt", weights_only=True)
    avg = ema._average_model.module.lin.weight.detach()
    assert raw["global_step"] == 3
    torch.testing.assert_close(raw["state_dict"]["lin.weight"], avg, rtol=0, atol=0)  # samplers load the average
    trained = model.trained["lin.weight"]
    assert not torch.allclose(trained, avg)
    torch.testing.assert_close(raw["current_model_state"]["lin.weight"], trained, rtol=0, atol=0)
    # and so "3 epochs, then resume to 6" is "6 epochs": the resumed run trains on from the trained weights
    resumed, ema_r = _fit_epochs(tmp_path / "a", 6, resume=True)
    straight, ema_s = _fit_epochs(tmp_path / "b", 6)
    torch.testing.assert_close(resumed.trained["lin.weight"], straight.trained["lin.weight"], rtol=0, atol=0)
    torch.testing.assert_close(
        ema_r._average_model.module.lin.weight, ema_s._average_model.module.lin.weight, rtol=0, atol=0
    )


class _LinStoppedInValidation(_LinRecording):
    """Ctrl-C lands inside the validation after step 4 (the EMA has averaged since step 2)."""

    def validation_step(self, batch, batch_idx):
        if self.trainer.global_step >= 4:
            raise KeyboardInterrupt
        return super().validation_step(batch, batch_idx)


def test_interrupted_inside_a_validation_the_checkpoint_is_not_swapped(tmp_path):
    from zoo.callbacks.interrupt_checkpoint import InterruptCheckpoint

    model, ema = _LinStoppedInValidation(), EMA(decay=0.5, update_starting_at_step=1)
    trainer = _trainer([ema, InterruptCheckpoint(dirpath=tmp_path, filename="interrupted")], max_steps=10, **EVERY_2)
    with pytest.raises(SystemExit):  # Lightning's answer to a KeyboardInterrupt, after on_exception
        trainer.fit(model)
    raw = torch.load(tmp_path / "interrupted.ckpt", weights_only=True)
    trained, avg = model.trained["lin.weight"], ema._average_model.module.lin.weight.detach()
    assert not torch.allclose(trained, avg)
    # validation had swapped the average into the model; the file must still say which is which
    torch.testing.assert_close(raw["current_model_state"]["lin.weight"], trained, rtol=0, atol=0)
    torch.testing.assert_close(raw["state_dict"]["lin.weight"], avg, rtol=0, atol=0)
    torch.testing.assert_close(model.lin.weight.detach(), trained, rtol=0, atol=0)


def test_a_frozen_tensor_stays_exactly_as_it_is_under_the_average():
    """Lightning's EMA update, decay * ema + (1 - decay) * p, is not exact when ema == p: a frozen tensor (a GLIDE
    with model.freeze_text's CLIP tower) drifted by rounding, and the drift was copied over the model when fit ended.
    The lerp form keeps it bit for bit; a changing tensor still gets the same average (to rounding)."""
    from torch.optim.swa_utils import AveragedModel

    torch.manual_seed(0)
    frozen, moving = torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)
    frozen.requires_grad_(False)
    model = torch.nn.ModuleDict({"frozen": frozen, "moving": moving})
    ema = EMA(decay=0.999)
    avg = AveragedModel(model, use_buffers=True, **ema._kwargs)  # as WeightAveraging.setup builds it
    want = None
    for _ in range(500):
        with torch.no_grad():
            moving.weight.add_(0.01)
        p = moving.weight.detach()
        want = p.clone() if want is None else 0.999 * want + 0.001 * p  # the first update copies
        avg.update_parameters(model)
    torch.testing.assert_close(avg.module["frozen"].weight, frozen.weight, rtol=0, atol=0)
    torch.testing.assert_close(avg.module["frozen"].bias, frozen.bias, rtol=0, atol=0)
    torch.testing.assert_close(avg.module["moving"].weight, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "bad, key",
    [
        ({"decay": float("nan")}, "decay"),  # every weight NaN at the end of fit, without a word
        ({"decay": 1.0}, "decay"),  # the first update's weights kept as the final model
        ({"decay": 1.5}, "decay"),  # Lightning's ValueError, naming no option
        ({"update_every_n_steps": 0}, "update_every_n_steps"),  # never averaged: no EMA, without a word
        ({"update_starting_at_step": -5}, "update_starting_at_step"),
    ],
)
def test_options_that_average_wrongly_are_config_errors(bad, key):
    from zoo.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"callbacks\.ema\.{key}=.*fix: "):
        EMA(**bad)
    EMA(decay=0.0, update_every_n_steps=2, update_starting_at_step=0)  # the edges that work
