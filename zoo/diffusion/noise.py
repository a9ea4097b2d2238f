"""Gaussian noise for the samplers, from one ``torch.Generator`` or from one generator per group of rows.

Why: a pipeline's candidate i is defined as "the sample under seed + i" (``zoo.pipelines.base``), so candidates
were drawn one seed at a time, each a denoiser batch of only B captions (2B with classifier-free guidance). Small
batches leave the CPU's convolution and matmul kernels under-used (the ``shapes`` U-Net: 64 ms an image at batch
4, 50 at batch 32, one thread). :class:`RowGenerators` lets one batch carry several candidates, each group of rows
drawing from its own seed's generator: every draw of shape (R, ...) is the concatenation of each group's draw of
(rows_g, ...), exactly what that generator would have drawn for those rows alone. So a batched candidate gets the
same noise as when it was sampled on its own; its image agrees to float rounding (the denoiser's kernels may sum
in another order at another batch size).

Every noise site of the samplers (initial x_T, DDPM and DDIM(η) step noise, the known-region re-noising, CLIP
guidance's steps) draws through :func:`randn`, which takes either kind of generator (or None: torch's global one).
The diffusers adapter takes one for its deterministic schedulers (DPM-Solver++, UniPC: only x_T is random); its
stochastic ones draw their own step noise from one generator, so they sample one candidate at a time.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch


class RowGenerators:
    """Independent random streams for consecutive groups of rows of one batch: ``groups`` = [(rows, generator),
    ...] covering rows [0, r_0), [r_0, r_0 + r_1), ... A draw of shape (R, ...) (R = the groups' total) is
    ``torch.cat([torch.randn((r_g, ...), generator=g_g) for each group])``. Every generator on one device."""

    def __init__(self, groups: Sequence[tuple[int, torch.Generator]]):
        groups = [(int(r), g) for r, g in groups]
        if not groups:
            raise ValueError("RowGenerators needs at least one (rows, generator) group")
        if any(r < 1 for r, _ in groups):
            raise ValueError(f"every group needs at least one row, got {[r for r, _ in groups]}")
        devices = {torch.device(g.device) for _, g in groups}
        if len(devices) != 1:
            raise ValueError(f"RowGenerators' generators must share a device, got {sorted(map(str, devices))}")
        self.groups = groups
        self.rows = sum(r for r, _ in groups)
        self.device = devices.pop()

    def _check(self, shape: Sequence[int]) -> tuple[int, ...]:
        shape = tuple(shape)
        if not shape or shape[0] != self.rows:
            raise ValueError(
                f"a draw of shape {shape} from RowGenerators over {self.rows} rows: the first dimension must be the "
                f"batch's rows (a sampler drawing per-row noise)"
            )
        return shape

    def _cat(self, draw, shape: Sequence[int], device, dtype) -> torch.Tensor:
        shape = self._check(shape)
        return torch.cat([draw((r, *shape[1:]), generator=g, device=device, dtype=dtype) for r, g in self.groups])

    def randn(self, shape: Sequence[int], device=None, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        return self._cat(torch.randn, shape, device, dtype)

    def rand(self, shape: Sequence[int], device=None, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """Uniform [0, 1) draws, per group as ``randn`` (the Gumbel noise of ``zoo.nn.sampling.gumbel_pick``: the AR
        prior's token sampling)."""
        return self._cat(torch.rand, shape, device, dtype)

    def repeated(self, k: int) -> "RowGenerators":
        """The same streams for a batch whose every row is repeated ``k`` times in place (``repeat_interleave(k,
        0)``, e.g. a prior's best-of-k): group g then covers ``k * rows_g`` consecutive rows."""
        return RowGenerators([(r * int(k), g) for r, g in self.groups])

    def __repr__(self) -> str:
        return f"RowGenerators({len(self.groups)} groups, {self.rows} rows, {self.device})"


# The samplers (``zoo.diffusion.samplers`` names, as ``run_sampler`` takes them) whose every noise draw goes
# through ``randn``, so they take RowGenerators; of the diffusers schedulers only the deterministic ones do
# (``sampler_takes_row_generators``).
BATCHED_SAMPLERS = ("ddim", "ddpm")


def sampler_takes_row_generators(process, sampler: str) -> bool:
    """Whether a ``run_sampler`` sampler name takes RowGenerators: ddim / ddpm, or a diffusers scheduler whose
    steps draw no noise (DPM-Solver++ as ODE, UniPC; only x_T is random there)."""
    if sampler in BATCHED_SAMPLERS:
        return True
    from zoo.diffusion.diffusers_adapter import takes_row_generators

    return takes_row_generators(process, sampler)


AnyGenerator = Union[torch.Generator, RowGenerators, None]


def randn(
    shape: Sequence[int], generator: AnyGenerator = None, device=None, dtype: Optional[torch.dtype] = None
) -> torch.Tensor:
    """``torch.randn(shape, generator=generator, device=device, dtype=dtype)`` that also takes a :class:`RowGenerators`."""
    if isinstance(generator, RowGenerators):
        return generator.randn(shape, device=device, dtype=dtype)
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


def seeded_row_generators(rows: int, seeds: Sequence[int], device=None) -> RowGenerators:
    """One group of ``rows`` rows per seed, in order: candidate j's rows draw from ``Generator().manual_seed(seeds[j])``
    -- the generator a one-seed-at-a-time sampler would have made for that candidate."""
    return RowGenerators([(rows, torch.Generator(device=device or "cpu").manual_seed(int(s))) for s in seeds])


# Images per denoiser call that batched candidates aim for. Measured on the shapes GLIDE at 32 px (AVX2 AMD EPYC,
# classifier-free guidance, so twice the rows): per image a call costs 91 / 88 / 82 / 94 / 106 ms at 4 / 8 / 16 / 32
# / 64 images on one thread, 51 / 52 / 53 / 55 / 65 ms on two; a lone image costs ~112. Past ~16 the activations
# leave the caches and a bigger batch is slower per image, so candidates fill a batch up to this many images only,
# and GLIDE / the unCLIP decoder run a larger sampling call on slices of this many images (GlideLit.guided_model_fn).
CANDIDATE_BATCH = 16


def candidates_per_batch(rows: int, batch_size: int, target: int = CANDIDATE_BATCH) -> int:
    """How many candidates of ``rows`` images each one denoiser call takes: enough to reach ``target`` images,
    never more than ``batch_size`` images (and at least one candidate)."""
    cap = min(int(batch_size), max(int(target), int(rows)))
    return max(1, cap // max(1, int(rows)))
