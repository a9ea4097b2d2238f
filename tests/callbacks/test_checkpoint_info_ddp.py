"""zoo.callbacks.checkpoint_info.CheckpointInfo under several processes: each rank draws its own noise in a training
step (seed_everything seeds every rank alike, so every rank drew the same diffusion timesteps and noise), the ranks
share one stream between steps, and a resume stays exact. The ranks are played one at a time in this process
(``world_size`` / ``global_rank`` patched): what a rank draws depends only on the shared stream and its rank."""

from __future__ import annotations

import random

import lightning as L
import pytest
import torch

from zoo.callbacks.checkpoint_info import CheckpointInfo
from zoo.callbacks.last_checkpoint import LastCheckpoint


class _Draws(L.LightningModule):
    """Each step draws its 'noise' from torch's global RNG and records it."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)
        self.draws: list[float] = []

    def training_step(self, batch, batch_idx):
        noise = torch.rand(1)
        self.draws.append(float(noise))
        return (self.lin(batch[0]) - noise).pow(2).mean()

    def train_dataloader(self):  # zoo's loader: it resumes mid-epoch and draws nothing from the global RNG
        from zoo.data.loader import ResumableDataLoader

        x = torch.arange(32, dtype=torch.float32).view(16, 2)
        return ResumableDataLoader(torch.utils.data.TensorDataset(x), batch_size=2, shuffle=False)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(monkeypatch, rank: int, world: int, steps: int, ckpt_dir=None, resume=None, info: bool = True):
    monkeypatch.setattr(L.Trainer, "world_size", property(lambda self: world))
    monkeypatch.setattr(L.Trainer, "global_rank", property(lambda self: rank))
    monkeypatch.setattr("zoo.registry.component_name_of", lambda module: "test-module")  # not a zoo component
    L.seed_everything(0, verbose=False)  # what zoo.train does in every process
    model = _Draws()
    callbacks = [CheckpointInfo({})] if info else []
    if ckpt_dir is not None:
        callbacks.append(LastCheckpoint(dirpath=ckpt_dir, save_top_k=0, save_last=True, every_n_train_steps=100))
    trainer = L.Trainer(
        max_steps=steps,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=ckpt_dir is not None,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, ckpt_path=resume)
    return model.draws, torch.get_rng_state(), random.random()


def test_each_rank_draws_its_own_noise_from_a_shared_stream(monkeypatch):
    alone, _, _ = _fit(monkeypatch, 0, 1, 6)
    plain, _, _ = _fit(monkeypatch, 0, 1, 6, info=False)
    assert alone == plain  # one process: the stream is the plain one, untouched
    r0, state0, py0 = _fit(monkeypatch, 0, 2, 6)
    r1, state1, py1 = _fit(monkeypatch, 1, 2, 6)
    assert all(a != b for a, b in zip(r0, r1)) and len(set(r0)) == 6  # each rank, each step its own draw
    assert torch.equal(state0, state1) and py0 == py1  # between steps the ranks share one stream


@pytest.mark.parametrize("rank, world", [(0, 1), (0, 2), (1, 2)])
def test_a_resume_under_ddp_is_exact_on_every_rank(monkeypatch, tmp_path, rank, world):
    straight, _, _ = _fit(monkeypatch, rank, world, 8)
    first, _, _ = _fit(monkeypatch, rank, world, 4, ckpt_dir=tmp_path)
    resumed, _, _ = _fit(monkeypatch, rank, world, 8, ckpt_dir=tmp_path, resume=str(tmp_path / "last.ckpt"))
    assert first + resumed == straight
