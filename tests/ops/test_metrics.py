from __future__ import annotations

import urllib.request

from ops.metrics import serve_metrics
from ops.pgembed import free_port


def test_metrics_endpoint_has_build_info_and_process_metrics() -> None:
    port = serve_metrics("testsvc", free_port())
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'payswitch_build_info{' in body and 'service="testsvc"' in body
    assert "process_cpu_seconds_total" in body
    assert serve_metrics("off", 0) == 0
