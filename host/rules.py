"""Authorization rules: pure functions of a locked card, its product, the merchant and the request.

Each returns a response code when the request must be declined, else None. The posting engine
(host.ledger) calls them in a fixed order, so the first failing rule names the decline:

=======================  =====================================================================
card state               inventory 05, frozen 05, closed 14, lost 41, stolen 43, expired 54
expiry                   card past its YYMM, or DE14 / track expiry different from the card's: 54
PIN                      tries already at the limit 75; wrong PIN 55 (75 when it reaches the limit);
                         PIN required by the product but none sent: 55; HSM could not verify: 96
currency                 request currency not the product's: 13
amount                   zero or negative: 13
product restrictions     MCC or merchant group not allowed: 57; top-up of a fixed-amount card: 57
limits                   per-transaction or daily amount: 61; daily count or no uses left: 65
funds                    available balance below the amount: 51; top-up above max balance: 61
=======================  =====================================================================
"""

from __future__ import annotations

import datetime as dt

from host.model import CardState, Merchant, Pin, Rc, Request, Txn

STATE_CODES = {
    "inventory": Rc.DO_NOT_HONOUR,
    "frozen": Rc.DO_NOT_HONOUR,
    "closed": Rc.INVALID_CARD,
    "lost": Rc.LOST,
    "stolen": Rc.STOLEN,
    "expired": Rc.EXPIRED,
}

# Card state machine: state -> states an operator may move it to.
TRANSITIONS: dict[str, frozenset[str]] = {
    "inventory": frozenset({"active", "expired", "closed"}),
    "active": frozenset({"frozen", "lost", "stolen", "expired", "closed"}),
    "frozen": frozenset({"active", "lost", "stolen", "expired", "closed"}),
    "lost": frozenset({"closed"}),
    "stolen": frozenset({"closed"}),
    "expired": frozenset({"closed"}),
    "closed": frozenset(),
}

DEBITS = frozenset({Txn.PURCHASE, Txn.PREAUTH})


def yymm(today: dt.date) -> str:
    return f"{today.year % 100:02d}{today.month:02d}"


def check_card(card: CardState, req: Request, today: dt.date) -> str | None:
    code = STATE_CODES.get(card.state)
    if code is not None:
        return code
    if card.expiry < yymm(today):  # YYMM compares as text within a century
        return Rc.EXPIRED
    if req.expiry is not None and req.expiry != card.expiry:
        return Rc.EXPIRED
    return None


def check_pin(card: CardState, req: Request, max_tries: int) -> str | None:
    """Apply the PIN result to the try counter (mutates card) and say whether to decline."""
    if req.pin is Pin.NONE:
        if card.product.pin_required and req.txn in DEBITS:
            return Rc.BAD_PIN
        return None
    if card.pin_tries >= max_tries:
        return Rc.PIN_TRIES
    if req.pin is Pin.ERROR:
        return Rc.SYSTEM_ERROR
    if req.pin is Pin.BAD:
        card.pin_tries += 1
        card.card_dirty = True
        return Rc.PIN_TRIES if card.pin_tries >= max_tries else Rc.BAD_PIN
    if card.pin_tries:
        card.pin_tries = 0
        card.card_dirty = True
    return None


def check_amount(card: CardState, req: Request) -> str | None:
    if req.currency and req.currency != card.product.currency:
        return Rc.INVALID_AMOUNT
    if req.amount <= 0:
        return Rc.INVALID_AMOUNT
    return None


def check_merchant_allowed(card: CardState, merchant: Merchant) -> str | None:
    p = card.product
    if p.allowed_mccs is not None and merchant.mcc not in p.allowed_mccs:
        return Rc.NOT_PERMITTED_CARD
    if p.allowed_groups is not None and merchant.group_code not in p.allowed_groups:
        return Rc.NOT_PERMITTED_CARD
    return None


def roll_day(card: CardState, today: dt.date) -> None:
    if card.day != today:
        card.day = today
        card.day_amount = 0
        card.day_count = 0
        card.counters_dirty = True


def check_limits(card: CardState, amount: int, today: dt.date) -> str | None:
    p = card.product
    if amount > p.per_txn_limit:
        return Rc.AMOUNT_LIMIT
    roll_day(card, today)
    if card.day_amount + amount > p.daily_amount_limit:
        return Rc.AMOUNT_LIMIT
    if card.day_count + 1 > p.daily_count_limit:
        return Rc.FREQUENCY_LIMIT
    if card.uses_left is not None and card.uses_left <= 0:
        return Rc.FREQUENCY_LIMIT
    return None


def count_use(card: CardState, amount: int) -> None:
    """An approved purchase or pre-auth counts against the daily limits and the uses left."""
    card.day_amount += amount
    card.day_count += 1
    card.counters_dirty = True
    if card.uses_left is not None:
        card.uses_left -= 1
        card.card_dirty = True


def check_topup(card: CardState, amount: int) -> str | None:
    if card.product.kind == "fixed_amount":
        return Rc.NOT_PERMITTED_CARD
    if card.balance + amount > card.product.max_balance:
        return Rc.AMOUNT_LIMIT
    return None


def balance_field(card: CardState) -> str:
    """DE54: ledger (01) and available (02) balances of the card account (type 10)."""
    cur = card.product.currency

    def one(kind: str, value: int) -> str:
        return f"10{kind}{cur}{'C' if value >= 0 else 'D'}{abs(value):012d}"

    return one("01", card.balance) + one("02", card.available)
