"""MS-COCO zero-shot (``protocol=coco``; DALL·E 1, GLIDE, unCLIP): ``n`` images (default 30,000) drawn from
``val{year}`` with a fixed seed, one of each image's captions (seeded), the same images as the real set."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from eval.eval_set import EvalSet, ImageFiles
from zoo.errors import ConfigError


class CocoProtocol:
    """MS-COCO zero-shot: ``n`` images drawn without replacement from ``val{year}`` with ``random.Random(seed)``
    (all of them if there are fewer), one caption per image drawn with the same generator, and those images --
    resized (shorter side, antialiased bicubic) and centre-cropped to ``eval_resolution`` -- as the real set.

    Layout (as ``zoo.data.coco``): ``{root}/annotations/captions_val{year}.json`` and ``{root}/val{year}/``."""

    def __init__(
        self,
        root: str,
        n: int = 30000,
        year: int = 2014,
        seed: int = 0,
        eval_resolution: int = 256,
        batch_size: int = 32,
    ):
        if root is None or str(root) in ("", "???"):
            raise ConfigError(
                "the MS-COCO protocol needs the dataset (fix: protocol.root=/path/to/coco holding "
                "annotations/captions_val2014.json and val2014/)"
            )
        self.root, self.n, self.year, self.seed = Path(str(root)).expanduser(), int(n), int(year), int(seed)
        self.eval_resolution, self.batch_size = int(eval_resolution), int(batch_size)

    def sample(self) -> tuple[list[str], list[str]]:
        """(file names, captions) of the protocol's images, in protocol order."""
        ann = self.root / "annotations" / f"captions_val{self.year}.json"
        if not ann.is_file():
            raise ConfigError(
                f"MS-COCO captions not found: {ann} (fix: protocol.root=/path/to/coco holding "
                f"annotations/captions_val{self.year}.json and val{self.year}/)"
            )
        meta = json.loads(ann.read_text(encoding="utf-8"))
        caps: dict[int, list[str]] = {}
        for a in sorted(meta["annotations"], key=lambda a: a["id"]):
            caps.setdefault(a["image_id"], []).append(str(a["caption"]).strip())
        images = sorted((im for im in meta["images"] if im["id"] in caps), key=lambda im: im["id"])
        rng = random.Random(self.seed)
        chosen = rng.sample(images, min(self.n, len(images)))
        return [im["file_name"] for im in chosen], [rng.choice(caps[im["id"]]) for im in chosen]

    def load(self, progress: bool = False) -> EvalSet:
        files, captions = self.sample()
        folder = self.root / f"val{self.year}"
        if not folder.is_dir():
            raise ConfigError(f"MS-COCO image folder not found: {folder} (fix: protocol.root=/path/to/coco)")
        real = ImageFiles([folder / f for f in files], self.eval_resolution, self.batch_size)
        digest = hashlib.sha256("\n".join(files).encode()).hexdigest()[:12]
        protocol = f"coco{self.year}-val;seed={self.seed};files={digest};resize=bicubic-aa-centercrop"
        return EvalSet(
            f"coco{self.year}",
            "val",
            captions,
            real,
            self.eval_resolution,
            None,
            protocol,
            info={"seed": self.seed, "root": str(self.root)},
        )
