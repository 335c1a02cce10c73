"""Spend controls an operator sets on a product or a card (issue 16 item 8), and how the batch applies them.

A product has its own per-transaction and daily limits (products columns, host.rules.check_limits).
Its *controls* add what a programme needs beyond them:

* **windows**: an amount and a count limit per ISO week (of the business date, Monday start), calendar
  month (of the business date) and lifetime;
* **hours**: the local-time ranges (programme time zone, clearing.timezone) a card may buy in, each
  optionally for some weekdays only (``06:30-09:00``, ``mon-fri@11:00-13:30``; a range whose end is
  not after its start runs past midnight; the weekday is that of the moment of the purchase);
* **group caps**: an amount and/or count limit at one merchant group (merchants.group_code) per day,
  week, month or lifetime.

A card's controls (``card limits``) may also lower the product's per-transaction and daily limits. They
only ever lower: a card value above its product's is refused ("a parent lowers a child's daily limit",
never raises it); both apply in the batch, so a product lowered later still binds its cards. A card's
hours narrow the product's (a purchase must fall inside both).

The posting batch (host.ledger) reads the documents with the card's locked row, turns them into an
``Effective`` (cached by their text: one dict lookup per card) and calls ``check`` and ``count`` on
an approved purchase or pre-auth, ``give_back`` when one is voided or reversed. Without controls a card
costs the batch a few date comparisons: its week, month and lifetime sums are kept anyway (on the card's
account row, accounts.week* / month* / life*), so a window set mid-week sees the week's spend.
Group sums are kept only for the groups a card's controls cap (table card_group_usage).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from host.catalog import CatalogError
from ops.digits import is_digits
from ops.money import format_money

if TYPE_CHECKING:
    from host.model import CardState

SPANS = ("day", "week", "month", "lifetime")
# The limits a controls document may hold: "<span>_<measure>", and per_txn. A product's own columns
# hold its per_txn and day limits, so its document holds only the others.
CARD_KEYS = (
    "per_txn",
    "day_amount",
    "day_count",
    "week_amount",
    "week_count",
    "month_amount",
    "month_count",
    "lifetime_amount",
    "lifetime_count",
)
PRODUCT_KEYS = CARD_KEYS[3:]
# host.rules.REASONS key each limit declines with (61 amount, 65 count)
REASON_OF = {
    "per_txn": "per_txn_limit",
    "day_amount": "daily_amount_limit",
    "day_count": "daily_count_limit",
    "week_amount": "week_amount_limit",
    "week_count": "week_count_limit",
    "month_amount": "month_amount_limit",
    "month_count": "month_count_limit",
    "lifetime_amount": "lifetime_amount_limit",
    "lifetime_count": "lifetime_count_limit",
}
LABEL = {
    "per_txn": "per-transaction limit",
    "day_amount": "daily limit",
    "day_count": "daily count limit",
    "week_amount": "weekly limit",
    "week_count": "weekly count limit",
    "month_amount": "monthly limit",
    "month_count": "monthly count limit",
    "lifetime_amount": "lifetime limit",
    "lifetime_count": "lifetime count limit",
}
LIFETIME = dt.date(2000, 1, 1)  # the one "period" of a lifetime sum
MAX_HOURS = 24  # ranges in one list: a timetable, not a data set
MAX_GROUP_CAPS = 32
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])|24:00")


class ControlsError(ValueError):
    """A control an operator typed that is not one; str() says what is expected (one line)."""


# -- the pieces ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HourRange:
    start: int  # minute of the day, inclusive
    end: int  # minute of the day, exclusive; <= start: the range runs past midnight
    days: frozenset[int] | None = None  # ISO weekdays (1 = Monday); None: every day

    def allows(self, minute: int, weekday: int) -> bool:
        if self.days is not None and weekday not in self.days:
            return False
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def __str__(self) -> str:
        def hhmm(m: int) -> str:
            return f"{m // 60:02d}:{m % 60:02d}"

        text = f"{hhmm(self.start)}-{hhmm(self.end) if self.end else '24:00'}"  # stored, parsed again
        if self.days is None:
            return text
        return f"{_days_text(self.days)}@{text}"


@dataclass(frozen=True)
class GroupCap:
    group: str
    span: str
    amount: int | None  # minor units; None: no amount cap
    count: int | None


def _days_text(days: frozenset[int]) -> str:
    out: list[str] = []
    run: list[int] = []
    for d in [*sorted(days), 99]:
        if run and d == run[-1] + 1:
            run.append(d)
            continue
        if run:
            first, last = WEEKDAYS[run[0] - 1], WEEKDAYS[run[-1] - 1]
            out.append(first if len(run) == 1 else f"{first}-{last}" if len(run) > 2 else f"{first}+{last}")
        run = [d]
    return "+".join(out)


def _minute(text: str, what: str) -> int:
    if not _TIME.fullmatch(text):
        raise ControlsError(f"{what} {text!r} is not a time: HH:MM, 00:00 to 24:00")
    h, m = text.split(":")
    return int(h) * 60 + int(m)


def _weekdays(text: str) -> frozenset[int]:
    days: set[int] = set()
    for part in text.lower().split("+"):
        a, _, b = part.partition("-")
        if a not in WEEKDAYS or (b and b not in WEEKDAYS):
            raise ControlsError(
                f"{text!r} is not a list of weekdays: e.g. mon-fri, sat+sun (mon tue wed thu fri sat sun)"
            )
        i = WEEKDAYS.index(a) + 1
        j = WEEKDAYS.index(b) + 1 if b else i
        days.update(range(i, j + 1) if i <= j else [*range(i, 8), *range(1, j + 1)])
    return frozenset(days)


def parse_hours(text: str) -> tuple[HourRange, ...]:
    """``"06:30-09:00,mon-fri@11:00-13:30"`` -> the ranges (ControlsError in words otherwise)."""
    ranges = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            raise ControlsError(f"{text!r}: an empty range (ranges are HH:MM-HH:MM, separated by commas)")
        days_text, _, span = item.rpartition("@")
        start_text, sep, end_text = span.partition("-")
        if not sep:
            raise ControlsError(f"{item!r} is not a range: HH:MM-HH:MM, optionally after DAYS@ (mon-fri@)")
        start, end = _minute(start_text, "start"), _minute(end_text, "end")
        if start == end:
            raise ControlsError(f"{item!r}: a range from a time to the same time allows nothing")
        ranges.append(HourRange(start % 1440, end % 1440, _weekdays(days_text) if days_text else None))
    if len(ranges) > MAX_HOURS:
        raise ControlsError(f"at most {MAX_HOURS} ranges")
    return tuple(ranges)


def parse_group_cap(text: str, currency: str = "156") -> GroupCap:
    """``"snacks:day:30.00"``, ``"snacks:week:100.00:20"``, ``"snacks:day::5"`` (count only)."""
    from ops.money import MoneyError, parse_money

    parts = text.split(":")
    if len(parts) not in (3, 4):
        raise ControlsError(f"{text!r} is not a group cap: GROUP:SPAN:AMOUNT[:COUNT], e.g. snacks:day:30.00")
    group, span, amount_text = parts[0].strip(), parts[1].strip().lower(), parts[2].strip()
    count_text = parts[3].strip() if len(parts) == 4 else ""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", group):
        raise ControlsError(f"{group!r} is not a merchant group code (letters, digits, _ and -, at most 32)")
    if span not in SPANS:
        raise ControlsError(f"{span!r} is not a window: one of {', '.join(SPANS)}")
    try:
        amount = parse_money(amount_text, currency) if amount_text else None
    except MoneyError as exc:
        raise ControlsError(str(exc)) from None
    if count_text and not (is_digits(count_text) and 0 < int(count_text) <= 1_000_000):
        raise ControlsError(f"{count_text!r} is not a count: a whole number from 1 to 1,000,000")
    count = int(count_text) if count_text else None
    if amount is None and count is None:
        raise ControlsError(f"{text!r} caps nothing: give an amount, a count or both")
    return GroupCap(group, span, amount, count)


# -- the document ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Controls:
    """One product's or card's controls, as stored (products.controls, cards.controls)."""

    limits: Mapping[str, int] = field(default_factory=dict)
    hours: tuple[HourRange, ...] = ()
    groups: tuple[GroupCap, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.limits or self.hours or self.groups)

    def to_json(self) -> str | None:
        """The stored text (None when there is nothing to store: the column stays NULL)."""
        if not self:
            return None
        doc: dict[str, Any] = {}
        if self.limits:
            doc["limits"] = {k: self.limits[k] for k in CARD_KEYS if k in self.limits}
        if self.hours:
            doc["hours"] = [str(h) for h in self.hours]
        if self.groups:
            doc["groups"] = [[g.group, g.span, g.amount, g.count] for g in self.groups]
        return json.dumps(doc, separators=(",", ":"))

    def cap(self, group: str, span: str) -> GroupCap | None:
        return next((g for g in self.groups if g.group == group and g.span == span), None)


@functools.lru_cache(maxsize=4096)
def parse(text: str | None) -> Controls:
    """A stored document (trusted: only this module writes it) -> Controls; cached by its text."""
    if not text:
        return Controls()
    doc = json.loads(text)
    hours = tuple(r for h in doc.get("hours", ()) for r in parse_hours(h))
    groups = tuple(GroupCap(g, s, a, c) for g, s, a, c in doc.get("groups", ()))
    return Controls(dict(doc.get("limits", {})), hours, groups)


# -- what the batch applies ------------------------------------------------------------------------
@dataclass(frozen=True)
class Effective:
    """A card's controls and its product's, merged for the batch (each limit the lower of the two)."""

    limits: tuple[tuple[str, int], ...]  # (key of CARD_KEYS, limit), only those set
    hours: tuple[tuple[HourRange, ...], ...]  # every list must allow the moment (product's, card's)
    groups: Mapping[str, tuple[GroupCap, ...]]  # group -> its caps (the lower per window)


@functools.lru_cache(maxsize=4096)
def effective(product_text: str | None, card_text: str | None) -> Effective | None:
    """What the batch checks for a card whose product and card documents are these texts (None: none)."""
    if not product_text and not card_text:
        return None
    p, c = parse(product_text), parse(card_text)
    limits = dict(p.limits)
    for k, v in c.limits.items():
        limits[k] = min(v, limits.get(k, v))
    caps: dict[tuple[str, str], GroupCap] = {(g.group, g.span): g for g in p.groups}
    for g in c.groups:
        old = caps.get((g.group, g.span))
        if old is not None:
            g = GroupCap(g.group, g.span, _lower(old.amount, g.amount), _lower(old.count, g.count))
        caps[(g.group, g.span)] = g
    groups: dict[str, tuple[GroupCap, ...]] = {}
    for g in caps.values():
        groups[g.group] = (*groups.get(g.group, ()), g)
    return Effective(
        tuple((k, limits[k]) for k in CARD_KEYS if k in limits),
        tuple(h for h in (p.hours, c.hours) if h),
        groups,
    )


def _lower(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


@dataclass
class Spend:
    """A card's sums beyond the day's (CardState.day_*): week, month, lifetime, and the capped groups."""

    week: dt.date | None = None
    week_amount: int = 0
    week_count: int = 0
    month: dt.date | None = None
    month_amount: int = 0
    month_count: int = 0
    life_amount: int = 0
    life_count: int = 0
    # (group, span) -> [period, amount, count]; only groups a cap names
    groups: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    groups_dirty: set[tuple[str, str]] = field(default_factory=set)

    def carry_to(self, new: Spend) -> None:
        """A replacement card takes over these sums (host.rules.carry_usage)."""
        new.week, new.week_amount, new.week_count = self.week, self.week_amount, self.week_count
        new.month, new.month_amount, new.month_count = self.month, self.month_amount, self.month_count
        new.life_amount, new.life_count = self.life_amount, self.life_count
        for key, entry in self.groups.items():
            new.groups[key] = list(entry)
            new.groups_dirty.add(key)


def _spend(card: CardState) -> Spend:
    assert card.spend is not None, "a CardState from the batch's read has its Spend"
    return card.spend


def spend_of(row: Mapping[str, Any]) -> Spend:
    """A Spend from the batch's read (its JSON row: dates as ISO text)."""
    s = Spend(
        dt.date.fromisoformat(row["week"]) if row["week"] else None,
        row["week_amount"],
        row["week_count"],
        dt.date.fromisoformat(row["month"]) if row["month"] else None,
        row["month_amount"],
        row["month_count"],
        row["life_amount"],
        row["life_count"],
    )
    for group, span, period, amount, count in row.get("group_usage") or ():
        s.groups[(group, span)] = [dt.date.fromisoformat(period), amount, count]
    return s


@functools.lru_cache(maxsize=64)
def _starts(today: dt.date) -> tuple[dt.date, dt.date]:
    return today - dt.timedelta(days=today.weekday()), today.replace(day=1)


def period_start(span: str, day: dt.date) -> dt.date:
    """The first business date of the window (day, ISO week, calendar month, lifetime) ``day`` is in."""
    if span == "day":
        return day
    if span == "lifetime":
        return LIFETIME
    week, month = _starts(day)
    return week if span == "week" else month


def roll(card: CardState, today: dt.date) -> None:
    """Start the week's and month's sums afresh when the business date has left them."""
    s = _spend(card)
    week, month = _starts(today)
    if s.week != week:
        s.week, s.week_amount, s.week_count = week, 0, 0
        card.counters_dirty = True
    if s.month != month:
        s.month, s.month_amount, s.month_count = month, 0, 0
        card.counters_dirty = True


# Where the sum a limit is checked against lives: (on the CardState itself, attribute). Looked up per
# purchase, so a table rather than building a mapping of every sum each time.
_SUM_OF = {
    "day_amount": (True, "day_amount"),
    "day_count": (True, "day_count"),
    "week_amount": (False, "week_amount"),
    "week_count": (False, "week_count"),
    "month_amount": (False, "month_amount"),
    "month_count": (False, "month_count"),
    "lifetime_amount": (False, "life_amount"),
    "lifetime_count": (False, "life_count"),
}


def _used(card: CardState, key: str) -> int:
    on_card, name = _SUM_OF[key]
    value: int = getattr(card if on_card else _spend(card), name)
    return value


@functools.lru_cache(maxsize=16)  # a batch asks for its one instant once per purchase
def local_moment(now: dt.datetime, timezone: str) -> tuple[int, int]:
    """(minute of the day, ISO weekday) of ``now`` on the programme's wall clock."""
    local = now.astimezone(_zone(timezone))
    return local.hour * 60 + local.minute, local.isoweekday()


@functools.lru_cache(maxsize=8)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def check(
    card: CardState, group: str | None, amount: int, today: dt.date, now: dt.datetime, timezone: str
) -> str | None:
    """The reason (host.rules.REASONS) a purchase or pre-auth breaks the card's controls, else None.
    Called after rules.check_limits (which rolled the day); rolls the week and month itself."""
    roll(card, today)
    eff = card.controls
    if eff is None:
        return None
    if eff.hours:
        minute, weekday = local_moment(now, timezone)
        for ranges in eff.hours:
            if not any(h.allows(minute, weekday) for h in ranges):
                return "outside_allowed_hours"
    for key, limit in eff.limits:
        if key == "per_txn":
            if amount > limit:
                return "per_txn_limit"
        elif key.endswith("_amount"):
            if _used(card, key) + amount > limit:
                return REASON_OF[key]
        elif _used(card, key) + 1 > limit:
            return REASON_OF[key]
    caps = eff.groups.get(group) if group is not None else None
    if caps:
        s = _spend(card)
        for cap in caps:
            entry = s.groups.get((cap.group, cap.span))
            used = entry if entry is not None and entry[0] == period_start(cap.span, today) else None
            spent, times = (used[1], used[2]) if used is not None else (0, 0)
            if cap.amount is not None and spent + amount > cap.amount:
                return "group_amount_limit"
            if cap.count is not None and times + 1 > cap.count:
                return "group_count_limit"
    return None


def count(card: CardState, group: str | None, amount: int, today: dt.date) -> None:
    """An approved purchase or pre-auth counts in the week, month, lifetime and its group's caps
    (beside rules.count_use, which counts the day's)."""
    s = _spend(card)
    s.week_amount += amount
    s.week_count += 1
    s.month_amount += amount
    s.month_count += 1
    s.life_amount += amount
    s.life_count += 1
    card.counters_dirty = True
    eff = card.controls
    if eff is None or group is None:
        return
    for cap in eff.groups.get(group, ()):
        start = period_start(cap.span, today)
        entry = s.groups.get((group, cap.span))
        if entry is None or entry[0] != start:
            entry = s.groups[(group, cap.span)] = [start, 0, 0]
        entry[1] += amount
        entry[2] += 1
        s.groups_dirty.add((group, cap.span))


def give_back(
    card: CardState, day: dt.date | None, group: str | None, amount: int, whole: bool, today: dt.date
) -> None:
    """Undoing a counted use (void, reversal) gives back the week's, month's and group's sums only if it
    counted in the window the card counts now (as ledger._restore_use does for the day); the lifetime's
    always. ``whole``: all of it is undone, so its count comes back too."""
    s = _spend(card)
    s.life_amount = max(0, s.life_amount - amount)
    if whole:
        s.life_count = max(0, s.life_count - 1)
    card.counters_dirty = True
    if day is None:
        return
    week, month = _starts(day)
    now_week, now_month = _starts(today)
    if week == now_week == s.week:
        s.week_amount = max(0, s.week_amount - amount)
        if whole:
            s.week_count = max(0, s.week_count - 1)
    if month == now_month == s.month:
        s.month_amount = max(0, s.month_amount - amount)
        if whole:
            s.month_count = max(0, s.month_count - 1)
    if group is None:
        return
    for (g, span), entry in s.groups.items():
        if g == group and entry[0] == period_start(span, day) == period_start(span, today):
            entry[1] = max(0, entry[1] - amount)
            if whole:
                entry[2] = max(0, entry[2] - 1)
            s.groups_dirty.add((g, span))


def group_rows(cards: Iterable[CardState]) -> list[list[Any]]:
    """card_group_usage rows the batch changed: [account, group, span, period, amount, count]."""
    return [
        [c.account_id, g, span, entry[0].isoformat(), entry[1], entry[2]]
        for c in cards
        if c.spend is not None
        for g, span in sorted(c.spend.groups_dirty)
        if (entry := c.spend.groups[(g, span)])
    ]


# -- the operator's side (products and cards) ----------------------------------------------------------
async def _product_row(conn: Any, code: str) -> Any:
    row = await conn.fetchrow(
        """SELECT id, code, currency, per_txn_limit, daily_amount_limit, daily_count_limit,
                  controls::text AS controls FROM products WHERE code = $1""",
        code,
    )
    if row is None:
        raise CatalogError(f"no product {code!r}")
    return row


def _product_bounds(row: Any) -> dict[str, int]:
    """The product's limit for each key (its columns and its document)."""
    return {
        "per_txn": row["per_txn_limit"],
        "day_amount": row["daily_amount_limit"],
        "day_count": row["daily_count_limit"],
        **parse(row["controls"]).limits,
    }


async def _check_groups(conn: Any, caps: Iterable[GroupCap]) -> None:
    wanted = sorted({g.group for g in caps})
    if not wanted:
        return
    rows = await conn.fetch("SELECT code FROM merchant_groups WHERE code = ANY($1::text[])", wanted)
    known = {r["code"] for r in rows}
    missing = [g for g in wanted if g not in known]
    if missing:
        raise CatalogError(f"no merchant group {missing[0]!r} (`payswitch merchant add --group` makes one)")


@dataclass(frozen=True)
class Changes:
    """What an operator asks to change: limits set (key -> value), hours replaced, caps set, clears."""

    limits: Mapping[str, int] = field(default_factory=dict)
    hours: tuple[HourRange, ...] | None = None
    groups: tuple[GroupCap, ...] = ()
    clear: frozenset[str] = frozenset()  # keys of CARD_KEYS, "hours", "groups", or "all"

    def applied_to(self, old: Controls) -> Controls:
        if "all" in self.clear:
            old = Controls()
        limits = {k: v for k, v in old.limits.items() if k not in self.clear}
        limits.update(self.limits)
        hours = () if "hours" in self.clear else old.hours
        if self.hours is not None:
            hours = self.hours
        caps = {} if "groups" in self.clear else {(g.group, g.span): g for g in old.groups}
        for g in self.groups:
            caps[(g.group, g.span)] = g
        if len(caps) > MAX_GROUP_CAPS:
            raise CatalogError(f"at most {MAX_GROUP_CAPS} group caps")
        return Controls(limits, hours, tuple(caps[k] for k in sorted(caps)))


async def set_product_controls(conn: Any, code: str, changes: Changes) -> dict[str, Any]:
    """Change a product's controls (a running host applies them from its next batch); returns the view."""
    bad = sorted(set(changes.limits) - set(PRODUCT_KEYS))
    if bad:
        raise CatalogError(f"a product's {LABEL[bad[0]]} is its own column: `payswitch product update`")
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT controls::text AS controls FROM products WHERE code = $1 FOR UPDATE", code
        )
        if row is None:
            raise CatalogError(f"no product {code!r}")
        await _check_groups(conn, changes.groups)
        new = changes.applied_to(parse(row["controls"]))
        await conn.execute("UPDATE products SET controls = $2::jsonb WHERE code = $1", code, new.to_json())
    return await product_controls(conn, code)


async def product_controls(conn: Any, code: str) -> dict[str, Any]:
    row = await _product_row(conn, code)
    return {"product": row["code"], "currency": row["currency"], **_view(parse(row["controls"]))}


def _view(c: Controls) -> dict[str, Any]:
    return {
        "limits": dict(c.limits),
        "hours": [str(h) for h in c.hours],
        "group_caps": [
            {"group": g.group, "span": g.span, "amount": g.amount, "count": g.count} for g in c.groups
        ],
    }


async def set_card_limits(conn: Any, card_id: int, changes: Changes, today: dt.date) -> dict[str, Any]:
    """Change a card's overrides, each at most its product's (refused in one line otherwise)."""
    async with conn.transaction():
        row = await conn.fetchrow(
            """SELECT c.controls::text AS controls, p.code FROM cards c JOIN products p ON p.id = c.product_id
               WHERE c.id = $1 FOR NO KEY UPDATE OF c""",
            card_id,
        )
        if row is None:
            raise CatalogError(f"no card {card_id}")
        product = await _product_row(conn, row["code"])
        cur = product["currency"]
        bounds = _product_bounds(product)
        for key, value in changes.limits.items():
            bound = bounds.get(key)
            if bound is not None and value > bound:
                raise CatalogError(
                    f"card {card_id}: {LABEL[key]} {_shown(key, value, cur)} is above the product's"
                    f" {_shown(key, bound, cur)} (an override may only lower it)"
                )
        pc = parse(product["controls"])
        for g in changes.groups:
            pcap = pc.cap(g.group, g.span)
            if pcap is None:
                continue
            for what, asked, most in (("amount", g.amount, pcap.amount), ("count", g.count, pcap.count)):
                if most is not None and (asked is None or asked > most):
                    raise CatalogError(
                        f"card {card_id}: the {g.group} {g.span} {what} cap {_shown(what, asked, cur)} is"
                        f" above the product's {_shown(what, most, cur)} (an override may only lower it)"
                    )
        await _check_groups(conn, changes.groups)
        new = changes.applied_to(parse(row["controls"]))
        await conn.execute(
            "UPDATE cards SET controls = $2::jsonb, updated_at = now() WHERE id = $1", card_id, new.to_json()
        )
    return await card_limits(conn, card_id, today)


def _shown(key: str, value: int | None, currency: str) -> str:
    if value is None:
        return "none"
    return str(value) if key.endswith("count") else format_money(value, currency)


async def card_limits(conn: Any, card_id: int, today: dt.date) -> dict[str, Any]:
    """A card's effective limits, where each comes from, and what is used and left in its window now."""
    row = await conn.fetchrow(
        """SELECT c.id, c.controls::text AS card_controls, p.code, a.day, a.day_amount, a.day_count,
                  a.week, a.week_amount, a.week_count, a.month, a.month_amount, a.month_count,
                  a.life_amount, a.life_count
           FROM cards c JOIN accounts a ON a.id = c.account_id JOIN products p ON p.id = c.product_id
           WHERE c.id = $1""",
        card_id,
    )
    if row is None:
        raise CatalogError(f"no card {card_id}")
    product = await _product_row(conn, row["code"])
    bounds = _product_bounds(product)
    own = parse(row["card_controls"])
    week, month = _starts(today)
    used = {
        "per_txn": 0,
        "day_amount": row["day_amount"] if row["day"] == today else 0,
        "day_count": row["day_count"] if row["day"] == today else 0,
        "week_amount": row["week_amount"] if row["week"] == week else 0,
        "week_count": row["week_count"] if row["week"] == week else 0,
        "month_amount": row["month_amount"] if row["month"] == month else 0,
        "month_count": row["month_count"] if row["month"] == month else 0,
        "lifetime_amount": row["life_amount"],
        "lifetime_count": row["life_count"],
    }
    limits = []
    for key in CARD_KEYS:
        p, c = bounds.get(key), own.limits.get(key)
        if p is None and c is None:
            continue
        limit = _lower(p, c)
        assert limit is not None
        limits.append(
            {
                "limit": key,
                "span": "transaction" if key == "per_txn" else key.split("_")[0],
                "measure": "amount" if key == "per_txn" else key.split("_")[1],
                "value": limit,
                "source": "card" if c is not None and (p is None or c <= p) else "product",
                "used": used[key],
                "remaining": max(0, limit - used[key]) if key != "per_txn" else limit,
            }
        )
    usage = {
        (r["group_code"], r["span"]): r
        for r in await conn.fetch(
            "SELECT group_code, span, period, amount, count FROM card_group_usage u"
            " JOIN cards c ON c.account_id = u.account_id WHERE c.id = $1",
            card_id,
        )
    }
    eff = effective(product["controls"], row["card_controls"])
    caps = []
    for group in sorted(eff.groups if eff else ()):
        assert eff is not None
        for cap in eff.groups[group]:
            u = usage.get((group, cap.span))
            current = u is not None and u["period"] == period_start(cap.span, today)
            spent, times = (u["amount"], u["count"]) if u is not None and current else (0, 0)
            caps.append(
                {
                    "group": group,
                    "span": cap.span,
                    "amount": cap.amount,
                    "count": cap.count,
                    "used_amount": spent,
                    "used_count": times,
                    "remaining_amount": None if cap.amount is None else max(0, cap.amount - spent),
                    "remaining_count": None if cap.count is None else max(0, cap.count - times),
                }
            )
    return {
        "card_id": card_id,
        "product": product["code"],
        "currency": product["currency"],
        "business_date": today,
        "limits": limits,
        "hours": {
            "product": [str(h) for h in parse(product["controls"]).hours],
            "card": [str(h) for h in own.hours],
        },
        "group_caps": caps,
        "overrides": _view(own),
    }
