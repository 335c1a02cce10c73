"""`payswitch cluster up|down|status`: the whole topology on loopback (ops/cluster.py holds the work)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ops import cluster as cluster_mod
from ops.cli import AppContext, pass_app

DEFAULT_DIR = Path("var/cluster")
_DIR = click.option(
    "--dir",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DIR,
    show_default=True,
    help="The cluster's throwaway folder (its state file, logs, configuration, etcd data).",
)


@click.group()
def cluster() -> None:
    """etcd, 3 Patroni-managed PostgreSQL members (synchronous replication), HAProxy, HSM, hosts and
    switches on loopback addresses, with throwaway folders (Debian: patroni, etcd-server, haproxy)."""


@cluster.command()
@_DIR
@click.option(
    "--hosts",
    type=click.IntRange(1, 8),
    default=1,
    show_default=True,
    help="host processes (more than one once host partitions are owned through leases)",
)
@click.option(
    "--switches",
    type=click.IntRange(1, 8),
    default=1,
    show_default=True,
    help="switch nodes behind HAProxy's POS ports",
)
@click.option("--no-seed", is_flag=True, help="Do not run `demo seed` (no links, routes, terminals).")
@pass_app
def up(app: AppContext, folder: Path, hosts: int, switches: int, no_seed: bool) -> None:
    """Start the cluster in the background and return; `cluster status` shows it, `cluster down` ends it."""
    try:
        state = cluster_mod.up(
            folder, hosts=hosts, switches=switches, seed=() if not no_seed else None,
            progress=None if app.json_output else click.echo,
        )  # fmt: skip
    except cluster_mod.ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    app.emit(
        cluster_mod.status(Path(state.root)),
        f"cluster up in {state.root}; `payswitch cluster down --dir {folder}` stops it",
    )


@cluster.command()
@_DIR
@pass_app
def status(app: AppContext, folder: Path) -> None:
    """Members (role, lag), services, ports."""
    try:
        view = cluster_mod.status(folder)
    except cluster_mod.ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    app.emit(view, _human(view))


@cluster.command()
@_DIR
@pass_app
def down(app: AppContext, folder: Path) -> None:
    """Stop every process of the cluster and remove its folders."""
    try:
        killed = cluster_mod.down(folder)
    except cluster_mod.ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    said = f" (killed after the wait: {', '.join(killed)})" if killed else ""
    app.emit({"stopped": True, "killed": killed}, f"cluster at {folder} stopped and removed{said}")


def _human(view: dict[str, Any]) -> str:
    lines = [
        f"cluster {view['root']}",
        f"database (HAProxy)  {view['database']}",
        f"etcd                {view['etcd']}",
    ]
    lines += [f"POS {k:<16}{v}" for k, v in view["pos"].items()]
    lines.append("members:")
    for m in view["members"]:
        lag = "" if m["lag"] in (None, "") else f" lag {m['lag']}"
        lines.append(
            f"  {m['name']:<5} {m['role']:<13} {m['state']:<10} 127.0.0.1:{m['port']}{lag} "
            f"(patroni {m['patroni']}, REST {m['rest_port']})"
        )
    lines.append("services:")
    for s in view["services"]:
        ports = " ".join(f"{k} {v}" for k, v in s["ports"].items())
        lines.append(f"  {s['name']:<9} {s['state']:<8} {ports}")
    return "\n".join(lines)
