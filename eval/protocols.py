"""Evaluation protocols: which captions a generator is asked for, which real images it is compared with, and how.

A **generator** is anything with ``generate(captions: list[str]) -> FloatTensor (N, 3, H, W) in [-1, 1]`` (the
``Generator`` protocol; ``zoo.pipelines.dalle.DallePipeline`` is the first real one, and is never imported here).
For reranking the ablations need several candidates per caption: ``candidates(captions, n) -> (B, n, 3, H, W)``
(the ``CandidateGenerator`` protocol). ``as_candidate_generator`` gives any generator that call: it uses the
object's own ``candidates`` when it has one, otherwise it calls ``generate`` n times, candidate i under torch seed
``seed + i`` (and with the object's ``seed`` attribute set to ``seed + i`` if it has one), so candidate i of a
caption is the same whatever n is asked -- the reranking curve is nested.

Three generators live here, all usable from ``zoo-eval`` (``generator=folder`` / ``generator=real_blurred``):
- ``FolderGenerator``: a folder of images plus ``captions.json`` (``{"file.png": "caption", ...}``) or
  ``captions.txt`` (one caption per line, in sorted file-name order) -- samples made elsewhere;
  ``save_folder`` writes that layout.
- ``RealBlurredGenerator``: the protocol's own real images blurred by a radius, optionally swapped for another
  scene with probability ``mismatch`` (a "blurry generator" whose numbers are known in advance: a check of the
  machinery, not a model).

Protocols (``load() -> EvalSet``):
- ``CocoProtocol``: MS-COCO zero-shot (DALL·E 1, GLIDE, unCLIP): ``n`` images (default 30,000) drawn from
  ``val{year}`` with a fixed seed, one of each image's captions (seeded), the same images as the real set.
- ``ShapesProtocol``: the same on the built-in shapes world, with ground-truth attributes for the judge.

Resolution: generators produce images at their own resolution; ``resize_for_eval`` brings them to the protocol's
``eval_resolution`` (256 for COCO, as the papers report) with an *antialiased* bicubic resize -- clean-fid's point
(Parmar et al. 2022) is that aliasing resizers move FID a lot, so downsampling must low-pass first. Real images get
the same treatment (shorter side resized with PIL-equivalent antialiased bicubic, centre crop). The Inception
network then applies its own fixed resize to 299 (see ``eval/features.py``).
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from eval.blur import gaussian_blur
from eval.features import check_images, to_uint8
from zoo.errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


# ------------------------------------------------------------------------------------------------ interfaces
@runtime_checkable
class Generator(Protocol):
    """Anything that turns captions into images: ``generate(captions) -> (len(captions), 3, H, W)`` in [-1, 1]."""

    def generate(self, captions: list[str]) -> torch.Tensor: ...


@runtime_checkable
class CandidateGenerator(Protocol):
    """``candidates(captions, n) -> (len(captions), n, 3, H, W)`` in [-1, 1]: n independent samples per caption."""

    def candidates(self, captions: list[str], n: int) -> torch.Tensor: ...


def check_generated(images, n: int, what: str = "generator output") -> torch.Tensor:
    """The generator's output as a float tensor (n, 3, H, W) in [-1, 1], or a ValueError saying what is wrong."""
    check_images(images, what=what)
    if images.shape[0] != n:
        raise ValueError(f"{what}: asked for {n} images (one per caption), got {images.shape[0]}")
    return images


class RepeatedCandidates:
    """``candidates(captions, n)`` from any ``generate``: n calls, call i under seed ``seed + i``.

    Each call runs inside ``torch.random.fork_rng`` with ``torch.manual_seed(seed + i)`` (the caller's RNG state is
    left untouched) and, if the generator exposes a ``seed`` attribute, with that attribute set to ``seed + i``
    (restored afterwards). Candidate i therefore does not depend on n.
    """

    def __init__(self, generator: Generator, seed: int = 0):
        if not callable(getattr(generator, "generate", None)):
            raise TypeError(f"{type(generator).__name__} has no generate(captions) method")
        self.generator, self.seed = generator, int(seed)

    def candidate(self, captions: list[str], i: int) -> torch.Tensor:
        """Candidate ``i`` for every caption: (B, 3, H, W)."""
        g, s = self.generator, self.seed + int(i)
        has_seed = hasattr(g, "seed")
        old = getattr(g, "seed", None)
        try:
            if has_seed:
                g.seed = s
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(s)
                out = g.generate(list(captions))
        finally:
            if has_seed:
                g.seed = old
        return check_generated(out, len(captions), f"{type(g).__name__}.generate (candidate {i})")

    def candidates(self, captions: list[str], n: int) -> torch.Tensor:
        if int(n) < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        return torch.stack([self.candidate(captions, i) for i in range(int(n))], dim=1)  # (B, n, 3, H, W)


def as_candidate_generator(generator, seed: int = 0) -> CandidateGenerator:
    """The generator itself if it has ``candidates(captions, n)``, else ``RepeatedCandidates(generator, seed)``."""
    if callable(getattr(generator, "candidates", None)):
        return generator
    return RepeatedCandidates(generator, seed)


# ------------------------------------------------------------------------------------------------ resizing
def resize_for_eval(images: torch.Tensor, resolution: Optional[int]) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 3, R, R): shorter side to R with antialiased bicubic, centre crop (identity if already R).

    Antialiasing matters when downsampling (clean-fid's argument); upsampling is unaffected by it."""
    if resolution is None:
        return images
    r = int(resolution)
    h, w = images.shape[-2:]
    if (h, w) == (r, r):
        return images
    scale = r / min(h, w)
    new = (max(r, round(h * scale)), max(r, round(w * scale)))
    x = F.interpolate(images.float(), size=new, mode="bicubic", antialias=True, align_corners=False)
    top, left = (new[0] - r) // 2, (new[1] - r) // 2
    return x[..., top : top + r, left : left + r].clamp_(-1.0, 1.0)


# ------------------------------------------------------------------------------------------------ image sets
class ImageBank:
    """Images kept in memory as uint8 (a quarter of float32), served as float [-1, 1] batches.

    Re-iterable (``for batch in bank``): every ablation row reads the same images again. ``add`` takes float
    batches in [-1, 1]; images must all have the same size.
    """

    def __init__(self, batch_size: int = 64):
        self.batch_size = int(batch_size)
        self._chunks: list[torch.Tensor] = []
        self._n = 0

    def add(self, images: torch.Tensor) -> None:
        check_images(images, what="images added to the bank")
        if self._chunks and images.shape[1:] != self._chunks[0].shape[1:]:
            raise ValueError(f"image size changed: {tuple(images.shape[1:])} vs {tuple(self._chunks[0].shape[1:])}")
        self._chunks.append(to_uint8(images.detach().cpu()))
        self._n += images.shape[0]

    def __len__(self) -> int:
        return self._n

    def uint8(self) -> torch.Tensor:
        if len(self._chunks) > 1:
            self._chunks = [torch.cat(self._chunks)]
        if not self._chunks:
            raise ValueError("the image bank is empty")
        return self._chunks[0]

    def tensor(self) -> torch.Tensor:
        """All images as one float tensor (N, 3, H, W) in [-1, 1]."""
        return self.uint8().float() / 127.5 - 1.0

    def __getitem__(self, idx) -> torch.Tensor:
        return self.uint8()[idx].float() / 127.5 - 1.0

    def __iter__(self) -> Iterator[torch.Tensor]:
        u8 = self.uint8()
        for i in range(0, len(u8), self.batch_size):
            yield u8[i : i + self.batch_size].float() / 127.5 - 1.0

    @classmethod
    def from_tensor(cls, images: torch.Tensor, batch_size: int = 64) -> "ImageBank":
        bank = cls(batch_size)
        bank.add(images)
        return bank


def load_image(path, resolution: Optional[int] = None) -> torch.Tensor:
    """An image file as a float tensor (3, H, W) in [-1, 1]; resized/cropped to ``resolution`` if given (PIL-equivalent
    antialiased bicubic, the zoo's ``ImageTransform``)."""
    from zoo.data.transforms import image_transform, load_rgb

    im = load_rgb(path)
    if resolution is not None:
        return image_transform(int(resolution))(im)
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 127.5 - 1.0


class ImageFiles:
    """A re-iterable list of image files read lazily in float [-1, 1] batches (real COCO images, sample folders)."""

    def __init__(self, files: Sequence, resolution: Optional[int] = None, batch_size: int = 32):
        self.files = [Path(f) for f in files]
        self.resolution = resolution
        self.batch_size = int(batch_size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, (int, np.integer)):
            return load_image(self.files[int(idx)], self.resolution)
        idx = idx.tolist() if torch.is_tensor(idx) else list(idx)
        return torch.stack([load_image(self.files[int(i)], self.resolution) for i in idx])

    def __iter__(self) -> Iterator[torch.Tensor]:
        for i in range(0, len(self.files), self.batch_size):
            yield self[range(i, min(i + self.batch_size, len(self.files)))]


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
    index_file.write_text(json.dumps(index, indent=0, ensure_ascii=False))
    return folder


# ------------------------------------------------------------------------------------------------ generators
class FolderGenerator:
    """Samples made elsewhere, as a generator: ``generate(captions)`` returns, for each caption, the next image of
    the folder that carries that caption (cycling when a caption has several images: successive calls give
    successive candidates).

    Layout: image files plus ``captions.json`` (``{"000000.png": "a red circle ...", ...}``, or a list of
    ``{"file": ..., "caption": ...}``) or ``captions.txt`` (one caption per line, matched to the image files in
    sorted name order). ``resolution`` resizes on load (default: the files' own size; they must all agree).
    """

    def __init__(self, path, resolution: Optional[int] = None):
        self.path = Path(str(path)).expanduser()
        if not self.path.is_dir():
            raise ConfigError(f"sample folder not found: {self.path} (fix: generator.path=/dir/with/images "
                              f"and captions.json)")
        self.resolution = resolution
        files, captions = self._index()
        self.files, self.captions = files, captions
        self._by_caption: dict[str, list[int]] = {}
        for i, c in enumerate(captions):
            self._by_caption.setdefault(c, []).append(i)
        self.seed = 0  # candidate i (RepeatedCandidates sets seed = base + i) -> the i-th image of that caption

    def _index(self) -> tuple[list[Path], list[str]]:
        js, txt = self.path / "captions.json", self.path / "captions.txt"
        if js.is_file():
            data = json.loads(js.read_text(encoding="utf-8"))
            pairs = list(data.items()) if isinstance(data, dict) else [(d["file"], d["caption"]) for d in data]
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
        raise ConfigError(f"{self.path} has no captions.json or captions.txt (fix: write one with "
                          f"eval.protocols.save_folder, or captions.txt with one caption per image in name order)")

    def __len__(self) -> int:
        return len(self.files)

    def generate(self, captions: list[str]) -> torch.Tensor:
        missing = [c for c in captions if c not in self._by_caption]
        if missing:
            raise ValueError(f"{len(missing)} captions have no image in {self.path}, e.g. {missing[0]!r} "
                             f"(the folder must hold samples for the protocol's captions)")
        out = []
        for c in captions:
            idx = self._by_caption[c]
            k = int(self.seed) % len(idx)
            out.append(load_image(self.files[idx[k]], self.resolution))
        shapes = {tuple(x.shape) for x in out}
        if len(shapes) > 1:
            raise ValueError(f"images of different sizes {sorted(shapes)} in {self.path} (fix: generator.resolution=N)")
        return torch.stack(out)


class RealBlurredGenerator:
    """The protocol's real images, blurred by ``radius`` (Gaussian standard deviation in pixels, ``eval.blur``), as
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

    def bind(self, eval_set: "EvalSet") -> "RealBlurredGenerator":
        self.eval_set = eval_set
        self._index = {}
        for i, c in enumerate(eval_set.captions):
            self._index.setdefault(c, i)
        return self

    def generate(self, captions: list[str]) -> torch.Tensor:
        if self.eval_set is None:
            raise RuntimeError("RealBlurredGenerator.bind(eval_set) must be called before generate")
        n_pool = len(self.eval_set.captions)
        idx = []
        for c in captions:
            if c not in self._index:
                raise ValueError(f"caption not in the protocol's set: {c!r}")
            i = self._index[c]
            if self.mismatch > 0:
                rng = np.random.default_rng([self.seed, i])
                if rng.random() < self.mismatch:
                    i = (i + 1 + int(rng.integers(n_pool - 1))) % n_pool if n_pool > 1 else i
            idx.append(i)
        images = self.eval_set.real_images(idx)
        return gaussian_blur(images, self.radius) if self.radius else images


# ------------------------------------------------------------------------------------------------ protocols
@dataclass
class EvalSet:
    """What a protocol hands to the ablations.

    ``real`` is a re-iterable source of float [-1, 1] batches at ``resolution`` (a tensor, an ``ImageBank`` or
    ``ImageFiles``); ``captions[i]`` goes with ``real`` image i; ``attributes`` (shapes only) is the ground truth the
    judge checks. ``key`` holds the fields of a ``RealStatsKey`` (dataset, split, resolution, n, protocol)."""

    name: str
    split: str
    captions: list[str]
    real: Any
    resolution: int
    attributes: Optional[list[dict]] = None
    protocol: str = ""
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.captions)

    def real_images(self, idx: Sequence[int]) -> torch.Tensor:
        """Real images ``idx`` as one float tensor (len(idx), 3, R, R)."""
        idx = list(idx)
        if torch.is_tensor(self.real):
            return self.real[idx]
        return self.real[idx]

    def stats_key(self, extractor: str, blur_radius: float = 0.0):
        from eval.metrics import RealStatsKey

        return RealStatsKey(self.name, self.split, int(self.resolution), extractor, n=len(self.captions),
                            blur_radius=float(blur_radius), protocol=self.protocol)

    def describe(self) -> dict:
        return {"dataset": self.name, "split": self.split, "n": len(self.captions), "resolution": int(self.resolution),
                "protocol": self.protocol, **self.info}


class ShapesProtocol:
    """The zero-shot protocol on the built-in shapes world: ``n`` scenes of ``split`` (a pure function of ``seed``),
    their ``caption_style`` captions, the rendered scenes as real images, the scene attributes as ground truth.

    ``resolution`` is the world's rendering size (the models' size, 32 px by default) and also the evaluation size
    unless ``eval_resolution`` is given (then generated and real images are both resized to it)."""

    def __init__(self, n: int = 1000, split: str = "val", resolution: int = 32, seed: int = 0,
                 caption_style: str = "descriptive", min_objects: int = 1, max_objects: int = 3,
                 eval_resolution: Optional[int] = None):
        if int(n) < 2:
            raise ConfigError(f"protocol.n must be >= 2 (statistics need two samples), got {n}")
        self.n, self.split, self.resolution, self.seed = int(n), split, int(resolution), int(seed)
        self.caption_style, self.min_objects, self.max_objects = caption_style, int(min_objects), int(max_objects)
        self.eval_resolution = int(eval_resolution) if eval_resolution else self.resolution

    def load(self, progress: bool = False) -> EvalSet:
        from zoo.data.shapes import WORLD_VERSION, ShapesDataset
        from zoo.progress import track

        ds = ShapesDataset(self.split, size=self.n, resolution=self.resolution, seed=self.seed,
                           caption_style=self.caption_style, min_objects=self.min_objects,
                           max_objects=self.max_objects)
        bank = ImageBank()
        captions, attributes, chunk = [], [], []
        for i in track(range(self.n), desc="render shapes (real)", disable=not progress, leave=False):
            s = ds[i]
            captions.append(s["caption"])
            attributes.append(s["attributes"])
            chunk.append(s["image"])
            if len(chunk) == 256 or i == self.n - 1:
                bank.add(resize_for_eval(torch.stack(chunk), self.eval_resolution))
                chunk = []
        protocol = (f"shapes-v{WORLD_VERSION};seed={self.seed};style={self.caption_style};"
                    f"objects={self.min_objects}-{self.max_objects};render={self.resolution}")
        return EvalSet("shapes", self.split, captions, bank, self.eval_resolution, attributes, protocol,
                       info={"generation_resolution": self.resolution, "caption_style": self.caption_style,
                             "seed": self.seed})


class CocoProtocol:
    """MS-COCO zero-shot: ``n`` images drawn without replacement from ``val{year}`` with ``random.Random(seed)``
    (all of them if there are fewer), one caption per image drawn with the same generator, and those images --
    resized (shorter side, antialiased bicubic) and centre-cropped to ``eval_resolution`` -- as the real set.

    Layout (as ``zoo.data.coco``): ``{root}/annotations/captions_val{year}.json`` and ``{root}/val{year}/``."""

    def __init__(self, root: str, n: int = 30000, year: int = 2014, seed: int = 0, eval_resolution: int = 256,
                 batch_size: int = 32):
        if root is None or str(root) in ("", "???"):
            raise ConfigError("the MS-COCO protocol needs the dataset (fix: protocol.root=/path/to/coco holding "
                              "annotations/captions_val2014.json and val2014/)")
        self.root, self.n, self.year, self.seed = Path(str(root)).expanduser(), int(n), int(year), int(seed)
        self.eval_resolution, self.batch_size = int(eval_resolution), int(batch_size)

    def sample(self) -> tuple[list[str], list[str]]:
        """(file names, captions) of the protocol's images, in protocol order."""
        ann = self.root / "annotations" / f"captions_val{self.year}.json"
        if not ann.is_file():
            raise ConfigError(f"MS-COCO captions not found: {ann} (fix: protocol.root=/path/to/coco holding "
                              f"annotations/captions_val{self.year}.json and val{self.year}/)")
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
        return EvalSet(f"coco{self.year}", "val", captions, real, self.eval_resolution, None, protocol,
                       info={"seed": self.seed, "root": str(self.root)})


# ------------------------------------------------------------------------------------------------ generation
def generate_images(generator, captions: Sequence[str], batch_size: int = 32, resolution: Optional[int] = None,
                    seed: int = 0, progress: bool = True) -> ImageBank:
    """One image per caption (candidate 0 of ``as_candidate_generator(generator, seed)``), in batches with a progress
    bar, resized to ``resolution`` and kept as uint8 in an ``ImageBank``."""
    from zoo.progress import track

    gen = as_candidate_generator(generator, seed)
    bank = ImageBank()
    captions = list(captions)
    with track(total=len(captions), desc="generate", unit="img", disable=not progress) as bar:
        for i in range(0, len(captions), batch_size):
            caps = captions[i : i + batch_size]
            if isinstance(gen, RepeatedCandidates):
                out = gen.candidate(caps, 0)
            else:
                out = gen.candidates(caps, 1)[:, 0]
            bank.add(resize_for_eval(out, resolution))
            bar.update(len(caps))
    return bank


__all__ = [
    "CandidateGenerator", "CocoProtocol", "EvalSet", "FolderGenerator", "Generator", "ImageBank", "ImageFiles",
    "RealBlurredGenerator", "RepeatedCandidates", "ShapesProtocol", "as_candidate_generator", "check_generated",
    "generate_images", "load_image", "resize_for_eval", "save_folder",
]
