"""Money in front of people: the one place an amount is parsed from or formatted for a person.

The database, the wire and JSON carry integer minor units (fen). People see and type yuan with two
decimals and the currency. The rules, used by every command, report and (later) the API and console:

- ``format_money(123450, "156")`` -> ``"1,234.50 CNY"``: thousands grouped, always the minor digits of
  the currency (two for CNY), a leading ``-`` for a negative amount, the ISO 4217 alphabetic code after.
- ``parse_money("1234.5")`` -> ``123450``: yuan with at most as many decimals as the currency has
  (``"1,234.50"``, ``"1234"``, ``"0.01"``; a trailing currency code is allowed if it is the right one).
  Anything else raises ``MoneyError`` naming what was expected, in words.
- ``money_json("balance", 50000, "156")`` -> ``{"balance_minor": 50000, "currency": "CNY"}``: in
  ``--json`` output an amount is always a ``*_minor`` integer field next to the currency's alpha code.
"""

from __future__ import annotations

import re
from typing import Any

import click

# ISO 4217 numeric -> (alphabetic code, minor-unit digits). Numeric codes are what ISO 8583 DE49 and
# the database carry; the programme's products are in one of these.
CURRENCIES: dict[str, tuple[str, int]] = {
    "156": ("CNY", 2),
    "344": ("HKD", 2),
    "446": ("MOP", 2),
    "458": ("MYR", 2),
    "702": ("SGD", 2),
    "764": ("THB", 2),
    "826": ("GBP", 2),
    "840": ("USD", 2),
    "901": ("TWD", 2),
    "978": ("EUR", 2),
    "392": ("JPY", 0),
    "410": ("KRW", 0),
}
_BY_ALPHA = {alpha: numeric for numeric, (alpha, _) in CURRENCIES.items()}
DEFAULT_CURRENCY = "156"
_MAX_MINOR = 999_999_999_999  # 12 digits: what DE4 carries


class MoneyError(ValueError):
    """An amount a person typed that is not one; str() says what is expected."""


def currency_numeric(code: str) -> str:
    """``"CNY"`` or ``"156"`` -> ``"156"``; MoneyError for a currency we do not know."""
    c = code.strip().upper()
    if c in CURRENCIES:
        return c
    if c in _BY_ALPHA:
        return _BY_ALPHA[c]
    known = ", ".join(f"{a} ({n})" for n, (a, _) in sorted(CURRENCIES.items()))
    raise MoneyError(f"unknown currency {code!r}: one of {known}")


def currency_alpha(numeric: str | None) -> str:
    """``"156"`` -> ``"CNY"``; an unknown code is shown as given (never an error while printing)."""
    if numeric is None:
        return ""
    return CURRENCIES.get(str(numeric).strip(), (str(numeric).strip(), 2))[0]


def _exponent(currency: str | None) -> int:
    return CURRENCIES.get(str(currency or DEFAULT_CURRENCY).strip(), ("", 2))[1]


def format_amount(minor: int, currency: str | None = DEFAULT_CURRENCY) -> str:
    """The amount without its currency: ``"1,234.50"`` (for tables whose header names the currency)."""
    exp = _exponent(currency)
    sign = "-" if minor < 0 else ""
    whole, frac = divmod(abs(int(minor)), 10**exp)
    return f"{sign}{whole:,}" + (f".{frac:0{exp}d}" if exp else "")


def format_money(minor: int, currency: str | None = DEFAULT_CURRENCY) -> str:
    """``"1,234.50 CNY"``: how an amount is shown to a person, everywhere."""
    return f"{format_amount(minor, currency)} {currency_alpha(currency or DEFAULT_CURRENCY)}"


_AMOUNT = re.compile(r"(?P<whole>[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.(?P<frac>[0-9]+))?")


def parse_money(text: str, currency: str = DEFAULT_CURRENCY, *, allow_zero: bool = False) -> int:
    """Yuan as a person types it -> minor units. MoneyError says what is wrong, in words."""
    exp = _exponent(currency)
    alpha = currency_alpha(currency)
    t = text.strip()
    if t.upper().endswith(alpha):
        t = t[: -len(alpha)].strip()
    t = t.removeprefix("¥").strip()
    example = "500.00" if exp else "500"
    m = _AMOUNT.fullmatch(t)
    if m is None:
        raise MoneyError(
            f"{text!r} is not an amount: {alpha} with at most {exp} decimals, e.g. {example}"
        )
    frac = m.group("frac") or ""
    if len(frac) > exp:
        raise MoneyError(f"{text!r}: {alpha} has {exp} decimals at most, e.g. {example}")
    value: int = int(m.group("whole").replace(",", "")) * 10**exp + int(frac.ljust(exp, "0") or "0")
    if value == 0 and not allow_zero:
        raise MoneyError(f"{text!r}: the amount must be more than zero")
    if value > _MAX_MINOR:
        raise MoneyError(f"{text!r}: at most {format_money(_MAX_MINOR, currency)}")
    return value


def money_json(name: str, minor: int | None, currency: str | None = DEFAULT_CURRENCY) -> dict[str, Any]:
    """``{"<name>_minor": minor, "currency": "CNY"}``: an amount in ``--json`` output."""
    return {f"{name}_minor": minor, "currency": currency_alpha(currency or DEFAULT_CURRENCY)}


class MoneyParam(click.ParamType[int]):
    """A click option of money typed in yuan: the command receives integer minor units."""

    name = "amount"

    def __init__(self, currency: str = DEFAULT_CURRENCY, *, allow_zero: bool = False) -> None:
        self.currency = currency
        self.allow_zero = allow_zero

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "YUAN"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_money(str(value), self.currency, allow_zero=self.allow_zero)
        except MoneyError as exc:
            self.fail(str(exc), param, ctx)


AMOUNT = MoneyParam()
AMOUNT_OR_ZERO = MoneyParam(allow_zero=True)
