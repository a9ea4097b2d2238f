"""Atomic checkpoint writes and weights_only loads."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from zoo.checkpoint import UnsafeCheckpointError, atomic_torch_save, safe_load


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned_marker",))


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {}, "payload": _Evil()}, f)
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        safe_load(path)
    assert not (tmp_path / "pwned_marker").exists()


def test_malicious_checkpoint_refused_by_zoo_train(train_cfg, tmp_path, monkeypatch, train_helpers):
    from zoo.train import train

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Evil()}, path)
    cfg = train_cfg(
        "model=dvae",
        "model.preset=tiny",
        *train_helpers.sizes(),
        "logger=none",
        "trainer=cpu",
        f"ckpt_path={path}",
    )
    with pytest.raises(pickle.UnpicklingError):
        train(cfg)
    assert not (tmp_path / "pwned_marker").exists()


def test_atomic_save_keeps_previous_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1, "w": torch.ones(3)}, path)

    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        f.write(b"partial garbage")  # some bytes reach the disk, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    got = safe_load(path)
    assert got["step"] == 1 and torch.equal(got["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"], "temp file left behind"


def test_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        safe_load(tmp_path / "nope.ckpt")
