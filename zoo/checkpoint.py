"""Safe checkpoint I/O: atomic writes and ``weights_only`` loads.

Writes go to a temporary file in the same directory and are moved into place with ``os.replace`` (atomic on POSIX),
so a process killed mid-save leaves the previous file intact. Every load of a user-given file goes through
``safe_load`` which uses ``weights_only=True``: a pickle that carries code is refused instead of executed.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` that never leaves a half-written file at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Leave no temp litter behind; the old checkpoint (if any) is untouched.
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The file holds objects that ``weights_only=True`` refuses to unpickle (possibly code)."""


def safe_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True``; explain refusals and missing files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (check the path you passed)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"refused to load {path}: it contains objects that are not plain tensors/containers "
            f"(weights_only=True). If you made this file and trust it, re-save its state_dict only. Detail: {e}"
        ) from e


def load_module(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Rebuild a zoo LightningModule from a checkpoint written by ``zoo-train`` (weights_only load).

    The class is taken from the checkpoint's ``zoo_class`` stamp and must live in the ``zoo`` package, so a
    crafted file cannot make us import arbitrary code.
    """
    import importlib

    ckpt = safe_load(path, map_location=map_location)
    name = ckpt.get("zoo_class") if isinstance(ckpt, dict) else None
    if not name or not name.startswith("zoo."):
        raise ValueError(f"{path} was not written by zoo-train (no zoo_class stamp); load it with its class instead")
    module_name, cls_name = name.rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), cls_name)
    model = cls(**ckpt.get("hyper_parameters", {}))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    model.zoo_config = ckpt.get("zoo_config", {})
    return model
