"""The dashboard (console home). Placeholder until the dashboard's own view is written."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from console.auth import Viewer
from console.operators import Session
from console.web import render

router = APIRouter()
NAV = [("Dashboard", "/console/", "viewer")]


@router.get("/", response_class=HTMLResponse)
async def dashboard(request: Request, session: Session = Viewer) -> HTMLResponse:
    return render(request, "dashboard.html")
