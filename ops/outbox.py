"""The event outbox: what happened, written in the transaction that made it happen (issue 17 item 5).

Host and settlement write events here with :func:`write_events` inside their own transaction (the
ledger batch with one more bulk insert per batch); ``api`` delivers them as signed webhooks
(api/webhooks.py). The table is ``events`` (host/migrations/0020_events.sql). A payload never holds a
PAN, ID number, phone or e-mail: masked forms and ids only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# Every event type, with what it means (api/README.md lists them; a subscription names some of them).
EVENT_TYPES: dict[str, str] = {
    "authorization.approved": "a financial request was approved by the host (purchase, load, refund...)",
    "authorization.declined": "a financial request was declined by the host, with its code and reason",
    "card.state_changed": "a card changed state (activated, frozen, unfrozen, lost, stolen, closed...)",
    "card.balance_low": "a spend left a card's available balance below host.balance_low",
    "cardholder.kyc_changed": "a cardholder's KYC level or AML status changed",
    "settlement.report_ready": "a settlement run committed its merchant reports",
    "risk.alert": "a risk rule raised an alert (issue 18)",
}


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    payload: dict[str, Any]
    card_id: int | None = None
    merchant_id: str | None = None


_INSERT = """
INSERT INTO events (type, card_id, merchant_id, payload)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::jsonb[])
"""


async def write_events(conn: Any, events: Iterable[Event]) -> int:
    """Insert ``events`` in one statement on ``conn`` (inside the caller's transaction); the number
    written. Unknown types are a programming error (ValueError), never silently stored."""
    rows = list(events)
    if not rows:
        return 0
    for e in rows:
        if e.type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {e.type!r}")
    await conn.execute(
        _INSERT,
        [e.type for e in rows],
        [e.card_id for e in rows],
        [e.merchant_id for e in rows],
        [json.dumps(e.payload, separators=(",", ":"), sort_keys=True) for e in rows],
    )
    return len(rows)
