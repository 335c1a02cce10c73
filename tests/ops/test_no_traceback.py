"""No traceback reaches a user: each failure an operator can cause at the start of a service or a
command, run as a real subprocess, ends non-zero with one line naming the problem (issue 15 item 3)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.pgembed import free_port
from tests.fixtures.hsm import HsmServer

pytestmark = pytest.mark.timeout(120)


def payswitch(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PAYSWITCH_")}
    return subprocess.run(
        [sys.executable, "-m", "ops", *args], env={**clean, **env}, capture_output=True, text=True,
        timeout=90, cwd=cwd,
    )


def one_line_failure(result: subprocess.CompletedProcess[str], expected: str, status: int = 1) -> None:
    """Exit ``status``, no traceback anywhere, and stderr is exactly one line holding ``expected``."""
    everything = result.stdout + result.stderr
    assert "Traceback" not in everything, everything
    assert result.returncode == status, everything
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0], lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A port nothing answers on and no other test can take meanwhile (bound, never listening)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def scratch(tmp_path: Path, db_url: str, hsm_server: HsmServer) -> dict[str, str]:
    """An empty config file, the test database and HSM, quiet logs, no metrics, free service ports."""
    (tmp_path / "empty.toml").write_text("")
    return {
        "PAYSWITCH_CONFIG": str(tmp_path / "empty.toml"),
        "PAYSWITCH_DATABASE_URL": db_url,
        **hsm_server.env,
        "PAYSWITCH_LOG_LEVEL": "error",
        "PAYSWITCH_CLEARING_AUTO_EMIT": "false",
        "PAYSWITCH_CLEARING_DIRECTORY": str(tmp_path / "clearing"),
        "PAYSWITCH_HOST_MAILER_DIR": str(tmp_path / "mailers"),
        "PAYSWITCH_SETTLEMENT_OUTPUT_DIR": str(tmp_path / "settlement"),
        "PAYSWITCH_HOST_PORT": str(free_port()),
        "PAYSWITCH_HOST_METRICS_PORT": "0",
        "PAYSWITCH_SWITCH_POS_3DES_PORT": str(free_port()),
        "PAYSWITCH_SWITCH_POS_SM4_PORT": str(free_port()),
        "PAYSWITCH_SWITCH_H2H_PORT": str(free_port()),
        "PAYSWITCH_SWITCH_METRICS_PORT": "0",
        "PAYSWITCH_HSM_METRICS_PORT": "0",
        "PAYSWITCH_API_PORT": str(free_port()),
        "PAYSWITCH_API_METRICS_PORT": "0",
        "PAYSWITCH_HSM_TEST_LMK": "true",
    }


# -- services whose port is taken ---------------------------------------------------------------------
def test_host_serve_with_its_port_in_use(scratch: dict[str, str], busy_port: int) -> None:
    result = payswitch({**scratch, "PAYSWITCH_HOST_PORT": str(busy_port)}, "host", "serve")
    one_line_failure(result, f"host cannot listen on 127.0.0.1:{busy_port} (host.port): the address is in")


def test_host_serve_with_its_metrics_port_in_use(scratch: dict[str, str], busy_port: int) -> None:
    result = payswitch({**scratch, "PAYSWITCH_HOST_METRICS_PORT": str(busy_port)}, "host", "serve")
    one_line_failure(result, f"host cannot listen on 127.0.0.1:{busy_port} (host.metrics_port)")


def test_switch_serve_with_a_pos_port_in_use(scratch: dict[str, str], busy_port: int) -> None:
    result = payswitch({**scratch, "PAYSWITCH_SWITCH_POS_SM4_PORT": str(busy_port)}, "switch", "serve")
    one_line_failure(result, f"switch cannot listen on 127.0.0.1:{busy_port} (switch.pos_sm4_port)")


def test_hsm_serve_with_its_port_in_use(scratch: dict[str, str], busy_port: int) -> None:
    result = payswitch({**scratch, "PAYSWITCH_HSM_PORT": str(busy_port)}, "hsm", "serve")
    one_line_failure(result, f"hsm cannot listen on 127.0.0.1:{busy_port} (hsm.port)")


def test_a_listen_address_not_of_this_machine(scratch: dict[str, str]) -> None:
    result = payswitch({**scratch, "PAYSWITCH_HOST_LISTEN": "192.0.2.1"}, "host", "serve")
    one_line_failure(result, "host cannot listen on 192.0.2.1:")
    assert "192.0.2.1 is not an address of this machine (change host.listen)" in result.stderr


# -- clearing emit ----------------------------------------------------------------------------------
def test_clearing_emit_into_a_folder_that_cannot_be(scratch: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    result = payswitch({**scratch, "PAYSWITCH_CLEARING_DIRECTORY": str(tmp_path / "a-file" / "x")},
                       "clearing", "emit", "--date", "2026-01-01")
    one_line_failure(result, "config clearing.directory", status=2)
    result = payswitch(scratch, "clearing", "emit", "--date", "2026-01-01", "--dir", str(tmp_path / "a-file"))
    assert "Traceback" not in result.stderr and result.returncode == 2, result.stderr
    assert "a-file" in result.stderr


def test_clearing_emit_with_the_database_down(scratch: dict[str, str], dead_port: int) -> None:
    down = f"postgresql://payswitch@127.0.0.1:{dead_port}/payswitch"
    result = payswitch({**scratch, "PAYSWITCH_DATABASE_URL": down}, "clearing", "emit")
    one_line_failure(result, "cannot connect to the database")


# -- database URLs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [("card", "list"), ("db", "migrate"), ("settle",), ("ledger", "check")])
def test_a_malformed_database_url(scratch: dict[str, str], args: tuple[str, ...]) -> None:
    result = payswitch({**scratch, "PAYSWITCH_DATABASE_URL": "postgresql://u:secret@host:99999/x"}, *args)
    one_line_failure(result, "config database.url = 'postgresql://u:***@host:99999/x': port '99999'", 2)
    assert "secret" not in result.stderr


@pytest.mark.parametrize("args", [("card", "list"), ("db", "migrate"), ("ledger", "check"),
                                  ("host", "serve"), ("switch", "serve")])
def test_an_unreachable_database(scratch: dict[str, str], args: tuple[str, ...], dead_port: int) -> None:
    down = f"postgresql://payswitch@127.0.0.1:{dead_port}/payswitch"
    result = payswitch({**scratch, "PAYSWITCH_DATABASE_URL": down}, *args)
    everything = result.stdout + result.stderr
    assert "Traceback" not in everything and result.returncode == 1, everything
    assert "database" in result.stderr.strip().splitlines()[-1], result.stderr


@pytest.mark.parametrize("args", [("card", "list"), ("db", "migrate"), ("ledger", "check")])
def test_a_wrong_password(scratch: dict[str, str], db_url: str, args: tuple[str, ...]) -> None:
    scheme, rest = db_url.split("://", 1)
    user_info, hosts = rest.split("@", 1)
    wrong = f"{scheme}://{user_info.split(':')[0]}:not-the-password@{hosts}"
    result = payswitch({**scratch, "PAYSWITCH_DATABASE_URL": wrong}, *args)
    one_line_failure(result, "cannot connect to the database")
    assert "not-the-password" not in result.stderr


# -- configuration: every problem, at `config check` and at the start of any command ------------------
@pytest.mark.parametrize("args", [("config", "check"), ("card", "list"), ("iso", "decode", "00"), ("run",)])
def test_every_config_problem_listed_exit_2(args: tuple[str, ...], tmp_path: Path) -> None:
    bad = {"PAYSWITCH_DATABSE_URL": "postgresql://x/y", "PAYSWITCH_CLEARING_CUTOVER": "7:00",
           "PAYSWITCH_CLEARING_TIMEZONE": "Asia/Beijing", "PAYSWITCH_HOST_PORT": "8584"}
    result = payswitch(bad, *args, cwd=tmp_path)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert lines[2].startswith("payswitch: config clearing.timezone = 'Asia/Beijing': not a time zone known "
                               "here (an IANA name such as Asia/Shanghai or UTC")
    assert lines[:2] + lines[3:] == [
        "payswitch: unknown environment variable PAYSWITCH_DATABSE_URL "
        "(did you mean PAYSWITCH_DATABASE_URL?)",
        "payswitch: config clearing.cutover = '7:00': expected a local time HH:MM, 00:00–23:59",
        "payswitch: config host.port and switch.pos_sm4_port: both listen on port 8584 (host.listen = "
        "'127.0.0.1', switch.listen = '127.0.0.1'); give each listener its own port",
    ]
    assert not (tmp_path / "var").exists()  # refused before anything was done


def test_config_check_json_lists_the_problems() -> None:
    bad = {"PAYSWITCH_HSM_PORT": "0", "PAYSWITCH_LOG_LEVEL": "loud"}
    result = payswitch(bad, "--json", "config", "check")
    assert result.returncode == 2
    assert json.loads(result.stdout) == {"ok": False, "problems": [
        "config log.level = 'loud': allowed values are debug, info, warning, error",
        "config hsm.port = '0': expected an integer from 1 to 65535",
    ]}
    assert payswitch({}, "--json", "config", "check").stdout.strip().startswith("{")
