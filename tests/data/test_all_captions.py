"""zoo-embed captions=all on MS-COCO train: every caption of each image is embedded, and the DataModule serves an
image with the rows of the caption drawn for that access (another each epoch, the same after a resume). Before, one
caption per image was embedded and the unCLIP priors trained on 1 of ~5 captions for every epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from zoo.checkpoint import safe_load
from zoo.data.coco import CocoCaptions
from zoo.errors import ConfigError

CAPTIONS = {0: 3, 1: 5, 2: 4}  # image -> how many captions


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco3")
    (root / "annotations").mkdir()
    for part in ("train", "val"):
        (root / f"{part}2014").mkdir()
        images, anns = [], []
        for i, n in CAPTIONS.items():
            name = f"{part}{i}.png"
            Image.new("RGB", (20, 20), (70 * i, 200 - 50 * i, 30)).save(root / f"{part}2014" / name)
            images.append({"id": 100 + i, "file_name": name})
            shapes = ("circle", "square", "star", "ring", "cross")
            anns += [{"image_id": 100 + i, "id": 10 * i + j, "caption": f"a {shapes[j]} on {i}"} for j in range(n)]
        (root / "annotations" / f"captions_{part}2014.json").write_text(
            json.dumps({"images": images, "annotations": anns})
        )
    return root


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    from zoo.models.clip.model import create_clip
    from zoo.models.clip.scorer import ClipScorer

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("clip") / "clip.pt"
    torch.save({"state_dict": create_clip("zoo-clip-tiny").state_dict()}, path)
    return ClipScorer.from_open_clip("zoo-clip-tiny", checkpoint=str(path))


def _embed(scorer, root, out, split="train", **kw):
    from zoo.embed import embed_dataset

    ds = CocoCaptions(str(root), split, resolution=scorer.image_size)
    return safe_load(embed_dataset(scorer, ds, out, batch_size=2, progress=False, **kw)), ds


def test_the_train_file_holds_every_caption_of_each_image(coco_root, scorer, tmp_path):
    from zoo.models.clip.model import text_token_encodings

    feats, ds = _embed(scorer, coco_root, tmp_path / "train.pt", text_encodings=True)
    texts = [c for i in range(len(ds)) for c in ds.caption_choices(i)]
    assert len(texts) == sum(CAPTIONS.values())
    assert feats["clip_caption_counts"].tolist() == list(CAPTIONS.values())
    assert len(feats["clip_image_emb"]) == len(CAPTIONS)
    assert feats["meta"]["captions"] == "all" and feats["meta"]["n_captions"] == len(texts)
    torch.testing.assert_close(feats["clip_text_emb"], scorer.encode_text(texts), atol=1e-5, rtol=1e-4)
    assert torch.equal(feats["clip_text_tokens"], scorer.tokenize(texts).long())
    enc, mask = text_token_encodings(scorer.model, scorer.tokenize(texts))
    torch.testing.assert_close(feats["clip_text_encodings"].float(), enc, atol=2e-3, rtol=2e-3)
    assert torch.equal(feats["clip_text_mask"], mask)
    # val / test serve the first caption whatever the epoch: auto keeps the one-row-per-image layout there
    val, _ = _embed(scorer, coco_root, tmp_path / "val.pt", split="val")
    assert "clip_caption_counts" not in val and len(val["clip_text_emb"]) == len(val["clip_image_emb"])


def _epoch_samples(dm, epoch):
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    out = {}
    for batch in loader:
        for b, i in enumerate(batch["index"].tolist()):
            keys = ("caption", "clip_text_emb", "clip_text_tokens", "clip_text_encodings")
            out[i] = {k: batch[k][b] for k in keys if k in batch}
    return out


def test_the_datamodule_serves_each_epochs_caption_with_its_own_features(coco_root, scorer, tmp_path):
    from omegaconf import OmegaConf

    from zoo.data.modules import CocoDataModule
    from zoo.embed import embed
    from zoo.models.clip.model import text_token_encodings

    path = tmp_path / "train.pt"
    data = {"_target_": "zoo.data.modules.CocoDataModule", "root": str(coco_root), "resolution": scorer.image_size}
    ckpt = tmp_path / "clip.pt"
    torch.save({"state_dict": scorer.model.state_dict()}, ckpt)
    cfg = OmegaConf.create(
        {"clip": {"arch": "zoo-clip-tiny", "checkpoint": str(ckpt)}, "data": data, "split": "train", "out": str(path)}
    )
    embed(OmegaConf.merge(cfg, {"batch_size": 2, "text_encodings": True, "seed": 0}))

    def module(seed=0):
        features = {"train": str(path)}
        return CocoDataModule(
            root=str(coco_root), resolution=scorer.image_size, batch_size=3, seed=seed, features=features
        )

    dm = module()
    seen: dict[int, set] = {i: set() for i in CAPTIONS}
    epochs = {e: _epoch_samples(dm, e) for e in range(6)}
    for e, samples in epochs.items():
        assert sorted(samples) == sorted(CAPTIONS)
        for i, s in samples.items():
            assert s["caption"] in CocoCaptions(str(coco_root), "train").caption_choices(i)
            seen[i].add(s["caption"])
            torch.testing.assert_close(s["clip_text_emb"], scorer.encode_text([s["caption"]])[0], atol=1e-5, rtol=1e-4)
            tokens = scorer.tokenize([s["caption"]])
            assert torch.equal(s["clip_text_tokens"], tokens[0].long())
            enc, _ = text_token_encodings(scorer.model, tokens)
            torch.testing.assert_close(s["clip_text_encodings"].float(), enc[0], atol=2e-3, rtol=2e-3)
    assert all(len(c) > 1 for c in seen.values()), seen  # 6 epochs: each image met more than one of its captions

    # a resumed run (a fresh DataModule) sees each epoch's captions and rows again
    again = _epoch_samples(module(), 4)
    for i, s in again.items():
        assert s["caption"] == epochs[4][i]["caption"] and torch.equal(
            s["clip_text_emb"], epochs[4][i]["clip_text_emb"]
        )
    # the seed draws when served: a file made under seed 0 keeps its text features under seed 1 (all are in it)
    assert "clip_text_emb" in module(seed=1).dataset("train")[0]
    # whole-column readers get one row per image, its first caption
    from zoo.embed import load_embeddings

    cols = load_embeddings(path)
    assert {len(v) for v in cols.values()} == {len(CAPTIONS)} and "clip_caption_counts" not in cols
    ds = CocoCaptions(str(coco_root), "train")
    first = scorer.encode_text([ds.caption_choices(i)[0] for i in range(len(ds))])
    torch.testing.assert_close(cols["clip_text_emb"], first, atol=1e-5, rtol=1e-4)
    assert len(dm.dataset("train").features["clip_text_emb"]) == len(CAPTIONS)  # (the AR prior's PCA fit reads it)


def test_a_one_caption_file_is_served_as_before(coco_root, scorer, tmp_path):
    from zoo.data.modules import CocoDataModule

    feats, ds = _embed(scorer, coco_root, tmp_path / "one.pt", captions="one")
    assert "clip_caption_counts" not in feats and len(feats["clip_text_emb"]) == len(CAPTIONS)
    features = {"train": str(tmp_path / "one.pt")}
    dm = CocoDataModule(root=str(coco_root), resolution=scorer.image_size, batch_size=3, features=features)
    samples = _epoch_samples(dm, 1)
    for i, s in samples.items():  # row i whatever caption is drawn: the file's one row per image
        assert torch.equal(s["clip_text_emb"], feats["clip_text_emb"][i])


def test_an_interrupted_all_captions_run_resumes_to_the_uninterrupted_file(coco_root, scorer, tmp_path):
    from zoo.embed import embed_dataset
    from zoo.feature_rows import work_dir_of

    ds = CocoCaptions(str(coco_root), "train", resolution=scorer.image_size)
    kw = dict(batch_size=1, progress=False, chunk_rows=1, text_encodings=True)
    ref = safe_load(embed_dataset(scorer, ds, tmp_path / "ref.pt", **kw))

    calls, original = [], scorer.encode_image

    def interrupted(x):
        calls.append(len(x))
        if len(calls) == 3:  # images 0 and 1 are saved in chunks; the run is killed at image 2
            raise KeyboardInterrupt
        return original(x)

    out = tmp_path / "out.pt"
    scorer.encode_image = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            embed_dataset(scorer, ds, out, **kw)
        # the run key holds the option: a one-caption run does not mix its rows into these
        with pytest.raises(ConfigError, match="captions: 'all' there, None now"):
            embed_dataset(scorer, ds, out, **{**kw, "captions": "one"})
        calls.clear()
        embed_dataset(scorer, ds, out, **kw)
    finally:
        scorer.encode_image = original
    assert calls == [1]  # only the image after the kept chunks
    got = safe_load(out)
    assert got.keys() == ref.keys() and got["meta"] == ref["meta"]
    for k, v in ref.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(got[k], v), k
    assert not work_dir_of(out).exists()


def test_encodings_of_every_caption_beyond_memory_are_refused_before_encoding(coco_root, scorer, tmp_path, monkeypatch):
    import zoo.embed

    monkeypatch.setattr(zoo.embed, "available_memory", lambda: 1000)
    calls = []
    monkeypatch.setattr(scorer, "encode_image", lambda x: calls.append(x))
    with pytest.raises(ConfigError, match=r"12 captions of 3 images.*GB.*fix: text_encodings=false.*captions=one"):
        _embed(scorer, coco_root, tmp_path / "big.pt", text_encodings=True)
    assert calls == [] and not (tmp_path / "big.pt.partial").exists()


def test_every_caption_needs_a_dataset_that_lists_them(tmp_path, scorer):
    from zoo.data.shapes import ShapesDataset
    from zoo.embed import caption_mode

    with pytest.raises(ConfigError, match="captions=all .*ShapesDataset.*fix: captions=one"):
        caption_mode(ShapesDataset("val", 4, 32), "all")
    assert caption_mode(ShapesDataset("val", 4, 32)) == "one"
    with pytest.raises(ConfigError, match="captions must be one of"):
        caption_mode(ShapesDataset("val", 4, 32), "every")
    from omegaconf import OmegaConf

    from zoo.embed import embed_options

    with pytest.raises(ConfigError, match=r"captions must be one of \('auto', 'one', 'all'\), got 'every'"):
        embed_options(OmegaConf.create({"split": "train", "captions": "every"}))  # before a CLIP is loaded
    assert embed_options(OmegaConf.create({"split": "train"}))[0] == "train"  # unset: auto


def test_synthetic_captions_keep_one_row_per_image(coco_root):
    from zoo.data.datamodule import SyntheticCaptioned
    from zoo.embed import caption_mode

    ds = CocoCaptions(str(coco_root), "train")
    assert caption_mode(ds) == "all"
    synthetic = SyntheticCaptioned(ds, {"syn": ["x"] * len(ds)}, {"syn": 1.0})
    assert caption_mode(synthetic) == "one"  # it serves its own captions, not the ones COCO lists


def _all_caption_features(seed: int = 0) -> dict[str, torch.Tensor]:
    """A hand-made zoo-embed captions=all file's tensors for the CAPTIONS images (no CLIP needed)."""
    g = torch.Generator().manual_seed(seed)
    n, m = len(CAPTIONS), sum(CAPTIONS.values())
    return {
        "clip_image_emb": torch.randn(n, 24, generator=g),
        "clip_text_emb": torch.randn(m, 24, generator=g),
        "clip_text_tokens": torch.randint(1, 49408, (m, 7), generator=g),
        "clip_text_encodings": torch.randn(m, 7, 12, generator=g).half(),
        "clip_text_mask": torch.rand(m, 7, generator=g) < 0.5,
        "clip_caption_counts": torch.tensor(list(CAPTIONS.values())),
    }


def _storage_bytes(root) -> int:
    """Bytes of the distinct tensor storages reachable from ``root`` (through dicts, lists, tuples and attributes)."""
    import gc
    import types

    seen, storages, todo = set(), {}, [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType, types.FunctionType, str, bytes)):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storages[obj.untyped_storage().data_ptr()] = obj.untyped_storage().nbytes()
        else:
            todo.extend(gc.get_referents(obj))
    return sum(storages.values())


def test_whole_column_readers_get_the_first_caption_rows_without_a_second_copy(coco_root):
    """FeatureAttached.features kept a copy of the text keys at each image's first caption beside the caption rows
    (~13 GB more at COCO train with ViT-H encodings); now views of them, read as the copy was."""
    import pickle

    import numpy

    from zoo.data.datamodule import FeatureAttached, first_caption_rows

    feats = _all_caption_features()
    file_bytes = _storage_bytes(feats)
    ds = FeatureAttached(CocoCaptions(str(coco_root), "train"), dict(feats))
    # nothing beyond the file's tensors and the (N + 1) caption offsets
    assert _storage_bytes(ds) <= file_bytes + 8 * (len(CAPTIONS) + 1), (_storage_bytes(ds), file_bytes)
    old = first_caption_rows(feats)  # the copy readers got before
    assert ds.features.keys() == old.keys()
    pick = torch.tensor([2, 0])
    for k, want in old.items():
        got = ds.features[k]
        assert (got.shape, got.dtype, got.dim(), len(got), got.numel()) == (
            want.shape,
            want.dtype,
            want.dim(),
            len(want),
            want.numel(),
        ), k
        assert got.size(-1) == want.size(-1) and got.ndim == want.ndim, k
        for index in (1, -1, slice(1, None), pick, (slice(None), 0)):
            assert torch.equal(got[index], want[index]), (k, index)
        assert torch.equal(got, want) and torch.equal(got.float(), want.float()), k  # torch functions, methods
        assert got.max() == want.max() and torch.equal(torch.cat([got, want]), torch.cat([want, want])), k
        assert (numpy.asarray(got) == want.numpy()).all(), k
    # DataLoader workers under spawn get the dataset pickled: the views travel with their caption rows
    again = pickle.loads(pickle.dumps(ds))
    assert all(torch.equal(again.features[k], v) for k, v in old.items())
    # served samples still carry the drawn caption's rows (and the image rows)
    for i in range(len(ds)):
        s = ds[i]
        row = int(ds.caption_start[i]) + ds.base.caption_choices(i).index(s["caption"])
        assert torch.equal(s["clip_text_encodings"], feats["clip_text_encodings"][row])
        assert torch.equal(s["clip_image_emb"], feats["clip_image_emb"][i])


def test_model_data_checks_read_the_first_caption_rows_as_before(coco_root, tmp_path):
    """The readers of whole columns (the priors' data_sizes / check_data, the AR prior's PCA fit) give what they
    gave on the first-caption copy. (The dot-product bins read every caption row:
    test_the_ar_prior_fits_its_dot_bins_on_every_caption_pair.)"""
    from zoo.data.datamodule import FeatureAttached, first_caption_rows
    from zoo.models.ar_prior.lit import ARPriorLit, _train_features
    from zoo.models.diffusion_prior.lit import DiffusionPriorLit

    feats = _all_caption_features()

    class DM:
        def __init__(self, ds):
            self.features, self.ds = {"train": "train.pt", "val": "val.pt"}, ds

        def dataset(self, split):
            return self.ds

    base = CocoCaptions(str(coco_root), "train")
    lazy = DM(FeatureAttached(base, dict(feats)))
    copied = DM(FeatureAttached(base, first_caption_rows(feats)))  # one row per image, as the copy was
    for text_input in ("tokens", "encodings"):
        net = {"text_input": text_input}
        sizes = DiffusionPriorLit(preset="tiny", net=net).data_sizes(lazy)
        assert sizes == DiffusionPriorLit(preset="tiny", net=net).data_sizes(copied) and sizes["clip_dim"] == 24
        DiffusionPriorLit(preset="tiny", net={**net, **sizes}).check_data(lazy)
    fitted = []
    for dm in (lazy, copied):
        assert ARPriorLit(preset="tiny").data_sizes(dm) == {"embed_dim": 24}  # (32-d preset)
        lit = ARPriorLit(preset="tiny", net={"embed_dim": 24}, n_components=2)
        lit.check_data(dm)
        cols, items = _train_features(dm)
        lit.fit_discretisation(cols["clip_image_emb"], cols["clip_text_emb"], items)
        fitted.append({k: v for k, v in lit.state_dict().items() if k.startswith("pca.")})
    assert fitted[0].keys() == fitted[1].keys() and fitted[0]
    for k in fitted[0]:
        assert torch.equal(fitted[0][k], fitted[1][k]), k


class _FeaturesDM:
    """The DataModule interface the models' data checks read: ``features`` (split -> file) and ``dataset(split)``."""

    def __init__(self, ds, path="train.pt"):
        self.features, self.ds = {"train": path, "val": path}, ds

    def dataset(self, split):
        return self.ds


def _tokens_past_the_tiny_vocab_in_a_later_caption(vocab: int = 64) -> dict[str, torch.Tensor]:
    """All-captions features whose token ids fit ``vocab`` except one, in item 1's third caption (not a first)."""
    feats = _all_caption_features()
    feats["clip_image_emb"], feats["clip_text_emb"] = feats["clip_image_emb"][:, :16], feats["clip_text_emb"][:, :16]
    feats["clip_text_tokens"] = feats["clip_text_tokens"] % vocab
    row = CAPTIONS[0] + 2  # item 1's third caption row
    feats["clip_text_tokens"][row, 4] = 49406  # open_clip's start-of-text id
    return feats


def test_the_diffusion_prior_checks_token_ids_of_every_caption(coco_root):
    """The vocabulary check read each image's first caption only: a token id past the table in another caption
    passed, and the training step that first drew that caption (another epoch's) failed with an IndexError."""
    from torch.utils.data import default_collate

    from zoo.data.datamodule import FeatureAttached
    from zoo.models.diffusion_prior.lit import DiffusionPriorLit

    feats = _tokens_past_the_tiny_vocab_in_a_later_caption()
    ds = FeatureAttached(CocoCaptions(str(coco_root), "train"), dict(feats))
    assert int(ds.features["clip_text_tokens"].max()) < 64  # the first captions alone fit the tiny preset
    lit = DiffusionPriorLit(preset="tiny", net={"text_len": 7}, embed_scale=1.0)
    # what the check protects: a batch holding that caption fails in the embedding lookup
    bad = {**ds[1], "clip_text_tokens": feats["clip_text_tokens"][CAPTIONS[0] + 2]}
    with pytest.raises(IndexError):
        lit.forward_loss(default_collate([bad]))
    dm = _FeaturesDM(ds, "/data/coco_train.pt")
    with pytest.raises(ConfigError) as err:
        lit.check_data(dm)
    msg = str(err.value)
    for part in ("data.features.train=/data/coco_train.pt", "token id 49406", "item 1", "text_vocab is 64"):
        assert part in msg, msg
    assert "model.net.text_vocab=49408" in msg, msg
    # model.preset=tiny takes open_clip's vocabulary from the data, then the check passes
    assert lit.data_sizes(dm) == {"text_vocab": 49408}
    DiffusionPriorLit(preset="tiny", net={"text_len": 7, "text_vocab": 49408}, embed_scale=1.0).check_data(dm)


def _fit_through_setup(lit, dm):
    """``lit.setup("fit")`` as zoo-train runs it (the trainer's DataModule), without a trainer run."""
    from types import SimpleNamespace

    lit._trainer = SimpleNamespace(datamodule=dm)
    lit.setup("fit")
    lit._trainer = None
    return lit


def _dot_bins(n_bins, text, image):
    from zoo.models.ar_prior.lit import ARPriorLit
    from zoo.models.ar_prior.pca import ScalarBins

    return ScalarBins(n_bins).fit(ARPriorLit.dot_product(text.float(), image.float()))


def test_the_ar_prior_fits_its_dot_bins_on_every_caption_pair(coco_root, tmp_path):
    """The dot-product bins were fitted on (image, first caption) pairs while training draws every caption: now on
    every (image, caption) pair, each caption row with its own image's embedding, from the DataModule's dataset and
    from the file alike; the PCA (image rows) is as before."""
    from zoo.data.datamodule import FeatureAttached, first_caption_rows
    from zoo.models.ar_prior.lit import ARPriorLit

    feats = _all_caption_features(seed=3)
    counts = feats["clip_caption_counts"]
    base = CocoCaptions(str(coco_root), "train")
    ds = FeatureAttached(base, dict(feats))
    # the pairs training serves: each item with each of its captions' rows, as FeatureAttached serves them
    pairs = [(i, int(ds.caption_start[i]) + k) for i in range(len(base)) for k in range(len(base.caption_choices(i)))]
    image = torch.stack([feats["clip_image_emb"][i] for i, _ in pairs])
    text = torch.stack([feats["clip_text_emb"][r] for _, r in pairs])
    want = _dot_bins(6, text, image)
    first = first_caption_rows(feats)
    before = _dot_bins(6, first["clip_text_emb"], first["clip_image_emb"])
    assert not torch.equal(want.edges, before.edges)  # (the test can tell them apart)

    path = tmp_path / "all.pt"
    torch.save(feats, path)

    class FileOnly:  # a DataModule whose train dataset carries no features: the fit reads the file
        features = {"train": str(path)}

        def dataset(self, split):
            return base

    pcas = []
    for dm in (_FeaturesDM(ds), FileOnly()):
        lit = _fit_through_setup(ARPriorLit(preset="tiny", net={"embed_dim": 24, "n_dot_bins": 6}, n_components=2), dm)
        assert torch.equal(lit.dot_bins.edges, want.edges) and torch.equal(lit.dot_bins.centres, want.centres)
        pcas.append(lit.pca.components)
    old = ARPriorLit(preset="tiny", net={"embed_dim": 24, "n_dot_bins": 6}, n_components=2)
    old.pca.fit(feats["clip_image_emb"])
    assert torch.equal(pcas[0], old.pca.components) and torch.equal(pcas[1], old.pca.components)
    assert len(text) == int(counts.sum())


def test_a_one_caption_file_gives_the_ar_prior_the_bins_it_gave_before(coco_root):
    """shapes and zoo-embed captions=one files hold one caption row per image: their bins are exactly the old ones
    (the dot products of row i with image i)."""
    from zoo.data.datamodule import FeatureAttached, first_caption_rows
    from zoo.models.ar_prior.lit import ARPriorLit

    one = first_caption_rows(_all_caption_features(seed=4))  # the layout of a one-caption file
    dm = _FeaturesDM(FeatureAttached(CocoCaptions(str(coco_root), "train"), dict(one)))
    lit = _fit_through_setup(ARPriorLit(preset="tiny", net={"embed_dim": 24, "n_dot_bins": 2}, n_components=2), dm)
    before = _dot_bins(2, one["clip_text_emb"], one["clip_image_emb"])
    assert torch.equal(lit.dot_bins.edges, before.edges) and torch.equal(lit.dot_bins.centres, before.centres)


def test_an_ar_prior_checkpoint_with_first_caption_bins_loads_and_samples_as_before(coco_root, tmp_path):
    """A checkpoint written before (its bins fitted on first captions) keeps them: loaded by load_module, and not
    refitted by setup on an all-captions file (a resumed run), so it samples as it did."""
    from zoo.checkpoint import load_module
    from zoo.data.datamodule import FeatureAttached, first_caption_rows
    from zoo.models.ar_prior.lit import ARPriorLit

    feats = _all_caption_features(seed=5)
    first = first_caption_rows(feats)
    old = ARPriorLit(preset="tiny", net={"embed_dim": 24, "text_len": 7}, n_components=2)
    old.pca.fit(first["clip_image_emb"])
    old.dot_bins.fit(old.dot_product(first["clip_text_emb"], first["clip_image_emb"]))  # the old fit
    path = tmp_path / "old.ckpt"
    torch.save(
        {"zoo_component": "ar_prior", "state_dict": old.state_dict(), "hyper_parameters": dict(old.hparams)}, path
    )
    loaded = load_module(path)
    dm = _FeaturesDM(FeatureAttached(CocoCaptions(str(coco_root), "train"), dict(feats)))
    _fit_through_setup(loaded, dm)
    assert torch.equal(loaded.dot_bins.edges, old.dot_bins.edges)
    txt, tokens = first["clip_text_emb"], first["clip_text_tokens"]
    old.eval()
    a = old.sample(txt, tokens, generator=torch.Generator().manual_seed(0), return_codes=True)
    b = loaded.sample(txt, tokens, generator=torch.Generator().manual_seed(0), return_codes=True)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_the_ar_prior_checks_token_ids_of_every_caption(coco_root):
    """The AR prior's vocabulary was checked per batch (pad_text): a token id past the table in a caption after an
    image's first was refused in the training step that first drew it, an epoch or more in. check_data reads every
    caption row, naming the file; model.preset=tiny's data_sizes sizes the table from them."""
    from zoo.data.datamodule import FeatureAttached
    from zoo.models.ar_prior.lit import ARPriorLit

    feats = _tokens_past_the_tiny_vocab_in_a_later_caption()
    dm = _FeaturesDM(FeatureAttached(CocoCaptions(str(coco_root), "train"), dict(feats)), "/data/coco_train.pt")
    lit = ARPriorLit(preset="tiny", net={"embed_dim": 16, "text_vocab": 64, "text_len": 7})
    with pytest.raises(ConfigError, match=r"data.features.train=/data/coco_train.pt: caption token id 49406 >= .* 64"):
        lit.check_data(dm)
    assert lit.data_sizes(dm) == {"text_vocab": 49407}
    ARPriorLit(preset="tiny", net={"embed_dim": 16, "text_len": 7}).check_data(dm)  # 49408
