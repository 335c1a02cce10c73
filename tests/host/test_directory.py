"""Finding and showing every host entity, card labels and the catalogue updates, through the real
commands against the real database and HSM (issue 15, item 1, host part).

Each filter of each `list`, paging through the cursor (human output names the next command, JSON has
"next"), --json money as *_minor + currency, every card command taking a label, a PAN, a masked PAN
or an id, and `product update`, `merchant suspend|resume|close`, `terminal disable|enable`, `store
update` with their refusals.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.fixtures.pg import query
from tests.host.helpers import cli_env, ok, run

TMK = "0123456789ABCDEFFEDCBA9876543210"
M1, M2 = "898330160129001", "898330160129002"
LOCAL_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d\d:\d\d")


@pytest.fixture(scope="module")
def env(db_url: str, hsm_server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return cli_env(tmp_path_factory.mktemp("directory"), db_url, hsm_server.env)


@pytest.fixture(scope="module")
def programme(env: dict[str, str]) -> dict[str, Any]:
    """Two products, five cards (three active and loaded, two in inventory), two merchants with stores
    and terminals (one terminal id at both), an acquirer."""
    ok(env, "product", "add", "DIRA", "--kind", "reloadable", "--bin", "621260", "--max-balance", "1000.00")
    ok(
        env,
        "product",
        "add",
        "DIRB",
        "--kind",
        "fixed_amount",
        "--bin",
        "621261",
        "--face-value",
        "50",
        "--no-pin",
    )
    a = ok(env, "card", "issue", "--product", "DIRA", "--count", "3", "--pin", "1234", "--activate")["cards"]
    b = ok(env, "card", "issue", "--product", "DIRB", "--count", "2")["cards"]
    for c in a:
        ok(env, "card", "load", str(c["card_id"]), "--amount", "500.00")
    ok(
        env,
        "merchant",
        "add",
        M1,
        "--name",
        "North Canteen",
        "--mcc",
        "5812",
        "--group",
        "G1",
        "--acquirer",
        "48880000",
    )
    ok(env, "merchant", "add", M2, "--name", "South Shop", "--mcc", "5411")
    ok(env, "store", "add", M1, "N1", "--name", "North 1")
    ok(env, "store", "add", M1, "N2")
    ok(env, "store", "add", M2, "S1")
    for tid, mid, store, scheme in (
        ("TD000001", M1, "N1", "3des"),
        ("TD000002", M1, "N2", "sm4"),
        ("TD000003", M2, "S1", "3des"),
        ("TD000001", M2, None, "3des"),  # the same DE41 at another merchant
    ):
        ok(env, "terminal", "add", tid, "--merchant", mid, "--scheme", scheme, "--tmk", TMK,
           *(("--store", store) if store else ()))  # fmt: skip
    return {"a": a, "b": b}


def _ids(rows: list[dict[str, Any]]) -> list[int]:
    return [r["card_id"] for r in rows]


def test_products_list_show_and_page(env: dict[str, str], programme: dict[str, Any]) -> None:
    listed = ok(env, "product", "list")
    by_code = {p["code"]: p for p in listed["products"]}
    dira = by_code["DIRA"]
    assert dira["max_balance_minor"] == 100_000 and dira["currency"] == "CNY" and dira["cards"] == 3
    assert dira["bins"] == ["621260"] and "max_balance" not in dira
    assert by_code["DIRB"]["face_value_minor"] == 5_000
    assert listed["next"] is None
    human = run(env, "product", "list").output
    assert "1,000.00 CNY" in human and "50.00 CNY" not in human.split("DIRA")[0]
    assert [p["code"] for p in ok(env, "product", "list", "--kind", "fixed_amount")["products"]] == ["DIRB"]
    assert ok(env, "product", "list", "--currency", "840")["products"] == []

    first = ok(env, "product", "list", "--limit", "1")
    assert len(first["products"]) == 1 and first["next"] is not None
    second = ok(env, "product", "list", "--limit", "1", "--after", first["next"])
    assert second["products"][0]["code"] != first["products"][0]["code"]
    paged = run(env, "product", "list", "--limit", "1").output
    assert (
        paged.rstrip().splitlines()[-1]
        == f"next page: payswitch product list --limit 1 --after {first['next']}"
    )
    bad = run(env, "product", "list", "--after", "x")
    assert bad.exit_code == 1 and "--after" in bad.output and "Traceback" not in bad.output

    shown = ok(env, "product", "show", "DIRA")
    assert shown["per_txn_limit_minor"] == 100_000 and shown["cards_by_state"] == {"active": 3}
    text = run(env, "product", "show", "DIRA").output
    assert "per txn      1,000.00 CNY" in text and LOCAL_TIME.search(text)
    missing = run(env, "product", "show", "NOPE")
    assert missing.exit_code == 1 and "no product NOPE" in missing.output


def test_card_list_filters_and_cursor(env: dict[str, str], programme: dict[str, Any]) -> None:
    a, b = programme["a"], programme["b"]
    pan = a[0]["pan"]
    assert set(_ids(ok(env, "card", "list", "--product", "DIRA")["cards"])) == {c["card_id"] for c in a}
    assert set(_ids(ok(env, "card", "list", "--state", "inventory")["cards"])) >= {c["card_id"] for c in b}
    assert a[0]["card_id"] in _ids(ok(env, "card", "list", "--last4", pan[-4:])["cards"])
    masked = pan[:6] + "*" * (len(pan) - 10) + pan[-4:]
    assert _ids(ok(env, "card", "list", "--pan", masked)["cards"]) == [a[0]["card_id"]]
    assert a[0]["card_id"] in _ids(ok(env, "card", "list", "--pan", pan[:6] + pan[-4:])["cards"])
    by_clear = run(env, "--json", "card", "list", "--pan", pan)  # looked up by its hash, never shown
    assert by_clear.exit_code == 0 and pan not in by_clear.output
    assert f'"card_id": {a[0]["card_id"]},' in by_clear.output
    assert run(env, "card", "list", "--last4", "12a4").exit_code == 1

    row = ok(env, "card", "list", "--pan", masked)["cards"][0]
    assert row["balance_minor"] == 50_000 and row["currency"] == "CNY" and "balance" not in row
    assert row["pan_masked"] == masked and row["state"] == "active" and row["issue_batch"]
    batch = ok(env, "card", "list", "--batch", row["issue_batch"])["cards"]
    assert set(_ids(batch)) == {c["card_id"] for c in a}

    seen: list[int] = []
    after: list[str] = []
    while True:
        page = ok(env, "card", "list", "--limit", "2", *after)
        assert len(page["cards"]) <= 2
        seen += _ids(page["cards"])
        if page["next"] is None:
            break
        after = ["--after", page["next"]]
    everyone = [r[0] for r in query(env["PAYSWITCH_DATABASE_URL"], "SELECT id FROM cards ORDER BY id")]
    assert seen == everyone
    human = run(env, "card", "list", "--product", "DIRA", "--limit", "2").output
    assert (
        human.rstrip()
        .splitlines()[-1]
        .startswith("next page: payswitch card list --product DIRA --limit 2 --after ")
    )
    assert "500.00 CNY" in human and pan not in human


def test_card_labels_reach_every_card_command(env: dict[str, str], programme: dict[str, Any]) -> None:
    a, b = programme["a"], programme["b"]
    for card, name in zip(a, ("lalice", "lbob", "lcarol"), strict=True):
        assert ok(env, "card", "label", str(card["card_id"]), name)["label"] == name
    gift = str(b[0]["card_id"])
    ok(env, "card", "label", b[0]["pan"], "lgift")  # by PAN too
    assert ok(env, "card", "list", "--label", "lgift")["cards"][0]["card_id"] == int(gift)

    shown = ok(env, "card", "show", "lalice")
    assert shown["card_id"] == a[0]["card_id"] and shown["label"] == "lalice"
    assert (
        shown["balance_minor"] == 50_000 and shown["available_minor"] == 50_000 and shown["held_minor"] == 0
    )
    assert shown["per_txn_limit_minor"] == 100_000 and shown["currency"] == "CNY" and shown["pin_tries"] == 0
    text = run(env, "card", "show", "lalice").output
    assert "balance      500.00 CNY" in text and "label lalice" in text and LOCAL_TIME.search(text)
    assert shown["today_amount_minor"] == 0 and shown["today_count"] == 0
    assert "today        0.00 CNY in 0 purchases (business day " in text
    assert a[0]["pan"] not in text
    masked = a[0]["pan"][:6] + "*" * (len(a[0]["pan"]) - 10) + a[0]["pan"][-4:]
    assert ok(env, "card", "show", masked)["card_id"] == a[0]["card_id"]

    assert ok(env, "card", "freeze", "lalice")["to"] == "frozen"
    assert ok(env, "card", "unfreeze", "lalice")["to"] == "active"
    assert ok(env, "card", "reset-pin-tries", "lalice")["card_id"] == a[0]["card_id"]
    assert ok(env, "card", "load", "lalice", "--amount", "1.00")["card_id"] == a[0]["card_id"]
    assert isinstance(ok(env, "card", "history", "lalice"), (list, dict))
    # only a named card can be reported lost or stolen (PBOC, host.catalog.set_card_state): owners by SQL
    for i, card in enumerate(a[1:3]):
        query(
            env["PAYSWITCH_DATABASE_URL"],
            """WITH h AS (INSERT INTO cardholders (name, name_key, id_type, id_number_enc, id_number_hash,
                                                  kyc_level)
                          VALUES ('Dir Holder', 'dir holder', 'other', 'enc', $2, 'named') RETURNING id)
               UPDATE cards SET cardholder_id = (SELECT id FROM h) WHERE id = $1""",
            card["card_id"],
            f"dir-holder-{i}",
        )
    assert ok(env, "card", "lost", "lbob")["to"] == "lost"
    assert ok(env, "card", "stolen", "lcarol")["to"] == "stolen"
    assert ok(env, "card", "activate", "lgift")["to"] == "active"
    ok(env, "card", "label", "lbob", "--clear")
    assert ok(env, "card", "show", str(a[1]["card_id"]))["label"] is None
    inv = str(b[1]["card_id"])
    ok(env, "card", "label", inv, "lclose")
    assert ok(env, "card", "close", "lclose")["to"] == "closed"

    unknown = run(env, "card", "show", "nobody")
    assert unknown.exit_code == 1 and unknown.output.strip().endswith(
        "no card nobody (give a card id, a PAN or a label; `payswitch card list` finds one)"
    )
    taken = run(env, "card", "label", gift, "lalice")
    assert taken.exit_code == 1 and f"card {a[0]['card_id']}'s" in taken.output and "--clear" in taken.output
    for bad in ("1234", "two words", "x" * 33):
        result = run(env, "card", "label", gift, bad)
        assert result.exit_code == 2 and "Traceback" not in result.output, bad
    assert run(env, "card", "label", gift).exit_code == 2
    missing_pan = run(env, "card", "show", "6212609999999999999")
    assert missing_pan.exit_code == 1 and "6212609999999999999" not in missing_pan.output
    assert "621260*********9999" in missing_pan.output


def test_product_update(env: dict[str, str], programme: dict[str, Any]) -> None:
    out = ok(env, "product", "update", "DIRA", "--per-txn-limit", "12.34", "--daily-count-limit", "7",
             "--mcc", "5812", "--mcc", "5411", "--no-pin", "--name", "Campus")  # fmt: skip
    p = out["product"]
    assert p["per_txn_limit_minor"] == 1234 and p["daily_count_limit"] == 7 and p["pin_required"] is False
    assert p["allowed_mccs"] == ["5812", "5411"] and p["name"] == "Campus"
    assert sorted(out["changed"]) == [
        "allowed_mccs",
        "daily_count_limit",
        "name",
        "per_txn_limit",
        "pin_required",
    ]
    text = run(env, "product", "update", "DIRA", "--per-txn-limit", "20", "--any-mcc").output
    assert "per_txn_limit 12.34 CNY -> 20.00 CNY" in text and "allowed_mccs 5812,5411 -> any" in text
    assert "nothing changed" in run(env, "product", "update", "DIRA", "--per-txn-limit", "20").output
    assert run(env, "product", "update", "DIRA").exit_code == 2
    assert run(env, "product", "update", "DIRA", "--max-balance", "1.234").exit_code == 2
    assert run(env, "product", "update", "DIRA", "--mcc", "1", "--any-mcc").exit_code == 2
    bad = run(env, "product", "update", "DIRA", "--mcc", "58")
    assert bad.exit_code == 1 and "4 digits" in bad.output
    assert run(env, "product", "update", "NOPE", "--name", "x").exit_code == 1
    ok(env, "product", "update", "DIRA", "--per-txn-limit", "1000", "--pin-required", "--name", "")


def test_merchants_stores_terminals_acquirers(env: dict[str, str], programme: dict[str, Any]) -> None:
    ms = {m["merchant_id"]: m for m in ok(env, "merchant", "list")["merchants"]}
    assert ms[M1]["stores"] == 2 and ms[M1]["terminals"] == 2 and ms[M1]["group_code"] == "G1"
    assert [m["merchant_id"] for m in ok(env, "merchant", "list", "--group", "G1")["merchants"]] == [M1]
    assert [m["merchant_id"] for m in ok(env, "merchant", "list", "--mcc", "5411")["merchants"]] == [M2]
    assert [m["merchant_id"] for m in ok(env, "merchant", "list", "--name", "south")["merchants"]] == [M2]
    assert [m["merchant_id"] for m in ok(env, "merchant", "list", "--acquirer", "48880000")["merchants"]] == [
        M1
    ]
    shown = ok(env, "merchant", "show", M1)
    assert shown["payable_minor"] == 0 and shown["currency"] == "CNY" and shown["store_codes"] == ["N1", "N2"]
    assert "payable      0.00 CNY" in run(env, "merchant", "show", M1).output

    assert ok(env, "merchant", "suspend", M2)["to"] == "suspended"
    assert [m["merchant_id"] for m in ok(env, "merchant", "list", "--state", "suspended")["merchants"]] == [
        M2
    ]
    again = run(env, "merchant", "suspend", M2)
    assert again.exit_code == 1 and "suspended already" in again.output
    assert ok(env, "merchant", "resume", M2)["to"] == "active"
    assert ok(env, "merchant", "close", M2)["to"] == "closed"
    reopen = run(env, "merchant", "resume", M2)
    assert reopen.exit_code == 1 and "never reopens" in reopen.output
    assert run(env, "merchant", "suspend", "NOSUCH").exit_code == 1

    stores = ok(env, "store", "list", "--merchant", M1)["stores"]
    assert [s["code"] for s in stores] == ["N1", "N2"] and stores[0]["terminals"] == 1
    upd = ok(env, "store", "update", M1, "N2", "--name", "North 2", "--address", "2 Campus Rd")
    assert upd["name"] == "North 2" and upd["address"] == "2 Campus Rd"
    assert ok(env, "store", "show", M1, "N2")["address"] == "2 Campus Rd"
    assert ok(env, "store", "update", M1, "N2", "--address", "3 Campus Rd")["name"] == "North 2"
    assert run(env, "store", "update", M1, "N2").exit_code == 2
    assert run(env, "store", "update", M1, "ZZ", "--name", "x").exit_code == 1

    ts = ok(env, "terminal", "list", "--merchant", M1)["terminals"]
    assert [(t["terminal_id"], t["store"], t["scheme"]) for t in ts] == [
        ("TD000001", "N1", "3des"),
        ("TD000002", "N2", "sm4"),
    ]
    assert [t["terminal_id"] for t in ok(env, "terminal", "list", "--scheme", "sm4")["terminals"]] == [
        "TD000002"
    ]
    assert [t["terminal_id"] for t in ok(env, "terminal", "list", "--store", "S1")["terminals"]] == [
        "TD000003"
    ]
    two = run(env, "terminal", "disable", "TD000001")
    assert two.exit_code == 1 and "give --merchant" in two.output
    assert ok(env, "terminal", "disable", "TD000001", "--merchant", M1)["to"] == "disabled"
    disabled = ok(env, "terminal", "list", "--state", "disabled")["terminals"]
    assert [(t["terminal_id"], t["merchant_id"]) for t in disabled] == [("TD000001", M1)]
    assert run(env, "terminal", "disable", "TD000001", "--merchant", M1).exit_code == 1
    assert ok(env, "terminal", "show", "TD000002")["state"] == "active"
    assert ok(env, "terminal", "enable", "TD000001", "--merchant", M1)["to"] == "active"
    assert "TD000001" in run(env, "terminal", "show", "TD000001", "--merchant", M2).output
    assert run(env, "terminal", "show", "NOPE").exit_code == 1

    acq = {a["institution_id"]: a for a in ok(env, "acquirer", "list")["acquirers"]}
    assert acq["48880000"]["merchants"] == 1 and acq["48880000"]["name"] == ""
    assert ok(env, "acquirer", "add", "48880000", "--name", "Campus acquirer")["new"] is True
    assert ok(env, "acquirer", "show", "48880000")["name"] == "Campus acquirer"
    assert ok(env, "acquirer", "show", "48880000")["merchant_ids"] == [M1]
    assert run(env, "acquirer", "add", "4888x", "--name", "x").exit_code == 1
    assert run(env, "acquirer", "show", "1").exit_code == 1


def test_no_sql_in_a_cli_module() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    # the CLI modules, and the console's views: thin callers of their component's functions
    modules = sorted([*root.glob("*/*cli.py"), *root.glob("console/views/*.py")])
    assert len(modules) >= 10, modules
    for path in modules:
        assert not re.search(r"\b(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM)\b", path.read_text()), path
