"""The standard FID Inception (torch-fidelity's ``FeatureExtractorInceptionV3``) behind one small, offline interface.

``InceptionFeatures(weights_path)`` maps images in [-1, 1] to the two feature sets the metrics need:

- ``"2048"``: the 2048-d pool features (FID, KID);
- ``"logits_unbiased"``: the 1008-way logits without the fc bias (Inception Score, as torch-fidelity computes it).

The network is torch-fidelity's own module (a port of the TF1 graph used by TTUR/``fid.py``): we do not re-implement
it; we only change where its weights come from. torch-fidelity would download them from a GitHub release through
``torch.hub``; here they come from a local file (``weights_path``, the ``eval.inception_weights`` option) or from
torch.hub's cache, and nothing is downloaded unless ``allow_download=True``. The file is read with
``weights_only=True`` (``zoo.checkpoint.safe_load``) -- torch-fidelity itself reads a user path with
``weights_only=False``, so we load the state dict ourselves and hand it to the extractor's constructor.

Preprocessing (one method, documented): images in [-1, 1] are mapped to uint8 with ``round((x + 1) * 127.5)``
(clamped to [0, 255]) and given to the extractor at their own size; the extractor then resizes to 299x299 with
its TF1-compatible bilinear interpolation (``interpolate_bilinear_2d_like_tensorflow1x``) and scales to [-1, 1].
We chose torch-fidelity's internal resize over clean-fid's PIL-bicubic because (a) it is bit-compatible with
torch-fidelity, TTUR and torchmetrics (``antialias=False``), the implementations whose published numbers we compare
against, and the parity tests check it end to end; (b) the papers we reproduce (DALL·E via the DM-GAN code, GLIDE,
unCLIP) used the TF1/pytorch-fid lineage, not clean-fid. clean-fid's argument (bilinear without antialiasing aliases
when *downsampling*) matters for inputs larger than 299 px; the zoo's 256 px (and smaller) images are upsampled,
where the two resizers differ far less. Rounding to uint8 first is also what happens when samples are saved as PNG.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union
from unittest import mock

import torch
import torch.nn as nn
import torch_fidelity.feature_extractor_inceptionv3 as _tfi

from zoo.checkpoint import atomic_torch_save, safe_load
from zoo.errors import MissingWeightsError
from zoo.pipelines.base import (  # the generator output contract
    check_images,
)

INCEPTION_URL: str = _tfi.URL_INCEPTION_V3
INCEPTION_FILENAME: str = os.path.basename(INCEPTION_URL)  # weights-inception-2015-12-05-6726825d.pth
INCEPTION_NAME = "inception-v3-compat"  # torch-fidelity's registry name for this extractor
FEATURES = ("2048", "logits_unbiased")
WEIGHTS_OPTION = "eval.inception_weights"

# Images may overshoot [-1, 1] by float rounding only (RANGE_TOLERANCE); anything more is a caller bug (unclamped
# model outputs, [0, 255] images), reported by check_images instead of silently clamped.

ImageSource = Union[torch.Tensor, Iterable]


def default_weights_path() -> Path:
    """Where torch.hub (and so torch-fidelity) caches the file: ``$TORCH_HOME/hub/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILENAME


def _missing(looked_at: Path, explicit: bool) -> MissingWeightsError:
    where = f"the path you gave ({looked_at})" if explicit else f"torch.hub's cache ({looked_at})"
    return MissingWeightsError(
        f"FID Inception weights {INCEPTION_FILENAME} not found in {where}; nothing is downloaded at run time. "
        f"Fix: download {INCEPTION_URL} on a machine with internet, then either pass "
        f"{WEIGHTS_OPTION}=/path/to/{INCEPTION_FILENAME} (InceptionFeatures(weights_path=...)) or copy it to "
        f"{default_weights_path()} ($TORCH_HOME/hub/checkpoints/). "
        f"(InceptionFeatures(allow_download=True) fetches it into that cache.)"
    )


def resolve_weights(weights_path: Optional[Union[str, os.PathLike]] = None, allow_download: bool = False) -> Path:
    """The local weights file to use; raise ``MissingWeightsError`` (no network) when there is none."""
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise _missing(path, explicit=True)
        return path
    path = default_weights_path()
    if path.is_file():
        return path
    if not allow_download:
        raise _missing(path, explicit=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The real download path for users (the same URL torch-fidelity fetches through torch.hub).
    torch.hub.download_url_to_file(INCEPTION_URL, str(path), progress=True)
    return path


# (resolved path, size, mtime_ns) -> sha256 hex: the Inception file is ~96 MB, and a Hydra multirun (one process)
# builds an extractor per job; a file rewritten in place changes its size or mtime and is hashed again.
_SHA256: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Union[str, os.PathLike]) -> str:
    """The file's full sha256 (hex), computed once per (path, size, mtime_ns) in this process."""
    path = Path(path).expanduser().resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA256:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _SHA256[key] = h.hexdigest()
    return _SHA256[key]


def file_digest(path: Union[str, os.PathLike], n: int = 8) -> str:
    """First ``n`` hex digits of the file's sha256."""
    return file_sha256(path)[:n]


def _build_extractor(state_dict: Optional[dict]) -> nn.Module:
    """torch-fidelity's extractor with *our* state dict (its constructor otherwise downloads or pickle-loads).

    ``state_dict=None`` builds it without loading anything (default-initialised; for random test weights).
    """
    with contextlib.ExitStack() as stack:
        # The constructor fetches its state dict through this module-level name: hand it ours instead.
        stack.enter_context(mock.patch.object(_tfi, "load_state_dict_from_url", lambda *a, **k: state_dict))
        if state_dict is None:
            stack.enter_context(
                mock.patch.object(_tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda *a, **k: None)
            )
        return _tfi.FeatureExtractorInceptionV3(INCEPTION_NAME, list(FEATURES), verbose=False)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 [0, 255] by rounding (``round((x + 1) * 127.5)``, clamped)."""
    return ((images.float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


def iter_image_batches(images: ImageSource, batch_size: int) -> Iterator[torch.Tensor]:
    """Batches of images from a tensor (N, 3, H, W), an iterable of such tensors, or of dict batches (``image`` key)."""
    if torch.is_tensor(images):
        for i in range(0, images.shape[0], batch_size):
            yield images[i : i + batch_size]
        return
    if isinstance(images, (str, bytes)) or not hasattr(images, "__iter__"):
        raise ValueError(
            "expected images as a Tensor (N, 3, H, W) in [-1, 1] or an iterable of batches, "
            f"got {type(images).__name__}"
        )
    for batch in images:
        if isinstance(batch, dict):
            if "image" not in batch:
                raise ValueError(f"dict batch without an 'image' key (keys: {sorted(batch)})")
            batch = batch["image"]
        elif isinstance(batch, (tuple, list)) and batch and torch.is_tensor(batch[0]):
            batch = batch[0]
        if not torch.is_tensor(batch):
            raise ValueError(f"expected batches of image tensors (N, 3, H, W), got {type(batch).__name__}")
        if batch.dim() == 3:
            batch = batch.unsqueeze(0)
        for i in range(0, batch.shape[0], batch_size):
            yield batch[i : i + batch_size]


def _num_images(images: ImageSource) -> Optional[int]:
    if torch.is_tensor(images):
        return images.shape[0]
    dataset = getattr(images, "dataset", None)  # a DataLoader
    if dataset is not None and hasattr(dataset, "__len__"):
        return len(dataset)
    return None


class InceptionFeatures(nn.Module):
    """FID Inception features of images in [-1, 1]: ``{"2048": (N, 2048), "logits_unbiased": (N, 1008)}`` float32.

    Args:
        weights_path: local copy of ``weights-inception-2015-12-05-6726825d.pth`` (the ``eval.inception_weights``
            option); ``None`` looks in torch.hub's cache ``$TORCH_HOME/hub/checkpoints/``.
        allow_download: fetch the file into torch.hub's cache when it is missing (off by default: offline machines
            get a ``MissingWeightsError`` naming the file, its URL and the option instead).
        device: where the network runs (default CPU).
        autocast_dtype: e.g. ``torch.bfloat16`` to run the convolutions under autocast (features are still
            returned as float32; FID moves slightly -- measure before using it for reported numbers); ``"auto"``:
            bf16 where the device computes it natively, else none (``zoo.precision.autocast_dtype``).
        channels_last: run the convolutions in channels-last memory format (about 1.4x faster on CPU with oneDNN;
            same arithmetic up to float round-off).
    """

    name = INCEPTION_NAME
    feature_names = FEATURES

    def __init__(
        self,
        weights_path: Optional[Union[str, os.PathLike]] = None,
        *,
        allow_download: bool = False,
        device: Union[str, torch.device, None] = None,
        autocast_dtype: Union[torch.dtype, str, None] = None,
        channels_last: bool = True,
    ):
        super().__init__()
        self.weights_path = resolve_weights(weights_path, allow_download=allow_download)
        state_dict = safe_load(  # a truncated download: fetch it again (not "use another checkpoint")
            self.weights_path,
            fix=f"download {INCEPTION_URL} again and pass {WEIGHTS_OPTION}=/path/to/{INCEPTION_FILENAME}",
        )
        if not isinstance(state_dict, dict):
            raise ValueError(f"{self.weights_path} is not a state dict of torch-fidelity's FID Inception")
        try:
            self.net = _build_extractor(state_dict)
        except RuntimeError as e:  # wrong keys/shapes
            raise ValueError(
                f"{self.weights_path} does not hold torch-fidelity's FID Inception weights ({INCEPTION_FILENAME}, "
                f"from {INCEPTION_URL}): {str(e)[:300]}"
            ) from e
        if autocast_dtype == "auto":
            from zoo.precision import autocast_dtype as native_autocast_dtype

            autocast_dtype = native_autocast_dtype(device or "cpu")
        self.autocast_dtype = autocast_dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._digest: Optional[str] = None
        self.to(device=torch.device(device or "cpu"), memory_format=self.memory_format)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def extractor_id(self) -> str:
        """Names the network *and its weights* (sha256 prefix of the file): part of every real-stats cache key."""
        tag = f"{self.name}@{self.weights_sha256[:8]}"
        return tag if self.autocast_dtype is None else f"{tag}+autocast-{str(self.autocast_dtype).split('.')[-1]}"

    @property
    def weights_identity(self) -> dict[str, str]:
        """Which weights score FID / KID / IS, for results.json: ``{"file", "sha256", "extractor"}``.

        The full sha256 of the file, not its name: a renamed or re-exported file keeps the digest, and random or
        fine-tuned weights saved under the official name do not. The name's ``-6726825d`` suffix is *not* checked
        against the digest: torch-fidelity downloads without torch.hub's ``check_hash``, and pytorch-fid's
        differently laid out ``pt_inception-2015-12-05-6726825d.pth`` carries the same suffix, so it is not known to
        be a sha256 prefix of this file; both are recorded and a reader compares digests."""
        return {"file": self.weights_path.name, "sha256": self.weights_sha256, "extractor": self.extractor_id}

    @property
    def weights_sha256(self) -> str:
        """The weights file's full sha256 (hashed once per file, see ``file_sha256``)."""
        if self._digest is None:
            self._digest = file_sha256(self.weights_path)
        return self._digest

    def train(self, mode: bool = True) -> "InceptionFeatures":  # never leaves eval mode (BatchNorm stats are fixed)
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """One batch (N >= 1, any H, W) of images in [-1, 1] -> dict of float32 CPU features."""
        check_images(images)
        x = to_uint8(images).to(self.device).contiguous(memory_format=self.memory_format)
        dtype = self.autocast_dtype or torch.bfloat16
        with torch.autocast(device_type=self.device.type, dtype=dtype, enabled=self.autocast_dtype is not None):
            out = self.net(x)  # the extractor resizes to 299 itself (TF1-compatible bilinear)
        return {k: v.float().cpu() for k, v in zip(self.feature_names, out)}

    @torch.no_grad()
    def extract(
        self,
        images: ImageSource,
        batch_size: int = 50,
        progress: bool = True,
        desc: str = "Inception features",
        transform=None,
    ) -> dict[str, torch.Tensor]:
        """Features of a whole image set (tensor, iterable of batches or a DataLoader of dict batches).

        ``transform`` (e.g. a blur) is applied to each batch of [-1, 1] images before extraction. At least 2 images
        are needed (a covariance needs two samples).
        """
        from zoo.progress import track

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if torch.is_tensor(images):
            check_images(images, min_count=2)
        feats: dict[str, list[torch.Tensor]] = {k: [] for k in self.feature_names}
        n = 0
        with track(total=_num_images(images), desc=desc, unit="img", disable=not progress, leave=False) as bar:
            for batch in iter_image_batches(images, batch_size):
                check_images(batch, what=f"images[{n}:{n + len(batch)}]")
                if transform is not None:
                    batch = transform(batch)
                out = self(batch)
                for k in self.feature_names:
                    feats[k].append(out[k])
                n += batch.shape[0]
                bar.update(batch.shape[0])
        if n < 2:
            raise ValueError(f"need at least 2 images to compute statistics, got {n}")
        return {k: torch.cat(v) for k, v in feats.items()}


def make_random_inception_weights(path: Union[str, os.PathLike], seed: int = 0) -> Path:
    """Write a *random* state dict for the FID Inception to ``path`` (for tests and benchmarks; ~96 MB).

    Convolutions are re-initialised with kaiming-normal: torch's default init makes the deep features nearly
    constant (FID ~ 0, IS = 1), while kaiming keeps them informative enough that FID orders blur levels. The
    numbers such weights give mean nothing in absolute terms. Deterministic for a given ``seed``.
    """
    net = _build_extractor(None)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=gen)
            elif isinstance(m, nn.Linear):
                # 20/sqrt(fan_in): makes random logits vary across images enough that IS is clearly above 1.
                nn.init.normal_(m.weight, std=20 * m.in_features**-0.5, generator=gen)
                nn.init.zeros_(m.bias)
    return atomic_torch_save(net.state_dict(), path)


__all__ = [
    "INCEPTION_FILENAME",
    "INCEPTION_URL",
    "InceptionFeatures",
    "check_images",
    "default_weights_path",
    "file_sha256",
    "iter_image_batches",
    "make_random_inception_weights",
    "resolve_weights",
    "to_uint8",
]
