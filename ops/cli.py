"""The `payswitch` command: one entry point, a subcommand group per component.

Subcommands are imported only when used, so `payswitch --help` stays quick and a broken component
cannot stop the others' commands. Every expected failure is printed as one line on stderr with a
non-zero exit status: commands raise ``click.ClickException`` (or one of the error types registered in
``_ONE_LINE_ERRORS``) and never print tracebacks for operator mistakes.
"""

from __future__ import annotations

import importlib
import json
import sys
from dataclasses import dataclass
from typing import Any

import click

from ops import config as config_mod
from ops import logs
from ops.runtime import tune_gc

# name -> "module:attribute" of a click command or group. One line per subcommand.
COMMANDS: dict[str, str] = {
    "config": "ops.config_cli:config",
    "db": "ops.db_cli:db",
    "hsm": "hsm_sim.cli:hsm",
    "run": "ops.run_cli:run",
    "settle": "settlement.cli:settle",
    "clearing": "host.clearing_cli:clearing",
    "host": "host.cli:host",
    "product": "host.catalog_cli:product",
    "card": "host.card_cli:card",
    "cardholder": "host.cardholder_cli:cardholder",
    "aml": "host.aml_cli:aml",
    "inventory": "host.inventory_cli:inventory",
    "merchant": "host.catalog_cli:merchant",
    "store": "host.catalog_cli:store",
    "terminal": "host.catalog_cli:terminal",
    "acquirer": "host.catalog_cli:acquirer",
    "ledger": "host.cli:ledger",
    "switch": "switch.cli:switch",
    "settlement": "settlement.cli:settlement",
    "pos": "pos.cli:pos",
    "load": "pos.load_cli:load",
    "demo": "pos.demo:demo",
    "iso": "specs.cli:iso",
    "api": "api.cli:api",
    "approval": "host.approval_cli:approval",
    "operator": "console.operator_cli:operator",
    "audit": "ops.audit_cli:audit",
    "cluster": "ops.cluster_cli:cluster",
}


@dataclass
class AppContext:
    """What every subcommand receives through ``click.pass_obj``."""

    config_path: str | None
    json_output: bool
    _config: config_mod.Config | None = None

    @property
    def config(self) -> config_mod.Config:
        if self._config is None:
            self._config = config_mod.load(self.config_path)
        return self._config

    def emit(self, data: Any, human: str) -> None:
        """Print ``data`` as JSON when --json was given, else the human text."""
        if self.json_output:
            click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
        else:
            click.echo(human)


pass_app = click.make_pass_decorator(AppContext)
ARGV_KEY = "payswitch.argv"


class LazyGroup(click.Group):
    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[ARGV_KEY] = list(args)  # the root callback needs to know whether help was asked for
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        """The command, then its audit row when it changes state (ops.cli_audit: one place for all)."""
        from ops import cli_audit

        planned = cli_audit.plan(self, ctx, [*ctx._protected_args, *ctx.args]) if ctx.parent is None else None
        if planned is None:
            return super().invoke(ctx)
        try:
            result = super().invoke(ctx)
        except click.exceptions.Exit as exc:
            cli_audit.write(ctx.obj, planned, "done" if exc.exit_code == 0 else "failed",
                            "" if exc.exit_code == 0 else f"exit status {exc.exit_code}")
            raise
        except (click.UsageError, click.exceptions.Abort, KeyboardInterrupt):
            raise
        except click.ClickException as exc:
            cli_audit.write(ctx.obj, planned, "failed", exc.format_message())
            raise
        except _ONE_LINE_ERRORS as exc:
            cli_audit.write(ctx.obj, planned, "failed", str(exc))
            raise
        cli_audit.write(ctx.obj, planned, "failed" if isinstance(result, int) and result else "done")
        return result

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module_name, attr = self.lazy[cmd_name].split(":")
            command = getattr(importlib.import_module(module_name), attr)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config", "config_path", metavar="FILE", envvar="PAYSWITCH_CONFIG",
    help="Configuration file (default: ./payswitch.toml if present, else the shipped defaults).",
)
@click.option("--json", "json_output", is_flag=True, help="Machine-readable JSON output where supported.")
@click.version_option(package_name="payswitch", message="payswitch %(version)s")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, json_output: bool) -> None:
    """payswitch: ISO 8583 payment switch and prepaid-card authorization host.

    \b
    Start everything for development:   payswitch run
    Embedded PostgreSQL:                payswitch db up | status | url | down
    Any command's options:              payswitch COMMAND --help
    """
    ctx.obj = AppContext(config_path=config_path, json_output=json_output)
    # Every command starts from a checked configuration, all its problems listed at once (exit 2), even
    # one that reads none of it; help is always shown, and `config` reports problems itself.
    asked_help = bool(set(ctx.meta.get(ARGV_KEY, [])) & set(ctx.help_option_names))
    if ctx.invoked_subcommand not in (None, "config") and not asked_help and not ctx.resilient_parsing:
        _ = ctx.obj.config


def main(args: list[str] | None = None) -> None:
    """The entry point: run the command, turn every expected failure into one line (a list for a
    configuration, one line per problem) and the exit status: 2 usage or configuration, 1 operational.

    There is deliberately no catch-all: an unexpected exception is a bug and keeps its traceback (the
    tree-walk test, tests/test_cli_tree.py, fails on it)."""
    tune_gc()
    try:
        status = cli.main(args, standalone_mode=False, prog_name="payswitch")
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        _usage(exc)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except _ONE_LINE_ERRORS as exc:
        sys.exit(_one_line(exc))
    except BaseExceptionGroup as group:  # raised out of a trio nursery: one line if every part is known
        leaves = _leaves(group)
        if not all(isinstance(leaf, (click.ClickException, *_ONE_LINE_ERRORS)) for leaf in leaves):
            raise
        sys.exit(max(_one_line(leaf) for leaf in leaves))
    except KeyboardInterrupt:
        sys.exit(130)
    if isinstance(status, int) and status:  # ctx.exit(N) in non-standalone mode is returned, not raised
        sys.exit(status)


def _usage(exc: click.UsageError) -> None:
    """A usage error in one line with where to find help (click's own shows the usage block first)."""
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):  # a group run bare: its help is the answer
        exc.show()
        return
    where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
    message = " ".join(exc.format_message().split())  # click lists a Choice's values one per line
    click.echo(f"Error: {message.rstrip('.')}{where}", err=True)


def _one_line(exc: BaseException) -> int:
    """Print a known failure (every problem of a configuration error on its own line); its exit status."""
    if isinstance(exc, click.ClickException):
        _usage(exc) if isinstance(exc, click.UsageError) else exc.show()
        return exc.exit_code
    if isinstance(exc, config_mod.ConfigError):
        for problem in exc.problems:
            click.echo(f"payswitch: {problem}", err=True)
        return 2
    click.echo(f"payswitch: {exc}", err=True)
    return 1


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


def configure_logging(app: AppContext, service: str) -> None:
    logs.configure(app.config.log.format, app.config.log.level, service)


def _one_line_errors() -> tuple[type[BaseException], ...]:
    from ops.db import DatabaseUnavailable
    from ops.listening import CannotListen
    from ops.migrate import MigrationError
    from ops.pgembed import EmbeddedPostgresError

    return (config_mod.ConfigError, DatabaseUnavailable, MigrationError, EmbeddedPostgresError, CannotListen)


_ONE_LINE_ERRORS = _one_line_errors()
