"""A real HTTP S3 endpoint for tests: moto in server mode on loopback, with a request log.

The WSGI app is wrapped so that tests can count requests by method and key (e.g. the GETs of a
feature set) across every process that talks to the endpoint, Ray workers included, and inject
faults: answer the next requests that match with an S3 error status, or answer them slowly.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import unquote

from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

_ERROR_CODES = {500: "InternalError", 503: "ServiceUnavailable"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class _Fault:
    method: str
    contains: str
    times: int  # requests left to fault
    status: int = 0  # 0: pass through (after the delay)
    delay: float = 0.0


@dataclass
class S3Endpoint:
    port: int = field(default_factory=free_port)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _faults: list[_Fault] = field(default_factory=list)
    _server: object | None = None
    _thread: threading.Thread | None = None
    _app: object | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail(self, method: str, contains: str, times: int = 1, status: int = 503) -> None:
        """Answer the next `times` requests of `method` whose path contains `contains` with an
        S3 error of HTTP `status` (500 InternalError, 503 ServiceUnavailable, ...)."""
        with self._lock:
            self._faults.append(_Fault(method, contains, times, status=status))

    def slow(self, method: str, contains: str, seconds: float, times: int = 1_000_000) -> None:
        """Delay matching requests by `seconds` before serving them (widens race windows)."""
        with self._lock:
            self._faults.append(_Fault(method, contains, times, delay=seconds))

    def _match(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            self.requests.append((method, path))
            for fault in self._faults:
                if fault.times > 0 and fault.method == method and fault.contains in path:
                    fault.times -= 1
                    return fault
        return None

    def _wrapped(self, environ, start_response):
        fault = self._match(environ["REQUEST_METHOD"], unquote(environ.get("PATH_INFO", "")))
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        if fault is not None and fault.status:
            code = _ERROR_CODES.get(fault.status, "InjectedFault")
            body = (
                f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                f"<Message>fault injected by tests.support.s3</Message>"
                f"<RequestId>injected</RequestId></Error>"
            ).encode()
            start_response(
                f"{fault.status} {code}",
                [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
            )
            return [body]
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
        """Requests seen (faulted ones included) of `method` whose path contains `contains`."""
        with self._lock:
            return sum(1 for m, p in self.requests if m == method and contains in p)

    def methods(self) -> Counter:
        with self._lock:
            return Counter(m for m, _ in self.requests)
