"""The DataModule every model in the zoo trains on.

Subclasses only say how to build a split's dataset (``build_dataset``); batching, text tokenisation,
resumable shuffling, DDP sharding and optional precomputed features (image tokens, CLIP embeddings) live here,
once. Batches are dicts with the keys listed in docs/CONTRACTS.md, so any model fits any data.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import numbers
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset, IterableDataset

from zoo.data.collate import Collator
from zoo.data.loader import ResumableDataLoader
from zoo.errors import ConfigError, check_whole, is_number, is_whole

SPLITS = ("train", "val", "test")
log = logging.getLogger(__name__)


# Per-index tensors a features file may carry (zoo-tokenize: image_tokens; zoo-embed: the CLIP keys, optionally the
# per-token text encodings the diffusion prior's `encodings` mode reads). Anything else in a file is ignored.
FEATURE_KEYS = (
    "image_tokens",
    "clip_image_emb",
    "clip_text_emb",
    "clip_text_tokens",
    "clip_text_encodings",
    "clip_text_mask",
    "clip_caption_counts",
)
# zoo-embed captions=all writes these one row per caption (item i's captions are the clip_caption_counts[i] rows
# after those of the items before it, in the dataset's caption_choices order) and the others one row per item
TEXT_KEYS = tuple(k for k in FEATURE_KEYS if k.startswith("clip_text_"))
CAPTION_COUNTS = "clip_caption_counts"


def caption_starts(counts: Any) -> Any:
    """(N + 1,) row offsets of an all-captions file: item i's caption rows are ``starts[i]:starts[i + 1]``."""
    import torch

    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def first_caption_rows(features: dict[str, Any]) -> dict[str, Any]:
    """One row per item: an all-captions file's per-caption keys at each item's first caption (what a reader that
    pairs row i of every key expects: eval.prior, zoo-recaption); other files as they are. A copy of those rows: for
    readers that drop the file's own tensors (``load_embeddings``); a dataset that keeps them serves
    ``FirstCaptionColumn`` views instead. A check or fit of what training draws reads ``every_caption_row``."""
    counts = features.get(CAPTION_COUNTS)
    if counts is None:
        return features
    first = caption_starts(counts)[:-1]
    return {k: (v[first] if k in TEXT_KEYS else v) for k, v in features.items() if k != CAPTION_COUNTS}


def every_caption_row(source: Any) -> tuple[dict[str, Any], Optional[Any]]:
    """The text keys with every row training can serve, and the item of each row: ``(columns, items)``.

    ``source``: a ``FeatureAttached`` dataset or a file's tensors (``load_embeddings(..., all_captions=True)``). For a
    ``zoo-embed captions=all`` file ``columns`` hold all M caption rows and ``items`` (M,) long the item each belongs
    to (pair row r with the image rows of ``items[r]``); otherwise the one row per item and ``items`` None. A check
    or fit on the whole-column view (``features``: each item's first caption) missed the other ~4 in 5 COCO train
    captions that training draws: a token id past a model's vocabulary there passed its check."""
    import torch

    if isinstance(source, FeatureAttached) and source.caption_start is not None:
        counts = source.caption_start.diff()
        return dict(source.caption_rows), torch.repeat_interleave(torch.arange(len(counts)), counts)
    if not isinstance(source, Mapping):  # (a dataset: its one-row-per-item features)
        source = getattr(source, "features", None) or {}
    columns = {k: v for k, v in source.items() if k in TEXT_KEYS}
    counts = source.get(CAPTION_COUNTS)
    return columns, (None if counts is None else torch.repeat_interleave(torch.arange(len(counts)), counts))


class FirstCaptionColumn:
    """A per-caption column read as one row per item (each item's first caption), without copying it.

    ``FeatureAttached.features`` gives every key one row per item, for readers of whole columns (the models' data
    checks, the AR prior's PCA fit). An all-captions file's text keys hold ~5 rows per item; a copy of their first
    rows, kept beside them, was ~13 GB more at COCO train with ViT-H encodings (+20%). This view answers the shape
    questions most readers ask (``shape``, ``dtype``, ``dim()``, ``len()``, ``numel()``) from the column itself, and
    indexing through the first-caption offsets. Any other tensor method or ``torch`` function gets ``values()``,
    the copy of the first rows, made for that call only."""

    def __init__(self, rows: Any, first: Any):
        """``rows``: (M, ...) one row per caption; ``first``: (N,) long, the row of each item's first caption."""
        self._rows = rows
        self._first = first

    @property
    def shape(self) -> Any:
        import torch

        return torch.Size((len(self._first), *self._rows.shape[1:]))

    @property
    def dtype(self) -> Any:
        return self._rows.dtype

    @property
    def device(self) -> Any:
        return self._rows.device

    @property
    def ndim(self) -> int:
        return self._rows.dim()

    def dim(self) -> int:
        return self._rows.dim()

    def size(self, dim: Optional[int] = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def numel(self) -> int:
        return self.shape.numel()

    def __len__(self) -> int:
        return len(self._first)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, tuple):  # (items, then positions within a row)
            return self._rows[(self._first[index[0]], *index[1:])] if index else self.values()
        return self._rows[self._first[index]]

    def values(self) -> Any:
        """The (N, ...) tensor of the first rows (a copy: a reader that needs the values holds them while it reads)."""
        return self._rows[self._first]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # (copy / pickle probe for hooks; and no recursion before __init__ has run)
            raise AttributeError(name)
        return getattr(self.values(), name)

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        def unwrap(x: Any) -> Any:
            if isinstance(x, cls):
                return x.values()
            if isinstance(x, (list, tuple)):
                return type(x)(unwrap(v) for v in x)
            return x

        return func(*unwrap(args), **{k: unwrap(v) for k, v in (kwargs or {}).items()})

    def __repr__(self) -> str:
        return f"FirstCaptionColumn(shape={tuple(self.shape)}, dtype={self.dtype}, of {len(self._rows)} caption rows)"


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | Path) -> Optional[str]:
    """A file's content as a blake2b hex digest (None when it is not a file), for ``features_identity``: a size
    alone let an annotation file edited in place (same length, other images or captions) pass as the same data. No
    path or time enters it, so a moved or copied folder matches. Computed once per (path, size, mtime_ns) in this
    process (COCO's ~90 MB captions json takes a few tenths of a second; every split and zoo-embed ask for it)."""
    p = Path(path).expanduser()
    if not p.is_file():
        return None
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.blake2b(digest_size=16)
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def served_index(sample: Mapping[str, Any], requested: int, n: int) -> int:
    """The index of the item a sample actually holds: its ``index`` key when it has one. A file dataset serves the
    next readable item in place of an unreadable one (``CocoCaptions``), so per-index rows (features, synthetic
    captions) must be looked up by what was served, not by what was asked for."""
    j = sample.get("index", requested)
    if isinstance(j, numbers.Integral) and not isinstance(j, bool) and -n <= int(j) < n:
        return int(j)
    return requested


def substituted_rows(served: Sequence[Any], n: int) -> list[int]:
    """The rows of a per-index file (zoo-embed, zoo-tokenize: row r written from the sample requested at index r)
    that hold another item: ``served`` is each row's sample ``index`` (None when the dataset does not say)."""
    return [r for r, s in enumerate(served) if s is not None and served_index({"index": int(s)}, r, n) != r]


def report_substituted_rows(rows: list[int], command: str, what: str, log_: logging.Logger) -> None:
    """One WARNING naming the rows ``substituted_rows`` found (nothing when none): the DataModule serves those rows only
    with the substitute image while the file stays unreadable; repaired, it would get another image's rows."""
    if rows:
        shown = ", ".join(map(str, rows[:10])) + (f", ... ({len(rows) - 10} more)" if len(rows) > 10 else "")
        one = len(rows) == 1  # "1 rows hold ... If you repair those files" read wrong for the usual single bad file
        log_.warning(
            "%s: %d %s the %s of the next readable image, %s could not be read (%s %s; recorded in the file's "
            "meta['substituted_rows']). If you repair %s, run %s again: a repaired image would be served with its "
            "neighbour's rows",
            command,
            len(rows),
            "row holds" if one else "rows hold",
            what,
            "its own file" if one else "their own files",
            "row" if one else "rows",
            shown,
            "that file" if one else "those files",
            command,
        )


class FeatureAttached(Dataset):
    """Adds precomputed per-index tensors (``image_tokens``, ``clip_image_emb``, ...) to a dataset's samples.

    A ``zoo-embed captions=all`` file holds the text features of every caption of an item (``clip_caption_counts``):
    each access serves the rows of the caption the base dataset drew for it (COCO train: one per (seed, epoch,
    index), so another caption each epoch, the same after a resume), found among the base's ``caption_choices``.
    ``features`` then holds one row per item (text keys at the first caption, ``FirstCaptionColumn`` views of the
    caption rows), for readers of whole columns."""

    def __init__(
        self, base: Dataset, features: dict[str, Any], source: Optional[str] = None, meta: Optional[dict] = None
    ):
        """``source``: where the features come from (e.g. ``data.features.val=<file>``), named in the row-count
        error: a user with a train and a val file must be told which one was made for another split or size.
        ``meta``: the file's ``meta`` (zoo-embed's names the CLIP: ``clip_fingerprint``), kept as ``features_meta``."""
        self.base = base
        self.features_meta = dict(meta or {})
        where = f"{source}: " if source else ""
        n = len(base)  # type: ignore[arg-type]
        self.caption_start = None  # (N + 1,) row offsets of an all-captions file's text keys (caption_starts)
        self.features = features
        counts = features.get(CAPTION_COUNTS)
        if counts is not None:  # the text keys as one row per item: views of the caption rows, not a copy of them
            starts = caption_starts(counts)
            self.features = {
                k: (FirstCaptionColumn(v, starts[:-1]) if k in TEXT_KEYS else v)
                for k, v in features.items()
                if k != CAPTION_COUNTS
            }
            # (another count is refused below, on the image rows, as are the text keys' views then)
            if len(counts) == n and any(k in TEXT_KEYS for k in features):
                self._check_caption_counts(counts, where)
                self.caption_start = starts
        for key, value in self.features.items():
            if len(value) != n:
                raise ConfigError(
                    f"{where}precomputed '{key}' has {len(value)} rows but the dataset split has {n} items "
                    "(fix: recompute it for this split and size, or match data.*_size to it)"
                )

    @functools.cached_property
    def caption_rows(self) -> dict[str, Any]:
        """An all-captions file's text keys with every caption's row, which the drawn caption's rows are served from
        (``every_caption_row`` reads them too): the columns under ``features``' ``FirstCaptionColumn`` views, not a
        second reference kept beside them. Empty for other files. Cached: ``__getitem__`` reads it for every sample."""
        if self.caption_start is None:
            return {}
        return {k: v._rows for k, v in self.features.items() if isinstance(v, FirstCaptionColumn)}

    def _check_caption_counts(self, counts: Any, where: str) -> None:
        """Every item's caption count in the file is the base's: the rows of caption k are found by position."""
        choices = getattr(self.base, "caption_choices", None)
        if not callable(choices):
            raise ConfigError(
                f"{where}the file holds every caption of each item (zoo-embed captions=all), but "
                f"{type(self.base).__name__} does not list an item's captions, so the drawn caption's rows cannot "
                f"be found (fix: re-run zoo-embed with captions=one for this data)"
            )
        substituted = set(self.features_meta.get("substituted_rows") or ())  # hold a neighbour's; never served
        differ = [i for i, c in enumerate(counts.tolist()) if i not in substituted and c != len(choices(i))]
        if differ:
            i = differ[0]
            raise ConfigError(
                f"{where}the file holds {int(counts[i])} captions for item {i} but the dataset has "
                f"{len(choices(i))} ({len(differ)} items differ): it was made from other captions (fix: re-run the "
                f"zoo-embed command on this data)"
            )

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = dict(self.base[i])
        j = served_index(sample, i, len(self))  # a substitute for an unreadable file gets its own rows
        for key, value in self.features.items():
            if not isinstance(value, FirstCaptionColumn):  # (the drawn caption's rows are served below)
                sample[key] = value[j]
        if self.caption_start is not None:  # the rows of the caption the base drew for this access
            choices = self.base.caption_choices(j)  # type: ignore[attr-defined]
            if sample.get("caption") not in choices:
                raise ConfigError(
                    f"item {j} was served with the caption {sample.get('caption')!r}, none of the {len(choices)} "
                    f"captions its features were embedded from (fix: serve the zoo-embed captions=all file on the "
                    f"dataset it was made from, without synthetic captions)"
                )
            row = int(self.caption_start[j]) + choices.index(sample["caption"])  # equal strings: equal rows
            for key, value in self.caption_rows.items():
                sample[key] = value[row]
        return sample


class SyntheticCaptioned(Dataset):
    """Replaces a sample's ``caption`` with a synthetic one (``zoo-recaption``) with the probabilities of a caption mix.

    ``captions``: style -> list of captions in dataset index order; ``probs``: style -> absolute probability (their
    sum is the chance that a sample gets a synthetic caption; otherwise the base dataset's own caption stays). The
    draw for ``index`` is a pure function of ``(seed, index)`` (one ``numpy`` stream per index), so any worker, order
    or resume sees the same caption. The chosen style is in ``caption_style`` (the base's own, else ``native_style``,
    when the base caption stays); every sample's ``captions`` dict also
    holds its caption of every synthetic style (so a model can read pairs of styles, e.g. the prompt upsampler).
    Other attributes are the base's."""

    _STREAM = 0x5CA9  # a constant third key: these draws never coincide with another stream keyed by (seed, index)

    def __init__(
        self,
        base: Dataset,
        captions: Mapping[str, list[str]],
        probs: Mapping[str, float],
        seed: int = 0,
        native_style: str = "alt",
    ):
        self.base = base
        self.native_style = native_style  # the caption_style of a base sample that says none (COCO's caption: alt)
        self.captions = {k: list(v) for k, v in captions.items()}
        self.styles = tuple(s for s, p in probs.items() if p > 0)
        self.cdf = np.cumsum([float(probs[s]) for s in self.styles])
        self.seed = int(seed)
        n = len(base)  # type: ignore[arg-type]
        for style, caps in self.captions.items():
            if len(caps) != n:
                raise ConfigError(
                    f"synthetic captions '{style}' have {len(caps)} rows but the dataset split has {n} "
                    f"items (fix: run zoo-recaption on this split and size, or match data.*_size to it)"
                )

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:  # the base's attributes (``scene``, ``skipped``, ...)
        if name.startswith("__") or "base" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["base"], name)

    def style_of(self, index: int) -> Optional[str]:
        """The synthetic style drawn for ``index``, or None (the base's own caption)."""
        u = np.random.default_rng([self.seed, self._STREAM, int(index)]).random()
        k = int(np.searchsorted(self.cdf, u, side="right"))
        return self.styles[k] if k < len(self.styles) else None

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = dict(self.base[i])
        i = served_index(sample, int(i), len(self))  # a substitute for an unreadable file gets its own captions
        sample["captions"] = {**(sample.get("captions") or {}), **{s: c[i] for s, c in self.captions.items()}}
        style = self.style_of(i)
        if style is not None:
            sample["caption"] = self.captions[style][i]
            sample["caption_style"] = style
        else:  # every sample has the key: the collate takes the first sample's keys (a KeyError on mixed batches)
            sample.setdefault("caption_style", self.native_style)
        return sample


def load_synthetic_captions(path: str | Path) -> list[str]:
    """The ``captions`` of a ``zoo-recaption`` file (weights_only load), checked to be a list of strings."""
    from zoo.checkpoint import safe_load

    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"synthetic captions file not found: {path} (fix: run `zoo-recaption ckpt=<captioner ckpt> "
            f"features=<zoo-embed file of the split> out={path}` first)"
        )
    obj = safe_load(path, fix="re-run the zoo-recaption command that wrote it")
    caps = obj.get("captions") if isinstance(obj, dict) else None
    if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
        raise ConfigError(f"{path} is not a zoo-recaption file (expected {{'captions': list[str], 'meta': ...}})")
    return caps


def split_caption_mix(
    caption_mix: Optional[Mapping[str, float]], native: tuple[str, ...], synthetic: tuple[str, ...]
) -> tuple[dict[str, float], Optional[dict[str, float]]]:
    """(synthetic style -> absolute probability, native mix or None) of a caption mix whose styles are the dataset's
    own (``native``) or the names of ``data.synthetic_captions`` (``synthetic``). The native part is returned as
    given (the dataset normalises it); None when the mix names no native style."""
    if caption_mix is None:
        return {}, None
    if not hasattr(caption_mix, "items") or not caption_mix:
        raise ConfigError(
            f"data.caption_mix must be a non-empty mapping style -> proportion, got {caption_mix!r} "
            f"(fix: e.g. {{descriptive: 0.95, alt: 0.05}}, or null)"
        )
    for style, p in caption_mix.items():
        if style not in native and style not in synthetic:
            hint = (
                ""
                if synthetic
                else (
                    f" -- a synthetic style needs its file: data.synthetic_captions={{{style}: <zoo-recaption file>}}"
                )
            )
            raise ConfigError(
                f"unknown caption style {style!r} in data.caption_mix; valid styles: "
                f"{tuple(native) + tuple(synthetic)}{hint}"
            )
        if not is_number(p, 0):
            raise ConfigError(f"data.caption_mix proportions must be finite numbers >= 0, got {style}={p!r}")
    total = float(sum(caption_mix.values()))
    if total <= 0:
        raise ConfigError("data.caption_mix proportions sum to 0 (fix: e.g. {descriptive: 0.95, alt: 0.05})")
    synth = {s: float(p) / total for s, p in caption_mix.items() if s in synthetic}
    nat = {s: float(p) for s, p in caption_mix.items() if s in native and p > 0}
    return synth, (nat or None)


class StreamLoader(DataLoader):
    """DataLoader over a streamed split (WebDataset shards) that refuses an epoch without a single batch.

    Shards whose every sample is unreadable (a corrupt copy, images or captions under keys the decoder does not read)
    made each pass end at once: every bad item was warned about once, then fit spun through empty epochs for ever
    (Lightning's max_steps and max_time are checked after batches, so it never stopped)."""

    def __init__(self, dataset, batch_size: int, split: str = "train", **kwargs):
        super().__init__(dataset, batch_size=batch_size, **kwargs)
        self.split = split

    def __iter__(self):
        batches = 0
        for batch in super().__iter__():
            batches += 1
            yield batch
        if batches == 0:
            counter = getattr(self.dataset, "skip_counter", None)
            skipped = int(counter.skipped) if counter is not None else 0
            examples = ", ".join(getattr(counter, "examples", None) or [])
            if skipped:
                why = f"{skipped} bad samples or shards were skipped{f' (e.g. {examples})' if examples else ''}"
            else:  # nothing bad met: no shard reached this process (more ranks than shards) or the shards are empty
                shards = len(getattr(getattr(self.dataset, "shards", None), "urls", None) or [])
                why = f"its {shards} shards gave this process nothing (empty shards, or fewer shards than ranks)"
            raise ConfigError(
                f"the {self.split} split streamed no sample in a whole epoch: {why} (fix: shards of jpg/png/webp "
                f"images with a txt or json caption, as img2dataset writes, at least one per rank; "
                f"data.{self.split}_urls=<readable shards>)"
            )


class ImageTextDataModule(L.LightningDataModule):
    """Base DataModule: image/caption datasets per split -> dict batches.

    Args:
        resolution: square image side in pixels (models check it in ``check_data``).
        batch_size: per-process batch size.
        num_workers: DataLoader workers (0 = load in the main process; best for tiny CPU runs).
        tokenizer: a ``zoo.text.TextTokenizer`` or None; when set, batches carry ``text_tokens``.
        seed: shuffling seed (the order is a pure function of seed and epoch, so resumes are exact).
        features: optional ``{split: path}`` of files written by ``zoo-tokenize`` / ``zoo-embed``.
        eval_batch_size: val/test batch size (defaults to batch_size).
        caption_mix: style -> proportion of the training captions (train split only; DALL·E 3's blends). Styles are
            the dataset's own (``NATIVE_CAPTION_STYLES``: ``alt`` = the dataset's caption for COCO / WebDataset; the
            shapes world's ``alt``/``short``/``descriptive``) and the names given in ``synthetic_captions``.
        synthetic_captions: ``{style: <zoo-recaption file of the train split>}``: new caption styles. A training
            sample's caption is replaced by its synthetic caption with the style's share of the mix, drawn per
            (``seed``, index) (``SyntheticCaptioned``), e.g. ``{synthetic_descriptive: 0.95, alt: 0.05}``.
    """

    # the dataset's own caption styles a caption_mix may name (subclasses with several override this)
    NATIVE_CAPTION_STYLES: tuple[str, ...] = ("alt",)
    # features_identity keys added after feature files had been written without them: (part, key) -> what it records.
    # Such a file is compared on the keys it has (it stays usable), with a warning naming what was not checked.
    LATER_IDENTITY_KEYS: dict[tuple[str, str], str] = {
        ("captions", "synthetic_captions_blake2b"): "the synthetic caption files' content",
    }

    def __init__(
        self,
        resolution: int = 32,
        batch_size: int = 32,
        num_workers: int = 0,
        tokenizer=None,
        seed: int = 0,
        features: Optional[dict[str, str]] = None,
        eval_batch_size: Optional[int] = None,
        pin_memory: bool = False,
        caption_mix: Optional[dict[str, float]] = None,
        synthetic_captions: Optional[dict[str, str]] = None,
    ):
        super().__init__()
        # whole numbers, checked here (before training): int() took 2.5 for 2 and true for 1 without a word, a string
        # was a bare TypeError / ValueError, and resolution=0 failed at set-up of coco / webdataset as "resolution
        # must be >= 1" not naming the option
        for option, value, least, fix in (
            ("data.resolution", resolution, 1, "64, the image side in pixels"),
            ("data.batch_size", batch_size, 1, 32),
            ("data.num_workers", num_workers, 0, "0 (load in the main process) or more"),
            ("data.seed", seed, None, "0 (the run's seed by default)"),
        ):
            check_whole(option, value, least, fix)
        # 0 was taken as "unset", -1 failed later
        check_whole("data.eval_batch_size", eval_batch_size, 1, "null (= data.batch_size)", none_ok=True)
        self.resolution = int(resolution)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        if isinstance(tokenizer, dict) and not tokenizer:  # data/tokenizer=none composes to an empty node
            tokenizer = None
        self.tokenizer = tokenizer
        self.seed = int(seed)
        if features is not None and not hasattr(features, "items"):
            raise ConfigError(
                f"data.features must map a split to a file, got {features!r} (fix: data.features.train=<file>, "
                f"data.features.val=<file>, ...)"
            )
        self.features = {k: v for k, v in (features or {}).items() if v}
        unknown = sorted(set(self.features) - set(SPLITS))
        if unknown:  # a misspelt split's file was never read: the run trained without its features, silently
            raise ConfigError(
                f"data.features.{unknown[0]}: unknown split {unknown[0]!r}; expected one of {SPLITS} "
                f"(fix: data.features.train=<file>, data.features.val=<file> or data.features.test=<file>)"
            )
        self.pin_memory = pin_memory
        self.caption_mix = dict(caption_mix) if caption_mix else None
        self.synthetic_captions = {str(k): str(v) for k, v in (synthetic_captions or {}).items() if v}
        clash = set(self.synthetic_captions) & set(self.NATIVE_CAPTION_STYLES)
        if clash:
            raise ConfigError(
                f"data.synthetic_captions style {sorted(clash)[0]!r} is one of the dataset's own styles "
                f"{self.NATIVE_CAPTION_STYLES} (fix: name it e.g. synthetic_descriptive)"
            )
        self.synthetic_mix, self.native_caption_mix = split_caption_mix(
            self.caption_mix, self.NATIVE_CAPTION_STYLES, tuple(self.synthetic_captions)
        )
        self.datasets: dict[str, Dataset] = {}
        self.collate = Collator(tokenizer)

    # -- to be provided by subclasses ---------------------------------------------------------------
    def build_dataset(self, split: str) -> Dataset:
        raise NotImplementedError

    def train_captions(self) -> Iterable[str]:
        """Captions to fit a trainable text tokenizer on (override for speed if the dataset can)."""
        ds = self.dataset("train")
        for i in range(len(ds)):  # type: ignore[arg-type]
            yield ds[i]["caption"]

    def data_identity(self) -> dict[str, Any]:
        """What the training captions are a function of (JSON-able): the key of anything fitted on them, such as a
        trained BPE (``LazyTrainedBPE``). Subclasses add their fields to this one; a change must change the key."""
        cls = type(self)
        out: dict[str, Any] = {"datamodule": f"{cls.__module__}.{cls.__qualname__}"}
        if self.synthetic_captions:  # which synthetic captions (file identity) and which draw
            files = {}
            for style in self.synthetic_captions:
                p = Path(self.synthetic_captions[style]).expanduser().resolve()
                st = p.stat() if p.is_file() else None
                files[style] = {
                    "path": str(p),
                    "size": st.st_size if st else None,
                    "mtime_ns": st.st_mtime_ns if st else None,
                }
            out.update(synthetic_captions=files, caption_mix=self.caption_mix, synthetic_seed=self.seed)
        return out

    def features_identity(self, split: str) -> dict[str, dict[str, Any]]:
        """What a split's items are a function of, for the feature files made from them (zoo-embed, zoo-tokenize):
        ``{"images": {...}, "captions": {...}}`` of plain values. zoo-embed records both parts in its file's meta
        (image and text embeddings), zoo-tokenize the images part (image codes), and ``dataset`` refuses a file whose
        recorded values differ from this DataModule's: a file made from another world seed, caption style or COCO
        copy of the same size was served by index as if it described these items. Only what changes the items goes
        in (not paths, sizes checked by row count, or the resolution: the same scenes), so that a moved folder or
        another split size is no false alarm. Subclasses add their fields."""
        cls = type(self)
        images: dict[str, Any] = {"datamodule": f"{cls.__module__}.{cls.__qualname__}"}
        captions: dict[str, Any] = {}
        if split == "train" and self.synthetic_captions:  # which recaptions (by file size) and which draw
            captions["synthetic_captions"] = {
                style: (Path(p).expanduser().stat().st_size if Path(p).expanduser().is_file() else None)
                for style, p in sorted(self.synthetic_captions.items())
            }
            # by content too: a recaption of the same byte count (another captioner, "a red" for "a tan") passed
            captions["synthetic_captions_blake2b"] = {
                style: file_digest(p) for style, p in sorted(self.synthetic_captions.items())
            }
            captions.update(caption_mix=self.caption_mix, synthetic_seed=self.seed)
        return {"images": images, "captions": captions}

    def check_features_identity(self, split: str, path: Any, meta: dict[str, Any], feats: dict[str, Any]) -> None:
        """Check a feature file's recorded data (its meta's ``data``, ``features_identity``) against this split's.
        Other images (another world seed, object counts, COCO year or annotation file): a ConfigError, every row
        describes other items. Other captions only (another caption style or blend, a DALL·E 3 captioner fine-tuned
        on another style from the same files): the image features stay right, the text ones (embeddings, tokens,
        encodings) would describe captions this run does not serve, so they are dropped from ``feats`` with a
        warning; a model that needs them then says the file lacks them. Files written before the record was kept
        carry none and are served as before."""
        recorded = meta.get("data")
        if not isinstance(recorded, dict):
            return
        current = self.features_identity(split)
        diffs: dict[str, list[str]] = {}
        unrecorded: dict[str, list[str]] = {}  # part -> keys newer than the file: compared on what it has
        for part, values in recorded.items():
            if not isinstance(values, dict) or part not in current:
                continue
            for key in sorted(set(values) | set(current[part])):
                if key not in values and (part, key) in self.LATER_IDENTITY_KEYS:
                    unrecorded.setdefault(part, []).append(self.LATER_IDENTITY_KEYS[(part, key)])
                elif values.get(key) != current[part].get(key):
                    diffs.setdefault(part, []).append(
                        f"{key}: {values.get(key)!r} in the file, {current[part].get(key)!r} here"
                    )
        fix = "re-run the zoo-embed / zoo-tokenize command with this run's data options, or set the data options the "
        if "images" in diffs:
            raise ConfigError(
                f"data.features.{split}={path} was made from other images than this run's {split} split ("
                + "; ".join(diffs["images"])
                + f"): its rows would be served as if they described these items (fix: {fix}file was made with)"
            )
        unchecked = [what for part, whats in unrecorded.items() if part not in diffs for what in whats]
        if unchecked:  # (a part that differs anyway is refused or dropped below: no need to say more about it)
            log.warning(
                "data.features.%s=%s was written before %s entered its record: it is served on its sizes alone, so "
                "a file edited in place to the same size would go unnoticed (fix: re-run the zoo-embed / zoo-tokenize "
                "command that wrote it, to record them)",
                split,
                path,
                " and ".join(unchecked),
            )
        text = [k for k in feats if k.startswith("clip_text_")]
        if "captions" in diffs and text:
            for k in text:
                del feats[k]
            feats.pop(CAPTION_COUNTS, None)  # (no per-caption rows left to count)
            log.warning(
                "data.features.%s=%s was made from other captions (%s): its image features are served, its text "
                "features (%s) are not, since they describe captions this run does not serve (fix, where a model "
                "needs them: %sfile was made with)",
                split,
                path,
                "; ".join(diffs["captions"]),
                ", ".join(text),
                fix,
            )

    def skip_counts(self) -> dict[str, dict[str, Any]]:
        """``{split: {"skipped": n, "examples": [...], "what": str}}`` for the built splits that skipped bad items
        (corrupt COCO images, bad WebDataset samples or shards)."""
        out: dict[str, dict[str, Any]] = {}
        for split, ds in self.datasets.items():
            ds = getattr(ds, "base", ds)  # FeatureAttached
            counter = getattr(ds, "skip_counter", None)  # webdataset
            n = int(counter.skipped if counter is not None else getattr(ds, "skipped", 0) or 0)
            if n:
                examples = list(getattr(counter, "examples", None) or getattr(ds, "skipped_files", None) or [])
                what = "bad WebDataset samples/shards" if counter is not None else "unreadable images"
                out[split] = {"skipped": n, "examples": examples[:5], "what": what}
        return out

    def log_skip_summary(self, splits: Optional[Iterable[str]] = None) -> dict[str, dict[str, Any]]:
        """One WARNING line per split that skipped bad data (nothing when none did); returns ``skip_counts``."""
        counts = self.skip_counts()
        for split, c in counts.items():
            if splits is not None and split not in splits:
                continue
            shown = ", ".join(map(str, c["examples"]))
            more = f", ... ({c['skipped'] - len(c['examples'])} more)" if c["skipped"] > len(c["examples"]) else ""
            log.warning(
                "data summary: skipped %d %s in the %s split%s",
                c["skipped"],
                c["what"],
                split,
                f": {shown}{more}" if shown else " (see the warnings above for which)",
            )
        return counts

    def teardown(self, stage: Optional[str] = None) -> None:
        """Lightning calls this at the end of fit / validate / test (also after an interruption): summarise skips."""
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        self.log_skip_summary(wanted.get(stage or "", SPLITS))

    # -- shared machinery -------------------------------------------------------------------------------
    def dataset(self, split: str) -> Dataset:
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; expected one of {SPLITS} (fix: split=train, val or test)")
        if split not in self.datasets:
            ds = self.build_dataset(split)
            if split == "train" and self.synthetic_captions:
                ds = self._with_synthetic_captions(ds)
            if split in self.features:
                path = self.features[split]
                if isinstance(ds, IterableDataset):
                    raise ConfigError(
                        f"data.features.{split}={path}: precomputed features are served by dataset index, but "
                        f"{type(self).__name__} streams its samples (no index; shuffled) (fix: drop "
                        f"data.features.{split}, or train from a map-style dataset: data=coco, data=folder or "
                        f"data=shapes)"
                    )
                meta: dict[str, Any] = {}
                feats = load_features(path, split, meta)
                self.check_features_identity(split, path, meta, feats)
                ds = FeatureAttached(ds, feats, source=f"data.features.{split}={path}", meta=meta)
            self.datasets[split] = ds
        return self.datasets[split]

    def _with_synthetic_captions(self, ds: Dataset) -> Dataset:
        if isinstance(ds, IterableDataset):
            raise ConfigError(
                f"data.synthetic_captions needs a map-style dataset (captions are served by index); "
                f"{type(self).__name__} streams its samples (fix: recaption and serve shapes or COCO, "
                f"or write the synthetic captions into the shards' txt)"
            )
        captions = {s: load_synthetic_captions(p) for s, p in self.synthetic_captions.items()}
        return SyntheticCaptioned(ds, captions, self.synthetic_mix, self.seed, self.NATIVE_CAPTION_STYLES[0])

    def prepare_tokenizer(self) -> None:
        """Train / load a tokenizer that needs the training captions (``TrainedBPETokenizer``)."""
        ensure = getattr(self.tokenizer, "ensure_ready", None)
        if callable(ensure):
            if "fit_key" in inspect.signature(ensure).parameters:  # a cache keyed by what it is fitted on
                ensure(self.tokenizer_captions, fit_key=self.tokenizer_fit_key())
            else:
                ensure(self.tokenizer_captions)

    def tokenizer_captions(self) -> Iterable[str]:
        """The captions a trainable tokenizer is fitted on: the training captions as served (subclasses may widen)."""
        return self.train_captions()

    def tokenizer_fit_key(self) -> dict[str, Any]:
        """The cache key of that fit: what ``tokenizer_captions`` are a function of."""
        return self.data_identity()

    def setup(self, stage: Optional[str] = None) -> None:
        self.prepare_tokenizer()
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage or "", SPLITS):
            self.dataset(split)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = self.dataset(split)
        common = dict(
            num_workers=self.num_workers,
            collate_fn=self.collate,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )
        bs = self.batch_size if split == "train" else self.eval_batch_size
        if isinstance(ds, IterableDataset):  # webdataset shards shard themselves over ranks/workers
            return StreamLoader(ds, batch_size=bs, split=split, **common)
        loader = ResumableDataLoader(ds, batch_size=bs, shuffle=shuffle, seed=self.seed, drop_last=shuffle, **common)
        if split == "train":
            loader.on_restore = self._move_lightning_batch_count
        if shuffle and len(loader) == 0:
            # drop_last with fewer items than a batch: Lightning ends fit with "No training batches" and exit code 0,
            # and the run then tests and saves an untrained model as if it had trained
            n = len(loader.sampler)  # type: ignore[arg-type]
            raise ConfigError(
                f"data.batch_size={bs} is more than the {n} items of the {split} split (per process), so an epoch "
                f"has no full batch and nothing would be trained (fix: data.batch_size<={n}, or a larger {split} "
                f"split)"
            )
        return loader

    def _move_lightning_batch_count(self, saved: int, now: int) -> None:
        """A mid-epoch resume with another ``data.batch_size`` (e.g. doubled once memory allows): the loader skips the
        samples seen, but Lightning restored its count of the epoch's batches in the old size and ends the epoch when
        that count reaches the new length -- 3 batches of 2 of 24 samples, then batches of 4, stopped after 3 of the 4
        full batches left, never training on 4 of the epoch's samples. Its counters of this epoch are moved to the count in the
        new size (``saved`` -> ``now``), as an uninterrupted run at that size would read; steps are not changed."""
        trainer = self.trainer
        progress = getattr(getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None), "batch_progress", None)
        if progress is None:
            return
        shift = now - saved
        current = progress.current
        for counter in ("ready", "started", "processed", "completed"):
            setattr(current, counter, max(0, getattr(current, counter) + shift))
        log.info(
            "resumed mid-epoch with data.batch_size=%d: the epoch goes on at its batch %d (%d in the checkpoint's size)",
            self.batch_size,
            now,
            saved,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def load_features(path: str | Path, split: Optional[str] = None, meta: Optional[dict] = None) -> dict[str, Any]:
    """Read a feature file written by zoo-tokenize / zoo-embed (a dict of tensors), safely. With ``split``, a file
    whose meta says it was written for another split (zoo-embed records it) is refused: with equal split sizes its
    rows would be served to the wrong images without a word (e.g. the train embeddings as validation data). The
    file's ``meta`` is copied into ``meta`` when a dict is given."""
    from zoo.checkpoint import safe_load

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"feature file not found: {path} (fix: run zoo-tokenize / zoo-embed for this split first)")
    fix = "re-run the zoo-tokenize / zoo-embed command that wrote it"
    obj = safe_load(path, fix=fix, mmap=True)  # served from page cache: see safe_load
    if not isinstance(obj, dict):
        raise ConfigError(f"{path} is not a feature file (expected a dict of tensors)")
    written_for = obj["meta"].get("split") if isinstance(obj.get("meta"), dict) else None
    if meta is not None and isinstance(obj.get("meta"), dict):
        meta.update(obj["meta"])
    book = obj.get("codebook_size")  # zoo-tokenize records its tokenizer's codebook beside the codes, not in meta
    if meta is not None and is_whole(book, 1):
        meta.setdefault("codebook_size", book)
    if split is not None and written_for is not None and str(written_for) != split:
        raise ConfigError(
            f"data.features.{split}={path} holds the {written_for} split's features (written with "
            f"split={written_for}) (fix: data.features.{split}=<the zoo-embed / zoo-tokenize file of the {split} split>)"
        )
    return check_feature_tensors({k: v for k, v in obj.items() if k in FEATURE_KEYS}, path, fix)


# What zoo-tokenize / zoo-embed write for each key: (number of dims, dtype kind). "int" holds ids (never negative),
# "float" must be finite, "bool" is a mask.
_FEATURE_LAYOUT = {
    "image_tokens": (3, "int", "(N, h, w) code ids"),
    "clip_image_emb": (2, "float", "(N, D) embeddings"),
    "clip_text_emb": (2, "float", "(N, D) embeddings"),
    "clip_text_tokens": (2, "int", "(N, L) token ids"),
    "clip_text_encodings": (3, "float", "(N, L, W) encodings"),
    "clip_text_mask": (2, "bool", "(N, L) mask"),
    "clip_caption_counts": (1, "int", "(N,) captions per item"),
}


def _non_finite_rows(value: Any, block_bytes: int = 64 << 20) -> int:
    """How many rows of a float (N, ...) tensor hold NaN or inf, read a block of rows (~``block_bytes`` as float32)
    at a time: ``torch.isfinite`` over a whole float16 column makes a float32 copy and a bool mask of it, 2.5x the
    column at once (a 4 GB encodings file peaked at 14 GB; COCO train's 65 GB at ViT-H would need 160 GB)."""
    import torch

    per_row = max(1, value[0].numel() * 4)
    return sum(int((~torch.isfinite(b)).flatten(1).any(1).sum()) for b in value.split(max(1, block_bytes // per_row)))


def check_feature_tensors(features: dict[str, Any], path: str | Path, fix: str) -> dict[str, Any]:
    """``features`` (key -> value of a zoo-tokenize / zoo-embed file) checked against what those commands write:
    a tensor of the right rank and dtype per key, finite embeddings, code / token ids >= 0, one row per item in every
    key and one width for the image and text embeddings. A damaged or hand-made file otherwise loads and fails
    later: an AttributeError or IndexError deep in the first training step, a "zero variance" message for NaN
    embeddings, or NaN losses. Every problem is reported at once (ConfigError naming the file and ``fix``)."""
    import torch

    problems = []
    for key, value in features.items():
        ndim, kind, what = _FEATURE_LAYOUT[key]
        if not isinstance(value, torch.Tensor):
            problems.append(f"'{key}' is a {type(value).__name__}, not a tensor of {what}")
            continue
        dt = value.dtype
        got_kind = "bool" if dt == torch.bool else "float" if dt.is_floating_point else None
        if got_kind is None and not dt.is_complex:
            got_kind = "int"
        if value.dim() != ndim or got_kind != kind:
            problems.append(f"'{key}' is a {tuple(value.shape)} {dt} tensor, expected {what} ({kind})")
        elif kind == "float" and value.numel() and (bad := _non_finite_rows(value)):
            problems.append(f"'{key}' holds NaN or infinite values in {bad} of its {len(value)} rows")
        elif kind == "int" and value.numel() and int(value.min()) < 0:
            problems.append(f"'{key}' holds negative ids (smallest {int(value.min())})")
    tensors = {k: v for k, v in features.items() if isinstance(v, torch.Tensor) and v.dim() >= 1}
    rows = {k: len(v) for k, v in tensors.items()}
    counts = tensors.get(CAPTION_COUNTS)
    if counts is not None and counts.dim() == 1 and not counts.dtype.is_floating_point:  # zoo-embed captions=all
        per_item = {k: r for k, r in rows.items() if k not in TEXT_KEYS}
        per_caption = {k: r for k, r in rows.items() if k in TEXT_KEYS}
        total = int(counts.sum())
        if len(set(per_item.values())) > 1:
            problems.append(f"its per-item keys hold different numbers of rows: {per_item}")
        if any(r != total for r in per_caption.values()):
            problems.append(f"its per-caption keys hold {per_caption} rows but '{CAPTION_COUNTS}' sums to {total}")
        if counts.numel() and int(counts.min()) < 1:
            problems.append(f"'{CAPTION_COUNTS}' gives items without a caption")
    elif len(set(rows.values())) > 1:
        problems.append(f"its keys hold different numbers of rows: {rows}")
    img, txt = tensors.get("clip_image_emb"), tensors.get("clip_text_emb")
    if img is not None and txt is not None and img.dim() == txt.dim() == 2 and img.shape[1] != txt.shape[1]:
        problems.append(
            f"'clip_image_emb' is {img.shape[1]}-d but 'clip_text_emb' is {txt.shape[1]}-d (one CLIP embeds both)"
        )
    if problems:
        head = f"{path} is damaged or not a zoo-tokenize / zoo-embed file"
        raise ConfigError(f"{head}: {'; '.join(problems)} (fix: {fix})")
    return features
