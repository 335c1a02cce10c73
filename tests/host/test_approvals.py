"""Four eyes (host.approvals) on the live system: the requester never approves, a second supervisor's
approval makes the change once (a retry does nothing twice), a rejection changes nothing, each kind's
change is made by its host function, and every step is in the audit trail with both names."""

from __future__ import annotations

import dataclasses
import json
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from host import approvals
from host.approvals import ApprovalError
from ops import config as config_mod
from ops.money import format_amount, parse_money
from ops.pgpool import PgPool
from pos.system import System
from tests.api.conftest import db, unique

PRODUCT = "FOUREYES"  # anonymous cards up to 5,000.00 (the demo's CAMPUS stops at the PBOC 1,000.00)


def run(live: System, work: Callable[[PgPool, config_mod.Config], Awaitable[Any]]) -> Any:
    config = config_mod.load(live.config_path)

    async def main() -> Any:
        with PgPool(live.db_url, min_size=1, max_size=4) as pool:
            return await work(pool, config)

    return trio.run(main)


def conn_call(live: System, fn: Callable[..., Awaitable[Any]], *args: Any, **kw: Any) -> Any:
    return db(live, lambda conn: fn(conn, *args, **kw))


@pytest.fixture(scope="module")
def product(live: System) -> str:
    live.cli("product", "add", PRODUCT, "--kind", "reloadable", "--bin", "621277", "--name", "Four eyes",
             "--max-balance", "5000.00", "--max-balance-anonymous", "5000.00", check=False)
    return PRODUCT


def new_card(live: System, product: str, load: str | None = None) -> int:
    out = json.loads(live.cli("--json", "card", "issue", "--product", product, "--activate").stdout)
    cid = int(out["cards"][0]["card_id"])
    left = parse_money(load) if load else 0
    while left > 0:  # in loads of at most the four-eyes amount (one above it takes an approval)
        part = min(left, 100_000)
        live.cli("card", "load", str(cid), "--amount", format_amount(part).replace(",", ""),
                 "--reference", unique("l"))
        left -= part
    return cid


def balance(live: System, card_id: int) -> int:
    return int(db(live, lambda c: c.fetchval(
        "SELECT a.credits_posted - a.debits_posted FROM cards c JOIN accounts a ON a.id = c.account_id"
        " WHERE c.id = $1", card_id)))


def audit_rows(live: System, target: str) -> list[dict[str, Any]]:
    rows = db(live, lambda c: c.fetch(
        "SELECT actor, action, outcome, before::text AS before, after::text AS after FROM audit_log"
        " WHERE target = $1 AND action LIKE 'approval.%' ORDER BY id", target))
    return [{**dict(r), "before": json.loads(r["before"] or "null"),
             "after": json.loads(r["after"] or "null")} for r in rows]


def name(role: str) -> str:
    return f"{role}-{uuid.uuid4().hex[:6]}"


def approve(live: System, approval_id: int, actor: str, role: str = "supervisor") -> dict[str, Any]:
    return run(live, lambda pool, cfg: approvals.approve(pool, cfg, approval_id, actor, role, "10.0.0.9"))  # type: ignore[no-any-return]


def test_needs_approval() -> None:
    cfg = dataclasses.replace(config_mod.load(None).console, four_eyes_minor=100_000)
    assert not approvals.needs_approval("load", 100_000, cfg)
    assert approvals.needs_approval("load", 100_001, cfg)
    assert approvals.needs_approval("unload", None, cfg)
    assert all(approvals.needs_approval(k, None, cfg) for k in ("limits", "tier", "forfeit", "merchant_fee"))
    with pytest.raises(ApprovalError):
        approvals.needs_approval("bonus", 1, cfg)


def test_the_requester_cannot_approve_and_a_second_supervisor_loads_once(live: System, product: str) -> None:
    cid = new_card(live, product)
    alice, bob, carol = name("sup"), name("sup"), name("sup")
    req = conn_call(live, approvals.request, "load", f"card:{cid}", {"amount": 150_000}, alice, "supervisor",
                    "customer paid at the desk")
    assert req["state"] == "requested" and req["params"]["amount"] == 150_000
    assert "*" in req["params"]["pan_masked"] or "…" in req["params"]["pan_masked"]

    with pytest.raises(ApprovalError, match="other than the requester"):
        approve(live, req["id"], alice)
    with pytest.raises(ApprovalError, match="may not approve"):
        approve(live, req["id"], name("op"), "operator")
    assert balance(live, cid) == 0

    done = approve(live, req["id"], bob)
    assert done["state"] == "approved", done
    assert (done["requested_by"], done["decided_by"]) == (alice, bob)
    assert done["result"]["loaded"] == 150_000 and done["result"]["balance"] == 150_000
    assert balance(live, cid) == 150_000

    again = approve(live, req["id"], carol)  # a retry (or a second approver) does nothing twice
    assert again["state"] == "approved" and again["decided_by"] == bob
    assert balance(live, cid) == 150_000
    posted = db(live, lambda c: c.fetchval("SELECT count(*) FROM transfers WHERE key LIKE $1",
                                          f"admin:approval:{req['id']}%"))
    assert posted == 1
    checked = live.cli("ledger", "check", check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    rows = audit_rows(live, f"card:{cid}")
    assert [(r["action"], r["outcome"]) for r in rows] == [
        ("approval.request", "requested"), ("approval.approve", "refused"), ("approval.approve", "refused"),
        ("approval.approve", "approved")]
    last = rows[-1]
    assert last["actor"] == bob
    assert last["after"]["requested_by"] == alice and last["after"]["approved_by"] == bob
    assert last["before"]["state"] == "requested" and last["after"]["state"] == "approved"


def test_reject_changes_nothing(live: System, product: str) -> None:
    cid = new_card(live, product, "2000.00")
    alice, bob = name("op"), name("sup")
    req = conn_call(live, approvals.request, "unload", f"card:{cid}", {"amount": 120_000}, alice, "operator",
                    "cardholder leaving")
    with pytest.raises(ApprovalError, match="reason"):
        conn_call(live, approvals.reject, req["id"], bob, "supervisor", "  ")
    with pytest.raises(ApprovalError, match="may not reject"):
        conn_call(live, approvals.reject, req["id"], name("op"), "operator", "no")
    out = conn_call(live, approvals.reject, req["id"], bob, "supervisor", "no ID shown")
    assert out["state"] == "rejected" and out["decided_by"] == bob and out["decision_reason"] == "no ID shown"
    assert approve(live, req["id"], name("sup"))["state"] == "rejected"  # decided: nothing happens
    with pytest.raises(ApprovalError, match="rejected already"):
        conn_call(live, approvals.reject, req["id"], bob, "supervisor", "twice")
    assert balance(live, cid) == 200_000
    rows = audit_rows(live, f"card:{cid}")
    assert rows[-1]["outcome"] == "rejected" and rows[-1]["after"]["rejected_by"] == bob
    assert rows[-1]["after"]["requested_by"] == alice


def test_a_refused_change_is_failed_and_moves_nothing(live: System) -> None:
    cid = new_card(live, "CAMPUS")  # anonymous: at most 1,000.00 on the card
    req = conn_call(live, approvals.request, "load", f"card:{cid}", {"amount": 150_000}, name("op"),
                    "operator", "too much for an anonymous card")
    out = approve(live, req["id"], name("sup"))
    assert out["state"] == "failed" and "anonymous" in out["result"]["error"]
    assert balance(live, cid) == 0
    assert audit_rows(live, f"card:{cid}")[-1]["outcome"] == "failed"


def test_each_kind(live: System, product: str) -> None:
    requester = name("op")

    def ask(kind: str, target: str, params: dict[str, Any]) -> dict[str, Any]:
        req = conn_call(live, approvals.request, kind, target, params, requester, "operator", f"test {kind}")
        out = approve(live, req["id"], name("adm"), "admin")
        assert out["state"] == "approved", out
        return out

    # unload part of a card's balance, to the programme's desk
    cid = new_card(live, product, "3000.00")
    out = ask("unload", f"card:{cid}", {"amount": 110_000, "to": "desk"})
    assert out["result"]["unloaded"] == 110_000 and balance(live, cid) == 190_000

    # limits: the per-transaction limit lowered on the card
    ask("limits", f"card:{cid}", {"limits": {"per_txn": 20_000}})
    shown = json.loads(live.cli("--json", "card", "limits", str(cid)).stdout)
    assert "20000" in json.dumps(shown) or "200.00" in json.dumps(shown)

    # forfeit: closed, the balance to breakage income
    out = ask("forfeit", f"card:{cid}", {})
    assert out["result"]["forfeited"] == 190_000 and balance(live, cid) == 0
    assert json.loads(live.cli("--json", "card", "show", str(cid)).stdout)["state"] == "closed"

    # tier: a named cardholder verified
    made = json.loads(live.cli("--json", "cardholder", "add", "--name", "Four Eyes", "--id-type", "passport",
                               "--id-number", "E" + uuid.uuid4().hex[:8].upper()).stdout)
    chid = int(made["cardholder_id"])
    out = ask("tier", f"cardholder:{chid}", {"decision": "approve"})
    assert out["result"] == {"from_level": "named", "to_level": "verified"}
    assert json.loads(live.cli("--json", "cardholder", "show", str(chid)).stdout)["kyc_level"] == "verified"

    # merchant fee: the rate and its version
    mid = f"9{random.randrange(10**13, 10**14)}"
    live.cli("merchant", "add", mid, "--name", "Fee Shop", "--mcc", "5411", "--fee-bps", "60")
    out = ask("merchant_fee", f"merchant:{mid}", {"fee_rate_bps": 45})
    assert out["result"]["from_bps"] == 60 and out["result"]["to_bps"] == 45
    fee = db(live, lambda c: c.fetchval("SELECT fee_rate_bps FROM merchants WHERE merchant_id = $1", mid))
    assert fee == 45

    checked = live.cli("ledger", "check", check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert live.cli("audit", "verify", check=False).returncode in (0, 2)  # the command may be another's part


def test_bad_requests_are_refused(live: System, product: str) -> None:
    cid = new_card(live, product)
    for kind, target, params in [
        ("bonus", f"card:{cid}", {}),
        ("load", f"cardholder:{cid}", {"amount": 1}),
        ("load", f"card:{cid}", {"amount": -5}),
        ("limits", f"card:{cid}", {"limits": {"nonsense": 1}}),
        ("merchant_fee", "merchant:nosuch", {"fee_rate_bps": 10}),
        ("load", "card:999999999", {"amount": 100}),
    ]:
        with pytest.raises(Exception):  # noqa: B017 - ApprovalError or CatalogError, one line each
            conn_call(live, approvals.request, kind, target, params, "x", "operator", "why")
    with pytest.raises(ApprovalError, match="reason"):
        conn_call(live, approvals.request, "load", f"card:{cid}", {"amount": 5}, "x", "operator", "")


def test_list_filters_and_pages(live: System, product: str) -> None:
    cid = new_card(live, product)
    ids = [conn_call(live, approvals.request, "load", f"card:{cid}", {"amount": 100_001 + i}, name("op"),
                     "operator", "paging")["id"] for i in range(3)]
    rows, cursor = conn_call(live, approvals.list_, "requested", None, 2, target=f"card:{cid}")
    assert [r["id"] for r in rows] == ids[::-1][:2] and cursor is not None
    rows2, cursor2 = conn_call(live, approvals.list_, "requested", cursor, 2, target=f"card:{cid}")
    assert [r["id"] for r in rows2] == [ids[0]] and cursor2 is None
    rows3, _ = conn_call(live, approvals.list_, "approved", None, 10, target=f"card:{cid}")
    assert rows3 == []
    assert "1,000.01" in approvals.describe(rows[-1]) or "1,000.02" in approvals.describe(rows[-1])


def test_the_cli(live: System, product: str) -> None:
    cid = new_card(live, product)
    made = json.loads(live.cli("--json", "approval", "request", "load", str(cid), "--amount", "1200.00",
                               "--reason", "paid in cash").stdout)
    assert made["state"] == "requested" and made["requested_by"].startswith("cli:")
    refused = live.cli("approval", "approve", str(made["id"]), check=False)
    assert refused.returncode == 1 and "other than the requester" in refused.stderr
    listed = live.cli("approval", "list", "--state", "requested", "--target", f"card:{cid}").stdout
    assert "load 1,200.00 CNY onto card" in listed and made["requested_by"] in listed

    other = conn_call(live, approvals.request, "load", f"card:{cid}", {"amount": 130_000}, name("op"),
                      "operator", "second load")
    out = json.loads(live.cli("--json", "approval", "approve", str(other["id"])).stdout)
    assert out["state"] == "approved" and out["decided_by"].startswith("cli:")
    assert balance(live, cid) == 130_000
    shown = live.cli("approval", "show", str(other["id"])).stdout
    assert "approved" in shown and other["requested_by"] in shown and out["decided_by"] in shown

    rejected = live.cli("approval", "reject", str(made["id"]), "--reason", "withdrawn").stdout
    assert "rejected" in rejected and "withdrawn by the requester" in rejected
    assert balance(live, cid) == 130_000


def test_two_approvers_at_once_load_once(live: System, product: str) -> None:
    cid = new_card(live, product)
    req = conn_call(live, approvals.request, "load", f"card:{cid}", {"amount": 111_111}, name("op"),
                    "operator", "two approvers")
    outcomes: list[str] = []

    async def both(pool: PgPool, cfg: config_mod.Config) -> None:
        async def one(actor: str) -> None:
            try:
                out = await approvals.approve(pool, cfg, req["id"], actor, "supervisor")
                outcomes.append(out["state"])
            except ApprovalError as exc:
                assert "being approved" in str(exc)
                outcomes.append("busy")

        async with trio.open_nursery() as n:
            for _ in range(3):
                n.start_soon(one, name("sup"))

    run(live, both)
    assert "approved" in outcomes and len(outcomes) == 3
    assert balance(live, cid) == 111_111
    assert conn_call(live, approvals.show, req["id"])["state"] == "approved"


def test_an_expired_request_cannot_be_approved(live: System, product: str) -> None:
    cid = new_card(live, product)
    req = conn_call(live, approvals.request, "load", f"card:{cid}", {"amount": 100_500}, name("op"),
                    "operator", "left waiting")
    live.cli("--json", "approval", "expire", "--older-than-hours", "1")
    assert conn_call(live, approvals.show, req["id"])["state"] == "requested"  # younger than an hour
    out = json.loads(live.cli("--json", "approval", "expire", "--older-than-hours", "0").stdout)
    assert out["expired"] >= 1
    assert approve(live, req["id"], name("sup"))["state"] == "expired"
    assert balance(live, cid) == 0
    assert audit_rows(live, f"card:{cid}")[-1]["action"] == "approval.expire"


def test_the_cli_does_not_load_or_unload_above_the_four_eyes_amount(live: System, product: str) -> None:
    """`card load` / `card unload` of more than console.four_eyes_minor are refused in one line naming
    the request to make; at the amount they are made; the request then approved by another loads."""
    cid = new_card(live, product)
    over = live.cli("card", "load", str(cid), "--amount", "1000.01", "--reference", unique("l"), check=False)
    assert over.returncode == 1 and balance(live, cid) == 0
    (line,) = over.stderr.strip().splitlines()
    assert "takes a second person's approval" in line and f"approval request load {cid}" in line
    live.cli("card", "load", str(cid), "--amount", "1000.00", "--reference", unique("l"))
    assert balance(live, cid) == 100_000
    out = live.cli("card", "unload", str(cid), "--amount", "1000.01", "--reference", unique("u"), "--to",
                   "desk", check=False)
    assert out.returncode == 1 and "approval request unload" in out.stderr and balance(live, cid) == 100_000
    made = json.loads(live.cli("--json", "approval", "request", "load", str(cid), "--amount", "1000.01",
                               "--reason", "top-up above the amount").stdout)
    approve(live, int(made["id"]), name("supervisor"))
    assert balance(live, cid) == 200_001
