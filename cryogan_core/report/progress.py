"""Progress lines for long loops over particles (RELION shows them in run.out).

A loop that reads or prepares tens of thousands of particles can take many minutes before
the next log line; :class:`ProgressLog` writes ``<what> done/total particles (rate/s, time
left)`` at most every ``every_s`` seconds, so a user can tell a slow job from a stuck one.
Short loops (under ``every_s``) write nothing unless the caller asks for a line
(:meth:`ProgressLog.log`).
"""

from __future__ import annotations

import math
import time
from typing import Callable

from loguru import logger

__all__ = ["ProgressLog", "eta_seconds"]


def eta_seconds(steps_done: int, steps_total: int, elapsed_s: float) -> float:
    """Estimated time left (s) from the mean time per step so far (inf before the first step)."""
    if steps_done <= 0:
        return math.inf
    return elapsed_s / steps_done * max(0, steps_total - steps_done)


class ProgressLog:
    """Counts items done and logs the rate and the time left at most every ``every_s`` seconds.

    Args:
        what: the start of each line, e.g. ``"Preparing training pairs:"``.
        total: items to do in all (> 0 for a time estimate).
        every_s: seconds between lines (the first comes ``every_s`` after construction;
            ``math.inf``: only the lines asked for with :meth:`log`).
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
        self.t0 = clock()
        self._last = self.t0

    def elapsed_s(self) -> float:
        """Seconds since construction."""
        return self.clock() - self.t0

    def advance(self, n: int) -> None:
        """Add ``n`` items done; log a line when ``every_s`` has passed since the last one."""
        self.done += int(n)
        if self.clock() - self._last >= self.every_s:
            self.log()

    def log(self) -> None:
        """Log ``<what> done/total <unit> (rate <unit>/s, time left)`` now."""
        self._last = self.clock()
        elapsed = max(self._last - self.t0, 1e-9)
        left = eta_seconds(self.done, self.total, elapsed)
        logger.info(f"{self.what} {self.done}/{self.total} {self.unit} ({self.done / elapsed:.0f} {self.unit}/s, {left / 60:.1f} min left)")
