"""Atomic checkpoint writes and weights_only loads."""

from __future__ import annotations

import os
import pickle
import signal

import pytest
import torch

from zoo.checkpoint import UnsafeCheckpointError, atomic_torch_save, safe_load


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned_marker",))


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {}, "payload": _Evil()}, f)
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        safe_load(path)
    assert not (tmp_path / "pwned_marker").exists()


def test_malicious_checkpoint_refused_by_zoo_train(train_cfg, tmp_path, monkeypatch, train_helpers):
    from zoo.train import train

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Evil()}, path)
    cfg = train_cfg(
        "model=dvae",
        "model.preset=tiny",
        *train_helpers.sizes(),
        "logger=none",
        "trainer=cpu",
        f"ckpt_path={path}",
    )
    with pytest.raises(pickle.UnpicklingError):
        train(cfg)
    assert not (tmp_path / "pwned_marker").exists()


def test_atomic_save_keeps_previous_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1, "w": torch.ones(3)}, path)

    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        f.write(b"partial garbage")  # some bytes reach the disk, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    got = safe_load(path)
    assert got["step"] == 1 and torch.equal(got["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"], "temp file left behind"


def _signal_during_the_write(monkeypatch, sig: int) -> None:
    """The checkpoint's file sends ``sig`` to this process at its 3rd write: torch's writer (C++) is storing a
    tensor's bytes then, as a real Ctrl-C / SIGTERM mostly finds it."""
    fdopen = os.fdopen

    class Signalling:
        def __init__(self, f):
            self.f, self.writes = f, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 3:
                os.kill(os.getpid(), sig)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

    monkeypatch.setattr(os, "fdopen", lambda *a, **k: Signalling(fdopen(*a, **k)))


def test_a_ctrl_c_during_a_save_is_raised_once_the_file_is_in_place(tmp_path, monkeypatch):
    """A Ctrl-C inside torch.save's storage write surfaced as "RuntimeError: [enforce fail at inline_container.cc]
    unexpected pos" (torch's writer swallowed the KeyboardInterrupt): zoo-train ended with a traceback and exit 1,
    without saving interrupted.ckpt or saying how to resume (found: kill -INT during a save of last.ckpt). The
    signal now waits until the file is renamed into place, then raises KeyboardInterrupt as usual."""
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1, "w": torch.ones(1000)}, path)
    # Python's own Ctrl-C handler, as in a terminal: a run started in the background of a non-interactive shell (CI)
    # inherits SIGINT ignored, which the save rightly leaves alone
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        handler = signal.getsignal(signal.SIGINT)
        _signal_during_the_write(monkeypatch, signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            atomic_torch_save({"step": 2, "w": torch.zeros(1000)}, path)
        monkeypatch.undo()
        assert signal.getsignal(signal.SIGINT) is handler
    finally:
        signal.signal(signal.SIGINT, previous)
    got = safe_load(path)
    assert got["step"] == 2 and torch.equal(got["w"], torch.zeros(1000))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"], "temp file left behind"


def test_a_sigterm_during_a_save_reaches_its_handler_after_the_file_is_in_place(tmp_path, monkeypatch):
    """SIGTERM (Lightning's handler: finish the step, save, stop) is handed to the handler of before once the file
    is complete, once, and the handler is back in place after the save."""
    path = tmp_path / "last.ckpt"
    seen = []

    def on_sigterm(signum, frame):
        seen.append(safe_load(path)["step"] if path.exists() else None)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        _signal_during_the_write(monkeypatch, signal.SIGTERM)
        atomic_torch_save({"step": 2, "w": torch.zeros(1000)}, path)
        assert seen == [2]  # called after the rename, not during the write
        assert signal.getsignal(signal.SIGTERM) is on_sigterm
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_an_atomic_save_from_another_thread_leaves_the_signal_handlers_alone(tmp_path):
    """Only the main thread may set signal handlers: a save from another thread just writes."""
    import threading

    errors = []

    def save():
        try:
            atomic_torch_save({"step": 3}, tmp_path / "x.ckpt")
        except BaseException as e:  # reported to the test below
            errors.append(e)

    worker = threading.Thread(target=save)
    worker.start()
    worker.join()
    assert not errors and safe_load(tmp_path / "x.ckpt")["step"] == 3


def test_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        safe_load(tmp_path / "nope.ckpt")


def test_saved_files_get_the_umask_mode_not_owner_only(tmp_path):
    """atomic_torch_save (zoo-embed / zoo-tokenize / zoo-recaption outputs, the judge cache) and zoo-export's
    model.safetensors were written 0o600 (mkstemp's and safetensors' mode) where every other file of a run is 0o644:
    on shared storage (ZOO_CACHE_DIR, an export handed on) the rest of a team could not read them."""
    from omegaconf import OmegaConf

    from zoo.export import checkpoint_dict, export
    from zoo.models.vqvae.lit import VQVAELit

    old = os.umask(0o022)
    try:
        path = atomic_torch_save({"x": torch.zeros(2)}, tmp_path / "features.pt")
        assert path.stat().st_mode & 0o777 == 0o644
        ckpt = atomic_torch_save(checkpoint_dict(VQVAELit(preset="tiny")), tmp_path / "last.ckpt")
        export(OmegaConf.create({"ckpt": str(ckpt), "out": str(tmp_path / "export"), "onnx": False}))
        assert (tmp_path / "export" / "model.safetensors").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)  # a user who wants owner-only files still gets them
        assert atomic_torch_save({"x": 1}, tmp_path / "private.pt").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_corrupt_feature_file_names_the_command_that_rewrites_it(tmp_path):
    """A truncated zoo-tokenize / zoo-embed / zoo-recaption file said "use another checkpoint (e.g. the run's
    last.ckpt or a step*.ckpt)", which is no fix for a feature file; it now names the command that wrote it."""
    from zoo.checkpoint import CorruptCheckpointError
    from zoo.data.datamodule import load_features, load_synthetic_captions
    from zoo.embed import load_embeddings

    good = atomic_torch_save({"image_tokens": torch.zeros(4, 2, 2, dtype=torch.long)}, tmp_path / "good.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[:300])
    for load, command in [
        (load_features, "zoo-tokenize / zoo-embed"),
        (load_embeddings, "zoo-embed"),
        (load_synthetic_captions, "zoo-recaption"),
    ]:
        with pytest.raises(CorruptCheckpointError, match=f"truncated or corrupt.*re-run the {command} command") as e:
            load(bad)
        assert "last.ckpt" not in str(e.value)
    with pytest.raises(CorruptCheckpointError, match=r"last\.ckpt"):  # checkpoints keep their own advice
        safe_load(bad)


def _embed_file(**change):
    g = torch.Generator().manual_seed(0)
    feats = {
        "clip_image_emb": torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1),
        "clip_text_emb": torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1),
        "clip_text_tokens": torch.randint(1, 100, (4, 6), generator=g),
    }
    return {**feats, **change}


_nan = _embed_file()["clip_image_emb"].clone()
_nan[2, 3] = float("nan")


@pytest.mark.parametrize(
    "change, says",
    [
        ({"clip_image_emb": _nan}, "'clip_image_emb' holds NaN or infinite values in 1 of its 4 rows"),
        ({"clip_text_tokens": -torch.ones(4, 6, dtype=torch.long)}, "'clip_text_tokens' holds negative ids"),
        ({"clip_image_emb": [[0.0] * 8] * 4}, "'clip_image_emb' is a list, not a tensor"),
        ({"clip_image_emb": torch.zeros(4, dtype=torch.float32)}, r"'clip_image_emb' is a \(4,\) torch.float32"),
        ({"clip_image_emb": torch.zeros(4, 8, dtype=torch.long)}, r"expected \(N, D\) embeddings \(float\)"),
        ({"clip_text_emb": torch.zeros(4, 5)}, "'clip_image_emb' is 8-d but 'clip_text_emb' is 5-d"),
        ({"clip_text_tokens": torch.ones(3, 6, dtype=torch.long)}, "different numbers of rows"),
        ({"image_tokens": torch.ones(4, 16, dtype=torch.long)}, r"'image_tokens' is a \(4, 16\) torch.int64"),
    ],
)
def test_damaged_feature_file_is_refused_at_load_naming_the_problem(tmp_path, change, says):
    """A feature file with NaN embeddings, negative or non-integer ids, a list for a tensor, a wrong rank or two
    embedding widths loaded without a word: the run then failed in its first step (IndexError, AttributeError, a
    matmul shape error) or said "zero variance" of NaN embeddings. Now load_features / load_embeddings refuse it at
    once, naming the file, the key, the problem and the command that rewrites it."""
    from zoo.data.datamodule import load_features
    from zoo.embed import load_embeddings
    from zoo.errors import ConfigError

    path = atomic_torch_save(_embed_file(**change), tmp_path / "feats.pt")
    for load, command in [(load_features, "zoo-tokenize / zoo-embed"), (load_embeddings, "zoo-embed")]:
        if load is load_embeddings and "image_tokens" in change:
            continue  # not a key zoo-embed files carry
        with pytest.raises(ConfigError, match=says) as e:
            load(path)
        assert str(path) in str(e.value) and f"re-run the {command} command" in str(e.value)
    good = atomic_torch_save(_embed_file(), tmp_path / "good.pt")
    assert (
        set(load_features(good))
        == set(load_embeddings(good))
        == {"clip_image_emb", "clip_text_emb", "clip_text_tokens"}
    )


def test_a_data_file_passed_as_a_checkpoint_names_the_command_that_wrote_it(tmp_path):
    """zoo-export / zoo-serve / zoo-sample ckpt=<a zoo-embed, zoo-tokenize or zoo-recaption file> said "was not
    written by zoo-train (no zoo_component stamp); load its state_dict into the model class yourself": there is no
    state_dict in a data file. Now the message says which command wrote it and what to pass instead."""
    from zoo.checkpoint import load_module

    files = {
        "zoo-embed": {"clip_image_emb": torch.zeros(2, 4), "clip_text_emb": torch.zeros(2, 4), "meta": {}},
        "zoo-tokenize": {"image_tokens": torch.zeros(2, 2, 2, dtype=torch.long), "codebook_size": 8},
        "zoo-recaption": {"captions": ["a", "b"], "meta": {}},
    }
    for command, obj in files.items():
        path = atomic_torch_save(obj, tmp_path / f"{command}.pt")
        with pytest.raises(UnsafeCheckpointError, match=f"{path} is a {command} output .* not a model checkpoint") as e:
            load_module(path)
        assert "checkpoints/last.ckpt" in str(e.value) and "state_dict" not in str(e.value)


def test_an_image_passed_as_a_checkpoint_is_named_without_torchs_unsafe_advice(tmp_path):
    """ckpt=<a PNG> (a sample grid picked by mistake) printed torch's 7-line weights_only text, whose advice is to
    re-run torch.load with weights_only=False ("will likely succeed", "file an issue"): wrong for an image, and
    unsafe. Now one line: what the file is and the core of the failure."""
    from PIL import Image

    from zoo.checkpoint import CorruptCheckpointError

    png = tmp_path / "samples_step0000100.png"
    Image.new("RGB", (4, 4)).save(png)
    with pytest.raises(
        CorruptCheckpointError, match=f"{png} is corrupt or not a torch checkpoint \\(it is a PNG image"
    ) as e:
        safe_load(png)
    assert "weights_only" not in str(e.value) and "file an issue" not in str(e.value) and "\n" not in str(e.value)


def test_feature_rows_mismatch_names_the_split_and_file(tmp_path):
    """data.features.train and data.features.val given, one of them made for another split or size: the error said
    "precomputed 'clip_image_emb' has 8 rows but the dataset split has 4 items" without saying which file."""
    from zoo.data.modules import ShapesDataModule
    from zoo.errors import ConfigError

    train = atomic_torch_save(
        _embed_file(
            clip_image_emb=torch.zeros(8, 8),
            clip_text_emb=torch.zeros(8, 8),
            clip_text_tokens=torch.zeros(8, 6, dtype=torch.long),
        ),
        tmp_path / "train.pt",
    )
    dm = ShapesDataModule(train_size=8, val_size=4, test_size=4, features={"train": str(train), "val": str(train)})
    assert len(dm.dataset("train")) == 8
    with pytest.raises(ConfigError, match=f"data.features.val={train}: precomputed 'clip_image_emb' has 8 rows"):
        dm.dataset("val")


def test_feature_file_of_another_split_is_refused(tmp_path):
    """zoo-embed records the split it embedded; given as another split's features with the same item count (the
    train file as data.features.val, train_size == val_size), it was served to the val images without a word:
    validation on the training embeddings. Now refused, naming the file, both splits and the fix."""
    from zoo.data.modules import ShapesDataModule
    from zoo.errors import ConfigError

    train = atomic_torch_save({**_embed_file(), "meta": {"split": "train", "n": 4}}, tmp_path / "train.pt")
    dm = ShapesDataModule(train_size=4, val_size=4, test_size=4, features={"train": str(train), "val": str(train)})
    assert len(dm.dataset("train")) == 4
    with pytest.raises(ConfigError, match=f"data.features.val={train} holds the train split's features"):
        dm.dataset("val")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA device")
def test_loading_onto_a_missing_gpu_is_not_called_corrupt(tmp_path):
    # zoo-recaption device=cuda on a CPU machine said "<file> is truncated or corrupt" of a sound checkpoint
    from zoo.checkpoint import safe_load
    from zoo.errors import ConfigError

    path = tmp_path / "ok.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, path)
    with pytest.raises(ConfigError, match=r"no CUDA device is visible .*device=cpu"):
        safe_load(path, map_location="cuda")
    assert torch.equal(safe_load(path)["state_dict"]["w"], torch.ones(2))


@pytest.mark.parametrize(
    "urls",
    [
        "pipe:touch {marker}; exit 1",
        "pipe:touch {marker}; exit 1::{shard}",  # one URL of a '::' list
        ["pipe:touch {marker}; exit 1", "{shard}"],
    ],
)
def test_a_checkpoints_data_config_cannot_name_a_shell_command(tmp_path, urls):
    """A webdataset pipe: URL in a checkpoint's stored data config ran its shell command when zoo-sample drew the
    checkpoint's grid (no prompts): the file chose code to run."""
    import tarfile

    from zoo.models.dvae.lit import DVAELit
    from zoo.pipelines.grid import checkpoint_sample_grid

    marker, shard = tmp_path / "pwned_marker", tmp_path / "local.tar"
    tarfile.open(shard, "w").close()  # a real local shard beside the command, so the local-file check passes
    fill = dict(marker=marker, shard=shard)
    urls = [u.format(**fill) for u in urls] if isinstance(urls, list) else urls.format(**fill)
    data = {"_target_": "zoo.data.modules.WebDataModule", "train_urls": urls, "resolution": 32}
    path = tmp_path / "evil.ckpt"
    atomic_torch_save(
        {
            "zoo_component": "dvae",
            "hyper_parameters": {"preset": "tiny"},
            "state_dict": DVAELit(preset="tiny").state_dict(),
            "zoo_config": {"data": data},
        },
        path,
    )
    with pytest.raises(UnsafeCheckpointError, match=r"train_urls.*pipe: URL, a shell command"):
        checkpoint_sample_grid(str(path))
    assert not marker.exists()


def _bytes_read() -> int:
    """The bytes this process has read so far (Linux's /proc/self/io rchar)."""
    from pathlib import Path

    io = Path("/proc/self/io")
    if not io.is_file():
        pytest.skip("needs Linux's /proc/self/io to count the bytes read")
    return int(next(line for line in io.read_text().splitlines() if line.startswith("rchar:")).split()[1])


def test_a_resume_checks_the_files_plain_values_without_reading_its_weights(tmp_path):
    """zoo-train ckpt_path=<file>: check_resume_file read the whole checkpoint (a paper model's GBs) to check its
    name, hyper-parameters and keys, then Lightning read it again. Memory-mapped now (zoo.checkpoint.peek_checkpoint):
    the bytes read stay far below the 128 MB of weights; its step is returned and a file that is not a checkpoint is
    still refused by name, with the same advice."""
    from zoo.checkpoint import CorruptCheckpointError, peek_checkpoint
    from zoo.models.clip.lit import ClipLit
    from zoo.train import check_resume_file

    ckpt = tmp_path / "last.ckpt"
    big = {"w": torch.ones(32 << 20)}
    torch.save(
        {"state_dict": big, "zoo_component": "clip", "hyper_parameters": {}, "global_step": 12, "loops": {}}
        | {"pytorch-lightning_version": "2.4.0"},
        ckpt,
    )
    before = _bytes_read()
    assert check_resume_file(str(ckpt), ClipLit) == 12
    assert peek_checkpoint(ckpt)["global_step"] == 12
    assert _bytes_read() - before < 16 << 20  # the whole load read all 128 MB
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all" * 100)
    with pytest.raises(CorruptCheckpointError, match=r"garbage\.ckpt is (corrupt|truncated).*; re-copy it"):
        peek_checkpoint(garbage, fix="re-copy it")
