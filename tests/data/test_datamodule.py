"""ImageTextDataModule: options checked before training starts (through the shapes world, which needs no files)."""

from __future__ import annotations

import pytest

from zoo.data.modules import ShapesDataModule
from zoo.errors import ConfigError

SMALL = dict(train_size=4, val_size=4, test_size=4, resolution=32)


def test_a_batch_larger_than_the_train_split_is_refused_not_trained_for_zero_steps():
    """drop_last left no training batch: Lightning stopped fit with 'No training batches' and the run exited 0,
    testing and saving an untrained model."""
    dm = ShapesDataModule(batch_size=8, **SMALL)
    dm.setup("fit")
    with pytest.raises(ConfigError, match=r"data.batch_size=8 is more than the 4 items of the train split.*fix"):
        dm.train_dataloader()
    assert len(dm.val_dataloader()) == 1  # evaluation keeps its partial batch
    assert len(ShapesDataModule(batch_size=4, **SMALL).train_dataloader()) == 1
