"""zoo-convert kind=taming_vq / taming_gumbel: taming-transformers' VQGAN and Gumbel-VQ become a working ``vqgan``
image tokenizer. State dicts are built here with the PUBLISHED key names and shapes (re-stated below from
CompVis/taming-transformers: ``taming/modules/diffusionmodules/model.py`` Encoder / Decoder / ResnetBlock / AttnBlock /
Downsample / Upsample, ``taming/models/vqgan.py`` VQModel / GumbelVQ, ``taming/modules/vqvae/quantize.py``
VectorQuantizer2 / GumbelQuantize, ``taming/modules/losses`` for the ``loss.*`` names); the converted model's
encode / decode are compared with a functional re-statement of taming's forward written here. Nothing is downloaded.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

SMALL = dict(resolution=16, ch=32, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(8,), z_channels=8, n_embed=24)
SMALL_EMBED_DIM = {"taming_vq": 6, "taming_gumbel": 8}  # GumbelVQ needs embed_dim == z_channels (see model.py)

# A few of VQLPIPSWithDiscriminator's keys (taming/modules/losses/vqperceptual.py, lpips.py, discriminator/model.py)
LOSS_KEYS = {
    "loss.discriminator.main.0.weight": (64, 3, 4, 4),
    "loss.discriminator.main.0.bias": (64,),
    "loss.perceptual_loss.scaling_layer.shift": (1, 3, 1, 1),
    "loss.perceptual_loss.scaling_layer.scale": (1, 3, 1, 1),
    "loss.perceptual_loss.net.slice1.0.weight": (64, 3, 3, 3),
    "loss.perceptual_loss.net.slice1.0.bias": (64,),
    "loss.perceptual_loss.lin0.model.1.weight": (1, 64, 1, 1),
}


# ------------------------------------------------------------------ taming's layout, re-stated from its constructors
def taming_layout(
    *, ch, ch_mult, num_res_blocks, attn_resolutions, resolution, z_channels, embed_dim, n_embed, gumbel
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a VQModel / GumbelVQ's autoencoder, following the loops of taming's Encoder / Decoder."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name, c_out, c_in, k):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (c_out, c_in, k, k), (c_out,)

    def norm(name, c):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (c,), (c,)

    def resnet(name, c_in, c_out):
        norm(f"{name}.norm1", c_in)
        conv(f"{name}.conv1", c_out, c_in, 3)
        norm(f"{name}.norm2", c_out)
        conv(f"{name}.conv2", c_out, c_out, 3)
        if c_in != c_out:
            conv(f"{name}.nin_shortcut", c_out, c_in, 1)

    def attn(name, c):
        norm(f"{name}.norm", c)
        for p in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{p}", c, c, 1)

    def mid(name, c):
        resnet(f"{name}.block_1", c, c)
        attn(f"{name}.attn_1", c)
        resnet(f"{name}.block_2", c, c)

    n = len(ch_mult)
    in_mult = (1,) + tuple(ch_mult)
    conv("encoder.conv_in", ch, 3, 3)
    res = resolution
    for i in range(n):
        c_in, c_out = ch * in_mult[i], ch * ch_mult[i]
        for j in range(num_res_blocks):
            resnet(f"encoder.down.{i}.block.{j}", c_in, c_out)
            c_in = c_out
            if res in attn_resolutions:
                attn(f"encoder.down.{i}.attn.{j}", c_out)
        if i != n - 1:
            conv(f"encoder.down.{i}.downsample.conv", c_out, c_out, 3)
            res //= 2
    mid("encoder.mid", c_in)
    norm("encoder.norm_out", c_in)
    conv("encoder.conv_out", z_channels, c_in, 3)  # double_z: False

    c_in, res = ch * ch_mult[-1], resolution // 2 ** (n - 1)
    conv("decoder.conv_in", c_in, z_channels, 3)
    mid("decoder.mid", c_in)
    for i in reversed(range(n)):
        c_out = ch * ch_mult[i]
        for j in range(num_res_blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", c_in, c_out)
            c_in = c_out
            if res in attn_resolutions:
                attn(f"decoder.up.{i}.attn.{j}", c_out)
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", c_out, c_out, 3)
            res *= 2
    norm("decoder.norm_out", c_in)
    conv("decoder.conv_out", 3, c_in, 3)

    conv("quant_conv", embed_dim, z_channels, 1)
    conv("post_quant_conv", z_channels, embed_dim, 1)
    if gumbel:  # GumbelQuantize(num_hiddens=z_channels, embedding_dim=embed_dim, n_embed)
        conv("quantize.proj", n_embed, z_channels, 1)
        shapes["quantize.embed.weight"] = (n_embed, embed_dim)
    else:  # VectorQuantizer2: nn.Embedding(n_e, e_dim)
        shapes["quantize.embedding.weight"] = (n_embed, embed_dim)
    return shapes


def small_layout(kind: str) -> dict[str, tuple[int, ...]]:
    return taming_layout(**SMALL, embed_dim=SMALL_EMBED_DIM[kind], gumbel=kind == "taming_gumbel")


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = 0, loss: bool = True) -> dict[str, torch.Tensor]:
    """Weights scaled so activations stay O(1); GroupNorm affines away from (1, 0) so they matter."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in shapes.items():
        t = torch.randn(shape, generator=g)
        if "norm" in k.rsplit(".", 2)[-2] and k.endswith(".weight"):
            t = 1 + 0.1 * t
        elif k.endswith(".bias"):
            t = 0.1 * t
        elif t.ndim == 4:
            t = t / (shape[1] * shape[2] * shape[3]) ** 0.5
        sd[k] = t
    if loss:
        sd.update({k: torch.randn(s, generator=g) for k, s in LOSS_KEYS.items()})
    return sd


# ------------------------------------------------------------------ taming's forward, re-stated functionally
def _gn(sd, name, x):
    return F.group_norm(x, 32, sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-6)


def _conv(sd, name, x, **kw):
    return F.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], **kw)


def _swish(x):
    return x * torch.sigmoid(x)


def _resnet(sd, name, x):
    h = _conv(sd, f"{name}.conv1", _swish(_gn(sd, f"{name}.norm1", x)), padding=1)
    h = _conv(sd, f"{name}.conv2", _swish(_gn(sd, f"{name}.norm2", h)), padding=1)
    if f"{name}.nin_shortcut.weight" in sd:
        x = _conv(sd, f"{name}.nin_shortcut", x)
    return x + h


def _attn(sd, name, x):  # AttnBlock.forward: bmm over (b, hw, c) x (b, c, hw), scaled by c**-0.5
    b, c, h, w = x.shape
    y = _gn(sd, f"{name}.norm", x)
    q = _conv(sd, f"{name}.q", y).reshape(b, c, h * w).permute(0, 2, 1)
    k = _conv(sd, f"{name}.k", y).reshape(b, c, h * w)
    weights = torch.softmax(torch.bmm(q, k) * c**-0.5, dim=2)
    v = _conv(sd, f"{name}.v", y).reshape(b, c, h * w)
    out = torch.bmm(v, weights.permute(0, 2, 1)).reshape(b, c, h, w)
    return x + _conv(sd, f"{name}.proj_out", out)


def _level(sd, name, x):
    j = 0
    while f"{name}.block.{j}.conv1.weight" in sd:
        x = _resnet(sd, f"{name}.block.{j}", x)
        if f"{name}.attn.{j}.q.weight" in sd:
            x = _attn(sd, f"{name}.attn.{j}", x)
        j += 1
    return x


def _mid(sd, name, x):
    return _resnet(sd, f"{name}.block_2", _attn(sd, f"{name}.attn_1", _resnet(sd, f"{name}.block_1", x)))


def ref_prequant(sd, x):
    """VQModel.encode up to the quantizer: encoder then quant_conv (x in [-1, 1])."""
    h = _conv(sd, "encoder.conv_in", x, padding=1)
    i = 0
    while f"encoder.down.{i}.block.0.conv1.weight" in sd:
        h = _level(sd, f"encoder.down.{i}", h)
        if f"encoder.down.{i}.downsample.conv.weight" in sd:  # Downsample: pad (0, 1, 0, 1), stride-2 conv
            h = _conv(sd, f"encoder.down.{i}.downsample.conv", F.pad(h, (0, 1, 0, 1)), stride=2)
        i += 1
    h = _mid(sd, "encoder.mid", h)
    h = _conv(sd, "encoder.conv_out", _swish(_gn(sd, "encoder.norm_out", h)), padding=1)
    return _conv(sd, "quant_conv", h)


def ref_decode(sd, z_q):
    """VQModel.decode: post_quant_conv then the decoder, levels visited from the last index to 0."""
    h = _conv(sd, "decoder.conv_in", _conv(sd, "post_quant_conv", z_q), padding=1)
    h = _mid(sd, "decoder.mid", h)
    n = len({k.split(".")[2] for k in sd if k.startswith("decoder.up.")})
    for i in reversed(range(n)):
        h = _level(sd, f"decoder.up.{i}", h)
        if i != 0:  # Upsample: nearest 2x, then a 3x3 conv
            h = _conv(
                sd, f"decoder.up.{i}.upsample.conv", F.interpolate(h, scale_factor=2.0, mode="nearest"), padding=1
            )
    return _conv(sd, "decoder.conv_out", _swish(_gn(sd, "decoder.norm_out", h)), padding=1)


def ref_nearest(z, codebook):
    """VectorQuantizer2.forward's code choice: argmin of ||z||^2 + ||e||^2 - 2 z.e over (b h w, c) rows."""
    b, c, h, w = z.shape
    flat = z.permute(0, 2, 3, 1).reshape(-1, c)
    d = flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * flat @ codebook.t()
    return d.argmin(1).view(b, h, w)


def images(n=2, size=16, seed=1):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ------------------------------------------------------------------ the published layouts, on the meta device
# Hand count for taming's ImageNet f16-1024 (ch 128, ch_mult 1,1,2,2,4, 2 resblocks, attention at 16 of 256):
# encoder 144 = conv_in 2 + 10 resblocks x 8 + 2 nin_shortcut x 2 + 2 attn x 10 + 4 downsample x 2 + mid 26 + out 4;
# decoder 194 = conv_in 2 + mid 26 + 15 resblocks x 8 + 2 nin x 2 + 3 attn x 10 + 4 upsample x 2 + out 4;
# quant_conv 2 + post_quant_conv 2 + quantize.embedding.weight 1.
PAPER_KEYS = 343
# Gumbel f8 (ch_mult 1,1,2,4, attention at 32): encoder 126 + decoder 168 + 2 + 2 + proj 2 + embed 1
GUMBEL_F8_KEYS = 301


@pytest.mark.parametrize(
    "preset, gumbel, n_keys",
    [("paper", False, PAPER_KEYS), ("gumbel_f8", True, GUMBEL_F8_KEYS)],
)
def test_our_network_has_the_published_layout(preset, gumbel, n_keys):
    from zoo.models.vqgan.model import PRESETS, TamingVQGAN

    c = PRESETS[preset]
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in TamingVQGAN(c).state_dict().items()}
    ref = taming_layout(
        ch=c.ch,
        ch_mult=c.ch_mult,
        num_res_blocks=c.num_res_blocks,
        attn_resolutions=c.attn_resolutions,
        resolution=c.resolution,
        z_channels=c.z_channels,
        embed_dim=c.embed_dim,
        n_embed=c.n_embed,
        gumbel=gumbel,
    )
    assert len(ours) == len(ref) == n_keys
    assert ours == ref
    assert c.downsample_factor == (16 if preset == "paper" else 8)


def test_paper_preset_representative_keys():
    """Names and shapes of the published vqgan_imagenet_f16_1024 state dict, spot-checked by hand."""
    from zoo.models.vqgan.model import PRESETS, TamingVQGAN

    with torch.device("meta"):
        sd = {k: tuple(v.shape) for k, v in TamingVQGAN(PRESETS["paper"]).state_dict().items()}
    expected = {
        "encoder.conv_in.weight": (128, 3, 3, 3),
        "encoder.down.0.block.1.conv2.weight": (128, 128, 3, 3),
        "encoder.down.2.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.down.3.downsample.conv.weight": (256, 256, 3, 3),
        "encoder.down.4.block.0.nin_shortcut.weight": (512, 256, 1, 1),
        "encoder.down.4.attn.1.q.weight": (512, 512, 1, 1),
        "encoder.mid.attn_1.proj_out.weight": (512, 512, 1, 1),
        "encoder.norm_out.weight": (512,),
        "encoder.conv_out.weight": (256, 512, 3, 3),
        "quant_conv.weight": (256, 256, 1, 1),
        "quantize.embedding.weight": (1024, 256),
        "post_quant_conv.weight": (256, 256, 1, 1),
        "decoder.conv_in.weight": (512, 256, 3, 3),
        "decoder.mid.block_2.norm2.bias": (512,),
        "decoder.up.4.attn.2.k.weight": (512, 512, 1, 1),
        "decoder.up.4.upsample.conv.weight": (512, 512, 3, 3),
        "decoder.up.3.block.0.nin_shortcut.weight": (256, 512, 1, 1),
        "decoder.up.1.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "decoder.up.1.upsample.conv.weight": (128, 128, 3, 3),
        "decoder.up.0.block.2.conv1.weight": (128, 128, 3, 3),
        "decoder.conv_out.weight": (3, 128, 3, 3),
    }
    for k, shape in expected.items():
        assert sd[k] == shape, k
    absent = (
        "encoder.down.4.downsample.conv.weight",
        "decoder.up.0.upsample.conv.weight",
        "encoder.down.3.attn.0.q.weight",
    )
    assert not any(k in sd for k in absent)
    assert not any(k.startswith("loss.") for k in sd)


# ------------------------------------------------------------------ conversion: exact against the reference forward
@pytest.mark.parametrize("kind", ["taming_vq", "taming_gumbel"])
def test_small_model_converts_and_matches_taming_forward(kind):
    from zoo.convert import convert_taming

    sd = random_state_dict(small_layout(kind))
    lit, record = convert_taming(sd, kind)
    assert record == {"config_from": "shapes", "dropped_training_keys": len(LOSS_KEYS)}
    tok = lit.tokenizer
    c = tok.cfg
    assert (c.ch, c.ch_mult, c.num_res_blocks, c.z_channels, c.n_embed) == (32, (1, 2, 2), 2, 8, 24)
    assert c.embed_dim == SMALL_EMBED_DIM[kind] and c.quantizer == ("gumbel" if kind == "taming_gumbel" else "vq")
    assert c.attn_resolutions == (128,)  # attention at level 1, stated at the default resolution 256: 256 / 2
    assert tok.codebook_size == 24 and tok.downsample_factor == 4 and tok.resolution == 256

    x = images()
    with torch.no_grad():
        h_ref = ref_prequant(sd, x)  # (2, embed_dim, 4, 4)
        torch.testing.assert_close(tok.prequant(x), h_ref, atol=1e-4, rtol=1e-4)
        codes = tok.encode(x)
        assert codes.shape == (2, 4, 4) and codes.dtype == torch.long
        assert int(codes.min()) >= 0 and int(codes.max()) < 24
        if kind == "taming_vq":
            codebook = sd["quantize.embedding.weight"]
            assert torch.equal(codes, ref_nearest(tok.prequant(x), codebook))
            assert torch.equal(codes, ref_nearest(h_ref, codebook))  # the reference's features pick the same codes
        else:  # GumbelQuantize: logits = proj(z); the noise-free code is their argmax
            codebook = sd["quantize.embed.weight"]
            logits = _conv(sd, "quantize.proj", h_ref)
            assert torch.equal(codes, logits.argmax(1))
        z_q = F.embedding(codes, codebook).permute(0, 3, 1, 2)  # embed_code / get_codebook_entry
        recon = tok.decode(codes)
        torch.testing.assert_close(recon, ref_decode(sd, z_q).clamp(-1, 1), atol=1e-4, rtol=1e-4)
        assert recon.shape == x.shape and float(recon.abs().max()) <= 1.0


def test_nearest_code_is_the_hand_computed_one():
    """The VQ rule itself, on vectors placed by hand: each is nearest to a known codebook row."""
    from zoo.nn.taming_vq import NearestCodebook

    q = NearestCodebook(4, 2, chunk=3)  # chunked: 6 vectors in chunks of 3
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
    z = torch.tensor([[0.1, -0.1], [0.9, 0.2], [0.2, 0.8], [-0.6, -0.7], [0.6, 0.1], [-0.2, 0.7]])
    codes = q.codes(z.t().reshape(1, 2, 2, 3))
    assert codes.flatten().tolist() == [0, 1, 2, 3, 1, 2]


def test_nearest_code_is_the_same_under_bf16_autocast():
    """Inside a bf16-mixed step (DALL·E's on-the-fly tokens, the export's encode_with_features) the distance matmul
    ran in bf16 and some vectors took a code that is not their nearest; the codes are now those of float32."""
    from zoo.nn.taming_vq import NearestCodebook

    torch.manual_seed(0)
    q = NearestCodebook(512, 64)
    z = torch.randn(4, 64, 16, 16)
    want = q.codes(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = q.codes(z)
    assert torch.equal(got, want)


# ------------------------------------------------------------------ zoo-convert end to end
class LightningCallbackStandIn:
    """Stands for pytorch_lightning's ModelCheckpoint class, which PL 1.x pickles as a key of ``callbacks``."""


@pytest.mark.parametrize("kind", ["taming_vq", "taming_gumbel"])
def test_zoo_convert_writes_a_working_tokenizer_checkpoint(tmp_path, kind):
    from omegaconf import OmegaConf

    from zoo.checkpoint import load_module
    from zoo.convert import convert
    from zoo.pipelines.grid import checkpoint_sample_grid
    from zoo.registry import IMAGE_TOKENIZERS
    from zoo.tokenize import image_tokenizer_of

    sd = random_state_dict(small_layout(kind))
    # Lightning's layout (tensors only: a real taming file may need extracting first, see the refusal test below)
    torch.save({"state_dict": sd, "global_step": 10, "epoch": 1}, tmp_path / "last.ckpt")
    out = convert(
        OmegaConf.create(
            {"kind": kind, "ckpt": str(tmp_path / "last.ckpt"), "resolution": 16, "out": str(tmp_path / "vqgan.ckpt")}
        )
    )
    (tmp_path / "last.ckpt").unlink()  # the converted checkpoint stands alone
    ck = torch.load(out, weights_only=True)
    assert ck["zoo_component"] == "vqgan"
    assert ck["zoo_converted"]["dropped_training_keys"] == len(LOSS_KEYS)
    assert ck["zoo_converted"]["config_from"] == "shapes"
    assert not any(k.startswith("vqgan.loss") for k in ck["state_dict"])
    assert ck["hyper_parameters"]["net"]["attn_resolutions"] == [8]  # level 1 of 16 px

    lit = load_module(out, expect=IMAGE_TOKENIZERS)
    tok = image_tokenizer_of(lit)  # what zoo-tokenize uses
    assert tok.grid_size == (4, 4) and tok.codebook_size == 24
    x = images()
    with torch.no_grad():
        codes = tok.encode(x)
        if kind == "taming_vq":
            assert torch.equal(codes, ref_nearest(ref_prequant(sd, x), sd["quantize.embedding.weight"]))
        else:
            assert torch.equal(codes, _conv(sd, "quantize.proj", ref_prequant(sd, x)).argmax(1))
        assert tok.decode(codes).shape == (2, 3, 16, 16)
    grid, nrow = checkpoint_sample_grid(str(out))  # zoo-sample ckpt=<converted>: input | reconstruction pairs
    assert grid.shape[1:] == (3, 16, 16) and torch.isfinite(grid).all()


def test_taming_config_yaml_is_read_and_cross_checked(tmp_path):
    import yaml

    from zoo.convert import ConversionError, convert_taming

    sd = random_state_dict(small_layout("taming_vq"), loss=False)

    def config(**changes):
        dd = {
            "double_z": False,
            "z_channels": 8,
            "resolution": 32,
            "in_channels": 3,
            "out_ch": 3,
            "ch": 32,
            "ch_mult": [1, 2, 2],
            "num_res_blocks": 2,
            "attn_resolutions": [16],  # level 1 of 32 px
            "dropout": 0.0,
        }
        target = changes.pop("target", "taming.models.vqgan.VQModel")
        dd.update(changes)
        path = tmp_path / f"model_{len(list(tmp_path.iterdir()))}.yaml"
        params = {"embed_dim": 6, "n_embed": 24, "ddconfig": dd, "lossconfig": {"target": "x.Y"}}
        path.write_text(yaml.safe_dump({"model": {"base_learning_rate": 4.5e-6, "target": target, "params": params}}))
        return path

    lit, record = convert_taming(sd, "taming_vq", taming_config=config())
    assert record["config_from"].endswith(".yaml") and record["dropped_training_keys"] == 0
    assert lit.tokenizer.cfg.resolution == 32 and lit.tokenizer.cfg.attn_resolutions == (16,)
    assert lit.tokenizer.grid_size == (8, 8)
    with pytest.raises(ConversionError, match=r"ch_mult=\[1, 2, 4\].*ch_mult=\[1, 2, 2\].*not a pair"):
        convert_taming(sd, "taming_vq", taming_config=config(ch_mult=[1, 2, 4]))
    with pytest.raises(ConversionError, match="attention.*levels"):
        convert_taming(sd, "taming_vq", taming_config=config(attn_resolutions=[8]))  # level 2 of 32 px
    with pytest.raises(ConversionError, match="kind=taming_gumbel"):
        convert_taming(sd, "taming_vq", taming_config=config(target="taming.models.vqgan.GumbelVQ"))
    # resolution= sets the working size; attention stays at the same level
    lit, _ = convert_taming(sd, "taming_vq", resolution=64)
    assert lit.tokenizer.cfg.attn_resolutions == (32,) and lit.tokenizer.grid_size == (16, 16)


def test_zoo_convert_records_the_training_resolution_it_was_told_never_a_guess(tmp_path):
    """zoo-convert records the resolution the tokenizer trained at (zoo-tokenize and DALL·E hold data.resolution to
    it). The weights do not say it: without taming_config or resolution= it wrote 256, and a VQGAN trained at 16 px
    was then refused at 16 px as 'trained at 256 px'. It now comes from the run's yaml or resolution=, else a
    ConfigError naming both; a resolution= that contradicts the yaml is refused."""
    import yaml
    from omegaconf import OmegaConf

    from zoo.checkpoint import load_module, trained_resolution
    from zoo.convert import convert
    from zoo.errors import ConfigError
    from zoo.tokenize import check_tokenizer_resolution

    torch.save(random_state_dict(small_layout("taming_vq")), tmp_path / "last.ckpt")
    dd = {"double_z": False, "z_channels": 8, "resolution": 16, "in_channels": 3, "out_ch": 3, "ch": 32}
    dd.update({"ch_mult": [1, 2, 2], "num_res_blocks": 2, "attn_resolutions": [8], "dropout": 0.0})
    params = {"embed_dim": 6, "n_embed": 24, "ddconfig": dd}
    (tmp_path / "model.yaml").write_text(
        yaml.safe_dump({"model": {"target": "taming.models.vqgan.VQModel", "params": params}})
    )

    def run(**options):
        cfg = {"kind": "taming_vq", "ckpt": str(tmp_path / "last.ckpt"), "out": str(tmp_path / "vq.ckpt"), **options}
        return convert(OmegaConf.create(cfg))

    with pytest.raises(ConfigError, match=r"do not say the resolution.*taming_config=.*resolution="):
        run()
    assert not (tmp_path / "vq.ckpt").exists()
    out = run(taming_config=str(tmp_path / "model.yaml"))
    ck = torch.load(out, weights_only=True)
    assert trained_resolution(ck["zoo_config"]) == 16 and ck["zoo_converted"]["resolution_from"].startswith("taming_")
    check_tokenizer_resolution(load_module(out), 16, str(out))  # zoo-tokenize takes it at its own 16 px
    with pytest.raises(ConfigError, match="trained at 16 px but data.resolution=256"):
        check_tokenizer_resolution(load_module(out), 256, str(out))
    assert trained_resolution(torch.load(run(resolution=32), weights_only=True)["zoo_config"]) == 32
    with pytest.raises(ConfigError, match="resolution=32 but taming_config .* says the model trained at 16 px"):
        run(taming_config=str(tmp_path / "model.yaml"), resolution=32)


def test_mismatches_are_refused_with_the_key_named():
    from zoo.convert import ConversionError, convert_taming

    sd = random_state_dict(small_layout("taming_vq"))
    bad = dict(sd)
    bad["decoder.up.1.block.2.conv1.weight"] = torch.zeros(64, 64, 1, 1)  # a 1x1 kernel where taming's is 3x3
    with pytest.raises(ConversionError, match=r"decoder\.up\.1\.block\.2\.conv1\.weight has shape \(64, 64, 1, 1\)"):
        convert_taming(bad, "taming_vq")
    missing = {k: v for k, v in sd.items() if k != "encoder.mid.attn_1.proj_out.bias"}
    with pytest.raises(ConversionError, match=r"lacks \['encoder\.mid\.attn_1\.proj_out\.bias'\]"):
        convert_taming(missing, "taming_vq")
    extra = {**sd, "encoder.down.0.block.0.temb_proj.weight": torch.zeros(32, 512)}
    with pytest.raises(ConversionError, match="temb_proj"):
        convert_taming(extra, "taming_vq")
    with pytest.raises(ConversionError, match="use kind=taming_gumbel"):
        convert_taming(random_state_dict(small_layout("taming_gumbel")), "taming_vq")
    with pytest.raises(ConversionError, match="remap"):
        convert_taming({**sd, "quantize.used": torch.arange(10)}, "taming_vq")
    fewer = {k: v for k, v in sd.items() if not k.startswith("decoder.up.0.block.2.")}
    with pytest.raises(ConversionError, match="num_res_blocks"):
        convert_taming(fewer, "taming_vq")
    with pytest.raises(ConversionError, match="encoder.conv_in.weight"):
        convert_taming({"quantize.embedding.weight": torch.zeros(4, 2)}, "taming_vq")


def test_pickled_lightning_checkpoint_is_refused_with_the_fix(tmp_path):
    """weights_only=True refuses a .ckpt whose pickle names a class; the message names it and how to extract."""
    from omegaconf import OmegaConf

    from zoo.convert import ConversionError, convert

    sd = random_state_dict(small_layout("taming_vq"), loss=False)
    torch.save({"state_dict": sd, "callbacks": {LightningCallbackStandIn: {"best": 1.0}}}, tmp_path / "last.ckpt")
    cfg = {"kind": "taming_vq", "ckpt": str(tmp_path / "last.ckpt"), "resolution": 16, "out": str(tmp_path / "o.ckpt")}
    cfg = OmegaConf.create(cfg)
    with pytest.raises(ConversionError) as e:
        convert(cfg)
    msg = str(e.value)
    assert "LightningCallbackStandIn" in msg and "weights_only=False)['state_dict']" in msg
    assert "ckpt=last_state_dict.pt" in msg
    assert not (tmp_path / "o.ckpt").exists()


def test_a_taming_transformer_checkpoint_gives_its_first_stage(tmp_path):
    from zoo.convert import convert_taming

    sd = random_state_dict(small_layout("taming_vq"), loss=False)
    nested = {f"first_stage_model.{k}": v for k, v in sd.items()}
    nested["transformer.tok_emb.weight"] = torch.zeros(24, 16)
    nested["cond_stage_model.encoder.conv_in.weight"] = torch.zeros(4, 3, 3, 3)
    lit, _ = convert_taming(nested, "taming_vq")
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(lit.tokenizer.prequant(x), ref_prequant(sd, x), atol=1e-4, rtol=1e-4)


def test_vqgan_component_is_not_trained_by_zoo_train():
    from zoo.errors import ConfigError
    from zoo.models.vqgan.lit import TamingVQGANLit

    with pytest.raises(ConfigError, match="image_tokenizer_ckpt"):
        TamingVQGANLit(preset="tiny").check_data(None)


# ------------------------------------------------------------------ the DALL·E transformer over a converted VQGAN
def test_dalle_trains_and_reloads_over_a_converted_vqgan(tmp_path):
    from zoo.checkpoint import atomic_torch_save, load_module
    from zoo.convert import convert_taming, save_converted
    from zoo.export import checkpoint_dict
    from zoo.models.dalle.lit import DalleLit

    sd = random_state_dict(small_layout("taming_vq"))
    lit, record = convert_taming(sd, "taming_vq", resolution=16)
    tok_path = save_converted(lit, tmp_path / "vqgan.ckpt", {"kind": "taming_vq", **record})

    torch.manual_seed(0)
    dalle = DalleLit(
        preset="tiny", net={"grid_h": 4, "grid_w": 4, "image_vocab": 32}, image_tokenizer_ckpt=str(tok_path)
    )
    assert dalle._tokenizer_spec["component"] == "vqgan" and dalle._tokenizer_spec["resolution"] == 16
    assert all(not p.requires_grad for p in dalle.image_tokenizer.parameters())
    batch = {"image": images(), "text_tokens": torch.randint(1, 64, (2, 8))}
    tokens = dalle.image_tokens(batch)
    with torch.no_grad():
        assert torch.equal(tokens, ref_nearest(ref_prequant(sd, batch["image"]), sd["quantize.embedding.weight"]))
    loss = dalle.forward_loss(batch, train=True)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is None for p in dalle.image_tokenizer.parameters())

    atomic_torch_save(checkpoint_dict(dalle), tmp_path / "dalle.ckpt")  # what zoo-train's checkpoint carries
    (tmp_path / "vqgan.ckpt").unlink()  # the tokenizer travels inside the DALL·E checkpoint
    again = load_module(tmp_path / "dalle.ckpt", expect=("dalle",))
    assert torch.equal(again.image_tokens(batch), tokens)
    assert again.decode(tokens).shape == (2, 3, 16, 16)


@pytest.mark.parametrize("kind", ["taming_vq", "taming_gumbel"])
def test_converted_vqgan_exports_to_onnx(tmp_path, kind):
    """zoo-export's encode/decode graphs of a converted VQGAN match PyTorch at another batch (dynamic batch axis)."""
    pytest.importorskip("onnxruntime")
    from zoo.convert import convert_taming
    from zoo.export import export_onnx

    lit, _ = convert_taming(random_state_dict(small_layout(kind)), kind, resolution=16)
    report = export_onnx("vqgan", lit.eval(), tmp_path / "onnx", export_batch=2, check_batch=3)
    assert set(report) == {"encode", "decode"}
    for graph, info in report.items():
        assert info["batch"] == 3 and info["max_abs_error"] < 1e-3, (graph, info)
        assert all(v == 1.0 for k, v in info.items() if k.endswith("_agreement")), (graph, info)


def test_an_out_path_that_is_a_directory_or_the_source_is_refused_before_converting(tmp_path):
    """out= the source checkpoint: the atomic write replaced the published weights with the converted copy. out= a
    directory: a bare IsADirectoryError after the whole conversion. Both are refused first, naming the fix."""
    from omegaconf import OmegaConf

    from zoo.convert import convert
    from zoo.errors import ConfigError

    src = tmp_path / "last.ckpt"
    torch.save(random_state_dict(small_layout("taming_vq")), src)
    before = src.read_bytes()
    cfg = {"kind": "taming_vq", "ckpt": str(src), "resolution": 16}
    with pytest.raises(ConfigError, match=r"is the ckpt= file being converted.*out=.*last_zoo\.ckpt"):
        convert(OmegaConf.create({**cfg, "out": str(src)}))
    assert src.read_bytes() == before
    (tmp_path / "converted").mkdir()
    with pytest.raises(ConfigError, match=r"is a directory.*converted\.ckpt"):
        convert(OmegaConf.create({**cfg, "out": str(tmp_path / "converted")}))
    assert convert(OmegaConf.create({**cfg, "out": str(tmp_path / "converted" / "vq.ckpt")})).is_file()


def test_a_zoo_checkpoint_given_to_convert_is_named_as_one(tmp_path):
    """zoo-convert's (or zoo-train's) own output passed back in: its keys carry our prefixes (vqgan.*), and it was
    refused as "no 'quantize.embedding.weight' in the state dict", which does not say what the file is."""
    from omegaconf import OmegaConf

    from zoo.convert import ConversionError, convert

    torch.save(random_state_dict(small_layout("taming_vq")), tmp_path / "last.ckpt")
    cfg = {"kind": "taming_vq", "resolution": 16}
    ours = convert(OmegaConf.create({**cfg, "ckpt": str(tmp_path / "last.ckpt"), "out": str(tmp_path / "vq.ckpt")}))
    with pytest.raises(ConversionError, match=r"already a zoo checkpoint \(component 'vqgan', written by zoo-convert"):
        convert(OmegaConf.create({**cfg, "ckpt": str(ours), "out": str(tmp_path / "again.ckpt")}))
    assert not (tmp_path / "again.ckpt").exists()
