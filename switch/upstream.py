"""The way to the issuers: BIN routing, the outbound links, timeouts and reversal of unknown outcomes.

Shared by the POS service and the inbound acquirer service: both hand over an H2H request for a PAN
and get back the host's answer, or a decision made here (14 no route, 91 link down, timeout).
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from ops.logs import get_logger
from switch import metrics
from switch.links import LinkDown, LinkTimeout, OutboundLink
from switch.mapping import Message
from switch.routing import RoutingTable
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

    def route(self, pan: str) -> OutboundLink | None:
        name = self.routing.lookup(pan)
        return None if name is None else self.links.get(name)

    async def send(self, link: OutboundLink, request: Message, *, reverse_on_timeout: bool = True) -> Outcome:
        """Send ``request`` on ``link``. On timeout a 0420 is made durable before returning."""
        start = trio.current_time()
        try:
            answer = await link.request(request, self.timeout)
        except LinkDown:
            return Outcome(None, "91", False, 0.0)
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
