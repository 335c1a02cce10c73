"""`payswitch load`: drive the running switch with many terminals and report what it sustained.

Terminals and cards come from the load pool written by ``payswitch demo seed`` (``var/pos/load-pool.json``).
Progress goes to stderr once a second; the report to stdout (``--json`` for scripts and bench/). After
the run, ``payswitch ledger check`` is run as a subprocess (when the host provides it) so the report says
whether the ledger is still consistent.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import trio

from ops.cli import COMMANDS, AppContext, pass_app
from ops.money import parse_money
from pos.load import (
    LoadError,
    LoadPlan,
    parse_mix,
    read_pool,
    read_stans,
    run_load,
    stans_path,
    write_stans,
)

DEFAULT_POOL = Path("var/pos/load-pool.json")


def ledger_check(config_path: str | None, timeout: float = 300.0) -> dict[str, Any]:
    """Run `payswitch ledger check`; {"status": "clean"|"failed"|"skipped", "detail": ...}."""
    if "ledger" not in COMMANDS:
        return {
            "status": "skipped",
            "detail": "this build has no `payswitch ledger check` (host not installed)",
        }
    argv = [sys.executable, "-m", "ops"]
    if config_path:
        argv += ["--config", config_path]
    argv += ["ledger", "check"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "detail": f"ledger check did not finish in {timeout:.0f} s"}
    lines = (proc.stdout.strip() or proc.stderr.strip()).splitlines()
    # Clean: the summary line; failed: the failing checks.
    detail = lines[-1:] if proc.returncode == 0 else [ln for ln in lines if "FAIL" in ln] or lines[-3:]
    return {
        "status": "clean" if proc.returncode == 0 else "failed",
        "exit": proc.returncode,
        "detail": " / ".join(detail[-5:])[:500],
    }


@click.command()
@click.option(
    "-n",
    "--terminals",
    type=click.IntRange(1, 5000),
    help="Concurrent terminals, each its own connection (default: the pool's, at most 50).",
)
@click.option(
    "--mix",
    default="purchase=100",
    show_default=True,
    help="Transaction weights, e.g. purchase=90,balance=5,preauth=5 (also echo, topup; the demo load "
    "cards are fixed-amount gift cards, so top-ups are declined 57).",
)
@click.option("-d", "--duration", type=click.FloatRange(0.1, 86400), help="Seconds to run (default 10).")
@click.option("-c", "--count", type=click.IntRange(1), help="Stop after this many requests.")
@click.option("--rate", type=click.FloatRange(0.1), help="Target requests/s overall (default: flat out).")
@click.option("--amount", default="1.00", show_default=True, help="Amount of each purchase, yuan.")
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 600),
    default=10.0,
    show_default=True,
    help="Seconds before a request counts as unanswered (and is reversed).",
)
@click.option(
    "--pool",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_POOL,
    show_default=True,
    help="Terminals and cards to use.",
)
@click.option(
    "--per-connection",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Terminals sharing one TCP connection, as behind a concentrator (fewer system calls).",
)
@click.option("--no-ledger-check", is_flag=True, help="Skip the `ledger check` after the run.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
@pass_app
def load(
    app: AppContext,
    terminals: int | None,
    mix: str,
    duration: float | None,
    count: int | None,
    rate: float | None,
    amount: str,
    timeout: float,
    pool: Path,
    per_connection: int,
    no_ledger_check: bool,
    quiet: bool,
) -> None:
    """Run N concurrent terminals against the switch; report throughput, latency and response codes."""
    try:
        the_pool = read_pool(pool)
        plan = LoadPlan(
            pool=the_pool,
            terminals=terminals or min(50, len(the_pool.terminals)),
            mix=parse_mix(mix),
            duration=duration if duration is not None else (None if count else 10.0),
            count=count,
            rate=rate,
            amount=parse_money(amount),
            timeout=timeout,
            per_connection=per_connection,
            stans=read_stans(stans_path(pool)),
        )
    except (LoadError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None

    def progress(p: dict[str, Any]) -> None:
        if not quiet:
            click.echo(
                f"[{p['elapsed_s']:>6.1f}s] {p['rate_per_s']:>8.1f}/s  p50 {p['p50_ms']:>7.2f} ms  "
                f"p99 {p['p99_ms']:>7.2f} ms  answered {p['answered']}  declined {p['declined']}  "
                f"errors {p['errors']}",
                err=True,
            )

    try:
        report = trio.run(run_load, plan, progress)
    except LoadError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        with contextlib.suppress(OSError):  # the next run would start at STAN 1: its replays are 00s
            write_stans(stans_path(pool), plan.stans)
    data = report.as_dict()
    data["ledger_check"] = (
        {"status": "skipped", "detail": "--no-ledger-check"}
        if no_ledger_check
        else ledger_check(app.config_path)
    )
    lc = data["ledger_check"]
    human = (
        report.render()
        + f"\nledger check     {lc['status']}"
        + (f" ({lc['detail']})" if lc.get("detail") else "")
    )
    if app.json_output:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        click.echo(human)
    if lc["status"] == "failed":
        raise SystemExit(3)
