"""The host's events for the outbox (ops.outbox, issue 17 item 5): their payloads, built in one place.

Each is written in the transaction of the change it reports (api/README.md "Events" lists every type
with an example):

- ``authorization.approved`` / ``authorization.declined`` and ``card.balance_low``: the ledger batch
  (host.ledger ``_write``: one more data-modifying CTE in the batch's one write statement, so the
  outbox costs no round trip);
- ``card.state_changed``: beside the ``card_events`` row of each change of a card's state
  (host.card_events.record, the expiry sweep, the ledger's forfeit and replacement); issuance (no
  state before) and an owner's assignment or a PIN set (the state unchanged) write none;
- ``cardholder.kyc_changed``: beside each KYC decision (registration, an ID that changes the level,
  ``kyc decide``) and each change of AML status (a screening's hit puts the cardholder in review, an
  operator clears or confirms).

A payload holds ids (``card_<n>``, ``ch_<n>``), the masked PAN (first 6 + last 4) and codes, never a
PAN, ID number, name, phone or e-mail. ``occurred_at`` is RFC 3339 in UTC (``+00:00``): the instant as
stored; ``business_date`` (authorizations) is the programme's business date.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from host import rules
from ops.logs import redact_text
from ops.money import currency_alpha
from ops.outbox import Event, write_events


def card_ref(card_id: int | None) -> str | None:
    """The API's id of a card (api.models.public_id's form)."""
    return None if card_id is None else f"card_{card_id}"


def cardholder_ref(cardholder_id: int) -> str:
    return f"ch_{cardholder_id}"


def money(minor: int, currency: str | None) -> dict[str, Any]:
    """``{"amount": 1234, "currency": "CNY"}`` (the API's Money) from minor units and DE49 / ISO numeric."""
    return {"amount": minor, "currency": currency_alpha(currency or None)}


def stamp(instant: dt.datetime | None = None) -> str:
    """RFC 3339 in UTC, the instant an event's payload names (``now`` when none is given)."""
    moment = instant or dt.datetime.now(dt.UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds")


def authorization(
    *,
    card_id: int | None,
    pan_masked: str | None,
    txn: str,
    mti: str,
    amount: int,
    currency: str | None,
    response_code: str,
    reason: str,
    merchant_id: str,
    terminal_id: str,
    rrn: str,
    stan: str,
    acquirer_id: str,
    auth_code: str,
    balance: int | None,
    available: int | None,
    business_date: dt.date,
    occurred_at: str,
) -> Event:
    """``authorization.approved`` (response code 00) or ``authorization.declined``. (Once per request
    in the ledger batch: kept to one dict per Money and the currency's code looked up once.)"""
    cur = currency_alpha(currency or None)
    payload = {
        "card": None if card_id is None else f"card_{card_id}",
        "pan_masked": pan_masked,
        "txn": txn,
        "mti": mti,
        "amount": {"amount": amount, "currency": cur},
        "response_code": response_code,
        "reason": reason or None,
        "reason_text": (rules.describe(reason) or None) if reason else None,
        "merchant_id": merchant_id or None,
        "terminal_id": terminal_id or None,
        "rrn": rrn or None,
        "stan": stan,
        "acquirer_id": acquirer_id,
        "auth_code": auth_code or None,
        "balance": None if balance is None else {"amount": balance, "currency": cur},
        "available": None if available is None else {"amount": available, "currency": cur},
        "business_date": business_date.isoformat(),
        "occurred_at": occurred_at,
    }
    kind = "authorization.approved" if response_code == "00" else "authorization.declined"
    return Event(kind, payload, card_id, merchant_id or None)


def balance_low(
    *,
    card_id: int,
    pan_masked: str | None,
    available: int,
    threshold: int,
    currency: str | None,
    txn: str,
    rrn: str,
    merchant_id: str,
    occurred_at: str,
) -> Event:
    """``card.balance_low``: a debit took the available balance from at least ``threshold`` to below."""
    payload = {
        "card": card_ref(card_id),
        "pan_masked": pan_masked,
        "available": money(available, currency),
        "threshold": money(threshold, currency),
        "txn": txn,
        "rrn": rrn or None,
        "merchant_id": merchant_id or None,
        "occurred_at": occurred_at,
    }
    return Event("card.balance_low", payload, card_id, merchant_id or None)


def state_changed(
    *,
    card_id: int,
    pan_masked: str | None,
    from_state: str,
    to_state: str,
    action: str,
    actor: str,
    reason: str,
    occurred_at: str,
) -> Event:
    """``card.state_changed``, beside the ``card_events`` row of the change."""
    payload = {
        "card": card_ref(card_id),
        "pan_masked": pan_masked,
        "from_state": from_state,
        "to_state": to_state,
        "action": action,
        "reason": redact_text(reason) or None,  # an operator's words: a PAN typed in them is masked
        "actor": actor,
        "occurred_at": occurred_at,
    }
    return Event("card.state_changed", payload, card_id)


def changes_state(from_state: str | None, to_state: str) -> bool:
    """Whether a ``card_events`` row is a change of state (issuance and same-state rows are not)."""
    return from_state is not None and from_state != to_state


async def write_state_changes(conn: Any, changes: list[tuple[int, str | None, str, str, str, str]]) -> int:
    """``card.state_changed`` for each (card id, from, to, action, actor, reason) that changes a state,
    on ``conn`` (in the caller's transaction); reads the masked PANs in one statement."""
    moved = [c for c in changes if changes_state(c[1], c[2])]
    if not moved:
        return 0
    masked = {
        r["id"]: r["pan_masked"]
        for r in await conn.fetch(
            "SELECT id, pan_masked FROM cards WHERE id = ANY($1::bigint[])", [c[0] for c in moved]
        )
    }
    at = stamp()
    return await write_events(
        conn,
        [
            state_changed(
                card_id=cid, pan_masked=masked.get(cid), from_state=str(old), to_state=new, action=action,
                actor=actor, reason=reason, occurred_at=at,
            )
            for cid, old, new, action, actor, reason in moved
        ],
    )


async def kyc_changed(
    conn: Any,
    cardholder_id: int,
    decision: str,
    actor: str,
    *,
    from_level: str | None = None,
    from_aml: str | None = None,
) -> int:
    """``cardholder.kyc_changed`` on ``conn`` (in the caller's transaction, after the change): the
    cardholder's level and AML status now, and before (``from_*``; default: unchanged)."""
    row = await conn.fetchrow("SELECT kyc_level, aml_status FROM cardholders WHERE id = $1", cardholder_id)
    if row is None:
        return 0
    level, aml = str(row["kyc_level"]), str(row["aml_status"])
    payload = {
        "cardholder": cardholder_ref(cardholder_id),
        "decision": decision,
        "from_level": from_level or level,
        "to_level": level,
        "from_aml_status": from_aml or aml,
        "aml_status": aml,
        "actor": actor,
        "occurred_at": stamp(),
    }
    return await write_events(conn, [Event("cardholder.kyc_changed", payload)])
