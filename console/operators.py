"""Operators and their sessions (console migration 0001): argon2id passwords, TOTP, lockout, timeouts.

Plain functions over a pool (``ops.pgpool.PgPool``) and the issuer's crypto (``host.keys.IssuerCrypto``,
which seals the TOTP secret under the PII data key as ``host.pii`` seals a phone number): the CLI
(``payswitch operator``), the login views and the tests call the same ones.

A login is two steps: the password gives a session at stage ``password``; the TOTP code raises it to
``full`` (and, at the first login, confirms the enrolment). A failed password or code counts towards
the lockout (``console.lockout_after`` in a row locks the operator for ``console.lockout_minutes``); a
right one resets the count. A session ends at logout, after ``console.session_idle_minutes`` without a
request, or ``console.session_hours`` after its login; the token is random, only its SHA-256 is stored,
and a new token is made at each step up (no session fixation).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ops.config import ConsoleConfig

NAME = re.compile(r"^[a-z][a-z0-9._-]{1,31}$")
MIN_PASSWORD = 12
ISSUER = "payswitch"
_HASHER = PasswordHasher()  # argon2id, argon2-cffi's default parameters (RFC 9106 low-memory profile)
# A hash to verify against when the name is unknown, so a wrong name costs as long as a wrong password.
_DUMMY = _HASHER.hash(secrets.token_hex(16))


class OperatorError(Exception):
    """A refusal in words an operator can act on (CLI: one line, exit 1; console: shown on the form)."""


@dataclass(frozen=True)
class Operator:
    id: int
    name: str
    role: str
    totp_enrolled: bool = False
    alerts: bool = False


@dataclass(frozen=True)
class Session:
    operator: Operator
    stage: str  # password | full
    csrf: str
    created_at: dt.datetime
    seen_at: dt.datetime


@dataclass(frozen=True)
class Added:
    operator: Operator
    totp_secret: str  # shown once, for the authenticator app (or its QR); stored only sealed
    provisioning_uri: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def provisioning_uri(name: str, secret: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=name, issuer_name=ISSUER)


def check_password_rule(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise OperatorError(f"a password has at least {MIN_PASSWORD} characters")


async def add_operator(pool: Any, crypto: Any, name: str, role: str, password: str, *, created_by: str
                       ) -> Added:
    """A new operator with ``role``: its password hashed with argon2id, a new TOTP secret sealed."""
    from console.roles import ROLES

    if not NAME.fullmatch(name):
        raise OperatorError("an operator name is 2-32 of a-z 0-9 . _ - starting with a letter")
    if role not in ROLES:
        raise OperatorError(f"a role is one of {', '.join(ROLES)}")
    check_password_rule(password)
    secret = pyotp.random_base32()
    sealed = await crypto.encrypt_pan(secret, crypto.keys.pii_data)
    encoded = _HASHER.hash(password)

    async def work(conn: Any) -> Any:
        return await conn.fetchrow(
            """INSERT INTO operators (name, role, password_hash, totp_sealed, created_by)
               VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING RETURNING id""",
            name, role, encoded, sealed, created_by)

    row = await pool.run(work)
    if row is None:
        raise OperatorError(f"operator {name} exists already")
    return Added(Operator(int(row["id"]), name, role), secret, provisioning_uri(name, secret))


def _operator(row: Any) -> Operator:
    return Operator(int(row["id"]), row["name"], row["role"], bool(row["totp_enrolled"]), bool(row["alerts"]))


async def _fail(conn: Any, operator_id: int, config: ConsoleConfig) -> None:
    await conn.execute(
        """UPDATE operators SET failed_logins = failed_logins + 1,
               locked_until = CASE WHEN failed_logins + 1 >= $2
                                   THEN now() + make_interval(mins => $3) ELSE locked_until END
           WHERE id = $1""",
        operator_id, config.lockout_after, config.lockout_minutes)


async def password_step(pool: Any, config: ConsoleConfig, name: str, password: str, address: str
                        ) -> tuple[str, Session]:
    """Check the password: a new session at stage ``password`` (its token, its row). The refusal does not
    say whether the name or the password was wrong; a locked or disabled operator is told so."""

    async def find(conn: Any) -> Any:
        return await conn.fetchrow(
            "SELECT *, locked_until > now() AS locked FROM operators WHERE name = $1", name)

    row = await pool.run(find)
    encoded = row["password_hash"] if row is not None else _DUMMY
    ok: bool
    try:
        ok = _HASHER.verify(encoded, password)
    except (VerificationError, InvalidHashError):
        ok = False
    if row is None:
        raise OperatorError("wrong name or password")
    if row["disabled_at"] is not None:
        raise OperatorError("this operator is disabled")
    if row["locked"]:
        raise OperatorError("too many failed logins: locked for now, try again later")
    if not ok:
        await pool.run(_fail, int(row["id"]), config)
        raise OperatorError("wrong name or password")
    token = secrets.token_urlsafe(32)
    session = await pool.run(_open, int(row["id"]), "password", token, address)
    return token, session


async def totp_step(pool: Any, crypto: Any, config: ConsoleConfig, token: str, code: str, address: str
                    ) -> tuple[str, Session]:
    """Check the TOTP code of a session at stage ``password``: the old session ends and a new one at
    stage ``full`` begins (a new token: the cookie set before the login is worth nothing after it)."""
    session = await lookup(pool, config, token)
    if session is None or session.stage != "password":
        raise OperatorError("the login has expired: give the password again")
    row = await pool.run(lambda conn: conn.fetchrow(
        "SELECT *, locked_until > now() AS locked FROM operators WHERE id = $1", session.operator.id))
    if row["locked"]:
        raise OperatorError("too many failed logins: locked for now, try again later")
    secret = await crypto.decrypt_pan(row["totp_sealed"], crypto.keys.pii_data)
    totp = pyotp.TOTP(secret)
    now = dt.datetime.now(dt.UTC)
    step = int(now.timestamp()) // totp.interval
    matched: int | None = None
    for s in (step - 1, step, step + 1):  # one step of clock drift either way
        if secrets.compare_digest(totp.at(s * totp.interval), code.strip()):
            matched = s
    if matched is None or (row["totp_last_step"] is not None and matched <= row["totp_last_step"]):
        await pool.run(_fail, session.operator.id, config)
        raise OperatorError("wrong code")

    async def promote(conn: Any) -> Session:
        async with conn.transaction():
            await conn.execute(
                """UPDATE operators SET failed_logins = 0, locked_until = NULL, totp_enrolled = true,
                       totp_last_step = $2 WHERE id = $1""", session.operator.id, matched)
            await conn.execute("UPDATE operator_sessions SET ended_at = now() WHERE token_hash = $1",
                               token_hash(token))
            return await _open(conn, session.operator.id, "full", new_token, address)

    new_token = secrets.token_urlsafe(32)
    return new_token, await pool.run(promote)


async def _open(conn: Any, operator_id: int, stage: str, token: str, address: str) -> Session:
    csrf = secrets.token_urlsafe(32)
    await conn.execute(
        """INSERT INTO operator_sessions (token_hash, operator_id, stage, csrf, address)
           VALUES ($1, $2, $3, $4, $5)""", token_hash(token), operator_id, stage, csrf, address)
    row = await conn.fetchrow(
        """SELECT o.*, s.stage, s.csrf, s.created_at AS s_created, s.seen_at FROM operator_sessions s
           JOIN operators o ON o.id = s.operator_id WHERE s.token_hash = $1""", token_hash(token))
    return Session(_operator(row), row["stage"], row["csrf"], row["s_created"], row["seen_at"])


async def open_session(conn: Any, operator_id: int, stage: str = "full", address: str = ""
                       ) -> tuple[str, str]:
    """A session for ``operator_id`` without a login (tests; ``operator`` CLI tooling): (token, csrf)."""
    token = secrets.token_urlsafe(32)
    session = await _open(conn, operator_id, stage, token, address)
    return token, session.csrf


async def lookup(pool: Any, config: ConsoleConfig, token: str) -> Session | None:
    """The live session of ``token`` (its seen_at moved to now), or None: unknown, ended, idle longer
    than session_idle_minutes, older than session_hours, or its operator disabled."""

    async def work(conn: Any) -> Any:
        return await conn.fetchrow(
            """UPDATE operator_sessions s SET seen_at = now()
               FROM operators o
               WHERE s.token_hash = $1 AND o.id = s.operator_id AND s.ended_at IS NULL
                 AND o.disabled_at IS NULL
                 AND s.seen_at > now() - make_interval(mins => $2)
                 AND s.created_at > now() - make_interval(hours => $3)
               RETURNING o.*, s.stage, s.csrf, s.created_at AS s_created, s.seen_at""",
            token_hash(token), config.session_idle_minutes, config.session_hours)

    if not token or len(token) > 100:
        return None
    row = await pool.run(work)
    if row is None:
        return None
    return Session(_operator(row), row["stage"], row["csrf"], row["s_created"], row["seen_at"])


async def end_session(pool: Any, token: str) -> None:
    await pool.run(lambda conn: conn.execute(
        "UPDATE operator_sessions SET ended_at = now() WHERE token_hash = $1 AND ended_at IS NULL",
        token_hash(token)))


async def by_name(conn: Any, name: str) -> Operator | None:
    row = await conn.fetchrow("SELECT * FROM operators WHERE name = $1", name)
    return None if row is None else _operator(row)
