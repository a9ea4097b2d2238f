"""ADM U-Net: shapes, context reaching every attention block, padding mask, emb, zero init, super-resolution,
bf16 / channels_last, learning, paper parameter counts (on the meta device)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from zoo.nn.embeddings import timestep_embedding
from zoo.nn.unet import (
    GLIDE_PAPER_PARAMS,
    GLIDE_RELEASED_PARAMS,
    UNET_PRESETS,
    UPSAMPLE_PAPER_PARAMS,
    SuperResUNet,
    UNet,
    count_params,
    make_unet_config,
    with_coords,
)

TINY = UNET_PRESETS["tiny"]


@pytest.fixture
def make_net(perturb):
    """``make_net(cfg=TINY, cls=UNet, seed=0, **kw)``: a seeded net, zero-initialised layers perturbed, in eval."""

    def make(cfg=TINY, cls=UNet, seed=0, **kw):
        torch.manual_seed(seed)
        return perturb(cls(cfg, **kw)).eval()

    return make


def _inputs(cfg=TINY, b=2, size=16, n_ctx=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cfg.in_channels, size, size, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    ctx = torch.randn(b, n_ctx, cfg.context_dim, generator=g) if cfg.context_dim else None
    return x, t, ctx


# --------------------------------------------------------------------------------------------- shapes / config
@pytest.mark.parametrize("preset,size", [("tiny", 16), ("tiny", 32), ("shapes", 32)])
@pytest.mark.parametrize("learn_sigma", [False, True])
def test_output_shapes(preset, size, learn_sigma):
    cfg = make_unet_config(preset, learn_sigma=learn_sigma)
    net = UNet(cfg).eval()
    x, t, ctx = _inputs(cfg, b=2, size=size)
    with torch.no_grad():
        out = net(x, t, context=ctx)
    assert out.shape == (2, 3 * (2 if learn_sigma else 1), size, size)


def test_attention_placement_and_heads():
    net = UNet(UNET_PRESETS["shapes"])
    # shapes: attention at 16 px (2 res blocks down + 3 up, 128 ch = 2 heads) and 8 px (2 + 3 + middle, 256 ch = 4
    # heads); none at 32 px.
    heads = sorted(b.heads for b in net.attention_blocks())
    assert heads == [2] * 5 + [4] * 6
    assert all(b.head_dim == 64 for b in net.attention_blocks())


def test_attention_resolutions_no_level_reaches_are_named(caplog):
    """ADM turns attention_resolutions (pixels at image_size) into downsampling factors and drops those no level has:
    the shapes U-Net's (16, 8) at 64 px puts 8 px on none of its 64 / 32 / 16 px levels. Still built (ADM's rule),
    with a warning naming what was dropped and the fix; a config whose resolutions all exist warns nothing."""
    import logging

    with caplog.at_level(logging.WARNING, logger="zoo.nn.unet"):
        UNet(UNET_PRESETS["shapes"])
    assert not caplog.records
    cfg = replace(UNET_PRESETS["shapes"], image_size=64)
    assert cfg.unreached_attention == (8,)
    with caplog.at_level(logging.WARNING, logger="zoo.nn.unet"):
        net = UNet(cfg)
    assert "attention_resolutions [8] are not the resolution of any level" in caplog.text
    assert "[64, 32, 16]" in caplog.text and "model.net.attention_resolutions=" in caplog.text
    assert sorted(b.heads for b in net.attention_blocks()) == [4] * 6  # 16 px (factor 4) and the middle only


def test_in_channels_inpainting_and_bad_sizes():
    cfg = replace(TINY, in_channels=3 + 4)  # GLIDE inpainting: x_t + masked image (3) + mask (1)
    net = UNet(cfg)
    x, t, ctx = _inputs(cfg)
    assert net(x, t, context=ctx).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 7, 15, 16), torch.tensor([3]))
    with pytest.raises(ValueError, match="context_dim=None"):
        UNet(UNET_PRESETS["upsample_tiny"])(torch.randn(1, 3, 8, 8), torch.tensor([1]), context=ctx[:1])


def test_zero_init_fresh_net_outputs_zeros():
    cfg = replace(TINY, learn_sigma=True)
    x, t, ctx = _inputs(cfg)
    out = UNet(cfg)(x, t, context=ctx, emb=torch.randn(2, cfg.time_embed_dim))
    assert torch.equal(out, torch.zeros_like(out))


def test_timesteps_int_float_scalar(make_net):
    net = make_net()
    x, _, ctx = _inputs()
    with torch.no_grad():
        a = net(x, torch.tensor([7, 7]), context=ctx)
        b = net(x, torch.tensor([7.0, 7.0]), context=ctx)
        c = net(x, torch.tensor(7), context=ctx)
        d = net(x, torch.tensor([7.5, 7.5]), context=ctx)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    assert not torch.allclose(a, d)  # fractional (respaced) timesteps are embedded, not truncated
    e = timestep_embedding(torch.tensor([0, 999]), 9)
    assert e.shape == (2, 9) and e.dtype == torch.float32 and torch.all(e[:, -1] == 0)


# ------------------------------------------------------------------------------------------------ conditioning
def test_context_reaches_every_attention_block(make_net):
    net = make_net().train()
    x, t, ctx = _inputs()
    ctx.requires_grad_(True)
    net(x, t, context=ctx).square().mean().backward()
    blocks = net.attention_blocks()
    assert len(blocks) == 4  # tiny: 1 down + middle + 2 up at 8 px
    for blk in blocks:
        assert blk.context_kv.weight.grad is not None and blk.context_kv.weight.grad.abs().sum() > 0
    assert ctx.grad.abs().sum() > 0


def test_context_changes_output_and_mask_excludes_padded_tokens(make_net):
    net = make_net()
    x, t, ctx = _inputs(n_ctx=6)
    mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    ctx2 = ctx.clone()
    ctx2[0, 4:] = torch.randn(2, TINY.context_dim) * 10  # alter only the padded tokens of sample 0
    with torch.no_grad():
        a = net(x, t, context=ctx, context_mask=mask)
        b = net(x, t, context=ctx2, context_mask=mask)
        c = net(x, t, context=ctx2)  # no mask: the altered tokens are attended to
        d = net(x, t, context=ctx[:1, :4].expand(2, -1, -1))  # sample 0's 4 real tokens only
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert (a[0] - c[0]).abs().max() > 1e-3
    # masking tokens out == not passing them at all
    torch.testing.assert_close(a[0], d[0], rtol=1e-5, atol=1e-6)


def test_emb_changes_output(make_net):
    net = make_net()
    x, t, ctx = _inputs()
    emb = torch.randn(2, TINY.time_embed_dim)
    with torch.no_grad():
        a = net(x, t, context=ctx)
        b = net(x, t, context=ctx, emb=emb)
        z = net(x, t, context=ctx, emb=torch.zeros_like(emb))
    assert (a - b).abs().max() > 1e-3
    torch.testing.assert_close(a, z)


# ------------------------------------------------------------------------------------------------ super-res
def test_super_res_channels_and_crop_vs_full_size(make_net):
    cfg = UNET_PRESETS["upsample_tiny"]
    net = make_net(cfg, SuperResUNet)
    assert net.input_blocks[0][0].in_channels == 6 and net.in_channels == 3
    assert not net.attention_blocks()  # no attention: fully convolutional
    g = torch.Generator().manual_seed(0)
    for size in (16, 32):  # trained on crops (16), applied at full size (32) with the same weights
        x, lr = torch.randn(2, 3, size, size, generator=g), torch.randn(2, 3, size // 4, size // 4, generator=g)
        with torch.no_grad():
            out = net(x, torch.tensor([10, 500]), low_res=lr)
        assert out.shape == (2, 3, size, size) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="channels"):
        net(x, torch.tensor([1, 2]), low_res=lr[:, :1])
    # the low-res image matters
    with torch.no_grad():
        a = net(x, torch.tensor([10, 500]), low_res=lr)
        b = net(x, torch.tensor([10, 500]), low_res=lr + 1)
    assert (a - b).abs().max() > 1e-3


def test_with_coords_appends_row_and_column_grids():
    x = torch.randn(2, 3, 3, 5, dtype=torch.float64)
    out = with_coords(x)
    assert out.shape == (2, 5, 3, 5) and out.dtype == torch.float64 and torch.equal(out[:, :3], x)
    assert torch.equal(out[0, 3, :, 0], torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64))  # rows, top = -1
    assert torch.equal(out[1, 4, 2], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0], dtype=torch.float64))  # columns
    assert torch.equal(out[:, 3], out[:, 3, :, :1].expand(2, 3, 5))  # a row's coordinate is constant along it


@pytest.mark.parametrize("cls", [UNet, SuperResUNet])
def test_coord_channels_feed_the_input_conv_only(make_net, cls):
    """coord_channels=True: the input conv takes 2 more channels, which hold the pixel grid; with their weights
    zeroed the net is exactly the one without (the coordinates enter nowhere else), and they change the output."""
    base = UNET_PRESETS["upsample_tiny"] if cls is SuperResUNet else TINY
    plain, coords = make_net(base, cls), make_net(replace(base, coord_channels=True), cls)
    conv_p, conv_c = plain.input_blocks[0][0], coords.input_blocks[0][0]
    assert conv_c.in_channels == conv_p.in_channels + 2
    extra = sum(p.numel() for p in coords.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == 2 * 9 * conv_c.out_channels  # two more 3x3 input channels of the first conv, nothing else
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 3, 16, 16, generator=g), torch.tensor([10, 700])
    kw = {"low_res": torch.randn(2, 3, 4, 4, generator=g)} if cls is SuperResUNet else {}
    if base.context_dim:
        kw["context"] = torch.randn(2, 5, base.context_dim, generator=g)
    seen = []
    conv_c.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        out_c = coords(x, t, **kw)
        assert torch.equal(seen[0][:, -2:], with_coords(x)[:, -2:]) and torch.equal(seen[0][:, :3], x)
        state = coords.state_dict()
        state["input_blocks.0.0.weight"] = state["input_blocks.0.0.weight"][:, :-2]  # drop the coordinate inputs
        plain.load_state_dict(state)
        conv_c.weight[:, -2:] = 0
        assert torch.allclose(coords(x, t, **kw), plain(x, t, **kw), atol=1e-6)
    assert (out_c - plain(x, t, **kw)).abs().max() > 1e-4


@pytest.mark.parametrize("preset", ["upsample_tiny", "upsample_shapes"])
def test_super_res_preset_shapes(preset):
    cfg = make_unet_config(preset, learn_sigma=True)
    net = SuperResUNet(cfg).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 16, 16), torch.tensor([3]), low_res=torch.randn(1, 3, 4, 4))
    assert out.shape == (1, 6, 16, 16)


# ------------------------------------------------------------------------------------ precision and layout
def test_channels_last_and_bf16_autocast_match_fp32(make_net):
    cfg = replace(TINY, learn_sigma=True)
    net = make_net(cfg)
    x, t, ctx = _inputs(cfg, size=16)
    mask = torch.tensor([[True] * 3 + [False] * 2, [True] * 5])
    emb = torch.randn(2, cfg.time_embed_dim)
    with torch.no_grad():
        ref = net(x, t, context=ctx, context_mask=mask, emb=emb)
        cl_net = make_net(cfg).to(memory_format=torch.channels_last)
        cl = cl_net(x.to(memory_format=torch.channels_last), t, context=ctx, context_mask=mask, emb=emb)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf = cl_net(x.to(memory_format=torch.channels_last), t, context=ctx, context_mask=mask, emb=emb)
    torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-5)
    assert torch.isfinite(bf).all()
    rel = (bf.float() - ref).norm() / ref.norm()
    assert rel < 0.05, rel


def test_bf16_autocast_backward_is_finite(make_net):
    net = make_net().train()
    x, t, ctx = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = net(x.to(memory_format=torch.channels_last), t, context=ctx).float().square().mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_module_cast_to_bf16_runs(make_net):
    net = make_net().to(torch.bfloat16)  # weights in bf16 (sampling without autocast); GroupNorm still upcasts
    x, t, ctx = _inputs()
    with torch.no_grad():
        out = net(x.bfloat16(), t, context=ctx.bfloat16(), emb=torch.randn(2, TINY.time_embed_dim))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------------ learning
def test_tiny_unet_overfits_a_fixed_noise_prediction_batch():
    torch.manual_seed(0)
    net = UNet(TINY).train()
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    noise = torch.randn(4, 3, 16, 16, generator=g)
    t = torch.tensor([50, 300, 600, 900])
    abar = torch.cos(t / 1000 * torch.pi / 2)[:, None, None, None] ** 2
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    ctx = torch.randn(4, 5, TINY.context_dim, generator=g)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(60):
        loss = (net(x_t, t, context=ctx) - noise).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(noise.square().mean().item(), rel=1e-5)  # zero-init: starts at E[eps^2]
    assert min(losses[-5:]) < 0.15 * losses[0], losses[::10]  # measured: 0.98 -> 0.02 in 60 steps


# --------------------------------------------------------------------------------------------- paper sizes
def test_paper_parameter_counts_on_meta():
    n = count_params("glide_paper")
    assert n == GLIDE_PAPER_PARAMS
    assert 2.1e9 < n < 2.4e9  # GLIDE: "2.3 billion parameters" for the visual part
    assert count_params("glide_released") == GLIDE_RELEASED_PARAMS
    assert count_params("upsample_paper") == UPSAMPLE_PAPER_PARAMS
    # layout cross-check: ADM ImageNet 64 (192 ch, no text) + its 1000-class embedding is ADM's published 296M
    adm64 = count_params(replace(UNET_PRESETS["glide_paper"], width=192, context_dim=None)) + 1000 * 4 * 192
    assert round(adm64 / 1e6) == 296
