"""What a protocol hands to the ablations (``EvalSet``) and the image containers behind it.

- ``EvalSet``: the captions, the real images they go with (at the evaluation resolution), ground-truth attributes
  (shapes only) and the key of the cached real statistics.
- ``ImageBank``: images kept in memory as uint8, served as float [-1, 1] batches (generated images, shapes scenes);
  ``ImageFiles``: image files read lazily (MS-COCO, sample folders); ``load_image``: one file.

Resolution: generators produce images at their own resolution; ``resize_for_eval`` brings them to the protocol's
``eval_resolution`` (256 for COCO, as the papers report) with an *antialiased* bicubic resize -- clean-fid's point
(Parmar et al. 2022) is that aliasing resizers move FID a lot, so downsampling must low-pass first. Real images get
the same treatment (shorter side resized with PIL-equivalent antialiased bicubic, centre crop). The Inception
network then applies its own fixed resize to 299 (see ``eval/features.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from eval.features import check_images, to_uint8


@dataclass
class EvalSet:
    """What a protocol hands to the ablations.

    ``real`` is a re-iterable source of float [-1, 1] batches at ``resolution`` (a tensor, an ``ImageBank`` or
    ``ImageFiles``); ``captions[i]`` goes with ``real`` image i; ``attributes`` (shapes only) is the ground truth the
    judge checks. ``stats_key`` gives the ``RealStatsKey`` of the cached real statistics (dataset, split, resolution,
    n, protocol, plus ``data_id``: what identifies the image files actually read, e.g. MS-COCO's names, sizes and
    mtimes, so two copies of a dataset do not share statistics; empty when ``protocol`` already determines the
    images, as for the rendered shapes world, whose keys stay as they were)."""

    name: str
    split: str
    captions: list[str]
    real: Any
    resolution: int
    attributes: Optional[list[dict]] = None
    protocol: str = ""
    info: dict = field(default_factory=dict)
    data_id: str = ""

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

        return RealStatsKey(
            self.name,
            self.split,
            int(self.resolution),
            extractor,
            n=len(self.captions),
            blur_radius=float(blur_radius),
            protocol=self.protocol + (f";data={self.data_id}" if self.data_id else ""),
        )

    def describe(self) -> dict:
        return {
            "dataset": self.name,
            "split": self.split,
            "n": len(self.captions),
            "resolution": int(self.resolution),
            "protocol": self.protocol,
            **self.info,
        }


def resize_for_eval(images: torch.Tensor, resolution: Optional[int]) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 3, R, R): shorter side to R with antialiased bicubic, centre crop (identity if already R;
    ``zoo.data.transforms.resize_center_crop``, the one resize of the zoo).

    Antialiasing matters when downsampling (clean-fid's argument); upsampling is unaffected by it."""
    if resolution is None:
        return images
    from zoo.data.transforms import resize_center_crop

    return resize_center_crop(images.float(), int(resolution))


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
        """Batches of the readable files: one that fails to decode (truncated past its header) is skipped with a
        warning and counted in ``skipped`` (a real set for FID / IS / KID is a distribution, not pairs)."""
        import logging

        self.skipped: list[str] = []
        batch: list[torch.Tensor] = []
        for f in self.files:
            try:
                batch.append(load_image(f, self.resolution))
            except (OSError, ValueError) as e:
                self.skipped.append(str(f))
                logging.getLogger("zoo.eval").warning(
                    "skipping unreadable image %s (%s: %s); %d skipped", f, type(e).__name__, e, len(self.skipped)
                )
                continue
            if len(batch) == self.batch_size:
                yield torch.stack(batch)
                batch = []
        if batch:
            yield torch.stack(batch)


__all__ = ["EvalSet", "ImageBank", "ImageFiles", "load_image", "resize_for_eval"]
