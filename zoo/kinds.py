"""Does this value fit this annotation: the one checker behind every config and checkpoint value check.

``kind_of(annotation)`` gives ``(check, what it must be)`` for the kinds config fields and constructor arguments have,
or None for a kind left to the code's own checks. Three places ask it: ``zoo.models.presets`` (a ``model.net.<field>``
override against its config dataclass, open_clip's config for CLIP), ``zoo.registry`` (a checkpoint's saved ``net``
against the same dataclass) and ``zoo.config.check_types`` (a Hydra node against its target's constructor). They had
two copies that drifted: one took ``[1, 2, 3]`` for a ``tuple[int, int]`` and ``true`` for ``Literal[1, 2]``, the other
any value for ``int | None``, ``dict`` or a tuple of floats.

Plain Python: no torch (a ``torch.Tensor`` annotation is recognised by name), no Lightning, no Hydra (a Hydra
``ListConfig`` is accepted wherever a list is: it is a ``Sequence``).
"""

from __future__ import annotations

import collections.abc
import types
import typing
from typing import Any, Callable, Literal, Optional, Union

from zoo.errors import is_number, is_whole

__all__ = ["Kind", "fits", "kind_of"]

Kind = tuple[Callable[[Any], bool], str]

_SEQUENCES = (tuple, list, collections.abc.Sequence)
_MAPPINGS = (dict, collections.abc.Mapping)


def is_list(v: Any) -> bool:
    # YAML, Hydra and torch.save hand a tuple field over as a list (or a ListConfig): any sequence but a string
    return isinstance(v, collections.abc.Sequence) and not isinstance(v, (str, bytes))


def _plural(what: str) -> str:
    """ "a whole number" -> "whole numbers", "a list of 2 whole numbers" -> "lists of 2 whole numbers"."""
    if what.startswith("a list"):
        return "lists" + what[len("a list") :]
    if what.startswith("a "):
        return what[2:] + "s"
    return f"values each {what}"


def _sequence_kind(args: tuple[Any, ...], fixed: bool) -> Optional[Kind]:
    if fixed and args and Ellipsis not in args:  # tuple[int, int]: that many entries, each of its position's kind
        kinds = [kind_of(a) for a in args]
        n = len(kinds)
        parts = {k[1] for k in kinds if k is not None}
        what = f"a list of {n} {_plural(parts.pop())}" if len(parts) == 1 and None not in kinds else f"a list of {n}"
        return (lambda v: is_list(v) and len(v) == n and all(k is None or k[0](m) for k, m in zip(kinds, v))), what
    inner = [a for a in args if a is not Ellipsis]
    kind = kind_of(inner[0]) if len(inner) == 1 else None
    if kind is None:
        return is_list, "a list"
    return (lambda v: is_list(v) and all(kind[0](m) for m in v)), f"a list of {_plural(kind[1])}"


def kind_of(annotation: Any) -> Optional[Kind]:
    """(check, what it must be) for an annotation, None for a kind left to the code's own checks (``Any``, a class,
    a callable; a Union with any such member).

    int: a whole number (``is_whole``: not a bool, not 2.0). float: a finite number, an int included (an int saved
    for a float field is a float's value), not a bool. bool: true or false (a word such as ``no`` is truthy). str.
    None. ``Literal[...]``: one of its values, of the same type (``true`` is not ``1``). ``tuple[X, ...]`` / ``list[X]``
    / ``Sequence[X]``: a list (or tuple) of X, nested ones included; ``tuple[X, Y]``: exactly that many, each of its
    position's kind. ``dict`` / ``Mapping[K, V]``: a mapping (values of V's kind). ``Optional`` / ``Union`` (also
    ``X | None``): any of its members. ``torch.Tensor``: a number (torch.optim's ``lr: float | Tensor``)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is bool:
        return (lambda v: isinstance(v, bool)), "true or false"
    if annotation is int:
        return is_whole, "a whole number"
    if annotation is float or (
        getattr(annotation, "__module__", "") == "torch" and getattr(annotation, "__name__", "") == "Tensor"
    ):
        return is_number, "a number"
    if annotation is str:
        return (lambda v: isinstance(v, str)), "a name"
    if annotation is type(None):
        return (lambda v: v is None), "null"
    if origin is Literal:
        return (lambda v: any(v == a and type(v) is type(a) for a in args)), f"one of {', '.join(map(str, args))}"
    if origin is Union or isinstance(annotation, types.UnionType):
        kinds = [kind_of(a) for a in args]
        if any(k is None for k in kinds):
            return None
        names = [k[1] for k in kinds]
        if "a number" in names:  # int | float: "a number" says it (ints are taken for floats)
            names = [n for n in names if n != "a whole number"]
        return (lambda v: any(k[0](v) for k in kinds)), " or ".join(dict.fromkeys(names))
    if origin in _SEQUENCES or annotation in _SEQUENCES:
        return _sequence_kind(args, fixed=origin is tuple)
    if origin in _MAPPINGS or annotation in _MAPPINGS:
        value = kind_of(args[1]) if len(args) == 2 else None
        if value is None:
            return (lambda v: isinstance(v, collections.abc.Mapping)), "a mapping"
        return (
            lambda v: isinstance(v, collections.abc.Mapping) and all(value[0](m) for m in v.values())
        ), f"a mapping to {_plural(value[1])}"
    return None


def fits(value: Any, annotation: Any) -> bool:
    """``value`` is of ``annotation``'s kind (``kind_of``); True for a kind left to the code's own checks."""
    kind = kind_of(annotation)
    return kind is None or kind[0](value)
