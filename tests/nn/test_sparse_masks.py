"""DALL·E sparse attention masks against hand-drawn matrices (T=2 text tokens, 3x3 image grid, conv k=3)."""

from __future__ import annotations

import pytest
import torch

from zoo.nn.sparse_masks import dalle_mask, image_image_mask, layer_pattern

TEXT = ["10" + "0" * 9, "11" + "0" * 9]  # text queries: causal among text, never image


def _expected(image_rows: list[str]) -> torch.Tensor:
    rows = TEXT + ["11" + r for r in image_rows]  # image queries see all text
    assert len(rows) == 11 and all(len(r) == 11 for r in rows)
    return torch.tensor([[c == "1" for c in r] for r in rows])


# image part of each image query's row; raster index p = 3 * row + col
EXPECTED = {
    "full": [
        "100000000",
        "110000000",
        "111000000",
        "111100000",
        "111110000",
        "111111000",
        "111111100",
        "111111110",
        "111111111",
    ],
    # 0 <= q - k <= w (= 3): the w + 1 most recent tokens, crossing row boundaries (not row-restricted)
    "row": [
        "100000000",
        "110000000",
        "111000000",
        "111100000",
        "011110000",
        "001111000",
        "000111100",
        "000011110",
        "000001111",
    ],
    # same column, at or above
    "column": [
        "100000000",
        "010000000",
        "001000000",
        "100100000",
        "010010000",
        "001001000",
        "100100100",
        "010010010",
        "001001001",
    ],
    # causal 3x3 neighbourhood
    "conv": [
        "100000000",
        "110000000",
        "011000000",
        "110100000",
        "111110000",
        "011011000",
        "000110100",
        "000111110",
        "000011011",
    ],
}


@pytest.mark.parametrize("kind", ["full", "row", "column", "conv"])
def test_masks_match_hand_drawn(kind):
    got = dalle_mask(kind, text_len=2, h=3, w=3, conv_kernel=3)
    assert got.dtype == torch.bool and got.shape == (11, 11)
    exp = _expected(EXPECTED[kind])
    assert torch.equal(got, exp), f"{kind}:\n{got.int()}\nexpected\n{exp.int()}"


@pytest.mark.parametrize("kind", ["full", "row", "column", "conv"])
def test_masks_causal_with_self(kind):
    m = dalle_mask(kind, text_len=5, h=4, w=6, conv_kernel=5)
    assert not (m & ~torch.ones_like(m).tril()).any()  # never attends to the future
    assert m.diagonal().all()  # every query sees itself (no empty SDPA rows)
    assert not m[:5, 5:].any() and m[5:, :5].all()


def test_row_mask_is_not_row_restricted_and_has_extent_w_plus_1():
    h, w = 4, 5
    m = image_image_mask("row", h, w)
    q = 2 * w + 1  # row 2, col 1
    assert m[q].nonzero().flatten().tolist() == list(range(q - w, q + 1))  # w + 1 keys, self included
    assert m[q, q - w] and (q - w) // w == 1 and (q - w) % w == 1  # oldest key: same column, previous row


def test_large_conv_equals_full_on_small_grid():
    assert torch.equal(dalle_mask("conv", 2, 3, 3, conv_kernel=5), dalle_mask("full", 2, 3, 3))


def test_bad_kind_and_kernel():
    with pytest.raises(ValueError, match="valid"):
        dalle_mask("diag", 2, 3, 3)
    with pytest.raises(ValueError):
        dalle_mask("conv", 2, 3, 3, conv_kernel=4)
    with pytest.raises(ValueError, match="valid"):
        layer_pattern(4, "sparse")


def test_layer_pattern_paper():
    # 1-based i: column where (i - 2) % 4 == 0 -> layers 2, 6, 10; conv in the last layer; row otherwise
    assert layer_pattern(12) == [
        "row",
        "column",
        "row",
        "row",
        "row",
        "column",
        "row",
        "row",
        "row",
        "column",
        "row",
        "conv",
    ]
    p64 = layer_pattern(64, "paper")
    assert p64[-1] == "conv" and p64.count("conv") == 1
    assert [i + 1 for i, k in enumerate(p64) if k == "column"] == list(range(2, 64, 4))
    assert p64.count("row") == 64 - 1 - 16
    assert layer_pattern(6, "full") == ["full"] * 6
    assert layer_pattern(3, "column") == ["column"] * 3


def test_layer_pattern_comma_list_cycles_kinds():
    assert layer_pattern(6, "full,row,column,conv") == ["full", "row", "column", "conv", "full", "row"]
    assert layer_pattern(3, "row, conv") == ["row", "conv", "row"]
    with pytest.raises(ValueError, match="valid kinds"):
        layer_pattern(4, "full,axial_row")


def test_full_mask_is_the_causal_mask():
    m = dalle_mask("full", 5, 3, 4)
    assert torch.equal(m, torch.ones_like(m).tril())
