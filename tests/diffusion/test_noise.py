"""RowGenerators: one batch, one random stream per group of rows (batched candidates), in the samplers."""

import pytest
import torch

from zoo.diffusion import GaussianDiffusion, cosine_schedule, ddim_sample, ddpm_sample
from zoo.diffusion.noise import RowGenerators, candidates_per_batch, randn, seeded_row_generators


def test_a_draw_is_each_groups_own_draw():
    rows = seeded_row_generators(2, [5, 9])
    a, b = rows.randn((4, 3, 8)), rows.randn((4, 3, 8))
    for k, seed in enumerate((5, 9)):
        g = torch.Generator().manual_seed(seed)
        assert torch.equal(a[2 * k : 2 * k + 2], torch.randn(2, 3, 8, generator=g))
        assert torch.equal(b[2 * k : 2 * k + 2], torch.randn(2, 3, 8, generator=g))  # each stream moves on
    g = torch.Generator().manual_seed(3)
    assert torch.equal(randn((2, 5), torch.Generator().manual_seed(3)), torch.randn(2, 5, generator=g))
    uneven = RowGenerators([(1, torch.Generator().manual_seed(1)), (3, torch.Generator().manual_seed(2))])
    assert uneven.rows == 4 and randn((4, 2), uneven, dtype=torch.float64).dtype == torch.float64


def test_gumbel_picks_take_one_stream_per_group():
    from zoo.nn.sampling import gumbel_pick

    logits = torch.randn(5, 40)
    rows = RowGenerators([(2, torch.Generator().manual_seed(7)), (3, torch.Generator().manual_seed(8))])
    got = gumbel_pick(logits, 1.0, rows)
    assert torch.equal(got[:2], gumbel_pick(logits[:2], 1.0, torch.Generator().manual_seed(7)))
    assert torch.equal(got[2:], gumbel_pick(logits[2:], 1.0, torch.Generator().manual_seed(8)))
    u = seeded_row_generators(1, [4, 4]).rand((2, 6))
    assert torch.equal(u[0], u[1]) and torch.equal(u[:1], torch.rand(1, 6, generator=torch.Generator().manual_seed(4)))


def test_bad_groups_and_draws_fail_with_the_reason():
    rows = seeded_row_generators(2, [1, 2])
    with pytest.raises(ValueError, match="first dimension must be the batch's rows"):
        rows.randn((3, 2))
    with pytest.raises(ValueError, match="at least one"):
        RowGenerators([])
    with pytest.raises(ValueError, match="at least one row"):
        RowGenerators([(0, torch.Generator())])
    assert (
        candidates_per_batch(1, 64) == 16 and candidates_per_batch(3, 64) == 5 and candidates_per_batch(3, 64, 64) == 21
    )
    assert candidates_per_batch(20, 64) == 1 and candidates_per_batch(1, 6) == 6 and candidates_per_batch(3, 2) == 1


def _row_wise_model(x, t):  # each row's output depends on that row only: batching cannot change a bit
    return 0.3 * x + 1e-3 * t.float().view(-1, 1, 1, 1)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim_eta", "known_region"])
def test_samplers_give_each_group_the_sample_of_its_seed(sampler):
    process = GaussianDiffusion(cosine_schedule(100), model_mean_type="eps").respaced(6)
    kw = {}
    if sampler == "known_region":  # the re-noising of the known pixels draws per row too
        known = torch.rand(3, 2, 4, 4) * 2 - 1
        kw["known"] = (known, (torch.rand(3, 1, 4, 4) > 0.5).float())

    def run(shape, generator, rows=slice(None)):
        k = {"known": (kw["known"][0][rows], kw["known"][1][rows])} if kw else {}
        if sampler == "ddpm":
            return ddpm_sample(process, _row_wise_model, shape, generator=generator, **k)
        return ddim_sample(process, _row_wise_model, shape, eta=0.8, generator=generator, **k)

    got = run(
        (3, 2, 4, 4), RowGenerators([(1, torch.Generator().manual_seed(4)), (2, torch.Generator().manual_seed(6))])
    )
    assert torch.equal(got[:1], run((1, 2, 4, 4), torch.Generator().manual_seed(4), slice(0, 1)))
    assert torch.equal(got[1:], run((2, 2, 4, 4), torch.Generator().manual_seed(6), slice(1, 3)))


def test_the_diffusers_adapter_takes_row_generators_only_for_deterministic_solvers():
    pytest.importorskip("diffusers")
    from zoo.diffusion.diffusers_adapter import diffusers_sample
    from zoo.diffusion.noise import sampler_takes_row_generators

    process = GaussianDiffusion(cosine_schedule(100), model_mean_type="eps")
    assert [sampler_takes_row_generators(process, s) for s in ("ddim", "ddpm", "dpm++", "unipc", "euler")] == [
        True,
        True,
        True,
        True,
        False,
    ]
    assert not sampler_takes_row_generators(process, "not-a-scheduler")
    # dpm++: each group of rows is the sample of its own seed (only x_T is random)
    rows = RowGenerators([(1, torch.Generator().manual_seed(3)), (1, torch.Generator().manual_seed(5))])
    got = diffusers_sample(process, _row_wise_model, (2, 1, 4, 4), scheduler="dpm++", steps=3, generator=rows)
    for k, seed in enumerate((3, 5)):
        one = diffusers_sample(
            process,
            _row_wise_model,
            (1, 1, 4, 4),
            scheduler="dpm++",
            steps=3,
            generator=torch.Generator().manual_seed(seed),
        )
        assert torch.equal(got[k : k + 1], one)
    with pytest.raises(ValueError, match="draws noise in its steps"):
        diffusers_sample(
            process,
            _row_wise_model,
            (2, 1, 2, 2),
            scheduler="euler",
            steps=2,
            generator=seeded_row_generators(1, [0, 1]),
        )
