"""The admins' operators page on the live console: list and filter, add (secret and QR shown once),
unlock, reset TOTP, change role, disable; each change audited with the admin's name; an admin may not
disable or demote themselves."""

from __future__ import annotations

import re
from typing import Any

from pos.system import System
from tests.api.conftest import db, unique
from tests.fixtures.console import PASSWORD, new_operator


def audit(live: System, target: str) -> list[dict[str, Any]]:
    rows = db(live, lambda c: c.fetch("SELECT actor, role, action, outcome, before, after FROM audit_log"
                                      " WHERE target = $1 ORDER BY id", target))
    return [dict(r) for r in rows]


def test_add_from_the_page_shows_the_secret_once(live: System, console_as: Any) -> None:
    admin = console_as("admin")
    who = unique("pg").replace("-", ".")
    r = admin.post_form("/console/operators", {"name": who, "role": "viewer", "password": PASSWORD,
                                               "email": "someone@example.com"})
    assert r.status_code == 200, r.text
    assert "<svg" in r.text and r.headers["cache-control"] == "no-store"
    secret = re.search(r'class="totp-secret">([A-Z2-7]{32})<', r.text)
    assert secret
    page = admin.get("/console/operators", params={"name": who})
    assert page.status_code == 200 and who in page.text and secret.group(1) not in page.text
    assert "someone@example.com" not in page.text and "on file" in page.text
    rows = audit(live, f"operator:{who}")
    assert [(x["actor"], x["role"], x["action"]) for x in rows] == [
        (admin.operator.name, "admin", "operator.add")]
    assert "someone@example.com" not in str(rows)
    r = admin.post_form("/console/operators", {"name": who, "role": "viewer", "password": PASSWORD})
    assert r.status_code == 400 and "exists already" in r.text
    r = admin.post_form("/console/operators", {"name": unique("x"), "role": "viewer", "password": "short"})
    assert r.status_code == 400


def test_unlock_reset_role_disable(live: System, console_as: Any) -> None:
    admin = console_as("admin")
    op = new_operator(live, "operator")
    db(live, lambda c: c.execute("UPDATE operators SET failed_logins = 5,"
                                 " locked_until = now() + interval '1h'"
                                 " WHERE id = $1", op.id))
    page = admin.get("/console/operators", params={"state": "locked", "name": op.name})
    assert op.name in page.text and "Unlock" in page.text
    r = admin.post_form(f"/console/operators/{op.name}/unlock")
    assert r.status_code == 303
    page = admin.get("/console/operators", params={"state": "active", "name": op.name})
    assert op.name in page.text
    r = admin.post_form(f"/console/operators/{op.name}/reset-totp")
    assert r.status_code == 200 and "<svg" in r.text
    assert re.search(r'class="totp-secret">([A-Z2-7]{32})<', r.text)
    r = admin.post_form(f"/console/operators/{op.name}/role", {"role": "supervisor"})
    assert r.status_code == 303
    r = admin.post_form(f"/console/operators/{op.name}/role", {"role": "emperor"})
    assert r.status_code == 400
    r = admin.post_form(f"/console/operators/{op.name}/disable", {"reason": "left"})
    assert r.status_code == 303
    page = admin.get("/console/operators", params={"state": "disabled", "name": op.name})
    assert op.name in page.text
    actions = [x["action"] for x in audit(live, f"operator:{op.name}") if x["actor"] == admin.operator.name]
    assert actions == ["operator.unlock", "operator.reset_totp", "operator.role", "operator.disable"]
    assert admin.post_form("/console/operators/nobody.here/disable").status_code == 404


def test_an_admin_may_not_disable_or_demote_themselves(console_as: Any) -> None:
    admin = console_as("admin")
    me = admin.operator.name
    assert admin.post_form(f"/console/operators/{me}/disable").status_code == 400
    assert admin.post_form(f"/console/operators/{me}/role", {"role": "viewer"}).status_code == 400
    assert admin.get("/console/operators").status_code == 200  # still an admin, still signed in


def test_a_disabled_operator_is_signed_out_at_once(live: System, console_as: Any) -> None:
    admin, victim = console_as("admin"), console_as("viewer")
    assert victim.get("/console/login").status_code == 303  # signed in
    assert admin.post_form(f"/console/operators/{victim.operator.name}/disable").status_code == 303
    assert victim.get("/console/login").status_code == 200  # the login form again
