from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from ops import config


def test_shipped_defaults_validate_and_cover_every_key() -> None:
    cfg = config.defaults()
    assert cfg.hsm.port == 1500
    assert cfg.host.port == 9583
    assert cfg.switch.pos_3des_port == 8583
    keys = {k for k, _, _ in config.describe()}
    assert "database.url" in keys and "log.format" in keys


def test_file_then_env_override(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text('[hsm]\nport = 1600\n[log]\nformat = "json"\n')
    cfg = config.load(f, env={"PAYSWITCH_HSM_PORT": "1700", "PAYSWITCH_DATABASE_URL": "postgresql://x/y"})
    assert cfg.hsm.port == 1700
    assert cfg.log.format == "json"
    assert cfg.database.url == "postgresql://x/y"


def test_config_env_points_at_file(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text("[host]\nport = 9999\n")
    assert config.load(env={"PAYSWITCH_CONFIG": str(f)}).host.port == 9999


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PAYSWITCH_HSM_PORT": "abc"}, "config hsm.port = 'abc': expected an integer from 1 to 65535"),
        ({"PAYSWITCH_HSM_PORT": "70000"}, "config hsm.port = '70000': expected an integer from 1 to 65535"),
        ({"PAYSWITCH_LOG_FORMAT": "xml"}, "config log.format = 'xml': allowed values are console, json"),
        ({"PAYSWITCH_HSM_TEST_LMK": "maybe"}, "config hsm.test_lmk = 'maybe': expected true or false"),
        ({"PAYSWITCH_CLEARING_CUTOVER": "25:00"},
         "config clearing.cutover = '25:00': expected a local time HH:MM, 00:00–23:59"),
        ({"PAYSWITCH_DATABASE_POOL_MIN": "20", "PAYSWITCH_DATABASE_POOL_MAX": "5"}, "must not exceed"),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(env: dict[str, str], message: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        config.load(env=env)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_key_and_section_and_bad_toml(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text("[hsm]\nprot = 1\n")
    with pytest.raises(config.ConfigError, match=r"unknown key hsm.prot \(did you mean hsm.port\?\)$"):
        config.load(f, env={})
    f.write_text("[hsm]\nzzzzzz = 1\n")
    with pytest.raises(config.ConfigError, match=r"unknown key hsm.zzzzzz; allowed: listen, port"):
        config.load(f, env={})
    f.write_text("[nope]\na = 1\n")
    with pytest.raises(config.ConfigError, match=r"unknown section \[nope\]"):
        config.load(f, env={})
    f.write_text("[hsm\n")
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        config.load(f, env={})
    with pytest.raises(config.ConfigError, match="No such file"):
        config.load(tmp_path / "missing.toml", env={})


def test_file_value_of_wrong_type(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text('[hsm]\nport = "x"\n')
    with pytest.raises(config.ConfigError, match=r"config hsm\.port = 'x'"):
        config.load(f, env={})
    f.write_text("[hsm]\nport = true\n")
    with pytest.raises(config.ConfigError, match=r"config hsm\.port = True"):
        config.load(f, env={})


def test_readme_config_table_is_current() -> None:
    from ops import config_docs

    readme = Path(__file__).resolve().parents[2] / "README.md"
    text = readme.read_text()
    assert config_docs.render(text) == text, "README config table is stale: run python -m ops.config_docs"


# -- every value checked, every problem at once, in words (issue 15 item 3) --------------------------
def _problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(config.ConfigError) as err:
        config.load(env=env)
    return err.value.problems


def test_every_problem_is_listed_at_once_one_line_each() -> None:
    problems = _problems({
        "PAYSWITCH_HSM_PORT": "x",
        "PAYSWITCH_CLEARING_TIMEZONE": "Asia/Shangai",
        "PAYSWITCH_CLEARING_CUTOVER": "7",
        "PAYSWITCH_HOST_INSTITUTION_ID": "12ab",
        "PAYSWITCH_DATABSE_URL": "postgresql://x/y",
    })
    assert problems == [
        "unknown environment variable PAYSWITCH_DATABSE_URL (did you mean PAYSWITCH_DATABASE_URL?)",
        "config hsm.port = 'x': expected an integer from 1 to 65535",
        "config host.institution_id = '12ab': expected 1 to 11 digits",
        "config clearing.cutover = '7': expected a local time HH:MM, 00:00–23:59",
        "config clearing.timezone = 'Asia/Shangai': not a time zone known here (an IANA name such as "
        "Asia/Shanghai or UTC; did you mean Asia/Shanghai?)",
    ]
    assert all("\n" not in p for p in problems)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PAYSWITCH_CLEARING_TIMEZONE": "Mars/Olympus"}, "not a time zone known here"),
        ({"PAYSWITCH_CLEARING_TIMEZONE": ""}, "not a time zone known here"),
        ({"PAYSWITCH_CLEARING_CUTOVER": "23:60"}, "expected a local time HH:MM, 00:00–23:59"),
        ({"PAYSWITCH_SWITCH_INSTITUTION_ID": "123456789012"}, "expected 1 to 11 digits"),
        ({"PAYSWITCH_DATABASE_NAME": "Pay-Switch"}, "lowercase letters, digits and _"),
        ({"PAYSWITCH_DATABASE_URL": "mysql://u@h/db"}, "a URL starting postgresql:// or postgres://"),
        ({"PAYSWITCH_DATABASE_URL": "localhost:5432/db"}, "a URL starting postgresql:// or postgres://"),
        ({"PAYSWITCH_DATABASE_URL": "postgresql://u@h:0/db"}, "port '0' is not a number from 1 to 65535"),
        ({"PAYSWITCH_DATABASE_URL": "postgresql://u@h:54x/db"}, "port '54x' is not a number"),
        ({"PAYSWITCH_DATABASE_URL": "postgresql://u@/db?host=/tmp&port=99999"}, "port '99999'"),
        ({"PAYSWITCH_DATABASE_URL": "postgresql://u@bad_host!/db"}, "host 'bad_host!' is not an IP address"),
        ({"PAYSWITCH_DATABASE_URL": "postgresql://u@h:5432"}, "the URL names no database"),
        ({"PAYSWITCH_HOST_LISTEN": "not an address"}, "expected an IP address or a host name"),
        ({"PAYSWITCH_HSM_HOST": ""}, "expected an IP address or a host name"),
        ({"PAYSWITCH_SETTLEMENT_DEFAULT_CYCLE": "weekly"},
         "settlement.default_cycle_day = 0: with default_cycle weekly it must be a weekday 1-7"),
        ({"PAYSWITCH_SETTLEMENT_DEFAULT_CYCLE": "fortnightly"}, "allowed values are daily, weekly, monthly"),
        ({"PAYSWITCH_SETTLEMENT_DEFAULT_CYCLE_DAY": "3"}, "with default_cycle daily it must be 0"),
        ({"PAYSWITCH_HOST_PORT": "8583"},
         "config host.port and switch.pos_3des_port: both listen on port 8583 (host.listen = '127.0.0.1', "
         "switch.listen = '127.0.0.1'); give each listener its own port"),
        ({"PAYSWITCH_HOST_METRICS_PORT": "9103", "PAYSWITCH_SWITCH_METRICS_LISTEN": "0.0.0.0"},
         "config host.metrics_port and switch.metrics_port: both listen on port 9103"),
        ({"PAYSWITCH_HOST_PORT": "99999"}, "config host.port = '99999': expected an integer from 1 to 65535"),
    ],
)
def test_each_rule_in_words(env: dict[str, str], message: str) -> None:
    problems = _problems(env)
    assert len(problems) == 1, problems
    assert message in problems[0]
    assert not re.search(r"\\d|\[|\(\?|\*\)", problems[0]), "a regular expression shown to a user"


def test_same_port_on_two_addresses_is_fine_and_metrics_off_never_collides() -> None:
    config.load(env={"PAYSWITCH_HOST_PORT": "8583", "PAYSWITCH_HOST_LISTEN": "127.0.0.2"})
    config.load(env={"PAYSWITCH_HOST_METRICS_PORT": "0", "PAYSWITCH_SWITCH_METRICS_PORT": "0"})


def test_valid_database_urls() -> None:
    for url in ["", "postgresql://u:p@db.example.com:5432/payswitch", "postgres://u@10.0.0.5/payswitch",
                "postgresql://u@/payswitch?host=/var/run/postgresql&port=5433",
                "postgresql://u@h1:5432,h2:5433/payswitch", "postgresql://u@[::1]:5432/payswitch"]:
        assert config.load(env={"PAYSWITCH_DATABASE_URL": url}).database.url == url


def test_a_database_url_password_is_never_shown() -> None:
    (problem,) = _problems({"PAYSWITCH_DATABASE_URL": "postgresql://u:s3cret@h:1x/db"})
    assert "s3cret" not in problem and "postgresql://u:***@h:1x/db" in problem
    (problem,) = _problems({"PAYSWITCH_DATABASE_URL": "postgresql://u@h:1x/db?password=s3cret"})
    assert "s3cret" not in problem


def test_paths_say_which_key_and_why(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    problems = _problems({
        "PAYSWITCH_CLEARING_DIRECTORY": str(a_file),
        "PAYSWITCH_SETTLEMENT_OUTPUT_DIR": str(a_file / "below"),
        "PAYSWITCH_HSM_LMK_FILE": str(tmp_path),
        "PAYSWITCH_HOST_MAILER_DIR": "",
    })
    assert problems == [
        f"config hsm.lmk_file = '{tmp_path}': {tmp_path} is a folder, not a file (LMK file (0600), created "
        "at the first `hsm serve` or by `hsm init`)",
        "config host.mailer_dir = '': expected a path (folder `card issue` writes PIN-mailer files to)",
        f"config clearing.directory = '{a_file}': {a_file} exists and is not a folder (folder clearing files "
        "are written to)",
        f"config settlement.output_dir = '{a_file / 'below'}': cannot be created: {a_file} is not a folder "
        "(folder settlement reports and payout files go to)",
    ]
    # the embedded cluster's folder only matters without a URL
    env = {"PAYSWITCH_DATABASE_DATA_DIR": str(a_file / "pg")}
    assert "the embedded cluster keeps its data there" in _problems(env)[0]
    config.load(env={**env, "PAYSWITCH_DATABASE_URL": "postgresql://u@h/db"})
    # nothing is created by checking
    config.load(env={"PAYSWITCH_CLEARING_DIRECTORY": str(tmp_path / "new" / "deeper")})
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_folder_without_write_permission(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    (problem,) = _problems({"PAYSWITCH_CLEARING_DIRECTORY": str(locked / "clearing")})
    assert f"cannot be created: {locked} is not writable by this user" in problem


def test_unknown_environment_variables_are_refused_with_the_nearest_name() -> None:
    assert _problems({"PAYSWITCH_HSM_PROT": "1"}) == [
        "unknown environment variable PAYSWITCH_HSM_PROT (did you mean PAYSWITCH_HSM_PORT?)"
    ]
    assert _problems({"PAYSWITCH_POS_SEAL_KEYFILE": "x"}) == [
        "unknown environment variable PAYSWITCH_POS_SEAL_KEYFILE (did you mean PAYSWITCH_POS_SEAL_KEY_FILE?)"
    ]
    assert _problems({"PAYSWITCH_QQQQQQQQ": "1"}) == ["unknown environment variable PAYSWITCH_QQQQQQQQ"]
    # the variables read that are not keys, and other programs' names, pass
    empty = Path(__file__).with_name("__init__.py")  # any readable file does as the config file
    others = {name: "x" for name in config.OTHER_ENV} | {config.CONFIG_ENV: str(empty)}
    config.load(env=others | {"PAYSWITCHBOARD": "1", "HOME": "/"})


def test_unknown_section_suggests_the_nearest(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text("[clearng]\ncutover = '22:00'\n[hsm]\nprot = 1\n")
    with pytest.raises(config.ConfigError) as err:
        config.load(f, env={})
    assert [p.split(": ", 1)[1] for p in err.value.problems] == [
        "unknown section [clearng] (did you mean clearing?); allowed: database, log, hsm, host, switch, "
        "clearing, settlement, aml, api, console, risk",
        "unknown key hsm.prot (did you mean hsm.port?)",
    ]


def test_every_payswitch_variable_the_code_reads_is_known() -> None:
    """A PAYSWITCH_* name written anywhere in the code or docs is a key's variable or in OTHER_ENV, so
    the refusal of unknown names never refuses one the code reads."""
    root = Path(__file__).resolve().parents[2]
    known = set(config.env_names())
    skip = {Path(__file__), root / "tests" / "test_cli_tree.py",  # these write wrong names on purpose
            *(root / "tests" / "ops" / name for name in ("test_cli.py", "test_no_traceback.py"))}
    unknown = {}
    for path in [*root.glob("*.md"), root / "Makefile", *root.glob("[!.]*/**/*.py"), *root.glob("*/*.md")]:
        if path in skip or ".venv" in path.parts or not path.is_file():
            continue
        for name in re.findall(r"PAYSWITCH_[A-Z0-9_]*[A-Z0-9](?![A-Za-z0-9_{])", path.read_text()):
            if name not in known:
                unknown[name] = str(path.relative_to(root))
    assert not unknown, f"PAYSWITCH_* names read but neither a key nor in config.OTHER_ENV: {unknown}"


def test_config_keys_lists_the_rules_in_words() -> None:
    from click.testing import CliRunner

    from ops.cli import cli

    out = CliRunner().invoke(cli, ["config", "keys"], catch_exceptions=False).output
    assert "allowed: a local time HH:MM, 00:00–23:59" in out
    assert "allowed: 1 to 11 digits" in out
    assert "no two listeners" in out and "PAYSWITCH_POS_SEAL_KEY_FILE" in out
    assert "\\d" not in out and "[0-5]" not in out
