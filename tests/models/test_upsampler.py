"""unCLIP upsamplers: the super-resolution U-Net's inputs (x_t + upsampled low-res = 6 channels, no attention),
training on quarter-size crops vs full-size sampling, overfitting a fixed batch, zoo-train -> load_module ->
upsample, the paper presets' parameter counts (meta device) and the default DDIM step counts (27 / 15)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from zoo.errors import ConfigError
from zoo.models.upsampler.lit import UpsamplerLit
from zoo.models.upsampler.model import (
    UPSAMPLER_PAPER_PARAMS,
    UPSAMPLER_PRESETS,
    Upsampler,
    count_upsampler_params,
)
from zoo.nn.unet import AttentionBlock


def _images(b: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth colour fields with an edge: something an upsampler can learn quickly."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(b, 3, 4, 4, generator=g) * 2 - 1
    x = torch.nn.functional.interpolate(base, size=size, mode="bilinear", align_corners=False)
    x[..., size // 2 :, :] *= -1
    return x.clamp(-1, 1).contiguous()


def test_super_resolution_unet_inputs_and_no_attention():
    torch.manual_seed(0)
    net = Upsampler(UPSAMPLER_PRESETS["tiny"])
    assert net.input_channels == 6  # x_t (3) + the upsampled low-resolution image (3)
    assert not [m for m in net.modules() if isinstance(m, AttentionBlock)]
    assert net.unet.cfg.context_dim is None
    x, low = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 8, 8)
    assert net(x, torch.tensor([0, 999]), low).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError):
        net(x, torch.tensor([0, 1]), torch.randn(2, 3, 16, 16))  # not x4
    learned = Upsampler(
        UPSAMPLER_PRESETS["tiny"].__class__(**{**UPSAMPLER_PRESETS["tiny"].to_dict(), "learn_sigma": True})
    )
    assert learned(x, torch.tensor([0, 1]), low).shape == (2, 6, 32, 32)  # [eps ; v]
    for name, cfg in UPSAMPLER_PRESETS.items():
        assert cfg.unet_config().attention_resolutions == () and not cfg.unet_config().attention_in_middle, name


def test_the_low_res_image_reaches_the_output():
    """With the zero-initialised output layer perturbed, changing only the conditioning changes the output."""
    torch.manual_seed(0)
    net = Upsampler(UPSAMPLER_PRESETS["tiny"]).eval()
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.1)
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([500])
    a = net(x, t, torch.zeros(1, 3, 8, 8))
    b = net(x, t, torch.ones(1, 3, 8, 8))
    assert (a - b).abs().mean() > 1e-3


def test_crop_training_then_full_size_upsampling():
    torch.manual_seed(0)
    lit = UpsamplerLit(preset="tiny")
    cfg = lit.cfg
    assert (cfg.image_size, cfg.low_res_size, cfg.train_crop) == (32, 8, 8)
    x = _images(4, 32)
    high, low = lit.training_pair(x, torch.Generator().manual_seed(0))
    assert high.shape == (4, 3, 8, 8) and low.shape == (4, 3, 2, 2)  # a quarter of the target side
    seen = []
    hook = lit.net.unet.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape)))
    loss = lit.forward_loss({"image": x})["loss"]
    loss.backward()
    assert seen == [(4, 3, 8, 8)]  # the U-Net trains on the crops only
    assert all(p.grad is not None for p in lit.net.parameters())
    seen.clear()
    full_low = lit.degrade(x, torch.Generator().manual_seed(0))
    assert full_low.shape == (4, 3, 8, 8)
    up = lit.upsample(full_low, steps=3, generator=torch.Generator().manual_seed(0))
    hook.remove()
    assert up.shape == (4, 3, 32, 32) and up.abs().max() <= 1 and torch.isfinite(up).all()
    assert seen == [(4, 3, 32, 32)] * 3  # sampled at the full target size, 3 DDIM steps
    # any low-resolution size whose x4 fits the U-Net: fully convolutional
    assert lit.upsample(torch.zeros(1, 3, 4, 6), steps=2).shape == (1, 3, 16, 24)
    # eta = 0: deterministic given the seed
    again = lit.upsample(full_low, steps=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(up, again)


def test_tiled_sampling_feeds_training_size_windows_and_bad_tiles_fail_before_training():
    torch.manual_seed(0)
    lit = UpsamplerLit(preset="tiny", sample_tile="train_crop", sample_tile_overlap=4)
    with torch.no_grad():  # re-draw every weight: the zero-initialised output layer would make any two samplings equal
        for p in lit.net.parameters():
            p.normal_(0.0, 0.2)
    assert lit.resolve_tile("train_crop", 4) == (8, 4) and lit.resolve_tile(None, 8) is None
    low = torch.rand(2, 3, 8, 8) * 2 - 1
    seen = []
    hook = lit.net.unet.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape)))
    up = lit.upsample(low, steps=2, generator=torch.Generator().manual_seed(0))
    assert up.shape == (2, 3, 32, 32) and up.abs().max() <= 1
    assert seen == [(2 * 7 * 7, 3, 8, 8)] * 2  # 7 x 7 windows of 8 px (stride 4) per image, each step
    seen.clear()
    whole = lit.upsample(low, steps=2, generator=torch.Generator().manual_seed(0), tile=0)  # the paper's way
    hook.remove()
    assert seen == [(2, 3, 32, 32)] * 2 and not torch.equal(up, whole)
    for tile, overlap in ((6, 2), (8, 8), ("big", 2), (8, -1)):
        with pytest.raises(ConfigError, match="model.sample_tile"):
            UpsamplerLit(preset="tiny", sample_tile=tile, sample_tile_overlap=overlap)


@pytest.mark.parametrize("tile", [0, "train_crop"])
def test_large_sampling_batches_run_the_network_a_few_images_at_a_time(monkeypatch, tile):
    """Past CALL_POSITIONS output pixels a sampling call runs the network on slices of images (each with its own
    low-res input; tiled or whole): the same upsampled images as one call, the noise drawn for the whole batch."""
    import zoo.models.upsampler.lit as up_lit

    torch.manual_seed(0)
    lit = UpsamplerLit(preset="tiny", sample_tile_overlap=4)
    with torch.no_grad():  # re-draw every weight: the zero-initialised output layer would hide a mix-up
        for p in lit.net.parameters():
            p.normal_(0.0, 0.2)
    low = torch.rand(5, 3, 8, 8) * 2 - 1
    seen = []
    hook = lit.net.unet.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    monkeypatch.setattr(up_lit, "CALL_POSITIONS", 2 * 32 * 32)  # 2 images of 32 px per call
    sliced = lit.upsample(low, steps=2, generator=torch.Generator().manual_seed(0), tile=tile)
    per_image = 1 if tile == 0 else 7 * 7  # windows per image
    assert seen == [2 * per_image, 2 * per_image, per_image] * 2  # 2 + 2 + 1 images, each of 2 steps
    monkeypatch.setattr(up_lit, "CALL_POSITIONS", 10**9)
    whole = lit.upsample(low, steps=2, generator=torch.Generator().manual_seed(0), tile=tile)
    hook.remove()
    assert seen[6:] == [5 * per_image] * 2
    torch.testing.assert_close(sliced, whole, rtol=0, atol=1e-5)


def test_bsr_stage_trains_and_sample_grid_layout():
    torch.manual_seed(0)
    lit = UpsamplerLit(preset="tiny", corruption="bsr", grid_images=3, grid_steps=2)
    assert lit.corruption.kind == "bsr" and lit.sample_steps == 15
    r = lit.forward_loss({"image": _images(2, 32)})
    assert torch.isfinite(r["loss"])
    grid = lit.sample_grid({"image": _images(3, 32)})
    assert grid.shape == (12, 3, 32, 32) and lit.grid_nrow == 4  # low-res | bicubic | upsampled | real
    torch.testing.assert_close(grid[3::4], _images(3, 32))  # the real column
    assert torch.equal(grid, lit.sample_grid({"image": _images(3, 32)}))  # deterministic


def test_bsr_corruption_runs_under_bf16_autocast():
    """bf16-mixed training (chosen on CPUs with native bf16) autocasts the step; the BSR corruption's antialiased
    resizes have no bf16 CPU kernel, so degrade() runs in fp32 whatever the autocast state, with the same result."""
    lit = UpsamplerLit(preset="tiny", corruption="bsr")
    images = _images(2, 32)
    plain = lit.degrade(images, torch.Generator().manual_seed(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = lit.degrade(images, torch.Generator().manual_seed(3))
        r = lit.forward_loss({"image": images}, torch.Generator().manual_seed(3), torch.Generator().manual_seed(4))
    assert mixed.dtype == torch.float32 and torch.equal(plain, mixed)
    assert torch.isfinite(r["loss"])


def _overfit(lit: UpsamplerLit, batch: dict, steps: int = 60) -> tuple[float, float]:
    """The MSE term before and after ``steps`` Adam steps on one batch (fixed crops, timesteps and noise for the two
    readings, so they compare)."""
    opt = torch.optim.Adam(lit.parameters(), lr=5e-3)

    def eval_loss():
        with torch.no_grad():
            return lit.forward_loss(
                batch, generator=torch.Generator().manual_seed(1), diffusion_generator=torch.Generator().manual_seed(2)
            )["mse"].item()

    start = eval_loss()
    for _ in range(steps):
        loss = lit.forward_loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return start, eval_loss()


def test_tiny_upsampler_overfits_a_fixed_batch():
    torch.manual_seed(0)
    lit = UpsamplerLit(preset="tiny")
    start, end = _overfit(lit, {"image": _images(4, 32)})
    assert end < 0.4 * start, (start, end)


def test_v_prediction_knob_trains_and_samples():
    """model.prediction=v reaches the process (and its respaced sampler); a bad value fails at construction; a tiny v
    upsampler learns a fixed batch and samples full-size images in range."""
    assert UpsamplerLit(preset="tiny").process.model_mean_type == "eps"  # the paper's default
    with pytest.raises(ConfigError, match="model.prediction"):
        UpsamplerLit(preset="tiny", prediction="x0")
    torch.manual_seed(0)
    lit = UpsamplerLit(preset="tiny", prediction="v")
    assert lit.process.model_mean_type == "v" and lit.process.respaced(3).model_mean_type == "v"
    batch = {"image": _images(4, 32)}
    start, end = _overfit(lit, batch)
    assert end < 0.6 * start, (start, end)
    up = lit.upsample(lit.degrade(batch["image"], torch.Generator().manual_seed(0)), steps=3)
    assert up.shape == (4, 3, 32, 32) and torch.isfinite(up).all() and up.abs().max() <= 1


def test_default_steps_are_the_papers():
    assert UPSAMPLER_PRESETS["paper_64_256"].default_sample_steps == 27
    assert UPSAMPLER_PRESETS["paper_256_1024"].default_sample_steps == 15
    assert UPSAMPLER_PRESETS["shapes_32_128"].corruption == "blur"
    assert UPSAMPLER_PRESETS["shapes_128_512"].corruption == "bsr"
    assert UpsamplerLit(preset="tiny").sample_steps == 27
    assert UpsamplerLit(preset="tiny", corruption="bsr").sample_steps == 15
    assert UpsamplerLit(preset="tiny", corruption="bsr", sample_steps=9).sample_steps == 9
    with pytest.raises(ConfigError, match="contradicts"):
        UpsamplerLit(preset="tiny", corruption="bsr", net={"corruption": "blur"})
    with pytest.raises(ConfigError):
        UpsamplerLit(preset="tiny", corruption="sharpen")
    with pytest.raises(ConfigError):
        UpsamplerLit(preset="tiny", net={"image_size": 36})  # not a multiple of 4 * crop_fraction


def test_paper_presets_parameter_counts_on_meta():
    for name, paper in (("paper_64_256", 700e6), ("paper_256_1024", 300e6)):
        n = count_upsampler_params(name)
        assert n == UPSAMPLER_PAPER_PARAMS[name]
        assert abs(n - paper) / paper < 0.08, (name, n)  # within 8% of the paper's size
        cfg = UPSAMPLER_PRESETS[name]
        assert (cfg.scale, cfg.train_crop * 4) == (4, cfg.image_size)
    assert UPSAMPLER_PRESETS["paper_64_256"].image_size == 256
    assert UPSAMPLER_PRESETS["paper_256_1024"].image_size == 1024
    assert count_upsampler_params("tiny") < 100_000


def test_check_data_wants_the_target_resolution():
    class DM:
        resolution = 64

    with pytest.raises(ConfigError, match="data.resolution=32"):
        UpsamplerLit(preset="tiny").check_data(DM())


def test_a_blur_too_wide_for_the_conditioning_fails_before_training_and_ignored_options_warn():
    """A blur sigma whose kernel does not fit the low-resolution image used to fail inside the first training step
    (gaussian_blur's reflect padding); the other corruption's options were silently ignored."""

    class DM:
        resolution = 32

    net = {"image_size": 32, "width": 8, "channel_mult": (1, 2), "num_res_blocks": 1, "max_groups": 8}
    with pytest.raises(ConfigError, match="blur_sigma_range.*8 px conditioning"):
        UpsamplerLit(preset="shapes_32_128", net=net, blur_sigma_range=(2.0, 3.0))
    tiny = UpsamplerLit(preset="tiny", blur_sigma_range=(2.0, 3.0))  # zoo-train may refit a tiny one to the data
    with pytest.raises(ConfigError, match="blur_sigma_range.*8 px conditioning"):
        tiny.check_data(DM())
    UpsamplerLit(preset="tiny", blur_sigma_range=(1.0, 2.0)).check_data(DM())  # a 13x13 kernel fits 8 px
    with pytest.warns(UserWarning, match="model.bsr=.* is ignored"):
        UpsamplerLit(preset="tiny", bsr={"jpeg_quality_range": (50, 95)})
    with pytest.warns(UserWarning, match="model.blur_sigma_range=.* is ignored"):
        UpsamplerLit(preset="tiny", corruption="bsr", blur_sigma_range=(0.5, 1.0))
    for ignored in (["a", 1], 0.5):  # float() of each entry raised a bare ValueError / TypeError
        with pytest.warns(UserWarning, match="model.blur_sigma_range=.* is ignored"):
            UpsamplerLit(preset="tiny", corruption="bsr", blur_sigma_range=ignored)


def test_train_checkpoint_load_and_upsample(train_cfg, train_helpers):
    from zoo.checkpoint import load_module

    T = train_helpers
    cfg = train_cfg(*T.TINY_UPSAMPLER, *T.sizes(24), *T.ONE_EPOCH)
    _, last, ckpt = T.train_checked(cfg, "upsampler", global_step=3)
    model = load_module(last)
    assert isinstance(model, UpsamplerLit) and model.cfg == UPSAMPLER_PRESETS["tiny"]
    low = model.degrade(_images(2, 32), torch.Generator().manual_seed(0))  # 8 px
    up = model.upsample(low, steps=3, generator=torch.Generator().manual_seed(0))
    assert up.shape == (2, 3, 32, 32) and torch.isfinite(up).all() and up.abs().max() <= 1


def test_experiment_config_composes(train_cfg):
    cfg = train_cfg("experiment=unclip/upsampler_shapes_32_128", "logger=none")
    assert cfg.model._target_ == "zoo.models.upsampler.lit.UpsamplerLit"
    assert cfg.model.preset == "shapes_32_128" and cfg.data.resolution == 128
    from zoo.config import instantiate

    lit = instantiate(cfg.model, "model")
    assert lit.cfg.image_size == 128 and lit.corruption.kind == "blur" and lit.sample_steps == 27
    assert isinstance(lit.net, nn.Module)


class _OracleNet(nn.Module):
    """A denoiser that knows the answer: the eps that x_t holds for a fixed target x0 (what a perfect network
    predicts), at the ORIGINAL timestep the sampler passes."""

    def __init__(self, x0: torch.Tensor, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.x0, self.abar = x0, alphas_cumprod.double()

    def forward(self, x, t, low_res):
        a = self.abar[t].view(-1, 1, 1, 1)
        return ((x.double() - a.sqrt() * self.x0.double()) / (1 - a).sqrt()).to(x.dtype)


def test_residual_upsampler_diffuses_what_bicubic_misses():
    """model.residual: training diffuses x_high - bicubic(low) with the base cut from the WHOLE image's bicubic
    upsampling at the crop's coordinates (same crops as the image upsampler); sampling returns base + the sampled
    residual, so a perfect residual denoiser gives back the real image, and the clip keeps base + x0 in [-1, 1]."""
    torch.manual_seed(0)
    plain, res = UpsamplerLit(preset="tiny"), UpsamplerLit(preset="tiny", residual=True)
    assert not plain.residual and res.residual
    x = _images(4, 32)
    high, low, base = res.training_crops(x, torch.Generator().manual_seed(3))
    high0, low0 = plain.training_pair(x, torch.Generator().manual_seed(3))
    assert torch.equal(high, high0) and torch.equal(low, low0)  # the same random draws
    full_low = res.degrade(x, torch.Generator().manual_seed(3))
    whole = torch.nn.functional.interpolate(full_low, size=32, mode="bicubic", align_corners=False).clamp(-1, 1)
    # the base crop is a window of the whole image's base (find it by the high crop's position)
    hits = [
        any(
            torch.equal(base[i], whole[i, :, y : y + 8, x_ : x_ + 8])
            and torch.equal(high[i], x[i, :, y : y + 8, x_ : x_ + 8])
            for y in range(0, 25, 4)
            for x_ in range(0, 25, 4)
        )
        for i in range(4)
    ]
    assert all(hits), hits
    # (a crop's own bicubic upsampling differs near its border: that is why the base is cut from the whole image)
    own = torch.nn.functional.interpolate(low, size=8, mode="bicubic", align_corners=False).clamp(-1, 1)
    assert not torch.allclose(own, base, atol=1e-3)
    # the diffused target is the residual
    seen = {}
    real_losses = res.process.training_losses

    def spy(net, x_start, t, **kw):
        seen["x_start"] = x_start
        return real_losses(net, x_start, t, **kw)

    res.process.training_losses = spy
    res.forward_loss({"image": x}, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(seen["x_start"], high - base)
    # sampling: a denoiser that knows the residual returns the real image; the plain model with one that knows the
    # image returns it too
    target_res = x - whole
    res.net = _OracleNet(target_res, res.process.schedule.alphas_cumprod)
    up = res.upsample(full_low, steps=5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(up, x, atol=1e-4)
    # the clip range is base-relative: a residual that would leave [-1, 1] is cut where the sum would
    res.net = _OracleNet(target_res + 1.5, res.process.schedule.alphas_cumprod)
    up = res.upsample(full_low, steps=5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(up, (x + 1.5).clamp(-1, 1), atol=1e-4) and up.max() <= 1
    plain.net = _OracleNet(x, plain.process.schedule.alphas_cumprod)
    assert torch.allclose(plain.upsample(full_low, steps=5), x, atol=1e-4)


def test_residual_upsampler_learns_a_fixed_batch():
    torch.manual_seed(0)
    lit = UpsamplerLit(preset="tiny", residual=True, prediction="v")
    start, end = _overfit(lit, {"image": _images(4, 32)})
    assert end < 0.6 * start, (start, end)


def test_residual_and_v_experiment_configs_compose(train_cfg):
    from zoo.config import instantiate

    cfg = train_cfg("experiment=unclip/upsampler_shapes_32_128_residual", "logger=none")
    assert cfg.task_name == "upsampler_shapes_32_128_residual" and cfg.data.resolution == 128
    lit = instantiate(cfg.model, "model")
    assert lit.residual and lit.process.model_mean_type == "v" and lit.cfg.image_size == 128
    v = instantiate(train_cfg("experiment=unclip/upsampler_shapes_32_128_v", "logger=none").model, "model")
    assert not v.residual and v.process.model_mean_type == "v"


@pytest.mark.parametrize(
    "kw, key",
    [
        ({"num_timesteps": 2.5}, "model.num_timesteps"),  # int() trained a 2-step diffusion
        ({"residual": "false"}, "model.residual"),  # bool("false") is true: residual diffusion
        ({"sample_steps": 2.5}, "model.sample_steps"),  # taken as 2 at every upsample()
        ({"sample_steps": 5000}, "model.sample_steps"),  # more steps than timesteps: failed at the first grid
        ({"eta": -1.0}, "model.eta"),  # sampled silently wrong
        ({"grid_steps": 0}, "model.grid_steps"),
        ({"grid_images": 0}, "model.grid_images"),  # failed after the first epoch
        ({"grid_images": 2.5}, "model.grid_images"),
        ({"sample_tile": 8.5}, "model.sample_tile"),  # int() sampled 8 px windows
        ({"sample_tile": True}, "model.sample_tile"),
        ({"sample_tile": 16, "sample_tile_overlap": 4.5}, "model.sample_tile_overlap"),
    ],
)
def test_options_of_the_wrong_kind_are_refused_when_built(kw, key):
    with pytest.raises(ConfigError, match=key):
        UpsamplerLit(preset="tiny", **kw)
