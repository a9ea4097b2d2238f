"""Loggers with the behaviour a resumed run needs.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when a new run opens the same directory, so resuming a
run in place (``ckpt_path=last`` with the same ``hydra.run.dir``) silently lost every metric logged before the
interruption. ``ResumableCSVLogger`` keeps the file and appends to it, reading its header so that new columns
rewrite it once rather than misaligning rows.
"""

from __future__ import annotations

import csv
import os

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        # Keep metrics.csv (the parent deletes it); remember its columns so that appended rows line up.
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(set(self.metrics_keys) | set(header))


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that appends to an existing ``metrics.csv`` instead of deleting it (same arguments)."""

    def drop_rows_from(self, step: int) -> int:
        """Remove the rows of ``metrics.csv`` logged at ``step`` or later; returns how many were removed.

        A run killed after its checkpoint (``kill -9``, a node failure: nothing saved since) had already written rows
        for the steps after it; the resume from that checkpoint trains and logs those steps again, so appending
        left each of them twice (and a plot drew both). Called before the resumed run logs anything."""
        path = os.path.join(self.log_dir, ExperimentWriter.NAME_METRICS_FILE)
        if not os.path.isfile(path):
            return 0
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = reader.fieldnames or [], list(reader)
        keep = [r for r in rows if not (r.get("step") or "").isdigit() or int(r["step"]) < step or _test_row(r)]
        if len(keep) == len(rows):
            return 0
        tmp = f"{path}.tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(keep)
        os.replace(tmp, path)  # a kill now leaves the old file or the new one, never half of one
        return len(rows) - len(keep)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def _test_row(row: dict) -> bool:
    """Whether a metrics.csv row holds only ``test/*`` metrics (besides epoch and step)."""
    filled = [k for k, v in row.items() if k not in ("epoch", "step") and v not in (None, "")]
    return bool(filled) and all(k.startswith("test/") for k in filled)
