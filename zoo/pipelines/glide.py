"""GLIDE inference: captions -> classifier-free- or CLIP-guided diffusion samples (-> optional CLIP rerank);
inpainting.

    pipe = GlidePipeline.from_checkpoints("logs/.../glide/checkpoints/last.ckpt", guidance_scale=3.0, steps=50)
    images = pipe.generate(["a large red circle at the top left"])          # (1, 3, H, W) in [-1, 1]
    cands = pipe.candidates(captions, 4)                                      # (B, 4, 3, H, W), candidate i: seed + i
    out = pipe.sample(captions, n_candidates=16, n_keep=4)                    # CLIP-best 4 of 16 (with clip_ckpt)
    res = pipe.inpaint(image, mask, captions)                                 # mask 1 = known pixel
    res["images"], res["method"]   # "inpaint_model+known_region" | "inpaint_model" | "known_region"
    clip_guided = GlidePipeline.from_checkpoints(glide_ckpt, noised_clip_ckpt="logs/.../noised_clip/.../last.ckpt",
                                                 clip_guidance_scale=3.0, guidance_scale=1.0)   # GLIDE's CLIP guidance

A ``zoo.pipelines.base`` generator (``generate``, ``candidates``, and ``sample`` as a ``RerankingGenerator``), built by
``conf/generator/glide.yaml`` for ``zoo-sample`` and ``zoo-eval``. Knobs (``zoo.pipelines.base`` naming):
``guidance_scale`` (classifier-free, with GLIDE's empty caption; 1 = the conditional model), ``steps`` (respaced
sampling steps), ``sampler`` (``ddim`` | ``ddpm`` | a diffusers scheduler), ``eta`` (DDIM), ``n_candidates`` (drawn
per caption when a CLIP reranks), ``n_keep`` (kept after reranking; ``sample``'s default), ``batch_size``, ``seed``,
and ``noised_clip_ckpt`` + ``clip_guidance_scale`` (CLIP guidance, below).
``None`` for a sampling knob means the checkpoint's own default (``GlideLit`` hyper-parameters). Results are a pure
function of (seed, captions, knobs): candidate i of every caption has the noise of ``GlideLit.generate(...,
seed=seed + i)`` (with CLIP guidance ``clip_guided_generate(..., seed=seed + i)``), so it does not depend on how many
candidates are drawn, and ``generate`` without a CLIP is candidate 0. With ``ddim`` / ``ddpm`` (classifier-free or
CLIP guidance) several candidates share a denoiser batch (up to 16 images, within ``batch_size``), each drawing from
its own seed's generator (``GlideLit.candidates``, ``zoo.diffusion.noise.RowGenerators``): the same images to float
rounding, faster than one candidate at a time (``bench/bench_candidates.py``).

EMA weights. ``conf/callbacks/ema.yaml`` is Lightning's ``EMAWeightAveraging`` (decay 0.999, updates from step 100;
``zoo.callbacks.ema.EMA``, which uses the current weights everywhere until the first update).
When it saves a checkpoint it **moves the raw weights to ``checkpoint["current_model_state"]`` and writes the EMA
average into ``checkpoint["state_dict"]``** (plus ``checkpoint["averaging_state"]``, e.g. ``n_averaged``); it swaps
the average in for validation too, so sample grids logged during training are EMA samples. ``from_checkpoints``
therefore samples with the EMA by default (``use_ema=True``: ``state_dict``, what ``zoo.checkpoint.load_module``
loads) and with the raw weights for ``use_ema=False`` (``current_model_state``). A checkpoint saved before the EMA's
first update (``n_averaged == 0``: its "average" is the initial weights; written so by Lightning's own callback,
before ``zoo.callbacks.ema``) falls back to the raw weights with a warning. ``pipe.weights`` says which were loaded: ``"ema"``, ``"raw"`` or ``"raw (no EMA in checkpoint)"``.

CLIP guidance (GLIDE §2.4, the alternative to classifier-free guidance). With ``noised_clip_ckpt`` (a zoo-train
``model=noised_clip`` checkpoint: a CLIP whose image tower sees the noised x_t and the timestep, trained on the GLIDE's
process and resolution, e.g. ``experiment=glide/noised_clip_shapes``) AND ``clip_guidance_scale`` s, ``candidates`` /
``sample`` / ``generate`` draw with ``zoo.models.noised_clip.lit.clip_guided_generate``: every step's mean becomes
μ + s · Σ · ∇_x (f(x_t, t) · g(c)) (``ddpm``; ``ddim`` shifts ε instead), over the conditional model:
``guidance_scale`` unset means 1 here (GLIDE's CLIP-guidance setting; an explicit value > 1 stacks classifier-free
guidance underneath). s = 0 is the unguided conditional sampler bit for bit. Only the ``ddim`` and ``ddpm`` samplers
take a gradient; ``inpaint`` stays classifier-free. Giving one of the two knobs without the other, or a noised CLIP of
another resolution or diffusion process, is a ``ConfigError`` naming the fix.

Inpainting. With an inpainting checkpoint (``model=glide_inpaint``) the masked image and the mask are the model's
extra input channels (GLIDE) and, with ``replace_known`` (default), the known pixels are also re-imposed after every
step; a plain checkpoint inpaints by re-imposing them alone (``zoo.diffusion.samplers.known_region``: "known region"
inpainting, to compare). Either way ``inpaint`` reports the method used.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import torch

from zoo.config import with_article
from zoo.diffusion.noise import candidates_per_batch, seeded_row_generators
from zoo.diffusion.samplers import OWN_SAMPLERS, check_sampling_knobs
from zoo.pipelines.base import check_counts, warn_unranked_candidates
from zoo.pipelines.candidates import ClipRerank, seeded_candidates

log = logging.getLogger("zoo.pipelines.glide")

METHOD_MODEL_AND_KNOWN = "inpaint_model+known_region"  # model input channels + known pixels re-imposed each step
METHOD_MODEL = "inpaint_model"  # model input channels only (GLIDE's description)
METHOD_KNOWN_REGION = "known_region"  # a plain model; known pixels re-imposed each step


def load_glide(
    glide_ckpt: str, device: str = "cpu", use_ema: bool = True, option: Optional[str] = "generator.glide_ckpt"
):
    """A zoo-train GLIDE checkpoint -> (GlideLit on ``device`` in eval mode, which weights: "ema" | "raw" |
    "raw (no EMA in checkpoint)"). See the module docstring for how the EMA callback stores its weights. ``option``:
    the option that gave the file, named by the refusal of another kind of checkpoint."""
    from zoo.checkpoint import load_module
    from zoo.models.glide.lit import GlideLit

    glide = load_module(glide_ckpt, map_location="cpu", expect=("glide",), ema=use_ema, option=option)
    if not isinstance(glide, GlideLit):
        raise ValueError(f"{glide_ckpt} holds {with_article(type(glide).__name__)}, not a GLIDE model (model=glide)")
    weights = glide.loaded_weights
    return glide.to(device).eval(), weights


def load_noised_clip(noised_clip_ckpt: str, device: str = "cpu"):
    """A zoo-train noised-CLIP checkpoint (``model=noised_clip``) -> ``NoisedClipLit`` on ``device`` in eval mode
    (``zoo.checkpoint.load_module``: a weights-only load, the class from the component registry)."""
    from zoo.checkpoint import load_module
    from zoo.models.noised_clip.lit import NoisedClipLit

    clip = load_module(
        noised_clip_ckpt, map_location="cpu", expect=("noised_clip",), option="generator.noised_clip_ckpt"
    )
    if not isinstance(clip, NoisedClipLit):
        raise ValueError(
            f"{noised_clip_ckpt} holds {with_article(type(clip).__name__)}, not a noised CLIP (model=noised_clip)"
        )
    return clip.to(device).eval()


CLIP_GUIDANCE_SAMPLERS = ("ddim", "ddpm")  # zoo.diffusion.guidance.clip_guided_sample


def check_clip_guidance_pair(has_noised_clip: bool, clip_guidance_scale: Any) -> None:
    """CLIP guidance takes both the noised CLIP and its scale: a ConfigError naming the one missing."""
    from zoo.errors import ConfigError

    if has_noised_clip != (clip_guidance_scale is not None):
        given, missing = (
            ("noised_clip_ckpt", "clip_guidance_scale=3.0")
            if clip_guidance_scale is None
            else ("clip_guidance_scale", "noised_clip_ckpt=<zoo-train model=noised_clip last.ckpt>")
        )
        raise ConfigError(
            f"CLIP guidance needs both generator.noised_clip_ckpt and generator.clip_guidance_scale; only "
            f"{given} is set (fix: generator.{missing}, or generator.{given}=null for classifier-free guidance)"
        )


# (key, fix) of the count knobs, checked by zoo.pipelines.base.check_counts
COUNT_KNOBS = (("n_candidates", 8), ("n_keep", 1), ("batch_size", 64))


def check_options(options: dict[str, Any], noised_clip_ckpt: Optional[str]) -> None:
    """The options that need no model, checked by ``from_checkpoints`` before any checkpoint loads (``__init__``
    checks them again, with the steps, for a direct build): a sampler name, eta, guidance scale or count that cannot
    work, or a clip_guidance_scale without generator.noised_clip_ckpt, were refused only after the GLIDE, the CLIP
    and the noised CLIP had loaded."""
    knobs = ("sampler", "eta", "guidance_scale", "clip_guidance_scale")
    check_sampling_knobs(1, {f"generator.{k}": options.get(k) for k in knobs})  # no steps: they need the model
    check_counts(COUNT_KNOBS, options, given_only=True)
    check_clip_guidance_pair(bool(noised_clip_ckpt), options.get("clip_guidance_scale"))


class GlidePipeline(ClipRerank):
    def __init__(
        self,
        glide,
        scorer=None,
        guidance_scale: Optional[float] = None,
        steps: Optional[int] = None,
        sampler: Optional[str] = None,
        eta: Optional[float] = None,
        n_candidates: int = 1,
        n_keep: int = 1,
        replace_known: Optional[bool] = None,
        batch_size: int = 64,
        seed: int = 0,
        progress: Optional[bool] = None,
        weights: str = "as given",
        noised_clip=None,
        clip_guidance_scale: Optional[float] = None,
    ):
        self.glide = glide.eval()
        self.scorer = scorer
        self.guidance_scale = guidance_scale  # None: the checkpoint's default (GlideLit.hparams)
        self.steps = steps
        self.sampler = sampler
        self.eta = eta
        counts = check_counts(COUNT_KNOBS, dict(n_candidates=n_candidates, n_keep=n_keep, batch_size=batch_size))
        self.n_candidates, self.n_keep, self.batch_size = counts["n_candidates"], counts["n_keep"], counts["batch_size"]
        warn_unranked_candidates(self.n_candidates, scorer, "1")  # sample() draws n_keep then
        self.replace_known = replace_known
        self.seed = int(seed)
        self.progress = progress  # None: a bar only when there is more than one candidate round
        self.weights = weights
        self.noised_clip = noised_clip  # a NoisedClipLit: CLIP guidance (with clip_guidance_scale)
        check_sampling_knobs(
            self.glide.process.num_timesteps,
            {
                "generator.steps": steps,
                "generator.sampler": sampler,
                "generator.eta": eta,
                "generator.guidance_scale": guidance_scale,
                # a finite number >= 0 (a list from a sweep without -m, or NaN, otherwise reached float() or the
                # sampler: a TypeError naming no key, or NaN images)
                "generator.clip_guidance_scale": clip_guidance_scale,
            },
        )
        self.clip_guidance_scale = None if clip_guidance_scale is None else float(clip_guidance_scale)
        self._check_clip_guidance()
        scale = self._clip_knobs()["guidance_scale"] if self.clip_guided else self.guidance_scale
        scale = self.glide.hparams.guidance_scale if scale is None else scale  # None: the checkpoint's
        self.glide.warn_untrained_null({"generator.guidance_scale": scale})
        used = self.glide.hparams.get("sampler", "ddim") if sampler is None else sampler
        if eta is not None and used != "ddim":  # ddpm and the diffusers schedulers draw no eta: a sweep changed nothing
            log.warning("generator.eta=%s ignored: only the ddim sampler takes an eta, not %s", eta, used)

    def _check_clip_guidance(self) -> None:
        from zoo.errors import ConfigError

        check_clip_guidance_pair(self.noised_clip is not None, self.clip_guidance_scale)
        if self.noised_clip is None:
            return
        from zoo.models.noised_clip.lit import check_guidance_pair

        check_guidance_pair(self.glide, self.noised_clip, "generator.noised_clip_ckpt")
        sampler = self._clip_knobs()["sampler"]
        if sampler not in CLIP_GUIDANCE_SAMPLERS:
            raise ConfigError(
                f"CLIP guidance runs the ddim or ddpm sampler, not {sampler!r} (fix: generator.sampler=ddpm, "
                f"GLIDE's mean shift, or generator.sampler=ddim)"
            )
        self.noised_clip.eval()

    @property
    def clip_guided(self) -> bool:
        """True when samples are drawn with CLIP guidance (``noised_clip`` and ``clip_guidance_scale`` set)."""
        return self.noised_clip is not None

    @classmethod
    def from_checkpoints(
        cls,
        glide_ckpt: Optional[str],
        clip_ckpt: Optional[str] = None,
        device: str = "cpu",
        use_ema: bool = True,
        noised_clip_ckpt: Optional[str] = None,
        **kw,
    ) -> "GlidePipeline":
        """A zoo-train GLIDE checkpoint (self-contained: its text tokenizer inside; EMA weights by default),
        optionally a zoo-train CLIP one for reranking ``n_candidates`` samples per caption, and optionally a zoo-train
        noised CLIP (``model=noised_clip``) for CLIP guidance (with ``clip_guidance_scale``)."""
        if not glide_ckpt:
            from zoo.errors import ConfigError

            raise ConfigError(
                "the GLIDE pipeline needs a checkpoint (fix: generator.glide_ckpt=/path/to/last.ckpt, "
                "or zoo-sample generator=glide ckpt=/path/to/last.ckpt)"
            )
        check_options(kw, noised_clip_ckpt)  # before any checkpoint loads
        glide, weights = load_glide(str(glide_ckpt), device=device, use_ema=use_ema)
        scorer = None
        if clip_ckpt:
            from zoo.models.clip.scorer import ClipScorer

            scorer = ClipScorer.from_lightning_checkpoint(str(clip_ckpt), device=device)
        noised_clip = load_noised_clip(str(noised_clip_ckpt), device=device) if noised_clip_ckpt else None
        return cls(glide, scorer, weights=weights, noised_clip=noised_clip, **kw)

    @property
    def is_inpainting_model(self) -> bool:
        return bool(self.glide.cfg.inpaint)

    def _knobs(self) -> dict[str, Any]:
        return dict(
            guidance_scale=self.guidance_scale,
            steps=self.steps,
            sampler=self.sampler,
            eta=self.eta,
            batch_size=self.batch_size,
        )

    def _clip_knobs(self) -> dict[str, Any]:
        """``clip_guided_generate``'s knobs: unset ones from the checkpoint, except ``guidance_scale`` (1: GLIDE's
        CLIP guidance runs on the conditional model)."""
        hp = self.glide.hparams
        return dict(
            guidance_scale=1.0 if self.guidance_scale is None else float(self.guidance_scale),
            steps=self.steps,  # None: clip_guided_generate takes the checkpoint's sample_steps
            sampler=str(hp.get("sampler", "ddim") if self.sampler is None else self.sampler),
            eta=float(hp.get("eta", 0.0) if self.eta is None else self.eta),
            batch_size=self.batch_size,
        )

    def _draw(self, captions: list[str], seed: int) -> torch.Tensor:
        """One image per caption under ``seed``: (B, 3, H, W) in [-1, 1], classifier-free or CLIP guided."""
        if self.noised_clip is None:
            return self.glide.generate(captions, n=1, seed=seed, **self._knobs())
        from zoo.models.noised_clip.lit import clip_guided_generate

        return clip_guided_generate(
            self.glide, self.noised_clip, captions, self.clip_guidance_scale, n=1, seed=seed, **self._clip_knobs()
        )

    # ------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def candidates(self, captions: Sequence[str], n_candidates: Optional[int] = None) -> torch.Tensor:
        """(B, n, 3, H, W) in [-1, 1]: candidate i of every caption is sampled with seed ``seed + i``
        (classifier-free guidance: several candidates per denoiser batch, ``GlideLit.candidates``)."""
        n = n_candidates or self.n_candidates
        if self.noised_clip is None:
            show = self.progress if self.progress is not None else n > 1
            return self.glide.candidates(captions, n, seed=self.seed, progress=show, **self._knobs())
        captions = [captions] if isinstance(captions, str) else list(captions)
        per_batch = candidates_per_batch(len(captions), self.batch_size)  # CLIP guidance samples with ddim / ddpm
        return seeded_candidates(self._draw_seeds, captions, n, self.seed, per_batch, self.progress, "glide sample")

    def _draw_seeds(self, captions: list[str], seeds: list[int]) -> torch.Tensor:
        """CLIP-guided candidates under ``seeds`` in one sampler batch, each candidate's rows drawing from its own
        seed's generator: (len(seeds) * B, 3, H, W), candidate-major (the noised CLIP's gradient is per row)."""
        if len(seeds) == 1:
            return self._draw(captions, seeds[0])
        from zoo.models.noised_clip.lit import clip_guided_generate

        knobs = {**self._clip_knobs(), "batch_size": len(captions) * len(seeds)}
        rows = seeded_row_generators(len(captions), seeds, self.glide.device)
        return clip_guided_generate(
            self.glide, self.noised_clip, captions * len(seeds), self.clip_guidance_scale, generator=rows, **knobs
        )

    @torch.no_grad()
    def sample(
        self, captions: Sequence[str], n_candidates: Optional[int] = None, n_keep: Optional[int] = None
    ) -> dict[str, Any]:
        """``max(n_candidates, n_keep)`` samples per caption, CLIP-reranked when the pipeline has a CLIP; the
        ``n_keep`` best (or first) of each: dict(images (B, n_keep, 3, H, W), scores (B, n_keep) or None,
        n_candidates)."""
        captions = [captions] if isinstance(captions, str) else list(captions)
        k = int(n_keep or self.n_keep)
        n = max(int(n_candidates or self.n_candidates), k) if self.scorer is not None else k
        images, scores = self.rerank(self.candidates(captions, n), captions, k)
        return {"images": images, "scores": scores, "n_candidates": n}

    @torch.no_grad()
    def generate(self, captions: list[str]) -> torch.Tensor:
        """One image per caption (the CLIP-best of ``n_candidates`` with a CLIP, else candidate 0):
        FloatTensor (len(captions), 3, H, W) in [-1, 1]."""
        return self.sample(captions, n_keep=1)["images"][:, 0]

    __call__ = generate

    # ------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def inpaint(
        self, image: torch.Tensor, mask: torch.Tensor, captions: Sequence[str], replace_known: Optional[bool] = None
    ) -> dict[str, Any]:
        """Fill the erased pixels of ``image`` under ``captions`` (classifier-free guided; not with CLIP guidance).

        image: (B or 1, 3, H, W) or (3, H, W) in [-1, 1] at the model's resolution; mask: (B or 1, 1, H, W), (1, H, W)
        or (H, W), bool or float, **1 = known** (kept), 0 = to generate. Returns dict(images (B, 3, H, W) in [-1, 1],
        method (``METHOD_*``: which inpainting was used), replace_known)."""
        from zoo.errors import ConfigError

        if self.noised_clip is not None:
            raise ConfigError(
                "inpaint() samples with classifier-free guidance only; this pipeline has CLIP guidance on (fix: "
                "generator.noised_clip_ckpt=null generator.clip_guidance_scale=null for inpainting)"
            )
        captions = [captions] if isinstance(captions, str) else list(captions)
        image = torch.as_tensor(image)
        if image.dim() == 3:
            image = image.unsqueeze(0)
        mask = torch.as_tensor(mask)
        mask = mask.reshape(1, 1, *mask.shape) if mask.dim() == 2 else mask
        mask = mask.unsqueeze(1) if mask.dim() == 3 else mask
        if not image.is_floating_point() or float(image.min()) < -1.001 or float(image.max()) > 1.001:
            raise ValueError("inpaint: image must be float in [-1, 1] (uint8 [0, 255]: x.float() / 127.5 - 1)")
        replace = self.replace_known if replace_known is None else replace_known
        if self.is_inpainting_model:
            replace = bool(self.glide.hparams.get("replace_known", True) if replace is None else replace)
            method = METHOD_MODEL_AND_KNOWN if replace else METHOD_MODEL
        else:
            if replace is False:
                raise ConfigError(
                    "this GLIDE checkpoint is not an inpainting model (model=glide_inpaint): it can only "
                    "inpaint by re-imposing the known pixels (fix: replace_known=True, without --no-replace-known)"
                )
            replace, method = True, METHOD_KNOWN_REGION
        k = self._knobs()
        sampler = self.glide.hparams.get("sampler", "ddim") if k["sampler"] is None else k["sampler"]
        if replace and sampler not in OWN_SAMPLERS:
            # checked here, before any step: the sampler's refusal was a ValueError (a traceback from the CLI)
            # naming replace_known=False, which a plain model cannot take
            alone = " or replace_known=False (--no-replace-known): the inpainting model's input channels alone"
            raise ConfigError(
                f"inpainting re-imposes the known pixels after every step, which the ddim and ddpm samplers do, not "
                f"{sampler!r} (fix: sampler=ddim (--sampler ddim){alone if self.is_inpainting_model else ''})"
            )
        images = self.glide.inpaint(
            captions,
            image.float(),
            mask.float(),
            n=1,
            seed=self.seed,
            guidance_scale=k["guidance_scale"],
            steps=k["steps"],
            sampler=k["sampler"],
            eta=k["eta"],
            replace_known=replace,
            batch_size=self.batch_size,
        )
        return {"images": images, "method": method, "replace_known": replace}


# ------------------------------------------------------------------------------------------------ inpainting CLI
def parse_box(spec: str) -> tuple[float, float, float, float]:
    """``--box x0,y0,x1,y1``: the region to regenerate as fractions of the image's width and height (0,0 = top left)."""
    from zoo.errors import ConfigError

    try:
        x0, y0, x1, y1 = (float(v) for v in spec.split(","))
    except ValueError:
        raise ConfigError(f"--box {spec!r}: expected four fractions x0,y0,x1,y1, e.g. --box 0.5,0,1,0.5") from None
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise ConfigError(f"--box {spec}: need 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 (fractions of the image)")
    return x0, y0, x1, y1


def check_region(box: Optional[str], mask_file: Optional[str]) -> None:
    """Exactly one of ``--box`` / ``--mask``, and a box that parses (checked before any checkpoint loads)."""
    from zoo.errors import ConfigError

    if (box is None) == (mask_file is None):
        raise ConfigError("inpaint needs exactly one of --box x0,y0,x1,y1 (fractions) or --mask <png, white = redo>")
    if box is not None:
        parse_box(box)


def inpaint_mask(
    size: int,
    box: Optional[str] = None,
    mask_file: Optional[str] = None,
    image_size: Optional[tuple[int, int]] = None,
) -> torch.Tensor:
    """(1, 1, size, size) float, 1 = known (kept), 0 = regenerated, in the model's view of an image of
    ``image_size`` (width, height): that image resized (shorter side to ``size``) and centre-cropped, as
    ``zoo.data.transforms.image_transform`` does to the picture. The region is given on the image as the user sees
    it: ``--box`` in fractions of its width and height, or a mask image over it whose WHITE pixels are regenerated
    (the convention of image editors and of diffusers' inpainting pipelines; our API's mask is the other way round,
    1 = known), resized to the image's size if it has another with the same aspect ratio. Both go through the
    picture's resize and crop (nearest-neighbour), so a region lands on the pixels it covers in the picture; a
    square ``size`` image when ``image_size`` is None (a mask file: its own size)."""
    from torchvision.transforms import v2

    from zoo.errors import ConfigError

    check_region(box, mask_file)
    if box is not None:
        w, h = image_size or (size, size)
        x0, y0, x1, y1 = parse_box(box)
        redo = torch.zeros(1, h, w, dtype=torch.uint8)
        r0, r1 = int(round(y0 * h)), max(int(round(y1 * h)), int(round(y0 * h)) + 1)
        c0, c1 = int(round(x0 * w)), max(int(round(x1 * w)), int(round(x0 * w)) + 1)
        redo[..., r0:r1, c0:c1] = 255
        what = f"--box {box}"
    else:
        from PIL import Image

        try:
            with Image.open(mask_file) as im:
                gray = im.convert("L")
        except (OSError, ValueError) as e:
            raise ConfigError(f"--mask {mask_file}: not a readable image ({type(e).__name__}: {e})") from None
        w, h = image_size or gray.size
        if gray.size != (w, h):
            mw, mh = gray.size
            if abs(mw * h - mh * w) > max(w, h, mw, mh):  # more than a pixel's rounding apart
                raise ConfigError(
                    f"--mask {mask_file} is {mw}x{mh} px but the image is {w}x{h}: the mask must cover the image "
                    f"(fix: a mask of the image's size, white = regenerate)"
                )
            gray = gray.resize((w, h), Image.NEAREST)
        redo = torch.frombuffer(bytearray(gray.tobytes()), dtype=torch.uint8).view(1, h, w)
        if not bool((redo >= 128).any()):
            raise ConfigError(f"--mask {mask_file}: no white pixels, so nothing to regenerate (white = regenerate)")
        what = f"--mask {mask_file}"
    # the picture's own geometry (image_transform: shorter side to size, centre crop), nearest so the mask stays 0/1
    view = v2.Compose([v2.Resize(size, interpolation=v2.InterpolationMode.NEAREST), v2.CenterCrop(size)])(redo)
    known = (view < 128).float().view(1, 1, size, size)
    if bool(known.all()):
        raise ConfigError(
            f"{what}: the region covers no pixel of the model's {size}x{size} view of the image (the image is "
            f"resized and centre-cropped to it): choose a region inside the centre square of the image"
        )
    return known


def main(argv: Optional[Sequence[str]] = None) -> dict[str, str]:
    """``python -m zoo.pipelines.glide inpaint <image> --caption "..." (--box x0,y0,x1,y1 | --mask m.png)
    --glide-ckpt <ckpt>``: the image (resized and centre-cropped to the model's resolution) with the region redrawn
    under the caption, ``-n`` times (seeds seed..seed+n-1), as one grid PNG: the input with the region greyed out,
    then the samples. The region is given on the image file (``inpaint_mask``) and goes through its resize and crop.
    An inpainting checkpoint (``model=glide_inpaint``) reads the known pixels; a plain GLIDE
    re-imposes them at every step (the known-region method)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m zoo.pipelines.glide", description=main.__doc__)
    p.add_argument("mode", choices=["inpaint"])
    p.add_argument("image", help="the image file to edit")
    p.add_argument("--caption", required=True, help="what the regenerated region (and the image) should show")
    p.add_argument(
        "--box", default=None, help="region to regenerate, fractions x0,y0,x1,y1 of the image (0,0 = top left)"
    )
    p.add_argument("--mask", default=None, help="mask image over the image: white pixels are regenerated, black kept")
    p.add_argument("--glide-ckpt", required=True, help="zoo-train model=glide_inpaint (or model=glide) checkpoint")
    p.add_argument(
        "--out",
        default=None,
        help="the grid's image file (replaced if it exists, never the image or the mask), or a directory: "
        "<dir>/inpaint.png; default inpaint.png. A name the command chooses (the default, <dir>/inpaint.png) is "
        "never replaced: inpaint-<n>.png beside an earlier one",
    )
    p.add_argument("-n", "--n", type=int, default=4, help="samples (seeds seed .. seed + n - 1)")
    p.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance (null: checkpoint's)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the checkpoint's)")
    p.add_argument("--sampler", default=None, help="ddim | ddpm | a diffusers scheduler (default: the checkpoint's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-replace-known",
        action="store_true",
        help="inpainting model: read the known pixels as input only, do not re-impose them after every step",
    )
    p.add_argument("--no-ema", action="store_true", help="sample with the raw weights instead of the EMA")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    from zoo.config import report_user_errors

    @report_user_errors
    def run() -> dict[str, str]:
        from torchvision.utils import save_image

        from zoo.data.transforms import image_transform, load_rgb
        from zoo.errors import ConfigError
        from zoo.pipelines.unclip import _grid_path

        if a.n < 1:
            raise ConfigError(f"-n {a.n}: need at least one sample")
        # checked before any work; never the image or the mask being used
        out_file = _grid_path(a.out, "inpaint", [x for x in (a.image, a.mask) if x], default="inpaint.png")
        check_region(a.box, a.mask)
        try:
            picture = load_rgb(a.image)
        except (OSError, ValueError) as e:
            raise ConfigError(f"{a.image}: not a readable image ({type(e).__name__}: {e})") from None
        pipe = GlidePipeline.from_checkpoints(
            a.glide_ckpt,
            device=a.device,
            use_ema=not a.no_ema,
            guidance_scale=a.guidance_scale,
            steps=a.steps,
            sampler=a.sampler,
        )
        size = int(pipe.glide.cfg.image_size)
        image = image_transform(size)(picture).unsqueeze(0)
        known = inpaint_mask(size, a.box, a.mask, image_size=picture.size)
        rows = [image * known]  # the input, the region to redraw at 0 (grey)
        for i in range(a.n):
            pipe.seed = a.seed + i
            rows.append(pipe.inpaint(image, known, [a.caption], False if a.no_replace_known else None)["images"].cpu())
        out_file.parent.mkdir(parents=True, exist_ok=True)
        save_image(torch.cat(rows).add(1).div(2).clamp(0, 1), out_file, nrow=len(rows))
        print(out_file)
        return {"grid": str(out_file)}

    return run()


if __name__ == "__main__":
    main()
