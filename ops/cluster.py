"""The whole topology on one box (`payswitch cluster up|down|status`, `make cluster`): etcd, three
Patroni-managed PostgreSQL members with synchronous replication, HAProxy in front of the primary and of
the switches' POS ports, then the HSM, host and switch nodes, all on loopback with throwaway folders.

It is the production shape of deploy/ on 127.0.0.1: the services know one database address, HAProxy's,
whose only healthy server is the member whose Patroni REST API answers ``GET /primary`` 200; when the
primary dies, Patroni promotes the synchronous standby (so every commit acknowledged before the death is
there) and HAProxy follows within a check interval. The services reconnect on their own (ops.pgpool).

One etcd member serves the three Patroni members: three etcd members on one box protect nothing a single
one does not (they die with the box). Each daemon runs in a session of its own, detached from the
command that started it, with its log in ``DIR/logs``; ``DIR/cluster.json`` (0600: it holds the database
URL with its password) names every process and port so ``status`` and ``down`` find them. PostgreSQL
refuses to run as root: under root, Patroni and PostgreSQL run as the unprivileged user ops/pgembed.py
uses, with their folders under /var/tmp (that user may not enter the checkout's parents).

This module imports nothing above ops: services are started as ``python -m ops ... serve`` children, as
ops/run_cli.py does. Patroni's YAML is written as JSON (YAML is a superset of JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import asyncpg

from ops import config as config_mod
from ops import processes
from ops.db import DatabaseUnavailable, connect, ensure_database
from ops.migrate import migrate_url
from ops.pgembed import SUPERUSER, _server_user, find_bindir, free_port

STATE_FILE = "cluster.json"
SCOPE = "payswitch"
MEMBERS = 3
TOOLS = {"etcd": "/usr/bin/etcd", "patroni": "/usr/bin/patroni", "haproxy": "/usr/sbin/haproxy"}
SEAL_KEY_ENV = "PAYSWITCH_POS_SEAL_KEY_FILE"  # pos.sealed.KEY_ENV (ops imports nothing of pos)
# Patroni timing: the leader key lives TTL seconds, so a primary that dies with its Patroni is replaced
# within about TTL + LOOP_WAIT. Patroni requires loop_wait + 2 * retry_timeout <= ttl.
TTL, LOOP_WAIT, RETRY_TIMEOUT = 10, 1, 4
HEALTH_INTERVAL_MS = 500  # HAProxy's check interval; two failures mark a server down


class ClusterError(Exception):
    """The cluster could not be started, found or stopped; str() says why in one line."""


@dataclass
class Member:
    name: str
    pg_port: int
    rest_port: int
    folder: str  # the member's own folder (data, config, pgpass); under /var/tmp when run as root


@dataclass
class Node:
    """One payswitch process: hsm, host-N or switch-N, with the ports it listens on."""

    name: str
    kind: str  # hsm | host | switch
    ports: dict[str, int]


@dataclass
class State:
    root: str
    db_url: str = ""
    etcd: dict[str, int] = field(default_factory=dict)  # client, peer
    members: list[Member] = field(default_factory=list)
    haproxy: dict[str, int] = field(default_factory=dict)  # db, pos_3des, pos_sm4
    nodes: list[Node] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)  # process name -> pid, in start order
    private: str = ""  # the folder under /var/tmp holding the members when run as root, else ""

    @property
    def config_path(self) -> Path:
        return Path(self.root) / "payswitch.toml"

    @property
    def seal_key(self) -> Path:
        return Path(self.root) / "pos-seal.key"

    def save(self) -> None:
        _write_private(Path(self.root) / STATE_FILE, json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, root: Path) -> State:
        path = root / STATE_FILE
        try:
            raw = json.loads(path.read_text())
            raw["members"] = [Member(**m) for m in raw["members"]]
            raw["nodes"] = [Node(**n) for n in raw["nodes"]]
            return cls(**raw)
        except FileNotFoundError:
            raise ClusterError(
                f"no cluster at {root} (no {STATE_FILE}): start one with `cluster up`"
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ClusterError(f"{path} is not a cluster state file ({exc.__class__.__name__})") from None

    def env(self, overrides: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a payswitch child or CLI run against this cluster."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PAYSWITCH_")}
        env[config_mod.CONFIG_ENV] = str(self.config_path)
        env[SEAL_KEY_ENV] = str(self.seal_key)
        env.update(overrides or {})
        return env


def missing_tools() -> list[str]:
    """The Debian packages this needs that are not installed (``patroni``, ``etcd-server``, ``haproxy``)."""
    package = {"etcd": "etcd-server", "patroni": "patroni", "haproxy": "haproxy"}
    return [package[t] for t, path in TOOLS.items() if not Path(path).exists()]


# -- up ------------------------------------------------------------------------------------------------
def up(
    root: Path,
    *,
    hosts: int = 1,
    switches: int = 1,
    seed: tuple[str, ...] | None = (),
    settings: dict[str, str] | None = None,
    progress: Any = None,
) -> State:
    """Bring the whole topology up in ``root`` (created; refused if a cluster is there) and return its
    state. ``seed``: the arguments of `payswitch demo seed` (None: no seed); ``settings``: "section.key"
    -> value for every payswitch process. On any failure what was started is stopped (its logs kept)."""
    say = progress or (lambda _line: None)
    if missing := missing_tools():
        raise ClusterError(
            f"not installed: {', '.join(missing)} (Debian: apt-get install {' '.join(missing)})"
        )
    root = root.absolute()
    if (root / STATE_FILE).exists():
        raise ClusterError(f"a cluster is already at {root}: `cluster status` or `cluster down` first")
    (root / "logs").mkdir(parents=True, exist_ok=True)
    state = State(str(root))
    try:
        _start_etcd(state)
        say(f"etcd            127.0.0.1:{state.etcd['client']}")
        password = secrets.token_urlsafe(18)
        _start_members(state, password)
        leader = wait_primary(state, timeout=120)
        say(f"patroni         {MEMBERS} members, primary {leader}")
        _plan_nodes(state, hosts, switches)
        _start_haproxy(state)
        db_port = state.haproxy["db"]
        state.db_url = f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{db_port}/{SCOPE}"
        state.save()
        _wait_database(f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{db_port}/postgres", timeout=60)
        asyncio.run(
            ensure_database(f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{db_port}/postgres", SCOPE)
        )
        applied = asyncio.run(migrate_url(state.db_url))
        say(f"haproxy         database 127.0.0.1:{db_port}; {len(applied)} migrations applied")
        _start_services(state, seed, settings or {}, say)
        wait_sync_standby(state, timeout=60)
    except BaseException:
        with contextlib.suppress(Exception):
            down(root, remove=False)
        raise
    return state


def _start_etcd(state: State) -> None:
    client, peer = free_port(), free_port()
    state.etcd = {"client": client, "peer": peer}
    data = Path(state.root) / "etcd"
    argv = [
        TOOLS["etcd"], "--name", "etcd0", "--data-dir", str(data),
        "--listen-client-urls", f"http://127.0.0.1:{client}",
        "--advertise-client-urls", f"http://127.0.0.1:{client}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"etcd0=http://127.0.0.1:{peer}",
        "--initial-cluster-state", "new", "--log-level", "warn",
    ]  # fmt: skip
    proc = _spawn(state, "etcd", argv)
    _await(proc, client, "etcd", state)


def _start_members(state: State, password: str) -> None:
    run_as = _server_user()
    root = Path(state.root)
    base = root / "pg"
    if run_as is not None:
        # The server user may not traverse our parents (/root is 0700): a folder of its own in /var/tmp.
        digest = hashlib.sha256(str(root).encode()).hexdigest()[:12]
        base = (
            Path("/var/tmp" if Path("/var/tmp").is_dir() else tempfile.gettempdir())
            / f"payswitch-cluster-{digest}"
        )
        shutil.rmtree(base, ignore_errors=True)  # a cluster at this path before, whose state is gone
        state.private = str(base)
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    replication = secrets.token_urlsafe(18)
    for i in range(MEMBERS):
        member = Member(f"pg{i}", free_port(), free_port(), str(base / f"pg{i}"))
        folder = Path(member.folder)
        folder.mkdir(mode=0o700)
        conf = folder / "patroni.yml"
        _write_private(conf, json.dumps(patroni_config(state, member, password, replication), indent=2))
        if run_as is not None:
            for path in (base, folder, conf):
                os.chown(path, run_as.pw_uid, run_as.pw_gid)
        state.members.append(member)
    for member in state.members:
        _spawn(
            state,
            f"patroni-{member.name}",
            [TOOLS["patroni"], str(Path(member.folder) / "patroni.yml")],
            server_user=True,
        )
    state.save()


def patroni_config(state: State, member: Member, password: str, replication: str) -> dict[str, Any]:
    """One member's Patroni configuration (synchronous_mode: a commit waits for the sync standby)."""
    folder = Path(member.folder)
    return {
        "scope": SCOPE,
        "namespace": "/payswitch/",
        "name": member.name,
        "log": {"level": "WARNING"},
        "restapi": {
            "listen": f"127.0.0.1:{member.rest_port}",
            "connect_address": f"127.0.0.1:{member.rest_port}",
        },
        "etcd3": {"hosts": [f"127.0.0.1:{state.etcd['client']}"]},
        "bootstrap": {
            "dcs": {
                "ttl": TTL,
                "loop_wait": LOOP_WAIT,
                "retry_timeout": RETRY_TIMEOUT,
                "maximum_lag_on_failover": 1048576,
                "synchronous_mode": True,
                "postgresql": {
                    "use_pg_rewind": True,
                    "use_slots": True,
                    "parameters": {
                        "max_connections": 200,
                        "max_wal_senders": 10,
                        "max_replication_slots": 10,
                        "wal_level": "replica",
                        "wal_log_hints": "on",
                        "hot_standby": "on",
                        "wal_keep_size": "256MB",
                    },
                },
            },
            "initdb": [{"encoding": "UTF8"}, {"locale": "C"}, "data-checksums"],
        },
        "postgresql": {
            "listen": f"127.0.0.1:{member.pg_port}",
            "connect_address": f"127.0.0.1:{member.pg_port}",
            "data_dir": str(folder / "data"),
            "bin_dir": str(find_bindir()),
            "pgpass": str(folder / "pgpass"),
            "authentication": {
                "superuser": {"username": SUPERUSER, "password": password},
                "replication": {"username": "replicator", "password": replication},
            },
            "parameters": {"unix_socket_directories": str(folder), "shared_buffers": "128MB"},
            "pg_hba": [
                "local all all scram-sha-256",
                "host all all 127.0.0.1/32 scram-sha-256",
                "host replication replicator 127.0.0.1/32 scram-sha-256",
            ],
        },
        "watchdog": {"mode": "off"},
    }


def haproxy_config(state: State, switch_nodes: list[Node]) -> str:
    """HAProxy: the database port goes to the member whose Patroni answers GET /primary 200 (its
    sessions are cut when it is marked down, so no client stays on a demoted or dead member); the POS
    ports balance over the switches, checked by a TCP connect."""
    h = state.haproxy
    check = f"check inter {HEALTH_INTERVAL_MS}ms fall 2 rise 1"
    lines = [
        "global",
        "    maxconn 4096",
        "defaults",
        "    mode tcp",
        "    timeout connect 2s",
        # Pooled database connections and terminal sessions sit idle for long: HAProxy must not cut them.
        "    timeout client 12h",
        "    timeout server 12h",
        "    timeout check 1s",
        "listen postgres",
        f"    bind 127.0.0.1:{h['db']}",
        "    option httpchk OPTIONS /primary",  # OPTIONS: Patroni answers without a body to cut short
        "    http-check expect status 200",
        f"    default-server {check} on-marked-down shutdown-sessions",
        *(f"    server {m.name} 127.0.0.1:{m.pg_port} port {m.rest_port}" for m in state.members),
    ]
    for profile in ("pos_3des", "pos_sm4"):
        lines += [
            f"listen {profile}",
            f"    bind 127.0.0.1:{h[profile]}",
            "    balance leastconn",
            f"    default-server {check} on-marked-down shutdown-sessions",
            *(f"    server {n.name} 127.0.0.1:{n.ports[profile]}" for n in switch_nodes),
        ]
    return "\n".join(lines) + "\n"


def _start_haproxy(state: State) -> None:
    state.haproxy = {"db": free_port(), "pos_3des": free_port(), "pos_sm4": free_port()}
    _write_haproxy(state)
    proc = _spawn(state, "haproxy", [TOOLS["haproxy"], "-db", "-f", str(Path(state.root) / "haproxy.cfg")])
    _await(proc, state.haproxy["db"], "haproxy", state)


def _write_haproxy(state: State) -> None:
    switches = [n for n in state.nodes if n.kind == "switch"]
    (Path(state.root) / "haproxy.cfg").write_text(haproxy_config(state, switches))


def _config_text(state: State, hsm: Node, host: Node) -> str:
    return "\n".join([
        "# written by `payswitch cluster up`: what every node shares; each node's own ports are in its env",
        "[database]", f'url = "{state.db_url}"', "",
        "[log]", 'level = "warning"', "",
        "[hsm]", f"port = {hsm.ports['hsm']}", f"metrics_port = {hsm.ports['metrics']}", "",
        # demo seed links the switch to this host; the other hosts listen on their own ports
        "[host]", f"port = {host.ports['h2h']}", "metrics_port = 0", "",
        # what terminals dial (demo seed writes it into their state and the load pool): HAProxy
        "[switch]", f"pos_3des_port = {state.haproxy['pos_3des']}",
        f"pos_sm4_port = {state.haproxy['pos_sm4']}",
        f"h2h_port = {free_port()}", "metrics_port = 0", "",
        "[api]", f"port = {free_port()}", "metrics_port = 0", "",
    ])  # fmt: skip


def _plan_nodes(state: State, hosts: int, switches: int) -> None:
    """Every node's ports, chosen before HAProxy starts (its POS servers are the switches' ports)."""
    state.nodes = [Node("hsm", "hsm", {"hsm": free_port(), "metrics": free_port()})]
    state.nodes += [
        Node(f"host-{i}", "host", {"h2h": free_port(), "metrics": free_port()}) for i in range(1, hosts + 1)
    ]
    state.nodes += [
        Node(
            f"switch-{i}",
            "switch",
            {"pos_3des": free_port(), "pos_sm4": free_port(), "h2h": free_port(), "metrics": free_port()},
        )
        for i in range(1, switches + 1)
    ]
    state.save()


SEED_LINK = "host"  # the link `demo seed` makes to the first host (pos.demo's link name)

# The seeded link's keys and routes, to give every further host a link of its own with the same keys
# (one database: every host knows that acquirer's keys). The operator CLI never shows keys, so the
# cluster reads them as `demo seed` wrote them; everything else goes through the CLI.
_SEED_LINK_SQL = "SELECT scheme, zpk, zak, connections FROM switch_links WHERE name = $1"
_SEED_ROUTES_SQL = "SELECT bin_low, bin_high FROM switch_routes WHERE link = $1 ORDER BY bin_low"


def _link_more_hosts(state: State, host_nodes: list[Node], env: dict[str, str]) -> None:
    """Hosts 2..N as links ``host-N`` of the switches with the seeded link's routes: a route group, over
    which a switch spreads its requests (host/README.md "Several host processes")."""
    if len(host_nodes) < 2:
        return

    async def read() -> tuple[Any, list[Any]]:
        conn = await connect(state.db_url)
        try:
            link = await conn.fetchrow(_SEED_LINK_SQL, SEED_LINK)
            return link, await conn.fetch(_SEED_ROUTES_SQL, SEED_LINK)
        finally:
            await conn.close()

    link, routes = asyncio.run(read())
    if link is None:
        raise ClusterError(f"no link {SEED_LINK!r} to copy for the other hosts (was the demo seeded?)")
    mac = ["--zak", link["zak"]] if link["zak"] else []
    for node in host_nodes[1:]:
        _cli(state, env, "switch", "link", "add", node.name, "--host", "127.0.0.1", "--port",
             str(node.ports["h2h"]), "--scheme", link["scheme"], "--zpk", link["zpk"], *mac,
             "--connections", str(link["connections"]), "--replace", "--yes")  # fmt: skip
        for r in routes:
            _cli(state, env, "switch", "route", "add", r["bin_low"], r["bin_high"], "--link", node.name)


def _cli(state: State, env: dict[str, str], *args: str) -> None:
    done = subprocess.run(
        _ops(*args), cwd=state.root, env=state.env(env), capture_output=True, text=True, timeout=120,
        check=False,
    )
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise ClusterError(f"payswitch {' '.join(args[:3])} failed: {said[-1] if said else 'no output'}")


def _seed(state: State, args: tuple[str, ...], env: dict[str, str]) -> None:
    """`payswitch demo seed ARGS` (after the HSM, before host and switch: they read links and routes at
    start), as `make run` does; its terminals dial HAProxy's POS ports."""
    seeded = subprocess.run(
        _ops("demo", "seed", *args),
        cwd=state.root,
        env=state.env(env),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if seeded.returncode != 0:
        said = (seeded.stderr.strip() or seeded.stdout.strip()).splitlines()
        raise ClusterError(f"demo seed failed: {said[-1] if said else 'no output'}")


def _start_services(state: State, seed: tuple[str, ...] | None, settings: dict[str, str], say: Any) -> None:
    hsm = state.nodes[0]
    host_nodes = [n for n in state.nodes if n.kind == "host"]
    switch_nodes = [n for n in state.nodes if n.kind == "switch"]
    _write_private(state.config_path, _config_text(state, hsm, host_nodes[0]))  # it holds the DB password
    common = _dotted_env(settings)
    proc = _spawn(state, "hsm", _ops("hsm", "serve"), env=state.env(common), cwd=state.root)
    _await(proc, hsm.ports["hsm"], "hsm", state)
    say(f"hsm             127.0.0.1:{hsm.ports['hsm']}")
    if seed is not None:
        _seed(state, seed, common)
        say("demo seed       done")
    for node in host_nodes:
        env = common | _node_env(
            "host", node.name, {"port": node.ports["h2h"], "metrics_port": node.ports["metrics"]}
        )
        proc = _spawn(state, node.name, _ops("host", "serve"), env=state.env(env), cwd=state.root)
        _await(proc, node.ports["h2h"], node.name, state)
        say(f"{node.name:<15} H2H 127.0.0.1:{node.ports['h2h']}")
    if seed is not None:
        _link_more_hosts(state, host_nodes, common)
    for node in switch_nodes:
        own = {
            "pos_3des_port": node.ports["pos_3des"],
            "pos_sm4_port": node.ports["pos_sm4"],
            "h2h_port": node.ports["h2h"],
            "metrics_port": node.ports["metrics"],
        }
        proc = _spawn(
            state,
            node.name,
            _ops("switch", "serve"),
            env=state.env(common | _node_env("switch", node.name, own)),
            cwd=state.root,
        )
        _await(proc, node.ports["pos_3des"], node.name, state)
        say(f"{node.name:<15} POS 127.0.0.1:{node.ports['pos_3des']} (3des) {node.ports['pos_sm4']} (sm4)")
    say(f"haproxy         POS 127.0.0.1:{state.haproxy['pos_3des']} (3des) {state.haproxy['pos_sm4']} (sm4)")
    state.save()


def _node_env(section: str, name: str, ports: dict[str, int]) -> dict[str, str]:
    env = {config_mod.env_name(section, key): str(value) for key, value in ports.items()}
    # The node id convention of issue 20 (`[switch] node_id` / `[host] node_id`), once the key exists.
    section_type = {"host": config_mod.HostConfig, "switch": config_mod.SwitchConfig}[section]
    if "node_id" in {f.name for f in fields(section_type)}:
        env[config_mod.env_name(section, "node_id")] = name
    return env


def _dotted_env(settings: dict[str, str]) -> dict[str, str]:
    out = {}
    for dotted, value in settings.items():
        section, _, key = dotted.partition(".")
        out[config_mod.env_name(section, key)] = value
    return out


def _ops(*args: str) -> list[str]:
    return [sys.executable, "-m", "ops", *args]


def _spawn(
    state: State,
    name: str,
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str = "/",
    server_user: bool = False,
) -> subprocess.Popen[bytes]:
    """Start a daemon in a session of its own (a kill of its group reaches all it started), its output
    in DIR/logs/NAME.log; recorded in the state at once, so a failed `up` can still stop it."""
    kwargs: dict[str, Any] = {}
    run_as = _server_user() if server_user else None
    if run_as is not None:
        kwargs = {"user": run_as.pw_uid, "group": run_as.pw_gid, "extra_groups": []}
    log = Path(state.root) / "logs" / f"{name}.log"
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd,
            env=env if env is not None else _plain_env(), start_new_session=True, **kwargs,
        )  # fmt: skip
    state.pids[name] = proc.pid
    state.save()
    return proc


def _plain_env() -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "TZ")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.setdefault("LC_ALL", "C")
    return env


def _await(proc: subprocess.Popen[bytes], port: int, what: str, state: State, timeout: float = 60) -> None:
    try:
        processes.wait_listening(port, proc, what=what, timeout=timeout)
    except processes.NotListening as exc:
        raise ClusterError(f"{exc}: {_tail(Path(state.root) / 'logs' / f'{what}.log')}") from None


def _wait_database(url: str, timeout: float) -> None:
    """Until a connection through HAProxy reaches the primary (HAProxy needs a check interval)."""

    async def once() -> bool:
        conn = await connect(url)
        try:
            return bool(await conn.fetchval("SELECT NOT pg_is_in_recovery()"))
        finally:
            await conn.close()

    # HAProxy takes every server for up at its start until its checks say otherwise (fall x inter):
    # until then a connection may land on a replica, or be cut when that server is marked down.
    time.sleep(3 * HEALTH_INTERVAL_MS / 1000)
    deadline = time.monotonic() + timeout
    streak, said = 0, "a replica answered"
    while streak < 3:
        try:
            streak = streak + 1 if asyncio.run(once()) else 0
        except (DatabaseUnavailable, OSError, asyncpg.PostgresError) as exc:
            streak, said = 0, str(exc)
        if streak == 0:
            if time.monotonic() > deadline:
                raise ClusterError(f"the primary did not answer through HAProxy in {timeout:.0f}s: {said}")
            time.sleep(0.3)


# -- what runs -----------------------------------------------------------------------------------------
def members(state: State) -> list[dict[str, Any]]:
    """Patroni's view of the members (name, role, state, lag, timeline) from the first REST API that
    answers; [] when none does."""
    for member in state.members:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{member.rest_port}/cluster", timeout=1) as r:
                found: list[dict[str, Any]] = json.loads(r.read())["members"]
                return found
        except (OSError, ValueError, KeyError):
            continue
    return []


def primary(state: State) -> str | None:
    """The member whose REST API says it is the running primary, else None."""
    for member in state.members:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{member.rest_port}/primary", timeout=1) as r:
                if r.status == 200:
                    return member.name
        except (OSError, urllib.error.HTTPError):
            continue
    return None


def wait_primary(state: State, timeout: float, *, other_than: str | None = None) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leader = primary(state)
        if leader is not None and leader != other_than:
            return leader
        for member in state.members:  # a Patroni that died at start is named with its last line
            pid = state.pids.get(f"patroni-{member.name}")
            if pid is not None and not alive(pid) and other_than is None:
                log = Path(state.root) / "logs" / f"patroni-{member.name}.log"
                raise ClusterError(f"patroni {member.name} exited: {_tail(log)}")
        time.sleep(0.2)
    raise ClusterError(
        f"no PostgreSQL primary within {timeout:.0f}s: {_tail(Path(state.root) / 'logs' / 'patroni-pg0.log')}"
    )


def wait_sync_standby(state: State, timeout: float) -> str:
    """Until Patroni names a synchronous standby that streams (a commit then survives the primary)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in members(state):
            if m.get("role") == "sync_standby" and m.get("state") in ("streaming", "running"):
                return str(m["name"])
        time.sleep(0.3)
    raise ClusterError(f"no synchronous standby within {timeout:.0f}s")


def status(root: Path) -> dict[str, Any]:
    """Members (role, state, lag), services (alive), ports: what `cluster status` prints."""
    state = State.load(root.absolute())
    view = {m["name"]: m for m in members(state)}
    return {
        "root": state.root,
        "database": f"127.0.0.1:{state.haproxy.get('db')}",
        "pos": {k: f"127.0.0.1:{v}" for k, v in state.haproxy.items() if k != "db"},
        "etcd": f"127.0.0.1:{state.etcd.get('client')}",
        "members": [
            {
                "name": m.name,
                "port": m.pg_port,
                "rest_port": m.rest_port,
                "role": view.get(m.name, {}).get("role", "down"),
                "state": view.get(m.name, {}).get("state", "down"),
                "lag": view.get(m.name, {}).get("lag"),
                "timeline": view.get(m.name, {}).get("timeline"),
                "patroni": "running" if alive(state.pids.get(f"patroni-{m.name}")) else "down",
            }
            for m in state.members
        ],
        "services": [
            {
                "name": n.name,
                "kind": n.kind,
                "ports": n.ports,
                "state": "running" if alive(state.pids.get(n.name)) else "down",
            }
            for n in state.nodes
        ],
        "processes": {name: {"pid": pid, "alive": alive(pid)} for name, pid in state.pids.items()},
    }


# -- faults (the failover test) ----------------------------------------------------------------------------
def postmaster_pid(member: Member) -> int | None:
    try:
        return int((Path(member.folder) / "data" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def kill_member(state: State, name: str) -> None:
    """The box of one member dies: SIGKILL to its Patroni first (else it starts PostgreSQL again and
    keeps the leader key), then to its postmaster and every backend at once (a backend outliving its
    postmaster would still answer the connections it holds)."""
    member = next(m for m in state.members if m.name == name)
    patroni = state.pids.get(f"patroni-{name}")
    pg = postmaster_pid(member)
    doomed = [p for p in (patroni, pg) if p is not None]
    if pg is not None:
        doomed += children_of(pg)  # each backend is in a session of its own: a group kill misses it
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    for pid in doomed:
        _wait_gone(pid, 10)


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                out.append(int(entry.name))
    return out


# -- down ----------------------------------------------------------------------------------------------
def down(root: Path, *, remove: bool = True) -> list[str]:
    """Stop every process of the cluster (services first, etcd last), delete the members' data and,
    with ``remove``, the folder (else its logs stay). Returns the processes that had to be killed."""
    state = State.load(root.absolute())
    killed = []
    for name in reversed(list(state.pids)):
        pid = state.pids[name]
        if name.startswith("patroni-"):
            member = next(m for m in state.members if f"patroni-{m.name}" == name)
            pg = postmaster_pid(member)
            if not _stop_pid(pid, timeout=30):
                killed.append(name)
            if pg is not None and alive(pg):  # Patroni stops it; one left behind (its Patroni killed) goes
                _signal(pg, signal.SIGQUIT)  # immediate shutdown: the folder is thrown away
                _wait_gone(pg, 10)
        elif not _stop_pid(pid):
            killed.append(name)
    if state.private:  # the members' data, under /var/tmp (their logs are in DIR/logs)
        shutil.rmtree(state.private, ignore_errors=True)
    if remove:
        shutil.rmtree(state.root, ignore_errors=True)
    else:
        state.pids = {}
        state.save()
    return killed


def _stop_pid(pid: int, timeout: float = 15) -> bool:
    """SIGTERM to the process group, SIGKILL after ``timeout``; False when it had to be killed."""
    if not alive(pid):
        _reap(pid)
        return True
    _signal(pid, signal.SIGTERM)
    if _wait_gone(pid, timeout):
        return True
    _signal(pid, signal.SIGKILL)
    _wait_gone(pid, 10)
    return False


def _signal(pid: int, sig: int) -> None:
    """To the process group ``pid`` leads (our daemons lead theirs), else to the process alone."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    except PermissionError:
        pass


def _wait_gone(pid: int | None, timeout: float) -> bool:
    if pid is None:
        return True
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    _reap(pid)
    return True


def _reap(pid: int) -> None:
    """Collect a child of this process that has exited (the test runs `up` in-process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def alive(pid: int | None) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet collected, does not)."""
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _write_private(path: Path, text: str) -> None:
    """Mode 0600 from the start: these files hold the database passwords."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:])[-600:] or "(empty log)"
