"""CLIP networks from open_clip (plain PyTorch, no Lightning).

Small configs for small images live in ``configs/*.json`` beside this file and are registered with open_clip at
import, so ``open_clip.create_model("zoo-clip-shapes")`` works like any built-in architecture.
Weights come from (in order): ``checkpoint`` — a local open_clip file or a Lightning checkpoint trained here — or
``pretrained`` — an open_clip tag, downloaded where there is internet and otherwise read from open_clip's cache.
Offline without the file, one ``MissingWeightsError`` names the option and the file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import open_clip
import torch

from zoo.errors import MissingWeightsError

CONFIG_DIR = Path(__file__).parent / "configs"
open_clip.add_model_config(CONFIG_DIR)

PRESETS = {"tiny": "zoo-clip-tiny", "shapes": "zoo-clip-shapes", "paper": "ViT-H-14"}


def arch_for(preset: Optional[str], arch: Optional[str]) -> str:
    if arch:
        if arch not in open_clip.list_models():
            raise ValueError(f"unknown open_clip architecture {arch!r} (model.arch=...); e.g. {sorted(PRESETS.values())}")
        return arch
    if preset not in PRESETS:
        raise ValueError(f"unknown CLIP preset {preset!r}; choose one of {sorted(PRESETS)} (model.preset=...)")
    return PRESETS[preset]


def clip_state_dict(obj: dict) -> dict:
    """open_clip weights from a raw state dict, an open_clip checkpoint ({"state_dict": ...}) or a Lightning
    checkpoint of ``ClipLit`` (keys prefixed ``clip.``)."""
    sd = obj.get("state_dict", obj)
    if any(k.startswith("clip.") for k in sd):
        sd = {k[len("clip."):]: v for k, v in sd.items() if k.startswith("clip.")}
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def create_clip(arch: str, pretrained: Optional[str] = None, checkpoint: Optional[str] = None,
                cache_dir: Optional[str] = None, **overrides) -> torch.nn.Module:
    """Build ``arch`` (random init), then load ``checkpoint`` (local file) or the ``pretrained`` tag."""
    from zoo.checkpoint import safe_load

    model = open_clip.create_model(arch, pretrained=None, **overrides)
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise MissingWeightsError(f"CLIP checkpoint not found: {path} (option: model.checkpoint=/path/to/file)")
        missing, unexpected = model.load_state_dict(clip_state_dict(safe_load(path)), strict=False)
        if missing:
            raise ValueError(f"{path} does not fit architecture {arch!r}: missing {missing[:5]}... (model.arch=...)")
    elif pretrained:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("ZOO_OFFLINE") == "1"
        try:
            if offline:
                os.environ["HF_HUB_OFFLINE"] = "1"
            model = open_clip.create_model(arch, pretrained=pretrained, cache_dir=cache_dir, **overrides)
        except Exception as e:  # no internet and nothing cached: say exactly what is missing and how to give it
            cfg = open_clip.get_pretrained_cfg(arch, pretrained) or {}
            source = cfg.get("hf_hub") or cfg.get("url") or "open_clip's pretrained registry"
            raise MissingWeightsError(
                f"pretrained CLIP weights {arch}/{pretrained} are not available offline ({type(e).__name__}: "
                f"{str(e)[:200]}). Expected them in open_clip's cache "
                f"({cache_dir or os.environ.get('HF_HOME', '~/.cache/huggingface')}) from {source}. "
                f"Fix: download once where there is internet and pass the file with model.checkpoint=/path/to/"
                f"open_clip_pytorch_model.bin (or .safetensors / .pt)"
            ) from None
    return model


def preprocess_cfg(model: torch.nn.Module) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(image_size, mean, std) the visual tower expects."""
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    mean = getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
    std = getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
    return int(size), tuple(mean), tuple(std)
