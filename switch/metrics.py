"""The switch's Prometheus metrics (served by ``ops.metrics.serve_metrics("switch", port)``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from ops.metrics import labelled

_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

REQUESTS = Counter(
    "payswitch_switch_requests_total",
    "Requests answered by the switch, by channel, transaction type and response code.",
    ["channel", "type", "code"],
)
LATENCY = Histogram(
    "payswitch_switch_latency_seconds",
    "Time per hop: end to end (request received to response queued), host round trip, HSM calls.",
    ["hop"],
    buckets=_LATENCY_BUCKETS,
)
LATENCY_TOTAL = LATENCY.labels(hop="end_to_end")
LATENCY_HOST = LATENCY.labels(hop="host")
LATENCY_HSM = LATENCY.labels(hop="hsm")

def count_request(channel: str, kind: str, code: str) -> None:
    labelled(REQUESTS, channel, kind, code).inc()


CONNECTIONS = Gauge("payswitch_switch_connections", "Open client connections per listener.", ["listener"])
REFUSED = Counter(
    "payswitch_switch_connections_refused_total",
    "Connections closed at once because the listener was full.",
    ["listener"],
)
IN_FLIGHT = Gauge("payswitch_switch_in_flight", "Requests being processed (read, not yet answered).")
# (computed at scrape time from the listeners' counters: see switch.server)
BAD_FRAMES = Counter(
    "payswitch_switch_bad_frames_total",
    "Frames that did not parse (answered 30 or connection closed).",
    ["listener", "action"],
)
SAF_DEPTH = Gauge("payswitch_switch_saf_depth", "Reversal advices waiting in store-and-forward.")
SAF_SENT = Counter(
    "payswitch_switch_saf_sent_total", "Store-and-forward advices sent (0420 and 0421).", ["mti"]
)
LINK_UP = Gauge("payswitch_switch_link_up", "1 when the link has a signed-on connection.", ["link"])
LINK_CONNECTIONS = Gauge("payswitch_switch_link_connections", "Signed-on connections per link.", ["link"])
LINK_BAD_FRAMES = Counter(
    "payswitch_switch_link_bad_frames_total", "Upstream frames that did not parse.", ["link"]
)
LINK_LATE_ANSWERS = Counter(
    "payswitch_switch_link_unmatched_total",
    "Upstream answers that matched no waiting request (late or unknown).",
    ["link"],
)
DUPLICATES = Counter(
    "payswitch_switch_duplicates_total", "Retransmitted requests answered from the journal.", ["channel"]
)
CONFIG_RELOADS = Counter(
    "payswitch_switch_config_reloads_total",
    "Link and route configuration changes taken over while running (applied) or not readable (failed).",
    ["result"],
)
LINK_REKEYS = Counter(
    "payswitch_switch_link_rekeys_total",
    "Switch-initiated link key changes (0800 DE70 101): changed, refused, no_answer, hsm_error.",
    ["link", "result"],
)
