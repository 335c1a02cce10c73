"""Who may send without a MAC (ops.peers): the one rule of the host and of the switch's inbound port,
and the loopback test it relies on. Table-driven; a remote peer is a socket stand-in here (its address
is all the rule reads), so no test sends traffic to an address off loopback."""

from __future__ import annotations

from typing import Any

import pytest

from ops.peers import is_loopback, link_refusal, peer_is_loopback


class _Socket:
    def __init__(self, peer: Any) -> None:
        self.peer = peer

    def getpeername(self) -> Any:
        if isinstance(self.peer, Exception):
            raise self.peer
        return self.peer


class _Stream:
    def __init__(self, peer: Any) -> None:
        self.socket = _Socket(peer)


@pytest.mark.parametrize(
    ("peer", "loopback"),
    [
        (("127.0.0.1", 5000), True),
        (("127.8.9.1", 5000), True),
        (("::1", 5000, 0, 0), True),
        (("::ffff:127.0.0.1", 5000, 0, 0), True),
        (("192.0.2.2", 5000), False),
        (("10.0.0.7", 5000), False),
        (("2001:db8::1", 5000, 0, 0), False),
        (("::ffff:192.0.2.2", 5000, 0, 0), False),
        (("not an address", 1), False),
        (OSError("gone"), False),
    ],
)
def test_peer_is_loopback(peer: Any, loopback: bool) -> None:
    assert peer_is_loopback(_Stream(peer)) is loopback
    if not isinstance(peer, Exception):
        assert is_loopback(peer) is loopback


@pytest.mark.parametrize(
    ("known", "zak", "no_mac", "allow", "loopback", "refusal"),
    [
        (False, False, False, False, True, "unknown"),
        (False, True, True, True, True, "unknown"),
        (True, True, False, False, False, None),  # MACed: from anywhere, DE128 checked per request
        (True, False, False, False, True, "undeclared"),
        (True, False, False, True, True, "undeclared"),  # allow_remote does not declare it
        (True, False, True, False, True, None),
        (True, False, True, False, False, "remote_no_mac"),
        (True, False, True, True, False, None),
    ],
)
def test_link_refusal(
    known: bool, zak: bool, no_mac: bool, allow: bool, loopback: bool, refusal: str | None
) -> None:
    asked: list[bool] = []

    def peer() -> bool:
        asked.append(True)
        return loopback

    assert link_refusal(known, zak, no_mac, allow, peer) == refusal
    assert not asked or (known and not zak and no_mac and not allow)  # the socket only when it matters
