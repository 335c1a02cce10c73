"""The chained audit table (ops/audit.py, host migration 0022): the worked example recomputed with an
independent SM3 (gmssl), random chains that verify and name exactly the row edited or the row after the
one deleted by the database owner, 20 concurrent writers, and the append-only protections."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import pytest
from gmssl import func, sm3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ops import audit

T = TypeVar("T")

FIELDS = ("at", "actor", "role", "source", "action", "target", "before", "after", "reason", "outcome",
          "prev_hash", "hash")


def _db(db_url: str, work: Callable[[Any], Awaitable[T]]) -> T:
    async def run() -> T:
        conn = await asyncpg.connect(db_url)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


async def _as_owner(conn: Any, sql: str, *args: Any) -> None:
    """A statement with the append-only trigger disabled (what only the table's owner can do)."""
    async with conn.transaction():
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        await conn.execute(sql, *args)
        await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")


async def _clear(conn: Any) -> None:
    await _as_owner(conn, "DELETE FROM audit_log")


def test_the_worked_example_with_gmssl_as_oracle() -> None:
    row = {"id": 1, "at": dt.datetime(2026, 12, 2, 8, 0, tzinfo=dt.UTC), "actor": "alice",
           "role": "operator", "source": "127.0.0.1", "action": "card.freeze", "target": "card:504",
           "before": {"state": "active"}, "after": {"state": "frozen"},
           "reason": "lost at the canteen", "outcome": "done"}
    text = ('{"action":"card.freeze","actor":"alice","after":{"state":"frozen"},'
            '"at":"2026-12-02T08:00:00.000000+00:00","before":{"state":"active"},"id":1,"outcome":"done",'
            '"reason":"lost at the canteen","role":"operator","source":"127.0.0.1","target":"card:504"}')
    assert audit.canonical(row) == text
    oracle = sm3.sm3_hash(func.bytes_to_list(("0" * 64 + text).encode("utf-8")))
    assert audit.link(audit.GENESIS, row) == oracle
    assert oracle == "ba8cd2d3dd7652606dc547c2b6fbfe3742b6774fa04f37b6e10a551b91bfd89a"
    assert oracle in (audit.__doc__ or "")  # the docstring's figure is the one computed
    # a non-ASCII reason is hashed as its \\u escapes (ensure_ascii), the same on every platform
    other = {**row, "reason": "食堂丢失"}
    assert "\\u98df" in audit.canonical(other)
    assert audit.link(audit.GENESIS, other) == sm3.sm3_hash(
        func.bytes_to_list(("0" * 64 + audit.canonical(other)).encode()))


_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=20)
_json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | _text
    | st.integers(-10**6, 10**6).map(lambda i: i / 8),  # short decimals (a long digit run looks like a PAN)
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_text, children, max_size=3),
    max_leaves=6,
)
_row = st.fixed_dictionaries({
    "actor": _text.filter(bool), "role": _text, "source": _text, "action": _text.filter(bool),
    "target": _text,
    "before": _json_value, "after": _json_value, "reason": _text,
    "outcome": st.sampled_from(audit.OUTCOMES),
})


def _tamper(field: str, row: dict[str, Any]) -> tuple[str, Any]:
    """An UPDATE's SET clause and value that changes ``field`` of ``row`` within the table's checks."""
    if field == "at":
        return "at = at + interval '1 microsecond'", None
    if field in ("before", "after"):
        return f"{field} = $2::jsonb", json.dumps({"tampered": [row[field]]}, default=str)
    if field == "outcome":
        return "outcome = $2", next(o for o in audit.OUTCOMES if o != row["outcome"])
    if field in ("prev_hash", "hash"):
        old = row[field]
        return f"{field} = $2", ("1" if old[0] == "0" else "0") + old[1:]
    return f"{field} = $2", str(row[field]) + "x"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_row, min_size=2, max_size=6), data=st.data())
def test_a_random_chain_verifies_and_any_edit_is_named(db_url: str, rows: list[dict[str, Any]],
                                                       data: st.DataObject) -> None:
    which = data.draw(st.integers(0, len(rows) - 1), label="row")
    field = data.draw(st.sampled_from(FIELDS), label="field")
    deleted = data.draw(st.integers(0, len(rows) - 2), label="deleted")

    async def work(conn: Any) -> None:
        await _clear(conn)
        ids = [await audit.record(conn, **r) for r in rows]
        assert await audit.verify(conn) == (len(rows), None)
        assert (await audit.head(conn))[0] == ids[-1]
        stored = dict(await conn.fetchrow("SELECT * FROM audit_log WHERE id = $1", ids[which]))
        stored["before"], stored["after"] = audit._json(stored["before"]), audit._json(stored["after"])
        clause, value = _tamper(field, stored)
        await _as_owner(conn, f"UPDATE audit_log SET {clause} WHERE id = $1", ids[which],
                        *([] if value is None else [value]))
        checked, broken = await audit.verify(conn)
        assert broken is not None and broken.id == ids[which] and checked == which, (field, broken)
        # deleting a row (other than the last) names the one after it
        await _clear(conn)
        ids = [await audit.record(conn, **r) for r in rows]
        await _as_owner(conn, "DELETE FROM audit_log WHERE id = $1", ids[deleted])
        checked, broken = await audit.verify(conn, batch=2)
        assert broken is not None and broken.id == ids[deleted + 1] and "removed" in broken.reason

    _db(db_url, work)


def test_values_are_hashed_as_the_database_keeps_them(db_url: str) -> None:
    async def work(conn: Any) -> None:
        await _clear(conn)
        when = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
        await audit.record(conn, actor="a", action="x.y",
                           after={"when": when, "big": 1e20, "small": 1.50, "n": None})
        await audit.record(conn, actor="a", action="x.y", before="plain text", after=[1, "二"])
        assert await audit.verify(conn) == (2, None)
        page = await audit.list_rows(conn)
        assert page.rows[0].before == "plain text" and page.rows[1].after["when"].startswith("2026-01-02")

    _db(db_url, work)


def test_a_full_pan_is_refused(db_url: str) -> None:
    async def work(conn: Any) -> None:
        with pytest.raises(audit.AuditError):
            await audit.record(conn, actor="a", action="card.freeze", target="4111111111111111")
        with pytest.raises(audit.AuditError):
            await audit.record(conn, actor="a", action="card.freeze", after={"pan": "6212345678901232"})
        await audit.record(conn, actor="a", action="card.freeze", target="card:411111******1111")
        with pytest.raises(audit.AuditError):
            await audit.record(conn, actor="a", action="x", outcome="maybe")

    _db(db_url, work)


def test_twenty_concurrent_writers_keep_the_chain(db_url: str) -> None:
    async def writer(n: int) -> None:
        conn = await asyncpg.connect(db_url)
        try:
            for i in range(10):
                if i % 3 == 0:  # some rows in a transaction of their own, others in the caller's
                    async with conn.transaction():
                        await audit.record(conn, actor=f"w{n}", action="test.write", target=f"t:{i}")
                else:
                    await audit.record(conn, actor=f"w{n}", action="test.write", target=f"t:{i}")
        finally:
            await conn.close()

    async def run() -> None:
        conn = await asyncpg.connect(db_url)
        try:
            await _clear(conn)
            await asyncio.gather(*(writer(n) for n in range(20)))
            assert await audit.verify(conn) == (200, None)
            page = await audit.list_rows(conn, actor="w7", limit=4)
            assert len(page.rows) == 4 and page.next_cursor is not None
            rest = await audit.list_rows(conn, actor="w7", limit=100, cursor=page.next_cursor)
            assert len(rest.rows) == 6 and rest.next_cursor is None
            assert {r.id for r in page.rows}.isdisjoint(r.id for r in rest.rows)
        finally:
            await conn.close()

    asyncio.run(run())


def test_the_app_role_cannot_edit_and_the_trigger_refuses_even_the_owner(db_url: str) -> None:
    async def work(conn: Any) -> None:
        await _clear(conn)
        async with conn.transaction():
            await conn.execute("SET LOCAL ROLE payswitch_app")
            row_id = await audit.record(conn, actor="app", action="test.insert")
        for sql in ("UPDATE audit_log SET reason = 'x' WHERE id = $1", "DELETE FROM audit_log WHERE id = $1"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with conn.transaction():
                    await conn.execute("SET LOCAL ROLE payswitch_app")
                    await conn.execute(sql, row_id)
            with pytest.raises(asyncpg.PostgresError, match=r"(?i)append|not allowed|refuse|immutable"):
                await conn.execute(sql, row_id)  # the owner, the trigger enabled
        with pytest.raises(asyncpg.PostgresError):
            await conn.execute("TRUNCATE audit_log")
        assert await audit.verify(conn) == (1, None)

    _db(db_url, work)


def test_filters_and_cursor(db_url: str) -> None:
    async def work(conn: Any) -> None:
        await _clear(conn)
        for i in range(5):
            await audit.record(conn, actor="bob" if i % 2 else "alice",
                               action=f"card.{'freeze' if i < 3 else 'load'}", target=f"card:{i}",
                               outcome="refused" if i == 4 else "done")
        assert [r.target for r in (await audit.list_rows(conn, actor="alice")).rows] == ["card:4", "card:2",
                                                                                         "card:0"]
        assert len((await audit.list_rows(conn, action="card.fr")).rows) == 3
        assert len((await audit.list_rows(conn, action="card.%")).rows) == 0  # % is not a wildcard
        assert [r.target for r in (await audit.list_rows(conn, outcome="refused")).rows] == ["card:4"]
        future = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        assert len((await audit.list_rows(conn, since=future)).rows) == 0
        assert len((await audit.list_rows(conn, until=future)).rows) == 5
        with pytest.raises(audit.AuditError):
            await audit.list_rows(conn, cursor="abc")

    _db(db_url, work)
