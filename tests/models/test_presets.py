"""zoo.models.presets: every model's model.net.<field> overrides are checked against the field's kind in one place
(resolve_preset; CLIP's open_clip keys in clip_config), and every preset of every model builds (tiny / shapes on the
CPU, the paper sizes on the meta device)."""

from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch

from zoo.errors import ConfigError
from zoo.models.presets import resolve_preset

# model folder -> its network class (the config dataclass is the type of its PRESETS' values)
NETS = {
    "dvae": "DVAE",
    "vqvae": "VQVAE",
    "vqgan": "TamingVQGAN",
    "dalle": "DalleTransformer",
    "captioner": "Captioner",
    "prompt_upsampler": "PromptUpsampler",
    "glide": "Glide",
    "unclip_decoder": "UnclipDecoder",
    "upsampler": "Upsampler",
    "diffusion_prior": "DiffusionPriorNet",
    "ar_prior": "ARPrior",
    "noised_clip": "NoisedClip",
}
PRESETS = [(m, name) for m in NETS for name in importlib.import_module(f"zoo.models.{m}.model").PRESETS]


@pytest.mark.parametrize("model, preset", PRESETS, ids=[f"{m}-{p}" for m, p in PRESETS])
def test_every_preset_of_every_model_builds_and_passes_its_own_kind_check(model, preset):
    """A preset given back field by field as model.net overrides resolves to itself (its values are of their fields'
    kinds, so the check resolve_preset makes never refuses a preset's own value), and its network builds: the paper
    sizes on the meta device."""
    mod = importlib.import_module(f"zoo.models.{model}.model")
    cfg = mod.PRESETS[preset]
    cls = type(cfg)
    net = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)}
    net = {k: list(v) if isinstance(v, tuple) else v for k, v in net.items()}  # as a YAML / Hydra override gives it
    assert resolve_preset(mod.PRESETS, cls, preset, net) == cfg
    with torch.device("meta" if "paper" in preset or "imagenet" in preset or "gumbel" in preset else "cpu"):
        network = getattr(mod, NETS[model])(cfg)
    assert sum(p.numel() for p in network.parameters()) > 0


@pytest.mark.parametrize(
    "lit_path, net, field",
    [
        ("zoo.models.dvae.lit.DVAELit", {"n_hid": "abc"}, "n_hid"),  # was TypeError: '<' not supported
        ("zoo.models.dvae.lit.DVAELit", {"width_mults": [1, 2.5, 4, 8]}, "width_mults"),  # torch's empty()
        ("zoo.models.vqvae.lit.VQVAELit", {"ema": "no"}, "ema"),  # was truthy: EMA codebook on
        ("zoo.models.vqvae.lit.VQVAELit", {"restart_after": 2.5}, "restart_after"),  # was taken
        ("zoo.models.vqgan.lit.TamingVQGANLit", {"resamp_with_conv": "no"}, "resamp_with_conv"),  # was truthy
        ("zoo.models.vqgan.lit.TamingVQGANLit", {"n_embed": 32.0}, "n_embed"),  # torch's empty()
        ("zoo.models.dalle.lit.DalleLit", {"n_layers": 2.5}, "n_layers"),  # range()'s TypeError
        ("zoo.models.dalle.lit.DalleLit", {"text_loss_on_pad": "no"}, "text_loss_on_pad"),  # was truthy
        ("zoo.models.dalle.lit.DalleLit", {"conv_kernel": 3.0}, "conv_kernel"),  # was taken
        ("zoo.models.dalle.lit.DalleLit", {"pattern": 3}, "pattern"),  # 'int' is not iterable
        ("zoo.models.captioner.lit.CaptionerLit", {"prefix_emb_norm": "no"}, "prefix_emb_norm"),  # was truthy
        ("zoo.models.captioner.lit.CaptionerLit", {"text_len": 63.5}, "text_len"),  # torch's empty()
        ("zoo.models.prompt_upsampler.lit.PromptUpsamplerLit", {"prompt_len": 24.5}, "prompt_len"),
        ("zoo.models.prompt_upsampler.lit.PromptUpsamplerLit", {"dim": True}, "dim"),
        ("zoo.models.clip.lit.ClipLit", {"embed_dim": 8.5}, "embed_dim"),  # torch's randn()
        ("zoo.models.clip.lit.ClipLit", {"vision_cfg": {"width": True}}, "vision_cfg.width"),
        ("zoo.models.clip.lit.ClipLit", {"text_cfg": {"layers": 2.5}}, "text_cfg.layers"),
    ],
)
def test_a_network_field_of_the_wrong_kind_is_refused_when_built(lit_path, net, field):
    """model.net.<field> overrides reach the config as Hydra wrote them; resolve_preset (clip_config for CLIP) checks
    them against the field's annotation before the config's own checks or torch see them, and names a fix."""
    module, name = lit_path.rsplit(".", 1)
    lit = getattr(importlib.import_module(module), name)
    with pytest.raises(ConfigError, match=rf"model\.net\.{field}=.+ must be .*\(fix: model\.net\.{field}="):
        lit(preset="tiny", net=net)


def test_every_wrong_field_is_named_at_once_with_the_preset_value_as_the_fix():
    from zoo.models.dalle.model import PRESETS as DALLE
    from zoo.models.dalle.model import DalleTransformerConfig

    with pytest.raises(ConfigError) as e:
        resolve_preset(DALLE, DalleTransformerConfig, "tiny", {"n_layers": 2.5, "dropout": "0.1", "dim": 128})
    msg = str(e.value)
    assert msg.startswith("2 mismatches")
    assert "model.net.n_layers=2.5 must be a whole number (fix: model.net.n_layers=4" in msg  # tiny's
    assert "model.net.dropout='0.1' must be a number" in msg


def test_optional_and_literal_fields_take_their_kinds():
    from zoo.models.presets import check_field_values
    from zoo.models.vqgan.model import TamingVQGANConfig
    from zoo.models.vqvae.model import VQVAEConfig

    check_field_values(VQVAEConfig, {"restart_after": None, "decay": 1, "beta": 0.5})  # int for a float: fine
    with pytest.raises(ConfigError, match="restart_after='20' must be a whole number or null"):
        check_field_values(VQVAEConfig, {"restart_after": "20"})
    check_field_values(TamingVQGANConfig, {"quantizer": "gumbel"})
    with pytest.raises(ConfigError, match="quantizer='gumble' must be one of vq, gumbel"):
        check_field_values(TamingVQGANConfig, {"quantizer": "gumble"})


def test_every_clip_preset_is_of_open_clips_kinds_and_builds_on_meta():
    from zoo.models.clip.model import PRESETS as CLIP
    from zoo.models.clip.model import check_override_kinds, count_parameters, model_config

    for cfg in CLIP.values():
        check_override_kinds({}, model_config(cfg))  # the architecture JSONs themselves, plus the overrides
        assert count_parameters(cfg) > 0


def test_both_priors_paper_presets_read_the_paper_clips_caption_tokens():
    """unCLIP feeds both priors from one CLIP: the paper presets' text_len is ViT-H-14's context (77). The AR prior's
    was Table 3's 256 (the paper's own caption tokenizer), which left 179 of its positions always pad."""
    from zoo.models.ar_prior.model import PRESETS as AR
    from zoo.models.clip.model import PRESETS as CLIP
    from zoo.models.clip.model import model_config
    from zoo.models.diffusion_prior.model import PRESETS as DP

    context = model_config(CLIP["paper"])["text_cfg"]["context_length"]
    assert AR["paper"].text_len == DP["paper"].text_len == context == 77
    assert AR["paper"].embed_dim == DP["paper"].clip_dim == model_config(CLIP["paper"])["embed_dim"]


@pytest.mark.parametrize(
    "model, net, match",
    [
        ("dalle", {"n_layers": 0}, r"model\.net\.n_layers must be at least 1"),  # trained a block-less model
        ("dalle", {"n_heads": 0}, r"model\.net\.n_heads must be at least 1"),  # trained without attention
        ("dalle", {"grid_h": 0}, r"model\.net\.grid_h must be at least 1"),  # ZeroDivisionError in the first step
        ("dalle", {"dropout": 1.0}, r"model\.net\.dropout=1\.0 must be a number in \[0, 1\)"),
        ("dalle", {"pattern": "rows"}, r"model\.net\.pattern='rows': unknown layer pattern"),  # a bare ValueError
        ("dalle", {"attn_impl": "sparse"}, r"model\.net\.attn_impl='sparse'; choose one of"),
        ("captioner", {"n_heads": 0}, r"model\.net\.n_heads must be at least 1"),
        ("captioner", {"n_prefix": 0}, r"n_prefix=0 and no patch tokens .* image embedding would reach no position"),
        ("captioner", {"text_len": 1}, r"model\.net\.text_len must be at least 2"),
        ("prompt_upsampler", {"prompt_len": 0}, r"model\.net\.prompt_len must be at least 2"),  # prompt never read
        ("prompt_upsampler", {"dim": 0}, r"model\.net\.dim must be at least 1"),
        ("diffusion_prior", {"n_layers": 0}, r"model\.net\.n_layers must be at least 1"),
        ("diffusion_prior", {"dim": 0}, r"model\.net\.dim must be at least 1"),
        ("diffusion_prior", {"text_len": 0}, r"model\.net\.text_len must be at least 1"),  # no caption read
        ("ar_prior", {"n_heads": 0}, r"model\.net\.n_heads must be at least 1"),
        ("ar_prior", {"n_buckets": 1}, r"model\.net\.n_buckets must be at least 2"),  # every embedding one code
        ("ar_prior", {"dropout": 1.0}, r"model\.net\.dropout=1\.0 must be a number in \[0, 1\)"),
        ("glide", {"width": 0}, r"model\.net\.width must be at least 1"),  # a bare ZeroDivisionError
        ("glide", {"text_len": 0}, r"model\.net\.text_len must be at least 1"),
        ("unclip_decoder", {"dropout": 1.0}, r"model\.net\.dropout=1\.0 must be a number in \[0, 1\)"),
        ("upsampler", {"width": 0}, r"model\.net\.width must be at least 1"),  # a 3-parameter U-Net trained
        ("noised_clip", {"channel_mult": [1, 0]}, r"model\.net\.channel_mult=\[1, 0\] needs at least one level"),
        ("vqgan", {"n_embed": 1}, r"model\.net\.n_embed must be at least 2"),  # trained a one-code tokenizer
        ("vqgan", {"ch": 0}, r"model\.net\.ch must be at least 1"),  # conv error in the first step
        ("vqgan", {"num_res_blocks": 0}, r"model\.net\.num_res_blocks must be at least 1"),
        ("vqgan", {"ch_mult": [1, 0, 2]}, r"model\.net\.ch_mult=\[1, 0, 2\]: every level's multiplier"),
    ],
)
def test_a_size_that_builds_a_network_without_blocks_heads_or_condition_is_refused(model, net, match):
    """These built and trained without a word (no transformer blocks, no attention, a zero-width stream, a captioner
    / prompt upsampler that never reads its image embedding / prompt, a one-code VQGAN) or failed in the first step."""
    mod = importlib.import_module(f"zoo.models.{model}.model")
    cls = type(mod.PRESETS["tiny"])
    with pytest.raises(ConfigError, match=match):
        resolve_preset(mod.PRESETS, cls, "tiny", net)
    # patch tokens alone condition the captioner: n_prefix=0 is fine with them
    if model == "captioner" and "n_prefix" in net:
        resolve_preset(mod.PRESETS, cls, "tiny", {**net, "patch_dim": 16, "n_patches": 4})
