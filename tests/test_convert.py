"""zoo-convert: state dicts with the PUBLISHED key names and shapes (small configs of the same layouts, built here;
nothing is downloaded) convert onto our classes, reproduce the reference computation, refuse mismatches, and
are written as checkpoints the zoo's loaders accept."""

from __future__ import annotations

import sys
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F


# ------------------------------------------------------------------ the released dall_e layout, re-stated
class RefConv2d(nn.Module):
    """dall_e/utils.py Conv2d: parameters ``w`` (n_out, n_in, kw, kw) and ``b`` (n_out,), 'same' padding."""

    def __init__(self, n_in, n_out, kw):
        super().__init__()
        self.w = nn.Parameter(torch.randn(n_out, n_in, kw, kw) / (n_in * kw * kw) ** 0.5)
        self.b = nn.Parameter(torch.randn(n_out) * 0.1)
        self.kw = kw

    def forward(self, x):
        return F.conv2d(x, self.w, self.b, padding=(self.kw - 1) // 2)


class RefBlock(nn.Module):
    def __init__(self, n_in, n_out, n_layers, kernels):
        super().__init__()
        hid = n_out // 4
        self.post_gain = 1 / n_layers**2
        self.id_path = RefConv2d(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        widths = [(n_in, hid), (hid, hid), (hid, hid), (hid, n_out)]
        layers = []
        for j, ((a, b), k) in enumerate(zip(widths, kernels, strict=True), 1):
            layers += [(f"relu_{j}", nn.ReLU()), (f"conv_{j}", RefConv2d(a, b, k))]
        self.res_path = nn.Sequential(OrderedDict(layers))

    def forward(self, x):
        return self.id_path(x) + self.post_gain * self.res_path(x)


def ref_encoder(n_hid=8, n_blk=1, vocab=32, groups=4):
    """dall_e/encoder.py Encoder (group_count 4 in the release; any count here)."""
    n_layers = groups * n_blk
    mods = [("input", RefConv2d(3, n_hid, 7))]
    n_in = n_hid
    for g in range(groups):
        w = n_hid * 2**g
        blocks = [(f"block_{i + 1}", RefBlock(n_in if i == 0 else w, w, n_layers, (3, 3, 3, 1))) for i in range(n_blk)]
        if g < groups - 1:
            blocks.append(("pool", nn.MaxPool2d(2)))
        mods.append((f"group_{g + 1}", nn.Sequential(OrderedDict(blocks))))
        n_in = w
    mods.append(("output", nn.Sequential(OrderedDict([("relu", nn.ReLU()), ("conv", RefConv2d(n_in, vocab, 1))]))))
    enc = nn.Module()
    enc.blocks = nn.Sequential(OrderedDict(mods))
    return enc


def ref_decoder(n_hid=8, n_blk=1, vocab=32, n_init=16, groups=4):
    """dall_e/decoder.py Decoder (output_channels 3 -> 6 logit-Laplace channels)."""
    n_layers = groups * n_blk
    mods = [("input", RefConv2d(vocab, n_init, 1))]
    n_in = n_init
    for g in range(groups):
        w = n_hid * 2 ** (groups - 1 - g)
        blocks = [(f"block_{i + 1}", RefBlock(n_in if i == 0 else w, w, n_layers, (1, 3, 3, 3))) for i in range(n_blk)]
        if g < groups - 1:
            blocks.append(("upsample", nn.Upsample(scale_factor=2, mode="nearest")))
        mods.append((f"group_{g + 1}", nn.Sequential(OrderedDict(blocks))))
        n_in = w
    mods.append(("output", nn.Sequential(OrderedDict([("relu", nn.ReLU()), ("conv", RefConv2d(n_in, 6, 1))]))))
    dec = nn.Module()
    dec.blocks = nn.Sequential(OrderedDict(mods))
    return dec


def map_pixels(x01):  # dall_e/utils.py
    return (1 - 2 * 0.1) * x01 + 0.1


def unmap_pixels(x):
    return torch.clamp((x - 0.1) / (1 - 2 * 0.1), 0, 1)


@pytest.fixture(scope="module")
def released():
    torch.manual_seed(0)
    return ref_encoder(n_blk=2).eval(), ref_decoder(n_blk=2).eval()


def test_dalle_dvae_published_key_names(released):
    enc, dec = released
    keys = set(enc.state_dict()) | {"dec." + k for k in dec.state_dict()}
    # names as in the released model (spot checks against dall_e/encoder.py, decoder.py)
    for k in (
        "blocks.input.w",
        "blocks.group_1.block_1.res_path.conv_1.w",
        "blocks.group_2.block_1.id_path.w",
        "blocks.group_4.block_2.res_path.conv_4.b",
        "blocks.output.conv.w",
    ):
        assert k in keys
    assert "dec.blocks.group_1.block_1.id_path.w" in keys  # n_init -> 8 n_hid


def test_dalle_dvae_converts_exactly(released):
    from zoo.convert import RELEASED_PAD_PIXEL, convert_dalle_dvae, dalle_dvae_stem_error

    enc, dec = released
    lit = convert_dalle_dvae(enc.state_dict(), dec.state_dict(), resolution=32)
    dv = lit.dvae
    assert dv.cfg.n_hid == 8 and dv.cfg.vocab_size == 32 and dv.cfg.n_groups == 4 and dv.cfg.n_blk_per_group == 2
    assert dv.downsample_factor == 8 and dv.grid_size == (4, 4)
    torch.manual_seed(1)
    x = torch.rand(2, 3, 32, 32) * 2 - 1  # our range
    with torch.no_grad():
        ref_logits = enc.blocks(map_pixels((x + 1) / 2))
        # exact once the released model's zero padding of the MAPPED image is made explicit (pixel -1.25 for us)
        stem = dv.encoder[0]
        exact = dv.encoder[1:](F.conv2d(F.pad(x, (3,) * 4, value=RELEASED_PAD_PIXEL), stem.weight, stem.bias))
        torch.testing.assert_close(exact, ref_logits, atol=1e-4, rtol=1e-4)
        # away from the border the folded stem IS the released one
        torch.testing.assert_close(
            dv.encoder[0](x)[..., 3:-3, 3:-3],
            enc.blocks.input(map_pixels((x + 1) / 2))[..., 3:-3, 3:-3],
            atol=1e-5,
            rtol=1e-5,
        )
        # decoder: exact, including the image mapping
        codes = ref_logits.argmax(1)
        z = F.one_hot(codes, 32).permute(0, 3, 1, 2).float()
        ref_stats = dec.blocks(z)
        torch.testing.assert_close(dv.decode_soft(z), ref_stats, atol=1e-5, rtol=1e-5)
        ref_img = unmap_pixels(torch.sigmoid(ref_stats[:, :3]))
        torch.testing.assert_close((dv.decode(codes) + 1) / 2, ref_img, atol=1e-5, rtol=1e-5)
    err = dalle_dvae_stem_error(lit, x)
    assert 0.0 <= err["code_agreement"] <= 1.0 and err["max_abs_logit_error"] >= 0.0


def test_dalle_dvae_refuses_mismatches(released):
    from zoo.convert import ConversionError, convert_dalle_dvae

    enc, dec = released
    e, d = dict(enc.state_dict()), dict(dec.state_dict())
    bad = dict(e)
    bad["blocks.group_2.block_1.res_path.conv_2.w"] = torch.zeros(4, 4, 5, 5)  # a 5x5 kernel where ours is 3x3
    with pytest.raises(ConversionError, match=r"blocks\.group_2\.block_1\.res_path\.conv_2\.w.*shape"):
        convert_dalle_dvae(bad, d)
    missing = {k: v for k, v in e.items() if k != "blocks.group_3.block_2.res_path.conv_4.b"}
    with pytest.raises(ConversionError, match="conv_4.b"):
        convert_dalle_dvae(missing, d)
    with pytest.raises(ConversionError, match="not a pair"):
        convert_dalle_dvae(e, dict(ref_decoder(n_blk=2, vocab=64).state_dict()))
    with pytest.raises(ConversionError, match="blocks.input.w"):
        convert_dalle_dvae({"encoder.conv_in.weight": torch.zeros(1)}, d)
    # the two files given the wrong way round: said so (it was "encoder emits 6 codes but the decoder reads 3")
    with pytest.raises(ConversionError, match="swapped.*swap encoder= and decoder="):
        convert_dalle_dvae(d, e)
    # a stem bias of another width than its weight: named (the input map's fold ran first and raised torch's "size
    # of tensor a (8) must match the size of tensor b (9)")
    with pytest.raises(ConversionError, match=r"blocks\.input\.b has shape \(9,\)"):
        convert_dalle_dvae({**e, "blocks.input.b": torch.zeros(9)}, d)


def test_converted_dvae_checkpoint_loads_like_zoo_train(tmp_path, released):
    """zoo-convert's output goes through the safe loader, is accepted where an image tokenizer is expected
    (zoo-tokenize, model.image_tokenizer_ckpt) and exports (zoo-export)."""
    from omegaconf import OmegaConf

    from zoo.checkpoint import load_module
    from zoo.convert import convert
    from zoo.registry import IMAGE_TOKENIZERS

    enc, dec = released
    torch.save(enc.state_dict(), tmp_path / "encoder.pt")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in dec.state_dict().items()}, str(tmp_path / "decoder.safetensors"))
    out = convert(
        OmegaConf.create(
            {
                "kind": "dalle_dvae",
                "encoder": str(tmp_path / "encoder.pt"),
                "decoder": str(tmp_path / "decoder.safetensors"),
                "resolution": 32,
                "out": str(tmp_path / "dalle_dvae.ckpt"),
            }
        )
    )
    ck = torch.load(out, weights_only=True)
    assert ck["zoo_component"] == "dvae" and ck["zoo_converted"]["kind"] == "dalle_dvae"
    lit = load_module(out, expect=IMAGE_TOKENIZERS)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        ref = enc.blocks(map_pixels((x + 1) / 2))
    assert lit.dvae.encode(x).shape == (2, 4, 4) and lit.dvae.resolution == 32
    from zoo.pipelines.grid import checkpoint_sample_grid  # what zoo-sample does with a tokenizer checkpoint

    grid, _ = checkpoint_sample_grid(str(out))
    assert grid.shape[-3] == 3 and torch.isfinite(grid).all()
    torch.testing.assert_close(
        lit.dvae.decode_soft(F.one_hot(ref.argmax(1), 32).permute(0, 3, 1, 2).float()),
        dec.blocks(F.one_hot(ref.argmax(1), 32).permute(0, 3, 1, 2).float()),
        atol=1e-5,
        rtol=1e-5,
    )


def test_released_pickle_is_refused_with_the_fix(tmp_path, monkeypatch):
    """The released encoder.pkl is a pickled module; the converter does not unpickle code, it says what to do, and
    what it says works: the advised command is run here (from another directory, with torch's weights_only=True
    default) on a pickled module this test made. It advised dall_e.load_model('encoder.pkl'), which names the file
    relative to where the command runs and calls torch.load(f) without weights_only, refused by torch >= 2.6."""
    import re
    import types

    from zoo.convert import ConversionError, read_state_dict

    src = tmp_path / "release" / "encoder.pkl"
    src.parent.mkdir()
    torch.save(nn.Linear(2, 2), src)
    with pytest.raises(ConversionError, match="weights_only=False") as e:
        read_state_dict(src, "encoder")
    command = re.search(r'python -c "(.*?)"', str(e.value)).group(1)
    monkeypatch.setitem(sys.modules, "dall_e", types.ModuleType("dall_e"))  # stands for the installed package
    monkeypatch.chdir(tmp_path)  # not the file's directory
    exec(command, {})
    sd = read_state_dict(tmp_path / "encoder_state_dict.pt", "encoder")
    assert set(sd) == {"weight", "bias"}


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_truncated_source_file_is_named_with_copy_it_again(tmp_path, suffix):
    """A half-copied release file: the fix is to copy it again, not the project-checkpoint advice "use the run's
    last.ckpt" (there is no run), and a truncated safetensors file was safetensors' own error naming no file."""
    from safetensors.torch import save_file

    from zoo.checkpoint import CorruptCheckpointError
    from zoo.convert import ConversionError, read_state_dict

    f = tmp_path / f"encoder{suffix}"
    sd = {"w": torch.randn(64, 64)}
    save_file(sd, str(f)) if suffix == ".safetensors" else torch.save(sd, f)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises((CorruptCheckpointError, ConversionError)) as e:
        read_state_dict(f, "encoder")
    msg = str(e.value)
    assert str(f) in msg and "copy the file again" in msg and "last.ckpt" not in msg


# taming-transformers VQGAN / Gumbel-VQ (the whole autoencoder, not only the codebook): tests/test_convert_taming.py


# ------------------------------------------------------------------ open_clip
def test_open_clip_file_converts(tmp_path):
    """An open_clip checkpoint file (here the tiny architecture's, saved as open_clip saves it) -> a zoo clip
    checkpoint with the same towers. (Loading open_clip files is also covered in tests/models/test_clip_scorer.py.)"""
    import open_clip
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    import zoo.models.clip.model  # noqa: F401  (registers the zoo-clip-* architectures with open_clip)
    from zoo.checkpoint import load_module
    from zoo.convert import convert

    torch.manual_seed(5)
    model = open_clip.create_model("zoo-clip-tiny")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "open_clip_model.safetensors"))
    out = convert(
        OmegaConf.create(
            {
                "kind": "open_clip",
                "arch": "zoo-clip-tiny",
                "ckpt": str(tmp_path / "open_clip_model.safetensors"),
                "out": str(tmp_path / "clip.ckpt"),
            }
        )
    )
    (tmp_path / "open_clip_model.safetensors").unlink()  # the converted checkpoint stands alone
    lit = load_module(out, expect=("clip",))
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(lit.clip.encode_image(x), model.encode_image(x))


def test_zoo_convert_dalle_dvae_needs_the_resolution(tmp_path, released):
    """The dall_e state dicts do not say the resolution the dVAE trained at; zoo-convert recorded a silent 256."""
    from omegaconf import OmegaConf

    from zoo.convert import convert
    from zoo.errors import ConfigError

    enc, dec = released
    torch.save(enc.state_dict(), tmp_path / "encoder.pt")
    torch.save(dec.state_dict(), tmp_path / "decoder.pt")
    cfg = {"kind": "dalle_dvae", "encoder": str(tmp_path / "encoder.pt"), "decoder": str(tmp_path / "decoder.pt")}
    with pytest.raises(ConfigError, match="released dVAE was trained at 256 px: resolution=256"):
        convert(OmegaConf.create({**cfg, "out": str(tmp_path / "d.ckpt")}))
    out = convert(OmegaConf.create({**cfg, "resolution": 32, "out": str(tmp_path / "d.ckpt")}))
    ck = torch.load(out, weights_only=True)
    assert ck["zoo_config"]["data"]["resolution"] == 32 and ck["zoo_converted"]["resolution_from"] == "resolution="


@pytest.mark.parametrize("pretrained", [None, "openai"])
def test_an_arch_open_clip_does_not_know_is_named_with_close_ones(tmp_path, pretrained):
    """arch=ViT-B-99 was a ValueError traceback telling to set model.arch= (zoo-train's option); with pretrained=
    it read 'not an open_clip tag of ViT-B-99 (its tags: none)'."""
    from omegaconf import OmegaConf

    from zoo.convert import convert
    from zoo.errors import ConfigError

    f = tmp_path / "open_clip_model.safetensors"
    f.write_bytes(b"never read")
    cfg = {
        "kind": "open_clip",
        "arch": "ViT-B-99",
        "ckpt": str(f),
        "out": str(tmp_path / "c.ckpt"),
        "pretrained": pretrained,
    }
    with pytest.raises(
        ConfigError, match=r"arch=ViT-B-99: not an open_clip architecture \(close: .*ViT-B-\d+.*fix: arch="
    ):
        convert(OmegaConf.create(cfg))
    assert not (tmp_path / "c.ckpt").exists()


def test_open_clip_file_of_a_released_tag_keeps_its_activation_and_normalisation(tmp_path, monkeypatch):
    """The file does not say the open_clip tag it was released under, yet the tag sets QuickGELU (OpenAI, LAION-400M,
    MetaCLIP, DFN weights) and the image mean / std (0.5 for e.g. ViT-L-14 laion2b_s32b_b82k). zoo-convert had no
    way to pass it: such weights were written as the plain architecture (GELU, OpenAI mean / std), every embedding
    silently wrong. Now pretrained=<tag> is recorded (and used wherever the checkpoint is read as a CLIP), and an
    architecture whose tags disagree with it is refused without one. Here: a tag of the tiny architecture like
    ViT-L-14 laion2b_s32b_b82k + OpenAI's quick_gelu."""
    import open_clip
    import open_clip.pretrained as ocp
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    import zoo.models.clip.model  # noqa: F401  (registers the zoo-clip-* architectures with open_clip)
    from zoo.convert import convert
    from zoo.errors import ConfigError
    from zoo.models.clip.scorer import ClipScorer

    half = (0.5, 0.5, 0.5)
    monkeypatch.setitem(
        ocp._PRETRAINED, "zoo-clip-tiny", {"released": ocp._pcfg(hf_hub="x/y", quick_gelu=True, mean=half, std=half)}
    )
    torch.manual_seed(5)
    ref = open_clip.create_model("zoo-clip-tiny", force_quick_gelu=True).eval()  # how the weights were trained
    src = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(src))
    cfg = {"kind": "open_clip", "arch": "zoo-clip-tiny", "ckpt": str(src), "out": str(tmp_path / "clip.ckpt")}
    with pytest.raises(ConfigError, match=r"released: quick_gelu, mean, std.*pretrained=<the tag"):
        convert(OmegaConf.create(cfg))
    assert not (tmp_path / "clip.ckpt").exists()
    with pytest.raises(ConfigError, match="not an open_clip tag of zoo-clip-tiny"):
        convert(OmegaConf.create({**cfg, "pretrained": "no-such-tag"}))

    out = convert(OmegaConf.create({**cfg, "pretrained": "released"}))
    ck = torch.load(out, weights_only=True)
    assert ck["hyper_parameters"]["pretrained"] == "released" and ck["zoo_converted"]["pretrained"] == "released"
    scorer = ClipScorer.from_lightning_checkpoint(str(out))  # how reranking / CLIP score / zoo-embed read it
    assert scorer.mean.flatten().tolist() == [0.5] * 3 and scorer.std.flatten().tolist() == [0.5] * 3
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        want = F.normalize(ref.encode_image((x - 0.5) / 0.5), dim=-1)
        torch.testing.assert_close(scorer.encode_image(x * 2 - 1), want, atol=1e-5, rtol=1e-5)
    # load_module (zoo-export, zoo-sample, the unCLIP decoder's CLIP) rebuilds it the same way: the registry dropped
    # the tag on reload, so the network came back with GELU and OpenAI's mean / std
    from zoo.checkpoint import load_module
    from zoo.models.clip.model import preprocess_cfg

    net = load_module(out, expect=("clip",)).clip.eval()
    assert preprocess_cfg(net)[1] == half and any("QuickGELU" in type(m).__name__ for m in net.modules())
    with torch.no_grad():
        torch.testing.assert_close(F.normalize(net.encode_image((x - 0.5) / 0.5), dim=-1), want, atol=1e-5, rtol=1e-5)
    # pretrained=none: the architecture's own settings (one's own open_clip run), said explicitly
    out = convert(OmegaConf.create({**cfg, "pretrained": "none"}))
    assert torch.load(out, weights_only=True)["hyper_parameters"]["pretrained"] is None


@pytest.mark.parametrize("kind", ["open_clip", "taming_vq", "dalle_dvae"])
def test_a_torchscript_archive_is_named_as_such_with_the_fix(tmp_path, kind):
    """OpenAI's original CLIP files (ViT-B-32.pt, ...) are TorchScript archives. weights_only=True refuses them with a
    RuntimeError that was reported as a truncated file: "copy the file again" / "use the run's last.ckpt", a fix that
    cannot work. The message now says what the file is and how to save its weights (open_clip's loader for CLIP)."""
    from omegaconf import OmegaConf

    from zoo.convert import ConversionError, convert

    f = tmp_path / "ViT-B-32.pt"
    torch.jit.script(nn.Linear(2, 2)).save(str(f))
    out = tmp_path / "out.ckpt"
    cfg = {
        "open_clip": {"arch": "zoo-clip-tiny", "ckpt": str(f)},
        "taming_vq": {"ckpt": str(f), "resolution": 16},
        "dalle_dvae": {"encoder": str(f), "decoder": str(f), "resolution": 32},
    }[kind]
    with pytest.raises(ConversionError) as e:
        convert(OmegaConf.create({"kind": kind, "out": str(out), **cfg}))
    msg = str(e.value)
    assert "TorchScript archive" in msg and str(f) in msg and "copy the file again" not in msg
    assert (
        ("load_openai_model" in msg and "pretrained=openai" in msg) if kind == "open_clip" else "torch.jit.load" in msg
    )
    assert not out.exists()


def test_dalle_dvae_resolution_the_downsampling_does_not_divide_is_refused(tmp_path, released):
    """resolution=36 was recorded as the dVAE's size, though its 3 max-pools floor 36 px to a 4x4 grid that decodes
    to 32 px (zoo-train's dVAE refuses such a data.resolution; the taming converter refuses it too)."""
    from omegaconf import OmegaConf

    from zoo.convert import ConversionError, convert, convert_dalle_dvae

    enc, dec = released
    with pytest.raises(ConversionError, match=r"resolution=36 is not a positive multiple of the downsample factor 8"):
        convert_dalle_dvae(enc.state_dict(), dec.state_dict(), resolution=36)
    torch.save(enc.state_dict(), tmp_path / "encoder.pt")
    torch.save(dec.state_dict(), tmp_path / "decoder.pt")
    cfg = {"kind": "dalle_dvae", "encoder": str(tmp_path / "encoder.pt"), "decoder": str(tmp_path / "decoder.pt")}
    with pytest.raises(ConversionError, match="resolution=12"):
        convert(OmegaConf.create({**cfg, "resolution": 12, "out": str(tmp_path / "d.ckpt")}))
    assert not (tmp_path / "d.ckpt").exists()
    assert convert_dalle_dvae(enc.state_dict(), dec.state_dict(), resolution=40).dvae.grid_size == (5, 5)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_open_clip_file_of_another_image_size_is_refused_not_resized(tmp_path, monkeypatch, suffix):
    """open_clip's loader resizes a position embedding of another patch grid to the architecture's: a 48 px ViT's
    file converted as the 32 px architecture (as a ViT-L-14-336 file as ViT-L-14) "converted" into a model that is
    not the released one. Refused, naming the key and both shapes; nothing is written."""
    import copy

    import open_clip
    import open_clip.factory
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    import zoo.models.clip.model  # noqa: F401  (registers the zoo-clip-* architectures with open_clip)
    from zoo.convert import ConversionError, convert

    cfg48 = copy.deepcopy(open_clip.get_model_config("zoo-clip-tiny"))
    cfg48["vision_cfg"]["image_size"] = 48
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "zoo-clip-tiny-48", cfg48)
    sd = open_clip.create_model("zoo-clip-tiny-48").state_dict()
    f = tmp_path / f"clip48{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(f))
    else:
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, f)  # open_clip training
    out = tmp_path / "clip.ckpt"
    cfg = {"kind": "open_clip", "ckpt": str(f), "out": str(out)}
    with pytest.raises(ConversionError, match=r"visual\.positional_embedding is \(37, 64\) but arch=zoo-clip-tiny"):
        convert(OmegaConf.create({**cfg, "arch": "zoo-clip-tiny"}))
    assert not out.exists()
    assert convert(OmegaConf.create({**cfg, "arch": "zoo-clip-tiny-48"})).is_file()


@pytest.mark.parametrize(
    "kind, extra, stray",
    [
        ("open_clip", {"arch": "zoo-clip-tiny", "ckpt": "x.safetensors", "resolution": 64}, "resolution="),
        ("dalle_dvae", {"encoder": "e.pt", "decoder": "d.pt", "taming_config": "m.yaml"}, "taming_config="),
        ("taming_vq", {"ckpt": "last.ckpt", "arch": "ViT-B-32"}, "arch="),
    ],
)
def test_an_option_the_kind_does_not_read_is_refused(tmp_path, kind, extra, stray):
    """resolution= given to kind=open_clip (its image size is the architecture's), taming_config= to the dVAE, arch= to
    a taming kind: each was silently ignored, so a user believed it applied. Refused before any file is read (the
    files named here do not exist)."""
    from omegaconf import OmegaConf

    from zoo.convert import convert
    from zoo.errors import ConfigError

    cfg = OmegaConf.create({"kind": kind, "out": str(tmp_path / "o.ckpt"), **extra})
    with pytest.raises(ConfigError, match=f"kind={kind} does not read {stray}"):
        convert(cfg)
    assert not (tmp_path / "o.ckpt").exists()
