"""zoo-export: safetensors + config.json rebuild every component bit for bit; ONNX graphs match PyTorch under
onnxruntime (dynamic batch); the export directory is read through the registry's checks."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

pytest.importorskip("safetensors")

REPO = Path(__file__).resolve().parents[1]


def _tiny(name: str, tmp_path: Path, helpers):
    torch.manual_seed(0)
    if name == "dvae":
        from zoo.models.dvae.lit import DVAELit

        return DVAELit(preset="tiny")
    if name == "vqvae":
        from zoo.models.vqvae.lit import VQVAELit

        return VQVAELit(preset="tiny")
    if name == "clip":
        from zoo.models.clip.lit import ClipLit

        return ClipLit(preset="tiny", load_weights=False)
    if name == "dalle":
        from zoo.models.dalle.lit import DalleLit

        tok = helpers.tiny_tokenizer_ckpt(tmp_path / "vq.ckpt")
        return DalleLit(
            preset="tiny",
            net=dict(helpers.TINY_NET),
            image_tokenizer_ckpt=str(tok),
            text_tokenizer=helpers.tiny_bpe().to_spec(),
        )
    if name == "glide":
        from zoo.models.glide.lit import GlideLit

        lit = GlideLit(preset="tiny")
        with torch.no_grad():  # zero-initialised output layers would make every output 0 (a vacuous comparison)
            for p in lit.parameters():
                if p.ndim > 1 and p.abs().max() == 0:
                    p.normal_(std=0.1)
        return lit
    if name == "diffusion_prior":
        from zoo.models.diffusion_prior.lit import DiffusionPriorLit

        return DiffusionPriorLit(preset="tiny", embed_scale=1.5)
    if name == "ar_prior":
        from zoo.models.ar_prior.lit import ARPriorLit

        return ARPriorLit(preset="tiny")
    raise AssertionError(name)


def _outputs(name: str, m) -> list[torch.Tensor]:
    """A deterministic forward per component (fixed inputs)."""
    g = torch.Generator().manual_seed(7)
    m.eval()
    with torch.no_grad():
        if name in ("dvae", "vqvae"):
            from zoo.nn.image_tokenizer import find_image_tokenizer

            tok = find_image_tokenizer(m)
            x = torch.rand(2, 3, tok.resolution, tok.resolution, generator=g) * 2 - 1
            codes = tok.encode(x)
            return [codes, tok.decode(codes)]
        if name == "clip":
            x = torch.randn(2, 3, m.image_size, m.image_size, generator=g)
            t = m.tokenize(["a red circle", "a blue square"])
            return [m.clip.encode_image(x), m.clip.encode_text(t)]
        if name == "dalle":
            c = m.transformer.cfg
            text = torch.randint(1, c.text_vocab, (2, c.text_len), generator=g)
            image = torch.randint(0, c.image_vocab, (2, c.image_len), generator=g)
            x = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
            return [*m.transformer(text, image), m.image_tokenizer.encode(x)]
        if name == "glide":
            c = m.net.cfg
            x = torch.randn(2, 3, c.image_size, c.image_size, generator=g)
            t = torch.tensor([3, 700])
            return [m.net(x, t, torch.randint(0, c.text_vocab, (2, c.text_len), generator=g))]
    return []  # priors: state dict equality (their forward needs fitted data-dependent inputs)


def _write_ckpt(lit, path: Path) -> Path:
    from zoo.checkpoint import atomic_torch_save
    from zoo.export import checkpoint_dict

    return atomic_torch_save(checkpoint_dict(lit), path)


COMPONENTS = ["dvae", "vqvae", "clip", "dalle", "glide", "diffusion_prior", "ar_prior"]


@pytest.mark.parametrize("name", COMPONENTS)
def test_safetensors_export_rebuilds_identically(tmp_path, name, dalle_helpers):
    from zoo.checkpoint import load_module
    from zoo.export import export, load_export

    ckpt = _write_ckpt(_tiny(name, tmp_path, dalle_helpers), tmp_path / "last.ckpt")
    out = tmp_path / "export"
    summary = export(OmegaConf.create({"ckpt": str(ckpt), "out": str(out), "onnx": False}))
    assert summary["reload_identical_weights"]
    config = json.loads((out / "config.json").read_text())
    assert config["component"] == name and config["format"] == "dalle-zoo-export"
    if name == "dalle":  # the nested plain specs travel in config.json
        hp = config["hyper_parameters"]
        assert hp["tokenizer_spec"]["component"] == "vqvae" and isinstance(hp["text_tokenizer"], dict)
    original, again = load_module(ckpt), load_export(out)
    sd0, sd1 = original.state_dict(), again.state_dict()
    assert sd0.keys() == sd1.keys()
    assert all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    for a, b in zip(_outputs(name, original), _outputs(name, again), strict=True):
        assert torch.equal(a, b)


def test_load_export_refuses_what_a_file_may_not_name(tmp_path):
    from zoo.export import load_export, save_export
    from zoo.models.dvae.lit import DVAELit
    from zoo.registry import UnsafeCheckpointError

    save_export(DVAELit(preset="tiny"), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for bad in (
        {**cfg, "component": "os.system"},
        {**cfg, "hyper_parameters": {**cfg["hyper_parameters"], "net": {"_target_": "os.system"}}},
        {**cfg, "hyper_parameters": {**cfg["hyper_parameters"], "not_an_argument": 1}},
    ):
        (tmp_path / "config.json").write_text(json.dumps(bad))
        with pytest.raises(UnsafeCheckpointError):
            load_export(tmp_path)


ONNX_TOL = 1e-4


@pytest.mark.parametrize("name", ["dvae", "vqvae", "clip", "dalle", "glide"])
def test_onnx_graphs_match_pytorch(tmp_path, name, dalle_helpers):
    pytest.importorskip("onnxruntime")
    from zoo.export import export_onnx

    lit = _tiny(name, tmp_path, dalle_helpers).eval()
    report = export_onnx(name, lit, tmp_path / "onnx", export_batch=2, check_batch=3)
    expected = {
        "dvae": {"encode", "decode"},
        "vqvae": {"encode", "decode"},
        "clip": {"image_tower", "text_tower"},
        "dalle": {"prefill", "decode_step", "image_decode"},
        "glide": {"text_encoder", "unet"},
    }[name]
    assert set(report) == expected
    for graph, info in report.items():
        assert info["batch"] == 3  # not the export's batch: the batch axis is dynamic
        assert info["max_abs_error"] < ONNX_TOL, (graph, info)
        assert all(v == 1.0 for k, v in info.items() if k.endswith("_agreement")), (graph, info)
        assert Path(info["path"]).stat().st_size == info["bytes"] > 0
    if name == "dalle":  # prefill + a decode_step per token through the explicit KV cache == the uncached forward
        assert report["decode_step"]["full_decode_vs_uncached_max_abs_error"] < ONNX_TOL
    assert json.loads((tmp_path / "onnx" / "report.json").read_text()).keys() == report.keys()


def test_onnx_decoding_never_offers_a_code_the_tokenizer_cannot_decode(tmp_path, dalle_helpers):
    """image_vocab (48) larger than the image tokenizer's codebook (32): the PyTorch sampler never draws the extra
    codes (next_image_logits masks them); the prefill / decode_step graphs returned their raw logits, so a sampler
    on the graphs put about a third of its mass on codes the image_decode graph cannot turn into pixels."""
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from zoo.export import export_onnx
    from zoo.models.dalle.lit import DalleLit

    torch.manual_seed(0)
    lit = DalleLit(
        preset="tiny",
        net={**dalle_helpers.TINY_NET, "image_vocab": 48},
        image_tokenizer_ckpt=str(dalle_helpers.tiny_tokenizer_ckpt(tmp_path / "vq.ckpt")),
        text_tokenizer=dalle_helpers.tiny_bpe().to_spec(),
    ).eval()
    net, k = lit.transformer, lit.image_tokenizer.codebook_size
    assert k == 32 < net.cfg.image_vocab
    report = export_onnx("dalle", lit, tmp_path / "onnx", graphs=["prefill", "decode_step"])
    step_info = report["decode_step"]  # relative to the decodable logits' scale (units), not the mask value's
    rel, err = step_info["full_decode_vs_uncached_max_rel_error"], step_info["full_decode_vs_uncached_max_abs_error"]
    assert err / 1e3 <= rel < 1e-4, step_info
    c = net.cfg
    text = torch.randint(1, c.text_vocab, (2, c.text_len))
    image = torch.randint(0, k, (2, 4))
    pre = ort.InferenceSession(str(tmp_path / "onnx" / "prefill.onnx"), providers=["CPUExecutionProvider"])
    step = ort.InferenceSession(str(tmp_path / "onnx" / "decode_step.onnx"), providers=["CPUExecutionProvider"])
    logits, pk, pv = pre.run(None, {"text": text.numpy()})
    for p in range(image.shape[1] + 1):
        with torch.no_grad():
            ref = net.next_image_logits(text, image[:, :p] if p else None)  # what the PyTorch sampler draws from
        got = torch.from_numpy(logits)
        assert torch.all(got[:, k:] == torch.finfo(torch.float32).min)
        assert torch.equal(got[:, k:], ref[:, k:])
        assert torch.allclose(got[:, :k], ref[:, :k], atol=ONNX_TOL)
        assert torch.softmax(got, -1)[:, k:].sum() == 0
        if p < image.shape[1]:
            logits, pk, pv = step.run(None, {"image_token": image[:, p : p + 1].numpy(), "past_k": pk, "past_v": pv})


def test_weights_holding_nan_are_named_not_blamed_on_the_export(tmp_path):
    """A checkpoint of a run that diverged (a NaN weight) failed the export's own round trip (NaN != NaN) with a
    RuntimeError saying the export does not reload to the checkpoint's weights, after writing it."""
    from zoo.errors import ConfigError
    from zoo.export import checkpoint_dict, export
    from zoo.models.vqvae.lit import VQVAELit

    ck = checkpoint_dict(VQVAELit(preset="tiny"))
    w = ck["state_dict"]["vqvae.encoder.0.weight"]
    w[(0,) * w.ndim] = float("nan")
    torch.save(ck, tmp_path / "diverged.ckpt")
    for onnx in (False, True):
        cfg = {"ckpt": str(tmp_path / "diverged.ckpt"), "out": str(tmp_path / "out"), "onnx": onnx}
        with pytest.raises(ConfigError, match=r"1 tensor\(s\) hold NaN or inf \(vqvae.encoder.0.weight\).*fix: "):
            export(OmegaConf.create(cfg))
    assert not (tmp_path / "out").exists()


def test_zoo_export_command(tmp_path):
    """The console entry point end to end: Hydra config, summary printed, files written."""
    from zoo.models.vqvae.lit import VQVAELit

    torch.manual_seed(0)
    ckpt = _write_ckpt(VQVAELit(preset="tiny"), tmp_path / "vq.ckpt")
    out = tmp_path / "vq_export"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "zoo.export",
            f"ckpt={ckpt}",
            f"out={out}",
            "graphs=[decode]",
            f"paths.log_dir={tmp_path / 'logs'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "onnx/decode.onnx" in r.stdout and "max abs error" in r.stdout
    assert (out / "model.safetensors").is_file() and (out / "onnx" / "decode.onnx").is_file()
    assert not (out / "onnx" / "encode.onnx").exists()
    from zoo.errors import ConfigError
    from zoo.export import export

    with pytest.raises(ConfigError, match="zoo-export ckpt="):  # printed as "error: ..." (exit 2) by the entry point
        export(OmegaConf.create({"ckpt": None}))


def test_misspelt_graph_name_is_refused_before_writing(tmp_path):
    """zoo-export graphs=[decod]: refused with the component's graph names, before anything is written (it exported
    the weights, no graph at all, and exited 0 with "no ONNX graph for vqvae")."""
    from zoo.errors import ConfigError
    from zoo.export import export
    from zoo.models.vqvae.lit import VQVAELit

    ckpt = _write_ckpt(VQVAELit(preset="tiny"), tmp_path / "vq.ckpt")
    out = tmp_path / "vq_export"
    with pytest.raises(ConfigError, match=r"\['decod'\].*\['encode', 'decode'\]"):
        export(OmegaConf.create({"ckpt": str(ckpt), "out": str(out), "graphs": ["decod"]}))
    assert not out.exists()


def test_onnx_and_graphs_given_as_words_are_read_as_meant(tmp_path, monkeypatch):
    """onnx=no (a word to Hydra, so truthy) exported every ONNX graph anyway; graphs=decode (one name, no brackets)
    was read letter by letter, refused as graphs=['d', 'e', ...]. Now onnx= must be true / false, checked before
    the checkpoint is read, and a single name is a one-graph list."""
    import zoo.export as zx
    from zoo.errors import ConfigError
    from zoo.models.vqvae.lit import VQVAELit

    ckpt = _write_ckpt(VQVAELit(preset="tiny"), tmp_path / "vq.ckpt")
    read = zx.load_checkpoint
    with monkeypatch.context() as m:
        m.setattr(zx, "load_checkpoint", lambda *a, **k: pytest.fail("read the checkpoint"))
        for bad in ("no", "off"):
            with pytest.raises(ConfigError, match=rf"^onnx='{bad}' must be true or false \(fix: onnx=false\)$"):
                zx.export(OmegaConf.create({"ckpt": str(ckpt), "out": str(tmp_path / "o"), "onnx": bad}))
        with pytest.raises(ConfigError, match=r"graphs=.*a list of graph names"):
            zx.export(OmegaConf.create({"ckpt": str(ckpt), "out": str(tmp_path / "o"), "graphs": 3}))
    assert zx.load_checkpoint is read and not (tmp_path / "o").exists()
    out = tmp_path / "one"
    summary = zx.export(OmegaConf.create({"ckpt": str(ckpt), "out": str(out), "graphs": "decode"}))
    assert list(summary["onnx"]) == ["decode"] and sorted(p.name for p in (out / "onnx").glob("*.onnx")) == [
        "decode.onnx"
    ]


def test_out_naming_a_file_is_refused(tmp_path):
    """zoo-export out=model.safetensors (a file, not a folder) died on a FileExistsError traceback from mkdir."""
    from zoo.errors import ConfigError
    from zoo.export import export
    from zoo.models.vqvae.lit import VQVAELit

    ckpt = _write_ckpt(VQVAELit(preset="tiny"), tmp_path / "vq.ckpt")
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"keep me")
    with pytest.raises(ConfigError, match="is a file"):
        export(OmegaConf.create({"ckpt": str(ckpt), "out": str(target), "onnx": False}))
    assert target.read_bytes() == b"keep me"


def test_opset_outside_the_exporters_range_is_refused_before_writing(tmp_path):
    """opset=5 (below torch's 7) failed with the exporter's traceback after the safetensors were written."""
    from zoo.errors import ConfigError
    from zoo.export import export
    from zoo.models.vqvae.lit import VQVAELit

    ckpt = _write_ckpt(VQVAELit(preset="tiny"), tmp_path / "vq.ckpt")
    for bad in (5, 99, "17", 17.0, True):
        with pytest.raises(
            ConfigError, match=r"^opset=.* must be a whole number from \d+ to \d+: .*\(fix: opset=17\)$"
        ):
            export(OmegaConf.create({"ckpt": str(ckpt), "out": str(tmp_path / "out"), "opset": bad}))
    assert not (tmp_path / "out").exists()


def test_an_operator_the_opset_lacks_is_a_config_error(tmp_path):
    """GLIDE's text encoder uses attention, which ONNX has from opset 14: at opset 12 a ConfigError names the graph,
    the operator and the fix, not the exporter's traceback."""
    from zoo.errors import ConfigError
    from zoo.export import export_onnx
    from zoo.models.glide.lit import GlideLit

    with pytest.raises(ConfigError, match=r"text_encoder.*scaled_dot_product_attention.*fix: opset=17"):
        export_onnx("glide", GlideLit(preset="tiny"), tmp_path / "onnx", 12, graphs=["text_encoder"])


def test_a_tokenizer_trained_at_another_resolution_exports_at_it(tmp_path):
    """zoo-train model=vqvae data.resolution=<not the preset's> records the resolution only in the run config: the
    export rebuilt the preset's (ONNX encode traced at 32 px, decode at a 16x16 grid; config.json and load_export
    without it), so the graphs took another image size and gave another grid of codes than the tokenizer learned."""
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from zoo.checkpoint import atomic_torch_save
    from zoo.export import checkpoint_dict, export, load_export
    from zoo.models.vqvae.lit import VQVAELit
    from zoo.nn.image_tokenizer import find_image_tokenizer

    torch.manual_seed(0)
    lit = VQVAELit(preset="tiny")
    trained = 2 * find_image_tokenizer(lit).resolution
    ck = checkpoint_dict(lit)
    ck["zoo_config"] = {"data": {"resolution": trained}}
    ckpt = atomic_torch_save(ck, tmp_path / "vq.ckpt")
    out = tmp_path / "export"
    export(OmegaConf.create({"ckpt": str(ckpt), "out": str(out), "graphs": ["encode"]}))
    tok = find_image_tokenizer(load_export(out))
    f = tok.downsample_factor
    assert tok.resolution == trained and tok.grid_size == (trained // f, trained // f)
    prep = json.loads((out / "config.json").read_text())["preprocessing"]
    assert prep["resolution"] == trained and prep["grid_size"] == [trained // f] * 2
    sess = ort.InferenceSession(str(out / "onnx" / "encode.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[2:] == [trained, trained]


def test_config_json_says_how_to_feed_the_clip_towers(tmp_path):
    """The ONNX image tower takes normalised pixels: config.json carries the size, mean / std and context length."""
    from zoo.export import save_export
    from zoo.models.clip.lit import ClipLit

    lit = ClipLit(preset="tiny", load_weights=False)
    save_export(lit, tmp_path)
    prep = json.loads((tmp_path / "config.json").read_text())["preprocessing"]
    s = lit.scorer()
    assert prep["image_size"] == lit.image_size and prep["context_length"] == lit.clip.context_length
    assert torch.allclose(torch.tensor(prep["mean"]), s.mean.flatten()) and len(prep["std"]) == 3


def test_a_reexport_or_a_failed_export_never_mixes_two_models(tmp_path):
    """The export is written aside and renamed into place: re-exporting another checkpoint into a folder kept the
    previous model's onnx/ graphs (and report) next to the new weights, and an export failing half-way (here an
    opset without attention, after the weights were written) left the new weights with the old graphs."""
    from zoo.errors import ConfigError
    from zoo.export import export
    from zoo.models.dvae.lit import DVAELit
    from zoo.models.glide.lit import GlideLit
    from zoo.models.vqvae.lit import VQVAELit

    torch.manual_seed(0)
    vq = _write_ckpt(VQVAELit(preset="tiny"), tmp_path / "vq.ckpt")
    dvae = _write_ckpt(DVAELit(preset="tiny"), tmp_path / "dvae.ckpt")
    glide = _write_ckpt(GlideLit(preset="tiny"), tmp_path / "glide.ckpt")
    out = tmp_path / "exports" / "model"
    pytest.importorskip("onnxruntime")
    export(OmegaConf.create({"ckpt": str(vq), "out": str(out), "graphs": ["decode"]}))
    assert (out / "onnx" / "decode.onnx").is_file()
    export(OmegaConf.create({"ckpt": str(dvae), "out": str(out), "onnx": False}))
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]  # no vqvae graph left
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ConfigError, match="opset=17"):
        export(OmegaConf.create({"ckpt": str(glide), "out": str(out), "opset": 12, "graphs": ["text_encoder"]}))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the dVAE export, whole
    assert sorted(p.name for p in out.parent.iterdir()) == ["model"]  # no temporary folder left behind


def test_out_holding_other_files_is_refused_not_emptied(tmp_path):
    from zoo.errors import ConfigError
    from zoo.export import export
    from zoo.models.vqvae.lit import VQVAELit

    ckpt = _write_ckpt(VQVAELit(preset="tiny"), tmp_path / "vq.ckpt")  # tmp_path holds it: not an export folder
    with pytest.raises(ConfigError, match=r"holds other files \(vq.ckpt\)"):
        export(OmegaConf.create({"ckpt": str(ckpt), "out": str(tmp_path), "onnx": False}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vq.ckpt"]


def test_batch_sizes_are_checked_before_anything_is_read(tmp_path):
    """check_batch=0 failed after the export with a bare 'max(): Expected reduction dim' traceback; check_batch equal
    to export_batch passed without showing the batch axis is dynamic."""
    from zoo.errors import ConfigError
    from zoo.export import export

    ckpt = tmp_path / "missing.ckpt"  # never read: the batch sizes are refused first
    for bad, match in (
        ({"check_batch": 0}, r"^check_batch=0 must be a whole number >= 1: .*\(fix: check_batch=3\)$"),
        ({"export_batch": -1}, r"^export_batch=-1 must be a whole number >= 1"),
        ({"export_batch": "2"}, r"^export_batch='2' must be a whole number >= 1"),
        ({"export_batch": 2, "check_batch": 2}, r"another batch size.*fix: check_batch=3"),
    ):
        with pytest.raises(ConfigError, match=match):
            export(OmegaConf.create({"ckpt": str(ckpt), "out": str(tmp_path / "out"), **bad}))
    assert not (tmp_path / "out").exists()


def test_the_export_takes_the_weights_the_samplers_use(tmp_path):
    """A callbacks=ema checkpoint exports its EMA (state_dict, what zoo-sample samples) and says so in config.json;
    one saved before the EMA's first update (n_averaged = 0: its "average" is the initial weights) exported those
    initial weights while the GLIDE pipeline samples the trained ones (current_model_state)."""
    from zoo.export import export, load_export
    from zoo.models.glide.lit import GlideLit
    from zoo.pipelines.glide import load_glide

    torch.manual_seed(0)
    average = GlideLit(preset="tiny")
    torch.manual_seed(1)
    trained = GlideLit(preset="tiny")
    key = "net.text_proj.weight"
    assert not torch.equal(average.state_dict()[key], trained.state_dict()[key])
    for n_averaged, expect, weights in ((5, average, "ema"), (0, trained, "trained (the EMA had not started)")):
        ck = _write_ckpt(average, tmp_path / f"{n_averaged}.ckpt")
        d = torch.load(ck, weights_only=True)
        d["current_model_state"] = trained.state_dict()
        d["averaging_state"] = {"n_averaged": torch.tensor(n_averaged)}
        torch.save(d, ck)
        out = tmp_path / f"export{n_averaged}"
        export(OmegaConf.create({"ckpt": str(ck), "out": str(out), "onnx": False}))
        got = load_export(out).state_dict()[key]
        assert torch.equal(got, expect.state_dict()[key]) and torch.equal(got, load_glide(str(ck))[0].state_dict()[key])
        assert json.loads((out / "config.json").read_text())["weights"] == weights


def test_a_folder_or_an_export_given_as_ckpt_is_named(tmp_path):
    """ckpt=<run dir> said 'checkpoint not found' although it exists; an export's model.safetensors said 'not
    written by zoo-train ... load its state_dict into the model class yourself'."""
    from zoo.errors import ConfigError
    from zoo.export import export, save_export
    from zoo.models.vqvae.lit import VQVAELit

    run = tmp_path / "run"
    _write_ckpt(VQVAELit(preset="tiny"), run / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match=r"is a folder.*fix: ckpt=.*run/checkpoints/last.ckpt\)"):
        export(OmegaConf.create({"ckpt": str(run), "out": str(tmp_path / "out")}))
    save_export(VQVAELit(preset="tiny"), tmp_path / "exported")
    for given in (tmp_path / "exported", tmp_path / "exported" / "model.safetensors"):
        with pytest.raises(ConfigError, match=r"zoo-export folder: it is exported already"):
            export(OmegaConf.create({"ckpt": str(given), "out": str(tmp_path / "out")}))
    assert not (tmp_path / "out").exists()


def test_out_given_as_a_link_replaces_the_folder_it_points_to(tmp_path):
    from zoo.export import export
    from zoo.models.vqvae.lit import VQVAELit

    ckpt = _write_ckpt(VQVAELit(preset="tiny"), tmp_path / "vq.ckpt")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    for _ in range(2):  # the second export replaces the first
        export(OmegaConf.create({"ckpt": str(ckpt), "out": str(tmp_path / "link"), "onnx": False}))
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real", "vq.ckpt"]


def test_a_graph_that_does_not_match_pytorch_fails_the_export(tmp_path, monkeypatch):
    """The onnxruntime check measured the error but could not fail: a trace that does not generalise (here the batch
    size read as a Python number, baked in at the export's batch) was installed and zoo-export exited 0, the 0.08
    error only printed. It is now a ConfigError and out= is left as it was."""
    pytest.importorskip("onnxruntime")
    import zoo.export as ze
    from zoo.errors import ConfigError
    from zoo.models.vqvae.lit import VQVAELit

    ckpt = _write_ckpt(VQVAELit(preset="tiny"), tmp_path / "vq.ckpt")
    decode = ze._TokenizerDecode.forward
    monkeypatch.setattr(
        ze._TokenizerDecode, "forward", lambda self, codes: decode(self, codes) * (int(codes.shape[0]) / 2)
    )
    with pytest.raises(ConfigError, match=r"ONNX graph decode does not match PyTorch.*max_rel_error"):
        ze.export(OmegaConf.create({"ckpt": str(ckpt), "out": str(tmp_path / "out"), "graphs": ["decode"]}))
    assert not (tmp_path / "out").exists()


def test_load_export_puts_the_module_on_map_location(tmp_path, monkeypatch):
    """safetensors' load_model copies the tensors it read (on map_location) into the module's own CPU tensors:
    load_export(dir, map_location="cuda") returned a CPU module."""
    from zoo.export import load_export, save_export
    from zoo.models.dvae.lit import DVAELit

    save_export(DVAELit(preset="tiny"), tmp_path)
    moved = []
    monkeypatch.setattr(DVAELit, "to", lambda self, *a, **kw: moved.append(a) or self)  # no GPU here: record it
    load_export(tmp_path, map_location="cuda:0")
    assert moved == [("cuda:0",)]


def test_config_json_says_how_to_feed_the_text_graphs(tmp_path, dalle_helpers):
    """GLIDE's unet graph takes context_mask = tokens != pad_id and DALL·E's prefill pads captions to text_len with
    pad_id: neither pad_id nor text_len (preset values) was in config.json."""
    from zoo.export import save_export

    for name in ("glide", "dalle"):
        lit = _tiny(name, tmp_path, dalle_helpers)
        save_export(lit, tmp_path / name)
        prep = json.loads((tmp_path / name / "config.json").read_text())["preprocessing"]
        c = lit.net.cfg if name == "glide" else lit.transformer.cfg
        assert (prep["text_len"], prep["pad_id"]) == (c.text_len, c.pad_id)
    assert prep["resolution"] == lit.image_tokenizer.resolution  # DALL·E: the pixels its image_decode gives


def test_a_missing_export_package_is_named_before_any_work(tmp_path, monkeypatch):
    """Without onnxruntime the export traced every graph and then died on a bare ModuleNotFoundError."""
    from zoo.errors import ConfigError
    from zoo.export import export

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"needs onnxruntime \(fix: pip install -e '.\[export\]', or onnx=false"):
        export(OmegaConf.create({"ckpt": str(tmp_path / "never_read.ckpt"), "out": str(tmp_path / "out")}))


def test_weights_trained_exports_the_optimisers_weights(tmp_path):
    """zoo-sample's GLIDE samples the raw weights with generator.use_ema=false; zoo-export had no counterpart (e.g.
    to fine-tune from the export): weights=trained takes current_model_state. A bad value is refused first."""
    from zoo.errors import ConfigError
    from zoo.export import export, load_export
    from zoo.models.glide.lit import GlideLit
    from zoo.pipelines.glide import load_glide

    torch.manual_seed(0)
    average = GlideLit(preset="tiny")
    torch.manual_seed(1)
    trained = GlideLit(preset="tiny")
    ck = _write_ckpt(average, tmp_path / "g.ckpt")
    d = torch.load(ck, weights_only=True)
    d["current_model_state"] = trained.state_dict()
    d["averaging_state"] = {"n_averaged": torch.tensor(7)}
    torch.save(d, ck)
    export(OmegaConf.create({"ckpt": str(ck), "out": str(tmp_path / "out"), "onnx": False, "weights": "trained"}))
    key = "net.text_proj.weight"
    got = load_export(tmp_path / "out").state_dict()[key]
    assert torch.equal(got, trained.state_dict()[key])
    assert torch.equal(got, load_glide(str(ck), use_ema=False)[0].state_dict()[key])
    assert json.loads((tmp_path / "out" / "config.json").read_text())["weights"] == "trained"
    with pytest.raises(ConfigError, match=r"weights='raw'.*fix: weights=ema"):
        export(OmegaConf.create({"ckpt": str(ck), "out": str(tmp_path / "o2"), "weights": "raw"}))


def test_a_nan_the_graph_gives_and_pytorch_does_not_is_an_infinite_parity_error():
    from zoo.errors import ConfigError
    from zoo.export import check_parity, max_abs_diff

    ref = torch.tensor([[1.0, -2.0, torch.finfo(torch.float32).min, float("nan")]])
    assert max_abs_diff(ref.clone(), ref) == 0.0  # masked logits and NaN in both agree
    off = ref.clone()
    off[0, 0] = 1.25
    assert max_abs_diff(off, ref) == pytest.approx(0.25)
    for bad in (float("nan"), float("inf")):
        got = ref.clone()
        got[0, 1] = bad
        assert max_abs_diff(got, ref) == math.inf  # before: NaN, which max() and '>' let through
        with pytest.raises(ConfigError, match="does not match PyTorch"):
            check_parity("g", {"batch": 1, "max_rel_error": max_abs_diff(got, ref) / 2.0})


def test_a_save_interrupted_between_its_two_files_is_refused_not_loaded_as_one_model(tmp_path, monkeypatch):
    """save_export into a folder holding an export replaced model.safetensors, then config.json: a failure (or a kill)
    between the two left the new weights beside the previous config.json, and load_export read them as one model (a
    state_dict error here; the new weights under the old preprocessing for the same architecture). The pair now
    carries one id, checked on load; no temporary file is left, and saving again makes the pair whole."""
    import os

    import zoo.export
    from zoo.errors import ConfigError
    from zoo.export import load_export, save_export
    from zoo.models.dvae.lit import DVAELit
    from zoo.models.vqvae.lit import VQVAELit

    torch.manual_seed(0)
    save_export(VQVAELit(preset="tiny"), tmp_path)
    real, calls = os.replace, []

    def second_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(zoo.export.os, "replace", second_fails)
    dvae = DVAELit(preset="tiny")
    with pytest.raises(OSError, match="disk full"):
        save_export(dvae, tmp_path)
    monkeypatch.setattr(zoo.export.os, "replace", real)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]  # no .tmp left
    with pytest.raises(ConfigError, match=r"two different saves.*fix: export again, zoo-export"):
        load_export(tmp_path)
    save_export(dvae, tmp_path)
    again = load_export(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(dvae.state_dict().values(), again.state_dict().values(), strict=True))


@pytest.mark.parametrize("kill_at", [2, 3])
def test_a_zoo_export_killed_while_installing_loses_neither_export(tmp_path, kill_at):
    """A zoo-export killed between the two renames that swap the new export in (the previous one moved aside, the
    new one not yet in place) left out= missing, both exports in hidden folders for good, and a re-run exported
    beside them. Now the folders set aside have fixed names: a kill leaves out= the previous export whole, or missing
    with load_export naming where the new one is; the next zoo-export puts it in place and removes the rest."""
    from zoo.export import export, load_export
    from zoo.models.dvae.lit import DVAELit
    from zoo.models.vqvae.lit import VQVAELit

    torch.manual_seed(0)
    vq = _write_ckpt(VQVAELit(preset="tiny"), tmp_path / "vq.ckpt")
    dvae = _write_ckpt(DVAELit(preset="tiny"), tmp_path / "dvae.ckpt")
    out = tmp_path / "exports" / "model"
    export(OmegaConf.create({"ckpt": str(vq), "out": str(out), "onnx": False}))
    killed = f"""
import os, signal
from omegaconf import OmegaConf
import zoo.export
real, calls = os.rename, []
def rename(src, dst):
    calls.append(dst)
    if len(calls) == {kill_at}:  # the process dies here: no handler, no finally
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst)
zoo.export.os.rename = rename
zoo.export.export(OmegaConf.create({{"ckpt": {str(dvae)!r}, "out": {str(out)!r}, "onnx": False}}))
"""
    r = subprocess.run([sys.executable, "-c", killed], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr[-2000:]
    assert out.exists() == (kill_at == 2)
    if out.exists():  # killed before the previous export moved: it is in place, whole
        assert type(load_export(out)).__name__ == "VQVAELit"
    else:
        with pytest.raises(FileNotFoundError, match=r"interrupted while installing.*\.model\.new.*run the zoo-export"):
            load_export(out)
    export(OmegaConf.create({"ckpt": str(dvae), "out": str(out), "onnx": False}))
    assert type(load_export(out)).__name__ == "DVAELit"
    assert sorted(p.name for p in out.parent.iterdir()) == ["model"]  # nothing set aside is left behind


def test_a_second_zoo_export_into_the_same_out_fails_at_once_naming_the_first(tmp_path):
    """Two zoo-export into one out= at once swapped folders through the same fixed names: the second took the first's
    half-installed export for an interrupted one and put it in place, deleted the first's folder set aside, and the
    first died on a FileNotFoundError. Now an export holds a lock on out= from its first look to the install: a
    second one (here while the first is paused between its renames) fails at once naming the first and the fix, and
    leaves the first's export whole; once the first is done, the same command runs."""
    from zoo.errors import ConfigError
    from zoo.export import export, load_export
    from zoo.models.dvae.lit import DVAELit
    from zoo.models.vqvae.lit import VQVAELit

    torch.manual_seed(0)
    vq = _write_ckpt(VQVAELit(preset="tiny"), tmp_path / "vq.ckpt")
    dvae = _write_ckpt(DVAELit(preset="tiny"), tmp_path / "dvae.ckpt")
    out = tmp_path / "exports" / "model"
    paused, resume = tmp_path / "paused", tmp_path / "resume"
    first = f"""
import os, time
from pathlib import Path
from omegaconf import OmegaConf
import zoo.export
real = os.rename
def rename(src, dst):  # pause after the new export is set aside, before the swap
    real(src, dst)
    Path({str(paused)!r}).touch()
    for _ in range(600):
        if Path({str(resume)!r}).exists():
            break
        time.sleep(0.1)
zoo.export.os.rename = rename
zoo.export.export(OmegaConf.create({{"ckpt": {str(vq)!r}, "out": {str(out)!r}, "onnx": False}}))
"""
    p = subprocess.Popen([sys.executable, "-c", first], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(1200):
            if paused.exists() or p.poll() is not None:
                break
            time.sleep(0.1)
        assert paused.exists(), p.stderr.read().decode()[-2000:] if p.poll() is not None else "the first never paused"
        again = OmegaConf.create({"ckpt": str(dvae), "out": str(out), "onnx": False})
        with pytest.raises(
            ConfigError, match=rf"being written by another zoo-export \(process {p.pid}, ckpt={re.escape(str(vq))}\)"
        ):
            export(again)
        with pytest.raises(ConfigError, match=r"fix: wait for it or choose another out="):
            export(again)
    finally:
        resume.touch()
        _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err.decode()[-2000:]
    assert type(load_export(out)).__name__ == "VQVAELit"  # the first's export, installed whole
    assert sorted(q.name for q in out.parent.iterdir()) == ["model"]  # its lock file and folders set aside gone
    export(again)  # the first done: the second runs
    assert type(load_export(out)).__name__ == "DVAELit"


@pytest.mark.parametrize("given", [".", "..", "sub/.."])
def test_out_naming_the_working_folder_is_refused_before_any_work(tmp_path, monkeypatch, given):
    """out=. (or .., or a path that comes back to the working folder) named no folder to rename: the whole export ran,
    then the swap failed with "OSError: [Errno 16] Device or resource busy: '.' -> '..old'". Now out= is made absolute
    and the folder zoo-export runs in (or one holding it) is refused at once: replacing it as a whole would move the
    working folder away."""
    from zoo.errors import ConfigError
    from zoo.export import export
    from zoo.models.vqvae.lit import VQVAELit

    ckpt = _write_ckpt(VQVAELit(preset="tiny"), tmp_path / "vq.ckpt")
    here = tmp_path / "work" / "empty"
    here.mkdir(parents=True)
    monkeypatch.chdir(here)
    with pytest.raises(
        ConfigError,
        match=rf"^out={re.escape(given)} is .* zoo-export runs in: .*fix: out=<a folder name>, e.g. out=export\)",
    ):
        export(OmegaConf.create({"ckpt": str(ckpt), "out": given, "onnx": False}))
    assert sorted(p.name for p in here.parent.iterdir()) == ["empty"] and not any(here.iterdir())
    export(OmegaConf.create({"ckpt": str(ckpt), "out": "sub/../export", "onnx": False}))  # a folder in it: exported
    assert [p.name for p in here.iterdir()] == ["export"]


def test_out_in_a_folder_that_cannot_be_written_is_named_before_any_work(tmp_path, monkeypatch):
    """out= in a directory the user cannot write was mkdtemp's PermissionError traceback, after the checkpoint was
    read. Now a ConfigError naming the directory and the fix, before the checkpoint is read. (The tests run as root,
    whom permissions do not stop: the directory's refusal is simulated where zoo-export first writes in it.)"""
    import errno
    import os

    import zoo.export
    from zoo.errors import ConfigError
    from zoo.export import export
    from zoo.models.vqvae.lit import VQVAELit

    ckpt = _write_ckpt(VQVAELit(preset="tiny"), tmp_path / "vq.ckpt")
    shared = tmp_path / "shared"
    shared.mkdir()
    real = os.open

    def refused(path, flags, *a):
        if Path(path).parent == shared and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, flags, *a)

    monkeypatch.setattr(zoo.export.os, "open", refused)
    monkeypatch.setattr(zoo.export, "load_checkpoint", lambda *a: pytest.fail("the checkpoint was read"))
    with pytest.raises(ConfigError, match=rf"cannot write in {re.escape(str(shared))} \(Permission denied\).*fix: "):
        export(OmegaConf.create({"ckpt": str(ckpt), "out": str(shared / "model"), "onnx": False}))
    assert not any(shared.iterdir())
