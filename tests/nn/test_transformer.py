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


@pytest.mark.parametrize("mask", ["causal", "row"])
def test_last_only_equals_last_row_of_full_pass(mask):
    from zoo.nn.sparse_masks import dalle_mask

    net, x = _net(), _x(n=7)
    m = None if mask == "causal" else dalle_mask("row", 3, 2, 2)[:7, :7]
    full = net(x, m)
    torch.testing.assert_close(net(x, m, last_only=True), full[:, -1:])
    cache = net.new_cache(batch=2, max_len=7)
    torch.testing.assert_close(net(x[:, :5], m, cache=cache, last_only=True), full[:, 4:5])
    steps = [net(x[:, p : p + 1], m, cache=cache, start_pos=p) for p in (5, 6)]  # the cache is complete
    torch.testing.assert_close(torch.cat(steps, 1), full[:, 5:])


def test_kv_cache_copy_rows():
    src = KVCache(batch=2, n_layers=1, n_heads=1, max_len=3, head_dim=2)
    src.k.copy_(torch.arange(12.0).view(src.k.shape))
    src.v.copy_(-src.k)
    dst = KVCache(batch=3, n_layers=1, n_heads=1, max_len=5, head_dim=2)
    dst.copy_rows(src, torch.tensor([1, 0, 1]))
    assert torch.equal(dst.k[0, :, :, :3], src.k[0, [1, 0, 1]]) and torch.equal(dst.v[0, :, :, :3], src.v[0, [1, 0, 1]])
    assert (dst.k[:, :, :, 3:] == 0).all()


def test_decode_linear_equals_linear_and_follows_weight_updates():
    from zoo.nn.transformer import _PACKED, _mkl_packed_ok, decode_linear

    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 40)
    session = KVCache(1, 1, 1, 1, 1)  # any decoding loop's cache
    with torch.no_grad():
        for rows in ((8,), (2, 4), (1,), (64,)):  # packed GEMM for 3..32 rows, plain F.linear otherwise
            x = torch.randn(*rows, 16)
            for _ in range(2):  # packed at the second use in a session
                torch.testing.assert_close(decode_linear(x, lin, session), lin(x), rtol=1e-6, atol=1e-6)
        x = torch.randn(8, 16)
        decode_linear(x, lin, session)
        assert _PACKED[session][lin][2] is not None or not _mkl_packed_ok()  # the packed path really ran
        lin.weight.mul_(2.0)  # an in-place update (an optimizer step): the packed copy is rebuilt
        for _ in range(2):
            torch.testing.assert_close(decode_linear(x, lin, session), lin(x), rtol=1e-6, atol=1e-6)
        lin.weight = torch.nn.Parameter(torch.randn(40, 16))  # a replaced weight: rebuilt too
        for _ in range(2):
            torch.testing.assert_close(decode_linear(x, lin, session), lin(x), rtol=1e-6, atol=1e-6)
        lin.weight.data.copy_(torch.randn(40, 16))  # through .data: no version bump; a new session packs it anew
        session = KVCache(1, 1, 1, 1, 1)
        for _ in range(2):
            torch.testing.assert_close(decode_linear(x, lin, session), lin(x), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(decode_linear(x.double(), lin.double(), session), lin(x.double()))
    x = torch.randn(8, 16, requires_grad=True)  # autograd: the plain path, gradients flow
    decode_linear(x, lin.float(), session).sum().backward()
    assert x.grad is not None and lin.weight.grad is not None


def test_sampling_after_an_ema_swap_uses_the_swapped_in_weights():
    """Lightning's EMA callback swaps the average in and out with ``param.data.copy_`` (no version bump): DALL·E
    samples drawn after the swap in the same process are those of a fresh model holding the same weights (the packed
    decoding weights of the earlier sampling call were reused: other tokens)."""
    import copy

    from torch.optim.swa_utils import AveragedModel

    from zoo.callbacks.ema import EMA
    from zoo.models.dalle.model import PRESETS, DalleTransformer
    from zoo.nn.sampling import sample_image_tokens

    torch.manual_seed(0)
    model = DalleTransformer(PRESETS["tiny"])
    with torch.no_grad():  # peaked distributions: other weights give other tokens
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(8.0)
    ema = EMA(decay=0.5)
    ema._average_model = AveragedModel(copy.deepcopy(model))
    with torch.no_grad():
        for p in ema._average_model.module.parameters():
            p.add_(torch.randn_like(p), alpha=0.5)
    text = torch.randint(1, model.cfg.text_vocab, (4, model.cfg.text_len), generator=torch.Generator().manual_seed(1))

    def sample(m):
        return sample_image_tokens(m, text, generator=torch.Generator().manual_seed(2))

    sample(model)  # packs the trained weights
    ema._swap_models(model)  # validation start: the average in, through .data.copy_
    assert torch.equal(sample(model), sample(copy.deepcopy(model)))


def _graph_nodes(t: torch.Tensor) -> list:
    """Every autograd node behind ``t``."""
    seen, todo = set(), [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        todo.extend(n for n, _ in node.next_functions)
    return list(seen)


@pytest.mark.parametrize("last_only", [False, True])
def test_training_pass_slices_the_residual_only_for_last_only(last_only):
    """A block's residual is sliced only when ``last_only`` shortened the attention output: a full-length slice is
    the same values, but its backward writes the gradient into a zero-filled copy of the whole stream (one per
    block in every training step). Outputs and gradients equal the unsliced arithmetic either way."""
    net, x = _net(), _x().requires_grad_()
    net.train()
    y = net(x, last_only=last_only)
    # slices of a (B, n, dim) stream along its positions (last_only also slices the last block's queries, (B, H, n, D))
    stream = [
        n
        for n in _graph_nodes(y)
        if type(n).__name__ == "SliceBackward0" and n._saved_dim == 1 and n._saved_self_sym_sizes == x.shape
    ]
    assert len(stream) == (1 if last_only else 0)  # the last block's residual at the last position
    (g,) = torch.autograd.grad(y.square().sum(), x)
    want = net(x)[:, -1:] if last_only else net(x)
    (g_want,) = torch.autograd.grad(want.square().sum(), x)
    torch.testing.assert_close(y, want)
    torch.testing.assert_close(g, g_want)


@pytest.mark.parametrize("sparse", [False, True])
def test_cpu_bf16_attention_runs_in_fp32_with_the_numbers_of_before(monkeypatch, sparse):
    """On CPU under bf16 autocast the attention upcasts q, k, v and runs SDPA's fp32 kernels (torch's bf16 CPU
    kernels are the slow ones, zoo.precision.fp32_attention_preferred), returning bf16 to the projection. Its outputs and input gradients are no further from a float64 reference than
    attention on bf16 q, k, v (what ran before)."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import zoo.nn.transformer as tm
    from zoo.nn.block_sparse import BlockSparseMask
    from zoo.nn.sparse_masks import dalle_mask

    torch.manual_seed(0)
    attn = tm.SelfAttention(64, 4, 16)
    x = torch.randn(3, 40, 64)
    mask = BlockSparseMask(dalle_mask("row", 8, 4, 8), block=8, max_density=2.0) if sparse else None  # 8 + 32 = 40
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):  # the dtype SDPA computes in (autocast casts its inputs inside the call)
        y = real(q, k, v, *a, **kw)
        seen.append(y.dtype)
        return y

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)

    def run(fp32_attention: bool) -> tuple[torch.Tensor, torch.Tensor]:
        monkeypatch.setattr(tm, "fp32_attention_preferred", lambda device, dtype: fp32_attention)
        seen.clear()
        xg = x.clone().requires_grad_()
        with (
            torch.autocast("cpu", dtype=torch.bfloat16),
            sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH] if fp32_attention else [SDPBackend.MATH]),
        ):
            y = attn(xg, mask)
        y.float().square().sum().backward()
        assert seen and set(seen) == {torch.float32 if fp32_attention else torch.bfloat16}
        return y, xg.grad

    (new, new_grad), (old, old_grad) = run(True), run(False)
    assert new.dtype == torch.bfloat16
    xd = x.double().requires_grad_()
    exact = attn.double()(xd, mask)  # float64 all through: the reference both are measured against
    exact.square().sum().backward()
    err = {k: (y.double() - exact).abs().mean().item() for k, y in (("fp32", new), ("bf16", old))}
    gerr = {k: (g.double() - xd.grad).abs().mean().item() for k, g in (("fp32", new_grad), ("bf16", old_grad))}
    # (SDPA's MATH backend computes bf16 inputs in fp32 inside; the bf16 projections dominate the rest)
    assert err["fp32"] <= err["bf16"] * 1.01 and gerr["fp32"] <= gerr["bf16"] * 1.01, (err, gerr)
