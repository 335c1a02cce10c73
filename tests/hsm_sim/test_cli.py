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
from ops import processes
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
    for private in (corrupt, tampered):
        private.chmod(0o600)  # else refused for its mode before its content is read
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


def _serve_in(cwd: Path, *args: str) -> subprocess.Popen[bytes]:
    """`hsm serve` with the shipped defaults (no PAYSWITCH_HSM_TEST_LMK) in ``cwd``, whose var/ it uses."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYSWITCH_")}
    env |= {"PAYSWITCH_HSM_PORT": str(free_port()), "PAYSWITCH_HSM_METRICS_PORT": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "ops", "hsm", "serve", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _check_value_of(proc: subprocess.Popen[bytes]) -> str:
    """The LMK check value the service logged at start (``lmk_loaded``), then stop it."""
    assert proc.stderr is not None
    lines = []
    for raw in proc.stderr:
        line = raw.decode(errors="replace")
        lines.append(line)
        if "lmk_loaded" in line:
            break
    processes.stop(proc, timeout=10)
    text = "".join(lines)
    found = re.search(r"check_value=([0-9A-F]{16})", text)
    assert found is not None, text
    return found.group(1)


def test_serve_defaults_to_a_new_lmk_file_not_the_test_lmk(tmp_path: Path) -> None:
    first = _check_value_of(_serve_in(tmp_path))
    path = tmp_path / "var" / "hsm" / "lmk.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # the shipped hsm.lmk_file, made at first start
    assert not load_file(path).test and first == load_file(path).check_value().hex().upper()
    assert first != Lmk.test_set().check_value().hex().upper()
    assert _check_value_of(_serve_in(tmp_path)) == first  # the next start keeps its keys


def test_test_lmk_warns_at_every_start(tmp_path: Path) -> None:
    for _ in range(2):
        proc = _serve_in(tmp_path, "--test-lmk")
        out = b""
        assert proc.stderr is not None
        for raw in proc.stderr:
            out += raw
            if b"lmk_loaded" in raw:
                break
        processes.stop(proc, timeout=10)
        assert b"test_lmk_in_use" in out and b"warning" in out.lower(), out
    assert not (tmp_path / "var" / "hsm" / "lmk.json").exists()


def test_lmk_file_open_to_others_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "var" / "hsm" / "lmk.json"
    from hsm_sim.lmk import create_file

    create_file(path, Lmk.generate())
    os.chmod(path, 0o644)
    proc = _serve_in(tmp_path)
    _out, err = proc.communicate(timeout=30)
    text = err.decode()
    assert proc.returncode == 1 and "open to group or others (mode 0644)" in text, text
    assert "chmod 600" in text
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # refused, not silently "fixed"
