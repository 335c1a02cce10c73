"""The programme's business day: what "today" means for daily limits, card expiry and people.

A business date is the one the clearing file uses (``specs.clearing.business_date_of``, from
``clearing.timezone`` and ``clearing.cutover``): with 23:00 Asia/Shanghai, business date D runs from
23:00 on D-1 to 23:00 on D, local time. Daily amount and count limits roll over at that boundary, not
at UTC midnight, and ``card expire`` takes "today" as the business date.

A date closed early (``payswitch clearing close-day``, table ``closed_business_dates``) ends at its
close and the next date starts there, for the limits as for the clearing file: ``host serve`` reads
the recent closes every second (``read_closes``) and gives them to its ``BusinessDay``.

The host decides thousands of requests a second, so ``BusinessDay.today`` keeps the current date's UTC
window and answers from two comparisons while an instant falls inside it; the time zone is consulted
again only once the boundary has passed (once a day) or the closes changed. ``today`` and
``set_closes`` move the cache and run where the batches are posted (the asyncio side of ops.pgpool);
``date_of`` only reads it, from anywhere.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from ops.config import Config
from specs.clearing import EarlyCloses, business_date_of, business_window

CLOSES_LOOKBACK_DAYS = 7  # early closes older than this cannot move today's boundary
_NEVER = dt.datetime.min.replace(tzinfo=dt.UTC)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class BusinessDay:
    """The business date of an instant, with the current date's window cached."""

    def __init__(
        self, cutover: str = "00:00", timezone: str = "UTC", closes: EarlyCloses | None = None
    ) -> None:
        self.cutover = cutover
        self.timezone = timezone
        self._closes: dict[dt.date, dt.datetime] = dict(closes or {})
        # (start, end, date) as one tuple, replaced whole: a reader never sees one window's date with
        # another's bounds, whichever thread or task moved it.
        self._window = (_NEVER, _NEVER, dt.date.min)

    @property
    def closes(self) -> Mapping[dt.date, dt.datetime]:
        return self._closes

    def set_closes(self, closes: Mapping[dt.date, dt.datetime]) -> bool:
        """Take the dates closed early; True when they changed (the cached window is dropped)."""
        new = dict(closes)
        if new == self._closes:
            return False
        self._closes = new
        self._window = (_NEVER, _NEVER, dt.date.min)
        return True

    @classmethod
    def of_config(cls, config: Config) -> BusinessDay:
        return cls(config.clearing.cutover, config.clearing.timezone)

    def today(self, now: dt.datetime) -> dt.date:
        """The business date at ``now`` (aware); moves the cached window when ``now`` has left it."""
        start, end, day = self._window
        if start <= now < end:
            return day
        closes = self._closes
        day = business_date_of(now, self.cutover, self.timezone, closes)
        start, end = business_window(day, self.cutover, self.timezone, closes)
        last = end - dt.timedelta(microseconds=1)
        # A cut-over inside the hour a DST change skips makes the window's edge and business_date_of
        # disagree by that hour: such a date (one a year, in a zone with DST) is not cached.
        if start <= now < end and business_date_of(last, self.cutover, self.timezone, closes) == day:
            self._window = (start, end, day)
        return day

    def date_of(self, instant: dt.datetime) -> dt.date:
        """The business date of any instant (an older one does not move the cached window)."""
        if instant.tzinfo is None:
            instant = instant.replace(tzinfo=dt.UTC)
        start, end, day = self._window
        if start <= instant < end:
            return day
        return business_date_of(instant, self.cutover, self.timezone, self._closes)


async def read_closes(conn: Any, business_day: BusinessDay, now: dt.datetime | None = None) -> bool:
    """Give ``business_day`` the recent dates closed early (on the connection's side, where the
    batches run); True when they changed."""
    since = business_day.date_of(now or utc_now()) - dt.timedelta(days=CLOSES_LOOKBACK_DAYS)
    rows = await conn.fetch(
        "SELECT business_date, closed_at FROM closed_business_dates WHERE business_date >= $1", since
    )
    return business_day.set_closes({r["business_date"]: r["closed_at"] for r in rows})


async def business_date_now(conn: Any, config: Config) -> dt.date:
    """The business date the ledger counts in now, early closes included (`clearing close-day`): what a
    command showing a day's use (`card show`, `card limits`) must compare the card's counters with."""
    business_day = BusinessDay.of_config(config)
    now = utc_now()
    await read_closes(conn, business_day, now)
    return business_day.today(now)


def business_today(config: Config) -> dt.date:
    """The programme's business date now by the cut-over alone, early closes not read (for commands
    that need a date, not the day's counters: ``card expire``, the activation and expiry-month checks);
    ``business_date_now`` is the ledger's, early closes included."""
    return business_date_of(utc_now(), config.clearing.cutover, config.clearing.timezone)
