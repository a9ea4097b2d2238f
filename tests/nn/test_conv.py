"""zoo.nn.conv: the NNPACK route computes nn.Conv2d's function and gradients, is taken only where it should be,
and the backend choice (auto / torch / nnpack / winograd) follows the CPU and fails clearly on a bad name. The
Winograd kernels themselves: tests/nn/test_winograd.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from zoo.errors import ConfigError
from zoo.nn import conv as zconv
from zoo.nn.unet import UNet, make_unet_config

needs_nnpack = pytest.mark.skipif(not zconv._nnpack_available(), reason="this torch build has no NNPACK")


@pytest.fixture
def route_calls(count_route):
    """A list that gets one entry per call of the NNPACK route."""
    return count_route(zconv._NNPackConv3x3)


def _pair(cin=64, cout=80, seed=0, **kw):
    """A zoo Conv2d and an nn.Conv2d with the same random parameters (bias too)."""
    torch.manual_seed(seed)
    ours = zconv.Conv2d(cin, cout, 3, padding=1, **kw)
    ref = nn.Conv2d(cin, cout, 3, padding=1, **kw)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@needs_nnpack
def test_nnpack_route_matches_nn_conv2d_forward_and_every_gradient(backend, route_calls):
    backend("nnpack")
    ours, ref = _pair()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 64, 32, 48, generator=g)  # 4608 output positions: above the route's 4096
    grad = torch.randn(3, 80, 32, 48, generator=g)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = ours(x1), ref(x2)
    y1.backward(grad)
    y2.backward(grad)
    assert len(route_calls) == 1  # the route ran (not nn.Conv2d's forward)
    assert y1.shape == y2.shape == (3, 80, 32, 48)
    # Winograd's rounding: ~1e-5 relative in fp32 (oneDNN's own ~1e-6); a wrong flip or transpose would be O(1)
    assert _rel(y1, y2) < 1e-4
    assert _rel(x1.grad, x2.grad) < 1e-4
    assert _rel(ours.weight.grad, ref.weight.grad) < 1e-5  # the weight gradient is oneDNN's in both
    assert _rel(ours.bias.grad, ref.bias.grad) < 1e-5


@needs_nnpack
def test_input_gradient_alone_and_frozen_weights(backend, route_calls):
    """A frozen network (CLIP-guidance style gradients w.r.t. the input only) and no-bias convolutions."""
    backend("nnpack")
    ours, ref = _pair(bias=False)
    for m in (ours, ref):
        m.weight.requires_grad_(False)
    x = torch.randn(1, 64, 64, 64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    (gx1,) = torch.autograd.grad(ours(x1).square().sum(), x1)
    (gx2,) = torch.autograd.grad(ref(x2).square().sum(), x2)
    assert len(route_calls) == 1 and ours.weight.grad is None
    assert _rel(gx1, gx2) < 1e-4


@needs_nnpack
def test_route_is_taken_only_where_eligible(backend, route_calls):
    backend("nnpack")
    x = torch.randn(4, 64, 32, 32)  # 4096 output positions: routed when the convolution is eligible
    cases = {
        "1024 positions (NNPACK measured behind)": (zconv.Conv2d(64, 64, 3, padding=1), torch.randn(1, 64, 32, 32)),
        "thin output (3 channels)": (zconv.Conv2d(64, 3, 3, padding=1), x),
        "thin input (3 channels)": (zconv.Conv2d(3, 64, 3, padding=1), torch.randn(4, 3, 32, 32)),
        "32 channels at 64 px (NNPACK measured even)": (zconv.Conv2d(32, 32, 3, padding=1), torch.randn(4, 32, 64, 64)),
        "16 channels at 128 px": (zconv.Conv2d(16, 16, 3, padding=1), torch.randn(1, 16, 128, 128)),
        "channels_last input (oneDNN's native layout)": (
            zconv.Conv2d(64, 64, 3, padding=1),
            x.contiguous(memory_format=torch.channels_last),
        ),
        "stride 2": (zconv.Conv2d(64, 64, 3, stride=2, padding=1), x),
        "1x1": (zconv.Conv2d(64, 128, 1), x),
        "float64": (zconv.Conv2d(64, 64, 3, padding=1).double(), x.double()),
    }
    for name, (m, inp) in cases.items():
        ref = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding).to(m.weight.dtype)
        ref.load_state_dict(m.state_dict())
        assert torch.equal(m(inp), ref(inp)), name  # nn.Conv2d's own forward: bit for bit
    assert route_calls == []
    m = zconv.Conv2d(64, 64, 3, padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m(x).dtype == torch.bfloat16  # autocast keeps its say: the bf16 convolution, not an fp32 NNPACK one
    traced = torch.jit.trace(m, x, check_trace=False)  # export / tracing records torch's convolution, which ONNX knows
    assert route_calls == []
    assert torch.equal(traced(x), nn.Conv2d.forward(m, x))
    m(x)
    assert len(route_calls) == 1  # and the same module outside those takes the route
    zconv.Conv2d(32, 32, 3, padding=1)(torch.randn(1, 32, 128, 128))
    assert len(route_calls) == 2  # 32 channels on a large image (the upsamplers' top level): routed


@needs_nnpack
def test_route_steps_aside_when_the_thread_count_changes(backend, route_calls, monkeypatch):
    """NNPACK's pool keeps the thread count of its first call; torch's kernel follows set_num_threads."""
    backend("nnpack")
    m, x = zconv.Conv2d(64, 64, 3, padding=1), torch.randn(1, 64, 64, 64)
    monkeypatch.setattr(zconv, "_pool_threads", torch.get_num_threads() + 1)
    m(x)
    assert route_calls == []
    monkeypatch.setattr(zconv, "_pool_threads", torch.get_num_threads())
    m(x)
    assert len(route_calls) == 1


@needs_nnpack
def test_auto_routes_with_one_thread_only(backend, route_calls, monkeypatch):
    """Measured: with two threads NNPACK's pool and OpenMP's take turns on the cores and the U-Net is slower. (auto
    takes NNPACK where the Winograd kernels cannot be built, as here.)"""
    monkeypatch.setattr(zconv, "_capability", lambda: "AVX2")
    monkeypatch.setattr(zconv.winograd, "available", lambda: (False, "no C compiler found"))
    assert backend("auto") == ("nnpack", backend("auto").why, True)
    monkeypatch.setattr(zconv, "_pool_threads", None)
    m, x = zconv.Conv2d(64, 64, 3, padding=1), torch.randn(1, 64, 64, 64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        m(x)
        assert route_calls == []  # auto, two threads: torch's kernel
        assert zconv.apply_conv_backend("auto") == "torch"  # and the CLIs' log line says so
        backend("nnpack")
        assert not backend("nnpack").one_thread_only
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setattr(zconv, "_pool_threads", None)
    assert zconv.apply_conv_backend("auto") == ("nnpack" if threads == 1 else "torch")
    if threads == 1:
        m(x)
        assert len(route_calls) == 1


def test_torch_backend_is_nn_conv2d_bit_for_bit_and_keeps_state_dict_keys(backend, route_calls):
    backend("torch")
    ours, ref = _pair()
    x = torch.randn(2, 64, 16, 16, requires_grad=True)
    assert torch.equal(ours(x), ref(x))
    assert route_calls == []
    assert list(ours.state_dict()) == list(ref.state_dict()) == ["weight", "bias"]


def test_backend_resolution(backend, monkeypatch):
    monkeypatch.setattr(zconv, "_nnpack_available", lambda: True)
    monkeypatch.setattr(zconv, "_capability", lambda: "AVX2")
    monkeypatch.setattr(zconv.winograd, "available", lambda: (True, ""))
    assert zconv.resolve_conv_backend("auto")[0] == "winograd"  # ahead of both on AVX2 (bench_conv_backends.py)
    assert zconv.resolve_conv_backend("auto").one_thread_only
    monkeypatch.setattr(zconv.winograd, "available", lambda: (False, "no C compiler found (...)\nmore"))
    choice = zconv.resolve_conv_backend("auto")
    assert choice[0] == "nnpack" and "no C compiler found" in choice.why  # the log line says why not Winograd
    with pytest.raises(ConfigError, match="conv_backend=winograd: no C compiler found"):
        zconv.resolve_conv_backend("winograd")
    monkeypatch.setattr(zconv, "_capability", lambda: "AVX512")
    assert zconv.resolve_conv_backend("auto")[0] == "torch"  # oneDNN's AVX-512 kernels: not measured behind
    assert zconv.resolve_conv_backend("nnpack")[0] == "nnpack"  # asked for: where the user measured it ahead
    monkeypatch.setenv(zconv.ENV_VAR, "torch")
    monkeypatch.setattr(zconv, "_capability", lambda: "AVX2")
    assert zconv.resolve_conv_backend(None)[0] == "torch"  # the environment variable when the config says nothing
    monkeypatch.setattr(zconv, "_nnpack_available", lambda: False)
    assert zconv.resolve_conv_backend("auto")[0] == "torch"
    with pytest.raises(ConfigError, match="no NNPACK.*conv_backend=torch"):
        zconv.resolve_conv_backend("nnpack")
    before = zconv.conv_backend()
    with pytest.raises(ConfigError, match="'fft'.*auto, torch, nnpack, winograd"):
        backend("fft")
    assert zconv.conv_backend() == before  # a bad name changes nothing


@needs_nnpack
def test_unet_under_nnpack_matches_torch_and_trains_the_same(backend, route_calls, wide_unet):
    """The whole U-Net at a width where the route is taken: same output and parameter gradients to rounding."""
    cfg, net = wide_unet(32, (16,))
    x, t = torch.randn(4, cfg.in_channels, 32, 32), torch.tensor([10, 300, 600, 900])  # 4096 positions at 32 px

    def run(name):
        backend(name)
        net.zero_grad(set_to_none=True)
        y = net(x, t)
        y.square().mean().backward()
        return y.detach(), {k: p.grad.clone() for k, p in net.named_parameters()}

    y_t, g_t = run("torch")
    assert route_calls == []
    y_n, g_n = run("nnpack")
    assert len(route_calls) > 0
    assert _rel(y_n, y_t) < 1e-4
    worst = max(_rel(g_n[k], g_t[k]) for k in g_t if g_t[k].abs().max() > 0)
    assert worst < 1e-3, worst


@needs_nnpack
def test_nchw_for_route_copies_only_where_the_route_is_on(backend):
    """A channels_last-strided input (a codebook lookup) becomes NCHW only where NNPACK will then take the
    convolutions; elsewhere oneDNN keeps its faster channels_last path (and no copy is made)."""
    x = torch.randn(1, 64, 16, 16).contiguous(memory_format=torch.channels_last)
    backend("torch")
    assert zconv.nchw_for_route(x) is x
    backend("nnpack")
    y = zconv.nchw_for_route(x)
    assert y.is_contiguous() and torch.equal(y, x)
    assert zconv.nchw_for_route(y) is y  # already NCHW: no copy
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert zconv.nchw_for_route(x) is x


@needs_nnpack
def test_taming_decoder_takes_the_route_from_a_codebook_lookup(backend, route_calls):
    from dataclasses import replace

    from zoo.models.vqgan.model import PRESETS, TamingVQGAN

    cfg = replace(PRESETS["tiny"], resolution=64, ch=64, ch_mult=(1, 1), attn_resolutions=())
    torch.manual_seed(0)
    m = TamingVQGAN(cfg).eval()
    codes = torch.randint(0, cfg.n_embed, (1, 32, 32))
    backend("torch")
    ref = m.decode(codes)
    backend("nnpack")
    out = m.decode(codes)
    assert len(route_calls) > 0  # the lookup's channels_last layout no longer keeps the decoder off the route
    assert (out - ref).abs().max() < 1e-3


def test_torch_compile_traces_the_unet_in_one_graph(backend, route_calls):
    """Under torch.compile the route steps aside before asking for the thread count, which Dynamo cannot trace: one
    graph for the whole U-Net (``fullgraph=True`` raises at any graph break), computing torch's convolution. Dynamo
    with its ``eager`` backend: the tracing is what is tested, not Inductor's code generation (minutes on a CPU)."""
    backend("nnpack")
    torch.manual_seed(0)
    net = UNet(make_unet_config("shapes", context_dim=None)).eval()  # 64+ channels: convolutions the route takes
    x, t = torch.randn(4, 3, 32, 32), torch.tensor([0, 10, 500, 999])
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    with torch.no_grad():
        out = compiled(x, t)
        assert route_calls == []  # compiled: torch's convolutions
        backend("torch")
        ref = net(x, t)
    assert torch.allclose(out, ref, atol=1e-5)
