"""``torch.compile`` the network's training calls (``zoo-train ... compile=true``).

Measured with ``bench/bench_compile.py`` (one thread, training step = forward + loss + backward + fused AdamW):
on a Xeon with AMX under bf16 autocast, the diffusion prior trains 1.25–1.31x faster compiled and the ADM U-Net
1.10x; in float32 (every CPU without native bf16 runs float32) both are 0.93-1.03x eager, on that Xeon and on an
AVX2 EPYC. Compiling costs 35–135 s at the first step. So it is off by default and worth it for long bf16 runs.

What is compiled: the calls of the component's denoiser (``ZooLit.compile_module``, ``net`` for the diffusion prior,
GLIDE, the unCLIP decoder and the upsamplers: their training step is one call of it inside the diffusion loss) while
it is in training mode with gradients on. Validation, sample grids and tests call the same network without gradients
and in eval mode: each would be another graph, compiled for a minute or more for a handful of calls, so they run
eagerly. Components whose training step is a chain of sub-module calls (tokenizers, CLIP, DALL·E, the AR prior,
captioner, prompt upsampler) have no ``compile_module``, and ``compile=true`` with them is refused before anything is
built (``zoo.train``).

The compiled call is an instance attribute ``forward`` of the network, set at ``on_train_start`` and removed when
training ends or fails: the state dict, checkpoints and the EMA copy (made at setup, before it) never see it.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import lightning as L
import torch

log = logging.getLogger(__name__)


def compile_target(pl_module: Any) -> Optional[torch.nn.Module]:
    """The network whose training calls ``compile=true`` compiles, or None when the component has none."""
    name = getattr(pl_module, "compile_module", None)
    return getattr(pl_module, name, None) if name else None


class CompileTraining(L.Callback):
    """Compile the training calls of ``pl_module.<compile_module>`` (see the module docstring). ``kwargs`` go to
    ``torch.compile`` (e.g. ``mode``)."""

    def __init__(self, **kwargs: Any):
        self.kwargs = kwargs
        self._net: Optional[torch.nn.Module] = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        net = compile_target(pl_module)
        if net is None:  # zoo.train refuses this before building; a direct Trainer user gets the same words
            raise ValueError(f"{type(pl_module).__name__} has no compile_module: compile=true does not apply to it")
        eager = type(net).forward.__get__(net)
        compiled = torch.compile(eager, **self.kwargs)

        def forward(*args, **kwargs):
            if net.training and torch.is_grad_enabled():
                return compiled(*args, **kwargs)
            return eager(*args, **kwargs)

        net.forward = forward  # an instance attribute: nn.Module.__call__ finds it, state_dict does not
        self._net = net
        log.info("compile=true: %s's training calls are compiled at the first step (35-135 s)", type(net).__name__)

    def _restore(self) -> None:
        if self._net is not None and "forward" in self._net.__dict__:
            del self._net.forward
        self._net = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()
