"""Progress reports for long steps: done/total, rate and ETA at a steady cadence."""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional


class Progress:
    """Counts work done and calls `log` at most every `every_seconds` with a one-line summary."""

    def __init__(
        self, step: str, total: Optional[int], log: Callable[[str], None], every_seconds: float = 10.0
    ) -> None:
        self.step = step
        self.total = total
        self.done = 0
        self._log = log
        self._every = every_seconds
        self._started = time.monotonic()
        self._last_report = self._started
        self._lock = threading.Lock()

    def advance(self, count: int = 1) -> None:
        with self._lock:
            self.done += count
            now = time.monotonic()
            if now - self._last_report < self._every:
                return
            self._last_report = now
        self._log(self.summary())

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self) -> str:
        rate = self.rate
        if self.total:
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            eta_text = f"{eta:.0f}s" if eta != float("inf") else "unknown"
            share = f"{100 * self.done / self.total:.0f}%"
            return f"{self.step}: {self.done}/{self.total} ({share}) at {rate:.1f}/s, ETA {eta_text}"
        return f"{self.step}: {self.done} done at {rate:.1f}/s"
