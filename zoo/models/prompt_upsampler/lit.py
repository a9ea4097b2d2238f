"""PromptUpsamplerLit (``model=prompt_upsampler``): short prompt -> descriptive caption, with the LM loss.

Training pairs: each training item's ``prompt_style`` caption (default ``short``) and its ``target_style`` caption
(default ``descriptive``), read from the samples' ``captions`` dict. The shapes world gives every style of the same
scene; ``data.synthetic_captions`` (``zoo-recaption`` files) adds its styles to that dict, so the pairs can also be
recaptioned ones (e.g. ``model.target_style=synthetic_descriptive``, or two synthetic styles on COCO). The model
tokenizes both itself with its own BPE, stored in the checkpoint (``text_tokenizer``): on shapes with
``data/tokenizer=bpe``, that BPE refitted on every caption style of the world (the captioner's cache); with another
data tokenizer, that one; without one, a BPE of ``net.vocab_size`` fitted in memory on the training pairs.

Inference: ``upsample(prompts)`` -> one descriptive rewrite per prompt; ``expand(prompt, n)`` -> n samples of one
prompt (nucleus sampling: one short prompt, several plausible scenes). ``decoding`` greedy | beam | nucleus with
``top_p``, ``temperature``, ``beam_width``, ``length_penalty`` as the captioner's. Generators apply it through
``zoo.pipelines.base.PromptUpsampled`` (``generator.prompt_upsampler=<this checkpoint>``).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F

from zoo.errors import ConfigError
from zoo.models.base import ZooLit
from zoo.models.captioner.lit import (
    check_decoding,
    decoding_options,
    item_generators,
    keep_checkpoint_tokenizer,
)
from zoo.models.captioner.model import beam_search, sample_captions
from zoo.models.presets import resolve_preset
from zoo.models.prompt_upsampler.model import PRESETS, PromptUpsampler, PromptUpsamplerConfig
from zoo.text import TextTokenizer

log = logging.getLogger("zoo.prompt_upsampler")


class PromptUpsamplerLit(ZooLit):
    """Args:
    preset: ``tiny`` | ``shapes`` | ``paper`` (``zoo.models.prompt_upsampler.model.PRESETS``); ``net`` overrides
        fields of ``PromptUpsamplerConfig``.
    prompt_style, target_style: the caption styles of a training pair (input, output).
    decoding, beam_width, length_penalty, top_p, temperature: defaults of ``upsample`` (nucleus by default: a
        short prompt has many descriptive expansions).
    text_tokenizer: filled in by the checkpoint (leave None when training).
    """

    def __init__(
        self,
        preset: str = "shapes",
        net: Optional[dict[str, Any]] = None,
        prompt_style: str = "short",
        target_style: str = "descriptive",
        decoding: str = "nucleus",
        beam_width: int = 4,
        length_penalty: float = 1.0,
        top_p: float = 0.9,
        temperature: float = 1.0,
        text_tokenizer: Optional[dict[str, Any]] = None,
        optimizer=None,
        scheduler=None,
    ):
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "text_tokenizer"])
        check_decoding(decoding, beam_width, top_p, temperature, length_penalty=length_penalty)
        self.prompt_style, self.target_style = str(prompt_style), str(target_style)
        self.decoding, self.beam_width, self.length_penalty = decoding, int(beam_width), float(length_penalty)
        self.top_p, self.temperature = float(top_p), float(temperature)
        self.text_tokenizer: Optional[TextTokenizer] = TextTokenizer.from_spec(text_tokenizer)
        self.cfg: PromptUpsamplerConfig = resolve_preset(
            PRESETS, PromptUpsamplerConfig, preset, net, "prompt_upsampler"
        )
        self.net = PromptUpsampler(self.cfg)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        hp = dict(checkpoint.get("hyper_parameters", {}))
        hp["text_tokenizer"] = self.text_tokenizer.to_spec() if self.text_tokenizer is not None else None
        checkpoint["hyper_parameters"] = hp

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        keep_checkpoint_tokenizer(self, checkpoint)  # a resume reads captions as it trained (see there)

    # ------------------------------------------------------------------------------------------ data
    def pair(self, sample: dict[str, Any]) -> tuple[str, str]:
        """(prompt, target) of a sample: its ``captions[style]``, or its ``caption`` when that is the style served."""
        out = []
        for style in (self.prompt_style, self.target_style):
            caps = sample.get("captions") or {}
            if style in caps:
                out.append(caps[style])
            elif sample.get("caption_style") == style:
                out.append(sample["caption"])
            else:
                raise ConfigError(
                    f"a sample has no {style!r} caption: the prompt upsampler trains on (prompt_style, "
                    f"target_style) pairs of the same scene (fix: data=shapes, which gives every style, "
                    f"or model.prompt_style / model.target_style of the styles the data has)"
                )
        return out[0], out[1]

    def check_data(self, datamodule) -> None:
        """Needs training samples carrying both styles (the shapes world, or any map-style data with
        ``data.synthetic_captions`` of both styles). Adapts: takes or fits a tokenizer when the module has none yet
        (see the module doc)."""
        ds = datamodule.dataset("train") if hasattr(datamodule, "dataset") else None
        if ds is None or isinstance(ds, torch.utils.data.IterableDataset):
            raise ConfigError(
                "the prompt upsampler needs a map-style training split with both caption styles (fix: data=shapes)"
            )
        self.pair(ds[0])  # a ConfigError naming the fix when a style is missing
        if self.text_tokenizer is None:
            self.text_tokenizer = self._data_tokenizer(datamodule, ds)
        self._check_tokenizer(self.text_tokenizer)

    def _pair_captions(self, ds) -> Iterable[str]:
        """The prompt and target captions of every training item (shapes world styles: from ``scene``, no
        rendering)."""
        base = getattr(ds, "base", ds)
        from zoo.data.shapes import CAPTION_STYLES

        fast = hasattr(base, "scene") and {self.prompt_style, self.target_style} <= set(CAPTION_STYLES)
        for i in range(len(ds)):
            if fast:
                captions = base.scene(i)[1]
                yield captions[self.prompt_style]
                yield captions[self.target_style]
            else:
                yield from self.pair(ds[i])

    def _data_tokenizer(self, datamodule, ds) -> TextTokenizer:
        tok = getattr(datamodule, "tokenizer", None)
        base = getattr(ds, "base", ds)
        shapes = hasattr(base, "scene")
        if shapes and tok is not None and callable(getattr(tok, "ensure_ready", None)) and hasattr(tok, "path"):
            from zoo.models.captioner.lit import _all_style_captions
            from zoo.text import LazyTrainedBPE

            own = LazyTrainedBPE(tok.path, tok.requested_vocab, tok.context_length)
            key = {**datamodule.data_identity(), "caption_style": "all styles", "caption_mix": None}
            own.ensure_ready(lambda: _all_style_captions(base), fit_key=key)  # the captioner's BPE (same key)
            return own._require()
        if tok is not None:
            if callable(getattr(datamodule, "prepare_tokenizer", None)):
                datamodule.prepare_tokenizer()
            return tok
        from zoo.text import TrainedBPETokenizer

        log.info(
            "prompt_upsampler: fitting a %d-token BPE on the %s and %s captions of %d training scenes",
            self.cfg.vocab_size,
            self.prompt_style,
            self.target_style,
            len(ds),
        )
        return TrainedBPETokenizer.train(
            self._pair_captions(ds), vocab_size=self.cfg.vocab_size, context_length=self.cfg.text_len
        )

    def _check_tokenizer(self, tok: TextTokenizer) -> None:
        c = self.cfg
        if tok.vocab_size > c.vocab_size:
            raise ConfigError(
                f"text tokenizer vocabulary ({tok.vocab_size}) is larger than the upsampler's vocab_size "
                f"({c.vocab_size}) (fix: model.net.vocab_size={tok.vocab_size}, or a smaller "
                f"data.tokenizer.vocab_size)"
            )
        # the targets are cut to text_len (``tokenize``): a longer context lost the [EOT] of every long target, and
        # the upsampler learned rewrites that never end (the prompt, cut to prompt_len, is the same in training
        # and sampling)
        if tok.context_length > c.text_len:
            raise ConfigError(
                f"text tokenizer context_length ({tok.context_length}) is longer than the upsampler's text_len "
                f"({c.text_len}) (fix: model.net.text_len={tok.context_length}, or a shorter "
                f"data.tokenizer.context_length)"
            )
        for name in ("pad_id", "sot_id", "eot_id"):
            if getattr(tok, name) != getattr(c, name):
                raise ConfigError(
                    f"text tokenizer {name} {getattr(tok, name)} != the upsampler's {getattr(c, name)} "
                    f"(fix: model.net.{name}={getattr(tok, name)})"
                )

    # ------------------------------------------------------------------------------------------ batches
    def tokenize(self, texts: Sequence[str], length: int) -> torch.Tensor:
        """Texts -> (B, length) token ids on this module's device, right-padded with pad_id (or cut)."""
        if self.text_tokenizer is None:
            raise RuntimeError("no text tokenizer: train the upsampler first (it is stored in the checkpoint)")
        return self.fit_length(self.text_tokenizer.encode(list(texts)), length)

    def fit_length(self, tokens: torch.Tensor, length: int) -> torch.Tensor:
        """Token ids (B, L) -> (B, length) on this module's device, right-padded with pad_id (or cut)."""
        if tokens.shape[1] < length:
            tokens = F.pad(tokens, (0, length - tokens.shape[1]), value=self.cfg.pad_id)
        return tokens[:, :length].to(self.device)

    def batch_pairs(self, batch: dict[str, Any]) -> tuple[list[str], list[str]]:
        n = len(batch["caption"])
        samples = [
            {
                "caption": batch["caption"][i],
                "captions": (batch.get("captions") or [{}] * n)[i],
                "caption_style": (batch.get("caption_style") or [None] * n)[i],
            }
            for i in range(n)
        ]
        pairs = [self.pair(s) for s in samples]
        return [p for p, _ in pairs], [t for _, t in pairs]

    def forward_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        prompts, targets = self.batch_pairs(batch)
        return self.pair_loss(prompts, targets)

    def pair_loss(self, prompts: Sequence[str], targets: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.net.loss(self.tokenize(prompts, self.cfg.prompt_len), self.tokenize(targets, self.cfg.text_len))

    # ------------------------------------------------------------------------------------------ loops
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        r = self.forward_loss(batch)
        self.log_metrics("train", r, batch_size=len(batch["caption"]))
        return r["loss"]

    def eval_step(self, batch: dict[str, Any], stage: str) -> None:
        r = self.forward_loss(batch)
        r["ppl"] = r["loss"].exp()
        self.log_metrics(stage, r, batch_size=len(batch["caption"]))

    def default_optimizer(self, params) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=3e-4, betas=(0.9, 0.95), weight_decay=0.01)

    # ------------------------------------------------------------------------------------------ upsampling
    @torch.no_grad()
    def upsample(
        self,
        prompts: Sequence[str],
        method: Optional[str] = None,
        seed: int = 0,
        generator: Optional[torch.Generator] = None,
        top_p: Optional[float] = None,
        temperature: Optional[float] = None,
        beam_width: Optional[int] = None,
        length_penalty: Optional[float] = None,
        max_len: Optional[int] = None,
    ) -> list[str]:
        """One descriptive rewrite per prompt (unset options: the module's defaults). Nucleus draws come from
        ``generator``, or prompt i's from its own stream seeded by (``seed``, i): rewrite i is a function of
        (prompt i, i, seed, options), the same whatever the other prompts of the call (``expand(p, 2)`` is the first
        two of ``expand(p, 4)``)."""
        if self.text_tokenizer is None:
            raise RuntimeError("no text tokenizer to decode with (train the upsampler first)")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            return []
        o = decoding_options(self, method, beam_width, length_penalty, top_p, temperature, max_len)
        was_training = self.training
        self.eval()
        try:
            # encoded once, for the model's input and the cut-prompt check (each prompt was encoded twice a call)
            full = self.text_tokenizer.encode(prompts)
            self._warn_cut_prompts(prompts, full)
            tokens = self.fit_length(full, self.cfg.prompt_len)
            n_valid = self.text_tokenizer.vocab_size  # ids past the BPE's have no text
            if o["method"] == "beam":
                bw, lp = int(o["beam_width"]), o["length_penalty"]
                out = beam_search(self.net, tokens, None, bw, lp, max_len, n_valid=n_valid)
            elif o["method"] == "greedy":
                out = sample_captions(self.net, tokens, temperature=0.0, max_len=max_len, n_valid=n_valid)
            else:
                # prompt i's draws from its own (seed, i) stream: a rewrite does not change with the other prompts
                gen = generator if generator is not None else item_generators(seed, range(len(prompts)), self.device)
                out = sample_captions(
                    self.net,
                    tokens,
                    temperature=o["temperature"],
                    top_p=o["top_p"],
                    max_len=max_len,
                    generator=gen,
                    n_valid=n_valid,
                )
            return self.text_tokenizer.decode(out.cpu())
        finally:
            self.train(was_training)

    def _warn_cut_prompts(self, prompts: Sequence[str], full: torch.Tensor) -> None:
        """Prompts longer than ``net.prompt_len`` tokens are cut (their tail and [EOT] lost: a prompt unlike the short
        ones the model trained on, e.g. an already descriptive prompt given to a generator with an upsampler); said
        once per call instead of rewritten from the cut prompt without a word. ``full``: the prompts' token ids."""
        lengths = (full != self.cfg.pad_id).sum(1)
        cut = [i for i, n in enumerate(lengths.tolist()) if n > self.cfg.prompt_len]
        if cut:
            log.warning(
                "prompt upsampler: %d of %d prompts are longer than its net.prompt_len=%d tokens and were cut (the "
                "longest: %d tokens, %r); it rewrites short prompts (its %s captions): give it those, or none",
                len(cut),
                len(prompts),
                self.cfg.prompt_len,
                int(lengths.max()),
                prompts[int(lengths.argmax())][:80],
                self.prompt_style,
            )

    def expand(self, prompt: str, n: int, seed: int = 0, **kwargs) -> list[str]:
        """``n`` sampled rewrites of one prompt (nucleus unless ``method`` says otherwise)."""
        kwargs.setdefault("method", "nucleus")
        return self.upsample([prompt] * int(n), seed=seed, **kwargs)
