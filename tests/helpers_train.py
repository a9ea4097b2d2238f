"""Shared zoo-train override lists for the tests that train a tiny run (no tests here; tests get this module from
the ``train_helpers`` fixture in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

# the tiny dVAE on the shapes world (64 / 16 / 16 images, batches of 8: 8 steps an epoch), CSV-logged
DVAE_SHAPES = [
    "model=dvae",
    "model.preset=tiny",
    "data=shapes",
    "data.train_size=64",
    "data.val_size=16",
    "data.test_size=16",
    "data.batch_size=8",
    "logger=csv",
    "trainer=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.num_sanity_val_steps=0",
]
# the shapes world with a fitted 300-token BPE of 32 tokens (the text-conditioned diffusion models)
SHAPES_BPE = ["data=shapes", "data/tokenizer=bpe", "data.tokenizer.vocab_size=300", "data.tokenizer.context_length=32"]
# two CPU steps, nothing logged, no test pass
TWO_STEPS = ["logger=none", "trainer=cpu", "trainer.max_steps=2", "test=false", "trainer.enable_progress_bar=false"]
# one CPU epoch in fp32, nothing logged, no sanity check, no test pass
ONE_EPOCH = [
    "logger=none",
    "trainer=cpu",
    "trainer.max_epochs=1",
    "trainer.precision=32-true",
    "trainer.enable_progress_bar=false",
    "trainer.num_sanity_val_steps=0",
    "test=false",
]


# the tiny upsampler on 32 px shapes with a 2-image, 2-step sample grid (tests/models/test_upsampler.py, callbacks)
TINY_UPSAMPLER = [
    "model=upsampler",
    "model.preset=tiny",
    "model.grid_images=2",
    "model.grid_steps=2",
    "data=shapes",
    "data.resolution=32",
]


def sizes(train: int = 16) -> list[str]:
    """A tiny data set: ``train`` / 8 / 8 images in batches of 8."""
    return [f"data.train_size={train}", "data.val_size=8", "data.test_size=8", "data.batch_size=8"]


def tiny_dalle(dalle_helpers, tmp_path: Path) -> list[str]:
    """The tiny DALL·E (on a tiny frozen VQ-VAE written to ``tmp_path``) for two steps with a 300-token BPE."""
    H = dalle_helpers
    return [
        "model=dalle",
        "model.preset=tiny",
        f"model.image_tokenizer_ckpt={H.tiny_tokenizer_ckpt(tmp_path / 't.ckpt')}",
        *[f"+model.net.{k}={v}" for k, v in H.TINY_NET.items()],
        "data/tokenizer=bpe",
        "data.tokenizer.vocab_size=300",
        "data.tokenizer.context_length=16",
        f"data.resolution={H.RESOLUTION}",
        *sizes(),
        *TWO_STEPS,
        "trainer.limit_val_batches=0",
    ]


def last_ckpt(cfg) -> Path:
    """The ``last.ckpt`` of the run ``cfg`` trained."""
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"


def train_checked(cfg, component: str, global_step: int):
    """zoo-train ``cfg``, checked: ``global_step`` steps, a sample grid PNG and a ``last.ckpt`` of ``component``
    that loads weights-only -> (metrics, last.ckpt path, its contents)."""
    import torch

    from zoo.train import train

    metrics = train(cfg)
    assert metrics["global_step"] == global_step
    run = Path(cfg.paths.output_dir)
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert list((run / "samples").glob("*.png")), "sample grid PNG missing"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["zoo_component"] == component
    return metrics, last, ckpt


def state(ckpt: Path) -> dict:
    """A checkpoint's contents, loaded weights-only (as it must load)."""
    import torch

    return torch.load(ckpt, map_location="cpu", weights_only=True)


def kill_once_saved(proc, last: Path, step: int = 4, timeout: float = 120, poll: float = 0.5) -> int:
    """SIGKILL the zoo-train process ``proc`` once its ``last`` checkpoint holds ``step`` steps or more (or after
    ``timeout`` seconds) -> the global step of the checkpoint it left."""
    import signal
    import time

    deadline = time.time() + timeout
    try:
        while time.time() < deadline and not (last.is_file() and state(last)["global_step"] >= step):
            time.sleep(poll)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return state(last)["global_step"]


def long_run(run_dir: Path, log_dir: Path) -> list[str]:
    """Overrides of a zoo-train run long enough to be interrupted (4096 images, 100 epochs, no validation) that
    writes ``last.ckpt`` every 2 steps, in ``run_dir``."""
    return [
        "data.train_size=4096",
        "trainer.max_epochs=100",
        "trainer.limit_val_batches=0",
        "callbacks.last_checkpoint.every_n_train_steps=2",
        f"hydra.run.dir={run_dir}",
        f"paths.log_dir={log_dir}",
    ]
