"""Training a noised CLIP with Lightning, and GLIDE sampling guided by it (CLIP guidance).

Training: each batch's images are noised with the GLIDE process (``zoo.diffusion.GaussianDiffusion`` over the same
schedule as GLIDE: cosine, 1000 steps) at t ~ U{0..T-1}, independently per image; the image tower sees (x_t, t), the
text tower the caption's ``text_tokens`` (``data/tokenizer=bpe``, stored in the checkpoint as GLIDE does); loss:
CLIP's symmetric cross-entropy over the batch (``open_clip.ClipLoss``, gathered across DDP ranks).

Guidance: ``clip_guided_generate(glide, noised_clip, captions, scale)`` samples a ``GlideLit`` with GLIDE's CLIP
guidance (``zoo.diffusion.guidance.clip_guided_sample``): μ + s · Σ · ∇_x (f(x_t, t) · g(c)) each step, on top of the
text-conditional model (``guidance_scale`` 1, GLIDE's CLIP-guidance setting) or of classifier-free guidance. With
``scale=0`` it is the unguided sampler bit for bit, so "classifier-free vs CLIP guidance" is one switch.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import open_clip
import torch

from zoo.diffusion.guidance import clip_guided_sample, dot_product_gradient
from zoo.diffusion.process import GaussianDiffusion
from zoo.diffusion.schedules import get_schedule
from zoo.errors import ConfigError
from zoo.models.base import TextTokenizerLit, check_text_tokenizer, resolve_preset, text_tokenizer_sizes, unmet_sizes
from zoo.models.clip.lit import contrastive_loss
from zoo.models.noised_clip.model import NOISED_CLIP_PRESETS, NoisedClip, NoisedClipConfig
from zoo.text import TextTokenizer


def build_config(preset: str = "shapes", net: Optional[dict[str, Any]] = None) -> NoisedClipConfig:
    return resolve_preset(NOISED_CLIP_PRESETS, NoisedClipConfig, preset, net, "noised CLIP")


class NoisedClipLit(TextTokenizerLit):
    """Args:
    preset: ``tiny`` | ``shapes`` | ``paper`` (``NOISED_CLIP_PRESETS``); ``net`` overrides ``NoisedClipConfig``.
    num_timesteps, schedule: the noising process; must match the GLIDE model it will guide (cosine, 1000).
    text_tokenizer: filled in by the checkpoint (leave None when training).
    """

    def __init__(
        self,
        preset: str = "shapes",
        net: Optional[dict[str, Any]] = None,
        num_timesteps: int = 1000,
        schedule: str = "cosine",
        text_tokenizer: Optional[dict[str, Any]] = None,
        optimizer=None,
        scheduler=None,
    ):
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "text_tokenizer"])
        self.cfg = build_config(preset, net)
        self.net = NoisedClip(self.cfg)
        self.process = GaussianDiffusion(get_schedule(schedule, num_timesteps))  # only q_sample is used; refuses 2.5
        self.text_tokenizer: Optional[TextTokenizer] = TextTokenizer.from_spec(text_tokenizer)
        self.loss_fn = open_clip.ClipLoss()

    def decay_split(self) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
        """(decayed, not decayed) trainable parameters: no weight decay on gains, biases, embeddings and the
        temperature, as the zoo's CLIP (``ClipLit.trainable_parameters``) and open_clip's training."""
        decay, no_decay = [], []
        for n, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "logit_scale" in n or "embedding" in n or "ln" in n else decay).append(p)
        return decay, no_decay

    def trainable_parameters(self) -> list[dict[str, Any]]:
        """Two groups: ``decay_split``'s decayed parameters (the optimizer's ``weight_decay``, 0.1 in
        conf/model/noised_clip.yaml) and the others at weight decay 0 (which would otherwise pull ``logit_scale``, the
        LayerNorm / GroupNorm gains and the embeddings towards 0 every step)."""
        decay, no_decay = self.decay_split()
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    def default_optimizer(self, params) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=3e-4, weight_decay=0.1)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resuming a checkpoint written when the optimizer had one parameter group (every parameter decayed): its
        optimizer state is re-laid into ``trainable_parameters``' two groups (same per-parameter moments; the second
        group at weight decay 0), and one-entry per-group lists of its LR schedulers are repeated for both groups."""
        super().on_load_checkpoint(checkpoint)
        decay, no_decay = self.decay_split()
        old_order = [p for p in self.parameters() if p.requires_grad]  # the one group's parameter order
        new_index = {id(p): i for i, p in enumerate(decay + no_decay)}
        remapped = False
        for opt in checkpoint.get("optimizer_states") or []:
            groups = opt.get("param_groups") or []
            if len(groups) != 1 or len(groups[0].get("params", ())) != len(old_order) or not no_decay:
                continue
            old = groups[0]
            pos = {i: new_index[id(p)] for i, p in zip(old["params"], old_order)}  # old state id -> new index
            opt["state"] = {pos[k]: v for k, v in (opt.get("state") or {}).items() if k in pos}
            opt["param_groups"] = [
                {**old, "params": list(range(len(decay)))},
                {**old, "weight_decay": 0.0, "params": list(range(len(decay), len(decay) + len(no_decay)))},
            ]
            remapped = True
        if remapped:
            for sched in checkpoint.get("lr_schedulers") or []:
                for k, v in list(sched.items()):
                    if isinstance(v, list) and len(v) == 1 and k in ("base_lrs", "_last_lr"):
                        sched[k] = v * 2

    # ------------------------------------------------------------------------------------------ tokenizer / data
    def data_sizes(self, datamodule) -> dict[str, Any]:
        """The text tokenizer's vocabulary / context length / pad id and data.resolution."""
        sizes: dict[str, Any] = text_tokenizer_sizes(datamodule, self.cfg)
        res = getattr(datamodule, "resolution", None)
        if res is not None:
            sizes.update(unmet_sizes(self.cfg, {"image_size": int(res)}))
        return sizes

    def check_data(self, datamodule) -> None:
        """Text tokens compatible with the text tower, data resolution == image_size, >= 2 pairs per batch.
        Keeps the DataModule's tokenizer (it goes into the checkpoint)."""
        c = self.cfg
        bs = getattr(datamodule, "batch_size", None)
        if bs is not None and bs < 2:
            raise ConfigError(
                f"the contrastive loss needs at least 2 pairs per batch, got data.batch_size={bs} "
                "(fix: data.batch_size=64 or more)"
            )
        tok = check_text_tokenizer(
            datamodule,
            c.text_vocab,
            c.text_len,
            c.pad_id,
            "the noised CLIP",
            "data/tokenizer=bpe, the tokenizer of the GLIDE model it will guide",
        )
        res = getattr(datamodule, "resolution", None)
        if res is not None and res != c.image_size:
            raise ConfigError(
                f"data.resolution={res} but the noised CLIP is built for {c.image_size} px "
                f"(fix: model.net.image_size={res}, or data.resolution={c.image_size})"
            )
        self.text_tokenizer = tok

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self._trainer is not None:  # DDP: every rank's pairs are negatives for every other's
            self.loss_fn = contrastive_loss(self)

    def encode_captions(self, captions: Sequence[str]) -> torch.Tensor:
        """Captions -> (B, text_len) token ids on the module's device."""
        if self.text_tokenizer is None:
            raise RuntimeError("no text tokenizer: train with data/tokenizer=bpe (it is stored in the checkpoint)")
        return self.net.pad_text(self.text_tokenizer.encode(list(captions))).to(self.device)

    # ------------------------------------------------------------------------------------------ training
    def forward_loss(
        self, batch: dict[str, Any], generator: Optional[torch.Generator] = None, t: Optional[torch.Tensor] = None
    ) -> dict[str, torch.Tensor]:
        """Contrastive loss of (noised image at t, caption) pairs; t ~ U{0..T-1} per image unless given (indices)."""
        x0 = batch["image"].float()
        if t is None:
            t = self.process.sample_timesteps(x0.shape[0], device=x0.device, generator=generator)
        x_t = self.process.q_sample(x0, t, generator=generator)
        img, txt = self.net(x_t, self.process.model_timesteps(t), batch["text_tokens"].to(x0.device))
        scale = self.net.logit_scale.exp()
        loss = self.loss_fn(img.float(), txt.float(), scale)
        with torch.no_grad():
            target = torch.arange(len(txt), device=txt.device)
            acc = ((txt.float() @ img.float().t()).argmax(1) == target).float().mean()
        return {"loss": loss, "t2i_acc": acc, "logit_scale": scale.detach()}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        r = self.forward_loss(batch)
        self.log_metrics("train", r, batch_size=len(batch["image"]))
        return r["loss"]

    def optimizer_step(self, *args, **kwargs) -> None:
        # CLIP's clamp (temperature no sharper than 1/100) right after each update: in on_train_batch_end it ran after
        # the callbacks' hooks, so a checkpoint saved at that step held the unclamped value and a resume from it
        # started from another temperature than the uninterrupted run
        super().optimizer_step(*args, **kwargs)
        with torch.no_grad():
            self.net.logit_scale.clamp_(0, math.log(100))

    def eval_step(self, batch: dict[str, Any], stage: str) -> None:
        gen = torch.Generator(device=self.device).manual_seed(0)  # fixed t and noise: comparable validations
        r = self.forward_loss(batch, generator=gen)
        self.log_metrics(stage, r, batch_size=len(batch["image"]))

    # ------------------------------------------------------------------------------------------ guidance
    def score(self, x_t: torch.Tensor, t: torch.Tensor, text_tokens: torch.Tensor) -> torch.Tensor:
        """Per-pair dot product f(x_t, t) · g(c) (B,); t original timesteps (0 scores clean images)."""
        img, txt = self.net(x_t, t, text_tokens)
        return (img * txt).sum(-1)

    def cond_fn(self, text_tokens: torch.Tensor, scale: float):
        """``cond_fn(x_t, t) = scale · ∇_x f(x_t, t) · g(c)`` for captions' tokens (B, <= text_len)."""
        with torch.no_grad():
            text_emb = self.net.encode_text(text_tokens.to(self.device))
        return dot_product_gradient(self.net.encode_image, text_emb, scale)


def check_guidance_pair(glide, noised_clip: NoisedClipLit, option: str = "") -> None:
    """ConfigError (naming the fix) unless ``noised_clip`` can guide ``glide``: trained on the same diffusion process
    (number of steps and ᾱ schedule) at the same resolution. ``option``: the config key that chose the noised CLIP,
    named in the message (e.g. ``generator.noised_clip_ckpt``)."""
    where = f" ({option})" if option else ""
    gp, cp = glide.process.schedule, noised_clip.process.schedule
    if gp.num_timesteps != cp.num_timesteps or not torch.allclose(gp.alphas_cumprod, cp.alphas_cumprod):
        raise ConfigError(
            f"the noised CLIP{where} was trained on another diffusion process than the GLIDE model's (its noise "
            f"schedule or its number of steps differs: {cp.num_timesteps} vs {gp.num_timesteps}) (fix: train it with "
            f"model.schedule / model.num_timesteps equal to GLIDE's, e.g. zoo-train experiment=glide/noised_clip_shapes)"
        )
    if noised_clip.cfg.image_size != glide.cfg.image_size:
        raise ConfigError(
            f"the noised CLIP{where} takes {noised_clip.cfg.image_size} px, GLIDE samples "
            f"{glide.cfg.image_size} px (fix: a noised CLIP trained at GLIDE's resolution, "
            f"model.net.image_size={glide.cfg.image_size} data.resolution={glide.cfg.image_size})"
        )


@torch.no_grad()
def clip_guided_generate(
    glide,
    noised_clip: NoisedClipLit,
    captions: Sequence[str],
    scale: float,
    n: int = 1,
    seed: int = 0,
    steps: Optional[int] = None,
    sampler: str = "ddpm",
    guidance_scale: float = 1.0,
    eta: float = 0.0,
    batch_size: int = 64,
    generator=None,
) -> torch.Tensor:
    """GLIDE samples with CLIP guidance -> (len(captions) * n, 3, H, W) in [-1, 1], caption-major.

    ``glide``: a ``GlideLit``; ``noised_clip``: a ``NoisedClipLit`` trained on the same process (schedule and number
    of steps) and resolution; ``scale``: s in μ + s · Σ · ∇(f · g) (0 = unguided); ``guidance_scale``: classifier-free
    guidance underneath (1 = the conditional model, GLIDE's CLIP-guidance setting); ``sampler``: ``ddpm`` (GLIDE:
    mean shift) or ``ddim`` (score shift). Deterministic given ``seed``; ``generator`` (a ``torch.Generator`` or a
    ``zoo.diffusion.noise.RowGenerators``, e.g. one stream per candidate) replaces the seed's generator."""
    if isinstance(captions, str):
        captions = [captions]
    check_guidance_pair(glide, noised_clip)
    steps = int(glide.hparams.sample_steps if steps is None else steps)
    was = glide.training, noised_clip.training
    glide.eval(), noised_clip.eval()
    try:
        text = glide.encode_captions(captions).repeat_interleave(int(n), 0)  # GLIDE's tokens
        clip_text = noised_clip.encode_captions(captions).repeat_interleave(int(n), 0)  # the noised CLIP's own
        gen = generator if generator is not None else torch.Generator(device=glide.device).manual_seed(int(seed))
        c = glide.cfg
        out = []
        for i in range(0, len(text), batch_size):
            tt = text[i : i + batch_size]
            shape = (len(tt), c.out_channels, c.image_size, c.image_size)
            x = clip_guided_sample(
                glide.process.respaced(steps),
                glide.model_fn(tt, guidance_scale),
                noised_clip.cond_fn(clip_text[i : i + batch_size], scale),
                shape,
                sampler=sampler,
                eta=eta,
                generator=gen,
                device=glide.device,
                clip_denoised=True,  # as GLIDE's own sampler: the predicted x0 is clipped to the image range
            )
            out.append(x.float().clamp(-1, 1))
        return torch.cat(out)
    finally:
        glide.train(was[0]), noised_clip.train(was[1])
