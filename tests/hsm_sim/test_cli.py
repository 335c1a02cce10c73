"""`payswitch hsm` commands: init (LMK file 0600, never overwritten), form-key, kcv, diag; serve with a
production LMK file, created at first start; metrics."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import trio
from click.testing import CliRunner

from hsm_sim.lmk import Lmk, load_file
from ops.cli import cli
from ops.pgembed import free_port
from tests.fixtures.hsm import HsmServer, start_hsm, stop_hsm
from tests.hsm_sim.helpers import TMK

ZERO = "0" * 32


def test_init_creates_private_file_and_refuses_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "hsm" / "lmk.json"
    runner = CliRunner()
    result = runner.invoke(cli, ["hsm", "init", "--lmk-file", str(path)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    lmk = load_file(path)
    assert not lmk.test and lmk.check_value().hex().upper() in result.output
    assert lmk.check_value() != Lmk.test_set().check_value()
    before = path.read_bytes()
    result = runner.invoke(cli, ["hsm", "init", "--lmk-file", str(path)])
    assert result.exit_code == 1 and "refusing to overwrite" in result.output
    assert path.read_bytes() == before
    assert "Traceback" not in result.output


def test_init_test_lmk(tmp_path: Path) -> None:
    path = tmp_path / "lmk.json"
    result = CliRunner().invoke(cli, ["--json", "hsm", "init", "--test-lmk", "--lmk-file", str(path)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["check_value"] == "7D22274C5745C5A1"
    assert load_file(path).test


def _env(server: HsmServer) -> dict[str, str]:
    return {**server.env, "PAYSWITCH_HSM_TIMEOUT_MS": "5000"}


def test_form_key_kcv_diag(hsm_server: HsmServer) -> None:
    runner = CliRunner()
    c1 = "11111111111111111111111111111111"
    c2 = bytes(a ^ b for a, b in zip(bytes.fromhex(TMK), bytes.fromhex(c1), strict=True)).hex().upper()
    answers = f"{c1}\n{c1}\n{c2}\n{c2}\n"
    result = runner.invoke(
        cli,
        ["--json", "hsm", "form-key", "--type", "000", "--components", "2"],
        input=answers,
        env=_env(hsm_server),
    )
    assert result.exit_code == 0, result.output
    assert c1 not in result.output and c2 not in result.output  # hidden input: never echoed
    out = json.loads(result.output[result.output.index("{") :])
    assert out["check_value"].startswith("08D7B4")
    key = out["key_under_lmk"]
    result = runner.invoke(cli, ["hsm", "kcv", key, "--type", "000"], env=_env(hsm_server))
    assert result.exit_code == 0 and result.output.startswith("08D7B4"), result.output
    result = runner.invoke(cli, ["hsm", "kcv", key, "--type", "002"], env=_env(hsm_server))
    assert result.exit_code == 1 and "error 10" in result.output
    result = runner.invoke(
        cli,
        ["hsm", "form-key", "--type", "002", "--components", "2", "--scheme", "S"],
        input=f"{TMK}\n{TMK}\n{ZERO}\n{ZERO}\n",
        env=_env(hsm_server),
    )
    assert result.exit_code == 0 and "key under LMK  S" in result.output, result.output
    result = runner.invoke(
        cli, ["hsm", "form-key", "--type", "002", "--components", "2"], input="12\n12\n", env=_env(hsm_server)
    )
    assert result.exit_code == 1 and "expected 32 hex characters" in result.output
    result = runner.invoke(cli, ["hsm", "diag"], env=_env(hsm_server))
    assert result.exit_code == 0 and "7D22274C5745C5A1" in result.output


def test_cli_without_hsm_is_one_line() -> None:
    result = CliRunner().invoke(
        cli,
        ["hsm", "diag"],
        env={"PAYSWITCH_HSM_PORT": str(free_port()), "PAYSWITCH_HSM_TIMEOUT_MS": "1000"},
    )
    assert result.exit_code == 1 and "unreachable" in result.output and "Traceback" not in result.output


def test_serve_with_production_lmk_file(tmp_path: Path) -> None:
    path = tmp_path / "lmk.json"
    metrics_port = free_port()
    server = start_hsm(
        extra_env={
            "PAYSWITCH_HSM_TEST_LMK": "false",
            "PAYSWITCH_HSM_LMK_FILE": str(path),
            "PAYSWITCH_HSM_METRICS_PORT": str(metrics_port),
        }
    )
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # created at first start
        expected = load_file(path).check_value().hex().upper()

        async def main() -> str:
            async with server.client() as hsm:
                await hsm.request("QQ")
                return (await hsm.diagnostics()).lmk_check_value

        assert trio.run(main) == expected
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        nc = re.search(r'payswitch_hsm_commands_total\{command="NC",error="00"\} (\d+)', text)
        assert nc is not None and int(nc.group(1)) >= 2  # the fixture's readiness probe and ours
        assert 'payswitch_hsm_commands_total{command="unknown",error="68"} 1.0' in text
        assert "payswitch_hsm_command_seconds_bucket" in text
        assert "payswitch_hsm_open_connections" in text
    finally:
        assert stop_hsm(server.process) == 0
    # a second start reuses the same file
    server = start_hsm(extra_env={"PAYSWITCH_HSM_TEST_LMK": "false", "PAYSWITCH_HSM_LMK_FILE": str(path)})
    try:

        async def again() -> str:
            async with server.client() as hsm:
                return (await hsm.diagnostics()).lmk_check_value

        assert trio.run(again) == expected
    finally:
        stop_hsm(server.process)


def test_bad_lmk_files_are_one_line_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{not json")
    tampered = tmp_path / "tampered.json"
    data = json.loads(Lmk.generate().to_json())
    data["lmk_3des"][0][0] = "0101010101010101"
    tampered.write_text(json.dumps(data))
    for path, words in ((corrupt, "not valid"), (tampered, "check value does not match")):
        # a subprocess: `serve` configures process-wide logging, which must not leak into this one
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "ops",
                "hsm",
                "serve",
                "--no-test-lmk",
                "--lmk-file",
                str(path),
                "--metrics-port",
                "0",
                "--port",
                str(free_port()),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 1 and words in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    from hsm_sim.lmk import LmkFileError

    try:
        load_file(missing)
    except LmkFileError as exc:
        assert "payswitch hsm init" in str(exc)
    else:
        raise AssertionError("missing file loaded")
