"""Winograd F(4x4, 3x3) convolutions on the CPU, fp32: forward, input gradient and weight gradient.

Why: in fp32 the ADM U-Net's training step is convolution-bound, and oneDNN's direct 3x3 kernels already run near
the CPU's matmul rate. Winograd's F(4x4, 3x3) computes each 4x4 block of outputs from its 6x6 inputs with 36
multiplies per channel pair instead of 144 (4x fewer), at the price of transforms that are only additions. NNPACK
(in torch) has a Winograd forward but no weight gradient, and its 8x8 tiles waste most of their work on small
feature maps (the U-Net's 8 px level, where it is behind oneDNN). Here:

- the transforms are C (``winograd.c``, compiled on first use with the system's C compiler and cached): they run
  over channels in cache-sized chunks of tiles, ~14% of the ``shapes`` U-Net's training step (0.26 of 1.85 s in a
  profile on an AVX2 AMD EPYC, one thread);
- the multiplies are 36 batched matrix products done by torch (``torch.bmm``: MKL/oneDNN's sgemm);
- the weight gradient is the same transforms of the input and the output gradient, summed over tiles by the
  products, and the input gradient is a forward convolution with the flipped, transposed kernel.

Error against a float64 reference (``bench/bench_conv_backends.py``, max abs / max abs): 0.5-1.1e-5 for the U-Net's
convolutions, oneDNN's direct kernels 0.3-3e-6, NNPACK's 0.7-1.4e-5; ``tests/nn/test_winograd.py`` bounds it.

The compiled library lives in ``$ZOO_KERNEL_CACHE`` (default ``$XDG_CACHE_HOME/dalle-zoo/kernels``, else
``~/.cache/dalle-zoo/kernels``) under a name derived from the source, compiler and flags, so an edited source or
another compiler builds a new one; it is written to a temporary name and renamed, so concurrent processes never
load a half-written file. ``CC`` picks the compiler (default ``cc``, then ``gcc``, ``clang``). Without a compiler
:func:`library` raises :class:`WinogradUnavailable` naming the fix; ``conv_backend=auto`` then falls back to NNPACK.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Iterator, Optional

import torch

from zoo.precision import _capability

SOURCE = Path(__file__).with_name("winograd.c")
ABI = 1  # ZOO_WINOGRAD_ABI in winograd.c
CACHE_ENV = "ZOO_KERNEL_CACHE"
# Bytes of transformed tiles (input + the other operand) per chunk, so that a chunk stays in the CPU's cache. Timed
# with budgets of 1, 4, 16 MB and unbounded (AVX2 AMD EPYC, one thread, 11 shapes from 8 px at 512 channels to 256 px
# at 32): 4 MB was the fastest or within 10% of it everywhere; unbounded, a 256 px image of 64 channels (38 MB of
# tiles) was 2.3-2.6x slower.
CHUNK_BYTES = 4 << 20

# F(4x4, 3x3) with the points 0, +-1, +-2, infinity (Lavin & Gray 2016): g's transform G (6x3).
_G = torch.tensor(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    dtype=torch.float64,
)
_KW = torch.kron(_G, _G).float()  # (36, 9): vec(G g G^T) = _KW @ vec(g)


class WinogradUnavailable(RuntimeError):
    """The C kernels could not be built or loaded here (the message says why and what to do)."""


_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_error: Optional[str] = None


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dalle-zoo" / "kernels"


def _compiler() -> Optional[str]:
    for name in filter(None, (os.environ.get("CC"), "cc", "gcc", "clang")):
        found = shutil.which(name)
        if found:
            return found
    return None


def _flags() -> list[str]:
    flags = ["-O3", "-std=c99", "-fPIC", "-shared", "-fno-math-errno"]
    # AVX2 + FMA vectorise the channel loops 8 floats wide; only where torch itself found AVX2 (or better).
    if platform.machine().lower() in ("x86_64", "amd64") and _capability() in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma"]
    return flags


def _build(compiler: str, flags: list[str], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        run = subprocess.run([compiler, *flags, "-o", tmp, str(SOURCE)], capture_output=True, text=True)
        if run.returncode != 0:
            raise WinogradUnavailable(
                f"compiling {SOURCE} with {compiler} failed:\n{(run.stderr or run.stdout).strip()[-2000:]}\n"
                "Fix: set CC to a working C compiler, or conv_backend=torch (or nnpack)"
            )
        os.replace(tmp, target)  # atomic: another process sees the old name absent or the whole file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    ptr, i, n = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
    for name in ("zoo_winograd_input", "zoo_winograd_grad"):
        fn = getattr(lib, name)
        fn.argtypes = [ptr, i, i, i, i, n, n, n, n, n, n, ptr]
        fn.restype = i
    lib.zoo_winograd_output.argtypes = [ptr, i, i, i, i, n, n, n, n, n, n, ptr, ptr]
    lib.zoo_winograd_output.restype = i
    lib.zoo_winograd_abi.restype = i
    return lib


def library() -> ctypes.CDLL:
    """The compiled kernels (built on first use, then cached); raises :class:`WinogradUnavailable`."""
    global _lib, _error
    with _lock:
        if _lib is not None:
            return _lib
        if _error is not None:
            raise WinogradUnavailable(_error)
        try:
            _lib = _load()
        except WinogradUnavailable as e:
            _error = str(e)
            raise
        return _lib


def _load() -> ctypes.CDLL:
    compiler = _compiler()
    if compiler is None:
        raise WinogradUnavailable(
            "no C compiler found (looked for $CC, cc, gcc, clang) to build the Winograd kernels; "
            "install one (e.g. apt install gcc) or use conv_backend=torch (or nnpack)"
        )
    flags = _flags()
    key = hashlib.sha256(
        b"\0".join([SOURCE.read_bytes(), compiler.encode(), " ".join(flags).encode(), platform.machine().encode()])
    ).hexdigest()[:16]
    target = cache_dir() / f"winograd-{key}.so"
    for attempt in range(2):
        if not target.exists():
            try:
                _build(compiler, flags, target)
            except OSError as e:
                raise WinogradUnavailable(
                    f"could not write the Winograd kernels to {target.parent}: {e}; "
                    f"set {CACHE_ENV} to a writable directory, or conv_backend=torch"
                ) from e
        try:
            lib = _declare(ctypes.CDLL(str(target)))
            if lib.zoo_winograd_abi() != ABI:
                raise OSError(f"ABI {lib.zoo_winograd_abi()} != {ABI}")
            return lib
        except (OSError, AttributeError) as e:
            # a damaged file in the cache (a full disk, a crash mid-copy by hand): build it again, once
            if attempt == 1:
                raise WinogradUnavailable(f"could not load {target}: {e}; delete it or set {CACHE_ENV}") from e
            target.unlink(missing_ok=True)
    raise AssertionError("unreachable")


def available() -> tuple[bool, str]:
    """(whether the kernels load here, why not)."""
    try:
        library()
        return True, ""
    except WinogradUnavailable as e:
        return False, str(e)


def _tiles(h: int, w: int) -> tuple[int, int]:
    return -(-h // 4), -(-w // 4)


def _chunks(n: int, th: int, tw: int, bytes_per_tile: int) -> Iterator[tuple[int, int]]:
    """[p0, p1) ranges of whole tile rows, each about CHUNK_BYTES of transformed tiles."""
    rows = max(1, CHUNK_BYTES // max(1, bytes_per_tile * tw))
    total = n * th
    for r0 in range(0, total, rows):
        yield r0 * tw, min(total, r0 + rows) * tw


def _check(code: int, what: str) -> None:
    if code != 0:  # -1: out of memory; -2/-3: a caller's bug (chunk bounds)
        raise RuntimeError(f"Winograd {what} kernel failed (code {code})" + (": out of memory" if code == -1 else ""))


def weight_transform(w: torch.Tensor) -> torch.Tensor:
    """(O, C, 3, 3) -> (36, C, O): G g G^T for every channel pair, as the products' right-hand side."""
    o, c = w.shape[:2]
    return (_KW @ w.permute(2, 3, 1, 0).reshape(9, c * o)).view(36, c, o)


def conv3x3(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.conv2d(x, w, b, padding=1)`` for fp32 CPU tensors; x (N, C, H, W) of any strides, w (O, C, 3, 3). The
    output has x's memory format (channels_last in, channels_last out)."""
    lib = library()
    wt = weight_transform(w.float())
    n, c, h, w = x.shape
    o = wt.shape[2]
    th, tw = _tiles(h, w)
    cl = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    y = torch.empty(
        n, o, h, w, dtype=torch.float32, memory_format=torch.channels_last if cl else torch.contiguous_format
    )
    bias = None if b is None else b.detach().contiguous().float().data_ptr()
    v = m = None
    for p0, p1 in _chunks(n, th, tw, 36 * 4 * (c + o)):
        k = p1 - p0
        if v is None:  # the first chunk is the largest
            v, m = torch.empty(36 * k * c), torch.empty(36 * k * o)
        vk, mk = v[: 36 * k * c].view(36, k, c), m[: 36 * k * o].view(36, k, o)
        _check(lib.zoo_winograd_input(x.data_ptr(), n, c, h, w, *x.stride(), p0, p1, vk.data_ptr()), "input transform")
        torch.bmm(vk, wt, out=mk)
        _check(lib.zoo_winograd_output(mk.data_ptr(), n, o, h, w, *y.stride(), p0, p1, bias, y.data_ptr()), "output")
    return y


def weight_grad(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """d/dw of sum(grad * conv2d(x, w, padding=1)): (O, C, 3, 3) from x (N, C, H, W) and grad (N, O, H, W)."""
    lib = library()
    n, c, h, w = x.shape
    o = grad.shape[1]
    th, tw = _tiles(h, w)
    acc = v = u = None
    for p0, p1 in _chunks(n, th, tw, 36 * 4 * (c + o)):
        k = p1 - p0
        if v is None:
            v, u = torch.empty(36 * k * c), torch.empty(36 * k * o)
        vk, uk = v[: 36 * k * c].view(36, k, c), u[: 36 * k * o].view(36, k, o)
        _check(lib.zoo_winograd_input(x.data_ptr(), n, c, h, w, *x.stride(), p0, p1, vk.data_ptr()), "input transform")
        _check(lib.zoo_winograd_grad(grad.data_ptr(), n, o, h, w, *grad.stride(), p0, p1, uk.data_ptr()), "gradient")
        # the sum over the chunk's tiles, per transform position; the first chunk's product starts the sum (a zeroed
        # accumulator cost more than the products here: its pages are touched for the first time)
        if acc is None:
            acc = torch.bmm(uk.transpose(1, 2), vk)
        else:
            acc.baddbmm_(uk.transpose(1, 2), vk)
    if acc is None:  # an empty batch
        return torch.zeros(o, c, 3, 3)
    return (_KW.t() @ acc.view(36, o * c)).view(3, 3, o, c).permute(2, 3, 0, 1).contiguous()
