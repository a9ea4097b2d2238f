"""One table over many ``zoo-eval`` runs: a row per run (generator, its fidelity, diversity and sampling speed).

    python -m eval.leaderboard logs/eval/leaderboard/{dalle,glide,unclip_diffusion,unclip_ar} --out logs/leaderboard
    python -m eval.leaderboard logs/eval/multiruns/2026-01-01_00-00-00 --by generator.params.guidance_scale \\
        --out logs/glide_guidance --title "GLIDE guidance sweep"

Each RUN_DIR is a ``zoo-eval`` run directory (holding ``results.json``), a ``results.json`` file, or a Hydra multirun
directory (numbered subfolders ``0/``, ``1/``, ... each holding ``results.json``), which stands for all its runs.

A row reads, from the run's ``results.json``:

- the fidelity metrics (``prompt_fidelity``, ``attribute_accuracy`` and its per-attribute parts, ``clip_score``,
  ``fd_clip``, and ``fid``/``kid``/``is`` when computed) from the **blur row at radius 0** -- the unblurred images,
  one per caption, or the CLIP-best of ``blur.candidates`` as the run recorded (``blur_candidates``); a run of the
  rerank ablation alone (``ablations: [rerank]``) has no blur row: its unblurred rerank row of the most candidates
  stands in (the row's label says "best of n");
- the sample diversity (``diversity.pairwise_clip_distance``, ``diversity.judge_distinct``);
- ``sec_per_image`` (seconds inside the generator per image drawn) and the CPU it was measured on;
- what the generator's checkpoints' training runs recorded (``training``: step count, and CPU when recorded);
- the instruments the numbers depend on: the CLIP (``clip``), the shapes judge (``conventions.judge``) and the
  Inception weights of FID / KID / IS (``inception``: file name and sha256; "unknown" in a results.json written before
  zoo-eval recorded them). The table flags rows scored with different ones.

Outputs in ``--out``: ``leaderboard.md`` (markdown, arrows as in ``results.md``), ``leaderboard.json`` (the rows)
and ``leaderboard.png``: one bar panel per headline metric (one bar per run, the same colour per run across panels;
the metrics' scales differ too much for one axis); with ``--by KEY`` (a numeric ``results.json`` key such as
``generator.params.guidance_scale``), each metric as a line against KEY plus a fidelity-vs-diversity scatter with
the points labelled by KEY: the guidance trade-off plot of GLIDE's Figure 6 / unCLIP's Figure 9.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from eval.report import COLUMNS, plot_scale, save_figure

# The table's columns, in order (only the ones some row has are shown). Fidelity on the radius-0 blur row.
HEADLINE = (
    "prompt_fidelity",
    "attribute_accuracy",
    "clip_score",
    "fd_clip",
    "fid",
    "kid",
    "is",
    "pairwise_clip_distance",
    "judge_distinct",
    "sec_per_image",
)
FIDELITY = ("prompt_fidelity", "attribute_accuracy", "clip_score", "fd_clip", "fid", "kid", "is")
# the keys of the judge's per-attribute accuracies (eval.ablations MetricSuite._judge)
ATTRIBUTES = ("shape", "colour", "size", "position", "background", "count", "subject")
# The scatter's axes: the judge's exact-match fidelity where the protocol has attributes, else the CLIP score.
SCATTER_Y = ("prompt_fidelity", "clip_score")
# column -> (header, format): results.md's, plus the per-attribute accuracies
FORMATS = {**COLUMNS, **{f"attr_{a}": (f"{a} ↑", "{:.1%}") for a in ATTRIBUTES}}


# ------------------------------------------------------------------------------------------------ reading runs
def find_runs(paths: Sequence) -> list[Path]:
    """Run directories (each holding ``results.json``) from run dirs, ``results.json`` files and Hydra multirun
    dirs (expanded to their numbered subfolders, in job order). A FileNotFoundError naming the path otherwise."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if p.is_file() and p.name == "results.json":
            runs.append(p.parent)
        elif not p.is_dir():
            raise FileNotFoundError(f"{p}: no such run directory (fix: pass a zoo-eval run dir holding results.json)")
        elif (p / "results.json").is_file():
            runs.append(p)
        else:
            jobs = sorted((d for d in p.iterdir() if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name))
            if jobs:  # a Hydra multirun: every job must have finished, or the sweep has a hole nobody sees
                missing = [str(d) for d in jobs if not (d / "results.json").is_file()]
                if missing:
                    raise FileNotFoundError(
                        f"{p} is a multirun dir but its job(s) {', '.join(missing)} have no results.json (the job "
                        f"failed or is still running; fix: rerun it, or pass the finished job dirs one by one)"
                    )
                runs += jobs
                continue
            nested = sorted(d.name for d in p.iterdir() if d.is_dir() and (d / "results.json").is_file())
            hint = (
                f"; its subfolders {', '.join(nested)} hold one: pass them ({p}/*)"
                if nested
                else " (fix: run zoo-eval there first, or pass a zoo-eval run dir or a Hydra multirun dir)"
            )
            raise FileNotFoundError(f"{p} has no results.json{hint}")
    if not runs:
        raise ValueError("no runs given (fix: python -m eval.leaderboard RUN_DIR [RUN_DIR ...] --out OUT_DIR)")
    return runs


def load_results(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "results.json"
    try:
        results = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); fix: rerun zoo-eval for that run") from e
    problems = _layout_problems(results)
    if problems:  # read blindly, these were AttributeError / TypeError tracebacks naming no file
        raise ValueError(
            f"{path} is not a zoo-eval results file as this version writes it: {'; '.join(problems)} (fix: rerun "
            f"zoo-eval for that run, or leave it out)"
        )
    return results


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _layout_problems(results: Any) -> list[str]:
    """What in a parsed ``results.json`` the rows cannot read (an older zoo-eval's layout, a hand edit, another
    program's file): the top level an object; generator, protocol, diversity, training objects; blur a list of
    objects with a numeric radius; the fidelity metrics and sec_per_image numbers or null."""
    if not isinstance(results, dict):
        kind = {type(None): "null", list: "list", str: "string", bool: "boolean"}.get(type(results), "number")
        return [f"it holds a JSON {kind}, not an object"]
    problems = []
    for key in ("generator", "protocol", "diversity", "training", "inception"):
        if results.get(key) is not None and not isinstance(results[key], dict):
            problems.append(f"{key!r} is a {type(results[key]).__name__}, not an object")
    blur = results.get("blur")
    if blur is not None and not (isinstance(blur, list) and all(isinstance(r, dict) for r in blur)):
        problems.append("'blur' is not a list of rows (objects)")
    else:
        for r in blur or []:
            if not _is_number(r.get("radius")):
                problems.append(f"a 'blur' row has radius {r.get('radius')!r}, not a number")
            bad = [m for m in FIDELITY if r.get(m) is not None and not _is_number(r[m])]
            if bad:
                problems.append(f"the blur row at radius {r.get('radius')!r} has non-numeric {bad}")
            if r.get("attributes") is not None and not isinstance(r["attributes"], dict):
                problems.append("a 'blur' row's 'attributes' is not an object")
    training = results.get("training") if isinstance(results.get("training"), dict) else {}
    for name, info in training.items():
        keys = ("global_step", "train_minutes", "threads")
        bad = [k for k in keys if isinstance(info, dict) and info.get(k) is not None and not _is_number(info[k])]
        if bad:
            problems.append(f"training.{name} has non-numeric {bad}")
    if results.get("sec_per_image") is not None and not _is_number(results["sec_per_image"]):
        problems.append(f"'sec_per_image' is {results['sec_per_image']!r}, not a number")
    return problems


def lookup(results: dict[str, Any], dotted: str) -> Any:
    """``results["a"]["b"]`` for ``"a.b"``; ``KeyError`` naming the first missing part."""
    node: Any = results
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(part)
        node = node[part]
    return node


def _radius0(results: dict[str, Any]) -> Optional[dict[str, Any]]:
    for row in results.get("blur") or []:
        if float(row.get("radius", -1)) == 0.0:
            return row
    return None


def _fidelity_row(results: dict[str, Any]) -> tuple[Optional[dict[str, Any]], Optional[int], Optional[str]]:
    """(the row the fidelity columns read, the number of candidates its images are the CLIP-best of, "blur" or
    "rerank"): the blur row at radius 0; else, for a run of the rerank ablation alone (``ablations: [rerank]``, the
    ``dalle1/rerank_n*`` rows), its rerank row of the most candidates whose images are unblurred. Without that
    fallback a sweep of rerank-only rows gave a leaderboard with no fidelity column at all."""
    r0 = _radius0(results)
    if r0 is not None:
        return r0, results.get("blur_candidates"), "blur"
    rerank = [r for r in results.get("rerank") or [] if float(r.get("blur_radius") or 0.0) == 0.0]
    if rerank:
        best = max(rerank, key=lambda r: int(r.get("candidates", 0)))
        return best, best.get("candidates"), "rerank"
    return None, None, None


def _by_value(results: dict[str, Any], key: str, run_dir: Path) -> float:
    try:
        v = lookup(results, key)
    except KeyError as e:
        raise ValueError(
            f"{run_dir}/results.json has no {key!r} (missing {e.args[0]!r}); fix: --by a key every run has, "
            f"e.g. generator.params.guidance_scale, with the value set explicitly (not null) in each run"
        ) from None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(
            f"{run_dir}/results.json: --by {key} is {v!r}, not a number (fix: set it explicitly in each run, e.g. "
            f"generator.guidance_scale=3, or use --labels for non-numeric rows)"
        )
    return float(v)


def leaderboard_row(
    results: dict[str, Any], run_dir: Path, label_key: str = "generator.name", by: Optional[str] = None
) -> dict[str, Any]:
    """One row (see the module docstring); ``label`` is ``label_key``'s value plus ``<by leaf>=<value>``."""
    run_dir = Path(run_dir)
    try:
        label = str(lookup(results, label_key))
    except KeyError:
        raise ValueError(
            f"{run_dir}/results.json has no {label_key!r} (fix: --label-key generator.name, or --labels a,b,c)"
        ) from None
    row: dict[str, Any] = {"label": label, "run_dir": str(run_dir)}
    g, p = results.get("generator") or {}, results.get("protocol") or {}
    row["generator"] = g.get("name")
    if by:
        row["by"] = _by_value(results, by, run_dir)
        row["label"] = f"{label} {by.rsplit('.', 1)[-1]}={row['by']:g}"
    row["protocol"] = f"{p.get('dataset')} {p.get('split')}, {p.get('n')} captions at {p.get('resolution')} px"
    # the protocol's full identity (caption style, seed, object order, COCO file digest): two shapes runs with short
    # and descriptive captions read alike above, and the "not comparable" warning never fired
    row["protocol_id"] = p.get("protocol")
    # the instruments: CLIP-based and judge-based columns compare only runs scored by the same CLIP / judge
    row["clip_id"] = results.get("clip")
    row["judge_id"] = (results.get("conventions") or {}).get("judge")
    # the Inception weights of FID / KID / IS (results.json records them since zoo-eval hashed the file; an older
    # file has no record: "unknown", never taken as the same weights as another row's)
    inception = results.get("inception") or {}
    sha = inception.get("sha256")
    row["inception_id"] = f"{inception.get('extractor')}:{sha}" if sha else None
    row["inception_weights"] = f"{inception.get('file')} (sha256 {str(sha)[:16]}…)" if sha else None
    r0, candidates, source = _fidelity_row(results)
    row["blur_candidates"] = candidates
    row["fidelity_from"] = source
    if source == "rerank" and not by:  # a rerank sweep's rows are one generator: tell them apart by n
        row["label"] = f"{label}, best of {candidates}"
    for m in FIDELITY:
        row[m] = r0.get(m) if r0 is not None else None
    row["attributes"] = dict((r0 or {}).get("attributes") or {})
    div = results.get("diversity") or {}
    row["pairwise_clip_distance"] = div.get("pairwise_clip_distance")
    row["judge_distinct"] = div.get("judge_distinct")
    row["diversity_samples"] = div.get("samples")
    row["diversity_captions"] = div.get("captions")
    row["sec_per_image"] = results.get("sec_per_image")
    row["sec_per_image_from"] = results.get("sec_per_image_from")
    row["cpu"] = results.get("cpu")
    training = results.get("training") or {}
    row["training"] = {
        name: {k: info[k] for k in ("global_step", "cpu", "train_minutes", "threads") if k in info}
        for name, info in training.items()
        if isinstance(info, dict)
    }
    cpus = sorted({str(v["cpu"]) for v in row["training"].values() if v.get("cpu")})
    row["train_cpu"] = "; ".join(cpus) if cpus else None
    return row


def _training_bit(name: str, v: dict[str, Any]) -> str:
    """``decoder 1,234 steps in 15.0 min x 1 thread``: what a checkpoint's training run recorded (CPU-time is the
    fair comparison between rows, so the wall minutes and the thread count go together)."""
    bit = f"{name} {v['global_step']} steps" if "global_step" in v else name
    if v.get("train_minutes") is not None:
        bit += f" in {float(v['train_minutes']):.1f} min"
        if v.get("threads"):
            bit += f" x {int(v['threads'])} thread{'s' if int(v['threads']) > 1 else ''}"
    return bit


def build_leaderboard(
    paths: Sequence,
    labels: Optional[Sequence[str]] = None,
    label_key: str = "generator.name",
    by: Optional[str] = None,
) -> list[dict[str, Any]]:
    """The rows of the runs under ``paths`` (``find_runs``); sorted by the ``by`` value when given."""
    runs = find_runs(paths)
    rows = [leaderboard_row(load_results(r), r, label_key, by) for r in runs]
    if labels is not None:
        labels = [str(s) for s in labels]
        if len(labels) != len(rows):
            found = ", ".join(str(r) for r in runs)
            raise ValueError(f"{len(labels)} labels for {len(rows)} runs ({found}); fix: one label per run, in order")
        for row, name in zip(rows, labels):
            row["label"] = name
    else:  # two runs of one generator (unCLIP with either prior): tell them apart by their run dir's name
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["label"]] = counts.get(row["label"], 0) + 1
        for row in rows:
            if counts[row["label"]] > 1:
                row["label"] = f"{row['label']} ({Path(row['run_dir']).name})"
    if by:
        rows.sort(key=lambda r: r["by"])
    return rows


# ------------------------------------------------------------------------------------------------ writing
def _has_inception_numbers(row: dict) -> bool:
    return any(row.get(m) is not None for m in ("fid", "kid", "is"))


def _present(rows: list[dict], cols: Sequence[str]) -> list[str]:
    return [c for c in cols if any(r.get(c) is not None for r in rows)]


def _cell(row: dict, col: str) -> str:
    v = row.get(col)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if col not in FORMATS:  # the label / --by columns
        return f"{v:g}" if isinstance(v, float) else str(v)
    if isinstance(v, float) and -1e-6 < v < 0:  # float round-off of a distance that is exactly 0
        v = 0.0
    return FORMATS[col][1].format(v)


def _table(rows: list[dict], cols: list[str], first: list[tuple[str, str]]) -> list[str]:
    """Markdown lines: the ``first`` (key, header) columns as text, then ``cols`` formatted as in results.md."""
    head = [h for _, h in first] + [FORMATS[c][0] for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(first) + "---:|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join([_cell(r, k) for k, _ in first] + [_cell(r, c) for c in cols]) + " |")
    return lines


def markdown_leaderboard(rows: list[dict[str, Any]], title: str = "Leaderboard", by: Optional[str] = None) -> str:
    first = [("label", "run")] + ([("by", by.rsplit(".", 1)[-1])] if by else [])
    cols = _present(rows, HEADLINE)
    out = [f"# {title}", ""]
    protocols = sorted({r["protocol"] for r in rows})
    out.append(f"- protocol: {protocols[0]}" if len(protocols) == 1 else "- protocols: " + "; ".join(protocols))
    ks = sorted({r["blur_candidates"] for r in rows if r.get("blur_candidates") is not None})
    sources = sorted({r["fidelity_from"] for r in rows if r.get("fidelity_from")})
    if ks:
        best_of = "one image per caption" if ks == [1] else f"the CLIP-best of {' / '.join(map(str, ks))} candidates"
        where = {
            ("blur",): "blur row at radius 0",
            ("rerank",): "rerank row",
            ("blur", "rerank"): "blur row at radius 0, or the rerank row of runs without one",
        }[tuple(sources)]
        out.append(f"- fidelity columns: the unblurred images ({where}), {best_of}")
    else:
        out.append(
            "- fidelity columns: none of these runs has a blur row at radius 0 or an unblurred rerank row "
            "(zoo-eval blur.radii=[0])"
        )
    if "pairwise_clip_distance" in cols:
        out.append(
            "- pairwise CLIP distance: mean over captions of the mean over pairs of its samples of 1 - cos of the "
            "CLIP image embeddings; distinct judge readings: fraction of a caption's samples read as different scenes"
        )
    if "sec_per_image" in cols:
        cpus = sorted({r["cpu"] for r in rows if r.get("cpu")})
        out.append(
            "- s / image: seconds inside the generator's calls per image drawn (metrics excluded)"
            + (f", on {'; '.join(cpus)}" if cpus else "")
        )
    variants = sorted({str(r.get("protocol_id")) for r in rows if r.get("protocol_id")})
    if len(protocols) > 1 or len(variants) > 1:
        out.append("- **the rows use different protocols: their numbers are not comparable**")
        if len(protocols) == 1 and len(variants) > 1:
            out.append("  (the same data and size, other settings: " + "; ".join(f"`{v}`" for v in variants) + ")")
    for key, what in (("clip_id", "CLIPs"), ("judge_id", "shapes judges"), ("inception_id", "Inception weights")):
        ids = sorted({str(r[key]) for r in rows if r.get(key)})
        if len(ids) > 1:
            out.append(f"- **the rows were scored by different {what}: those columns are not comparable** ({len(ids)})")
    unknown = [r["label"] for r in rows if not r.get("inception_id") and _has_inception_numbers(r)]
    if unknown and len(unknown) < sum(map(_has_inception_numbers, rows)):
        out.append(
            f"- FID / KID / IS of {', '.join(unknown)}: Inception weights unknown (results.json from before zoo-eval "
            f"recorded them; fix: rerun zoo-eval for those runs), so not known to be comparable with the others"
        )
    out += [""] + _table(rows, cols, first)
    attrs = [a for a in ATTRIBUTES if any(a in r.get("attributes", {}) for r in rows)]
    if attrs:
        flat = [{**r, **{f"attr_{a}": r["attributes"].get(a) for a in attrs}} for r in rows]
        out += ["", "## Per-attribute accuracy (shapes judge, radius 0)", ""]
        out += _table(flat, [f"attr_{a}" for a in attrs], first)
    out += ["", "## Runs", ""]
    for r in rows:
        bits = [f"generator `{r.get('generator')}`", f"`{r['run_dir']}`"]
        if r.get("training"):
            steps = [_training_bit(name, v) for name, v in r["training"].items()]
            bits.append("trained: " + ", ".join(steps))
        if r.get("train_cpu"):
            bits.append(f"training CPU: {r['train_cpu']}")
        if _has_inception_numbers(r):
            bits.append(f"Inception weights: {r.get('inception_weights') or 'unknown'}")
        out.append(f"- **{r['label']}**: " + "; ".join(bits))
    return "\n".join(out) + "\n"


def plot_panels(rows: list[dict[str, Any]], by: Optional[str] = None) -> list[str]:
    """The figure's panels: ``bar:<metric>`` per headline metric some row has, or with ``by`` ``line:<metric>`` and
    ``scatter:pairwise_clip_distance:<fidelity>`` (when some row has both a diversity and a fidelity)."""
    cols = _present(rows, HEADLINE)
    panels = [f"{'line' if by else 'bar'}:{c}" for c in cols]
    scatter_y = next((c for c in SCATTER_Y if c in cols), None)
    if (
        by
        and scatter_y
        and any(r.get("pairwise_clip_distance") is not None and r.get(scatter_y) is not None for r in rows)
    ):
        panels.append(f"scatter:pairwise_clip_distance:{scatter_y}")
    return panels


def plot_leaderboard(
    rows: list[dict[str, Any]], path, by: Optional[str] = None, title: str = "Leaderboard"
) -> Optional[Path]:
    """The figure of ``plot_panels`` (see the module docstring); ``None`` when no row has a headline number."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panel_names = plot_panels(rows, by)
    cols = [p.split(":")[1] for p in panel_names if not p.startswith("scatter:")]
    scatter_y = next((p.split(":")[2] for p in panel_names if p.startswith("scatter:")), None)
    n_panels = len(panel_names)
    if not n_panels:
        return None
    ncol = min(4, n_panels)
    nrow = math.ceil(n_panels / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.2 * nrow), squeeze=False)
    panels = list(axes.flat)
    colours = [plt.cm.tab10(i % 10) for i in range(len(rows))]
    nan = float("nan")
    for ax, c in zip(panels, cols):
        scale, header = plot_scale(c)
        ys = [nan if r.get(c) is None else scale * float(r[c]) for r in rows]
        if by:
            ax.plot([r["by"] for r in rows], ys, marker="o")
            ax.set_xlabel(by.rsplit(".", 1)[-1])
        else:
            ax.bar(range(len(rows)), [0.0 if math.isnan(y) else y for y in ys], color=colours)
            ax.set_xticks(range(len(rows)), [r["label"] for r in rows], rotation=30, ha="right", fontsize=7)
        ax.set_title(header, fontsize=9)
        ax.grid(alpha=0.3, axis="y" if not by else "both")
    used = len(cols)
    if scatter_y:
        ax = panels[used]
        y_scale, y_header = plot_scale(scatter_y)
        pts = [
            (float(r["pairwise_clip_distance"]), y_scale * float(r[scatter_y]), r["by"])
            for r in rows
            if r.get("pairwise_clip_distance") is not None and r.get(scatter_y) is not None
        ]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", linestyle=":")
        for x, y, v in pts:
            ax.annotate(f"{v:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(COLUMNS["pairwise_clip_distance"][0])
        ax.set_ylabel(y_header)
        ax.set_title(f"fidelity vs diversity (labels: {by.rsplit('.', 1)[-1]})", fontsize=9)
        ax.grid(alpha=0.3)
        used += 1
    for ax in panels[used:]:
        ax.axis("off")
    return save_figure(fig, path, title, fontsize=11)


def write_leaderboard(
    rows: list[dict[str, Any]], out_dir, title: str = "Leaderboard", by: Optional[str] = None
) -> dict[str, Path]:
    """``leaderboard.md``, ``leaderboard.json`` and ``leaderboard.png`` in ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / "leaderboard.md", "json": out_dir / "leaderboard.json"}
    paths["md"].write_text(markdown_leaderboard(rows, title, by))
    payload = {
        "title": title,
        "by": by,
        "columns": _present(rows, HEADLINE),
        "plot_panels": plot_panels(rows, by),
        "rows": rows,
    }
    paths["json"].write_text(json.dumps(payload, indent=2, default=str))
    png = plot_leaderboard(rows, out_dir / "leaderboard.png", by, title)
    if png is not None:
        paths["png"] = png
    return paths


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Path]:
    ap = argparse.ArgumentParser(
        prog="python -m eval.leaderboard",
        description="One leaderboard (markdown, JSON, PNG) over zoo-eval runs.",
    )
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR", help="zoo-eval run dirs, results.json files, multirun dirs")
    ap.add_argument("--out", required=True, metavar="OUT_DIR", help="where leaderboard.{md,json,png} go")
    ap.add_argument("--label-key", default="generator.name", help="results.json key naming a row (dotted)")
    ap.add_argument("--labels", default=None, help="comma-separated row names, one per run in order")
    ap.add_argument("--by", default=None, help="numeric results.json key to sweep over (line plots + scatter)")
    ap.add_argument("--title", default=None, help="title of the table and the figure")
    args = ap.parse_args(argv)
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    title = args.title or (f"Leaderboard vs {args.by.rsplit('.', 1)[-1]}" if args.by else "Leaderboard")
    try:
        rows = build_leaderboard(args.runs, labels, args.label_key, args.by)
    except (OSError, ValueError) as e:
        ap.exit(2, f"error: {e}\n")
    paths = write_leaderboard(rows, args.out, title, args.by)
    sys.stdout.write(paths["md"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return paths


__all__ = [
    "build_leaderboard",
    "find_runs",
    "leaderboard_row",
    "main",
    "markdown_leaderboard",
    "plot_leaderboard",
    "plot_panels",
    "write_leaderboard",
]


if __name__ == "__main__":
    main()
