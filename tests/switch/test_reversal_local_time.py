"""A terminal's reversal reaches the host, and so the clearing file, with the terminal local time of what
it reverses (issue 15, defect 1: the upstream 0400 built from a POS 0400 had no DE12/DE13, and neither had
the reversal advice of a timed-out purchase). Real host, switch and HSM processes, one database; also
what `switch link show` reads from the running switch.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from ops.pgembed import free_port
from switch.mapping import local_time_of, transmission_time
from switch.saf import write_ahead_original
from tests.fixtures.hsm import HsmServer
from tests.fixtures.pg import query
from tests.fixtures.services import run_cli, start_switch
from tests.switch.test_host_e2e import System, _wait_link, seeded


@pytest.fixture(scope="module")
def system(db_url: str, hsm_server: HsmServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    stub = seeded(db_url, hsm_server, tmp_path_factory, sm4_terminal=False)
    metrics_port = free_port()
    stub.env["PAYSWITCH_SWITCH_METRICS_PORT"] = str(metrics_port)  # `switch link show` asks it
    stub.start_host()
    stub.switch = start_switch(
        db_url, hsm_server, request_timeout_ms=800, saf_retry_s=1, metrics_port=metrics_port
    )
    try:
        t = stub.terminal("3des")
        _wait_link(stub, t)
        t.close()
        yield stub
    finally:
        assert stub.switch.stop() == 0, stub.switch.log()[-3000:]
        stub.host.stop()


def _requests(system: System, rrn: str) -> dict[str, str]:
    """MTI -> local_time (DE13 + DE12) of the host's decided requests with that RRN."""
    rows = query(system.db_url, "SELECT mti, local_time FROM auth_requests WHERE rrn = $1", rrn)
    return {str(r["mti"]): str(r["local_time"]) for r in rows}


def _clearing_local_times(system: System, rrn: str) -> dict[str, str]:
    """txn type -> local_time of the clearing file's postings with that RRN (the emitter's view)."""
    rows = query(system.db_url, "SELECT txn_type, local_time FROM clearing_postings WHERE rrn = $1", rrn)
    return {str(r["txn_type"]): str(r["local_time"]) for r in rows}


def test_terminal_reversal_carries_the_originals_local_time(system: System) -> None:
    t = system.terminal("3des")
    msg = system.buy(t, 0, 701, pin="123456")
    approved = t.exchange(msg)
    assert approved.code == "00"
    rrn = str(approved.msg["37"])
    time.sleep(1.1)  # the reversal's own clock differs: what it carries is the original's
    assert t.exchange(t.reversal_msg(msg)).code == "00"
    t.close()
    seen = _requests(system, rrn)
    assert set(seen) == {"0200", "0400"}, seen
    assert len(seen["0200"]) == 10 and seen["0200"].isdigit()
    assert seen["0400"] == seen["0200"]
    posted = _clearing_local_times(system, rrn)
    assert posted["REVERSAL"] == posted["PURCHASE"] == seen["0200"]


def test_reversal_advice_of_a_timed_out_purchase_carries_its_local_time(system: System) -> None:
    t = system.terminal("3des")
    os.kill(system.host.process.pid, signal.SIGSTOP)
    started = time.time()
    try:
        late = t.exchange(system.buy(t, 1, 902, pin="123456"))
    finally:
        os.kill(system.host.process.pid, signal.SIGCONT)
    assert late.code == "98"
    deadline = time.monotonic() + 20
    while not (rows := query(system.db_url, "SELECT local_time FROM auth_requests WHERE mti = '0420'")):
        assert time.monotonic() < deadline, system.switch.log()[-3000:]
        time.sleep(0.2)
    # The host may take the advice before the late purchase (it was paused with both on its sockets) and
    # then keep no row of the purchase: the advice's DE13+DE12 is the purchase's send time (800 ms
    # before the advice), in the programme's zone (clearing.timezone) or the process's.
    sent_between = range(int(started) - 1, int(started) + 2)
    expected = {
        datetime.fromtimestamp(second, zone).strftime("%m%d%H%M%S")
        for second in sent_between
        for zone in (ZoneInfo("Asia/Shanghai"), None)
    }
    assert str(rows[0]["local_time"]) in expected, (rows, expected)
    t.close()


def test_link_show_tells_what_the_running_switch_has(system: System) -> None:
    shown = run_cli(["switch", "link", "show", "issuer"], system.env)
    assert shown.returncode == 0, shown.stderr
    assert "running switch  up, 2 connection(s)" in shown.stdout
    assert "(621234–621234)" in shown.stdout


def test_local_time_of_a_de7_and_of_a_write_ahead_row() -> None:
    now = time.time()
    de7 = transmission_time(now)
    assert local_time_of(de7, now) is not None
    assert local_time_of("13xx000000") is None and local_time_of("1302000000") is None
    row = {
        "link_mti": "0200", "link_de7": de7, "link_stan": "000042", "link_de32": "48880000",
        "proc_code": "000000", "rrn": "612345000042", "terminal_id": "T3DES001",
        "merchant_id": "898330160120001", "amount": 100, "currency": "156", "channel": "pos-3des",
        "reverses": None,
    }  # fmt: skip
    original = write_ahead_original(row)
    assert (original["12"], original["13"]) == local_time_of(de7)
    # a forwarded reversal's advice names its original: the original's DE7 is in DE90
    older = transmission_time(now - 3600)
    reversal = {**row, "link_mti": "0400", "reverses": f"0200000041{older}" + "0" * 22}
    assert (write_ahead_original(reversal)["12"],) == (local_time_of(older, now) or ("",))[:1]
    # an acquirer's request: its terminal's local time was not kept, none is invented
    assert "12" not in write_ahead_original({**row, "channel": "h2h:acq1"})
