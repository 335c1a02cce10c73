"""`payswitch run`: the whole system on one machine for development and demos.

Brings up the database (embedded unless PAYSWITCH_DATABASE_URL is set), migrates, seeds the demo
programme when the host provides one, then starts each service as a child process, waits until each
listens, prints what runs where, and on Ctrl-C (or SIGTERM) stops them in reverse order.

Before anything starts: one run per working folder (``var/run.lock``, ops/runlock.py), and every port
it would open must be free, else one line says which is taken and by which key. A child that dies is
named with the last line it printed (its error).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import IO

import click

from ops import migrate as migrate_mod
from ops import processes, runlock
from ops.cli import COMMANDS, AppContext, pass_app
from ops.config import Config, listeners
from ops.db import database_url, ensure_database
from ops.listening import cannot_listen, free
from ops.localtime import format_local
from ops.pgembed import EmbeddedPostgres

TRY_NEXT = """
try next, in another shell:
  .venv/bin/payswitch pos purchase 12.34 --trace   # a terminal signs on and buys; every message traced
  .venv/bin/payswitch demo tour                    # every transaction type, then the day's payout
  .venv/bin/payswitch load -d 10                   # many terminals flat out, then a ledger check
"""


@dataclass(frozen=True)
class Service:
    name: str
    argv: tuple[str, ...]
    ports: tuple[tuple[str, int], ...]  # (what, port): the first one is awaited before going on


def services(config: Config) -> list[Service]:
    """Services in start order; only those whose command exists in this build."""
    wanted = [
        Service("hsm", ("hsm", "serve"), (("HSM commands", config.hsm.port),
                                          ("metrics", config.hsm.metrics_port))),
        Service("host", ("host", "serve"), (("H2H", config.host.port),
                                            ("metrics", config.host.metrics_port))),
        Service("switch", ("switch", "serve"), (
            ("POS 3des", config.switch.pos_3des_port), ("POS sm4", config.switch.pos_sm4_port),
            ("H2H acquirers", config.switch.h2h_port), ("metrics", config.switch.metrics_port))),
        Service("api", ("api", "serve"), (("HTTP API", config.api.port),
                                          ("metrics", config.api.metrics_port))),
    ]
    return [s for s in wanted if s.name in COMMANDS]


@click.command()
@click.option("--no-seed", is_flag=True, help="Do not seed the demo programme.")
@pass_app
def run(app: AppContext, no_seed: bool) -> None:
    """Start PostgreSQL, migrate, seed the demo, then run hsm_sim, host, switch and the API until Ctrl-C.

    Refused (one line, exit 1) while another `payswitch run` runs from this folder, or when a port it
    would open is taken."""
    config = app.config
    lock = _lock(config)
    try:
        _check_ports(config)
        _run(app, config, no_seed)
    finally:
        lock.release()


def _lock(config: Config) -> runlock.RunLock:
    try:
        return runlock.acquire()
    except runlock.AlreadyRunning as held:
        if held.pid is None or held.started is None:  # between its flock and writing who it is
            raise click.ClickException(
                f"payswitch run is already starting here (lock {runlock.DEFAULT_PATH}); stop it with Ctrl-C"
            ) from None
        started = format_local(datetime.fromtimestamp(held.started, UTC), config.clearing.timezone)
        raise click.ClickException(
            f"payswitch run is already running (pid {held.pid}, started {started}); "
            f"stop it with Ctrl-C or kill {held.pid}"
        ) from None
    except OSError as exc:
        raise click.ClickException(
            f"cannot take the run lock {runlock.DEFAULT_PATH}: {exc.strerror} (run from a writable folder)"
        ) from None


def _check_ports(config: Config) -> None:
    """Every listener of the services run starts must be free now: a clear refusal instead of a child
    that dies at start."""
    started = {s.name for s in services(config)}
    taken = []
    for one in listeners(config):
        service = one.port_key.split(".")[0]
        if service in started and (error := free(one.address, one.port)) is not None:
            taken.append(str(cannot_listen(service, one.address, one.port, one.port_key, error)))
    if taken:
        raise click.ClickException("; ".join(taken))


def _run(app: AppContext, config: Config, no_seed: bool) -> None:
    cluster = None
    started_db = False
    if not config.database.url:
        cluster = EmbeddedPostgres(config.database.data_dir)
        started_db = not cluster.status().running
        status = cluster.up()
        asyncio.run(ensure_database(status.url("postgres"), config.database.name))
        click.echo(f"PostgreSQL      127.0.0.1:{status.port}  (embedded, data {status.data_dir})")
    url = database_url(config)
    applied = asyncio.run(migrate_mod.migrate_url(url))
    click.echo(f"migrations      {len(applied)} applied" if applied else "migrations      up to date")
    if not no_seed and "demo" in COMMANDS:
        seed = _child(("demo", "seed"), app)
        if seed.wait() != 0:
            raise click.ClickException(f"demo seed exited with status {seed.returncode}: {_last_line(seed)}")

    children: list[tuple[Service, subprocess.Popen[bytes]]] = []
    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    # Both signals stop the system in order; SIGINT is set explicitly because a shell may start us
    # with it ignored (background jobs), and Ctrl-C must still work.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for service in services(config):
            proc = _child(service.argv, app)
            children.append((service, proc))
            _await_port(service, proc)
            for what, port in service.ports:
                if port:
                    click.echo(f"{service.name:<7} {what:<14} 127.0.0.1:{port}")
        if "pos" in COMMANDS:
            click.echo(TRY_NEXT)
        click.echo("running; press Ctrl-C to stop")
        while not stopping:
            for service, proc in children:
                if proc.poll() is not None:
                    raise click.ClickException(
                        f"{service.name} exited with status {proc.returncode}: {_last_line(proc)}"
                    )
            time.sleep(0.2)
    finally:
        _stop_all(children)
        if cluster is not None and started_db:
            cluster.down()
            click.echo("PostgreSQL stopped")
    click.echo("stopped")


_LAST_LINES: dict[int, str] = {}  # pid -> the last line the child wrote to stderr
_RELAYS: dict[int, threading.Thread] = {}


def _child(argv: tuple[str, ...], app: AppContext) -> subprocess.Popen[bytes]:
    prefix = [sys.executable, "-m", "ops"]
    if app.config_path:
        prefix += ["--config", app.config_path]
    # Children ignore the terminal's Ctrl-C: this supervisor stops them in order. Their stderr passes
    # through a thread that keeps the last line, so a child that dies is named with its own error.
    proc = subprocess.Popen([*prefix, *argv], start_new_session=True, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    relay = threading.Thread(target=_relay, args=(proc.pid, proc.stderr), daemon=True)
    relay.start()
    _RELAYS[proc.pid] = relay
    return proc


def _relay(pid: int, stream: IO[bytes]) -> None:
    for raw in stream:
        sys.stderr.buffer.write(raw)
        sys.stderr.buffer.flush()
        if raw.strip():
            _LAST_LINES[pid] = raw.decode(errors="replace").strip()


def _last_line(proc: subprocess.Popen[bytes]) -> str:
    """What the exited child said last (its error line), once its stderr is drained."""
    _RELAYS[proc.pid].join(timeout=2.0)  # the pipe ends when the child (and anything it started) has gone
    return _LAST_LINES.get(proc.pid, "it printed nothing")


def _await_port(service: Service, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    try:
        processes.wait_listening(service.ports[0][1], proc, what=service.name, timeout=timeout)
    except processes.NotListening as exc:
        said = f": {_last_line(proc)}" if proc.poll() is not None else ""
        raise click.ClickException(f"{exc}{said}") from None


def _stop_all(children: list[tuple[Service, subprocess.Popen[bytes]]]) -> None:
    for service, proc in reversed(children):
        if not processes.stop(proc, timeout=15):
            click.echo(f"{service.name} did not stop in 15 s; killed", err=True)
        click.echo(f"{service.name} stopped")
