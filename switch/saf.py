"""Store-and-forward reversal advices, durable in PostgreSQL.

A request whose answer did not come in time may have been posted upstream, so it is reversed: an
advice is written to ``switch_saf`` (committed before the terminal hears 98 / the acquirer 91), then
sent as 0420 and repeated as 0421 every ``retry_seconds`` until a 0430 arrives, whatever its code. The
queue survives restarts: on start every undone row is due again.

Crash safety: a request that moves money is written ahead (``switch_write_ahead``) before it goes
upstream, and its journal row is its answer. :meth:`SafQueue.recover` runs at start, before any
terminal is served: every written-ahead request of an earlier process without a journal row gets its
0420 queued here and a journal row (98 to a terminal, 91 to an acquirer, 00 for a reversal: as after a
timeout), in one transaction that also deletes the write-ahead rows, so recovery run twice queues
nothing twice. :meth:`SafQueue.run` deletes the write-ahead rows of answered requests every
``prune_seconds`` (kept ``keep_answered_seconds``: another node's retransmission conflicts with them).

Several nodes (switch/nodes.py): recovery at start takes this node's rows, those of nodes dead on this
host and rows without a node; :meth:`SafQueue.recover_node` those of a node whose lease lapsed. Due
advices are claimed (``switch_saf.claim_*``) before they are sent, so no two nodes send one at once.
"""

from __future__ import annotations

import datetime
import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import trio

from ops.logs import get_logger
from switch import metrics
from switch.journal import durably
from switch.links import LinkDown, LinkTimeout, OutboundLink, slotted_stan
from switch.mapping import Message, local_time_of, original_data, transmission_time
from switch.store import Recovered, Store

log = get_logger(__name__)


# Write-ahead rows of answered requests are kept this long after a prune pass that may have seen them
# unanswered (longer than any request waits for its answer and its journal commit).
PRUNE_OVERLAP_SECONDS = 120.0


def reversal_advice(original: Message, link: OutboundLink, reason: str) -> Message:
    """The 0420 for an upstream request ``original`` (no PAN, PIN or track: it is stored)."""
    return _advice(original, link.next_stan(), link.acquirer_id, reason)


def _advice(original: Message, stan: int, acquirer_id: str, reason: str) -> Message:
    advice: Message = {"t": "0420"}
    # DE12/13: the original's terminal local time, which the clearing file reports for the reversal.
    for f in ("3", "4", "12", "13", "32", "37", "41", "42", "49"):
        if f in original:
            advice[f] = original[f]
    advice["7"] = transmission_time()
    advice["11"] = f"{stan:06d}"
    advice["32"] = acquirer_id
    advice["39"] = reason
    advice["90"] = original_data(
        str(original["t"]), str(original["11"]), str(original["7"]), str(original.get("32", acquirer_id))
    )
    return advice


def write_ahead_original(row: Any) -> Message:
    """The upstream request of a write-ahead row, as much of it as its reversal advice needs."""
    original: Message = {
        "t": row["link_mti"],
        "7": row["link_de7"],
        "11": row["link_stan"],
        "32": row["link_de32"],
    }
    for f, column in (("3", "proc_code"), ("37", "rrn"), ("41", "terminal_id"), ("42", "merchant_id")):
        if row[column] is not None:
            original[f] = row[column]
    if row["amount"] is not None:
        original["4"] = f"{row['amount']:012d}"
    if row["currency"] is not None:
        original["49"] = row["currency"]
    # A terminal's request: its DE12/13 were the local time of its DE7 (the original's, for a forwarded
    # reversal: DE90 holds it). An acquirer's came from its terminal and were not kept.
    de7 = str(row["reverses"])[10:20] if row["reverses"] else str(row["link_de7"])
    local = local_time_of(de7) if str(row["channel"]).startswith("pos") else None
    if local is not None:
        original["12"], original["13"] = local
    return original


def recovered_journal_row(row: Any) -> tuple[Any, ...]:
    """The journal row of a written-ahead request whose answer died with the process: what a timeout
    would have answered (98 to a terminal, 91 to an acquirer; 00 to a reversal, now owned by SAF)."""
    reversal = str(row["mti"]).startswith("04")
    code = "00" if reversal else ("91" if str(row["channel"]).startswith("h2h") else "98")
    return (
        row["dedup_key"],
        row["channel"],
        row["mti"],
        row["txn_type"],
        row["proc_code"],
        row["terminal_id"],
        row["merchant_id"],
        row["batch_no"],
        row["stan"],
        row["amount"],
        row["currency"],
        row["pan_masked"],
        row["rrn"],
        None,
        code,
        row["link"],
        row["link_mti"],
        row["link_stan"],
        row["link_de7"],
        row["link_de32"],
        row["original"],
        0,
        0,
        0,
        "{}",
        "recovered_after_restart",
    )


def recovered_advice_row(row: Any) -> tuple[Any, ...]:
    """The journal row of an offline advice unanswered when the switch stopped: 98 and no reversal (an
    advice is repeated, never reversed: specs/README.md, "Offline sales"); its key is not the advice's,
    so the terminal's retransmission goes upstream again and journals its own answer."""
    journal = list(recovered_journal_row(row))
    journal[0] = f"{row['dedup_key']}|98|{time.time_ns()}"
    journal[-1] = "advice_recovered_after_restart"
    return tuple(journal)


class SafQueue:
    def __init__(
        self,
        store: Store,
        links: dict[str, OutboundLink],
        *,
        retry_seconds: float,
        timeout: float,
        parallel: int = 16,
        prune_seconds: float = 30.0,
        keep_answered_seconds: float = 0.0,
    ) -> None:
        self.store = store
        self.links = links
        self.retry_seconds = retry_seconds
        self.timeout = timeout
        self.parallel = parallel
        self.prune_seconds = prune_seconds
        self.keep_answered_seconds = keep_answered_seconds
        # called with (DE41, DE42) of each terminal request recovered: this node's copy of the terminal
        # is stale (it would not know the recovered 98), so it is read again at its next request
        self.forget: Callable[[str, str], None] = lambda _tid, _mid: None
        # The other links of a link's route groups (switch.server: the current routing table's
        # ``siblings``): hosts sharing one ledger, so a reversal advice whose own link is down goes over
        # one of them (any of those hosts can undo the original) instead of waiting for the dead host.
        self.siblings: Callable[[str], tuple[str, ...]] = lambda _link: ()
        self._prune_since: Any = None  # start of the previous prune pass, minus the overlap
        self._wake = trio.Event()
        self._sending: set[int] = set()

    async def add(self, link: str, advice: Message, reason: str) -> None:
        """Make the advice durable (returns after the commit, however long the database is away) and
        wake the sender."""
        await durably(lambda: self.store.saf_add(link, advice, reason), "reversal advice write", link=link)
        metrics.SAF_DEPTH.inc()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def _recoverer(self, acquirer_id: str, stan_slot: int) -> Callable[[Any], Recovered]:
        spare = itertools.count(int(time.time() * 1000) % 999_999)  # a link no longer configured

        def recover(row: Any) -> Recovered:
            # Runs on the pool's side: only plain objects (a link's STAN counter is an itertools.count).
            if row["txn_type"] == "offline":
                return row["link"], None, recovered_advice_row(row)  # never reversed: sent again
            link = self.links.get(row["link"])
            stan = link.next_stan() if link is not None else slotted_stan(next(spare), stan_slot)
            advice = _advice(
                write_ahead_original(row), stan, link.acquirer_id if link is not None else acquirer_id, "98"
            )
            if row["reverses"]:
                advice["90"] = row["reverses"]  # a reversal forwarded upstream: its advice names the original
            return row["link"], advice, recovered_journal_row(row)

        return recover

    async def recover(
        self, acquirer_id: str, dead: Callable[[str], bool] = lambda _: False, stan_slot: int = 0
    ) -> int:
        """Queue a 0420 for every request an earlier process wrote ahead and never answered (see the
        module docstring); returns how many. Call before serving terminals, with the links made.
        ``acquirer_id``: DE32 of an advice whose link is no longer configured; ``dead``: whether a node
        id is a process of this host that no longer runs (switch/nodes.py)."""
        lost = await self.store.recover_write_ahead(self._recoverer(acquirer_id, stan_slot), dead)
        self._log_recovered(lost)
        self._prune_since = None
        return len(lost)

    async def recover_node(
        self, acquirer_id: str, node_id: str, epoch: int, lapse_seconds: float, stan_slot: int = 0
    ) -> int | None:
        """Take over the lapsed node ``node_id`` (lease ``epoch``) and reverse what it left in flight, as
        start-up recovery does; None when it renewed meanwhile or another node took it over."""
        lost = await self.store.recover_node(
            self._recoverer(acquirer_id, stan_slot), node_id, epoch, lapse_seconds
        )
        if lost is None:
            return None
        self._log_recovered(lost)
        return len(lost)

    def _log_recovered(self, lost: list[Any]) -> None:
        for row in lost:
            if str(row["channel"]).startswith("pos") and row["terminal_id"] and row["merchant_id"]:
                self.forget(row["terminal_id"], row["merchant_id"])
            offline = row["txn_type"] == "offline"  # an offline advice: the terminal sends it again
            log.warning(
                "request in flight when the switch stopped: "
                + ("offline advice, not reversed" if offline else "reversal advice queued"),
                link=row["link"],
                mti=row["link_mti"],
                stan=row["link_stan"],
                de7=row["link_de7"],
                rrn=row["rrn"],
                terminal=row["terminal_id"],
            )
        if lost:
            self._wake.set()

    async def prune(self) -> int:
        """Delete the write-ahead rows of answered requests made since the previous pass (minus an
        overlap covering requests that were still in flight then); returns how many."""
        deleted, now = await self.store.prune_write_ahead(self._prune_since, self.keep_answered_seconds)
        overlap = PRUNE_OVERLAP_SECONDS + self.keep_answered_seconds
        self._prune_since = now - datetime.timedelta(seconds=overlap)
        return deleted

    async def _prune_loop(self) -> None:
        while True:
            await trio.sleep(self.prune_seconds)
            try:
                deleted = await self.prune()
            except Exception as exc:
                log.error("write-ahead prune failed", error=str(exc))
                continue
            if deleted:
                log.debug("write-ahead rows pruned", rows=deleted)

    async def run(self) -> None:
        metrics.SAF_DEPTH.set(await self.store.saf_depth())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._prune_loop)
            for link in self.links.values():
                nursery.start_soon(self._wake_on_up, link)
            while True:
                with trio.move_on_after(max(self.retry_seconds / 2, 0.2)):
                    await self._wake.wait()
                self._wake = trio.Event()
                up = [name for name in self.links if self._deliverer(name) is not None]
                if not up:
                    continue
                try:
                    due = await self.store.saf_due(up, 200, self._claim_seconds)
                except Exception as exc:
                    log.error("store-and-forward read failed", error=str(exc))
                    continue
                limiter = trio.CapacityLimiter(self.parallel)
                async with trio.open_nursery() as batch:
                    for row in due:
                        if row["id"] not in self._sending:
                            self._sending.add(row["id"])
                            batch.start_soon(self._send, row, limiter)

    def _deliverer(self, name: str) -> OutboundLink | None:
        """The link a reversal advice queued for ``name`` goes over now: its own when up, else the first
        up link of its route groups, else None."""
        own = self.links.get(name)
        if own is not None and own.up:
            return own
        for other in self.siblings(name):
            link = self.links.get(other)
            if link is not None and link.up:
                return link
        return None

    @property
    def _claim_seconds(self) -> float:
        # a claim outlives the rows' sends (at most ``parallel`` at once of 200, each up to ``timeout``)
        return 200 / self.parallel * self.timeout + 10.0

    async def _wake_on_up(self, link: OutboundLink) -> None:
        while True:
            await link.up_event.wait()
            self._wake.set()
            while link.up:
                await trio.sleep(0.5)

    async def _send(self, row: Any, limiter: trio.CapacityLimiter) -> None:
        saf_id: int = row["id"]
        try:
            async with limiter:
                message = row["message"]
                if isinstance(message, str):
                    message = json.loads(message)
                mti = "0420" if row["attempts"] == 0 else "0421"
                message["t"] = mti
                link = self._deliverer(row["link"])
                if link is None:  # down meanwhile, and no other link of its group is up: later
                    await self.store.saf_result(saf_id, False, None, self.retry_seconds, row["claim_epoch"])
                    return
                metrics.SAF_SENT.labels(mti=mti).inc()
                epoch = row["claim_epoch"]
                try:
                    answer = await link.request(message, self.timeout)
                except (LinkDown, LinkTimeout):
                    await self.store.saf_result(saf_id, False, None, self.retry_seconds, epoch)
                    return
                code = str(answer.get("39", ""))
                await self.store.saf_result(saf_id, True, code, self.retry_seconds, epoch)
                metrics.SAF_DEPTH.dec()
                log.info(
                    "reversal advice delivered", saf_id=saf_id, link=link.name, mti=mti, code=answer.get("39")
                )
        except Exception as exc:
            log.error("store-and-forward send failed", saf_id=saf_id, error=str(exc))
        finally:
            self._sending.discard(saf_id)
