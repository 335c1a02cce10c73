"""Liveness and readiness: ``/healthz`` answers while the process runs; ``/readyz`` only when the
database answers and the link to the switch is signed on (a load balancer sends payments elsewhere
otherwise)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.state import State

router = APIRouter(tags=["health"])


async def _db_ok(conn: Any) -> bool:
    return bool(await conn.fetchval("SELECT true"))


@router.get("/healthz", summary="The process runs")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="The database answers and the switch link is up",
            responses={503: {"description": "not ready"}})
async def readyz(state: State) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        checks["database"] = "ok" if await state.pool.run(_db_ok) else "down"
    except Exception:  # any failure to answer is "not ready", never a 500
        checks["database"] = "down"
    link = state.link
    checks["switch_link"] = "ok" if link is not None and link.up else "down"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks},
                        status_code=200 if ready else 503)
