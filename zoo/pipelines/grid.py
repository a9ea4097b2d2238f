"""A checkpoint's own sample grid on validation data: what ``zoo-sample ckpt=<file>`` writes for components that are
not text-to-image generators (the image tokenizers: input | reconstruction pairs) and for any component when no
prompts are given (the grid its training run logs, e.g. DALL·E samples for validation captions)."""

from __future__ import annotations

import torch

from zoo.errors import ConfigError


@torch.no_grad()
def checkpoint_sample_grid(ckpt: str, seed: int = 0, clip_ckpt: str | None = None) -> tuple[torch.Tensor, int]:
    """(images in [-1, 1], images per grid row): ``sample_grid`` of the checkpoint's model on one validation batch.

    Weights: the EMA average when the checkpoint has one that has started, else the trained weights
    (``zoo.checkpoint.load_module``'s ``ema``: a checkpoint saved before the EMA's first update holds the INITIAL
    weights as its average, and its grid was noise). The images come from the data the model was trained on. That config is read from the checkpoint, so it is data:
    rebuilt through the DataModule registry (plain values, no Hydra instantiate). Torch's RNG is seeded with
    ``seed`` once the model is built (building it draws random initial weights).

    An unCLIP decoder decodes the CLIP image embeddings of the validation images: from the run's zoo-embed files
    when its data config names them, else from ``clip_ckpt`` (zoo-sample's ``generator.clip_ckpt``), which must be
    the CLIP it trained with (its fingerprint). The frozen CLIP of its training is not reopened from the path stored
    in the checkpoint (a rebuild opens no other file the checkpoint names), so without features and without
    ``clip_ckpt`` the grid is a ConfigError that names the option."""
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
    _give_decoder_its_clip(model, batch, ckpt, clip_ckpt)
    return model.sample_grid(batch), int(getattr(model, "grid_nrow", 8))


def _give_decoder_its_clip(model, batch: dict, ckpt: str, clip_ckpt: str | None) -> None:
    from zoo.models.unclip_decoder.lit import UnclipDecoderLit

    if not isinstance(model, UnclipDecoderLit) or "clip_image_emb" in batch:
        return
    trained = ((getattr(model, "zoo_config", None) or {}).get("model") or {}).get("clip_ckpt")
    if not clip_ckpt:
        raise ConfigError(
            f"{ckpt} is an unCLIP decoder: its sample grid decodes the CLIP image embeddings of validation images, "
            f"and its run read them from no zoo-embed file (fix: zoo-sample ckpt={ckpt} generator.clip_ckpt=<the "
            f"CLIP it trained with{f', {trained}' if trained else ''}>, or prompts with generator=unclip)"
        )
    model.hparams.clip_ckpt, model._clip = str(clip_ckpt), None
    given, own = model.clip_scorer().fingerprint, getattr(model, "clip_fingerprint", None)
    if given and own and given != own:
        raise ConfigError(
            f"generator.clip_ckpt={clip_ckpt} is another CLIP than the one {ckpt} trained with (fingerprints {given} "
            f"and {own}): its embeddings are of another space (fix: generator.clip_ckpt=<the CLIP it trained "
            f"with{f', {trained}' if trained else ''}>)"
        )
