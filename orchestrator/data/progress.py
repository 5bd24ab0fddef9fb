"""Progress of long data jobs: a live bar with rates on a terminal, a line every so often in a batch log."""

from __future__ import annotations

import sys
import time
from typing import IO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

LOG_INTERVAL_S = 30.0


def _si(value: float, unit: str) -> str:
    """``2.70k docs/s``; byte units take the prefix: ``13.4 MB/s``."""
    for prefix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            number = f"{value / scale:.3g}"
            return f"{number} {prefix}{unit}" if unit.startswith("B") else f"{number}{prefix} {unit}"
    return f"{value:.0f} {unit}"


class RateProgress:
    """Counts named quantities against a total of input bytes and shows their rates.

    ``counters`` maps a name to how it is shown, e.g. ``{"docs": "docs/s", "text_bytes": "B/s"}``.
    """

    def __init__(
        self,
        description: str,
        total_bytes: int,
        counters: dict[str, str],
        stream: IO[str] | None = None,
        live: bool | None = None,
    ) -> None:
        self.description = description
        self.counters = counters
        self.values = {name: 0 for name in counters}
        self.done_bytes = 0
        self.total_bytes = total_bytes
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self._last_log = self.start
        self._live = self.stream.isatty() if live is None else live
        self._progress: Progress | None = None
        if self._live:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rates]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._task = self._progress.add_task(description, total=total_bytes or None, rates="")
            self._progress.start()

    def rates(self) -> dict[str, float]:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        return {name: value / elapsed for name, value in self.values.items()}

    def line(self) -> str:
        rates = self.rates()
        return ", ".join(_si(rates[name], unit) for name, unit in self.counters.items())

    def update(self, done_bytes: int, **increments: int) -> None:
        self.done_bytes += done_bytes
        for name, value in increments.items():
            self.values[name] += value
        now = time.monotonic()
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done_bytes, rates=self.line())
        elif now - self._last_log >= LOG_INTERVAL_S:
            self._last_log = now
            share = f"{100 * self.done_bytes / self.total_bytes:.1f}% " if self.total_bytes else ""
            print(f"{self.description}: {share}{self.line()}", file=self.stream, flush=True)

    def close(self) -> float:
        """Stop the display; return the elapsed seconds."""
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done_bytes, rates=self.line())
            self._progress.stop()
            self._progress = None
        return time.monotonic() - self.start
