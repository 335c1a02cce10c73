"""`payswitch aml ...`: AML screening: watch lists, the review queue (host.aml holds the logic)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from host import aml as screening
from host import cardholders
from host.cli import _run, _table
from ops.actor import cli_actor
from ops.cli import AppContext, pass_app
from ops.localtime import format_local
from ops.pgpool import PgPool

T = TypeVar("T")
MAX_FILE = 256 * 1024 * 1024  # a watch list of a million entries is well under this


def _aml(app: AppContext, work: Callable[[PgPool], Awaitable[T]]) -> T:
    """``_run`` with host.aml's refusals as one line (exit 1)."""
    try:
        return _run(app, work)
    except screening.AmlError as exc:
        raise click.ClickException(str(exc)) from None


async def _cardholder_id(pool: PgPool, ref: str) -> int:
    """A CARDHOLDER argument, read as every command reads one (host.cardholders.resolve_cardholder)."""
    cid: int = await pool.run(cardholders.resolve_cardholder, ref)
    return cid


def _when(app: AppContext, instant: Any) -> str:
    return format_local(instant, app.config.clearing.timezone)


def _rescreen_line(r: screening.Rescreened) -> str:
    return (
        f"re-screened {r.screened} active cardholder(s) against {r.entries} entries: {r.with_hits} with "
        f"hits, {r.new_hits} new pending hit(s), {r.in_review} cardholder(s) in review"
    )


def _rescreen_json(r: screening.Rescreened) -> dict[str, int]:
    return {
        "screened": r.screened,
        "with_hits": r.with_hits,
        "new_hits": r.new_hits,
        "in_review": r.in_review,
        "entries": r.entries,
    }


@click.group()
def aml() -> None:
    """AML screening: watch lists, the review queue."""


@aml.group("list")
def list_group() -> None:
    """Watch lists: import a CSV, show the lists in force."""


@list_group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path))
@click.option(
    "--list",
    "list_name",
    default=None,
    metavar="NAME",
    help="The list this file is: rows with an empty list cell belong to it, others are refused.",
)
@pass_app
def list_import(app: AppContext, file: Path, list_name: str | None) -> None:
    """Import a watch list (CSV: name,aliases,date_of_birth,list,reference; aliases separated by ';',
    date of birth YYYY-MM-DD, YYYY or empty). It replaces each list it holds in one transaction (a bad
    line refuses the whole file), then every active cardholder is re-screened."""
    try:
        if file.stat().st_size > MAX_FILE:
            raise click.ClickException(f"{file}: larger than {MAX_FILE // (1024 * 1024)} MB")
        data = file.read_bytes()
    except OSError as exc:
        raise click.ClickException(f"{file}: {exc.strerror}") from None
    try:
        screening.parse_list(data, list_name)  # the file's first problem before any connection is opened
    except screening.AmlError as exc:
        raise click.ClickException(f"{file}: {exc}") from None
    threshold = app.config.aml.threshold

    async def work(pool: PgPool) -> tuple[list[screening.Imported], screening.Rescreened]:
        done = await pool.run(
            lambda conn: screening.import_list(
                conn, data, file_name=file.name, actor=cli_actor(), list_name=list_name
            )
        )
        return done, await pool.run(lambda conn: screening.rescreen(conn, threshold=threshold))

    done, again = _aml(app, work)
    lines = [
        f"list {d.list_name}: {d.rows} entries imported (import {d.import_id}; {d.replaced} replaced)"
        for d in done
    ]
    app.emit(
        {
            "imports": [
                {"list": d.list_name, "import_id": d.import_id, "entries": d.rows, "replaced": d.replaced}
                for d in done
            ],
            "rescreen": _rescreen_json(again),
        },
        "\n".join([*lines, _rescreen_line(again)]),
    )


@list_group.command("show")
@pass_app
def list_show(app: AppContext) -> None:
    """The watch lists in force: entries, when and by whom imported, the file's SHA-256."""

    async def work(pool: PgPool) -> list[dict[str, Any]]:
        return await pool.run(screening.lists)

    rows = _aml(app, work)
    shown = [
        {**r, "imported_at": _when(app, r["imported_at"]), "sha256": r["file_sha256"][:16]} for r in rows
    ]
    app.emit(
        {"lists": rows},
        _table(shown, ["list", "entries", "imported_at", "actor", "file_name", "sha256", "imports"]),
    )


@aml.command("rescreen")
@pass_app
def rescreen_cmd(app: AppContext) -> None:
    """Screen every active cardholder against the lists in force (`aml list import` does it too)."""
    threshold = app.config.aml.threshold

    async def work(pool: PgPool) -> screening.Rescreened:
        return await pool.run(lambda conn: screening.rescreen(conn, threshold=threshold))

    again = _aml(app, work)
    app.emit(_rescreen_json(again), _rescreen_line(again))


@aml.command("review")
@click.option(
    "--limit",
    type=click.IntRange(1, 1000),
    default=100,
    show_default=True,
    help="Cardholders shown (the oldest in review first).",
)
@pass_app
def review_cmd(app: AppContext, limit: int) -> None:
    """The review queue: cardholders in review with their pending hits (list, reference, name, score)."""

    async def work(pool: PgPool) -> list[dict[str, Any]]:
        return await pool.run(screening.review_queue, limit)

    queue = _aml(app, work)
    if not queue:
        app.emit({"review": []}, "no cardholder in review")
        return
    blocks = []
    for p in queue:
        head = f"cardholder {p['cardholder_id']} {p['name']} ({p['kyc_level']}), in review since " + _when(
            app, p["since"]
        )
        rows = [
            {
                **h,
                "score": f"{h['score']:.1f}",
                "born": h["entry_birth"] or "",
                "found": _when(app, h["found_at"]),
            }
            for h in p["hits"]
        ]
        blocks.append(
            head
            + "\n"
            + _table(
                rows, ["hit_id", "list", "reference", "matched_name", "born", "score", "scorer", "found"]
            )
        )
    app.emit({"review": queue}, "\n\n".join(blocks))


@aml.command("hits")
@click.argument("cardholder")
@pass_app
def hits_cmd(app: AppContext, cardholder: str) -> None:
    """Every hit of a cardholder with its decision (who, when, why)."""

    async def work(pool: PgPool) -> tuple[int, list[dict[str, Any]]]:
        cid = await _cardholder_id(pool, cardholder)
        return cid, await pool.run(screening.hits_of, cid)

    cid, rows = _aml(app, work)
    shown = [
        {
            **h,
            "score": f"{h['score']:.1f}",
            "found": _when(app, h["found_at"]),
            "decided": _when(app, h["decided_at"]),
            "decided_by": h["decided_by"] or "",
        }
        for h in rows
    ]
    app.emit(
        {"cardholder_id": cid, "hits": rows},
        _table(
            shown,
            [
                "hit_id",
                "list",
                "reference",
                "matched_name",
                "score",
                "found",
                "decision",
                "decided_by",
                "decided",
            ],
        ),
    )


def _decision(name: str, verb: str, help_text: str) -> None:
    @aml.command(name, help=help_text)
    @click.argument("cardholder")
    @click.option("--reason", required=True, help="Why (kept with the decision).")
    @pass_app
    def command(app: AppContext, cardholder: str, reason: str) -> None:
        decide = screening.clear if name == "clear" else screening.confirm

        async def work(pool: PgPool) -> screening.Decided:
            cid = await _cardholder_id(pool, cardholder)
            return await pool.run(lambda conn: decide(conn, cid, actor=cli_actor(), reason=reason))

        d = _aml(app, work)
        frozen = f"; card(s) frozen: {', '.join(map(str, d.frozen_cards))}" if d.frozen_cards else ""
        app.emit(
            {
                "cardholder_id": d.cardholder_id,
                "aml_status": d.aml_status,
                "hits": d.hits,
                "frozen_cards": d.frozen_cards,
            },
            f"cardholder {d.cardholder_id}: {d.hits} hit(s) {verb}, aml status {d.aml_status}{frozen}",
        )


_decision(
    "clear",
    "cleared",
    "The hits are someone else: every pending hit cleared, aml status back to "
    "clear (loads above the anonymous limit allowed again).",
)
_decision(
    "confirm",
    "confirmed",
    "The match is the cardholder: pending hits confirmed, aml status "
    "confirmed, every active card of the cardholder frozen.",
)
