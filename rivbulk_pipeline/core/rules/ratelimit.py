"""Rate limiting and retry delays for calls to the identity gateway."""

from __future__ import annotations

import collections
import random
import threading
import time
from typing import Callable


class RateLimiter:
    """Thread-safe limiter: at most `rate_per_second` starts per second, fractions included.

    Two rules on the *actual* start times: starts are spaced at least 1/rate apart (smooth,
    no bursts), and any `calls` consecutive starts span at least `calls / rate + margin`
    seconds, where `calls / rate` is the shortest whole number of seconds holding a whole
    number of calls (5/s: 5 calls in 1 s; 1.5/s: 3 calls in 2 s). So no one-second window
    sees more than `rate` calls for a whole rate, and a fractional rate is kept exactly on
    average instead of being rounded down. The margin absorbs the few milliseconds between
    `acquire` returning and the request reaching the gateway.
    """

    def __init__(
        self,
        rate_per_second: float,
        margin_seconds: float = 0.03,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        follows_another: bool = False,
    ) -> None:
        """`follows_another`: this limiter takes over from another that may have called until
        just now (the previous holder of the gateway pool, in another process), so it counts
        its window as full from the start and makes its first call one window later."""
        if rate_per_second <= 0:
            raise ValueError(f"rate_per_second must be > 0, got {rate_per_second}")
        self.rate = rate_per_second
        self._spacing = 1.0 / rate_per_second
        seconds = whole_seconds_for_whole_calls(rate_per_second)
        self._window = seconds + margin_seconds
        self._starts: collections.deque[float] = collections.deque(maxlen=max(1, round(rate_per_second * seconds)))
        self._next_start = 0.0
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep
        if follows_another:
            self._starts.extend([clock()] * self._starts.maxlen)

    def acquire(self) -> float:
        """Block until a call may start; return its start time (on the limiter's clock)."""
        while True:
            with self._lock:
                now = self._clock()
                wait = self._next_start - now
                if len(self._starts) == self._starts.maxlen:
                    wait = max(wait, self._starts[0] + self._window - now)
                if wait <= 0:
                    self._starts.append(now)
                    self._next_start = now + self._spacing
                    return now
            self._sleep(wait)


def whole_seconds_for_whole_calls(rate_per_second: float, longest: int = 60) -> int:
    """The fewest whole seconds in which `rate_per_second` makes a whole number of calls
    (1 for 5/s, 2 for 1.5/s, 4 for 0.25/s); `longest` when there is none that short."""
    for seconds in range(1, longest + 1):
        calls = rate_per_second * seconds
        if calls >= 1 and abs(calls - round(calls)) < 1e-9:
            return seconds
    return longest


def backoff_delay(
    attempt: int, base_seconds: float = 0.5, cap_seconds: float = 30.0, rng: random.Random | None = None
) -> float:
    """Exponential backoff with full jitter for retry number `attempt` (1-based)."""
    ceiling = min(cap_seconds, base_seconds * (2 ** (attempt - 1)))
    return (rng or random).uniform(0, ceiling)


def max_calls_in_any_window(start_times: list[float], window_seconds: float = 1.0) -> int:
    """The largest number of starts inside any half-open window [t, t + window) (for checks and benchmarks)."""
    times = sorted(start_times)
    best, left = 0, 0
    for right, t in enumerate(times):
        while t - times[left] >= window_seconds:
            left += 1
        best = max(best, right - left + 1)
    return best


class InFlightGate:
    """Keeps as many registrations in flight as the configured rate needs at the gateway's
    measured speed (Little's law: rate x latency, plus headroom), never more than `bound`.

    Calls are paced by the RateLimiter; this gate only decides how many objects may be between
    reading their image and getting their answer, so a slow gateway gets enough calls in flight
    to reach the rate, and a fast one does not have images waiting in memory for their turn.
    """

    def __init__(self, rate_per_second: float, bound: int, headroom: float = 1.25, smoothing: float = 0.2) -> None:
        self.rate = rate_per_second
        self.bound = max(1, bound)
        self._headroom = headroom
        self._smoothing = smoothing
        self._latency: float | None = None  # exponentially weighted mean of answered calls
        self._active = 0
        self.peak = 0
        self._cond = threading.Condition()

    @property
    def limit(self) -> int:
        latency = self._latency if self._latency is not None else 1.0  # until measured: a second's worth
        wanted = int(self.rate * latency * self._headroom) + 2
        return min(self.bound, wanted)

    @property
    def latency(self) -> float | None:
        return self._latency

    def __enter__(self) -> "InFlightGate":
        with self._cond:
            self._cond.wait_for(lambda: self._active < self.limit)
            self._active += 1
            self.peak = max(self.peak, self._active)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify_all()

    def observe(self, latency_seconds: float) -> None:
        """One answered call's latency (from leaving to its answer)."""
        with self._cond:
            if self._latency is None:
                self._latency = latency_seconds
            else:
                self._latency += self._smoothing * (latency_seconds - self._latency)
            self._cond.notify_all()
