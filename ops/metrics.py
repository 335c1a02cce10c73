"""Prometheus /metrics for every service: one call at start, process metrics and a build-info gauge.

Each service defines its own counters and histograms next to the code that moves them, on the default
registry; this module serves them, and ``labelled`` caches their labelled children for hot paths.

The endpoint is a small threaded HTTP server of ours rather than prometheus_client's
``start_http_server``, which has no cap and no timeout (a socket that never sends its request holds a
thread forever, and a thousand of them exhaust the process). Ours answers one request per connection
under the same :class:`ops.guard.ConnectionGuard` as every other listener: a cap in all and per source
(``METRICS_LIMITS``), and the whole exchange within ``frame_timeout`` of the accept.
"""

from __future__ import annotations

import contextlib
import platform
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Gauge, generate_latest

from ops.guard import ConnectionGuard, GuardLimits, Slot, source_of
from ops.listening import cannot_listen

BUILD_INFO = Gauge(
    "payswitch_build_info",
    "Build information; the value is always 1.",
    ["service", "version", "python"],
)


_CHILDREN: dict[tuple[Any, ...], Any] = {}


def labelled(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, each child looked up once: on a per-request path labels() costs more
    than the increment it serves."""
    key = (metric, *values)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*values)
    return child


def version() -> str:
    try:
        return metadata.version("payswitch")
    except metadata.PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"


# A scraper opens one connection at a time; a few people with curl a few more. The whole exchange
# (request in, answer out) within frame_timeout; idle_timeout never applies (the frame clock starts
# at accept and runs until the connection closes).
METRICS_LIMITS = GuardLimits(max_connections=32, max_per_source=16, idle_timeout=60.0, frame_timeout=5.0)


def serve_metrics(
    service: str, port: int, address: str = "127.0.0.1", limits: GuardLimits = METRICS_LIMITS
) -> int:
    """Expose /metrics on ``address:port`` in daemon threads; port 0 disables it. Returns the port."""
    BUILD_INFO.labels(service=service, version=version(), python=platform.python_version()).set(1)
    if port == 0:
        return 0
    try:
        server = _MetricsServer((address, port), limits)
    except OSError as exc:
        raise cannot_listen(service, address, port, f"{service}.metrics_port", exc) from None
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    threading.Thread(target=server.sweep_forever, name="metrics-guard", daemon=True).start()
    bound: int = server.server_address[1]
    return bound


class _MetricsHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: the deadline covers all of it
    server: _MetricsServer

    def setup(self) -> None:
        # A backstop per socket operation, past the guard's own deadline (which closes first).
        self.request.settimeout(2 * self.server.guard.limits.frame_timeout)
        super().setup()

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] not in ("/", "/metrics"):
            self.send_error(404)
            return
        body = generate_latest(REGISTRY)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no stderr line per scrape; failures show in the scraper


class _MetricsServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], limits: GuardLimits) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.guard = ConnectionGuard("metrics", limits)
        self._lock = threading.Lock()  # the guard is called from the accept, handler and sweep threads
        self._slots: dict[Any, Slot] = {}
        super().__init__(address, _MetricsHandler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        now = time.monotonic()
        with self._lock:
            slot = self.guard.admit(source_of(client_address), now, lambda: _shut(request))
            if slot is None:
                return False  # the server closes it at once (shutdown_request)
            slot.frame_started = now
            self._slots[request] = slot
        return True

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            slot = self._slots.pop(request, None)
            if slot is not None:
                self.guard.release(slot)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client cut off or gone mid-request: no traceback on stderr (the guard counted the cut).
        pass

    def sweep_forever(self) -> None:
        period = self.guard.period()
        while True:
            time.sleep(period)
            with self._lock:
                self.guard.sweep(time.monotonic())


def _shut(sock: socket.socket) -> None:
    """Wake the handler thread blocked on this socket (it then fails and closes it)."""
    with contextlib.suppress(OSError):  # already closed: nothing to wake
        sock.shutdown(socket.SHUT_RDWR)
