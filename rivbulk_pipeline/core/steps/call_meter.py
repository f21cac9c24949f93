"""What indexing measured of the gateway: latency, calls in flight and the rate achieved."""

from __future__ import annotations

import collections
import math
import threading
import time
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class GatewayFigures:
    calls: int
    latency_mean_seconds: float
    latency_p95_seconds: float
    in_flight_mean: float  # calls in flight on average while calls were going out
    in_flight_peak: int
    achieved_rate: float  # calls per second, first call to last
    configured_rate: float
    bound: int  # most calls the load may have in flight (RIVBULK_INDEX_CONCURRENCY)
    most_in_one_second: int  # most calls sent within any one-second window

    @property
    def bound_limits(self) -> bool:
        """The rate was missed because the bound capped the calls in flight, not the limiter."""
        needed = self.configured_rate * self.latency_mean_seconds
        return self.calls > 1 and self.achieved_rate < 0.95 * self.configured_rate and needed > self.bound * 0.9

    def as_metadata(self) -> dict[str, object]:
        return {
            "gateway_calls": self.calls,
            "gateway_latency_mean_seconds": round(self.latency_mean_seconds, 3),
            "gateway_latency_p95_seconds": round(self.latency_p95_seconds, 3),
            "gateway_calls_in_flight_mean": round(self.in_flight_mean, 1),
            "gateway_calls_in_flight_peak": self.in_flight_peak,
            "gateway_achieved_rate_per_second": round(self.achieved_rate, 2),
            "gateway_most_calls_in_one_second": self.most_in_one_second,
            "gateway_in_flight_bound": self.bound,
            "gateway_rate_limited_by_bound": self.bound_limits,
        }

    def summary(self) -> str:
        text = (
            f"gateway: {self.calls} calls, latency {self.latency_mean_seconds:.2f}s mean /"
            f" {self.latency_p95_seconds:.2f}s p95, {self.in_flight_mean:.1f} in flight on average"
            f" (peak {self.in_flight_peak}, bound {self.bound}), {self.achieved_rate:.2f}/s achieved of"
            f" {self.configured_rate:g}/s configured"
        )
        if self.bound_limits:
            needed = math.ceil(self.configured_rate * self.latency_mean_seconds * 1.25) + 2
            text += (
                f"; the bound limited the rate: at this latency {self.configured_rate:g}/s needs about {needed} calls"
                " in flight, so raise RIVBULK_INDEX_CONCURRENCY"
            )
        return text


class CallMeter:
    """Thread-safe record of each gateway call's start and end (monotonic seconds)."""

    def __init__(self, configured_rate: float, bound: int) -> None:
        self._rate = configured_rate
        self._bound = bound
        self._lock = threading.Lock()
        self._latencies: list[float] = []
        self._first_start: Optional[float] = None
        self._last_start: Optional[float] = None
        self._busy_seconds = 0.0
        self._active = 0
        self._peak = 0
        self._last_second: collections.deque[float] = collections.deque()  # starts within 1 s of the newest
        self._most_in_one_second = 0

    def started(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._first_start = now if self._first_start is None else self._first_start
            self._last_start = now
            self._active += 1
            self._peak = max(self._peak, self._active)
            self._last_second.append(now)
            while now - self._last_second[0] >= 1.0:
                self._last_second.popleft()
            self._most_in_one_second = max(self._most_in_one_second, len(self._last_second))
        return now

    def ended(self, started_at: float) -> float:
        """Record the end of the call started at `started_at`; return its latency."""
        latency = time.monotonic() - started_at
        with self._lock:
            self._active -= 1
            self._latencies.append(latency)
            self._busy_seconds += latency
        return latency

    def figures(self) -> GatewayFigures:
        with self._lock:
            latencies = sorted(self._latencies)
            calls = len(latencies)
            span = (self._last_start - self._first_start) if calls > 1 else 0.0
            mean = sum(latencies) / calls if calls else 0.0
            p95 = latencies[min(calls - 1, int(math.ceil(0.95 * calls)) - 1)] if calls else 0.0
            whole = span + (latencies[-1] if latencies else 0.0)
            return GatewayFigures(
                calls=calls,
                latency_mean_seconds=mean,
                latency_p95_seconds=p95,
                in_flight_mean=self._busy_seconds / whole if whole > 0 else float(calls),
                in_flight_peak=self._peak,
                # calls - 1 intervals between the first start and the last
                achieved_rate=(calls - 1) / span if span > 0 else 0.0,
                configured_rate=self._rate,
                bound=self._bound,
                most_in_one_second=self._most_in_one_second,
            )
