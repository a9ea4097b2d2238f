"""unCLIP upsampler report: does the diffusion upsampler beat bicubic upsampling at the high resolution?

    python -m eval.upsampler logs/unclip/upsampler_shapes_32_128/checkpoints/last.ckpt
    python -m eval.upsampler <blur ckpt> <bsr ckpt> --inputs clean blur bsr --out logs/eval/unclip/upsamplers

For ``n`` scenes of a held-out split of the shapes world (default 256 ``test`` scenes, the DataModule's
``world_seed`` 0) rendered at the upsamplers' TARGET size (every checkpoint knows its target size and scale; all
checkpoints of a run must share them), each ``--inputs`` mode makes the low-resolution image from the real one:

- ``clean`` (default): the deterministic part of the training conditioning, ``zoo.data.degradations.downsample``
  (antialiased bicubic, by the scale) -- ``BlurCorruption`` at sigma 0, and ``BSRDegradation`` with every random
  step off (its resize to the target size, bicubic, without the shuffled steps or the closing JPEG). The paper's sampling-time input is the decoder's output, NOT corrupted: the corruption is a
  training-time augmentation, so this is the input the upsamplers meet in the unCLIP chain.
- ``blur`` / ``bsr``: the training corruption itself (``zoo.data.degradations.make_corruption``, parameters drawn
  per image from a ``--seed`` CPU generator; the sigma range / BSR overrides of the first checkpoint trained with
  that corruption, else the defaults): exactly what a checkpoint trained with it was conditioned on.
- ``render``: the same scenes rendered by the world at the low resolution (what a decoder trained on low-resolution
  scenes learns to draw; needs a low side that the world renders: a multiple of 16).

and compares three kinds of high-resolution image per scene with the real one: **bicubic** upsampling
(``F.interpolate(..., mode="bicubic")`` clamped to [-1, 1], as ``UpsamplerLit.sample_grid``), each **upsampler**
(``UpsamplerLit.upsample``: DDIM, each checkpoint's default steps -- 27 for a blur stage, 15 for a BSR stage --
unless ``--steps``; x_T drawn once per scene from ``--seed``, shared by every checkpoint and input) and the **real**
image itself (the identity row: PSNR infinite, SSIM 1, FD_CLIP 0, the judge's own accuracy on real scenes).

Metrics (vs the real high-resolution images):

- **PSNR / SSIM**: ``torchmetrics.functional`` on [0, 1] floats (``data_range=1``): PSNR per image over all pixels
  and channels (``dim=(1, 2, 3)``), averaged over images; SSIM with torchmetrics' defaults (Gaussian 11 x 11,
  sigma 1.5), averaged over images. An image identical to its reference has PSNR +inf: the mean is then reported
  as ``null`` in results.json (``psnr_inf`` counts such images) and as ``inf`` in results.md. Pixel metrics reward
  the average of the plausible images (bicubic's blur) over one sharp sample: read them beside the others.
- **FD_CLIP** (``eval.metrics``): Fréchet distance of CLIP image embeddings of the set vs the real set. The CLIP
  sees its own input size (its preprocessing resizes; the demo CLIP is 32 px), so at 32 px it compares images
  shrunk back to about the low resolution: it measures little here. ``fd_clip_floor`` is the FD between the real
  set and ``n`` OTHER real scenes (the noise level of an FD over ``n`` images).
- **judge** (``eval.judge``, the zoo-eval judge cached per resolution, trained once when absent): exact prompt
  fidelity and per-attribute accuracy, run at ``--judge-resolution`` (default: the target size; a judge trained on
  scenes rendered there). By default its network reads a 48 x 48 view of its input (``ShapesJudge.CELL`` x 3)
  for any resolution, so its cost does not depend on the resolution; it sees more of the upsampled detail than a
  32 px CLIP, not all of it. ``--judge-cell 32`` (or 64) trains and uses a judge that reads a 96 (192) px view:
  edges at the high resolution, where bicubic's blur and an upsampler's sharpness differ (cached under its own
  name).

Writes ``results.json``, ``results.md`` and ``strip.png`` (8 scenes: low-res (nearest) | bicubic | upsampler(s) |
real, for the first input mode; ``strip_<mode>.png`` for the others) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from zoo.errors import ConfigError, is_number

log = logging.getLogger("zoo.eval.upsampler")

INPUTS = ("clean", "blur", "bsr", "render")
ATTRIBUTES = ("shape", "colour", "size", "position", "background", "count")  # eval.judge.attribute_accuracy's keys
STRIP_SCENES = 8


# ------------------------------------------------------------------------------------------------ paths
def default_log_dir() -> Path:
    """``conf/paths/default.yaml``'s log_dir outside Hydra: $ZOO_LOG_DIR, else ./logs."""
    return Path(os.environ.get("ZOO_LOG_DIR") or Path.cwd() / "logs")


def default_cache_dir() -> Path:
    """``conf/paths/default.yaml``'s cache_dir outside Hydra: $ZOO_CACHE_DIR, else ./.zoo_cache."""
    return Path(os.environ.get("ZOO_CACHE_DIR") or Path.cwd() / ".zoo_cache")


# ------------------------------------------------------------------------------------------------ metrics
def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] float32 (the range torchmetrics' ``data_range=1`` means)."""
    return images.float().add(1).div(2).clamp(0, 1)


def psnr_per_image(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N,) PSNR in dB of [-1, 1] images vs their references (torchmetrics, data_range 1 on [0, 1], one value per
    image over its pixels and channels); +inf where an image equals its reference."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return peak_signal_noise_ratio(
        to_unit(preds), to_unit(target), data_range=1.0, reduction="none", dim=(1, 2, 3)
    ).reshape(-1)


def ssim(preds: torch.Tensor, target: torch.Tensor, batch_size: int = 64) -> float:
    """Mean SSIM of [-1, 1] images vs their references (torchmetrics' defaults on [0, 1], data_range 1), computed in
    chunks of ``batch_size`` images (the mean over images does not depend on the chunking)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    total = 0.0
    for i in range(0, len(preds), batch_size):
        p, t = to_unit(preds[i : i + batch_size]), to_unit(target[i : i + batch_size])
        total += float(structural_similarity_index_measure(p, t, data_range=1.0, reduction="none").double().sum())
    return total / len(preds)


def pixel_metrics(preds: torch.Tensor, target: torch.Tensor) -> dict[str, Any]:
    """``psnr`` (mean over images; None when an image is identical to its reference: the mean is +inf), ``psnr_inf``
    (how many such images), ``psnr_finite`` (mean over the other images; None if none) and ``ssim``."""
    p = psnr_per_image(preds, target).double()
    inf = torch.isinf(p)
    finite = p[~inf]
    return {
        "psnr": None if inf.any() else float(p.mean()),
        "psnr_inf": int(inf.sum()),
        "psnr_finite": float(finite.mean()) if len(finite) else None,
        "ssim": ssim(preds, target),
    }


def judge_metrics(judge, images: torch.Tensor, truth: Sequence[dict], resolution: int, batch_size: int = 256):
    """Exact prompt fidelity and per-attribute accuracy (``eval.judge``) of images read at ``resolution`` (an
    antialiased resize first when the images are another size: ``eval.eval_set.resize_for_eval``)."""
    from eval.eval_set import resize_for_eval
    from eval.judge import attribute_accuracy, prompt_fidelity

    read = []
    for i in range(0, len(images), batch_size):
        read += judge.read(resize_for_eval(images[i : i + batch_size].float(), resolution))
    out = {"prompt_fidelity": prompt_fidelity(read, truth)}
    acc = attribute_accuracy(read, truth)
    parts = ("shape", "colour", "size", "position", "background")  # zoo-eval's attribute_accuracy (eval.ablations)
    out["attribute_accuracy"] = sum(acc[k] for k in parts) / len(parts)
    out.update({f"attr_{k}": acc[k] for k in ATTRIBUTES})
    return out


# ------------------------------------------------------------------------------------------------ inputs
def render_scenes(split: str, n: int, resolution: int, world_seed: int = 0, offset: int = 0, progress: bool = False):
    """(images (n, 3, R, R) in [-1, 1], attributes, captions) of scenes offset..offset+n-1 of ``split``: the shapes
    world's scenes are a pure function of (world_seed, split, index), the same at every resolution."""
    from zoo.data.shapes import ShapesDataset
    from zoo.progress import track

    ds = ShapesDataset(split, size=offset + n, resolution=resolution, seed=world_seed)
    images, attributes, captions = [], [], []
    for i in track(range(offset, offset + n), desc=f"render {resolution} px scenes", disable=not progress, leave=False):
        s = ds[i]
        images.append(s["image"])
        attributes.append(s["attributes"])
        captions.append(s["caption"])
    return torch.stack(images), attributes, captions


def _corruption_kwargs(lits: Sequence, kind: str) -> dict[str, Any]:
    """The corruption parameters of the first checkpoint trained with ``kind`` (else the defaults)."""
    for lit in lits:
        if lit.cfg.corruption == kind:
            hp = lit.hparams
            return {"blur_sigma_range": tuple(hp.blur_sigma_range), "bsr": dict(hp.bsr or {})}
    return {}


def low_res_inputs(
    mode: str,
    real: torch.Tensor,
    scale: int,
    lits: Sequence,
    seed: int = 0,
    split: str = "test",
    world_seed: int = 0,
) -> tuple[torch.Tensor, str]:
    """(low-resolution images (N, 3, H / scale, W / scale), a one-line description) for ``--inputs`` ``mode``."""
    from zoo.data.degradations import downsample, make_corruption

    if mode == "clean":
        return downsample(real.float(), scale, "bicubic"), (
            f"antialiased bicubic downsampling x1/{scale} (the training corruption's resize without its random "
            f"part; the paper's sampling-time input, the decoder's output, is not corrupted)"
        )
    if mode in ("blur", "bsr"):
        kw = _corruption_kwargs(lits, mode)
        corruption = make_corruption(mode, scale, **kw)
        low = corruption(real.float(), torch.Generator().manual_seed(int(seed)))
        what = repr(corruption) if mode == "blur" else f"BSRDegradation(scale={scale}, {kw.get('bsr') or 'defaults'})"
        return low, f"the training corruption {what}, parameters drawn per image (seed {seed})"
    if mode == "render":
        side = real.shape[-1] // scale
        _check_side(side, f"--inputs render (the upsamplers' low side is {side} px)", "--inputs clean")
        low, _, _ = render_scenes(split, len(real), side, world_seed)
        return low, f"the same scenes rendered by the shapes world at {side} px"
    raise ConfigError(f"unknown input mode {mode!r}; choose from {', '.join(INPUTS)}")


def _check_side(side: int, what: str, fix: str) -> None:
    """A ConfigError naming ``what`` and ``fix`` unless the shapes world renders ``side`` px scenes (zoo.data.shapes'
    own message names data.resolution, an option this command does not have)."""
    from zoo.data.shapes import check_resolution

    try:
        check_resolution(side)
    except ValueError:
        raise ConfigError(
            f"{what}: the shapes world renders only sides that are multiples of 16 (>= 16), not {side} (fix: {fix})"
        ) from None


def bicubic_upsample(low: torch.Tensor, size: int) -> torch.Tensor:
    """The baseline: bicubic interpolation to ``size`` (align_corners False), overshoot clamped to [-1, 1]; the same
    function as a residual upsampler's base (``UpsamplerLit.bicubic_base``)."""
    from zoo.models.upsampler.lit import UpsamplerLit

    return UpsamplerLit.bicubic_base(low, (size, size))


@torch.no_grad()
def run_upsampler(
    lit,
    low: torch.Tensor,
    x_T: torch.Tensor,
    steps: Optional[int] = None,
    eta: Optional[float] = None,
    batch_size: int = 16,
    seed: int = 0,
    bf16: bool = False,
    progress: bool = False,
    desc: str = "upsample",
    tile=None,
    tile_overlap: Optional[int] = None,
) -> tuple[torch.Tensor, float]:
    """(upsampled images (N, 3, S, S), seconds per image). ``x_T`` (N, 3, S, S) is the DDIM start of each image, so
    with eta 0 an image does not depend on the batch size; eta > 0 draws batch i's noise from seed + 1 + i."""
    from zoo.progress import track

    out = []
    t0 = time.perf_counter()
    with track(total=len(low), desc=desc, unit="img", disable=not progress) as bar:
        for b, i in enumerate(range(0, len(low), batch_size)):
            gen = torch.Generator(lit.device).manual_seed(int(seed) + 1 + b)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                up = lit.upsample(
                    low[i : i + batch_size],
                    steps=steps,
                    eta=eta,
                    generator=gen,
                    x_T=x_T[i : i + batch_size],
                    tile=tile,
                    tile_overlap=tile_overlap,
                )
            out.append(up.float().cpu())
            bar.update(len(out[-1]))
    return torch.cat(out), (time.perf_counter() - t0) / max(len(low), 1)


# ------------------------------------------------------------------------------------------------ loading
def load_upsampler(path: str):
    from zoo.checkpoint import load_module, peek_checkpoint

    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(
            f"upsampler checkpoint not found: {path} (fix: zoo-train experiment=unclip/upsampler_shapes_32_128, "
            f"then pass <run>/checkpoints/last.ckpt)"
        )
    # ema=True: the pipelines' rule (the average once it has started, else the trained weights); the stored
    # state_dict of a file saved before the EMA's first update is the initial, untrained network
    lit = load_module(str(p), map_location="cpu", expect=("upsampler",), ema=True)
    step = peek_checkpoint(p).get("global_step")  # memory-mapped: the weights were read whole for its step again
    return lit.eval(), (int(step) if step is not None else None)


def checkpoint_label(path: str, lit, taken: set) -> str:
    """``<corruption>: <run dir name>`` (``.../<run>/checkpoints/last.ckpt``), made unique."""
    p = Path(path)
    run = p.parent.parent.name if p.parent.name == "checkpoints" else p.stem
    label = f"upsampler ({lit.cfg.corruption}, {run})"
    base, k = label, 2
    while label in taken:
        label, k = f"{base} #{k}", k + 1
    taken.add(label)
    return label


def judge_path(judge_dir: Path, resolution: int, steps: int, batch_size: int, cell: int = 16) -> Path:
    """The file zoo-eval's ``build_judge`` caches this judge in (same name: one judge per resolution, and per
    version of the judge's code); a judge with finer cells (``cell`` > 16) gets its own name."""
    from eval.judge import judge_file_name

    return Path(judge_dir) / judge_file_name(resolution, steps, batch_size, cell=cell)


def load_judge(judge_dir: Path, resolution: int, steps: int, batch_size: int, progress: bool, cell: int = 16):
    from eval.judge import ShapesJudge, load_or_train_judge

    try:
        ShapesJudge.halvings(cell)
    except ValueError:
        raise ConfigError(f"--judge-cell {cell}: must be 16 times a power of two (16, the default, 32 or 64)") from None
    path = judge_path(judge_dir, resolution, steps, batch_size, cell)
    if not path.is_file():
        log.info(
            "training the shapes judge once at %d px (%d steps, %d px view), cached at %s",
            resolution,
            steps,
            3 * cell,
            path,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    judge = load_or_train_judge(
        path,
        resolution=resolution,
        dir_option="--judge-dir",
        steps=steps,
        batch_size=batch_size,
        progress=progress,
        cell=cell,
    )
    return judge, path


def load_clip(path: Optional[str]):
    """(ClipScorer, its checkpoint) or (None, None) for ``--clip none``."""
    if path is None or str(path).lower() in ("none", "null", ""):
        return None, None
    if not Path(path).expanduser().is_file():
        raise ConfigError(
            f"CLIP checkpoint not found: {path} (fix: --clip <zoo-train model=clip last.ckpt> (make demo's is "
            f"logs/demo/clip/checkpoints/last.ckpt), or --clip none to skip FD_CLIP)"
        )
    from zoo.models.clip.scorer import ClipScorer

    return ClipScorer.from_lightning_checkpoint(str(path)), str(path)


# ------------------------------------------------------------------------------------------------ the report
def upsampler_report(
    checkpoints: Sequence[str],
    out: Optional[str] = None,
    n: int = 256,
    split: str = "test",
    world_seed: int = 0,
    inputs: Sequence[str] = ("clean",),
    steps: Optional[int] = None,
    eta: Optional[float] = None,
    batch_size: int = 16,
    seed: int = 0,
    clip: Optional[str] = "default",
    judge: bool = True,
    judge_dir: Optional[str] = None,
    judge_steps: int = 400,
    judge_batch_size: int = 128,
    judge_resolution: Optional[int] = None,
    judge_cell: int = 16,
    floor: bool = True,
    bf16: bool = False,
    progress: bool = True,
    tiles: Sequence = (None,),
    tile_overlap: Optional[int] = None,
) -> dict[str, Any]:
    """Run the comparison (module docstring) and write results.json, results.md and the strip(s) into ``out``
    (default ``<log dir>/eval/unclip/upsampler/<first checkpoint's run name>``). Returns the results."""
    from eval.metrics import clip_features, frechet_distance
    from zoo.precision import describe_cpu, warn_if_emulated_bf16

    if not checkpoints:
        raise ConfigError("no upsampler checkpoint given (fix: python -m eval.upsampler <run>/checkpoints/last.ckpt)")
    if int(n) < 2:
        raise ConfigError(f"--n must be >= 2 (FD_CLIP fits Gaussians), got {n}")
    inputs = list(dict.fromkeys(inputs))
    bad = [m for m in inputs if m not in INPUTS]
    if bad or not inputs:
        raise ConfigError(f"--inputs {bad or '(none)'}: choose from {', '.join(INPUTS)}")
    # options that failed only once the work was under way (a ValueError from range() or the sampler after the
    # judge had trained): checked before anything loads
    if int(batch_size) < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if steps is not None and int(steps) < 1:
        raise ConfigError(f"--steps must be >= 1 (or left out: each checkpoint's own), got {steps}")
    if eta is not None and not is_number(eta, 0):  # nan passed "< 0" and ran
        raise ConfigError(f"--eta must be a finite number >= 0 (0: deterministic DDIM), got {eta}")
    if judge and judge_resolution is not None:
        _check_side(int(judge_resolution), "--judge-resolution", "drop --judge-resolution: the target size")
    if bf16:  # an explicit option (the documented commands were measured on a CPU with native bf16): said up front
        warn_if_emulated_bf16("--bf16", "drop --bf16: fp32")
    t_start = time.perf_counter()

    # -- the upsamplers: one target size and scale
    lits, steps_done = [], []
    for path in checkpoints:
        lit, step = load_upsampler(path)
        lits.append(lit)
        steps_done.append(step)
    sizes = {(lit.cfg.image_size, lit.cfg.scale) for lit in lits}
    if len(sizes) > 1:
        raise ConfigError(
            f"the checkpoints disagree on (target size, scale): {sorted(sizes)} (fix: one report per stage)"
        )
    high, scale = sizes.pop()
    low_side = high // scale
    if "render" in inputs:  # checked here, not when the render mode's turn came after the other modes had sampled
        _check_side(low_side, f"--inputs render (the upsamplers' low side is {low_side} px)", "--inputs clean")
    taken: set = set()
    labels = [checkpoint_label(p, lit, taken) for p, lit in zip(checkpoints, lits)]
    # sampling variants: each checkpoint once per --tile value (None: its own sample_tile; 0: the whole image)
    try:
        tiles = [None if t in (None, "default") else (t if t == "train_crop" else int(t)) for t in (tiles or [None])]
    except ValueError:
        raise ConfigError(f"--tile {list(tiles)}: each must be default, 0, train_crop or a side in px") from None
    variants = []  # (checkpoint index, tile, row label)
    for i, lit in enumerate(lits):
        for tile in dict.fromkeys(tiles):
            w = lit.sampling_windows(tile, tile_overlap)
            how = "whole image" if w is None else f"{w[0]} px tiles, overlap {w[1]}"
            variants.append((i, tile, labels[i] if len(tiles) == 1 and tile is None else f"{labels[i]}, {how}"))
    if out is None:
        first = Path(checkpoints[0])
        run = first.parent.parent.name if first.parent.name == "checkpoints" else first.stem
        out = default_log_dir() / "eval" / "unclip" / "upsampler" / run
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)

    # -- metric networks
    scorer, clip_path = load_clip(
        str(default_log_dir() / "demo" / "clip" / "checkpoints" / "last.ckpt") if clip == "default" else clip
    )
    judge_net = judge_file = None
    j_res = int(judge_resolution or high)
    if judge:
        judge_net, judge_file = load_judge(
            Path(judge_dir) if judge_dir else default_cache_dir() / "judge",
            j_res,
            judge_steps,
            judge_batch_size,
            progress,
            int(judge_cell),
        )

    # -- the real scenes and the shared DDIM starts
    real, truth, captions = render_scenes(split, n, high, world_seed, progress=progress)
    x_T = torch.randn(real.shape, generator=torch.Generator().manual_seed(int(seed)))
    real_feats = clip_features(scorer, real) if scorer is not None else None

    def score(images: torch.Tensor) -> dict[str, Any]:
        m = pixel_metrics(images, real)
        if scorer is not None:
            m["fd_clip"] = frechet_distance(clip_features(scorer, images), real_feats)
        if judge_net is not None:
            m.update(judge_metrics(judge_net, images, truth, j_res))
        return m

    real_row = {"method": "real", "label": "real (identity)", **score(real)}
    floor_fd = None
    if floor and scorer is not None:
        other, _, _ = render_scenes(split, n, high, world_seed, offset=n)
        floor_fd = frechet_distance(clip_features(scorer, other), real_feats)

    tables: dict[str, Any] = {}
    for k, mode in enumerate(inputs):
        low, how = low_res_inputs(mode, real, scale, lits, seed, split, world_seed)
        bic = bicubic_upsample(low, high)
        rows = [{"method": "bicubic", "label": "bicubic", **score(bic)}]
        ups = []
        for i, tile, label in variants:
            lit = lits[i]
            up, spi = run_upsampler(
                lit,
                low,
                x_T,
                steps,
                eta,
                batch_size,
                seed,
                bf16,
                progress,
                desc=f"{label} on {mode} inputs",
                tile=tile,
                tile_overlap=tile_overlap,
            )
            ups.append(up)
            rows.append({"method": "upsampler", "label": label, **score(up), "sec_per_image": spi})
        rows.append(real_row)
        tables[mode] = {"low_res": how, "rows": rows, "checks": checks(rows)}
        strip = out_dir / ("strip.png" if k == 0 else f"strip_{mode}.png")
        write_strip(low, bic, ups, real, strip)
        tables[mode]["strip"] = strip.name

    results = {
        "what": "unCLIP upsampler vs bicubic vs real (eval/upsampler.py)",
        "data": {
            "world": "shapes",
            "split": split,
            "n": int(n),
            "world_seed": int(world_seed),
            "high_resolution": high,
            "low_resolution": low_side,
            "scale": scale,
        },
        "sampling": {
            "steps": steps,
            "eta": eta,
            "seed": int(seed),
            "batch_size": int(batch_size),
            "bf16": bool(bf16),
            "tiles": [str(t) for t in dict.fromkeys(tiles)],
            "tile_overlap": tile_overlap,
        },
        "checkpoints": [
            {
                "label": label,
                "path": str(p),
                "corruption": lit.cfg.corruption,
                "sample_steps": int(lit.sample_steps if steps is None else steps),
                "eta": float(lit.hparams.eta if eta is None else eta),
                "global_step": step,
                "n_params": lit.n_params,
            }
            for p, lit, label, step in zip(checkpoints, lits, labels, steps_done)
        ],
        "clip": None
        if scorer is None
        else {"checkpoint": clip_path, "image_size": scorer.image_size, "fd_clip_floor": floor_fd},
        "judge": None
        if judge_net is None
        else {"path": str(judge_file), "resolution": j_res, "input_side": 3 * judge_net.cell},
        "inputs": tables,
        "cpu": describe_cpu(),  # the machine sec_per_image was measured on
        "threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - t_start,
    }
    write_report(results, out_dir)
    return results


def checks(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per upsampler: does it beat bicubic on FD_CLIP (lower) and on the judge's prompt fidelity / attribute
    accuracy (higher)? (None where the metric was not computed.)"""
    bic = next(r for r in rows if r["method"] == "bicubic")
    out = {}
    for r in rows:
        if r["method"] != "upsampler":
            continue
        c = {}
        for key, better in (("fd_clip", -1), ("prompt_fidelity", 1), ("attribute_accuracy", 1), ("ssim", 1)):
            if key in r and key in bic and r[key] is not None and bic[key] is not None:
                c[f"beats_bicubic_{key}"] = bool(better * (r[key] - bic[key]) > 0)
        if r.get("psnr") is not None and bic.get("psnr") is not None:
            c["beats_bicubic_psnr"] = bool(r["psnr"] > bic["psnr"])
        out[r["label"]] = c
    return out


# ------------------------------------------------------------------------------------------------ outputs
def write_strip(
    low: torch.Tensor, bicubic: torch.Tensor, ups: Sequence[torch.Tensor], real: torch.Tensor, path: Path
) -> Path:
    """One row per scene (the first 8): low-res (nearest-upsampled) | bicubic | each upsampler | real."""
    from torchvision.utils import save_image

    k = min(STRIP_SCENES, len(real))
    size = real.shape[-2:]
    cols = [F.interpolate(low[:k].float(), size=size, mode="nearest"), bicubic[:k], *[u[:k] for u in ups], real[:k]]
    grid = torch.stack(cols, 1).flatten(0, 1)  # (k * cols, 3, S, S), row-major
    save_image(to_unit(grid), str(path), nrow=len(cols), padding=2, pad_value=1.0)
    return path


def _fmt(v, spec: str) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and spec.format(-abs(v)) == spec.format(-0.0):
        v = 0.0  # round-off below the printed precision (an FD of identical sets): no "-0.0000"
    return spec.format(v)


MD_COLUMNS = (
    ("psnr", "PSNR (dB) ↑", "{:.2f}"),
    ("ssim", "SSIM ↑", "{:.4f}"),
    ("fd_clip", "FD_CLIP ↓", "{:.4f}"),
    ("prompt_fidelity", "prompt fidelity ↑", "{:.1%}"),
    ("attribute_accuracy", "attributes ↑", "{:.1%}"),
    *((f"attr_{a}", f"{a} ↑", "{:.1%}") for a in ATTRIBUTES),
    ("sec_per_image", "s / image", "{:.2f}"),
)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    cols = [c for c in MD_COLUMNS if any(c[0] in r for r in rows)]
    lines = ["| method | " + " | ".join(c[1] for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    for r in rows:
        cells = []
        for key, _, spec in cols:
            if key == "psnr" and r.get("psnr") is None and r.get("psnr_inf"):
                finite = r.get("psnr_finite")
                cells.append("inf" if finite is None else f"inf ({r['psnr_inf']} identical; others {finite:.2f})")
            else:
                cells.append(_fmt(r.get(key), spec))
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(results: dict[str, Any]) -> str:
    d = results["data"]
    out = [
        "# unCLIP upsampler vs bicubic (eval/upsampler.py)",
        "",
        f"Shapes world, {d['n']} `{d['split']}` scenes (world seed {d['world_seed']}), "
        f"{d['low_resolution']} -> {d['high_resolution']} px (x{d['scale']}). Every metric is against the real "
        f"{d['high_resolution']} px scene.",
        "",
    ]
    for c in results["checkpoints"]:
        out.append(
            f"- {c['label']}: `{c['path']}` (trained with {c['corruption']}; step {c['global_step']}; "
            f"{c['n_params']:,} parameters; DDIM {c['sample_steps']} steps, eta {c['eta']:g})"
        )
    clip = results["clip"]
    if clip:
        floor = clip.get("fd_clip_floor")
        out.append(
            f"- FD_CLIP: CLIP `{clip['checkpoint']}` at its own {clip['image_size']} px input (its preprocessing "
            f"resizes every image to it"
            + (", so it sees little of what an upsampler adds" if clip["image_size"] <= d["low_resolution"] else "")
            + ")"
            + (f"; floor (real vs {d['n']} other real scenes): {floor:.4f}" if floor is not None else "")
        )
    else:
        out.append("- FD_CLIP: not computed (--clip none)")
    j = results["judge"]
    if j:
        out.append(
            f"- judge: `{j['path']}` (trained on {j['resolution']} px scenes"
            + ("" if j["resolution"] == d["high_resolution"] else f"; images resized to {j['resolution']} px first")
            + f"; its network reads a {j['input_side']} px view of any input)"
        )
    else:
        out.append("- judge: not run (--no-judge)")
    out.append(
        "- PSNR / SSIM: torchmetrics.functional on [0, 1], data_range 1, per image then averaged; the real row is "
        "the identity (PSNR infinite)"
    )
    for mode, t in results["inputs"].items():
        out += [
            "",
            f"## Input: {mode}",
            "",
            f"Low-resolution input: {t['low_res']}. Strip: `{t['strip']}` "
            "(low-res nearest | bicubic | upsampler(s) | real).",
            "",
            markdown_table(t["rows"]),
            "",
        ]
        for label, c in t["checks"].items():
            if c:
                parts = (f"{k.removeprefix('beats_bicubic_')} {'yes' if v else 'no'}" for k, v in c.items())
                out.append(f"- {label} beats bicubic on: " + ", ".join(parts))
    out += ["", f"{results['seconds']:.0f} s in all, {results['threads']} threads; {results['cpu']}."]
    return "\n".join(out) + "\n"


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_report(results: dict[str, Any], out_dir: Path) -> None:
    (out_dir / "results.json").write_text(json.dumps(_json_safe(results), indent=2, allow_nan=False, default=str))
    (out_dir / "results.md").write_text(markdown_report(results))
    log.info("wrote %s/results.json, results.md, strip.png", out_dir)


# ------------------------------------------------------------------------------------------------ CLI
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m eval.upsampler",
        description="unCLIP upsampler(s) vs bicubic upsampling vs the real high-resolution scene: PSNR/SSIM, "
        "FD_CLIP, the shapes judge's accuracy; results.json, results.md, strip.png.",
    )
    ap.add_argument("checkpoints", nargs="+", metavar="CKPT", help="zoo-train model=upsampler checkpoints (one stage)")
    ap.add_argument("--out", default=None, help="output dir (default <log dir>/eval/unclip/upsampler/<run name>)")
    ap.add_argument("--n", type=int, default=256, help="scenes (default 256)")
    ap.add_argument("--split", default="test", choices=("train", "val", "test"), help="shapes split (default test)")
    ap.add_argument("--world-seed", type=int, default=0, help="the shapes world's seed (data.world_seed, default 0)")
    ap.add_argument(
        "--inputs", nargs="+", default=["clean"], choices=INPUTS, help="how the low-res input is made (default clean)"
    )
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps (default: each checkpoint's, 27 blur / 15 bsr)")
    ap.add_argument("--eta", type=float, default=None, help="DDIM eta (default: the checkpoint's, 0)")
    ap.add_argument(
        "--tile",
        nargs="+",
        default=[None],
        metavar="T",
        help="sampling windows, one row per value: default (the checkpoint's sample_tile), 0 (the whole image, the "
        "paper), train_crop, or a side in px (overlapping windows averaged each step; zoo.diffusion.tiling)",
    )
    ap.add_argument(
        "--tile-overlap",
        type=int,
        default=None,
        help="pixels shared by neighbouring windows (default: the checkpoint's, else a quarter of the window)",
    )
    ap.add_argument("--batch-size", type=int, default=16, help="images per upsampler call")
    ap.add_argument("--seed", type=int, default=0, help="x_T and corruption seed")
    ap.add_argument("--clip", default="default", help="CLIP checkpoint for FD_CLIP (default: make demo's), or none")
    ap.add_argument("--no-judge", action="store_true", help="skip the shapes judge")
    ap.add_argument("--judge-dir", default=None, help="judge cache dir (default <cache dir>/judge, as zoo-eval)")
    ap.add_argument("--judge-steps", type=int, default=400, help="judge training steps if absent (zoo-eval's 400)")
    ap.add_argument("--judge-batch-size", type=int, default=128, help="judge training batch (zoo-eval's 128)")
    ap.add_argument("--judge-resolution", type=int, default=None, help="judge resolution (default: the target size)")
    ap.add_argument(
        "--judge-cell",
        type=int,
        default=16,
        help="judge cell side: 16 (default: a 48 px view, zoo-eval's judge) or 32 / 64 (a 96 / 192 px view that "
        "sees high-resolution edges; trained once, cached under its own name)",
    )
    ap.add_argument("--no-floor", action="store_true", help="skip the FD_CLIP floor (n other real scenes)")
    ap.add_argument(
        "--bf16",
        action="store_true",
        help="bf16 autocast for the upsampler: faster on a CPU with native bf16 (AVX512-BF16 / AMX), 20-100x slower "
        "without (a warning says so)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    from zoo.config import report_user_errors

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")

    # every user error zoo's other entry points report in one line (a corrupt checkpoint or CLIP file, a missing
    # weights file...), not only ConfigError: those were tracebacks with exit 1
    @report_user_errors
    def run() -> dict[str, Any]:
        if args.threads is not None:
            if args.threads < 1:
                raise ConfigError(f"--threads must be >= 1 (or left out: torch's default), got {args.threads}")
            torch.set_num_threads(int(args.threads))
        return upsampler_report(
            args.checkpoints,
            out=args.out,
            n=args.n,
            split=args.split,
            world_seed=args.world_seed,
            inputs=args.inputs,
            steps=args.steps,
            eta=args.eta,
            batch_size=args.batch_size,
            seed=args.seed,
            clip=args.clip,
            judge=not args.no_judge,
            judge_dir=args.judge_dir,
            judge_steps=args.judge_steps,
            judge_batch_size=args.judge_batch_size,
            judge_resolution=args.judge_resolution,
            judge_cell=args.judge_cell,
            floor=not args.no_floor,
            bf16=args.bf16,
            progress=not args.no_progress,
            tiles=args.tile,
            tile_overlap=args.tile_overlap,
        )

    results = run()
    sys.stdout.write(markdown_report(results))
    return results


if __name__ == "__main__":
    main()
