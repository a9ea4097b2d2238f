"""CLIP zero-shot classification (CLIP's headline result) with a linear probe beside it, on the shapes world.

    python -m eval.zeroshot clip_ckpt=<zoo-train CLIP last.ckpt> n=512
    python -m eval.zeroshot clip_ckpt=... n=1000 n_train=2000 tasks=[shape,colour] probe_epochs=30 out=<dir>

Zero-shot (Radford et al., 2021, prompt ensembling): each class is described by several prompt templates
(``"a photo of a {}"``, ...); the L2-normalised text embeddings of one class's prompts are averaged and the mean is
re-normalised (``ensemble_text_weights``); an image is assigned the class whose weight has the highest cosine with its
normalised image embedding (``zero_shot_logits``). Any label set works: labels are strings (templates with ``{}``) or
mappings of named fields (templates with ``{colour}``, ``{shape}``, ...). The single-template accuracy (the first
template alone) is reported beside the ensemble's.

Linear probe (the paper's other protocol): multinomial logistic regression (``torch.nn.Linear`` + cross-entropy,
AdamW, ``probe_epochs`` epochs of minibatches; features standardised with the training split's mean/std) on frozen
CLIP image embeddings of ``n_train`` training-split scenes, scored on the same ``n`` test-split scenes as the
zero-shot classifier. Written by hand: sklearn is not a dependency, and this is a dozen lines of torch.

Tasks (``SHAPES_TASKS``; single-object scenes of the world, ``min_objects = max_objects = 1``): ``shape`` (6),
``colour`` (9, the object's), ``size`` (2), ``position`` (9 grid cells), ``background`` (4) and ``colour_shape``
(54 joint classes, templates ``"a {colour} {shape}"``...). Chance = 1 / classes.

Writes ``results.json`` and ``results.md`` into ``out`` (default ``<log dir>/eval_zeroshot/<time>``: $ZOO_LOG_DIR, else
./logs, as conf/paths).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from zoo.data.shapes import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES

log = logging.getLogger("zoo.eval.zeroshot")

Label = Union[str, Mapping[str, str]]


# ------------------------------------------------------------------------------------------------ classifier
def _article(text: str) -> str:
    """'a orange square' -> 'an orange square' (the world's own captions do the same)."""
    return re.sub(r"\b([Aa]) ([aeiou])", lambda m: f"{m.group(1)}n {m.group(2)}", text)


def fill(template: str, label: Label) -> str:
    """A prompt: ``template`` with ``{}`` (a string label) or named fields (a mapping label) filled in."""
    text = template.format(**label) if isinstance(label, Mapping) else template.format(label)
    return _article(text)


def ensemble_text_weights(
    encode_text: Callable[[list[str]], torch.Tensor], labels: Sequence[Label], templates: Sequence[str]
) -> torch.Tensor:
    """Class weights (C, D): per class, the mean of its prompts' L2-normalised text embeddings, re-normalised.

    ``encode_text(list[str]) -> (N, D)`` (a ``ClipScorer.encode_text``; normalised or not: each prompt's embedding
    is normalised here first)."""
    if not labels or not templates:
        raise ValueError("need at least one label and one template")
    prompts = [fill(t, label) for label in labels for t in templates]  # class-major: (C * T,)
    emb = F.normalize(encode_text(prompts).float(), dim=-1)
    emb = emb.view(len(labels), len(templates), -1)  # (C, T, D)
    return F.normalize(emb.mean(1), dim=-1)


def zero_shot_logits(image_emb: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Cosines (N, C) between L2-normalised image embeddings (N, D) and class weights (C, D)."""
    return F.normalize(image_emb.float(), dim=-1) @ weights.t().to(image_emb.device)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(-1) == y).float().mean())


# ------------------------------------------------------------------------------------------------ linear probe
class LinearProbe(torch.nn.Module):
    """Logistic regression on standardised features: ``(x - mean) / std`` then a linear layer to class logits."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, n_classes: int):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = torch.nn.Linear(mean.shape[-1], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x.float() - self.mean) / self.std)


def linear_probe(
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    epochs: int = 30,
    batch_size: int = 256,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> LinearProbe:
    """Fit a ``LinearProbe`` on frozen features ``x`` (N, D) with labels ``y`` (N,) in [0, n_classes)."""
    x, y = x.detach().float(), y.long()
    if len(x) < 2:  # one sample has no std: every standardised feature, logit and prediction would be NaN
        raise ValueError(f"the linear probe needs at least 2 training samples to standardise by, got {len(x)}")
    g = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        probe = LinearProbe(x.mean(0), x.std(0).clamp(min=1e-6), int(n_classes))
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(int(epochs)):
        for idx in torch.randperm(len(x), generator=g).split(int(batch_size)):
            loss = F.cross_entropy(probe(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return probe.eval()


# ------------------------------------------------------------------------------------------------ shapes tasks
SHAPES_TASKS: dict[str, dict[str, Any]] = {
    "shape": {
        "labels": list(SHAPES),
        "field": lambda o, a: o["shape"],
        "templates": ["a {}", "a photo of a {}", "a {} shape", "an image of a {}", "one {} on a plain background"],
    },
    "colour": {
        "labels": list(COLOURS),
        "field": lambda o, a: o["colour"],
        "templates": [
            "a {} shape",
            "a {} object",
            "a photo of a {} shape",
            "something {}",
            "a {} thing on a plain background",
        ],
    },
    "size": {
        "labels": list(SIZES),
        "field": lambda o, a: o["size"],
        "templates": ["a {} shape", "a {} object", "one {} object", "an image of a {} shape"],
    },
    "position": {
        "labels": list(POSITIONS),
        "field": lambda o, a: o["position"],
        "templates": [
            "a shape at the {}",
            "an object in the {}",
            "one object placed at the {}",
            "a photo of a shape at the {}",
        ],
    },
    "background": {
        "labels": list(BACKGROUNDS),
        "field": lambda o, a: a["background"],
        "templates": [
            "a shape on a {} background",
            "an object on a plain {} background",
            "a {} background",
            "one object drawn on a {} background",
        ],
    },
    "colour_shape": {
        "labels": [{"colour": c, "shape": s} for c in COLOURS for s in SHAPES],
        "field": lambda o, a: {"colour": o["colour"], "shape": o["shape"]},
        "templates": [
            "a {colour} {shape}",
            "a photo of a {colour} {shape}",
            "a {colour} {shape} shape",
            "one {colour} {shape} on a plain background",
        ],
    },
}


def label_name(label: Label) -> str:
    return " ".join(label.values()) if isinstance(label, Mapping) else str(label)


def shapes_split(split: str, n: int, resolution: int = 32, seed: int = 0):
    """``n`` single-object scenes of ``split``: (images (n, 3, R, R) in [-1, 1], attributes list)."""
    from zoo.data.shapes import ShapesDataset

    ds = ShapesDataset(split=split, size=int(n), resolution=resolution, seed=seed, min_objects=1, max_objects=1)
    samples = [ds[i] for i in range(len(ds))]
    return torch.stack([s["image"] for s in samples]), [s["attributes"] for s in samples]


def task_targets(task: Mapping[str, Any], attributes: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    """Class indices (N,) of single-object scenes for a task of ``SHAPES_TASKS``."""
    names = [label_name(label) for label in task["labels"]]
    return torch.tensor([names.index(label_name(task["field"](a["objects"][0], a))) for a in attributes])


def evaluate_embeddings(
    encode_text,
    test_emb: torch.Tensor,
    test_attrs: Sequence[Mapping[str, Any]],
    train_emb: Optional[torch.Tensor] = None,
    train_attrs: Optional[Sequence] = None,
    tasks: Iterable[str] = tuple(SHAPES_TASKS),
    probe_epochs: int = 30,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per task: classes, chance, zero-shot accuracy (ensemble and first template) and, with training
    embeddings, the linear probe's accuracy."""
    rows = []
    for name in tasks:
        if name not in SHAPES_TASKS:
            raise ValueError(f"unknown task {name!r}; tasks: {tuple(SHAPES_TASKS)}")
        task = SHAPES_TASKS[name]
        y = task_targets(task, test_attrs)
        c = len(task["labels"])
        ens = ensemble_text_weights(encode_text, task["labels"], task["templates"])
        single = ensemble_text_weights(encode_text, task["labels"], task["templates"][:1])
        row: dict[str, Any] = {
            "task": name,
            "classes": c,
            "templates": len(task["templates"]),
            "chance": 1.0 / c,
            "zeroshot": accuracy(zero_shot_logits(test_emb, ens), y),
            "zeroshot_single_template": accuracy(zero_shot_logits(test_emb, single), y),
        }
        if train_emb is not None and train_attrs is not None:
            probe = linear_probe(train_emb, task_targets(task, train_attrs), c, epochs=probe_epochs, seed=seed)
            with torch.no_grad():
                row["linear_probe"] = accuracy(probe(test_emb), y)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ the command
DEFAULTS: dict[str, Any] = {
    "clip_ckpt": None,  # a zoo-train CLIP checkpoint (or an open_clip file with clip_arch)
    "clip_arch": None,
    "n": 512,  # test-split single-object scenes classified
    "n_train": 1024,  # training-split scenes for the linear probe (0: no probe)
    "resolution": 32,
    "world_seed": 0,
    "tasks": list(SHAPES_TASKS),
    "probe_epochs": 30,
    "seed": 0,
    "device": "cpu",
    "out": None,
}


def check_options(cfg: Mapping[str, Any]) -> list[str]:
    """The tasks of ``cfg`` as a list; a ConfigError naming the option and its fix for a value that would fail (or
    mislead) only after the scenes had been rendered and embedded."""
    from zoo.data.shapes import check_resolution
    from zoo.errors import ConfigError, check_device, check_whole

    tasks = [cfg["tasks"]] if isinstance(cfg["tasks"], str) else list(cfg["tasks"] or [])
    unknown = [t for t in tasks if t not in SHAPES_TASKS]
    if unknown or not tasks:
        raise ConfigError(f"tasks={unknown or '[]'}: choose from {list(SHAPES_TASKS)} (fix: e.g. tasks=[shape,colour])")

    def integer(key: str, low: int, why: str = "") -> None:
        check_whole(key, cfg[key], low, DEFAULTS[key], why=why)

    integer("n", 1)
    if cfg["n_train"] is not None and cfg["n_train"] != 0:
        # one training scene has no std to standardise by: the probe's logits were NaN and its "accuracy" the share
        # of class 0 among the test scenes; 0 epochs reported an untrained probe's accuracy
        integer("n_train", 2, "the probe standardises by the training scenes' std; n_train=0 for no probe")
        integer("probe_epochs", 1, "n_train=0 for no probe")
    integer("seed", 0)
    integer("world_seed", 0)
    check_resolution(cfg["resolution"], "resolution")
    check_device(cfg.get("device"), "device")
    return tasks


def evaluate(cfg: Mapping[str, Any]) -> dict[str, Any]:
    from zoo.errors import ConfigError
    from zoo.models.clip.scorer import ClipScorer

    tasks = check_options(cfg)
    if not cfg.get("clip_ckpt") or not Path(str(cfg["clip_ckpt"])).is_file():
        raise ConfigError(
            f"CLIP checkpoint not found: {cfg.get('clip_ckpt')} (fix: clip_ckpt=<zoo-train model=clip "
            f"last.ckpt>, e.g. from `zoo-train experiment=clip/shapes`)"
        )
    scorer = ClipScorer.from_config(
        {"checkpoint": str(cfg["clip_ckpt"]), "arch": cfg.get("clip_arch"), "device": cfg.get("device") or "cpu"}
    )
    res, wseed = int(cfg["resolution"]), int(cfg["world_seed"])
    t0 = time.time()
    images, attrs = shapes_split("test", int(cfg["n"]), res, wseed)
    test_emb = scorer.encode_image(images).cpu()
    train_emb = train_attrs = None
    if int(cfg["n_train"] or 0) > 0:
        images, train_attrs = shapes_split("train", int(cfg["n_train"]), res, wseed)
        train_emb = scorer.encode_image(images).cpu()

    def encode_text(texts: list[str]) -> torch.Tensor:
        return scorer.encode_text(texts).cpu()

    rows = evaluate_embeddings(
        encode_text, test_emb, attrs, train_emb, train_attrs, tasks, int(cfg["probe_epochs"]), int(cfg["seed"])
    )
    return {
        "clip_ckpt": str(cfg["clip_ckpt"]),
        "n": int(cfg["n"]),
        "n_train": int(cfg["n_train"] or 0),
        "resolution": res,
        "world_seed": wseed,
        "probe_epochs": int(cfg["probe_epochs"]) if train_emb is not None else None,
        "probe_seed": int(cfg["seed"]) if train_emb is not None else None,
        "rows": rows,
        "templates": {t: SHAPES_TASKS[t]["templates"] for t in tasks},
        "seconds": round(time.time() - t0, 2),
        "notes": [
            "zero-shot: prompt ensemble (mean of normalised text embeddings per class, re-normalised)",
            "linear probe: logistic regression on standardised frozen image embeddings (torch, AdamW)",
            "single-object scenes of the shapes world; test split classified, train split probes",
        ],
    }


def default_log_dir() -> Path:
    """``conf/paths/default.yaml``'s log_dir outside Hydra (as eval.upsampler): $ZOO_LOG_DIR, else ./logs."""
    import os

    return Path(os.environ.get("ZOO_LOG_DIR") or Path.cwd() / "logs")


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def markdown_report(results: Mapping[str, Any]) -> str:
    cols = ["task", "classes", "chance", "zeroshot", "zeroshot_single_template", "linear_probe"]
    lines = [
        f"# CLIP zero-shot classification: {results['clip_ckpt']}",
        "",
        f"{results['n']} single-object test scenes ({results['resolution']} px, world seed "
        f"{results.get('world_seed', 0)}); "
        + (
            f"linear probe trained on {results['n_train']} training scenes ({results.get('probe_epochs')} epochs, "
            f"seed {results.get('probe_seed')})."
            if results["n_train"]
            else "no linear probe (n_train=0)."
        ),
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in results["rows"]:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    lines += ["", *[f"- {n}" for n in results["notes"]], ""]
    return "\n".join(lines)


def write_report(results: Mapping[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out_dir / "results.md").write_text(markdown_report(results))
    log.info("zero-shot report written to %s", out_dir)


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
        check_options(cfg)
        out = Path(cfg["out"] or default_log_dir() / "eval_zeroshot" / time.strftime("%Y-%m-%d_%H-%M-%S"))
        out.mkdir(parents=True, exist_ok=True)  # an unwritable out fails now, not after the scenes were embedded
        results = evaluate(cfg)
        write_report(results, out)
        print(markdown_report(results))
        return results

    return run()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
