"""zoo.data.degradations. Gaussian blur: radius = Gaussian standard deviation (Pillow's GaussianBlur reading), kernel 2*ceil(3r)+1, r=0 identity.
unCLIP upsampler corruptions: the statistics of each degradation (blur sigma from impulse responses, noise std,
Poisson variance, JPEG quality vs error and size), output shapes and ranges, determinism by seed, paired crops.

The "FD rises with blur radius" check needs the Inception fixture and lives in tests/eval/test_metrics.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.io import encode_jpeg

from eval.ablations import DALLE_BLUR_RADII
from zoo.data.degradations import (
    BSR_OPERATIONS,
    BlurCorruption,
    BSRDegradation,
    GaussianBlur,
    add_gaussian_noise,
    add_sensor_noise,
    blur_kernel_size,
    downsample,
    filter2d,
    gaussian_blur,
    gaussian_kernel2d,
    jpeg_compress,
    make_corruption,
    paired_random_crop,
    resize,
    to_uint8,
)


def _smooth_images(n=2, size=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 12, 12, generator=g)
    return torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False) * 2 - 1


def test_kernel_size_rule():
    assert [blur_kernel_size(r) for r in DALLE_BLUR_RADII] == [1, 7, 13, 25, 49]
    assert blur_kernel_size(0.5) == 5
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            blur_kernel_size(bad)


def test_radius_zero_is_identity():
    x = _smooth_images()
    assert gaussian_blur(x, 0) is x
    assert GaussianBlur(0)(x) is x


def test_radius_is_standard_deviation_of_an_impulse_response():
    for r in (1, 2, 4):
        x = torch.full((1, 3, 65, 65), -1.0)
        x[..., 32, 32] = 1.0
        y = gaussian_blur(x, r)[0, 0] + 1  # response to an impulse of height 2 (background -1 -> 0)
        w = y.sum(0)  # marginal along columns
        pos = torch.arange(65, dtype=torch.float64) - 32
        var = float((w.double() * pos**2).sum() / w.double().sum())
        # the kernel is truncated at 3 sigma, which removes ~3% of the variance
        assert var == pytest.approx(r**2, rel=0.05), (r, var)


def test_matches_pillow_gaussian_blur_radius():
    """Pillow's ImageFilter.GaussianBlur(radius) (radius = std): ours with sigma=r agrees away from the borders
    (Pillow approximates the Gaussian with box filters and extends edges), and sigma=r/2 or 2r clearly do not."""
    from PIL import Image, ImageFilter

    x = _smooth_images(n=1)
    u8 = ((x[0] + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    xq = torch.from_numpy(u8).permute(2, 0, 1)[None].float() / 127.5 - 1
    for r in (1, 2, 4):
        pil = np.asarray(Image.fromarray(u8).filter(ImageFilter.GaussianBlur(r))).astype(np.float32)
        m = 3 * r + 2
        err = {}
        for s in (r / 2, r, 2 * r):
            ours = ((gaussian_blur(xq, s) + 1) * 127.5)[0].permute(1, 2, 0).numpy()
            err[s] = float(np.abs(ours - pil)[m:-m, m:-m].mean())
        assert err[r] < 1.5, err  # < 1.5 grey levels of 255 on average
        assert err[r] * 2.5 < min(err[r / 2], err[2 * r]), err


def test_shapes_range_and_batching():
    x = _smooth_images(n=3, size=64)
    y = gaussian_blur(x, 2)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= -1 and y.max() <= 1
    assert y.std() < x.std()  # smoother
    torch.testing.assert_close(gaussian_blur(x[1], 2), y[1])  # (3, H, W) works and batching changes nothing
    assert "sigma=radius" in repr(GaussianBlur(2))


def test_radius_too_large_for_image_is_a_clear_error():
    with pytest.raises(ValueError, match="too large"):
        gaussian_blur(torch.zeros(1, 3, 16, 16), 8)  # kernel 49, half-width 24 >= 16
    with pytest.raises(ValueError):
        gaussian_blur(torch.zeros(1, 3, 16, 16, dtype=torch.uint8), 1)


# =============================================================================================================
# unCLIP upsampler corruptions: blur corruption (first stage), BSR degradation (second stage), paired crops
# =============================================================================================================

ONLY = {f"{op}_prob": 0.0 for op in ("blur", "resize", "gaussian_noise", "sensor_noise", "jpeg", "final_jpeg")}


def _impulse(n=1, size=65):
    """A unit impulse on a ZERO background (mid-grey): on a -1 background float32 round-off leaves ~1e-7 on every
    pixel, which the far-away positions of a second moment amplify."""
    x = torch.zeros(n, 3, size, size)
    x[..., size // 2, size // 2] = 1.0
    return x


def _moments(response: torch.Tensor) -> torch.Tensor:
    """Second-moment matrix [[E xx, E xy], [E xy, E yy]] of a non-negative (H, W) response about the centre."""
    w = response.double()
    h = w.shape[0]
    pos = torch.arange(h, dtype=torch.float64) - h // 2
    yy, xx = torch.meshgrid(pos, pos, indexing="ij")
    m = w.sum()
    exx, eyy, exy = (w * xx * xx).sum() / m, (w * yy * yy).sum() / m, (w * xx * yy).sum() / m
    return torch.stack([torch.stack([exx, exy]), torch.stack([exy, eyy])])


def _textured(n=2, size=64, seed=0):
    """Smooth colour fields plus fine detail: something for blur, resizing and JPEG to destroy."""
    g = torch.Generator().manual_seed(seed)
    smooth = _smooth_images(n, size, seed)
    fine = torch.rand(n, 3, size, size, generator=g) * 0.6 - 0.3
    return (0.7 * smooth + fine).clamp(-1, 1)


def test_blur_corruption_sigma_is_the_impulse_response_std():
    """scale=1 isolates the blur: the variance of a blurred impulse is sigma^2 for each drawn sigma."""
    corr = BlurCorruption(scale=1, sigma_range=(1.0, 3.0))
    y, params = corr(_impulse(n=6), torch.Generator().manual_seed(0), return_params=True)
    sigmas = [p["sigma"] for p in params]
    assert all(1.0 <= s <= 3.0 for s in sigmas) and max(sigmas) - min(sigmas) > 0.5  # drawn per image
    for img, s in zip(y, sigmas, strict=True):
        var = float(_moments(img[0])[0, 0])
        assert var == pytest.approx(s**2, rel=0.05), (s, var)  # 3-sigma truncation removes ~3%


def test_blur_corruption_downsamples_then_blurs_within_range():
    x = _textured(n=4, size=64)
    corr = BlurCorruption(scale=4, sigma_range=(0.4, 0.6))
    y, params = corr(x, torch.Generator().manual_seed(1), return_params=True)
    assert y.shape == (4, 3, 16, 16) and y.dtype == x.dtype
    assert y.min() >= -1 and y.max() <= 1
    assert all(0.4 <= p["sigma"] <= 0.6 for p in params)
    # exactly a bicubic downsample followed by gaussian_blur with the drawn sigma
    torch.testing.assert_close(y[2:3], gaussian_blur(downsample(x[2:3], 4, "bicubic"), params[2]["sigma"]))
    assert y.std() < downsample(x, 4).std()  # blur removed detail
    with pytest.raises(ValueError):
        BlurCorruption(sigma_range=(0.6, 0.4))


def test_anisotropic_kernel_has_the_rotated_covariance():
    sx, sy, theta = 3.0, 1.0, math.pi / 6
    k = gaussian_kernel2d(sx, sy, theta, size=31)
    assert k.shape == (31, 31) and float(k.sum()) == pytest.approx(1.0)
    c, s = math.cos(theta), math.sin(theta)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    want = rot @ torch.diag(torch.tensor([sx**2, sy**2], dtype=torch.float64)) @ rot.T
    torch.testing.assert_close(_moments(k), want, rtol=0.02, atol=0.02)
    # through filter2d on an impulse image: the same moments (the filter is the kernel)
    resp = filter2d(_impulse(size=65), k)[0, 0]
    torch.testing.assert_close(_moments(resp), want, rtol=0.02, atol=0.02)
    # isotropic: sigma_y defaults to sigma_x, rotation is irrelevant
    torch.testing.assert_close(gaussian_kernel2d(2.0, size=21), gaussian_kernel2d(2.0, 2.0, 1.0, size=21))


def test_bsr_blur_draws_isotropic_and_anisotropic_kernels_in_range():
    bsr = BSRDegradation(scale=1, **{**ONLY, "blur_prob": 1.0}, blur_sigma_range=(1.0, 2.5))
    g = torch.Generator().manual_seed(0)
    y, params = bsr(_impulse(n=8), g, return_params=True)
    aniso = 0
    for img, p in zip(y, params, strict=True):
        b = p["blur"]
        assert [op for op in p["order"] if op != "final"] == ["blur"]
        assert 1.0 <= b["sigma_x"] <= 2.5 and 1.0 <= b["sigma_y"] <= 2.5
        aniso += b["sigma_x"] != b["sigma_y"]
        # the response's covariance has eigenvalues sigma_x^2, sigma_y^2
        ev = torch.linalg.eigvalsh(_moments(img[0]))
        want = torch.tensor(sorted([b["sigma_x"] ** 2, b["sigma_y"] ** 2]), dtype=torch.float64)
        torch.testing.assert_close(ev, want, rtol=0.06, atol=0.0)
    assert 0 < aniso < 8  # anisotropic_prob 0.5: both kinds occur


def test_gaussian_noise_std_matches_the_configured_sigma():
    x = torch.zeros(1, 3, 128, 128)  # mid-grey: no clamping
    for sigma in (2.0, 10.0, 25.0):
        r = add_gaussian_noise(x, sigma, torch.Generator().manual_seed(0)) - x
        assert float(r.std()) == pytest.approx(2 * sigma / 255, rel=0.03)
        assert abs(float(r.mean())) < 0.1 * 2 * sigma / 255
    # through the degradation: the drawn sigma is in range and is the residual's std
    bsr = BSRDegradation(scale=1, **{**ONLY, "gaussian_noise_prob": 1.0}, gaussian_noise_range=(5.0, 20.0))
    y, params = bsr(torch.zeros(4, 3, 96, 96), torch.Generator().manual_seed(3), return_params=True)
    for img, p in zip(y, params, strict=True):
        s = p["gaussian"]["sigma"]
        assert 5.0 <= s <= 20.0
        assert float(img.std()) == pytest.approx(2 * s / 255, rel=0.04)


def test_sensor_noise_is_poisson_shot_noise():
    """Var of u = (x + 1) / 2 is u / peak: the residual std grows with the signal and falls with the peak."""
    g = torch.Generator().manual_seed(0)
    for u in (0.2, 0.5, 0.8):
        for peak in (100.0, 1000.0):
            x = torch.full((1, 3, 96, 96), 2 * u - 1)
            r = (add_sensor_noise(x, peak, g) - x) / 2  # in [0, 1] units
            assert float(r.std()) == pytest.approx(math.sqrt(u / peak), rel=0.05), (u, peak)
            assert abs(float(r.mean())) < 0.05 * math.sqrt(u / peak) + 1e-3
    bsr = BSRDegradation(scale=1, **{**ONLY, "sensor_noise_prob": 1.0})
    _, params = bsr(torch.zeros(8, 3, 16, 16), g, return_params=True)
    assert all(10**2 <= p["sensor"]["peak"] <= 10**4 for p in params)


def test_jpeg_error_and_size_grow_as_quality_falls():
    pos = torch.arange(64.0)
    x = (0.8 * _smooth_images(n=1, size=64) + 0.2 * torch.sin(pos[:, None] * 0.9) * torch.cos(pos[None] * 0.7)).clamp(
        -1, 1
    )
    u8 = to_uint8(x)[0]
    errors, sizes = [], []
    for q in (95, 70, 50, 30):
        errors.append(float((jpeg_compress(x, q) - x).abs().mean()))
        sizes.append(int(encode_jpeg(u8, quality=q).numel()))
    assert errors == sorted(errors) and errors[-1] > 2 * errors[0], errors  # error grows as quality falls
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > 2 * sizes[-1], sizes  # fewer bytes
    y = jpeg_compress(x, 50)
    assert y.shape == x.shape and y.dtype == x.dtype and y.min() >= -1 and y.max() <= 1
    with pytest.raises(ValueError):
        jpeg_compress(x, 0)


def test_jpeg_quality_is_drawn_within_the_range():
    bsr = BSRDegradation(scale=4)
    g = torch.Generator().manual_seed(0)
    q = [bsr.sample_params(g)["jpeg"]["quality"] for _ in range(300)]
    assert min(q) >= 30 and max(q) <= 95
    assert min(q) <= 33 and max(q) >= 92  # the whole range is used
    assert all(isinstance(v, int) for v in q)
    narrow = BSRDegradation(scale=4, jpeg_quality_range=(60, 70))
    assert {narrow.sample_params(g)["jpeg"]["quality"] for _ in range(100)} <= set(range(60, 71))


def test_bsr_shapes_range_random_order_and_all_operations():
    x = _textured(n=3, size=64)
    g = torch.Generator().manual_seed(0)
    y, params = BSRDegradation(scale=4)(x, g, return_params=True)
    assert y.shape == (3, 3, 16, 16) and y.dtype == torch.float32
    assert y.min() >= -1 and y.max() <= 1 and torch.isfinite(y).all()
    orders = {tuple(BSRDegradation(scale=4).sample_params(g)["order"]) for _ in range(200)}
    assert len(orders) > 20  # operations in random order
    full = [o for o in orders if len(o) == len(BSR_OPERATIONS) + 1]
    assert full and all(sorted(o) == sorted(BSR_OPERATIONS + ("final",)) for o in full)
    assert any(o.index("jpeg") < o.index("blur") for o in full) and any(o.index("jpeg") > o.index("blur") for o in full)
    modes = {BSRDegradation(scale=4).sample_params(g)["final_mode"] for _ in range(100)}
    assert modes == {"bilinear", "bicubic", "area"}
    # nothing enabled and scale 1: the identity; nothing enabled: a plain resize
    none = BSRDegradation(scale=1, **ONLY)
    torch.testing.assert_close(none(x, g), x)
    p = BSRDegradation(scale=4, **ONLY, resize_modes=("area",)).sample_params(g)
    assert p["order"] == ["final"] and p["final_mode"] == "area" and p["final_jpeg"] is None
    with pytest.raises(ValueError, match="unknown BSR"):
        BSRDegradation(jpeg_quality=50)
    with pytest.raises(ValueError):
        BSRDegradation(jpeg_quality_range=(30, 101))


def test_bsr_noise_and_jpeg_also_act_at_the_output_resolution():
    """BSRGAN shuffles the resize to the target size with the other steps (only after the random resize) and ends
    with a JPEG of the output. Were every step applied before a final 4x downsampling, its antialiasing would
    average the noise away: a std of 20 grey levels reached the conditioning as 3-5."""
    g = torch.Generator().manual_seed(0)
    bsr = BSRDegradation(scale=4, **{**ONLY, "gaussian_noise_prob": 1.0}, gaussian_noise_range=(20.0, 20.0))
    y, params = bsr(torch.zeros(12, 3, 64, 64), g, return_params=True)
    stds = {}
    for img, p in zip(y, params, strict=True):
        stds[p["order"].index("gaussian") > p["order"].index("final")] = float(img.std()) * 127.5
    assert stds[True] == pytest.approx(20.0, rel=0.1)  # noise drawn at the output resolution keeps its std
    assert stds[False] < 8.0  # noise drawn before the 4x downsampling is averaged down
    orders = [BSRDegradation(scale=4).sample_params(g)["order"] for _ in range(200)]
    assert all(o.index("resize") < o.index("final") for o in orders if "resize" in o)
    assert any(o[-1] == "final" for o in orders) and any(o[-1] != "final" for o in orders)
    # the final JPEG: blocky output artefacts at the conditioning's resolution
    x = _textured(n=2, size=64)
    plain = BSRDegradation(scale=4, **ONLY, resize_modes=("area",))
    jpeg = BSRDegradation(scale=4, **{**ONLY, "final_jpeg_prob": 1.0}, resize_modes=("area",))
    jpeg_y, jp = jpeg(x, torch.Generator().manual_seed(1), return_params=True)
    clean = plain(x, torch.Generator().manual_seed(1))
    assert all(30 <= p["final_jpeg"]["quality"] <= 95 for p in jp)
    for i, p in enumerate(jp):
        torch.testing.assert_close(jpeg_y[i : i + 1], jpeg_compress(clean[i : i + 1], p["final_jpeg"]["quality"]))


def test_bsr_on_small_images_caps_the_kernel():
    y = BSRDegradation(scale=4, blur_sigma_range=(3.0, 3.0))(_textured(n=2, size=16), torch.Generator().manual_seed(0))
    assert y.shape == (2, 3, 4, 4) and torch.isfinite(y).all()


@pytest.mark.parametrize("kind", ["blur", "bsr"])
def test_corruptions_are_deterministic_given_the_seed(kind):
    x = _textured(n=3, size=32)
    corr = make_corruption(kind, scale=4)
    a = corr(x, torch.Generator().manual_seed(7))
    b = corr(x, torch.Generator().manual_seed(7))
    c = corr(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == (3, 3, 8, 8)
    with pytest.raises(ValueError):
        make_corruption("sharpen")


def test_resize_modes_sizes_and_range():
    x = _textured(n=2, size=64)
    for mode in ("bilinear", "bicubic", "area"):
        y = resize(x, (24, 40), mode)
        assert y.shape == (2, 3, 24, 40) and y.min() >= -1 and y.max() <= 1
    assert resize(x, (64, 64), "bicubic") is x
    with pytest.raises(ValueError):
        resize(x, (8, 8), "nearest")


def test_paired_random_crop_matches_coordinates():
    """Crops of an image and of its (area) downsample at matching corners show the same region: downsampling the
    high-resolution crop gives the low-resolution crop."""
    x = _textured(n=5, size=64)
    low = downsample(x, 4, "area")
    hi, lo, corners = paired_random_crop(x, low, 16, torch.Generator().manual_seed(0))
    assert hi.shape == (5, 3, 16, 16) and lo.shape == (5, 3, 4, 4)
    assert (corners % 4 == 0).all() and len({tuple(c) for c in corners.tolist()}) > 1
    torch.testing.assert_close(downsample(hi, 4, "area"), lo)
    for i, (top, left) in enumerate(corners.tolist()):
        torch.testing.assert_close(hi[i], x[i, :, top : top + 16, left : left + 16])
    with pytest.raises(ValueError):
        paired_random_crop(x, low, 18)  # not a multiple of the scale


@pytest.mark.parametrize("bad", [0.5, None, "12", [0.4], ["a", "b"]])
def test_a_range_that_is_not_a_pair_of_numbers_is_a_clear_value_error(bad):
    """A scalar (``blur_sigma_range=0.5``) or None used to escape as ``TypeError: object of type 'float' has no
    len()``, and a two-character string was read as two numbers ("12" -> (1, 2))."""
    with pytest.raises(ValueError, match="sigma_range must be \\(low, high\\)"):
        BlurCorruption(sigma_range=bad)
    with pytest.raises(ValueError, match="gaussian_noise_range must be \\(low, high\\)"):
        BSRDegradation(gaussian_noise_range=bad)


def test_yaml_lists_from_hydra_become_tuples():
    from omegaconf import OmegaConf

    bsr = BSRDegradation(4, **OmegaConf.create({"jpeg_quality_range": [50, 95], "resize_modes": ["area"]}))
    assert bsr.config.jpeg_quality_range == (50, 95) and bsr.config.resize_modes == ("area",)
    assert BlurCorruption(4, OmegaConf.create([0.3, 0.5])).sigma_range == (0.3, 0.5)


@pytest.mark.parametrize(
    "option, value, says",
    [
        # a fractional JPEG quality was drawn as int(30.5) = 30, outside the range asked for, without a word
        ("jpeg_quality_range", [30.5, 95], "jpeg_quality_range must be .* two whole numbers"),
        ("jpeg_quality_range", [True, 95], "jpeg_quality_range must be"),
        # noise of infinite std turned every pixel into -1, 1 or NaN (clamped) and trained on it
        ("gaussian_noise_range", [2, math.inf], "gaussian_noise_range must be .* two finite numbers"),
        # 10 ** 400 overflowed at a random draw; 10 ** 20 photons overflow torch.poisson's counts (a black image)
        ("sensor_log10_peak_range", [2, 20], r"sensor_log10_peak_range must be .* <= 10.0"),
        # an infinite blur was accepted and failed at the first training step
        ("blur_sigma_range", [0.5, math.inf], "blur_sigma_range must be"),
        # float()'s bare "could not convert string to float: 'yes'" or TypeError; true was a probability of 1
        ("blur_prob", "yes", "blur_prob must be a probability in"),
        ("jpeg_prob", None, "jpeg_prob must be a probability in"),
        ("final_jpeg_prob", True, "final_jpeg_prob must be a probability in"),
        # 20.5 passed the "odd" test and became an even kernel at the first blur; "21" was a TypeError
        ("max_kernel_size", 20.5, "max_kernel_size must be an odd whole number"),
        ("max_kernel_size", "21", "max_kernel_size must be an odd whole number"),
        ("resize_modes", "bilinear", "resize_modes='bilinear' must be a non-empty list"),
    ],
)
def test_bad_bsr_options_are_a_config_error_naming_the_option_and_its_default(option, value, says):
    from zoo.errors import ConfigError

    with pytest.raises(ConfigError, match=says) as info:
        BSRDegradation(4, **{option: value})
    assert f"(fix: model.bsr.{option}=" in str(info.value)  # the default, as an override
    for scale in (2.5, True, "4"):  # int() took them for 2, 1 and 4
        with pytest.raises(ConfigError, match="scale must be a whole number"):
            BSRDegradation(scale)
    with pytest.raises(ConfigError, match=r"sigma_range must be .*\(fix: model.blur_sigma_range=\[0.4, 0.6\]"):
        BlurCorruption(4, [0.4, math.inf])
    # YAML floats of whole values are still taken, as whole numbers
    bsr = BSRDegradation(4.0, jpeg_quality_range=[30.0, 95.0], max_kernel_size=21.0)
    assert bsr.scale == 4 and bsr.config.jpeg_quality_range == (30, 95) and bsr.config.max_kernel_size == 21
    assert isinstance(bsr.config.jpeg_quality_range[0], int)
