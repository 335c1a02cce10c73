"""Fuzzing every listener of a live payswitch (tests/fuzz.py), bounded for `make test`.

``PAYSWITCH_FUZZ_EXAMPLES`` sets the inputs per listener (default 100, derandomized: the same frames
every run); ``python -m tests.fuzz --examples 100000`` is the nightly version.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hsm_sim.mac import retail_mac
from pos.demo import DEMO_BIN, DEMO_ZAK, LOAD_BIN
from pos.system import Service, System
from specs.codec import codec_for
from specs.framing import frame, h2h_splitter
from tests import fuzz


@dataclass
class Target:
    system: System
    watch: fuzz.Watch
    runs: list[fuzz.Run] = field(default_factory=list)


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    system = fuzz.start_system()
    try:
        watch = fuzz.start_watch(system)
        try:
            yield Target(system, watch)
        finally:
            watch.stop()
    finally:
        system.stop()


@pytest.mark.parametrize("listener", fuzz.LISTENERS)
@pytest.mark.timeout(300 + fuzz.examples_from_env() // 20)  # a long PAYSWITCH_FUZZ_EXAMPLES run: 50 ms each
def test_listener_survives_hostile_frames(target: Target, listener: str) -> None:
    run = fuzz.fuzz_listener(target.system, target.watch, listener, fuzz.examples_from_env())
    target.runs.append(run)
    before, _ = target.watch.snapshot()
    # every watcher is served again after the last frame (not stuck, not skipped)
    deadline = time.monotonic() + 2 * fuzz.WATCH_TIMEOUT
    while True:
        after, failures = target.watch.snapshot()
        if {n for n in after if after[n] > before[n]} == set(after) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert run.problems == []
    assert failures == [], "a well-behaved client was not served during the fuzzing"
    assert run.frames == fuzz.examples_from_env()
    assert {n for n in after if after[n] > before[n]} == set(after), (before, after)
    if listener in (*fuzz.POS_LISTENERS, "switch_h2h", "host_h2h") and run.frames >= fuzz.DEFAULT_EXAMPLES:
        # MAC'd frames with random fields reached the deep code: some approved, some declined (a
        # handful of examples, PAYSWITCH_FUZZ_EXAMPLES=20, may not draw both)
        assert run.codes["00"] > 0 and sum(run.codes.values()) > run.codes["00"], run.codes


def test_no_clear_pan_in_the_logs_after_fuzzing(target: Target) -> None:
    """Hostile frames carry the load cards' PANs in every field; the warnings they cause must not
    quote one (masked is fine)."""
    pans = {c.pan for c in target.watch.pool.cards}
    on_bins = re.compile(r"(?<!\d)(?:" + "|".join((DEMO_BIN, LOAD_BIN)) + r")\d{7,13}(?!\d)")
    for svc in target.system.services.values():
        text = svc.log.read_text(errors="replace")
        assert [p[:6] for p in pans if p in text] == [], f"{svc.name}.log quotes a clear PAN"
        assert on_bins.findall(text) == [], f"{svc.name}.log holds a digit run on a programme BIN"


def _host_answer(target: Target, msg: dict[str, Any]) -> dict[str, Any]:
    """The host's answer to ``msg`` sent MAC'd under the demo ZAK from the registered institution;
    ``mac_ok`` says whether the answer carries a DE128 that verifies."""
    codec = codec_for("h2h", "3des")
    got = fuzz.send_raw(target.system.ports["host"], frame(fuzz.h2h_maced(codec, msg)), 5.0)
    bodies = h2h_splitter().feed(got)
    assert len(bodies) == 1, got
    answer = codec.decode(bodies[0])
    mac = retail_mac(bytes.fromhex(DEMO_ZAK), codec.mac_block(bodies[0])) if "128" in answer else None
    return {**answer, "mac_ok": mac is not None and mac == answer["128"]}


def _host_request(target: Target, stan: str, **fields: str) -> dict[str, Any]:
    card = target.watch.pool.cards[0]
    msg = fuzz.h2h_requests(card.pan, fuzz.INSTITUTION)[5]  # balance inquiry, no PIN
    return {**msg, "14": card.expiry, "11": stan, "37": f"53301{stan}0", **fields}


def test_host_answers_a_maced_request_with_a_valid_mac(target: Target) -> None:
    """Control for the next test: a MAC'd balance inquiry is answered 00 with a valid DE128."""
    answer = _host_answer(target, _host_request(target, "700001"))
    assert (answer["39"], answer["mac_ok"]) == ("00", True), answer


def test_host_refusal_on_a_maced_link_carries_a_mac(target: Target) -> None:
    answer = _host_answer(target, _host_request(target, "700002", **{"3": "002781", "4": "000000000100"}))
    assert answer["39"] == "12"
    assert answer["mac_ok"], "the 12 answer has no valid DE128"


def test_host_same_key_other_pan_is_94(target: Target) -> None:
    first = _host_answer(target, _host_request(target, "700003"))
    assert first["39"] == "00"
    other = target.watch.pool.cards[1].pan
    second = _host_answer(target, _host_request(target, "700003", **{"2": other}))
    assert second["39"] == "94", second


def test_watchers_see_a_service_go_down(target: Target) -> None:
    """The checks bite: the HSM killed, its watcher reports it and health() names it. Last in the
    module: the system is not used after this."""
    proc = target.system.services["hsm"].proc
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 4 * fuzz.WATCH_TIMEOUT
    while not any("hsm NC+B2" in f for f in target.watch.failures) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert any("hsm NC+B2" in f for f in target.watch.failures), target.watch.failures
    assert any(p.startswith("hsm exited") for p in fuzz.health(target.system))


def test_health_names_an_exited_service_and_a_traceback(tmp_path: Path) -> None:
    """health() on a system whose service exited (status 3) and whose other service logged a traceback."""
    system = System(root=tmp_path, keep=True)
    for name, code in (("hsm", "raise SystemExit(3)"), ("host", "import time; time.sleep(30)")):
        log = tmp_path / f"{name}.log"
        log.write_text("" if name == "hsm" else 'ok\nTraceback (most recent call last):\n  File "x"\n')
        proc = subprocess.Popen([sys.executable, "-c", code])
        system.services[name] = Service(name, 0, proc, log)
    try:
        system.services["hsm"].proc.wait(30)
        problems = fuzz.health(system)
        assert problems[0] == "hsm exited (status 3)"
        assert problems[1].startswith("host logged a traceback")
        assert len(problems) == 2
    finally:
        system.services["host"].proc.kill()
        system.services["host"].proc.wait()
