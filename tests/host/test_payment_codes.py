"""Payment codes (issue 16 item 7): made by `card code`, paid with over H2H entry mode 03x, consumed
once inside the posting batch. Real PostgreSQL, the real HSM process, real sockets."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Any

import trio

from host import catalog, payment_codes
from host.check import run_checks
from host.payment_codes import NewCode
from ops.pgembed import find_bindir
from tests.host.harness import Harness, message, programme, reversal, running_host
from tests.host.helpers import cli_env, ok, run

QR = {"22": "032"}  # entry mode 03 (QR), no PIN


def _run(db_url: str, hsm_server: Any, body: Any, **host: Any) -> None:
    async def main() -> None:
        async with running_host(db_url, hsm_server, **host) as h:
            await body(h)
            failed = [r for r in await h.pool.run(run_checks) if not r.ok]
            assert not failed, failed

    trio.run(main)


async def _card_id(h: Harness, pan: str) -> int:
    return int(await h.pool.run(catalog.card_by_hash, await h.crypto.pan_hash(pan)))


async def _code(h: Harness, card_id: int, *, seconds: int = 60, cap: int | None = None) -> NewCode:
    return await payment_codes.make_code(
        h.pool, h.crypto, card_id, seconds=seconds, today=dt.date.today(), actor="test", max_amount=cap
    )


async def _reason(h: Harness, msg: dict[str, Any]) -> str | None:
    async def q(conn: Any) -> str | None:
        value = await conn.fetchval("SELECT reason FROM auth_requests WHERE stan = $1", msg["11"])
        return None if value is None else str(value)

    return await h.pool.run(q)


async def _available(h: Harness, card_id: int) -> int:
    return int((await h.pool.run(catalog.card_info, card_id))["available"])


def test_code_pays_once_without_pin(db_url: str, hsm_server: Any) -> None:
    async def body(h: Harness) -> None:
        (pan,) = await programme(h, "QRA", bin_prefix="621240", cards=1, load=10_000, pin_required=True)
        cid = await _card_id(h, pan)
        made = await _code(h, cid)
        assert payment_codes.well_formed(made.code) and made.code.startswith("621240")
        c = h.client
        assert (await c.request(message(c, pan, 100)))["39"] == "55"  # the card itself needs its PIN
        buy = message(c, made.code, 1_000, **QR)
        first = await c.request(buy)
        assert first["39"] == "00", first  # no PIN: the code was made in the authenticated app
        again = await c.request(buy)  # a retransmission: the first answer, nothing consumed twice
        assert again["39"] == "00" and again["38"] == first["38"]
        second = message(c, made.code, 1_000, **QR)
        assert (await c.request(second))["39"] == "05"
        assert await _reason(h, second) == "payment_code_used"
        assert await _available(h, cid) == 9_000
        row = "SELECT * FROM payment_codes WHERE id = $1"
        used = await h.pool.run(lambda conn: conn.fetchrow(row, made.id))
        assert used["used_key"] is not None and used["code_masked"] == made.masked
        # the clear code is nowhere in the database: only its keyed hash and masked form
        dump = subprocess.run(
            [str(find_bindir() / "pg_dump"), "--no-owner", "--dbname", db_url],
            capture_output=True, check=True, timeout=120,
        ).stdout
        assert made.code.encode() not in dump and made.masked.encode() in dump
        unknown = payment_codes.draw("621240")
        miss = message(c, unknown, 100, **QR)
        assert (await c.request(miss))["39"] == "14"
        assert await _reason(h, miss) == "card_unknown"
        keyed = message(c, (await _code(h, cid)).code, 100)  # a code keyed as a PAN (01x): no card
        assert (await c.request(keyed))["39"] == "14"
        bal = await _code(h, cid)
        inquiry = message(c, bal.code, None, proc="310000", **QR)
        assert (await c.request(inquiry))["39"] == "12"  # a code pays; it shows no balance
        assert (await c.request(message(c, bal.code, 100, **QR)))["39"] == "00"  # not consumed by it

    _run(db_url, hsm_server, body)


def test_cap_expiry_and_declines_do_not_consume(db_url: str, hsm_server: Any) -> None:
    async def body(h: Harness) -> None:
        (pan,) = await programme(h, "QRB", bin_prefix="621241", cards=1, load=1_000)
        cid = await _card_id(h, pan)
        c = h.client
        capped = await _code(h, cid, cap=500)
        over = message(c, capped.code, 600, **QR)
        assert (await c.request(over))["39"] == "61"
        assert await _reason(h, over) == "payment_code_cap"
        assert (await c.request(message(c, capped.code, 500, **QR)))["39"] == "00"
        poor = await _code(h, cid)
        assert (await c.request(message(c, poor.code, 900, **QR)))["39"] == "51"  # 500 left
        assert (await c.request(message(c, poor.code, 400, **QR)))["39"] == "00"  # still unused
        late = await _code(h, cid)
        real = h.service.ledger.clock
        h.service.ledger.clock = lambda: real() + dt.timedelta(seconds=61)
        try:
            stale = message(c, late.code, 50, **QR)
            assert (await c.request(stale))["39"] == "54"
            assert await _reason(h, stale) == "payment_code_expired"
        finally:
            h.service.ledger.clock = real
        assert await _available(h, cid) == 100

    _run(db_url, hsm_server, body)


def test_expiry_by_config(db_url: str, hsm_server: Any) -> None:
    async def body(h: Harness) -> None:
        (pan,) = await programme(h, "QRC", bin_prefix="621242", cards=1, load=1_000)
        made = await _code(h, await _card_id(h, pan), seconds=h.service.config.host.payment_code_seconds)
        await trio.sleep(1.2)
        assert (await h.client.request(message(h.client, made.code, 100, **QR)))["39"] == "54"

    _run(db_url, hsm_server, body, payment_code_seconds=1)


def test_two_purchases_with_one_code_one_approved(db_url: str, hsm_server: Any) -> None:
    async def body(h: Harness) -> None:
        (pan,) = await programme(h, "QRD", bin_prefix="621243", cards=1, load=10_000)
        cid = await _card_id(h, pan)
        other = await h.connect()  # two terminals, two connections, at once
        for _round in range(5):
            made = await _code(h, cid)
            answers: list[str] = []

            async def pay(client: Any, made: NewCode = made, answers: list[str] = answers) -> None:
                answers.append((await client.request(message(client, made.code, 100, **QR)))["39"])

            async with trio.open_nursery() as n:
                n.start_soon(pay, h.client)
                n.start_soon(pay, other)
            assert sorted(answers) == ["00", "05"], answers
        assert await _available(h, cid) == 10_000 - 5 * 100

    _run(db_url, hsm_server, body)


def test_void_refund_and_reversal_of_a_code_purchase(db_url: str, hsm_server: Any) -> None:
    async def body(h: Harness) -> None:
        (pan,) = await programme(h, "QRE", bin_prefix="621244", cards=1, load=10_000)
        cid = await _card_id(h, pan)
        c = h.client
        made = await _code(h, cid)
        buy = message(c, made.code, 3_000, **QR)
        assert (await c.request(buy))["39"] == "00"
        void = message(c, made.code, 3_000, proc="200000", **{**QR, "102": buy["37"]})
        assert (await c.request(void))["39"] == "00"  # the used code finds its card
        assert await _available(h, cid) == 10_000
        second = await _code(h, cid)
        buy2 = message(c, second.code, 4_000, **QR)
        assert (await c.request(buy2))["39"] == "00"
        refund = message(c, second.code, 1_500, mti="0220", proc="200000", **{**QR, "102": buy2["37"]})
        assert (await c.request(refund))["39"] == "00"
        assert await _available(h, cid) == 10_000 - 2_500
        third = await _code(h, cid)
        buy3 = message(c, third.code, 2_000, **QR)
        assert (await c.request(buy3))["39"] == "00"
        assert (await c.request(reversal(c, buy3)))["39"] == "00"
        assert await _available(h, cid) == 10_000 - 2_500
        # a reversed purchase does not give its code back: a code pays once
        assert (await c.request(message(c, third.code, 100, **QR)))["39"] == "05"

    _run(db_url, hsm_server, body)


def test_card_code_command(db_url: str, hsm_server: Any, tmp_path: Path) -> None:
    env = cli_env(tmp_path, db_url, hsm_server.env)
    ok(env, "product", "add", "QRV", "--kind", "reloadable", "--bin", "621245", "--form", "virtual",
       "--no-pin")
    assert ok(env, "product", "show", "QRV")["form"] == "virtual"
    refused = run(env, "card", "issue", "--product", "QRV")
    assert refused.exit_code == 1 and "cardholder" in refused.output and "Traceback" not in refused.output
    holder = _named_cardholder(db_url)
    issued = ok(env, "card", "issue", "--product", "QRV", "--cardholder", str(holder))
    assert issued["state"] == "active" and issued["form"] == "virtual" and issued["mailer"] is None
    assert not (tmp_path / "mailers").exists() or not list((tmp_path / "mailers").iterdir())
    cid = issued["cards"][0]["card_id"]
    assert ok(env, "card", "show", str(cid))["form"] == "virtual"
    assert "form         virtual (pays by payment code)" in run(env, "card", "show", str(cid)).output
    ok(env, "card", "load", str(cid), "--amount", "50.00")
    png = tmp_path / "code.png"
    made = ok(env, "card", "code", str(cid), "--max-amount", "20.00", "--png", str(png))
    code = made["code"]
    assert payment_codes.well_formed(code) and made["max_amount_minor"] == 2_000 and made["seconds"] == 60
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_mode & 0o077 == 0
    human = run(env, "card", "code", str(cid))
    assert human.exit_code == 0 and ("█" in human.output or "▀" in human.output), human.output
    assert "pays once until" in human.output
    physical = ok(env, "product", "add", "QRP", "--kind", "reloadable", "--bin", "621246")
    assert physical["product"] == "QRP"
    inv = ok(env, "card", "issue", "--product", "QRP")["cards"][0]["card_id"]
    refused = run(env, "card", "code", str(inv))
    assert refused.exit_code == 1 and "active cards only" in refused.output
    # nothing logged or stored shows the code in clear
    assert code not in json.dumps(_all_codes(db_url))


def _named_cardholder(db_url: str) -> int:
    """A named cardholder row (its ID sealed by nobody: the test needs only the row)."""

    async def main() -> int:
        import asyncpg

        conn = await asyncpg.connect(db_url)
        try:
            return int(
                await conn.fetchval(
                    """INSERT INTO cardholders (name, name_key, id_type, id_number_enc, id_number_hash,
                           id_number_masked, kyc_level)
                       VALUES ('Li Lei', 'li lei', 'passport', 'X:Y', 'H' || clock_timestamp()::text, '1234',
                               'named') RETURNING id"""
                )
            )
        finally:
            await conn.close()

    return int(_asyncio_run(main))


def _asyncio_run(fn: Any) -> Any:
    import asyncio

    return asyncio.run(fn())


def _all_codes(db_url: str) -> list[dict[str, Any]]:
    async def main() -> list[dict[str, Any]]:
        import asyncpg

        conn = await asyncpg.connect(db_url)
        try:
            rows = await conn.fetch("SELECT * FROM payment_codes")
            return [{k: str(v) for k, v in dict(r).items()} for r in rows]
        finally:
            await conn.close()

    return list(_asyncio_run(main))


def test_ledger_check_names_a_code_used_by_no_approval(db_url: str, hsm_server: Any) -> None:
    async def main() -> None:
        async with running_host(db_url, hsm_server) as h:
            (pan,) = await programme(h, "QRF", bin_prefix="621247", cards=1, load=100)
            made = await _code(h, await _card_id(h, pan))
            poor = message(h.client, made.code, 500, **QR)
            assert (await h.client.request(poor))["39"] == "51"

            async def forge(conn: Any) -> None:  # a code marked used by the declined request
                key = await conn.fetchval("SELECT key FROM auth_requests WHERE stan = $1", poor["11"])
                await conn.execute(
                    "UPDATE payment_codes SET used_key = $2, used_at = now() WHERE id = $1", made.id, key
                )

            await h.pool.run(forge)
            found = {r.name: r for r in await h.pool.run(run_checks)}["payment_code_paid_once"]
            assert found.offenders == [f"code:{made.id}"]

    trio.run(main)
