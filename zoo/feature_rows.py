"""Resumable per-index feature files: the row loop shared by ``zoo-embed`` and ``zoo-tokenize``.

Both commands encode every item of a split, in dataset index order, into one file. Embedding COCO's train split
with a large CLIP takes hours, and an interrupted run (Ctrl-C, a kill, a job's time limit) used to keep nothing:
the whole split was held in memory and written once at the end. Now the rows are also saved, every
``CHUNK_ROWS`` rows (rounded up to whole batches), as atomic chunk files in a work folder next to the output
(``<out>.partial/``), beside ``run.json``: the arguments that decide the rows (which model, by a digest of its
weights, which data, the options, the batch size). Run again with the same arguments, the command continues after
the last complete chunk; the file it then writes is the one an uninterrupted run writes (the same batches, so the
same rows bit for bit). With other arguments the folder is refused, naming what differs, rather than mixing rows
of two runs in one file. The folder is removed once the output is written.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from zoo.errors import ConfigError, check_whole
from zoo.progress import track

log = logging.getLogger("zoo.feature_rows")

CHUNK_ROWS = 4096  # rows per chunk file: at most this much work is redone after an interruption
RUN_FILE = "run.json"


def split_and_batch_size(cfg: Any, default_batch_size: int) -> tuple[str, int]:
    """``(split, batch_size)`` of a zoo-embed / zoo-tokenize config, checked before a model or the data is built: a
    bad split was found only after the model had loaded, ``batch_size=-2`` was torch's bare ValueError,
    ``batch_size=0`` ran with the default (zoo-embed) and ``batch_size=2.5`` ran with 2 (zoo-tokenize)."""
    from zoo.data.datamodule import SPLITS

    split = str(cfg.split)
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {SPLITS} (fix: split=train, val or test)")
    batch_size = cfg.get("batch_size")
    batch_size = default_batch_size if batch_size is None else batch_size
    return split, check_whole("batch_size", batch_size, 1, default_batch_size)


def work_dir_of(out_path: str | Path) -> Path:
    """The folder holding an unfinished run's chunks for ``out_path``."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".partial")


def _plain(identity: dict[str, Any]) -> dict[str, Any]:
    # JSON round trip: what run.json will read back (tuples become lists, keys strings), so equal runs compare equal
    return json.loads(json.dumps(identity, sort_keys=True, default=str))


def _chunk_name(start: int) -> str:
    return f"rows_{start:012d}.pt"


def _completed_chunks(work: Path, identity: dict[str, Any], command: str) -> list[dict[str, Any]]:
    """The chunks an interrupted run with the same ``identity`` left in ``work`` (contiguous from row 0); a
    ConfigError when the folder belongs to a run with other arguments."""
    from zoo.checkpoint import atomic_write_text, safe_load

    run = work / RUN_FILE
    saved = sorted(work.glob("rows_*.pt")) if work.is_dir() else []
    if not (saved and run.is_file()):
        # a fresh run, or one stopped before its first chunk (a bad option, an early Ctrl-C): nothing to keep, so
        # these arguments start over rather than being refused for a folder that holds no rows
        if saved:
            log.warning("%s: chunks without %s (whose run?): deleting them and starting over", work, RUN_FILE)
        work.mkdir(parents=True, exist_ok=True)
        for stale in saved:
            stale.unlink()
        atomic_write_text(run, json.dumps(identity, indent=1, sort_keys=True))
        return []
    try:
        recorded = json.loads(run.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"{run} is unreadable ({e}): cannot tell which run its rows belong to (fix: delete {work} to start over)"
        ) from None
    if recorded != identity:
        keys = sorted(set(recorded) | set(identity))
        differ = [k for k in keys if recorded.get(k) != identity.get(k)]
        shown = "; ".join(f"{k}: {recorded.get(k)!r} there, {identity.get(k)!r} now" for k in differ)
        raise ConfigError(
            f"{work} holds the rows of an interrupted {command} run with other arguments ({shown}); its rows and "
            f"this run's would be mixed in one file (fix: re-run with the arguments of that run to finish it, or "
            f"delete {work} to start over)"
        )
    chunks, expected = [], 0
    for path in saved:
        chunk = safe_load(path, fix=f"delete {work} to start over")
        if chunk.get("start") != expected:  # chunks are written in order: a gap means a foreign or lost file
            raise ConfigError(
                f"{path} starts at row {chunk.get('start')} but the chunks before it end at row {expected} "
                f"(fix: delete {work} to start over)"
            )
        chunks.append(chunk)
        expected += len(chunk["served"])
    return chunks


def compute_rows(
    dataset,
    out_path: str | Path,
    identity: dict[str, Any],
    encode: Callable[[Any], tuple[dict[str, torch.Tensor], list]],
    *,
    batch_size: int,
    collate_fn: Callable,
    command: str,
    what: str,
    unit: str,
    options: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Every row of ``dataset`` in index order: ``encode(batch)`` gives a batch's columns (tensors, one row per
    item) and each item's served ``index`` (None when unknown). Returns the concatenated columns and the rows that
    hold a substitute item (``substituted_rows``, reported as ``command``'s ``what``); resumes from, and saves
    chunks to, ``work_dir_of(out_path)`` (see the module doc). ``identity`` (plain values) names what the rows
    depend on; the item count and batch size are added here. ``options``: ``num_workers`` (default 0),
    ``progress`` (True), ``chunk_rows`` (rows per chunk, ``CHUNK_ROWS``). Call ``finish_rows(out_path)`` once the
    output file is written. An empty split is a ConfigError."""
    if Path(out_path).is_dir():  # os.replace refused it only after the whole split was encoded
        raise ConfigError(
            f"out={out_path} is a folder, but {command} writes one file (fix: out={Path(out_path) / 'name.pt'})"
        )
    n = len(dataset)
    if not n:  # refused before a work folder is made
        raise ConfigError(f"the dataset split is empty: nothing for {command} to write (fix: data.<split>_size >= 1)")
    num_workers, progress = options.get("num_workers") or 0, options.get("progress", True)
    chunk_rows = options.get("chunk_rows") or CHUNK_ROWS
    identity = _plain({**identity, "command": command, "items": n, "batch_size": int(batch_size)})
    work = work_dir_of(out_path)
    chunks = _completed_chunks(work, identity, command)
    start = sum(len(c["served"]) for c in chunks)
    if start:
        log.info("%s: resuming %s at row %d of %d (the rows before are kept in %s)", command, out_path, start, n, work)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, range(start, n)) if start else dataset,
        batch_size=int(batch_size),
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_fn,
    )
    per_chunk = max(1, math.ceil(chunk_rows / int(batch_size))) * int(batch_size)  # whole batches per chunk
    pending: list[tuple[dict[str, torch.Tensor], list]] = []
    rows = 0  # rows in pending
    done = start
    desc = f"{command} -> {Path(out_path).name}" + (f" (resumed at row {start})" if start else "")
    try:
        with track(total=n - start, desc=desc, unit=unit, disable=not progress) as bar:
            for batch in loader:
                cols, served = encode(batch)
                pending.append((cols, list(served)))
                bar.update(len(served))
                rows += len(served)
                if rows >= per_chunk and done + rows < n:  # the split's last rows go straight into the output
                    chunks.append(_save_chunk(work, done, pending))
                    done += len(chunks[-1]["served"])
                    pending, rows = [], 0
    except BaseException:
        if done:
            log.warning(
                "%s interrupted: %s of %d %s kept in %s; the same command resumes after %s",
                command,
                "row 0" if done == 1 else f"rows 0-{done - 1}",  # not "rows 0-0"
                n,
                "is" if done == 1 else "are",
                work,
                "it" if done == 1 else "them",
            )
        raise
    if pending:
        chunks.append(_merge(done, pending))
    from zoo.data.datamodule import report_substituted_rows, substituted_rows

    columns = {k: torch.cat([c["rows"][k] for c in chunks]) for k in chunks[0]["rows"]}
    subst = substituted_rows([s for c in chunks for s in c["served"]], n)
    report_substituted_rows(subst, command, what, log)
    return columns, subst


def _merge(start: int, parts: Iterable[tuple[dict[str, torch.Tensor], list]]) -> dict[str, Any]:
    parts = list(parts)
    rows = {k: torch.cat([cols[k] for cols, _ in parts]) for k in parts[0][0]}
    return {"start": start, "rows": rows, "served": [s for _, served in parts for s in served]}


def _save_chunk(work: Path, start: int, parts: list[tuple[dict[str, torch.Tensor], list]]) -> dict[str, Any]:
    from zoo.checkpoint import atomic_torch_save

    chunk = _merge(start, parts)
    atomic_torch_save(chunk, work / _chunk_name(start))
    return chunk


def finish_rows(out_path: str | Path) -> None:
    """Remove the work folder of ``out_path`` (its output is written): only the files ``compute_rows`` writes, and
    the folder itself if nothing else is in it."""
    work = work_dir_of(out_path)
    if not work.is_dir():
        return
    for path in [*work.glob("rows_*.pt"), *work.glob(".rows_*.tmp"), work / RUN_FILE, *work.glob(f".{RUN_FILE}.*")]:
        path.unlink(missing_ok=True)
    try:
        work.rmdir()
    except OSError:
        log.warning("left %s in place: it holds files zoo did not write", work)
