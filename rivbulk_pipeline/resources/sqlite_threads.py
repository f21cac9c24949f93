"""One SQLite connection per thread, for the embedded adapters (registry, history).

sqlite3 connections must not cross threads, nor a fork: a child process that used or closed its
parent's connection could corrupt the parent's locks. Each thread opens its own on first use;
`close()` closes them all at teardown, from whichever thread runs it.
"""
from __future__ import annotations

import os
import sqlite3
import threading
from typing import Callable

# Connections a forked child inherited: kept referenced so that they are never closed (nor
# garbage-collected, which closes them) in the child.
_INHERITED: list[sqlite3.Connection] = []


class ThreadConnections:
    def __init__(self) -> None:
        self._local = threading.local()
        self._guard = threading.Lock()
        self._opened: list[tuple[sqlite3.Connection, int]] = []  # with the pid that opened each

    @property
    def connections(self) -> list[sqlite3.Connection]:
        """The connections this process opened and has not closed."""
        return [conn for conn, pid in self._opened if pid == os.getpid()]

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
            self._opened.append((conn, os.getpid()))
        return conn

    def close(self) -> None:
        """Close every connection this process opened through this object (never a parent's)."""
        with self._guard:
            for conn in self.connections:
                conn.close()
            _INHERITED.extend(conn for conn, pid in self._opened if pid != os.getpid())
            self._opened.clear()
            self._local = threading.local()
