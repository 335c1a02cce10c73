"""Cardholders (issue 16 item 1): register, find, show, update and close the people who own cards, and
give them cards (``card issue --cardholder``, ``card assign``).

Personal data is sealed by host.pii before it reaches the database: the ID number, phone and e-mail
are kept as HSM ciphertext, a keyed hash (what registration de-duplicates and search looks up by) and a
masked form (what is shown). Nothing here returns, logs or raises with a clear value; a search by
phone, e-mail or ID number hashes the value through the HSM and looks the hash up.

Functions that need the HSM take the pool (``ops.pgpool.PgPool``) and an ``IssuerCrypto``: the HSM is
asked first (trio side), then one database call does the work in one transaction. Functions that need
only the database take an asyncpg connection, as host.catalog's do. Refusals are ``CardholderError``
(a CatalogError: the CLI prints its one line).

A registration and every change of name or date of birth is screened (``host.aml.screen``) in the
transaction that makes it, so no cardholder exists unscreened under their current name.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg

from host import aml, card_events, kyc, pii
from host import events as host_events
from host.catalog import CatalogError
from host.directory import DEFAULT_LIMIT, Page, _int_cursor, _page, _Where
from ops.digits import row_number

if TYPE_CHECKING:
    from host.keys import IssuerCrypto

ID_TYPES = ("resident_id", "passport", "hk_macau_permit", "taiwan_permit", "foreign_permanent", "other")
AML_STATUSES = ("clear", "review", "confirmed")
STATES = ("active", "closed")
LIST_HINT = "give a cardholder id; `payswitch cardholder list` finds one"
# What of a cardholder may be shown (the CLI's --json, the API, the console): masked forms only
SHOWN = ("name", "id_type", "id_number_masked", "phone_masked", "email_masked", "kyc_level", "tier",
         "aml_status", "state")


class CardholderError(CatalogError):
    """A cardholder request that cannot be done; str() is one line saying why (never a clear value)."""


@dataclass(frozen=True)
class NewCardholder:
    """What `cardholder add` registers (clear values: sealed by ``register``, never stored as given)."""

    name: str
    id_type: str | None = None
    id_number: str | None = None
    phone: str | None = None
    email: str | None = None
    birth_date: dt.date | None = None
    address: str = ""


@dataclass(frozen=True)
class Changes:
    """What `cardholder update` changes; None keeps the value. An ID is changed as a pair."""

    name: str | None = None
    id_type: str | None = None
    id_number: str | None = None
    phone: str | None = None
    email: str | None = None
    birth_date: dt.date | None = None
    address: str | None = None

    def empty(self) -> bool:
        return all(v is None for v in vars(self).values())


@dataclass(frozen=True)
class Filter:
    """What `cardholder list` searches by; every field given must match. phone / email / id_number are
    clear values, hashed by the HSM for the lookup (never stored, never logged)."""

    name: str | None = None
    phone: str | None = None
    email: str | None = None
    id_number: str | None = None
    kyc_level: str | None = None
    aml_status: str | None = None
    state: str | None = None


def name_key(name: str) -> str:
    """The form names are searched by: lower case, runs of white space as one space."""
    return " ".join(name.split()).lower()


def clean_name(name: str) -> str:
    n = " ".join(name.split())
    if not 1 <= len(n) <= 200:
        raise CardholderError("a cardholder's name is 1 to 200 characters")
    return n


def _check_id_type(id_type: str | None) -> None:
    if id_type is not None and id_type not in ID_TYPES:
        raise CardholderError(f"ID type {id_type!r}: one of {', '.join(ID_TYPES)}")


def check_birth_date(birth_date: dt.date | None) -> None:
    if birth_date is not None and not dt.date(1900, 1, 1) <= birth_date <= dt.datetime.now(dt.UTC).date():
        raise CardholderError("date of birth: between 1900-01-01 and today")


async def _seal(crypto: IssuerCrypto, kind: pii.Kind, value: str | None) -> pii.Sealed | None:
    if value is None:
        return None
    try:
        return await pii.seal(crypto, kind, value)
    except pii.PiiError as exc:
        raise CardholderError(str(exc)) from None


async def _hash(crypto: IssuerCrypto, kind: pii.Kind, value: str) -> str:
    try:
        return await pii.lookup_hash(crypto, kind, value)
    except pii.PiiError as exc:
        raise CardholderError(str(exc)) from None


def _sealed_args(s: pii.Sealed | None) -> tuple[str | None, str | None, str | None]:
    return (s.enc, s.hash, s.masked) if s is not None else (None, None, None)


async def _id_owner(conn: Any, id_hash: str, other_than: int | None = None) -> int | None:
    """The live cardholder holding this identity document (de-duplication), if any."""
    owner = await conn.fetchval(
        "SELECT id FROM cardholders WHERE id_number_hash = $1 AND state = 'active' AND id <> coalesce($2, 0)",
        id_hash,
        other_than,
    )
    return None if owner is None else int(owner)


def _duplicate(owner: int) -> CardholderError:
    return CardholderError(
        f"that ID number is cardholder {owner}'s already (`payswitch cardholder show {owner}`)"
    )


async def _event(
    conn: Any, cardholder_id: int, from_level: str, to_level: str, decision: str, actor: str, reason: str
) -> None:
    await conn.execute(
        "INSERT INTO kyc_events (cardholder_id, from_level, to_level, decision, actor, reason)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        cardholder_id,
        from_level,
        to_level,
        decision,
        actor,
        reason,
    )
    if decision != "closed":  # a registration or a new level: the outbox's cardholder.kyc_changed too
        await host_events.kyc_changed(conn, cardholder_id, decision, actor, from_level=from_level)


# -- register ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Registered:
    cardholder_id: int
    kyc_level: str
    aml_status: str
    hits: list[Any]  # host.aml hits of the screening


async def register(
    pool: Any, crypto: IssuerCrypto, new: NewCardholder, actor: str, *, aml_threshold: int
) -> Registered:
    """Register a cardholder: with an ID (type and number) they are ``named`` at once, else
    ``anonymous``; event ``registered``; refused when a live cardholder holds the ID number already."""
    name = clean_name(new.name)
    _check_id_type(new.id_type)
    if (new.id_type is None) != (new.id_number is None):
        raise CardholderError("an ID is its type and its number: give both (--id-type and --id-number)")
    check_birth_date(new.birth_date)
    id_no = await _seal(crypto, "id_number", new.id_number)
    phone = await _seal(crypto, "phone", new.phone)
    email = await _seal(crypto, "email", new.email)
    level = "named" if id_no is not None else "anonymous"

    async def insert(conn: Any) -> Registered:
        async with conn.transaction():
            if id_no is not None and (owner := await _id_owner(conn, id_no.hash)) is not None:
                raise _duplicate(owner)
            try:
                cid = int(
                    await conn.fetchval(
                        """INSERT INTO cardholders (name, name_key, id_type, id_number_enc, id_number_hash,
                               id_number_masked, phone_enc, phone_hash, phone_masked, email_enc, email_hash,
                               email_masked, birth_date, address, kyc_level)
                           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
                           RETURNING id""",
                        name,
                        name_key(name),
                        new.id_type,
                        *_sealed_args(id_no),
                        *_sealed_args(phone),
                        *_sealed_args(email),
                        new.birth_date,
                        new.address.strip(),
                        level,
                    )
                )
            except asyncpg.UniqueViolationError:  # registered by another at the same moment
                owner = await _id_owner(conn, id_no.hash) if id_no is not None else None
                raise _duplicate(owner or 0) from None
            reason = "name and ID number given" if id_no is not None else "no ID number given"
            await _event(conn, cid, "anonymous", level, "registered", actor, reason)
            hits = await aml.screen(conn, cid, name, new.birth_date, threshold=aml_threshold)
            status = await conn.fetchval("SELECT aml_status FROM cardholders WHERE id = $1", cid)
            return Registered(cid, level, str(status), list(hits))

    result: Registered = await pool.run(insert)
    return result


# -- find and show -------------------------------------------------------------------------------------
async def resolve_cardholder(conn: Any, ref: str) -> int:
    """The one resolver of a CARDHOLDER argument: a cardholder id (labels may come later)."""
    t = ref.strip()
    if row_number(t) is not None:
        if await conn.fetchval("SELECT 1 FROM cardholders WHERE id = $1", int(t)):
            return int(t)
        raise CardholderError(f"no cardholder {t} ({LIST_HINT})")
    raise CardholderError(f"cardholder {t[:40]!r}: {LIST_HINT}")


# The columns a person may see: the masked forms, never the sealed values. The keyed hashes are
# selected for the search's filters only and dropped from every row returned (_public).
_CARDHOLDERS = f"""
SELECT h.id, h.name, h.name_key, h.id_type, h.id_number_masked, h.phone_masked, h.email_masked,
       h.birth_date, h.address, h.kyc_level, h.aml_status, h.state, h.bank_name, h.bank_account_masked,
       {kyc.TIER_SQL} AS tier, h.created_at, h.updated_at,
       (SELECT count(*) FROM cards c WHERE c.cardholder_id = h.id) AS cards,
       h.id_number_hash, h.phone_hash, h.email_hash
FROM cardholders h
"""
_HASHES = ("id_number_hash", "phone_hash", "email_hash")


def _public(row: Any) -> dict[str, Any]:
    out = dict(row)
    for k in _HASHES:
        out.pop(k, None)
    return out


async def list_cardholders(
    pool: Any,
    crypto: IssuerCrypto | None,
    flt: Filter | None = None,
    *,
    after: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> Page:
    """A keyset page of cardholders (id order); by name (case-insensitive, anywhere in the name), phone,
    e-mail or ID number (looked up by their keyed hash: needs ``crypto``), KYC level, AML status, state."""
    f = flt or Filter()
    w = _Where()
    if f.name is not None:
        key = name_key(f.name)
        if not key:
            raise CardholderError("--name: give part of the name")
        w.add("x.name_key LIKE {}", "%" + re.sub(r"([\\%_])", r"\\\1", key) + "%")
    searched: tuple[tuple[pii.Kind, str | None], ...] = (
        ("phone", f.phone),
        ("email", f.email),
        ("id_number", f.id_number),
    )
    for kind, value in searched:
        if value is not None:
            if crypto is None:
                raise CardholderError("a search by phone, e-mail or ID number needs the HSM")
            w.add(f"x.{kind}_hash = {{}}", await _hash(crypto, kind, value))
    for col, label, value, allowed in (
        ("kyc_level", "KYC level", f.kyc_level, kyc.LEVELS),
        ("aml_status", "AML status", f.aml_status, AML_STATUSES),
        ("state", "state", f.state, STATES),
    ):
        if value is not None:
            if value not in allowed:
                raise CardholderError(f"{label} {value!r}: one of {', '.join(allowed)}")
            w.add(f"x.{col} = {{}}", value)
    cursor = _int_cursor(after)

    async def query(conn: Any) -> Page:
        return await _page(conn, _CARDHOLDERS, w.clauses, w.args, after=cursor, limit=limit)

    page: Page = await pool.run(query)
    page.rows = [_public(r) for r in page.rows]
    return page


async def show_cardholder(conn: Any, cardholder_id: int) -> dict[str, Any]:
    """A cardholder (masked forms only), the cards they own and their KYC events (oldest first)."""
    row = await conn.fetchrow(f"{_CARDHOLDERS} WHERE h.id = $1", cardholder_id)
    if row is None:
        raise CardholderError(f"no cardholder {cardholder_id} ({LIST_HINT})")
    out = _public(row)
    out["owned_cards"] = [
        dict(r)
        for r in await conn.fetch(
            """SELECT c.id, c.label, c.pan_masked, c.state, c.form, p.code AS product, a.currency,
                      a.credits_posted - a.debits_posted AS balance
               FROM cards c JOIN products p ON p.id = c.product_id JOIN accounts a ON a.id = c.account_id
               WHERE c.cardholder_id = $1 ORDER BY c.id""",
            cardholder_id,
        )
    ]
    out["kyc_events"] = [
        dict(r)
        for r in await conn.fetch(
            """SELECT id, at, from_level, to_level, decision, actor, reason FROM kyc_events
               WHERE cardholder_id = $1 ORDER BY id""",
            cardholder_id,
        )
    ]
    return out


# -- update and close ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Updated:
    cardholder_id: int
    changed: list[str]  # the fields changed (names only: the values may be personal data)
    kyc_level: str
    aml_status: str
    screened: bool  # name or date of birth changed: screened again
    hits: list[Any]


async def update_cardholder(
    pool: Any,
    crypto: IssuerCrypto,
    cardholder_id: int,
    changes: Changes,
    actor: str,
    *,
    aml_threshold: int,
) -> Updated:
    """Change a live cardholder's name, ID, phone, e-mail, address or date of birth (phone, e-mail and ID
    sealed again). A new ID number makes an anonymous cardholder ``named``, and a verified one ``named``
    again (the document that was checked is not this one); a name or birth-date change re-screens."""
    if changes.empty():
        raise CardholderError("nothing to change: give at least one field")
    name = clean_name(changes.name) if changes.name is not None else None
    _check_id_type(changes.id_type)
    if (changes.id_type is None) != (changes.id_number is None):
        raise CardholderError("an ID is its type and its number: give both (--id-type and --id-number)")
    check_birth_date(changes.birth_date)
    id_no = await _seal(crypto, "id_number", changes.id_number)
    phone = await _seal(crypto, "phone", changes.phone)
    email = await _seal(crypto, "email", changes.email)

    async def work(conn: Any) -> Updated:
        async with conn.transaction():
            row = await conn.fetchrow("SELECT * FROM cardholders WHERE id = $1 FOR UPDATE", cardholder_id)
            if row is None:
                raise CardholderError(f"no cardholder {cardholder_id} ({LIST_HINT})")
            if row["state"] != "active":
                raise CardholderError(f"cardholder {cardholder_id} is closed")
            sets: dict[str, Any] = {}
            if name is not None and name != row["name"]:
                sets.update(name=name, name_key=name_key(name))
            if changes.birth_date is not None and changes.birth_date != row["birth_date"]:
                sets["birth_date"] = changes.birth_date
            if changes.address is not None and changes.address.strip() != row["address"]:
                sets["address"] = changes.address.strip()
            for kind, sealed in (("phone", phone), ("email", email)):
                if sealed is not None and sealed.hash != row[f"{kind}_hash"]:
                    sets.update({f"{kind}_enc": sealed.enc, f"{kind}_hash": sealed.hash})
                    sets[f"{kind}_masked"] = sealed.masked
            level = row["kyc_level"]
            new_level = level
            new_id = id_no is not None and (
                id_no.hash != row["id_number_hash"] or changes.id_type != row["id_type"]
            )
            if new_id:
                assert id_no is not None
                if (owner := await _id_owner(conn, id_no.hash, cardholder_id)) is not None:
                    raise _duplicate(owner)
                sets.update(
                    id_type=changes.id_type,
                    id_number_enc=id_no.enc,
                    id_number_hash=id_no.hash,
                    id_number_masked=id_no.masked,
                )
                new_level = "named"  # anonymous: an ID is given; verified: the checked ID is not this one
                if new_level != level:
                    sets["kyc_level"] = new_level
            changed = sorted(
                {k.removesuffix("_enc").removesuffix("_hash").removesuffix("_masked") for k in sets}
                - {"name_key", "kyc_level"}
            )
            if not sets:
                return Updated(cardholder_id, [], level, row["aml_status"], False, [])
            cols = list(sets)
            assigns = ", ".join(f"{c} = ${i + 2}" for i, c in enumerate(cols))
            try:
                await conn.execute(
                    f"UPDATE cardholders SET {assigns}, updated_at = now() WHERE id = $1",
                    cardholder_id,
                    *(sets[c] for c in cols),
                )
            except asyncpg.UniqueViolationError:
                owner = await _id_owner(conn, id_no.hash, cardholder_id) if id_no is not None else None
                raise _duplicate(owner or 0) from None
            if new_level != level:
                why = "ID number given" if level == "anonymous" else "ID changed: the checked one was another"
                await _event(conn, cardholder_id, level, new_level, "id_changed", actor, why)
            screened = "name" in sets or "birth_date" in sets
            hits: list[Any] = []
            if screened:
                born = sets.get("birth_date", row["birth_date"])
                hits = list(
                    await aml.screen(
                        conn, cardholder_id, sets.get("name", row["name"]), born, threshold=aml_threshold
                    )
                )
            status = await conn.fetchval("SELECT aml_status FROM cardholders WHERE id = $1", cardholder_id)
            return Updated(cardholder_id, changed, new_level, str(status), screened, hits)

    result: Updated = await pool.run(work)
    return result


async def close_cardholder(conn: Any, cardholder_id: int, actor: str, reason: str = "") -> str:
    """Close a cardholder for good (the ID number is free again); refused while they own a card that is
    not closed. Returns the level they had; the closing is a KYC event (who, when, why)."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT state, kyc_level FROM cardholders WHERE id = $1 FOR UPDATE", cardholder_id
        )
        if row is None:
            raise CardholderError(f"no cardholder {cardholder_id} ({LIST_HINT})")
        if row["state"] == "closed":
            raise CardholderError(f"cardholder {cardholder_id} is closed already")
        open_cards = [
            r["id"]
            for r in await conn.fetch(
                "SELECT id FROM cards WHERE cardholder_id = $1 AND state <> 'closed' ORDER BY id LIMIT 11",
                cardholder_id,
            )
        ]
        if open_cards:
            shown = ", ".join(map(str, open_cards[:10])) + (", ..." if len(open_cards) > 10 else "")
            raise CardholderError(
                f"cardholder {cardholder_id} owns cards that are not closed ({shown}):"
                " close them first (`payswitch card close CARD`)"
            )
        await conn.execute(
            "UPDATE cardholders SET state = 'closed', updated_at = now() WHERE id = $1", cardholder_id
        )
        level = str(row["kyc_level"])
        await _event(conn, cardholder_id, level, level, "closed", actor, reason)
    return level


# -- KYC submissions -----------------------------------------------------------------------------------
DOCUMENT_CHECKS = ("passed", "failed")


@dataclass(frozen=True)
class KycSubmission:
    """A KYC submission (the API's `POST /v1/cardholders/{id}/kyc`): the level asked for and its evidence.
    ``document_check`` is the programme's check of the identity document (needed for ``verified``);
    ``id_type`` / ``id_number`` the document itself (clear: sealed by update_cardholder)."""

    level: str
    reason: str
    document_check: str | None = None
    id_type: str | None = None
    id_number: str | None = None


@dataclass(frozen=True)
class KycOutcome:
    """What a submission decided: the last KYC event it recorded, and the levels before and after."""

    cardholder_id: int
    decision: str  # the kyc_events decision: approved / rejected / downgraded / id_changed
    from_level: str  # before the submission
    to_level: str  # after it
    event_id: int
    at: Any  # datetime
    actor: str
    reason: str


async def submit_kyc(
    pool: Any, crypto: IssuerCrypto, cardholder_id: int, sub: KycSubmission, actor: str, *, aml_threshold: int
) -> KycOutcome:
    """Decide a KYC submission as host.kyc decides an operator's: an ID given with it is recorded first
    (update_cardholder: sealed; it makes an anonymous cardholder ``named``). Then ``verified`` is
    approved (``document_check`` passed) or rejected (failed); ``named`` from ``verified`` and
    ``anonymous`` are downgrades; ``named`` from ``anonymous`` needs the ID. Refusals are CardholderError."""
    if sub.level not in kyc.LEVELS:
        raise CardholderError(f"KYC level {sub.level!r}: one of {', '.join(kyc.LEVELS)}")
    if (sub.level == "verified") != (sub.document_check is not None):
        raise CardholderError("a document check result (passed or failed) goes with level verified only")
    if sub.document_check is not None and sub.document_check not in DOCUMENT_CHECKS:
        raise CardholderError(f"document check: one of {', '.join(DOCUMENT_CHECKS)}")

    async def current(conn: Any) -> Any:
        return await conn.fetchrow("SELECT state, kyc_level FROM cardholders WHERE id = $1", cardholder_id)

    async def last_event(conn: Any) -> Any:
        return await conn.fetchrow(
            "SELECT id, at, to_level, decision, actor, reason FROM kyc_events WHERE cardholder_id = $1"
            " ORDER BY id DESC LIMIT 1",
            cardholder_id,
        )

    before = await pool.run(current)
    if before is None:
        raise CardholderError(f"no cardholder {cardholder_id} ({LIST_HINT})")
    if before["state"] != "active":
        raise CardholderError(f"cardholder {cardholder_id} is closed")
    from_level = str(before["kyc_level"])
    id_changed = False
    if sub.id_type is not None or sub.id_number is not None:
        done = await update_cardholder(
            pool, crypto, cardholder_id, Changes(id_type=sub.id_type, id_number=sub.id_number), actor,
            aml_threshold=aml_threshold,
        )
        id_changed = "id_number" in done.changed or "id_type" in done.changed
    level = str((await pool.run(current))["kyc_level"])
    decision: tuple[str, str | None] | None = None
    if sub.level == "verified":
        decision = ("approve" if sub.document_check == "passed" else "reject", None)
    elif kyc.tier_rank(sub.level) < kyc.tier_rank(level):
        decision = ("downgrade", sub.level)
    elif sub.level == level and not id_changed:
        raise CardholderError(f"cardholder {cardholder_id} is {level} already")
    elif sub.level != level:  # named asked by an anonymous cardholder without an ID
        raise CardholderError(f"cardholder {cardholder_id} has no ID: named needs one (id_type, id_number)")
    if decision is not None:
        kind, to_level = decision
        try:
            await pool.run(
                lambda conn: kyc.decide(
                    conn, cardholder_id, kind, reason=sub.reason, actor=actor, to_level=to_level
                )
            )
        except kyc.KycError as exc:
            raise CardholderError(str(exc)) from None
    ev = await pool.run(last_event)
    return KycOutcome(
        cardholder_id, str(ev["decision"]), from_level, str(ev["to_level"]), int(ev["id"]), ev["at"],
        str(ev["actor"]), str(ev["reason"]),
    )


# -- cards owned by cardholders --------------------------------------------------------------------
async def _can_own(conn: Any, cardholder_id: int, product_id: int) -> None:
    """Refuse a card of the product for the cardholder (row-locked by the caller): closed, AML
    confirmed, or a tier below the product's issue tier (the tier counts AML review as anonymous)."""
    row = await conn.fetchrow(
        f"SELECT h.state, h.aml_status, {kyc.TIER_SQL} AS tier FROM cardholders h WHERE h.id = $1",
        cardholder_id,
    )
    if row is None:
        raise CardholderError(f"no cardholder {cardholder_id} ({LIST_HINT})")
    if row["state"] != "active":
        raise CardholderError(f"cardholder {cardholder_id} is closed: no card can be given to them")
    if row["aml_status"] == "confirmed":
        raise CardholderError(
            f"cardholder {cardholder_id} is a confirmed AML match: no card can be given to them"
        )
    p = await conn.fetchrow("SELECT code, issue_tier FROM products WHERE id = $1", product_id)
    if kyc.tier_rank(row["tier"]) < kyc.tier_rank(p["issue_tier"]):
        why = " (AML review pending)" if row["aml_status"] == "review" else ""
        raise CardholderError(
            f"cardholder {cardholder_id} is {row['tier']}{why}: product {p['code']} is issued to"
            f" {p['issue_tier']} cardholders or above (`payswitch cardholder kyc`)"
        )


async def check_can_issue(conn: Any, cardholder_id: int, product_code: str) -> None:
    """Before `card issue --cardholder`: the same checks as the assignment that follows."""
    pid = await conn.fetchval("SELECT id FROM products WHERE code = $1", product_code)
    if pid is None:
        raise CatalogError(f"no product {product_code} (`payswitch product list` shows them)")
    await _can_own(conn, cardholder_id, int(pid))


async def assign_cards(
    conn: Any, card_ids: list[int], cardholder_id: int, *, actor: str | None = None
) -> None:
    """Give anonymous cards an owner, in one transaction: refused for a card that has one (another or
    the same), a closed card, or when the cardholder cannot own the card's product (``_can_own``).
    The cardholder row is locked (FOR SHARE) so a close or KYC change cannot slip in between. Each
    card gets a card_events row (action ``assign``, its state unchanged, the cardholder in ``reason``):
    who gave a card its owner is part of the card's audit."""
    async with conn.transaction():
        if await conn.fetchval("SELECT 1 FROM cardholders WHERE id = $1 FOR SHARE", cardholder_id) is None:
            raise CardholderError(f"no cardholder {cardholder_id} ({LIST_HINT})")
        rows = await conn.fetch(
            "SELECT id, state, product_id, cardholder_id FROM cards WHERE id = ANY($1::bigint[])"
            " ORDER BY id FOR UPDATE",
            card_ids,
        )
        found = {r["id"] for r in rows}
        if missing := [c for c in card_ids if c not in found]:
            raise CatalogError(f"no card {missing[0]}")
        for pid in sorted({r["product_id"] for r in rows}):
            await _can_own(conn, cardholder_id, pid)
        for r in rows:
            if r["cardholder_id"] is not None:
                owner = r["cardholder_id"]
                whose = "theirs" if owner == cardholder_id else f"cardholder {owner}'s"
                raise CardholderError(f"card {r['id']} is {whose} already")
            if r["state"] == "closed":
                raise CardholderError(f"card {r['id']} is closed")
        await conn.execute(
            "UPDATE cards SET cardholder_id = $2, updated_at = now() WHERE id = ANY($1::bigint[])",
            card_ids,
            cardholder_id,
        )
        for r in rows:
            await card_events.record(
                conn, r["id"], r["state"], r["state"], "assign", actor=actor,
                reason=f"to cardholder {cardholder_id}",
            )


async def issue_to(
    pool: Any, crypto: IssuerCrypto, cardholder_id: int, product_code: str, count: int, **issue: Any
) -> tuple[list[Any], Any]:
    """`card issue --cardholder`: checked first (nothing is issued to a cardholder who cannot own the
    product's cards), issued (host.issue.issue_cards, ``issue`` its options), then assigned under lock."""
    from host.issue import issue_cards

    await pool.run(check_can_issue, cardholder_id, product_code)
    cards, mailer = await issue_cards(pool, crypto, product_code, count, owner_known=True, **issue)
    await pool.run(lambda conn: assign_cards(conn, [c.card_id for c in cards], cardholder_id,
                                             actor=issue.get("actor")))
    return cards, mailer
