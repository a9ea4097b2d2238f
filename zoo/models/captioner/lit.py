"""Training DALL·E 3's image captioner (Lightning): CLIP image embedding -> caption, with the LM loss.

Trains from ``zoo-embed`` features (no CLIP in the loop): batches carry ``clip_image_emb`` (B, D), served by the
DataModule from ``data.features.<split>=<zoo-embed file>``, and ``caption`` (the data config's ``caption_style`` or
``caption_mix``). Optional ``clip_image_patches`` (B, P, patch_dim) feed the patch-token prefix (``net.patch_dim``).

Text: the captioner tokenizes ``batch["caption"]`` itself with its own tokenizer (so a fine-tune keeps the tokenizer
it was pre-trained with, whatever the data config's). The first run takes the DataModule's (``data/tokenizer=bpe``);
with ``tokenizer_all_styles`` (default) and the shapes world, that BPE is refitted on every caption style of the
training scenes (``alt``, ``short`` and ``descriptive``; its own cache file, keyed by the data identity + "all
styles"), so a captioner pre-trained on ``alt`` captions tokenizes the ``short`` / ``descriptive`` fine-tunes as
compactly as their own BPE would (a BPE of the alt captions alone takes ~2.5x more tokens per descriptive caption).
The tokenizer is stored in the checkpoint (``text_tokenizer``: ``TextTokenizer.to_spec()``).

The paper's recipe: pre-train on the noisy ground truth (``alt``), then fine-tune (``init_from=<that checkpoint>``:
weights, architecture and tokenizer are taken from it, read through ``zoo.checkpoint.load_module`` -- a file is
data) on ``short`` (SSC) and on ``descriptive`` (DSC) captions.

Decoding: ``caption(image_emb, method=...)`` with ``greedy``, ``beam`` (``beam_width``, ``length_penalty``) or
``nucleus`` (``top_p``, ``temperature``, ``seed``). Validation logs ``val/loss``, ``val/token_acc`` and
``val/ppl``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F

from zoo.errors import ConfigError, check_number, check_whole
from zoo.models.base import ClipEmbeddingLit, describe_tokenizer_spec, tokenizer_identity, unmet_sizes
from zoo.models.captioner.model import PRESETS, Captioner, CaptionerConfig, beam_search, sample_captions
from zoo.models.presets import resolve_preset
from zoo.nn.sampling import check_sampling
from zoo.text import TextTokenizer

log = logging.getLogger("zoo.captioner")
DECODING = ("greedy", "beam", "nucleus")


def keep_checkpoint_tokenizer(module, checkpoint: dict[str, Any]) -> None:
    """A resumed run (``ckpt_path=``) of a model that tokenizes its captions itself (captioner, prompt upsampler)
    keeps the tokenizer it trained with, as a fine-tune keeps its source's: ``check_data`` had taken the
    DataModule's, refitted when the data changed (another train_size, world, a cleared cache), and the weights read
    every caption as other token ids, without a word."""
    saved = TextTokenizer.from_spec((checkpoint.get("hyper_parameters") or {}).get("text_tokenizer"))
    if saved is None:
        return
    current = module.text_tokenizer.to_spec() if module.text_tokenizer is not None else None
    if current is not None and tokenizer_identity(current) != tokenizer_identity(saved.to_spec()):
        log.warning(
            "%s: resuming with the checkpoint's text tokenizer, not the data's (%s)",
            type(module).__name__,
            describe_tokenizer_spec(current),
        )
    module.text_tokenizer = saved


def check_decoding(
    decoding: str,
    beam_width: int,
    top_p: float,
    temperature: float = 1.0,
    prefix: str = "model.",
    length_penalty: float = 1.0,
) -> None:
    """The decoding options of a text-generating Lit (captioner, prompt upsampler), checked before training, and of
    the commands that decode with one (zoo-recaption, eval.captions: ``prefix`` is how their options are spelt).
    Without it a top_p of 0 or a negative temperature decoded greedily under a "nucleus" label, and a top_p above 1
    or a beam width of 0 (read as "the checkpoint's") ran something other than what the output's meta says."""
    if decoding not in DECODING:
        raise ConfigError(f"unknown decoding {decoding!r}; choose one of {DECODING} ({prefix}decoding=...)")
    # zoo.errors' one rule and wording: a word ('hot') was float()'s bare "could not convert string to float", and
    # beam_width=inf / nan int()'s OverflowError / ValueError, each naming no option
    check_whole(f"{prefix}beam_width", beam_width, 1, 4, why="the beams kept by beam search")
    why = "the probability mass kept by nucleus sampling; 1: no filter"
    check_number(f"{prefix}top_p", top_p, 0, 1, low_open=True, fix=0.9, why=why)
    check_number(f"{prefix}temperature", temperature, 0, fix=1.0, why="0 is greedy (sample_captions)")
    # NaN: every beam's final score NaN, argmax took beam 0
    check_number(f"{prefix}length_penalty", length_penalty, fix=1.0, why="the beam scores' length exponent")


def item_generators(seed: int, items: Iterable[int], device) -> Any:
    """One sampling stream per row, item ``i``'s a function of (seed, i) only (``zoo.diffusion.noise.RowGenerators``,
    which ``gumbel_pick`` draws from): a row's nucleus draws do not depend on the batch it is decoded in. One
    generator for the batch drew (batch, vocabulary) noise per token, so a prompt's rewrite changed with the other
    prompts of the call and a recaptioned item's caption with the batch size."""
    import hashlib

    from zoo.diffusion.noise import seeded_row_generators

    check_whole("seed", seed, fix=0)  # int() ran seed=2.5 as 2 and was an OverflowError for inf

    def key(item: int) -> int:
        return int.from_bytes(hashlib.sha256(f"{int(seed)}:{int(item)}".encode()).digest()[:8], "little") >> 1

    return seeded_row_generators(1, [key(item) for item in items], device)


def decoding_options(module, method, beam_width, length_penalty, top_p, temperature, max_len) -> dict[str, Any]:
    """The options one ``caption`` / ``upsample`` call decodes with (unset: the module's defaults), checked as the
    config's are: called from Python, ``method="nucleus", top_p=0`` (or a negative temperature) decoded greedily, a
    top_p above 1 or a beam width of 2.5 ran unsaid, and ``max_len=0`` decoded the full text_len while a negative one
    was torch's "negative dimension"."""
    opts = {
        "method": method or module.decoding,
        "beam_width": module.beam_width if beam_width is None else beam_width,
        "length_penalty": module.length_penalty if length_penalty is None else length_penalty,
        "top_p": module.top_p if top_p is None else top_p,
        "temperature": module.temperature if temperature is None else temperature,
    }
    check_decoding(opts["method"], opts["beam_width"], opts["top_p"], opts["temperature"], "", opts["length_penalty"])
    fix = f"None, the model's text_len {module.cfg.text_len}"
    check_whole("max_len", max_len, 1, fix, none_ok=True, why="tokens incl. [SOT]")
    return opts


class CaptionerLit(ClipEmbeddingLit):
    """Args:
    preset: ``tiny`` | ``shapes`` | ``paper`` (``zoo.models.captioner.model.PRESETS``); ``net`` overrides fields
        of ``CaptionerConfig`` (e.g. ``embed_dim`` to match the CLIP, ``vocab_size``, ``n_prefix``).
    init_from: a captioner checkpoint to fine-tune: its weights, architecture (preset / net) and tokenizer
        replace this config's (the paper's SSC / DSC fine-tunes of the alt-text captioner).
    tokenizer_all_styles: fit the data's BPE on every caption style of the shapes world (see the module doc).
    decoding, beam_width, length_penalty, top_p, temperature: defaults of ``caption``.
    text_tokenizer: filled in by the checkpoint (leave None when training).
    clip_fingerprint: the CLIP of the training embeddings (``ClipEmbeddingLit``): filled in from the data, the
        fine-tuned checkpoint and this checkpoint; leave None when training. A captioner reads only that CLIP's
        vectors: zoo-recaption and eval.captions refuse embeddings of another CLIP of the same width (they passed
        every shape check and were captioned as noise).
    """

    # what the val batches read from data.features.val (zoo.train.check_compatibility refuses a run that trains on
    # features and would validate without them)
    val_features_needed = ("clip_image_emb",)
    n_sample_captions = 8  # val items captioned after each validation (write_sample_captions)

    def __init__(
        self,
        preset: str = "shapes",
        net: Optional[dict[str, Any]] = None,
        init_from: Optional[str] = None,
        tokenizer_all_styles: bool = True,
        decoding: str = "greedy",
        beam_width: int = 4,
        length_penalty: float = 1.0,
        top_p: float = 0.9,
        temperature: float = 1.0,
        text_tokenizer: Optional[dict[str, Any]] = None,
        clip_fingerprint: Optional[str] = None,
        optimizer=None,
        scheduler=None,
    ):
        super().__init__(optimizer, scheduler)
        self.clip_fingerprint = clip_fingerprint  # the CLIP of its training embeddings (ClipEmbeddingLit)
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "text_tokenizer"])
        check_decoding(decoding, beam_width, top_p, temperature, length_penalty=length_penalty)
        self.decoding, self.beam_width, self.length_penalty = decoding, int(beam_width), float(length_penalty)
        self.top_p, self.temperature = float(top_p), float(temperature)
        self.tokenizer_all_styles = bool(tokenizer_all_styles)
        self.text_tokenizer: Optional[TextTokenizer] = TextTokenizer.from_spec(text_tokenizer)
        source = None
        if init_from and Path(init_from).is_file():
            source = self._load_source(init_from)
            _check_fine_tune_net(net, source, init_from)
            preset, net = source.hparams["preset"], source.hparams.get("net")
            self.hparams["preset"], self.hparams["net"] = preset, net  # what a rebuild of this run needs
        # a missing init_from is reported by check_data with its fix (not here, so configs can be composed)
        self.cfg: CaptionerConfig = resolve_preset(PRESETS, CaptionerConfig, preset, net, "captioner")
        self.net = Captioner(self.cfg)
        if source is not None:
            self.net.load_state_dict(source.net.state_dict())
            self.text_tokenizer = source.text_tokenizer
            # a fine-tune reads the source's CLIP: setup refuses features of another one
            self.clip_fingerprint = source.clip_fingerprint
        self._source = init_from if source is not None else None
        self._sample_batch: Optional[tuple[list[str], torch.Tensor, Optional[torch.Tensor]]] = None

    @staticmethod
    def _load_source(path: str) -> "CaptionerLit":
        from zoo.checkpoint import load_module

        src = load_module(path, expect=("captioner",), option="model.init_from")
        if src.text_tokenizer is None:
            raise ConfigError(
                f"{path} carries no text tokenizer (fix: model.init_from=<a captioner checkpoint written by zoo-train>)"
            )
        log.info("captioner: fine-tuning %s (preset %s, net %s)", path, src.hparams["preset"], src.hparams.get("net"))
        return src

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # clip_fingerprint
        hp = dict(checkpoint.get("hyper_parameters", {}))
        hp["text_tokenizer"] = self.text_tokenizer.to_spec() if self.text_tokenizer is not None else None
        checkpoint["hyper_parameters"] = hp

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)  # ClipEmbeddingLit: the CLIP fingerprint
        keep_checkpoint_tokenizer(self, checkpoint)

    # ------------------------------------------------------------------------------------------ data
    def data_sizes(self, datamodule) -> dict[str, Any]:
        """The width of the train features' CLIP image embeddings (nothing without them: check_data names the fix).
        Nothing for a fine-tune either: its network is init_from's (check_data reports features of another width)."""
        if (
            self._source is not None
            or "train" not in (getattr(datamodule, "features", None) or {})
            or not hasattr(datamodule, "dataset")
        ):
            return {}
        emb = (getattr(datamodule.dataset("train"), "features", None) or {}).get("clip_image_emb")
        return {} if emb is None else unmet_sizes(self.cfg, {"embed_dim": int(emb.shape[-1])})

    def check_data(self, datamodule) -> None:
        """Needs ``data.features.train`` (a zoo-embed file of this CLIP width) and, unless fine-tuning, a text
        tokenizer in the data config. Adapts: takes the data's tokenizer (refitted on every shapes caption style with
        ``tokenizer_all_styles``) when the module has none yet."""
        path = self.hparams.get("init_from")
        if path and self._source is None:
            raise ConfigError(
                f"captioner checkpoint to fine-tune not found: {path} (fix: model.init_from=<the alt "
                f"captioner's last.ckpt>, e.g. from `zoo-train experiment=dalle3/captioner_alt`)"
            )
        features = getattr(datamodule, "features", None) or {}
        if "train" not in features:
            raise ConfigError(
                "the captioner trains on zoo-embed features (fix: data.features.train=<file from "
                "`zoo-embed clip.checkpoint=<clip.ckpt> data=shapes split=train`>, and "
                "data.features.val=<the val file>)"
            )
        ds = datamodule.dataset("train") if hasattr(datamodule, "dataset") else None
        emb = (getattr(ds, "features", None) or {}).get("clip_image_emb")
        if emb is None:
            raise ConfigError(
                f"{features['train']} has no clip_image_emb: it is not a zoo-embed file (fix: "
                f"data.features.train=<file written by zoo-embed>)"
            )
        if emb.shape[-1] != self.cfg.embed_dim:
            fix = (  # a fine-tune's width is its source's: only the features can change
                f"data.features.*=<zoo-embed files of the CLIP {path} was trained on>"
                if self._source is not None
                else f"model.net.embed_dim={emb.shape[-1]}"
            )
            raise ConfigError(
                f"the CLIP image embeddings are {emb.shape[-1]}-d but the captioner expects "
                f"{self.cfg.embed_dim} (fix: {fix})"
            )
        # the patch-token prefix needs per-patch CLIP outputs in every batch; without them the first training step
        # died on a ValueError (zoo-embed writes no clip_image_patches, and the DataModule serves the keys it does)
        if self.cfg.patch_dim > 0 and (getattr(ds, "features", None) or {}).get("clip_image_patches") is None:
            raise ConfigError(
                f"model.net.patch_dim={self.cfg.patch_dim} conditions on CLIP patch tokens, but "
                f"data.features.train={features['train']} serves no clip_image_patches (zoo-embed writes the pooled "
                f"clip_image_emb only) (fix: model.net.patch_dim=0)"
            )
        # the val file is read only at the first validation (after the training steps when sanity checks are off):
        # one without clip_image_emb, or of another width, failed there
        if "val" in features and ds is not None:
            val = (getattr(datamodule.dataset("val"), "features", None) or {}).get("clip_image_emb")
            if val is None or val.shape[-1] != emb.shape[-1]:
                what = (
                    "has no clip_image_emb"
                    if val is None
                    else f"holds {val.shape[-1]}-d embeddings, train {emb.shape[-1]}-d"
                )
                raise ConfigError(
                    f"data.features.val={features['val']} {what} (fix: data.features.val=<the zoo-embed file of the "
                    f"val split, by the CLIP of the train file>)"
                )
        if self.text_tokenizer is None:
            self.text_tokenizer = self._data_tokenizer(datamodule, ds)
        self._check_tokenizer(self.text_tokenizer)

    def _data_tokenizer(self, datamodule, ds) -> TextTokenizer:
        tok = getattr(datamodule, "tokenizer", None)
        if tok is None:
            raise ConfigError("the captioner needs a text tokenizer for its captions (fix: data/tokenizer=bpe)")
        base = getattr(ds, "base", ds)
        if self.tokenizer_all_styles and callable(getattr(tok, "ensure_ready", None)) and hasattr(base, "scene"):
            from zoo.text import LazyTrainedBPE

            own = LazyTrainedBPE(tok.path, tok.requested_vocab, tok.context_length)
            key = {**datamodule.data_identity(), "caption_style": "all styles", "caption_mix": None}
            own.ensure_ready(lambda: _all_style_captions(base), fit_key=key)
            return own._require()
        if callable(getattr(datamodule, "prepare_tokenizer", None)):
            datamodule.prepare_tokenizer()
        return tok

    def _check_tokenizer(self, tok: TextTokenizer) -> None:
        c = self.cfg
        if tok.vocab_size > c.vocab_size:
            raise ConfigError(
                f"text tokenizer vocabulary ({tok.vocab_size}) is larger than the captioner's vocab_size "
                f"({c.vocab_size}) (fix: model.net.vocab_size={tok.vocab_size}, or a smaller "
                f"data.tokenizer.vocab_size)"
            )
        if tok.context_length > c.text_len:
            raise ConfigError(
                f"text tokenizer context_length ({tok.context_length}) is longer than the captioner's "
                f"text_len ({c.text_len}) (fix: model.net.text_len={tok.context_length})"
            )
        for name in ("pad_id", "sot_id", "eot_id"):
            if getattr(tok, name) != getattr(c, name):
                raise ConfigError(
                    f"text tokenizer {name} {getattr(tok, name)} != the captioner's {getattr(c, name)} "
                    f"(fix: model.net.{name}={getattr(tok, name)})"
                )

    # ------------------------------------------------------------------------------------------ batches
    def tokenize(self, captions: Sequence[str]) -> torch.Tensor:
        """Captions -> (B, text_len) token ids on this module's device, right-padded with pad_id."""
        if self.text_tokenizer is None:
            raise RuntimeError("no text tokenizer: train with data/tokenizer=bpe (it is stored in the checkpoint)")
        tokens = self.text_tokenizer.encode(list(captions))
        t = self.cfg.text_len
        if tokens.shape[1] < t:
            tokens = F.pad(tokens, (0, t - tokens.shape[1]), value=self.cfg.pad_id)
        return tokens[:, :t].to(self.device)

    def features(self, batch: dict[str, Any]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if "clip_image_emb" not in batch:
            raise ConfigError("batch lacks clip_image_emb (fix: data.features.<split>=<zoo-embed file>)")
        patches = batch.get("clip_image_patches") if self.cfg.patch_dim > 0 else None
        return batch["clip_image_emb"].float(), None if patches is None else patches.float()

    def forward_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        emb, patches = self.features(batch)
        return self.net.loss(emb, self.tokenize(batch["caption"]), patches)

    # ------------------------------------------------------------------------------------------ loops
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        r = self.forward_loss(batch)
        self.log_metrics("train", r, batch_size=len(batch["caption"]))
        return r["loss"]

    def eval_step(self, batch: dict[str, Any], stage: str) -> None:
        r = self.forward_loss(batch)
        r["ppl"] = r["loss"].exp()
        self.log_metrics(stage, r, batch_size=len(batch["caption"]))
        if stage == "val" and self._sample_batch is None:  # the first val batch: the same items every validation
            emb, patches = self.features(batch)
            n = self.n_sample_captions
            keep = None if patches is None else patches[:n].detach()
            self._sample_batch = (list(batch["caption"][:n]), emb[:n].detach(), keep)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if not self.trainer.sanity_checking:
            self.write_sample_captions()

    def write_sample_captions(self) -> Optional[Path]:
        """The captioner's greedy captions of the first val items beside their true captions, after each
        validation: ``<run dir>/samples/captions_step<N>.tsv`` and a W&B table ``samples/captions``. A captioner draws
        no image, so the sample grids of the other models skipped it, and a run showed only its loss and perplexity:
        what it writes was seen only after training, through eval.captions. Greedy draws no random numbers, so the
        run's noise (and its exact resume) is unchanged."""
        if self._sample_batch is None or self.text_tokenizer is None or not self.trainer.is_global_zero:
            return None
        truth, emb, patches = self._sample_batch
        samples = self.caption(emb, patches, method="greedy")
        step = self.trainer.global_step
        path = Path(self.trainer.default_root_dir) / "samples" / f"captions_step{step:07d}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [[t, s] for t, s in zip(truth, samples)]
        path.write_text("".join(f"{t}\t{s}\n" for t, s in [("caption", "sample"), *rows]))
        for logger in self.trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                logger.log_text(key="samples/captions", columns=["caption", "sample"], data=rows, step=step)
        return path

    def default_optimizer(self, params) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=3e-4, betas=(0.9, 0.95), weight_decay=0.01)

    # ------------------------------------------------------------------------------------------ captioning
    @torch.no_grad()
    def caption_tokens(
        self,
        image_emb: torch.Tensor,
        patches: Optional[torch.Tensor] = None,
        method: Optional[str] = None,
        beam_width: Optional[int] = None,
        length_penalty: Optional[float] = None,
        top_p: Optional[float] = None,
        top_k: Optional[int] = None,
        temperature: Optional[float] = None,
        seed: int = 0,
        generator: Optional[torch.Generator] = None,
        max_len: Optional[int] = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Caption token ids (B, max_len) for CLIP image embeddings (B, D); unset options take the module's
        defaults (``decoding``, ``beam_width``, ...)."""
        o = decoding_options(self, method, beam_width, length_penalty, top_p, temperature, max_len)
        # checked as DALL·E's are (check_sampling): top_k=-3 was read as no filter, 2.5 as 2; int() ran seed=2.5 as 2
        check_sampling(top_k=top_k)
        check_whole("seed", seed, fix=0)
        emb = image_emb.to(self.device).float()
        pat = patches.to(self.device).float() if patches is not None else None
        n_valid = getattr(self.text_tokenizer, "vocab_size", None)  # ids past the BPE's have no text
        if o["method"] == "beam":
            bw, lp = int(o["beam_width"]), o["length_penalty"]
            return beam_search(self.net, emb, pat, bw, lp, max_len, use_cache, n_valid=n_valid)
        if o["method"] == "greedy":
            return sample_captions(
                self.net, emb, pat, temperature=0.0, max_len=max_len, use_cache=use_cache, n_valid=n_valid
            )
        gen = generator if generator is not None else torch.Generator(device=self.device).manual_seed(int(seed))
        return sample_captions(
            self.net,
            emb,
            pat,
            temperature=o["temperature"],
            top_k=top_k,
            top_p=o["top_p"],
            max_len=max_len,
            use_cache=use_cache,
            generator=gen,
            n_valid=n_valid,
        )

    @torch.no_grad()
    def caption(
        self, image_emb: torch.Tensor, patches: Optional[torch.Tensor] = None, batch_size: int = 256, **kwargs
    ) -> list[str]:
        """Captions (strings) for CLIP image embeddings (B, D), in chunks of ``batch_size``; ``kwargs`` as
        ``caption_tokens``. Nucleus without a ``generator``: row i draws from its own stream seeded by (``seed``, i)
        (``item_generators``), so a caption does not change with ``batch_size`` or the other rows."""
        if self.text_tokenizer is None:
            raise RuntimeError("no text tokenizer to decode with (train with data/tokenizer=bpe)")
        was_training = self.training
        self.eval()
        try:
            seed = kwargs.pop("seed", 0)
            per_row = kwargs.get("generator") is None and (kwargs.get("method") or self.decoding) == "nucleus"
            out: list[str] = []
            for i in range(0, len(image_emb), batch_size):
                emb = image_emb[i : i + batch_size]
                pat = patches[i : i + batch_size] if patches is not None else None
                if per_row:
                    kwargs["generator"] = item_generators(seed, range(i, i + len(emb)), self.device)
                out += self.text_tokenizer.decode(self.caption_tokens(emb, pat, **kwargs).cpu())
            return out
        finally:
            self.train(was_training)


def _check_fine_tune_net(net: Optional[dict[str, Any]], source: CaptionerLit, init_from: str) -> None:
    """A fine-tune takes its architecture from ``init_from``: ``model.net`` fields that differ from the source's were
    dropped without a word (e.g. ``model.net.prefix_emb_norm=true``, a lever experiments/dalle3/README.md names,
    given on the fine-tune). Refused instead, naming them."""
    differ = {k: v for k, v in (net or {}).items() if getattr(source.cfg, k, object()) != v}
    if differ:
        fields = ", ".join(f"model.net.{k}={v}" for k, v in differ.items())
        raise ConfigError(
            f"{fields}: a fine-tune takes its network from model.init_from={init_from} (its net: "
            f"{dict(source.hparams.get('net') or {})}, preset {source.hparams['preset']}) and would ignore it (fix: "
            f"drop {', '.join(f'model.net.{k}' for k in differ)}, or set it on the run that wrote {init_from})"
        )


def _all_style_captions(dataset) -> Iterable[str]:
    """Every caption style of every training scene (a shapes dataset's ``scene``: no rendering)."""
    for i in range(len(dataset)):
        yield from dataset.scene(i)[1].values()
