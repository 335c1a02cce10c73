from __future__ import annotations

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
        ({"PAYSWITCH_CLEARING_CUTOVER": "25:00"}, "config clearing.cutover = '25:00': must match"),
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
    with pytest.raises(config.ConfigError, match=r"unknown key hsm.prot; allowed: listen, port"):
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
