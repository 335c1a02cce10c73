"""Child processes of the development tools (`payswitch run`, `demo seed`, the end-to-end ``System``):
wait until one listens on its port, stop one.

Each caller turns ``NotListening`` into its own one-line error (``click.ClickException``, ...).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time


class NotListening(Exception):
    """The child exited before its port answered, or nothing answered in time; str() says which."""


def answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts a TCP connection on ``host:port`` now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_listening(
    port: int,
    proc: subprocess.Popen[bytes] | None = None,
    *,
    what: str = "service",
    host: str = "127.0.0.1",
    timeout: float = 30.0,
) -> None:
    """Return once ``host:port`` accepts a connection; raise ``NotListening`` when ``proc`` exits first
    or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise NotListening(f"{what} exited with status {proc.returncode} at start")
        if answers(host, port):
            return
        time.sleep(0.1)
    raise NotListening(f"{what} did not listen on port {port} within {timeout:.0f}s")


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> bool:
    """SIGTERM, then SIGKILL when it has not exited within ``timeout`` seconds; returns once it is gone.
    False when it had to be killed."""
    if proc.poll() is not None:
        return True
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False
    return True
