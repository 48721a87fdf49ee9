"""The side port: ``/metrics``, ``/healthz``, ``/readyz`` on ``[metrics] host:port``, and nothing else.

A small WSGI app on a threading server in a daemon thread, so metrics can still be scraped while the event loop is
busy (and a stuck event loop shows up as a failing ``/healthz`` rather than as a silent scrape). Read-only: GET and
HEAD only; no endpoint changes anything. ``/healthz`` is 200 while every loop has completed a tick recently, else 503
with a JSON reason naming the stuck loop; ``/readyz`` is 200 once the table has answered recently.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from monitor import errors

Check = Callable[[], tuple[bool, str]]


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:  # every scrape in the log would drown everything else
        pass


class SidePort:
    def __init__(self, registry: CollectorRegistry, *, health: Check, ready: Check) -> None:
        self._metrics = make_wsgi_app(registry)
        self._health, self._ready = health, ready
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self, host: str, port: int) -> None:
        try:
            self._server = make_server(host, port, self._app, ThreadingWSGIServer, handler_class=_Quiet)
        except OSError as exc:
            raise errors.MonitorError(f"cannot serve metrics on {host}:{port} ([metrics] host/port): {exc}") from exc
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-side-port", daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            return _json(start_response, "405 Method Not Allowed", {"error": "read-only: GET or HEAD"})
        if path == "/metrics":
            return self._metrics(environ, start_response)  # type: ignore[no-any-return]
        if path in ("/healthz", "/readyz"):
            ok, why = (self._health if path == "/healthz" else self._ready)()
            status = "200 OK" if ok else "503 Service Unavailable"
            return _json(start_response, status, {"status": "ok" if ok else "failing", "reason": why})
        return _json(start_response, "404 Not Found", {"error": "try /metrics, /healthz or /readyz"})


def _json(start_response: Callable[..., Any], status: str, body: dict[str, str]) -> list[bytes]:
    payload = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
    return [payload]
