"""Fuzzing every listener of a live payswitch (tests/fuzz.py), bounded for `make test`.

``PAYSWITCH_FUZZ_EXAMPLES`` sets the inputs per listener (default 100, derandomized: the same frames
every run); ``python -m tests.fuzz --examples 100000`` is the nightly version.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pos.system import Service, System
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
    if listener in (*fuzz.POS_LISTENERS, "switch_h2h", "host_h2h"):
        # MAC'd frames with random fields reached the deep code: some were approved, some declined
        assert run.codes["00"] > 0 and sum(run.codes.values()) > run.codes["00"], run.codes


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
