"""Risk alerts (issue 18 item 5): the list (open first, filters, pages), one alert, and the one-click
actions from it: freeze its card, disable its terminal, acknowledge, dismiss.

host.risk raises, stores, reads and acts; this only speaks HTTP. Each action's audit row is written in
the same transaction as the change (``host.risk.act``'s ``record``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from console import forms
from console.auth import Acting, ConsoleRefusal, Viewer, action, api_state
from console.operators import Session
from console.roles import may
from console.web import PREFIX, render, timezone_of
from host import risk
from ops.digits import row_number
from ops.localtime import format_local
from ops.logs import redact_text

router = APIRouter()
NAV = [("Risk", "/console/risk", "viewer")]
PAGE = 50

FREEZE = action("risk.freeze_card", "operator")
DISABLE = action("risk.disable_terminal", "operator")
ACKNOWLEDGE = action("risk.acknowledge", "operator")
DISMISS = action("risk.dismiss", "operator")


def _card_id(text: str) -> int | None:
    """``card_12`` or ``12``; None for an empty filter; a refusal otherwise."""
    text = text.strip().removeprefix("card_")
    if not text:
        return None
    if row_number(text) is None:
        raise ConsoleRefusal(400, "A card filter is a card id (card_12 or 12).")
    return int(text)


def _text(text: str, what: str, longest: int = 32) -> str | None:
    return forms.text_filter(text, what, longest)


@router.get("/risk", response_class=HTMLResponse)
async def alerts(request: Request, state: str = "", rule: str = "", card: str = "", terminal: str = "",
                 merchant: str = "", cursor: str = "", session: Session = Viewer) -> HTMLResponse:
    if state and state not in risk.STATES:
        raise ConsoleRefusal(400, f"A state is one of {', '.join(risk.STATES)}.")
    if rule and rule not in risk.RULES:
        raise ConsoleRefusal(400, f"A rule is one of {', '.join(risk.RULES)}.")
    filters = {"state": state, "rule": rule, "card": card.strip(), "terminal": terminal.strip(),
               "merchant": merchant.strip()}
    card_id = _card_id(card)
    terminal_id = _text(terminal, "terminal", 8)
    merchant_id = _text(merchant, "merchant", 15)

    async def work(conn: Any) -> tuple[list[dict[str, Any]], str | None, int]:
        page, next_cursor = await risk.list_alerts(
            conn, state=state or None, rule=rule or None, card_id=card_id, terminal_id=terminal_id,
            merchant_id=merchant_id, cursor=cursor or None, limit=PAGE)
        return page, next_cursor, await risk.count_open(conn)

    try:
        rows, next_cursor, open_count = await api_state(request).pool.run(work)
    except risk.RiskError as exc:
        raise ConsoleRefusal(400, str(exc)) from None
    query = urlencode({k: v for k, v in filters.items() if v})
    return render(request, "risk.html", alerts=rows, filters=filters, next_cursor=next_cursor, query=query,
                  open_count=open_count, states=risk.STATES, rules=risk.RULE_TEXT,
                  can_act=may(session.operator.role, "risk.freeze_card"))


def _check_id(alert_id: int) -> None:
    if not 0 < alert_id < 2**63:
        raise ConsoleRefusal(404, f"There is no alert ra_{alert_id}.")


async def _alert(request: Request, alert_id: int) -> dict[str, Any]:
    _check_id(alert_id)
    found: dict[str, Any] | None = await api_state(request).pool.run(risk.get_alert, alert_id)
    if found is None:
        raise ConsoleRefusal(404, f"There is no alert ra_{alert_id}.")
    return found


def _local_times(value: Any, tz: str, key: str = "") -> Any:
    """The evidence with its instants (RFC 3339 in UTC, keys ``*_at``, ``at``, ``last_used``) in the
    programme's local time."""
    if isinstance(value, dict):
        return {k: _local_times(v, tz, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_local_times(v, tz, key) for v in value]
    if isinstance(value, str) and (key == "at" or key.endswith("_at") or key == "last_used"):
        try:
            return format_local(dt.datetime.fromisoformat(value), tz)
        except ValueError:
            return value
    return value


@router.get("/risk/{alert_id}", response_class=HTMLResponse)
async def alert(request: Request, alert_id: int, done: str = "", session: Session = Viewer) -> HTMLResponse:
    found = await _alert(request, alert_id)
    found["detail"] = _local_times(found["detail"], timezone_of(request))
    return render(request, "risk_alert.html", alert=found, done=risk.ACTIONS.get(done, ""),
                  can_act=may(session.operator.role, "risk.freeze_card"))


async def _act(request: Request, alert_id: int, what: str, acting: Acting) -> RedirectResponse:
    _check_id(alert_id)
    reason = redact_text(acting.form.get("reason", "").strip()[:500])  # a PAN typed in it is masked

    async def record(conn: Any, acted: risk.Acted) -> None:
        await acting.record(target=acted.target, before=acted.before | {"alert": f"ra_{alert_id}"},
                            after=acted.after | {"alert": f"ra_{alert_id}"},
                            reason=reason or f"from risk alert ra_{alert_id}", conn=conn)

    async def work(conn: Any) -> risk.Acted:
        return await risk.act(conn, alert_id, what, actor=acting.session.operator.name, record=record)

    try:
        await acting.pool.run(work)
    except risk.RiskError as exc:
        await acting.record(target=f"risk_alert:{alert_id}", outcome="failed", reason=str(exc))
        raise ConsoleRefusal(409, str(exc)) from None
    return RedirectResponse(f"{PREFIX}/risk/{alert_id}?done={what}", status_code=303)


@router.post("/risk/{alert_id}/freeze-card")
async def freeze_card(request: Request, alert_id: int, acting: Acting = FREEZE) -> RedirectResponse:
    return await _act(request, alert_id, "freeze_card", acting)


@router.post("/risk/{alert_id}/disable-terminal")
async def disable_terminal(request: Request, alert_id: int, acting: Acting = DISABLE) -> RedirectResponse:
    return await _act(request, alert_id, "disable_terminal", acting)


@router.post("/risk/{alert_id}/acknowledge")
async def acknowledge(request: Request, alert_id: int, acting: Acting = ACKNOWLEDGE) -> RedirectResponse:
    return await _act(request, alert_id, "acknowledge", acting)


@router.post("/risk/{alert_id}/dismiss")
async def dismiss(request: Request, alert_id: int, acting: Acting = DISMISS) -> RedirectResponse:
    return await _act(request, alert_id, "dismiss", acting)
