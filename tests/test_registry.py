"""zoo.registry's check of a checkpoint's saved ``net`` (now ``zoo.kinds``, shared with the model.net overrides) still
takes what existing checkpoints hold: lists where a tuple is annotated (YAML, Hydra and ``as_net`` write lists) and
ints for floats, for every preset of every registered net."""

from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch

from zoo.checkpoint import atomic_torch_save, load_module
from zoo.registry import _NET_DATACLASSES, UnsafeCheckpointError, checked_hparams


def _as_saved(cfg) -> dict:
    """A config as a checkpoint may hold it: tuples as lists, whole floats as ints."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, tuple):
            v = list(v)
        elif isinstance(v, float) and v.is_integer():
            v = int(v)
        out[f.name] = v
    return out


PRESETS = [(c, p) for c, (module, _) in _NET_DATACLASSES.items() for p in importlib.import_module(module).PRESETS]


@pytest.mark.parametrize("component, preset", PRESETS, ids=[f"{c}-{p}" for c, p in PRESETS])
def test_every_preset_saved_with_lists_and_ints_passes_the_checkpoint_check(component, preset):
    cfg = importlib.import_module(_NET_DATACLASSES[component][0]).PRESETS[preset]
    net = _as_saved(cfg)
    hp = checked_hparams(component, {"preset": preset, "net": net}, "old.ckpt")
    assert hp["net"] == net


def test_a_checkpoint_with_a_full_saved_net_loads(tmp_path):
    """End to end: a dVAE checkpoint whose net holds every field as saved (width_mults a list, logit_init_gain an
    int) rebuilds the same network."""
    from zoo.models.dvae.lit import DVAELit
    from zoo.models.dvae.model import PRESETS

    net = _as_saved(PRESETS["tiny"])
    assert isinstance(net["width_mults"], list) and isinstance(net["logit_init_gain"], int)
    state = DVAELit(preset="tiny").state_dict()
    path = tmp_path / "old.ckpt"
    atomic_torch_save(
        {"zoo_component": "dvae", "hyper_parameters": {"preset": "tiny", "net": net}, "state_dict": state}, path
    )
    model = load_module(path)
    assert model.cfg == PRESETS["tiny"]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_a_checkpoint_value_of_the_wrong_kind_is_refused_naming_the_file(tmp_path):
    from zoo.models.dvae.lit import DVAELit

    path = tmp_path / "edited.ckpt"
    atomic_torch_save(
        {
            "zoo_component": "dvae",
            "hyper_parameters": {"preset": "tiny", "net": {"width_mults": [1, 2, 2.5, 8]}},
            "state_dict": DVAELit(preset="tiny").state_dict(),
        },
        path,
    )
    with pytest.raises(UnsafeCheckpointError, match=rf"{path}: net\.width_mults must be a list of whole numbers"):
        load_module(path)
