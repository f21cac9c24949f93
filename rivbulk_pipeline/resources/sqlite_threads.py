"""One SQLite connection per thread, for the embedded adapters (store, registry, history).

sqlite3 connections must not cross threads, nor a fork: a child process that used or closed its
parent's connection could corrupt the parent's locks. Each thread opens its own on first use.
A worker pool's threads end with each step; their connections (each with its page cache and
open files) are closed when the next connection is opened, and `close()` closes the rest at
teardown. Openers must pass `check_same_thread=False` so that another thread may close them.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from typing import Callable, NamedTuple

# Connections a forked child inherited: kept referenced so that they are never closed (nor
# garbage-collected, which closes them) in the child.
_INHERITED: list[sqlite3.Connection] = []


def is_busy(error: sqlite3.OperationalError) -> bool:
    """Whether SQLite refused because another connection holds a lock (worth waiting for)."""
    name = getattr(error, "sqlite_errorname", "")  # Python >= 3.11
    return name in ("SQLITE_BUSY", "SQLITE_LOCKED") or "locked" in str(error) or "busy" in str(error)


def use_wal(conn: sqlite3.Connection, timeout_seconds: float) -> None:
    """Switch the connection's file to WAL (persistent: readers never block the writer).
    Switching does not wait on the busy handler: connections opening a new file together get
    "database is locked" at once. So wait here, within the connection's busy timeout."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if not is_busy(error) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.01, 0.05))


class _Opened(NamedTuple):
    conn: sqlite3.Connection
    pid: int
    thread: threading.Thread


class ThreadConnections:
    def __init__(self) -> None:
        self._local = threading.local()
        self._guard = threading.Lock()
        self._opened: list[_Opened] = []

    @property
    def connections(self) -> list[sqlite3.Connection]:
        """The connections this process opened and has not closed."""
        with self._guard:
            return [o.conn for o in self._opened if o.pid == os.getpid()]

    def get(self, open_connection: Callable[[], sqlite3.Connection]) -> sqlite3.Connection:
        """This thread's connection, opened by `open_connection` the first time."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            if self._local.pid == os.getpid():
                return conn
            _INHERITED.append(conn)
        conn = open_connection()
        self._local.conn, self._local.pid = conn, os.getpid()
        with self._guard:
            self._close_where(lambda o: not o.thread.is_alive())
            self._opened.append(_Opened(conn, os.getpid(), threading.current_thread()))
        return conn

    def close(self) -> None:
        """Close every connection this process opened through this object (never a parent's)."""
        with self._guard:
            self._close_where(lambda o: True)
            self._local = threading.local()

    def _close_where(self, done: Callable[[_Opened], bool]) -> None:
        kept = []
        for opened in self._opened:
            if opened.pid != os.getpid():
                _INHERITED.append(opened.conn)
            elif done(opened):
                opened.conn.close()
            else:
                kept.append(opened)
        self._opened = kept
