"""The risk rules (host.risk) on synthetic decisions: pure functions, no database."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest

from host import risk
from host.risk import Decision, Facts, Location
from ops.config import RiskConfig

T0 = dt.datetime(2026, 12, 2, 10, 0, tzinfo=dt.UTC)
_IDS = itertools.count(1)


def cfg(**changes: Any) -> RiskConfig:
    base = dict(poll_s=1, pin_failures=3, pin_window_minutes=10, declines=5, decline_window_minutes=10,
                cards_per_terminal=10, terminal_window_minutes=5, under_limit_percent=90, under_limit_count=3,
                under_limit_window_minutes=10, dormant_days=180, distance_minutes=10, refunds_min_minor=0)
    return RiskConfig(**(base | changes))


def d(minute: float, *, card: int | None = 1, txn: str = "purchase", ok: bool = True, amount: int = 1000,
      reason: str | None = None, merchant: str = "M1", terminal: str = "T1", date: str = "2026-12-02"
      ) -> Decision:
    return Decision(next(_IDS), T0 + dt.timedelta(minutes=minute), card, txn, ok, amount, "CNY", reason,
                    "00" if ok else "55", merchant, terminal, f"623456******{card or 0:04d}", date)


def rules(decisions: list[Decision], first_new: int | None = None, config: RiskConfig | None = None,
          facts: Facts | None = None) -> list[str]:
    first = decisions[0].event_id if first_new is None else first_new
    return sorted(a.rule for a in risk.evaluate(decisions, first, config or cfg(), facts))


def wrong_pin(minute: float, card: int = 1, **kw: Any) -> Decision:
    return d(minute, card=card, ok=False, reason="pin_wrong", **kw)


def test_pin_failures_three_in_ten_minutes() -> None:
    alerts = risk.pin_failures([wrong_pin(0), wrong_pin(1), wrong_pin(2)], 0, cfg(), Facts())
    assert [a.rule for a in alerts] == ["pin_failures"]
    a = alerts[0]
    assert a.card_id == 1 and a.dedupe_key == "pin_failures:card:1" and a.detail["count"] == 3
    assert a.detail["pan_masked"] == "623456******0001" and a.window == dt.timedelta(minutes=10)
    # two are not enough; three spread over more than the window are not either
    assert risk.pin_failures([wrong_pin(0), wrong_pin(1)], 0, cfg(), Facts()) == []
    assert risk.pin_failures([wrong_pin(0), wrong_pin(6), wrong_pin(12)], 0, cfg(), Facts()) == []
    # pin_tries_exceeded counts; other cards and other declines do not
    mixed = [wrong_pin(0), d(1, ok=False, reason="pin_tries_exceeded"), wrong_pin(1, card=2),
             d(2, ok=False, reason="insufficient_funds")]
    assert risk.pin_failures(mixed, 0, cfg(), Facts()) == []
    assert len(risk.pin_failures([*mixed, wrong_pin(3)], 0, cfg(), Facts())) == 1


def test_only_new_decisions_raise() -> None:
    old = [wrong_pin(0), wrong_pin(1), wrong_pin(2)]
    new = [d(3)]  # an approval after them: the failures were alerted on when they were new
    assert risk.pin_failures(old + new, new[0].event_id, cfg(), Facts()) == []
    later = [wrong_pin(4)]  # a new failure with two of the old in its window raises
    assert len(risk.pin_failures(old + later, later[0].event_id, cfg(), Facts())) == 1


def test_declines_of_any_reason() -> None:
    reasons = ["insufficient_funds", "limit_daily_amount", "pin_wrong", "insufficient_funds", "card_frozen"]
    ds = [d(i, ok=False, reason=r) for i, r in enumerate(reasons)]
    alerts = risk.declines(ds, 0, cfg(), Facts())
    assert len(alerts) == 1 and alerts[0].detail["reasons"]["insufficient_funds"] == 2
    assert risk.declines(ds[:4], 0, cfg(), Facts()) == []
    assert risk.declines(ds, 0, cfg(declines=6), Facts()) == []


def test_cards_per_terminal() -> None:
    ds = [d(i * 0.3, card=c) for i, c in enumerate(range(1, 11))]
    alerts = risk.cards_per_terminal(ds, 0, cfg(), Facts())
    assert len(alerts) == 1 and alerts[0].terminal_id == "T1" and alerts[0].merchant_id == "M1"
    assert alerts[0].detail["cards"] == 10 and alerts[0].card_id is None
    assert alerts[0].dedupe_key == "cards_per_terminal:terminal:M1/T1"
    # the same card ten times, or ten cards over 30 minutes, or spread over terminals: no alert
    assert risk.cards_per_terminal([d(i * 0.1, card=1) for i in range(10)], 0, cfg(), Facts()) == []
    slow = [d(i * 3, card=c) for i, c in enumerate(range(1, 11))]
    assert risk.cards_per_terminal(slow, 0, cfg(), Facts()) == []
    spread = [d(i * 0.1, card=c, terminal=f"T{c % 2}") for i, c in enumerate(range(1, 11))]
    assert risk.cards_per_terminal(spread, 0, cfg(), Facts()) == []


def test_under_limit_burst() -> None:
    facts = Facts(per_txn_limit={1: 100_000})
    ds = [d(0, amount=95_000), d(2, amount=90_000), d(4, amount=99_999)]
    alerts = risk.under_limit(ds, 0, cfg(), facts)
    assert len(alerts) == 1 and alerts[0].detail["limit"] == {"amount": 100_000, "currency": "CNY"}
    assert [m["amount"] for m in alerts[0].detail["amounts"]] == [95_000, 90_000, 99_999]
    # one of them below 90 %, or a load, or no known limit: no alert
    low = [d(0, amount=95_000), d(2, amount=89_999), d(4, amount=99_999)]
    assert risk.under_limit(low, 0, cfg(), facts) == []
    assert risk.under_limit([d(0, amount=95_000), d(2, amount=95_000, txn="topup"), d(4, amount=99_999)], 0,
                            cfg(), facts) == []
    assert risk.under_limit(ds, 0, cfg(), Facts()) == []
    assert len(risk.under_limit(ds[:2], 0, cfg(under_limit_count=2), facts)) == 1


def test_dormant_card() -> None:
    use = d(0)
    long_ago = T0 - dt.timedelta(days=200)
    alerts = risk.dormant([use], use.event_id, cfg(), Facts(last_used={1: long_ago}))
    assert len(alerts) == 1 and alerts[0].detail["idle_days"] == 200 and alerts[0].card_id == 1
    recent = T0 - dt.timedelta(days=30)
    assert risk.dormant([use], use.event_id, cfg(), Facts(last_used={1: recent})) == []
    # never used: its issue counts
    assert len(risk.dormant([use], use.event_id, cfg(), Facts(issued_at={1: long_ago}))) == 1
    assert risk.dormant([use], use.event_id, cfg(), Facts(issued_at={1: recent})) == []
    # dormant_days = 0: off
    assert risk.dormant([use], use.event_id, cfg(dormant_days=0), Facts(last_used={1: long_ago})) == []
    # a use earlier in the window (already alerted on) makes the next one not dormant
    first, second = d(0), d(1)
    assert risk.dormant([first, second], second.event_id, cfg(), Facts(last_used={1: long_ago})) == []


def test_distance_two_merchants_or_addresses() -> None:
    facts = Facts(locations={
        ("M1", "T1"): Location("M1", 1, "S1", "1 North Road, Beijing"),
        ("M1", "T2"): Location("M1", 2, "S2", "9 South Street, Shenzhen"),
        ("M1", "T3"): Location("M1", 3, "S3", "1 north road, beijing"),
        ("M2", "T9"): Location("M2", 9, "X", ""),
    })
    alerts = risk.distance([d(0, terminal="T1"), d(4, terminal="T2")], 0, cfg(), facts)
    assert len(alerts) == 1 and alerts[0].detail["minutes_apart"] == 4.0
    assert [s["store"] for s in alerts[0].detail["stores"]] == ["S1", "S2"]
    assert len(risk.distance([d(0, terminal="T1"), d(4, merchant="M2", terminal="T9")], 0, cfg(), facts)) == 1
    # the same address, the same terminal, too far apart in time, or another card: no alert
    assert risk.distance([d(0, terminal="T1"), d(4, terminal="T3")], 0, cfg(), facts) == []
    assert risk.distance([d(0, terminal="T1"), d(4, terminal="T1")], 0, cfg(), facts) == []
    assert risk.distance([d(0, terminal="T1"), d(11, terminal="T2")], 0, cfg(), facts) == []
    assert risk.distance([d(0, terminal="T1"), d(4, card=2, terminal="T2")], 0, cfg(), facts) == []


def test_refunds_over_purchases() -> None:
    refund = d(0, txn="refund", amount=50_000)
    facts = Facts(merchant_day={("M1", "2026-12-02"): (40_000, 50_000)})
    alerts = risk.refunds_over_purchases([refund], 0, cfg(), facts)
    assert len(alerts) == 1 and alerts[0].merchant_id == "M1"
    assert alerts[0].detail["refunds"]["amount"] == 50_000
    assert alerts[0].detail["purchases"]["amount"] == 40_000
    assert alerts[0].dedupe_key == "refunds_over_purchases:merchant:M1:2026-12-02"
    assert risk.refunds_over_purchases([refund], 0, cfg(refunds_min_minor=60_000), facts) == []
    even = Facts(merchant_day={("M1", "2026-12-02"): (50_000, 50_000)})
    assert risk.refunds_over_purchases([refund], 0, cfg(), even) == []
    declined = d(0, txn="refund", ok=False)
    assert risk.refunds_over_purchases([declined], 0, cfg(), facts) == []


def test_evaluate_all_rules_one_alert_per_key() -> None:
    burst = [wrong_pin(i * 0.5) for i in range(6)]  # 6 wrong PINs: pin_failures and declines, once each
    assert rules(burst) == ["declines", "pin_failures"]
    assert rules([d(0)]) == []


@pytest.mark.parametrize("rule", sorted(risk.RULES))
def test_every_rule_described(rule: str) -> None:
    assert rule in risk.RULE_TEXT


def test_decision_of_an_event_row() -> None:
    row = {"id": 7, "type": "authorization.declined", "card_id": 3, "occurred_at": T0,
           "payload": '{"txn": "purchase", "amount": {"amount": 1200, "currency": "CNY"},'
                      ' "reason": "pin_wrong", "response_code": "55", "merchant_id": "M1",'
                      ' "terminal_id": "T1",'
                      ' "pan_masked": "623456******0003", "business_date": "2026-12-02"}'}
    got = risk.decision_of(row)
    assert got == Decision(7, T0, 3, "purchase", False, 1200, "CNY", "pin_wrong", "55", "M1", "T1",
                           "623456******0003", "2026-12-02")


def test_an_odd_event_is_skipped_not_raised() -> None:
    for payload in ('{"marker": "x"}', '{"amount": 12, "txn": 3}', "[]", "not json"):
        row = {"id": 8, "type": "authorization.approved", "card_id": None, "occurred_at": T0,
               "payload": payload}
        got = risk.decision_of(row)
        assert got is None or (got.amount == 0 and got.txn == "")


def test_page_cursor() -> None:
    assert risk.parse_cursor("0:12") == (0, 12) and risk.parse_cursor(None) is None
    for bad in ("x", "2:1", "0:", "0:1a", "0:²"):
        with pytest.raises(risk.RiskError):
            risk.parse_cursor(bad)
