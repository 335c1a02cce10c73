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
