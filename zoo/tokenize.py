"""``zoo-tokenize``: encode a whole dataset split with a trained image tokenizer, once, to a token file.

Stage 2 (the DALL·E transformer) then trains from ``image_tokens`` without running the encoder every step:
``data.features.train=<out>`` makes the DataModule serve them. The output is a dict of tensors written atomically:
``image_tokens`` LongTensor (N, h, w) in dataset index order, plus ``codebook_size``, ``grid_size`` and ``meta``
(the split and the tokenizer checkpoint).

An interrupted run keeps its codes in chunks in ``<out>.partial/``: the same command continues after the last
complete chunk and writes the file an uninterrupted run writes; other arguments (another tokenizer, other data or
options) are refused while that folder exists (``zoo.feature_rows``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from zoo.config import entry_point
from zoo.errors import ConfigError

log = logging.getLogger("zoo.tokenize")


def image_tokenizer_of(module: Any):
    """The ``ImageTokenizer`` inside a LightningModule (or the module itself); a ConfigError if there is none."""
    from zoo.nn.image_tokenizer import find_image_tokenizer

    try:
        return find_image_tokenizer(module)
    except ValueError as e:
        raise ConfigError(str(e)) from None


@torch.no_grad()
def tokenize_dataset(
    tokenizer,
    dataset,
    out_path: str | Path,
    batch_size: int = 256,
    num_workers: int = 0,
    meta: dict | None = None,
    progress: bool = True,
    resume_key: dict[str, Any] | None = None,
    chunk_rows: int | None = None,
) -> Path:
    """``meta`` (plain values, e.g. the split) is stored beside the codes: the DataModule refuses a file whose
    ``meta["split"]`` is not the split it is given for (with equal sizes it would be served to the wrong images).
    An interrupted run resumes after its last chunk of ``chunk_rows`` rows (``zoo.feature_rows``) when run again
    with the same tokenizer weights, ``meta``, batch size and ``resume_key`` (e.g. the resolution)."""
    if isinstance(dataset, torch.utils.data.IterableDataset):  # webdataset: shuffled, endless, no index
        raise ConfigError(
            f"zoo-tokenize writes one row per dataset index, but {type(dataset).__name__} streams its samples without "
            f"an index (in shuffled order): the DataModule could never serve the rows (data.features needs a "
            f"map-style dataset) (fix: data=coco, data=folder data.root=<your image-caption folder>, or data=shapes)"
        )

    from zoo.checkpoint import atomic_torch_save
    from zoo.data.collate import collate_samples
    from zoo.feature_rows import compute_rows, finish_rows
    from zoo.models.clip.scorer import clip_fingerprint

    def encode(batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list]:
        index = batch.get("index")  # the item served (a file dataset's substitute for a bad file)
        served = index.tolist() if isinstance(index, torch.Tensor) else [None] * len(batch["image"])
        codes = tokenizer.encode(batch["image"]).to(torch.int32 if tokenizer.codebook_size < 2**31 else torch.long)
        return {"image_tokens": codes}, served

    # what the codes depend on: an interrupted run resumes only with the same tokenizer weights, data and options
    identity = {
        "meta": meta or {},
        "tokenizer_fingerprint": clip_fingerprint(tokenizer),  # a digest of any module's weights, not CLIP-only
        "codebook_size": int(tokenizer.codebook_size),
        **(resume_key or {}),
    }
    rows, subst = compute_rows(
        dataset,
        out_path,
        identity,
        encode,
        batch_size=batch_size,
        collate_fn=collate_samples,
        command="zoo-tokenize",
        what="image tokens",
        unit="image",
        options={"num_workers": num_workers, "progress": progress, "chunk_rows": chunk_rows},
    )
    tokens = rows["image_tokens"].long()
    path = atomic_torch_save(
        {
            "image_tokens": tokens,
            "codebook_size": int(tokenizer.codebook_size),
            "grid_size": list(tokens.shape[1:]),
            "meta": {**(meta or {}), "substituted_rows": subst},
        },
        out_path,
    )
    finish_rows(out_path)
    return path


def check_tokenizer_resolution(module: Any, resolution: Any, path: str) -> None:
    """``data.resolution`` must be the resolution the tokenizer trained at: a convolutional tokenizer encodes any
    multiple of its downsample factor, but at another size it gives a different (larger or smaller) grid of codes
    than the one it learned, and stage 2 trains on those without a word. Refused (ConfigError, before any image is
    read) when the checkpoint records its training resolution; a warning when it does not."""
    from zoo.checkpoint import trained_resolution

    trained = trained_resolution(getattr(module, "zoo_config", None))
    if trained is None:
        log.warning(
            "%s does not record the resolution it was trained at (no zoo_config.data.resolution): make sure "
            "data.resolution=%s is that resolution, or the token grid differs from the one it learned",
            path,
            resolution,
        )
    elif resolution is not None and int(resolution) != trained:
        raise ConfigError(
            f"the tokenizer {path} was trained at {trained} px but data.resolution={resolution}: its codes at "
            f"{resolution} px are another grid than the one it learned (fix: data.resolution={trained})"
        )


def check_default_out(cfg: DictConfig, meta: dict[str, Any], grid: list[int]) -> None:
    """The default ``out`` (``<cache>/tokens/<data>_<split>_image_tokens.pt``) names the data option and split only:
    a run with another tokenizer, resolution or image folder (every ``data=folder`` has the same name) silently
    replaced the codes an earlier run wrote there, which a DALL·E may be training from (found by helper-126). A file
    there whose ``meta`` / ``grid_size`` say it was made from other inputs is refused before any image is encoded,
    unless ``out=`` is named (the user chose that file) or ``overwrite=true``; the same inputs rewrite it (a rerun)."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(cfg, resolve=False).get("out")
    default = isinstance(raw, str) and "${hydra:runtime.choices.data}" in raw  # out= given replaces this template
    path = Path(str(cfg.out)).expanduser()
    if not default or cfg.get("overwrite", False) or not path.is_file():
        return
    from zoo.checkpoint import peek_checkpoint

    try:
        old = peek_checkpoint(path)
        old_meta = old.get("meta") or {}
    except Exception:  # not a readable token file: nothing made from inputs to keep
        return
    differ = [
        what
        for what, before, now in (
            ("the tokenizer weights", old_meta.get("tokenizer_fingerprint"), meta["tokenizer_fingerprint"]),
            ("the images", old_meta.get("data"), meta["data"]),
            ("the split", old_meta.get("split"), meta["split"]),
            ("the grid (data.resolution)", list(old.get("grid_size") or []), grid),
        )
        if before != now
    ]
    if differ:
        was = f"tokenizer_ckpt={old_meta.get('tokenizer')}, grid {'x'.join(map(str, old.get('grid_size') or []))}"
        raise ConfigError(
            f"{path} holds image tokens made from other inputs ({was}; {', '.join(differ)} differ): this run would "
            f"replace them (fix: out=<another file> for this run's tokens, e.g. out={path.parent}/{path.stem}_<its "
            f"tokenizer or folder>.pt, or overwrite=true to replace it)"
        )


def tokenize(cfg: DictConfig) -> Path:
    from zoo.checkpoint import load_module
    from zoo.config import instantiate
    from zoo.feature_rows import split_and_batch_size
    from zoo.models.dalle.model import tokenizer_fingerprint

    if not cfg.get("tokenizer_ckpt"):
        raise ConfigError("no tokenizer checkpoint (fix: zoo-tokenize tokenizer_ckpt=/path/to/dvae/last.ckpt)")
    split, batch_size = split_and_batch_size(cfg, 256)  # before the checkpoint loads
    from zoo.registry import IMAGE_TOKENIZERS

    module = load_module(cfg.tokenizer_ckpt, expect=IMAGE_TOKENIZERS, option="tokenizer_ckpt")
    tokenizer = image_tokenizer_of(module)
    check_tokenizer_resolution(module, cfg.data.get("resolution"), str(cfg.tokenizer_ckpt))
    dm = instantiate(cfg.data, "data")
    if dm.resolution % tokenizer.downsample_factor:
        raise ConfigError(
            f"data.resolution={dm.resolution} is not a multiple of the tokenizer's downsample factor "
            f"{tokenizer.downsample_factor} (fix: data.resolution=<multiple>)"
        )
    # which images (the DataModule refuses the file for other data); image codes do not depend on the captions
    meta = {
        "split": split,
        "tokenizer": str(cfg.tokenizer_ckpt),
        # its weights: a DALL·E trained on these codes is decoded only by this tokenizer (DalleLit checks)
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "data": {"images": dm.features_identity(split)["images"]},
    }
    check_default_out(cfg, meta, [dm.resolution // tokenizer.downsample_factor] * 2)
    path = tokenize_dataset(
        tokenizer,
        dm.dataset(split),
        cfg.out,
        batch_size=batch_size,
        meta=meta,
        resume_key={"resolution": dm.resolution},  # the grid of codes changes with it (features_identity omits it)
    )
    log.info("wrote %s", path)
    print(path)
    return path


main = entry_point(tokenize, "tokenize")


if __name__ == "__main__":
    main()
