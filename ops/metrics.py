"""Prometheus /metrics for every service: one call at start, process metrics and a build-info gauge.

Each service defines its own counters and histograms next to the code that moves them, on the default
registry; this module serves them, and ``labelled`` caches their labelled children for hot paths.
"""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

from prometheus_client import Gauge, start_http_server

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


def serve_metrics(service: str, port: int, address: str = "127.0.0.1") -> int:
    """Expose /metrics on ``address:port`` in a daemon thread; port 0 disables it. Returns the port."""
    BUILD_INFO.labels(service=service, version=version(), python=platform.python_version()).set(1)
    if port == 0:
        return 0
    server, _thread = start_http_server(port, addr=address)
    bound: int = server.server_address[1]
    return bound
