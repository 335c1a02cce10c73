"""The dashboard on the live system: its panels (requests per minute by response code, latency, links,
SAF queue, float, top merchants) drawn as inline SVG on the server, and the partial htmx refreshes."""

from __future__ import annotations

import math
from typing import Any

from console import charts
from host import stats
from pos.system import System


def test_the_dashboard_shows_every_panel(live: System, console_as: Any) -> None:
    live.cli("pos", "purchase", "1.00", "--card", "alice", "--pin", "1234", check=False)
    c = console_as("viewer")
    r = c.get("/console/")
    assert r.status_code == 200
    for panel in ("panel-rates", "panel-latency", "panel-links", "panel-saf", "panel-requests",
                  "panel-float", "panel-merchants"):
        assert f'id="{panel}"' in r.text
    assert "<svg" in r.text and 'hx-trigger="every 10s"' in r.text
    assert "CNY" in r.text  # the float, in yuan with its currency
    p = c.get("/console/dashboard/panels")
    assert p.status_code == 200 and 'id="panel-saf"' in p.text and "<html" not in p.text


def test_the_panels_need_a_session(live: System) -> None:
    import httpx

    with httpx.Client(base_url=live.api_url, follow_redirects=False) as anon:
        assert anon.get("/console/dashboard/panels").status_code == 303


def test_charts_escape_their_labels() -> None:
    svg = charts.hbars(["<script>x</script>"], [5])
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    bars = charts.stacked_bars(["12:00", "12:01"], {"00": [1, 2], "<b>": [0, 1]})
    assert "<b>" not in bars and bars.count("<rect") >= 3
    assert "polyline" in charts.sparkline([1, 3, 2])


def test_latency_from_a_histogram() -> None:
    text = "\n".join([
        "# TYPE payswitch_host_request_seconds histogram",
        'payswitch_host_request_seconds_bucket{le="0.001"} 50.0',
        'payswitch_host_request_seconds_bucket{le="0.01"} 95.0',
        'payswitch_host_request_seconds_bucket{le="+Inf"} 100.0',
        "payswitch_host_request_seconds_count 100.0",
        "payswitch_host_request_seconds_sum 0.5",
    ])
    lat = stats.parse_histogram(text)
    assert lat is not None and lat.count == 100
    assert lat.quantile(0.5) == 0.001 and lat.quantile(0.95) == 0.01 and lat.quantile(0.99) == math.inf
    assert lat.mean == 0.005
    assert stats.parse_histogram("other_metric 1") is None
