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


@pytest.mark.parametrize(
    "kwargs, says",
    [
        # a misspelt split's file was silently never read; a plain path was an AttributeError
        (dict(features={"training": "x.pt"}), r"data.features.training: unknown split 'training'.*fix: "),
        (dict(features="x.pt"), r"data.features must map a split to a file.*fix: data.features.train="),
        (dict(eval_batch_size=-1), r"data.eval_batch_size must be >= 1 or null"),  # was torch's message, no option
        (dict(world_seed=-1), r"data.world_seed must be a whole number >= 0.*fix: "),  # numpy's, no option named
        (dict(world_seed=1.5), r"data.world_seed must be a whole number >= 0"),  # truncated to world 1 silently
    ],
)
def test_bad_shapes_and_shared_options_name_the_option_and_the_fix(kwargs, says):
    with pytest.raises(ConfigError, match=says):
        ShapesDataModule(**{**SMALL, **kwargs})


def test_coco_max_items_that_is_not_a_positive_count_is_refused(tmp_path):
    """max_items=-1 (a common spelling of "all") sliced off the last image of every split without a word."""
    from zoo.data.modules import CocoDataModule

    for bad in (-1, 0, 2.5):
        with pytest.raises(ConfigError, match=r"data.max_items must be a whole number >= 1.*data.max_items=null"):
            CocoDataModule(root=str(tmp_path), max_items=bad)
    assert CocoDataModule(root=str(tmp_path), max_items=None).max_items is None


@pytest.mark.parametrize(
    "kwargs, says",
    [
        (dict(shuffle_buffer=-1), r"data.shuffle_buffer must be a whole number >= 0.*fix: "),  # training unshuffled
        (dict(epoch_length=-5), r"data.epoch_length must be a whole number.*fix: "),  # failed at len()
    ],
)
def test_bad_webdataset_options_are_refused_when_built(tmp_path, kwargs, says):
    from zoo.data.modules import WebDataModule

    with pytest.raises(ConfigError, match=says):
        WebDataModule(train_urls=str(tmp_path / "x.tar"), **kwargs)
