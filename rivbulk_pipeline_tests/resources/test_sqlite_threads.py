"""One SQLite connection per thread; a forked child opens its own and never closes its parent's."""

from __future__ import annotations

import os
import sqlite3
import threading

import pytest

from rivbulk_pipeline.resources.sqlite_threads import ThreadConnections, use_wal


def _opener(path: str):
    return lambda: sqlite3.connect(path, check_same_thread=False)


def test_one_connection_per_thread_and_close_closes_them_all(tmp_path):
    threads = ThreadConnections()
    open_connection = _opener(str(tmp_path / "t.db"))
    mine = threads.get(open_connection)
    assert threads.get(open_connection) is mine
    theirs = []
    worker = threading.Thread(target=lambda: theirs.append(threads.get(open_connection)))
    worker.start()
    worker.join()
    assert theirs[0] is not mine and threads.connections == [mine, theirs[0]]
    threads.close()
    assert threads.connections == []
    for conn in (mine, theirs[0]):
        with pytest.raises(sqlite3.ProgrammingError):  # closed
            conn.execute("SELECT 1")
    assert threads.get(open_connection) is not mine  # a new one after close


def test_a_finished_threads_connection_is_closed_when_the_next_one_opens(tmp_path):
    threads = ThreadConnections()
    open_connection = _opener(str(tmp_path / "t.db"))
    finished = []
    worker = threading.Thread(target=lambda: finished.append(threads.get(open_connection)))
    worker.start()
    worker.join()
    assert threads.connections == finished
    mine = threads.get(open_connection)
    assert threads.connections == [mine]
    with pytest.raises(sqlite3.ProgrammingError):  # closed
        finished[0].execute("SELECT 1")
    threads.close()


def test_a_forked_child_opens_its_own_and_leaves_the_parents_open(tmp_path):
    threads = ThreadConnections()
    open_connection = _opener(str(tmp_path / "t.db"))
    parents = threads.get(open_connection)
    parents.execute("CREATE TABLE t (x)")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running the parent's cleanup
        ok = threads.get(open_connection) is not parents and threads.connections != [parents]
        threads.close()
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    assert parents.execute("SELECT count(*) FROM t").fetchone() == (0,)  # still open in the parent
    threads.close()


def _open_new_files_together(tmp_path, switch, rounds: int) -> list[str]:
    """Eight connections at once open each of `rounds` new files and `switch` it to WAL; the errors."""
    failures: list[str] = []
    for n in range(rounds):
        db = str(tmp_path / f"new-{n}.sqlite")
        start = threading.Barrier(8)

        def open_one(db: str = db, start: threading.Barrier = start) -> None:
            conn = sqlite3.connect(db, timeout=10, isolation_level=None)
            try:
                start.wait()
                switch(conn)
                conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
            except sqlite3.OperationalError as error:
                failures.append(str(error))
            finally:
                conn.close()

        threads = [threading.Thread(target=open_one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        if failures:
            break
    return failures


def test_connections_opening_a_new_file_together_all_switch_it_to_wal(tmp_path):
    # The failure use_wal exists for: the switch does not wait on the busy handler.
    (tmp_path / "plain").mkdir()
    failures = _open_new_files_together(tmp_path / "plain", lambda c: c.execute("PRAGMA journal_mode = WAL"), 2000)
    assert failures and set(failures) == {"database is locked"}
    # use_wal waits instead: a hundred rounds and no connection fails.
    (tmp_path / "use_wal").mkdir()
    assert _open_new_files_together(tmp_path / "use_wal", lambda c: use_wal(c, 10), 100) == []
