"""zoo.nn.winograd: our F(4x4, 3x3) Winograd convolutions compute conv2d's forward, input gradient and weight
gradient (against float64 references), in any layout and chunking; the Conv2d route takes them where eligible; the
U-Net trains the same under them; the C library builds once, is cached, is rebuilt when damaged, and a missing
compiler is a clear error (``auto`` then falls back)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.errors import ConfigError
from zoo.nn import conv as zconv
from zoo.nn import winograd as zw

needs_kernels = pytest.mark.skipif(not zw.available()[0], reason=f"Winograd kernels unavailable: {zw.available()[1]}")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error in the Frobenius norm."""
    return float((a.double() - b.double()).norm() / b.double().norm())


def _ref(x, w, b=None):
    return F.conv2d(x.double(), w.double(), None if b is None else b.double(), padding=1)


def _ref_wgrad(x, grad, w):
    return torch.ops.aten.convolution_backward(
        grad.double(), x.double(), w.double(), None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [False, True, False]
    )[1]


# (batch, in, out, H, W): image sides not multiples of 4 (partial tiles), non-square, one image, the U-Net's levels
SHAPES = [(2, 32, 40, 17, 23), (1, 48, 32, 5, 9), (3, 64, 64, 8, 8), (2, 33, 35, 12, 16), (1, 32, 32, 1, 3)]


@needs_kernels
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_weight_gradient_match_float64(shape):
    n, c, o, h, w = shape
    g = torch.Generator().manual_seed(0)
    x, wt = torch.randn(n, c, h, w, generator=g), torch.randn(o, c, 3, 3, generator=g) * 0.1
    b, grad = torch.randn(o, generator=g), torch.randn(n, o, h, w, generator=g)
    y = zw.conv3x3(x, wt, b)
    assert y.shape == (n, o, h, w) and y.dtype == torch.float32
    # fp32 Winograd rounding: ~2e-6 measured (oneDNN's direct kernel ~1e-6); a wrong transform is O(1)
    assert _rel(y, _ref(x, wt, b)) < 2e-5
    assert _rel(zw.conv3x3(x, wt), _ref(x, wt)) < 2e-5  # no bias
    assert _rel(zw.weight_grad(x, grad), _ref_wgrad(x, grad, wt)) < 2e-5


@needs_kernels
def test_empty_batch():
    x, w = torch.randn(0, 32, 8, 8), torch.randn(40, 32, 3, 3)
    assert zw.conv3x3(x, w).shape == (0, 40, 8, 8)
    assert torch.equal(zw.weight_grad(x, torch.randn(0, 40, 8, 8)), torch.zeros(40, 32, 3, 3))


@needs_kernels
def test_hand_computed_values():
    """A 1-channel 3x3 image and an all-ones kernel: each output is the sum of its 3x3 neighbourhood (zero padded)."""
    x = torch.arange(1.0, 10.0).view(1, 1, 3, 3).expand(1, 32, 3, 3).contiguous() / 32  # 32 equal channels
    w = torch.ones(32, 32, 3, 3)
    y = zw.conv3x3(x, w)[0, 0]
    expect = torch.tensor([[12.0, 21.0, 16.0], [27.0, 45.0, 33.0], [24.0, 39.0, 28.0]])
    assert torch.allclose(y, expect, rtol=1e-5)
    # the weight gradient of sum(conv(x, w)): for tap (i, j), the sum of x over the pixels that tap reads
    gw = zw.weight_grad(x, torch.ones(1, 32, 3, 3))[0, 0]
    # (tap (0, 0) reads the pixel up and left of each output: pixels 1, 2, 4, 5 -> 12; by symmetry the same table)
    assert torch.allclose(gw, expect / 32, rtol=1e-5)


@needs_kernels
def test_layouts_and_strides_give_the_same_result():
    """channels_last in -> channels_last out, same values; an expanded (stride 0) gradient, as sum().backward()
    gives, reads the same as its contiguous copy."""
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(2, 32, 12, 10, generator=g), torch.randn(48, 32, 3, 3, generator=g), torch.randn(48)
    y = zw.conv3x3(x, w, b)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    y_cl = zw.conv3x3(x_cl, w, b)
    assert y_cl.is_contiguous(memory_format=torch.channels_last) and not y_cl.is_contiguous()
    assert torch.allclose(y_cl, y, atol=1e-6)
    ones = torch.ones(()).expand(2, 48, 12, 10)
    assert torch.allclose(zw.weight_grad(x_cl, ones), zw.weight_grad(x, ones.contiguous()), rtol=1e-5, atol=1e-5)
    assert torch.equal(zw.conv3x3(x[:, :, 1:, :], w), zw.conv3x3(x[:, :, 1:, :].contiguous(), w))  # an offset view


@needs_kernels
def test_chunks_of_one_tile_row_give_the_same_result(monkeypatch):
    """Large calls are processed in chunks of whole tile rows (CHUNK_BYTES); any chunking is the same function."""
    g = torch.Generator().manual_seed(2)
    x, w, b = torch.randn(3, 32, 21, 13, generator=g), torch.randn(40, 32, 3, 3, generator=g), torch.randn(40)
    grad = torch.randn(3, 40, 21, 13, generator=g)
    y, gw = zw.conv3x3(x, w, b), zw.weight_grad(x, grad)
    monkeypatch.setattr(zw, "CHUNK_BYTES", 1)  # one tile row a chunk: 18 chunks, some across images
    assert list(zw._chunks(3, 6, 4, 36 * 4 * 72)) == [(p, p + 4) for p in range(0, 72, 4)]
    assert torch.allclose(zw.conv3x3(x, w, b), y, atol=1e-6)
    assert _rel(zw.weight_grad(x, grad), gw) < 1e-5  # the sum over tiles in another order: rounding (2e-6)


@pytest.fixture
def route_calls(count_route):
    """A list that gets one entry per call of the Winograd route."""
    return count_route(zconv._WinogradConv3x3)


@needs_kernels
def test_conv2d_route_matches_nn_conv2d_with_every_gradient(backend, route_calls):
    backend("winograd")
    torch.manual_seed(0)
    ours = zconv.Conv2d(64, 80, 3, padding=1)
    ref = nn.Conv2d(64, 80, 3, padding=1)
    ref.load_state_dict(ours.state_dict())
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(3, 64, 20, 28).contiguous(memory_format=fmt)
        grad = torch.randn(3, 80, 20, 28)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        for m in (ours, ref):
            m.zero_grad(set_to_none=True)
        y1, y2 = ours(x1), ref(x2)
        y1.backward(grad)
        y2.backward(grad)
        assert _rel(y1, y2) < 2e-5
        assert _rel(x1.grad, x2.grad) < 2e-5
        assert _rel(ours.weight.grad, ref.weight.grad) < 2e-5
        assert _rel(ours.bias.grad, ref.bias.grad) < 1e-5
    assert len(route_calls) == 2  # both layouts took the route


@needs_kernels
def test_route_is_taken_only_where_eligible(backend, route_calls):
    backend("winograd")
    cases = {
        "too few tiles for 256x256 channels (one 8 px image: 4 tiles)": (zconv.Conv2d(256, 256, 3, padding=1), (1, 8)),
        "thin output (3 channels)": (zconv.Conv2d(64, 3, 3, padding=1), (4, 32)),
        "16 channels": (zconv.Conv2d(16, 16, 3, padding=1), (4, 32)),
        "stride 2": (zconv.Conv2d(64, 64, 3, stride=2, padding=1), (4, 32)),
        "1x1": (zconv.Conv2d(64, 64, 1), (4, 32)),
    }
    for name, (m, (n, size)) in cases.items():
        x = torch.randn(n, m.in_channels, size, size)
        ref = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding)
        ref.load_state_dict(m.state_dict())
        assert torch.equal(m(x), ref(x)), name  # nn.Conv2d's own forward, bit for bit
    assert route_calls == []
    zconv.Conv2d(256, 256, 3, padding=1)(torch.randn(4, 256, 8, 8))  # 16 tiles x 4096 >= 256 x 256: routed
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert zconv.Conv2d(64, 64, 3, padding=1)(torch.randn(2, 64, 16, 16)).dtype == torch.bfloat16
    assert len(route_calls) == 1


@needs_kernels
def test_unet_under_winograd_matches_torch_and_learns(backend, route_calls, wide_unet):
    """The shapes-width U-Net: output and every parameter gradient as with torch's kernels, and a few AdamW steps
    on a fixed batch lower the loss the same way."""
    cfg, net = wide_unet(16, (8,))
    start = {k: v.clone() for k, v in net.state_dict().items()}
    x, t = torch.randn(4, cfg.in_channels, 16, 16), torch.tensor([10, 300, 600, 900])
    target = torch.randn(4, cfg.out_channels, 16, 16)

    def run(name, steps=0):
        backend(name)
        net.load_state_dict(start)
        net.zero_grad(set_to_none=True)
        y = net(x, t)
        y.square().mean().backward()
        grads = {k: p.grad.clone() for k, p in net.named_parameters()}
        opt, losses = torch.optim.AdamW(net.parameters(), lr=1e-3), []
        for _ in range(steps):
            loss = F.mse_loss(net(x, t), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return y.detach(), grads, losses

    y_t, g_t, l_t = run("torch", steps=5)
    assert route_calls == []
    y_w, g_w, l_w = run("winograd", steps=5)
    assert len(route_calls) > 0
    assert _rel(y_w, y_t) < 1e-4
    worst = max(_rel(g_w[k], g_t[k]) for k in g_t if g_t[k].abs().max() > 0)
    assert worst < 1e-3, worst
    assert l_w[-1] < 0.8 * l_w[0]  # it learns
    assert max(abs(a - b) / b for a, b in zip(l_w, l_t)) < 1e-3  # the same way as with torch's kernels


@pytest.fixture
def fresh_library(monkeypatch, tmp_path):
    """An empty kernel cache in tmp_path and no library loaded in this process."""
    monkeypatch.setenv(zw.CACHE_ENV, str(tmp_path / "kernels"))
    monkeypatch.setattr(zw, "_lib", None)
    monkeypatch.setattr(zw, "_error", None)
    return tmp_path / "kernels"


def _fresh_dlopen(cdll):
    """ctypes.CDLL that reads the file again: dlopen returns the handle it already has for a path this process
    loaded, whatever the file holds now; a copy under a new name is opened afresh (the damaged file fails to load)."""

    def load(path, *args, **kwargs):
        copy = f"{path}.{os.getpid()}.{load.n}.so"
        load.n += 1
        with open(path, "rb") as src, open(copy, "wb") as dst:
            dst.write(src.read())
        try:
            return cdll(copy, *args, **kwargs)
        finally:
            os.unlink(copy)

    load.n = 0
    return load


@needs_kernels
def test_library_is_built_once_and_rebuilt_when_damaged(fresh_library, monkeypatch):
    zw.library()
    (built,) = fresh_library.glob("winograd-*.so")
    assert not list(fresh_library.glob("*.tmp"))  # written under a temporary name, then renamed
    stamp = built.stat().st_mtime_ns
    monkeypatch.setattr(zw, "_lib", None)
    zw.library()
    assert built.stat().st_mtime_ns == stamp  # the cached file, not a new build
    damaged = built.with_name("damaged")
    damaged.write_bytes(b"not a shared library")
    # a damaged cache entry (replaced, not written in place: this process has the file mapped, and rewriting mapped
    # code in place is a bus error; a new file is what a crash or a copy by hand leaves)
    os.replace(damaged, built)
    monkeypatch.setattr(zw.ctypes, "CDLL", _fresh_dlopen(zw.ctypes.CDLL))
    monkeypatch.setattr(zw, "_lib", None)
    x, w = torch.randn(1, 32, 8, 8), torch.randn(32, 32, 3, 3)
    assert _rel(zw.conv3x3(x, w), _ref(x, w)) < 2e-5  # rebuilt and working
    assert built.stat().st_size > 1000


def test_missing_compiler_is_a_clear_error_and_auto_falls_back(fresh_library, monkeypatch, backend):
    monkeypatch.setattr(zw.shutil, "which", lambda name: None)
    with pytest.raises(zw.WinogradUnavailable, match=r"no C compiler found .*apt install gcc.*conv_backend=torch"):
        zw.library()
    assert zw.available()[0] is False
    with pytest.raises(ConfigError, match="conv_backend=winograd: no C compiler found"):
        backend("winograd")
    monkeypatch.setattr(zconv, "_capability", lambda: "AVX2")
    choice = backend("auto")
    assert choice.backend in ("nnpack", "torch") and "no C compiler found" in choice.why


def test_failing_compiler_names_its_error(fresh_library, monkeypatch, tmp_path):
    fake = tmp_path / "cc"
    fake.write_text("#!/bin/sh\necho 'winograd.c:1: error: something broke' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    with pytest.raises(zw.WinogradUnavailable, match=r"(?s)compiling .*winograd.c.*something broke.*Fix: set CC"):
        zw.library()
    assert not os.listdir(fresh_library)  # no half-written file left in the cache
