"""The whole `payswitch` tree, walked (issue 15, "not one traceback from any command"): every command is
found from the click tree itself (ops.cli.cli and its LazyGroup, so commands added later are walked too)
and run in-process through the real entry point ``ops.cli.main`` against the real database and HSM:

* ``--help`` exits 0;
* ``--no-such-option`` is a usage error: exit 2, one line on stderr;
* each option that takes a typed value (number, choice, date, amount, file) given a wrong one: exit 2,
  one line;
* a command that takes arguments, given values that name nothing: exit 2 (usage) or 1 (operational,
  e.g. "no card ..."), one line on stderr.

There is no catch-all in ``main``: an unexpected exception propagates here and fails the command's case
with its traceback. A command of a long-running kind (a server, `run`, `load`) is never given arguments
it would start with.
"""

from __future__ import annotations

import contextlib
import io
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import ops.cli
from ops.cli import cli
from ops.money import AMOUNT, AMOUNT_OR_ZERO
from tests.fixtures.hsm import HsmServer
from tests.host.helpers import cli_env

JUNK = "no-such-thing"
TYPED = (click.types.IntParamType, click.types.FloatParamType, click.Choice, click.DateTime, click.File,
         click.types.IntRange, click.types.FloatRange)


def _walk(group: click.Group, ctx: click.Context, prefix: tuple[str, ...] = ()) -> Iterator[
    tuple[tuple[str, ...], click.Command]
]:
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, (*prefix, name)
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from _walk(command, ctx, (*prefix, name))


COMMANDS = dict(_walk(cli, click.Context(cli)))
LEAVES = {path: cmd for path, cmd in COMMANDS.items() if not isinstance(cmd, click.Group)}


def _ids(paths: Iterable[tuple[str, ...]]) -> list[str]:
    return [" ".join(p) for p in paths]


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    def one_line(self) -> str:
        lines = self.stderr.strip().splitlines()
        assert len(lines) == 1, f"exit {self.code}, stderr not one line:\n{self.stderr}"
        return lines[0]


Invoke = Callable[..., Outcome]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, db_url: str, hsm_server: HsmServer) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tree")
    return {
        **cli_env(root, db_url, hsm_server.env),
        "PAYSWITCH_CLEARING_DIRECTORY": str(root / "clearing"),
        "PAYSWITCH_SETTLEMENT_OUTPUT_DIR": str(root / "settlement"),
        "PAYSWITCH_POS_SEAL_KEY_FILE": str(root / "seal.key"),
        "PAYSWITCH_LOG_LEVEL": "error",
    }


@pytest.fixture
def payswitch(env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Invoke:
    """``payswitch(*args) -> Outcome``: the real entry point, in this process, in a scratch folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ops.cli, "tune_gc", lambda: None)  # freezing the GC once per call adds up
    runner = CliRunner()

    def invoke(*args: str) -> Outcome:
        with runner.isolation(input=io.BytesIO(b""), env=env) as (out, err, _mixed):
            code = 0
            try:
                ops.cli.main(list(args))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            return Outcome(code, out.getvalue().decode(errors="replace"),
                           err.getvalue().decode(errors="replace"))

    return invoke


def _no_traceback(outcome: Outcome) -> None:
    assert "Traceback" not in outcome.stdout + outcome.stderr, outcome.stdout + outcome.stderr
    assert "internal error" not in outcome.stderr.lower(), outcome.stderr


@pytest.mark.parametrize("path", list(COMMANDS), ids=_ids(COMMANDS))
def test_help(payswitch: Invoke, path: tuple[str, ...]) -> None:
    result = payswitch(*path, "--help")
    _no_traceback(result)
    assert result.code == 0, result.stderr
    assert "Usage: payswitch" in result.stdout


@pytest.mark.parametrize("path", list(COMMANDS), ids=_ids(COMMANDS))
def test_unknown_option_is_a_one_line_usage_error(payswitch: Invoke, path: tuple[str, ...]) -> None:
    result = payswitch(*path, "--no-such-option")
    _no_traceback(result)
    assert result.code == 2, result.stderr
    line = result.one_line()
    assert line.startswith("Error: No such option") and f"'payswitch {' '.join(path)} --help'" in line, line


def _typed_options() -> list[tuple[tuple[str, ...], str]]:
    cases = []
    for path, cmd in LEAVES.items():
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.is_flag and not param.count and (
                isinstance(param.type, TYPED) or param.type in (AMOUNT, AMOUNT_OR_ZERO)
            ):
                cases.append((path, param.opts[-1]))
    return cases


TYPED_OPTIONS = _typed_options()


@pytest.mark.parametrize(("path", "option"), TYPED_OPTIONS, ids=[" ".join((*p, o)) for p, o in TYPED_OPTIONS])
def test_a_wrong_value_for_a_typed_option(payswitch: Invoke, path: tuple[str, ...], option: str) -> None:
    # a wrong value ("12.345" is no amount: more than two decimals; for the rest "no-such-thing" is no
    # number, choice, date or readable file)
    cmd = LEAVES[path]
    param = next(p for p in cmd.params if option in p.opts)
    bad = "12.345" if param.type in (AMOUNT, AMOUNT_OR_ZERO) else f"/{JUNK}/{JUNK}"
    result = payswitch(*path, option, bad)
    _no_traceback(result)
    assert result.code == 2, (result.code, result.stderr)
    assert result.one_line().startswith("Error: "), result.stderr


# Commands that would start something long-running or interactive if their arguments were accepted.
NEVER_RUN = {("run",), ("host", "serve"), ("switch", "serve"), ("hsm", "serve"), ("api", "serve"), ("load",),
             ("db", "up"), ("db", "down"), ("demo", "seed"), ("demo", "tour"),
             ("cluster", "up")}  # cluster up: etcd, three Patroni members, HAProxy and services, detached
# A command that may answer 0 to arguments naming nothing, and why (each one a decision, not an oversight).
ANSWERS_NOTHING_FOUND = {
    ("settlement", "fees"): "a query: says the merchant is not in the host and so has no fee",
}
WITH_ARGUMENTS = [
    path for path, cmd in LEAVES.items()
    if path not in NEVER_RUN and any(isinstance(p, click.Argument) for p in cmd.params)
]


@pytest.mark.parametrize("path", WITH_ARGUMENTS, ids=_ids(WITH_ARGUMENTS))
def test_arguments_that_name_nothing(payswitch: Invoke, path: tuple[str, ...]) -> None:
    result = payswitch(*path, *_arguments(LEAVES[path]))
    _no_traceback(result)
    if path in ANSWERS_NOTHING_FOUND and result.code == 0:
        assert JUNK in result.stdout, result.stdout
        return
    assert result.code in (1, 2), (result.code, result.stdout, result.stderr)
    assert result.one_line().startswith(("Error: ", "payswitch: ")), result.stderr


def _arguments(cmd: click.Command) -> list[str]:
    args: list[str] = []
    for param in cmd.params:
        if isinstance(param, click.Argument):
            value = f"/{JUNK}/{JUNK}" if isinstance(param.type, click.types.Path) else JUNK
            args += [value] * max(param.nargs, 1)
    return args


RUNNABLE = [path for path in LEAVES if path not in NEVER_RUN]


@pytest.mark.parametrize("path", RUNNABLE, ids=_ids(RUNNABLE))
def test_with_the_database_and_services_away(payswitch: Invoke, path: tuple[str, ...], env: dict[str, str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command with nothing to reach (no database, HSM or switch listening): a command that needs
    one says so in one line, exit 1; one that needs none answers."""
    with contextlib.ExitStack() as held:
        for key in ("DATABASE_URL", "HSM_PORT", "SWITCH_POS_3DES_PORT", "SWITCH_POS_SM4_PORT", "HOST_PORT"):
            # a port bound and never listening: nothing answers, and no other test can take it meanwhile
            sock = held.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            value = str(port) if key != "DATABASE_URL" else f"postgresql://payswitch@127.0.0.1:{port}/payswitch"
            monkeypatch.setitem(env, f"PAYSWITCH_{key}", value)
        result = payswitch(*path, *_arguments(LEAVES[path]))
    _no_traceback(result)
    if result.code != 0:
        assert result.code in (1, 2), (result.code, result.stderr)
        assert result.one_line().startswith(("Error: ", "payswitch: ")), result.stderr
