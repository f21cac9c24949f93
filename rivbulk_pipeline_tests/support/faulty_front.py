"""A real HTTP server on 127.0.0.1 in front of moto's server that answers S3 errors or cuts bodies,
as a plan says, and an S3 store that goes through it."""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Union

from rivbulk_pipeline.resources.aws import AwsClients
from rivbulk_pipeline.resources.object_store import S3ObjectStore

# What the front server does with request number n (0-based): forward it (None), cut the
# forwarded body in half ("truncate") or send none of it ("hangup"), or answer an S3 error
# ((status, code)).
Action = Union[None, str, tuple[int, str]]
Plan = Callable[[int, BaseHTTPRequestHandler], Action]

S3_ERROR_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>test fault {n}</Message>'
    "<RequestId>TESTREQ{n}</RequestId><HostId>front</HostId></Error>"
)


class FaultyFront:
    """A real HTTP server on 127.0.0.1 in front of the moto server, following a plan."""

    def __init__(self, upstream: tuple[str, int], plan: Plan) -> None:
        self.upstream = upstream
        self.plan = plan
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._lock = threading.Lock()
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_any(self) -> None:
                front.handle(self)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = handle_any

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        with self._lock:
            n = len(self.requests)
            self.requests.append((h.command, h.path, dict(h.headers)))
        action = self.plan(n, h)
        if isinstance(action, tuple):
            status, code = action
            data = b"" if h.command == "HEAD" else S3_ERROR_XML.format(code=code, n=n).encode()
            h.send_response(status)
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            return
        upstream = http.client.HTTPConnection(*self.upstream, timeout=30)
        headers = {k: v for k, v in h.headers.items() if k.lower() not in ("expect", "connection")}
        upstream.request(h.command, h.path, body=body, headers=headers)
        response = upstream.getresponse()
        data = response.read()
        upstream.close()
        h.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                h.send_header(name, value)
        length = response.getheader("Content-Length", "0") if h.command == "HEAD" else str(len(data))
        h.send_header("Content-Length", length)
        h.end_headers()
        if h.command == "HEAD":
            return
        if action in ("truncate", "hangup"):  # promise the whole body, send half or nothing
            h.wfile.write(data[: len(data) // 2] if action == "truncate" else b"")
            h.wfile.flush()
            h.close_connection = True
            return
        h.wfile.write(data)

    def object_gets(self) -> list[dict[str, str]]:
        """Headers of the GETs of object bodies (not of ?tagging or listings)."""
        return [headers for method, path, headers in self.requests if method == "GET" and "?" not in path]


def through(server: FaultyFront, max_attempts: int) -> S3ObjectStore:
    return S3ObjectStore(aws=AwsClients(region_name="us-east-1", endpoint_url=server.url, max_attempts=max_attempts))
