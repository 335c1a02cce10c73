"""The reports operators ask for, each a page and a CSV download (``?format=csv``): the day's
transactions by merchant and store, the float per product with its movement, dormant cards, cards
nearing expiry. The queries are host.reports'; this module parses the filters and formats.

Dates are business dates (``clearing.cutover`` in ``clearing.timezone``). In a CSV, money is yuan with
two decimals and no thousands separator (``1234.50``) beside a currency column, times are local with
their offset; the card lists are whole (up to CSV_MAX rows), the pages go one keyset page at a time.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from console import forms
from console.auth import ConsoleRefusal, Viewer, api_state
from console.operators import Session
from console.web import render
from host import reports
from host.business_day import business_today
from host.catalog import CatalogError
from ops.digits import is_digits
from ops.localtime import format_local
from ops.money import currency_alpha, format_amount

router = APIRouter()
NAV = [("Reports", "/console/reports", "viewer")]

PAGE = 50
CSV_MAX = 100_000


async def _db(request: Request, fn: Any, *args: Any, **kw: Any) -> Any:
    return await forms.run(request, fn, *args, refused=(CatalogError,), **kw)


def _date(text: str, name: str, default: dt.date) -> dt.date:
    if not text:
        return default
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ConsoleRefusal(400, f"{name}: a date YYYY-MM-DD") from None


def _int(text: str, name: str, default: int) -> int:
    if not text:
        return default
    if not is_digits(text):
        raise ConsoleRefusal(400, f"{name}: a whole number")
    return int(text)


def _clearing(request: Request) -> tuple[str, str]:
    c = api_state(request).config.clearing
    return str(c.cutover), str(c.timezone)


def _today(request: Request) -> dt.date:
    return business_today(api_state(request).config)


def amount(minor: int, currency: str) -> str:
    """A CSV money cell: ``1234.50`` (the currency is its own column)."""
    return format_amount(int(minor), currency).replace(",", "")


def _csv(request: Request, name: str, header: list[str], rows: list[list[Any]]) -> Response:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(header)
    w.writerows(rows)
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _local(request: Request) -> Callable[[dt.datetime | None], str]:
    _, tz = _clearing(request)
    return lambda instant: format_local(instant, tz)


@router.get("/reports", response_class=HTMLResponse)
async def index(request: Request, session: Session = Viewer) -> HTMLResponse:
    return render(request, "reports.html", today=_today(request))


# -- daily -----------------------------------------------------------------------------------------------
DAILY_COLUMNS = ["business_date", "merchant_id", "merchant_name", "store", "store_name", "currency", "sales",
                 "sales_amount", "refunds", "refunds_amount", "net_amount", "voids_reversals", "declines",
                 "requests", "first_at", "last_at"]


@router.get("/reports/daily", response_model=None)
async def daily(request: Request, session: Session = Viewer, date: str = "", merchant: str = "",
                format: str = "") -> Response:
    day = _date(date, "date", _today(request))
    cutover, tz = _clearing(request)
    w, rows = await _db(request, reports.daily_transactions, day, cutover, tz, merchant=merchant or None)
    if format == "csv":
        loc = _local(request)
        return _csv(request, f"daily_{day}.csv", DAILY_COLUMNS, [
            [day.isoformat(), r["merchant_id"], r["merchant_name"], r["store"], r["store_name"],
             currency_alpha(r["currency"]), r["sales"], amount(r["sales_amount"], r["currency"]),
             r["refunds"],
             amount(r["refunds_amount"], r["currency"]), amount(r["net_amount"], r["currency"]), r["undone"],
             r["declines"], r["requests"], loc(r["first_at"]), loc(r["last_at"])] for r in rows])
    totals: dict[str, dict[str, int]] = {}
    for r in rows:
        t = totals.setdefault(r["currency"], {"sales": 0, "sales_amount": 0, "refunds_amount": 0,
                                              "net_amount": 0, "declines": 0, "requests": 0})
        for k in t:
            t[k] += int(r[k])
    query = urlencode({k: v for k, v in (("date", day.isoformat()), ("merchant", merchant)) if v})
    return render(request, "report_daily.html", day=day, window=w, rows=rows, merchant=merchant,
                  totals=sorted(totals.items()), query=query)


# -- float ----------------------------------------------------------------------------------------------
FLOAT_COLUMNS = ["product", "name", "currency", "from", "to", "opening", "credits", "debits", "net",
                 "closing", "balance_now", "held_now", "cards", "active_cards"]


@router.get("/reports/float", response_model=None)
async def float_report(request: Request, session: Session = Viewer, since: str = "", until: str = "",
                       product: str = "", format: str = "") -> Response:
    today = _today(request)
    last = _date(until, "until", today)
    first = _date(since, "since", last - dt.timedelta(days=6))
    cutover, tz = _clearing(request)
    w, rows = await _db(request, reports.float_by_product, first, last, cutover, tz, product=product or None)
    if format == "csv":
        return _csv(request, f"float_{first}_{last}.csv", FLOAT_COLUMNS, [
            [r["code"], r["name"], currency_alpha(r["currency"]), first.isoformat(), last.isoformat(),
             *(amount(r[k], r["currency"]) for k in ("opening", "credits", "debits", "net", "closing",
                                                      "balance_now", "held_now")),
             r["cards"], r["active_cards"]] for r in rows])
    query = urlencode({k: v for k, v in (("since", first.isoformat()), ("until", last.isoformat()),
                                         ("product", product)) if v})
    return render(request, "report_float.html", first=first, last=last, window=w, rows=rows, product=product,
                  query=query)


# -- dormant and expiring cards ------------------------------------------------------------------------------
DORMANT_COLUMNS = ["card_id", "pan_masked", "label", "product", "state", "currency", "balance", "last_used",
                   "issued_at"]
EXPIRING_COLUMNS = ["card_id", "pan_masked", "label", "product", "state", "expiry", "expires_on", "currency",
                    "balance"]


async def _all(request: Request, fn: Any, *args: Any, **kw: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    after: str | None = None
    while len(rows) < CSV_MAX:
        page = await _db(request, fn, *args, after=after, limit=1000, **kw)
        rows += page.rows
        if page.next is None:
            break
        after = page.next
    return rows[:CSV_MAX]


@router.get("/reports/dormant", response_model=None)
async def dormant(request: Request, session: Session = Viewer, days: str = "", product: str = "",
                  cursor: str = "", format: str = "") -> Response:
    n = _int(days, "days", 90)
    if format == "csv":
        loc = _local(request)
        rows = await _all(request, reports.dormant_cards, n, product=product or None)
        return _csv(request, f"dormant_{n}d.csv", DORMANT_COLUMNS, [
            [r["id"], r["pan_masked"], r["label"] or "", r["product"], r["state"],
             currency_alpha(r["currency"]), amount(r["balance"], r["currency"]), loc(r["last_used"]),
             loc(r["issued_at"])] for r in rows])
    page = await _db(request, reports.dormant_cards, n, product=product or None, after=cursor or None,
                     limit=PAGE)
    query = urlencode({k: v for k, v in (("days", str(n)), ("product", product)) if v})
    return render(request, "report_dormant.html", page=page, days=n, product=product, query=query,
                  next_cursor=page.next)


@router.get("/reports/expiring", response_model=None)
async def expiring(request: Request, session: Session = Viewer, days: str = "", product: str = "",
                   cursor: str = "", format: str = "") -> Response:
    n = _int(days, "days", 30)
    today = _today(request)
    if format == "csv":
        rows = await _all(request, reports.expiring_cards, n, today, product=product or None)
        return _csv(request, f"expiring_{n}d.csv", EXPIRING_COLUMNS, [
            [r["id"], r["pan_masked"], r["label"] or "", r["product"], r["state"], r["expiry"],
             r["expires_on"].isoformat(), currency_alpha(r["currency"]), amount(r["balance"], r["currency"])]
            for r in rows])
    page = await _db(request, reports.expiring_cards, n, today, product=product or None, after=cursor or None,
                     limit=PAGE)
    query = urlencode({k: v for k, v in (("days", str(n)), ("product", product)) if v})
    return render(request, "report_expiring.html", page=page, days=n, today=today, product=product,
                  query=query, next_cursor=page.next)
