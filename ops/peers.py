"""Who is at the other end of a connection: the one test of "loopback peer" that the host and the
switch apply to a link declared without a MAC key (anyone who can reach a port can claim any DE32, so
an unauthenticated link is only trusted from the same machine unless the config says otherwise)."""

from __future__ import annotations

import ipaddress
from typing import Any


def is_loopback(address: Any) -> bool:
    """Whether a socket peer address (``getpeername()``: a (host, port, ...) tuple) is loopback; an IPv4
    address mapped into IPv6 (``::ffff:127.0.0.1``) counts as its IPv4 form. Anything unreadable is not."""
    host = address[0] if isinstance(address, tuple) and address else address
    try:
        ip = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def peer_is_loopback(stream: Any) -> bool:
    """Whether a trio socket stream's peer is loopback (False once the socket is gone)."""
    try:
        return is_loopback(stream.socket.getpeername())
    except (OSError, AttributeError):
        return False
