"""DALL·E 3's prompt upsampling, small: a causal LM that rewrites a short prompt into a descriptive caption (the short
prompt's tokens are the prefix, as the captioner's CLIP embedding is); nucleus sampling expands one prompt into
several plausible scenes."""

from zoo.models.prompt_upsampler.model import PRESETS, PromptUpsampler, PromptUpsamplerConfig, build_config

__all__ = ["PRESETS", "PromptUpsampler", "PromptUpsamplerConfig", "build_config"]
