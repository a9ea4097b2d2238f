"""Shared fixtures: compose the real Hydra configs exactly as zoo-train does, pointed at a temp dir."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# No test may touch the network or a W&B account; keep CPU threads modest so tests share the 2 cores well.
# One intra-op thread: the tests are small, and two OpenMP threads fighting another busy process for 2 cores were
# measured 5x slower (a 90 s suite took 7 min); subprocess tests (zoo-train, DDP) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "torch" in sys.modules:  # imported by a plugin before us: the variable came too late
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCH_HOME", str(Path(__file__).parent / ".torch_home_unused"))

REPO = Path(__file__).resolve().parents[1]
# Subprocess tests run `python -m zoo.train` etc. from a temp dir, so they import whatever checkout the venv's
# editable install points at. Put this checkout first: run from a second clone, those tests test its code, not
# another's (they silently tested /work/main's while a helper changed its clone; same code in CI either way).
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH", "")] if p])


def compose_cfg(tmp_path: Path, overrides: list[str], module: str = "conf", name: str = "train"):
    """Compose ``<module>/<name>.yaml`` (conf/train.yaml for zoo-train, conf/eval/eval.yaml for zoo-eval) with
    overrides, exactly as the entry point does; paths point into tmp_path; ${hydra:...} resolvable."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=module, version_base="1.3"):
        cfg = compose(name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.root_dir = str(tmp_path)
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.log_dir = str(tmp_path / "logs")
        cfg.paths.cache_dir = str(tmp_path / "cache")
    return cfg


def load_test_helpers(name: str):
    """``tests/<name>.py`` as a module (pytest runs with --import-mode=importlib, so tests/ is not on sys.path)."""
    import importlib.util

    key = f"zoo_tests_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, Path(__file__).with_name(f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


@pytest.fixture(scope="session")
def dalle_helpers():
    """tests/helpers_dalle.py: tiny VQ-VAE / CLIP checkpoints and a tiny BPE for the DALL·E tests."""
    return load_test_helpers("helpers_dalle")


@pytest.fixture(scope="session")
def nn_helpers():
    """tests/helpers_nn.py: ``perturb(net)``, a stand-in word tokenizer, tiny GLIDE-like modules for sampling."""
    return load_test_helpers("helpers_nn")


@pytest.fixture(scope="session")
def perturb(nn_helpers):
    """``perturb(net)``: the zero-initialised layers of a fresh net randomised (tests/helpers_nn.py)."""
    return nn_helpers.perturb


@pytest.fixture(scope="session")
def train_helpers():
    """tests/helpers_train.py: shared zoo-train override lists (tiny data, two steps, one epoch, tiny runs)."""
    return load_test_helpers("helpers_train")


@pytest.fixture
def tiny_dvae(train_helpers):
    """The tiny dVAE on the shapes world (``helpers_train.DVAE_SHAPES``), a fresh list for each test."""
    return list(train_helpers.DVAE_SHAPES)


def compose_train_cfg(tmp_path: Path, overrides: list[str]):
    return compose_cfg(tmp_path, overrides)


@pytest.fixture
def train_cfg(tmp_path):
    def make(*overrides: str):
        return compose_train_cfg(tmp_path, list(overrides))

    return make
