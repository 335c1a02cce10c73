"""The console's security pass (issue 18, Done when), against the live console through real routes:

(a) every registered action (console.roles.ACTIONS, filled by importing every view module of
    console.app.VIEWS) tried by every role through its route: a role below the action's least role gets
    403 and an audit row (outcome 'refused') names it; a role that may gets anything but 403 (path
    parameters name nothing, so an allowed request answers 404/400/422 and changes nothing);
(b) every POST route without its CSRF token (or with a wrong one) is refused with 403;
(c) a session still at its password step takes no action.
Session fixation, open redirects, cookie flags, lockout and timeouts: tests/console/test_login.py.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from console.roles import ACTIONS, ROLES, may
from pos.system import System
from tests.api.conftest import db
from tests.fixtures.console import ConsoleClient, new_operator

PREFIX = "/console"
NOTHING = "999999999"  # fills every path parameter: no card, merchant, operator... has it


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # with its parameters filled
    template: str
    action: str | None  # the console.auth.action of its dependencies, if any


def _action_of(route: APIRoute) -> str | None:
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        call = dep.call
        if call is not None and getattr(call, "__qualname__", "").startswith("action.<locals>."):
            name = inspect.getclosurevars(call).nonlocals.get("name")
            if isinstance(name, str):
                return name
        stack.extend(dep.dependencies)
    return None


def console_routes() -> list[Route]:
    from console.app import VIEWS

    found: list[Route] = []
    for module_name in VIEWS:
        if importlib.util.find_spec(module_name) is None:
            continue
        module: Any = importlib.import_module(module_name)
        for r in module.router.routes:
            if not isinstance(r, APIRoute):
                continue
            for method in sorted(r.methods or ()):
                if method in ("GET", "HEAD", "OPTIONS"):
                    continue
                path = PREFIX + re.sub(r"\{[^}]+\}", NOTHING, r.path)
                found.append(Route(method, path, PREFIX + r.path, _action_of(r)))
    return found


ROUTES = console_routes()
BY_ACTION: dict[str, list[Route]] = {}
for _r in ROUTES:
    if _r.action is not None:
        BY_ACTION.setdefault(_r.action, []).append(_r)


def test_every_registered_action_has_a_route() -> None:
    assert "operator.add" in ACTIONS and ACTIONS["operator.add"] == "admin"
    missing = sorted(set(ACTIONS) - set(BY_ACTION))
    assert not missing, f"actions registered without a console route: {missing}"


@pytest.fixture(scope="module")
def clients(live: System) -> Any:
    from tests.fixtures.console import logged_in

    made = {role: logged_in(live, role) for role in ROLES}
    yield made
    for c in made.values():
        c.close()


def refused_rows(live: System, actor: str, action: str) -> int:
    return int(db(live, lambda c: c.fetchval(
        "SELECT count(*) FROM audit_log WHERE actor = $1 AND action = $2 AND outcome = 'refused'",
        actor, action)))


def send(client: httpx.Client, route: Route, data: dict[str, str]) -> httpx.Response:
    return client.request(route.method, route.path, data=data)


@pytest.mark.parametrize("action", sorted(BY_ACTION))
def test_every_action_by_every_role(live: System, clients: dict[str, ConsoleClient], action: str) -> None:
    for route in BY_ACTION[action]:
        for role in ROLES:
            client = clients[role]
            before = refused_rows(live, client.operator.name, action)
            r = send(client, route, {"csrf": client.csrf})
            where = f"{route.method} {route.template} as {role}: {r.status_code}"
            if may(role, action):
                assert r.status_code != 403, where + " (an allowed role was refused)"
                assert not (r.status_code == 303 and "/login" in r.headers.get("location", "")), where
            else:
                assert r.status_code == 403, where + " (a role below the least one was not refused)"
                assert refused_rows(live, client.operator.name, action) == before + 1, (
                    where + ": no audit row of the refusal")


@pytest.mark.parametrize("route", ROUTES, ids=[f"{r.method} {r.template}" for r in ROUTES])
def test_every_post_without_its_csrf_token_is_refused(live: System, clients: dict[str, ConsoleClient],
                                                     route: Route) -> None:
    admin = clients["admin"]
    # the admin may do everything: only the token is missing or wrong
    r = send(admin, route, {})
    assert r.status_code == 403, f"{route.method} {route.template} without a token: {r.status_code}"
    r = send(admin, route, {"csrf": "not-the-session-token-" + "x" * 20})
    assert r.status_code == 403, f"{route.method} {route.template} with a wrong token: {r.status_code}"
    with httpx.Client(base_url=live.api_url, follow_redirects=False, timeout=30.0) as stranger:
        r = send(stranger, route, {})
        assert r.status_code in (303, 403), f"{route.template} by a stranger: {r.status_code}"


def test_a_token_of_another_session_is_refused(live: System, clients: dict[str, ConsoleClient]) -> None:
    admin, other = clients["admin"], clients["supervisor"]
    route = BY_ACTION["operator.unlock"][0]
    r = send(admin, route, {"csrf": other.csrf})
    assert r.status_code == 403


def test_a_password_stage_session_takes_no_action(live: System) -> None:
    import asyncio

    import asyncpg

    from console.operators import open_session

    op = new_operator(live, "admin")

    async def main() -> tuple[str, str]:
        conn = await asyncpg.connect(live.db_url)
        try:
            return await open_session(conn, op.id, "password", "127.0.0.1")
        finally:
            await conn.close()

    token, csrf = asyncio.run(main())
    with httpx.Client(base_url=live.api_url, follow_redirects=False, timeout=30.0) as b:
        b.cookies.set("payswitch_console", token, path="/console")
        route = BY_ACTION["operator.unlock"][0]
        r = send(b, route, {"csrf": csrf})
        assert r.status_code == 303 and r.headers["location"].startswith("/console/login")
        assert b.get("/console/operators").status_code == 303


def test_operators_page_is_for_admins(clients: dict[str, ConsoleClient]) -> None:
    for role in ROLES:
        r = clients[role].get("/console/operators")
        assert r.status_code == (200 if role == "admin" else 403), role
