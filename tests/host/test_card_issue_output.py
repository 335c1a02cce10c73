"""`card issue` shows in words what its help promises: each full PAN once, and that it is never shown again
(issue 15, item 8). The database keeps only the encrypted PAN and its hash."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import asyncpg
import pytest

from tests.host.helpers import cli_env, ok, run


@pytest.fixture(scope="module")
def env(db_url: str, hsm_server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return cli_env(tmp_path_factory.mktemp("issueout"), db_url, hsm_server.env)


def _luhn_ok(pan: str) -> bool:
    digits = [int(d) for d in reversed(pan)]
    return sum(d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(digits)) % 10 == 0


async def _card_rows(db_url: str) -> str:
    conn = await asyncpg.connect(db_url)
    try:
        return " ".join(r[0] for r in await conn.fetch("SELECT row_to_json(c)::text FROM cards c"))
    finally:
        await conn.close()


def test_human_output_prints_each_pan_once_and_says_so(env: dict[str, str], db_url: str) -> None:
    ok(env, "product", "add", "ISSUEOUT", "--kind", "reloadable", "--bin", "621277", "--no-pin")
    result = run(env, "card", "issue", "--product", "ISSUEOUT", "--count", "3")
    assert result.exit_code == 0, result.output
    pans = re.findall(r"\b621277\d{13}\b", result.output)
    assert len(pans) == 3 and len(set(pans)) == 3, result.output  # each once, in full
    assert all(_luhn_ok(p) for p in pans)
    assert "never again" in result.output and "3 cards issued (inventory)" in result.output

    # they are the issued cards, and from now on only their masked form is shown or stored
    for pan in pans:
        shown = run(env, "card", "show", pan)
        assert shown.exit_code == 0 and pan not in shown.output, shown.output
        assert ok(env, "card", "show", pan)["pan_masked"] == pan[:6] + "*" * 9 + pan[-4:]
    stored = asyncio.run(_card_rows(db_url))
    assert not any(pan in stored for pan in pans)


def test_json_output_is_unchanged(env: dict[str, str]) -> None:
    issued = ok(env, "card", "issue", "--product", "ISSUEOUT", "--count", "1")
    (card,) = issued["cards"]
    assert re.fullmatch(r"621277\d{13}", card["pan"]) and set(card) >= {"card_id", "pan", "expiry"}


def test_the_validity_counts_from_the_programmes_business_date(db_url: str, hsm_server: Any) -> None:
    """On the last evening of a month in Shanghai the business date is already the next month's: the
    expiry stored and the one printed both count from the date given, not the machine's calendar."""
    import datetime as dt

    import trio

    from host.issue import issue_cards
    from tests.host.harness import Harness, running_host

    async def main() -> list[tuple[str, str]]:
        h: Harness
        async with running_host(db_url, hsm_server) as h:
            out = []
            for today, expected in ((dt.date(2026, 12, 31), "2912"), (dt.date(2027, 1, 1), "3001")):
                product = f"VAL{today:%m}"
                await h.pool.run(_add_product, product, f"62128{today.month:01d}")
                (card,), _ = await issue_cards(h.pool, h.crypto, product, 1, today=today)
                stored = await h.pool.run(_expiry, card.card_id)
                assert card.expiry == stored == expected, (card.expiry, stored, expected)
                out.append((card.expiry, stored))
            return out

    assert len(trio.run(main)) == 2


async def _add_product(conn: Any, code: str, bin_prefix: str) -> None:
    from host import catalog

    spec = catalog.ProductSpec(
        code=code, kind="reloadable", max_balance=100_000, per_txn_limit=10_000,
        daily_amount_limit=10_000, daily_count_limit=10, validity_months=36, pin_required=False,
    )
    await catalog.add_product(conn, spec, bin_prefix + "0", 16)


async def _expiry(conn: Any, card_id: int) -> str:
    return str(await conn.fetchval("SELECT expiry FROM cards WHERE id = $1", card_id))
