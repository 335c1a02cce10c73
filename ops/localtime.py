"""Times in front of people: the programme's local time with its offset (``clearing.timezone``).

Stored and logged instants are UTC (``timestamptz``); a person sees ``2026-12-02 18:30:05 +08:00``,
the wall clock of the programme's zone with the offset that makes it unambiguous. The one formatter
every command, report and (later) the API and console use.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from ops.digits import is_digits


def format_local(instant: datetime | None, timezone: str, *, seconds: bool = True) -> str:
    """``2026-12-02 18:30:05 +08:00`` for an aware instant (a naive one is taken as UTC); "" for None."""
    if instant is None:
        return ""
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    local = instant.astimezone(ZoneInfo(timezone))
    offset = local.strftime("%z")
    shown = local.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
    return f"{shown} {offset[:3]}:{offset[3:]}"


def iso_local(instant: datetime | None, timezone: str) -> str | None:
    """The same instant as ISO 8601 with the programme's offset, for ``--json`` (``...T18:30:05+08:00``)."""
    if instant is None:
        return None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    return instant.astimezone(ZoneInfo(timezone)).isoformat(timespec="seconds")


def year_nearest(mmddhhmmss: str, near: datetime) -> datetime | None:
    """``MMDDhhmmss`` (ISO 8583 DE7, or DE13 + DE12: a time without its year) in the year that puts it
    nearest ``near`` (same zone, naive or aware alike); None when it is not such a time (29 February
    of a year without one counts as not). The one rule for the switch's DE7, the clearing file's
    terminal time and the simulator's receipt."""
    if len(mmddhhmmss) != 10 or not is_digits(mmddhhmmss):
        return None
    month, day, hour, minute, second = (int(mmddhhmmss[i : i + 2]) for i in range(0, 10, 2))
    best: datetime | None = None
    for year in (near.year - 1, near.year, near.year + 1):
        try:
            candidate = datetime(year, month, day, hour, minute, second, tzinfo=near.tzinfo)
        except ValueError:
            continue
        if best is None or abs(candidate - near) < abs(best - near):
            best = candidate
    return best
