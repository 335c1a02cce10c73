"""Hostile frames at every listener of a live payswitch, while a well-behaved client keeps being served.

One ``pos.system.System`` (PostgreSQL, hsm_sim, host, switch as child processes, the demo seeded with a
small load pool, every metrics port on) is the target. For each listener a hypothesis strategy draws
hostile inputs, each sent on a connection of its own (written, half-closed, read until the peer closes
or a short timeout):

- random bytes; a valid length prefix with garbage behind it; lengths over the listener's maximum
  (up to 0xFFFF) with a short body; truncated real frames; real frames mutated byte-wise (flips,
  inserts, deletions, overwrites, a wrong length); several frames pipelined in one write;
- real frames come from the codecs (``specs.codec.codec_for``), from whole random messages of
  ``tests.specs.strategies``, and, on the POS ports, from a signed-on fuzz terminal's real requests;
- on the POS ports also MAC'd requests with random field values: a signed-on fuzz terminal
  (``pos.load.VirtualTerminal``) builds a real request, fields are replaced by random valid values
  (``tests.specs.strategies.field_values``) and the MAC is computed under its real MAK, so the
  frame passes the MAC check and reaches the deeper code (PIN, routing, host, ledger);
- on the HSM port real commands (``NC``, ``B2``, ``A0``, ``BU``, ``MU``, ``CA``) as ``hsm_sim.client``
  writes them, mutated; on the metrics ports HTTP requests, mutated, truncated, with huge headers.

Throughout, ``Watch`` runs well-behaved clients on other connections, one round every few tenths of
a second: a signed-on 3des and a signed-on sm4 pool terminal doing PIN balance inquiries (answered
00 with a valid MAC), an HSM ``NC`` and ``B2`` echo, an H2H echo (0800/301) on the host and on the
switch's inbound port (from the acquirer link ``add_acquirer_link`` registers with the demo's clear
keys), and a GET of every /metrics. After each listener: no service exited, no traceback in any
service log, every round of every watcher answered correctly.

``tests/test_fuzz.py`` runs it bounded (``PAYSWITCH_FUZZ_EXAMPLES`` examples per listener, default
100, derandomized: the same frames every run). The long mode for nightly use::

    python -m tests.fuzz --examples 100000 [--listener pos_3des ...] [--seed N]

prints the frames sent per listener and what the watchers saw, exit status 1 on any finding.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from host.client import H2HClient
from hsm_sim.client import HsmClient
from hsm_sim.mac import retail_mac
from ops.pgembed import free_port
from pos import messages
from pos.client import TerminalError
from pos.demo import DEMO_ZAK, DEMO_ZPK, Admin, _form_key
from pos.load import Pool, PoolTerminal, VirtualTerminal, read_pool
from pos.system import System
from specs.codec import Codec, codec_for
from specs.errors import FrameError
from specs.framing import (
    DEFAULT_HEADER,
    DEFAULT_TPDU,
    H2H_MAX_FRAME,
    POS_MAX_FRAME,
    REQUIREMENT_SIGN_ON,
    frame,
    h2h_splitter,
)
from tests.specs.strategies import field_values
from tests.specs.strategies import messages as random_messages

DEFAULT_EXAMPLES = 100
EXAMPLES_ENV = "PAYSWITCH_FUZZ_EXAMPLES"
POS_LISTENERS = ("pos_3des", "pos_sm4")
LISTENERS = (
    *POS_LISTENERS,
    "switch_h2h",
    "host_h2h",
    "hsm",
    "metrics_hsm",
    "metrics_host",
    "metrics_switch",
)
METRICS = {"metrics_hsm": "hsm", "metrics_host": "host", "metrics_switch": "switch"}
READ_TIMEOUT = 1.5  # seconds a hostile connection is read for an answer before it is dropped
WATCH_PAUSE = 0.3  # seconds between two rounds of a watcher
WATCH_TIMEOUT = 15.0  # seconds a watcher waits for an answer (a busy 2-core machine, not a speed test)
INSTITUTION = "48880000"  # the switch's institution id: the demo's registered link at the host
UNKNOWN_ACQUIRER = "48889999"
ACQUIRER = "48881111"  # the fuzz acquirer link at the switch's inbound port (add_acquirer_link)
PORTS_OF_LISTENER = {
    "pos_3des": "pos_3des",
    "pos_sm4": "pos_sm4",
    "switch_h2h": "h2h",
    "host_h2h": "host",
    "hsm": "hsm",
}


def examples_from_env() -> int:
    """Examples per listener: ``PAYSWITCH_FUZZ_EXAMPLES`` (the nightly run sets it high), else 100."""
    try:
        return max(1, int(os.environ.get(EXAMPLES_ENV, DEFAULT_EXAMPLES)))
    except ValueError:
        return DEFAULT_EXAMPLES


# -- the system ----------------------------------------------------------------------------------------
def start_system(keep: bool = False) -> System:
    """The demo seeded with four load terminals (two watch, two fuzz) and every metrics port on."""
    metrics = {f"{svc}.metrics_port": str(free_port()) for svc in ("hsm", "host", "switch")}
    # A short upstream timeout: a hostile request the host sits on is answered within a read.
    system = System(
        keep=keep, settings={**metrics, "switch.request_timeout_ms": "2000", "log.level": "warning"}
    )
    try:
        system.start(seed=("--load-terminals", "4", "--load-cards", "4"))
        add_acquirer_link(system)
    except BaseException:
        system.stop()
        raise
    return system


def add_acquirer_link(system: System) -> None:
    """An inbound acquirer link at the switch (DE32 ``ACQUIRER``) with the demo's clear ZPK and ZAK,
    so that MAC'd H2H frames pass the switch's MAC check and go on to the host."""
    admin = Admin(str(system.config_path))
    zpk = _form_key(admin, "001", DEMO_ZPK, "U")["key_under_lmk"]  # the demo's way to a key under LMK
    zak = _form_key(admin, "008", DEMO_ZAK, "U")["key_under_lmk"]
    system.cli(
        "switch",
        "link",
        "add",
        "fuzz-acquirer",
        "--direction",
        "in",
        "--institution-id",
        ACQUIRER,
        "--scheme",
        "3des",
        "--zpk",
        zpk,
        "--zak",
        zak,
    )
    time.sleep(3)  # the running switch reads links every switch.config_poll_s (2 s)


def listener_port(system: System, listener: str) -> int:
    if listener in METRICS:
        return int(system.settings[f"{METRICS[listener]}.metrics_port"])
    return system.ports[PORTS_OF_LISTENER[listener]]


def health(system: System) -> list[str]:
    """What is wrong with the services now: one that exited, a traceback in a log."""
    problems = []
    for name, svc in system.services.items():
        if svc.proc.poll() is not None:
            problems.append(f"{name} exited (status {svc.proc.returncode})")
        try:
            text = svc.log.read_text(errors="replace")
        except OSError:
            continue
        if "Traceback" in text:
            at = text.index("Traceback")
            problems.append(f"{name} logged a traceback: {text[max(0, at - 300) : at + 900]!r}")
    return problems


# -- well-behaved clients ----------------------------------------------------------------------------
@dataclass
class Watch:
    """Well-behaved clients on their own connections, in a trio loop of their own thread.

    The fuzzing thread also runs its signed-on fuzz terminals in this loop (``call``)."""

    system: System
    pool: Pool
    ok: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    _token: trio.lowlevel.TrioToken | None = None
    _stop: trio.Event | None = None
    _thread: threading.Thread | None = None
    _error: BaseException | None = None

    def start(self) -> Watch:
        ready = threading.Event()

        def run() -> None:
            try:
                trio.run(self._main, ready)
            except BaseException as exc:  # reported by stop(); the thread must not die silently
                self._error = exc
                ready.set()

        self._thread = threading.Thread(target=run, name="fuzz-watch", daemon=True)
        self._thread.start()
        ready.wait(120)
        if self._error is not None:
            raise RuntimeError(f"the watchers did not start: {self._error!r}") from self._error
        return self

    def stop(self) -> None:
        if self._token is not None and self._stop is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        if self._thread is not None:
            self._thread.join(60)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``await fn(*args)`` in the watchers' trio loop, from the fuzzing thread."""
        assert self._token is not None
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def snapshot(self) -> tuple[Counter[str], list[str]]:
        return Counter(self.ok), list(self.failures)

    async def _main(self, ready: threading.Event) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        terminals = [self._terminal(scheme) for scheme in ("3des", "sm4")]
        for vt in terminals:
            if not await vt.connect_and_sign_on():
                raise RuntimeError(f"watch terminal {vt.spec.terminal_id} was not signed on")
        async with trio.open_nursery() as nursery:
            for vt in terminals:
                nursery.start_soon(self._loop, f"pos {vt.spec.scheme} balance", self._balance, vt)
            hsm = HsmClient("127.0.0.1", self.system.ports["hsm"], connections=1, timeout=WATCH_TIMEOUT)
            await nursery.start(_serve_client, hsm)
            nursery.start_soon(self._loop, "hsm NC+B2", self._hsm, hsm)
            for name, port, institution in (
                ("host", self.system.ports["host"], INSTITUTION),
                ("switch", self.system.ports["h2h"], ACQUIRER),
            ):
                client = await H2HClient.connect("127.0.0.1", port)
                await nursery.start(client.run_reader)
                nursery.start_soon(self._loop, f"{name} H2H echo", self._h2h_echo, client, institution)
            for listener, svc in METRICS.items():
                nursery.start_soon(self._loop, f"{svc} /metrics", self._metrics, listener)
            ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()
        for vt in terminals:
            await vt.aclose()

    def _terminal(self, scheme: str) -> VirtualTerminal:
        spec = next(t for t in self.pool.terminals if t.scheme == scheme)
        return VirtualTerminal(spec, self.pool.cards, WATCH_TIMEOUT, random.Random(1))

    async def _loop(self, name: str, check: Callable[..., Any], *args: Any) -> None:
        while True:
            try:
                with trio.fail_after(WATCH_TIMEOUT * 2):
                    problem = await check(*args)
            except Exception as exc:  # no answer, a broken connection, a timeout: a finding, not a crash
                problem = f"{exc.__class__.__name__}: {str(exc)[:200]}"
            if problem:
                self.failures.append(f"{time.strftime('%H:%M:%S')} {name}: {problem}")
            else:
                self.ok[name] += 1
            await trio.sleep(WATCH_PAUSE)

    async def _balance(self, vt: VirtualTerminal) -> str | None:
        if vt.session is None:
            await vt.connect_and_sign_on()
        assert vt.session is not None
        try:
            answer = await vt.session.exchange(vt.request("balance", 0), timeout=WATCH_TIMEOUT)
        except TerminalError:
            await vt.aclose()
            vt.session = None  # the next round connects and signs on again (the finding is kept)
            raise
        if answer.head.requirement == REQUIREMENT_SIGN_ON:
            await vt.aclose()
            await vt.connect_and_sign_on()
            return f"answered {answer.code} asking for a sign-on"
        if answer.code != "00" or answer.mac_ok is False or not answer.msg.get("54"):
            de54 = "present" if answer.msg.get("54") else "absent"
            return f"answered {answer.code} (MAC ok: {answer.mac_ok}, DE54 {de54})"
        return None

    async def _hsm(self, hsm: HsmClient) -> str | None:
        diag = await hsm.diagnostics()
        if not diag.lmk_check_value:
            return "NC without an LMK check value"
        data = b"payswitch-fuzz-watch"
        echoed = await hsm.echo(data)
        return None if echoed == data else f"B2 echoed {echoed!r}"

    async def _h2h_echo(self, host: H2HClient, institution: str) -> str | None:
        msg = {"t": "0800", "7": host.now_de7(), "11": host.next_stan(), "32": institution, "70": "301"}
        answer = await host.request(msg, timeout=WATCH_TIMEOUT)
        return None if answer.get("39") == "00" else f"0800/301 answered {answer.get('39')!r}"

    async def _metrics(self, listener: str) -> str | None:
        stream = await trio.open_tcp_stream("127.0.0.1", listener_port(self.system, listener))
        async with stream:
            await stream.send_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
        status = data.split(b"\r\n", 1)[0]
        return None if b" 200 " in status + b" " and b"# HELP" in data else f"status {status[:60]!r}"


async def _serve_client(
    hsm: HsmClient, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    async with hsm:
        task_status.started()
        await trio.sleep_forever()


# -- fuzz terminals: real frames and MAC'd frames with random field values ----------------------------
class FuzzTerminal:
    """A signed-on pool terminal whose real keys MAC the fuzzer's requests (lives in Watch's loop)."""

    KINDS = ("purchase", "balance", "topup", "echo")

    def __init__(self, spec: PoolTerminal, pool: Pool) -> None:
        self.vt = VirtualTerminal(spec, pool.cards, WATCH_TIMEOUT, random.Random(2))
        self.codec = codec_for("pos", spec.scheme)
        self.answers: Counter[str] = Counter()

    async def ensure(self) -> None:
        if self.vt.session is None:
            await self.vt.connect_and_sign_on()
            self.vt.pin_blocks.clear()

    async def real_bodies(self) -> list[bytes]:
        """Real POS frame bodies (TPDU + header + message) of this terminal, MAC'd as it sends them."""
        await self.ensure()
        assert self.vt.session is not None
        s = self.vt.session
        bodies = [s.prefix + s.encode(self.vt.request(k, 100 + i)) for i, k in enumerate(self.KINDS * 3)]
        st_ = self.vt.state
        signon = messages.network("0800", "001", st_.next_stan(), st_.batch, st_.terminal_id, st_.merchant_id)
        return [*bodies, s.prefix + self.codec.encode(signon)]

    async def send_maced(self, kind: str, changes: dict[str, Any], drop: list[str]) -> None:
        """A real request with ``changes`` and without ``drop``, MAC'd under the live MAK, on the
        terminal's own connection; the answer (if any within READ_TIMEOUT) is counted."""
        try:
            await self.ensure()
        except TerminalError:  # the switch may refuse sign-ons now (rate limit): not a finding
            self.answers["no session"] += 1
            return
        assert self.vt.session is not None
        s = self.vt.session
        msg = self.vt.request(kind, 100)
        msg.update(changes)
        for key in drop:
            msg.pop(key, None)
        msg["64"] = bytes(8)  # MAC'd: encode computes it over the final fields
        try:
            body = s.encode(msg)
        except Exception:  # a combination the codec refuses to encode: not a frame to send
            self.answers["unencodable"] += 1
            return
        try:
            await s.conn.send(frame(s.prefix + body))
            with trio.move_on_after(READ_TIMEOUT):
                data = await s.conn.receive()
                self.answers[_pos_code(self.codec, data)] += 1
                if len(data) > 8 and data[8] & 0x0F == REQUIREMENT_SIGN_ON:
                    await self.reconnect()
                return
            self.answers["no answer"] += 1
        except TerminalError:
            self.answers["closed"] += 1
            await self.reconnect()

    async def reconnect(self) -> None:
        await self.vt.aclose()
        self.vt.session = None
        try:
            await self.ensure()
        except TerminalError:
            self.answers["no session"] += 1


def _h2h_codes(codec: Codec, data: bytes) -> list[str]:
    """DE39 of every H2H answer in ``data`` ("undecodable" for a frame that is not one)."""
    try:
        bodies = h2h_splitter().feed(data)
    except FrameError:
        return ["broken frame"]
    codes = []
    for body in bodies:
        try:
            codes.append(str(codec.decode(body).get("39", "no DE39")))
        except Exception:
            codes.append("undecodable")
    return codes


def _pos_code(codec: Any, data: bytes) -> str:
    try:
        return str(codec.decode(data[11:]).get("39", "no DE39"))
    except Exception:
        return "undecodable"


# -- strategies ----------------------------------------------------------------------------------------
def _mutate(data: st.DrawFn, body: bytes) -> bytes:
    """Byte-wise mutations of a real body: flips, inserts, deletions, overwrites (1 to 4 of them)."""
    out = bytearray(body)
    for _ in range(data(st.integers(1, 4))):
        op = data(st.sampled_from(("flip", "insert", "delete", "overwrite", "digit")))
        at = data(st.integers(0, max(0, len(out) - 1)))
        if op == "flip" and out:
            out[at] ^= 1 << data(st.integers(0, 7))
        elif op == "insert":
            out[at:at] = data(st.binary(min_size=1, max_size=16))
        elif op == "delete" and out:
            del out[at : at + data(st.integers(1, 16))]
        elif op == "overwrite" and out:
            chunk = data(st.binary(min_size=1, max_size=16))
            out[at : at + len(chunk)] = chunk
        elif op == "digit" and out:
            out[at] = data(st.sampled_from(b"0123456789F=\x00\xff"))
    return bytes(out)


@st.composite
def hostile(draw: st.DrawFn, real: list[bytes], max_len: int, prefix: bytes = b"") -> bytes:
    """One hostile write to a length-prefixed listener (``real``: real frame bodies to start from)."""
    shape = draw(
        st.sampled_from(
            (
                "random",
                "garbage",
                "prefixed",
                "huge",
                "truncated",
                "mutated",
                "mutated-len",
                "pipelined",
                "zero",
            )
        )
    )
    body = draw(st.sampled_from(real))
    if shape == "random":
        return draw(st.binary(min_size=1, max_size=600))
    if shape == "garbage":
        return frame(draw(st.binary(min_size=1, max_size=min(max_len, 1200))))
    if shape == "prefixed":  # a right TPDU and header (POS) or nothing (H2H), then garbage
        return frame(prefix + draw(st.binary(min_size=0, max_size=400)))
    if shape == "huge":
        n = draw(st.integers(max_len + 1, 0xFFFF))
        return n.to_bytes(2, "big") + draw(st.binary(max_size=64))
    if shape == "truncated":
        whole = frame(body)
        return whole[: draw(st.integers(1, len(whole) - 1))]
    if shape == "mutated":
        return frame(_mutate(draw, body))
    if shape == "mutated-len":  # a real body under a wrong length
        n = draw(st.integers(0, min(0xFFFF, max_len + 16)))
        return n.to_bytes(2, "big") + _mutate(draw, body)
    if shape == "pipelined":
        parts = draw(st.lists(st.sampled_from(real), min_size=2, max_size=6))
        return b"".join(frame(_mutate(draw, p) if draw(st.booleans()) else p) for p in parts)
    return b"\x00\x00" + frame(body)  # zero length: closes a POS connection, a keep-alive on H2H


def h2h_requests(pan: str, institution: str) -> list[dict[str, Any]]:
    """Real H2H requests: an echo, a sign-on and a sign-off from ``institution`` (a registered link),
    a purchase, a top-up and a balance inquiry (card ``pan``) from it and from an unknown acquirer."""
    base = {
        "7": "1202101010",
        "12": "101010",
        "13": "1202",
        "22": "012",
        "25": "00",
        "41": "T0000001",
        "42": "898330160120001",
        "49": "156",
        "14": "3012",
    }
    out: list[dict[str, Any]] = [
        {"t": "0800", "7": "1202101010", "11": "000001", "32": institution, "70": c}
        for c in ("301", "001", "002")
    ]
    cases = [
        (institution, "000000", 100),
        (institution, "210000", 100),
        (institution, "310000", None),
        (UNKNOWN_ACQUIRER, "000000", 100),
        (UNKNOWN_ACQUIRER, "210000", 5000),
    ]
    for i, (acq, proc, amount) in enumerate(cases):
        msg = {
            **base,
            "t": "0200",
            "2": pan,
            "3": proc,
            "11": f"{i + 10:06d}",
            "32": acq,
            "37": f"53301{i + 10:06d}0",
        }
        if amount is not None:
            msg["4"] = f"{amount:012d}"
        out.append(msg)
    return out


def h2h_maced(codec: Codec, msg: dict[str, Any]) -> bytes:
    """``msg`` encoded with a valid DE128 under the demo link's clear ZAK (X9.19, as the HSM's M6)."""
    raw = codec.encode({**msg, "128": bytes(8)})
    return codec.with_mac(raw, retail_mac(bytes.fromhex(DEMO_ZAK), codec.mac_block(raw)))


def h2h_real(codec: Codec, pan: str, institution: str) -> list[bytes]:
    """Real H2H bodies: every request of ``h2h_requests`` without a MAC and with a valid one."""
    requests = h2h_requests(pan, institution)
    return [codec.encode(m) for m in requests] + [h2h_maced(codec, m) for m in requests if m["t"] != "0800"]


@st.composite
def h2h_random_fields(draw: st.DrawFn, codec: Codec, pan: str, institution: str) -> bytes:
    """A real financial request with up to four fields given random valid values (or removed),
    MAC'd under the demo ZAK so that it passes the MAC check and reaches the host's rules."""
    msg = dict(draw(st.sampled_from([m for m in h2h_requests(pan, institution) if m["t"] != "0800"])))
    for key in draw(
        st.lists(st.sampled_from([f for f in codec.fields if f not in ("t", "128")]), max_size=4)
    ):
        if draw(st.integers(0, 5)) == 0:
            msg.pop(key, None)
        else:
            msg[key] = draw(field_values(codec.spec[key]))
    try:
        return frame(h2h_maced(codec, msg))
    except Exception:  # a combination the codec refuses to encode: send it without the change
        return frame(h2h_maced(codec, dict(h2h_requests(pan, institution)[3])))


HSM_HEADER = b"FZ01"


def hsm_real() -> list[bytes]:
    """Real HSM command bodies (header + command + fields) as hsm_sim.client writes them."""
    key = b"U" + b"0123456789ABCDEF0123456789ABCDEF"
    data = b"0123456789ABCDEF"
    return [
        HSM_HEADER + b"NC",
        HSM_HEADER + b"B2" + b"%04X" % 8 + b"ABCDEFGH",
        HSM_HEADER + b"A00002U",
        HSM_HEADER + b"BU02U" + key[1:],
        HSM_HEADER + b"MU" + b"0" + b"003" + key + b"%04X" % len(data) + data,
        HSM_HEADER + b"CA" + key + key + b"12" + b"0123456789ABCDEF" + b"01" + b"01" + b"123456789012",
        HSM_HEADER + b"JA" + b"123456789012" + b"06",
    ]


@st.composite
def hsm_hostile(draw: st.DrawFn) -> bytes:
    """Hostile HSM writes: the length-prefixed shapes plus random command codes with random fields."""
    if draw(st.integers(0, 4)) == 0:
        code = draw(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=2, max_size=2)).encode()
        return frame(HSM_HEADER + code + draw(st.binary(max_size=200)))
    return draw(hostile(hsm_real(), 0xFFFF - 1))


HTTP_REAL = [
    b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
    b"POST /metrics HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789",
    b"GET /metrics?name[]=x HTTP/1.1\r\nAccept-Encoding: gzip\r\n\r\n",
]


@st.composite
def http_hostile(draw: st.DrawFn) -> bytes:
    """Hostile HTTP: random bytes, mutated and truncated requests, huge headers and lengths."""
    real = draw(st.sampled_from(HTTP_REAL))
    shape = draw(
        st.sampled_from(
            ("random", "mutated", "truncated", "huge-header", "huge-length", "many-headers", "pipelined")
        )
    )
    if shape == "random":
        return draw(st.binary(min_size=1, max_size=600))
    if shape == "mutated":
        return _mutate(draw, real)
    if shape == "truncated":
        return real[: draw(st.integers(1, len(real) - 1))]
    if shape == "huge-header":
        return b"GET /metrics HTTP/1.1\r\nX-Fuzz: " + b"A" * draw(st.integers(1000, 70000)) + b"\r\n\r\n"
    if shape == "huge-length":
        n = draw(st.integers(10**6, 10**12))
        return b"POST /metrics HTTP/1.1\r\nContent-Length: %d\r\n\r\nabc" % n
    if shape == "many-headers":
        return b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * draw(st.integers(100, 3000)) + b"\r\n"
    return real * draw(st.integers(2, 20))


# -- sending -------------------------------------------------------------------------------------------
def send_raw(port: int, data: bytes, read_timeout: float = READ_TIMEOUT) -> bytes:
    """Write ``data`` on a new connection, half-close it, read until the peer closes or the timeout."""
    got = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                return got  # the peer closed first (a huge length refused at once): fine
            sock.settimeout(read_timeout)
            deadline = time.monotonic() + read_timeout
            while time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
    except OSError:
        pass  # reset or timeout: the listener dropped the connection
    return got


@dataclass
class Run:
    listener: str
    frames: int = 0
    answered: int = 0
    problems: list[str] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)  # DE39 of the answers to MAC'd and H2H frames


def fuzz_listener(
    system: System, watch: Watch, listener: str, examples: int, seed_: int | None = None
) -> Run:
    """Send ``examples`` hypothesis-drawn hostile inputs to one listener; a service that exits stops it."""
    run = Run(listener)
    port = listener_port(system, listener)
    fuzz_terminal: FuzzTerminal | None = None
    h2h_codec: Codec | None = None
    if listener in POS_LISTENERS:
        scheme = listener.removeprefix("pos_")
        spec = [t for t in watch.pool.terminals if t.scheme == scheme][1]  # [0] is the watcher
        fuzz_terminal = FuzzTerminal(spec, watch.pool)
        real = watch.call(fuzz_terminal.real_bodies)
        codec = codec_for("pos", scheme)
        randoms = st.builds(lambda m: DEFAULT_TPDU + DEFAULT_HEADER + codec.encode(m), random_messages(codec))
        maced = st.tuples(
            st.sampled_from(FuzzTerminal.KINDS),
            st.dictionaries(st.sampled_from(codec.fields), st.none(), max_size=4).flatmap(
                lambda keys: st.fixed_dictionaries({k: field_values(codec.spec[k]) for k in keys})
            ),
            st.lists(st.sampled_from(codec.fields), max_size=2),
        )
        prefix = DEFAULT_TPDU + DEFAULT_HEADER
        strategy: st.SearchStrategy[Any] = st.one_of(
            hostile(real, POS_MAX_FRAME, prefix).map(lambda b: ("raw", b)),
            randoms.map(lambda b: ("raw", frame(b))),
            maced.map(lambda m: ("maced", m)),
        )
    elif listener in ("switch_h2h", "host_h2h"):
        h2h = h2h_codec = codec_for("h2h", "3des")  # the demo link's profile (host.profile default)
        pan = watch.pool.cards[0].pan
        institution = INSTITUTION if listener == "host_h2h" else ACQUIRER
        randoms = st.builds(h2h.encode, random_messages(h2h))
        strategy = st.one_of(
            hostile(h2h_real(h2h, pan, institution), H2H_MAX_FRAME),
            randoms.map(frame),
            h2h_random_fields(h2h, pan, institution),
        ).map(lambda b: ("raw", b))
    elif listener == "hsm":
        strategy = hsm_hostile().map(lambda b: ("raw", b))
    else:
        strategy = http_hostile().map(lambda b: ("raw", b))

    def one(probe: tuple[str, Any]) -> None:
        how, what = probe
        if how == "maced":
            assert fuzz_terminal is not None
            kind, changes, drop = what
            watch.call(fuzz_terminal.send_maced, kind, changes, [k for k in drop if k not in ("t", "64")])
        elif got := send_raw(port, what):
            run.answered += 1
            if h2h_codec is not None:
                run.codes.update(_h2h_codes(h2h_codec, got))
        run.frames += 1
        dead = [
            f"{n} exited (status {s.proc.returncode})"
            for n, s in system.services.items()
            if s.proc.poll() is not None
        ]
        if dead:
            shown = what.hex()[:400] if isinstance(what, bytes) else repr(what)[:400]
            run.problems.append(f"after frame {run.frames} ({how} {shown}): {', '.join(dead)}")
            raise _Stop

    test = settings(
        max_examples=examples,
        deadline=None,
        derandomize=seed_ is None,
        database=None,
        phases=[Phase.generate],  # no shrinking: a service that died is not there to shrink against
        suppress_health_check=list(HealthCheck),
    )(given(strategy)(one))
    if seed_ is not None:
        test = seed(seed_)(test)
    with contextlib.suppress(_Stop):
        test()
    if fuzz_terminal is not None:
        run.codes = fuzz_terminal.answers
        watch.call(fuzz_terminal.vt.aclose)
    run.problems.extend(health(system))
    return run


class _Stop(Exception):
    """A service exited: no point sending more frames to this system."""


def start_watch(system: System) -> Watch:
    return Watch(system, read_pool(system.root / "var/pos/load-pool.json", system.seal_key)).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=examples_from_env(), help="inputs per listener")
    parser.add_argument("--listener", action="append", choices=LISTENERS, help="only these (repeatable)")
    parser.add_argument("--seed", type=int, help="a random seed (default: derandomized, the same every run)")
    parser.add_argument("--keep", action="store_true", help="keep the system's folder (logs) and print it")
    args = parser.parse_args(argv)
    system = start_system(keep=args.keep)
    findings = 0
    try:
        watch = start_watch(system)
        try:
            for listener in args.listener or LISTENERS:
                started = time.monotonic()
                run = fuzz_listener(system, watch, listener, args.examples, args.seed)
                ok, failures = watch.snapshot()
                extra = f" DE39 of MAC'd/H2H answers {dict(run.codes)}" if run.codes else ""
                print(
                    f"{listener}: {run.frames} frames sent, {run.answered} answered on the raw connection, "
                    f"{time.monotonic() - started:.1f}s{extra}",
                    flush=True,
                )
                for p in run.problems:
                    print(f"  PROBLEM {p}", flush=True)
                findings += len(run.problems)
            ok, failures = watch.snapshot()
            for name, svc in system.services.items():
                text = svc.log.read_bytes()
                lines = text.count(b"\n")
                print(f"{name}.log: {lines} lines, {len(text) / 1024:.0f} KiB")
            print("watchers: " + ", ".join(f"{k} {v} ok" for k, v in sorted(ok.items())))
            for f in failures:
                print(f"  WATCH FAILED {f}")
            findings += len(failures)
        finally:
            watch.stop()
    finally:
        system.stop()
    print("no findings" if not findings else f"{findings} finding(s)")
    if args.keep:
        print(f"logs in {system.root}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
