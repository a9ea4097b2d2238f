"""``zoo-sample``: images from a generator (``conf/generator/``, the group ``zoo-eval`` uses) or from any
checkpoint written by ``zoo-train``.

    zoo-sample ckpt=<dalle ckpt> generator.clip_ckpt=<clip ckpt> prompts='["a red circle"]' n_keep=8
    zoo-sample generator=dalle generator.dalle_ckpt=<dalle ckpt> prompts='[...]'    # the same, long form
    zoo-sample ckpt=<tokenizer ckpt>                                             # reconstructions grid
    zoo-sample ckpt=<dalle ckpt> prompts='[]'                                    # val images | samples of their captions

With prompts, the generator makes ``n_keep`` images per prompt, best first (``zoo.pipelines.base.keep_best``: the
DALL·E pipeline draws ``generator.n_candidates`` and keeps the CLIP-best when it has ``generator.clip_ckpt``), written
as a grid PNG per prompt plus the individual images (``<prompt>-<hash>/NN.png``) and their scores in
``samples.json``. ``ckpt=<file>`` is the short form: the file's registered component (read with the safe loader)
names the generator option and the argument the file fills (``zoo.pipelines.base.CHECKPOINT_GENERATORS``; dalle ->
``generator=dalle``, ``generator.dalle_ckpt=<file>``), chosen on the command line before Hydra composes, so the
``generator.<key>`` options of that generator can be given with it (``short_form_generator``). A checkpoint of a component that is not a text-to-image
generator (the image tokenizers), or any checkpoint without prompts, gives the model's own sample grid on a
validation batch of the data it was trained on (``zoo.pipelines.grid``). A prior's file (``diffusion_prior``,
``ar_prior``) is unCLIP's ``generator.prior_ckpt``; a component that draws no images at all (CLIP, the noised CLIP,
the captioner, the prompt upsampler) is an error that says what it is for (``NOT_IMAGE_MODELS``). Everything is
written under ``out_dir`` (the run directory by default), with ``sample_run.json``: the seed, the generator's options
and each checkpoint's path and content digest (``write_run_record``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, open_dict

from zoo.config import entry_point, with_article
from zoo.errors import ConfigError, check_switch, check_whole

log = logging.getLogger("zoo.sample")


def _slug(text: str, n: int = 60) -> str:
    """A file-name stem for a prompt: readable words plus the first 8 hex digits of the SHA-1 of the exact prompt,
    so prompts that read alike ("a red circle" / "A red circle!", "" / "   ") never share a file."""
    import hashlib

    keep = "".join(c if c.isalnum() else "_" for c in text.lower())
    words = "_".join(filter(None, keep.split("_")))[:n] or "prompt"
    return f"{words}-{hashlib.sha1(text.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def _output_names(prompts) -> list[tuple[str, str]]:
    """(samples.json key, file stem) per prompt, all distinct: a prompt given again gets " #2", "-2" (and so on)."""
    keys: set[str] = set()
    stems: set[str] = set()
    out = []
    for prompt in prompts:
        key, stem, k = prompt, _slug(prompt), 1
        while key in keys or stem in stems:
            k += 1
            key, stem = f"{prompt} #{k}", f"{_slug(prompt)}-{k}"
        keys.add(key)
        stems.add(stem)
        out.append((key, stem))
    return out


def save_grid(images, path, nrow: int, scale: int = 1) -> None:
    """A grid PNG of ``images`` in [-1, 1] (the models' range). ``scale`` > 1 enlarges each pixel to scale x scale (nearest), so that
    32-64 px samples are readable on a screen without a viewer's smoothing blurring the shapes away."""
    import torch.nn.functional as F
    from torchvision.utils import save_image

    images = images.detach().float().clamp(-1, 1).add(1).div(2)
    scale = int(scale)
    if scale < 1:
        raise ConfigError(f"grid_scale must be an integer >= 1, got {scale} (fix: grid_scale=1 for native size)")
    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    save_image(images, path, nrow=nrow, padding=2 * scale, pad_value=0.5)  # grey: backgrounds may be black or white


# Keys zoo-sample had before the shared generator group: an old command is told the new name instead of silently
# meaning something else (top_k is the logit filter everywhere else).
RENAMED = {
    "top_k": "n_keep (the number of reranked images kept; the logit filter is generator.top_k)",
    "n_per_prompt": "n_keep",
    "sample_top_k": "generator.top_k",
    **{
        k: f"generator.{k}"
        for k in ("clip_ckpt", "n_candidates", "top_p", "temperature", "guidance_scale", "batch_size")
    },
}


def check_renamed(cfg: DictConfig) -> None:
    used = [k for k in RENAMED if cfg.get(k) is not None]
    if used:
        fixes = "; ".join(f"{k}= -> {RENAMED[k]}" for k in used)
        raise ConfigError(f"zoo-sample option{'s' if len(used) > 1 else ''} renamed: {fixes}")


# Components that draw no images, text-conditioned or not: zoo-sample says what each is for instead of promising a
# sample grid it cannot make.
NOT_IMAGE_MODELS = {
    "clip": "it scores images against captions: generator.clip_ckpt=<it> reranks a generator's samples; zoo-embed "
    "and zoo-eval use it too",
    "noised_clip": "it guides GLIDE's sampling: generator=glide generator.glide_ckpt=<glide ckpt> "
    "generator.noised_clip_ckpt=<it> generator.clip_guidance_scale=<s>",
    "captioner": "it writes captions for images: zoo-recaption ckpt=<it>",
    "prompt_upsampler": "it rewrites prompts before a generator draws them: generator.prompt_upsampler=<it> with "
    "generator=dalle, glide or unclip and that generator's checkpoints",
}


def _has_sample_grid(component: str) -> bool:
    from zoo.registry import component_class

    return callable(getattr(component_class(component), "sample_grid", None))


def checkpoint_component(ckpt: str) -> str:
    """The registered component name a checkpoint file says it holds (weights_only; nothing the file names is used).
    Memory-mapped: the whole file was read for its name (a paper DALL·E's GBs) before the generator read it again."""
    from zoo.checkpoint import peek_checkpoint
    from zoo.registry import component_in

    return component_in(peek_checkpoint(ckpt), str(ckpt))


def read_prompts_file(path: str) -> list[str]:
    """``prompts_file=<file>``: one prompt per line, blank lines and lines starting with ``#`` skipped (UTF-8; a
    leading byte-order mark, as Windows Notepad writes, is dropped: it is not whitespace, so it stayed glued to the
    first prompt, or made a first ``# comment`` line a prompt)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"prompts_file={path}: no such file (fix: a text file with one prompt per line)")
    try:
        lines = p.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise ConfigError(f"prompts_file={path}: not UTF-8 text ({e}) (fix: one prompt per line, UTF-8)") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ConfigError(f"prompts_file={path}: no prompts in it (one per line; # starts a comment line)")
    return prompts


# The whole-number options, their least value and the fix: checked before the generator is built. nrow and grid_scale
# were first read when the grids were saved, after all the sampling (nrow=0: ZeroDivisionError inside torchvision;
# nrow=abc: int()'s ValueError), and a word for n_keep / seed was a bare ValueError traceback.
COUNTS = {
    "n_keep": (1, 8),
    "nrow": (1, 4),
    "grid_scale": (1, "1 for native size"),
    "seed": (None, 0),
}


def check_prompts(prompts: Any) -> None:
    """Every prompt a string, before the generator is built. Hydra reads prompts=[1984] or [true] as a number / a
    bool, which reached the file naming only after every prompt was sampled ('int' object has no attribute
    'lower')."""
    from omegaconf import ListConfig

    if not isinstance(prompts, (list, ListConfig)):
        raise ConfigError(f'prompts={prompts!r}: a list of prompts (fix: prompts=\'["a red circle", "..."]\')')
    for p in prompts:
        if not isinstance(p, str):
            kind, typed = ("a bool", str(p).lower()) if isinstance(p, bool) else ("a number", p)
            raise ConfigError(
                f"prompts: {typed} is not text, Hydra read it as {kind} (fix: quote it, "
                f"prompts='[\"{typed}\"]', or put it in a prompts_file)"
            )


def check_counts(cfg: DictConfig) -> None:
    for key, (least, fix) in COUNTS.items():
        check_whole(key, cfg.get(key), least, fix)
    # switches: a word (progress=maybe, generator.use_ema=no) was read by bool() as true, without a word
    node = cfg.get("generator") or {}
    for key, value in (("progress", cfg.get("progress")), ("generator.use_ema", node.get("use_ema"))):
        if value is not None:
            check_switch(key, value)


def sample(cfg: DictConfig) -> dict[str, Any]:
    import torch

    from zoo.nn.conv import apply_conv_backend
    from zoo.pipelines.base import build_generator, checkpoint_generator

    check_renamed(cfg)
    if isinstance(cfg.prompts, str):  # prompts='a red circle' (no brackets): one prompt, not one per character
        with open_dict(cfg):
            cfg.prompts = [cfg.prompts]
    if cfg.get("prompts_file"):
        with open_dict(cfg):
            cfg.prompts = [*cfg.prompts, *read_prompts_file(str(cfg.prompts_file))]
    check_prompts(cfg.prompts)
    check_counts(cfg)
    apply_conv_backend(cfg.get("conv_backend", "auto"))  # auto: NNPACK's 3x3 convolutions on AVX2 CPUs
    if not cfg.get("ckpt") and not cfg.prompts:
        raise ConfigError(
            "nothing to sample (fix: zoo-sample ckpt=/path/to/run/checkpoints/last.ckpt, with "
            "prompts='[\"...\"]' for a text-to-image model)"
        )
    if cfg.get("ckpt"):  # a run folder was "checkpoint not found" although it exists (zoo-export names it so)
        from zoo.export import check_ckpt_path

        check_ckpt_path(Path(str(cfg.ckpt)), "zoo-sample")
    out_dir = Path(cfg.out_dir)
    taken = next((p for p in (out_dir, *out_dir.parents) if p.exists()), None)
    if taken is not None and not taken.is_dir():  # was mkdir's FileExistsError / NotADirectoryError traceback
        raise ConfigError(
            f"out_dir={cfg.out_dir}: {taken} is a file, not a folder (fix: out_dir=<a folder>; the images, a grid "
            f"per prompt and samples.json go in it)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    node = cfg.get("generator")
    if cfg.get("ckpt"):
        component = checkpoint_component(str(cfg.ckpt))
        if component in NOT_IMAGE_MODELS:
            raise ConfigError(
                f"{cfg.ckpt} is {with_article(component)} checkpoint, which draws no images "
                f"(fix: {NOT_IMAGE_MODELS[component]})"
            )
        mapped = checkpoint_generator(component)
        if cfg.prompts and mapped is None:  # an image tokenizer, a CLIP...: nothing to draw from a caption
            log.warning(
                "%s is %s checkpoint, which does not draw images from text: prompts ignored, writing its own "
                "sample grid (for text-to-image: a dalle, glide or unclip_decoder checkpoint)",
                cfg.ckpt,
                with_article(component),
            )
        if not cfg.prompts and mapped is not None and not _has_sample_grid(component):
            option, key = mapped  # a prior: its samples are CLIP embeddings, drawn from captions only
            raise ConfigError(
                f"{cfg.ckpt} is {with_article(component)} checkpoint: it turns captions into CLIP image embeddings "
                f"for the {option} generator (fix: zoo-sample generator={option} generator.{key}={cfg.ckpt} "
                f"prompts='[\"...\"]' and that generator's other checkpoints, conf/generator/{option}.yaml)"
            )
        if not cfg.prompts or mapped is None:
            written = sample_checkpoint_grid(cfg, out_dir, component)
            write_run_record(cfg, out_dir, None, None)
            return _finish(written, out_dir)
        option, key = mapped
        if node is None or key not in node:
            raise ConfigError(
                f"{cfg.ckpt} is sampled by generator={option} (fix: add generator={option}, or "
                f"drop ckpt= and give generator.{key}=)"
            )
        with open_dict(node):
            node[key] = str(cfg.ckpt)
    if node is not None and "progress" in node and cfg.get("progress") is not None:
        with open_dict(node):  # a bar per generator call (the generator configs default to none: zoo-eval has its own)
            node.progress = bool(cfg.progress)
    torch.manual_seed(int(cfg.seed))
    generator = build_generator(node, "generator")
    write_run_record(cfg, out_dir, node, generator)  # before sampling: a long run's first images are covered
    return _finish(sample_prompts(cfg, generator, out_dir), out_dir)


# The generator keys that name files (checkpoints, zoo-train runs' last.ckpt): their content identifies the weights.
FILE_KEYS = ("ckpt", "ckpts", "checkpoint", "prompt_upsampler")


def checkpoint_digest(path: Path, cache_dir: Any = None) -> Optional[str]:
    """``zoo.data.datamodule.file_digest`` of ``path`` (blake2b of its bytes; None when it is not a file), kept in
    ``<cache_dir>/file_digests/`` under the file's (path, device, inode, size, mtime_ns, ctime_ns). Every zoo-sample
    run hashed every checkpoint whole: at paper sizes GBs, minutes before the first image. A file saved again, or
    edited in place even with its mtime put back, gets a new ctime (which no user call sets), so a cached digest is
    only ever read for the bytes it was computed from. One entry per path (``<blake2b of the path>.json``: the
    version and the digest), so a checkpoint saved again replaces its entry, and each write prunes the entries whose
    file is gone or was saved again since (``_prune_digest_cache``): a sweep of many checkpoints, or a path re-trained
    many times, no longer leaves one file per version forever. No cache_dir, or one that cannot be written: hashed
    each run."""
    import hashlib
    import re

    from zoo.data.datamodule import file_digest

    key = _file_version(path)
    if key is None or not cache_dir:
        return file_digest(path)
    folder = Path(str(cache_dir)).expanduser() / "file_digests"
    entry = folder / f"{hashlib.blake2b(str(path).encode('utf-8', 'surrogatepass')).hexdigest()[:32]}.json"
    try:
        cached = json.loads(entry.read_text(encoding="utf-8"))
        if cached.get("version") == key and re.fullmatch(r"[0-9a-f]{32}", str(cached.get("blake2b"))):
            return cached["blake2b"]
    except (OSError, ValueError, AttributeError):  # none yet, or not an entry of this format: hashed and rewritten
        pass
    digest = file_digest(path)
    if digest is not None and _file_version(path) == key:  # not rewritten while it was read
        from zoo.checkpoint import atomic_write_text

        try:
            atomic_write_text(entry, json.dumps({"path": str(path), "version": key, "blake2b": digest}))
            _prune_digest_cache(folder, keep=entry)
        except OSError as e:
            log.debug("no digest cache in %s: %s", folder, e)
    return digest


def _file_version(p: Path) -> Optional[str]:
    """What ``checkpoint_digest`` keys a digest on: the path, device, inode, size, mtime_ns and ctime_ns."""
    try:
        st = p.stat()
    except OSError:
        return None
    return f"{p}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"


# A temporary file of atomic_write_text older than this was left by a killed writer, not one still writing.
_STALE_TMP_SECONDS = 3600


def _prune_digest_cache(folder: Path, keep: Path) -> None:
    """Remove the entries of ``checkpoint_digest``'s cache that can never be read again: their file is gone, or is
    another version now (the entry of a path is only ever read for the version it names), or the entry is not of
    this format (the per-version files of earlier releases, named by the key's hash, which no run reads). Runs only
    after a file was hashed, so its cost (one stat per entry) is next to reading a checkpoint whole. A race with
    another zoo-sample at worst removes an entry that run just wrote: a cache miss, the digest is computed again."""
    import time

    for name in os.listdir(folder):
        item = folder / name
        try:
            if name.startswith("."):  # atomic_write_text's temporary: only a killed writer's old one
                if name.endswith(".tmp") and time.time() - item.stat().st_mtime > _STALE_TMP_SECONDS:
                    item.unlink()
                continue
            if item == keep:
                continue
            try:
                cached = json.loads(item.read_text(encoding="utf-8"))
                live = _file_version(Path(cached["path"])) == cached["version"]
            except (ValueError, KeyError, TypeError, AttributeError):
                live = False
            if not live:
                item.unlink()
        except OSError as e:  # gone already (another run pruned it), or not ours to remove: left as it is
            log.debug("digest cache entry %s left: %s", item, e)


def write_run_record(cfg: DictConfig, out_dir: Path, node, generator) -> dict[str, Any]:
    """``<out_dir>/sample_run.json``: what reproduces the images. samples.json names only the prompts and their
    files; Hydra's ``.hydra/`` config is in the run directory, not in an ``out_dir=`` elsewhere, and names a
    checkpoint by its path, which the next save of a run (``last.ckpt``) overwrites. Here: the seed, n_keep, the
    generator's options as resolved (null: the checkpoint's own default, which its digest pins), each checkpoint's
    path with a blake2b digest of its bytes (``checkpoint_digest``: computed once per file version, then read from
    the cache), the weights each stage sampled with (EMA or trained), and the command's overrides when Hydra ran it."""
    from omegaconf import OmegaConf

    cache_dir = (cfg.get("paths") or {}).get("cache_dir")
    options = OmegaConf.to_container(node, resolve=True) if node is not None else None
    files: dict[str, Any] = {}
    named = [("ckpt", cfg.get("ckpt"))] + [
        (f"generator.{k}", v) for k, v in (options or {}).items() if str(k).endswith(FILE_KEYS)
    ]
    for key, value in named:
        for i, path in enumerate(value if isinstance(value, list) else [value]):
            if path not in (None, ""):
                full = Path(str(path)).expanduser().resolve()
                files[f"{key}[{i}]" if isinstance(value, list) else key] = {
                    "path": str(full),
                    "blake2b": checkpoint_digest(full, cache_dir),
                }
    weights = getattr(generator, "weights", None) if generator is not None else None
    record: dict[str, Any] = {
        "seed": int(cfg.seed),
        "n_keep": int(cfg.n_keep),
        "prompts": list(cfg.prompts),
        "checkpoints": files,
        "generator": options,
        "weights": weights if isinstance(weights, (str, dict)) else None,
    }
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        record["overrides"] = list(HydraConfig.get().overrides.task)
    (out_dir / "sample_run.json").write_text(json.dumps(record, indent=2))
    return record


def _finish(written: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    (out_dir / "samples.json").write_text(json.dumps(written, indent=2))
    for key, value in written.items():
        log.info("%s -> %s", key, value["grid"])
    return written


def sample_checkpoint_grid(cfg: DictConfig, out_dir: Path, component: str) -> dict[str, Any]:
    """The checkpoint's own sample grid on validation data: an image tokenizer's reconstructions; for any other
    component (a DALL·E, GLIDE... given no prompts) the validation batch's real images beside samples drawn from
    its captions, which are not reconstructions and are not named so."""
    from zoo.pipelines.grid import checkpoint_sample_grid
    from zoo.registry import IMAGE_TOKENIZERS

    clip = (cfg.get("generator") or {}).get("clip_ckpt")  # an unCLIP decoder's grid embeds the images with it
    images, nrow = checkpoint_sample_grid(str(cfg.ckpt), seed=int(cfg.seed), clip_ckpt=clip)
    name = "reconstructions" if component in IMAGE_TOKENIZERS else "val_samples"
    path = out_dir / f"{name}.png"
    save_grid(images, path, nrow, cfg.grid_scale)
    return {name: {"grid": str(path)}}


# Prompts per generator call: a prompts_file of thousands of lines was one call, holding every image in memory
# (1000 prompts x 8 images at 256 px: 6 GB) and writing nothing until the last was drawn (a crash lost them all).
# Lists of up to PROMPTS_PER_CALL prompts sample exactly as before; a prompt's images depend on the other prompts of
# its call (the pipelines draw candidate i of all the call's captions from one generator, seeded seed + i). Call j
# runs from its own seed (zoo.pipelines.base.chunk_seed, as zoo-eval's batches): every call started from the seed,
# so prompt k and prompt k + 16 were drawn from the same noise (a prompt listed twice, 16 apart: the same images).
PROMPTS_PER_CALL = 16


def sample_prompts(cfg: DictConfig, generator, out_dir: Path) -> dict[str, Any]:
    """``n_keep`` images per prompt, best first -> grid + individual images (+ scores) per prompt, written
    ``PROMPTS_PER_CALL`` prompts at a time (``samples.json`` lists those written so far)."""
    from zoo.pipelines.base import chunk_seed, seeded_chunk

    prompts = list(cfg.prompts)
    names = _output_names(prompts)
    written: dict[str, Any] = {}
    own = getattr(generator, "seed", None)  # generator.seed (${seed} unless set apart)
    base = int(cfg.seed) if own is None else int(own)
    for call, start in enumerate(range(0, len(prompts), PROMPTS_PER_CALL)):
        part = slice(start, start + PROMPTS_PER_CALL)
        # one seed per call for both paths: the generator's seed (seeded_chunk) and keep_best's, which a generator
        # without candidates() is drawn under (RepeatedCandidates sets its seed to it + i). keep_best had the call's
        # seed from cfg.seed, so a generator.seed set apart from seed was overwritten and ignored.
        seed = chunk_seed(base, call)
        with seeded_chunk(generator, base, call) as g:  # call 0 keeps the seed
            written.update(_sample_and_write(cfg, g, out_dir, prompts[part], names[part], seed))
        if start + PROMPTS_PER_CALL < len(prompts):
            (out_dir / "samples.json").write_text(json.dumps(written, indent=2))
    return written


def _sample_and_write(
    cfg: DictConfig, generator, out_dir: Path, prompts: list, names: list, seed: int
) -> dict[str, Any]:
    from torchvision.utils import save_image

    from zoo.pipelines.base import keep_best

    out = keep_best(generator, prompts, int(cfg.n_keep), seed=seed)  # seed: for a generator without candidates()
    scores = out.get("scores")
    written: dict[str, Any] = {}
    for i, (prompt, (key, slug)) in enumerate(zip(prompts, names)):
        path = out_dir / f"{slug}.png"
        save_grid(out["images"][i], path, int(cfg.nrow), cfg.grid_scale)
        images = out["images"][i].float().clamp(-1, 1).add(1).div(2)
        (out_dir / slug).mkdir(exist_ok=True)
        # an out_dir= used before: a previous run's numbered images of this prompt go (n_keep=8 then n_keep=2 left
        # 02..07.png of the old run beside the new 00, 01), so the folder holds this run's images only
        for old in (out_dir / slug).glob("[0-9][0-9]*.png"):
            if old.stem.isdigit():
                old.unlink()
        files = []
        for j, img in enumerate(images):
            f = out_dir / slug / f"{j:02d}.png"
            save_image(img, f)
            files.append(str(f))
        entry: dict[str, Any] = {"prompt": prompt, "grid": str(path), "images": files}
        rewrites = getattr(generator, "all_prompts", None)  # a prompt upsampler's rewrites (DALL·E 3)
        if isinstance(rewrites, dict) and prompt in rewrites:
            entry["upsampled_prompts"] = list(dict.fromkeys(rewrites[prompt]))  # distinct, in the order drawn
        if out.get("n_candidates") is not None:
            entry["n_candidates"] = int(out["n_candidates"])
        if scores is not None:
            from zoo.models.clip.scorer import CLIP_SCORE_CONVENTION

            entry["clip_scores"] = [round(float(s), 4) for s in scores[i]]
            entry["clip_score_convention"] = CLIP_SCORE_CONVENTION
        written[key] = entry
    return written


def short_form_generator(args: list[str]) -> list[str]:
    """The command line with ``generator=<option>`` added when ``ckpt=<file>`` names a checkpoint whose generator
    (``CHECKPOINT_GENERATORS``) the user did not choose: Hydra composes before ``sample`` reads the file, so the
    default ``generator=dalle`` was composed first and ``zoo-sample ckpt=<glide ckpt> generator.steps=4`` failed in
    Hydra ("Key 'steps' is not in struct"; found by helper-126), as did every ``generator.<key>`` of the file's own
    generator. The component is peeked (safe loader, tensors mapped, not read). Anything else is left as given
    (a chosen generator, a missing or unreadable file: ``sample`` reports those with their fix)."""
    from zoo.pipelines.base import checkpoint_generator

    if any(a.split("=", 1)[0].lstrip("+~") == "generator" for a in args):
        return args
    ckpt = next((a.split("=", 1)[1] for a in args if a.startswith("ckpt=")), "")
    if not ckpt or not Path(ckpt).expanduser().is_file():
        return args
    try:
        mapped = checkpoint_generator(checkpoint_component(str(Path(ckpt).expanduser())))
    except Exception:  # not a zoo-train checkpoint: sample() says so, with the fix
        return args
    # first: after an option such as --cfg job, argparse takes no more overrides
    return args if mapped is None else [f"generator={mapped[0]}", *args]


_main = entry_point(sample, "sample")


@functools.wraps(_main)
def main(*args, **kwargs):
    sys.argv[1:] = short_form_generator(sys.argv[1:])
    return _main(*args, **kwargs)


if __name__ == "__main__":
    main()
