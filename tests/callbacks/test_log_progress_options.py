"""zoo.callbacks.progress.LogProgress's options: each bad value a ConfigError naming callbacks.log_progress.<option>
and its fix (its other behaviour is tested in tests/test_progress.py)."""

from __future__ import annotations

import pytest

from zoo.callbacks.progress import LogProgress
from zoo.errors import ConfigError


@pytest.mark.parametrize(
    "bad, key",
    [
        ({"every_seconds": float("nan")}, "every_seconds"),  # accepted: no time-based line was ever written
        ({"every_seconds": 0}, "every_seconds"),
        ({"every_n_steps": 0}, "every_n_steps"),
        ({"every_n_steps": 2.5}, "every_n_steps"),  # int() took 2
    ],
)
def test_bad_options_name_the_option_and_the_fix(bad, key):
    with pytest.raises(ConfigError, match=rf"callbacks\.log_progress\.{key}=.*fix: callbacks\.log_progress\.{key}="):
        LogProgress(**bad)
    assert LogProgress(every_n_steps=None, every_seconds=0.5).every_seconds == 0.5
