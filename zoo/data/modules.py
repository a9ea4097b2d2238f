"""The concrete DataModules named in ``conf/data/``: shapes (built-in), coco, webdataset."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Optional, Sequence

from torch.utils.data import Dataset

from zoo.data.datamodule import ImageTextDataModule, file_digest
from zoo.errors import ConfigError, check_whole

log = logging.getLogger(__name__)


class ShapesDataModule(ImageTextDataModule):
    """The built-in procedural world: no downloads, deterministic from (seed, split, index)."""

    from zoo.data.shapes import CAPTION_STYLES as NATIVE_CAPTION_STYLES  # alt | short | descriptive

    def __init__(
        self,
        train_size: int = 20000,
        val_size: int = 512,
        test_size: int = 512,
        world_seed: int = 0,
        caption_style: str = "descriptive",
        caption_mix: Optional[dict[str, float]] = None,
        min_objects: int = 1,
        max_objects: int = 3,
        bpe_fit_styles: str = "served",
        object_order: str = "raster",
        **kwargs,
    ):
        super().__init__(caption_mix=caption_mix, **kwargs)
        from zoo.data.shapes import check_object_order

        self.object_order = check_object_order(object_order, "data.object_order")
        if bpe_fit_styles not in ("served", "all"):
            raise ConfigError(
                f"data.bpe_fit_styles={bpe_fit_styles!r}: expected 'served' (fit a trained BPE on the captions "
                f"training sees) or 'all' (on every caption style of the world: runs on different caption blends "
                f"then share one tokenizer)"
            )
        self.bpe_fit_styles = bpe_fit_styles
        from zoo.data.shapes import ShapesDataset  # noqa: F401  (fail early if the world cannot be built)

        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        for split, n in self.sizes.items():  # int() took 100.5 for 100 and true for 1
            check_whole(f"data.{split}_size", n, 1, {"train": 20000}.get(split, 512), why="scenes in the split")
        # numpy seeds the world's streams: a negative seed failed with "expected non-negative integer" (no option
        # named), a fractional one was truncated to another world without a word
        check_whole("data.world_seed", world_seed, 0)
        self.world_seed = world_seed
        self.caption_style = caption_style
        self.min_objects, self.max_objects = min_objects, max_objects
        # Build one sample now so that a bad caption style / resolution fails before training starts.
        self.build_dataset("val")[0]

    def data_identity(self) -> dict:
        from zoo.data.shapes import WORLD_VERSION

        # the training captions: resolution does not change them, val/test sizes do not enter them
        return {
            **super().data_identity(),
            "world_version": WORLD_VERSION,
            "world_seed": self.world_seed,
            "train_size": self.sizes["train"],
            "caption_style": self.caption_style,
            "caption_mix": self.caption_mix,
            "min_objects": self.min_objects,
            "max_objects": self.max_objects,
            # only when not the default, so that the keys (and cached tokenizers) of raster runs stay as they were
            **({"object_order": self.object_order} if self.object_order != "raster" else {}),
        }

    def features_identity(self, split: str) -> dict:
        from zoo.data.shapes import WORLD_VERSION

        out = super().features_identity(split)
        # the scenes: (world, seed, split, index) and the object counts; the captions: the style, the object order
        # of descriptive captions and, for train only, the style draw of caption_mix (val / test never mix)
        out["images"].update(
            world_version=WORLD_VERSION,
            world_seed=self.world_seed,
            min_objects=self.min_objects,
            max_objects=self.max_objects,
        )
        out["captions"].update(caption_style=self.caption_style, object_order=self.object_order)
        if split == "train":
            out["captions"]["native_caption_mix"] = self.native_caption_mix
        return out

    def tokenizer_captions(self) -> Iterable[str]:
        if self.bpe_fit_styles == "served":
            return self.train_captions()
        base = self.build_dataset("train")  # every style of every training scene, no rendering, no synthetic file
        return (caption for i in range(len(base)) for caption in base.scene(i)[1].values())

    def tokenizer_fit_key(self) -> dict:
        if self.bpe_fit_styles == "served":
            return self.data_identity()
        # the same key the captioner and the prompt upsampler use for their all-styles BPE: one shared file
        key = {k: v for k, v in self.data_identity().items() if k not in ("synthetic_captions", "synthetic_seed")}
        return {**key, "caption_style": "all styles", "caption_mix": None}

    def build_dataset(self, split: str) -> Dataset:
        from zoo.data.shapes import ShapesDataset

        # Val/test always use descriptive captions unless a single style was asked for: they are what the
        # metrics (CLIP recall, prompt fidelity) are defined on.
        return ShapesDataset(
            split=split,
            size=self.sizes[split],
            resolution=self.resolution,
            seed=self.world_seed,
            caption_style=self.caption_style,
            caption_mix=self.native_caption_mix if split == "train" else None,  # synthetic styles: the base class
            min_objects=self.min_objects,
            max_objects=self.max_objects,
            object_order=self.object_order,
        )


class CocoDataModule(ImageTextDataModule):
    """MS-COCO captions (2014 or 2017) from ``root`` (annotations/ and train{year}/ val{year}/ folders)."""

    LATER_IDENTITY_KEYS = {
        **ImageTextDataModule.LATER_IDENTITY_KEYS,
        ("images", "annotations_blake2b"): "the annotation file's content",
    }

    def __init__(self, root: str, year: int = 2014, max_items: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        from pathlib import Path

        # a slice bound: -1 ("all"?) silently dropped the last image of every split, 0 failed at set-up
        check_whole("data.max_items", max_items, 1, "null for all", none_ok=True)
        self.root, self.year, self.max_items = root, int(year), max_items
        if not root or not Path(root).is_dir():
            raise ConfigError(
                f"MS-COCO root not found: {root!r} (fix: data.root=/path/to/coco containing "
                f"annotations/captions_train{year}.json and train{year}/)"
            )

    def data_identity(self) -> dict:
        from zoo.data.coco import _ann_path

        root = Path(self.root).expanduser().resolve()
        ann = _ann_path(root, "train", self.year)
        stat = ann.stat() if ann.is_file() else None  # a replaced annotation file changes the key too
        # data.seed is left out: it only picks which of an image's ~5 captions the fit reads (same distribution)
        return {
            **super().data_identity(),
            "root": str(root),
            "year": self.year,
            "max_items": self.max_items,
            "annotations": str(ann),
            "annotations_size": stat.st_size if stat else None,
            "annotations_mtime_ns": stat.st_mtime_ns if stat else None,
        }

    def features_identity(self, split: str) -> dict:
        from zoo.data.coco import _ann_path

        out = super().features_identity(split)
        ann = _ann_path(Path(self.root).expanduser(), split, self.year)
        # which images (year, the cut, the annotation file by size and content -- an edit in place to the same size
        # passed on size alone -- but not by path or time: a moved or copied COCO keeps its features) and which of
        # an image's ~5 captions is served (data.seed draws it, for train)
        out["images"].update(year=self.year, max_items=self.max_items)
        out["images"]["annotations_size"] = ann.stat().st_size if ann.is_file() else None
        out["images"]["annotations_blake2b"] = file_digest(ann)
        if split == "train":  # val / test serve every image's first caption, whatever data.seed
            out["captions"]["caption_seed"] = self.seed
        return out

    def check_features_identity(self, split: str, path, meta: dict, feats: dict) -> None:
        recorded = meta.get("data")
        captions = recorded.get("captions") if isinstance(recorded, dict) else None
        if split != "train" and isinstance(captions, dict) and "caption_seed" in captions:
            # files written before recorded the seed for val / test too: another data.seed (a seed sweep) dropped the
            # text embeddings of a val file whose captions it serves unchanged
            captions = {k: v for k, v in captions.items() if k != "caption_seed"}
            meta = {**meta, "data": {**recorded, "captions": captions}}
        elif meta.get("captions") == "all" and isinstance(captions, dict) and "caption_seed" in captions:
            # a zoo-embed captions=all file holds every caption: the seed draws among them when served, under this
            # run's data.seed, so a file made under another seed describes the captions this run serves
            meta = {**meta, "data": {**recorded, "captions": {**captions, "caption_seed": self.seed}}}
        super().check_features_identity(split, path, meta, feats)

    def train_captions(self) -> Iterable[str]:
        """The training captions without decoding the images: the base class reads ``ds[i]``, which decoded and
        resized all 83k train2014 images (about 7 minutes on one core) before a BPE fit. The same draws as served
        (``CocoCaptions._caption``); with synthetic captions, the base class's way."""
        from zoo.data.coco import CocoCaptions
        from zoo.data.datamodule import FeatureAttached

        ds = self.dataset("train")
        base = ds.base if isinstance(ds, FeatureAttached) else ds  # features do not change the captions
        if not isinstance(base, CocoCaptions):
            yield from super().train_captions()
            return
        for i in range(len(base)):
            yield base._caption(i)

    def build_dataset(self, split: str) -> Dataset:
        from zoo.data.coco import CocoCaptions

        return CocoCaptions(
            self.root, split=split, year=self.year, resolution=self.resolution, seed=self.seed, max_items=self.max_items
        )


class WebDataModule(ImageTextDataModule):
    """img2dataset-style ``.tar`` shards streamed with webdataset (split over workers and DDP ranks)."""

    def __init__(
        self,
        train_urls: str | Sequence[str],
        val_urls: str | Sequence[str] | None = None,
        test_urls: str | Sequence[str] | None = None,
        epoch_length: Optional[int] = None,
        shuffle_buffer: int = 1000,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not train_urls:
            raise ConfigError("data.train_urls is empty (fix: \"data.train_urls='/data/shards/{00000..00099}.tar'\")")
        self.urls = {"train": train_urls, "val": val_urls or train_urls, "test": test_urls or val_urls or train_urls}
        # a split without shards of its own reads another's: val on the training shards measures training data (and a
        # checkpoint monitor on a val metric picks by it), so it is said each time such a split is built
        self.borrowed = {
            split: ("val_urls" if split == "test" and val_urls else "train_urls")
            for split, given in (("val", val_urls), ("test", test_urls))
            if not given
        }
        why = "samples per rank; 0 or null: one pass over the shards"
        check_whole("data.epoch_length", epoch_length, 0, 10000, none_ok=True, why=why)
        # a negative buffer turned shuffling off for training without a word
        check_whole("data.shuffle_buffer", shuffle_buffer, 0, 1000, why="0: no shuffling")
        self.epoch_length = epoch_length
        self.shuffle_buffer = shuffle_buffer

    def build_dataset(self, split: str) -> Dataset:
        from zoo.data.webdataset import make_webdataset

        if split in self.borrowed:
            src = self.borrowed[split]
            log.warning(
                "data.%s_urls is not set: the %s split reads data.%s, %s (fix: data.%s_urls='<its own shards>')",
                split,
                split,
                src,
                "the training shards: its metrics measure training data, not held-out data"
                if src == "train_urls"
                else "the validation shards",
                split,
            )

        return make_webdataset(
            self.urls[split],
            resolution=self.resolution,
            shuffle_buffer=self.shuffle_buffer if split == "train" else 0,
            seed=self.seed,
            epoch_length=self.epoch_length if split == "train" else None,
        )

    MAX_FIT_CAPTIONS = 100_000  # enough text to fit a BPE; streams can be endless

    def data_identity(self) -> dict:
        # The shard URLs as given (not their stat: 40k shards on network storage would take minutes), the shuffle
        # buffer and how many captions are read. The seed is left out on purpose: another seed reads another
        # sample of the same shards, and a per-seed tokenizer would make seed sweeps incomparable.
        urls = self.urls["train"]
        return {
            **super().data_identity(),
            "train_urls": [str(urls)] if isinstance(urls, (str, Path)) else [str(u) for u in urls],
            "shuffle_buffer": self.shuffle_buffer,
            "max_captions": self.MAX_FIT_CAPTIONS,
        }

    def train_captions(self) -> Iterable[str]:
        from zoo.data.webdataset import make_webdataset

        # A stream of its own (one pass, the same shards and shuffle): reading the training split's stream here moved
        # its pass counter and, with epoch_length, its position, so a run that fitted its BPE trained on another sample
        # order than a rerun of the same seed that found the BPE cached. The skip counter is shared: a bad sample met
        # here and again in training counts and warns once.
        train = self.dataset("train")
        stream = make_webdataset(
            self.urls["train"],
            resolution=self.resolution,
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed,
            handler=getattr(train, "skip_counter", None),
        )
        for i, sample in enumerate(stream):
            if i >= self.MAX_FIT_CAPTIONS:
                break
            yield sample["caption"]
