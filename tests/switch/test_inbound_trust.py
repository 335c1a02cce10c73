"""Who may send on the switch's inbound H2H port (issue 14, defect 1): an ``in`` link with a ZAK, or one
declared ``--no-mac`` and then only from loopback (unless ``switch.allow_remote_no_mac``); an unknown
DE32 or an undeclared link without a ZAK is answered 03, 0800 included, and nothing goes upstream."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from specs.codec import codec_for
from specs.framing import frame
from switch.links import split_frames
from tests.fixtures.hsm import HsmServer
from tests.fixtures.pg import query
from tests.fixtures.services import base_env, run_cli, start_switch
from tests.switch.fake_host import FakeHost
from tests.switch.test_pos_e2e import PAN3, ZPK3_HEX, wait_until

PLAIN = "22220001"  # declared --no-mac
UNDECLARED = "22220002"  # no ZAK, no declaration (a row from before the declaration existed)
STRANGER = "22229999"  # no link


@pytest.fixture(scope="module")
def world(db_url: str, hsm_server: HsmServer) -> Iterator[dict[str, Any]]:
    async def zpk() -> str:
        async with hsm_server.client() as h:
            return (await h.form_key("001", [ZPK3_HEX, "0" * 32])).under_lmk

    key = trio.run(zpk)
    issuer = FakeHost("3des", bytes.fromhex(ZPK3_HEX)).start()
    env = base_env(db_url, hsm_server)
    for args in (
        ["switch", "link", "add", "issuer", "--host", "127.0.0.1", "--port", str(issuer.port),
         "--scheme", "3des", "--zpk", key, "--connections", "1"],
        ["switch", "route", "add", PAN3[:6], "--link", "issuer"],
        ["switch", "link", "add", "plain", "--direction", "in", "--institution-id", PLAIN,
         "--scheme", "3des", "--zpk", key, "--no-mac"],
    ):
        result = run_cli(args, env)
        assert result.returncode == 0, result.stderr
    query(
        db_url,
        "INSERT INTO switch_links (name, direction, host, port, connections, institution_id, scheme, zpk) "
        "VALUES ('undeclared', 'in', '', 0, 1, $1, '3des', $2)",
        UNDECLARED,
        key,
    )
    switch = start_switch(db_url, hsm_server, request_timeout_ms=2000)
    wait_until(lambda: len(issuer.seen("0800")) >= 1, what="link sign-on")
    try:
        yield {"switch": switch, "issuer": issuer, "env": env}
    finally:
        issuer.stop()
        assert switch.stop() == 0, switch.log()[-3000:]


def _exchange(address: str, port: int, msg: dict[str, Any]) -> dict[str, Any]:
    codec = codec_for("h2h", "3des")
    with socket.create_connection((address, port), timeout=10) as s:
        s.sendall(frame(codec.encode(msg)))
        buf = bytearray()
        while not (frames := split_frames(buf, 8192)):
            data = s.recv(8192)
            assert data, "connection closed"
            buf += data
    return codec.decode(frames[0])


_stan = iter(range(800_001, 900_000))


def _top_up(acquirer: str) -> dict[str, Any]:
    stan = f"{next(_stan):06d}"
    return {
        "t": "0200", "2": PAN3, "3": "210000", "4": "000000005000",
        "7": time.strftime("%m%d%H%M%S", time.gmtime()), "11": stan, "12": "101010", "13": "1125",
        "22": "011", "25": "00", "32": acquirer, "37": f"53301{stan}0", "41": "ACQT0001",
        "42": "ACQMERCHANT0001", "49": "156",
    }


def _echo(acquirer: str) -> dict[str, Any]:
    stan = f"{next(_stan):06d}"
    return {"t": "0800", "7": time.strftime("%m%d%H%M%S", time.gmtime()), "11": stan, "32": acquirer,
            "70": "301"}


def test_unknown_and_undeclared_links_are_answered_03_and_nothing_goes_upstream(
    world: dict[str, Any],
) -> None:
    port = world["switch"].ports["h2h"]
    issuer: FakeHost = world["issuer"]
    before = len(issuer.seen("0200"))
    for acquirer in (STRANGER, UNDECLARED):
        assert _exchange("127.0.0.1", port, _top_up(acquirer))["39"] == "03"
        assert _exchange("127.0.0.1", port, _echo(acquirer))["39"] == "03"
    assert len(issuer.seen("0200")) == before
    # the declared no-MAC link, from loopback: served
    assert _exchange("127.0.0.1", port, _echo(PLAIN))["39"] == "00"
    assert _exchange("127.0.0.1", port, _top_up(PLAIN))["39"] == "00"
    assert len(issuer.seen("0200")) == before + 1


def test_declared_link_is_listed_without_mac(world: dict[str, Any]) -> None:
    """(A remote peer's 03 is ops.peers.link_refusal's, tested there: no test sends off loopback.)"""
    listing = run_cli(["switch", "link", "list"], world["env"])
    assert listing.returncode == 0 and " off " in listing.stdout  # the declared link shows no MAC


def test_link_add_refusals(world: dict[str, Any]) -> None:
    env = world["env"]
    zpk = "U" + "0123456789ABCDEF" * 2
    base = ["switch", "link", "add", "x", "--scheme", "3des", "--zpk", zpk]
    inbound = [*base, "--direction", "in", "--institution-id", "33330001"]
    for args, words in (
        (inbound, ("--zak", "--no-mac")),
        ([*inbound, "--no-mac", "--zak", zpk], ("--zak", "--no-mac")),
        ([*base, "--host", "127.0.0.1", "--port", "9", "--no-mac"], ("--no-mac",)),
    ):
        result = run_cli(args, env)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        line = result.stderr.strip()
        assert len(line.splitlines()) == 1 and all(w in line for w in words), line
