"""Hard negative captions (NegCLIP-style word swaps): the swapper's edits, the loss against open_clip's and a hand
computation, config errors, and learning: with negatives the image tower learns the swapped word, without them it
does not need to."""

from __future__ import annotations

import math
import re

import open_clip
import pytest
import torch

from zoo.data.shapes import POSITIONS, SHAPES, ShapesDataset
from zoo.errors import ConfigError
from zoo.models.clip.lit import ClipLit
from zoo.models.clip.negatives import NegativeSwapper, hard_negative_loss


def _one_swaps(caption: str) -> dict[str, str]:
    """Every caption one vocabulary swap can make from ``caption``, mapped to the group it swapped in."""
    out = {}
    for name, group in (("shape", SHAPES), ("position", POSITIONS)):
        for word in group:
            for m in re.finditer(r"\b" + re.escape(word) + r"\b", caption):
                for other in group:
                    if other != word:
                        out[caption[: m.start()] + other + caption[m.end() :]] = name
    return out


def test_swap_changes_exactly_one_group_word_for_another_of_its_group():
    sw = NegativeSwapper("shapes", seed=0)
    ds = ShapesDataset("train", size=200)
    drawn = {"shape": 0, "position": 0}
    for i in range(200):
        cap = ds[i]["captions"]["descriptive"]
        neg = sw.swap(cap)
        allowed = _one_swaps(cap)
        assert neg in allowed, (cap, neg)
        drawn[allowed[neg]] += 1
    assert min(drawn.values()) > 50, drawn  # both groups drawn


def test_swap_matches_whole_phrases_and_skips_captions_without_words():
    sw = NegativeSwapper([["top left", "top right"], ["star", "heart"]], seed=1)
    assert sw.swap("IMG_1234.png") is None
    assert sw.swap("a starry top leftish night") is None  # word boundaries: no partial words
    out = {sw.swap("a star") for _ in range(10)}
    assert out == {"a heart"}
    out = {sw.swap("at the top left") for _ in range(10)}
    assert out == {"at the top right"}
    negs, valid = sw(["a star", "untitled"])
    assert negs == ["a heart", "untitled"] and valid.tolist() == [True, False]
    # seeded: the same stream gives the same swaps
    a = NegativeSwapper("shapes", seed=3)
    b = NegativeSwapper("shapes", seed=3)
    caps = [ShapesDataset("val", size=20)[i]["caption"] for i in range(20)]
    assert a(caps)[0] == b(caps)[0]


@pytest.mark.parametrize("groups", ["colours", [["star"]], [], [["a", "a"]], ["circle", "square", "triangle"]])
def test_bad_groups_fail_with_the_fix(groups):
    # a flat word list (groups=[circle,square,triangle], one bracket pair) made each word a group of its letters, whose
    # "negatives" swapped single-letter words: "a red circle" -> "r red circle"
    with pytest.raises(ConfigError, match="fix"):
        NegativeSwapper(groups)


def test_unknown_key_fails_before_training():
    with pytest.raises(ConfigError, match="hard_negatives"):
        ClipLit(preset="tiny", hard_negatives={"groups": "shapes", "per_caption": 2})


def test_loss_equals_open_clip_without_negatives_and_a_hand_computation_with_one():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=1)
    neg = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=1)
    scale = torch.tensor(10.0)
    none = torch.zeros(4, dtype=torch.bool)
    ref = open_clip.ClipLoss()(img, txt, scale)
    assert torch.allclose(hard_negative_loss(img, txt, neg, none, scale), ref, atol=1e-6)
    # one valid negative (caption 2's): it joins every image's denominator on the image -> text side
    valid = torch.tensor([False, False, True, False])
    s = scale * img @ txt.t()
    extra = scale * img @ neg[2]
    i2t = sum(-s[i, i] + math.log(s[i].exp().sum() + extra[i].exp()) for i in range(4)) / 4
    t2i = sum(-s[i, i] + math.log(s[:, i].exp().sum()) for i in range(4)) / 4
    assert torch.allclose(hard_negative_loss(img, txt, neg, valid, scale), (i2t + t2i) / 2, atol=1e-5)


def _margin(m: ClipLit, batch, negs) -> torch.Tensor:
    """Per image: score of its caption minus score of its negative."""
    with torch.no_grad():
        img = m.clip.encode_image(m._pixels(batch["image"]), normalize=True)
        txt = m.clip.encode_text(m.tokenize(batch["caption"]), normalize=True)
        neg = m.clip.encode_text(m.tokenize(negs), normalize=True)
    return (img * txt).sum(1) - (img * neg).sum(1)


def test_negatives_teach_the_swapped_word_that_the_plain_loss_ignores():
    # 8 random images, captions told apart by their number; the shape word is the same for all: the plain loss has
    # no reason to tie images to it, the hard-negative loss must (each image's negative is its caption with the
    # shape swapped).
    g = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.rand(8, 3, 32, 32, generator=g) * 2 - 1,
        "caption": [f"a star number {i}" for i in range(8)],
    }
    eval_negs = [f"a heart number {i}" for i in range(8)]
    margins = {}
    for hard in (False, True):
        torch.manual_seed(0)
        m = ClipLit(preset="tiny", hard_negatives={"groups": [["star", "heart"]]} if hard else None)
        params = [p for n, p in m.named_parameters() if "logit_scale" not in n]
        opt = torch.optim.AdamW(params, lr=2e-3)
        for _ in range(40):
            if hard:
                _, _, loss, _ = m._hard_negative_step(batch["caption"], batch["image"])
            else:
                img, txt = m.embed(batch)
                loss = m.loss_fn(img, txt, m.clip.logit_scale.exp())
            opt.zero_grad()
            loss.backward()
            opt.step()
        margins[hard] = _margin(m, batch, eval_negs)
    # measured: mean margin 0.57 with negatives, 0.01 without
    assert (margins[True] > 0).all(), margins[True]
    assert margins[True].mean() > margins[False].mean() + 0.1, (margins[True].mean(), margins[False].mean())


# ------------------------------------------------------------------------------ exchange (binding) negatives
def test_exchange_trades_two_of_the_captions_own_words_and_keeps_the_bag_of_words():
    sw = NegativeSwapper("binding", seed=0, exchange=True)
    assert sw.swap("a large red circle at the top left") is None  # one object: nothing of one group to trade
    cap = "a large red circle at the top left and a small blue square at the bottom right"
    outs = {sw.swap(cap) for _ in range(200)}
    assert outs == {
        "a large red square at the top left and a small blue circle at the bottom right",  # shapes
        "a large red circle at the bottom right and a small blue square at the top left",  # cells
        "a large blue circle at the top left and a small red square at the bottom right",  # colours
        "a small red circle at the top left and a large blue square at the bottom right",  # sizes
    }
    ds = ShapesDataset("train", size=200)
    made = 0
    for i in range(200):
        c = ds[i]["captions"]["descriptive"]
        neg = sw.swap(c)
        if neg is None:
            continue
        made += 1
        words = sorted(re.findall(r"[a-z]+", neg)), sorted(re.findall(r"[a-z]+", c))
        assert neg != c and words[0] == words[1], (c, neg)  # the same words, another binding
    assert made > 100


def test_exchange_is_reachable_from_the_config_and_checked():
    lit = ClipLit(preset="tiny", hard_negatives={"groups": "binding", "exchange": True})
    assert lit.swapper.exchange
    with pytest.raises(ConfigError, match="exchange=<bool>"):
        ClipLit(preset="tiny", hard_negatives={"groups": "binding", "swap": True})


@pytest.mark.parametrize(
    "option,message",
    [
        ({"exchange": "no"}, "exchange='no' must be true or false"),
        ({"exchange": "off"}, "exchange='off' must be true or false"),
        ({"seed": 2.5}, r"seed=2\.5 must be a whole number"),
        ({"seed": "abc"}, "seed='abc' must be a whole number"),
    ],
)
def test_hard_negative_options_of_the_wrong_kind_are_config_errors(option, message):
    """exchange=no / off (Hydra hands the word over as a string) was bool('no') = True: binding negatives on where
    the user turned them off; seed=2.5 ran as seed 2 and seed=abc was int()'s ValueError traceback."""
    with pytest.raises(ConfigError, match=f"model.hard_negatives.{message}.*fix"):
        ClipLit(preset="tiny", hard_negatives={"groups": "binding", **option})


def test_a_negative_that_is_an_images_own_caption_is_not_held_against_that_image():
    # "a red star" -> "a red heart" is the other image's caption word for word (and back): without the guard each
    # image's row held its own caption as a negative too, the loss could not fall below ln(2)/2 and pushed every
    # image away from its own caption.
    e = torch.eye(2, 4)
    both = torch.tensor([True, True])
    same = torch.tensor([[False, True], [True, False]])  # negative 1 is caption 0's text, negative 0 caption 1's
    assert hard_negative_loss(e, e, e.flip(0), both, torch.tensor(100.0), same) < 1e-6
    torch.manual_seed(0)
    m = ClipLit(preset="tiny", hard_negatives={"groups": [["star", "heart"]]})
    caps, images = ["a red star", "a red heart"], torch.rand(2, 3, 32, 32) * 2 - 1
    negs, valid = m.swapper(caps)
    assert negs == caps[::-1] and valid.all()
    img, txt, loss, _ = m._hard_negative_step(caps, images)
    with torch.no_grad():
        neg = m.clip.encode_text(m.tokenize(negs), normalize=True)
    scale = m.clip.logit_scale.exp()
    assert torch.allclose(loss, hard_negative_loss(img, txt, neg, valid, scale, same), atol=1e-5)
    assert not torch.allclose(loss, hard_negative_loss(img, txt, neg, valid, scale), atol=1e-3)


def test_a_resumed_run_draws_the_negatives_an_uninterrupted_one_does(tmp_path):
    """The swapper's random stream was not in the checkpoint: a resumed run drew the swaps from the seed's start
    again, other negatives than an uninterrupted run's. They now come from (seed, step, micro-batch, rank)."""
    import lightning as L

    from zoo.data.loader import ResumableDataLoader

    data = ShapesDataset(split="train", size=8, resolution=32)

    def collate(samples):
        return {"image": torch.stack([s["image"] for s in samples]), "caption": [s["caption"] for s in samples]}

    def fit(steps, ckpt_path=None):
        m = ClipLit(preset="tiny", hard_negatives={"groups": "shapes", "seed": 5})
        drawn, swap = [], m.swapper.swap
        m.swapper.swap = lambda caption: drawn.append(swap(caption)) or drawn[-1]
        quiet = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
        t = L.Trainer(accelerator="cpu", max_steps=steps, default_root_dir=str(tmp_path), **quiet)
        batches = ResumableDataLoader(data, batch_size=8, shuffle=False, collate_fn=collate)  # zoo-train's loader
        t.fit(m, batches, ckpt_path=ckpt_path)
        return t, drawn

    _, uninterrupted = fit(6)  # one batch an epoch: every step swaps words of the same 8 captions
    first, before = fit(3)
    first.save_checkpoint(tmp_path / "step3.ckpt")
    _, after = fit(6, ckpt_path=str(tmp_path / "step3.ckpt"))
    assert len(after) == 24 and before + after == uninterrupted
    assert uninterrupted[:8] != uninterrupted[24:32]  # (each step draws its own swaps)


class _CaptionsDM:
    batch_size = 8

    def __init__(self, captions):
        self.captions = captions

    def dataset(self, split):
        return [{"image": torch.zeros(3, 32, 32), "caption": c} for c in self.captions]


def test_groups_that_make_no_negative_for_the_data_fail_before_training():
    """groups whose words no caption holds (a typo, another dataset's words; exchange on one-object scenes) made no
    negative: the run was plain CLIP with neg_acc=nan, without an error."""
    caps = ["a red circle at the top left", "a blue square in the centre"]
    with pytest.raises(ConfigError, match="makes no negative for the data.*fix: groups=shapes"):
        ClipLit(preset="tiny", hard_negatives={"groups": [["cirle", "sqaure"]]}).check_data(_CaptionsDM(caps))
    with pytest.raises(ConfigError, match="two different words of one group"):
        ClipLit(preset="tiny", hard_negatives={"groups": "binding", "exchange": True}).check_data(_CaptionsDM(caps))
    ClipLit(preset="tiny", hard_negatives={"groups": "shapes"}).check_data(_CaptionsDM(caps))  # matches: fine
