"""Training unCLIP's AR prior (Lightning): caption + CLIP text embedding -> PCA bucket codes of the image embedding.

Trains from ``zoo-embed`` features only (no CLIP in the loop): batches carry ``clip_text_tokens`` (B, L),
``clip_text_emb`` (B, D) and ``clip_image_emb`` (B, D), served by the DataModule from
``data.features.<split>=<zoo-embed file>``.

The discretisation (``zoo.models.ar_prior.pca``) is fitted once, at ``setup``, on the TRAINING split's features:
``EmbeddingPCA`` on the image embeddings (components holding > ``variance_kept`` of the variance, ``n_buckets``
buckets each) and ``ScalarBins`` on the text-image dot products of every (image, caption) pair training draws (all
captions of a ``zoo-embed captions=all`` file, each with its image). Both are buffers, so they travel in the checkpoint:
a module rebuilt by ``zoo.checkpoint.load_module`` samples without the data, and a resumed run restores them (the
refit that ``setup`` does before Lightning restores the state dict is overwritten by the checkpoint's).

Loss: cross-entropy over the dot-product bin and the K codes (``ARPrior.loss``). Caption dropout: with probability
``text_dropout`` (paper: 10%) a training example gets the null caption (all pads + the learned null text-embedding
token), which ``sample(..., guidance_scale=s)`` uses for the unconditional stream.

``sample(text_emb, text_tokens, ...) -> (B, D)`` L2-normalised CLIP image embeddings (the codes decoded through the
PCA). Validation logs ``val/loss``, ``val/code_loss``, ``val/dot_loss``, ``val/code_acc`` and ``val/pca_cos`` (the
cosine between an image embedding and its encode -> decode round trip: the ceiling of any sample).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from zoo.data.datamodule import CAPTION_COUNTS, every_caption_row
from zoo.errors import ConfigError, check_number, check_rate
from zoo.models.ar_prior.model import PRESETS, ARPrior, ARPriorConfig, sample_codes
from zoo.models.ar_prior.pca import EmbeddingPCA, ScalarBins
from zoo.models.base import ClipEmbeddingLit, resolve_preset, unmet_sizes
from zoo.nn.sampling import check_sampling

FEATURE_KEYS = ("clip_text_tokens", "clip_text_emb", "clip_image_emb")


class ARPriorLit(ClipEmbeddingLit):
    """Args:
    preset: ``tiny`` | ``shapes`` | ``paper`` (``zoo.models.ar_prior.model.PRESETS``); ``net`` overrides fields
        of ``ARPriorConfig`` (e.g. ``embed_dim`` to match the CLIP, ``n_buckets``, ``n_dot_bins``).
    variance_kept: keep the fewest PCA components holding more than this fraction of the variance (paper: 0.99).
    n_components: keep exactly this many instead (None: by ``variance_kept``).
    bucketing: ``quantile`` (equal-mass buckets) | ``uniform`` (± ``uniform_std`` std); see ``pca.py``.
    text_dropout: probability of the null caption in training (classifier-free guidance; paper: 0.1).
    dot_quantile: default of ``sample``: draw the dot-product bin from above this quantile of its predicted
        distribution (paper: 0.5, "the top half").
    clip_fingerprint: the CLIP of the training embeddings (``ClipEmbeddingLit``): filled in from the data and the
        checkpoint; leave None when training.
    """

    # what the val batches read from data.features.val (zoo.train.check_compatibility refuses a run that trains on
    # features and would validate without them)
    val_features_needed = FEATURE_KEYS

    def __init__(
        self,
        preset: str = "shapes",
        net: Optional[dict[str, Any]] = None,
        variance_kept: float = 0.99,
        n_components: Optional[int] = None,
        bucketing: str = "quantile",
        uniform_std: float = 4.0,
        text_dropout: float = 0.1,
        dot_quantile: float = 0.5,
        clip_fingerprint: Optional[str] = None,
        optimizer=None,
        scheduler=None,
    ):
        super().__init__(optimizer, scheduler)
        self.clip_fingerprint = clip_fingerprint  # the CLIP of its training embeddings (ClipEmbeddingLit)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        check_rate("model.text_dropout", text_dropout, "0.1")
        # a string "0.5" failed on the comparison, false passed as 0
        why = "the dot-product bin is drawn above this quantile"
        check_number(
            "model.dot_quantile", dot_quantile, 0, 1, high_open=True, fix="0.5, the paper's upper half", why=why
        )
        self.cfg: ARPriorConfig = resolve_preset(PRESETS, ARPriorConfig, preset, net, "AR prior")
        self.net = ARPrior(self.cfg)
        try:
            self.pca = EmbeddingPCA(
                self.cfg.embed_dim, self.cfg.n_buckets, variance_kept, n_components, bucketing, uniform_std
            )
        except ValueError as e:
            raise ConfigError(
                f"AR prior PCA: {e} (model.variance_kept / model.n_components / model.bucketing / model.uniform_std / "
                f"model.net.n_buckets)"
            ) from None
        self.dot_bins = ScalarBins(self.cfg.n_dot_bins)
        self.text_dropout = float(text_dropout)
        self.dot_quantile = float(dot_quantile)

    # ------------------------------------------------------------------------------------------ PCA fitting
    @property
    def fitted(self) -> bool:
        return self.pca.fitted and self.dot_bins.fitted

    @torch.no_grad()
    def fit_discretisation(
        self, image_emb: torch.Tensor, text_emb: torch.Tensor, text_items: Optional[torch.Tensor] = None
    ) -> None:
        """Fit the PCA + buckets on training image embeddings (N, D) and the dot-product bins on (z_t · z_i).

        ``text_items``: (M,) the image of each of the M text rows (a ``zoo-embed captions=all`` file: every caption
        of each image, ``every_caption_row``); None: text row i is image i's caption."""
        d = self.cfg.embed_dim
        if image_emb.dim() != 2 or image_emb.shape[1] != d:
            raise ConfigError(
                f"the CLIP image embeddings are {tuple(image_emb.shape[1:])}-d but the AR prior expects "
                f"{d} (fix: model.net.embed_dim={image_emb.shape[-1]})"
            )
        self.pca.fit(image_emb.float())
        if text_items is None:
            self.dot_bins.fit(self.dot_product(text_emb.float(), image_emb.float()))
            return
        # equal-mass bins of the pairs training draws: every caption with its image (COCO train: ~5 per image, one
        # drawn per epoch), not each image's first caption only. Each pair counts once, so an image weighs its
        # caption count where training draws each image once per epoch (COCO train2014: 414,113 captions of 82,783
        # images, so at most 198 images have more than 5). In chunks: the pairs' image rows gathered at once were
        # 1.7 GB at COCO train, ViT-H width.
        step = 1 << 16
        self.dot_bins.fit(
            torch.cat(
                [
                    self.dot_product(text_emb[r : r + step].float(), image_emb[text_items[r : r + step]].float())
                    for r in range(0, len(text_emb), step)
                ]
            )
        )

    @staticmethod
    def dot_product(text_emb: torch.Tensor, image_emb: torch.Tensor) -> torch.Tensor:
        """z_t · z_i of the L2-normalised embeddings (B,)."""
        return (F.normalize(text_emb, dim=-1) * F.normalize(image_emb, dim=-1)).sum(-1)

    def setup(self, stage: str) -> None:
        super().setup(stage)  # the data's CLIP fingerprint, checked against this module's
        if self.fitted or self._trainer is None:
            return
        dm = getattr(self.trainer, "datamodule", None)
        feats, items = _train_features(dm)
        self.fit_discretisation(feats["clip_image_emb"], feats["clip_text_emb"], items)
        ratio = self.pca.variance_ratio()
        import logging

        logging.getLogger("zoo.ar_prior").info(
            "AR prior: PCA keeps %d of %d components (%.4f of the variance), %d %s buckets each; %d dot-product bins",
            self.pca.k,
            self.cfg.embed_dim,
            ratio,
            self.cfg.n_buckets,
            self.pca.bucketing,
            self.cfg.n_dot_bins,
        )

    def data_sizes(self, datamodule) -> dict[str, Any]:
        """The train features' CLIP width (``embed_dim``), caption length (``text_len``, at least) and, when their
        token ids do not fit the table, a vocabulary that holds them. Nothing without train features (check_data
        names the fix). ``model.preset=tiny`` on the shapes features was a 32-d prior refused by its 128-d data."""
        if "train" not in (getattr(datamodule, "features", None) or {}) or not callable(
            getattr(datamodule, "dataset", None)
        ):
            return {}
        feats = getattr(datamodule.dataset("train"), "features", None) or {}
        exact, at_least = {}, {}
        if "clip_image_emb" in feats:
            exact["embed_dim"] = int(feats["clip_image_emb"].shape[-1])
        tokens = every_caption_row(datamodule.dataset("train"))[0].get("clip_text_tokens")  # every caption drawn
        if tokens is not None:
            at_least["text_len"] = int(tokens.shape[1])
            if tokens.numel():
                at_least["text_vocab"] = int(tokens.max()) + 1
        return unmet_sizes(self.cfg, exact, at_least)

    def check_data(self, datamodule) -> None:
        """Needs ``data.features.train`` (a zoo-embed file) unless the PCA is already fitted (e.g. fine-tuning a
        loaded module), and validation features when validation runs on them."""
        features = getattr(datamodule, "features", None) or {}
        if not self.fitted and "train" not in features:
            raise ConfigError(
                "the AR prior trains on zoo-embed features (fix: data.features.train=<file from "
                "`zoo-embed clip.checkpoint=<clip.ckpt> data=shapes split=train out=<file>`>, and "
                "data.features.val=<the val file>)"
            )
        # the widths the network is built for, checked here (before anything is built) for every split given: a
        # train file of another width failed only in setup, a val file at its first validation, after training
        if callable(getattr(datamodule, "dataset", None)):
            for split in ("train", "val"):
                if split not in features:
                    continue
                feats = getattr(datamodule.dataset(split), "features", None) or {}
                emb, tokens = feats.get("clip_image_emb"), feats.get("clip_text_tokens")
                if emb is not None and emb.shape[-1] != self.cfg.embed_dim:
                    raise ConfigError(
                        f"data.features.{split}: the CLIP image embeddings are {emb.shape[-1]}-d but the AR prior "
                        f"expects {self.cfg.embed_dim} (fix: model.net.embed_dim={emb.shape[-1]})"
                    )
                if tokens is not None and tokens.shape[1] > self.cfg.text_len:
                    raise ConfigError(
                        f"data.features.{split}: captions of {tokens.shape[1]} CLIP tokens; the AR prior takes "
                        f"text_len={self.cfg.text_len} (fix: model.net.text_len={tokens.shape[1]})"
                    )
                # every caption row (not each image's first): pad_text refused a larger id only in the training
                # step that first drew its caption, after hours of training on COCO's other captions
                tokens = every_caption_row(datamodule.dataset(split))[0].get("clip_text_tokens")
                if tokens is not None and tokens.numel() and int(tokens.max()) >= self.cfg.text_vocab:
                    raise ConfigError(
                        f"data.features.{split}={features[split]}: caption token id {int(tokens.max())} >= the AR "
                        f"prior's text_vocab {self.cfg.text_vocab} (fix: model.net.text_vocab=49408 for open_clip's "
                        f"BPE, which zoo-embed writes)"
                    )
        # the val file is read only at the first validation, after the training steps when sanity checks are off
        # (experiment=leaderboard/ar_prior): a file without the keys was "batch lacks [...]" there
        if "val" in features and callable(getattr(datamodule, "dataset", None)):
            val = getattr(datamodule.dataset("val"), "features", None) or {}
            missing = [k for k in FEATURE_KEYS if k not in val]
            if missing:
                raise ConfigError(
                    f"data.features.val={features['val']} lacks {missing}: it is not a zoo-embed file (fix: "
                    f"data.features.val=<the zoo-embed file of the val split>)"
                )

    # ------------------------------------------------------------------------------------------ batches
    def pad_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, text_len), right-padded with pad_id."""
        t = self.cfg.text_len
        if tokens.shape[1] > t:
            raise ConfigError(
                f"captions have {tokens.shape[1]} CLIP tokens; the AR prior takes text_len={t} "
                f"(fix: model.net.text_len={tokens.shape[1]})"
            )
        if tokens.shape[1] < t:
            tokens = F.pad(tokens, (0, t - tokens.shape[1]), value=self.cfg.pad_id)
        if tokens.numel() and int(tokens.max()) >= self.cfg.text_vocab:
            raise ConfigError(
                f"caption token id {int(tokens.max())} >= model text_vocab {self.cfg.text_vocab} "
                f"(fix: model.net.text_vocab=49408 for open_clip's BPE)"
            )
        return tokens

    def targets(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        missing = [k for k in FEATURE_KEYS if k not in batch]
        if missing:
            raise ConfigError(f"batch lacks {missing} (fix: data.features.<split>=<zoo-embed file>)")
        if not self.fitted:
            raise RuntimeError(
                "the AR prior's PCA is not fitted: train it with zoo-train (setup fits it) or call "
                "fit_discretisation(image_emb, text_emb)"
            )
        tokens = self.pad_text(batch["clip_text_tokens"].long())
        txt, img = batch["clip_text_emb"].float(), batch["clip_image_emb"].float()
        codes = self.pca.encode(img)  # (B, K)
        dot = self.dot_bins.encode(self.dot_product(txt, img))  # (B,)
        return tokens, F.normalize(txt, dim=-1), dot, codes

    def forward_loss(self, batch: dict[str, Any], train: bool) -> dict[str, torch.Tensor]:
        tokens, txt, dot, codes = self.targets(batch)
        drop = None
        if train and self.text_dropout > 0:
            drop = torch.rand(tokens.shape[0], device=tokens.device) < self.text_dropout
        return self.net.loss(tokens, txt, dot, codes, drop)

    # ------------------------------------------------------------------------------------------ loops
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        r = self.forward_loss(batch, train=True)
        self.log_metrics("train", r, batch_size=len(batch["clip_image_emb"]))
        return r["loss"]

    def eval_step(self, batch: dict[str, Any], stage: str) -> None:
        r = self.forward_loss(batch, train=False)
        img = batch["clip_image_emb"].float()
        r["pca_cos"] = F.cosine_similarity(self.pca.decode(self.pca.encode(img)), img, dim=-1).mean()
        self.log_metrics(stage, r, batch_size=len(img))

    # ------------------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        text_emb: torch.Tensor,
        text_tokens: torch.Tensor,
        guidance_scale: float = 1.0,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        dot_quantile: Optional[float] = None,
        use_cache: bool = True,
        generator: Optional[torch.Generator] = None,
        return_codes: bool = False,
    ):
        """CLIP text embeddings (B, D) + their CLIP caption tokens (B, L) -> sampled image embeddings (B, D),
        L2-normalised (and, with ``return_codes``, the (B, K) codes and (B,) dot bins)."""
        check_sampling(temperature, top_k, top_p)  # filter_logits read top_k=-3 / top_p=90 as no filter
        tokens = self.pad_text(text_tokens.to(self.device).long())
        txt = F.normalize(text_emb.to(self.device, self.pca.mean.dtype), dim=-1)
        q = self.dot_quantile if dot_quantile is None else dot_quantile
        codes, dot = sample_codes(
            self.net,
            tokens,
            txt,
            self.pca.k,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            guidance_scale=guidance_scale,
            dot_quantile=q,
            use_cache=use_cache,
            generator=generator,
        )
        emb = F.normalize(self.pca.decode(codes), dim=-1)
        return (emb, codes, dot) if return_codes else emb

    def default_optimizer(self, params) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=3e-4, betas=(0.9, 0.95), weight_decay=0.04)


def _train_features(dm) -> tuple[dict[str, torch.Tensor], Optional[torch.Tensor]]:
    """The training split's zoo-embed tensors: from the DataModule's built dataset, else from its feature file; the
    image keys one row per image, the text keys every caption row training draws from, and the image of each text
    row (None when row i is image i's: a one-caption file), as ``every_caption_row`` gives them."""
    if dm is None:
        raise ConfigError(
            "the AR prior fits its PCA on the training features at setup: train it with a DataModule "
            "(zoo-train ... data.features.train=<zoo-embed file>)"
        )
    ds = dm.dataset("train") if hasattr(dm, "dataset") else None
    feats = getattr(ds, "features", None)
    if feats and "clip_image_emb" in feats:
        text, items = every_caption_row(ds)
    else:
        path = (getattr(dm, "features", None) or {}).get("train")
        if not path:
            raise ConfigError(
                "no training features to fit the AR prior's PCA on (fix: data.features.train=<zoo-embed file>)"
            )
        from zoo.embed import load_embeddings

        feats = load_embeddings(path, all_captions=True)
        text, items = every_caption_row(feats)
        feats = {k: v for k, v in feats.items() if k != CAPTION_COUNTS}
    feats = {**feats, **text}
    missing = [k for k in ("clip_image_emb", "clip_text_emb") if k not in feats]
    if missing:
        raise ConfigError(
            f"the training feature file lacks {missing}: it is not a zoo-embed file (fix: "
            f"data.features.train=<file written by zoo-embed>)"
        )
    return feats, items
