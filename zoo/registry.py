"""The fixed table of what a file may name: components (LightningModules) and DataModules.

A checkpoint is data. It may say *which* of the project's components it holds -- by a short name looked up in
the tables below, never by an import path -- and it may carry that component's hyper-parameters, which must be
plain values (numbers, strings, lists, dicts) accepted by the component's constructor. Nothing read from a file is
imported, called by name or handed to Hydra's ``instantiate``: a file that names anything else, or carries a
``_target_``-style node anywhere, is refused with an ``UnsafeCheckpointError`` before any code runs.

Adding a component: one line in ``_COMPONENTS`` (its short name -> its module and class), one in
``_NET_DATACLASSES`` (the dataclass its ``net`` overrides), plus, if it is an image tokenizer, its name in
``IMAGE_TOKENIZERS``.
"""

from __future__ import annotations

import inspect
import pickle
from typing import Any, Iterable, Mapping, Optional

from zoo.errors import ConfigError


class UnsafeCheckpointError(pickle.UnpicklingError, ValueError):
    """A file asks for something the project will not do on a file's say-so (import code, call a target, ...)."""


# --------------------------------------------------------------------------------------------- the tables
# name -> (module, class) of the project's own components. Only the entry a name selects is imported, so stamping
# or loading one component never imports (or depends on the state of) the others.
_COMPONENTS: dict[str, tuple[str, str]] = {
    "dvae": ("zoo.models.dvae.lit", "DVAELit"),
    "vqvae": ("zoo.models.vqvae.lit", "VQVAELit"),
    "vqgan": ("zoo.models.vqgan.lit", "TamingVQGANLit"),  # published taming weights (zoo-convert), not trained
    "clip": ("zoo.models.clip.lit", "ClipLit"),
    "dalle": ("zoo.models.dalle.lit", "DalleLit"),
    "diffusion_prior": ("zoo.models.diffusion_prior.lit", "DiffusionPriorLit"),
    "ar_prior": ("zoo.models.ar_prior.lit", "ARPriorLit"),
    "glide": ("zoo.models.glide.lit", "GlideLit"),
    "unclip_decoder": ("zoo.models.unclip_decoder.lit", "UnclipDecoderLit"),
    "noised_clip": ("zoo.models.noised_clip.lit", "NoisedClipLit"),
    "upsampler": ("zoo.models.upsampler.lit", "UpsamplerLit"),
    "captioner": ("zoo.models.captioner.lit", "CaptionerLit"),
    "prompt_upsampler": ("zoo.models.prompt_upsampler.lit", "PromptUpsamplerLit"),
}


def _load(entry: tuple[str, str]) -> Any:
    import importlib

    module, attr = entry
    return getattr(importlib.import_module(module), attr)


IMAGE_TOKENIZERS = ("dvae", "vqvae", "vqgan")

# Checkpoints written before the registry carried the class's import path (``zoo_class``). Those exact strings are
# recognised as names (a string compare against this table, no import), so earlier ``make demo`` checkpoints load.
_LEGACY_CLASS_PATHS = {f"{module}.{cls}": name for name, (module, cls) in _COMPONENTS.items()}

# Constructor arguments that never come from a file: factories (``_partial_`` nodes at training time) and
# arguments whose value a rebuild must not take from the file (paths to other files, downloads).
_NEVER_FROM_FILE = {"optimizer", "scheduler", "self"}

# What a rebuild from a checkpoint sets regardless of the file: the weights come from the state dict, so no
# pretrained tag, external checkpoint or tokenizer file is opened again.
_REBUILD_OVERRIDES: dict[str, dict[str, Any]] = {
    # pretrained stays: with load_weights False the tag opens no file, it only sets the activation (QuickGELU) and
    # the image mean / std the weights were trained with (dropped, a tagged CLIP came back with GELU and OpenAI's)
    "clip": {"load_weights": False, "checkpoint": None, "cache_dir": None},
    "dalle": {"image_tokenizer_ckpt": None},
    "unclip_decoder": {"clip_ckpt": None},  # embeddings come with the sampling call; the frozen CLIP is training's
    "captioner": {"init_from": None},  # the fine-tuned weights are in the state dict; the source is not reopened
}

# Hyper-parameters renamed since checkpoints were written: component -> {old name: new name}. ``checked_hparams``
# renames them before checking, so earlier ``make demo`` checkpoints still load.
_LEGACY_HPARAM_NAMES: dict[str, dict[str, str]] = {
    "dalle": {"tokenizer_ckpt": "image_tokenizer_ckpt"},
}


# The config dataclass each component's ``net`` overrides (absent: ``net`` is free-form, e.g. open_clip's nested
# model config, which is still checked to be plain values). A fixed table of our own modules, never a file's.
_NET_DATACLASSES = {
    "dvae": ("zoo.models.dvae.model", "DVAEConfig"),
    "vqvae": ("zoo.models.vqvae.model", "VQVAEConfig"),
    "vqgan": ("zoo.models.vqgan.model", "TamingVQGANConfig"),
    "dalle": ("zoo.models.dalle.model", "DalleTransformerConfig"),
    "glide": ("zoo.models.glide.model", "GlideConfig"),
    "unclip_decoder": ("zoo.models.unclip_decoder.model", "UnclipDecoderConfig"),
    "noised_clip": ("zoo.models.noised_clip.model", "NoisedClipConfig"),
    "diffusion_prior": ("zoo.models.diffusion_prior.model", "DiffusionPriorConfig"),
    "ar_prior": ("zoo.models.ar_prior.model", "ARPriorConfig"),
    "upsampler": ("zoo.models.upsampler.model", "UpsamplerConfig"),
    "captioner": ("zoo.models.captioner.model", "CaptionerConfig"),
    "prompt_upsampler": ("zoo.models.prompt_upsampler.model", "PromptUpsamplerConfig"),
}


def _net_dataclass(name: str) -> Optional[type]:
    return _load(_NET_DATACLASSES[name]) if name in _NET_DATACLASSES else None


_DATAMODULES: dict[str, tuple[str, str]] = {
    "shapes": ("zoo.data.modules", "ShapesDataModule"),
    "coco": ("zoo.data.modules", "CocoDataModule"),
    "webdataset": ("zoo.data.modules", "WebDataModule"),
    "folder": ("zoo.data.folder", "FolderDataModule"),
}
# A data config stored in a checkpoint names its DataModule by our own _target_ string: matched exactly here.
_LEGACY_DATAMODULE_TARGETS = {f"{module}.{cls}": name for name, (module, cls) in _DATAMODULES.items()}


def component_names() -> list[str]:
    return sorted(_COMPONENTS)


def component_class(name: str) -> type:
    """The LightningModule class registered as ``name`` (a ConfigError naming the choices otherwise)."""
    if name not in _COMPONENTS:
        raise UnsafeCheckpointError(f"unknown component {name!r}; the registered components are {component_names()}")
    return _load(_COMPONENTS[name])


def component_name_of(obj_or_cls: Any) -> str:
    """The registry name of a LightningModule instance or class (what ``CheckpointInfo`` stamps)."""
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    # By the class's own module and name (no import of the other components); then, for a subclass defined
    # elsewhere (a user's or a test's), the nearest registered base class.
    path = f"{cls.__module__}.{cls.__qualname__}"
    if path in _LEGACY_CLASS_PATHS:
        return _LEGACY_CLASS_PATHS[path]
    for base in cls.__mro__[1:]:
        path = f"{base.__module__}.{base.__qualname__}"
        if path in _LEGACY_CLASS_PATHS:
            return _LEGACY_CLASS_PATHS[path]
    raise ConfigError(f"{cls.__name__} is not a registered component; add it to zoo.registry._COMPONENTS")


def component_in(ckpt: Mapping[str, Any], where: str = "the checkpoint") -> str:
    """The registered component a loaded checkpoint dict says it holds (``zoo_component``, or a legacy
    ``zoo_class`` that matches a known class path exactly)."""
    if not isinstance(ckpt, Mapping):
        raise UnsafeCheckpointError(f"{where} is not a zoo-train checkpoint (a {type(ckpt).__name__}, not a dict)")
    name = ckpt.get("zoo_component")
    if name is None and "zoo_class" in ckpt:
        legacy = ckpt["zoo_class"]
        if legacy not in _LEGACY_CLASS_PATHS:
            raise UnsafeCheckpointError(
                f"{where} names the class {legacy!r}, which is not one of the project's components "
                f"({component_names()}); refusing to import anything a file names"
            )
        name = _LEGACY_CLASS_PATHS[legacy]
    if name is None:
        made_by = data_file_kind(ckpt)
        if made_by:  # a data file passed where a model goes: "load its state_dict yourself" would be no fix
            raise UnsafeCheckpointError(
                f"{where} is a {made_by} output (it holds {sorted(map(str, ckpt))[:4]}), not a model checkpoint "
                f"(fix: pass the checkpoint of a zoo-train run, e.g. <run dir>/checkpoints/last.ckpt; the data file "
                f"goes to data.features.<split>= or data.synthetic_captions=)"
            )
        raise UnsafeCheckpointError(
            f"{where} was not written by zoo-train (no zoo_component stamp); load its "
            f"state_dict into the model class yourself"
        )
    if not isinstance(name, str) or name not in _COMPONENTS:
        raise UnsafeCheckpointError(
            f"{where} names the component {name!r}, which is not registered (registered: {component_names()})"
        )
    return name


def data_file_kind(obj: Mapping[str, Any]) -> Optional[str]:
    """Which zoo command wrote a loaded data file (features, tokens, synthetic captions), or None."""
    if "image_tokens" in obj:
        return "zoo-tokenize"
    if any(k in obj for k in ("clip_image_emb", "clip_text_emb", "clip_text_tokens")):
        return "zoo-embed"
    if isinstance(obj.get("captions"), list):
        return "zoo-recaption"
    return None


# --------------------------------------------------------------------------------------- value checking
_HYDRA_KEYS = {"_target_", "_partial_", "_args_", "_recursive_", "_convert_"}


def check_plain(value: Any, where: str, depth: int = 0) -> None:
    """Refuse anything but plain data: None, bool, int, float, str, lists/tuples and str-keyed dicts of those, with
    no Hydra instantiation key anywhere. (Tensors are never hyper-parameters.)"""
    if depth > 32:
        raise UnsafeCheckpointError(f"{where}: nesting deeper than 32 levels")
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_plain(v, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise UnsafeCheckpointError(f"{where}: a non-string key {k!r}")
            if k in _HYDRA_KEYS or (k.startswith("_") and k.endswith("_") and len(k) > 2):
                raise UnsafeCheckpointError(
                    f"{where}.{k}: a file may not carry instantiation nodes ({k}); refusing to run code a file names"
                )
            check_plain(v, f"{where}.{k}", depth + 1)
        return
    raise UnsafeCheckpointError(f"{where}: {type(value).__name__} is not a plain value (number, string, list, dict)")


def _constructor_args(cls: type) -> set[str]:
    params = inspect.signature(cls.__init__).parameters
    return {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - _NEVER_FROM_FILE


def checked_hparams(name: str, hparams: Any, where: str = "the checkpoint") -> dict[str, Any]:
    """The hyper-parameters of component ``name`` read from a file, as constructor kwargs: plain values only, every
    key an argument of the component's constructor (factories and file paths excluded), rebuild overrides applied.
    Hyper-parameters renamed since (``_LEGACY_HPARAM_NAMES``) are read under their new names. Field-level checks
    (``net`` against the config dataclass) happen in ``zoo.models.presets.resolve_preset``."""
    cls = component_class(name)
    hp = dict(hparams or {})
    check_plain(hp, f"{where}: hyper_parameters")
    for old, new in _LEGACY_HPARAM_NAMES.get(name, {}).items():
        if old in hp:
            value = hp.pop(old)
            hp.setdefault(new, value)
    allowed = _constructor_args(cls)
    unknown = sorted(set(hp) - allowed)
    if unknown:
        raise UnsafeCheckpointError(
            f"{where}: hyper-parameter(s) {unknown} are not arguments of the {name} "
            f"component (allowed: {sorted(allowed)})"
        )
    dc = _net_dataclass(name)
    if dc is not None and hp.get("net"):
        if not isinstance(hp["net"], Mapping):
            raise UnsafeCheckpointError(f"{where}: net must be a dict of {dc.__name__} fields")
        check_dataclass_values(dc, hp["net"], f"{where}: net")
    hp.update(_REBUILD_OVERRIDES.get(name, {}))
    return hp


def check_dataclass_values(dc: type, values: Mapping[str, Any], where: str) -> None:
    """Each value fits the dataclass field it overrides (``zoo.kinds.kind_of``: the same check ``model.net``
    overrides get in ``zoo.models.presets``), so a file's ``net`` cannot smuggle, say, a dict where a width goes;
    one ``UnsafeCheckpointError`` naming every value that does not. What a checkpoint legitimately holds fits: a list
    for a tuple field (YAML and ``as_net`` write lists), an int for a float."""
    import dataclasses
    import typing

    from zoo.kinds import kind_of

    hints = typing.get_type_hints(dc)
    fields = {f.name: f for f in dataclasses.fields(dc)}
    problems = []
    for k, v in values.items():
        if k not in fields:
            raise UnsafeCheckpointError(f"{where}: {k!r} is not a field of {dc.__name__} (fields: {sorted(fields)})")
        kind = kind_of(hints.get(k))
        if kind is not None and not kind[0](v):
            default = fields[k].default
            example = (
                ""
                if default is dataclasses.MISSING
                else f", e.g. {list(default) if isinstance(default, tuple) else default!r}"
            )
            problems.append(
                f"{where}.{k} must be {kind[1]} ({dc.__name__}.{k}), got {v!r} (fix: a checkpoint written by "
                f"zoo-train, or set the file's hyper_parameters['net'][{k!r}] to {kind[1]}{example})"
            )
    if problems:
        raise UnsafeCheckpointError("\n".join(problems))


# ------------------------------------------------------------------------------------------ DataModules
def _refuse_commands(value: Any, where: str) -> None:
    """Refuse a ``pipe:`` URL anywhere in a data config read from a file: webdataset opens such a shard by running
    the rest of the string in a shell, so a checkpoint's stored ``data.train_urls: "pipe:..."`` ran its command when
    ``zoo-sample`` drew its grid. The check is on the whole raw string, so a brace pattern or a ``::`` list cannot
    hide one. On the command line the user's own ``pipe:`` URLs stay allowed."""
    if isinstance(value, str):
        if "pipe:" in value.lower():
            raise UnsafeCheckpointError(
                f"{where}: {value!r} is a webdataset pipe: URL, a shell command, and a file may not choose a "
                f"command to run (fix: copy the shards to local files and put their paths in the checkpoint's "
                f"zoo_config.data)"
            )
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _refuse_commands(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _refuse_commands(v, f"{where}[{i}]")


def datamodule_from_file_config(
    data_cfg: Any,
    where: str,
    drop: Iterable[str] = ("tokenizer", "features"),
    overrides: Optional[Mapping[str, Any]] = None,
):
    """Rebuild one of the project's DataModules from a data config stored in a checkpoint (``zoo_config.data``):
    the ``_target_`` string must match a registered DataModule exactly (no import), every other value must be plain
    and an argument of its constructor. ``drop`` removes nested nodes the caller does not need (the text tokenizer,
    itself a ``_target_`` node, is not needed to pick images)."""
    if not isinstance(data_cfg, Mapping) or "_target_" not in data_cfg:
        raise UnsafeCheckpointError(f"{where} carries no data config")
    target = data_cfg["_target_"]
    if target not in _LEGACY_DATAMODULE_TARGETS:
        raise UnsafeCheckpointError(
            f"{where}: data config names {target!r}, not one of the project's DataModules "
            f"({sorted(_LEGACY_DATAMODULE_TARGETS)})"
        )
    cls = _load(_DATAMODULES[_LEGACY_DATAMODULE_TARGETS[target]])
    kw = {k: v for k, v in data_cfg.items() if k != "_target_" and k not in set(drop)}
    check_plain(kw, f"{where}: data config")
    _refuse_commands(kw, f"{where}: data config")
    allowed: set[str] = set()
    for klass in cls.__mro__:  # a subclass passes **kwargs on to the base DataModule: both lists count
        if "__init__" in vars(klass) and klass.__module__.startswith("zoo."):
            allowed |= _constructor_args(klass)
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise UnsafeCheckpointError(f"{where}: data config keys {unknown} are not arguments of {cls.__name__}")
    kw.update(overrides or {})
    return cls(**kw)
