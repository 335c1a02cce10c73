"""RFC 9457 problem details: every error the API answers is ``application/problem+json``.

Raise :class:`Problem` (or one of the shortcuts) anywhere in a route; the handlers installed by
:func:`install` turn it, FastAPI's validation errors, HTTP errors and anything unexpected into a problem
document. ``type`` is stable per kind of error (``PROBLEM_TYPES``: documented in api/README.md and the
OpenAPI document), so a client branches on it, never on ``detail``'s words. A problem never holds a PAN,
ID number, phone, e-mail, PIN or key: ``detail`` is written by us, and validation errors name the field
and the rule, never echo the value.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ops.logs import get_logger

log = get_logger(__name__)

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://payswitch.dev/problems/"

# slug -> (HTTP status, title). The type URI is TYPE_BASE + slug.
PROBLEM_TYPES: dict[str, tuple[int, str]] = {
    "bad-request": (400, "The request is malformed"),
    "idempotency-key-missing": (400, "This request needs an Idempotency-Key header"),
    "unauthenticated": (401, "No valid API key"),
    "forbidden": (403, "The key may not do this"),
    "scope-missing": (403, "The key lacks the scope this needs"),
    "merchant-mismatch": (403, "A merchant-bound key pays only at its merchant"),
    "not-found": (404, "No such resource"),
    "method-not-allowed": (405, "Method not allowed"),
    "conflict": (409, "The resource is not in a state that allows this"),
    "idempotency-in-progress": (409, "A request with this Idempotency-Key is still being processed"),
    "payload-too-large": (413, "The request body is too large"),
    "unsupported-media-type": (415, "The body must be application/json"),
    "validation-error": (422, "The request is not valid"),
    "idempotency-key-reused": (422, "This Idempotency-Key was used with another request"),
    "declined": (402, "The payment was declined"),
    "rate-limited": (429, "Too many requests"),
    "internal": (500, "Internal error"),
    "switch-unavailable": (503, "The payment network cannot be reached now"),
    "unavailable": (503, "The service cannot answer now"),
}


class Problem(Exception):
    """An error answered as problem+json: ``slug`` picks type, status and title; ``detail`` says what
    happened in this case; ``extra`` adds members (``errors``, ``response_code``, ``reason``...)."""

    def __init__(
        self,
        slug: str,
        detail: str | None = None,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        if slug not in PROBLEM_TYPES:
            raise ValueError(f"unknown problem type {slug!r}")
        self.slug = slug
        self.status = status or PROBLEM_TYPES[slug][0]
        self.title = PROBLEM_TYPES[slug][1]
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra
        super().__init__(detail or self.title)

    def body(self, instance: str | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": TYPE_BASE + self.slug, "title": self.title, "status": self.status}
        if self.detail:
            doc["detail"] = self.detail
        if instance:
            doc["instance"] = instance
        doc.update(self.extra)
        return doc


def response(problem: Problem, instance: str | None = None) -> JSONResponse:
    return JSONResponse(problem.body(instance), status_code=problem.status, media_type=MEDIA_TYPE,
                        headers=problem.headers)


def not_found(what: str) -> Problem:
    return Problem("not-found", f"no {what}")


def _validation_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    """Each error as {field, message}; the offending value is never echoed (it may be a PAN)."""
    out = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ()) if part not in ("body",)]
        out.append({"field": ".".join(loc) or "body", "message": str(err.get("msg", "invalid"))})
    return out


_STATUS_SLUGS = {400: "bad-request", 401: "unauthenticated", 403: "forbidden", 404: "not-found",
                 405: "method-not-allowed", 409: "conflict", 413: "payload-too-large",
                 415: "unsupported-media-type", 422: "validation-error", 429: "rate-limited",
                 503: "unavailable"}


def install(app: FastAPI) -> None:
    """Answer every error as problem+json."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(exc)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return response(Problem("validation-error", detail, errors=errors), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        slug = _STATUS_SLUGS.get(exc.status_code, "bad-request" if exc.status_code < 500 else "internal")
        detail = exc.detail if isinstance(exc.detail, str) else None
        return response(Problem(slug, detail, status=exc.status_code,
                                headers=dict(exc.headers or {})), request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The exception's text may quote a value: only its class goes to the log and nothing to the client.
        log.error("api_unexpected_error", path=request.url.path, error=type(exc).__name__)
        return response(Problem("internal", "an unexpected error; it has been logged"), request.url.path)
