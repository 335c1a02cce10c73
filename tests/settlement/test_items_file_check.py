"""settlement migration 0006: settlement_items.file_id is checked per statement instead of by a foreign
key, and the rule still holds both ways: no item names a missing file (INSERT, COPY, UPDATE), no file
with items is deleted, renumbered or truncated, also when the two happen at once in two transactions."""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Any

import asyncpg
import pytest

from settlement.importer import ITEM_COLUMNS
from tests.settlement.db import db

ITEM = (
    "INSERT INTO settlement_items (issuer_id, posting_id, file_id, business_date, txn_type, acquirer_id, "
    "merchant_id, store_id, terminal_id, amount, sign, merchant_amount, file_fee, fee, fee_version, "
    "issuer_share, acquirer_share, platform_share, rrn, stan, auth_id) "
    "VALUES ('FKCHK', $1, $2, '2026-11-24', 'PURCHASE', 'A', 'M', 'S', 'T', 100, 'D', 100, 0, 0, '', "
    "0, 0, 0, '', '', '')"
)


def _record(posting_id: int, file_id: int) -> tuple[Any, ...]:
    """One settlement_items row in ITEM_COLUMNS order (as the importer copies them)."""
    return (
        "FKCHK",
        posting_id,
        file_id,
        date(2026, 11, 24),
        "PURCHASE",
        None,
        "A",
        "M",
        "S",
        "T",
        1,
        "D",
        1,
        0,
        0,
        "",
        0,
        0,
        0,
        "",
        "",
        "",
    )


async def _file(conn: Any, name: str) -> int:
    file_id: int = await conn.fetchval(
        "INSERT INTO settlement_files (name, sha256, issuer_id, business_date, sequence, currency, "
        "detail_count, total_debit, total_credit, total_fee) "
        "VALUES ($1, md5($1), 'FKCHK', '2026-11-24', 1, '156', 0, 0, 0, 0) RETURNING id",
        name,
    )
    return file_id


async def _items(conn: Any) -> int:
    n: int = await conn.fetchval("SELECT count(*) FROM settlement_items WHERE issuer_id = 'FKCHK'")
    return n


def test_the_foreign_key_is_replaced(db_url: str) -> None:
    async def work(conn: Any) -> None:
        fks = await conn.fetchval(
            "SELECT count(*) FROM pg_constraint "
            "WHERE conrelid = 'settlement_items'::regclass AND contype = 'f'"
        )
        assert fks == 0  # the per-row trigger this migration removes

    db(db_url, work)


def test_an_item_must_name_a_settlement_file(db_url: str) -> None:
    async def work(conn: Any) -> None:
        file_id = await _file(conn, "fkchk-1")
        await conn.execute(ITEM, 1, file_id)
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute(ITEM, 2, file_id + 1000)
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute(
                "UPDATE settlement_items SET file_id = $1 WHERE posting_id = 1 AND issuer_id = 'FKCHK'",
                file_id + 1000,
            )
        # a COPY as the importer's: every row must name a file, one bad row among good ones refuses all
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.copy_records_to_table(
                "settlement_items",
                records=[_record(3, file_id), _record(4, file_id + 1000), _record(5, file_id)],
                columns=ITEM_COLUMNS,
            )
        await conn.copy_records_to_table(
            "settlement_items", records=[_record(6, file_id), _record(7, file_id)], columns=ITEM_COLUMNS
        )
        await conn.execute("UPDATE settlement_items SET fee = 0 WHERE issuer_id = 'FKCHK'")  # file_id kept
        assert await _items(conn) == 3

    db(db_url, work)


def test_a_file_with_items_is_kept(db_url: str) -> None:
    async def work(conn: Any) -> None:
        kept = await _file(conn, "fkchk-2")
        empty = await _file(conn, "fkchk-3")
        other = await _file(conn, "fkchk-4")
        await conn.execute(ITEM, 10, kept)
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute("DELETE FROM settlement_files WHERE id = $1", kept)
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute("UPDATE settlement_files SET id = id + 100000 WHERE id = $1", kept)
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute("TRUNCATE settlement_files CASCADE")
        with pytest.raises(asyncpg.ForeignKeyViolationError):  # an old snapshot could miss items
            async with conn.transaction(isolation="repeatable_read"):
                await conn.execute("DELETE FROM settlement_files WHERE id = $1", empty)
        # what the foreign key allowed still works, and takes effect
        await conn.execute("UPDATE settlement_files SET detail_count = 1 WHERE id = $1", kept)  # not the id
        await conn.execute("UPDATE settlement_files SET id = id + 100000 WHERE id = $1", other)
        assert await conn.fetchval("SELECT count(*) FROM settlement_files WHERE id = $1", other + 100000) == 1
        await conn.execute("DELETE FROM settlement_files WHERE id = $1", empty)
        assert await conn.fetchval("SELECT count(*) FROM settlement_files WHERE id = $1", empty) == 0
        assert await conn.fetchval("SELECT detail_count FROM settlement_files WHERE id = $1", kept) == 1

    db(db_url, work)


def test_a_delete_waits_for_items_being_written(db_url: str) -> None:
    """Items copied, not yet committed: a delete of their file waits for them, then is refused."""

    async def work(conn: Any) -> None:
        file_id = await _file(conn, "fkchk-5")
        other = await asyncpg.connect(db_url)
        try:
            tx = conn.transaction()
            await tx.start()
            await conn.copy_records_to_table(
                "settlement_items", records=[_record(20, file_id)], columns=ITEM_COLUMNS
            )
            delete = asyncio.ensure_future(
                other.execute("DELETE FROM settlement_files WHERE id = $1", file_id)
            )
            await asyncio.sleep(0.3)
            assert not delete.done()  # waits for the items' transaction (the file is locked FOR KEY SHARE)
            await tx.commit()
            with pytest.raises(asyncpg.ForeignKeyViolationError):
                await delete
        finally:
            await other.close()
        assert await conn.fetchval("SELECT count(*) FROM settlement_files WHERE id = $1", file_id) == 1

    db(db_url, work)


def test_items_wait_for_a_delete_of_their_file(db_url: str) -> None:
    """A file deleted, not yet committed: items naming it wait for the delete, then are refused."""

    async def work(conn: Any) -> None:
        file_id = await _file(conn, "fkchk-6")
        other = await asyncpg.connect(db_url)
        try:
            tx = other.transaction()
            await tx.start()
            await other.execute("DELETE FROM settlement_files WHERE id = $1", file_id)
            insert = asyncio.ensure_future(conn.execute(ITEM, 30, file_id))
            await asyncio.sleep(0.3)
            assert not insert.done()
            await tx.commit()
            with pytest.raises(asyncpg.ForeignKeyViolationError):
                await insert
        finally:
            await other.close()
        assert await conn.fetchval("SELECT count(*) FROM settlement_items WHERE posting_id = 30") == 0

    db(db_url, work)
