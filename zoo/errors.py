"""Errors that carry their own fix.

A ``ConfigError`` is raised before any training starts when a configuration cannot work; its message names the
problem and the override or file that fixes it, so a user never loses a run to a bad config.
"""

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
    another count without a word."""
    return isinstance(value, int) and not isinstance(value, bool) and (least is None or value >= least)


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
