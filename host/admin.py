"""Administrative postings (not network requests): loads, unloads and forfeits by an operator, through
the same engine, and closing a card (only once no money is on it).

Money out of a card goes one of two ways before the card is closed (issue 15 item 2):

- ``admin_unload``: ``card unload`` moves the available balance (or part of it) from the card account to
  the issuer's **cash-out payable** (account kind ``cash_out``, one per currency), keyed
  ``unload:<reference>`` (the same reference twice unloads once). The next settlement run pays every
  unpaid unload out to the cardholder (settlement/README.md, "Cash-outs").
- ``forfeit``: ``card close --forfeit`` moves the whole balance to **breakage income** (kind
  ``breakage``, one per currency) in the transaction that closes the card.

``close_card`` refuses a card that holds money (posted balance or pending holds), naming both ways.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from host import card_events
from host.bank_accounts import (
    Destination,
    To,
    destination_for,
    record_destination,
    unload_destination,
    unload_lock,
)
from host.catalog import CatalogError
from host.kyc import tier_refusal
from host.ledger import Ledger
from host.model import Decision, Rc, Request, Txn
from host.rules import TRANSITIONS
from ops.money import format_money

REFERENCE = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")

_LOAD_MESSAGES = {
    "61": "above the product's maximum balance",
    "57": "this product cannot be loaded",
    "05": "the card is not active",
    "14": "the card is closed or unknown",
    "41": "the card is reported lost",
    "43": "the card is reported stolen",
    "54": "the card has expired",
    "13": "invalid amount",
}


async def admin_load(pool: Any, card_id: int, amount: int, reference: str | None = None) -> Decision:
    """Credit a card from the issuer's funding account of its partition (the issuer's float).

    ``reference`` makes the load idempotent: the same reference twice loads once.
    """
    key = "admin:" + (reference or uuid.uuid4().hex)
    req = Request(
        key=key, mti="0000", txn=Txn.ADMIN_LOAD, acquirer_id="admin", card_id=card_id, amount=amount
    )
    decisions: list[Decision] = await pool.run(Ledger().post_batch, [req])
    return decisions[0]


async def load_refusal(pool: Any, card_id: int, d: Decision) -> str:
    """Why a load was refused, for people: over the KYC tier's maximum names the tier and its cap
    (host.kyc), the rest by response code."""
    if d.reason == "tier_max_balance":
        refusal: str = await pool.run(tier_refusal, card_id)
        return refusal
    return _LOAD_MESSAGES.get(d.code, f"refused with response code {d.code}")


@dataclass(frozen=True)
class Unload:
    card_id: int
    reference: str
    amount: int  # minor units moved to the cash-out payable
    currency: str  # ISO 4217 numeric
    balance: int  # the card's balance after it
    held: int  # still held by pending pre-auths (not unloaded)
    duplicate: bool  # the reference had unloaded already: nothing moved now
    # where settlement pays it, captured at the unload (host.bank_accounts); None: an unload made
    # before host migration 0019, paid at the desk
    destination: Destination | None = None


@dataclass(frozen=True)
class Closed:
    card_id: int
    from_state: str
    forfeited: int  # minor units posted to breakage income (0: the card was empty)
    currency: str


def unload_key(reference: str) -> str:
    return "unload:" + reference


# A card's state and money: its balance (posted) and what pending pre-auths hold of it.
_CARD_MONEY = """SELECT c.state, a.currency, a.credits_posted - a.debits_posted AS balance,
                        a.debits_pending AS held
                 FROM cards c JOIN accounts a ON a.id = c.account_id WHERE c.id = $1"""


async def _card_money(conn: Any, card_id: int) -> Any:
    row = await conn.fetchrow(_CARD_MONEY, card_id)
    if row is None:
        raise CatalogError(f"no card {card_id}")
    return row


async def _unload_done(conn: Any, key: str) -> Any:
    return await conn.fetchrow(
        "SELECT r.card_id, t.amount, t.currency FROM auth_requests r JOIN transfers t ON t.key = r.key"
        " WHERE r.key = $1 AND r.txn = 'admin_unload'",
        key,
    )


def _held_note(held: int, currency: str) -> str:
    if not held:
        return ""
    return f" ({format_money(held, currency)} held by pending pre-auths stays until they resolve)"


async def _post_unload(
    conn: Any, req: Request, card_id: int, to: To | None
) -> tuple[Decision, Destination]:
    """Capture where the unload is paid, then post it, under the reference's lock: settlement pays
    the destination of the moment of the unload (host.bank_accounts). A posting that does not make
    the transfer takes its destination row away again (one left by a crash is replaced next time)."""
    async with unload_lock(conn, req.key):
        dest = await destination_for(conn, card_id, to)
        await record_destination(conn, req.key, card_id, dest)
        d: Decision = (await Ledger().post_batch(conn, [req]))[0]
        if d.duplicate:  # posted before (its row was kept): report the destination it has
            dest = await unload_destination(conn, req.key) or Destination("desk", dest.cardholder_id)
        elif d.code != Rc.APPROVED:
            await conn.execute(
                "DELETE FROM unload_destinations WHERE unload_key = $1"
                " AND NOT EXISTS (SELECT 1 FROM transfers WHERE key = $1)",
                req.key,
            )
    return d, dest


async def admin_unload(
    pool: Any, card_id: int, reference: str, amount: int | None = None, *, to: To | None = None
) -> Unload:
    """Move ``amount`` (default: all of the available balance) from the card to the cash-out payable.

    Idempotent by ``reference``: the same reference again returns the first unload (``duplicate``) and
    moves nothing; the same reference with another card, amount or ``to`` is refused. Refused above
    the available balance: money held by pending pre-auths cannot be unloaded until the hold resolves.
    ``to`` (host.bank_accounts): None pays to the cardholder's registered bank account when there is
    one, else at the programme's desk; ``"bank"`` refuses without one; ``"desk"`` pays at the desk.
    """
    if not REFERENCE.fullmatch(reference):
        raise CatalogError("--reference: 1 to 64 of letters, digits and _ . : / -")
    key = unload_key(reference)
    done = await pool.run(_unload_done, key)
    money = await pool.run(_card_money, card_id)
    cur = money["currency"]
    if done is not None:
        if done["card_id"] != card_id or (amount is not None and amount != done["amount"]):
            raise CatalogError(
                f"reference {reference} already unloaded {format_money(done['amount'], done['currency'])}"
                f" from card {done['card_id']}: give another --reference"
            )
        dest = await pool.run(unload_destination, key)
        paid_to = "desk" if dest is None or dest.payee == "desk" else "bank"
        if to is not None and to != paid_to:
            where = "bank account" if paid_to == "bank" else "desk"
            raise CatalogError(
                f"reference {reference} already unloaded to the {where}:"
                f" give another --reference for --to {to}"
            )
        return Unload(
            card_id, reference, done["amount"], done["currency"], money["balance"], money["held"], True,
            dest,
        )
    available = money["balance"] - money["held"]
    if amount is None:
        amount = available
        if amount <= 0:
            note = _held_note(money["held"], cur)
            raise CatalogError(f"card {card_id} has nothing available to unload{note}")
    if amount > available:
        raise CatalogError(
            f"card {card_id}: {format_money(amount, cur)} is more than its available balance"
            f" {format_money(available, cur)}{_held_note(money['held'], cur)}: give --amount up to that,"
            " or leave --amount out to unload all that is available"
        )
    req = Request(
        key=key, mti="0000", txn=Txn.ADMIN_UNLOAD, acquirer_id="admin", card_id=card_id, amount=amount
    )
    d, dest = await pool.run(_post_unload, req, card_id, to)
    if d.code != Rc.APPROVED:
        if d.code == Rc.DUPLICATE_TRANSMISSION:  # the same reference, committed meanwhile by another
            raise CatalogError(f"reference {reference} was used by another unload just now: give another")
        raise CatalogError(
            f"card {card_id}: unload of {format_money(amount, cur)} refused ({d.code}): its balance"
            " changed meanwhile; see `payswitch card show` and run it again"
        )
    after = await pool.run(_card_money, card_id)
    return Unload(card_id, reference, amount, cur, after["balance"], after["held"], d.duplicate, dest)


async def _close_if_empty(conn: Any, card_id: int, actor: str | None = None) -> tuple[str, Any]:
    """Close the card if it holds no money; else change nothing. (old state, its money row)."""
    async with conn.transaction():
        # the card account row first, as every writer of a card locks it (host.ledger), then the card
        row = await conn.fetchrow(_CARD_MONEY + " FOR NO KEY UPDATE OF a", card_id)
        if row is None:
            raise CatalogError(f"no card {card_id}")
        if row["balance"] or row["held"]:
            return row["state"], row
        if "closed" not in TRANSITIONS[row["state"]]:
            raise CatalogError(f"card {card_id} is closed already")
        await conn.execute("UPDATE cards SET state = 'closed', updated_at = now() WHERE id = $1", card_id)
        await card_events.record(conn, card_id, row["state"], "closed", "close", actor=actor)
        return row["state"], row


async def close_card(pool: Any, card_id: int, *, forfeit: bool = False, actor: str | None = None) -> Closed:
    """Close a card for good. Refused while it holds money, unless ``forfeit``: then its whole balance
    goes to breakage income in the transaction that closes it (refused while holds are pending).
    ``actor``: who closes it (the card_events row; default the CLI's)."""
    old, money = await pool.run(_close_if_empty, card_id, actor)
    cur, balance, held = money["currency"], money["balance"], money["held"]
    if not (balance or held):
        return Closed(card_id, old, 0, cur)
    if held:
        raise CatalogError(
            f"card {card_id} holds {format_money(balance, cur)}, {format_money(held, cur)} of it held by"
            " pending pre-auths: close it once they are completed, voided or expired"
            + ("" if forfeit else f" (`payswitch card unload {card_id} --reference ...` takes the rest now)")
        )
    if not forfeit:
        raise CatalogError(
            f"card {card_id} holds {format_money(balance, cur)}: unload it first"
            f" (`payswitch card unload {card_id} --reference ...`) or give --forfeit to post it to"
            " breakage income"
        )
    req = Request(
        key=f"forfeit:{card_id}:{uuid.uuid4().hex}",
        mti="0000",
        txn=Txn.FORFEIT,
        acquirer_id="admin",
        card_id=card_id,
        amount=balance,
        actor=actor or "",
    )
    d: Decision = (await pool.run(Ledger().post_batch, [req]))[0]
    if d.code != Rc.APPROVED:
        raise CatalogError(f"card {card_id}: its balance changed while closing ({d.code}): run it again")
    return Closed(card_id, old, balance, cur)
