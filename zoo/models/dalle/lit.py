"""Training the DALL·E 1 transformer (stage 2) with Lightning.

Image tokens come from the batch (``image_tokens``, written by ``zoo-tokenize``) when present, else from a frozen
image tokenizer (a zoo-train dVAE / VQ-VAE checkpoint, ``image_tokenizer_ckpt``) that encodes ``image`` on the
fly (eval mode, no grad, never in the optimizer). Text tokens are the DataModule's ``text_tokens`` (its text tokenizer,
e.g. ``data/tokenizer=bpe``), right-padded with the pad id up to the model's ``text_len``.

Caption dropout (for classifier-free guidance): with probability ``text_dropout`` a training caption is replaced
by all pads (the null text that ``sample_image_tokens`` uses for the unconditional stream).

Self-contained checkpoints: ``on_save_checkpoint`` writes two extra plain-value hyper-parameters,
``tokenizer_spec`` (registered component name + hyper-parameters + resolution of the frozen image tokenizer, whose weights are
in the state dict under ``image_tokenizer.``) and ``text_tokenizer`` (``TextTokenizer.to_spec()``: the BPE's
tokenizer.json as a string), so
``zoo.checkpoint.load_module(ckpt)`` followed by ``generate`` needs neither the tokenizer checkpoint nor the BPE file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from zoo.errors import ConfigError, raise_all
from zoo.models.base import TextTokenizerLit, text_tokenizer_problems, text_tokenizer_sizes, unmet_sizes
from zoo.models.dalle.model import (
    PRESETS,
    DalleTransformer,
    DalleTransformerConfig,
    image_tokenizer_from_spec,
    image_tokenizer_spec,
    tokenizer_fingerprint,
)
from zoo.models.presets import resolve_preset
from zoo.nn.sampling import check_sampling, sample_image_tokens  # check_sampling: also imported from here
from zoo.text import TextTokenizer

log = logging.getLogger(__name__)


class DalleLit(TextTokenizerLit):
    """Args:
    preset: ``tiny`` | ``shapes`` | ``paper`` (``zoo.models.dalle.model.PRESETS``); ``net`` overrides fields.
    image_tokenizer_ckpt: zoo-train dVAE / VQ-VAE checkpoint used frozen to encode images (and to decode samples).
    text_dropout: probability of replacing a training caption by all pads (classifier-free guidance).
    grid_captions: captions sampled by ``sample_grid`` (the SampleGridCallback) beside their real images.
    grid_top_k, grid_guidance_scale: sampling settings of ``sample_grid``.
    tokenizer_spec, text_tokenizer: filled in by the checkpoint (leave None when training).
    """

    def __init__(
        self,
        preset: str = "shapes",
        net: Optional[dict[str, Any]] = None,
        image_tokenizer_ckpt: Optional[str] = None,
        text_dropout: float = 0.15,
        grid_captions: int = 8,
        grid_top_k: Optional[int] = None,
        grid_guidance_scale: float = 1.0,
        tokenizer_spec: Optional[dict[str, Any]] = None,
        text_tokenizer: Optional[dict[str, Any]] = None,
        image_codes_tokenizer: Optional[dict[str, Any]] = None,
        optimizer=None,
        scheduler=None,
    ):
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "tokenizer_spec", "text_tokenizer"])
        if not 0.0 <= text_dropout < 1.0:
            raise ValueError(f"text_dropout must be in [0, 1), got {text_dropout}")
        check_sampling(top_k=grid_top_k, prefix="model.grid_")  # else a first sample grid that ignores it
        from zoo.models.glide.lit import check_grid_captions  # one check for every sample_grid's count

        check_grid_captions(
            grid_captions
        )  # 0 failed at the first validation (torch.cat of no batches), -1 drew len - 1
        self.cfg = resolve_preset(PRESETS, DalleTransformerConfig, preset, net, "DALL·E transformer")
        self.transformer = DalleTransformer(self.cfg)
        self.text_dropout = float(text_dropout)
        self._tokenizer_spec: Optional[dict[str, Any]] = None
        self._tokenizer_trained_resolution: Optional[int] = None  # from the tokenizer checkpoint's run config
        self.image_tokenizer = None
        if tokenizer_spec:  # rebuilt from a checkpoint: weights come with the state dict
            self._set_image_tokenizer(image_tokenizer_from_spec(tokenizer_spec), tokenizer_spec)
        elif image_tokenizer_ckpt and Path(image_tokenizer_ckpt).is_file():
            self.load_image_tokenizer(image_tokenizer_ckpt)
        # a missing image_tokenizer_ckpt is reported by check_data with its fix (not here, so configs can be composed)
        self.text_tokenizer = TextTokenizer.from_spec(text_tokenizer)

    # ------------------------------------------------------------------------------------------ tokenizers
    def load_image_tokenizer(
        self, path: str, resolution: Optional[int] = None, option: str = "model.image_tokenizer_ckpt"
    ) -> None:
        """``option``: the option that gave ``path``, named in the fix of a refusal."""
        from zoo.checkpoint import safe_load

        ckpt = safe_load(path)
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
            raise ConfigError(f"{path} is not a zoo-train checkpoint (fix: {option}=<dvae/vqvae last.ckpt>)")
        from zoo.checkpoint import trained_resolution

        self._tokenizer_trained_resolution = trained_resolution(ckpt.get("zoo_config"))
        res = resolution or self._tokenizer_trained_resolution
        spec = image_tokenizer_spec(ckpt, res, option)  # plain values; stored in our checkpoints by on_save_checkpoint
        tok = image_tokenizer_from_spec(spec, ckpt["state_dict"])
        # trained from zoo-tokenize codes alone, this model's image tokens are that tokenizer's codes: another
        # tokenizer of the same codebook and grid decodes them without an error into other images
        made_by = self.hparams.get("image_codes_tokenizer") or {}
        if made_by.get("fingerprint") and made_by["fingerprint"] != tokenizer_fingerprint(tok):
            raise ConfigError(
                f"{path} is not the image tokenizer that wrote this DALL·E's training codes "
                f"({made_by.get('path')}, weights fingerprint {made_by['fingerprint']}; this one "
                f"{tokenizer_fingerprint(tok)}): it would decode the samples into other images (fix: "
                f"generator.image_tokenizer_ckpt={made_by.get('path')})"
            )
        self._set_image_tokenizer(tok, spec)

    def _set_image_tokenizer(self, tok, spec: dict[str, Any]) -> None:
        tok.eval()
        for p in tok.parameters():
            p.requires_grad_(False)
        self.image_tokenizer = tok  # registered as a submodule: its weights travel in our state dict
        self._tokenizer_spec = spec
        self.transformer.sampled_codes = int(tok.codebook_size)  # only codes it can decode are sampled

    def train(self, mode: bool = True):
        super().train(mode)
        if self.image_tokenizer is not None:
            self.image_tokenizer.eval()  # frozen: never in training mode (no EMA / dead-code updates)
        return self

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # the text tokenizer
        checkpoint["hyper_parameters"]["tokenizer_spec"] = self._tokenizer_spec

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":
            self.warn_untrained_null({"model.grid_guidance_scale": self.hparams.grid_guidance_scale})

    def warn_untrained_null(self, scales: dict[str, float]) -> None:
        """A WARNING when this transformer never trained the null caption (all pads; ``text_dropout=0``) but
        ``scales`` (name -> guidance scale) guide with it: the guided logits extrapolate from an unconditional
        stream that never saw its own input (as GlideLit.warn_untrained_null)."""
        guided = ", ".join(f"{k}={v}" for k, v in scales.items() if v is not None and float(v) != 1)
        if self.text_dropout == 0 and guided:
            log.warning(
                "this DALL·E transformer has text_dropout=0, so its null caption (all pads) is never trained, but "
                "%s guide with it: classifier-free guidance extrapolates from an untrained unconditional stream "
                "(fix: train with model.text_dropout=0.15, the default, or sample with a guidance scale of 1)",
                guided,
            )

    # --------------------------------------------------------------------------------------------- data
    @staticmethod
    def _token_file_stats(datamodule, split: str = "train") -> Optional[tuple[int, int, int]]:
        """(grid h, grid w, largest code + 1) of the zoo-tokenize codes serving ``split``, or None."""
        if split not in (getattr(datamodule, "features", None) or {}) or not callable(
            getattr(datamodule, "dataset", None)
        ):
            return None
        toks = (getattr(datamodule.dataset(split), "features", None) or {}).get("image_tokens")
        if toks is None or toks.dim() != 3:
            return None
        return int(toks.shape[1]), int(toks.shape[2]), int(toks.max()) + 1 if toks.numel() else 0

    @staticmethod
    def _token_file_maker(datamodule, split: str) -> Optional[dict[str, str]]:
        """``{"path", "fingerprint"}`` of the tokenizer that wrote ``split``'s zoo-tokenize codes, as the file records
        it (None for a file from before the record, or no file)."""
        meta = getattr(datamodule.dataset(split), "features_meta", None) or {}
        if not meta.get("tokenizer_fingerprint"):
            return None
        return {"path": str(meta.get("tokenizer")), "fingerprint": str(meta["tokenizer_fingerprint"])}

    def data_sizes(self, datamodule) -> dict[str, Any]:
        """The text tokenizer's vocabulary / context length / pad id; the image tokenizer's codebook and its grid at
        data.resolution (a resolution its downsampling does not divide is left to check_data to refuse)."""
        exact: dict[str, int] = {}
        at_least: dict[str, int] = {}
        it = self.image_tokenizer
        if it is not None:
            at_least["image_vocab"] = int(it.codebook_size)
            res = getattr(datamodule, "resolution", None)
            if res is not None and res % it.downsample_factor == 0:
                exact["grid_h"] = exact["grid_w"] = res // it.downsample_factor
        elif (tokens := self._token_file_stats(datamodule)) is not None:  # zoo-tokenize codes, no tokenizer here
            exact["grid_h"], exact["grid_w"] = tokens[:2]
            # the codebook the file records (a code the train split never used may still be in val or be sampled),
            # else every code the file holds (files without the record)
            meta = getattr(datamodule.dataset("train"), "features_meta", None) or {}
            book = meta.get("codebook_size")
            at_least["image_vocab"] = max(tokens[2], book) if isinstance(book, int) else tokens[2]
        return {**text_tokenizer_sizes(datamodule, self.cfg), **unmet_sizes(self.cfg, exact, at_least)}

    def check_data(self, datamodule) -> None:
        """The data against the network: text tokenizer, image tokenizer (or zoo-tokenize codes), grid and
        vocabularies. Every mismatch found is reported in one ConfigError, each with its fix, so a run that needs
        three ``model.net.*`` fixes (e.g. a text vocabulary, a text length and an image vocabulary all smaller than
        the data's) takes one attempt, not three."""
        c = self.cfg
        tok, problems = text_tokenizer_problems(
            datamodule, c.text_vocab, c.text_len, c.pad_id, "the DALL·E transformer"
        )
        features = getattr(datamodule, "features", {}) or {}
        image_problems = self._image_tokenizer_problems(datamodule)
        problems += image_problems
        if self.image_tokenizer is not None:
            it = self.image_tokenizer
            res = getattr(datamodule, "resolution", None)
            if not image_problems:
                if res is not None:
                    it.resolution = res
                    if self._tokenizer_spec is not None:
                        self._tokenizer_spec["resolution"] = res
                grid = tuple(it.grid_size)
                if grid != (c.grid_h, c.grid_w):
                    # another data.resolution is a fix only for a tokenizer that does not record the size it
                    # trained at: one that does is refused at any other size (above), so that hint led in a circle
                    trained = self._tokenizer_trained_resolution
                    other_res = "" if trained is not None else f", or data.resolution={c.grid_h * it.downsample_factor}"
                    problems.append(
                        f"the image tokenizer makes a {grid[0]}x{grid[1]} grid at data.resolution={res} but "
                        f"the model expects {c.grid_h}x{c.grid_w} (fix: model.net.grid_h={grid[0]} "
                        f"model.net.grid_w={grid[1]}{other_res})"
                    )
            if it.codebook_size > c.image_vocab:
                problems.append(
                    f"image tokenizer codebook ({it.codebook_size}) is larger than the model's "
                    f"image_vocab ({c.image_vocab}) (fix: model.net.image_vocab={it.codebook_size})"
                )
        # zoo-tokenize codes of every split the run reads (train, and val: validation was an IndexError or "batch has
        # no image_tokens" at the first validation otherwise): a grid or an id the model lacks is an IndexError at
        # step 1, and a file with no codes (e.g. a zoo-embed file passed by mistake) has nothing to train on
        makers: dict[str, dict[str, str]] = {}
        for split in ("train", "val"):
            if split not in features:
                if split == "val" and "train" in features and self.image_tokenizer is None:
                    problems.append(
                        "data.features.train gives image codes but data.features.val none, and there is no image "
                        "tokenizer to encode the val images: the run would stop at its first validation (fix: "
                        "data.features.val=<the zoo-tokenize file of the val split>, or "
                        "model.image_tokenizer_ckpt=<dvae/vqvae ckpt>)"
                    )
                continue
            tokens = self._token_file_stats(datamodule, split)
            if tokens is None:
                if self.image_tokenizer is None and callable(getattr(datamodule, "dataset", None)):
                    problems.append(
                        f"data.features.{split}={features[split]} holds no image_tokens (a zoo-embed file?) and there "
                        f"is no image tokenizer to encode the images (fix: data.features.{split}=<the zoo-tokenize "
                        f"file of the {split} split>, or model.image_tokenizer_ckpt=<dvae/vqvae ckpt>)"
                    )
                continue
            if (maker := self._token_file_maker(datamodule, split)) is not None:
                makers[split] = maker
            h, w, n_codes = tokens
            if (h, w) != (c.grid_h, c.grid_w):
                problems.append(
                    f"the image tokens of data.features.{split} are a {h}x{w} grid but the model expects "
                    f"{c.grid_h}x{c.grid_w} (fix: "
                    + (
                        "data.features.val=<the val split's codes by the tokenizer that made the train codes>)"
                        if split == "val"
                        else f"model.net.grid_h={h} model.net.grid_w={w})"
                    )
                )
            if n_codes > c.image_vocab:
                problems.append(
                    f"the image tokens of data.features.{split} hold code {n_codes - 1} but the model's image_vocab "
                    f"is {c.image_vocab} (fix: model.net.image_vocab=<the tokenizer's codebook size, at least "
                    f"{n_codes}>)"
                )
        problems += self._code_maker_problems(makers)
        raise_all(problems, "the data and the DALL·E transformer")
        self.text_tokenizer = tok
        if self.image_tokenizer is None and makers:  # kept in the checkpoint: sampling checks the decoder it is given
            self.hparams["image_codes_tokenizer"] = makers.get("train") or makers["val"]

    def check_image_data(self, datamodule) -> None:
        """The checks of ``check_data`` that need no text tokenizer: zoo-train runs them before fitting the data's
        BPE, which took 48 s on the shapes captions before a tokenizer trained at 32 px was refused at
        data.resolution=48 (found: zoo-train experiment=dalle1/train_shapes model.image_tokenizer_ckpt=<32 px>)."""
        raise_all(self._image_tokenizer_problems(datamodule), "the data and the DALL·E transformer")

    def _image_tokenizer_problems(self, datamodule) -> list[str]:
        """The image tokenizer against the data, before any grid or vocabulary: a missing checkpoint (or no image
        tokens at all), a resolution it was not trained at, a resolution its downsampling does not divide."""
        c = self.cfg
        if self.image_tokenizer is None:
            path = self.hparams.get("image_tokenizer_ckpt")
            if path:
                return [
                    f"image tokenizer checkpoint not found: {path} (fix: model.image_tokenizer_ckpt=<a "
                    f"zoo-train dvae/vqvae last.ckpt>, e.g. train one with "
                    f"`zoo-train experiment=demo/tokenizer hydra.run.dir=logs/demo/tokenizer`)"
                ]
            if "train" not in (getattr(datamodule, "features", {}) or {}):
                return [
                    "no image tokenizer and no precomputed image tokens (fix: "
                    "model.image_tokenizer_ckpt=<dvae/vqvae ckpt>, "
                    "or data.features.train=<zoo-tokenize file>)"
                ]
            return []
        it = self.image_tokenizer
        res = getattr(datamodule, "resolution", None)
        trained = self._tokenizer_trained_resolution
        if res is not None and trained is not None and res != trained:
            # encoding at another size gives another grid of codes than the tokenizer learned (and samples
            # decoded at it): refused, as zoo-tokenize refuses it
            return [
                f"the image tokenizer {self.hparams.get('image_tokenizer_ckpt')} was trained at {trained} px but "
                f"data.resolution={res} (fix: data.resolution={trained}, or a tokenizer trained at {res} px)"
            ]
        if res is not None and res % it.downsample_factor:
            return [
                f"data.resolution={res} is not a multiple of the image tokenizer's downsample "
                f"factor {it.downsample_factor} (fix: data.resolution={c.grid_h * it.downsample_factor})"
            ]
        return []

    def _code_maker_problems(self, makers: dict[str, dict[str, str]]) -> list[str]:
        """The zoo-tokenize files' tokenizers against each other and against ``model.image_tokenizer_ckpt``: codes
        of one tokenizer decoded (or validated) with another's codebook train a model whose samples are other
        images, with no error anywhere."""
        problems = []
        if len({m["fingerprint"] for m in makers.values()}) > 1:
            problems.append(
                f"data.features.train and data.features.val were written by different image tokenizers "
                f"({makers['train']['path']} and {makers['val']['path']}) (fix: zoo-tokenize both splits with the "
                f"same tokenizer_ckpt=)"
            )
        if self.image_tokenizer is not None and makers:
            own = tokenizer_fingerprint(self.image_tokenizer)
            for split, m in makers.items():
                if m["fingerprint"] != own:
                    problems.append(
                        f"data.features.{split} holds the codes of the image tokenizer {m['path']}, but "
                        f"model.image_tokenizer_ckpt={self.hparams.get('image_tokenizer_ckpt')} is another one: "
                        f"its decoder would turn the model's samples into other images (fix: "
                        f"model.image_tokenizer_ckpt={m['path']}, or zoo-tokenize the {split} split again with "
                        f"tokenizer_ckpt={self.hparams.get('image_tokenizer_ckpt')})"
                    )
        return problems

    def pad_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, text_len): right-pad with pad_id (L > text_len is refused by check_data)."""
        t = self.cfg.text_len
        if tokens.shape[1] > t:
            raise ValueError(f"text has {tokens.shape[1]} tokens; the model takes {t} (data.tokenizer.context_length)")
        if tokens.shape[1] < t:
            tokens = F.pad(tokens, (0, t - tokens.shape[1]), value=self.cfg.pad_id)
        return tokens

    def tokenize_text(self, captions: Sequence[str]) -> torch.Tensor:
        """Captions -> text token ids (B, text_len) on this module's device (not embeddings: compare
        ``ClipScorer.encode_text``)."""
        if self.text_tokenizer is None:
            raise RuntimeError("no text tokenizer: train with data/tokenizer=bpe (it is stored in the checkpoint)")
        return self.pad_text(self.text_tokenizer.encode(list(captions))).to(self.device)

    @property
    def val_features_needed(self) -> tuple[str, ...]:
        """What validation / test batches read from zoo-tokenize files (zoo.train.check_compatibility): the image
        codes, when no image tokenizer is here to encode the images. A run from train and val codes on data with a
        test split of its own trained, validated, then stopped at zoo-train's test stage on 'batch has no
        image_tokens' (found: zoo-train model=dalle data=shapes data.features.train=<codes> data.features.val=<codes>)."""
        return () if self.image_tokenizer is not None else ("image_tokens",)

    @torch.no_grad()
    def image_tokens(self, batch: dict[str, Any]) -> torch.Tensor:
        if "image_tokens" in batch:
            return batch["image_tokens"].long()
        if self.image_tokenizer is None:
            raise RuntimeError(
                "batch has no image_tokens and no image tokenizer is loaded (model.image_tokenizer_ckpt)"
            )
        return self.image_tokenizer.encode(batch["image"]).long()

    def drop_captions(self, text: torch.Tensor) -> torch.Tensor:
        """Replace each caption by all pads with probability ``text_dropout`` (training only)."""
        if self.text_dropout <= 0:
            return text
        drop = torch.rand(text.shape[0], device=text.device) < self.text_dropout
        return torch.where(drop[:, None], torch.full_like(text, self.cfg.pad_id), text)

    # ------------------------------------------------------------------------------------------ training
    def forward_loss(self, batch: dict[str, Any], train: bool) -> dict[str, torch.Tensor]:
        text = self.pad_text(batch["text_tokens"].long())
        if train:
            text = self.drop_captions(text)
        return self.transformer.loss(text, self.image_tokens(batch))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        r = self.forward_loss(batch, train=True)
        self.log_metrics("train", {"loss": r["loss"], "text_loss": r["text_loss"], "image_loss": r["image_loss"]})
        return r["loss"]

    def eval_step(self, batch: dict[str, Any], stage: str) -> None:
        r = self.forward_loss(batch, train=False)
        self.log_metrics(
            stage,
            {"loss": r["loss"], "text_loss": r["text_loss"], "image_loss": r["image_loss"]},
            batch_size=batch["text_tokens"].shape[0],
        )

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The transformer only: the frozen image tokenizer is never optimised."""
        return [p for p in self.transformer.parameters() if p.requires_grad]

    def default_optimizer(self, params) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=3e-4)

    # ------------------------------------------------------------------------------------------ sampling
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.image_tokenizer is None:
            raise RuntimeError("no image tokenizer to decode with (model.image_tokenizer_ckpt)")
        return self.image_tokenizer.decode(tokens).float().clamp(-1, 1)

    @torch.no_grad()
    def generate_tokens(
        self,
        text_tokens: torch.Tensor,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        guidance_scale: float = 1.0,
        prime_tokens: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
        batch_size: int = 64,
    ) -> torch.Tensor:
        """Image tokens (B, h, w) for text tokens (B, text_len), in chunks of ``batch_size``."""
        out = []
        for i in range(0, len(text_tokens), batch_size):
            prime = None if prime_tokens is None else prime_tokens[i : i + batch_size]
            out.append(
                sample_image_tokens(
                    self.transformer,
                    text_tokens[i : i + batch_size],
                    temperature,
                    top_k,
                    top_p,
                    guidance_scale,
                    prime_tokens=prime,
                    generator=generator,
                )
            )
        return torch.cat(out)

    @torch.no_grad()
    def generate(
        self,
        captions: Sequence[str],
        n: int = 1,
        seed: int = 0,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        guidance_scale: float = 1.0,
        prime: Optional[torch.Tensor] = None,
        prime_rows: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        batch_size: int = 64,
    ) -> torch.Tensor:
        """``n`` images per caption -> FloatTensor (len(captions) * n, 3, H, W) in [-1, 1], caption-major.

        ``prime``: images (len(captions), 3, H, W) in [-1, 1] whose top ``prime_rows`` token rows (default half the
        grid) are kept (the paper's image-to-image translation), or LongTensor token rows (len(captions), r, w)."""
        if isinstance(captions, str):
            captions = [captions]
        check_sampling(temperature, top_k, top_p)
        was_training = self.training
        self.eval()
        try:
            text = self.tokenize_text(captions).repeat_interleave(n, 0)  # (B * n, T)
            prime_tokens = None
            if prime is not None:
                if prime.dtype.is_floating_point:
                    rows = prime_rows if prime_rows is not None else self.cfg.grid_h // 2
                    prime = self.image_tokenizer.encode(prime.to(self.device))[:, :rows]
                prime_tokens = prime.long().to(self.device).repeat_interleave(n, 0)
            gen = generator if generator is not None else torch.Generator(device=self.device).manual_seed(int(seed))
            tokens = self.generate_tokens(
                text, temperature, top_k, top_p, guidance_scale, prime_tokens, gen, batch_size
            )
            return torch.cat([self.decode(tokens[i : i + batch_size]) for i in range(0, len(tokens), batch_size)])
        finally:
            self.train(was_training)

    @torch.no_grad()
    def sample_grid(self, batch: dict[str, Any]) -> Optional[torch.Tensor]:
        """Real val image | sampled image for the first ``grid_captions`` val captions (pairs, row-major); None, with
        a warning once, when there is no image tokenizer to decode the codes (trained from zoo-tokenize files alone:
        the grid raised at the first validation and stopped the run)."""
        if self.image_tokenizer is None:
            if not getattr(self, "_warned_no_grid", False):
                self._warned_no_grid = True
                log.warning(
                    "no sample grids: the DALL·E transformer trains from zoo-tokenize codes and has no image "
                    "tokenizer to decode its samples with (fix: model.image_tokenizer_ckpt=<the dvae/vqvae ckpt "
                    "that wrote the codes>, to see samples)"
                )
            return None
        n = min(int(self.hparams.grid_captions), len(batch["caption"]))
        text = self.pad_text(batch["text_tokens"][:n].long().to(self.device))
        gen = torch.Generator(device=self.device).manual_seed(0)
        tokens = self.generate_tokens(
            text, top_k=self.hparams.grid_top_k, guidance_scale=self.hparams.grid_guidance_scale, generator=gen
        )
        fake = self.decode(tokens)
        real = batch["image"][:n].float().to(fake.device)
        if real.shape[-2:] != fake.shape[-2:]:
            real = F.interpolate(real, size=fake.shape[-2:], mode="bilinear", antialias=True)
        return torch.stack([real, fake], 1).flatten(0, 1)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.transformer.parameters())
