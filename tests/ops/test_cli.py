from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from ops.cli import COMMANDS, cli


def _all_commands(
    group: click.Group, ctx: click.Context, prefix: tuple[str, ...] = ()
) -> list[tuple[str, ...]]:
    found = []
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None, name
        found.append((*prefix, name))
        if isinstance(cmd, click.Group):
            found.extend(_all_commands(cmd, ctx, (*prefix, name)))
    return found


def test_every_command_has_help() -> None:
    ctx = click.Context(cli)
    commands = _all_commands(cli, ctx)
    assert {c[0] for c in commands} >= set(COMMANDS)
    runner = CliRunner()
    for path in commands:
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        cmd = cli
        for part in path:
            cmd = cmd.get_command(ctx, part)  # type: ignore[union-attr,assignment]
        assert cmd.help or cmd.short_help, f"payswitch {' '.join(path)} has no help text"


@pytest.mark.parametrize(
    ("env", "args", "expected"),
    [
        ({"PAYSWITCH_HSM_PORT": "x"}, ["config", "check"], "payswitch: config hsm.port = 'x'"),
        ({"PAYSWITCH_DATABASE_URL": "postgresql://u@127.0.0.1:1/none"}, ["db", "migrate"],
         "payswitch: cannot connect to the database"),
        ({}, ["nosuchcommand"], "No such command"),
    ],
)
def test_errors_are_one_line_and_non_zero(env: dict[str, str], args: list[str], expected: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ops", *args], capture_output=True, text=True, env={**_base_env(), **env}
    )
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_json_output() -> None:
    result = CliRunner().invoke(cli, ["--json", "config", "check"])
    assert result.exit_code == 0 and '"ok": true' in result.output


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("PAYSWITCH_")}
