"""The one connection policy of every listener (switch POS and H2H, host, HSM, /metrics).

Anyone who reaches a port can open sockets and keep them: without limits a few thousand idle sockets
lock every terminal out, and a byte every few seconds keeps a connection forever. A
:class:`ConnectionGuard` per listener holds:

- a cap on the listener's connections and a cap per source address (a flood from one address is
  refused at its own cap and cannot fill the listener);
- an idle timeout that only a complete frame (or an answer sent) resets, never a stray byte;
- a frame timeout: once the first byte of a frame is buffered, the whole frame must arrive within it
  (slowloris);
- when the listener is full, the connection that has been open longest without ever completing a
  frame gives way to the newcomer (an attacker's idle socket, never a working terminal's session); only
  when every connection has completed a frame is the newcomer refused.

Deadlines are fields of a :class:`Slot` checked by one periodic task (:meth:`ConnectionGuard.run` or
:meth:`sweep`): a cancel scope per read costs ~15 µs on the hot path, a field store a few ns. Every
refusal and close is counted in ``payswitch_connections_closed_total{listener,reason}``.

The guard owns no sockets: ``admit`` gets a ``close`` callable per connection (cancel its reader's
scope, shut its socket) and the listener calls :meth:`ConnectionGuard.release` when the connection
ended. Not thread-safe by itself: a threaded server holds a lock around its calls (ops.metrics).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter

from ops.logs import get_logger

log = get_logger(__name__)

CLOSED = Counter(
    "payswitch_connections_closed_total",
    "Connections refused or closed by the connection guard, by listener and reason "
    "(full, per_source, evicted, idle, frame_timeout).",
    ["listener", "reason"],
)

REASONS = ("full", "per_source", "evicted", "idle", "frame_timeout")


@dataclass(frozen=True)
class GuardLimits:
    max_connections: int
    max_per_source: int
    idle_timeout: float  # seconds without a complete frame (and nothing in flight): close
    frame_timeout: float  # seconds from a frame's first byte to its last: else close


class Slot:
    """One admitted connection: its source, its deadlines, how to close it.

    The reader calls :meth:`framed` when it took complete frames out of its buffer and
    :meth:`partial` when bytes of an incomplete frame stay buffered (or none do)."""

    __slots__ = ("busy", "close", "closing", "completed", "frame_started", "last_frame", "source")

    def __init__(self, source: str, now: float, close: Callable[[], None],
                 busy: Callable[[], bool] | None) -> None:
        self.source = source
        self.close = close
        self.busy = busy  # requests in flight: not idle, whatever the clock says
        self.last_frame = now  # the idle clock starts at accept
        self.frame_started: float | None = None
        self.completed = False  # a frame ever completed: never evicted for a newcomer
        self.closing = False

    def framed(self, now: float, pending: bool) -> None:
        """Complete frames were read; ``pending``: bytes of the next frame are already buffered."""
        self.last_frame = now
        self.completed = True
        self.frame_started = now if pending else None

    def partial(self, now: float, pending: bool) -> None:
        """Bytes arrived without completing a frame: the frame clock starts at the first of them."""
        if not pending:
            self.frame_started = None
        elif self.frame_started is None:
            self.frame_started = now


class ConnectionGuard:
    def __init__(self, listener: str, limits: GuardLimits) -> None:
        self.listener = listener
        self.limits = limits
        self.slots: set[Slot] = set()
        self.per_source: dict[str, int] = {}
        # Connections that never completed a frame, oldest first (a dict keeps insertion order): the
        # first is the one evicted when the listener is full, found in O(1) under a flood.
        self._fresh: dict[Slot, None] = {}
        self._counters = {reason: CLOSED.labels(listener=listener, reason=reason) for reason in REASONS}

    def __len__(self) -> int:
        return len(self.slots)

    def admit(self, source: str, now: float, close: Callable[[], None],
              busy: Callable[[], bool] | None = None) -> Slot | None:
        """A slot for a new connection from ``source``, or None: refuse it (close the socket at once)."""
        limits = self.limits
        if self.per_source.get(source, 0) >= limits.max_per_source:
            self._count("per_source", source)
            return None
        if len(self.slots) >= limits.max_connections:
            victim = self._oldest_fresh()
            if victim is None:
                self._count("full", source)
                return None
            self._close(victim, "evicted")
            self._forget(victim)  # its place is the newcomer's now, before its reader has unwound
        slot = Slot(source, now, close, busy)
        self.slots.add(slot)
        self._fresh[slot] = None
        self.per_source[source] = self.per_source.get(source, 0) + 1
        return slot

    def release(self, slot: Slot) -> None:
        """The connection ended (idempotent: an evicted slot was forgotten already)."""
        if slot in self.slots:
            self._forget(slot)

    def sweep(self, now: float) -> int:
        """Close connections past their idle or frame deadline; how many were closed."""
        idle, frame_limit = self.limits.idle_timeout, self.limits.frame_timeout
        fresh = self._fresh
        closed = 0
        for slot in list(self.slots):
            if slot.completed and slot in fresh:
                del fresh[slot]  # (moved out lazily: the reader only sets a flag on the hot path)
            if slot.closing:
                continue
            if slot.frame_started is not None and now - slot.frame_started > frame_limit:
                self._close(slot, "frame_timeout")
                closed += 1
            elif now - slot.last_frame > idle and not (slot.busy is not None and slot.busy()):
                self._close(slot, "idle")
                closed += 1
        return closed

    def period(self) -> float:
        """How often to sweep: a quarter of the shortest deadline, at most once a second."""
        return min(1.0, self.limits.idle_timeout / 4, self.limits.frame_timeout / 4)

    async def run(self) -> None:
        """Sweep forever on trio's clock (start it in the listener's nursery)."""
        import trio

        period = self.period()
        while True:
            await trio.sleep(period)
            self.sweep(trio.current_time())

    def _oldest_fresh(self) -> Slot | None:
        """The connection open longest that never completed a frame (and is not closing already);
        the ones passed over are dropped from the list for good, so a flood costs O(1) per accept."""
        fresh = self._fresh
        stale: list[Slot] = []
        victim = None
        for slot in fresh:
            if slot.completed or slot.closing:
                stale.append(slot)
            else:
                victim = slot
                break
        for slot in stale:
            del fresh[slot]
        return victim

    def _forget(self, slot: Slot) -> None:
        self.slots.discard(slot)
        self._fresh.pop(slot, None)
        left = self.per_source.get(slot.source, 1) - 1
        if left > 0:
            self.per_source[slot.source] = left
        else:
            self.per_source.pop(slot.source, None)

    def _close(self, slot: Slot, reason: str) -> None:
        slot.closing = True
        self._count(reason, slot.source)
        try:
            slot.close()
        except Exception as exc:  # a socket already gone: the connection is ending anyway
            log.debug("guard close failed", listener=self.listener, error=repr(exc))

    def _count(self, reason: str, source: str) -> None:
        self._counters[reason].inc()
        # debug, not warning: a flood must not become a flood of log lines (the counter says how many)
        log.debug("connection guard", listener=self.listener, reason=reason, source=source)


def source_of(address: object) -> str:
    """The source key of a peer address (``getpeername()``): its host part, without the port."""
    if isinstance(address, tuple) and address:
        return str(address[0])
    return str(address)
