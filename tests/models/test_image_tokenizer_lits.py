"""What the dVAE and VQ-VAE modules share through ``zoo.models.base.ImageTokenizerLit``, tested once for both."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch

from zoo.errors import ConfigError
from zoo.models.dvae.lit import DVAELit
from zoo.models.vqvae.lit import VQVAELit

LITS = [DVAELit, VQVAELit]


@pytest.mark.parametrize("cls", LITS, ids=lambda c: c.__name__)
def test_check_data_names_the_fix_and_sets_the_grid(cls):
    m = cls(preset="shapes")  # downsample factor 4
    with pytest.raises(ConfigError, match="data.resolution"):
        m.check_data(SimpleNamespace(resolution=30))
    m.check_data(SimpleNamespace(resolution=64))  # adapts the tokenizer to the data (its docstring says so)
    assert m.tokenizer.grid_size == (16, 16)


@pytest.mark.parametrize("cls", LITS, ids=lambda c: c.__name__)
def test_hparams_are_plain_values_and_the_factory_builds_the_optimizer(cls):
    m = cls(preset="tiny", optimizer=functools.partial(torch.optim.AdamW, lr=5e-4))
    assert "optimizer" not in m.hparams and m.hparams.preset == "tiny"
    opt = m.configure_optimizers()
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["lr"] == 5e-4
