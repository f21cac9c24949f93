"""Emulated remote services: a real store with S3-like latency, a gateway with RIV-like latency."""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Callable, Mapping, Optional

from rivbulk_pipeline.core.model import GatewayResult
from rivbulk_pipeline.core.ports import ObjectStore


class LatencyStore:
    """A real ObjectStore (e.g. LocalObjectStore) whose every call first sleeps `latency`
    seconds, as a round trip to S3 would; it counts the calls per method."""

    def __init__(self, inner: ObjectStore, latency_seconds: float) -> None:
        self._inner = inner
        self._latency = latency_seconds
        self._lock = threading.Lock()
        self.calls: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._inner, name)
        if name.startswith("_") or not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.calls[name] += 1
            if self._latency > 0:
                time.sleep(self._latency)
            return method(*args, **kwargs)

        return call


class RecordingGateway:
    """A Gateway that takes `latency` seconds per register call, always succeeds and
    records when each call arrived (time.monotonic, the RateLimiter's clock)."""

    def __init__(self, latency_seconds: float) -> None:
        self._latency = latency_seconds
        self._lock = threading.Lock()
        self.entries: list[float] = []

    needs_image_bytes = True

    def register(
        self,
        user_id: str,
        image: Optional[bytes],
        properties: Mapping[str, str],
        pace: Callable[[], object] = lambda: None,
        *,
        source: object = None,
    ) -> GatewayResult:
        pace()
        arrived = time.monotonic()
        with self._lock:
            self.entries.append(arrived)
        time.sleep(self._latency)
        return GatewayResult.succeeded()

    def user_exists(self, user_id: str) -> Optional[bool]:
        return None
