"""The outbound link's DE128 made and checked many at a time (switch/links.py): requests queued in one
pass are signed in one HSM exchange by the connection's writer, the answers of one read checked in one
exchange by its reader; a failed or uncheckable MAC is still no answer, an unsigned request never leaves.
Against the real HSM and an issuer over a real socket that checks and makes the MACs with the clear ZAK."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from hsm_sim.client import HsmClient
from specs.codec import codec_for
from switch import metrics
from switch.hsm import ClientHsm
from switch.links import LinkConfig, LinkTimeout, NotSigned, OutboundLink
from switch.mapping import Message, transmission_time
from switch.upstream import KeyChangeGate
from tests.fixtures.hsm import HsmServer
from tests.switch.fake_host import FakeHost

ZAK_HEX = "0123456789ABCDEFFEDCBA9876543210"
ACQUIRER = "48880000"


def _purchase(stan: int) -> Message:
    return {
        "t": "0200",
        "2": "6212340000000000013",
        "3": "000000",
        "4": f"{100 + stan:012d}",
        "7": transmission_time(),
        "11": f"{stan:06d}",
        "32": ACQUIRER,
        "41": "TERM0001",
        "42": "MERCHANT0000001",
        "49": "156",
    }


class _Counted:
    """The batch MAC functions of a link over a real HSM, counting the exchanges made."""

    def __init__(self, hsm: KeyChangeGate, zak: str) -> None:
        self.hsm, self.zak = hsm, zak
        self.signed: list[int] = []
        self.checked: list[int] = []

    async def macs(self, data: list[bytes]) -> list[bytes | None]:
        self.signed.append(len(data))
        return await self.hsm.link_macs(self.zak, data)

    async def verifies(self, items: list[tuple[bytes, bytes]]) -> list[bool]:
        self.checked.append(len(items))
        return await self.hsm.verify_link_macs(self.zak, items)


@asynccontextmanager
async def _link(
    hsm_server: HsmServer, issuer: FakeHost, *, sign_port: int | None = None
) -> AsyncIterator[tuple[OutboundLink, _Counted]]:
    async with hsm_server.client() as client:
        zak = (await client.form_key("008", [ZAK_HEX, "0" * 32])).under_lmk
        gate = KeyChangeGate(ClientHsm(client))
        counted = _Counted(gate, zak)
        config = LinkConfig("mac-batch", "out", "127.0.0.1", issuer.port, 1, "", "3des", "U" + "0" * 32, zak)
        async with HsmClient("127.0.0.1", sign_port or hsm_server.port, timeout=1.0) as signer:
            signing = counted if sign_port is None else _Counted(KeyChangeGate(ClientHsm(signer)), zak)
            link = OutboundLink(
                config,
                codec_for("h2h", "3des"),
                ACQUIRER,
                mac=lambda data: gate.link_mac("3des", zak, data),
                verify=lambda data, mac: gate.verify_link_mac(zak, data, mac),
                macs=signing.macs,
                verifies=counted.verifies,
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(link.run)
                with trio.fail_after(10):
                    await link.up_event.wait()
                yield link, counted
                nursery.cancel_scope.cancel()


def _issuer() -> FakeHost:
    return FakeHost("3des", bytes(16), zak=bytes.fromhex(ZAK_HEX)).start()


def test_requests_of_one_pass_are_signed_and_their_answers_checked_in_few_exchanges(
    hsm_server: HsmServer,
) -> None:
    issuer = _issuer()

    async def main() -> None:
        async with _link(hsm_server, issuer) as (link, counted):
            answers: dict[str, Message] = {}

            async def one(stan: int) -> None:
                answers[f"{stan:06d}"] = await link.request(_purchase(stan), 5.0)

            async with trio.open_nursery() as nursery:
                for stan in range(1, 41):
                    nursery.start_soon(one, stan)
            assert sorted(answers) == [f"{s:06d}" for s in range(1, 41)]
            assert all(a["39"] == "00" and a["11"] == stan for stan, a in answers.items())
            assert sum(counted.signed) == 40 and len(counted.signed) < 40
            assert sum(counted.checked) == 40
            assert link.in_flight == 0

    try:
        trio.run(main)
        assert issuer.mac_failures == 0 and len(issuer.seen("0200")) == 40
    finally:
        issuer.stop()


def test_answers_whose_mac_fails_are_no_answer(hsm_server: HsmServer) -> None:
    issuer = _issuer()
    issuer.bad_answer_mac = True
    bad = metrics.LINK_BAD_FRAMES.labels(link="mac-batch")

    async def main() -> None:
        async with _link(hsm_server, issuer) as (link, _):
            before = bad._value.get()
            failed: list[str] = []

            async def one(stan: int) -> None:
                try:
                    await link.request(_purchase(stan), 5.0)
                except LinkTimeout as exc:
                    failed.append(str(exc))

            async with trio.open_nursery() as nursery:
                for stan in range(1, 11):
                    nursery.start_soon(one, stan)
            assert len(failed) == 10 and all("MAC verification" in f for f in failed)
            assert bad._value.get() - before == 10

    try:
        trio.run(main)
        assert issuer.mac_failures == 0  # the requests themselves were signed right
    finally:
        issuer.stop()


def test_a_request_that_cannot_be_signed_is_never_sent(hsm_server: HsmServer) -> None:
    issuer = _issuer()
    listeners: list[trio.SocketListener] = []

    async def main() -> None:
        # an address where nothing answers: the signing HSM is unreachable
        listeners.extend(await trio.open_tcp_listeners(0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        await listeners[0].aclose()
        async with _link(hsm_server, issuer, sign_port=port) as (link, _):
            for stan in (1, 2):
                with pytest.raises(NotSigned):
                    await link.request(_purchase(stan), 5.0)
            assert link.in_flight == 0

    try:
        trio.run(main)
        assert issuer.seen("0200") == []
    finally:
        issuer.stop()
