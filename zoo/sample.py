"""``zoo-sample``: images from any checkpoint written by ``zoo-train``.

DALL·E transformer checkpoints (``model=dalle``) go through ``DallePipeline``: ``n_candidates`` samples per prompt,
reranked by CLIP when ``clip_ckpt`` is given, the best ``top_k`` written as a grid PNG per prompt plus the individual
images (``<prompt>-<hash>/NN.png``, best first) and their CLIP scores in ``samples.json``. Other text-to-image models (those
with ``generate(captions, n, seed)``) make ``n_per_prompt`` images per prompt and a grid PNG per prompt; models
without text conditioning (the image tokenizers) reconstruct a validation batch of the data they were trained on.
Everything is written under the run directory.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from zoo.config import report_user_errors
from zoo.errors import ConfigError

log = logging.getLogger("zoo.sample")


def _slug(text: str, n: int = 60) -> str:
    """A file-name stem for a prompt: readable words plus the first 8 hex digits of the SHA-1 of the exact prompt,
    so prompts that read alike ("a red circle" / "A red circle!", "" / "   ") never share a file."""
    import hashlib

    keep = "".join(c if c.isalnum() else "_" for c in text.lower())
    words = "_".join(filter(None, keep.split("_")))[:n] or "prompt"
    return f"{words}-{hashlib.sha1(text.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def _output_names(prompts) -> list[tuple[str, str]]:
    """(samples.json key, file stem) per prompt, all distinct: a prompt given again gets " #2", "-2" (and so on)."""
    keys: set[str] = set()
    stems: set[str] = set()
    out = []
    for prompt in prompts:
        key, stem, k = prompt, _slug(prompt), 1
        while key in keys or stem in stems:
            k += 1
            key, stem = f"{prompt} #{k}", f"{_slug(prompt)}-{k}"
        keys.add(key)
        stems.add(stem)
        out.append((key, stem))
    return out


def save_grid(images, path, nrow: int, scale: int = 1) -> None:
    """A grid PNG of ``images`` in [-1, 1] (the models' range). ``scale`` > 1 enlarges each pixel to scale x scale (nearest), so that
    32-64 px samples are readable on a screen without a viewer's smoothing blurring the shapes away."""
    import torch.nn.functional as F
    from torchvision.utils import save_image

    images = images.detach().float().clamp(-1, 1).add(1).div(2)
    scale = int(scale)
    if scale < 1:
        raise ConfigError(f"grid_scale must be an integer >= 1, got {scale} (fix: grid_scale=1 for native size)")
    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    save_image(images, path, nrow=nrow, padding=2 * scale, pad_value=0.5)  # grey: backgrounds may be black or white


def sample(cfg: DictConfig) -> dict[str, Any]:
    import torch

    from zoo.checkpoint import load_module

    if not cfg.get("ckpt"):
        raise ConfigError("no checkpoint given (fix: zoo-sample ckpt=/path/to/run/checkpoints/last.ckpt)")
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_module(cfg.ckpt)
    torch.manual_seed(int(cfg.seed))
    written: dict[str, Any] = {}
    from zoo.models.dalle.lit import DalleLit

    if isinstance(model, DalleLit) and cfg.prompts:
        written = sample_dalle(cfg, model, out_dir)
    elif hasattr(model, "generate") and cfg.prompts:
        for prompt, (key, stem) in zip(cfg.prompts, _output_names(cfg.prompts)):
            result = model.generate([prompt], n=int(cfg.n_per_prompt), seed=int(cfg.seed))
            images = result["images"] if isinstance(result, dict) else result
            path = out_dir / f"{stem}.png"
            save_grid(images, path, int(cfg.nrow), cfg.grid_scale)
            written[key] = {"prompt": prompt, "grid": str(path)}
            if isinstance(result, dict) and "scores" in result:
                written[key]["scores"] = [float(s) for s in result["scores"]]
    elif hasattr(model, "sample_grid"):
        # The images to reconstruct come from the data the model was trained on. That config is read from the
        # checkpoint, so it is data: rebuilt through the DataModule registry (plain values, no Hydra instantiate).
        from zoo.registry import datamodule_from_file_config

        data_cfg = (model.zoo_config or {}).get("data") or {}
        if "_target_" not in data_cfg:
            raise ConfigError(f"{cfg.ckpt} carries no data config; cannot pick images to reconstruct")
        dm = datamodule_from_file_config(data_cfg, str(cfg.ckpt))
        batch = next(iter(dm.val_dataloader()))
        with torch.no_grad():
            images = model.sample_grid(batch)
        path = out_dir / "reconstructions.png"
        save_grid(images, path, int(getattr(model, "grid_nrow", 8)), cfg.grid_scale)
        written["reconstructions"] = {"grid": str(path)}
    else:
        raise ConfigError(f"{type(model).__name__} cannot sample (no generate() or sample_grid())")
    (out_dir / "samples.json").write_text(json.dumps(written, indent=2))
    for key, value in written.items():
        log.info("%s -> %s", key, value["grid"])
    return written


def sample_dalle(cfg: DictConfig, model, out_dir: Path) -> dict[str, Any]:
    """DALL·E: candidates -> CLIP rerank -> grid + individual images + scores per prompt."""
    from torchvision.utils import save_image

    from zoo.models.clip.scorer import CLIP_SCORE_CONVENTION
    from zoo.pipelines.dalle import DallePipeline

    scorer = None
    if cfg.get("clip_ckpt"):
        from zoo.models.clip.scorer import ClipScorer

        if not Path(cfg.clip_ckpt).is_file():
            raise ConfigError(f"clip_ckpt={cfg.clip_ckpt} does not exist (fix: a zoo-train model=clip checkpoint, "
                              f"e.g. logs/demo/clip/checkpoints/last.ckpt, or clip_ckpt=null for no reranking)")
        scorer = ClipScorer.from_lightning_checkpoint(str(cfg.clip_ckpt))
    pipe = DallePipeline(model, scorer, n_candidates=int(cfg.n_candidates), temperature=float(cfg.temperature),
                         sample_top_k=cfg.get("sample_top_k"), top_p=cfg.get("top_p"),
                         guidance_scale=float(cfg.guidance_scale), batch_size=int(cfg.batch_size), seed=int(cfg.seed))
    prompts = list(cfg.prompts)
    out = pipe.sample(prompts, int(cfg.n_candidates), top_k=int(cfg.top_k))
    written: dict[str, Any] = {}
    for i, (prompt, (key, slug)) in enumerate(zip(prompts, _output_names(prompts))):
        path = out_dir / f"{slug}.png"
        save_grid(out["images"][i], path, int(cfg.nrow), cfg.grid_scale)
        images = out["images"][i].float().clamp(-1, 1).add(1).div(2)
        (out_dir / slug).mkdir(exist_ok=True)
        files = []
        for j, img in enumerate(images):
            f = out_dir / slug / f"{j:02d}.png"
            save_image(img, f)
            files.append(str(f))
        entry: dict[str, Any] = {"prompt": prompt, "grid": str(path), "images": files,
                                 "n_candidates": int(cfg.n_candidates)}
        if out["scores"] is not None:
            entry["clip_scores"] = [round(float(s), 4) for s in out["scores"][i]]
            entry["clip_score_convention"] = CLIP_SCORE_CONVENTION
        written[key] = entry
    return written


@hydra.main(version_base="1.3", config_path="pkg://conf", config_name="sample")
@report_user_errors
def main(cfg: DictConfig) -> None:
    sample(cfg)


if __name__ == "__main__":
    main()
