"""Merchant service fees: the rate card, the fee of one transaction and the exact profit split.

A schedule is versioned and takes effect on a business date. Which fee applies is one rule,
``applicable_fee`` (settlement/README.md, "Which fee applies"): on a file's business date, the
merchant's own rate card in force (its newest with ``effective_from`` on or before the date), else the
default rate card ``*`` in force, else the merchant's flat ``fee-bps`` from the host
(``merchant add --fee-bps``), which the host carries in each clearing detail. A rate card in force
overrides the flat rate entirely.

Fee of a sale = round-half-up(amount * rate_bp / 10000) + fixed_fee, then raised to ``min_fee`` and
lowered to ``max_fee``, and never more than the amount itself. Money is integers in minor units.

What each transaction type does to the merchant's fee:
- PURCHASE, COMPLETION: the fee of a sale.
- REFUND: the schedule's refund rule says what comes back: ``none`` nothing, ``percent`` the basis-point
  part only (the fixed fee is kept), ``full`` the fee of a sale of the refunded amount.
- VOID, a REVERSAL of a debit: the transaction never happened, so its fee is returned in full. When the
  original was settled (same or earlier file) and the amount is the whole original amount, the import
  replaces the estimate below with exactly the original's fee and shares, negated, whatever rate card
  priced it; a partial reversal keeps the estimate on its own amount.
- a REVERSAL of a credit (a refund undone): the refund's returned fee is charged again.
- TOPUP: a load, not a sale: no fee (one taken at a merchant's terminal lowers its payout, no fee).

Profit sharing: each fee is divided between issuer, acquirer and platform by ``split_exact``, the
largest-remainder method, so the shares are integers that always add up to the fee exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Final

from ops.money import format_money

BP: Final = 10_000  # basis points in a whole
REFUND_RULES: Final = ("none", "percent", "full")
NO_FEE_VERSION: Final = ""
DEFAULT_MERCHANT: Final = "*"  # the rate card of every merchant without one of its own


@dataclass(frozen=True, slots=True)
class FeeSchedule:
    merchant_id: str  # "*" is the default for merchants without a schedule of their own
    version: str
    effective_from: date
    rate_bp: int
    fixed_fee: int = 0
    min_fee: int = 0
    max_fee: int | None = None
    refund_rule: str = "none"
    issuer_share_bp: int = 0
    acquirer_share_bp: int = 0
    platform_share_bp: int = BP

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.rate_bp <= BP:
            problems.append(f"rate_bp {self.rate_bp} is not 0-{BP}")
        if self.fixed_fee < 0 or self.min_fee < 0:
            problems.append("fixed_fee and min_fee must not be negative")
        if self.max_fee is not None and self.max_fee < self.min_fee:
            top, bottom = format_money(self.max_fee), format_money(self.min_fee)
            problems.append(f"max fee {top} (--max) is below min fee {bottom} (--min)")
        if self.refund_rule not in REFUND_RULES:
            problems.append(f"refund_rule {self.refund_rule!r} is not one of {', '.join(REFUND_RULES)}")
        shares = (self.issuer_share_bp, self.acquirer_share_bp, self.platform_share_bp)
        if min(shares) < 0 or sum(shares) != BP:
            problems.append(f"shares {shares} must be non-negative and add up to {BP}")
        if not self.version or not self.merchant_id:
            problems.append("merchant_id and version must not be empty")
        if problems:
            raise ValueError(f"fee schedule {self.merchant_id}/{self.version}: " + "; ".join(problems))

    @property
    def weights(self) -> tuple[int, int, int]:
        return (self.issuer_share_bp, self.acquirer_share_bp, self.platform_share_bp)


def _round_bp(amount: int, rate_bp: int) -> int:
    return (amount * rate_bp + BP // 2) // BP  # half up; amounts are non-negative


def sale_fee(amount: int, s: FeeSchedule) -> int:
    fee = _round_bp(amount, s.rate_bp) + s.fixed_fee
    fee = max(fee, s.min_fee)
    if s.max_fee is not None:
        fee = min(fee, s.max_fee)
    return min(fee, amount)


def refund_fee(amount: int, s: FeeSchedule) -> int:
    """The (positive) fee a refund of ``amount`` gives back to the merchant under the refund rule."""
    if s.refund_rule == "full":
        return sale_fee(amount, s)
    if s.refund_rule == "percent":
        return min(_round_bp(amount, s.rate_bp), amount)
    return 0


def transaction_fee(txn_type: str, sign: str, amount: int, s: FeeSchedule | None) -> int:
    """The merchant's fee for one clearing detail, signed: positive charged, negative returned."""
    if s is None or txn_type == "TOPUP":
        return 0
    if txn_type in ("PURCHASE", "COMPLETION"):
        return sale_fee(amount, s)
    if txn_type == "REFUND":
        return -refund_fee(amount, s)
    if txn_type == "VOID" or (txn_type == "REVERSAL" and sign == "C"):
        return -sale_fee(amount, s)
    if txn_type == "REVERSAL":  # sign D: a refund or void undone
        return refund_fee(amount, s)
    raise ValueError(f"unknown transaction type {txn_type!r}")


def fee_function(s: FeeSchedule) -> Callable[[str, str, int], int]:
    """``transaction_fee(txn_type, sign, amount, s)`` with ``s`` bound, for pricing a file's details: one
    rule, kept in ``transaction_fee`` (a copy of it with the schedule's fields read once measured
    0.68 -> 0.21 us per detail alone and nothing at 1M details, bench/README.md)."""
    return functools.partial(transaction_fee, s=s)


def split_exact(total: int, weights: Sequence[int]) -> list[int]:
    """Divide ``total`` in proportion to ``weights`` into integers that add up to ``total`` exactly.

    Largest remainder: everyone gets the floor of their exact share; the units left over go one each to
    the largest fractional remainders, ties to the earlier party. A negative total is split as its
    absolute value and negated, so a returned fee undoes exactly the shares it was charged with.
    """
    if total < 0:
        return [-s for s in split_exact(-total, weights)]
    whole = sum(weights)
    if whole <= 0 or min(weights) < 0:
        raise ValueError("weights must be non-negative and not all zero")
    shares = [total * w // whole for w in weights]
    left = total - sum(shares)
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for i in by_remainder[:left]:
        shares[i] += 1
    return shares


def schedule_for(schedules: Sequence[FeeSchedule], business_date: date) -> FeeSchedule | None:
    """The schedule in force on ``business_date`` among one merchant's schedules (any order)."""
    best: FeeSchedule | None = None
    for s in schedules:
        if s.effective_from <= business_date and (best is None or s.effective_from > best.effective_from):
            best = s
    return best


@dataclass(frozen=True, slots=True)
class AppliedFee:
    """What prices a merchant's details on a business date, and why (``applicable_fee``)."""

    schedule: FeeSchedule | None  # None: the host's flat fee-bps carried in the clearing file
    source: str  # "merchant" (its own rate card), "default" (rate card *) or "flat" (the host's fee-bps)

    def explain(self, merchant_id: str, on: date, flat_bps: int | None,
                upcoming: FeeSchedule | None = None) -> str:
        """One line for people: which fee applies to ``merchant_id`` on ``on`` and what it overrides."""
        flat = (f"merchant fee-bps {flat_bps}" if flat_bps is not None
                else f"{merchant_id} is not in the host, so it has no fee-bps")
        s = self.schedule
        if s is None:
            line = (f"no rate card in force on {on}: the host's merchant fee-bps {flat_bps} applies (carried "
                    "in the clearing file)" if flat_bps is not None
                    else f"no rate card in force on {on} and {flat}: no fee")
        elif self.source == "merchant":
            line = f"rate card {s.version} from {s.effective_from} applies on {on}; {flat} is overridden"
        else:
            line = (f"default rate card * {s.version} from {s.effective_from} applies on {on} ({merchant_id} "
                    f"has none of its own in force); {flat} is overridden")
        if upcoming is not None:
            who = "default rate card *" if upcoming.merchant_id == DEFAULT_MERCHANT else "rate card"
            line += f"; {who} {upcoming.version} takes over from {upcoming.effective_from}"
        return line


def applicable_fee(merchant_id: str, in_force: Mapping[str, FeeSchedule]) -> AppliedFee:
    """THE rule of which fee applies: ``in_force`` maps merchant id (``*`` the default) to the rate card in
    force on the business date (``schedule_for``); the merchant's own wins, then ``*``, then the host's
    flat fee-bps from the clearing file."""
    own = in_force.get(merchant_id)
    if own is not None and merchant_id != DEFAULT_MERCHANT:
        return AppliedFee(own, "merchant")
    default = in_force.get(DEFAULT_MERCHANT)
    if default is not None:
        return AppliedFee(default, "default")
    return AppliedFee(None, "flat")
