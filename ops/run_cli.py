"""`payswitch run`: the whole system on one machine for development and demos.

Brings up the database (embedded unless PAYSWITCH_DATABASE_URL is set), migrates, seeds the demo
programme when the host provides one, then starts each service as a child process, waits until each
listens, prints what runs where, and on Ctrl-C (or SIGTERM) stops them in reverse order.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from types import FrameType

import click

from ops import migrate as migrate_mod
from ops import processes
from ops.cli import COMMANDS, AppContext, pass_app
from ops.config import Config
from ops.db import database_url, ensure_database
from ops.pgembed import EmbeddedPostgres

TRY_NEXT = """
try next, in another shell:
  .venv/bin/payswitch pos purchase 12.34 --trace   # a terminal signs on and buys; every message traced
  .venv/bin/payswitch demo tour                    # every transaction type on both key profiles
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
    ]
    return [s for s in wanted if s.name in COMMANDS]


@click.command()
@click.option("--no-seed", is_flag=True, help="Do not seed the demo programme.")
@pass_app
def run(app: AppContext, no_seed: bool) -> None:
    """Start PostgreSQL, migrate, seed the demo, then run hsm_sim, host and switch until Ctrl-C."""
    config = app.config
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
        _child(("demo", "seed"), app).wait()

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
                    raise click.ClickException(f"{service.name} exited with status {proc.returncode}")
            time.sleep(0.2)
    finally:
        _stop_all(children)
        if cluster is not None and started_db:
            cluster.down()
            click.echo("PostgreSQL stopped")
    click.echo("stopped")


def _child(argv: tuple[str, ...], app: AppContext) -> subprocess.Popen[bytes]:
    prefix = [sys.executable, "-m", "ops"]
    if app.config_path:
        prefix += ["--config", app.config_path]
    # Children ignore the terminal's Ctrl-C: this supervisor stops them in order.
    return subprocess.Popen([*prefix, *argv], start_new_session=True)


def _await_port(service: Service, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    try:
        processes.wait_listening(service.ports[0][1], proc, what=service.name, timeout=timeout)
    except processes.NotListening as exc:
        raise click.ClickException(str(exc)) from None


def _stop_all(children: list[tuple[Service, subprocess.Popen[bytes]]]) -> None:
    for service, proc in reversed(children):
        if not processes.stop(proc, timeout=15):
            click.echo(f"{service.name} did not stop in 15 s; killed", err=True)
        click.echo(f"{service.name} stopped")
