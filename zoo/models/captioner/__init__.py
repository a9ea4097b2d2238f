"""DALL·E 3's image captioner: CLIP image features as a prefix of a causal LM over caption BPE tokens; greedy, beam
and nucleus decoding (KV-cached)."""

from zoo.models.captioner.model import PRESETS, Captioner, CaptionerConfig, beam_search, build_config, sample_captions

__all__ = ["PRESETS", "Captioner", "CaptionerConfig", "beam_search", "build_config", "sample_captions"]
