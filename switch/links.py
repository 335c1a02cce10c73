"""Outbound H2H links: several TCP connections per link, many requests in flight on each.

A request is matched to its answer on DE7 + DE11 + DE32 (+ DE41), so answers may come back in any
order on any connection. Each connection signs on (0800 DE70 001) after connecting, sends an echo
(301) when it has been quiet, and reconnects with exponential backoff when it breaks. A link is up
while at least one connection is signed on; a request on a down link fails at once (``LinkDown``: the
caller answers 91 without waiting). A request that was sent but got no answer in time, or whose
connection broke before the answer, raises ``LinkTimeout``: its outcome upstream is unknown, so the
caller reverses it through store-and-forward.

Frames are read in large chunks and every complete frame in the buffer is handled before the next
read; writes are coalesced per connection by a writer task. On a MACed link with batch MAC functions
(``macs`` / ``verifies``) the requests queued meanwhile are signed by that writer in one HSM exchange
before it sends them, and the answers of one read are checked by the reader in one exchange before their
callers wake: a request waits once, for its checked answer, instead of three times with an HSM exchange
of its own for each MAC (the link MAC cost about half the switch's throughput).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from ops.logs import get_logger
from specs.codec import Codec
from switch import metrics
from switch.hsm import HsmRefused, HsmUnavailable
from switch.mapping import Message, transmission_time

log = get_logger(__name__)

H2H_MAX_FRAME = 8192
MatchKey = tuple[str, str, str, str]


class LinkDown(Exception):
    """The link has no signed-on connection: nothing was sent."""


class NotSigned(LinkDown):
    """The request's DE128 could not be made (the HSM is unreachable or refused): nothing was sent."""


class LinkTimeout(Exception):
    """The request was sent and no answer came in time (or the connection broke): outcome unknown."""


MacFn = Callable[[bytes], Awaitable[bytes]]
VerifyFn = Callable[[bytes, bytes], Awaitable[bool]]
# The same, for many at once (one HSM exchange): a MAC per data (None: refused), a verdict per (data, mac).
MacsFn = Callable[[list[bytes]], Awaitable[list[bytes | None]]]
VerifiesFn = Callable[[list[tuple[bytes, bytes]]], Awaitable[list[bool]]]
MAC_BATCH_MAX = 256  # MACs per HSM exchange (the HSM client has 10,000 headers per connection)


@dataclass(frozen=True)
class LinkConfig:
    name: str
    direction: str  # "out" to an issuer host, "in" from an acquirer
    host: str
    port: int
    connections: int
    institution_id: str
    scheme: str  # "3des" | "sm4": the ZPK's algorithm and the DE52 length
    zpk: str  # under LMK
    zak: str | None  # under LMK; None = no DE128
    enabled: bool = True
    zmk: str | None = None  # under LMK: the new ZPK of a key change (0800 DE70 101) travels under it
    # in: declared without a ZAK (`link add --no-mac`); an in link with neither is refused (03)
    no_mac: bool = False

    def restart_key(self) -> tuple[object, ...]:
        """What a running link is built from: a change here restarts it (the ZMK is only read by a
        key change, so a new ZMK is taken over without a restart)."""
        return (self.direction, self.host, self.port, self.connections, self.scheme, self.zpk, self.zak)


@dataclass(frozen=True)
class LinkTiming:
    connect_timeout: float = 3.0
    signon_timeout: float = 3.0
    echo_interval: float = 30.0
    backoff_min: float = 0.1
    backoff_max: float = 10.0


def match_key(msg: Message) -> MatchKey:
    return (
        str(msg.get("7", "")),
        str(msg.get("11", "")),
        str(msg.get("32", "")),
        str(msg.get("41", "")).strip(),
    )


def split_frames(buf: bytearray, max_frame: int) -> list[bytes]:
    """Remove and return every complete 2-byte-LEN frame at the start of ``buf``.

    Zero-length frames (keep-alives) are dropped. A length above ``max_frame`` raises ValueError
    (after the frames before it have been returned).
    """
    frames: list[bytes] = []
    pos = 0
    end = len(buf)
    while end - pos >= 2:
        n = (buf[pos] << 8) | buf[pos + 1]
        if n > max_frame:
            if frames:
                break  # deliver the complete frames first; the next call raises
            raise ValueError(f"frame length {n} over {max_frame}")
        if end - pos - 2 < n:
            break
        if n:
            frames.append(bytes(buf[pos + 2 : pos + 2 + n]))
        pos += 2 + n
    if pos:
        del buf[:pos]
    return frames


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(2, "big") + body


class _Waiter:
    __slots__ = ("checked", "deadline", "event", "raw", "refused", "response")

    def __init__(self, deadline: float) -> None:
        self.event = trio.Event()
        self.response: Message | None = None
        self.raw = b""
        self.deadline = deadline
        # Set by the writer's signing or the reader's checking (batch MACs): the request could not be
        # signed (nothing sent), or the answer's MAC was checked (``response`` None: it failed).
        self.refused: str | None = None
        self.checked = False


SWEEP_SECONDS = 0.02


class _Connection:
    def __init__(self, link: OutboundLink, index: int) -> None:
        self.link = link
        self.index = index
        self.up = False
        self.pending: dict[MatchKey, _Waiter] = {}
        self._out: list[bytes] = []
        # Requests encoded with a zero DE128, signed by the writer before it sends them (batch MACs).
        self._unsigned: list[tuple[MatchKey, _Waiter, bytes]] = []
        # Answers the reader is checking the MACs of: still in flight for retire() and a key change.
        self.checking: list[_Waiter] = []
        self._wake = trio.Event()
        self._last_rx = 0.0

    def send(self, data: bytes) -> None:
        self._out.append(data)
        self._wake.set()

    async def run(self) -> None:
        backoff = self.link.timing.backoff_min
        while True:
            try:
                with trio.fail_after(self.link.timing.connect_timeout):
                    stream = await trio.open_tcp_stream(self.link.config.host, self.link.config.port)
            except (OSError, trio.TooSlowError) as exc:
                log.debug("link connect failed", link=self.link.name, conn=self.index, error=str(exc))
                await trio.sleep(backoff)
                backoff = min(backoff * 2, self.link.timing.backoff_max)
                continue
            try:
                self._last_rx = trio.current_time()
                async with stream, trio.open_nursery() as nursery:
                    nursery.start_soon(self._reader, stream)
                    nursery.start_soon(self._writer, stream)
                    nursery.start_soon(self._sweep)
                    await self._sign_on()
                    self._set_up(True)
                    log.info("link connection up", link=self.link.name, conn=self.index)
                    backoff = self.link.timing.backoff_min
                    await self._echo_loop()
            except Exception as exc:  # any failure of this connection (errors arrive in exception groups)
                log.warning(
                    "link connection lost", link=self.link.name, conn=self.index, error=_describe(exc)
                )
            finally:
                self._set_up(False)
                self._fail_pending()
                self._out.clear()
                self._unsigned.clear()  # never sent: their waiters were failed above
            await trio.sleep(backoff)
            backoff = min(backoff * 2, self.link.timing.backoff_max)

    def pending_events(self) -> list[trio.Event]:
        return [waiter.event for waiter in (*self.pending.values(), *self.checking)]

    def _set_up(self, up: bool) -> None:
        if self.up != up:
            self.up = up
            self.link._connection_changed()

    def _fail_pending(self) -> None:
        pending, self.pending = self.pending, {}
        for waiter in pending.values():
            waiter.event.set()  # response stays None: outcome unknown

    async def _sign_on(self) -> None:
        answer = await self.request(self.link.network_message("001"), self.link.timing.signon_timeout)
        if answer.get("39") != "00":
            raise _SignOnRefused(f"sign-on answered {answer.get('39')!r}")

    async def _echo_loop(self) -> None:
        interval = self.link.timing.echo_interval
        while True:
            await trio.sleep(interval)
            if trio.current_time() - self._last_rx >= interval:
                answer = await self.request(self.link.network_message("301"), self.link.timing.signon_timeout)
                if answer.get("39") != "00":
                    raise _SignOnRefused(f"echo answered {answer.get('39')!r}")

    async def request(self, msg: Message, timeout: float) -> Message:
        # No cancel scope per request (~15 µs each): _sweep wakes waiters whose deadline has passed.
        key = match_key(msg)
        waiter = _Waiter(trio.current_time() + timeout)
        link = self.link
        network = str(msg.get("t", "")).startswith("08")
        if link.macs is not None and link.mac is not None and not network:
            # Signed by the writer with the others queued meanwhile (one HSM exchange), then sent.
            self.pending[key] = waiter
            self._unsigned.append((key, waiter, link.codec.encode({**msg, "128": bytes(8)})))
            self._wake.set()
        else:
            try:
                data = frame(await link.encode(msg))
            except (HsmRefused, HsmUnavailable) as exc:  # before anything left: a decline, not a reversal
                raise NotSigned(f"request not signed on link {link.name}: {exc}") from exc
            self.pending[key] = waiter
            self.send(data)
        try:
            await waiter.event.wait()
        finally:
            if self.pending.get(key) is waiter:
                del self.pending[key]
        if waiter.refused is not None:
            raise NotSigned(f"request not signed on link {link.name}: {waiter.refused}")
        if waiter.checked and waiter.response is None:
            log.warning("answer MAC does not verify", link=link.name, stan=msg.get("11"))
            raise LinkTimeout(f"answer on link {link.name} failed MAC verification")
        if waiter.response is None:
            raise LinkTimeout(f"no answer on link {link.name} within {timeout:g}s")
        verify = self.link.verify
        if (
            verify is not None
            and not waiter.checked
            and not str(waiter.response.get("t", "")).startswith("08")
        ):
            mac = waiter.response.get("128")
            codec = self.link.codec
            if not (
                isinstance(mac, bytes)
                and codec.has_mac(waiter.raw)
                and await verify(codec.mac_block(waiter.raw), mac)
            ):
                # An answer that cannot be trusted is no answer: the outcome is unknown (reverse it).
                metrics.LINK_BAD_FRAMES.labels(link=self.link.name).inc()
                log.warning("answer MAC does not verify", link=self.link.name, stan=msg.get("11"))
                raise LinkTimeout(f"answer on link {self.link.name} failed MAC verification")
        return waiter.response

    async def _sweep(self) -> None:
        """Time out waiters past their deadline (their response stays None: LinkTimeout)."""
        while True:
            await trio.sleep(SWEEP_SECONDS)
            now = trio.current_time()
            expired = [key for key, waiter in self.pending.items() if waiter.deadline <= now]
            for key in expired:
                self.pending.pop(key).event.set()

    async def _writer(self, stream: trio.SocketStream) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            if self._unsigned:
                await self._sign()
            if self._out:
                data = b"".join(self._out)
                self._out.clear()
                await stream.send_all(data)

    async def _sign(self) -> None:
        """DE128 for the requests queued since the last pass, in one HSM exchange; each one signed is
        queued to send, unless its caller gave up meanwhile (timed out or cancelled: then it was never
        sent, and must not be, since its caller may reverse it). A refusal fails that request only, an
        HSM outage all of them (NotSigned: nothing left, a decline)."""
        batch, self._unsigned = self._unsigned[:MAC_BATCH_MAX], self._unsigned[MAC_BATCH_MAX:]
        if self._unsigned:
            self._wake.set()  # the rest at the next pass
        link = self.link
        assert link.macs is not None
        codec = link.codec
        try:
            macs = await link.macs([codec.mac_block(raw) for _, _, raw in batch])
        except (HsmRefused, HsmUnavailable) as exc:
            macs = [None] * len(batch)
            why = str(exc)
        else:
            why = "the HSM refused the MAC"
        for (key, waiter, raw), mac in zip(batch, macs, strict=True):
            if self.pending.get(key) is not waiter or waiter.event.is_set():
                continue  # timed out or cancelled while being signed: not sent
            if mac is None:
                del self.pending[key]
                waiter.refused = why
                waiter.event.set()
            else:
                self._out.append(frame(codec.with_mac(raw, mac)))

    async def _reader(self, stream: trio.SocketStream) -> None:
        buf = bytearray()
        while True:
            data = await stream.receive_some(65536)
            if not data:
                raise trio.BrokenResourceError("closed by the host")
            self._last_rx = trio.current_time()
            buf += data
            try:
                frames = split_frames(buf, H2H_MAX_FRAME)
            except ValueError as exc:
                raise trio.BrokenResourceError(str(exc)) from None
            checks: list[tuple[_Waiter, Message, bytes]] = []
            for body in frames:
                self._on_frame(body, checks)
            if checks:
                await self._check(checks)

    async def _check(self, checks: list[tuple[_Waiter, Message, bytes]]) -> None:
        """The DE128 of the answers of one read, in one HSM exchange (in slices of MAC_BATCH_MAX); each
        caller is woken with its answer, or with none when the MAC fails or cannot be checked (an answer
        that cannot be trusted is no answer: the outcome is unknown, the caller reverses it)."""
        link = self.link
        assert link.verifies is not None
        codec = link.codec
        waiters = [waiter for waiter, _, _ in checks]
        self.checking = waiters
        try:
            for start in range(0, len(checks), MAC_BATCH_MAX):
                part = checks[start : start + MAC_BATCH_MAX]
                asked = [
                    (waiter, msg, body)
                    for waiter, msg, body in part
                    if isinstance(msg.get("128"), bytes) and codec.has_mac(body)
                ]
                try:
                    oks = await link.verifies([(codec.mac_block(body), msg["128"]) for _, msg, body in asked])
                except (HsmRefused, HsmUnavailable):
                    oks = [False] * len(asked)
                good = {id(waiter) for (waiter, _, _), ok in zip(asked, oks, strict=True) if ok}
                for waiter, msg, body in part:
                    waiter.checked = True
                    if id(waiter) in good:
                        waiter.response, waiter.raw = msg, body
                    else:
                        metrics.LINK_BAD_FRAMES.labels(link=link.name).inc()
                    waiter.event.set()
        finally:
            self.checking = []
            for waiter in waiters:  # the connection broke while checking: outcome unknown
                waiter.event.set()

    def _on_frame(self, body: bytes, checks: list[tuple[_Waiter, Message, bytes]]) -> None:
        try:
            msg = self.link.codec.decode(body)
        except Exception as exc:  # a bad answer must not take the connection down
            log.warning("link frame does not parse", link=self.link.name, error=str(exc))
            metrics.LINK_BAD_FRAMES.labels(link=self.link.name).inc()
            return
        mti = str(msg.get("t", ""))
        if mti[2:3] in ("1", "3"):
            waiter = self.pending.pop(match_key(msg), None)
            if waiter is None:
                metrics.LINK_LATE_ANSWERS.labels(link=self.link.name).inc()
                log.info(
                    "link answer matches nothing (late?)", link=self.link.name, mti=mti, stan=msg.get("11")
                )
                return
            if self.link.verifies is not None and self.link.verify is not None and not mti.startswith("08"):
                checks.append((waiter, msg, body))  # woken once its MAC is checked, with the others
                return
            waiter.response = msg
            waiter.raw = body
            waiter.event.set()
        elif mti == "0800":
            reply: Message = {k: msg[k] for k in ("7", "11", "32", "70") if k in msg}
            reply["t"] = "0810"
            reply["39"] = "00"
            self.send(frame(self.link.codec.encode(reply)))


class _SignOnRefused(Exception):
    pass


def _describe(exc: BaseException) -> str:
    """One line for the log: the first leaf of an exception group, else the exception itself."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


class OutboundLink:
    """One upstream host: ``connections`` TCP connections, a shared STAN counter, a state."""

    def __init__(
        self,
        config: LinkConfig,
        codec: Codec,
        acquirer_id: str,
        *,
        timing: LinkTiming | None = None,
        mac: MacFn | None = None,
        verify: VerifyFn | None = None,
        macs: MacsFn | None = None,
        verifies: VerifiesFn | None = None,
        stan_from: OutboundLink | None = None,
        stan_slot: int = 0,
    ) -> None:
        # Replaced (never mutated) by a key change: requests read ``config.zpk`` when they translate.
        self.config = config
        self.name = config.name
        self.codec = codec
        self.acquirer_id = acquirer_id
        self.timing = timing or LinkTiming()
        self.mac = mac  # DE128 on requests (links with a ZAK)
        self.verify = verify  # DE128 checked on answers (links with a ZAK)
        # The same many at once (set by ConfigWatcher for links with a ZAK): used where ``mac`` /
        # ``verify`` are set, by the connections' writers and readers, one HSM exchange per pass.
        self.macs = macs
        self.verifies = verifies
        # One STAN counter for every link of this process: two links to hosts on one database (a route
        # group, host/README.md "Several host processes") must not send the same DE7 + DE11 with this
        # switch's DE32, which the host would take for one request (a 94, or the first's answer).
        self._stan: itertools.count[int] = stan_from._stan if stan_from is not None else _PROCESS_STANS
        # Several switch nodes draw STANs on links to the same host: each its own residue modulo
        # STAN_SLOTS (switch_nodes.slot), so two nodes never send one DE7 + DE11 (switch/nodes.py).
        self.stan_slot: int = stan_from.stan_slot if stan_from is not None else stan_slot
        self._conns = [_Connection(self, i) for i in range(config.connections)]
        self._rr = 0
        self.up_event = trio.Event()
        self.up = False  # kept current by _connection_changed: read on every request
        self.retired = False  # replaced or removed: draining, no longer moves the link's metrics
        self._scope: trio.CancelScope | None = None
        self._stopped = False
        metrics.LINK_UP.labels(link=self.name).set(0)
        metrics.LINK_CONNECTIONS.labels(link=self.name).set(0)

    @property
    def connections_up(self) -> int:
        return sum(1 for c in self._conns if c.up)

    @property
    def in_flight(self) -> int:
        return sum(len(c.pending) + len(c.checking) for c in self._conns)

    def next_stan(self) -> int:
        return slotted_stan(next(self._stan), self.stan_slot)

    def network_message(self, code: str) -> Message:
        return {
            "t": "0800",
            "7": transmission_time(),
            "11": f"{self.next_stan():06d}",
            "32": self.acquirer_id,
            "70": code,
        }

    async def encode(self, msg: Message) -> bytes:
        """Encode, adding DE128 when the link is MACed (network messages are not)."""
        if self.mac is None or str(msg.get("t", "")).startswith("08"):
            return self.codec.encode(msg)
        raw = self.codec.encode({**msg, "128": bytes(8)})
        return self.codec.with_mac(raw, await self.mac(self.codec.mac_block(raw)))

    def pending_events(self) -> list[trio.Event]:
        """The events of every request waiting for its answer now (set when answered or timed out)."""
        return [event for conn in self._conns for event in conn.pending_events()]

    def _connection_changed(self) -> None:
        up = self.up = any(c.up for c in self._conns)
        if up:
            self.up_event.set()
        elif self.up_event.is_set():
            self.up_event = trio.Event()
        if self.retired:
            return
        metrics.LINK_UP.labels(link=self.name).set(1 if up else 0)
        metrics.LINK_CONNECTIONS.labels(link=self.name).set(self.connections_up)

    async def run(self) -> None:
        """Keep the connections up until ``retire`` has drained the link (or the caller cancels)."""
        with trio.CancelScope() as scope:
            self._scope = scope
            if self._stopped:
                return
            async with trio.open_nursery() as nursery:
                for conn in self._conns:
                    nursery.start_soon(conn.run)
        log.info("link stopped", link=self.name)

    async def retire(self, grace: float, *, settle: float = 0.2) -> int:
        """Drain and stop: the link was replaced or removed (the routing table no longer names it).

        Requests that were routed here just before the change may still arrive for ``settle``
        seconds; every request waiting for its answer then gets it or times out normally (at most
        ``grace`` seconds), then the connections close. Returns the requests still waiting at the
        end of ``grace`` (they fail as ``LinkTimeout``, so they are reversed: never dropped silently).
        """
        self.retired = True
        deadline = trio.current_time() + grace
        await trio.sleep(settle)
        while self.in_flight and trio.current_time() < deadline:
            await trio.sleep(SWEEP_SECONDS)
        left = self.in_flight
        self._stopped = True
        if self._scope is not None:
            self._scope.cancel()
        return left

    async def request(self, msg: Message, timeout: float) -> Message:
        """Send ``msg`` and return the matching answer; LinkDown or LinkTimeout otherwise."""
        conn = self._pick()
        return await conn.request(msg, timeout)

    def _pick(self) -> _Connection:
        n = len(self._conns)
        for _ in range(n):
            self._rr = (self._rr + 1) % n
            conn = self._conns[self._rr]
            if conn.up:
                return conn
        raise LinkDown(f"link {self.name} is down")


STAN_SLOTS = 10  # switch nodes on one database at most (switch_nodes.slot 0-9)


def slotted_stan(counter: int, slot: int) -> int:
    """The link STAN (1-999990) of ``counter`` for the node in ``slot``: STAN - 1 is ``slot`` modulo
    STAN_SLOTS, so nodes never draw the same one; a node draws 99,999 before repeating its own."""
    return (counter % 99_999) * STAN_SLOTS + slot + 1


def _initial_stan() -> int:
    # STANs restart after a process restart; starting from the clock keeps DE7 + DE11 from repeating
    # within the same second across a quick restart.
    return int(time.time() * 1000) % 999_999


# The process's link STAN counter (see OutboundLink): from the clock, so a restart does not repeat.
_PROCESS_STANS: itertools.count[int] = itertools.count(_initial_stan())
