"""``zoo-eval``: a protocol + the DALL·E 1 Figure 9 ablations for any generator, as a thin Hydra entry point over
``evaluate(cfg)`` (testable with Hydra's compose API).

    zoo-eval                                    # shapes protocol, the real_blurred check generator, offline
    zoo-eval generator=dalle                    # zoo.pipelines.dalle.DallePipeline.from_checkpoints (via _target_)
    zoo-eval experiment=dalle1/fig9             # the whole Figure 9 table (conf/eval/experiment/dalle1/*)
    zoo-eval metrics=[fd_clip,clip_score,prompt_fidelity,is_judge] logger=none
    zoo-eval ablations=[blur,diversity]         # + sample diversity (pairwise CLIP distance of k samples/caption)
    zoo-eval experiment=leaderboard/glide       # one row of the model leaderboard (eval/leaderboard.py)

Config: ``conf/eval/eval.yaml`` (groups ``protocol/``, ``logger/``, ``experiment/`` under ``conf/eval/``; the
``generator/``, ``paths/`` and ``hydra/`` groups are the top-level ones ``zoo-sample`` and ``zoo-train`` use). Output in the
run directory: ``results.json``, ``results.md``, ``blur.png``, ``rerank.png``, ``samples.png`` and, with
``logger=wandb`` (default, offline), a W&B run with the tables (``wandb.Table``) and plots (``wandb.Image``).
``results.json`` also holds the sampling speed (``sec_per_image``: seconds inside the generator's calls per image,
``sampling`` per ablation), the CPU it was measured on (``cpu``) and what the generator's checkpoints' training runs
recorded (``training``), for ``python -m eval.leaderboard``.

``metrics=auto`` (default) computes every metric whose network is on this machine and lists the others with the
reason (no FID Inception weights offline, no CLIP checkpoint, no ground-truth attributes); naming a metric whose
weights are missing is an error that says which option fixes it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from eval.ablations import (
    ALL_METRICS,
    CLIP_METRICS,
    INCEPTION_METRICS,
    JUDGE_METRICS,
    MetricSuite,
    blur_ablation,
    check_blur_radius,
    check_candidates,
    check_diversity,
    check_metrics,
    check_radii,
    check_suite_options,
    diversity_ablation,
    rerank_ablation,
    rerank_select,
)
from eval.eval_set import EvalSet
from eval.generators import generate_images
from zoo.config import entry_point, instantiate
from zoo.errors import ConfigError, MissingWeightsError, check_switch, check_whole

log = logging.getLogger("zoo.eval")
ABLATIONS = ("blur", "rerank", "diversity")


# ------------------------------------------------------------------------------------------------ building blocks
def _target(node) -> str:
    return str(node.get("_target_", "?")) if node is not None else "?"


def build_protocol(node: DictConfig):
    if node is None or "_target_" not in node:
        raise ConfigError("no protocol configured (fix: protocol=shapes or protocol=coco protocol.root=/path/to/coco)")
    missing = [k for k in node if OmegaConf.is_missing(node, k)]
    if missing:
        raise ConfigError(f"protocol.{missing[0]} is required (fix: protocol.{missing[0]}=...)")
    return instantiate(node, "protocol")


def build_generator(node: DictConfig, eval_set: EvalSet):
    """The ``conf/generator/`` node built as ``zoo-sample`` builds it (``zoo.pipelines.base.build_generator``:
    required keys and checkpoint files checked first), then ``bind(eval_set)`` when it has that hook (the
    real_blurred check generator)."""
    from zoo.pipelines.base import build_generator as build

    gen = build(
        node,
        "generator",
        ranked_by="zoo-eval draws each caption's candidates itself and ranks them with its own CLIP (the clip node) "
        "over rerank.candidates and blur.candidates (fix: leave generator.n_candidates out; give the counts there, "
        "e.g. rerank.candidates=[1,32] to score the CLIP-best of 32)",
    )
    if callable(getattr(gen, "bind", None)):
        gen.bind(eval_set)
    warn_resized_samples(gen, eval_set)
    return gen


def warn_resized_samples(gen: Any, eval_set: EvalSet) -> Optional[int]:
    """Warn when a DALL·E draws images of another size than the protocol evaluates at (returns that size, else
    None). Its samples are resized to the evaluation resolution without a word, so a 32 px DALL·E scored under
    ``protocol.resolution=64`` (or the 48 px one of ``make demo FULL=1`` under ``dalle1/fig9``'s 32) is compared, as
    an upsampled (or downsampled) image, with real scenes rendered sharp at that size: every metric moves, as in the
    blur ablation. A warning, not an error: scoring generators of several sizes at one resolution is a choice."""
    dalle = getattr(gen, "dalle", None)
    tok = getattr(dalle, "image_tokenizer", None)
    if tok is None or getattr(dalle, "cfg", None) is None:
        return None
    drawn = int(dalle.cfg.grid_h) * int(tok.downsample_factor)  # the sampled grid, decoded
    if drawn == eval_set.resolution:
        return None
    log.warning(
        "the DALL·E draws %d px images and %s evaluates at %d px: its samples are resized to %d px before every "
        "metric (the generator's own size: protocol.resolution=%d, where the protocol renders at any size, as shapes)",
        drawn,
        eval_set.name,
        eval_set.resolution,
        eval_set.resolution,
        drawn,
    )
    return drawn


def clip_file_problem(node) -> Optional[ConfigError]:
    """The error of a ``clip.checkpoint`` that is not a file (None when it is one, or none is given)."""
    ckpt = node.get("checkpoint")
    if ckpt and not Path(str(ckpt)).expanduser().is_file():
        return ConfigError(
            f"CLIP checkpoint not found: {ckpt} (fix: clip.checkpoint=/path/to/clip.ckpt from "
            f"`zoo-train experiment=clip/shapes` or `make demo`, or clip.checkpoint=null "
            f"clip.arch=ViT-B-32 clip.pretrained=openai)"
        )
    return None


def build_clip(node: DictConfig):
    """(ClipScorer, id for cache keys) from the ``clip`` node; ConfigError naming the fix when it cannot."""
    from eval.features import file_digest
    from zoo.models.clip.scorer import ClipScorer

    problem = clip_file_problem(node)
    if problem is not None:
        raise problem
    ckpt = node.get("checkpoint")
    if ckpt:  # the loader and the digest get the expanded path too (a literal ~/ passed the check, then was not found)
        ckpt = str(Path(str(ckpt)).expanduser())
        node = (
            OmegaConf.merge(node, {"checkpoint": ckpt}) if OmegaConf.is_config(node) else {**node, "checkpoint": ckpt}
        )
    import hashlib
    import json

    import torch

    scorer = ClipScorer.from_config(node)
    # The ident keys the cached real features: everything that changes the CLIP must be in it. clip.net overrides
    # (e.g. a 128 px vision tower on the same checkpoint) and the seed of a random-init CLIP used to share one entry
    # with the plain CLIP, and a later run read the other CLIP's cached real features.
    net = node.get("net")
    net = OmegaConf.to_container(net, resolve=True) if OmegaConf.is_config(net) else net
    net_tag = f";net={hashlib.sha256(json.dumps(net, sort_keys=True).encode()).hexdigest()[:12]}" if net else ""
    pretrained = node.get("pretrained")
    if ckpt:
        # beside an open_clip file the tag sets QuickGELU and the preprocessing: another CLIP on the same weights
        tag = f";tag={pretrained}" if pretrained and node.get("arch") else ""
        ident = f"clip:{node.get('arch') or 'zoo'}@{file_digest(ckpt)}{tag}{net_tag}"
    elif pretrained and Path(str(pretrained)).is_file():  # a file given as the tag (create_clip loads it): its content
        ident = f"clip:{node.get('arch')}@{file_digest(pretrained)}{net_tag}"
    else:
        init = pretrained or f"random-init-seed{torch.initial_seed()}"
        ident = f"clip:{node.get('arch')}:{init}{net_tag}"
        if not node.get("pretrained"):
            log.warning(
                "CLIP %s has random weights (no clip.checkpoint / clip.pretrained): its numbers only test "
                "the machinery",
                node.get("arch"),
            )
    return scorer, ident


def judge_path(node, resolution: int) -> Path:
    """Where the judge of zoo-eval's ``judge`` node (a DictConfig or dict) is cached for this resolution, under the
    digest of the judge's code too (``eval.judge.judge_code_digest``: an edited judge trains anew)."""
    from eval.judge import judge_file_name

    steps, bs, width = int(node.get("steps", 400)), int(node.get("batch_size", 128)), int(node.get("width", 64))
    return Path(str(node["dir"])).expanduser() / judge_file_name(resolution, steps, bs, width=width)


def check_judge(node) -> None:
    """The judge's settings, refused before anything loads: judge.steps=0 was torch's "size must be >= 1" once the
    generator's checkpoints had loaded, judge.batch_size=2.5 trained (and cached) a judge at 2."""
    for key, default in (("steps", 400), ("batch_size", 128)):
        check_whole(f"judge.{key}", node.get(key, default), 1, default)
    check_whole(
        "judge.width", node.get("width", 64), 8, "64 (the default) or 32", why="the CNN's width, to read a scene"
    )


def build_judge(node: DictConfig, resolution: int, progress: bool):
    from eval.judge import load_or_train_judge

    check_judge(node)
    steps, bs, width = int(node.get("steps", 400)), int(node.get("batch_size", 128)), int(node.get("width", 64))
    path = judge_path(node, resolution)
    if not path.is_file():
        log.info("training the shapes judge once (%d steps, width %d), cached at %s", steps, width, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return load_or_train_judge(path, resolution=resolution, steps=steps, batch_size=bs, width=width, progress=progress)


def _requested_metrics(cfg) -> tuple[tuple[str, ...], bool]:
    m = cfg.get("metrics", "auto")
    if m is None or (isinstance(m, str) and m.lower() in ("auto", "all")):
        return ALL_METRICS, True
    if isinstance(m, str):
        m = [s.strip() for s in m.strip("[]").split(",") if s.strip()]
    return check_metrics(list(m)), False


def _no_clip_error(cfg, wanted, auto: bool, err: Exception) -> Optional[ConfigError]:
    """The error of a run that cannot go on without its CLIP (``err``: why there is none); None when the run skips
    what needs one."""
    if not auto and set(wanted) & set(CLIP_METRICS):
        return ConfigError(f"metrics {sorted(set(wanted) & set(CLIP_METRICS))} need a CLIP: {err}")
    blur_k = cfg.blur.get("candidates", 1)
    if "blur" in (cfg.get("ablations") or []) and blur_k > 1:
        return ConfigError(
            f"blur.candidates={blur_k} reranks with CLIP, and there is none: {err} (fix: blur.candidates=1, or give a CLIP)"
        )
    return None


def check_networks(cfg, wanted, auto: bool) -> None:
    """What build_suite would refuse without loading anything, refused before the protocol loads and the generator's
    checkpoints do: a misspelt metric, a missing CLIP or Inception file the run cannot skip, a bad judge setting.
    They came after the generator had been built."""
    from eval.features import resolve_weights

    e = cfg.eval
    if set(wanted) & set(INCEPTION_METRICS) and (not auto or e.get("inception_weights")):
        resolve_weights(e.get("inception_weights"))  # MissingWeightsError naming the file and the option
    problem = clip_file_problem(cfg.clip)
    required = _no_clip_error(cfg, wanted, auto, problem) if problem is not None else None
    if required is not None:
        raise required from problem
    if set(wanted) & set(JUDGE_METRICS):
        check_judge(cfg.judge)


def check_judge_protocol(wanted, auto: bool, eval_set: EvalSet) -> None:
    """Judge metrics asked for by name on a protocol without ground-truth scene attributes: a ConfigError naming the
    fix (zoo-eval checks it once the protocol has loaded, before the generator does)."""
    if not auto and set(wanted) & set(JUDGE_METRICS) and eval_set.attributes is None:
        raise ConfigError(
            f"metrics {sorted(set(wanted) & set(JUDGE_METRICS))} need ground-truth scene attributes, which only "
            f"protocol=shapes has (fix: drop them from metrics=)"
        )


def build_suite(
    cfg: DictConfig, eval_set: EvalSet, want_rerank: bool, want_diversity: bool = False
) -> tuple[MetricSuite, Any, dict[str, str]]:
    """The MetricSuite for this run, the CLIP of reranking and diversity (or None) and ``{metric or ablation: why
    skipped}``."""
    from eval.features import INCEPTION_FILENAME, InceptionFeatures
    from eval.metrics import RealStatsCache

    wanted, auto = _requested_metrics(cfg)
    skipped: dict[str, str] = {}
    e = cfg.eval
    inception = clip = judge = None
    clip_id = "clip"
    if set(wanted) & set(INCEPTION_METRICS):
        try:
            inception = InceptionFeatures(e.get("inception_weights"), device=e.get("device") or "cpu")
        except MissingWeightsError as err:
            if not auto or e.get("inception_weights"):  # asked for by name, or a file was given: an error
                raise
            why = str(err).split(" Fix:")[0].strip()
            for m in INCEPTION_METRICS:
                skipped[m] = f"{why} (fix: eval.inception_weights=/path/to/{INCEPTION_FILENAME})"
    blur_k = int(cfg.blur.get("candidates", 1)) if "blur" in (cfg.get("ablations") or []) else 1
    if set(wanted) & set(CLIP_METRICS) or want_rerank or want_diversity or blur_k > 1:
        try:
            clip, clip_id = build_clip(cfg.clip)
        except (ConfigError, MissingWeightsError) as err:
            required = _no_clip_error(cfg, wanted, auto, err)
            if required is not None:
                raise required from err
            for m in CLIP_METRICS:
                skipped[m] = f"no CLIP: {err}"
            if want_rerank:
                skipped["rerank"] = f"no CLIP: {err}"
            if want_diversity:
                skipped["diversity"] = f"no CLIP: {err}"
    if set(wanted) & set(JUDGE_METRICS):
        if eval_set.attributes is None:
            check_judge_protocol(wanted, auto, eval_set)
            for m in JUDGE_METRICS:
                skipped[m] = f"the shapes judge needs ground-truth attributes; protocol {eval_set.name} has none"
        else:
            judge = build_judge(cfg.judge, eval_set.resolution, bool(cfg.get("progress", True)))
    have = {"inception": inception, "clip": clip, "judge": judge}
    from eval.ablations import NEEDS

    metrics = [m for m in wanted if have[NEEDS[m]] is not None]
    if not metrics:
        reasons = "; ".join(f"{m}: {why}" for m, why in skipped.items())
        raise ConfigError(f"no metric can be computed on this machine ({reasons})")
    cache = RealStatsCache(Path(str(cfg.paths.cache_dir)) / "real_stats") if e.get("cache_real_stats", True) else None
    suite = MetricSuite(
        metrics,
        inception=inception,
        clip=clip if set(metrics) & set(CLIP_METRICS) else None,
        judge=judge,
        cache=cache,
        clip_id=clip_id,
        batch_size=int(e.feature_batch_size),
        kid_subsets=int(e.kid_subsets),
        kid_subset_size=int(e.kid_subset_size),
        is_splits=int(e.is_splits),
        progress=bool(cfg.get("progress", True)),
    )
    return suite, clip, skipped


# zoo-eval draws each caption's candidates itself (``candidates(captions, n)``, candidate i under seed + i) and ranks
# them with its own ``clip`` node over rerank.candidates / blur.candidates: a generator's own counts are never used
# here, nor the CLIP a DALL·E / GLIDE pipeline reranks its zoo-sample output with (its ``scorer``; unCLIP's
# clip_ckpt embeds the captions, and is used)
_COUNTS_NOT_USED = ("n_candidates", "n_keep")


def _generator_info(cfg: DictConfig, generator: Any = None) -> dict[str, Any]:
    """The generator's name, target and the ``params`` zoo-eval used; those it did not use under ``not_used``
    (results.md showed ``'clip_ckpt': None, 'n_candidates': 32`` as the DALL·E's settings while the reranking used
    clip.checkpoint and rerank.candidates)."""
    name = None
    try:
        from hydra.core.hydra_config import HydraConfig

        name = HydraConfig.get().runtime.choices.get("generator")
    except Exception:  # compose without hydra config
        pass
    params = {k: v for k, v in OmegaConf.to_container(cfg.generator, resolve=True).items() if k != "_target_"}
    unused = [k for k in params if k in _COUNTS_NOT_USED or (k == "clip_ckpt" and hasattr(generator, "scorer"))]
    info = {
        "name": name or _target(cfg.generator).rsplit(".", 1)[-1],
        "target": _target(cfg.generator),
        "params": {k: v for k, v in params.items() if k not in unused},
    }
    if unused:
        info["not_used"] = {k: params[k] for k in unused}
    return info


def _ranking_info(cfg: DictConfig, results: dict[str, Any]) -> Optional[dict[str, Any]]:
    """What ranked the candidates the reported images were picked from (None when nothing was ranked): zoo-eval's
    CLIP (its ``clip`` node and cache id) and the counts, rerank.candidates and blur.candidates."""
    counts: dict[str, Any] = {}
    if results.get("rerank"):
        counts["rerank.candidates"] = [int(n) for n in cfg.rerank.candidates]
    if results.get("blur") and int(results.get("blur_candidates", 1)) > 1:
        counts["blur.candidates"] = int(results["blur_candidates"])
    if not counts:
        return None
    node = cfg.clip
    given = {f"clip.{k}": node.get(k) for k in ("checkpoint", "arch", "pretrained") if node.get(k)}
    return {"clip": given, "clip_id": results.get("clip"), **counts}


def _training_info(params: dict[str, Any]) -> dict[str, Any]:
    """For each ``*_ckpt`` generator parameter naming a file of a zoo-train run (``<run>/checkpoints/x.ckpt``):
    the run directory and what its ``metrics.json`` recorded about the training (step count, and ``cpu`` when the
    run wrote one), so a leaderboard row says how much training it stands for."""
    import json

    out: dict[str, Any] = {}
    for key, value in params.items():
        if not key.endswith("_ckpt") or not isinstance(value, str) or not Path(value).is_file():
            continue
        run_dir = Path(value).resolve().parent.parent
        info: dict[str, Any] = {"checkpoint": value, "run_dir": str(run_dir)}
        try:
            metrics = json.loads((run_dir / "metrics.json").read_text())
        except (OSError, ValueError):  # no metrics.json (a converted or copied checkpoint): the path is all we know
            metrics = {}
        for k in ("global_step", "cpu", "train_minutes", "threads"):
            if k in metrics:
                info[k] = metrics[k]
        out[key.removesuffix("_ckpt")] = info
    return out


def _sampling(timing: dict[str, Any], batch_size: int, what: str) -> dict[str, Any]:
    images, seconds = int(timing.get("images", 0)), float(timing.get("seconds", 0.0))
    return {
        "images": images,
        "seconds": seconds,
        "sec_per_image": seconds / images if images else None,
        "batch_size": batch_size,
        "what": what,
    }


def _save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> Path:
    from torchvision.utils import save_image

    save_image((images[:64].float() + 1) / 2, str(path), nrow=nrow, padding=1)
    return path


# ------------------------------------------------------------------------------------------------ the run
def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the protocol and ablations of ``cfg``; write the reports into ``cfg.paths.output_dir``; return results."""
    from eval.report import group_skipped, log_to_wandb, write_report
    from zoo.models.clip.scorer import CLIP_SCORE_CONVENTION

    t_start = time.perf_counter()
    out_dir = Path(str(cfg.paths.output_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    # a word (progress=no, eval.cache_real_stats=off) reached bool() as a string, which read it as true
    progress = check_switch("progress", cfg.get("progress", True))
    check_switch("eval.cache_real_stats", cfg.eval.get("cache_real_stats", True))
    ablations = [str(a) for a in (cfg.get("ablations") or [])]
    unknown = [a for a in ablations if a not in ABLATIONS]
    if unknown or not ablations:
        what = f"unknown ablations {unknown}" if unknown else "no ablation to run (ablations is empty)"
        raise ConfigError(
            f"{what}; choose from {list(ABLATIONS)} (fix: ablations=[blur,rerank] or ablations=[blur,diversity])"
        )
    if "diversity" in ablations:
        check_diversity(cfg.diversity.captions, cfg.diversity.samples, cfg.diversity.batch_size)
    ev = cfg.eval  # before the protocol loads, the judge trains or anything is generated
    check_suite_options(ev.feature_batch_size, ev.is_splits, ev.kid_subsets, ev.kid_subset_size)
    # The ablations' own checks (eval.ablations), named by zoo-eval's options, run here before the protocol loads,
    # the judge trains or anything is generated: they used to refuse a bad value only when the ablation ran.
    check_whole("batch_size", cfg.batch_size, 1, 32)
    check_whole("rerank.batch_size", cfg.rerank.batch_size, 1, 8)
    if "blur" in ablations:
        check_whole("blur.candidates", cfg.blur.get("candidates", 1), 1, 1)
        check_radii(cfg.blur.radii)
    if "rerank" in ablations:
        check_candidates(cfg.rerank.candidates)
        check_blur_radius(cfg.rerank.get("blur_radius", 0) or 0)
    check_networks(cfg, *_requested_metrics(cfg))
    from zoo.errors import check_device

    for section in ("eval", "clip", "generator"):  # before the protocol loads (30,000 COCO headers) or any model
        node = cfg.get(section)
        if node is not None and hasattr(node, "get"):
            check_device(node.get("device"), f"{section}.device")
    seed = check_whole("seed", cfg.get("seed", 0), fix=0)  # int() took 1.5 for 1
    torch.manual_seed(seed)  # anything random outside the generator's own seeding (e.g. a random-init test CLIP)

    protocol = build_protocol(cfg.protocol)
    eval_set = protocol.load(progress)
    # the kernels against the resolution the protocol has set, before any model loads
    radii = check_radii(cfg.blur.radii, eval_set.resolution) if "blur" in ablations else []
    rerank_radius = (
        check_blur_radius(cfg.rerank.get("blur_radius", 0) or 0, eval_set.resolution) if "rerank" in ablations else 0.0
    )
    check_judge_protocol(*_requested_metrics(cfg), eval_set)  # not after the generator's checkpoints have loaded
    generator = build_generator(cfg.generator, eval_set)
    suite, clip, skipped = build_suite(
        cfg, eval_set, want_rerank="rerank" in ablations, want_diversity="diversity" in ablations
    )
    log.info(
        "protocol %s (%d captions at %d px); metrics %s; skipped %s",
        eval_set.name,
        len(eval_set),
        eval_set.resolution,
        list(suite.metrics),
        sorted(skipped),
    )

    from zoo.precision import describe_cpu

    generator_info = _generator_info(cfg, generator)
    results: dict[str, Any] = {
        "task_name": cfg.get("task_name"),
        "protocol": eval_set.describe(),
        "generator": generator_info,
        "training": _training_info(generator_info["params"]),
        "cpu": describe_cpu(),  # the machine sec_per_image was measured on
        "metrics": list(suite.metrics),
        "clip": suite.clip_id if clip is not None else None,
        # which Inception weights scored FID / KID / IS (file name and full sha256): the leaderboard flags rows
        # scored with other weights, as it does for other CLIPs and judges
        "inception": suite.inception.weights_identity if set(suite.metrics) & set(INCEPTION_METRICS) else None,
        "skipped": skipped,
        "conventions": {},  # filled below with the conventions of the numbers this run reports, and no others
        "seed": seed,
        "timing_s": {},
        "sampling": {},  # per ablation: seconds inside the generator's calls and images drawn (metrics excluded)
        "notes": [],
    }
    # what the numbers are read with: FD_CLIP depends on the CLIP, the judge's metrics on the judge (width and steps)
    conventions = results["conventions"]
    rerank_blur = "rerank" in ablations and rerank_radius != 0
    if "blur" in ablations or rerank_blur:
        conventions["blur radius"] = (
            "Gaussian standard deviation in pixels at the evaluation resolution (Pillow's GaussianBlur reading), "
            "applied to real and generated images"
        )
    if "clip_score" in suite.metrics:
        conventions["CLIP score"] = CLIP_SCORE_CONVENTION
    if set(suite.metrics) & set(INCEPTION_METRICS):  # a run without Inception weights skips them: no convention
        conventions["FID/KID/IS"] = (
            "torch-fidelity's Inception and statistics (uint8 rounding, TF1 bilinear resize to 299); IS and KID "
            f"subset sizes lowered to the number of images when fewer; weights {results['inception']['file']} "
            f"(sha256 {results['inception']['sha256']}): compare only runs scored with the same weights"
        )
    if "fd_clip" in suite.metrics:
        conventions["FD_CLIP"] = (
            f"Fréchet distance between the unit-norm image embeddings ({results['clip']}) of the generated and the "
            f"real images; compare only runs scored with the same CLIP"
        )
    if set(suite.metrics) & set(JUDGE_METRICS):
        j = cfg.judge
        conventions["judge"] = (
            f"prompt fidelity = share of images whose objects, colours, sizes, cells and background all match the "
            f"caption; attribute accuracy = mean of the per-attribute accuracies; read by the shapes judge "
            f"{judge_path(j, eval_set.resolution).name} (width {int(j.get('width', 64))}, {int(j.get('steps', 400))} "
            f"steps; the README's tables: width 64, 400 steps): compare only runs read by the same judge"
        )
    banks: dict[int, Any] = {}
    if "rerank" in ablations and "rerank" not in skipped:
        t = time.perf_counter()
        gen_time: dict[str, Any] = {}
        rows, banks = rerank_ablation(
            generator,
            eval_set,
            suite,
            clip,
            list(cfg.rerank.candidates),
            batch_size=int(cfg.rerank.batch_size),
            seed=seed,
            blur_radius=rerank_radius,
            progress=progress,
            timing=gen_time,
        )
        results["sampling"]["rerank"] = _sampling(
            gen_time, int(cfg.rerank.batch_size), f"{max(banks)} candidates per caption, all drawn images counted"
        )
        results["rerank"] = rows
        results["timing_s"]["rerank"] = round(time.perf_counter() - t, 1)
        if set(suite.metrics) & set(CLIP_METRICS):
            results["notes"].append(
                "The reranking CLIP is also the CLIP of clip_score/fd_clip, so CLIP score rises "
                "with reranking by construction; prompt fidelity (shapes judge) and FID are the "
                "independent readings."
            )
        n_max = max(banks)
        _save_grid(banks[n_max].tensor()[:64], out_dir / f"samples_rerank_n{n_max}.png")
    if "blur" in ablations:
        t = time.perf_counter()
        k = int(cfg.blur.get("candidates", 1))
        if k in banks:  # the rerank ablation already kept these images (same seeds)
            fakes = banks[k]
        elif k == 1:  # candidate 0 under the seed: no CLIP needed
            t_gen = time.perf_counter()  # generate_images is generation + a resize: no metric inside
            fakes = generate_images(
                generator, eval_set.captions, int(cfg.batch_size), eval_set.resolution, seed, progress
            )
            gen_time = {"seconds": time.perf_counter() - t_gen, "images": len(fakes)}
            results["sampling"]["blur"] = _sampling(gen_time, int(cfg.batch_size), "1 image per caption")
        else:  # k > 1: build_suite built the CLIP or raised
            gen_time = {}
            fakes = rerank_select(
                generator, eval_set, clip, [k], int(cfg.rerank.batch_size), seed, progress, timing=gen_time
            )[0][k]
            results["sampling"]["blur"] = _sampling(
                gen_time, int(cfg.rerank.batch_size), f"{k} candidates per caption, all drawn images counted"
            )
        results["blur_candidates"] = k
        results["blur"] = blur_ablation(fakes, eval_set, suite, radii, progress)
        results["timing_s"]["blur"] = round(time.perf_counter() - t, 1)
        _save_grid(fakes.tensor()[:64], out_dir / "samples.png")
    if "diversity" in ablations and "diversity" not in skipped:
        t = time.perf_counter()
        d, gen_time = cfg.diversity, {}
        results["diversity"] = diversity_ablation(
            generator,
            eval_set,
            clip,
            captions=int(d.captions),
            samples=int(d.samples),
            batch_size=int(d.batch_size),
            seed=seed,
            judge=suite.judge,
            progress=progress,
            timing=gen_time,
        )
        results["sampling"]["diversity"] = _sampling(
            gen_time, int(d.batch_size), f"{int(d.samples)} samples per caption"
        )
        results["timing_s"]["diversity"] = round(time.perf_counter() - t, 1)
    # The headline speed: the blur ablation's own draw (what the blur rows score) when it drew, else the first
    # ablation that did; each ablation's own number stays in results["sampling"].
    for source in ("blur", "rerank", "diversity"):
        if (results["sampling"].get(source) or {}).get("sec_per_image") is not None:
            results["sec_per_image"] = results["sampling"][source]["sec_per_image"]
            results["sec_per_image_from"] = source
            break
    results["timing_s"]["total"] = round(time.perf_counter() - t_start, 1)
    results["ranking"] = _ranking_info(cfg, results)

    paths = write_report(results, out_dir)
    # the sample grids written above, so that "wrote ..." names them and the W&B run shows them beside the plots
    paths.update({p.stem: p for p in sorted(out_dir.glob("samples*.png"))})
    wb = cfg.get("logger", {}).get("wandb") if cfg.get("logger") else None
    if wb:
        kwargs = OmegaConf.to_container(wb, resolve=True)
        # the run's whole config (generator, protocol, ablation knobs), as zoo-train logs its own: without it the
        # W&B runs of a sweep (one per guidance scale, prior, ...) cannot be told apart or filtered
        kwargs.setdefault("config", OmegaConf.to_container(cfg, resolve=True))
        Path(kwargs.get("dir") or out_dir).mkdir(parents=True, exist_ok=True)
        results["wandb_dir"] = log_to_wandb(results, paths, kwargs)
        # results.json was written before the W&B run existed; rewrite it so it says where that run is
        paths["json"].write_text(json.dumps(results, indent=2, default=str))
    print((out_dir / "results.md").read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    for names, why in group_skipped(skipped):
        log.warning("skipped %s: %s", ", ".join(names), why)
    return results


def _evaluate(cfg: DictConfig) -> None:
    torch.set_float32_matmul_precision("high")
    from zoo.nn.conv import apply_conv_backend  # conv_backend=auto: NNPACK's 3x3 convolutions on AVX2 CPUs

    apply_conv_backend(cfg.get("conv_backend", "auto"))
    evaluate(cfg)


def open_generator_keys_in_experiment_sweeps(args: list[str]) -> list[str]:
    """``generator.<key>=`` made ``++generator.<key>=`` in a multirun over ``experiment=`` rows that give no
    ``generator=`` of its own.

    Hydra composes a multirun's command line once without its sweep overrides, so before the rows' ``experiment=``
    picks their generator: ``zoo-eval -m experiment=dalle1/blur_r0,dalle1/blur_r1 generator.dalle_ckpt=<ckpt>`` (the
    rows on another DALL·E) failed on the default real_blurred generator ("Key 'dalle_ckpt' is not in struct", and
    its advice ``+generator.dalle_ckpt`` fails in every job, whose generator has the key). ``++`` sets the key in
    both; each job still composes with its row's generator (a key it lacks fails when the generator is built)."""
    multirun = any(a in ("-m", "--multirun") or a.replace(" ", "") == "hydra.mode=MULTIRUN" for a in args)
    sweeps_rows = any(a.startswith("experiment=") and "," in a for a in args)
    picks_generator = any(a.split("=", 1)[0].lstrip("+~") == "generator" for a in args)
    if not (multirun and sweeps_rows) or picks_generator:
        return args
    return ["++" + a if a.startswith("generator.") and "=" in a else a for a in args]


_hydra_main = entry_point(_evaluate, "eval", config_path="pkg://conf.eval")


def main() -> None:
    sys.argv[1:] = open_generator_keys_in_experiment_sweeps(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
