"""Prometheus /metrics for every service: one call at start, process metrics and a build-info gauge.

Each service defines its own counters and histograms next to the code that moves them, on the default
registry; this module only serves them.
"""

from __future__ import annotations

import platform
from importlib import metadata

from prometheus_client import Gauge, start_http_server

BUILD_INFO = Gauge(
    "payswitch_build_info",
    "Build information; the value is always 1.",
    ["service", "version", "python"],
)


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
