"""KYC tiers decide limits (issue 16 item 2) and cards owned by cardholders (item 1 / 3 of the brief):
real PostgreSQL, the real HSM, the CLI through click's runner and the host over a real H2H socket.

PBOC defaults: an anonymous card holds at most 1,000 yuan, a named one 5,000 yuan. The cap is the
lower of the product's max balance and its tier's, read in every posting batch, so a tier change (a
KYC decision, an owner given, an AML hit) takes effect on the very next request.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import trio

from host import cardholders, rules
from host.check import run_checks
from ops.actor import cli_actor
from tests.fixtures.pg import query
from tests.host.harness import Harness, message, programme, running_host
from tests.host.helpers import cli_env, ok, run


@pytest.fixture(scope="module")
def env(db_url: str, hsm_server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    e = cli_env(tmp_path_factory.mktemp("kyc"), db_url, hsm_server.env)
    # these tests load up to 4,000.00 CNY at once to reach the tiers' caps: above the four-eyes amount
    e["PAYSWITCH_CONSOLE_FOUR_EYES_MINOR"] = "1000000"
    ok(
        e,
        "product",
        "add",
        "KYCL",
        "--kind",
        "reloadable",
        "--bin",
        "621292",
        "--max-balance",
        "10000.00",
        "--no-pin",
    )
    return e


def _refused(result: Any, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    for n in needles:
        assert n in result.output, result.output


def _issue(env: dict[str, str], product: str = "KYCL", *owner: str) -> int:
    extra = ["--cardholder", owner[0]] if owner else []
    (card,) = ok(env, "card", "issue", "--product", product, "--activate", *extra)["cards"]
    return int(card["card_id"])


def _named(env: dict[str, str], name: str, id_number: str) -> int:
    out = ok(env, "cardholder", "add", "--name", name, "--id-type", "resident_id", "--id-number", id_number)
    assert out["kyc_level"] == "named"
    return int(out["cardholder_id"])


def test_products_declare_the_pboc_tier_caps(env: dict[str, str]) -> None:
    p = ok(env, "product", "show", "KYCL")
    assert p["issue_tier"] == "anonymous" and p["max_balance_minor"] == 1_000_000
    assert (
        p["max_balance_anonymous_minor"],
        p["max_balance_named_minor"],
        p["max_balance_verified_minor"],
    ) == (
        100_000,
        500_000,
        500_000,
    )
    # each capped by the product's own max balance
    ok(
        env,
        "product",
        "add",
        "KYCSMALL",
        "--kind",
        "reloadable",
        "--bin",
        "621293",
        "--max-balance",
        "300.00",
    )
    small = ok(env, "product", "show", "KYCSMALL")
    assert small["max_balance_anonymous_minor"] == small["max_balance_named_minor"] == 30_000
    _refused(
        run(env, "product", "update", "KYCSMALL", "--max-balance-named", "400.00"),
        "at most the product's max",
    )
    changed = ok(
        env, "product", "update", "KYCSMALL", "--issue-tier", "verified", "--max-balance-anonymous", "100.00"
    )
    assert changed["changed"] == ["issue_tier", "max_balance_anonymous"]
    assert changed["product"]["issue_tier"] == "verified"
    listed = {p["code"]: p for p in ok(env, "product", "list")["products"]}
    assert listed["KYCSMALL"]["max_balance_anonymous_minor"] == 10_000


def test_the_tier_caps_card_load_and_a_tier_change_takes_effect_at_once(
    env: dict[str, str], db_url: str
) -> None:
    card = _issue(env)
    assert ok(env, "card", "load", str(card), "--amount", "1000.00")["balance_minor"] == 100_000
    over = run(env, "card", "load", str(card), "--amount", "0.01")
    _refused(over, "KYC tier maximum (anonymous: 1,000.00 CNY)")
    (reason,) = query(
        db_url,
        "SELECT reason, response_code FROM auth_requests WHERE card_id = $1 AND response_code <> '00'",
        card,
    )
    assert tuple(reason) == ("tier_max_balance", "61")

    owner = _named(env, "Dan Sun", "110101199001010011")
    assigned = ok(env, "card", "assign", str(card), str(owner))
    assert assigned["tier"] == "named" and assigned["cardholder_id"] == owner
    event = ok(env, "card", "events", str(card))[0]  # newest first: who gave the card its owner
    assert (event["action"], event["reason"]) == ("assign", f"to cardholder {owner}")
    assert event["actor"] == cli_actor()
    shown = ok(env, "card", "show", str(card))
    assert (
        shown["cardholder_id"] == owner and shown["cardholder_name"] == "Dan Sun" and shown["tier"] == "named"
    )
    assert shown["tier_max_balance_minor"] == 500_000
    assert ok(env, "card", "load", str(card), "--amount", "4000.00")["balance_minor"] == 500_000
    _refused(run(env, "card", "load", str(card), "--amount", "0.01"), "(named: 5,000.00 CNY)")

    # verified: the product's verified cap (raised here) applies from the next load
    ok(env, "product", "update", "KYCL", "--max-balance-verified", "8000.00")
    d = ok(env, "cardholder", "kyc", str(owner), "--approve", "--reason", "passport seen at the desk")
    assert (d["from_level"], d["to_level"], d["decision"], d["actor"]) == (
        "named",
        "verified",
        "approved",
        cli_actor(),
    )
    assert ok(env, "card", "load", str(card), "--amount", "3000.00")["balance_minor"] == 800_000
    _refused(run(env, "card", "load", str(card), "--amount", "0.01"), "(verified: 8,000.00 CNY)")

    # an AML hit (review, then confirmed) caps the card as an anonymous one: even 0.01 is refused now
    for status in ("review", "confirmed"):
        query(db_url, "UPDATE cardholders SET aml_status = $2 WHERE id = $1", owner, status)
        _refused(run(env, "card", "load", str(card), "--amount", "0.01"), "(anonymous: 1,000.00 CNY)")
        assert ok(env, "card", "show", str(card))["tier"] == "anonymous"
    query(db_url, "UPDATE cardholders SET aml_status = 'clear' WHERE id = $1", owner)
    # the product's own cap keeps its own reason
    ok(env, "product", "update", "KYCL", "--max-balance-verified", "10000.00")
    ok(env, "card", "load", str(card), "--amount", "2000.00")
    _refused(run(env, "card", "load", str(card), "--amount", "0.01"), "product's maximum balance")
    failed = [r for r in trio.run(_checks, db_url) if not r.ok]
    assert not failed, failed


async def _checks(db_url: str) -> list[Any]:
    from ops.pgpool import PgPool

    with PgPool(db_url, min_size=1, max_size=1) as pool:
        return list(await pool.run(run_checks))


def test_kyc_decisions_are_events_with_who_and_why(env: dict[str, str], db_url: str) -> None:
    anon = ok(env, "cardholder", "add", "--name", "Eve Qian")["cardholder_id"]
    _refused(run(env, "cardholder", "kyc", str(anon), "--approve", "--reason", "docs"), "no ID number")
    assert run(env, "cardholder", "kyc", str(anon), "--approve").exit_code == 2  # --reason is required
    assert run(env, "cardholder", "kyc", str(anon), "--reason", "x").exit_code == 2  # no decision
    assert run(env, "cardholder", "kyc", str(anon), "--approve", "--reject", "--reason", "x").exit_code == 2
    _refused(run(env, "cardholder", "kyc", str(anon), "--approve", "--reason", "   "), "--reason")

    me = _named(env, "Fay Zhou", "110101199001010022")
    ok(env, "cardholder", "kyc", str(me), "--reject", "--reason", "photo unreadable")
    ok(env, "cardholder", "kyc", str(me), "--approve", "--reason", "second upload fine")
    _refused(run(env, "cardholder", "kyc", str(me), "--approve", "--reason", "again"), "verified already")
    _refused(run(env, "cardholder", "kyc", str(me), "--reject", "--reason", "x"), "--downgrade-to")
    _refused(
        run(env, "cardholder", "kyc", str(me), "--downgrade-to", "verified", "--reason", "x"), "lower level"
    )
    ok(env, "cardholder", "kyc", str(me), "--downgrade-to", "anonymous", "--reason", "document forged")
    shown = ok(env, "cardholder", "show", str(me))
    assert shown["kyc_level"] == "anonymous"
    got = [(e["decision"], e["from_level"], e["to_level"], e["reason"]) for e in shown["kyc_events"]]
    assert got == [
        ("registered", "anonymous", "named", "name and ID number given"),
        ("rejected", "named", "named", "photo unreadable"),
        ("approved", "named", "verified", "second upload fine"),
        ("downgraded", "verified", "anonymous", "document forged"),
    ]
    assert {e["actor"] for e in shown["kyc_events"]} == {cli_actor()} and all(
        e["at"] for e in shown["kyc_events"]
    )
    # append-only
    with pytest.raises(Exception, match=r"append-only|not allowed|cannot"):
        query(db_url, "DELETE FROM kyc_events WHERE cardholder_id = $1", me)
    # a new ID on a verified cardholder: named again (the document checked was another)
    again = _named(env, "Gus Ma", "110101199001010033")
    ok(env, "cardholder", "kyc", str(again), "--approve", "--reason", "seen")
    u = ok(env, "cardholder", "update", str(again), "--id-type", "passport", "--id-number", "G99887766")
    assert u["kyc_level"] == "named" and u["changed"] == ["id_number", "id_type"]


def test_issue_and_assign_check_the_tier(env: dict[str, str], db_url: str) -> None:
    ok(
        env,
        "product",
        "add",
        "KYCNAMED",
        "--kind",
        "reloadable",
        "--bin",
        "621294",
        "--issue-tier",
        "named",
        "--no-pin",
    )
    anon = str(ok(env, "cardholder", "add", "--name", "Hal Wu")["cardholder_id"])
    named = str(_named(env, "Ivy He", "110101199001010044"))
    refused = run(env, "card", "issue", "--product", "KYCNAMED", "--cardholder", anon)
    _refused(refused, f"cardholder {anon} is anonymous", "KYCNAMED", "named")
    before = query(db_url, "SELECT count(*) FROM cards")[0][0]
    card = _issue(env, "KYCNAMED", named)
    assert query(db_url, "SELECT count(*) FROM cards")[0][0] == before + 1  # nothing issued when refused
    assert [c["card_id"] for c in ok(env, "card", "list", "--cardholder", named)["cards"]] == [card]
    owned = ok(env, "cardholder", "show", named)["owned_cards"]
    assert [c["card_id"] for c in owned] == [card]

    # assign: an anonymous card of a named-only product to an anonymous cardholder is refused
    loose = _issue(env, "KYCL")
    gift = _issue(env, "KYCNAMED", named)
    _refused(run(env, "card", "assign", str(gift), anon), f"cardholder {anon} is anonymous")
    _refused(run(env, "card", "assign", str(gift), named), "theirs already")
    ok(env, "card", "assign", str(loose), anon)
    _refused(run(env, "card", "assign", str(loose), named), f"cardholder {anon}'s already")
    # AML review counts as anonymous; confirmed and closed cardholders get no card at all
    query(db_url, "UPDATE cardholders SET aml_status = 'review' WHERE id = $1", int(named))
    _refused(run(env, "card", "issue", "--product", "KYCNAMED", "--cardholder", named), "AML review")
    query(db_url, "UPDATE cardholders SET aml_status = 'confirmed' WHERE id = $1", int(named))
    _refused(run(env, "card", "issue", "--product", "KYCL", "--cardholder", named), "confirmed AML match")
    query(db_url, "UPDATE cardholders SET aml_status = 'clear' WHERE id = $1", int(named))
    spare = str(_named(env, "Jo Lu", "110101199001010055"))
    ok(env, "cardholder", "close", spare)
    _refused(run(env, "card", "issue", "--product", "KYCL", "--cardholder", spare), "is closed")
    _refused(run(env, "card", "assign", str(_issue(env)), spare), "is closed")
    _refused(run(env, "card", "assign", str(card), "nobody"), "cardholder id")
    _refused(run(env, "card", "list", "--cardholder", "424242"), "no cardholder 424242")


def test_the_tier_caps_topups_over_h2h_from_the_next_request(db_url: str, hsm_server: Any) -> None:
    async def main() -> None:
        h: Harness
        async with running_host(db_url, hsm_server) as h:
            (pan,) = await programme(h, "KYCH2H", cards=1, load=0, bin_prefix="621295", max_balance=1_000_000)
            c = h.client

            async def topup(amount: int) -> str:
                answer = await c.request(message(c, pan, amount, proc="210000"))
                return str(answer["39"])

            assert await topup(100_000) == "00"
            assert await topup(1) == "61"
            assert await h.pool.run(_topup_declines) == ["tier_max_balance"]
            assert rules.code_of("tier_max_balance") == "61"
            new = cardholders.NewCardholder("Kai Tang", "resident_id", "110101199001010066")
            owner = await cardholders.register(h.pool, h.crypto, new, "test:kyc", aml_threshold=88)
            card_id = await h.pool.run(_card_of, pan)
            await h.pool.run(cardholders.assign_cards, [card_id], owner.cardholder_id)
            assert await topup(400_000) == "00"  # named now: up to 5,000 yuan, from this request on
            assert await topup(1) == "61"
            await h.pool.run(_set_aml, owner.cardholder_id, "review")
            assert await topup(1) == "61"
            assert await h.pool.run(_topup_declines) == ["tier_max_balance"] * 3
            failed = [r for r in await h.pool.run(run_checks) if not r.ok]
            assert not failed, failed

    trio.run(main)


async def _topup_declines(conn: Any) -> list[str]:
    rows = await conn.fetch("SELECT reason FROM auth_requests WHERE txn = 'topup' AND response_code = '61'")
    return [r["reason"] for r in rows]


async def _card_of(conn: Any, pan: str) -> int:
    masked = pan[:6] + "*" * (len(pan) - 10) + pan[-4:]
    return int(await conn.fetchval("SELECT id FROM cards WHERE pan_masked = $1", masked))


async def _set_aml(conn: Any, cardholder_id: int, status: str) -> None:
    await conn.execute("UPDATE cardholders SET aml_status = $2 WHERE id = $1", cardholder_id, status)


def test_a_gift_products_face_value_fits_the_tier_its_cards_are_issued_at() -> None:
    """A gift card is loaded with its face value at activation, past the top-up rules: the product
    itself must keep it within the maximum of its issue tier (PBOC: unnamed at most 1,000 yuan)."""
    from host.catalog import CatalogError, ProductSpec, tier_caps

    gift = ProductSpec(code="GIFT2K", kind="fixed_amount", initial_amount=200_000, max_balance=200_000)
    with pytest.raises(CatalogError, match=r"face value 2,000.00 CNY is above the anonymous maximum"
                       r" balance 1,000.00 CNY: give --max-balance-anonymous"):
        tier_caps(gift)
    assert tier_caps(replace(gift, max_balance_anonymous=200_000))["max_balance_anonymous"] == 200_000
    assert tier_caps(replace(gift, issue_tier="named"))["max_balance_named"] == 200_000
    assert tier_caps(replace(gift, initial_amount=100_000))["max_balance_anonymous"] == 100_000
