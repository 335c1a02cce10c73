"""The HSM's Prometheus metrics.

Per-command counts and latencies are kept in plain dicts and lists by ``CommandStats.record`` (a
fraction of a microsecond) and turned into metric families only when /metrics is scraped; the
prometheus_client Counter + Histogram pair cost ~3 µs a command, a quarter of a MAC's total.
Exposed names: ``payswitch_hsm_commands_total{command,error}``,
``payswitch_hsm_command_seconds{command}`` (histogram), ``payswitch_hsm_open_connections``,
``payswitch_hsm_connections_accepted_total``, ``payswitch_hsm_bad_length_total``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

BUCKETS = (0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.0025, 0.01, 0.1)

CONNECTIONS = Gauge("payswitch_hsm_open_connections", "Open client connections")
CONNECTIONS_TOTAL = Counter("payswitch_hsm_connections_accepted", "Client connections accepted")
BAD_FRAMES = Counter("payswitch_hsm_bad_length_total", "Connections closed for a bad LEN")


class CommandStats:
    """Counts by (command, error) and a latency histogram by command, read by the /metrics thread.

    Written only by the service's trio thread; the scrape copies the dicts first, and an increment
    racing a scrape merely lands in the next one.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.buckets: dict[str, list[int]] = {}  # per command: count per bucket, then +Inf
        self.sums: dict[str, float] = {}

    def record(self, command: str, error: str, seconds: float) -> None:
        key = (command, error)
        self.counts[key] = self.counts.get(key, 0) + 1
        counts = self.buckets.get(command)
        if counts is None:
            counts = self.buckets[command] = [0] * (len(BUCKETS) + 1)
            self.sums[command] = 0.0
        counts[bisect_left(BUCKETS, seconds)] += 1
        self.sums[command] += seconds

    def collect(self) -> Iterator[Any]:
        total = CounterMetricFamily(
            "payswitch_hsm_commands",
            "HSM commands answered, by command and error code",
            labels=["command", "error"],
        )
        for (command, error), n in sorted(dict(self.counts).items()):
            total.add_metric([command, error], n)
        yield total
        hist = HistogramMetricFamily(
            "payswitch_hsm_command_seconds",
            "Time to execute one HSM command (excluding network)",
            labels=["command"],
        )
        for command, counts in sorted(dict(self.buckets).items()):
            running = 0
            cumulative = []
            for bound, n in zip((*map(str, BUCKETS), "+Inf"), list(counts), strict=True):
                running += n
                cumulative.append((bound, running))
            hist.add_metric([command], cumulative, self.sums.get(command, 0.0))
        yield hist


STATS = CommandStats()
REGISTRY.register(STATS)
