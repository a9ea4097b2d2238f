"""ResumableDataLoader: epoch-seeded order, mid-epoch resume, DDP-style sharding."""

from __future__ import annotations

import torch

from zoo.data.collate import collate_samples
from zoo.data.loader import ResumableDataLoader, ResumableSampler


class _Indexed(torch.utils.data.Dataset):
    def __len__(self):
        return 20

    def __getitem__(self, i):
        return {"index": i, "image": torch.full((1,), float(i)), "caption": f"c{i}"}


def _epoch(loader):
    return [b["index"].tolist() for b in loader]


def test_order_depends_on_seed_and_epoch_only():
    a = ResumableDataLoader(_Indexed(), batch_size=4, shuffle=True, seed=3, collate_fn=collate_samples)
    b = ResumableDataLoader(_Indexed(), batch_size=4, shuffle=True, seed=3, collate_fn=collate_samples)
    assert _epoch(a) == _epoch(b)
    a.sampler.set_epoch(1)
    assert _epoch(a) != _epoch(b)
    flat = sorted(i for batch in _epoch(a) for i in batch)
    assert flat == list(range(20))


def test_state_dict_resumes_mid_epoch():
    full = ResumableDataLoader(_Indexed(), batch_size=4, shuffle=True, seed=0, collate_fn=collate_samples)
    full.sampler.set_epoch(2)
    reference = _epoch(full)
    it = iter(full)
    seen = [next(it)["index"].tolist() for _ in range(2)]
    state = full.state_dict()
    assert state == {"epoch": 2, "batches_done": 2}
    fresh = ResumableDataLoader(_Indexed(), batch_size=4, shuffle=True, seed=0, collate_fn=collate_samples)
    fresh.load_state_dict(state)
    fresh.sampler.set_epoch(2)  # Lightning sets the epoch after loading the state
    assert seen + _epoch(fresh) == reference
    assert fresh.state_dict()["batches_done"] == 5
    # the skip applies to that epoch only
    fresh.sampler.set_epoch(3)
    assert len(_epoch(fresh)) == 5


def test_sharding_covers_everything_once(monkeypatch):
    import zoo.data.loader as loader

    shards = []
    for rank in range(3):
        monkeypatch.setattr(loader, "_dist_rank_world", lambda r=rank: (r, 3))
        s = ResumableSampler(20, shuffle=True, seed=1)
        shards.append(list(iter(s)))
        assert len(shards[-1]) == len(s) == 7
    flat = [i for s in shards for i in s]
    assert set(flat) == set(range(20)) and len(flat) == 21  # one repeat pads to equal lengths


def test_collate_stacks_and_tokenizes():
    class Tok:
        def encode(self, texts):
            return torch.tensor([[len(t), 0] for t in texts])

    batch = collate_samples([_Indexed()[1], _Indexed()[12]], Tok())
    assert batch["image"].shape == (2, 1)
    assert batch["caption"] == ["c1", "c12"]
    assert batch["text_tokens"].tolist() == [[2, 0], [3, 0]]
    assert batch["index"].tolist() == [1, 12]
