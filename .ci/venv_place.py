"""Decide where the project's virtualenv goes before `make` creates it (run by the Makefile with the system Python).

The venv takes about 7 GB: torch 2.14.1 is a CUDA build, and 5.3 GB of it is nvidia-*, torch and triton. A disk
with less free space than that fails half-way through pip with "[Errno 28] No space left on device", so:

- enough room beside the checkout: nothing to do, the venv goes at VENV as always;
- not enough room, but a RAM-backed tmpfs (/dev/shm, or ZOO_VENV_FALLBACK=<dir>) has it and the machine keeps
  enough memory for the work itself: the venv is created there and VENV becomes a symlink to it. It is gone at the
  next reboot; the Makefile then finds the dangling link and builds the venv again. This is what lets `make test`
  run on a CI machine whose disk is nearly full (one CI run was lost to 2.0 GB free);
- neither: exit with an error that names both places, how much each has, and the fixes.

Standard library only: this runs before the venv (and torch) exist.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import venv as venv_module

GIB = 2**30
# what the work itself (pytest on 2 cores, make demo) needs in memory beside a RAM-backed venv: the suite's largest
# process peaked at 2.6 GB resident (`/usr/bin/time -v make test`); 8 GB leaves room for a user's larger run
KEEP_FOR_WORK_GB = 8.0


def free_gb(path: str) -> float:
    """Free space of the file system that holds `path`, or of its nearest existing parent."""
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free / GIB


def mem_available_gb() -> float:
    """MemAvailable from /proc/meminfo (Linux); infinity where it cannot be read, so the check does not block."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / GIB
    except OSError:
        pass
    return float("inf")


def is_tmpfs(path: str) -> bool:
    """True when `path` lies on a RAM-backed file system (tmpfs/ramfs) according to /proc/mounts."""
    try:
        with open("/proc/mounts") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return False
    real = os.path.realpath(path)
    best, kind = "", ""
    for fields in mounts:
        if len(fields) < 3:
            continue
        point = fields[1]
        if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
            best, kind = point, fields[2]
    return kind in ("tmpfs", "ramfs")


def place(venv: str, need_gb: float, fallback: str, mem_gb: float | None = None) -> tuple[str, str]:
    """Return (action, message): action is "here" (create the venv at `venv`), "link" (a venv directory was made on
    the fallback and `venv` now links to it) or "error" (message says why and what to do)."""
    target = os.path.abspath(venv)
    if os.path.islink(target) and not os.path.exists(target):
        # the RAM-backed venv it pointed to is gone (a reboot): drop the link, decide again
        os.unlink(target)
    if os.path.exists(target):
        return "here", ""
    parent = os.path.dirname(target)
    here = free_gb(parent)
    if here >= need_gb:
        return "here", ""
    mem = mem_available_gb() if mem_gb is None else mem_gb
    there = free_gb(fallback) if os.path.isdir(fallback) else 0.0
    ram_backed = is_tmpfs(fallback)
    spare = mem - need_gb if ram_backed else float("inf")
    if there >= need_gb and spare >= KEEP_FOR_WORK_GB:
        # one directory per checkout, so two clones on one machine never share (and half-upgrade) a venv
        key = hashlib.sha1(target.encode()).hexdigest()[:12]
        real = os.path.join(fallback, "dalle-zoo-venvs", key)
        # `python -m venv` refuses a symlinked directory, so the venv is made at its real place and VENV links to it;
        # `VENV/bin/python` then finds VENV/pyvenv.cfg through the link and its prefix is VENV
        if not os.path.exists(os.path.join(real, "bin", "python")):
            venv_module.EnvBuilder(with_pip=True).create(real)
        os.symlink(real, target)
        where = "RAM-backed: gone at reboot, and make then builds it again" if ram_backed else "another file system"
        return "link", (
            f"note: {here:.1f} GB free at {parent}, the venv needs about {need_gb:g} GB; it goes to {real} "
            f"({where}) and {venv} links to it. To keep it on disk instead: free space, or VENV=<dir on a bigger disk>"
        )
    why = f"{there:.1f} GB free at {fallback}"
    if ram_backed and there >= need_gb:
        why += f", but a venv there would leave {max(spare, 0):.1f} GB of memory (under {KEEP_FOR_WORK_GB:g} GB)"
    return "error", (
        f"error: {here:.1f} GB free where {venv} goes ({parent}); the venv needs about {need_gb:g} GB, and the "
        f"fallback has no room ({why}). Fix: free space (e.g. old clones or pytest-of-* in /tmp), or "
        f"VENV=<dir on a bigger disk>, or ZOO_VENV_FALLBACK=<dir with {need_gb:g} GB free>"
    )


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: venv_place.py <venv dir> <GB needed>", file=sys.stderr)
        return 2
    fallback = os.environ.get("ZOO_VENV_FALLBACK", "/dev/shm")
    action, message = place(argv[1], float(argv[2]), fallback)
    if message:
        print(message, file=sys.stderr)
    return 1 if action == "error" else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
