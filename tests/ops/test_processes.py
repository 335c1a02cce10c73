"""ops.processes: waiting for a child's port, stopping a child."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from ops import processes
from ops.pgembed import free_port

IGNORES_SIGTERM = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print(flush=True)\n"
    "time.sleep(60)\n"
)


def test_wait_listening_returns_once_the_port_answers() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert processes.answers("127.0.0.1", port)
        processes.wait_listening(port, timeout=1)


def test_wait_listening_says_when_the_child_exited_or_nothing_listened() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    with pytest.raises(processes.NotListening) as exited:
        processes.wait_listening(free_port(), proc, what="hsm")
    assert str(exited.value) == "hsm exited with status 3 at start"
    port = free_port()
    assert not processes.answers("127.0.0.1", port)
    with pytest.raises(processes.NotListening) as silent:
        processes.wait_listening(port, timeout=0.2)
    assert str(silent.value) == f"service did not listen on port {port} within 0s"


def test_stop_terminates_and_kills_what_ignores_sigterm() -> None:
    gentle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert processes.stop(gentle) and gentle.returncode == -15
    stubborn = subprocess.Popen([sys.executable, "-c", IGNORES_SIGTERM], stdout=subprocess.PIPE)
    assert stubborn.stdout is not None and stubborn.stdout.readline()  # SIGTERM is ignored from now on
    assert not processes.stop(stubborn, timeout=0.5) and stubborn.returncode == -9
    assert processes.stop(stubborn)  # already gone: nothing to do
    stubborn.stdout.close()
