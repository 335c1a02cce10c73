"""ops.digits: the one check of text that becomes a number, for any text at all."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ops.digits import ROW_NUMBER_DIGITS, is_digits, row_number
from ops.money import MoneyError, parse_money


def test_ascii_digits_only() -> None:
    assert is_digits("0") and is_digits("0421")
    for text in ("", "¹", "4²", "٣", "１２", "-1", "1 ", "1.0", "0x1"):
        assert not is_digits(text), text
    assert row_number("1042") == 1042 and row_number("9" * ROW_NUMBER_DIGITS) == 10**18 - 1
    assert row_number("9" * (ROW_NUMBER_DIGITS + 1)) is None and row_number("") is None


@given(st.text(max_size=24))
def test_any_text_is_a_row_number_or_none_never_an_exception(text: str) -> None:
    n = row_number(text)
    if n is None:
        assert not is_digits(text) or len(text) > ROW_NUMBER_DIGITS
    else:
        assert str(n) == text.lstrip("0") or (n == 0 and set(text) == {"0"})
        assert 0 <= n < 2**63  # a PostgreSQL bigint


@given(st.text(alphabet=st.characters(categories=["Nd"]), min_size=1, max_size=6))
def test_money_takes_ascii_digits_only(text: str) -> None:
    """"٣" is a decimal digit to Unicode and to a regular expression's \\d, not an amount."""
    if is_digits(text):
        assert parse_money(text, "156", allow_zero=True) == int(text) * 100
    else:
        try:
            parse_money(text, "156")
        except MoneyError:
            pass
        else:
            raise AssertionError(f"{text!r} parsed as money")
