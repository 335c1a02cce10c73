"""Configuration: one TOML file plus PAYSWITCH_* environment overrides, validated at start.

Defaults live in the shipped ``payswitch.default.toml`` (the only place a default is written); the
dataclasses below say what each key is and what values are allowed. A user file may set any subset of
keys; ``PAYSWITCH_<SECTION>_<KEY>`` overrides both. Every error names the key, the value and what is
allowed, in one line.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, get_type_hints

ENV_PREFIX = "PAYSWITCH_"
CONFIG_ENV = "PAYSWITCH_CONFIG"
DEFAULT_FILE = "payswitch.toml"


class ConfigError(Exception):
    """A configuration value that cannot be used; str() is one line for the operator."""


def setting(
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    min: int | None = None,
    max: int | None = None,
    pattern: str | None = None,
) -> Any:
    """Declare a key: its help text and constraints (the default comes from the shipped TOML)."""
    return field(metadata={"help": help, "choices": choices, "min": min, "max": max, "pattern": pattern})




@dataclass(frozen=True)
class DatabaseConfig:
    url: str = setting("PostgreSQL URL; empty means the embedded cluster")
    data_dir: str = setting("embedded cluster data folder")
    name: str = setting("database name in the embedded cluster", pattern=r"[a-z_][a-z0-9_]*")
    pool_min: int = setting("minimum pool connections", min=1, max=100)
    pool_max: int = setting("maximum pool connections", min=1, max=500)


@dataclass(frozen=True)
class LogConfig:
    format: str = setting("log line format", choices=("console", "json"))
    level: str = setting("lowest level logged", choices=("debug", "info", "warning", "error"))


@dataclass(frozen=True)
class HsmConfig:
    listen: str = setting("address the HSM service binds")
    port: int = setting("HSM service TCP port", min=1, max=65535)
    header_length: int = setting("message header length in characters", min=0, max=32)
    lmk_file: str = setting("LMK file (0600), created at the first `hsm serve` or by `hsm init`")
    test_lmk: bool = setting("use the published payShield test LMK set (tests only: every key is public)")
    metrics_port: int = setting("HSM /metrics port, 0 = off", min=0, max=65535)
    metrics_listen: str = setting("address the HSM /metrics endpoint binds")
    max_connections: int = setting("open client connections of the HSM listener", min=1, max=100_000)
    max_per_source: int = setting("open connections from one source address", min=1, max=100_000)
    idle_timeout_s: int = setting("close a connection without a complete command this long",
                                  min=1, max=86_400)
    frame_timeout_s: int = setting("close a connection whose started command is not complete within this",
                                   min=1, max=3_600)
    host: str = setting("address clients use to reach the HSM")
    timeout_ms: int = setting("client timeout per command", min=1, max=600_000)
    connections: int = setting("client connections to the HSM", min=1, max=64)


@dataclass(frozen=True)
class HostConfig:
    listen: str = setting("address the authorization host binds")
    port: int = setting("H2H listener port", min=1, max=65535)
    metrics_port: int = setting("host /metrics port, 0 = off", min=0, max=65535)
    metrics_listen: str = setting("address the host /metrics endpoint binds")
    max_connections: int = setting("open H2H connections of the host listener", min=1, max=100_000)
    max_per_source: int = setting("open H2H connections from one source address", min=1, max=100_000)
    idle_timeout_s: int = setting("close an H2H connection without a complete frame this long",
                                  min=1, max=86_400)
    frame_timeout_s: int = setting("close an H2H connection whose started frame is not complete within this",
                                   min=1, max=3_600)
    institution_id: str = setting("issuer institution id", pattern=r"\d{1,11}")
    profile: str = setting("key profile of the H2H listener (width of DE52)", choices=("3des", "sm4"))
    writers: int = setting("ledger writer tasks (each posts its share of the partitions)", min=1, max=64)
    batch_max: int = setting("most requests posted in one ledger transaction", min=1, max=5000)
    pin_tries: int = setting("wrong PINs before a card answers 75", min=1, max=20)
    hold_days: int = setting("days a pre-auth hold lives before the sweeper releases it", min=1, max=90)
    completion_tolerance_pct: int = setting(
        "completion may exceed its hold by this percentage", min=0, max=100
    )
    sweep_seconds: int = setting("interval of the hold-expiry sweeper", min=1, max=86_400)
    card_expiry_seconds: int = setting(
        "interval of the card-expiry sweep (cards past their YYMM become `expired`)", min=1, max=86_400
    )
    mailer_dir: str = setting("folder `card issue` writes PIN-mailer files to")
    allow_remote_no_mac: bool = setting(
        "accept a link declared `--no-mac` from a non-loopback peer (else answered 03)"
    )


@dataclass(frozen=True)
class SwitchConfig:
    listen: str = setting("address the switch binds")
    pos_3des_port: int = setting("POS listener, 3des profile", min=1, max=65535)
    pos_sm4_port: int = setting("POS listener, sm4 profile", min=1, max=65535)
    h2h_port: int = setting("inbound acquirer (H2H) listener", min=1, max=65535)
    metrics_port: int = setting("switch /metrics port, 0 = off", min=0, max=65535)
    metrics_listen: str = setting("address the switch /metrics endpoint binds (not `listen`: terminals "
                                  "need not reach it)")
    institution_id: str = setting("acquiring institution id (DE32)", pattern=r"\d{1,11}")
    request_timeout_ms: int = setting("upstream answer timeout; then 98 (POS) / 91 (H2H) and a reversal",
                                      min=50, max=120_000)
    max_connections: int = setting("open client connections per listener; when full, the connection "
                                   "open longest without a complete frame gives way", min=1, max=100_000)
    max_per_source: int = setting("open client connections per listener from one source address",
                                  min=1, max=100_000)
    max_in_flight: int = setting("requests in flight per client connection", min=1, max=10_000)
    idle_timeout_s: int = setting("close a client connection without a complete frame this long",
                                  min=1, max=86_400)
    frame_timeout_s: int = setting("close a client connection whose started frame is not complete "
                                   "within this", min=1, max=3_600)
    saf_retry_s: int = setting("seconds between 0421 repeats of an unanswered reversal advice",
                               min=1, max=86_400)
    link_echo_s: int = setting("echo (0800/301) a quiet upstream link connection after this long",
                               min=1, max=3_600)
    shutdown_grace_s: int = setting("on SIGTERM, wait this long for in-flight requests", min=1, max=600)
    db_pool_max: int = setting("database connections of the switch", min=1, max=100)
    config_poll_s: int = setting("a running switch takes over link and route changes within this long",
                                 min=1, max=3_600)
    link_rekey_hours: int = setting("change each outbound link's ZPK (0800 101) this often, 0 = only "
                                    "on `switch link rekey`", min=0, max=8_760)
    signon_per_minute: int = setting("sign-ons (0800) accepted per terminal per minute; more are answered "
                                     "65 (its own live connection is not limited)", min=1, max=10_000)
    allow_remote_no_mac: bool = setting(
        "accept an inbound link declared `--no-mac` from a non-loopback peer (else answered 03)"
    )


@dataclass(frozen=True)
class ClearingConfig:
    directory: str = setting("folder clearing files are written to")
    cutover: str = setting("business-day cut-over, local HH:MM", pattern=r"([01]\d|2[0-3]):[0-5]\d")
    timezone: str = setting("IANA time zone of the cut-over")
    auto_emit: bool = setting("`host serve` writes each closed business date's file after the cut-over")
    lookback_days: int = setting("closed business dates the automatic emit looks back for missing files",
                                 min=1, max=366)


@dataclass(frozen=True)
class SettlementConfig:
    output_dir: str = setting("folder settlement reports and payout files go to")
    default_cycle: str = setting("payout cycle of merchants without their own",
                                 choices=("daily", "weekly", "monthly"))
    default_cycle_day: int = setting("weekly: ISO weekday 1-7 (1 = Monday); monthly: day 1-31; daily: 0",
                                     min=0, max=31)


@dataclass(frozen=True)
class Config:
    database: DatabaseConfig
    log: LogConfig
    hsm: HsmConfig
    host: HostConfig
    switch: SwitchConfig
    clearing: ClearingConfig
    settlement: SettlementConfig


def load(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Defaults, then the user file (explicit path, $PAYSWITCH_CONFIG or ./payswitch.toml), then env."""
    env = os.environ if env is None else env
    merged = _shipped()
    user_path = _user_file(path, env)
    if user_path is not None:
        try:
            text = user_path.read_text()
        except OSError as exc:
            raise ConfigError(f"config file {user_path}: {exc.strerror}") from None
        _overlay(merged, _read_toml(text, str(user_path)), str(user_path))
    _overlay_env(merged, env)
    return _build(merged)


def defaults() -> Config:
    """The shipped defaults alone, ignoring any user file and the environment."""
    return _build(_shipped())


def _shipped() -> dict[str, Any]:
    return _read_toml(resources.files("ops").joinpath("payswitch.default.toml").read_text(), "defaults")


def env_name(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section}_{key}".upper()


def describe() -> list[tuple[str, str, str]]:
    """(dotted key, type, help) for every key: the README table and `config show` use it."""
    rows = []
    for section in dataclasses.fields(Config):
        cls = _section_class(section.name)
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            rows.append((f"{section.name}.{f.name}", _type_name(hints[f.name]), f.metadata["help"]))
    return rows


def as_dict(config: Config) -> dict[str, dict[str, Any]]:
    return dataclasses.asdict(config)


def _user_file(path: str | Path | None, env: Mapping[str, str]) -> Path | None:
    if path is not None:
        return Path(path)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    local = Path(DEFAULT_FILE)
    return local if local.is_file() else None


def _read_toml(text: str, origin: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {origin}: not valid TOML: {exc}") from None


def _section_class(name: str) -> type:
    hints = get_type_hints(Config)
    cls: type = hints[name]
    return cls


def _overlay(base: dict[str, Any], extra: dict[str, Any], origin: str) -> None:
    for section, values in extra.items():
        if section not in base:
            raise ConfigError(f"{origin}: unknown section [{section}]; allowed: {', '.join(base)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: {section} must be a table [{section}]")
        for key, value in values.items():
            if key not in base[section]:
                allowed = ", ".join(base[section])
                raise ConfigError(f"{origin}: unknown key {section}.{key}; allowed: {allowed}")
            base[section][key] = value


def _overlay_env(base: dict[str, Any], env: Mapping[str, str]) -> None:
    for section, values in base.items():
        for key in values:
            name = env_name(section, key)
            if name in env:
                values[key] = env[name]  # strings; converted and checked in _build


def _build(merged: dict[str, Any]) -> Config:
    sections = {}
    for section in dataclasses.fields(Config):
        cls = _section_class(section.name)
        hints = get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            dotted = f"{section.name}.{f.name}"
            if f.name not in merged.get(section.name, {}):
                raise ConfigError(f"config {dotted} has no value (missing from the shipped defaults)")
            values[f.name] = _check(dotted, merged[section.name][f.name], hints[f.name], f.metadata)
        sections[section.name] = cls(**values)
    config = Config(**sections)
    if config.database.pool_min > config.database.pool_max:
        raise ConfigError(
            f"config database.pool_min = {config.database.pool_min}: must not exceed "
            f"database.pool_max ({config.database.pool_max})"
        )
    return config


def _check(dotted: str, raw: Any, kind: Any, meta: Mapping[str, Any]) -> Any:
    value = _convert(dotted, raw, kind, meta)
    if meta["choices"] is not None and value not in meta["choices"]:
        raise ConfigError(f"config {dotted} = {raw!r}: allowed values are {', '.join(meta['choices'])}")
    if meta["pattern"] is not None and not re.fullmatch(meta["pattern"], value):
        raise ConfigError(f"config {dotted} = {raw!r}: must match {meta['pattern']}")
    return value


def _convert(dotted: str, raw: Any, kind: Any, meta: Mapping[str, Any]) -> Any:
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false", "1", "0", "yes", "no"):
            return raw.lower() in ("true", "1", "yes")
        raise ConfigError(f"config {dotted} = {raw!r}: expected true or false")
    if kind is int:
        lo, hi = meta["min"], meta["max"]
        try:
            if isinstance(raw, bool | float):
                raise ValueError
            value = int(raw)
        except (TypeError, ValueError):
            value = None
        if value is None or (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ConfigError(f"config {dotted} = {raw!r}: expected an integer from {lo} to {hi}")
        return value
    if kind is str:
        if not isinstance(raw, str):
            raise ConfigError(f"config {dotted} = {raw!r}: expected a string")
        return raw
    raise ConfigError(f"config {dotted}: unsupported type {kind!r}")  # pragma: no cover - schema bug


def _type_name(kind: Any) -> str:
    return {bool: "bool", int: "int", str: "string"}.get(kind, str(kind))
