"""zoo.loggers.ResumableCSVLogger.drop_rows_from: what a resume removes from metrics.csv before it logs."""

from __future__ import annotations

import csv

from zoo.loggers import ResumableCSVLogger

ROWS = [  # epoch, step, train/loss, val/loss, test/loss
    ("0", "0", "1.0", "", ""),
    ("0", "4", "0.8", "", ""),
    ("0", "5", "", "0.7", ""),
    ("0", "6", "0.6", "", ""),
    ("1", "6", "", "", "0.65"),  # the finished run's test evaluation, at its last step
    ("1", "8", "0.5", "0.55", ""),
]


def test_rows_past_the_checkpoint_go_and_the_test_rows_stay(tmp_path):
    lg = ResumableCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    path = tmp_path / "csv" / "metrics.csv"
    path.parent.mkdir(parents=True)
    fields = ["epoch", "step", "train/loss", "val/loss", "test/loss"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        w.writerows(ROWS)
    # a resume from step 6: the rows of steps 6 and 8 are logged again by the resumed run, the test row is not
    assert lg.drop_rows_from(6) == 2
    with open(path, newline="") as f:
        left = [(r["step"], r["train/loss"], r["val/loss"], r["test/loss"]) for r in csv.DictReader(f)]
    assert left == [("0", "1.0", "", ""), ("4", "0.8", "", ""), ("5", "", "0.7", ""), ("6", "", "", "0.65")]
    assert lg.drop_rows_from(6) == 0  # nothing left to drop: the file is not rewritten
