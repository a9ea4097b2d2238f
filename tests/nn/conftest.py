"""Fixtures of the convolution-route tests (test_conv.py, test_winograd.py)."""

from __future__ import annotations

import pytest

from zoo.nn import conv as zconv


@pytest.fixture
def backend():
    """``backend(name)`` sets the process's conv backend for the test; the previous choice comes back after."""
    saved = (zconv._requested, zconv._resolved)
    yield zconv.set_conv_backend
    zconv._requested, zconv._resolved = saved


@pytest.fixture
def count_route(monkeypatch):
    """``count_route(fn_class)``: a list that gets one entry (the input's shape) per call of that route."""

    def install(fn_class):
        calls = []
        apply = fn_class.apply

        def counted(*args):
            calls.append(args[0].shape)
            return apply(*args)

        monkeypatch.setattr(fn_class, "apply", counted)
        return calls

    return install


@pytest.fixture
def wide_unet():
    """``wide_unet(image_size, attention_resolutions)``: (config, network) of a width-64 U-Net (the shapes preset's
    width, where the routes are taken), seed 0, every convolution's weights random: the zero-initialised output
    layers would make a comparison of two kernels' outputs vacuous."""
    import torch
    import torch.nn as nn

    from zoo.nn.unet import UNet, make_unet_config

    def build(image_size: int, attention_resolutions: tuple[int, ...]):
        cfg = make_unet_config(
            "tiny",
            width=64,
            image_size=image_size,
            attention_resolutions=attention_resolutions,
            num_head_channels=32,
            max_groups=32,
            context_dim=None,
        )
        torch.manual_seed(0)
        net = UNet(cfg)
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=(2.0 / (m.in_channels * 9)) ** 0.5)
        return cfg, net

    return build
