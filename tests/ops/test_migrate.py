from __future__ import annotations

import asyncio

import pytest

from ops.db import connect
from ops.migrate import Migration, MigrationError, discover, migrate, status

A = Migration("demo", 1, "first", "CREATE TABLE demo_a (id int PRIMARY KEY);")
B = Migration("demo", 2, "second", "CREATE TABLE demo_b (id int PRIMARY KEY REFERENCES demo_a);")
BAD = Migration("demo", 3, "broken", "CREATE TABLE demo_c (id int); SELECT * FROM nowhere;")


def test_real_migrations_are_well_formed() -> None:
    found = discover()
    assert len({(m.component, m.version) for m in found}) == len(found)
    for component in {m.component for m in found}:
        versions = [m.version for m in found if m.component == component]
        assert versions == sorted(versions), component


def test_apply_in_order_once_and_refuse_edits(db_url: str) -> None:
    async def scenario() -> None:
        conn = await connect(db_url)
        try:
            assert [m.label for m in await migrate(conn, [A, B])] == [A.label, B.label]
            assert await migrate(conn, [A, B]) == []
            states = await status(conn, [A, B])
            assert all(s.applied and not s.edited for s in states)

            with pytest.raises(MigrationError, match="failed and was rolled back"):
                await migrate(conn, [A, B, BAD])
            # the failed migration left nothing behind: its transaction rolled back
            assert await conn.fetchval("SELECT to_regclass('demo_c')") is None

            edited = Migration("demo", 1, "first", A.sql + " -- changed")
            with pytest.raises(MigrationError, match=r"demo/0001_first.sql \(its checksum changed\)"):
                await migrate(conn, [edited, B])
        finally:
            await conn.close()

    asyncio.run(scenario())
