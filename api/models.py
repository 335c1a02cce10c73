"""Shapes shared by every resource: money, ids, times, pages.

- Money is integer minor units plus its ISO 4217 alphabetic currency (``{"amount": 1234, "currency":
  "CNY"}`` is 12.34 yuan), never a float or a decimal string.
- Times are RFC 3339 with the programme's offset (``clearing.timezone``): ``2026-12-02T15:04:05+08:00``
  (``ops.localtime.iso_local``).
- Ids are the host's numbers with a type prefix (``card_504``, ``ch_12``): ``public_id`` / ``parse_id``.
  Payments carry their own ids (``pay_...``, ``load_...``).
- Lists are pages: ``{"data": [...], "next_cursor": "..." | null}``; pass ``cursor`` to get the next.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from api.problems import Problem
from ops.digits import row_number

T = TypeVar("T")

PREFIXES = {"card": "card", "cardholder": "ch", "merchant": "mer", "webhook": "whk", "event": "evt",
            "code": "code", "client": "cli"}


# The pattern of any text a request gives the database: no control characters (a NUL cannot be stored,
# and a tab or newline has no place in a name or a query; a 422, never a database error).
TEXT = r"^[^\x00-\x1f\x7f]*$"


class Model(BaseModel):
    """Every request and response model: unknown members in a request are refused (a typo is a 422,
    not silently ignored)."""

    model_config = ConfigDict(extra="forbid")


class Money(Model):
    amount: int = Field(ge=0, le=999_999_999_999, description="minor units (fen for CNY)")
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 alphabetic code", examples=["CNY"])


class Page(Model, Generic[T]):
    data: list[T]
    next_cursor: str | None = Field(default=None, description="pass as `cursor` for the next page")


def public_id(kind: str, number: int) -> str:
    return f"{PREFIXES[kind]}_{number}"


def parse_id(kind: str, text: str) -> int:
    """The host's number from ``card_504`` (or a bare ``504``); a 404 problem for anything else, so a
    wrong id reads as "no such card", never as a validation error quoting it."""
    prefix = PREFIXES[kind] + "_"
    digits = text[len(prefix):] if text.startswith(prefix) else text
    if row_number(digits) is None:  # "³" is a digit to isdigit
        raise Problem("not-found", f"no {kind} with that id")
    return int(digits)
