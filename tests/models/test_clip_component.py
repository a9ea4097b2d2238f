"""CLIP: learning on a fixed batch, ClipScorer arithmetic and reranking, checkpoint round trip, offline errors."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from zoo.data.shapes import ShapesDataset
from zoo.errors import ConfigError, MissingWeightsError
from zoo.models.clip.lit import ClipLit, recall_at_k
from zoo.models.clip.scorer import ClipScorer


def _batch(n=16):
    ds = ShapesDataset("train", n, 32, min_objects=1, max_objects=1)
    items = [ds[i] for i in range(n)]
    return {"image": torch.stack([s["image"] for s in items]), "caption": [s["captions"]["short"] for s in items]}


def test_contrastive_loss_falls_on_fixed_batch():
    torch.manual_seed(0)
    m = ClipLit(preset="tiny")
    m.loss_fn.world_size = 1
    batch = _batch()
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    losses = []
    for _ in range(60):
        img, txt = m.embed(batch)
        loss = m.loss_fn(img, txt, m.clip.logit_scale.exp())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 2, (losses[0], losses[-1])


class _StubClip(torch.nn.Module):
    """A ClipLike with hand-set embeddings: image i -> e_img[i], text with id t -> e_txt[t]."""

    def __init__(self, img_emb, txt_emb):
        super().__init__()
        self.img_emb, self.txt_emb = img_emb, txt_emb
        self.logit_scale = torch.nn.Parameter(torch.tensor(0.0))

    def encode_image(self, pixels):  # pixel [0,0,0] channel 0 mean carries the image id
        ids = pixels[:, 0, 0, 0].round().long()
        return self.img_emb[ids]

    def encode_text(self, tokens):
        return self.txt_emb[tokens[:, 0]]


def _stub_scorer():
    img = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    tok = lambda caps: torch.tensor([[int(c)] for c in caps])  # caption "0" / "1" -> text id
    # mean 0 / std 1 and images whose pixels equal their index after [-1,1] -> [0,1] mapping
    return ClipScorer(_StubClip(img, txt), tok, image_size=4, mean=(0, 0, 0), std=(1, 1, 1))


def _images(ids):
    return torch.stack([torch.full((3, 4, 4), 2.0 * i - 1) for i in ids])  # (x+1)/2 == i


def test_clip_score_equals_hand_computation():
    s = _stub_scorer()
    got = s.clip_score(_images([0, 1, 2, 3]), ["0", "0", "1", "0"])
    # cosines: 1, 0.6, 1, -1 -> 100*max(cos,0)
    assert got.tolist() == pytest.approx([100.0, 60.0, 100.0, 0.0])
    sim = s.similarity(_images([1]), ["0", "1"])
    assert sim.tolist() == [pytest.approx([0.6, 0.8])]


def test_rerank_returns_best_in_order():
    s = _stub_scorer()
    images = _images([3, 0, 2, 1])
    top, scores, idx = s.rerank(images, "1", top_k=2)  # text 1 = (0,1): best image 2 (1.0), then image 1 (0.8)
    assert idx.tolist() == [2, 3] and scores.tolist() == pytest.approx([1.0, 0.8])
    assert torch.equal(top, images[[2, 3]])


def test_recall_at_k():
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.7, 0.1], [0.5, 0.4, 0.0]])
    assert recall_at_k(sim, 1) == pytest.approx(1 / 3) and recall_at_k(sim, 2) == pytest.approx(2 / 3)


def test_trained_checkpoint_loads_with_identical_embeddings(train_cfg, tmp_path, train_helpers):
    from zoo.train import train

    T = train_helpers
    cfg = train_cfg("model=clip", "model.preset=tiny", *T.sizes(), *T.TWO_STEPS)
    train(cfg)
    ckpt = T.last_ckpt(cfg)
    from zoo.checkpoint import load_module

    trained = load_module(ckpt)
    batch = _batch(4)
    a = trained.scorer()
    b = ClipScorer.from_lightning_checkpoint(str(ckpt))
    c = ClipLit(preset="tiny", checkpoint=str(ckpt)).scorer()  # model.checkpoint=...
    for s in (b, c):
        assert torch.equal(s.encode_image(batch["image"]), a.encode_image(batch["image"]))
        assert torch.equal(s.encode_text(batch["caption"]), a.encode_text(batch["caption"]))
    fresh = ClipLit(preset="tiny").scorer()
    assert not torch.equal(fresh.encode_text(batch["caption"]), a.encode_text(batch["caption"]))


def test_offline_pretrained_names_option_and_file(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(MissingWeightsError, match="model.checkpoint="):
        ClipLit(preset="tiny", arch="ViT-B-32", pretrained="openai")
    with pytest.raises(MissingWeightsError, match="nothere.pt"):
        ClipLit(preset="tiny", checkpoint=str(tmp_path / "nothere.pt"))


def test_malicious_clip_checkpoint_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned_clip",))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "x": Evil()}, path)
    with pytest.raises(pickle.UnpicklingError):
        ClipLit(preset="tiny", checkpoint=str(path))
    assert not os.path.exists("pwned_clip")


def test_zoo_embed_writes_embeddings_the_datamodule_serves(tmp_path):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from zoo.embed import embed
    from zoo.train import instantiate

    torch.manual_seed(0)
    ckpt = tmp_path / "clip.pt"
    m = ClipLit(preset="tiny")
    torch.save({"state_dict": m.clip.state_dict()}, ckpt)  # an open_clip-style file
    out = tmp_path / "emb.pt"
    data = ["data.train_size=8", "data.val_size=6", "data.test_size=6"]
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose(
            "embed",
            overrides=[
                f"clip.checkpoint={ckpt}",
                "clip.arch=zoo-clip-tiny",
                "split=val",
                f"out={out}",
                "batch_size=4",
                f"paths.root_dir={tmp_path}",
                *data,
            ],
        )
    embed(cfg)
    dm = instantiate(OmegaConf.merge(cfg.data, {"features": {"val": str(out)}}))
    batch = next(iter(dm.val_dataloader()))
    expected = m.scorer()
    torch.testing.assert_close(batch["clip_image_emb"], expected.encode_image(batch["image"]))
    torch.testing.assert_close(batch["clip_text_emb"], expected.encode_text(batch["caption"]))
    # the file records the data it was made from; served for another world's scenes it is refused
    assert torch.load(out, weights_only=True)["meta"]["data"] == dm.features_identity("val")
    with pytest.raises(ConfigError, match="world_seed: 0 in the file, 3 here"):
        instantiate(OmegaConf.merge(cfg.data, {"features": {"val": str(out)}, "world_seed": 3})).dataset("val")


@pytest.mark.parametrize(
    "option, message",
    [
        ("split=bogus", "unknown split 'bogus'"),
        ("batch_size=0", "batch_size=0 must be a whole number >= 1"),
        ("batch_size=-2", "batch_size=-2 must be a whole number >= 1"),
        ("text_encodings=maybe", "text_encodings='maybe' must be true or false"),
        ("+clip.device=cuda", r"clip.device=cuda, but no CUDA device is visible .*fix: clip.device=cpu"),
        ("clip.pretrained=null", r"clip.arch=zoo-clip-tiny without clip.pretrained or clip.checkpoint is an untrained"),
    ],
)
def test_zoo_embed_refuses_bad_options_before_the_clip_is_built(tmp_path, monkeypatch, option, message):
    """A bad split was found only after the CLIP had loaded (a ViT-H: minutes), batch_size=-2 was torch's bare
    ValueError, batch_size=0 ran with 128 and text_encodings=maybe wrote the encodings, all without a word.
    clip.device=cuda without a GPU was torch's "Found no NVIDIA driver" from inside the load, and clip.arch with
    neither a pretrained tag nor a checkpoint embedded the split with an untrained (random) CLIP, silently."""
    if option.startswith("+clip.device") and torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from zoo.embed import embed
    from zoo.errors import ConfigError

    def built(*args, **kwargs):
        raise AssertionError("the CLIP was built before the options were checked")

    monkeypatch.setattr(ClipScorer, "from_config", built)
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose("embed", overrides=["clip.arch=zoo-clip-tiny", f"out={tmp_path / 'e.pt'}", option])
    with pytest.raises(ConfigError, match=message):
        embed(cfg)
