"""The FastAPI application: routers, problem handlers, the request envelope, health and docs.

``create_app(state)`` builds it for ``api serve``; ``create_app(None)`` builds the same routes without a
running system, which is how the committed OpenAPI document is made (``payswitch api openapi``,
api/openapi.json; tests/api/test_openapi.py fails when they differ).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from api import problems
from api.state import ApiState

TITLE = "payswitch API"
DESCRIPTION = """HTTP/JSON for apps, kiosks, web shops and a programme's back office.

Authenticate with `Authorization: Bearer psk_...` (`payswitch api client add`). Every POST takes an
`Idempotency-Key` header. Money is integer minor units plus currency; times are RFC 3339 with the
programme's offset; errors are RFC 9457 `application/problem+json` with a stable `type`.
See api/README.md for webhooks and their signatures."""

# Routers in the order the document lists them: module path -> attribute. A module not yet written is
# skipped, so the service runs while resources are added one by one.
ROUTERS: tuple[str, ...] = (
    "api.routes.health",
    "api.routes.cardholders",
    "api.routes.cards",
    "api.routes.codes",
    "api.routes.payments",
    "api.routes.loads",
    "api.routes.merchants",
    "api.routes.webhooks",
    "api.routes.docs",
)


def create_app(state: ApiState | None) -> FastAPI:
    app = FastAPI(
        title=TITLE,
        description=DESCRIPTION,
        version="1",
        docs_url=None,  # served from vendored assets by api.routes.docs (no CDN)
        redoc_url=None,
        openapi_url="/v1/openapi.json",
        default_response_class=JSONResponse,
    )
    app.state.api = state
    problems.install(app)
    envelope = importlib.util.find_spec("api.envelope")
    if envelope is not None:
        importlib.import_module("api.envelope").install(app)
    for name in ROUTERS:
        if importlib.util.find_spec(name) is None:
            continue
        module: Any = importlib.import_module(name)
        app.include_router(module.router)
    from api.routes.docs import install_openapi

    install_openapi(app)  # the bearer scheme, Idempotency-Key and problem+json on every operation
    if state is not None and importlib.util.find_spec("console.app") is not None:
        importlib.import_module("console.app").mount(app)  # the operators' console at /console
    return app
