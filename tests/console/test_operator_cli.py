"""`payswitch operator ...` against the live system: add (secret, URI, QR once), list, disable, unlock,
reset-totp, password, role; each change in the audit trail as `cli:<unix user>`; mistakes one line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pyotp

from ops.actor import cli_actor
from pos.system import System
from tests.api.conftest import db, unique
from tests.fixtures.console import PASSWORD

COOKIE = "payswitch_console"


def run(live: System, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops", *args], cwd=live.root, env=live.env(), input=stdin,
                          capture_output=True, text=True, timeout=120, check=False)


def name() -> str:
    return unique("cli").replace("-", ".")


def add(live: System, who: str, role: str = "operator", *extra: str) -> dict[str, Any]:
    r = run(live, "--json", "operator", "add", who, "--role", role, "--password-stdin", *extra,
            stdin=PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def audit(live: System, target: str) -> list[dict[str, Any]]:
    rows = db(live, lambda c: c.fetch("SELECT actor, role, action, outcome, before, after, reason"
                                      " FROM audit_log WHERE target = $1 ORDER BY id", target))
    return [dict(r) for r in rows]


def login(live: System, who: str, secret: str, password: str = PASSWORD) -> bool:
    with httpx.Client(base_url=live.api_url, timeout=30.0, follow_redirects=False) as b:
        page = b.get("/console/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf
        r = b.post("/console/login", data={"csrf": csrf.group(1), "name": who, "password": password})
        if r.status_code != 200:
            return False
        step = re.search(r'name="csrf" value="([^"]+)"', r.text)
        assert step
        r = b.post("/console/login/totp", data={"csrf": step.group(1), "code": pyotp.TOTP(secret).now()})
        return r.status_code == 303


def test_add_prints_the_secret_once_and_writes_the_qr(live: System, tmp_path: Path) -> None:
    who = name()
    qr = tmp_path / "qr.svg"
    out = add(live, who, "supervisor", "--email", "ops.person@example.com", "--qr", str(qr))
    assert out["name"] == who and out["role"] == "supervisor"
    assert re.fullmatch(r"[A-Z2-7]{32}", out["totp_secret"])
    assert out["otpauth_uri"].startswith("otpauth://totp/payswitch:")
    assert out["totp_secret"] in out["otpauth_uri"]
    assert qr.read_text().lstrip().startswith("<svg")
    rows = audit(live, f"operator:{who}")
    assert [(r["actor"], r["role"], r["action"]) for r in rows] == [(cli_actor(), "cli", "operator.add")]
    assert "ops.person@example.com" not in str(rows)  # masked only
    stored = db(live, lambda c: c.fetchrow("SELECT * FROM operators WHERE name = $1", who))
    assert out["totp_secret"] not in str(dict(stored)) and "ops.person" not in str(dict(stored))
    assert login(live, who, out["totp_secret"])
    listed = json.loads(run(live, "--json", "operator", "list", "--name", who).stdout)
    assert [o["name"] for o in listed["operators"]] == [who]
    assert listed["operators"][0]["totp_enrolled"] is True and listed["operators"][0]["email"] == "on file"


def test_human_output_and_list_filters(live: System) -> None:
    who = name()
    r = run(live, "operator", "add", who, "--role", "viewer", "--password-stdin", stdin=PASSWORD + "\n")
    assert r.returncode == 0 and "TOTP secret (shown once):" in r.stdout and "otpauth://" in r.stdout
    r = run(live, "operator", "list", "--role", "viewer", "--name", who)
    assert r.returncode == 0 and who in r.stdout and "active" in r.stdout
    r = run(live, "operator", "list", "--role", "admin", "--name", who)
    assert who not in r.stdout


def test_disable_unlock_reset_password_role(live: System) -> None:
    who = name()
    out = add(live, who)
    target = f"operator:{who}"
    db(live, lambda c: c.execute("UPDATE operators SET failed_logins = 5,"
                                 " locked_until = now() + interval '1h'"
                                 " WHERE name = $1", who))
    assert not login(live, who, out["totp_secret"])
    assert json.loads(run(live, "--json", "operator", "list", "--name", who).stdout)["operators"][0][
        "state"] == "locked"
    r = run(live, "--json", "operator", "unlock", who, "--reason", "called the desk")
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "active"
    assert login(live, who, out["totp_secret"])

    r = run(live, "--json", "operator", "reset-totp", who)
    assert r.returncode == 0
    new_secret = json.loads(r.stdout)["totp_secret"]
    assert new_secret != out["totp_secret"]
    assert db(live, lambda c: c.fetchval("SELECT totp_enrolled FROM operators WHERE name = $1", who)) is False
    assert not login(live, who, out["totp_secret"])  # the old secret is worth nothing

    r = run(live, "operator", "password", who, "--password-stdin", stdin="a whole new passphrase\n")
    assert r.returncode == 0, r.stderr
    assert not login(live, who, new_secret)  # the old password
    r = run(live, "--json", "operator", "role", who, "admin")
    assert r.returncode == 0 and json.loads(r.stdout)["role"] == "admin"

    r = run(live, "--json", "operator", "disable", who, "--reason", "left the team")
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "disabled"
    assert not login(live, who, new_secret, "a whole new passphrase")

    actions = [(a["action"], a["actor"], a["role"]) for a in audit(live, target)
               if a["action"].startswith("operator.")]
    assert actions == [(a, cli_actor(), "cli") for a in ("operator.add", "operator.unlock",
                                                          "operator.reset_totp", "operator.password",
                                                          "operator.role", "operator.disable")]
    rows = audit(live, target)
    assert "a whole new passphrase" not in str(rows) and new_secret not in str(rows)
    assert any(r["reason"] == "left the team" for r in rows)


def test_mistakes_are_one_line(live: System) -> None:
    who = name()
    add(live, who)
    cases: list[tuple[tuple[str, ...], str]] = [
        (("operator", "add", who, "--role", "viewer", "--password-stdin"), PASSWORD + "\n"),  # exists
        (("operator", "add", "Bad Name", "--role", "viewer", "--password-stdin"), PASSWORD + "\n"),
        (("operator", "add", name(), "--role", "viewer", "--password-stdin"), "short\n"),
        (("operator", "add", name(), "--role", "viewer", "--password-stdin"), ""),
        (("operator", "add", name(), "--role", "viewer", "--password-stdin", "--email", "not-an-address"),
         PASSWORD + "\n"),
        (("operator", "disable", "nobody.at.all"), ""),
        (("operator", "unlock", "nobody.at.all"), ""),
        (("operator", "role", who, "operator"), ""),  # already
        (("operator", "list", "--after", "abc"), ""),
    ]
    for args, stdin in cases:
        r = run(live, *args, stdin=stdin)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    r = run(live, "operator", "add", name(), "--role", "boss", "--password-stdin", stdin=PASSWORD + "\n")
    assert r.returncode == 2 and "Traceback" not in r.stderr
