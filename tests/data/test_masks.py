"""Inpainting masks (zoo/data/masks.py): convention, seeding, kinds produced, coverage statistics."""

from __future__ import annotations

import math

import pytest
import torch

from zoo.data.masks import KINDS, MaskConfig, mask_config, random_masks, rectangle_mask, stroke_mask

N, SIZE = 300, 32


@pytest.fixture(scope="module")
def drawn():
    return random_masks(N, SIZE, generator=torch.Generator().manual_seed(0), return_kinds=True)


def test_shape_values_and_seeding(drawn):
    masks, kinds = drawn
    assert masks.shape == (N, 1, SIZE, SIZE) and masks.dtype == torch.float32
    assert set(masks.unique().tolist()) <= {0.0, 1.0}  # 1 = known, 0 = erased
    again, kinds2 = random_masks(N, SIZE, generator=torch.Generator().manual_seed(0), return_kinds=True)
    assert torch.equal(again, masks) and torch.equal(kinds2, kinds)
    other = random_masks(N, SIZE, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(other, masks)


def test_rectangles_strokes_and_full_erasure_are_all_produced(drawn):
    masks, kinds = drawn
    counts = torch.bincount(kinds, minlength=len(KINDS)).float() / N
    cfg = MaskConfig()
    # binomial(300, 0.45): sd 0.029; (300, 0.1): sd 0.017 -> 4 sd bounds
    assert abs(counts[0] - cfg.rect_prob) < 0.12 and abs(counts[1] - cfg.stroke_prob) < 0.12
    assert abs(counts[2] - (1 - cfg.rect_prob - cfg.stroke_prob)) < 0.07
    erased = 1 - masks[:, 0]
    # a rectangle mask is exactly one axis-aligned box: its bounding box is fully erased
    for m in erased[kinds == 0]:
        rows, cols = m.any(1).nonzero(), m.any(0).nonzero()
        box = m[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all()
    # strokes are not boxes (most of them): their bounding box has kept pixels
    not_box = [not m[m.any(1)][:, m.any(0)].all() for m in erased[kinds == 1]]
    assert sum(not_box) > 0.8 * len(not_box)
    assert (erased[kinds == 2] == 1).all()


def test_coverage_statistics(drawn):
    masks, kinds = drawn
    frac = 1 - masks.mean((1, 2, 3))
    cfg = MaskConfig()
    tol = 2.5 / SIZE  # rounding of the box sides
    rect = frac[kinds == 0]
    assert rect.min() >= cfg.rect_area[0] - tol and rect.max() <= cfg.rect_area[1] + tol
    assert abs(rect.mean() - sum(cfg.rect_area) / 2) < 0.05  # area ~ U[0.1, 0.5]: mean 0.3
    strokes = frac[kinds == 1]
    assert strokes.min() > 0.02 and strokes.max() < 0.7  # about the target U[0.1, 0.45], a last stroke may overshoot
    assert 0.2 < strokes.mean() < 0.4
    assert strokes.std() > 0.05  # varied, not one fixed size
    # every position gets erased sometimes (no region is always known)
    assert (1 - masks[kinds < 2]).mean(0).min() > 0


def test_single_mask_functions_and_config():
    g = torch.Generator().manual_seed(3)
    r = rectangle_mask(64, g, MaskConfig(rect_area=(0.25, 0.25), rect_aspect=1.0))
    assert r.dtype == torch.bool and int(r.sum()) == 32 * 32  # a 32 x 32 square
    s = stroke_mask(64, g, MaskConfig(stroke_area=(0.3, 0.3)))
    assert 0.3 <= s.float().mean() < 0.7
    assert mask_config({"rect_prob": 0.5, "rect_area": [0.2, 0.3]}).rect_area == (0.2, 0.3)
    with pytest.raises(ValueError, match="unknown mask option"):
        mask_config({"rect_probability": 0.5})
    with pytest.raises(ValueError):
        MaskConfig(rect_prob=0.8, stroke_prob=0.5)
    only_rect = random_masks(
        20, 16, torch.Generator().manual_seed(0), MaskConfig(rect_prob=1.0, stroke_prob=0.0), return_kinds=True
    )[1]
    assert (only_rect == 0).all()


@pytest.mark.parametrize(
    "values, says",
    [
        # a scalar was "cannot unpack non-iterable float object"
        ({"rect_area": 0.3}, r"rect_area must be a range \[lo, hi\] of two numbers, got 0.3"),
        ({"stroke_area": [0.1]}, r"stroke_area must be a range \[lo, hi\] of two numbers"),
        # a fractional vertex count was accepted and failed in torch.randint at the first training step
        ({"stroke_vertices": [2.5, 4]}, r"stroke_vertices must be a range \[lo, hi\] of two whole numbers"),
        ({"max_strokes": 2.5}, r"max_strokes must be a whole number, got 2.5"),
    ],
)
def test_ranges_and_counts_of_the_wrong_form_are_refused_when_configured(values, says):
    with pytest.raises(ValueError, match=says):
        mask_config(values)
    whole = mask_config({"stroke_vertices": [2.0, 3.0], "max_strokes": 2.0, "stroke_prob": 1.0, "rect_prob": 0.0})
    assert whole.stroke_vertices == (2, 3) and whole.max_strokes == 2  # YAML floats of whole values still work
    assert random_masks(2, 16, torch.Generator().manual_seed(0), whole).shape == (2, 1, 16, 16)


@pytest.mark.parametrize(
    "values, says",
    [
        # a string was "'<=' not supported between instances of 'int' and 'str'", not naming the option
        (
            {"rect_prob": "0.5"},
            r"rect_prob must be a finite number, got '0.5' \(fix: model.inpaint_masks.rect_prob=0.45",
        ),
        ({"rect_aspect": "3"}, r"rect_aspect must be a finite number"),
        # accepted, then "cannot convert float NaN to integer" at the first training step
        ({"rect_aspect": math.inf}, r"rect_aspect must be a finite number"),
        ({"rect_aspect": math.nan}, r"rect_aspect must be a finite number"),
        ({"stroke_prob": True, "rect_prob": 0.0}, r"stroke_prob must be a finite number, got True"),
        ({"stroke_length": [0.1, math.inf]}, r"stroke_length must be a range \[lo, hi\] of two numbers"),
    ],
)
def test_mask_options_of_the_wrong_kind_are_named_when_configured(values, says):
    with pytest.raises(ValueError, match=says):
        mask_config(values)
