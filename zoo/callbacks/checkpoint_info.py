"""Stamps every checkpoint with what is needed to rebuild its model, and makes resumption exact.

Lightning restores weights, optimizer, schedulers, loop counters and (through ``ResumableDataLoader``) the data
position, but not the random number generators; models that draw noise every step (Gumbel-softmax, diffusion
timesteps, caption dropout) would then diverge from an uninterrupted run. We save and restore the torch (CPU and, once
a run has used it, every CUDA device's) and Python RNG states so that "train 2N steps" and "train N, kill, resume N"
give the same weights. On a GPU the noise is drawn from the CUDA generators (``torch.randn(..., device=cuda)``): with
the CPU state alone a resumed GPU run drew other noise than an uninterrupted one. A checkpoint from a machine with
another number of GPUs restores the devices both have, with a warning; one without CUDA states (a CPU run's, or from
before they were saved) leaves the CUDA generators as seeded. NumPy's global RNG is not saved: nothing here draws from
it (the data draws from generators seeded per item).

A validation during fit draws from the same RNGs (diffusion timesteps and noise of the val loss, the sample grid),
but ``last.ckpt`` is saved at the end of its step, before that step's validation, and Lightning resumes it as
validated: the resumed run went on from the RNG state before the validation, an uninterrupted one from the state
after it, so with a validation at the saved step ("train N, resume to 2N", a ``kill -9`` after it) every later
row and the weights differed. A validation during fit (and the sanity check) therefore leaves the RNG states as it
found them.

Several processes (DDP) are all seeded alike (``seed_everything``), so every rank drew the same diffusion timesteps,
noise and caption dropout for its own shard of the batch: the global batch held each draw ``world_size`` times. Each
training step now runs on a stream of its rank's own, seeded from one draw of the stream the ranks share; at the
step's end the shared stream is put back (all ranks alike again). Checkpoints (saved after that, from rank 0) keep
the shared stream, so a resume is exact on every rank. One process: nothing changes.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Optional

import lightning as L
import torch

log = logging.getLogger(__name__)


class CheckpointInfo(L.Callback):
    """Adds ``zoo_component`` (the LightningModule's name in ``zoo.registry``: a name, not an import path, so a
    file can only ever choose among the project's own components), ``zoo_config`` (the resolved run config, plain
    dicts/strings only so that ``weights_only=True`` loads it) and ``zoo_rng`` to every checkpoint."""

    def __init__(self, config: Optional[dict[str, Any]] = None):
        self.config = config or {}
        self._rng_before_validation: Optional[tuple] = None
        self._validating = False  # a validation of the fit has started and the RNG is not back yet
        self._shared_rng: Optional[tuple] = None  # DDP: the ranks' shared stream during a step on a rank's own

    def on_train_batch_start(self, trainer, pl_module, *args: Any, **kwargs: Any) -> None:
        if trainer.world_size > 1:
            # one draw of the shared stream (the same on every rank), then this step's own stream for this rank
            base = int(torch.randint(0, 2**62, (), dtype=torch.int64))
            self._shared_rng = _rng_state()
            seed = (base + 0x9E3779B97F4A7C15 * (trainer.global_rank + 1)) % 2**63
            torch.manual_seed(seed)  # the CPU and every CUDA device
            random.seed(seed)

    # Taken at the step's end, not at on_validation_start: the val loader's iterator is made in between, and a plain
    # DataLoader (webdataset) draws its base seed from the global RNG.
    def on_train_batch_end(self, trainer, pl_module, *args: Any, **kwargs: Any) -> None:
        if self._shared_rng is not None:  # DDP: back to the stream every rank shares (what checkpoints record)
            _set_rng_state(self._shared_rng)
            self._shared_rng = None
        self._rng_before_validation = _rng_state()

    # and before the sanity check, and at the start of training (the restored state: a resume may begin by redoing
    # the validation it was interrupted in)
    def on_sanity_check_start(self, trainer, pl_module) -> None:
        self._rng_before_validation = _rng_state()

    def on_train_start(self, trainer, pl_module) -> None:
        self._rng_before_validation = _rng_state()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._validating = trainer.state.fn == "fit"

    def on_validation_end(self, trainer, pl_module) -> None:
        # before the checkpoint callbacks' on_validation_end (Lightning runs those last): the top-k save records this
        self._restore_rng_after_validation()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # stopped in a validation (or in on_validation_end before ours): interrupted.ckpt, saved after this, records
        # the RNG the run would have gone on with
        self._restore_rng_after_validation()
        if self._shared_rng is not None:  # stopped inside a step on a rank's own stream (InterruptCheckpoint puts
            _set_rng_state(self._shared_rng)  # back the state from before the step anyway)
            self._shared_rng = None

    def _restore_rng_after_validation(self) -> None:
        if self._validating and self._rng_before_validation is not None:
            _set_rng_state(self._rng_before_validation)
        self._validating = False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        from zoo.registry import component_name_of

        checkpoint["zoo_component"] = component_name_of(pl_module)
        checkpoint["zoo_config"] = self.config
        version, state, gauss = random.getstate()
        checkpoint["zoo_rng"] = {
            "torch": torch.get_rng_state(),
            "python": [version, list(state), gauss],
        }
        cuda = _cuda_rng_state()
        if cuda is not None:
            checkpoint["zoo_rng"]["cuda"] = cuda

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        rng = checkpoint.get("zoo_rng")
        if not rng:
            return
        torch.set_rng_state(rng["torch"])
        version, state, gauss = rng["python"]
        random.setstate((version, tuple(state), gauss))
        _load_cuda_rng_state(rng.get("cuda"))


def _cuda_rng_state() -> Optional[list]:
    """Every CUDA device's RNG state, once this process has used CUDA (None before: nothing has drawn from them, and
    reading them would initialise CUDA in a CPU run on a GPU machine)."""
    return torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None


def _load_cuda_rng_state(saved: Optional[list]) -> None:
    """Restore a checkpoint's CUDA RNG states on this machine's devices (see the module docstring)."""
    if not saved or not torch.cuda.is_available():
        return  # a CPU run's checkpoint, or a GPU run's resumed on the CPU (which draws no CUDA noise)
    here = torch.cuda.device_count()
    if len(saved) != here:
        log.warning(
            "the checkpoint holds the CUDA RNG states of %d GPUs and this machine has %d: the first %d are restored, "
            "the noise drawn on any other differs from the uninterrupted run's",
            len(saved),
            here,
            min(len(saved), here),
        )
    for device, state in enumerate(saved[:here]):
        torch.cuda.set_rng_state(state, device)


def _rng_state() -> tuple:
    """torch's CPU (and, once initialised, CUDA) and Python's RNG states."""
    return torch.get_rng_state(), _cuda_rng_state(), random.getstate()


def _set_rng_state(state: tuple) -> None:
    cpu, cuda, py = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
    random.setstate(py)
