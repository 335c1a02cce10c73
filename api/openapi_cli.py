"""`payswitch api openapi [--write]`: the OpenAPI document generated from the code.

The document is made from ``create_app(None)`` (the same routes as ``api serve``, no running system);
``--write`` replaces the committed ``api/openapi.json`` (sorted keys, indent 2, a newline at the end).
tests/api/test_openapi.py fails when the committed document differs from the code's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ops.cli import AppContext, pass_app

COMMITTED = Path(__file__).resolve().parent / "openapi.json"
REGENERATE = "payswitch api openapi --write"


def document() -> dict[str, Any]:
    from api.app import create_app

    return create_app(None).openapi()


def document_text(doc: dict[str, Any] | None = None) -> str:
    """The document as committed: sorted keys, indent 2, non-ASCII kept, one newline at the end."""
    return json.dumps(document() if doc is None else doc, sort_keys=True, indent=2,
                      ensure_ascii=False) + "\n"


@click.command("openapi")
@click.option("--write", is_flag=True, help=f"Write it to {COMMITTED.name} in the package (commit it).")
@pass_app
def openapi(app: AppContext, write: bool) -> None:
    """Print the API's OpenAPI 3.1 document (or --write it to api/openapi.json)."""
    text = document_text()
    if not write:
        click.echo(text, nl=False)
        return
    before = COMMITTED.read_text(encoding="utf-8") if COMMITTED.exists() else None
    if before == text:
        click.echo(f"{COMMITTED} is up to date")
        return
    COMMITTED.write_text(text, encoding="utf-8")
    doc = json.loads(text)
    operations = sum(1 for item in doc.get("paths", {}).values() for m in item
                     if m in ("get", "post", "put", "patch", "delete"))
    click.echo(f"wrote {COMMITTED} ({len(doc.get('paths', {}))} paths, {operations} operations)")
