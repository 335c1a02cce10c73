"""POS terminal requests (pos-dialect.md): sign-on, echo, sign-off, financial requests, reversals,
batch settlement and upload.

``PosService.handle(body, conn)`` takes one frame body (TPDU + header + message, the LEN already removed)
and the connection it came on (terminal sessions are tied to it: specs/README.md, "Terminal sessions"), and
returns the response body, or None to close the connection (a frame so broken that MTI, DE11 and DE41 cannot
be read). Per financial request: terminal session (97 unknown, A0 + re-sign-on flag when not signed on),
duplicate check (the first answer again), MAC verification and PIN translation run concurrently in the HSM,
BIN routing, RRN and link STAN, the write-ahead record committed (in the journal writer's shared batches),
the H2H round trip, the answer mapped back and MACed, the journal row committed, then the answer. A timeout
answers 98 after a reversal advice is durable. A terminal 0400 that goes upstream is written ahead too.
After a crash, start-up recovery (``SafQueue.recover``) has turned every unanswered write-ahead record into
a reversal advice and a journal row (98; a reversal 00), so the batch's journal, loaded on the terminal's
first contact, names the upstream original of a later 0400 (answered 00: the switch already owns that
reversal) and a retransmission gets 98. Reversals follow switch/reversals.py (shared with the acquirer
channel): a 0400 awaits its in-flight original; a 0200 whose 0400 came first is declined 05 and not sent; a
retransmission key reused with another amount, PAN or DE3, or after a reversal, gets 94.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import trio

from hsm_sim.client import HsmError
from ops.logs import get_logger, mask_pan
from specs.catalogue import (
    OFFLINE_TYPE_CODE,
    BatchTotals,
    De61,
    UploadRecord,
    parse_batch_totals,
    parse_upload_de48,
    unhandled_code,
)
from specs.codec import codec_for
from specs.errors import DecodeError
from specs.framing import REQUIREMENT_NONE, REQUIREMENT_SIGN_ON, response_header, swap_tpdu
from switch import metrics
from switch import upload as batch_upload
from switch.floor import FloorTable
from switch.hsm import HsmRefused, HsmUnavailable, SwitchHsm, WorkingKey
from switch.journal import JournalWriter
from switch.links import OutboundLink
from switch.mapping import (
    FINANCIAL_MTIS,
    Message,
    account12,
    carries_chip,
    chip_answer,
    de60,
    local_time,
    local_time_of,
    pan_of,
    parse_de60,
    pos_balance,
    pos_response,
    pos_to_h2h,
    replayable,
    response_mti,
    rrn,
    transmission_time,
    txn_type,
)
from switch.reversals import Fingerprint, reverse, upstream_reversal
from switch.sessions import Entry, Registry, Terminal, connection_open, entry_from_row
from switch.store import SessionRow, Store
from switch.upstream import Upstream, translate_again

log = get_logger(__name__)

HEADER_LEN = 11  # TPDU 5 + header 6
MACED_MTIS = frozenset({"0100", "0200", "0220", "0400"})
# Answers decided here without anything going upstream that a retry may legitimately change: they are
# journaled but not kept for duplicate detection.
_RETRYABLE = frozenset({"91", "96", "A0"})
# Answers that a stale copy of the terminal (another switch node wrote it since) may explain: the
# terminal is read again once before they are given.
_STALE = frozenset({"mac_failed", "batch_differs"})
# How much longer than an upstream timeout a retransmission waits for another node's first answer.
FIRST_ANSWER_MARGIN_S = 2.0


class AnsweredElsewhere(Exception):
    """The request's write-ahead key is held by another switch node (a retransmission it took first)."""


# Answers that carry the card's available balance (DE54) when approved: a balance inquiry (contract) and
# the sales and loads whose receipt prints the balance after them (specs/README.md, "Balance after").
BALANCE_AFTER = frozenset({"balance", "purchase", "completion", "pre-auth", "top-up", "void", "refund"})
# An offline advice so answered was not taken by the issuer (or not known to be): its retransmission goes
# upstream again (the host's natural key makes a second posting impossible), not answered from the journal.
_ADVICE_AGAIN = frozenset({"91", "96", "98", "A0"})


@dataclass(slots=True)
class Reply:
    message: Message
    resign: bool = False
    mac: str | None = None  # the MAK (under LMK) when the answer carries DE64
    commit: trio.Event | None = None  # set once the request's journal row is committed
    # An approval from upstream: what undoes it if the answer cannot reach the terminal as decided.
    undo: Callable[[], Awaitable[None]] | None = None
    reason: str | None = None  # why the switch answered so itself (switch/reasons.py); None: the issuer


@dataclass(slots=True)
class Timing:
    start: float
    # The connection the request came on (who holds which session keys); None for a caller without one.
    conn: trio.SocketStream | None = None
    hsm: float = 0.0
    host: float = 0.0


class PosService:
    def __init__(
        self,
        profile: str,
        *,
        hsm: SwitchHsm,
        store: Store,
        journal: JournalWriter,
        registry: Registry,
        upstream: Upstream,
        acquirer_id: str,
        signon_per_minute: int,
    ) -> None:
        self.profile = profile
        self.channel = f"pos-{profile}"
        self.codec = codec_for("pos", profile)
        self.hsm = hsm
        self.store = store
        self.journal = journal
        self.registry = registry
        self.upstream = upstream
        self.acquirer_id = acquirer_id
        self.signon_per_minute = signon_per_minute
        self.floor = FloorTable(store.floor_limits)  # the sign-on's floor table (switch/floor.py)

    # -- framing -----------------------------------------------------------------------------------
    async def handle(self, body: bytes, conn: trio.SocketStream | None = None) -> bytes | None:
        t0 = trio.current_time()
        if len(body) < HEADER_LEN + 10:
            metrics.BAD_FRAMES.labels(listener=self.channel, action="closed").inc()
            log.warning("POS frame too short", listener=self.channel, length=len(body))
            return None
        tpdu, header, raw = body[:5], body[5:HEADER_LEN], body[HEADER_LEN:]
        try:
            msg = self.codec.decode(raw)
            if tpdu[0] != 0x60:
                raise DecodeError("TPDU", "first byte is not 0x60", msg)
        except DecodeError as exc:
            return self._format_error(tpdu, header, exc)
        try:
            reply = await self._dispatch(msg, raw, Timing(t0, conn))
        except (HsmUnavailable, HsmError) as exc:  # no HSM: the request cannot be checked
            log.error("HSM unavailable", listener=self.channel, mti=msg.get("t"), error=str(exc))
            reply = Reply(pos_response(msg, code="96"))
        except Exception as exc:  # a bug must not take the connection (or the switch) down: answer 96
            log.exception("POS request failed", listener=self.channel, mti=msg.get("t"), error=str(exc))
            reply = Reply(pos_response(msg, code="96"))
        commit = reply.commit
        try:
            # The response MAC is computed while the journal row is being committed.
            encoded = await self._encode(reply)
        except Exception as exc:  # the answer could not be MACed (HSM gone): 96 without DE64
            log.error("response MAC failed", listener=self.channel, error=str(exc))
            if reply.undo is not None:  # the issuer approved what the terminal will see declined
                await reply.undo()
            reply = Reply(pos_response(msg, code="96"))
            encoded = self.codec.encode(reply.message)
        if commit is not None and not commit.is_set():  # (a set Event's wait is still a yield)
            await commit.wait()  # the answer leaves only after its journal row is committed
        metrics.LATENCY_TOTAL.observe(trio.current_time() - t0)
        metrics.count_request(self.channel, txn_type(msg), str(reply.message.get("39", "")))
        return _response_header(tpdu, header, reply.resign) + encoded

    def _format_error(self, tpdu: bytes, header: bytes, exc: DecodeError) -> bytes | None:
        partial = exc.partial
        if exc.mti is None or exc.stan is None or exc.terminal_id is None:
            metrics.BAD_FRAMES.labels(listener=self.channel, action="closed").inc()
            log.warning("POS frame does not parse; closing", listener=self.channel, error=str(exc))
            return None
        metrics.BAD_FRAMES.labels(listener=self.channel, action="answered_30").inc()
        log.warning(
            "POS frame does not parse; answering 30",
            listener=self.channel,
            error=str(exc),
            mti=exc.mti,
            stan=exc.stan,
            terminal=exc.terminal_id,
        )
        answer: Message = {"t": response_mti(exc.mti), "11": partial["11"], "41": partial["41"]}
        if "42" in partial:
            answer["42"] = partial["42"]
        answer["39"] = "30"
        try:
            return _response_header(tpdu, header, False) + self.codec.encode(answer)
        except Exception:
            return None

    async def _encode(self, reply: Reply) -> bytes:
        msg = reply.message
        if reply.mac is None or msg.get("39") in ("A0", "30"):
            msg.pop("64", None)
            return self.codec.encode(msg)
        raw = self.codec.encode({**msg, "64": bytes(8)})
        return self.codec.with_mac(raw, await self._mac(reply.mac, self.codec.mac_block(raw)))

    async def _mac(self, mak: str, data: bytes) -> bytes:
        t = trio.current_time()
        mac = await self.hsm.pos_mac(self.profile, mak, data)
        metrics.LATENCY_HSM.observe(trio.current_time() - t)
        return mac

    # -- dispatch ----------------------------------------------------------------------------------
    async def _dispatch(self, msg: Message, raw: bytes, timing: Timing) -> Reply:
        mti = msg["t"]
        if mti in FINANCIAL_MTIS:
            return await self._financial(msg, raw, timing)
        if mti == "0400":
            return await self._reversal(msg, raw, timing)
        if mti == "0800":
            reply = await self._sign_on(msg, timing.conn)
        elif mti == "0820":
            reply = await self._network(msg, timing.conn)
        elif mti == "0500":
            reply = await self._settle(msg)
        elif mti == "0320":
            reply = await self._upload(msg)
        else:
            return Reply(pos_response(msg, code=unhandled_code(mti)))
        if mti != "0820" or parse_de60(msg.get("60")).network_code != "301":  # echoes are not journaled
            reply.commit = self._journal_admin(msg, reply, timing)
        return reply

    def _journal_admin(self, msg: Message, reply: Reply, timing: Timing) -> trio.Event:
        """Journal a sign-on, sign-off, settlement or upload (never replayed: no duplicate key)."""
        tid, mid = str(msg.get("41", "")).strip(), str(msg.get("42", "")).strip()
        batch = parse_de60(msg.get("60")).batch_no
        key = f"pos|{tid}|{mid}|{batch}|{msg.get('11')}|{msg['t']}|{time.time_ns()}"
        row = (
            key,
            self.channel,
            msg["t"],
            txn_type(msg),
            None,
            tid,
            mid,
            batch if batch >= 0 else None,
            msg.get("11"),
            None,
            None,
            None,
            None,
            None,
            str(reply.message.get("39", "")),
            None,
            None,
            None,
            None,
            None,
            None,
            int((trio.current_time() - timing.start) * 1e6),
            0,
            0,
            "{}",
            reply.reason,
        )
        return self.journal.submit(row)

    async def _terminal(self, msg: Message) -> tuple[Terminal | None, Reply | None]:
        tid = str(msg.get("41", "")).strip()
        mid = str(msg.get("42", "")).strip()
        terminal, record = await self.registry.get(tid, mid)
        if terminal is None:
            return None, Reply(pos_response(msg, code="97" if record is None else "03"))
        return terminal, None

    # -- network management ------------------------------------------------------------------------
    async def _sign_on(self, msg: Message, conn: trio.SocketStream | None) -> Reply:
        terminal, refusal = await self._terminal(msg)
        if terminal is not None and not self._may_sign_on(terminal, conn):
            return Reply(pos_response(msg, code="65"))  # exceeds frequency limit; the session goes on
        if terminal is not None:
            # Sign-on re-reads the host's registry entry: state or TMK may have changed since first contact.
            record = await self.store.terminal(terminal.terminal_id, terminal.merchant_id)
            if record is None or record.merchant_id != terminal.merchant_id:
                self.registry.forget(terminal.terminal_id, terminal.merchant_id)
                return Reply(pos_response(msg, code="97" if record is None else "03"))
            terminal.record = record
        if terminal is None:
            assert refusal is not None
            return refusal
        record = terminal.record
        if not record.active:
            return Reply(pos_response(msg, code="58"))
        if record.scheme != self.profile:
            log.warning(
                "terminal signed on at the other profile's port",
                terminal=record.terminal_id,
                scheme=record.scheme,
                listener=self.channel,
            )
            return Reply(pos_response(msg, code="58"))
        async with terminal.lock:
            keys: dict[str, WorkingKey] = {}

            async def generate(kind: str) -> None:
                keys[kind] = await self.hsm.working_key(self.profile, kind, record.tmk)

            try:
                async with trio.open_nursery() as nursery:
                    for kind in ("pik", "mak", "tdk"):
                        nursery.start_soon(generate, kind)
            except HsmRefused as exc:
                log.error("sign-on key generation refused", terminal=record.terminal_id, code=exc.code)
                return Reply(pos_response(msg, code="96"))
            pik, mak, tdk = keys["pik"], keys["mak"], keys["tdk"]
            new = SessionRow(self.profile, pik.under_lmk, mak.under_lmk, tdk.under_lmk, True)
            if terminal.held_elsewhere(conn):
                # Anyone can send an 0800 naming a terminal: the live session keeps its keys until these
                # are proven by a MAC (specs/README.md, "Terminal sessions").
                await self.store.save_pending(record.terminal_id, record.merchant_id, new)
                terminal.pending, terminal.pending_conn = new, conn
                log.info("sign-on from another connection: new keys pending", terminal=record.terminal_id)
            else:
                await self.store.save_session(
                    record.terminal_id,
                    record.merchant_id,
                    self.profile,
                    pik.under_lmk,
                    mak.under_lmk,
                    tdk.under_lmk,
                )
                terminal.start_session(new, conn)
        if self.profile == "3des":
            de62 = (
                pik.under_tmk
                + pik.check_value
                + mak.under_tmk
                + bytes(8)
                + mak.check_value
                + tdk.under_tmk
                + tdk.check_value
            )
        else:
            de62 = (
                pik.under_tmk
                + pik.check_value
                + mak.under_tmk
                + mak.check_value
                + tdk.under_tmk
                + tdk.check_value
            )
        answer = pos_response(msg, code="00", acquirer_id=self.acquirer_id)
        network = parse_de60(msg.get("60")).network_code
        answer["60"] = de60("00", terminal.batch_no, network)
        answer["62"] = de62
        floor_table = await self.floor.de48()  # the terminal's offline limits (specs/README.md)
        if floor_table is not None:
            answer["48"] = floor_table
        log.info("terminal signed on", terminal=record.terminal_id, batch=terminal.batch_no)
        return Reply(answer)

    def _may_sign_on(self, terminal: Terminal, conn: trio.SocketStream | None) -> bool:
        """The per-terminal sign-on limit (``switch.signon_per_minute``). The live session's own
        connection is not limited: a flood from elsewhere must not keep the terminal from signing on."""
        if conn is not None and terminal.conn is conn and terminal.signed_on:
            return True
        if terminal.sign_on_allowed(trio.current_time(), self.signon_per_minute):
            return True
        log.warning("sign-on rate limited", terminal=terminal.terminal_id, listener=self.channel)
        return False

    async def _network(self, msg: Message, conn: trio.SocketStream | None) -> Reply:
        terminal, refusal = await self._terminal(msg)
        if terminal is None:
            assert refusal is not None
            return refusal
        if parse_de60(msg.get("60")).network_code == "002":
            async with terminal.lock:
                await self._sign_off(terminal, conn)
        return Reply(pos_response(msg, code="00"))

    async def _sign_off(self, terminal: Terminal, conn: trio.SocketStream | None) -> None:
        """An 0820/002 ends the session only from its own connection, or when no open connection holds
        it; from elsewhere it ends at most that connection's own pending keys (specs/README.md,
        "Terminal sessions"). Answered 00 either way: the sender learns nothing of the session."""
        tid, mid = terminal.terminal_id, terminal.merchant_id
        if terminal.held_elsewhere(conn):
            if terminal.pending is not None and terminal.pending_conn is conn:
                await self.store.save_pending(tid, mid, None)
                terminal.pending = terminal.pending_conn = None
            else:
                log.info("sign-off from another connection ignored", terminal=tid, listener=self.channel)
            return
        await self.store.sign_off(tid, mid)
        if terminal.session is not None:
            s = terminal.session
            terminal.start_session(SessionRow(s.scheme, s.pik, s.mak, s.tdk, False), conn)

    # -- financial ---------------------------------------------------------------------------------
    async def _signed_on(
        self, msg: Message, raw: bytes, timing: Timing
    ) -> tuple[Terminal | None, Reply | None]:
        """The request's terminal if it is signed on with this listener's key profile, its current
        session being the keys this MAC'd request is to be verified under; else the refusal (97/03/58
        from ``_terminal``, or A0 with the re-sign-on flag)."""
        terminal, refusal = await self._terminal(msg)
        if terminal is None:
            return None, refusal
        if not terminal.signed_on or terminal.session is None or terminal.session.scheme != self.profile:
            await self.registry.refresh(terminal)  # it may have signed on at another switch node since
            if not terminal.signed_on or terminal.session is None or terminal.session.scheme != self.profile:
                return None, Reply(pos_response(msg, code="A0"), resign=True)
        conn = timing.conn
        # The hot path is these three comparisons: only while a sign-on's keys are pending does a
        # request on a connection other than the current session's need settling first.
        if (
            terminal.pending is not None
            and conn is not None
            and terminal.conn is not conn
            and not await self._prove(terminal, msg, raw, timing)
        ):
            log.warning("MAC verification failed", terminal=terminal.terminal_id, stan=msg.get("11"))
            return None, Reply(pos_response(msg, code="A0"), resign=True)
        return terminal, None

    async def _prove(self, terminal: Terminal, msg: Message, raw: bytes, timing: Timing) -> bool:
        """Which keys a connection that does not hold the current session holds, while a sign-on's keys
        are pending (specs/README.md, "Terminal sessions"): pending keys its MAC verifies under become
        current (the old ones are refused from then on); the current keys only while no open
        connection holds them (a restart, or their connection closed), and it becomes their holder."""
        conn = timing.conn
        tid, mid = terminal.terminal_id, terminal.merchant_id
        async with terminal.lock:
            pending, current = terminal.pending, terminal.session
            if pending is None or terminal.conn is conn:
                return True  # settled meanwhile by a concurrent request of this connection
            assert current is not None
            mine = terminal.pending_conn is conn
            if (
                (mine or not connection_open(terminal.pending_conn))
                and pending.scheme == self.profile
                and await self._verify_mac(terminal, msg, raw, timing, pending.mak)
            ):
                await self.store.save_session(tid, mid, pending.scheme, pending.pik, pending.mak, pending.tdk)
                terminal.start_session(pending, conn)
                log.info("new session keys proven; the previous ones retired", terminal=tid)
                return True
            if mine or connection_open(terminal.conn):
                return False
            if not await self._verify_mac(terminal, msg, raw, timing, current.mak):
                return False
            terminal.conn = conn  # the holder of the current keys is back on a new connection
            if not connection_open(terminal.pending_conn):  # and whoever got the pending ones is gone
                await self.store.save_pending(tid, mid, None)
                terminal.pending = terminal.pending_conn = None
            return True

    async def _verify_mac(
        self, terminal: Terminal, msg: Message, raw: bytes, timing: Timing, mak: str | None = None
    ) -> bool:
        """Whether DE64 verifies under ``mak`` (default: the current session's MAK)."""
        mac = msg.get("64")
        if not isinstance(mac, bytes) or not self.codec.has_mac(raw):
            return False
        assert terminal.session is not None
        key = terminal.session.mak if mak is None else mak
        t = trio.current_time()
        try:
            expected = await self.hsm.pos_mac(self.profile, key, self.codec.mac_block(raw))
        except HsmRefused:
            return False
        finally:
            elapsed = trio.current_time() - t
            timing.hsm += elapsed
            metrics.LATENCY_HSM.observe(elapsed)
        return expected == mac

    async def _duplicate(self, msg: Message, entry: Entry, terminal: Terminal) -> Reply:
        metrics.DUPLICATES.labels(channel=self.channel).inc()
        await entry.done.wait()
        assert terminal.session is not None
        first = entry.fingerprint
        if msg["t"] in FINANCIAL_MTIS and (
            entry.reversed or (first is not None and not first.same(Fingerprint.of(msg)))
        ):
            # Another request under the same key, or one its reversal withdrew: not a retransmission
            # (switch/reversals.py). Nothing is decided, so nothing is journaled.
            return Reply(pos_response(msg, code="94", acquirer_id=self.acquirer_id), mac=terminal.session.mak)
        if entry.committed is not None:
            await entry.committed.wait()  # a replay, too, leaves only once the first answer is journaled
        answer = dict(entry.response or pos_response(msg, code=entry.code or "96"))
        if "2" in msg:
            answer["2"] = msg["2"]
        if "55" in answer and not isinstance(answer["55"], bytes):
            # reloaded from the journal's JSON (hex) after a restart: bytes again, or left out
            chip = chip_answer(answer.pop("55"))
            if chip is not None:
                answer["55"] = chip
        return Reply(answer, mac=terminal.session.mak)

    async def _financial(self, msg: Message, raw: bytes, timing: Timing, *, refreshed: bool = False) -> Reply:
        terminal, refusal = await self._signed_on(msg, raw, timing)
        if terminal is None:
            assert refusal is not None
            return refusal
        assert terminal.session is not None
        mak = terminal.session.mak
        mti, stan = msg["t"], str(msg.get("11", ""))
        existing = terminal.entries.get((mti, stan))
        if existing is not None and existing.kind == "offline" and existing.code in _ADVICE_AGAIN:
            existing = None  # an advice is repeated until it is answered (specs/README.md, "Offline sales")
        if existing is not None:
            if not await self._verify_mac(terminal, msg, raw, timing):
                return Reply(pos_response(msg, code="A0"), resign=True)
            return await self._duplicate(msg, existing, terminal)
        batch = parse_de60(msg.get("60")).batch_no
        kind = txn_type(msg)
        pan = pan_of(msg)
        fingerprint = Fingerprint.of(msg)  # masks the PAN once, for the entry too
        entry = Entry(
            mti=mti,
            stan=stan,
            kind=kind,
            amount=_amount(msg),
            pan_masked=fingerprint.pan_masked,
            # its 0400 came first (journaled, so reloaded after a restart): declined 05 after the MAC
            reversed=("0400", stan) in terminal.entries,
            fingerprint=fingerprint,
        )
        terminal.entries[(mti, stan)] = entry
        try:
            reply, link_request = await self._financial_steps(
                msg, raw, timing, terminal, entry, pan, batch, mak
            )
        except AnsweredElsewhere:
            return await self._first_answer(msg, terminal, entry, mak)
        except BaseException:
            entry.finish("96", None)
            terminal.entries.pop((mti, stan), None)
            raise
        code = str(reply.message["39"])
        if reply.reason in _STALE and not refreshed:
            # Another switch node may have signed the terminal on (new keys) or closed its batch since
            # this node read it: read it again once and decide afresh (switch/README.md, "Several
            # switch nodes"). Nothing was journaled nor sent for this attempt.
            entry.finish(code, None)
            terminal.entries.pop((mti, stan), None)
            await self.registry.refresh(terminal)
            return await self._financial(msg, raw, timing, refreshed=True)
        keep = code not in _RETRYABLE and batch == terminal.batch_no
        if kind == "offline" and code in _ADVICE_AGAIN:
            keep = False  # its retransmission goes upstream again, where the natural key dedups it
        entry.rrn = str(reply.message.get("37", "")) or None
        entry.auth_id = str(reply.message.get("38", "")).strip() or None
        if not keep:
            terminal.entries.pop((mti, stan), None)
        entry.finish(code, replayable(reply.message))
        reply.commit = entry.committed = self._journal(
            terminal, msg, entry, reply, timing, link_request, keep=keep
        )
        link = self.upstream.links.get(entry.link or "")
        if code == "00" and link_request is not None and link is not None and kind != "offline":
            # (an advice is never reversed: a terminal that got 96 sends it again)
            reply.undo = functools.partial(self._undo_approval, msg, entry, link, link_request)
        return reply

    async def _financial_steps(
        self,
        msg: Message,
        raw: bytes,
        timing: Timing,
        terminal: Terminal,
        entry: Entry,
        pan: str | None,
        batch: int,
        mak: str,
    ) -> tuple[Reply, Message | None]:
        assert terminal.session is not None
        session = terminal.session
        link = self.upstream.route(pan) if pan else None
        # an advice reports a sale already made: a PIN block in it is not verified nor sent on
        pin_block = None if entry.kind == "offline" else msg.get("52")
        translated: bytes | None = None
        zpk = link.config.zpk if link is not None else ""  # the link key the PIN is translated to
        pin_error: str | None = None
        mac = msg.get("64")
        # Whether the link is up is asked once: the MAC check below awaits the HSM, and a link that came
        # up meanwhile must not get a request whose PIN was never translated (no DE52: the issuer
        # answered 55 to the right PIN after a host restart, found by tests/faults.py).
        link_up = link is not None and link.up
        if (
            link is not None
            and pan is not None
            and isinstance(pin_block, bytes)
            and link_up
            and isinstance(mac, bytes)
            and self.codec.has_mac(raw)
        ):
            # MAC verification and PIN translation go to the HSM together and are answered together:
            # one wait, no task or event per request.
            t = trio.current_time()
            try:
                expected, pin = await self.hsm.pos_mac_and_translate_pin(
                    self.profile,
                    session.mak,
                    self.codec.mac_block(raw),
                    session.pik,
                    link.config.scheme,
                    zpk,
                    pin_block,
                    account12(pan),
                )
            finally:
                elapsed = trio.current_time() - t
                timing.hsm += elapsed
                metrics.LATENCY_HSM.observe(elapsed)
            mac_ok = expected == mac
            if isinstance(pin, HsmRefused):
                pin_error = pin.code
            else:
                translated = pin
        else:
            mac_ok = await self._verify_mac(terminal, msg, raw, timing)
        if not mac_ok:
            log.warning("MAC verification failed", terminal=terminal.terminal_id, stan=entry.stan)
            return Reply(pos_response(msg, code="A0"), resign=True, reason="mac_failed"), None
        if batch != terminal.batch_no:
            answer = pos_response(msg, code="77")
            return Reply(answer, resign=True, mac=mak, reason="batch_differs"), None
        if terminal.record.disabled:  # disabled at the host since its sign-on (switch/server.py poll)
            return Reply(pos_response(msg, code="58"), mac=mak, reason="terminal_disabled"), None
        if entry.reversed:  # reversed before it arrived: declined as the host declines it, not sent
            answer = pos_response(msg, code="05", acquirer_id=self.acquirer_id)
            return Reply(answer, mac=mak, reason="reversed_first"), None
        if pan is None:
            return Reply(pos_response(msg, code="30"), reason="no_card_number"), None
        if entry.kind == "offline" and (problem := _advice_problem(msg)) is not None:
            log.warning(
                "offline advice refused", terminal=terminal.terminal_id, stan=entry.stan, problem=problem
            )
            return Reply(pos_response(msg, code="30"), reason="offline_advice_fields"), None
        new_block = msg.get("62") if entry.kind == "pin-change" else None
        if entry.kind == "pin-change" and not (isinstance(pin_block, bytes) and isinstance(new_block, bytes)):
            return Reply(pos_response(msg, code="30"), mac=mak, reason="pin_change_blocks"), None
        if link is None:
            # 91, not 14: the card number may be valid, the switch has no issuer for its BIN (and a route
            # may be added while it runs); the contract has neither 15 nor 92 (switch/reasons.py)
            answer = pos_response(msg, code="91", acquirer_id=self.acquirer_id)
            return Reply(answer, mac=mak, reason="no_route"), None
        if not link_up:
            answer = pos_response(msg, code="91", acquirer_id=self.acquirer_id)
            return Reply(answer, mac=mak, reason="link_down"), None
        if pin_error is not None:
            log.warning("PIN translation refused", terminal=terminal.terminal_id, code=pin_error)
            bad_format = pin_error in ("20", "23", "24")
            return Reply(
                pos_response(msg, code="99" if bad_format else "96"),
                mac=mak,
                reason="pin_format" if bad_format else "pin_translation_failed",
            ), None
        if isinstance(pin_block, bytes) and translated is None:  # never a PIN request without its PIN
            log.error("PIN not translated; not sent", terminal=terminal.terminal_id, stan=entry.stan)
            return Reply(pos_response(msg, code="96"), mac=mak, reason="pin_not_translated"), None
        new_translated: bytes | None = None
        if isinstance(new_block, bytes):
            # A PIN change's new block goes to the same link ZPK as its old one (DE52), before anything
            # is durable: a block the HSM refuses is answered here and nothing goes upstream.
            translated_new = await self._translate_new_pin(session.pik, link, zpk, new_block, pan, timing)
            if isinstance(translated_new, HsmRefused):
                code = translated_new.code
                log.warning("new PIN translation refused", terminal=terminal.terminal_id, code=code)
                bad_format = code in ("20", "23", "24")
                return Reply(
                    pos_response(msg, code="99" if bad_format else "96"),
                    mac=mak,
                    reason="pin_format" if bad_format else "pin_translation_failed",
                ), None
            new_translated = translated_new
        link_stan = link.next_stan()
        ref = rrn(link_stan)
        now = time.time()  # DE7 and DE12/13 one instant: a reversal derives the latter from the former
        request = pos_to_h2h(
            msg,
            stan=link_stan,
            de7=transmission_time(now),
            now=now,
            rrn_value=ref,
            acquirer_id=self.acquirer_id,
            pin_block=translated,
            new_pin_block=new_translated,
            mcc=terminal.record.mcc,
            merchant_name=terminal.record.merchant_name,
        )
        entry.link, entry.link_mti, entry.link_stan = link.name, request["t"], request["11"]
        entry.link_de7, entry.link_de32 = request["7"], request["32"]
        if entry.kind == "void":
            original = _original_by_de61(terminal, msg)
            if original is not None:
                entry.original = f"{original.mti}/{original.stan}"
        # Durable before it leaves: a crash from here on leaves a record that start-up recovery reverses.
        await self._write_ahead(terminal, msg, entry, request).wait()
        if self.journal.ahead_refused(_dedup_key(terminal, entry)):
            raise AnsweredElsewhere  # a retransmission another switch node took first: never sent twice
        if translated is not None and translate_again(self.hsm, link, zpk):
            assert pan is not None and isinstance(pin_block, bytes)
            request["52"] = await self.hsm.translate_pin(
                self.profile,
                "002",
                session.pik,
                link.config.scheme,
                link.config.zpk,
                pin_block,
                account12(pan),
            )
            if isinstance(new_block, bytes):  # both blocks of a PIN change under the key it goes out under
                request["48"] = (
                    (
                        await self.hsm.translate_pin(
                            self.profile,
                            "002",
                            session.pik,
                            link.config.scheme,
                            link.config.zpk,
                            new_block,
                            account12(pan),
                        )
                    )
                    .hex()
                    .upper()
                )
        advice = entry.kind == "offline"
        # an offline advice is never reversed: unanswered, the terminal sends it again (specs/README.md)
        outcome = await self.upstream.send(link, request, reverse_on_timeout=not advice)
        timing.host = outcome.host_seconds
        if outcome.local_code is not None:
            return Reply(
                pos_response(msg, code=outcome.local_code, acquirer_id=self.acquirer_id),
                mac=mak,
                reason=outcome.reason,
            ), None
        if outcome.timed_out:
            entry.saf_queued = not advice
            return Reply(
                pos_response(msg, code="98", rrn_value=ref, acquirer_id=self.acquirer_id),
                mac=mak,
                reason="advice_timeout" if advice else "upstream_timeout",
            ), request
        host_answer = outcome.answer
        assert host_answer is not None
        code = str(host_answer.get("39", "96"))
        invalid = code in ("A0", "97", "99") or len(code) != 2
        if invalid:
            code = "96"
        reply = pos_response(
            msg,
            code=code,
            rrn_value=ref,
            auth_id=str(host_answer.get("38", "")).strip() or None,
            acquirer_id=self.acquirer_id,
            settlement_date=host_answer.get("15"),
            balance=pos_balance(host_answer.get("54")) if entry.kind in BALANCE_AFTER else None,
        )
        if carries_chip(msg) and "48" in host_answer:
            # the issuer's chip answer (tag 91 ARPC || ARC) in DE55 (specs/README.md, "Chip data")
            chip = chip_answer(host_answer.get("48"))
            if chip is None:
                log.warning("issuer chip data unreadable; answered without DE55", link=link.name, rrn=ref)
            else:
                reply["55"] = chip
        if code == "00" and entry.kind == "void" and entry.original is not None:
            original = terminal.entries.get(tuple(entry.original.split("/", 1)))  # type: ignore[arg-type]
            if original is not None:
                original.voided = True
        return Reply(reply, mac=mak, reason="issuer_answer_invalid" if invalid else None), request

    async def _translate_new_pin(
        self, pik: str, link: OutboundLink, zpk: str, block: bytes, pan: str, timing: Timing
    ) -> bytes | HsmRefused:
        """A PIN change's new PIN block (POS DE62) from the terminal's PIK to the link ``zpk``, as DE52
        is translated; the HSM's refusal is returned, not raised."""
        t = trio.current_time()
        try:
            return await self.hsm.translate_pin(
                self.profile, "002", pik, link.config.scheme, zpk, block, account12(pan)
            )
        except HsmRefused as exc:
            return exc
        finally:
            elapsed = trio.current_time() - t
            timing.hsm += elapsed
            metrics.LATENCY_HSM.observe(elapsed)

    async def _undo_approval(self, msg: Message, entry: Entry, link: OutboundLink, request: Message) -> None:
        """The issuer approved, but the terminal gets 96 (the answer's MAC could not be made): a terminal
        does not reverse a decline, so the switch does, through store-and-forward (durable before the 96
        leaves), and a retransmission gets the 96 too. The journal row keeps the issuer's 00: the
        reconciliation pairs it with the reversal advice in switch_saf."""
        log.error("approval reversed: its answer could not be MACed", link=link.name, stan=request.get("11"))
        await self.upstream.reverse(link, request, "96")
        entry.saf_queued = True
        entry.code = "96"
        entry.response = replayable(pos_response(msg, code="96"))

    def _request_columns(self, terminal: Terminal, msg: Message, entry: Entry) -> tuple[Any, ...]:
        """store.REQUEST_COLUMNS of ``msg``: shared by its journal row and its write-ahead record."""
        return (
            self.channel,
            entry.mti,
            entry.kind,
            msg.get("3"),
            terminal.terminal_id,
            terminal.merchant_id,
            parse_de60(msg.get("60")).batch_no,
            entry.stan,
            entry.amount,
            msg.get("49"),
            entry.pan_masked,
        )

    def _write_ahead(
        self, terminal: Terminal, msg: Message, entry: Entry, request: Message, reverses: str | None = None
    ) -> trio.Event:
        """Queue the write-ahead record (store.WRITE_AHEAD_COLUMNS) of ``request``, about to go upstream on
        ``entry.link`` for ``msg``; the event is set once it is committed. ``reverses``: the DE90 a
        reversal advice for it names when that is not the request itself (a forwarded 0400)."""
        return self.journal.submit_ahead(
            (
                _dedup_key(terminal, entry),
                *self._request_columns(terminal, msg, entry),
                request.get("37"),
                entry.original,
                entry.link,
                request["t"],
                request["11"],
                request["7"],
                request["32"],
                reverses,
            )
        )

    def _journal(
        self,
        terminal: Terminal,
        msg: Message,
        entry: Entry,
        reply: Reply,
        timing: Timing,
        request: Message | None,
        *,
        keep: bool,
    ) -> trio.Event:
        """Queue the request's journal row; the event is set once it is committed."""
        answer = reply.message
        key = _dedup_key(terminal, entry)
        if not keep:
            key += f"|{answer.get('39')}|{time.time_ns()}"
        now = trio.current_time()
        row = (
            key,
            *self._request_columns(terminal, msg, entry),
            answer.get("37"),
            str(answer.get("38", "")).strip() or None,
            str(answer.get("39")),
            entry.link if request is not None or entry.link else None,
            entry.link_mti,
            entry.link_stan,
            entry.link_de7,
            entry.link_de32,
            entry.original,
            int((now - timing.start) * 1e6),
            int(timing.hsm * 1e6),
            int(timing.host * 1e6),
            _json(entry.response if entry.response is not None else replayable(answer)),
            reply.reason,
        )
        return self.journal.submit(row)

    async def _first_answer(self, msg: Message, terminal: Terminal, entry: Entry, mak: str) -> Reply:
        """A request whose key another switch node holds (its write-ahead insert was refused): the
        first's answer, from the journal once that node has committed it (at most about one upstream
        timeout); else 94, nothing journaled, so the terminal may send it again."""
        key = _dedup_key(terminal, entry)
        deadline = trio.current_time() + self.upstream.timeout + FIRST_ANSWER_MARGIN_S
        row = await self.store.journal_entry(key)
        while row is None and trio.current_time() < deadline:
            await trio.sleep(0.05)
            row = await self.store.journal_entry(key)
        if row is None:
            terminal.entries.pop((entry.mti, entry.stan), None)
            entry.finish("94", None)
            log.warning(
                "retransmission in flight at another switch node",
                terminal=terminal.terminal_id,
                stan=entry.stan,
            )
            return Reply(pos_response(msg, code="94", acquirer_id=self.acquirer_id), mac=mak)
        first = entry_from_row(row)
        terminal.entries[(entry.mti, entry.stan)] = first
        entry.finish(first.code or "96", first.response)
        return await self._duplicate(msg, first, terminal)

    # -- reversals ---------------------------------------------------------------------------------
    async def _reversal(self, msg: Message, raw: bytes, timing: Timing) -> Reply:
        terminal, refusal = await self._signed_on(msg, raw, timing)
        if terminal is None:
            assert refusal is not None
            return refusal
        assert terminal.session is not None
        mak = terminal.session.mak
        stan = str(msg.get("11", ""))
        if not await self._verify_mac(terminal, msg, raw, timing):
            return Reply(pos_response(msg, code="A0"), resign=True)
        if parse_de60(msg.get("60")).type_code == OFFLINE_TYPE_CODE:
            # An offline advice is repeated, never reversed (specs/README.md, "Offline sales"): 12, and
            # nothing is kept, so neither the advice nor its retransmission is taken for reversed.
            answer = pos_response(msg, code="12", acquirer_id=self.acquirer_id)
            return Reply(answer, mac=mak, reason="advice_not_reversible")
        existing = terminal.entries.get(("0400", stan))  # after the MAC's wait: a twin may have come
        if existing is not None:
            return await self._duplicate(msg, existing, terminal)
        pan = pan_of(msg)
        entry = Entry(
            mti="0400",
            stan=stan,
            kind="reversal",
            amount=_amount(msg),
            pan_masked=mask_pan(pan) if pan else None,
        )
        # From here on a 0200 with this STAN that comes later is declined 05 (``_financial``).
        terminal.entries[("0400", stan)] = entry
        try:
            return await self._reversal_steps(msg, timing, terminal, entry, stan, mak)
        except BaseException:
            # The database or the HSM went away (96 from ``handle``): the entry must not stay unfinished,
            # or every repeat of this 0400 would wait for it forever; the terminal sends it again.
            entry.finish("96", None)
            terminal.entries.pop(("0400", stan), None)
            raise

    async def _reversal_steps(
        self, msg: Message, timing: Timing, terminal: Terminal, entry: Entry, stan: str, mak: str
    ) -> Reply:
        original = terminal.find_original(stan)
        if original is None:  # its original may have been made at another switch node
            await self.registry.refresh(terminal)
            original = terminal.find_original(stan)
        request: Message | None = None
        rrn_value: str | None = None
        if original is not None:
            entry.original = f"{original.mti}/{original.stan}"
            found = original

            def approved() -> tuple[OutboundLink, Message] | None:
                link = self.upstream.links.get(found.link or "")
                if found.code != "00" or link is None or found.link_stan is None:
                    return None
                return link, _as_original(found, msg, link)

            def write_ahead(link: OutboundLink, up: Message) -> trio.Event:
                entry.link, entry.link_mti, entry.link_stan = link.name, "0400", up["11"]
                entry.link_de7, entry.link_de32 = up["7"], up["32"]
                # its reversal advice names the original (DE90), not the 0400
                return self._write_ahead(terminal, msg, entry, up, reverses=up["90"])

            sent = await reverse(
                self.upstream,
                original,
                approved,
                lambda link, up: upstream_reversal(msg, up, link, self.acquirer_id, pan=True),
                write_ahead,
            )
            rrn_value = original.rrn
            if sent is not None:
                request, timing.host = sent.request, sent.host_seconds
        # 00 whatever became of it upstream: the switch owns the reversal now (switch/reversals.py)
        answer = pos_response(msg, code="00", rrn_value=rrn_value, acquirer_id=self.acquirer_id)
        reply = Reply(answer, mac=mak)
        entry.finish("00", replayable(answer))
        reply.commit = entry.committed = self._journal(
            terminal, msg, entry, reply, timing, request, keep=True
        )
        return reply

    # -- batch -------------------------------------------------------------------------------------
    async def _settle(self, msg: Message) -> Reply:
        terminal, refusal = await self._terminal(msg)
        if terminal is None:
            assert refusal is not None
            return refusal
        if not terminal.signed_on:
            return Reply(pos_response(msg, code="A0"), resign=True)
        de48 = str(msg.get("48", ""))
        try:
            domestic, foreign = parse_batch_totals(de48)
        except ValueError:
            return Reply(pos_response(msg, code="30"))
        batch = parse_de60(msg.get("60")).batch_no
        # The batch's requests may have been made at other switch nodes: its totals come from the
        # database's journal (one read per settlement), with what is in flight here.
        await self.registry.refresh(terminal)
        if batch != terminal.batch_no:
            return Reply(pos_response(msg, code="77"), resign=True)
        async with terminal.lock:
            in_flight = [e.done for e in terminal.entries.values() if e.code is None]
            for done in in_flight:
                await done.wait()
            ours = BatchTotals(*terminal.totals())
            # closed-loop cards are all domestic: any foreign total is a difference
            balanced = replace(domestic, result="0") == ours and replace(foreign, result="0") == BatchTotals()
            result = "1" if balanced else "2"
            answer_48 = str(replace(domestic, result=result))
            if len(de48) == 62:
                answer_48 += str(replace(foreign, result=result))
            if balanced:
                next_batch = await self.store.close_batch(
                    terminal.terminal_id, terminal.merchant_id, batch, 1, de48
                )
                terminal.new_batch(next_batch)
            else:
                await self.store.mark_batch(terminal.terminal_id, terminal.merchant_id, batch, 2, de48)
                log.warning(
                    "batch not balanced",
                    terminal=terminal.terminal_id,
                    batch=batch,
                    claimed=str(domestic),
                    journal=str(ours),
                )
        answer = pos_response(msg, code="00", acquirer_id=self.acquirer_id)
        answer["48"] = answer_48
        network = parse_de60(msg.get("60")).network_code
        answer["60"] = de60("00", terminal.batch_no, network)
        return Reply(answer)

    async def _upload(self, msg: Message) -> Reply:
        """A 0320: each record judged and, where the switch can justify it, posted as an advice; the
        0330's DE48 says which per record, and at the end (60.3 202) the upload's counts
        (switch/upload.py; specs/README.md, "Batch upload")."""
        terminal, refusal = await self._terminal(msg)
        if terminal is None:
            assert refusal is not None
            return refusal
        if not terminal.signed_on:
            return Reply(pos_response(msg, code="A0"), resign=True)
        de60_value = parse_de60(msg.get("60"))
        de48 = str(msg.get("48", ""))
        try:
            records = parse_upload_de48(de48) if de48 else []
        except ValueError:
            return Reply(pos_response(msg, code="30"))
        final = de60_value.network_code == "202"
        counts: batch_upload.Counts | None = None
        async with terminal.lock:
            if de60_value.batch_no != terminal.batch_no:
                # The same upload again after its batch closed: answered from what it came to, nothing
                # posted (a lost 0330 makes a terminal send it again); an unknown batch is 77.
                replayed = await self._upload_replay(terminal, de60_value.batch_no, records)
                if replayed is None:
                    return Reply(pos_response(msg, code="77"), resign=True)
                results, counts = replayed
                if not final:
                    counts = None
            else:
                results = await self._reconcile(terminal, records)
                if final:
                    counts = await self._close_upload(terminal)
        answer = pos_response(msg, code="00", acquirer_id=self.acquirer_id)
        answer["48"] = batch_upload.answer_de48(results, counts)
        answer["60"] = de60("00", terminal.batch_no, de60_value.network_code)
        return Reply(answer)

    def _upload_entry(self, terminal: Terminal, stan: str) -> Entry | None:
        """The journal's request for an uploaded STAN: the sale's approved offline advice first (it may
        share its STAN with an online attempt that timed out), else the batch's financial request."""
        advice = terminal.entries.get(("0220", stan))
        if advice is not None and advice.code == "00" and advice.kind == "offline":
            return advice
        return terminal.find_original(stan)

    async def _reconcile(self, terminal: Terminal, records: list[UploadRecord]) -> list[batch_upload.Result]:
        """Judge (and post) the records of one 0320 under the terminal's lock; every outcome is kept."""
        run = self.store.pool.run
        tid, mid, batch = terminal.terminal_id, terminal.merchant_id, terminal.batch_no
        posted = await run(batch_upload.posted_stans, tid, mid, batch)
        seen = {r.stan for r in terminal.upload}
        results: list[batch_upload.Result] = []
        rows: list[tuple[Any, ...]] = []
        for record in records:
            entry = self._upload_entry(terminal, record.stan)
            repeated, before = record.stan in seen, record.stan in posted
            seen.add(record.stan)
            floor: int | None = None
            if entry is None and not (repeated or before):
                floor = await run(batch_upload.floor_limit, record.pan)
            undone = False
            de90 = batch_upload.reversal_de90(entry) if entry is not None and entry.code == "98" else None
            if entry is not None and entry.link and de90 is not None:
                undone = await run(batch_upload.reversal_done, entry.link, de90)
            verdict = batch_upload.judge(
                record,
                entry,
                repeated=repeated,
                posted_before=before,
                floor_limit=floor,
                reversal_done=undone,
            )
            sent: tuple[str | None, str | None, str | None] = (None, None, None)
            if verdict.advice:
                verdict, sent = await self._post_record(terminal, record, entry, verdict)
            results.append(verdict.result)
            rows.append(
                (
                    tid,
                    mid,
                    batch,
                    record.stan,
                    mask_pan(record.pan) if record.pan else None,
                    record.amount,
                    verdict.result.value,
                    verdict.detail,
                    *sent,
                )
            )
            log.info(
                "batch upload record",
                terminal=tid,
                batch=batch,
                stan=record.stan,
                result=verdict.result.value,
                detail=verdict.detail,
            )
        terminal.upload.extend(records)
        await run(batch_upload.save_results, rows)
        return results

    async def _post_record(
        self, terminal: Terminal, record: UploadRecord, entry: Entry | None, verdict: batch_upload.Verdict
    ) -> tuple[batch_upload.Verdict, tuple[str | None, str | None, str | None]]:
        """Send an uploaded record upstream as an offline advice; what the host made of it. Never
        reversed (an advice is repeated, not reversed): unanswered, it is reported and a later upload
        may send it again, where the host's natural key posts it at most once."""
        started = trio.current_time()
        link = self.upstream.route(record.pan) if record.pan else None
        if link is None or not link.up:
            return batch_upload.Verdict(batch_upload.Result.NOT_POSTED, "no_route"), (None, None, None)
        link_stan = link.next_stan()
        now = time.time()
        sale = local_time_of(entry.link_de7) if entry is not None and entry.link_de7 else None
        request = batch_upload.upload_advice(
            record,
            terminal_id=terminal.terminal_id,
            merchant_id=terminal.merchant_id,
            batch=terminal.batch_no,
            stan=link_stan,
            de7=transmission_time(now),
            local=sale or local_time(now),
            rrn_value=rrn(link_stan, now),
            acquirer_id=self.acquirer_id,
            mcc=terminal.record.mcc,
            merchant_name=terminal.record.merchant_name,
        )
        sent = (link.name, str(request["11"]), str(request["7"]))
        outcome = await self.upstream.send(link, request, reverse_on_timeout=False)
        answer = outcome.answer
        if answer is None:
            return batch_upload.Verdict(batch_upload.Result.NOT_POSTED, "advice_unanswered"), sent
        code = str(answer.get("39", ""))
        if code != "00":
            return batch_upload.Verdict(batch_upload.Result.NOT_POSTED, "host_declined"), sent
        key = batch_upload.advice_key(
            terminal.merchant_id, terminal.terminal_id, terminal.batch_no, record.stan
        )
        if not await self.store.pool.run(batch_upload.posted_by, key, sent[2], sent[1]):
            return batch_upload.Verdict(batch_upload.Result.DUPLICATE, "host_had_it"), sent
        # Journaled as the offline advice it is (kind "offline"), so settlement pairs it with the host's
        # posting; its key is its own (not the terminal's 0220 key, which its own advice may still use).
        pos_msg: Message = {
            "t": "0220",
            "3": "000000",
            "4": f"{record.amount:012d}",
            "11": record.stan,
            "25": "00",
            "41": terminal.terminal_id,
            "42": terminal.merchant_id,
            "49": "156",
            "60": de60(OFFLINE_TYPE_CODE, terminal.batch_no, "000"),
        }
        posted = Entry(
            mti="0220",
            stan=record.stan,
            kind="offline",
            amount=record.amount,
            pan_masked=mask_pan(record.pan),
        )
        posted.link, posted.link_mti, posted.link_stan = link.name, "0220", sent[1]
        posted.link_de7, posted.link_de32 = sent[2], str(request["32"])
        reply = Reply(
            pos_response(
                pos_msg,
                code="00",
                rrn_value=str(request["37"]),
                auth_id=str(answer.get("38", "")).strip() or None,
                acquirer_id=self.acquirer_id,
            ),
            reason="batch_upload",
        )
        posted.finish("00", replayable(reply.message))
        timing = Timing(started, host=outcome.host_seconds)
        await self._journal(terminal, pos_msg, posted, reply, timing, request, keep=False).wait()
        return verdict, sent

    async def _close_upload(self, terminal: Terminal) -> batch_upload.Counts:
        """The end of an upload (60.3 202): the journal's approvals the terminal did not upload are
        reported, the batch closes with the upload's counts."""
        tid, mid, batch = terminal.terminal_id, terminal.merchant_id, terminal.batch_no
        uploaded = {r.stan for r in terminal.upload}
        lacking = batch_upload.terminal_lacks(terminal.entries.values(), uploaded)
        rows = [
            (
                tid,
                mid,
                batch,
                e.stan,
                e.pan_masked,
                e.amount,
                batch_upload.Result.TERMINAL_LACKS.value,
                "not_uploaded",
                e.link,
                e.link_stan,
                e.link_de7,
            )
            for e in lacking
        ]
        await self.store.pool.run(batch_upload.save_results, rows)
        stored = await self.store.pool.run(batch_upload.batch_results, tid, batch)
        counts = batch_upload.Counts.of(
            batch_upload.Result(r["result"]) for r in stored if r["merchant_id"] == mid
        )
        log.info("batch upload reconciled", terminal=tid, batch=batch, counts=str(counts))
        next_batch = await self.store.close_batch(tid, mid, batch, 2, f"upload {counts}")
        terminal.new_batch(next_batch)
        return counts

    async def _upload_replay(
        self, terminal: Terminal, batch: int, records: list[UploadRecord]
    ) -> tuple[list[batch_upload.Result], batch_upload.Counts] | None:
        """The answer to an upload of a batch already closed, from its stored outcomes (a record it
        posted is a duplicate now); None when that batch has none."""
        stored = [
            r
            for r in await self.store.pool.run(batch_upload.batch_results, terminal.terminal_id, batch)
            if r["merchant_id"] == terminal.merchant_id
        ]
        if not stored:
            return None
        first: dict[str, batch_upload.Result] = {}
        for r in stored:
            if r["result"] != batch_upload.Result.DUPLICATE:
                first.setdefault(r["stan"], batch_upload.Result(r["result"]))
        seen: set[str] = set()
        results = []
        for record in records:
            was = first.get(record.stan, batch_upload.Result.NOT_POSTED)
            again = record.stan in seen or was is batch_upload.Result.POSTED
            results.append(batch_upload.Result.DUPLICATE if again else was)
            seen.add(record.stan)
        log.warning(
            "upload of a closed batch answered from its results", terminal=terminal.terminal_id, batch=batch
        )
        return results, batch_upload.Counts.of(batch_upload.Result(r["result"]) for r in stored)


def _dedup_key(terminal: Terminal, entry: Entry) -> str:
    """A terminal request's journal key: a retransmission (same batch, STAN and MTI) has the same one."""
    return f"pos|{terminal.terminal_id}|{terminal.merchant_id}|{terminal.batch_no}|{entry.stan}|{entry.mti}"


def _advice_problem(msg: Message) -> str | None:
    """What an offline advice lacks (specs/README.md, "Offline sales"), or None: DE61 naming the sale
    (batch + STAN + MMDD), its local time DE12/DE13, the terminal's approval code DE38, an amount."""
    try:
        de61 = De61.parse(str(msg.get("61", "")))
    except ValueError:
        return "DE61 is not batch + STAN + MMDD"
    if not de61.date:
        return "DE61 has no MMDD"
    if not (str(msg.get("12", "")).isdigit() and str(msg.get("13", "")).isdigit()):
        return "DE12/DE13 (the sale's local time) missing"
    if not str(msg.get("38", "")).strip():
        return "DE38 (the offline approval code) missing"
    if _amount(msg) <= 0:
        return "DE4 missing or zero"
    return None


def _response_header(tpdu: bytes, header: bytes, resign: bool) -> bytes:
    """Swapped TPDU + response header; the re-sign-on flag sets processing requirement 3."""
    return swap_tpdu(tpdu) + response_header(header, REQUIREMENT_SIGN_ON if resign else REQUIREMENT_NONE)


def _amount(msg: Message) -> int:
    value = msg.get("4")
    return int(value) if isinstance(value, str) and value.isdigit() else 0


def _original_by_de61(terminal: Terminal, msg: Message) -> Entry | None:
    de61 = str(msg.get("61", ""))
    if len(de61) < 12 or not de61[:6].isdigit() or int(de61[:6]) != terminal.batch_no:
        return None
    return terminal.find_original(de61[6:12])


def _as_original(entry: Entry, reversal: Message, link: OutboundLink) -> Message:
    """Enough of the original upstream request to build its reversal advice."""
    msg: Message = {k: reversal[k] for k in ("3", "4", "41", "42", "49") if k in reversal}
    msg.update(
        {
            "t": entry.link_mti or "0200",
            "11": entry.link_stan or "000000",
            "7": entry.link_de7 or transmission_time(),
            "32": entry.link_de32 or link.acquirer_id,
        }
    )
    if entry.rrn:
        msg["37"] = entry.rrn
    # The original's terminal local time (its DE7's instant, also for a row loaded from the journal): its
    # reversal and reversal advice carry it, so the clearing file's reversal has the terminal's time.
    local = local_time_of(msg["7"])
    if local is not None:
        msg["12"], msg["13"] = local
    return msg


_ENCODER = json.JSONEncoder(
    separators=(",", ":"), default=lambda b: b.hex() if isinstance(b, bytes) else str(b)
)


def _json(value: Any) -> str:
    return _ENCODER.encode(value)
