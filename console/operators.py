"""Operators and their sessions (console migration 0001): argon2id passwords, TOTP, lockout, timeouts.

Plain functions over a pool (``ops.pgpool.PgPool``) and the issuer's crypto (``host.keys.IssuerCrypto``,
which seals the TOTP secret under the PII data key as ``host.pii`` seals a phone number): the CLI
(``payswitch operator``), the login views, the operators page and the tests call the same ones.

A login is two steps: the password gives a session at stage ``password``; the TOTP code raises it to
``full`` (and, at the first login, confirms the enrolment). A failed password or code counts towards
the lockout (``console.lockout_after`` in a row locks the operator for ``console.lockout_minutes``); a
full login resets the count (a right password alone does not: else the TOTP could be guessed between
right passwords). After a lockout has run out, the count starts again from zero. A session ends at
logout, after ``console.session_idle_minutes`` without a request, or ``console.session_hours`` after its
login; the token is random, only its SHA-256 is stored, and a new token is made at each step up (no
session fixation).

Every change (add, disable, unlock, TOTP reset, password, role) writes its audit row (ops.audit) in the
change's own transaction, as ``By`` says (the console's operator, or ``cli:<unix user>``). Logins write
``login.ok``, ``login.failed`` and ``login.locked`` rows: never the password or the code.
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

from ops import audit
from ops.config import ConsoleConfig

NAME = re.compile(r"^[a-z][a-z0-9._-]{1,31}$")
MIN_PASSWORD = 12
MAX_PASSWORD = 1024
ISSUER = "payswitch"
_HASHER = PasswordHasher()  # argon2id, argon2-cffi's default parameters (RFC 9106 low-memory profile)
# A hash to verify against when the name is unknown, so a wrong name costs as long as a wrong password.
_DUMMY = _HASHER.hash(secrets.token_hex(16))
LOCKED = "too many failed logins: locked for now, try again later"


class OperatorError(Exception):
    """A refusal in words an operator can act on (CLI: one line, exit 1; console: shown on the form)."""


@dataclass(frozen=True)
class By:
    """Who makes a change, for its audit row: an operator's name and role and their address, or the CLI
    (``By.cli()``: actor ``cli:<unix user>``, role ``cli``)."""

    actor: str
    role: str
    source: str = ""

    @staticmethod
    def cli() -> By:
        from ops.actor import cli_actor

        return By(cli_actor(), "cli", "cli")


@dataclass(frozen=True)
class Operator:
    id: int
    name: str
    role: str
    totp_enrolled: bool = False
    alerts: bool = False


@dataclass(frozen=True)
class OperatorRow:
    """One operator as lists show it (no hash, no secret; the e-mail masked)."""

    id: int
    name: str
    role: str
    totp_enrolled: bool
    state: str  # active | locked | disabled
    failed_logins: int
    locked_until: dt.datetime | None
    disabled_at: dt.datetime | None
    email: str  # "on file" or '' (the address itself stays sealed)
    alerts: bool
    created_at: dt.datetime
    created_by: str

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "role": self.role, "totp_enrolled": self.totp_enrolled,
                "state": self.state, "failed_logins": self.failed_logins,
                "locked_until": self.locked_until.isoformat() if self.locked_until else None,
                "disabled_at": self.disabled_at.isoformat() if self.disabled_at else None,
                "email": self.email or None, "alerts": self.alerts, "created_at": self.created_at.isoformat(),
                "created_by": self.created_by}


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


def qr_svg(uri: str) -> str:
    """The otpauth URI as an SVG QR code (segno), made on the server: no external service sees it."""
    import io

    import segno

    out = io.BytesIO()
    segno.make(uri, error="m").save(out, kind="svg", scale=4, border=2, xmldecl=False, svgns=True,
                                    title="TOTP enrolment")
    return out.getvalue().decode()


def check_password_rule(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise OperatorError(f"a password has at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise OperatorError(f"a password has at most {MAX_PASSWORD} characters")


def check_name(name: str) -> None:
    if not NAME.fullmatch(name):
        raise OperatorError("an operator name is 2-32 of a-z 0-9 . _ - starting with a letter")


def check_role(role: str) -> None:
    from console.roles import ROLES

    if role not in ROLES:
        raise OperatorError(f"a role is one of {', '.join(ROLES)}")


async def add_operator(pool: Any, crypto: Any, name: str, role: str, password: str, *, created_by: str,
                       email: str | None = None, by: By | None = None) -> Added:
    """A new operator with ``role``: its password hashed with argon2id, a new TOTP secret sealed, the
    e-mail (if any) sealed as host.pii seals one. With ``by``, the audit row ``operator.add``."""
    check_name(name)
    check_role(role)
    check_password_rule(password)
    email_sealed = email_hash = None
    masked_email = ""
    if email:
        from host import pii

        try:
            sealed_email = await pii.seal(crypto, "email", email)
        except pii.PiiError as exc:
            raise OperatorError(f"--email: {exc}") from None
        email_sealed, email_hash, masked_email = sealed_email.enc, sealed_email.hash, sealed_email.masked
    secret = pyotp.random_base32()
    sealed = await crypto.encrypt_pan(secret, crypto.keys.pii_data)
    encoded = _HASHER.hash(password)

    async def work(conn: Any) -> Any:
        async with conn.transaction():
            row = await conn.fetchrow(
                """INSERT INTO operators (name, role, password_hash, totp_sealed, created_by, email_sealed,
                                          email_hash, alerts)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (name) DO NOTHING RETURNING id""",
                name, role, encoded, sealed, created_by, email_sealed, email_hash, email_sealed is not None)
            if row is not None and by is not None:
                await audit.record(conn, actor=by.actor, role=by.role, source=by.source,
                                   action="operator.add", target=f"operator:{name}",
                                   after={"role": role, "email": masked_email or None})
            return row

    row = await pool.run(work)
    if row is None:
        raise OperatorError(f"operator {name} exists already")
    return Added(Operator(int(row["id"]), name, role), secret, provisioning_uri(name, secret))


def _operator(row: Any) -> Operator:
    return Operator(int(row["id"]), row["name"], row["role"], bool(row["totp_enrolled"]), bool(row["alerts"]))


def _row(row: Any, now: dt.datetime) -> OperatorRow:
    state = ("disabled" if row["disabled_at"] is not None
             else "locked" if row["locked_until"] is not None and row["locked_until"] > now else "active")
    # the address is sealed; a list says only whether one is on file (revealing it would take the HSM)
    email = "on file" if row["email_sealed"] else ""
    return OperatorRow(int(row["id"]), row["name"], row["role"], bool(row["totp_enrolled"]), state,
                       int(row["failed_logins"]), row["locked_until"], row["disabled_at"], email,
                       bool(row["alerts"]), row["created_at"], row["created_by"])


async def list_operators(pool: Any, *, role: str | None = None, state: str | None = None,
                         name: str | None = None, after: int | None = None, limit: int = 50
                         ) -> tuple[list[OperatorRow], int | None]:
    """Operators by id, filtered (role, state active|locked|disabled, name containing): (page, next
    cursor)."""
    if role is not None:
        check_role(role)
    if state is not None and state not in ("active", "locked", "disabled"):
        raise OperatorError("a state is one of active, locked, disabled")

    async def work(conn: Any) -> tuple[list[Any], dt.datetime]:
        now = await conn.fetchval("SELECT now()")
        rows = await conn.fetch(
            """SELECT * FROM operators
               WHERE id > $1 AND ($2::text IS NULL OR role = $2)
                 AND ($3::text IS NULL OR strpos(name, $3) > 0)
                 AND ($4::text IS NULL
                      OR ($4 = 'disabled' AND disabled_at IS NOT NULL)
                      OR ($4 = 'locked' AND disabled_at IS NULL AND locked_until > now())
                      OR ($4 = 'active' AND disabled_at IS NULL AND (locked_until IS NULL
                                                                      OR locked_until <= now())))
               ORDER BY id LIMIT $5""",
            after or 0, role, name or None, state, limit + 1)
        return list(rows), now

    rows, now = await pool.run(work)
    page = [_row(r, now) for r in rows[:limit]]
    return page, (page[-1].id if len(rows) > limit else None)


async def get_operator(pool: Any, name: str) -> OperatorRow:
    async def work(conn: Any) -> tuple[Any, dt.datetime]:
        return await conn.fetchrow("SELECT * FROM operators WHERE name = $1", name), await conn.fetchval(
            "SELECT now()")

    row, now = await pool.run(work)
    if row is None:
        raise OperatorError(f"no operator {name}")
    return _row(row, now)


async def _change(pool: Any, name: str, by: By, action: str, change: Any, *, reason: str = ""
                  ) -> OperatorRow:
    """Lock ``name``'s row, let ``change(conn, row)`` update it (returning the audit's before/after),
    end its sessions when the change says so, and write the audit row: all in one transaction."""

    async def work(conn: Any) -> tuple[Any, dt.datetime]:
        async with conn.transaction():
            row = await conn.fetchrow("SELECT * FROM operators WHERE name = $1 FOR UPDATE", name)
            if row is None:
                raise OperatorError(f"no operator {name}")
            before, after, end_sessions = await change(conn, row)
            if end_sessions:
                await conn.execute(
                    """UPDATE operator_sessions SET ended_at = now()
                       WHERE operator_id = $1 AND ended_at IS NULL""", row["id"])
            await audit.record(conn, actor=by.actor, role=by.role, source=by.source, action=action,
                               target=f"operator:{name}", before=before, after=after, reason=reason)
            changed = await conn.fetchrow("SELECT * FROM operators WHERE id = $1", row["id"])
            return changed, await conn.fetchval("SELECT now()")

    row, now = await pool.run(work)
    return _row(row, now)


def _not_self(by: By, name: str, what: str) -> None:
    if by.actor == name:
        raise OperatorError(f"an operator may not {what} themselves (ask another admin)")


async def disable_operator(pool: Any, name: str, by: By, *, reason: str = "") -> OperatorRow:
    """Disable ``name``: every session of theirs ends, no login is accepted again."""
    _not_self(by, name, "disable")

    async def change(conn: Any, row: Any) -> tuple[Any, Any, bool]:
        if row["disabled_at"] is not None:
            raise OperatorError(f"operator {name} is disabled already")
        await conn.execute("UPDATE operators SET disabled_at = now() WHERE id = $1", row["id"])
        return {"state": "enabled"}, {"state": "disabled"}, True

    return await _change(pool, name, by, "operator.disable", change, reason=reason)


async def unlock_operator(pool: Any, name: str, by: By, *, reason: str = "") -> OperatorRow:
    """Clear ``name``'s failed logins and lockout."""

    async def change(conn: Any, row: Any) -> tuple[Any, Any, bool]:
        await conn.execute("UPDATE operators SET failed_logins = 0, locked_until = NULL WHERE id = $1",
                           row["id"])
        return ({"failed_logins": int(row["failed_logins"]),
                 "locked_until": row["locked_until"].isoformat() if row["locked_until"] else None},
                {"failed_logins": 0, "locked_until": None}, False)

    return await _change(pool, name, by, "operator.unlock", change, reason=reason)


async def reset_totp(pool: Any, crypto: Any, name: str, by: By, *, reason: str = "") -> Added:
    """A new TOTP secret for ``name`` (enrolment again at the next login); their sessions end."""
    secret = pyotp.random_base32()
    sealed = await crypto.encrypt_pan(secret, crypto.keys.pii_data)

    async def change(conn: Any, row: Any) -> tuple[Any, Any, bool]:
        await conn.execute(
            """UPDATE operators SET totp_sealed = $2, totp_enrolled = false, totp_last_step = NULL
               WHERE id = $1""", row["id"], sealed)
        return {"totp_enrolled": bool(row["totp_enrolled"])}, {"totp_enrolled": False}, True

    row = await _change(pool, name, by, "operator.reset_totp", change, reason=reason)
    return Added(Operator(row.id, row.name, row.role), secret, provisioning_uri(name, secret))


async def set_password(pool: Any, name: str, password: str, by: By, *, reason: str = "") -> OperatorRow:
    """A new password for ``name`` (argon2id); their sessions end."""
    check_password_rule(password)
    encoded = _HASHER.hash(password)

    async def change(conn: Any, row: Any) -> tuple[Any, Any, bool]:
        await conn.execute("UPDATE operators SET password_hash = $2 WHERE id = $1", row["id"], encoded)
        return None, {"password": "changed"}, True

    return await _change(pool, name, by, "operator.password", change, reason=reason)


async def set_role(pool: Any, name: str, role: str, by: By, *, reason: str = "") -> OperatorRow:
    """Give ``name`` another role; their sessions end (the next login carries the new role)."""
    check_role(role)
    _not_self(by, name, "change the role of")

    async def change(conn: Any, row: Any) -> tuple[Any, Any, bool]:
        if row["role"] == role:
            raise OperatorError(f"operator {name} is {role} already")
        await conn.execute("UPDATE operators SET role = $2 WHERE id = $1", row["id"], role)
        return {"role": row["role"]}, {"role": role}, True

    return await _change(pool, name, by, "operator.role", change, reason=reason)


# -- login ----------------------------------------------------------------------------------------
async def _fail(conn: Any, operator_id: int, config: ConsoleConfig) -> bool:
    """Count one failed login; whether it locked the operator (a lockout run out starts the count anew)."""
    locked = await conn.fetchval(
        """UPDATE operators SET
               failed_logins = CASE WHEN locked_until IS NOT NULL AND locked_until <= now() THEN 1
                                    ELSE failed_logins + 1 END,
               locked_until = CASE WHEN locked_until IS NOT NULL AND locked_until <= now() THEN
                                        CASE WHEN 1 >= $2 THEN now() + make_interval(mins => $3) END
                                   WHEN failed_logins + 1 >= $2 THEN now() + make_interval(mins => $3)
                                   ELSE locked_until END
           WHERE id = $1 RETURNING locked_until > now()""",
        operator_id, config.lockout_after, config.lockout_minutes)
    return bool(locked)


async def _login_audit(conn: Any, row: Any, action: str, address: str, reason: str) -> None:
    await audit.record(conn, actor=row["name"], role=row["role"], source=address, action=action,
                       target=f"operator:{row['name']}", reason=reason,
                       outcome="done" if action == "login.ok" else "refused")


async def _failed(pool: Any, row: Any, config: ConsoleConfig, address: str, reason: str) -> bool:
    async def work(conn: Any) -> bool:
        async with conn.transaction():
            locked = await _fail(conn, int(row["id"]), config)
            await _login_audit(conn, row, "login.failed", address, reason)
            if locked:
                await _login_audit(conn, row, "login.locked", address,
                                   f"{config.lockout_after} failed logins in a row: locked for "
                                   f"{config.lockout_minutes} min")
            return locked

    return bool(await pool.run(work))


async def password_step(pool: Any, config: ConsoleConfig, name: str, password: str, address: str
                        ) -> tuple[str, Session]:
    """Check the password: a new session at stage ``password`` (its token, its row). The refusal does not
    say whether the name or the password was wrong; a locked or disabled operator is told so."""

    async def find(conn: Any) -> Any:
        return await conn.fetchrow(
            "SELECT *, coalesce(locked_until > now(), false) AS locked FROM operators WHERE name = $1", name)

    row = await pool.run(find) if NAME.fullmatch(name) else None
    encoded = row["password_hash"] if row is not None else _DUMMY
    ok: bool
    try:
        ok = len(password) <= MAX_PASSWORD and _HASHER.verify(encoded, password)
    except (VerificationError, InvalidHashError):
        ok = False
    if row is None:
        # recorded without the name typed (it may be a password typed in the wrong field)
        await pool.run(lambda conn: audit.record(conn, actor="unknown", role="", source=address,
                                                 action="login.failed", reason="unknown name",
                                                 outcome="refused"))
        raise OperatorError("wrong name or password")
    if row["disabled_at"] is not None:
        await pool.run(_login_audit, row, "login.failed", address, "operator disabled")
        raise OperatorError("this operator is disabled")
    if row["locked"]:
        await pool.run(_login_audit, row, "login.failed", address, "operator locked")
        raise OperatorError(LOCKED)
    if not ok:
        if await _failed(pool, row, config, address, "wrong password"):
            raise OperatorError(LOCKED)
        raise OperatorError("wrong name or password")
    token = secrets.token_urlsafe(32)
    session = await pool.run(_open, int(row["id"]), "password", token, address)
    return token, session


async def enrolment(pool: Any, crypto: Any, session: Session) -> Added | None:
    """For a session at stage ``password`` whose operator has not confirmed a TOTP enrolment: the secret
    (decrypted through the HSM for this page only) and its URI; else None."""
    if session.stage != "password":
        return None

    async def work(conn: Any) -> Any:
        return await conn.fetchrow("SELECT totp_enrolled, totp_sealed FROM operators WHERE id = $1",
                                   session.operator.id)

    row = await pool.run(work)
    if row is None or row["totp_enrolled"]:
        return None
    secret = await crypto.decrypt_pan(row["totp_sealed"], crypto.keys.pii_data)
    return Added(session.operator, secret, provisioning_uri(session.operator.name, secret))


async def totp_step(pool: Any, crypto: Any, config: ConsoleConfig, token: str, code: str, address: str
                    ) -> tuple[str, Session]:
    """Check the TOTP code of a session at stage ``password``: the old session ends and a new one at
    stage ``full`` begins (a new token: the cookie set before the login is worth nothing after it)."""
    session = await lookup(pool, config, token)
    if session is None or session.stage != "password":
        raise OperatorError("the login has expired: give the password again")
    row = await pool.run(lambda conn: conn.fetchrow(
        "SELECT *, coalesce(locked_until > now(), false) AS locked FROM operators WHERE id = $1",
        session.operator.id))
    if row["locked"]:
        await end_session(pool, token)
        await pool.run(_login_audit, row, "login.failed", address, "operator locked")
        raise OperatorError(LOCKED)
    secret = await crypto.decrypt_pan(row["totp_sealed"], crypto.keys.pii_data)
    totp = pyotp.TOTP(secret)
    now = dt.datetime.now(dt.UTC)
    step = int(now.timestamp()) // totp.interval
    matched: int | None = None
    code = code.strip()
    for s in (step - 1, step, step + 1):  # one step of clock drift either way
        if secrets.compare_digest(totp.at(s * totp.interval), code):
            matched = s
    if matched is None or (row["totp_last_step"] is not None and matched <= row["totp_last_step"]):
        reason = "wrong code" if matched is None else "code used already"
        if await _failed(pool, row, config, address, reason):
            await end_session(pool, token)
            raise OperatorError(LOCKED)
        raise OperatorError("wrong code")

    async def promote(conn: Any) -> Session:
        async with conn.transaction():
            await conn.execute(
                """UPDATE operators SET failed_logins = 0, locked_until = NULL, totp_enrolled = true,
                       totp_last_step = $2 WHERE id = $1""", session.operator.id, matched)
            await conn.execute("UPDATE operator_sessions SET ended_at = now() WHERE token_hash = $1",
                               token_hash(token))
            await _login_audit(conn, row, "login.ok", address,
                               "TOTP enrolment confirmed" if not row["totp_enrolled"] else "")
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


async def logout(pool: Any, token: str, session: Session, address: str) -> None:
    """End the session of ``token`` and record the logout."""
    op = session.operator

    async def work(conn: Any) -> None:
        async with conn.transaction():
            await conn.execute(
                "UPDATE operator_sessions SET ended_at = now() WHERE token_hash = $1 AND ended_at IS NULL",
                token_hash(token))
            await audit.record(conn, actor=op.name, role=op.role, source=address, action="logout",
                               target=f"operator:{op.name}")

    await pool.run(work)


async def by_name(conn: Any, name: str) -> Operator | None:
    row = await conn.fetchrow("SELECT * FROM operators WHERE name = $1", name)
    return None if row is None else _operator(row)
