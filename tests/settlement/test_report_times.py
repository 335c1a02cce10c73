"""Settlement reports show the run's time in the programme's zone with its offset, and the business
dates a payout covers (issue 15 item 5)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from settlement.reports import StoreLine, _totals, merchant_html, write_run_outputs
from tests.settlement.db import db


def test_the_merchant_page_shows_the_run_time_local_with_offset(db_url: str, tmp_path: Path) -> None:
    async def make_run(c: Any) -> int:
        run_id = await c.fetchval(
            "INSERT INTO settlement_runs (as_of, started_at) VALUES ('2026-12-02', $1) RETURNING id",
            datetime(2026, 12, 2, 10, 30, 5, tzinfo=UTC),
        )
        await c.execute(
            "INSERT INTO settlement_payouts (run_id, merchant_id, payout_account, reference, gross, fee, net,"
            " first_business_date, last_business_date)"
            " VALUES ($1, 'TZM', 'ACC-1', 'TZREF1', 1000, 10, 990, '2026-12-01', '2026-12-01')",
            run_id,
        )
        return int(run_id)

    run_id = db(db_url, make_run)
    db(db_url, lambda c: write_run_outputs(c, run_id, tmp_path, timezone="Asia/Shanghai"))
    page = (tmp_path / f"run_{run_id}" / "merchant_TZM.html").read_text()
    assert f"Settlement run {run_id} of 2026-12-02 18:30:05 +08:00." in page
    assert "value date 2026-12-02" in page


def test_the_merchant_page_names_the_business_dates_paid() -> None:
    lines = [StoreLine("M", "S1", d, 1, 100, 0, 0, 1) for d in ("2026-12-01", "2026-12-02")]
    payout = {"reference": "R", "merchant_id": "M", "payout_account": "A", "run_id": 7}
    page = merchant_html(payout, "2026-12-03", lines, _totals("M", "TOTAL", lines), ran="x")
    assert "Business dates 2026-12-01 to 2026-12-02." in page
    one = merchant_html(payout, "2026-12-03", lines[:1], _totals("M", "TOTAL", lines[:1]))
    assert "Business date 2026-12-01." in one and "Settlement run" not in one
