"""The record nobody can edit: one chained row per state-changing action (host migration 0022).

Every state-changing action of the console, the API and the CLI calls ``record`` in the transaction of
its change (or, for a refusal, on its own), so a row exists exactly when the action committed. Rows are
chained: ``hash = SM3(prev_hash || canonical(row))``, hex; the first row's ``prev_hash`` is 64 zeros.
``verify`` walks the chain in id order and names the first row whose hash does not follow: an edit made
by someone able to bypass the append-only trigger (the database owner) shows there.

Invariants (named as in ledger check):
- ``audit.chained``: every row's prev_hash is the previous row's hash and its hash is recomputed equal.
- ``audit.masked``: before/after hold masked forms only (callers pass host's masked views, never a PAN,
  PIN, key, ID number, phone or e-mail); ``record`` refuses a value that looks like a full PAN.

The canonical row: the JSON (sorted keys, no spaces, ASCII only) of id, at (UTC, ISO 8601 with
microseconds), actor, role, source, action, target, before, after, reason, outcome. Worked example, the
first row of a chain (SM3 over the 64 zeros of prev_hash in ASCII followed by this text in UTF-8):

    {"action":"card.freeze","actor":"alice","after":{"state":"frozen"},"at":"2026-12-02T08:00:00.000000+00:00",
     "before":{"state":"active"},"id":1,"outcome":"done","reason":"lost at the canteen","role":"operator",
     "source":"127.0.0.1","target":"card:504"}

(one line; wrapped here); its hash is
``ba8cd2d3dd7652606dc547c2b6fbfe3742b6774fa04f37b6e10a551b91bfd89a``. ``tests/ops/test_audit.py``
recomputes it with gmssl's SM3 as an oracle.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes

from ops.digits import row_number

GENESIS = "0" * 64
OUTCOMES = ("done", "refused", "requested", "approved", "rejected", "failed")
_LOCK = 0x6175_6474  # "audt": one writer of the chain at a time (transaction-level advisory lock)
# 16-19 digits passing Luhn: a card number or a payment code (a 15-digit merchant id is not one)
_FULL_PAN = re.compile(r"(?<![0-9])[0-9]{16,19}(?![0-9])")


class AuditError(Exception):
    """An audit row that may not be written (a value that looks like a full PAN, an unknown outcome)."""


@dataclass(frozen=True)
class Broken:
    """The first row of the chain that does not follow, and why."""

    id: int
    reason: str

    def __str__(self) -> str:
        return f"audit row {self.id}: {self.reason}"


def sm3_hex(data: bytes) -> str:
    h = hashes.Hash(hashes.SM3())
    h.update(data)
    return h.finalize().hex()


def _utc(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat(timespec="microseconds")


def canonical(row: dict[str, Any]) -> str:
    """The text hashed for one row (module docstring)."""
    doc = {
        "id": int(row["id"]),
        "at": _utc(row["at"]),
        "actor": row["actor"],
        "role": row["role"],
        "source": row["source"],
        "action": row["action"],
        "target": row["target"],
        "before": _json(row["before"]),
        "after": _json(row["after"]),
        "reason": row["reason"],
        "outcome": row["outcome"],
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def link(prev_hash: str, row: dict[str, Any]) -> str:
    """SM3(prev_hash || canonical(row)), hex."""
    return sm3_hex(prev_hash.encode("ascii") + canonical(row).encode("utf-8"))


def _json(value: Any) -> Any:
    """A jsonb value as asyncpg gives it (text, no codec) or as given: the JSON value."""
    if isinstance(value, str):
        return json.loads(value)
    return value


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _check_masked(value: Any) -> None:
    text = json.dumps(value, ensure_ascii=False, default=str)
    if any(_luhn(m.group()) for m in _FULL_PAN.finditer(text)):
        raise AuditError("an audit value looks like a full card number: pass the masked form")


async def record(
    conn: Any,
    *,
    actor: str,
    action: str,
    target: str = "",
    role: str = "",
    source: str = "",
    before: Any = None,
    after: Any = None,
    reason: str = "",
    outcome: str = "done",
    then: str = "",
    then_args: tuple[Any, ...] = (),
) -> int:
    """Append one row to the chain in ``conn``'s transaction (one is opened if none is); its id.

    The advisory lock serializes writers until commit, so rows commit in id order and each links to the
    one committed before it. ``then``: a statement run with the insert (``_append``)."""
    if outcome not in OUTCOMES:
        raise AuditError(f"unknown audit outcome {outcome!r}")
    for value in (before, after, reason, target):
        _check_masked(value)
    if conn.is_in_transaction():
        return await _append(conn, actor, action, target, role, source, before, after, reason, outcome,
                             then, then_args)
    async with conn.transaction():
        return await _append(conn, actor, action, target, role, source, before, after, reason, outcome,
                             then, then_args)


# The next id is the last one + 1, drawn under the lock (the application role has no USAGE on the
# identity's sequence, so no nextval): ids are gapless and in commit order.
_NEXT = """SELECT last.hash AS prev, coalesce(last.id, 0) + 1 AS id, now() AS at,
       $1::jsonb::text AS before, $2::jsonb::text AS after
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1) AS last ON true"""
_INSERT = """INSERT INTO audit_log (id, at, actor, role, source, action, target, before, after, reason,
                              outcome, prev_hash, hash)
       OVERRIDING SYSTEM VALUE
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9::jsonb, $10, $11, $12, $13)"""


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str)


async def _append(conn: Any, actor: str, action: str, target: str, role: str, source: str, before: Any,
                  after: Any, reason: str, outcome: str, then: str = "",
                  then_args: tuple[Any, ...] = ()) -> int:
    """Lock, read the head, insert: three statements. The lock is taken in a statement of its own (a
    statement's snapshot is taken before it runs, so the head read in the locking statement could be
    stale). ``before`` and ``after`` are hashed as the database gives them back (jsonb normalizes
    numbers and spacing), so ``verify`` recomputes the same text. ``then`` (SQL, its parameters from $14
    on as ``then_args``) runs in the same statement as the insert: the API's idempotency finish."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
    row = await conn.fetchrow(_NEXT, _dumps(before), _dumps(after))
    prev = row["prev"] or GENESIS
    doc = {"id": row["id"], "at": row["at"], "actor": actor, "role": role, "source": source, "action": action,
           "target": target, "before": row["before"], "after": row["after"], "reason": reason,
           "outcome": outcome}
    digest = link(prev, doc)
    sql = _INSERT if not then else f"WITH audited AS ({_INSERT} RETURNING id) {then}"
    await conn.execute(sql, row["id"], row["at"], actor, role, source, action, target, row["before"],
                       row["after"], reason, outcome, prev, digest, *then_args)
    return int(row["id"])


async def verify(conn: Any, batch: int = 5_000) -> tuple[int, Broken | None]:
    """Walk the whole chain in id order: (rows checked, the first broken link or None)."""
    prev, after_id, checked = GENESIS, 0, 0
    while True:
        rows = await conn.fetch(
            "SELECT * FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2", after_id, batch)
        if not rows:
            return checked, None
        for r in rows:
            row = dict(r)
            if row["prev_hash"] != prev:
                return checked, Broken(row["id"], "its prev_hash is not the previous row's hash (a row was "
                                                  "removed or inserted before it)")
            if link(prev, row) != row["hash"]:
                return checked, Broken(row["id"], "its hash does not match its content (the row was edited)")
            prev, after_id, checked = row["hash"], row["id"], checked + 1


async def head(conn: Any) -> tuple[int, str]:
    """The chain's last row id and hash ((0, GENESIS) when empty): printed in the settlement report."""
    row = await conn.fetchrow("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1")
    return (0, GENESIS) if row is None else (int(row["id"]), str(row["hash"]))


# -- reading the trail ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One audit row as shown (before and after as JSON values)."""

    id: int
    at: dt.datetime
    actor: str
    role: str
    source: str
    action: str
    target: str
    before: Any
    after: Any
    reason: str
    outcome: str
    hash: str


@dataclass(frozen=True)
class Page:
    rows: list[Row]
    next_cursor: str | None  # the id to pass as ``cursor`` for the next (older) page


def _like(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def list_rows(
    conn: Any,
    *,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    outcome: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page:
    """The trail newest first, filtered: ``actor`` exact, ``action`` and ``target`` by prefix,
    ``outcome`` exact, ``since`` <= at < ``until``; ``cursor`` is a previous page's ``next_cursor``."""
    if cursor is not None and row_number(cursor) is None:
        raise AuditError("a cursor is a row id (the previous page's next cursor)")
    if outcome is not None and outcome not in OUTCOMES:
        raise AuditError(f"unknown outcome {outcome!r} (one of {', '.join(OUTCOMES)})")
    limit = max(1, min(int(limit), 1_000))
    rows = await conn.fetch(
        """SELECT id, at, actor, role, source, action, target, before::text AS before, after::text AS after,
                  reason, outcome, hash
           FROM audit_log
           WHERE ($1::bigint IS NULL OR id < $1)
             AND ($2::text IS NULL OR actor = $2)
             AND ($3::text IS NULL OR action LIKE $3)
             AND ($4::text IS NULL OR target LIKE $4)
             AND ($5::text IS NULL OR outcome = $5)
             AND ($6::timestamptz IS NULL OR at >= $6)
             AND ($7::timestamptz IS NULL OR at < $7)
           ORDER BY id DESC LIMIT $8""",
        int(cursor) if cursor else None, actor or None, _like(action) if action else None,
        _like(target) if target else None, outcome or None, since, until, limit + 1)
    out = [Row(int(r["id"]), r["at"], r["actor"], r["role"], r["source"], r["action"], r["target"],
               _json(r["before"]), _json(r["after"]), r["reason"], r["outcome"], r["hash"])
           for r in rows[:limit]]
    more = len(rows) > limit
    return Page(out, str(out[-1].id) if more and out else None)


async def count(conn: Any) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM audit_log"))
