"""zoo-serve: the page's logic (``Studio``: validation, knobs applied per request and restored, errors as one line)
without a browser, and the real ``zoo-serve`` command over a tiny trained DALL·E driven in a headless Chromium
(the OS package, via Playwright): an image comes back for a prompt; bad requests show an error, never a traceback."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from zoo.serve import KNOBS, SEED_STRIDE, RequestError, Studio


class FakeGenerator:
    """generate(captions) under torch's seed, with knobs as attributes (the convention of zoo.pipelines.base)."""

    def __init__(self, fail: bool = False):
        self.seed, self.guidance_scale, self.steps, self.fail = 0, 3.0, 10, fail
        self.seen: list[tuple] = []

    def generate(self, captions):
        self.seen.append((self.seed, self.guidance_scale, self.steps))
        if self.fail:
            raise RuntimeError("CUDA out of memory\n  (pretend)")
        return torch.rand(len(captions), 3, 8, 8) * 2 - 1


class FakeScorer:
    def clip_score(self, images, captions):
        return images.mean(dim=(1, 2, 3)) * 50 + 50  # brighter = better


def test_knobs_follow_the_generator_and_are_restored_after_each_request():
    g = FakeGenerator()
    studio = Studio(g)
    assert [k.name for k in studio.knobs] == ["guidance_scale", "steps"]  # no n_candidates/temperature attributes
    out = studio.run("a red circle", seed=7, n_keep=3, guidance_scale=5.5, steps=4)
    assert out["images"].shape == (3, 3, 8, 8) and out["scores"] is None and out["seed"] == 7
    s = out["generator_seed"]
    assert s == 7 * SEED_STRIDE and g.seen == [(s, 5.5, 4), (s + 1, 5.5, 4), (s + 2, 5.5, 4)]  # candidate i: s + i
    assert (g.seed, g.guidance_scale, g.steps) == (0, 3.0, 10)  # restored
    again = studio.run("a red circle", seed=7, n_keep=3, guidance_scale=5.5, steps=4)
    assert torch.equal(again["images"], out["images"])  # a pure function of (prompt, seed, knobs)


def test_knobs_given_as_call_parameters_reach_the_generator(dalle_helpers):
    """A generator whose knobs are parameters of candidates(captions, n, seed=, guidance_scale=, steps=) (GLIDE's
    LightningModule): the page finds them (start values from its hyper-parameters) and passes them, seed included."""
    from zoo.models.glide.lit import GlideLit

    torch.manual_seed(0)
    glide = GlideLit(preset="tiny")
    glide.text_tokenizer = dalle_helpers.tiny_bpe()
    studio = Studio(glide)
    assert [k.name for k in studio.knobs] == ["guidance_scale", "steps"] and studio.seed_by_call
    assert studio.defaults == {"guidance_scale": glide.hparams.guidance_scale, "steps": glide.hparams.sample_steps}
    a = studio.run("a red circle", seed=3, n_keep=2, guidance_scale=2.0, steps=2)["images"]
    b = studio.run("a red circle", seed=4, n_keep=2, guidance_scale=2.0, steps=2)["images"]
    assert a.shape == (2, 3, 16, 16) and not torch.equal(a, b)  # the seed reached it
    seen = []
    sample_tokens = glide.sample_tokens
    glide.sample_tokens = lambda *a, **kw: seen.append(kw) or sample_tokens(*a, **kw)  # spy: the net saturates
    studio.run("a red circle", seed=3, n_keep=2, guidance_scale=5.0, steps=2)
    # both candidates in one denoiser batch, each row drawing from its own seed's generator
    assert [(kw["guidance_scale"], kw["steps"]) for kw in seen] == [(5.0, 2)]
    assert [g.initial_seed() for _, g in seen[0]["generator"].groups] == [3 * SEED_STRIDE, 3 * SEED_STRIDE + 1]


def test_the_next_seed_shows_other_images():
    """The pipelines draw candidate i under seed + i: with the page's seed as the generator's, seeds s and s + 1
    shared all their candidates but one, and the next seed on the page showed the same images (4 of 4 on the demo
    DALL·E, 32 candidates). The page's seed s now draws under s * SEED_STRIDE + i: neighbours share none."""
    g = FakeGenerator()
    studio = Studio(g, scorer=FakeScorer())
    shown = [studio.run("x", seed=s, n_keep=4)["images"] for s in (5, 6)]
    assert not any(torch.equal(a, b) for a in shown[0] for b in shown[1])
    assert [seed for seed, _, _ in g.seen] == [s * SEED_STRIDE + i for s in (5, 6) for i in range(4)]


def test_a_scorer_orders_the_images_best_first():
    out = Studio(FakeGenerator(), scorer=FakeScorer()).run("x", seed=1, n_keep=4)
    assert out["scores"].shape == (4,) and torch.all(out["scores"][:-1] >= out["scores"][1:])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt=""), "prompt is empty"),
        (dict(prompt="   \n"), "prompt is empty"),
        (dict(prompt=None), "prompt is empty"),
        (dict(prompt="a" * 301), "limit is 300"),
        (dict(seed=-1), "seed must be between 0 and"),
        (dict(seed=1e30), "seed must be between 0 and"),
        (dict(seed="abc"), "seed must be a number"),
        (dict(seed=None), "seed must be a number"),
        (dict(n_keep=0), "keep must be between 1 and 16"),
        (dict(n_keep=2.5), "keep must be a whole number"),
        (dict(n_keep=10**9), "keep must be between 1 and 16"),
        (dict(guidance_scale=float("nan")), "guidance scale must be between 0 and 30"),
        (dict(steps=10**6), "steps must be between 1 and 1000"),
        (dict(temperature=1.0), "no knob temperature"),
    ],
)
def test_bad_requests_are_refused_with_a_message(kwargs, message):
    g = FakeGenerator()
    request = {"prompt": "a red circle", "seed": 0, "n_keep": 2, **kwargs}
    with pytest.raises(RequestError, match=message):
        Studio(g).run(request.pop("prompt"), request.pop("seed"), request.pop("n_keep"), **request)
    assert g.seen == []  # refused before the generator ran


def test_keep_cannot_exceed_candidates():
    class WithCandidates(FakeGenerator):
        n_candidates = 4

    with pytest.raises(RequestError, match=r"keep \(8\) cannot exceed candidates \(4\)"):
        Studio(WithCandidates(), FakeScorer()).run("x", 0, 8, n_candidates=4)


def test_a_failing_generator_gives_one_line_and_keeps_its_settings():
    g = FakeGenerator(fail=True)
    with pytest.raises(RequestError) as info:
        Studio(g).run("x", seed=3, n_keep=1, guidance_scale=9.0)
    msg = str(info.value)
    assert msg == "generation failed: RuntimeError: CUDA out of memory (pretend)"
    assert "Traceback" not in msg and (g.seed, g.guidance_scale) == (0, 3.0)


def test_every_knob_has_sane_bounds():
    studio = Studio(FakeGenerator())
    for knob in KNOBS:
        lo, hi = studio.bounds(knob)
        assert knob.kind in (int, float) and 0 <= lo < hi


def test_serve_config_listens_on_loopback_and_checks_its_inputs(tmp_path):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from zoo.errors import ConfigError
    from zoo.serve import HOST, serve

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose("serve", overrides=[f"paths.root_dir={tmp_path}", "generator.dalle_ckpt=/nonexistent.ckpt"])
    assert HOST == "127.0.0.1" and cfg.server.port == 7860 and cfg.generator.seed == cfg.seed
    with pytest.raises(ConfigError, match="generator.dalle_ckpt: checkpoint not found"):
        serve(cfg, block=False)
    cfg.server.port = 70000
    with pytest.raises(ConfigError, match="server.port=70000 must be a whole number from 1 to 65535"):
        serve(cfg, block=False)


# ---------------------------------------------------------------------------------------------------------------
# The real command in a real browser.

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        reason = "no chromium on this machine (apt-get install -y chromium chromium-driver; .ci/run installs it)"
        if os.environ.get("ZOO_CI"):
            pytest.fail(reason)  # CI installs it: missing there is a failure, not a skip
        pytest.skip(reason)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"zoo-serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1.0)
    pytest.fail(f"zoo-serve did not answer on {url} within {timeout:.0f} s:\n{log.read_text()[-4000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_zoo_serve_in_a_headless_browser(train_cfg, tmp_path, dalle_helpers, train_helpers):
    chromium = _chromium()
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]' (playwright)")
    pytest.importorskip("gradio", reason="pip install -e '.[serve]'")
    from zoo.train import train

    H, T = dalle_helpers, train_helpers
    cfg = train_cfg(*T.tiny_dalle(H, tmp_path))
    train(cfg)
    dalle = T.last_ckpt(cfg)
    clip = H.tiny_clip_ckpt(tmp_path / "clip.ckpt")

    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    log = tmp_path / "serve.log"
    env = dict(os.environ, OMP_NUM_THREADS="1", GRADIO_TEMP_DIR=str(tmp_path / "gradio"))
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "zoo.serve",
                "generator=dalle",
                f"generator.dalle_ckpt={dalle}",
                f"generator.clip_ckpt={clip}",
                "generator.n_candidates=6",
                f"server.port={port}",
                f"paths.root_dir={tmp_path}",
            ],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    outside: list[str] = []
    try:
        _wait_for(url, proc, log)
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch_persistent_context(
                tempfile.mkdtemp(dir=tmp_path),
                executable_path=chromium,
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1280, "height": 1000},
            )
            try:

                def local_only(route):  # the page must work offline: anything not from the app is refused and noted
                    target = route.request.url
                    if target.startswith((url, "data:", "blob:")):
                        return route.continue_()
                    outside.append(target)
                    return route.abort()

                browser.route("**/*", local_only)
                page = browser.new_page()
                page.set_default_timeout(120_000)
                page.goto(url)
                page.locator("#prompt textarea").fill("a large red circle at the top left")
                page.locator("#generate").click()
                page.wait_for_function(
                    "() => { const i = document.querySelector('#result img');"
                    " return i !== null && i.complete && i.naturalWidth > 0; }"
                )
                width, count = page.evaluate(
                    "() => [document.querySelector('#result img').naturalWidth,"
                    " document.querySelectorAll('#result img').length]"
                )
                status = page.inner_text("#status")
                page.screenshot(path=str(tmp_path / "serve_result.png"), full_page=True)
                assert width > 0 and count >= 4, (width, count)
                assert "the best of 6 candidates" in status and "CLIP scores" in status, status
                assert page.locator("#history img").count() >= 1  # the recent-results gallery

                for bad, message in [("   ", "the prompt is empty"), (None, "seed must be between 0 and")]:
                    if bad is None:  # an absurd number: a negative seed
                        page.locator("#prompt textarea").fill("a small blue square")
                        page.locator("#seed input").fill("-5")
                    else:
                        page.locator("#prompt textarea").fill(bad)
                    page.locator("#generate").click()
                    page.locator("#status", has_text=message).wait_for()
                    text = page.inner_text("#status")
                    assert text.startswith("Error:"), text
                    assert "Traceback" not in page.content()
                page.screenshot(path=str(tmp_path / "serve_error.png"), full_page=True)
            finally:
                browser.close()
    finally:
        _stop(proc)
    assert outside == [], f"the page tried to reach outside the app: {outside}"
    server_log = log.read_text()
    assert "Traceback" not in server_log
    # the server's own HTTP client (gradio's startup checks) only ever spoke to itself: no analytics, no version check
    requests = [line for line in server_log.splitlines() if "HTTP Request:" in line]
    assert requests and all(f"http://127.0.0.1:{port}/" in line for line in requests), requests


def test_knobs_left_at_none_show_the_models_own_defaults():
    """GLIDE / unCLIP pipelines keep guidance and steps at None (= the checkpoint's value): the page shows those."""
    from types import SimpleNamespace

    from zoo.serve import Studio

    class Pipe:
        def __init__(self):
            self.glide = SimpleNamespace(hparams={"guidance_scale": 3.0, "sample_steps": 50})
            self.guidance_scale, self.steps, self.seed = None, None, 0

        def generate(self, captions):  # pragma: no cover - not called
            raise AssertionError

    studio = Studio(Pipe())
    assert studio.defaults["guidance_scale"] == 3.0 and studio.defaults["steps"] == 50
    assert {k.name for k in studio.knobs} >= {"guidance_scale", "steps"}


@pytest.mark.parametrize(
    "n_candidates, n_keep, max_candidates", [(1, 4, 128), (8, 4, 128), (1, 1, 128), (2, 40, 128), (1, 4, 2)]
)
def test_the_page_as_it_opens_is_a_valid_request(n_candidates, n_keep, max_candidates):
    # GLIDE and unCLIP default to 1 candidate while the page opens with keep 4: the first Generate was refused
    # ("keep (4) cannot exceed candidates (1)"); so it was with ui.max_candidates=2 (the candidates slider's top)
    class WithCandidates(FakeGenerator):
        pass

    g = WithCandidates()
    g.n_candidates = n_candidates
    studio = Studio(g, FakeScorer(), ui={"n_keep": n_keep, "max_candidates": max_candidates})
    opened = {k.name: studio.initial(k) for k in studio.knobs}
    keep = studio.initial_keep
    assert keep == min(n_keep, 16, max_candidates) and opened["n_candidates"] == max(n_candidates, keep)
    assert studio.max_keep == min(16, max_candidates)  # the keep slider's top
    out = studio.run("a red circle", studio.start_seed, keep, **opened)
    assert len(out["images"]) == keep


def test_the_unclip_priors_knobs_are_on_the_page():
    """The unCLIP pipeline keeps its prior network in ``prior_model`` (``prior`` is its kind, a string): the page
    looked for hyper-parameters on ``prior``, found none, and showed no prior guidance / prior steps slider."""
    from types import SimpleNamespace

    class Unclip(FakeGenerator):
        def __init__(self):
            super().__init__()
            del self.guidance_scale, self.steps
            self.prior = "diffusion"
            self.prior_model = SimpleNamespace(hparams={"guidance_scale": 1.5, "sample_steps": 64})
            self.decoder = SimpleNamespace(hparams={"decoder_guidance_scale": 3.0, "sample_steps": 25})
            self.prior_guidance_scale = self.prior_steps = self.decoder_guidance_scale = self.decoder_steps = None

        def generate(self, captions):
            self.seen.append((self.prior_guidance_scale, self.prior_steps))
            return torch.zeros(len(captions), 3, 8, 8)

    g = Unclip()
    studio = Studio(g)
    assert studio.defaults == {
        "prior_guidance_scale": 1.5,
        "decoder_guidance_scale": 3.0,
        "prior_steps": 64,
        "decoder_steps": 25,
    }
    studio.run("a red circle", 0, 1, prior_guidance_scale=2.0, prior_steps=3)
    assert g.seen == [(2.0, 3)] and (g.prior_guidance_scale, g.prior_steps) == (None, None)


def test_candidates_are_drawn_and_ranked_by_the_pages_scorer():
    """A generator that does not rerank itself (GLIDE's pipeline without generator.clip_ckpt, DALL·E's without
    one) with the page's clip_ckpt=: the candidates slider was ignored (GlidePipeline.sample draws only n_keep
    without a CLIP; DallePipeline.sample kept its first n_keep unranked) and the page scored only the kept images.
    Now the page draws max(candidates, keep) and keeps its scorer's best. Without any scorer there is no control."""

    class Pipe(FakeGenerator):
        def __init__(self):
            super().__init__()
            self.n_candidates, self.scorer = 1, None

        def sample(self, captions, n_candidates=None, n_keep=1):  # without a CLIP: n_keep images, unranked
            return {"images": self.candidates(captions, n_keep), "scores": None, "n_candidates": n_keep}

        def candidates(self, captions, n):
            return torch.stack([self.generate(captions) for _ in range(n)], 1)

    g = Pipe()
    out = Studio(g, FakeScorer()).run("a red circle", seed=0, n_keep=2, n_candidates=6)
    assert len(g.seen) == 6 and out["n_candidates"] == 6 and out["images"].shape[0] == 2
    torch.manual_seed(0)
    drawn = torch.stack([torch.rand(3, 8, 8) * 2 - 1 for _ in range(6)])
    best = FakeScorer().clip_score(drawn, None).topk(2).values
    assert torch.allclose(out["scores"], best)
    assert "n_candidates" not in {k.name for k in Studio(Pipe()).knobs}  # nobody ranks: no candidates slider


def test_a_clip_guided_glide_page_samples_as_the_pipeline_does(dalle_helpers):
    """A CLIP-guided GLIDE pipeline samples an unset guidance_scale as 1 (the conditional model): the page opened its
    guidance slider at the checkpoint's 3.0 and, as every request sends every slider, stacked classifier-free
    guidance 3 under the CLIP guidance; and it had no control for the CLIP guidance scale itself."""
    from zoo.models.glide.lit import GlideLit
    from zoo.models.noised_clip.lit import NoisedClipLit
    from zoo.pipelines.glide import GlidePipeline

    torch.manual_seed(0)
    glide = GlideLit(preset="tiny")
    glide.text_tokenizer = dalle_helpers.tiny_bpe()
    noised = NoisedClipLit(preset="tiny")
    noised.text_tokenizer = glide.text_tokenizer
    g = GlidePipeline(glide, noised_clip=noised, clip_guidance_scale=2.0, steps=2)
    studio = Studio(g)
    opened = {k.name: studio.initial(k) for k in studio.knobs}
    assert opened["guidance_scale"] == 1.0 and opened["clip_guidance_scale"] == 2.0 and opened["steps"] == 2
    page = studio.run("a red circle", 3, 1, **opened)["images"]
    g.seed = Studio.generator_seed(3)
    assert torch.equal(page, g.candidates(["a red circle"], 1)[0])  # the page's request == the pipeline as set up
    assert (g.guidance_scale, g.clip_guidance_scale) == (None, 2.0)  # restored


def test_the_clip_guidance_slider_reaches_the_scales_clip_guidance_uses(dalle_helpers):
    """CLIP guidance is useful at s = 10-300 on the shapes GLIDE (experiments/glide), but its slider shared the
    classifier-free bound ui.max_guidance = 30: a pipeline set up at s = 100 opened the page at 30 and every request
    sampled s = 30. It has its own bound, ui.max_clip_guidance (1000)."""
    from zoo.models.glide.lit import GlideLit
    from zoo.models.noised_clip.lit import NoisedClipLit
    from zoo.pipelines.glide import GlidePipeline

    torch.manual_seed(0)
    glide = GlideLit(preset="tiny")
    glide.text_tokenizer = dalle_helpers.tiny_bpe()
    noised = NoisedClipLit(preset="tiny")
    noised.text_tokenizer = glide.text_tokenizer
    studio = Studio(GlidePipeline(glide, noised_clip=noised, clip_guidance_scale=100.0, steps=1))
    knob = {k.name: k for k in studio.knobs}
    assert studio.initial(knob["clip_guidance_scale"]) == 100.0 and studio.bounds(knob["clip_guidance_scale"])[1] >= 300
    assert studio.bounds(knob["guidance_scale"]) == (0.0, 30.0)  # the classifier-free bound is unchanged
    studio.run("a red circle", 0, 1, clip_guidance_scale=300.0)  # accepted
    from zoo.errors import ConfigError
    from zoo.serve import check_ui

    with pytest.raises(ConfigError, match="ui.max_clip_guidance"):
        check_ui({"max_clip_guidance": 0})


def test_the_ar_priors_guidance_is_on_the_page():
    """UnclipPipeline samples the AR prior with guidance (1 when unset); the AR prior's checkpoint has no
    guidance_scale hyper-parameter, so the page showed no prior guidance control for it."""
    from types import SimpleNamespace

    g = FakeGenerator()
    del g.guidance_scale, g.steps
    g.prior, g.prior_model, g.prior_guidance_scale, g.prior_steps = "ar", SimpleNamespace(hparams={}), None, None
    studio = Studio(g)
    assert studio.defaults == {"prior_guidance_scale": 1.0}  # prior_steps does not apply to the AR prior


def test_bad_ui_settings_are_refused_before_the_generator_is_built(tmp_path):
    """ui.max_keep=0 failed after the generator was built, with gradio's 'Slider minimum must be less than maximum'
    traceback; server.port=abc with int()'s ValueError. seed=abc was int()'s ValueError too, seed=true / 1.5
    started the page at seed 1 and seed=-1 (outside the seeds the page takes) at seed 0, without a word."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from zoo.errors import ConfigError
    from zoo.serve import serve

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        # a generator checkpoint that does not exist: the ui / port checks must come first
        base = [f"paths.root_dir={tmp_path}", "generator.dalle_ckpt=/nonexistent.ckpt"]
        for override, message in (
            ("ui.max_keep=0", r"ui.max_keep=0 must be a whole number from 1 to 65536 \(fix: ui.max_keep=16\)"),
            ("ui.max_candidates=100000", r"ui.max_candidates=100000 must be a whole number from 1 to 65536"),
            ("ui.tile_px=big", r"ui.tile_px='big'"),
            ("ui.max_guidance=0", r"ui.max_guidance=0"),
            ("ui.max_guidance=inf", r"ui.max_guidance=inf must be a number >= 0.1"),  # was taken
            ("server.port=abc", r"server.port='abc' must be a whole number from 1 to 65535"),
            ("server.port=true", r"server.port=true must be a whole number from 1 to 65535"),
            ("seed=abc", r"seed='abc' must be a whole number from 0 to 2147483647: the page's seeds \(fix: seed=0\)"),
            ("seed=true", r"seed=true must be a whole number from 0 to 2147483647"),
            ("seed=1.5", r"seed=1.5 must be a whole number"),
            ("seed=-1", r"seed=-1 must be a whole number"),
            ("seed=2147483648", r"seed=2147483648 must be a whole number"),
        ):
            cfg = compose("serve", overrides=[*base, override])
            with pytest.raises(ConfigError, match=message):
                serve(cfg, block=False)


def test_a_bad_page_clip_is_refused_before_the_generator_is_built(tmp_path, monkeypatch):
    """clip_ckpt= missing, or a checkpoint of another component, was refused only after the generator was built (a
    minute for unCLIP), and the wrong kind's message did not name the option."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    import zoo.pipelines.base as base
    from zoo.errors import ConfigError
    from zoo.export import checkpoint_dict
    from zoo.models.vqvae.lit import VQVAELit
    from zoo.serve import serve

    vq = tmp_path / "vq.ckpt"
    torch.save(checkpoint_dict(VQVAELit(preset="tiny")), vq)
    monkeypatch.setattr(base, "build_generator", lambda *a, **k: pytest.fail("built the generator first"))
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        for clip, message in ((tmp_path / "none.ckpt", "clip_ckpt: checkpoint not found"), (vq, "clip_ckpt: .*vq")):
            cfg = compose("serve", overrides=[f"paths.root_dir={tmp_path}", f"clip_ckpt={clip}"])
            with pytest.raises(ConfigError, match=message):
                serve(cfg, block=False)


def test_a_missing_gradio_is_named_before_the_generator_is_built(tmp_path, monkeypatch):
    """Without gradio, zoo-serve built the generator (a minute for unCLIP) and then died on a bare
    ModuleNotFoundError in build_app."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from zoo.errors import ConfigError
    from zoo.serve import serve

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose("serve", overrides=[f"paths.root_dir={tmp_path}", "generator.dalle_ckpt=/nonexistent.ckpt"])
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"needs gradio \(fix: pip install -e '.\[serve\]'\)"):
        serve(cfg, block=False)


def test_a_generator_setting_beyond_the_pages_bounds_is_reported(caplog):
    """generator.n_candidates=512 with ui.max_candidates=128: the page opened its slider at 128 and every request
    drew 128, without a word. The server's log now says so at start, naming the ui bound to raise."""
    import logging

    class WithCandidates(FakeGenerator):
        n_candidates = 512

    with caplog.at_level(logging.WARNING, logger="zoo.serve"):
        studio = Studio(WithCandidates(), FakeScorer())
    assert studio.initial(next(k for k in studio.knobs if k.name == "n_candidates")) == 128
    assert "n_candidates=512 is outside the page's 1.0..128.0" in caplog.text and "ui.max_candidates" in caplog.text


def test_a_prompt_upsampler_keeps_no_record_of_earlier_requests():
    """PromptUpsampled.all_prompts records every call's rewrites for zoo-sample's samples.json; a long-running
    zoo-serve kept every request's (memory growing with each prompt). Each request now starts a fresh record."""
    from zoo.pipelines.base import PromptUpsampled

    class Upsampler:
        def upsample(self, prompts, seed=0):
            return [f"{p}, on a white background" for p in prompts]

    g = PromptUpsampled(FakeGenerator(), Upsampler())
    studio = Studio(g)
    for i in range(5):
        studio.run(f"prompt {i}", seed=i, n_keep=2)
    assert g.all_prompts == {"prompt 4": ["prompt 4, on a white background"] * 2}  # the last request's candidates
