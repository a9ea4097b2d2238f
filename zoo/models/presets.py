"""The one preset resolver every model uses: a named size preset plus field overrides.

Each ``zoo/models/<c>/model.py`` defines a config dataclass and ``PRESETS: dict[str, Config]`` (``tiny`` for tests,
``shapes`` for the built-in world, ``paper`` for the published sizes). Its LightningModule takes ``preset`` and
``net`` (a mapping of config-field overrides; the override argument is called ``net`` everywhere) and calls::

    cfg = resolve_preset(PRESETS, DVAEConfig, preset, net, "dVAE")

Errors are ``ConfigError`` (a ``ValueError``) naming the valid presets or the valid fields. Plain PyTorch: no
Lightning, no Hydra (a Hydra ``ListConfig`` override is accepted wherever a list is).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Optional, TypeVar

from zoo.errors import ConfigError

C = TypeVar("C")

__all__ = ["resolve_preset"]


def resolve_preset(
    presets: Mapping[str, C],
    config_cls: type[C],
    preset: str,
    net: Optional[Mapping[str, Any]] = None,
    what: str = "model",
) -> C:
    """``presets[preset]`` with the fields in ``net`` replaced (``dataclasses.replace``).

    Args:
        presets: name -> config dataclass instance.
        config_cls: the config dataclass (its fields are the valid ``net`` keys).
        preset: a key of ``presets`` (``model.preset=...``).
        net: field overrides (``model.net.<field>=...``); None or empty means the preset as is. A list given for a
            field whose preset value is a tuple becomes a tuple (configs from YAML carry lists).
        what: the model's name in error messages (``dVAE``, ``DALL·E transformer``, ...).
    """
    if preset not in presets:
        raise ConfigError(f"unknown {what} preset {preset!r}; choose one of {sorted(presets)} (model.preset=...)")
    base = presets[preset]
    net = dict(net or {})
    if not net:
        return base
    valid = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(net) - valid
    if unknown:
        raise ConfigError(f"unknown {what} field(s) {sorted(unknown)} in model.net; valid: {sorted(valid)}")
    for k, v in net.items():
        if isinstance(getattr(base, k, None), tuple) and isinstance(v, Sequence) and not isinstance(v, str):
            net[k] = tuple(v)
    return dataclasses.replace(base, **net)
