"""Errors that carry their own fix.

A ``ConfigError`` is raised before any training starts when a configuration cannot work; its message names the
problem and the override or file that fixes it, so a user never loses a run to a bad config.
"""

import math
from typing import Any, Optional


class ConfigError(ValueError):
    """A configuration the code cannot run; the message says how to fix it."""


def raise_all(problems: list[str], between: str) -> None:
    """One ``ConfigError`` for every problem found (each message names its own fix): a user fixes them in one
    attempt, not one per run. Nothing when ``problems`` is empty."""
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(
            f"{len(problems)} mismatches between {between}, fix all of them:\n"
            + "\n".join(f"  {i + 1}. {p}" for i, p in enumerate(problems))
        )


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights that are needed are not on this machine (nothing is downloaded at run time here)."""


def is_whole(value: Any, least: Optional[int] = None) -> bool:
    """An int (not a bool: True is an int to Python) of at least ``least``. The one test behind the "must be a whole
    number" options: Hydra hands over 1.5, "abc" or true as they are written, and int() or a range() took them for
    another count without a word.

    A whole float such as 2.0 is refused too, as ``zoo.kinds`` refuses it for an ``int`` field: Hydra reads ``2`` as
    an int, so 2.0 arrives only when written so (or computed), and one rule for every count (and every checkpoint's
    int field) is easier to trust than "2.0 passes here, not there"."""
    return isinstance(value, int) and not isinstance(value, bool) and (least is None or value >= least)


def is_number(
    value: Any,
    low: Optional[float] = None,
    high: Optional[float] = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> bool:
    """A finite int or float (not a bool, not Hydra's string "0.5", not NaN nor inf) in [low, high] (an end left out
    is unbounded; ``low_open`` / ``high_open`` leave that end out: (0, 1)). NaN passed a hand-written ``not x <= 0``
    and inf an ``x > 0``: a rate or duration of either ran without a word."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    # an int is exact whatever its size (math.isfinite would overflow converting 10**400); a float must be finite
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if low is not None and (value <= low if low_open else value < low):
        return False
    return high is None or (value < high if high_open else value <= high)


def shown(value: Any) -> str:
    """A value as a command line writes it, for a message: true / false, null, a string quoted ('3' is no 3)."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    return repr(value) if isinstance(value, str) else str(value)


def _refuse(option: str, value: Any, must: str, why: str, fix: Any, problems: Optional[list[str]]) -> None:
    """The one wording of a refused option: "<option>=<value> must be <kind>[: <why>] (fix: <option>=<fix>)"."""
    message = f"{option}={shown(value)} must be {must}{f': {why}' if why else ''} (fix: {option}={fix})"
    if problems is None:
        raise ConfigError(message)
    problems.append(message)


def check_whole(
    option: str,
    value: Any,
    least: Optional[int] = None,
    fix: Any = None,
    *,
    most: Optional[int] = None,
    none_ok: bool = False,
    why: str = "",
    problems: Optional[list[str]] = None,
) -> Any:
    """``value`` when it is a whole number (``is_whole``) in [least, most] (or None with ``none_ok``), else a
    ConfigError "<option>=<value> must be a whole number >= <least>[: <why>] (fix: <option>=<fix>)"; ``fix`` is
    what follows "<option>=" (``least`` when left out). With ``problems`` the message is appended there instead (for
    one error naming every problem) and None returned."""
    if (value is None and none_ok) or (is_whole(value, least) and (most is None or value <= most)):
        return value
    if least is not None and most is not None:
        must = f"a whole number from {least} to {most}"
    else:
        must = (
            "a whole number"
            + (f" >= {least}" if least is not None else "")
            + (f" <= {most}" if most is not None else "")
        )
    _refuse(option, value, must + (" or null" if none_ok else ""), why, least if fix is None else fix, problems)
    return None


def check_number(
    option: str,
    value: Any,
    low: Optional[float] = None,
    high: Optional[float] = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    fix: Any,
    none_ok: bool = False,
    why: str = "",
    problems: Optional[list[str]] = None,
) -> Any:
    """``value`` (unchanged: an int may be too large for a float) when it is a finite number (``is_number``) within the bounds (or None with ``none_ok``), else
    a ConfigError "<option>=<value> must be a number in [low, high)[: <why>] (fix: <option>=<fix>)". ``problems``
    as in ``check_whole``."""
    if value is None and none_ok:
        return None
    if is_number(value, low, high, low_open=low_open, high_open=high_open):
        return value
    if low is not None and high is not None:
        must = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        must = f"a number {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        must = f"a number {'<' if high_open else '<='} {high:g}"
    else:
        must = "a finite number"
    _refuse(option, value, must + (" or null" if none_ok else ""), why, fix, problems)
    return None


def check_rate(key: str, value: Any, fix: str) -> float:
    """A training dropout probability ``key`` in [0, 1) (the diffusion models' and priors' ``text_dropout`` and the
    like): a number, not Hydra's string "0.2" (a TypeError from the comparison) nor a bool (false passed as a rate
    of 0). 1 is refused: nothing conditional would be trained."""
    why = "the probability of a training example being dropped"
    return float(check_number(key, value, 0.0, 1.0, high_open=True, fix=fix, why=why))


def check_switch(key: str, value: Any) -> bool:
    """A true / false option: Hydra hands over a word as a string (model.inpaint=no), which bool() read as true."""
    if not isinstance(value, bool):
        _refuse(key, value, "true or false", "", "false", None)
    return value


def check_device(device, option: str) -> None:
    """A ``cuda`` device option on a machine without a visible CUDA device: one ConfigError naming ``option`` and the
    CPU fix, before anything loads (torch says "Found no NVIDIA driver on your system" from deep inside a load)."""
    import torch

    value = str(device or "cpu")
    try:  # a typo (gpu, cpux) failed inside the checkpoint load, reported as a truncated or corrupt file
        torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"{option}={value} is not a torch device (fix: {option}=cpu, or cuda / cuda:0)") from None
    if value.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{option}={value}, but no CUDA device is visible on this machine (fix: {option}=cpu)")
