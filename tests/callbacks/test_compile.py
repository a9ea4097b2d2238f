"""``zoo-train ... compile=true`` (zoo.callbacks.compile): the network's training calls go through torch.compile, the
calls of validation / sample grids do not, the trained weights equal an eager run's, nothing of it reaches the
checkpoint, and components it would not cover are refused before anything is built. The backend here is
``aot_eager`` (Dynamo + AOT autograd, the graphs Inductor would get, without its code generation: seconds, not
minutes); bench/bench_compile.py measures Inductor."""

from __future__ import annotations

import pytest
import torch


def _counting_compile(monkeypatch) -> list[bool]:
    """torch.compile -> aot_eager, recording each call of a compiled function (True = with gradients on)."""
    calls: list[bool] = []
    real = torch.compile

    def counting(fn, **kwargs):
        inner = real(fn, backend="aot_eager")

        def run(*a, **k):
            calls.append(torch.is_grad_enabled())
            return inner(*a, **k)

        return run

    monkeypatch.setattr(torch, "compile", counting)
    return calls


def test_compiled_training_calls_match_eager_and_leave_no_trace(train_cfg, train_helpers, monkeypatch, tmp_path):
    T = train_helpers
    args = [*T.TINY_UPSAMPLER, *T.sizes(24), *T.ONE_EPOCH]
    torch._dynamo.reset()
    calls = _counting_compile(monkeypatch)
    cfg = train_cfg(*args, "compile=true")
    _, _, compiled = T.train_checked(cfg, "upsampler", 3)
    torch._dynamo.reset()
    # one compiled call per training step, all with gradients: the validation pass and its sample grid (2 DDIM steps
    # on 2 images, which train_checked requires) called the network eagerly
    assert calls == [True, True, True]
    calls.clear()
    cfg = train_cfg(*args)
    cfg.paths.output_dir = str(tmp_path / "eager")  # train_cfg's run dir holds the compiled run
    _, _, eager = T.train_checked(cfg, "upsampler", 3)
    assert calls == []  # compile=false (the default) compiles nothing
    a, b = compiled["state_dict"], eager["state_dict"]
    assert a.keys() == b.keys()  # no "_orig_mod." or other trace of the compiled call in the checkpoint
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("model", ["dvae", "clip", "ar_prior"])
def test_compile_is_refused_where_it_would_not_cover_the_training_step(train_cfg, model):
    from zoo.errors import ConfigError
    from zoo.train import check_compile

    with pytest.raises(ConfigError, match=r"compile=true does not apply to .*fix: drop compile=true"):
        check_compile(train_cfg(f"model={model}", "compile=true"))
    check_compile(train_cfg(f"model={model}"))  # the default: nothing to refuse
    check_compile(train_cfg("model=diffusion_prior", "compile=true"))
    check_compile(train_cfg("model=glide", "compile=true"))
    with pytest.raises(ConfigError, match="compile='fast' must be true or false"):
        check_compile(train_cfg("model=glide", "compile=fast"))


def test_the_compiled_call_is_removed_when_training_fails():
    from zoo.callbacks.compile import CompileTraining

    class Lit:
        compile_module = "net"

        def __init__(self):
            self.net = torch.nn.Linear(3, 2)

    lit, cb = Lit(), CompileTraining(backend="eager")
    cb.on_train_start(None, lit)
    assert "forward" in lit.net.__dict__
    x = torch.randn(4, 3)
    torch.testing.assert_close(lit.net(x), torch.nn.functional.linear(x, lit.net.weight, lit.net.bias))
    cb.on_exception(None, lit, RuntimeError("boom"))
    assert "forward" not in lit.net.__dict__ and list(lit.net.state_dict()) == ["weight", "bias"]
    with pytest.raises(ValueError, match="no compile_module"):
        CompileTraining().on_train_start(None, torch.nn.Module())
