"""The committed OpenAPI document (api/openapi.json) is the code's, and says what every operation
needs: the bearer key, the Idempotency-Key header on POSTs, problem+json errors."""

from __future__ import annotations

import json
import subprocess
import sys

from api import problems
from api.openapi_cli import COMMITTED, REGENERATE, document, document_text
from pos.system import System

OPS = ("get", "post", "put", "patch", "delete")


def _operations(doc: dict) -> list[tuple[str, str, dict]]:
    return [(method, path, op) for path, item in doc["paths"].items() for method, op in item.items()
            if method in OPS]


def test_committed_document_is_the_codes() -> None:
    committed = COMMITTED.read_text(encoding="utf-8")
    assert committed == document_text(), (
        f"api/openapi.json differs from the document the code generates: run `{REGENERATE}` and commit it")


def test_document_declares_security_idempotency_and_problems() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1")
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "psk_<prefix>_<secret>",
        "description": doc["components"]["securitySchemes"]["bearer"]["description"]}
    problem = doc["components"]["schemas"]["Problem"]
    assert problem["required"] == ["type", "title", "status"]
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert set(doc["x-problem-types"]) == set(problems.PROBLEM_TYPES)
    for method, path, op in _operations(doc):
        if not path.startswith("/v1/"):
            continue
        where = f"{method.upper()} {path}"
        for code, resp in op["responses"].items():
            if code == "default" or code[0] in "45":
                assert problems.MEDIA_TYPE in resp.get("content", {}), where + " " + code
        if method == "post":
            names = [p["name"] for p in op.get("parameters", []) if p["in"] == "header"]
            assert "Idempotency-Key" in names, where
            idem = next(p for p in op["parameters"] if p["name"] == "Idempotency-Key")
            assert idem["required"] is True, where
        if path != "/v1/openapi.json":
            assert op.get("security") == [{"bearer": []}], f"{where} is not authenticated"
            assert "401" in op["responses"] and "429" in op["responses"], where
            assert "Retry-After" in op["responses"]["429"]["headers"], where


def test_cli_prints_the_document() -> None:
    out = subprocess.run([sys.executable, "-m", "ops", "api", "openapi"], capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout == document_text()


def test_live_document_is_the_committed_one(live: System) -> None:
    import httpx

    served = httpx.get(f"{live.api_url}/v1/openapi.json", timeout=30).json()
    assert served == json.loads(COMMITTED.read_text(encoding="utf-8")), (
        f"the live service's document differs from api/openapi.json: run `{REGENERATE}`")
