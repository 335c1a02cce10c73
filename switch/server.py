"""`payswitch switch serve`: everything the switch runs, wired together, and its orderly shutdown.

Start: database pool, HSM client, links and routes from the switch tables, outbound links (connect,
sign on; ``ConfigWatcher`` runs them and takes over later changes of links and routes), the journal
writer, the store-and-forward sender, then the listeners (POS 3des, POS sm4, inbound H2H).
SIGTERM/SIGINT: stop accepting and reading, let every request already read finish and be answered
(up to ``shutdown_grace_s``), flush the journal, leave the store-and-forward queue in the database,
exit 0.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field

import trio

from hsm_sim.client import HsmClient
from ops.config import Config
from ops.logs import get_logger
from ops.pgpool import PgPool
from specs.codec import codec_for
from specs.framing import H2H_MAX_FRAME, POS_MAX_FRAME
from switch import metrics
from switch.acquirer import AcquirerService
from switch.hsm import ClientHsm, HsmRefused, HsmUnavailable, SwitchHsm
from switch.journal import JournalWriter
from switch.links import LinkConfig, LinkTiming, MacFn, MacsFn, OutboundLink, VerifiesFn, VerifyFn
from switch.listener import Limits, Listener
from switch.mapping import set_local_zone
from switch.nodes import Node, dead_on_this_host, node_id_of
from switch.pos import PosService
from switch.routing import RoutingTable
from switch.saf import SafQueue
from switch.sessions import Registry
from switch.store import Store
from switch.upstream import ConfigWatcher, KeyChangeGate, Upstream

log = get_logger(__name__)


@dataclass
class Ports:
    pos_3des: int = 0
    pos_sm4: int = 0
    h2h: int = 0


@dataclass
class Switch:
    config: Config
    pool: PgPool
    listeners: list[Listener] = field(default_factory=list)
    links: dict[str, OutboundLink] = field(default_factory=dict)
    stopping: trio.Event = field(default_factory=trio.Event)

    def stop(self) -> None:
        self.stopping.set()

    async def run(self, *, task_status: trio.TaskStatus[Ports] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config.switch
        set_local_zone(self.config.clearing.timezone)  # DE12/DE13: the programme's wall clock
        store = Store(self.pool, node_id_of(cfg.node_id))
        snapshot = await ConfigWatcher.load(self.pool)  # links (with ZMKs) and routes; then polled
        async with HsmClient.from_config(self.config.hsm) as client:
            hsm = KeyChangeGate(ClientHsm(client))
            timing = LinkTiming(echo_interval=float(cfg.link_echo_s))
            saf = SafQueue(
                store,
                self.links,
                retry_seconds=float(cfg.saf_retry_s),
                timeout=cfg.request_timeout_ms / 1000,
                keep_answered_seconds=RETRANSMISSION_WINDOW_S,
            )
            # the lease row first: its slot fixes the STANs of the links made below (switch/nodes.py)
            node = Node(store, saf, lease_seconds=float(cfg.lease_seconds), acquirer_id=cfg.institution_id)
            stan_slot = await node.register()

            def make_link(lc: LinkConfig, previous: OutboundLink | None) -> OutboundLink:
                return OutboundLink(
                    lc,
                    codec_for("h2h", lc.scheme),
                    cfg.institution_id,
                    timing=timing,
                    mac=_link_mac(hsm, lc),
                    verify=_link_verify(hsm, lc),
                    macs=_link_macs(hsm, lc),
                    verifies=_link_verifies(hsm, lc),
                    stan_from=previous,
                    stan_slot=stan_slot,
                )

            inbound: dict[str, LinkConfig] = {}
            journal = JournalWriter(store.insert_journal)
            timeout = cfg.request_timeout_ms / 1000
            upstream = Upstream(
                self.links, RoutingTable([]), saf, acquirer_id=cfg.institution_id, timeout=timeout
            )
            watcher = ConfigWatcher(
                self.pool,
                upstream,
                inbound,
                make_link,
                hsm,
                client,
                poll_seconds=float(cfg.config_poll_s),
                rekey_hours=cfg.link_rekey_hours,
                hsm_timeout=self.config.hsm.timeout_ms / 1000 + 1.0,
            )
            watcher.apply(snapshot)
            routes = upstream.routing.routes
            registry = Registry(store.load_terminal)
            saf.forget = registry.forget  # a node taken over: its terminals' copies here are stale
            saf.siblings = lambda name: upstream.routing.siblings(name)  # the table of the moment
            pos_limits = Limits(
                cfg.max_connections,
                cfg.max_in_flight,
                float(cfg.idle_timeout_s),
                POS_MAX_FRAME,
                zero_length_closes=True,
                max_per_source=cfg.max_per_source,
                frame_timeout=float(cfg.frame_timeout_s),
            )
            h2h_limits = Limits(
                cfg.max_connections,
                cfg.max_in_flight,
                float(cfg.idle_timeout_s),
                H2H_MAX_FRAME,
                zero_length_closes=False,
                max_per_source=cfg.max_per_source,
                frame_timeout=float(cfg.frame_timeout_s),
            )
            services: list[tuple[Listener, int]] = []
            for profile, port in (("3des", cfg.pos_3des_port), ("sm4", cfg.pos_sm4_port)):
                service = PosService(
                    profile,
                    hsm=hsm,
                    store=store,
                    journal=journal,
                    registry=registry,
                    upstream=upstream,
                    acquirer_id=cfg.institution_id,
                    signon_per_minute=cfg.signon_per_minute,
                )
                services.append((Listener(f"pos-{profile}", service.handle, pos_limits), port))
            acquirers = AcquirerService(
                hsm=hsm,
                store=store,
                journal=journal,
                upstream=upstream,
                inbound=inbound,
                institution_id=cfg.institution_id,
                allow_remote_no_mac=cfg.allow_remote_no_mac,
            )
            services.append((Listener("h2h", acquirers.handle, h2h_limits), cfg.h2h_port))
            self.listeners = [listener for listener, _ in services]
            metrics.IN_FLIGHT.set_function(lambda: sum(listener.in_flight for listener in self.listeners))

            # Crash recovery, before any terminal is served and with the links made: requests an
            # earlier process wrote ahead and never answered get their 0420 queued (once). Several
            # nodes: this node's own rows and those of switch processes of this host that are gone.
            await saf.recover(cfg.institution_id, dead_on_this_host, stan_slot)
            async with trio.open_nursery() as background:
                background.start_soon(node.run, _fenced)
                background.start_soon(journal.run)
                background.start_soon(saf.run)
                background.start_soon(watcher.run)  # runs the links; takes over config changes
                # `terminal disable` at the host: refused from the terminal's next request
                background.start_soon(_catalog_poll, store, registry, float(cfg.config_poll_s))
                async with trio.open_nursery() as front:
                    ports = [
                        await front.start(listener.serve, cfg.listen, port) for listener, port in services
                    ]
                    log.info(
                        "switch listening",
                        pos_3des=ports[0],
                        pos_sm4=ports[1],
                        h2h=ports[2],
                        links=sorted(self.links),
                        routes=len(routes),
                        node=store.node_id,
                        stan_slot=stan_slot,
                    )
                    task_status.started(Ports(*ports))
                    await self.stopping.wait()
                    log.info("switch stopping: draining connections")
                    for listener in self.listeners:
                        listener.drain()
                    front.cancel_scope.deadline = trio.current_time() + cfg.shutdown_grace_s
                await journal.flush()
                background.cancel_scope.cancel()
        log.info("switch stopped")


# Answered write-ahead rows are kept this long: a retransmission another node handled first conflicts
# with their unique key instead of going upstream twice (switch/README.md, "Several switch nodes").
RETRANSMISSION_WINDOW_S = 300.0


def _fenced() -> None:
    # Another node took this one over and reversed its requests in flight: answering any of them now
    # would tell a terminal "approved" for a reversed purchase. Stop at once, answering nothing.
    os._exit(75)


async def _catalog_poll(store: Store, registry: Registry, seconds: float) -> None:
    """Every ``seconds`` the host's host_catalog.version; when it moved, the state of every terminal in
    memory is read again (one query), so a terminal disabled while signed on is refused 58 from its
    next request, not only at its next sign-on (a suspended merchant's requests go on to the host,
    which declines them 03 with its reason)."""
    seen: int | None = None
    while True:
        await trio.sleep(seconds)
        try:
            version = await store.catalog_version()
            if version == seen:
                continue
            terminals = registry.loaded()
            if seen is not None and terminals:
                states = await store.terminal_states(sorted({t.terminal_id for t in terminals}))
                changed = registry.set_disabled(states)
                if changed:
                    log.info("terminal states changed at the host", terminals=changed, version=version)
            seen = version
        except Exception as exc:  # the database may be away: tried again at the next poll
            log.debug("host catalogue poll failed", error=repr(exc))


def _link_mac(hsm: SwitchHsm, lc: LinkConfig) -> MacFn | None:
    zak = lc.zak
    if not zak:
        return None

    async def mac(data: bytes) -> bytes:
        return await hsm.link_mac(lc.scheme, zak, data)

    return mac


def _link_verify(hsm: SwitchHsm, lc: LinkConfig) -> VerifyFn | None:
    zak = lc.zak
    if not zak:
        return None

    async def verify(data: bytes, mac: bytes) -> bool:
        try:
            return await hsm.verify_link_mac(zak, data, mac)
        except (HsmRefused, HsmUnavailable):
            return False

    return verify


def _link_macs(hsm: SwitchHsm, lc: LinkConfig) -> MacsFn | None:
    """The link's MACs many at a time through the same HSM (and key-change gate): one exchange per
    writer pass instead of one per request (switch/links.py)."""
    zak = lc.zak
    if not zak:
        return None

    async def macs(data: list[bytes]) -> list[bytes | None]:
        return await hsm.link_macs(zak, data)

    return macs


def _link_verifies(hsm: SwitchHsm, lc: LinkConfig) -> VerifiesFn | None:
    """The answers' MAC checks of one reader pass in one exchange; an unreachable HSM fails them all
    (as ``_link_verify`` fails one)."""
    zak = lc.zak
    if not zak:
        return None

    async def verifies(items: list[tuple[bytes, bytes]]) -> list[bool]:
        return await hsm.verify_link_macs(zak, items)

    return verifies


async def serve(config: Config, pool: PgPool) -> None:
    """Run until SIGTERM or SIGINT; returns once in-flight requests are answered."""
    switch = Switch(config, pool)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for _ in signals:
                    switch.stop()
                    return

            nursery.start_soon(watch)
            await switch.run()
            nursery.cancel_scope.cancel()
