"""A checkpoint's own sample grid on validation data: what ``zoo-sample ckpt=<file>`` writes for components that are
not text-to-image generators (the image tokenizers: input | reconstruction pairs) and for any component when no
prompts are given (the grid its training run logs, e.g. DALL·E samples for validation captions)."""

from __future__ import annotations

import torch

from zoo.errors import ConfigError


@torch.no_grad()
def checkpoint_sample_grid(ckpt: str, seed: int = 0) -> tuple[torch.Tensor, int]:
    """(images in [-1, 1], images per grid row): ``sample_grid`` of the checkpoint's model on one validation batch.

    Weights: the EMA average when the checkpoint has one that has started, else the trained weights
    (``zoo.checkpoint.load_module``'s ``ema``: a checkpoint saved before the EMA's first update holds the INITIAL
    weights as its average, and its grid was noise). The images come from the data the model was trained on. That config is read from the checkpoint, so it is data:
    rebuilt through the DataModule registry (plain values, no Hydra instantiate). Torch's RNG is seeded with
    ``seed`` once the model is built (building it draws random initial weights)."""
    from zoo.checkpoint import load_module
    from zoo.registry import datamodule_from_file_config

    model = load_module(
        ckpt, ema=True
    )  # the EMA when it has started, else the trained weights (never the initial ones)
    torch.manual_seed(int(seed))
    if not callable(getattr(model, "sample_grid", None)):
        raise ConfigError(f"{type(model).__name__} cannot sample (no generate() or sample_grid())")
    data_cfg = (getattr(model, "zoo_config", None) or {}).get("data") or {}
    if "_target_" not in data_cfg:
        raise ConfigError(f"{ckpt} carries no data config; cannot pick images to reconstruct")
    dm = datamodule_from_file_config(data_cfg, str(ckpt))
    batch = next(iter(dm.val_dataloader()))
    tok = getattr(model, "text_tokenizer", None)
    if "text_tokens" not in batch and "caption" in batch and tok is not None:
        # the data's tokenizer node is not rebuilt from the file (a _target_ node); the model's own is the same one
        batch["text_tokens"] = tok.encode(list(batch["caption"]))
    return model.sample_grid(batch), int(getattr(model, "grid_nrow", 8))
