"""Authorization rules: pure functions of a locked card, its product, the merchant and the request.

Each returns the reason a request must be declined (a key of ``REASONS``), else None; the reason
names its response code (``code_of``) and a text for people (``describe``). The posting engine
(host.ledger) calls them in a fixed order, so the first failing rule names the decline, and keeps the
reason with the request (``auth_requests.reason``: ``card history`` shows it; ``pos`` prints it).

=======================  =====================================================================
card state               inventory 05, frozen 05, closed 14, lost 41, stolen 43, expired 54
expiry                   card past its YYMM: 54 ``card_expired``; DE14 / track expiry different
                         from the card's (the card has not expired): 14 ``expiry_mismatch``
PIN                      tries already at the limit 75; wrong PIN 55 (75 when it reaches the limit);
                         PIN required by the product but none sent: 55 ``pin_missing`` (the
                         contract has no "PIN required" code and 99 is not an H2H code; a terminal
                         answers 55 by asking for the PIN, which is right); HSM could not verify: 96
currency                 request currency not the product's: 13
amount                   zero or negative: 13
product restrictions     MCC or merchant group not allowed: 57; top-up of a fixed-amount card: 57
limits                   per-transaction or daily amount: 61; daily count or no uses left: 65
spend controls           (host.controls) week / month / lifetime or merchant-group amount: 61,
                         their counts: 65; outside the card's allowed hours: 57
funds                    available balance below the amount: 51; top-up above max balance: 61
KYC tier                 top-up or load above the tier's maximum balance (the product's
                         max_balance_<tier> for the cardholder's kyc_level; anonymous without a
                         cardholder or under AML review), when lower than max balance: 61
                         ``tier_max_balance``
payment code             (host.payment_codes, entry mode 03x; checked first) used 05, expired 54,
                         over its cap 61, unknown 14, balance or top-up by code 12; no PIN needed
chip                     (host.chip, after the card state, before the PIN) chip entry without chip
                         data 30, ARQC wrong 05, ATC not increasing 05, not verifiable 96, swipe or
                         keyed sale of a chip card 57 or flagged; contactless within the no-CVM
                         limits needs no PIN, beyond them a PIN (55 ``pin_missing``)
=======================  =====================================================================
"""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

from host import chip
from host.model import CardState, Merchant, Pin, Rc, Request, Txn


class Reason(NamedTuple):
    code: str  # DE39 it is answered with
    text: str  # for people: `card history`, `pos`


# Every reason the host declines for: the one table (auth_requests.reason holds the key).
REASONS: dict[str, Reason] = {
    "card_inventory": Reason(Rc.DO_NOT_HONOUR, "card not activated yet"),
    "card_frozen": Reason(Rc.DO_NOT_HONOUR, "card frozen"),
    "card_closed": Reason(Rc.INVALID_CARD, "card closed"),
    "card_lost": Reason(Rc.LOST, "card reported lost"),
    "card_stolen": Reason(Rc.STOLEN, "card reported stolen"),
    "card_expired": Reason(Rc.EXPIRED, "card expired"),
    "card_unknown": Reason(Rc.INVALID_CARD, "no such card"),
    "expiry_mismatch": Reason(Rc.INVALID_CARD, "expiry date does not match the card's"),
    "pin_missing": Reason(Rc.BAD_PIN, "PIN required, none entered"),
    "pin_wrong": Reason(Rc.BAD_PIN, "wrong PIN"),
    "pin_tries_exceeded": Reason(Rc.PIN_TRIES, "PIN tries exceeded"),
    "pin_unverified": Reason(Rc.SYSTEM_ERROR, "the PIN could not be verified (HSM)"),
    "pin_changed_meanwhile": Reason(Rc.BAD_PIN, "the PIN was changed while this PIN change was verified"),
    "currency_mismatch": Reason(Rc.INVALID_AMOUNT, "currency is not the card's"),
    "amount_not_positive": Reason(Rc.INVALID_AMOUNT, "amount is zero"),
    "mcc_not_allowed": Reason(Rc.NOT_PERMITTED_CARD, "merchant category not allowed for the card's product"),
    "merchant_group_not_allowed": Reason(Rc.NOT_PERMITTED_CARD, "merchant not in the product's groups"),
    "topup_fixed_amount": Reason(Rc.NOT_PERMITTED_CARD, "a fixed-amount card cannot be topped up"),
    "per_txn_limit": Reason(Rc.AMOUNT_LIMIT, "over the per-transaction limit"),
    "daily_amount_limit": Reason(Rc.AMOUNT_LIMIT, "over the daily amount limit"),
    "daily_count_limit": Reason(Rc.FREQUENCY_LIMIT, "daily count limit reached"),
    "no_uses_left": Reason(Rc.FREQUENCY_LIMIT, "no uses left on the card"),
    # spend controls (host.controls): windows beyond the day, hours, merchant-group caps
    "week_amount_limit": Reason(Rc.AMOUNT_LIMIT, "over the weekly amount limit"),
    "week_count_limit": Reason(Rc.FREQUENCY_LIMIT, "weekly count limit reached"),
    "month_amount_limit": Reason(Rc.AMOUNT_LIMIT, "over the monthly amount limit"),
    "month_count_limit": Reason(Rc.FREQUENCY_LIMIT, "monthly count limit reached"),
    "lifetime_amount_limit": Reason(Rc.AMOUNT_LIMIT, "over the card's lifetime amount limit"),
    "lifetime_count_limit": Reason(Rc.FREQUENCY_LIMIT, "the card's lifetime count limit reached"),
    "outside_allowed_hours": Reason(Rc.NOT_PERMITTED_CARD, "outside the card's allowed hours"),
    "group_amount_limit": Reason(Rc.AMOUNT_LIMIT, "over the card's limit at this merchant group"),
    "group_count_limit": Reason(Rc.FREQUENCY_LIMIT, "the card's count limit at this merchant group reached"),
    "max_balance": Reason(Rc.AMOUNT_LIMIT, "the top-up would exceed the maximum balance"),
    "tier_max_balance": Reason(Rc.AMOUNT_LIMIT, "the load would exceed the card's KYC tier maximum balance"),
    "insufficient_funds": Reason(Rc.INSUFFICIENT_FUNDS, "insufficient funds"),
    "merchant_unknown": Reason(Rc.INVALID_MERCHANT, "merchant not known to the host"),
    "merchant_suspended": Reason(Rc.INVALID_MERCHANT, "merchant suspended"),
    "merchant_closed": Reason(Rc.INVALID_MERCHANT, "merchant closed"),
    "merchant_account_missing": Reason(Rc.SYSTEM_ERROR, "the merchant has no account for the card"),
    "original_not_found": Reason(Rc.ORIGINAL_NOT_FOUND, "original transaction not found"),
    "original_undone": Reason(Rc.INVALID_TXN, "original already voided or reversed"),
    "original_refunded": Reason(Rc.INVALID_TXN, "original partly refunded: refund the rest instead"),
    "void_amount_differs": Reason(Rc.ORIGINAL_AMOUNT, "void amount differs from the original's"),
    "refund_exceeds_original": Reason(Rc.INVALID_AMOUNT, "refund exceeds what is left of the original"),
    "hold_not_pending": Reason(Rc.INVALID_TXN, "the pre-authorization is no longer on hold"),
    "completion_over_hold": Reason(Rc.INVALID_AMOUNT, "completion above the hold and its tolerance"),
    "credit_already_spent": Reason(Rc.INSUFFICIENT_FUNDS, "what the reversal would take back is spent"),
    "reversed_before_arrival": Reason(Rc.DO_NOT_HONOUR, "reversed before it arrived"),
    "key_reused": Reason(Rc.DUPLICATE_TRANSMISSION, "retransmission key reused for another request"),
    "posting_failed": Reason(Rc.SYSTEM_ERROR, "the ledger could not post it"),
    # Payment codes (host.payment_codes). Used: 05, not 14 (kept for a code never made) nor 94 (which
    # tells the acquirer its own retransmission key was misused): the code was real, it has paid.
    "payment_code_used": Reason(Rc.DO_NOT_HONOUR, "payment code already used"),
    "payment_code_expired": Reason(Rc.EXPIRED, "payment code expired"),
    "payment_code_cap": Reason(Rc.AMOUNT_LIMIT, "over the payment code's amount cap"),
    "payment_code_txn": Reason(Rc.INVALID_TXN, "a payment code pays purchases and pre-authorizations only"),
    # Offline sales (host.offline): a card owing offline sales beyond its balance spends online again
    # once a top-up or load has repaid them.
    "offline_receivable_due": Reason(Rc.INSUFFICIENT_FUNDS, "offline sales owed: a top-up repays them first"),
    # Chip and contactless (host.chip). Missing chip data: 30, the message lacks what its own entry mode
    # says it carries (the terminal's fault); a fallback declined: 57, not permitted to the cardholder
    # (the card must be inserted or tapped); the cryptogram wrong or replayed: 05, as a bad card.
    "chip_data_missing": Reason(Rc.FORMAT_ERROR, "chip entry without complete chip data (ARQC)"),
    "arqc_failed": Reason(Rc.DO_NOT_HONOUR, "the chip's cryptogram (ARQC) is wrong"),
    "arqc_amount": Reason(Rc.DO_NOT_HONOUR, "the chip's cryptogram is for another amount"),
    "atc_replayed": Reason(Rc.DO_NOT_HONOUR, "the chip's transaction counter did not increase (replayed)"),
    "chip_unverified": Reason(Rc.SYSTEM_ERROR, "the chip's cryptogram could not be verified (HSM)"),
    "chip_fallback": Reason(Rc.NOT_PERMITTED_CARD, "a chip card swiped or keyed: insert or tap it"),
}

STATE_REASONS = {
    "inventory": "card_inventory",
    "frozen": "card_frozen",
    "closed": "card_closed",
    "lost": "card_lost",
    "stolen": "card_stolen",
    "expired": "card_expired",
}


def code_of(reason: str) -> str:
    """The response code a reason is answered with."""
    return REASONS[reason].code


def describe(reason: str | None) -> str:
    """The reason in words (``""`` for none); an unknown key is shown as it is."""
    if not reason:
        return ""
    known = REASONS.get(reason)
    return known.text if known is not None else reason.replace("_", " ")

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
    reason = STATE_REASONS.get(card.state)
    if reason is not None:
        return reason
    if card.expiry < yymm(today):  # YYMM compares as text within a century
        return "card_expired"
    if req.expiry is not None and req.expiry != card.expiry:
        # The card is valid: the date presented is not its own. Not 54 (which tells the cardholder the
        # card has expired): 14, the card data presented is not a card of ours.
        return "expiry_mismatch"
    return None


def check_pin(card: CardState, req: Request, max_tries: int) -> str | None:
    """Apply the PIN result to the try counter (mutates card) and say whether to decline.

    A payment by payment code (entry mode 03x, host.payment_codes) needs no PIN even on a product with
    ``pin_required``: the cardholder authenticated in the app that made the one-time code. Nor does a
    card-not-present purchase from the programme's own API (``card_not_present``, host.h2h): its client
    (a merchant-bound key) authenticated it, and the card number and expiry must match the card's."""
    if req.payment_code is not None:
        return None
    if req.pin is Pin.NONE and req.card_not_present:  # the programme's API, its client authenticated
        return None
    if req.pin is Pin.NONE:
        # contactless (host.chip): within the no-CVM limits no PIN, beyond them a PIN, whatever the product
        needed = chip.pin_needed(card, req) if req.chip is not None else None
        if needed is None:
            needed = card.product.pin_required and req.txn in DEBITS
        if needed:
            return "pin_missing"
        return None
    if card.pin_tries >= max_tries:
        return "pin_tries_exceeded"
    if req.pin is Pin.ERROR:
        return "pin_unverified"
    if req.pin is Pin.BAD:
        card.pin_tries += 1
        card.card_dirty = True
        return "pin_tries_exceeded" if card.pin_tries >= max_tries else "pin_wrong"
    if card.pin_tries:
        card.pin_tries = 0
        card.card_dirty = True
    return None


def check_amount(card: CardState, req: Request) -> str | None:
    if req.currency and req.currency != card.product.currency:
        return "currency_mismatch"
    if req.amount <= 0:
        return "amount_not_positive"
    return None


def check_merchant_allowed(card: CardState, merchant: Merchant) -> str | None:
    p = card.product
    if p.allowed_mccs is not None and merchant.mcc not in p.allowed_mccs:
        return "mcc_not_allowed"
    if p.allowed_groups is not None and merchant.group_code not in p.allowed_groups:
        return "merchant_group_not_allowed"
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
        return "per_txn_limit"
    roll_day(card, today)
    if card.day_amount + amount > p.daily_amount_limit:
        return "daily_amount_limit"
    if card.day_count + 1 > p.daily_count_limit:
        return "daily_count_limit"
    if card.uses_left is not None and card.uses_left <= 0:
        return "no_uses_left"
    return None


def count_use(card: CardState, amount: int) -> None:
    """An approved purchase or pre-auth counts against the daily limits and the uses left."""
    card.day_amount += amount
    card.day_count += 1
    card.counters_dirty = True
    if card.uses_left is not None:
        card.uses_left -= 1
        card.card_dirty = True


def carry_usage(old: CardState, new: CardState) -> None:
    """A replacement (host.replace) hands what the old card has used to the new one, so a new PAN is
    not a fresh set of limits: the day's amount and count (for the business date they are for) and a
    usage-limited card's uses left. Window counters beyond the day are carried here too."""
    new.day, new.day_amount, new.day_count = old.day, old.day_amount, old.day_count
    new.counters_dirty = True
    if old.uses_left is not None and new.uses_left != old.uses_left:
        new.uses_left = old.uses_left
        new.card_dirty = True
    if old.spend is not None and new.spend is not None:  # week, month, lifetime, group sums
        old.spend.carry_to(new.spend)
    new.controls = old.controls  # and its spend controls (the card's overrides go with it: _REPLACE_SQL)


def check_topup(card: CardState, amount: int) -> str | None:
    if card.product.kind == "fixed_amount":
        return "topup_fixed_amount"
    # The effective cap is the lower of the product's own and its KYC tier's (issue 16 item 2); the
    # reason names the one that binds, so an operator knows whether a KYC upgrade would help.
    tier_cap = card.tier_max_balance
    if tier_cap is not None and tier_cap < card.product.max_balance:
        return "tier_max_balance" if card.balance + amount > tier_cap else None
    if card.balance + amount > card.product.max_balance:
        return "max_balance"
    return None


def balance_field(card: CardState) -> str:
    """DE54: ledger (01) and available (02) balances of the card account (type 10)."""
    cur = card.product.currency

    def one(kind: str, value: int) -> str:
        return f"10{kind}{cur}{'C' if value >= 0 else 'D'}{abs(value):012d}"

    return one("01", card.balance) + one("02", card.available)
