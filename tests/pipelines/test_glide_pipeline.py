"""GlidePipeline: generate/candidates shapes and seeding, EMA weights by default, zoo-sample with a GLIDE checkpoint,
inpainting (the inpainting model's 7-channel input carries the known pixels; known-region inpainting keeps them
exactly), and a tiny inpainting GLIDE that learns.

Two tiny checkpoints are trained by zoo-train for 2-3 steps (once per module): a plain GLIDE with the EMA callback and
an inpainting GLIDE (model=glide_inpaint)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from zoo.models.glide.lit import GlideLit
from zoo.pipelines.glide import METHOD_KNOWN_REGION, METHOD_MODEL, METHOD_MODEL_AND_KNOWN, GlidePipeline

CAPTIONS = ["a large red circle at the top left", "a small blue square at the bottom right"]
RES = 16


def _train(T, root: Path, *overrides: str) -> Path:
    """Two steps of a tiny GLIDE (``T``: the ``train_helpers`` module) with ``overrides``."""
    from omegaconf import open_dict

    from tests.conftest import compose_cfg  # registered by pytest under this name (importlib mode)
    from zoo.train import train

    tiny = [
        "model.preset=tiny",
        "model.grid_captions=2",
        "model.grid_steps=2",
        *T.SHAPES_BPE,
        f"data.resolution={RES}",
        *T.sizes(),
        *T.TWO_STEPS,
        "trainer.precision=32-true",
        "trainer.num_sanity_val_steps=0",
        "trainer.limit_val_batches=0",
    ]
    cfg = compose_cfg(root, [*tiny, *overrides])
    with open_dict(cfg):
        cfg.paths.cache_dir = str(root.parent / "cache")  # the fitted BPE is shared by both runs
    train(cfg)
    return T.last_ckpt(cfg)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, train_helpers):
    base = tmp_path_factory.mktemp("glide_pipe")
    plain = _train(
        train_helpers,
        base / "plain",
        "model=glide",
        "callbacks=ema",
        "callbacks.ema.update_starting_at_step=1",
        "callbacks.ema.decay=0.5",
        "trainer.max_steps=3",
    )  # 2 EMA updates: average != weights
    inpaint = _train(train_helpers, base / "inpaint", "model=glide_inpaint")
    return {"plain": plain, "inpaint": inpaint}


def _pipe(ckpt, **kw) -> GlidePipeline:
    return GlidePipeline.from_checkpoints(
        str(ckpt), steps=kw.pop("steps", 3), guidance_scale=kw.pop("guidance", 2.0), **kw
    )


def test_generate_and_candidates_shapes_and_seeding(ckpts):
    pipe = _pipe(ckpts["plain"], seed=5)
    img = pipe.generate(CAPTIONS)
    assert img.shape == (2, 3, RES, RES) and img.dtype == torch.float32 and img.abs().max() <= 1
    cands = pipe.candidates(CAPTIONS, 3)
    assert cands.shape == (2, 3, 3, RES, RES)
    assert torch.equal(cands[:, 0], img)  # no CLIP: generate is candidate 0
    assert torch.equal(pipe.candidates(CAPTIONS, 2), cands[:, :2])  # seeded; nested in n
    assert not torch.equal(cands[:, 0], cands[:, 1])  # candidates differ
    assert torch.equal(_pipe(ckpts["plain"], seed=5).generate(CAPTIONS), img)  # a fresh pipeline, same seed
    assert not torch.equal(_pipe(ckpts["plain"], seed=6).generate(CAPTIONS), img)
    out = pipe.sample(CAPTIONS, n_keep=2)
    assert out["images"].shape == (2, 2, 3, RES, RES) and out["scores"] is None
    assert torch.equal(out["images"], cands[:, :2])


def test_ema_weights_by_default(ckpts):
    """The EMA callback writes the average into state_dict and the raw weights into current_model_state; the
    pipeline samples with the average unless use_ema=False."""
    ckpt = torch.load(ckpts["plain"], map_location="cpu", weights_only=True)
    assert "current_model_state" in ckpt and int(ckpt["averaging_state"]["n_averaged"]) > 0
    ema, raw = _pipe(ckpts["plain"]), _pipe(ckpts["plain"], use_ema=False)
    assert ema.weights == "ema" and raw.weights == "raw"
    name = "net.text_proj.weight"
    assert torch.equal(ema.glide.state_dict()[name], ckpt["state_dict"][name])
    assert torch.equal(raw.glide.state_dict()[name], ckpt["current_model_state"][name])
    assert not torch.equal(ckpt["state_dict"][name], ckpt["current_model_state"][name])  # so the test can fail
    assert _pipe(ckpts["inpaint"]).weights == "raw (no EMA in checkpoint)"


def _sample_cfg(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return compose("sample", overrides=list(overrides))


def test_zoo_sample_with_a_glide_checkpoint_writes_grids(ckpts, tmp_path):
    from zoo.sample import sample

    prompts = CAPTIONS[:1]
    written = sample(
        _sample_cfg(
            "generator=glide",
            f"ckpt={ckpts['plain']}",
            f"out_dir={tmp_path / 'out'}",
            f"paths.root_dir={tmp_path}",
            f"prompts={json.dumps(prompts)}",
            "n_keep=2",
            "generator.steps=2",
            "generator.guidance_scale=1.5",
        )
    )
    entry = json.loads((tmp_path / "out" / "samples.json").read_text())[prompts[0]]
    assert entry == written[prompts[0]]
    w, h = Image.open(entry["grid"]).size
    assert w > 2 * RES and h >= RES  # 2 images side by side, enlarged (grid_scale)
    assert len(entry["images"]) == 2 and all(Image.open(f).size == (RES, RES) for f in entry["images"])


# ----------------------------------------------------------------------------------------------------- inpainting
def _image_and_mask():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, RES, RES, generator=g) * 2 - 1
    mask = torch.ones(1, 1, RES, RES)
    mask[..., 4:12, 4:12] = 0  # a hole in the middle
    return image, mask


def test_known_region_inpainting_with_the_plain_model_keeps_known_pixels(ckpts):
    pipe = _pipe(ckpts["plain"])
    assert not pipe.is_inpainting_model
    image, mask = _image_and_mask()
    out = pipe.inpaint(image, mask, CAPTIONS)
    assert out["method"] == METHOD_KNOWN_REGION
    x = out["images"]
    assert x.shape == (2, 3, RES, RES)
    known = mask.expand_as(x).bool()
    assert torch.equal(x[known], image.expand_as(x)[known])  # exactly
    assert not torch.allclose(x[~known], image.expand_as(x)[~known])  # the hole is generated
    with pytest.raises(ValueError, match="replace_known"):
        pipe.inpaint(image, mask, CAPTIONS, replace_known=False)


def test_inpainting_model_input_has_seven_channels_carrying_the_known_pixels(ckpts):
    pipe = _pipe(ckpts["inpaint"])
    lit = pipe.glide
    assert pipe.is_inpainting_model and lit.net.unet.cfg.in_channels == 7
    image, mask = _image_and_mask()
    seen = []
    h = lit.net.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    out = pipe.inpaint(image, mask, CAPTIONS[:1], replace_known=False)
    h.remove()
    assert out["method"] == METHOD_MODEL
    assert seen and all(x.shape[1] == 7 for x in seen)
    first = seen[0]  # guided: (2B, 7, H, W) = [cond ; uncond], both with the known pixels
    for row in first:
        torch.testing.assert_close(row[3:6], (image * mask)[0], rtol=0, atol=0)
        torch.testing.assert_close(row[6:], mask[0], rtol=0, atol=0)
    # without replace_known the known pixels are only an input: not copied into the result
    assert not torch.equal(out["images"][mask.expand(1, 3, -1, -1).bool()], image[mask.expand(1, 3, -1, -1).bool()])
    both = pipe.inpaint(image, mask, CAPTIONS[:1])
    assert both["method"] == METHOD_MODEL_AND_KNOWN
    known = mask.expand(1, 3, -1, -1).bool()
    assert torch.equal(both["images"][known], image[known])


def test_known_pixels_reach_the_inpainting_output_by_gradient():
    """d(output)/d(known pixel) != 0 and d(output)/d(erased pixel of the image input) == 0 (it is masked out)."""
    torch.manual_seed(0)
    lit = GlideLit(preset="tiny", inpaint=True)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in lit.net.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    image, mask = _image_and_mask()
    image = image.clone().requires_grad_(True)
    x, t = torch.randn(1, 3, RES, RES, generator=g), torch.tensor([500])
    out = lit.net(x, t, None, inpaint_image=image, inpaint_mask=mask)
    (out**2).sum().backward()
    grad = image.grad.abs().sum(1)[0]  # (H, W)
    assert grad[mask[0, 0].bool()].sum() > 0
    assert grad[~mask[0, 0].bool()].sum() == 0


def test_tiny_inpainting_glide_learns_a_fixed_batch(nn_helpers):
    torch.manual_seed(0)
    lit = GlideLit(preset="tiny", inpaint=True, text_dropout=0.0)
    g = torch.Generator().manual_seed(0)
    base = torch.rand(4, 3, 1, 1, generator=g) * 2 - 1
    x0 = (base + 0.3 * torch.linspace(-1, 1, RES)[None, None, :, None]).clamp(-1, 1).expand(4, 3, RES, RES)
    tok = torch.zeros(4, 32, dtype=torch.long)
    tok[:, :5] = torch.randint(1, 1000, (4, 5), generator=g)
    batch = {"image": x0.contiguous(), "text_tokens": tok}
    start, end = nn_helpers.overfit(lit, batch)  # eval MSE on fixed timesteps / noise, before and after 40 steps
    assert end < 0.35 * start, (start, end)  # measured: 0.98 -> 0.19 in 40 steps
