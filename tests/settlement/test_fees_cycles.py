"""Fees, the exact profit split (hypothesis) and settlement cycles."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from settlement.cycles import Cycle, is_due, settlement_date
from settlement.fees import (
    REFUND_RULES,
    FeeSchedule,
    fee_function,
    refund_fee,
    sale_fee,
    schedule_for,
    split_exact,
    transaction_fee,
)

V1 = FeeSchedule(
    "*",
    "v1",
    date(2026, 1, 1),
    rate_bp=100,
    fixed_fee=10,
    min_fee=20,
    max_fee=500,
    refund_rule="percent",
    issuer_share_bp=2000,
    acquirer_share_bp=3000,
    platform_share_bp=5000,
)


@given(st.integers(-(10**15), 10**15), st.lists(st.integers(0, 10**6), min_size=1, max_size=6).filter(any))
def test_split_always_sums_exactly(total: int, weights: list[int]) -> None:
    shares = split_exact(total, weights)
    assert sum(shares) == total
    whole = sum(weights)
    for share, w in zip(shares, weights, strict=True):
        exact = abs(total) * w / whole
        assert abs(abs(share) - exact) < 1  # floor or ceiling of the exact share
        assert share == 0 or (share > 0) == (total > 0)
    assert split_exact(-total, weights) == [-s for s in shares]  # a returned fee undoes its shares


def test_split_examples() -> None:
    assert split_exact(100, [1, 1, 1]) == [34, 33, 33]
    assert split_exact(101, [2000, 3000, 5000]) == [20, 30, 51]
    assert split_exact(1, [2000, 3000, 5000]) == [0, 0, 1]
    assert split_exact(0, [1, 2]) == [0, 0]
    with pytest.raises(ValueError):
        split_exact(5, [0, 0])


@given(
    st.integers(0, 10**12),
    st.integers(0, 10000),
    st.integers(0, 1000),
    st.integers(0, 1000),
    st.one_of(st.none(), st.integers(0, 5000)),
)
def test_sale_fee_bounds(amount: int, bp: int, fixed: int, lo: int, hi: int | None) -> None:
    if hi is not None and hi < lo:
        lo, hi = hi, lo
    s = FeeSchedule("M", "v", date(2026, 1, 1), bp, fixed, lo, hi)
    fee = sale_fee(amount, s)
    assert 0 <= fee <= amount
    if amount >= lo:
        assert fee >= lo
    if hi is not None:
        assert fee <= hi


TXN_SIGNS = [("PURCHASE", "D"), ("COMPLETION", "D"), ("REFUND", "C"), ("VOID", "C"), ("REVERSAL", "C"),
             ("REVERSAL", "D"), ("TOPUP", "C")]


@given(
    st.integers(0, 10**15),
    st.integers(0, 10000),
    st.integers(0, 1000),
    st.integers(0, 1000),
    st.one_of(st.none(), st.integers(0, 5000)),
    st.sampled_from(REFUND_RULES),
)
def test_fee_function_is_transaction_fee(
    amount: int, bp: int, fixed: int, lo: int, hi: int | None, rule: str
) -> None:
    """The importer prices every detail with fee_function(schedule): the very rule of transaction_fee."""
    if hi is not None and hi < lo:
        lo, hi = hi, lo
    s = FeeSchedule("M", "v", date(2026, 1, 1), bp, fixed, lo, hi, rule)
    fee_of = fee_function(s)
    for txn_type, sign in TXN_SIGNS:
        assert fee_of(txn_type, sign, amount) == transaction_fee(txn_type, sign, amount, s), (txn_type, sign)
    with pytest.raises(ValueError):
        fee_of("CHARGEBACK", "D", amount)


def test_fee_examples_and_refund_rules() -> None:
    assert sale_fee(10000, V1) == 110  # 1% + 10
    assert sale_fee(500, V1) == 20  # minimum
    assert sale_fee(100000, V1) == 500  # maximum
    assert sale_fee(10, V1) == 10  # never more than the sale
    assert sale_fee(10050, V1) == 111  # 100.5 rounds half up
    assert refund_fee(2000, V1) == 20
    assert refund_fee(2000, FeeSchedule("*", "n", date(2026, 1, 1), 100, 10, refund_rule="none")) == 0
    assert refund_fee(2000, FeeSchedule("*", "f", date(2026, 1, 1), 100, 10, refund_rule="full")) == 30
    assert transaction_fee("PURCHASE", "D", 10000, V1) == 110
    assert transaction_fee("VOID", "C", 10000, V1) == -110
    assert transaction_fee("REVERSAL", "C", 10000, V1) == -110
    assert transaction_fee("REFUND", "C", 2000, V1) == -20
    assert transaction_fee("REVERSAL", "D", 2000, V1) == 20  # a refund undone
    assert transaction_fee("TOPUP", "C", 2000, V1) == 0
    assert transaction_fee("PURCHASE", "D", 10000, None) == 0


def test_schedule_validation_and_versions() -> None:
    with pytest.raises(ValueError, match="add up to 10000"):
        FeeSchedule(
            "M", "v", date(2026, 1, 1), 10, issuer_share_bp=1, acquirer_share_bp=1, platform_share_bp=1
        )
    with pytest.raises(ValueError, match=r"max fee 0\.04 CNY"):
        FeeSchedule("M", "v", date(2026, 1, 1), 10, min_fee=5, max_fee=4)
    v2 = FeeSchedule("*", "v2", date(2026, 6, 1), 50)
    assert schedule_for([v2, V1], date(2026, 5, 31)) is V1
    assert schedule_for([V1, v2], date(2026, 6, 1)) is v2
    assert schedule_for([V1], date(2025, 12, 31)) is None


def test_cycle_examples() -> None:
    tue = date(2026, 11, 24)
    assert settlement_date(tue, Cycle()) == date(2026, 11, 25)
    assert settlement_date(tue, Cycle("weekly", 1)) == date(2026, 11, 30)  # next Monday
    assert settlement_date(tue, Cycle("weekly", 2)) == date(2026, 12, 1)  # never the same day
    assert settlement_date(tue, Cycle("monthly", 25)) == date(2026, 11, 25)
    assert settlement_date(tue, Cycle("monthly", 24)) == date(2026, 12, 24)
    assert settlement_date(date(2026, 1, 31), Cycle("monthly", 31)) == date(2026, 2, 28)  # short month
    assert settlement_date(date(2026, 12, 31), Cycle("monthly", 5)) == date(2027, 1, 5)
    assert is_due(tue, Cycle(), date(2026, 11, 25)) and not is_due(tue, Cycle(), tue)
    for bad in (("weekly", None), ("weekly", 8), ("monthly", 0), ("daily", 3), ("hourly", None)):
        with pytest.raises(ValueError):
            Cycle(*bad)


@given(
    st.dates(date(2000, 1, 1), date(2090, 1, 1)),
    st.one_of(
        st.just(Cycle()),
        st.integers(1, 7).map(lambda d: Cycle("weekly", d)),
        st.integers(1, 31).map(lambda d: Cycle("monthly", d)),
    ),
)
def test_cycle_properties(business_date: date, cycle: Cycle) -> None:
    s = settlement_date(business_date, cycle)
    assert business_date < s <= business_date + timedelta(days=31)
    if cycle.kind == "weekly":
        assert s.isoweekday() == cycle.day and s - business_date <= timedelta(days=7)
    if cycle.kind == "monthly":
        assert cycle.day is not None
        assert s.day == cycle.day or (s.day < cycle.day and (s + timedelta(days=1)).day == 1)
    # every day between is not yet due
    assert all(
        not is_due(business_date, cycle, business_date + timedelta(days=k))
        for k in range((s - business_date).days)
    )
