"""Which CPU kernel runs the U-Net's 3x3 convolutions: torch's default (oneDNN), our Winograd F(4x4, 3x3) kernels
(``zoo.nn.winograd``) or NNPACK's Winograd.

Since 2026-12-05 ``auto`` picks ``winograd`` on AVX2 CPUs with one thread: forward, input gradient AND weight
gradient by F(4x4, 3x3) (C tile transforms + torch's batched matmuls), measured on an AVX2-only AMD EPYC, one
thread (``bench/bench_conv_backends.py``): the ``shapes`` U-Net's 3x3 convolutions of 64+ channels 1.7-2.7x
oneDNN's forward and 1.8-2.7x its forward + backward (NNPACK has no weight gradient), single 64-512 px images
1.1-2.4x oneDNN's forward; the U-Net's training step 1.65x oneDNN's, NNPACK's 1.11-1.13x. It needs a C compiler at
first use (the library is cached); without one ``auto`` falls back to NNPACK as below. What follows is NNPACK's
record.

Why: in fp32 on the CPU the ADM U-Net is convolution-bound, and oneDNN's direct 3x3 convolutions already run near
the CPU's matmul rate (``bench/bench_unet.py --flops``: 87-91 GFLOP/s against 95 for a plain matmul on an AVX2-only
AMD EPYC). NNPACK, compiled into torch's CPU builds, computes 3x3 stride-1 convolutions by Winograd transforms
(fewer multiplies, about 10x oneDNN's rounding error in fp32: ~1e-5 relative). torch itself calls it only when
oneDNN is off, and only for the forward. :class:`Conv2d` routes both the forward and the input gradient (a 3x3
convolution of the output gradient with the flipped, transposed kernel, so also a forward convolution to NNPACK)
through it; the weight gradient stays with oneDNN (NNPACK has no such kernel in torch).

Measured on an AVX2-only AMD EPYC (``bench/bench_conv_backends.py``):

- one thread, 64+ channels in and out: NNPACK's forward is 1.3-1.8x oneDNN's once a call has 4096 output positions
  (batch x H x W: 16 images at 16 px, 4 at 32, 1 at 64) and up to 2.7x on single 64-256 px images; below that it is
  even or behind (0.7x for one image at 16 px). The ``shapes`` U-Net at batch 16: training step 1.11-1.13x, no-grad
  forward 1.19-1.22x.
- one thread, 32-63 channels (the upsamplers' top levels): ahead only on large images, forward 1.1-1.8x at 128-512
  px a side (1.1x for a single 128 px image, 1.6x for 8 of them), 0.9-1.1x at 32-64 px whatever the batch. The 128 -> 512 px upsampler's sampling forward 1.30x.
- two threads: NNPACK's own thread pool and torch's OpenMP threads take turns on the same cores, and the whole
  ``shapes`` U-Net is *slower* through it (training step 0.85-0.93x, forward 0.82-0.84x), and so are the
  upsamplers (0.80-1.03x), although single large calls (one image at 256 px) still gain 1.85x. With ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP's threads sleep instead of
  spinning between ops) NNPACK is 1.13x ahead, but that policy costs torch's other ops more than NNPACK gains.
- NNPACK's x86 kernels are AVX2 (FMA3) ones, while oneDNN uses AVX-512 where the CPU has it: not measured there.

So ``auto`` takes the route only where it was measured ahead: AVX2 CPUs, one intra-op thread (one process per core,
as on a shared machine, in the tests and in the benchmarks' comparisons).

``conv_backend`` (Hydra key of ``zoo-train`` / ``zoo-sample`` / ``zoo-eval``, or ``ZOO_CONV_BACKEND``):

- ``auto`` (default): on an AVX2 CPU while ``torch.get_num_threads()`` is 1, ``winograd`` where its kernels build
  (a C compiler), else ``nnpack`` where the torch build has it; ``torch`` otherwise;
- ``winograd``: our F(4x4, 3x3) kernels wherever a convolution is eligible, any thread count (the transforms run on
  one thread, the products on torch's): as for ``nnpack`` below but 32+ channels in and out, and at least
  C x O / 4096 tiles of 4x4 outputs in the call;
- ``torch``: every convolution as ``nn.Conv2d``, bit for bit;
- ``nnpack``: the route wherever a convolution is eligible, any thread count: CPU, fp32, no autocast, 3x3 stride 1
  padding 1, NCHW-contiguous input (channels_last stays with oneDNN, which computes it natively; the Winograd route
  takes both layouts), 64+ channels in
  and out with 4096+ output positions or 32+ with images of 128 x 128 or more, not while exporting / tracing /
  compiling.

The route changes no parameter and no state-dict key, only which kernel computes the same function; checkpoints
move freely between backends. NNPACK sizes its thread pool once, at its first call, from ``torch.get_num_threads()``;
if the thread count changes afterwards the route steps aside (torch's kernel follows the new count, NNPACK would not).
"""

from __future__ import annotations

import logging
import os
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

from zoo.errors import ConfigError
from zoo.nn import winograd
from zoo.precision import _capability

log = logging.getLogger("zoo.nn.conv")

ENV_VAR = "ZOO_CONV_BACKEND"
CONV_BACKENDS = ("auto", "torch", "nnpack", "winograd")
# Where NNPACK was measured ahead of oneDNN (bench/bench_conv_backends.py, AVX2 AMD EPYC, one thread): both channel
# counts at least MIN_CHANNELS, and at least MIN_POSITIONS output positions (batch x H x W) in the call.
MIN_CHANNELS = 64
MIN_POSITIONS = 4096
# Thinner convolutions (32-63 channels, the upsamplers' top levels) gain only on large images: forward 1.1-1.8x at
# 128-512 px a side, 0.9-1.1x at 32-64 px whatever the batch.
MIN_CHANNELS_LARGE = 32
MIN_IMAGE_POSITIONS_LARGE = 128 * 128


# Where our Winograd kernels were measured ahead (bench/bench_conv_backends.py, AVX2 AMD EPYC, one thread): both
# channel counts at least MIN_CHANNELS_LARGE (the 3-channel input and output convolutions stay with oneDNN), and
# enough tiles for the weight transform (36 x C x O values, made every call) to pay: tiles (4x4 output blocks)
# x 4096 >= C x O. E.g. batch 4 at 8 px with 256 channels: even with oneDNN's forward, weight gradient 1.7x; one
# image there (4 tiles): 0.4x; 2 images at 16 px with 512 channels: 0.6x, so oneDNN.
WINOGRAD_TILE_WORK = 4096


class Choice(NamedTuple):
    backend: str  # "torch", "nnpack" or "winograd"
    why: str
    one_thread_only: bool = False  # auto's choice: the route only while torch.get_num_threads() == 1


_requested: Optional[str] = None  # set_conv_backend's argument; None = the environment variable, else auto
_resolved: Optional[Choice] = None  # cached
_pool_threads: Optional[int] = None  # torch.get_num_threads() when NNPACK first ran (its pool's fixed size)


def _nnpack_available() -> bool:
    # also initialises NNPACK: without this call torch._nnpack_spatial_convolution fails
    try:
        return bool(torch._nnpack_available())
    except Exception:  # pragma: no cover - a build without the op
        return False


def resolve_conv_backend(requested: Optional[str] = None) -> Choice:
    """``requested`` (auto / torch / nnpack; None = ``$ZOO_CONV_BACKEND`` or auto) -> (backend, why, one thread)."""
    name = requested if requested is not None else os.environ.get(ENV_VAR, "auto")
    name = str(name).strip().lower()
    if name not in CONV_BACKENDS:
        raise ConfigError(f"conv_backend={name!r}: expected one of {', '.join(CONV_BACKENDS)} (or unset {ENV_VAR})")
    available = _nnpack_available()
    if name == "winograd":
        ok, why = winograd.available()
        if not ok:
            raise ConfigError(f"conv_backend=winograd: {why}")
        return Choice("winograd", "asked for")
    if name == "nnpack":
        if not available:
            raise ConfigError("conv_backend=nnpack: this torch build has no NNPACK; use conv_backend=torch or auto")
        return Choice("nnpack", "asked for")
    if name == "torch":
        return Choice("torch", "asked for")
    cap = _capability()
    wino_why = ""
    if cap == "AVX2":
        ok, wino_why = winograd.available()
        if ok:
            why = "auto: AVX2 CPU, where our Winograd F(4x4, 3x3) kernels were measured ahead of oneDNN's and NNPACK's"
            return Choice(
                "winograd", why + " with one thread (torch's kernels with more threads)", one_thread_only=True
            )
        wino_why = " (Winograd kernels unavailable: " + wino_why.splitlines()[0] + ")"
    if cap == "AVX2" and available:
        why = "auto: AVX2 CPU, where NNPACK's 3x3 convolutions were measured ahead of oneDNN's with one thread"
        return Choice("nnpack", why + " (torch's kernels with more threads)" + wino_why, one_thread_only=True)
    why = (
        "no NNPACK in this torch build"
        if not available
        else f"CPU capability {cap}, where NNPACK was not measured ahead"
    )
    return Choice("torch", f"auto: {why}")


def set_conv_backend(requested: Optional[str] = "auto") -> Choice:
    """Choose the backend for the process (``None``: back to ``$ZOO_CONV_BACKEND``); returns (backend, why)."""
    global _requested, _resolved
    resolved = resolve_conv_backend(requested)  # raises on a bad name before anything changes
    _requested, _resolved = requested, resolved
    return resolved


def _runs_route(choice: Choice, threads: int) -> bool:
    return choice.backend != "torch" and (not choice.one_thread_only or threads == 1)


def effective_conv_backend(choice: Optional[Choice] = None) -> tuple[str, str]:
    """(backend, why) that runs at this thread count for ``choice`` (default: the process's): auto's NNPACK or
    Winograd choice becomes torch's kernels with more than one thread. What logs and benchmarks report."""
    choice = choice or conv_backend()
    threads = torch.get_num_threads()
    if choice.backend != "torch" and not _runs_route(choice, threads):
        return "torch", (
            f"auto: {choice.backend} only with one intra-op thread, {threads} here (OMP_NUM_THREADS=1 for it)"
        )
    return choice.backend, choice.why


def apply_conv_backend(requested: Optional[str]) -> str:
    """What the CLIs call with their ``conv_backend`` key: set it, log what runs and why, return the backend."""
    backend, why = effective_conv_backend(set_conv_backend(requested))
    log.info("conv backend: %s (%s)", backend, why)
    return backend


def conv_backend() -> Choice:
    """The process's (backend, why, one thread only), resolved on first use."""
    global _resolved
    if _resolved is None:
        _resolved = resolve_conv_backend(_requested)
    return _resolved


def _nnpack_conv(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
    global _pool_threads
    if _pool_threads is None:
        _pool_threads = torch.get_num_threads()
    return torch._nnpack_spatial_convolution(x.contiguous(), w.contiguous(), b, [1, 1, 1, 1])


class _NNPackConv3x3(torch.autograd.Function):
    """conv2d(x, w, b, padding=1), stride 1: NNPACK forward and input gradient, oneDNN weight/bias gradient."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return _nnpack_conv(x, w, b)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad = grad.contiguous()
        # d conv(x, w) / dx applied to grad: the "full" correlation of grad with w rotated 180 degrees and its
        # in/out channels swapped; with a 3x3 kernel, stride 1 and padding 1 that is again a padding-1 convolution.
        gx = _nnpack_conv(grad, w.flip(-1, -2).transpose(0, 1), None) if need_x else None
        gw = gb = None
        if need_w or (ctx.has_bias and need_b):
            _, gw, gb = torch.ops.aten.convolution_backward(
                grad,
                x.contiguous(),
                w,
                [w.shape[0]] if ctx.has_bias else None,
                [1, 1],  # stride
                [1, 1],  # padding
                [1, 1],  # dilation
                False,  # transposed
                [0, 0],  # output padding
                1,  # groups
                [False, need_w, ctx.has_bias and need_b],
            )
        return gx, gw, gb


class _WinogradConv3x3(torch.autograd.Function):
    """conv2d(x, w, b, padding=1), stride 1: forward, input and weight gradient by zoo.nn.winograd."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return winograd.conv3x3(x, w, b)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        # grad as it comes (no contiguous copy: the kernels read any strides)
        # the input gradient: a padding-1 convolution of grad with w rotated 180 degrees, in/out channels swapped
        gx = winograd.conv3x3(grad, w.flip(-1, -2).transpose(0, 1)) if need_x else None
        gw = winograd.weight_grad(x, grad) if need_w else None
        gb = grad.sum((0, 2, 3)) if ctx.has_bias and need_b else None
        return gx, gw, gb


def _winograd_work(in_channels: int, out_channels: int, batch: int, height: int, width: int) -> bool:
    """Whether a call has enough 4x4 tiles for our Winograd kernels to be ahead (WINOGRAD_TILE_WORK above)."""
    tiles = batch * -(-height // 4) * -(-width // 4)
    return tiles * WINOGRAD_TILE_WORK >= in_channels * out_channels


def _enough_work(channels: int, batch: int, image_positions: int) -> bool:
    """Whether a call is large enough for NNPACK to be ahead (the measured thresholds above)."""
    if channels >= MIN_CHANNELS:
        return batch * image_positions >= MIN_POSITIONS
    return channels >= MIN_CHANNELS_LARGE and image_positions >= MIN_IMAGE_POSITIONS_LARGE


def _route_on(x: torch.Tensor) -> bool:
    """Whether the process routes ``x``'s convolutions to NNPACK or Winograd at all (shape and size aside): the
    backend at this thread count (and NNPACK's pool still of that size), an fp32 CPU tensor, no autocast, not
    exporting. The backend first: with torch's kernels (most processes) each convolution pays one cached lookup."""
    if _exporting():  # first: a tracer or torch.compile cannot trace get_num_threads (a graph break per conv)
        return False
    threads = torch.get_num_threads()
    choice = conv_backend()
    return (
        _runs_route(choice, threads)
        and (choice.backend != "nnpack" or _pool_threads is None or _pool_threads == threads)
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
    )


def nchw_for_route(x: torch.Tensor) -> torch.Tensor:
    """``x`` made NCHW-contiguous when the NNPACK route is on in this process at this thread count, else ``x``.
    For a network's input that arrives channels_last-strided (a codebook lookup's permute): oneDNN carries that
    layout through every following convolution, which the route then never sees. Where the route is off, the copy
    would only cost (oneDNN runs channels_last ~10% faster than NCHW for taming's decoder on an AVX2 CPU)."""
    nnpack = not x.is_contiguous() and _route_on(x) and conv_backend().backend == "nnpack"
    return x.contiguous() if nnpack else x  # the Winograd route reads channels_last as it is


def _exporting() -> bool:
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return True
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters, same state-dict keys) whose eligible 3x3 convolutions run on NNPACK or our
    Winograd kernels when the process's :func:`conv_backend` says so; everything else is ``nn.Conv2d``'s forward."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._min_channels = min(self.in_channels, self.out_channels)
        self._route_shape = (
            self.kernel_size == (3, 3)
            and self.stride == (1, 1)
            and self.padding == (1, 1)
            and self.dilation == (1, 1)
            and self.groups == 1
            and self.padding_mode == "zeros"
            and self._min_channels >= MIN_CHANNELS_LARGE
        )

    def _routed(self, x: torch.Tensor) -> Optional[str]:
        """ "nnpack" / "winograd" when this call takes that route, else None."""
        if not (self._route_shape and _route_on(x) and self.weight.dtype == torch.float32 and x.dim() == 4):
            return None
        if conv_backend().backend == "winograd":  # reads and writes NCHW and channels_last alike
            return (
                "winograd"
                if _winograd_work(self.in_channels, self.out_channels, x.shape[0], x.shape[2], x.shape[3])
                else None
            )
        # NNPACK: NCHW only; channels_last input stays with oneDNN (NNPACK would cost a copy each way)
        enough = _enough_work(self._min_channels, x.shape[0], x.shape[2] * x.shape[3])
        return "nnpack" if x.is_contiguous() and enough else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        route = self._routed(x)
        if route == "winograd":
            return _WinogradConv3x3.apply(x, self.weight, self.bias)
        if route == "nnpack":
            return _NNPackConv3x3.apply(x, self.weight, self.bias)
        return super().forward(x)
