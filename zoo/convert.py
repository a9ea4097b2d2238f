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
  ``taming/modules/vqvae/quantize.py`` ``VectorQuantizer2``) and Gumbel-VQ (``GumbelVQ``, ``GumbelQuantize``):
  ALL weights of the autoencoder map onto ``zoo.models.vqgan`` (component ``vqgan``), whose network
  (``zoo.nn.taming_vq``) has taming's parameter names and shapes (``encoder.*``, ``decoder.*`` from
  ``taming/modules/diffusionmodules/model.py``, ``quant_conv``, ``post_quant_conv``, ``quantize.embedding`` /
  ``quantize.proj`` + ``quantize.embed``), so the conversion copies every key and checks every shape. ``loss.*``
  (the patch discriminator and LPIPS's VGG, training only) is dropped and counted. The config (``ch``, ``ch_mult``,
  ``num_res_blocks``, ``z_channels``, ``embed_dim``, ``n_embed``, which levels have attention) is INFERRED from the
  shapes and key names; only ``attn_resolutions`` is stated relative to ``resolution`` (256 unless the user passes
  ``resolution=`` or the run's ``configs/model.yaml`` as ``taming_config=``, which is then cross-checked field by
  field). ``zoo-convert`` records the resolution the model trained at (``zoo_config.data.resolution``): from
  ``taming_config`` or ``resolution=``, refused when neither is given (the weights do not say it). Codes: VQ, the
  nearest codebook entry (``VectorQuantizer2``'s rule); Gumbel, the argmax of ``quantize.proj``'s logits (taming's
  forward adds Gumbel noise even in eval mode; the argmax is its noise-free mode). Images are [-1, 1] on both sides.
  A checkpoint holding the VQGAN under ``first_stage_model.`` (taming's ``Net2NetTransformer``) converts too. Index remapping (``quantize.used``, the ``remap`` option) is refused.
- ``open_clip`` -- any open_clip checkpoint file (``open_clip_model.safetensors``, ``.bin``, ``.pt``, open_clip's
  training ``{"state_dict": ...}``) for a given architecture loads through ``ClipLit(arch=..., checkpoint=...)``
  (open_clip's own loader); this writes it as a zoo ``clip`` checkpoint. ``pretrained=<tag>`` names the open_clip
  tag the file was released under (e.g. ``openai``): the tag, not the file, says the activation (QuickGELU) and the
  image mean / std, and it is recorded; an architecture whose tags disagree on those is refused without one
  (``pretrained=none``: the architecture's own settings, e.g. one's own open_clip run).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from zoo.config import entry_point
from zoo.errors import ConfigError, check_whole

log = logging.getLogger("zoo.convert")

LOGIT_LAPLACE_EPS = 0.1  # dall_e/utils.py logit_laplace_eps
# map_pixels(x01) = (1 - 2 eps) x01 + eps with x01 = (x + 1) / 2  ->  MAP_SCALE * x + MAP_SHIFT for x in [-1, 1]
MAP_SCALE = (1 - 2 * LOGIT_LAPLACE_EPS) / 2  # 0.4
MAP_SHIFT = MAP_SCALE + LOGIT_LAPLACE_EPS  # 0.5
RELEASED_PAD_PIXEL = -MAP_SHIFT / MAP_SCALE  # -1.25: the pixel (our range) the released stem's zero padding stands for


class ConversionError(ConfigError):
    """A published state dict does not fit the class it is converted to (a key is missing, extra or mis-shaped)."""


# ------------------------------------------------------------------------------------------------- reading
# (not dall_e.load_model: it calls torch.load(f) without weights_only, which torch >= 2.6 reads as weights_only=True and
# so refuses the very modules it should load; and the file is named by its full path, the command may run elsewhere)
DALL_E_PICKLE_FIX = (
    "The released DALL·E dVAE files are pickled modules: with the dall_e package installed (its classes unpickle "
    'them) and only for a file you trust, save their state dicts once -- python -c "import torch, dall_e; '
    "torch.save(torch.load('{path}', map_location='cpu', weights_only=False).state_dict(), '{stem}_state_dict.pt')\" "
    "-- then pass {stem}_state_dict.pt; or, for a Lightning .ckpt you trust, "
    "torch.save(torch.load(f, weights_only=False)['state_dict'], out)"
)


TORCHSCRIPT_FIX = (
    "For a file you trust, save its weights once: python -c \"import torch; torch.save(torch.jit.load('{path}', "
    "map_location='cpu').state_dict(), '{stem}_state_dict.pt')\" -- then pass {stem}_state_dict.pt"
)
# OpenAI's original CLIP release (ViT-B-32.pt, RN50.pt, ...): open_clip's own loader rebuilds it as an open_clip model
OPENAI_CLIP_TORCHSCRIPT_FIX = (
    "OpenAI's original CLIP files are such archives; for a file you trust, save its weights once in open_clip's "
    "layout: python -c \"import torch, open_clip; torch.save(open_clip.load_openai_model('{path}', device='cpu')"
    ".state_dict(), '{stem}_state_dict.pt')\" -- then pass ckpt={stem}_state_dict.pt pretrained=openai"
)


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """True for a ``torch.jit.save`` archive (its zip holds ``constants.pkl``, as torch itself tells them apart); only
    the zip's directory is read."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as z:
            return any(n.rsplit("/", 1)[-1] == "constants.pkl" for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def refuse_torchscript(path: str | os.PathLike, what: str, fix: str = TORCHSCRIPT_FIX) -> None:
    """A TorchScript archive is a program, not a state dict: ``torch.load(weights_only=True)`` refuses it with a
    RuntimeError that the loaders report as a truncated file ("copy it again"), the wrong fix. Say what it is."""
    p = Path(path)
    if is_torchscript_archive(p):
        raise ConversionError(
            f"{what}: {p} is a TorchScript archive (a saved program), not a state dict -- refused: zoo-convert reads "
            f"weights only, so no code in it runs. " + fix.format(name=p.name, stem=p.stem, path=p)
        )


def read_state_dict(path: str | os.PathLike, what: str, fix: Optional[str] = None) -> dict[str, torch.Tensor]:
    """A state dict from a local file: safetensors, or a torch file loaded with ``weights_only=True`` (a bare
    state dict, or a dict with ``state_dict`` as Lightning / open_clip training checkpoints have). ``fix``: what to
    tell the user when the file pickles more than tensors (``{name}`` / ``{stem}`` / ``{path}`` are filled in)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what}: {p} not found (check the path)")
    # the files zoo-convert reads come from elsewhere (a release, another project's run): when one is damaged, the
    # fix is to copy it again, not safe_load's default advice to pick another of this project's checkpoints
    damaged = "copy the file again from where it came from (a download or copy did not finish)"
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except Exception as e:  # safetensors' own error on a truncated header or body names no file
            raise ConversionError(f"{what}: {p} is truncated or not a safetensors file ({e}); {damaged}") from None
    from zoo.checkpoint import safe_load
    from zoo.registry import UnsafeCheckpointError

    refuse_torchscript(p, what)
    try:
        obj = safe_load(p, fix=damaged)
    except UnsafeCheckpointError as e:
        named = _pickled_globals(p)
        raise ConversionError(
            f"{what}: {p} holds pickled objects, not only tensors"
            + (f" (it names {', '.join(named[:4])})" if named else f" ({e})")
            + " -- refused: zoo-convert reads files with weights_only=True, so no code in them runs. "
            + (fix or DALL_E_PICKLE_FIX).format(name=p.name, stem=p.stem, path=p)
        ) from None
    if isinstance(obj, Mapping) and ("zoo_component" in obj or "zoo_class" in obj):
        # a zoo checkpoint's keys carry our attribute prefixes (vqgan., dvae., clip.): read as a published state
        # dict it was refused as "no 'quantize.embedding.weight'", which says nothing of what the file is
        made = obj.get("zoo_component") or obj.get("zoo_class")
        how = "zoo-convert" if "zoo_converted" in obj else "zoo-train"
        raise ConversionError(
            f"{what}: {p} is already a zoo checkpoint (component {made!r}, written by {how}), not a published state "
            f"dict: nothing to convert (fix: pass it where a zoo checkpoint goes, e.g. model.image_tokenizer_ckpt= "
            f"or zoo-tokenize tokenizer_ckpt=; zoo-convert takes the original release's file)"
        )
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConversionError(f"{what}: {p} is not a state dict (a mapping of names to tensors)")
    return dict(obj)


def _pickled_globals(path: Path) -> list[str]:
    """The classes / functions a torch file's pickle names beyond what ``weights_only`` allows (read from the pickle's
    opcodes by torch, nothing is imported or run); empty if that cannot be told."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # an older torch, or not a zip checkpoint
        return []


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
    enc_in, dec_in = int(encoder_sd["blocks.input.w"].shape[1]), int(decoder_sd["blocks.input.w"].shape[1])
    if enc_in != 3 and dec_in == 3:
        raise ConversionError(
            f"the state dict given as encoder= reads {enc_in} channels (codes: a dall_e Decoder) and the one given as "
            f"decoder= reads 3 (an RGB image: a dall_e Encoder): the two files are swapped (fix: swap encoder= and "
            f"decoder=)"
        )
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
    f = 2 ** (g_e - 1)
    if int(resolution) <= 0 or int(resolution) % f:
        # recorded as the size the tokenizer works at: 36 px would be max-pooled to a 4x4 grid that decodes to 32 px
        raise ConversionError(
            f"dall_e dVAE: resolution={resolution} is not a positive multiple of the downsample factor {f} "
            f"({g_e} groups) (fix: resolution=256, the released dVAE's, or another multiple of {f})"
        )
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
    dec, src_d = _map_blocks(
        decoder_sd, dv.decoder, DecoderBlock, "dvae.decoder", net["n_groups"], net["n_blk_per_group"], "dall_e decoder"
    )
    mapped = {**enc, **dec}
    target = lit.state_dict()
    _check_shapes(mapped, target, {**src_e, **src_d}, "dall_e dVAE")
    # folded only once the shapes are known to fit: a stem bias of another width than its weight was torch's
    # "size of tensor a (8) must match the size of tensor b (9)" here, naming neither tensor
    mapped["dvae.encoder.0.weight"], mapped["dvae.encoder.0.bias"] = fold_map_pixels(
        mapped["dvae.encoder.0.weight"], mapped["dvae.encoder.0.bias"]
    )
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
TAMING_KINDS = tuple(TAMING_CODEBOOK_KEYS)
TAMING_TARGETS = {"taming_vq": "VQModel", "taming_gumbel": "GumbelVQ"}  # the class model.target names in a config
TAMING_TRAINING_PREFIX = "loss."  # VQLPIPSWithDiscriminator: patch discriminator + LPIPS (VGG16), training only
TAMING_SUBMODEL_PREFIX = "first_stage_model."  # where a taming Net2NetTransformer checkpoint holds its VQGAN
DEFAULT_TAMING_RESOLUTION = 256  # every published VQGAN config (ddconfig.resolution)
TAMING_PICKLE_FIX = (
    "taming's Lightning .ckpt files can carry more than tensors (PyTorch Lightning 1.x keys callback states by the "
    "callback's class). Extract the state dict once, with a torch that may unpickle it (pytorch_lightning installed) "
    "and only for a file you trust: python -c \"import torch; torch.save(torch.load('{path}', map_location='cpu', "
    "weights_only=False)['state_dict'], '{stem}_state_dict.pt')\" -- then pass ckpt={stem}_state_dict.pt"
)
_TAMING_LEVEL = re.compile(r"^(encoder\.down|decoder\.up)\.(\d+)\.(block|attn)\.(\d+)\.")


def taming_codebook(sd: Mapping[str, torch.Tensor], kind: str) -> torch.Tensor:
    """The (n_embed, embed_dim) codebook of a taming VQModel / GumbelVQ state dict (naming the other kind when the
    file is that one)."""
    if kind not in TAMING_CODEBOOK_KEYS:
        raise ConfigError(f"kind={kind!r}; taming converters: {sorted(TAMING_CODEBOOK_KEYS)}")
    key = TAMING_CODEBOOK_KEYS[kind]
    if key not in sd:
        other = [n for n, k in TAMING_CODEBOOK_KEYS.items() if k in sd]
        hint = f" (it has {TAMING_CODEBOOK_KEYS[other[0]]!r}: use kind={other[0]})" if other else ""
        raise ConversionError(f"{kind}: no {key!r} in the state dict{hint}")
    w = sd[key]
    if w.ndim != 2:
        raise ConversionError(f"{kind}: {key} has shape {tuple(w.shape)}, expected (n_embed, embed_dim)")
    if kind == "taming_gumbel" and "quantize.proj.weight" in sd and sd["quantize.proj.weight"].shape[0] != w.shape[0]:
        raise ConversionError(
            f"{kind}: quantize.proj emits {sd['quantize.proj.weight'].shape[0]} logits for a {w.shape[0]}-code codebook"
        )
    return w


def taming_autoencoder_state(sd: Mapping[str, torch.Tensor], kind: str) -> tuple[dict[str, torch.Tensor], int]:
    """(the autoencoder's own weights, how many training-only ``loss.*`` keys were dropped) from a taming state dict.
    A Net2NetTransformer's VQGAN (``first_stage_model.*``) is taken when the file holds no bare one."""
    sd = dict(sd)
    if "encoder.conv_in.weight" not in sd and f"{TAMING_SUBMODEL_PREFIX}encoder.conv_in.weight" in sd:
        n = len(TAMING_SUBMODEL_PREFIX)
        sd = {k[n:]: v for k, v in sd.items() if k.startswith(TAMING_SUBMODEL_PREFIX)}
        log.info(
            "%s: converting the VQGAN held under %s (a taming transformer checkpoint)", kind, TAMING_SUBMODEL_PREFIX
        )
    dropped = sum(k.startswith(TAMING_TRAINING_PREFIX) for k in sd)
    own = {k: v for k, v in sd.items() if not k.startswith(TAMING_TRAINING_PREFIX)}
    if "quantize.used" in own:
        raise ConversionError(
            f"{kind}: the checkpoint has quantize.used, taming's index remapping (the quantizer's remap= option: codes "
            f"renumbered to a subset of the codebook); zoo-convert does not convert remapped quantizers"
        )
    taming_codebook(own, kind)  # the right kind, and a 2-d codebook
    return own, dropped


def _shape(sd: Mapping[str, torch.Tensor], key: str, kind: str) -> tuple[int, ...]:
    if key not in sd:
        raise ConversionError(
            f"{kind}: no {key!r}: not a taming VQModel / GumbelVQ state dict (its keys: {sorted(sd)[:6]}...)"
        )
    return tuple(sd[key].shape)


def _taming_levels(sd: Mapping[str, torch.Tensor], part: str) -> tuple[dict[int, set[int]], dict[int, set[int]]]:
    """{level: resnet block indices}, {level: attention block indices} of ``encoder.down`` or ``decoder.up``."""
    blocks: dict[int, set[int]] = {}
    attn: dict[int, set[int]] = {}
    for k in sd:
        m = _TAMING_LEVEL.match(k)
        if m and m.group(1) == part:
            (blocks if m.group(3) == "block" else attn).setdefault(int(m.group(2)), set()).add(int(m.group(4)))
    return blocks, attn


def taming_config_from_state_dict(
    sd: Mapping[str, torch.Tensor], kind: str, resolution: Optional[int] = None
) -> dict[str, Any]:
    """Our ``TamingVQGANConfig`` fields (plain values) read off a taming autoencoder state dict (``loss.*`` already
    dropped). Everything is determined by the shapes and key names except the size ``attn_resolutions`` refers to:
    ``resolution`` (default 256, as in every published config)."""
    ch, in_ch = _shape(sd, "encoder.conv_in.weight", kind)[:2]
    out_ch = _shape(sd, "decoder.conv_out.weight", kind)[0]
    if in_ch != 3 or out_ch != 3:
        raise ConversionError(
            f"{kind}: the encoder reads {in_ch} and the decoder writes {out_ch} channels; an image tokenizer reads and "
            f"writes RGB (3): this is not an image VQGAN (e.g. a segmentation or depth model)"
        )
    enc_blocks, enc_attn = _taming_levels(sd, "encoder.down")
    dec_blocks, dec_attn = _taming_levels(sd, "decoder.up")
    n = len(enc_blocks)
    if not n or sorted(enc_blocks) != list(range(n)) or sorted(dec_blocks) != list(range(n)):
        raise ConversionError(
            f"{kind}: encoder levels {sorted(enc_blocks)} and decoder levels {sorted(dec_blocks)} are not both "
            f"0 .. L-1: not taming's Encoder / Decoder layout"
        )
    counts = {len(b) for b in enc_blocks.values()}
    if len(counts) != 1:
        raise ConversionError(f"{kind}: encoder levels have different resnet block counts {sorted(counts)}")
    num_res_blocks = counts.pop()
    dec_counts = {len(b) for b in dec_blocks.values()}
    if dec_counts != {num_res_blocks + 1}:
        raise ConversionError(
            f"{kind}: the decoder's levels have {sorted(dec_counts)} resnet blocks; taming's Decoder has "
            f"num_res_blocks + 1 = {num_res_blocks + 1} where the encoder has {num_res_blocks}"
        )
    ch_mult = []
    for i in range(n):
        width = _shape(sd, f"encoder.down.{i}.block.0.conv1.weight", kind)[0]
        if width % ch:
            raise ConversionError(f"{kind}: encoder level {i} is {width} wide, not a multiple of ch={ch}")
        ch_mult.append(width // ch)
    if sorted(enc_attn) != sorted(dec_attn):
        raise ConversionError(
            f"{kind}: attention at encoder levels {sorted(enc_attn)} but decoder levels {sorted(dec_attn)}; taming "
            f"places both by the same attn_resolutions"
        )
    z_channels = _shape(sd, "encoder.conv_out.weight", kind)[0]
    embed_dim, quant_in = _shape(sd, "quant_conv.weight", kind)[:2]
    if quant_in != z_channels:
        why = " (double_z: True, a KL autoencoder's layout, not a VQGAN's)" if z_channels == 2 * quant_in else ""
        raise ConversionError(
            f"{kind}: encoder.conv_out emits {z_channels} channels but quant_conv reads {quant_in}{why}"
        )
    n_embed, code_dim = taming_codebook(sd, kind).shape
    if code_dim != embed_dim:
        raise ConversionError(f"{kind}: the codebook's vectors are {code_dim} wide but quant_conv emits {embed_dim}")
    res = int(resolution or DEFAULT_TAMING_RESOLUTION)
    if res % 2 ** (n - 1):
        raise ConversionError(f"{kind}: resolution={res} is not a multiple of the downsample factor {2 ** (n - 1)}")
    return {
        "resolution": res,
        "ch": int(ch),
        "ch_mult": ch_mult,
        "num_res_blocks": int(num_res_blocks),
        "attn_resolutions": [res // 2**i for i in sorted(enc_attn)],
        "z_channels": int(z_channels),
        "embed_dim": int(embed_dim),
        "n_embed": int(n_embed),
        "quantizer": "gumbel" if kind == "taming_gumbel" else "vq",
        "resamp_with_conv": n == 1 or "encoder.down.0.downsample.conv.weight" in sd,
    }


def read_taming_config(path: str | os.PathLike, kind: str) -> dict[str, Any]:
    """Our config fields from a taming run's ``configs/*.yaml`` (``model.target``, ``model.params.embed_dim`` /
    ``n_embed`` / ``ddconfig``). Read as plain YAML: its ``target`` strings are compared, never imported."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"taming_config: {p} not found (check the path; it is the run's configs/*.yaml)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
        model = data["model"]
        params = model["params"]
        dd = params["ddconfig"]
    except (yaml.YAMLError, KeyError, TypeError) as e:
        raise ConversionError(
            f"taming_config: {p} is not a taming model config (no model.params.ddconfig: {type(e).__name__} {e})"
        ) from None
    target = str(model.get("target") or "")
    want = TAMING_TARGETS[kind]
    if target and target.rsplit(".", 1)[-1] != want:
        other = [k for k, t in TAMING_TARGETS.items() if target.rsplit(".", 1)[-1] == t]
        raise ConversionError(
            f"taming_config: {p} describes a {target}, not a {want}"
            + (f" (fix: kind={other[0]})" if other else " (zoo-convert converts VQModel and GumbelVQ)")
        )
    if params.get("remap"):
        raise ConversionError(f"taming_config: {p} sets remap= (index remapping), which zoo-convert does not convert")
    if dd.get("double_z") or int(dd.get("in_channels", 3)) != 3 or int(dd.get("out_ch", 3)) != 3:
        raise ConversionError(
            f"taming_config: {p} has double_z={dd.get('double_z')}, in_channels={dd.get('in_channels')}, "
            f"out_ch={dd.get('out_ch')}; an image VQGAN has False, 3, 3"
        )
    try:
        return {
            "resolution": int(dd["resolution"]),
            "ch": int(dd["ch"]),
            "ch_mult": [int(m) for m in dd["ch_mult"]],
            "num_res_blocks": int(dd["num_res_blocks"]),
            "attn_resolutions": [int(r) for r in dd.get("attn_resolutions") or []],
            "z_channels": int(dd["z_channels"]),
            "embed_dim": int(params["embed_dim"]),
            "n_embed": int(params["n_embed"]),
            "quantizer": "gumbel" if kind == "taming_gumbel" else "vq",
            "resamp_with_conv": bool(dd.get("resamp_with_conv", True)),
        }
    except (KeyError, TypeError, ValueError) as e:
        raise ConversionError(
            f"taming_config: {p}: a value is missing or not a number ({type(e).__name__} {e})"
        ) from None


def _attention_level_set(net: Mapping[str, Any]) -> set[int]:
    from zoo.nn.taming_vq import attention_levels

    flags = attention_levels(int(net["resolution"]), len(net["ch_mult"]), net["attn_resolutions"])
    return {i for i, f in enumerate(flags) if f}


def _merge_taming_config(inferred: dict[str, Any], stated: dict[str, Any], where: str) -> dict[str, Any]:
    """The config a taming yaml states, checked against the one the weights imply (a ConversionError naming the
    first field that differs)."""
    for k in ("ch", "ch_mult", "num_res_blocks", "z_channels", "embed_dim", "n_embed", "resamp_with_conv"):
        if stated[k] != inferred[k]:
            raise ConversionError(
                f"{where} says {k}={stated[k]} but the checkpoint's weights have {k}={inferred[k]}: the config and "
                f"the checkpoint are not a pair (fix: pass the run's own configs/*.yaml, or leave taming_config unset "
                f"to read the config off the weights)"
            )
    if _attention_level_set(stated) != _attention_level_set(inferred):
        raise ConversionError(
            f"{where} puts attention at attn_resolutions={stated['attn_resolutions']} of resolution="
            f"{stated['resolution']} (levels {sorted(_attention_level_set(stated))}) but the checkpoint has attention "
            f"blocks at levels {sorted(_attention_level_set(inferred))}: the config and the checkpoint are not a pair"
        )
    return dict(stated)


def convert_taming(
    sd: Mapping[str, torch.Tensor],
    kind: str = "taming_vq",
    taming_config: Optional[str | os.PathLike] = None,
    resolution: Optional[int] = None,
):
    """A taming VQModel / GumbelVQ state dict -> (our ``TamingVQGANLit`` in eval mode with every autoencoder
    weight, a record: ``config_from`` ("shapes" | the yaml's path), ``dropped_training_keys``).

    The config is read off the weights; ``taming_config`` (the run's ``configs/model.yaml``) is optional and, when
    given, must agree with them (it also supplies ``resolution``). ``resolution`` sets the size the tokenizer works
    at (and that ``attn_resolutions`` refers to; the network is the same at any size)."""
    from zoo.models.vqgan.lit import TamingVQGANLit

    own, dropped = taming_autoencoder_state(sd, kind)
    net = taming_config_from_state_dict(own, kind)
    config_from = "shapes"
    if taming_config:
        net = _merge_taming_config(net, read_taming_config(taming_config, kind), f"taming_config {taming_config}")
        config_from = str(taming_config)
    if resolution:
        levels = _attention_level_set(net)
        res = int(resolution)
        if res % 2 ** (len(net["ch_mult"]) - 1):
            raise ConversionError(
                f"{kind}: resolution={res} is not a multiple of the downsample factor {2 ** (len(net['ch_mult']) - 1)}"
            )
        net["resolution"] = res
        net["attn_resolutions"] = [res // 2**i for i in sorted(levels)]
    lit = TamingVQGANLit(preset="paper", net=net)
    mapped = {f"vqgan.{k}": v.float() for k, v in own.items()}
    src = {f"vqgan.{k}": k for k in own}
    target = lit.state_dict()
    extra = sorted(src[k] for k in mapped if k not in target)
    if extra:
        raise ConversionError(
            f"{kind}: published keys with no place in taming's {TAMING_TARGETS[kind]} layout as zoo-convert knows it: "
            f"{extra[:8]}{' ...' if len(extra) > 8 else ''}"
        )
    _check_shapes(mapped, target, src, kind)
    missing = sorted(k.removeprefix("vqgan.") for k in set(target) - set(mapped))
    if missing:
        raise ConversionError(
            f"{kind}: the checkpoint lacks {missing[:8]}{' ...' if len(missing) > 8 else ''}, which a "
            f"{TAMING_TARGETS[kind]} with the config read off its other weights has (a truncated or edited state dict?)"
        )
    lit.load_state_dict(mapped, strict=True)
    return lit.eval(), {"config_from": config_from, "dropped_training_keys": int(dropped)}


# --------------------------------------------------------------------------------- open_clip
# What a released open_clip tag sets beyond the weights, which the file does not say: the activation the weights were
# trained with (QuickGELU for OpenAI's, LAION-400M's, MetaCLIP's, DFN's, ...) and the image preprocessing (mean / std:
# 0.5 for e.g. ViT-L-14 laion2b_s32b_b82k and SigLIP, OpenAI's for most others; resize).
OPEN_CLIP_TAG_FIELDS = ("quick_gelu", "mean", "std", "interpolation", "resize_mode")
NO_TAG = "none"  # pretrained=none: weights trained with the architecture's own settings (e.g. one's own open_clip run)


def _open_clip_arch_settings(arch: str) -> dict[str, Any]:
    """What ``arch`` alone builds: its QuickGELU flag and preprocessing (open_clip's defaults + its JSON's)."""
    import open_clip
    from open_clip.transform import PreprocessCfg

    model_cfg = open_clip.get_model_config(arch) or {}
    pp = {**dataclasses.asdict(PreprocessCfg()), **(model_cfg.get("preprocess_cfg") or {})}
    return {"quick_gelu": bool(model_cfg.get("quick_gelu", False)), **{k: pp.get(k) for k in OPEN_CLIP_TAG_FIELDS[1:]}}


def _tag_settings(arch: str, tag: str) -> dict[str, Any]:
    import open_clip

    tag_cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
    base = _open_clip_arch_settings(arch)
    out = {k: tuple(v) if isinstance(v := tag_cfg[k], list) else v for k in OPEN_CLIP_TAG_FIELDS[1:] if k in tag_cfg}
    return {**base, **out, "quick_gelu": bool(tag_cfg.get("quick_gelu")) or base["quick_gelu"]}


def open_clip_tag(arch: str, pretrained: Optional[str]) -> Optional[str]:
    """The open_clip ``pretrained`` tag the weights were released under (None: the architecture's own settings).

    The tag sets QuickGELU and the preprocessing (mean / std / resize), which the weights do not say and which the
    converted checkpoint records (``hyper_parameters.pretrained``). With no tag given, an architecture whose released
    tags disagree with what it builds alone is refused: an OpenAI ViT-B-32 file converted as plain ``ViT-B-32``
    ran with GELU instead of QuickGELU, and a ViT-L-14 laion2b_s32b_b82k file was normalised with OpenAI's mean /
    std instead of 0.5 -- every embedding silently wrong."""
    import difflib

    import open_clip

    import zoo.models.clip.model  # noqa: F401  (registers the zoo's own architectures with open_clip)

    if open_clip.get_model_config(arch) is None:  # was a ValueError traceback naming model.arch= (zoo-train's option)
        close = difflib.get_close_matches(arch, open_clip.list_models(), n=4, cutoff=0.6)
        raise ConfigError(
            f"arch={arch}: not an open_clip architecture"
            + (f" (close: {', '.join(close)})" if close else "")
            + " (fix: arch=<the file's architecture, one of open_clip.list_models()>, e.g. arch=ViT-B-32)"
        )
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if pretrained is not None and str(pretrained).strip().lower() == NO_TAG:
        return None
    if pretrained:
        tag = str(pretrained)
        if not open_clip.get_pretrained_cfg(arch, tag):
            raise ConfigError(
                f"pretrained={tag}: not an open_clip tag of {arch} (its tags: {tags or 'none'}; fix: the tag the file "
                f"was released under, or pretrained={NO_TAG} for weights trained with {arch}'s own settings)"
            )
        return tag
    base = _open_clip_arch_settings(arch)
    differ = {}
    for tag in tags:
        diff = [k for k, v in _tag_settings(arch, tag).items() if v != base[k]]
        if diff:
            differ[tag] = diff
    if differ:
        shown = "; ".join(f"{t}: {', '.join(d)}" for t, d in list(differ.items())[:6])
        raise ConfigError(
            f"kind=open_clip arch={arch}: weights released under some of {arch}'s open_clip tags need settings the "
            f"architecture alone does not build and the file does not say ({shown}{' ...' if len(differ) > 6 else ''}"
            f"): converted without the tag they run with the wrong activation or image normalisation. Fix: "
            f"pretrained=<the tag the file was released under> (e.g. {next(iter(differ))}), or pretrained={NO_TAG} for "
            f"weights trained with {arch}'s own settings (e.g. your own open_clip run)"
        )
    return None


def convert_open_clip(path: str | os.PathLike, arch: str, pretrained: Optional[str] = None):
    """A local open_clip checkpoint of architecture ``arch`` -> our ``ClipLit`` (open_clip's own loader).
    ``pretrained``: the open_clip tag the weights were released under (its QuickGELU and preprocessing; no download:
    the weights come from ``path``), see :func:`open_clip_tag`."""
    from zoo.models.clip.lit import ClipLit

    if not Path(path).is_file():
        raise FileNotFoundError(f"open_clip checkpoint {path} not found")
    refuse_torchscript(path, "open_clip checkpoint", OPENAI_CLIP_TORCHSCRIPT_FIX)
    lit = ClipLit(arch=arch, pretrained=pretrained, checkpoint=str(path)).eval()
    _check_position_embeddings(path, arch, lit.clip)
    return lit


def _file_shapes(path: str | os.PathLike) -> Optional[dict[str, torch.Tensor]]:
    """The file's tensors as meta tensors of their shapes (no data read: safetensors' header, or a memory-mapped
    torch zip); None when that cannot be done cheaply (the loader has read the file already)."""
    p = Path(path)
    try:
        if p.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(p), framework="pt") as f:
                return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
        if p.suffix in (".npz", ".npy"):
            return None
        # not zoo.checkpoint.peek_checkpoint: that reads a legacy (non-zip) file whole, a second read of a released
        # model's GBs (the loader has read it); the bare mmap load refuses such a file, so its shapes are not checked
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a legacy (non-zip) torch file cannot be memory-mapped
        return None
    sd = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    if not isinstance(sd, Mapping):
        return None
    return {k: torch.empty(v.shape, device="meta") for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _check_position_embeddings(path: str | os.PathLike, arch: str, model: torch.nn.Module) -> None:
    """open_clip's loader RESIZES a position embedding of another grid or context length to the architecture's
    (a fine-tuning convenience), so a ViT-L-14-336 file converted as ViT-L-14 loaded "cleanly" as a different model
    (its 24x24 embedding interpolated to 16x16). A released model is converted as it is: a difference is refused."""
    from zoo.models.clip.model import clip_state_dict

    shapes = _file_shapes(path)
    if not shapes:
        return
    theirs = clip_state_dict(shapes, model)
    ours = model.state_dict()
    for k, v in theirs.items():
        if k.endswith("positional_embedding") and k in ours and tuple(v.shape) != tuple(ours[k].shape):
            what = "image size (patch grid)" if "visual" in k else "text context length"
            raise ConversionError(
                f"open_clip checkpoint {path}: {k} is {tuple(v.shape)} but arch={arch} has {tuple(ours[k].shape)}: "
                f"the file is of another {what}, and open_clip's loader would silently resize it into a model that "
                f"is not the released one (fix: arch=<the architecture it was released as, e.g. a -336 / -256 "
                f"variant>)"
            )


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


def training_resolution(cfg, kind: str) -> tuple[int, str]:
    """(the resolution the published tokenizer was trained at, where that was read). The converted checkpoint
    records it as its training resolution (``zoo_config.data.resolution``), which ``zoo-tokenize`` and DALL·E's
    ``model.image_tokenizer_ckpt=`` hold ``data.resolution`` to. A convolutional tokenizer's weights do not say it,
    so it comes from the taming run's config (``taming_config``, its ``ddconfig.resolution``) or from
    ``resolution=``; with neither, a ConfigError: a guessed 256 was recorded as a fact, and a tokenizer trained at
    another size was then refused at its own resolution ("trained at 256 px") or used at a size it never learned."""
    # checked first, as every count: beside taming_config, int(given) took 16.5 (or true) for 16 (or 1) and a word
    # was int()'s bare ValueError; 0 / false read as not given
    why = "the pixels the tokenizer was trained at"
    taming = kind in TAMING_KINDS and cfg.get("taming_config")
    fix = "null, the taming_config's" if taming else 256
    given = check_whole("resolution", cfg.get("resolution"), 1, fix, none_ok=True, why=why)
    if taming:
        stated = read_taming_config(cfg.taming_config, kind)["resolution"]
        if given is not None and given != stated:
            raise ConfigError(
                f"resolution={given} but taming_config {cfg.taming_config} says the model trained at {stated} px: the "
                f"checkpoint records the resolution it was trained at, and zoo-tokenize and DALL·E use it there "
                f"(fix: drop resolution=, or drop taming_config if that yaml is not this model's)"
            )
        return stated, f"taming_config {cfg.taming_config}"
    if given is not None:
        return given, "resolution="
    if kind == "dalle_dvae":
        example = "OpenAI's released dVAE was trained at 256 px: resolution=256"
    else:
        example = (
            "the run's configs/*.yaml as taming_config=, or resolution=<px> (the published VQGANs: "
            "model.params.ddconfig.resolution, 256)"
        )
    raise ConfigError(
        f"kind={kind}: the weights do not say the resolution the tokenizer was trained at, and the converted "
        f"checkpoint records it (zoo-tokenize and model.image_tokenizer_ckpt= hold data.resolution to it); "
        f"fix: {example}"
    )


def check_out(out: str | os.PathLike, inputs: Mapping[str, Any]) -> None:
    """Refuse, before any reading, an ``out=`` that cannot be written (a directory: the write failed only after the
    whole conversion, with a bare IsADirectoryError) or that is one of the files being converted (the atomic write
    replaced the published weights with the converted copy)."""
    o = Path(out)
    if o.is_dir():
        raise ConfigError(f"out={out} is a directory (fix: a file path, e.g. out={o / 'converted.ckpt'})")
    for name, src in inputs.items():
        if not src or not Path(src).exists():
            continue
        if o.resolve() == Path(src).resolve() or (o.exists() and os.path.samefile(o, src)):
            raise ConfigError(
                f"out={out} is the {name}= file being converted: writing it would replace the published weights "
                f"(fix: another path, e.g. out={o.with_name(o.stem + '_zoo.ckpt')})"
            )


# the options each kind reads (conf/convert.yaml); another kind's option given to it was silently ignored (e.g.
# resolution= for open_clip, whose image size is the architecture's, or taming_config= for the dVAE)
KIND_OPTIONS = {
    "dalle_dvae": ("encoder", "decoder", "resolution"),
    **{k: ("ckpt", "taming_config", "resolution") for k in TAMING_KINDS},
    "open_clip": ("ckpt", "arch", "pretrained"),
}


def check_kind_options(cfg, kind: str) -> None:
    """A ConfigError naming any option set that ``kind`` does not read, before anything is read."""
    if kind not in KIND_OPTIONS:
        return
    every = sorted({o for opts in KIND_OPTIONS.values() for o in opts})
    stray = [o for o in every if o not in KIND_OPTIONS[kind] and cfg.get(o) is not None]
    if stray:
        raise ConfigError(
            f"kind={kind} does not read {', '.join(f'{o}=' for o in stray)} (it reads "
            f"{', '.join(f'{o}=' for o in KIND_OPTIONS[kind])}) (fix: drop {', '.join(stray)}, or the kind=... it "
            f"belongs to)"
        )


def convert(cfg) -> Path:
    kind = cfg.get("kind")
    out = cfg.get("out")
    if not out:
        raise ConfigError("no output path (fix: zoo-convert kind=... out=converted/<name>.ckpt)")
    check_kind_options(cfg, kind)
    check_out(out, {k: cfg.get(k) for k in ("ckpt", "encoder", "decoder", "taming_config")})
    if kind == "dalle_dvae":
        if not cfg.get("encoder") or not cfg.get("decoder"):
            raise ConfigError(
                "kind=dalle_dvae needs both encoder=<encoder state dict> and decoder=<decoder state dict>"
            )
        resolution, resolution_from = training_resolution(cfg, kind)
        lit = convert_dalle_dvae(
            read_state_dict(cfg.encoder, "encoder"), read_state_dict(cfg.decoder, "decoder"), resolution
        )
        source = {
            "kind": kind,
            "encoder": str(cfg.encoder),
            "decoder": str(cfg.decoder),
            "resolution_from": resolution_from,
            "note": "encoder input map folded into the stem conv (exact except the 3-pixel border)",
        }
    elif kind in TAMING_KINDS:
        if not cfg.get("ckpt"):
            raise ConfigError(
                f"kind={kind} needs ckpt=<taming checkpoints/last.ckpt, or its state dict> (optional: "
                f"taming_config=<the run's configs/*.yaml>)"
            )
        resolution, resolution_from = training_resolution(cfg, kind)
        lit, record = convert_taming(
            read_state_dict(cfg.ckpt, kind, fix=TAMING_PICKLE_FIX),
            kind,
            taming_config=cfg.get("taming_config"),
            resolution=resolution,
        )
        source = {
            "kind": kind,
            "ckpt": str(cfg.ckpt),
            "taming_config": str(cfg.get("taming_config")) if cfg.get("taming_config") else None,
            "resolution_from": resolution_from,
            **record,
            "note": "every autoencoder weight; codes = "
            + ("argmax of quantize.proj logits (no Gumbel noise)" if kind == "taming_gumbel" else "nearest entry"),
        }
        log.info(
            "%s: converted %s (config from %s); dropped %d training-only loss.* keys (discriminator / LPIPS)",
            kind,
            cfg.ckpt,
            record["config_from"],
            record["dropped_training_keys"],
        )
    elif kind == "open_clip":
        if not cfg.get("ckpt") or not cfg.get("arch"):
            raise ConfigError(
                "kind=open_clip needs ckpt=<open_clip file> and arch=<open_clip architecture, e.g. ViT-B-32>"
            )
        tag = open_clip_tag(str(cfg.arch), cfg.get("pretrained"))
        lit = convert_open_clip(cfg.ckpt, cfg.arch, pretrained=tag)
        source = {"kind": kind, "ckpt": str(cfg.ckpt), "arch": str(cfg.arch), "pretrained": tag}
    else:
        raise ConfigError(f"kind={kind!r}; expected one of dalle_dvae, taming_vq, taming_gumbel, open_clip")
    path = save_converted(lit, out, source)
    print(path)
    return path


main = entry_point(convert, "convert")


if __name__ == "__main__":
    main()
