"""Errors that carry their own fix.

A ``ConfigError`` is raised before any training starts when a configuration cannot work; its message names the
problem and the override or file that fixes it, so a user never loses a run to a bad config.
"""


class ConfigError(ValueError):
    """A configuration the code cannot run; the message says how to fix it."""


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights that are needed are not on this machine (nothing is downloaded at run time here)."""
