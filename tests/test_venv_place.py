"""Where `make` puts the virtualenv (.ci/venv_place.py): beside the checkout when the disk has room, on a RAM-backed
fallback with a link when it does not, and a clear error naming both places when neither fits."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def vp(monkeypatch):
    spec = importlib.util.spec_from_file_location("venv_place", ROOT / ".ci" / "venv_place.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # a venv with pip takes seconds; what is checked here is where it goes, so creating it only writes the marker
    made = []

    class FakeBuilder:
        def __init__(self, with_pip):
            assert with_pip, "the fallback venv needs pip: the Makefile installs with VENV/bin/python -m pip"

        def create(self, path):
            made.append(path)
            (Path(path) / "bin").mkdir(parents=True)
            (Path(path) / "bin" / "python").write_text("")

    monkeypatch.setattr(mod.venv_module, "EnvBuilder", FakeBuilder)
    mod.made = made
    return mod


def _places(tmp_path):
    """A stand-in disk (where the checkout is) and a stand-in /dev/shm."""
    disk, shm = tmp_path / "disk", tmp_path / "shm"
    disk.mkdir(), shm.mkdir()
    return disk, shm


def _free(mapping):
    """free_gb stand-in: GB free by which of the given directories the path lies under."""

    def free_gb(path):
        path = os.path.abspath(path)
        for root, gb in mapping.items():
            if path == str(root) or path.startswith(str(root) + os.sep):
                return gb
        raise AssertionError(f"free_gb asked about {path}")

    return free_gb


def test_enough_disk_keeps_the_venv_beside_the_checkout(vp, tmp_path, monkeypatch):
    disk, shm = _places(tmp_path)
    monkeypatch.setattr(vp, "free_gb", _free({disk: 7.5, shm: 24}))
    action, msg = vp.place(str(disk / ".venv"), 7, str(shm), mem_gb=20)
    assert (action, msg) == ("here", "")
    assert not (disk / ".venv").exists() and vp.made == []


def test_short_disk_puts_the_venv_on_the_tmpfs_and_links_it(vp, tmp_path, monkeypatch):
    disk, shm = _places(tmp_path)
    monkeypatch.setattr(vp, "free_gb", _free({disk: 2.0, shm: 24}))
    monkeypatch.setattr(vp, "is_tmpfs", lambda p: True)
    action, msg = vp.place(str(disk / ".venv"), 7, str(shm), mem_gb=22)
    assert action == "link"
    link = disk / ".venv"
    assert link.is_symlink()
    real = Path(os.readlink(link))
    assert real.parent == shm / "dalle-zoo-venvs" and vp.made == [str(real)]
    assert (link / "bin" / "python").exists()
    assert "2.0 GB free" in msg and str(real) in msg and "RAM-backed" in msg and "VENV=" in msg
    # a second checkout gets its own venv, never this one
    other = tmp_path / "disk" / "clone2"
    other.mkdir()
    vp.place(str(other / ".venv"), 7, str(shm), mem_gb=22)
    assert Path(os.readlink(other / ".venv")) != real


def test_a_link_left_dangling_by_a_reboot_is_replaced(vp, tmp_path, monkeypatch):
    disk, shm = _places(tmp_path)
    os.symlink(shm / "dalle-zoo-venvs" / "gone", disk / ".venv")  # tmpfs emptied at reboot
    monkeypatch.setattr(vp, "free_gb", _free({disk: 50, shm: 24}))
    action, _ = vp.place(str(disk / ".venv"), 7, str(shm), mem_gb=22)
    # the disk has room now: the dead link is dropped and the venv is made on disk as usual
    assert action == "here" and not os.path.lexists(disk / ".venv")


def test_no_room_anywhere_is_an_error_naming_both_places_and_the_fixes(vp, tmp_path, monkeypatch):
    disk, shm = _places(tmp_path)
    monkeypatch.setattr(vp, "free_gb", _free({disk: 2.0, shm: 3.0}))
    monkeypatch.setattr(vp, "is_tmpfs", lambda p: True)
    action, msg = vp.place(str(disk / ".venv"), 7, str(shm), mem_gb=22)
    assert action == "error" and not os.path.lexists(disk / ".venv")
    assert "2.0 GB free" in msg and "3.0 GB free at" in msg and str(shm) in msg
    assert "VENV=" in msg and "ZOO_VENV_FALLBACK=" in msg


def test_a_ram_backed_venv_that_would_starve_the_work_of_memory_is_refused(vp, tmp_path, monkeypatch):
    disk, shm = _places(tmp_path)
    monkeypatch.setattr(vp, "free_gb", _free({disk: 2.0, shm: 24}))
    monkeypatch.setattr(vp, "is_tmpfs", lambda p: True)
    # 12 GB available - 7 GB venv = 5 GB left for the tests: under the 8 GB kept for the work
    action, msg = vp.place(str(disk / ".venv"), 7, str(shm), mem_gb=12)
    assert action == "error" and "5.0 GB of memory" in msg
    # on a real disk (not RAM-backed) memory does not matter
    monkeypatch.setattr(vp, "is_tmpfs", lambda p: False)
    action, msg = vp.place(str(disk / ".venv"), 7, str(shm), mem_gb=12)
    assert action == "link" and "another file system" in msg


def test_is_tmpfs_reads_the_mount_table(vp):
    if not Path("/proc/mounts").exists():
        pytest.skip("no /proc/mounts on this system")
    mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    tmpfs = [m[1] for m in mounts if m[2] == "tmpfs" and os.path.isdir(m[1]) and " " not in m[1]]
    if tmpfs:
        assert vp.is_tmpfs(tmpfs[0])
    root_kind = next((m[2] for m in mounts if m[1] == "/"), None)
    assert vp.is_tmpfs("/") == (root_kind in ("tmpfs", "ramfs"))


def test_the_script_exits_1_with_its_message_when_nothing_fits(tmp_path):
    # a real run of the script as the Makefile calls it: 1000 GB fits nowhere here
    r = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "venv_place.py"), str(tmp_path / ".venv"), "1000"],
        capture_output=True,
        text=True,
        env={**os.environ, "ZOO_VENV_FALLBACK": str(tmp_path)},
    )
    assert r.returncode == 1
    assert r.stderr.startswith("error:") and "the venv needs about 1000 GB" in r.stderr
    assert not os.path.lexists(tmp_path / ".venv")
