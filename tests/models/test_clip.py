"""ClipLit (model=clip): presets and net overrides, learning on a fixed batch (fp32 and bf16 autocast), val retrieval
metrics, Lightning checkpoint round trips through model.checkpoint= / ClipScorer, offline pretrained weights, refused
pickles, check_data."""

from __future__ import annotations

import math
import os
import pickle
import time

import lightning as L
import pytest
import torch

from zoo.errors import ConfigError, MissingWeightsError
from zoo.models.clip.lit import ClipLit, recall_at_k
from zoo.models.clip.model import PRESETS, clip_config, count_parameters, model_config
from zoo.models.clip.scorer import ClipScorer

COLOURS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "triangle", "star"]


def pairs(n=16, size=32, seed=0):
    """n distinct random images with n distinct captions (a fixed batch to memorise)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    captions = [f"a {COLOURS[i % 4]} {SHAPES[(i // 4) % 4]} number {i}" for i in range(n)]
    return {"image": images, "caption": captions}


class PairDataset(torch.utils.data.Dataset):
    def __init__(self, batch):
        self.b = batch

    def __len__(self):
        return len(self.b["caption"])

    def __getitem__(self, i):
        return {"image": self.b["image"][i], "caption": self.b["caption"][i]}


def collate(samples):
    return {"image": torch.stack([s["image"] for s in samples]), "caption": [s["caption"] for s in samples]}


def loader(batch, bs=8):
    return torch.utils.data.DataLoader(PairDataset(batch), batch_size=bs, collate_fn=collate)


# ----------------------------------------------------------------------------------------- presets / config
def test_presets_and_net_overrides():
    assert set(PRESETS) == {"tiny", "shapes", "shapes_rn", "shapes_rn128", "paper"}
    m = ClipLit(
        preset="tiny",
        net={"embed_dim": 48, "vision_cfg": {"width": 96, "patch_size": 4}, "text_cfg": {"context_length": 24}},
    )
    assert m.clip.visual.conv1.out_channels == 96 and m.clip.visual.conv1.kernel_size == (4, 4)
    assert m.clip.text_projection.shape[1] == 48 and m.tokenize(["a b"]).shape == (1, 24)
    assert m.image_size == 32 and m.arch == "zoo-clip-tiny"
    for bad, match in [
        ({"preset": "huge"}, "tiny"),
        ({"net": {"widht": 3}}, "embed_dim"),
        ({"net": {"vision_cfg": {"layerz": 1}}}, "layers"),
        ({"arch": "ViT-Nope"}, "architecture"),
    ]:
        with pytest.raises(ValueError, match=match):
            ClipLit(**{"preset": "tiny", **bad})


def test_shapes_rn_preset_is_a_resnet_tower_that_fits_the_shapes_presets_downstream():
    from open_clip.modified_resnet import ModifiedResNet

    rn, vit = ClipLit(preset="shapes_rn"), ClipLit(preset="shapes")
    assert isinstance(rn.clip.visual, ModifiedResNet)
    assert sum(p.numel() for p in rn.clip.visual.parameters()) == 1_360_664  # the figure the model docstring quotes
    # what the priors, decoders and captioner read is unchanged: 128-d embeddings, 48-token captions, 32 px images
    scorer = rn.scorer()
    img = scorer.encode_image(torch.rand(2, 3, 32, 32) * 2 - 1)
    txt = scorer.encode_text(["a red star at the top left", "a blue heart"])
    assert img.shape == txt.shape == (2, 128) and torch.isfinite(img).all()
    assert rn.tokenize(["a"]).shape == vit.tokenize(["a"]).shape == (1, 48) and rn.image_size == vit.image_size == 32


def test_shapes_rn128_preset_reads_128_px_scenes(train_cfg):
    """The upsamplers' FD_CLIP instrument: make demo's ResNet CLIP network on 128 px scenes, its experiment
    composes on 128 px data, and a 128 px image's detail reaches the embedding (a 32 px CLIP shrinks it away)."""
    torch.manual_seed(0)
    lit = ClipLit(preset="shapes_rn128")
    assert lit.image_size == 128
    # a one-pixel checkerboard on a flat 128 px image: the 32 px CLIP's resize averages it away, this one reads it
    checker = ((torch.arange(128).view(1, -1) + torch.arange(128).view(-1, 1)) % 2 * 0.5 - 0.25).expand(1, 3, -1, -1)
    flat = torch.zeros(1, 3, 128, 128)
    with torch.no_grad():
        for scorer, sees in ((lit.scorer(), True), (ClipLit(preset="shapes_rn").scorer(), False)):
            a, b = scorer.encode_image(flat), scorer.encode_image(flat + checker)
            assert a.shape == (1, 128)
            assert (not torch.allclose(a, b, atol=1e-5)) == sees  # measured: 1.6e-3 apart vs 9e-8
    cfg = train_cfg("experiment=unclip/clip_shapes_rn128", "logger=none")
    assert cfg.model.preset == "shapes_rn128" and cfg.data.resolution == 128


def test_paper_preset_is_vit_h_counted_on_meta():
    cfg = clip_config("paper")
    # PAPER_FACTS: ViT-H/16 image encoder at 256 px, width 1280, 32 blocks; text width 1024, 24 blocks
    full = model_config(cfg)
    v, t = full["vision_cfg"], full["text_cfg"]
    assert cfg.arch == "ViT-H-16" and (v["patch_size"], v["image_size"], v["width"], v["layers"]) == (16, 256, 1280, 32)
    assert (t["width"], t["layers"], full["embed_dim"]) == (1024, 24, 1024)
    n = count_parameters(cfg)  # no memory allocated
    assert 0.9e9 < n < 1.1e9, n


# ------------------------------------------------------------------------------------------------- learning
@pytest.mark.parametrize("bf16", [False, True])
def test_contrastive_loss_falls_on_fixed_batch(bf16):
    torch.manual_seed(0)
    m = ClipLit(preset="tiny")
    batch = pairs(16)
    params = [p for n, p in m.named_parameters() if "logit_scale" not in n]  # fixed temperature: a clean signal
    opt = torch.optim.AdamW(params, lr=2e-3)
    losses = []
    for _ in range(50 if not bf16 else 30):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            img, txt = m.embed(batch)
            loss = m.loss_fn(img.float(), txt.float(), m.clip.logit_scale.exp())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] / 2, (losses[0], losses[-1])


def test_recall_at_k_exact_index_matching():
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.7, 0.1], [0.5, 0.4, 0.0]])
    assert recall_at_k(sim, 1) == pytest.approx(1 / 3) and recall_at_k(sim, 2) == pytest.approx(2 / 3)
    # a duplicate caption ranked first is a miss: only the paired index counts
    dup = torch.tensor([[1.0, 1.0 - 1e-6], [1.0, 1.0 - 1e-6]])
    assert recall_at_k(dup, 1) == pytest.approx(0.5)


def _trainer(tmp_path, **kw):
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        **kw,
    )


def test_fit_validate_logs_retrieval_and_checkpoint_round_trips(tmp_path):
    torch.manual_seed(0)
    net = {"embed_dim": 40}  # non-default net: the checkpoint must rebuild it from its hyper-parameters
    m = ClipLit(preset="tiny", net=net)
    train, val = pairs(16, seed=1), pairs(12, size=48, seed=2)  # val images at another size: resized by the model
    t = _trainer(tmp_path, max_steps=2, limit_val_batches=2, num_sanity_val_steps=0, enable_checkpointing=False)
    t.fit(m, loader(train), loader(val, bs=5))
    metrics = t.validate(m, loader(val, bs=5), verbose=False)[0]
    for k in ("val/loss", "val/t2i_r@1", "val/t2i_r@5", "val/i2t_r@1", "val/i2t_r@5"):
        assert k in metrics
    assert 0 <= metrics["val/t2i_r@1"] <= metrics["val/t2i_r@5"] <= 1
    assert m.clip.logit_scale.item() <= torch.log(torch.tensor(100.0)).item() + 1e-6

    ckpt = tmp_path / "clip.ckpt"
    t.save_checkpoint(ckpt)
    raw = torch.load(ckpt, weights_only=True)  # plain hyper-parameters: weights_only loads it
    assert raw["hyper_parameters"]["net"] == net and raw["hyper_parameters"]["load_weights"] is False

    batch = pairs(4, size=40, seed=3)
    a = m.scorer()
    b = ClipScorer.from_lightning_checkpoint(str(ckpt))
    c = ClipLit(preset="tiny", net=net, checkpoint=str(ckpt)).scorer()  # model.checkpoint=<lightning ckpt>
    d = ClipLit.load_from_checkpoint(str(ckpt), weights_only=True).scorer()
    for s in (b, c, d):
        assert torch.equal(s.encode_image(batch["image"]), a.encode_image(batch["image"]))
        assert torch.equal(s.encode_text(batch["caption"]), a.encode_text(batch["caption"]))
    fresh = ClipLit(preset="tiny", net=net).scorer()
    assert not torch.equal(fresh.encode_text(batch["caption"]), a.encode_text(batch["caption"]))


def test_checkpoint_does_not_need_the_original_weights_file(tmp_path):
    """Started from model.checkpoint=<open_clip file>; the saved .ckpt reloads after that file is gone."""
    torch.manual_seed(0)
    src = tmp_path / "start.pt"
    torch.save(ClipLit(preset="tiny").clip.state_dict(), src)
    m = ClipLit(preset="tiny", checkpoint=str(src))
    t = _trainer(tmp_path, max_steps=1, enable_checkpointing=False)
    t.fit(m, loader(pairs(8)))
    t.save_checkpoint(tmp_path / "run.ckpt")
    src.unlink()
    again = ClipLit.load_from_checkpoint(str(tmp_path / "run.ckpt"), weights_only=True)
    caps = ["a red star"]
    assert torch.equal(again.scorer().encode_text(caps), m.scorer().encode_text(caps))


# ------------------------------------------------------------------------------------------------- weights
def _offline(monkeypatch, tmp_path):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "ZOO_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # if anything tried the network it would fail fast


def test_offline_pretrained_names_option_and_file(monkeypatch, tmp_path):
    _offline(monkeypatch, tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(MissingWeightsError) as err:
        ClipLit(preset="tiny", arch="ViT-B-32", pretrained="openai", cache_dir=str(tmp_path / "cache"))
    assert time.perf_counter() - t0 < 10
    msg = str(err.value)
    assert "model.checkpoint=" in msg and "open_clip_model.safetensors" in msg
    assert "timm/vit_base_patch32_clip_224.openai" in msg and str(tmp_path / "cache") in msg
    with pytest.raises(MissingWeightsError, match="nothere.pt"):
        ClipLit(preset="tiny", checkpoint=str(tmp_path / "nothere.pt"))
    with pytest.raises(MissingWeightsError, match="model.checkpoint="):
        ClipScorer.from_open_clip("ViT-B-32", pretrained="openai", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match="openai"):  # an unknown tag lists the known ones
        ClipLit(preset="tiny", arch="ViT-B-32", pretrained="no-such-tag")


def test_offline_pretrained_names_the_clip_node_options_of_zoo_eval(monkeypatch, tmp_path):
    """zoo-eval / zoo-embed build their CLIP from the ``clip`` node, where the missing tag's fix read "pass the file
    with model.checkpoint=... (keep model.pretrained=openai ...; zoo-embed: clip.checkpoint=)": zoo-train's options,
    and no word of zoo-eval (found with zoo-eval clip.checkpoint=null clip.arch=ViT-B-32 clip.pretrained=openai).
    Now the node's own options (clip.checkpoint= with the file, clip.pretrained= kept) are named for both commands."""
    _offline(monkeypatch, tmp_path)
    node = {"checkpoint": None, "arch": "ViT-B-32", "pretrained": "openai", "device": "cpu"}
    with pytest.raises(MissingWeightsError) as err:
        ClipScorer.from_config(node)
    msg = str(err.value)
    assert "clip.checkpoint=/path/to/open_clip_model.safetensors (keep clip.pretrained=openai)" in msg
    assert "zoo-embed / zoo-eval" in msg


def test_cached_pretrained_tag_loads_offline(monkeypatch, tmp_path):
    """A tag whose file sits in the HF cache loads with the hub offline, with the tag's own mean/std."""
    import open_clip.pretrained as ocp
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    monkeypatch.setitem(
        ocp._PRETRAINED, "zoo-clip-tiny", {"testtag": {"hf_hub": "zoo-test/tiny-clip/", "mean": mean, "std": std}}
    )
    torch.manual_seed(3)
    src = ClipLit(preset="tiny").clip
    snap = tmp_path / "hub" / "models--zoo-test--tiny-clip" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(snap / "open_clip_model.safetensors"))
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("a" * 40)
    s = ClipScorer.from_open_clip("zoo-clip-tiny", pretrained="testtag", cache_dir=str(tmp_path / "hub"))
    assert s.mean.flatten().tolist() == list(mean) and s.std.flatten().tolist() == list(std)
    want = ClipScorer.from_model(src, __import__("open_clip").get_tokenizer("zoo-clip-tiny"))
    assert torch.equal(s.encode_text(["a red star"]), want.encode_text(["a red star"]))


def test_malicious_clip_checkpoint_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned_clip",))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "hyper_parameters": {"preset": "tiny"}, "x": Evil()}, path)
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        ClipLit(preset="tiny", checkpoint=str(path))
    with pytest.raises(pickle.UnpicklingError):
        ClipScorer.from_lightning_checkpoint(str(path))
    with pytest.raises(pickle.UnpicklingError):
        ClipScorer.from_open_clip("zoo-clip-tiny", checkpoint=str(path))
    assert not (tmp_path / "pwned_clip").exists()


# --------------------------------------------------------------------------------------------------- data
class _FakeDM:
    def __init__(self, sample, batch_size=8):
        self.sample, self.batch_size = sample, batch_size

    def dataset(self, split):
        return [self.sample]


def test_check_data():
    m = ClipLit(preset="tiny")
    good = {"image": torch.zeros(3, 48, 48), "caption": "a red circle"}
    m.check_data(_FakeDM(good))  # any image size is fine: the model resizes
    with pytest.raises(ConfigError, match="batch_size"):
        m.check_data(_FakeDM(good, batch_size=1))
    with pytest.raises(ConfigError, match="caption"):
        m.check_data(_FakeDM({"image": torch.zeros(3, 32, 32)}))
    with pytest.raises(ConfigError, match="RGB"):
        m.check_data(_FakeDM({"image": torch.zeros(1, 32, 32), "caption": "x"}))


def test_unknown_pretrained_tag_beside_a_checkpoint_is_refused_and_old_checkpoints_still_load(tmp_path):
    """Beside model.checkpoint= the tag only sets the preprocessing: a typo there was ignored silently and the images
    normalised with the default mean/std. A zoo-train checkpoint whose hyper-parameters name such a tag (written
    before the check) still loads, with the default preprocessing it was trained with."""
    import open_clip

    from zoo.models.clip.model import ClipConfig, create_clip

    net = open_clip.create_model("zoo-clip-tiny")
    torch.save(net.state_dict(), tmp_path / "tiny.pt")
    with pytest.raises(ConfigError, match="unknown open_clip pretrained tag 'openia'.*preprocessing"):
        create_clip(ClipConfig("zoo-clip-tiny"), pretrained="openia", checkpoint=str(tmp_path / "tiny.pt"))
    sd = {f"clip.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": sd, "hyper_parameters": {"preset": "tiny", "pretrained": "openia"}}, tmp_path / "c.ckpt")
    s = ClipScorer.from_lightning_checkpoint(str(tmp_path / "c.ckpt"))
    assert s.image_size == 32 and torch.equal(s.model.logit_scale, net.logit_scale)


def test_the_measurement_scripts_render_the_scenes_at_the_resolution_the_clip_trained_at(tmp_path):
    """scripts/clip_recall.py and experiments/clip/binding_probe.py rendered the val scenes at 32 px whatever the CLIP:
    a CLIP trained on 128 px scenes (experiment=unclip/clip_shapes_rn128) was measured on 32 px renders blown up to
    128. Both now default to the checkpoint's training resolution (trained_scene_resolution)."""
    from pathlib import Path

    from zoo.models.clip.scorer import trained_scene_resolution

    trained_128, unrecorded = tmp_path / "rn128.ckpt", tmp_path / "old.ckpt"
    torch.save({"state_dict": {}, "zoo_config": {"data": {"resolution": 128}}}, trained_128)
    torch.save({"state_dict": {}}, unrecorded)
    assert trained_scene_resolution(str(trained_128)) == 128
    assert trained_scene_resolution(str(trained_128), 64) == 64  # --resolution still decides
    assert trained_scene_resolution(str(unrecorded)) == 32
    root = Path(__file__).resolve().parents[2]
    for script in ("scripts/clip_recall.py", "experiments/clip/binding_probe.py"):
        text = (root / script).read_text()
        assert "trained_scene_resolution(args." in text and "type=int, default=32" not in text, script


def test_trained_scene_resolution_refuses_a_bad_file_and_reads_a_legacy_one(tmp_path):
    """Memory-mapped now (the bytes it reads: tests/test_sample_cli.py's
    test_a_checkpoints_plain_values_are_read_without_its_weights): a file that is not a checkpoint is still refused
    with safe_load's message, and torch's old non-zip format (which cannot be mapped) is read whole, as before."""
    from zoo.checkpoint import CorruptCheckpointError
    from zoo.models.clip.scorer import trained_scene_resolution

    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all" * 100)
    with pytest.raises(CorruptCheckpointError, match=r"garbage\.ckpt is (corrupt|truncated)"):
        trained_scene_resolution(str(garbage))
    legacy = tmp_path / "legacy.ckpt"
    torch.save({"zoo_config": {"data": {"resolution": 48}}}, legacy, _use_new_zipfile_serialization=False)
    assert trained_scene_resolution(str(legacy)) == 48


def test_a_clip_checkpoint_runs_with_the_activation_it_trained_with(tmp_path):
    """clip.arch=<arch> clip.checkpoint=<zoo-train CLIP .ckpt> (zoo-embed / zoo-eval) and model.checkpoint= (zoo-train)
    built the network from arch alone: a CLIP trained with QuickGELU (net.quick_gelu, or pretrained=openai, as
    zoo-convert's OpenAI conversions are) ran GELU without a word. Now refused with the fix; its own settings load."""
    torch.manual_seed(0)
    m = ClipLit(preset="tiny", net={"quick_gelu": True})
    path = tmp_path / "qg.ckpt"
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams), "zoo_component": "clip"}, path)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with pytest.raises(ConfigError, match=r"trained with quick_gelu True \(here False\).*clip.checkpoint=.* alone"):
        ClipScorer.from_config({"arch": "zoo-clip-tiny", "checkpoint": str(path)})
    with pytest.raises(ConfigError, match="quick_gelu True"):
        ClipLit(preset="tiny", checkpoint=str(path))
    want = m.scorer().encode_image(x)
    for s in (
        ClipScorer.from_config({"checkpoint": str(path)}),
        ClipScorer.from_config({"arch": "zoo-clip-tiny", "checkpoint": str(path), "net": {"quick_gelu": True}}),
        ClipLit(preset="tiny", net={"quick_gelu": True}, checkpoint=str(path)).scorer(),
    ):
        assert torch.equal(s.encode_image(x), want)
    # another image size on the same weights (zoo-eval's clip.net) is not a setting the weights lack: still loads
    net = {"quick_gelu": True, "vision_cfg": {"image_size": 64}}
    assert ClipScorer.from_config({"arch": "zoo-clip-tiny", "checkpoint": str(path), "net": net}).image_size == 64


def test_every_trainable_parameter_gets_a_gradient_with_a_logit_bias():
    """A SigLIP-style CLIP (logit_bias; here net.init_logit_bias) trained here: the softmax loss never reads the bias,
    so it had no gradient and DDP (trainer=ddp / ddp_cpu) stopped at the second step ('parameters that were not used
    in producing the loss'). It is frozen now: every trainable parameter gets a gradient, the bias keeps its value."""
    torch.manual_seed(0)
    m = ClipLit(preset="tiny", net={"init_logit_bias": -10.0})
    img, txt = m.embed(pairs(4))
    m.loss_fn(img, txt, m.clip.logit_scale.exp()).backward()
    unused = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == [] and m.clip.logit_bias.item() == -10.0


def test_the_logit_scale_clamp_is_in_the_weights_the_step_end_checkpoint_holds(tmp_path):
    """CLIP clamps its temperature at 1/100 after each update. The clamp ran in the module's on_train_batch_end, which
    Lightning calls after the callbacks' (ModelCheckpoint's save): a checkpoint of that step held the unclamped
    scale, so a resume from it started elsewhere than the uninterrupted run."""
    seen = []

    class AtStepEnd(L.Callback):  # what a checkpoint callback saving at the step's end sees
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(pl_module.clip.logit_scale.item())

    torch.manual_seed(0)
    m = ClipLit(preset="tiny")
    with torch.no_grad():
        m.clip.logit_scale.fill_(math.log(100) + 0.5)  # past the clamp, as a long run gets
    t = _trainer(tmp_path, max_steps=2, limit_val_batches=0, enable_checkpointing=False, callbacks=[AtStepEnd()])
    t.fit(m, loader(pairs(16, seed=1)))
    assert len(seen) == 2 and max(seen) <= math.log(100) + 1e-6, seen
