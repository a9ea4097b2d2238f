"""unCLIP (DALL·E 2) inference: caption -> CLIP text embedding -> prior -> decoder -> upsamplers; image manipulations.

    pipe = UnclipPipeline.from_checkpoints(prior_ckpt, decoder_ckpt, clip_ckpt, upsampler_ckpts=[up_ckpt],
                                           prior_guidance_scale=1.0, decoder_guidance_scale=1.25)
    images = pipe.generate(["a large red circle at the top left"])      # (1, 3, H, W) in [-1, 1]
    cands = pipe.candidates(captions, 4)                                  # (B, 4, 3, H, W), candidate i: seed + i
    vars_ = pipe.variations(image, n=4, eta=0.5)                          # (B, 4, 3, H, W)
    strip = pipe.interpolate(image_a, image_b, n_steps=5, latent="slerp")  # (B, 5, 3, H, W)
    diff = pipe.text_diff(image, "a red circle", "a blue circle", n_steps=5)  # (B, 5, 3, H, W)

Stages (PAPER_FACTS "unCLIP"): P(x|y) = P(x|z_i, y) P(z_i|y).

1. CLIP (``ClipScorer`` of ``clip_ckpt``): the caption's L2-normalised text embedding z_t and its CLIP token ids
   (the prior's inputs; a prior with ``text_input="encodings"`` gets the text tower's per-token outputs too,
   ``zoo.models.clip.model.text_token_encodings``).
2. ``prior``: ``diffusion`` (``DiffusionPriorLit.sample``: ``prior_steps`` DDIM steps, ``prior_guidance_scale``,
   best of ``prior_n_candidates`` by dot product with z_t, ``prior_eta``) | ``ar`` (``ARPriorLit.sample``:
   ``prior_guidance_scale``; ``prior_steps`` does not apply) | ``text_emb`` (z_t used as if it were the image
   embedding: the paper's ablation baseline, no prior checkpoint needed) | ``none`` (the zero embedding: the decoder's
   learned "no embedding" input, i.e. caption only). ``None`` picks the loaded prior's kind.
3. ``decoder`` (``UnclipDecoderLit.sample``): the caption's tokens from the decoder's OWN tokenizer (stored in its
   checkpoint, ``encode_captions``), the embedding, ``decoder_guidance_scale``, ``decoder_steps``,
   ``decoder_sampler``, ``decoder_eta``.
4. ``upsampler`` (``UpsamplerLit.upsample``, one per checkpoint in ``upsampler_ckpts``, in order):
   ``upsampler_steps`` (an int for all, or one per upsampler; None = each checkpoint's 27 / 15), ``upsampler_eta``,
   ``upsampler_tile`` (None = each checkpoint's ``sample_tile``; 0 = the whole image; ``train_crop`` or a side:
   overlapping windows of that size, ``UpsamplerLit``'s docstring says why).

``stages`` says which stages run: any of ``prior``, ``decoder``, ``upsampler`` (all upsamplers) or ``upsampler1``,
``upsampler2``... (one). The decoder always runs; without ``prior`` in ``stages`` the embedding must come from
``prior=text_emb`` or ``prior=none``. ``embeddings(captions)`` gives the prior stage's output alone.

Randomness and reranking (``zoo.pipelines.base`` conventions): candidate i of every caption runs the whole chain with
one ``torch.Generator`` seeded ``seed + i`` (prior noise, decoder noise, upsampler noise in that order), so it is a
pure function of (seed, captions, knobs) and does not depend on how many candidates are drawn. With a ``ddim``,
``ddpm``, ``dpm++`` or ``unipc`` decoder sampler the candidates share the diffusion prior's, the decoder's and the
upsamplers' batches (up to 16 images, within ``batch_size``), each candidate's rows drawing from its own generator
(``zoo.diffusion.noise.RowGenerators``): the same noise, the same images to float rounding. ``sample(captions,
n_candidates, n_keep)`` keeps the CLIP-best ``n_keep`` of ``n_candidates`` (the pipeline's own CLIP); ``generate``
is ``sample(..., n_keep=1)``; with ``n_candidates=1`` (default) no reranking happens.

Manipulations (PAPER_FACTS "unCLIP": manipulations) work on images in [-1, 1] (short side resized to the decoder's resolution, centre-cropped: the training data's and CLIP's geometry):

- **the bipartite latent** ``invert(image)``: (z_i, x_T) = (the image's CLIP embedding, its DDIM inversion
  ``zoo.diffusion.samplers.ddim_invert`` with the decoder's conditional model at z_i and the empty caption, on
  ``decoder_steps`` DDIM-strided timesteps 0, s, 2s, ... (``manipulation_process``: why not the evenly spaced
  0..T−1 of ``decoder.sample`` is in its docstring), ``invert_refine`` fixed-point refinements per step);
  ``decode_latent(z_i, x_T, eta)`` decodes one (guided by ``decoder_guidance_scale``);
- **variations** ``variations(image, n, eta)``: decode (z_i, x_T) with DDIM η > 0 (η = 0 reproduces the input up to
  the inversion error); variation i uses seed + i;
- **interpolation** ``interpolate(a, b, n_steps, latent)``: z = slerp(z_a, z_b, θ) for θ in linspace(0, 1); x_T
  ``fixed`` (one Gaussian draw from the seed, shared by every frame) or ``slerp`` (slerped between the two images'
  inverted latents); DDIM η = 0;
- **text diffs** ``text_diff(image, caption_from, caption_to, n_steps, max_t)``: z_d = norm(z_t − z_t0) of the two
  captions' CLIP text embeddings, z = slerp(z_i, z_d, θ) for θ in linspace(0, max_t) (default 0.5), x_T the image's
  inverted latent, DDIM η = 0.

CLI for the manipulations (zoo-sample covers captions): ``python -m zoo.pipelines.unclip --help``.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from zoo.config import with_article
from zoo.diffusion.noise import candidates_per_batch, sampler_takes_row_generators, seeded_row_generators
from zoo.diffusion.samplers import ddim_invert, ddim_sample
from zoo.errors import ConfigError, check_whole, is_whole, shown
from zoo.pipelines.base import check_counts

log = logging.getLogger("zoo.pipelines.unclip")

PRIORS = ("diffusion", "ar", "text_emb", "none")
STAGES = ("prior", "decoder", "upsampler")


def slerp(a: torch.Tensor, b: torch.Tensor, t: Union[float, torch.Tensor], eps: float = 1e-7) -> torch.Tensor:
    """Spherical interpolation along the last dimension: ``sin((1−t)θ)/sin θ · a + sin(tθ)/sin θ · b``, θ the angle
    between a and b (their directions). Exact endpoints (t = 0 gives a, t = 1 gives b, bit for bit); for unit inputs
    the result is a unit vector. Nearly parallel inputs fall back to linear interpolation. ``t`` is a float or a
    tensor broadcasting against ``a[..., :1]`` (e.g. (N, 1) with a, b (1, D) gives N points)."""
    a, b = torch.broadcast_tensors(a, b)
    t = torch.as_tensor(t, dtype=a.dtype, device=a.device)
    if t.dim() == 0:
        t = t.reshape(1)
    if t.dim() < a.dim():
        t = t.reshape(*t.shape, *([1] * (a.dim() - t.dim())))
    an, bn = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    cos = (an * bn).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    small = sin.abs() < eps
    safe = torch.where(small, torch.ones_like(sin), sin)
    wa = torch.where(small, 1.0 - t, torch.sin((1.0 - t) * theta) / safe)
    wb = torch.where(small, t, torch.sin(t * theta) / safe)
    out = wa * a + wb * b
    out = torch.where(t == 0, a, out)
    return torch.where(t == 1, b, out)


def _as_images(image: torch.Tensor, size: int, what: str) -> torch.Tensor:
    """(B, 3, H, W) or (3, H, W) in [-1, 1] -> float (B, 3, size, size): short side to ``size`` (bicubic,
    antialiased) and centre crop, the geometry of the training data (``ImageTransform``) and of the CLIP that embeds
    the same images (``ClipScorer``'s ``shortest`` mode). A non-square image used to be squashed to a square, so the
    decoder inverted a distorted picture while z_i described the centre crop."""
    x = torch.as_tensor(image)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    from zoo.data.transforms import resize_center_crop
    from zoo.pipelines.base import check_images

    check_images(x, what=what)
    return resize_center_crop(x.float(), size, "shortest", "bicubic", value_range=(-1.0, 1.0))


def _check_count(n, what: str) -> None:
    """Frames / variations must be a positive int: 0 used to fail after the inversion with torch.cat's "expected a
    non-empty list of Tensors" (variations) or an IndexError (interpolate, text_diff). The int() this did was an
    OverflowError for inf (not a ValueError) and "cannot convert float NaN" for NaN, neither naming the argument."""
    if not is_whole(n, 1):
        raise ValueError(f"{what}={shown(n)} must be a whole number >= 1")


def _check_prior_name(prior: Any) -> None:
    if prior not in PRIORS:
        raise ConfigError(f"prior={prior!r}; choose one of {', '.join(PRIORS)}")


def _check_stage_names(stages: Sequence[str], n_upsamplers: int, prior: Optional[str]) -> None:
    known = set(STAGES) | {f"upsampler{i + 1}" for i in range(n_upsamplers)}
    bad = [s for s in stages if s not in known]
    if bad:
        raise ConfigError(
            f"stages has {bad}; choose from {sorted(known)} ({n_upsamplers} upsampler checkpoints loaded)"
        )
    if "decoder" not in stages:
        raise ConfigError("stages must include decoder (the prior's output alone: pipe.embeddings(captions))")
    if "prior" not in stages and prior in ("diffusion", "ar"):
        raise ConfigError(f"stages lacks prior but prior={prior} (fix: add prior to stages, or prior=text_emb | none)")


# (key, fix, least) of the count knobs, checked by zoo.pipelines.base.check_counts
COUNT_KNOBS = (("n_candidates", 8, 1), ("n_keep", 1, 1), ("invert_refine", 0, 0), ("batch_size", 64, 1))


def check_options(n_upsamplers: int, options: dict[str, Any]) -> None:
    """The pipeline's options that need no model, checked by ``from_checkpoints`` before any checkpoint loads
    (``UnclipPipeline.__init__`` checks them again, with the rest, for a direct build): a misspelt prior or stage, a
    count that is no whole number, a decoder guidance scale / eta or sampler name that cannot work were refused only
    after the prior, the decoder, the upsamplers and the CLIP had loaded (minutes at the paper's sizes). Knobs that a
    prior or upsampler may ignore (the prior's steps / eta / candidates, the upsamplers') wait for the models."""
    from zoo.diffusion.samplers import check_sampling_knobs

    prior = options.get("prior")
    if prior is not None:
        _check_prior_name(prior)
    stages = options.get("stages")
    if stages is not None:
        _check_stage_names([stages] if isinstance(stages, str) else list(stages), n_upsamplers, prior)
    check_counts(COUNT_KNOBS, options, given_only=True)
    keys = ("decoder_sampler", "decoder_eta", "decoder_guidance_scale", "prior_guidance_scale")
    check_sampling_knobs(1, {f"generator.{k}": options.get(k) for k in keys})  # no steps: those need the models


class UnclipPipeline:
    """See the module docstring. ``None`` for a sampling knob means the stage checkpoint's own default."""

    def __init__(
        self,
        decoder,
        clip,
        prior_model=None,
        upsamplers: Sequence = (),
        prior: Optional[str] = None,
        stages: Optional[Sequence[str]] = None,
        prior_guidance_scale: Optional[float] = None,
        prior_steps: Optional[int] = None,
        prior_n_candidates: Optional[int] = None,
        prior_eta: Optional[float] = None,
        decoder_guidance_scale: Optional[float] = None,
        decoder_steps: Optional[int] = None,
        decoder_sampler: Optional[str] = None,
        decoder_eta: Optional[float] = None,
        upsampler_steps: Union[None, int, Sequence[Optional[int]]] = None,
        upsampler_eta: Optional[float] = None,
        upsampler_tile: Union[None, int, str] = None,
        n_candidates: int = 1,
        n_keep: int = 1,
        invert_refine: int = 0,
        batch_size: int = 64,
        seed: int = 0,
        progress: Optional[bool] = None,
    ):
        self.decoder = decoder.eval()
        self.clip = clip
        self.prior_model = prior_model.eval() if prior_model is not None else None
        self.upsamplers = [u.eval() for u in upsamplers]
        self.prior = prior if prior is not None else self._prior_kind(prior_model)
        _check_prior_name(self.prior)
        if self.prior in ("diffusion", "ar") and self._prior_kind(prior_model) != self.prior:
            raise ConfigError(
                f"prior={self.prior} needs {with_article(self.prior)} prior checkpoint (fix: generator.prior_ckpt="
                f"<zoo-train model={self.prior}_prior last.ckpt>, or prior=text_emb | none)"
            )
        if isinstance(stages, str):  # generator.stages=decoder (no brackets): one stage, not one per character
            stages = [stages]
        self.stages = list(stages) if stages is not None else ["prior", "decoder", "upsampler"]
        diffusion_only = (
            ("prior_steps", prior_steps),
            ("prior_n_candidates", prior_n_candidates),
            ("prior_eta", prior_eta),
        )
        if self.prior == "ar":
            ignored = [k for k, v in diffusion_only if v is not None]
            if ignored:
                log.warning("%s apply to the diffusion prior only: ignored by the AR prior", ", ".join(ignored))
        elif self.prior in ("text_emb", "none"):  # no prior model runs: a prior_guidance_scale sweep changed nothing
            ignored = [k for k, v in (("prior_guidance_scale", prior_guidance_scale), *diffusion_only) if v is not None]
            if ignored:
                log.warning(
                    "%s ignored: prior=%s runs no prior model (prior=diffusion | ar with generator.prior_ckpt does)",
                    ", ".join(ignored),
                    self.prior,
                )
        self.prior_guidance_scale, self.prior_steps = prior_guidance_scale, prior_steps
        self.prior_n_candidates, self.prior_eta = prior_n_candidates, prior_eta
        self.decoder_guidance_scale, self.decoder_steps = decoder_guidance_scale, decoder_steps
        self.decoder_sampler, self.decoder_eta = decoder_sampler, decoder_eta
        # a list (also Hydra's ListConfig) is one value per upsampler; anything else one value for all. Its values
        # are checked as they are (_check_upsampler_knobs): int() took [2.5] for 2, 2.5 was "'float' object is not
        # iterable" and abc / "25" (a string) were split into characters
        if isinstance(upsampler_steps, Sequence) and not isinstance(upsampler_steps, str):
            upsampler_steps = list(upsampler_steps)
        self.upsampler_steps, self.upsampler_eta = upsampler_steps, upsampler_eta
        self._check_sampling_knobs()
        used = self.decoder.hparams.sampler if decoder_sampler is None else decoder_sampler
        if decoder_eta is not None and used != "ddim":  # ddpm and the diffusers schedulers draw no eta
            log.warning("decoder_eta=%s ignored: only the ddim decoder sampler takes an eta, not %s", decoder_eta, used)
        self.upsampler_tile = upsampler_tile
        self._warn_resolution_chain()
        self._warn_untrained_nulls()
        # n_candidates, n_keep, invert_refine, batch_size: int() took 1.5 for 1, -1 for 0
        counts = dict(n_candidates=n_candidates, n_keep=n_keep, invert_refine=invert_refine, batch_size=batch_size)
        for key, value in check_counts(COUNT_KNOBS, counts).items():
            setattr(self, key, value)
        self.seed = int(seed)
        self.progress = progress
        self.weights: dict[str, str] = {}  # per stage "ema" | "raw" | ... (from_checkpoints; empty: as given)
        self._check_stages()
        self._check_upsampler_knobs()

    @staticmethod
    def _prior_kind(prior_model) -> str:
        if prior_model is None:
            return "text_emb"
        from zoo.models.ar_prior.lit import ARPriorLit
        from zoo.models.diffusion_prior.lit import DiffusionPriorLit

        if isinstance(prior_model, DiffusionPriorLit):
            return "diffusion"
        if isinstance(prior_model, ARPriorLit):
            return "ar"
        raise ConfigError(f"the prior is {with_article(type(prior_model).__name__)}, not a diffusion_prior or ar_prior")

    def _check_sampling_knobs(self) -> None:
        """Each stage's steps / sampler / eta / guidance: a ConfigError naming the generator key before sampling."""
        from zoo.diffusion.samplers import check_sampling_knobs

        check_sampling_knobs(
            self.decoder.process.num_timesteps,
            {
                "generator.decoder_steps": self.decoder_steps,
                "generator.decoder_sampler": self.decoder_sampler,
                "generator.decoder_eta": self.decoder_eta,
                "generator.decoder_guidance_scale": self.decoder_guidance_scale,
                "generator.prior_guidance_scale": self.prior_guidance_scale,
            },
        )
        if self.prior == "diffusion":
            check_sampling_knobs(
                self.prior_model.process.num_timesteps,
                {"generator.prior_steps": self.prior_steps, "generator.prior_eta": self.prior_eta},
            )
            # 0 / -1 used to fail mid-sampling (argmax of nothing, negative repeats)
            why = "embeddings drawn per caption, the one closest to the text kept"
            check_whole(
                "generator.prior_n_candidates", self.prior_n_candidates, 1, "2, the paper's", none_ok=True, why=why
            )

    def _check_upsampler_knobs(self) -> None:
        """``upsampler_steps`` / ``upsampler_eta`` / ``upsampler_tile`` against the upsamplers ``stages`` runs (after
        ``_check_stages``: the stage names are known good), before the decoder runs. A tile used to be checked
        against every loaded upsampler, so ``stages=[..., upsampler1]`` refused a tile that fits upsampler1 because
        upsampler2, which never runs, could not take it. Set while no upsampler runs, they are ignored: a WARNING,
        as for the AR prior's diffusion-only knobs."""
        from zoo.diffusion.samplers import check_sampling_knobs

        steps = self.upsampler_steps
        if isinstance(steps, (list, tuple)) and len(steps) != len(self.upsamplers):
            raise ConfigError(
                f"upsampler_steps has {len(steps)} values for {len(self.upsamplers)} upsamplers "
                f"(fix: one value, or one per upsampler)"
            )
        active = self._active_upsamplers()
        if not active:
            knobs = {
                "upsampler_steps": steps,
                "upsampler_eta": self.upsampler_eta,
                "upsampler_tile": self.upsampler_tile,
            }
            ignored = [k for k, v in knobs.items() if v is not None]
            if ignored:
                log.warning(
                    "%s ignored: no upsampler runs (stages=%s, %d upsampler checkpoints loaded; "
                    "generator.upsampler_ckpts and an upsampler stage run one)",
                    ", ".join(ignored),
                    self.stages,
                    len(self.upsamplers),
                )
            return
        for i, up in active:
            knobs = {
                "generator.upsampler_steps": self._upsampler_steps(i),
                "generator.upsampler_eta": self.upsampler_eta,
            }
            check_sampling_knobs(up.process.num_timesteps, knobs)
            if self.upsampler_tile is None:
                continue
            try:  # the upsampler names its own key (model.sample_tile); the user set the generator's
                up.sampling_windows(self.upsampler_tile)
            except ConfigError as e:
                raise ConfigError(
                    f"generator.upsampler_tile={self.upsampler_tile!r} does not fit upsampler{i + 1}: {e}"
                ) from None

    def _warn_resolution_chain(self) -> None:
        """A WARNING where a stage's input is not the resolution the next upsampler was trained from (a 16 px decoder
        into an 8 -> 32 px upsampler). The upsamplers are fully convolutional, so such a chain runs, but at a scale
        and with degradations the upsampler never saw: allowed (a deliberate experiment), never silent. The chain is
        the one ``stages`` runs: with ``stages=[..., upsampler2]`` the decoder feeds upsampler2 directly (walking all
        the loaded upsamplers missed that mismatch, and warned about upsampler1's output that never exists)."""
        size, source = self.decoder.cfg.image_size, "the decoder"
        for i, up in self._active_upsamplers():
            if size != up.cfg.low_res_size:
                log.warning(
                    "upsampler%d was trained %d -> %d px but %s gives %d px: it will output %d px, a scale it never "
                    "saw (pass upsamplers trained from %d px for the chain it was built for)",
                    i + 1,
                    up.cfg.low_res_size,
                    up.cfg.image_size,
                    source,
                    size,
                    size * up.cfg.scale,
                    size,
                )
            size, source = size * up.cfg.scale, f"upsampler{i + 1}"

    def _warn_untrained_nulls(self) -> None:
        """A WARNING when a stage guides (scale != 1, set here or the checkpoint's) with a null condition it never
        trained, as the GLIDE and DALL·E pipelines warn: the decoder's rule is its own (``warn_untrained_null``:
        the empty caption and the zero embedding together); a prior's null is the null caption (text_dropout, the
        paper's 10%). Guidance then extrapolates from an unconditional model that never saw its input."""
        dec = self.decoder
        scale = (
            dec.hparams.decoder_guidance_scale if self.decoder_guidance_scale is None else self.decoder_guidance_scale
        )
        if callable(getattr(dec, "warn_untrained_null", None)):
            dec.warn_untrained_null({"generator.decoder_guidance_scale": float(scale)})
        if self.prior not in ("diffusion", "ar"):
            return
        p = self.prior_model
        own = float(getattr(p, "guidance_scale", 1.0)) if self.prior == "diffusion" else 1.0  # the AR prior: 1
        scale = own if self.prior_guidance_scale is None else self.prior_guidance_scale
        if float(scale) != 1 and float(p.text_dropout) == 0:
            log.warning(
                "the %s prior has text_dropout=0, so its null caption is never trained, but prior_guidance_scale=%s "
                "guides with it: classifier-free guidance extrapolates from an untrained unconditional model (fix: "
                "train with model.text_dropout=0.1, the paper's, or generator.prior_guidance_scale=1)",
                self.prior,
                scale,
            )

    def _check_stages(self) -> None:
        _check_stage_names(self.stages, len(self.upsamplers), self.prior)
        c = self.decoder.cfg
        if self.clip is not None:
            d = self.clip.encode_text(["a"]).shape[-1]
            if d != c.clip_dim:
                raise ConfigError(
                    f"the CLIP embeds to {d}-d but the decoder's clip_dim is {c.clip_dim} "
                    f"(fix: the CLIP the decoder was trained with)"
                )
            if self.prior in ("diffusion", "ar"):
                self._check_prior_clip(d)
            self._check_clip_fingerprints()

    def _check_clip_fingerprints(self) -> None:
        """The decoder and the prior were trained on one CLIP's embeddings (``ClipEmbeddingLit.clip_fingerprint``);
        another CLIP of the same widths (a CLIP retrained in place, another run's) passed every shape check and the
        decoder drew from vectors of another space. Refused when both sides name their CLIP (checkpoints and
        zoo-embed files from before the fingerprint name none: not checked)."""
        fp = getattr(self.clip, "fingerprint", None)
        stages = [("decoder", self.decoder)]
        if self.prior in ("diffusion", "ar"):
            stages.append((f"{self.prior} prior", self.prior_model))
        for what, module in stages:
            trained = getattr(module, "clip_fingerprint", None)
            if fp and trained and trained != fp:
                raise ConfigError(
                    f"the {what} was trained on the embeddings of another CLIP (fingerprint {trained}) than the "
                    f"pipeline's (fingerprint {fp}) (fix: generator.clip_ckpt=<the CLIP whose zoo-embed files "
                    f"trained it>, or {with_article(what)} trained on this CLIP's embeddings)"
                )

    def _check_prior_clip(self, d: int) -> None:
        """The prior reads this CLIP's text embedding (d-wide) and token ids and writes embeddings of its image tower:
        a prior trained on another CLIP is refused here, naming the fix. It used to pass construction and fail only
        once sampling started, with a bare matmul shape error (embedding width) or an IndexError (token vocabulary)."""
        p = self.prior_model.cfg
        width = int(p.clip_dim if self.prior == "diffusion" else p.embed_dim)
        fix = "(fix: generator.clip_ckpt=<the CLIP the prior was trained on>, or a prior trained on this CLIP)"
        if width != d:
            raise ConfigError(f"the CLIP embeds to {d}-d but the {self.prior} prior's CLIP width is {width} {fix}")
        if self.prior == "diffusion" and p.text_input == "none":
            return
        length = int(self.clip.tokenize(["a"]).shape[-1])
        if (self.prior == "diffusion" and length != p.text_len) or (self.prior == "ar" and length > p.text_len):
            raise ConfigError(
                f"the CLIP's context is {length} tokens but the {self.prior} prior takes text_len={p.text_len} {fix}"
            )
        vocab = getattr(self.clip.model, "vocab_size", None)
        uses_ids = self.prior == "ar" or p.text_input == "tokens"
        if uses_ids and isinstance(vocab, int) and vocab > p.text_vocab:
            raise ConfigError(
                f"the CLIP's tokenizer has {vocab} token ids but the {self.prior} prior embeds {p.text_vocab} {fix}"
            )

    @classmethod
    def from_checkpoints(
        cls,
        prior_ckpt: Optional[str],
        decoder_ckpt: Optional[str],
        clip_ckpt: Optional[str],
        upsampler_ckpts: Sequence[str] = (),
        device: str = "cpu",
        use_ema: bool = True,
        **kw,
    ) -> "UnclipPipeline":
        """zoo-train checkpoints: a prior (``diffusion_prior`` or ``ar_prior``; None with ``prior=text_emb|none``),
        an ``unclip_decoder`` (its BPE inside), the CLIP the prior and decoder were trained with (``zoo-train
        model=clip``; required: it embeds the captions and, for the manipulations, the images) and 0+ upsamplers.

        Weights: a stage trained with the EMA callback samples with its EMA (``use_ema``, default) or its raw weights
        (``use_ema=False``); a checkpoint saved before the EMA's first update falls back to the raw weights with a
        warning (its "average" is the initial weights), as the GLIDE pipeline does
        (``zoo.checkpoint.load_module``'s ``ema``). ``pipe.weights`` says which each stage loaded."""
        from zoo.checkpoint import load_module
        from zoo.models.clip.scorer import ClipScorer
        from zoo.models.unclip_decoder.lit import UnclipDecoderLit

        weights: dict[str, str] = {}
        if isinstance(upsampler_ckpts, (str, Path)):  # generator.upsampler_ckpts=<one path> (no brackets): not a
            upsampler_ckpts = [upsampler_ckpts]  # checkpoint per character ("checkpoint not found: /")
        check_options(len(upsampler_ckpts or ()), kw)  # before any checkpoint loads
        if not decoder_ckpt:
            raise ConfigError(
                "the unCLIP pipeline needs a decoder (fix: generator.decoder_ckpt=<zoo-train "
                "model=unclip_decoder last.ckpt>)"
            )
        if not clip_ckpt:
            raise ConfigError(
                "the unCLIP pipeline needs the CLIP its prior and decoder were trained with (fix: "
                "generator.clip_ckpt=<zoo-train model=clip last.ckpt>)"
            )
        decoder = load_module(
            str(decoder_ckpt),
            map_location="cpu",
            expect=("unclip_decoder",),
            ema=use_ema,
            option="generator.decoder_ckpt",
        )
        if not isinstance(decoder, UnclipDecoderLit):
            raise ConfigError(f"{decoder_ckpt} holds {with_article(type(decoder).__name__)}, not an unCLIP decoder")
        weights["decoder"] = decoder.loaded_weights
        prior_model = None
        if prior_ckpt:
            prior_model = load_module(
                str(prior_ckpt),
                map_location="cpu",
                expect=("diffusion_prior", "ar_prior"),
                ema=use_ema,
                option="generator.prior_ckpt",
            )
            weights["prior"] = prior_model.loaded_weights
            prior_model = prior_model.to(device)
        elif kw.get("prior") in ("diffusion", "ar"):
            raise ConfigError(
                f"prior={kw['prior']} needs generator.prior_ckpt=<zoo-train model={kw['prior']}_prior "
                f"last.ckpt> (or prior=text_emb | none)"
            )
        ups = []
        for i, path in enumerate(upsampler_ckpts or ()):
            up = load_module(
                str(path), map_location="cpu", expect=("upsampler",), ema=use_ema, option="generator.upsampler_ckpts"
            )
            weights[f"upsampler{i + 1}"] = up.loaded_weights
            ups.append(up.to(device))
        clip = ClipScorer.from_lightning_checkpoint(str(clip_ckpt), device=device)
        pipe = cls(decoder.to(device), clip, prior_model, ups, **kw)
        pipe.weights = weights
        return pipe

    # ------------------------------------------------------------------------------------------ pieces
    @property
    def device(self) -> torch.device:
        return self.decoder.device

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(int(seed))

    def _active_upsamplers(self) -> list[tuple[int, Any]]:
        if "upsampler" in self.stages:
            return list(enumerate(self.upsamplers))
        return [(i, u) for i, u in enumerate(self.upsamplers) if f"upsampler{i + 1}" in self.stages]

    def _upsampler_steps(self, i: int) -> Optional[int]:
        s = self.upsampler_steps
        return s[i] if isinstance(s, (list, tuple)) else s

    @torch.no_grad()
    def text_condition(self, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        """CLIP inputs of the priors: ``text_emb`` (B, D) L2-normalised, ``text_tokens`` (B, L) CLIP token ids (and
        ``text_encodings`` / ``text_mask`` when the diffusion prior reads per-token encodings)."""
        captions = list(captions)
        out = {
            "text_emb": self.clip.encode_text(captions).to(self.device),
            "text_tokens": self.clip.tokenize(captions).to(self.device),
        }
        p = self.prior_model
        if self.prior == "diffusion" and p.cfg.text_input == "encodings":
            from zoo.models.clip.model import text_token_encodings

            enc, mask = text_token_encodings(self.clip.model, out["text_tokens"].to(self.clip.device))
            out["text_encodings"], out["text_mask"] = enc.to(self.device), mask.to(self.device)
        return out

    @torch.no_grad()
    def embeddings(self, captions: Sequence[str], generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The prior stage: captions -> CLIP image embeddings (B, D) (per ``prior``; see the module docstring)."""
        captions = [captions] if isinstance(captions, str) else list(captions)
        cond = self.text_condition(captions)
        if self.prior == "text_emb":
            return F.normalize(cond["text_emb"].float(), dim=-1)
        if self.prior == "none":
            return self.decoder.net.null_embedding(len(captions), self.device)
        if self.prior == "diffusion":
            return self.prior_model.sample(
                cond["text_emb"],
                cond["text_tokens"],
                text_encodings=cond.get("text_encodings"),
                text_mask=cond.get("text_mask"),
                steps=self.prior_steps,
                guidance_scale=self.prior_guidance_scale,
                n_candidates=self.prior_n_candidates,
                eta=self.prior_eta,
                generator=generator,
            ).to(self.device)
        scale = 1.0 if self.prior_guidance_scale is None else float(self.prior_guidance_scale)
        return self.prior_model.sample(
            cond["text_emb"], cond["text_tokens"], guidance_scale=scale, generator=generator
        ).to(self.device)

    @torch.no_grad()
    def decode(
        self,
        image_emb: torch.Tensor,
        captions: Optional[Sequence[str]] = None,
        generator: Optional[torch.Generator] = None,
        x_T: Optional[torch.Tensor] = None,
        eta: Optional[float] = None,
        sampler: Optional[str] = None,
    ) -> torch.Tensor:
        """The decoder stage: embeddings (B, D) (+ captions, None = the empty caption) -> (B, 3, s, s) in [-1, 1]."""
        text = None if captions is None else self.decoder.encode_captions(list(captions))
        return self.decoder.sample(
            text,
            image_emb.to(self.device),
            decoder_guidance_scale=self.decoder_guidance_scale,
            steps=self.decoder_steps,
            sampler=sampler or self.decoder_sampler,
            eta=self.decoder_eta if eta is None else eta,
            generator=generator,
            x_T=x_T,
        )

    @torch.no_grad()
    def upsample(
        self, images: torch.Tensor, generator: Optional[torch.Generator] = None, shared_noise: bool = False
    ) -> torch.Tensor:
        """The upsampler stages that ``stages`` enables, in order. ``shared_noise``: one x_T for every image of the
        batch (interpolation strips stay coherent)."""
        x = images
        for i, up in self._active_upsamplers():
            x_T = None
            if shared_noise:
                s = up.cfg.scale
                shape = (1, up.cfg.in_channels, x.shape[-2] * s, x.shape[-1] * s)
                x_T = torch.randn(shape, generator=generator, device=up.device).expand(len(x), -1, -1, -1)
            x = up.upsample(
                x.to(up.device),
                steps=self._upsampler_steps(i),
                eta=self.upsampler_eta,
                generator=generator,
                x_T=x_T,
                tile=self.upsampler_tile,
            ).to(self.device)
        return x

    @torch.no_grad()
    def _candidate(self, captions: list[str], seed: int) -> torch.Tensor:
        """One full chain per caption with the generator of ``seed``: (B, 3, H, W)."""
        gen = self._generator(seed)
        out = []
        for i in range(0, len(captions), self.batch_size):
            chunk = captions[i : i + self.batch_size]
            emb = self.embeddings(chunk, gen)
            out.append(self.upsample(self.decode(emb, chunk, gen), gen))
        return torch.cat(out)

    @torch.no_grad()
    def _candidates_batched(self, captions: list[str], seeds: list[int]) -> torch.Tensor:
        """Candidates under ``seeds`` (B <= batch_size captions): (len(seeds) * B, 3, H, W), candidate-major. The
        prior (diffusion: its noise; AR: its Gumbel token noise), the decoder and the upsamplers each run every
        candidate in one batch, each candidate's rows drawing from its own seed's generator (``RowGenerators``). Each
        generator so makes the draws ``_candidate`` makes (prior, decoder, upsampler noise, in that order): a batched
        candidate has the same noise as one sampled alone."""
        if len(seeds) == 1:
            return self._candidate(captions, seeds[0])
        rows = seeded_row_generators(len(captions), seeds, self.device)
        emb = self.embeddings(captions * len(seeds), rows)
        return self.upsample(self.decode(emb, captions * len(seeds), rows), rows)

    # ------------------------------------------------------------------------------------------ Generator
    @torch.no_grad()
    def candidates(self, captions: Sequence[str], n_candidates: Optional[int] = None) -> torch.Tensor:
        """(B, n, 3, H, W) in [-1, 1]: candidate i of every caption runs the chain under seed ``seed + i``; with a
        decoder sampler that takes RowGenerators (``ddim``, ``ddpm``, ``dpm++``, ``unipc``) several candidates share
        the stages' batches (the same noise as one at a time, the same images to float rounding)."""
        from zoo.pipelines.candidates import seeded_candidates

        captions = [captions] if isinstance(captions, str) else list(captions)
        sampler = self.decoder_sampler if self.decoder_sampler is not None else self.decoder.hparams.sampler
        batched = sampler_takes_row_generators(self.decoder.process, sampler)
        per_batch = candidates_per_batch(len(captions), self.batch_size) if batched else 1
        return seeded_candidates(
            self._candidates_batched,
            captions,
            n_candidates or self.n_candidates,
            self.seed,
            per_batch,
            self.progress,
            "unclip sample",
        )

    @torch.no_grad()
    def sample(
        self, captions: Sequence[str], n_candidates: Optional[int] = None, n_keep: Optional[int] = None
    ) -> dict[str, Any]:
        """``max(n_candidates, n_keep)`` chains per caption, the CLIP-best ``n_keep`` kept (best first; the
        pipeline's CLIP): dict(images (B, n_keep, 3, H, W), scores (B, n_keep) CLIP scores, n_candidates)."""
        from zoo.models.clip.scorer import clip_score_from_cos

        captions = [captions] if isinstance(captions, str) else list(captions)
        k = int(n_keep or self.n_keep)
        n = max(int(n_candidates or self.n_candidates), k)
        cands = self.candidates(captions, n)
        picked, cos, _ = self.clip.rerank_batched(cands, captions, k)
        return {"images": picked, "scores": clip_score_from_cos(cos), "n_candidates": n}

    @torch.no_grad()
    def generate(self, captions: list[str]) -> torch.Tensor:
        """One image per caption (the CLIP-best of ``n_candidates``): (len(captions), 3, H, W) in [-1, 1]."""
        captions = [captions] if isinstance(captions, str) else list(captions)
        if self.n_candidates == 1:
            return self._candidate(captions, self.seed)
        return self.sample(captions, n_keep=1)["images"][:, 0]

    __call__ = generate

    # ------------------------------------------------------------------------------------------ manipulations
    @torch.no_grad()
    def image_embedding(self, image: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings (B, D) of images (B, 3, H, W) or (3, H, W) in [-1, 1] (any size: the CLIP's own
        preprocessing)."""
        x = torch.as_tensor(image)
        x = x.unsqueeze(0) if x.dim() == 3 else x
        from zoo.pipelines.base import check_images

        return self.clip.encode_image(check_images(x, what="image").float()).to(self.device)

    @torch.no_grad()
    def invert(
        self, image: torch.Tensor, image_emb: Optional[torch.Tensor] = None, captions: Optional[Sequence[str]] = None
    ) -> dict[str, torch.Tensor]:
        """The bipartite latent of images (B, 3, H, W) in [-1, 1]: dict(image_emb (B, D) their CLIP embeddings,
        x_T (B, 3, s, s) their DDIM inversion by the decoder's conditional model at that embedding (and the empty
        caption, or ``captions``) on ``manipulation_process`` (``decoder_steps`` DDIM-strided steps)."""
        x0 = _as_images(image, self.decoder.cfg.image_size, "invert: image").to(self.device)
        emb = self.image_embedding(image) if image_emb is None else image_emb.to(self.device).float()
        dec = self.decoder
        text = dec.net.null_tokens(len(x0), self.device) if captions is None else dec.encode_captions(list(captions))
        fn = dec.decoder_model_fn(text, emb, None)  # conditional model (no guidance)
        x_T = ddim_invert(self.manipulation_process(), fn, x0, refine=self.invert_refine)
        return {"image_emb": emb, "x_T": x_T}

    def manipulation_process(self):
        """The decoder's process on ``decoder_steps`` DDIM-strided timesteps 0, s, 2s, ... (s = T // steps), where
        inversion and the manipulations' DDIM run. Not the evenly spaced 0..T−1 of ``decoder.sample``: its last level
        (cosine schedule: ᾱ ≈ 2e-9) makes x_T carry the image at a ~1e-4 scale, so any mismatch of ε̂ between the
        inversion's last step and the sampler's first is amplified ~1e4 times (measured on the tiny decoder:
        reconstruction error ~0.95, no better than a random x_T); DDIM's own stride stops at ᾱ ≈ 1e-3 and inverts well."""
        dec = self.decoder
        steps = int(dec.hparams.sample_steps if self.decoder_steps is None else self.decoder_steps)
        total = dec.process.num_timesteps
        steps = max(1, min(steps, total))
        stride = total // steps
        return dec.process.respaced([i * stride for i in range(steps)])

    @torch.no_grad()
    def decode_latent(
        self,
        image_emb: torch.Tensor,
        x_T: torch.Tensor,
        eta: float = 0.0,
        generator: Optional[torch.Generator] = None,
        captions: Optional[Sequence[str]] = None,
    ) -> torch.Tensor:
        """Decode a bipartite latent (z_i (B, D), x_T (B, 3, s, s)) with DDIM ``eta`` on ``manipulation_process``
        (guided by ``decoder_guidance_scale``; the empty caption or ``captions``) -> (B, 3, s, s) in [-1, 1]
        (before upsampling)."""
        dec = self.decoder
        emb = image_emb.to(self.device).float()
        text = dec.net.null_tokens(len(emb), self.device) if captions is None else dec.encode_captions(list(captions))
        scale = (
            dec.hparams.decoder_guidance_scale if self.decoder_guidance_scale is None else self.decoder_guidance_scale
        )
        fn = dec.decoder_model_fn(text, emb, scale)
        x = ddim_sample(
            self.manipulation_process(),
            fn,
            tuple(x_T.shape),
            eta=float(eta),
            generator=generator,
            device=self.device,
            x_T=x_T.to(self.device),
        )
        return x.float().clamp(-1, 1)

    @torch.no_grad()
    def variations(
        self, image: torch.Tensor, n: int = 4, eta: float = 0.5, captions: Optional[Sequence[str]] = None
    ) -> torch.Tensor:
        """``n`` variations of each image (B, 3, H, W): the bipartite latent (z_i, x_T) decoded with DDIM ``eta``
        (> 0 for variety; 0 reproduces the image up to the inversion error), variation i under seed + i ->
        (B, n, 3, H', W') (after the enabled upsamplers)."""
        _check_count(n, "variations: n")
        lat = self.invert(image, captions=captions)
        emb, x_T = lat["image_emb"], lat["x_T"]
        b, out = len(emb), []
        per_batch = candidates_per_batch(b, self.batch_size)
        for start in range(0, int(n), per_batch):  # several variations per call, each from its own seed's generator
            k = min(per_batch, int(n) - start)
            rows = seeded_row_generators(b, range(self.seed + start, self.seed + start + k), self.device)
            caps = None if captions is None else list(captions) * k
            x = self.decode_latent(emb.repeat(k, 1), x_T.repeat(k, 1, 1, 1), float(eta), rows, caps)
            out.append(self.upsample(x, rows).unflatten(0, (k, b)).transpose(0, 1))
        return torch.cat(out, 1)

    @torch.no_grad()
    def interpolate(
        self,
        image_a: torch.Tensor,
        image_b: torch.Tensor,
        n_steps: int = 5,
        latent: str = "fixed",
        captions: Optional[Sequence[str]] = None,
    ) -> torch.Tensor:
        """Strips from a to b (B, n_steps, 3, H', W'): embeddings slerp(z_a, z_b, θ), θ = linspace(0, 1, n_steps);
        x_T ``fixed`` (one Gaussian draw from the seed for every frame) or ``slerp`` (between the inverted latents);
        DDIM η = 0. Frame 0 / the last frame are the decodes of z_a / z_b themselves (with the same x_T rule)."""
        if latent not in ("fixed", "slerp"):
            raise ValueError(f"latent={latent!r}; choose fixed or slerp")
        _check_count(n_steps, "interpolate: n_steps")
        a = _as_images(image_a, self.decoder.cfg.image_size, "interpolate: image_a").to(self.device)
        b = _as_images(image_b, self.decoder.cfg.image_size, "interpolate: image_b").to(self.device)
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"image_a has {a.shape[0]} images but image_b has {b.shape[0]}")
        gen = self._generator(self.seed)
        if latent == "slerp":
            la, lb = self.invert(image_a, captions=captions), self.invert(image_b, captions=captions)
            za, zb, xa, xb = la["image_emb"], lb["image_emb"], la["x_T"], lb["x_T"]
        else:  # CLIP sees the images as given (its own preprocessing), the decoder its resolution
            za, zb = self.image_embedding(image_a), self.image_embedding(image_b)
            xa = xb = torch.randn(a.shape, generator=gen, device=self.device)
        ts = torch.linspace(0, 1, int(n_steps), device=self.device)
        zs = [slerp(za, zb, t) for t in ts]
        xs = [xa if latent == "fixed" else self._slerp_latent(xa, xb, t) for t in ts]
        return self._upsample_frames(self._decode_frames(zs, xs, captions), gen)

    def _decode_frames(
        self, zs: list[torch.Tensor], xs: list[torch.Tensor], captions: Optional[Sequence[str]]
    ) -> list[torch.Tensor]:
        """Deterministic (DDIM η = 0) decodes of the frames (z_f (B, D), x_T_f (B, 3, s, s)), several frames per
        decoder call (up to ``CANDIDATE_BATCH`` images, within ``batch_size``): η = 0 draws no noise, so batching
        changes nothing but the rounding."""
        b, frames = len(zs[0]), []
        per_batch = candidates_per_batch(b, self.batch_size)
        for i in range(0, len(zs), per_batch):
            z, x = torch.cat(zs[i : i + per_batch]), torch.cat(xs[i : i + per_batch])
            caps = None if captions is None else list(captions) * (len(z) // b)
            frames.extend(self.decode_latent(z, x, 0.0, None, caps).split(b))
        return frames

    @staticmethod
    def _slerp_latent(xa: torch.Tensor, xb: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return slerp(xa.flatten(1), xb.flatten(1), t).view_as(xa)

    def _upsample_frames(self, frames: list[torch.Tensor], gen: torch.Generator) -> torch.Tensor:
        x = torch.stack(frames, 1)  # (B, n, 3, s, s)
        b, n = x.shape[:2]
        return self.upsample(x.flatten(0, 1), gen, shared_noise=True).unflatten(0, (b, n))

    @torch.no_grad()
    def text_diff(
        self,
        image: torch.Tensor,
        caption_from: Union[str, Sequence[str]],
        caption_to: Union[str, Sequence[str]],
        n_steps: int = 5,
        max_t: float = 0.5,
        captions: Optional[Sequence[str]] = None,
    ) -> torch.Tensor:
        """Edit images toward a caption change (B, n_steps, 3, H', W'): z_d = norm(z_t − z_t0) of the CLIP text
        embeddings of ``caption_to`` and ``caption_from`` (one each, or one per image), embeddings
        slerp(z_i, z_d, θ), θ = linspace(0, max_t, n_steps), x_T the image's inverted latent, DDIM η = 0."""
        _check_count(n_steps, "text_diff: n_steps")
        lat = self.invert(image, captions=captions)
        bsz = lat["x_T"].shape[0]
        src = [caption_from] * bsz if isinstance(caption_from, str) else list(caption_from)
        dst = [caption_to] * bsz if isinstance(caption_to, str) else list(caption_to)
        z_d = F.normalize(
            self.clip.encode_text(dst).to(self.device) - self.clip.encode_text(src).to(self.device), dim=-1
        )
        gen = self._generator(self.seed)
        ts = torch.linspace(0, float(max_t), int(n_steps), device=self.device)
        frames = self._decode_frames([slerp(lat["image_emb"], z_d, t) for t in ts], [lat["x_T"]] * len(ts), captions)
        return self._upsample_frames(frames, gen)


# ---------------------------------------------------------------------------------------------- CLI
def _load_image(path: str) -> torch.Tensor:
    """An image file -> (1, 3, H, W) in [-1, 1], upright: ``zoo.data.transforms.load_rgb`` applies the EXIF
    orientation as the data loaders, the GLIDE inpainting CLI and every image viewer do (a phone's portrait photo is
    stored landscape with an orientation tag; it was read sideways here). An unreadable file is a ConfigError."""
    from torchvision.transforms.functional import pil_to_tensor

    from zoo.data.transforms import load_rgb

    try:
        picture = load_rgb(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    return pil_to_tensor(picture).float().div(127.5).sub(1).unsqueeze(0)


def _grid_path(out: Optional[str], mode: str, inputs: Sequence[str] = (), default: str = "") -> Path:
    """The grid's file, checked before any work. ``out`` (the user's ``--out``; None: ``default``): an existing
    directory or a name without an extension is a directory (the grid is ``<dir>/<mode>.png``); an extension PIL
    cannot write is a ConfigError.

    Nothing the user made is replaced unasked: an ``--out`` that is one of the ``inputs`` (the image being edited)
    is a ConfigError (``--out in.png`` overwrote the input of an inpaint), and a name the command chose (the default,
    or ``<mode>.png`` in a directory) becomes ``<stem>-<n>.png`` beside an earlier grid (a rerun replaced the earlier
    inpaint.png without a word). A file the user names with ``--out`` is replaced: that is what they asked for."""
    from PIL import Image

    named = out is not None  # the user named the file (or a directory, below)
    path = Path(out if named else default)
    if path.is_dir() or not path.suffix:
        path, named = path / f"{mode}.png", False
    Image.init()
    if path.suffix.lower() not in Image.registered_extensions():
        raise ConfigError(f"--out {out}: PIL cannot write {path.suffix} images (fix: --out <name>.png, or a directory)")
    for given in inputs:
        if _same_file(path, Path(given)):
            raise ConfigError(
                f"--out {out}: that is the input image {given}, the grid would replace it (fix: --out <another "
                f"name>.png, or leave --out out: {default}, numbered beside an earlier one)"
            )
    if not named:
        path = _unused_name(path)
    return path


def _same_file(a: Path, b: Path) -> bool:
    """``a`` and ``b`` name one file: the same path once resolved, or (both existing) one inode (a hard link)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _unused_name(path: Path) -> Path:
    """``path`` if nothing is there, else the first free ``<stem>-<n><suffix>`` (n = 1, 2, ...) beside it."""
    free, n = path, 0
    while free.exists():
        n += 1
        free = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return free


def _check_cli_options(a: argparse.Namespace) -> None:
    """The manipulation CLI's options, before any checkpoint loads: a second image missing for interpolate or
    --caption-to for text_diff were refused only after the decoder and the CLIP had loaded, and a negative or NaN
    --eta / --max-t was DDIM's ValueError traceback after the images' inversion (NaN --max-t: NaN frames)."""
    import math

    if a.n < 1:
        raise ConfigError(f"-n {a.n}: need at least one variation / frame")
    if a.mode == "interpolate" and len(a.images) != 2:
        raise ConfigError(f"interpolate takes two images, got {len(a.images)} (fix: interpolate <a.png> <b.png>)")
    if a.mode == "text_diff" and not a.caption_to:
        raise ConfigError("text_diff needs --caption-to (and --caption-from, the image's description)")
    if a.mode == "variations" and not (math.isfinite(a.eta) and a.eta >= 0):
        raise ConfigError(f"--eta {a.eta}: DDIM eta is a finite number >= 0 (fix: --eta 0.5; 0 reproduces the image)")
    if a.mode == "text_diff" and not math.isfinite(a.max_t):
        raise ConfigError(f"--max-t {a.max_t}: the slerp's end is a finite number (fix: --max-t 0.5)")
    # the pipeline's own checks name generator.<key>, which this command has not; its timestep range still applies
    for flag, steps in (("--decoder-steps", a.decoder_steps), ("--upsampler-steps", a.upsampler_steps)):
        if steps is not None and steps < 1:
            raise ConfigError(f"{flag} {steps}: at least one sampling step (fix: {flag} 25, or leave it out)")
    if not (math.isfinite(a.decoder_guidance_scale) and a.decoder_guidance_scale >= 0):
        raise ConfigError(
            f"--decoder-guidance-scale {a.decoder_guidance_scale}: a finite number >= 0 (fix: 1, unguided)"
        )


def _per_size(images: list[torch.Tensor], manipulate) -> torch.Tensor:
    """``manipulate`` of the images, one batch when they share a size (as before), else one call per image: images
    of several sizes were torch.cat's 'Sizes of tensors must match' traceback (two photos of a folder), though the
    pipeline brings each to the decoder's resolution itself."""
    if len({tuple(x.shape[-2:]) for x in images}) == 1:
        return manipulate(torch.cat(images))
    return torch.cat([manipulate(x) for x in images])


def main(argv: Optional[Sequence[str]] = None) -> dict[str, str]:
    """``python -m zoo.pipelines.unclip {variations,interpolate,text_diff} --decoder-ckpt ... --clip-ckpt ...``:
    one grid PNG (rows of frames / variations) per call. Captions go through ``zoo-sample generator=unclip``."""
    p = argparse.ArgumentParser(prog="python -m zoo.pipelines.unclip", description=main.__doc__)
    p.add_argument("mode", choices=["variations", "interpolate", "text_diff"])
    p.add_argument("images", nargs="+", help="image file(s): one (variations, text_diff) or two (interpolate)")
    p.add_argument("--decoder-ckpt", required=True)
    p.add_argument("--clip-ckpt", required=True)
    p.add_argument("--upsampler-ckpt", action="append", default=[])
    p.add_argument(
        "--out",
        default=None,
        help="the grid's image file (.png, .jpg...; replaced if it exists, never one of the input images), or a "
        "directory: <dir>/<mode>.png; default unclip_manipulation.png. A name the command chooses (the default, "
        "<dir>/<mode>.png) is never replaced: <stem>-<n>.png beside an earlier one",
    )
    p.add_argument("-n", "--n", type=int, default=5, help="variations / frames")
    p.add_argument("--eta", type=float, default=0.5, help="DDIM eta of variations")
    p.add_argument("--latent", choices=["fixed", "slerp"], default="fixed")
    p.add_argument("--caption-from", default="")
    p.add_argument("--caption-to", default="")
    p.add_argument("--max-t", type=float, default=0.5)
    p.add_argument("--decoder-steps", type=int, default=None)
    p.add_argument(
        "--decoder-guidance-scale",
        type=float,
        default=1.0,
        help="classifier-free guidance of the decoder; default 1.0 (unguided), not the checkpoint's own "
        "decoder_guidance_scale, which zoo-sample uses",
    )
    p.add_argument("--upsampler-steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    from zoo.config import report_user_errors

    @report_user_errors
    def run() -> dict[str, str]:
        # checked before the work: a bad name used to fail after sampling
        out_file = _grid_path(a.out, a.mode, a.images, default="unclip_manipulation.png")
        _check_cli_options(a)
        imgs = [_load_image(x) for x in a.images]  # an unreadable file before the checkpoints load, too
        pipe = UnclipPipeline.from_checkpoints(
            None,
            a.decoder_ckpt,
            a.clip_ckpt,
            a.upsampler_ckpt,
            device=a.device,
            prior="text_emb",
            stages=["decoder", "upsampler"],
            decoder_steps=a.decoder_steps,
            decoder_guidance_scale=a.decoder_guidance_scale,
            upsampler_steps=a.upsampler_steps,
            seed=a.seed,
        )
        if a.mode == "variations":
            out = _per_size(imgs, lambda x: pipe.variations(x, n=a.n, eta=a.eta))
        elif a.mode == "interpolate":
            out = pipe.interpolate(imgs[0], imgs[1], n_steps=a.n, latent=a.latent)
        else:
            out = _per_size(imgs, lambda x: pipe.text_diff(x, a.caption_from, a.caption_to, n_steps=a.n, max_t=a.max_t))
        from torchvision.utils import save_image

        out_file.parent.mkdir(parents=True, exist_ok=True)
        save_image(out.flatten(0, 1).add(1).div(2).clamp(0, 1), out_file, nrow=out.shape[1])
        print(out_file)
        return {"grid": str(out_file)}

    return run()


if __name__ == "__main__":
    main()
