"""What the dVAE and VQ-VAE modules share through ``zoo.models.base.ImageTokenizerLit``, tested once for both."""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from zoo.data.shapes import ShapesDataset
from zoo.errors import ConfigError
from zoo.models.dvae.lit import DVAELit
from zoo.models.vqvae.lit import VQVAELit

LITS = [DVAELit, VQVAELit]


@pytest.mark.parametrize("cls", LITS, ids=lambda c: c.__name__)
def test_check_data_names_the_fix_and_sets_the_grid(cls):
    m = cls(preset="shapes")  # downsample factor 4
    with pytest.raises(ConfigError, match="data.resolution"):
        m.check_data(SimpleNamespace(resolution=30))
    m.check_data(SimpleNamespace(resolution=64))  # adapts the tokenizer to the data (its docstring says so)
    assert m.tokenizer.grid_size == (16, 16)


@pytest.mark.parametrize("cls", LITS, ids=lambda c: c.__name__)
def test_hparams_are_plain_values_and_the_factory_builds_the_optimizer(cls):
    m = cls(preset="tiny", optimizer=functools.partial(torch.optim.AdamW, lr=5e-4))
    assert "optimizer" not in m.hparams and m.hparams.preset == "tiny"
    opt = m.configure_optimizers()
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["lr"] == 5e-4


# ------------------------------------------------------------------------------------------------ Lightning fit
class _ShapesImages(L.LightningDataModule):
    def __init__(self, resolution: int = 32):
        super().__init__()
        self.resolution = resolution

    def _loader(self):
        ds = ShapesDataset("train", 8, self.resolution)
        return DataLoader([{"image": ds[i]["image"]} for i in range(8)], batch_size=4)

    def train_dataloader(self):
        return self._loader()

    def val_dataloader(self):
        return self._loader()


# the metrics every image tokenizer logs, then each one's own (temperature / KL weight; commitment)
COMMON = [
    "train/loss",
    "train/recon_mse",
    "train/psnr",
    "val/loss",
    "val/recon_mse",
    "val/psnr",
    "val/codebook_usage",
    "val/perplexity",
]
OWN = {DVAELit: ["train/temperature", "train/kl_weight"], VQVAELit: ["train/perplexity", "train/commitment"]}
KWARGS = {DVAELit: {"temperature_steps": 2, "kl_steps": 2}, VQVAELit: {}}


@pytest.mark.parametrize("cls", LITS, ids=lambda c: c.__name__)
def test_lightning_fit_logs_the_metrics_and_the_grid(cls, tmp_path):
    from zoo.precision import resolve_precision

    torch.manual_seed(0)
    m = cls(preset="tiny", **KWARGS[cls])
    m.check_data(_ShapesImages())
    precision, _ = resolve_precision("auto", "cpu")  # bf16 only where this CPU has it natively
    trainer = L.Trainer(
        accelerator="cpu",
        precision=precision,
        max_steps=4,
        limit_val_batches=2,
        val_check_interval=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(m, datamodule=_ShapesImages())
    logged = trainer.callback_metrics
    for k in COMMON + OWN[cls]:
        assert k in logged and torch.isfinite(logged[k]), k
    assert 0 < logged["val/codebook_usage"] <= 100
    mse = logged["val/recon_mse"].item()
    assert logged["val/psnr"].item() == pytest.approx(10 * math.log10(1 / mse), rel=1e-3)
    if cls is DVAELit:  # the temperature schedule reached its end within the run
        assert logged["train/temperature"].item() == pytest.approx(1 / 16)
    x = torch.stack([ShapesDataset("val", 3, 32)[i]["image"] for i in range(3)])
    grid = m.sample_grid({"image": x})
    assert grid.shape == (6, 3, 32, 32) and m.grid_nrow > 0 and grid.abs().max() <= 1
    torch.testing.assert_close(grid[0::2], x)  # interleaved input | reconstruction


@pytest.mark.parametrize("name", ["dvae", "vqvae", "vqgan"])
def test_encode_gives_the_same_codes_under_bf16_autocast(name):
    """DALL·E encodes images on the fly inside its (bf16-mixed) training step: the encoder then ran in bf16 and
    1-2% of the codes differed from those of zoo-tokenize / eval (float32) for the same image."""
    from zoo.models.dvae import DVAE
    from zoo.models.dvae import PRESETS as DVAE_PRESETS
    from zoo.models.vqgan.model import PRESETS as VQGAN_PRESETS
    from zoo.models.vqgan.model import TamingVQGAN
    from zoo.models.vqvae.model import PRESETS as VQVAE_PRESETS
    from zoo.models.vqvae.model import VQVAE

    torch.manual_seed(0)
    tok, res = {
        "dvae": (lambda: DVAE(DVAE_PRESETS["shapes"]), 32),
        "vqvae": (lambda: VQVAE(VQVAE_PRESETS["shapes"]), 32),
        "vqgan": (lambda: TamingVQGAN(VQGAN_PRESETS["tiny"]), 16),
    }[name]
    m = tok().eval()
    x = torch.rand(4, 3, res, res) * 2 - 1
    want = m.encode(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = m.encode(x)
    assert got.dtype == torch.long and torch.equal(got, want)


@pytest.mark.parametrize("cls", LITS, ids=lambda c: c.__name__)
def test_eval_metrics_under_bf16_autocast_count_the_codes_encode_gives(cls):
    """Validation counted the argmax / nearest codes of the bf16 loss pass: ~0.3% of positions were not the tokens
    stage 2 gets from encode, so codebook usage, perplexity and PSNR described other codes."""
    torch.manual_seed(0)
    m = cls(preset="shapes").eval()
    m.log_metrics = lambda *a, **k: None
    x = torch.rand(64, 3, 32, 32) * 2 - 1
    m.start_epoch("val")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        m.eval_step({"image": x}, "val")
    want = torch.bincount(m.tokenizer.encode(x).flatten(), minlength=m.tokenizer.codebook_size)
    assert torch.equal(m._eval_stats["counts"], want)
