"""Numbered SQL migrations, applied in order, each in its own transaction, recorded with a checksum.

Each component owns its tables and keeps its migrations in ``<package>/migrations/NNNN_name.sql``;
components are applied in the order of COMPONENTS (a later one may refer to an earlier one's tables).
A migration already applied whose file has changed since is refused: history is append-only, so the
fix is a new migration.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from ops.db import connect

COMPONENTS = ("ops", "host", "switch", "settlement", "api", "console")
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_ID = 0x7061_7973  # "pays": one migrator at a time across processes

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS payswitch_migrations (
    component  text        NOT NULL,
    version    integer     NOT NULL,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (component, version)
)
"""


class MigrationError(Exception):
    """A migration cannot be applied or an applied one was edited; str() says which and why."""


@dataclass(frozen=True)
class Migration:
    component: str
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.component}/{self.version:04d}_{self.name}.sql"


@dataclass(frozen=True)
class MigrationState:
    migration: Migration
    applied: bool
    edited: bool


def discover(components: tuple[str, ...] = COMPONENTS) -> list[Migration]:
    found: list[Migration] = []
    for component in components:
        folder = resources.files(component).joinpath("migrations")
        if not folder.is_dir():
            continue
        versions: set[int] = set()
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            if not entry.name.endswith(".sql"):
                continue
            match = _NAME.match(entry.name)
            if match is None:
                raise MigrationError(f"{component}/migrations/{entry.name}: name must be NNNN_lower_name.sql")
            version = int(match.group(1))
            if version in versions:
                raise MigrationError(f"{component}/migrations: two migrations numbered {version:04d}")
            versions.add(version)
            found.append(Migration(component, version, match.group(2), entry.read_text()))
    return found


async def status(conn: Any, migrations: list[Migration] | None = None) -> list[MigrationState]:
    migrations = discover() if migrations is None else migrations
    await conn.execute(_BOOKKEEPING)
    applied = {
        (r["component"], r["version"]): r["checksum"]
        for r in await conn.fetch("SELECT component, version, checksum FROM payswitch_migrations")
    }
    return [
        MigrationState(
            m,
            applied=(m.component, m.version) in applied,
            edited=(m.component, m.version) in applied and applied[(m.component, m.version)] != m.checksum,
        )
        for m in migrations
    ]


async def migrate(conn: Any, migrations: list[Migration] | None = None) -> list[Migration]:
    """Apply every pending migration; return those applied. Refuses if an applied one was edited."""
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
    try:
        states = await status(conn, migrations)
        edited = [s.migration.label for s in states if s.edited]
        if edited:
            raise MigrationError(
                f"already-applied migration edited: {', '.join(edited)} (its checksum changed); "
                "restore the file and add a new migration instead"
            )
        done = []
        for state in states:
            if state.applied:
                continue
            m = state.migration
            try:
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        "INSERT INTO payswitch_migrations (component, version, name, checksum) "
                        "VALUES ($1, $2, $3, $4)",
                        m.component, m.version, m.name, m.checksum,
                    )
            except Exception as exc:  # asyncpg raises many types; report which file failed
                raise MigrationError(f"{m.label} failed and was rolled back: {exc}") from exc
            done.append(m)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)


async def migrate_url(url: str) -> list[Migration]:
    """Connect to ``url``, apply pending migrations, disconnect."""
    conn = await connect(url)
    try:
        return await migrate(conn)
    finally:
        await conn.close()
