"""Block-sparse attention (zoo.nn.block_sparse) == dense-mask SDPA: outputs, gradients, cached decoding, sampling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import zoo.models.dalle.model as dalle_model
from zoo.models.dalle.model import PRESETS, DalleTransformer, DalleTransformerConfig
from zoo.models.presets import resolve_preset
from zoo.nn.block_sparse import BlockSparseMask, column_major_perm
from zoo.nn.sampling import sample_image_tokens
from zoo.nn.sparse_masks import MASK_KINDS, dalle_mask
from zoo.nn.transformer import Transformer

ATOL = 1e-5
# (text_len, grid_h, grid_w, conv_kernel): square, non-square both ways, a grid narrower than the conv kernel
SHAPES = [(5, 3, 4, 3), (16, 8, 8, 5), (12, 6, 10, 5), (9, 7, 3, 11)]


def _wrapper(kind, t, h, w, k, block=None, **kw):
    line = h if kind == "column" else w
    perm = column_major_perm(t, h, w) if kind == "column" else None
    return BlockSparseMask(dalle_mask(kind, t, h, w, k), perm, block=block or line, **kw)


def _qkv(n, seed=0, b=2, heads=3, d=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, heads, n, d, generator=g, dtype=dtype).requires_grad_() for _ in range(3)]


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("block", [None, 7, 64])  # one grid line; a block cutting across lines; one large block
def test_forward_and_gradients_equal_dense(kind, shape, block):
    t, h, w, k = shape
    bs = _wrapper(kind, t, h, w, k, block, max_density=2.0)  # never fall back: test the planned path
    for n in (t + h * w - 1, t + h * w):  # the model's input length (L - 1) and the full mask
        q, kk, v = _qkv(n)
        y = bs.attention(q, kk, v)
        y_ref = F.scaled_dot_product_attention(q, kk, v, attn_mask=bs.dense[:n, :n])
        torch.testing.assert_close(y, y_ref, rtol=0, atol=ATOL)
        gy = torch.randn_like(y)
        for a, b_ in zip(
            torch.autograd.grad(y, (q, kk, v), gy), torch.autograd.grad(y_ref, (q, kk, v), gy), strict=True
        ):
            torch.testing.assert_close(a, b_, rtol=0, atol=ATOL)


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("shape", SHAPES[1:3])
def test_decoding_rows_and_chunks_equal_dense(kind, shape):
    t, h, w, k = shape
    bs = _wrapper(kind, t, h, w, k, max_density=2.0)
    n = t + h * w
    q, kk, v = (x.detach() for x in _qkv(n, seed=1))
    full = F.scaled_dot_product_attention(q, kk, v, attn_mask=bs.dense)
    for p in range(n):  # one query row at p over the cached keys [0, p] (what KV-cached decoding does)
        y = bs.attention(q[:, :, p : p + 1], kk[:, :, : p + 1], v[:, :, : p + 1], start_pos=p)
        torch.testing.assert_close(y, full[:, :, p : p + 1], rtol=0, atol=ATOL)
    for s in (t - 1, t + 3):  # several rows at start_pos > 0 (chunked prefill)
        y = bs.attention(q[:, :, s:], kk, v, start_pos=s)
        torch.testing.assert_close(y, full[:, :, s:], rtol=0, atol=ATOL)
    if kind != "full":  # decoding reads only the text prefix and one strided range: far fewer keys than the row
        a, lo, hi, step, _ = bs.row_spans("cpu")[n - 1]
        assert a == t and a + len(range(lo, hi, step)) < 0.5 * n


@pytest.mark.parametrize("kind", ["row", "column", "conv"])
def test_float64_decoding_rows_keep_float64_precision(kind):
    """The one-row decoding path computed its softmax in float32 even for float64 inputs: 1e-7 away from the dense
    reference (and from the planned path), where float64 agrees to 1e-15."""
    t, h, w, k = SHAPES[1]
    bs = _wrapper(kind, t, h, w, k, max_density=2.0)
    n = t + h * w
    q, kk, v = (x.detach() for x in _qkv(n, seed=2, dtype=torch.float64))
    full = F.scaled_dot_product_attention(q, kk, v, attn_mask=bs.dense)
    for p in range(t, n):
        y = bs.attention(q[:, :, p : p + 1], kk[:, :, : p + 1], v[:, :, : p + 1], start_pos=p)
        torch.testing.assert_close(y, full[:, :, p : p + 1], rtol=0, atol=1e-12)


def test_plans_skip_the_masked_out_work():
    """At 16x16 with 64 text tokens the sparse kinds compute well under half the dense scores (the point)."""
    t, g = 64, 16
    n = t + g * g - 1
    for kind, most in (("row", 0.45), ("column", 0.45), ("conv", 0.6)):
        bs = _wrapper(kind, t, g, g, 11, block=64, max_density=2.0)
        plan = bs.plan(0, n, "cpu")
        assert plan is not None and plan.density < most, (kind, plan and plan.density)
        assert sum(grp.shape[0] * grp.shape[1] * grp.shape[2] for grp in plan.groups) < most * n * n
    # column-major order is what makes column attention blockable: raster-order blocks of it are much denser
    raster = BlockSparseMask(dalle_mask("column", t, g, g), block=64, max_density=2.0).plan(0, n, "cpu")
    assert raster.density > 1.5 * _wrapper("column", t, g, g, 11, block=64).plan(0, n, "cpu").density
    assert _wrapper("full", t, g, g, 11, block=64).plan(0, n, "cpu") is None  # causal 'full': dense path (default)


def test_a_query_row_that_may_attend_no_key_is_named_when_decoding():
    """A mask row with no allowed key: the planned path named it, one-row decoding failed inside torch.cat."""
    m = torch.ones(6, 6, dtype=torch.bool).tril()
    m[4] = False
    q, k, v = _qkv(6)
    with pytest.raises(ValueError, match="row 4 may attend no key"):
        BlockSparseMask(m, block=2).attention(q[:, :, 4:5], k[:, :, :5], v[:, :, :5], start_pos=4)


def test_dense_fallback_when_blocking_does_not_pay():
    bs = _wrapper("full", 8, 4, 4, 3, max_density=0.3)
    assert bs.plan(0, 23, "cpu") is None  # causal 'full' blocks are dense-ish: the dense path runs
    short = _wrapper("row", 8, 4, 4, 3, min_len=100)
    assert short.plan(0, 23, "cpu") is None
    q, k, v = _qkv(23)
    for m in (bs, short):
        torch.testing.assert_close(
            m.attention(q, k, v),
            F.scaled_dot_product_attention(q, k, v, attn_mask=m.dense[:23, :23]),
            rtol=0,
            atol=ATOL,
        )
    kp = torch.ones(2, 23, dtype=torch.bool)
    kp[0, 3] = False  # with a key padding mask the dense path runs, combined with the mask
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bs.dense[:23, :23] & kp[:, None, None])
    torch.testing.assert_close(bs.attention(q, k, v, key_padding_mask=kp), ref, rtol=0, atol=ATOL)
    with pytest.raises(ValueError, match="bool"):
        BlockSparseMask(torch.ones(3, 3))


def test_generic_transformer_wraps_plain_masks():
    torch.manual_seed(0)
    mask = dalle_mask("row", 6, 5, 5)
    dense = Transformer(32, 2, 4, 8).eval()
    sparse = Transformer(32, 2, 4, 8, attn_impl="block_sparse").eval()
    sparse.load_state_dict(dense.state_dict())
    x = torch.randn(2, 30, 32)
    torch.testing.assert_close(sparse(x, mask), dense(x, mask), rtol=0, atol=ATOL)
    # a BlockSparseMask given to a dense stack is used through its dense mask
    torch.testing.assert_close(dense(x, BlockSparseMask(mask, block=5)), dense(x, mask), rtol=0, atol=0)
    with pytest.raises(ValueError, match="attn_impl"):
        Transformer(32, 1, 4, 8, attn_impl="flash")


# --------------------------------------------------------------------------------------- DalleTransformer
def _pair(monkeypatch, dtype=torch.float32, sharp=False, **net):
    """(dense, block_sparse) tiny DALL·E transformers with the same weights; the sparse path forced on at tiny sizes."""
    monkeypatch.setattr(dalle_model, "BLOCK_SPARSE_MIN_LEN", 0)
    cfg = dict(pattern="paper", n_layers=5, **net)
    torch.manual_seed(0)
    dense = DalleTransformer(
        resolve_preset(PRESETS, DalleTransformerConfig, "tiny", {**cfg, "attn_impl": "dense"}, "DALL·E")
    ).to(dtype)
    sparse = DalleTransformer(
        resolve_preset(PRESETS, DalleTransformerConfig, "tiny", {**cfg, "attn_impl": "block_sparse"}, "DALL·E")
    ).to(dtype)
    if sharp:  # peaked, context-dependent next-token distributions: a wrong key changes the sampled tokens
        with torch.no_grad():
            for name, p in dense.named_parameters():
                if p.dim() >= 2:
                    p.mul_(12.0 if "head" not in name else 40.0)
    sparse.load_state_dict(dense.state_dict())
    for bs in sparse.attention_masks():  # every layer kind really takes the planned path (never the fallback)
        assert isinstance(bs, BlockSparseMask)
        bs.max_density = 2.0
    return dense, sparse


@pytest.mark.parametrize("grid", [(4, 4), (3, 6), (6, 5)])
def test_dalle_training_forward_and_gradients_equal(monkeypatch, grid):
    dense, sparse = _pair(monkeypatch, grid_h=grid[0], grid_w=grid[1], conv_kernel=3)
    assert sparse.layer_kinds == ["row", "column", "row", "row", "conv"]
    c = dense.cfg
    g = torch.Generator().manual_seed(3)
    text = torch.randint(1, c.text_vocab, (3, c.text_len), generator=g)
    text[0, 4:] = c.pad_id
    image = torch.randint(0, c.image_vocab, (3, c.grid_h, c.grid_w), generator=g)
    for a, b in zip(sparse(text, image), dense(text, image), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL)
    sparse.loss(text, image)["loss"].backward()
    dense.loss(text, image)["loss"].backward()
    for (name, p), q in zip(sparse.named_parameters(), dense.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=ATOL, msg=name)


@pytest.mark.parametrize(
    "kw", [dict(), dict(guidance_scale=3.0, top_k=8), dict(prime_tokens=torch.tensor([[1, 2, 3, 4, 5, 6]]))]
)
def test_dalle_cached_sampling_tokens_identical(monkeypatch, kw):
    dense, sparse = _pair(monkeypatch, dtype=torch.float64, sharp=True, grid_h=4, grid_w=6, conv_kernel=3)
    text = torch.randint(1, dense.cfg.text_vocab, (1, dense.cfg.text_len), generator=torch.Generator().manual_seed(5))
    runs = [
        sample_image_tokens(m, text, generator=torch.Generator().manual_seed(9), use_cache=uc, **kw)
        for m, uc in ((sparse, True), (dense, True), (sparse, False))
    ]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    assert runs[0].unique().numel() > 2  # not a degenerate constant sample


def test_dalle_default_is_block_sparse_and_short_streams_stay_dense():
    m = DalleTransformer(PRESETS["tiny"])
    assert m.cfg.attn_impl == "block_sparse"
    bs = m.attention_masks()[0]
    assert bs.plan(0, m.cfg.seq_len - 1, "cpu") is None  # 24 tokens < BLOCK_SPARSE_MIN_LEN: dense path
    assert all(torch.equal(a.dense, b) for a, b in zip(m.attention_masks(), m.layer_masks(), strict=True))


def test_causal_mask_runs_sdpa_causal_path():
    """A plain causal (tril) mask is recognised: training / prefill run SDPA with is_causal, one decoding row
    runs without a mask; both equal the dense-mask SDPA. Other masks are not taken for causal."""
    bs = _wrapper("full", 8, 4, 4, 3)
    assert bs.causal and not _wrapper("row", 8, 4, 4, 3).causal
    n = 24
    q, k, v = _qkv(n)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bs.dense[:n, :n])
    torch.testing.assert_close(bs.attention(q, k, v), ref, rtol=0, atol=ATOL)
    for p in (0, 9, n - 1):
        y = bs.attention(q[:, :, p : p + 1], k[:, :, : p + 1], v[:, :, : p + 1], start_pos=p)
        torch.testing.assert_close(y, ref[:, :, p : p + 1], rtol=0, atol=ATOL)
    y = bs.attention(q[:, :, 10:], k, v, start_pos=10)  # chunked prefill: the mask's rows
    torch.testing.assert_close(y, ref[:, :, 10:], rtol=0, atol=ATOL)
