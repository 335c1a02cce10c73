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
# ``{which}`` (several nodes, switch/nodes.py): at start, this node's own rows of an earlier process, those
# of nodes dead on this host and rows from before migration 0011 (no node); a lapsed node's rows when a
# live node takes it over.
_RECOVER_SQL = """
WITH gone AS (DELETE FROM switch_write_ahead WHERE {which} RETURNING *)
SELECT DISTINCT ON (w.link, w.link_de7, w.link_stan) w.* FROM gone w
WHERE NOT EXISTS (
    SELECT 1 FROM switch_journal j WHERE ANSWERED
)
ORDER BY w.link, w.link_de7, w.link_stan, w.created_at
""".replace("ANSWERED", _ANSWERED.format(since="(SELECT min(created_at) FROM gone)"))
_RECOVER_AT_START = "created_at < now() AND (node_id IS NULL OR node_id = ANY($1::text[]))"
_RECOVER_NODE = "node_id = $1"

# The write-ahead insert of a key another node (or an earlier attempt) holds: the row is taken over only
# when it is the same upstream request (a batch written again) or its request was answered under a key
# of its own (91/96/A0 and an advice's 98 are not kept: the terminal may send it again). Otherwise the
# key stays the first's, and the request is answered from the first's journal row (switch/pos.py).
_AHEAD_TAKEOVER = """
INSERT INTO switch_write_ahead AS w ({cols}) VALUES ({params})
ON CONFLICT (dedup_key) DO UPDATE SET {sets}
WHERE (w.link, w.link_de7, w.link_stan) = (EXCLUDED.link, EXCLUDED.link_de7, EXCLUDED.link_stan)
   OR EXISTS (SELECT 1 FROM switch_journal j WHERE j.link = w.link AND j.link_de7 = w.link_de7
              AND j.link_stan = w.link_stan AND j.created_at >= w.created_at - interval '5 minutes'
              AND j.dedup_key <> w.dedup_key)
"""


# Answered rows are kept ``$2`` seconds: their unique key is what tells another node a retransmission
# of them is one (switch/README.md, "Several switch nodes").
_PRUNE_SQL = f"""
DELETE FROM switch_write_ahead w USING switch_journal j
WHERE w.created_at >= $1 AND w.created_at < now() - make_interval(secs => $2)
  AND {_ANSWERED.format(since="$1::timestamptz")}
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


_AHEAD_COPY_COLUMNS = (*WRITE_AHEAD_COLUMNS, "node_id")


async def _insert_journal_and_ahead(
    conn: Any, rows: Sequence[tuple[Any, ...]], ahead: Sequence[tuple[Any, ...]], node_id: str | None = None
) -> set[str]:
    # One COPY per table, each its own commit (an explicit transaction would add two round trips per
    # batch and nothing needs the two to be atomic): the batch's event is set after both. Returns the
    # keys of write-ahead rows refused because another node (or attempt) holds the key: those requests
    # must not go upstream (switch/pos.py answers them from the first's journal row).
    records = [(*row, node_id) for row in ahead]
    refused: set[str] = set()
    try:
        await conn.copy_records_to_table("switch_write_ahead", records=records, columns=_AHEAD_COPY_COLUMNS)
    except asyncpg.UniqueViolationError:  # rare: a retransmission elsewhere, or this batch written twice
        refused = await _insert_ahead_rows(conn, records)
    if rows:
        await _insert_journal(conn, rows)
    return refused


async def _insert_ahead_rows(conn: Any, records: Sequence[tuple[Any, ...]]) -> set[str]:
    cols = _AHEAD_COPY_COLUMNS
    sql = _AHEAD_TAKEOVER.format(
        cols=", ".join(cols),
        params=", ".join(f"${i + 1}" for i in range(len(cols))),
        sets=", ".join(["created_at = now()", *(f"{c} = EXCLUDED.{c}" for c in cols[1:])]),
    )
    await conn.executemany(sql, records)
    held = await conn.fetch(
        "SELECT dedup_key, link, link_de7, link_stan FROM switch_write_ahead "
        "WHERE dedup_key = ANY($1::text[])",
        [r[0] for r in records],
    )
    stored = {r[0]: (r[1], r[2], r[3]) for r in held}
    at = {c: i for i, c in enumerate(cols)}
    return {
        r[0]
        for r in records
        if stored.get(r[0]) != (r[at["link"]], r[at["link_de7"]], r[at["link_stan"]])
    }


async def _insert_journal_rows(conn: Any, rows: Sequence[tuple[Any, ...]]) -> None:
    cols = ", ".join(JOURNAL_COLUMNS)
    params = ", ".join(f"${i + 1}" for i in range(len(JOURNAL_COLUMNS)))
    await conn.executemany(
        f"INSERT INTO switch_journal ({cols}) VALUES ({params}) ON CONFLICT (dedup_key) DO NOTHING", rows
    )


# link, reversal advice (None: an offline advice, never reversed), journal row
Recovered = tuple[str, dict[str, Any] | None, tuple[Any, ...]]


async def _recover_write_ahead(
    conn: Any,
    recover: Callable[[Any], Recovered],
    node_id: str | None = None,
    dead: Callable[[str], bool] = lambda _: False,
) -> list[Any]:
    """Turn every write-ahead row of an earlier process that has no journal row into a reversal advice
    and a journal row, and delete all of them, in one transaction: run twice, it queues nothing twice.
    ``recover`` builds the advice and the row (plain code: it runs on the pool's side). The rows are
    this node's (``node_id``, an earlier process of it), those of nodes ``dead`` says are gone (a
    process of this host that no longer runs: their lease rows go too) and those without a node."""
    async with conn.transaction():
        nodes = [r[0] for r in await conn.fetch("SELECT DISTINCT node_id FROM switch_write_ahead")]
        mine = [n for n in nodes if n is not None and (n == node_id or dead(n))]
        gone = [n for n in mine if n != node_id]
        if gone:
            await conn.execute("DELETE FROM switch_nodes WHERE node_id = ANY($1::text[])", gone)
        return await _recover_rows(conn, recover, _RECOVER_AT_START, mine)


async def _recover_node(
    conn: Any, recover: Callable[[Any], Recovered], node_id: str, epoch: int, lapse_seconds: float, me: str
) -> list[Any] | None:
    """Take over the lapsed node ``node_id`` (its lease ``epoch`` as seen): delete its lease row and
    recover its write-ahead rows in one transaction, once (None: it renewed, or another node took it)."""
    async with conn.transaction():
        taken = await conn.fetchval(
            "DELETE FROM switch_nodes WHERE node_id = $1 AND epoch = $2 "
            "AND expires_at < now() - make_interval(secs => $3) "
            "AND EXISTS (SELECT 1 FROM switch_nodes me WHERE me.node_id = $4 "
            "AND me.up_since < now() - make_interval(secs => $3)) RETURNING node_id",
            node_id,
            epoch,
            lapse_seconds,
            me,
        )
        if taken is None:
            return None
        return await _recover_rows(conn, recover, _RECOVER_NODE, node_id)


async def _recover_rows(conn: Any, recover: Callable[[Any], Recovered], which: str, arg: Any) -> list[Any]:
    # The CTE's row count is unknown to the planner (it guesses 1): a nested loop would scan the
    # journal window once per row. A hash anti-join reads it once.
    await conn.execute("SET LOCAL enable_nestloop = off")
    lost = list(await conn.fetch(_RECOVER_SQL.format(which=which), arg))
    if lost:
        made = [recover(row) for row in lost]
        saf = [(link, json.dumps(a), str(a.get("39", ""))) for link, a, _ in made if a is not None]
        if saf:
            await conn.executemany(
                "INSERT INTO switch_saf (link, message, reason) VALUES ($1, $2::jsonb, $3)", saf
            )
        await _insert_journal_rows(conn, [row for _, _, row in made])
    return lost


async def _prune_write_ahead(conn: Any, since: Any, keep_seconds: float = 0.0) -> tuple[int, Any]:
    """Delete the write-ahead rows made since ``since`` (None: all) and more than ``keep_seconds`` ago
    whose journal row exists; returns (rows deleted, the database's now() before the delete)."""
    now, oldest = await conn.fetchrow("SELECT now(), (SELECT min(created_at) FROM switch_write_ahead)")
    if oldest is None:
        return 0, now
    start = oldest if since is None else max(since, oldest)
    status: str = await conn.execute(_PRUNE_SQL, start, keep_seconds)
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


# Due advices are claimed, not only read: two nodes never send one at once (switch/README.md, "Several
# switch nodes"). A claim lasts ``$4`` seconds (longer than a send waits); a lapsed one (its node died)
# is taken with its epoch + 1, and only the claim's holder writes the result. A claim whose node has no
# lease row any more (taken over, or recovered at start as dead on this host: a restart) is free at
# once: its rows must not wait out the claim (the SAF loop only, never the hot path).
_SAF_CLAIM_SQL = """
UPDATE switch_saf s SET
    claim_epoch = CASE WHEN s.claim_owner IS DISTINCT FROM $3 THEN s.claim_epoch + 1 ELSE s.claim_epoch END,
    claim_owner = $3, claimed_until = now() + make_interval(secs => $4)
FROM (SELECT id FROM switch_saf WHERE done_at IS NULL AND link = ANY($1) AND next_attempt_at <= now()
      AND (claimed_until IS NULL OR claimed_until < now() OR claim_owner = $3
           OR NOT EXISTS (SELECT 1 FROM switch_nodes n WHERE n.node_id = switch_saf.claim_owner))
      ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED) due
WHERE s.id = due.id
RETURNING s.id, s.link, s.message, s.attempts, s.claim_epoch
"""


async def _saf_due(
    conn: Any, links: list[str], limit: int, owner: str = "", claim_seconds: float = 60.0
) -> list[Any]:
    claimed = await conn.fetch(_SAF_CLAIM_SQL, links, limit, owner, claim_seconds)
    return sorted(claimed, key=lambda r: r["id"])


async def _saf_depth(conn: Any) -> int:
    depth: int = await conn.fetchval("SELECT count(*) FROM switch_saf WHERE done_at IS NULL")
    return depth


async def _saf_result(
    conn: Any,
    saf_id: int,
    done: bool,
    code: str | None,
    retry_seconds: float,
    owner: str | None = None,
    epoch: int | None = None,
) -> None:
    # ``owner``/``epoch``: written only while the claim is still this node's (the fencing token).
    guard = "" if owner is None else " AND claim_owner = $3 AND claim_epoch = $4"
    extra: tuple[Any, ...] = () if owner is None else (owner, epoch)
    release = ", claimed_until = NULL" if owner is not None else ""
    if done:
        await conn.execute(
            "UPDATE switch_saf SET attempts = attempts + 1, done_at = now(), response_code = $2"
            + release + " WHERE id = $1" + guard,
            saf_id,
            code,
            *extra,
        )
    else:
        await conn.execute(
            "UPDATE switch_saf SET attempts = attempts + 1, "
            "next_attempt_at = now() + make_interval(secs => $2)" + release + " WHERE id = $1" + guard,
            saf_id,
            retry_seconds,
            *extra,
        )


# -- switch nodes (switch/nodes.py): leases in switch_nodes, migration 0011 --------------------------


async def _register_node(
    conn: Any, node_id: str, lease_seconds: float, lapse_seconds: float
) -> tuple[int, int]:
    """This node's lease row: its own slot again when the id is known, else the lowest slot no live
    node holds (a lapsed one's, once lapsed ``lapse_seconds``); returns (slot, epoch). Serialised by an
    advisory lock: two nodes starting at once never take one slot."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('switch_nodes'))")
        row = await conn.fetchrow(
            "UPDATE switch_nodes SET epoch = epoch + 1, started_at = now(), up_since = now(), "
            "expires_at = now() + make_interval(secs => $2) WHERE node_id = $1 RETURNING slot, epoch",
            node_id,
            lease_seconds,
        )
        if row is not None:
            return int(row[0]), int(row[1])
        held = {
            int(r[0])
            for r in await conn.fetch(
                "SELECT slot FROM switch_nodes WHERE expires_at >= now() - make_interval(secs => $1)",
                lapse_seconds,
            )
        }
        free = [slot for slot in range(10) if slot not in held]
        if not free:
            raise RuntimeError("ten switch nodes hold a lease already (switch_nodes): no STAN slot is free")
        slot = free[0]
        # (a node lapsed that long in this slot keeps its row until its write-ahead is recovered: it sends
        # nothing any more, its next renewal finds itself taken over)
        epoch = await conn.fetchval(
            "INSERT INTO switch_nodes (node_id, slot, expires_at) "
            "VALUES ($1, $2, now() + make_interval(secs => $3)) RETURNING epoch",
            node_id,
            slot,
            lease_seconds,
        )
        return slot, int(epoch)


async def _renew_node(conn: Any, node_id: str, epoch: int, lease_seconds: float) -> bool:
    """Renew this node's lease; False when its row is gone or has another epoch (taken over: fenced)."""
    renewed = await conn.fetchval(
        "UPDATE switch_nodes SET up_since = CASE WHEN expires_at < now() THEN now() ELSE up_since END, "
        "expires_at = now() + make_interval(secs => $3) WHERE node_id = $1 AND epoch = $2 RETURNING 1",
        node_id,
        epoch,
        lease_seconds,
    )
    return renewed is not None


async def _lapsed_nodes(conn: Any, lapse_seconds: float) -> list[tuple[str, int]]:
    rows = await conn.fetch(
        "SELECT node_id, epoch FROM switch_nodes WHERE expires_at < now() - make_interval(secs => $1)",
        lapse_seconds,
    )
    return [(r[0], int(r[1])) for r in rows]


_JOURNAL_ENTRY_SQL = (
    "SELECT mti, stan, txn_type, amount, response_code, response, link, link_mti, link_stan, "
    "link_de7, link_de32, rrn, auth_id, original, pan_masked, proc_code FROM switch_journal "
    "WHERE dedup_key = $1"
)


async def _journal_entry(conn: Any, dedup_key: str) -> Any:
    return await conn.fetchrow(_JOURNAL_ENTRY_SQL, dedup_key)


class Store:
    """Trio-side access to the switch's tables through the shared asyncio pool."""

    def __init__(self, pool: PgPool, node_id: str | None = None) -> None:
        self.pool = pool
        self.node_id = node_id  # written on every write-ahead row (switch/nodes.py)

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
    ) -> set[str]:
        """Journal rows and write-ahead rows (WRITE_AHEAD_COLUMNS); returns once both are committed (one
        COPY each, not one transaction: see ``_insert_journal_and_ahead``), with the keys of write-ahead
        rows refused because another node holds them."""
        if ahead:
            refused: set[str] = await self.pool.run(_insert_journal_and_ahead, rows, ahead, self.node_id)
            return refused
        await self.pool.run(_insert_journal, rows)
        return set()

    async def recover_write_ahead(
        self, recover: Callable[[Any], Recovered], dead: Callable[[str], bool] = lambda _: False
    ) -> list[Any]:
        return await self.pool.run(_recover_write_ahead, recover, self.node_id, dead)

    async def recover_node(
        self, recover: Callable[[Any], Recovered], node_id: str, epoch: int, lapse_seconds: float
    ) -> list[Any] | None:
        assert self.node_id is not None
        return await self.pool.run(_recover_node, recover, node_id, epoch, lapse_seconds, self.node_id)

    async def prune_write_ahead(self, since: Any, keep_seconds: float = 0.0) -> tuple[int, Any]:
        return await self.pool.run(_prune_write_ahead, since, keep_seconds)

    async def journal_entry(self, dedup_key: str) -> Any:
        """The journal row of ``dedup_key`` with the columns a terminal's entry is made of, or None."""
        return await self.pool.run(_journal_entry, dedup_key)

    async def register_node(self, lease_seconds: float, lapse_seconds: float) -> tuple[int, int]:
        assert self.node_id is not None
        return await self.pool.run(_register_node, self.node_id, lease_seconds, lapse_seconds)

    async def renew_node(self, epoch: int, lease_seconds: float) -> bool:
        assert self.node_id is not None
        return await self.pool.run(_renew_node, self.node_id, epoch, lease_seconds)

    async def lapsed_nodes(self, lapse_seconds: float) -> list[tuple[str, int]]:
        return await self.pool.run(_lapsed_nodes, lapse_seconds)

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

    async def saf_due(self, links: list[str], limit: int, claim_seconds: float = 60.0) -> list[Any]:
        """Claim up to ``limit`` due advices of ``links`` for this node (switch_saf.claim_*)."""
        return await self.pool.run(_saf_due, links, limit, self.node_id or "", claim_seconds)

    async def saf_depth(self) -> int:
        return await self.pool.run(_saf_depth)

    async def saf_result(
        self, saf_id: int, done: bool, code: str | None, retry_seconds: float, epoch: int | None = None
    ) -> None:
        owner = None if epoch is None else self.node_id or ""
        await self.pool.run(_saf_result, saf_id, done, code, retry_seconds, owner, epoch)
