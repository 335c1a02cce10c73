"""The audit trail (issue 18 item 4): every state-changing action of the console, the API and the CLI,
filtered (actor, action, target, outcome, time range), newest first by cursor, in local time; and
"Verify chain", which recomputes the SM3 chain and shows OK or the first broken row.

ops.audit reads and verifies; this only speaks HTTP.
"""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from console import forms
from console.auth import Acting, ConsoleRefusal, Viewer, action, api_state
from console.operators import Session
from console.web import render, timezone_of
from ops import audit
from ops.digits import row_number

router = APIRouter()
NAV = [("Audit", "/console/audit", "viewer")]
PAGE = 50
VERIFY = action("audit.verify", "viewer")


def _text(text: str, what: str, longest: int = 200) -> str | None:
    return forms.text_filter(text, what, longest)


def _when(text: str, what: str, tz: str) -> dt.datetime | None:
    """A time from the form (datetime-local: the programme's local time), or None."""
    text = text.strip()
    if not text:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConsoleRefusal(400, f"The {what} time is a date and time (2026-12-02T08:00).") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=ZoneInfo(tz))


@router.get("/audit", response_class=HTMLResponse)
async def trail(request: Request, actor: str = "", action_: str = "", target: str = "", outcome: str = "",
                since: str = "", until: str = "", cursor: str = "",
                session: Session = Viewer) -> HTMLResponse:
    action_text = request.query_params.get("action", action_)
    if outcome and outcome not in audit.OUTCOMES:
        raise ConsoleRefusal(400, f"An outcome is one of {', '.join(audit.OUTCOMES)}.")
    if cursor and row_number(cursor) is None:
        raise ConsoleRefusal(400, "A cursor is the next page's link: start again from the first page.")
    tz = timezone_of(request)
    filters = {"actor": actor.strip(), "action": action_text.strip(), "target": target.strip(),
               "outcome": outcome, "since": since.strip(), "until": until.strip()}
    page = await api_state(request).pool.run(lambda conn: audit.list_rows(
        conn, actor=_text(actor, "actor"), action=_text(action_text, "action"),
        target=_text(target, "target"), outcome=outcome or None, since=_when(since, "from", tz),
        until=_when(until, "until", tz), limit=PAGE, cursor=cursor or None))
    query = urlencode({k: v for k, v in filters.items() if v})
    return render(request, "audit.html", rows=page.rows, next_cursor=page.next_cursor, query=query,
                  filters=filters, outcomes=audit.OUTCOMES, result=None)


@router.post("/audit/verify", response_class=HTMLResponse)
async def verify(request: Request, acting: Acting = VERIFY) -> HTMLResponse:
    pool = api_state(request).pool
    checked, broken = await pool.run(audit.verify)
    head_id, head_hash = await pool.run(audit.head)
    result = {"ok": broken is None, "checked": checked, "head_id": head_id, "head_hash": head_hash,
              "broken_id": broken.id if broken else None, "reason": broken.reason if broken else ""}
    await acting.record(target="audit_log", after={"ok": broken is None, "rows": checked,
                                                   **({"broken_id": broken.id} if broken else {})})
    if request.headers.get("hx-request"):
        return render(request, "_audit_verify.html", result=result)
    return render(request, "audit_verify.html", result=result)
