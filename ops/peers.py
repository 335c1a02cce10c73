"""Who is at the other end of a connection: the one test of "loopback peer" that the host and the
switch apply to a link declared without a MAC key (anyone who can reach a port can claim any DE32, so
an unauthenticated link is only trusted from the same machine unless the config says otherwise)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
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


def link_refusal(
    known: bool, has_zak: bool, no_mac: bool, allow_remote: bool, loopback: Callable[[], bool]
) -> str | None:
    """Why a link may not send on a connection, None when it may; the one rule of the host and of the
    switch's inbound port (host/README.md "Links", switch/README.md "Inbound links"):

    - ``unknown``: no link row for the DE33/DE32 it names;
    - ``undeclared``: a row with neither a ZAK nor the ``--no-mac`` declaration;
    - ``remote_no_mac``: declared ``--no-mac`` but the peer is not loopback and the config
      (``*.allow_remote_no_mac``) does not allow it.

    A MACed link may send; its DE128 is checked per request. ``loopback`` is asked last and only for a
    no-MAC link (the host caches its answer per connection)."""
    if not known:
        return "unknown"
    if has_zak:
        return None
    if not no_mac:
        return "undeclared"
    return None if allow_remote or loopback() else "remote_no_mac"
