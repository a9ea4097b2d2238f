"""``zoo-embed``: CLIP text and image embeddings (and CLIP text tokens) for a dataset split, written once to disk.

The unCLIP prior and decoder then train from ``clip_image_emb`` / ``clip_text_emb`` served by the DataModule
(``data.features.<split>=<out>``, or ``attach_embeddings(dataset, out)`` in code) instead of running CLIP every step.

Output: one ``.pt`` (written atomically, loadable with ``weights_only=True``) holding, in dataset index order,
``clip_image_emb`` (N, D) float32 L2-normalised, ``clip_text_emb`` (N, D) float32 L2-normalised and
``clip_text_tokens`` (N, L) int64 — the model's own open_clip token ids — plus ``meta``: a dict of plain values
(CLIP source, embedding dim, item count, CLIP-score convention, ``clip_fingerprint``: a digest of the CLIP's
weights that the modules trained on the file keep and the unCLIP pipeline checks; ``data``: the DataModule's
``features_identity`` of the split, which the DataModule serving the file compares: other images are refused, other
captions serve the image features only). With ``text_encodings=true`` it also holds
``clip_text_encodings`` (N, L, W) float16, the per-token outputs of CLIP's text tower (token embedding + positions
+ transformer + ln_final, before pooling and projection: what unCLIP's prior and decoder read as "encoded text"),
and ``clip_text_mask`` (N, L) bool, True up to and including the end-of-text token.

Every caption (``captions=all``; the default ``auto`` picks it where a split draws one of several captions per
access: MS-COCO train): the text keys hold one row per caption, M in all (an image's ~5 COCO captions, in
annotation order), and ``clip_caption_counts`` (N,) int64 how many belong to each image; ``meta["captions"]`` is
``"all"``. The unCLIP paper trains on every image-caption pair, and the COCO dataset draws a fresh caption each
epoch, but one caption per image was embedded, so the priors saw 1 of ~5 captions of each image for every epoch.
The DataModule serves an image with the rows of the caption drawn for that access (``FeatureAttached``: another
each epoch, the same after a resume); ``load_embeddings`` gives one row per image (the first caption) unless asked
for all. Storage: per caption, D float32 + L int64 (~5 KB at ViT-H width); ``clip_text_encodings`` add L x W
float16 each, 158 KB at L=77, W=1024: 65 GB for train2014's 414k captions (93 GB for train2017's 592k), held in
memory to write the file (a process serving it maps the file: page cache, ``safe_load(mmap=True)``). So that case is refused before any encoding when it
exceeds the machine's available memory, naming the size and the fixes (``text_encodings=false``, ``captions=one``
or ``data.max_items``); below it, a warning gives the size.

An interrupted run (Ctrl-C, a kill, a time limit) keeps its rows in chunks in ``<out>.partial/``: the same command
continues after the last complete chunk and writes the file an uninterrupted run writes; other arguments (another
CLIP, other data or options) are refused while that folder exists (``zoo.feature_rows``).

Config keys read (``conf/embed.yaml``):
  ``clip.checkpoint``  a zoo-train CLIP ``.ckpt`` (arch read from it) or, with ``clip.arch``, an open_clip file
  ``clip.arch``        an open_clip architecture name (needed for an open_clip file or a pretrained tag)
  ``clip.pretrained``  an open_clip pretrained tag (cache first; downloads only where there is internet)
  ``clip.net``         (optional) open_clip config overrides, as ``model.net``
  ``clip.device``      (optional, default cpu)
  ``data``             a DataModule config (``conf/data/*``); ``split`` one of train/val/test
  ``out``              the output file; ``batch_size`` (default 128)
  ``text_encodings``   (optional, default false) also write ``clip_text_encodings`` / ``clip_text_mask``
  ``captions``         (optional, default auto) ``all``: every caption of each image; ``one``: the caption the
                       dataset serves at its index (the layout of files written before); ``auto``: all where the
                       split has several captions per image to draw from (COCO train), else one
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig

from zoo.config import entry_point
from zoo.errors import ConfigError, check_device, check_switch
from zoo.models.clip.model import text_token_encodings  # noqa: F401  (library code; re-exported)
from zoo.precision import available_memory

log = logging.getLogger("zoo.embed")

EMBEDDING_KEYS = (
    "clip_image_emb",
    "clip_text_emb",
    "clip_text_tokens",
    "clip_text_encodings",
    "clip_text_mask",
    "clip_caption_counts",  # zoo.data.datamodule.CAPTION_COUNTS (not imported here: it loads Lightning)
)
CAPTION_MODES = ("auto", "one", "all")


def check_caption_option(captions: Any) -> str:
    """The ``captions`` option, checked (before a CLIP or the data is built, by ``embed_options``)."""
    if captions not in CAPTION_MODES:
        raise ConfigError(f"captions must be one of {CAPTION_MODES}, got {captions!r} (fix: captions=auto)")
    return captions


def caption_mode(dataset, captions: str = "auto") -> str:
    """``"one"`` or ``"all"``: what ``captions`` (``auto`` | ``one`` | ``all``) means for ``dataset``. Every caption
    needs a dataset that lists an item's captions (``caption_choices``, looked up on its class: a wrapper that
    forwards attributes, ``SyntheticCaptioned``, serves other captions than its base lists); ``auto`` takes them
    where some item has more than one."""
    check_caption_option(captions)
    listed = callable(getattr(type(dataset), "caption_choices", None))
    if captions == "all" and not listed:
        raise ConfigError(
            f"captions=all embeds every caption of each image, but {type(dataset).__name__} serves one caption per "
            f"index and lists no others (synthetic captions, the shapes world) (fix: captions=one)"
        )
    if captions == "auto":
        several = listed and any(len(dataset.caption_choices(i)) > 1 for i in range(len(dataset)))
        return "all" if several else "one"
    return captions


def check_encodings_size(scorer, n_items: int, n_captions: int) -> None:
    """Refuse ``text_encodings`` of every caption when they exceed the available memory (see the module doc), before
    hours of encoding end in an out-of-memory kill; else warn with their size. L and W come from one caption."""
    tokens = scorer.tokenize(["a"])
    _, length, width = text_token_encodings(scorer.model, tokens.to(scorer.device))[0].shape
    size = n_captions * length * (2 * width + 1)  # float16 encodings + bool mask
    avail = available_memory()
    gb = 1e9
    what = (
        f"text_encodings=true with every caption ({n_captions:,} captions of {n_items:,} images) writes "
        f"{n_captions:,} x {length} tokens x {width} float16 = {size / gb:.1f} GB of per-token encodings, held in "
        f"memory to write the file"
    )
    if avail is not None and size > avail:
        one = size * n_items / n_captions
        raise ConfigError(
            f"{what}; this machine has {avail / gb:.1f} GB available (fix: text_encodings=false (only the "
            f"diffusion prior's model.net.text_input=encodings reads them; its default, tokens, does not), captions=one ({one / gb:.1f} GB, but 1 of ~"
            f"{n_captions / n_items:.1f} captions per image), or data.max_items=<fewer images>)"
        )
    log.warning("%s (%s GB available)", what, "?" if avail is None else f"{avail / gb:.1f}")


def _first_image_caption_collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "caption": [s["caption"] for s in samples],
        "index": [s.get("index") for s in samples],  # the item served (a file dataset's substitute for a bad file)
    }


@torch.no_grad()
def embed_dataset(
    scorer,
    dataset,
    out_path: str | Path,
    batch_size: int = 128,
    num_workers: int = 0,
    progress: bool = True,
    meta: dict[str, Any] | None = None,
    text_encodings: bool = False,
    resume_key: dict[str, Any] | None = None,
    chunk_rows: int | None = None,
    captions: str = "auto",
) -> Path:
    """Encode every (image, caption) of ``dataset`` with ``scorer`` (a ``ClipScorer``) and save them to ``out_path``.

    Returns the path written. Rows are in dataset index order, so ``attach_embeddings`` can serve them by index.
    ``text_encodings`` also writes ``clip_text_encodings`` (float16) and ``clip_text_mask`` (see the module doc).
    An interrupted run resumes after its last chunk of ``chunk_rows`` rows (``zoo.feature_rows``) when run again
    with the same scorer, ``meta``, options and ``resume_key`` (what else decides the rows, e.g. the resolution).
    ``captions`` (``auto`` | ``one`` | ``all``, see ``caption_mode``): ``all`` writes the text rows of every caption
    of each item (the module doc's layout).
    """
    if isinstance(dataset, torch.utils.data.IterableDataset):  # webdataset: shuffled, endless, no index
        raise ConfigError(
            f"zoo-embed writes one row per dataset index, but {type(dataset).__name__} streams its samples without "
            f"an index (in shuffled order): the DataModule could never serve the rows (data.features needs a "
            f"map-style dataset) (fix: data=coco, data=folder data.root=<your image-caption folder>, or data=shapes)"
        )

    from zoo.checkpoint import atomic_torch_save
    from zoo.data.datamodule import CAPTION_COUNTS
    from zoo.feature_rows import compute_rows, finish_rows

    every = caption_mode(dataset, captions) == "all"
    if every and text_encodings:
        check_encodings_size(scorer, len(dataset), sum(len(dataset.caption_choices(i)) for i in range(len(dataset))))

    def encode(batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list]:
        texts = batch["caption"]
        if every:  # the captions of the item served (a substitute for an unreadable file brings its own)
            choices = [dataset.caption_choices(int(j)) for j in batch["index"]]
            texts = [c for cs in choices for c in cs]
        tokens = scorer.tokenize(texts)
        cols = {
            "clip_image_emb": scorer.encode_image(batch["image"]).cpu(),
            "clip_text_emb": scorer.encode_text(texts).cpu(),
            "clip_text_tokens": tokens.cpu().long(),
        }
        if text_encodings:
            e, m = text_token_encodings(scorer.model, tokens.to(scorer.device))
            cols["clip_text_encodings"], cols["clip_text_mask"] = e.half().cpu(), m.cpu()
        if every:
            cols[CAPTION_COUNTS] = torch.tensor([len(cs) for cs in choices], dtype=torch.long)
        return cols, batch["index"]

    # what the rows depend on: an interrupted run resumes only under the same CLIP, data and options
    identity = {
        "meta": meta or {},
        "clip_fingerprint": getattr(scorer, "fingerprint", None),
        "image_size": int(scorer.image_size),
        "text_encodings": bool(text_encodings),
        # only when all: the run key of a one-caption run is the one written before the option (its rows resume)
        **({"captions": "all"} if every else {}),
        **(resume_key or {}),
    }
    out, subst = compute_rows(
        dataset,
        out_path,
        identity,
        encode,
        batch_size=int(batch_size),
        collate_fn=_first_image_caption_collate,
        command="zoo-embed",
        what="CLIP embeddings",
        unit="pair",
        options={"num_workers": num_workers, "progress": progress, "chunk_rows": chunk_rows},
    )
    from zoo.models.clip.scorer import CLIP_SCORE_CONVENTION

    out["meta"] = {
        "n": len(out["clip_image_emb"]),
        "substituted_rows": subst,
        "dim": int(out["clip_image_emb"].shape[1]),
        "image_size": int(scorer.image_size),
        "convention": CLIP_SCORE_CONVENTION,
        "clip_fingerprint": getattr(
            scorer, "fingerprint", None
        ),  # which CLIP: the priors / decoder trained on this file keep it
        **({"captions": "all", "n_captions": int(out[CAPTION_COUNTS].sum())} if every else {}),
        **(meta or {}),
    }
    path = atomic_torch_save(out, out_path)
    finish_rows(out_path)
    return path


def load_embeddings(
    path: str | Path, meta: Optional[dict] = None, all_captions: bool = False
) -> dict[str, torch.Tensor]:
    """The tensors of a ``zoo-embed`` file (weights_only load); its ``meta`` (the CLIP, the split) is copied into
    ``meta`` when a dict is given. One row per item in every key (a ``captions=all`` file's text keys at each item's
    first caption), unless ``all_captions``: then the file's own layout (see the module doc)."""
    from zoo.checkpoint import safe_load

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"embedding file not found: {path} (fix: run zoo-embed for this split first)")
    obj = safe_load(path, fix="re-run the zoo-embed command that wrote it", mmap=True)
    if not isinstance(obj, dict) or not any(k in obj for k in EMBEDDING_KEYS):
        raise ConfigError(f"{path} is not a zoo-embed file (expected keys {EMBEDDING_KEYS})")
    if meta is not None and isinstance(obj.get("meta"), dict):
        meta.update(obj["meta"])
    from zoo.data.datamodule import check_feature_tensors, first_caption_rows

    feats = check_feature_tensors(
        {k: obj[k] for k in EMBEDDING_KEYS if k in obj}, path, "re-run the zoo-embed command that wrote it"
    )
    return feats if all_captions else first_caption_rows(feats)


def attach_embeddings(dataset, path: str | Path):
    """``dataset`` whose samples also carry ``clip_image_emb`` / ``clip_text_emb`` / ``clip_text_tokens`` (by index)
    from a ``zoo-embed`` file — the same wrapper DataModules use for ``data.features.<split>=<path>``."""
    from zoo.data.datamodule import FeatureAttached

    meta: dict[str, Any] = {}
    feats = load_embeddings(path, meta, all_captions=True)
    return FeatureAttached(dataset, feats, source=str(path), meta=meta)


def build_scorer(c: DictConfig | dict):
    """A ``ClipScorer`` from the ``clip`` config node: ``ClipScorer.from_config`` (kept as an alias)."""
    from zoo.models.clip.scorer import ClipScorer

    return ClipScorer.from_config(c)


def embed_options(cfg: DictConfig) -> tuple[str, int, bool]:
    """``(split, batch_size, text_encodings)`` of a zoo-embed config, checked before a CLIP or the data is built:
    a bad split was found only after the CLIP had loaded, ``batch_size=-2`` was torch's bare ValueError,
    ``batch_size=0`` ran with 128 and ``text_encodings=no`` (a string) wrote the encodings, all without a word;
    ``clip.device=cuda`` without a GPU was torch's "no NVIDIA driver" and ``clip.arch`` alone embedded with an
    untrained CLIP."""
    from zoo.feature_rows import split_and_batch_size

    split, batch_size = split_and_batch_size(cfg, 128)
    text_encodings = cfg.get("text_encodings")
    text_encodings = False if text_encodings is None else check_switch("text_encodings", text_encodings)
    check_caption_option("auto" if cfg.get("captions") is None else cfg.get("captions"))
    clip = cfg.get("clip") or {}
    check_device(clip.get("device"), "clip.device")  # torch's "Found no NVIDIA driver" came from inside the load
    if clip.get("arch") and not clip.get("checkpoint") and not clip.get("pretrained"):
        # open_clip builds the architecture with random weights: every row of the file would be noise, and the prior
        # or decoder trained on it learns nothing, without a word
        raise ConfigError(
            f"clip.arch={clip.get('arch')} without clip.pretrained or clip.checkpoint is an untrained CLIP: its "
            f"embeddings are noise (fix: clip.pretrained=<open_clip tag, e.g. openai> or clip.checkpoint=<file>)"
        )
    return split, batch_size, text_encodings


def embed(cfg: DictConfig) -> Path:
    """Plain function behind ``zoo-embed`` (testable without Hydra's runtime)."""
    from omegaconf import OmegaConf

    from zoo.config import instantiate
    from zoo.models.clip.scorer import ClipScorer

    split, batch_size, text_encodings = embed_options(cfg)
    scorer = ClipScorer.from_config(cfg.clip)
    dm = instantiate(cfg.data, "data")
    source = {k: v for k, v in OmegaConf.to_container(cfg.clip, resolve=True).items() if v is not None}
    path = embed_dataset(
        scorer,
        dm.dataset(split),
        cfg.out,
        batch_size=batch_size,
        meta={"clip": source, "split": split, "data": dm.features_identity(split)},  # checked where it is served
        text_encodings=text_encodings,
        captions="auto" if cfg.get("captions") is None else cfg.get("captions"),  # as embed_options checked it
        # features_identity leaves out the resolution (the same scenes), but the pixels CLIP sees change with it
        resume_key={"resolution": dm.resolution},
    )
    log.info("wrote %s (serve with data.features.%s=%s)", path, split, path)
    print(path)
    return path


main = entry_point(embed, "embed")


if __name__ == "__main__":
    main()
