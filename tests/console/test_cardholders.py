"""Cardholders in the console on the live system: the search (by name; by phone as a POST, recorded
masked), the cardholder's page with masked details and cards, the KYC queue's approve and the AML
queue's clear (supervisors only)."""

from __future__ import annotations

import json
import os
import string
from pathlib import Path
from typing import Any

from pos.system import System
from tests.console.test_cards import audit_rows

_n = iter(range(1, 10_000))


def letters(n: int) -> str:
    out = ""
    while n:
        n, r = divmod(n, 26)
        out += string.ascii_lowercase[r]
    return out.capitalize()


def unique_name() -> str:
    return f"Quillon {letters(os.getpid())} {letters(next(_n) + 30)}"


def add(live: System, name: str, *extra: str) -> int:
    out = json.loads(live.cli("--json", "cardholder", "add", "--name", name, *extra).stdout)
    return int(out["cardholder_id"])


def test_search_page_and_phone_lookup(live: System, console_as: Any) -> None:
    name = unique_name()
    phone = f"139{os.getpid() % 10**8:08d}"
    hid = add(live, name, "--phone", phone)
    v = console_as("viewer")
    r = v.get("/console/cardholders", params={"name": name})
    assert r.status_code == 200 and f'href="/console/cardholders/{hid}"' in r.text and phone not in r.text
    page = v.get(f"/console/cardholders/{hid}")
    assert page.status_code == 200 and name in page.text and phone not in page.text
    assert phone[-4:] in page.text  # masked: 139****1234
    r = v.post_form("/console/cardholders/lookup", {"kind": "phone", "value": phone})
    assert r.status_code == 200 and f'href="/console/cardholders/{hid}"' in r.text and phone not in r.text
    [row] = [x for x in audit_rows(live, "cardholder.lookup", "cardholders")
             if json.loads(x["after"])["phone"].endswith(phone[-4:]) and x["actor"] == v.operator.name]
    assert phone not in json.dumps(row, default=str)
    # cards by cardholder name: one cardholder of that name, their cards
    r = v.get("/console/cards", params={"name": name})
    assert r.status_code == 200 and "no cards match" in r.text


def test_kyc_queue_and_approve(live: System, console_as: Any) -> None:
    name = unique_name()
    idno = f"11010119900307{os.getpid() % 10000:04d}"
    hid = add(live, name, "--id-type", "resident_id", "--id-number", idno)
    op = console_as("operator")
    q = op.get("/console/cardholders/kyc", params={"name": name})
    assert q.status_code == 200 and f'href="/console/cardholders/{hid}"' in q.text and idno not in q.text
    viewer = console_as("viewer")
    assert viewer.post_form(f"/console/cardholders/{hid}/kyc/approve", {"reason": "x"}).status_code == 403
    assert op.post_form(f"/console/cardholders/{hid}/kyc/approve", {}).status_code == 422  # no reason
    r = op.post_form(f"/console/cardholders/{hid}/kyc/approve", {"reason": "passport seen at the desk"})
    assert r.status_code == 303
    page = op.get(r.headers["location"])
    assert "KYC approved" in page.text and "verified" in page.text
    [row] = audit_rows(live, "kyc.approve", f"cardholder:{hid}")
    assert json.loads(row["after"])["kyc_level"] == "verified" and row["actor"] == op.operator.name
    assert op.post_form(f"/console/cardholders/{hid}/kyc/approve", {"reason": "again"}).status_code == 409


def test_aml_queue_clear(live: System, console_as: Any, tmp_path: Path) -> None:
    name = unique_name()
    listname = f"H6{letters(os.getpid()).upper()}"
    f = tmp_path / "list.csv"
    f.write_text(f"name,aliases,date_of_birth,list,reference\n{name},,,{listname},R-1\n")
    live.cli("aml", "list", "import", str(f), "--list", listname)
    hid = add(live, name)
    op, sup = console_as("operator"), console_as("supervisor")
    q = op.get("/console/cardholders/aml")
    assert q.status_code == 200
    page = 1
    while f'href="/console/cardholders/{hid}"' not in q.text and 'Next page' in q.text and page < 50:
        page += 1
        q = op.get("/console/cardholders/aml", params={"page": page})
    assert f'href="/console/cardholders/{hid}"' in q.text
    assert op.post_form(f"/console/cardholders/{hid}/aml/clear", {"reason": "x"}).status_code == 403
    r = sup.post_form(f"/console/cardholders/{hid}/aml/clear", {"reason": "another person, born 1950"})
    assert r.status_code == 303
    assert "AML hits cleared" in sup.get(r.headers["location"]).text
    [row] = audit_rows(live, "aml.clear", f"cardholder:{hid}")
    assert json.loads(row["before"]) == {"aml_status": "review"}
    assert json.loads(row["after"])["aml_status"] == "clear"
