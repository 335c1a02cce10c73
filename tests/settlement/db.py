"""Run one coroutine against a test database on a connection of its own."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

T = TypeVar("T")


def db(url: str, work: Callable[[Any], Awaitable[T]]) -> T:
    """``work(conn)`` on a fresh connection to ``url``, closed after; its result."""

    async def go() -> T:
        conn = await asyncpg.connect(url)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(go())
