"""img2dataset-style ``.tar`` shards streamed with the ``webdataset`` library.

Each sample is an image (``jpg``/``jpeg``/``png``/``webp``) plus a caption (``txt``, or ``json`` with a ``caption``
field; the order of preference is ``caption_key``). ``urls`` is a brace pattern (``shards/{00000..00009}.tar``), a
``::``-separated list, or a list of either.

Splitting: shards (not samples) are dealt to DDP ranks (``wds.split_by_node``) and then to DataLoader workers
(``wds.split_by_worker``), so one pass over the shards shows every sample exactly once across the whole job. Give at
least ``world_size * num_workers`` shards, or some workers sit idle (a warning says so). Ranks read
``RANK``/``WORLD_SIZE`` from the environment or ``torch.distributed`` (``webdataset.utils.pytorch_worker_info``); a
DataLoader worker that was spawned rather than forked uses the rank of the process that started it (``_SplitByNode``).

Epochs: without ``epoch_length`` an epoch is one pass over this rank's shards (ranks may then differ by a few batches:
use ``epoch_length`` for DDP). With ``epoch_length`` (samples per rank) the stream is endless -- passes follow one
another, each with a new shard order -- and every epoch yields exactly ``epoch_length`` samples per rank, divided
among the workers; ``len()`` is then defined, so Lightning can show progress. The shard order of pass ``p`` is a
function of ``(seed, p)`` (the same on every rank, so the rank split stays disjoint); the sample shuffle buffer is
seeded from ``(seed, p, rank, worker)``. The pass counter lives in the process that iterates: with persistent workers
(what ``ImageTextDataModule`` uses) or ``num_workers=0`` it advances every epoch; non-persistent workers restart from
the main process's counter (and shard order) each epoch. Caveats of a sized endless stream (as with webdataset's own
``with_epoch``): a worker or rank whose shards run out begins its next pass on its own, so after the first pass the
split is only approximately disjoint; and each worker yields its quota in its own batches, so choose
``epoch_length`` divisible by ``batch_size * num_workers`` for ``len(loader)`` to match the batches delivered.

Bad data: a corrupt image, a sample without image or caption, or an unreadable/truncated shard is skipped and counted
by ``SkipCounter`` (a webdataset handler) with a warning; it never ends the epoch. ``skipped`` counts *distinct* bad
items (a sample is named by shard URL and key, a shard error by its message), so meeting the same corrupt sample
again on the next pass -- or while a BPE is fitted on the captions -- neither counts nor warns twice. The count and
the set of seen items live in shared memory created in the main process (a ``multiprocessing.Value`` and a
``RawArray`` hash set of 64-bit digests), so ``ds.skip_counter.skipped`` includes the workers' skips.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing as mp
import os
import random
import re
import tarfile
from itertools import islice
from multiprocessing import context as mp_context
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from torch.utils.data import IterableDataset

log = logging.getLogger(__name__)
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # object reprs in webdataset's messages differ on every pass


def _item_name(exn: BaseException) -> str:
    """A stable name for a bad item when the handler is given none: the exception's type and message."""
    return _ADDRESS.sub("", f"{type(exn).__name__}: {exn}")


class SkipCounter:
    """A webdataset error handler that warns and counts instead of raising. ``skipped`` counts distinct bad items
    (the same corrupt sample met on every pass counts once); the count is shared with DataLoader workers.

    ``examples`` holds the first few bad items this process met (workers' examples stay in the workers)."""

    SLOTS = 1 << 14  # distinct items remembered (128 KiB of shared memory); past that, repeats count again
    MAX_EXAMPLES = 5

    def __init__(self):
        self._value = mp.Value("q", 0)
        self._seen = mp.RawArray("q", self.SLOTS)  # open addressing; 0 = empty slot
        self.examples: list[str] = []

    @property
    def skipped(self) -> int:
        return int(self._value.value)

    def _add(self, name: str) -> tuple[bool, int]:
        """(new?, count) after recording ``name`` (under the shared lock)."""
        digest = (
            int.from_bytes(
                hashlib.blake2b(name.encode("utf-8", "backslashreplace"), digest_size=8).digest(), "little", signed=True
            )
            or 1
        )
        with self._value.get_lock():
            slot = digest % self.SLOTS
            for _ in range(self.SLOTS):
                if self._seen[slot] == digest:
                    return False, int(self._value.value)
                if self._seen[slot] == 0:
                    self._seen[slot] = digest
                    break
                slot = (slot + 1) % self.SLOTS
            self._value.value += 1  # also when the table is full: better counted twice than not at all
            return True, int(self._value.value)

    def skip(self, exn: BaseException, item: Optional[str] = None) -> bool:
        """Record one bad ``item`` (default: named by the exception); warn the first time it is met."""
        name = item or _item_name(exn)
        new, n = self._add(name)
        if new:
            if len(self.examples) < self.MAX_EXAMPLES:
                self.examples.append(name)
            log.warning(
                "skipping a bad webdataset sample or shard (%s: %s); %d skipped so far", type(exn).__name__, exn, n
            )
        else:
            log.debug("skipping %s again (already counted)", name)
        return True  # keep going

    def __call__(self, exn: BaseException) -> bool:
        return self.skip(exn)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if mp_context.get_spawning_popen() is None:  # plain pickle/deepcopy: an unshared copy of count and set
            state["_value"] = self.skipped
            state["_seen"] = [(i, v) for i, v in enumerate(self._seen) if v]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["_value"], int):
            value, seen = mp.Value("q", state["_value"]), mp.RawArray("q", self.SLOTS)
            for i, v in state["_seen"]:
                seen[i] = v
            state["_value"], state["_seen"] = value, seen
        state.setdefault("examples", [])
        self.__dict__.update(state)


def expand_shard_urls(urls: str | Sequence[str]) -> list[str]:
    """Brace-expand ``urls`` (a pattern, a ``::``-separated list, or a list of those) into shard URLs."""
    from webdataset.shardlists import expand_urls

    patterns = [urls] if isinstance(urls, (str, Path)) else list(urls)
    out: list[str] = []
    for pattern in patterns:
        out.extend(expand_urls(str(pattern)))
    return out


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:") and url != "-"


def _check_local(urls: list[str]) -> None:
    if not urls:
        raise FileNotFoundError(
            "no webdataset shards given (fix: \"data.train_urls='/data/shards/{00000..00099}.tar'\")"
        )
    missing = [u for u in urls if _is_local(u) and not Path(u).expanduser().is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(urls)} webdataset shards not found, e.g. {missing[0]} "
            f"(fix: \"data.train_urls='/path/to/shards/{{00000..00009}}.tar'\", same for data.val_urls)"
        )


def split_shards(urls: Sequence[str], rank: int, world_size: int, worker: int = 0, num_workers: int = 1) -> list[str]:
    """The shards one (rank, worker) reads: the same dealing as ``wds.split_by_node`` then ``wds.split_by_worker``."""
    return list(urls)[rank::world_size][worker::num_workers]


def webdataset_length(urls: str | Sequence[str]) -> int:
    """Number of samples in the shards: from img2dataset's ``<shard>_stats.json`` (``successes``) when present,
    else by reading the tar headers (counting distinct keys). Local files only."""
    from webdataset.tariterators import base_plus_ext

    total = 0
    for url in expand_shard_urls(urls):
        if not _is_local(url):
            raise ValueError(f"webdataset_length reads local shards only, got {url} (fix: pass data.epoch_length)")
        path = Path(url).expanduser()
        stats = path.with_name(path.name[: -len(".tar")] + "_stats.json") if path.name.endswith(".tar") else None
        if stats is not None and stats.is_file():
            try:
                total += int(json.loads(stats.read_text())["successes"])
                continue
            except (ValueError, KeyError, TypeError):
                pass
        keys = set()
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isfile():
                    base, ext = base_plus_ext(member.name)  # webdataset's own grouping of files into samples
                    if base is not None and ext:
                        keys.add(base)
        total += len(keys)
    return total


class DecodeSample:
    """Raw webdataset sample (bytes per extension) -> ``{"image", "caption", "key"}``; raises on bad data."""

    def __init__(self, resolution: int, caption_key: Sequence[str] = ("txt", "json")):
        from zoo.data.transforms import image_transform

        self.transform = image_transform(resolution)
        self.caption_key = (caption_key,) if isinstance(caption_key, str) else tuple(caption_key)

    def caption(self, sample: dict[str, Any]) -> str:
        for key in self.caption_key:
            if key not in sample:
                continue
            raw = sample[key]
            text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
            if key.endswith("json"):
                obj = json.loads(text) if isinstance(text, str) else text
                text = obj.get("caption") if isinstance(obj, dict) else None
                if text is None:
                    continue
            return str(text).strip()
        raise ValueError(f"sample {sample.get('__key__')} has no caption ({', '.join(self.caption_key)})")

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        from zoo.data.transforms import load_rgb

        ext = next((k for k in IMAGE_KEYS if k in sample), None)
        if ext is None:
            raise ValueError(f"sample {sample.get('__key__')} has no image ({', '.join(IMAGE_KEYS)})")
        caption = self.caption(sample)
        try:
            image = self.transform(load_rgb(io.BytesIO(sample[ext])))
        except Exception as e:
            raise ValueError(f"sample {sample.get('__key__')} ({sample.get('__url__')}): bad {ext}: {e}") from e
        return {"image": image, "caption": caption, "key": sample["__key__"]}


class ShardList(IterableDataset):
    """The first pipeline stage: shard URLs (as ``{"url": ...}``), reshuffled on every pass from ``(seed, pass)``."""

    def __init__(self, urls: list[str], seed: int = 0, shuffle: bool = True):
        self.urls, self.seed, self.shuffle = list(urls), int(seed), bool(shuffle)
        self.passes = 0  # advanced in the process that iterates

    def __len__(self) -> int:
        return len(self.urls)

    def __iter__(self) -> Iterator[dict[str, str]]:
        # Not a generator: the pass is counted when the pipeline is built (``wds.DataPipeline`` calls ``iter()`` on
        # this stage first, then the later stages), so ``_ShuffleBuffer`` reads this pass's number, not the previous
        # one's. As a generator the counter moved only at the first shard, after the shuffle buffer had been seeded:
        # pass 1 reused pass 0's sample order (every epoch the same when a worker reads one shard).
        self.current_pass = self.passes
        self.passes += 1
        urls = list(self.urls)
        if self.shuffle:
            random.Random(f"{self.seed}/{self.current_pass}").shuffle(urls)
        return iter([{"url": url} for url in urls])


def _node_info() -> tuple[int, int]:
    """(rank, world size) of this process as webdataset sees it (``RANK``/``WORLD_SIZE`` or torch.distributed)."""
    from webdataset import utils as wds_utils

    rank, world, _, _ = wds_utils.pytorch_worker_info()
    return rank, world


class _SplitByNode:
    """``wds.split_by_node`` that also works in DataLoader workers started by spawn or forkserver.

    Lightning's DDP sets neither ``RANK`` in the environment nor anything a fresh worker process inherits: only a
    forked worker sees the parent's torch.distributed group. A spawned one (``ddp_spawn``, a ``spawn`` /
    ``forkserver`` start method, Python 3.14's default) saw rank 0 of 1, so every rank read every shard. The rank
    is therefore recorded when the stage is pickled for a worker, in the process that starts it, and used there
    when the worker itself sees no distributed job."""

    def __init__(self):
        self.node: Optional[tuple[int, int]] = None  # (rank, world) of the process that pickled this stage

    def __getstate__(self) -> dict[str, Any]:
        rank, world = _node_info()
        return {"node": (rank, world) if world > 1 else self.node}

    def rank_world(self) -> tuple[int, int]:
        rank, world = _node_info()
        if world == 1 and self.node is not None:
            return self.node
        return rank, world

    def __call__(self, src):
        rank, world = self.rank_world()
        return islice(src, rank, None, world) if world > 1 else src


class _ShuffleBuffer:
    """``wds.shuffle`` with an rng drawn per pass from (seed, pass, rank, worker) -- not one rng copied into every
    worker -- so workers and epochs get different sample orders."""

    def __init__(self, shards: ShardList, split: _SplitByNode, bufsize: int, initial: int):
        self.shards, self.split, self.bufsize, self.initial = shards, split, bufsize, initial

    def __call__(self, src):
        from webdataset.filters import _shuffle
        from webdataset.utils import pytorch_worker_info

        _, _, worker, _ = pytorch_worker_info()
        rank = self.split.rank_world()[0]
        rng = random.Random(f"{self.shards.seed}/{getattr(self.shards, 'current_pass', 0)}/{rank}/{worker}")
        return _shuffle(src, self.bufsize, self.initial, rng)


class _DecodeStage:
    """Like ``wds.map(decode, handler=...)``, which would put ``__key__`` back into our sample dicts."""

    def __init__(self, decode: DecodeSample, handler: SkipCounter):
        self.decode, self.handler = decode, handler

    def __call__(self, src):
        for sample in src:
            try:
                yield self.decode(sample)
            except Exception as e:
                item = f"{sample.get('__url__')}#{sample.get('__key__')}"  # the same sample on every pass
                skip = getattr(self.handler, "skip", None)
                if not (skip(e, item) if skip is not None else self.handler(e)):
                    raise


class WebDatasetStream(IterableDataset):
    """What ``make_webdataset`` returns: a ``wds.DataPipeline`` (one pass) plus epoch handling (see module doc)."""

    def __init__(
        self,
        pipeline,
        shards: ShardList,
        skip_counter: SkipCounter,
        epoch_length: Optional[int] = None,
        split: Optional[_SplitByNode] = None,
    ):
        self.pipeline, self.shards, self.skip_counter = pipeline, shards, skip_counter
        self.split = split or _SplitByNode()
        self.epoch_length = int(epoch_length) if epoch_length else None
        self._stream: Optional[Iterator] = None
        self._stream_owner: Optional[tuple[int, int]] = None
        self._warned_idle = False

    def __len__(self) -> int:
        if self.epoch_length is None:
            raise TypeError("this webdataset stream has no length (fix: set data.epoch_length, samples per rank)")
        return self.epoch_length

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_stream"] = None  # generators do not pickle; a worker starts its own stream
        return state

    def _endless(self) -> Iterator[dict[str, Any]]:
        while True:
            count = 0
            for sample in self.pipeline:
                count += 1
                yield sample
            if count == 0:  # nothing readable for this worker: stop instead of spinning
                return

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from webdataset.utils import pytorch_worker_info

        _, _, worker, workers = pytorch_worker_info()
        _, world = self.split.rank_world()
        if not self._warned_idle and len(self.shards.urls) < world * workers:
            self._warned_idle = True
            log.warning(
                "%d shards for %d ranks x %d workers: some workers get no shard and stay idle",
                len(self.shards.urls),
                world,
                workers,
            )
        if self.epoch_length is None:
            yield from self.pipeline
            return
        quota = self.epoch_length // workers + (1 if worker < self.epoch_length % workers else 0)
        # The stream outlives one epoch, but belongs to the process that started it: a forked DataLoader worker
        # inherits the parent's suspended generator *and its open shard file offsets*, so it starts its own.
        if self._stream is None or self._stream_owner != (os.getpid(), worker):
            self._stream, self._stream_owner = self._endless(), (os.getpid(), worker)
        yield from islice(self._stream, quota)


def make_webdataset(
    urls: str | Sequence[str],
    resolution: int = 64,
    shuffle_buffer: int = 1000,
    seed: int = 0,
    caption_key: str | Sequence[str] = ("txt", "json"),
    epoch_length: Optional[int] = None,
    handler: Optional[SkipCounter] = None,
) -> WebDatasetStream:
    """An IterableDataset of ``{"image": FloatTensor (3, R, R) in [-1, 1], "caption": str, "key": str}``.

    ``shuffle_buffer=0`` keeps the shard order and the sample order (eval). ``epoch_length`` is samples per rank per
    epoch (and makes ``len()`` work); ``webdataset_length(urls)`` counts the samples if you want one exact pass.
    """
    import webdataset as wds

    url_list = expand_shard_urls(urls)
    _check_local(url_list)
    handler = handler or SkipCounter()
    shards = ShardList(url_list, seed=seed, shuffle=shuffle_buffer > 0)
    split = _SplitByNode()
    stages: list[Any] = [shards, split, wds.split_by_worker, wds.tarfile_to_samples(handler=handler)]
    if shuffle_buffer > 0:
        stages.append(_ShuffleBuffer(shards, split, int(shuffle_buffer), min(int(shuffle_buffer), 100)))
    stages.append(_DecodeStage(DecodeSample(resolution, caption_key), handler))
    return WebDatasetStream(wds.DataPipeline(*stages), shards, handler, epoch_length, split)
