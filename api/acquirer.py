"""The API's H2H link to the switch (issue 17: money moves only through the authorization path).

The API is an acquirer of its own on the switch's inbound H2H port: DE32 = ``api.institution_id``,
switch link ``api`` (``direction in``), keys in table ``api_link`` (``payswitch api link set``, made by
``demo seed``). ``SwitchLink`` keeps ``api.connections`` TCP connections to
``api.switch_host:switch.h2h_port``; each is signed on (0800 DE70 001) before it carries requests and
echoed (0800 DE70 301) when quiet; a connection that breaks is opened again with backoff (0.2 s
doubling to 5 s). Requests are pipelined on ``host.client.H2HClient`` (many in flight, answers matched
on DE7 + DE11 + DE32 + DE41) and carry DE128, the MAC under the link's ZAK (``hsm.h2h_mac``); an answer's
DE128 is verified (``verify_h2h_mac``) unless it is a 30 (the switch answers a bad MAC unsigned).

``await link.request(msg)`` returns the answer, or raises ``LinkDown`` (no connection is signed on:
nothing was sent, a retry is safe) or ``LinkTimeout`` (sent, and no trustworthy answer within
``api.request_timeout_ms``, or the connection broke meanwhile: the outcome is unknown; api/payments.py
leaves the write-ahead row ``sent`` for the sweeper to reverse).

``run(state)`` is the background task of ``api serve``: it polls ``api_link`` until keys are set, builds
the link, sets ``state.link`` and follows a change of keys.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from host.client import H2HClient, match_key
from ops.logs import get_logger
from specs.codec import Codec, codec_for
from specs.errors import DecodeError
from specs.framing import frame

if TYPE_CHECKING:
    from api.state import ApiState

log = get_logger(__name__)

POLL_SECONDS = 2.0  # how often run() looks for the link's keys (and a change of them)
ECHO_SECONDS = 20.0  # a connection quiet this long sends an echo
BACKOFF_START, BACKOFF_MAX = 0.2, 5.0
SIGN_ON_TIMEOUT = 5.0


class LinkDown(Exception):
    """No signed-on connection to the switch: nothing was sent."""


class LinkTimeout(Exception):
    """Sent, and no answer came in time: the outcome is unknown."""


@dataclass(frozen=True, slots=True)
class LinkKeys:
    scheme: str  # 3des | sm4
    zpk: str  # under the LMK
    zak: str | None  # under the LMK; None: the link is declared without DE128


async def read_keys(conn: Any) -> LinkKeys | None:
    row = await conn.fetchrow("SELECT scheme, zpk, zak FROM api_link")
    return None if row is None else LinkKeys(row["scheme"], row["zpk"], row["zak"])


async def keys_set_by(conn: Any) -> Any:
    """When the link's keys were set and by whom (``api link show``); None before they are."""
    return await conn.fetchrow("SELECT set_at, actor FROM api_link")


async def set_keys(conn: Any, scheme: str, zpk: str, zak: str | None, actor: str) -> None:
    """``payswitch api link set``: the one row of ``api_link`` (keys under the LMK)."""
    await conn.execute(
        """INSERT INTO api_link (id, scheme, zpk, zak, actor) VALUES (true, $1, $2, $3, $4)
           ON CONFLICT (id) DO UPDATE SET scheme = EXCLUDED.scheme, zpk = EXCLUDED.zpk, zak = EXCLUDED.zak,
               actor = EXCLUDED.actor, set_at = now()""",
        scheme, zpk, zak, actor,
    )


def now_de7() -> str:
    return dt.datetime.now(dt.UTC).strftime("%m%d%H%M%S")


class _Conn(H2HClient):
    """One signed-on connection: the pipelined client plus what the link needs to know of it."""

    def __init__(self, stream: trio.SocketStream, profile: str) -> None:
        super().__init__(stream, profile)
        self.signed_on = False
        self.last_used = trio.current_time()
        self.broken = trio.Event()

    def forget(self, key: tuple[str, str, str, str]) -> None:
        self._waiting.pop(key, None)


class SwitchLink:
    def __init__(self, state: ApiState, keys: LinkKeys) -> None:
        self.state = state
        self.keys = keys
        cfg = state.config
        self.host = cfg.api.switch_host
        self.port = cfg.switch.h2h_port
        self.institution_id = cfg.api.institution_id
        self.timeout = cfg.api.request_timeout_ms / 1000
        self.connections = cfg.api.connections
        self._conns: list[_Conn] = []
        self._next = itertools.count()
        self._stans = itertools.count(1)

    @property
    def up(self) -> bool:
        return any(c.signed_on for c in self._conns)

    # -- the connections ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Keep ``connections`` connections open until cancelled."""
        async with trio.open_nursery() as nursery:
            for i in range(self.connections):
                nursery.start_soon(self._keep, i)

    async def _keep(self, index: int) -> None:
        backoff = BACKOFF_START
        while True:
            try:
                stream = await trio.open_tcp_stream(self.host, self.port)
            except OSError as exc:
                log.warning("api link: cannot connect to the switch", error=str(exc), retry_s=backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            conn = _Conn(stream, self.keys.scheme)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read, conn, nursery)
                    if await self._network(conn, "001"):
                        conn.signed_on = True
                        self._conns.append(conn)
                        backoff = BACKOFF_START
                        log.info("api link signed on", connection=index)
                        nursery.start_soon(self._echo, conn, nursery)
                    else:
                        nursery.cancel_scope.cancel()
            except Exception as exc:  # a broken stream (in an exception group from the nursery): reconnect
                log.warning("api link: connection lost", error=type(exc).__name__)
            finally:
                conn.signed_on = False
                conn.broken.set()
                if conn in self._conns:
                    self._conns.remove(conn)
                with trio.CancelScope(shield=True):
                    await conn.aclose()
            await trio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _read(self, conn: _Conn, nursery: trio.Nursery) -> None:
        try:
            await conn.run_reader()
        except (DecodeError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.warning("api link: reader stopped", error=type(exc).__name__)
        nursery.cancel_scope.cancel()  # EOF or a broken stream: reconnect

    async def _network(self, conn: _Conn, code: str) -> bool:
        msg = {"t": "0800", "7": now_de7(), "11": self._stan(), "32": self.institution_id, "70": code}
        try:
            answer = await conn.request(msg, timeout=SIGN_ON_TIMEOUT)
        except trio.TooSlowError:
            conn.forget(match_key(msg))
            log.warning("api link: no answer to 0800", code=code)
            return False
        if answer.get("39") != "00":
            log.warning("api link: 0800 refused", code=code, response_code=answer.get("39"))
            return False
        return True

    async def _echo(self, conn: _Conn, nursery: trio.Nursery) -> None:
        while True:
            await trio.sleep(ECHO_SECONDS / 4)
            conn.unmatched.clear()  # answers that came after their request gave up waiting
            if trio.current_time() - conn.last_used >= ECHO_SECONDS:
                conn.last_used = trio.current_time()
                if not await self._network(conn, "301"):
                    log.warning("api link: echo not answered; reconnecting")
                    nursery.cancel_scope.cancel()
                    return

    def _stan(self) -> str:
        return f"{next(self._stans) % 1_000_000 or 1:06d}"

    # -- requests ----------------------------------------------------------------------------------
    async def encode(self, msg: dict[str, Any]) -> bytes:
        """The frame body of ``msg`` as sent: with DE128 when the link has a ZAK."""
        codec = self._codec()
        if not self.keys.zak:
            return codec.encode(msg)
        raw = codec.encode({**msg, "128": bytes(8)})
        mac = await self.state.hsm.h2h_mac(self.keys.zak, codec.mac_block(raw))
        return codec.with_mac(raw, bytes.fromhex(mac[:16]))

    def _codec(self) -> Codec:
        return codec_for("h2h", self.keys.scheme)

    def _pick(self) -> _Conn:
        live = [c for c in self._conns if c.signed_on]
        if not live:
            raise LinkDown("no signed-on connection to the switch")
        return live[next(self._next) % len(live)]

    async def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Send ``msg`` (DE32 is set to the API's institution id) and return the switch's answer."""
        msg = {**msg, "32": self.institution_id}
        conn = self._pick()
        body = await self.encode(msg)
        key = match_key(msg)
        done = trio.Event()
        box: list[dict[str, Any]] = []
        conn._waiting[key] = (done, box)  # the pipelined client's table: the reader fills it
        try:
            try:
                await conn.send_raw(frame(body))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                # some of it may have left: the outcome is unknown (api.payments reverses it)
                raise LinkTimeout("the connection broke while sending") from None
            conn.last_used = trio.current_time()
            with trio.move_on_after(self.timeout):
                async with trio.open_nursery() as wait:
                    async def broken() -> None:
                        await conn.broken.wait()
                        wait.cancel_scope.cancel()

                    async def answered() -> None:
                        await done.wait()
                        wait.cancel_scope.cancel()

                    wait.start_soon(broken)
                    wait.start_soon(answered)
        finally:
            conn.forget(key)
        if not box:
            raise LinkTimeout("no answer from the switch in time")
        answer = box[0]
        if not await self._mac_ok(answer):
            raise LinkTimeout("the switch's answer does not carry a valid MAC")
        return answer

    async def _mac_ok(self, answer: dict[str, Any]) -> bool:
        if not self.keys.zak or answer.get("39") == "30":
            return True
        mac = answer.get("128")
        if not isinstance(mac, bytes):
            return False
        codec = self._codec()
        raw = codec.encode({**answer, "128": mac})
        try:
            ok: bool = await self.state.hsm.verify_h2h_mac(
                self.keys.zak, codec.mac_block(raw), mac.hex().upper())
        except Exception as exc:  # the HSM away: the answer cannot be trusted
            log.warning("api link: answer MAC not verified", error=type(exc).__name__)
            return False
        return ok


async def run(state: ApiState) -> None:
    """Background task: wait for the link's keys, run the link, rebuild it when the keys change."""
    while True:
        keys = await _poll_keys(state, None)
        link = SwitchLink(state, keys)
        state.link = link
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.run)
            await _poll_keys(state, keys)  # returns when the keys change
            nursery.cancel_scope.cancel()
        state.link = None


async def _poll_keys(state: ApiState, current: LinkKeys | None) -> LinkKeys:
    """The link's keys once they differ from ``current`` (are set at all, for None)."""
    while True:
        try:
            keys: LinkKeys | None = await state.pool.run(read_keys)
        except Exception as exc:  # the database away: try again
            log.warning("api link: keys not read", error=type(exc).__name__)
            keys = current
        if keys is not None and keys != current:
            return keys
        await trio.sleep(POLL_SECONDS)
