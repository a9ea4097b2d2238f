"""Training and sampling GLIDE with Lightning.

Training (Improved DDPM, as GLIDE): a cosine schedule of ``num_timesteps`` (1000) steps, eps prediction, learned-range
variance and the hybrid loss (L_simple + 0.001 L_vlb), all through ``zoo.diffusion.GaussianDiffusion``. Text tokens
are the DataModule's ``text_tokens`` (``data/tokenizer=bpe`` or ``clip_bpe``), right-padded to the model's
``text_len``. With probability ``text_dropout`` (GLIDE: 20%) a training caption is replaced by the empty caption
(all pads, ``Glide.null_tokens``): the null condition of classifier-free guidance.

Sampling (``generate``): the text is encoded once; each step runs ONE batched forward over [cond ; uncond] (2B) and
``zoo.nn.guidance.guide_learned_variance`` guides the eps half (the variance half comes from the conditional output,
as in GLIDE). At ``guidance_scale == 1`` the unconditional half is skipped: the guided output would be exactly the
conditional one (``torch.lerp`` at weight 1), so skipping it changes nothing but the cost. Samplers: ``ddim`` (eta),
``ddpm`` (ancestral, with the learned variance re-derived on the respaced schedule) or any diffusers scheduler by
class name or alias (``DPMSolverMultistepScheduler``, ``dpm++``, ``euler``, ``unipc``; the learned variance is dropped).

Inpainting (``inpaint=True``, ``model=glide_inpaint``; PAPER_FACTS "GLIDE"): the network takes the masked image and
the mask (1 = known) as 4 extra input channels (``Glide.inpaint_input``). Every training image gets a random mask from
``zoo.data.masks.random_masks`` (rectangles, brush strokes, or everything erased; ``inpaint_masks`` overrides
``MaskConfig`` fields); the loss is the ordinary one on the whole image. At sampling (``inpaint``) the known pixels are
given as input (GLIDE) and, with ``replace_known`` (default), also re-imposed after every step through the samplers'
known-region hook, so the result holds them exactly. A plain model inpaints by the hook alone.

Self-contained checkpoints: ``on_save_checkpoint`` adds ``text_tokenizer`` (the tokenizer's plain-value spec, e.g.
the BPE's tokenizer.json as a string), so ``zoo.checkpoint.load_module(ckpt).generate([...])`` needs no file.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from zoo.data.masks import mask_config, random_masks
from zoo.diffusion.noise import (
    CANDIDATE_BATCH,
    candidates_per_batch,
    sampler_takes_row_generators,
    seeded_row_generators,
)
from zoo.diffusion.process import GaussianDiffusion, check_snr_gamma
from zoo.diffusion.samplers import check_sampling_knobs, ddim_sample, ddpm_sample, in_row_slices
from zoo.diffusion.schedules import get_schedule
from zoo.errors import ConfigError, check_rate, check_switch, check_whole
from zoo.models.base import TextTokenizerLit, check_text_tokenizer, resolve_preset, text_tokenizer_sizes, unmet_sizes
from zoo.models.glide.model import GLIDE_PRESETS, Glide, GlideConfig
from zoo.nn.guidance import guide_learned_variance
from zoo.pipelines.candidates import seeded_candidates
from zoo.text import TextTokenizer

log = logging.getLogger(__name__)

SAMPLERS = ("ddim", "ddpm")  # ours; any other name goes to zoo.diffusion.diffusers_adapter


def build_config(preset: str = "shapes", net: Optional[dict[str, Any]] = None) -> GlideConfig:
    return resolve_preset(GLIDE_PRESETS, GlideConfig, preset, net, "GLIDE")


PREDICTIONS = ("eps", "v")


def check_prediction(prediction: str) -> str:
    """``model.prediction`` for the text-to-image diffusion models (GLIDE, the unCLIP decoder): eps or v."""
    if prediction not in PREDICTIONS:
        raise ConfigError(
            f"model.prediction must be one of {PREDICTIONS} (eps: GLIDE's; v: v-prediction), got {prediction!r}"
        )
    return prediction


def run_sampler(
    process: GaussianDiffusion,
    fn,
    shape,
    steps: int,
    sampler: str,
    eta: float,
    generator: Optional[torch.Generator],
    device,
    x_T: Optional[torch.Tensor] = None,
    known: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
) -> torch.Tensor:
    """``ddim`` (``eta``) | ``ddpm``, respaced to ``steps`` | a diffusers scheduler name (``steps`` of it) over
    ``process`` -> x_0 of ``shape``. ``known=(image, mask)`` re-imposes the known pixels (ddim / ddpm only)."""
    # images live in [-1, 1]: clip the predicted x0 at every step, as GLIDE / ADM sample
    kwargs = dict(generator=generator, device=device, x_T=x_T, known=known, clip_denoised=True)
    if sampler == "ddim":
        return ddim_sample(process.respaced(steps), fn, shape, eta=eta, **kwargs)
    if sampler == "ddpm":
        return ddpm_sample(process.respaced(steps), fn, shape, **kwargs)
    if known is not None:
        raise ValueError(
            f"re-imposing known pixels needs sampler=ddim or ddpm, not {sampler!r} (or "
            f"replace_known=False with an inpainting model)"
        )
    from zoo.diffusion.diffusers_adapter import diffusers_sample

    return diffusers_sample(
        process, fn, shape, scheduler=sampler, steps=steps, generator=generator, device=device, x_T=x_T
    )


def _rows(cond: dict[str, Any], rows: slice) -> dict[str, Any]:
    """The conditioning of some rows of a per-row dict (``Glide.encode_text``'s)."""
    return {k: v[rows] if torch.is_tensor(v) else v for k, v in cond.items()}


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """``module`` in eval mode inside the block (no U-Net / text dropout), its training mode restored after: sampling
    is deterministic given the generator whatever mode the caller left the module in."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def sampling_in_eval_mode(method):
    """A sampling method of a module run under ``eval_mode(self)``: the caption encoding and every denoiser step."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with eval_mode(self):
            return method(self, *args, **kwargs)

    return wrapper


def check_grid_captions(grid_captions: Any) -> None:
    """``model.grid_captions`` (GLIDE and the unCLIP decoder): 0 failed after the first training epoch (sample_grid's
    reshape of no images), -1 drew len - 1 grid rows."""
    why = "val captions in each sample grid"
    check_whole("model.grid_captions", grid_captions, 1, "8; no sample grids at all: ~callbacks.sample_grid", why=why)


class GlideLit(TextTokenizerLit):
    """Args:
    preset: ``tiny`` | ``shapes`` | ``paper`` (``zoo.models.glide.model.GLIDE_PRESETS``); ``net`` overrides fields.
    text_dropout: probability of replacing a training caption by the empty caption (GLIDE: 0.2).
    num_timesteps, schedule: the training diffusion process (cosine, 1000).
    prediction: what the U-Net's first C channels predict: ``eps`` (GLIDE, the default) or ``v`` (√ᾱ·ε − √(1−ᾱ)·x0,
        Salimans & Ho). ε-prediction weights the error of the predicted image by the SNR, i.e. next to nothing at
        the high noise levels where a sample's layout and colours are decided; v gives those steps weight ≥ 1. Guidance, learned variance
        and every sampler work with either (guidance is affine in the output, so guiding v is guiding ε).
    snr_gamma: null, or γ for Min-SNR-γ loss weighting (Hang et al. 2023; ``GaussianDiffusion``'s docstring): the
        x_0 error weighted by min(SNR, γ) whatever ``prediction`` is, so nearly clean steps stop dominating.
    guidance_scale, sample_steps, sampler, eta: ``generate``'s defaults.
    grid_captions, grid_steps, grid_guidance_scale: ``sample_grid`` (real | sample pairs of val captions).
    inpaint: the inpainting model (masked image + mask as 4 extra U-Net input channels; trained on random masks).
    inpaint_masks: ``zoo.data.masks.MaskConfig`` overrides for the training masks (e.g. ``{rect_prob: 0.5}``).
    replace_known: ``inpaint``'s default: also re-impose the known pixels after every sampling step.
    text_init: not GLIDE's: a ``zoo-train model=clip`` checkpoint whose text tower initialises the caption encoder
        (a pretrained text encoder, as Imagen uses; GLIDE learns its own from the diffusion loss). Read once, when
        training starts (``check_data``; a resumed run then restores its own weights); sampling from the trained
        checkpoint never reads it. Needs ``data/tokenizer=clip_bpe`` and the CLIP's text shape in ``model.net``
        (``experiment=glide/clip_text``).
    freeze_text: keep the initialised caption encoder fixed (Imagen's frozen encoder); the projections into the
        U-Net still train. Needs ``text_init``.
    text_tokenizer: filled in by the checkpoint (leave None when training).
    """

    compile_module = "net"  # compile=true: the training step is one call of net (inside the diffusion loss)

    grid_nrow = 8  # 4 real | sample pairs per row

    def __init__(
        self,
        preset: str = "shapes",
        net: Optional[dict[str, Any]] = None,
        text_dropout: float = 0.2,
        num_timesteps: int = 1000,
        schedule: str = "cosine",
        prediction: str = "eps",
        snr_gamma: Optional[float] = None,
        guidance_scale: float = 3.0,
        sample_steps: int = 50,
        sampler: str = "ddim",
        eta: float = 0.0,
        grid_captions: int = 8,
        grid_steps: int = 25,
        grid_guidance_scale: float = 3.0,
        inpaint: bool = False,
        inpaint_masks: Optional[dict[str, Any]] = None,
        replace_known: bool = True,
        text_init: Optional[str] = None,
        freeze_text: bool = False,
        text_tokenizer: Optional[dict[str, Any]] = None,
        optimizer=None,
        scheduler=None,
    ):
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "text_tokenizer"])
        check_rate("model.text_dropout", text_dropout, "0.2")
        for key, value in (("model.inpaint", inpaint), ("model.replace_known", replace_known)):
            check_switch(key, value)
        self.cfg = build_config(preset, net)
        if inpaint and not self.cfg.inpaint:
            self.cfg = replace(self.cfg, inpaint=True)  # model.inpaint=true is model.net.inpaint=true
        try:
            self.mask_cfg = mask_config(inpaint_masks)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model.inpaint_masks: {e}") from None
        if not self.cfg.learn_sigma:
            raise ConfigError("GLIDE trains a learned-range variance (hybrid loss): keep model.net.learn_sigma=true")
        self.net = Glide(self.cfg)
        self.freeze_text_encoder(text_init, freeze_text)
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
                "model.guidance_scale": guidance_scale,
                "model.grid_steps": grid_steps,
                "model.grid_guidance_scale": grid_guidance_scale,
            },
        )
        check_grid_captions(grid_captions)
        self.text_dropout = float(text_dropout)
        self.text_tokenizer: Optional[TextTokenizer] = TextTokenizer.from_spec(text_tokenizer)

    def default_optimizer(self, params) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=1e-4)

    def freeze_text_encoder(self, text_init: Optional[str], freeze_text: bool) -> None:
        """``model.freeze_text``: fix the caption encoder (``self.net.text``) that ``text_init`` initialises."""
        check_switch("model.freeze_text", freeze_text)
        if freeze_text and not text_init:
            raise ConfigError(
                "model.freeze_text=true freezes a caption encoder initialised from a CLIP: give model.text_init="
                "<zoo-train model=clip last.ckpt> (or model.freeze_text=false)"
            )
        if freeze_text:  # the default optimizer takes only parameters with requires_grad
            self.net.text.requires_grad_(False)

    # ------------------------------------------------------------------------------------------ tokenizer / data
    def data_sizes(self, datamodule) -> dict[str, Any]:
        """The text tokenizer's vocabulary / context length / pad id and data.resolution (when the U-Net's levels
        divide it; otherwise check_data refuses it with the fix)."""
        sizes: dict[str, Any] = text_tokenizer_sizes(datamodule, self.cfg)
        res = getattr(datamodule, "resolution", None)
        if res is not None and res % self.cfg.unet_config().divisor == 0:
            sizes.update(unmet_sizes(self.cfg, {"image_size": int(res)}))
        return sizes

    def check_inpaint_masks(self) -> None:
        """Training mask overrides (``inpaint_masks``) on a text-to-image model (``inpaint`` false): the masks are
        drawn only for an inpainting model, so ``model.inpaint_masks={rect_prob: 0.5}`` on ``model=glide`` trained a
        plain GLIDE without a word. Refused before training (``check_data``, ``setup("fit")``), not in the
        constructor: a checkpoint saved with such hyper-parameters still loads and samples (it is a plain model)."""
        masks = self.hparams.get("inpaint_masks")
        if masks and not self.cfg.inpaint:
            raise ConfigError(
                f"model.inpaint_masks={dict(masks)} sets the inpainting training masks but this GLIDE is "
                f"text-to-image (model.inpaint=false): no mask would be drawn (fix: model.inpaint=true or "
                f"model=glide_inpaint for the inpainting model, or model.inpaint_masks={{}})"
            )

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":  # a Trainer.fit outside zoo-train (which has refused it in check_data already)
            self.check_inpaint_masks()
            self.warn_untrained_null(self.guidance_scales())

    def guidance_scales(self) -> dict[str, float]:
        """The classifier-free guidance scales this module samples with (option -> scale): what
        ``warn_untrained_null`` checks at training."""
        hp = self.hparams
        return {"model.guidance_scale": hp.guidance_scale, "model.grid_guidance_scale": hp.grid_guidance_scale}

    def warn_untrained_null(self, scales: dict[str, float]) -> None:
        """A WARNING when this model never trained the empty caption (``text_dropout=0``) but ``scales`` (name ->
        classifier-free guidance scale) guide with it: the guided sample extrapolates from an unconditional model
        that was never trained (GLIDE drops 20% of captions for exactly this)."""
        guided = {k: v for k, v in scales.items() if v is not None and v != 1}
        if self.text_dropout == 0 and guided:
            log.warning(
                "this GLIDE has text_dropout=0, so its empty caption is never trained, but %s guide with it: "
                "classifier-free guidance extrapolates from an untrained unconditional model (fix: train with "
                "model.text_dropout=0.2, GLIDE's, or sample with a guidance scale of 1)",
                ", ".join(f"{k}={v}" for k, v in guided.items()),
            )

    def check_data(self, datamodule) -> None:
        """Text tokens present and compatible with the text encoder; data resolution == the model's image_size.
        Keeps the DataModule's tokenizer (it goes into the checkpoint)."""
        self.check_inpaint_masks()
        c = self.cfg
        tok = check_text_tokenizer(datamodule, c.text_vocab, c.text_len, c.pad_id, "GLIDE")
        eot = getattr(tok, "eot_id", None)
        if c.text_pool == "argmax" and (eot is None or eot != tok.vocab_size - 1):
            # argmax pooling finds the end-of-text token as the highest id (CLIP BPE's 49407); under another
            # tokenizer it reads the caption's highest-id word, which a causal encoder has not shown the words after
            raise ConfigError(
                f"model.net.text_pool=argmax reads the caption at its highest token id, CLIP BPE's end-of-text, but "
                f"{type(tok).__name__}'s end-of-text is {eot} of {tok.vocab_size} ids: the final-token path would "
                f"read a word in the middle of the caption (fix: model.net.text_pool=last, or data/tokenizer=clip_bpe)"
            )
        self.check_resolution(datamodule)
        self.text_tokenizer = tok
        if self.hparams.get("text_init"):
            self.init_text_from_clip(str(self.hparams.text_init), tok)

    def check_resolution(self, datamodule) -> None:
        """data.resolution == the model's image_size."""
        c = self.cfg
        res = getattr(datamodule, "resolution", None)
        if res is not None and res != c.image_size:
            raise ConfigError(
                f"data.resolution={res} but the GLIDE model is built for {c.image_size} px "
                f"(fix: model.net.image_size={res} if {res} is divisible by "
                f"{c.unet_config().divisor} and by every attention resolution, or data.resolution="
                f"{c.image_size})"
            )

    def tiny_fits_data(self) -> bool:
        """Whether zoo-train's fit_tiny_to_data may still give the network the data's sizes (model.preset=tiny):
        it runs after the data's BPE is fitted, so check_image_data leaves those sizes to check_data."""
        return self.hparams.get("preset") == "tiny"

    def check_image_data(self, datamodule) -> None:
        """The checks of ``check_data`` that need no text tokenizer: zoo-train runs them before fitting the data's
        BPE, which it fitted before refusing a 32 px GLIDE at data.resolution=48 (found: zoo-train model=glide
        data=folder data/tokenizer=bpe data.resolution=48). The inpainting masks, and the resolution unless a tiny
        preset takes it (its U-Net's levels divide it: data_sizes) once the tokenizer is there."""
        self.check_inpaint_masks()
        res = getattr(datamodule, "resolution", None)
        if not (self.tiny_fits_data() and res is not None and res % self.cfg.unet_config().divisor == 0):
            self.check_resolution(datamodule)

    def init_text_from_clip(self, path: str, tok) -> None:
        """Copy the text tower of the CLIP checkpoint at ``path`` into the caption encoder (``text_init``). The
        batches must be tokenised as that CLIP tokenises (CLIP BPE)."""
        from zoo.models.clip.scorer import ClipScorer
        from zoo.text import ClipBPETokenizer

        if not isinstance(tok, ClipBPETokenizer):
            raise ConfigError(
                f"model.text_init copies a CLIP text tower, which reads CLIP BPE tokens, but the data is tokenised "
                f"by {type(tok).__name__} (fix: data/tokenizer=clip_bpe data.tokenizer.context_length="
                f"{self.cfg.text_len})"
            )
        if not Path(path).is_file():
            raise ConfigError(f"model.text_init: no file {path} (fix: a zoo-train model=clip last.ckpt)")
        clip = ClipScorer.from_lightning_checkpoint(path)
        try:
            self.net.text.load_clip_text(clip.model)
        except ValueError as e:
            raise ConfigError(f"model.text_init={path}: {e}") from None
        log.info(
            "caption encoder initialised from the CLIP text tower of %s%s",
            path,
            " (frozen)" if self.hparams.get("freeze_text") else "",
        )

    def encode_captions(self, captions: Sequence[str]) -> torch.Tensor:
        """Captions -> (B, text_len) token ids on the module's device."""
        if self.text_tokenizer is None:
            raise RuntimeError("no text tokenizer: train with data/tokenizer=bpe (it is stored in the checkpoint)")
        return self.net.pad_text(self.text_tokenizer.encode(list(captions))).to(self.device)

    def drop_captions(self, text: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Replace each caption (B, text_len) by the empty caption with probability ``text_dropout``."""
        if self.text_dropout <= 0:
            return text
        drop = torch.rand(text.shape[0], device=text.device, generator=generator) < self.text_dropout
        return torch.where(drop[:, None], self.net.null_tokens(text.shape[0], text.device), text)

    # ------------------------------------------------------------------------------------------ training
    @property
    def is_inpainting_model(self) -> bool:
        return bool(self.cfg.inpaint)

    def inpaint_kwargs(self, x0: torch.Tensor, generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        """The network's inpainting inputs for a training batch x0 (B, C, H, W): random masks (1 = known) and the
        images; {} for a plain model (so its random stream is untouched). Masks are drawn on the CPU: from a CPU
        generator seeded by ``generator`` when given, else from torch's global RNG."""
        if not self.cfg.inpaint:
            return {}
        g = None
        if generator is not None:
            seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
            g = torch.Generator().manual_seed(seed)
        mask = random_masks(
            x0.shape[0], x0.shape[-1], generator=g, cfg=getattr(self, "mask_cfg", None), device=x0.device
        )
        return {"inpaint_image": x0, "inpaint_mask": mask.to(x0.dtype)}

    def forward_loss(
        self, batch: dict[str, Any], train: bool, generator: Optional[torch.Generator] = None
    ) -> dict[str, torch.Tensor]:
        x0 = batch["image"].float()
        text = self.net.pad_text(batch["text_tokens"].to(x0.device))
        if train:
            text = self.drop_captions(text, generator)
        kwargs = {"text_tokens": text, **self.inpaint_kwargs(x0, generator)}
        t = self.process.sample_timesteps(x0.shape[0], device=x0.device, generator=generator)
        terms = self.process.training_losses(self.net, x0, t, model_kwargs=kwargs, generator=generator)
        return {k: v.mean() for k, v in terms.items()}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        r = self.forward_loss(batch, train=True)
        self.log_metrics("train", r, batch_size=len(batch["image"]))
        return r["loss"]

    def eval_step(self, batch: dict[str, Any], stage: str) -> None:
        # fixed timesteps and noise, so successive validations are comparable
        gen = torch.Generator(device=self.device).manual_seed(0)
        r = self.forward_loss(batch, train=False, generator=gen)
        self.log_metrics(stage, r, batch_size=len(batch["image"]))

    # ------------------------------------------------------------------------------------------ sampling
    def model_fn(
        self, text_tokens: torch.Tensor, guidance_scale: Optional[float], inpaint: Optional[torch.Tensor] = None
    ):
        """The sampler's ``model_fn(x_t, t)`` for captions (B, text_len): conditional at scale None or 1, else
        classifier-free guided with one batched [cond ; uncond] forward per step. ``inpaint``: the inpainting
        model's extra channels (``Glide.inpaint_input``, (B, C + 1, H, W)), given to both halves."""
        b = text_tokens.shape[0]

        def encode(guided: bool) -> dict[str, torch.Tensor]:
            if not guided:
                cond = self.net.encode_text(text_tokens)
                if inpaint is not None:
                    cond["inpaint"] = inpaint
                return cond
            both = self.net.encode_text(torch.cat([text_tokens, self.net.null_tokens(b, text_tokens.device)]))
            if inpaint is not None:
                both["inpaint"] = torch.cat([inpaint, inpaint])
            return both

        return self.guided_model_fn(encode, guidance_scale)

    def guided_model_fn(self, encode: Callable[[bool], dict[str, torch.Tensor]], guidance_scale: Optional[float]):
        """``model_fn(x_t, t)`` over ``self.net.denoise``: at scale None or 1 the conditional model with
        ``encode(False)``'s conditioning; else classifier-free guided, one batched forward per step over
        ``encode(True)``'s [cond ; uncond] conditioning (2B rows), eps guided, variance from the conditional half."""
        m = CANDIDATE_BATCH  # images per network call: larger calls are slower per image on a CPU (noise.py)
        if guidance_scale is None or guidance_scale == 1.0:
            cond = encode(False)
            return lambda x, t: in_row_slices(len(x), m, lambda r: self.net.denoise(x[r], t[r], _rows(cond, r)))
        both = encode(True)

        def guided_rows(x: torch.Tensor, t: torch.Tensor, r: slice) -> torch.Tensor:
            b = len(x)  # ``both`` holds the [cond ; uncond] conditioning of images r at rows r and b + r
            pair = both if r == slice(0, b) else {k: torch.cat([v[r], v[b:][r]]) for k, v in both.items()}
            out = self.net.denoise(torch.cat([x[r], x[r]]), torch.cat([t[r], t[r]]), pair)  # (2 rows, 2C, H, W)
            c, u = out.float().chunk(2, dim=0)
            return guide_learned_variance(u, c, guidance_scale, dim=1)

        return lambda x, t: in_row_slices(len(x), m, lambda r: guided_rows(x, t, r))

    @torch.no_grad()
    @sampling_in_eval_mode  # no dropout in the samples, even on a module left in training mode
    def sample_tokens(
        self,
        text_tokens: torch.Tensor,
        guidance_scale: Optional[float] = None,
        steps: Optional[int] = None,
        sampler: Optional[str] = None,
        eta: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
        x_T: Optional[torch.Tensor] = None,
        *,
        inpaint_image: Optional[torch.Tensor] = None,
        inpaint_mask: Optional[torch.Tensor] = None,
        replace_known: Optional[bool] = None,
    ) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] for text tokens (B, <= text_len) (defaults from the hyper-parameters).

        Inpainting: ``inpaint_image`` (B, 3, H, W) in [-1, 1] and ``inpaint_mask`` (B or 1, 1, H, W), 1 = known.
        The inpainting model gets them as input channels; with ``replace_known`` (default ``hparams.replace_known``;
        always for a plain model) the known pixels are also re-imposed after every step (``known_region``: the
        result holds them exactly; ddim / ddpm only)."""
        hp = self.hparams
        scale = hp.guidance_scale if guidance_scale is None else guidance_scale
        steps = int(hp.sample_steps if steps is None else steps)
        sampler = hp.sampler if sampler is None else sampler
        eta = float(hp.eta if eta is None else eta)
        text = self.net.pad_text(text_tokens.to(self.device))
        c = self.cfg
        shape = (text.shape[0], c.out_channels, c.image_size, c.image_size)
        known = None
        if (inpaint_image is None) != (inpaint_mask is None):
            raise ValueError("give both inpaint_image and inpaint_mask, or neither")
        if inpaint_image is None:
            fn = self.model_fn(text, scale)
        else:
            image = inpaint_image.to(self.device, torch.float32)
            mask = inpaint_mask.to(self.device, torch.float32)
            if image.shape[1:] != shape[1:] or mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[-2:] != shape[-2:]:
                raise ValueError(
                    f"inpainting needs image (B, {c.out_channels}, {c.image_size}, {c.image_size}) and "
                    f"mask (B, 1, {c.image_size}, {c.image_size}); got {tuple(image.shape)} and "
                    f"{tuple(mask.shape)} (resize to the model's image_size)"
                )
            if mask.numel() and not (0 <= float(mask.min()) and float(mask.max()) <= 1):
                # a 0/255 mask (a mask image's pixels) would weight the known pixels by 255: lerp extrapolates
                raise ValueError(
                    f"inpainting mask values must be in [0, 1] (1 = known, 0 = to generate), got "
                    f"{float(mask.min()):g}..{float(mask.max()):g} (a 0/255 mask: mask / 255)"
                )
            image, mask = image.expand(shape), mask.expand(shape[0], 1, *shape[-2:])
            replace_known = bool(hp.get("replace_known", True) if replace_known is None else replace_known)
            if self.cfg.inpaint:
                fn = self.model_fn(text, scale, inpaint=self.net.inpaint_input(image, mask))
            elif not replace_known:
                raise ValueError(
                    "a plain GLIDE model inpaints only by re-imposing the known pixels "
                    "(replace_known=True); replace_known=False needs an inpainting model (model.inpaint)"
                )
            else:
                fn = self.model_fn(text, scale)
            known = (image, mask) if replace_known else None
        x = run_sampler(self.process, fn, shape, steps, sampler, eta, generator, self.device, x_T, known)
        return x.float().clamp(-1, 1)

    @torch.no_grad()
    def generate(
        self,
        captions: Sequence[str],
        n: int = 1,
        seed: int = 0,
        guidance_scale: Optional[float] = None,
        steps: Optional[int] = None,
        sampler: Optional[str] = None,
        eta: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
        batch_size: int = 64,
    ) -> torch.Tensor:
        """``n`` images per caption -> FloatTensor (len(captions) * n, 3, H, W) in [-1, 1], caption-major.

        ``guidance_scale`` (default ``hparams.guidance_scale``, 3.0): 1 is the plain conditional model;
        ``sampler``: ``ddim`` | ``ddpm`` | a diffusers scheduler name; ``steps``: respaced sampling steps (DDIM /
        DDPM) or scheduler steps. Deterministic given ``seed`` (one generator over the chunks of ``batch_size``)."""
        if isinstance(captions, str):
            captions = [captions]
        text = self.encode_captions(captions).repeat_interleave(int(n), 0)  # (B * n, text_len)
        return self.sample_in_chunks(
            len(text),
            lambda rows, gen: self.sample_tokens(text[rows], guidance_scale, steps, sampler, eta, gen),
            seed,
            generator,
            batch_size,
        )

    def sample_in_chunks(
        self,
        n_rows: int,
        sample_rows: Callable[[slice, torch.Generator], torch.Tensor],
        seed: int,
        generator: Optional[torch.Generator],
        batch_size: int,
    ) -> torch.Tensor:
        """``sample_rows(rows, gen)`` over the chunks of ``batch_size`` of ``n_rows`` rows, concatenated, in eval
        mode (the training mode is restored after). One generator over all chunks (``generator``, else one seeded
        with ``seed``), so the result is deterministic given ``seed``."""
        with eval_mode(self):
            gen = generator if generator is not None else torch.Generator(device=self.device).manual_seed(int(seed))
            return torch.cat([sample_rows(slice(i, i + batch_size), gen) for i in range(0, n_rows, batch_size)])

    @torch.no_grad()
    def inpaint(
        self,
        captions: Sequence[str],
        image: torch.Tensor,
        mask: torch.Tensor,
        n: int = 1,
        seed: int = 0,
        guidance_scale: Optional[float] = None,
        steps: Optional[int] = None,
        sampler: Optional[str] = None,
        eta: Optional[float] = None,
        replace_known: Optional[bool] = None,
        generator: Optional[torch.Generator] = None,
        batch_size: int = 64,
    ) -> torch.Tensor:
        """Fill the erased pixels (mask 0) of ``image`` (B or 1, 3, H, W) in [-1, 1] under ``captions`` (B):
        ``n`` per caption -> (B * n, 3, H, W), caption-major. ``mask`` (B or 1, 1, H, W), 1 = known. The inpainting
        model takes them as input (and re-imposes them with ``replace_known``); a plain model re-imposes them at
        every step (known-region inpainting). Other arguments as ``generate``."""
        if isinstance(captions, str):
            captions = [captions]
        b = len(captions)
        if image.shape[0] not in (1, b) or mask.shape[0] not in (1, b):
            raise ValueError(
                f"{b} captions but {image.shape[0]} images and {mask.shape[0]} masks (give one, or one per caption)"
            )
        image = image.expand(b, *image.shape[1:]).repeat_interleave(int(n), 0)
        mask = mask.expand(b, *mask.shape[1:]).repeat_interleave(int(n), 0)
        text = self.encode_captions(captions).repeat_interleave(int(n), 0)  # (B * n, text_len)
        return self.sample_in_chunks(
            len(text),
            lambda rows, gen: self.sample_tokens(
                text[rows],
                guidance_scale,
                steps,
                sampler,
                eta,
                gen,
                inpaint_image=image[rows],
                inpaint_mask=mask[rows],
                replace_known=replace_known,
            ),
            seed,
            generator,
            batch_size,
        )

    @torch.no_grad()
    def candidates(
        self, captions: Sequence[str], n: int, seed: int = 0, progress: Optional[bool] = False, **kwargs
    ) -> torch.Tensor:
        """(len(captions), n, 3, H, W): candidate i is ``generate(captions, seed=seed + i, **kwargs)`` (``kwargs``:
        ``generate``'s knobs): the same noise whatever n is (nested reranking curves, as ``zoo.pipelines.base``
        asks), the same image to float rounding.

        With ``ddim`` / ``ddpm`` several candidates share a denoiser call (up to ``CANDIDATE_BATCH`` = 16 images,
        never more than ``batch_size``), each candidate's rows drawing from its own seed's generator
        (``zoo.diffusion.noise.RowGenerators``). Measured on the shapes GLIDE (``bench/bench_candidates.py``, 8
        candidates): 1.46x (one thread) and 1.50x (two) for one caption, 1.13-1.25x for 2-4. The deterministic
        diffusers schedulers (``dpm++``, ``unipc``: only x_T is random) batch too; a stochastic one (``euler``,
        the diffusers ``ddpm``), an explicit ``generator`` (one stream for all candidates) or 16+ captions draw one
        candidate at a time."""
        if isinstance(captions, str):
            captions = [captions]
        sampler = self.hparams.sampler if kwargs.get("sampler") is None else kwargs["sampler"]
        batched = kwargs.get("generator") is None and sampler_takes_row_generators(self.process, sampler)
        per_batch = candidates_per_batch(len(captions), kwargs.get("batch_size", 64)) if batched else 1
        knobs = {k: v for k, v in kwargs.items() if k not in ("generator", "batch_size")}  # sample_tokens' own

        def draw(caps: list[str], seeds: list[int]) -> torch.Tensor:
            if len(seeds) == 1:
                return self.generate(caps, 1, seeds[0], **kwargs)
            text = self.encode_captions(caps).repeat(len(seeds), 1)  # candidate-major
            gens = seeded_row_generators(len(caps), seeds, self.device)
            return self.sample_in_chunks(
                len(text), lambda rows, gen: self.sample_tokens(text[rows], generator=gen, **knobs), 0, gens, len(text)
            )

        return seeded_candidates(draw, captions, n, seed, per_batch, progress, "glide sample")

    @torch.no_grad()
    def sample_grid(self, batch: dict[str, Any]) -> torch.Tensor:
        """Real val image | sample for the first ``grid_captions`` val captions (pairs, row-major); fixed seed.
        The inpainting model shows masked real image (erased pixels grey) | inpainted, with fixed masks."""
        n = min(int(self.hparams.grid_captions), len(batch["image"]))
        gen = torch.Generator(device=self.device).manual_seed(0)
        real = batch["image"][:n].float().to(self.device)
        size = self.cfg.image_size
        if real.shape[-2:] != (size, size):
            real = F.interpolate(real, size=(size, size), mode="bilinear", antialias=True)
        inpaint = {}
        if self.cfg.inpaint:
            mask = random_masks(
                n,
                size,
                generator=torch.Generator().manual_seed(0),
                cfg=getattr(self, "mask_cfg", None),
                device=self.device,
            )
            inpaint = {"inpaint_image": real, "inpaint_mask": mask}
        fake = self.sample_tokens(
            batch["text_tokens"][:n],
            guidance_scale=self.hparams.grid_guidance_scale,
            steps=self.hparams.grid_steps,
            sampler="ddim",
            eta=0.0,
            generator=gen,
            **inpaint,
        )
        left = real * inpaint["inpaint_mask"] if inpaint else real
        return torch.stack([left, fake], 1).flatten(0, 1)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())
