"""Caption quality of a captioner (DALL·E 3 recaptioning): n-gram overlap with held-out captions, and attribute
precision / recall against the shapes world's ground truth.

    python -m eval.captions ckpt=<captioner last.ckpt> features=<zoo-embed file of the split> split=val
    python -m eval.captions ckpt=... features=... decoding=[greedy,beam,nucleus] beam_width=4 top_p=0.9 n=256

Text metrics (``torchmetrics.text``): corpus BLEU-4 (``BLEUScore(n_gram=4)``, no smoothing) and ROUGE-L F1
(``ROUGEScore(rouge_keys="rougeL")``, averaged over captions; ROUGE-L needs no nltk, only ROUGE-Lsum would), each
generated caption against the one held-out caption of the reference style (default: the style the captioner was
trained on, from its checkpoint's data config). CIDEr is not reported: no maintained implementation is installed
here (pycocoevalcap is not in the environment; we do not hand-roll it).

Attribute precision / recall (shapes only): ``parse_caption`` reads a caption into objects (size, colour, shape,
position; a field the caption does not state is None), the object count and the background, with the world's exact
vocabulary (``zoo.data.shapes``); it round-trips every template of the world (tests/eval/test_captions.py).
A caption's *facts* are the stated fields of each object plus the count and background when stated; the truth's are
the four fields of every object plus count and background. Predicted objects are matched one-to-one with true
objects (``scipy.optimize.linear_sum_assignment``, maximising fully consistent objects first, then agreeing fields).
A fact is correct when it agrees with its matched object (count / background: with the scene). So:

* ``precision`` = correct facts / stated facts: a hallucinated object (no true object left to match, or one that
  contradicts its match) contributes only wrong facts and lowers it;
* ``recall`` = correct facts / true facts (a short caption naming the main subject has low recall by design);
* ``object_precision`` = consistent predicted objects / predicted objects; ``object_recall`` = true objects matched by
  a consistent prediction / true objects; ``hallucinated`` = predicted objects not consistent with their match
  (or unmatched), per caption;
* per-kind precision / recall for shape, colour, size, position, count and background.
All are micro-averages over the split (sums of counts, then ratios); a ratio with a zero denominator is None.

Ground-truth rows (``truth=true``, the default, shapes only): the world's own ``alt`` / ``short`` / ``descriptive``
captions of the same scenes scored the same way, as the ceiling and the floor a captioner of that style is read
against (the reference style's own row has BLEU = ROUGE = 1 by construction), and the chance level: every scene
scored with the *next* scene's caption of the reference style (a well-formed caption that ignores the image; the
one-to-one matching lifts per-field agreement above 1 / classes on multi-object scenes, so read a captioner against
this row, not against 1 / classes).

``plausible`` (every row): the share of captions that state a complete scene of the world (``scene_plausible``).

A recaptioned split (``recaptions=<zoo-recaption file>`` instead of ``ckpt=``): the file's captions scored the same
way against the scenes of the split named in its meta (``n=`` the first n)::

    python -m eval.captions recaptions=.zoo_cache/recaptions/shapes_train_synthetic_descriptive.pt n=2000

Prompt upsampling (``upsampler=<zoo-train model=prompt_upsampler last.ckpt>`` instead of ``ckpt=``)::

    python -m eval.captions upsampler=<ckpt> split=val n=256 samples=4 decoding=[greedy,nucleus] expand=["a red circle"]

Each scene's short prompt (the world's ``prompt_style`` caption, default ``short``; or ``prompts=<zoo-recaption file of
the split>``) is rewritten by the upsampler (greedy / beam once, nucleus ``samples`` times with seeds seed .. seed +
samples - 1). Per decoding: ``kept`` (share of rewrites in which every object the prompt names is consistent with a
distinct object of the rewrite, and a stated count / background agrees), ``plausible`` (share that parse to a complete
scene of the world: every object with size, colour, shape and position, distinct positions, the stated count equal to
the number of objects, a background no object shares), ``distinct`` (distinct rewrites per prompt), attribute precision
/ recall of the rewrites against the scene the prompt was written for (the upsampler cannot see the scene: facts beyond
the prompt are guesses, so precision falls and recall rises only by lucky guesses -- the paper's point is to match
the descriptive training captions' distribution, not to recover the image), ``recall_when_kept``, and BLEU / ROUGE-L
against the scene's descriptive caption; a first row scores the prompts themselves. ``expand=[...]`` adds free-text
prompts, each sampled ``samples`` times, to the report's examples.

Writes ``results.json`` and ``results.md`` into ``out`` (default ``logs/eval_captions/<time>``).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from zoo.data.shapes import BACKGROUNDS, COLOURS, NUMBER_WORDS, POSITIONS, SHAPES, SIZES

log = logging.getLogger("zoo.eval.captions")

KINDS = ("shape", "colour", "size", "position", "count", "background")
FIELDS = ("size", "colour", "shape", "position")  # the order of an object tuple

_alt = "|".join
_POSITION_WORDS = _alt(p.replace(" ", r"\s+") for p in POSITIONS)  # "top\s+left|..."
_OBJECT = re.compile(
    rf"\b(?:(?P<s1>{_alt(SIZES)})\s+)?(?:(?P<colour>{_alt(COLOURS)})\s+)?(?P<shape>{_alt(SHAPES)})s?\b"
    rf"(?:\s*,\s*(?P<s2>{_alt(SIZES)})\s*,)?"
    rf"(?:\s+(?:placed\s+)?(?:at|in)\s+the\s+(?P<position>{_POSITION_WORDS})\b)?"
)
_COUNT = re.compile(rf"\b(?P<n>{_alt(NUMBER_WORDS)}|\d+)\s+objects?\b")
_BACKGROUND = re.compile(rf"\b(?P<bg>{_alt(BACKGROUNDS)})\s+background\b")


# ------------------------------------------------------------------------------------------------ parsing
def parse_caption(text: str) -> dict[str, Any]:
    """``{"objects": [(size, colour, shape, position), ...], "count": int | None, "background": str | None}`` of a
    shapes caption, objects in the order the caption names them; unstated fields are None. Only the world's exact
    words are read (``zoo.data.shapes``): anything else is ignored, so noisy text yields fewer facts, not wrong
    ones."""
    t = " ".join(str(text).lower().split())
    objects = []
    for m in _OBJECT.finditer(t):
        pos = m.group("position")
        objects.append(
            (
                m.group("s1") or m.group("s2"),
                m.group("colour"),
                m.group("shape"),
                " ".join(pos.split()) if pos else None,
            )
        )
    c = _COUNT.search(t)
    count = None
    if c:
        n = c.group("n")
        count = int(n) if n.isdigit() else NUMBER_WORDS.index(n)
    b = _BACKGROUND.search(t)
    return {"objects": objects, "count": count, "background": b.group("bg") if b else None}


def ground_truth(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The same structure as ``parse_caption`` for a scene's ``attributes`` (every field stated)."""
    objs = attributes["objects"]
    return {
        "objects": [(o["size"], o["colour"], o["shape"], o["position"]) for o in objs],
        "count": len(objs),
        "background": attributes["background"],
    }


# ------------------------------------------------------------------------------------------------ scoring
def _zero_counts() -> dict[str, int]:
    c = {
        "facts_pred": 0,
        "facts_true": 0,
        "facts_correct": 0,
        "objects_pred": 0,
        "objects_true": 0,
        "objects_consistent": 0,
        "objects_recalled": 0,
        "hallucinated": 0,
        "captions": 0,
    }
    for k in KINDS:
        c.update({f"{k}_pred": 0, f"{k}_true": 0, f"{k}_correct": 0})
    return c


def _match(pred: list[tuple], true: list[tuple]) -> list[Optional[int]]:
    """For each predicted object, the index of its matched true object (or None): one-to-one, maximising first
    the number of fully consistent pairs, then the number of agreeing fields."""
    if not pred or not true:
        return [None] * len(pred)
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    w = np.zeros((len(pred), len(true)))
    for i, p in enumerate(pred):
        for j, t in enumerate(true):
            agree = sum(a is not None and a == b for a, b in zip(p, t, strict=True))
            consistent = all(a is None or a == b for a, b in zip(p, t, strict=True))
            w[i, j] = agree + 10.0 * consistent
    rows, cols = linear_sum_assignment(w, maximize=True)
    out: list[Optional[int]] = [None] * len(pred)
    for i, j in zip(rows, cols, strict=True):
        out[i] = int(j)
    return out


def caption_counts(pred: Mapping[str, Any], true: Mapping[str, Any]) -> dict[str, int]:
    """Fact and object counts of one parsed caption against one parsed truth (see the module doc)."""
    c = _zero_counts()
    c["captions"] = 1
    po, to = list(pred["objects"]), list(true["objects"])
    c["objects_pred"], c["objects_true"] = len(po), len(to)
    for obj in to:
        for f in FIELDS:
            c[f"{f}_true"] += 1
    for kind in ("count", "background"):
        c[f"{kind}_true"] += true[kind] is not None
        if pred[kind] is not None:
            c[f"{kind}_pred"] += 1
            c[f"{kind}_correct"] += pred[kind] == true[kind]
    match = _match(po, to)
    recalled = set()
    for p, j in zip(po, match, strict=True):
        t = to[j] if j is not None else (None,) * 4
        for f, a, b in zip(FIELDS, p, t, strict=True):
            if a is not None:
                c[f"{f}_pred"] += 1
                c[f"{f}_correct"] += a == b
        consistent = j is not None and all(a is None or a == b for a, b in zip(p, t, strict=True))
        c["objects_consistent"] += consistent
        c["hallucinated"] += not consistent
        if consistent:
            recalled.add(j)
    c["objects_recalled"] = len(recalled)
    for k in KINDS:
        c["facts_pred"] += c[f"{k}_pred"]
        c["facts_true"] += c[f"{k}_true"]
        c["facts_correct"] += c[f"{k}_correct"]
    return c


def _ratio(a: float, b: float) -> Optional[float]:
    return float(a) / float(b) if b else None


def _f1(p: Optional[float], r: Optional[float]) -> Optional[float]:
    if p is None or r is None:
        return None
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def attribute_scores(captions: Sequence[str], attributes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Micro-averaged attribute precision / recall of generated ``captions`` against the scenes' ``attributes``."""
    if len(captions) != len(attributes):
        raise ValueError(f"{len(captions)} captions for {len(attributes)} scenes")
    total = _zero_counts()
    for text, attrs in zip(captions, attributes, strict=True):
        for k, v in caption_counts(parse_caption(text), ground_truth(attrs)).items():
            total[k] += v
    p, r = _ratio(total["facts_correct"], total["facts_pred"]), _ratio(total["facts_correct"], total["facts_true"])
    out: dict[str, Any] = {
        "precision": p,
        "recall": r,
        "f1": _f1(p, r),
        "object_precision": _ratio(total["objects_consistent"], total["objects_pred"]),
        "object_recall": _ratio(total["objects_recalled"], total["objects_true"]),
        "hallucinated_per_caption": _ratio(total["hallucinated"], total["captions"]),
    }
    for k in KINDS:
        out[f"{k}_precision"] = _ratio(total[f"{k}_correct"], total[f"{k}_pred"])
        out[f"{k}_recall"] = _ratio(total[f"{k}_correct"], total[f"{k}_true"])
    out["counts"] = total
    return out


def text_scores(captions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU-4 and mean ROUGE-L F1 (torchmetrics) of captions against one reference each."""
    from torchmetrics.text import BLEUScore, ROUGEScore

    preds = [c.lower() for c in captions]
    refs = [r.lower() for r in references]
    bleu = BLEUScore(n_gram=4)(preds, [[r] for r in refs])
    rouge = ROUGEScore(rouge_keys=("rougeL",))(preds, refs)
    return {"bleu4": float(bleu), "rougeL": float(rouge["rougeL_fmeasure"])}


def caption_scores(
    captions: Sequence[str], references: Sequence[str], attributes: Optional[Sequence[Mapping[str, Any]]] = None
) -> dict[str, Any]:
    """Text metrics, plus attribute precision / recall when the scenes' ``attributes`` are given."""
    out: dict[str, Any] = dict(text_scores(captions, references))
    words = [len(c.split()) for c in captions]
    out["mean_words"] = sum(words) / max(1, len(words))
    if attributes is not None:
        out.update(
            {
                f"attr_{k}" if k in ("precision", "recall", "f1") else k: v
                for k, v in attribute_scores(captions, attributes).items()
            }
        )
        out["plausible"] = _ratio(sum(scene_plausible(parse_caption(c)) for c in captions), len(captions))
    return out


# ------------------------------------------------------------------------------------------------ the command
DEFAULTS: dict[str, Any] = {
    "ckpt": None,  # a captioner checkpoint (zoo-train model=captioner)
    "features": None,  # the zoo-embed file of `split` (clip_image_emb per dataset index)
    "split": "val",
    "n": None,  # the first n items (None: all of the file)
    "decoding": ["greedy", "beam"],  # one or several of greedy | beam | nucleus
    "beam_width": 4,
    "length_penalty": 1.0,
    "top_p": 0.9,
    "temperature": 1.0,
    "seed": 0,
    "batch_size": 256,
    "reference_style": None,  # alt | short | descriptive (None: the checkpoint's data.caption_style)
    "out": None,
    "examples": 8,
    "truth": True,  # also score the world's own captions of every style (ceiling / floor rows)
    # prompt upsampling (instead of ckpt)
    "upsampler": None,  # a zoo-train model=prompt_upsampler checkpoint
    "samples": 4,  # nucleus rewrites per prompt
    "prompts": None,  # a zoo-recaption file of the split (None: the world's prompt_style captions)
    "prompt_style": None,  # None: the upsampler's prompt_style when it is a world style, else short
    "expand": [],  # free-text prompts to show expanded `samples` times
    # a zoo-recaption file (instead of ckpt): its captions against the truth of its split's scenes
    "recaptions": None,
}


def decoding_methods(cfg: Mapping[str, Any]) -> list[str]:
    """``cfg["decoding"]`` as a list, every method checked with the run's options before anything is loaded or
    decoded: an unknown method failed only after the methods before it had run, and a beam_width of 0, a top_p of 0
    or a negative temperature decoded something else than the row's label (the checkpoint's width; greedy)."""
    from zoo.models.captioner.lit import check_decoding

    methods = cfg["decoding"]
    methods = [methods] if isinstance(methods, str) else list(methods)
    for method in methods:
        check_decoding(method, cfg["beam_width"], cfg["top_p"], cfg["temperature"], prefix="")
    return methods


def check_counts(cfg: Mapping[str, Any]) -> None:
    """The count options, checked before anything is loaded: ``n=-3`` scored no image and wrote a report of BLEU 0,
    ``batch_size=0`` was range()'s "arg 3 must not be zero" after the captioner had loaded, and ``n=2.5`` /
    ``batch_size=2.5`` ran with 2."""
    from zoo.errors import check_whole

    check_whole("n", cfg["n"], 1, "null (all)", none_ok=True)
    for key, least, default in (("batch_size", 1, 256), ("samples", 1, 4), ("examples", 0, 8)):
        check_whole(key, cfg[key], least, default)
    check_whole("seed", cfg["seed"], fix=0)


def load_split(ckpt_config: Mapping[str, Any], split: str, n: int, where: str):
    """The dataset of ``split`` (``n`` items) as the checkpoint's run saw it (its data config, rebuilt through the
    registry: a file's config is data), without features or tokenizer."""
    from zoo.registry import datamodule_from_file_config

    data_cfg = dict((ckpt_config or {}).get("data") or {})
    if not data_cfg:
        from zoo.data.modules import ShapesDataModule

        log.warning("%s carries no data config: scoring against the default shapes world", where)
        dm = ShapesDataModule(**{f"{split}_size": n})
    else:
        shapes = str(data_cfg.get("_target_", "")).endswith("ShapesDataModule")
        dm = datamodule_from_file_config(data_cfg, where, overrides={f"{split}_size": n} if shapes else None)
    return dm.build_dataset(split), data_cfg


def truth_rows(
    world_captions: Sequence[Mapping[str, str]],
    references: Sequence[str],
    attributes: Sequence[Mapping[str, Any]],
    style: str,
) -> list[dict[str, Any]]:
    """The ground-truth rows (see the module doc): each world style of the same scenes, then chance level (every
    scene scored with the next scene's ``style`` caption)."""
    if not world_captions:
        return []
    rows = [
        {"decoding": f"ground truth `{s}`", **caption_scores([c[s] for c in world_captions], references, attributes)}
        for s in world_captions[0]
    ]
    other = [world_captions[(i + 1) % len(world_captions)][style] for i in range(len(world_captions))]
    rows.append({"decoding": f"another scene's `{style}` (chance)", **caption_scores(other, references, attributes)})
    return rows


def evaluate_recaptions(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``python -m eval.captions recaptions=<zoo-recaption file>``: the file's captions against the truth of the
    scenes they describe (the split named in its meta, rebuilt with its captioner's data config when that checkpoint
    is still there, else the default shapes world of the file's size)."""
    from zoo.checkpoint import load_module
    from zoo.errors import ConfigError
    from zoo.recaption import load_recaptions

    cfg = {**DEFAULTS, **dict(cfg)}
    rec = load_recaptions(str(cfg["recaptions"]))
    captions, meta = list(rec["captions"]), dict(rec["meta"])
    split = str(meta.get("split") or cfg["split"])
    ckpt = meta.get("captioner")
    zoo_config = load_module(ckpt, expect=("captioner",)).zoo_config if ckpt and Path(ckpt).is_file() else {}
    ds, _ = load_split(zoo_config, split, len(captions), str(cfg["recaptions"]))
    if not hasattr(ds, "scene"):
        raise ConfigError("recaption scores need the shapes world (its scenes' attributes)")
    n = min(int(cfg["n"] or len(captions)), len(captions))
    from zoo.data.shapes import CAPTION_STYLES

    own = str(meta.get("style") or "").removeprefix("synthetic_")
    style = cfg["reference_style"] or (own if own in CAPTION_STYLES else "descriptive")
    scenes = [ds.scene(i) for i in range(n)]
    attributes, world = [a for a, _, _ in scenes], [c for _, c, _ in scenes]
    references = [c[style] for c in world]
    row = {"decoding": f"zoo-recaption `{meta.get('style')}` ({meta.get('decoding') or 'checkpoint default'})"}
    row.update(caption_scores(captions[:n], references, attributes))
    return {
        "ckpt": str(ckpt),
        "features": str(cfg["recaptions"]),
        "split": split,
        "n": n,
        "reference_style": style,
        "rows": [row],
        "truth_rows": truth_rows(world, references, attributes, style) if cfg["truth"] else [],
        "references": references[: int(cfg["examples"])],
        "examples": {"recaption": captions[: int(cfg["examples"])]},
        "meta": meta,
        "notes": [
            "the captions of a zoo-recaption file scored against the scenes of its split",
            "plausible: the caption states a complete scene of the world (see eval/captions.py)",
            "BLEU-4: torchmetrics BLEUScore(n_gram=4), corpus level; ROUGE-L: rougeL F1, mean over captions",
        ],
    }


def evaluate(cfg: Mapping[str, Any]) -> dict[str, Any]:
    from zoo.checkpoint import load_module
    from zoo.embed import load_embeddings
    from zoo.errors import ConfigError
    from zoo.progress import track

    cfg = {**DEFAULTS, **dict(cfg)}
    check_counts(cfg)
    modes = [k for k in ("ckpt", "upsampler", "recaptions") if cfg[k]]
    if len(modes) > 1:
        raise ConfigError(f"give one of ckpt=<captioner>, upsampler=<prompt upsampler>, recaptions=<file>; got {modes}")
    if cfg["upsampler"]:
        return evaluate_upsampler(cfg)
    if cfg["recaptions"]:
        return evaluate_recaptions(cfg)
    if not cfg["ckpt"] or not cfg["features"]:
        raise ConfigError(
            "python -m eval.captions needs ckpt=<captioner last.ckpt> and features=<zoo-embed file of the split>"
        )
    methods = decoding_methods(cfg)
    from zoo.models.captioner.lit import item_generators

    lit = load_module(cfg["ckpt"], expect=("captioner",), option="ckpt")
    # load_embeddings, not a bare safe_load: a truncated file's advice is "re-run zoo-embed" (safe_load's default
    # says "use another checkpoint"), and NaN or misshapen embeddings are refused instead of captioned
    meta: dict = {}
    # only clip_image_emb is read (one row per image in any layout): all_captions spares a captions=all file's
    # first-caption copy of every text key (~20% of the file)
    feats = load_embeddings(cfg["features"], meta, all_captions=True)
    if meta.get("split") is not None and str(meta["split"]) != str(cfg["split"]):
        # scored against the other split's scenes, silently (zoo-recaption refuses the same file)
        raise ConfigError(
            f"features={cfg['features']} holds the {meta['split']} split's embeddings but split={cfg['split']} "
            f"(fix: split={meta['split']}, or features=<the zoo-embed file of the {cfg['split']} split>)"
        )
    if "clip_image_emb" not in feats:
        raise ConfigError(f"{cfg['features']} has no clip_image_emb (fix: features=<a zoo-embed file>)")
    from zoo.recaption import check_embedding_clip

    fix = "features=<zoo-embed file of the split by the captioner's CLIP>"
    check_embedding_clip(meta.get("clip_fingerprint"), lit.clip_fingerprint, f"features={cfg['features']}", fix)
    emb = feats["clip_image_emb"]
    n_file = len(emb)
    n = min(int(cfg["n"]), n_file) if cfg["n"] else n_file
    ds, data_cfg = load_split(lit.zoo_config, cfg["split"], n_file, str(cfg["ckpt"]))
    style = cfg["reference_style"] or data_cfg.get("caption_style") or "descriptive"
    scene = getattr(ds, "scene", None)
    attributes, references, world_captions = [], [], []
    for i in range(n):
        if scene is not None:
            attrs, caps, _ = scene(i)
            if style not in caps:
                raise ConfigError(f"unknown reference_style {style!r}; choose one of {sorted(caps)}")
            attributes.append(attrs)
            references.append(caps[style])
            world_captions.append(caps)
        else:
            references.append(ds[i]["caption"])
    rows, examples = [], {}
    bs = int(cfg["batch_size"])
    for method in methods:
        t0 = time.time()
        captions: list[str] = []
        for i in track(range(0, n, bs), total=(n + bs - 1) // bs, desc=f"captioning ({method})", unit="batch"):
            kw: dict[str, Any] = {"method": method}
            if method == "beam":
                kw.update(beam_width=int(cfg["beam_width"]), length_penalty=float(cfg["length_penalty"]))
            elif method == "nucleus":
                # item j's draws from its own (seed, j) stream, as zoo-recaption's: one generator for the split gave
                # other captions (and scores) at another batch_size
                gen = item_generators(int(cfg["seed"]), range(i, min(i + bs, n)), lit.device)
                kw.update(top_p=float(cfg["top_p"]), temperature=float(cfg["temperature"]), generator=gen)
            captions += lit.caption(emb[i : min(i + bs, n)], batch_size=bs, **kw)
        row = {
            "decoding": method,
            **caption_scores(captions, references, attributes if scene is not None else None),
            "seconds": round(time.time() - t0, 2),
        }
        if method == "beam":
            row["beam_width"] = int(cfg["beam_width"])
        if method == "nucleus":
            row["top_p"] = float(cfg["top_p"])
        rows.append(row)
        examples[method] = captions[: int(cfg["examples"])]
    truth = truth_rows(world_captions, references, attributes, style) if cfg["truth"] else []
    return {
        "ckpt": str(cfg["ckpt"]),
        "features": str(cfg["features"]),
        "split": cfg["split"],
        "n": n,
        "reference_style": style,
        "rows": rows,
        "truth_rows": truth,
        "references": references[: int(cfg["examples"])],
        "examples": examples,
        "notes": [
            "BLEU-4: torchmetrics BLEUScore(n_gram=4), corpus level, one reference per image",
            "ROUGE-L: torchmetrics ROUGEScore rougeL F1, mean over captions",
            "CIDEr: not reported (no maintained implementation installed)",
            "attributes: micro-averaged facts (see eval/captions.py)",
        ],
    }


# ------------------------------------------------------------------------------------------------ prompt upsampling
def scene_plausible(parsed: Mapping[str, Any]) -> bool:
    """Whether a parsed caption states a complete scene of the shapes world: at least one object, every object with
    size, colour, shape and position, distinct positions, a stated count equal to the number of objects, a stated
    background that no object's colour equals (``zoo.data.shapes.sample_attributes``'s rules)."""
    objs = list(parsed["objects"])
    bg = parsed["background"]
    return (
        bool(objs)
        and all(None not in o for o in objs)
        and len({o[3] for o in objs}) == len(objs)
        and parsed["count"] == len(objs)
        and bg is not None
        and all(o[1] != bg for o in objs)
    )


def keeps_prompt(prompt: Mapping[str, Any], parsed: Mapping[str, Any]) -> bool:
    """Whether a rewrite keeps its prompt: every object the prompt names is consistent with a distinct object of the
    rewrite (one-to-one, as ``caption_counts`` matches), and a count / background the prompt states is the rewrite's."""
    po, ro = list(prompt["objects"]), list(parsed["objects"])
    for p, j in zip(po, _match(po, ro), strict=True):
        if j is None or not all(a is None or a == b for a, b in zip(p, ro[j], strict=True)):
            return False
    return all(prompt[k] is None or prompt[k] == parsed[k] for k in ("count", "background"))


def upsampling_scores(
    prompts: Sequence[str],
    rewrites: Sequence[Sequence[str]],
    attributes: Sequence[Mapping[str, Any]],
    references: Sequence[str],
) -> dict[str, Any]:
    """Scores of ``rewrites[i]`` (one or more rewrites of ``prompts[i]``) against scene ``attributes[i]`` and its
    descriptive ``references[i]`` (see the module doc)."""
    flat, attrs, refs, kept_flags, plausible = [], [], [], [], []
    for prompt, rs, a, ref in zip(prompts, rewrites, attributes, references, strict=True):
        pp = parse_caption(prompt)
        for r in rs:
            parsed = parse_caption(r)
            flat.append(r)
            attrs.append(a)
            refs.append(ref)
            kept_flags.append(keeps_prompt(pp, parsed))
            plausible.append(scene_plausible(parsed))
    out = caption_scores(flat, refs, attrs)
    kept = [i for i, k in enumerate(kept_flags) if k]
    out.update(
        {
            "rewrites": len(flat),
            "kept": _ratio(sum(kept_flags), len(flat)),
            "plausible": _ratio(sum(plausible), len(flat)),
            "distinct": sum(len(set(rs)) for rs in rewrites) / max(1, len(rewrites)),
            "recall_when_kept": (
                attribute_scores([flat[i] for i in kept], [attrs[i] for i in kept])["recall"] if kept else None
            ),
        }
    )
    return out


def _upsampler_prompts(
    cfg: Mapping[str, Any], up, n: int, world_captions: list[dict[str, str]]
) -> tuple[list[str], str]:
    from zoo.errors import ConfigError

    if cfg["prompts"]:
        from zoo.recaption import load_recaptions

        rec = load_recaptions(str(cfg["prompts"]))
        caps, written_for = rec["captions"], rec["meta"].get("split")
        if written_for is not None and str(written_for) != str(cfg["split"]):
            # its prompts were scored against the scenes of another split, silently (row i: another image's prompt)
            raise ConfigError(
                f"prompts={cfg['prompts']} holds captions of the {written_for} split but split={cfg['split']} (fix: "
                f"split={written_for}, or prompts=<zoo-recaption file of the {cfg['split']} split>)"
            )
        if len(caps) < n:
            raise ConfigError(f"prompts={cfg['prompts']} has {len(caps)} captions for {n} scenes (fix: n={len(caps)})")
        return list(caps[:n]), f"zoo-recaption file {cfg['prompts']}"
    from zoo.data.shapes import CAPTION_STYLES

    style = cfg["prompt_style"] or (up.prompt_style if up.prompt_style in CAPTION_STYLES else "short")
    if style not in CAPTION_STYLES:
        raise ConfigError(f"unknown prompt_style {style!r}; choose one of {CAPTION_STYLES} (or prompts=<file>)")
    return [c[style] for c in world_captions], f"the world's `{style}` captions"


def evaluate_upsampler(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``python -m eval.captions upsampler=...``: prompt-upsampling scores (see the module doc)."""
    from zoo.checkpoint import load_module
    from zoo.errors import ConfigError

    cfg = {**DEFAULTS, **dict(cfg)}
    methods = decoding_methods(cfg)
    up = load_module(cfg["upsampler"], expect=("prompt_upsampler",), option="upsampler")
    n = int(cfg["n"] or 256)
    ds, _ = load_split(up.zoo_config, cfg["split"], n, str(cfg["upsampler"]))
    if not hasattr(ds, "scene"):
        raise ConfigError("upsampler scores need the shapes world (its scenes' attributes)")
    scenes = [ds.scene(i) for i in range(n)]
    attributes = [a for a, _, _ in scenes]
    world = [c for _, c, _ in scenes]
    references = [c["descriptive"] for c in world]
    prompts, source = _upsampler_prompts(cfg, up, n, world)
    k, seed, bs = int(cfg["samples"]), int(cfg["seed"]), int(cfg["batch_size"])
    opts = {"top_p": float(cfg["top_p"]), "temperature": float(cfg["temperature"])}

    def rewrite(texts: list[str], method: str, s: int) -> list[str]:
        out: list[str] = []
        for i in range(0, len(texts), bs):
            kw: dict[str, Any] = {"method": method}
            if method == "nucleus":
                kw.update(seed=s, **opts)
            elif method == "beam":
                kw.update(beam_width=int(cfg["beam_width"]), length_penalty=float(cfg["length_penalty"]))
            out += up.upsample(texts[i : i + bs], **kw)
        return out

    rows = [
        {
            "decoding": "prompt (no upsampling)",
            **upsampling_scores(prompts, [[p] for p in prompts], attributes, references),
        }
    ]
    examples: dict[str, list[list[str]]] = {}
    for method in methods:
        t0 = time.time()
        draws = [rewrite(prompts, method, seed + j) for j in range(k if method == "nucleus" else 1)]
        rewrites = [list(r) for r in zip(*draws, strict=True)]
        row = {"decoding": method, **upsampling_scores(prompts, rewrites, attributes, references)}
        row["samples"] = len(draws)
        if method == "nucleus":
            row.update(opts)
        row["seconds"] = round(time.time() - t0, 2)
        rows.append(row)
        examples[method] = rewrites[: int(cfg["examples"])]
    expand = cfg["expand"] or []
    expand = [expand] if isinstance(expand, str) else [str(e) for e in expand]
    expanded = {p: up.expand(p, k, seed=seed, **opts) for p in expand}
    return {
        "mode": "upsampler",
        "upsampler": str(cfg["upsampler"]),
        "prompt_style": up.prompt_style,
        "target_style": up.target_style,
        "split": cfg["split"],
        "n": n,
        "prompt_source": source,
        "rows": rows,
        "prompts": prompts[: int(cfg["examples"])],
        "references": references[: int(cfg["examples"])],
        "examples": examples,
        "expanded": expanded,
        "notes": [
            "kept: every object the prompt names is consistent with a distinct object of the rewrite",
            "plausible: the rewrite states a complete scene of the world (see eval/captions.py)",
            "attributes / BLEU / ROUGE-L: against the scene the prompt was written for (its descriptive caption)",
            "the upsampler never sees the image: facts beyond the prompt are guesses",
        ],
    }


UPSAMPLER_COLUMNS = (
    "decoding",
    "samples",
    "kept",
    "plausible",
    "distinct",
    "attr_precision",
    "attr_recall",
    "recall_when_kept",
    "object_precision",
    "hallucinated_per_caption",
    "bleu4",
    "rougeL",
    "mean_words",
    "seconds",
)


def upsampler_markdown_report(results: Mapping[str, Any]) -> str:
    cols = [c for c in UPSAMPLER_COLUMNS if any(c in r for r in results["rows"])]
    lines = [
        f"# Prompt upsampling: {results['upsampler']}",
        "",
        f"{results['n']} scenes of the {results['split']} split; prompts: {results['prompt_source']} "
        f"(the upsampler was trained on `{results['prompt_style']}` -> `{results['target_style']}`).",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in results["rows"]:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    lines += ["", "Examples (prompt -> rewrites; the scene's descriptive caption):", ""]
    for i, prompt in enumerate(results["prompts"]):
        lines.append(f"- `{prompt}` (scene: `{results['references'][i]}`)")
        for method, rewrites in results["examples"].items():
            for r in rewrites[i] if i < len(rewrites) else []:
                lines.append(f"  - {method}: `{r}`")
    if results.get("expanded"):
        lines += ["", "Free prompts, each expanded several times (nucleus):", ""]
        for prompt, rewrites in results["expanded"].items():
            lines.append(f"- `{prompt}`")
            lines += [f"  - `{r}`" for r in rewrites]
    lines += ["", *[f"- {n}" for n in results["notes"]], ""]
    return "\n".join(lines)


def report(results: Mapping[str, Any]) -> str:
    """The markdown report of either mode."""
    return upsampler_markdown_report(results) if results.get("mode") == "upsampler" else markdown_report(results)


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


COLUMNS = (
    "decoding",
    "bleu4",
    "rougeL",
    "attr_precision",
    "attr_recall",
    "attr_f1",
    "object_precision",
    "object_recall",
    "hallucinated_per_caption",
    "plausible",
    "mean_words",
    "seconds",
)


def markdown_report(results: Mapping[str, Any]) -> str:
    cols = [c for c in COLUMNS if any(c in r for r in results["rows"])]
    lines = [
        f"# Caption quality: {results['ckpt']}",
        "",
        f"{results['n']} images of the {results['split']} split ({results['features']}); references: "
        f"`{results['reference_style']}` captions.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    truth = list(results.get("truth_rows") or [])
    for r in results["rows"] + truth:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    if truth:
        lines += ["", "(ground truth rows: the world's own captions of each style, scored the same way)"]
    lines += [
        "",
        "Per attribute (precision / recall):",
        "",
        "| decoding | " + " | ".join(KINDS) + " |",
        "|" + "---|" * (len(KINDS) + 1),
    ]
    for r in results["rows"] + truth:
        if "shape_precision" in r:
            lines.append(
                f"| {r['decoding']} | "
                + " | ".join(f"{_fmt(r[f'{k}_precision'])} / {_fmt(r[f'{k}_recall'])}" for k in KINDS)
                + " |"
            )
    lines += ["", "Examples (reference -> generated):", ""]
    for i, ref in enumerate(results["references"]):
        lines.append(f"- `{ref}`")
        for method, caps in results["examples"].items():
            if i < len(caps):
                lines.append(f"  - {method}: `{caps[i]}`")
    lines += ["", *[f"- {n}" for n in results["notes"]], ""]
    return "\n".join(lines)


def write_report(results: Mapping[str, Any], out_dir: Path) -> None:
    """``results.json`` and ``results.md`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out_dir / "results.md").write_text(report(results))
    log.info("caption report written to %s", out_dir)


def main(argv: Optional[Iterable[str]] = None) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from zoo.config import report_user_errors

    @report_user_errors
    def run() -> dict[str, Any]:
        from zoo.errors import ConfigError

        cli = OmegaConf.to_container(OmegaConf.from_dotlist(list(sys.argv[1:] if argv is None else argv)))
        unknown = sorted(set(cli) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown}; options: {sorted(DEFAULTS)}")
        cfg = {**DEFAULTS, **cli}
        results = evaluate(cfg)
        out = Path(cfg["out"] or Path("logs") / "eval_captions" / time.strftime("%Y-%m-%d_%H-%M-%S"))
        write_report(results, out)
        print(report(results))
        return results

    return run()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
