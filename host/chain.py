"""The ledger chained per posting batch (host migration 0023): seal a batch, verify the chains, heads.

host.ledger seals every posting batch that wrote a decision or a transfer (``seal``: computed in Python
over the rows the batch already has in memory, written by the batch's own write statement), one chain
per writer of the posting engine (chain -1 for batches posted outside it: the CLI, host.admin).
Several host processes share the engine's chains: a batch reads its chain's head under its writer
group's lease (host.leases), so whichever host appends, the chain never forks.
``hash = SM3(prev_hash || canonical batch)``; the canonical text is documented, with a worked example,
in host/migrations/0023_ledger_chain.sql.

``verify`` (``payswitch ledger verify``) recomputes each batch's digest from the stored auth_requests
and transfers and follows each chain's links; it names the first batch that does not follow (and the
row in it, when one was edited or removed). ``heads`` gives each chain's last batch: the settlement
report prints them, so a later edit contradicts a document already sent out.

Invariant (named as in ledger check): ``ledger.chained``.
"""

from __future__ import annotations

import datetime as dt
import json
import struct
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ops.audit import GENESIS, sm3_hex

SHARED_CHAIN = -1  # batches posted outside the engine's writers (CLI, host.admin): one at a time
SHARED_LOCK = 0x6C65_6467  # "ledg": the advisory lock serializing the shared chain's writers

# The stored columns of a canonical row, in order (char(n) columns as text: without their padding).
DECISION_COLUMNS = (
    "key, mti::text, txn, proc_code::text, card_id, merchant_ref, acquirer_id, terminal_id, merchant_id,"
    " stan::text, transmitted::text, rrn, local_time, amount, currency::text, response_code::text, auth_id,"
    " balance_field, original_key, reversal_of, posted, reason, reference"
)
TRANSFER_COLUMNS = (
    "key, debit_account_id, credit_account_id, amount, currency::text, phase, code, card_id, pending_key,"
    " hold_of, original_key, expires_at"
)


def _utc(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat(timespec="microseconds")


def header(chain: int, seq: int, at: dt.datetime) -> str:
    return json.dumps({"at": _utc(at), "chain": chain, "seq": seq}, sort_keys=True, separators=(",", ":"))


def line(row: Sequence[Any]) -> str:
    """One canonical row line: the JSON array of its columns (json.dumps defaults)."""
    return json.dumps(list(row))


def canonical(chain: int, seq: int, at: dt.datetime, decisions: list[str], transfers: list[str]) -> str:
    """The text hashed for a batch: its header, then its decision lines and transfer lines, each sorted
    by key (callers pass the lines sorted)."""
    return "\n".join([header(chain, seq, at), *decisions, *transfers])


def link(prev_hash: str, text: str) -> str:
    """SM3(prev_hash || canonical text), hex."""
    return sm3_hex(prev_hash.encode("ascii") + text.encode("utf-8"))


def crcs(lines: list[str]) -> bytes:
    """CRC-32 of each line, 4 bytes big-endian each: only to point at an edited row."""
    return b"".join(struct.pack(">I", zlib.crc32(x.encode("utf-8"))) for x in lines)


@dataclass(frozen=True)
class Seal:
    """What the batch's write statement stores in ledger_batches."""

    chain: int
    seq: int
    at: dt.datetime
    decisions: int
    transfers: int
    row_crc: bytes
    prev_hash: str
    hash: str


def seal(
    chain: int, prev: tuple[int, str], at: dt.datetime, decisions: list[str], transfers: list[str]
) -> Seal:
    """The digest row of a batch following ``prev`` (seq, hash) on ``chain``; the lines sorted by key."""
    seq = prev[0] + 1
    digest = link(prev[1], canonical(chain, seq, at, decisions, transfers))
    return Seal(chain, seq, at, len(decisions), len(transfers), crcs(decisions + transfers), prev[1], digest)


async def head_of(conn: Any, chain: int) -> tuple[int, str]:
    """The chain's last (seq, hash), (0, GENESIS) when empty; for the shared chain, under its lock
    (taken first, so the read sees every batch committed before it)."""
    if chain == SHARED_CHAIN:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SHARED_LOCK)
    row = await conn.fetchrow(
        "SELECT seq, hash FROM ledger_batches WHERE chain = $1 ORDER BY seq DESC LIMIT 1", chain
    )
    return (0, GENESIS) if row is None else (int(row["seq"]), str(row["hash"]))


# -- reading ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Head:
    chain: int
    seq: int
    hash: str
    batch_id: int
    at: dt.datetime

    def as_dict(self) -> dict[str, Any]:
        return {"chain": self.chain, "seq": self.seq, "hash": self.hash, "batch_id": self.batch_id,
                "at": _utc(self.at)}


@dataclass(frozen=True)
class Broken:
    """The first batch that does not follow, why, and the row in it when known."""

    batch_id: int
    chain: int | None
    seq: int | None
    reason: str
    row: str | None = None  # e.g. "transfer 123 (key pos:...)"

    def __str__(self) -> str:
        where = f" (chain {self.chain}, seq {self.seq})" if self.chain is not None else ""
        return f"ledger batch {self.batch_id}{where}: {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "chain": self.chain, "seq": self.seq, "reason": self.reason,
                "row": self.row}


_HEADS_SQL = """
WITH RECURSIVE c AS (
    (SELECT chain FROM ledger_batches ORDER BY chain LIMIT 1)
    UNION ALL
    SELECT (SELECT b.chain FROM ledger_batches b WHERE b.chain > c.chain ORDER BY b.chain LIMIT 1)
    FROM c WHERE c.chain IS NOT NULL
)
SELECT h.chain, h.seq, h.hash, h.id, h.at FROM c, LATERAL (
    SELECT b.chain, b.seq, b.hash, b.id, b.at FROM ledger_batches b
    WHERE b.chain = c.chain AND ($1::timestamptz IS NULL OR b.committed_at <= $1::timestamptz)
    ORDER BY b.seq DESC LIMIT 1) h
WHERE c.chain IS NOT NULL ORDER BY h.chain
"""


async def heads(conn: Any, until: dt.datetime | None = None) -> list[Head]:
    """Each chain's last batch (committed by ``until`` if given), by chain; empty when none."""
    rows = await conn.fetch(_HEADS_SQL, until)
    return [Head(int(r["chain"]), int(r["seq"]), str(r["hash"]), int(r["id"]), r["at"]) for r in rows]


def _row_lines(rows: list[Any], skip: int) -> dict[int, list[tuple[str, str, int | None]]]:
    """batch id -> [(key, line, transfer id or None)] sorted by key, from rows (batch_id, [id,] cols...)."""
    out: dict[int, list[tuple[str, str, int | None]]] = defaultdict(list)
    for r in rows:
        values = list(r.values())
        cols = values[skip:]
        if skip == 2 and cols[11] is not None:  # a transfer's expires_at, as the ledger wrote it
            cols[11] = cols[11].astimezone(dt.UTC).isoformat()
        out[int(values[0])].append((str(cols[0]), line(cols), int(values[1]) if skip == 2 else None))
    for rows_of in out.values():
        rows_of.sort(key=lambda x: x[0])
    return out


def _edited_row(batch: Any, decisions: list[tuple[str, str, int | None]],
                transfers: list[tuple[str, str, int | None]]) -> str | None:
    """The first stored row whose line's CRC differs from the one sealed at its place, if any."""
    sealed = bytes(batch["row_crc"])
    for i, (key, text, tid) in enumerate(decisions + transfers):
        if sealed[4 * i: 4 * i + 4] != struct.pack(">I", zlib.crc32(text.encode("utf-8"))):
            return f"transfer {tid} (key {key})" if tid is not None else f"decision {key}"
    return None


async def verify(conn: Any, window: int = 500) -> tuple[int, list[Head], Broken | None]:
    """Walk every chain in one snapshot: (batches checked, each chain's head, the first broken link)."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return await _verify(conn, window)


async def _verify(conn: Any, window: int) -> tuple[int, list[Head], Broken | None]:
    last: dict[int, tuple[int, str, int, dt.datetime]] = {}  # chain -> (seq, hash, batch id, at)
    after, checked = 0, 0

    def result(broken: Broken | None) -> tuple[int, list[Head], Broken | None]:
        hs = [Head(c, s, h, i, at) for c, (s, h, i, at) in sorted(last.items())]
        return checked, hs, broken

    while True:
        batches = await conn.fetch(
            "SELECT * FROM ledger_batches WHERE id > $1 ORDER BY id LIMIT $2", after, window)
        lo = after + 1
        hi = int(batches[-1]["id"]) if batches else None
        range_sql = "batch_id >= $1" + ("" if hi is None else " AND batch_id <= $2")
        args = [lo] if hi is None else [lo, hi]
        dec = _row_lines(await conn.fetch(
            f"SELECT batch_id, {DECISION_COLUMNS} FROM auth_requests WHERE {range_sql}", *args), 1)
        tra = _row_lines(await conn.fetch(
            f"SELECT batch_id, id, {TRANSFER_COLUMNS} FROM transfers WHERE {range_sql}", *args), 2)
        known = {int(b["id"]) for b in batches}
        orphans = sorted((set(dec) | set(tra)) - known)
        by_id = {int(b["id"]): b for b in batches}
        for bid in sorted(known | set(orphans)):
            if bid not in by_id:
                rows = dec.get(bid, []) + tra.get(bid, [])
                key, _, tid = rows[0]
                return result(Broken(bid, None, None, "its digest row is missing (deleted) while "
                                     f"{len(rows)} of its rows remain",
                                     f"transfer {tid} (key {key})" if tid is not None else f"decision {key}"))
            b = by_id[bid]
            chain, seq = int(b["chain"]), int(b["seq"])
            prev_seq, prev_hash, _, _ = last.get(chain, (0, GENESIS, 0, b["at"]))
            if seq != prev_seq + 1:
                return result(Broken(bid, chain, seq, f"seq {prev_seq + 1}" + (
                    f"..{seq - 1}" if seq - 1 > prev_seq + 1 else "") + f" of chain {chain} is missing "
                    "(a digest row was deleted) before this batch"))
            if b["prev_hash"] != prev_hash:
                return result(Broken(bid, chain, seq, "its prev_hash is not the previous batch's hash"))
            d, t = dec.get(bid, []), tra.get(bid, [])
            text = canonical(chain, seq, b["at"], [x[1] for x in d], [x[1] for x in t])
            if link(prev_hash, text) != b["hash"]:
                if len(d) != b["decisions"] or len(t) != b["transfers"]:
                    reason = (f"it holds {len(d)} decisions and {len(t)} transfers, sealed with "
                              f"{b['decisions']} and {b['transfers']} (rows removed or added)")
                    return result(Broken(bid, chain, seq, reason, _edited_row(b, d, t)))
                row = _edited_row(b, d, t)
                reason = ("its hash does not match its rows (a row was edited)" if row is not None
                          else "its hash does not match (the digest row itself was edited)")
                return result(Broken(bid, chain, seq, reason, row))
            last[chain] = (seq, str(b["hash"]), bid, b["at"])
            checked += 1
        if hi is None:
            return result(None)
        after = hi
