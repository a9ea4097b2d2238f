"""The one LightningModule base of the zoo: optimizers, presets, logging, sample grids.

Every component's ``zoo/models/<c>/lit.py`` subclasses ``ZooLit`` and keeps only what is its own (its network,
loss, metrics, checks). The contract, in the order a subclass meets it::

    class MyLit(ZooLit):
        def __init__(self, preset="shapes", net=None, ..., optimizer=None, scheduler=None):
            super().__init__(optimizer, scheduler)              # stores the two factories
            self.save_hyperparameters(ignore=["optimizer", "scheduler"])   # plain values only
            self.cfg = resolve_preset(PRESETS, MyConfig, preset, net, "my model")
            self.net = MyNet(self.cfg)

        def training_step(self, batch, batch_idx):
            r = self.forward_loss(batch)
            self.log_metrics("train", {"loss": r["loss"], ...})   # train/<k>, plus "loss" on the progress bar
            return r["loss"]

        def eval_step(self, batch, stage):                       # stage: "val" | "test"
            self.log_metrics(stage, {...}, batch_size=len(batch["image"]))

Hyper-parameters and factories:
    * ``preset`` / ``net``: the network's size preset and field overrides, resolved by
      ``zoo.models.presets.resolve_preset`` (re-exported here). The override argument is called ``net`` everywhere.
    * ``optimizer`` / ``scheduler``: Hydra ``_partial_: true`` nodes, i.e. callables ``optimizer(params)`` and
      ``scheduler(optimizer)``; never saved in the checkpoint's hyper-parameters (pass ``ignore`` as above).
      Without ``optimizer`` the subclass's ``default_optimizer(params)`` is used (AdamW, lr 1e-3, unless overridden).
      The scheduler is stepped every ``scheduler_interval`` (class attribute, ``"step"``).

Hooks a subclass may override (all optional):
    * ``trainable_parameters()``: what the optimizer gets: parameters or a list of param-group dicts (CLIP: no
      weight decay on gains/biases; DALL·E: only the transformer, never the frozen image tokenizer). Default: every
      parameter with ``requires_grad``.
    * ``default_optimizer(params)``: the optimizer when none is configured.
    * ``eval_step(batch, stage)``: one validation/test batch (``validation_step`` / ``test_step`` call it).
    * ``start_epoch(stage)`` / ``log_epoch(stage)``: reset and log epoch-level metrics (``on_{validation,test}_
      epoch_{start,end}`` call them with ``"val"`` / ``"test"``).
    * ``data_sizes(datamodule)``: the network fields the data dictates (see the method), used for ``tiny``.
    * ``check_data(datamodule)``: checks that need model and data (``zoo.train`` calls it before fitting); raise
      ``ConfigError`` with the fix. If it adapts the model to the data (e.g. sets a tokenizer's resolution), its
      docstring says so.

The ``sample_grid`` hook contract (not defined here: ``SampleGridCallback`` and ``zoo-sample`` look it up with
``hasattr``, so a module without it simply has no grids)::

    @torch.no_grad()
    def sample_grid(self, batch: dict) -> torch.Tensor:   # (N, 3, H, W) float in [-1, 1]
        '''Called in eval mode on (the first rows of) a validation batch already on ``self.device``. Returns images
        laid out row-major in rows of ``self.grid_nrow`` (class attribute, default 8): e.g. input|reconstruction
        pairs for tokenizers, real|sample pairs for generators. Must be deterministic for a given batch (seed any
        sampling with a fixed ``torch.Generator``) so grids of successive epochs are comparable.'''

``ImageTokenizerLit`` (below) is the shared base of the dVAE and VQ-VAE modules: reconstruction / codebook epoch
metrics and their input|reconstruction ``sample_grid``.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional

import lightning as L
import torch

from zoo.errors import ConfigError
from zoo.models.presets import resolve_preset
from zoo.nn.image_tokenizer import codebook_stats, psnr_from_mse

__all__ = [
    "ZooLit",
    "ImageTokenizerLit",
    "check_text_tokenizer",
    "text_tokenizer_problems",
    "text_tokenizer_sizes",
    "unmet_sizes",
    "cosine_with_warmup",
    "resolve_preset",
]


class ZooLit(L.LightningModule):
    """The zoo's LightningModule base; see the module docstring for the contract."""

    grid_nrow: int = 8  # images per row of ``sample_grid``'s output
    scheduler_interval: str = "step"  # how often the lr scheduler steps ("step" | "epoch")
    # the attribute holding the network whose calls make the training step, for compile=true (zoo.callbacks.compile);
    # None: the step is a chain of sub-module calls and compiling one call would not cover it
    compile_module: Optional[str] = None

    def __init__(self, optimizer=None, scheduler=None):
        super().__init__()
        self.optimizer_factory = optimizer  # Hydra _partial_: params -> torch.optim.Optimizer
        self.scheduler_factory = scheduler  # Hydra _partial_: optimizer -> lr scheduler

    # -------------------------------------------------------------------------------------------- optimisation
    def trainable_parameters(self) -> Iterable[torch.nn.Parameter] | list[dict[str, Any]]:
        """What the optimizer optimises (parameters or param-group dicts). Default: all with ``requires_grad``."""
        return [p for p in self.parameters() if p.requires_grad]

    def default_optimizer(self, params) -> torch.optim.Optimizer:
        """The optimizer when ``optimizer`` is not configured."""
        return torch.optim.AdamW(params, lr=1e-3)

    def configure_optimizers(self):
        params = self.trainable_parameters()
        opt = self.optimizer_factory(params) if self.optimizer_factory is not None else self.default_optimizer(params)
        if self.scheduler_factory is None:
            return opt
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": self.scheduler_interval},
        }

    # -------------------------------------------------------------------------------------------- logging
    def log_metrics(self, stage: str, metrics: Mapping[str, Any], batch_size: Optional[int] = None, **kwargs) -> None:
        """Log ``{stage}/{name}`` for every metric; in training, ``metrics["loss"]`` also goes to the progress bar
        (as ``loss``, not to the logger)."""
        self.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, batch_size=batch_size, **kwargs)
        if stage == "train" and "loss" in metrics:
            self.log("loss", metrics["loss"], prog_bar=True, logger=False, batch_size=batch_size)

    def gather_sum(self, stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sum epoch accumulators over DDP ranks (identity on one process)."""
        if self._trainer is None or self.trainer.world_size == 1:
            return stats
        return {k: self.all_gather(v).sum(0) for k, v in stats.items()}

    # -------------------------------------------------------------------------------------------- eval loop
    def eval_step(self, batch: dict[str, Any], stage: str) -> None:
        raise NotImplementedError(f"{type(self).__name__} defines no eval_step(batch, stage)")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.eval_step(batch, "test")

    def start_epoch(self, stage: str) -> None:
        """Reset epoch accumulators before a ``val`` / ``test`` epoch (default: nothing)."""

    def log_epoch(self, stage: str) -> None:
        """Log epoch-level metrics after a ``val`` / ``test`` epoch (default: nothing)."""

    def on_validation_epoch_start(self) -> None:
        self.start_epoch("val")

    def on_test_epoch_start(self) -> None:
        self.start_epoch("test")

    def on_validation_epoch_end(self) -> None:
        self.log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self.log_epoch("test")

    # -------------------------------------------------------------------------------------------- checks
    def check_data(self, datamodule) -> None:
        """Checks that need both the model and the data (default: none)."""

    def data_sizes(self, datamodule) -> dict[str, Any]:
        """The network fields the data dictates (text vocabulary and length, resolution, embedding widths) that this
        network does not meet, as ``{field: the data's value}`` (``unmet_sizes``); ``zoo.train.fit_tiny_to_data``
        gives them to a ``tiny`` preset, so ``model.preset=tiny`` on an experiment is a tiny network *of that
        experiment's data*, and a tiny run that already fit its data is unchanged. Default: none."""
        return {}


def tokenizer_identity(spec: dict[str, Any]) -> Any:
    """What makes two ``TextTokenizer.to_spec()`` dicts the same tokenizer: a trained BPE's vocabulary and merges
    (not its JSON text, whose layout may change with the ``tokenizers`` version) and the context length; any other
    spec as it is."""
    if spec.get("kind") == "trained_bpe" and isinstance(spec.get("json"), str):
        import json

        model = json.loads(spec["json"]).get("model", {})
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        return ("trained_bpe", spec.get("context_length"), sorted(model.get("vocab", {}).items()), merges)
    return sorted((k, repr(v)) for k, v in spec.items())


def describe_tokenizer_spec(spec: dict[str, Any]) -> str:
    """A short description of a tokenizer spec for messages (kind, context length, vocabulary size)."""
    parts = [str(spec.get("kind")), f"context_length={spec.get('context_length')}"]
    if spec.get("kind") == "trained_bpe" and isinstance(spec.get("json"), str):
        import hashlib
        import json

        vocab = json.loads(spec["json"]).get("model", {}).get("vocab", {})
        digest = hashlib.sha1(repr(tokenizer_identity(spec)).encode()).hexdigest()[:8]
        parts += [f"vocab {len(vocab)}", f"fingerprint {digest}"]
    return ", ".join(parts)


class TextTokenizerLit(ZooLit):
    """Shared base of the modules whose text tokenizer travels in their checkpoints (DALL·E, GLIDE, noised CLIP).

    ``self.text_tokenizer`` (a ``TextTokenizer`` or None; ``check_data`` keeps the DataModule's) is stored as
    ``hyper_parameters["text_tokenizer"]`` (its ``to_spec()``); ``setup`` takes the trainer DataModule's tokenizer
    when the module has none yet.
    """

    text_tokenizer: Any = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        hp = dict(checkpoint.get("hyper_parameters", {}))
        hp["text_tokenizer"] = self.text_tokenizer.to_spec() if self.text_tokenizer is not None else None
        checkpoint["hyper_parameters"] = hp

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self.text_tokenizer is None and dm is not None and getattr(dm, "tokenizer", None) is not None:
            self.text_tokenizer = dm.tokenizer

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A resumed run (``ckpt_path=``) must read captions with the tokenizer it trained with: the DataModule's is
        taken in ``setup`` (Lightning calls it before restoring), and one fitted on other captions (another caption
        style, world or data set; the tokenizer cache cleared and refitted elsewhere) with the same vocabulary size
        loaded without a word, every token id now meaning another piece of text. A ConfigError before training."""
        super().on_load_checkpoint(checkpoint)
        saved = (checkpoint.get("hyper_parameters") or {}).get("text_tokenizer")
        if not saved or self.text_tokenizer is None or self._trainer is None:
            return
        current = self.text_tokenizer.to_spec()
        if current is not None and tokenizer_identity(saved) != tokenizer_identity(current):
            raise ConfigError(
                f"this checkpoint was trained with another text tokenizer ({describe_tokenizer_spec(saved)}) than "
                f"the DataModule gives now ({describe_tokenizer_spec(current)}): resumed, every caption would be "
                f"read as other token ids (fix: resume with the data and data.tokenizer settings the run was trained "
                f"with, or start a new run without ckpt_path=)"
            )


STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}


class ClipEmbeddingLit(ZooLit):
    """Shared base of the modules trained on one CLIP's embeddings (unCLIP's diffusion and AR priors, its decoder).

    Their inputs or targets are that CLIP's vectors; another CLIP of the same widths passes every shape check and
    gives nonsense. ``self.clip_fingerprint`` names the CLIP (``zoo.models.clip.scorer.clip_fingerprint``; None when
    unknown: zoo-embed files written before it recorded one). It comes from the data at ``setup`` (zoo-embed's
    ``meta``), travels in the checkpoint as ``hyper_parameters["clip_fingerprint"]`` (so ``load_module`` rebuilds it),
    and is compared: the splits with each other, a loaded module or a resumed run with its data, and the unCLIP
    pipeline (``zoo.pipelines.unclip``) with the CLIP it is given. A subclass passes ``clip_fingerprint`` through its
    constructor and may override ``clip_fingerprints`` (the unCLIP decoder adds its frozen ``model.clip_ckpt``)."""

    clip_fingerprint: Optional[str] = None
    _FIX_CLIP = (
        "fix: zoo-embed every split with the CLIP this model was trained on (the same clip.checkpoint), or train "
        "a model on these files"
    )

    def clip_fingerprints(self, datamodule, stage: str) -> dict[str, str]:
        """``{where: fingerprint}`` of the CLIPs the data of ``stage`` comes from (the zoo-embed files' meta)."""
        paths = getattr(datamodule, "features", None) or {}
        out = {}
        for split in STAGE_SPLITS.get(stage, ()):
            if split in paths and callable(getattr(datamodule, "dataset", None)):
                fp = (getattr(datamodule.dataset(split), "features_meta", None) or {}).get("clip_fingerprint")
                if fp:
                    out[f"data.features.{split}={paths[split]}"] = str(fp)
        return out

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        found = self.clip_fingerprints(dm, stage) if dm is not None else {}
        if len(set(found.values())) > 1:
            listed = "; ".join(f"{w}: {fp}" for w, fp in found.items())
            raise ConfigError(f"the data comes from different CLIPs (fingerprints {listed}) ({self._FIX_CLIP})")
        if not found:
            return
        where, fp = next(iter(found.items()))
        if self.clip_fingerprint is not None and fp != self.clip_fingerprint:
            raise ConfigError(
                f"this {type(self).__name__} was trained on the embeddings of another CLIP (fingerprint "
                f"{self.clip_fingerprint}) than {where} (fingerprint {fp}) ({self._FIX_CLIP})"
            )
        self.clip_fingerprint = fp

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["hyper_parameters"] = {
            **(checkpoint.get("hyper_parameters") or {}),
            "clip_fingerprint": self.clip_fingerprint,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A resumed run (``ckpt_path=``) must train on the CLIP it started on: ``setup`` (before the restore) took the
        data's fingerprint; a checkpoint of another CLIP's embeddings is refused before training."""
        super().on_load_checkpoint(checkpoint)
        saved = (checkpoint.get("hyper_parameters") or {}).get("clip_fingerprint")
        if saved and self.clip_fingerprint and saved != self.clip_fingerprint:
            raise ConfigError(
                f"this checkpoint was trained on the embeddings of another CLIP (fingerprint {saved}) than the data "
                f"of this run (fingerprint {self.clip_fingerprint}) ({self._FIX_CLIP}; or start a new run without "
                f"ckpt_path=)"
            )
        self.clip_fingerprint = self.clip_fingerprint or saved


class ImageTokenizerLit(ZooLit):
    """Shared base of the image-tokenizer modules (dVAE, VQ-VAE).

    A subclass sets ``tokenizer`` (its ``ImageTokenizer`` network) and, in ``eval_step``, calls
    ``accumulate(codes, recon, images)``; ``log_epoch`` then logs ``recon_mse`` / ``psnr`` over the whole epoch
    (PSNR of the epoch MSE), ``codebook_usage`` and ``perplexity``. ``sample_grid`` gives input | reconstruction
    pairs from the tokens (what stage 2 sees).
    """

    @property
    def tokenizer(self):
        raise NotImplementedError

    def start_epoch(self, stage: str) -> None:
        self._eval_stats = {
            "counts": torch.zeros(self.tokenizer.codebook_size, dtype=torch.long, device=self.device),
            "sse": torch.zeros((), dtype=torch.float64, device=self.device),
            "n": torch.zeros((), dtype=torch.float64, device=self.device),
        }

    def accumulate(self, codes: torch.Tensor, recon: torch.Tensor, images: torch.Tensor) -> None:
        """Add a batch's codes (B, h, w) and reconstruction error (images and recon in [-1, 1]) to the epoch."""
        err = (recon.float().clamp(-1, 1).add(1).div(2) - images.float().add(1).div(2)).pow(2)
        st = self._eval_stats
        st["counts"] += torch.bincount(codes.flatten(), minlength=self.tokenizer.codebook_size)
        st["sse"] += err.sum().double()
        st["n"] += err.numel()

    def log_epoch(self, stage: str) -> None:
        st = getattr(self, "_eval_stats", None)
        if st is None or st["n"] == 0:
            return
        st = self.gather_sum(st)
        mse = (st["sse"] / st["n"]).float()
        usage, perplexity = codebook_stats(st["counts"])
        self.log_dict(
            {
                f"{stage}/recon_mse": mse,
                f"{stage}/psnr": psnr_from_mse(mse),
                f"{stage}/codebook_usage": usage,
                f"{stage}/perplexity": perplexity,
            }
        )

    @torch.no_grad()
    def sample_grid(self, batch: dict[str, Any]) -> torch.Tensor:
        """Interleaved input | reconstruction pairs (decoded from the tokens)."""
        images = batch["image"][: self.grid_nrow]
        recon = self.tokenizer.decode(self.tokenizer.encode(images))
        return torch.stack([images.float(), recon.float()], 1).flatten(0, 1)


class WarmupCosine:
    """The learning-rate factor of ``cosine_with_warmup``: linear warm-up, then cosine decay to ``min_ratio``.

    An object, not a closure, for two reasons: ``LambdaLR.state_dict`` saves an object's attributes (so a resumed
    run keeps its schedule), and ``zoo.callbacks.TimeBudget`` sets ``total_steps`` once it knows how many steps fit
    in a wall-clock budget (the decay then ends at the budget's last step)."""

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float):
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / max(1, self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def cosine_with_warmup(optimizer, warmup_steps: int = 100, total_steps: int = 2000, min_ratio: float = 0.1):
    """LambdaLR: linear warm-up then cosine decay to ``min_ratio`` of the base lr (Hydra: ``_partial_: true``,
    ``_target_: zoo.models.base.cosine_with_warmup``)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_ratio))


def unmet_sizes(
    cfg, exact: Optional[Mapping[str, Any]] = None, at_least: Optional[Mapping[str, int]] = None
) -> dict[str, Any]:
    """What ``data_sizes`` returns: the fields of ``cfg`` that do not fit the data, with the data's value -- those of
    ``exact`` that differ, those of ``at_least`` that are smaller (a larger vocabulary or context still fits)."""
    out = {k: v for k, v in (exact or {}).items() if getattr(cfg, k) != v}
    out.update({k: v for k, v in (at_least or {}).items() if getattr(cfg, k) < v})
    return out


def text_tokenizer_sizes(datamodule, cfg) -> dict[str, int]:
    """The ``text_vocab`` / ``text_len`` / ``pad_id`` of ``cfg`` that the DataModule's text tokenizer does not fit
    (fitting a lazily trained BPE first, as ``check_text_tokenizer`` does), with the tokenizer's values; nothing when
    the data has no tokenizer."""
    if callable(getattr(datamodule, "prepare_tokenizer", None)):
        datamodule.prepare_tokenizer()
    tok = getattr(datamodule, "tokenizer", None)
    if tok is None:
        return {}
    at_least = {"text_vocab": int(tok.vocab_size), "text_len": int(tok.context_length)}
    return unmet_sizes(cfg, exact={"pad_id": int(tok.pad_id)}, at_least=at_least)


def check_text_tokenizer(datamodule, *args, **kwargs):
    """The DataModule's text tokenizer, checked against a model's text embedding (vocabulary, context length, pad id);
    a ``ConfigError`` naming the override that fixes each mismatch, all of them at once. Fits a lazily trained BPE
    first (its vocabulary is only known then): the one side effect, on the data, not the model."""
    from zoo.errors import raise_all

    tok, problems = text_tokenizer_problems(datamodule, *args, **kwargs)  # (text_vocab, text_len, pad_id, what, ...)
    raise_all(problems, "the text tokenizer and the model")
    return tok


def text_tokenizer_problems(
    datamodule,
    text_vocab: int,
    text_len: int,
    pad_id: int,
    what: str,
    fix_missing: str = "data/tokenizer=bpe, or data/tokenizer=clip_bpe with model.net.text_vocab=49408",
) -> tuple[Any, list[str]]:
    """(the DataModule's text tokenizer or None, every mismatch with the model's text embedding, each with its fix).
    Every one is listed: a vocabulary and a context length both wrong took two attempts when the first was raised
    alone."""
    from types import SimpleNamespace

    model = SimpleNamespace(text_vocab=text_vocab, text_len=text_len, pad_id=pad_id)
    unmet = text_tokenizer_sizes(datamodule, model)  # fits a lazy BPE first
    tok = getattr(datamodule, "tokenizer", None)
    if tok is None:
        return None, [f"{what} needs text tokens in the batches (fix: {fix_missing})"]
    why = {
        "text_vocab": f"text tokenizer vocabulary ({tok.vocab_size}) is larger than the model's text_vocab "
        f"({text_vocab}) (fix: model.net.text_vocab={tok.vocab_size}, or a smaller data.tokenizer.vocab_size)",
        "text_len": f"text tokenizer context_length ({tok.context_length}) is longer than the model's text_len "
        f"({text_len}) (fix: data.tokenizer.context_length={text_len}, or model.net.text_len={tok.context_length})",
        "pad_id": f"text tokenizer pad id {tok.pad_id} != model pad_id {pad_id} (fix: model.net.pad_id={tok.pad_id})",
    }
    return tok, [why[k] for k in why if k in unmet]
