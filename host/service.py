"""`payswitch host serve`: the H2H listener in front of the posting engine.

Per connection, every frame in the receive buffer is handled on each wake-up, and many requests are in
flight at once; answers go back in completion order (the peer matches them on DE7 + DE11 + DE32 +
DE41), several per ``send``. A request whose card hash is known, that carries no PIN and whose link is
not MACed goes straight to its partition's writer. One whose HSM work is known without an await (the
DE128 of a MACed link; a PIN whose link ZPK, card hash and PIN data are known) joins the pending
crypto group: one long-lived task sends everything pending to the HSM in one ``request_many`` per
wake-up, each request's MAC check beside its PIN check (no task, no coroutine chain and no HSM exchange
of its own per request), then hands each request whose MAC verified to its writer; one whose MAC fails
is answered 96 and never reaches a writer. On a MACed link the answers are signed the same way: every
answer ready in one wake-up of the signing task in one ``request_many``. Any other request that needs an
await first (a PAN not yet hashed in this process, PIN data not yet read, a link not read yet) gets a
task of its own. An answer is sent only after its batch committed.

Before any of that, the link must be one that may send (``_link_refusal``, from the cached link row):
an unknown DE33/DE32, a link with neither a ZAK nor the ``--no-mac`` declaration, or a no-MAC link from
a peer that is not loopback is answered 03 and nothing is decided (host/README.md, "Links").

Bad input never takes the link down: a frame that does not decode but whose MTI and DE11 can be read
is answered 30 (specs.catalogue.format_error_response), otherwise dropped and logged; a request of an
unknown type is answered 12; a broken length prefix closes that connection only.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from prometheus_client import Counter, Histogram

from host import chip, clearing_task, expiry, h2h, payment_codes
from host.business_day import BusinessDay, read_closes
from host.catalog import catalog_version
from host.engine import Engine
from host.keys import IssuerCrypto, keys_from
from host.ledger import Ledger
from host.model import Decision, Pin, Rc, Request, Txn
from hsm_sim.client import (
    HsmClient,
    HsmCommandError,
    HsmError,
    account_from_pan,
    h2h_mac_command,
    verify_pin_command,
)
from ops.config import Config
from ops.guard import ConnectionGuard, GuardLimits, source_of
from ops.listening import cannot_listen
from ops.logs import bind_peer, get_logger
from ops.metrics import labelled
from ops.peers import link_refusal, peer_is_loopback
from ops.pgpool import PgPool
from specs.catalogue import TxnType, format_error_response
from specs.codec import Codec, codec_for
from specs.errors import DecodeError, EncodeError, FrameError
from specs.framing import frame, h2h_splitter

log = get_logger(__name__)

REQUESTS = Counter(
    "payswitch_host_requests_total", "H2H requests answered, by MTI and response code.", ["mti", "code"]
)
LATENCY = Histogram(
    "payswitch_host_request_seconds",
    "From frame received to answer queued for sending.",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
)
BAD_FRAMES = Counter(
    "payswitch_host_bad_frames_total", "Frames that did not decode, by outcome.", ["outcome"]
)
CONNECTIONS = Counter("payswitch_host_connections_total", "H2H connections accepted.")
MAC_FAILURES = Counter("payswitch_host_mac_failures_total", "H2H requests whose DE128 did not verify.")
LINK_REFUSED = Counter(
    "payswitch_host_link_refused_total",
    "H2H messages answered 03 before anything was decided, by why the link may not send.",
    ["reason"],
)

LINK_CACHE_SECONDS = 10.0
# A DE32/DE33 that is not a link is remembered as unknown, shorter (a link just added answers soon)
# but long enough that a flood of frames naming it is one database read, not one each; at most
# UNKNOWN_LINKS_MAX such ids are kept (a flood of distinct ids must not grow the cache without end).
UNKNOWN_LINK_CACHE_SECONDS = 2.0
UNKNOWN_LINKS_MAX = 4096
# host_catalog.version (bumped by triggers on merchants, terminals, products: migration 0009) is read
# this often; when it moved the merchant cache goes, so `merchant suspend` holds from the next request.
CATALOG_POLL_SECONDS = 1.0
PIN_GROUP_MAX = 512  # PIN verifications per request_many; also kept to half a connection's headers

# A request waiting for its crypto group: request, message, connection, started, partition, the HSM
# command and fields verifying its PIN (EC / WV; the PIN block under the ZPK: never logged) or None,
# those verifying its DE128 (M8 / WM) or None, and the link's ZAK (None: not a MACed link).
_Command = tuple[str, str | bytes]
_PinCheck = tuple[Request, dict[str, Any], "_Conn", float, int, _Command | None, _Command | None, str | None]
# An answer waiting for its signature: connection, answer, its encoding with a zero DE128, started.
_Signing = tuple["_Conn", dict[str, Any], bytes, float]


@dataclass
class _Conn:
    stream: trio.SocketStream
    out: list[bytes] = field(default_factory=list)
    wake: trio.Event = field(default_factory=trio.Event)
    inflight: int = 0
    idle: trio.Event = field(default_factory=trio.Event)
    closed: bool = False
    nursery: trio.Nursery | None = None
    loopback: bool | None = None  # the peer's address is loopback (asked once, by _link_refusal)

    def send(self, body: bytes) -> None:
        if not self.closed:
            self.out.append(frame(body))
            self.wake.set()

    def done_one(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self.idle.set()


class HostService:
    """Everything `host serve` runs: the pool, the HSM client, the engine, the listener, the sweeper."""

    def __init__(
        self,
        config: Config,
        pool: PgPool,
        hsm: HsmClient,
        *,
        partitions: int,
        keys: dict[str, tuple[str, str]],
    ) -> None:
        hc = config.host
        self.config = config
        self.pool = pool
        self.hsm = hsm
        self.crypto = IssuerCrypto(hsm, keys_from(keys))
        self.ledger = Ledger(
            pin_tries=hc.pin_tries,
            hold_days=hc.hold_days,
            completion_tolerance_pct=hc.completion_tolerance_pct,
            business_day=BusinessDay.of_config(config),
            balance_low=hc.balance_low,
            write_events=hc.events,
            chained=hc.ledger_chain,
        )
        self.engine = Engine(
            pool, self.ledger, partitions=partitions, writers=hc.writers, batch_max=hc.batch_max
        )
        self.codec: Codec = codec_for("h2h", hc.profile)
        self._pin_data: dict[str, tuple[int, str, int] | None] = {}
        # card hash -> its product's chip algorithm and IMK-AC (None: no chip), for chip requests only
        self._chip_keys: dict[str, tuple[str, str | None] | None] = {}
        self._links: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._link_reads: dict[str, trio.Event] = {}  # link id -> its database read under way
        self._link_versions: dict[str, int] = {}  # link id -> bumped by a key change here
        self._unknown_links: OrderedDict[str, None] = OrderedDict()  # ids cached as no link, oldest first
        self._pin_pending: list[_PinCheck] = []
        self._pin_wake = trio.Event()
        self._pin_grouping = False  # the group task runs (serve): only then may _frame queue for it
        self.pin_groups = 0  # request_many exchanges made for PIN/MAC groups (tests, diagnostics)
        self._sign_pending: dict[str, list[_Signing]] = {}  # ZAK -> answers to sign with it
        self._sign_wake = trio.Event()
        self._signing = False  # the signing task runs (serve): only then may _answer queue for it
        self.sign_groups = 0  # request_many exchanges made for signing answers (tests, diagnostics)
        self.port = 0
        # Who may stay connected (ops/guard.py): caps, idle and frame deadlines, swept by one task.
        self.guard = ConnectionGuard(
            "host",
            GuardLimits(
                hc.max_connections, hc.max_per_source, float(hc.idle_timeout_s), float(hc.frame_timeout_s)
            ),
        )

    # -- lifecycle ------------------------------------------------------------------------------
    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        hc = self.config.host
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.engine.run)
            nursery.start_soon(self._pin_groups_task)
            self._pin_grouping = True
            nursery.start_soon(self._sign_groups_task)
            self._signing = True
            nursery.start_soon(self._sweeper)
            nursery.start_soon(self._catalog_poll)  # merchant changes reach the merchant cache
            nursery.start_soon(self._closes_poll)  # a date closed early: the day's limits roll there
            nursery.start_soon(self.guard.run)  # connection idle and frame deadlines
            nursery.start_soon(expiry.run, self.pool, self.config)  # cards past their YYMM
            if self.config.clearing.auto_emit:
                nursery.start_soon(clearing_task.run, self.pool, self.config)
            try:
                listeners = await nursery.start(
                    functools.partial(trio.serve_tcp, self._connection, hc.port, host=hc.listen)
                )
            except OSError as exc:  # one line naming the address and the key, not a traceback
                raise cannot_listen("host", hc.listen, hc.port, "host.port", exc) from None
            self.port = listeners[0].socket.getsockname()[1]
            log.info("host listening", port=self.port, profile=hc.profile, writers=self.engine.writers)
            task_status.started(self.port)

    # -- connections ----------------------------------------------------------------------------
    async def _connection(self, stream: trio.SocketStream) -> None:
        try:
            source = source_of(stream.socket.getpeername())
        except OSError:
            source = "?"
        bind_peer(source)
        reading = trio.CancelScope()
        conn = _Conn(stream)
        slot = self.guard.admit(source, trio.current_time(), reading.cancel, lambda: conn.inflight > 0)
        if slot is None:  # full, or this source at its cap (counted by the guard)
            with trio.CancelScope(shield=True):
                await stream.aclose()
            return
        CONNECTIONS.inc()
        conn.idle.set()
        splitter = h2h_splitter()
        try:
            async with trio.open_nursery() as nursery:
                conn.nursery = nursery
                nursery.start_soon(self._sender, conn)
                try:
                    with reading:
                        # The splitter directly, not FrameReader: no cancel scope per read (the guard's
                        # sweep ends overdue connections), and the reader sees every partial frame.
                        while True:
                            data = await stream.receive_some(65536)
                            if not data:
                                if splitter.pending:
                                    raise FrameError("connection closed inside a frame")
                                break
                            keepalives = splitter.keepalives
                            frames = splitter.feed(data)
                            # Only a complete frame (a keep-alive too) resets the idle clock; bytes of
                            # an unfinished one start the frame clock.
                            if frames or splitter.keepalives != keepalives:
                                slot.framed(trio.current_time(), splitter.pending > 0)
                            else:
                                slot.partial(trio.current_time(), splitter.pending > 0)
                            for body in frames:
                                self._frame(body, conn, nursery)
                            splitter.check()  # a bad LEN after the frames above: close now
                except FrameError as exc:
                    log.warning("closing H2H connection", reason=str(exc))
                except trio.BrokenResourceError:
                    pass
                with trio.move_on_after(10):
                    await conn.idle.wait()  # answer what is in flight before closing
                    while conn.out:
                        await trio.sleep(0.001)
                conn.closed = True
                nursery.cancel_scope.cancel()
        finally:
            self.guard.release(slot)
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _sender(self, conn: _Conn) -> None:
        try:
            while True:
                await conn.wake.wait()
                conn.wake = trio.Event()
                while conn.out:
                    data = b"".join(conn.out)
                    conn.out.clear()
                    await conn.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            conn.closed = True

    def _frame(self, body: bytes, conn: _Conn, nursery: trio.Nursery) -> None:
        started = time.perf_counter()
        try:
            msg = self.codec.decode(body)
        except DecodeError as exc:
            answer = format_error_response("h2h", exc)
            if answer is None:
                BAD_FRAMES.labels("dropped").inc()
                log.warning("dropped undecodable H2H frame", field=exc.field, reason=exc.reason)
                return
            BAD_FRAMES.labels("answered_30").inc()
            log.info("format error answered 30", field=exc.field, reason=exc.reason)
            self._send(conn, answer, started)
            return
        if msg["t"][2] in "13":  # a response (0110, 0210, 0810 ...): nothing to answer
            BAD_FRAMES.labels("unexpected_response").inc()
            return
        try:
            parsed = h2h.parse(msg, self.config.api.institution_id)  # the programme's API: loads, CNP
        except h2h.BadRequest as exc:
            log.info("request refused", mti=msg["t"], code=exc.code, reason=str(exc))
            self._refuse_request(body, msg, exc.code, conn, nursery, started)
            return
        except (ValueError, KeyError) as exc:
            log.info("request refused", mti=msg["t"], code=Rc.FORMAT_ERROR, reason=repr(exc))
            self._refuse_request(body, msg, Rc.FORMAT_ERROR, conn, nursery, started)
            return
        # Who may send comes first, from the cached link row (a dict lookup, no await): a link not in
        # the cache yet is read by the slow path, which applies the same rule.
        link = self._links.get(parsed.link_id)
        if link is not None:
            if link[0] < time.monotonic():
                self._refresh_link(parsed.link_id)
            if (reason := self._link_refusal(link[1], conn)) is not None:
                self._refuse(conn, msg, parsed.link_id, reason, started)
                return
        conn.inflight += 1
        conn.idle = trio.Event() if conn.inflight == 1 else conn.idle
        if link is None:
            nursery.start_soon(self._slow, body, msg, parsed, conn, started)  # link not read yet
            return
        if parsed.network is not None:
            nursery.start_soon(self._network, msg, parsed, conn, started)
            return
        req = parsed.request
        assert req is not None
        if parsed.by_code or req.txn is Txn.PIN_CHANGE or req.chip is not None:
            # a payment code: its hash and card are read first (never cached); a PIN change: its card's
            # PVV as stored now, and the HSM's WC (_change_pin); chip data: the ARQC checked in the HSM
            # (_verify_chip)
            nursery.start_soon(self._slow, body, msg, parsed, conn, started)
            return
        zak: str | None = (link[1] or {}).get("zak") or None
        mac: _Command | None = None
        if zak:
            mac = self._mac_command(body, msg, zak) if self._pin_grouping else None
            if mac is None:  # no DE128 (answered 96 there) or no group task: the slow path decides
                nursery.start_soon(self._slow, body, msg, parsed, conn, started)
                return
        pin: _Command | None = None
        if parsed.pan:
            h = self.crypto.cached_hash(parsed.pan)
            if h is None:
                nursery.start_soon(self._slow, body, msg, parsed, conn, started)
                return
            if parsed.pin_block is not None:
                pin = self._pin_command(parsed, h, link[1])
                if pin is None:  # PIN data not read yet, no ZPK ...: the slow path decides
                    nursery.start_soon(self._slow, body, msg, parsed, conn, started)
                    return
            req.pan_hash = h
            part = self.engine.partition_of(h)
        else:
            part = self.engine.partition_for_key(req.original_key or req.key)
        if pin is not None or mac is not None:
            self._pin_pending.append((req, msg, conn, started, part, pin, mac, zak))
            self._pin_wake.set()
            return
        self.engine.submit(req, part, self._answerer(conn, msg, started))

    async def _slow(
        self, body: bytes, msg: dict[str, Any], parsed: h2h.Parsed, conn: _Conn, started: float
    ) -> None:
        """A request that needs an await first: the link's row, its MAC, the PAN hash, the PIN.

        Every await here comes before the request is answered or handed to its writer, so a failure of
        one (the database or the HSM gone mid-request) is answered 96 here: it must not end the
        connection's nursery, and with it the host."""
        try:
            await self._slow_steps(body, msg, parsed, conn, started)
        except Exception as exc:
            log.error("request not decided", mti=msg["t"], stan=msg.get("11"), error=repr(exc))
            self._send(conn, h2h.error_response(msg, Rc.SYSTEM_ERROR), started)
            conn.done_one()

    async def _slow_steps(
        self, body: bytes, msg: dict[str, Any], parsed: h2h.Parsed, conn: _Conn, started: float
    ) -> None:
        link = await self._link(parsed.link_id)
        if (reason := self._link_refusal(link, conn)) is not None:
            self._refuse(conn, msg, parsed.link_id, reason, started)
            conn.done_one()
            return
        if parsed.network is not None:  # 08xx carry no DE128 (h2h-dialect: the link MACs requests)
            await self._network(msg, parsed, conn, started)
            return
        req = parsed.request
        assert req is not None and link is not None
        zak = link.get("zak")
        if zak and not await self._mac_ok(body, msg, zak):
            MAC_FAILURES.inc()
            log.warning("H2H MAC verification failed; nothing posted", link=parsed.link_id, stan=msg["11"])
            self._answer(conn, msg, Decision(Rc.SYSTEM_ERROR), started, zak)
            return
        if parsed.by_code and parsed.pan:
            try:
                part = await self._payment_code(req, parsed.pan)
            except HsmError as exc:
                log.error("HSM unavailable for the payment code hash", error=repr(exc))
                self._answer(conn, msg, Decision(Rc.SYSTEM_ERROR), started, zak)
                return
        elif parsed.pan:
            try:
                req.pan_hash = await self.crypto.pan_hash(parsed.pan)
            except HsmError as exc:
                log.error("HSM unavailable for the PAN hash", error=repr(exc))
                self._answer(conn, msg, Decision(Rc.SYSTEM_ERROR), started, zak)
                return
            if req.txn is Txn.PIN_CHANGE:
                req.pin = await self._change_pin(parsed, req)
            elif parsed.pin_block is not None:
                req.pin = await self._verify_pin(parsed, req.pan_hash)
            if req.chip is not None:
                key = await self._verify_chip(parsed.pan, req.pan_hash, req.chip)
                part = self.engine.partition_of(req.pan_hash)
                answer = self._after_chip(parsed.pan, key, req.chip, conn, msg, started, zak)
                self.engine.submit(req, part, answer)
                return
            part = self.engine.partition_of(req.pan_hash)
        else:
            part = self.engine.partition_for_key(req.original_key or req.key)
        if req.txn is Txn.PIN_CHANGE and req.pan_hash:
            self.engine.submit(req, part, self._after_pin_change(req.pan_hash, conn, msg, started, zak))
            return
        self.engine.submit(req, part, lambda d: self._answer(conn, msg, d, started, zak))

    async def _change_pin(self, parsed: h2h.Parsed, req: Request) -> Pin:
        """A PIN change (specs/README.md "PIN change"): the HSM's WC verifies the old PIN (DE52) against
        the card's PVV as stored now (not the cached one) and, when it matches, gives the new PIN's PVV
        and the new PIN under the LMK (DE48's block) for the batch to store. NONE without both blocks
        (declined 55 ``pin_missing``) or for an unknown card (14); BAD: the old PIN is wrong (a try)."""
        assert req.pan_hash is not None and parsed.pan is not None
        if parsed.pin_block is None or parsed.new_pin_block is None:
            return Pin.NONE
        self._pin_data.pop(req.pan_hash, None)
        data = await self.pool.run(_pin_data, req.pan_hash)
        if data is None:
            return Pin.NONE
        _card_id, pvv, pvki = data
        zpk = await self._link_zpk(parsed.link_id, "changed")
        if zpk is None:
            return Pin.ERROR
        try:
            change = await self.crypto.hsm.change_pin(
                zpk,
                self.crypto.keys.pvk,
                parsed.pin_block.hex().upper(),
                parsed.new_pin_block.hex().upper(),
                account_from_pan(parsed.pan),
                str(pvki),
                pvv,
            )
        except HsmError as exc:
            log.info("PIN not changed: the HSM could not verify it", error=repr(exc))
            return Pin.ERROR
        if change is None:
            return Pin.BAD
        req.new_pvv, req.new_pin_lmk, req.verified_pvv = change.pvv, change.pin_under_lmk, pvv
        return Pin.OK

    async def _verify_chip(self, pan: str, pan_hash: str, data: chip.Chip) -> str | None:
        """The ARQC checked in the HSM before the batch (host.chip.verify), as a PIN is; the card's
        product's IMK-AC is read once per card (cached until the catalogue changes). Returns the key."""
        if pan_hash in self._chip_keys:
            key = self._chip_keys[pan_hash]
        else:
            key = self._chip_keys[pan_hash] = await self.pool.run(chip.card_key, pan_hash)
        if key is None:  # unknown card or no chip on its product: the chip data is not checked
            return None
        await chip.verify(self.hsm, key[1], pan, data)
        return key[1]

    def _after_chip(
        self,
        pan: str,
        imk: str | None,
        data: chip.Chip,
        conn: _Conn,
        msg: dict[str, Any],
        started: float,
        zak: str | None,
    ) -> Callable[[Decision], None]:
        """The answer to a chip request once its batch committed: H2H DE48 with the ARPC (host.chip):
        an approval's was made with the ARQC's check; a decline's needs one more HSM exchange."""

        def answer(d: Decision) -> None:
            if data.result is not chip.Arqc.OK or (d.code == Rc.APPROVED and data.arpc is not None):
                self._answer(conn, msg, d, started, zak, self._chip_fields(d, data))
            elif conn.nursery is not None:
                conn.nursery.start_soon(self._answer_chip_decline, pan, imk, data, conn, msg, d, started, zak)
            else:
                self._answer(conn, msg, d, started, zak)

        return answer

    def _chip_fields(self, d: Decision, data: chip.Chip) -> dict[str, Any] | None:
        if data.result is not chip.Arqc.OK or data.arpc is None or d.code != Rc.APPROVED:
            return None
        return {"48": chip.response_tlv(data.arpc, chip.ARC_APPROVED).hex().upper()}

    async def _answer_chip_decline(
        self,
        pan: str,
        imk: str | None,
        data: chip.Chip,
        conn: _Conn,
        msg: dict[str, Any],
        d: Decision,
        started: float,
        zak: str | None,
    ) -> None:
        try:
            extra = await chip.answer_fields(self.hsm, imk, pan, data, d.code)
        except Exception as exc:  # the decision stands and is answered, without the ARPC
            log.error("decline's ARPC not made", error=repr(exc))
            extra = {}
        self._answer(conn, msg, d, started, zak, extra or None)

    def _after_pin_change(
        self, pan_hash: str, conn: _Conn, msg: dict[str, Any], started: float, zak: str | None
    ) -> Callable[[Decision], None]:
        """The answer to a PIN change, once its batch committed: the card's cached PIN data goes first
        (a purchase verified against the old PVV while the change was decided may have cached it)."""

        def answer(d: Decision) -> None:
            self._pin_data.pop(pan_hash, None)
            self._answer(conn, msg, d, started, zak)

        return answer

    async def _payment_code(self, req: Request, code: str) -> int:
        """Entry mode 03x: DE2 is a payment code. Its keyed hash (as a PAN's, uncached) and its card,
        so that the request goes to the card's writer, which locks and checks the code in its batch
        (host.payment_codes). An unknown code goes by its key and is declined 14 there. No PIN is
        verified: a code payment needs none (host.rules.check_pin)."""
        req.payment_code = await self.crypto.pan_hash(code, cache=False)
        found = await self.pool.run(payment_codes.resolve, req.payment_code)
        if found is None:
            return self.engine.partition_for_key(req.original_key or req.key)
        req.card_id, part = found
        return part

    def _link_refusal(self, link: dict[str, Any] | None, conn: _Conn) -> str | None:
        """Why this link may not send on this connection (ops.peers.link_refusal), None when it may."""
        row = link or {}
        return link_refusal(
            link is not None,
            bool(row.get("zak")),
            bool(row.get("no_mac")),
            self.config.host.allow_remote_no_mac,
            lambda: _loopback(conn),
        )

    def _refuse_request(
        self, body: bytes, msg: dict[str, Any], code: str, conn: _Conn, nursery: trio.Nursery, started: float
    ) -> None:
        """Answer a request that cannot be acted on (12, 30). Without a DE32 it names no link: plain.
        Else the link's rules apply as to any request (03 for one that may not send), and on a MACed
        link an authentic request (its DE128 verifies) gets its refusal signed, so the peer can tell it
        from a forgery and need not reverse what was never decided; a request whose MAC does not verify
        gets it unsigned (the host signs nothing an unauthenticated sender chose)."""
        if "32" not in msg:
            self._send(conn, h2h.error_response(msg, code), started)
            return
        conn.inflight += 1
        conn.idle = trio.Event() if conn.inflight == 1 else conn.idle
        nursery.start_soon(self._refused, body, msg, code, conn, started)

    async def _refused(
        self, body: bytes, msg: dict[str, Any], code: str, conn: _Conn, started: float
    ) -> None:
        link_id = h2h.link_id_of(msg)
        zak: str | None = None
        try:
            link = await self._link(link_id)
            if (reason := self._link_refusal(link, conn)) is not None:
                self._refuse(conn, msg, link_id, reason, started)
                conn.done_one()
                return
            candidate = (link or {}).get("zak")
            if candidate and await self._mac_ok(body, msg, candidate):
                zak = candidate
        except Exception as exc:  # the link could not be read: answered plain
            log.error("refusal not signed", mti=msg["t"], error=repr(exc))
        if zak:
            await self._send_signed(conn, h2h.error_response(msg, code), zak, started)  # done_one there
            return
        self._send(conn, h2h.error_response(msg, code), started)
        conn.done_one()

    def _refuse(self, conn: _Conn, msg: dict[str, Any], link_id: str, reason: str, started: float) -> None:
        """Answer 03, as the switch answers an unknown acquirer; nothing was decided (no PIN, MAC, ledger)."""
        LINK_REFUSED.labels(reason).inc()
        labelled(REQUESTS, msg["t"], Rc.INVALID_MERCHANT).inc()
        log.info("link may not send; answered 03", link=link_id, reason=reason, mti=msg["t"])
        self._send(conn, h2h.error_response(msg, Rc.INVALID_MERCHANT), started)

    def _pin_command(
        self, parsed: h2h.Parsed, pan_hash: str, link: dict[str, Any] | None
    ) -> tuple[str, str] | None:
        """The HSM command and fields verifying this request's PIN (EC for a 3DES ZPK, WV for an ``S``
        ZPK); None when the request needs the slow path
        (grouping not running, no ZPK, the card's PIN data not read yet or the card unknown)."""
        if not self._pin_grouping or link is None:
            return None
        zpk = link.get("zpk")
        data = self._pin_data.get(pan_hash)
        if not zpk or data is None or parsed.pin_block is None or parsed.pan is None:
            return None
        _card_id, pvv, pvki = data
        block, account = parsed.pin_block.hex().upper(), account_from_pan(parsed.pan)
        return verify_pin_command(zpk, self.crypto.keys.pvk, block, account, str(pvki), pvv)

    async def _pin_groups_task(self) -> None:
        """Per wake-up, every pending PIN and MAC verification goes to the HSM in one group (split so
        that a group never needs more headers than half of what one HSM connection has: a request
        counts two, its MAC and its PIN)."""
        h = self.crypto.hsm.header_length
        size = PIN_GROUP_MAX if h == 0 else max(1, min(PIN_GROUP_MAX, 10 ** min(h, 9) // 2))
        size = max(1, size // 2)
        while True:
            await self._pin_wake.wait()
            self._pin_wake = trio.Event()
            pending, self._pin_pending = self._pin_pending, []
            for i in range(0, len(pending), size):
                await self._verify_pin_group(pending[i : i + size])

    async def _verify_pin_group(self, group: list[_PinCheck]) -> None:
        """One HSM exchange for the group: each request's DE128 check (M8 / WM) and PIN check (EC / WV),
        side by side; a request whose MAC fails is answered 96 (signed, as the slow path does) and is
        never handed to a writer, whatever its PIN check said."""
        self.pin_groups += 1
        commands: list[_Command] = []
        for c in group:
            commands.extend(x for x in (c[6], c[5]) if x is not None)
        errors: list[str]
        try:
            errors = [r.error for r in await self.crypto.hsm.request_many(commands)]
        except HsmError as exc:  # the whole group, as _verify_pin and _mac_ok for one
            log.info("PIN or MAC not verified", error=repr(exc), size=len(group))
            errors = ["HSM"] * len(commands)
        except Exception as exc:  # a bug: the group task must live on for every later request
            log.exception("PIN group not verified", size=len(group), error=repr(exc))
            errors = ["BUG"] * len(commands)
        at = 0
        for req, msg, conn, started, part, pin_cmd, mac_cmd, zak in group:
            mac_error = pin_error = None
            if mac_cmd is not None:
                mac_error, at = errors[at], at + 1
            if pin_cmd is not None:
                pin_error, at = errors[at], at + 1
            if conn.nursery is not None and conn.nursery.cancel_scope.cancel_called:
                continue  # its connection was given up (as its task would have been cancelled)
            if mac_cmd is not None and mac_error != "00":
                MAC_FAILURES.inc()
                link_id = h2h.link_id_of(msg)
                log.warning("H2H MAC verification failed; nothing posted", link=link_id, stan=msg["11"])
                self._answer(conn, msg, Decision(Rc.SYSTEM_ERROR), started, zak)
                continue
            if pin_cmd is not None:
                if pin_error == "00":
                    req.pin = Pin.OK
                elif pin_error == "01":
                    req.pin = Pin.BAD
                else:
                    if pin_error not in ("HSM", "BUG"):
                        log.info("PIN not verified", error=repr(HsmCommandError(pin_cmd[0], str(pin_error))))
                    req.pin = Pin.ERROR
            self.engine.submit(req, part, self._answerer(conn, msg, started, zak))

    def _mac_command(self, body: bytes, msg: dict[str, Any], zak: str) -> _Command | None:
        """The HSM command and fields verifying the request's DE128 under the link's ZAK, as
        ``HsmClient.verify_h2h_mac`` sends them (M8 X9.19 for a 3DES ZAK, WM for an ``S`` one); None
        when the request has no DE128 (the slow path answers it, unverified, 96)."""
        mac = msg.get("128")
        if not isinstance(mac, bytes):
            return None
        try:
            data = self.codec.mac_block(body)
        except ValueError:
            return None
        return h2h_mac_command(zak, data, mac.hex().upper())

    def _answerer(
        self, conn: _Conn, msg: dict[str, Any], started: float, zak: str | None = None
    ) -> Callable[[Decision], None]:
        return lambda d: self._answer(conn, msg, d, started, zak)

    async def _mac_ok(self, body: bytes, msg: dict[str, Any], zak: str) -> bool:
        mac = msg.get("128")
        if not isinstance(mac, bytes):
            return False
        try:
            return await self.hsm.verify_h2h_mac(zak, self.codec.mac_block(body), mac.hex().upper())
        except (HsmError, ValueError) as exc:
            log.warning("H2H MAC not verified", error=repr(exc))
            return False

    async def _verify_pin(self, parsed: h2h.Parsed, pan_hash: str) -> Pin:
        assert parsed.pin_block is not None and parsed.pan is not None
        cache = self._pin_data
        if pan_hash in cache:
            data = cache[pan_hash]
        else:
            # kept in the dict of when the read began: one that a PIN change cleared meanwhile is gone
            data = cache[pan_hash] = await self.pool.run(_pin_data, pan_hash)
        if data is None:
            return Pin.NONE  # unknown card: answered 14 by the engine
        _card_id, pvv, pvki = data
        zpk = await self._link_zpk(parsed.link_id, "verified")
        if zpk is None:
            return Pin.ERROR
        try:
            ok = await self.crypto.verify_pin(zpk, parsed.pin_block, parsed.pan, pvki, pvv)
        except HsmError as exc:
            log.info("PIN not verified", error=repr(exc))
            return Pin.ERROR
        return Pin.OK if ok else Pin.BAD

    async def _link_zpk(self, link_id: str, doing: str) -> str | None:
        """The ZPK that protects the link's PIN blocks; None (logged) when it has none: the PIN cannot be
        ``doing`` (verified, changed) and the request is answered as an HSM failure."""
        link = await self._link(link_id)
        if link is None or not link.get("zpk"):
            log.warning(f"no ZPK for link; PIN cannot be {doing}", link=link_id)
            return None
        zpk: str = link["zpk"]
        return zpk

    async def _link(self, link_id: str) -> dict[str, Any] | None:
        """The link's row, cached. A stale entry is still served while one background read refreshes
        it (an expiry must not send every request in flight to the database at once, each waiting for
        its own read); an unknown link is read once for all the requests that want it."""
        cached = self._links.get(link_id)
        while cached is None:
            reading = self._link_reads.get(link_id)
            if reading is None:
                await self._read_link(link_id)
            else:
                await reading.wait()
            cached = self._links.get(link_id)
            if cached is None and reading is not None:  # that read failed: this request tries itself
                await self._read_link(link_id)
                cached = self._links.get(link_id)
        if cached[0] < time.monotonic():
            self._refresh_link(link_id)
        return cached[1]

    async def _read_link(self, link_id: str, done: trio.Event | None = None) -> None:
        if done is None:
            done = trio.Event()
        self._link_reads[link_id] = done
        version = self._link_versions.get(link_id, 0)
        try:
            row = await self.pool.run(_link_row, link_id)
            # A read that started before a key change here may carry the old ZPK: keep it out.
            if self._link_versions.get(link_id, 0) == version:
                if row is not None:
                    self._links[link_id] = (time.monotonic() + LINK_CACHE_SECONDS, row)
                    self._unknown_links.pop(link_id, None)
                else:
                    self._remember_unknown(link_id)
        finally:
            if self._link_reads.get(link_id) is done:
                del self._link_reads[link_id]
            done.set()

    def _remember_unknown(self, link_id: str) -> None:
        """Cache a DE32/DE33 that is no link, for UNKNOWN_LINK_CACHE_SECONDS; past UNKNOWN_LINKS_MAX
        unknown ids the expired ones go first, then the oldest (known links are never dropped)."""
        now = time.monotonic()
        self._links[link_id] = (now + UNKNOWN_LINK_CACHE_SECONDS, None)
        self._unknown_links[link_id] = None
        self._unknown_links.move_to_end(link_id)
        if len(self._unknown_links) <= UNKNOWN_LINKS_MAX:
            return
        for old in [k for k in self._unknown_links if self._links.get(k, (0.0, None))[0] < now]:
            self._forget_unknown(old)
        while len(self._unknown_links) > UNKNOWN_LINKS_MAX:
            self._forget_unknown(next(iter(self._unknown_links)))

    def _forget_unknown(self, link_id: str) -> None:
        del self._unknown_links[link_id]
        cached = self._links.get(link_id)
        if cached is not None and cached[1] is None:
            del self._links[link_id]

    def _refresh_link(self, link_id: str) -> None:
        if link_id in self._link_reads:
            return

        done = self._link_reads[link_id] = trio.Event()  # claimed now: one refresh however many ask

        async def refresh() -> None:
            try:
                await self._read_link(link_id, done)
            except Exception as exc:  # keep the stale row; the next request after expiry tries again
                log.warning("link refresh failed", link=link_id, error=repr(exc))

        trio.lowlevel.spawn_system_task(refresh)

    async def _network(self, msg: dict[str, Any], parsed: h2h.Parsed, conn: _Conn, started: float) -> None:
        code = Rc.APPROVED
        if parsed.network is TxnType.KEY_CHANGE:
            try:
                code = await self._key_change(msg, parsed.link_id)
            except Exception as exc:  # the database went away: the old key stands, the peer retries
                log.error("key change not stored", link=parsed.link_id, error=repr(exc))
                code = Rc.SYSTEM_ERROR
        labelled(REQUESTS, msg["t"], code).inc()
        self._send(conn, h2h.network_response(msg, code), started)
        conn.done_one()

    async def _key_change(self, msg: dict[str, Any], link_id: str) -> str:
        """0800/101: DE48 = new ZPK under the link ZMK (U+32H or S+32H) then its check value (16H)."""
        de48 = str(msg.get("48", ""))
        link = await self._link(link_id)
        if link is None or not link.get("zmk"):
            log.warning("key change on a link without ZMK", link=link_id)
            return Rc.INVALID_TXN
        try:
            if de48[:1] == "S":
                key = await self.hsm.import_sm4_key("001", link["zmk"], de48[1:33])
            else:
                key = await self.hsm.import_key("001", link["zmk"], de48[:33], "U")
        except HsmError as exc:
            log.warning("key change refused by the HSM", link=link_id, error=repr(exc))
            return Rc.SYSTEM_ERROR
        check = de48[33:].strip().upper()
        if check and not key.check_value.upper().startswith(check[:6]):
            log.warning("key change check value mismatch", link=link_id)
            return Rc.SYSTEM_ERROR
        await self.pool.run(_store_zpk, link_id, key.under_lmk, key.check_value)
        self._link_versions[link_id] = self._link_versions.get(link_id, 0) + 1
        self._links.pop(link_id, None)
        log.info("link ZPK changed", link=link_id, check_value=key.check_value[:6])
        return Rc.APPROVED

    def _answer(
        self,
        conn: _Conn,
        msg: dict[str, Any],
        d: Decision,
        started: float,
        zak: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        answer = h2h.response(msg, d, self.ledger.business_day.date_of(self.ledger.clock()))
        if extra:  # a chip request's DE48 (host.chip)
            answer.update(extra)
        labelled(REQUESTS, msg["t"], d.code).inc()
        if zak and self._signing:
            try:
                raw = self.codec.encode({**answer, "128": bytes(8)})
            except EncodeError as exc:  # _send answers without the echo, unsigned
                log.error("answer not signed; sent without DE128", error=repr(exc))
            else:
                self._sign_pending.setdefault(zak, []).append((conn, answer, raw, started))
                self._sign_wake.set()
                return
        elif zak and conn.nursery is not None:
            conn.nursery.start_soon(self._send_signed, conn, answer, zak, started)
            return
        self._send(conn, answer, started)
        conn.done_one()

    async def _sign_groups_task(self) -> None:
        """Per wake-up, every answer waiting for its DE128 goes to the HSM in one group (split as the PIN
        groups are); each is sent once signed, or unsigned when the HSM cannot sign it (as
        _send_signed)."""
        h = self.crypto.hsm.header_length
        size = PIN_GROUP_MAX if h == 0 else max(1, min(PIN_GROUP_MAX, 10 ** min(h, 9) // 2))
        while True:
            await self._sign_wake.wait()
            self._sign_wake = trio.Event()
            pending, self._sign_pending = self._sign_pending, {}
            group: list[tuple[_Signing, _Command]] = []
            for zak, answers in pending.items():
                for item in answers:
                    try:
                        group.append((item, h2h_mac_command(zak, self.codec.mac_block(item[2]))))
                    except ValueError as exc:
                        log.error("answer not signed; sent without DE128", error=repr(exc))
                        self._send(item[0], item[1], item[3])
                        item[0].done_one()
            for i in range(0, len(group), size):
                await self._sign_group(group[i : i + size])

    async def _sign_group(self, group: list[tuple[_Signing, _Command]]) -> None:
        self.sign_groups += 1
        try:
            replies = await self.crypto.hsm.request_many([command for _, command in group])
        except Exception as exc:  # HSM gone (or a bug): the answers go unsigned, the task lives on
            log.error("answers not signed; sent without DE128", error=repr(exc), size=len(group))
            replies = None
        for k, ((conn, answer, raw, started), (command, _)) in enumerate(group):
            reply = replies[k] if replies is not None else None
            try:
                if reply is None:
                    self._send(conn, answer, started)
                elif reply.error != "00":
                    error = repr(HsmCommandError(command, reply.error))
                    log.error("answer not signed; sent without DE128", error=error)
                    self._send(conn, answer, started)
                else:
                    conn.send(self.codec.with_mac(raw, bytes.fromhex(reply.fields[:16].decode("ascii"))))
                    LATENCY.observe(time.perf_counter() - started)
            except ValueError as exc:  # a reply that is not a MAC: unsigned, as _send_signed
                log.error("answer not signed; sent without DE128", error=repr(exc))
                self._send(conn, answer, started)
            finally:
                conn.done_one()

    async def _send_signed(self, conn: _Conn, answer: dict[str, Any], zak: str, started: float) -> None:
        """The answer with DE128 under the link's ZAK (X9.19 for 3DES, SM4 for an S key)."""
        try:
            raw = self.codec.encode({**answer, "128": bytes(8)})
            mac = await self.hsm.h2h_mac(zak, self.codec.mac_block(raw))
            conn.send(self.codec.with_mac(raw, bytes.fromhex(mac[:16])))
            LATENCY.observe(time.perf_counter() - started)
        except (HsmError, EncodeError, ValueError) as exc:
            log.error("answer not signed; sent without DE128", error=repr(exc))
            self._send(conn, answer, started)
        finally:
            conn.done_one()

    def _send(self, conn: _Conn, answer: dict[str, Any], started: float) -> None:
        try:
            conn.send(self.codec.encode(answer))
        except EncodeError as exc:  # an echoed field we cannot re-encode: answer without the echo
            log.error("answer not encodable", field=exc.field, reason=exc.reason)
            minimal: dict[str, Any] = {
                k: answer[k] for k in ("t", "7", "11", "32", "41", "39") if k in answer
            }
            try:
                conn.send(self.codec.encode(minimal))
            except EncodeError:
                return
        LATENCY.observe(time.perf_counter() - started)

    # -- reference data changed -------------------------------------------------------------------
    async def _catalog_poll(self) -> None:
        """Every CATALOG_POLL_SECONDS one row (host_catalog.version): when it moved, the merchants are
        read again by the next batch (products are read with every batch anyway)."""
        seen: int | None = None
        while True:
            # read first, then sleep: the version seen is that of before anything was cached
            try:
                version = await self.pool.run(catalog_version)
            except Exception as exc:  # the database may be away: the cache stays, tried again
                log.debug("catalog version read failed", error=repr(exc))
            else:
                if seen is not None and version != seen:
                    self.ledger.forget_merchants()
                    # a PIN set or reset (cards.pvv) moves the version too (host migration 0018)
                    self._pin_data = {}
                    self._chip_keys = {}  # a product's chip key changed (`product chip-key`)
                    log.info("catalogue changed: merchants read again", version=version)
                seen = version
            await trio.sleep(CATALOG_POLL_SECONDS)

    async def _closes_poll(self) -> None:
        """Every CATALOG_POLL_SECONDS the recent dates closed early (``clearing close-day``): the
        business day, and so the daily limits, roll over at an early close as the clearing file does."""
        while True:
            try:
                if await self.pool.run(read_closes, self.ledger.business_day, self.ledger.clock()):
                    log.info("early business-date closes read", closes=len(self.ledger.business_day.closes))
            except Exception as exc:  # the database may be away: the closes known stay, tried again
                log.debug("early closes read failed", error=repr(exc))
            await trio.sleep(CATALOG_POLL_SECONDS)

    # -- hold expiry ----------------------------------------------------------------------------
    async def _sweeper(self) -> None:
        while True:
            await trio.sleep(self.config.host.sweep_seconds)
            try:
                await self.sweep_once()
            except Exception as exc:  # keep sweeping; the database may come back
                log.error("hold sweep failed", error=repr(exc))

    async def sweep_once(self, now: dt.datetime | None = None) -> int:
        """Release every hold past its expiry; returns how many were released."""
        rows = await self.pool.run(_expired_holds, now or dt.datetime.now(dt.UTC), 1000)
        async with trio.open_nursery() as nursery:
            for key, card_id, part in rows:
                req = Request(key="expire:" + key, mti="0000", txn=Txn.EXPIRY, card_id=card_id, hold_key=key)
                nursery.start_soon(self.engine.decide, req, part)
        if rows:
            log.info("holds expired", count=len(rows))
        return len(rows)


def _loopback(conn: _Conn) -> bool:
    """Whether the connection's peer is loopback, asked of the socket once per connection."""
    if conn.loopback is None:
        conn.loopback = peer_is_loopback(conn.stream)
    return conn.loopback


async def _pin_data(conn: Any, pan_hash: str) -> tuple[int, str, int] | None:
    row = await conn.fetchrow("SELECT id, pvv, pvki FROM cards WHERE pan_hash = $1", pan_hash)
    return None if row is None else (row["id"], row["pvv"], row["pvki"])


async def _link_row(conn: Any, link_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow("SELECT * FROM links WHERE institution_id = $1", link_id)
    return None if row is None else dict(row)


async def _store_zpk(conn: Any, link_id: str, zpk: str, check: str) -> None:
    await conn.execute(
        "UPDATE links SET zpk = $2, zpk_check = $3, updated_at = now() WHERE institution_id = $1",
        link_id,
        zpk,
        check,
    )


async def _expired_holds(conn: Any, now: dt.datetime, limit: int) -> list[tuple[str, int, int]]:
    rows = await conn.fetch(
        """SELECT h.hold_key, h.card_id, c.part FROM holds h JOIN cards c ON c.id = h.card_id
           WHERE h.state = 'pending' AND h.expires_at < $1 ORDER BY h.expires_at LIMIT $2""",
        now,
        limit,
    )
    return [(r["hold_key"], r["card_id"], r["part"]) for r in rows]


async def load_partitions(conn: Any) -> int:
    value: int = await conn.fetchval("SELECT partitions FROM ledger_settings")
    return value
