"""A real HTTP S3 endpoint for tests: moto in server mode on loopback, with a request log.

The WSGI app is wrapped so that tests can count requests by method and key (e.g. the GETs of a
feature set) across every process that talks to the endpoint, Ray workers included.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import unquote

from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Endpoint:
    port: int = field(default_factory=free_port)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: object | None = None
    _thread: threading.Thread | None = None
    _app: object | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _wrapped(self, environ, start_response):
        with self._lock:
            self.requests.append((environ["REQUEST_METHOD"], unquote(environ.get("PATH_INFO", ""))))
        return self._app(environ, start_response)

    def start(self) -> S3Endpoint:
        if self._app is None:  # keep the backend (and its buckets) across stop/start
            self._app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(
            "127.0.0.1", self.port, self._wrapped, threaded=True, request_handler=MotoRequestHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = None

    def count(self, method: str, contains: str = "") -> int:
        with self._lock:
            return sum(1 for m, p in self.requests if m == method and contains in p)

    def methods(self) -> Counter:
        with self._lock:
            return Counter(m for m, _ in self.requests)
