"""`payswitch api call METHOD PATH [--data JSON]`: the API from the command line, as a back office
uses it.

The key is ``--key`` or ``$PAYSWITCH_API_KEY`` (a key from `payswitch api client add`); the service is
``--url`` or this configuration's ``api.listen``:``api.port``. A POST gets a fresh ``Idempotency-Key``
(or ``--idempotency-key K`` to retry one on purpose). The answer's JSON is printed as it came; a problem
(status >= 400) is printed too, then the command exits 1 with its type and detail on one line.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from typing import Any

import click
import httpx

from ops.cli import AppContext, pass_app

KEY_ENV = "PAYSWITCH_API_KEY"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def base_url(listen: str, port: int) -> str:
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(listen, listen)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _body(data: str | None) -> Any:
    if data is None:
        return None
    text = sys.stdin.read() if data == "-" else data
    if text.startswith("@"):
        with open(text[1:], encoding="utf-8") as f:
            text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"--data is not JSON: {exc.msg} at character {exc.pos}") from None


@click.command("call")
@click.argument("method", type=click.Choice(METHODS, case_sensitive=False))
@click.argument("path")
@click.option("--data", "-d", default=None, metavar="JSON",
              help="The request body: JSON, @FILE, or - for standard input.")
@click.option("--key", default=None, help=f"The API key (default: ${KEY_ENV}).")
@click.option("--url", "url", default=None, help="The API's base URL (default: api.listen:api.port).")
@click.option("--idempotency-key", default=None, help="For a POST: this key instead of a new one.")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds.")
@click.option("--include", "-i", is_flag=True, help="Print the status and the response headers first.")
@pass_app
def call(app: AppContext, method: str, path: str, data: str | None, key: str | None, url: str | None,
         idempotency_key: str | None, timeout: float, include: bool) -> None:
    """Call the API: `api call GET /v1/cards/card_12`, `api call POST /v1/loads -d '{...}'`."""
    method = method.upper()
    key = key or os.environ.get(KEY_ENV)
    if not key:
        raise click.ClickException(f"give the API key: --key or ${KEY_ENV}")
    if not path.startswith("/"):
        path = "/" + path
    root = url or base_url(app.config.api.listen, app.config.api.port)
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
    if method == "POST":
        headers["Idempotency-Key"] = idempotency_key or str(uuid.uuid4())
    body = _body(data)
    try:
        with httpx.Client(base_url=root.rstrip("/"), timeout=timeout) as client:
            r = client.request(method, path, headers=headers,
                               **({"json": body} if body is not None else {}))
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach the API at {root}: {type(exc).__name__}") from None
    if include:
        click.echo(f"HTTP {r.status_code} {r.reason_phrase}")
        for name, value in r.headers.items():
            click.echo(f"{name}: {value}")
        if method == "POST":
            click.echo(f"(sent) idempotency-key: {headers['Idempotency-Key']}")
        click.echo("")
    try:
        answer: Any = r.json() if r.content else None
    except ValueError:
        answer = None
    if answer is not None:
        click.echo(json.dumps(answer, indent=2, ensure_ascii=False))
    elif r.content:
        click.echo(r.text)
    if r.status_code >= 400:
        if isinstance(answer, dict) and "type" in answer:
            slug = str(answer["type"]).rsplit("/", 1)[-1]
            detail = answer.get("detail") or answer.get("title") or ""
            raise click.ClickException(f"HTTP {r.status_code} {slug}: {detail}")
        raise click.ClickException(f"HTTP {r.status_code} {r.reason_phrase}")
