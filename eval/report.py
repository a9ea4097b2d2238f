"""Reports of an evaluation: ``results.json`` (everything), ``results.md`` (tables in the paper's layout: one row
per blur radius / number of candidates, one column per metric; the sample diversity; the sampling time), PNG plots
(metric vs blur radius, metric vs candidates; matplotlib's Agg backend, no display needed), and the same tables and
plots logged to W&B.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

# column -> (header, format); only the columns present in a table's rows are shown, in this order
COLUMNS: dict[str, tuple[str, str]] = {
    "fid": ("FID ↓", "{:.2f}"),
    "kid": ("KID ↓", "{:.4f}"),
    "is": ("IS ↑", "{:.2f}"),
    "fd_clip": ("FD_CLIP ↓", "{:.4f}"),
    "clip_score": ("CLIP score ↑", "{:.2f}"),
    "prompt_fidelity": ("prompt fidelity ↑", "{:.1%}"),
    "attribute_accuracy": ("attribute accuracy ↑", "{:.1%}"),
    "is_judge": ("IS (judge) ↑", "{:.2f}"),
    "rerank_cos": ("kept cos (reranker)", "{:.4f}"),
    # the diversity ablation and the sampling time (one value per run: the leaderboard's columns)
    "pairwise_clip_distance": ("pairwise CLIP distance ↑", "{:.4f}"),
    "judge_distinct": ("distinct judge readings ↑", "{:.1%}"),
    "sec_per_image": ("s / image ↓", "{:.4g}"),
}
DIVERSITY = ("pairwise_clip_distance", "judge_distinct")
STD = {"kid": "kid_std", "is": "is_std", "is_judge": "is_judge_std"}
ABLATIONS = {  # results key -> (title, x column, x header, log2 x axis)
    "blur": ("Metrics vs Gaussian blur radius (DALL·E Fig. 9a)", "radius", "blur radius (σ, px)", False),
    "rerank": ("Metrics vs CLIP-reranked candidates per caption (DALL·E Fig. 9c)", "candidates", "candidates", True),
}


def _fmt(row: dict, col: str) -> str:
    v = row.get(col)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float) and -1e-6 < v < 0:  # float round-off of a distance that is exactly 0
        v = 0.0
    text = COLUMNS[col][1].format(v)
    if col in STD and row.get(STD[col]) is not None:
        text += " ± " + COLUMNS[col][1].format(row[STD[col]]).rstrip("%")
    return text


def plot_scale(col: str) -> tuple[float, str]:
    """(factor, panel title) of a metric's plot: shares (prompt fidelity, accuracies) are printed as percentages in
    the tables, so their panels show percent too and say so, rather than a bare 0-1 axis beside a table in %."""
    header = COLUMNS[col][0]
    if COLUMNS[col][1].endswith("%}"):
        return 100.0, f"{header} (%)"
    return 1.0, header


def columns_of(rows: list[dict]) -> list[str]:
    return [c for c in COLUMNS if any(c in r for r in rows)]


def markdown_table(rows: list[dict], x: str, x_header: str) -> str:
    cols = columns_of(rows)
    lines = ["| " + " | ".join([x_header] + [COLUMNS[c][0] for c in cols]) + " |", "|" + "---:|" * (len(cols) + 1)]
    for r in rows:
        xv = r[x]
        xs = f"{xv:g}" if isinstance(xv, float) else str(xv)
        lines.append("| " + " | ".join([xs] + [_fmt(r, c) for c in cols]) + " |")
    return "\n".join(lines)


def rerank_blur(rows: list[dict]) -> float:
    """The blur radius the rerank rows were scored at (``rerank.blur_radius``; 0 for rows written without one)."""
    return max((float(r.get("blur_radius") or 0.0) for r in rows), default=0.0)


def group_skipped(skipped: dict[str, str]) -> list[tuple[list[str], str]]:
    """``{metric: reason}`` -> ``[([metrics...], reason)]``, metrics sharing a reason together."""
    groups: dict[str, list[str]] = {}
    for m, why in skipped.items():
        groups.setdefault(why, []).append(m)
    return [(names, why) for why, names in groups.items()]


def markdown_report(results: dict[str, Any]) -> str:
    p, g = results.get("protocol", {}), results.get("generator", {})
    out = ["# zoo-eval results", ""]
    out.append(
        f"- protocol: **{p.get('dataset')}** {p.get('split')}, {p.get('n')} captions, evaluated at "
        f"{p.get('resolution')} px (`{p.get('protocol')}`)"
    )
    if p.get("skipped_unreadable"):
        bad = p["skipped_unreadable"]
        more = f", ... {len(bad) - 5} more" if len(bad) > 5 else ""
        out.append(
            f"- {len(bad)} unreadable image file(s) of the draw replaced by other val images: "
            f"{', '.join(bad[:5])}{more}"
        )
    out.append(f"- generator: `{g.get('name')}` {g.get('params', '')}".rstrip())
    if r := results.get("ranking"):
        counts = "; ".join(f"{k}={r[k]}" for k in ("rerank.candidates", "blur.candidates") if k in r)
        clip = " ".join(f"{k}={v}" for k, v in (r.get("clip") or {}).items()) or "a random-init CLIP"
        out.append(f"- candidates ranked by zoo-eval's CLIP ({clip}; `{r.get('clip_id')}`): {counts}")
    if unused := {k: v for k, v in (g.get("not_used") or {}).items() if v is not None}:
        # set, but zoo-eval draws and ranks the candidates itself: said, not listed as the generator's settings
        said = ", ".join(f"generator.{k}={v}" for k, v in unused.items())
        out.append(f"- not used by zoo-eval (it draws the candidates and ranks them with its own CLIP): {said}")
    out.append(f"- metrics: {', '.join(results.get('metrics', [])) or 'none'}")
    for names, why in group_skipped(results.get("skipped", {})):
        out.append(f"- skipped **{', '.join(names)}**: {why}")
    for k, v in results.get("conventions", {}).items():
        out.append(f"- {k}: {v}")
    for key, (title, x, x_header, _) in ABLATIONS.items():
        rows = results.get(key)
        if rows:
            out += ["", f"## {title}", ""]
            if key == "blur" and results.get("blur_candidates", 1) > 1:
                out += [f"Images: the CLIP-best of {results['blur_candidates']} candidates per caption.", ""]
            radius = rerank_blur(rows) if key == "rerank" else None
            if radius:  # else these FIDs read as the unblurred images' own
                out += [
                    f"Scored at blur radius {radius:g} (rerank.blur_radius: Gaussian standard deviation "
                    f"in pixels, applied to the real and the generated images before every metric).",
                    "",
                ]
            out += [markdown_table(rows, x, x_header)]
    div = results.get("diversity")
    if div:
        out += ["", "## Sample diversity", ""]
        out += [
            f"{div.get('samples')} samples for each of the first {div.get('captions')} captions (candidate i under "
            f"seed + i). Pairwise CLIP distance: mean over captions of the mean over pairs of 1 - cos of the images' "
            f"CLIP embeddings (0: identical samples)."
            + (
                f" Distinct judge readings: mean over captions of the fraction of its samples the shapes judge reads "
                f"as different scenes (1/{div.get('samples')}: all the same)."
                if div.get("judge_distinct") is not None
                else " (No shapes judge in this run: no distinct-readings column.)"
            ),
            "",
            "| captions | samples / caption | " + " | ".join(COLUMNS[c][0] for c in DIVERSITY) + " |",
            "|---:|---:|" + "---:|" * len(DIVERSITY),
            f"| {div.get('captions')} | {div.get('samples')} | " + " | ".join(_fmt(div, c) for c in DIVERSITY) + " |",
        ]
    sampling = results.get("sampling") or {}
    if any(s.get("images") for s in sampling.values()):
        out += ["", "## Sampling time", ""]
        out += [
            "Seconds inside the generator's calls (metrics excluded) per image drawn"
            + (f", on {results['cpu']}" if results.get("cpu") else "")
            + (
                f"; the run's headline sec_per_image is the {results['sec_per_image_from']} draw"
                if results.get("sec_per_image_from")
                else ""
            )
            + ".",
            "",
            "| ablation | images | seconds | s / image ↓ | batch size | drawn |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for name, s in sampling.items():
            spi = s.get("sec_per_image")
            out.append(
                f"| {name} | {s.get('images')} | {s.get('seconds', 0):.2f} | "
                f"{'–' if spi is None else f'{spi:.4g}'} | {s.get('batch_size')} | {s.get('what', '')} |"
            )
    for note in results.get("notes", []):
        out += ["", f"> {note}"]
    return "\n".join(out) + "\n"


def plot_ablation(rows: list[dict], x: str, x_label: str, title: str, path, log2: bool = False) -> Optional[Path]:
    """One panel per metric column (metric vs ``x``); ``None`` when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [c for c in columns_of(rows) if c != "rerank_cos" or len(columns_of(rows)) == 1]
    if not rows or not cols:
        return None
    ncol = len(cols) if len(cols) <= 4 else math.ceil(len(cols) / 2)
    nrow = math.ceil(len(cols) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.0 * nrow), squeeze=False)
    xs = [r[x] for r in rows]
    for ax, c in zip(axes.flat, cols):
        scale, header = plot_scale(c)
        ys = [scale * r.get(c, float("nan")) for r in rows]
        err = [scale * r.get(STD[c], 0.0) for r in rows] if c in STD else None
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3)
        ax.set_title(header)
        ax.set_xlabel(x_label)
        if log2:
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [str(v) for v in xs])
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(cols) :]:
        ax.axis("off")
    return save_figure(fig, path, title, fontsize=10)


def save_figure(fig, path, title: str, fontsize: int = 10) -> Path:
    """Title, lay out, write (parents created) and close a matplotlib figure: every report and leaderboard PNG."""
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=fontsize)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(results: dict[str, Any], out_dir) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and ``<ablation>.png`` into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "md": out_dir / "results.md"}
    paths["json"].write_text(json.dumps(results, indent=2, default=str))
    paths["md"].write_text(markdown_report(results))
    for key, (title, x, x_label, log2) in ABLATIONS.items():
        if results.get(key):
            radius = rerank_blur(results[key]) if key == "rerank" else None
            if radius:
                title += f", at blur radius {radius:g}"
            png = plot_ablation(results[key], x, x_label, title, out_dir / f"{key}.png", log2)
            if png is not None:
                paths[key] = png
    return paths


def log_to_wandb(results: dict[str, Any], paths: dict[str, Path], init_kwargs: dict[str, Any]) -> Optional[str]:
    """One W&B run (offline unless ``mode`` says otherwise) with a ``wandb.Table`` and a ``wandb.Image`` per
    ablation, a ``wandb.Image`` per ``samples*`` entry of ``paths``, the report as a summary; returns the run
    directory."""
    import wandb

    run = wandb.init(**init_kwargs)
    try:
        payload = {}
        for key, (_, x, _, _) in ABLATIONS.items():
            rows = results.get(key)
            if not rows:
                continue
            cols = [x] + [c for c in columns_of(rows)] + [s for c, s in STD.items() if any(s in r for r in rows)]
            payload[f"eval/{key}_table"] = wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])
            if key in paths:
                payload[f"eval/{key}_plot"] = wandb.Image(str(paths[key]))
        for key, path in paths.items():
            if key.startswith("samples"):  # zoo-eval's sample grids (samples.png, samples_rerank_n32.png)
                payload[f"eval/{key}"] = wandb.Image(str(path))
        if payload:
            run.log(payload)
        run.summary["protocol"] = results.get("protocol")
        run.summary["skipped"] = results.get("skipped")
        if results.get("diversity"):
            run.summary["diversity"] = results["diversity"]
        if results.get("sec_per_image") is not None:
            run.summary["sec_per_image"] = results["sec_per_image"]
        return str(Path(run.dir).parent)
    finally:
        run.finish()


__all__ = [
    "COLUMNS",
    "group_skipped",
    "log_to_wandb",
    "markdown_report",
    "markdown_table",
    "plot_ablation",
    "plot_scale",
    "rerank_blur",
    "write_report",
]
