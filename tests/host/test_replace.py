"""Card replacement (issue 16 item 4) against the real HSM, PostgreSQL and the host over H2H: the balance
and today's use move to the new PAN in one transaction, the old card is declined (41 / 43 / 14), the new
one approved, a retry replaces once, holds and unnamed cards refuse, `expiring` keeps the PIN, a gift
card's face value is not loaded twice, and `ledger check` is clean after each."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from host import catalog, directory
from host.catalog import CatalogError
from host.check import run_checks
from host.issue import activate_card
from host.replace import Replacement, replace_card
from tests.host.harness import Harness, message, pin_block, programme, running_host

TODAY = __import__("datetime").date.today()


def run(db_url: str, hsm_server: Any, body: Callable[[Harness], Awaitable[None]]) -> None:
    async def main() -> None:
        async with running_host(db_url, hsm_server) as h:
            await body(h)

    trio.run(main)


async def clean(h: Harness) -> None:
    failed = [r for r in await h.pool.run(run_checks) if not r.ok]
    assert not failed, failed


async def _named(conn: Any, card_id: int, level: str = "named") -> int:
    """A cardholder by SQL (placeholder ID data: nothing here is personal), owning the card."""
    holder = await conn.fetchval(
        """INSERT INTO cardholders (name, name_key, id_type, id_number_enc, id_number_hash,
                                    id_number_masked, kyc_level)
           VALUES ('Test Holder', 'test holder', 'other', 'enc', 'hash-' || $1::text, '****', $2)
           RETURNING id""",
        str(card_id),
        level,
    )
    await conn.execute("UPDATE cards SET cardholder_id = $2 WHERE id = $1", card_id, holder)
    return int(holder)


def _pin_buy(client: Any, pan: str, amount: int) -> dict[str, Any]:
    """A purchase with the harness's PIN (123456) in DE52."""
    msg = message(client, pan, amount)
    msg["52"] = pin_block(pan)
    return msg


async def _card_id(h: Harness, pan: str) -> int:
    return int(await h.pool.run(catalog.card_by_hash, await h.crypto.pan_hash(pan)))


async def _replace(h: Harness, card_id: int, reason: str, mailers: Path | None = None) -> Replacement:
    return await replace_card(
        h.pool, h.crypto, card_id, reason, actor="test:operator", today=TODAY, mailer_dir=mailers
    )


async def _sql(h: Harness, sql: str, *args: Any) -> list[Any]:
    return list(await h.pool.run(lambda conn: conn.fetch(sql, *args)))


@pytest.mark.parametrize(
    ("reason", "code", "bin_prefix"),
    [("lost", "41", "621301"), ("stolen", "43", "621302"), ("damaged", "14", "621303")],
)
def test_replacement_moves_balance_and_today_use(
    db_url: str, hsm_server: Any, tmp_path: Path, reason: str, code: str, bin_prefix: str
) -> None:
    async def body(h: Harness) -> None:
        pan, other, _ = await programme(h, f"RPL{code}", load=10_000, bin_prefix=bin_prefix)
        old = await _card_id(h, pan)
        holder = await h.pool.run(_named, old)
        c = h.client
        assert (await c.request(message(c, pan, 1_234)))["39"] == "00"
        r = await _replace(h, old, reason, tmp_path)
        assert r.moved == 10_000 - 1_234 and not r.duplicate and r.pin == "new" and r.form == "physical"
        assert r.new_state == "inventory" and r.mailer is not None and r.pan and r.pan != pan
        line = r.mailer.read_text()
        assert r.pan not in line and str(r.new_card_id) in line and "pin_under_lmk" in line
        # the old card: blocked, named as replaced; its money and today's use are on the new card
        shown_old = await h.pool.run(directory.show_card, old)
        assert shown_old["state"] == {"lost": "lost", "stolen": "stolen"}.get(reason, "closed")
        assert shown_old["balance"] == 0
        new = await h.pool.run(directory.show_card, r.new_card_id)
        assert new["balance"] == 10_000 - 1_234 and new["day_amount"] == 1_234 and new["day_count"] == 1
        assert new["product"] == shown_old["product"] and new["cardholder_id"] == holder
        assert (await c.request(message(c, pan, 100)))["39"] == code
        assert (await c.request(message(c, r.pan, 100)))["39"] == "05"  # in inventory until activated
        await activate_card(h.pool, r.new_card_id, TODAY)
        assert (await c.request(message(c, r.pan, 100)))["39"] == "00"
        assert (await h.pool.run(directory.show_card, r.new_card_id))["balance"] == 10_000 - 1_234 - 100
        # a retry replaces once
        again = await _replace(h, old, reason, tmp_path)
        assert again.duplicate and again.new_card_id == r.new_card_id and again.pan is None
        assert again.moved == r.moved
        [row] = await _sql(
            h, "SELECT count(*) AS n FROM transfers WHERE code = 'replacement' AND card_id = $1", old
        )
        assert row["n"] == 1
        events = await _sql(
            h,
            "SELECT card_id, actor FROM card_events WHERE action = 'replace' ORDER BY id DESC LIMIT 2",
        )
        assert {e["card_id"] for e in events} == {old, r.new_card_id}
        assert {e["actor"] for e in events} == {"test:operator"}
        history = await h.pool.run(catalog.card_history, r.new_card_id, 10)
        assert any(x["txn"] == "replacement" and x["amount"] == 10_000 - 1_234 for x in history)
        assert (await c.request(message(c, other, 100)))["39"] == "00"  # the other cards are untouched
        await clean(h)

    run(db_url, hsm_server, body)


def test_expiring_keeps_the_pin_and_virtual_is_active_at_once(
    db_url: str, hsm_server: Any, tmp_path: Path
) -> None:
    async def body(h: Harness) -> None:
        pan, virt, _ = await programme(h, "RPLEXP", load=5_000, bin_prefix="621304", pin_required=True)
        old, vold = await _card_id(h, pan), await _card_id(h, virt)
        for cid in (old, vold):
            await h.pool.run(_named, cid)
        r = await _replace(h, old, "expiring", tmp_path)
        assert r.pin == "kept" and r.old_to == "closed"
        await activate_card(h.pool, r.new_card_id, TODAY)
        c = h.client
        assert r.pan is not None
        assert (await c.request(_pin_buy(c, r.pan, 700)))["39"] == "00"
        assert (await c.request(_pin_buy(c, pan, 100)))["39"] == "14"

        await _sql(h, "UPDATE cards SET form = 'virtual' WHERE id = $1", vold)
        v = await _replace(h, vold, "expiring", tmp_path)
        assert v.form == "virtual" and v.new_state == "active" and v.mailer is None and v.pan
        assert (await c.request(_pin_buy(c, v.pan, 100)))["39"] == "00"

        # a card issued before pin_lmk was kept: a new PIN, and the result says so
        _, _, third = await programme(h, "RPLEXQ", load=0, bin_prefix="621305")
        tid = await _card_id(h, third)
        await h.pool.run(_named, tid)
        await _sql(h, "UPDATE cards SET pin_lmk = NULL WHERE id = $1", tid)
        t = await _replace(h, tid, "expiring", tmp_path)
        assert t.pin == "new_no_pin_lmk" and t.moved == 0  # an empty card: no transfer, cards changed
        assert (await h.pool.run(directory.show_card, tid))["state"] == "closed"
        assert not await _sql(h, "SELECT 1 FROM transfers WHERE key = $1", f"replace:{tid}")
        await clean(h)

    run(db_url, hsm_server, body)


def test_refusals_holds_unnamed_and_states(db_url: str, hsm_server: Any) -> None:
    async def body(h: Harness) -> None:
        pan, anon, third = await programme(h, "RPLNO", load=10_000, bin_prefix="621306")
        held, unnamed, lost = [await _card_id(h, p) for p in (pan, anon, third)]
        await h.pool.run(_named, held)
        await h.pool.run(_named, lost)
        c = h.client
        pre = message(c, pan, 3_000, mti="0100", proc="030000", cond="06")
        assert (await c.request(pre))["39"] == "00"
        with pytest.raises(CatalogError, match=r"1 pending pre-auth hold\(s\) of 30.00 CNY .* completion"):
            await _replace(h, held, "lost")
        with pytest.raises(CatalogError, match="anonymous"):
            await _replace(h, unnamed, "lost")
        with pytest.raises(CatalogError, match="unnamed card cannot be reported lost"):
            await h.pool.run(lambda conn: catalog.set_card_state(conn, unnamed, "lost"))
        with pytest.raises(CatalogError, match="one of lost, stolen, damaged, expiring"):
            await _replace(h, lost, "broken")
        await h.pool.run(lambda conn: catalog.set_card_state(conn, lost, "lost", actor="test:operator"))
        with pytest.raises(CatalogError, match="--reason expiring replaces a card that is active, frozen"):
            await _replace(h, lost, "expiring")
        r = await _replace(h, lost, "lost")  # a card reported lost first is replaced later: its money moves
        assert r.moved == 10_000 and r.old_from == "lost" and r.old_to == "lost"
        assert (await c.request(message(c, pan, 2_500, proc="000000", cond="06")))["39"] == "00"  # completion
        await clean(h)

    run(db_url, hsm_server, body)


def test_gift_face_value_is_not_loaded_again(db_url: str, hsm_server: Any) -> None:
    async def body(h: Harness) -> None:
        (pan, spent) = await programme(
            h, "RPLGIFT", cards=2, load=0, bin_prefix="621307", kind="fixed_amount", initial_amount=5_000,
            max_balance=5_000,
        )
        gift, empty = await _card_id(h, pan), await _card_id(h, spent)
        for cid in (gift, empty):
            await h.pool.run(_named, cid)
        c = h.client
        assert (await c.request(message(c, pan, 1_000)))["39"] == "00"
        assert (await c.request(message(c, spent, 5_000)))["39"] == "00"
        r = await _replace(h, gift, "damaged")
        e = await _replace(h, empty, "damaged")
        for x, left in ((r, 4_000), (e, 0)):
            await activate_card(h.pool, x.new_card_id, TODAY)
            shown = await h.pool.run(directory.show_card, x.new_card_id)
            assert shown["balance"] == left and shown["state"] == "active"
        await clean(h)

    run(db_url, hsm_server, body)


def test_under_aml_review_a_named_card_can_be_blocked_but_not_replaced(db_url: str, hsm_server: Any) -> None:
    """Reporting a card lost is the PBOC named-card test alone (host.kyc.card_named): a cardholder under
    AML review can still block a card. Replacing it is refused meanwhile (host.kyc.card_tier counts the
    review as anonymous): a replacement would put a frozen or watched card's money on a live card."""

    async def body(h: Harness) -> None:
        (pan,) = await programme(h, "RPLAML", cards=1, load=5_000, bin_prefix="621308")
        card = await _card_id(h, pan)
        holder = await h.pool.run(_named, card)
        await _sql(h, "UPDATE cardholders SET aml_status = 'review' WHERE id = $1", holder)
        with pytest.raises(CatalogError, match="AML review"):
            await _replace(h, card, "lost")
        await h.pool.run(lambda conn: catalog.set_card_state(conn, card, "lost", actor="test:operator"))
        assert (await h.client.request(message(h.client, pan, 100)))["39"] == "41"
        await _sql(h, "UPDATE cardholders SET aml_status = 'clear' WHERE id = $1", holder)
        r = await _replace(h, card, "lost")  # cleared: the money moves to the new card
        assert r.moved == 5_000 and r.old_from == "lost"
        await clean(h)

    run(db_url, hsm_server, body)
