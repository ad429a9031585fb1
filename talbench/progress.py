"""Progress of a long loop (training steps, inference videos, download bytes), readable in any log.

On a terminal it is a tqdm bar, as before. When stderr is not a terminal (a file, DVC, Airflow's
task view) a bar's carriage-return redraws pile up into one huge physical line, so instead the
reporter writes a plain line at most every `PROGRESS_SECONDS` (environment variable
`TALBENCH_PROGRESS_SECONDS` overrides it) and one summary line when the loop ends, e.g.

    train: epoch 3/30, step 120/900 (13%), loss 1.234 (cls 0.8, reg 0.4), lr 1.0e-03, 2.1 it/s, ETA 6m10s
    train: 900 steps in 7m02s (2.13 it/s), final loss 0.512

No carriage returns, no ANSI escape codes: each line ends in a newline.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

PROGRESS_SECONDS = 5.0  # the least time between two plain progress lines
PROGRESS_ENV = "TALBENCH_PROGRESS_SECONDS"
TTY_MININTERVAL_S = 0.1


def progress_seconds() -> float:
    """The interval between two plain progress lines: $TALBENCH_PROGRESS_SECONDS, else PROGRESS_SECONDS."""
    text = os.environ.get(PROGRESS_ENV, "").strip()
    try:
        value = float(text) if text else PROGRESS_SECONDS
    except ValueError:
        return PROGRESS_SECONDS
    return value if value >= 0 and value == value else PROGRESS_SECONDS  # not negative, not NaN


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def format_duration(seconds: float) -> str:
    """`0.4s`, `25s`, `6m10s`, `1h05m`."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _number(value: float) -> str:
    """About three significant digits: `0.073`, `0.21`, `2.13`, `12.1`, `431`."""
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}" if value >= 0.1 else f"{value:.2g}"


class Progress:
    """A progress reporter over `total` units (None: unknown) that starts at `initial`.

    `label` starts every plain line (`train`, `inference`, `download thumos.zip`); `unit` is `it`,
    a noun (`video`, pluralised in plain lines) or `B` (bytes, shown in MB); `counter` puts a noun
    before the count instead (`step 120/900`). `update(n, desc=..., detail=...)` advances it: `desc`
    comes before the count (`epoch 3/30`), `detail` after it (`loss 1.234, lr 1.0e-03`).
    `close(detail)` ends it; in plain mode with a summary line. Disabled, it does nothing.
    `stream`, `tty`, `interval` and `clock` default to stderr, stderr.isatty(), progress_seconds()
    and time.monotonic; tests set them.
    """

    def __init__(self, label: str, total: int | None, *, unit: str = "it", counter: str | None = None,
                 initial: int = 0, enabled: bool = True, stream: IO[str] | None = None, tty: bool | None = None,
                 interval: float | None = None, clock: Callable[[], float] | None = None) -> None:
        self.label, self.total, self.unit, self.counter = label, total, unit, counter
        self.n = self.initial = initial
        self.enabled = enabled
        self.bar = None
        self.closed = False
        self._desc = self._detail = ""
        if not enabled:
            return
        self.stream = stream if stream is not None else sys.stderr
        self.tty = is_terminal(self.stream) if tty is None else tty
        self.interval = progress_seconds() if interval is None else interval
        self.clock = clock or time.monotonic
        self.started = self.last = self.clock()
        self.lock = threading.Lock()  # boto3 calls a download's callback from several threads
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=label, unit=unit, unit_scale=unit == "B",
                            dynamic_ncols=True, mininterval=TTY_MININTERVAL_S, file=self.stream)

    def update(self, n: int = 1, *, desc: str | None = None, detail: str | None = None) -> None:
        if not self.enabled or self.closed:
            return
        with self.lock:
            self.n += n
            if desc is not None:
                self._desc = desc
            if detail is not None:
                self._detail = detail
            if self.bar is not None:
                if desc is not None:
                    self.bar.set_description_str(f"{self.label} {desc}", refresh=False)
                if detail is not None:
                    self.bar.set_postfix_str(detail, refresh=False)
                self.bar.update(n)
                return
            now = self.clock()
            if now - self.last >= self.interval:
                self.last = now
                self._write(self.line(now))

    def line(self, now: float | None = None) -> str:
        """The plain progress line as of `now`."""
        now = self.clock() if now is None else now
        parts = [self._desc] if self._desc else []
        parts.append(self._position())
        if self._detail:
            parts.append(self._detail)
        rate = self._rate(now)
        if rate:
            parts.append(self._speed(rate))
            if self.total is not None and self.n < self.total:
                parts.append(f"ETA {format_duration((self.total - self.n) / rate)}")
        return f"{self.label}: " + ", ".join(parts)

    def close(self, detail: str | None = None) -> None:
        """End the bar; in plain mode write the summary line (`train: 900 steps in 7m02s (2.13 it/s), <detail>`)."""
        if not self.enabled or self.closed:
            return
        with self.lock:
            self.closed = True
            if self.bar is not None:
                self.bar.close()
                return
            now = self.clock()
            elapsed = now - self.started
            summary = f"{self.label}: {self._amount(self.n - self.initial)} in {format_duration(elapsed)}"
            rate = self._rate(now)
            if rate:
                summary += f" ({self._speed(rate)})"
            if self.initial:
                summary += f", resumed at {self._amount(self.initial)}"
            if detail:
                summary += f", {detail}"
            self._write(summary)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        elif self.enabled and not self.closed:  # a failed loop: its error says what happened, not a summary
            self.closed = True
            if self.bar is not None:
                self.bar.close()

    # formatting

    def _write(self, line: str) -> None:
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken log must not stop the work it reports on
            pass

    def _rate(self, now: float) -> float:
        elapsed = now - self.started
        done = self.n - self.initial
        return done / elapsed if elapsed > 0 and done > 0 else 0.0

    def _noun(self) -> str:
        return self.unit if self.unit == "it" else f"{self.unit}s"

    def _speed(self, rate: float) -> str:
        if self.unit == "B":
            return f"{_number(rate / 1e6)} MB/s"
        return f"{_number(rate)} {self._noun()}/s"

    def _amount(self, n: int) -> str:
        if self.unit == "B":
            return f"{n / 1e6:.1f} MB"
        return f"{n} {self.counter}s" if self.counter else f"{n} {self._noun()}"

    def _position(self) -> str:
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        if self.unit == "B":
            count = f"{self.n / 1e6:.1f}/{self.total / 1e6:.1f} MB" if self.total is not None else f"{self.n / 1e6:.1f} MB"
            return count + pct
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        return f"{self.counter} {count}{pct}" if self.counter else f"{count} {self._noun()}{pct}"
