"""Progress lines for long loops over particles (RELION shows them in run.out).

A loop that reads or prepares tens of thousands of particles can take many minutes before
the next log line; :class:`ProgressLog` writes ``<what>: done/total particles (rate/s, time
left)`` at most every ``every_s`` seconds, so a user can tell a slow job from a stuck one.
Short loops (under ``every_s``) write nothing: the caller logs the completion line.
"""

from __future__ import annotations

import time
from typing import Callable

from loguru import logger

__all__ = ["ProgressLog"]


class ProgressLog:
    """Counts items done and logs the rate and the time left at most every ``every_s`` seconds.

    Args:
        what: what is being done, the start of each line (``"Preparing training pairs"``).
        total: items to do in all (> 0 for a time estimate).
        every_s: seconds between lines (the first comes ``every_s`` after construction).
        unit: the items' name in the line (``"particles"``).
        clock: monotonic clock in seconds (tests pass a fake one).

    Example line: ``Preparing training pairs: 5120/20500 particles (58 particles/s, 4.4 min left)``.
    """

    def __init__(self, what: str, total: int, every_s: float = 20.0, unit: str = "particles",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self.total = int(total)
        self.every_s = float(every_s)
        self.unit = unit
        self.clock = clock
        self.done = 0
        self._t0 = clock()
        self._last = self._t0

    def advance(self, n: int) -> None:
        """Add ``n`` items done; log a line when ``every_s`` has passed since the last one."""
        self.done += int(n)
        now = self.clock()
        if now - self._last < self.every_s:
            return
        self._last = now
        rate = self.done / max(now - self._t0, 1e-9)
        left = max(0, self.total - self.done) / rate if rate > 0 else float("inf")
        logger.info(f"{self.what}: {self.done}/{self.total} {self.unit} ({rate:.0f} {self.unit}/s, {left / 60:.1f} min left)")
