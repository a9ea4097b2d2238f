"""zoo-tokenize: a trained tokenizer encodes a split to a token file that the DataModule then serves."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from zoo.checkpoint import load_module, safe_load
from zoo.tokenize import tokenize
from zoo.train import instantiate, train

DATA = ["data.train_size=24", "data.val_size=8", "data.test_size=8", "data.batch_size=8"]


def test_tokenize_split_and_serve_tokens(train_cfg, tmp_path):
    cfg = train_cfg(
        "model=vqvae",
        "model.preset=tiny",
        *DATA,
        "logger=none",
        "trainer=cpu",
        "trainer.max_steps=2",
        "trainer.enable_progress_bar=false",
        "test=false",
    )
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    out = tmp_path / "tokens_val.pt"
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        tcfg = compose(
            "tokenize",
            overrides=[
                f"tokenizer_ckpt={ckpt}",
                "split=val",
                f"out={out}",
                *DATA,
                "batch_size=3",
                f"paths.root_dir={tmp_path}",
            ],
        )
    tokenize(tcfg)
    saved = safe_load(out)
    model = load_module(ckpt)
    dm = instantiate(tcfg.data)
    images = torch.stack([dm.dataset("val")[i]["image"] for i in range(8)])
    assert torch.equal(saved["image_tokens"], model.tokenizer.encode(images))
    assert saved["image_tokens"].shape == (8, 16, 16) and saved["codebook_size"] == 64

    # the DataModule serves them as batch["image_tokens"], aligned with the images
    from omegaconf import OmegaConf

    dm2 = instantiate(OmegaConf.merge(tcfg.data, {"features": {"val": str(out)}}))
    batch = next(iter(dm2.val_dataloader()))
    assert torch.equal(batch["image_tokens"], saved["image_tokens"][: len(batch["index"])])
