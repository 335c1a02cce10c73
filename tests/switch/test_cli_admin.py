"""The operator's view of links, routes and the SAF queue, and the refusals of destructive switch commands
(issue 15, items 1 and 2): the real `payswitch switch ...` commands against the real database and HSM.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from ops.pgembed import free_port
from tests.fixtures.hsm import HsmServer
from tests.fixtures.pg import query
from tests.fixtures.services import base_env, run_cli
from tests.switch.test_pos_e2e import _keys


class Cli:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def ok(self, *args: str) -> str:
        result = run_cli(list(args), self.env)
        assert result.returncode == 0, f"payswitch {' '.join(args)}: {result.stderr}"
        return result.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok("--json", *args))

    def refused(self, *args: str) -> str:
        """The one line a refusal prints (exit 1, no traceback)."""
        result = run_cli(list(args), self.env)
        assert result.returncode == 1, f"payswitch {' '.join(args)} was not refused: {result.stdout}"
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        return lines[0]


@pytest.fixture(scope="module")
def world(db_url: str, hsm_server: HsmServer) -> Iterator[tuple[Cli, dict[str, str], str]]:
    keys = _keys(hsm_server)
    env = {
        **base_env(db_url, hsm_server),
        "PAYSWITCH_CLEARING_TIMEZONE": "Asia/Shanghai",
        "PAYSWITCH_SWITCH_METRICS_PORT": str(free_port()),  # no switch there: "not running"
    }
    cli = Cli(env)
    zpk = keys["zpk3"]
    out = ("--scheme", "3des", "--zpk", zpk, "--connections", "1")
    cli.ok("switch", "link", "add", "alpha", "--host", "127.0.0.1", "--port", "9", *out)
    cli.ok("switch", "link", "add", "bravo", "--host", "127.0.0.1", "--port", "10", *out)
    cli.ok("switch", "link", "add", "charlie", "--host", "127.0.0.1", "--port", "11", *out)
    cli.ok("switch", "link", "disable", "charlie")
    cli.ok(
        "switch", "link", "add", "acq", "--direction", "in", "--institution-id", "12345678",
        "--scheme", "3des", "--zpk", zpk, "--no-mac",
    )  # fmt: skip
    yield cli, keys, db_url


def _route(cli: Cli, low: str, high: str, link: str) -> int:
    route_id: int = cli.json("switch", "route", "add", low, high, "--link", link)["id"]
    return route_id


def test_link_list_filters_and_cursor(world: tuple[Cli, dict[str, str], str]) -> None:
    cli, keys, _ = world
    names = [r["name"] for r in cli.json("switch", "link", "list")]
    assert names == sorted(names) and {"acq", "alpha", "bravo", "charlie"} <= set(names)
    assert [r["name"] for r in cli.json("switch", "link", "list", "--direction", "in")] == ["acq"]
    outs = {r["name"] for r in cli.json("switch", "link", "list", "--direction", "out")}
    assert {"alpha", "bravo", "charlie"} <= outs and "acq" not in outs
    disabled = cli.json("switch", "link", "list", "--state", "disabled")
    assert [r["name"] for r in disabled] == ["charlie"] and disabled[0]["enabled"] is False
    assert "charlie" not in {r["name"] for r in cli.json("switch", "link", "list", "--state", "enabled")}
    # the cursor: a page of one, then the next page starts after its last name
    page = cli.ok("switch", "link", "list", "--limit", "1")
    assert "acq" in page and "alpha" not in page and page.strip().endswith("more: --after acq")
    second = cli.json("switch", "link", "list", "--limit", "1", "--after", "acq")
    assert [r["name"] for r in second] == ["alpha"]
    assert cli.json("switch", "link", "list", "--after", "zzz") == []
    everything = cli.ok("--json", "switch", "link", "list")
    assert keys["zpk3"] not in everything and "+08:00" in everything  # created_at in programme time
    bad = run_cli(["switch", "link", "list", "--state", "broken"], cli.env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_link_show_has_check_values_routes_and_no_key(world: tuple[Cli, dict[str, str], str]) -> None:
    cli, keys, _ = world
    route_id = _route(cli, "622100", "622199", "bravo")
    shown = cli.ok("switch", "link", "show", "bravo")
    assert keys["zpk3"] not in shown
    assert "127.0.0.1:10, 1 connection(s)" in shown and "scheme          3des" in shown
    assert f"{route_id} (622100–622199)" in shown
    assert "running switch  unknown: no switch answers" in shown

    async def kcv() -> str:
        async with world_hsm(cli) as h:
            return str(await h.check_value(keys["zpk3"], "001"))

    expected = trio.run(kcv)
    assert f"ZPK {expected[:6]}" in shown
    data = cli.json("switch", "link", "show", "bravo")
    assert data["check_values"] == {"zpk": expected} and data["routes"][0]["id"] == route_id
    assert data["created_at"].endswith("+08:00") and keys["zpk3"] not in json.dumps(data)
    assert cli.json("switch", "link", "show", "acq")["no_mac"] is True
    assert "no link named nosuch" in cli.refused("switch", "link", "show", "nosuch")
    cli.ok("switch", "route", "remove", str(route_id), "--yes")


def world_hsm(cli: Cli) -> Any:
    from hsm_sim.client import HsmClient

    return HsmClient(
        cli.env["PAYSWITCH_HSM_HOST"],
        int(cli.env["PAYSWITCH_HSM_PORT"]),
        header_length=int(cli.env["PAYSWITCH_HSM_HEADER_LENGTH"]),
    )


def test_route_list_by_link_by_bin_cursor_and_show(world: tuple[Cli, dict[str, str], str]) -> None:
    cli, _, _ = world
    wide = _route(cli, "623000", "623999", "alpha")
    narrow = _route(cli, "623450", "623459", "bravo")
    dark = _route(cli, "6234", "6234", "charlie")  # a disabled link's route: never taken
    other = _route(cli, "624000", "624000", "bravo")
    try:
        by_link = cli.json("switch", "route", "list", "--link", "bravo")
        assert [r["id"] for r in by_link] == [narrow, other]
        # the running switch's rule: the longest bounds, then the narrowest range, enabled links only
        chosen = cli.json("switch", "route", "list", "--bin", "6234567890123456")
        assert [r["id"] for r in chosen] == [narrow, wide, dark]
        assert [r["taken"] for r in chosen] == [True, False, False]
        human = cli.ok("switch", "route", "list", "--bin", "623455")
        assert f"{narrow:>4} 623450-623459" in human and "taken by 623455" in human
        assert [r["id"] for r in cli.json("switch", "route", "list", "--bin", "623100")] == [wide]
        none = cli.ok("switch", "route", "list", "--bin", "699999")
        assert "no route takes 699999: a card starting so finds no route" in none
        only_dark = cli.ok("switch", "route", "list", "--bin", "6234")
        assert "link disabled" in only_dark and "no route takes 6234" in only_dark
        # the cursor over ids
        page = cli.json("switch", "route", "list", "--limit", "2")
        assert len(page) == 2
        rest = cli.json("switch", "route", "list", "--after", str(page[-1]["id"]))
        assert all(r["id"] > page[-1]["id"] for r in rest) and {narrow, other} <= {r["id"] for r in rest} | {
            r["id"] for r in page
        }
        assert "more: --after" in cli.ok("switch", "route", "list", "--limit", "1")
        usage = run_cli(["switch", "route", "list", "--bin", "6234", "--after", "1"], cli.env)
        assert usage.returncode == 2 and "--after" in usage.stderr
        assert "--bin 'x12'" in cli.refused("switch", "route", "list", "--bin", "x12")
        # show: the link's state and the routes that overlap
        shown = cli.ok("switch", "route", "show", str(narrow))
        assert f"route {narrow}: 623450–623459 -> bravo" in shown
        assert f"{wide} (623000–623999) -> alpha" in shown and f"{dark} (6234–6234) -> charlie" in shown
        assert str(other) + " (" not in shown.split("overlapping")[1]
        data = cli.json("switch", "route", "show", str(dark))
        assert data["link_enabled"] is False and data["created_at"].endswith("+08:00")
        assert "no route 999999" in cli.refused("switch", "route", "show", "999999")
    finally:
        for route_id in (dark, narrow, wide, other):
            cli.ok("switch", "route", "remove", str(route_id), "--yes")


def test_link_remove_is_refused_while_routes_use_it(world: tuple[Cli, dict[str, str], str]) -> None:
    cli, keys, db_url = world
    cli.ok(
        "switch", "link", "add", "host", "--host", "127.0.0.1", "--port", "12", "--scheme", "3des",
        "--zpk", keys["zpk3"],
    )  # fmt: skip
    one = _route(cli, "621234", "621234", "host")
    two = _route(cli, "625000", "625999", "host")
    line = cli.refused("switch", "link", "remove", "host")
    assert line == (
        f"Error: link host is used by routes {one} (621234–621234), {two} (625000–625999): "
        "remove them first or give --with-routes"
    )
    assert query(db_url, "SELECT count(*) FROM switch_routes WHERE link = 'host'")[0][0] == 2
    removed = cli.json("switch", "link", "remove", "host", "--with-routes")
    assert removed == {"removed": "host", "routes_removed": [one, two]}
    assert query(db_url, "SELECT count(*) FROM switch_routes WHERE link = 'host'")[0][0] == 0
    assert cli.json("switch", "route", "list", "--link", "host") == []
    assert "no link named host" in cli.refused("switch", "link", "remove", "host")
    # a link no route uses goes without a flag
    cli.ok(
        "switch", "link", "add", "spare", "--host", "127.0.0.1", "--port", "13", "--scheme", "3des",
        "--zpk", keys["zpk3"],
    )  # fmt: skip
    assert "link spare removed" in cli.ok("switch", "link", "remove", "spare")


def test_disable_and_route_remove_of_the_only_way_need_yes(world: tuple[Cli, dict[str, str], str]) -> None:
    cli, _, db_url = world
    only = _route(cli, "626000", "626099", "alpha")
    line = cli.refused("switch", "link", "disable", "alpha")
    assert line == (
        f"Error: link alpha is the only link for routes {only} (626000–626099): disabled, their cards "
        "find no route; give --yes"
    )
    line = cli.refused("switch", "route", "remove", str(only))
    assert line == (
        f"Error: route {only} (626000–626099) is the only route for its range: its cards would find "
        "no route; give --yes"
    )
    # another enabled link covering the whole range: neither is the only way any more
    backup = _route(cli, "626", "626", "bravo")
    try:
        assert "route" in cli.ok("switch", "route", "remove", str(only))
        only = _route(cli, "626000", "626099", "alpha")
        cli.ok("switch", "link", "disable", "alpha")
        cli.ok("switch", "link", "enable", "alpha")
    finally:
        cli.ok("switch", "route", "remove", str(backup), "--yes")
    cli.ok("switch", "link", "disable", "alpha", "--yes")
    assert query(db_url, "SELECT enabled FROM switch_links WHERE name = 'alpha'")[0][0] is False
    cli.ok("switch", "route", "remove", str(only))  # its link is disabled: it carries nothing now
    cli.ok("switch", "link", "enable", "alpha")


def test_replace_changing_the_keys_of_a_link_in_use_needs_yes(world: tuple[Cli, dict[str, str], str]) -> None:
    cli, keys, db_url = world
    route_id = _route(cli, "627000", "627000", "bravo")
    same = ("--scheme", "3des", "--zpk", keys["zpk3"], "--connections", "1", "--replace")
    # another address, same keys: no question
    cli.ok("switch", "link", "add", "bravo", "--host", "127.0.0.1", "--port", "14", *same)
    sm4 = ("--scheme", "sm4", "--zpk", keys["zpk4"], "--connections", "1", "--replace")
    line = cli.refused("switch", "link", "add", "bravo", "--host", "127.0.0.1", "--port", "14", *sm4)
    assert line == (
        f"Error: link bravo is used by routes {route_id} (627000–627000): another scheme, ZPK or ZAK fails "
        "its PINs and MACs until the issuer host holds the same keys; give --yes"
    )
    assert query(db_url, "SELECT scheme FROM switch_links WHERE name = 'bravo'")[0][0] == "3des"
    cli.ok("switch", "link", "add", "bravo", "--host", "127.0.0.1", "--port", "14", *sm4, "--yes")
    assert query(db_url, "SELECT scheme FROM switch_links WHERE name = 'bravo'")[0][0] == "sm4"
    cli.ok("switch", "link", "add", "bravo", "--host", "127.0.0.1", "--port", "10", *same, "--yes")
    cli.ok("switch", "route", "remove", str(route_id), "--yes")
    # the argument checks need no database and stay one line
    assert "--zpk does not match --scheme sm4" in cli.refused(
        "switch", "link", "add", "x", "--host", "h", "--port", "1", "--scheme", "sm4", "--zpk", keys["zpk3"]
    )


def test_saf_list_json_and_local_times(world: tuple[Cli, dict[str, str], str]) -> None:
    cli, _, db_url = world
    query(
        db_url,
        "INSERT INTO switch_saf (link, message, reason, created_at, next_attempt_at) VALUES "
        "('alpha', $1::jsonb, '98', '2026-12-02 10:30:05+00', '2026-12-02 10:30:06+00')",
        json.dumps({"t": "0420", "90": "0200000042120210300000048880000000000000000"}),
    )
    rows = cli.json("switch", "saf", "list")
    mine = [r for r in rows if r["link"] == "alpha"]
    assert mine and mine[0]["created_at"] == "2026-12-02T18:30:05+08:00"
    assert mine[0]["next_attempt_at"] == "2026-12-02T18:30:06+08:00" and mine[0]["message"]["t"] == "0420"
    human = cli.ok("switch", "saf", "list")
    assert "2026-12-02 18:30:05 +08:00" in human and "waiting" in human
    assert cli.json("switch", "saf", "list", "--after", str(mine[-1]["id"])) == []
    query(db_url, "DELETE FROM switch_saf WHERE link = 'alpha'")
