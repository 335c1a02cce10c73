"""The operator's view and changes of the switch's configuration: links, routes, the SAF queue.

Plain functions over an asyncpg connection (every SQL statement they need is here, none in
``switch/cli.py``): ``payswitch switch ...`` calls them, and the HTTP API and console will call the same
ones. Rules that decide (which route a PAN takes) are :mod:`switch.routing`'s, the ones a running
switch applies, never a copy.

Refusals are :class:`SwitchAdminError`, whose str() is one line naming what blocks the change and the
flag that overrides it:

- ``remove_link`` of a link that routes use: ``--with-routes`` (link and routes go in one transaction).
- ``set_link_enabled(False)`` of an enabled link that is the only one serving some of its routes' BIN
  ranges (their cards would find no route): ``--yes``.
- ``remove_route`` of the last route of an enabled link covering its BIN range: ``--yes``.
- ``save_link(replace=True)`` changing the scheme, ZPK or ZAK of an enabled link that routes use (PINs
  and MACs fail until the issuer host holds the same keys): ``--yes``.

Keys never leave: a view shows whether a key is there and its check value (the HSM computes it from the
key under the LMK, see :func:`check_values`), never the key.
"""

from __future__ import annotations

import contextlib
import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from switch.routing import Route, RoutingTable

KEY = re.compile(r"(U[0-9A-Fa-f]{32}|S[0-9A-Fa-f]{32}|T[0-9A-Fa-f]{48})")
BIN = re.compile(r"\d{1,19}")
LINK_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")
DEFAULT_LIMIT = 100


class SwitchAdminError(Exception):
    """A change or view refused; str() is one line naming what blocks it and how to override it."""


@dataclass(frozen=True)
class LinkSpec:
    """What ``switch link add`` says of a link (keys under the LMK)."""

    name: str
    direction: str  # out | in
    scheme: str  # 3des | sm4
    zpk: str
    host: str = ""
    port: int = 0
    connections: int = 2
    institution_id: str = ""
    zak: str | None = None
    zmk: str | None = None
    no_mac: bool = False


_LINK_COLUMNS = (
    "name, direction, host, port, connections, institution_id, scheme, zak IS NOT NULL AS mac, no_mac, "
    "zmk IS NOT NULL AS zmk, zpk_check, enabled, rekey_requested_at, rekeyed_at, created_at"
)
_ROUTE_COLUMNS = (
    "r.id, r.bin_low, r.bin_high, r.link, l.enabled AS link_enabled, l.direction AS link_direction, "
    "r.created_at"
)


def route_label(row: Any) -> str:
    """``1 (621234–621299)``: how a refusal names a route."""
    return f"{row['id']} ({row['bin_low']}–{row['bin_high']})"


def _routes_named(rows: list[Any]) -> str:
    return ", ".join(route_label(r) for r in rows)


def mac_state(row: Any) -> str:
    """yes: DE128 with a ZAK; off: declared --no-mac; no: neither (an in link so is refused)."""
    return "yes" if row["mac"] else "off" if row["no_mac"] else "no"


# -- links -------------------------------------------------------------------------------------------
def check_link(spec: LinkSpec) -> None:
    """Refuse a link that cannot work, in one line (before anything is written)."""
    if not LINK_NAME.fullmatch(spec.name):
        raise SwitchAdminError(f"link name {spec.name!r}: use 1-32 letters, digits, '_', '.', '-'")
    for label, key in (("--zpk", spec.zpk), ("--zak", spec.zak), ("--zmk", spec.zmk)):
        if key is not None and not KEY.fullmatch(key):
            raise SwitchAdminError(f"{label}: expected a key under the LMK (U+32H, T+48H or S+32H)")
    if (spec.scheme == "sm4") != spec.zpk.startswith("S"):
        raise SwitchAdminError(f"--zpk does not match --scheme {spec.scheme}")
    if spec.zmk is not None and (spec.scheme == "sm4") != spec.zmk.startswith("S"):
        raise SwitchAdminError(f"--zmk does not match --scheme {spec.scheme}")
    if spec.direction == "out" and (not spec.host or not spec.port):
        raise SwitchAdminError("an out link needs --host and --port")
    if spec.direction == "in" and not re.fullmatch(r"\d{1,11}", spec.institution_id):
        raise SwitchAdminError("an in link needs --institution-id (the acquirer's DE32, 1-11 digits)")
    # A link without DE128 is declared, never assumed: anyone reaching the port can write any DE32.
    if spec.no_mac and spec.zak:
        raise SwitchAdminError("--no-mac and --zak exclude each other")
    if spec.no_mac and spec.direction == "out":
        raise SwitchAdminError("--no-mac is for an in link (the issuer host decides on DE128)")
    if spec.direction == "in" and not spec.zak and not spec.no_mac:
        raise SwitchAdminError("an in link needs --zak, or --no-mac for a link without DE128")


async def save_link(conn: Any, spec: LinkSpec, *, replace: bool = False, yes: bool = False) -> bool:
    """Add the link, or with ``replace`` change it; True when it existed. A running switch takes it over."""
    check_link(spec)
    zpk, zak = spec.zpk.upper(), spec.zak.upper() if spec.zak else None
    async with conn.transaction():
        old = await conn.fetchrow(
            "SELECT direction, scheme, zpk, zak, enabled FROM switch_links WHERE name = $1 FOR UPDATE",
            spec.name,
        )
        if old is not None and not replace:
            raise SwitchAdminError(f"link {spec.name} exists; use --replace to change it")
        if old is not None:
            routes = await _link_routes(conn, spec.name)
            if routes and spec.direction != "out":
                raise SwitchAdminError(
                    f"link {spec.name} is used by routes {_routes_named(routes)}: an in link serves no "
                    f"routes; remove them first (`switch route remove ID`)"
                )
            rekeyed = (old["scheme"], old["zpk"], old["zak"]) != (spec.scheme, zpk, zak)
            if routes and old["enabled"] and rekeyed and not yes:
                raise SwitchAdminError(
                    f"link {spec.name} is used by routes {_routes_named(routes)}: another scheme, ZPK or "
                    f"ZAK fails its PINs and MACs until the issuer host holds the same keys; give --yes"
                )
        await conn.execute(
            "INSERT INTO switch_links "
            "(name, direction, host, port, connections, institution_id, scheme, zpk, zak, zmk, no_mac) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (name) DO UPDATE SET "
            "direction = $2, host = $3, port = $4, connections = $5, institution_id = $6, scheme = $7, "
            "zpk = $8, zak = $9, no_mac = $11, "
            "zmk = coalesce($10, switch_links.zmk), zpk_check = NULL",
            spec.name,
            spec.direction,
            spec.host,
            spec.port,
            spec.connections,
            spec.institution_id,
            spec.scheme,
            zpk,
            zak,
            spec.zmk.upper() if spec.zmk else None,
            spec.no_mac,
        )
    return old is not None


async def list_links(
    conn: Any,
    *,
    direction: str | None = None,
    enabled: bool | None = None,
    limit: int = DEFAULT_LIMIT,
    after: str | None = None,
) -> list[dict[str, Any]]:
    """Links by name (keys are not shown), with how many routes each serves; ``after`` a name: the next
    page starts after it."""
    rows = await conn.fetch(
        f"SELECT {_LINK_COLUMNS}, (SELECT count(*) FROM switch_routes r WHERE r.link = l.name) AS routes "
        "FROM switch_links l WHERE ($1::text IS NULL OR direction = $1) "
        "AND ($2::boolean IS NULL OR enabled = $2) AND ($3::text IS NULL OR name > $3) "
        "ORDER BY name LIMIT $4",
        direction,
        enabled,
        after,
        limit,
    )
    return [dict(r) for r in rows]


async def link_detail(conn: Any, name: str) -> dict[str, Any]:
    """One link (no keys), the routes that use it and the configuration version a running switch
    polls; SwitchAdminError when there is none."""
    row = await conn.fetchrow(f"SELECT {_LINK_COLUMNS} FROM switch_links WHERE name = $1", name)
    if row is None:
        raise SwitchAdminError(f"no link named {name} (see `switch link list`)")
    detail = dict(row)
    detail["routes"] = [dict(r) for r in await _link_routes(conn, name)]
    detail["config_version"] = await conn.fetchval("SELECT version FROM switch_config")
    return detail


async def link_keys(conn: Any, name: str) -> dict[str, str]:
    """The link's keys under the LMK by kind (ZPK, ZAK, ZMK), for :func:`check_values` only."""
    row = await conn.fetchrow("SELECT zpk, zak, zmk FROM switch_links WHERE name = $1", name)
    if row is None:
        return {}
    return {kind: row[kind] for kind in ("zpk", "zak", "zmk") if row[kind]}


# Key type codes of the HSM's BU command.
_KEY_TYPES = {"zpk": "001", "zak": "008", "zmk": "000"}


async def check_values(hsm: Any, keys: dict[str, str]) -> dict[str, str]:
    """Check values (16H) of the link's keys, computed by the HSM (``hsm_sim.client.HsmClient``)."""
    return {kind: await hsm.check_value(key, _KEY_TYPES[kind]) for kind, key in keys.items()}


async def set_link_enabled(conn: Any, name: str, enabled: bool, *, yes: bool = False) -> None:
    """Enable or disable a link. Disabling the only link that serves a BIN range needs ``yes``."""
    async with conn.transaction():
        was = await conn.fetchval("SELECT enabled FROM switch_links WHERE name = $1 FOR UPDATE", name)
        if was is None:
            raise SwitchAdminError(f"no link named {name}")
        if was and not enabled and not yes:
            alone = await _served_only_by(conn, await _link_routes(conn, name), exclude_link=name)
            if alone:
                raise SwitchAdminError(
                    f"link {name} is the only link for routes {_routes_named(alone)}: disabled, their "
                    f"cards find no route; give --yes"
                )
        await conn.execute("UPDATE switch_links SET enabled = $2 WHERE name = $1", name, enabled)


async def remove_link(conn: Any, name: str, *, with_routes: bool = False) -> list[dict[str, Any]]:
    """Remove a link; one that routes use only ``with_routes`` (link and routes in one transaction).
    Returns the routes removed with it. A running switch drains the link first."""
    async with conn.transaction():
        exists = await conn.fetchval("SELECT 1 FROM switch_links WHERE name = $1 FOR UPDATE", name)
        if exists is None:
            raise SwitchAdminError(f"no link named {name}")
        routes = await _link_routes(conn, name)
        if routes and not with_routes:
            raise SwitchAdminError(
                f"link {name} is used by routes {_routes_named(routes)}: remove them first or give "
                f"--with-routes"
            )
        await conn.execute("DELETE FROM switch_routes WHERE link = $1", name)
        await conn.execute("DELETE FROM switch_links WHERE name = $1", name)
    return [dict(r) for r in routes]


async def request_rekey(conn: Any, name: str) -> None:
    """Mark the link for a key change; the running switch makes it (0800 DE70 101) at its next poll."""
    row = await conn.fetchrow(
        "SELECT direction, enabled, zmk IS NOT NULL AS zmk FROM switch_links WHERE name = $1", name
    )
    if row is None or row["direction"] != "out":
        raise SwitchAdminError(f"no outbound link named {name}")
    if not row["zmk"]:
        raise SwitchAdminError(f"link {name} has no ZMK (link add {name} --replace ... --zmk U...)")
    if not row["enabled"]:
        raise SwitchAdminError(f"link {name} is disabled (`switch link enable {name}` first)")
    await conn.execute("UPDATE switch_links SET rekey_requested_at = now() WHERE name = $1", name)


def running_link(metrics_address: str, metrics_port: int, name: str, timeout: float = 1.0) -> dict[str, Any]:
    """What a running switch says of the link on its /metrics (the database does not record whether a
    link is up): ``{"running": False, "why": ...}`` or ``{"running": True, "up": bool|None,
    "connections": int|None}`` (None: the running switch does not have that link)."""
    if not metrics_port:
        return {"running": None, "why": "switch.metrics_port is 0: not knowable"}
    address = "127.0.0.1" if metrics_address in ("", "0.0.0.0", "::") else metrics_address
    url = f"http://{address}:{metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            text = answer.read().decode("utf-8", "replace")
    except (OSError, urllib.error.URLError, ValueError):
        return {"running": False, "why": f"no switch answers on {address}:{metrics_port}"}
    values: dict[str, float] = {}
    for line in text.splitlines():
        for metric in ("payswitch_switch_link_up", "payswitch_switch_link_connections"):
            if line.startswith(f'{metric}{{link="{name}"}} '):
                with contextlib.suppress(ValueError):
                    values[metric] = float(line.rsplit(" ", 1)[1])
    up = values.get("payswitch_switch_link_up")
    conns = values.get("payswitch_switch_link_connections")
    return {
        "running": True,
        "up": None if up is None else up >= 1,
        "connections": None if conns is None else int(conns),
    }


# -- routes ------------------------------------------------------------------------------------------
async def add_route(conn: Any, bin_low: str, bin_high: str | None, link: str) -> int:
    """Route PANs whose first digits lie in BIN_LOW..BIN_HIGH to an out link; the new route's id."""
    bin_high = bin_high or bin_low
    if not (BIN.fullmatch(bin_low) and BIN.fullmatch(bin_high)):
        raise SwitchAdminError("BIN bounds are 1-19 digits")
    if len(bin_low) != len(bin_high) or bin_low > bin_high:
        raise SwitchAdminError("BIN bounds must have the same length and LOW <= HIGH")
    direction = await conn.fetchval("SELECT direction FROM switch_links WHERE name = $1", link)
    if direction != "out":
        raise SwitchAdminError(f"no outbound link named {link} (see `switch link list --direction out`)")
    same = await conn.fetchval(
        "SELECT id FROM switch_routes WHERE bin_low = $1 AND bin_high = $2 AND link = $3",
        bin_low,
        bin_high,
        link,
    )
    if same is not None:
        raise SwitchAdminError(f"route {same} already exists: {bin_low}-{bin_high} -> {link}")
    route_id: int = await conn.fetchval(
        "INSERT INTO switch_routes (bin_low, bin_high, link) VALUES ($1, $2, $3) RETURNING id",
        bin_low,
        bin_high,
        link,
    )
    return route_id


async def list_routes(
    conn: Any,
    *,
    link: str | None = None,
    bin_prefix: str | None = None,
    limit: int = DEFAULT_LIMIT,
    after: int | None = None,
) -> list[dict[str, Any]]:
    """Routes by id (``after`` an id: the next page starts after it). With ``bin_prefix`` (a BIN or PAN
    prefix): the routes that match it, in the order a running switch tries them, and ``taken`` on the
    one it takes (the first whose link is enabled: :class:`switch.routing.RoutingTable`)."""
    if bin_prefix is None:
        rows = await conn.fetch(
            f"SELECT {_ROUTE_COLUMNS} FROM switch_routes r JOIN switch_links l ON l.name = r.link "
            "WHERE ($1::text IS NULL OR r.link = $1) AND ($2::bigint IS NULL OR r.id > $2) "
            "ORDER BY r.id LIMIT $3",
            link,
            after,
            limit,
        )
        return [dict(r) for r in rows]
    if not BIN.fullmatch(bin_prefix):
        raise SwitchAdminError(f"--bin {bin_prefix!r}: 1-19 digits (a BIN or the start of a PAN)")
    rows = await conn.fetch(
        f"SELECT {_ROUTE_COLUMNS} FROM switch_routes r JOIN switch_links l ON l.name = r.link ORDER BY r.id"
    )
    by_id = {r["id"]: dict(r) for r in rows}
    routes = [Route(r["bin_low"], r["bin_high"], r["link"], r["id"]) for r in rows]
    # The running switch's table holds the routes of enabled links (store._routes): the same rule here.
    taken = RoutingTable([x for x in routes if by_id[x.id]["link_enabled"]]).route(bin_prefix)
    out = []
    for candidate in RoutingTable(routes).candidates(bin_prefix):
        row = by_id[candidate.id]
        row["taken"] = taken is not None and candidate.id == taken.id
        if link is None or row["link"] == link:
            out.append(row)
    return out[:limit]


async def route_detail(conn: Any, route_id: int) -> dict[str, Any]:
    """One route, its link's state, and the other routes whose ranges overlap it (which one a PAN
    takes: ``switch route list --bin``)."""
    rows = await conn.fetch(
        f"SELECT {_ROUTE_COLUMNS} FROM switch_routes r JOIN switch_links l ON l.name = r.link ORDER BY r.id"
    )
    found = next((dict(r) for r in rows if r["id"] == route_id), None)
    if found is None:
        raise SwitchAdminError(f"no route {route_id} (see `switch route list`)")
    me = Route(found["bin_low"], found["bin_high"], found["link"], route_id)
    found["overlapping"] = [
        dict(r)
        for r in rows
        if r["id"] != route_id and me.overlaps(Route(r["bin_low"], r["bin_high"], r["link"], r["id"]))
    ]
    return found


async def remove_route(conn: Any, route_id: int, *, yes: bool = False) -> dict[str, Any]:
    """Remove a route; the last route of an enabled link that serves its range needs ``yes``."""
    async with conn.transaction():
        row = await conn.fetchrow(
            f"SELECT {_ROUTE_COLUMNS} FROM switch_routes r JOIN switch_links l ON l.name = r.link "
            "WHERE r.id = $1 FOR UPDATE OF r",
            route_id,
        )
        if row is None:
            raise SwitchAdminError(f"no route {route_id}")
        if row["link_enabled"] and not yes and await _served_only_by(conn, [row], exclude_id=route_id):
            raise SwitchAdminError(
                f"route {route_label(row)} is the only route for its range: its cards would find no route; "
                f"give --yes"
            )
        await conn.execute("DELETE FROM switch_routes WHERE id = $1", route_id)
    return dict(row)


async def _link_routes(conn: Any, link: str) -> list[Any]:
    return list(
        await conn.fetch(
            "SELECT id, bin_low, bin_high, link FROM switch_routes WHERE link = $1 ORDER BY id", link
        )
    )


async def _served_only_by(
    conn: Any, routes: list[Any], *, exclude_link: str | None = None, exclude_id: int | None = None
) -> list[Any]:
    """The ``routes`` whose whole range no other route of an enabled link covers (after the change,
    their cards would find no route)."""
    if not routes:
        return []
    others = [
        Route(r["bin_low"], r["bin_high"], r["link"], r["id"])
        for r in await conn.fetch(
            "SELECT r.id, r.bin_low, r.bin_high, r.link FROM switch_routes r "
            "JOIN switch_links l ON l.name = r.link WHERE l.enabled "
            "AND ($1::text IS NULL OR r.link <> $1) AND ($2::bigint IS NULL OR r.id <> $2)",
            exclude_link,
            exclude_id,
        )
    ]
    return [
        r
        for r in routes
        if not any(o.covers(Route(r["bin_low"], r["bin_high"], r["link"], r["id"])) for o in others)
    ]


# -- store-and-forward -------------------------------------------------------------------------------
async def list_saf(
    conn: Any, *, show_all: bool = False, limit: int = 1000, after: int | None = None
) -> list[dict[str, Any]]:
    """Reversal advices waiting (``show_all``: delivered ones too) by id (``after`` an id: the next page
    starts after it); ``message`` is the stored advice (H2H fields, no PAN, PIN or track)."""
    rows = await conn.fetch(
        "SELECT id, created_at, link, attempts, next_attempt_at, done_at, response_code, reason, message "
        "FROM switch_saf WHERE ($1 OR done_at IS NULL) AND ($3::bigint IS NULL OR id > $3) "
        "ORDER BY id LIMIT $2",
        show_all,
        limit,
        after,
    )
    out = []
    for r in rows:
        d = dict(r)
        d["message"] = json.loads(d["message"]) if isinstance(d["message"], str) else d["message"]
        out.append(d)
    return out
