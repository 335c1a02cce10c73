"""Trio client for the payswitch HSM — the only part of ``hsm_sim`` that switch and host import.

Usage::

    from hsm_sim.client import HsmClient, HsmCommandError, account_from_pan

    async with HsmClient.from_config(config.hsm) as hsm:          # or HsmClient("127.0.0.1", 1500)
        keys = await hsm.generate_key("002", "U", under=tmk, under_tmk=True, export_scheme="X")
        mac = await hsm.pos_mac(mak, mac_block)                  # b"69DB66D5"

The client keeps a small pool of TCP connections (opened on first use, reopened after a failure). Any
number of trio tasks may call it at once: requests are pipelined on the shared connections, each
tagged with a unique header, and a receiver task per connection hands each response to its caller.
Every call has a timeout (``timeout`` seconds, default from config ``hsm.timeout_ms``).

Errors: a non-00 answer raises ``HsmCommandError`` (``.command``, ``.code`` e.g. "10", ``.meaning``),
except that verification calls return ``False`` for 01. ``HsmTimeout`` when no answer came in time,
``HsmUnavailable`` when the HSM cannot be reached or the connection broke with the request in flight
(the request may or may not have run; the HSM keeps no state, so repeating it is safe). All derive
from ``HsmError``. A caller cancelled while waiting simply abandons its request.

Keys are passed and returned as the HSM's wire tokens (str): ``U``+32H / ``T``+48H (3DES under LMK),
``S``+32H (SM4 under LMK), 16H (single DES, scheme Z); under a ZMK/TMK ``X``+32H / ``U``+32H / 16H for
3DES and plain 32H for SM4. Check values come back as 16H (callers show 6 or 8). Accounts are the 12N
account number (``account_from_pan``). Where a method serves both algorithms it picks the command from
the key's prefix (``S`` → SM4).

API (all ``async`` unless marked):
- ``HsmClient(host="127.0.0.1", port=1500, *, header_length=4, connections=2, timeout=2.0)``;
  ``HsmClient.from_config(hsm_config)`` (plain method); ``async with`` to start and stop.
- ``request(command, fields) -> Reply`` raw: ``Reply(error, fields)``, never raises for error codes;
  ``call(command, fields) -> bytes`` the response fields, ``HsmCommandError`` unless 00;
  ``request_many([(command, fields), ...]) -> list[Reply]``: several commands written together on one
  connection, the caller parked once until every answer is in (no task per command).
- ``diagnostics() -> Diagnostics(lmk_check_value, firmware)`` NC; ``echo(data) -> bytes`` B2.
- ``generate_key(key_type, scheme="U", *, under=None, under_tmk=True, export_scheme="X") -> GeneratedKey``
  A0 (``under``: the ZMK/TMK under LMK to also export under), ``generate_sm4_key(key_type, *, under=None,
  under_tmk=True) -> GeneratedKey`` WI.
- ``form_key(key_type, components, scheme="U") -> Key`` A4 / ``form_sm4_key(key_type, components)`` WK.
- ``import_key(key_type, zmk, key_under_zmk, scheme="U", *, tmk=False) -> Key`` A6;
  ``export_key(key_type, zmk, key, export_scheme="X", *, tmk=False) -> ExportedKey`` A8;
  ``import_sm4_key(key_type, zmk, key_under_zmk, *, tmk=False) -> Key`` SV;
  ``export_sm4_key(key_type, zmk, key, *, tmk=False) -> ExportedKey`` ST.
- ``check_value(key, key_type) -> str`` BU (16H).
- ``pos_mac(mak, data, key_type="003") -> bytes`` MU: the 8 ASCII MAC bytes for DE64 (SM4 for ``S``);
  ``verify_pos_mac(mak, data, mac) -> bool`` (generates and compares in constant time).
- ``generate_mac(key, data, *, algorithm=3, size=16, key_type="008") -> str`` M6 (X9.19 = 3, ISO 9797-1
  alg 1 = 1; size 8 or 16 hex characters); ``verify_mac(key, data, mac, *, algorithm=3, key_type="008")
  -> bool`` M8; ``sm4_mac(key, data, key_type="008") -> str`` WM (16H); ``verify_sm4_mac(...) -> bool``;
  ``h2h_mac(zak, data) -> str`` / ``verify_h2h_mac(zak, data, mac) -> bool``: X9.19 for a 3DES ZAK, SM4
  for an ``S`` ZAK (the H2H DE128); ``h2h_mac_command(zak, data, mac=None)`` is the command and fields
  they send, for ``request_many`` (several link MACs in one exchange).
- ``translate_pin_tpk(tpk, zpk, pin_block, account, *, src_format="01", dst_format="01",
  max_pin_length=12) -> PinBlock`` CA; ``translate_pin_zpk(src_zpk, dst_zpk, ...) -> PinBlock`` CC;
  ``translate_pin(src_key, dst_zpk, pin_block, account, *, src_key_type="002") -> PinBlock`` W8
  (3DES/SM4 either side, chosen by the key prefixes).
- ``pos_mac_and_translate_pin(mak, data, src_key, dst_zpk, pin_block, account, *, src_key_type="002")
  -> (bytes | HsmCommandError, PinBlock | HsmCommandError)``: ``pos_mac`` and the PIN translation
  (CA for a 3DES TPK to a 3DES ZPK, CC for 3DES ZPK to ZPK, W8 otherwise) in one ``request_many``;
  each command's error is returned, not raised, so the caller tells a bad MAC from a bad PIN.
- ``verify_pin(zpk, pvk, pin_block, account, pvki, pvv, *, pin_format="01") -> bool`` EC (3DES ZPK) /
  WV (``S`` ZPK); ``generate_pvv(pvk, pin_under_lmk, account, pvki) -> str`` DG;
  ``random_pin(account, length=6) -> str`` JA (``L``+32H: the PIN under LMK);
  ``change_pin(zpk, pvk, old_block, new_block, account, pvki, pvv) -> PinChange | None`` WC (None: the
  old PIN is wrong).
- ``generate_sm2_key() -> Sm2KeyPair`` SK; ``sm2_pin_to_pvv(private_key, pvk, ciphertext, account, pvki)
  -> Sm2Pin`` SP [project conventions, specs/hsm-conventions.md]: an app's PIN under the issuer's SM2
  public key to its PVV and the PIN under LMK.
- ``encrypt_data(key, data, *, iv=None) -> bytes`` M0 / ``decrypt_data(key, data, *, iv=None) -> bytes``
  M2: binary, ECB without ``iv``, CBC with it; ``data`` a whole number of blocks (8 for 3DES, 16 SM4).
- ``verify_arqc(imk, pan, psn, atc, data, arqc, arc=None) -> bytes | None`` KW [project convention,
  specs/hsm-conventions.md "Chip cryptograms: KW"]: verify a chip card's ARQC (8 bytes) over ``data``
  (``specs.tlv.arqc_data``) with the card key derived from the IMK-AC (key type 109, ``U`` 3DES or
  ``S`` SM4: the algorithm follows the key), PAN, PSN (2 digits) and ATC (2 bytes); with ``arc`` (2
  bytes, the answer's DE39 in ASCII) also the 8-byte ARPC, else None. A cryptogram that does not
  verify raises ``HsmRefused`` (code "01"); ``arpc(imk, pan, psn, atc, arqc, arc) -> bytes`` the ARPC
  alone, no check (an answer to a cryptogram already verified, or a decline of one that failed).
- ``account_from_pan(pan) -> str`` (plain function).
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import outcome
import trio

from hsm_sim.emv import pan_psn_block
from hsm_sim.errors import MEANINGS
from hsm_sim.pin import account_from_pan

__all__ = [
    "Diagnostics",
    "ExportedKey",
    "GeneratedKey",
    "HsmClient",
    "HsmCommandError",
    "HsmError",
    "HsmRefused",
    "HsmTimeout",
    "HsmUnavailable",
    "Key",
    "PinBlock",
    "PinChange",
    "Reply",
    "Sm2KeyPair",
    "Sm2Pin",
    "account_from_pan",
]

MAX_TOMBSTONES = 1000  # late answers we still wait to discard before the connection is recycled


class HsmError(Exception):
    """Base of every error the client raises."""


class HsmCommandError(HsmError):
    """The HSM answered with an error code other than 00."""

    def __init__(self, command: str, code: str) -> None:
        self.command = command
        self.code = code
        self.meaning = MEANINGS.get(code, "error")
        super().__init__(f"HSM {command} error {code}: {self.meaning}")


class HsmRefused(HsmCommandError):
    """01 from a command whose refusal is its answer (KW: the ARQC does not verify, a cloned card)."""

    def __init__(self, command: str) -> None:
        super().__init__(command, "01")


class HsmTimeout(HsmError):
    """No answer within the timeout."""


class HsmUnavailable(HsmError):
    """The HSM could not be reached, or the connection broke while the request was in flight."""


@dataclass(frozen=True, slots=True)
class Reply:
    error: str
    fields: bytes


@dataclass(frozen=True, slots=True)
class Diagnostics:
    lmk_check_value: str
    firmware: str


@dataclass(frozen=True, slots=True)
class Key:
    under_lmk: str
    check_value: str


@dataclass(frozen=True, slots=True)
class GeneratedKey:
    under_lmk: str
    under_kek: str | None  # under the ZMK/TMK when asked (A0/WI mode 1)
    check_value: str


@dataclass(frozen=True, slots=True)
class ExportedKey:
    under_kek: str
    check_value: str


@dataclass(frozen=True, slots=True)
class PinBlock:
    pin_length: int
    pin_block: str
    format: str  # "01" etc.; empty for W8


@dataclass(frozen=True, slots=True)
class PinChange:
    """WC's answer: the new PIN's Visa PVV (4N) and the new PIN under the LMK (``L``+32H)."""

    pvv: str
    pin_under_lmk: str


@dataclass(frozen=True, slots=True)
class Sm2KeyPair:
    """SK's answer: the private key under the LMK (``P``+96H), the public key (04 ‖ x ‖ y, 130H) and
    its check value (16H: SM3 of the public key, leftmost 8 bytes)."""

    private_key: str
    public_key: str
    check_value: str


@dataclass(frozen=True, slots=True)
class Sm2Pin:
    """SP's answer: the PVV (4N), the PIN under the LMK (``L``+32H) and the app's stamp (seconds)."""

    pvv: str
    pin_under_lmk: str
    stamp: int


class HsmConfigLike(Protocol):
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def header_length(self) -> int: ...
    @property
    def connections(self) -> int: ...
    @property
    def timeout_ms(self) -> int: ...


def _key_len(token: str) -> int:
    """Characters of a key token under the LMK at the start of ``token``."""
    return {"U": 33, "T": 49, "S": 33}.get(token[:1], 16)


def _is_sm4(key: str) -> bool:
    return key[:1] == "S"


def _hexu(data: bytes) -> bytes:
    """Upper-case hex as ASCII bytes (an H field of a request)."""
    return data.hex().upper().encode("ascii")


def _mu_fields(mak: str, data: bytes, key_type: str) -> bytes:
    alg = b"2" if _is_sm4(mak) else b"1"
    return b"%b%b%b%04X%b" % (alg, key_type.encode(), mak.encode(), len(data), data)


def h2h_mac_command(zak: str, data: bytes, mac: str | None = None) -> tuple[str, bytes]:
    """The command and fields making (``mac`` None) or checking (``mac``: its hex) the H2H DE128 MAC over
    ``data`` under ``zak``: WM (SM4 ISO 9797-1 alg 1, mode 1 make / 2 check) for an ``S`` ZAK, else M6 /
    M8 (X9.19, 16H; an 8H ``mac`` is checked as 8H). What ``h2h_mac`` / ``verify_h2h_mac`` send, and the
    one place their fields are built; for ``request_many`` a check answers 00 when the MAC matches, 01
    when it does not, and a make's fields are the MAC."""
    length = b"%04X" % len(data)
    check = b"" if mac is None else mac.encode("ascii")
    if _is_sm4(zak):
        return "WM", (b"11" if mac is None else b"21") + b"008" + zak.encode() + length + data + check
    size = b"0" if mac is not None and len(mac) != 16 else b"1"
    return ("M6" if mac is None else "M8"), b"00" + size + b"31008" + zak.encode() + length + data + check


def verify_pin_command(
    zpk: str, pvk: str, pin_block: str, account: str, pvki: str, pvv: str, pin_format: str = "01"
) -> tuple[str, str]:
    """The command and fields verifying a PIN against its Visa PVV: EC for a 3DES ZPK, WV for an ``S``
    (SM4) ZPK. For ``HsmClient.request_many`` (several verifications in one exchange); reply error "00"
    = the PIN matches, "01" = it does not."""
    if _is_sm4(zpk):
        return "WV", f"{zpk}{pvk}{pin_block}{account}{pvki}{pvv}"
    return "EC", f"{zpk}{pvk}{pin_block}{pin_format}{account}{pvki}{pvv}"


def _translate_fields(
    src: str, dst: str, pin_block: str, account: str, src_format: str, dst_format: str, max_pin_length: int
) -> str:
    """CA / CC request fields."""
    return f"{src}{dst}{max_pin_length:02d}{pin_block}{src_format}{dst_format}{account}"


def _w8_fields(src_key: str, dst_zpk: str, pin_block: str, account: str, src_key_type: str) -> str:
    src_alg = "2" if _is_sm4(src_key) else "1"
    dst_alg = "2" if _is_sm4(dst_zpk) else "1"
    return f"{src_alg}{src_key_type}{src_key}{dst_alg}{dst_zpk}{pin_block}{account}"


def _w8_reply(out: bytes) -> PinBlock:
    text = out.decode()
    return PinBlock(int(text[:2]), text[2:], "")


class _Slot:
    """A caller waiting for its answer: woken exactly once, by whoever removes it from ``pending``
    (the reader with the answer, the timeout watcher, or a broken connection). A slot of a group
    (``headers``) stands for several requests and is woken with every answer once the last is in."""

    __slots__ = ("bodies", "deadline", "headers", "left", "task")

    def __init__(self, task: trio.lowlevel.Task, deadline: float, headers: list[bytes] | None = None) -> None:
        self.task = task
        self.deadline = deadline
        self.headers = headers
        self.bodies: list[bytes] = []
        self.left = 1


class _Connection:
    """One TCP connection: a writer task batching frames, a reader task dispatching by header."""

    def __init__(self, client: HsmClient) -> None:
        self.client = client
        self.stream: trio.SocketStream | None = None
        self.pending: dict[bytes, _Slot | None] = {}
        self.tombstones = 0
        self._out = bytearray()
        self._wake = trio.Event()
        self._ids = itertools.count()
        self._connect_lock = trio.Lock()
        self._serial = trio.Lock()  # header_length 0: one request at a time
        self._cancel: trio.CancelScope | None = None

    @property
    def alive(self) -> bool:
        return self.stream is not None

    async def ensure(self) -> None:
        if self.stream is not None:
            return
        async with self._connect_lock:
            if self.stream is not None:
                return
            try:
                with trio.fail_after(self.client.timeout):
                    stream = await trio.open_tcp_stream(self.client.host, self.client.port)
            except (OSError, trio.TooSlowError) as exc:
                raise HsmUnavailable(
                    f"HSM {self.client.host}:{self.client.port} unreachable: {exc}"
                ) from None
            self.stream = stream
            self.pending = {}
            self.tombstones = 0
            self._out = bytearray()
            self._wake = trio.Event()
            ready = trio.Event()
            self.client.nursery.start_soon(self._run, stream, ready)
            await ready.wait()

    async def _run(self, stream: trio.SocketStream, ready: trio.Event) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                nursery.start_soon(self._writer, stream)
                nursery.start_soon(self._reader, stream)
                nursery.start_soon(self._watch_timeouts)
                ready.set()
        except Exception:  # a broken connection: _fail below reports it to every caller waiting
            pass
        finally:
            ready.set()
            self._fail(stream)

    def _fail(self, stream: trio.SocketStream) -> None:
        if self.stream is stream:
            self.stream = None
        pending, self.pending = self.pending, {}
        woken: set[int] = set()
        for slot in pending.values():
            if slot is not None and id(slot) not in woken:
                woken.add(id(slot))
                error = HsmUnavailable("HSM connection broke with the request in flight")
                trio.lowlevel.reschedule(slot.task, outcome.Error(error))
        with contextlib.suppress(Exception):
            stream.socket.close()

    def close(self) -> None:
        if self._cancel is not None:
            self._cancel.cancel()

    async def _writer(self, stream: trio.SocketStream) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            if self._out:
                data = bytes(self._out)
                self._out.clear()
                await stream.send_all(data)

    async def _reader(self, stream: trio.SocketStream) -> None:
        h = self.client.header_length
        buf = bytearray()
        while True:
            data = await stream.receive_some(65536)
            if not data:
                raise HsmUnavailable("HSM closed the connection")
            buf += data
            pos, end = 0, len(buf)
            while end - pos >= 2:
                length = (buf[pos] << 8) | buf[pos + 1]
                if end - pos - 2 < length:
                    break
                body = bytes(buf[pos + 2 : pos + 2 + length])
                pos += 2 + length
                header = body[:h]
                slot = self.pending.pop(header, None)
                if slot is None:
                    self.tombstones = max(0, self.tombstones - 1)
                    continue
                if slot.headers is None:
                    trio.lowlevel.reschedule(slot.task, outcome.Value(body))
                    continue
                slot.bodies[slot.headers.index(header)] = body
                slot.left -= 1
                if not slot.left:
                    trio.lowlevel.reschedule(slot.task, outcome.Value(slot.bodies))
            del buf[:pos]

    async def _watch_timeouts(self) -> None:
        """One watcher per connection instead of a cancel scope per request (which costs more than
        the rest of a request's client-side work): callers past their deadline get ``HsmTimeout``."""
        timeout = self.client.timeout
        tick = max(0.002, min(0.05, timeout / 10))
        while True:
            await trio.sleep(tick)
            now = trio.current_time()
            late = [(h, s) for h, s in self.pending.items() if s is not None and s.deadline <= now]
            for header, slot in late:
                if self.pending.get(header) is not slot:
                    continue  # another request of the same group timed it out already
                self._abandon_slot(header, slot)
                trio.lowlevel.reschedule(
                    slot.task, outcome.Error(HsmTimeout(f"HSM request timed out after {timeout:g}s"))
                )

    def _abandon_slot(self, header: bytes, slot: _Slot) -> None:
        """Tombstones for every request of ``slot`` still waiting for its answer."""
        for h in slot.headers or (header,):
            if self.pending.get(h) is slot:
                self._abandon(h)

    def _abandon(self, header: bytes) -> None:
        """Leave a tombstone: the late answer for ``header`` must not reach a later caller."""
        self.pending[header] = None
        self.tombstones += 1
        if self.tombstones > MAX_TOMBSTONES:
            self.close()

    def next_header(self) -> bytes:
        h = self.client.header_length
        if h == 0:
            return b""
        space = 10 ** min(h, 9)
        if len(self.pending) >= space:
            raise HsmUnavailable("too many requests in flight on one HSM connection")
        while True:
            header = str(next(self._ids) % space).zfill(h).encode("ascii")
            if header not in self.pending:
                return header

    async def exchange(self, command: bytes, fields: bytes) -> bytes:
        if self.client.header_length == 0:
            async with self._serial:
                return await self._exchange(command, fields)
        return await self._exchange(command, fields)

    async def _exchange(self, command: bytes, fields: bytes) -> bytes:
        stream = self.stream
        if stream is None:
            raise HsmUnavailable("HSM connection is closed")
        header = self.next_header()
        body_len = len(header) + 2 + len(fields)
        if body_len > 0xFFFF:
            raise ValueError("HSM request longer than 65535 bytes")
        slot = _Slot(trio.lowlevel.current_task(), trio.current_time() + self.client.timeout)
        self.pending[header] = slot
        self._out += body_len.to_bytes(2, "big") + header + command + fields
        self._wake.set()

        def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
            # The caller itself was cancelled (its own cancel scope): forget the request.
            if self.pending.get(header) is slot:
                self._abandon(header)
            return trio.lowlevel.Abort.SUCCEEDED

        body: bytes = await trio.lowlevel.wait_task_rescheduled(abort)
        return body

    async def exchange_many(self, commands: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
        """Several requests written together; one wait for all of their answers."""
        if self.client.header_length == 0 or len(commands) < 2:
            return [await self.exchange(command, fields) for command, fields in commands]
        if self.stream is None:
            raise HsmUnavailable("HSM connection is closed")
        h = self.client.header_length
        if any(h + 2 + len(fields) > 0xFFFF for _, fields in commands):
            raise ValueError("HSM request longer than 65535 bytes")
        headers: list[bytes] = []
        slot = _Slot(trio.lowlevel.current_task(), trio.current_time() + self.client.timeout, headers)
        out = bytearray()
        try:
            for command, fields in commands:
                header = self.next_header()
                headers.append(header)
                self.pending[header] = slot  # reserved at once: next_header must not hand it out again
                out += (h + 2 + len(fields)).to_bytes(2, "big") + header + command + fields
        except HsmUnavailable:
            # Too many in flight: nothing was sent, and no watcher may wake a task that never waited.
            for header in headers:
                del self.pending[header]
            raise
        slot.bodies = [b""] * len(headers)
        slot.left = len(headers)
        self._out += out
        self._wake.set()

        def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
            self._abandon_slot(headers[0], slot)
            return trio.lowlevel.Abort.SUCCEEDED

        bodies: list[bytes] = await trio.lowlevel.wait_task_rescheduled(abort)
        return bodies


class HsmClient:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1500,
        *,
        header_length: int = 4,
        connections: int = 2,
        timeout: float = 2.0,
    ) -> None:
        if connections < 1:
            raise ValueError("connections must be at least 1")
        self.host = host
        self.port = port
        self.header_length = header_length
        self.timeout = timeout
        self._pool = [_Connection(self) for _ in range(connections)]
        self._next = itertools.cycle(range(connections))
        self._last: _Connection | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None

    @classmethod
    def from_config(cls, hsm: HsmConfigLike) -> HsmClient:
        """From the ``[hsm]`` config section (``ops.config.HsmConfig``)."""
        return cls(
            hsm.host,
            hsm.port,
            header_length=hsm.header_length,
            connections=hsm.connections,
            timeout=hsm.timeout_ms / 1000,
        )

    @property
    def nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise RuntimeError("use HsmClient inside `async with`")
        return self._nursery

    async def __aenter__(self) -> HsmClient:
        self._stack = contextlib.AsyncExitStack()
        self._nursery = await self._stack.enter_async_context(trio.open_nursery())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._stack is not None and self._nursery is not None
        self._nursery.cancel_scope.cancel()
        stack, self._stack, self._nursery = self._stack, None, None
        # The body's own exception is not handed to the nursery, so callers see it as raised (an
        # HsmCommandError stays an HsmCommandError, not an ExceptionGroup); the connection tasks
        # never raise, so the nursery has nothing of its own to report.
        await stack.__aexit__(None, None, None)
        return None

    # -- transport --------------------------------------------------------------------------------
    async def _connection(self) -> _Connection:
        if self._nursery is None:
            raise RuntimeError("use HsmClient inside `async with`")
        last = self._last
        if last is not None and last._out and last.stream is not None:
            # Requests made before its writer runs ride along: one send (and one wake-up of the HSM)
            # per scheduler pass instead of one per connection; the connections still take turns.
            return last
        first: HsmUnavailable | None = None
        for _ in range(len(self._pool)):
            conn = self._pool[next(self._next)]
            try:
                await conn.ensure()
                self._last = conn
                return conn
            except HsmUnavailable as exc:
                first = first or exc
        assert first is not None
        raise first

    async def request(self, command: str, fields: bytes | str = b"") -> Reply:
        """Send one command; the reply's error code and fields, whatever the error code."""
        if isinstance(fields, str):
            fields = fields.encode("ascii")
        cmd = command.encode("ascii")
        conn = await self._connection()
        body = await conn.exchange(cmd, fields)
        return self._reply(command, cmd, body)

    async def request_many(self, commands: Sequence[tuple[str, bytes | str]]) -> list[Reply]:
        """Several commands at once on one connection; their replies in order, whatever the error
        codes. The caller waits once for all of them (cheaper than a task per command)."""
        encoded = [
            (command.encode("ascii"), fields.encode("ascii") if isinstance(fields, str) else fields)
            for command, fields in commands
        ]
        conn = await self._connection()
        bodies = await conn.exchange_many(encoded)
        return [
            self._reply(command, cmd, body)
            for (command, _), (cmd, _), body in zip(commands, encoded, bodies, strict=True)
        ]

    def _reply(self, command: str, cmd: bytes, body: bytes) -> Reply:
        h = self.header_length
        code = body[h : h + 2]
        error = body[h + 2 : h + 4].decode("ascii", "replace")
        if code == b"ZZ":
            return Reply(error, b"")
        if len(body) < h + 4 or code != cmd[:1] + bytes([cmd[1] + 1]):
            raise HsmError(f"HSM answered {code!r} to {command}")
        return Reply(error, body[h + 4 :])

    async def call(self, command: str, fields: bytes | str = b"") -> bytes:
        """Send one command; its response fields, or ``HsmCommandError`` for an error code."""
        reply = await self.request(command, fields)
        if reply.error != "00":
            raise HsmCommandError(command, reply.error)
        return reply.fields

    async def _verify(self, command: str, fields: bytes | str) -> bool:
        reply = await self.request(command, fields)
        if reply.error == "00":
            return True
        if reply.error == "01":
            return False
        raise HsmCommandError(command, reply.error)

    # -- diagnostics ------------------------------------------------------------------------------
    async def diagnostics(self) -> Diagnostics:
        out = (await self.call("NC")).decode("ascii")
        return Diagnostics(out[:16], out[16:])

    async def echo(self, data: bytes) -> bytes:
        return await self.call("B2", b"%04X" % len(data) + data)

    # -- keys -------------------------------------------------------------------------------------
    async def generate_key(
        self,
        key_type: str,
        scheme: str = "U",
        *,
        under: str | None = None,
        under_tmk: bool = True,
        export_scheme: str = "X",
    ) -> GeneratedKey:
        """A0: a new 3DES key (scheme Z/U/T) under the LMK, and under ``under`` (a ZMK or TMK under LMK)."""
        if under is None:
            out = (await self.call("A0", f"0{key_type}{scheme}")).decode("ascii")
            n = _key_len(scheme)
            return GeneratedKey(out[:n], None, out[n : n + 16])
        flag = "1" if under_tmk else "0"
        out = (await self.call("A0", f"1{key_type}{scheme};{flag}{under}{export_scheme}")).decode("ascii")
        n = _key_len(scheme)
        m = 16 if export_scheme == "Z" else 33
        return GeneratedKey(out[:n], out[n : n + m], out[n + m : n + m + 16])

    async def generate_sm4_key(
        self,
        key_type: str,
        *,
        under: str | None = None,
        under_tmk: bool = True,
    ) -> GeneratedKey:
        """WI: a new SM4 key under the LMK, and (plain SM4-ECB) under ``under`` when given."""
        if under is None:
            out = (await self.call("WI", f"0{key_type}")).decode("ascii")
            return GeneratedKey(out[:33], None, out[33:49])
        flag = "1" if under_tmk else "0"
        out = (await self.call("WI", f"1{key_type};{flag}{under}")).decode("ascii")
        return GeneratedKey(out[:33], out[33:65], out[65:81])

    async def form_key(self, key_type: str, components: Sequence[str], scheme: str = "U") -> Key:
        """A4: XOR of clear components (32H each for U, 48H for T) under the LMK."""
        out = (await self.call("A4", f"{len(components)}{key_type}{scheme}{''.join(components)}")).decode()
        n = _key_len(scheme)
        return Key(out[:n], out[n : n + 16])

    async def form_sm4_key(self, key_type: str, components: Sequence[str]) -> Key:
        out = (await self.call("WK", f"{len(components)}{key_type}{''.join(components)}")).decode()
        return Key(out[:33], out[33:49])

    async def import_key(
        self,
        key_type: str,
        zmk: str,
        key_under_zmk: str,
        scheme: str = "U",
        *,
        tmk: bool = False,
    ) -> Key:
        """A6: a key under a ZMK (``X``/``U``+32H, 16H) to under the LMK (``tmk``: the KEK is a TMK)."""
        suffix = ";1" if tmk else ""
        out = (await self.call("A6", f"{key_type}{zmk}{key_under_zmk}{scheme}{suffix}")).decode()
        n = _key_len(scheme)
        return Key(out[:n], out[n : n + 16])

    async def export_key(
        self,
        key_type: str,
        zmk: str,
        key: str,
        export_scheme: str = "X",
        *,
        tmk: bool = False,
    ) -> ExportedKey:
        suffix = ";1" if tmk else ""
        out = (await self.call("A8", f"{key_type}{zmk}{key}{export_scheme}{suffix}")).decode()
        m = 16 if export_scheme == "Z" else (49 if export_scheme in "TY" else 33)
        return ExportedKey(out[:m], out[m : m + 16])

    async def import_sm4_key(self, key_type: str, zmk: str, key_under_zmk: str, *, tmk: bool = False) -> Key:
        """SV: an SM4 key under an SM4 ZMK (32H; an ``S`` prefix as in H2H DE48 is dropped)."""
        if len(key_under_zmk) == 33 and key_under_zmk[:1] == "S":
            key_under_zmk = key_under_zmk[1:]
        suffix = ";1" if tmk else ""
        out = (await self.call("SV", f"{key_type}{zmk}{key_under_zmk}{suffix}")).decode()
        return Key(out[:33], out[33:49])

    async def export_sm4_key(self, key_type: str, zmk: str, key: str, *, tmk: bool = False) -> ExportedKey:
        suffix = ";1" if tmk else ""
        out = (await self.call("ST", f"{key_type}{zmk}{key}{suffix}")).decode()
        return ExportedKey(out[:32], out[32:48])

    async def check_value(self, key: str, key_type: str) -> str:
        """BU: the key's check value (16H)."""
        flag = {"U": "1", "S": "1", "T": "2"}.get(key[:1], "0")
        fields = f"{key_type[1:]}{flag}{key}" if key_type[0] == "0" else f"FF{flag}{key};{key_type}"
        return (await self.call("BU", fields)).decode()

    # -- MAC --------------------------------------------------------------------------------------
    async def pos_mac(self, mak: str, data: bytes, key_type: str = "003") -> bytes:
        """MU: the UnionPay POS MAC, 8 ASCII bytes (DES for a 16H key, 3DES ``U``, SM4 ``S``)."""
        return await self.call("MU", _mu_fields(mak, data, key_type))

    async def verify_pos_mac(self, mak: str, data: bytes, mac: bytes, key_type: str = "003") -> bool:
        return hmac.compare_digest(await self.pos_mac(mak, data, key_type), bytes(mac).upper())

    async def generate_mac(
        self,
        key: str,
        data: bytes,
        *,
        algorithm: int = 3,
        size: int = 16,
        key_type: str = "008",
    ) -> str:
        """M6: X9.19 (algorithm 3) or ISO 9797-1 alg 1 (1), zero padding; ``size`` 8 or 16 hex chars."""
        size_flag = "1" if size == 16 else "0"
        head = f"00{size_flag}{algorithm}1{key_type}{key}".encode()
        return (await self.call("M6", head + b"%04X" % len(data) + data)).decode()

    async def verify_mac(
        self,
        key: str,
        data: bytes,
        mac: str,
        *,
        algorithm: int = 3,
        key_type: str = "008",
    ) -> bool:
        size_flag = "1" if len(mac) == 16 else "0"
        head = f"00{size_flag}{algorithm}1{key_type}{key}".encode()
        return await self._verify("M8", head + b"%04X" % len(data) + data + mac.encode())

    async def sm4_mac(self, key: str, data: bytes, key_type: str = "008") -> str:
        """WM: SM4 ISO 9797-1 alg 1 MAC, leftmost 8 bytes as 16H."""
        return (
            await self.call("WM", b"11" + f"{key_type}{key}".encode() + b"%04X" % len(data) + data)
        ).decode()

    async def verify_sm4_mac(self, key: str, data: bytes, mac: str, key_type: str = "008") -> bool:
        return await self._verify(
            "WM", b"21" + f"{key_type}{key}".encode() + b"%04X" % len(data) + data + mac.encode()
        )

    async def h2h_mac(self, zak: str, data: bytes) -> str:
        """The H2H DE128 MAC: X9.19 with a 3DES ZAK, SM4 alg 1 (first 8 bytes) with an ``S`` ZAK."""
        return (await self.call(*h2h_mac_command(zak, data))).decode()

    async def verify_h2h_mac(self, zak: str, data: bytes, mac: str) -> bool:
        return await self._verify(*h2h_mac_command(zak, data, mac))

    # -- PIN --------------------------------------------------------------------------------------
    @staticmethod
    def _pin_reply(out: bytes) -> PinBlock:
        text = out.decode("ascii")
        return PinBlock(int(text[:2]), text[2:18], text[18:20])

    async def translate_pin_tpk(
        self,
        tpk: str,
        zpk: str,
        pin_block: str,
        account: str,
        *,
        src_format: str = "01",
        dst_format: str = "01",
        max_pin_length: int = 12,
    ) -> PinBlock:
        """CA: PIN block under a TPK (terminal PIK) to under a ZPK."""
        return self._pin_reply(
            await self.call(
                "CA", _translate_fields(tpk, zpk, pin_block, account, src_format, dst_format, max_pin_length)
            )
        )

    async def translate_pin_zpk(
        self,
        src_zpk: str,
        dst_zpk: str,
        pin_block: str,
        account: str,
        *,
        src_format: str = "01",
        dst_format: str = "01",
        max_pin_length: int = 12,
    ) -> PinBlock:
        """CC: PIN block from under one ZPK to under another."""
        return self._pin_reply(
            await self.call(
                "CC",
                _translate_fields(
                    src_zpk, dst_zpk, pin_block, account, src_format, dst_format, max_pin_length
                ),
            )
        )

    async def translate_pin(
        self,
        src_key: str,
        dst_zpk: str,
        pin_block: str,
        account: str,
        *,
        src_key_type: str = "002",
    ) -> PinBlock:
        """W8: across algorithms (3DES format 0 ↔ SM4 format 0 + FF), chosen by the key prefixes."""
        return _w8_reply(
            await self.call("W8", _w8_fields(src_key, dst_zpk, pin_block, account, src_key_type))
        )

    async def pos_mac_and_translate_pin(
        self,
        mak: str,
        data: bytes,
        src_key: str,
        dst_zpk: str,
        pin_block: str,
        account: str,
        *,
        src_key_type: str = "002",
    ) -> tuple[bytes | HsmCommandError, PinBlock | HsmCommandError]:
        """``pos_mac`` and a PIN translation (CA: 3DES TPK to 3DES ZPK; CC: 3DES ZPK to ZPK; W8
        otherwise) written together, answered together. Each command's error code comes back as an
        ``HsmCommandError`` value, not raised; transport errors raise as usual."""
        if _is_sm4(src_key) or _is_sm4(dst_zpk):
            pin_command, pin_fields = "W8", _w8_fields(src_key, dst_zpk, pin_block, account, src_key_type)
        else:
            pin_command = "CA" if src_key_type == "002" else "CC"
            pin_fields = _translate_fields(src_key, dst_zpk, pin_block, account, "01", "01", 12)
        mac_reply, pin_reply = await self.request_many(
            [("MU", _mu_fields(mak, data, "003")), (pin_command, pin_fields)]
        )
        mac: bytes | HsmCommandError = (
            mac_reply.fields if mac_reply.error == "00" else HsmCommandError("MU", mac_reply.error)
        )
        pin: PinBlock | HsmCommandError
        if pin_reply.error != "00":
            pin = HsmCommandError(pin_command, pin_reply.error)
        elif pin_command == "W8":
            pin = _w8_reply(pin_reply.fields)
        else:
            pin = self._pin_reply(pin_reply.fields)
        return mac, pin

    async def verify_pin(
        self,
        zpk: str,
        pvk: str,
        pin_block: str,
        account: str,
        pvki: str,
        pvv: str,
        *,
        pin_format: str = "01",
    ) -> bool:
        """EC (3DES ZPK) or WV (``S`` ZPK): does the PIN match the Visa PVV?"""
        return await self._verify(*verify_pin_command(zpk, pvk, pin_block, account, pvki, pvv, pin_format))

    async def change_pin(
        self, zpk: str, pvk: str, old_block: str, new_block: str, account: str, pvki: str, pvv: str
    ) -> PinChange | None:
        """WC [project convention]: verify the current PIN (``old_block`` under ``zpk``) against
        ``pvv``; when it matches, the new PIN's PVV and the new PIN under the LMK, else None (01:
        nothing generated). 3DES format 0 blocks (16H) for a 3DES ZPK, SM4 blocks (32H) for ``S``."""
        alg = "2" if _is_sm4(zpk) else "1"
        reply = await self.request("WC", f"{alg}{zpk}{pvk}{old_block}{new_block}{account}{pvki}{pvv}")
        if reply.error == "01":
            return None
        if reply.error != "00":
            raise HsmCommandError("WC", reply.error)
        text = reply.fields.decode("ascii")
        return PinChange(text[:4], text[4:])

    # -- chip cryptograms ---------------------------------------------------------------------------
    @staticmethod
    def _kw_head(mode: str, imk: str, pan: str, psn: str, atc: bytes) -> bytes:
        """KW's fields up to the ATC; the scheme follows the key (``S`` SM4, else 3DES)."""
        if len(atc) != 2:
            raise ValueError("the ATC is 2 bytes")
        scheme = "2" if _is_sm4(imk) else "1"
        y = pan_psn_block(pan, psn).hex()
        return f"{mode}{scheme}{imk}{y}{atc.hex().upper()}".encode("ascii")

    async def verify_arqc(
        self,
        imk: str,
        pan: str,
        psn: str,
        atc: bytes,
        data: bytes,
        arqc: bytes,
        arc: bytes | None = None,
    ) -> bytes | None:
        """KW mode 0 (verify) or 1 (verify, then the ARPC answering with ``arc``). ``HsmRefused`` when
        the ARQC does not verify; the 8-byte ARPC when ``arc`` is given, else None."""
        if len(arqc) != 8 or (arc is not None and len(arc) != 2):
            raise ValueError("the ARQC is 8 bytes and the ARC 2")
        mode = "0" if arc is None else "1"
        fields = self._kw_head(mode, imk, pan, psn, atc) + b"%04X" % len(data) + data + _hexu(arqc)
        if arc is not None:
            fields += _hexu(arc)
        reply = await self.request("KW", fields)
        if reply.error == "01":
            raise HsmRefused("KW")
        if reply.error != "00":
            raise HsmCommandError("KW", reply.error)
        return None if arc is None else bytes.fromhex(reply.fields.decode("ascii"))

    async def arpc(self, imk: str, pan: str, psn: str, atc: bytes, arqc: bytes, arc: bytes) -> bytes:
        """KW mode 2: the 8-byte ARPC answering ``arqc`` with ``arc``, without verifying the ARQC."""
        if len(arqc) != 8 or len(arc) != 2:
            raise ValueError("the ARQC is 8 bytes and the ARC 2")
        fields = self._kw_head("2", imk, pan, psn, atc) + _hexu(arqc) + _hexu(arc)
        return bytes.fromhex((await self.call("KW", fields)).decode("ascii"))

    async def generate_sm2_key(self) -> Sm2KeyPair:
        """SK: a new SM2 key pair for PIN encryption."""
        out = (await self.call("SK", "1")).decode("ascii")
        return Sm2KeyPair(out[:97], out[97:227], out[227:243])

    async def sm2_pin_to_pvv(
        self, private_key: str, pvk: str, ciphertext: bytes, account: str, pvki: str
    ) -> Sm2Pin:
        """SP: a PIN an app encrypted under the SM2 public key (C1 ‖ C3 ‖ C2) → PVV, PIN under LMK, stamp."""
        ct = ciphertext.hex().upper()
        out = (await self.call("SP", f"{private_key}{pvk}{len(ct):04X}{ct}{account}{pvki}")).decode("ascii")
        return Sm2Pin(out[:4], out[4:37], int(out[37:53], 16))

    async def generate_pvv(self, pvk: str, pin_under_lmk: str, account: str, pvki: str) -> str:
        """DG: the Visa PVV (4N) of a PIN under LMK."""
        return (await self.call("DG", f"{pvk}{pin_under_lmk}{account}{pvki}")).decode()

    async def encrypt_pin(self, pin: str, account: str) -> str:
        """BA: a chosen PIN (4-12 digits) under the LMK (``L``+32H)."""
        return (await self.call("BA", f"{pin.ljust(13, 'F')}{account}")).decode()

    async def random_pin(self, account: str, length: int = 6) -> str:
        """JA: a random PIN of ``length`` digits, under the LMK (``L``+32H)."""
        return (await self.call("JA", f"{account}{length:02d}")).decode()

    # -- data -------------------------------------------------------------------------------------
    async def _data(self, command: str, key: str, data: bytes, iv: bytes | None, key_type: str) -> bytes:
        mode = "00" if iv is None else "01"
        head = f"{mode}00{key_type}{key}".encode() + (b"" if iv is None else iv.hex().upper().encode())
        out = await self.call(command, head + b"%04X" % len(data) + data)
        skip = 0 if iv is None else 2 * len(iv)
        n = int(out[skip : skip + 4], 16)
        return out[skip + 4 : skip + 4 + n]

    async def encrypt_data(
        self, key: str, data: bytes, *, iv: bytes | None = None, key_type: str = "00A"
    ) -> bytes:
        """M0: ECB (no ``iv``) or CBC; ``data`` a whole number of blocks; returns the ciphertext."""
        return await self._data("M0", key, data, iv, key_type)

    async def decrypt_data(
        self, key: str, data: bytes, *, iv: bytes | None = None, key_type: str = "00A"
    ) -> bytes:
        """M2: the inverse of ``encrypt_data``."""
        return await self._data("M2", key, data, iv, key_type)
