"""``zoo-sample``: images from any checkpoint written by ``zoo-train``.

Text-to-image models (those with ``generate(captions, n, seed)``) make ``n_per_prompt`` images per prompt and a grid
PNG per prompt; models without text conditioning (the image tokenizers) reconstruct a validation batch of the data
they were trained on. Everything is written under the run directory.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from zoo.errors import ConfigError

log = logging.getLogger("zoo.sample")


def _slug(text: str, n: int = 60) -> str:
    keep = "".join(c if c.isalnum() else "_" for c in text.lower())
    return "_".join(filter(None, keep.split("_")))[:n] or "prompt"


def sample(cfg: DictConfig) -> dict[str, Any]:
    import torch
    from torchvision.utils import save_image

    from zoo.checkpoint import load_module
    from zoo.train import instantiate

    if not cfg.get("ckpt"):
        raise ConfigError("no checkpoint given (fix: zoo-sample ckpt=/path/to/run/checkpoints/last.ckpt)")
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_module(cfg.ckpt)
    torch.manual_seed(int(cfg.seed))
    written: dict[str, Any] = {}
    if hasattr(model, "generate") and cfg.prompts:
        for prompt in cfg.prompts:
            result = model.generate([prompt], n=int(cfg.n_per_prompt), seed=int(cfg.seed))
            images = result["images"] if isinstance(result, dict) else result
            path = out_dir / f"{_slug(prompt)}.png"
            save_image(images.float().clamp(-1, 1).add(1).div(2), path, nrow=int(cfg.nrow))
            written[prompt] = {"grid": str(path)}
            if isinstance(result, dict) and "scores" in result:
                written[prompt]["scores"] = [float(s) for s in result["scores"]]
    elif hasattr(model, "sample_grid"):
        data_cfg = OmegaConf.create(model.zoo_config.get("data", {}))
        if "_target_" not in data_cfg:
            raise ConfigError(f"{cfg.ckpt} carries no data config; cannot pick images to reconstruct")
        dm = instantiate(data_cfg)
        batch = next(iter(dm.val_dataloader()))
        with torch.no_grad():
            images = model.sample_grid(batch)
        path = out_dir / "reconstructions.png"
        save_image(images.float().clamp(-1, 1).add(1).div(2), path, nrow=int(getattr(model, "grid_nrow", 8)))
        written["reconstructions"] = {"grid": str(path)}
    else:
        raise ConfigError(f"{type(model).__name__} cannot sample (no generate() or sample_grid())")
    (out_dir / "samples.json").write_text(json.dumps(written, indent=2))
    for key, value in written.items():
        log.info("%s -> %s", key, value["grid"])
    return written


@hydra.main(version_base="1.3", config_path="pkg://conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    sample(cfg)


if __name__ == "__main__":
    main()
