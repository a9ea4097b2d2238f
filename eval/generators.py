"""Generators that are not models, for ``zoo-eval`` (``generator=folder`` / ``generator=real_blurred``), and the
loop that runs any generator over a protocol's captions. The ``Generator`` interface itself is
``zoo.pipelines.base`` (shared with ``zoo-sample``).

- ``FolderGenerator``: a folder of images plus ``captions.json`` (``{"file.png": "caption", ...}``) or
  ``captions.txt`` (one caption per line, in sorted file-name order) -- samples made elsewhere;
  ``save_folder`` writes that layout.
- ``RealBlurredGenerator``: the protocol's own real images blurred by a radius, optionally swapped for another
  scene with probability ``mismatch`` (a "blurry generator" whose numbers are known in advance: a check of the
  machinery, not a model).
- ``generate_images``: one image per caption (candidate 0), batched, resized to the evaluation resolution.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import torch

from eval.eval_set import ImageBank, load_image, resize_for_eval
from eval.features import check_images, to_uint8
from zoo.checkpoint import atomic_write_text
from zoo.data.degradations import gaussian_blur
from zoo.errors import ConfigError
from zoo.pipelines.base import RepeatedCandidates, as_candidate_generator, seeded_chunk

if TYPE_CHECKING:
    from eval.eval_set import EvalSet

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def save_folder(images: torch.Tensor, captions: Sequence[str], folder, start: int = 0) -> Path:
    """Write images (N, 3, H, W) in [-1, 1] as ``{i:06d}.png`` plus ``captions.json`` (merged with any existing
    one): the layout ``FolderGenerator`` reads."""
    from PIL import Image

    check_images(images)
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index_file = folder / "captions.json"
    index = json.loads(index_file.read_text()) if index_file.is_file() else {}
    for k, (img, cap) in enumerate(zip(to_uint8(images), captions)):
        name = f"{start + k:06d}.png"
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / name)
        index[name] = str(cap)
    # atomically: the index is merged into by the next call, and a truncated one lost every earlier image's caption
    atomic_write_text(index_file, json.dumps(index, indent=0, ensure_ascii=False))
    return folder


def find_slice(pool: Sequence[str], captions: list[str], hints: Sequence[int]) -> Optional[int]:
    """Where ``captions`` sit as a contiguous slice of ``pool`` (the protocol's captions), trying ``hints`` first
    (the last batch's start: the same batch again for each candidate; the position after it: the next batch), then
    every start, lazily. None when they are not a slice of it. zoo-eval passes such slices, so a generator bound to
    the protocol knows which occurrence of a repeated caption it is drawing."""
    n = len(captions)
    for p in itertools.chain(hints, range(len(pool) - n + 1)):
        if 0 <= p <= len(pool) - n and list(pool[p : p + n]) == captions:
            return p
    return None


class _ProtocolSlices:
    """``find_slice`` over one protocol's captions, remembering where the last batch was (its start and the
    position after it: the hints for the next call). Empty: nothing is ever found."""

    def __init__(self, pool: Sequence[str] = ()):
        self.pool = list(pool)
        self.last, self.next = -1, 0

    def locate(self, captions: list[str]) -> Optional[int]:
        p = find_slice(self.pool, captions, (self.last, self.next)) if self.pool else None
        if p is not None:
            self.last, self.next = p, p + len(captions)
        return p


class FolderGenerator:
    """Samples made elsewhere, as a generator: ``generate(captions)`` returns, for each caption, the next image of
    the folder that carries that caption (cycling when a caption has several images: successive calls give
    successive candidates).

    Layout: image files plus ``captions.json`` (``{"000000.png": "a red circle ...", ...}``, or a list of
    ``{"file": ..., "caption": ...}``) or ``captions.txt`` (one caption per line, matched to the image files in
    sorted name order). ``resolution`` resizes on load (default: the files' own size; they must all agree).
    """

    seed_is_candidate_index = True  # the seed picks the caption's i-th image: zoo-eval does not offset it per batch

    def __init__(self, path, resolution: Optional[int] = None):
        self.path = Path(str(path)).expanduser()
        if not self.path.is_dir():
            raise ConfigError(
                f"sample folder not found: {self.path} (fix: generator.path=/dir/with/images and captions.json)"
            )
        self.resolution = resolution
        files, captions = self._index()
        self.files, self.captions = files, captions
        self._check_headers()
        self._by_caption: dict[str, list[int]] = {}
        for i, c in enumerate(captions):
            self._by_caption.setdefault(c, []).append(i)
        self.seed = 0  # candidate i (RepeatedCandidates sets seed = base + i) -> the i-th image of that caption
        self._slices = _ProtocolSlices()  # the bound protocol (bind), and each of its positions' occurrence rank
        self._occurrence: list[int] = []

    def _index(self) -> tuple[list[Path], list[str]]:
        js, txt = self.path / "captions.json", self.path / "captions.txt"
        if js.is_file():
            pairs = self._read_captions_json(js)
            pairs.sort()
            files = [self.path / f for f, _ in pairs]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise ConfigError(f"{js} names {len(missing)} missing files, e.g. {missing[:3]}")
            return files, [str(c).strip() for _, c in pairs]
        if txt.is_file():
            caps = [line.strip() for line in txt.read_text(encoding="utf-8").splitlines() if line.strip()]
            files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if len(files) != len(caps):
                raise ConfigError(f"{txt} has {len(caps)} captions but {self.path} has {len(files)} images")
            return files, caps
        raise ConfigError(
            f"{self.path} has no captions.json or captions.txt (fix: write one with "
            f"eval.generators.save_folder, or captions.txt with one caption per image in name order)"
        )

    @staticmethod
    def _read_captions_json(js: Path) -> list[tuple[str, str]]:
        """(file name, caption) pairs of ``captions.json``. A truncated or hand-edited file was a JSONDecodeError,
        KeyError or TypeError traceback that did not name it; now a ConfigError naming it and the layout."""
        layout = '{"000000.png": "caption", ...} or [{"file": "000000.png", "caption": "..."}, ...]'
        try:
            data = json.loads(js.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ConfigError(f"{js} is not valid JSON ({e}) (fix: rewrite it as {layout})") from None
        if isinstance(data, dict):
            pairs = list(data.items())
        elif isinstance(data, list) and all(isinstance(d, dict) and {"file", "caption"} <= set(d) for d in data):
            pairs = [(d["file"], d["caption"]) for d in data]
        else:
            pairs = None
        if pairs is None or not all(isinstance(f, str) and isinstance(c, str) for f, c in pairs):
            raise ConfigError(f"{js} is not a captions index (fix: rewrite it as {layout})")
        return pairs

    def _unreadable(self, file: Path, err: BaseException) -> ConfigError:
        return ConfigError(
            f"unreadable image {file} in the sample folder ({type(err).__name__}: {err}) (fix: re-save it, or "
            f"remove it and its caption entry; zoo-eval scores every caption's image, so it cannot be skipped)"
        )

    def _check_headers(self) -> None:
        """Open every file's header (cheap: no pixels decoded), so an empty or non-image file fails before any work."""
        from PIL import Image

        sizes: dict[tuple[int, int], Path] = {}
        for f in self.files:
            try:
                with Image.open(f) as im:
                    sizes.setdefault(im.size, f)
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                raise self._unreadable(f, e) from None
        if self.resolution is None and len(sizes) > 1:
            # images are stacked per batch at their own size: mixed sizes were a ValueError traceback mid-run,
            # after the judge and the metrics were built
            (a, fa), (b, fb) = list(sizes.items())[:2]
            raise ConfigError(
                f"the sample folder {self.path} holds images of different sizes, e.g. {fa.name} "
                f"{a[0]}x{a[1]} and {fb.name} {b[0]}x{b[1]} (fix: generator.resolution=<the evaluation resolution>)"
            )

    def __len__(self) -> int:
        return len(self.files)

    def bind(self, eval_set: "EvalSet") -> "FolderGenerator":
        """zoo-eval calls this before any long work (the judge, real-image statistics): a folder that lacks samples
        for some of the protocol's captions was a ValueError traceback only when generation reached them."""
        missing = [c for c in dict.fromkeys(eval_set.captions) if c not in self._by_caption]
        if missing:
            raise ConfigError(self._missing_message(missing, len(set(eval_set.captions))))
        # the r-th occurrence of a caption the protocol repeats takes the caption's r-th image (candidate i: the
        # (r + i)-th): every repeat was served the first image, so a folder holding exactly the protocol's images
        # scored as a set with duplicates
        self._slices = _ProtocolSlices(eval_set.captions)
        seen: dict[str, int] = {}
        self._occurrence = []
        for c in eval_set.captions:
            self._occurrence.append(seen.get(c, 0))
            seen[c] = seen.get(c, 0) + 1
        return self

    def _missing_message(self, missing: list[str], total: int) -> str:
        return (
            f"the sample folder {self.path} has no image for {len(missing)} of the {total} captions asked for, "
            f"e.g. {missing[0]!r} (fix: write a sample for every caption of the protocol into it, "
            f"e.g. with eval.generators.save_folder, or score it with the protocol it was made for)"
        )

    def _load(self, file: Path) -> torch.Tensor:
        try:
            return load_image(file, self.resolution)
        except (OSError, ValueError) as e:  # e.g. truncated pixel data, which the header check cannot see
            raise self._unreadable(file, e) from None

    def generate(self, captions: list[str]) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in self._by_caption]
        if missing:
            raise ConfigError(self._missing_message(missing, len(set(captions))))
        rank = [0] * len(captions)  # each caption's occurrence in the protocol (0 when unbound or not a slice of it)
        p = self._slices.locate(list(captions))
        if p is not None:
            rank = self._occurrence[p : p + len(captions)]
        out = []
        for c, r in zip(captions, rank):
            idx = self._by_caption[c]
            k = (int(self.seed) + r) % len(idx)
            out.append(self._load(self.files[idx[k]]))
        shapes = {tuple(x.shape) for x in out}
        if len(shapes) > 1:
            raise ConfigError(
                f"images of different sizes {sorted(shapes)} in {self.path} (fix: generator.resolution=N)"
            )
        return torch.stack(out)


class RealBlurredGenerator:
    """The protocol's real images, blurred by ``radius`` (Gaussian standard deviation in pixels, ``zoo.data.degradations``), as
    a generator: a test generator whose metrics are known in advance ("a blurry generator").

    ``mismatch``: probability that an image is replaced by another real scene (drawn from the same pool) -- its
    candidates then differ, so CLIP reranking has something to choose (used by the reranking check). Draws are a
    pure function of (``seed``, caption position in the pool). Call ``bind(eval_set)`` first (``zoo-eval`` does).
    """

    def __init__(self, radius: float = 2.0, mismatch: float = 0.0, seed: int = 0):
        if not 0.0 <= float(mismatch) <= 1.0:
            raise ConfigError(f"mismatch must be a probability in [0, 1], got {mismatch} (fix: generator.mismatch=0.5)")
        self.radius, self.mismatch, self.seed = float(radius), float(mismatch), int(seed)
        self.eval_set: Optional["EvalSet"] = None
        self._index: dict[str, int] = {}
        self._slices = _ProtocolSlices()  # where batches of captions sit in the bound protocol

    def bind(self, eval_set: "EvalSet") -> "RealBlurredGenerator":
        self.eval_set = eval_set
        self._index = {}
        for i, c in enumerate(eval_set.captions):
            self._index.setdefault(c, i)
        self._slices = _ProtocolSlices(eval_set.captions)
        return self

    def _positions(self, captions: list[str]) -> list[int]:
        """Where ``captions`` sit in the protocol. zoo-eval passes contiguous slices of it (the same slice again for
        each candidate, then the next one): found there, a caption the protocol repeats (short captions: 212
        distinct of 1,000) gets its own scene, not the first one with that caption -- the radius-0 check then has
        FD 0 again. Any other list: each caption's first scene."""
        p = self._slices.locate(captions)
        if p is not None:
            return list(range(p, p + len(captions)))
        return [self._index[c] if c in self._index else -1 for c in captions]

    def generate(self, captions: list[str]) -> torch.Tensor:
        if self.eval_set is None:
            raise RuntimeError("RealBlurredGenerator.bind(eval_set) must be called before generate")
        n_pool = len(self.eval_set.captions)
        idx = []
        for c, i in zip(captions, self._positions(list(captions))):
            if i < 0:
                raise ValueError(f"caption not in the protocol's set: {c!r}")
            if self.mismatch > 0:
                rng = np.random.default_rng([self.seed, i])
                if rng.random() < self.mismatch:
                    i = (i + 1 + int(rng.integers(n_pool - 1))) % n_pool if n_pool > 1 else i
            idx.append(i)
        images = self.eval_set.real_images(idx)
        return gaussian_blur(images, self.radius) if self.radius else images


def generate_images(
    generator,
    captions: Sequence[str],
    batch_size: int = 32,
    resolution: Optional[int] = None,
    seed: int = 0,
    progress: bool = True,
) -> ImageBank:
    """One image per caption (candidate 0 of ``as_candidate_generator(generator, seed)``), in batches with a progress
    bar, resized to ``resolution`` and kept as uint8 in an ``ImageBank``."""
    from zoo.progress import track

    gen = as_candidate_generator(generator, seed)
    bank = ImageBank()
    captions = list(captions)
    with track(total=len(captions), desc="generate", unit="img", disable=not progress) as bar:
        for j, i in enumerate(range(0, len(captions), batch_size)):
            caps = captions[i : i + batch_size]
            with seeded_chunk(gen, seed, j):  # each batch its own noise (zoo.pipelines.base.CHUNK_SEED_STRIDE)
                if isinstance(gen, RepeatedCandidates):
                    out = gen.candidate(caps, 0)
                else:
                    out = gen.candidates(caps, 1)[:, 0]
            bank.add(resize_for_eval(out, resolution))
            bar.update(len(caps))
    return bank


__all__ = ["FolderGenerator", "IMAGE_SUFFIXES", "RealBlurredGenerator", "generate_images", "save_folder"]
