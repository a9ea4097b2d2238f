"""scripts/tokenizer_quality.py's ``--set k=v`` parsing (the script itself trains for minutes: not run here)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "tokenizer_quality.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("tokenizer_quality", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_set_values_are_literals_or_strings_and_never_run_code(script, tmp_path, monkeypatch):
    # values went through eval(v, {}): a command-line string ran code, and a word naming a builtin (min, id) became
    # the builtin instead of the string
    monkeypatch.chdir(tmp_path)
    got = script.parse_sets(
        ["recon_loss=mse", "kl_weight_max=1", "lr=1e-3", "net.channels=[4, 8]", "hard=true", "x=None", "a=min"]
        + ["code=open('ran', 'w').close()", "name='min'", "t=a=b"]
    )
    assert got == {
        "recon_loss": "mse",
        "kl_weight_max": 1,
        "lr": 1e-3,
        "net.channels": [4, 8],
        "hard": True,
        "x": None,
        "a": "min",
        "code": "open('ran', 'w').close()",
        "name": "min",
        "t": "a=b",
    }
    assert not (tmp_path / "ran").exists()
    with pytest.raises(ValueError, match="--set 'recon_loss': expected key=value"):
        script.parse_sets(["recon_loss"])


class TinyShapes:
    """ShapesDataset's interface with a few random images: main() without rendering 1,024 val scenes."""

    def __init__(self, split, size, resolution):
        self.size, self.resolution = min(size, 8), resolution

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"image": torch.rand(3, self.resolution, self.resolution, generator=g) * 2 - 1}


def test_eval_every_zero_evaluates_only_at_the_end_and_a_bad_batch_size_is_refused(script, monkeypatch, capsys):
    # --eval-every 0 was a ZeroDivisionError after the first step, --batch-size 0 torch.stack's "expected a
    # non-empty list of Tensors"
    monkeypatch.setattr(script, "ShapesDataset", TinyShapes)
    argv = ["tokenizer_quality.py", "--minutes", "2e-3", "--batch-size", "2", "--eval-every", "0"]
    monkeypatch.setattr("sys.argv", argv)
    script.main()
    final = re.search(r"FINAL dvae steps=(\d+) ", capsys.readouterr().out)
    assert final and int(final[1]) >= 1  # it trained (0.12 CPU s), then evaluated once
    monkeypatch.setattr("sys.argv", argv[:3] + ["--batch-size", "0"])
    with pytest.raises(SystemExit):
        script.main()
    assert "--batch-size >= 1, got 200 and 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "model, item, named",
    [("vqvae", "restart_after=20", "net.restart_after=20"), ("vqvae", "recon_loss=mse", "not options of VQVAELit")],
)
def test_a_set_key_the_model_does_not_take_is_refused_with_the_fix(script, monkeypatch, capsys, model, item, named):
    # a network field given bare, or another model's option, was the constructor's TypeError traceback ("got an
    # unexpected keyword argument 'restart_after'"), naming no fix
    monkeypatch.setattr(script, "ShapesDataset", TinyShapes)
    monkeypatch.setattr("sys.argv", ["tokenizer_quality.py", "--model", model, "--minutes", "1e-4", "--set", item])
    with pytest.raises(SystemExit):
        script.main()
    assert named in capsys.readouterr().err
    assert script.unknown_options("dvae", {"recon_loss": "mse", "net": {}}) is None
