"""Polling until something happens, for the tests that drive real processes."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Optional, TypeVar

import pytest
import requests

if TYPE_CHECKING:
    from .dev_server import DevServer

T = TypeVar("T")


def wait_for(
    what: str,
    check: Callable[[], Optional[T]],
    *,
    timeout: Optional[float] = None,
    deadline: Optional[float] = None,
    interval: float = 1.0,
    server: Optional[DevServer] = None,
) -> T:
    """Poll `check` until it returns a truthy value, and return that value. Time runs out `timeout`
    seconds from now, or at `deadline` (a `time.monotonic()`, shared by several waits). With a
    `server` (`rivbulk dev`), fail as soon as its process exits, and take a failed request as "not
    yet": its webserver is not up yet, or restarting."""
    started = time.monotonic()
    if deadline is None:
        assert timeout is not None, "wait_for needs a timeout or a deadline"
        deadline = started + timeout
    while True:
        if server is not None and server.proc.poll() is not None:
            pytest.fail(f"rivbulk dev exited with code {server.proc.returncode} while waiting for {what}")
        try:
            value = check()
        except requests.RequestException:
            if server is None:
                raise
            value = None
        if value:
            if server is not None:
                print(f"[{time.monotonic() - server.started:6.1f}s] {what}: done")  # shown on failure
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {time.monotonic() - started:.0f}s waiting for {what}")
        time.sleep(interval)
