"""Several `switch serve` processes on one database: who this node is, its lease, and the takeover of a
dead node's write-ahead (switch/README.md, "Several switch nodes").

Every node holds a row in ``switch_nodes`` (migration 0011), renewed every ``lease_seconds / 3``. Its
``slot`` (0-9) is the residue of the link STANs it draws (``links.slotted_stan``), so two nodes never
send the same DE7 + DE11 to a host. A node whose lease lapsed ``3 x lease_seconds`` ago is taken over by
a live node that has itself renewed without a gap for that long: in one transaction its lease row is
deleted (the fencing: its next renewal finds none) and its written-ahead requests without an answer are
reversed exactly as start-up recovery does (``SafQueue.recover_node``). A node that finds itself taken
over stops at once: its requests in flight were reversed, it must not answer them.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import trio

from ops.logs import get_logger
from switch.saf import SafQueue
from switch.store import Store

log = get_logger(__name__)

LAPSES = 3  # leases a node must be silent before another takes over its write-ahead


def node_id_of(configured: str) -> str:
    """``switch.node_id``, or ``<hostname>:<pid>`` when it is empty (the shared convention)."""
    return configured or f"{socket.gethostname()}:{os.getpid()}"


def dead_on_this_host(node_id: str) -> bool:
    """Whether ``node_id`` is ``<this hostname>:<pid>`` of a process that no longer runs: its rows are
    recovered at start at once, without waiting out its lease (a restart on the same machine)."""
    host, _, pid = node_id.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # a live process of another user
        return False
    return False


class Node:
    """This node's lease: registered before the links are made (the slot fixes their STANs), then
    renewed by :meth:`run`, which also takes over lapsed nodes."""

    def __init__(self, store: Store, saf: SafQueue, *, lease_seconds: float, acquirer_id: str) -> None:
        assert store.node_id is not None
        self.store = store
        self.saf = saf
        self.node_id: str = store.node_id
        self.lease_seconds = lease_seconds
        self.lapse_seconds = LAPSES * lease_seconds
        self.acquirer_id = acquirer_id
        self.slot = 0
        self.epoch = 0

    async def register(self) -> int:
        """Take this node's lease row (a known id keeps its slot, epoch + 1); returns the STAN slot."""
        self.slot, self.epoch = await self.store.register_node(self.lease_seconds, self.lapse_seconds)
        log.info("switch node registered", node=self.node_id, slot=self.slot, epoch=self.epoch)
        return self.slot

    async def run(self, fenced: Callable[[], None]) -> None:
        """Renew every third of the lease; ``fenced`` is called when another node took this one over.
        A database away is waited out (nobody can take over meanwhile: see ``_recover_node``)."""
        while True:
            await trio.sleep(self.lease_seconds / 3)
            try:
                renewed = await self.store.renew_node(self.epoch, self.lease_seconds)
            except Exception as exc:
                log.warning("switch node lease renewal failed", node=self.node_id, error=str(exc))
                continue
            if not renewed:
                log.critical("switch node taken over by another; stopping", node=self.node_id)
                fenced()
                return
            await self.take_over_lapsed()

    async def take_over_lapsed(self) -> int:
        """Recover the write-ahead of every node lapsed ``lapse_seconds``; returns how many nodes."""
        taken = 0
        try:
            lapsed = await self.store.lapsed_nodes(self.lapse_seconds)
            for node_id, epoch in lapsed:
                if node_id == self.node_id:
                    continue
                recovered = await self.saf.recover_node(
                    self.acquirer_id, node_id, epoch, self.lapse_seconds, self.slot
                )
                if recovered is not None:
                    taken += 1
                    log.warning("lapsed switch node taken over", node=node_id, reversed=recovered)
        except Exception as exc:
            log.warning("switch node takeover failed", error=str(exc))
        return taken
