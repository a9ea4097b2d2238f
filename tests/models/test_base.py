"""The one LightningModule base (zoo.models.base) and the one preset resolver (zoo.models.presets)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import pytest
import torch

from zoo.errors import ConfigError
from zoo.models.base import ZooLit, cosine_with_warmup
from zoo.models.presets import resolve_preset


@dataclass(frozen=True)
class _Cfg:
    width: int = 4
    mults: tuple[int, ...] = (1, 2)


_PRESETS = {"tiny": _Cfg(2), "shapes": _Cfg()}


def test_resolve_preset_overrides_and_errors():
    assert resolve_preset(_PRESETS, _Cfg, "tiny", None, "toy") is _PRESETS["tiny"]
    cfg = resolve_preset(_PRESETS, _Cfg, "shapes", {"width": 8, "mults": [1, 2, 4]}, "toy")
    assert cfg == _Cfg(8, (1, 2, 4))  # YAML lists become the field's tuple
    with pytest.raises(ConfigError, match=r"unknown toy preset 'huge'.*\['shapes', 'tiny'\].*model.preset"):
        resolve_preset(_PRESETS, _Cfg, "huge", None, "toy")
    with pytest.raises(ConfigError, match=r"unknown toy field\(s\) \['depth'\].*valid: \['mults', 'width'\]"):
        resolve_preset(_PRESETS, _Cfg, "tiny", {"depth": 3}, "toy")
    assert issubclass(ConfigError, ValueError)


class _Toy(ZooLit):
    def __init__(self, optimizer=None, scheduler=None, freeze=False):
        super().__init__(optimizer, scheduler)
        self.a = torch.nn.Linear(2, 2)
        self.b = torch.nn.Linear(2, 2)
        if freeze:
            self.b.requires_grad_(False)


def test_configure_optimizers_default_factory_and_scheduler():
    opt = _Toy(freeze=True).configure_optimizers()
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["lr"] == 1e-3
    assert len(opt.param_groups[0]["params"]) == 2  # only trainable parameters
    m = _Toy(
        optimizer=functools.partial(torch.optim.SGD, lr=0.5),
        scheduler=functools.partial(cosine_with_warmup, warmup_steps=2, total_steps=10),
    )
    out = m.configure_optimizers()
    assert isinstance(out["optimizer"], torch.optim.SGD) and out["optimizer"].param_groups[0]["lr"] == 0.25
    assert out["lr_scheduler"]["interval"] == "step"


def test_trainable_parameters_hook_and_default_optimizer_override():
    class Groups(_Toy):
        def trainable_parameters(self):
            return [{"params": list(self.a.parameters())}, {"params": list(self.b.parameters()), "weight_decay": 0.0}]

        def default_optimizer(self, params):
            return torch.optim.AdamW(params, lr=5e-4, weight_decay=0.1)

    opt = Groups().configure_optimizers()
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0] and opt.param_groups[0]["lr"] == 5e-4


def test_cosine_with_warmup_shape():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = cosine_with_warmup(opt, warmup_steps=4, total_steps=14, min_ratio=0.1)
    lrs = []
    for _ in range(16):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0) and lrs[14] == pytest.approx(0.1) and lrs[15] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


def test_every_lit_uses_the_base():
    from zoo.models.clip.lit import ClipLit
    from zoo.models.dalle.lit import DalleLit
    from zoo.models.dvae.lit import DVAELit
    from zoo.models.vqvae.lit import VQVAELit

    for cls in (DVAELit, VQVAELit, ClipLit, DalleLit):
        assert issubclass(cls, ZooLit), cls
        assert "configure_optimizers" not in cls.__dict__, cls  # the base's, with the hooks
