"""zoo.callbacks.checkpoint_info.CheckpointInfo keeps the CUDA generators' states too (a resumed GPU run draws the
noise an uninterrupted one draws). No GPU here: torch.cuda's RNG functions are replaced by fake devices."""

from __future__ import annotations

import io
import logging

import pytest
import torch

from zoo.callbacks.checkpoint_info import CheckpointInfo


class _FakeCuda:
    """``n`` CUDA devices whose RNG state is a small tensor each; records what is set."""

    def __init__(self, monkeypatch, n: int, initialized: bool = True):
        self.states = [torch.tensor([7 * d + 1, 7 * d + 2], dtype=torch.uint8) for d in range(n)]
        self.set_calls: list[tuple[int, list[int]]] = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: initialized)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in self.states])
        monkeypatch.setattr(torch.cuda, "set_rng_state", self._set)
        monkeypatch.setattr(
            torch.cuda, "set_rng_state_all", lambda states: [self._set(s, d) for d, s in enumerate(states)]
        )

    def _set(self, state, device=0):
        self.set_calls.append((int(device), state.tolist()))
        self.states[int(device)] = state.clone()


def _saved(monkeypatch) -> dict:
    monkeypatch.setattr("zoo.registry.component_name_of", lambda module: "test-module")
    checkpoint: dict = {}
    CheckpointInfo({}).on_save_checkpoint(None, None, checkpoint)
    buffer = io.BytesIO()  # what a checkpoint file holds, read back as zoo-train reads it (weights_only)
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_a_gpu_run_saves_and_restores_every_devices_rng_state(monkeypatch):
    cuda = _FakeCuda(monkeypatch, 2)
    checkpoint = _saved(monkeypatch)
    assert [s.tolist() for s in checkpoint["zoo_rng"]["cuda"]] == [[1, 2], [8, 9]]
    cuda.states = [torch.zeros(2, dtype=torch.uint8)] * 2  # the generators have moved on (or a fresh process)
    CheckpointInfo({}).on_load_checkpoint(None, None, checkpoint)
    assert cuda.set_calls == [(0, [1, 2]), (1, [8, 9])]


@pytest.mark.parametrize("saved_n, here_n, restored", [(2, 1, [(0, [1, 2])]), (1, 2, [(0, [1, 2])])])
def test_another_gpu_count_restores_the_devices_both_have_and_warns(monkeypatch, caplog, saved_n, here_n, restored):
    _FakeCuda(monkeypatch, saved_n)
    checkpoint = _saved(monkeypatch)
    cuda = _FakeCuda(monkeypatch, here_n)
    with caplog.at_level(logging.WARNING, logger="zoo.callbacks.checkpoint_info"):
        CheckpointInfo({}).on_load_checkpoint(None, None, checkpoint)
    assert cuda.set_calls == restored
    assert any(f"of {saved_n} GPUs and this machine has {here_n}" in r.getMessage() for r in caplog.records)


def test_cpu_checkpoints_and_cpu_resumes_leave_cuda_alone(monkeypatch, caplog):
    _FakeCuda(monkeypatch, 2, initialized=False)  # a CPU run on a GPU machine: CUDA never used, nothing saved
    checkpoint = _saved(monkeypatch)
    assert "cuda" not in checkpoint["zoo_rng"]
    cuda = _FakeCuda(monkeypatch, 2)
    CheckpointInfo({}).on_load_checkpoint(None, None, checkpoint)  # a CPU checkpoint resumed on a GPU
    assert cuda.set_calls == []
    _FakeCuda(monkeypatch, 2)
    gpu_checkpoint = _saved(monkeypatch)
    cpu = _FakeCuda(monkeypatch, 0)  # a GPU checkpoint resumed on the CPU: no CUDA noise to draw
    CheckpointInfo({}).on_load_checkpoint(None, None, gpu_checkpoint)
    assert cpu.set_calls == [] and not caplog.records


def test_a_validation_leaves_the_cuda_generators_as_it_found_them(monkeypatch):
    """last.ckpt is saved before a step's validation; the validation's draws on the GPU must not move the generator
    the next step draws from (as for the CPU's), or a resume from last.ckpt draws other noise."""
    from types import SimpleNamespace

    cuda = _FakeCuda(monkeypatch, 1)
    info = CheckpointInfo({})
    trainer = SimpleNamespace(world_size=1, state=SimpleNamespace(fn="fit"))
    info.on_train_batch_end(trainer, None)
    info.on_validation_start(trainer, None)
    cuda.states = [torch.tensor([99, 99], dtype=torch.uint8)]  # the validation drew on the GPU
    info.on_validation_end(trainer, None)
    assert cuda.set_calls[-1] == (0, [1, 2])


def test_interrupted_inside_a_step_puts_back_the_cuda_generators_too(monkeypatch):
    """InterruptCheckpoint saves the RNG from before the interrupted step (the step is redone on resume): the CUDA
    generators' as well, or the redone step draws other noise on a GPU."""
    from zoo.callbacks import InterruptCheckpoint

    cuda = _FakeCuda(monkeypatch, 1)
    saver = InterruptCheckpoint(dirpath="unused")
    saver._keep_rng()  # the end of the last step
    cuda.states = [torch.tensor([99, 99], dtype=torch.uint8)]  # the interrupted step drew on the GPU
    saver._put_back_rng()
    assert cuda.set_calls[-1] == (0, [1, 2])
