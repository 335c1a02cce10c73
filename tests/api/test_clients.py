"""`payswitch api client add|list|rotate|revoke` against the live system: a key is printed once and
never again, it authenticates at the live API, rotation keeps the old key only for its grace period,
revocation is refused within auth.CACHE_SECONDS by the running API; mistakes are one line, exit 1."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest

from api.auth import CACHE_SECONDS, key_hash
from pos.system import System
from tests.api.conftest import db, unique

KEY = re.compile(r"psk_[a-z2-7]{8}_[A-Za-z0-9_-]{43}")
MERCHANT = "898330160120001"


def _probe_path(live: System) -> str:
    """An authenticated GET route of the live API (its parameters filled with a harmless value)."""
    with httpx.Client(base_url=live.api_url, timeout=10.0) as c:
        doc = c.get("/v1/openapi.json").json()
    paths = [p for p, ops in doc["paths"].items() if p.startswith("/v1/") and "get" in ops]
    if not paths:
        pytest.skip("no authenticated GET route in the live API yet")
    return re.sub(r"\{[^}]+\}", "x1", sorted(paths, key=len)[0])


def _status(live: System, path: str, key: str) -> int:
    with httpx.Client(base_url=live.api_url, timeout=10.0) as c:
        return c.get(path, headers={"Authorization": f"Bearer {key}"}).status_code


def _until(live: System, path: str, key: str, want_401: bool) -> bool:
    """Whether the key's answer becomes (or stays not) 401 within the auth cache's lifetime."""
    deadline = time.monotonic() + CACHE_SECONDS + 10  # a busy box: CLI and API processes compete
    while True:
        is_401 = _status(live, path, key) == 401
        if is_401 == want_401 or time.monotonic() > deadline:
            return is_401 == want_401
        time.sleep(0.25)


def test_add_prints_the_key_once_and_list_never(live: System) -> None:
    path = _probe_path(live)
    name = unique("cli")
    out = live.cli("api", "client", "add", name, "--scopes", "cards:read,payments:write",
                   "--merchant", MERCHANT, "--rate", "50").stdout
    keys = KEY.findall(out)
    assert len(keys) == 1 and "shown once" in out
    key = keys[0]
    assert _status(live, path, key) != 401

    made = json.loads(live.cli("--json", "api", "client", "add", unique("cli"), "--scopes",
                               "cards:read").stdout)
    assert KEY.fullmatch(made["key"]) and made["shown_once"] is True
    assert made["client"]["scopes"] == ["cards:read"] and made["client"]["prefix"] in made["key"]

    listed = live.cli("api", "client", "list").stdout
    listed_json = live.cli("--json", "api", "client", "list").stdout
    for text in (listed, listed_json):
        assert not KEY.search(text) and key_hash(key) not in text and key_hash(made["key"]) not in text
    row = next(r for r in json.loads(listed_json) if r["name"] == name)
    assert row["merchant_id"] == MERCHANT and row["rate_per_second"] == 50 and row["state"] == "active"
    assert row["scopes"] == ["cards:read", "payments:write"] and row["key_prefix"] in key
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?[+-]\d\d:\d\d", row["created_at"])
    assert row["revoked_at"] is None and "key_hash" not in row
    assert name in listed and row["key_prefix"] in listed
    stored = db(live, lambda conn: conn.fetchval("SELECT key_hash FROM api_clients WHERE name = $1", name))
    assert stored == key_hash(key)


def test_rotate_with_and_without_grace_and_revoke(live: System) -> None:
    path = _probe_path(live)
    name = unique("cli")
    first = json.loads(live.cli("--json", "api", "client", "add", name, "--scopes",
                                "cards:read").stdout)["key"]
    assert _status(live, path, first) != 401

    second = json.loads(live.cli("--json", "api", "client", "rotate", name, "--grace-hours",
                                 "1").stdout)["key"]
    assert second != first
    assert _status(live, path, second) != 401
    time.sleep(CACHE_SECONDS + 0.2)  # the API's cached answer for the old key has expired: the grace holds
    assert _status(live, path, first) != 401
    row = next(r for r in json.loads(live.cli("--json", "api", "client", "list").stdout) if r["name"] == name)
    assert row["rotated_at"] and row["previous_expires_at"]

    out = live.cli("api", "client", "rotate", name).stdout  # no grace: both earlier keys refused
    third = KEY.findall(out)[0]
    assert "shown once" in out
    # each key's cached answer expires on its own clock (the first was looked up again later): wait for both
    assert _until(live, path, second, want_401=True) and _until(live, path, first, want_401=True)
    assert _status(live, path, third) != 401

    done = live.cli("api", "client", "revoke", name)
    assert "revoked" in done.stdout
    assert _until(live, path, third, want_401=True)
    listed = json.loads(live.cli("--json", "api", "client", "list").stdout)
    assert next(r for r in listed if r["name"] == name)["state"] == "revoked"


@pytest.mark.parametrize("args, words", [
    (["add", "{name}", "--scopes", "cards:read,money:print"], "unknown scope money:print"),
    (["add", "{name}", "--scopes", "cards:read", "--merchant", "999999999999999"],
     "no merchant 999999999999999"),
    (["add", "bad name!", "--scopes", "cards:read"], "a client name is"),
    (["rotate", "{name}"], "no client"),
    (["revoke", "{name}"], "no client"),
])
def test_mistakes_are_one_line_exit_1(live: System, args: list[str], words: str) -> None:
    name = unique("nobody")
    proc = live.cli("api", "client", *[a.format(name=name) for a in args], check=False)
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and words in err[0] and "Traceback" not in proc.stderr


def test_twice_the_same_name_and_revoked_twice(live: System) -> None:
    name = unique("cli")
    live.cli("api", "client", "add", name, "--scopes", "cards:read")
    again = live.cli("api", "client", "add", name, "--scopes", "cards:read", check=False)
    assert again.returncode == 1 and "exists already" in again.stderr
    live.cli("api", "client", "revoke", name)
    twice = live.cli("api", "client", "revoke", name, check=False)
    assert twice.returncode == 1 and "revoked already" in twice.stderr
    rotate = live.cli("api", "client", "rotate", name, check=False)
    assert rotate.returncode == 1 and "revoked" in rotate.stderr
