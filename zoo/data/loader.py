"""A DataLoader that Lightning can checkpoint mid-epoch, and the sampler behind it.

Lightning saves the ``state_dict()`` of any training dataloader that has one (``_Stateful``) into the
checkpoint and hands it back on ``fit(ckpt_path=...)``. We record (epoch, batches consumed) and, on resume,
skip exactly the samples already seen in that epoch's permutation -- without loading them -- so a resumed run
sees the same data, in the same order, as an uninterrupted one.

Sharding across DDP ranks is done here (Lightning's ``use_distributed_sampler`` is turned off by ``train()``)
because re-wrapping a custom sampler in Lightning's ``DistributedSamplerWrapper`` would lose the skip state.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Sampler, SequentialSampler


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class EpochIndex(int):
    """A dataset index that also carries the epoch it was drawn for (``ResumableSampler`` yields these). A dataset
    with per-epoch randomness (``CocoCaptions``' caption draw) keys it on ``(seed, epoch, index)``: the same in any
    worker, and after a resume -- per-process counters restart at 0, so a resumed run replayed epoch 0's draws."""

    def __new__(cls, value: int, epoch: int):
        obj = super().__new__(cls, value)
        obj.epoch = int(epoch)
        return obj

    def __reduce__(self):  # DataLoader workers receive indices pickled
        return (EpochIndex, (int(self), self.epoch))


class ResumableSampler(Sampler[int]):
    """Epoch-seeded permutation (or identity), sharded by rank, with a skip count for resumption."""

    def __init__(self, length: int, shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        self.length = length
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        # Samples (of this rank) to skip when epoch `skip_epoch` is iterated: set by a checkpoint restore.
        self.skip = 0
        self.skip_epoch = -1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        rank, world = _dist_rank_world()
        if world > 1:
            if self.drop_last:
                order = order[: len(order) - len(order) % world]
            else:  # pad by repeating, as DistributedSampler does, so every rank takes the same number of steps
                pad = (-len(order)) % world
                order = order + order[:pad]
            order = order[rank::world]
        return order

    def __iter__(self) -> Iterator[int]:
        order = self._indices()
        skip = self.skip if self.epoch == self.skip_epoch else 0
        self.skip, self.skip_epoch = 0, -1
        return iter([EpochIndex(i, self.epoch) for i in order[skip:]])

    def __len__(self) -> int:
        _, world = _dist_rank_world()
        if world > 1:
            return self.length // world if self.drop_last else -(-self.length // world)
        return self.length


class ResumableDataLoader(DataLoader):
    """DataLoader over a map-style dataset with ``state_dict`` / ``load_state_dict`` for mid-epoch resume."""

    def __init__(
        self,
        dataset,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        sampler: Optional[Sampler] = None,
        **kwargs,
    ):
        # ``sampler``: Lightning re-instantiates a loader with a SequentialSampler for ``trainer.overfit_batches``
        # (debug=overfit); passed on to DataLoader next to ours, it was a "more than one sampler" error before the
        # first step. In-order is our sampler without shuffling, which stays resumable; another sampler is used as
        # given (no mid-epoch resume then).
        if sampler is None or isinstance(sampler, SequentialSampler):
            sampler = ResumableSampler(
                len(dataset), shuffle=shuffle and sampler is None, seed=seed, drop_last=drop_last
            )
        # Our own generator: otherwise every new iterator draws its worker base seed from the global torch RNG,
        # and a resumed run (one extra iterator) would see different noise than an uninterrupted one.
        kwargs.setdefault("generator", torch.Generator().manual_seed(seed))
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **kwargs)
        self._batches_done = 0
        self._resumed_at = (0, 0)
        self._epoch_in_progress = 0
        # Called by load_state_dict as on_restore(batches saved, batches now) when a restored position stands for
        # another number of batches than the checkpoint counted (data.batch_size changed): the DataModule moves
        # Lightning's batch counter of the epoch, which otherwise ends the epoch on the old count.
        self.on_restore: Optional[Callable[[int, int], None]] = None

    def __iter__(self):
        sampler = self.sampler
        if not isinstance(sampler, ResumableSampler):  # a sampler given by the caller: a plain DataLoader
            yield from super().__iter__()
            return
        self._epoch_in_progress = sampler.epoch
        # A restored position applies only to the epoch it was saved in (see ResumableSampler.skip_epoch).
        resumed = sampler.skip_epoch == sampler.epoch
        self._batches_done = self._batches_before(sampler.skip) if resumed else 0
        self._resumed_at = (sampler.skip if resumed else 0, self._batches_done)  # (samples, batches) skipped
        for batch in super().__iter__():
            self._batches_done += 1
            yield batch

    def _batches_before(self, skip: int) -> int:
        """The batches of this batch size that a position of ``skip`` samples stands for: the epoch's batch count minus
        the batches still to come. Lightning ends an epoch when its count of the epoch's batches reaches ``len``, so
        this is what that count must read (``skip // batch_size`` when the batch size did not change)."""
        rest = max(0, len(self.sampler) - skip)  # type: ignore[arg-type]
        left = rest // self.batch_size if self.drop_last else -(-rest // self.batch_size)
        return len(self) - left

    def state_dict(self) -> dict[str, Any]:
        # samples_done (of this rank) besides batches: a resume with another data.batch_size (e.g. after running out
        # of memory) skips the samples already seen; batches_done * the new batch size repeated or silently skipped
        # part of the epoch. Derived from _batches_done, which InterruptCheckpoint may set back by a batch.
        samples, batches = self._resumed_at
        return {
            "epoch": int(self._epoch_in_progress),
            "batches_done": int(self._batches_done),
            "samples_done": int(samples + (self._batches_done - batches) * int(self.batch_size)),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sampler = self.sampler
        if not isinstance(sampler, ResumableSampler):
            return
        sampler.skip_epoch = int(state["epoch"])
        if "samples_done" in state:
            sampler.skip = int(state["samples_done"])
        else:  # a checkpoint written before samples_done was recorded
            sampler.skip = int(state["batches_done"]) * int(self.batch_size)
        saved, now = int(state["batches_done"]), self._batches_before(sampler.skip)
        if now != saved and self.on_restore is not None:
            self.on_restore(saved, now)
