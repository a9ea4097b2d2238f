"""Numeric precision that fits the hardware: ``trainer.precision=auto`` and the bf16 choices of inference code.

bf16 only pays where the hardware computes it natively. On a CPU with AVX512-BF16 or AMX a 1024² matmul runs
several times faster in bf16 than in fp32; on an AVX2-only CPU torch emulates bf16 and the same matmul runs ~100x
*slower* (measured: 128 GFLOP/s fp32 vs 0.9 GFLOP/s bf16), so bf16 training there never finishes. Hence:

- :func:`resolve_precision` turns ``"auto"`` into ``"bf16-mixed"`` on CUDA devices with bf16 and on CPUs with native
  bf16, ``"32-true"`` otherwise; explicit values pass through (a WARNING when bf16 is asked of a CPU without it).
- :func:`autocast_dtype` is the same rule for inference code: ``torch.bfloat16`` or ``None`` (no autocast).
- :func:`describe_cpu` is one line for logs and benchmarks: what the numbers were measured on.

``ZOO_FORCE_NATIVE_BF16=0`` / ``=1`` overrides the CPU detection (tests; a machine the detection gets wrong).
Torch only (Lightning is not imported), so ``zoo.nn`` and benchmarks can use it.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
from pathlib import Path
from typing import Any, Optional, Union

import torch

log = logging.getLogger("zoo.precision")

ENV_OVERRIDE = "ZOO_FORCE_NATIVE_BF16"
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of x86 CPUs that compute bf16 in hardware
# Lightning's precision strings (lightning.fabric.connector._PRECISION_INPUT_STR) plus the legacy short forms it
# still accepts, and our "auto".
VALID_PRECISIONS = (
    "auto",
    "32-true",
    "bf16-mixed",
    "bf16-true",
    "16-mixed",
    "16-true",
    "64-true",
    "transformer-engine",
    "transformer-engine-float16",
)
LEGACY_PRECISIONS = ("32", "16", "64", "bf16")
_BF16 = ("bf16-mixed", "bf16-true", "bf16")
# fp16 mixed precision on the CPU: Lightning runs it as bf16 autocast there ("Using bfloat16 Automatic Mixed Precision")
_FP16_MIXED = ("16-mixed", "16")
NATIVE_FP16_FLAGS = ("avx512_fp16", "amx_fp16")  # x86 CPUs that compute fp16 in hardware (16-true's weights)


@functools.lru_cache(maxsize=1)
def _cpuinfo_flags() -> Optional[frozenset[str]]:
    """The ``flags`` of /proc/cpuinfo (Linux x86), or None where there is no such file."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def _native_bf16() -> tuple[bool, str]:
    """(does this CPU compute bf16 natively, the evidence in a few words)."""
    forced = os.environ.get(ENV_OVERRIDE, "").strip()
    if forced in ("0", "1"):
        return forced == "1", f"{ENV_OVERRIDE}={forced}"
    machine = platform.machine().lower()
    x86 = machine in ("x86_64", "amd64", "i386", "i686")
    flags = _cpuinfo_flags() if x86 and platform.system() == "Linux" else None
    if flags is not None:
        found = [f for f in NATIVE_BF16_FLAGS if f in flags]
        return bool(found), ", ".join(found) if found else f"no {' / '.join(NATIVE_BF16_FLAGS)} in /proc/cpuinfo"
    if x86:  # Windows / macOS on x86: torch's own cpuinfo probes (private helpers; absent in old torch)
        probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_tile": "_is_amx_tile_supported"}
        found = [name for name, fn in probes.items() if getattr(torch.cpu, fn, lambda: False)()]
        if found:
            return True, ", ".join(found)
    # ARM and the rest: bf16 support varies and torch's kernels for it are uneven, so be conservative.
    return False, f"not detected on {machine or 'this CPU'} (capability {_capability()}; assumed emulated)"


def _capability() -> str:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # pragma: no cover - very old torch
        return "unknown"


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (AVX512-BF16 or AMX); ``ZOO_FORCE_NATIVE_BF16=0/1`` overrides."""
    return _native_bf16()[0]


def bench_bf16(anyway: bool = False) -> bool:
    """Whether a benchmark should time bf16 autocast: where the CPU computes bf16 natively, or when asked
    (``anyway``, the benchmarks' ``--bf16-anyway``: on an AVX2-only CPU that times the emulation, ~100x slower than
    fp32). Prints why when it says no, so every benchmark explains a missing bf16 row the same way."""
    if anyway or cpu_has_native_bf16():
        return True
    print("bf16 rows: skipped (no native bf16 on this CPU: emulated bf16 would time the emulation; --bf16-anyway)")
    return False


def warn_if_emulated_bf16(option: str, fix: str) -> bool:
    """For an explicit request of bf16 on the CPU (``option``, e.g. ``--bf16``): a WARNING naming it and ``fix``
    when this CPU has no native bf16, where the request is honoured but runs the emulation. Returns whether bf16 is
    native."""
    native, why = _native_bf16()
    if not native:
        log.warning(
            "%s on a CPU without native bf16 (%s): bf16 matmuls are emulated and run 20-100x slower than fp32 "
            "(fix: %s)",
            option,
            why,
            fix,
        )
    return native


def _warn_if_emulated_fp16(option: str, fix: str) -> None:
    """``warn_if_emulated_bf16`` for fp16 weights (``16-true``): where /proc/cpuinfo lists neither AVX512-FP16 nor
    AMX-FP16, fp16 matmuls are emulated (measured on AVX2 kernels: 1.2 GFLOP/s against fp32's 71)."""
    flags = (
        _cpuinfo_flags() if platform.system() == "Linux" and platform.machine().lower() in ("x86_64", "amd64") else None
    )
    if flags is not None and not any(f in flags for f in NATIVE_FP16_FLAGS):
        log.warning(
            "%s on a CPU without native fp16 (no %s in /proc/cpuinfo): fp16 matmuls are emulated and run 20-100x "
            "slower than fp32 (fix: %s)",
            option,
            " / ".join(NATIVE_FP16_FLAGS),
            fix,
        )


def describe_cpu() -> str:
    """One line for logs and benchmarks, e.g. ``cpu: Intel(R) Xeon(R) Processor | torch capability AVX512 | native
    bf16: yes (avx512_bf16, amx_bf16)``."""
    native, why = _native_bf16()
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    except OSError:
        pass
    return f"cpu: {name} | torch capability {_capability()} | native bf16: {'yes' if native else 'no'} ({why})"


def _device_type(accelerator: Any) -> str:
    """Lightning accelerator name (or object) -> the device type it will run on: cpu, cuda, mps or other."""
    if accelerator is None or isinstance(accelerator, str):
        name = (accelerator or "auto").lower()
    else:  # an Accelerator instance: CPUAccelerator, CUDAAccelerator, MPSAccelerator, ...
        name = type(accelerator).__name__.lower()
    if name in ("auto", "none"):
        return "cuda" if torch.cuda.is_available() else "cpu"  # what Lightning's "auto" picks (MPS aside)
    if name.startswith(("gpu", "cuda")):
        return "cuda"
    if name.startswith("cpu"):
        return "cpu"
    if name.startswith("mps"):
        return "mps"
    return "other"


def check_precision(requested: Any) -> str:
    """``requested`` as a precision string; a ConfigError listing the valid values when it is not one."""
    value = str(requested).strip()
    if value in VALID_PRECISIONS or value in LEGACY_PRECISIONS:
        return value
    from zoo.errors import ConfigError  # (a plain module: no Lightning, no Hydra)

    raise ConfigError(
        f"trainer.precision={requested!r} is not a precision; valid: {', '.join(VALID_PRECISIONS)} "
        f"(fix: trainer.precision=auto picks bf16-mixed where the hardware has native bf16, else 32-true)"
    )


def resolve_precision(requested: Any, accelerator: Any = "auto") -> tuple[Union[str, int], str]:
    """(precision to give Lightning, why). ``"auto"`` -> ``"bf16-mixed"`` on a CUDA device with bf16 and on a CPU with
    native bf16, ``"32-true"`` otherwise. Any other valid value passes through unchanged (a WARNING if it asks for bf16
    on a CPU without native bf16 -- ``16-mixed`` too, which Lightning runs as bf16 autocast on the CPU -- or for fp16
    weights on one without native fp16); an invalid one raises ConfigError listing the valid values."""
    value = check_precision(requested)
    device = _device_type(accelerator)
    if value != "auto":
        fix = "trainer.precision=auto, or 32-true"
        if value in _BF16 and device == "cpu":
            warn_if_emulated_bf16(f"trainer.precision={value}", fix)
        elif value in _FP16_MIXED and device == "cpu":  # the same bf16 autocast under another name
            warn_if_emulated_bf16(f"trainer.precision={value} (on the CPU Lightning runs it as bf16 autocast)", fix)
        elif value == "16-true" and device == "cpu":
            _warn_if_emulated_fp16(f"trainer.precision={value}", fix)
        return requested, "set explicitly"
    if device == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16-mixed", f"CUDA device {torch.cuda.get_device_name()} supports bf16"
        return "32-true", "CUDA device without bf16" if torch.cuda.is_available() else "no CUDA device visible"
    if device == "cpu":
        native, why = _native_bf16()
        if native:
            return "bf16-mixed", f"CPU has native bf16: {why}"
        return "32-true", f"CPU has no native bf16: {why}"
    return "32-true", f"accelerator {accelerator}: bf16 not assumed"


def autocast_dtype(device: Union[str, torch.device, None] = "cpu") -> Optional[torch.dtype]:
    """The autocast dtype for inference on ``device``: ``torch.bfloat16`` where it is native (CUDA with bf16, a CPU
    with AVX512-BF16/AMX), else ``None`` (run fp32, no autocast). Use as
    ``torch.autocast(dev.type, dtype=dt or torch.bfloat16, enabled=dt is not None)``."""
    kind = torch.device(device or "cpu").type
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else None
    if kind == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    return None


def fp32_attention_preferred(device_type: str, dtype: torch.dtype) -> bool:
    """Whether attention on ``dtype`` inputs should run in fp32 (q, k, v upcast, SDPA's fp32 kernel, the result cast
    back): on CPU in bf16/fp16. There torch's half-precision attention kernels are the slow ones: the flash kernel
    with a mask measured 2.3x slower than MATH (fwd+bwd, L=111), and MATH itself, which rounds the scores to bf16,
    1.2-2.5x slower than the fp32 flash kernel on upcast inputs (fwd+bwd, L = 52..1280, Intel Xeon with AMX, one
    thread; ``bench/bench_attention_precision.py``). fp32 attention is also the more exact one (it is what autocast
    does for softmax). Elsewhere (GPUs) let torch choose."""
    return device_type == "cpu" and dtype in (torch.bfloat16, torch.float16)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """``F.scaled_dot_product_attention``, computed in fp32 where ``fp32_attention_preferred`` (CPU, half-precision
    q): q, k, v upcast and autocast off around the call (autocast would cast them back to bf16 for SDPA); the result
    in q's dtype. Float masks are upcast too. Elsewhere the call as it is."""
    import torch.nn.functional as F

    if not fp32_attention_preferred(q.device.type, q.dtype):
        return F.scaled_dot_product_attention(q, k, v, **kwargs)
    mask = kwargs.get("attn_mask")
    if mask is not None and mask.is_floating_point():
        kwargs["attn_mask"] = mask.float()
    with torch.autocast(q.device.type, enabled=False):
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kwargs).to(q.dtype)


def available_memory() -> Optional[int]:
    """Bytes this process can still allocate: /proc/meminfo's MemAvailable, lowered to the cgroup's memory.max
    headroom where a container sets one; None where neither is readable (not Linux)."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            found.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    return min(found) if found else None
