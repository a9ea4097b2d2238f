"""Every model x data pair composes and resolves; bad overrides fail early with messages that say the fix."""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
from pathlib import Path

import pytest
from hydra._internal.utils import _locate
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

import conf
from zoo.config import accepted_keys, check_keys
from zoo.errors import ConfigError
from zoo.nn.quantizers import VectorQuantizer
from zoo.nn.unet import UNet
from zoo.train import check_compatibility, fit_tiny_to_data, instantiate

CONF = Path(conf.__file__).parent
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
DATA = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))
TRAINERS = sorted(p.stem for p in (CONF / "trainer").glob("*.yaml"))


def test_groups_exist():
    assert {"dvae", "vqvae"} <= set(MODELS)
    assert {"shapes", "coco", "webdataset", "folder"} <= set(DATA)
    assert {"default", "cpu", "gpu", "ddp", "ddp_cpu", "fsdp"} <= set(TRAINERS)


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("model", MODELS)
def test_every_model_data_pair_composes(train_cfg, model, data):
    cfg = train_cfg(f"model={model}", f"data={data}")
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert plain["model"]["_target_"].startswith("zoo.models.")
    assert plain["data"]["_target_"].startswith("zoo.data.")
    # every key a shipped config sets is one its target takes: the unknown-key check refuses typos, not configs
    for node, what in ((cfg.model, "model"), (cfg.model.optimizer, "model.optimizer"), (cfg.data, "data")):
        check_keys(node, what, _locate(node._target_))


def test_a_misspelt_data_option_is_named_through_the_subclass_s_kwargs():
    """ShapesDataModule passes **kwargs on to ImageTextDataModule: its named arguments are the options, so a typo
    there is refused too (a **kwargs function alone is left open)."""
    node = OmegaConf.create({"_target_": "zoo.data.modules.ShapesDataModule", "batch_sise": 4})
    with pytest.raises(ConfigError, match=r"data.batch_sise is not an option .*did you mean data.batch_size\?"):
        check_keys(node, "data", _locate(node._target_))
    assert accepted_keys(lambda **kwargs: None) is None


GENERATORS = sorted(p.stem for p in (CONF / "generator").glob("*.yaml"))


@pytest.mark.parametrize("generator", ["dalle", "glide", "unclip"])
def test_a_misspelt_generator_option_is_named_before_any_checkpoint_loads(generator):
    """The pipelines' from_checkpoints(..., **kw) pass **kw to the class: its constructor's arguments are the options.
    A misspelt +generator.<key> was a TypeError from the constructor after every checkpoint had loaded; now a
    ConfigError naming the close match, before (the checkpoint named here does not exist)."""
    from zoo.config import instantiate

    cfg = OmegaConf.load(CONF / "generator" / f"{generator}.yaml")
    ckpt = "decoder_ckpt" if generator == "unclip" else f"{generator}_ckpt"
    node = OmegaConf.create({"_target_": cfg._target_, ckpt: "/nonexistent/x.ckpt", "guidance_scael": 3.0})
    with pytest.raises(
        ConfigError, match=r"generator\.guidance_scael is not an option .*did you mean generator\.\w*guidance_scale\?"
    ):
        instantiate(node, "generator")


@pytest.mark.parametrize("generator", GENERATORS)
def test_every_shipped_generator_config_passes_the_option_check(generator):
    """Every key a shipped generator config sets is one its target (a pipeline's from_checkpoints: its own arguments
    and its class's) takes."""
    cfg = OmegaConf.load(CONF / "generator" / f"{generator}.yaml")
    # prompt_upsampler is build_generator's (it wraps the generator), not passed to the target; defaults is Hydra's
    check_keys(cfg, "generator", _locate(cfg._target_), skip={"prompt_upsampler", "defaults"})


# dalle: text tokens + a trained image tokenizer; glide: text tokens; the priors: zoo-embed CLIP features.
NEEDS_MORE_THAN_IMAGES = (
    "dalle",
    "glide",
    "glide_inpaint",
    "diffusion_prior",
    "ar_prior",
    "unclip_decoder",
    "noised_clip",
    "captioner",
)


def _synthetic_embed_file(path, n: int, clip_dim: int, text_len: int):
    """A zoo-embed-shaped features file (random unit embeddings, token ids) so the prior experiments' checks of widths
    and lengths run against the real check_data, without a CLIP."""
    import torch

    from zoo.checkpoint import atomic_torch_save

    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(n, clip_dim, generator=g), dim=-1)
    atomic_torch_save(
        {
            "clip_image_emb": emb,
            "clip_text_emb": emb.roll(1, 0),
            "clip_text_tokens": torch.randint(1, 100, (n, text_len), generator=g),
        },
        path,
    )
    return path


@pytest.mark.parametrize("model", MODELS)
def test_every_model_builds_tiny_on_shapes(train_cfg, model):
    cfg = train_cfg(f"model={model}", "model.preset=tiny", "data.train_size=8", "data.val_size=8", "data.test_size=8")
    dm = instantiate(cfg.data)
    net = instantiate(cfg.model)
    if model in NEEDS_MORE_THAN_IMAGES:  # the default data has no text tokens / tokenizer / CLIP features
        with pytest.raises(ConfigError, match="fix: "):
            check_compatibility(net, dm)
        return  # (built and trained end to end in tests/models/test_<model>.py)
    check_compatibility(net, dm)
    assert sum(p.numel() for p in net.parameters()) > 0


@pytest.mark.parametrize("trainer", TRAINERS)
@pytest.mark.parametrize("logger", ["wandb", "csv", "tensorboard", "none", "many"])
def test_trainer_and_logger_presets_compose(train_cfg, trainer, logger):
    cfg = train_cfg(f"trainer={trainer}", f"logger={logger}")
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"


def test_unknown_group_option_lists_the_choices(train_cfg):
    with pytest.raises(MissingConfigException) as e:
        train_cfg("model=dvea")
    assert "model/dvea" in str(e.value) and "dvae" in str(e.value)  # Hydra lists available options


def test_unknown_key_is_rejected(train_cfg):
    with pytest.raises(ConfigCompositionException):
        train_cfg("trainer.max_epoch=3")


def test_bad_preset_fails_when_building(train_cfg):
    cfg = train_cfg("model=dvae", "model.preset=huge")
    with pytest.raises(ValueError, match="tiny"):
        instantiate(cfg.model)


def test_bad_caption_style_fails_when_building(train_cfg):
    cfg = train_cfg("data.caption_style=poetic")
    with pytest.raises(ValueError, match="descriptive"):
        instantiate(cfg.data)


@pytest.mark.parametrize(
    "overrides, key, node",
    [
        (["model.optimizer.lr=abc"], "model.optimizer.lr", "model"),  # torch.optim's lr: float | Tensor
        (["model=clip", "model.scheduler.warmup_steps=abc"], "model.scheduler.warmup_steps", "model"),  # a function
        (["trainer.max_steps=abc"], "trainer.max_steps", "trainer"),
        (
            ["logger=tensorboard", "logger.tensorboard.default_hp_metric=abc"],
            "logger.tensorboard.default_hp_metric",
            "logger.tensorboard",
        ),
    ],
)
def test_a_bad_value_is_named_by_its_key_before_building(train_cfg, overrides, key, node):
    """The optimizer and scheduler are _partial_ nodes the module calls once fit has started: a bad value there was
    a TypeError / ValueError from inside torch at the first step, not a ConfigError; and a trainer or logger value
    was named config.max_steps / csv.<key> (the callers' short names), keys no command line has."""
    cfg = train_cfg(*overrides)
    with pytest.raises(ConfigError, match=rf"^{key}=\S+ must be .*\(fix: {key}=<"):
        # named as zoo.train names them: model "model", a logger by its entry's name, the trainer not at all
        instantiate(OmegaConf.select(cfg, node), *{"trainer": ()}.get(node, (node.split(".")[-1],)))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.optimizer.lr=-1"], "model.optimizer: Invalid learning rate"),
        (["+model.optimizer.betas=[0.9,1.5]"], "model.optimizer: Invalid beta"),
    ],
)
def test_a_value_torch_refuses_in_the_optimizer_fails_before_fit(
    train_cfg, train_helpers, tmp_path, overrides, message
):
    """model.optimizer / model.scheduler are _partial_ factories called inside trainer.fit: a value torch refuses
    was its ValueError as a traceback once fit had started, naming no key; now a ConfigError before anything runs."""
    from zoo.train import train

    cfg = train_cfg(*train_helpers.DVAE_SHAPES, *train_helpers.TWO_STEPS, *overrides)
    with pytest.raises(ConfigError, match=re.escape(message)):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_bad_value_names_an_optional_or_union_type_as_a_command_line_writes_it():
    """check_types named Optional[int] by its __name__: "must be Optional, got 0.5 (fix: ...=<Optional>)"."""
    from zoo.config import check_types

    node = OmegaConf.create({"_target_": "lightning.pytorch.Trainer", "max_epochs": 0.5, "gradient_clip_val": "x"})
    with pytest.raises(
        ConfigError, match=re.escape("t.max_epochs=0.5 must be a whole number or null (fix: t.max_epochs=<")
    ):
        check_types(node, "t")
    node.max_epochs = 1
    with pytest.raises(ConfigError, match=re.escape("t.gradient_clip_val='x' must be a number or null")):
        check_types(node, "t")


@pytest.mark.parametrize(
    "bad, message",
    [
        ("seed=abc", "seed='abc' must be a whole number"),
        ("float32_matmul_precision=hihg", "float32_matmul_precision='hihg'"),
    ],
)
def test_bad_top_level_run_options_are_refused(train_cfg, train_helpers, bad, message):
    """seed=abc was int()'s ValueError inside Lightning; float32_matmul_precision=hihg only a torch warning that the
    call has no effect, and the run went on at torch's default precision."""
    from zoo.train import train

    with pytest.raises(ConfigError, match=re.escape(message)):
        train(train_cfg(*train_helpers.DVAE_SHAPES, *train_helpers.TWO_STEPS, bad))


@pytest.mark.parametrize(
    "model, params, gib, have", [("dalle", "12.29B", 183, 24), ("glide", "3.55B", 53, 24), ("clip", "0.99B", 15, 8)]
)
def test_a_paper_preset_that_cannot_fit_in_memory_is_refused_before_anything_is_built(
    train_cfg, monkeypatch, tmp_path, model, params, gib, have
):
    """``zoo-train model=<m> model.preset=paper`` on a CPU machine allocated until the kernel killed it ("Killed", no
    message). Built first on the meta device (the diffusion modules' schedules and open_clip's model now stay
    there), its weights + gradients + AdamW moments (16 bytes a trained parameter) are compared with the memory
    available: refused with the figures and the fix, before the data or the model is built; a machine with the
    memory goes on, and the other presets are not probed."""
    import zoo.precision
    import zoo.train
    from zoo.train import check_memory, train

    monkeypatch.setattr(zoo.precision, "available_memory", lambda: have * 2**30)  # 24: this project's machines
    cfg = train_cfg(f"model={model}", "model.preset=paper", "trainer=cpu", "trainer.max_steps=1")
    built = []
    monkeypatch.setattr(zoo.train, "fit_tiny_to_data", lambda *a: built.append(a))
    with pytest.raises(
        ConfigError, match=rf"model.preset=paper: {params} parameters need at least {gib} GiB .*{have}.0 GiB"
    ):
        train(cfg)
    assert not built and not (Path(cfg.paths.output_dir) / "checkpoints").exists()
    check_memory(cfg, available=2**50)  # a machine with the memory
    probed = []
    monkeypatch.setattr(zoo.train, "instantiate", lambda *a, **k: probed.append(a))
    check_memory(train_cfg(f"model={model}", "model.preset=tiny"), available=1)
    assert not probed


def test_a_logger_that_cannot_be_built_names_its_group(train_cfg):
    """logger=tensorboard without the tensorboard package (or any logger / callback whose module is missing) said
    "fix: choose another tensorboard option of its config group": the entry's name, not the group (logger=) a
    command line chooses."""
    from zoo.train import _instantiate_dict

    cfg = train_cfg("logger=csv", "logger.csv._target_=not_installed.CSVLogger")
    with pytest.raises(
        ConfigError, match=r"(?s)^cannot build logger\.csv 'not_installed.CSVLogger'.*another logger= option"
    ):
        _instantiate_dict(cfg.logger)


def test_tokenizer_larger_than_model_vocab_is_refused():
    """The vocabulary check is the model's own (DalleLit.check_data), run by check_compatibility; the fix it names
    is a real override (model.net.text_vocab)."""
    from zoo.models.dalle.lit import DalleLit

    class Tok:  # CLIP's BPE sizes; only the vocabulary is larger than the model's
        vocab_size = 49408
        context_length = 8  # the tiny preset's text_len
        pad_id = 0

    class Data:
        tokenizer = Tok()

    with pytest.raises(ConfigError, match=r"model\.net\.text_vocab=49408"):
        check_compatibility(DalleLit(preset="tiny", net={"text_vocab": 16384}), Data())


def test_coco_missing_root_names_the_option(train_cfg, tmp_path):
    cfg = train_cfg("data=coco", f"data.root={tmp_path / 'nowhere'}")
    with pytest.raises(ConfigError, match="data.root"):
        instantiate(cfg.data)


EXPERIMENTS = sorted(
    str(p.relative_to(CONF / "experiment").with_suffix("")) for p in (CONF / "experiment").rglob("*.yaml")
)


def _shapes_tokenizer_ckpt(path: Path, resolution: int = 32) -> Path:
    """A zoo-train-format VQ-VAE checkpoint of the ``shapes`` preset (random weights): the frozen stage-1 tokenizer
    that the DALL·E experiments expect under logs/demo/tokenizer, trained at ``resolution`` (the DALL·E experiment's
    own: make demo's stage 1 at 32 px, make demo FULL=1's at 48 px; another is refused)."""
    import torch

    from zoo.checkpoint import atomic_torch_save
    from zoo.models.vqvae.lit import VQVAELit

    torch.manual_seed(0)
    lit = VQVAELit(preset="shapes")
    atomic_torch_save(
        {
            "zoo_class": "zoo.models.vqvae.lit.VQVAELit",
            "hyper_parameters": {"preset": "shapes", "net": {}},
            "state_dict": lit.state_dict(),
            "zoo_config": {"data": {"resolution": resolution}},
        },
        path,
    )
    return path


def mix_files(cfg) -> list[tuple[str, str]]:
    return [(k, str(v)) for k, v in cfg.data.synthetic_captions.items()]


# decoders that train with make demo's CLIP (absent here): image embeddings from files instead. demo/decoder has no
# CLIP path of its own (make demo passes it); the others default to make demo's, so it is cleared.
CLIP_DECODERS = (
    "demo/decoder",
    "leaderboard/decoder",
    "unclip/decoder_long_v",
    "unclip/decoder_min_snr",
    "unclip/decoder_clip_text",
)


def _experiment_extras(experiment: str, tmp_path: Path, train_cfg) -> list[str]:
    """Overrides standing in for the stage-1 runs an experiment builds on (absent here)."""
    if experiment.startswith(
        ("dalle1/", "demo/dalle", "demo/full/dalle", "dalle3/t2i/")
    ):  # builds on a stage-1 checkpoint; check its grid/vocab against a real one
        res = train_cfg(f"experiment={experiment}").data.resolution
        return [f"model.image_tokenizer_ckpt={_shapes_tokenizer_ckpt(tmp_path / 'tokenizer.ckpt', res)}"]
    if experiment in CLIP_DECODERS and experiment != "demo/decoder":
        return ["model.clip_ckpt=null"]
    return []


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds(train_cfg, experiment, tmp_path, dalle_helpers):
    extra = _experiment_extras(experiment, tmp_path, train_cfg)
    clip_decoders = CLIP_DECODERS
    cfg = train_cfg(f"experiment={experiment}", "data.train_size=8", "data.val_size=8", "data.test_size=8", *extra)
    OmegaConf.to_container(cfg, resolve=True)
    net = instantiate(cfg.model)
    if (experiment.startswith(("unclip/", "leaderboard/")) and "prior" in experiment) or experiment == "demo/prior":
        # priors train from zoo-embed files of its width
        c = net.cfg
        dim = getattr(c, "clip_dim", None) or getattr(c, "embed_dim")
        feats = _synthetic_embed_file(tmp_path / "features.pt", 8, dim, c.text_len)
        for split in ("train", "val", "test"):
            cfg.data.features[split] = str(feats)
    if experiment in clip_decoders:  # zoo-embed-format image embeddings
        feats = _synthetic_embed_file(tmp_path / "features.pt", 8, net.cfg.clip_dim, 16)
        for split in ("train", "val", "test"):
            cfg.data.features[split] = str(feats)
    if experiment == "unclip/decoder_long_v":  # leaderboard/decoder with v-prediction and a longer budget
        assert net.process.model_mean_type == "v" and cfg.callbacks.time_budget.minutes == 60
    if experiment == "demo/tokenizer":  # a short-budget VQ-VAE re-seeds codes unused for 20 steps (not ~349)
        (vq,) = [m for m in net.modules() if isinstance(m, VectorQuantizer)]
        assert vq.fresh_usage * vq.decay**20 < vq.dead_threshold < vq.fresh_usage * vq.decay**19
    if experiment == "glide/coords":  # the leaderboard GLIDE plus pixel coordinates, for its 1,190 steps
        (unet,) = [m for m in net.modules() if isinstance(m, UNet)]
        assert unet.cfg.coord_channels and unet.input_blocks[0][0].in_channels == 5
        assert cfg.trainer.max_steps == 1190 and cfg.callbacks.get("time_budget") is None
        assert net.process.model_mean_type == "v"
    if experiment.endswith("min_snr"):  # the leaderboard's GLIDE / decoder with only the loss weights changed
        assert net.process.snr_gamma == 5.0 and net.process.model_mean_type == "v"
        assert cfg.callbacks.time_budget.minutes == 15
    if experiment.startswith("clip/binding"):  # make demo's CLIP, 800 fixed steps, with attribute-exchange negatives
        assert cfg.model.hard_negatives == {"groups": "binding", "exchange": True}
        assert cfg.trainer.max_steps == 800 and cfg.callbacks.get("time_budget") is None
        assert cfg.model.preset == "shapes_rn"
        assert cfg.data.object_order == ("shuffled" if experiment.endswith("_shuffled") else "raster")
    if experiment.endswith(("clip_text", "clip_text_binding", "clip_text_binding_shuffled")):  # GLIDE / the unCLIP
        # decoder around a frozen CLIP text tower: make demo's (the leaderboard rows' step counts), or clip/binding's
        # (clip/binding_shuffled's for captions in a random object order) for 6,000 steps
        shuffled, binding = experiment.endswith("_shuffled"), "_binding" in experiment
        steps = {"unclip/decoder_clip_text": 1317}.get(experiment, 6000 if binding else 1190)
        tower = "clip/rn_binding800_shuffled" if shuffled else "clip/rn_binding800" if binding else "demo/clip"
        assert cfg.data.object_order == ("shuffled" if shuffled else "raster")
        assert cfg.model.freeze_text and cfg.trainer.max_steps == steps and net.process.model_mean_type == "v"
        assert str(cfg.model.text_init).endswith(f"{tower}/checkpoints/last.ckpt")
        # make demo's CLIP is absent here: a random CLIP with its text tower (the ViT preset has the same one)
        cfg.model.text_init = str(dalle_helpers.tiny_clip_ckpt(tmp_path / "clip.ckpt", preset="shapes"))
        net = instantiate(cfg.model)
        check_compatibility(net, instantiate(cfg.data))  # copies the tower: shapes, tokenizer and pooling agree
        assert not any(p.requires_grad for p in net.net.text.parameters())
        return
    if experiment == "unclip/upsampler_shapes_128_512":  # the second stage: BSR, 512 px, 15 DDIM steps, residual v
        assert net.cfg.image_size == 512 and net.cfg.scale == 4 and net.cfg.train_crop == 128
        assert net.cfg.corruption == "bsr" and net.sample_steps == 15 and net.residual
        assert net.process.model_mean_type == "v" and cfg.data.resolution == 512
        assert cfg.callbacks.time_budget.minutes == 15 and cfg.trainer.max_time is None
    elif experiment.startswith("unclip/upsampler_"):  # the first stage: 10 minutes each, differing in corruption
        assert cfg.callbacks.time_budget._target_ == "zoo.callbacks.TimeBudget"
        assert cfg.callbacks.time_budget.minutes == 10 and cfg.trainer.max_time is None
        assert net.cfg.image_size == 128 and net.cfg.scale == 4 and net.sample_steps == 27
        assert net.cfg.corruption == ("bsr" if experiment.endswith("_bsr") else "blur")
    if experiment == "dalle3/prompt_upsampler":  # trains on zoo-recaption files (absent here)
        with pytest.raises(ConfigError, match="synthetic captions file not found"):
            check_compatibility(net, instantiate(cfg.data))
        return
    if experiment.startswith(("dalle3/t2i/", "dalle3/glide/")):  # DALL·E 3's caption blends: one run per blend,
        row = experiment.rsplit("/", 1)[1]  # equal steps; the DALL·E 1 column and the GLIDE column
        assert cfg.callbacks.get("time_budget") is None and cfg.data.bpe_fit_styles == "all"
        if experiment.startswith("dalle3/t2i/"):
            assert cfg.trainer.max_steps == 400 and cfg.model.net.n_layers == 6
        else:  # the leaderboard GLIDE's network and parameterisation
            assert cfg.trainer.max_steps == 800 and net.process.model_mean_type == "v"
            assert cfg.model.text_dropout == 0.2 and cfg.model.net.width == 32
        mix = cfg.data.caption_mix
        if row == "alt":
            assert mix is None and cfg.data.caption_style == "alt"
        else:
            style = {"short": "synthetic_short", "desc": "synthetic_descriptive", "oracle": "descriptive"}
            share = int(row.lstrip("abcdefghijklmnopqrstuvwxyz")) / 100
            want = style[row.rstrip("0123456789")]
            assert set(mix) == {want, "alt"} and mix[want] == pytest.approx(share)
            assert mix["alt"] == pytest.approx(1 - share)
            assert bool(cfg.data.synthetic_captions) == want.startswith("synthetic_")
        if cfg.data.synthetic_captions:  # zoo-recaption files of the train split: checked before training starts
            assert all(str(p).endswith(f"recaptions/dalle3/shapes_train_{k}.pt") for k, p in mix_files(cfg))
            for style in cfg.data.synthetic_captions:  # (a checkout may have the real ones: point at a missing file)
                cfg.data.synthetic_captions[style] = str(tmp_path / "missing.pt")
            with pytest.raises(ConfigError, match="synthetic captions file not found"):
                instantiate(cfg.data).dataset("train")  # what setup("fit") builds before the first step
            return
        check_compatibility(net, instantiate(cfg.data))
        return
    if experiment.startswith("dalle3/"):  # the captioner reads zoo-embed image embeddings of its CLIP width
        feats = _synthetic_embed_file(tmp_path / "features.pt", 8, net.cfg.embed_dim, 16)
        for split in ("train", "val", "test"):
            cfg.data.features[split] = str(feats)
        if cfg.model.get("init_from"):  # a fine-tune: its source checkpoint (the alt run) does not exist here
            with pytest.raises(ConfigError, match="init_from"):
                check_compatibility(net, instantiate(cfg.data))
            return
    check_compatibility(net, instantiate(cfg.data))


# experiments whose inputs are another run's outputs that do not exist here: refused with that fix, whatever the preset
NEEDS_ANOTHER_RUN = {
    "dalle3/captioner_descriptive": "init_from",
    "dalle3/captioner_short": "init_from",
    "dalle3/prompt_upsampler": "synthetic captions file not found",
}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_builds_with_the_tiny_preset(train_cfg, experiment, tmp_path, dalle_helpers):
    """The README promises a ``tiny`` preset for fast CPU runs of every component: ``zoo-train experiment=<e>
    model.preset=tiny`` keeps the experiment's data (its resolution, text tokenizer, zoo-embed files of make demo's
    CLIP width, stage-1 tokenizer) and takes the sizes that data dictates (fit_tiny_to_data), with a tiny network
    otherwise. Before, 44 of the 61 experiments stopped on a text length / vocabulary / resolution / CLIP width
    mismatch. The data files here are of the experiment's own (shapes) widths, as make demo writes them."""
    extra = _experiment_extras(experiment, tmp_path, train_cfg)
    sizes = ("data.train_size=8", "data.val_size=8", "data.test_size=8")
    if experiment.endswith(("clip_text", "clip_text_binding", "clip_text_binding_shuffled")):  # make demo's CLIP
        extra.append(f"model.text_init={dalle_helpers.tiny_clip_ckpt(tmp_path / 'clip.ckpt', preset='shapes')}")
    full = instantiate(train_cfg(f"experiment={experiment}", *sizes, *extra).model)  # the experiment's own network
    c = getattr(full, "cfg", None)
    feats = None
    if (experiment.startswith(("unclip/", "leaderboard/")) and "prior" in experiment) or experiment == "demo/prior":
        feats = _synthetic_embed_file(tmp_path / "f.pt", 8, getattr(c, "clip_dim", None) or c.embed_dim, c.text_len)
    elif experiment in CLIP_DECODERS:
        feats = _synthetic_embed_file(tmp_path / "f.pt", 8, c.clip_dim, 16)
    elif experiment.startswith("dalle3/captioner"):
        feats = _synthetic_embed_file(tmp_path / "f.pt", 8, c.embed_dim, 16)
    cfg = train_cfg(f"experiment={experiment}", "model.preset=tiny", *sizes, *extra)
    for split in ("train", "val", "test") if feats else ():
        cfg.data.features[split] = str(feats)
    dm = instantiate(cfg.data)
    net = fit_tiny_to_data(instantiate(cfg.model), dm)
    if experiment in NEEDS_ANOTHER_RUN:
        with pytest.raises(ConfigError, match=NEEDS_ANOTHER_RUN[experiment]):
            check_compatibility(net, dm)
        return
    check_compatibility(net, dm)
    assert net.hparams.preset == "tiny"
    n_tiny, n_full = (sum(p.numel() for p in m.parameters()) for m in (net, full))
    assert n_tiny <= n_full
    if getattr(net, "cfg", None) is not None:  # every size not in model.net is the tiny preset's (width, depth);
        # the data's sizes are in model.net: the hyper-parameters a checkpoint of the run rebuilds the network from
        tiny = importlib.import_module(type(net).__module__.rsplit(".", 1)[0] + ".model").PRESETS["tiny"]
        given = dict(net.hparams.net or {})
        assert net.data_sizes(dm) == {}  # nothing of the data left unmet
        for f in dataclasses.fields(net.cfg):
            if type(getattr(tiny, f.name)) is int:
                assert getattr(net.cfg, f.name) == given.get(f.name, getattr(tiny, f.name)), f.name


def test_tiny_preset_keeps_explicit_net_fields_and_loads_from_its_checkpoint(train_cfg, tmp_path):
    """fit_tiny_to_data writes the data's sizes into the module's ``net`` hyper-parameters (a checkpoint of the
    tiny run rebuilds the same shapes) and leaves a field the user set in model.net alone (check_data then names
    the mismatch and its fix)."""
    from zoo.models.glide.lit import GlideLit

    base = ("experiment=glide/train_shapes", "data.train_size=8", "data.val_size=8", "data.test_size=8")
    cfg = train_cfg(*base, "model.preset=tiny")
    dm = instantiate(cfg.data)
    net = fit_tiny_to_data(instantiate(cfg.model), dm)
    assert (net.cfg.image_size, net.cfg.text_len, net.cfg.width) == (32, 48, 8)  # the data's sizes, tiny's width
    # attention at the same levels as tiny's own (16, 8) at 16 px: (32, 16) at 32 px. Before, (16, 8) was kept and
    # 8 px is none of the two levels' resolutions, so that attention (4 of tiny's 6 blocks' worth) was dropped
    assert net.cfg.attention_resolutions == (32, 16) and net.hparams.net["attention_resolutions"] == [32, 16]
    tiny16 = GlideLit(preset="tiny")
    assert len(list(net.net.unet.attention_blocks())) == len(list(tiny16.net.unet.attention_blocks())) > 0
    again = GlideLit(**net.hparams)  # what load_from_checkpoint does with the saved hyper-parameters
    assert again.load_state_dict(net.state_dict()) is not None
    cfg = train_cfg(*base, "model.preset=tiny", "+model.net.text_len=32")
    net = fit_tiny_to_data(instantiate(cfg.model), dm)
    with pytest.raises(ConfigError, match=r"model\.net\.text_len=48"):
        check_compatibility(net, dm)


@pytest.mark.parametrize(
    "name",
    [f"{m}blend_{p}" for m in ("", "glide_") for p in ("descriptive", "short", "short_upsampled")],
)
def test_dalle3_blend_eval_experiments_sweep_every_row(tmp_path, name):
    """zoo-eval -m experiment=dalle3/<name>: one job per trained caption-blend row (conf/experiment/dalle3/t2i for the
    DALL·E 1 column, dalle3/glide for GLIDE's), each reading that row's checkpoint, on the prompts of its style, with
    the upsampler only where the name says so."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from tests.conftest import compose_cfg  # registered by pytest under this name (importlib mode)

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="conf.eval", version_base="1.3"):
        raw = compose("eval", overrides=[f"experiment=dalle3/{name}"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    (override,) = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in raw.hydra.sweeper.params.items()])
    rows = list(override.sweep_iterator())
    column = "glide" if name.startswith("glide_") else "t2i"
    trained = sorted(p.stem for p in (CONF / "experiment" / "dalle3" / column).glob("*.yaml"))
    assert override.key_or_group == "row" and sorted(rows) == trained
    for row in ("alt", "desc95"):
        cfg = compose_cfg(tmp_path, [f"experiment=dalle3/{name}", f"row={row}"], module="conf.eval", name="eval")
        OmegaConf.to_container(cfg, resolve=True)
        logs = tmp_path / "logs"
        if column == "glide":  # sampled as the leaderboard GLIDE is
            assert cfg.generator.glide_ckpt == str(logs / f"dalle3/glide/{row}/checkpoints/last.ckpt")
            assert cfg.generator.guidance_scale == 3 and cfg.generator.sampler == "ddpm"
        else:
            assert cfg.generator.dalle_ckpt == str(logs / f"dalle3/t2i/{row}/checkpoints/last.ckpt")
        assert cfg.protocol.caption_style == ("descriptive" if name.endswith("blend_descriptive") else "short")
        assert cfg.protocol.n == 256 and cfg.blur.candidates == 1 and "attribute_accuracy" in cfg.metrics
        upsampler = cfg.generator.prompt_upsampler
        assert (upsampler is not None) == name.endswith("_upsampled")
        assert cfg.clip.checkpoint == str(logs / "dalle3/clip/last.ckpt")


UNCLIP_EVAL = {  # conf/eval/experiment/unclip/<name>: (the swept key, its values, the generator)
    "prior_ablation": ("generator.prior", ["none", "text_emb", "diffusion"], "unclip"),
    "ar_vs_diffusion": ("prior_run", ["leaderboard/prior", "leaderboard/ar_prior"], "unclip"),
    "decoder_guidance": ("generator.decoder_guidance_scale", [1, 1.25, 2, 3, 5], "unclip"),
    "glide_guidance": ("generator.guidance_scale", [1, 1.25, 2, 3, 5], "glide"),
}


@pytest.mark.parametrize("name", sorted(UNCLIP_EVAL))
def test_unclip_eval_experiments_compose_and_sweep(tmp_path, name):
    """zoo-eval -m experiment=unclip/<name> runs the whole table: its hydra.sweeper.params expand (as Hydra's
    BasicSweeper does) to one job per row, each composing to the shapes protocol at 32 px with 256 captions, the
    radius-0 blur row + diversity, and make demo's checkpoints (they need not exist to compose)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from tests.conftest import compose_cfg  # registered by pytest under this name (importlib mode)

    assert (CONF / "eval" / "experiment" / "unclip" / f"{name}.yaml").is_file()
    key, values, generator = UNCLIP_EVAL[name]
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="conf.eval", version_base="1.3"):
        raw = compose("eval", overrides=[f"experiment=unclip/{name}"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    params = dict(raw.hydra.sweeper.params)
    assert list(params) == [key]
    (override,) = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    assert override.is_sweep_override() and list(override.sweep_iterator()) == values
    # the sweep dir is the log dir's eval/unclip/<name>, and it resolves before any job has started (Hydra's runtime
    # config is not set then: paths.root_dir must not use ${hydra:runtime.cwd}; zoo/__init__.py's zoo.cwd resolver)
    sweep = OmegaConf.to_container(raw.hydra.sweep, resolve=False)
    assert sweep["dir"] == f"${{paths.log_dir}}/eval/unclip/{name}"
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().cfg = None  # as when the sweeper resolves the sweep dir (an earlier test may have set it)
    log_dir = os.environ.get("ZOO_LOG_DIR") or str(Path(os.environ.get("ZOO_ROOT") or os.getcwd()) / "logs")
    assert OmegaConf.select(raw, "hydra.sweep.dir") == f"{log_dir}/eval/unclip/{name}"
    assert sweep["subdir"] == "${hydra.job.num}"  # numbered job dirs: what eval.leaderboard reads as one multirun

    for value in values:
        cfg = compose_cfg(tmp_path, [f"experiment=unclip/{name}", f"{key}={value}"], module="conf.eval", name="eval")
        OmegaConf.to_container(cfg, resolve=True)
        logs = tmp_path / "logs"
        assert cfg.protocol._target_ == "eval.shapes_protocol.ShapesProtocol"
        assert cfg.protocol.n == 256 and cfg.protocol.resolution == 32
        assert list(cfg.ablations) == ["blur", "diversity"] and list(cfg.blur.radii) == [0]
        assert cfg.clip.checkpoint == str(logs / "demo/clip/checkpoints/last.ckpt")
        assert OmegaConf.select(cfg, key) == value
        g = cfg.generator
        if generator == "glide":
            assert g._target_ == "zoo.pipelines.glide.GlidePipeline.from_checkpoints"
            assert g.glide_ckpt == str(logs / "leaderboard/glide/checkpoints/last.ckpt") and g.steps == 25
            continue
        assert g._target_ == "zoo.pipelines.unclip.UnclipPipeline.from_checkpoints"
        assert g.decoder_ckpt == str(logs / "leaderboard/decoder/checkpoints/last.ckpt")
        assert g.clip_ckpt == str(logs / "demo/clip/checkpoints/last.ckpt") and g.decoder_steps == 25
        prior = value if name == "ar_vs_diffusion" else "leaderboard/prior"
        assert g.prior_ckpt == str(logs / prior / "checkpoints/last.ckpt")
        if name in ("prior_ablation", "ar_vs_diffusion"):
            assert g.decoder_guidance_scale == 1.25  # the paper's FID setting


def test_a_failed_run_writes_its_reason_to_the_run_log(tmp_path, capsys):
    """A run that stops on a user error or a crash leaves its Hydra run directory; its job log (a file handler on
    the root logger) now ends with the reason, which was only on the terminal. The console is not written twice."""
    import io
    import logging

    from zoo.config import report_user_errors

    root = logging.getLogger()
    file_handler = logging.FileHandler(tmp_path / "train.log")
    console = io.StringIO()
    stream_handler = logging.StreamHandler(console)
    root.addHandler(file_handler)
    root.addHandler(stream_handler)

    def bad_config(_cfg):
        raise ConfigError("model.net.bogus is not a field (fix: drop it)")

    def crash(_cfg):
        raise RuntimeError("out of memory in the 3rd step")

    try:
        with pytest.raises(SystemExit) as exit_info:
            report_user_errors(bad_config)(None)
        with pytest.raises(RuntimeError):
            report_user_errors(crash)(None)
    finally:
        root.removeHandler(file_handler)
        root.removeHandler(stream_handler)
        file_handler.close()
    assert exit_info.value.code == 2
    text = (tmp_path / "train.log").read_text()
    assert "error: model.net.bogus is not a field (fix: drop it)" in text
    assert "failed: RuntimeError: out of memory in the 3rd step" in text
    assert "Traceback" in text and "in crash" in text  # a crash's traceback is kept for the post-mortem
    assert console.getvalue() == ""  # the terminal got the printed message (and Hydra's traceback) only once
    assert "model.net.bogus" in capsys.readouterr().err


def test_wandb_run_names_tell_a_sweeps_jobs_apart(train_cfg, tmp_path):
    """Every job of a -m sweep logged a W&B run named just ${task_name} (one list of identical names in W&B for a
    learning-rate sweep); job n of a sweep is now <task_name>-job<n>, a single run keeps <task_name>."""
    from tests.conftest import compose_cfg

    single = train_cfg("logger=wandb", "task_name=lr_sweep")
    assert OmegaConf.to_container(single.logger.wandb, resolve=True)["name"] == "lr_sweep"
    job = train_cfg("logger=wandb", "task_name=lr_sweep", "hydra.mode=MULTIRUN", "hydra.job.num=3")
    assert OmegaConf.to_container(job.logger.wandb, resolve=True)["name"] == "lr_sweep-job3"
    ev = compose_cfg(
        tmp_path, ["task_name=g", "hydra.mode=MULTIRUN", "hydra.job.num=1"], module="conf.eval", name="eval"
    )
    assert OmegaConf.to_container(ev.logger.wandb, resolve=True)["name"] == "g-job1"
