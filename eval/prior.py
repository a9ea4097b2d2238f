"""unCLIP prior report: how close do sampled CLIP image embeddings come to the true ones, on held-out captions?

    python -m eval.prior features=<val zoo-embed file> diffusion_ckpt=<prior last.ckpt> ar_ckpt=<ar last.ckpt>
    python -m eval.prior features=... diffusion_ckpt=... sweep.diffusion_guidance=[1,2,4] sweep.ar_guidance=[1,2]

For every caption of a ``zoo-embed`` file (of a ``captions=all`` file: each image's first caption, the one the val /
test DataModules serve) (``clip_image_emb``, ``clip_text_emb``, ``clip_text_tokens``, and the
per-token ``clip_text_encodings`` a prior trained on them needs), each method produces one L2-normalised CLIP image
embedding z, compared with the L2-normalised true image embedding y of the same caption:

* ``text baseline``: z = the CLIP text embedding, used as if it were an image embedding (unCLIP's ablation; the
  modality gap keeps it away from the image embeddings -- a prior exists to close that gap);
* ``diffusion prior``: ``DiffusionPriorLit.sample`` (best of ``n_candidates``) with DDIM on ``diffusion.steps`` (64)
  steps, and, as the check of the respaced sampler, DDPM ancestral on all ``diffusion.ddpm_steps`` (1000) steps;
* ``AR prior``: ``ARPriorLit.sample`` (dot-product token from the top half, PCA codes decoded);
* the optional ``sweep`` rows: the same priors at other guidance scales.

Metrics (N captions):

* ``cos`` = mean_i z_i · y_i;
* ``R@k``: text->image retrieval of the true image among the N images of the file by z (score z_i · y_j); the rank
  of the true image is the number of images scoring strictly higher (ties go to the true image);
* ``FD``: Fréchet distance between Gaussians fitted to {z_i} and {y_i} (``eval.metrics.frechet_distance``, the
  same formula as FID, on the embeddings);
* with ``reference_features=<train file>``: the FD between the first N training image embeddings and {y_i}, the
  floor of the FD at this N (two samples of real image embeddings).

Writes ``results.json``, ``results.md`` and ``prior.png`` (bars of cos, R@1, R@5 and FD per method) into
``out`` (default: the Hydra run directory ``logs/eval_prior/runs/<time>``). Config: ``conf/eval/prior.yaml``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from zoo.config import report_user_errors
from zoo.errors import ConfigError, check_whole, is_whole
from zoo.nn.sampling import check_sampling

log = logging.getLogger("zoo.eval.prior")

# a sampler: (features of one batch of captions, torch.Generator) -> (B, D) L2-normalised embeddings
Sampler = Callable[[dict[str, torch.Tensor], torch.Generator], torch.Tensor]


# ------------------------------------------------------------------------------------------------ metrics
def cosine_to_truth(z: torch.Tensor, image_emb: torch.Tensor) -> float:
    """mean_i cos(z_i, y_i) of (N, D) sampled and true embeddings."""
    return float(F.cosine_similarity(z.double(), image_emb.double(), dim=-1).mean())


def retrieval_ranks(z: torch.Tensor, image_emb: torch.Tensor) -> torch.Tensor:
    """(N,) 0-based rank of the true image i among the N images when retrieved by z_i (dot product of normalised
    embeddings): the number of images scoring strictly higher than the true one."""
    zn, yn = F.normalize(z.double(), dim=-1), F.normalize(image_emb.double(), dim=-1)
    sim = zn @ yn.T  # (N, N): caption i vs image j
    return (sim > sim.diagonal().unsqueeze(1)).sum(1)


def recall_at(ranks: torch.Tensor, k: int) -> float:
    return float((ranks < k).double().mean())


def embedding_metrics(z: torch.Tensor, image_emb: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """``cos``, ``r@k`` for k in ``ks`` and ``fd`` of sampled embeddings z (N, D) against the true ones (N, D)."""
    from eval.metrics import frechet_distance

    if z.shape != image_emb.shape:
        raise ValueError(f"sampled {tuple(z.shape)} vs true {tuple(image_emb.shape)} embeddings")
    zn, yn = F.normalize(z.float(), dim=-1), F.normalize(image_emb.float(), dim=-1)
    ranks = retrieval_ranks(zn, yn)
    out = {"cos": cosine_to_truth(zn, yn)}
    out.update({f"r@{k}": recall_at(ranks, k) for k in ks})
    out["fd"] = frechet_distance(zn, yn)
    return out


# ------------------------------------------------------------------------------------------------ data and models
def load_features(
    path: str, n: Optional[int] = None, meta: Optional[dict] = None, images_only: bool = False
) -> dict[str, torch.Tensor]:
    """The first ``n`` rows (all when None) of a zoo-embed file (its ``meta``, the CLIP and split, copied into
    ``meta`` when a dict is given); ``images_only``: ``clip_image_emb`` alone (the FD floor's reference).

    A ``captions=all`` file (COCO train) is paired at each image's first caption, copying those rows of the first
    ``n`` images only: one row per image of every caption key was copied, and kept whole behind the ``n`` rows read
    (all of it for the image-only reference)."""
    from zoo.data.datamodule import CAPTION_COUNTS, TEXT_KEYS, caption_starts
    from zoo.embed import load_embeddings

    feats = load_embeddings(path, meta, all_captions=True)
    counts = feats.pop(CAPTION_COUNTS, None)
    need = ("clip_image_emb",) if images_only else ("clip_image_emb", "clip_text_emb")
    missing = [k for k in need if k not in feats]
    if missing:
        raise ConfigError(f"{path} lacks {missing}: pass a file written by zoo-embed")
    total = len(feats["clip_image_emb"])
    n = total if n is None else int(n)
    if not 2 <= n <= total:
        what = "captions" if counts is None else "images (one caption each: the first)"
        raise ConfigError(f"n={n}: {path} holds {total} {what} (fix: n=<2..{total}> or n=null for all)")
    if images_only:
        return {"clip_image_emb": feats["clip_image_emb"][:n]}
    rows = slice(None, n) if counts is None else caption_starts(counts)[:n]  # (the first caption of image i)
    return {k: (v[rows] if k in TEXT_KEYS else v[:n]) for k, v in feats.items()}


def check_reference(
    ref: torch.Tensor, truth: torch.Tensor, ref_meta: dict, meta: dict, ref_path: str, path: str
) -> None:
    """The FD floor compares the true embeddings with OTHER real ones: a ConfigError when ``reference_features`` is
    the same split as ``features`` (zoo-embed's meta) or holds the same embeddings (the same file, or a copy: a
    floor of exactly 0). A few equal rows are legitimate: the shapes world renders some train and val scenes
    pixel for pixel alike (about 1.5% of val scenes have a train twin among 2,000)."""
    fix = "(fix: reference_features=<the zoo-embed file of the train split>, or leave it out)"
    a, b = ref_meta.get("clip_fingerprint"), meta.get("clip_fingerprint")
    if a and b and a != b:
        raise ConfigError(
            f"reference_features={ref_path} was embedded by another CLIP (fingerprint {a}) than features={path} "
            f"(fingerprint {b}): their FD is no floor {fix}"
        )
    if ref_meta.get("split") is not None and ref_meta.get("split") == meta.get("split"):
        raise ConfigError(
            f"reference_features={ref_path} is the {ref_meta['split']} split, like features={path}: the FD floor needs "
            f"other real images {fix}"
        )
    if ref.shape == truth.shape and torch.equal(F.normalize(ref.float(), dim=-1), truth):
        raise ConfigError(
            f"reference_features={ref_path} holds the same {len(truth)} image embeddings as features={path}: the FD "
            f"floor needs other real images {fix}"
        )


def _batches(feats: dict[str, torch.Tensor], batch_size: int):
    n = len(feats["clip_image_emb"])
    for start in range(0, n, batch_size):
        yield start, {k: v[start : start + batch_size] for k, v in feats.items()}


def run_sampler(
    name: str, sampler: Sampler, feats: dict[str, torch.Tensor], batch_size: int, seed: int, progress: bool = True
) -> tuple[torch.Tensor, float]:
    """(N, D) embeddings from ``sampler`` over the captions in batches (batch i under ``torch.Generator`` seeded
    ``seed + i``, so a result does not depend on the other methods run before it) and the wall seconds taken."""
    from zoo.progress import track

    n = len(feats["clip_image_emb"])
    out = []
    t0 = time.perf_counter()
    with track(total=n, desc=f"prior report: {name}", unit="caption", disable=not progress) as bar:
        for i, (_, batch) in enumerate(_batches(feats, batch_size)):
            z = sampler(batch, torch.Generator().manual_seed(seed + i))
            out.append(F.normalize(z.detach().float().cpu(), dim=-1))
            bar.update(len(batch["clip_image_emb"]))
    return torch.cat(out), time.perf_counter() - t0


def text_baseline(batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
    """The CLIP text embedding used as if it were an image embedding."""
    return F.normalize(batch["clip_text_emb"].float(), dim=-1)


def diffusion_sampler(
    lit,
    steps: int,
    sampler: str = "ddim",
    guidance_scale: Optional[float] = None,
    n_candidates: Optional[int] = None,
    eta: Optional[float] = None,
) -> Sampler:
    def run(batch, generator):
        inputs = lit._sample_inputs(batch)
        return lit.sample(
            **inputs,
            steps=steps,
            guidance_scale=guidance_scale,
            n_candidates=n_candidates,
            eta=eta,
            generator=generator,
            sampler=sampler,
        )

    return run


def ar_sampler(
    lit,
    guidance_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    dot_quantile: Optional[float] = None,
) -> Sampler:
    def run(batch, generator):
        if "clip_text_tokens" not in batch:
            raise ConfigError(
                "the AR prior needs clip_text_tokens in the features file (every zoo-embed file has "
                "them: re-run zoo-embed)"
            )
        return lit.sample(
            batch["clip_text_emb"],
            batch["clip_text_tokens"],
            guidance_scale=guidance_scale,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            dot_quantile=dot_quantile,
            generator=generator,
        )

    return run


def load_prior(path: str, kind: str):
    """A trained prior from a zoo-train checkpoint (``kind``: ``diffusion_prior`` or ``ar_prior``), in eval mode."""
    from zoo.checkpoint import load_module

    if not Path(str(path)).expanduser().is_file():
        train = {"diffusion_prior": "unclip/prior_shapes", "ar_prior": "unclip/ar_prior_shapes"}[kind]
        raise ConfigError(
            f"{kind} checkpoint not found: {path} (fix: `zoo-train experiment={train}`, then "
            f"{'diffusion' if kind == 'diffusion_prior' else 'ar'}_ckpt=<run>/checkpoints/last.ckpt, "
            f"or =null to leave it out)"
        )
    option = {"diffusion_prior": "diffusion_ckpt", "ar_prior": "ar_ckpt"}[kind]
    return load_module(Path(str(path)).expanduser(), expect=(kind,), option=option).eval()


def check_inputs(lit, feats: dict[str, torch.Tensor], kind: str, path: str = "the features file") -> None:
    """A ConfigError, before any sampling, unless the features carry what the prior ``lit`` samples from at the
    sizes it was built for (a missing key was a ValueError or ConfigError at the prior's turn, after the rows
    before it had sampled)."""
    c = lit.cfg
    d = feats["clip_image_emb"].shape[1]
    want = c.clip_dim if kind == "diffusion_prior" else c.embed_dim
    if d != want:
        raise ConfigError(
            f"the features are {d}-d CLIP embeddings but the {kind} was trained on {want}-d ones: "
            f"use the zoo-embed file of the CLIP it was trained with"
        )
    if kind == "ar_prior":
        key = "clip_text_tokens"
    else:
        key = {"tokens": "clip_text_tokens", "encodings": "clip_text_encodings"}.get(c.text_input)
    if key is None:
        return
    if key not in feats:
        fix = "zoo-embed ... text_encodings=true" if key == "clip_text_encodings" else "re-run zoo-embed"
        raise ConfigError(f"the {kind} needs {key} and {path} lacks it (fix: {fix} for these captions)")
    t = feats[key]
    if kind == "ar_prior" and t.shape[1] > c.text_len:
        raise ConfigError(f"{path} has captions of {t.shape[1]} CLIP tokens; the ar_prior takes text_len={c.text_len}")
    if kind == "diffusion_prior":
        if t.shape[1] != c.text_len:
            raise ConfigError(f"{path}'s {key} has {t.shape[1]} positions; the diffusion_prior takes {c.text_len}")
        if key == "clip_text_tokens" and t.numel() and int(t.max()) >= c.text_vocab:
            raise ConfigError(
                f"{path}'s clip_text_tokens hold token id {int(t.max())}; the diffusion_prior's text_vocab is "
                f"{c.text_vocab}: use the zoo-embed file of the CLIP it was trained with"
            )
        if key == "clip_text_encodings" and t.shape[2] != c.text_enc_dim:
            raise ConfigError(
                f"{path}'s clip_text_encodings are {t.shape[2]}-d; the diffusion_prior takes {c.text_enc_dim}"
            )


def check_counts(cfg: DictConfig, sweep) -> None:
    """batch_size, the DDIM steps (and each sweep.diffusion_steps), ddpm_steps and n_candidates are positive: a 0 was
    a ValueError / IndexError traceback at the row that used it, a 0 in the sweep after every main row had sampled."""
    d = cfg.diffusion
    # n, seed and threads too: int() took seed=2.5 for 2 and threads=inf was an OverflowError
    counts = [
        ("batch_size", cfg.get("batch_size"), 128),
        ("diffusion.steps", d.get("steps"), 64),
        ("diffusion.ddpm_steps", d.get("ddpm_steps"), "1000, or null to skip the DDPM row"),
        ("diffusion.n_candidates", d.get("n_candidates"), "null, the checkpoint's"),
        ("n", cfg.get("n"), "null, all captions"),
        ("threads", cfg.get("threads"), "null, torch's default"),
    ]
    counts += [("sweep.diffusion_steps", s, "[16,250]") for s in sweep.get("diffusion_steps") or []]
    for key, v, fix in counts:
        if key == "diffusion.ddpm_steps" and is_whole(v) and v == 0:  # 0, as null: no DDPM row
            continue
        check_whole(key, v, 1, fix, none_ok=key != "batch_size")
    check_whole("seed", cfg.get("seed"), fix=0)
    a = cfg.get("ar") or {}  # the AR prior's token sampling: refused before any prior is loaded or sampled
    check_sampling(a.get("temperature", 1.0), a.get("top_k"), a.get("top_p"), "ar.")


# ------------------------------------------------------------------------------------------------ the report
def _row(
    name: str, method: str, params: dict[str, Any], z: torch.Tensor, truth: torch.Tensor, seconds: float
) -> dict[str, Any]:
    r = {
        "name": name,
        "method": method,
        "params": params,
        **embedding_metrics(z, truth),
        "seconds": seconds,
        "ms_per_caption": 1e3 * seconds / len(z),
    }
    log.info(
        "%-34s cos %.4f  R@1 %.3f  R@5 %.3f  FD %.4f  (%.1f s)", name, r["cos"], r["r@1"], r["r@5"], r["fd"], seconds
    )
    return r


def prior_report(cfg: DictConfig) -> dict[str, Any]:
    """Run the report of ``cfg`` (``conf/eval/prior.yaml``); write it into ``cfg.out``; return the results."""
    from zoo.precision import describe_cpu

    t_start = time.perf_counter()
    check_counts(cfg, cfg.get("sweep") or {})  # before the features load: they were checked after it
    if not cfg.get("features"):
        raise ConfigError(
            "features=<zoo-embed file of held-out captions> is required (e.g. the val or test split: "
            "zoo-embed clip.checkpoint=<clip last.ckpt> data=shapes split=val)"
        )
    if not cfg.get("diffusion_ckpt") and not cfg.get("ar_ckpt"):
        log.warning("no prior checkpoint given (diffusion_ckpt=, ar_ckpt=): only the text baseline is reported")
    out_dir = Path(str(cfg.out))
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = bool(cfg.get("progress", True))
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    meta: dict[str, Any] = {}
    feats = load_features(str(cfg.features), cfg.get("n"), meta)
    if meta.get("split") == "train":
        log.warning(
            "features=%s holds the train split (zoo-embed's meta): the priors were trained on these captions, so "
            "the numbers are not held-out ones (fix: features=<the val or test file>)",
            cfg.features,
        )
    truth = F.normalize(feats["clip_image_emb"].float(), dim=-1)
    n = len(truth)
    bs, seed = int(cfg.batch_size), int(cfg.seed)
    ref = None
    if cfg.get("reference_features"):  # read (and checked) now: it was read after every prior had sampled
        ref_meta: dict[str, Any] = {}
        ref = load_features(str(cfg.reference_features), meta=ref_meta, images_only=True)["clip_image_emb"][:n]
        if ref.shape[-1] != truth.shape[-1]:
            raise ConfigError(
                f"reference_features={cfg.reference_features} holds {ref.shape[-1]}-d embeddings but "
                f"features={cfg.features} {truth.shape[-1]}-d (fix: reference_features=<a zoo-embed file by the "
                f"same CLIP>)"
            )
        check_reference(ref, truth, ref_meta, meta, str(cfg.reference_features), str(cfg.features))

    # every prior loaded and checked against the features before any row samples: a missing ar_ckpt, or features
    # without the tokens the AR prior reads, was found only after the diffusion prior's DDIM and DDPM-1000 rows
    dcfg, acfg, sweep = cfg.diffusion, cfg.ar, cfg.get("sweep") or {}
    for key, ckpt in (
        ("diffusion_guidance", "diffusion_ckpt"),
        ("diffusion_steps", "diffusion_ckpt"),
        ("ar_guidance", "ar_ckpt"),
    ):
        if sweep.get(key) and not cfg.get(ckpt):
            raise ConfigError(
                f"sweep.{key}={list(sweep[key])} sweeps the prior of {ckpt}, which is not given (fix: {ckpt}=<its "
                f"last.ckpt>, or sweep.{key}=[])"
            )
    priors: dict[str, Any] = {}
    for kind, ckpt in (("diffusion_prior", cfg.get("diffusion_ckpt")), ("ar_prior", cfg.get("ar_ckpt"))):
        if ckpt:
            priors[kind] = load_prior(str(ckpt), kind)
            check_inputs(priors[kind], feats, kind, f"features={cfg.features}")
            trained, given = getattr(priors[kind], "clip_fingerprint", None), meta.get("clip_fingerprint")
            if trained and given and trained != given:  # same widths, another CLIP's space: cosines near chance
                raise ConfigError(
                    f"{ckpt} was trained on the embeddings of another CLIP (fingerprint {trained}) than "
                    f"features={cfg.features} (fingerprint {given}) (fix: features=<a zoo-embed file of the CLIP the "
                    f"prior was trained on>)"
                )

    rows, sweep_rows = [], []

    def measure(name, method, params, sampler, into):
        z, secs = run_sampler(name, sampler, feats, bs, seed, progress)
        into.append(_row(name, method, params, z, truth, secs))
        return z

    measure("text embedding (baseline)", "text_baseline", {}, text_baseline, rows)

    models: dict[str, Any] = {}
    if "diffusion_prior" in priors:
        lit = priors.pop("diffusion_prior")
        g = lit.guidance_scale if dcfg.get("guidance_scale") is None else float(dcfg.guidance_scale)
        nc = lit.n_candidates if dcfg.get("n_candidates") is None else int(dcfg.n_candidates)
        models["diffusion_prior"] = {
            "checkpoint": str(cfg.diffusion_ckpt),
            "embed_scale": float(lit.embed_scale),
            "config": dict(vars(lit.cfg)),
            "guidance_scale": g,
            "n_candidates": nc,
        }
        steps = int(dcfg.steps)
        base = {"sampler": "ddim", "steps": steps, "eta": lit.eta, "guidance_scale": g, "n_candidates": nc}
        measure(
            f"diffusion prior (DDIM {steps})",
            "diffusion_prior",
            base,
            diffusion_sampler(lit, steps, "ddim", g, nc),
            rows,
        )
        if dcfg.get("ddpm_steps"):
            ds = int(dcfg.ddpm_steps)
            measure(
                f"diffusion prior (DDPM {ds})",
                "diffusion_prior",
                {**base, "sampler": "ddpm", "steps": ds, "eta": None},
                diffusion_sampler(lit, ds, "ddpm", g, nc),
                rows,
            )
        for gs in sweep.get("diffusion_guidance") or []:
            measure(
                f"diffusion prior (DDIM {steps}, guidance {float(gs):g})",
                "diffusion_prior",
                {**base, "guidance_scale": float(gs)},
                diffusion_sampler(lit, steps, "ddim", float(gs), nc),
                sweep_rows,
            )
        for st in sweep.get("diffusion_steps") or []:
            measure(
                f"diffusion prior (DDIM {int(st)})",
                "diffusion_prior",
                {**base, "steps": int(st)},
                diffusion_sampler(lit, int(st), "ddim", g, nc),
                sweep_rows,
            )
        del lit
    if "ar_prior" in priors:
        lit = priors.pop("ar_prior")
        q = lit.dot_quantile if acfg.get("dot_quantile") is None else float(acfg.dot_quantile)
        params = {
            "guidance_scale": float(acfg.guidance_scale),
            "temperature": float(acfg.temperature),
            "top_k": acfg.get("top_k"),
            "top_p": acfg.get("top_p"),
            "dot_quantile": q,
        }
        models["ar_prior"] = {
            "checkpoint": str(cfg.ar_ckpt),
            "pca_components": lit.pca.k,
            "pca_variance": lit.pca.variance_ratio(),
            "config": dict(vars(lit.cfg)),
        }
        measure("AR prior", "ar_prior", params, ar_sampler(lit, **params), rows)
        for gs in sweep.get("ar_guidance") or []:
            measure(
                f"AR prior (guidance {float(gs):g})",
                "ar_prior",
                {**params, "guidance_scale": float(gs)},
                ar_sampler(lit, **{**params, "guidance_scale": float(gs)}),
                sweep_rows,
            )
        del lit

    reference = None
    if ref is not None:
        from eval.metrics import frechet_distance

        reference = {
            "file": str(cfg.reference_features),
            "n": len(ref),
            "fd": frechet_distance(F.normalize(ref.float(), dim=-1), truth),
        }

    results = {
        "features": str(cfg.features),
        "features_meta": {k: meta[k] for k in ("split", "clip", "clip_fingerprint") if k in meta},
        "n": n,
        "dim": int(truth.shape[1]),
        "seed": seed,
        "cpu": describe_cpu(),
        "rows": rows,
        "sweep": sweep_rows,
        "reference": reference,
        "models": models,
        "checks": checks(rows),
        "conventions": {
            "cos": "mean cosine between each caption's sampled embedding and its true image embedding",
            "r@k": f"text->image retrieval of the true image among the {n} images of the file by the sampled "
            f"embedding (dot product of L2-normalised embeddings; ties count for the true image)",
            "fd": "Fréchet distance between Gaussians fitted to the sampled and the true (L2-normalised) image "
            "embeddings (the FID formula, eval.metrics.frechet_distance)",
        },
        "seconds": time.perf_counter() - t_start,
    }
    write_report(results, out_dir, plot=bool(cfg.get("plot", True)))
    return results


def checks(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's acceptance checks on the main rows: each prior beats the text baseline on cos and FD; the DDIM
    and DDPM diffusion-prior FDs within 5% of each other (relative to the DDPM one)."""
    base = next((r for r in rows if r["method"] == "text_baseline"), None)
    out: dict[str, Any] = {}
    if base is None:
        return out
    for r in rows:
        if r["method"] == "text_baseline":
            continue
        out[r["name"]] = {"cos_above_baseline": r["cos"] > base["cos"], "fd_below_baseline": r["fd"] < base["fd"]}
    ddim = next((r for r in rows if r["method"] == "diffusion_prior" and r["params"]["sampler"] == "ddim"), None)
    ddpm = next((r for r in rows if r["method"] == "diffusion_prior" and r["params"]["sampler"] == "ddpm"), None)
    if ddim and ddpm:
        rel = abs(ddim["fd"] - ddpm["fd"]) / max(ddpm["fd"], 1e-12)
        out["ddim_vs_ddpm_fd"] = {
            "ddim": ddim["fd"],
            "ddpm": ddpm["fd"],
            "relative_difference": rel,
            "within_5_percent": rel <= 0.05,
        }
    return out


# ------------------------------------------------------------------------------------------------ writing
def _f(v, fmt: str) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | cos to true image ↑ | R@1 ↑ | R@5 ↑ | FD ↓ | ms / caption |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['name']} | {_f(r['cos'], '{:.4f}')} | {_f(r['r@1'], '{:.1%}')} | {_f(r['r@5'], '{:.1%}')} "
            f"| {_f(r['fd'], '{:.4f}')} | {_f(r['ms_per_caption'], '{:.1f}')} |"
        )
    return "\n".join(lines)


def markdown_report(results: dict[str, Any]) -> str:
    out = [
        "# unCLIP prior report",
        "",
        f"- held-out captions: **{results['n']}** from `{results['features']}` ({results['dim']}-d CLIP "
        f"embeddings"
        + (f", {results['features_meta']['split']} split" if results.get("features_meta", {}).get("split") else "")
        + f"), seed {results['seed']}",
        f"- {results['cpu']}",
    ]
    for kind, m in results.get("models", {}).items():
        extra = {k: v for k, v in m.items() if k not in ("config", "checkpoint")}
        out.append(f"- {kind}: `{m['checkpoint']}` {json.dumps(extra)}")
    for k, v in results["conventions"].items():
        out.append(f"- {k}: {v}")
    out += ["", markdown_table(results["rows"])]
    if results.get("reference"):
        ref = results["reference"]
        out += [
            "",
            f"FD floor: {ref['n']} real image embeddings of `{ref['file']}` vs the true ones: **{ref['fd']:.4f}**.",
        ]
    if results.get("sweep"):
        out += ["", "## Sweep", "", markdown_table(results["sweep"])]
    c = results.get("checks", {})
    if c:
        out += ["", "## Checks (issue 14)", ""]
        for name, v in c.items():
            if name == "ddim_vs_ddpm_fd":
                out.append(
                    f"- DDIM vs DDPM FD: {v['ddim']:.4f} vs {v['ddpm']:.4f}, relative difference "
                    f"{v['relative_difference']:.1%} ({'within' if v['within_5_percent'] else 'NOT within'} "
                    f"5%)"
                )
            else:
                out.append(
                    f"- {name}: cos above the text baseline: {'yes' if v['cos_above_baseline'] else 'NO'}; "
                    f"FD below it: {'yes' if v['fd_below_baseline'] else 'NO'}"
                )
    return "\n".join(out) + "\n"


def plot_report(rows: list[dict[str, Any]], path: Path) -> Path:
    """Four bar panels (cos, R@1, R@5, FD), one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in rows]
    fig, axes = plt.subplots(1, 4, figsize=(4 * 3.2, 3.6))
    for ax, (key, title) in zip(
        axes, [("cos", "cos to true image ↑"), ("r@1", "R@1 ↑"), ("r@5", "R@5 ↑"), ("fd", "FD ↓")], strict=True
    ):
        vals = [r[key] for r in rows]
        ax.bar(range(len(rows)), vals, color=[f"C{i}" for i in range(len(rows))])
        ax.set_xticks(range(len(rows)), names, rotation=35, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=7)
    fig.suptitle("unCLIP priors on held-out captions: sampled vs true CLIP image embedding", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(results: dict[str, Any], out_dir: Path, plot: bool = True) -> None:
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out_dir / "results.md").write_text(markdown_report(results))
    if plot:
        plot_report(results["rows"] + results.get("sweep", []), out_dir / "prior.png")
    log.info("wrote %s/results.json, results.md%s", out_dir, ", prior.png" if plot else "")


@hydra.main(version_base="1.3", config_path="pkg://conf.eval", config_name="prior")
@report_user_errors
def main(cfg: DictConfig) -> None:
    OmegaConf.resolve(cfg)
    results = prior_report(cfg)
    print(markdown_table(results["rows"]))


if __name__ == "__main__":
    main()
