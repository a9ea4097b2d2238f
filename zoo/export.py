"""``zoo-export``: a component checkpoint -> ``model.safetensors`` + ``config.json`` (+ ONNX inference graphs).

The export directory holds everything another tool needs, and nothing that runs code when read:

- ``model.safetensors``: the LightningModule's state dict (safetensors: a header + raw tensors, no pickle);
- ``config.json``: ``{"format": "dalle-zoo-export", "version": 1, "component": <registry name>,
  "hyper_parameters": {...plain values...}, "preprocessing": {...}}``. DALL·E checkpoints keep their nested plain
  specs here (the text tokenizer's tokenizer.json as a string, the frozen image tokenizer's component +
  hyper-parameters + resolution). ``preprocessing`` says what the inputs are: an image tokenizer's ``resolution``
  (the one it TRAINED at, from the checkpoint's run config: a run at another ``data.resolution`` than its preset's
  keeps the preset in its hyper-parameters), grid and pixel range; CLIP's image size, mean / std, resize and
  context length (the ONNX towers take normalised pixels and token ids). ``weights`` says which of the
  checkpoint's weights were exported: the samplers' (``state_dict``: "ema" for a run with ``callbacks=ema``, else
  "trained"; see ``load_checkpoint``);
- ``onnx/<graph>.onnx`` where a graph makes sense (see ``onnx_graphs``), each checked against PyTorch with
  onnxruntime on fresh inputs of ANOTHER batch size than the export's (the batch axis is dynamic); a graph off by
  more than ``REL_TOLERANCE`` of its outputs' scale fails the export; ``onnx/report.json`` records the max abs /
  relative errors and sizes.

zoo-export writes the folder aside and renames it into place when everything passed: ``out=`` is the whole previous
export or the whole new one, never a mixture (it refuses a folder holding files it did not write). A kill between the
renames leaves ``out=`` the previous export, or missing with the new one whole in ``.<out name>.new``: the next
zoo-export into ``out=`` puts it in place (``recover_install``). One zoo-export at a time writes an ``out=``
(``export_lock``): a second one fails at once, naming the first. ``config.json`` and the safetensors metadata carry
one ``export_id``: ``load_export`` refuses a pair from two saves.

``load_export(dir)`` rebuilds the module through the same registry checks as ``zoo.checkpoint.load_module``
(component by name from ``zoo.registry``, plain hyper-parameters checked against the constructor) and loads the
safetensors weights: its outputs equal the checkpoint's bit for bit (tests/test_export.py).

ONNX graphs (TorchScript exporter, ``dynamo=False``: it needs no onnxscript):

==================  ===========================================  ==============================================
component           graph                                         inputs -> outputs
==================  ===========================================  ==============================================
dvae/vqvae/vqgan    ``encode``                                   images (B,3,H,W) in [-1,1] -> codes (B,h,w),
                                                                 features (B,K|D,h,w) (dVAE logits / VQ z_e)
dvae/vqvae/vqgan    ``decode``                                   codes (B,h,w) -> images (B,3,H,W)
clip                ``image_tower`` / ``text_tower``             pixels (B,3,S,S) / tokens (B,L) -> features
                                                                 (B,E), L2-normalised
dalle               ``prefill``                                  text (B,T) -> logits of image token 0 (B,V),
                                                                 present_k/v (n_layers,B,H,T,D)
dalle               ``decode_step``                              image_token (B,1), past_k/v (n_layers,B,H,P,D)
                                                                 -> logits of the next token, present_k/v
                                                                 (n_layers,B,H,P+1,D): the explicit KV cache.
                                                                 Both: codes >= the image tokenizer's codebook
                                                                 (image_vocab larger) at float32's lowest value
dalle               ``image_decode``                             codes (B,h,w) -> images (B,3,H,W): its image
                                                                 tokenizer's decode (sampled codes -> pixels)
glide               ``text_encoder``                             tokens (B,L) -> context (B,L,W), emb (B,E)
glide               ``unet``                                     x_t, t, context, context_mask, emb -> (B,2C,H,W)
diffusion_prior,    (none: safetensors + config.json only; their samplers loop in Python around small nets)
ar_prior
==================  ===========================================  ==============================================
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import open_dict

from zoo.config import entry_point
from zoo.errors import ConfigError, check_switch, check_whole, is_whole

log = logging.getLogger("zoo.export")

EXPORT_FORMAT = "dalle-zoo-export"
EXPORT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


# ------------------------------------------------------------------------------------------ checkpoint side
def hyper_parameters_of(module: nn.Module) -> dict[str, Any]:
    """The hyper-parameters a checkpoint of ``module`` carries: Lightning's saved hparams plus what the module's
    ``on_save_checkpoint`` adds (DALL·E: ``tokenizer_spec``, ``text_tokenizer``; GLIDE: ``text_tokenizer``)."""
    ck: dict[str, Any] = {"hyper_parameters": dict(getattr(module, "hparams", {}) or {})}
    hook = getattr(module, "on_save_checkpoint", None)
    if callable(hook):
        hook(ck)
    return _plain(dict(ck["hyper_parameters"]))


def _plain(value: Any) -> Any:
    """OmegaConf containers / AttributeDicts / tuples -> dicts and lists (what JSON and ``check_plain`` take)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def checkpoint_dict(module: nn.Module) -> dict[str, Any]:
    """A zoo-train-style checkpoint dict for ``module`` (``zoo_component`` stamp, plain hyper-parameters,
    state dict): what ``zoo.checkpoint.load_module`` (and so zoo-sample / zoo-tokenize) accepts."""
    from zoo.registry import component_name_of

    return {
        "zoo_component": component_name_of(module),
        "hyper_parameters": hyper_parameters_of(module),
        "state_dict": {k: v.detach().clone() for k, v in module.state_dict().items()},
        "zoo_config": {},
    }


WEIGHTS_CHOICES = ("ema", "trained")


def check_weights(weights: str) -> str:
    """``weights=``: ema or trained, else a ConfigError (checked before anything is read)."""
    if weights not in WEIGHTS_CHOICES:
        raise ConfigError(
            f"weights={weights!r}: ema (state_dict: the EMA average when the run had callbacks=ema, what the "
            "samplers use) or trained (current_model_state, the optimiser's weights) (fix: weights=ema)"
        )
    return weights


def load_checkpoint(path: str | os.PathLike, weights: str = "ema") -> tuple[str, nn.Module, dict[str, Any]]:
    """(component name, rebuilt module in eval mode, its checked plain hyper-parameters) from a zoo-train file.

    The weights are the ones the samplers use: ``state_dict``, which holds the EMA average when the run had
    ``callbacks=ema`` (``current_model_state`` then holds the trained weights). A file saved before the EMA's first
    update (``averaging_state.n_averaged == 0``, written so by Lightning's own callback) has the INITIAL weights as
    its "average": the trained ones are exported instead, with a warning, as ``zoo.pipelines.glide.load_glide``
    samples them. ``weights="trained"`` takes ``current_model_state`` whenever the file has one (as the GLIDE
    generator's ``use_ema=false``). ``module.export_weights`` says which: "ema", "trained" or "trained (the EMA had
    not started)"."""
    from zoo.checkpoint import load_module

    check_weights(weights)
    module = load_module(path, ema=weights == "ema")  # one read of the file: the EMA choice is made there
    loaded = module.loaded_weights  # "ema" | "raw" | "raw (no EMA in checkpoint)"
    module.export_weights = (
        "ema"
        if loaded == "ema"
        else "trained (the EMA had not started)"
        if loaded == "raw" and weights == "ema"
        else "trained"
    )
    return module.zoo_component, module, _plain(module.zoo_hparams)


# ------------------------------------------------------------------------------------------ safetensors
def _set_resolution(name: str, module: nn.Module, resolution: Any, where: str) -> None:
    """An image tokenizer's resolution set to ``resolution`` (None: left as built). Its grid, and so the codes it
    gives and the images it decodes, follow it."""
    from zoo.registry import IMAGE_TOKENIZERS

    if resolution is None or name not in IMAGE_TOKENIZERS:
        return
    from zoo.nn.image_tokenizer import find_image_tokenizer

    tok = find_image_tokenizer(module)
    f = int(tok.downsample_factor)
    if not is_whole(resolution, f) or resolution % f:
        raise ConfigError(
            f"{where}: resolution {resolution!r} is not a positive multiple of the tokenizer's downsample factor {f}"
        )
    tok.resolution = resolution


def apply_trained_resolution(name: str, module: nn.Module, where: str) -> None:
    """An image tokenizer rebuilt from a checkpoint has its PRESET's resolution; a run at another
    ``data.resolution`` adapted it without rewriting the hyper-parameters (``zoo.checkpoint.trained_resolution``
    reads the run config the checkpoint keeps). Set it back to the trained one, as DALL·E's tokenizer spec and
    zoo-tokenize do: the ONNX graphs are traced at it and config.json records it."""
    from zoo.checkpoint import trained_resolution

    _set_resolution(name, module, trained_resolution(getattr(module, "zoo_config", None)), where)


def preprocessing_of(name: str, module: nn.Module) -> dict[str, Any]:
    """What a user of the exported weights / graphs must feed them (config.json's ``preprocessing``)."""
    from zoo.registry import IMAGE_TOKENIZERS

    if name in IMAGE_TOKENIZERS:
        from zoo.nn.image_tokenizer import find_image_tokenizer

        tok = find_image_tokenizer(module)
        return {
            "resolution": int(tok.resolution),
            "grid_size": [int(x) for x in tok.grid_size],
            "codebook_size": int(tok.codebook_size),
            "pixel_range": [-1.0, 1.0],
        }
    if name == "clip":
        s = getattr(module, "_scorer", None) or module.scorer()
        clip = module.clip
        return {
            "image_size": int(s.image_size),
            "mean": [float(x) for x in s.mean.flatten()],
            "std": [float(x) for x in s.std.flatten()],
            "resize_mode": str(s.resize_mode),
            "interpolation": str(s.interpolation),
            "pixels": "images in [0, 1] resized to image_size, then (x - mean) / std",
            "context_length": int(getattr(clip, "context_length", 77)),
        }
    if name == "dalle":
        tok = getattr(module, "image_tokenizer", None)
        c = module.transformer.cfg
        out: dict[str, Any] = {
            "text_len": int(c.text_len),
            "pad_id": int(c.pad_id),
            "grid_size": [int(c.grid_h), int(c.grid_w)],
        }
        if tok is not None:
            out["resolution"] = int(tok.resolution)
            out["pixel_range"] = [-1.0, 1.0]
        return out
    if name == "glide":
        c = module.net.cfg
        return {
            "image_size": int(c.image_size),
            "pixel_range": [-1.0, 1.0],
            "text_len": int(c.text_len),
            "pad_id": int(c.pad_id),
            "context_mask": "tokens != pad_id; the empty caption (guidance's null condition) is text_len pads",
            "unet_in_channels": int(module.net.unet.cfg.in_channels),
            "inpaint": bool(c.inpaint),
        }
    return {}


def save_export(
    module: nn.Module,
    out_dir: str | os.PathLike,
    name: Optional[str] = None,
    hyper_parameters: Optional[dict[str, Any]] = None,
    preprocessing: Optional[dict[str, Any]] = None,
) -> dict[str, Path]:
    """Write ``model.safetensors`` + ``config.json`` for ``module`` into ``out_dir`` (``preprocessing``: default
    ``preprocessing_of(name, module)``)."""
    from safetensors.torch import save_model

    from zoo.checkpoint import default_file_mode
    from zoo.registry import check_plain, component_name_of

    name = name or component_name_of(module)
    hp = _plain(hyper_parameters if hyper_parameters is not None else hyper_parameters_of(module))
    prep = _plain(preprocessing if preprocessing is not None else preprocessing_of(name, module))
    check_plain(hp, f"{name} hyper-parameters")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights, cfg_path = out / WEIGHTS_FILE, out / CONFIG_FILE
    config = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "component": name,
        "hyper_parameters": hp,
        "preprocessing": prep,
    }
    if getattr(module, "export_weights", None):  # "ema" | "trained" | ...: which weights of the checkpoint
        config["weights"] = str(module.export_weights)
    # The pair's id, in both files: two renames cannot replace two files at once, and a save killed between them left
    # the new weights beside the previous config.json, which load_export read as one model (a state_dict error, or,
    # for the same architecture, the new weights under the old preprocessing). load_export refuses a pair whose ids
    # differ. The digest of the config: the same config saves the same bytes, and a new weights file beside an
    # identical config.json is the new pair whole.
    config["export_id"] = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    text = json.dumps(config, indent=2, allow_nan=False)
    # save_model drops duplicate names of shared (tied) tensors and makes channels_last weights contiguous;
    # load_model restores them. The metadata is informational (safetensors metadata must be str -> str).
    tmp_weights, tmp_cfg = weights.with_name(f".{WEIGHTS_FILE}.tmp"), cfg_path.with_suffix(".json.tmp")
    try:  # both files written under temporary names first: an interrupted write never leaves a truncated file
        save_model(
            module,
            str(tmp_weights),
            metadata={"format": EXPORT_FORMAT, "component": name, "export_id": config["export_id"]},
            force_contiguous=True,
        )
        default_file_mode(tmp_weights)  # safetensors writes 0o600; config.json and the ONNX files get the usual mode
        tmp_cfg.write_text(text)
        os.replace(tmp_weights, weights)
        os.replace(tmp_cfg, cfg_path)
    finally:  # a failed save leaves no temporary file behind (a later save would replace it anyway)
        tmp_weights.unlink(missing_ok=True)
        tmp_cfg.unlink(missing_ok=True)
    return {"weights": weights, "config": cfg_path}


def load_export(export_dir: str | os.PathLike, map_location: str = "cpu") -> nn.Module:
    """Rebuild a module from a ``zoo-export`` directory: the class from the component registry by name, the
    hyper-parameters checked like a checkpoint's (``zoo.registry.checked_hparams``), the weights from safetensors.
    No pickle is read and nothing the files name is imported."""
    from safetensors.torch import load_model

    from zoo.registry import UnsafeCheckpointError, checked_hparams, component_class

    d = Path(export_dir)
    cfg_path, weights = d / CONFIG_FILE, d / WEIGHTS_FILE
    if not d.exists():
        aside = [p for p in _aside(d) if p.is_dir()]
        if aside:
            raise FileNotFoundError(
                f"{d} not found: a zoo-export into it was interrupted while installing and left the export whole in "
                f"{aside[0]} (fix: run the zoo-export command again, it puts the export in place; or rename "
                f"{aside[0].name} to {d.name})"
            )
    for p in (cfg_path, weights):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} not found: {d} is not a zoo-export directory (run zoo-export ckpt=... out={d})"
            )
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{cfg_path} is not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT:
        raise UnsafeCheckpointError(
            f"{cfg_path} is not a {EXPORT_FORMAT} config (format={config.get('format')!r})"
            if isinstance(config, dict)
            else f"{cfg_path} is not a JSON object"
        )
    if config.get("version") != EXPORT_VERSION:
        raise ConfigError(f"{cfg_path}: export version {config.get('version')!r}; this zoo reads {EXPORT_VERSION}")
    name = config.get("component")
    if not isinstance(name, str):
        raise UnsafeCheckpointError(f"{cfg_path}: no component name")
    cls = component_class(name)  # refuses unregistered names
    hp = checked_hparams(name, config.get("hyper_parameters", {}), str(cfg_path))
    check_pair(config, weights, cfg_path)  # before building a module for a torn pair
    module = cls(**hp)
    # load_model copies into the module's (CPU) tensors whatever device it reads to: move the module itself
    load_model(module, str(weights), strict=True, device="cpu")
    module.to(map_location)
    _set_resolution(name, module, (config.get("preprocessing") or {}).get("resolution"), str(cfg_path))
    module.eval()
    return module


def check_pair(config: dict[str, Any], weights: Path, cfg_path: Path) -> None:
    """``config.json`` and ``model.safetensors`` of one save (``save_export``'s ``export_id`` in both; exports from
    before the id have it in neither and are not checked), else a ConfigError saying how to write the pair again."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        got = (f.metadata() or {}).get("export_id")
    want = config.get("export_id")
    if got != want:
        raise ConfigError(
            f"{weights.name} (export_id {got}) and {cfg_path.name} (export_id {want}) in {cfg_path.parent} are of two "
            f"different saves: a save was interrupted between writing the two (fix: export again, zoo-export "
            f"ckpt=<the checkpoint> out={cfg_path.parent})"
        )


# ------------------------------------------------------------------------------------------ ONNX graphs
@dataclass
class Graph:
    """One ONNX inference graph: a wrapper module, how to make inputs for a batch size, names and dynamic axes."""

    name: str
    module: nn.Module
    make_inputs: Callable[[int], tuple[torch.Tensor, ...]]
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    # outputs compared by code agreement (argmax/argmin results) rather than by abs error
    integer_outputs: tuple[str, ...] = ()
    note: str = ""
    check: Optional[Callable[["Graph", Any], dict[str, Any]]] = field(default=None, repr=False)


def _batch_axes(names, axis: int = 0) -> dict[str, dict[int, str]]:
    return {n: {axis: "batch"} for n in names}


class _TokenizerEncode(nn.Module):
    def __init__(self, name: str, tok: nn.Module):
        super().__init__()
        self.name, self.tok = name, tok

    def forward(self, images: torch.Tensor):
        if self.name == "dvae":
            logits = self.tok.logits(images)  # (B, K, h, w)
            return logits.argmax(1), logits
        if self.name == "vqgan":  # converted taming VQGAN / Gumbel-VQ: its own (codes, features) path
            return self.tok.encode_with_features(images)
        z = self.tok.encoder(images.contiguous(memory_format=torch.channels_last)).float()  # (B, D, h, w)
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        if self.tok.cfg.l2_normalize:
            flat = F.normalize(flat, dim=-1)
        return self.tok.quantizer.nearest(flat).view(b, h, w), z


class _TokenizerDecode(nn.Module):
    def __init__(self, tok: nn.Module):
        super().__init__()
        self.tok = tok

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.tok.decode(codes)


def _tokenizer_graphs(name: str, lit: nn.Module) -> list[Graph]:
    from zoo.nn.image_tokenizer import find_image_tokenizer

    tok = find_image_tokenizer(lit)
    res, (h, w), k = tok.resolution, tok.grid_size, tok.codebook_size

    def images(b):
        return (torch.rand(b, 3, res, res) * 2 - 1,)

    def codes(b):
        return (torch.randint(0, k, (b, h, w)),)

    return [
        Graph(
            "encode",
            _TokenizerEncode(name, tok),
            images,
            ["images"],
            ["codes", "features"],
            _batch_axes(["images", "codes", "features"]),
            integer_outputs=("codes",),
        ),
        Graph("decode", _TokenizerDecode(tok), codes, ["codes"], ["images"], _batch_axes(["codes", "images"])),
    ]


class _ClipImage(nn.Module):
    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, pixels):
        return self.clip.encode_image(pixels, normalize=True)


class _ClipText(nn.Module):
    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, tokens):
        return self.clip.encode_text(tokens, normalize=True)


def _clip_graphs(lit: nn.Module) -> list[Graph]:
    clip = lit.clip
    size = int(lit.image_size)
    ctx = int(getattr(clip, "context_length", 77))
    vocab = int(getattr(clip, "vocab_size", 49408))

    def pixels(b):
        return (torch.randn(b, 3, size, size),)

    def tokens(b):
        t = torch.randint(1, vocab - 1, (b, ctx))
        t[:, -1] = vocab - 1  # the EOT (highest id) marks the pooled position, as the BPE does
        return (t,)

    return [
        Graph(
            "image_tower",
            _ClipImage(clip),
            pixels,
            ["pixels"],
            ["image_features"],
            _batch_axes(["pixels", "image_features"]),
        ),
        Graph(
            "text_tower",
            _ClipText(clip),
            tokens,
            ["tokens"],
            ["text_features"],
            _batch_axes(["tokens", "text_features"]),
        ),
    ]


# -- DALL·E with an explicit KV cache ------------------------------------------------------------------------
def _attend(blk, x, past_k, past_v, mask_rows):
    """One pre-LN block on new positions x (B, n, d) given this layer's past keys/values (B, H, P, D) (or None)
    and the bool mask rows (n, P + n). Returns (x, k_all, v_all). Same maths as ``zoo.nn.transformer.Block``
    with its ``KVCache``, but the cache is an input and an output instead of a buffer written in place."""
    a = blk.attn
    b, n = x.shape[0], x.shape[1]
    q, k, v = a.qkv(blk.ln1(x)).reshape(b, n, 3, a.n_heads, a.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, n, D)
    if past_k is not None:
        k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)  # (B, H, P + n, D)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_rows)  # (B, H, n, D)
    x = x + a.proj(y.transpose(1, 2).reshape(b, n, a.n_heads * a.head_dim))
    x = x + blk.mlp(blk.ln2(x))
    return x, k, v


class _DallePrefill(nn.Module):
    """text (B, T) -> logits of image token 0 (B, V), present_k / present_v (n_layers, B, H, T, D). The logits of
    codes the image tokenizer cannot decode (image_vocab > its codebook) are the dtype's lowest value, as
    ``next_image_logits`` gives them to the PyTorch sampler (``DalleTransformer._decodable``)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, text: torch.Tensor):
        net, t = self.net, self.net.cfg.text_len
        x = net.embed(text)  # (B, T, d)
        ks, vs = [], []
        for blk, mask in zip(net.transformer.blocks, net.layer_masks(), strict=True):
            x, k, v = _attend(blk, x, None, None, mask[:t, :t])
            ks.append(k)
            vs.append(v)
        h = net.transformer.ln_f(x)
        # masked in the graph: a sampler built on the raw logits drew codes past the codebook (a third of the mass
        # for an untrained head), which the image_decode graph cannot turn into pixels
        return net._decodable(net.image_head(h[:, -1])), torch.stack(ks), torch.stack(vs)


class _DalleStep(nn.Module):
    """image_token (B, 1) at raster position p = P - T, past_k / past_v (n_layers, B, H, P, D) -> logits of image
    token p + 1 (B, V) (undecodable codes masked as in ``_DallePrefill``), present_k / present_v (n_layers, B, H,
    P + 1, D). The position comes from the cache length."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, image_token: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor):
        net, c = self.net, self.net.cfg
        idx = torch.arange(past_k.shape[3] + 1, device=image_token.device)  # key positions 0 .. P
        here = idx[-1:]  # (1,) stream position P of the new token
        p = here - c.text_len  # raster index of the image token
        pos = net.image_row.index_select(0, torch.div(p, c.grid_w, rounding_mode="floor")) + net.image_col.index_select(
            0, torch.remainder(p, c.grid_w)
        )  # (1, d)
        x = net.image_emb(image_token) + pos  # (B, 1, d)
        ks, vs = [], []
        for i, (blk, mask) in enumerate(zip(net.transformer.blocks, net.layer_masks(), strict=True)):
            rows = mask.index_select(0, here).index_select(1, idx)  # (1, P + 1)
            x, k, v = _attend(blk, x, past_k[i], past_v[i], rows)
            ks.append(k)
            vs.append(v)
        h = net.transformer.ln_f(x)
        return net._decodable(net.image_head(h[:, -1])), torch.stack(ks), torch.stack(vs)


def _dalle_graphs(lit: nn.Module) -> list[Graph]:
    net = lit.transformer
    c = net.cfg
    kv_shape = (c.n_layers, c.n_heads, c.head_dim)

    def text(b):
        t = torch.randint(1, c.text_vocab, (b, c.text_len))
        t[:, c.text_len // 2 :] = c.pad_id  # a padded tail (each pad position has its own learned embedding)
        return (t,)

    def step(b):
        p = c.text_len + 3  # a cache holding the text and three image tokens
        return (
            torch.randint(0, c.image_vocab, (b, 1)),
            torch.randn(kv_shape[0], b, kv_shape[1], p, kv_shape[2]) * 0.5,
            torch.randn(kv_shape[0], b, kv_shape[1], p, kv_shape[2]) * 0.5,
        )

    kv_axes = {1: "batch", 3: "past_len"}
    out_axes = {1: "batch", 3: "total_len"}
    graphs = [
        Graph(
            "prefill",
            _DallePrefill(net),
            text,
            ["text"],
            ["logits", "present_k", "present_v"],
            {"text": {0: "batch"}, "logits": {0: "batch"}, "present_k": {1: "batch"}, "present_v": {1: "batch"}},
        ),
        Graph(
            "decode_step",
            _DalleStep(net),
            step,
            ["image_token", "past_k", "past_v"],
            ["logits", "present_k", "present_v"],
            {
                "image_token": {0: "batch"},
                "past_k": kv_axes,
                "past_v": kv_axes,
                "logits": {0: "batch"},
                "present_k": out_axes,
                "present_v": out_axes,
            },
            note="explicit KV cache: present_k/v of one call are the next call's past_k/v",
        ),
    ]
    tok = getattr(lit, "image_tokenizer", None)
    if tok is not None:  # the frozen image tokenizer travels with DALL·E: its decoder turns sampled codes into pixels
        h, w = tok.grid_size
        graphs.append(
            Graph(
                "image_decode",
                _TokenizerDecode(tok),
                lambda b: (torch.randint(0, tok.codebook_size, (b, h, w)),),
                ["codes"],
                ["images"],
                _batch_axes(["codes", "images"]),
                note="the image tokenizer's decode: codes (B, grid_h, grid_w) -> images (B, 3, H, W) in [-1, 1]",
            )
        )
    return graphs


class _GlideText(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, tokens):
        context, last = self.net.text(tokens)
        return context, self.net.text_proj(last)


class _GlideUNet(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x_t, t, context, context_mask, emb):
        return self.net.unet(x_t, t, context=context, context_mask=context_mask, emb=emb)


def _glide_graphs(lit: nn.Module) -> list[Graph]:
    net = lit.net
    c = net.cfg
    width, e = c.text_width, net.unet.time_embed_dim
    in_ch = net.unet.cfg.in_channels

    def tokens(b):
        return (torch.randint(0, c.text_vocab, (b, c.text_len)),)

    def unet_in(b):
        mask = torch.ones(b, c.text_len, dtype=torch.bool)
        mask[:, c.text_len // 2 :] = False  # padded tail
        return (
            torch.randn(b, in_ch, c.image_size, c.image_size),
            torch.randint(0, 1000, (b,)),
            torch.randn(b, c.text_len, width),
            mask,
            torch.randn(b, e),
        )

    return [
        Graph(
            "text_encoder",
            _GlideText(net),
            tokens,
            ["tokens"],
            ["context", "emb"],
            _batch_axes(["tokens", "context", "emb"]),
        ),
        Graph(
            "unet",
            _GlideUNet(net),
            unet_in,
            ["x_t", "t", "context", "context_mask", "emb"],
            ["out"],
            _batch_axes(["x_t", "t", "context", "context_mask", "emb", "out"]),
            note="the denoiser step; context/context_mask/emb from text_encoder (mask = tokens != pad_id)",
        ),
    ]


def onnx_graphs(name: str, module: nn.Module) -> list[Graph]:
    """The ONNX inference graphs of a component (empty where none makes sense)."""
    from zoo.registry import IMAGE_TOKENIZERS

    if name in IMAGE_TOKENIZERS:
        return _tokenizer_graphs(name, module)
    if name == "clip":
        return _clip_graphs(module)
    if name == "dalle":
        return _dalle_graphs(module)
    if name == "glide":
        return _glide_graphs(module)
    return []


def _as_tuple(x) -> tuple[torch.Tensor, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


@contextlib.contextmanager
def _opset_errors(graph: str, opset: int):
    """An operator the chosen opset lacks (e.g. attention below opset 14): a ConfigError naming the graph, the
    operator and the fix, not the exporter's traceback."""
    from torch.onnx.errors import UnsupportedOperatorError

    try:
        yield
    except UnsupportedOperatorError as e:
        raise ConfigError(f"ONNX graph {graph}: {str(e).splitlines()[0]} (fix: opset=17, the default)") from e


def check_opset(opset: Any) -> int:
    """``opset`` within what torch's TorchScript ONNX exporter writes (7-20 in torch 2.14), else a ConfigError before
    anything is written (it failed with torch's traceback after the safetensors were)."""
    from torch.onnx import _constants

    lo, hi = _constants.ONNX_MIN_OPSET, _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    return check_whole("opset", opset, lo, 17, most=hi, why="the opsets torch's ONNX exporter writes")


def check_batches(export_batch: Any, check_batch: Any) -> tuple[int, int]:
    """Positive whole numbers, and two different ones: the onnxruntime check at another batch size than the trace
    is what shows the batch axis is dynamic. Refused before anything is read (check_batch=0 failed after the export
    with a bare ``max(): Expected reduction dim`` traceback; check_batch=export_batch checked nothing dynamic)."""
    check_whole("export_batch", export_batch, 1, 2, why="the batch size the graphs are traced at")
    check_whole("check_batch", check_batch, 1, 3, why="the batch size onnxruntime checks them at")
    if export_batch == check_batch:
        raise ConfigError(
            f"export_batch = check_batch = {check_batch}: the check must run at another batch size than the trace to "
            f"show the batch axis is dynamic (fix: check_batch={check_batch + 1})"
        )
    return export_batch, check_batch


def export_graph(g: Graph, path: Path, opset: int = 17, export_batch: int = 2) -> Path:
    import warnings

    path.parent.mkdir(parents=True, exist_ok=True)
    g.module.eval()
    torch.manual_seed(0)
    args = g.make_inputs(export_batch)
    # Traced with autograd ON: under no_grad, nn.MultiheadAttention (open_clip's towers) takes its fused fast path
    # (aten::_native_multi_head_attention), which has no ONNX symbolic; with grad on it runs the plain ops.
    with torch.enable_grad(), warnings.catch_warnings(), _opset_errors(g.name, opset):
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(
            g.module,
            args,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=g.input_names,
            output_names=g.output_names,
            dynamic_axes=g.dynamic_axes,
            do_constant_folding=True,
        )
    return path


def check_graph(g: Graph, path: Path, batch: int = 3, seed: int = 1) -> dict[str, Any]:
    """Run the ONNX graph with onnxruntime and the wrapper with PyTorch on the same fresh inputs (batch ``batch``,
    not the export's): max abs error per float output, agreement of integer outputs."""
    import onnxruntime as ort

    torch.manual_seed(seed)
    args = g.make_inputs(batch)
    with torch.no_grad():
        ref = _as_tuple(g.module(*args))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {n: a.numpy() for n, a in zip(g.input_names, args, strict=True)})
    out: dict[str, Any] = {"batch": batch, "max_abs_error": 0.0, "max_rel_error": 0.0}
    for n, r, o in zip(g.output_names, ref, got, strict=True):
        o = torch.from_numpy(o)
        if tuple(o.shape) != tuple(r.shape):
            raise ConfigError(f"ONNX graph {g.name}.{n}: shape {tuple(o.shape)} != PyTorch {tuple(r.shape)}")
        if n in g.integer_outputs or not r.is_floating_point():
            out[f"{n}_agreement"] = float((o == r).float().mean())
        else:
            err = max_abs_diff(o, r)
            out[f"{n}_max_abs_error"] = err
            out["max_abs_error"] = max(out["max_abs_error"], err)
            # relative to the output's own scale (logits of 10s, features of norm 1, images in [-1, 1])
            out["max_rel_error"] = max(out["max_rel_error"], err / max(_scale(r), 1e-6))
    return out


def max_abs_diff(got: torch.Tensor, ref: torch.Tensor) -> float:
    """The largest |got - ref|, in float64, where a NaN or inf of the graph that PyTorch does not give (or the other
    way round) counts as an infinite error. Why: (got - ref).abs().max() of a NaN is NaN, and NaN is neither kept
    by Python's max() against the running error nor greater than the tolerance, so a graph returning NaN passed the
    parity check. Equal infinities (a masked logit) and NaN in both are agreement."""
    g, r = got.double(), ref.double()
    agree = (g == r) | (g.isnan() & r.isnan())
    d = (g - r).abs().masked_fill(agree, 0.0)
    return float(torch.where(d.isnan(), math.inf, d).max()) if d.numel() else 0.0


def _scale(r: torch.Tensor) -> float:
    """The largest magnitude among ``r``'s values, leaving out masked ones (the dtype's lowest value: DALL·E's
    undecodable codes), which would make any error look relatively nil."""
    a = r.abs()
    kept = a[a < torch.finfo(r.dtype).max]
    return float(kept.max()) if kept.numel() else 0.0


# An fp32 graph agrees with PyTorch to ~1e-6 of its outputs' scale (README's measured table); a trace that does not
# generalise (a shape or a value baked as a constant at the export's batch) is off by far more.
REL_TOLERANCE = 1e-3
MIN_AGREEMENT = 0.99  # argmax / nearest-code outputs may flip on a near-tie


def check_parity(graph: str, info: dict[str, Any], rel_tolerance: float = REL_TOLERANCE) -> None:
    """A ConfigError when the onnxruntime check of ``graph`` shows it does not compute what PyTorch computes."""
    bad = [
        f"{k} {v:.3g}"
        for k, v in info.items()
        if k.endswith("_agreement") and isinstance(v, float) and v < MIN_AGREEMENT
    ]
    for k in ("max_rel_error", "full_decode_vs_uncached_max_rel_error"):
        if info.get(k, 0.0) > rel_tolerance:
            bad.append(f"{k} {info[k]:.3g} (> {rel_tolerance:g})")
    if bad:
        raise ConfigError(
            f"ONNX graph {graph} does not match PyTorch under onnxruntime at batch {info.get('batch')} "
            f"({', '.join(bad)}; max abs error {info.get('max_abs_error', 0.0):.3g}): the trace does not generalise "
            "(a shape or value baked in at the export's batch?); zoo-export leaves out= as it was "
            "(fix: onnx=false for the safetensors alone, or graphs= without it)"
        )


@torch.no_grad()
def check_dalle_decoding(
    lit: nn.Module, prefill_path: Path, step_path: Path, batch: int = 3, seed: int = 2
) -> tuple[float, float]:
    """Decode a whole image with the two ONNX graphs (prefill, then one decode_step per token, feeding each call's
    present_k/v back as past_k/v) under teacher forcing, against the PyTorch model's UNCACHED forward on the same
    (text, image): (the max abs error over all image-token logits, the logits' scale: their max abs value)."""
    import onnxruntime as ort

    net = lit.transformer.eval()
    c = net.cfg
    torch.manual_seed(seed)
    text = torch.randint(1, c.text_vocab, (batch, c.text_len))
    text[:, c.text_len // 2 :] = c.pad_id  # captions are padded
    image = torch.randint(0, c.image_vocab, (batch, c.image_len))
    _, ref = net(text, image)  # (B, N, V): ref[:, p] predicts image token p
    ref = net._decodable(ref)  # the codes the sampler may draw, as the graphs give them
    pre = ort.InferenceSession(str(prefill_path), providers=["CPUExecutionProvider"])
    step = ort.InferenceSession(str(step_path), providers=["CPUExecutionProvider"])
    logits, k, v = pre.run(None, {"text": text.numpy()})
    err = max_abs_diff(torch.from_numpy(logits), ref[:, 0])
    for p in range(c.image_len - 1):
        logits, k, v = step.run(None, {"image_token": image[:, p : p + 1].numpy(), "past_k": k, "past_v": v})
        err = max(err, max_abs_diff(torch.from_numpy(logits), ref[:, p + 1]))
    return err, _scale(ref)


def export_onnx(
    name: str,
    module: nn.Module,
    out_dir: str | os.PathLike,
    opset: int = 17,
    export_batch: int = 2,
    check_batch: int = 3,
    graphs: Optional[list[str]] = None,
    check: bool = True,
) -> dict[str, dict[str, Any]]:
    """Export and check every ONNX graph of the component; returns {graph: {path, bytes, max_abs_error, ...}}.
    ``check``: a graph whose onnxruntime outputs are off PyTorch's by more than ``REL_TOLERANCE`` of their scale
    (or whose codes agree less than ``MIN_AGREEMENT``) is a ConfigError (``check_parity``), so zoo-export installs
    nothing; it exported and exited 0, the error only printed."""
    out = Path(out_dir)
    report: dict[str, dict[str, Any]] = {}
    module.eval()
    for g in onnx_graphs(name, module):
        if graphs is not None and g.name not in graphs:
            continue
        path = export_graph(g, out / f"{g.name}.onnx", opset, export_batch)
        info = {"path": str(path), "bytes": path.stat().st_size, **check_graph(g, path, check_batch)}
        if g.note:
            info["note"] = g.note
        report[g.name] = info
    if name == "dalle" and {"prefill", "decode_step"} <= set(report):
        err, scale = check_dalle_decoding(
            module, Path(report["prefill"]["path"]), Path(report["decode_step"]["path"]), check_batch
        )
        step = report["decode_step"]
        step["full_decode_vs_uncached_max_abs_error"] = err
        step["full_decode_vs_uncached_max_rel_error"] = err / max(scale, 1e-6)
    if check:
        for graph, info in report.items():
            check_parity(graph, info)
    if report:
        (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


# ------------------------------------------------------------------------------------------ the command
def _dir_bytes(paths) -> int:
    return sum(Path(p).stat().st_size for p in paths)


# What zoo-export writes into its folder; a folder holding only these (or nothing) is one it may replace.
EXPORT_ENTRIES = frozenset({CONFIG_FILE, WEIGHTS_FILE, "onnx", CONFIG_FILE + ".tmp", f".{WEIGHTS_FILE}.tmp"})


def check_packages(onnx: bool) -> None:
    """The export extra's packages, named before any work (a missing onnxruntime failed with a bare
    ModuleNotFoundError after the graphs were traced)."""
    import importlib

    wanted = ["safetensors"] + (["onnx", "onnxruntime"] if onnx else [])
    missing = []
    for mod in wanted:
        try:
            importlib.import_module(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ConfigError(
            f"zoo-export needs {', '.join(missing)} (fix: pip install -e '.[export]'"
            + (", or onnx=false for the safetensors + config.json alone)" if "safetensors" not in missing else ")")
        )


def check_onnx_options(onnx: Any, graphs: Any) -> tuple[bool, Optional[list[str]]]:
    """``onnx=`` as a bool and ``graphs=`` as a list of names (None: every graph), before anything is read.
    ``onnx=no`` / ``off`` reach here as a word, which was truthy: the ONNX graphs were exported all the same; and
    ``graphs=encode`` (no brackets, one graph) was read letter by letter (``graphs=['e', 'n', 'c', ...]``)."""
    check_switch("onnx", onnx)  # false: the safetensors + config.json alone
    if graphs is None:
        return onnx, None
    names = [graphs] if isinstance(graphs, str) else list(graphs) if isinstance(graphs, Sequence) else None
    if names is None or not all(isinstance(g, str) and g for g in names):
        raise ConfigError(f"graphs={graphs!r}: a list of graph names (fix: graphs=[encode,decode], or graphs=null)")
    return onnx, names or None


def check_ckpt_path(ckpt: Path, command: str = "zoo-export") -> None:
    """A folder or a zoo-export's own files passed as ``ckpt=`` (to zoo-export or zoo-sample) are named as what they
    are (a run folder was "checkpoint not found" although it exists; an export's model.safetensors "not written by
    zoo-train")."""
    export_dir = ckpt if ckpt.is_dir() else ckpt.parent if ckpt.name in (WEIGHTS_FILE, CONFIG_FILE) else None
    if export_dir is not None and (export_dir / CONFIG_FILE).is_file() and (export_dir / WEIGHTS_FILE).is_file():
        raise ConfigError(
            f"ckpt={ckpt} is (in) a zoo-export folder: it is exported already (zoo.export.load_export({str(export_dir)!r})"
            f" rebuilds it); {command} reads the zoo-train checkpoint (fix: ckpt=<run dir>/checkpoints/last.ckpt)"
        )
    if ckpt.is_dir():
        found = next((c for c in (ckpt / "checkpoints" / "last.ckpt", ckpt / "last.ckpt") if c.is_file()), None)
        raise ConfigError(
            f"ckpt={ckpt} is a folder; {command} reads a checkpoint file (fix: ckpt="
            + (f"{found})" if found else "<run dir>/checkpoints/last.ckpt)")
        )


def check_finite(module: nn.Module, ckpt: Path) -> None:
    """Weights holding NaN / inf (a run that diverged, or a prior whose embed_scale was never fit) are refused by
    name: the export failed on its own round trip (NaN != NaN) with "does not reload to the checkpoint's weights",
    a RuntimeError that blamed the export for the checkpoint."""
    bad = [k for k, v in module.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise ConfigError(
            f"ckpt={ckpt}: {len(bad)} tensor(s) hold NaN or inf ({shown}): the run diverged or was never fit, and "
            "nothing it computes would be a number (fix: export an earlier checkpoint of the run, e.g. "
            "ckpt=<run dir>/checkpoints/step<an earlier step>.ckpt)"
        )


def check_out_dir(out: Path) -> None:
    """``out`` must be a new folder, an empty one or a previous export: the export replaces it as a whole (a
    re-export into it kept the previous model's ONNX graphs next to the new weights), so a folder holding anything
    else is refused before any work, not emptied."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out} is a file; zoo-export writes a directory (fix: out=<a new or existing folder>)")
    if out.is_dir():
        other = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_ENTRIES)
        if other:
            shown = ", ".join(other[:3]) + (", ..." if len(other) > 3 else "")
            raise ConfigError(
                f"out={out} holds other files ({shown}): zoo-export replaces its folder as a whole, so it writes a "
                f"new folder or over a previous export only (fix: out={out / 'export'}, or another new folder)"
            )


def _aside(out: Path) -> tuple[Path, Path]:
    """Where ``_install`` keeps the finished new export and the previous one while it swaps them."""
    return out.parent / f".{out.name}.new", out.parent / f".{out.name}.old"


def _stage_owner(stage: Path, out: Path) -> Optional[int]:
    """The process id in a staging folder's name (``.<out name>.<pid>-<random>.partial``), None when it has none."""
    head = stage.name[len(f".{out.name}.") :].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _alive(pid: Optional[int]) -> bool:
    if pid is None or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


@contextlib.contextmanager
def export_lock(out: Path, ckpt: Path):
    """Hold an exclusive lock on ``out`` (``flock`` on ``.<out name>.lock`` beside it) for one whole zoo-export. The
    install swaps folders through fixed names (``_aside``) and ``recover_install`` takes a missing ``out`` with a
    ``.new`` beside it for a killed run: two exports into one ``out`` at once deleted each other's folders, and one
    took the other's half-installed export for an interrupted one. A second export fails at once, naming the first;
    a killed holder's lock is released by the kernel, so the next run takes it (and recovers the install). The lock
    file is removed while still held: an export that opened it meanwhile sees it is no longer the file at that path
    and locks a new one. The folders made for ``out`` are removed again when the export fails before writing."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): exports into one out= must not run at once
        yield
        return
    path = _lock_path(out)
    made = [d for d in (out.parent, *out.parent.parents) if not d.exists()]  # innermost first
    while True:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            except PermissionError as e:  # another user's lock file: reading is enough to lock it
                if not os.path.exists(path):  # none: the folder is not writable
                    raise e from None
                fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # the folder was just removed by a failed export that made it: make it again
            continue
        except PermissionError as e:  # was a traceback (mkdtemp's, after the checkpoint was read)
            raise ConfigError(
                f"out={out}: zoo-export cannot write in {out.parent} ({e.strerror}): it writes the export beside "
                "out= and renames it into place (fix: out=<a folder in a directory you can write>)"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another zoo-export"
            os.close(fd)
            raise ConfigError(
                f"out={out} is being written by another zoo-export ({holder}): two exports into one folder at "
                "once replace each other's files (fix: wait for it or choose another out=)"
            ) from None
        try:
            held = os.fstat(fd)
            current = os.stat(path)
            if (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder removed that file as it finished: lock the one at the path now
    try:
        with contextlib.suppress(OSError):  # opened read-only: the holder is not named, the lock still holds
            os.ftruncate(fd, 0)
            os.write(fd, f"process {os.getpid()}, ckpt={ckpt}".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
        for d in made:  # only the empty ones: an export installed in them keeps them
            with contextlib.suppress(OSError):
                d.rmdir()


def recover_install(out: Path) -> None:
    """Finish what a zoo-export killed while installing left: ``out`` missing between ``_install``'s two renames
    (the previous export moved aside, the new one not yet in place) becomes the new export when it was set aside
    whole, else the previous one again; then the folders set aside and the staging folders of dead runs are removed.
    Without this, a kill in that window left ``out`` missing, both exports in hidden folders for good, and a re-run
    exported beside them."""
    new, old = _aside(out)
    legacy = sorted(out.parent.glob(f".{out.name}.old-*"))  # the previous scheme's folder, named by the process id
    if not out.exists() and not out.is_symlink():
        for found, what in (
            (new, "the new export"),
            (old, "the previous export"),
            *((d, "the previous export") for d in legacy),
        ):
            if found.is_dir():
                os.rename(found, out)
                log.warning("zoo-export: %s was interrupted while installing: put %s back in place", out, what)
                break
    for d in (new, old, *legacy):
        shutil.rmtree(d, ignore_errors=True)
    for stage in out.parent.glob(f".{out.name}.*.partial"):  # a killed run's half-written export
        if not _alive(_stage_owner(stage, out)):
            shutil.rmtree(stage, ignore_errors=True)


def _install(stage: Path, out: Path) -> None:
    """Put the finished export ``stage`` (a sibling folder) in place of ``out``: renames, so ``out`` is the whole
    previous export or the whole new one, never a mixture of both. The finished export is first renamed to a fixed
    name (``.<out name>.new``) and the previous one moved to another (``.<out name>.old``): a kill between the renames
    leaves both whole under names the next zoo-export (``recover_install``) and ``load_export`` know."""
    from zoo.checkpoint import _umask

    os.chmod(stage, 0o777 & ~_umask())  # mkdtemp's folder is the owner's only
    new, old = _aside(out)
    for d in (new, old):  # recover_install ran before this export: anything here is stale
        shutil.rmtree(d, ignore_errors=True)
    os.rename(stage, new)  # from here on the new export is whole under a known name
    try:
        if out.exists():
            os.rename(out, old)
        os.rename(new, out)
    except BaseException:
        if old.is_dir() and not out.exists():
            os.rename(old, out)
        shutil.rmtree(new, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def export(cfg) -> dict[str, Any]:
    """zoo-export: checkpoint -> out dir (safetensors + config.json, then ONNX graphs if ``onnx``).

    Everything is written into a temporary sibling folder and renamed into place once the weights reloaded
    identically and every graph passed its check: a failure or Ctrl+C leaves ``out`` as it was (absent, or the
    previous export whole), and a re-export leaves no file of the previous one behind."""
    if not cfg.get("ckpt"):
        raise ConfigError("no checkpoint (fix: zoo-export ckpt=/path/to/last.ckpt out=exports/my_model)")
    ckpt = Path(str(cfg.ckpt))
    given = str(cfg.out) if cfg.get("out") else str(ckpt.parent / f"{ckpt.stem}_export")
    # absolute: out=. or out=.. named no folder to rename (an OSError after the whole export) and put the lock and
    # the folders set aside in the wrong place
    out = Path(os.path.abspath(os.path.expanduser(given)))
    if out.is_symlink():  # replace the folder it points to, not the link
        out = out.resolve()
    check_ckpt_path(ckpt)
    if out == Path.cwd() or out in Path.cwd().parents:
        where = "the folder zoo-export runs in" if out == Path.cwd() else "a folder holding the one zoo-export runs in"
        raise ConfigError(
            f"out={given} is {where}: the export replaces out= as a whole, which would move the working folder away "
            "(fix: out=<a folder name>, e.g. out=export)"
        )
    with export_lock(out, ckpt):
        summary = _export_locked(cfg, ckpt, out)
    _print_summary(summary)
    return summary


def _export_locked(cfg, ckpt: Path, out: Path) -> dict[str, Any]:
    """``export`` from its first look at ``out`` to the installed export, with ``export_lock`` held."""
    recover_install(out)  # before check_out_dir: out may be missing only because a kill interrupted an install
    check_out_dir(out)
    weights = check_weights(str(cfg.get("weights") or "ema"))
    onnx, graphs = check_onnx_options(cfg.get("onnx", True), cfg.get("graphs"))
    with open_dict(cfg):  # _export_into reads them as checked
        cfg.onnx, cfg.graphs = onnx, graphs
    check_packages(onnx)
    if onnx:
        check_opset(cfg.get("opset", 17))
        check_batches(cfg.get("export_batch", 2), cfg.get("check_batch", 3))
    name, module, hp = load_checkpoint(ckpt, weights)
    check_finite(module, ckpt)
    apply_trained_resolution(name, module, str(ckpt))
    if onnx and graphs:  # a misspelt graph name would silently export no graph
        known = [g.name for g in onnx_graphs(name, module)]
        unknown = [g for g in graphs if g not in known]
        if unknown:
            raise ConfigError(
                f"graphs={unknown}: {name} has "
                + (
                    f"the ONNX graphs {known} (fix: graphs=[{','.join(known)}], or graphs=null for all)"
                    if known
                    else "no ONNX graph (fix: graphs=null, or onnx=false)"
                )
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    # the process id in the name: recover_install removes the stages of dead runs only
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}-", suffix=".partial", dir=out.parent))
    try:
        summary = _export_into(stage, out, cfg, name, module, hp)
        _install(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # gone already when installed
    return summary


def _export_into(stage: Path, out: Path, cfg, name: str, module: nn.Module, hp: dict[str, Any]) -> dict[str, Any]:
    """The export written into ``stage``; the summary names the files as they will be in ``out``."""
    files = save_export(module, stage, name, hp)
    summary: dict[str, Any] = {
        "component": name,
        "out": str(out),
        "safetensors_bytes": files["weights"].stat().st_size,
        "config_bytes": files["config"].stat().st_size,
    }
    # round trip: the export rebuilds to identical weights (else it is not installed)
    again = load_export(stage)
    sd0, sd1 = module.state_dict(), again.state_dict()
    same = sd0.keys() == sd1.keys() and all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    if not same:
        raise RuntimeError(f"the export of {name} does not reload to the checkpoint's weights; {out} left as it was")
    summary["reload_identical_weights"] = True
    if cfg.get("onnx", True):
        graphs = list(cfg.graphs) if cfg.get("graphs") else None
        rep = export_onnx(
            name,
            module,
            stage / "onnx",
            int(cfg.get("opset", 17)),
            int(cfg.get("export_batch", 2)),
            int(cfg.get("check_batch", 3)),
            graphs,
        )
        if rep:  # the paths where the files will be, not the temporary folder's
            for g, info in rep.items():
                info["path"] = str(out / "onnx" / Path(info["path"]).name)
            (stage / "onnx" / "report.json").write_text(json.dumps(rep, indent=2))
        summary["onnx"] = rep
        if not rep:
            summary["onnx_note"] = f"no ONNX graph for {name} (safetensors + config.json only)"
    return summary


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _print_summary(s: dict[str, Any]) -> None:
    print(f"{s['component']} -> {s['out']}")
    print(
        f"  model.safetensors {_fmt_bytes(s['safetensors_bytes'])}, config.json {_fmt_bytes(s['config_bytes'])}, "
        f"reload identical: {s['reload_identical_weights']}"
    )
    for g, info in (s.get("onnx") or {}).items():
        extra = "".join(
            f", {k} {v:.4g}" for k, v in info.items() if k.endswith(("agreement", "uncached_max_abs_error"))
        )
        print(
            f"  onnx/{g}.onnx {_fmt_bytes(info['bytes'])}: max abs error {info['max_abs_error']:.3g} "
            f"(onnxruntime vs PyTorch, batch {info['batch']}){extra}"
        )
    if s.get("onnx_note"):
        print(f"  {s['onnx_note']}")


main = entry_point(export, "export")


if __name__ == "__main__":
    main()
