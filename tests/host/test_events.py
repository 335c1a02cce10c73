"""The host's outbox producers (issue 17 item 5, host.events): each event in the transaction of its change.

Real PostgreSQL, the real posting engine: an approved and a declined purchase write one event each in
their batch, a retransmission none, a batch rolled back none (a deferred trigger fails its COMMIT, after
every statement of the batch ran), card.balance_low once on crossing the threshold; a freeze, the
expiry sweep and a replacement write card.state_changed; a KYC decision and an AML review, clearance
and confirmation write cardholder.kyc_changed. No payload holds a full PAN, a name or an ID number.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from host import aml, catalog, kyc
from host.expiry import expire_batch
from host.ledger import Ledger
from host.model import Decision, Pin, Replacing, Request, Txn
from tests.host.helpers import fake_hash, programme, req, reversal_of


def run(db_url: str, body: Callable[[Any], Awaitable[None]]) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(db_url)
        try:
            await body(conn)
        finally:
            await conn.close()

    asyncio.run(main())


async def post(conn: Any, ledger: Ledger, *reqs: Request) -> list[Decision]:
    return await ledger.post_batch(conn, list(reqs))


async def events_of(conn: Any, card_id: int, since: int = 0) -> list[tuple[str, dict[str, Any]]]:
    rows = await conn.fetch(
        "SELECT type, payload FROM events WHERE card_id = $1 AND id > $2 ORDER BY id", card_id, since
    )
    return [(r["type"], json.loads(r["payload"])) for r in rows]


async def last_id(conn: Any) -> int:
    return int(await conn.fetchval("SELECT coalesce(max(id), 0) FROM events"))


async def card_id(conn: Any, pan: str) -> int:
    return int(await conn.fetchval("SELECT id FROM cards WHERE pan_hash = $1", fake_hash(pan)))


def no_pan_in(payloads: list[Any], pans: list[str]) -> None:
    text = json.dumps(payloads)
    for pan in pans:
        assert pan not in text
    assert not re.search(r"\d{13,19}", text.replace("898330160120001", "")), text  # no clear PAN-like run


def test_approved_and_declined_purchases_each_write_one_event(db_url: str) -> None:
    async def body(conn: Any) -> None:
        pan, other, _ = await programme(conn, code="EVT1", max_balance=100_000)
        cid, oid = await card_id(conn, pan), await card_id(conn, other)
        ledger = Ledger()
        start = await last_id(conn)
        load = req(Txn.TOPUP, pan, 50_000)
        buy = req(Txn.PURCHASE, pan, 12_345)
        broke = req(Txn.PURCHASE, other, 1)
        assert [d.code for d in await post(conn, ledger, load, buy, broke)] == ["00", "00", "51"]
        mine = await events_of(conn, cid, start)
        assert [t for t, _ in mine] == ["authorization.approved", "authorization.approved"]
        p = mine[1][1]
        masked = pan[:6] + "*" * (len(pan) - 10) + pan[-4:]
        assert p["card"] == f"card_{cid}" and p["pan_masked"] == masked and p["txn"] == "purchase"
        assert p["amount"] == {"amount": 12_345, "currency": "CNY"} and p["response_code"] == "00"
        assert p["balance"] == p["available"] == {"amount": 50_000 - 12_345, "currency": "CNY"}
        assert p["merchant_id"] == buy.merchant_id and p["terminal_id"] == buy.terminal_id
        assert (p["rrn"], p["stan"], p["acquirer_id"]) == (buy.rrn, buy.stan, buy.acquirer_id)
        assert len(p["auth_code"]) == 6 and p["reason"] is None and p["occurred_at"].endswith("+00:00")
        assert dt.date.fromisoformat(p["business_date"])
        theirs = await events_of(conn, oid, start)
        assert [t for t, _ in theirs] == ["authorization.declined"]
        d = theirs[0][1]
        assert d["response_code"] == "51" and d["reason"] == "insufficient_funds" and d["reason_text"]
        assert d["available"] == {"amount": 0, "currency": "CNY"}

        # retransmissions (the same key again, in a batch of its own and twice in one) write nothing
        before = await last_id(conn)
        again = await post(conn, ledger, buy, broke)
        assert all(x.duplicate for x in again) and await last_id(conn) == before
        twice = req(Txn.PURCHASE, pan, 5)
        assert [x.duplicate for x in await post(conn, ledger, twice, twice)] == [False, True]
        assert len(await events_of(conn, cid, before)) == 1

        # a reversal is an authorization of its own (the original's card); an approved balance inquiry
        # writes none, a declined one (wrong PIN) does
        before = await last_id(conn)
        assert (await post(conn, ledger, reversal_of(twice)))[0].code == "00"
        assert (await post(conn, ledger, req(Txn.BALANCE, pan)))[0].code == "00"
        rev = await events_of(conn, cid, before)
        assert [(t, x["txn"]) for t, x in rev] == [("authorization.approved", "reversal")]
        assert rev[0][1]["balance"]["amount"] == 50_000 - 12_345
        # an unknown card: declined, no card in the event
        before = await last_id(conn)
        assert (await post(conn, ledger, req(Txn.PURCHASE, "6299990000000000001", 1)))[0].code == "14"
        row = await conn.fetchrow("SELECT type, card_id, payload FROM events WHERE id > $1", before)
        assert row["type"] == "authorization.declined" and row["card_id"] is None
        assert json.loads(row["payload"])["card"] is None
        all_payloads = [json.loads(r["payload"]) for r in await conn.fetch("SELECT payload FROM events")]
        no_pan_in(all_payloads, [pan, other])

    run(db_url, body)


def test_a_batch_rolled_back_writes_no_event(db_url: str) -> None:
    """Every statement of the batch ran, then its COMMIT failed: nothing of it stays, its events
    neither; the engine's one-by-one retry commits the good request with its one event."""

    async def body(conn: Any) -> None:
        pan, *_ = await programme(conn, code="EVT2", max_balance=100_000)
        cid = await card_id(conn, pan)
        ledger = Ledger()
        await post(conn, ledger, req(Txn.TOPUP, pan, 10_000))
        good, bad = req(Txn.PURCHASE, pan, 100), req(Txn.PURCHASE, pan, 200)
        await conn.execute(
            f"""CREATE FUNCTION evt_fail() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN IF NEW.key = '{bad.key}' THEN RAISE EXCEPTION 'forced at commit'; END IF;
                RETURN NULL; END $$;
                CREATE CONSTRAINT TRIGGER evt_fail AFTER INSERT ON auth_requests
                DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION evt_fail()"""
        )
        try:
            start = await last_id(conn)
            decisions = await post(conn, ledger, good, bad)
        finally:
            await conn.execute("DROP TRIGGER evt_fail ON auth_requests; DROP FUNCTION evt_fail()")
        assert [d.code for d in decisions] == ["00", "96"]
        mine = await events_of(conn, cid, start)
        assert [(t, x["stan"]) for t, x in mine] == [("authorization.approved", good.stan)]

    run(db_url, body)


def test_balance_low_fires_once_on_crossing(db_url: str) -> None:
    async def body(conn: Any) -> None:
        pan, *_ = await programme(conn, code="EVT3", max_balance=100_000)
        cid = await card_id(conn, pan)
        ledger = Ledger(balance_low=1_000)
        await post(conn, ledger, req(Txn.TOPUP, pan, 1_500))
        start = await last_id(conn)
        await post(conn, ledger, req(Txn.PURCHASE, pan, 400))  # 1,100 left: still above
        await post(conn, ledger, req(Txn.PURCHASE, pan, 200), req(Txn.PURCHASE, pan, 100))  # 900, 800
        low = [x for t, x in await events_of(conn, cid, start) if t == "card.balance_low"]
        assert len(low) == 1
        assert low[0]["available"] == {"amount": 900, "currency": "CNY"}
        assert low[0]["threshold"] == {"amount": 1_000, "currency": "CNY"} and low[0]["card"] == f"card_{cid}"
        # back above and down again: once more; 0 = never
        await post(conn, ledger, req(Txn.TOPUP, pan, 500), req(Txn.PURCHASE, pan, 400))  # 1,300 -> 900
        assert sum(t == "card.balance_low" for t, _ in await events_of(conn, cid, start)) == 2
        before = await last_id(conn)
        await post(conn, Ledger(), req(Txn.TOPUP, pan, 500), req(Txn.PURCHASE, pan, 600))
        assert "card.balance_low" not in [t for t, _ in await events_of(conn, cid, before)]
        # and none at all with the outbox off (bench.host's comparison)
        before = await last_id(conn)
        await post(conn, Ledger(write_events=False), req(Txn.PURCHASE, pan, 1))
        assert await last_id(conn) == before

    run(db_url, body)


def test_card_state_changes_write_card_state_changed(db_url: str) -> None:
    async def body(conn: Any) -> None:
        pan, old_pan, _ = await programme(conn, code="EVT4", max_balance=100_000)
        cid = await card_id(conn, pan)
        start = await last_id(conn)
        await catalog.set_card_state(conn, cid, "frozen", actor="ops:test", reason=f"customer asked: {pan}")
        await catalog.set_card_state(conn, cid, "active", action="unfreeze", actor="ops:test")
        got = await events_of(conn, cid, start)
        assert [(t, x["from_state"], x["to_state"], x["action"]) for t, x in got] == [
            ("card.state_changed", "active", "frozen", "freeze"),
            ("card.state_changed", "frozen", "active", "unfreeze"),
        ]
        masked = pan[:6] + "*" * (len(pan) - 10) + pan[-4:]
        assert got[0][1]["pan_masked"] == masked and got[0][1]["actor"] == "ops:test"
        assert got[0][1]["reason"] == f"customer asked: {masked}"  # a PAN typed in the reason: masked
        # a refused change writes nothing (its transaction rolled back)
        before = await last_id(conn)
        with pytest.raises(catalog.CatalogError):
            await catalog.set_card_state(conn, cid, "inventory")
        assert await last_id(conn) == before
        # the expiry sweep: one per card moved, in its transaction
        oid = await card_id(conn, old_pan)
        await conn.execute("UPDATE cards SET expiry = '0001' WHERE id = $1", oid)
        assert await expire_batch(conn, "2612", 100, "host:card-expiry") == {"active": 1}
        got = await events_of(conn, oid, before)
        assert [(x["from_state"], x["to_state"], x["action"], x["actor"]) for _, x in got] == [
            ("active", "expired", "expire", "host:card-expiry")
        ]
        # a forfeit (in the ledger batch): the card's close beside its authorization
        ledger = Ledger()
        await post(conn, ledger, req(Txn.TOPUP, pan, 300))
        before = await last_id(conn)
        forfeit = Request(f"admin:forfeit:{cid}", "0000", Txn.FORFEIT, acquirer_id="admin", card_id=cid,
                          amount=300, actor="ops:test")
        assert (await post(conn, ledger, forfeit))[0].code == "00"
        got = await events_of(conn, cid, before)
        assert [t for t, _ in got] == ["authorization.approved", "card.state_changed"]
        assert (got[1][1]["from_state"], got[1][1]["to_state"], got[1][1]["action"]) == (
            "active", "closed", "forfeit"
        )

    run(db_url, body)


LIST = "name,aliases,date_of_birth,list,reference\nOksana Quillfeather,,1982,EVTLIST,EV-001\n"


def test_kyc_and_aml_changes_write_cardholder_kyc_changed(db_url: str) -> None:
    async def body(conn: Any) -> None:
        ch = int(await conn.fetchval(
            "INSERT INTO cardholders (name, name_key, kyc_level, id_type, id_number_enc, id_number_hash,"
            " id_number_masked) VALUES ('Evt Person', 'evt person', 'named', 'passport', 'ENC-EVT-1',"
            " 'H-EVT-1', 'E1****89') RETURNING id"
        ))

        async def mine(since: int) -> list[dict[str, Any]]:
            rows = await conn.fetch(
                "SELECT payload FROM events WHERE type = 'cardholder.kyc_changed' AND id > $1 ORDER BY id",
                since,
            )
            return [p for r in rows if (p := json.loads(r["payload"]))["cardholder"] == f"ch_{ch}"]

        start = await last_id(conn)
        await kyc.decide(conn, ch, "approve", reason="passport checked", actor="ops:kyc")
        await kyc.decide(conn, ch, "downgrade", reason="document expired", actor="ops:kyc", to_level="named")
        got = await mine(start)
        assert [(p["decision"], p["from_level"], p["to_level"]) for p in got] == [
            ("approved", "named", "verified"), ("downgraded", "verified", "named")
        ]
        assert got[0]["actor"] == "ops:kyc" and got[0]["aml_status"] == "clear" and got[0]["occurred_at"]
        # AML: a hit puts the cardholder in review, an operator clears it; again, and confirms
        await aml.import_list(conn, LIST.encode(), file_name="evt.csv", actor="ops:aml")
        before = await last_id(conn)
        await conn.execute("UPDATE cardholders SET name = 'Oksana Quillfeather' WHERE id = $1", ch)
        assert await aml.screen(conn, ch, "Oksana Quillfeather", None, threshold=88)
        await aml.clear(conn, ch, actor="ops:aml", reason="another person")
        await conn.execute("DELETE FROM aml_hits WHERE cardholder_id = $1", ch)
        assert await aml.screen(conn, ch, "Oksana Quillfeather", None, threshold=88)
        await aml.confirm(conn, ch, actor="ops:aml", reason="the same person")
        got = await mine(before)
        assert [(p["decision"], p["from_aml_status"], p["aml_status"]) for p in got] == [
            ("aml_review", "clear", "review"),
            ("aml_cleared", "review", "clear"),
            ("aml_review", "clear", "review"),
            ("aml_confirmed", "review", "confirmed"),
        ]
        text = json.dumps(await mine(start))
        assert "Oksana" not in text and "Evt Person" not in text and "E1****89" not in text

    run(db_url, body)


def test_pin_change_and_wrong_pin_inquiry_are_authorizations(db_url: str) -> None:
    """Declined balance inquiries write an event (a wrong PIN counts a try), approved ones do not."""

    async def body(conn: Any) -> None:
        pan, *_ = await programme(conn, code="EVT5", max_balance=100_000)
        cid = await card_id(conn, pan)
        start = await last_id(conn)
        d = (await post(conn, Ledger(), req(Txn.BALANCE, pan, pin=Pin.BAD)))[0]
        assert d.code == "55"
        got = await events_of(conn, cid, start)
        assert [(t, x["txn"], x["reason"]) for t, x in got] == [
            ("authorization.declined", "balance", "pin_wrong")
        ]

    run(db_url, body)


def test_a_replacement_writes_a_state_change_per_card(db_url: str) -> None:
    """The ledger's replacement (host.replace's request): the old card closed and the new one made
    active in the batch that moves the balance, a card.state_changed for each, no authorization."""

    async def body(conn: Any) -> None:
        pan, *_ = await programme(conn, code="EVT6", max_balance=100_000)
        cid = await card_id(conn, pan)
        ledger = Ledger()
        await post(conn, ledger, req(Txn.TOPUP, pan, 700))
        new_pan = pan[:-1] + ("9" if pan[-1] != "9" else "8")
        parts = await catalog.partitions(conn)
        [new_id] = await catalog.insert_cards(
            conn,
            "EVT6",
            [catalog.NewCard(fake_hash(new_pan), "ENC", new_pan[:6] + "*" * 9 + new_pan[-4:], "1234",
                             int(fake_hash(new_pan), 16) % parts)],
            state="inventory",
        )
        before = await last_id(conn)
        replace = Request(
            f"replace:{cid}", "0000", Txn.REPLACEMENT, acquirer_id="admin", card_id=cid, amount=700,
            actor="ops:test",
            replacing=Replacing(new_id, "closed", "active", "damaged", ("active", "frozen")),
        )
        assert (await post(conn, ledger, replace))[0].code == "00"
        rows = await conn.fetch("SELECT type, card_id, payload FROM events WHERE id > $1 ORDER BY id", before)
        got = [(r["type"], r["card_id"], json.loads(r["payload"])) for r in rows]
        assert [(t, c, p["from_state"], p["to_state"], p["action"]) for t, c, p in got] == [
            ("card.state_changed", cid, "active", "closed", "replace"),
            ("card.state_changed", new_id, "inventory", "active", "replace"),
        ]
        assert got[1][2]["pan_masked"] == new_pan[:6] + "*" * 9 + new_pan[-4:]

    run(db_url, body)
