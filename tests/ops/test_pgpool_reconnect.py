"""ops.pgpool when the connection goes away under a call (a failover behind HAProxy, issue 20): the
caller gets an UNAVAILABLE error, never a "bug" error that would be answered "nothing posted", and the
pool works again on the next call without a restart. Real PostgreSQL; the backend is terminated with
pg_terminate_backend, as a dying primary drops it."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from ops.db import DatabaseUnavailable
from ops.pgpool import UNAVAILABLE, PgPool


async def _killed_then_handler_fails(conn: Any) -> None:
    """Like a work function whose own error handler touches the dead connection (host.ledger did)."""
    try:
        await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    except Exception as exc:
        raise RuntimeError("the handler's own follow-up failed") from exc


async def _one(conn: Any) -> int:
    return int(await conn.fetchval("SELECT 1"))


async def _write_read_only(conn: Any) -> None:
    async with conn.transaction(readonly=True):  # as on a member still in recovery
        await conn.execute("CREATE TEMP TABLE never (x int)")


def test_a_lost_connection_is_unavailable_and_the_pool_recovers(db_url: str) -> None:
    async def main(pool: PgPool) -> None:
        with pytest.raises(UNAVAILABLE) as raised:
            await pool.run(_killed_then_handler_fails)
        assert isinstance(raised.value, DatabaseUnavailable), repr(raised.value)
        for _ in range(4):  # every pooled connection, the dropped one replaced
            assert await pool.run(_one) == 1

    with PgPool(db_url, min_size=1, max_size=2) as pool:
        trio.run(main, pool)
        with pytest.raises(DatabaseUnavailable):  # the blocking side too
            pool.call(_killed_then_handler_fails)
        assert pool.call(_one) == 1


def test_a_write_on_a_standby_is_unavailable(db_url: str) -> None:
    with PgPool(db_url, min_size=1, max_size=1) as pool:
        with pytest.raises(UNAVAILABLE):
            pool.call(_write_read_only)
        assert pool.call(_one) == 1
