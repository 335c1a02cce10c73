"""Store-and-forward reversal advices, durable in PostgreSQL.

A request whose answer did not come in time may have been posted upstream, so it is reversed: an
advice is written to ``switch_saf`` (committed before the terminal hears 98 / the acquirer 91), then
sent as 0420 and repeated as 0421 every ``retry_seconds`` until a 0430 arrives, whatever its code. The
queue survives restarts: on start every undone row is due again.
"""

from __future__ import annotations

import json
from typing import Any

import trio

from ops.logs import get_logger
from switch import metrics
from switch.links import LinkDown, LinkTimeout, OutboundLink
from switch.mapping import Message, original_data, transmission_time
from switch.store import Store

log = get_logger(__name__)


def reversal_advice(original: Message, link: OutboundLink, reason: str) -> Message:
    """The 0420 for an upstream request ``original`` (no PAN, PIN or track: it is stored)."""
    advice: Message = {"t": "0420"}
    for f in ("3", "4", "32", "37", "41", "42", "49"):
        if f in original:
            advice[f] = original[f]
    advice["7"] = transmission_time()
    advice["11"] = f"{link.next_stan():06d}"
    advice["32"] = link.acquirer_id
    advice["39"] = reason
    advice["90"] = original_data(
        str(original["t"]), str(original["11"]), str(original["7"]), str(original.get("32", link.acquirer_id))
    )
    return advice


class SafQueue:
    def __init__(
        self,
        store: Store,
        links: dict[str, OutboundLink],
        *,
        retry_seconds: float,
        timeout: float,
        parallel: int = 16,
    ) -> None:
        self.store = store
        self.links = links
        self.retry_seconds = retry_seconds
        self.timeout = timeout
        self.parallel = parallel
        self._wake = trio.Event()
        self._sending: set[int] = set()

    async def add(self, link: str, advice: Message, reason: str) -> None:
        """Make the advice durable (returns after the commit) and wake the sender."""
        await self.store.saf_add(link, advice, reason)
        metrics.SAF_DEPTH.inc()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        metrics.SAF_DEPTH.set(await self.store.saf_depth())
        async with trio.open_nursery() as nursery:
            for link in self.links.values():
                nursery.start_soon(self._wake_on_up, link)
            while True:
                with trio.move_on_after(max(self.retry_seconds / 2, 0.2)):
                    await self._wake.wait()
                self._wake = trio.Event()
                up = [name for name, link in self.links.items() if link.up]
                if not up:
                    continue
                try:
                    due = await self.store.saf_due(up, 200)
                except Exception as exc:
                    log.error("store-and-forward read failed", error=str(exc))
                    continue
                limiter = trio.CapacityLimiter(self.parallel)
                async with trio.open_nursery() as batch:
                    for row in due:
                        if row["id"] not in self._sending:
                            self._sending.add(row["id"])
                            batch.start_soon(self._send, row, limiter)

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
                link = self.links[row["link"]]
                metrics.SAF_SENT.labels(mti=mti).inc()
                try:
                    answer = await link.request(message, self.timeout)
                except (LinkDown, LinkTimeout):
                    await self.store.saf_result(saf_id, False, None, self.retry_seconds)
                    return
                await self.store.saf_result(saf_id, True, str(answer.get("39", "")), self.retry_seconds)
                metrics.SAF_DEPTH.dec()
                log.info(
                    "reversal advice delivered", saf_id=saf_id, link=link.name, mti=mti, code=answer.get("39")
                )
        except Exception as exc:
            log.error("store-and-forward send failed", saf_id=saf_id, error=str(exc))
        finally:
            self._sending.discard(saf_id)
