"""One live system for the API tests: PostgreSQL, HSM, host, switch and `api serve` as real processes,
with the demo programme seeded (which also gives the API its H2H link to the switch).

The system is shared by every test of a worker (starting one costs ~15 s), so a test makes its own
clients, cardholders and cards (``unique()`` names) and never assumes it is alone: assert on what the
test made, not on totals. A test that kills or stops a service starts its own ``System`` instead.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx

from api.auth import add_client
from pos.system import System

_COUNT = itertools.count(1)


def unique(prefix: str) -> str:
    """A name no other test (or worker) uses."""
    return f"{prefix}-{os.getpid()}-{next(_COUNT)}"


def db(system: System, work: Callable[[Any], Any]) -> Any:
    """Run ``await work(conn)`` on a plain connection to the system's database (test set-up only)."""

    async def main() -> Any:
        conn = await asyncpg.connect(system.db_url)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(main())


def new_client(system: System, scopes: list[str], *, merchant_id: str | None = None,
               name: str | None = None, rate_per_second: int | None = None) -> httpx.Client:
    """An httpx client for the live API authenticated as a new API client with ``scopes``; its name is
    in ``client.headers['x-test-client']`` (not sent to the server's logic, only for the test)."""
    name = name or unique("t")
    made = db(system, lambda conn: add_client(conn, name, scopes, "test", merchant_id=merchant_id,
                                              rate_per_second=rate_per_second))
    return httpx.Client(base_url=system.api_url, timeout=30.0,
                        headers={"Authorization": f"Bearer {made.key}", "x-test-client": name})


# The fixtures `live` and `make_client` are in tests/fixtures/live.py (shared with the console tests).
