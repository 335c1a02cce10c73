"""ops.money: how an amount is typed and shown, the one rule for every command."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ops.money import MoneyError, format_amount, format_money, money_json, parse_money


@given(st.integers(min_value=1, max_value=999_999_999_999))
def test_what_is_shown_parses_back_to_the_same_fen(minor: int) -> None:
    assert parse_money(format_money(minor)) == minor
    assert parse_money(format_amount(minor).replace(",", "")) == minor


@pytest.mark.parametrize(
    ("text", "minor"),
    [("500", 50000), ("500.5", 50050), ("0.01", 1), ("1,234.50", 123450), ("12.34 CNY", 1234)],
)
def test_yuan_as_people_type_it(text: str, minor: int) -> None:
    assert parse_money(text) == minor


@pytest.mark.parametrize("text", ["5.001", "abc", "0", "-1", "1,23", "1e3", "", "12.34 USD"])
def test_anything_else_is_refused_in_words(text: str) -> None:
    with pytest.raises(MoneyError, match=r"CNY|more than zero"):
        parse_money(text)


def test_shown_with_two_decimals_and_the_currency() -> None:
    assert format_money(123450, "156") == "1,234.50 CNY"
    assert format_money(-5) == "-0.05 CNY"
    assert money_json("balance", 50000, "156") == {"balance_minor": 50000, "currency": "CNY"}


def test_times_are_the_programmes_wall_clock_with_its_offset() -> None:
    from datetime import UTC, datetime

    from ops.localtime import format_local, iso_local

    at = datetime(2026, 12, 2, 10, 30, 5, tzinfo=UTC)
    assert format_local(at, "Asia/Shanghai") == "2026-12-02 18:30:05 +08:00"
    assert iso_local(at, "Asia/Shanghai") == "2026-12-02T18:30:05+08:00"
    assert format_local(at.replace(tzinfo=None), "Europe/London") == "2026-12-02 10:30:05 +00:00"
