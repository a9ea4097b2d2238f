"""MS-COCO captions (2014 or 2017) from a local copy:
``{root}/annotations/captions_{train,val}{year}.json`` and ``{root}/{train,val}{year}/<file_name>``.

Splits
- ``train``: all of train{year}. Each access draws one of the image's (about 5) captions at random. Under the
  DataModule's loader (``ResumableSampler`` yields ``EpochIndex``) the draw is a pure function of
  ``(seed, epoch, index)``: it varies from epoch to epoch, and a run resumed from a checkpoint sees the captions an
  uninterrupted one would (a per-process draw counter restarted at 0 and replayed epoch 0's pairs). A plain integer
  index (no epoch) draws from ``(seed, worker seed, index, how many times this process has served that index)``.
- ``val`` / ``test``: COCO publishes no test captions, so val{year} (sorted by image id) is split in two fixed,
  disjoint halves: even ordinals are ``val``, odd ordinals are ``test``. Both always use the first caption.
  (The eval package's MS-COCO protocol samples its own 30k captions from all of val; this split is for training
  runs that want a held-out validation and a held-out test set.)
- ``max_items`` keeps the first N images of the split (after the val/test halving) for quick runs.

Unreadable images
A corrupt or missing image file never stops an epoch: ``__getitem__`` serves the next readable index instead
(wrapping around), marks the file bad, logs a warning with the running count, and skips it straight away on later
accesses. The bad-file flags live in shared memory (a ``multiprocessing.RawArray`` created in ``__init__``), so
DataLoader workers -- forked or spawned -- write to the same flags and ``ds.skipped`` / ``ds.skipped_files`` in the
main process report every distinct bad file seen by any worker (each counted once). ``scan()`` checks every file up
front, with a progress bar, and returns the bad ones.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import random
from multiprocessing import context as mp_context
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import Dataset

from zoo.data.transforms import image_transform, load_rgb

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def _ann_path(root: Path, split: str, year: int) -> Path:
    part = "train" if split == "train" else "val"
    return root / "annotations" / f"captions_{part}{year}.json"


class CocoCaptions(Dataset):
    """Map-style dataset of ``{"image": FloatTensor (3, R, R) in [-1, 1], "caption": str, "index": int}``.

    ``index`` is the index actually served (it differs from the requested one when a bad file was skipped).
    """

    # what the skip warning calls a file ("skipping unreadable MS-COCO image ..."): a subclass over other files
    # (zoo.data.folder.FolderCaptions: "image") names them with this, not with its own copy of _mark_bad
    image_kind = "MS-COCO image"

    def __init__(
        self,
        root: str,
        split: str = "train",
        year: int = 2014,
        resolution: int = 64,
        seed: int = 0,
        max_items: Optional[int] = None,
    ):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        year = int(year)
        if year not in (2014, 2017):
            raise ValueError(f"unknown MS-COCO year {year}; expected 2014 or 2017 (data.year=2014|2017)")
        root_path = Path(root).expanduser()
        part = "train" if split == "train" else "val"
        ann = _ann_path(root_path, split, year)
        if not root_path.is_dir():
            raise FileNotFoundError(
                f"MS-COCO root not found: {root_path} (fix: data.root=/path/to/coco, the folder holding "
                f"annotations/captions_{part}{year}.json and {part}{year}/)"
            )
        if not ann.is_file():
            raise FileNotFoundError(
                f"MS-COCO captions not found: {ann} (fix: data.root=/path/to/coco holding "
                f"annotations/captions_{part}{year}.json, or data.year=2014|2017)"
            )
        self.image_dir = root_path / f"{part}{year}"
        if not self.image_dir.is_dir():
            raise FileNotFoundError(
                f"MS-COCO image folder not found: {self.image_dir} (fix: data.root=/path/to/coco holding "
                f"{part}{year}/ next to annotations/)"
            )
        try:
            meta = json.loads(ann.read_text(encoding="utf-8"))
            caps: dict[int, list[str]] = {}
            for a in meta["annotations"]:
                caps.setdefault(a["image_id"], []).append(str(a["caption"]).strip())
            images = sorted((im for im in meta["images"] if im["id"] in caps), key=lambda im: im["id"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{ann} is not a COCO captions file ({type(e).__name__}: {e})") from e
        if split != "train":
            images = images[(0 if split == "val" else 1) :: 2]
        if max_items is not None:
            images = images[: int(max_items)]
        if not images:
            raise ValueError(f"no captioned images for split {split!r} in {ann}")
        self.items: list[tuple[str, list[str]]] = [(im["file_name"], caps[im["id"]]) for im in images]
        self._check_some_files_exist(ann)
        self.split, self.year, self.seed, self.resolution = split, year, int(seed), int(resolution)
        self.transform = image_transform(resolution, train=split == "train")
        self._bad = mp.RawArray("b", len(self.items))  # 1 = unreadable; shared with DataLoader workers
        self._draws: dict[int, int] = {}  # per-process count of caption draws per index (train)

    def __len__(self) -> int:
        return len(self.items)

    def _check_some_files_exist(self, ann: Path, probes: int = 16) -> None:
        """A folder holding none of the listed files (empty, an unzip into train2014/train2014/, another year's
        names) is a set-up error: skipped one by one, the first sample logged a warning per file of the split
        (83k lines for train2014) before failing without a fix. A few files spread over the list are looked up."""
        step = max(1, len(self.items) // probes)
        names = [name for name, _ in self.items[::step][:probes]]
        if any((self.image_dir / name).is_file() for name in names):
            return  # some missing files are skipped and counted as they are met
        nested = self.image_dir / self.image_dir.name
        hint = f"; it holds a folder {nested.name}/: move its files up into {self.image_dir}" if nested.is_dir() else ""
        raise FileNotFoundError(
            f"MS-COCO images missing: none of the {len(names)} files of {ann.name} looked up is in {self.image_dir} "
            f"(e.g. {names[0]}){hint} (fix: data.root=/path/to/coco whose {self.image_dir.name}/ holds the images "
            f"listed in annotations/{ann.name}, or data.year=2014|2017 to match them)"
        )

    # -- skipped-file report (valid in the main process after workers ran: the flags are shared memory) ----
    @property
    def skipped(self) -> int:
        """Number of distinct unreadable image files met so far (by this process or any DataLoader worker)."""
        return bytes(self._bad).count(1)

    @property
    def skipped_files(self) -> list[str]:
        return [self.items[i][0] for i, b in enumerate(self._bad) if b]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if mp_context.get_spawning_popen() is None:  # plain pickle/deepcopy: a private (unshared) copy of the flags
            state["_bad"] = bytes(self._bad)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["_bad"], bytes):
            flags = mp.RawArray("b", len(state["_bad"]))
            flags[:] = list(state["_bad"])
            state["_bad"] = flags
        self.__dict__.update(state)

    # -- loading ---------------------------------------------------------------------------------------------
    def caption_choices(self, i: int) -> list[str]:
        """The captions item ``i`` may be served with, in annotation order: all of them for ``train`` (one drawn per
        access), the first for ``val`` / ``test``. ``zoo-embed captions=all`` embeds each of them, and the DataModule
        serves the row of the caption drawn (``FeatureAttached``)."""
        captions = self.items[i][1]
        return list(captions) if self.split == "train" else captions[:1]

    def _caption(self, i: int, epoch: Optional[int] = None) -> str:
        captions = self.caption_choices(i)
        if len(captions) == 1:
            return captions[0]
        if epoch is not None:  # the DataModule's loader: reproducible across workers and resumes
            return captions[random.Random(f"{self.seed}/epoch {epoch}/{i}").randrange(len(captions))]
        worker = torch.utils.data.get_worker_info()
        k = self._draws.get(i, 0)
        self._draws[i] = k + 1
        rng = random.Random(f"{self.seed}/{worker.seed if worker else 0}/{i}/{k}")
        return captions[rng.randrange(len(captions))]

    def _mark_bad(self, i: int, err: BaseException) -> None:
        if not self._bad[i]:
            self._bad[i] = 1
            log.warning(
                "skipping unreadable %s %s (%s: %s); %d skipped so far",
                self.image_kind,
                self.image_dir / self.items[i][0],
                type(err).__name__,
                err,
                self.skipped,
            )

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.items)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        epoch = getattr(index, "epoch", None)  # zoo.data.loader.EpochIndex
        last_err: Optional[BaseException] = None
        for offset in range(n):
            i = (index + offset) % n
            if self._bad[i]:
                continue
            try:
                image = self.transform(load_rgb(self.image_dir / self.items[i][0]))
            except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError, ...
                self._mark_bad(i, e)
                last_err = e
                continue
            return {"image": image, "caption": self._caption(i, epoch), "index": i}
        raise RuntimeError(f"no readable image among the {n} files of {self.image_dir}") from last_err

    def scan(self, progress: bool = True) -> list[str]:
        """Decode every image file once (progress bar); mark and return the names of the unreadable ones."""
        from tqdm.auto import tqdm

        bad = []
        for i in tqdm(range(len(self.items)), desc=f"scan {self.image_dir.name}", disable=not progress):
            try:
                load_rgb(self.image_dir / self.items[i][0])
            except Exception as e:
                self._mark_bad(i, e)
                bad.append(self.items[i][0])
        return bad
