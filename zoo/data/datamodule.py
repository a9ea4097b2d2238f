"""The DataModule every model in the zoo trains on.

Subclasses only say how to build a split's dataset (``build_dataset``); batching, text tokenisation,
resumable shuffling, DDP sharding and optional precomputed features (image tokens, CLIP embeddings) live here,
once. Batches are dicts with the keys listed in docs/CONTRACTS.md, so any model fits any data.
"""
from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any, Iterable, Optional

import lightning as L
from torch.utils.data import DataLoader, Dataset, IterableDataset

from zoo.data.collate import Collator
from zoo.data.loader import ResumableDataLoader
from zoo.errors import ConfigError

SPLITS = ("train", "val", "test")
log = logging.getLogger(__name__)


# Per-index tensors a features file may carry (zoo-tokenize: image_tokens; zoo-embed: the CLIP keys, optionally the
# per-token text encodings the diffusion prior's `encodings` mode reads). Anything else in a file is ignored.
FEATURE_KEYS = ("image_tokens", "clip_image_emb", "clip_text_emb", "clip_text_tokens", "clip_text_encodings",
                "clip_text_mask")


class FeatureAttached(Dataset):
    """Adds precomputed per-index tensors (``image_tokens``, ``clip_image_emb``, ...) to a dataset's samples."""

    def __init__(self, base: Dataset, features: dict[str, Any]):
        self.base = base
        self.features = features
        n = len(base)  # type: ignore[arg-type]
        for key, value in features.items():
            if len(value) != n:
                raise ConfigError(
                    f"precomputed '{key}' has {len(value)} rows but the dataset split has {n} items "
                    "(fix: recompute it for this split and size, or match data.*_size to it)"
                )

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = dict(self.base[i])
        for key, value in self.features.items():
            sample[key] = value[i]
        return sample


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
    """

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
    ):
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {num_workers}")
        self.resolution = int(resolution)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        if isinstance(tokenizer, dict) and not tokenizer:  # data/tokenizer=none composes to an empty node
            tokenizer = None
        self.tokenizer = tokenizer
        self.seed = int(seed)
        self.features = {k: v for k, v in (features or {}).items() if v}
        self.pin_memory = pin_memory
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
        return {"datamodule": f"{cls.__module__}.{cls.__qualname__}"}

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
            log.warning("data summary: skipped %d %s in the %s split%s", c["skipped"], c["what"], split,
                        f": {shown}{more}" if shown else " (see the warnings above for which)")
        return counts

    def teardown(self, stage: Optional[str] = None) -> None:
        """Lightning calls this at the end of fit / validate / test (also after an interruption): summarise skips."""
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        self.log_skip_summary(wanted.get(stage or "", SPLITS))

    # -- shared machinery -------------------------------------------------------------------------------
    def dataset(self, split: str) -> Dataset:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if split not in self.datasets:
            ds = self.build_dataset(split)
            if split in self.features:
                ds = FeatureAttached(ds, load_features(self.features[split]))
            self.datasets[split] = ds
        return self.datasets[split]

    def prepare_tokenizer(self) -> None:
        """Train / load a tokenizer that needs the training captions (``TrainedBPETokenizer``)."""
        ensure = getattr(self.tokenizer, "ensure_ready", None)
        if callable(ensure):
            if "fit_key" in inspect.signature(ensure).parameters:  # a cache keyed by what it is fitted on
                ensure(self.train_captions, fit_key=self.data_identity())
            else:
                ensure(self.train_captions)

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
            return DataLoader(ds, batch_size=bs, **common)
        return ResumableDataLoader(ds, batch_size=bs, shuffle=shuffle, seed=self.seed, drop_last=shuffle, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def load_features(path: str | Path) -> dict[str, Any]:
    """Read a feature file written by zoo-tokenize / zoo-embed (a dict of tensors), safely."""
    from zoo.checkpoint import safe_load

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"feature file not found: {path} (fix: run zoo-tokenize / zoo-embed for this split first)")
    obj = safe_load(path)
    if not isinstance(obj, dict):
        raise ConfigError(f"{path} is not a feature file (expected a dict of tensors)")
    return {k: v for k, v in obj.items() if k in FEATURE_KEYS}

