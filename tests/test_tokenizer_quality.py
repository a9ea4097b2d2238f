"""scripts/tokenizer_quality.py's ``--set k=v`` parsing (the script itself trains for minutes: not run here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

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
