"""Training and sampling the unCLIP decoder with Lightning: GLIDE (``GlideLit``) plus the CLIP image embedding.

Everything GLIDE's module does is inherited (diffusion process, caption tokenizer in the checkpoint, data checks,
``encode_captions``, ``drop_captions``, optimizer, ``candidates``); this module adds the embedding:

- Training: images + the CLIP image embedding of each image, either ``clip_image_emb`` from ``zoo-embed`` features
  (``data.features.<split>=<file>``) or, when ``clip_ckpt`` is set and the batch has none, computed by that frozen
  CLIP (``ClipScorer.encode_image`` under no_grad; the CLIP is not part of this module's weights or checkpoint).
  Independently per example: the caption is replaced by the empty caption with probability ``text_dropout``
  (unCLIP: 50%) and the embedding by zeros with probability ``emb_dropout`` (unCLIP: 10%); with probability
  ``null_dropout`` (default 0) both together, on top of those draws. Guidance contrasts against that joint null,
  which the independent draws train only text_dropout x emb_dropout of the time (5% at the paper's rates, 2% with
  GLIDE's caption rate 0.2 beside it; GLIDE's own null, the empty caption, is trained 20% of the time).
- Sampling: guidance on the embedding (and caption) with ``decoder_guidance_scale``: one batched forward over
  [cond ; uncond] with uncond = (empty caption, zero embedding); scale 1 skips the unconditional half and is the
  conditional model bit for bit. ``generate(captions, image_emb)`` and ``generate_from_embeddings(image_emb,
  captions=None)`` (the unCLIP pipeline: prior -> embedding -> decoder).
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from zoo.diffusion.process import GaussianDiffusion, check_snr_gamma
from zoo.diffusion.samplers import check_sampling_knobs
from zoo.diffusion.schedules import get_schedule
from zoo.errors import ConfigError, check_rate
from zoo.models.base import ClipEmbeddingLit, ZooLit, resolve_preset, unmet_sizes
from zoo.models.glide.lit import (
    GlideLit,
    check_grid_captions,
    check_prediction,
    run_sampler,
    sampling_in_eval_mode,
)
from zoo.models.unclip_decoder.model import UNCLIP_DECODER_PRESETS, UnclipDecoder, UnclipDecoderConfig
from zoo.text import TextTokenizer

log = logging.getLogger(__name__)

_FIX_EMBED = (
    "run zoo-embed for the split and pass it (data.features.{split}=<dir>/{split}.pt), or give a frozen "
    "CLIP: model.clip_ckpt=<zoo-train model=clip last.ckpt>"
)


def build_config(preset: str = "shapes", net: Optional[dict[str, Any]] = None) -> UnclipDecoderConfig:
    return resolve_preset(UNCLIP_DECODER_PRESETS, UnclipDecoderConfig, preset, net, "unCLIP decoder")


class UnclipDecoderLit(ClipEmbeddingLit, GlideLit):
    """Args:
    preset: ``tiny`` | ``shapes`` | ``paper`` (``UNCLIP_DECODER_PRESETS``); ``net`` overrides fields
        (``UnclipDecoderConfig``: GLIDE's plus ``clip_dim``, ``clip_tokens``).
    text_dropout: probability of the empty caption in training (unCLIP: 0.5).
    emb_dropout: probability of the zero CLIP embedding in training (unCLIP: 0.1), independent of the caption's.
    null_dropout: probability that a training example gets the null condition (empty caption and zero embedding
        together), drawn after and on top of the two independent dropouts (0: the paper's scheme).
    clip_ckpt: optional zoo-train CLIP checkpoint, frozen, embedding batches that carry no ``clip_image_emb``.
    num_timesteps, schedule: the training diffusion process (cosine, 1000).
    prediction: ``eps`` (GLIDE's and unCLIP's) or ``v`` (``GlideLit``'s docstring says when v helps).
    snr_gamma: null or γ for Min-SNR-γ loss weighting (as ``GlideLit``).
    text_init, freeze_text: the caption encoder from a CLIP's text tower, optionally frozen (as ``GlideLit``).
    decoder_guidance_scale, sample_steps, sampler, eta: ``generate``'s defaults (unCLIP: guidance 1.25 at FID).
    grid_captions, grid_steps, grid_guidance_scale: ``sample_grid`` (real | decoded from its embedding + caption).
    text_tokenizer: filled in by the checkpoint (leave None when training).
    clip_fingerprint: the CLIP of the training embeddings (``ClipEmbeddingLit``): filled in from the data, the frozen
        ``clip_ckpt`` and the checkpoint; leave None when training.
    """

    def __init__(
        self,
        preset: str = "shapes",
        net: Optional[dict[str, Any]] = None,
        text_dropout: float = 0.5,
        emb_dropout: float = 0.1,
        null_dropout: float = 0.0,
        clip_ckpt: Optional[str] = None,
        num_timesteps: int = 1000,
        schedule: str = "cosine",
        prediction: str = "eps",
        snr_gamma: Optional[float] = None,
        decoder_guidance_scale: float = 3.0,
        sample_steps: int = 50,
        sampler: str = "ddim",
        eta: float = 0.0,
        grid_captions: int = 8,
        grid_steps: int = 25,
        grid_guidance_scale: float = 3.0,
        text_init: Optional[str] = None,
        freeze_text: bool = False,
        text_tokenizer: Optional[dict[str, Any]] = None,
        clip_fingerprint: Optional[str] = None,
        optimizer=None,
        scheduler=None,
    ):
        # GlideLit's constructor builds a Glide; ours builds the decoder, so we start from the base (the rest of
        # GlideLit's behaviour is inherited unchanged). The hyper-parameters are given explicitly: Lightning's frame
        # inspection only collects constructors that call super().
        hparams = {k: v for k, v in locals().items() if k not in ("self", "optimizer", "scheduler", "text_tokenizer")}
        ZooLit.__init__(self, optimizer, scheduler)
        self.save_hyperparameters(hparams)
        for name, p, fix in (
            ("text_dropout", text_dropout, "0.5"),
            ("emb_dropout", emb_dropout, "0.1"),
            ("null_dropout", null_dropout, "0.0"),
        ):
            check_rate(f"model.{name}", p, fix)  # unCLIP's rates as the fix
        self.cfg = build_config(preset, net)
        if not self.cfg.learn_sigma:
            raise ConfigError(
                "the unCLIP decoder trains a learned-range variance (hybrid loss): keep model.net.learn_sigma=true"
            )
        self.net = UnclipDecoder(self.cfg)
        self.freeze_text_encoder(text_init, freeze_text)  # GlideLit's text_init / freeze_text (check_data copies it)
        self.process = GaussianDiffusion(
            get_schedule(schedule, num_timesteps),  # which refuses 2.5 or true (int() took them for 2 or 1 step)
            model_mean_type=check_prediction(prediction),
            model_var_type="learned_range",
            loss_type="hybrid",
            snr_gamma=check_snr_gamma(snr_gamma, "model.snr_gamma"),
        )
        check_sampling_knobs(
            self.process.num_timesteps,
            {
                "model.sample_steps": sample_steps,
                "model.sampler": sampler,
                "model.eta": eta,
                "model.decoder_guidance_scale": decoder_guidance_scale,
                "model.grid_steps": grid_steps,
                "model.grid_guidance_scale": grid_guidance_scale,
            },
        )
        check_grid_captions(grid_captions)  # GlideLit's check: this constructor does not run GlideLit.__init__
        self.text_dropout, self.emb_dropout = float(text_dropout), float(emb_dropout)
        self.null_dropout = float(null_dropout)
        self.text_tokenizer: Optional[TextTokenizer] = TextTokenizer.from_spec(text_tokenizer)
        self._clip = None  # the frozen ClipScorer (loaded on first use; never in the state dict)
        self.clip_fingerprint = clip_fingerprint  # the CLIP of its training embeddings (ClipEmbeddingLit)

    def guidance_scales(self) -> dict[str, float]:
        hp = self.hparams
        return {
            "model.decoder_guidance_scale": hp.decoder_guidance_scale,
            "model.grid_guidance_scale": hp.grid_guidance_scale,
        }

    def warn_untrained_null(self, scales: dict[str, float]) -> None:
        """A WARNING when ``scales`` guide against a null condition this decoder never trains: the empty caption and
        the zero embedding together, drawn text_dropout x emb_dropout (+ null_dropout) of the time, so text_dropout=0
        or emb_dropout=0 leaves it untrained (the paper: 50% and 10%). GlideLit's check reads text_dropout alone;
        the unCLIP pipeline calls this one at sampling with its own scale."""
        guided = {k: v for k, v in scales.items() if v is not None and v != 1}
        rates = {"text_dropout": self.text_dropout, "emb_dropout": self.emb_dropout, "null_dropout": self.null_dropout}
        if guided and rates["text_dropout"] * rates["emb_dropout"] + rates["null_dropout"] == 0:
            log.warning(
                "this unCLIP decoder never trains its null condition (empty caption and zero embedding together; %s) "
                "but %s guide with it: classifier-free guidance extrapolates from an untrained unconditional model "
                "(fix: model.text_dropout=0.5 and model.emb_dropout=0.1, the paper's, or model.null_dropout > 0; or "
                "guidance scales of 1)",
                ", ".join(f"{k}={v}" for k, v in rates.items()),
                ", ".join(f"{k}={v}" for k, v in guided.items()),
            )

    # ------------------------------------------------------------------------------------------ data
    @staticmethod
    def _features(datamodule, split: str) -> dict[str, torch.Tensor]:
        if split not in (getattr(datamodule, "features", None) or {}):
            return {}
        dataset = getattr(datamodule, "dataset", None)
        return (getattr(dataset(split), "features", {}) or {}) if callable(dataset) else {}

    def data_sizes(self, datamodule) -> dict[str, Any]:
        """GLIDE's, plus clip_dim: the frozen CLIP's embedding width (``clip_ckpt``), else the train features'."""
        sizes = super().data_sizes(datamodule)
        if self.hparams.clip_ckpt:
            size = sizes.get("image_size", self.cfg.image_size)
            dim = int(self.clip_scorer().encode_image(torch.zeros(1, 3, size, size)).shape[-1])
        elif "clip_image_emb" in self._features(datamodule, "train"):
            dim = int(self._features(datamodule, "train")["clip_image_emb"].shape[-1])
        else:
            return sizes
        return {**sizes, **unmet_sizes(self.cfg, {"clip_dim": dim})}

    def check_data(self, datamodule) -> None:
        """GLIDE's checks (text tokens, resolution; keeps the tokenizer), then the embeddings: ``clip_image_emb``
        features of width ``clip_dim`` for train and val, unless a frozen CLIP (``clip_ckpt``) computes them."""
        super().check_data(datamodule)
        self.check_embeddings(datamodule, widths=True)

    def check_image_data(self, datamodule) -> None:
        """GLIDE's (inpainting masks, resolution) and the embeddings (zoo.train runs it before the BPE fit): a
        missing zoo-embed file or CLIP, and, unless a tiny preset takes it from them, their width."""
        super().check_image_data(datamodule)
        self.check_embeddings(datamodule, widths=not self.tiny_fits_data())

    def check_embeddings(self, datamodule, widths: bool) -> None:
        """The CLIP image embeddings: ``clip_image_emb`` features for train and val, unless a frozen CLIP
        (``clip_ckpt``) computes them; ``widths``: also their width against ``clip_dim``."""
        if self.hparams.clip_ckpt:
            clip = self.clip_scorer()  # a missing or unreadable file is refused here
            if not widths:
                return
            d = clip.encode_image(torch.zeros(1, 3, self.cfg.image_size, self.cfg.image_size)).shape[-1]
            if d != self.cfg.clip_dim:
                raise ConfigError(
                    f"the CLIP at {self.hparams.clip_ckpt} embeds to {d}-d but the decoder's clip_dim "
                    f"is {self.cfg.clip_dim} (fix: model.net.clip_dim={d})"
                )
            return
        for split in ("train", "val"):
            feats = self._features(datamodule, split)
            if "clip_image_emb" not in feats:
                raise ConfigError(
                    f"the unCLIP decoder needs CLIP image embeddings and data.features.{split} has "
                    f"none (fix: {_FIX_EMBED.format(split=split)})"
                )
            d = feats["clip_image_emb"].shape[-1]
            if widths and d != self.cfg.clip_dim:
                raise ConfigError(
                    f"the {split} CLIP image embeddings are {d}-d but the decoder's clip_dim is "
                    f"{self.cfg.clip_dim} (fix: model.net.clip_dim={d})"
                )

    @property
    def val_features_needed(self) -> tuple[str, ...]:
        """What validation / test batches read from zoo-embed files (zoo.train.check_compatibility): the image
        embedding, unless the frozen ``clip_ckpt`` computes it."""
        return () if self.hparams.clip_ckpt else ("clip_image_emb",)

    def clip_fingerprints(self, datamodule, stage: str) -> dict[str, str]:
        """The zoo-embed files' CLIPs and, with ``clip_ckpt``, that frozen CLIP (the embeddings of batches without
        features): a file embedded by another CLIP than ``clip_ckpt`` mixes two spaces in one run."""
        found = super().clip_fingerprints(datamodule, stage)
        if self.hparams.clip_ckpt and stage == "fit":
            fp = self.clip_scorer().fingerprint
            if fp:
                found[f"model.clip_ckpt={self.hparams.clip_ckpt}"] = fp
        return found

    def clip_scorer(self):
        """The frozen CLIP of ``clip_ckpt`` (a ``ClipScorer``), loaded once."""
        if self._clip is None:
            if not self.hparams.clip_ckpt:
                raise ConfigError(
                    "the batch has no clip_image_emb and no frozen CLIP is given (fix: "
                    + _FIX_EMBED.format(split="<split>")
                    + ")"
                )
            from pathlib import Path

            from zoo.models.clip.scorer import ClipScorer

            if not Path(str(self.hparams.clip_ckpt)).expanduser().is_file():
                raise ConfigError(
                    f"model.clip_ckpt: no file {self.hparams.clip_ckpt} (fix: model.clip_ckpt=<a zoo-train model=clip "
                    f"last.ckpt>, e.g. make demo's logs/demo/clip/checkpoints/last.ckpt; or model.clip_ckpt=null with "
                    f"zoo-embed features in data.features.train / val)"
                )
            self._clip = ClipScorer.from_lightning_checkpoint(str(self.hparams.clip_ckpt), device=str(self.device))
            for p in self._clip.model.parameters():
                p.requires_grad_(False)
        return self._clip

    def image_embedding(self, batch: dict[str, Any]) -> torch.Tensor:
        """(B, clip_dim) float: the batch's ``clip_image_emb``, else the frozen CLIP's embedding of its images."""
        if "clip_image_emb" in batch:
            return batch["clip_image_emb"].float().to(self.device)
        clip = self.clip_scorer()
        if clip.device != self.device:  # follow the module (e.g. moved to a GPU after loading)
            clip.model.to(self.device)
            clip.device, clip.mean, clip.std = self.device, clip.mean.to(self.device), clip.std.to(self.device)
        with torch.no_grad():
            return clip.encode_image(batch["image"]).to(self.device)

    def drop_embeddings(self, emb: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Zero each embedding (B, D) with probability ``emb_dropout`` (an independent draw from the caption's)."""
        if self.emb_dropout <= 0:
            return emb
        drop = torch.rand(emb.shape[0], device=emb.device, generator=generator) < self.emb_dropout
        return torch.where(drop[:, None], torch.zeros_like(emb), emb)

    def drop_conditions(
        self, text: torch.Tensor, emb: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training-time dropout of (text (B, text_len), emb (B, D)): the independent caption and embedding drops,
        then with probability ``null_dropout`` the joint null (empty caption and zero embedding, guidance's
        unconditional input)."""
        text, emb = self.drop_captions(text, generator), self.drop_embeddings(emb, generator)
        if self.null_dropout <= 0:
            return text, emb
        drop = torch.rand(emb.shape[0], device=emb.device, generator=generator) < self.null_dropout
        text = torch.where(drop[:, None].to(text.device), self.net.null_tokens(text.shape[0], text.device), text)
        emb = torch.where(drop[:, None], self.net.null_embedding(emb.shape[0], emb.device).to(emb.dtype), emb)
        return text, emb

    # ------------------------------------------------------------------------------------------ training
    def forward_loss(
        self, batch: dict[str, Any], train: bool, generator: Optional[torch.Generator] = None
    ) -> dict[str, torch.Tensor]:
        x0 = batch["image"].float()
        text = self.net.pad_text(batch["text_tokens"].to(x0.device))
        emb = self.image_embedding(batch).to(x0.device)
        if train:
            text, emb = self.drop_conditions(text, emb, generator)
        t = self.process.sample_timesteps(x0.shape[0], device=x0.device, generator=generator)
        terms = self.process.training_losses(
            self.net, x0, t, model_kwargs={"text_tokens": text, "image_emb": emb}, generator=generator
        )
        return {k: v.mean() for k, v in terms.items()}

    # ------------------------------------------------------------------------------------------ sampling
    def decoder_model_fn(self, text_tokens: torch.Tensor, image_emb: torch.Tensor, guidance_scale: Optional[float]):
        """The sampler's ``model_fn(x_t, t)``: conditional at scale None or 1, else guided against the null condition
        (empty caption + zero embedding) with one batched [cond ; uncond] forward per step."""
        b = text_tokens.shape[0]
        if tuple(image_emb.shape) != (b, self.cfg.clip_dim):  # before the guided path's cat hides the cause
            raise ValueError(
                f"image_emb must be (B={b}, clip_dim={self.cfg.clip_dim}) for {b} captions, got "
                f"{tuple(image_emb.shape)} (an embedding of another CLIP width, or a batch of another size: the "
                f"decoder takes the embeddings of the CLIP it was trained with)"
            )

        def encode(guided: bool) -> dict[str, torch.Tensor]:
            if not guided:
                return self.net.encode(text_tokens, image_emb)
            return self.net.encode(
                torch.cat([text_tokens, self.net.null_tokens(b, text_tokens.device)]),
                torch.cat([image_emb, self.net.null_embedding(b, image_emb.device)]),
            )

        return self.guided_model_fn(encode, guidance_scale)

    @torch.no_grad()
    @sampling_in_eval_mode  # no dropout in the samples, even on a module left in training mode
    def sample(
        self,
        text_tokens: Optional[torch.Tensor],
        image_emb: torch.Tensor,
        decoder_guidance_scale: Optional[float] = None,
        steps: Optional[int] = None,
        sampler: Optional[str] = None,
        eta: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
        x_T: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] for CLIP image embeddings (B, clip_dim) and text tokens (B, <= text_len)
        (None: the empty caption). Defaults from the hyper-parameters."""
        hp = self.hparams
        # given from Python, as the config's are: int() ran steps=2.5 as 2 and true as 1, float() took eta=true as 1
        knobs = {"steps": steps, "sampler": sampler, "eta": eta, "decoder_guidance_scale": decoder_guidance_scale}
        check_sampling_knobs(self.process.num_timesteps, knobs)
        scale = hp.decoder_guidance_scale if decoder_guidance_scale is None else decoder_guidance_scale
        steps = int(hp.sample_steps if steps is None else steps)
        sampler = hp.sampler if sampler is None else sampler
        eta = float(hp.eta if eta is None else eta)
        emb = image_emb.float().to(self.device)
        b = emb.shape[0]
        text = (
            self.net.null_tokens(b, self.device)
            if text_tokens is None
            else self.net.pad_text(text_tokens.to(self.device))
        )
        c = self.cfg
        fn = self.decoder_model_fn(text, emb, scale)
        x = run_sampler(
            self.process,
            fn,
            (b, c.out_channels, c.image_size, c.image_size),
            steps,
            sampler,
            eta,
            generator,
            self.device,
            x_T,
        )
        return x.float().clamp(-1, 1)

    @torch.no_grad()
    def generate(
        self,
        captions: Optional[Sequence[str]],
        image_emb: torch.Tensor,
        n: int = 1,
        seed: int = 0,
        decoder_guidance_scale: Optional[float] = None,
        steps: Optional[int] = None,
        sampler: Optional[str] = None,
        eta: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
        batch_size: int = 64,
        guidance_scale: Optional[float] = None,
    ) -> torch.Tensor:
        """``n`` images per (caption, embedding) pair -> (B * n, 3, H, W) in [-1, 1], pair-major.

        ``image_emb`` (B, clip_dim) (a prior's sample or ``zoo-embed``'s; as trained, e.g. unit-norm);
        ``captions`` B strings or None (the empty caption). ``decoder_guidance_scale`` (``guidance_scale`` is an
        alias) defaults to the hyper-parameter; 1 is the conditional model. Deterministic given ``seed``."""
        if isinstance(captions, str):
            captions = [captions]
        emb = torch.as_tensor(image_emb).float().to(self.device)
        if emb.dim() != 2:
            raise ValueError(f"image_emb must be (B, clip_dim), got {tuple(emb.shape)}")
        if captions is not None and len(captions) != len(emb):
            raise ValueError(f"{len(captions)} captions but {len(emb)} image embeddings")
        scale = decoder_guidance_scale if decoder_guidance_scale is not None else guidance_scale
        text = None if captions is None else self.encode_captions(captions).repeat_interleave(int(n), 0)
        emb = emb.repeat_interleave(int(n), 0)
        return self.sample_in_chunks(
            len(emb),
            lambda rows, gen: self.sample(
                None if text is None else text[rows], emb[rows], scale, steps, sampler, eta, gen
            ),
            seed,
            generator,
            batch_size,
        )

    @torch.no_grad()
    def generate_from_embeddings(
        self, image_emb: torch.Tensor, captions: Optional[Sequence[str]] = None, **kwargs
    ) -> torch.Tensor:
        """The unCLIP pipeline's call: decode CLIP image embeddings (B, clip_dim), captions optional."""
        return self.generate(captions, image_emb, **kwargs)

    def model_fn(self, *args, **kwargs):
        raise NotImplementedError(
            "the unCLIP decoder is conditioned on image embeddings: GlideLit.model_fn would run it on the caption "
            "alone, without the embedding's timestep projection and 4 context tokens (not even the null embedding's); "
            "use decoder_model_fn(text_tokens, image_emb, scale) (CLIP guidance guides a GLIDE model, not the decoder)"
        )

    def sample_tokens(self, *args, **kwargs):
        raise NotImplementedError(
            "the unCLIP decoder samples from image embeddings: use sample(text_tokens, "
            "image_emb) or generate(captions, image_emb)"
        )

    def candidates(self, captions, n, seed=0, **kwargs):
        raise NotImplementedError(
            "the unCLIP decoder needs image embeddings: use generate(captions, image_emb) "
            "or the unCLIP pipeline (prior -> decoder)"
        )

    @torch.no_grad()
    def sample_grid(self, batch: dict[str, Any]) -> torch.Tensor:
        """Real val image | decoded from its CLIP embedding and caption, for the first ``grid_captions``; fixed seed."""
        n = min(int(self.hparams.grid_captions), len(batch["image"]))
        gen = torch.Generator(device=self.device).manual_seed(0)
        emb = self.image_embedding({k: v[:n] for k, v in batch.items() if k in ("image", "clip_image_emb")})
        fake = self.sample(
            batch["text_tokens"][:n],
            emb,
            decoder_guidance_scale=self.hparams.grid_guidance_scale,
            steps=self.hparams.grid_steps,
            sampler="ddim",
            eta=0.0,
            generator=gen,
        )
        real = batch["image"][:n].float().to(fake.device)
        if real.shape[-2:] != fake.shape[-2:]:
            real = F.interpolate(real, size=fake.shape[-2:], mode="bilinear", antialias=True)
        return torch.stack([real, fake], 1).flatten(0, 1)
