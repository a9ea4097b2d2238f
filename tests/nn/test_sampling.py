"""zoo.nn.sampling's logit filter against hand-computed nuclei and top-k sets, for the option values and logit dtypes
its callers hand it (the DALL·E sampler itself: tests/models/test_dalle_transformer.py)."""

from __future__ import annotations

import pytest
import torch

from zoo.nn.sampling import check_sampling, filter_logits, gumbel_pick


def _kept(logits, **kw) -> list[bool]:
    return torch.isfinite(filter_logits(logits, **kw))[0].tolist()


def test_top_p_boundary_keeps_the_smallest_set_reaching_p():
    """Probabilities 1/2, 1/4, 1/8, 1/8 (exact in binary): top_p = 3/4 is reached by the best two exactly, so the
    third is dropped; a hair more needs it."""
    x = torch.tensor([[0.5, 0.25, 0.125, 0.125]]).log()
    assert _kept(x, top_p=0.75) == [True, True, False, False]
    assert _kept(x, top_p=0.76) == [True, True, True, False]
    assert _kept(x, top_p=0.5) == [True, False, False, False]
    assert _kept(x, top_p=1.0) == [True] * 4


@pytest.mark.parametrize("top_k", [4, 5, 100])
def test_top_k_at_or_above_the_vocabulary_keeps_every_token(top_k):
    x = torch.tensor([[0.3, -1.0, 2.0, 0.1]])
    assert _kept(x, top_k=top_k) == [True] * 4


def test_whole_number_float_top_k_is_refused_naming_the_int():
    """generator.top_k=64.0 ran as 64 while model.grid_top_k=64.0 was refused (zoo.kinds): one rule for every count,
    a whole float is refused, the fix naming the int. filter_logits itself still takes one from Python."""
    from zoo.errors import ConfigError

    with pytest.raises(
        ConfigError,
        match=r"^generator\.top_k=64\.0 must be a whole number >= 0 or null: .*\(fix: generator\.top_k=64\)$",
    ):
        check_sampling(top_k=64.0, prefix="generator.")
    x = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert _kept(x, top_k=2.0) == _kept(x, top_k=2) == [False, True, True, False]


@pytest.mark.parametrize("top_p", [0.5, 0.9])
def test_bf16_logits_keep_the_nucleus_of_their_own_probabilities(top_p):
    """The nucleus's mass was cumulated in bf16: over 8192 tokens it rounded, and the kept mass fell short of top_p
    (0.896 for 0.9). Now bf16 logits keep what the same (bf16-rounded) values keep in fp32."""
    x = (torch.randn(4, 8192, generator=torch.Generator().manual_seed(0)) * 2).bfloat16()
    kept = torch.isfinite(filter_logits(x, top_p=top_p))
    assert torch.equal(kept, torch.isfinite(filter_logits(x.float(), top_p=top_p)))
    assert ((x.float().softmax(-1) * kept).sum(-1) >= top_p - 1e-6).all()


@pytest.mark.parametrize("top_k", [float("inf"), float("nan"), 2.5, -1, True])
def test_top_k_that_is_no_whole_number_is_a_config_error_naming_it(top_k):
    """inf (what a user may type for 'no limit') and NaN were int()'s OverflowError / ValueError, naming no option."""
    from zoo.errors import ConfigError

    with pytest.raises(ConfigError, match=r"generator\.top_k=.* must be a whole number >= 0 or null"):
        check_sampling(top_k=top_k, prefix="generator.")


def test_all_but_one_token_masked_always_picks_that_token():
    x = torch.full((3, 6), float("-inf"))
    x[0, 4], x[1, 0], x[2, 5] = 0.0, -40.0, 7.0
    g = torch.Generator().manual_seed(0)
    for kw in ({}, {"top_k": 2}, {"top_p": 0.3}):
        for temperature in (1.0, 0.0):
            assert gumbel_pick(filter_logits(x, **kw), temperature, g).tolist() == [4, 0, 5]


@pytest.mark.parametrize("option", ["temperature", "top_k", "top_p"])
def test_a_sampling_option_given_as_a_word_names_the_option(option):
    from zoo.errors import ConfigError

    # before: float('abc')'s bare "could not convert string to float", naming no option
    with pytest.raises(ConfigError, match=rf"generator\.{option}='abc' must be a (whole )?number"):
        check_sampling(**{option: "abc"}, prefix="generator.")
