"""Configuration: one TOML file plus PAYSWITCH_* environment overrides, validated at start.

Defaults live in the shipped ``payswitch.default.toml`` (the only place a default is written); the
dataclasses below say what each key is and what values are allowed. A user file may set any subset of
keys; ``PAYSWITCH_<SECTION>_<KEY>`` overrides both. Every value is checked when the configuration is
loaded (``payswitch config check`` and the start of every command), and ``ConfigError`` carries every
problem found, one line each naming the key, the value and what is allowed, in words.

The rules, beyond each key's type and range:
* an unknown section, key or ``PAYSWITCH_*`` variable is refused, with the nearest known name;
  ``OTHER_ENV`` lists the few variables read that are not keys;
* time zones are IANA names the interpreter's zoneinfo knows, the cut-over is HH:MM (00:00-23:59);
* ``database.url`` is empty (the embedded cluster) or a postgresql:// URL that parses, with a sane
  host and port (its password is never shown in an error);
* no two listeners (``*.listen`` with ``*.port``, ``*.metrics_listen`` with ``*.metrics_port``) share
  an address and port; addresses are an IP address or a host name;
* folders (``*_dir``, ``*.directory``) exist and are writable or can be created; a file key
  (``hsm.lmk_file``) names a file whose folder exists or can be created. Nothing is created by loading.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import tomllib
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import parse_qs, unquote, urlsplit

from ops.digits import is_digits

ENV_PREFIX = "PAYSWITCH_"
CONFIG_ENV = "PAYSWITCH_CONFIG"
DEFAULT_FILE = "payswitch.toml"

# Every PAYSWITCH_* variable read that is not a configuration key; any other PAYSWITCH_* name is refused
# like an unknown key (a typo must not silently leave the default in force).
OTHER_ENV: dict[str, str] = {
    CONFIG_ENV: "the configuration file (also --config)",
    "PAYSWITCH_POS_SEAL_KEY_FILE": "the key sealing `pos`'s terminal state (pos/sealed.py)",
    "PAYSWITCH_POS_TERMINAL": "the terminal `pos` commands act as (pos --terminal)",
    "PAYSWITCH_FUZZ_EXAMPLES": "examples per listener of the fuzz test (tests/fuzz.py)",
    "PAYSWITCH_CONTRACT_DIR": "the wire contracts' folder for the copy check (tests/test_contracts_copy.py)",
    "PAYSWITCH_API_KEY": "the API key `payswitch api call` sends (api/call_cli.py)",
    "PAYSWITCH_TEST_OUTPUT": "where the browser tests write their screenshots (tests/console/browser.py)",
}

# The rules that join keys (checked in _across; `payswitch config keys` lists them).
JOINT_RULES = (
    "database.pool_min must not exceed database.pool_max",
    "settlement.default_cycle_day: 0 for daily, a weekday 1-7 for weekly, a day 1-31 for monthly",
    "no two listeners (hsm, host and switch ports, the metrics ports that are not 0) on one address and "
    "port; 0.0.0.0 or :: overlaps every address",
    "database.data_dir must be a writable folder (or creatable) when database.url is empty",
    "an unknown section, key or `PAYSWITCH_*` variable is refused, with the nearest known name",
)


class ConfigError(Exception):
    """Configuration that cannot be used: ``problems`` has one line per bad key or variable, each for
    the operator; str() is those lines joined."""

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class Rule:
    """What a string key allows: ``words`` for people (`config keys`, errors), ``test`` returns None
    when the value is fine, else why not (in words)."""

    words: str
    test: Callable[[str], str | None]


def setting(
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    min: int | None = None,
    max: int | None = None,
    rule: Rule | None = None,
) -> Any:
    """Declare a key: its help text and constraints (the default comes from the shipped TOML)."""
    return field(metadata={"help": help, "choices": choices, "min": min, "max": max, "rule": rule})


def _words_for(pattern: str, words: str) -> Rule:
    """A rule checked by a regular expression that people never see: they read ``words``."""
    compiled = re.compile(pattern)
    return Rule(words, lambda value: None if compiled.fullmatch(value) else f"expected {words}")


def _zone(value: str) -> str | None:
    try:
        zoneinfo.ZoneInfo(value)
        return None
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        pass
    near = difflib.get_close_matches(value, sorted(zoneinfo.available_timezones()), n=1)
    hint = f"; did you mean {near[0]}?" if near else ""
    return f"not a time zone known here (an IANA name such as Asia/Shanghai or UTC{hint})"


_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def _address(value: str) -> str | None:
    if _is_ip(value) or (len(value) <= 253 and _HOSTNAME.fullmatch(value)):
        return None
    return "expected an IP address or a host name (0.0.0.0 for every interface)"


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


def _port_text(text: str) -> str | None:
    if not is_digits(text) or not 1 <= int(text) <= 65535:
        return f"port {text!r} is not a number from 1 to 65535"
    return None


def _database_url(value: str) -> str | None:
    if value == "":
        return None
    scheme, sep, _ = value.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        return "expected empty (the embedded cluster) or a URL starting postgresql:// or postgres://"
    try:
        parts = urlsplit(value)
        query = parse_qs(parts.query, strict_parsing=False)
    except ValueError as exc:
        return f"not a URL that parses ({exc})"
    hosts = parts.netloc.rpartition("@")[2]
    for hostport in filter(None, hosts.split(",")):
        if hostport.startswith("["):
            host, _, rest = hostport[1:].partition("]")
            if not _is_ip(host) or (rest and not rest.startswith(":")):
                return f"host {hostport!r} is not an IPv6 address in brackets"
            port = rest[1:]
        else:
            host, _, port = hostport.partition(":")
            if host and _address(unquote(host)) is not None and not unquote(host).startswith("/"):
                return f"host {host!r} is not an IP address or a host name"
        if port and (problem := _port_text(port)):
            return problem
    for port in query.get("port", []):
        for one in port.split(","):
            if problem := _port_text(one):
                return problem
    if not parts.path.strip("/"):
        return "the URL names no database (postgresql://user@host:port/DATABASE)"
    return None


CUTOVER = _words_for(r"([01][0-9]|2[0-3]):[0-5][0-9]", "a local time HH:MM, 00:00–23:59")
INSTITUTION = _words_for(r"[0-9]{1,11}", "1 to 11 digits")
DB_NAME = _words_for(r"[a-z_][a-z0-9_]{0,62}",
                     "lowercase letters, digits and _, starting with a letter or _, at most 63")
ZONE = Rule("an IANA time zone name (Asia/Shanghai, UTC, ...)", _zone)
ADDRESS = Rule("an IP address or a host name (0.0.0.0 for every interface)", _address)
DB_URL = Rule("empty (the embedded cluster) or postgresql://[user[:password]@][host][:port]/database",
              _database_url)


def _folder(value: str) -> str | None:
    return _writable(Path(value), folder=True) if value else "expected a path"


def _file(value: str) -> str | None:
    return _writable(Path(value), folder=False) if value else "expected a path"


def _writable(path: Path, *, folder: bool) -> str | None:
    """None when ``path`` is (or can be created as) a writable folder, or a file in one; else why not.
    Loading never creates anything: a missing path is judged by its nearest existing parent."""
    if path.exists():
        if folder and not path.is_dir():
            return f"{path} exists and is not a folder"
        if not folder and path.is_dir():
            return f"{path} is a folder, not a file"
        target = path if folder else path.parent
        if not os.access(target, os.W_OK | os.X_OK):
            return f"{target} is not writable by this user"
        return None
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot be created: {parent} is not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be created: {parent} is not writable by this user"
    return None


FOLDER = Rule("a folder that exists and is writable, or can be created", _folder)
FILE = Rule("a file whose folder exists and is writable, or can be created", _file)
# database.data_dir is a FOLDER only when database.url is empty: judged in _across, not per key.
DATA_DIR = Rule(FOLDER.words, lambda value: None)


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = setting("PostgreSQL URL; empty means the embedded cluster", rule=DB_URL)
    data_dir: str = setting("embedded cluster data folder", rule=DATA_DIR)
    name: str = setting("database name in the embedded cluster", rule=DB_NAME)
    pool_min: int = setting("minimum pool connections", min=1, max=100)
    pool_max: int = setting("maximum pool connections", min=1, max=500)


@dataclass(frozen=True)
class LogConfig:
    format: str = setting("log line format", choices=("console", "json"))
    level: str = setting("lowest level logged", choices=("debug", "info", "warning", "error"))


@dataclass(frozen=True)
class HsmConfig:
    listen: str = setting("address the HSM service binds", rule=ADDRESS)
    port: int = setting("HSM service TCP port", min=1, max=65535)
    header_length: int = setting("message header length in characters", min=0, max=32)
    lmk_file: str = setting("LMK file (0600), created at the first `hsm serve` or by `hsm init`", rule=FILE)
    test_lmk: bool = setting("use the published payShield test LMK set (tests only: every key is public)")
    metrics_port: int = setting("HSM /metrics port, 0 = off", min=0, max=65535)
    metrics_listen: str = setting("address the HSM /metrics endpoint binds", rule=ADDRESS)
    max_connections: int = setting("open client connections of the HSM listener", min=1, max=100_000)
    max_per_source: int = setting("open connections from one source address", min=1, max=100_000)
    idle_timeout_s: int = setting("close a connection without a complete command this long",
                                  min=1, max=86_400)
    frame_timeout_s: int = setting("close a connection whose started command is not complete within this",
                                   min=1, max=3_600)
    host: str = setting("address clients use to reach the HSM", rule=ADDRESS)
    timeout_ms: int = setting("client timeout per command", min=1, max=600_000)
    connections: int = setting("client connections to the HSM", min=1, max=64)


@dataclass(frozen=True)
class HostConfig:
    listen: str = setting("address the authorization host binds", rule=ADDRESS)
    port: int = setting("H2H listener port", min=1, max=65535)
    metrics_port: int = setting("host /metrics port, 0 = off", min=0, max=65535)
    metrics_listen: str = setting("address the host /metrics endpoint binds", rule=ADDRESS)
    max_connections: int = setting("open H2H connections of the host listener", min=1, max=100_000)
    max_per_source: int = setting("open H2H connections from one source address", min=1, max=100_000)
    idle_timeout_s: int = setting("close an H2H connection without a complete frame this long",
                                  min=1, max=86_400)
    frame_timeout_s: int = setting("close an H2H connection whose started frame is not complete within this",
                                   min=1, max=3_600)
    institution_id: str = setting("issuer institution id", rule=INSTITUTION)
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
    mailer_dir: str = setting("folder `card issue` writes PIN-mailer files to", rule=FOLDER)
    allow_remote_no_mac: bool = setting(
        "accept a link declared `--no-mac` from a non-loopback peer (else answered 03)"
    )
    payment_code_seconds: int = setting(
        "how long a payment code (`card code`, host.payment_codes) can pay", min=1, max=3_600
    )
    balance_low: int = setting("the event card.balance_low is written when a card's available balance "
                               "falls below this, in minor units (0 = never)", min=0, max=10**12)
    events: bool = setting("the ledger batch writes its events to the outbox (webhooks); false only to "
                           "measure what they cost (bench.host --events)")
    ledger_chain: bool = setting("each ledger batch is sealed by a chained digest row (ledger verify); "
                                 "false only to measure what it costs (bench.host --chain)")


@dataclass(frozen=True)
class SwitchConfig:
    listen: str = setting("address the switch binds", rule=ADDRESS)
    pos_3des_port: int = setting("POS listener, 3des profile", min=1, max=65535)
    pos_sm4_port: int = setting("POS listener, sm4 profile", min=1, max=65535)
    h2h_port: int = setting("inbound acquirer (H2H) listener", min=1, max=65535)
    metrics_port: int = setting("switch /metrics port, 0 = off", min=0, max=65535)
    metrics_listen: str = setting("address the switch /metrics endpoint binds (not `listen`: terminals "
                                  "need not reach it)", rule=ADDRESS)
    institution_id: str = setting("acquiring institution id (DE32)", rule=INSTITUTION)
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
    node_id: str = setting("this switch node's id in switch_nodes and its write-ahead rows; empty = "
                           "<hostname>:<pid> (switch/README.md \"Several switch nodes\")",
                           rule=_words_for(r"[A-Za-z0-9._:@-]{0,64}", "up to 64 letters, digits, . _ : @ -"))
    lease_seconds: int = setting("a switch node's lease, renewed every third of it; a node 3 leases "
                                 "silent is taken over (its write-ahead recovered)", min=1, max=600)


@dataclass(frozen=True)
class ClearingConfig:
    directory: str = setting("folder clearing files are written to", rule=FOLDER)
    cutover: str = setting("business-day cut-over, local HH:MM", rule=CUTOVER)
    timezone: str = setting("IANA time zone of the cut-over", rule=ZONE)
    auto_emit: bool = setting("`host serve` writes each closed business date's file after the cut-over")
    lookback_days: int = setting("closed business dates the automatic emit looks back for missing files",
                                 min=1, max=366)


@dataclass(frozen=True)
class SettlementConfig:
    output_dir: str = setting("folder settlement reports and payout files go to", rule=FOLDER)
    default_cycle: str = setting("payout cycle of merchants without their own",
                                 choices=("daily", "weekly", "monthly"))
    default_cycle_day: int = setting("weekly: ISO weekday 1-7 (1 = Monday); monthly: day 1-31; daily: 0",
                                     min=0, max=31)


@dataclass(frozen=True)
class AmlConfig:
    threshold: int = setting("name-match score (0-100) at or above which AML screening is a hit "
                             "(host.aml; host/README.md \"AML screening\")", min=0, max=100)


@dataclass(frozen=True)
class ApiConfig:
    listen: str = setting("address the HTTP API (and the console) binds", rule=ADDRESS)
    port: int = setting("HTTP API port", min=1, max=65535)
    metrics_port: int = setting("API /metrics port, 0 = off", min=0, max=65535)
    metrics_listen: str = setting("address the API /metrics endpoint binds", rule=ADDRESS)
    institution_id: str = setting("the API's acquiring institution id (DE32 of its H2H link to the switch)",
                                  rule=INSTITUTION)
    switch_host: str = setting("address the API reaches the switch's H2H port (switch.h2h_port) at",
                               rule=ADDRESS)
    connections: int = setting("H2H connections from the API to the switch", min=1, max=64)
    request_timeout_ms: int = setting("wait this long for the switch's answer to a payment (more than "
                                      "switch.request_timeout_ms, so the switch answers 91 first)",
                                      min=100, max=120_000)
    reverse_after_s: int = setting("a payment whose answer was never recorded (the API stopped mid-way) "
                                   "and not retried with its key for this long is reversed", min=1,
                                   max=86_400)
    idempotency_hours: int = setting("how long an Idempotency-Key is remembered", min=1, max=720)
    rate_per_second: int = setting("requests per second per client (a client may have its own)",
                                   min=1, max=1_000_000)
    rate_burst: int = setting("requests a client may send at once above its rate", min=1, max=1_000_000)
    max_body_bytes: int = setting("largest request body accepted (else 413)", min=1_024, max=10_485_760)
    db_pool_max: int = setting("database connections of the API process", min=1, max=100)
    webhook_timeout_s: int = setting("a webhook receiver must answer within this", min=1, max=120)
    webhook_retry_hours: int = setting("retry an undelivered webhook with backoff this long, then park it",
                                       min=1, max=720)
    webhook_backoff_s: int = setting("first retry of a failed webhook after about this long; each next one "
                                     "waits twice as long (with jitter)", min=1, max=3_600)
    webhook_backoff_max_s: int = setting("longest wait between two retries of a webhook", min=1, max=86_400)


@dataclass(frozen=True)
class ConsoleConfig:
    session_idle_minutes: int = setting("an operator's console session ends after this long without a "
                                        "request", min=1, max=1_440)
    session_hours: int = setting("an operator's console session ends this long after its login, used or not",
                                 min=1, max=24)
    lockout_after: int = setting("failed logins (password or TOTP) in a row that lock an operator out",
                                 min=1, max=100)
    lockout_minutes: int = setting("how long a locked-out operator is refused", min=1, max=10_080)
    secure_cookies: bool = setting("mark the session cookie Secure (set it when the console is served "
                                   "behind TLS; the X-Forwarded-Proto: https of a proxy sets it per request)")
    four_eyes_minor: int = setting("a manual load or unload of more than this (minor units) needs a "
                                   "supervisor's approval", min=0, max=10**15)
    smtp_host: str = setting("SMTP server for operators' alert e-mails ('' = none)")
    smtp_port: int = setting("SMTP server port", min=1, max=65535)
    mail_from: str = setting("the From address of alert e-mails")


@dataclass(frozen=True)
class RiskConfig:
    poll_s: int = setting("how often (seconds) the risk monitor reads the new decisions", min=1, max=3600)
    pin_failures: int = setting("wrong PINs on one card within pin_window_minutes that raise an alert",
                                min=1, max=1000)
    pin_window_minutes: int = setting("the window of pin_failures", min=1, max=1440)
    declines: int = setting("declines (any reason) on one card within decline_window_minutes that raise an "
                            "alert", min=1, max=10_000)
    decline_window_minutes: int = setting("the window of declines", min=1, max=1440)
    cards_per_terminal: int = setting("different cards at one terminal within terminal_window_minutes that "
                                      "raise an alert", min=2, max=100_000)
    terminal_window_minutes: int = setting("the window of cards_per_terminal", min=1, max=1440)
    under_limit_percent: int = setting("a purchase of at least this percent of the product's per-transaction "
                                       "limit (and not above it) is 'just under the limit'", min=1, max=100)
    under_limit_count: int = setting("purchases just under the limit on one card within "
                                     "under_limit_window_minutes that raise an alert", min=1, max=1000)
    under_limit_window_minutes: int = setting("the window of under_limit_count", min=1, max=1440)
    dormant_days: int = setting("a card unused this many days (or since its activation) whose use raises "
                                "an alert; 0 = off", min=0, max=36_500)
    distance_minutes: int = setting("a card used at two stores of different merchants (or two stores "
                                    "with different addresses) within this many minutes raises an alert",
                                    min=1, max=1440)
    refunds_min_minor: int = setting("refunds above purchases at a merchant today raise an alert once the "
                                     "refunds exceed this (minor units)", min=0, max=10**15)


@dataclass(frozen=True)
class Config:
    database: DatabaseConfig
    log: LogConfig
    hsm: HsmConfig
    host: HostConfig
    switch: SwitchConfig
    clearing: ClearingConfig
    settlement: SettlementConfig
    aml: AmlConfig
    api: ApiConfig
    console: ConsoleConfig
    risk: RiskConfig


def load(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Defaults, then the user file (explicit path, $PAYSWITCH_CONFIG or ./payswitch.toml), then env."""
    env = os.environ if env is None else env
    merged = _shipped()
    problems: list[str] = []
    user_path = _user_file(path, env)
    if user_path is not None:
        try:
            text = user_path.read_text()
        except OSError as exc:
            raise ConfigError(f"config file {user_path}: {exc.strerror}") from None
        problems += _overlay(merged, _read_toml(text, str(user_path)), str(user_path))
    problems += _overlay_env(merged, env)
    return _build(merged, problems)


def defaults() -> Config:
    """The shipped defaults alone, ignoring any user file and the environment."""
    return _build(_shipped())


def _shipped() -> dict[str, Any]:
    return _read_toml(resources.files("ops").joinpath("payswitch.default.toml").read_text(), "defaults")


def env_name(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section}_{key}".upper()


def describe() -> list[tuple[str, str, str]]:
    """(dotted key, type, help) for every key: the README table and `config show` use it."""
    return [(key, kind, help_) for key, kind, help_, _allowed in describe_rules()]


def describe_rules() -> list[tuple[str, str, str, str]]:
    """(dotted key, type, help, allowed values in words) for every key: `config keys` prints them."""
    rows = []
    for section in dataclasses.fields(Config):
        cls = _section_class(section.name)
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = hints[f.name]
            rows.append((f"{section.name}.{f.name}", _type_name(kind), f.metadata["help"],
                         _allowed(kind, f.metadata)))
    return rows


def _allowed(kind: Any, meta: Mapping[str, Any]) -> str:
    if kind is bool:
        return "true or false"
    if meta["choices"] is not None:
        return "one of " + ", ".join(meta["choices"])
    if kind is int:
        return f"an integer from {meta['min']} to {meta['max']}"
    if meta["rule"] is not None:
        words: str = meta["rule"].words
        return words
    return "any text"


def env_names() -> list[str]:
    """Every PAYSWITCH_* variable payswitch reads: one per key, then ``OTHER_ENV``."""
    return [env_name(*key.split(".")) for key, _, _ in describe()] + list(OTHER_ENV)


@dataclass(frozen=True)
class Listener:
    """One address and port a service binds, with the keys that set them (for errors that name them)."""

    address_key: str
    port_key: str
    address: str
    port: int

    def __str__(self) -> str:
        return f"{self.address}:{self.port} ({self.address_key}, {self.port_key})"


def listeners(config: Config) -> list[Listener]:
    """Every listener the configuration opens (metrics ports set to 0 are off and left out)."""
    pairs = [
        ("hsm.listen", "hsm.port"), ("hsm.metrics_listen", "hsm.metrics_port"),
        ("host.listen", "host.port"), ("host.metrics_listen", "host.metrics_port"),
        ("switch.listen", "switch.pos_3des_port"), ("switch.listen", "switch.pos_sm4_port"),
        ("switch.listen", "switch.h2h_port"), ("switch.metrics_listen", "switch.metrics_port"),
        ("api.listen", "api.port"), ("api.metrics_listen", "api.metrics_port"),
    ]
    found = []
    for address_key, port_key in pairs:
        address = getattr(getattr(config, address_key.split(".")[0]), address_key.split(".")[1])
        port = getattr(getattr(config, port_key.split(".")[0]), port_key.split(".")[1])
        if port:
            found.append(Listener(address_key, port_key, address, port))
    return found


def _overlapping(a: Listener, b: Listener) -> bool:
    wildcard = ("0.0.0.0", "::", "")
    return a.port == b.port and (a.address == b.address or a.address in wildcard or b.address in wildcard)


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


def _nearest(name: str, known: list[str]) -> str:
    near = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {near[0]}?)" if near else ""


def _overlay(base: dict[str, Any], extra: dict[str, Any], origin: str) -> list[str]:
    problems = []
    for section, values in extra.items():
        if section not in base:
            problems.append(f"{origin}: unknown section [{section}]{_nearest(section, list(base))}; "
                            f"allowed: {', '.join(base)}")
            continue
        if not isinstance(values, dict):
            problems.append(f"{origin}: {section} must be a table [{section}]")
            continue
        for key, value in values.items():
            if key not in base[section]:
                near = _nearest(f"{section}.{key}", [f"{section}.{k}" for k in base[section]])
                allowed = f"; allowed: {', '.join(base[section])}" if not near else ""
                problems.append(f"{origin}: unknown key {section}.{key}{near}{allowed}")
                continue
            base[section][key] = value
    return problems


def _overlay_env(base: dict[str, Any], env: Mapping[str, str]) -> list[str]:
    known = set(OTHER_ENV)
    for section, values in base.items():
        for key in values:
            name = env_name(section, key)
            known.add(name)
            if name in env:
                values[key] = env[name]  # strings; converted and checked in _build
    return [
        f"unknown environment variable {name}{_nearest(name, sorted(known))}"
        for name in sorted(env)
        if name.startswith(ENV_PREFIX) and name not in known
    ]


def _build(merged: dict[str, Any], problems: list[str] | None = None) -> Config:
    """Check every key (all problems, not the first), then the rules that join keys."""
    problems = [] if problems is None else problems
    shipped = _shipped()
    bad: set[str] = set()  # keys whose value was refused: the rules joining them are not judged
    sections = {}
    for section in dataclasses.fields(Config):
        cls = _section_class(section.name)
        hints = get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            dotted = f"{section.name}.{f.name}"
            if f.name not in merged.get(section.name, {}):
                raise ConfigError(f"config {dotted} has no value (missing from the shipped defaults)")
            try:
                values[f.name] = _check(dotted, merged[section.name][f.name], hints[f.name], f.metadata)
            except ConfigError as exc:
                problems.extend(exc.problems)
                bad.add(dotted)
                values[f.name] = _convert(dotted, shipped[section.name][f.name], hints[f.name], f.metadata)
        sections[section.name] = cls(**values)
    config = Config(**sections)
    problems.extend(_across(config, bad))
    if problems:
        raise ConfigError(problems)
    return config


def _across(config: Config, bad: set[str]) -> list[str]:
    """The rules that join keys: pool sizes, the payout cycle's day, listeners that would collide."""
    problems = []
    if bad & {"database.pool_min", "database.pool_max"}:
        pass
    elif config.database.pool_min > config.database.pool_max:
        problems.append(
            f"config database.pool_min = {config.database.pool_min}: must not exceed "
            f"database.pool_max ({config.database.pool_max})"
        )
    s = config.settlement
    day_rule = {"daily": (0, 0, "0"), "weekly": (1, 7, "a weekday 1-7 (1 = Monday)"),
                "monthly": (1, 31, "a day of the month 1-31")}[s.default_cycle]
    if not bad & {"settlement.default_cycle", "settlement.default_cycle_day"} and not (
        day_rule[0] <= s.default_cycle_day <= day_rule[1]
    ):
        problems.append(f"config settlement.default_cycle_day = {s.default_cycle_day}: with default_cycle "
                        f"{s.default_cycle} it must be {day_rule[2]}")
    opened = [
        one for one in listeners(config) if one.address_key not in bad and one.port_key not in bad
    ]
    for i, a in enumerate(opened):
        for b in opened[:i]:
            if _overlapping(a, b):
                problems.append(f"config {b.port_key} and {a.port_key}: both listen on port {a.port} "
                                f"({b.address_key} = {b.address!r}, {a.address_key} = {a.address!r}); "
                                "give each listener its own port")
    if "database.url" not in bad and not config.database.url and (why := _folder(config.database.data_dir)):
        problems.append(f"config database.data_dir = {config.database.data_dir!r}: {why} "
                        "(the embedded cluster keeps its data there)")
    return problems


def _check(dotted: str, raw: Any, kind: Any, meta: Mapping[str, Any]) -> Any:
    value = _convert(dotted, raw, kind, meta)
    shown = _redacted(raw) if meta["rule"] is DB_URL else repr(raw)
    if meta["choices"] is not None and value not in meta["choices"]:
        raise ConfigError(f"config {dotted} = {shown}: allowed values are {', '.join(meta['choices'])}")
    rule: Rule | None = meta["rule"]
    if rule is not None:
        why = rule.test(value)
        if why is not None:
            purpose = f" ({meta['help']})" if rule in (FOLDER, FILE) else ""
            raise ConfigError(f"config {dotted} = {shown}: {why}{purpose}")
    return value


def _redacted(raw: Any) -> str:
    """A database URL as it may be shown: its password replaced by ***."""
    text = str(raw)
    head, sep, rest = text.partition("://")
    if sep:
        userinfo, at, hosts = rest.partition("@")
        if at and ":" in userinfo:
            text = f"{head}://{userinfo.split(':', 1)[0]}:***@{hosts}"
    return repr(re.sub(r"(?i)(password=)[^&]*", r"\1***", text))


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
