"""Every SQL statement the switch runs, as asyncpg functions executed through ``ops.pgpool``.

The switch owns the ``switch_*`` tables (switch/migrations). The ONE shared-database contract with the
host: the switch READS the host's terminal and merchant tables (the system of record for terminals,
their TMKs under the LMK, key scheme and state) with plain SQL in :func:`_terminal`, and never writes
them. Everything else between switch and host goes over the H2H link.

Functions prefixed ``_`` run on the asyncio side of the pool (they take an asyncpg connection);
:class:`Store` is the trio-side face. Journal rows are written in batches by :mod:`switch.journal`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from ops.pgpool import PgPool
from switch.links import LinkConfig
from switch.routing import Route


@dataclass(frozen=True)
class TerminalRecord:
    """A terminal as the host registered it (read-only for the switch)."""

    terminal_id: str
    merchant_id: str
    scheme: str
    tmk: str  # under LMK
    active: bool
    mcc: str | None
    merchant_name: str | None
    # disabled at the host (`terminal disable`): its requests are refused 58 while signed on; a merchant
    # that is not active is the host's to decline (03 with its reason), ``active`` covers both at sign-on
    disabled: bool = False


@dataclass(frozen=True)
class SessionRow:
    scheme: str
    pik: str
    mak: str
    tdk: str
    signed_on: bool
    # Keys of a later sign-on from another connection, not yet proven by a MAC (specs/README.md,
    # "Terminal sessions"); only on a row loaded from the database.
    pending: SessionRow | None = None


# What a journal row and its write-ahead record both say of the request, in this order after the key.
REQUEST_COLUMNS = (
    "channel",
    "mti",
    "txn_type",
    "proc_code",
    "terminal_id",
    "merchant_id",
    "batch_no",
    "stan",
    "amount",
    "currency",
    "pan_masked",
)

JOURNAL_COLUMNS = (
    "dedup_key",
    *REQUEST_COLUMNS,
    "rrn",
    "auth_id",
    "response_code",
    "link",
    "link_mti",
    "link_stan",
    "link_de7",
    "link_de32",
    "original",
    "us_total",
    "us_hsm",
    "us_host",
    "response",
    "reason",  # why the switch answered so itself (switch/reasons.py); NULL when the issuer decided
)

# The request half of a journal row, written ahead (switch_write_ahead, migration 0003) and committed
# before the request goes upstream; ``reverses`` is the DE90 a reversal advice for it names when that is
# not the request itself (a reversal forwarded upstream: its original).
WRITE_AHEAD_COLUMNS = (
    "dedup_key",
    *REQUEST_COLUMNS,
    "rrn",
    "original",
    "link",
    "link_mti",
    "link_stan",
    "link_de7",
    "link_de32",
    "reverses",
)

# A write-ahead row is answered by the journal row that carries the same upstream identity; that row is
# always committed after it (so a journal window starting a little before the oldest write-ahead row is
# enough: the journal's BRIN index bounds the scan; the margin covers a clock stepped back).
_ANSWERED = (
    "j.link = w.link AND j.link_de7 = w.link_de7 AND j.link_stan = w.link_stan "
    "AND j.created_at >= {since} - interval '5 minutes'"
)

# Start-up recovery: every write-ahead row of an earlier process goes; those without a journal row (the
# outcome died with the process) come back to be reversed, once per upstream request (a batch replayed
# after a commit whose acknowledgement was lost writes its rows twice). now() is this transaction's
# start.
_RECOVER_SQL = f"""
WITH gone AS (DELETE FROM switch_write_ahead WHERE created_at < now() RETURNING *)
SELECT DISTINCT ON (w.link, w.link_de7, w.link_stan) w.* FROM gone w
WHERE NOT EXISTS (
    SELECT 1 FROM switch_journal j WHERE {_ANSWERED.format(since="(SELECT min(created_at) FROM gone)")}
)
ORDER BY w.link, w.link_de7, w.link_stan, w.created_at
"""

_PRUNE_SQL = f"""
DELETE FROM switch_write_ahead w USING switch_journal j
WHERE w.created_at >= $1 AND {_ANSWERED.format(since="$1::timestamptz")}
"""

# The host's terminal registry: the shared-database contract (see the module docstring). A terminal id
# is unique per merchant, so the rows for a DE41 tell apart "unknown terminal" (97) from "known, but
# not at this merchant" (03).
TERMINAL_SQL = """
SELECT t.terminal_id, m.merchant_id, t.scheme, t.tmk, t.state, m.state, m.mcc, m.name
FROM terminals t JOIN merchants m ON m.id = t.merchant_id
WHERE t.terminal_id = $1
"""


async def _terminal(conn: Any, terminal_id: str, merchant_id: str) -> TerminalRecord | None:
    rows = await conn.fetch(TERMINAL_SQL, terminal_id)
    if not rows:
        return None
    row = next((r for r in rows if r[1] == merchant_id), rows[0])
    return TerminalRecord(
        terminal_id=row[0],
        merchant_id=row[1],
        scheme=row[2],
        tmk=row[3],
        active=row[4] == "active" and row[5] == "active",
        mcc=row[6],
        merchant_name=row[7] or None,
        disabled=row[4] != "active",
    )


# host_catalog.version (host migration 0009) moves with every change of the host's terminals and
# merchants; the switch polls it and reads the state of the terminals it holds again when it moved.
CATALOG_VERSION_SQL = "SELECT version FROM host_catalog WHERE id"
TERMINAL_STATES_SQL = """
SELECT t.terminal_id, m.merchant_id, t.state <> 'active'
FROM terminals t JOIN merchants m ON m.id = t.merchant_id
WHERE t.terminal_id = ANY($1::text[])
"""


# The host's BIN ranges and their products' offline floor limit (host migration 0027) and no-CVM limit
# (0026), for the sign-on floor table (specs/README.md, "Offline sales"): read-only, as the terminals. A
# column a database does not have yet (a host not migrated that far) reads as 0: never offline, PIN.
FLOOR_COLUMNS = ("offline_floor_limit", "no_cvm_limit")
FLOOR_COLUMNS_SQL = """
SELECT column_name FROM information_schema.columns
WHERE table_name = 'products' AND table_schema = ANY(current_schemas(false)) AND column_name = ANY($1::text[])
"""
FLOOR_SQL = """
SELECT b.bin, {floor}::bigint, {no_cvm}::bigint
FROM bin_ranges b JOIN products p ON p.id = b.product_id
ORDER BY b.bin
"""


async def _floor_limits(conn: Any) -> list[tuple[str, int, int]]:
    """(BIN, floor limit, no-CVM limit) of every BIN range of the host, in fen, ordered by BIN."""
    present = {r[0] for r in await conn.fetch(FLOOR_COLUMNS_SQL, list(FLOOR_COLUMNS))}
    floor, no_cvm = (f"p.{c}" if c in present else "0" for c in FLOOR_COLUMNS)
    rows = await conn.fetch(FLOOR_SQL.format(floor=floor, no_cvm=no_cvm))
    return [(str(r[0]), int(r[1] or 0), int(r[2] or 0)) for r in rows]


async def _catalog_version(conn: Any) -> int:
    return int(await conn.fetchval(CATALOG_VERSION_SQL) or 0)


async def _terminal_states(conn: Any, terminal_ids: list[str]) -> dict[tuple[str, str], bool]:
    """(DE41, DE42) -> whether the host has the terminal disabled; a pair not there is gone."""
    return {(r[0], r[1]): bool(r[2]) for r in await conn.fetch(TERMINAL_STATES_SQL, terminal_ids)}


async def _load_terminal(
    conn: Any, terminal_id: str, merchant_id: str
) -> tuple[TerminalRecord | None, SessionRow | None, int, list[Any]]:
    """Host record, switch session, open batch number (opened if none) and that batch's journal."""
    record = await _terminal(conn, terminal_id, merchant_id)
    if record is None or record.merchant_id != merchant_id:
        return record, None, 0, []
    srow = await conn.fetchrow(
        "SELECT scheme, pik, mak, tdk, signed_on, pending_scheme, pending_pik, pending_mak, pending_tdk "
        "FROM switch_sessions WHERE terminal_id = $1 AND merchant_id = $2",
        terminal_id,
        merchant_id,
    )
    session = None
    if srow is not None:
        pending = None if srow[5] is None else SessionRow(srow[5], srow[6], srow[7], srow[8], True)
        session = SessionRow(srow[0], srow[1], srow[2], srow[3], srow[4], pending)
    batch = await _open_batch(conn, terminal_id, merchant_id)
    journal = await conn.fetch(
        "SELECT mti, stan, txn_type, amount, response_code, response, link, link_mti, link_stan, "
        "link_de7, link_de32, rrn, auth_id, original, pan_masked, proc_code FROM switch_journal "
        "WHERE terminal_id = $1 AND merchant_id = $2 AND batch_no = $3 AND channel LIKE 'pos%' "
        "AND mti IN ('0100', '0200', '0220', '0400') ORDER BY id",
        terminal_id,
        merchant_id,
        batch,
    )
    return record, session, batch, list(journal)


async def _open_batch(conn: Any, terminal_id: str, merchant_id: str) -> int:
    batch: int | None = await conn.fetchval(
        "SELECT batch_no FROM switch_batches "
        "WHERE terminal_id = $1 AND merchant_id = $2 AND closed_at IS NULL",
        terminal_id,
        merchant_id,
    )
    if batch is not None:
        return batch
    last: int | None = await conn.fetchval(
        "SELECT max(batch_no) FROM switch_batches WHERE terminal_id = $1 AND merchant_id = $2",
        terminal_id,
        merchant_id,
    )
    batch = 1 if last is None else last % 999_999 + 1
    await conn.execute(
        "INSERT INTO switch_batches (terminal_id, merchant_id, batch_no) VALUES ($1, $2, $3) "
        "ON CONFLICT DO NOTHING",
        terminal_id,
        merchant_id,
        batch,
    )
    opened: int = await conn.fetchval(
        "SELECT batch_no FROM switch_batches "
        "WHERE terminal_id = $1 AND merchant_id = $2 AND closed_at IS NULL",
        terminal_id,
        merchant_id,
    )
    return opened


# A session that starts or ends at once leaves no unproven keys behind.
_NO_PENDING = (
    "pending_scheme = NULL, pending_pik = NULL, pending_mak = NULL, pending_tdk = NULL, pending_at = NULL"
)


async def _save_session(
    conn: Any, terminal_id: str, merchant_id: str, scheme: str, pik: str, mak: str, tdk: str
) -> None:
    await conn.execute(
        "INSERT INTO switch_sessions "
        "(terminal_id, merchant_id, scheme, pik, mak, tdk, signed_on, signed_on_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, true, now()) ON CONFLICT (terminal_id, merchant_id) DO UPDATE SET "
        "scheme = EXCLUDED.scheme, pik = EXCLUDED.pik, mak = EXCLUDED.mak, tdk = EXCLUDED.tdk, "
        "signed_on = true, signed_on_at = now(), " + _NO_PENDING,
        terminal_id,
        merchant_id,
        scheme,
        pik,
        mak,
        tdk,
    )


async def _sign_off(conn: Any, terminal_id: str, merchant_id: str) -> None:
    await conn.execute(
        "UPDATE switch_sessions SET signed_on = false, " + _NO_PENDING + " "
        "WHERE terminal_id = $1 AND merchant_id = $2",
        terminal_id,
        merchant_id,
    )


async def _save_pending(conn: Any, terminal_id: str, merchant_id: str, keys: SessionRow | None) -> None:
    """Keep (or, with None, drop) the unproven keys of a sign-on from another connection: they
    survive a restart, so a terminal that signed on just before it can still prove them."""
    if keys is None:
        await conn.execute(
            "UPDATE switch_sessions SET " + _NO_PENDING + " WHERE terminal_id = $1 AND merchant_id = $2",
            terminal_id,
            merchant_id,
        )
        return
    await conn.execute(
        "UPDATE switch_sessions SET pending_scheme = $3, pending_pik = $4, pending_mak = $5, "
        "pending_tdk = $6, pending_at = now() WHERE terminal_id = $1 AND merchant_id = $2",
        terminal_id,
        merchant_id,
        keys.scheme,
        keys.pik,
        keys.mak,
        keys.tdk,
    )


async def _close_batch(
    conn: Any, terminal_id: str, merchant_id: str, batch: int, result: int, totals: str
) -> int:
    async with conn.transaction():
        await conn.execute(
            "UPDATE switch_batches SET closed_at = now(), result = $4, totals = $5 "
            "WHERE terminal_id = $1 AND merchant_id = $2 AND batch_no = $3 AND closed_at IS NULL",
            terminal_id,
            merchant_id,
            batch,
            result,
            totals,
        )
        return await _open_batch(conn, terminal_id, merchant_id)


async def _mark_batch(
    conn: Any, terminal_id: str, merchant_id: str, batch: int, result: int, totals: str
) -> None:
    await conn.execute(
        "UPDATE switch_batches SET result = $4, totals = $5 "
        "WHERE terminal_id = $1 AND merchant_id = $2 AND batch_no = $3",
        terminal_id,
        merchant_id,
        batch,
        result,
        totals,
    )


async def _insert_journal(conn: Any, rows: Sequence[tuple[Any, ...]]) -> None:
    # COPY is several times cheaper per row than INSERT; every dedup key is unique by construction
    # (duplicates are answered from memory and never journaled again), so a unique violation means a
    # replayed batch after an error: then fall back to INSERT ... ON CONFLICT DO NOTHING.
    try:
        await conn.copy_records_to_table("switch_journal", records=rows, columns=JOURNAL_COLUMNS)
    except asyncpg.UniqueViolationError:
        await _insert_journal_rows(conn, rows)


async def _insert_journal_and_ahead(
    conn: Any, rows: Sequence[tuple[Any, ...]], ahead: Sequence[tuple[Any, ...]]
) -> None:
    # One COPY per table, each its own commit (an explicit transaction would add two round trips per
    # batch and nothing needs the two to be atomic): the batch's event is set after both. A retry after
    # an error may write a write-ahead row twice; recovery takes one per upstream request.
    await conn.copy_records_to_table("switch_write_ahead", records=ahead, columns=WRITE_AHEAD_COLUMNS)
    if rows:
        await _insert_journal(conn, rows)


async def _insert_journal_rows(conn: Any, rows: Sequence[tuple[Any, ...]]) -> None:
    cols = ", ".join(JOURNAL_COLUMNS)
    params = ", ".join(f"${i + 1}" for i in range(len(JOURNAL_COLUMNS)))
    await conn.executemany(
        f"INSERT INTO switch_journal ({cols}) VALUES ({params}) ON CONFLICT (dedup_key) DO NOTHING", rows
    )


# link, reversal advice (None: an offline advice, never reversed), journal row
Recovered = tuple[str, dict[str, Any] | None, tuple[Any, ...]]


async def _recover_write_ahead(conn: Any, recover: Callable[[Any], Recovered]) -> list[Any]:
    """Turn every write-ahead row of an earlier process that has no journal row into a reversal advice
    and a journal row, and delete all of them, in one transaction: run twice, it queues nothing twice.
    ``recover`` builds the advice and the row (plain code: it runs on the pool's side)."""
    async with conn.transaction():
        # The CTE's row count is unknown to the planner (it guesses 1): a nested loop would scan the
        # journal window once per row. A hash anti-join reads it once.
        await conn.execute("SET LOCAL enable_nestloop = off")
        lost = list(await conn.fetch(_RECOVER_SQL))
        if lost:
            made = [recover(row) for row in lost]
            saf = [(link, json.dumps(a), str(a.get("39", ""))) for link, a, _ in made if a is not None]
            if saf:
                await conn.executemany(
                    "INSERT INTO switch_saf (link, message, reason) VALUES ($1, $2::jsonb, $3)", saf
                )
            await _insert_journal_rows(conn, [row for _, _, row in made])
    return lost


async def _prune_write_ahead(conn: Any, since: Any) -> tuple[int, Any]:
    """Delete the write-ahead rows made since ``since`` (None: all) whose journal row exists;
    returns (rows deleted, the database's now() before the delete)."""
    now, oldest = await conn.fetchrow("SELECT now(), (SELECT min(created_at) FROM switch_write_ahead)")
    if oldest is None:
        return 0, now
    status: str = await conn.execute(_PRUNE_SQL, oldest if since is None else max(since, oldest))
    return int(status.rsplit(" ", 1)[-1]), now


# A request's journal row by its key and, in the same round trip, whether a reversal from the same
# channel names it (``original``: its DE90 key; switch_journal_original, migration 0006), arrived
# before or after it: the switch then declines a late original 05 and a replay 94 (switch/reversals.py).
_BY_KEY_SQL = """
SELECT false AS reversal, response_code, response, amount, proc_code, pan_masked, link, link_mti,
       link_stan, link_de7, link_de32, rrn
FROM switch_journal WHERE dedup_key = $1
UNION ALL
(SELECT true, response_code, NULL::jsonb, NULL::bigint, NULL::text, NULL::text, NULL::text, NULL::text,
        NULL::text, NULL::text, NULL::text, NULL::text
 FROM switch_journal
 WHERE $2::text IS NOT NULL AND original = $2 AND channel = $3 AND mti IN ('0400', '0420', '0421')
 LIMIT 1)
"""


async def _journal_by_key(conn: Any, dedup_key: str, channel: str, original: str | None) -> tuple[Any, bool]:
    rows = await conn.fetch(_BY_KEY_SQL, dedup_key, original, channel)
    request = next((r for r in rows if not r["reversal"]), None)
    return request, any(r["reversal"] for r in rows)


async def _links(conn: Any) -> list[LinkConfig]:
    rows = await conn.fetch(
        "SELECT name, direction, host, port, connections, institution_id, scheme, zpk, zak, enabled "
        "FROM switch_links ORDER BY name"
    )
    return [LinkConfig(*row) for row in rows]


async def _routes(conn: Any) -> list[Route]:
    rows = await conn.fetch(
        "SELECT r.bin_low, r.bin_high, r.link FROM switch_routes r JOIN switch_links l ON l.name = r.link "
        "WHERE l.enabled ORDER BY r.id"
    )
    return [Route(row[0], row[1], row[2]) for row in rows]


async def _saf_add(conn: Any, link: str, message: dict[str, Any], reason: str) -> int:
    saf_id: int = await conn.fetchval(
        "INSERT INTO switch_saf (link, message, reason) VALUES ($1, $2::jsonb, $3) RETURNING id",
        link,
        json.dumps(message),
        reason,
    )
    return saf_id


async def _saf_due(conn: Any, links: list[str], limit: int) -> list[Any]:
    return list(
        await conn.fetch(
            "SELECT id, link, message, attempts FROM switch_saf WHERE done_at IS NULL AND link = ANY($1) "
            "AND next_attempt_at <= now() ORDER BY id LIMIT $2",
            links,
            limit,
        )
    )


async def _saf_depth(conn: Any) -> int:
    depth: int = await conn.fetchval("SELECT count(*) FROM switch_saf WHERE done_at IS NULL")
    return depth


async def _saf_result(conn: Any, saf_id: int, done: bool, code: str | None, retry_seconds: float) -> None:
    if done:
        await conn.execute(
            "UPDATE switch_saf SET attempts = attempts + 1, done_at = now(), response_code = $2 "
            "WHERE id = $1",
            saf_id,
            code,
        )
    else:
        await conn.execute(
            "UPDATE switch_saf SET attempts = attempts + 1, "
            "next_attempt_at = now() + make_interval(secs => $2) WHERE id = $1",
            saf_id,
            retry_seconds,
        )


class Store:
    """Trio-side access to the switch's tables through the shared asyncio pool."""

    def __init__(self, pool: PgPool) -> None:
        self.pool = pool

    async def load_terminal(
        self, terminal_id: str, merchant_id: str
    ) -> tuple[TerminalRecord | None, SessionRow | None, int, list[Any]]:
        return await self.pool.run(_load_terminal, terminal_id, merchant_id)

    async def terminal(self, terminal_id: str, merchant_id: str) -> TerminalRecord | None:
        return await self.pool.run(_terminal, terminal_id, merchant_id)

    async def catalog_version(self) -> int:
        return await self.pool.run(_catalog_version)

    async def floor_limits(self) -> list[tuple[str, int, int]]:
        return await self.pool.run(_floor_limits)

    async def terminal_states(self, terminal_ids: list[str]) -> dict[tuple[str, str], bool]:
        return await self.pool.run(_terminal_states, terminal_ids)

    async def save_session(
        self, terminal_id: str, merchant_id: str, scheme: str, pik: str, mak: str, tdk: str
    ) -> None:
        await self.pool.run(_save_session, terminal_id, merchant_id, scheme, pik, mak, tdk)

    async def sign_off(self, terminal_id: str, merchant_id: str) -> None:
        await self.pool.run(_sign_off, terminal_id, merchant_id)

    async def save_pending(self, terminal_id: str, merchant_id: str, keys: SessionRow | None) -> None:
        await self.pool.run(_save_pending, terminal_id, merchant_id, keys)

    async def close_batch(
        self, terminal_id: str, merchant_id: str, batch: int, result: int, totals: str
    ) -> int:
        return await self.pool.run(_close_batch, terminal_id, merchant_id, batch, result, totals)

    async def mark_batch(
        self, terminal_id: str, merchant_id: str, batch: int, result: int, totals: str
    ) -> None:
        await self.pool.run(_mark_batch, terminal_id, merchant_id, batch, result, totals)

    async def insert_journal(
        self, rows: Sequence[tuple[Any, ...]], ahead: Sequence[tuple[Any, ...]] = (), /
    ) -> None:
        """Journal rows and write-ahead rows (WRITE_AHEAD_COLUMNS); returns once both are committed (one
        COPY each, not one transaction: see ``_insert_journal_and_ahead``)."""
        if ahead:
            await self.pool.run(_insert_journal_and_ahead, rows, ahead)
        else:
            await self.pool.run(_insert_journal, rows)

    async def recover_write_ahead(self, recover: Callable[[Any], Recovered]) -> list[Any]:
        return await self.pool.run(_recover_write_ahead, recover)

    async def prune_write_ahead(self, since: Any) -> tuple[int, Any]:
        return await self.pool.run(_prune_write_ahead, since)

    async def journal_by_key(
        self, dedup_key: str, channel: str = "", original: str | None = None
    ) -> tuple[Any, bool]:
        """(the journal row of ``dedup_key`` or None, whether a reversal on ``channel`` names the DE90
        key ``original``)."""
        return await self.pool.run(_journal_by_key, dedup_key, channel, original)

    async def links(self) -> list[LinkConfig]:
        return await self.pool.run(_links)

    async def routes(self) -> list[Route]:
        return await self.pool.run(_routes)

    async def saf_add(self, link: str, message: dict[str, Any], reason: str) -> int:
        return await self.pool.run(_saf_add, link, message, reason)

    async def saf_due(self, links: list[str], limit: int) -> list[Any]:
        return await self.pool.run(_saf_due, links, limit)

    async def saf_depth(self) -> int:
        return await self.pool.run(_saf_depth)

    async def saf_result(self, saf_id: int, done: bool, code: str | None, retry_seconds: float) -> None:
        await self.pool.run(_saf_result, saf_id, done, code, retry_seconds)
