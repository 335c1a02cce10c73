"""Where the database is and how to reach it: the configured URL or the embedded cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from ops.config import Config
from ops.pgembed import EmbeddedPostgres, EmbeddedPostgresError


class DatabaseUnavailable(Exception):
    """No database URL is configured and the embedded cluster is not running."""


def database_url(config: Config) -> str:
    """PAYSWITCH_DATABASE_URL / database.url if set, else the running embedded cluster's URL."""
    if config.database.url:
        return config.database.url
    try:
        status = EmbeddedPostgres(config.database.data_dir).status()
    except EmbeddedPostgresError as exc:
        raise DatabaseUnavailable(str(exc)) from None
    if not status.running:
        raise DatabaseUnavailable(
            "no database: run `payswitch db up` (embedded PostgreSQL) or set PAYSWITCH_DATABASE_URL"
        )
    return status.url(config.database.name)


async def connect(url: str) -> Any:
    try:
        return await asyncpg.connect(url)
    except (OSError, asyncpg.PostgresError) as exc:
        raise DatabaseUnavailable(f"cannot connect to the database: {exc}") from None


T = TypeVar("T")


def with_connection(config: Config, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(conn)`` on one asyncpg connection to the configured database, closed afterwards: the
    one-shot database call of a CLI command (asyncio; the services use ops.pgpool)."""

    async def go() -> T:
        conn = await connect(database_url(config))
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(go())


async def ensure_database(server_url: str, name: str, template: str | None = None) -> bool:
    """Create database ``name`` (optionally as a copy of ``template``) unless it exists; True if created."""
    conn = await connect(server_url)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        suffix = f' TEMPLATE "{template}"' if template else ""
        await conn.execute(f'CREATE DATABASE "{name}"{suffix}')
        return True
    finally:
        await conn.close()
