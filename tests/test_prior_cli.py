"""unCLIP priors from the command line (issue 14): ``zoo-train model=diffusion_prior`` and ``model=ar_prior`` on
zoo-embed-style feature files train, log to W&B (offline), and resume from ``last.ckpt`` exactly; and the diffusion
prior's training forward (its last block at the final query only) equals the full transformer's last position."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

# (model, tiny preset's CLIP width, its caption length, token ids drawn below this)
PRIORS = {"diffusion_prior": (16, 8, 64), "ar_prior": (32, 32, 49408)}


def _write_features(
    path: Path, n: int, dim: int, text_len: int, vocab: int, seed: int, clip_fingerprint: str | None = None
) -> Path:
    """A zoo-embed file stand-in: image embeddings, correlated text embeddings, caption tokens padded with 0."""
    from zoo.checkpoint import atomic_torch_save

    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(6, dim, generator=torch.Generator().manual_seed(99))  # low rank, like CLIP embeddings
    img = F.normalize(torch.randn(n, 6, generator=g) @ basis + 0.05 * torch.randn(n, dim, generator=g), dim=-1)
    txt = F.normalize(img + 0.5 * torch.randn(n, dim, generator=g) / dim**0.5, dim=-1)
    tokens = torch.randint(1, vocab, (n, text_len), generator=g)
    tokens[:, text_len // 2 :] = 0
    meta = {"n": n, "dim": dim, **({"clip_fingerprint": clip_fingerprint} if clip_fingerprint else {})}
    return atomic_torch_save(
        {"clip_image_emb": img, "clip_text_emb": txt, "clip_text_tokens": tokens, "meta": meta}, path
    )


def _overrides(model: str, tmp_path: Path, fingerprints: tuple = (None, None)) -> list[str]:
    dim, text_len, vocab = PRIORS[model]
    files = {
        s: _write_features(tmp_path / f"{s}{fp or ''}.pt", n, dim, text_len, vocab, i, fp)
        for i, ((s, n), fp) in enumerate(zip([("train", 48), ("val", 16)], fingerprints))
    }
    return [
        f"model={model}",
        "model.preset=tiny",
        "data=shapes",
        "data.train_size=48",
        "data.val_size=16",
        "data.test_size=16",
        "data.batch_size=16",  # 3 steps an epoch: the resume below crosses an epoch boundary
        *[f"data.features.{s}={p}" for s, p in files.items()],
        "trainer=cpu",
        "trainer.max_epochs=10",
        "trainer.enable_progress_bar=false",
        "trainer.num_sanity_val_steps=0",
        "trainer.limit_val_batches=0",
        "trainer.log_every_n_steps=1",
        "callbacks.last_checkpoint.every_n_train_steps=1",
        "test=false",
        f"paths.log_dir={tmp_path / 'logs'}",
    ]


def _zoo_train(args: list[str], cwd: Path) -> str:
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    done = subprocess.run(
        [sys.executable, "-m", "zoo.train", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    return done.stdout + done.stderr


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _wandb_runs(run: Path) -> list[Path]:
    return sorted((run / "wandb").glob("offline-run-*"))


@pytest.mark.parametrize("model", sorted(PRIORS))
def test_zoo_train_logs_to_wandb_and_resumes_exactly(model, tmp_path, train_cfg):
    """zoo-train 3 steps (W&B offline), then ``ckpt_path=last`` to 5 == a straight 5-step run, weight for weight.

    A resume that silently started over would not print Lightning's restore line; one that restored the weights but
    not the optimizer, the data position or the random state (t, noise and text dropout are drawn every step) would
    not equal the straight run."""
    from zoo.train import train

    common = _overrides(model, tmp_path)
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    _zoo_train([*common, "logger=wandb", "trainer.max_steps=3", f"hydra.run.dir={run}"], tmp_path)
    first = _state(last)
    assert first["global_step"] == 3 and first["zoo_component"] == model
    runs = _wandb_runs(run)
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb")), f"no offline W&B run under {run / 'wandb'}"
    assert list(runs[0].glob("run-*.wandb"))[0].stat().st_size > 0

    out = _zoo_train(
        [*common, "logger=wandb", "trainer.max_steps=5", "ckpt_path=last", f"hydra.run.dir={run}"], tmp_path
    )
    assert f"Restoring states from the checkpoint path at {last}" in out
    resumed = _state(last)
    assert resumed["global_step"] == 5
    assert len(_wandb_runs(run)) == 2  # the resumed process logs its own offline run beside the first
    moved = [
        k
        for k, v in first["state_dict"].items()
        if v.is_floating_point() and not torch.equal(v, resumed["state_dict"][k])
    ]
    assert moved, "the resumed run did not train"

    straight = train_cfg(*common, "logger=none", "trainer.max_steps=5")
    straight.paths.output_dir = str(tmp_path / "straight")
    assert train(straight)["global_step"] == 5
    ref = _state(tmp_path / "straight" / "checkpoints" / "last.ckpt")["state_dict"]
    assert ref.keys() == resumed["state_dict"].keys()
    for k, v in ref.items():
        torch.testing.assert_close(resumed["state_dict"][k], v, rtol=0, atol=0, msg=f"resumed != straight at {k}")


@pytest.mark.parametrize("model", sorted(PRIORS))
def test_a_prior_keeps_its_clip_and_refuses_embeddings_of_another(model, tmp_path, train_cfg):
    """The zoo-embed files name their CLIP (meta ``clip_fingerprint``): the trained prior keeps it in its checkpoint
    (load_module rebuilds it: the unCLIP pipeline compares it with its CLIP); a resume on files of another CLIP, and a
    run whose train and val files come from two CLIPs, are refused before training (both trained on silently)."""
    from zoo.checkpoint import load_module
    from zoo.errors import ConfigError
    from zoo.train import train

    def cfg(fps, *extra, run="run"):
        c = train_cfg(*_overrides(model, tmp_path, fps), "logger=none", *extra)
        c.paths.output_dir = str(tmp_path / run)
        return c

    assert train(cfg(("aaaa", "aaaa"), "trainer.max_steps=2"))["global_step"] == 2
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert _state(last)["hyper_parameters"]["clip_fingerprint"] == "aaaa"
    assert load_module(last).clip_fingerprint == "aaaa"
    with pytest.raises(
        ConfigError, match="another CLIP .fingerprint aaaa. than the data of this run .fingerprint bbbb"
    ):
        train(cfg(("bbbb", "bbbb"), "trainer.max_steps=4", f"ckpt_path={last}"))
    with pytest.raises(ConfigError, match="different CLIPs"):
        train(cfg(("aaaa", "bbbb"), "trainer.max_steps=2", run="mixed"))


# ------------------------------------------------------------------------------------- the diffusion prior's readout
@pytest.mark.parametrize("text_input", ["tokens", "encodings", "none"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_diffusion_prior_readout_equals_the_full_stack(text_input, dropout):
    """``DiffusionPriorNet.forward`` runs its last block at the final query only (keys/values folded into the query):
    values and every parameter's gradient equal ``head(hidden(...)[:, -1])`` (float64; dropout via the same seed is
    not comparable, so dropout > 0 checks eval mode and that training mode still trains)."""
    from zoo.models.diffusion_prior.model import DiffusionPriorNet, build_config

    torch.manual_seed(0)
    net = DiffusionPriorNet(build_config("tiny", {"text_input": text_input, "dropout": dropout})).double()
    b = 6
    tokens = torch.randint(1, 64, (b, 8))
    tokens[:, 4:] = 0
    text = {
        "tokens": {"text_tokens": tokens},
        "encodings": {"text_encodings": torch.randn(b, 8, 16).double(), "text_mask": tokens != 0},
        "none": {},
    }[text_input]
    x, t, emb = torch.randn(b, 16).double(), torch.randint(0, 1000, (b,)), torch.randn(b, 16).double()
    drop = torch.tensor([False, True] * 3)
    params = [p for p in net.parameters() if p.numel()]
    net.eval()
    got = net(x, t, emb, **text, drop_text=drop)
    want = net.head(net.hidden(x, t, emb, **text, drop_text=drop)[:, -1])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g_got = torch.autograd.grad(got.square().sum(), params, allow_unused=True)
    g_want = torch.autograd.grad(want.square().sum(), params, allow_unused=True)
    for p, a, w in zip(params, g_got, g_want):
        a = torch.zeros_like(p) if a is None else a
        w = torch.zeros_like(p) if w is None else w
        torch.testing.assert_close(a, w, rtol=1e-9, atol=1e-12)
    if dropout:
        net.train()
        a, b2 = net(x, t, emb, **text, drop_text=drop), net(x, t, emb, **text, drop_text=drop)
        assert not torch.allclose(a, b2)  # dropout is live in training


def _prior_inputs(text_input: str, b: int, dtype=torch.float64):
    tokens = torch.randint(1, 64, (b, 8))
    tokens[:, 5:] = 0
    text = {
        "tokens": {"text_tokens": tokens},
        "encodings": {"text_encodings": torch.randn(b, 8, 16, dtype=dtype), "text_mask": tokens != 0},
    }[text_input]
    x, t, emb = torch.randn(b, 16, dtype=dtype), torch.randint(0, 1000, (b,)), torch.randn(b, 16, dtype=dtype)
    return x, t, emb, text


@pytest.mark.parametrize("text_input", ["tokens", "encodings"])
@pytest.mark.parametrize("pattern", ["ttfftf", "tttttt", "fttfff"])
def test_diffusion_prior_shared_null_prefix_equals_the_full_stack(text_input, pattern, monkeypatch):
    """With two or more dropped captions in a training batch, ``forward`` computes the null caption's text prefix
    once (``_shared_null``: kept rows first, one null prefix for the dropped rows): values and every parameter's
    gradient equal ``head(hidden(...)[:, -1])`` (float64, training mode, rows in the caller's order), including a
    batch with every caption dropped. The shared path must actually run (spied)."""
    from zoo.models.diffusion_prior.model import DiffusionPriorNet, build_config

    torch.manual_seed(0)
    net = DiffusionPriorNet(build_config("tiny", {"text_input": text_input})).double().train()
    runs = []
    shared = net._shared_null
    monkeypatch.setattr(net, "_shared_null", lambda *a: (runs.append(1), shared(*a))[1])
    x, t, emb, text = _prior_inputs(text_input, len(pattern))
    drop = torch.tensor([c == "t" for c in pattern])
    params = [p for p in net.parameters() if p.numel()]
    got = net(x, t, emb, **text, drop_text=drop)
    assert runs == [1]
    want = net.head(net.hidden(x, t, emb, **text, drop_text=drop)[:, -1])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(got)  # a loss that tells the rows apart, so a row mix-up shows in the gradients
    g_got = torch.autograd.grad((got * w).sum(), params, allow_unused=True)
    g_want = torch.autograd.grad((want * w).sum(), params, allow_unused=True)
    for p, a, b in zip(params, g_got, g_want):
        a = torch.zeros_like(p) if a is None else a
        b = torch.zeros_like(p) if b is None else b
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_diffusion_prior_shares_the_null_prefix_only_when_it_is_the_same_function():
    """The shared null prefix is used for 2+ dropped rows with text positions; not for one dropped row (nothing to
    share), not without text tokens, and not under live dropout (each row must draw its own masks); in eval mode
    dropout is off, so it is used. Not in half precision (bf16 autocast or bf16 weights), where the tail's tiny
    matmuls cost more than the prefix FLOPs they save (bench/bench_prior.py's unshared variant, measured)."""
    from zoo.models.diffusion_prior.model import DiffusionPriorNet, build_config

    torch.manual_seed(0)
    two, one = torch.tensor([True, True, False]), torch.tensor([True, False, False])
    net = DiffusionPriorNet(build_config("tiny")).train()
    assert net._shares_null(two) and not net._shares_null(one) and not net._shares_null(None)
    assert not DiffusionPriorNet(build_config("tiny", {"text_input": "none"}))._shares_null(two)
    live = DiffusionPriorNet(build_config("tiny", {"dropout": 0.1})).train()
    assert not live._shares_null(two)
    assert live.eval()._shares_null(two)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not net._shares_null(two)
    assert not DiffusionPriorNet(build_config("tiny")).to(torch.bfloat16).train()._shares_null(two)
    assert DiffusionPriorNet(build_config("tiny")).double().train()._shares_null(two)  # the float64 checks use it


def test_diffusion_prior_traces_in_one_graph_under_torch_compile():
    """``torch.compile(net, fullgraph=True)`` traces the training forward in one graph: the shared null prefix
    counts the dropped rows on the host (``int(drop_text.sum())``, a data-dependent branch), so under tracing the
    prior takes the full-sequence path, the same function. Dynamo only (``backend="eager"``): the trace is what is
    checked, not Inductor's code, and it takes seconds."""
    from zoo.models.diffusion_prior.model import DiffusionPriorNet, build_config

    torch._dynamo.reset()
    torch.manual_seed(0)
    net = DiffusionPriorNet(build_config("tiny")).train()
    x, t, emb, text = _prior_inputs("tokens", 6, torch.float32)
    drop = torch.tensor([True, False, True, True, False, False])
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    got = compiled(x, t, emb, **text, drop_text=drop)
    torch.testing.assert_close(got, net(x, t, emb, **text, drop_text=drop), rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()
