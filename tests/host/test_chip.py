"""Chip on the issuer's side (host.chip): the ARQC checked in the real HSM, the ARPC in the answer's DE48,
replayed counters, missing chip data, fallback declined or flagged; real host, HSM and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from host import catalog, chip, rules
from host.check import run_checks
from host.model import CardState, Decision, Pin, Product, Request, Txn
from specs import tlv
from tests.host.chip_helpers import card_tags, chip_fields, chip_programme, de48, expected_arpc, issuer_data
from tests.host.harness import Harness, message, running_host


def run(db_url: str, hsm_server: Any, body: Callable[[Harness], Awaitable[None]]) -> None:
    async def main() -> None:
        async with running_host(db_url, hsm_server) as h:
            await body(h)
            failed = [r for r in await h.pool.run(run_checks) if not r.ok]
            assert not failed, failed

    trio.run(main)


async def balance(h: Harness, pan: str) -> str:
    answer = await h.client.request(message(h.client, pan, None, proc="310000"))
    return str(answer["54"][-12:])


async def reason_of(h: Harness, stan: str) -> str | None:
    async def q(conn: Any) -> str | None:
        return await conn.fetchval("SELECT reason FROM auth_requests WHERE stan = $1", stan)  # type: ignore[no-any-return]

    return await h.pool.run(q)


@pytest.mark.parametrize("alg", ["3des", "sm4"])
def test_chip_purchase_arpc_both_algorithms(db_url: str, hsm_server: Any, alg: str) -> None:
    async def body(h: Harness) -> None:
        pans = await chip_programme(h, f"CHIP{alg.upper()}", alg, "62260" + ("1" if alg == "3des" else "2"))
        pan = pans[0]
        c = h.client
        tags = card_tags(alg, pan, 1_234, 7)
        answer = await c.request(message(c, pan, 1_234, **{"22": "051", "48": de48(tags)}))
        assert answer["39"] == "00", answer
        got = issuer_data(answer)
        assert got["91"] == expected_arpc(alg, pan, 7, tags, b"00") + b"00"
        assert got["8A"] == b"00"
        assert await balance(h, pan) == f"{10_000 - 1_234:012d}"
        # a decline of a verified cryptogram: its ARPC answers with the decline's DE39 as the ARC
        tags = card_tags(alg, pan, 50_000, 8)
        answer = await c.request(message(c, pan, 50_000, **{"22": "051", "48": de48(tags)}))
        assert answer["39"] == "51"
        assert issuer_data(answer)["91"] == expected_arpc(alg, pan, 8, tags, b"51") + b"51"
        # the retransmission of the approval is answered the same, with the same ARPC
        again = message(c, pan, 100, **{"22": "071", **{"48": de48(card_tags(alg, pan, 100, 9))}})
        first = await c.request(again)
        assert first["39"] == "00" and (await c.request(again))["48"] == first["48"]

    run(db_url, hsm_server, body)


def test_wrong_arqc_declined_nothing_posted(db_url: str, hsm_server: Any) -> None:
    async def body(h: Harness) -> None:
        pan = (await chip_programme(h, "CHIPW", "3des", "622610"))[0]
        c = h.client
        bad = message(c, pan, 1_000, **chip_fields("3des", pan, 1_000, 3, wrong=True))
        answer = await c.request(bad)
        assert answer["39"] == "05" and "48" not in answer
        assert await reason_of(h, bad["11"]) == "arqc_failed"
        assert await balance(h, pan) == f"{10_000:012d}"
        # the same ATC with the right cryptogram is still good: a failed ARQC spends no counter
        good = await c.request(message(c, pan, 1_000, **chip_fields("3des", pan, 1_000, 3)))
        assert good["39"] == "00"
        # a cryptogram made for another amount does not verify either
        other = message(c, pan, 2_000, **{"22": "051", "48": de48(card_tags("3des", pan, 1_000, 4))})
        assert (await c.request(other))["39"] == "05"
        assert await reason_of(h, other["11"]) == "arqc_amount"

    run(db_url, hsm_server, body)


def test_replayed_atc_declined(db_url: str, hsm_server: Any) -> None:
    async def body(h: Harness) -> None:
        pan = (await chip_programme(h, "CHIPR", "sm4", "622620"))[0]
        c = h.client
        assert (await c.request(message(c, pan, 100, **chip_fields("sm4", pan, 100, 5))))["39"] == "00"
        replay = message(c, pan, 100, **chip_fields("sm4", pan, 100, 5))  # a new STAN, the same cryptogram
        assert (await c.request(replay))["39"] == "05"
        assert await reason_of(h, replay["11"]) == "atc_replayed"
        lower = message(c, pan, 100, **chip_fields("sm4", pan, 100, 4))
        assert (await c.request(lower))["39"] == "05"
        assert (await c.request(message(c, pan, 100, **chip_fields("sm4", pan, 100, 6))))["39"] == "00"
        assert await balance(h, pan) == f"{10_000 - 200:012d}"

    run(db_url, hsm_server, body)


def test_chip_data_missing_or_malformed(db_url: str, hsm_server: Any) -> None:
    async def body(h: Harness) -> None:
        pan = (await chip_programme(h, "CHIPM", "3des", "622630"))[0]
        c = h.client
        bare = message(c, pan, 100, **{"22": "051"})
        assert (await c.request(bare))["39"] == "30"
        assert await reason_of(h, bare["11"]) == "chip_data_missing"
        partial = card_tags("3des", pan, 100, 1)
        del partial["9F37"]
        assert (await c.request(message(c, pan, 100, **{"22": "051", "48": de48(partial)})))["39"] == "30"
        for junk in ("ZZ", "9F2608", "ABC"):  # not hex; a value running past the end; odd length
            answer = await c.request(message(c, pan, 100, **{"22": "071", "48": junk}))
            assert answer["39"] == "30"
        assert await balance(h, pan) == f"{10_000:012d}"

    run(db_url, hsm_server, body)


def test_fallback_declined_or_flagged(db_url: str, hsm_server: Any) -> None:
    async def body(h: Harness) -> None:
        strict = (await chip_programme(h, "CHIPD", "3des", "622640"))[0]
        lax = (await chip_programme(h, "CHIPF", "3des", "622641", chip_fallback="flag"))[0]
        plain = (await chip_programme(h, "CHIPN", "3des", "622642"))[0]
        c = h.client
        swiped = message(c, strict, 500, **{"22": "021"})
        assert (await c.request(swiped))["39"] == "57"
        assert await reason_of(h, swiped["11"]) == "chip_fallback"
        assert (await c.request(message(c, strict, 500, **{"22": "011"})))["39"] == "57"
        # a balance enquiry by swipe is no chip sale: not a fallback
        assert (await c.request(message(c, strict, None, proc="310000", **{"22": "021"})))["39"] == "00"
        flagged = message(c, lax, 500, **{"22": "021"})
        assert (await c.request(flagged))["39"] == "00"

        async def history(conn: Any) -> list[dict[str, Any]]:
            cid = await conn.fetchval("SELECT card_id FROM auth_requests WHERE stan = $1", flagged["11"])
            return await catalog.card_history(conn, cid)

        rows = await h.pool.run(history)
        assert [r["flags"] for r in rows if r["txn"] == "purchase"] == [["chip_fallback"]]
        # the product changed to decline: the next swipe is declined (read with each batch)
        await h.pool.run(catalog.update_product, "CHIPF", {"chip_fallback": "decline"})
        assert (await c.request(message(c, lax, 500, **{"22": "021"})))["39"] == "57"
        # a card of a declining product read by its chip goes on
        assert (await c.request(message(c, plain, 500, **chip_fields("3des", plain, 500, 1))))["39"] == "00"

    run(db_url, hsm_server, body)


def test_hsm_unavailable_is_96(db_url: str, hsm_server: Any) -> None:
    async def body(h: Harness) -> None:
        pan = (await chip_programme(h, "CHIPH", "3des", "622650"))[0]

        async def drop_key(conn: Any) -> None:  # a chip product whose key is not there: not verifiable
            await conn.execute("UPDATE products SET imk_ac = NULL WHERE code = 'CHIPH'")

        await h.pool.run(drop_key)
        h.service._chip_keys.clear()
        c = h.client
        answer = await c.request(message(c, pan, 100, **chip_fields("3des", pan, 100, 1)))
        assert answer["39"] == "96" and "48" not in answer

    run(db_url, hsm_server, body)


# -- the rules, pure ----------------------------------------------------------------------------------
TODAY = dt.date(2026, 11, 25)


def chip_card(**kw: Any) -> CardState:
    product = Product(
        1, "P", "reloadable", "156", 10_000, 5_000, 5_000, 9, bool(kw.pop("pin_required", False)), None, None,
        chip=str(kw.pop("chip", "3des")), chip_fallback=str(kw.pop("fallback", "decline")),
        no_cvm_limit=300, no_cvm_cumulative_limit=500,
    )
    return CardState(1, 2, product, "active", "2912", 0, None, 0, TODAY, 0, 0, 0, 0, 0, 5_000, **kw)


def chip_req(
    mode: str, amount: int = 100, result: chip.Arqc = chip.Arqc.OK, atc: int = 3, **kw: Any
) -> Request:
    data = chip.Chip(card_tags("3des", "6212340000000000001", amount, atc), result=result)
    return Request(key="k", mti="0200", txn=kw.pop("txn", Txn.PURCHASE), amount=amount, entry_mode=mode,
                   chip=data if mode[:2] in chip.CHIP_ENTRY else None, **kw)


def test_rules_reasons_are_known() -> None:
    for reason in ("arqc_failed", "chip_data_missing", "atc_replayed", "chip_fallback", "chip_unverified"):
        assert reason in rules.REASONS
    assert rules.code_of("chip_data_missing") == "30" and rules.code_of("chip_fallback") == "57"
    assert rules.code_of("arqc_failed") == rules.code_of("atc_replayed") == "05"


def test_rules_chip() -> None:
    card = chip_card()
    assert chip.check(card, chip_req("051", result=chip.Arqc.BAD)) == "arqc_failed"
    assert chip.check(card, chip_req("051", result=chip.Arqc.ERROR)) == "chip_unverified"
    assert chip.check(card, chip_req("051", atc=3)) is None and card.last_atc == 3 and card.chip_dirty
    assert chip.check(card, chip_req("051", atc=3)) == "atc_replayed"
    assert chip.check(card, chip_req("071", atc=2)) == "atc_replayed"
    bare = Request(key="k", mti="0200", txn=Txn.PURCHASE, entry_mode="051")
    assert chip.check(card, bare) == "chip_data_missing"
    assert chip.check(card, Request(key="k", mti="0200", txn=Txn.REFUND, entry_mode="051")) is None
    assert chip.check(card, chip_req("021")) == "chip_fallback"
    assert chip.check(card, chip_req("011", txn=Txn.PREAUTH)) == "chip_fallback"
    assert chip.check(card, chip_req("811", card_not_present=True)) is None
    assert chip.check(card, chip_req("031", payment_code="x")) is None
    lax = chip_card(fallback="flag")
    swiped = chip_req("021")
    assert chip.check(lax, swiped) is None and swiped.flags == ("chip_fallback",)
    magstripe = chip_card(chip="none")
    assert chip.check(magstripe, chip_req("021")) is None
    assert chip.check(magstripe, chip_req("051", result=chip.Arqc.NONE)) is None


def test_rules_contactless_cvm() -> None:
    card = chip_card(pin_required=True)
    assert rules.check_pin(card, chip_req("071", 300), 3) is None  # within the no-CVM limit
    assert rules.check_pin(card, chip_req("071", 301), 3) == "pin_missing"
    assert rules.check_pin(card, chip_req("051", 100), 3) == "pin_missing"  # contact: the product's rule
    relaxed = chip_card(pin_required=False)
    assert rules.check_pin(relaxed, chip_req("071", 301), 3) == "pin_missing"  # beyond: a PIN, always
    assert rules.check_pin(relaxed, chip_req("071", 100, result=chip.Arqc.NONE), 3) == "pin_missing"
    # the counters: approved no-CVM sales add, an approved PIN-verified one resets, a decline does neither
    for amount in (200, 300):
        r = chip_req("071", amount)
        assert rules.check_pin(card, r, 3) is None
        chip.after_decision(card, r, Decision("00", posted=True))
    assert (card.no_cvm_amount, card.no_cvm_count) == (500, 2)
    assert rules.check_pin(card, chip_req("071", 1), 3) == "pin_missing"  # cumulative 500 reached
    chip.after_decision(card, chip_req("071", 100, pin=Pin.OK), Decision("51"))
    assert card.no_cvm_count == 2
    chip.after_decision(card, chip_req("071", 100, pin=Pin.OK), Decision("00", posted=True))
    assert (card.no_cvm_amount, card.no_cvm_count) == (0, 0)


def test_response_tlv() -> None:
    arpc = bytes.fromhex("0102030405060708")
    raw = chip.response_tlv(arpc, b"00")
    assert raw.hex().upper() == "910A01020304050607083030" + "8A023030"
    assert tlv.as_dict(tlv.decode(raw)) == {"91": arpc + b"00", "8A": b"00"}
