"""GlidePipeline: generate/candidates shapes and seeding, EMA weights by default, zoo-sample with a GLIDE checkpoint,
inpainting (the inpainting model's 7-channel input carries the known pixels; known-region inpainting keeps them
exactly), a tiny inpainting GLIDE that learns, CLIP guidance as a generator knob (noised_clip_ckpt +
clip_guidance_scale: scale 0 is the unguided conditional sampler bit for bit, scale > 0 changes the samples, the
config errors), and the experiments/glide zoo-eval configs (conf/eval/experiment/glide: every multirun job composes).

Three tiny checkpoints are trained by zoo-train for 2-3 steps (once per module): a plain GLIDE with the EMA callback,
an inpainting GLIDE (model=glide_inpaint) and, for the CLIP-guidance tests, a noised CLIP (model=noised_clip) on the
same BPE and resolution."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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
    return {"plain": plain, "inpaint": inpaint, "base": base}


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
    # seeded; nested in n (the same noise; two candidates share a denoiser batch of 4 rows here, three of 6)
    torch.testing.assert_close(pipe.candidates(CAPTIONS, 2), cands[:, :2], rtol=0, atol=1e-4)
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


# ----------------------------------------------------------------------------------------------- CLIP guidance
@pytest.fixture(scope="module")
def noised_clip_ckpt(ckpts, train_helpers):
    """A tiny noised CLIP (2 zoo-train steps) on the plain GLIDE's BPE (the shared cache), resolution and process."""
    from omegaconf import open_dict

    from tests.conftest import compose_cfg  # registered by pytest under this name (importlib mode)
    from zoo.train import train

    T = train_helpers
    root = ckpts["base"] / "noised_clip"
    overrides = ["model=noised_clip", "model.preset=tiny", *T.SHAPES_BPE, f"data.resolution={RES}", *T.sizes()]
    cfg = compose_cfg(root, [*overrides, *T.TWO_STEPS, "trainer.num_sanity_val_steps=0", "trainer.limit_val_batches=0"])
    with open_dict(cfg):
        cfg.paths.cache_dir = str(ckpts["base"] / "cache")
    train(cfg)
    return T.last_ckpt(cfg)


def _clip_pipe(ckpts, noised_clip_ckpt, scale, **kw) -> GlidePipeline:
    return GlidePipeline.from_checkpoints(
        str(ckpts["plain"]), noised_clip_ckpt=str(noised_clip_ckpt), clip_guidance_scale=scale, steps=3, **kw
    )


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_clip_guidance_scale_zero_is_the_conditional_sampler_and_scale_changes_samples(
    ckpts, noised_clip_ckpt, sampler
):
    plain = _pipe(ckpts["plain"], guidance=1.0, sampler=sampler, seed=4)  # the conditional model, no CLIP
    want = plain.candidates(CAPTIONS, 2)  # both candidates in one denoiser batch, as CLIP guidance below
    off = _clip_pipe(ckpts, noised_clip_ckpt, 0.0, sampler=sampler, seed=4)  # guidance_scale unset: 1 under CLIP
    assert off.clip_guided and off.noised_clip.cfg.image_size == RES
    assert torch.equal(off.candidates(CAPTIONS, 2), want)  # bit for bit
    assert torch.equal(off.generate(CAPTIONS), plain.generate(CAPTIONS))  # candidate 0 alone, both
    # one candidate per sampler batch (batch_size = the captions): the same noise, so the same images to rounding
    alone = _clip_pipe(ckpts, noised_clip_ckpt, 0.0, sampler=sampler, seed=4, batch_size=len(CAPTIONS))
    torch.testing.assert_close(alone.candidates(CAPTIONS, 2), want, rtol=0, atol=1e-4)
    on = _clip_pipe(ckpts, noised_clip_ckpt, 500.0, sampler=sampler, seed=4)
    guided = on.candidates(CAPTIONS, 2)
    assert guided.shape == want.shape and torch.isfinite(guided).all()
    on_alone = _clip_pipe(ckpts, noised_clip_ckpt, 500.0, sampler=sampler, seed=4, batch_size=len(CAPTIONS))
    torch.testing.assert_close(on_alone.candidates(CAPTIONS, 2), guided, rtol=0, atol=1e-4)  # per-row gradients
    assert not torch.equal(guided, want)
    assert torch.equal(on.sample(CAPTIONS, n_keep=2)["images"], guided)  # sample() draws the same candidates
    # an explicit classifier-free scale stacks underneath: at CLIP scale 0 it is the classifier-free sampler
    cfg3 = _clip_pipe(ckpts, noised_clip_ckpt, 0.0, sampler=sampler, seed=4, guidance_scale=3.0)
    assert torch.equal(
        cfg3.generate(CAPTIONS), _pipe(ckpts["plain"], guidance=3.0, sampler=sampler, seed=4).generate(CAPTIONS)
    )


def test_clip_guidance_knob_errors_name_the_fix(ckpts, noised_clip_ckpt):
    from zoo.errors import ConfigError
    from zoo.models.noised_clip.lit import NoisedClipLit

    with pytest.raises(ConfigError, match=r"only noised_clip_ckpt is set .*generator\.clip_guidance_scale="):
        GlidePipeline.from_checkpoints(str(ckpts["plain"]), noised_clip_ckpt=str(noised_clip_ckpt))
    with pytest.raises(ConfigError, match=r"only clip_guidance_scale is set .*generator\.noised_clip_ckpt="):
        GlidePipeline.from_checkpoints(str(ckpts["plain"]), clip_guidance_scale=3.0)
    with pytest.raises(ConfigError, match=r"ddim or ddpm.*generator\.sampler="):
        _clip_pipe(ckpts, noised_clip_ckpt, 1.0, sampler="euler")
    with pytest.raises(ConfigError, match="holds a glide checkpoint"):  # the registry's check, weights-only load
        GlidePipeline.from_checkpoints(str(ckpts["plain"]), noised_clip_ckpt=str(ckpts["plain"]), clip_guidance_scale=1)
    glide = _pipe(ckpts["plain"]).glide
    torch.manual_seed(0)
    wrong_size = NoisedClipLit(preset="tiny", net={"image_size": 2 * RES})
    with pytest.raises(ConfigError, match=rf"takes {2 * RES} px, GLIDE samples {RES} px.*fix: "):
        GlidePipeline(glide, noised_clip=wrong_size, clip_guidance_scale=1.0)
    for other in ({"num_timesteps": 500}, {"schedule": "linear"}):
        with pytest.raises(ConfigError, match=r"another diffusion process.*fix: .*model\.num_timesteps"):
            GlidePipeline(glide, noised_clip=NoisedClipLit(preset="tiny", **other), clip_guidance_scale=1.0)
    pipe = _clip_pipe(ckpts, noised_clip_ckpt, 1.0)
    image = torch.zeros(1, 3, RES, RES)
    with pytest.raises(ConfigError, match="classifier-free guidance only"):
        pipe.inpaint(image, torch.ones(1, 1, RES, RES), CAPTIONS[:1])


def test_noised_clip_checkpoint_is_loaded_weights_only(ckpts, tmp_path):
    """A file holding more than tensors and containers is refused, not unpickled."""
    import datetime

    from zoo.checkpoint import UnsafeCheckpointError

    bad = tmp_path / "bad.ckpt"
    torch.save({"zoo_component": "noised_clip", "when": datetime.datetime(2021, 12, 20)}, bad)
    with pytest.raises(UnsafeCheckpointError, match="weights_only"):
        GlidePipeline.from_checkpoints(str(ckpts["plain"]), noised_clip_ckpt=str(bad), clip_guidance_scale=1.0)


# ------------------------------------------------------------------------------- experiments/glide zoo-eval configs
GLIDE_EVAL = ["base", "guidance_sweep", "cfg_vs_clip", "steps"]


def _eval_hydra_cfg(*overrides: str):
    """conf/eval/eval.yaml composed with its hydra node (the sweeper's params), as zoo-eval -m sees it."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="conf.eval", version_base="1.3"):
        return compose("eval", overrides=list(overrides), return_hydra_config=True)


def _sweep_jobs(experiment: str) -> list[list[str]]:
    """The overrides of every job of ``zoo-eval -m experiment=<experiment>`` (Hydra's basic sweeper's expansion)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = _eval_hydra_cfg(f"experiment={experiment}").hydra.sweeper.params or {}
    overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    (batch,) = BasicSweeper.split_arguments(overrides, None)
    return batch


def _eval_cfg(tmp_path, *overrides: str):
    from omegaconf import OmegaConf

    from tests.conftest import compose_cfg

    cfg = compose_cfg(tmp_path, list(overrides), module="conf.eval", name="eval")
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves (no checkpoint needs to exist)
    return cfg


@pytest.mark.parametrize("name", GLIDE_EVAL)
def test_glide_eval_experiments_compose(tmp_path, name):
    cfg = _eval_cfg(tmp_path, f"experiment=glide/{name}")
    assert cfg.protocol._target_.endswith("ShapesProtocol") and cfg.protocol.resolution == 32
    assert list(cfg.ablations) == ["blur", "diversity"] and list(cfg.blur.radii) == [0]
    assert cfg.generator._target_ == "zoo.pipelines.glide.GlidePipeline.from_checkpoints"
    assert cfg.generator.glide_ckpt == str(tmp_path / "logs/glide/shapes_long_v/checkpoints/last.ckpt")
    if name != "base":
        hydra_cfg = _eval_hydra_cfg(f"experiment=glide/{name}").hydra
        assert hydra_cfg.sweep.dir.endswith(f"/eval/glide/{name}")


def test_glide_eval_sweeps_expand_to_the_tables_rows(tmp_path):
    """``zoo-eval -m experiment=glide/<table>`` alone runs every row: the sweeper's params expand to one job per row,
    and each job composes to the row's knobs."""
    from omegaconf import OmegaConf

    def knobs(experiment: str, key: str) -> list:
        out = []
        for job in _sweep_jobs(experiment):
            cfg = _eval_cfg(tmp_path, f"experiment={experiment}", *job)
            out.append(OmegaConf.to_container(cfg, resolve=True)[key] if key == "protocol" else cfg.generator)
        return out

    gens = knobs("glide/guidance_sweep", "generator")
    assert [g.guidance_scale for g in gens] == [1, 1.5, 2, 3, 5, 8]
    assert {(g.sampler, g.steps, g.clip_guidance_scale, g.noised_clip_ckpt) for g in gens} == {("ddpm", 25, None, None)}

    gens = knobs("glide/cfg_vs_clip", "generator")
    assert [g.clip_guidance_scale for g in gens] == [0, 3, 10, 30, 100, 300, 1000]
    assert {(g.guidance_scale, g.sampler, g.steps) for g in gens} == {(1, "ddpm", 25)}
    assert gens[0].noised_clip_ckpt == str(tmp_path / "logs/glide/noised_clip/checkpoints/last.ckpt")

    rows = []
    for job in _sweep_jobs("glide/steps"):
        cfg = _eval_cfg(tmp_path, "experiment=glide/steps", *job)
        rows.append((cfg.generator.sampler, cfg.generator.steps, cfg.protocol.n, cfg.generator.guidance_scale))
    assert rows == [
        ("ddim", 10, 256, 3),
        ("ddim", 25, 256, 3),
        ("ddim", 50, 256, 3),
        ("ddim", 250, 256, 3),
        ("ddpm", 25, 256, 3),
        ("ddpm", 50, 256, 3),
        ("ddpm", 1000, 64, 3),
        ("ddim", 50, 64, 3),
    ]


def test_cfg_vs_clip_config_builds_a_clip_guided_pipeline(tmp_path, ckpts, noised_clip_ckpt):
    """The zoo-eval generator node of experiment=glide/cfg_vs_clip reaches the pipeline's CLIP-guidance knobs."""
    from zoo.pipelines.base import build_generator

    cfg = _eval_cfg(
        tmp_path,
        "experiment=glide/cfg_vs_clip",
        f"generator.glide_ckpt={ckpts['plain']}",
        f"generator.noised_clip_ckpt={noised_clip_ckpt}",
        "generator.clip_guidance_scale=30",
    )
    pipe = build_generator(cfg.generator)
    assert isinstance(pipe, GlidePipeline) and pipe.clip_guided
    assert pipe.clip_guidance_scale == 30.0 and pipe.guidance_scale == 1 and (pipe.sampler, pipe.steps) == ("ddpm", 25)
    cfg = _eval_cfg(tmp_path, "experiment=glide/guidance_sweep", f"generator.glide_ckpt={ckpts['plain']}")
    assert not build_generator(cfg.generator).clip_guided


def test_inpaint_cli_redraws_the_box_and_keeps_the_rest(ckpts, tmp_path, capsys):
    from PIL import Image

    from zoo.data.transforms import image_transform
    from zoo.pipelines.glide import inpaint_mask, main

    rng = np.random.default_rng(0)
    src = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(src)  # not square, not RES
    out = main(
        ["inpaint", str(src), "--caption", CAPTIONS[0], "--box", "0.5,0,1,0.5", "--glide-ckpt", str(ckpts["inpaint"])]
        + ["--steps", "2", "-n", "2", "--out", str(tmp_path / "grid")]
    )
    grid = torch.from_numpy(np.asarray(Image.open(out["grid"]).convert("RGB")).copy()).permute(2, 0, 1)
    pad = 2  # torchvision's save_image padding
    assert out["grid"] == str(tmp_path / "grid" / "inpaint.png") and grid.shape[-2:] == (
        RES + 2 * pad,
        3 * RES + 4 * pad,
    )
    tiles = [grid[:, pad : pad + RES, pad + k * (RES + pad) : pad + k * (RES + pad) + RES].float() for k in range(3)]
    image = (image_transform(RES)(Image.open(src).convert("RGB")) + 1) * 127.5
    known = inpaint_mask(RES, box="0.5,0,1,0.5")[0].bool().expand(3, -1, -1)
    assert not known[:, : RES // 2, RES // 2 :].any() and known[:, RES // 2 :, :].all()  # top-right quarter redrawn
    for tile in tiles[1:]:  # the samples keep the known pixels (to PNG rounding) and redraw the box
        assert (tile[known] - image[known]).abs().max() <= 1.0
        assert (tile[~known] - image[~known]).abs().mean() > 5
    assert (tiles[0][~known] - 127.5).abs().max() <= 1.0  # the input tile shows the box greyed out
    # a mask image: white = regenerate
    mask = np.zeros((40, 56), dtype=np.uint8)
    mask[:, :28] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    m = inpaint_mask(RES, mask_file=str(tmp_path / "m.png"))
    assert not m[..., :, : RES // 2].any() and m[..., :, RES // 2 :].all()
    for bad, message in [(["--box", "0.6,0,0.2,1"], "0 <= x0 < x1"), ([], "exactly one of --box")]:
        with pytest.raises(SystemExit):
            main(["inpaint", str(src), "--caption", "x", "--glide-ckpt", str(ckpts["inpaint"]), *bad])
        assert message in capsys.readouterr().err


def test_inpaint_cli_regions_land_where_they_are_drawn_on_a_non_square_image(tmp_path):
    """The CLI's picture is resized (shorter side) and centre-cropped to the model's view; a mask image painted over
    the picture, and a --box in fractions of its width and height, go through the same geometry, so the regenerated
    pixels are the ones the region covers in the picture (a mask squashed to the square put it elsewhere)."""
    from zoo.data.transforms import image_transform
    from zoo.errors import ConfigError
    from zoo.pipelines.glide import inpaint_mask

    w, h, s = 600, 300, 30  # the view is x 150..450 of the picture, 10 px of it per view pixel
    photo = np.zeros((h, w, 3), dtype=np.uint8)
    photo[:, 250:350] = (255, 0, 0)  # an object in the middle of the picture
    view = image_transform(s)(Image.fromarray(photo))
    red = view[0] > 0  # where the object lands in the model's view: columns 10..19
    assert red[:, 10:20].all() and red.sum() == 10 * s
    painted = np.zeros((h, w), dtype=np.uint8)
    painted[:, 250:350] = 255  # white = regenerate: exactly the object
    Image.fromarray(painted).save(tmp_path / "m.png")
    known = inpaint_mask(s, mask_file=str(tmp_path / "m.png"), image_size=(w, h))
    assert known.shape == (1, 1, s, s) and torch.equal(~known[0, 0].bool(), red)
    Image.fromarray(painted).resize((w // 2, h // 2), Image.NEAREST).save(tmp_path / "half.png")  # same aspect
    assert torch.equal(inpaint_mask(s, mask_file=str(tmp_path / "half.png"), image_size=(w, h)), known)
    assert torch.equal(inpaint_mask(s, mask_file=str(tmp_path / "m.png")), known)  # its own size
    box = inpaint_mask(s, box=f"{250 / w},0,{350 / w},1", image_size=(w, h))  # the same region as fractions
    assert torch.equal(box, known)
    with pytest.raises(ConfigError, match="no pixel of the model's 30x30 view"):
        inpaint_mask(s, box="0,0,0.25,1", image_size=(w, h))  # the picture's left quarter is outside the view
    Image.fromarray(painted[:, :300]).save(tmp_path / "other.png")  # 300x300: does not cover a 600x300 picture
    with pytest.raises(ConfigError, match="300x300 px but the image is 600x300"):
        inpaint_mask(s, mask_file=str(tmp_path / "other.png"), image_size=(w, h))


@pytest.mark.parametrize("bad", [[3, 10], "abc", float("nan"), float("inf"), -1.0])
def test_a_clip_guidance_scale_that_is_not_a_number_names_the_key(nn_helpers, bad):
    """generator.clip_guidance_scale=3,10 without -m (a list), NaN or inf: a TypeError naming no key from float(), or
    NaN / unguided images, instead of the ConfigError every other sampling knob gives."""
    from zoo.errors import ConfigError
    from zoo.models.noised_clip.lit import NoisedClipLit

    lit = nn_helpers.sampling_lit(GlideLit)
    clip = NoisedClipLit(preset="tiny")
    with pytest.raises(
        ConfigError,
        match=r"generator\.clip_guidance_scale=.* must be a number >= 0: the CLIP guidance scale \(0: unguided\)",
    ):
        GlidePipeline(lit, steps=2, noised_clip=clip, clip_guidance_scale=bad)


def test_inpaint_cli_with_a_sampler_that_cannot_reimpose_pixels_names_a_fix_it_has(ckpts, tmp_path, capsys):
    """--sampler dpm++ (a diffusers scheduler) cannot re-impose the known pixels: the sampler's ValueError came out of
    the CLI as a traceback naming replace_known=False, which the CLI had no flag for (and a plain model cannot
    take). Now a one-line error before sampling, naming --sampler ddim and, for an inpainting model,
    --no-replace-known (which then samples with the model's input channels alone)."""
    from zoo.pipelines.glide import main

    src = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (RES, RES, 3), dtype=np.uint8)).save(src)
    args = ["inpaint", str(src), "--caption", CAPTIONS[0], "--box", "0.5,0,1,0.5", "--steps", "2", "-n", "1"]
    args += ["--out", str(tmp_path / "grid.png")]
    for ckpt, extra, message in [
        ("inpaint", ["--sampler", "dpm++"], "not 'dpm++' (fix: sampler=ddim (--sampler ddim) or replace_known=False"),
        ("plain", ["--sampler", "euler"], "not 'euler' (fix: sampler=ddim (--sampler ddim))"),
        ("plain", ["--no-replace-known"], "not an inpainting model"),
    ]:
        with pytest.raises(SystemExit):
            main([*args, "--glide-ckpt", str(ckpts[ckpt]), *extra])
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    out = main([*args, "--glide-ckpt", str(ckpts["inpaint"]), "--sampler", "dpm++", "--no-replace-known"])
    assert Path(out["grid"]).is_file()


@pytest.mark.parametrize(
    "knob, said",
    [
        ({"sampler": "eular"}, "generator.sampler='eular' is not a sampler"),
        ({"eta": -1.0}, "generator.eta=-1.0 must be a number >= 0: the DDIM eta"),
        ({"guidance_scale": float("nan")}, "generator.guidance_scale=nan must be a number >= 0: the guidance scale"),
        ({"n_keep": 0}, "generator.n_keep=0 must be"),
        ({"batch_size": 1.5}, "generator.batch_size=1.5 must be"),
        ({"clip_guidance_scale": 3.0}, "CLIP guidance needs both generator.noised_clip_ckpt"),
    ],
)
def test_options_that_need_no_model_are_refused_before_any_checkpoint_loads(knob, said, tmp_path, monkeypatch):
    """A sampler name, eta, guidance scale or count that cannot work, or clip_guidance_scale without a noised CLIP,
    were refused only after the GLIDE and the CLIP had loaded."""
    import zoo.checkpoint
    from zoo.errors import ConfigError
    from zoo.pipelines.glide import GlidePipeline

    def must_not_load(*a, **k):
        raise AssertionError("a checkpoint was loaded before the options were checked")

    monkeypatch.setattr(zoo.checkpoint, "load_module", must_not_load)
    with pytest.raises(ConfigError, match=said):
        GlidePipeline.from_checkpoints(str(tmp_path / "missing.ckpt"), **knob)


@pytest.mark.parametrize(
    "key, value", [("n_candidates", 1.5), ("n_keep", 0), ("batch_size", 0), ("batch_size", -2), ("n_keep", "2")]
)
def test_a_count_that_is_not_a_whole_number_is_refused_when_the_pipeline_is_built(ckpts, key, value):
    """generator.n_candidates / n_keep / batch_size went through int(): 1.5 drew one candidate without a word, and a
    batch size of 0 or less failed mid-sampling (range()'s 'arg 3 must not be zero') or drew nothing. A ConfigError
    naming the key when the pipeline is built (GLIDE, unCLIP and DALL·E share zoo.pipelines.base.whole_count); 2.0
    is refused as every count option (and zoo.kinds, for a checkpoint's int field) refuses it."""
    from zoo.errors import ConfigError, shown
    from zoo.pipelines.base import whole_count

    with pytest.raises(ConfigError, match=rf"generator\.{key}={shown(value)} must be a whole number >= 1 \(fix: "):
        _pipe(ckpts["plain"], **{key: value})
    assert _pipe(ckpts["plain"], n_candidates=2, n_keep=2, batch_size=3).n_candidates == 2
    with pytest.raises(ConfigError, match=r"generator\.n_candidates=2\.0 must be a whole number"):
        _pipe(ckpts["plain"], n_candidates=2.0, n_keep=2, batch_size=3)
    with pytest.raises(ConfigError):  # a bool is no count (int() took True for 1)
        whole_count(True, "n_keep", 1)


def test_n_candidates_without_a_clip_to_rerank_them_is_a_warning(ckpts, caplog):
    """generator.n_candidates=8 without generator.clip_ckpt drew only n_keep samples per prompt (nothing reranks
    them) without a word: zoo-sample n_candidates=8 looked like a best-of-8. A WARNING naming the fix; one
    candidate, or a CLIP, warns nothing."""
    import logging

    with caplog.at_level(logging.WARNING, logger="zoo.pipelines.glide"):
        _pipe(ckpts["plain"], n_candidates=8)
        lines = [r.getMessage() for r in caplog.records if "n_candidates" in r.getMessage()]
        assert len(lines) == 1 and "n_candidates=8 ignored" in lines[0] and "generator.clip_ckpt=" in lines[0]
        caplog.clear()
        _pipe(ckpts["plain"], n_candidates=1)
        GlidePipeline(_pipe(ckpts["plain"]).glide, scorer=object(), n_candidates=8)
    assert not [r for r in caplog.records if "n_candidates" in r.getMessage()]


def test_an_eta_the_sampler_does_not_take_is_a_warning(ckpts, caplog):
    """generator.eta with sampler=ddpm (or a diffusers scheduler) was ignored without a word: only ddim draws with an
    eta, so an eta sweep over ddpm samples gave the same images. A WARNING; eta with ddim (given, or the
    checkpoint's sampler) warns nothing."""
    import logging

    with caplog.at_level(logging.WARNING, logger="zoo.pipelines.glide"):
        _pipe(ckpts["plain"], sampler="ddpm", eta=0.5)
        lines = [r.getMessage() for r in caplog.records if "eta" in r.getMessage()]
        assert lines == ["generator.eta=0.5 ignored: only the ddim sampler takes an eta, not ddpm"], lines
        caplog.clear()
        _pipe(ckpts["plain"], sampler="ddim", eta=0.5)
        _pipe(ckpts["plain"], eta=0.5)  # the checkpoint's sampler: ddim
    assert not [r for r in caplog.records if "eta" in r.getMessage()]


def test_guidance_of_a_glide_that_never_trained_the_empty_caption_is_a_warning(caplog):
    """model.text_dropout=0 never trains the empty caption, yet training grids (grid_guidance_scale 3) and sampling
    (guidance_scale 3, the checkpoint's default) guided with it, extrapolating from an untrained unconditional model,
    without a word. A WARNING at training (setup "fit") and when a pipeline guides such a model; guidance 1 or a
    model trained with dropout warns nothing."""
    import logging

    def warned() -> list[str]:
        return [r.getMessage() for r in caplog.records if "empty caption is never trained" in r.getMessage()]

    lit = GlideLit(preset="tiny", text_dropout=0.0)
    with caplog.at_level(logging.WARNING):
        lit.setup("fit")
        assert len(warned()) == 1 and "model.guidance_scale=3.0, model.grid_guidance_scale=3.0" in warned()[0]
        caplog.clear()
        GlidePipeline(lit)  # the checkpoint's guidance_scale, 3
        assert len(warned()) == 1 and "generator.guidance_scale=3.0" in warned()[0]
        caplog.clear()
        GlidePipeline(lit, guidance_scale=1.0)
        GlideLit(preset="tiny", text_dropout=0.0, guidance_scale=1.0, grid_guidance_scale=1.0).setup("fit")
        GlidePipeline(GlideLit(preset="tiny"))
    assert not warned()


def test_inpaint_cli_never_replaces_the_input_nor_an_earlier_default_grid(ckpts, tmp_path, monkeypatch, capsys):
    """``--out in.png`` overwrote the image being edited, and a rerun with the default --out replaced the earlier
    inpaint.png without a word. The input (or the mask) as --out is refused before any checkpoint loads; the default
    name becomes inpaint-<n>.png beside an earlier grid; an --out the user names is replaced, as asked."""
    from zoo.pipelines import glide

    monkeypatch.chdir(tmp_path)
    src, mask = tmp_path / "in.png", tmp_path / "m.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (RES, RES, 3), dtype=np.uint8)).save(src)
    Image.fromarray(np.full((RES, RES), 255, dtype=np.uint8)).save(mask)
    before = src.read_bytes(), mask.read_bytes()
    args = ["inpaint", str(src), "--caption", CAPTIONS[0], "--glide-ckpt", str(ckpts["inpaint"]), "--steps", "1"]
    args += ["-n", "1"]
    real = glide.GlidePipeline.from_checkpoints

    def must_not_load(*a, **k):
        raise AssertionError("the checkpoint loaded before --out was checked")

    monkeypatch.setattr(glide.GlidePipeline, "from_checkpoints", must_not_load)
    for region, out, named in [
        (["--box", "0,0,0.5,0.5"], "in.png", str(src)),
        (["--box", "0,0,0.5,0.5"], str(tmp_path / "." / "in.png"), str(src)),
        (["--mask", str(mask)], "m.png", str(mask)),
    ]:
        with pytest.raises(SystemExit) as e:
            glide.main([*args, *region, "--out", out])
        assert e.value.code == 2
        assert (
            f"that is the input image {named}, the grid would replace it (fix: --out <another"
            in capsys.readouterr().err
        )
    assert (src.read_bytes(), mask.read_bytes()) == before
    monkeypatch.setattr(glide.GlidePipeline, "from_checkpoints", real)
    first = glide.main([*args, "--box", "0,0,0.5,0.5"])["grid"]
    kept = Path(first).read_bytes()
    second = glide.main([*args, "--box", "0.5,0.5,1,1"])["grid"]
    assert (first, second) == ("inpaint.png", "inpaint-1.png")
    assert Path("inpaint.png").read_bytes() == kept and Path(second).is_file()
    third = glide.main([*args, "--box", "0.5,0.5,1,1", "--out", "inpaint.png"])["grid"]
    assert third == "inpaint.png" and not Path("inpaint-2.png").exists()
    assert Path("inpaint.png").read_bytes() != kept  # another box: the grid the user named was replaced
    assert src.read_bytes() == before[0]
