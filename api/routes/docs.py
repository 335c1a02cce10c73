"""The API docs page, offline: ``/docs`` is Swagger UI from assets vendored in the package
(``api/static/swagger-ui/``, from the npm registry's ``swagger-ui-dist``; ``VERSION`` names the version
and the tarball's integrity), never a CDN. ``/static/...`` serves those assets with long cache headers.

The page reads the document from ``/v1/openapi.json``; the validator badge (which would send the
document to validator.swagger.io) is off.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.routing import APIRoute

from api import problems
from api.problems import Problem

STATIC = Path(__file__).resolve().parent.parent / "static"
CACHE_CONTROL = "public, max-age=604800, immutable"
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".png": "image/png", ".html": "text/html; charset=utf-8", "": "text/plain; charset=utf-8"}

router = APIRouter(include_in_schema=False)

PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>payswitch API</title>
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <link rel="stylesheet" href="/static/swagger-ui/swagger-ui.css">
  <link rel="icon" type="image/png" href="/static/swagger-ui/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/static/swagger-ui/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "/v1/openapi.json",
      dom_id: "#swagger-ui",
      validatorUrl: null,
      deepLinking: true,
      persistAuthorization: false,
      tryItOutEnabled: false,
      presets: [SwaggerUIBundle.presets.apis],
      layout: "BaseLayout"
    });
  </script>
</body>
</html>
"""


@router.get("/docs")
async def docs_page() -> HTMLResponse:
    return HTMLResponse(PAGE, headers={"Cache-Control": "no-cache"})


@router.get("/static/{path:path}")
async def static_file(path: str) -> FileResponse:
    """A vendored asset; nothing outside api/static (no ``..``, no hidden files)."""
    target = (STATIC / path).resolve()
    if (not target.is_relative_to(STATIC) or not target.is_file()
            or any(part.startswith(".") for part in target.relative_to(STATIC).parts)):
        raise Problem("not-found", "no such file")
    media = _TYPES.get(target.suffix, "application/octet-stream")
    return FileResponse(target, media_type=media, headers={"Cache-Control": CACHE_CONTROL})


# -- the OpenAPI document ---------------------------------------------------------------------------
# What FastAPI cannot see from the routes is added to its document here, for every operation alike:
# the bearer key (routes ask for it through api.auth.require, which reads the header itself), the
# Idempotency-Key header every POST needs (api/envelope.py), and the problem+json errors.

IDEMPOTENCY_HEADER: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "description": "Any unique string (a UUID): the same key and body return the first answer again "
                   "(`Idempotent-Replayed: true`); the same key with another body is refused (422 "
                   "`idempotency-key-reused`). Kept `api.idempotency_hours` (24 h), per client.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7e]+$"},
}
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details. `type` is stable per kind of error "
                   f"(`{problems.TYPE_BASE}<slug>`): branch on it, never on `detail`.",
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string", "description": "the kind of error",
                 "examples": [problems.TYPE_BASE + "not-found"]},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string", "description": "what happened in this case"},
        "instance": {"type": "string", "description": "the request's path"},
        "errors": {"type": "array", "description": "validation errors: the field and the rule",
                   "items": {"type": "object", "required": ["field", "message"],
                             "properties": {"field": {"type": "string"}, "message": {"type": "string"}}}},
    },
    "additionalProperties": True,
}
_REF = {"$ref": "#/components/schemas/Problem"}


def _slugs(status: int) -> list[str]:
    return [slug for slug, (code, _) in problems.PROBLEM_TYPES.items() if code == status]


def _problem_response(status: int, description: str | None = None) -> dict[str, Any]:
    slugs = _slugs(status)
    text = description or (", ".join(f"`{s}`" for s in slugs) if slugs else "an error")
    return {"description": text, "content": {problems.MEDIA_TYPE: {"schema": dict(_REF)}}}


def _plain_error(resp: dict[str, Any]) -> bool:
    """A declared error response without a body of its own, or FastAPI's HTTPValidationError."""
    content = resp.get("content") or {}
    refs = [media.get("schema", {}).get("$ref", "") for media in content.values()]
    return not content or all(r.endswith("/HTTPValidationError") for r in refs)


def _route_scopes(route: APIRoute) -> tuple[bool, tuple[str, ...]]:
    """Whether the route authenticates (an api.auth.require dependency) and the scopes it needs."""
    found = False
    scopes: list[str] = []
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        call = dep.call
        if call is not None and getattr(call, "__qualname__", "") == "require.<locals>.dependency":
            found = True
            scopes.extend(inspect.getclosurevars(call).nonlocals.get("scopes", ()))
        stack.extend(dep.dependencies)
    return found, tuple(sorted(set(scopes)))


def _api_routes(routes: Any, prefix: str) -> Iterator[tuple[str, APIRoute]]:
    """Every APIRoute with its full path, routers included by ``include_router`` too (FastAPI >= 0.16x
    keeps an included router as one route of its own)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path_format, route
        elif (inner := getattr(route, "original_router", None)) is not None:
            context = getattr(route, "include_context", None)
            yield from _api_routes(inner.routes, prefix + str(getattr(context, "prefix", "") or ""))


def document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document for ``app`` with the security scheme, the Idempotency-Key header and the
    problem responses added to every operation; made once per application."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, openapi_version=app.openapi_version,
                      description=app.description, routes=app.routes)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    components["securitySchemes"] = {"bearer": {
        "type": "http", "scheme": "bearer", "bearerFormat": "psk_<prefix>_<secret>",
        "description": "An API key from `payswitch api client add NAME --scopes ...`."}}
    auth = {(method.lower(), path): _route_scopes(route)
            for path, route in _api_routes(app.routes, "") for method in route.methods or ()}
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            authenticated, scopes = auth.get((method, path), (False, ()))
            responses: dict[str, Any] = op.setdefault("responses", {})
            if not path.startswith("/v1/"):
                continue  # /healthz, /readyz: their own bodies
            for code, resp in list(responses.items()):
                if code[:1] in ("4", "5") and _plain_error(resp):
                    # FastAPI's own 422 (HTTPValidationError) and any error a route declared: the problem.
                    responses[code] = {"description": resp.get("description") or "error",
                                       "content": {problems.MEDIA_TYPE: {"schema": dict(_REF)}}}
            wanted: list[int] = []
            if authenticated:
                op["security"] = [{"bearer": []}]
                wanted += [401, 403, 429]
                if scopes:
                    note = "Scope: " + ", ".join(f"`{s}`" for s in scopes) + "."
                    op["description"] = (op.get("description", "") + "\n\n" + note).strip()
                    op["x-scopes"] = list(scopes)
            if method == "post" and path.startswith("/v1/"):
                params = op.setdefault("parameters", [])
                if not any(p.get("in") == "header" and p.get("name", "").lower() == "idempotency-key"
                           for p in params):
                    params.insert(0, dict(IDEMPOTENCY_HEADER))
                wanted += [400, 409, 422]
            if method in ("post", "put", "patch"):
                wanted += [413, 415]  # api.max_body_bytes; a body that is not JSON
            if op.get("parameters") or op.get("requestBody"):
                wanted += [422]
            if "{" in path:
                wanted += [404]
            for code_int in sorted(set(wanted)):
                responses.setdefault(str(code_int), _problem_response(code_int))
            if "429" in responses:
                responses["429"].setdefault("headers", {})["Retry-After"] = {
                    "description": "seconds to wait", "schema": {"type": "integer", "minimum": 0}}
            responses.setdefault("default", _problem_response(500, "any other error (5xx: "
                                                              "`internal`, `switch-unavailable`, "
                                                              "`unavailable`)"))
    doc["x-problem-types"] = {slug: {"status": code, "title": title, "type": problems.TYPE_BASE + slug}
                              for slug, (code, title) in problems.PROBLEM_TYPES.items()}
    app.openapi_schema = doc
    return doc


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` (and so ``/v1/openapi.json``) answer :func:`document`."""
    app.openapi = lambda: document(app)  # type: ignore[method-assign]
