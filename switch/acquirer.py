"""Inbound acquirer links (H2H dialect on the switch's H2H port): other acquirers send through us.

An acquirer is identified by the DE32 it sends, matched against an ``in`` row of ``switch_links``
(its ZPK, and its ZAK when the link is MACed). Per request: verify DE128 when the link has a ZAK
(a missing or wrong MAC is answered 30 and nothing is forwarded), translate the PIN from the
acquirer's ZPK to the issuer link's ZPK (CC, or W8 across algorithms), route by BIN, forward, answer.

Toward issuers the forwarded request keeps the acquirer's DE32 and carries the switch's id as the
forwarding institution (DE33; the issuer picks the link keys by DE33, else DE32), with the switch's own
DE7 and link STAN. A timeout answers 91 and queues
a reversal advice upstream. A duplicate (same DE32 + DE7 + DE11 + DE41 + MTI) gets the first answer
again from the journal and nothing goes upstream twice. Reversals (0400/0420/0421) name their original
in DE90; an original the switch forwarded is reversed upstream (through store-and-forward when the
issuer does not answer), any other is answered 00. What goes upstream is written ahead first (see
switch/README.md): after a crash, start-up recovery reverses it and journals it as answered 91.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import trio

from ops.logs import get_logger, mask_pan
from specs.catalogue import unhandled_code
from specs.codec import Codec, codec_for
from specs.errors import DecodeError
from switch import metrics
from switch.hsm import HsmRefused, HsmUnavailable, SwitchHsm
from switch.journal import JournalWriter
from switch.links import LinkConfig
from switch.mapping import (
    Message,
    account12,
    original_data,
    pan_of,
    response_mti,
    transmission_time,
    txn_type,
)
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
    reversed: bool = False
    committed: trio.Event | None = None  # set once its journal row is committed
    code: str | None = None  # from the journal, for a row without a stored answer


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
    ) -> None:
        self.hsm = hsm
        self.store = store
        self.journal = journal
        self.upstream = upstream
        self.inbound = inbound
        self.institution_id = institution_id
        self.codecs = {p: codec_for("h2h", p) for p in ("3des", "sm4")}
        self._seen: OrderedDict[str, _Seen] = OrderedDict()
        self._originals: OrderedDict[str, str] = OrderedDict()  # DE90 key of an original -> dedup key

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
        if mti == "0800":
            return self._plain(codec, msg, "00" if link is not None else "03")
        if link is None:
            log.warning("request from an unknown acquirer", acquirer=msg.get("32"))
            return self._plain(codec, msg, "03")
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
        seen = await self._lookup(key)
        if seen is not None:
            metrics.DUPLICATES.labels(channel="h2h").inc()
            await seen.done.wait()
            if seen.committed is not None:
                await seen.committed.wait()  # a replay leaves only once the first answer is journaled
            # no stored answer (a request recovered after a crash): its code, as a timeout answers it
            answer = dict(seen.answer or self._response(msg, seen.code or "96"))
            return await self._answer(codec, link, msg, answer)
        seen = self._remember(key)
        us_hsm = 0.0
        try:
            if mti in FINANCIAL:
                answer, us_hsm = await self._financial(link, msg, seen, key)
            else:
                answer = await self._reversal(msg, link, seen, key)
        except Exception as exc:
            log.exception("acquirer request failed", error=str(exc))
            answer = self._response(msg, "96")
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

    async def _lookup(self, key: str) -> _Seen | None:
        seen = self._seen.get(key)
        if seen is not None:
            return seen
        row = await self.store.journal_by_key(key)
        if row is None:
            return None
        response = row["response"]
        answer = json.loads(response) if isinstance(response, str) else dict(response)
        seen = _Seen(trio.Event(), answer=answer or None, code=row["response_code"])
        seen.done.set()
        return seen

    # -- financial ---------------------------------------------------------------------------------
    async def _financial(
        self, link: LinkConfig, msg: Message, seen: _Seen, key: str
    ) -> tuple[Message, float]:
        pan = pan_of(msg)
        if pan is None:
            return self._response(msg, "30"), 0.0
        out = self.upstream.route(pan)
        if out is None:
            return self._response(msg, "14"), 0.0
        if not out.up:
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
                return self._response(msg, "96" if exc.code not in ("20", "23", "24") else "30"), 0.0
            hsm_seconds = trio.current_time() - t
            metrics.LATENCY_HSM.observe(hsm_seconds)
        forwarded["7"] = transmission_time()
        forwarded["11"] = f"{out.next_stan():06d}"
        forwarded["32"] = str(msg.get("32", ""))
        forwarded["33"] = self.institution_id
        seen.link = out.name
        seen.forwarded = forwarded
        self._originals[_original_key(msg)] = key
        if len(self._originals) > _MEMORY:
            self._originals.popitem(last=False)
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
            return self._response(msg, outcome.local_code), hsm_seconds
        if outcome.timed_out or outcome.answer is None:
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
        key = self._originals.get(_de90_key(msg) or "")
        original = self._seen.get(key) if key else None
        if original is None or not original.approved or original.reversed or original.forwarded is None:
            return self._response(msg, "00")
        original.reversed = True
        fwd = original.forwarded
        link = self.upstream.links.get(original.link or "")
        if link is None:
            return self._response(msg, "00")
        request: Message = {k: v for k, v in msg.items() if k in ("3", "4", "41", "42", "49")}
        request.update(
            {
                "t": "0400",
                "7": transmission_time(),
                "11": f"{link.next_stan():06d}",
                "32": self.institution_id,
                "39": str(msg.get("39", "98"))[:2] or "98",
                "90": original_data(str(fwd["t"]), str(fwd["11"]), str(fwd["7"]), str(fwd["32"])),
            }
        )
        if "37" in fwd:
            request["37"] = fwd["37"]
        seen.link, seen.forwarded = link.name, request  # the journal row names the upstream 0400
        await self.journal.submit_ahead(
            _write_ahead(
                own_key, acquirer, msg, link.name, request, _de90_key(msg), request["90"]
            )
        ).wait()
        outcome = await self.upstream.send(link, request, reverse_on_timeout=False)
        if outcome.answer is None or outcome.answer.get("39") not in ("00", "25"):
            await self.upstream.reverse(link, fwd, "98")
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
