"""Training CLIP (Lightning) with open_clip's contrastive loss and learnable temperature.

Batches: ``image`` (B, 3, H, W) in [-1, 1] of any size and ``caption`` (list[str]); the module tokenises with the
architecture's own open_clip tokenizer and applies the model's own preprocessing (``ClipScorer.preprocess``), so any
DataModule fits (``data/tokenizer=none`` saves the DataModule's tokenising work).

Loss: open_clip's ``ClipLoss`` (symmetric InfoNCE; features gathered from every rank under DDP) with the learnable
temperature ``logit_scale`` clamped to ln(100) after each step, as in CLIP. With ``hard_negatives`` (NegCLIP; see
``zoo.models.clip.negatives``) each caption also gets a copy with one attribute word swapped, which its image must
score below its own caption.

Validation / test accumulate the epoch's embeddings (gathered over ranks) and log ``val/loss`` — the same symmetric
InfoNCE over all N val pairs at once, so it is larger than ``train/loss`` when N > batch size — and recall@1/@5 for
text->image (``t2i``) and image->text (``i2t``). Recall counts a hit only at the paired index: shapes captions can
repeat (two scenes may share a caption) and such a duplicate ranked first counts as a miss, so the numbers are a
strict lower bound of caption-level recall.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Optional

import open_clip
import torch
import torch.nn.functional as F

from zoo.errors import ConfigError, check_switch, check_whole
from zoo.models.base import ZooLit
from zoo.models.clip.model import clip_config, create_clip, tokenizer_for
from zoo.models.clip.negatives import NegativeSwapper, hard_negative_loss, same_text
from zoo.models.clip.scorer import ClipScorer

log = logging.getLogger(__name__)


def recall_at_k(sim: torch.Tensor, k: int) -> float:
    """sim (N_queries, N_targets) where query i's match is target i (exact index matching)."""
    topk = sim.topk(min(k, sim.shape[1]), dim=1).indices
    return (topk == torch.arange(sim.shape[0], device=sim.device)[:, None]).any(1).float().mean().item()


def contrastive_loss(lit) -> open_clip.ClipLoss:
    """open_clip's symmetric InfoNCE for a module under a trainer. DDP: features are gathered from all ranks, so
    each rank sees every negative (gradients flow through the gather)."""
    return open_clip.ClipLoss(
        local_loss=False,
        gather_with_grad=True,
        cache_labels=True,
        rank=lit.global_rank,
        world_size=lit.trainer.world_size,
    )


class ClipLit(ZooLit):
    """CLIP on any open_clip architecture.

    Args:
        preset: ``tiny`` | ``shapes`` | ``paper`` (see ``zoo.models.clip.model.PRESETS``).
        arch: any open_clip architecture name (``ViT-B-32``, ``zoo-clip-shapes64``, ...); overrides the preset's.
        net: open_clip model-config overrides, e.g. ``{"embed_dim": 64, "vision_cfg": {"width": 128}}``.
        pretrained: an open_clip tag (``openai``, ``laion2b_s34b_b79k``, ...) — read from its cache / downloaded.
        checkpoint: a local open_clip file or a zoo-train ``.ckpt`` to start from.
        cache_dir: where open_clip / the HF hub cache pretrained weights (default: their own cache).
        load_weights: False rebuilds the architecture only (set in saved checkpoints, whose state dict holds the
            weights, so reloading never needs the original ``pretrained``/``checkpoint`` files).
        hard_negatives: None, or ``{"groups": <name or word lists>, "seed": int, "exchange": bool}``: one
            swapped-word negative caption per caption (``groups=shapes``: the world's shape and position words;
            ``exchange=true``: two of the caption's own words of one group trade places, a binding negative, e.g.
            with ``groups=binding``).
    """

    def __init__(
        self,
        preset: str = "shapes",
        arch: Optional[str] = None,
        net: Optional[dict[str, Any]] = None,
        pretrained: Optional[str] = None,
        checkpoint: Optional[str] = None,
        cache_dir: Optional[str] = None,
        load_weights: bool = True,
        hard_negatives: Optional[dict[str, Any]] = None,
        optimizer=None,
        scheduler=None,
    ):
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.config = clip_config(preset, arch, net)
        self.arch = self.config.arch
        self.clip = create_clip(
            self.config, pretrained=pretrained, checkpoint=checkpoint, cache_dir=cache_dir, load_weights=load_weights
        )
        if getattr(self.clip, "logit_bias", None) is not None:
            # SigLIP architectures (or net.init_logit_bias) carry the sigmoid loss's bias; this module trains with
            # CLIP's softmax InfoNCE, which never reads it. Left trainable it got no gradient, and under DDP (whose
            # default refuses parameters without one) the run died at its second step. Frozen: it keeps its value.
            self.clip.logit_bias.requires_grad_(False)
            log.info(
                "CLIP %s has a logit_bias (a sigmoid-loss architecture): trained with the softmax contrastive loss, "
                "which does not use it, so it stays frozen",
                self.arch,
            )
        self.tokenize = tokenizer_for(self.config)
        # its preprocessing, used by embed(); on the model's device (a build on the meta device stays there)
        self._scorer = ClipScorer.from_model(self.clip, self.tokenize, device=next(self.clip.parameters()).device)
        self.clip.train()  # (building a scorer switched the network to eval mode)
        self.image_size = self._scorer.image_size
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.loss_fn = open_clip.ClipLoss()
        self.swapper = None
        if hard_negatives:  # checked here, so a bad vocabulary fails before training starts
            unknown = set(hard_negatives) - {"groups", "seed", "exchange"}
            if unknown:
                raise ConfigError(
                    f"unknown model.hard_negatives keys {sorted(unknown)} (fix: groups=<shapes, binding or word "
                    "lists>, seed=<int>, exchange=<bool>)"
                )
            seed, exchange = hard_negatives.get("seed", 0), hard_negatives.get("exchange", False)
            # checked, not cast: bool("no") is True (Hydra hands a word over as a string), int(2.5) is 2
            check_whole("model.hard_negatives.seed", seed, fix=0)
            check_switch("model.hard_negatives.exchange", exchange)  # true: binding negatives; false: one word swapped
            self.swapper = NegativeSwapper(hard_negatives.get("groups", "shapes"), seed, exchange=exchange)

    # -- shared with ClipScorer ---------------------------------------------------------------------------------
    def scorer(self) -> ClipScorer:
        """A ClipScorer over this module's weights (shares them; puts the network in eval mode)."""
        return ClipScorer.from_model(self.clip, self.tokenize, device=self.device)

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        s = self._scorer
        s.device, s.mean, s.std = self.device, s.mean.to(self.device), s.std.to(self.device)
        return s.preprocess(images)

    def embed(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised (image, text) features (B, D) each, with gradients."""
        img = self.clip.encode_image(self._pixels(batch["image"]), normalize=True)
        txt = self.clip.encode_text(self.tokenize(list(batch["caption"])).to(self.device), normalize=True)
        return img, txt

    # -- checks ------------------------------------------------------------------------------------------------
    def check_data(self, datamodule) -> None:
        bs = getattr(datamodule, "batch_size", None)
        if bs is not None and bs < 2:
            raise ConfigError(
                f"CLIP's contrastive loss needs at least 2 pairs per batch, got data.batch_size={bs} "
                "(fix: data.batch_size=64 or more)"
            )
        dataset = getattr(datamodule, "dataset", None)
        if not callable(dataset):
            return
        try:
            sample = dataset("val")[0]
        except ConfigError:
            raise
        except Exception:  # noqa: BLE001  (streamed / lazily built datasets: checked when batches arrive)
            return
        if not isinstance(sample, dict) or "image" not in sample or "caption" not in sample:
            keys = sorted(sample) if isinstance(sample, dict) else type(sample).__name__
            raise ConfigError(
                f"CLIP trains on image-caption pairs but the data's samples have {keys} "
                "(fix: a data config whose samples carry 'image' and 'caption', e.g. data=shapes)"
            )
        img = sample["image"]
        if not torch.is_tensor(img) or img.dim() != 3 or img.shape[0] != 3:
            shape = tuple(img.shape) if torch.is_tensor(img) else type(img).__name__
            raise ConfigError(f"CLIP expects RGB images (3, H, W) in [-1, 1], got {shape} (fix: the data config)")
        if not isinstance(sample["caption"], str):
            raise ConfigError(f"CLIP expects one caption string per sample, got {type(sample['caption']).__name__}")
        if self.swapper is not None:
            self._check_negatives_match(dataset("val"))

    def _check_negatives_match(self, ds) -> None:
        """Groups whose words no caption holds (a typo, another dataset's words) made no negative at all: the run was
        plain CLIP, logging neg_acc=nan, without an error. Checked on up to 64 val captions."""
        try:
            captions = [ds[i]["caption"] for i in range(min(64, len(ds)))]
        except Exception:  # noqa: BLE001  (no len / index: checked by neg_acc only)
            return
        if captions and not bool(self.swapper(captions)[1].any()):
            what = "two different words of one group" if self.swapper.exchange else "a word of a group"
            raise ConfigError(
                f"model.hard_negatives makes no negative for the data: none of {len(captions)} val captions holds "
                f"{what} of groups={self.swapper.groups} (e.g. {captions[0]!r}) (fix: groups=shapes or binding for "
                "the shapes world, or word lists of the data's own captions)"
            )

    # -- training ------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        self.loss_fn = contrastive_loss(self)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        scale = self.clip.logit_scale.exp()
        if self.swapper is None:
            img, txt = self.embed(batch)
            loss = self.loss_fn(img.float(), txt.float(), scale)
            metrics = {}
        else:
            # The swaps come from (seed, step, micro-batch of the step, rank), not from a stream carried across
            # steps that no checkpoint kept: a resumed run drew from the seed's start again, other negatives than
            # an uninterrupted run's. Each DDP rank draws its own too. (Not batch_idx alone: a run resumed from the
            # checkpoint of an epoch's last step counts its next batch as that epoch's batch n, not 0.)
            accumulate = self.trainer.accumulate_grad_batches if self._trainer is not None else 1
            self.swapper.reseed(self.global_step, batch_idx % accumulate, self.global_rank)
            img, txt, loss, metrics = self._hard_negative_step(list(batch["caption"]), batch["image"])
        with torch.no_grad():
            acc = (
                ((txt.float() @ img.float().t()).argmax(1) == torch.arange(len(txt), device=txt.device)).float().mean()
            )
        metrics.update({"loss": loss, "logit_scale": scale, "t2i_acc": acc})
        self.log_metrics("train", metrics, batch_size=len(txt))
        return loss

    def _hard_negative_step(self, captions: list[str], images: torch.Tensor):
        """Features, NegCLIP loss and ``neg_acc`` (how often an image scores its caption above its negative)."""
        negs, valid = self.swapper(captions)
        img = self.clip.encode_image(self._pixels(images), normalize=True).float()
        # one text-tower pass over captions and negatives together
        tokens = self.tokenize(captions + negs).to(self.device)
        both = self.clip.encode_text(tokens, normalize=True).float()
        txt, neg = both[: len(captions)], both[len(captions) :]
        pos_tok, neg_tok = tokens[: len(captions)], tokens[len(captions) :]
        valid = valid.to(self.device)
        with torch.no_grad():
            wins = ((img * txt).sum(1) > (img * neg).sum(1))[valid].float()
            metrics = {"neg_acc": wins.mean() if len(wins) else torch.tensor(float("nan"))}
        own_img, own_txt = img, txt
        if self._trainer is not None and self.trainer.world_size > 1:  # every rank ranks every rank's texts
            from open_clip.loss import gather_features

            kw = dict(gather_with_grad=True, rank=self.global_rank, world_size=self.trainer.world_size)
            img, txt = gather_features(img, txt, **kw)
            neg, valid_f = gather_features(neg, valid.float()[:, None], **kw)
            valid = valid_f[:, 0] > 0.5
            pos_tok, neg_tok = (self.all_gather(t).flatten(0, 1) for t in (pos_tok, neg_tok))
        # a negative that is another image's caption word for word must not count against that image
        same = same_text(pos_tok, neg_tok)
        loss = hard_negative_loss(img, txt, neg, valid, self.clip.logit_scale.exp(), same)
        return own_img, own_txt, loss, metrics

    def optimizer_step(self, *args, **kwargs) -> None:
        # CLIP's clamp (temperature no sharper than 1/100) right after each update: in on_train_batch_end it ran after
        # the callbacks' hooks, so a checkpoint saved at that step held the unclamped value and a resume from it
        # started from another temperature than the uninterrupted run
        super().optimizer_step(*args, **kwargs)
        with torch.no_grad():
            self.clip.logit_scale.clamp_(0, math.log(100))

    # -- evaluation ----------------------------------------------------------------------------------------------
    def eval_step(self, batch: dict[str, Any], stage: str) -> None:
        img, txt = self.embed(batch)
        self._val.append((img.float(), txt.float()))

    def start_epoch(self, stage: str) -> None:
        self._val.clear()

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate (n_rank, D) tensors of possibly different n from every rank (rank order)."""
        if self.trainer is None or self.trainer.world_size == 1:
            return x
        n = self.all_gather(torch.tensor(len(x), device=x.device)).flatten()
        pad = torch.zeros(int(n.max()) - len(x), *x.shape[1:], device=x.device, dtype=x.dtype)
        allx = self.all_gather(torch.cat([x, pad]))  # (world, max_n, D)
        return torch.cat([allx[r, : int(n[r])] for r in range(len(n))])

    def log_epoch(self, stage: str) -> None:
        """Symmetric InfoNCE over all the epoch's pairs and recall@1/@5 both ways."""
        if not self._val:
            return
        img = self._gather(torch.cat([a for a, _ in self._val]))
        txt = self._gather(torch.cat([b for _, b in self._val]))
        self._val.clear()
        logits = self.clip.logit_scale.exp().float() * txt @ img.t()  # (texts, images)
        labels = torch.arange(len(txt), device=txt.device)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
        # every rank holds the same gathered numbers, so no sync_dist reduction is needed
        self.log_dict(
            {
                f"{stage}/loss": loss,
                f"{stage}/t2i_r@1": recall_at_k(logits, 1),
                f"{stage}/t2i_r@5": recall_at_k(logits, 5),
                f"{stage}/i2t_r@1": recall_at_k(logits.t(), 1),
                f"{stage}/i2t_r@5": recall_at_k(logits.t(), 5),
            },
            rank_zero_only=False,
        )

    # -- saving / optimisation -----------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The state dict carries the weights: rebuilding from this file must not re-fetch pretrained/checkpoint.
        hp = dict(checkpoint.get("hyper_parameters", {}))
        hp["load_weights"] = False
        checkpoint["hyper_parameters"] = hp

    def trainable_parameters(self) -> list[dict[str, Any]]:
        """No weight decay on gains, biases and the temperature (as open_clip's training), nor on the token and
        positional embeddings (which open_clip's training does decay)."""
        decay, no_decay = [], []
        for n, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "logit_scale" in n or "embedding" in n or "ln" in n else decay).append(p)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    def default_optimizer(self, params) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=5e-4, weight_decay=0.1)
