from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path

import asyncpg
import pytest

from ops.pgembed import EmbeddedPostgres, EmbeddedPostgresError, Status


def test_session_cluster_is_running_and_reachable(pg_cluster: Status) -> None:
    assert pg_cluster.running and pg_cluster.port

    async def ping() -> int:
        conn = await asyncpg.connect(pg_cluster.url("postgres"))
        try:
            value: int = await conn.fetchval("SELECT 1")
            return value
        finally:
            await conn.close()

    assert asyncio.run(ping()) == 1


def test_up_is_idempotent_and_down_keeps_data(tmp_path: Path) -> None:
    cluster = EmbeddedPostgres(tmp_path / "pg", durable=False)
    try:
        first = cluster.up()
        again = cluster.up()
        assert again.running and again.port == first.port
        data = cluster.data_dir
        assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
        if os.geteuid() == 0:  # the server runs as an unprivileged user in a folder it owns
            assert (tmp_path / "pg").is_symlink()
            assert os.stat(data).st_uid != 0
        stopped = cluster.down()
        assert not stopped.running and stopped.initialised
        restarted = cluster.up()
        assert restarted.running
    finally:
        cluster.destroy()
    assert not cluster.status().initialised


def test_free_port_is_below_the_ephemeral_range() -> None:
    """A port from the ephemeral range may become an outgoing connection's source port before its
    service binds it (the switch connects to its hosts before it listens)."""
    from ops.pgembed import _ephemeral_low, free_port

    low = _ephemeral_low()
    ports = {free_port() for _ in range(20)}
    if low > 21000:
        assert all(p < low for p in ports), (low, ports)
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


@pytest.mark.skipif(os.geteuid() != 0, reason="only root's clusters live outside the checkout")
def test_a_cluster_left_by_an_earlier_checkout_at_the_same_path_is_replaced(tmp_path: Path) -> None:
    """As root the data lives in /var/tmp under a name made from the checkout's path; a new clone at
    the path of a deleted one (var/ gone, the old cluster stopped) must still get a cluster of its own,
    but one whose server still runs is refused with a clear message."""
    link = tmp_path / "checkout" / "var" / "pg"
    old = EmbeddedPostgres(link, durable=False)
    try:
        old.up()
        stale = old.data_dir
        new = EmbeddedPostgres(link, durable=False)
        link.unlink()  # the checkout deleted and cloned again, its server still running
        with pytest.raises(EmbeddedPostgresError, match="still served by PostgreSQL"):
            new.up()
        link.unlink(missing_ok=True)
        link.symlink_to(stale)
        old.down()
        link.unlink()  # and now stopped
        assert new.up().running and new.data_dir == stale
    finally:
        new.destroy()
        old.destroy()


def test_no_connection_without_the_generated_password(pg_cluster: Status) -> None:
    """trust let any local user connect as the superuser; now scram on the socket and on TCP."""
    assert pg_cluster.password and pg_cluster.password in pg_cluster.url("postgres")
    password_file = pg_cluster.data_dir.parent / "pg.password"
    if password_file.exists():  # beside the data folder when not run as root
        assert stat.S_IMODE(os.stat(password_file).st_mode) == 0o600

    async def attempt(**kwargs: object) -> str:
        try:
            conn = await asyncpg.connect(
                user="payswitch", database="postgres", port=pg_cluster.port, **kwargs
            )
        except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
            return type(exc).__name__
        await conn.close()
        return "connected"

    async def main() -> list[str]:
        return [
            await attempt(host="127.0.0.1", password=""),
            await attempt(host="127.0.0.1", password="guess"),
            await attempt(host=str(pg_cluster.data_dir), password="guess"),
            await attempt(host="127.0.0.1", password=pg_cluster.password),
        ]

    refused_tcp, wrong_tcp, wrong_socket, right = asyncio.run(main())
    assert "connected" not in (refused_tcp, wrong_tcp, wrong_socket) and right == "connected"


def test_free_port_never_hands_one_port_out_twice() -> None:
    """Free ports drawn for several listeners before any binds must differ: two draws of one port made
    the configuration refuse two listeners on it (a flake of tests/ops/test_no_traceback.py)."""
    from ops import pgembed

    drawn = [pgembed.free_port() for _ in range(300)]
    assert len(set(drawn)) == len(drawn)
