"""Reading the switch journal for people: ``switch journal show`` and the pos simulator's "why".

Plain functions of an asyncpg connection (the CLI is a thin caller). A row's ``reason`` is the switch's
own (switch/reasons.py) when it answered the request itself; NULL when the issuer decided, whose
precise reason the issuer keeps (the host: ``auth_requests.reason``, shown by ``card history``).
"""

from __future__ import annotations

from typing import Any

from specs.catalogue import describe_response_code
from switch.reasons import describe_switch_reason

_COLUMNS = (
    "id, created_at, channel, mti, txn_type, terminal_id, merchant_id, batch_no, stan, amount, currency, "
    "pan_masked, rrn, auth_id, response_code, reason, link, link_mti, link_stan, link_de7, link_de32, "
    "us_total, us_hsm, us_host"
)


async def journal_rows(
    conn: Any,
    *,
    terminal: str | None = None,
    rrn: str | None = None,
    card_last4: str | None = None,
    rc: str | None = None,
    after: int | None = None,
    limit: int = 20,
) -> list[dict[str, Any]]:
    """The journal newest first, filtered; ``after``: only rows older than that id (the next page)."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM switch_journal "
        "WHERE ($1::text IS NULL OR terminal_id = $1) AND ($2::text IS NULL OR rrn = $2) "
        "AND ($3::text IS NULL OR right(pan_masked, 4) = $3) AND ($4::text IS NULL OR response_code = $4) "
        "AND ($5::bigint IS NULL OR id < $5) ORDER BY id DESC LIMIT $6",
        terminal,
        rrn,
        card_last4,
        rc,
        after,
        limit,
    )
    return [dict(r) for r in rows]


def reason_text(code: str, reason: str | None) -> str:
    """What the journal says of an answer: the switch's reason, else who decided and the code's meaning."""
    if reason:
        return describe_switch_reason(reason)
    if code == "00" or not code:
        return ""
    return f"issuer: {describe_response_code(code)}"


async def terminal_answer(
    conn: Any, terminal_id: str, merchant_id: str, batch: int, stan: str
) -> dict[str, Any] | None:
    """The latest journal row of a terminal's request (its terminal, merchant, batch and STAN; not a
    reversal, which repeats its original's STAN), with the upstream identity the issuer keys it by
    (``link_de32``, ``link_de7``, ``link_stan``, ``link_mti``)."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM switch_journal WHERE terminal_id = $1 AND merchant_id = $2 "
        "AND batch_no = $3 AND stan = $4 AND mti <> '0400' ORDER BY id DESC LIMIT 1",
        terminal_id,
        merchant_id,
        batch,
        stan,
    )
    return None if row is None else dict(row)
