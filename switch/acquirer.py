"""Inbound acquirer links (H2H dialect on the switch's H2H port): other acquirers send through us.

An acquirer is identified by the DE32 it sends, matched against an ``in`` row of ``switch_links``
(its ZPK, and its ZAK when the link is MACed). An unknown DE32, a link with neither a ZAK nor the
``--no-mac`` declaration, or a no-MAC link from a non-loopback peer (unless
``switch.allow_remote_no_mac``) is answered 03, 0800 included (``_link_refusal``). Per request:
verify DE128 when the link has a ZAK (a missing or wrong MAC is answered 30 and nothing is
forwarded), translate the PIN from the acquirer's ZPK to the issuer link's ZPK (CC, or W8 across
algorithms), route by BIN, forward, answer.

Toward issuers the forwarded request keeps the acquirer's DE32 and carries the switch's id as the
forwarding institution (DE33; the issuer picks the link keys by DE33, else DE32), with the switch's own
DE7 and link STAN. A timeout answers 91 and queues
a reversal advice upstream. A duplicate (same DE32 + DE7 + DE11 + DE41 + MTI) gets the first answer
again from the journal and nothing goes upstream twice (the same key with another amount, PAN or DE3,
or after a reversal named it: 94). Reversals (0400/0420/0421) name their original in DE90; an original
the switch forwarded is awaited and reversed upstream once (switch/reversals.py; through
store-and-forward when the issuer does not answer); any other is answered 00, and an original that
arrives after its reversal is declined 05 without being forwarded. What goes upstream is written
ahead first (see switch/README.md): after a crash, start-up recovery reverses it and journals it as
answered 91.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import trio

from ops.logs import get_logger, mask_pan
from ops.peers import link_refusal, peer_is_loopback
from specs.catalogue import unhandled_code
from specs.codec import Codec, codec_for
from specs.errors import DecodeError
from switch import metrics
from switch.hsm import HsmRefused, HsmUnavailable, SwitchHsm
from switch.journal import JournalWriter
from switch.links import LinkConfig, OutboundLink
from switch.mapping import (
    Message,
    account12,
    pan_of,
    response_mti,
    transmission_time,
    txn_type,
)
from switch.reversals import Fingerprint, reverse, upstream_reversal
from switch.store import Store
from switch.upstream import Upstream, translate_again

log = get_logger(__name__)

FINANCIAL = frozenset({"0100", "0200", "0220"})
REVERSALS = frozenset({"0400", "0420", "0421"})
_MEMORY = 200_000  # recent requests kept for duplicates and reversals before asking the journal


@dataclass(slots=True)
class _Seen:
    done: trio.Event
    answer: Message | None = None
    link: str | None = None
    forwarded: Message | None = None  # the upstream request, when one was sent
    approved: bool = False
    reversed: bool = False  # a reversal named it (before or after it came)
    committed: trio.Event | None = None  # set once its journal row is committed
    code: str | None = None  # from the journal, for a row without a stored answer
    saf_queued: bool = False  # a reversal advice for it is durable
    fingerprint: Fingerprint | None = None  # what a retransmission repeats (switch/reversals.py)
    reason: str | None = None  # why the switch answered so itself (switch/reasons.py), for the journal


class AcquirerService:
    def __init__(
        self,
        *,
        hsm: SwitchHsm,
        store: Store,
        journal: JournalWriter,
        upstream: Upstream,
        inbound: dict[str, LinkConfig],
        institution_id: str,
        allow_remote_no_mac: bool = False,
    ) -> None:
        self.hsm = hsm
        self.store = store
        self.journal = journal
        self.upstream = upstream
        self.inbound = inbound
        self.institution_id = institution_id
        self.allow_remote_no_mac = allow_remote_no_mac  # switch.allow_remote_no_mac
        self.codecs = {p: codec_for("h2h", p) for p in ("3des", "sm4")}
        self._seen: OrderedDict[str, _Seen] = OrderedDict()
        # "link|DE90 key" of an original -> its dedup key, from the moment it arrives
        self._originals: OrderedDict[str, str] = OrderedDict()
        # "link|DE90 key" named by a reversal that came before its original: the original gets 05
        self._early: OrderedDict[str, str] = OrderedDict()

    async def handle(self, body: bytes, conn: trio.SocketStream | None = None) -> bytes | None:
        t0 = trio.current_time()
        codec, msg, error = self._decode(body)
        if msg is None:
            assert error is not None
            return self._format_error(error)
        link = self.inbound.get(str(msg.get("32", "")))
        mti = str(msg["t"])
        if link is not None and codec is not self.codecs[link.scheme]:
            return self._plain(codec, msg, "30")
        refused = self._link_refusal(link, conn)
        if refused is not None:  # 08xx included: a sign-on or echo from no link is not answered 00
            log.warning("acquirer link may not send; answered 03", acquirer=msg.get("32"), reason=refused)
            return self._plain(codec, msg, "03")
        assert link is not None
        if mti == "0800":
            return self._plain(codec, msg, "00")
        if link.zak and not await self._mac_ok(codec, link, msg, body):
            log.warning("acquirer MAC verification failed", acquirer=link.institution_id, stan=msg.get("11"))
            return self._plain(codec, msg, "30")
        if mti not in FINANCIAL and mti not in REVERSALS:
            return await self._answer(codec, link, msg, self._response(msg, unhandled_code(mti)))
        key = "|".join(
            (
                "h2h",
                link.name,
                str(msg.get("32", "")),
                str(msg.get("7", "")),
                str(msg.get("11", "")),
                str(msg.get("41", "")).strip(),
                mti,
            )
        )
        original_key = f"{link.name}|{_original_key(msg)}" if mti in FINANCIAL else None
        seen, reversed_in_journal = await self._lookup(key, link, msg)
        if seen is not None:
            metrics.DUPLICATES.labels(channel="h2h").inc()
            await seen.done.wait()
            first = seen.fingerprint
            differs = first is not None and not first.same(Fingerprint.of(msg))
            if mti in FINANCIAL and (seen.reversed or differs):
                # Another request under the same key, or one a reversal withdrew: not a retransmission
                # (switch/reversals.py). Nothing is decided, so nothing is journaled.
                return await self._answer(codec, link, msg, self._response(msg, "94"))
            if seen.committed is not None:
                await seen.committed.wait()  # a replay leaves only once the first answer is journaled
            # no stored answer (a request recovered after a crash): its code, as a timeout answers it
            answer = dict(seen.answer or self._response(msg, seen.code or "96"))
            return await self._answer(codec, link, msg, answer)
        seen = self._remember(key)
        if original_key is not None:
            # Known to reversals from now on, without a checkpoint since the test of _early: a 0400 on
            # another connection either came first (05 below) or finds this one and awaits its outcome.
            seen.fingerprint = Fingerprint.of(msg)
            seen.reversed = reversed_in_journal or original_key in self._early
            self._originals[original_key] = key
            if len(self._originals) > _MEMORY:
                self._originals.popitem(last=False)
        us_hsm = 0.0
        try:
            if mti in FINANCIAL:
                answer, us_hsm = await self._financial(link, msg, seen, key)
            else:
                answer = await self._reversal(msg, link, seen, key)
        except Exception as exc:
            log.exception("acquirer request failed", error=str(exc))
            answer = self._response(msg, "96")
            seen.reason = "internal_error"
        seen.answer = answer
        seen.done.set()
        code = str(answer.get("39", ""))
        forwarded = seen.forwarded
        row = (
            key,
            *_request_columns(link, msg),
            answer.get("37"),
            str(answer.get("38", "")).strip() or None,
            code,
            seen.link,
            forwarded.get("t") if forwarded else None,
            forwarded.get("11") if forwarded else None,
            forwarded.get("7") if forwarded else None,
            forwarded.get("32") if forwarded else None,
            _de90_key(msg) if mti in REVERSALS else None,
            int((trio.current_time() - t0) * 1e6),
            int(us_hsm * 1e6),
            0,
            json.dumps(_storable(answer)),
            seen.reason,
        )
        committed = seen.committed = self.journal.submit(row)
        metrics.count_request("h2h", txn_type(msg), code)
        encoded = await self._answer(codec, link, msg, answer)  # DE128 while the row commits
        await committed.wait()  # the answer leaves only after its journal row is committed
        metrics.LATENCY_TOTAL.observe(trio.current_time() - t0)
        return encoded

    # -- decoding and answers ----------------------------------------------------------------------
    def _decode(self, body: bytes) -> tuple[Codec, Message | None, DecodeError | None]:
        try:
            return self.codecs["3des"], self.codecs["3des"].decode(body), None
        except DecodeError as exc:
            if exc.field != "52":
                return self.codecs["3des"], None, exc
        try:
            return self.codecs["sm4"], self.codecs["sm4"].decode(body), None
        except DecodeError as exc:
            return self.codecs["sm4"], None, exc

    def _format_error(self, exc: DecodeError) -> bytes | None:
        if exc.mti is None or exc.stan is None:
            metrics.BAD_FRAMES.labels(listener="h2h", action="dropped").inc()
            log.warning("H2H frame does not parse; dropped", error=str(exc))
            return b""  # dropped: nothing is sent and the link stays up
        metrics.BAD_FRAMES.labels(listener="h2h", action="answered_30").inc()
        log.warning("H2H frame does not parse; answering 30", error=str(exc), mti=exc.mti, stan=exc.stan)
        answer = {k: v for k, v in exc.partial.items() if k in ("7", "11", "32", "41", "42")}
        answer["t"] = response_mti(exc.mti)
        answer["39"] = "30"
        try:
            return self.codecs["3des"].encode(answer)
        except Exception:
            return b""

    def _response(self, msg: Message, code: str) -> Message:
        answer: Message = {
            k: v
            for k, v in msg.items()
            if k
            in ("2", "3", "4", "7", "11", "12", "13", "22", "25", "32", "37", "41", "42", "49", "70", "90")
        }
        answer["t"] = response_mti(str(msg["t"]))
        answer["39"] = code
        return answer

    def _plain(self, codec: Codec, msg: Message, code: str) -> bytes:
        return codec.encode(self._response(msg, code))

    async def _answer(self, codec: Codec, link: LinkConfig, msg: Message, answer: Message) -> bytes:
        answer.pop("128", None)
        answer.pop("52", None)
        if not link.zak or str(answer.get("39")) == "30":
            return codec.encode(answer)
        raw = codec.encode({**answer, "128": bytes(8)})
        return codec.with_mac(raw, await self.hsm.link_mac(link.scheme, link.zak, codec.mac_block(raw)))

    def _link_refusal(self, link: LinkConfig | None, conn: trio.SocketStream | None) -> str | None:
        """Why this acquirer may not send on this connection, None when it may (switch/README.md,
        "Inbound links"): unknown DE32, no ZAK and not declared ``--no-mac``, or declared ``--no-mac``
        from a peer that is not loopback unless ``switch.allow_remote_no_mac`` (anyone who reaches the
        port can write any DE32; without a MAC only the same machine says who sends)."""
        return link_refusal(
            link is not None,
            bool(link and link.zak),
            bool(link and link.no_mac),
            self.allow_remote_no_mac,
            lambda: conn is not None and peer_is_loopback(conn),
        )

    async def _mac_ok(self, codec: Codec, link: LinkConfig, msg: Message, body: bytes) -> bool:
        mac = msg.get("128")
        if not isinstance(mac, bytes) or link.zak is None:
            return False
        try:
            return await self.hsm.verify_link_mac(link.zak, codec.mac_block(body), mac)
        except (HsmRefused, HsmUnavailable):
            return False

    # -- duplicates --------------------------------------------------------------------------------
    def _remember(self, key: str) -> _Seen:
        seen = _Seen(trio.Event())
        self._seen[key] = seen
        if len(self._seen) > _MEMORY:
            self._seen.popitem(last=False)
        return seen

    async def _lookup(self, key: str, link: LinkConfig, msg: Message) -> tuple[_Seen | None, bool]:
        """(the request under ``key`` from memory, else from the journal; whether the journal holds a
        reversal from this link naming ``msg`` as its original). Memory answers most requests; the
        journal is read only when memory does not know the key (after a restart, or evicted), in the
        one round trip that finds both."""
        seen = self._seen.get(key)
        if seen is not None:
            return seen, False
        original = _original_key(msg) if str(msg["t"]) in FINANCIAL else None
        row, reversed_ = await self.store.journal_by_key(key, f"h2h:{link.name}", original)
        if row is None:
            return None, reversed_
        response = row["response"]
        answer = json.loads(response) if isinstance(response, str) else dict(response or {})
        seen = _Seen(
            trio.Event(),
            answer=answer or None,
            code=row["response_code"],
            reversed=reversed_,
            fingerprint=Fingerprint(row["amount"], row["proc_code"], row["pan_masked"]),
        )
        seen.done.set()
        return seen, reversed_

    async def _journaled_original(self, msg: Message, acquirer: LinkConfig, named: str) -> _Seen | None:
        """The original a reversal names when memory does not know it (forwarded before a restart, or
        evicted): from its journal row, with whether a reversal already named it; registered in memory
        so that a concurrent reversal of it finds the same record (and ``reverse`` acts once)."""
        de90 = _de90_key(msg)
        if de90 is None or de90[:4] not in FINANCIAL:
            return None
        # the original's dedup key (as ``handle`` makes it): DE32, DE7, DE11, DE41, MTI
        parts = (str(msg.get("32", "")), de90[10:20], de90[4:10], str(msg.get("41", "")).strip(), de90[:4])
        key = "|".join(("h2h", acquirer.name, *parts))
        row, reversed_ = await self.store.journal_by_key(key, f"h2h:{acquirer.name}", de90)
        known = self._originals.get(named)  # another request may have registered it meanwhile
        if known is not None and known in self._seen:
            return self._seen[known]
        if row is None:
            return None
        original = _Seen(trio.Event(), code=row["response_code"], link=row["link"], reversed=reversed_)
        original.approved = row["response_code"] == "00" and row["link_stan"] is not None
        if original.approved:
            # as much of the upstream request as its reversal and reversal advice need
            sent: Message = {k: v for k, v in msg.items() if k in ("3", "4", "41", "42", "49")}
            sent["t"], sent["11"] = row["link_mti"], row["link_stan"]
            sent["7"], sent["32"] = row["link_de7"], row["link_de32"]
            if row["rrn"]:
                sent["37"] = row["rrn"]
            original.forwarded = sent
        original.done.set()
        self._seen[key] = original
        self._originals[named] = key
        return original

    # -- financial ---------------------------------------------------------------------------------
    async def _financial(
        self, link: LinkConfig, msg: Message, seen: _Seen, key: str
    ) -> tuple[Message, float]:
        pan = pan_of(msg)
        if pan is None:
            seen.reason = "no_card_number"
            return self._response(msg, "30"), 0.0
        if seen.reversed:  # its reversal came first: declined as the host declines it, not sent
            seen.reason = "reversed_first"
            return self._response(msg, "05"), 0.0
        out = self.upstream.route(pan)
        if out is None:  # 91, not 14: no issuer for the BIN is not an invalid card (switch/reasons.py)
            seen.reason = "no_route"
            return self._response(msg, "91"), 0.0
        if not out.up:
            seen.reason = "link_down"
            return self._response(msg, "91"), 0.0
        hsm_seconds = 0.0
        pin = msg.get("52")
        forwarded = {k: v for k, v in msg.items() if k not in ("7", "11", "32", "33", "52", "128")}
        zpk = out.config.zpk
        if isinstance(pin, bytes):
            t = trio.current_time()
            try:
                forwarded["52"] = await self.hsm.translate_pin(
                    link.scheme, "001", link.zpk, out.config.scheme, zpk, pin, account12(pan)
                )
            except HsmRefused as exc:
                log.warning("acquirer PIN translation refused", code=exc.code)
                bad_format = exc.code in ("20", "23", "24")
                seen.reason = "pin_format" if bad_format else "pin_translation_failed"
                return self._response(msg, "30" if bad_format else "96"), 0.0
            hsm_seconds = trio.current_time() - t
            metrics.LATENCY_HSM.observe(hsm_seconds)
        forwarded["7"] = transmission_time()
        forwarded["11"] = f"{out.next_stan():06d}"
        forwarded["32"] = str(msg.get("32", ""))
        forwarded["33"] = self.institution_id
        seen.link = out.name
        seen.forwarded = forwarded
        # Durable before it leaves: a crash from here on leaves a record that start-up recovery reverses.
        await self.journal.submit_ahead(
            _write_ahead(key, link, msg, out.name, forwarded, None, None)
        ).wait()
        if isinstance(pin, bytes) and translate_again(self.hsm, out, zpk):
            forwarded["52"] = await self.hsm.translate_pin(
                link.scheme, "001", link.zpk, out.config.scheme, out.config.zpk, pin, account12(pan)
            )
        outcome = await self.upstream.send(out, forwarded)
        if outcome.local_code is not None:
            seen.reason = outcome.reason
            return self._response(msg, outcome.local_code), hsm_seconds
        if outcome.timed_out or outcome.answer is None:
            seen.reason = "upstream_timeout"
            return self._response(msg, "91"), hsm_seconds
        answer = dict(outcome.answer)
        for f in ("7", "11", "32"):
            if f in msg:
                answer[f] = msg[f]
            else:
                answer.pop(f, None)
        answer.pop("33", None)
        seen.approved = answer.get("39") == "00"
        return answer, hsm_seconds

    async def _reversal(self, msg: Message, acquirer: LinkConfig, seen: _Seen, own_key: str) -> Message:
        named = f"{acquirer.name}|{_de90_key(msg) or ''}"
        key = self._originals.get(named)
        original = self._seen.get(key) if key else None
        if original is None:
            original = await self._journaled_original(msg, acquirer, named)
        if original is None:
            # Not seen (yet): journaled with its DE90 key, so the late original is declined 05, from
            # memory now and from the journal after a restart.
            if _de90_key(msg) is not None:
                self._early[named] = own_key
                if len(self._early) > _MEMORY:
                    self._early.popitem(last=False)
            return self._response(msg, "00")
        found = original

        def approved() -> tuple[OutboundLink, Message] | None:
            link = self.upstream.links.get(found.link or "")
            if not found.approved or found.forwarded is None or link is None:
                return None
            return link, found.forwarded

        def write_ahead(link: OutboundLink, request: Message) -> trio.Event:
            seen.link, seen.forwarded = link.name, request  # the journal row names the upstream 0400
            return self.journal.submit_ahead(
                _write_ahead(own_key, acquirer, msg, link.name, request, _de90_key(msg), request["90"])
            )

        await reverse(
            self.upstream,
            original,
            approved,
            lambda link, fwd: upstream_reversal(msg, fwd, link, self.institution_id, pan=False),
            write_ahead,
        )
        return self._response(msg, "00")


def _request_columns(acquirer: LinkConfig, msg: Message) -> tuple[Any, ...]:
    """store.REQUEST_COLUMNS of an acquirer's ``msg``: shared by its journal row and write-ahead record."""
    pan = pan_of(msg)
    return (
        f"h2h:{acquirer.name}",
        str(msg["t"]),
        txn_type(msg),
        msg.get("3"),
        str(msg.get("41", "")).strip() or None,
        str(msg.get("42", "")).strip() or None,
        None,
        msg.get("11"),
        _int(msg.get("4")),
        msg.get("49"),
        mask_pan(pan) if pan else None,
    )


def _write_ahead(
    key: str,
    acquirer: LinkConfig,
    msg: Message,
    link: str,
    upstream: Message,
    original: str | None,
    reverses: str | None,
) -> tuple[Any, ...]:
    """The write-ahead record (store.WRITE_AHEAD_COLUMNS) of ``upstream``, sent on ``link`` for ``msg``."""
    return (
        key,
        *_request_columns(acquirer, msg),
        upstream.get("37"),
        original,
        link,
        upstream["t"],
        upstream["11"],
        upstream["7"],
        upstream["32"],
        reverses,
    )


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, str) and value.isdigit() else None


def _original_key(msg: Message) -> str:
    return f"{msg.get('t')}{msg.get('11')}{msg.get('7')}{str(msg.get('32', '')).rjust(11, '0')}"


def _de90_key(msg: Message) -> str | None:
    de90 = msg.get("90")
    return str(de90)[:31] if isinstance(de90, str) and len(de90) >= 31 else None


def _storable(answer: Message) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k not in ("2", "35", "52", "128") and not isinstance(v, bytes)}
