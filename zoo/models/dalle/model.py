"""DALL·E 1 stage 2, the pieces around the transformer (plain PyTorch, no Lightning).

The network itself lives in ``zoo.nn.transformer`` (``DalleTransformer``, config dataclass and the presets
``tiny`` / ``shapes`` / ``paper``); this file adds what a self-contained checkpoint needs:

- ``build_config(preset, net)``: preset + overrides with errors that name the valid choices.
- ``image_tokenizer_spec`` / ``image_tokenizer_from_spec``: rebuild the frozen image tokenizer (dVAE / VQ-VAE)
  from plain values (its registered component name + hyper-parameters + resolution); its weights travel in the
  DALL·E state dict, so no tokenizer file is needed at sampling time.
- ``text_tokenizer_spec`` / ``text_tokenizer_from_spec``: the text tokenizer as plain values (the trained BPE's
  ``tokenizer.json`` string, or the CLIP BPE's context length).

Parameter count of ``paper`` (measured in tests/models/test_dalle.py on the meta device): 12,292,808,448
(the paper quotes "12 billion").
"""
from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, Optional

import torch

from zoo.nn.image_tokenizer import find_image_tokenizer
from zoo.nn.transformer import PRESETS, DalleTransformer, DalleTransformerConfig

PAPER_PARAMS = 12_292_808_448  # measured: sum(p.numel()) of DalleTransformer(PRESETS["paper"]) on the meta device

__all__ = ["PRESETS", "DalleTransformer", "DalleTransformerConfig", "build_config", "image_tokenizer_spec",
           "image_tokenizer_from_spec", "text_tokenizer_spec", "text_tokenizer_from_spec", "PAPER_PARAMS"]


def build_config(preset: str, net: Optional[dict[str, Any]] = None) -> DalleTransformerConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown DALL·E preset {preset!r}; choose one of {sorted(PRESETS)} (model.preset=...)")
    net = dict(net or {})
    valid = {f.name for f in fields(DalleTransformerConfig)}
    unknown = set(net) - valid
    if unknown:
        raise ValueError(f"unknown DALL·E transformer field(s) {sorted(unknown)} in model.net; valid: {sorted(valid)}")
    return replace(PRESETS[preset], **net)


# ------------------------------------------------------------------------------------------ image tokenizer
def image_tokenizer_spec(ckpt: dict[str, Any], resolution: Optional[int] = None) -> dict[str, Any]:
    """Plain-value description of the tokenizer inside a zoo-train checkpoint dict (loaded weights_only): its
    registered component name (``dvae`` / ``vqvae``), hyper-parameters and resolution."""
    from zoo.registry import IMAGE_TOKENIZERS, checked_hparams, component_in

    name = component_in(ckpt, "the image tokenizer checkpoint")
    if name not in IMAGE_TOKENIZERS:
        from zoo.errors import ConfigError

        raise ConfigError(f"the image tokenizer checkpoint holds a {name} model, not an image tokenizer "
                         f"({' or '.join(IMAGE_TOKENIZERS)}) (fix: model.tokenizer_ckpt=<dvae/vqvae last.ckpt>)")
    hp = checked_hparams(name, ckpt.get("hyper_parameters", {}), "the image tokenizer checkpoint")
    return {"component": name, "hyper_parameters": hp, "resolution": resolution}


def image_tokenizer_from_spec(spec: dict[str, Any], state_dict: Optional[dict[str, torch.Tensor]] = None):
    """Build the ``ImageTokenizer`` described by ``spec`` (random weights unless ``state_dict``: the LightningModule's
    state dict). The class comes from the component registry by name (a spec from a file never names code); specs
    written before the registry (``zoo_class``) are read through the registry's table of known class paths."""
    from zoo.registry import IMAGE_TOKENIZERS, check_plain, checked_hparams, component_class, component_in

    check_plain(spec, "image tokenizer spec")
    name = spec.get("component") or component_in({"zoo_class": spec.get("zoo_class")}, "image tokenizer spec")
    if name not in IMAGE_TOKENIZERS:
        from zoo.registry import UnsafeCheckpointError

        raise UnsafeCheckpointError(f"image tokenizer spec names {name!r}; only {IMAGE_TOKENIZERS} are image "
                                    f"tokenizers")
    lit = component_class(name)(**checked_hparams(name, spec.get("hyper_parameters", {}), "image tokenizer spec"))
    if state_dict is not None:
        lit.load_state_dict(state_dict)
    tok = find_image_tokenizer(lit)
    if spec.get("resolution"):
        tok.resolution = int(spec["resolution"])
    return tok


# ------------------------------------------------------------------------------------------- text tokenizer
def text_tokenizer_spec(tok) -> Optional[dict[str, Any]]:
    """Plain values that rebuild ``tok`` (a zoo ``TextTokenizer``) without its files, or None if unknown."""
    from zoo.text import ClipBPETokenizer, LazyTrainedBPE, TrainedBPETokenizer

    if tok is None:
        return None
    if isinstance(tok, LazyTrainedBPE):
        tok = tok._require()
    if isinstance(tok, TrainedBPETokenizer):
        return {"kind": "trained_bpe", "json": tok._tok.to_str(), "context_length": int(tok.context_length)}
    if isinstance(tok, ClipBPETokenizer):
        return {"kind": "clip_bpe", "context_length": int(tok.context_length)}
    return None


def text_tokenizer_from_spec(spec: Optional[dict[str, Any]]):
    if not spec:
        return None
    from zoo.text import ClipBPETokenizer, TrainedBPETokenizer

    if spec["kind"] == "clip_bpe":
        return ClipBPETokenizer(context_length=spec["context_length"])
    if spec["kind"] == "trained_bpe":
        from tokenizers import Tokenizer

        tok = TrainedBPETokenizer.__new__(TrainedBPETokenizer)
        tok._setup(Tokenizer.from_str(spec["json"]), None, spec["context_length"])
        return tok
    raise ValueError(f"unknown text tokenizer kind {spec['kind']!r}")
