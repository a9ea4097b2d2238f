"""``zoo-serve``: a local web page (Gradio) to try prompts on any generator of ``conf/generator/``.

    zoo-serve generator=dalle generator.dalle_ckpt=<dalle ckpt> generator.clip_ckpt=<clip ckpt>    # 127.0.0.1:7860
    zoo-serve generator=dalle generator.dalle_ckpt=<dalle ckpt> server.port=8000 ui.n_keep=8

The generator is built exactly as ``zoo-sample`` builds it (``zoo.pipelines.base.build_generator``). The page has a
prompt box, the seed, "keep" (images shown, best first) and one control per sampling knob the generator has as an
attribute, named by the convention of ``zoo.pipelines.base`` (``n_candidates``, ``guidance_scale``, ``steps``,
``temperature`` and their ``prior_`` / ``decoder_`` / ``upsampler_`` stage forms; ``clip_guidance_scale`` of a
CLIP-guided GLIDE); a generator without a knob simply has no control for it. Results come back as a grid with each
image's CLIP score (the generator's own reranker, e.g. the DALL·E pipeline's ``generator.clip_ckpt``, or
``clip_ckpt=`` here for generators that do not rerank: the page then draws max(candidates, keep) itself and keeps
its scorer's best; with no CLIP at all there is no candidates control), and a gallery keeps the session's recent
results.

A request the page cannot honour -- an empty or very long prompt, numbers outside the page's bounds (``ui.max_*``),
a generator that raises -- is answered with a one-line message in the status box; the traceback goes to the
server's log only. Knobs are applied for one request (set on the generator, restored afterwards) under a lock, so
requests never see each other's settings; each request is a pure function of (prompt, seed, knobs). The page's seed s
draws its candidates under the generator seeds s * SEED_STRIDE + i (the pipelines draw candidate i under seed + i):
with the generator seed s itself, seeds s and s + 1 shared all candidates but one, so the next seed showed the same
images (4 of 4 on the demo DALL·E, 32 candidates).

The server listens on 127.0.0.1 only, makes no share link and sends no analytics (``GRADIO_ANALYTICS_ENABLED`` is
forced off, system fonts instead of web fonts), so it starts and runs without internet. The logic (``Studio``) is
plain Python and testable without a browser; ``build_app`` is the Gradio layer over it.
"""

from __future__ import annotations

import html
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from zoo.config import entry_point
from zoo.errors import ConfigError, check_number, check_whole

log = logging.getLogger("zoo.serve")

HOST = "127.0.0.1"  # loopback only: the page runs models on this machine for whoever can reach it
SEED_MAX = 2**31 - 1
# The page's seed s -> the generator's seed s * SEED_STRIDE, whose candidates are drawn under s * SEED_STRIDE + i: the
# blocks of neighbouring page seeds never overlap (ui.max_candidates and ui.max_keep are at most SEED_STRIDE).
SEED_STRIDE = 2**16


class RequestError(ValueError):
    """A request the page refuses, with the message the user sees."""


@dataclass(frozen=True)
class Knob:
    """A sampling knob shown as a slider when the generator has the attribute ``name``."""

    name: str
    label: str
    kind: type  # int or float
    lo: float
    hi: float | str  # a number, or the ui.* key holding it
    step: float
    info: str


KNOBS = (
    Knob("n_candidates", "candidates", int, 1, "max_candidates", 1, "samples drawn per prompt; the best are kept"),
    Knob("guidance_scale", "guidance scale", float, 0.0, "max_guidance", 0.1, "classifier-free guidance (1 = off)"),
    Knob("prior_guidance_scale", "prior guidance", float, 0.0, "max_guidance", 0.1, "prior's guidance (1 = off)"),
    Knob("decoder_guidance_scale", "decoder guidance", float, 0.0, "max_guidance", 0.1, "decoder's guidance (1 = off)"),
    # its own bound: s multiplies a gradient of unit-norm embeddings' dot product, useful at 10-300 on the shapes
    # GLIDE (experiments/glide), above the classifier-free scales' 30
    Knob(
        "clip_guidance_scale", "CLIP guidance", float, 0.0, "max_clip_guidance", 0.1, "noised-CLIP guidance (0 = off)"
    ),
    Knob("steps", "steps", int, 1, "max_steps", 1, "sampling steps"),
    Knob("prior_steps", "prior steps", int, 1, "max_steps", 1, "prior sampling steps"),
    Knob("decoder_steps", "decoder steps", int, 1, "max_steps", 1, "decoder sampling steps"),
    Knob("upsampler_steps", "upsampler steps", int, 1, "max_steps", 1, "upsampler sampling steps"),
    Knob("temperature", "temperature", float, 0.05, 5.0, 0.05, "sampling temperature"),
)

UI_DEFAULTS = {
    "title": "dalle-zoo",
    "n_keep": 4,
    "max_keep": 16,
    "max_candidates": 128,
    "max_steps": 1000,
    "max_guidance": 30.0,
    "max_clip_guidance": 1000.0,
    "max_prompt_chars": 300,
    "history": 12,
    "tile_px": 192,
}


# ui.* numbers: (kind, smallest value, largest value or None)
_UI_NUMBERS = {
    "n_keep": (int, 1, None),
    "max_keep": (int, 1, SEED_STRIDE),
    "max_candidates": (int, 1, SEED_STRIDE),
    "max_steps": (int, 1, None),
    "max_guidance": (float, 0.1, None),
    "max_clip_guidance": (float, 0.1, None),
    "max_prompt_chars": (int, 1, None),
    "history": (int, 0, None),
    "tile_px": (int, 1, None),
}


def check_ui(ui: dict[str, Any]) -> dict[str, Any]:
    """``ui.*`` as the page needs them, else a ConfigError naming the key before anything is built (ui.max_keep=0
    failed after the generator was built with gradio's 'Slider minimum must be less than maximum' traceback,
    server.port=abc with int()'s; ui.max_guidance=nan / inf passed, a slider with no upper end)."""
    for key, (kind, lo, hi) in _UI_NUMBERS.items():
        if key in ui and kind is int:
            check_whole(f"ui.{key}", ui[key], lo, UI_DEFAULTS[key], most=hi)
        elif key in ui:
            check_number(f"ui.{key}", ui[key], lo, hi, fix=UI_DEFAULTS[key])
    return ui


def _number(value: Any, name: str, kind: type, lo: float, hi: float) -> int | float:
    """``value`` as ``kind`` within [lo, hi], or a ``RequestError`` naming the bounds."""
    span = f"{int(lo)} and {int(hi)}" if kind is int else f"{lo:g} and {hi:g}"
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise RequestError(f"{name} must be a number between {span}, got {value!r}") from None
    if not math.isfinite(x) or x < lo or x > hi:
        raise RequestError(f"{name} must be between {span}, got {value!r}")
    if kind is int:
        if x != int(x):
            raise RequestError(f"{name} must be a whole number, got {value!r}")
        return int(x)
    return x


def _number_or_none(value: Any) -> int | float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def call_parameters(generator) -> dict[str, Any]:
    """Keyword parameters of ``generator.candidates(captions, n, ...)`` (plus ``generate``'s when ``candidates``
    forwards ``**kwargs`` to it) -> their defaults; empty for a generator that reranks itself (``sample``) or has
    no ``candidates``: its knobs can only be attributes."""
    import inspect

    if callable(getattr(generator, "sample", None)) or not callable(getattr(generator, "candidates", None)):
        return {}
    out: dict[str, Any] = {}
    for name in ("candidates", "generate"):
        try:
            params = inspect.signature(getattr(generator, name)).parameters.values()
        except (AttributeError, TypeError, ValueError):
            break
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        out = {**{p.name: p.default for p in params if p.kind in named}, **out}
        if not any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params):
            break
    return out


# Where a pipeline keeps its models, and the prefix of the knobs that belong to each (GLIDE's single stage has none).
# The unCLIP pipeline keeps its prior network in ``prior_model`` (``prior`` is the kind: "diffusion", "ar", ...).
_STAGE_MODELS = (("glide", ""), ("model", ""), ("prior_model", "prior_"), ("prior", "prior_"), ("decoder", "decoder_"))


def model_default(generator, name: str) -> int | float | None:
    """The value a pipeline uses for a knob it leaves at None: its model's hyper-parameter (``guidance_scale`` or
    ``sample_steps`` of GLIDE; ``decoder_steps`` -> the decoder's ``sample_steps``), so the page can show the slider
    at the value sampling will actually use. A CLIP-guided GLIDE pipeline (``clip_guided``) samples an unset
    ``guidance_scale`` as 1, the conditional model (``GlidePipeline._clip_knobs``), not at the checkpoint's; the
    unCLIP pipeline samples the AR prior's unset ``prior_guidance_scale`` as 1."""
    if name == "guidance_scale" and getattr(generator, "clip_guided", False) is True:
        return 1.0
    if name == "prior_guidance_scale" and getattr(generator, "prior", None) == "ar":
        return 1.0  # UnclipPipeline samples the AR prior at 1 when unset (its checkpoint has no guidance_scale)
    for attr, prefix in _STAGE_MODELS:
        hp = getattr(getattr(generator, attr, None), "hparams", None)
        if hp is None or not hasattr(hp, "get") or not name.startswith(prefix):
            continue
        base = name[len(prefix) :]
        for key in (name, base, f"sample_{base}"):
            value = _number_or_none(hp.get(key))
            if value is not None:
                return value
    return None


def reranks_itself(generator) -> bool:
    """True for a pipeline whose ``sample`` reranks its candidates with its own CLIP (DALL·E / GLIDE with a
    ``scorer``, unCLIP with its ``clip``)."""
    return callable(getattr(generator, "sample", None)) and any(
        getattr(generator, attr, None) is not None for attr in ("scorer", "clip")
    )


class Studio:
    """The page's logic without the page: validate a request, apply its knobs, generate, score.

    ``run(prompt, seed, n_keep, **knobs)`` -> dict(images (k, 3, H, W) in [-1, 1] best first, scores (k,) CLIP
    scores or None, seed, generator_seed (``generator_seed(seed)``), n_candidates, seconds); a ``RequestError`` with
    the user's message for a bad request or a failing generator.

    Knobs are found two ways: attributes (the convention of ``zoo.pipelines.base``: set for the request, restored
    after), or keyword parameters of the generator's ``candidates`` (e.g. ``GlideLit.candidates(captions, n, seed=,
    guidance_scale=, steps=)``: passed in the call; the start value is the parameter's default, else the model's
    hyper-parameter ``<name>`` or ``sample_<name>``). The generator seed (``generator_seed``) goes to a ``seed``
    attribute, else to a ``seed`` parameter of ``candidates``, and always to torch's global RNG."""

    def __init__(self, generator, scorer=None, ui: Optional[dict[str, Any]] = None):
        self.generator, self.scorer = generator, scorer
        self.ui = {**UI_DEFAULTS, **(ui or {})}
        params = call_parameters(generator)
        self.defaults: dict[str, int | float] = {}
        self.by_call: set[str] = set()
        hparams = getattr(generator, "hparams", None) or {}
        for knob in KNOBS:
            value = _number_or_none(getattr(generator, knob.name, None))
            if value is None and hasattr(generator, knob.name):  # None = "the checkpoint's own default"
                value = model_default(generator, knob.name)
            if value is None and knob.name in params:
                value = _number_or_none(params[knob.name])
                for key in (knob.name, f"sample_{knob.name}"):
                    if value is None and hasattr(hparams, "get"):
                        value = _number_or_none(hparams.get(key))
                if value is not None:
                    self.by_call.add(knob.name)
            if value is not None:
                self.defaults[knob.name] = value
        # Who picks the best candidates: the generator's own CLIP (``sample``), else the page's scorer, which then
        # draws max(candidates, keep) itself and keeps the best; with neither, extra candidates would only be
        # dropped unseen, so the page has no candidates control.
        own = reranks_itself(generator)
        self.page_reranks = scorer is not None and not own
        if not (self.page_reranks or own):
            self.defaults.pop("n_candidates", None)
        self.knobs = [k for k in KNOBS if k.name in self.defaults]
        for knob in self.knobs:  # the page cannot show (or send) a value outside its slider: say so at start
            lo, hi = self.bounds(knob)
            value = self.defaults[knob.name]
            if not lo <= value <= hi:
                bound = "ui." + knob.hi if isinstance(knob.hi, str) and value > hi else "its bound"
                log.warning(
                    "%s=%s is outside the page's %s..%s: the page starts at %s and every request sends that "
                    "(fix: raise %s)",
                    knob.name,
                    value,
                    lo,
                    hi,
                    knob.kind(min(max(value, lo), hi)),
                    bound,
                )
        self.seed_by_call = not hasattr(generator, "seed") and "seed" in params
        self._lock = threading.Lock()

    @property
    def start_seed(self) -> int:
        seed = _number_or_none(getattr(self.generator, "seed", None))
        return int(seed) if seed is not None and 0 <= seed <= SEED_MAX else 0

    def bounds(self, knob: Knob) -> tuple[float, float]:
        hi = self.ui[knob.hi] if isinstance(knob.hi, str) else knob.hi
        return float(knob.lo), float(hi)

    @staticmethod
    def generator_seed(seed: int) -> int:
        """The generator's seed for the page's ``seed``: its candidates (seed + i in the pipelines) then share none
        with the next page seed's."""
        return int(seed) * SEED_STRIDE

    @property
    def max_keep(self) -> int:
        """The largest "keep": ``ui.max_keep``, and with a candidates control at most ``ui.max_candidates`` (keep
        cannot exceed candidates: with ui.max_candidates=2 and the default ui.n_keep=4 the page opened at keep 4,
        candidates 2, and its first Generate was refused)."""
        limit = int(self.ui["max_keep"])
        if "n_candidates" in self.defaults:
            limit = min(limit, int(self.ui["max_candidates"]))
        return limit

    @property
    def initial_keep(self) -> int:
        """The page's starting "keep": ``ui.n_keep`` within [1, ``max_keep``]."""
        return int(min(max(int(self.ui["n_keep"]), 1), self.max_keep))

    def initial(self, knob: Knob) -> int | float:
        lo, hi = self.bounds(knob)
        value = self.defaults[knob.name]
        if knob.name == "n_candidates":
            # the page opens with "keep" images: at least that many candidates, or the first click on Generate with
            # the page as it opened is refused (GLIDE and unCLIP default to 1 candidate, the page to keep 4)
            value = max(value, self.initial_keep)
        return knob.kind(min(max(value, lo), hi))

    def check(self, prompt: Any, seed: Any, n_keep: Any, knobs: dict[str, Any]) -> tuple[str, int, int, dict]:
        if not isinstance(prompt, str) or not prompt.strip():
            raise RequestError("the prompt is empty: type what the image should show")
        prompt = prompt.strip()
        if len(prompt) > int(self.ui["max_prompt_chars"]):
            raise RequestError(
                f"the prompt is {len(prompt)} characters long; the limit is {self.ui['max_prompt_chars']}"
            )
        seed = _number(seed, "seed", int, 0, SEED_MAX)
        n_keep = _number(n_keep, "keep", int, 1, self.max_keep)
        known = {k.name: k for k in self.knobs}
        unknown = sorted(set(knobs) - set(known))
        if unknown:
            raise RequestError(f"this generator has no knob {unknown[0]} (it has: {', '.join(known) or 'none'})")
        values = {
            name: _number(v, known[name].label, known[name].kind, *self.bounds(known[name]))
            for name, v in knobs.items()
        }
        n = values.get("n_candidates")
        if n is not None and n_keep > n:
            raise RequestError(f"keep ({n_keep}) cannot exceed candidates ({n}): raise candidates or lower keep")
        return prompt, seed, n_keep, values

    def _generate(self, prompt: str, seed: int, n_keep: int, values: dict[str, Any]) -> dict[str, Any]:
        from zoo.pipelines.base import as_candidate_generator, keep_best

        g = self.generator
        call = {name: value for name, value in values.items() if name in self.by_call}
        if self.seed_by_call:
            call["seed"] = seed
        if call:
            return {"images": g.candidates([prompt], n_keep, **call), "scores": None}
        if self.page_reranks:  # the page's scorer ranks every candidate (run keeps the n_keep best)
            n = values.get("n_candidates", _number_or_none(getattr(g, "n_candidates", None)) or 1)
            n = max(int(n), n_keep)
            return {
                "images": as_candidate_generator(g, seed).candidates([prompt], n),
                "scores": None,
                "n_candidates": n,
            }
        return keep_best(g, [prompt], n_keep, seed=seed)

    def run(self, prompt: Any, seed: Any = 0, n_keep: Any = 1, **knobs: Any) -> dict[str, Any]:
        import torch

        from zoo.pipelines.base import check_images

        prompt, seed, n_keep, values = self.check(prompt, seed, n_keep, knobs)
        g = self.generator
        gseed = self.generator_seed(seed)
        attrs = {name: value for name, value in values.items() if name not in self.by_call}
        if hasattr(g, "seed"):
            attrs["seed"] = gseed
        with self._lock:
            saved = {name: getattr(g, name) for name in attrs}
            start = time.perf_counter()
            forget = getattr(g, "forget_prompts", None)  # a prompt upsampler's record of every call's rewrites
            if callable(forget):  # (zoo-sample writes it once; a server would keep every request's)
                forget()
            try:
                for name, value in attrs.items():
                    setattr(g, name, value)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(gseed)
                    out = self._generate(prompt, gseed, n_keep, values)
                images = check_images(out["images"][0].detach().float().cpu(), what="generator output")
                scores = out.get("scores")
                scores = None if scores is None else scores[0].detach().float().cpu()
                if scores is None and self.scorer is not None:
                    scores = self.scorer.clip_score(images, [prompt] * len(images)).float().cpu()
                    order = torch.argsort(scores, descending=True)[:n_keep]
                    images, scores = images[order], scores[order]
            except RequestError:
                raise
            except Exception as e:  # the generator's or the scorer's: one line to the page, the traceback to the log
                log.exception("generation failed for prompt %r", prompt)
                msg = " ".join(str(e).split()) or "no message"
                raise RequestError(f"generation failed: {type(e).__name__}: {msg[:300]}") from e
            finally:
                for name, value in saved.items():
                    setattr(g, name, value)
        n = out.get("n_candidates", values.get("n_candidates"))
        return {
            "images": images,
            "scores": scores,
            "seed": seed,
            "generator_seed": gseed,
            "prompt": prompt,
            "n_candidates": None if n is None else int(n),
            "seconds": time.perf_counter() - start,
        }


def enlarge(images, tile_px: int):
    """(k, 3, H, W) in [-1, 1] -> uint8 (k, 3, H', W'), small images enlarged (nearest) to about ``tile_px`` pixels."""
    import torch.nn.functional as F

    x = images.float().clamp(-1, 1).add(1).div(2)
    scale = max(1, int(tile_px) // max(x.shape[-2:]))
    if scale > 1:
        x = F.interpolate(x, scale_factor=scale, mode="nearest")
    return x.mul(255).add(0.5).clamp(0, 255).byte()


def tiles(images, tile_px: int) -> list:
    """(k, 3, H, W) in [-1, 1] -> k PIL images, enlarged (``enlarge``)."""
    from PIL import Image

    return [Image.fromarray(a) for a in enlarge(images, tile_px).permute(0, 2, 3, 1).numpy()]


def grid(images, tile_px: int):
    """One square-ish PIL grid of (k, 3, H, W) images in [-1, 1] (grey padding), for the recent-results gallery."""
    from PIL import Image
    from torchvision.utils import make_grid

    g = make_grid(enlarge(images, tile_px), nrow=math.ceil(math.sqrt(len(images))), padding=4, pad_value=128)
    return Image.fromarray(g.permute(1, 2, 0).numpy())


def status_text(result: dict[str, Any]) -> str:
    k, scores = len(result["images"]), result["scores"]
    n = result["n_candidates"]
    head = f"{k} image{'s' if k > 1 else ''}" + (f", the best of {n} candidates" if n and n > k else "")
    line = f"**{head}** for “{html.escape(result['prompt'])}” · seed {result['seed']} · {result['seconds']:.1f} s"
    if scores is not None:
        line += "  \nCLIP scores, 100·max(cos, 0): " + ", ".join(f"{float(s):.1f}" for s in scores)
    return line


CSS = "#result img, #history img { image-rendering: pixelated; } #status .error { color: #b91c1c; }"


def build_app(studio: Studio):
    """The Gradio page over ``studio``: returns (blocks, launch kwargs: theme/css)."""
    import gradio as gr

    ui = studio.ui
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"],  # system fonts: no web fonts
        font_mono=["ui-monospace", "monospace"],
    )
    # delete_cache: every hour, the page's image files older than a day go (a long-running server stays small)
    with gr.Blocks(title=str(ui["title"]), analytics_enabled=False, delete_cache=(3600, 86400)) as app:
        gr.Markdown(f"## {ui['title']}: {type(studio.generator).__name__}")
        with gr.Row():
            with gr.Column(scale=2):
                prompt = gr.Textbox(
                    label="prompt",
                    placeholder="a large red circle at the top left",
                    lines=2,
                    max_lines=4,
                    elem_id="prompt",
                )
                go = gr.Button("Generate", variant="primary", elem_id="generate")
                status = gr.Markdown("Type a prompt and press Generate.", elem_id="status")
                result = gr.Gallery(
                    label="result (best first)",
                    columns=4,
                    format="png",
                    object_fit="contain",
                    elem_id="result",
                    interactive=False,
                )
            with gr.Column(scale=1):
                seed = gr.Number(
                    label="seed",
                    value=studio.start_seed,
                    precision=0,
                    elem_id="seed",
                )
                keep = gr.Slider(
                    1,
                    studio.max_keep,
                    value=studio.initial_keep,
                    step=1,
                    label="keep",
                    info="images shown, best first",
                    elem_id="keep",
                )
                sliders = []
                for knob in studio.knobs:
                    lo, hi = studio.bounds(knob)
                    sliders.append(
                        gr.Slider(
                            lo,
                            hi,
                            value=studio.initial(knob),
                            step=knob.step,
                            label=knob.label,
                            info=knob.info,
                            elem_id=f"knob-{knob.name}",
                        )
                    )
        history_state = gr.State([])
        history = gr.Gallery(
            label="recent results (this session)",
            columns=6,
            fit_columns=False,
            height=280,
            format="png",
            object_fit="contain",
            elem_id="history",
            interactive=False,
        )

        def on_generate(text, seed_value, keep_value, *rest):
            *knob_values, past = rest
            knobs = {k.name: v for k, v in zip(studio.knobs, knob_values, strict=True)}
            try:
                out = studio.run(text, seed_value, keep_value, **knobs)
            except RequestError as e:
                return gr.update(), gr.update(), past, f"<span class='error'>**Error:** {html.escape(str(e))}</span>"
            scores = out["scores"]
            labels = [
                f"#{i + 1}" + ("" if scores is None else f" · CLIP {float(scores[i]):.1f}")
                for i in range(len(out["images"]))
            ]
            shown = list(zip(tiles(out["images"], ui["tile_px"]), labels, strict=True))
            entry = (grid(out["images"], max(32, int(ui["tile_px"]) // 2)), f"{out['prompt']} · seed {out['seed']}")
            past = ([entry] + list(past or []))[: int(ui["history"])]
            return shown, past, past, status_text(out)

        inputs = [prompt, seed, keep, *sliders, history_state]
        outputs = [result, history, history_state, status]
        go.click(on_generate, inputs, outputs, concurrency_limit=1)
        prompt.submit(on_generate, inputs, outputs, concurrency_limit=1)
    return app, {"theme": theme, "css": CSS}


def build_scorer(clip_ckpt: Optional[str]):
    if not clip_ckpt:
        return None
    path = Path(str(clip_ckpt)).expanduser()
    if not path.is_file():
        raise ConfigError(f"clip_ckpt: checkpoint not found: {path} (fix: clip_ckpt=/path/to/clip/last.ckpt, or null)")
    from zoo.models.clip.scorer import ClipScorer

    try:
        return ClipScorer.from_lightning_checkpoint(str(path))
    except ConfigError as e:  # e.g. "<file> is not a CLIP checkpoint": say which option gave it
        raise ConfigError(f"clip_ckpt: {e}") from e


def serve(cfg: DictConfig, block: bool = True):
    """Build the generator and the page, and serve it on 127.0.0.1:``server.port``. Returns the Gradio app
    (already closed when ``block``)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no usage reports, no version check
    import torch

    from zoo.pipelines.base import build_generator

    port = check_whole("server.port", cfg.server.port, 1, 7860, most=65535)
    # seed=abc was int()'s ValueError traceback, seed=true / 1.5 started the page at seed 1 and seed=-1 (outside the
    # page's seeds, which a request is refused) at seed 0, all without a word
    check_whole("seed", cfg.get("seed"), 0, 0, most=SEED_MAX, why="the page's seeds")
    ui = check_ui(dict(cfg.get("ui") or {}))  # before the generator is built (which may take a while)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ConfigError("zoo-serve needs gradio (fix: pip install -e '.[serve]')") from None
    # the page's CLIP first: a missing or wrong clip_ckpt= was refused only after the generator was built (a minute
    # for unCLIP)
    scorer = build_scorer(cfg.get("clip_ckpt"))
    torch.manual_seed(int(cfg.seed))
    generator = build_generator(cfg.get("generator"), "generator")
    studio = Studio(generator, scorer, ui)
    app, style = build_app(studio)
    log.info("%s: knobs %s", type(generator).__name__, [k.name for k in studio.knobs] or "none")
    try:
        app.queue(max_size=16).launch(
            server_name=HOST,
            server_port=port,
            share=False,
            inbrowser=False,
            show_error=True,
            prevent_thread_lock=True,
            quiet=False,
            **style,
        )
    except OSError as e:
        raise ConfigError(f"cannot listen on {HOST}:{port}: {e} (fix: server.port=<a free port>)") from e
    log.info("serving on http://%s:%d (Ctrl+C to stop)", HOST, port)
    if block:
        try:
            app.block_thread()
        finally:
            app.close()
    return app


main = entry_point(serve, "serve")


if __name__ == "__main__":
    main()
