"""``zoo-convert``: published checkpoints (local files) -> zoo-train-style checkpoints our loaders accept.

Each converter reads a state dict with the PUBLISHED key names (read from the public sources, cited below), maps it
onto our classes, checks every shape, and refuses with a message naming the key when anything does not fit. The
output is what ``zoo-train`` writes (``zoo_component`` stamp, plain ``hyper_parameters``, ``state_dict``), so
``zoo-tokenize``, ``zoo-sample``, ``zoo-export`` and ``model.image_tokenizer_ckpt=`` take it. Nothing is downloaded;
files are read with ``weights_only=True`` (no code runs).

What converts, and what does not:

- ``dalle_dvae`` -- OpenAI's released DALL·E dVAE (github.com/openai/DALL-E, ``dall_e/encoder.py``,
  ``decoder.py``, ``utils.py``): ALL weights map onto ``zoo.models.dvae`` (same bottleneck resblocks, id_path 1x1
  convs where widths change, post_gain 1/n_layers**2, max-pool / nearest upsampling, 8192 codes, n_hid 256,
  n_init 128, 6 output channels = logit-Laplace mu and ln b; the released ``Conv2d`` keeps ``w``/``b``).
  Decoder: exact (our ``output_to_image`` is the released ``unmap_pixels(sigmoid(x[:, :3]))``, returned in
  [-1, 1]). Encoder: the released one reads ``map_pixels(x01) = 0.8 x01 + 0.1``, ours reads x in [-1, 1]; the
  affine map 0.4 x + 0.5 is folded into the 7x7 stem conv (w' = 0.4 w, b' = b + 0.5 sum w). That is exact
  everywhere except where the stem's window overlaps its zero padding (the 3-pixel border): the released model pads
  the MAPPED image with 0 (pixel value -1.25 in our range), ours pads with 0 (pixel value 0.5 after mapping); a
  padding value cannot be expressed in weights. ``dalle_dvae_stem_error`` measures the effect; the test checks
  exactness with the padding made explicit. The released files are pickled MODULES (``torch.save(model)``), which
  only the ``dall_e`` package can unpickle: save their state dicts once with it (see README).
- ``taming_vq`` / ``taming_gumbel`` -- taming-transformers' VQGAN (``taming/models/vqgan.py`` ``VQModel``,
  ``taming/modules/vqvae/quantize.py`` ``VectorQuantizer2``) and Gumbel-VQ (``GumbelVQ``, ``GumbelQuantize``).
  ONLY THE CODEBOOK converts: ``quantize.embedding.weight`` (VQ) / ``quantize.embed.weight`` (Gumbel), (n_embed,
  embed_dim), becomes our ``VectorQuantizer`` codebook (nearest neighbour by squared Euclidean distance, the same
  rule as ``VectorQuantizer2``; the code -> vector lookup is the same for both). The encoder/decoder do not: taming's
  ``Encoder``/``Decoder`` (``taming/modules/diffusionmodules/model.py``) are GroupNorm + swish resblocks with
  non-local attention blocks, ``ch_mult`` levels and ``quant_conv``/``post_quant_conv``; our VQ-VAE is a different,
  smaller network (norm-free GELU resblocks, strided-conv downsampling, no attention), so there is nothing to load
  them into. Gumbel-VQ's ``quantize.proj`` (1x1 conv to code logits, codes chosen by argmax) has no counterpart
  either (our quantizer picks the nearest code). The written VQ-VAE checkpoint therefore has a published codebook
  and FRESHLY INITIALISED encoder/decoder: a starting point for training, not a working tokenizer; the file says so
  (``zoo_converted.untrained``).
- ``open_clip`` -- any open_clip checkpoint file (``open_clip_model.safetensors``, ``.bin``, ``.pt``, open_clip's
  training ``{"state_dict": ...}``) for a given architecture loads through ``ClipLit(arch=..., checkpoint=...)``
  (open_clip's own loader); this writes it as a zoo ``clip`` checkpoint.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from zoo.config import entry_point
from zoo.errors import ConfigError

log = logging.getLogger("zoo.convert")

LOGIT_LAPLACE_EPS = 0.1  # dall_e/utils.py logit_laplace_eps
# map_pixels(x01) = (1 - 2 eps) x01 + eps with x01 = (x + 1) / 2  ->  MAP_SCALE * x + MAP_SHIFT for x in [-1, 1]
MAP_SCALE = (1 - 2 * LOGIT_LAPLACE_EPS) / 2  # 0.4
MAP_SHIFT = MAP_SCALE + LOGIT_LAPLACE_EPS  # 0.5
RELEASED_PAD_PIXEL = -MAP_SHIFT / MAP_SCALE  # -1.25: the pixel (our range) the released stem's zero padding stands for


class ConversionError(ConfigError):
    """A published state dict does not fit the class it is converted to (a key is missing, extra or mis-shaped)."""


# ------------------------------------------------------------------------------------------------- reading
def read_state_dict(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """A state dict from a local file: safetensors, or a torch file loaded with ``weights_only=True`` (a bare
    state dict, or a dict with ``state_dict`` as Lightning / open_clip training checkpoints have)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what}: {p} not found (check the path)")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    from zoo.checkpoint import safe_load
    from zoo.registry import UnsafeCheckpointError

    try:
        obj = safe_load(p)
    except UnsafeCheckpointError as e:
        raise ConversionError(
            f"{what}: {p} holds pickled objects, not only tensors ({e}). The released DALL·E dVAE files are pickled "
            f'modules: with the dall_e package installed, save their state dicts once -- python -c "import torch, '
            f"dall_e; torch.save(dall_e.load_model('{p.name}').state_dict(), '{p.stem}_state_dict.pt')\" -- or, for "
            f"a Lightning .ckpt you trust, torch.save(torch.load(f, weights_only=False)['state_dict'], out)"
        ) from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConversionError(f"{what}: {p} is not a state dict (a mapping of names to tensors)")
    return dict(obj)


def _check_shapes(
    mapped: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], src_names: Mapping[str, str], what: str
) -> None:
    for k, v in mapped.items():
        if k not in target:
            raise ConversionError(f"{what}: {src_names.get(k, k)} maps to {k}, which our model does not have")
        if tuple(v.shape) != tuple(target[k].shape):
            raise ConversionError(
                f"{what}: {src_names.get(k, k)} has shape {tuple(v.shape)} but our {k} is "
                f"{tuple(target[k].shape)}; the published model and the config inferred from it "
                f"disagree -- this file is not the layout zoo-convert knows"
            )


# --------------------------------------------------------------------------------- OpenAI DALL·E dVAE
_GROUP = re.compile(r"^blocks\.group_(\d+)\.block_(\d+)\.")


def _dalle_layout(sd: Mapping[str, torch.Tensor], what: str) -> tuple[int, int]:
    """(group_count, n_blk_per_group) from the key names, checking every group has the same block count."""
    for key in ("blocks.input.w", "blocks.input.b", "blocks.output.conv.w", "blocks.output.conv.b"):
        if key not in sd:
            raise ConversionError(
                f"{what}: no {key!r}: not a dall_e Encoder/Decoder state dict (its keys: {sorted(sd)[:6]}...)"
            )
    blocks: dict[int, set[int]] = {}
    for k in sd:
        m = _GROUP.match(k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if not blocks or sorted(blocks) != list(range(1, len(blocks) + 1)):
        raise ConversionError(f"{what}: groups {sorted(blocks)} are not group_1 .. group_N")
    counts = {len(v) for v in blocks.values()}
    if len(counts) != 1:
        raise ConversionError(f"{what}: groups have different block counts {counts}")
    return len(blocks), counts.pop()


def _map_blocks(
    sd: Mapping[str, torch.Tensor], seq, block_type, prefix: str, n_groups: int, n_blk: int, what: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """dall_e ``blocks.*`` keys -> our ``<prefix>.<index>.*`` keys (our Sequential: stem conv, resblocks with
    pool/upsample between groups, ReLU, output conv)."""
    out: dict[str, torch.Tensor] = {}
    src: dict[str, str] = {}
    block_idx = [i for i, m in enumerate(seq) if isinstance(m, block_type)]
    if len(block_idx) != n_groups * n_blk:
        raise ConversionError(f"{what}: {n_groups} x {n_blk} published blocks but our model has {len(block_idx)}")

    def put(ours: str, theirs: str):
        if theirs not in sd:
            raise ConversionError(f"{what}: missing {theirs!r}")
        out[ours] = sd[theirs].float()
        src[ours] = theirs

    put(f"{prefix}.0.weight", "blocks.input.w")
    put(f"{prefix}.0.bias", "blocks.input.b")
    for g in range(n_groups):
        for b in range(n_blk):
            i = block_idx[g * n_blk + b]
            theirs = f"blocks.group_{g + 1}.block_{b + 1}"
            if f"{theirs}.id_path.w" in sd:
                put(f"{prefix}.{i}.id_path.weight", f"{theirs}.id_path.w")
                put(f"{prefix}.{i}.id_path.bias", f"{theirs}.id_path.b")
            for j in range(1, 5):  # res_path: relu_1 conv_1 relu_2 conv_2 ... -> Sequential indices 1, 3, 5, 7
                put(f"{prefix}.{i}.res_path.{2 * j - 1}.weight", f"{theirs}.res_path.conv_{j}.w")
                put(f"{prefix}.{i}.res_path.{2 * j - 1}.bias", f"{theirs}.res_path.conv_{j}.b")
    last = len(seq) - 1
    put(f"{prefix}.{last}.weight", "blocks.output.conv.w")
    put(f"{prefix}.{last}.bias", "blocks.output.conv.b")
    unused = sorted(set(sd) - set(src.values()))
    if unused:
        raise ConversionError(f"{what}: published keys with no place in our model: {unused[:8]}")
    return out, src


def dalle_dvae_config(
    encoder_sd: Mapping[str, torch.Tensor], decoder_sd: Mapping[str, torch.Tensor], resolution: int = 256
) -> dict[str, Any]:
    """Our ``DVAEConfig`` fields (plain values) read off the released state dicts' shapes."""
    g_e, b_e = _dalle_layout(encoder_sd, "dall_e encoder")
    g_d, b_d = _dalle_layout(decoder_sd, "dall_e decoder")
    n_hid = int(encoder_sd["blocks.input.w"].shape[0])
    vocab = int(encoder_sd["blocks.output.conv.w"].shape[0])
    if (g_e, b_e) != (g_d, b_d):
        raise ConversionError(f"encoder has {g_e} groups x {b_e} blocks, decoder {g_d} x {b_d}: not a pair")
    if int(decoder_sd["blocks.input.w"].shape[1]) != vocab:
        raise ConversionError(
            f"encoder emits {vocab} codes but the decoder reads "
            f"{int(decoder_sd['blocks.input.w'].shape[1])}: not a pair"
        )
    if int(decoder_sd["blocks.output.conv.w"].shape[0]) != 6:
        raise ConversionError(
            "the decoder's output conv does not emit 6 channels (logit-Laplace mu, ln b for RGB); "
            "our dVAE decodes exactly that"
        )
    if int(encoder_sd["blocks.input.w"].shape[1]) != 3:
        raise ConversionError("the encoder does not read 3 input channels; our dVAE reads RGB")
    if g_e > 4:
        raise ConversionError(f"{g_e} groups: our DVAEConfig has width multipliers for at most 4")
    return {
        "resolution": int(resolution),
        "vocab_size": vocab,
        "n_hid": n_hid,
        "n_groups": g_e,
        "n_blk_per_group": b_e,
        "n_init": int(decoder_sd["blocks.input.w"].shape[0]),
        "out_channels": 6,
        "width_mults": [1, 2, 4, 8],
        "logit_init_gain": 1.0,
    }


def fold_map_pixels(w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A conv reading map_pixels(x01) = (1 - 2 eps) (x + 1) / 2 + eps -> the same conv reading x in [-1, 1]
    (exact away from the zero padding): w' = s w, b' = b + c sum(w) with s = (1 - 2 eps) / 2, c = 0.5."""
    return w * MAP_SCALE, b + MAP_SHIFT * w.sum(dim=(1, 2, 3))


def convert_dalle_dvae(
    encoder_sd: Mapping[str, torch.Tensor], decoder_sd: Mapping[str, torch.Tensor], resolution: int = 256
):
    """OpenAI's dall_e Encoder + Decoder state dicts -> our ``DVAELit`` (eval mode) with those weights."""
    from zoo.models.dvae.lit import DVAELit
    from zoo.models.dvae.model import DecoderBlock, EncoderBlock

    net = dalle_dvae_config(encoder_sd, decoder_sd, resolution)
    lit = DVAELit(preset="paper", net=dict(net))
    dv = lit.dvae
    enc, src_e = _map_blocks(
        encoder_sd, dv.encoder, EncoderBlock, "dvae.encoder", net["n_groups"], net["n_blk_per_group"], "dall_e encoder"
    )
    enc["dvae.encoder.0.weight"], enc["dvae.encoder.0.bias"] = fold_map_pixels(
        enc["dvae.encoder.0.weight"], enc["dvae.encoder.0.bias"]
    )
    dec, src_d = _map_blocks(
        decoder_sd, dv.decoder, DecoderBlock, "dvae.decoder", net["n_groups"], net["n_blk_per_group"], "dall_e decoder"
    )
    mapped = {**enc, **dec}
    target = lit.state_dict()
    _check_shapes(mapped, target, {**src_e, **src_d}, "dall_e dVAE")
    missing = sorted(set(target) - set(mapped))
    if missing:
        raise ConversionError(f"dall_e dVAE: our keys with no published weights: {missing[:8]}")
    lit.load_state_dict(mapped, strict=True)
    return lit.eval()


@torch.no_grad()
def dalle_dvae_stem_error(lit, images: torch.Tensor) -> dict[str, float]:
    """How much the folded input map changes the converted encoder (the border-padding difference): fraction of
    grid cells whose code differs from the exact released computation, on ``images`` in [-1, 1]."""
    import torch.nn.functional as F

    dv = lit.dvae
    stem = dv.encoder[0]
    pad = stem.padding[0]
    # the released model pads the mapped image with 0: in our range, the pixel x with 0.4 x + 0.5 = 0, x = -1.25
    exact_stem = F.conv2d(F.pad(images, (pad,) * 4, value=RELEASED_PAD_PIXEL), stem.weight, stem.bias)
    exact = dv.encoder[1:](exact_stem)
    ours = dv.logits(images)
    return {
        "code_agreement": float((exact.argmax(1) == ours.argmax(1)).float().mean()),
        "max_abs_logit_error": float((exact - ours).abs().max()),
    }


# --------------------------------------------------------------------------------- taming VQGAN / Gumbel-VQ
TAMING_CODEBOOK_KEYS = {"taming_vq": "quantize.embedding.weight", "taming_gumbel": "quantize.embed.weight"}


def taming_codebook(sd: Mapping[str, torch.Tensor], kind: str) -> torch.Tensor:
    """The (n_embed, embed_dim) codebook of a taming VQModel / GumbelVQ state dict."""
    if kind not in TAMING_CODEBOOK_KEYS:
        raise ConfigError(f"kind={kind!r}; taming converters: {sorted(TAMING_CODEBOOK_KEYS)}")
    key = TAMING_CODEBOOK_KEYS[kind]
    if key not in sd:
        other = [k for k in TAMING_CODEBOOK_KEYS.values() if k in sd]
        hint = (
            f" (it has {other[0]!r}: use kind={[n for n, k in TAMING_CODEBOOK_KEYS.items() if k == other[0]][0]})"
            if other
            else ""
        )
        raise ConversionError(f"{kind}: no {key!r} in the state dict{hint}")
    w = sd[key]
    if w.ndim != 2:
        raise ConversionError(f"{kind}: {key} has shape {tuple(w.shape)}, expected (n_embed, embed_dim)")
    if kind == "taming_gumbel" and "quantize.proj.weight" in sd and sd["quantize.proj.weight"].shape[0] != w.shape[0]:
        raise ConversionError(
            f"{kind}: quantize.proj emits {sd['quantize.proj.weight'].shape[0]} logits for a {w.shape[0]}-code codebook"
        )
    return w.float().clone()


def convert_taming_codebook(
    sd: Mapping[str, torch.Tensor], kind: str = "taming_vq", preset: str = "paper", resolution: Optional[int] = None
):
    """A ``VQVAELit`` whose quantizer holds taming's codebook (encoder/decoder freshly initialised: see the module
    docstring for why they cannot be converted)."""
    from zoo.models.vqvae.lit import VQVAELit

    cb = taming_codebook(sd, kind)
    k, d = cb.shape
    net: dict[str, Any] = {"codebook_size": int(k), "dim": int(d)}
    if resolution:
        net["resolution"] = int(resolution)
    lit = VQVAELit(preset=preset, net=net)
    q = lit.vqvae.quantizer
    with torch.no_grad():
        q.embed.copy_(cb)
        if hasattr(q, "embed_sum"):
            q.embed_sum.copy_(cb * q.cluster_size[:, None])  # EMA state consistent with the codebook
        q.initialized.fill_(True)
    return lit.eval()


# --------------------------------------------------------------------------------- open_clip
def convert_open_clip(path: str | os.PathLike, arch: str):
    """A local open_clip checkpoint of architecture ``arch`` -> our ``ClipLit`` (open_clip's own loader)."""
    from zoo.models.clip.lit import ClipLit

    if not Path(path).is_file():
        raise FileNotFoundError(f"open_clip checkpoint {path} not found")
    return ClipLit(arch=arch, checkpoint=str(path)).eval()


# --------------------------------------------------------------------------------- writing
def save_converted(lit, out: str | os.PathLike, source: dict[str, Any]) -> Path:
    """Write ``lit`` as a zoo-train-style checkpoint (``zoo_component``, plain hyper-parameters, state dict) plus
    a ``zoo_converted`` record of where it came from."""
    from zoo.checkpoint import atomic_torch_save
    from zoo.export import checkpoint_dict
    from zoo.nn.image_tokenizer import find_image_tokenizer

    ck = checkpoint_dict(lit)
    try:
        tok = find_image_tokenizer(lit)
    except ValueError:
        tok = None
    if tok is not None:
        # A data config as zoo-train records it (a registered DataModule, plain values): the resolution the tokenizer
        # is used at (DALL·E's model.image_tokenizer_ckpt= reads it) and images for zoo-sample's reconstruction grid
        # (the built-in shapes world; no training data of the published model is implied).
        ck["zoo_config"] = {
            "data": {"_target_": "zoo.data.modules.ShapesDataModule", "resolution": int(tok.resolution)}
        }
    ck["zoo_converted"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in source.items()}
    return atomic_torch_save(ck, out)


def convert(cfg) -> Path:
    kind = cfg.get("kind")
    out = cfg.get("out")
    if not out:
        raise ConfigError("no output path (fix: zoo-convert kind=... out=converted/<name>.ckpt)")
    if kind == "dalle_dvae":
        if not cfg.get("encoder") or not cfg.get("decoder"):
            raise ConfigError(
                "kind=dalle_dvae needs both encoder=<encoder state dict> and decoder=<decoder state dict>"
            )
        lit = convert_dalle_dvae(
            read_state_dict(cfg.encoder, "encoder"),
            read_state_dict(cfg.decoder, "decoder"),
            int(cfg.get("resolution") or 256),
        )
        source = {
            "kind": kind,
            "encoder": str(cfg.encoder),
            "decoder": str(cfg.decoder),
            "note": "encoder input map folded into the stem conv (exact except the 3-pixel border)",
        }
    elif kind in TAMING_CODEBOOK_KEYS:
        if not cfg.get("ckpt"):
            raise ConfigError(f"kind={kind} needs ckpt=<taming .ckpt or its state dict>")
        lit = convert_taming_codebook(
            read_state_dict(cfg.ckpt, kind), kind, cfg.get("preset") or "paper", cfg.get("resolution")
        )
        source = {
            "kind": kind,
            "ckpt": str(cfg.ckpt),
            "untrained": ["encoder", "decoder"],
            "note": "codebook only: taming's encoder/decoder are a different network; train this VQ-VAE "
            "before tokenizing",
        }
        log.warning("%s: only the codebook was converted; the VQ-VAE's encoder/decoder are freshly initialised", kind)
    elif kind == "open_clip":
        if not cfg.get("ckpt") or not cfg.get("arch"):
            raise ConfigError(
                "kind=open_clip needs ckpt=<open_clip file> and arch=<open_clip architecture, e.g. ViT-B-32>"
            )
        lit = convert_open_clip(cfg.ckpt, cfg.arch)
        source = {"kind": kind, "ckpt": str(cfg.ckpt), "arch": str(cfg.arch)}
    else:
        raise ConfigError(f"kind={kind!r}; expected one of dalle_dvae, taming_vq, taming_gumbel, open_clip")
    path = save_converted(lit, out, source)
    print(path)
    return path


main = entry_point(convert, "convert")


if __name__ == "__main__":
    main()
