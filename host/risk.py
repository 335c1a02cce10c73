"""Risk monitoring (issue 18 item 5): rules over the stream of decided authorizations, and their alerts.

The host publishes each ledger batch's decisions in the event outbox (``authorization.approved`` /
``.declined``, written in the batch's own transaction: ops.outbox, host.events). The monitor runs off
the hot path, as a background task of ``api serve`` (:func:`task`): every ``risk.poll_s`` seconds
:func:`scan_once` reads the events after its cursor (``risk_cursor``; a hole in the ids that may still
commit is read again, as the webhook dispatcher does), loads the window of earlier decisions of the
same cards and terminals and the few facts the rules need (:class:`Facts`), runs the rules, and in the
same transaction stores each alert (``risk_alerts``, host migration 0025) with a ``risk.alert`` event
(the dispatcher sends it as a webhook). After the commit it e-mails the subscribed operators
(``operators.alerts`` with an e-mail, sealed under the PII key and opened through the HSM) through
``console.smtp_host`` (none when it is "").

The rules (:data:`RULES`) are plain functions of decisions (:class:`Decision`), facts and the
``[risk]`` thresholds; each returns :class:`Alert` values, raised at the first new decision that
crosses its threshold:

- ``pin_failures``: wrong PINs on one card (``pin_wrong`` / ``pin_tries_exceeded``) within minutes;
- ``declines``: declines of any reason on one card within minutes;
- ``cards_per_terminal``: many different cards at one terminal within minutes;
- ``under_limit``: a burst of purchases just under the product's per-transaction limit;
- ``dormant``: a card used after ``dormant_days`` without use (or never used since an issue that long
  ago);
- ``distance``: one card at two distant stores (different merchants, or stores with different
  addresses) within minutes;
- ``refunds_over_purchases``: a merchant's approved refunds above its purchases on a business date.

Dedupe: an alert's ``dedupe_key`` is its rule and subject (card, terminal, merchant and date); there is
at most one open alert per key, and none is raised again within the rule's window after the last one
(whatever happened to it). An alert's detail holds ids, counts, amounts and masked PANs only.

An operator acts from the alert (:func:`act`): freeze its card (host.catalog.set_card_state), disable
its terminal (host.catalog.set_terminal_state), acknowledge or dismiss it; the console records the
action in the audit trail in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import json
import smtplib
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import trio

from host import catalog, directory
from ops.config import Config, ConsoleConfig, RiskConfig
from ops.digits import is_digits
from ops.logs import get_logger
from ops.outbox import Event, write_events

log = get_logger(__name__)

BATCH = 1000  # events read per scan
GAP_SETTLE_S = 10.0  # a hole in the event ids this old is a rolled-back transaction, not one in flight
AUTH_TYPES = ("authorization.approved", "authorization.declined")
PIN_FAILURES = frozenset({"pin_wrong", "pin_tries_exceeded"})
PURCHASES = frozenset({"purchase", "completion"})  # what a merchant sold (refunds set against it)
AT_A_STORE = frozenset({"purchase", "preauth"})  # a card presented at a store (the distance rule)
UNDER_LIMIT = frozenset({"purchase", "preauth"})  # what the per-transaction limit bounds
USES = frozenset({"purchase", "preauth", "completion", "refund", "void", "topup", "balance", "pin_change"})
STATES = ("open", "acknowledged", "acted", "dismissed")
ACTIONS = {"freeze_card": "freeze the card", "disable_terminal": "disable the terminal",
           "acknowledge": "acknowledge", "dismiss": "dismiss"}
RULE_TEXT = {
    "pin_failures": "repeated wrong PINs on a card",
    "declines": "repeated declines on a card",
    "cards_per_terminal": "many cards at one terminal",
    "under_limit": "a burst of purchases just under the limit",
    "dormant": "a dormant card used",
    "distance": "a card at two distant stores within minutes",
    "refunds_over_purchases": "refunds above purchases at a merchant today",
}

_GAPS: dict[int, float] = {}  # event id missing -> when first seen missing (trio.current_time())


class RiskError(ValueError):
    """An action on an alert that cannot be taken: str() says why."""


@dataclass(frozen=True, slots=True)
class Decision:
    """One decided authorization, as its event tells it."""

    event_id: int
    at: dt.datetime
    card_id: int | None
    txn: str
    approved: bool
    amount: int = 0
    currency: str | None = "CNY"
    reason: str | None = None
    response_code: str = "00"
    merchant_id: str | None = None
    terminal_id: str | None = None
    pan_masked: str | None = None
    business_date: str = ""


@dataclass(frozen=True, slots=True)
class Location:
    """Where a terminal stands: its merchant (DE42) and store (id, code, address)."""

    merchant_id: str
    store_id: int | None = None
    store: str = ""
    address: str = ""


@dataclass
class Facts:
    """What the rules need beyond the decisions: per card its product's per-transaction limit, when it
    was issued (or last made active: a stock card sold after months is not dormant) and last used
    before the window; per (DE42, DE41) where the terminal stands; per
    (DE42, business date) the day's approved purchases and refunds (minor units)."""

    per_txn_limit: dict[int, int] = field(default_factory=dict)
    issued_at: dict[int, dt.datetime] = field(default_factory=dict)
    last_used: dict[int, dt.datetime | None] = field(default_factory=dict)
    locations: dict[tuple[str, str], Location] = field(default_factory=dict)
    merchant_day: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Alert:
    """What a rule raised: about a card, a terminal or a merchant; ``window`` keeps it from being
    raised again that soon (dedupe)."""

    rule: str
    dedupe_key: str
    at: dt.datetime
    event_id: int
    detail: dict[str, Any]
    window: dt.timedelta
    card_id: int | None = None
    merchant_id: str | None = None
    terminal_id: str | None = None


def _iso(instant: dt.datetime | None) -> str | None:
    return None if instant is None else instant.astimezone(dt.UTC).isoformat(timespec="seconds")


def _money(amount: int, currency: str | None) -> dict[str, Any]:
    return {"amount": amount, "currency": currency or "CNY"}


def _crossing(group: Sequence[Decision], first_new: int, window: dt.timedelta, threshold: int,
              measure: Callable[[Sequence[Decision]], int]) -> tuple[Decision, list[Decision]] | None:
    """The first new decision of ``group`` (in event order) at which ``measure`` of the decisions in
    the window ending there reaches ``threshold``, with that window's decisions."""
    for i, d in enumerate(group):
        if d.event_id < first_new:
            continue
        inside = [e for e in group[: i + 1] if e.at >= d.at - window]
        if measure(inside) >= threshold:
            return d, inside
    return None


def _by_card(decisions: Iterable[Decision], keep: Callable[[Decision], bool]) -> dict[int, list[Decision]]:
    groups: dict[int, list[Decision]] = defaultdict(list)
    for d in sorted(decisions, key=lambda x: x.event_id):
        if d.card_id is not None and keep(d):
            groups[d.card_id].append(d)
    return groups


def _card_alert(rule: str, d: Decision, inside: Sequence[Decision], window: dt.timedelta,
                detail: dict[str, Any]) -> Alert:
    return Alert(
        rule, f"{rule}:card:{d.card_id}", d.at, d.event_id,
        {"pan_masked": d.pan_masked, "count": len(inside),
         "window_minutes": int(window.total_seconds() // 60),
         "first_at": _iso(inside[0].at), "last_at": _iso(d.at),
         "terminals": sorted({f"{e.merchant_id}/{e.terminal_id}" for e in inside if e.terminal_id})} | detail,
        window, card_id=d.card_id, merchant_id=d.merchant_id, terminal_id=d.terminal_id,
    )


# -- the rules ---------------------------------------------------------------------------------------------
def pin_failures(decisions: Sequence[Decision], first_new: int, config: RiskConfig, facts: Facts
                 ) -> list[Alert]:
    """``pin_failures`` wrong PINs on one card within ``pin_window_minutes``."""
    window = dt.timedelta(minutes=config.pin_window_minutes)
    alerts = []
    for group in _by_card(decisions, lambda d: not d.approved and d.reason in PIN_FAILURES).values():
        hit = _crossing(group, first_new, window, config.pin_failures, len)
        if hit is not None:
            alerts.append(_card_alert("pin_failures", hit[0], hit[1], window, {}))
    return alerts


def declines(decisions: Sequence[Decision], first_new: int, config: RiskConfig, facts: Facts) -> list[Alert]:
    """``declines`` declines (any reason) on one card within ``decline_window_minutes``."""
    window = dt.timedelta(minutes=config.decline_window_minutes)
    alerts = []
    for group in _by_card(decisions, lambda d: not d.approved).values():
        hit = _crossing(group, first_new, window, config.declines, len)
        if hit is not None:
            reasons = Counter(e.reason or e.response_code for e in hit[1])
            alerts.append(_card_alert("declines", hit[0], hit[1], window,
                                      {"reasons": dict(sorted(reasons.items()))}))
    return alerts


def cards_per_terminal(decisions: Sequence[Decision], first_new: int, config: RiskConfig, facts: Facts
                       ) -> list[Alert]:
    """``cards_per_terminal`` different cards at one terminal within ``terminal_window_minutes``."""
    window = dt.timedelta(minutes=config.terminal_window_minutes)
    groups: dict[tuple[str, str], list[Decision]] = defaultdict(list)
    for d in sorted(decisions, key=lambda x: x.event_id):
        if d.card_id is not None and d.terminal_id and d.merchant_id:
            groups[(d.merchant_id, d.terminal_id)].append(d)
    alerts = []
    for (merchant, terminal), group in groups.items():
        hit = _crossing(group, first_new, window, config.cards_per_terminal,
                        lambda inside: len({e.card_id for e in inside}))
        if hit is not None:
            d, inside = hit
            alerts.append(Alert(
                "cards_per_terminal", f"cards_per_terminal:terminal:{merchant}/{terminal}", d.at, d.event_id,
                {"cards": len({e.card_id for e in inside}), "requests": len(inside),
                 "declined": sum(1 for e in inside if not e.approved),
                 "window_minutes": config.terminal_window_minutes, "first_at": _iso(inside[0].at),
                 "last_at": _iso(d.at)},
                window, merchant_id=merchant, terminal_id=terminal,
            ))
    return alerts


def under_limit(decisions: Sequence[Decision], first_new: int, config: RiskConfig, facts: Facts
                ) -> list[Alert]:
    """``under_limit_count`` purchases on one card of at least ``under_limit_percent`` % of its product's
    per-transaction limit (and not above it) within ``under_limit_window_minutes``."""
    window = dt.timedelta(minutes=config.under_limit_window_minutes)

    def just_under(d: Decision) -> bool:
        limit = facts.per_txn_limit.get(d.card_id or 0)
        return (d.txn in UNDER_LIMIT and limit is not None
                and limit * config.under_limit_percent <= d.amount * 100 and d.amount <= limit)

    alerts = []
    for cid, group in _by_card(decisions, just_under).items():
        hit = _crossing(group, first_new, window, config.under_limit_count, len)
        if hit is not None:
            d, inside = hit
            alerts.append(_card_alert("under_limit", d, inside, window, {
                "limit": _money(facts.per_txn_limit[cid], d.currency),
                "amounts": [_money(e.amount, e.currency) for e in inside],
                "percent": config.under_limit_percent}))
    return alerts


def dormant(decisions: Sequence[Decision], first_new: int, config: RiskConfig, facts: Facts) -> list[Alert]:
    """A card used (a new decision of a cardholder's request) when its last use before the window, or
    its issue when it was never used, is ``dormant_days`` or more before."""
    if not config.dormant_days:
        return []
    idle = dt.timedelta(days=config.dormant_days)
    alerts = []
    for cid, group in _by_card(decisions, lambda d: d.txn in USES).items():
        last = facts.last_used.get(cid)
        since = last if last is not None else facts.issued_at.get(cid)
        if since is None:
            continue
        for d in group:
            if d.event_id < first_new:
                if d.at >= since:
                    since = d.at  # used in the window already: that use was the one to alert on
                continue
            if d.at - since >= idle:
                alerts.append(Alert(
                    "dormant", f"dormant:card:{cid}", d.at, d.event_id,
                    {"pan_masked": d.pan_masked, "last_used": _iso(last),
                     "issued_at": _iso(facts.issued_at.get(cid)),
                     "idle_days": (d.at - since).days, "dormant_days": config.dormant_days, "txn": d.txn,
                     "approved": d.approved},
                    dt.timedelta(days=1), card_id=cid, merchant_id=d.merchant_id, terminal_id=d.terminal_id,
                ))
            break
    return alerts


def _distant(a: Location, b: Location) -> bool:
    """Two stores far apart: of different merchants, or stores of one merchant at different addresses."""
    if a.merchant_id != b.merchant_id:
        return True
    return (a.store_id is not None and b.store_id is not None and a.store_id != b.store_id
            and bool(a.address) and bool(b.address)
            and a.address.strip().lower() != b.address.strip().lower())


def distance(decisions: Sequence[Decision], first_new: int, config: RiskConfig, facts: Facts) -> list[Alert]:
    """One card presented at two distant stores (:func:`_distant`) within ``distance_minutes``."""
    window = dt.timedelta(minutes=config.distance_minutes)

    def where(d: Decision) -> Location:
        key = (d.merchant_id or "", d.terminal_id or "")
        return facts.locations.get(key) or Location(d.merchant_id or "")

    alerts = []
    for cid, group in _by_card(decisions, lambda d: d.txn in AT_A_STORE and bool(d.merchant_id)).items():
        for i, d in enumerate(group):
            if d.event_id < first_new:
                continue
            here = where(d)
            other = next((e for e in reversed(group[:i])
                          if e.at >= d.at - window and _distant(where(e), here)), None)
            if other is None:
                continue
            there = where(other)
            alerts.append(Alert(
                "distance", f"distance:card:{cid}", d.at, d.event_id,
                {"pan_masked": d.pan_masked, "window_minutes": config.distance_minutes,
                 "minutes_apart": round((d.at - other.at).total_seconds() / 60, 1),
                 "stores": [{"merchant_id": loc.merchant_id, "terminal_id": e.terminal_id,
                             "store": loc.store, "address": loc.address, "at": _iso(e.at)}
                            for loc, e in ((there, other), (here, d))]},
                window, card_id=cid, merchant_id=d.merchant_id, terminal_id=d.terminal_id,
            ))
            break
    return alerts


def refunds_over_purchases(decisions: Sequence[Decision], first_new: int, config: RiskConfig, facts: Facts
                           ) -> list[Alert]:
    """A new approved refund at a merchant whose approved refunds on that business date are above its
    purchases (and above ``refunds_min_minor``)."""
    alerts = []
    seen: set[tuple[str, str]] = set()
    for d in sorted(decisions, key=lambda x: x.event_id):
        if d.event_id < first_new or not d.approved or d.txn != "refund" or not d.merchant_id:
            continue
        key = (d.merchant_id, d.business_date)
        if key in seen or key not in facts.merchant_day:
            continue
        purchases, refunds = facts.merchant_day[key]
        if refunds > purchases and refunds > config.refunds_min_minor:
            seen.add(key)
            alerts.append(Alert(
                "refunds_over_purchases",
                f"refunds_over_purchases:merchant:{d.merchant_id}:{d.business_date}", d.at, d.event_id,
                {"business_date": d.business_date, "purchases": _money(purchases, d.currency),
                 "refunds": _money(refunds, d.currency)},
                dt.timedelta(days=1), merchant_id=d.merchant_id, terminal_id=d.terminal_id,
            ))
    return alerts


Rule = Callable[[Sequence[Decision], int, RiskConfig, Facts], list[Alert]]
RULES: dict[str, Rule] = {
    "pin_failures": pin_failures,
    "declines": declines,
    "cards_per_terminal": cards_per_terminal,
    "under_limit": under_limit,
    "dormant": dormant,
    "distance": distance,
    "refunds_over_purchases": refunds_over_purchases,
}


def evaluate(decisions: Sequence[Decision], first_new: int, config: RiskConfig, facts: Facts | None = None
             ) -> list[Alert]:
    """Every rule over ``decisions`` (the new ones, event id >= ``first_new``, and the window before
    them); one alert per dedupe key (the first)."""
    facts = facts or Facts()
    out: dict[str, Alert] = {}
    for rule in RULES.values():
        for a in rule(decisions, first_new, config, facts):
            out.setdefault(a.dedupe_key, a)
    return list(out.values())


def max_window(config: RiskConfig) -> dt.timedelta:
    return dt.timedelta(minutes=max(config.pin_window_minutes, config.decline_window_minutes,
                                    config.terminal_window_minutes, config.under_limit_window_minutes,
                                    config.distance_minutes))


# -- reading the stream ------------------------------------------------------------------------------------
def decision_of(row: Any) -> Decision | None:
    """A Decision from an ``events`` row of type authorization.*; None for a payload it cannot read
    (never an exception: one odd event must not stop the monitor)."""
    try:
        p = row["payload"]
        p = json.loads(p) if isinstance(p, str) else p
        if not isinstance(p, dict):
            return None
        amount = p.get("amount")
        amount = amount if isinstance(amount, dict) else {}

        def text(key: str) -> str | None:
            value = p.get(key)
            return value if isinstance(value, str) else None

        return Decision(
            event_id=int(row["id"]), at=row["occurred_at"], card_id=row["card_id"], txn=text("txn") or "",
            approved=row["type"] == "authorization.approved", amount=int(amount.get("amount") or 0),
            currency=amount.get("currency") if isinstance(amount.get("currency"), str) else None,
            reason=text("reason"), response_code=text("response_code") or "",
            merchant_id=text("merchant_id"), terminal_id=text("terminal_id"), pan_masked=text("pan_masked"),
            business_date=text("business_date") or "",
        )
    except (TypeError, ValueError, KeyError, AttributeError):
        return None


def _decisions(rows: Iterable[Any]) -> list[Decision]:
    return [d for d in (decision_of(r) for r in rows if r["type"] in AUTH_TYPES) if d is not None]


_EVENTS_AFTER = ("SELECT id, type, card_id, merchant_id, occurred_at, payload FROM events WHERE id > $1"
                 " ORDER BY id LIMIT $2")
# The window before the new decisions: the same cards' (index events_card), and the same terminals'
# among the last TERMINAL_LOOKBACK events (by id: a bounded range of the primary key, not a scan of
# every event of the window under heavy traffic).
TERMINAL_LOOKBACK = 20_000
_CONTEXT_CARDS = """
SELECT id, type, card_id, merchant_id, occurred_at, payload FROM events
 WHERE card_id = ANY($1::bigint[]) AND id < $2 AND occurred_at >= $3 AND type = ANY($4::text[])
"""
_CONTEXT_TERMINALS = """
SELECT id, type, card_id, merchant_id, occurred_at, payload FROM events
 WHERE id >= $2 - $5::bigint AND id < $2 AND occurred_at >= $3 AND type = ANY($4::text[])
   AND (payload->>'terminal_id') = ANY($1::text[])
"""


async def _context(conn: Any, new: Sequence[Decision], config: RiskConfig) -> list[Any]:
    first_new = new[0].event_id
    since = min(d.at for d in new) - max_window(config)
    rows: dict[int, Any] = {}
    cards = sorted({d.card_id for d in new if d.card_id is not None})
    if cards:
        for r in await conn.fetch(_CONTEXT_CARDS, cards, first_new, since, list(AUTH_TYPES)):
            rows[int(r["id"])] = r
    terminals = sorted({d.terminal_id for d in new if d.terminal_id})
    if terminals:
        since_t = min(d.at for d in new) - dt.timedelta(minutes=config.terminal_window_minutes)
        for r in await conn.fetch(_CONTEXT_TERMINALS, terminals, first_new, since_t, list(AUTH_TYPES),
                                  TERMINAL_LOOKBACK):
            rows[int(r["id"])] = r
    return [rows[k] for k in sorted(rows)]


async def _facts(conn: Any, new: Sequence[Decision], upto: int) -> Facts:
    facts = Facts()
    cards = sorted({d.card_id for d in new if d.card_id is not None})
    if cards:
        for r in await conn.fetch(
            "SELECT c.id, p.per_txn_limit, greatest(c.issued_at, (SELECT max(e.at) FROM card_events e"
            " WHERE e.card_id = c.id AND e.to_state = 'active')) AS issued_at"
            " FROM cards c JOIN products p ON p.id = c.product_id WHERE c.id = ANY($1::bigint[])", cards,
        ):
            facts.per_txn_limit[int(r["id"])] = int(r["per_txn_limit"])
            facts.issued_at[int(r["id"])] = r["issued_at"]
        before = min(d.at for d in new) - dt.timedelta(minutes=1)
        for r in await conn.fetch(
            "SELECT card_id, max(received_at) AS last FROM auth_requests WHERE card_id = ANY($1::bigint[])"
            " AND received_at < $2 AND txn = ANY($3::text[]) GROUP BY card_id", cards, before, sorted(USES),
        ):
            facts.last_used[int(r["card_id"])] = r["last"]
    terminals = sorted({d.terminal_id for d in new if d.terminal_id})
    if terminals:
        for r in await conn.fetch(
            "SELECT m.merchant_id, t.terminal_id, s.id AS store_id, s.code, s.address FROM terminals t"
            " JOIN merchants m ON m.id = t.merchant_id LEFT JOIN stores s ON s.id = t.store_id"
            " WHERE t.terminal_id = ANY($1::text[])", terminals,
        ):
            facts.locations[(r["merchant_id"], r["terminal_id"])] = Location(
                r["merchant_id"], r["store_id"], r["code"] or "", r["address"] or "")
    refunded = sorted({(d.merchant_id, d.business_date) for d in new
                       if d.approved and d.txn == "refund" and d.merchant_id})
    if refunded:
        for r in await conn.fetch(
            """
            SELECT merchant_id, payload->>'business_date' AS day,
                   coalesce(sum((payload->'amount'->>'amount')::bigint)
                            FILTER (WHERE payload->>'txn' = ANY($4::text[])), 0) AS purchases,
                   coalesce(sum((payload->'amount'->>'amount')::bigint)
                            FILTER (WHERE payload->>'txn' = 'refund'), 0) AS refunds
              FROM events
             WHERE type = 'authorization.approved' AND merchant_id = ANY($1::text[])
               AND payload->>'business_date' = ANY($2::text[]) AND id <= $3
               AND occurred_at >= now() - interval '3 days'
             GROUP BY 1, 2
            """,
            sorted({m for m, _ in refunded}), sorted({d for _, d in refunded}), upto, sorted(PURCHASES),
        ):
            facts.merchant_day[(r["merchant_id"], r["day"])] = (int(r["purchases"]), int(r["refunds"]))
    return facts


_STORE = """
INSERT INTO risk_alerts (rule, dedupe_key, card_id, merchant_id, terminal_id, detail, event_id)
SELECT $1, $2, $3, $4, $5, $6::jsonb, $7
 WHERE NOT EXISTS (SELECT 1 FROM risk_alerts
                    WHERE dedupe_key = $2 AND (state = 'open' OR raised_at > now() - $8::interval))
ON CONFLICT DO NOTHING
RETURNING id, raised_at
"""


def alert_payload(alert_id: int, a: Alert, raised_at: dt.datetime) -> dict[str, Any]:
    """The ``risk.alert`` event's data (webhook): ids, masked forms, counts and amounts only."""
    return {
        "alert": f"ra_{alert_id}", "rule": a.rule, "rule_text": RULE_TEXT.get(a.rule, a.rule),
        "card": None if a.card_id is None else f"card_{a.card_id}",
        "pan_masked": a.detail.get("pan_masked"), "merchant_id": a.merchant_id, "terminal_id": a.terminal_id,
        "detail": a.detail, "raised_at": _iso(raised_at),
    }


@dataclass(frozen=True, slots=True)
class Raised:
    id: int
    alert: Alert
    raised_at: dt.datetime


async def store_alerts(conn: Any, alerts: Iterable[Alert]) -> list[Raised]:
    """Store the alerts not deduplicated away, each with its ``risk.alert`` event (in ``conn``'s
    transaction); the ones stored."""
    raised: list[Raised] = []
    for a in alerts:
        row = await conn.fetchrow(_STORE, a.rule, a.dedupe_key, a.card_id, a.merchant_id, a.terminal_id,
                                  json.dumps(a.detail, sort_keys=True), a.event_id, a.window)
        if row is not None:
            raised.append(Raised(int(row["id"]), a, row["raised_at"]))
    await write_events(conn, [Event("risk.alert", alert_payload(r.id, r.alert, r.raised_at), r.alert.card_id,
                                    r.alert.merchant_id) for r in raised])
    return raised


async def _scan(conn: Any, config: RiskConfig, now: float) -> tuple[list[Raised], int]:
    async with conn.transaction():
        cursor = await conn.fetchval("SELECT last_event FROM risk_cursor FOR UPDATE")
        if cursor is None:
            await conn.execute("INSERT INTO risk_cursor (last_event) VALUES (0) ON CONFLICT DO NOTHING")
            cursor = 0
        rows = await conn.fetch(_EVENTS_AFTER, cursor, BATCH)
        taken = []
        upto = int(cursor)
        for r in rows:
            missing = range(upto + 1, int(r["id"]))
            if any(now - _GAPS.setdefault(g, now) < GAP_SETTLE_S for g in missing):
                break  # a transaction may still commit that id: read from here again next time
            taken.append(r)
            upto = int(r["id"])
        if not taken:
            return [], 0
        new = _decisions(taken)
        raised: list[Raised] = []
        if new:
            first_new = new[0].event_id
            window = _decisions(await _context(conn, new, config)) + new
            facts = await _facts(conn, new, upto)
            raised = await store_alerts(conn, evaluate(window, first_new, config, facts))
        await conn.execute("UPDATE risk_cursor SET last_event = $1, updated_at = now()", upto)
    if len(_GAPS) > 100_000:
        _GAPS.clear()
    return raised, len(taken)


async def _scan_and_mail(pool: Any, config: Config, crypto: Any) -> tuple[list[Raised], int]:
    raised, read = await pool.run(_scan, config.risk, trio.current_time())
    for r in raised:
        log.warning("risk_alert", alert=r.id, rule=r.alert.rule, card=r.alert.card_id,
                    terminal=r.alert.terminal_id, merchant=r.alert.merchant_id)
    if raised and config.console.smtp_host and crypto is not None:
        await mail(pool, crypto, config, raised)
    return raised, read


async def scan_once(pool: Any, config: Config, crypto: Any = None) -> list[Raised]:
    """Read the events after the cursor (one batch), raise and store alerts, then e-mail them (with
    ``crypto`` to open the operators' addresses); the alerts raised."""
    raised, _ = await _scan_and_mail(pool, config, crypto)
    return raised


# -- e-mail --------------------------------------------------------------------------------------------------
async def _subscribers(conn: Any) -> list[Any]:
    return list(await conn.fetch(
        "SELECT name, email_sealed FROM operators WHERE alerts AND email_sealed IS NOT NULL"
        " AND disabled_at IS NULL ORDER BY id"
    ))


def message(r: Raised, config: Config, to: str) -> EmailMessage:
    """The alert's e-mail to one operator (masked forms only; the console page has the rest)."""
    from ops.localtime import format_local

    a = r.alert
    msg = EmailMessage()
    msg["From"] = config.console.mail_from
    msg["To"] = to
    subject = f"[payswitch] risk alert ra_{r.id}: {RULE_TEXT.get(a.rule, a.rule)}"
    msg["Subject"] = subject
    lines = [subject, "", f"Raised: {format_local(r.raised_at, config.clearing.timezone)}"]
    if a.card_id is not None:
        lines.append(f"Card: card_{a.card_id} {a.detail.get('pan_masked') or ''}".rstrip())
    if a.terminal_id:
        lines.append(f"Terminal: {a.terminal_id} at merchant {a.merchant_id}")
    elif a.merchant_id:
        lines.append(f"Merchant: {a.merchant_id}")
    lines += ["", "Detail:", json.dumps(a.detail, indent=2, sort_keys=True, ensure_ascii=False), "",
              f"Act on it in the console: /console/risk/{r.id}"]
    msg.set_content("\n".join(lines))
    return msg


def _send(host: str, port: int, messages: list[EmailMessage]) -> None:
    with smtplib.SMTP(host, port, timeout=15) as smtp:
        for m in messages:
            smtp.send_message(m)


async def mail(pool: Any, crypto: Any, config: Config, raised: Sequence[Raised]) -> int:
    """E-mail each alert to every subscribed operator through ``console.smtp_host``; the number of
    messages sent (0 when the server cannot be reached: logged, the alert stays in the console)."""
    from host.pii import reveal

    console: ConsoleConfig = config.console
    subscribers = await pool.run(_subscribers)
    addresses = [await reveal(crypto, s["email_sealed"]) for s in subscribers]
    messages = [message(r, config, to) for r in raised for to in addresses]
    if not messages:
        return 0
    try:
        await trio.to_thread.run_sync(_send, console.smtp_host, console.smtp_port, messages)
    except (OSError, smtplib.SMTPException) as exc:
        log.error("risk_mail_failed", error=type(exc).__name__, alerts=[r.id for r in raised])
        return 0
    log.info("risk_mail_sent", messages=len(messages), alerts=[r.id for r in raised])
    return len(messages)


# -- the background task ---------------------------------------------------------------------------------
async def task(state: Any) -> None:
    """The background task of ``api serve``: scan every ``risk.poll_s`` seconds (at once again while a
    scan finds a full batch), until cancelled; an error is logged and the scan tried again."""
    config: Config = state.config
    while True:
        try:
            _, read = await _scan_and_mail(state.pool, config, state.crypto)
            if read >= BATCH:
                continue
        except Exception as exc:  # never take the API process down: try again after the pause
            log.error("risk_scan_failed", error=type(exc).__name__, detail=str(exc)[:200])
        await trio.sleep(config.risk.poll_s)


# -- the console's reading and acting ------------------------------------------------------------------
_COLUMNS = """a.id, a.rule, a.card_id, a.merchant_id, a.terminal_id, a.detail, a.event_id, a.raised_at,
a.state, a.acted_by, a.acted_at, a.action, c.pan_masked, c.state AS card_state"""


def _row(r: Any) -> dict[str, Any]:
    d = dict(r)
    d["detail"] = json.loads(d["detail"]) if isinstance(d["detail"], str) else dict(d["detail"])
    d["rule_text"] = RULE_TEXT.get(d["rule"], d["rule"])
    return d


def _cursor_of(row: dict[str, Any]) -> str:
    return f"{0 if row['state'] == 'open' else 1}:{row['id']}"


def parse_cursor(cursor: str | None) -> tuple[int, int] | None:
    if not cursor:
        return None
    rank, _, ident = cursor.partition(":")
    if rank not in ("0", "1") or not is_digits(ident):
        raise RiskError("not a page cursor of the alert list")
    return int(rank), int(ident)


async def list_alerts(
    conn: Any, *, state: str | None = None, rule: str | None = None, card_id: int | None = None,
    terminal_id: str | None = None, merchant_id: str | None = None, cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[dict[str, Any]], str | None]:
    """Alerts, open ones first then newest first, filtered; a page and the next page's cursor."""
    after = parse_cursor(cursor)
    rows = await conn.fetch(
        f"""
        SELECT {_COLUMNS} FROM risk_alerts a LEFT JOIN cards c ON c.id = a.card_id
         WHERE ($1::text IS NULL OR a.state = $1) AND ($2::text IS NULL OR a.rule = $2)
           AND ($3::bigint IS NULL OR a.card_id = $3) AND ($4::text IS NULL OR a.terminal_id = $4)
           AND ($5::text IS NULL OR a.merchant_id = $5)
           AND ($6::int IS NULL OR (CASE WHEN a.state = 'open' THEN 0 ELSE 1 END, -a.id) > ($6, -$7::bigint))
         ORDER BY CASE WHEN a.state = 'open' THEN 0 ELSE 1 END, a.id DESC
         LIMIT $8
        """,
        state, rule, card_id, terminal_id, merchant_id, None if after is None else after[0],
        None if after is None else after[1], limit + 1,
    )
    page = [_row(r) for r in rows[:limit]]
    return page, (_cursor_of(page[-1]) if len(rows) > limit and page else None)


async def get_alert(conn: Any, alert_id: int) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM risk_alerts a LEFT JOIN cards c ON c.id = a.card_id WHERE a.id = $1",
        alert_id)
    return None if row is None else _row(row)


async def count_open(conn: Any) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM risk_alerts WHERE state = 'open'"))


@dataclass(frozen=True, slots=True)
class Acted:
    alert_id: int
    action: str
    target: str  # what the action changed: card:<id>, terminal:<DE42>/<DE41> or risk_alert:<id>
    before: dict[str, Any]
    after: dict[str, Any]


Record = Callable[[Any, Acted], Awaitable[Any]]


async def act(conn: Any, alert_id: int, action: str, *, actor: str, record: Record | None = None) -> Acted:
    """Take ``action`` (:data:`ACTIONS`) from alert ``alert_id`` in one transaction: freeze its card,
    disable its terminal, acknowledge or dismiss it; the alert becomes acted (acknowledged, dismissed)
    by ``actor``. ``record(conn, acted)`` runs in the same transaction (the audit row). RiskError when
    the alert or its action cannot be taken (nothing changes)."""
    if action not in ACTIONS:
        raise RiskError(f"an action on an alert is one of {', '.join(ACTIONS)}")
    async with conn.transaction():
        row = await conn.fetchrow("SELECT * FROM risk_alerts WHERE id = $1 FOR UPDATE", alert_id)
        if row is None:
            raise RiskError(f"no alert ra_{alert_id}")
        if row["state"] in ("acted", "dismissed") and action in ("acknowledge", "dismiss"):
            raise RiskError(f"alert ra_{alert_id} is {row['state']} already")
        reason = f"risk alert ra_{alert_id} ({row['rule']})"
        try:
            if action == "freeze_card":
                if row["card_id"] is None:
                    raise RiskError(f"alert ra_{alert_id} concerns no card")
                old, new = await catalog.set_card_state(conn, int(row["card_id"]), "frozen", actor=actor,
                                                        reason=reason)
                acted = Acted(alert_id, action, f"card:{row['card_id']}", {"state": old}, {"state": new})
            elif action == "disable_terminal":
                if not row["terminal_id"]:
                    raise RiskError(f"alert ra_{alert_id} concerns no terminal")
                ref = await directory.terminal_ref(conn, row["terminal_id"], row["merchant_id"])
                old, new = await catalog.set_terminal_state(conn, ref, "disabled")
                acted = Acted(alert_id, action, f"terminal:{row['merchant_id']}/{row['terminal_id']}",
                              {"state": old}, {"state": new})
            else:
                new_state = "acknowledged" if action == "acknowledge" else "dismissed"
                acted = Acted(alert_id, action, f"risk_alert:{alert_id}", {"state": row["state"]},
                              {"state": new_state})
        except catalog.CatalogError as exc:
            raise RiskError(str(exc)) from None
        state = {"acknowledge": "acknowledged", "dismiss": "dismissed"}.get(action, "acted")
        await conn.execute(
            "UPDATE risk_alerts SET state = $2, acted_by = $3, acted_at = now(), action = $4 WHERE id = $1",
            alert_id, state, actor, action,
        )
        if record is not None:
            await record(conn, acted)
    return acted
