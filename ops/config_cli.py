"""`payswitch config`: see the effective configuration and every key it accepts."""

from __future__ import annotations

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
    """Validate the configuration; exit non-zero with one line naming a bad key."""
    _ = app.config
    app.emit({"ok": True}, "configuration ok")


@config.command(name="keys")
@pass_app
def keys_(app: AppContext) -> None:
    """List every key with its environment variable and meaning."""
    rows = [
        {"key": key, "type": kind, "env": config_mod.env_name(*key.split(".")), "help": help_}
        for key, kind, help_ in config_mod.describe()
    ]
    width = max(len(r["key"]) for r in rows)
    human = "\n".join(f"{r['key']:<{width}}  {r['type']:<6}  {r['env']:<32}  {r['help']}" for r in rows)
    app.emit(rows, human)
