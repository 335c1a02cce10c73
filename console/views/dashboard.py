"""The dashboard (console home): requests per minute by response code over the last hour, the host's
authorization latency, links up or down, the SAF queue's depth, the outstanding float per product and
today's top merchants.

The panels are one partial (``_dashboard_panels.html``) that the page includes and htmx fetches again
every 10 s from ``/console/dashboard/panels``; without JavaScript the page shows them as they were when
it was loaded. Numbers come from host.stats (requests, merchants, float; latency from the host's
/metrics) and switch.admin (links, their state from the running switch's /metrics, the SAF queue).
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import anyio.to_thread
import asyncpg
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from console import charts
from console.auth import Viewer, api_state
from console.operators import Session
from console.web import render, timezone_of
from host import stats
from ops.money import format_money
from switch import admin as switch_admin

router = APIRouter()
NAV = [("Dashboard", "/console/", "viewer")]

SAF_COUNTED = 1000  # the SAF depth is counted up to this many (more is shown as "1000+")


def _links_state(metrics_address: str, metrics_port: int, links: list[dict[str, Any]]
                 ) -> list[dict[str, Any]]:
    out = []
    for link in links:
        run = switch_admin.running_link(metrics_address, metrics_port, link["name"], timeout=0.5)
        if run.get("running") is not True:
            shown, why = "unknown", str(run.get("why", ""))
        elif run.get("up") is None:
            shown, why = "unknown", "the running switch does not report this link"
        else:
            shown, why = ("up" if run["up"] else "down"), ""
        if not link.get("enabled", True):
            shown, why = "disabled", ""
        out.append({**link, "status": shown, "why": why, "connections": run.get("connections")})
        if run.get("running") is False:  # no switch answers: do not wait on it for every link
            for rest in links[len(out):]:
                out.append({**rest, "status": "unknown" if rest.get("enabled", True) else "disabled",
                            "why": str(run.get("why", "")), "connections": None})
            break
    return out


async def panels(request: Request) -> dict[str, Any]:
    """Everything the panels show."""
    state = api_state(request)
    config = state.config
    zone = ZoneInfo(timezone_of(request))
    now = dt.datetime.now(dt.UTC)
    day_start = now.astimezone(zone).replace(hour=0, minute=0, second=0, microsecond=0)

    pm = await state.pool.run(stats.per_minute, 60)
    slots = [m.astimezone(zone).strftime("%H:%M") for m in pm.minutes]
    approved, declined = sum(pm.approved), sum(pm.declined)
    top = await state.pool.run(stats.top_merchants, day_start, 10)
    floats = await state.pool.run(stats.float_by_product)
    latency = await stats.host_latency(config.host.metrics_listen, config.host.metrics_port)
    links: list[dict[str, Any]] = []
    saf: list[dict[str, Any]] = []
    switch_why = ""
    try:
        links = await state.pool.run(lambda conn: switch_admin.list_links(conn, limit=100))
        saf = await state.pool.run(lambda conn: switch_admin.list_saf(conn, limit=SAF_COUNTED + 1))
    except asyncpg.InsufficientPrivilegeError:
        switch_why = "the API's database role may not read the switch's tables"
    links = await anyio.to_thread.run_sync(_links_state, config.switch.metrics_listen,
                                           config.switch.metrics_port, links)
    saf_depth = "?" if switch_why else f"{SAF_COUNTED}+" if len(saf) > SAF_COUNTED else str(len(saf))

    return {
        "requests_chart": charts.stacked_bars(slots, pm.codes, title="requests per minute by response code"),
        "approved_line": charts.sparkline([float(v) for v in pm.approved], title="approved per minute",
                                          stroke=charts.APPROVED),
        "declined_line": charts.sparkline([float(v) for v in pm.declined], title="declined per minute",
                                          stroke=charts.PALETTE[0]),
        "codes": {code: sum(v) for code, v in pm.codes.items()},
        "approved": approved,
        "declined": declined,
        "latency": latency if isinstance(latency, stats.Latency) else None,
        "latency_why": latency if isinstance(latency, str) else "",
        "links": links,
        "switch_why": switch_why,
        "links_up": sum(1 for link in links if link["status"] == "up"),
        "saf_depth": saf_depth,
        "saf_oldest": saf[0]["created_at"] if saf else None,
        "floats": floats,
        "float_chart": charts.hbars([f"{f['product']} {f['name']}".strip() for f in floats],
                                    [f["balance"] for f in floats],
                                    [format_money(f["balance"], f["currency"]) for f in floats],
                                    title="outstanding float per product"),
        "top": top,
        "top_chart": charts.hbars([f"{t['merchant_id']} {t['name']}".strip() for t in top],
                                  [t["amount"] for t in top],
                                  [format_money(t["amount"], t["currency"]) for t in top],
                                  title="today's top merchants by approved amount"),
        "day_start": day_start,
        "refreshed": now,
    }


def ms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds == float("inf"):
        return "over 2 s"
    return f"{seconds * 1000:.1f} ms"


@router.get("/", response_class=HTMLResponse)
async def dashboard(request: Request, session: Session = Viewer) -> HTMLResponse:
    return render(request, "dashboard.html", ms=ms, **await panels(request))


@router.get("/dashboard/panels", response_class=HTMLResponse)
async def dashboard_panels(request: Request, session: Session = Viewer) -> HTMLResponse:
    """The panels alone (htmx refreshes them every 10 s)."""
    return render(request, "_dashboard_panels.html", ms=ms, **await panels(request))
