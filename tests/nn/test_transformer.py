"""The generic pre-LN Transformer on its own: causal or not, shared / per-layer masks, key padding, KV cache."""

from __future__ import annotations

import pytest
import torch

from zoo.nn.transformer import KVCache, Transformer


def _net(causal=True, seed=0):
    torch.manual_seed(seed)
    return Transformer(dim=32, n_layers=2, n_heads=4, head_dim=8, causal=causal).double().eval()


def _x(b=2, n=7, seed=1):
    return torch.randn(b, n, 32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_causal_outputs_do_not_see_the_future():
    net, x = _net(), _x()
    y = net(x)
    x2 = x.clone()
    x2[:, 4:] = torch.randn(2, 3, 32, dtype=torch.float64)
    y2 = net(x2)
    assert y.shape == x.shape
    torch.testing.assert_close(y[:, :4], y2[:, :4])
    assert not torch.allclose(y[:, 4:], y2[:, 4:])


def test_bidirectional_sees_everything():
    net, x = _net(causal=False), _x()
    x2 = x.clone()
    x2[:, -1] = torch.randn(2, 32, dtype=torch.float64)
    assert not torch.allclose(net(x)[:, 0], net(x2)[:, 0])


def test_key_padding_mask_hides_padded_keys():
    net, x = _net(causal=False), _x()
    keep = torch.ones(2, 7, dtype=torch.bool)
    keep[:, 5:] = False
    x2 = x.clone()
    x2[:, 5:] = torch.randn(2, 2, 32, dtype=torch.float64)
    torch.testing.assert_close(net(x, key_padding_mask=keep)[:, :5], net(x2, key_padding_mask=keep)[:, :5])


def test_explicit_mask_shared_or_per_layer():
    net, x = _net(), _x()
    causal = torch.ones(7, 7, dtype=torch.bool).tril()
    torch.testing.assert_close(net(x, causal), net(x))
    torch.testing.assert_close(net(x, [causal, None]), net(x))  # None = the module's default (causal)
    full = torch.ones(7, 7, dtype=torch.bool)
    torch.testing.assert_close(net(x, full), _net(causal=False)(x))
    with pytest.raises(ValueError, match="one mask per layer"):
        net(x, [causal])


def test_kv_cache_matches_full_pass():
    net, x = _net(), _x()
    full = net(x)
    cache = net.new_cache(batch=2, max_len=7)
    assert isinstance(cache, KVCache) and cache.k.dtype == torch.float64
    steps = [net(x[:, :3], cache=cache, start_pos=0)]
    for p in range(3, 7):
        steps.append(net(x[:, p : p + 1], cache=cache, start_pos=p))
    torch.testing.assert_close(torch.cat(steps, 1), full)
    with pytest.raises(ValueError, match="needs a KVCache"):
        net(x[:, :1], start_pos=3)
