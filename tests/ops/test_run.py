"""`payswitch run` as an operator meets it: one at a time per folder, taken ports and a child that dies at
start said in one line (issue 15 item 3). Real `payswitch run` processes against the test database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ops.pgembed import free_port

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def run_env(tmp_path: Path, db_url: str) -> dict[str, str]:
    """`run` on free ports with its own HSM (test LMK), the test database, no metrics, quiet logs."""
    (tmp_path / "empty.toml").write_text("")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PAYSWITCH_")}
    return {
        **clean,
        "PAYSWITCH_CONFIG": str(tmp_path / "empty.toml"),
        "PAYSWITCH_DATABASE_URL": db_url,
        "PAYSWITCH_LOG_LEVEL": "error",
        "PAYSWITCH_CLEARING_AUTO_EMIT": "false",
        "PAYSWITCH_HSM_TEST_LMK": "true",
        "PAYSWITCH_HSM_PORT": str(free_port()),
        "PAYSWITCH_HOST_PORT": str(free_port()),
        "PAYSWITCH_SWITCH_POS_3DES_PORT": str(free_port()),
        "PAYSWITCH_SWITCH_POS_SM4_PORT": str(free_port()),
        "PAYSWITCH_SWITCH_H2H_PORT": str(free_port()),
        "PAYSWITCH_HSM_METRICS_PORT": "0",
        "PAYSWITCH_HOST_METRICS_PORT": "0",
        "PAYSWITCH_SWITCH_METRICS_PORT": "0",
        "PAYSWITCH_API_PORT": str(free_port()),
        "PAYSWITCH_API_METRICS_PORT": "0",
    }


def _run(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops", "run", "--no-seed"], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def _no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr


def test_a_second_run_says_the_first_runs_and_a_killed_one_blocks_nothing(
    run_env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "first.out"
    with out.open("w") as fh:
        first = subprocess.Popen([sys.executable, "-m", "ops", "run", "--no-seed"], env=run_env, cwd=tmp_path,
                                 stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while "running; press Ctrl-C" not in out.read_text():
            assert first.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(0.2)
        second = _run(run_env, tmp_path)
        _no_traceback(second)
        assert second.returncode == 1
        (line,) = second.stderr.strip().splitlines()
        assert line.startswith(f"Error: payswitch run is already running (pid {first.pid}, started 20"), line
        assert line.endswith(f"); stop it with Ctrl-C or kill {first.pid}"), line
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=60)
    assert first.returncode == 0, out.read_text()
    assert "Traceback" not in out.read_text() and out.read_text().rstrip().endswith("stopped")

    # a run killed with -9 leaves its lock file, not its lock: the next run gets past it (and here
    # stops at the port check, one line naming the taken port and its key)
    holder = subprocess.Popen([sys.executable, "-c", "import os, signal; from ops import runlock; "
                               "runlock.acquire(); os.kill(os.getpid(), signal.SIGKILL)"], cwd=tmp_path)
    holder.wait(timeout=30)
    assert holder.returncode == -signal.SIGKILL and (tmp_path / "var" / "run.lock").exists()
    with __import__("socket").socket() as busy:
        busy.bind(("127.0.0.1", int(run_env["PAYSWITCH_HOST_PORT"])))
        busy.listen()
        third = _run(run_env, tmp_path)
    _no_traceback(third)
    assert third.returncode == 1
    assert third.stderr.strip() == (
        f"Error: host cannot listen on 127.0.0.1:{run_env['PAYSWITCH_HOST_PORT']} (host.port): the address "
        "is in use by another program (stop it, or change host.port)"
    ), third.stderr


def test_a_child_that_dies_at_start_is_named_with_its_error(run_env: dict[str, str], tmp_path: Path) -> None:
    lmk = tmp_path / "lmk.json"
    lmk.write_text("not an LMK file")
    lmk.chmod(0o600)
    bad_lmk = {"PAYSWITCH_HSM_TEST_LMK": "false", "PAYSWITCH_HSM_LMK_FILE": str(lmk)}
    result = _run({**run_env, **bad_lmk}, tmp_path)
    _no_traceback(result)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: hsm exited with status 1 at start: Error: "), result.stderr
    assert str(lmk) in last or "LMK" in last, last
