"""zoo-sample on a tokenizer checkpoint: reconstructions of the data it was trained on, as a grid PNG."""
from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from zoo.sample import sample
from zoo.train import train


def test_sample_writes_reconstruction_grid(train_cfg, tmp_path):
    cfg = train_cfg("model=dvae", "model.preset=tiny", "data.train_size=16", "data.val_size=8", "data.test_size=8",
                    "data.batch_size=8", "logger=none", "trainer=cpu", "trainer.max_steps=2", "test=false",
                    "trainer.enable_progress_bar=false")
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        scfg = compose("sample", overrides=[f"ckpt={ckpt}", f"out_dir={tmp_path / 'out'}", f"paths.root_dir={tmp_path}"])
    written = sample(scfg)
    png = Path(written["reconstructions"]["grid"])
    w, h = Image.open(png).size
    assert png.is_file() and w > 32 and h > 32  # a grid of input | reconstruction pairs
