"""The taming VQGAN / Gumbel-VQ image tokenizer as a zoo component (``vqgan``): published weights, not trained here.

A checkpoint of this component comes from ``zoo-convert kind=taming_vq|taming_gumbel`` (see ``zoo.convert``). It
loads with ``zoo.checkpoint.load_module`` like any zoo-train checkpoint and works wherever an image tokenizer is
taken: ``model.image_tokenizer_ckpt=`` (DALL·E), ``zoo-tokenize tokenizer_ckpt=``, ``zoo-sample ckpt=``
(input | reconstruction grid). Validation / test epochs log the tokenizer metrics of ``ImageTokenizerLit``
(reconstruction MSE / PSNR, codebook usage, perplexity). There is no training objective (taming trains with a
patch discriminator and LPIPS, which are not part of the zoo): ``zoo-train`` refuses it in ``check_data``.
"""

from __future__ import annotations

from typing import Any, Optional

from zoo.errors import ConfigError
from zoo.models.base import ImageTokenizerLit
from zoo.models.presets import resolve_preset
from zoo.models.vqgan.model import PRESETS, TamingVQGAN, TamingVQGANConfig


class TamingVQGANLit(ImageTokenizerLit):
    """Args:
    preset: ``tiny`` (tests) | ``paper`` (taming's ImageNet f16, 1024 codes) | ``imagenet_f16_16384`` |
        ``gumbel_f8`` (``zoo.models.vqgan.model.PRESETS``); ``net`` overrides fields (a converted checkpoint
        carries every field in ``net``, read off the published weights).
    """

    def __init__(self, preset: str = "paper", net: Optional[dict[str, Any]] = None, optimizer=None, scheduler=None):
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.cfg = resolve_preset(PRESETS, TamingVQGANConfig, preset, net, "taming VQGAN")
        self.vqgan = TamingVQGAN(self.cfg)

    @property
    def tokenizer(self) -> TamingVQGAN:
        """The ``ImageTokenizer`` this module holds."""
        return self.vqgan

    def eval_step(self, batch: dict[str, Any], stage: str) -> None:
        images = batch["image"]
        codes = self.vqgan.encode(images)
        self.accumulate(codes, self.vqgan.decode(codes), images)

    def check_data(self, datamodule) -> None:
        """Refuses training: the component holds published weights and has no loss here."""
        raise ConfigError(
            "the vqgan component holds converted taming-transformers weights and is not trained by zoo-train "
            "(taming's discriminator / LPIPS losses are not part of the zoo) (fix: use its checkpoint as "
            "model.image_tokenizer_ckpt= or zoo-tokenize tokenizer_ckpt=; to train a tokenizer, model=vqvae or "
            "model=dvae)"
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int):
        self.check_data(None)
