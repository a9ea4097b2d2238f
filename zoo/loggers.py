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

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
