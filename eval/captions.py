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
}


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


def evaluate(cfg: Mapping[str, Any]) -> dict[str, Any]:
    import torch

    from zoo.checkpoint import load_module, safe_load
    from zoo.errors import ConfigError
    from zoo.progress import track

    cfg = {**DEFAULTS, **dict(cfg)}
    if not cfg["ckpt"] or not cfg["features"]:
        raise ConfigError(
            "python -m eval.captions needs ckpt=<captioner last.ckpt> and features=<zoo-embed file of the split>"
        )
    lit = load_module(cfg["ckpt"], expect=("captioner",))
    feats = safe_load(cfg["features"])
    if not isinstance(feats, dict) or "clip_image_emb" not in feats:
        raise ConfigError(f"{cfg['features']} has no clip_image_emb (fix: features=<a zoo-embed file>)")
    emb = feats["clip_image_emb"]
    n_file = len(emb)
    n = min(int(cfg["n"]), n_file) if cfg["n"] else n_file
    ds, data_cfg = load_split(lit.zoo_config, cfg["split"], n_file, str(cfg["ckpt"]))
    style = cfg["reference_style"] or data_cfg.get("caption_style") or "descriptive"
    scene = getattr(ds, "scene", None)
    attributes, references = [], []
    for i in range(n):
        if scene is not None:
            attrs, caps, _ = scene(i)
            if style not in caps:
                raise ConfigError(f"unknown reference_style {style!r}; choose one of {sorted(caps)}")
            attributes.append(attrs)
            references.append(caps[style])
        else:
            references.append(ds[i]["caption"])
    methods = cfg["decoding"]
    methods = [methods] if isinstance(methods, str) else list(methods)
    rows, examples = [], {}
    bs = int(cfg["batch_size"])
    for method in methods:
        t0 = time.time()
        gen = torch.Generator().manual_seed(int(cfg["seed"]))
        captions: list[str] = []
        for i in track(range(0, n, bs), total=(n + bs - 1) // bs, desc=f"captioning ({method})", unit="batch"):
            kw: dict[str, Any] = {"method": method}
            if method == "beam":
                kw.update(beam_width=int(cfg["beam_width"]), length_penalty=float(cfg["length_penalty"]))
            elif method == "nucleus":
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
    return {
        "ckpt": str(cfg["ckpt"]),
        "features": str(cfg["features"]),
        "split": cfg["split"],
        "n": n,
        "reference_style": style,
        "rows": rows,
        "references": references[: int(cfg["examples"])],
        "examples": examples,
        "notes": [
            "BLEU-4: torchmetrics BLEUScore(n_gram=4), corpus level, one reference per image",
            "ROUGE-L: torchmetrics ROUGEScore rougeL F1, mean over captions",
            "CIDEr: not reported (no maintained implementation installed)",
            "attributes: micro-averaged facts (see eval/captions.py)",
        ],
    }


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
    for r in results["rows"]:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    lines += [
        "",
        "Per attribute (precision / recall):",
        "",
        "| decoding | " + " | ".join(KINDS) + " |",
        "|" + "---|" * (len(KINDS) + 1),
    ]
    for r in results["rows"]:
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
    (out_dir / "results.md").write_text(markdown_report(results))
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
        print(markdown_report(results))
        return results

    return run()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
