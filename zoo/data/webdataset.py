"""img2dataset-style ``.tar`` shards streamed with the ``webdataset`` library.

Shards are split across DDP ranks (``wds.split_by_node``) and DataLoader workers (``wds.split_by_worker``), so every
sample is seen once per pass however the job is laid out. Each sample is an image (jpg/jpeg/png/webp) and a caption
(``txt``, or ``json`` with a ``caption`` field). Corrupt samples are skipped and counted (``SkipCounter``), with a
warning, instead of ending the epoch.
"""
from __future__ import annotations

import io
import json
import logging
from typing import Any, Optional, Sequence

log = logging.getLogger(__name__)
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


class SkipCounter:
    """A webdataset handler that logs and counts instead of raising (per process / worker)."""

    def __init__(self):
        self.skipped = 0

    def __call__(self, exn: Exception) -> bool:
        self.skipped += 1
        log.warning("skipping a bad webdataset sample (%s); %d skipped so far", exn, self.skipped)
        return True  # keep going


class _Decode:
    def __init__(self, resolution: int):
        from zoo.data.transforms import image_transform

        self.transform = image_transform(resolution)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        from zoo.data.transforms import load_rgb

        key = next((k for k in IMAGE_KEYS if k in sample), None)
        if key is None:
            raise ValueError(f"sample {sample.get('__key__')} has no image ({IMAGE_KEYS})")
        image = self.transform(load_rgb(io.BytesIO(sample[key])))
        if "txt" in sample:
            caption = sample["txt"].decode("utf-8")
        elif "json" in sample:
            caption = json.loads(sample["json"]).get("caption", "")
        else:
            raise ValueError(f"sample {sample.get('__key__')} has no caption (txt or json)")
        return {"image": image, "caption": caption.strip(), "key": sample["__key__"]}


def make_webdataset(urls: str | Sequence[str], resolution: int = 256, shuffle_buffer: int = 1000, seed: int = 0,
                    epoch_length: Optional[int] = None, handler: Optional[SkipCounter] = None):
    """An IterableDataset of sample dicts. ``epoch_length`` (samples per rank) makes it sized for progress bars."""
    import webdataset as wds

    handler = handler or SkipCounter()
    urls = list(urls) if not isinstance(urls, str) else urls
    stages = [wds.SimpleShardList(urls, seed=seed if shuffle_buffer else None), wds.split_by_node, wds.split_by_worker,
              wds.tarfile_to_samples(handler=handler)]
    if shuffle_buffer:
        stages.append(wds.shuffle(shuffle_buffer, rng=__import__("random").Random(seed)))
    stages.append(wds.map(_Decode(resolution), handler=handler))
    ds = wds.DataPipeline(*stages)
    ds.skip_counter = handler
    if epoch_length:
        ds = ds.with_epoch(int(epoch_length)).with_length(int(epoch_length))
    return ds
