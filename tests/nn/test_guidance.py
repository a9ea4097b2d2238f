"""Classifier-free guidance: one formula (torch.lerp), exact at scale 1, shared by the DALL·E sampler."""

import torch

from zoo.nn.guidance import guide, guide_batched, guide_learned_variance


def test_guide_formula_and_exact_endpoints():
    g = torch.Generator().manual_seed(0)
    uncond, cond = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    assert torch.equal(guide(uncond, cond, 1.0), cond)  # bit for bit: a guided sampler at s = 1 is the plain one
    assert torch.equal(guide(uncond, cond, 0.0), uncond)
    for s in (0.3, 1.5, 3.0, 7.5):
        torch.testing.assert_close(guide(uncond, cond, s), uncond + s * (cond - uncond))
    half = torch.randn(5, 11, generator=g).half()
    assert torch.equal(guide(half, half + 1, 1.0), half + 1)


def test_learned_variance_guides_only_eps():
    g = torch.Generator().manual_seed(1)
    uncond, cond = torch.randn(2, 6, 4, 4, generator=g), torch.randn(2, 6, 4, 4, generator=g)
    out = guide_learned_variance(uncond, cond, 3.0)
    torch.testing.assert_close(out[:, :3], uncond[:, :3] + 3.0 * (cond[:, :3] - uncond[:, :3]))
    assert torch.equal(out[:, 3:], cond[:, 3:])  # GLIDE: the variance comes from the conditional output
    assert torch.equal(guide_learned_variance(uncond, cond, 1.0), cond)


def test_batched_layout_is_cond_then_uncond():
    g = torch.Generator().manual_seed(2)
    cond, uncond = torch.randn(3, 10, generator=g), torch.randn(3, 10, generator=g)
    both = torch.cat([cond, uncond])
    assert torch.equal(guide_batched(both, 2.0), guide(uncond, cond, 2.0))
    assert torch.equal(guide_batched(both, 1.0), cond)
    assert torch.equal(guide_batched(both, 2.0, learned_variance=True), guide_learned_variance(uncond, cond, 2.0))


def test_dalle_sampler_uses_the_shared_formula():
    import zoo.nn.sampling as sampling

    assert sampling.guide is guide
