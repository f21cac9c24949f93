"""A real Postgres server for tests, from the `pgserver` wheel's binaries (no apt needed).

Listens on 127.0.0.1 only (TCP, as a Dagster deployment reaches its database; no Unix socket),
data in a temporary folder, trust authentication for the loopback. pgserver's own
`get_server` listens on a Unix socket only, so we drive its bundled `initdb`/`pg_ctl`
ourselves. Postgres refuses to run as root: as root the server runs as the `pgserver`
system user, the way pgserver does it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from pgserver._commands import POSTGRES_BIN_PATH
from pgserver.utils import ensure_prefix_permissions, ensure_user_exists

SERVICE_USER = "pgserver"


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    db_name: str
    data_dir: Path

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.db_name}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(args: list[str], run_as: Optional[str]) -> None:
    result = subprocess.run(args, user=run_as, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{Path(args[0]).name} failed ({result.returncode}): {result.stderr or result.stdout}")


@contextlib.contextmanager
def running_postgres(db_name: str = "dagster") -> Iterator[PostgresServer]:
    """Start a fresh cluster in a new temporary folder, create `db_name`, yield the server; stop
    it and delete the folder after. Not under pytest's base temp: as root, the server's user must
    traverse the folder's parents, and pytest (of any concurrent session) resets its base to 0700."""
    with tempfile.TemporaryDirectory(prefix="rivbulk-pg-") as folder:
        with _cluster(Path(folder), db_name) as server:
            yield server


@contextlib.contextmanager
def _cluster(folder: Path, db_name: str) -> Iterator[PostgresServer]:
    data_dir = folder / "pgdata"
    data_dir.mkdir()
    run_as = None
    if os.geteuid() == 0:
        run_as = SERVICE_USER
        entry = ensure_user_exists(SERVICE_USER)
        folder.chmod(0o755)  # mkdtemp makes it 0700
        ensure_prefix_permissions(data_dir)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        os.chown(data_dir, entry.pw_uid, entry.pw_gid)
    bin_dir = POSTGRES_BIN_PATH
    _run([str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres", "--auth=trust", "--encoding=utf8"], run_as)
    port = _free_port()
    log = data_dir / "server.log"
    options = (
        f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories='' -c max_connections=200 -c fsync=off"
    )
    _run(
        [str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-o", options, "-l", str(log), "-w", "-t", "60", "start"], run_as
    )
    try:
        _run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", db_name], run_as)
        yield PostgresServer("127.0.0.1", port, "postgres", db_name, data_dir)
    finally:
        _run([str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-m", "immediate", "-w", "stop"], run_as)
