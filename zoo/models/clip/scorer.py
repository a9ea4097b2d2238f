"""``ClipScorer``: the one place images and captions are scored with CLIP (reranking, eval's CLIP score, FD_CLIP,
``zoo-embed``). Nothing else re-implements CLIP preprocessing or scoring.

Importable without Lightning. Wraps any ``ClipLike`` (``encode_text(tokens)``, ``encode_image(pixels)``,
``logit_scale``) with its tokenizer and its own preprocessing: images in [-1, 1] of any size are mapped to [0, 1],
resized the way open_clip's own transform does (``resize_mode`` shortest side + centre crop by default; bicubic,
antialiased) to the model's image size, and normalised with its mean/std.

CLIP score convention (name it in every result that uses it): per image-caption pair ``100 * max(cos, 0)`` — the
per-sample clamp of Hessel et al.'s CLIPScore with the scale 100 of torchmetrics' ``CLIPScore`` and DALL·E 3
(torchmetrics clamps after averaging instead; the two agree whenever no pair has a negative cosine). Averaging over
pairs is left to the caller (``clip_score(...).mean()``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F

CLIP_SCORE_CONVENTION = "CLIP score = 100*max(cos,0) per pair (Hessel clamp, torchmetrics/DALL-E 3 scale), averaged"


@runtime_checkable
class ClipLike(Protocol):
    """What ``ClipScorer`` needs from a CLIP model (open_clip's ``CLIP`` is one)."""

    logit_scale: torch.Tensor

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor: ...  # (N, L) -> (N, D)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor: ...  # (N, 3, S, S) normalised -> (N, D)


def clip_fingerprint(model) -> Optional[str]:
    """A short digest (16 hex digits) of a CLIP's weights, or None for a model that is not an ``nn.Module``.

    What is trained on one CLIP's embeddings (unCLIP's priors and decoder) reads another CLIP of the same widths
    without an error and produces nonsense: its vectors live in another space. zoo-embed records this digest of the
    CLIP it embedded with, the modules trained on those files keep it in their checkpoints, and the pipelines compare
    it with the CLIP they are given. Not a path (a CLIP retrained in place keeps its path) and not a hash of the file
    (the same weights in a zoo-train checkpoint and an exported file must agree): the parameter and buffer names,
    shapes, and up to 4,096 evenly strided values of each tensor in float32, so even a ViT-H hashes in milliseconds
    while any training step changes it."""
    import hashlib

    if not isinstance(model, torch.nn.Module):
        return None
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            continue
        flat = t.detach().reshape(-1)
        values = flat[:: max(1, flat.numel() // 4096)][:4096].to(device="cpu", dtype=torch.float32)
        h.update(f"{name}:{tuple(t.shape)};".encode())
        h.update(values.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def trained_scene_resolution(ckpt: str, given: Optional[int] = None) -> int:
    """The resolution to render shapes scenes at for a zoo-train CLIP checkpoint: ``given``, else the data.resolution
    its run trained at (``zoo_config``), else 32. Why: the measurement scripts (scripts/clip_recall.py,
    experiments/clip/binding_probe.py) rendered at a fixed 32, so a CLIP trained on 128 px scenes
    (experiment=unclip/clip_shapes_rn128) was measured on 32 px renders blown up to 128, not on the scenes it learned."""
    if given is not None:
        return int(given)
    from zoo.checkpoint import peek_checkpoint, trained_resolution

    ck = peek_checkpoint(ckpt)
    return trained_resolution(ck.get("zoo_config") if isinstance(ck, dict) else None) or 32


def check_tag_applies(checkpoint: str, tag: str) -> None:
    """``clip.pretrained`` given with ``clip.checkpoint`` alone (no ``clip.arch``) was dropped without a word. The tag
    sets an open_clip model's activation (QuickGELU) and mean/std; with a checkpoint alone it cannot apply: a zoo-train
    CLIP checkpoint runs with the settings it trained with, which it records, and an open_clip weights file needs its
    architecture. A ``ConfigError`` naming the fix, unless the tag is the one the checkpoint records (before any
    weights are read)."""
    from zoo.checkpoint import peek_checkpoint
    from zoo.errors import ConfigError
    from zoo.models.clip.model import refuse_torchscript

    refuse_torchscript(Path(checkpoint))  # OpenAI's original files: that message names the fix
    # open_clip's own formats are no zoo-train checkpoint (torch.load would call a safetensors file corrupt)
    ck = None if Path(checkpoint).suffix in (".safetensors", ".npz", ".npy") else peek_checkpoint(checkpoint)
    hp = ck.get("hyper_parameters") if isinstance(ck, dict) else None
    if isinstance(hp, dict) and "state_dict" in ck:
        own = hp.get("pretrained")
        if own == tag:
            return
        raise ConfigError(
            f"clip.pretrained={tag} does not apply to {checkpoint}: a zoo-train CLIP checkpoint runs with the settings "
            f"it trained with (its pretrained={own or 'none'}), not another tag's activation and mean/std (fix: drop "
            f"clip.pretrained, clip.pretrained=null)"
        )
    raise ConfigError(
        f"clip.pretrained={tag} with clip.checkpoint={checkpoint} needs clip.arch: the file is not a zoo-train CLIP "
        f"checkpoint, and an open_clip weights file is built from its architecture, the tag setting its QuickGELU "
        f"and mean/std (fix: clip.arch=<its architecture, e.g. ViT-B-32> clip.pretrained={tag} "
        f"clip.checkpoint={checkpoint})"
    )


def clip_score_from_cos(cos: torch.Tensor) -> torch.Tensor:
    """Cosine similarities -> CLIP scores under ``CLIP_SCORE_CONVENTION``: ``100 * max(cos, 0)``, elementwise."""
    return 100 * cos.clamp_min(0)


def resize_for_clip(
    x: torch.Tensor, size: int, resize_mode: str = "shortest", interpolation: str = "bicubic", fill: float = 0.0
) -> torch.Tensor:
    """open_clip's eval transform on a tensor batch in [0, 1]: (N, 3, H, W) -> (N, 3, size, size)
    (``zoo.data.transforms.resize_center_crop``: ``shortest`` resize + centre crop, ``longest`` + pad, ``squash``)."""
    from zoo.data.transforms import resize_center_crop

    return resize_center_crop(x, size, resize_mode, interpolation, fill, value_range=(0.0, 1.0))


class ClipScorer:
    """Batched CLIP encoders and scores on [-1, 1] images and strings.

    Args:
        model: a ``ClipLike``.
        tokenizer: ``list[str] -> LongTensor (N, L)`` (open_clip's tokenizer for the model).
        image_size, mean, std: the model's input size and normalisation.
        resize_mode, interpolation: as open_clip's ``preprocess_cfg`` (``shortest``/``longest``/``squash``).
        batch_size: encoder batch size (inputs of any length are split).
    """

    def __init__(
        self,
        model,
        tokenizer: Callable[[Sequence[str]], torch.Tensor],
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: str | torch.device = "cpu",
        batch_size: int = 256,
        resize_mode: str = "shortest",
        interpolation: str = "bicubic",
    ):
        if isinstance(model, torch.nn.Module):
            model = model.eval().to(device)
        self.model = model
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.batch_size = int(batch_size)
        self.resize_mode, self.interpolation = resize_mode, interpolation

    # -- constructors ---------------------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model, tokenizer, device: str | torch.device = "cpu", **kw) -> "ClipScorer":
        """From an open_clip model: its own preprocessing config (size, mean/std, resize mode)."""
        from open_clip.model import get_model_preprocess_cfg

        from zoo.models.clip.model import preprocess_cfg

        size, mean, std = preprocess_cfg(model)
        pp = get_model_preprocess_cfg(model)
        kw.setdefault("resize_mode", pp.get("resize_mode", "shortest"))
        kw.setdefault("interpolation", pp.get("interpolation", "bicubic"))
        return cls(model, tokenizer, size, mean, std, device=device, **kw)

    @classmethod
    def from_open_clip(
        cls,
        arch: str,
        pretrained: Optional[str] = None,
        checkpoint: Optional[str] = None,
        device: str = "cpu",
        net: Optional[dict] = None,
        cache_dir: Optional[str] = None,
        **kw,
    ) -> "ClipScorer":
        """Any open_clip architecture (or zoo config) with an open_clip ``pretrained`` tag and/or a local
        ``checkpoint`` file (open_clip file or zoo-train .ckpt). Raises ``MissingWeightsError`` offline."""
        import open_clip

        from zoo.errors import ConfigError
        from zoo.models.clip.model import PRESETS, ClipConfig, clip_config, create_clip, tokenizer_for

        if open_clip.get_model_config(arch) is None:
            raise ConfigError(
                f"unknown open_clip architecture {arch!r} (clip.arch=...; zoo-train: model.arch=); registered ones "
                f"include {sorted({p.arch for p in PRESETS.values()})} and open_clip.list_models()"
            )
        cfg = clip_config("shapes", arch, net) if net else ClipConfig(arch)
        model = create_clip(cfg, pretrained=pretrained, checkpoint=checkpoint, cache_dir=cache_dir)
        return cls.from_model(model, tokenizer_for(cfg), device=device, **kw)

    @classmethod
    def from_config(cls, c) -> "ClipScorer":
        """From a ``clip`` config node (``zoo-embed``'s and ``zoo-eval``'s; a dict works too): ``checkpoint`` alone is
        a zoo-train CLIP ``.ckpt`` (with ``pretrained`` only the tag it records: ``check_tag_applies``); ``arch`` (+
        ``pretrained`` tag and/or ``checkpoint`` open_clip file, optional ``net`` overrides) is any open_clip model;
        ``device`` (default cpu)."""
        from zoo.errors import ConfigError

        get = c.get
        device = get("device") or "cpu"
        net = dict(get("net") or {}) or None
        if get("checkpoint") and not get("arch"):
            if get("pretrained"):
                check_tag_applies(str(get("checkpoint")), str(get("pretrained")))
            # an open_clip weights file here needs clip.arch (create_clip's own advice names zoo-train's model.arch)
            checkpoint = str(get("checkpoint"))
            arch_fix = f"clip.arch=<its architecture, e.g. ViT-B-32> clip.checkpoint={checkpoint}"
            return cls.from_lightning_checkpoint(checkpoint, device=device, net=net, arch_fix=arch_fix)
        if get("arch"):
            return cls.from_open_clip(
                str(get("arch")), pretrained=get("pretrained"), checkpoint=get("checkpoint"), device=device, net=net
            )
        raise ConfigError(
            "no CLIP given (fix: clip.checkpoint=/path/to/clip.ckpt from zoo-train model=clip, or "
            "clip.arch=ViT-B-32 clip.pretrained=openai, or clip.arch=<arch> clip.checkpoint=<open_clip "
            "file>)"
        )

    @classmethod
    def from_lightning_checkpoint(
        cls, path: str, device: str = "cpu", net: Optional[dict] = None, arch_fix: Optional[str] = None, **kw
    ) -> "ClipScorer":
        """A checkpoint written by ``zoo-train model=clip`` (weights_only load; preset/arch/net read from its
        hyper-parameters; the ``pretrained`` tag it started from only sets the preprocessing, nothing downloads).
        ``net``: open_clip config overrides merged over the checkpoint's own (``clip.net``, e.g. another image size
        on the same weights); it was dropped without a word, and zoo-eval keyed its cache by it all the same.
        ``arch_fix``: the caller's options that load a file recording no settings (an open_clip weights file) as the
        architecture it is, named in the error when it does not load as the default CLIP (``clip.arch=...`` for
        ``ClipScorer.from_config``); without it, the fix named is a zoo-train CLIP checkpoint."""
        import open_clip

        from zoo.checkpoint import safe_load
        from zoo.errors import ConfigError
        from zoo.models.clip.model import clip_config, create_clip, deep_merge, refuse_torchscript, tokenizer_for
        from zoo.registry import check_plain, component_in, data_file_kind

        refuse_torchscript(Path(path))  # an OpenAI CLIP file: was "truncated or corrupt"
        ckpt = safe_load(path)
        if not isinstance(ckpt, dict):
            raise ConfigError(f"{path} is not a Lightning checkpoint (fix: a zoo-train model=clip last.ckpt)")
        made_by = data_file_kind(ckpt)
        if made_by and "state_dict" not in ckpt:  # read as CLIP weights: "98 missing keys ... fix: model.arch="
            raise ConfigError(
                f"{path} is a {made_by} output (it holds {sorted(map(str, ckpt))[:4]}), not a CLIP checkpoint "
                f"(fix: a zoo-train model=clip checkpoint, e.g. <run dir>/checkpoints/last.ckpt)"
            )
        # The class is fixed here (CLIP), so an unstamped Lightning checkpoint is fine; a stamp must say clip.
        stamped = "zoo_component" in ckpt or "zoo_class" in ckpt
        if stamped and component_in(ckpt, str(path)) != "clip":
            raise ConfigError(f"{path} is not a CLIP checkpoint (fix: a zoo-train model=clip last.ckpt)")
        hp = ckpt.get("hyper_parameters", {}) or {}
        check_plain(hp, f"{path}: hyper_parameters")
        cfg = clip_config(hp.get("preset") or "shapes", hp.get("arch"), deep_merge(hp.get("net") or {}, net or {}))
        tag = hp.get("pretrained")
        if tag and ("/" in tag or "\\" in tag or Path(tag).exists()):
            tag = None  # a path, not a tag: the weights are this file's own, never another file the file names
        if tag and not open_clip.get_pretrained_cfg(cfg.arch, tag):
            tag = None  # a tag unknown to open_clip set no preprocessing in training either (older checkpoints)
        try:
            model = create_clip(cfg, pretrained=tag, checkpoint=path)
        except ConfigError as e:
            if hp:
                raise
            # No hyper-parameters: no zoo-train CLIP (whose settings say how to build it) but bare weights, read as
            # the default shapes CLIP. create_clip's "fix: model.arch=" is zoo-train's option, not the user's
            fix = arch_fix or "a zoo-train model=clip checkpoint, e.g. <run dir>/checkpoints/last.ckpt"
            problem = str(e).split(" (fix:")[0]
            raise ConfigError(
                f"{problem}; it records no CLIP settings (no hyper_parameters: not a zoo-train model=clip checkpoint, "
                f"an open_clip weights file perhaps), and an open_clip file is built from its architecture (fix: {fix})"
            ) from e
        return cls.from_model(model, tokenizer_for(cfg), device=device, **kw)

    @property
    def fingerprint(self) -> Optional[str]:
        """``clip_fingerprint`` of the model (computed once: a scorer's CLIP is frozen)."""
        if not hasattr(self, "_fingerprint"):
            self._fingerprint = clip_fingerprint(self.model)
        return self._fingerprint

    @property
    def logit_scale(self) -> float:
        """exp(learned temperature parameter): the scale CLIP multiplies cosines by (GLIDE's CLIP score uses it)."""
        return float(self.model.logit_scale.exp())

    # -- encoders ---------------------------------------------------------------------------------------------
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] (N, 3, H, W) any size -> the model's normalised input (N, 3, S, S)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (N, 3, H, W) in [-1, 1], got {tuple(images.shape)}")
        x = images.to(self.device, torch.float32).add(1).div(2)  # no clamp: callers pass images in [-1, 1]
        x = resize_for_clip(x, self.image_size, self.resize_mode, self.interpolation)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (N, 3, H, W) -> L2-normalised float embeddings (N, D)."""
        out = [
            self.model.encode_image(self.preprocess(images[i : i + self.batch_size])).float()
            for i in range(0, len(images), self.batch_size)
        ]
        return F.normalize(torch.cat(out), dim=-1)

    def tokenize(self, captions: Sequence[str]) -> torch.Tensor:
        """open_clip token ids (N, context_length) of the model's own tokenizer."""
        if isinstance(captions, str):
            raise TypeError("pass a list of captions, not a single string")
        return self.tokenizer(list(captions))

    @torch.no_grad()
    def encode_text(self, captions: Sequence[str]) -> torch.Tensor:
        """Captions -> L2-normalised float embeddings (N, D)."""
        captions = list(captions) if not isinstance(captions, str) else [captions]
        out = [
            self.model.encode_text(self.tokenize(captions[i : i + self.batch_size]).to(self.device)).float()
            for i in range(0, len(captions), self.batch_size)
        ]
        return F.normalize(torch.cat(out), dim=-1)

    # -- scores ------------------------------------------------------------------------------------------------
    def similarity(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        """Cosine similarity matrix (N_images, N_captions)."""
        return self.encode_image(images) @ self.encode_text(captions).t()

    def clip_score(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        """Per-pair CLIP score ``100 * max(cos(image_i, caption_i), 0)`` -> (N,) (see ``CLIP_SCORE_CONVENTION``)."""
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images but {len(captions)} captions: clip_score scores pairs")
        cos = (self.encode_image(images) * self.encode_text(captions)).sum(-1)
        return clip_score_from_cos(cos)

    def rerank(self, images: torch.Tensor, caption: str, top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """DALL·E-style reranking: keep the ``top_k`` of N candidates most similar to ``caption``.

        Returns (images (k, 3, H, W), cosine scores (k,), indices (k,)), best first."""
        if not isinstance(caption, str):
            raise TypeError("rerank takes one caption; use rerank_batched for several")
        scores = self.similarity(images, [caption])[:, 0]
        k = min(int(top_k), len(images))
        best_scores, best = torch.topk(scores, k)
        return images[best.to(images.device)], best_scores, best

    def rerank_batched(
        self, images: torch.Tensor, captions: Sequence[str], top_k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Several captions, each with its own N candidates: images (B, N, 3, H, W), B captions ->
        (images (B, k, 3, H, W), scores (B, k), indices (B, k)), best first per caption."""
        if images.dim() != 5 or len(images) != len(captions):
            raise ValueError(
                f"expected images (B, N, 3, H, W) for B={len(captions)} captions, got {tuple(images.shape)}"
            )
        b, n = images.shape[:2]
        img = self.encode_image(images.flatten(0, 1)).view(b, n, -1)  # (B, N, D)
        txt = self.encode_text(captions)  # (B, D)
        scores = torch.einsum("bnd,bd->bn", img, txt)
        k = min(int(top_k), n)
        best_scores, best = torch.topk(scores, k, dim=1)
        picked = torch.gather(images, 1, best.to(images.device).view(b, k, 1, 1, 1).expand(-1, -1, *images.shape[2:]))
        return picked, best_scores, best
