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
    "product": "host.cli:product",
    "card": "host.cli:card",
    "merchant": "host.cli:merchant",
    "store": "host.cli:store",
    "terminal": "host.cli:terminal",
    "ledger": "host.cli:ledger",
    "switch": "switch.cli:switch",
    "settlement": "settlement.cli:settlement",
    "pos": "pos.cli:pos",
    "load": "pos.load_cli:load",
    "demo": "pos.demo:demo",
    "iso": "specs.cli:iso",
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


class LazyGroup(click.Group):
    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

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


def main() -> None:
    tune_gc()
    try:
        cli.main(standalone_mode=False, prog_name="payswitch")
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except _ONE_LINE_ERRORS as exc:
        click.echo(f"payswitch: {exc}", err=True)
        sys.exit(2 if isinstance(exc, config_mod.ConfigError) else 1)
    except KeyboardInterrupt:
        sys.exit(130)


def configure_logging(app: AppContext, service: str) -> None:
    logs.configure(app.config.log.format, app.config.log.level, service)


def _one_line_errors() -> tuple[type[BaseException], ...]:
    from ops.db import DatabaseUnavailable
    from ops.migrate import MigrationError
    from ops.pgembed import EmbeddedPostgresError

    return (config_mod.ConfigError, DatabaseUnavailable, MigrationError, EmbeddedPostgresError)


_ONE_LINE_ERRORS = _one_line_errors()
