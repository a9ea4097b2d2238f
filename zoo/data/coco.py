"""MS-COCO captions (2014 or 2017) from a local copy: ``{root}/annotations/captions_{train,val}{year}.json`` and
``{root}/{train,val}{year}/<file_name>``.

- train draws one of the image's ~5 captions at random on every access; val/test use the first caption (fixed).
- COCO has no public test captions: ``test`` is the odd-ordinal half of val{year} (sorted by image id) and ``val``
  the even half, so the two are disjoint and fixed. (Eval's MS-COCO protocol samples its own 30k from all of val.)
- A corrupt or missing image is skipped (the next index is served instead), counted in ``skipped`` and named in
  ``skipped_files``, with a warning; it never stops an epoch. With DataLoader workers each worker counts its own;
  ``scan()`` checks every file up front with a progress bar and returns the bad ones.
"""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any, Optional

from torch.utils.data import Dataset

from zoo.data.transforms import image_transform, load_rgb

log = logging.getLogger(__name__)


class CocoCaptions(Dataset):
    def __init__(self, root: str, split: str = "train", year: int = 2014, resolution: int = 256, seed: int = 0,
                 max_items: Optional[int] = None):
        if split not in ("train", "val", "test"):
            raise ValueError(f"unknown split {split!r}; expected train, val or test")
        root_path = Path(root)
        part = "train" if split == "train" else "val"
        ann = root_path / "annotations" / f"captions_{part}{year}.json"
        if not root_path.is_dir():
            raise FileNotFoundError(f"MS-COCO root not found: {root_path} (fix: data.root=/path/to/coco)")
        if not ann.is_file():
            raise FileNotFoundError(f"MS-COCO captions not found: {ann} (fix: data.root=/path/to/coco holding "
                                    f"annotations/captions_{part}{year}.json, or data.year=2014|2017)")
        self.image_dir = root_path / f"{part}{year}"
        meta = json.loads(ann.read_text())
        caps: dict[int, list[str]] = {}
        for a in meta["annotations"]:
            caps.setdefault(a["image_id"], []).append(a["caption"].strip())
        images = sorted((im for im in meta["images"] if im["id"] in caps), key=lambda im: im["id"])
        if split != "train":
            images = images[(0 if split == "val" else 1)::2]
        if max_items:
            images = images[: int(max_items)]
        self.items = [(im["file_name"], caps[im["id"]]) for im in images]
        self.split, self.seed = split, seed
        self.transform = image_transform(resolution)
        self.rng = random.Random(seed)
        self.skipped = 0
        self.skipped_files: list[str] = []

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, i: int):
        name, _ = self.items[i]
        return self.transform(load_rgb(self.image_dir / name))

    def __getitem__(self, index: int) -> dict[str, Any]:
        for offset in range(len(self.items)):
            i = (index + offset) % len(self.items)
            try:
                image = self._load(i)
            except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for missing/corrupt files
                self.skipped += 1
                self.skipped_files.append(self.items[i][0])
                log.warning("skipping unreadable image %s (%s); %d skipped so far", self.items[i][0], e, self.skipped)
                continue
            captions = self.items[i][1]
            caption = self.rng.choice(captions) if self.split == "train" else captions[0]
            return {"image": image, "caption": caption, "index": i}
        raise RuntimeError(f"no readable image in {self.image_dir}")

    def scan(self, progress: bool = True) -> list[str]:
        """Check every image file; return the names of the unreadable ones."""
        from tqdm.auto import tqdm

        bad = []
        for i in tqdm(range(len(self.items)), desc=f"scan {self.image_dir.name}", disable=not progress):
            try:
                load_rgb(self.image_dir / self.items[i][0])
            except (OSError, ValueError, SyntaxError):
                bad.append(self.items[i][0])
        return bad
