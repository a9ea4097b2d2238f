"""Hard negative captions for CLIP training: the caption with one attribute word swapped.

Why: contrastive training only learns what tells a batch's pairs apart. On the shapes world colour, background and
size do that for nearly every pair, so `make demo`'s CLIP learned them and almost nothing of shape or position
(linear probe at chance: shape 0.20 of 6 classes, position 0.18-0.25 of 9), and everything built on it inherits
the blind spot: CLIP reranking cannot prefer the right shape, unCLIP's embedding cannot say where the object goes,
the captioner cannot name the shape. Adding, for each caption, a copy with one such word replaced ("a red star at
the top left" -> "a red heart at the top left") as an extra text the image must score below its own caption forces
the image tower to encode the word's attribute. This is NegCLIP's recipe (Yuksekgonul et al. 2023, "When and why
vision-language models behave like bags-of-words") with swaps of vocabulary words instead of word order.

A swap is drawn per caption: a group among those with a word in the caption, one occurrence of one of its words,
and another word of the group. Captions with no word of any group get no negative (masked out of the loss).

``exchange=True`` makes a *binding* negative instead: two different words of one group that the caption already
holds trade places ("a red circle at the top left and a blue square at the bottom right" -> "... circle at the
bottom right and a blue square at the top left"). Every word stays in the caption, so only a model that binds each
attribute to its object can score the two apart: NegCLIP's word-order negatives, restricted to attributes. Why: the
demo CLIP tells a position swap between two objects from the true caption 53% of the time (chance 50%;
``experiments/clip/binding_probe.py``), and GLIDE with that CLIP's text tower frozen puts the second object of a
two-object prompt in the wrong cell. ``groups=binding`` is the world's shape, position, colour and size words.
Captions without two different words of one group (a one-object scene) get no negative.
"""

from __future__ import annotations

import math
import re
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from zoo.errors import ConfigError


def shapes_groups() -> list[list[str]]:
    """The shapes world's words the demo CLIP does not encode: shapes and positions (see the module docstring)."""
    from zoo.data.shapes import POSITIONS, SHAPES

    return [list(SHAPES), list(POSITIONS)]


def binding_groups() -> list[list[str]]:
    """Every attribute vocabulary of the shapes world (for ``exchange`` negatives: which object has which)."""
    from zoo.data.shapes import COLOURS, POSITIONS, SHAPES, SIZES

    return [list(SHAPES), list(POSITIONS), list(COLOURS), list(SIZES)]


NAMED_GROUPS = {"shapes": shapes_groups, "binding": binding_groups}


class NegativeSwapper:
    """Makes a negative caption by swapping one word of a vocabulary group for another word of the same group.

    Args:
        groups: lists of interchangeable words or phrases (each list >= 2 entries), or a name in ``NAMED_GROUPS``.
        seed: the swaps' random stream (a ``torch.Generator``, so runs are reproducible).
        exchange: False: replace one word by another of its group; True: exchange two different words of one group
            that the caption holds (a binding negative; see the module docstring).
    """

    def __init__(self, groups: Any, seed: int = 0, exchange: bool = False):
        self.exchange = bool(exchange)
        if isinstance(groups, str):
            if groups not in NAMED_GROUPS:
                raise ConfigError(
                    f"unknown hard-negative vocabulary {groups!r} (fix: one of {sorted(NAMED_GROUPS)}, or a list of "
                    "word lists, e.g. model.hard_negatives.groups=[[circle,square],[top left,top right]])"
                )
            groups = NAMED_GROUPS[groups]()
        flat = [g for g in (groups or []) if isinstance(g, str) or not hasattr(g, "__iter__")]
        if flat:
            # groups=[circle,square] (one bracket pair) made each word a group of its letters: the "negatives"
            # swapped single-letter words ("a red circle" -> "r red circle"), trivially told apart, teaching nothing
            raise ConfigError(
                f"hard-negative groups must be lists of words, got the word(s) {flat[:4]} as a group "
                f"(fix: a list of lists, e.g. model.hard_negatives.groups=[[{','.join(map(str, flat[:3]))}]])"
            )
        groups = [[str(w) for w in g] for g in (groups or [])]
        if not groups or any(len(set(g)) < 2 for g in groups):
            raise ConfigError(
                f"hard-negative groups must be lists of at least 2 distinct words, got {groups!r} "
                "(fix: e.g. model.hard_negatives.groups=shapes)"
            )
        self.groups = groups
        # Longest phrases first, so "top left" is matched whole and never as a shorter word inside it.
        self.patterns = [
            re.compile(r"\b(" + "|".join(re.escape(w) for w in sorted(set(g), key=len, reverse=True)) + r")\b")
            for g in groups
        ]
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def reseed(self, *keys: int) -> None:
        """Restart the swaps' stream at one derived from ``seed`` and ``keys`` (ClipLit: step, batch, rank)."""
        import hashlib

        digest = hashlib.sha256(repr((self.seed, *map(int, keys))).encode()).digest()
        self.generator.manual_seed(int.from_bytes(digest[:8], "little") >> 1)

    def _rand(self, n: int) -> int:
        return int(torch.randint(n, (1,), generator=self.generator))

    def swap(self, caption: str) -> Optional[str]:
        """The caption with one word swapped, or None when it holds no word of any group."""
        if self.exchange:
            return self._exchange(caption)
        found = [(gi, list(p.finditer(caption))) for gi, p in enumerate(self.patterns)]
        found = [(gi, ms) for gi, ms in found if ms]
        if not found:
            return None
        gi, matches = found[self._rand(len(found))]
        m = matches[self._rand(len(matches))]
        others = [w for w in self.groups[gi] if w != m.group(1)]
        new = others[self._rand(len(others))]
        return caption[: m.start()] + new + caption[m.end() :]

    def _exchange(self, caption: str) -> Optional[str]:
        """The caption with two different words of one group traded, or None when no group has two."""
        found = []
        for p in self.patterns:
            ms = list(p.finditer(caption))
            if len({m.group(1) for m in ms}) >= 2:
                found.append(ms)
        if not found:
            return None
        ms = found[self._rand(len(found))]
        a = ms[self._rand(len(ms))]
        others = [m for m in ms if m.group(1) != a.group(1)]
        b = others[self._rand(len(others))]
        a, b = sorted((a, b), key=lambda m: m.start())
        return caption[: a.start()] + b.group(1) + caption[a.end() : b.start()] + a.group(1) + caption[b.end() :]

    def __call__(self, captions: Sequence[str]) -> tuple[list[str], torch.Tensor]:
        """(negatives, valid): one negative per caption (the caption itself where none exists) and a bool mask."""
        out, valid = [], []
        for c in captions:
            s = self.swap(c)
            out.append(c if s is None else s)
            valid.append(s is not None)
        return out, torch.tensor(valid, dtype=torch.bool)


def same_text(pos_tokens: torch.Tensor, neg_tokens: torch.Tensor) -> torch.Tensor:
    """(B, M) bool: negative j's token ids equal positive caption i's (the same text, to the model)."""
    _, ids = torch.unique(torch.cat([pos_tokens, neg_tokens]), dim=0, return_inverse=True)
    return ids[: len(pos_tokens), None] == ids[None, len(pos_tokens) :]


def hard_negative_loss(
    img: torch.Tensor,
    txt: torch.Tensor,
    neg: torch.Tensor,
    valid: torch.Tensor,
    scale: torch.Tensor,
    same: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Symmetric InfoNCE where image i also ranks the negative captions (NegCLIP).

    img, txt: (B, D) normalised, pair i matches i; neg: (M, D) normalised negative captions (any image's), valid:
    (M,) which negatives exist; same: optional (B, M) bool, negative j is caption i's own text (``same_text``): one
    caption's negative can be another image's caption ("a red star" -> "a red heart"), and an image must never rank
    its own caption as a negative, so that negative is left out of that image's row only. Image -> text:
    cross-entropy over the B captions and the valid negatives; text -> image: the usual cross-entropy over the B
    images (a negative caption has no image to find). With no valid negative it equals open_clip's ``ClipLoss``
    exactly."""
    labels = torch.arange(len(img), device=img.device)
    i2t = scale * img @ torch.cat([txt, neg]).t()  # (B, B + M)
    keep = valid.to(img.device)[None, :].expand(len(img), -1)  # (B, M)
    if same is not None:
        keep = keep & ~same.to(img.device)
    mask = torch.cat([torch.ones(len(img), len(txt), dtype=torch.bool, device=img.device), keep], dim=1)
    i2t = i2t.masked_fill(~mask, -math.inf)
    t2i = scale * txt @ img.t()
    return (F.cross_entropy(i2t, labels) + F.cross_entropy(t2i, labels)) / 2
