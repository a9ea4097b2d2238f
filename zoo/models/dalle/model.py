"""DALL·E 1 stage 2, the pieces around the transformer (plain PyTorch, no Lightning).

The network itself lives in ``zoo.nn.transformer`` (``DalleTransformer``, config dataclass and the presets
``tiny`` / ``shapes`` / ``paper``); this file adds what a self-contained checkpoint needs:

- ``build_config(preset, net)``: preset + overrides with errors that name the valid choices.
- ``image_tokenizer_spec`` / ``image_tokenizer_from_spec``: rebuild the frozen image tokenizer (dVAE / VQ-VAE)
  from plain values (its LightningModule class path + hyper-parameters + resolution); its weights travel in the
  DALL·E state dict, so no tokenizer file is needed at sampling time.
- ``text_tokenizer_spec`` / ``text_tokenizer_from_spec``: the text tokenizer as plain values (the trained BPE's
  ``tokenizer.json`` string, or the CLIP BPE's context length).

Parameter count of ``paper`` (measured in tests/models/test_dalle.py on the meta device): 12,292,808,448
(the paper quotes "12 billion").
"""
from __future__ import annotations

import importlib
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
    """Plain-value description of the tokenizer inside a zoo-train checkpoint dict (loaded weights_only)."""
    name = ckpt.get("zoo_class") if isinstance(ckpt, dict) else None
    if not name or not name.startswith("zoo."):
        raise ValueError("the tokenizer checkpoint was not written by zoo-train (no zoo_class stamp)")
    return {"zoo_class": name, "hyper_parameters": dict(ckpt.get("hyper_parameters", {})),
            "resolution": resolution}


def image_tokenizer_from_spec(spec: dict[str, Any], state_dict: Optional[dict[str, torch.Tensor]] = None):
    """Build the ``ImageTokenizer`` described by ``spec`` (random weights unless ``state_dict``: the LightningModule's
    state dict). Only classes inside the ``zoo`` package are imported."""
    name = spec["zoo_class"]
    if not name.startswith("zoo."):
        raise ValueError(f"refusing to import {name!r}: tokenizer classes must live in the zoo package")
    module_name, cls_name = name.rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), cls_name)
    lit = cls(**spec.get("hyper_parameters", {}))
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
