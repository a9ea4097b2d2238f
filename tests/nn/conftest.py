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
