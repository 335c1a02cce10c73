"""Per-client rate limits: a token bucket per API client, in the process's memory.

A client may send ``rate_per_second`` requests a second on average (its own ``api_clients.
rate_per_second``, else ``api.rate_per_second``) and ``api.rate_burst`` at once (at least its rate).
One more is refused with 429 ``rate-limited`` and ``Retry-After``: whole seconds (at least 1) until a
token is back. The envelope checks every authenticated request before it does anything else, so a
refused request costs no database round trip and leaves no idempotency record.

The buckets are per process: with several API processes a client gets each one's rate (the operator
divides the rates by the number of processes).
"""

from __future__ import annotations

import math
import time

from api.auth import Caller
from api.problems import Problem
from ops.config import ApiConfig


class Limiter:
    """Token buckets keyed by client id. Not thread-safe: one trio loop calls it."""

    __slots__ = ("_buckets",)

    def __init__(self) -> None:
        self._buckets: dict[int, list[float]] = {}  # client id -> [tokens, last refill]

    def check(self, caller: Caller, config: ApiConfig) -> None:
        """Take a token for ``caller``; a 429 problem when there is none."""
        rate = caller.rate_per_second or config.rate_per_second
        wait = self.take(caller.client_id, rate, config.rate_burst)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise Problem("rate-limited", f"this key may send {rate} requests a second; retry in {seconds} s",
                          headers={"Retry-After": str(seconds)})

    def take(self, client_id: int, rate: int, burst: int) -> float:
        """0 if a token was taken, else the seconds until one is back."""
        capacity = float(max(burst, rate))
        now = time.monotonic()
        bucket = self._buckets.get(client_id)
        if bucket is None:
            if len(self._buckets) > 100_000:  # clients come and go; a full bucket is the default anyway
                self._buckets.clear()
            bucket = self._buckets[client_id] = [capacity, now]
        else:
            bucket[0] = min(capacity, bucket[0] + (now - bucket[1]) * rate)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return 0.0
        return (1.0 - bucket[0]) / rate
