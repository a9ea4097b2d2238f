"""MS-COCO zero-shot (``protocol=coco``; DALL·E 1, GLIDE, unCLIP): ``n`` images (default 30,000) drawn from
``val{year}`` with a fixed seed, one of each image's captions (seeded), the same images as the real set.

A drawn image that is missing or not an image file (its header does not open) is replaced before anything is
generated -- by the next readable image of a second seeded draw, with a caption of its own -- counted, and named in
the results (``protocol.skipped_unreadable``). Before, one such file ended the run when the real images were read,
after every sample had been generated. With every file readable the draw is what it always was."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path

from eval.eval_set import EvalSet, ImageFiles
from zoo.errors import ConfigError

log = logging.getLogger("zoo.eval")


def unreadable(path: Path) -> str:
    """Why ``path`` cannot serve as a real image ("" when it can): missing, or a header PIL does not recognise. Only
    the header is read (a 30,000-image check costs seconds); a file truncated past it fails when read, and
    ``ImageFiles`` skips it there."""
    from PIL import Image

    try:
        with Image.open(path):
            return ""
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        return f"{type(e).__name__}: {e}"


def files_digest(folder: Path, files: list[str]) -> str:
    """What keys the cached real statistics of ``files`` in ``folder`` (``EvalSet.data_id``): each file's name, size
    and mtime. The protocol string keeps the names' digest only (a copy of the same images is the same protocol for
    the leaderboard; a touched file does not make runs "not comparable").

    The names alone (as before) let two copies of COCO with the same annotation file -- a re-encoded or filtered
    copy, a second download -- share one cache entry, so FID against the second used the first's statistics. Hashing
    the contents would read every image (gigabytes) on each run, the work the cache exists to skip; one ``stat`` per
    file costs well under a second for 30,000. Any rewrite of a file (re-encoding, filtering) changes its mtime and
    almost always its size; a copy that keeps mtimes (``cp -a``, ``rsync -a``, unzip) shares the entry, one that does
    not recomputes it once (slower, never wrong)."""
    h = hashlib.sha256()
    for f in files:
        st = (folder / f).stat()
        h.update(f"{f}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


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
        if int(n) < 2:  # as ShapesProtocol: here, not after every sample has been generated
            raise ConfigError(f"protocol.n must be >= 2 (statistics need two samples), got {n} (fix: protocol.n=30000)")
        self.root, self.n, self.year, self.seed = Path(str(root)).expanduser(), int(n), int(year), int(seed)
        self.eval_resolution, self.batch_size = int(eval_resolution), int(batch_size)
        self.skipped: list[tuple[str, str]] = []  # (file, why) of unreadable drawn images, replaced (sample())

    def sample(self) -> tuple[list[str], list[str]]:
        """(file names, captions) of the protocol's images, in protocol order."""
        ann = self.root / "annotations" / f"captions_val{self.year}.json"
        if not ann.is_file():
            raise ConfigError(
                f"MS-COCO captions not found: {ann} (fix: protocol.root=/path/to/coco holding "
                f"annotations/captions_val{self.year}.json and val{self.year}/)"
            )
        # a truncated download or another COCO file under this name (instances_*.json) was a bare JSONDecodeError /
        # KeyError naming neither the file nor the fix (as zoo.data.coco reports it)
        try:
            meta = json.loads(ann.read_text(encoding="utf-8"))
            caps: dict[int, list[str]] = {}
            for a in sorted(meta["annotations"], key=lambda a: a["id"]):
                caps.setdefault(a["image_id"], []).append(str(a["caption"]).strip())
            images = sorted((im for im in meta["images"] if im["id"] in caps), key=lambda im: im["id"])
            rng = random.Random(self.seed)
            chosen = rng.sample(images, min(self.n, len(images)))
            files, captions = [im["file_name"] for im in chosen], [rng.choice(caps[im["id"]]) for im in chosen]
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(
                f"{ann} is not an MS-COCO captions file ({type(e).__name__}: {e}) (fix: download "
                f"annotations_trainval{self.year}.zip again and unpack its captions_val{self.year}.json there)"
            ) from None
        return self._replace_unreadable(files, captions, images, caps)

    def _replace_unreadable(self, files, captions, images, caps) -> tuple[list[str], list[str]]:
        """``files`` / ``captions`` with every unreadable file swapped for the next readable image (and one of its
        captions) of a second draw seeded by ``seed`` (the first draw is untouched); ``self.skipped`` lists them."""
        folder = self.root / f"val{self.year}"
        self.skipped = []
        bad = [(i, why) for i, f in enumerate(files) if (why := unreadable(folder / f))]
        if not bad:
            return files, captions
        files, captions = list(files), list(captions)
        taken = set(files)
        spare_rng = random.Random(f"coco-replacements-{self.seed}")
        spares = [im for im in images if im["file_name"] not in taken]
        spare_rng.shuffle(spares)
        spares_iter = iter(spares)
        for i, why in bad:
            self.skipped.append((files[i], why))
            for im in spares_iter:
                spare_why = unreadable(folder / im["file_name"])
                if not spare_why:
                    files[i], captions[i] = im["file_name"], spare_rng.choice(caps[im["id"]])
                    break
                self.skipped.append((im["file_name"], spare_why))
            else:
                files[i] = captions[i] = None  # no readable image left to draw: the set is smaller
        keep = [i for i, f in enumerate(files) if f is not None]
        files, captions = [files[i] for i in keep], [captions[i] for i in keep]
        log.warning(
            "MS-COCO protocol: %d unreadable image file(s) in val%d, replaced by other val images (%s%s)",
            len(self.skipped),
            self.year,
            "; ".join(f"{name} ({why})" for name, why in self.skipped[:3]),
            f"; ... {len(self.skipped) - 3} more" if len(self.skipped) > 3 else "",
        )
        return files, captions

    def load(self, progress: bool = False) -> EvalSet:
        files, captions = self.sample()
        folder = self.root / f"val{self.year}"
        if not folder.is_dir():
            raise ConfigError(f"MS-COCO image folder not found: {folder} (fix: protocol.root=/path/to/coco)")
        if len(files) < 2:  # e.g. an annotation file of one image, or every drawn file unreadable
            raise ConfigError(
                f"the MS-COCO protocol found {len(files)} readable image(s) with captions in {folder} (statistics need "
                f"two; fix: protocol.root=/path/to/coco holding annotations/captions_val{self.year}.json and "
                f"val{self.year}/)"
            )
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
            info={
                "seed": self.seed,
                "root": str(self.root),
                **({"skipped_unreadable": [name for name, _ in self.skipped]} if self.skipped else {}),
            },
            data_id=files_digest(folder, files),
        )
