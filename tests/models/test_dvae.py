"""dVAE: paper architecture (presets), ImageTokenizer view, objective pieces, schedules, learning, Lightning wiring."""

from __future__ import annotations

import math

import pytest
import torch

from zoo.data.shapes import ShapesDataset
from zoo.models.dvae import DVAE, PRESETS, DVAEConfig
from zoo.models.dvae.lit import DVAELit, kl_to_uniform
from zoo.nn.annealing import SCHEDULES
from zoo.nn.image_tokenizer import ImageTokenizer


def _images(n: int, res: int = 32, seed: int = 0) -> torch.Tensor:
    """A fixed batch of structured images in [-1, 1]: coloured rectangles on flat backgrounds."""
    g = torch.Generator().manual_seed(seed)
    x = torch.empty(n, 3, res, res)
    for i in range(n):
        x[i] = torch.rand(3, 1, 1, generator=g) * 2 - 1
        for _ in range(2):
            y0, x0 = torch.randint(0, res - 8, (2,), generator=g).tolist()
            s = int(torch.randint(6, 14, (1,), generator=g))
            x[i, :, y0 : y0 + s, x0 : x0 + s] = torch.rand(3, 1, 1, generator=g) * 2 - 1
    return x


# ----------------------------------------------------------------------------------------------- architecture
def test_paper_preset_matches_the_paper():
    with torch.device("meta"):
        m = DVAE(PRESETS["paper"])
    assert isinstance(m, ImageTokenizer)
    assert m.codebook_size == 8192 and m.grid_size == (32, 32) and m.downsample_factor == 8
    assert m.post_gain == pytest.approx(1 / 64) and m.cfg.n_layers == 8
    assert m.encoder[0].kernel_size == (7, 7)
    blocks = [b for b in m.encoder if hasattr(b, "res_path")]
    assert [b.res_path[-1].out_channels for b in blocks] == [256, 256, 512, 512, 1024, 1024, 2048, 2048]
    assert all(b.post_gain == pytest.approx(1 / 64) for b in blocks)
    # bottleneck = width / 4, convs 3x3, 3x3, 3x3, 1x1 each after a ReLU
    convs = [c for c in blocks[0].res_path if isinstance(c, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3), (3, 3), (3, 3), (1, 1)] and convs[0].out_channels == 64
    assert all(isinstance(a, torch.nn.ReLU) for a in blocks[0].res_path[::2])
    assert sum(isinstance(b, torch.nn.MaxPool2d) for b in m.encoder) == 3
    assert m.encoder[-1].out_channels == 8192 and m.encoder[-1].kernel_size == (1, 1)
    assert m.decoder[0].in_channels == 8192 and m.decoder[0].kernel_size == (1, 1)
    assert sum(isinstance(b, torch.nn.Upsample) for b in m.decoder) == 3
    assert m.decoder[-1].out_channels == 6


def test_presets_and_overrides():
    assert set(PRESETS) >= {"tiny", "shapes", "paper"}
    s = DVAE(PRESETS["shapes"])
    assert s.grid_size == (8, 8) and s.codebook_size == PRESETS["shapes"].vocab_size
    lit = DVAELit(preset="tiny", net={"vocab_size": 32}, recon_loss="mse")
    assert lit.dvae.codebook_size == 32 and lit.dvae.decoder[-1].out_channels == 3
    with pytest.raises(ValueError, match="tiny"):
        DVAELit(preset="huge")
    with pytest.raises(ValueError, match="n_hid"):
        DVAELit(preset="tiny", net={"n_hidden": 3})
    with pytest.raises(ValueError, match="mse"):
        DVAELit(preset="tiny", recon_loss="l1")


def test_encode_decode_shapes_and_dtypes():
    torch.manual_seed(0)
    m = DVAELit(preset="tiny").dvae.eval()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    codes = m.encode(x)
    h, w = m.grid_size
    assert codes.dtype == torch.long and codes.shape == (3, h, w) == (
        3,
        32 // m.downsample_factor,
        32 // m.downsample_factor,
    )
    assert int(codes.min()) >= 0 and int(codes.max()) < m.codebook_size
    torch.testing.assert_close(codes, m.logits(x).argmax(1))  # argmax tokens, no Gumbel noise
    assert torch.equal(codes, m.encode(x))
    out = m.decode(codes)
    assert out.shape == x.shape and out.dtype == torch.float32 and out.min() >= -1 and out.max() <= 1


# ----------------------------------------------------------------------------------------------- objective
def test_kl_to_uniform_values():
    assert kl_to_uniform(torch.zeros(2, 8, 3, 3)).abs().max() < 1e-6
    peaked = torch.full((1, 8, 1, 1), -1e4)
    peaked[0, 3] = 0
    assert kl_to_uniform(peaked).item() == pytest.approx(math.log(8), rel=1e-5)
    logits = torch.randn(1, 5, 1, 1)
    q = logits.softmax(1).flatten()
    assert kl_to_uniform(logits).item() == pytest.approx(float((q * (q * 5).log()).sum()), rel=1e-5)


def test_loss_is_recon_plus_beta_kl_per_pixel_channel():
    torch.manual_seed(0)
    m = DVAELit(preset="tiny", kl_steps=0, kl_weight_max=6.6)
    x = _images(2)
    r = m.forward_loss(x, step=10)
    h, w = m.dvae.grid_size
    kl_by_hand = kl_to_uniform(r["logits"]).sum((1, 2)).mean() / (3 * 32 * 32)
    torch.testing.assert_close(r["kl"], kl_by_hand)
    torch.testing.assert_close(r["loss"], r["recon"] + 6.6 * r["kl"])
    assert r["logits"].shape == (2, m.dvae.codebook_size, h, w)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_schedule_functions_hit_endpoints(schedule):
    fn = SCHEDULES[schedule]
    assert fn(0, 1.0, 1 / 16, 1000) == pytest.approx(1.0)
    assert 1 / 16 < fn(500, 1.0, 1 / 16, 1000) < 1.0
    assert fn(1000, 1.0, 1 / 16, 1000) == pytest.approx(1 / 16)
    assert fn(10**6, 1.0, 1 / 16, 1000) == pytest.approx(1 / 16)
    assert fn(3, 0.0, 6.6, 0) == 6.6  # zero-length schedule: the end value at once


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_temperature_and_kl_weight_reach_their_endpoints(schedule):
    m = DVAELit(
        preset="tiny",
        temperature_steps=100,
        kl_steps=10,
        temperature_schedule=schedule,
        kl_schedule="linear" if schedule == "exponential" else schedule,
    )
    assert m.temperature(0) == pytest.approx(1.0) and m.kl_weight(0) == pytest.approx(0.0)
    taus = [m.temperature(s) for s in range(101)]
    assert all(a >= b for a, b in zip(taus, taus[1:]))  # monotone
    assert m.temperature(100) == pytest.approx(1 / 16) and m.temperature(10**6) == pytest.approx(1 / 16)
    assert 0 < m.kl_weight(5) < 6.6
    assert m.kl_weight(10) == pytest.approx(6.6) and m.kl_weight(10**6) == pytest.approx(6.6)


# ----------------------------------------------------------------------------------------------- learning
@pytest.mark.parametrize("recon_loss", ["logit_laplace", "mse"])
def test_overfits_a_fixed_batch(recon_loss, nn_helpers):
    torch.manual_seed(0)
    ds = ShapesDataset("train", 8, 32)
    x = torch.stack([ds[i]["image"] for i in range(8)])
    m = DVAELit(
        preset="tiny",
        recon_loss=recon_loss,
        temperature_steps=100,
        temperature_schedule="exponential",
        kl_steps=50,
        kl_weight_max=0.5,
    )
    first, last = nn_helpers.fit(m, x, pass_step=True)
    assert last < first / 5, (first, last)
    # and the hard tokens reconstruct too (what stage 2 sees)
    m.eval()
    mse_hard = torch.nn.functional.mse_loss(m.dvae.decode(m.dvae.encode(x)).add(1).div(2), x.add(1).div(2)).item()
    assert mse_hard < first / 3, (first, mse_hard)


def test_config_dataclass_is_frozen():
    with pytest.raises(Exception):
        DVAEConfig().vocab_size = 3  # type: ignore[misc]


# ----------------------------------------------------------------------------------------------- speed paths
def test_gumbel_softmax_has_f_gumbel_softmax_distribution():
    """One uniform draw -> Gumbel(0, 1) noise (the difference of two is Logistic(0, 1): mean 0, variance pi^2 / 3),
    and the argmax of the relaxed sample is a draw from softmax(logits) (Gumbel-max); finite; the layout of the
    logits is kept."""
    from zoo.models.dvae.lit import gumbel_softmax

    g = torch.Generator().manual_seed(0)
    # the noise itself, read back through tau = 1 and a 2-way softmax: logit(y_0) = g_0 - g_1 ~ Logistic(0, 1)
    y = gumbel_softmax(torch.zeros(200_000, 2), 1.0, dim=1, generator=g)
    d = torch.log(y[:, 0]) - torch.log(y[:, 1])
    assert abs(d.mean().item()) < 0.02 and abs(d.var().item() - math.pi**2 / 3) < 0.05
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0])
    z = gumbel_softmax(logits.expand(100_000, 4).contiguous(), 0.5, dim=1, generator=g)
    freq = torch.bincount(z.argmax(1), minlength=4).float() / 100_000
    torch.testing.assert_close(freq, logits.softmax(0), rtol=0, atol=0.006)
    cl = torch.randn(4, 16, 3, 3).contiguous(memory_format=torch.channels_last)
    s = gumbel_softmax(cl, 0.1, dim=1, generator=g)
    assert s.is_contiguous(memory_format=torch.channels_last) and torch.isfinite(s).all()
    torch.testing.assert_close(s.sum(1), torch.ones(4, 3, 3))


def test_kl_to_uniform_same_in_both_layouts():
    x = torch.randn(2, 32, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(kl_to_uniform(x.contiguous(memory_format=torch.channels_last)), kl_to_uniform(x))


def test_resblock_is_identity_plus_gained_residual():
    torch.manual_seed(0)
    m = DVAE(PRESETS["tiny"]).double()
    blk = [b for b in m.encoder if hasattr(b, "res_path")][0]
    x = torch.randn(2, blk.res_path[1].in_channels, 8, 8, dtype=torch.float64)
    res = x.relu()
    for layer in blk.res_path:
        res = layer(res) if isinstance(layer, torch.nn.Conv2d) else torch.relu(res)
    torch.testing.assert_close(blk(x), blk.id_path(x) + blk.post_gain * res)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kl_schedule": "exponential"}, "kl_schedule"),  # ramps from beta = 0: ZeroDivisionError at every step
        ({"temperature_end": 0.0}, "temperature"),  # divided by zero only once the annealing reached it
        ({"temperature_end": -0.5}, "temperature"),  # a negative temperature silently inverts the softmax
        ({"temperature_start": 0.0, "temperature_schedule": "linear"}, "temperature"),
        ({"kl_weight_max": -1.0}, "kl_weight_max"),
        ({"kl_steps": -5}, "kl_steps"),
    ],
)
def test_bad_annealing_settings_are_refused_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DVAELit(preset="tiny", **kwargs)
    with pytest.raises(ValueError, match="start > 0"):  # the function itself names the problem, not 1 / 0
        SCHEDULES["exponential"](5, 0.0, 6.6, 10)


@pytest.mark.parametrize("recon_loss, out_channels", [("mse", 6), ("logit_laplace", 3), ("logit_laplace", 4)])
def test_out_channels_that_do_not_fit_the_loss_are_refused_at_construction(recon_loss, out_channels):
    """They built, then failed at the first step's loss with a bare broadcasting error."""
    with pytest.raises(ValueError, match="out_channels"):
        DVAELit(preset="tiny", recon_loss=recon_loss, net={"out_channels": out_channels})
    for loss, ch in (("mse", 3), ("logit_laplace", 6)):  # the matching pair, given or implied, still builds
        assert DVAELit(preset="tiny", recon_loss=loss, net={"out_channels": ch}).dvae.decoder[-1].out_channels == ch


def test_decode_takes_int32_codes_like_the_other_tokenizers():
    """F.one_hot refused anything but int64 (the VQ-VAE's and VQGAN's decode take int32 codes)."""
    m = DVAELit(preset="tiny").dvae.eval()
    codes = m.encode(torch.rand(2, 3, 32, 32) * 2 - 1)
    torch.testing.assert_close(m.decode(codes.int()), m.decode(codes), rtol=0, atol=0)


@pytest.mark.parametrize("net", [{"n_groups": 5}, {"n_groups": 0}, {"n_blk_per_group": 0}])
def test_group_counts_the_widths_cannot_build_are_refused(net):
    """n_groups=5 with 4 width multipliers built 4 groups with a max-pool after the last one (post_gain computed
    for 5); 0 was a ZeroDivisionError."""
    with pytest.raises(ValueError, match="n_groups|n_blk_per_group"):
        DVAELit(preset="tiny", net=net)
    assert DVAE(DVAEConfig(n_groups=4)).downsample_factor == 8  # as many groups as multipliers still builds


@pytest.mark.parametrize("n", [0, 1])
def test_a_vocabulary_of_fewer_than_two_codes_is_refused_when_built(n):
    """0 was a ZeroDivisionError while building; 1 trained a tokenizer that gives every image the same code."""
    from zoo.errors import ConfigError

    with pytest.raises(ConfigError, match=f"vocab_size={n}: needs at least 2 codes"):
        DVAELit(preset="tiny", net={"vocab_size": n})


@pytest.mark.parametrize("net", [{"n_hid": 2}, {"n_hid": 3}, {"n_init": 0}])
def test_widths_that_leave_a_conv_without_channels_are_refused_when_built(net):
    """n_hid 2 or 3 (bottleneck n_hid // 4 = 0) or n_init 0 was "ZeroDivisionError: 0.0 cannot be raised to a
    negative power" from the init."""
    from zoo.errors import ConfigError

    with pytest.raises(ConfigError, match="needs n_hid >= 4 .* and n_init >= 1"):
        DVAELit(preset="tiny", net=net)
    assert DVAELit(preset="tiny", net={"n_hid": 4}).dvae.grid_size == (16, 16)  # the narrowest that builds
