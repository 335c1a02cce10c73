"""Risk alerts end to end (issue 18 item 5) on a live system of this module's own (its SMTP settings
point at an aiosmtpd server the test starts; the shared live system has none): a burst of wrong PINs
at the POS raises an alert that the console shows, a ``risk.alert`` webhook reaches a real HTTP
receiver, an e-mail reaches the SMTP server (masked PAN only), and "freeze" from the alert makes the
next POS purchase decline; roles, dismissal, filters and the audit row of the action."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import threading
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from typing import Any

import pytest
import trio
from aiosmtpd.controller import Controller

from ops.pgembed import free_port
from pos.system import WITH_API, System
from tests.api.conftest import db, new_client, unique
from tests.api.test_webhooks import Receiver, subscribe, wait_for
from tests.fixtures.console import logged_in

TERMINAL = "T0000001"
WRONG = "000000"
RIGHT = "123456"


class Inbox:
    """An aiosmtpd handler keeping every message it is sent."""

    def __init__(self) -> None:
        self.port = free_port()
        self.messages: list[tuple[list[str], Message]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 OK"

    def to(self, address: str) -> list[Message]:
        with self.lock:
            return [m for rcpt, m in self.messages if address in rcpt]


@pytest.fixture(scope="module")
def inbox() -> Iterator[Inbox]:
    handler = Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=handler.port)
    controller.start()
    try:
        yield handler
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def system(inbox: Inbox) -> Iterator[System]:
    s = System(settings={"console.smtp_host": "127.0.0.1", "console.smtp_port": str(inbox.port),
                         "console.mail_from": "risk@payswitch.test", "risk.poll_s": "1"})
    try:
        s.start(WITH_API, seed=())
        yield s
    finally:
        s.stop()


def _issue(system: System) -> dict[str, Any]:
    out = json.loads(system.cli("--json", "card", "issue", "--product", "CAMPUS", "--activate",
                                "--pin", RIGHT).stdout)
    card = out["cards"][0]
    system.cli("card", "load", str(card["card_id"]), "--amount", "100.00", "--reference", unique("l"))
    return {"id": int(card["card_id"]), "pan": str(card["pan"]), "expiry": str(card["expiry"])}


def _purchase(system: System, card: dict[str, Any], pin: str, amount: str = "1.00") -> dict[str, Any]:
    r = system.cli("--json", "pos", "purchase", amount, "--card", card["pan"], "--expiry", card["expiry"],
                   "--pin", pin, "-t", TERMINAL, check=False)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stdout.strip().startswith("{"), (r.stdout, r.stderr)
    loaded: dict[str, Any] = json.loads(r.stdout)
    return loaded


def _subscribe_operator(system: System, name: str, email: str) -> None:
    """Give operator ``name`` an e-mail (sealed as host.pii seals one) and subscribe it to alerts."""
    from host import pii
    from host.cli import open_crypto
    from hsm_sim.client import HsmClient
    from ops import config as config_mod
    from ops.pgpool import PgPool

    config = config_mod.load(system.config_path)

    async def main() -> pii.Sealed:
        with PgPool(system.db_url, min_size=1, max_size=1) as pool:
            async with HsmClient.from_config(config.hsm) as hsm:
                crypto = await open_crypto(pool, hsm)
                return await pii.seal(crypto, "email", email)

    sealed = trio.run(main)
    db(system, lambda conn: conn.execute(
        "UPDATE operators SET email_sealed = $2, email_hash = $3, alerts = true WHERE name = $1",
        name, sealed.enc, sealed.hash))


def _alerts(system: System, card_id: int) -> list[dict[str, Any]]:
    rows = db(system, lambda conn: conn.fetch(
        "SELECT id, rule, state, action, acted_by, detail FROM risk_alerts WHERE card_id = $1 ORDER BY id",
        card_id))
    return [dict(r) for r in rows]


def test_wrong_pins_raise_an_alert_shown_sent_mailed_and_freeze_declines(system: System, inbox: Inbox
                                                                          ) -> None:
    receiver = Receiver().start()
    try:
        hooks = new_client(system, ["webhooks:write"])
        subscribe(hooks, receiver.url, ["risk.alert"])
        watcher = logged_in(system, "operator")
        address = f"{watcher.operator.name}@ops.example.com"
        _subscribe_operator(system, watcher.operator.name, address)
        card = _issue(system)
        assert _purchase(system, card, RIGHT).get("approved"), "the card works before the burst"
        for _ in range(3):
            receipt = _purchase(system, card, WRONG)
            assert receipt.get("code") in ("55", "75"), receipt

        alerts = wait_for(lambda: [a for a in _alerts(system, card["id"]) if a["rule"] == "pin_failures"],
                          timeout=30, what="the pin_failures alert")
        assert len(alerts) == 1 and alerts[0]["state"] == "open"
        alert_id = alerts[0]["id"]
        masked = card["pan"][:6] + "*" * (len(card["pan"]) - 10) + card["pan"][-4:]

        # the console shows it (open, first), with the masked PAN and never the full one
        page = watcher.get("/console/risk")
        assert page.status_code == 200, page.text
        assert f"ra_{alert_id}" in page.text and masked in page.text and card["pan"] not in page.text
        assert re.search(r"\+0[0-9]:00", page.text), "times in local time with the offset"
        one = watcher.get(f"/console/risk/{alert_id}")
        assert one.status_code == 200 and "repeated wrong PINs" in one.text and card["pan"] not in one.text
        assert f"/console/risk/{alert_id}/freeze-card" in one.text
        filtered = watcher.get("/console/risk", params={"card": f"card_{card['id']}", "rule": "pin_failures"})
        assert f"ra_{alert_id}" in filtered.text
        other = watcher.get("/console/risk", params={"card": "card_999999999"})
        assert f"ra_{alert_id}" not in other.text and "No alerts match" in other.text

        # the risk.alert webhook
        got = wait_for(lambda: receiver.of(lambda d: d["type"] == "risk.alert"
                                           and d["data"].get("alert") == f"ra_{alert_id}"),
                       timeout=30, what="the risk.alert webhook")
        data = got[0].doc["data"]
        assert data["rule"] == "pin_failures" and data["card"] == f"card_{card['id']}"
        assert data["pan_masked"] == masked and card["pan"] not in got[0].body.decode()
        assert "Payswitch-Signature" in got[0].headers or "payswitch-signature" in got[0].headers

        # the e-mail to the subscribed operator
        mails = wait_for(lambda: inbox.to(address), timeout=30, what="the alert e-mail")
        mail = mails[0]
        assert f"ra_{alert_id}" in mail["Subject"] and mail["From"] == "risk@payswitch.test"
        body = mail.get_payload(decode=True)
        assert isinstance(body, bytes)
        text = body.decode()
        assert masked in text and card["pan"] not in text and f"/console/risk/{alert_id}" in text

        # a viewer may see but not act (refused 403, recorded)
        viewer = logged_in(system, "viewer")
        assert "freeze-card" not in viewer.get(f"/console/risk/{alert_id}").text
        assert viewer.post_form(f"/console/risk/{alert_id}/freeze-card").status_code == 403
        assert viewer.post(f"/console/risk/{alert_id}/freeze-card", data={}).status_code == 403  # no CSRF

        # freeze from the alert in one click: the card is frozen, the alert acted, the action audited
        r = watcher.post_form(f"/console/risk/{alert_id}/freeze-card")
        assert r.status_code == 303 and r.headers["location"] == f"/console/risk/{alert_id}?done=freeze_card"
        done = _alerts(system, card["id"])[0]
        assert (done["state"], done["action"]) == ("acted", "freeze_card")
        assert done["acted_by"] == watcher.operator.name
        shown = json.loads(system.cli("--json", "card", "show", str(card["id"])).stdout)
        assert shown["state"] == "frozen"
        audit = db(system, lambda conn: conn.fetch(
            "SELECT actor, action, target, outcome, after FROM audit_log WHERE action = 'risk.freeze_card'"
            " AND outcome = 'done' ORDER BY id"))
        assert [(a["actor"], a["target"]) for a in audit] == [(watcher.operator.name, f"card:{card['id']}")]
        again = watcher.post_form(f"/console/risk/{alert_id}/freeze-card")
        assert again.status_code == 409  # frozen already: refused, nothing changes

        # the next purchase with the right PIN declines
        receipt = _purchase(system, card, RIGHT)
        assert not receipt.get("approved") and receipt.get("code") not in (None, "00"), receipt
        for c in (watcher, viewer):
            c.close()
        hooks.close()
    finally:
        receiver.stop()


def test_one_alert_per_burst_and_dismiss(system: System) -> None:
    card = _issue(system)
    for _ in range(2):
        _purchase(system, card, WRONG)
    assert _purchase(system, card, RIGHT).get("approved")  # the right PIN clears the tries
    for _ in range(2):
        _purchase(system, card, WRONG)
    alerts = wait_for(lambda: _alerts(system, card["id"]), timeout=30, what="the alert")
    _purchase(system, card, WRONG)  # a fifth decline: no second pin_failures alert, a declines one
    op = logged_in(system, "operator")
    try:
        wait_for(lambda: db(system, lambda conn: conn.fetchval(
            "SELECT last_event >= (SELECT max(id) FROM events WHERE card_id = $1) FROM risk_cursor",
            card["id"])), timeout=30, what="the monitor to read the fifth")
        assert [a["rule"] for a in _alerts(system, card["id"])] == ["pin_failures", "declines"]
        alert_id = alerts[0]["id"]
        r = op.post_form(f"/console/risk/{alert_id}/dismiss", {"reason": "the cardholder forgot the PIN"})
        assert r.status_code == 303
        assert _alerts(system, card["id"])[0]["state"] == "dismissed"
        assert op.post_form(f"/console/risk/{alert_id}/dismiss").status_code == 409
        closed = op.get("/console/risk", params={"state": "dismissed", "card": str(card["id"])})
        assert f"ra_{alert_id}" in closed.text
        assert op.get("/console/risk", params={"state": "nonsense"}).status_code == 400
        assert op.get("/console/risk", params={"cursor": "zz"}).status_code == 400
        assert op.get("/console/risk/999999999").status_code == 404
        assert op.get("/console/risk/99999999999999999999").status_code == 404  # beyond bigint
        # the card was not frozen by a dismissal
        assert json.loads(system.cli("--json", "card", "show", str(card["id"])).stdout)["state"] == "active"
    finally:
        op.close()


def test_many_cards_at_a_terminal_and_disable_it_in_one_click(system: System) -> None:
    """Ten cards at T0000002 within minutes (decisions written to the outbox as the ledger batch does,
    with the demo merchant's ids) raise cards_per_terminal; "disable terminal" from it disables it."""
    from host import events as host_events
    from ops.outbox import write_events

    terminal = "T0000002"
    merchant = db(system, lambda conn: conn.fetchval(
        "SELECT m.merchant_id FROM terminals t JOIN merchants m ON m.id = t.merchant_id"
        " WHERE t.terminal_id = $1", terminal))
    today = dt.date.today()
    stamp = host_events.stamp()
    base = 8_000_000_000 + os.getpid() * 100
    made = [host_events.authorization(
        card_id=base + i, pan_masked=f"621234*********{i:04d}", txn="purchase", mti="0200", amount=100,
        currency="156", response_code="51", reason="insufficient_funds", merchant_id=merchant,
        terminal_id=terminal, rrn=f"{i:012d}", stan=f"{i:06d}", acquirer_id="48880000", auth_code="",
        balance=0, available=0, business_date=today, occurred_at=stamp) for i in range(10)]

    async def write(conn: Any) -> None:
        async with conn.transaction():
            await write_events(conn, made)

    db(system, write)
    alert = wait_for(lambda: db(system, lambda conn: conn.fetchrow(
        "SELECT id, detail FROM risk_alerts WHERE rule = 'cards_per_terminal' AND terminal_id = $1"
        " AND merchant_id = $2", terminal, merchant)), timeout=30, what="the cards_per_terminal alert")
    assert json.loads(alert["detail"])["cards"] == 10
    op = logged_in(system, "operator")
    try:
        page = op.get(f"/console/risk/{alert['id']}")
        assert page.status_code == 200 and "many cards at one terminal" in page.text
        assert f"/console/risk/{alert['id']}/disable-terminal" in page.text
        assert "freeze-card" not in page.text  # no card to freeze
        r = op.post_form(f"/console/risk/{alert['id']}/disable-terminal")
        assert r.status_code == 303, r.text
        shown = json.loads(system.cli("--json", "terminal", "show", terminal).stdout)
        assert shown["state"] == "disabled"
        assert op.post_form(f"/console/risk/{alert['id']}/freeze-card").status_code == 409
        listed = op.get("/console/risk", params={"terminal": terminal, "rule": "cards_per_terminal"})
        assert f"ra_{alert['id']}" in listed.text and "acted" in listed.text
    finally:
        op.close()
