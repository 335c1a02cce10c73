"""Links, routes and the store-and-forward queue: read-only pages over switch.admin's functions (the
ones `payswitch switch link|route|saf list|show` use).

A link shows whether it is enabled, whether a running switch has it up (asked on the switch's /metrics,
as `switch link show` does) and its keys' check values (computed by the HSM from the keys under the
LMK), never a key. The SAF queue shows its depth and oldest entry per link and the waiting advices,
with only their identifying fields (a card number, were one there, masked). There is no SAF action: the
switch has no admin function to retry now (it retries every saf_retry_s by itself).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any
from urllib.parse import urlencode

import trio
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from console import forms
from console.auth import ConsoleRefusal, Viewer, api_state
from console.operators import Session
from console.web import render
from ops.digits import row_number
from ops.logs import mask_pan
from switch import admin
from switch.admin import SwitchAdminError

router = APIRouter()
NAV = [("Links", "/console/links", "viewer")]

PAGE = 50
SAF_SCAN = 1000  # rows per read while counting the queue
SAF_SCAN_MAX = 100_000  # the depth is counted up to this many waiting advices
SHOWN_FIELDS = ("0", "2", "3", "4", "7", "11", "32", "37", "41", "42", "90")


async def _db(request: Request, fn: Any, *args: Any, **kw: Any) -> Any:
    return await forms.run(request, fn, *args, refused=(SwitchAdminError,), **kw)


async def _running(request: Request, name: str) -> dict[str, Any]:
    sw = api_state(request).config.switch
    return await trio.to_thread.run_sync(admin.running_link, sw.metrics_listen, sw.metrics_port, name, 0.5)


@router.get("/links", response_class=HTMLResponse)
async def links(request: Request, session: Session = Viewer, direction: str = "", state: str = "",
                cursor: str = "") -> HTMLResponse:
    if direction not in ("", "in", "out") or state not in ("", "enabled", "disabled"):
        raise ConsoleRefusal(400, "direction: in or out; state: enabled or disabled")
    enabled = None if not state else state == "enabled"
    rows = await _db(request, admin.list_links, direction=direction or None, enabled=enabled,
                     limit=PAGE + 1, after=cursor or None)
    more = len(rows) > PAGE
    rows = rows[:PAGE]
    for r in rows:
        r["mac_state"] = admin.mac_state(r)
        r["running"] = await _running(request, r["name"])
    query = urlencode({k: v for k, v in (("direction", direction), ("state", state)) if v})
    return render(request, "links.html", links=rows, direction=direction, state=state,
                  next_cursor=rows[-1]["name"] if more else None, query=query)


@router.get("/links/{name}", response_class=HTMLResponse)
async def link(request: Request, name: str, session: Session = Viewer) -> HTMLResponse:
    detail = await _db(request, admin.link_detail, name)
    keys = await _db(request, admin.link_keys, name)
    why = ""
    check_values: dict[str, str] = {}
    if keys:
        try:
            check_values = await admin.check_values(api_state(request).hsm, keys)
        except Exception as exc:  # the HSM away: the page still shows the rest
            why = f"HSM not reachable ({type(exc).__name__})"
    else:
        why = "no keys"
    detail["mac_state"] = admin.mac_state(detail)
    return render(request, "link.html", link=detail, running=await _running(request, name),
                  check_values={k: v[:6] for k, v in sorted(check_values.items())}, why=why,
                  route_label=admin.route_label)


@router.get("/routes", response_class=HTMLResponse)
async def routes(request: Request, session: Session = Viewer, link: str = "", bin: str = "",
                 cursor: str = "") -> HTMLResponse:
    if cursor and row_number(cursor) is None:
        raise ConsoleRefusal(400, "cursor: a route id")
    rows = await _db(request, admin.list_routes, link=link or None, bin_prefix=bin or None, limit=PAGE + 1,
                     after=int(cursor) if cursor and not bin else None)
    more = len(rows) > PAGE and not bin
    rows = rows[:PAGE]
    query = urlencode({k: v for k, v in (("link", link), ("bin", bin)) if v})
    return render(request, "routes.html", routes=rows, link=link, bin=bin, query=query,
                  next_cursor=str(rows[-1]["id"]) if more else None)


def _shown(message: dict[str, Any]) -> dict[str, str]:
    out = {}
    for k in SHOWN_FIELDS:
        if k in message:
            v = str(message[k])
            out[k] = mask_pan(v) if k == "2" else v
    return out


async def saf_summary(request: Request) -> tuple[dict[str, dict[str, Any]], bool]:
    """Depth and oldest waiting advice per link (counted up to SAF_SCAN_MAX; True when capped)."""
    per: dict[str, dict[str, Any]] = defaultdict(lambda: {"depth": 0, "oldest": None, "attempts": 0})
    after: int | None = None
    seen = 0
    while seen < SAF_SCAN_MAX:
        rows = await _db(request, admin.list_saf, limit=SAF_SCAN, after=after)
        for r in rows:
            s = per[r["link"]]
            s["depth"] += 1
            s["attempts"] = max(s["attempts"], r["attempts"])
            if s["oldest"] is None or r["created_at"] < s["oldest"]:
                s["oldest"] = r["created_at"]
        seen += len(rows)
        if len(rows) < SAF_SCAN:
            return dict(per), False
        after = rows[-1]["id"]
    return dict(per), True


@router.get("/saf", response_class=HTMLResponse)
async def saf(request: Request, session: Session = Viewer, link: str = "", show: str = "waiting",
              cursor: str = "") -> HTMLResponse:
    if cursor and row_number(cursor) is None:
        raise ConsoleRefusal(400, "cursor: an advice id")
    if show not in ("waiting", "all"):
        raise ConsoleRefusal(400, "show: waiting or all")
    summary, capped = await saf_summary(request)
    entries: list[dict[str, Any]] = []
    after = int(cursor) if cursor else None
    more = False
    # filter by link while reading pages (list_saf has no link filter), at most a few reads
    for _ in range(20):
        rows = await _db(request, admin.list_saf, show_all=show == "all", limit=PAGE + 1, after=after)
        for r in rows:
            if not link or r["link"] == link:
                r["shown"] = _shown(r["message"])
                entries.append(r)
        if len(entries) > PAGE or len(rows) <= PAGE:
            break
        after = rows[-1]["id"]
    if len(entries) > PAGE:
        more, entries = True, entries[:PAGE]
    query = urlencode({k: v for k, v in (("link", link), ("show", show)) if v})
    return render(request, "saf.html", summary=sorted(summary.items()), capped=capped, entries=entries,
                  link=link, show=show, query=query,
                  next_cursor=str(entries[-1]["id"]) if more and entries else None,
                  total=sum(s["depth"] for s in summary.values()))
