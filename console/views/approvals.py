"""Four eyes in the console: the queue of requests, a request form per kind, approve and reject.

host.approvals does everything (and writes the audit rows, with both names); this only speaks HTTP.
Other pages ask for a change by posting a plain form to ``POST /console/approvals/request`` (action
``approval.request``, least role operator) with ``kind`` (load, unload, limits, tier, forfeit,
merchant_fee), ``target`` (card:<id>, cardholder:<id>, merchant:<DE42>), ``reason`` and the kind's
fields: ``amount`` in yuan (load, unload; empty unloads all available) and ``to`` (bank|desk, unload),
``limit_key`` + ``limit_value`` or ``clear`` (limits; an amount limit's value in yuan, a count's a
number), ``decision`` + ``to_level`` (tier), ``fee_rate_bps`` (merchant_fee). The answer is a 303 to the
request's page. ``request_url(kind, target)`` is the link to a prefilled request form.
Approve and reject (``approval.approve`` / ``approval.reject``) need a supervisor; the requester is
refused by host.approvals (and the refusal recorded).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from console.auth import Acting, ConsoleRefusal, Viewer, action, api_state
from console.operators import Session
from console.web import PREFIX, render
from host import approvals, controls, kyc
from host.catalog import CatalogError
from ops.digits import is_digits
from ops.money import MoneyError, parse_money

router = APIRouter()
NAV = [("Approvals", "/console/approvals", "operator")]

REQUEST = action("approval.request", "operator")
APPROVE = action("approval.approve", "supervisor")
REJECT = action("approval.reject", "supervisor")


def request_url(kind: str, target: str, **fields: str) -> str:
    """The console link to a request form for ``kind`` on ``target``, fields prefilled."""
    return f"{PREFIX}/approvals/new?" + urlencode({"kind": kind, "target": target, **fields})


def _choice(value: str | None, allowed: tuple[str, ...]) -> str | None:
    return value if value in allowed else None


@router.get("/approvals", response_class=HTMLResponse)
async def queue(request: Request, session: Session = Viewer) -> HTMLResponse:
    q = request.query_params
    state = _choice(q.get("state", "requested"), approvals.STATES)
    kind = _choice(q.get("kind"), approvals.KINDS)
    target = (q.get("target") or "").strip() or None
    cursor = q.get("cursor") or None
    pool = api_state(request).pool
    try:
        rows, next_cursor = await pool.run(
            lambda conn: approvals.list_(conn, state, cursor, 25, kind=kind, target=target))
    except approvals.ApprovalError as exc:
        raise ConsoleRefusal(400, str(exc)) from None
    query = urlencode({k: v for k, v in (("state", state or "all"), ("kind", kind or ""),
                                         ("target", target or "")) if v})
    for r in rows:
        r["what"] = approvals.describe(r)
    return render(request, "approvals.html", rows=rows, next_cursor=next_cursor, query=query,
                  state=state, kind=kind, target=target or "", states=approvals.STATES,
                  kinds=approvals.KINDS, labels=approvals.LABELS)


@router.get("/approvals/new", response_class=HTMLResponse)
async def new(request: Request, session: Session = Viewer) -> HTMLResponse:
    return _form_page(request, dict(request.query_params))


def _form_page(request: Request, values: dict[str, str], status: int = 200, error: str = "") -> HTMLResponse:
    """The request form, prefilled from ``values`` (a query or the form sent back with its error)."""
    return render(request, "approvals_new.html", status=status,
                  kind=_choice(values.get("kind"), approvals.KINDS) or "load",
                  target=values.get("target", ""),
                  amount=values.get("amount", ""), reason=values.get("reason", ""), kinds=approvals.KINDS,
                  labels=approvals.LABELS, limit_keys=controls.CARD_KEYS, limit_labels=controls.LABEL,
                  levels=kyc.LEVELS, decisions=kyc.DECISIONS, error=error,
                  threshold=api_state(request).config.console.four_eyes_minor)


def _params(kind: str, form: dict[str, str]) -> dict[str, Any]:
    """The request's params from the form (money typed in yuan)."""
    try:
        if kind in ("load", "unload"):
            amount = form.get("amount", "").strip()
            if kind == "load" and not amount:
                raise approvals.ApprovalError("amount: how much to load, in yuan")
            params: dict[str, Any] = {"amount": parse_money(amount) if amount else None}
            if kind == "unload":
                params["to"] = _choice(form.get("to"), ("bank", "desk"))
            return params
        if kind == "limits":
            key, value = form.get("limit_key", ""), form.get("limit_value", "").strip()
            clear = form.get("clear")
            limits: dict[str, int] = {}
            if key and value:
                if key not in controls.CARD_KEYS:
                    raise approvals.ApprovalError(f"limit {key!r}: one of {', '.join(controls.CARD_KEYS)}")
                if key.endswith("count"):
                    if not is_digits(value):
                        raise approvals.ApprovalError(f"{controls.LABEL[key]}: a whole number")
                    limits[key] = int(value)
                else:
                    limits[key] = parse_money(value, allow_zero=True)
            return {"limits": limits, "clear": [clear] if clear else []}
        if kind == "tier":
            return {"decision": form.get("decision") or None, "to_level": form.get("to_level") or None}
        if kind == "merchant_fee":
            bps = form.get("fee_rate_bps", "").strip()
            if not is_digits(bps):
                raise approvals.ApprovalError("fee_rate_bps: a whole number of basis points, 0 to 10000")
            return {"fee_rate_bps": int(bps)}
        return {}
    except MoneyError as exc:
        raise approvals.ApprovalError(f"amount: {exc}") from None


@router.post("/approvals/request")
async def make_request(request: Request, acting: Acting = REQUEST) -> Response:
    form = acting.form
    kind = form.get("kind", "")
    op = acting.session.operator
    try:
        if kind not in approvals.KINDS:
            raise approvals.ApprovalError(f"kind {kind!r}: one of {', '.join(approvals.KINDS)}")
        params = _params(kind, form)
        row = await acting.pool.run(approvals.request, kind, form.get("target", "").strip(), params, op.name,
                                    op.role, form.get("reason", ""), acting.source)
    except (CatalogError, kyc.KycError) as exc:
        return _form_page(request, form, 400, str(exc))
    return RedirectResponse(f"{PREFIX}/approvals/{row['id']}", status_code=303)


@router.get("/approvals/{approval_id}", response_class=HTMLResponse)
async def show(request: Request, approval_id: int, session: Session = Viewer) -> HTMLResponse:
    try:
        row = await api_state(request).pool.run(approvals.show, approval_id)
    except approvals.NoApproval as exc:
        raise ConsoleRefusal(404, str(exc)) from None
    row["what"] = approvals.describe(row)
    may_decide = (row["state"] == "requested" and session.operator.role in ("supervisor", "admin")
                  and session.operator.name != row["requested_by"])
    return render(request, "approval.html", row=row, labels=approvals.LABELS, may_decide=may_decide)


@router.post("/approvals/{approval_id}/approve")
async def approve(request: Request, approval_id: int, acting: Acting = APPROVE) -> Response:
    op = acting.session.operator
    try:
        await approvals.approve(acting.pool, api_state(request).config, approval_id, op.name, op.role,
                                acting.source, acting.form.get("reason", ""))
    except approvals.NoApproval as exc:
        raise ConsoleRefusal(404, str(exc)) from None
    except approvals.ApprovalError as exc:  # the requester, or another approver at work: recorded there
        raise ConsoleRefusal(403, str(exc)) from None
    return RedirectResponse(f"{PREFIX}/approvals/{approval_id}", status_code=303)


@router.post("/approvals/{approval_id}/reject")
async def reject(request: Request, approval_id: int, acting: Acting = REJECT) -> Response:
    op = acting.session.operator
    try:
        await acting.pool.run(approvals.reject, approval_id, op.name, op.role, acting.form.get("reason", ""),
                              acting.source)
    except approvals.NoApproval as exc:
        raise ConsoleRefusal(404, str(exc)) from None
    except approvals.ApprovalError as exc:
        raise ConsoleRefusal(400, str(exc)) from None
    return RedirectResponse(f"{PREFIX}/approvals/{approval_id}", status_code=303)
