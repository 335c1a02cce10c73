"""Offline sales at the issuer: the advice posts once, beyond the balance if it must, and the shortfall
is owed until a load repays it (issue 19 item 4; host/README.md "Offline advices").

A terminal that could not reach the switch approved a sale under the product's floor limit and sends
it later as an advice (specs/README.md "Offline sales"): H2H 0220, DE3 000000, DE25 00, DE60 =
POS DE60 (60.1 ``36``) + "/" + POS DE61 (the sale's own batch n6 + STAN n6 + MMDD), DE38 the terminal's
approval code, DE12/DE13 the sale's local time. The sale has happened: the host cannot decline it
for money or limits, only record it.

- **Natural key.** ``advice_key``: ``offline:<DE42>:<DE41>:<batch>:<STAN>`` is the advice's request key
  (auth_requests.key), so the same sale sent twice, whatever DE7/DE11 each copy carries, is a
  duplicate of the first (answered 00 with the first answer, nothing posted again), across restarts
  and concurrent batches (the primary key; a race is decided again by host.ledger).
- **Posting** (``post_advice``): card -> merchant payable of the whole sale (code ``offline``, in the
  clearing file as a PURCHASE); when the available balance does not cover it, the card's
  ``offline_receivable`` account (created then, one per card) first lends the card the shortfall
  (``offline_shortfall``: receivable -> card), in the same batch, so the legs sum to zero, the card
  never goes below zero and the merchant is paid the whole sale in one clearing posting. No limits,
  velocity or controls (the sale happened; it is not counted against them either); an amount above
  the product's floor limit is posted all the same and logged (`ledger check` lists those advices:
  the terminal should not have approved them).
- **Card states.** Posted for a card active, frozen, lost, stolen or expired: the sale was made before
  the card was blocked (a terminal with the card in its exception list would not have approved it),
  so the card owes it. Declined for a card in inventory (never sold: 05) or closed (its money is gone,
  nothing can owe: 14), an unknown card (14) or merchant (03). The advice is answered either way (the
  terminal drops it); a declined one is for the acquirer to take up.
- **The block** (``due_reason``): while a card's receivable is above zero, an online purchase or pre-auth
  is declined 51 ``offline_receivable_due``. A top-up, ``card load`` or API load repays first
  (``repay``: card -> receivable, ``offline_repay``, the same batch as the load); the rest stays on the
  card. Refunds, voids and reversals credit the card as before and repay nothing: each must stay
  undoable by its own reversal, which takes back exactly what it gave the card. The reversal of a load
  that repaid gives the debt back (``owe_again``: receivable -> card, ``offline_shortfall`` keyed by
  the reversal), so the card returns only what it kept.
- **Never reversed.** A 0420 naming an advice (DE90 MTI 0220, DE3 000000, DE25 00) is answered 00 and
  undoes nothing (``reverses_advice``: host.h2h drops its original): an advice is repeated, not
  reversed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from host import rules
from host.model import CardState, Decision, Merchant, Request, Txn
from ops.logs import get_logger
from specs.catalogue import is_offline_advice

if TYPE_CHECKING:  # host.ledger imports this module
    from host.ledger import Ledger, _Batch

log = get_logger(__name__)

KEY_PREFIX = "offline:"
SHORTFALL = ":shortfall"  # transfer key suffix of the receivable's loan to the card (migration 0027)
REPAY = ":repay"  # transfer key suffix of a load's repayment
# States of a card whose offline sale is posted (see the module docstring).
POSTED_STATES = frozenset({"active", "frozen", "lost", "stolen", "expired"})
_STATE_REFUSALS = {"inventory": "card_inventory", "closed": "card_closed"}


def advice_key(merchant_id: str, terminal_id: str, batch: str, stan: str) -> str:
    """The advice's natural key: the merchant, the terminal and the sale's own POS batch and STAN."""
    return f"{KEY_PREFIX}{merchant_id.strip()}:{terminal_id.strip()}:{batch}:{stan}"


def parse_advice(msg: dict[str, Any], req: Request) -> tuple[str, str] | None:
    """Give an offline advice its natural key and the terminal's approval code; else the refusal
    (response code, reason): 12 for an 0220 of goods that is no advice (no 60.1 ``36``), 30 when the
    advice lacks what names it."""
    de60 = str(msg.get("60", ""))
    if not is_offline_advice(str(msg["t"]), msg.get("3"), de60):
        return ("12", "an 0220 of goods is an offline advice only with 60.1 36 in DE60")
    _, slash, de61 = de60.partition("/")
    if not slash or len(de61) < 12 or not de61[:12].isdigit():
        return ("30", "DE60 of an offline advice ends in '/' and POS DE61: batch n6, STAN n6, MMDD")
    if not req.merchant_id or not req.terminal_id:
        return ("30", "DE41 and DE42 name an offline advice")
    approval = str(msg.get("38", "")).strip()
    if not 1 <= len(approval) <= 6 or not approval.isprintable():
        return ("30", "DE38 missing: an offline advice carries the terminal's approval code")
    if req.amount <= 0:
        return ("30", "an offline advice carries the sale's amount in DE4")
    req.key = advice_key(req.merchant_id, req.terminal_id, de61[:6], de61[6:12])
    req.offline_auth_id = approval
    return None


def reverses_advice(original_mti: str | None, de3: Any, de25: Any) -> bool:
    """Whether a reversal names an offline advice (DE90's MTI 0220 with the advice's DE3 and DE25): the
    only 0220 of DE3 000000 DE25 00 the host accepts is an advice (host.h2h refuses the rest 12)."""
    return original_mti == "0220" and de3 == "000000" and de25 == "00"


def due_reason(card: CardState) -> str | None:
    """An online purchase or pre-auth of a card that owes offline sales is declined until repaid."""
    return "offline_receivable_due" if card.receivable_due > 0 else None


async def load_dues(conn: Any, cards: Iterable[CardState]) -> None:
    """What each batch card with a receivable owes (its row is behind the card's locked account row:
    only a batch holding that lock posts to it). No statement when no card has one (the common case)."""
    owing = {c.receivable_id: c for c in cards if c.receivable_id is not None}
    if not owing:
        return
    for row in await conn.fetch(
        "SELECT id, debits_posted - credits_posted AS due FROM accounts WHERE id = ANY($1::bigint[])",
        list(owing),
    ):
        owing[row["id"]].receivable_due = row["due"]


async def post_advice(
    ledger: Ledger, conn: Any, b: _Batch, r: Request, card: CardState, merchant: Merchant | None
) -> Decision:
    """The advice's postings (see the module docstring); the last transfer is the sale's own (key
    ``r.key``), as host.ledger expects of an approved request."""
    macct = merchant.accounts.get(card.part) if merchant is not None else None
    reason = _refusal(card, r, merchant)
    if reason is None and macct is None:
        reason = "merchant_account_missing"
    if reason is not None or macct is None:
        reason = reason or "merchant_account_missing"
        return Decision(rules.code_of(reason), reason=reason)
    shortfall = r.amount - max(card.available, 0)
    if shortfall > 0:
        receivable = await receivable_account(conn, card)
        ledger._leg(b, r.key + SHORTFALL, receivable, card, card, shortfall, "offline_shortfall", r.key)
        card.receivable_due += shortfall
    floor = card.product.offline_floor_limit
    if r.amount > floor:
        log.warning(
            "offline sale above the product's floor limit; posted",
            request=r.key,
            amount=r.amount,
            floor_limit=floor,
            product=card.product.code,
        )
    d = ledger._post(b, r, card.account_id, macct, card, "single", Txn.OFFLINE)
    d.auth_id = r.offline_auth_id or d.auth_id
    return d


def _refusal(card: CardState, r: Request, merchant: Merchant | None) -> str | None:
    """Why an advice is not posted: the card's state (see POSTED_STATES), the merchant, the amount."""
    if card.state not in POSTED_STATES:
        return _STATE_REFUSALS.get(card.state, "card_closed")
    if merchant is None:
        return "merchant_unknown"
    if merchant.state == "closed":  # suspended: still paid for what it sold before
        return "merchant_closed"
    return rules.check_amount(card, r)


def repay(ledger: Ledger, b: _Batch, r: Request, card: CardState) -> int:
    """Before an approved load's own transfer: what it repays of the card's receivable (card ->
    receivable, at most the load), so the block lifts when nothing is owed. Returns the amount."""
    amount = min(card.receivable_due, r.amount)
    if amount <= 0 or card.receivable_id is None:
        return 0
    # The load's credit comes next in the same batch: the card's sums are netted in one UPDATE.
    ledger._leg(b, r.key + REPAY, card, card.receivable_id, card, amount, "offline_repay", r.key)
    card.receivable_due -= amount
    return amount


def owe_again(ledger: Ledger, b: _Batch, r: Request, card: CardState, amount: int) -> None:
    """Before a reversal's own transfer undoes a load that repaid ``amount`` of offline sales owed: the
    receivable lends it to the card again (receivable -> card, ``offline_shortfall`` keyed by the
    reversal), so the debt is back as it was and the block with it."""
    assert card.receivable_id is not None
    ledger._leg(b, r.key + SHORTFALL, card.receivable_id, card, card, amount, "offline_shortfall", r.key)
    card.receivable_due += amount


def repayable(card: CardState, amount: int) -> int:
    """How much of a load of ``amount`` would go to the receivable (the rest is what the card gains)."""
    return max(0, min(card.receivable_due, amount))


async def receivable_account(conn: Any, card: CardState) -> int:
    """The card's offline_receivable account, created (and named on the card) the first time. In the
    batch's transaction, behind the card's locked account row: a rolled-back batch leaves none."""
    if card.receivable_id is None:
        account = await conn.fetchval(
            """INSERT INTO accounts (kind, currency, part, no_overdraft, card_id)
               VALUES ('offline_receivable', $1, $2, false, $3)
               ON CONFLICT (card_id) WHERE kind = 'offline_receivable' DO UPDATE SET part = EXCLUDED.part
               RETURNING id""",
            card.product.currency,
            card.part,
            card.card_id,
        )
        await conn.execute("UPDATE cards SET offline_receivable_id = $1 WHERE id = $2", account, card.card_id)
        card.receivable_id = account
    return card.receivable_id
