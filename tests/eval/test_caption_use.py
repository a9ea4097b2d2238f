"""eval.caption_use: x0 errors with the true / empty / another scene's caption, for eps and v models.

The network is replaced by an oracle that knows each scene's image and answers only to that scene's own caption
(zeros for the empty caption), so the expected numbers are known by hand: 0 error for the true caption at every t,
the other scene's image for another scene's caption, and for the empty caption the x0 a zero output implies."""

from __future__ import annotations

import json

import pytest
import torch

from eval import caption_use as cu
from zoo.models.glide.lit import GlideLit


def _oracle(glide, x0: torch.Tensor, captions: list[str]):
    tokens = glide.encode_captions(captions).cpu()
    process = glide.process

    def net(x_t, t, text_tokens=None):
        out = torch.zeros(x_t.shape[0], 6, *x_t.shape[-2:])
        for i, row in enumerate(text_tokens):
            hit = (tokens == row).all(dim=1).nonzero()
            if len(hit):
                j = int(hit[0])
                eps = process.eps_from_x0(x_t[i : i + 1], t[i : i + 1], x0[j : j + 1])
                if process.model_mean_type == "v":
                    eps = process.v_from_x0_eps(x0[j : j + 1], t[i : i + 1], eps)
                out[i, :3] = eps[0]
        return out

    return net


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_oracle_reads_its_captions_and_the_zero_output_error_is_hand_computed(prediction, nn_helpers):
    glide = nn_helpers.sampling_lit(lambda preset: GlideLit(preset=preset, prediction=prediction))
    x0, captions = cu.scenes(6, 16)
    assert x0.shape == (6, 3, 16, 16) and len(set(captions)) == 6
    glide.net.forward = _oracle(glide, x0, captions)
    rows = cu.caption_use(glide, x0, captions, [100, 900], seed=0, batch_size=4)
    assert [r["t"] for r in rows] == [100, 900]
    p = glide.process
    for r in rows:
        assert r["true"] < 1e-10 and r["gain"] == pytest.approx(1.0)
        # a zero output: eps -> x0 = x_t / sqrt(ac); v -> x0 = sqrt(ac) * x_t, both clamped to [-1, 1]
        t = torch.full((6,), r["t"])
        g = torch.Generator().manual_seed(0 * 100_003 + r["t"])
        x_t = p.q_sample(x0, t, noise=torch.randn(x0.shape, generator=g))
        zero = x_t / p.coef("sqrt_ac", t, x_t) if prediction == "eps" else p.coef("sqrt_ac", t, x_t) * x_t
        want = float(((zero.clamp(-1, 1) - x0) ** 2).mean())
        assert r["empty"] == pytest.approx(want, rel=1e-5)
        # another scene's caption: the oracle draws that scene (the rotation by n // 2 of the set)
        assert r["shuffled"] == pytest.approx(float(((x0.roll(3, dims=0) - x0) ** 2).mean()), rel=1e-4)
        assert r["shuffled"] > 0


def test_cli_writes_results_and_rejects_bad_timesteps(tmp_path, nn_helpers, monkeypatch):
    glide = nn_helpers.sampling_lit(GlideLit)
    monkeypatch.setattr("zoo.pipelines.glide.load_glide", lambda path, use_ema=True, option=None: (glide, "raw"))
    ckpt = tmp_path / "fake.ckpt"
    torch.save({"global_step": 7}, ckpt)
    res = cu.main([str(ckpt), "--n", "4", "--t", "10", "500", "--out", str(tmp_path / "out")])
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved == json.loads(json.dumps(res))
    ck = saved["checkpoints"][0]
    assert ck["global_step"] == 7 and ck["prediction"] == "eps" and [r["t"] for r in ck["rows"]] == [10, 500]
    assert "| 500 |" in (tmp_path / "out" / "results.md").read_text()
    x0, caps = cu.scenes(2, 16)
    with pytest.raises(ValueError, match="timesteps"):
        cu.caption_use(glide, x0, caps, [1000])
