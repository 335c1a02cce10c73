"""`payswitch db`: the embedded PostgreSQL cluster and migrations."""

from __future__ import annotations

import asyncio

import click

from ops import migrate as migrate_mod
from ops.cli import AppContext, pass_app
from ops.db import connect, database_url, ensure_database
from ops.pgembed import EmbeddedPostgres


@click.group()
def db() -> None:
    """Embedded PostgreSQL (when PAYSWITCH_DATABASE_URL is not set) and schema migrations."""


def _cluster(app: AppContext) -> EmbeddedPostgres:
    if app.config.database.url:
        raise click.ClickException(
            "database.url / PAYSWITCH_DATABASE_URL is set: the embedded cluster is not used"
        )
    return EmbeddedPostgres(app.config.database.data_dir)


@db.command()
@pass_app
def up(app: AppContext) -> None:
    """Start the embedded cluster (creating it on first use); reuse it if already running."""
    cluster = _cluster(app)
    was_running = cluster.status().running
    status = cluster.up()
    asyncio.run(ensure_database(status.url("postgres"), app.config.database.name))
    url = status.url(app.config.database.name)
    verb = "already running" if was_running else "started"
    app.emit(
        {"running": True, "started": not was_running, "url": url, "data_dir": str(status.data_dir)},
        f"PostgreSQL {verb} on 127.0.0.1:{status.port} (data {status.data_dir})\n{url}",
    )
    if status.password is None:  # made before scram: every local user may connect as the superuser
        click.echo(
            f"warning: this cluster trusts every local connection (made before passwords); recreate it: "
            f"`payswitch db down`, remove {cluster.link} (its data goes), `payswitch db up`, migrate, seed",
            err=True,
        )


@db.command()
@pass_app
def down(app: AppContext) -> None:
    """Stop the embedded cluster (data is kept)."""
    _cluster(app).down()
    app.emit({"running": False}, "PostgreSQL stopped")


@db.command()
@pass_app
def url(app: AppContext) -> None:
    """Print the database URL services use."""
    value = database_url(app.config)
    app.emit({"url": value}, value)


@db.command()
@pass_app
def status(app: AppContext) -> None:
    """Show whether the database is reachable and which migrations are applied."""
    info: dict[str, object] = {}
    lines = []
    if not app.config.database.url:
        st = EmbeddedPostgres(app.config.database.data_dir).status()
        info["embedded"] = {"initialised": st.initialised, "running": st.running, "port": st.port,
                            "data_dir": str(st.data_dir)}
        state = "running" if st.running else ("stopped" if st.initialised else "not created")
        lines.append(f"embedded PostgreSQL: {state}" + (f" on 127.0.0.1:{st.port}" if st.running else ""))
        if not st.running:
            app.emit(info, "\n".join(lines))
            return
    states = asyncio.run(_migration_states(database_url(app.config)))
    info["migrations"] = [
        {"migration": s.migration.label, "applied": s.applied, "edited": s.edited} for s in states
    ]
    for s in states:
        mark = "EDITED" if s.edited else ("applied" if s.applied else "pending")
        lines.append(f"  {mark:<8} {s.migration.label}")
    pending = sum(not s.applied for s in states)
    lines.append(f"{len(states) - pending} applied, {pending} pending")
    app.emit(info, "\n".join(lines))


@db.command()
@pass_app
def migrate(app: AppContext) -> None:
    """Apply pending migrations in order, each in its own transaction."""
    applied = asyncio.run(migrate_mod.migrate_url(database_url(app.config)))
    app.emit(
        {"applied": [m.label for m in applied]},
        "\n".join(f"applied {m.label}" for m in applied) or "database is up to date",
    )


async def _migration_states(url: str) -> list[migrate_mod.MigrationState]:
    conn = await connect(url)
    try:
        return await migrate_mod.status(conn)
    finally:
        await conn.close()
