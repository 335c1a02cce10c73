"""What the console's dashboard shows of the host: requests per minute by response code, today's top
merchants, the programme's outstanding float per product, and the authorization latency the running
host reports on its /metrics (the database keeps only when a request was received, not when it was
answered).

Plain functions on a connection (or, for /metrics, an address): the console's dashboard is a thin
caller of them.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

import httpx

LATENCY_METRIC = "payswitch_host_request_seconds"

# requests from terminals and acquirers (not the host's own admin postings)
_PER_MINUTE = """
SELECT date_trunc('minute', received_at) AS minute, response_code, count(*) AS n
FROM auth_requests
WHERE received_at >= $1 AND acquirer_id <> 'admin'
GROUP BY 1, 2 ORDER BY 1, 2
"""


@dataclass(frozen=True)
class PerMinute:
    """Requests per minute over a window: ``minutes`` (oldest first) and, per response code, one count
    a minute (``codes[rc][i]`` is the count in ``minutes[i]``)."""

    minutes: list[dt.datetime]
    codes: dict[str, list[int]]

    @property
    def approved(self) -> list[int]:
        return self.codes.get("00", [0] * len(self.minutes))

    @property
    def declined(self) -> list[int]:
        return [sum(v[i] for rc, v in self.codes.items() if rc != "00") for i in range(len(self.minutes))]


async def per_minute(conn: Any, minutes: int = 60, now: dt.datetime | None = None) -> PerMinute:
    """Requests received in the last ``minutes`` minutes, per minute and response code."""
    end = (now or dt.datetime.now(dt.UTC)).replace(second=0, microsecond=0)
    start = end - dt.timedelta(minutes=minutes - 1)
    slots = [start + dt.timedelta(minutes=i) for i in range(minutes)]
    index = {m: i for i, m in enumerate(slots)}
    codes: dict[str, list[int]] = {}
    for r in await conn.fetch(_PER_MINUTE, start):
        i = index.get(r["minute"])
        if i is None:
            continue
        codes.setdefault(str(r["response_code"]), [0] * minutes)[i] += int(r["n"])
    return PerMinute(slots, dict(sorted(codes.items())))


async def top_merchants(conn: Any, since: dt.datetime, limit: int = 10) -> list[dict[str, Any]]:
    """Merchants by approved purchase amount since ``since`` (e.g. the local day's start): merchant id,
    name, currency, amount (minor units) and count."""
    rows = await conn.fetch(
        """SELECT r.merchant_id, coalesce(m.name, '') AS name, coalesce(m.currency, r.currency) AS currency,
                  sum(r.amount) AS amount, count(*) AS n
           FROM auth_requests r LEFT JOIN merchants m ON m.id = r.merchant_ref
           WHERE r.received_at >= $1 AND r.response_code = '00' AND r.txn = 'purchase'
             AND r.merchant_id <> ''
           GROUP BY 1, 2, 3 ORDER BY 4 DESC, 1 LIMIT $2""",
        since,
        limit,
    )
    return [{**dict(r), "amount": int(r["amount"]), "n": int(r["n"])} for r in rows]


async def float_by_product(conn: Any) -> list[dict[str, Any]]:
    """The programme's outstanding float: the sum of its cards' posted balances per product (what the
    programme owes its cardholders), with how many cards hold money."""
    rows = await conn.fetch(
        """SELECT p.code AS product, p.name, a.currency,
                  coalesce(sum(a.credits_posted - a.debits_posted), 0) AS balance,
                  count(*) FILTER (WHERE a.credits_posted - a.debits_posted <> 0) AS cards_with_money
           FROM cards c JOIN products p ON p.id = c.product_id JOIN accounts a ON a.id = c.account_id
           GROUP BY 1, 2, 3 ORDER BY 1, 3"""
    )
    return [{**dict(r), "balance": int(r["balance"]), "cards_with_money": int(r["cards_with_money"])}
            for r in rows]


# -- latency from the host's /metrics -----------------------------------------------------------------
@dataclass(frozen=True)
class Latency:
    """The host's request latency histogram since the host process started."""

    count: int
    total_seconds: float
    buckets: list[tuple[float, int]]  # (upper bound, cumulative count), +Inf last

    @property
    def mean(self) -> float | None:
        return self.total_seconds / self.count if self.count else None

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket the ``q`` quantile falls in (None: nothing counted yet)."""
        if not self.count:
            return None
        want = q * self.count
        for bound, cumulative in self.buckets:
            if cumulative >= want:
                return bound
        return math.inf


def parse_histogram(text: str, metric: str = LATENCY_METRIC) -> Latency | None:
    """A Prometheus text exposition's histogram ``metric`` (no labels other than ``le``)."""
    buckets: list[tuple[float, int]] = []
    count, total, seen = 0, 0.0, False
    for line in text.splitlines():
        if not line.startswith(metric):
            continue
        name, _, value = line.rpartition(" ")
        try:
            number = float(value)
        except ValueError:
            continue
        if name.startswith(f"{metric}_bucket{{") and 'le="' in name:
            le = name.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((math.inf if le == "+Inf" else float(le), int(number)))
            seen = True
        elif name == f"{metric}_count":
            count, seen = int(number), True
        elif name == f"{metric}_sum":
            total = number
    if not seen:
        return None
    return Latency(count, total, sorted(buckets))


async def host_latency(address: str, port: int, timeout: float = 1.0) -> Latency | str:
    """The running host's latency histogram from its /metrics, or why it cannot be had (in words)."""
    if not port:
        return "host.metrics_port is 0: the host publishes no metrics"
    host = "127.0.0.1" if address in ("", "0.0.0.0", "::") else address
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            answer = await client.get(f"http://{host}:{port}/metrics")
    except httpx.HTTPError:
        return f"no host answers on {host}:{port}"
    if answer.status_code != 200:
        return f"the host's /metrics answered {answer.status_code}"
    found = parse_histogram(answer.text)
    return found if found is not None else f"the host's /metrics has no {LATENCY_METRIC}"
