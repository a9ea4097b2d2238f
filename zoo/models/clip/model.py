"""CLIP networks from open_clip (plain PyTorch, no Lightning).

Architectures are open_clip model configs, addressed by name. Small configs for small images live in
``configs/*.json`` beside this file and are registered with open_clip at import, so
``open_clip.create_model("zoo-clip-shapes")`` works like any built-in architecture:

=====================  =====  =====  ===============  ===============  =========  =======
name                   image  patch  vision w x L     text w x L       context    embed
=====================  =====  =====  ===============  ===============  =========  =======
``zoo-clip-tiny``      32     8      64 x 2           64 x 2           32         32
``zoo-clip-shapes``    32     4      128 x 4          128 x 3          48         128
``zoo-clip-shapes64``  64     8      128 x 4          128 x 3          48         128
``zoo-clip-shapes-rn`` 32     -      ResNet 1-1-1-1   128 x 3          48         128
                                     width 16
=====================  =====  =====  ===============  ===============  =========  =======

``zoo-clip-shapes-rn`` swaps the ViT image tower for open_clip's ModifiedResNet (CLIP's RN towers: a 3-conv stem,
four residual stages, attention pooling), width 16, 1.36M image-tower parameters. Why: the ViT tower hardly learns
shape on this world. Trained with shape labels directly (300 steps of 128 single-object scenes, one thread), the
ViT reaches 0.58 test accuracy; the ResNet reaches 0.87, and runs its steps about 7x faster
(``experiments/clip/README.md``).

Presets (``model.preset=``): ``tiny`` (tests), ``shapes`` (32 px shapes world, ~10 CPU minutes), ``shapes_rn``
(the same with the ResNet image tower; what ``make demo`` trains), ``shapes_rn128`` (that network on 128 px scenes:
the upsamplers' FD_CLIP) and ``paper``
(``ViT-H-14``, the CLIP unCLIP conditions on; build it on the meta device to count parameters, see
``count_parameters``). ``net`` overrides are open_clip model-config keys, deep-merged into the architecture's
config: ``{"embed_dim": 64, "vision_cfg": {"width": 128}, "text_cfg": {"layers": 2}}``; ``net.arch`` swaps the
architecture.

Weights come from (in order): ``checkpoint`` — a local open_clip file (.pt/.bin/.pth/.safetensors/.npz) or a
Lightning checkpoint trained here — or ``pretrained`` — an open_clip tag, read from open_clip's cache and downloaded
only where there is internet. Offline without the file, one ``MissingWeightsError`` names the option and the file.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import open_clip
import torch

from zoo.errors import ConfigError, MissingWeightsError, raise_all
from zoo.models.presets import kind_problems, resolve_preset

CONFIG_DIR = Path(__file__).parent / "configs"
open_clip.add_model_config(CONFIG_DIR)


@dataclass(frozen=True)
class ClipConfig:
    """An open_clip architecture name plus model-config overrides (deep-merged into its JSON config)."""

    arch: str
    overrides: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, ClipConfig] = {
    "tiny": ClipConfig("zoo-clip-tiny"),
    "shapes": ClipConfig("zoo-clip-shapes"),
    "shapes_rn": ClipConfig("zoo-clip-shapes-rn"),
    # the same network reading 128 px scenes (data.resolution=128): its ResNet ends on a 4 x 4 map instead of 1 x 1.
    # An instrument for 128 px images (FD_CLIP of upsampled images, eval.upsampler), where the 32 px CLIP shrinks
    # every image back to 32 px and cannot tell bicubic's blur from a sharp edge.
    "shapes_rn128": ClipConfig("zoo-clip-shapes-rn", {"vision_cfg": {"image_size": 128}}),
    # unCLIP's CLIP as the paper gives it: ViT-H/16 at 256 px (width 1280, 32 blocks; text width 1024, 24 blocks).
    # No weights of it were released; the nearest public ones are open_clip's ViT-H-14 (patch 14, 224 px):
    # model.arch=ViT-H-14 model.pretrained=laion2b_s32b_b79k.
    "paper": ClipConfig("ViT-H-16", {"vision_cfg": {"image_size": 256}}),
}


def _tower_keys(name: str) -> set[str]:
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    cls = CLIPVisionCfg if name == "vision_cfg" else CLIPTextCfg
    return {f.name for f in dataclasses.fields(cls)}


def _top_keys() -> set[str]:
    import inspect

    from open_clip.model import CLIP

    return set(inspect.signature(CLIP.__init__).parameters) - {"self", "cast_dtype"}


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def validate_overrides(arch: str, overrides: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the valid keys when ``overrides`` has a key open_clip's config does not take."""
    base = open_clip.get_model_config(arch) or {}
    top = _top_keys() | set(base)
    for k, v in overrides.items():
        if k not in top:
            raise ValueError(f"unknown CLIP net key {k!r} for {arch}; valid keys: {sorted(top)} (model.net.<key>=...)")
        if k in ("vision_cfg", "text_cfg"):
            if not isinstance(v, dict):
                raise ValueError(f"model.net.{k} must be a mapping of {k} keys, got {v!r}")
            valid = _tower_keys(k) | set(base.get(k, {}))
            bad = sorted(set(v) - valid)
            if bad:
                raise ValueError(f"unknown CLIP net.{k} key(s) {bad}; valid keys: {sorted(valid)}")
    check_override_kinds(base, overrides)


def check_override_kinds(base: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Each override is of the kind open_clip's config annotates (``zoo.models.presets.kind_problems``), else one
    ConfigError naming ``model.net.<key>`` with the architecture's value as the fix: ``embed_dim=8.5``,
    ``vision_cfg.width=true`` or ``text_cfg.layers=2.5`` failed inside torch while the CLIP was built, a word for a
    flag (``quick_gelu=no``) was truthy."""
    import typing

    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    top = {k: v for k, v in overrides.items() if k not in ("vision_cfg", "text_cfg")}
    problems = kind_problems(typing.get_type_hints(CLIP.__init__), top, base, "model.net")
    for key, cls in (("vision_cfg", CLIPVisionCfg), ("text_cfg", CLIPTextCfg)):
        defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        examples = {**defaults, **base.get(key, {})}
        problems += kind_problems(typing.get_type_hints(cls), overrides.get(key, {}), examples, f"model.net.{key}")
    raise_all(problems, "the model.net overrides and open_clip's config")


def clip_config(
    preset: Optional[str] = "shapes", arch: Optional[str] = None, net: Optional[dict[str, Any]] = None
) -> ClipConfig:
    """``resolve_preset(PRESETS, ...)`` then CLIP's own overrides: ``arch`` (any open_clip architecture) and ``net``
    (open_clip model-config keys, deep-merged and validated against open_clip's config, not dataclass fields)."""
    cfg = resolve_preset(PRESETS, ClipConfig, preset, None, "CLIP")
    net = dict(net or {})
    arch = net.pop("arch", None) or arch
    if arch:
        if open_clip.get_model_config(arch) is None:
            raise ValueError(
                f"unknown open_clip architecture {arch!r} (model.arch=...); registered ones include "
                f"{sorted(p.arch for p in PRESETS.values())} and open_clip.list_models()"
            )
        cfg = dataclasses.replace(cfg, arch=arch, overrides={})
    validate_overrides(cfg.arch, net)
    return dataclasses.replace(cfg, overrides=deep_merge(cfg.overrides, net))


def arch_for(preset: Optional[str], arch: Optional[str]) -> str:
    """Architecture name for a preset (or ``arch`` itself when given)."""
    return clip_config(preset or "shapes", arch).arch


def model_config(cfg: ClipConfig) -> dict[str, Any]:
    """The full open_clip model config (architecture JSON with the overrides merged in)."""
    base = open_clip.get_model_config(cfg.arch)
    if base is None:
        raise ValueError(f"unknown open_clip architecture {cfg.arch!r}")
    return deep_merge(base, cfg.overrides)


def tokenizer_for(cfg: ClipConfig):
    """open_clip's own tokenizer for the architecture (CLIP BPE for the zoo configs; ships in the wheel)."""
    ctx = model_config(cfg)["text_cfg"].get("context_length")
    return open_clip.get_tokenizer(cfg.arch, context_length=ctx)


def count_parameters(cfg: ClipConfig) -> int:
    """Number of parameters, built on the meta device (no memory; works for ``paper``'s ViT-H-14)."""
    from open_clip.model import CLIP, CustomTextCLIP

    full = model_config(cfg)
    cls = CustomTextCLIP if full.pop("custom_text", False) else CLIP
    with torch.device("meta"):
        model = cls(**full)
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------ weights
def clip_state_dict(obj: Any, model: Optional[torch.nn.Module] = None) -> dict[str, torch.Tensor]:
    """open_clip weights from a raw state dict, an open_clip training checkpoint (``{"state_dict": ...}``) or a
    Lightning checkpoint (keys prefixed by the attribute holding the network: ``clip.``, ``net.`` or ``model.``;
    DDP's ``module.`` too). With ``model`` given, the prefix that matches most of its keys is stripped."""
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(sd, dict):
        raise ValueError(f"not a state dict (got {type(sd).__name__})")
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    prefixes = ("", "clip.", "net.", "model.", "module.", "clip.module.", "model.module.")
    target = set(model.state_dict()) if model is not None else {"logit_scale"}

    def strip(p: str) -> dict[str, torch.Tensor]:
        return {k[len(p) :]: v for k, v in sd.items() if k.startswith(p)}

    return max((strip(p) for p in prefixes), key=lambda d: len(target & set(d)))


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from zoo.checkpoint import safe_load

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    return safe_load(path)  # weights_only=True; refuses pickled code


def refuse_torchscript(path: Path) -> None:
    """A ConfigError when ``path`` is a TorchScript archive. OpenAI's released CLIP files (ViT-B-32.pt from
    openaipublic, the `clip` package's ~/.cache/clip) are saved programs: weights_only refuses them (reading them runs
    their code), which safe_load reported as a truncated or corrupt file with "use another checkpoint (e.g. the run's
    last.ckpt)", the wrong fix for a sound file."""
    from zoo.convert import is_torchscript_archive

    if is_torchscript_archive(path):
        raise ConfigError(
            f"{path} is a TorchScript archive (a saved program, as OpenAI's original CLIP files are), not a state "
            f"dict: refused, only weights are read (no code in a file runs). Fix: for a file you trust, save its "
            f"weights once in open_clip's layout: python -c \"import torch, open_clip; torch.save(open_clip."
            f"load_openai_model('{path}', device='cpu').state_dict(), '{path.stem}_state_dict.pt')\", then pass "
            f"{path.stem}_state_dict.pt as model.checkpoint= (zoo-train) / clip.checkpoint= (zoo-embed, zoo-eval) "
            f"with model.arch= / clip.arch=<its architecture, e.g. ViT-B-32> and model.pretrained=openai / "
            f"clip.pretrained=openai (its QuickGELU and preprocessing); or use the pretrained=openai tag alone"
        )


def load_weights_file(model: torch.nn.Module, path: str | os.PathLike, arch: str = "?") -> torch.nn.Module:
    """Load a local file into ``model`` (strict), with open_clip's usual format fix-ups."""
    from open_clip.factory import (
        convert_state_dict,
        convert_to_custom_text_state_dict,
        resize_pos_embed,
        resize_text_pos_embed,
    )

    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(
            f"CLIP checkpoint not found: {path} (option: model.checkpoint=/path/to/file.pt in zoo-train, "
            f"clip.checkpoint= in zoo-embed / zoo-eval — an open_clip .pt/.bin/.safetensors or a zoo-train .ckpt)"
        )
    if path.suffix in (".npz", ".npy"):  # big_vision (SigLIP) weights; numpy loads without pickles
        from open_clip.convert import load_big_vision_weights

        load_big_vision_weights(model, str(path))
        return model
    refuse_torchscript(path)
    raw = _read_weights(path)
    sd = clip_state_dict(raw, model)
    try:
        sd = convert_state_dict(model, sd)
        if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
            sd = convert_to_custom_text_state_dict(sd)
        if "logit_scale" in sd and model.logit_scale.ndim != sd["logit_scale"].ndim:
            sd["logit_scale"] = sd["logit_scale"].reshape(model.logit_scale.shape)
        resize_pos_embed(sd, model)
        resize_text_pos_embed(sd, model)
        missing, unexpected = model.load_state_dict(sd, strict=False)
        problem = (
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    except (AssertionError, RuntimeError, ValueError, KeyError) as e:  # shape mismatches
        missing, unexpected, problem = [None], [], f"{type(e).__name__}: {str(e)[:300]}"
    if missing or unexpected:
        component = raw.get("zoo_component") if isinstance(raw, dict) else None
        if not set(sd) & set(model.state_dict()):  # not a CLIP of another architecture: no CLIP weights at all
            what = f"a zoo-train {component!r} checkpoint" if component else "a file without CLIP weights"
            raise ConfigError(
                f"{path} is {what}, not CLIP weights: none of its {len(sd)} tensors is a {arch} weight (e.g. "
                f"{sorted(sd)[:3]}) (fix: model.checkpoint= / clip.checkpoint= a zoo-train model=clip .ckpt or an "
                f"open_clip .pt/.bin/.safetensors file)"
            )
        raise ConfigError(
            f"{path} does not fit CLIP architecture {arch!r}: {problem} (fix: model.arch= / model.net= to the ones "
            f"it was trained with)"
        )
    return model


def _env_offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "ZOO_OFFLINE")
    )


def _reachable(tag_cfg: dict, timeout: float = 3.0) -> None:
    """Raise ``OSError`` at once when the weights' host cannot be reached (instead of the hub's minute of retries)."""
    import socket
    from urllib.parse import urlparse

    if tag_cfg.get("hf_hub"):
        url = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    else:
        url = tag_cfg.get("url", "")
    host = urlparse(url).hostname
    if host and not any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        port = urlparse(url).port or (443 if url.startswith("https") else 80)
        socket.create_connection((host, port), timeout=timeout).close()


@contextlib.contextmanager
def _hf_offline(on: bool = True) -> Iterator[None]:
    """huggingface_hub reads HF_HUB_OFFLINE once at import; flip its constant for the duration."""
    try:
        import huggingface_hub.constants as hfc
    except ImportError:
        yield
        return
    old = hfc.HF_HUB_OFFLINE
    hfc.HF_HUB_OFFLINE = on or old
    try:
        yield
    finally:
        hfc.HF_HUB_OFFLINE = old


def _missing_pretrained(arch: str, tag: str, tag_cfg: dict, cache_dir: Optional[str], err: BaseException):
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

        repo, fname = os.path.split(hub)  # "org/name/" -> default file names; "org/name/file.bin" -> that file
        files = fname or f"{HF_SAFE_WEIGHTS_NAME} (or {HF_WEIGHTS_NAME})"
        try:
            import huggingface_hub.constants as hfc

            cache = cache_dir or hfc.HF_HUB_CACHE
        except ImportError:
            cache = cache_dir or "~/.cache/huggingface/hub"
        where = f"HF hub repo {repo!r}, file {files}, in the cache {cache}"
        fname = fname or HF_SAFE_WEIGHTS_NAME
    else:
        url = tag_cfg.get("url", "")
        fname = os.path.basename(url)
        where = f"{fname} from {url}, in {cache_dir or os.path.expanduser('~/.cache/clip')}"
    return MissingWeightsError(
        f"pretrained CLIP weights {arch} / {tag!r} are not on this machine and cannot be downloaded here "
        f"({type(err).__name__}: {str(err)[:160]}). Expected: {where}. Fix: download it once where there is internet "
        f"and pass the file with model.checkpoint=/path/to/{fname} in zoo-train (keep model.pretrained={tag} for its "
        f"preprocessing), clip.checkpoint=/path/to/{fname} (keep clip.pretrained={tag}) in zoo-embed / zoo-eval, "
        f"or put it into that cache."
    )


class _QuietRandomInit(logging.Filter):
    """open_clip warns "No pretrained weights loaded" on every random-init build; we load weights ourselves."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")


def _build(cfg: ClipConfig, preprocess: Optional[dict[str, Any]]) -> torch.nn.Module:
    full = model_config(cfg)
    kwargs = {k: full[k] for k in cfg.overrides}  # shallow-update keys get the deep-merged values
    quiet = _QuietRandomInit()
    logging.getLogger().addFilter(quiet)
    try:
        # open_clip moves the model to its ``device`` argument (cpu by default): the default device instead, so a
        # build under ``with torch.device("meta")`` (zoo-train's memory check, parameter counts) stays there
        return open_clip.create_model(
            cfg.arch, pretrained=None, force_preprocess_cfg=preprocess, device=torch.get_default_device(), **kwargs
        )
    finally:
        logging.getLogger().removeFilter(quiet)


# Tower fields that make open_clip fetch a tower's own pretrained weights while it builds (timm / Hugging Face).
_TOWER_DOWNLOADS = (("vision_cfg", "timm_model_pretrained"), ("text_cfg", "hf_model_pretrained"))


def _no_tower_downloads(cfg: ClipConfig) -> ClipConfig:
    """``cfg`` with the towers' pretrained downloads off, for a build whose weights all come from elsewhere (a
    state dict, a checkpoint file, a tag). A CLIP checkpoint's stored ``net`` with ``timm_model_pretrained: true``
    otherwise sent every rebuild (load_module, ClipScorer.from_lightning_checkpoint) to the Hugging Face hub for the
    repository the file names, to fetch and load weights the state dict then replaced: offline, a traceback."""
    full = model_config(cfg)
    off = {tower: {key: False} for tower, key in _TOWER_DOWNLOADS if (full.get(tower) or {}).get(key)}
    return dataclasses.replace(cfg, overrides=deep_merge(cfg.overrides, off)) if off else cfg


def _settings(model: torch.nn.Module) -> dict[str, Any]:
    """What a CLIP network does that its weights do not say: the activation and the image preprocessing."""
    from open_clip.model import get_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg

    pp = {**dataclasses.asdict(PreprocessCfg()), **get_model_preprocess_cfg(model)}
    quick = any(isinstance(m, open_clip.transformer.QuickGELU) for m in model.modules())
    return {"quick_gelu": quick, **{k: tuple(pp[k]) if isinstance(pp[k], list) else pp[k] for k in _PREPROCESS}}


_PREPROCESS = ("mean", "std", "interpolation", "resize_mode")


def check_trained_settings(model: torch.nn.Module, checkpoint: str | os.PathLike) -> None:
    """A zoo-train CLIP checkpoint loaded into ``model`` (``model.checkpoint=`` in zoo-train, ``clip.arch=`` +
    ``clip.checkpoint=`` in zoo-embed / zoo-eval) must run with the activation and preprocessing it trained with:
    those come from its hyper-parameters (the ``pretrained`` tag it started from, ``net.quick_gelu``, a
    ``-quickgelu`` architecture), not from its weights, so a CLIP fine-tuned from ``pretrained=openai`` (or converted
    by zoo-convert with it) and loaded as plain ``ViT-B-32`` ran GELU instead of QuickGELU without a word. Refused with
    the fix; other files (open_clip's) are not checked: they record no settings."""
    hp = _zoo_clip_hyper_parameters(checkpoint)
    if hp is None:
        return
    try:
        trained_cfg = clip_config(hp.get("preset") or "shapes", hp.get("arch"), hp.get("net"))
    except (ConfigError, ValueError):
        return  # the load itself names what does not fit
    tag = hp.get("pretrained")
    if not isinstance(tag, str) or not open_clip.get_pretrained_cfg(trained_cfg.arch, tag):
        tag = None  # a file path or an unknown tag set nothing in training either (as from_lightning_checkpoint)
    with torch.device("meta"):
        trained = _settings(create_clip(trained_cfg, pretrained=tag, load_weights=False))
    built = _settings(model)
    differ = [k for k in trained if trained[k] != built[k]]
    if differ:
        shown = ", ".join(f"{k} {trained[k]} (here {built[k]})" for k in differ)
        raise ConfigError(
            f"{checkpoint} is a CLIP trained with {shown}: settings its weights do not carry, from its "
            f"pretrained={tag} / arch={trained_cfg.arch} / net={dict(hp.get('net') or {})}. Fix: zoo-embed / zoo-eval: "
            f"clip.checkpoint={checkpoint} alone (clip.arch=null: the checkpoint's own settings); zoo-train: the "
            f"model.arch / model.pretrained / model.net it was trained with"
            + (f" (model.pretrained={tag})" if tag else "")
        )


def _zoo_clip_hyper_parameters(path: str | os.PathLike) -> Optional[dict[str, Any]]:
    """The hyper-parameters of a zoo-train CLIP checkpoint (memory-mapped: no weights read), else None."""
    p = Path(path)
    if p.suffix in (".safetensors", ".npz", ".npy") or not p.is_file():
        return None
    try:
        # not zoo.checkpoint.peek_checkpoint: this runs on every CLIP file loaded, open_clip's released ones too (they
        # record no settings), and peek reads a legacy (non-zip) file whole, a second read of its GBs for nothing;
        # zoo-train writes zip files, which both map
        ck = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001  (a legacy or unreadable file: the load names the problem)
        return None
    hp = ck.get("hyper_parameters") if isinstance(ck, dict) else None
    if not isinstance(hp, dict) or ck.get("zoo_component", "clip") != "clip" or not {"preset", "arch"} & set(hp):
        return None
    return hp


def create_clip(
    cfg: ClipConfig | str,
    pretrained: Optional[str] = None,
    checkpoint: Optional[str] = None,
    cache_dir: Optional[str] = None,
    load_weights: bool = True,
    **overrides,
) -> torch.nn.Module:
    """Build the architecture, then load ``checkpoint`` (local file) or the ``pretrained`` tag's weights.

    A known ``pretrained`` tag also sets the preprocessing (mean/std/resize) and QuickGELU the weights were trained
    with — also when the weights themselves come from ``checkpoint``. The tag is looked up in the cache first with
    the hub offline; only if that fails and the environment is not offline (``HF_HUB_OFFLINE`` / ``ZOO_OFFLINE``)
    is it downloaded. ``load_weights=False`` builds the same network (tag preprocessing included) without
    reading any weights (used when a state dict follows, e.g. rebuilding from a zoo-train checkpoint).
    """
    if isinstance(cfg, str):
        cfg = ClipConfig(cfg)
    if overrides:
        validate_overrides(cfg.arch, overrides)
        cfg = dataclasses.replace(cfg, overrides=deep_merge(cfg.overrides, overrides))
    tag_cfg: dict[str, Any] = {}
    if pretrained:
        tag_cfg = open_clip.get_pretrained_cfg(cfg.arch, pretrained) or {}
        if not tag_cfg and not checkpoint and load_weights:
            if Path(pretrained).is_file():
                checkpoint, pretrained = pretrained, None
            else:
                raise ConfigError(
                    f"unknown open_clip pretrained tag {pretrained!r} for {cfg.arch} (fix: one of "
                    f"{open_clip.list_pretrained_tags_by_model(cfg.arch)}, or model.checkpoint=/path/to/file in zoo-train, "
                    f"clip.checkpoint= in zoo-embed / zoo-eval)"
                )
        elif not tag_cfg and load_weights:  # with a checkpoint the tag sets only the preprocessing: a typo there
            raise ConfigError(  # would silently normalise images with the default mean/std instead
                f"unknown open_clip pretrained tag {pretrained!r} for {cfg.arch}; beside a checkpoint it sets "
                f"the preprocessing the weights were trained with (fix: one of "
                f"{open_clip.list_pretrained_tags_by_model(cfg.arch)}, or no model.pretrained / clip.pretrained)"
            )
        if tag_cfg.get("quick_gelu") and "quick_gelu" not in cfg.overrides:
            cfg = dataclasses.replace(cfg, overrides={**cfg.overrides, "quick_gelu": True})
    preprocess = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg} or None
    if not load_weights or checkpoint or tag_cfg:
        cfg = _no_tower_downloads(cfg)
    model = _build(cfg, preprocess)
    if not load_weights:
        return model
    if checkpoint:
        check_trained_settings(model, checkpoint)
        return load_weights_file(model, checkpoint, cfg.arch)
    if pretrained:
        from open_clip.pretrained import download_pretrained

        try:
            with _hf_offline(True):  # cache only: fast, never touches the network
                path = download_pretrained(tag_cfg, cache_dir=cache_dir) if tag_cfg.get("hf_hub") else ""
            if not path and tag_cfg.get("url"):
                cached = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(tag_cfg["url"])
                path = str(cached) if cached.is_file() else ""
            if not path:
                raise FileNotFoundError("not in the local cache")
        except Exception as offline_err:  # noqa: BLE001  (not cached)
            if _env_offline():
                raise _missing_pretrained(cfg.arch, pretrained, tag_cfg, cache_dir, offline_err) from None
            try:
                _reachable(tag_cfg)
                path = download_pretrained(tag_cfg, cache_dir=cache_dir)
            except Exception as e:  # noqa: BLE001  (no internet, hub down, ...)
                raise _missing_pretrained(cfg.arch, pretrained, tag_cfg, cache_dir, e) from None
        from open_clip.factory import load_checkpoint

        load_checkpoint(model, path, strict=True, weights_only=True)
    return model


def preprocess_cfg(model: torch.nn.Module) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(image_size, mean, std) the visual tower expects (from open_clip's ``preprocess_cfg``)."""
    from open_clip.model import get_model_preprocess_cfg

    pp = get_model_preprocess_cfg(model)
    size = pp.get("size", getattr(model.visual, "image_size", 224))
    size = size[0] if isinstance(size, (tuple, list)) else size
    mean = pp.get("mean") or open_clip.OPENAI_DATASET_MEAN
    std = pp.get("std") or open_clip.OPENAI_DATASET_STD
    return int(size), tuple(float(m) for m in mean), tuple(float(s) for s in std)


def text_token_encodings(model, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token outputs of an open_clip model's text tower: token ids (N, L) -> (encodings (N, L, W) float32,
    mask (N, L) bool, True up to and including the end-of-text token (the arg-max id, as open_clip pools)).

    ``encode_text`` without its pooling and projection: token embedding + positional embedding + transformer +
    ln_final (``CLIP``), or the same pieces of ``model.text`` (``CustomTextCLIP``'s ``TextTransformer``)."""
    if hasattr(model, "token_embedding") and hasattr(model, "ln_final"):  # open_clip.CLIP
        cast = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(cast) + model.positional_embedding.to(cast)  # (N, L, W)
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
    elif hasattr(getattr(model, "text", None), "_embeds") and getattr(model.text, "cls_emb", None) is None:
        x, attn_mask = model.text._embeds(tokens)  # open_clip.CustomTextCLIP
        x = model.text.ln_final(model.text.transformer(x, attn_mask=attn_mask))
    else:
        raise ConfigError(
            f"text_encodings=true needs an open_clip CLIP text tower; {type(model).__name__} has none "
            "(fix: text_encodings=false)"
        )
    eot = tokens.argmax(dim=-1, keepdim=True)  # (N, 1)
    mask = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0) <= eot  # (N, L)
    return x.float(), mask
