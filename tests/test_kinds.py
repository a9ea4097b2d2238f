"""zoo.kinds: one answer to "does this value fit this annotation" for both places that ask it about a network's
config: a ``model.net.<field>`` override (``zoo.models.presets.check_field_values``) and a checkpoint's saved ``net``
(``zoo.registry.check_dataclass_values``). They were two copies that drifted (one took ``[1, 2, 3]`` for a
``tuple[int, int]`` and ``true`` for ``Literal[1, 2]``, the other any value for ``int | None``, ``dict`` or a tuple
of floats); the table runs every row through both."""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Literal, Optional, Tuple, Union

import pytest
from omegaconf import ListConfig

from zoo.errors import ConfigError
from zoo.kinds import fits
from zoo.models.presets import check_field_values
from zoo.registry import _NET_DATACLASSES, UnsafeCheckpointError, _load, check_dataclass_values


@dataclasses.dataclass
class Every:
    """One field per annotation kind: those of the nets' config dataclasses, open_clip's, and the stronger rules."""

    flag: bool = True
    count: int = 3
    rate: float = 0.5
    name: str = "row"
    mults: tuple[int, ...] = (1, 2)
    quantizer: Literal["vq", "gumbel"] = "vq"
    level: Literal[1, 2] = 1
    restart_after: Optional[int] = None
    new_optional: int | None = None
    pair: tuple[int, int] = (1, 2)
    nested: tuple[tuple[int, int], ...] = ((1, 2),)
    floats: tuple[float, ...] = (0.5,)
    layers: Union[Tuple[int, int, int, int], int] = 2  # open_clip's CLIPVisionCfg.layers
    kwargs: dict = dataclasses.field(default_factory=dict)
    optional_kwargs: Optional[dict] = None


# field -> (values that fit, values that must be refused)
TABLE = {
    "flag": ([True, False], ["no", 1, 0, None]),
    "count": ([3, 0, -1, 10**400], [2.0, 2.5, True, "3", None]),
    "rate": ([0.5, 1, 0, -2.5], [True, "0.1", math.nan, math.inf, None]),  # 1: an int saved for a float
    "name": (["row", ""], [3, None, ["row"]]),
    "mults": ([[1, 2], (1, 2), [], ListConfig([1, 2])], [[1, 2.5], [True], "12", 3, None]),
    "quantizer": (["vq", "gumbel"], ["gumble", 1, None]),
    "level": ([1, 2], [True, 1.0, 3, "1"]),
    "restart_after": ([None, 20], ["20", 2.5, True]),
    "new_optional": ([None, 3], ["x", 3.5]),
    "pair": ([[1, 2], (3, 4)], [[1, 2, 3], [1], [1, "a"], [1, 2.0], 1]),
    "nested": ([[[1, 2], [3, 4]], [], ((1, 2),)], [[[1, 2, 3]], [[1, "x"]], [1, 2]]),
    "floats": ([[0.5, 1], []], [["a"], [math.nan], [False], 0.5]),
    "layers": ([2, [1, 2, 3, 4]], [[1, 2], 2.5, [1, 2, 3, 4.5]]),
    "kwargs": ([{}, {"a": 1}], [5, [1], None]),
    "optional_kwargs": ([None, {"a": 1}], ["x", [1]]),
}
ROWS = [(f, v, ok) for f, (good, bad) in TABLE.items() for ok, vs in ((True, good), (False, bad)) for v in vs]


def test_the_table_covers_every_annotation_kind_the_nets_config_dataclasses_use():
    """A field kind added to a net's config dataclass gets rows here (else the table would test the old kinds)."""
    table = set(typing.get_type_hints(Every).values())
    used = {t for entry in _NET_DATACLASSES.values() for t in typing.get_type_hints(_load(entry)).values()}
    assert used and used <= table, f"add rows for {used - table}"
    assert set(TABLE) == {f.name for f in dataclasses.fields(Every)}


@pytest.mark.parametrize(
    "field, value, ok", ROWS, ids=[f"{f}={v!r}-{'fits' if ok else 'refused'}" for f, v, ok in ROWS]
)
def test_both_entry_points_give_the_same_answer(field, value, ok):
    """The override check names model.net.<field>; the checkpoint check names the file's net.<field>."""
    assert fits(value, typing.get_type_hints(Every)[field]) is ok
    if ok:
        check_field_values(Every, {field: value})
        check_dataclass_values(Every, {field: value}, "run.ckpt: net")
        return
    with pytest.raises(ConfigError, match=rf"model\.net\.{field}=.+ must be .*\(fix: "):
        check_field_values(Every, {field: value})
    with pytest.raises(UnsafeCheckpointError, match=rf"run\.ckpt: net\.{field} must be .*\(Every\.{field}\), got "):
        check_dataclass_values(Every, {field: value}, "run.ckpt: net")


def test_the_kind_is_said_as_a_command_line_writes_it():
    with pytest.raises(ConfigError, match=r"pair=\[1, 2, 3\] must be a list of 2 whole numbers"):
        check_field_values(Every, {"pair": [1, 2, 3]})
    with pytest.raises(ConfigError, match=r"nested=\[1, 2\] must be a list of lists of 2 whole numbers"):
        check_field_values(Every, {"nested": [1, 2]})
    with pytest.raises(ConfigError, match=r"layers=\[1, 2\] must be a list of 4 whole numbers or a whole number"):
        check_field_values(Every, {"layers": [1, 2]})
    with pytest.raises(UnsafeCheckpointError, match=r"net\.level must be one of 1, 2 \(Every\.level\), got True"):
        check_dataclass_values(Every, {"level": True}, "run.ckpt: net")


def test_every_wrong_value_of_a_checkpoint_is_named_at_once_with_a_fix():
    with pytest.raises(UnsafeCheckpointError) as e:
        check_dataclass_values(Every, {"count": 2.5, "pair": [1], "name": "ok"}, "run.ckpt: net")
    msg = str(e.value)
    assert "net.count must be a whole number" in msg and "e.g. 3" in msg
    assert "net.pair must be a list of 2 whole numbers" in msg and "e.g. [1, 2]" in msg
    assert "net.name" not in msg  # a value that fits is not named
