"""The audit of card state changes (issue 16 item 9): one append-only ``card_events`` row per change.

Every writer of ``cards.state`` records who did it, when, from which state to which, the action and
why, in the transaction (mostly the statement) that changes the state, so the audit cannot miss a
change or name one that was rolled back:

==============================  ===========================================================
issuance (host.catalog)         NULL -> inventory / active, action ``issue``
an operator (set_card_state)    ``activate``, ``freeze``, ``unfreeze``, ``lost``, ``stolen``,
                                ``close``, ``expire`` (whatever the command is called)
the expiry sweep (host.expiry)  -> expired, action ``expire``, actor ``host:card-expiry`` for
                                ``host serve``'s sweep, the operator for ``card expire``
a forfeit (host.ledger)         -> closed, action ``forfeit``
replacement (host.ledger)       the old card -> lost / stolen / closed and the new card,
                                action ``replace``, the reason and the other card in ``reason``
an owner (host.cardholders)     the state unchanged, action ``assign``, ``to cardholder N``
                                in ``reason``: `card assign`, `card issue --cardholder`
==============================  ===========================================================

Each row that changes a state (not issuance, not an unchanged state) also writes the outbox event
``card.state_changed`` (host.events) in the same transaction, for the API's webhooks.
"""

from __future__ import annotations

from typing import Any

from host import events as host_events
from ops.actor import cli_actor

# The actor of the card-expiry sweep that `host serve` runs (no operator is behind it).
SWEEP_ACTOR = "host:card-expiry"

INSERT_SQL = (
    "INSERT INTO card_events (card_id, from_state, to_state, action, actor, reason)"
    " VALUES ($1, $2, $3, $4, $5, $6)"
)


async def record(
    conn: Any,
    card_id: int,
    from_state: str | None,
    to_state: str,
    action: str,
    *,
    actor: str | None = None,
    reason: str = "",
) -> None:
    """One event, on ``conn`` (inside the caller's transaction); ``actor`` defaults to the CLI's. A
    change of state also writes its ``card.state_changed`` to the outbox (host.events), in the same
    transaction."""
    who = actor or cli_actor()
    await conn.execute(INSERT_SQL, card_id, from_state, to_state, action, who, reason)
    await host_events.write_state_changes(conn, [(card_id, from_state, to_state, action, who, reason)])


async def events(conn: Any, card_id: int, limit: int = 100) -> list[dict[str, Any]]:
    """A card's events, newest first (``card events``)."""
    rows = await conn.fetch(
        """SELECT id, at, actor, from_state, to_state, action, reason FROM card_events
           WHERE card_id = $1 ORDER BY id DESC LIMIT $2""",
        card_id,
        limit,
    )
    return [dict(r) for r in rows]
