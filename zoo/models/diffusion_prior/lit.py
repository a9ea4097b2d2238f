"""Training and sampling unCLIP's diffusion prior (Lightning): caption -> CLIP image embedding.

Trains from ``zoo-embed`` features only (no CLIP in the loop): the batch's ``clip_image_emb`` (the target),
``clip_text_emb`` and, per ``model.net.text_input``, ``clip_text_tokens`` or ``clip_text_encodings`` +
``clip_text_mask`` (``data.features.<split>=<zoo-embed file>``).

* Scale: CLIP embeddings are multiplied by ``embed_scale`` so that the image embeddings have unit variance per
  dimension on average, the paper's rule (its constant, 17.2, is for its ViT-H embeddings). Unless given, it is
  derived from the training split's image embeddings at ``setup("fit")`` as ``1 / sqrt(mean_d Var[x_d])`` and kept
  in a buffer, so it is in every checkpoint (a resumed or rebuilt module uses the stored value, never re-derives it).
  On L2-normalised D-dimensional embeddings (what ``zoo-embed`` writes) the derivation gives at least sqrt(D), 32 at
  D = 1024, not 17.2: the per-dimension variances of unit vectors sum to at most 1, while 17.2 at D = 1024 means
  they sum to 1024 / 17.2² = 3.5 (embeddings that were not unit length). ``model.embed_scale=17.2`` takes it as
  written.
* Loss: MSE on x0 (``GaussianDiffusion(model_mean_type="x0")``), cosine schedule, 1000 steps, t uniform.
* Classifier-free guidance: the text (tokens and embedding) is replaced by the learned null condition with
  probability ``text_dropout`` (0.1, the paper's) in training; ``sample`` guides with ``zoo.nn.guidance.guide``.
* Sampling: DDIM (η = 0 by default) on ``sample_steps`` (64) respaced steps; ``n_candidates`` (2) draws per caption,
  keeping the one with the higher dot product with the CLIP text embedding ("best of 2"); L2-normalised output.
* Validation: ``loss`` (no text dropout) and, on the first ``val_sample_batches`` batches, ``cos_image`` (cosine of
  the sampled embedding to the true image embedding) beside ``cos_text`` (the text embedding used as if it were an
  image embedding: the baseline a prior must beat).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F

from zoo.data.datamodule import every_caption_row
from zoo.diffusion.noise import RowGenerators
from zoo.diffusion.process import GaussianDiffusion
from zoo.diffusion.samplers import check_sampling_knobs, ddim_sample, ddpm_sample
from zoo.diffusion.schedules import get_schedule
from zoo.errors import ConfigError, check_number, check_rate, check_whole
from zoo.models.base import ClipEmbeddingLit, unmet_sizes
from zoo.models.diffusion_prior.model import DiffusionPriorNet, build_config
from zoo.nn.guidance import guide

_FIX_EMBED = (
    "run zoo-embed for the split and pass it, e.g. zoo-embed clip.checkpoint=<clip last.ckpt> data=shapes "
    "split={split} out=<dir>/{split}.pt, then data.features.{split}=<dir>/{split}.pt"
)


def embedding_scale(image_emb: torch.Tensor) -> float:
    """1 / sqrt(mean over dimensions of the per-dimension variance) of (N, D) embeddings: the factor that gives the
    embeddings unit variance per dimension on average (a single scalar, as the paper's 17.2; on unit-length embeddings
    it is >= sqrt(D), see the module docstring)."""
    x = image_emb.double()
    if x.ndim != 2 or x.shape[0] < 2:
        raise ConfigError(f"need >= 2 image embeddings (N, D) to derive the prior's embed_scale, got {tuple(x.shape)}")
    var = x.var(dim=0, unbiased=True).mean()
    if not torch.isfinite(var) or var <= 0:
        raise ConfigError(
            "the training image embeddings have zero variance: cannot derive embed_scale "
            "(fix: model.embed_scale=<value>, or check the zoo-embed file)"
        )
    return float(1.0 / var.sqrt())


def pick_best(candidates: torch.Tensor, text_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """candidates (B, n, D), text_emb (B, D) -> (the candidate with the highest dot product with the (normalised) text
    embedding (B, D), its index (B,))."""
    scores = (candidates.float() * F.normalize(text_emb.float(), dim=-1).unsqueeze(1)).sum(-1)  # (B, n)
    best = scores.argmax(dim=1)
    return candidates[torch.arange(candidates.shape[0], device=candidates.device), best], best


class DiffusionPriorLit(ClipEmbeddingLit):
    """Args:
    preset: ``tiny`` | ``shapes`` | ``paper`` (``zoo.models.diffusion_prior.model.PRESETS``); ``net`` overrides
        ``DiffusionPriorConfig`` fields (e.g. ``text_input``, ``clip_dim``, ``n_layers``).
    text_dropout: probability of training with the null condition (classifier-free guidance).
    timesteps, schedule: the training diffusion (``cosine`` | ``linear``, ``zoo.diffusion.schedules``).
    sample_steps, guidance_scale, n_candidates, eta: ``sample`` defaults (DDIM steps, guidance, best-of-n).
    embed_scale: the CLIP-embedding scale; None derives it from the training data at ``setup("fit")``.
    val_sample_batches: validation/test batches on which embeddings are sampled for ``cos_image``.
    clip_fingerprint: the CLIP of the training embeddings (``ClipEmbeddingLit``): filled in from the data and the
        checkpoint; leave None when training.
    """

    compile_module = "net"  # compile=true: the training step is one call of net (inside the diffusion loss)

    def __init__(
        self,
        preset: str = "shapes",
        net: Optional[dict[str, Any]] = None,
        text_dropout: float = 0.1,
        timesteps: int = 1000,
        schedule: str = "cosine",
        sample_steps: int = 64,
        guidance_scale: float = 1.0,
        n_candidates: int = 2,
        eta: float = 0.0,
        embed_scale: Optional[float] = None,
        val_sample_batches: int = 1,
        clip_fingerprint: Optional[str] = None,
        optimizer=None,
        scheduler=None,
    ):
        super().__init__(optimizer, scheduler)
        self.clip_fingerprint = clip_fingerprint  # the CLIP of its training embeddings (ClipEmbeddingLit)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        check_rate("model.text_dropout", text_dropout, "0.1")
        # int() took 2.5 candidates for 2 and true for 1 (no best-of-2 at all), and -1 validation batches for none
        why = "draws per caption, the best kept"
        check_whole("model.n_candidates", n_candidates, 1, "2, unCLIP's best of 2", why=why)
        why = "val batches on which embeddings are sampled; 0: none"
        check_whole("model.val_sample_batches", val_sample_batches, 0, 1, why=why)
        # a negative scale trained on flipped targets
        why = "null derives it from the training embeddings; the paper's 17.2 for ViT-H"
        check_number("model.embed_scale", embed_scale, 0, low_open=True, fix="null", none_ok=True, why=why)
        self.cfg = build_config(preset, net)
        self.net = DiffusionPriorNet(self.cfg)
        self.text_dropout = float(text_dropout)
        self.process = GaussianDiffusion(
            # get_schedule refuses 2.5 or true, which int() took for 2 or 1 step
            get_schedule(schedule, timesteps, ("model.schedule", "model.timesteps")),
            model_mean_type="x0",
            model_var_type="fixed_small",
            loss_type="mse",
        )
        # the sampling defaults a checkpoint carries, refused here (a bad one failed at the first sample, after
        # training when sanity validation is off, or -- a negative eta -- sampled silently wrong)
        check_sampling_knobs(
            self.process.num_timesteps,
            {"model.sample_steps": sample_steps, "model.eta": eta, "model.guidance_scale": guidance_scale},
        )
        self.sample_steps, self.guidance_scale = int(sample_steps), float(guidance_scale)
        self.n_candidates, self.eta = int(n_candidates), float(eta)
        self.val_sample_batches = int(val_sample_batches)
        # NaN = not derived yet; a checkpoint's value replaces it when the state dict is loaded
        self.register_buffer("embed_scale", torch.tensor(float("nan") if embed_scale is None else float(embed_scale)))

    # ------------------------------------------------------------------------------------------------ data
    @property
    def scale(self) -> torch.Tensor:
        if torch.isnan(self.embed_scale):
            raise ConfigError(
                "the prior's embed_scale is not set: it is derived from the training image embeddings "
                "at fit time (or pass model.embed_scale=<value>, or load a trained checkpoint)"
            )
        return self.embed_scale

    @staticmethod
    def _features(datamodule, split: str) -> dict[str, torch.Tensor]:
        if split not in (getattr(datamodule, "features", None) or {}):
            raise ConfigError(
                f"the diffusion prior trains from CLIP embeddings, and data.features.{split} is not set "
                f"(fix: {_FIX_EMBED.format(split=split)})"
            )
        return getattr(datamodule.dataset(split), "features", {}) or {}

    @property
    def val_features_needed(self) -> tuple[str, ...]:
        """What validation / test batches read from zoo-embed files (zoo.train.check_compatibility)."""
        return self._required_keys()

    def _required_keys(self) -> tuple[str, ...]:
        extra = {"tokens": ("clip_text_tokens",), "encodings": ("clip_text_encodings",), "none": ()}
        return ("clip_image_emb", "clip_text_emb", *extra[self.cfg.text_input])

    def data_sizes(self, datamodule) -> dict[str, Any]:
        """The train features' CLIP width, text positions and encoding width; open_clip's vocabulary when their
        token ids do not fit the table. Nothing when there are no features (check_data names the fix)."""
        if "train" not in (getattr(datamodule, "features", None) or {}):
            return {}
        feats, c = self._features(datamodule, "train"), self.cfg
        sizes: dict[str, Any] = {}
        if "clip_image_emb" in feats:
            sizes["clip_dim"] = int(feats["clip_image_emb"].shape[-1])
        key = {"tokens": "clip_text_tokens", "encodings": "clip_text_encodings"}.get(c.text_input)
        if key in feats:
            sizes["text_len"] = int(feats[key].shape[1])
            if key == "clip_text_encodings":
                sizes["text_enc_dim"] = int(feats[key].shape[2])
            elif self._token_past_vocab(datamodule, "train") is not None:
                sizes["text_vocab"] = 49408  # open_clip's BPE, what zoo-embed writes
        return unmet_sizes(c, sizes)

    def _token_past_vocab(self, datamodule, split: str) -> Optional[tuple[int, int, int]]:
        """``(token id, caption row, item)`` of the largest token id at or past ``text_vocab`` in the split's
        ``clip_text_tokens``, over every caption row training draws (not each item's first only); None if all fit."""
        columns, items = every_caption_row(datamodule.dataset(split))
        tokens = columns.get("clip_text_tokens")
        if tokens is None or not tokens.numel():
            return None
        top = tokens.amax(dim=tuple(range(1, tokens.dim())))  # (M,) each row's largest id
        row = int(top.argmax())
        if int(top[row]) < self.cfg.text_vocab:
            return None
        return int(top[row]), row, (row if items is None else int(items[row]))

    def check_data(self, datamodule) -> None:
        """The train (and val) splits carry zoo-embed features whose shapes fit the network."""
        c = self.cfg
        for split in ("train", "val"):
            feats = self._features(datamodule, split)
            missing = [k for k in self._required_keys() if k not in feats]
            if missing:
                hint = (
                    " (fix: zoo-embed ... text_encodings=true, or model.net.text_input=tokens)"
                    if "clip_text_encodings" in missing
                    else f" (fix: {_FIX_EMBED.format(split=split)})"
                )
                raise ConfigError(f"data.features.{split} lacks {missing}{hint}")
            d = feats["clip_image_emb"].shape[-1]
            if d != c.clip_dim:
                raise ConfigError(
                    f"the {split} CLIP embeddings are {d}-d but the prior's clip_dim is {c.clip_dim} "
                    f"(fix: model.net.clip_dim={d})"
                )
            key = {"tokens": "clip_text_tokens", "encodings": "clip_text_encodings"}.get(c.text_input)
            if key and feats[key].shape[1] != c.text_len:
                raise ConfigError(
                    f"{key} has {feats[key].shape[1]} positions but the prior's text_len is "
                    f"{c.text_len} (fix: model.net.text_len={feats[key].shape[1]})"
                )
            bad = self._token_past_vocab(datamodule, split) if c.text_input == "tokens" else None
            if bad is not None:
                # an embedding lookup past the table is an IndexError deep in a training step otherwise (the step
                # that first draws that caption: another epoch's, for a caption after an image's first)
                token, row, item = bad
                fix = "49408, open_clip's BPE vocabulary, which zoo-embed writes" if token < 49408 else token + 1
                raise ConfigError(
                    f"data.features.{split}={datamodule.features[split]}: clip_text_tokens hold token id {token} "
                    f"(caption row {row}, of item {item}) but the prior's text_vocab is {c.text_vocab} (fix: "
                    f"model.net.text_vocab={fix})"
                )
            if c.text_input == "encodings" and feats[key].shape[2] != c.text_enc_dim:
                raise ConfigError(
                    f"clip_text_encodings are {feats[key].shape[2]}-d but text_enc_dim is "
                    f"{c.text_enc_dim} (fix: model.net.text_enc_dim={feats[key].shape[2]})"
                )

    def setup(self, stage: Optional[str] = None) -> None:
        super().setup(stage)  # the data's CLIP fingerprint, checked against this module's
        if stage != "fit" or not torch.isnan(self.embed_scale):
            return
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            raise ConfigError(
                "embed_scale is not set and there is no datamodule to derive it from (fix: model.embed_scale=<value>)"
            )
        value = embedding_scale(self._features(dm, "train")["clip_image_emb"])
        self.embed_scale.fill_(value)

    def condition(self, batch: dict[str, Any]) -> dict[str, Optional[torch.Tensor]]:
        """The network's text inputs from a batch (text embedding in scaled units)."""
        c = self.cfg
        missing = [k for k in self._required_keys() if k not in batch]
        if missing:
            raise ConfigError(
                f"the batch lacks {missing}: the diffusion prior needs zoo-embed features for every "
                f"split it runs on (fix: data.features.<split>=<zoo-embed file>)"
            )
        out: dict[str, Optional[torch.Tensor]] = {"text_emb": batch["clip_text_emb"].float() * self.scale}
        if c.text_input == "tokens":
            out["text_tokens"] = batch["clip_text_tokens"].long()
        elif c.text_input == "encodings":
            out["text_encodings"] = batch["clip_text_encodings"]
            out["text_mask"] = batch.get("clip_text_mask")
        return out

    # ------------------------------------------------------------------------------------------------ training
    def forward_loss(self, batch: dict[str, Any], text_dropout: float = 0.0) -> dict[str, torch.Tensor]:
        x0 = batch["clip_image_emb"].float() * self.scale  # (B, D)
        cond = self.condition(batch)
        b = x0.shape[0]
        t = self.process.sample_timesteps(b, device=x0.device)
        drop = (torch.rand(b, device=x0.device) < text_dropout) if text_dropout > 0 else None

        def model_fn(x_t, timesteps):
            return self.net(x_t, timesteps, **cond, drop_text=drop)

        losses = self.process.training_losses(model_fn, x0, t, report_vb=False)  # only the loss is logged
        return {"loss": losses["loss"].mean()}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        r = self.forward_loss(batch, self.text_dropout)
        self.log_metrics("train", {"loss": r["loss"]}, batch_size=len(batch["clip_image_emb"]))
        return r["loss"]

    def eval_step(self, batch: dict[str, Any], stage: str, batch_idx: int = 0) -> None:
        n = len(batch["clip_image_emb"])
        metrics = {"loss": self.forward_loss(batch)["loss"]}
        if batch_idx < self.val_sample_batches:
            g = torch.Generator(device=self.device).manual_seed(batch_idx)
            z = self.sample(**self._sample_inputs(batch), generator=g)
            target = F.normalize(batch["clip_image_emb"].float(), dim=-1)
            metrics["cos_image"] = (z * target).sum(-1).mean()
            metrics["cos_text"] = (F.normalize(batch["clip_text_emb"].float(), dim=-1) * target).sum(-1).mean()
        self.log_metrics(stage, metrics, batch_size=n)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.eval_step(batch, "val", batch_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.eval_step(batch, "test", batch_idx)

    def default_optimizer(self, params) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=3e-4, weight_decay=0.06)

    # ------------------------------------------------------------------------------------------------ sampling
    @staticmethod
    def _sample_inputs(batch: dict[str, Any]) -> dict[str, Any]:
        keys = {
            "clip_text_emb": "text_emb",
            "clip_text_tokens": "text_tokens",
            "clip_text_encodings": "text_encodings",
            "clip_text_mask": "text_mask",
        }
        return {v: batch[k] for k, v in keys.items() if k in batch}

    @torch.no_grad()
    def sample_candidates(
        self,
        text_emb: torch.Tensor,
        text_tokens: Optional[torch.Tensor] = None,
        text_encodings: Optional[torch.Tensor] = None,
        text_mask: Optional[torch.Tensor] = None,
        steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        n_candidates: Optional[int] = None,
        eta: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
        sampler: str = "ddim",
    ) -> torch.Tensor:
        """n_candidates L2-normalised CLIP image embeddings per caption: (B, n, D). Inputs as the batch's
        ``clip_text_emb`` (B, D) (L2-normalised CLIP units) and ``clip_text_tokens`` / ``clip_text_encodings``.
        ``sampler``: ``ddim`` (with ``eta``) or ``ddpm`` (ancestral, fixed-small variance; ``eta`` unused), both on
        ``steps`` respaced steps (e.g. ``steps=1000, sampler="ddpm"``: the full chain, eval/prior.py's reference)."""
        if sampler not in ("ddim", "ddpm"):
            raise ConfigError(f"sampler={sampler!r}; choose ddim or ddpm")
        steps = self.sample_steps if steps is None else int(steps)
        scale = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        n = self.n_candidates if n_candidates is None else int(n_candidates)
        eta = self.eta if eta is None else float(eta)
        b, dev = text_emb.shape[0], self.embed_scale.device
        c = self.cfg
        text = {
            "text_tokens": text_tokens if c.text_input == "tokens" else None,
            "text_encodings": text_encodings if c.text_input == "encodings" else None,
            "text_mask": text_mask if c.text_input == "encodings" else None,
        }
        own = {k: v.to(dev) for k, v in text.items() if v is not None}
        emb = (text_emb.to(dev).float() * self.scale).repeat_interleave(n, 0)  # (B n, D)
        # the text positions' keys/values are the same at every step (causal mask): computed once here, and once per
        # caption (its n candidate rows share it) plus once for the null caption of every unconditional row
        rows = torch.arange(b, device=dev).repeat_interleave(n)
        if scale == 1.0:  # the unconditional pass is skipped (guide(., ., 1) = cond)
            cache = self.net.text_cache(b, **own)
        else:  # one batch [cond ; uncond]
            null = torch.arange(b + 1, device=dev) == b  # one more row (any caption's text: dropped) for the null
            cache = self.net.text_cache(b + 1, **{k: torch.cat([v, v[:1]]) for k, v in own.items()}, drop_text=null)
            rows = torch.cat([rows, torch.full_like(rows, b)])
            emb = torch.cat([emb, emb])
            drop = torch.arange(2 * b * n, device=dev) >= b * n
        cache = self.net.expand_cache(cache, rows)

        def model_fn(x, timesteps):
            if scale == 1.0:
                return self.net.forward_cached(cache, x, timesteps, emb).float()
            out = self.net.forward_cached(
                cache, torch.cat([x, x]), torch.cat([timesteps, timesteps]), emb, drop_text=drop
            ).float()
            out_cond, out_uncond = out.chunk(2)
            return guide(out_uncond, out_cond, scale)

        process = self.process.respaced(steps) if steps != self.process.num_timesteps else self.process
        if isinstance(generator, RowGenerators):  # one stream per group of captions: each caption's n rows are its own
            generator = generator.repeated(n)
        if sampler == "ddpm":
            x = ddpm_sample(process, model_fn, (b * n, c.clip_dim), generator=generator, device=dev)
        else:
            x = ddim_sample(process, model_fn, (b * n, c.clip_dim), eta=eta, generator=generator, device=dev)
        return F.normalize(x, dim=-1).view(b, n, c.clip_dim)

    @torch.no_grad()
    def sample(
        self,
        text_emb: torch.Tensor,
        text_tokens: Optional[torch.Tensor] = None,
        *,
        text_encodings: Optional[torch.Tensor] = None,
        text_mask: Optional[torch.Tensor] = None,
        steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        n_candidates: Optional[int] = None,
        eta: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
        sampler: str = "ddim",
    ) -> torch.Tensor:
        """Text -> L2-normalised CLIP image embeddings (B, D): the best (highest dot product with the text
        embedding) of ``n_candidates`` DDIM (or ``sampler="ddpm"``) samples with ``steps`` steps and classifier-free
        ``guidance_scale``."""
        cands = self.sample_candidates(
            text_emb,
            text_tokens,
            text_encodings,
            text_mask,
            steps,
            guidance_scale,
            n_candidates,
            eta,
            generator,
            sampler,
        )
        best, _ = pick_best(cands, text_emb.to(cands.device))
        return best

    def extra_repr(self) -> str:
        s = float(self.embed_scale)
        return f"embed_scale={'unset' if math.isnan(s) else f'{s:.4g}'}"
