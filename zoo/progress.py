"""Progress that shows in any log: a tqdm bar on a terminal, plain periodic log lines everywhere else.

When stdout is a terminal, ``track`` is ``tqdm.auto.tqdm`` itself. When it is not (a log file, CI, ``nohup``,
``| tee``), a carriage-return bar would leave nothing readable, so ``track`` returns :class:`LogLines` instead:
the same small interface (iterate it, or ``update(n)`` it inside ``with``; ``set_postfix``) writing a line such as

    tokenize -> train_image_tokens.pt: 120/2000 batch (6%) | 3.2 batch/s | eta 9m47s

to the ``zoo.progress`` logger every ``every`` items and at least every ``every_seconds`` seconds (whichever comes
first; checked as items complete), and a last ``done`` line. Hydra's job logging sends those records to stdout and
to the run's log file. The Lightning counterpart for training is ``zoo.callbacks.progress.LogProgress``.

    for batch in track(loader, desc="tokenize", unit="batch"):
        ...
    with track(total=len(captions), desc="generate", unit="img", disable=not progress) as bar:
        ...; bar.update(len(caps))

Written by hand because tqdm has no periodic plain-line mode (its ``mininterval`` still redraws one line with
``\\r``) and Lightning's bars are Lightning-only.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any, Iterable, Iterator, Optional

log = logging.getLogger("zoo.progress")

EVERY_SECONDS = 30.0  # default time between two plain lines


def stdout_is_tty() -> bool:
    """Whether stdout is an interactive terminal (False for files, pipes, CI, nohup, a missing stdout)."""
    try:
        return bool(sys.stdout is not None and sys.stdout.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def format_duration(seconds: float) -> str:
    """``42s``, ``9m47s``, ``2h05m``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_rate(per_second: float, unit: str = "it") -> str:
    """``3.2 it/s``, or ``4.1 s/it`` below one per second (as tqdm does)."""
    if not per_second or not math.isfinite(per_second) or per_second <= 0:
        return f"? {unit}/s"
    if per_second >= 1:
        return f"{per_second:.3g} {unit}/s" if per_second < 100 else f"{per_second:.0f} {unit}/s"
    return f"{1 / per_second:.3g} s/{unit}"


def plural(unit: str, n: float) -> str:
    """``unit`` for a count of ``n``: "1 caption", "256 captions", "3 batches"; abbreviations ("it", "img") and
    units already ending in s stay as they are (tqdm's convention for its own bars)."""
    if n == 1 or not unit or unit in ("it", "img") or unit.endswith("s"):
        return unit
    return unit + ("es" if unit.endswith(("ch", "sh", "x")) else "s")


def format_count(n: int, total: Optional[float], unit: str = "") -> str:
    """``120/2000 (6%)`` (``120/2000 captions (6%)`` with a unit), or ``120`` when the total is unknown."""
    unit = f" {plural(unit, total if total else n)}" if unit else ""
    if total is None or not math.isfinite(total) or total <= 0:
        return f"{n}{unit}"
    return f"{n}/{int(total)}{unit} ({int(100 * n / total)}%)"


def _value(v: Any) -> str:
    try:
        return f"{float(v):.4g}"
    except (TypeError, ValueError):
        return str(v)


class LogLines:
    """A tqdm look-alike for non-interactive output: plain ``zoo.progress`` log lines every ``every`` items and at
    least every ``every_seconds`` seconds, then a ``done`` line (kept for ``leave=False`` loops only if they took
    long enough to have logged something: nested loops stay quiet in a log when they are quick)."""

    def __init__(
        self,
        iterable: Optional[Iterable] = None,
        total: Optional[float] = None,
        desc: str = "",
        unit: str = "it",
        every: Optional[int] = None,
        every_seconds: Optional[float] = EVERY_SECONDS,
        leave: bool = True,
        logger: Optional[logging.Logger] = None,
    ):
        if every is not None and int(every) < 1:
            raise ValueError(f"every must be >= 1 (or None for time-based lines only), got {every}")
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except (TypeError, AttributeError):
                total = None
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.every = int(every) if every else None
        self.every_seconds = every_seconds
        self.leave = leave
        self.log = logger or log
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self._start = self._last_time = time.monotonic()
        self._last_n = 0
        self._lines = 0
        self._closed = False

    # --- the tqdm interface our loops use ------------------------------------------------------------------
    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("LogLines was built without an iterable; use update(n)")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        except GeneratorExit:  # the loop was left early (break or an error in its body): no "done" line
            self._closed = True
            raise
        self.close()

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError("unknown length")
        return int(self.total)

    def __enter__(self) -> "LogLines":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:  # an error inside the block: no "done" line
            self._closed = True
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        now = time.monotonic()
        if (self.every and self.n - self._last_n >= self.every) or (
            self.every_seconds is not None and now - self._last_time >= self.every_seconds
        ):
            self._emit(now)

    def set_postfix(self, ordered_dict: Optional[dict] = None, refresh: bool = True, **kwargs) -> None:
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = {"": s} if s else {}

    def set_description(self, desc: Optional[str] = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not (self.leave or self._lines):
            return
        elapsed = time.monotonic() - self._start
        rate = self.n / elapsed if elapsed > 0 else float("nan")
        self.log.info(
            "%sdone %d %s in %s (%s)%s",
            self._prefix(),
            self.n,
            plural(self.unit, self.n),
            format_duration(elapsed),
            format_rate(rate, self.unit),
            self._postfix(),
        )

    # --- lines -------------------------------------------------------------------------------------------
    def _prefix(self) -> str:
        return f"{self.desc}: " if self.desc else ""

    def _postfix(self) -> str:
        return "".join(f" | {k} {_value(v)}" if k else f" | {v}" for k, v in self.postfix.items())

    def _emit(self, now: float) -> None:
        elapsed = now - self._start
        rate = self.n / elapsed if elapsed > 0 else float("nan")  # the whole loop's mean: steady ETA
        eta = (self.total - self.n) / rate if self.total and rate and rate > 0 else None
        parts = [f"{self._prefix()}{format_count(self.n, self.total, self.unit)}", format_rate(rate, self.unit)]
        line = " | ".join(parts) + self._postfix()
        if eta is not None:
            line += f" | eta {format_duration(eta)}"
        self.log.info("%s", line)
        self._last_time, self._last_n = now, self.n
        self._lines += 1


def track(
    iterable: Optional[Iterable] = None,
    total: Optional[float] = None,
    desc: str = "",
    unit: str = "it",
    disable: bool = False,
    leave: bool = True,
    every: Optional[int] = None,
    every_seconds: Optional[float] = EVERY_SECONDS,
    plain: Optional[bool] = None,
    **tqdm_kwargs,
):
    """Progress over ``iterable`` (or ``total`` units advanced with ``update``): a tqdm bar on a terminal, plain
    periodic log lines otherwise (``plain=True``/``False`` forces one or the other). ``disable`` silences both."""
    if plain is None:
        plain = not stdout_is_tty()
    if not plain or disable:
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, leave=leave, **tqdm_kwargs)
    return LogLines(iterable, total=total, desc=desc, unit=unit, every=every, every_seconds=every_seconds, leave=leave)


__all__ = ["EVERY_SECONDS", "LogLines", "format_count", "format_duration", "format_rate", "stdout_is_tty", "track"]
