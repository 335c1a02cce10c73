"""Card expiry: move cards past their expiry date to state ``expired``.

A card is valid through the last day of its expiry month (YYMM) in the programme's zone: "today" is
the business date (``host.business_day``, as ``host.rules.check_card`` reads it for every request), so
on business date D every card whose YYMM is before D's YYMM has expired. Requests on such a card
are declined 54 whether or not this job has run (the rules check the date on every request); the job
makes the state say so, for operators, reports and the card's history.

Only states from which the state machine (``host.rules.TRANSITIONS``) allows ``expired`` are moved:
``active``, ``frozen`` and ``inventory`` (stock past its date can no longer be sold; ``card activate``
refuses it too); ``lost``, ``stolen``, ``closed`` cards keep their state.

Cards move in batches (``UPDATE`` of at most ``batch`` rows picked by an id subselect, ``FOR UPDATE
SKIP LOCKED``, one short transaction each) so a month-end with many expiries never holds many row
locks at once or blocks a card's writer for long; a card row locked by a writer at that moment is
left for the next run. ``host serve`` runs it every ``host.card_expiry_seconds`` (``run``);
``payswitch card expire`` runs it once.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import trio
from prometheus_client import Counter

from host import events as host_events
from host.business_day import business_today
from host.card_events import SWEEP_ACTOR
from host.rules import TRANSITIONS, yymm
from ops.config import Config
from ops.logs import get_logger
from ops.pgpool import PgPool

log = get_logger(__name__)

CARDS_EXPIRED = Counter(
    "payswitch_host_cards_expired_total",
    "Cards moved to expired by the card-expiry sweep, by the state they were in.",
    ["from_state"],
)

EXPIRES_FROM: tuple[str, ...] = tuple(sorted(s for s, nxt in TRANSITIONS.items() if "expired" in nxt))
BATCH = 1000
# The states as literals (they are the state machine's own names), so the planner can use the partial
# index cards_expirable_expiry (migration 0006) whose predicate is this same list.
_STATES = ", ".join(f"'{s}'" for s in EXPIRES_FROM)


@dataclass
class ExpiryResult:
    as_of: dt.date
    expiry_before: str  # cards with an expiry (YYMM) before this one have expired
    dry_run: bool
    by_state: dict[str, int] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(self.by_state.values())

    def summary(self) -> str:
        states = ", ".join(f"{s} {n}" for s, n in sorted(self.by_state.items()))
        verb = "would expire" if self.dry_run else "expired"
        return (
            f"{'dry run: ' if self.dry_run else ''}{self.count} cards {verb}"
            f"{f' ({states})' if states else ''} as of {self.as_of.isoformat()}"
            f" (expiry before {self.expiry_before})"
        )


async def due(conn: Any, expiry_before: str) -> dict[str, int]:
    """How many cards would move, by state (the dry run)."""
    rows = await conn.fetch(
        f"SELECT state, count(*) AS n FROM cards WHERE state IN ({_STATES}) AND expiry < $1 GROUP BY state",
        expiry_before,
    )
    return {r["state"]: int(r["n"]) for r in rows}


async def expire_batch(
    conn: Any, expiry_before: str, limit: int, actor: str = SWEEP_ACTOR
) -> dict[str, int]:
    """Move at most ``limit`` expired cards to ``expired`` and record each move in card_events, by
    ``actor`` (one statement: the audit has exactly the moves), and its ``card.state_changed`` in the
    outbox (host.events) in the same transaction; returns counts by old state."""
    async with conn.transaction():
        rows = await conn.fetch(
            f"""WITH due AS (
                    SELECT id, state FROM cards WHERE state IN ({_STATES}) AND expiry < $1
                    ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED
                ), moved AS (
                    UPDATE cards c SET state = 'expired', updated_at = now() FROM due
                    WHERE c.id = due.id RETURNING due.id, due.state
                ), audit AS (
                    INSERT INTO card_events (card_id, from_state, to_state, action, actor)
                    SELECT id, state, 'expired', 'expire', $3 FROM moved
                )
                SELECT id, state FROM moved ORDER BY id""",
            expiry_before,
            limit,
            actor,
        )
        await host_events.write_state_changes(
            conn, [(r["id"], r["state"], "expired", "expire", actor, "") for r in rows]
        )
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    return counts


async def expire_cards(
    pool: PgPool, as_of: dt.date, *, dry_run: bool = False, batch: int = BATCH, actor: str = SWEEP_ACTOR
) -> ExpiryResult:
    """One pass: every card past its expiry on business date ``as_of`` (host.business_day), in batches;
    ``actor``: who the card_events name (the sweep's own, or the operator of ``card expire``)."""
    result = ExpiryResult(as_of, yymm(as_of), dry_run)
    if dry_run:
        result.by_state = await pool.run(due, result.expiry_before)
        return result
    while True:
        moved = await pool.run(expire_batch, result.expiry_before, batch, actor)
        for state, n in moved.items():
            result.by_state[state] = result.by_state.get(state, 0) + n
            CARDS_EXPIRED.labels(state).inc(n)
        if sum(moved.values()) < batch:
            break
    return result


async def run(pool: PgPool, config: Config) -> None:
    """``host serve``'s sweep: every ``host.card_expiry_seconds``, like the hold-expiry sweeper."""
    while True:
        await trio.sleep(config.host.card_expiry_seconds)
        try:
            result = await expire_cards(pool, business_today(config))
        except Exception as exc:  # keep sweeping; the database may come back
            log.error("card expiry sweep failed", error=repr(exc))
            continue
        if result.count:  # the CLI prints its own summary; the service logs it
            log.info(
                "cards expired", count=result.count, expiry_before=result.expiry_before, **result.by_state
            )
