"""The host over a real H2H socket: real PostgreSQL, the real HSM process, real TCP."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from host.check import run_checks
from specs.framing import frame
from tests.host.harness import Harness, message, pin_block, programme, reversal, running_host


def run(db_url: str, hsm_server: Any, body: Callable[[Harness], Awaitable[None]], **host: Any) -> None:
    async def main() -> None:
        async with running_host(db_url, hsm_server, **host) as h:
            await body(h)
            failed = [r for r in await h.pool.run(run_checks) if not r.ok]
            assert not failed, failed

    trio.run(main)


def test_purchase_balance_duplicate_reversal(db_url: str, hsm_server: Any) -> None:
    async def body(h: Harness) -> None:
        pan, other, _ = await programme(h, "H2HA", load=10_000)
        c = h.client
        buy = message(c, pan, 1_234)
        first = await c.request(buy)
        assert first["39"] == "00" and len(first["38"]) == 6 and first["11"] == buy["11"]
        assert "2" not in first and first["4"] == buy["4"] and "15" in first
        again = await c.request(buy)
        assert again["39"] == "00" and again["38"] == first["38"]
        bal = await c.request(message(c, pan, None, proc="310000"))
        assert bal["39"] == "00" and bal["54"] == "1001156C0000000087661002156C000000008766"
        assert (await c.request(reversal(c, buy)))["39"] == "00"
        assert (await c.request(reversal(c, buy, mti="0421")))["39"] == "00"
        bal = await c.request(message(c, pan, None, proc="310000"))
        assert bal["54"].endswith("C000000010000")
        swiped = message(c, pan, 700)
        assert (await c.request(swiped))["39"] == "00"
        no_pan = reversal(c, swiped)
        del no_pan["2"]  # a reversal of a swiped purchase carries no PAN: found through DE90
        assert (await c.request(no_pan))["39"] == "00"
        bal = await c.request(message(c, pan, None, proc="310000"))
        assert bal["54"].endswith("C000000010000")
        late = message(c, other, 500)
        assert (await c.request(reversal(c, late)))["39"] == "00"
        assert (await c.request(late))["39"] == "05"
        top = await c.request(message(c, other, 2_000, proc="210000"))
        assert top["39"] == "00"
        assert (await c.request(message(c, other, 1_000_000, proc="210000")))["39"] == "61"
        assert (await c.request(message(c, other, 20_000)))["39"] == "51"
        assert (await c.request(message(c, "6212349999999999994", 1)))["39"] == "14"

    run(db_url, hsm_server, body)


def test_pin_verification_and_tries(db_url: str, hsm_server: Any) -> None:
    async def body(h: Harness) -> None:
        pan, p2, _ = await programme(h, "H2HP", bin_prefix="621235", pin_required=True)
        c = h.client
        assert (await c.request(message(c, pan, 100)))["39"] == "55"  # PIN required, none sent
        assert (await c.request(message(c, pan, 100, **{"52": pin_block(pan)})))["39"] == "00"
        wrong = pin_block(pan, "654321")
        codes = [(await c.request(message(c, pan, 100, **{"52": wrong})))["39"] for _ in range(3)]
        assert codes == ["55", "55", "75"]
        assert (await c.request(message(c, pan, 100, **{"52": pin_block(pan)})))["39"] == "75"
        assert (await c.request(message(c, p2, 100, **{"52": pin_block(p2)})))["39"] == "00"

    run(db_url, hsm_server, body)


def test_void_refund_preauth_over_the_wire(db_url: str, hsm_server: Any) -> None:
    async def body(h: Harness) -> None:
        (pan,) = await programme(h, "H2HV", bin_prefix="621236", cards=1, load=10_000)
        c = h.client
        buy = message(c, pan, 3_000)
        assert (await c.request(buy))["39"] == "00"
        void = message(c, pan, 3_000, proc="200000", **{"102": buy["37"]})
        assert (await c.request(void))["39"] == "00"
        buy2 = message(c, pan, 4_000)
        await c.request(buy2)
        refund = message(c, pan, 1_500, mti="0220", proc="200000", **{"102": buy2["37"]})
        assert (await c.request(refund))["39"] == "00"
        over = message(c, pan, 2_501, mti="0220", proc="200000", **{"102": buy2["37"]})
        assert (await c.request(over))["39"] == "13"
        pre = message(c, pan, 5_000, mti="0100", proc="030000", cond="06")
        assert (await c.request(pre))["39"] == "00"
        done = message(c, pan, 4_500, proc="000000", cond="06")  # no DE102: the card's open hold
        assert (await c.request(done))["39"] == "00"
        bal = await c.request(message(c, pan, None, proc="310000"))
        assert bal["54"].endswith("C000000003000")
        pre2 = message(c, pan, 1_000, mti="0100", proc="030000", cond="06")
        assert (await c.request(pre2))["39"] == "00"
        pvoid = message(c, pan, 1_000, mti="0100", proc="200000", cond="06")
        assert (await c.request(pvoid))["39"] == "00"
        assert (await h.pool.run(_holds)) == {"posted": 1, "voided": 1}

    run(db_url, hsm_server, body)


async def _holds(conn: Any) -> dict[str, int]:
    return {
        r["state"]: r["n"] for r in await conn.fetch("SELECT state, count(*) AS n FROM holds GROUP BY state")
    }


def test_bad_input_and_network_management(db_url: str, hsm_server: Any) -> None:
    async def body(h: Harness) -> None:
        (pan,) = await programme(h, "H2HB", bin_prefix="621237", cards=1)
        c = h.client
        echo = await c.request(
            {"t": "0800", "7": c.now_de7(), "11": c.next_stan(), "32": "48880000", "70": "301"}
        )
        assert echo["t"] == "0810" and echo["39"] == "00"
        odd = await c.request(message(c, pan, 100, proc="990000"))
        assert odd["t"] == "0210" and odd["39"] == "12"
        # a bad digit in DE4: MTI and DE11 are readable, so the answer is 30
        good = c.codec.encode(message(c, pan, 100, **{"11": "000999", "7": "1125101010"}))
        bad = good.replace(b"000000000100", b"0000000001X0", 1)
        await c.send_raw(frame(bad) + frame(b"") + frame(b"garbage!") + frame(b"\xff" * 40))
        with trio.fail_after(5):
            while not any(m.get("11") == "000999" for m in c.unmatched):
                await trio.sleep(0.01)
        answer = next(m for m in c.unmatched if m.get("11") == "000999")
        assert answer["t"] == "0210" and answer["39"] == "30"
        # the link is still up
        assert (await c.request(message(c, pan, 100)))["39"] == "00"

    run(db_url, hsm_server, body)


def test_many_in_flight_on_several_connections(db_url: str, hsm_server: Any) -> None:
    async def body(h: Harness) -> None:
        pans = await programme(h, "H2HM", bin_prefix="621238", cards=20, load=100_000)
        clients = [h.client, await h.connect(), await h.connect()]
        results: list[str] = []

        async def one(i: int) -> None:
            c = clients[i % len(clients)]
            msg = message(c, pans[i % len(pans)], 100 + i)
            resp = await c.request(msg)
            results.append(resp["39"])
            if i % 7 == 0:  # a retransmission while others are in flight
                assert (await c.request(msg))["38"] == resp["38"]

        async with trio.open_nursery() as n:
            for i in range(600):
                n.start_soon(one, i)
        assert results == ["00"] * 600
        total = await h.pool.run(_spent)
        assert total == sum(100 + i for i in range(600))

    run(db_url, hsm_server, body, writers=3, batch_max=64)


async def _spent(conn: Any) -> int:
    return int(
        await conn.fetchval(
            "SELECT sum(t.amount) FROM transfers t JOIN cards c ON c.id = t.card_id JOIN products p"
            " ON p.id = c.product_id WHERE t.code = 'purchase' AND p.code = 'H2HM'"
        )
    )


def test_hold_expiry_sweeper_and_key_change(db_url: str, hsm_server: Any) -> None:
    import datetime as dt

    from host import catalog

    async def body(h: Harness) -> None:
        (pan,) = await programme(h, "H2HS", bin_prefix="621241", cards=1, load=10_000)
        c = h.client
        pre = message(c, pan, 4_000, mti="0100", proc="030000", cond="06")
        assert (await c.request(pre))["39"] == "00"
        assert await h.service.sweep_once() == 0  # not due yet
        later = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
        assert await h.service.sweep_once(later) == 1
        assert await h.service.sweep_once(later) == 0
        assert (await h.pool.run(_holds)).get("expired") == 1
        done = message(c, pan, 4_000, cond="06", **{"102": pre["37"]})
        assert (await c.request(done))["39"] == "12"
        bal = await c.request(message(c, pan, None, proc="310000"))
        assert bal["54"].endswith("C000000010000")

        # 0800/101: a new ZPK under the link ZMK, imported through the HSM
        zmk = await h.crypto.hsm.form_key("000", ["0123456789ABCDEFFEDCBA9876543210", "0" * 32], "U")
        await h.pool.run(catalog.set_link, "48880000", "3des", zmk.under_lmk, None, None)
        h.service._links.clear()
        new = await h.crypto.hsm.generate_key(
            "001", "U", under=zmk.under_lmk, under_tmk=False, export_scheme="U"
        )
        assert new.under_kek is not None
        msg = {
            "t": "0800",
            "7": c.now_de7(),
            "11": c.next_stan(),
            "32": "48880000",
            "70": "101",
            "48": new.under_kek + new.check_value[:16],
        }
        assert (await c.request(msg))["39"] == "00"
        assert await h.pool.run(_zpk_check) == new.check_value
        msg = {**msg, "11": c.next_stan(), "48": new.under_kek + "0" * 16}
        assert (await c.request(msg))["39"] == "96"  # wrong check value: refused

    run(db_url, hsm_server, body)


async def _zpk_check(conn: Any) -> str:
    return str(await conn.fetchval("SELECT zpk_check FROM links WHERE institution_id = '48880000'"))


def test_link_mac(db_url: str, hsm_server: Any) -> None:
    from host import catalog

    async def body(h: Harness) -> None:
        (pan,) = await programme(h, "H2HMAC", bin_prefix="621242", cards=1, load=10_000)
        c = h.client
        zak = await h.crypto.hsm.form_key("008", ["0123456789ABCDEFFEDCBA9876543210", "0" * 32], "U")
        await h.pool.run(catalog.set_link, "48880000", "3des", None, None, None, zak.under_lmk)
        h.service._links.clear()
        msg = message(c, pan, 1_000)
        raw = c.codec.encode({**msg, "128": bytes(8)})
        mac = await h.crypto.hsm.h2h_mac(zak.under_lmk, c.codec.mac_block(raw))
        signed = {**msg, "128": bytes.fromhex(mac[:16])}
        answer = await c.request(signed)
        assert answer["39"] == "00" and isinstance(answer.get("128"), bytes)
        back = c.codec.encode(answer)
        assert await h.crypto.hsm.verify_h2h_mac(zak.under_lmk, c.codec.mac_block(back), answer["128"].hex())
        forged = {**message(c, pan, 1_000), "128": bytes.fromhex(mac[:16])}
        assert (await c.request(forged))["39"] == "96"
        unsigned = message(c, pan, 1_000)
        assert (await c.request(unsigned))["39"] == "96"
        bal = await c.request({**message(c, pan, None, proc="310000"), "128": bytes(8)})
        assert bal["39"] == "96"  # a wrong MAC is refused whatever the request
        # a request that cannot be acted on (an unknown DE3): its 12 is signed when the request was
        # authentic, so the switch can trust it (and reverse nothing); a forged one's 12 is not
        odd = {**message(c, pan, 100), "3": "002781"}
        raw = c.codec.encode({**odd, "128": bytes(8)})
        mac = await h.crypto.hsm.h2h_mac(zak.under_lmk, c.codec.mac_block(raw))
        refused = await c.request({**odd, "128": bytes.fromhex(mac[:16])})
        assert refused["39"] == "12" and isinstance(refused.get("128"), bytes)
        back = c.codec.encode(refused)
        assert await h.crypto.hsm.verify_h2h_mac(zak.under_lmk, c.codec.mac_block(back), refused["128"].hex())
        forged_odd = await c.request({**message(c, pan, 100), "3": "002781", "128": bytes(8)})
        assert forged_odd["39"] == "12" and "128" not in forged_odd
        await h.pool.run(catalog.set_link, "48880000", "3des", None, None, None, "", True)  # no MAC
        h.service._links.clear()
        bal = await c.request(message(c, pan, None, proc="310000"))
        assert bal["39"] == "00" and bal["54"].endswith("C000000009000")  # only the signed purchase

    run(db_url, hsm_server, body)


def test_garbage_never_takes_the_link_down(db_url: str, hsm_server: Any) -> None:
    import random

    async def body(h: Harness) -> None:
        (pan,) = await programme(h, "H2HF", bin_prefix="621243", cards=1, load=10_000)
        c = h.client
        rnd = random.Random(5)
        good = c.codec.encode(message(c, pan, 100))
        frames = []
        for i in range(400):
            if i % 2:
                raw = bytearray(good)
                for _ in range(rnd.randint(1, 6)):
                    raw[rnd.randrange(len(raw))] = rnd.randrange(256)
                frames.append(bytes(raw[: rnd.randint(4, len(raw))]))
            else:
                frames.append(bytes(rnd.randrange(256) for _ in range(rnd.randint(0, 300))))
        await c.send_raw(b"".join(frame(f) for f in frames))
        # every answer to the garbage is a 30, a 12 or (a mutated field still valid) a normal decision
        assert (await c.request(message(c, pan, 100)))["39"] == "00"
        other = await h.connect()
        assert (await other.request(message(other, pan, None, proc="310000")))["39"] == "00"

    run(db_url, hsm_server, body)


def test_a_retransmission_key_reused_for_another_request_is_answered_94(db_url: str, hsm_server: Any) -> None:
    """DE32 + DE7 + DE11 + DE41 + MTI again with another card, amount or processing code is not a
    retransmission: 94, nothing posted, and the first answer (its DE54, its auth code) is not given out.
    Nor is a purchase replayed after its reversal. A true retransmission still gets the first answer."""

    async def body(h: Harness) -> None:
        pan, other, _ = await programme(h, "H2H94", bin_prefix="621263")
        c = h.client
        buy = message(c, pan, 300)
        first = await c.request(buy)
        assert first["39"] == "00"
        for changed in ({"2": other}, {"4": "000000000301"}, {"3": "210000"}):
            answer = await c.request({**buy, **changed})
            assert answer["39"] == "94" and "38" not in answer and "54" not in answer, changed
        again = await c.request(buy)
        assert (again["39"], again["38"]) == ("00", first["38"])
        assert (await c.request(reversal(c, buy)))["39"] == "00"
        assert (await c.request(buy))["39"] == "94"
        balance = await c.request(message(c, pan, None, proc="310000"))
        assert balance["54"].endswith("C000000010000")  # the purchase undone once, nothing else moved

    run(db_url, hsm_server, body)
