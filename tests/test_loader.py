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
    assert state == {"epoch": 2, "batches_done": 2, "samples_done": 8}
    fresh = ResumableDataLoader(_Indexed(), batch_size=4, shuffle=True, seed=0, collate_fn=collate_samples)
    fresh.load_state_dict(state)
    fresh.sampler.set_epoch(2)  # Lightning sets the epoch after loading the state
    assert seen + _epoch(fresh) == reference
    assert fresh.state_dict()["batches_done"] == 5
    # the skip applies to that epoch only
    fresh.sampler.set_epoch(3)
    assert len(_epoch(fresh)) == 5


def test_a_resume_with_another_batch_size_continues_after_the_samples_seen():
    """Resumed with a smaller data.batch_size (e.g. after running out of memory), the skip was the saved batch count
    times the NEW batch size: 2 batches of 4 then batches of 2 repeated 4 samples (a larger batch skipped unseen
    ones). The state now records the samples seen; a checkpoint without them keeps the old reading."""
    full = ResumableDataLoader(_Indexed(), batch_size=4, shuffle=True, seed=0, collate_fn=collate_samples)
    reference = [i for b in _epoch(full) for i in b]
    it = iter(full)
    seen = [i for _ in range(2) for i in next(it)["index"].tolist()]
    state = full.state_dict()
    smaller = ResumableDataLoader(_Indexed(), batch_size=2, shuffle=True, seed=0, collate_fn=collate_samples)
    smaller.load_state_dict(state)
    it = iter(smaller)
    rest = next(it)["index"].tolist()
    assert smaller.state_dict() == {"epoch": 0, "batches_done": 5, "samples_done": 10}  # 8 + one batch of 2
    rest += [i for b in it for i in b["index"].tolist()]
    assert seen + rest == reference  # every sample once, in the uninterrupted order
    old = ResumableDataLoader(_Indexed(), batch_size=2, shuffle=True, seed=0, collate_fn=collate_samples)
    old.load_state_dict({"epoch": 0, "batches_done": 2})
    assert len(_epoch(old)) == 8  # 20 - 2 * 2 samples left


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


def test_lightning_overfit_batches_rebuilds_the_loader_in_order():
    """trainer.overfit_batches (debug=overfit) makes Lightning rebuild every loader with a SequentialSampler; ours
    passed it to DataLoader beside its own sampler ("more than one sampler"), before the first step."""
    import lightning as L

    seen = []

    class _Fit(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(1, 1)

        def training_step(self, batch, batch_idx):
            seen.append(batch["index"].tolist())
            return self.lin(batch["image"]).pow(2).mean()

        def train_dataloader(self):
            return ResumableDataLoader(_Indexed(), batch_size=4, shuffle=True, seed=0, collate_fn=collate_samples)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(
        max_epochs=2, overfit_batches=2, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(_Fit())
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7]] * 2  # the first two batches, in order, every epoch
    in_order = ResumableDataLoader(
        _Indexed(), 4, shuffle=True, sampler=torch.utils.data.SequentialSampler(range(20)), collate_fn=collate_samples
    )
    assert isinstance(in_order.sampler, ResumableSampler) and _epoch(in_order)[0] == [0, 1, 2, 3]  # still resumable
