"""One rule and one wording for the number options: every converted option gets the same bad values through the
function or constructor that checks it, and each must be a ConfigError "<option>=<value> must be ... (fix:
<option>=...)". Before zoo.errors.check_whole / check_number, the copies disagreed: inf passed as a progress interval
and as a gradient clip, Hydra's string "0.1" was a TypeError for model.net.dropout, eval.prior took seed=2.5 for 2, and
the same mistake was worded "is not a step count", "must be an integer" or "must be a whole number" by option."""

import math
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from zoo.errors import ConfigError, check_number, check_whole, shown

INF, NAN = math.inf, math.nan
TRAINER = "lightning.pytorch.Trainer"
NOT_WHOLE = [2.5, 2.0, True, "3", INF, NAN]  # 2.0 too: zoo.kinds refuses it for an int field, so do the counts


def counts(least=None):
    """The values no count >= ``least`` may take."""
    return NOT_WHOLE + ([least - 1] if least is not None else [])


def numbers(low, high=None, low_open=False, high_open=False):
    """The values no number in the range may take: the kinds, and each end just outside."""
    bad = [True, "0.5", INF, -INF, NAN, low if low_open else low - 1]
    return bad + ([high if high_open else high + 1] if high is not None else [])


def _callbacks():
    from zoo.callbacks.ema import EMA
    from zoo.callbacks.progress import LogProgress
    from zoo.callbacks.sample_grid import SampleGridCallback
    from zoo.callbacks.time_budget import TimeBudget

    cb = "callbacks."
    return [
        (cb + "sample_grid.n_samples", lambda v: SampleGridCallback(n_samples=v), counts(1)),
        (cb + "sample_grid.every_n_epochs", lambda v: SampleGridCallback(every_n_epochs=v), counts(1)),
        (cb + "log_progress.every_n_steps", lambda v: LogProgress(every_n_steps=v), counts(1)),
        (cb + "log_progress.every_seconds", lambda v: LogProgress(every_seconds=v), numbers(0, low_open=True)),
        (cb + "time_budget.minutes", lambda v: TimeBudget(minutes=v), numbers(0, low_open=True)),
        (cb + "time_budget.calibrate_steps", lambda v: TimeBudget(1, calibrate_steps=v), counts(1)),
        (cb + "time_budget.warmup_steps", lambda v: TimeBudget(1, warmup_steps=v), counts(0)),
        (cb + "time_budget.min_steps", lambda v: TimeBudget(1, min_steps=v), counts(0)),
        (cb + "time_budget.reserve", lambda v: TimeBudget(1, reserve=v), numbers(0, 1, high_open=True)),
        (cb + "time_budget.hard_stop", lambda v: TimeBudget(1, hard_stop=v), numbers(1)),
        (cb + "time_budget.tail_fraction", lambda v: TimeBudget(1, tail_fraction=v), numbers(0, 1, True, True)),
        (cb + "ema.decay", lambda v: EMA(decay=v), numbers(0, 1, high_open=True)),
        (cb + "ema.update_every_n_steps", lambda v: EMA(update_every_n_steps=v), counts(1)),
        (cb + "ema.update_starting_at_step", lambda v: EMA(update_starting_at_step=v), counts(0)),
    ]


def _train():
    from zoo.config import check_types
    from zoo.train import check_run_options, check_trainer_counts

    def trainer(key):
        return lambda v: check_trainer_counts({key: v})

    return [
        ("trainer.accumulate_grad_batches", trainer("accumulate_grad_batches"), counts(1)),
        ("trainer.max_steps", trainer("max_steps"), counts(-1)),
        ("trainer.max_epochs", trainer("max_epochs"), counts(-1)),
        ("trainer.log_every_n_steps", trainer("log_every_n_steps"), counts(0)),
        ("trainer.check_val_every_n_epoch", trainer("check_val_every_n_epoch"), counts(1)),
        ("trainer.num_sanity_val_steps", trainer("num_sanity_val_steps"), counts(-1)),
        ("trainer.gradient_clip_val", trainer("gradient_clip_val"), numbers(0)),
        ("seed", lambda v: check_run_options(OmegaConf.create({"seed": v})), counts()),
        ("compile", lambda v: check_run_options(OmegaConf.create({"compile": v})), ["fast", "true", 1, 0]),
        # a node against its target's annotations (zoo.config.check_types, zoo.kinds' words): int | None
        (
            "trainer.max_epochs",
            lambda v: check_types(OmegaConf.create({"_target_": TRAINER, "max_epochs": v}), "trainer"),
            NOT_WHOLE,
        ),
    ]


def _models():
    from zoo.errors import check_rate
    from zoo.models.dalle.model import PRESETS, DalleTransformerConfig
    from zoo.models.glide.lit import check_grid_captions
    from zoo.models.presets import check_dropout, resolve_preset

    return [
        ("model.grid_captions", check_grid_captions, counts(1)),
        ("model.text_dropout", lambda v: check_rate("model.text_dropout", v, "0.2"), numbers(0, 1, high_open=True)),
        ("model.net.dropout", lambda v: check_dropout(SimpleNamespace(dropout=v)), numbers(0, 1, high_open=True)),
        # a model.net override against its field's annotation (zoo.kinds, through zoo.models.presets)
        (
            "model.net.n_layers",
            lambda v: resolve_preset(PRESETS, DalleTransformerConfig, "tiny", {"n_layers": v}),
            NOT_WHOLE,
        ),
    ]


def _pipelines(tmp_path):
    from zoo.pipelines.dalle import DallePipeline
    from zoo.pipelines.unclip import check_options

    def dalle(key):  # checked before the (missing) checkpoint is opened
        return lambda v: DallePipeline.from_checkpoints(str(tmp_path / "missing.ckpt"), **{key: v})

    def unclip(key):
        return lambda v: check_options(0, {key: v})

    return [
        ("generator.n_candidates", dalle("n_candidates"), counts(1)),
        ("generator.batch_size", dalle("batch_size"), counts(1)),
        ("generator.n_keep", unclip("n_keep"), counts(1)),
        ("generator.invert_refine", unclip("invert_refine"), counts(0)),
    ]


def _commands():
    from zoo.feature_rows import split_and_batch_size
    from zoo.sample import check_counts
    from zoo.serve import check_ui

    def sample(key):
        return lambda v: check_counts(OmegaConf.create({"n_keep": 8, "nrow": 4, "grid_scale": 1, "seed": 0, key: v}))

    return [
        ("n_keep", sample("n_keep"), counts(1)),
        ("nrow", sample("nrow"), counts(1)),
        ("grid_scale", sample("grid_scale"), counts(1)),
        ("seed", sample("seed"), counts()),
        ("progress", sample("progress"), ["no", "true", 1, 0]),  # a word was bool()'s true
        ("ui.max_keep", lambda v: check_ui({"max_keep": v}), counts(1) + [65537]),
        ("ui.max_guidance", lambda v: check_ui({"max_guidance": v}), numbers(0.1)),
        (
            "batch_size",
            lambda v: split_and_batch_size(OmegaConf.create({"split": "val", "batch_size": v}), 256),
            counts(1),
        ),
    ]


def _priors():
    from zoo.models.ar_prior.lit import ARPriorLit
    from zoo.models.diffusion_prior.lit import DiffusionPriorLit

    return [
        ("model.n_candidates", lambda v: DiffusionPriorLit(preset="tiny", n_candidates=v), counts(1)),
        ("model.val_sample_batches", lambda v: DiffusionPriorLit(preset="tiny", val_sample_batches=v), counts(0)),
        ("model.embed_scale", lambda v: DiffusionPriorLit(preset="tiny", embed_scale=v), numbers(0, low_open=True)),
        (
            "model.text_dropout",
            lambda v: DiffusionPriorLit(preset="tiny", text_dropout=v),
            numbers(0, 1, high_open=True),
        ),
        ("model.dot_quantile", lambda v: ARPriorLit(preset="tiny", dot_quantile=v), numbers(0, 1, high_open=True)),
    ]


def _data(tmp_path):
    from zoo.data.modules import CocoDataModule, ShapesDataModule, WebDataModule

    def shapes(key):
        return lambda v: ShapesDataModule(**{"train_size": 8, "val_size": 4, "test_size": 4, key: v})

    return [
        ("data.train_size", shapes("train_size"), counts(1)),
        ("data.world_seed", shapes("world_seed"), counts(0)),
        ("data.resolution", shapes("resolution"), counts(1)),
        ("data.batch_size", shapes("batch_size"), counts(1)),
        ("data.eval_batch_size", shapes("eval_batch_size"), counts(1)),
        ("data.num_workers", shapes("num_workers"), counts(0)),
        ("data.seed", shapes("seed"), counts()),
        ("data.max_items", lambda v: CocoDataModule(root=str(tmp_path), max_items=v), counts(1)),
        ("data.shuffle_buffer", lambda v: WebDataModule(train_urls="x.tar", shuffle_buffer=v), counts(0)),
        ("data.epoch_length", lambda v: WebDataModule(train_urls="x.tar", epoch_length=v), counts(0)),
    ]


def _eval(tmp_path):
    import eval.zeroshot as Z
    from eval.captions import evaluate
    from eval.prior import prior_report

    def captions(key):
        missing = {"ckpt": str(tmp_path / "missing.ckpt"), "features": str(tmp_path / "missing.pt")}
        return lambda v: evaluate({**missing, key: v})

    def prior(*keys):
        def run(v):
            cfg = OmegaConf.load("conf/eval/prior.yaml")
            cfg.features, cfg.out = str(tmp_path / "missing.pt"), str(tmp_path / "out")
            OmegaConf.update(cfg, ".".join(keys), v)
            prior_report(cfg)

        return run

    def zeroshot(key):
        return lambda v: Z.check_options({**Z.DEFAULTS, key: v})

    return [
        ("n", captions("n"), counts(1)),
        ("batch_size", captions("batch_size"), counts(1)),
        ("samples", captions("samples"), counts(1)),
        ("examples", captions("examples"), counts(0)),
        ("seed", captions("seed"), counts()),
        ("batch_size", prior("batch_size"), counts(1)),
        ("seed", prior("seed"), counts()),
        ("n", prior("n"), counts(1)),
        ("threads", prior("threads"), counts(1)),
        ("diffusion.steps", prior("diffusion", "steps"), counts(1)),
        ("diffusion.n_candidates", prior("diffusion", "n_candidates"), counts(1)),
        ("n", zeroshot("n"), counts(1)),
        ("n_train", zeroshot("n_train"), counts(2)[:-1]),  # 1 is refused too, 0 means no probe
        ("probe_epochs", zeroshot("probe_epochs"), counts(1)),
        ("seed", zeroshot("seed"), counts(0)),
        ("world_seed", zeroshot("world_seed"), counts(0)),
    ]


def _sampling():
    from zoo.diffusion.process import GaussianDiffusion
    from zoo.diffusion.samplers import check_eta, check_sampling_knobs
    from zoo.diffusion.schedules import get_schedule
    from zoo.nn.sampling import check_sampling

    def tokens(key):
        return lambda v: check_sampling(**{key: v}, prefix="generator.")

    def knob(key):
        return lambda v: check_sampling_knobs(1000, {key: v})

    return [
        ("generator.temperature", tokens("temperature"), numbers(0)),
        ("generator.top_k", tokens("top_k"), counts(0)),  # 2.0 passed, then torch.topk refused it at the first token
        ("generator.top_p", tokens("top_p"), numbers(0, 1, low_open=True)),
        ("generator.steps", knob("generator.steps"), counts(1) + [1001]),
        ("generator.eta", knob("generator.eta"), numbers(0)),
        ("generator.guidance_scale", knob("generator.guidance_scale"), numbers(0)),
        ("generator.clip_guidance_scale", knob("generator.clip_guidance_scale"), numbers(0)),
        ("eta", check_eta, numbers(0)),  # float() took "0.5" and true
        # float() took "5" and true (gamma 1); the process is built on a schedule of its own
        ("snr_gamma", lambda v: GaussianDiffusion(get_schedule("cosine", 10), snr_gamma=v), numbers(0, low_open=True)),
        ("model.num_timesteps", lambda v: get_schedule("cosine", v), counts(1)),
    ]


def _components(tmp_path):
    import yaml
    from torch.onnx import _constants as opsets

    from zoo.convert import training_resolution
    from zoo.export import check_batches, check_onnx_options, check_opset
    from zoo.models.captioner.lit import CaptionerLit, check_decoding, decoding_options, item_generators
    from zoo.models.clip.lit import ClipLit
    from zoo.models.unclip_decoder.lit import UnclipDecoderLit
    from zoo.models.upsampler.lit import UpsamplerLit

    module = SimpleNamespace(
        decoding="beam", beam_width=4, length_penalty=1.0, top_p=0.9, temperature=1.0, cfg=SimpleNamespace(text_len=8)
    )

    def decoding(key):
        return lambda v: decoding_options(
            module,
            None,
            **{"beam_width": None, "length_penalty": None, "top_p": None, "temperature": None, "max_len": None, key: v},
        )

    def negatives(key):
        return lambda v: ClipLit(preset="tiny", hard_negatives={"groups": "binding", key: v})

    up, decoder = UpsamplerLit(preset="tiny"), UnclipDecoderLit(preset="tiny")
    captioner = CaptionerLit(preset="tiny")
    image_emb = torch.zeros(1, captioner.cfg.embed_dim)
    low, emb = torch.zeros(1, 3, 8, 8), torch.zeros(1, decoder.cfg.clip_dim)
    dd = {"double_z": False, "z_channels": 4, "resolution": 16, "in_channels": 3, "out_ch": 3, "ch": 8}
    dd.update(ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0)
    taming = tmp_path / "model.yaml"
    taming.write_text(yaml.safe_dump({"model": {"params": {"embed_dim": 6, "n_embed": 24, "ddconfig": dd}}}))

    def resolution(**cfg):
        return lambda v: training_resolution(OmegaConf.create({**cfg, "resolution": v}), "taming_vq")

    return [
        ("model.beam_width", lambda v: check_decoding("beam", v, 0.9), counts(1)),  # inf: int()'s OverflowError
        ("beam_width", decoding("beam_width"), counts(1)),
        ("top_p", decoding("top_p"), numbers(0, 1, low_open=True)),
        ("temperature", decoding("temperature"), numbers(0)),
        ("length_penalty", decoding("length_penalty"), [True, "1.0", INF, -INF, NAN]),
        ("max_len", decoding("max_len"), counts(1)),
        # caption_tokens' own: top_k=-3 was read as no filter, 2.5 as 2; int() ran seed=2.5 as 2
        ("top_k", lambda v: captioner.caption_tokens(image_emb, method="nucleus", max_len=2, top_k=v), counts(0)),
        ("seed", lambda v: captioner.caption_tokens(image_emb, method="nucleus", max_len=2, seed=v), NOT_WHOLE),
        ("seed", lambda v: item_generators(v, [0], "cpu"), NOT_WHOLE),  # caption() and upsample(): a row's stream
        ("model.hard_negatives.seed", negatives("seed"), NOT_WHOLE),
        ("model.hard_negatives.exchange", negatives("exchange"), ["no", "true", 1, 0]),
        ("model.grid_images", lambda v: UpsamplerLit(preset="tiny", grid_images=v), counts(1)),
        ("model.snr_gamma", lambda v: UpsamplerLit(preset="tiny", snr_gamma=v), ["5", True, INF, NAN, 0]),
        ("model.sample_tile", lambda v: up.resolve_tile(v, None), counts(1)[:-1] + [False, -8]),  # false: whole image
        ("model.sample_tile_overlap", lambda v: up.resolve_tile("train_crop", v), counts(0)),
        # sampling arguments given from Python: int() ran steps=2.5 as 2, float() took eta='0.5' and true
        ("steps", lambda v: up.upsample(low, steps=v), counts(1) + [1001]),
        ("eta", lambda v: up.upsample(low, eta=v), numbers(0)),
        ("steps", lambda v: decoder.sample(None, emb, steps=v), counts(1) + [1001]),
        ("eta", lambda v: decoder.sample(None, emb, eta=v), numbers(0)),
        ("opset", check_opset, counts(opsets.ONNX_MIN_OPSET) + [opsets.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET + 1]),
        ("export_batch", lambda v: check_batches(v, 3), counts(1)),
        ("check_batch", lambda v: check_batches(2, v), counts(1)),
        ("onnx", lambda v: check_onnx_options(v, None), ["no", "true", 1, 0]),
        ("resolution", resolution(), counts(1)),
        # beside a taming_config stating 16 px, int(16.5) == 16 was taken
        ("resolution", resolution(taming_config=str(taming)), counts(1) + [16.5, 16.0]),
    ]


@pytest.mark.parametrize(
    "table",
    [
        lambda _: _callbacks(),
        lambda _: _train(),
        lambda _: _models(),
        _eval,
        _pipelines,
        lambda _: _commands(),
        lambda _: _priors(),
        _data,
        lambda _: _sampling(),
        _components,
    ],
    ids=["callbacks", "train", "models", "eval", "pipelines", "commands", "priors", "data", "sampling", "components"],
)
def test_every_option_refuses_the_same_bad_values_in_the_same_words(tmp_path, table):
    """Each option, each bad value: a ConfigError that names the option with the value as typed and the fix."""
    wrong = []
    for option, call, bad in table(tmp_path):
        for value in bad:
            try:
                call(value)
            except ConfigError as e:
                said = str(e)
                if f"{option}={shown(value)} must be " not in said or f"(fix: {option}=" not in said:
                    wrong.append(f"{option}={shown(value)}: worded {said!r}")
            except Exception as e:  # noqa: BLE001 - any other error is what the table is here to catch
                wrong.append(f"{option}={shown(value)}: {type(e).__name__}: {e}")
            else:
                wrong.append(f"{option}={shown(value)}: taken")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    "check, value",
    [
        (lambda v: check_whole("k", v, 1), 1),
        (lambda v: check_whole("k", v, 0, most=3), 3),
        (lambda v: check_whole("k", v), -7),
        (lambda v: check_whole("k", v, 1, none_ok=True), None),
        (lambda v: check_number("k", v, 0, 1, high_open=True, fix=0.5), 0.0),
        (lambda v: check_number("k", v, 0, low_open=True, fix=1), 10**400),  # an int of any size, no overflow
        (lambda v: check_number("k", v, fix=1, none_ok=True), None),
    ],
)
def test_good_values_pass_unchanged(check, value):
    assert check(value) == value


def test_the_wording_names_bounds_null_and_the_fix():
    with pytest.raises(ConfigError, match=r"^k=2\.5 must be a whole number >= 1 or null: rows \(fix: k=null\)$"):
        check_whole("k", 2.5, 1, "null", none_ok=True, why="rows")
    with pytest.raises(ConfigError, match=r"^k='3' must be a whole number from 1 to 9 \(fix: k=1\)$"):
        check_whole("k", "3", 1, most=9)
    with pytest.raises(ConfigError, match=r"^k=true must be a number in \[0, 1\) \(fix: k=0\.1\)$"):
        check_number("k", True, 0, 1, high_open=True, fix=0.1)
    with pytest.raises(ConfigError, match=r"^k=inf must be a number > 0 \(fix: k=30\)$"):
        check_number("k", INF, 0, low_open=True, fix=30)
    problems: list[str] = []
    assert (
        check_whole("a", -1, 0, problems=problems) is None and check_number("b", NAN, fix=0, problems=problems) is None
    )
    assert problems == ["a=-1 must be a whole number >= 0 (fix: a=0)", "b=nan must be a finite number (fix: b=0)"]
