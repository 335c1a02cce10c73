"""Cardholders end to end (issue 16 item 1): real PostgreSQL, the real HSM, the CLI through click's runner.

Personal data is sealed by the HSM: the clear ID number, phone and e-mail are nowhere in the row; a
duplicate live ID is refused naming the cardholder who has it; search by name, phone, e-mail and ID
(the latter three by keyed hash); an update seals again; a cardholder owning an open card cannot close.
"""

from __future__ import annotations

from typing import Any

import pytest

from ops.actor import cli_actor
from tests.fixtures.pg import query
from tests.host.helpers import cli_env, ok, run

ALICE_ID = "11010119900307123X"
ALICE_PHONE = "+86 138-0000-0001"
ALICE_EMAIL = "Alice.Wang@Example.com"


@pytest.fixture(scope="module")
def env(db_url: str, hsm_server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return cli_env(tmp_path_factory.mktemp("cardholders"), db_url, hsm_server.env)


@pytest.fixture(scope="module")
def alice(env: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = ok(
        env,
        "cardholder",
        "add",
        "--name",
        "  Alice   Wang ",
        "--id-type",
        "resident_id",
        "--id-number",
        ALICE_ID,
        "--phone",
        ALICE_PHONE,
        "--email",
        ALICE_EMAIL,
        "--birth-date",
        "1990-03-07",
        "--address",
        "1 Campus Road",
    )
    return out


def _row_text(db_url: str, cardholder_id: int) -> str:
    (row,) = query(db_url, "SELECT row_to_json(h)::text FROM cardholders h WHERE id = $1", cardholder_id)
    return str(row[0])


def _one_line_refusal(result: Any, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    for n in needles:
        assert n in result.output, result.output


def test_registration_seals_id_phone_and_email(
    env: dict[str, str], db_url: str, alice: dict[str, Any]
) -> None:
    assert alice["kyc_level"] == "named" and alice["aml_status"] == "clear" and alice["aml_hits"] == []
    ch = alice["cardholder"]
    assert ch["name"] == "Alice Wang" and ch["birth_date"] == "1990-03-07" and ch["tier"] == "named"
    assert ch["id_number_masked"] == "*" * 14 + "123X"
    assert ch["phone_masked"] == "138****0001" and ch["email_masked"] == "a***@example.com"
    stored = _row_text(db_url, alice["cardholder_id"])
    for clear in (ALICE_ID, "13800000001", "138-0000-0001", "alice.wang@example.com", ALICE_EMAIL):
        assert clear.lower() not in stored.lower(), clear
    (row,) = query(db_url, "SELECT * FROM cardholders WHERE id = $1", alice["cardholder_id"])
    assert row["id_number_enc"] and row["phone_enc"] and row["email_enc"] and row["name_key"] == "alice wang"
    # registering with an ID makes the cardholder named at once: one `registered` event, with its actor
    events = query(db_url, "SELECT * FROM kyc_events WHERE cardholder_id = $1", alice["cardholder_id"])
    assert [(e["decision"], e["from_level"], e["to_level"], e["actor"]) for e in events] == [
        ("registered", "anonymous", "named", cli_actor())
    ]
    # what people see of it: masked forms only
    shown = run(env, "cardholder", "show", str(alice["cardholder_id"]))
    assert shown.exit_code == 0 and "138****0001" in shown.output and "registered" in shown.output
    assert ALICE_ID not in shown.output and "13800000001" not in shown.output


def test_without_an_id_a_cardholder_is_anonymous(env: dict[str, str]) -> None:
    bob = ok(env, "cardholder", "add", "--name", "Bob Li", "--phone", "13800000002")
    assert bob["kyc_level"] == "anonymous" and bob["cardholder"]["id_number_masked"] is None


def test_a_duplicate_live_id_is_refused_naming_the_cardholder(
    env: dict[str, str], alice: dict[str, Any]
) -> None:
    # the same document typed differently (lower-case x, spaces) is the same ID
    again = run(
        env,
        "cardholder",
        "add",
        "--name",
        "A. Wang",
        "--id-type",
        "resident_id",
        "--id-number",
        "110101 19900307 123x",
    )
    _one_line_refusal(again, f"cardholder {alice['cardholder_id']}")
    assert ALICE_ID not in again.output and "123x" not in again.output


def test_search_by_name_phone_email_and_id(env: dict[str, str], alice: dict[str, Any]) -> None:
    me = alice["cardholder_id"]

    def ids(*args: str) -> list[int]:
        return [r["cardholder_id"] for r in ok(env, "cardholder", "list", *args)["cardholders"]]

    assert me in ids("--name", "WANG") and me in ids("--name", "alice w") and me not in ids("--name", "zhao")
    assert ids("--phone", "138 0000 0001") == [me]
    assert ids("--email", "ALICE.WANG@example.com") == [me]
    assert ids("--id-number", ALICE_ID.lower()) == [me]
    assert ids("--phone", "13999999999") == []
    assert me in ids("--kyc-level", "named") and me not in ids("--kyc-level", "verified")
    assert me in ids("--aml-status", "clear", "--state", "active")
    # keyset pages
    first = ok(env, "cardholder", "list", "--limit", "1")
    assert len(first["cardholders"]) == 1 and first["next"] is not None
    rest = ok(env, "cardholder", "list", "--after", first["next"])
    assert first["cardholders"][0]["cardholder_id"] not in [r["cardholder_id"] for r in rest["cardholders"]]
    bad = run(env, "cardholder", "list", "--phone", "12")
    _one_line_refusal(bad, "phone number")


def test_update_seals_again_and_rescreens_a_name_change(
    env: dict[str, str], db_url: str, alice: dict[str, Any]
) -> None:
    me = alice["cardholder_id"]
    (before,) = query(db_url, "SELECT phone_enc, phone_hash FROM cardholders WHERE id = $1", me)
    u = ok(env, "cardholder", "update", str(me), "--phone", "13900000009", "--address", "2 Lake Road")
    assert u["changed"] == ["address", "phone"] and u["screened"] is False
    (after,) = query(db_url, "SELECT phone_enc, phone_hash, phone_masked FROM cardholders WHERE id = $1", me)
    assert after["phone_enc"] != before["phone_enc"] and after["phone_hash"] != before["phone_hash"]
    assert after["phone_masked"] == "139****0009" and "13900000009" not in _row_text(db_url, me)
    assert ok(env, "cardholder", "list", "--phone", ALICE_PHONE)["cardholders"] == []
    found = ok(env, "cardholder", "list", "--phone", "13900000009")["cardholders"]
    assert [r["cardholder_id"] for r in found] == [me]
    renamed = ok(env, "cardholder", "update", str(me), "--name", "Alice Wang Li")
    assert renamed["changed"] == ["name"] and renamed["screened"] is True
    same = ok(env, "cardholder", "update", str(me), "--name", "Alice  Wang  Li")
    assert same["changed"] == [] and same["screened"] is False
    nothing = run(env, "cardholder", "update", str(me))
    assert nothing.exit_code == 2


def test_close_is_refused_while_a_card_is_open(env: dict[str, str], db_url: str) -> None:
    ch = ok(
        env, "cardholder", "add", "--name", "Carol Zhao", "--id-type", "passport", "--id-number", "E12345678"
    )
    cid = ch["cardholder_id"]
    ok(env, "product", "add", "CHCLOSE", "--kind", "reloadable", "--bin", "621291", "--no-pin")
    issued = ok(env, "card", "issue", "--product", "CHCLOSE", "--cardholder", str(cid), "--activate")
    (card,) = issued["cards"]
    assert issued["cardholder_id"] == cid
    refused = run(env, "cardholder", "close", str(cid))
    _one_line_refusal(refused, str(card["card_id"]), "card close")
    ok(env, "card", "close", str(card["card_id"]))
    assert ok(env, "cardholder", "close", str(cid), "--reason", "moved away")["state"] == "closed"
    again = run(env, "cardholder", "close", str(cid))
    _one_line_refusal(again, "closed already")
    _one_line_refusal(run(env, "cardholder", "update", str(cid), "--address", "x"), "closed")
    # a closed cardholder frees the ID number
    new = ok(
        env, "cardholder", "add", "--name", "Carol Zhao", "--id-type", "passport", "--id-number", "E12345678"
    )
    assert new["cardholder_id"] != cid and new["kyc_level"] == "named"
    (ev,) = query(db_url, "SELECT * FROM kyc_events WHERE cardholder_id = $1 AND decision = 'closed'", cid)
    assert ev["reason"] == "moved away" and ev["actor"] == cli_actor()


def test_bad_input_is_one_line(env: dict[str, str]) -> None:
    _one_line_refusal(run(env, "cardholder", "show", "nobody"), "cardholder id")
    _one_line_refusal(run(env, "cardholder", "show", "987654"), "no cardholder 987654")
    _one_line_refusal(run(env, "cardholder", "add", "--name", "X", "--id-number", "E7654321"), "--id-type")
    _one_line_refusal(run(env, "cardholder", "add", "--name", "X", "--email", "not-an-address"), "e-mail")
    _one_line_refusal(run(env, "cardholder", "add", "--name", "   "), "name")
    assert run(env, "cardholder", "add", "--name", "X", "--birth-date", "1990-13-01").exit_code == 2
    _one_line_refusal(
        run(env, "cardholder", "add", "--name", "X", "--birth-date", "2999-01-01"), "date of birth"
    )
