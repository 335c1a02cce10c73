"""`payswitch config`: see the effective configuration and every key it accepts."""

from __future__ import annotations

import json

import click

from ops import config as config_mod
from ops.cli import AppContext, pass_app


@click.group()
def config() -> None:
    """Show and check the configuration (TOML file plus PAYSWITCH_* overrides)."""


@config.command()
@pass_app
def show(app: AppContext) -> None:
    """Print the effective configuration after file and environment overrides."""
    values = config_mod.as_dict(app.config)
    lines = []
    for section, keys in values.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value!r}" for key, value in keys.items())
        lines.append("")
    app.emit(values, "\n".join(lines).rstrip())


@config.command()
@pass_app
def check(app: AppContext) -> None:
    """Validate every key and PAYSWITCH_* variable; list every problem, one line each, and exit 2.

    The same check runs at the start of every command (rules: `payswitch config keys`)."""
    try:
        _ = app.config
    except config_mod.ConfigError as exc:
        if app.json_output:
            click.echo(json.dumps({"ok": False, "problems": exc.problems}, indent=2))
        for problem in exc.problems:
            click.echo(f"payswitch: {problem}", err=True)
        raise SystemExit(2) from None
    app.emit({"ok": True}, "configuration ok")


@config.command(name="keys")
@pass_app
def keys_(app: AppContext) -> None:
    """List every key with its environment variable, meaning and allowed values, then the rules that
    join keys and the other PAYSWITCH_* variables read."""
    rows = [
        {"key": key, "type": kind, "env": config_mod.env_name(*key.split(".")), "help": help_,
         "allowed": allowed}
        for key, kind, help_, allowed in config_mod.describe_rules()
    ]
    width = max(len(r["key"]) for r in rows)
    lines = [f"{r['key']:<{width}}  {r['type']:<6}  {r['env']:<40}  {r['help']}\n"
             f"{'':<{width}}  allowed: {r['allowed']}" for r in rows]
    lines += ["", "rules joining keys:", *(f"  {rule}" for rule in config_mod.JOINT_RULES),
              "", "other environment variables (any other PAYSWITCH_* name is refused):",
              *(f"  {name:<32}  {meaning}" for name, meaning in config_mod.OTHER_ENV.items())]
    app.emit(rows, "\n".join(lines))
