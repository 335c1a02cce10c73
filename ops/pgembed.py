"""A private PostgreSQL cluster for development, `make run` and the test suite.

initdb and pg_ctl come from PATH or /usr/lib/postgresql/<newest>/bin. PostgreSQL refuses to run as
root, so under root the server runs as an unprivileged user (``postgres`` if it exists, else
``nobody``); that user may not be able to enter the checkout's parent folders (/root is 0700), so its
data lives in a folder it owns under /var/tmp and ``var/pg`` is a symlink to it. The server listens on
127.0.0.1 only, on a free port chosen at first start and kept in ``payswitch.conf`` inside the data
folder (the one place the port is written), and on a Unix socket in the data folder, which is what
``Status.url`` hands out when its path is short enough (cheaper than loopback TCP). Authentication is
scram-sha-256 on the socket and on TCP with a password generated at initdb and kept, mode 0600, beside
the data link (``var/pg.password``): trust let every local user connect over 127.0.0.1 as the
superuser. A cluster made before that (trust, no password file) keeps working and says so on ``db up``.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import random
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

SUPERUSER = "payswitch"
PRIVATE_PORTS_FROM = 20000  # free_port: ports for test and bench services, below the ephemeral range
UNIX_SOCKET_PATH_MAX = 104  # sun_path is 108 bytes on Linux, 104 on the BSDs; keep the terminating NUL
_INCLUDE_LINE = "include_if_exists 'payswitch.conf'\n"


class EmbeddedPostgresError(Exception):
    """The private cluster could not be found, created, started or stopped; str() says why."""


@dataclass(frozen=True)
class Status:
    data_dir: Path
    initialised: bool
    running: bool
    port: int | None
    password: str | None = field(default=None, repr=False)  # None: a cluster made with trust

    def url(self, database: str) -> str:
        """Over the Unix socket in the data folder when its path fits the kernel's limit (108 bytes): a
        loopback TCP round trip was measured at ~3x the client CPU (71 against 25 us per query) and about
        a third of the rate; else over 127.0.0.1."""
        user = SUPERUSER + (f":{quote(self.password, safe='')}" if self.password else "")
        if len(str(self.data_dir / f".s.PGSQL.{self.port}")) < UNIX_SOCKET_PATH_MAX:
            return f"postgresql://{user}@/{database}?host={self.data_dir}&port={self.port}"
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"


def find_bindir() -> Path:
    """The folder holding initdb and pg_ctl: PATH first, then the newest /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: [int(x) for x in Path(p).parent.name.split(".") if x.isdigit()],
        reverse=True,
    )
    for candidate in candidates:
        if (Path(candidate) / "pg_ctl").exists() and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    raise EmbeddedPostgresError(
        "PostgreSQL server binaries not found: install them (Debian: apt-get install postgresql) "
        "or set PAYSWITCH_DATABASE_URL to an existing server"
    )


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free on 127.0.0.1 now, below the kernel's ephemeral range where that is known. A port
    from that range (what binding port 0 hands out) can be taken as the source port of an outgoing
    connection before its service binds it: the switch connects to its hosts before it listens, and
    tests that restart it met "Address already in use". A process is never handed the same port twice:
    the caller has not bound it yet, so two calls in a row could otherwise give one port to two
    listeners (which the configuration then refuses)."""
    low = _ephemeral_low()
    for _ in range(64):
        port = random.randrange(PRIVATE_PORTS_FROM, low) if low > PRIVATE_PORTS_FROM + 1000 else 0
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            found: int = s.getsockname()[1]
            _HANDED_OUT.add(found)
            return found
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        fallback: int = s.getsockname()[1]
        return fallback


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux), else 0 (unknown)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


class EmbeddedPostgres:
    """One cluster in ``data_dir``; every operation is idempotent."""

    def __init__(self, data_dir: str | Path, *, durable: bool = True) -> None:
        self.link = Path(data_dir).absolute()
        self.durable = durable  # tests turn fsync off; a developer's ledger keeps it
        self.bindir = find_bindir()
        self.run_as = _server_user()

    # -- queries ---------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.link.resolve() if self.link.is_symlink() else self.link

    def status(self) -> Status:
        data = self.data_dir
        initialised = (data / "PG_VERSION").exists()
        running = initialised and self._pg_ctl("status", check=False).returncode == 0
        return Status(data, initialised, running, self._configured_port(), self._password())

    @property
    def password_file(self) -> Path:
        """Beside the data link, owned by whoever runs payswitch (not the server user), mode 0600."""
        return self.link.parent / f"{self.link.name}.password"

    def _password(self) -> str | None:
        try:
            return self.password_file.read_text().strip() or None
        except OSError:
            return None

    # -- actions ---------------------------------------------------------------------------------
    def up(self) -> Status:
        """Create the cluster if needed and start it if it is not running; return its status."""
        status = self.status()
        if status.running:
            return status
        if not status.initialised:
            self._initdb()
        port = self._configured_port()
        if port is None or not _port_free(port):
            port = free_port()
        self._write_conf(port)
        log = self.data_dir / "server.log"
        result = self._pg_ctl("start", "-w", "-t", "60", "-l", str(log), check=False)
        if result.returncode != 0:
            tail = _tail(log)
            raise EmbeddedPostgresError(f"PostgreSQL did not start (pg_ctl: {result.stderr.strip()}); {tail}")
        return self.status()

    def down(self) -> Status:
        if self.status().running:
            self._pg_ctl("stop", "-m", "fast", "-w", "-t", "60")
        return self.status()

    def destroy(self) -> None:
        """Stop and delete the cluster (tests' throwaway clusters)."""
        self.down()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        if self.link.is_symlink():
            self.link.unlink()
        self.password_file.unlink(missing_ok=True)

    # -- internals -------------------------------------------------------------------------------
    def _initdb(self) -> None:
        data = self._prepare_data_dir()
        password = secrets.token_urlsafe(24)
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        # initdb reads the password from a file its (server) user can read; it goes when initdb ends.
        pw_fd, pw_path = tempfile.mkstemp(prefix="payswitch-pw-", dir=data.parent)
        with os.fdopen(pw_fd, "w") as f:
            f.write(password + "\n")
        if self.run_as is not None:
            os.chown(pw_path, self.run_as.pw_uid, self.run_as.pw_gid)
        argv = [str(self.bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=scram-sha-256",
                f"--pwfile={pw_path}", "--encoding=UTF8", "--no-locale"]
        if not self.durable:
            argv.append("--no-sync")
        try:
            result = self._run(argv, check=False)
        finally:
            os.unlink(pw_path)
        if result.returncode != 0:
            raise EmbeddedPostgresError(f"initdb failed: {result.stderr.strip() or result.stdout.strip()}")
        with open(data / "postgresql.conf", "a") as conf:
            conf.write("\n" + _INCLUDE_LINE)

    def _prepare_data_dir(self) -> Path:
        """Make an empty data folder the server user owns and can reach; return its real path."""
        if self.run_as is None:
            self.link.mkdir(parents=True, exist_ok=True)
            os.chmod(self.link, 0o700)
            return self.link
        # Root: the server user may not traverse our parents. Give it a folder of its own in /var/tmp,
        # named after the checkout so two checkouts never share a cluster, and link var/pg to it.
        digest = hashlib.sha256(str(self.link).encode()).hexdigest()[:12]
        base = Path(tempfile.gettempdir() if not Path("/var/tmp").is_dir() else "/var/tmp")
        real = base / f"payswitch-pg-{digest}"
        if real.exists():
            # Nothing links to it (we are making the cluster): left by an earlier checkout at this path
            # whose var/ is gone (deleted, cloned again). Its data went with that var/; a server still
            # running on it must be stopped first.
            status = self._run([str(self.bindir / "pg_ctl"), "-D", str(real), "status"], check=False)
            if status.returncode == 0:
                raise EmbeddedPostgresError(
                    f"{real} (an earlier cluster of this checkout's path) is still served by PostgreSQL: "
                    f"stop it, or remove {real}"
                )
            shutil.rmtree(real)
        real.mkdir(mode=0o700)
        os.chown(real, self.run_as.pw_uid, self.run_as.pw_gid)
        self.link.parent.mkdir(parents=True, exist_ok=True)
        if self.link.is_symlink() or self.link.exists():
            if self.link.is_symlink():
                self.link.unlink()
            else:
                shutil.rmtree(self.link)
        self.link.symlink_to(real)
        return real

    def _write_conf(self, port: int) -> None:
        settings = {
            "port": str(port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.data_dir}'",
            "max_connections": "200",
            "shared_buffers": "'128MB'",
        }
        if not self.durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        text = "".join(f"{k} = {v}\n" for k, v in settings.items())
        path = self.data_dir / "payswitch.conf"
        path.write_text("# written by payswitch; the port is chosen at first start\n" + text)
        if self.run_as is not None:
            os.chown(path, self.run_as.pw_uid, self.run_as.pw_gid)

    def _configured_port(self) -> int | None:
        try:
            text = (self.data_dir / "payswitch.conf").read_text()
        except OSError:
            return None
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "port":
                return int(value.strip())
        return None

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), *args], check=check)

    def _run(self, argv: list[str], *, check: bool) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, object] = {}
        if self.run_as is not None:
            kwargs = {"user": self.run_as.pw_uid, "group": self.run_as.pw_gid, "extra_groups": []}
        result: subprocess.CompletedProcess[str] = subprocess.run(  # type: ignore[call-overload]
            argv, capture_output=True, text=True, cwd="/", env=_server_env(), check=False, **kwargs
        )
        if check and result.returncode != 0:
            raise EmbeddedPostgresError(f"{Path(argv[0]).name} {argv[-1]} failed: {result.stderr.strip()}")
        return result


def _server_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise EmbeddedPostgresError(
        "running as root and no unprivileged user (postgres, nobody) to run PostgreSQL"
    )


def _server_env() -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "TZ")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.setdefault("LC_ALL", "C")
    return env


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _tail(log: Path, lines: int = 5) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no server log"
    return "server log: " + " | ".join(text[-lines:])
