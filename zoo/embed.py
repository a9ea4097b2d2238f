"""``zoo-embed``: CLIP text and image embeddings (and CLIP text tokens) for a dataset split, written once to disk.

The unCLIP prior and decoder then train from ``clip_image_emb`` / ``clip_text_emb`` served by the DataModule
(``data.features.<split>=<out>``) instead of running CLIP every step. Output: a dict of tensors in dataset index
order, written atomically.
"""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from zoo.errors import ConfigError

log = logging.getLogger("zoo.embed")


@torch.no_grad()
def embed_dataset(scorer, dataset, out_path: str | Path, batch_size: int = 128) -> Path:
    from zoo.checkpoint import atomic_torch_save
    from zoo.data.collate import collate_samples

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_samples)
    img, txt, tok = [], [], []
    for batch in tqdm(loader, desc=f"embed -> {Path(out_path).name}", unit="batch"):
        img.append(scorer.encode_image(batch["image"]).cpu())
        txt.append(scorer.encode_text(batch["caption"]).cpu())
        tok.append(scorer.tokenizer(batch["caption"]).cpu())
    return atomic_torch_save(
        {"clip_image_emb": torch.cat(img), "clip_text_emb": torch.cat(txt), "clip_text_tokens": torch.cat(tok)},
        out_path,
    )


def embed(cfg: DictConfig) -> Path:
    from zoo.models.clip.scorer import ClipScorer
    from zoo.train import instantiate

    c = cfg.clip
    if c.checkpoint and not c.arch:
        scorer = ClipScorer.from_lightning_checkpoint(c.checkpoint)
    elif c.arch:
        scorer = ClipScorer.from_open_clip(c.arch, pretrained=c.pretrained, checkpoint=c.checkpoint)
    else:
        raise ConfigError("no CLIP given (fix: clip.checkpoint=/path/to/clip.ckpt, or clip.arch=ViT-B-32 "
                          "clip.pretrained=openai)")
    dm = instantiate(cfg.data)
    path = embed_dataset(scorer, dm.dataset(cfg.split), cfg.out, batch_size=int(cfg.batch_size))
    log.info("wrote %s", path)
    print(path)
    return path


@hydra.main(version_base="1.3", config_path="pkg://conf", config_name="embed")
def main(cfg: DictConfig) -> None:
    embed(cfg)


if __name__ == "__main__":
    main()
