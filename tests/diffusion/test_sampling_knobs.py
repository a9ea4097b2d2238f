"""Sampling knobs of the image diffusion models and pipelines are checked where they are given, with a ConfigError
naming the config key: before, an unknown sampler name or a step count out of range failed mid-sampling with a
bare ValueError and a traceback (zoo-sample generator.sampler=dpmpp, generator.steps=0), model.grid_steps=0 trained
and then crashed at the first validation's sample grid, and a negative eta or guidance scale was silently taken."""

from __future__ import annotations

import pytest

from zoo.diffusion.samplers import check_sampling_knobs, sampler_known
from zoo.errors import ConfigError


def test_known_samplers():
    for name in ("ddim", "ddpm", "dpm++", "unipc", "euler", "DPMSolverMultistepScheduler", "LMSDiscreteScheduler"):
        assert sampler_known(name), name
    for name in ("dpmpp", "DDIM", "", "ConfigMixin"):
        assert not sampler_known(name), name


def test_good_knobs_pass():
    check_sampling_knobs(
        1000, {"generator.steps": 1, "generator.sampler": "dpm++", "generator.eta": 0, "generator.guidance_scale": 0.0}
    )
    check_sampling_knobs(1000, {"generator.steps": None, "generator.sampler": None, "model.grid_steps": 1000})


@pytest.mark.parametrize(
    "key, value, match",
    [
        (
            "generator.steps",
            0,
            r"^generator\.steps=0 must be a whole number from 1 to 1000: .*\(fix: generator\.steps=50\)$",
        ),
        ("generator.steps", -3, r"generator\.steps=-3 must be"),
        ("model.grid_steps", 2000, r"model\.grid_steps=2000 must be"),
        ("generator.steps", 2.5, r"generator\.steps=2\.5 must be"),
        ("generator.sampler", "dpmpp", r"generator.sampler='dpmpp' is not a sampler.*dpm\+\+.*fix: generator.sampler"),
        (
            "generator.eta",
            -1.0,
            r"generator\.eta=-1\.0 must be a number >= 0: the DDIM eta .*\(fix: generator\.eta=0\)",
        ),
        ("generator.guidance_scale", -2, r"generator\.guidance_scale=-2 must be a number >= 0: the guidance scale"),
        ("generator.guidance_scale", float("nan"), r"generator\.guidance_scale=nan must be"),
    ],
)
def test_bad_knob_names_its_key(key, value, match):
    with pytest.raises(ConfigError, match=match):
        check_sampling_knobs(1000, {key: value})


def test_glide_model_knobs_fail_at_construction():
    from zoo.models.glide.lit import GlideLit

    with pytest.raises(ConfigError, match="model.grid_steps"):
        GlideLit(preset="tiny", grid_steps=0)
    with pytest.raises(ConfigError, match="model.sampler='bogus'"):
        GlideLit(preset="tiny", sampler="bogus")


def test_unclip_decoder_model_knobs_fail_at_construction():
    from zoo.models.unclip_decoder.lit import UnclipDecoderLit

    with pytest.raises(ConfigError, match="model.sample_steps"):
        UnclipDecoderLit(preset="tiny", sample_steps=-1)


def test_glide_pipeline_knobs_fail_before_sampling():
    from zoo.models.glide.lit import GlideLit
    from zoo.pipelines.glide import GlidePipeline

    glide = GlideLit(preset="tiny")
    with pytest.raises(ConfigError, match="generator.sampler='dpmpp'"):
        GlidePipeline(glide, sampler="dpmpp")
    with pytest.raises(ConfigError, match="generator.steps"):
        GlidePipeline(glide, steps=0)
    GlidePipeline(glide, sampler="unipc", steps=3, guidance_scale=0.0)  # fine


def test_unclip_pipeline_knobs_fail_before_sampling():
    from zoo.models.unclip_decoder.lit import UnclipDecoderLit
    from zoo.pipelines.unclip import UnclipPipeline

    decoder = UnclipDecoderLit(preset="tiny")
    with pytest.raises(ConfigError, match="generator.decoder_steps"):
        UnclipPipeline(decoder, None, prior="none", decoder_steps=0)
    with pytest.raises(ConfigError, match="generator.decoder_sampler='dpmpp'"):
        UnclipPipeline(decoder, None, prior="none", decoder_sampler="dpmpp")
    with pytest.raises(ConfigError, match="generator.decoder_guidance_scale"):
        UnclipPipeline(decoder, None, prior="none", decoder_guidance_scale=-1)
