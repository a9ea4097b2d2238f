"""``zoo-recaption``: caption a whole dataset split with a captioner checkpoint (DALL·E 3's dataset recaptioning).

    zoo-recaption ckpt=<captioner last.ckpt> features=<zoo-embed file of the split> split=train out=<file>
    zoo-recaption ckpt=<captioner last.ckpt> clip.checkpoint=<clip.ckpt> data=shapes split=train out=<file>

The image embeddings come from a ``zoo-embed`` features file of the split (``features=``: its ``clip_image_emb``,
in dataset index order) or are computed with a CLIP (``clip.*``, as zoo-embed's node) over ``data``'s split.

Output (written atomically, loadable with ``weights_only=True``): ``{"captions": list[str] in dataset index order,
"meta": {"captioner_digest": sha256 of the checkpoint file, "style": ..., "n": ..., "empty": <empty captions, also
warned about>, "decoding": {...}, ...}}``.
Serve it as a new caption style of the training split: ``data.synthetic_captions={synthetic_descriptive: <out>}
data.caption_mix={synthetic_descriptive: 0.95, alt: 0.05}`` (``zoo.data.datamodule.SyntheticCaptioned``).

Resumable: the split is captioned in chunks of ``chunk_size`` items, each written atomically to a work directory
next to ``out`` (``.<out name>.chunks-<key>/chunk-<i>.pt``; the key digests the captioner file, the embeddings'
source, the decoding options, the seed and the chunk size, so a changed run never reuses stale chunks). A restart
skips the finished chunks; a kill leaves them. When every chunk is done the file is written and the work directory
removed. Nucleus sampling draws item i's tokens from its own generator seeded by (seed, i), so a resumed run is
identical to an uninterrupted one, whatever the batch sizes of the two runs (a restart with a smaller batch_size
after running out of memory keeps the finished chunks). The generators live on the captioner's device, and CPU and
CUDA generators differ: the device type is part of the key under nucleus sampling.

Config keys (``conf/recaption.yaml``): ``ckpt``, ``features`` or ``clip``, ``data``, ``split``, ``style`` (default
``synthetic_<the style the captioner was fine-tuned on>``), ``decoding`` (greedy | beam | nucleus; null: the
checkpoint's), ``beam_width``, ``length_penalty``, ``top_p``, ``temperature``, ``seed``, ``batch_size``,
``chunk_size``, ``device``, ``out`` (null: ``<paths.cache_dir>/recaptions/<data>_<split>_<style>.pt``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import hydra
import torch
from omegaconf import DictConfig

from zoo.config import report_user_errors
from zoo.errors import ConfigError, check_switch, check_whole
from zoo.progress import track

log = logging.getLogger("zoo.recaption")

DECODING_KEYS = ("method", "beam_width", "length_penalty", "top_p", "temperature")


def file_digest(path: str | Path, block: int = 1 << 20) -> str:
    """sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


def _samples(captioner, decoding: Mapping[str, Any]) -> bool:
    """Whether the run draws random numbers (nucleus sampling; the checkpoint's method when unset)."""
    return (decoding.get("method") or captioner.decoding) == "nucleus"


def _warn_unused_work(out: Path, work: Path) -> None:
    """A new work directory while others of ``out`` hold finished chunks: a restart with changed options captions
    from scratch; said, since it looks like a resume that lost its progress."""
    stale = sorted(p.name for p in out.parent.glob(f".{out.name}.chunks-*") if p.is_dir() and p != work)
    if stale:
        log.warning(
            "zoo-recaption: %s: finished chunks of a run with other options (captioner, embeddings, decoding, "
            "seed, chunk_size, or the device type under nucleus sampling); they are not reused and this run starts "
            "from the first chunk (fix: rerun with that run's options to resume it, or delete it)",
            ", ".join(str(out.parent / s) for s in stale),
        )


def _caption_chunk(
    captioner, emb: torch.Tensor, decoding: Mapping[str, Any], seed: int, start: int, batch_size: int
) -> list[str]:
    """Captions of items start, start + 1, ... (embeddings ``emb``). Nucleus sampling draws each item's noise from
    the item's own generator: one generator for the chunk, consumed batch by batch as (batch, vocabulary) draws,
    gave another caption to most items when a restart changed batch_size, mixing two sampling streams in the
    resumed file."""
    from zoo.models.captioner.lit import item_generators

    kwargs = {k: v for k, v in decoding.items() if v is not None}
    if not _samples(captioner, decoding):
        return captioner.caption(emb, batch_size=batch_size, **kwargs)
    out: list[str] = []
    for a in range(0, len(emb), batch_size):
        rows = range(start + a, start + min(a + batch_size, len(emb)))
        gen = item_generators(seed, rows, captioner.device)
        out += captioner.caption(emb[a : a + batch_size], batch_size=batch_size, generator=gen, **kwargs)
    return out


def recaption(
    captioner,
    embeddings: Callable[[int, int], torch.Tensor],
    n: int,
    out: str | Path,
    *,
    captioner_digest: str,
    style: str,
    source: Any = None,
    decoding: Optional[Mapping[str, Any]] = None,
    seed: int = 0,
    batch_size: int = 64,
    chunk_size: int = 1024,
    progress: bool = True,
    meta: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Caption items 0..n-1 and write the recaption file ``out``; returns its path.

    ``captioner``: a ``CaptionerLit``; ``embeddings(start, stop)`` -> the CLIP image embeddings (stop - start, D) of
    those items (called only for chunks not finished yet); ``source``: a JSON-able description of where the
    embeddings come from (part of the resume key). ``decoding``: ``CaptionerLit.caption`` options (``method``,
    ``beam_width``, ``length_penalty``, ``top_p``, ``temperature``; None: the checkpoint's)."""
    from zoo.checkpoint import CorruptCheckpointError, atomic_torch_save, safe_load

    if n < 1:
        raise ConfigError("the split is empty: nothing to caption (fix: data.<split>_size >= 1)")
    check_whole("chunk_size", chunk_size, 1, 1024)  # int() took 2.5 for 2
    check_whole("batch_size", batch_size, 1, 64)
    out = Path(out)
    if out.is_dir():  # found only by the final os.replace, after the whole split had been captioned
        raise ConfigError(f"out={out} is a directory (fix: out={out / 'captions.pt'}, a file path)")
    decoding = {k: (decoding or {}).get(k) for k in DECODING_KEYS}
    _check_decoding(captioner, decoding)
    key_src = {
        "captioner": captioner_digest,
        "source": source,
        "n": n,
        "decoding": decoding,
        "seed": int(seed),
        "chunk_size": chunk_size,
    }
    if _samples(captioner, decoding):
        # the generators live on the captioner's device, and CPU and CUDA generators give other streams for one seed
        key_src["device"] = torch.device(captioner.device).type
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True, default=str).encode()).hexdigest()[:16]
    work = out.parent / f".{out.name}.chunks-{key}"
    if not work.is_dir():
        _warn_unused_work(out, work)
    work.mkdir(parents=True, exist_ok=True)
    n_chunks = (n + chunk_size - 1) // chunk_size
    captions: list[Optional[list[str]]] = [None] * n_chunks
    for i in range(n_chunks):  # finished chunks of an earlier (killed) run
        path = work / f"chunk-{i:06d}.pt"
        if path.is_file():
            start, stop = i * chunk_size, min(n, (i + 1) * chunk_size)
            try:
                obj = safe_load(path)
            except CorruptCheckpointError:
                continue
            if isinstance(obj, dict) and obj.get("start") == start and len(obj.get("captions", ())) == stop - start:
                captions[i] = list(obj["captions"])
    done = sum(len(c) for c in captions if c is not None)
    if done:
        log.info("zoo-recaption: resuming %s: %d of %d items already captioned", work, done, n)
    with track(total=n, desc=f"zoo-recaption -> {out.name}", unit="caption", disable=not progress) as bar:
        if done:
            bar.update(done)
        for i in range(n_chunks):
            if captions[i] is not None:
                continue
            start, stop = i * chunk_size, min(n, (i + 1) * chunk_size)
            emb = embeddings(start, stop)
            if len(emb) != stop - start:
                raise RuntimeError(f"embeddings({start}, {stop}) gave {len(emb)} rows")
            caps = _caption_chunk(captioner, emb, decoding, seed, start, int(batch_size))
            atomic_torch_save({"start": start, "captions": caps}, work / f"chunk-{i:06d}.pt")
            captions[i] = caps
            bar.update(len(caps))
    flat = [c for chunk in captions for c in chunk]  # type: ignore[union-attr]
    empty = [i for i, c in enumerate(flat) if not c.strip()]
    if empty:
        # an undertrained captioner (or one fed another CLIP's embeddings) ends captions at [SOT] [EOT]: the file was
        # written without a word, and data.caption_mix served its empty strings as 95% of the training captions
        log.warning(
            "zoo-recaption: %d of %d captions are empty (items %s%s): check the captioner (trained long enough? "
            "the embeddings of its CLIP?) before serving %s through data.caption_mix",
            len(empty),
            len(flat),
            ", ".join(map(str, empty[:8])),
            ", ..." if len(empty) > 8 else "",
            out,
        )
    info = {
        "captioner_digest": captioner_digest,
        "style": style,
        "n": len(flat),
        "empty": len(empty),
        "decoding": {k: v for k, v in decoding.items() if v is not None},
        "seed": int(seed),
        **(meta or {}),
    }
    path = atomic_torch_save({"captions": flat, "meta": info}, out)
    shutil.rmtree(work, ignore_errors=True)
    return path


def _check_decoding(captioner, decoding: Mapping[str, Any]) -> None:
    """The options the run will decode with (unset: the checkpoint's), refused before any work: a top_p of 0 or a
    negative temperature decoded greedily, and beam_width=0 ran the checkpoint's width, each under the given
    values in the file's meta."""
    from zoo.models.captioner.lit import check_decoding

    def value(key: str, attr: str):
        return getattr(captioner, attr) if decoding.get(key) is None else decoding[key]

    check_decoding(
        value("method", "decoding"),
        value("beam_width", "beam_width"),
        value("top_p", "top_p"),
        value("temperature", "temperature"),
        prefix="",
    )


def load_recaptions(path: str | Path) -> dict[str, Any]:
    """``{"captions": [...], "meta": {...}}`` of a recaption file (weights_only load)."""
    from zoo.checkpoint import safe_load
    from zoo.data.datamodule import load_synthetic_captions

    captions = load_synthetic_captions(path)
    return {"captions": captions, "meta": dict(safe_load(path).get("meta") or {})}


# ------------------------------------------------------------------------------------------------ the command
def _default_style(captioner) -> str:
    data = (getattr(captioner, "zoo_config", None) or {}).get("data") or {}
    style = data.get("caption_style") if isinstance(data, Mapping) else None
    return f"synthetic_{style}" if style else "synthetic"


def _embedding_source(
    cfg: DictConfig, want_dim: int, want_clip: Optional[str] = None
) -> tuple[Callable[[int, int], torch.Tensor], int, Any]:
    """(embeddings(start, stop), n, JSON-able source) from ``features=`` or a CLIP over ``data``'s split.
    ``want_clip``: the fingerprint of the captioner's CLIP (None: not known, not checked)."""
    from omegaconf import OmegaConf

    split = str(cfg.split)
    from zoo.data.datamodule import SPLITS

    if split not in SPLITS:  # with features= the split is only recorded in the output: a typo would pass silently
        raise ConfigError(f"unknown split {split!r}; expected one of {SPLITS} (fix: split=train, val or test)")
    if cfg.get("features"):
        from zoo.embed import load_embeddings

        path = Path(str(cfg.features)).expanduser()
        meta: dict = {}
        emb = load_embeddings(path, meta, all_captions=True).get("clip_image_emb")  # image rows: no text-key copy
        written_for = meta.get("split")
        if written_for is not None and str(written_for) != split:  # the captions would be served to the wrong images
            raise ConfigError(
                f"features={path} holds the {written_for} split's embeddings (zoo-embed split={written_for}) but "
                f"split={split} (fix: split={written_for}, or features=<the zoo-embed file of the {split} split>)"
            )
        if emb is None:
            raise ConfigError(f"{path} has no clip_image_emb (fix: features=<a file written by zoo-embed>)")
        _check_dim(emb.shape[-1], want_dim, f"features={path}")
        check_embedding_clip(meta.get("clip_fingerprint"), want_clip, f"features={path}")
        return (lambda a, b: emb[a:b].float()), len(emb), {"features": file_digest(path)}
    clip = cfg.get("clip") or {}
    if not (clip.get("checkpoint") or clip.get("arch")):
        raise ConfigError(
            "no image embeddings (fix: features=<zoo-embed file of the split>, or "
            "clip.checkpoint=<zoo-train CLIP ckpt> with data=<the dataset> split=<split>)"
        )
    from zoo.config import instantiate
    from zoo.models.clip.scorer import ClipScorer

    scorer = ClipScorer.from_config(clip)
    check_embedding_clip(scorer.fingerprint, want_clip, f"the CLIP of clip.checkpoint={clip.get('checkpoint')}")
    dm = instantiate(cfg.data, "data")
    ds = dm.dataset(split)
    if isinstance(ds, torch.utils.data.IterableDataset):
        raise ConfigError(
            "zoo-recaption captions map-style splits (shapes, COCO): a streamed WebDataset split has no "
            "index order (fix: data=shapes | coco)"
        )

    def embeddings(start: int, stop: int) -> torch.Tensor:
        # One encoder batch of images at a time. The whole chunk stacked at once (and the list it was stacked from)
        # took 1.5 GB more memory for the default 1,024 items at 256 px, growing with chunk_size. Batches of the
        # scorer's own size are those its encode_image ran anyway: the same embeddings, bit for bit.
        step, out = scorer.batch_size, []
        for a in range(start, stop, step):
            images = torch.stack([ds[i]["image"] for i in range(a, min(a + step, stop))])
            out.append(scorer.encode_image(images).cpu())
        emb = torch.cat(out)
        _check_dim(emb.shape[-1], want_dim, "the CLIP")
        return emb

    # the resume key (``recaption``): what the embeddings are a function of. data_identity leaves out the resolution
    # (the same training captions) and the path names no weights: a run restarted at another data.resolution, or
    # after the CLIP was retrained in place, reused the finished chunks' captions of other embeddings
    source = {
        "clip": {k: v for k, v in OmegaConf.to_container(clip, resolve=True).items() if v is not None},
        "clip_fingerprint": scorer.fingerprint,
        "resolution": getattr(dm, "resolution", None),
        "data": dm.data_identity(),
        "split": split,
        "n": len(ds),
    }
    return embeddings, len(ds), source


def _check_dim(got: int, want: int, where: str) -> None:
    if got != want:
        raise ConfigError(
            f"{where} gives {got}-d image embeddings but the captioner takes {want}-d "
            f"(fix: embeddings of the CLIP the captioner was trained on)"
        )


def check_embedding_clip(
    got: Optional[str],
    want: Optional[str],
    where: str,
    fix: str = "features=<zoo-embed file of the captioner's CLIP>, or clip.checkpoint=<that CLIP>",
) -> None:
    """Embeddings of another CLIP than the captioner's (same width: every shape check passes) are captioned as noise;
    refused when both sides name their CLIP (files and checkpoints from before the fingerprint are not checked)."""
    if got and want and got != want:
        raise ConfigError(
            f"{where} gives embeddings of another CLIP (fingerprint {got}) than the one the captioner was trained on "
            f"(fingerprint {want}) (fix: {fix})"
        )


def _default_out(cfg: DictConfig, style: str) -> Path:
    """``<cache>/recaptions/<data>_<split>_<style>.pt``: the style is in the name, so the short and the descriptive
    captioners' files do not overwrite each other (one default path for both served the short style the descriptive
    captions, following the command's own serving hint)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        data = HydraConfig.get().runtime.choices.get("data")
    except ValueError:  # composed without Hydra's runtime (tests, the Python API)
        data = None
    return Path(str(cfg.paths.cache_dir)).expanduser() / "recaptions" / f"{data or 'data'}_{cfg.split}_{style}.pt"


def check_options(cfg: DictConfig) -> None:
    """The device, count and CLIP options, checked before the captioner or a CLIP loads: ``device=gpu`` was reported
    as a truncated or corrupt captioner checkpoint (torch's load error), ``batch_size=2.5`` ran with 2, and
    ``clip.arch`` without ``clip.pretrained`` / ``clip.checkpoint`` (an untrained CLIP: its embeddings are noise) was
    refused, if at all, as "another CLIP" or another width after the first chunk's images had been embedded."""
    from zoo.errors import check_device

    check_device(cfg.get("device"), "device")
    for key, default, least in (("batch_size", 64, 1), ("chunk_size", 1024, 1), ("seed", 0, None)):
        check_whole(key, cfg.get(key), least, default, none_ok=True)  # int() took 2.5 for 2 and true for 1
    check_switch("progress", cfg.get("progress", True))  # progress=no reached bool() as a string: true
    if not cfg.get("features") and cfg.get("clip"):
        from zoo.embed import embed_options

        embed_options(cfg)  # the clip node is zoo-embed's: clip.device, clip.arch without weights


def run(cfg: DictConfig) -> Path:
    """Plain function behind ``zoo-recaption`` (testable without Hydra's runtime)."""
    from zoo.checkpoint import load_module

    ckpt = Path(str(cfg.get("ckpt") or "")).expanduser()
    if not cfg.get("ckpt") or not ckpt.is_file():
        raise ConfigError(
            f"captioner checkpoint not found: {cfg.get('ckpt')} (fix: ckpt=<a zoo-train model=captioner "
            f"last.ckpt>, e.g. from `zoo-train experiment=dalle3/captioner_descriptive`)"
        )
    check_options(cfg)
    captioner = load_module(ckpt, map_location=str(cfg.get("device") or "cpu"), expect=("captioner",), option="ckpt")
    captioner.to(str(cfg.get("device") or "cpu"))
    embeddings, n, source = _embedding_source(cfg, captioner.cfg.embed_dim, captioner.clip_fingerprint)
    style = str(cfg.get("style") or _default_style(captioner))
    decoding = {
        "method": cfg.get("decoding"),
        "beam_width": cfg.get("beam_width"),
        "length_penalty": cfg.get("length_penalty"),
        "top_p": cfg.get("top_p"),
        "temperature": cfg.get("temperature"),
    }
    path = recaption(
        captioner,
        embeddings,
        n,
        str(cfg.get("out") or _default_out(cfg, style)),
        captioner_digest=file_digest(ckpt),
        style=style,
        source=source,
        decoding=decoding,
        seed=int(cfg.get("seed") or 0),
        # `is None`, not `or`: 0 is refused by recaption() (it silently became the default)
        batch_size=int(64 if cfg.get("batch_size") is None else cfg.batch_size),
        chunk_size=int(1024 if cfg.get("chunk_size") is None else cfg.chunk_size),
        progress=bool(cfg.get("progress", True)),
        meta={"split": str(cfg.split), "captioner": str(ckpt)},
    )
    log.info(
        # quoted as a shell needs it: the braces' spaces would split the override into several arguments
        "wrote %s (serve with 'data.synthetic_captions={%s: %s}' 'data.caption_mix={%s: 0.95, alt: 0.05}')",
        path,
        style,
        path,
        style,
    )
    print(path)
    return path


@hydra.main(version_base="1.3", config_path="pkg://conf", config_name="recaption")
@report_user_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
