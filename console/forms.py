"""What the views share to read a request and call the domain: one way each.

``text_filter`` checks a free-text filter from a query string or form; ``run`` calls a domain function
``fn(conn, *args, **kw)`` on the API process's pool and turns the domain's refusal (the exception
classes in ``refused``) into a 400 page with its words (404 when they begin with ``not_found``).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from console.auth import ConsoleRefusal, api_state


def text_filter(text: str, what: str, longest: int = 200) -> str | None:
    """A filter's text, stripped (None when empty); refused when too long or not printable."""
    text = text.strip()
    if not text:
        return None
    if len(text) > longest or not text.isprintable():
        raise ConsoleRefusal(400, f"The {what} filter is at most {longest} printable characters.")
    return text


async def run(request: Request, fn: Any, *args: Any, refused: tuple[type[Exception], ...] = (),
              not_found: str | None = None, **kw: Any) -> Any:
    async def work(conn: Any) -> Any:
        return await fn(conn, *args, **kw)

    try:
        return await api_state(request).pool.run(work)
    except refused as exc:
        text = str(exc)
        raise ConsoleRefusal(404 if not_found and text.startswith(not_found) else 400, text) from None
