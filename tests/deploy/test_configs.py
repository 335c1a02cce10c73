"""deploy/ checked by the tools that will read it: promtool (config, rules, rule unit tests, the
dashboard's queries), HAProxy, Patroni's validator, systemd-analyze; and checked against the code:
every metric an alert or a panel names is exported, every unit runs a `payswitch` command that exists,
every PAYSWITCH_* variable is a configuration key. A missing tool skips its test with one line."""

from __future__ import annotations

import ast
import configparser
import datetime
import importlib
import json
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML comes with schemathesis (dev); no stubs installed
from prometheus_client import REGISTRY

from ops import config as ops_config
from ops.cli import cli

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
SYSTEMD = DEPLOY / "systemd"
PACKAGES = ("ops", "hsm_sim", "host", "switch", "api", "settlement", "console")
MACHINES = {1: "10.0.0.11", 2: "10.0.0.12", 3: "10.0.0.13"}
INSTALLED_PAYSWITCH = "/opt/payswitch/venv/bin/payswitch"
PATRONI_API = Path("/usr/lib/python3/dist-packages/patroni/api.py")


def _tool(name: str, package: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/bin") / name, Path("/usr/sbin") / name) if p.exists()), None
    )
    if found is None:
        pytest.skip(f"{name} not installed (Debian package {package}; .ci/run installs it)")
    return found


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=120)


# --- Prometheus -------------------------------------------------------------------------------------


def test_promtool_check_config() -> None:
    promtool = _tool("promtool", "prometheus")
    r = _run(promtool, "check", "config", "prometheus.yml", cwd=PROMETHEUS)
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_check_rules() -> None:
    promtool = _tool("promtool", "prometheus")
    r = _run(promtool, "check", "rules", "alerts.yml", cwd=PROMETHEUS)
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_rule_unit_tests() -> None:
    promtool = _tool("promtool", "prometheus")
    r = _run(promtool, "test", "rules", "alerts_test.yml", cwd=PROMETHEUS)
    assert r.returncode == 0, r.stdout + r.stderr
    tested = {t["alertname"] for case in _yaml(PROMETHEUS / "alerts_test.yml")["tests"]
              for t in case["alert_rule_test"]}
    assert {"PayswitchLinkDown", "PayswitchSafQueueGrowing", "PayswitchDeclineRateSpike"} <= tested


def test_the_issue_s_alerts_are_there_with_for_severity_summary_and_runbook() -> None:
    rules = _alert_rules()
    names = {r["alert"] for r in rules}
    assert {"PayswitchLinkDown", "PayswitchSafQueueGrowing", "PayswitchDeclineRateSpike",
            "PayswitchAuthorizationP99High", "PayswitchLedgerWriterStalled", "PayswitchClearingFileMissing",
            "PayswitchReplicationLag", "PayswitchNoPrimary"} <= names
    for rule in rules:
        assert rule.get("for"), rule["alert"]
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["runbook"], rule["alert"]


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Every panel's query as a recording rule: promtool parses it as Prometheus would."""
    promtool = _tool("promtool", "prometheus")
    rules = [{"record": f"dashboard:panel_{i}", "expr": e} for i, e in enumerate(_dashboard_exprs())]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = _run(promtool, "check", "rules", str(path))
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_payswitch_metric_named_in_alerts_and_dashboard_is_exported() -> None:
    exported = _exported_payswitch_samples()
    used = _metric_names(" ".join(_exprs_everywhere()))
    missing = sorted(n for n in used if n.startswith("payswitch_") and n not in exported)
    assert not missing, f"not exported by any service (renamed?): {missing}"
    # the dashboard covers what the issue asks for
    dashboard = _metric_names(" ".join(_dashboard_exprs()))
    assert {"payswitch_switch_requests_total", "payswitch_switch_latency_seconds_bucket",
            "payswitch_switch_saf_depth", "payswitch_host_batch_size_bucket",
            "payswitch_host_batch_seconds_bucket", "payswitch_hsm_command_seconds_bucket",
            "patroni_xlog_replayed_location"} <= dashboard


def test_every_patroni_metric_named_is_one_patroni_exports() -> None:
    if not PATRONI_API.exists():
        pytest.skip("patroni not installed (Debian package patroni; .ci/run installs it)")
    source = PATRONI_API.read_text()
    used = {n for n in _metric_names(" ".join(_exprs_everywhere())) if n.startswith("patroni_")}
    assert used
    assert not [n for n in used if f'"{n}{{' not in source and f"{n}{{0}}" not in source]


# --- HAProxy ----------------------------------------------------------------------------------------


def test_haproxy_config_is_valid(tmp_path: Path) -> None:
    haproxy = _tool("haproxy", "haproxy")
    # the API frontend's certificate is installed on the machines; a throwaway one stands in for it
    pem = tmp_path / "payswitch.pem"
    pem.write_bytes(_self_signed_pem())
    cfg = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    assert "/etc/haproxy/certs/payswitch.pem" in cfg
    (tmp_path / "haproxy.cfg").write_text(cfg.replace("/etc/haproxy/certs/payswitch.pem", str(pem)))
    r = _run(haproxy, "-c", "-f", str(tmp_path / "haproxy.cfg"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_haproxy_fronts_the_configured_ports_and_the_primary_only() -> None:
    cfg = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    defaults = ops_config.defaults()
    for port in (defaults.switch.pos_3des_port, defaults.switch.pos_sm4_port, defaults.switch.h2h_port):
        assert f"bind 10.0.0.10:{port}\n" in cfg
        for machine in MACHINES.values():
            assert f"{machine}:{port} check" in cfg
    assert f":{defaults.api.port} check" in cfg and "option httpchk GET /readyz" in cfg
    primary = cfg.split("listen postgres_primary", 1)[1].split("\n# ---", 1)[0]
    assert "option httpchk GET /primary" in primary
    assert "http-check expect status 200" in primary
    assert "on-marked-down shutdown-sessions" in primary
    assert "stats enable" in cfg


# --- Patroni and etcd -------------------------------------------------------------------------------


def test_patroni_members_are_one_synchronous_cluster() -> None:
    members = {n: _yaml(DEPLOY / "patroni" / f"pg{n}.yml") for n in MACHINES}
    dcs = members[1]["bootstrap"]["dcs"]
    assert dcs["synchronous_mode"] is True
    assert dcs["synchronous_mode_strict"] is True
    params = dcs["postgresql"]["parameters"]
    assert params["synchronous_commit"] == "on" and params["wal_level"] == "replica"
    assert {"max_wal_senders", "wal_keep_size", "hot_standby"} <= params.keys()
    assert members[1]["postgresql"]["pg_hba"] == members[1]["bootstrap"]["pg_hba"]
    for n, member in members.items():
        assert member["name"] == f"pg{n}"
        assert member["restapi"]["connect_address"] == f"{MACHINES[n]}:8008"
        assert member["postgresql"]["connect_address"] == f"{MACHINES[n]}:5432"
        assert sorted(member["etcd3"]["hosts"]) == [f"{m}:2379" for m in MACHINES.values()]
        # apart from its name and addresses, every member is the same file
        text = (DEPLOY / "patroni" / f"pg{n}.yml").read_text()
        assert _neutral(text, n) == _neutral((DEPLOY / "patroni" / "pg1.yml").read_text(), 1)
        assert not re.search(r"password\s*:", text), "passwords belong in /etc/patroni/env.conf"


def test_patroni_validates_the_member_configuration(tmp_path: Path) -> None:
    """Patroni's own validator; it probes the addresses, so they are moved to loopback here (a port
    of ours listening stands in for etcd, which it expects to reach)."""
    patroni = _tool("patroni", "patroni")
    config = _yaml(DEPLOY / "patroni" / "pg1.yml")
    with socket.socket() as etcd:
        etcd.bind(("127.0.0.1", 0))
        etcd.listen()
        config["etcd3"]["hosts"] = [f"127.0.0.1:{etcd.getsockname()[1]}"]
        config["restapi"]["listen"] = f"127.0.0.1:{_free_port()}"
        config["postgresql"]["listen"] = f"127.0.0.1:{_free_port()}"
        path = tmp_path / "pg1.yml"
        path.write_text(yaml.safe_dump(config))
        r = _run(patroni, "--validate-config", str(path))
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr


def test_post_bootstrap_script_is_valid_shell() -> None:
    script = DEPLOY / "patroni" / "post_bootstrap.sh"
    assert _run("sh", "-n", str(script)).returncode == 0
    assert _yaml(DEPLOY / "patroni" / "pg1.yml")["bootstrap"]["post_bootstrap"].endswith(script.name)
    text = script.read_text()
    assert "CREATE DATABASE payswitch OWNER payswitch" in text and "CREATEROLE" in text


def test_etcd_members_form_one_three_member_cluster() -> None:
    for n, address in MACHINES.items():
        member = _yaml(DEPLOY / "etcd" / f"etcd{n}.yml")
        assert member["name"] == f"etcd{n}"
        assert member["initial-advertise-peer-urls"] == f"http://{address}:2380"
        assert member["initial-cluster"] == ",".join(
            f"etcd{m}=http://{a}:2380" for m, a in MACHINES.items())
        assert member["listen-metrics-urls"] == f"http://{address}:2381"


# --- systemd ----------------------------------------------------------------------------------------


def test_units_parse_and_run_payswitch_commands_that_exist() -> None:
    units = sorted(SYSTEMD.glob("payswitch*.service"))
    assert {u.name for u in units} >= {"payswitch-hsm.service", "payswitch-host@.service",
                                       "payswitch-switch@.service", "payswitch-api.service",
                                       "payswitch-settlement.service"}
    for unit in units:
        sections = _unit(unit)
        service = sections["Service"]
        assert service["User"] == ["payswitch"], unit.name
        assert service["NoNewPrivileges"] == ["yes"] and service["ProtectSystem"] == ["strict"], unit.name
        assert "Restart" in service or service["Type"] == ["oneshot"], unit.name
        for line in service["ExecStart"]:
            words = line.replace("'", " ").split()
            at = words.index(INSTALLED_PAYSWITCH)
            _assert_command_exists(words[at + 1:], unit.name)
    for path in SYSTEMD.rglob("*"):
        if path.is_file():
            _unit(path)  # every drop-in, timer and target parses


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze", "systemd")
    payswitch = ROOT / ".venv" / "bin" / "payswitch"
    names = []
    for unit in sorted(SYSTEMD.glob("payswitch*")):
        if not unit.is_file():
            continue
        name = unit.name.replace("@.", "@1.")  # a template is verified as an instance
        (tmp_path / name).write_text(unit.read_text().replace(INSTALLED_PAYSWITCH, str(payswitch)))
        names.append(str(tmp_path / name))
    r = subprocess.run([analyze, "verify", "--man=no", *names], capture_output=True, text=True,
                       timeout=120, env={"SYSTEMD_LOG_LEVEL": "notice", "PATH": "/usr/bin:/bin"})
    # units it cannot find (patroni@pg1, haproxy on a machine without them) are not ours to verify
    problems = [line for line in (r.stdout + r.stderr).splitlines()
                if line.strip() and "not found" not in line and "Failed to" not in line]
    assert not problems, "\n".join(problems)


def test_timer_runs_the_settlement_after_the_cutover() -> None:
    timer = _unit(SYSTEMD / "payswitch-settlement.timer")["Timer"]
    cutover = ops_config.defaults().clearing.cutover
    (at,) = timer["OnCalendar"]
    assert datetime.time.fromisoformat(at.split()[1]) > datetime.time.fromisoformat(cutover)
    assert ops_config.defaults().clearing.timezone in at


# --- payswitch configuration ------------------------------------------------------------------------


def test_every_payswitch_variable_is_a_configuration_key() -> None:
    known = set(ops_config.env_names())
    for path in [*SYSTEMD.rglob("*"), *(DEPLOY / "etc").iterdir()]:
        if path.is_file():
            for name in re.findall(r"\b(PAYSWITCH_[A-Z0-9_]+)=", path.read_text()):
                assert name in known, f"{path.name}: {name} is not a configuration key"


def test_production_configuration_loads_on_every_machine(tmp_path: Path) -> None:
    for n in MACHINES:
        env = dict(_env_file(DEPLOY / "etc" / f"node-ps{n}.env"))
        env.update(_env_file(DEPLOY / "etc" / "secrets.env.example"))
        # the folders are on the machines; here they are made in tmp_path
        for key in ("CLEARING_DIRECTORY", "SETTLEMENT_OUTPUT_DIR", "HOST_MAILER_DIR", "DATABASE_DATA_DIR"):
            env[f"PAYSWITCH_{key}"] = str(tmp_path / key.lower())
        env["PAYSWITCH_HSM_LMK_FILE"] = str(tmp_path / "lmk.json")
        config = ops_config.load(DEPLOY / "etc" / "payswitch.toml", env)
        assert config.switch.listen == MACHINES[n]
        assert config.database.url.endswith("@127.0.0.1:5000/payswitch")
        assert config.log.format == "json" and not config.hsm.test_lmk


# --- helpers ----------------------------------------------------------------------------------------


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _alert_rules() -> list[dict[str, Any]]:
    return [r for g in _yaml(PROMETHEUS / "alerts.yml")["groups"] for r in g["rules"]]


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "payswitch.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def _exprs_everywhere() -> list[str]:
    return [r["expr"] for r in _alert_rules()] + _dashboard_exprs()


_FUNCTIONS = {"sum", "rate", "increase", "delta", "max", "min", "histogram_quantile", "time", "absent",
              "by", "on", "and", "or", "unless", "group_right", "group_left", "le", "scalar"}


def _metric_names(text: str) -> set[str]:
    """Metric names in PromQL: identifiers outside {...} and [...], not followed by "(", not keywords."""
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\((?:by|on)?\s*\)", "", text)
    text = re.sub(r"\b(?:by|on)\s*\([^)]*\)", "", text)
    names = set(re.findall(r"\b([a-z_][a-z0-9_]*)\b(?!\s*\()", text))
    return {n for n in names if n not in _FUNCTIONS and "_" in n}


def _exported_payswitch_samples() -> set[str]:
    """Every sample name the services export: each module declaring metrics is imported, then the
    default registry's families are expanded as the exposition does (_total, _bucket/_sum/_count)."""
    for module in _metric_modules():
        importlib.import_module(module)
    names: set[str] = set()
    for family in REGISTRY.collect():
        base = family.name
        if family.type == "counter":
            names |= {f"{base}_total", f"{base}_created"}
        elif family.type == "histogram":
            names |= {f"{base}_bucket", f"{base}_sum", f"{base}_count", f"{base}_created"}
        else:
            names.add(base)
        names |= {s.name for s in family.samples}
    return {n for n in names if n.startswith("payswitch_")}


def _metric_modules() -> Iterator[str]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            source = path.read_text()
            if "prometheus_client" in source and _declares_metric(source):
                yield ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _declares_metric(source: str) -> bool:
    tree = ast.parse(source)
    return any(isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("prometheus_client")
               for n in ast.walk(tree))


def _neutral(text: str, n: int) -> str:
    """A member's file with its own name and address replaced by placeholders: in the comments and the
    listen and connect addresses (the etcd hosts name every machine and stay as they are)."""
    lines = []
    for line in text.splitlines():
        line = re.sub(rf"\bp([gs]){n}\b", r"p\1N", line)
        if line.lstrip().startswith(("#", "listen:", "connect_address:")):
            line = line.replace(MACHINES[n], "ADDR")
        lines.append(line)
    return "\n".join(lines)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as systemd reads it: sections of keys, each key with all its values in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"{path.name}: {raw!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    # configparser must read it too (duplicate keys allowed, as in systemd)
    parser = configparser.RawConfigParser(strict=False, comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    assert set(parser.sections()) == set(sections), path.name
    return sections


def _assert_command_exists(words: list[str], unit: str) -> None:
    group: click.Command = cli
    ctx = click.Context(cli)
    for word in words:
        if word.startswith("-") or "/" in word or not isinstance(group, click.Group):
            break
        sub = group.get_command(ctx, word)
        assert sub is not None, f"{unit}: `payswitch {' '.join(words)}`: no command {word!r}"
        group = sub
    assert not isinstance(group, click.Group), f"{unit}: `payswitch {' '.join(words)}` names a group"


def _env_file(path: Path) -> Iterator[tuple[str, str]]:
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            yield key.strip(), value.strip()


def _self_signed_pem() -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "payswitch.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
