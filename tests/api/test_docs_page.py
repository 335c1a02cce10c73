"""/docs works offline: Swagger UI from the assets vendored in the package, never a CDN."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from api.routes.docs import STATIC
from pos.system import System

CDN = re.compile(r"https?://[^\s\"'()]*(unpkg|jsdelivr|cdnjs|googleapis|gstatic|bootstrapcdn|"
                 r"cloudflare|fastly|redocly\.com|cdn\.)", re.I)
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png", "LICENSE", "VERSION")


def test_vendored_assets_name_their_version_and_hold_no_cdn_url() -> None:
    folder = STATIC / "swagger-ui"
    for name in ASSETS:
        assert (folder / name).is_file(), name
    version = (folder / "VERSION").read_text()
    assert re.search(r"swagger-ui-dist 5\.\d+\.\d+", version)
    assert re.search(r"integrity sha512-[A-Za-z0-9+/=]{88}", version)
    for path in folder.iterdir():
        if path.suffix in (".js", ".css"):
            hit = CDN.search(path.read_text(encoding="utf-8"))
            assert hit is None, f"{path.name} names {hit.group(0)}"


def test_docs_page_and_assets_are_served_offline(live: System) -> None:
    with httpx.Client(base_url=live.api_url, timeout=30) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert CDN.search(page.text) is None
        assert "https://" not in page.text and "http://" not in page.text
        assert "/v1/openapi.json" in page.text
        refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert refs and all(r.startswith("/static/swagger-ui/") for r in refs), refs
        for ref in refs:
            asset = client.get(ref)
            assert asset.status_code == 200, ref
            assert "max-age=" in asset.headers["cache-control"], ref
            local = STATIC / Path(ref).relative_to("/static")
            assert asset.content == local.read_bytes(), ref
        js = client.get("/static/swagger-ui/swagger-ui-bundle.js")
        assert js.headers["content-type"].startswith("text/javascript")
        assert CDN.search(js.text) is None
        document = client.get("/v1/openapi.json")
        assert document.status_code == 200 and document.json()["openapi"].startswith("3.1")


def test_static_serves_nothing_outside_its_folder(live: System) -> None:
    with httpx.Client(base_url=live.api_url, timeout=30) as client:
        for path in ("/static/../openapi_cli.py", "/static/%2e%2e/app.py", "/static/swagger-ui/nope.js",
                     "/static/", "/static/swagger-ui"):
            r = client.get(path)
            assert r.status_code == 404, path
            assert r.headers["content-type"].startswith("application/problem+json"), path
