"""The automatic clearing emit of `host serve`: files for closed business dates, written after the cut-over,
with the clock driven by the test (no sleeping)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trio

from host import clearing_task
from host.catalog import ProductSpec, add_product
from host.ledger import SERVER_SETTINGS
from ops import config as config_mod
from ops.pgpool import PgPool
from specs.clearing import read_file
from tests.settlement.db import db


async def _programme_since_november(conn: Any) -> None:
    await add_product(conn, ProductSpec("AUTOEMIT", "reloadable", pin_required=False), "623498", 16)
    await conn.execute("UPDATE products SET created_at = '2026-11-01T00:00:00Z' WHERE code = 'AUTOEMIT'")


def test_auto_emit_writes_each_closed_day_after_the_cutover(db_url: str, tmp_path: Path) -> None:
    cfg = config_mod.defaults()
    cfg = dataclasses.replace(cfg, clearing=dataclasses.replace(
        cfg.clearing, directory=str(tmp_path), cutover="23:00", timezone="Asia/Shanghai", lookback_days=2))
    clock = [datetime(2026, 11, 12, 14, 30, tzinfo=UTC)]  # 22:30 in Shanghai: 2026-11-12 still open
    db(db_url, _programme_since_november)  # no file is written for a date before the programme
    slept: list[float] = []
    files: list[list[str]] = []

    async def main() -> None:
        with PgPool(db_url, min_size=1, max_size=2, role="payswitch_app",
                    server_settings=SERVER_SETTINGS) as pool, trio.CancelScope() as scope:

            async def sleep(seconds: float) -> None:
                files.append(sorted(p.name for p in tmp_path.glob("CLR_*.txt")))
                slept.append(seconds)
                if len(slept) == 3:
                    scope.cancel()
                clock[0] += timedelta(seconds=seconds)
                await trio.lowlevel.checkpoint()

            await clearing_task.run(pool, cfg, clock=lambda: clock[0], sleep=sleep)

    trio.run(main)
    # at start: the two closed dates; then it wakes a minute after 23:00 and writes the 12th; then hourly
    assert files[0] == ["CLR_48880000_20261110_01.txt", "CLR_48880000_20261111_01.txt"]
    assert slept[0] == 30 * 60 + clearing_task.GRACE_SECONDS
    assert files[1] == [*files[0], "CLR_48880000_20261112_01.txt"]
    assert slept[1] == clearing_task.RECHECK_SECONDS
    assert files[2] == files[1]
    header, details, trailer = read_file(tmp_path / "CLR_48880000_20261112_01.txt")
    assert header.business_date.isoformat() == "2026-11-12" and details == [] and trailer.count == 0


def test_a_day_is_closed_a_grace_after_its_cutover() -> None:
    grace = clearing_task.GRACE_SECONDS
    at = datetime(2026, 11, 12, 15, 0, 0, tzinfo=UTC)  # 23:00 in Shanghai

    def wait(now: datetime) -> float:
        return clearing_task.seconds_to_next_emit(now, "23:00", "Asia/Shanghai")

    assert wait(at - timedelta(seconds=10)) == 10 + grace
    assert wait(at + timedelta(seconds=10)) == grace - 10
    assert wait(at + timedelta(seconds=grace)) == 24 * 3600
