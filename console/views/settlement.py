"""Settlement runs and their reports: the runs (settlement.runs.list_runs, as `payswitch settlement run
list`), a run's page (show_run: payouts, cash-outs, output files) and downloads of the run's files.

A download is served from the run's folder under ``settlement.output_dir`` only when its name is one
of the files that run writes (settlement.reports.report_files): any other name, ``../`` included, is
404, so no path from the request ever reaches the file system.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse

from console import forms
from console.auth import ConsoleRefusal, Viewer, api_state
from console.operators import Session
from console.web import render
from ops.digits import row_number
from settlement.errors import SettlementError
from settlement.reports import report_files
from settlement.runs import RunDetail, list_runs, show_run

router = APIRouter()
NAV = [("Settlement", "/console/settlement", "viewer")]

PAGE = 50
TYPES = {".csv": "text/csv; charset=utf-8", ".html": "text/html; charset=utf-8"}


async def _db(request: Request, fn: Any, *args: Any, **kw: Any) -> Any:
    return await forms.run(request, fn, *args, refused=(SettlementError,), not_found="no settlement run",
                           **kw)


def _date(text: str, name: str) -> dt.date | None:
    if not text:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ConsoleRefusal(400, f"{name}: a date YYYY-MM-DD") from None


def _output_dir(request: Request) -> Path:
    return Path(api_state(request).config.settlement.output_dir)


@router.get("/settlement", response_class=HTMLResponse)
async def runs(request: Request, session: Session = Viewer, since: str = "", until: str = "",
               cursor: str = "") -> HTMLResponse:
    if cursor and row_number(cursor) is None:
        raise ConsoleRefusal(400, "cursor: a run id")
    page = await _db(request, list_runs, after=int(cursor) if cursor else None, limit=PAGE,
                     since=_date(since, "since"), until=_date(until, "until"))
    query = urlencode({k: v for k, v in (("since", since), ("until", until)) if v})
    return render(request, "settlement.html", page=page, since=since, until=until, query=query,
                  next_cursor=str(page.next) if page.next is not None else None)


def _files(d: RunDetail) -> list[str]:
    return report_files(d.run.run_id, [p.merchant_id for p in d.payouts], cash_outs=bool(d.cash_outs))


@router.get("/settlement/runs/{run_id}", response_class=HTMLResponse)
async def run(request: Request, run_id: int, session: Session = Viewer) -> HTMLResponse:
    d: RunDetail = await _db(request, show_run, run_id, _output_dir(request))
    files = [(name, (d.folder / name).is_file()) for name in _files(d)]
    return render(request, "settlement_run.html", d=d, files=files,
                  report_of={p.merchant_id: p.report.name for p in d.payouts})


@router.get("/settlement/runs/{run_id}/files/{name:path}")
async def download(request: Request, run_id: int, name: str, session: Session = Viewer) -> FileResponse:
    d: RunDetail = await _db(request, show_run, run_id, _output_dir(request))
    if name not in _files(d):
        raise ConsoleRefusal(404, f"run {run_id} has no file {name!r}")
    path = d.folder / name
    if not path.is_file():
        raise ConsoleRefusal(404, f"{name} of run {run_id} is not written yet (payswitch settlement report"
                                  f" {run_id} writes it)")
    media = TYPES.get(path.suffix, "application/octet-stream")
    disposition = "inline" if path.suffix == ".html" else "attachment"
    return FileResponse(path, media_type=media, filename=name, content_disposition_type=disposition)
