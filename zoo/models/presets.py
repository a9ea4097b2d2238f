"""The one preset resolver every model uses: a named size preset plus field overrides.

Each ``zoo/models/<c>/model.py`` defines a config dataclass and ``PRESETS: dict[str, Config]`` (``tiny`` for tests,
``shapes`` for the built-in world, ``paper`` for the published sizes). Its LightningModule takes ``preset`` and
``net`` (a mapping of config-field overrides; the override argument is called ``net`` everywhere) and calls::

    cfg = resolve_preset(PRESETS, DVAEConfig, preset, net, "dVAE")

Errors are ``ConfigError`` (a ``ValueError``) naming the valid presets, the valid fields, or the kind a field must
be (``check_field_values``). Plain PyTorch: no Lightning, no Hydra (a Hydra ``ListConfig`` override is accepted
wherever a list is).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Optional, TypeVar

from zoo.errors import ConfigError, check_number, raise_all, shown
from zoo.kinds import kind_of

C = TypeVar("C")

__all__ = [
    "check_dropout",
    "check_field_values",
    "check_sizes",
    "check_unet_sizes",
    "kind_problems",
    "resolve_preset",
]


def check_field_values(
    config_cls: type, values: Mapping[str, Any], examples: Any = None, option: str = "model.net"
) -> None:
    """Every value in ``values`` (field name -> value) is of its field's annotated kind (``zoo.kinds.kind_of``, the
    check a checkpoint's saved ``net`` gets too), else one ``ConfigError`` naming each ``<option>.<field>``, what it
    must be and a fix (the value in ``examples``, a config instance, else the field's default). Hydra hands an
    override over as it is written: int() took ``channel_mult=[1,2.5]`` for a (1, 2) U-Net, a word (``ema=no``,
    ``text_loss_on_pad=no``) was truthy, and ``n_layers=2.5`` or ``n_hid=abc`` failed deep inside torch or on a
    comparison in ``__post_init__``."""
    fields = dataclasses.fields(config_cls)
    known = {f.name: getattr(examples, f.name, f.default) for f in fields}
    known = {k: v for k, v in known.items() if v is not dataclasses.MISSING}
    raise_all(
        kind_problems(typing.get_type_hints(config_cls), values, known, option),
        f"the {option} overrides and their fields' kinds",
    )


def kind_problems(
    hints: Mapping[str, Any], values: Mapping[str, Any], examples: Mapping[str, Any], option: str
) -> list[str]:
    """One message per value in ``values`` that is not of the kind ``hints`` (name -> annotation) gives its name:
    ``<option>.<name>=<value> must be <kind> (fix: <option>.<name>=<examples[name]>, or ...)``, the wording of
    every option check (``zoo.errors.check_whole``)."""
    problems = []
    for name, value in values.items():
        kind = kind_of(hints.get(name))
        if kind is None or kind[0](value):
            continue
        key = f"{option}.{name}"
        problems.append(
            f"{key}={shown(value)} must be {kind[1]} (fix: "
            + (f"{key}={example_text(examples[name])}, or " if name in examples else "")
            + f"no {key} override: the preset's)"
        )
    return problems


def check_sizes(cfg: Any, names: Sequence[str], what: str, least: int = 1) -> None:
    """The size fields ``names`` of ``cfg`` are at least ``least``, else one ``ConfigError`` naming each
    ``model.net.<field>`` with the field's default as the fix. A transformer with ``n_heads=0``, ``n_layers=0`` or
    ``dim=0`` builds and trains without a word (no attention, no blocks, a zero-width stream), and a zero-length
    condition (the captioner's ``n_prefix=0``) is never read."""
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    raise_all(
        [
            f"{what}: model.net.{n} must be at least {least}, got {getattr(cfg, n)} (fix: e.g. model.net.{n}="
            f"{defaults[n]}, or no override: the preset's)"
            for n in names
            if getattr(cfg, n) < least
        ],
        f"the {what}'s sizes",
    )


def check_unet_sizes(cfg: Any, what: str) -> None:
    """The U-Net fields every diffusion config shares (``width``, ``in_channels``, ``max_groups``, each
    ``channel_mult`` entry) are at least 1 (``check_sizes``), and ``dropout`` is in [0, 1) (``check_dropout``):
    width 0 built an upsampler of 3 parameters that trained without a word, and was GLIDE's bare ZeroDivisionError."""
    check_sizes(cfg, ("width", "in_channels", "max_groups"), what)
    if min(cfg.channel_mult, default=0) < 1:
        raise ConfigError(
            f"{what}: model.net.channel_mult={list(cfg.channel_mult)} needs at least one level and every multiplier "
            f">= 1 (fix: e.g. model.net.channel_mult=[1, 2, 2], or no override: the preset's)"
        )
    check_dropout(cfg)


def check_dropout(cfg: Any) -> None:
    """``cfg.dropout`` in [0, 1): torch refuses a probability outside [0, 1] only once the network is built, without
    naming the option, and takes 1.0, which zeroes every activation it is applied to (a string "0.1" was a
    TypeError of the comparison)."""
    check_number("model.net.dropout", cfg.dropout, 0, 1, high_open=True, fix=0.0)


def example_text(value: Any) -> str:
    """A value as an override writes it: true / false, [1, 2] for a tuple, null for None."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, tuple):
        return str(list(value))
    return str(value)


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
        net: field overrides (``model.net.<field>=...``); None or empty means the preset as is. Each must be of its
            field's kind (``check_field_values``), checked here, before the config's ``__post_init__`` compares or
            builds with it. A list given for a field whose preset value is a tuple becomes a tuple (configs from
            YAML carry lists).
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
    check_field_values(config_cls, net, base)
    for k, v in net.items():
        if isinstance(getattr(base, k, None), tuple) and isinstance(v, Sequence) and not isinstance(v, str):
            net[k] = tuple(v)
    return dataclasses.replace(base, **net)
