"""The CLI's audit record: every state-changing `payswitch` command writes one row (ops.audit).

One place for every command: the root group (ops.cli.LazyGroup.invoke) asks ``plan`` which command is
about to run, runs it, then calls ``write``: actor ``cli:<unix user>`` (ops.actor), role ``cli``, action
the command path (``card.freeze``), target its first argument (a PAN masked), after a summary of the
options given (never a secret: a PIN, password, key, ID number, phone or e-mail is shown as ``***``), the
outcome ``done``, or ``failed`` with the one-line error as the reason.

Which commands change state: those of the groups in ``AUDITED`` except the read-only ones (``READ_ONLY``
names and paths: show, list, check, report, ...); a show-or-set command (``SHOW_OR_SET``) only when it
was given something to set; a ``--dry-run`` never. The row is written after the command, on its own
connection: a command whose change committed and whose audit row cannot be written says so on stderr
(exit status unchanged: the change is made); a failed command's row that cannot be written is dropped
quietly (its own error is its one line).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import click

from ops.actor import cli_actor
from ops.logs import mask_pan, redact_text

# top-level groups whose commands change the programme's state (db, hsm, run, pos, demo, iso, config,
# load: local processes, devices and tools, not the programme's records). `operator` and `approval` are
# not here: their functions (console.operators, host.approvals) write a richer row of their own (target
# operator:<name> / approval:<id>, before and after) in the change's transaction, and one is enough.
AUDITED = frozenset({
    "acquirer", "aml", "api", "card", "cardholder", "clearing", "host", "inventory", "ledger",
    "merchant", "product", "settle", "settlement", "store", "switch", "terminal",
})
READ_ONLY_NAMES = frozenset({
    "list", "show", "check", "verify", "report", "history", "events", "hits", "review", "status", "fees",
    "runs", "serve", "openapi", "call", "public-key", "reconcile",
})
READ_ONLY_PATHS = frozenset({"inventory.report", "aml.list.show", "switch.saf.list"})
# show without options, set with them
SHOW_OR_SET = frozenset({"card.limits", "product.controls"})
SECRET = re.compile(r"pin|pass|secret|key|zpk|zak|zmk|tmk|component|token|otp|id_number|idno|phone|mail"
                    r"|account|iban|pan|number|track|cvn|cvv|birth|address", re.IGNORECASE)
_DIGITS = re.compile(r"^[0-9]{12,34}$")  # a card or bank account number, once spaces and dashes are gone


@dataclass(frozen=True)
class Plan:
    action: str
    target: str
    after: dict[str, Any]


def _safe(value: Any) -> Any:
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_safe(v) for v in value]
    text = str(value)
    if _DIGITS.fullmatch(re.sub(r"[\s-]", "", text)):
        return mask_pan(re.sub(r"[\s-]", "", text))
    return redact_text(text)[:200]


def plan(root: click.Group, ctx: click.Context, args: list[str]) -> Plan | None:
    """The audit row the command in ``args`` would write, or None (read-only, or not understood)."""
    try:
        return _plan(root, ctx, args)
    except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, LookupError, ValueError,
            TypeError, OSError):
        return None  # the real parse says what is wrong


def _plan(root: click.Group, ctx: click.Context, args: list[str]) -> Plan | None:
    if not args or args[0] not in AUDITED:
        return None
    cmd: click.Command = root
    c = ctx
    path: list[str] = []
    rest = list(args)
    while isinstance(cmd, click.Group):
        name, sub, rest = cmd.resolve_command(c, rest)
        if sub is None or name is None:
            return None
        path.append(name)
        c = sub.make_context(name, list(rest), parent=c, resilient_parsing=True)
        cmd = sub
        if isinstance(sub, click.Group):
            rest = [*c._protected_args, *c.args]
    dotted = ".".join(path)
    if path[-1] in READ_ONLY_NAMES or dotted in READ_ONLY_PATHS or "--help" in args or "-h" in args:
        return None
    if c.params.get("dry_run"):
        return None
    target = ""
    after: dict[str, Any] = {}
    first_argument = True
    for param in cmd.params:
        name = param.name or ""
        value = c.params.get(name)
        if isinstance(param, click.Argument) and first_argument:
            first_argument = False
            target = "" if value is None else str(_safe(value if not isinstance(value, tuple)
                                                         else " ".join(map(str, value))))
            continue
        if value is None or value is False or value == () or value == param.default:
            continue
        after[name] = "***" if SECRET.search(name) else _safe(value)
    if dotted in SHOW_OR_SET and not after:
        return None
    return Plan(dotted, target, after)


def write(app: Any, p: Plan, outcome: str, reason: str = "") -> None:
    """The command's audit row (``app``: ops.cli.AppContext); a failure to write it is said on stderr."""
    from ops import audit
    from ops.db import DatabaseUnavailable, with_connection

    async def work(conn: Any) -> int:
        return await audit.record(conn, actor=cli_actor(), role="cli", source="", action=p.action,
                                  target=p.target, after=p.after or None, reason=redact_text(reason)[:500],
                                  outcome=outcome)

    try:
        with_connection(app.config, work)
    except Exception as exc:  # unreachable, asyncpg's errors, a missing table: the command's result stands
        if outcome == "failed":
            return  # the command's own error is its one line (often the same unreachable database)
        known = isinstance(exc, (DatabaseUnavailable, OSError, audit.AuditError))
        why = str(exc) if known else type(exc).__name__
        click.echo(f"payswitch: warning: the audit record of {p.action} was not written: {why}", err=True)
