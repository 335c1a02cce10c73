"""The switch journal (``switch_journal``, owned by the switch) as the reconciliation's journal side.

Read-only, plain SQL over the columns listed in ``JOURNAL_SQL`` (the contract is written down in
settlement/README.md; settlement never imports switch code). Rows stream through a server-side cursor in
a read-only transaction, so a day of millions of requests is never held in memory.

Normalisation into :class:`settlement.reconcile.Record`:
- only the requests that move money in the clearing file: purchase, completion, refund, void, top-up and
  reversal (not pre-auths, pre-auth voids, balance inquiries, sign-ons, batches); a reversal of a
  pre-auth (original MTI 0100) releases a hold, which the clearing file does not carry, so it is skipped;
- key: terminal id (DE41) and RRN as sent upstream in DE37 (the host records both); the STAN is the
  link STAN (``link_stan``: the DE11 the host saw), not the terminal's, which goes into ``ref``;
- status: ``approved`` for 00 sent upstream (a reversal answered 00 without going upstream, because its
  original was unknown, declined or already reversed, is ``not forwarded``); ``timed_out`` for 98 after
  it went upstream (the switch queued a reversal advice); an inbound acquirer's reversal answered 00 is
  ``unknown`` (the switch journals no upstream fields for it, so whether it went on is not recorded);
  anything else ``declined <code>``;
- an offline advice (kind ``offline``, a PURCHASE in the file) that went upstream answered 00 or 98 is
  ``advice``: the terminal repeats an advice until answered and the batch upload may send one too, each
  copy its own RRN, and the host posts the sale once by its natural key, under the RRN of the copy it
  posted; so a copy pairs with the posting of its RRN if there is one and is never an exception itself
  (a posting no copy names is still ``posted, not in journal``);
- rows a ``margin`` either side of the window are marked ``edge``: a request posted just before the
  cut-over is journaled just after it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

from settlement.reconcile import ADVICE, APPROVED, TIMED_OUT, UNKNOWN, Record

TABLE = "switch_journal"

# switch journal txn_type (switch.mapping.txn_type) -> clearing-file type
TYPES = {
    "purchase": "PURCHASE",
    "completion": "COMPLETION",
    "refund": "REFUND",
    "void": "VOID",
    "top-up": "TOPUP",
    "reversal": "REVERSAL",
    # an offline advice (also one the batch upload posted): the host's transfer code 'offline', in the
    # clearing file as a PURCHASE (host migration 0027)
    "offline": "PURCHASE",
}

JOURNAL_SQL = f"""
SELECT id, created_at, channel, mti, txn_type, proc_code, terminal_id, merchant_id, batch_no, stan,
       amount, rrn, response_code, link, link_stan, original
FROM {TABLE}
WHERE created_at >= $1 AND created_at < $2 AND txn_type = ANY($3::text[])
ORDER BY id
"""

JOURNAL_COLUMNS = ("id", "created_at", "channel", "mti", "txn_type", "proc_code", "terminal_id",
                   "merchant_id", "batch_no", "stan", "amount", "rrn", "response_code", "link", "link_stan",
                   "original")

DEFAULT_MARGIN = timedelta(minutes=10)
PREFETCH = 5000


async def journal_available(conn: Any) -> bool:
    """Whether the switch's journal table exists in this database (and has the contract's columns)."""
    found = await conn.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name = $1 "
        "AND table_schema = ANY(current_schemas(false))",
        TABLE,
    )
    names = {r["column_name"] for r in found}
    return bool(names) and names.issuperset(JOURNAL_COLUMNS)


def normalise(row: Any, start: datetime, end: datetime) -> Record | None:
    """One journal row as a reconciliation record; None for a row the clearing file has no place for."""
    kind = TYPES.get(row["txn_type"])
    original = row["original"] or ""
    if kind is None or (kind == "REVERSAL" and (original.startswith("0100") or
                                                 str(row["proc_code"] or "").startswith("31"))):
        return None
    code = row["response_code"]
    forwarded = row["link"] is not None and row["link_stan"] is not None
    inbound = str(row["channel"]).startswith("h2h")
    if row["txn_type"] == "offline" and forwarded and code in ("00", "98"):
        status = ADVICE  # one of the sale's copies: the host's natural key posted at most one of them
    elif code == "00":
        if forwarded:
            status = APPROVED
        elif kind == "REVERSAL" and inbound:
            status = UNKNOWN
        else:
            status = "not forwarded" if kind == "REVERSAL" else "approved without an upstream request"
    elif code == "98" and forwarded:
        status = TIMED_OUT
    else:
        status = f"declined {code}"
    stan = row["link_stan"] or row["stan"] or ""
    ref = f"switch_journal:{row['id']} {row['channel']} {row['mti']} terminal STAN {row['stan'] or '-'}"
    if row["batch_no"] is not None:
        ref += f" batch {row['batch_no']}"
    return Record(kind, int(row["amount"] or 0), "", (row["terminal_id"] or "").strip(),
                  (row["rrn"] or "").strip(), stan, None, row["merchant_id"] or "", status, ref,
                  not start <= row["created_at"] < end)


async def journal_records(conn: Any, start: datetime, end: datetime,
                          margin: timedelta = DEFAULT_MARGIN) -> AsyncIterator[Record]:
    """The journal's money-moving requests in [start - margin, end + margin), in journal order."""
    async with conn.transaction(readonly=True):
        cursor = conn.cursor(JOURNAL_SQL, start - margin, end + margin, list(TYPES), prefetch=PREFETCH)
        async for row in cursor:
            record = normalise(row, start, end)
            if record is not None:
                yield record
