"""Shared builders for the DALL·E tests (no tests here; tests get this module from the ``dalle_helpers`` fixture in
tests/conftest.py): a tiny frozen VQ-VAE checkpoint, a tiny BPE, a tiny CLIP checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

# tiny transformer that fits a real BPE (>= 260 tokens) and a tiny VQ-VAE (16 px -> 4x4 grid of 32 codes)
TINY_NET = {"text_vocab": 512, "text_len": 16, "image_vocab": 32}
TINY_TOKENIZER_NET = {"codebook_size": 32, "n_down": 2}
RESOLUTION = 16


def tiny_tokenizer_ckpt(path: Path, seed: int = 0) -> Path:
    """A zoo-train-like VQ-VAE checkpoint (random weights; what matters is that it is frozen and travels)."""
    from zoo.checkpoint import atomic_torch_save
    from zoo.models.vqvae.lit import VQVAELit

    torch.manual_seed(seed)
    lit = VQVAELit(preset="tiny", net=dict(TINY_TOKENIZER_NET))
    atomic_torch_save(
        {
            "zoo_class": "zoo.models.vqvae.lit.VQVAELit",
            "hyper_parameters": {"preset": "tiny", "net": dict(TINY_TOKENIZER_NET)},
            "state_dict": lit.state_dict(),
            "zoo_config": {"data": {"resolution": RESOLUTION}},
        },
        path,
    )
    return path


def tiny_bpe(path: Path | None = None, context_length: int = 16):
    from zoo.text import TrainedBPETokenizer

    words = [
        "a large red circle at the top left",
        "a small blue square at the bottom right",
        "two objects on a white background",
        "a green triangle in the middle center",
        "a yellow star, small",
    ]
    return TrainedBPETokenizer.train(words * 20, vocab_size=300, path=path, context_length=context_length)


def tiny_clip_ckpt(path: Path, seed: int = 0, preset: str = "tiny") -> Path:
    """A zoo-train-like CLIP checkpoint of the ``tiny`` preset, or of ``preset`` (random weights)."""
    from zoo.checkpoint import atomic_torch_save
    from zoo.models.clip.lit import ClipLit

    torch.manual_seed(seed)
    lit = ClipLit(preset=preset)
    hp = {
        "preset": preset,
        "arch": None,
        "net": None,
        "pretrained": None,
        "checkpoint": None,
        "cache_dir": None,
        "load_weights": False,
    }
    atomic_torch_save(
        {"zoo_class": "zoo.models.clip.lit.ClipLit", "hyper_parameters": hp, "state_dict": lit.state_dict()}, path
    )
    return path
