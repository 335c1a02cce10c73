"""Merchant settlement cycles: when the money of a business date is paid out.

- ``daily``: the day after the business date.
- ``weekly`` on ISO weekday N (1 = Monday ... 7 = Sunday): the first such weekday after the business date.
- ``monthly`` on day N (1-31): the first day-N after the business date; in a month without day N, its
  last day.

A run with as-of date R settles every business date whose settlement date is on or before R and
carries the rest to a later run. A business date is never due on itself by its cut-over: the day is not
closed yet. A date closed early (``payswitch clearing close-day``; its clearing file's creation time is
the close instant, before the cut-over) is closed already: on the daily cycle it is due on the local date
it was closed on (closing today's date D makes it due today, D). Weekly and monthly cycles keep their
day.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from specs.clearing import business_window

CYCLES: Final = ("daily", "weekly", "monthly")


@dataclass(frozen=True, slots=True)
class Cycle:
    kind: str = "daily"
    day: int | None = None  # weekly: ISO weekday 1-7; monthly: day of month 1-31; daily: None

    def __post_init__(self) -> None:
        if self.kind == "daily" and self.day is None:
            return
        if self.kind == "weekly" and self.day is not None and 1 <= self.day <= 7:
            return
        if self.kind == "monthly" and self.day is not None and 1 <= self.day <= 31:
            return
        raise ValueError(
            f"cycle {self.kind!r} day {self.day!r}: expected daily, weekly with a weekday 1-7 "
            "(1 = Monday) or monthly with a day 1-31"
        )

    def __str__(self) -> str:
        if self.kind == "weekly":
            return f"weekly on {calendar.day_name[(self.day or 1) - 1]}"
        if self.kind == "monthly":
            return f"monthly on day {self.day}"
        return "daily"


def _month_day(year: int, month: int, day: int) -> date:
    return date(year, month, min(day, calendar.monthrange(year, month)[1]))


def closed_early_on(business_date: date, closed_at: datetime | None, cutover: str,
                    timezone: str) -> date | None:
    """The local date ``business_date`` was closed on if its file was closed before the cut-over, else None.

    ``closed_at`` is the clearing file header's creation time: the instant the date's window ended."""
    if closed_at is None:
        return None
    _, cut = business_window(business_date, cutover, timezone)
    return closed_at.astimezone(ZoneInfo(timezone)).date() if closed_at < cut else None


def settlement_date(business_date: date, cycle: Cycle, closed_early: date | None = None) -> date:
    """The date a business date's money is due under ``cycle``: after the business date, or on the daily
    cycle the date it was closed early on (``closed_early``, see ``closed_early_on``)."""
    if cycle.kind == "daily":
        if closed_early is not None:
            return min(closed_early, business_date + timedelta(days=1))
        return business_date + timedelta(days=1)
    assert cycle.day is not None
    if cycle.kind == "weekly":
        ahead = (cycle.day - business_date.isoweekday()) % 7 or 7
        return business_date + timedelta(days=ahead)
    candidate = _month_day(business_date.year, business_date.month, cycle.day)
    if candidate > business_date:
        return candidate
    year, month = (business_date.year + 1, 1) if business_date.month == 12 else (
        business_date.year, business_date.month + 1)
    return _month_day(year, month, cycle.day)


def is_due(business_date: date, cycle: Cycle, as_of: date, closed_early: date | None = None) -> bool:
    return settlement_date(business_date, cycle, closed_early) <= as_of
