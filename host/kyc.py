"""KYC tiers (issue 16 item 2): the level a cardholder has reached decides a card's limits.

Levels, lowest first: ``anonymous`` (nobody named: a gift card, or a cardholder without an ID),
``named`` (name + ID number given: registering with an ID makes a cardholder named at once) and
``verified`` (an operator approved the document check). A cardholder the AML screening holds in
``review`` or ``confirmed`` counts as anonymous for limits until an operator clears them (host.aml),
so a hit blocks loads above the anonymous maximum without touching the KYC level itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from host import events as host_events
from ops.money import format_money

LEVELS: tuple[str, ...] = ("anonymous", "named", "verified")
DECISIONS = ("approve", "reject", "downgrade")


class KycError(ValueError):
    """A KYC decision that cannot be taken; str() is the one line for the operator. (Not a CatalogError:
    host.catalog imports this module; host.cardholders turns it into one for the CLI.)"""


def tier_rank(level: str) -> int:
    """0 for anonymous, 1 named, 2 verified (raises KycError for an unknown level)."""
    try:
        return LEVELS.index(level)
    except ValueError:
        raise KycError(f"KYC level {level!r}: one of {', '.join(LEVELS)}") from None


# The SQL of a card's effective tier, shared by card_tier and the ledger's locked read (host.ledger),
# so the tier that decides a limit is computed one way: `h` is the cardholder row (NULL: no owner).
TIER_SQL = "CASE WHEN h.id IS NULL OR h.aml_status <> 'clear' THEN 'anonymous' ELSE h.kyc_level END"
# The product's (`p`) maximum balance for that tier: what the ledger's locked read takes per card (the
# rule takes the lower of it and p.max_balance: host.rules.check_topup).
TIER_CAP_SQL = (
    f"CASE {TIER_SQL} WHEN 'verified' THEN p.max_balance_verified"
    " WHEN 'named' THEN p.max_balance_named ELSE p.max_balance_anonymous END"
)
# Both, for people (`card show`, a refused load): the tier and its cap.
TIER_COLUMNS = f"{TIER_SQL} AS tier, {TIER_CAP_SQL} AS tier_max_balance"


async def card_tier(conn: Any, card_id: int) -> str:
    """The tier that decides card ``card_id``'s limits: its cardholder's kyc_level, ``anonymous`` when
    it has no cardholder or the cardholder's aml_status is not ``clear``; raises KycError for no card."""
    row = await conn.fetchrow(
        f"SELECT {TIER_SQL} AS tier FROM cards c LEFT JOIN cardholders h ON h.id = c.cardholder_id "
        "WHERE c.id = $1",
        card_id,
    )
    if row is None:
        raise KycError(f"no card {card_id}")
    return str(row["tier"])


async def card_named(conn: Any, card_id: int) -> bool:
    """Whether card ``card_id`` has a named or verified cardholder, whatever AML screening says: the
    PBOC test for reporting a card lost or stolen (the holder can prove it is theirs). Blocking a card
    must stay possible while its cardholder is under AML review; replacing it does not (host.replace
    uses ``card_tier``: a replacement would hand a frozen card's money to a live one)."""
    return bool(
        await conn.fetchval(
            "SELECT h.kyc_level IN ('named', 'verified') FROM cards c JOIN cardholders h"
            " ON h.id = c.cardholder_id WHERE c.id = $1",
            card_id,
        )
    )


async def tier_refusal(conn: Any, card_id: int) -> str:
    """Why a load was declined ``tier_max_balance``, for people: the card's tier and its maximum."""
    row = await conn.fetchrow(
        f"SELECT {TIER_COLUMNS}, p.currency FROM cards c JOIN products p ON p.id = c.product_id"
        " LEFT JOIN cardholders h ON h.id = c.cardholder_id WHERE c.id = $1",
        card_id,
    )
    if row is None:
        raise KycError(f"no card {card_id}")
    cap = format_money(row["tier_max_balance"], row["currency"])
    return f"the load would exceed the card's KYC tier maximum ({row['tier']}: {cap})"


@dataclass(frozen=True)
class Decided:
    """One KYC decision as recorded (kyc_events)."""

    cardholder_id: int
    event_id: int
    decision: str  # approved / rejected / downgraded
    from_level: str
    to_level: str
    actor: str
    reason: str
    at: Any  # datetime


async def decide(
    conn: Any,
    cardholder_id: int,
    decision: str,
    *,
    reason: str,
    actor: str,
    to_level: str | None = None,
) -> Decided:
    """An operator's KYC decision on a live cardholder, recorded with who, when and why (kyc_events).

    ``approve``: the document check passed, the cardholder becomes ``verified`` (needs an ID number).
    ``reject``: the document check failed; the level stays (a verified cardholder is downgraded instead).
    ``downgrade`` (``to_level`` below the current level): e.g. a document found invalid later.
    A card's limits follow from the next request on (the ledger reads the level with every batch)."""
    if decision not in DECISIONS:
        raise KycError(f"KYC decision {decision!r}: one of {', '.join(DECISIONS)}")
    reason = " ".join(reason.split())
    if not reason:
        raise KycError("--reason: say why (it is kept with the decision)")
    if len(reason) > 500:
        raise KycError("--reason: at most 500 characters")
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT state, kyc_level, id_number_hash IS NOT NULL AS has_id FROM cardholders"
            " WHERE id = $1 FOR UPDATE",
            cardholder_id,
        )
        if row is None:
            raise KycError(f"no cardholder {cardholder_id} (`payswitch cardholder list` finds one)")
        if row["state"] != "active":
            raise KycError(f"cardholder {cardholder_id} is closed")
        level = str(row["kyc_level"])
        if decision == "approve":
            if not row["has_id"]:
                raise KycError(
                    f"cardholder {cardholder_id} has no ID number: verified needs one"
                    f" (`payswitch cardholder update {cardholder_id} --id-type TYPE --id-number NUMBER`)"
                )
            if level == "verified":
                raise KycError(f"cardholder {cardholder_id} is verified already")
            new, recorded = "verified", "approved"
        elif decision == "reject":
            if level == "verified":
                raise KycError(
                    f"cardholder {cardholder_id} is verified: `--downgrade-to named` takes it back"
                )
            new, recorded = level, "rejected"
        else:
            if to_level is None:
                raise KycError("a downgrade names the level: --downgrade-to LEVEL")
            if tier_rank(to_level) >= tier_rank(level):
                raise KycError(
                    f"cardholder {cardholder_id} is {level}: a downgrade goes to a lower level"
                    f" ({', '.join(LEVELS[: tier_rank(level)]) or 'none'})"
                )
            new, recorded = to_level, "downgraded"
        if new != level:
            await conn.execute(
                "UPDATE cardholders SET kyc_level = $2, updated_at = now() WHERE id = $1", cardholder_id, new
            )
        ev = await conn.fetchrow(
            "INSERT INTO kyc_events (cardholder_id, from_level, to_level, decision, actor, reason)"
            " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, at",
            cardholder_id,
            level,
            new,
            recorded,
            actor,
            reason,
        )
        await host_events.kyc_changed(conn, cardholder_id, recorded, actor, from_level=level)
    return Decided(cardholder_id, int(ev["id"]), recorded, level, new, actor, reason, ev["at"])
