"""A plain folder of your own images and captions (``data=folder data.root=<dir>``), as DALLE-pytorch's
``--image_text_folder`` takes it: each image (``jpg`` / ``jpeg`` / ``png`` / ``webp`` / ``bmp``, any case) beside a
``.txt`` of the same stem holding one caption per line, in any nesting of sub-folders.

Scan
- The tree under ``root`` is walked once, in sorted order (the items, their order and indices are the same on every
  machine and run); symlinked folders are followed (each real folder once), names starting with ``.`` (``.git``,
  ``.ipynb_checkpoints``, macOS ``._x.jpg`` resource forks) are left out.
- An image pairs with the ``.txt`` of its stem in the same folder. Empty lines and surrounding spaces are dropped.
  Images without a ``.txt``, ``.txt`` files without an image, ``.txt`` files with no caption (empty, or not UTF-8)
  and a second image of one stem (``a.jpg`` and ``a.png`` beside one ``a.txt``: the first extension in the order
  above pairs) are left out, and said once, with counts and examples. A folder with no pair at all is a ConfigError.

Splits
- ``val`` and ``test`` are drawn by a hash of each pair's image path relative to ``root``: a pair whose hash, as a
  number in [0, 1), is below ``val_fraction`` is ``val``, below ``val_fraction + test_fraction`` ``test``, else
  ``train``. An item's split is a function of its own path only: files added later (or removed) never move an
  existing item to another split, and the split does not depend on the seed. A folder of 2 or more pairs whose hash
  puts none in ``val`` gets the pair of smallest hash there (the same one every run); once the folder has grown so
  that some pair hashes into ``val``, that forced pair goes back to ``train`` (never a trained pair to ``val``).
- ``val_root``: an explicit validation folder (scanned the same way) instead of the ``val`` fraction; when it lies
  inside ``root``, its files are left out of ``root``'s splits.
- ``test_fraction=0`` (the default): no test pairs are held out and the ``test`` split serves the ``val`` split,
  with ``data.features.val`` (unless a ``data.features.test`` is given).

Captions, bad files: ``FolderCaptions`` is ``CocoCaptions`` over the folder's pairs (the same code): ``train`` draws
one of an image's captions per access, a pure function of ``(seed, epoch, index)`` under the DataModule's loader
(resumable), ``val`` / ``test`` serve the first caption, ``caption_choices`` lists them (``zoo-embed captions=all``);
an unreadable or truncated image is skipped, counted once in shared memory and reported in the data summary.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing as mp
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from torch.utils.data import Dataset

from zoo.data.coco import CocoCaptions
from zoo.data.datamodule import ImageTextDataModule
from zoo.data.transforms import image_transform
from zoo.errors import ConfigError, is_number
from zoo.progress import plural

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")  # the order that picks one image of a stem
CAPTION_EXTENSION = ".txt"
EXAMPLES = 3


@dataclass
class FolderScan:
    """What ``scan_folder`` found: ``pairs`` (image path relative to the root, its captions) and the left-out files
    (paths relative to the root) by reason."""

    root: Path
    pairs: list[tuple[str, list[str]]] = field(default_factory=list)
    images_without_txt: list[str] = field(default_factory=list)
    txt_without_image: list[str] = field(default_factory=list)
    txt_without_caption: list[str] = field(default_factory=list)
    images_sharing_txt: list[str] = field(default_factory=list)

    def left_out(self) -> list[tuple[str, str, list[str]]]:
        """(what, why, files) of each kind of left-out file."""
        return [
            ("image", "without a .txt", self.images_without_txt),
            (".txt file", "without an image", self.txt_without_image),
            (".txt file", "without a caption (empty or not UTF-8)", self.txt_without_caption),
            ("image", "whose .txt pairs another image of the same stem", self.images_sharing_txt),
        ]

    def report(self, option: str) -> None:
        """One WARNING with the counts and a few examples of every kind of left-out file (nothing when none)."""
        parts = [
            f"{len(files)} {plural(what, len(files))} {why} (e.g. {', '.join(files[:EXAMPLES])})"
            for what, why, files in self.left_out()
            if files
        ]
        if parts:
            log.warning(
                "%s=%s: %d image-caption pairs; left out: %s (fix: put <name>.txt, one caption per line, beside each "
                "<name>.jpg / .png / ...)",
                option,
                self.root,
                len(self.pairs),
                "; ".join(parts),
            )


def _read_captions(path: Path) -> Optional[list[str]]:
    """The non-empty lines of a caption file, stripped; None when it cannot be read as UTF-8 text."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # (a byte-order mark would start the first caption)
    except (OSError, UnicodeDecodeError):
        return None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _walk(root: Path, exclude: Optional[Path]) -> Iterable[tuple[Path, list[str]]]:
    """(folder, sorted file names) of every folder under ``root``, in sorted order, each real folder once."""
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        here = Path(folder)
        real = os.path.realpath(folder)
        if real in seen or (exclude is not None and Path(real) == exclude):  # a symlink loop; val_root inside root
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield here, sorted(f for f in files if not f.startswith("."))


def scan_folder(root: str | Path, exclude: Optional[str | Path] = None) -> FolderScan:
    """Pair every image under ``root`` with the ``.txt`` of its stem beside it (see the module doc); ``exclude``: a
    folder inside ``root`` to leave out (``val_root``)."""
    root = Path(root).expanduser()
    skip = Path(os.path.realpath(exclude)) if exclude is not None else None
    scan = FolderScan(root)
    for folder, files in _walk(root, skip):
        images: dict[str, list[str]] = {}
        texts: dict[str, str] = {}
        for name in files:
            stem, ext = os.path.splitext(name)
            if ext.lower() in IMAGE_EXTENSIONS:
                images.setdefault(stem, []).append(name)
            elif ext.lower() == CAPTION_EXTENSION:
                texts[stem] = name
        rel = folder.relative_to(root)
        for stem in sorted(images.keys() | texts.keys()):
            names = sorted(images.get(stem, []), key=lambda n: IMAGE_EXTENSIONS.index(os.path.splitext(n)[1].lower()))
            if stem not in texts:
                scan.images_without_txt += [(rel / n).as_posix() for n in names]
                continue
            if not names:
                scan.txt_without_image.append((rel / texts[stem]).as_posix())
                continue
            captions = _read_captions(folder / texts[stem])
            if not captions:
                scan.txt_without_caption.append((rel / texts[stem]).as_posix())
                continue
            scan.pairs.append(((rel / names[0]).as_posix(), captions))
            scan.images_sharing_txt += [(rel / n).as_posix() for n in names[1:]]
    return scan


def no_pairs_error(scan: FolderScan, option: str) -> ConfigError:
    """The ConfigError for a folder without a single pair: what was looked for, what was found, the fix."""
    found = f"found {len(scan.images_without_txt) + len(scan.images_sharing_txt)} images"
    found += f", {len(scan.txt_without_image) + len(scan.txt_without_caption)} .txt files"
    if scan.txt_without_caption:
        found += f" ({len(scan.txt_without_caption)} of them without a caption, e.g. {scan.txt_without_caption[0]})"
    image_stems = {Path(p).stem: p for p in scan.images_without_txt}
    apart = [(image_stems[Path(t).stem], t) for t in scan.txt_without_image if Path(t).stem in image_stems]
    hint = f"; {apart[0][0]} and {apart[0][1]} share a stem but not a folder" if apart else ""
    looked = ", ".join(f"*{e}" for e in IMAGE_EXTENSIONS)
    return ConfigError(
        f"{option}={scan.root}: no image with a caption file in it or its sub-folders (looked for {looked}, any case, "
        f"each beside a .txt of the same stem holding one caption per line; {found}{hint}) (fix: put <name>.txt beside "
        f"each <name>.jpg, or {option}=<the folder holding them>)"
    )


def split_point(relpath: str) -> float:
    """The number in [0, 1) that places a pair in a split: a hash of its path relative to the root (not the seed)."""
    digest = hashlib.blake2b(relpath.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def assign_splits(
    pairs: list[tuple[str, list[str]]], val_fraction: float, test_fraction: float
) -> dict[str, list[tuple[str, list[str]]]]:
    """``{split: pairs}`` in scan order (see the module doc). ``val_fraction=0``: no val pairs from ``pairs``."""
    points = [split_point(rel) for rel, _ in pairs]
    where = ["val" if u < val_fraction else "test" if u < val_fraction + test_fraction else "train" for u in points]
    if val_fraction > 0 and len(pairs) >= 2 and "val" not in where:
        where[min(range(len(pairs)), key=points.__getitem__)] = "val"
    return {split: [p for p, w in zip(pairs, where, strict=True) if w == split] for split in ("train", "val", "test")}


class FolderCaptions(CocoCaptions):
    """``CocoCaptions`` (same sample dicts, caption draw, skipping and counting of unreadable images) over the pairs of
    a folder: ``items`` holds (image path relative to ``root``, captions)."""

    image_kind = "image"  # "skipping unreadable image ...": not MS-COCO's

    def __init__(
        self, root: str | Path, items: list[tuple[str, list[str]]], split: str = "train", resolution: int = 64, seed=0
    ):
        if not items:
            raise ValueError(f"no image-caption pairs for split {split!r} of {root}")
        self.image_dir = Path(root).expanduser()
        self.items = [(rel, list(captions)) for rel, captions in items]
        self.split, self.year, self.seed, self.resolution = split, None, int(seed), int(resolution)
        self.transform = image_transform(resolution, train=split == "train")
        self._bad = mp.RawArray("b", len(self.items))  # 1 = unreadable; shared with DataLoader workers
        self._draws: dict[int, int] = {}


def _digest(values: Any) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(values).encode("utf-8"))
    return h.hexdigest()


class FolderDataModule(ImageTextDataModule):
    """Your own folder of images with same-stem ``.txt`` captions (see the module doc)."""

    def __init__(
        self,
        root: str,
        val_root: Optional[str] = None,
        val_fraction: float = 0.01,
        test_fraction: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for option, value, fix in (
            ("data.val_fraction", val_fraction, "0.01, or 0 with data.val_root=<a folder of validation pairs>"),
            ("data.test_fraction", test_fraction, "0.01, or 0 for no test pairs"),
        ):
            if not is_number(value, 0, 1, high_open=True):
                raise ConfigError(f"{option}={value!r} must be a number in [0, 1) (fix: {option}={fix})")
        if val_fraction + test_fraction >= 1:
            raise ConfigError(
                f"data.val_fraction={val_fraction} + data.test_fraction={test_fraction} leave nothing to train on "
                f"(fix: fractions summing to less than 1, e.g. data.val_fraction=0.01)"
            )
        self.root = self._folder("data.root", root)
        self.val_root = self._folder("data.val_root", val_root) if val_root else None
        if self.val_root is not None and (self.val_root == self.root or self.val_root in self.root.parents):
            # its pairs would be the training pairs (or hold them): validation on what the model trains on
            raise ConfigError(
                f"data.val_root={self.val_root} holds data.root={self.root}: the val pairs would include the training "
                f"pairs (fix: data.val_root=<a folder of validation pairs outside data.root>, or data.val_root=null "
                f"to hold out data.val_fraction of data.root)"
            )
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        scan = scan_folder(self.root, exclude=self.val_root)
        scan.report("data.root")
        if not scan.pairs:
            raise no_pairs_error(scan, "data.root")
        self.split_items = assign_splits(scan.pairs, 0.0 if self.val_root else self.val_fraction, self.test_fraction)
        self.split_roots = {"train": self.root, "val": self.root, "test": self.root}
        if self.val_root is not None:
            val = scan_folder(self.val_root)
            val.report("data.val_root")
            if not val.pairs:
                raise no_pairs_error(val, "data.val_root")
            self.split_items["val"], self.split_roots["val"] = val.pairs, self.val_root
        counts = {split: len(items) for split, items in self.split_items.items()}
        if not counts["train"]:
            raise ConfigError(
                f"data.root={self.root}: all of its {len(scan.pairs)} pairs are held out for val / test (fix: more "
                f"pairs, data.val_fraction=0 with data.val_root=<another folder>, or data.test_fraction=0)"
            )
        if not counts["val"]:
            raise ConfigError(
                f"data.root={self.root}: the val split is empty ({len(scan.pairs)} pairs, "
                f"data.val_fraction={self.val_fraction}) (fix: data.val_fraction=0.01 with 2 pairs or more, "
                f"or data.val_root=<a folder of validation pairs>)"
            )
        log.info("data=folder %s: %d train / %d val / %d test pairs", self.root, *counts.values())
        # the test split is the val split itself (test_fraction=0) unless the user gives the test split's own features
        self._test_is_val = not counts["test"] and "test" not in self.features
        if not counts["test"]:
            self.split_items["test"], self.split_roots["test"] = self.split_items["val"], self.split_roots["val"]
        if self._test_is_val and "val" in self.features:
            # with it the val split's features (zoo-tokenize / zoo-embed of split=val): the test stage (zoo-train's
            # default test=true) stopped after training for want of a data.features.test file of the same pairs
            self.features["test"] = self.features["val"]

    @staticmethod
    def _folder(option: str, path: Any) -> Path:
        p = Path(str(path)).expanduser() if path else None
        if p is None or not p.is_dir():
            raise ConfigError(
                f"{option}={path!r} is not a folder (fix: {option}=/path/to/folder holding images with a same-stem "
                f".txt of captions beside each)"
            )
        return p.resolve()

    def dataset(self, split: str) -> Dataset:
        if split == "test" and self._test_is_val:
            if split not in self.datasets:
                log.info(
                    "data.test_fraction=0: the test split serves the val split's pairs%s",
                    " and data.features.val" if "val" in self.features else "",
                )
                self.datasets[split] = super().dataset("val")
            return self.datasets[split]
        return super().dataset(split)

    def build_dataset(self, split: str) -> Dataset:
        if split == "test" and not self.test_fraction:
            log.info("data.test_fraction=0: the test split serves the val split's pairs")
        return FolderCaptions(
            self.split_roots[split], self.split_items[split], split, resolution=self.resolution, seed=self.seed
        )

    def data_identity(self) -> dict:
        # the training captions (their content, not file times) and where the folders are (recaption's resume key
        # reads the pixels too); the seed is left out as for COCO (it only picks which of an image's captions the fit
        # reads)
        return {
            **super().data_identity(),
            "root": str(self.root),
            "val_root": str(self.val_root) if self.val_root else None,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "train_pairs_blake2b": _digest(self.split_items["train"]),
        }

    # where the folder is and how it was split: the training pairs' digest says all the fit reads
    _NOT_IN_FIT_KEY = ("root", "val_root", "val_fraction", "test_fraction")

    def tokenizer_fit_key(self) -> dict:
        """The BPE's key: the training captions alone (their pairs' digest), so a copied or moved folder keeps its
        tokenizer (it refitted: data_identity names the folder's path)."""
        return {k: v for k, v in self.data_identity().items() if k not in self._NOT_IN_FIT_KEY}

    def features_identity(self, split: str) -> dict:
        out = super().features_identity(split)
        items = self.split_items[split]
        # which images (by relative path: a moved folder keeps its features) and which captions (train: the seed
        # draws one per access; val / test serve the first)
        out["images"]["paths_blake2b"] = _digest([rel for rel, _ in items])
        out["captions"]["captions_blake2b"] = _digest([c for _, c in items])
        if split == "train":
            out["captions"]["caption_seed"] = self.seed
        return out

    def check_features_identity(self, split: str, path, meta: dict, feats: dict) -> None:
        recorded = meta.get("data")
        captions = recorded.get("captions") if isinstance(recorded, dict) else None
        if meta.get("captions") == "all" and isinstance(captions, dict) and "caption_seed" in captions:
            # a zoo-embed captions=all file holds every caption: the seed draws among them when served
            meta = {**meta, "data": {**recorded, "captions": {**captions, "caption_seed": self.seed}}}
        super().check_features_identity(split, path, meta, feats)

    def train_captions(self) -> Iterable[str]:
        """Epoch 0's training captions, read without decoding an image (the base class reads ``ds[i]``, decoding every
        image); with synthetic captions, the base class's way."""
        if self.synthetic_captions:
            yield from super().train_captions()
            return
        base = FolderCaptions(self.root, self.split_items["train"], "train", resolution=self.resolution, seed=self.seed)
        for i in range(len(base)):
            yield base._caption(i, 0)
