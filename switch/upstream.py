"""The way to the issuers: BIN routing, the outbound links, timeouts and reversal of unknown outcomes.

Shared by the POS service and the inbound acquirer service: both hand over an H2H request for a PAN
and get back the host's answer, or a decision made here (14 no route, 91 link down, timeout).

Also the live configuration of that way (``ConfigWatcher``): links and routes changed in the database
while the switch runs are taken over at the next poll, and a key change (0800 DE70 101) on an outbound
link is started from here (``KeyChangeGate`` keeps PIN blocks and the host's key in step).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from hsm_sim.client import HsmClient, HsmError
from ops.logs import get_logger
from ops.pgpool import PgPool
from switch import metrics
from switch.hsm import HsmRefused, SwitchHsm, WorkingKey
from switch.links import LinkConfig, LinkDown, LinkTimeout, NotSigned, OutboundLink
from switch.mapping import Message
from switch.routing import Route, RoutingTable
from switch.saf import SafQueue, reversal_advice

log = get_logger(__name__)


@dataclass(slots=True)
class Outcome:
    """What became of an upstream request: ``answer`` from the host, or ``local_code`` decided here.

    ``timed_out`` means the request was sent and its outcome is unknown (a reversal advice was queued).
    """

    answer: Message | None
    local_code: str | None
    timed_out: bool
    host_seconds: float
    reason: str | None = None  # with a local_code: why (switch/reasons.py), for the journal


class Upstream:
    def __init__(
        self,
        links: dict[str, OutboundLink],
        routing: RoutingTable,
        saf: SafQueue,
        *,
        acquirer_id: str,
        timeout: float,
    ) -> None:
        self.links = links
        self.routing = routing
        self.saf = saf
        self.acquirer_id = acquirer_id
        self.timeout = timeout
        self._turn = 0  # round-robin over a route's links (RoutingTable.links_for)

    def route(self, pan: str) -> OutboundLink | None:
        """The link for ``pan``: with several links on its route, the next one that is up in turn (a
        host killed: its link down, new requests go to the others at once); none up: the first tried, whose
        request then fails as link down (91) as with a single link."""
        names = self.routing.links_for(pan)
        if len(names) <= 1:
            return self.links.get(names[0]) if names else None
        self._turn += 1
        first = None
        for i in range(len(names)):
            link = self.links.get(names[(self._turn + i) % len(names)])
            if link is not None and link.up:
                return link
            first = first or link
        return first

    async def send(self, link: OutboundLink, request: Message, *, reverse_on_timeout: bool = True) -> Outcome:
        """Send ``request`` on ``link``. On timeout a 0420 is made durable before returning."""
        start = trio.current_time()
        try:
            answer = await link.request(request, self.timeout)
        except NotSigned as exc:  # nothing left: the HSM could not sign it (96, as any HSM outage)
            log.error("upstream request not signed", link=link.name, stan=request.get("11"), error=str(exc))
            return Outcome(None, "96", False, 0.0, "upstream_not_signed")
        except LinkDown:
            return Outcome(None, "91", False, 0.0, "link_down")
        except LinkTimeout:
            elapsed = trio.current_time() - start
            log.warning("upstream timeout", link=link.name, mti=request.get("t"), stan=request.get("11"))
            if reverse_on_timeout:
                await self.reverse(link, request, "98")
            return Outcome(None, None, True, elapsed)
        elapsed = trio.current_time() - start
        metrics.LATENCY_HOST.observe(elapsed)
        return Outcome(answer, None, False, elapsed)

    async def reverse(self, link: OutboundLink, original: Message, reason: str) -> None:
        """Queue a durable reversal advice for ``original`` (an upstream request of ``link``)."""
        await self.saf.add(link.name, reversal_advice(original, link, reason), reason)


# -- key change ----------------------------------------------------------------------------------------
class _Change:
    __slots__ = ("done", "old", "result")

    def __init__(self, old: str) -> None:
        self.old = old
        self.result = old  # the key translations go to once ``done`` is set
        self.done = trio.Event()


class KeyChangeGate:
    """``SwitchHsm`` that holds PIN translations to a link ZPK while that ZPK is being changed.

    The host takes the new ZPK when it answers the 0800 101, so every PIN block must reach it under the
    key it holds then. A request reads its link's ``config.zpk`` when it asks the HSM to translate; after
    the answer it waits for its write-ahead record to commit, and then checks, without a checkpoint before
    it is on the link, that the key it translated to is neither changed nor changing (``key_changing``),
    else translates again (held here until the change ends). So a change: (1) holds new translations to
    the old key, (2) lets those already in the HSM finish (their requests are then waiting on the link),
    (3) waits for the answers of every request waiting on the link, (4) exchanges the 0800/0810 101, (5)
    releases the held translations to the new key (the old one if the change failed). Translations to
    other keys never wait.
    """

    def __init__(self, inner: SwitchHsm) -> None:
        self.inner = inner
        self._busy: dict[str, int] = {}  # translations in the HSM, by destination ZPK
        self._changes: dict[str, _Change] = {}

    async def _enter(self, zpk: str) -> str:
        change = self._changes.get(zpk)
        while change is not None:  # no checkpoint unless a change of this key is under way
            await change.done.wait()
            zpk = change.result
            change = self._changes.get(zpk)
        self._busy[zpk] = self._busy.get(zpk, 0) + 1
        return zpk

    def _leave(self, zpk: str) -> None:
        n = self._busy[zpk] - 1
        if n:
            self._busy[zpk] = n
        else:
            del self._busy[zpk]

    def begin(self, zpk: str) -> _Change:
        change = self._changes[zpk] = _Change(zpk)
        return change

    async def idle(self, zpk: str, timeout: float) -> bool:
        """Wait until no translation to ``zpk`` is in the HSM; False if some still are after ``timeout``."""
        with trio.move_on_after(timeout):
            while self._busy.get(zpk):
                await trio.sleep(0.002)
        return not self._busy.get(zpk)

    def end(self, change: _Change, result: str) -> None:
        change.result = result
        if self._changes.get(change.old) is change:
            del self._changes[change.old]
        change.done.set()

    # -- SwitchHsm --------------------------------------------------------------------------------------
    async def working_key(self, scheme: str, kind: str, tmk: str) -> WorkingKey:
        return await self.inner.working_key(scheme, kind, tmk)

    async def pos_mac(self, scheme: str, mak: str, data: bytes) -> bytes:
        return await self.inner.pos_mac(scheme, mak, data)

    async def translate_pin(
        self,
        src_scheme: str,
        src_key_type: str,
        src_key: str,
        dst_scheme: str,
        zpk: str,
        block: bytes,
        account: str,
    ) -> bytes:
        zpk = await self._enter(zpk)
        try:
            return await self.inner.translate_pin(
                src_scheme, src_key_type, src_key, dst_scheme, zpk, block, account
            )
        finally:
            self._leave(zpk)

    async def pos_mac_and_translate_pin(
        self,
        scheme: str,
        mak: str,
        data: bytes,
        pik: str,
        dst_scheme: str,
        zpk: str,
        block: bytes,
        account: str,
    ) -> tuple[bytes | HsmRefused, bytes | HsmRefused]:
        zpk = await self._enter(zpk)
        try:
            return await self.inner.pos_mac_and_translate_pin(
                scheme, mak, data, pik, dst_scheme, zpk, block, account
            )
        finally:
            self._leave(zpk)

    async def link_mac(self, scheme: str, zak: str, data: bytes) -> bytes:
        return await self.inner.link_mac(scheme, zak, data)

    async def verify_link_mac(self, zak: str, data: bytes, mac: bytes) -> bool:
        return await self.inner.verify_link_mac(zak, data, mac)

    async def link_macs(self, zak: str, data: list[bytes]) -> list[bytes | None]:
        return await self.inner.link_macs(zak, data)

    async def verify_link_macs(self, zak: str, items: list[tuple[bytes, bytes]]) -> list[bool]:
        return await self.inner.verify_link_macs(zak, items)

    def key_changing(self, zpk: str) -> bool:
        return zpk in self._changes


def translate_again(hsm: SwitchHsm, link: OutboundLink, translated_to: str) -> bool:
    """Whether a PIN block translated to ``translated_to`` for ``link`` must be translated again before it
    is sent: its write-ahead wait is a checkpoint the gate does not cover, and the link's ZPK may have
    changed, or be changing, meanwhile; the host holds the new key from its 0810 on (the gate holds the
    new translation until then)."""
    return link.config.zpk != translated_to or hsm.key_changing(translated_to)


# -- live configuration -------------------------------------------------------------------------------
# (The switch's other SQL is in switch.store; these statements belong to the live configuration alone.)
_LINKS_SQL = (
    "SELECT name, direction, host, port, connections, institution_id, scheme, zpk, zak, enabled, zmk, "
    "no_mac, rekey_requested_at IS NOT NULL AS rekey, coalesce(rekeyed_at, created_at) AS keyed_at "
    "FROM switch_links ORDER BY name"
)
_ROUTES_SQL = (
    "SELECT r.bin_low, r.bin_high, r.link FROM switch_routes r JOIN switch_links l ON l.name = r.link "
    "WHERE l.enabled ORDER BY r.id"
)


@dataclass(frozen=True)
class ConfigSnapshot:
    version: int
    links: list[LinkConfig]
    routes: list[Route]
    rekey: frozenset[str]  # links with a `switch link rekey` request waiting
    keyed_at: dict[str, dt.datetime]  # when each link's ZPK was last changed (or the link added)


async def _snapshot(conn: Any) -> ConfigSnapshot:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        version: int = await conn.fetchval("SELECT version FROM switch_config")
        rows = await conn.fetch(_LINKS_SQL)
        routes = await conn.fetch(_ROUTES_SQL)
    return ConfigSnapshot(
        version,
        [LinkConfig(*row[:12]) for row in rows],
        [Route(r[0], r[1], r[2]) for r in routes],
        frozenset(row["name"] for row in rows if row["rekey"]),
        {row["name"]: row["keyed_at"] for row in rows},
    )


async def _version(conn: Any) -> int:
    version: int = await conn.fetchval("SELECT version FROM switch_config")
    return version


async def _store_zpk(conn: Any, name: str, zpk: str, check: str) -> None:
    await conn.execute(
        "UPDATE switch_links SET zpk = $2, zpk_check = $3, rekeyed_at = now(), rekey_requested_at = NULL "
        "WHERE name = $1",
        name,
        zpk,
        check,
    )


async def _clear_rekey(conn: Any, name: str) -> None:
    await conn.execute(
        "UPDATE switch_links SET rekey_requested_at = NULL "
        "WHERE name = $1 AND rekey_requested_at IS NOT NULL",
        name,
    )


LinkFactory = Callable[[LinkConfig, "OutboundLink | None"], OutboundLink]
REKEY_RETRY = dt.timedelta(minutes=5)  # a periodic key change that failed is tried again after this


class ConfigWatcher:
    """Links and routes changed while the switch runs, and key changes of outbound links.

    Every ``poll_seconds`` one row is read (``switch_config.version``, bumped by triggers on every change
    of ``switch_links`` or ``switch_routes``); when it moved, links and routes are read in one snapshot and
    applied at once, without a checkpoint: the next request sees the new routing table. A new or
    re-enabled outbound link starts connecting; a disabled or deleted one leaves the table (its routes
    stop matching) and is drained (``OutboundLink.retire``); a link whose address, connections or keys
    changed is replaced by a new one while the old one drains. Per request nothing is read from the
    database.
    """

    def __init__(
        self,
        pool: PgPool,
        upstream: Upstream,
        inbound: dict[str, LinkConfig],
        make_link: LinkFactory,
        gate: KeyChangeGate,
        client: HsmClient,
        *,
        poll_seconds: float,
        rekey_hours: int,
        hsm_timeout: float,
    ) -> None:
        self.pool = pool
        self.upstream = upstream
        self.inbound = inbound
        self.make_link = make_link
        self.gate = gate
        self.client = client
        self.poll_seconds = poll_seconds
        self.rekey_hours = rekey_hours
        self.hsm_timeout = hsm_timeout
        self.version = -1
        self.rekey_wanted: set[str] = set()
        self.keyed_at: dict[str, dt.datetime] = {}
        self._nursery: trio.Nursery | None = None
        self._to_start: list[OutboundLink] = []

    @staticmethod
    async def load(pool: PgPool) -> ConfigSnapshot:
        snapshot: ConfigSnapshot = await pool.run(_snapshot)
        return snapshot

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for link in self._to_start:
                nursery.start_soon(link.run)
            self._to_start.clear()
            while True:
                await trio.sleep(self.poll_seconds)
                await self.poll_once()

    async def poll_once(self) -> None:
        try:
            if await self.pool.run(_version) != self.version:
                self.apply(await self.load(self.pool))
                metrics.CONFIG_RELOADS.labels(result="applied").inc()
        except Exception as exc:  # the database may come back; the running configuration stays
            metrics.CONFIG_RELOADS.labels(result="failed").inc()
            log.error("switch configuration read failed", error=repr(exc))
            return
        await self._rekeys()

    # -- links and routes ---------------------------------------------------------------------------------
    def apply(self, snapshot: ConfigSnapshot) -> None:
        """Make the running links, routes and inbound acquirers those of ``snapshot`` (no checkpoint)."""
        links = self.upstream.links
        wanted = {lc.name: lc for lc in snapshot.links if lc.direction == "out" and lc.enabled}
        known = {lc.name: lc for lc in snapshot.links}
        for name, link in list(links.items()):
            lc = wanted.get(name)
            if lc is None:
                del links[name]
                reason = "disabled" if name in known else "removed"
                log.info("link leaves the switch", link=name, reason=reason)
                self._retire(link, reason)
            elif lc.restart_key() != link.config.restart_key():
                changed = [
                    f.name
                    for f in dataclasses.fields(LinkConfig)
                    if getattr(lc, f.name) != getattr(link.config, f.name)
                ]
                links[name] = self._start(lc, link)
                log.info("link restarted", link=name, changed=changed)  # field names only: no keys
                self._retire(link, "restarted")
            elif lc != link.config:
                link.config = lc  # ZMK or acquirer id: read when used, nothing to restart
        for name, lc in wanted.items():
            if name not in links:
                links[name] = self._start(lc, None)
                log.info("link added", link=name, host=lc.host, port=lc.port, connections=lc.connections)
        routes = [r for r in snapshot.routes if r.link in links]
        if sorted(routes, key=_route_key) != sorted(self.upstream.routing.routes, key=_route_key):
            self.upstream.routing = RoutingTable(routes)
            if self.version >= 0:
                log.info("routes changed", routes=len(routes))
        inbound = {lc.institution_id: lc for lc in snapshot.links if lc.direction == "in" and lc.enabled}
        if inbound != self.inbound:
            if self.version >= 0:
                log.info("inbound acquirer links changed", acquirers=sorted(inbound))
            self.inbound.clear()
            self.inbound.update(inbound)
        self.rekey_wanted |= snapshot.rekey
        self.keyed_at = dict(snapshot.keyed_at)
        self.version = snapshot.version

    def _start(self, lc: LinkConfig, previous: OutboundLink | None) -> OutboundLink:
        link = self.make_link(lc, previous)
        if self._nursery is None:
            self._to_start.append(link)
        else:
            self._nursery.start_soon(link.run)
        return link

    def _retire(self, link: OutboundLink, reason: str) -> None:
        if self._nursery is None:  # not running yet: nothing is connected
            return

        async def drain() -> None:
            left = await link.retire(self.upstream.timeout + 1.0)
            log.info("link drained", link=link.name, reason=reason, unanswered=left)
            if link.name not in self.upstream.links:
                metrics.LINK_UP.labels(link=link.name).set(0)
                metrics.LINK_CONNECTIONS.labels(link=link.name).set(0)

        self._nursery.start_soon(drain)

    # -- key change --------------------------------------------------------------------------------------
    async def _rekeys(self) -> None:
        due = set(self.rekey_wanted)
        if self.rekey_hours:
            now = dt.datetime.now(dt.UTC)
            age = dt.timedelta(hours=self.rekey_hours)
            for name, link in self.upstream.links.items():
                keyed = self.keyed_at.get(name)
                if link.config.zmk and keyed is not None and now - keyed >= age:
                    due.add(name)
        for name in sorted(due):
            found = self.upstream.links.get(name)
            if found is None or not found.config.zmk:
                if name in self.rekey_wanted:
                    log.error("key change not possible", link=name, reason="no enabled out link with a ZMK")
                    metrics.LINK_REKEYS.labels(link=name, result="refused").inc()
                    self.rekey_wanted.discard(name)
                    await self._db(_clear_rekey, name)
                continue
            if not found.up:
                continue  # tried again at the next poll
            result = await self.rekey(found)
            self.rekey_wanted.discard(name)
            if result != "changed":
                # a periodic change is tried again later; a requested one ends here (logged, counted)
                retry_at = dt.datetime.now(dt.UTC) + REKEY_RETRY
                self.keyed_at[name] = retry_at - dt.timedelta(hours=self.rekey_hours)
                await self._db(_clear_rekey, name)

    async def rekey(self, link: OutboundLink) -> str:
        """Change the link's ZPK (0800 DE70 101); the result: changed, refused, no_answer or hsm_error."""
        old = link.config
        assert old.zmk is not None
        try:
            if old.scheme == "sm4":
                key = await self.client.generate_sm4_key("001", under=old.zmk, under_tmk=False)
                under_zmk = "S" + (key.under_kek or "")
            else:
                key = await self.client.generate_key(
                    "001", "U", under=old.zmk, under_tmk=False, export_scheme="U"
                )
                under_zmk = key.under_kek or ""
        except HsmError as exc:
            log.error("key change: the HSM refused the new key", link=link.name, error=str(exc))
            metrics.LINK_REKEYS.labels(link=link.name, result="hsm_error").inc()
            return "hsm_error"
        new_zpk = key.under_lmk.upper()
        check = key.check_value.upper()
        log.info("key change started", link=link.name, check_value=check[:6])
        change = self.gate.begin(old.zpk)
        result = "no_answer"
        try:
            if not await self.gate.idle(old.zpk, self.hsm_timeout):
                log.warning("key change: PIN translations still in the HSM", link=link.name)
            with trio.move_on_after(self.upstream.timeout + 1.0):
                for event in link.pending_events():
                    await event.wait()
            code = await self._exchange(link, under_zmk + check)
            if code == "00":
                link.config = dataclasses.replace(link.config, zpk=new_zpk)
                result = "changed"
            elif code is not None:
                result = "refused"
        finally:
            self.gate.end(change, link.config.zpk)
        metrics.LINK_REKEYS.labels(link=link.name, result=result).inc()
        if result != "changed":
            # no_answer: the host may hold the new key; the operator must look (and rekey again)
            log.error("key change failed; the link keeps its ZPK", link=link.name, result=result)
            return result
        while True:  # the host holds the new key now: the database must as well
            try:
                await self.pool.run(_store_zpk, link.name, new_zpk, check)
                break
            except Exception as exc:
                log.error("key change: storing the new ZPK failed; retrying", link=link.name, error=repr(exc))
                await trio.sleep(1.0)
        self.keyed_at[link.name] = dt.datetime.now(dt.UTC)
        log.info("link ZPK changed", link=link.name, check_value=check[:6])
        return result

    async def _exchange(self, link: OutboundLink, de48: str, attempts: int = 3) -> str | None:
        """0800 DE70 101 with DE48, repeated (same key) while unanswered; the 0810's DE39 or None."""
        for _ in range(attempts):
            msg = link.network_message("101")
            msg["48"] = de48
            try:
                answer = await link.request(msg, link.timing.signon_timeout)
            except LinkDown:
                await trio.sleep(link.timing.backoff_min)
                continue
            except LinkTimeout:
                continue
            return str(answer.get("39", ""))
        return None

    async def _db(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            await self.pool.run(fn, *args)
        except Exception as exc:
            log.error("switch configuration write failed", error=repr(exc))


def _route_key(route: Route) -> tuple[str, str, str]:
    return (route.bin_low, route.bin_high, route.link)
