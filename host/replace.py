"""Card replacement (issue 16 item 4): `card replace CARD --reason lost|stolen|damaged|expiring`.

A replacement keeps the money: a new PAN on the same product, and in ONE database transaction of the
posting engine (host.ledger ``Txn.REPLACEMENT``) the old card's whole balance moves to the new card
(one transfer, key ``replace:<old card id>``, original_key ``card:<old card id>``; an empty card moves
nothing), today's use moves with it (host.rules.carry_usage), the old card is blocked and names its
replacement (``replaced_by``), the new card gets the cardholder, and both get a card_events row.

- Only a named or verified card (host.kyc.card_tier): PBOC, an unnamed card cannot be reported lost
  or replaced (nobody can prove it is theirs).
- From active, frozen, lost, stolen or expired (an expired card's money is rescued this way);
  ``expiring`` (the renewal) only from active or frozen.
- Refused while pre-auth holds are pending: a hold's completion or release posts on the card that
  holds it, so the held money cannot move to the new card before the hold resolves.
- The old card becomes ``lost`` / ``stolen`` for those reasons (answered 41 / 43, so a found card is
  recognised), ``closed`` for ``damaged`` / ``expiring`` (14).
- The new card: physical (the old card's form) into inventory with a PIN-mailer line (host.issue's
  mailer flow; ``card activate`` when it reaches the cardholder); virtual: active at once, no mailer.
- The PIN: ``lost`` / ``stolen`` / ``damaged`` get a new random PIN (JA + DG: whoever found the card
  may know the old one); ``expiring`` keeps it: the old card's PIN under the LMK (cards.pin_lmk) gives
  the new account's PVV by DG. A card issued before pin_lmk was kept gets a new PIN (``pin`` says so).
- Idempotent: the request key is the old card's, so a retry (or two operators at once) replaces once;
  replacing a card already replaced answers that replacement again (``duplicate``).

A credit that reaches the old card later (a reversal of an earlier purchase) stays on the old card,
which can be unloaded (`card unload`); the ledger check proves the replacement itself moved exactly
the balance from the old card to the card it names.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from host import catalog, issue, kyc
from host.catalog import CatalogError
from host.keys import IssuerCrypto
from host.ledger import Ledger
from host.model import Decision, Rc, Replacing, Request, Txn
from ops.localtime import format_local
from ops.money import format_money

# reason -> what the old card becomes
OLD_BECOMES = {"lost": "lost", "stolen": "stolen", "damaged": "closed", "expiring": "closed"}
REASONS = tuple(OLD_BECOMES)
_RESCUE = ("active", "frozen", "lost", "stolen", "expired")
# reason -> the old card's states it may be replaced from
ALLOWED_FROM: dict[str, tuple[str, ...]] = {
    "lost": _RESCUE,
    "stolen": _RESCUE,
    "damaged": _RESCUE,
    "expiring": ("active", "frozen"),
}
BATCH = "replacements"  # the issue batch of replacement cards (inventory report, `inventory activate`)


@dataclass(frozen=True)
class Replacement:
    old_card_id: int
    new_card_id: int
    reason: str
    old_from: str  # the old card's state before
    old_to: str  # lost, stolen or closed
    new_state: str  # inventory (physical) or active (virtual)
    form: str  # physical or virtual
    pan: str | None  # the new clear PAN, for the caller's output only (shown once; None on a retry)
    pan_masked: str
    expiry: str
    moved: int  # minor units moved to the new card
    currency: str
    pin: str  # "new" (a new random PIN), "kept" (the old card's) or "new_no_pin_lmk" (none kept)
    mailer: Path | None
    duplicate: bool  # the card had been replaced already: nothing was done now


_OLD_CARD = """
SELECT c.id, c.state, c.form, c.pin_lmk, c.replaced_by, p.code AS product, a.currency,
       a.credits_posted - a.debits_posted AS balance,
       (SELECT count(*) FROM holds h WHERE h.card_id = c.id AND h.state = 'pending') AS holds,
       (SELECT coalesce(sum(amount), 0) FROM holds h WHERE h.card_id = c.id AND h.state = 'pending') AS held,
       (SELECT max(expires_at) FROM holds h WHERE h.card_id = c.id AND h.state = 'pending') AS holds_until
FROM cards c JOIN products p ON p.id = c.product_id JOIN accounts a ON a.id = c.account_id
WHERE c.id = $1"""


async def _old_card(conn: Any, card_id: int) -> dict[str, Any]:
    row = await conn.fetchrow(_OLD_CARD, card_id)
    if row is None:
        raise CatalogError(f"no card {card_id}")
    out = dict(row)
    out["tier"] = await kyc.card_tier(conn, card_id)
    return out


async def _done(conn: Any, old_card_id: int) -> Replacement | None:
    """The replacement already made of a card (for a retry), from the cards and the audit."""
    row = await conn.fetchrow(
        """SELECT o.id, o.state, n.id AS new_id, n.state AS new_state, n.form, n.pan_masked, n.expiry,
                  a.currency, e.from_state, e.reason,
                  (SELECT amount FROM transfers t WHERE t.key = 'replace:' || o.id) AS moved
           FROM cards o JOIN cards n ON n.id = o.replaced_by JOIN accounts a ON a.id = n.account_id
           LEFT JOIN LATERAL (SELECT from_state, reason FROM card_events
                              WHERE card_id = o.id AND action = 'replace' ORDER BY id DESC LIMIT 1) e ON true
           WHERE o.id = $1""",
        old_card_id,
    )
    if row is None:
        return None
    reason = (row["reason"] or "").split(";")[0]
    return Replacement(
        row["id"],
        row["new_id"],
        reason,
        row["from_state"] or "",
        row["state"],
        row["new_state"],
        row["form"],
        None,
        row["pan_masked"],
        row["expiry"],
        int(row["moved"] or 0),
        row["currency"],
        "",
        None,
        True,
    )


def _refusal(card_id: int, old: dict[str, Any], reason: str, tz: str) -> str | None:
    """Why the card cannot be replaced for ``reason`` (one line), else None."""
    if old["tier"] == "anonymous":
        return (
            f"card {card_id} is anonymous (no named cardholder, or its cardholder is under AML review):"
            " an unnamed card cannot be reported lost or replaced"
        )
    if old["state"] not in ALLOWED_FROM[reason]:
        allowed = ", ".join(ALLOWED_FROM[reason])
        return f"card {card_id} is {old['state']}: --reason {reason} replaces a card that is {allowed}"
    if old["holds"]:
        cur = old["currency"]
        until = format_local(old["holds_until"], tz)
        return (
            f"card {card_id} has {old['holds']} pending pre-auth hold(s) of {format_money(old['held'], cur)}"
            f" (the last expires {until}): a hold's completion posts on this card, so replace it once they"
            " are completed, voided or expired"
        )
    return None


async def replace_card(
    pool: Any,
    crypto: IssuerCrypto,
    card_id: int,
    reason: str,
    *,
    actor: str,
    today: dt.date,
    mailer_dir: Path | None,
    timezone: str = "UTC",
) -> Replacement:
    """Replace card ``card_id`` (see the module); ``today`` is the business date (the new card's
    validity counts from its month), ``timezone`` the programme's (for the hold expiry in a refusal)."""
    if reason not in OLD_BECOMES:
        raise CatalogError(f"--reason {reason}: one of {', '.join(REASONS)}")
    old = await pool.run(_old_card, card_id)
    if old["replaced_by"] is not None:
        done: Replacement | None = await pool.run(_done, card_id)
        assert done is not None
        return done
    refusal = _refusal(card_id, old, reason, timezone)
    if refusal:
        raise CatalogError(refusal)
    product = await pool.run(catalog.product, old["product"])
    if product["bin"] is None:
        raise CatalogError(f"product {old['product']} has no BIN range")
    keep = old["pin_lmk"] if reason == "expiring" else None
    pin = "kept" if keep else ("new_no_pin_lmk" if reason == "expiring" else "new")
    pan, row, secrets = await issue.draw_card(
        pool, crypto, product, await pool.run(catalog.partitions), pin_lmk=keep
    )
    [new_id] = await pool.run(
        lambda conn: catalog.insert_cards(conn, old["product"], [row], BATCH, "inventory", today, actor)
    )
    virtual = old["form"] == "virtual"
    req = Request(
        key=f"replace:{card_id}",
        mti="0000",
        txn=Txn.REPLACEMENT,
        acquirer_id="admin",
        card_id=card_id,
        amount=old["balance"],
        actor=actor,
        replacing=Replacing(
            new_id, OLD_BECOMES[reason], "active" if virtual else "inventory", reason, ALLOWED_FROM[reason]
        ),
    )
    d: Decision = (await pool.run(Ledger().post_batch, [req]))[0]
    if d.code != Rc.APPROVED or d.duplicate:
        # Another replacement of this card won the race, or the card changed since it was read: the
        # card just drawn is never used (closed, with the audit saying why; an account is never deleted).
        await pool.run(
            lambda conn: catalog.set_card_state(
                conn, new_id, "closed", actor=actor, reason=f"replacement of card {card_id} not made"
            )
        )
        won: Replacement | None = await pool.run(_done, card_id) if d.duplicate else None
        if won is not None:
            return won
        raise CatalogError(
            f"card {card_id}: replacement refused ({d.code}): the card changed meanwhile"
            " (state, balance or a new hold); see `payswitch card show` and run it again"
        )
    expiry = catalog.expiry_for(today, product["validity_months"])  # the one insert_cards stored
    mailer = None
    if not virtual and mailer_dir is not None:
        mailer = issue.write_mailer(
            mailer_dir, f"replace-{card_id}", old["product"], expiry, [(new_id, row.pan_masked, secrets)]
        )
    return Replacement(
        card_id,
        new_id,
        reason,
        old["state"],
        OLD_BECOMES[reason],
        req.replacing.new_to if req.replacing else "inventory",
        old["form"],
        pan,
        row.pan_masked,
        expiry,
        old["balance"],
        old["currency"],
        pin,
        mailer,
        False,
    )



async def links(conn: Any, card_id: int) -> dict[str, int | None]:
    """The card that replaced this one and the card this one replaces (`card show`)."""
    row = await conn.fetchrow(
        "SELECT c.replaced_by, (SELECT o.id FROM cards o WHERE o.replaced_by = c.id) AS replaces"
        " FROM cards c WHERE c.id = $1",
        card_id,
    )
    if row is None:
        raise CatalogError(f"no card {card_id}")
    return {"replaced_by": row["replaced_by"], "replaces": row["replaces"]}
