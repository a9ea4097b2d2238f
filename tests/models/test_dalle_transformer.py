"""DalleTransformer: embeddings, heads, loss, learning, KV cache == no cache, guidance, priming, paper size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zoo.models.dalle.model import PRESETS, DalleTransformer, DalleTransformerConfig
from zoo.models.presets import resolve_preset
from zoo.nn.sampling import filter_logits, sample_image_tokens
from zoo.nn.transformer import KVCache

PATTERNS = ["full", "row", "column", "conv", "paper"]


def _config(preset: str = "shapes", **net) -> DalleTransformerConfig:
    return resolve_preset(PRESETS, DalleTransformerConfig, preset, net, "DALL·E transformer")


def _model(pattern="paper", sharp=True, dtype=torch.float64, seed=0, **kw):
    """Tiny model in float64. ``sharp`` rescales the weights so that the next-token distributions are peaked and
    strongly context dependent: a wrong mask or cache row then changes the sampled tokens, not just the noise."""
    torch.manual_seed(seed)
    m = DalleTransformer(_config("tiny", pattern=pattern, **kw)).to(dtype).eval()
    if sharp:
        with torch.no_grad():
            for name, p in m.named_parameters():
                if p.dim() >= 2:
                    p.mul_(12.0 if "head" not in name else 40.0)
    return m


def _batch(b=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    cfg = _config("tiny")
    text = torch.randint(1, cfg.text_vocab, (b, cfg.text_len), generator=g)
    for i in range(b):  # variable caption lengths, padded with pad_id = 0
        text[i, 3 + i :] = cfg.pad_id
    image = torch.randint(0, cfg.image_vocab, (b, cfg.grid_h, cfg.grid_w), generator=g)
    return text, image


def _gen(seed=123):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------- size / structure
def test_paper_preset_is_12b_on_meta():
    cfg = _config("paper")
    assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.head_dim) == (3968, 64, 62, 64)
    assert (cfg.text_len, cfg.text_vocab, cfg.grid_h * cfg.grid_w, cfg.image_vocab) == (256, 16384, 1024, 8192)
    with torch.device("meta"):
        m = DalleTransformer(cfg)
    n = sum(p.numel() for p in m.parameters())
    assert 11e9 < n < 13e9, n
    kinds = m.layer_kinds
    assert kinds[-1] == "conv" and kinds[1] == "column" and kinds[0] == "row"
    assert m.mask_row.shape == (1280, 1280)


def test_unknown_preset_names_choices():
    with pytest.raises(ValueError, match="tiny"):
        _config("huge")


@pytest.mark.parametrize("net", [dict(loss_text_weight=1.5), dict(loss_text_weight=-0.1), dict(pad_id=64)])
def test_config_refuses_a_loss_weight_outside_0_1_and_a_pad_id_outside_the_vocabulary(net):
    """loss_text_weight=1.5 gave the image loss weight -0.5 (training maximised it), silently; a pad id outside the
    text vocabulary (tiny: 64 tokens) was an IndexError at the first pad."""
    from zoo.errors import ConfigError

    with pytest.raises(ConfigError, match="loss_text_weight|pad_id"):
        _config("tiny", **net)


def test_pad_token_is_learned_per_position():
    m = _model(sharp=False)
    t = m.cfg.text_len
    a = torch.tensor([[5, 7, 9, 0, 0, 0, 0, 0]])  # padded from position 3
    b = torch.tensor([[5, 7, 0, 9, 0, 0, 0, 0]])  # differs only in where the pad sits (position 2 vs 3)
    ea, eb = m.embed(a)[0], m.embed(b)[0]
    pos = m.text_pos
    for i in range(t):
        tok = a[0, i] if a[0, i] != 0 else None
        want = (m.text_pad_emb[i] if tok is None else m.text_emb.weight[tok]) + pos[i]
        torch.testing.assert_close(ea[i], want, rtol=0, atol=0)
    assert not torch.allclose(ea[2], eb[2]) and not torch.allclose(ea[3], eb[3])
    torch.testing.assert_close(eb[2], m.text_pad_emb[2] + pos[2], rtol=0, atol=0)
    # an all-pad caption: every position has its own pad vector (they differ), not one shared pad embedding
    e0 = m.embed(torch.zeros(1, t, dtype=torch.long))[0] - pos
    torch.testing.assert_close(e0, m.text_pad_emb.detach(), rtol=0, atol=0)
    assert not torch.allclose(e0[0], e0[1])
    # gradient reaches pad_emb[i] only at padded positions
    m.zero_grad()
    m.embed(a).sum().backward()
    g = m.text_pad_emb.grad.abs().sum(-1)
    assert (g[:3] == 0).all() and (g[3:] > 0).all()


def test_heads_restrict_text_and_image_vocab_and_are_causal():
    m = _model(sharp=False)
    c = m.cfg
    text, image = _batch()
    tl, il = m(text, image)
    assert tl.shape == (3, c.text_len - 1, c.text_vocab)  # text positions: text vocabulary only
    assert il.shape == (3, c.image_len, c.image_vocab)  # image positions: image vocabulary only
    # text predictions never see image tokens; image prediction p never sees image tokens >= p
    image2 = image.clone().flatten(1)
    image2[:, 5:] = (image2[:, 5:] + 1) % c.image_vocab
    tl2, il2 = m(text, image2)
    torch.testing.assert_close(tl, tl2, rtol=0, atol=0)
    torch.testing.assert_close(il[:, :6], il2[:, :6], rtol=0, atol=1e-12)
    assert not torch.allclose(il[:, 6:], il2[:, 6:])
    # image predictions depend on the text (every image query attends to all text)
    text2 = text.clone()
    text2[:, 1] = (text2[:, 1] + 1) % c.text_vocab
    assert not torch.allclose(m(text2, image)[1][:, 0], il[:, 0])


@pytest.mark.parametrize("w", [1 / 8, 0.5])
def test_loss_weighting_by_hand(w):
    m = _model(sharp=False, loss_text_weight=w)
    text, image = _batch()
    tl, il = m(text, image)
    text_loss = F.cross_entropy(tl.reshape(-1, tl.shape[-1]), text[:, 1:].reshape(-1))
    image_loss = F.cross_entropy(il.reshape(-1, il.shape[-1]), image.reshape(-1))
    out = m.loss(text, image)
    torch.testing.assert_close(out["text_loss"], text_loss)
    torch.testing.assert_close(out["image_loss"], image_loss)
    torch.testing.assert_close(out["loss"], w * text_loss + (1 - w) * image_loss)
    assert abs(text_loss.item() - image_loss.item()) > 1e-3  # the weighting is actually exercised


def test_overfits_a_fixed_batch():
    torch.manual_seed(0)
    m = DalleTransformer(_config("tiny"))
    text, image = _batch(b=4, seed=5)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.0)
    first = last = None
    for step in range(300):
        loss = m.loss(text, image)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
        last = loss.item()
        if last < first / 5:
            break
    assert last < first / 5, (first, last, step)


# ------------------------------------------------------------------------------------------------- KV cache
def test_kv_cache_is_preallocated_and_written_in_place():
    m = _model(sharp=False)
    c = m.cfg
    cache = m.new_cache(2)
    assert isinstance(cache, KVCache)
    assert cache.k.shape == (c.n_layers, 2, c.n_heads, c.seq_len, c.head_dim)
    ptr = cache.k.data_ptr(), cache.v.data_ptr()
    text, image = _batch(b=2)
    m.next_image_logits(text=text, cache=cache)
    m.next_image_logits(image=image.flatten(1)[:, :1], image_start=0, cache=cache, start_pos=c.text_len)
    assert (cache.k.data_ptr(), cache.v.data_ptr()) == ptr
    assert cache.k[:, :, :, : c.text_len + 1].abs().sum() > 0 and (cache.k[:, :, :, c.text_len + 1 :] == 0).all()


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_cached_logits_equal_full_forward(pattern, dtype, atol):
    """Teacher forcing: prefill (text + 5 image tokens) then one token at a time == one full forward."""
    m = _model(pattern, sharp=False, dtype=dtype)
    c = m.cfg
    text, image = _batch()
    flat = image.flatten(1)
    _, full = m(text, image)  # (B, N, V)
    cache = m.new_cache(3)
    got = [m.next_image_logits(text=text, image=flat[:, :5], cache=cache)]  # predicts token 5
    for p in range(5, c.image_len - 1):
        got.append(m.next_image_logits(image=flat[:, p : p + 1], image_start=p, cache=cache, start_pos=c.text_len + p))
    torch.testing.assert_close(torch.stack(got, 1), full[:, 5:], rtol=0, atol=atol)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_cached_sampling_equals_uncached(pattern):
    m = _model(pattern)
    text, _ = _batch()
    a = sample_image_tokens(m, text, generator=_gen(), use_cache=True)
    b = sample_image_tokens(m, text, generator=_gen(), use_cache=False)
    assert a.shape == (3, 4, 4) and a.dtype == torch.long
    assert torch.equal(a, b)
    # the tokens are driven by the model, not only by the noise: another text gives another image
    text2 = text.roll(1, 0)
    assert not torch.equal(sample_image_tokens(m, text2, generator=_gen()), a)


@pytest.mark.parametrize(
    "kw",
    [
        dict(top_k=4),
        dict(top_p=0.8, temperature=0.7),
        dict(guidance_scale=3.0),
        dict(guidance_scale=2.0, top_k=5, prime_tokens="rows"),
    ],
)
def test_cached_sampling_equals_uncached_with_options(kw):
    m = _model("paper")
    text, image = _batch()
    if kw.get("prime_tokens") == "rows":
        kw = dict(kw, prime_tokens=image[:, :1])
    a = sample_image_tokens(m, text, generator=_gen(7), use_cache=True, **kw)
    b = sample_image_tokens(m, text, generator=_gen(7), use_cache=False, **kw)
    assert torch.equal(a, b)


def test_guidance_changes_samples_and_scale_one_equals_conditional():
    m = _model("paper")
    text, _ = _batch()
    cond = sample_image_tokens(m, text, generator=_gen(3))
    null = torch.zeros(m.cfg.text_len, dtype=torch.long)  # explicit null text -> the two-stream (2B) path
    s1 = sample_image_tokens(m, text, guidance_scale=1.0, null_text_tokens=null, generator=_gen(3))
    assert torch.equal(s1, cond)
    s3 = sample_image_tokens(m, text, guidance_scale=3.0, generator=_gen(3))
    assert not torch.equal(s3, cond)


def test_guidance_refuses_null_text_of_another_shape():
    """A null caption of another batch size or length failed deep inside (torch.cat / expand size errors naming
    neither argument); now a ValueError names null_text_tokens / text_tokens and the expected shapes."""
    m = _model("paper")
    text, _ = _batch()
    t = m.cfg.text_len
    for bad in (torch.zeros(2, t, dtype=torch.long), torch.zeros(t - 1, dtype=torch.long)):
        with pytest.raises(ValueError, match="null_text_tokens must be"):
            sample_image_tokens(m, text, guidance_scale=2.0, null_text_tokens=bad, generator=_gen())
    with pytest.raises(ValueError, match="text_tokens must be"):
        sample_image_tokens(m, text[:, :-1], guidance_scale=2.0, generator=_gen())
    one = sample_image_tokens(m, text, guidance_scale=2.0, null_text_tokens=torch.zeros(1, t, dtype=torch.long))
    assert one.shape == (3, 4, 4)


def test_same_seed_same_tokens_other_seed_other_tokens():
    m = _model("paper", sharp=False)
    text, _ = _batch()
    a = sample_image_tokens(m, text, generator=_gen(1))
    assert torch.equal(a, sample_image_tokens(m, text, generator=_gen(1)))
    assert not torch.equal(a, sample_image_tokens(m, text, generator=_gen(2)))


@pytest.mark.parametrize("use_cache", [True, False])
def test_priming_keeps_given_rows(use_cache):
    m = _model("paper")
    text, image = _batch()
    rows = 2
    out = sample_image_tokens(m, text, prime_tokens=image[:, :rows], use_cache=use_cache, generator=_gen(4))
    assert torch.equal(out[:, :rows], image[:, :rows])
    flat_prime = sample_image_tokens(m, text, prime_tokens=image.flatten(1)[:, : rows * 4], generator=_gen(4))
    assert torch.equal(flat_prime, sample_image_tokens(m, text, prime_tokens=image[:, :rows], generator=_gen(4)))
    with pytest.raises(ValueError):
        sample_image_tokens(m, text, prime_tokens=image)


def test_priming_refuses_mismatched_shapes_and_codes():
    """prime_tokens were reshaped to (B, -1) unchecked: one caption's rows for a batch of two were split across the
    two samples, and rows of another grid width became a shifted raster prefix, silently."""
    m = _model("paper")
    text, image = _batch(b=2)
    with pytest.raises(ValueError, match="prime_tokens must be"):
        sample_image_tokens(m, text, prime_tokens=image[:1, :2], generator=_gen())  # (1, 2, 4) for 2 captions
    with pytest.raises(ValueError, match="prime_tokens must be"):
        sample_image_tokens(m, text, prime_tokens=image[:, :2, :3], generator=_gen())  # rows 3 wide, grid 4 wide
    with pytest.raises(ValueError, match="image_vocab"):
        sample_image_tokens(m, text, prime_tokens=image[:, :1] + m.cfg.image_vocab, generator=_gen())


def test_filter_logits():
    x = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert torch.isinf(filter_logits(x, top_k=2)).tolist() == [[True, False, False, True]]
    p = x.softmax(-1)[0]  # sorted probs: .665, .245, .09, .03
    assert torch.isinf(filter_logits(x, top_p=0.5)).tolist() == [[True, False, True, True]]
    assert torch.isinf(filter_logits(x, top_p=float(p[1] + p[2]) - 1e-3)).tolist() == [[True, False, False, True]]
    assert torch.isinf(filter_logits(x, top_p=float(p[1] + p[2]) + 1e-3)).tolist() == [[False, False, False, True]]


def test_top_p_zero_keeps_the_best_token():
    """top_p <= 0 filtered out every token (all -inf), so Gumbel-max always returned token 0 whatever the model said;
    the best token is always kept, so top_p=0 is greedy."""
    x = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert torch.isinf(filter_logits(x, top_p=0.0)).tolist() == [[True, False, True, True]]
    m = _model("paper")
    text, _ = _batch()
    greedy = sample_image_tokens(m, text, temperature=0.0, generator=_gen())
    assert torch.equal(sample_image_tokens(m, text, top_p=0.0, generator=_gen()), greedy)
    assert (greedy != 0).any()


def test_bf16_autocast_training_and_cached_sampling_run():
    m = _model("paper", sharp=False, dtype=torch.float32)
    text, image = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m.loss(text, image)
        tokens = sample_image_tokens(m, text, guidance_scale=2.0, top_k=8, generator=_gen())
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert m.text_pad_emb.grad is not None
    assert tokens.shape == (3, 4, 4) and tokens.max() < m.cfg.image_vocab


# ------------------------------------------------------------------------------ speed paths (same results)
@pytest.mark.parametrize("ignore", [-100, 0])
def test_head_cross_entropy_equals_f_cross_entropy(ignore):
    from zoo.models.dalle.model import head_cross_entropy

    g = torch.Generator().manual_seed(0)
    h = torch.randn(40, 16, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(300, 16, dtype=torch.float64, generator=g, requires_grad=True)
    target = torch.randint(0, 300, (40,), generator=g)
    target[::5] = 0  # some rows ignored when ignore == 0
    got = head_cross_entropy(h, w, target, ignore)
    want = F.cross_entropy(F.linear(h, w), target, ignore_index=ignore)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got * 3, (h, w)), torch.autograd.grad(want * 3, (h, w)), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    loss = head_cross_entropy(h, w, target, ignore)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):  # its logits became the gradient: a 2nd backward is refused
        loss.backward()


def test_text_loss_without_kept_targets_is_zero_not_nan():
    """text_loss_on_pad=False and every caption of the batch dropped to all pads (caption dropout): no text target
    is kept; the loss was 0 / 0 = NaN (the logged train / val loss, and an epoch's mean, became NaN)."""
    m = _model(sharp=False, text_loss_on_pad=False)
    text, image = _batch()
    text[:, 1:] = m.cfg.pad_id
    out = m.loss(text, image)
    assert out["text_loss"].item() == 0.0 and torch.isfinite(out["loss"])
    torch.testing.assert_close(out["loss"], (1 - m.cfg.loss_text_weight) * out["image_loss"])
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_loss_equals_cross_entropy_of_forward_logits_with_gradients():
    m = _model(sharp=False)
    text, image = _batch()
    out = m.loss(text, image)
    tl, il = m(text, image)
    w = m.cfg.loss_text_weight
    want = w * F.cross_entropy(tl.flatten(0, 1), text[:, 1:].flatten()) + (1 - w) * F.cross_entropy(
        il.flatten(0, 1), image.flatten()
    )
    torch.testing.assert_close(out["loss"], want, rtol=1e-12, atol=1e-12)
    params = list(m.parameters())
    for a, b in zip(torch.autograd.grad(out["loss"], params), torch.autograd.grad(want, params), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_full_layers_run_the_stacks_causal_attention():
    """DALL·E's ``full`` mask is the plain causal mask (text first, text never sees image), so full layers pass no
    mask and the stack attends causally: same outputs as the explicit mask."""
    from zoo.nn.sparse_masks import dalle_mask

    c = _config("tiny")
    full = dalle_mask("full", c.text_len, c.grid_h, c.grid_w)
    assert torch.equal(full, torch.ones_like(full).tril())
    for impl in ("dense", "block_sparse"):
        m = _model("full", sharp=False, attn_impl=impl)
        assert m.attention_masks() == [None] * c.n_layers
        text, image = _batch()
        x = m.embed(text, image.flatten(1)[:, :-1])
        torch.testing.assert_close(m.transformer(x), m.transformer(x, full), rtol=0, atol=1e-12)


@pytest.mark.parametrize("pattern", ["paper", "full"])
def test_last_only_prefill_and_shared_prefixes_equal_the_full_computation(pattern):
    """next_image_logits runs the last block for the last position only, and a prefill computes each distinct
    prefix once (guidance's null captions): same logits and the same cache as the plain computation."""
    m = _model(pattern, sharp=False)
    c = m.cfg
    text, image = _batch()
    null = torch.zeros_like(text)
    both = torch.cat([text, null, null], 0)  # 3 captions + 3 identical null captions: 4 distinct prefixes
    prime = torch.cat([image.flatten(1)[:, :3]] * 3, 0)
    prime[3:] = prime[0]  # the null streams share their primed tokens too
    cache = m.new_cache(9)
    got = m.next_image_logits(text=both, image=prime, cache=cache)
    ref_cache = m.new_cache(9)
    h = m.hidden(m.embed(both, prime), ref_cache)  # every position of every row, no sharing
    torch.testing.assert_close(got, m.image_head(h[:, -1]), rtol=0, atol=1e-10)
    n = c.text_len + 3
    torch.testing.assert_close(cache.k[:, :, :, :n], ref_cache.k[:, :, :, :n], rtol=0, atol=1e-10)
    torch.testing.assert_close(cache.v[:, :, :, :n], ref_cache.v[:, :, :, :n], rtol=0, atol=1e-10)
    # uncached: the whole prefix, last position only
    torch.testing.assert_close(m.next_image_logits(text=both, image=prime), got, rtol=0, atol=1e-10)


def test_layer_pattern_cycle_of_kinds():
    m = _model("full,row,column,conv", sharp=False, n_layers=6)
    assert m.layer_kinds == ["full", "row", "column", "conv", "full", "row"]
    a = sample_image_tokens(m, _batch()[0], generator=_gen(), use_cache=True)
    assert torch.equal(a, sample_image_tokens(m, _batch()[0], generator=_gen(), use_cache=False))
