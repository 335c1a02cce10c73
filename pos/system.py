"""A whole payswitch on this machine in a scratch folder: for the end-to-end test and bench/e2e.

``System`` starts a private PostgreSQL (``ops.pgembed``), migrates it, writes a configuration file
with free ports, and starts ``hsm serve``, ``host serve`` and ``switch serve`` as child processes
(``python -m ops ...``, working directory = the scratch folder, so their ``var/`` lands there). Each
service is awaited until its first port listens. ``cli(...)`` runs any ``payswitch`` command against
that system. Nothing here imports host or switch code: they are separate programs.

A service can be run under a wrapper (``wrappers={"host": ["-m", "cProfile", "-o", "host.prof"]}``: the
arguments go between the interpreter and ``-m ops``), e.g. a profiler that writes when the service
exits on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from ops import processes
from ops.cli import COMMANDS
from ops.config import env_name
from ops.db import ensure_database
from ops.migrate import migrate_url
from ops.pgembed import EmbeddedPostgres, free_port
from pos import sealed

SERVICES = ("hsm", "host", "switch")
# The HTTP API too (`start(WITH_API)`): not by default, so a test of the ISO paths pays for no idle API.
WITH_API = (*SERVICES, "api")


class SystemStartError(Exception):
    """A service did not start; str() says which and the tail of its log."""


@dataclass
class Service:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class System:
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="payswitch-e2e-")))
    durable: bool = False
    keep: bool = False  # leave the scratch folder (logs, profiles) after stop()
    wrappers: dict[str, list[str]] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)  # "section.key" -> value, for every process
    services: dict[str, Service] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    db_url: str = ""
    _pg: EmbeddedPostgres | None = None

    @property
    def config_path(self) -> Path:
        return self.root / "payswitch.toml"

    @property
    def seal_key(self) -> Path:
        """The key sealing this system's var/pos files (``pos.sealed``): its own, never the user's."""
        return self.root / "pos-seal.key"

    def available(self) -> list[str]:
        """The services this build has (a component not yet written is simply absent)."""
        return [s for s in SERVICES if s in COMMANDS]

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, services: tuple[str, ...] = SERVICES, *, seed: tuple[str, ...] | None = None) -> System:
        """PostgreSQL, configuration, then ``services`` in order. With ``seed``, ``payswitch demo seed
        SEED...`` runs after the HSM and before host and switch (they read links and routes at start)."""
        self._pg = EmbeddedPostgres(self.root / "pg", durable=self.durable)
        status = self._pg.up()
        asyncio.run(ensure_database(status.url("postgres"), "payswitch"))
        self.db_url = status.url("payswitch")
        asyncio.run(migrate_url(self.db_url))
        self.ports = {k: free_port() for k in ("hsm", "host", "pos_3des", "pos_sm4", "h2h", "api")}
        self.config_path.write_text(self._config())
        for name in services:
            if name in COMMANDS:
                self.start_service(name)
            if name == "hsm" and seed is not None:
                self.cli("demo", "seed", *seed, timeout=1800)
        return self

    def _config(self) -> str:
        p = self.ports
        return "\n".join(
            [
                "[database]",
                f'url = "{self.db_url}"',
                "",
                "[log]",
                'level = "warning"',
                "",
                "[hsm]",
                f"port = {p['hsm']}",
                "metrics_port = 0",
                "",
                "[host]",
                f"port = {p['host']}",
                "metrics_port = 0",
                "",
                "[switch]",
                f"pos_3des_port = {p['pos_3des']}",
                f"pos_sm4_port = {p['pos_sm4']}",
                f"h2h_port = {p['h2h']}",
                "metrics_port = 0",
                "",
                "[api]",
                f"port = {p['api']}",
                "metrics_port = 0",
                "",
            ]
        )

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PAYSWITCH_CONFIG"] = str(self.config_path)
        for key in [k for k in env if k.startswith("PAYSWITCH_") and k != "PAYSWITCH_CONFIG"]:
            del env[key]
        env[sealed.KEY_ENV] = str(self.seal_key)
        for dotted, value in self.settings.items():
            section, _, key = dotted.partition(".")
            env[env_name(section, key)] = value
        return env

    def start_service(self, name: str) -> None:
        """Start one service and wait until its first port listens."""
        port = {"hsm": self.ports["hsm"], "host": self.ports["host"], "switch": self.ports["pos_3des"],
                "api": self.ports["api"]}[name]
        log = self.root / f"{name}.log"
        argv = [sys.executable, *self.wrappers.get(name, []), "-m", "ops", name, "serve"]
        with log.open("wb") as fh:
            proc = subprocess.Popen(
                argv,
                cwd=self.root,
                env=self.env(),
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.services[name] = Service(name, port, proc, log)
        try:
            processes.wait_listening(port, proc, what=name, timeout=60)
        except processes.NotListening as exc:
            raise SystemStartError(f"{exc}: {_tail(log)}") from None

    def cli(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``payswitch ARGS`` against this system (scratch folder as working directory)."""
        proc = subprocess.run(
            [sys.executable, "-m", "ops", *args],
            cwd=self.root,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            err = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
            raise SystemStartError(
                f"`payswitch {' '.join(args)}` failed ({proc.returncode}): {err[-1] if err else 'no output'}"
            )
        return proc

    def stop_service(self, name: str, timeout: float = 20.0) -> None:
        """Stop one service (SIGTERM; SIGKILL after ``timeout`` s); ``start_service`` starts it again."""
        processes.stop(self.services.pop(name).proc, timeout=timeout)

    def kill_service(self, name: str) -> None:
        """Crash one service: SIGKILL, no chance to drain or flush (fault tests); ``start_service``
        starts it again."""
        proc = self.services.pop(name).proc
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def crash_postgres(self, timeout: float = 60.0) -> None:
        """Crash PostgreSQL as ``pg_ctl -m immediate`` does (SIGQUIT to the postmaster: no checkpoint,
        crash recovery at the next start); returns once it is gone. ``restart_postgres`` starts it."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
        deadline = time.monotonic() + timeout
        while _alive(pid):
            if time.monotonic() > deadline:
                raise SystemStartError(f"PostgreSQL (pid {pid}) still runs {timeout:.0f}s after SIGQUIT")
            time.sleep(0.05)

    def restart_postgres(self) -> None:
        """Start PostgreSQL again after ``crash_postgres`` (crash recovery runs first), on the same
        port, so ``db_url`` and the services' configuration stay right."""
        assert self._pg is not None, "start() first"
        url = self._pg.up().url("payswitch")
        if url != self.db_url:
            raise SystemStartError(f"PostgreSQL came back on another address ({url}): its port was taken")

    def stop(self) -> None:
        for name in reversed(list(self.services)):
            self.stop_service(name)
        if self._pg is not None:
            self._pg.destroy()
            self._pg = None
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def postmaster_pid(self) -> int | None:
        if self._pg is None:
            return None
        try:
            return int((self._pg.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self) -> System:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# -- CPU accounting from /proc (psutil is not a dependency) ----------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, seconds; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # fields 14 and 15 of stat


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a process in MiB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process, its reaped children and its living children (PostgreSQL: postmaster
    and its backends)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    own = sum(int(f) for f in fields[11:15]) / _TICK  # utime, stime, cutime, cstime
    return own + sum(cpu_seconds(c) for c in children_of(pid))


def _alive(pid: int) -> bool:
    """Whether a process (not necessarily our child: the postmaster is pg_ctl's) still exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:])[-600:]
