"""A listener that cannot open is one line for the operator, naming the address, the port and the key
that sets it (``CannotListen``); ``free`` asks beforehand whether a port can be bound (`payswitch run`
checks every listener before starting anything).

The services raise ``CannotListen`` where they bind, so the entry point (ops/cli.py) prints it as it
prints a configuration error; an OSError anywhere else stays what it is.
"""

from __future__ import annotations

import errno
import socket


class CannotListen(Exception):
    """A listener that could not be opened; str() is one line naming what and where."""


def cannot_listen(service: str, address: str, port: int, key: str, exc: OSError) -> CannotListen:
    """The one-line error for ``exc`` raised binding ``address:port`` (set by config ``key``)."""
    if exc.errno == errno.EADDRINUSE:
        why = f"the address is in use by another program (stop it, or change {key})"
    elif exc.errno == errno.EADDRNOTAVAIL:
        why = f"{address} is not an address of this machine (change {address_key(key)})"
    elif exc.errno == errno.EACCES:
        why = f"not allowed to bind port {port} (ports below 1024 need privileges; change {key})"
    elif isinstance(exc, socket.gaierror):
        why = f"cannot resolve {address!r} ({exc.strerror})"
    else:
        why = exc.strerror or str(exc)
    return CannotListen(f"{service} cannot listen on {address}:{port} ({key}): {why}")


def address_key(port_key: str) -> str:
    """The key of the address a port key's listener binds: host.port -> host.listen,
    switch.metrics_port -> switch.metrics_listen."""
    section, _, name = port_key.partition(".")
    return f"{section}.metrics_listen" if name == "metrics_port" else f"{section}.listen"


def free(address: str, port: int) -> OSError | None:
    """None when ``address:port`` can be bound now (it is released at once), else the error binding it."""
    try:
        infos = socket.getaddrinfo(address or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return exc
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # As the services bind (trio and http.server set SO_REUSEADDR): a port in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            return exc
    return None
