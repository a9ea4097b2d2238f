"""ClipScorer (no Lightning): CLIP score and similarity against hand computations, reranking order, the model's own
preprocessing, open_clip-file loading, zoo-embed output served by index, and that nothing imports Lightning."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from zoo.models.clip.scorer import ClipLike, ClipScorer, resize_for_clip


class StubClip(torch.nn.Module):
    """A ClipLike with hand-set embeddings. Image i is a constant image of value i after the [-1,1]->[0,1] map
    (mean 0 / std 1), so ``encode_image`` reads the id back from a pixel; caption "t" has text id t."""

    def __init__(self, img_emb, txt_emb):
        super().__init__()
        self.img_emb, self.txt_emb = img_emb, txt_emb
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))

    def encode_image(self, pixels):
        return self.img_emb[pixels[:, 0, 0, 0].round().long()]

    def encode_text(self, tokens):
        return self.txt_emb[tokens[:, 0]]


# unnormalised on purpose: the scorer must normalise. Image vectors / lengths: e0=(2,0)/2, e1=(3,4)/5,
# e2=(0,1)/1, e3=(-1,0)/1, e4=(1,1)/sqrt2. Text vectors: t0=(1,0), t1=(0,3)/3.
IMG = torch.tensor([[2.0, 0.0], [3.0, 4.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]])
TXT = torch.tensor([[1.0, 0.0], [0.0, 3.0]])


def stub_scorer(batch_size=256):
    tok = lambda caps: torch.tensor([[int(c)] for c in caps])  # noqa: E731
    return ClipScorer(StubClip(IMG, TXT), tok, image_size=4, mean=(0, 0, 0), std=(1, 1, 1), batch_size=batch_size)


def images(ids, size=4):
    return torch.stack([torch.full((3, size, size), 2.0 * i - 1) for i in ids])  # (x+1)/2 == i


def test_stub_is_cliplike():
    assert isinstance(StubClip(IMG, TXT), ClipLike)


def test_clip_score_equals_hand_computation():
    s = stub_scorer()
    got = s.clip_score(images([0, 1, 2, 3, 4]), ["0", "0", "1", "0", "1"])
    # cos: e0.t0 = 1, e1.t0 = 3/5, e2.t1 = 1, e3.t0 = -1 -> clamped to 0, e4.t1 = 1/sqrt2; score = 100*max(cos, 0)
    assert got.tolist() == pytest.approx([100.0, 60.0, 100.0, 0.0, 100 / 2**0.5], abs=1e-4)
    sim = s.similarity(images([1, 3]), ["0", "1"])  # (N_images, N_captions) cosine, not clamped
    assert sim.tolist()[0] == pytest.approx([0.6, 0.8]) and sim.tolist()[1] == pytest.approx([-1.0, 0.0])
    with pytest.raises(ValueError, match="pairs"):
        s.clip_score(images([0, 1]), ["0"])
    assert s.logit_scale == pytest.approx(torch.tensor(2.0).exp().item())


def test_encoders_normalise_and_batch_consistently():
    a, b = stub_scorer(), stub_scorer(batch_size=2)
    x = images([0, 1, 2, 3, 4])
    ea, eb = a.encode_image(x), b.encode_image(x)
    assert torch.allclose(ea.norm(dim=-1), torch.ones(5)) and torch.equal(ea, eb)
    assert torch.equal(a.encode_text(["1", "0", "1"]), b.encode_text(["1", "0", "1"]))


def test_rerank_returns_best_in_order():
    s = stub_scorer()
    cands = images([3, 0, 2, 1, 4])
    # caption "1" = (0,1): cosines per candidate: e3 0, e0 0, e2 1, e1 0.8, e4 0.707 -> order 2, 3, 4
    top, scores, idx = s.rerank(cands, "1", top_k=3)
    assert idx.tolist() == [2, 3, 4]
    assert scores.tolist() == pytest.approx([1.0, 0.8, 2**-0.5], abs=1e-6)
    assert torch.equal(top, cands[[2, 3, 4]])
    # caption "0" = (1,0): e3 -1, e0 1, e2 0, e1 0.6, e4 0.707; k larger than N keeps all, sorted
    _, scores_all, idx_all = s.rerank(cands, "0", top_k=99)
    assert idx_all.tolist() == [1, 4, 3, 2, 0]
    assert scores_all.tolist() == pytest.approx([1.0, 2**-0.5, 0.6, 0.0, -1.0], abs=1e-6)


def test_rerank_batched_matches_rerank_per_caption():
    s = stub_scorer()
    cands = torch.stack([images([3, 0, 2, 1]), images([4, 2, 0, 3])])  # (B=2, N=4, 3, H, W)
    top, scores, idx = s.rerank_batched(cands, ["1", "0"], top_k=2)
    assert top.shape == (2, 2, 3, 4, 4)
    for b, cap in enumerate(["1", "0"]):
        t1, s1, i1 = s.rerank(cands[b], cap, top_k=2)
        assert torch.equal(idx[b], i1) and torch.allclose(scores[b], s1) and torch.equal(top[b], t1)


def test_preprocess_resizes_like_open_clip_and_normalises():
    from open_clip.transform import image_transform
    from PIL import Image

    torch.manual_seed(0)
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    s = ClipScorer(StubClip(IMG, TXT), lambda c: None, image_size=32, mean=mean, std=std)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 8), size=(48, 64), mode="bilinear")  # (1,3,48,64)
    img = smooth * 2 - 1
    ours = s.preprocess(img)
    assert ours.shape == (1, 3, 32, 32)
    pil = Image.fromarray((smooth[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
    ref = image_transform(32, is_train=False, mean=mean, std=std, resize_mode="shortest")(pil)
    # PIL's uint8 bicubic vs torch's float antialiased bicubic on the same shortest-side resize + centre crop
    assert (ours[0] - ref).abs().mean() < 0.03
    # no resize when already at the model's size: exactly ((x+1)/2 - mean)/std
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    want = ((x + 1) / 2 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(s.preprocess(x), want, atol=1e-6)
    with pytest.raises(ValueError, match="N, 3, H, W"):
        s.preprocess(torch.zeros(3, 32, 32))


def test_resize_modes():
    x = torch.rand(2, 3, 20, 40)
    assert resize_for_clip(x, 16, "shortest").shape == (2, 3, 16, 16)
    assert resize_for_clip(x, 16, "squash").shape == (2, 3, 16, 16)
    padded = resize_for_clip(x, 16, "longest")
    assert padded.shape == (2, 3, 16, 16) and (padded[..., :4, :] == 0).all()  # 8 rows of image, centred


def _tiny_openclip_file(tmp_path, prefix="", fmt="pt"):
    from zoo.models.clip.model import create_clip

    torch.manual_seed(1)
    model = create_clip("zoo-clip-tiny")
    sd = {prefix + k: v for k, v in model.state_dict().items()}
    path = tmp_path / f"tiny.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save({"state_dict": sd, "epoch": 3}, path)  # open_clip's training checkpoint layout
    return model, path


@pytest.mark.parametrize("prefix,fmt", [("", "pt"), ("module.", "pt"), ("", "safetensors")])
def test_from_open_clip_loads_local_file(tmp_path, prefix, fmt):
    model, path = _tiny_openclip_file(tmp_path, prefix, fmt)
    s = ClipScorer.from_open_clip("zoo-clip-tiny", checkpoint=str(path))
    ref = ClipScorer.from_model(model, __import__("open_clip").get_tokenizer("zoo-clip-tiny"))
    imgs, caps = torch.rand(3, 3, 40, 40) * 2 - 1, ["a red circle", "two blue squares", "a star"]
    assert s.image_size == 32
    assert torch.equal(s.encode_image(imgs), ref.encode_image(imgs))
    assert torch.equal(s.encode_text(caps), ref.encode_text(caps))
    assert s.tokenize(caps).shape == (3, 32)


def test_wrong_architecture_file_is_a_config_error(tmp_path):
    from zoo.errors import ConfigError

    _, path = _tiny_openclip_file(tmp_path)
    with pytest.raises(ConfigError, match="does not fit"):
        ClipScorer.from_open_clip("zoo-clip-shapes", checkpoint=str(path))


def test_an_open_clip_file_given_alone_names_the_option_of_the_command_run(tmp_path):
    """zoo-embed / zoo-eval / zoo-recaption clip.checkpoint=<an open_clip file> without clip.arch failed with
    create_clip's "(fix: model.arch= / model.net=)": zoo-train's options, not the ones of the command run. Now the fix
    is clip.arch= with that file; where a zoo-train CLIP is the only choice (generator.clip_ckpt), it says so."""
    from zoo.errors import ConfigError

    _, path = _tiny_openclip_file(tmp_path)
    with pytest.raises(ConfigError, match="records no CLIP settings") as e:
        ClipScorer.from_config({"checkpoint": str(path), "device": "cpu"})  # zoo-embed's clip node
    assert f"fix: clip.arch=<its architecture, e.g. ViT-B-32> clip.checkpoint={path})" in str(e.value)
    assert "model.arch" not in str(e.value)
    with pytest.raises(ConfigError, match=r"records no CLIP settings.*fix: a zoo-train model=clip checkpoint"):
        ClipScorer.from_lightning_checkpoint(str(path))
    assert ClipScorer.from_config({"checkpoint": str(path), "arch": "zoo-clip-tiny"}).image_size == 32  # the fix


def test_embed_dataset_and_attach_embeddings(tmp_path):
    from zoo.data.shapes import ShapesDataset
    from zoo.embed import attach_embeddings, embed_dataset, load_embeddings

    model, path = _tiny_openclip_file(tmp_path)
    s = ClipScorer.from_open_clip("zoo-clip-tiny", checkpoint=str(path))
    ds = ShapesDataset("val", 7, 32)
    out = embed_dataset(s, ds, tmp_path / "emb" / "val.pt", batch_size=3, progress=False)
    emb = load_embeddings(out)
    assert emb["clip_image_emb"].shape == (7, 32) and emb["clip_text_tokens"].shape == (7, 32)
    served = attach_embeddings(ds, out)
    items = [served[i] for i in (0, 4, 6)]
    imgs = torch.stack([it["image"] for it in items])
    torch.testing.assert_close(torch.stack([it["clip_image_emb"] for it in items]), s.encode_image(imgs))
    torch.testing.assert_close(
        torch.stack([it["clip_text_emb"] for it in items]), s.encode_text([it["caption"] for it in items])
    )
    assert torch.equal(items[1]["clip_text_tokens"], s.tokenize([items[1]["caption"]])[0])
    meta = torch.load(out, weights_only=True)["meta"]
    assert meta["n"] == 7 and meta["dim"] == 32
    assert meta["clip_fingerprint"] == s.fingerprint and len(s.fingerprint) == 16


def test_clip_fingerprint_names_the_weights_not_the_file(tmp_path):
    """The same weights loaded twice (or from a copy) share a fingerprint; a CLIP that differs in one value of one
    tensor (a training step) does not; a model that is not an nn.Module has none."""
    from zoo.models.clip.scorer import clip_fingerprint

    model, path = _tiny_openclip_file(tmp_path)
    a = ClipScorer.from_open_clip("zoo-clip-tiny", checkpoint=str(path))
    copy = tmp_path / "copy.pt"
    copy.write_bytes(path.read_bytes())
    assert ClipScorer.from_open_clip("zoo-clip-tiny", checkpoint=str(copy)).fingerprint == a.fingerprint
    assert clip_fingerprint(model) == a.fingerprint
    for name, p in sorted(model.named_parameters())[-1:] + sorted(model.named_parameters())[:1]:
        before = clip_fingerprint(model)
        with torch.no_grad():
            p.view(-1)[0] += 1e-3
        assert clip_fingerprint(model) != before, name
    assert clip_fingerprint(object()) is None


def test_scorer_and_model_do_not_import_lightning():
    code = (
        "import sys; import zoo.models.clip.scorer, zoo.models.clip.model; "
        "bad = [m for m in ('lightning', 'pytorch_lightning', 'hydra') if m in sys.modules]; "
        "assert not bad, bad"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    assert r.returncode == 0, r.stderr[-2000:]


def test_a_zoo_embed_file_as_the_clip_checkpoint_is_named(tmp_path):
    """clip_ckpt=<a zoo-embed file> (zoo-serve, zoo-sample, the decoder's model.clip_ckpt) was read as CLIP weights:
    "does not fit CLIP architecture 'zoo-clip-shapes': 98 missing keys ... (fix: model.arch= / model.net=)", a
    wrong fix. Now it says the file is a zoo-embed output and what to pass."""
    from zoo.checkpoint import atomic_torch_save
    from zoo.errors import ConfigError
    from zoo.models.clip.scorer import ClipScorer

    path = atomic_torch_save(
        {"clip_image_emb": torch.zeros(2, 4), "clip_text_emb": torch.zeros(2, 4)}, tmp_path / "e.pt"
    )
    with pytest.raises(ConfigError, match=f"{path} is a zoo-embed output .* not a CLIP checkpoint"):
        ClipScorer.from_lightning_checkpoint(str(path))


def test_another_components_checkpoint_as_clip_weights_is_named(tmp_path):
    """model.checkpoint= / clip.arch=+clip.checkpoint= given a zoo-train checkpoint of another component said "does
    not fit CLIP architecture ... (fix: model.arch= / model.net=)", a wrong fix: no architecture loads it."""
    from zoo.errors import ConfigError

    path = tmp_path / "glide.ckpt"
    sd = {"model.unet.conv.weight": torch.zeros(4, 3, 3, 3)}
    torch.save({"state_dict": sd, "hyper_parameters": {}, "zoo_component": "glide"}, path)
    with pytest.raises(ConfigError, match=r"zoo-train 'glide' checkpoint, not CLIP weights.*fix: model.checkpoint="):
        ClipScorer.from_config({"arch": "zoo-clip-tiny", "checkpoint": str(path)})


def test_an_openai_torchscript_clip_file_is_named_with_its_conversion(tmp_path):
    """OpenAI's original CLIP files (ViT-B-32.pt from openaipublic, the `clip` package's cache) are TorchScript
    archives. Given as clip.checkpoint= / model.checkpoint= one was "truncated or corrupt ... use another checkpoint
    (e.g. the run's last.ckpt)", the wrong fix for a sound file. Now it is named, with the one-off conversion."""
    from zoo.errors import ConfigError

    path = tmp_path / "ViT-B-32.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    for node in ({"arch": "zoo-clip-tiny", "checkpoint": str(path)}, {"checkpoint": str(path)}):
        with pytest.raises(ConfigError, match=r"TorchScript archive.*load_openai_model.*clip.pretrained=openai"):
            ClipScorer.from_config(node)


def test_unknown_architecture_names_the_option():
    from zoo.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown open_clip architecture 'zoo-clip-nope' \(clip.arch="):
        ClipScorer.from_config({"arch": "zoo-clip-nope"})


def test_rebuilding_a_clip_checkpoint_fetches_no_tower_weights_it_names(tmp_path, monkeypatch):
    """A CLIP checkpoint whose stored net sets vision_cfg.timm_model_pretrained sent every rebuild (load_module,
    ClipScorer.from_lightning_checkpoint) to the Hugging Face hub for the weights it named, which the state dict
    then replaced: the file chose a download, and offline the load failed."""
    import timm.models._builder as timm_builder

    from zoo.checkpoint import atomic_torch_save, load_module
    from zoo.models.clip.lit import ClipLit

    vision = {"timm_model_name": "resnet18", "timm_pool": "avg", "timm_proj": "linear"}
    lit = ClipLit(preset="shapes", net={"vision_cfg": {**vision, "timm_model_pretrained": False}}, load_weights=False)
    path = tmp_path / "clip.ckpt"
    hp = {"preset": "shapes", "net": {"vision_cfg": {**vision, "timm_model_pretrained": True}}}
    atomic_torch_save({"zoo_component": "clip", "hyper_parameters": hp, "state_dict": lit.state_dict()}, path)
    fetched = []

    def no_fetch(model, pretrained_cfg=None, *args, **kwargs):
        fetched.append((pretrained_cfg or {}).get("hf_hub_id"))
        raise OSError("no network in tests")

    monkeypatch.setattr(timm_builder, "load_pretrained", no_fetch)
    rebuilt = load_module(path)
    scorer = ClipScorer.from_lightning_checkpoint(str(path))
    assert fetched == []
    for got in (rebuilt.state_dict(), {f"clip.{k}": v for k, v in scorer.model.state_dict().items()}):
        w = "clip.visual.trunk.conv1.weight"
        torch.testing.assert_close(got[w], lit.state_dict()[w])


def test_an_interpolation_other_than_bicubic_or_bilinear_is_refused_not_taken_as_bicubic():
    from zoo.data.transforms import resize_center_crop

    x = torch.rand(1, 3, 12, 16) * 2 - 1
    bilinear = resize_center_crop(x, 8, interpolation="bilinear")
    assert not torch.equal(bilinear, resize_center_crop(x, 8, interpolation="bicubic"))
    with pytest.raises(ValueError, match="interpolation must be bicubic or bilinear, got 'nearest'"):
        resize_center_crop(x, 8, interpolation="nearest")  # before: bicubic without a word


def test_clip_net_applies_to_a_zoo_train_checkpoint_given_alone(tmp_path):
    """clip.checkpoint=<zoo-train CLIP .ckpt> with clip.net (no clip.arch) dropped the net without a word: the CLIP
    read 32 px where 64 px was asked for, and zoo-eval keyed its cached features by that net all the same."""
    from zoo.models.clip.lit import ClipLit

    torch.manual_seed(0)
    m = ClipLit(preset="tiny")
    path = tmp_path / "clip.ckpt"
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams), "zoo_component": "clip"}, path)
    assert ClipScorer.from_config({"checkpoint": str(path)}).image_size == 32
    wide = ClipScorer.from_config({"checkpoint": str(path), "net": {"vision_cfg": {"image_size": 64}}})
    assert wide.image_size == 64 and wide.model.visual.positional_embedding.shape[0] == 8 * 8 + 1
    caps = ["a red star"]
    assert torch.equal(wide.encode_text(caps), m.scorer().encode_text(caps))  # the same weights


def test_a_pretrained_tag_with_a_checkpoint_alone_is_refused_unless_it_is_the_checkpoints_own(tmp_path):
    """clip.pretrained=<tag> with clip.checkpoint and no clip.arch (zoo-embed, zoo-eval, zoo-recaption) was dropped
    without a word, though the tag sets QuickGELU and mean/std. A zoo-train checkpoint runs with the settings it
    recorded: the same tag loads, another is refused; an open_clip weights file needs clip.arch. Before any weights
    are read."""
    from zoo.errors import ConfigError
    from zoo.models.clip.lit import ClipLit

    torch.manual_seed(0)
    m = ClipLit(preset="tiny")
    trained = tmp_path / "clip.ckpt"
    hp = {**dict(m.hparams), "pretrained": "openai"}
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": hp, "zoo_component": "clip"}, trained)
    own = ClipScorer.from_config({"checkpoint": str(trained), "pretrained": "openai"})
    assert torch.equal(
        own.encode_text(["a red star"]),
        ClipScorer.from_config({"checkpoint": str(trained)}).encode_text(["a red star"]),
    )
    with pytest.raises(
        ConfigError,
        match=r"clip\.pretrained=laion2b_s34b_b79k does not apply to .*its pretrained=openai.*fix: drop clip\.pretrained",
    ):
        ClipScorer.from_config({"checkpoint": str(trained), "pretrained": "laion2b_s34b_b79k"})
    weights = tmp_path / "open_clip.pt"
    torch.save(m.clip.state_dict(), weights)
    with pytest.raises(
        ConfigError,
        match=r"needs clip\.arch.*fix: clip\.arch=<its architecture.* clip\.pretrained=openai clip\.checkpoint=",
    ):
        ClipScorer.from_config({"checkpoint": str(weights), "pretrained": "openai"})
