"""KYC tiers (issue 16 item 2): the level a cardholder has reached decides a card's limits.

Levels, lowest first: ``anonymous`` (nobody named: a gift card, or a cardholder without an ID),
``named`` (name + ID number given: registering with an ID makes a cardholder named at once) and
``verified`` (an operator approved the document check). A cardholder the AML screening holds in
``review`` or ``confirmed`` counts as anonymous for limits until an operator clears them (host.aml),
so a hit blocks loads above the anonymous maximum without touching the KYC level itself.
"""

from __future__ import annotations

from typing import Any

LEVELS: tuple[str, ...] = ("anonymous", "named", "verified")


class KycError(ValueError):
    """A KYC decision that cannot be taken; str() is the one line for the operator."""


def tier_rank(level: str) -> int:
    """0 for anonymous, 1 named, 2 verified (raises KycError for an unknown level)."""
    try:
        return LEVELS.index(level)
    except ValueError:
        raise KycError(f"KYC level {level!r}: one of {', '.join(LEVELS)}") from None


# The SQL of a card's effective tier, shared by card_tier and the ledger's locked read (host.ledger),
# so the tier that decides a limit is computed one way: `h` is the cardholder row (NULL: no owner).
TIER_SQL = "CASE WHEN h.id IS NULL OR h.aml_status <> 'clear' THEN 'anonymous' ELSE h.kyc_level END"
# The columns the ledger's locked read adds per card (`p` the product): the tier and the product's
# maximum balance for it (the rule takes the lower of that and p.max_balance: host.rules.check_topup).
TIER_COLUMNS = (
    f"{TIER_SQL} AS tier, CASE {TIER_SQL} WHEN 'verified' THEN p.max_balance_verified"
    " WHEN 'named' THEN p.max_balance_named ELSE p.max_balance_anonymous END AS tier_max_balance"
)


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
