"""Finding the host's entities: list and show products, cards, merchants, stores, terminals and acquirers,
and the one resolver of a card reference (id, PAN, masked PAN or label).

Every list is a keyset page: rows in ascending key order (``id``; an acquirer's institution id), at
most ``limit`` of them, and ``next``, the cursor of the following page (the last row's key) or None
when there is none. ``--after CURSOR`` on the command line gives it back. A keyset cursor stays right
while rows are added, and costs one index range read whatever the page number.

Nothing here sees a clear PAN: a caller holding one passes its HSM hash (``resolve_card`` asks the
HSM itself); masked PANs (first 6 + last 4) are searched as stored. Amounts are integer minor units
and times are ``datetime``: the callers format them (ops.money, ops.localtime).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from host import kyc
from host.catalog import MERCHANT_TRANSITIONS, CatalogError
from host.rules import TRANSITIONS
from ops.digits import is_digits, row_number
from ops.logs import mask_pan

if TYPE_CHECKING:
    from host.keys import IssuerCrypto
    from ops.pgpool import PgPool

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
LABEL = re.compile(r"[A-Za-z0-9_.-]{1,32}")
MASKED_PAN = re.compile(r"([0-9]{6})\*+([0-9]{4})")
CARD_STATES = tuple(TRANSITIONS)  # host.rules: the card state machine
MERCHANT_STATES = tuple(MERCHANT_TRANSITIONS)
TERMINAL_STATES = ("active", "disabled")
NOT_FOUND_HINT = "give a card id, a PAN or a label; `payswitch card list` finds one"


@dataclass
class Page:
    """One page of a list: its rows and the cursor of the next page (None: this is the last)."""

    rows: list[dict[str, Any]]
    next: str | None = None


def label_problem(label: str) -> str | None:
    """Why ``label`` cannot name a card, or None when it can."""
    if not LABEL.fullmatch(label):
        return f"label {label!r}: 1 to 32 letters, digits, '_', '.' or '-'"
    if is_digits(label):
        return f"label {label!r}: not all digits (that is a card id or a PAN)"
    return None


def _int_cursor(after: str | None) -> int | None:
    if after is None:
        return None
    if row_number(after) is None:
        raise CatalogError(f"--after {after!r}: give the cursor the previous page printed (a number)")
    return int(after)


async def _page(
    conn: Any,
    select: str,
    where: list[str],
    args: list[Any],
    *,
    key: str = "id",
    after: Any = None,
    limit: int = DEFAULT_LIMIT,
) -> Page:
    """Rows of ``select`` (wrapped as x, filters over its columns) after the cursor, in key order."""
    if not 1 <= limit <= MAX_LIMIT:
        raise CatalogError(f"--limit {limit}: 1 to {MAX_LIMIT}")
    where = list(where)
    args = list(args)
    if after is not None:
        args.append(after)
        where.append(f"x.{key} > ${len(args)}")
    sql = f"SELECT * FROM ({select}) x {'WHERE ' + ' AND '.join(where) if where else ''} "
    sql += f"ORDER BY x.{key} LIMIT {limit + 1}"
    rows = [dict(r) for r in await conn.fetch(sql, *args)]
    nxt = str(rows[limit - 1][key]) if len(rows) > limit else None
    return Page(rows[:limit], nxt)


class _Where:
    """Filter clauses and their positional arguments."""

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.args: list[Any] = []

    def add(self, clause: str, *values: Any) -> None:
        """``clause`` with ``{}`` for each value, in order."""
        marks = []
        for v in values:
            self.args.append(v)
            marks.append(f"${len(self.args)}")
        self.clauses.append(clause.format(*marks))


# -- products ----------------------------------------------------------------------------------------
_PRODUCTS = """
SELECT p.id, p.code, p.name, p.kind, p.currency, p.max_balance, p.initial_amount AS face_value, p.uses,
       p.per_txn_limit, p.daily_amount_limit, p.daily_count_limit, p.validity_months, p.pin_required,
       p.pin_scheme, p.allowed_mccs, p.allowed_groups, p.created_at,
       p.issue_tier, p.max_balance_anonymous, p.max_balance_named, p.max_balance_verified, p.form,
       p.chip, p.imk_ac_check, p.chip_fallback, p.no_cvm_limit, p.no_cvm_cumulative_limit,
       p.offline_floor_limit,
       (SELECT coalesce(array_agg(b.bin ORDER BY b.bin), '{}') FROM bin_ranges b WHERE b.product_id = p.id)
           AS bins,
       (SELECT count(*) FROM cards c WHERE c.product_id = p.id) AS cards
FROM products p
"""


async def list_products(
    conn: Any,
    *,
    kind: str | None = None,
    currency: str | None = None,
    after: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> Page:
    w = _Where()
    if kind is not None:
        w.add("x.kind = {}", kind)
    if currency is not None:
        w.add("x.currency = {}", currency)
    return await _page(conn, _PRODUCTS, w.clauses, w.args, after=_int_cursor(after), limit=limit)


async def show_product(conn: Any, code: str) -> dict[str, Any]:
    row = await conn.fetchrow(f"SELECT * FROM ({_PRODUCTS}) x WHERE x.code = $1", code)
    if row is None:
        raise CatalogError(f"no product {code} (`payswitch product list` shows them)")
    out = dict(row)
    states = await conn.fetch(
        "SELECT state, count(*) AS n FROM cards WHERE product_id = $1 GROUP BY state ORDER BY state",
        out["id"],
    )
    out["cards_by_state"] = {r["state"]: r["n"] for r in states}
    return out


# -- cards ---------------------------------------------------------------------------------------------
_CARDS = """
SELECT c.id, c.label, c.pan_masked, c.expiry, c.state, c.form, p.code AS product, c.issue_batch, c.pan_hash,
       a.currency, a.credits_posted - a.debits_posted AS balance,
       a.credits_posted - a.debits_posted - a.debits_pending AS available, a.debits_pending AS held,
       c.issued_at, c.updated_at, c.cardholder_id, p.max_balance, """ + kyc.TIER_COLUMNS + """
FROM cards c JOIN products p ON p.id = c.product_id JOIN accounts a ON a.id = c.account_id
    LEFT JOIN cardholders h ON h.id = c.cardholder_id
"""


@dataclass(frozen=True)
class CardFilter:
    """What `card list` searches by; every field given must match."""

    last4: str | None = None
    masked_pan: str | None = None  # 621234*********1234
    first6: str | None = None  # with last4: the first 6 + last 4 of a PAN
    pan_hash: str | None = None  # a clear PAN typed in, hashed by the HSM
    state: str | None = None
    product: str | None = None
    batch: str | None = None
    label: str | None = None
    cardholder: int | None = None  # host.cardholders: the cards a cardholder owns
    form: str | None = None  # physical or virtual


def card_filter_for_pan(text: str, pan_hash: str | None = None) -> CardFilter:
    """A `--pan` value: a masked PAN, the first 6 + last 4 digits, or (with its hash) a clear PAN."""
    t = text.strip().replace(" ", "")
    if m := MASKED_PAN.fullmatch(t):
        return CardFilter(masked_pan=t, first6=m.group(1), last4=m.group(2))
    if is_digits(t) and len(t) == 10:
        return CardFilter(first6=t[:6], last4=t[6:])
    if is_digits(t) and 13 <= len(t) <= 19 and pan_hash is not None:
        return CardFilter(pan_hash=pan_hash)
    raise CatalogError(
        "--pan: a masked PAN (621234*********1234), its first 6 + last 4 digits, or the whole PAN"
    )


async def list_cards(
    conn: Any, flt: CardFilter | None = None, *, after: str | None = None, limit: int = DEFAULT_LIMIT
) -> Page:
    f = flt or CardFilter()
    w = _Where()
    if f.last4 is not None:
        if not re.fullmatch(r"[0-9]{4}", f.last4):
            raise CatalogError(f"--last4 {f.last4!r}: the last 4 digits of the PAN")
        w.add("right(x.pan_masked, 4) = {}", f.last4)
    if f.first6 is not None:
        w.add("left(x.pan_masked, 6) = {}", f.first6)
    if f.masked_pan is not None:
        w.add("x.pan_masked = {}", f.masked_pan)
    if f.pan_hash is not None:
        w.add("x.pan_hash = {}", f.pan_hash)
    if f.state is not None:
        w.add("x.state = {}", f.state)
    if f.product is not None:
        w.add("x.product = {}", f.product)
    if f.batch is not None:
        w.add("x.issue_batch = {}", f.batch)
    if f.label is not None:
        w.add("x.label = {}", f.label)
    if f.cardholder is not None:
        w.add("x.cardholder_id = {}", f.cardholder)
    if f.form is not None:
        w.add("x.form = {}", f.form)
    page = await _page(conn, _CARDS, w.clauses, w.args, after=_int_cursor(after), limit=limit)
    for r in page.rows:
        r.pop("pan_hash", None)
    return page


_CARD_SHOW = """
SELECT c.id, c.label, c.pan_masked, c.expiry, c.state, c.form, p.code AS product, p.kind, c.issue_batch,
       c.part, c.uses_left, c.pin_tries, c.issued_at, c.updated_at, a.id AS account_id, a.currency,
       a.credits_posted - a.debits_posted AS balance,
       a.credits_posted - a.debits_posted - a.debits_pending AS available, a.debits_pending AS held,
       a.day, a.day_amount, a.day_count,
       p.max_balance, p.per_txn_limit, p.daily_amount_limit, p.daily_count_limit, p.pin_required,
       c.cardholder_id, h.name AS cardholder_name, """ + kyc.TIER_COLUMNS + """
FROM cards c JOIN products p ON p.id = c.product_id JOIN accounts a ON a.id = c.account_id
    LEFT JOIN cardholders h ON h.id = c.cardholder_id
WHERE c.id = $1
"""


async def show_card(conn: Any, card_id: int) -> dict[str, Any]:
    """Everything an operator asks about a card: state, product, balances, limits and the day's use."""
    row = await conn.fetchrow(_CARD_SHOW, card_id)
    if row is None:
        raise CatalogError(f"no card {card_id} ({NOT_FOUND_HINT})")
    return dict(row)


async def card_by_ref(conn: Any, ref: str, pan_hash: str | None = None) -> int:
    """The card id a reference names: a card id, a PAN (by ``pan_hash``), a masked PAN or a label."""
    t = ref.strip()
    shown = mask_pan(t) if is_digits(t) and len(t) >= 13 else t
    if pan_hash is not None:
        cid = await conn.fetchval("SELECT id FROM cards WHERE pan_hash = $1", pan_hash)
    elif is_digits(t):
        cid = await conn.fetchval("SELECT id FROM cards WHERE id = $1", int(t)) if len(t) <= 18 else None
    elif MASKED_PAN.fullmatch(t):
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM cards WHERE pan_masked = $1 LIMIT 6", t)]
        if len(ids) > 1:
            more = "" if len(ids) < 6 else ", ..."
            raise CatalogError(
                f"several cards are {t} ({', '.join(map(str, ids[:5]))}{more}): give the card id or a label"
            )
        cid = ids[0] if ids else None
    else:
        cid = await conn.fetchval("SELECT id FROM cards WHERE label = $1", t)
    if cid is None:
        raise CatalogError(f"no card {shown} ({NOT_FOUND_HINT})")
    return int(cid)


def needs_hsm(ref: str) -> bool:
    """Whether a card reference is a clear PAN (its lookup needs the HSM's keyed hash)."""
    t = ref.strip()
    return is_digits(t) and len(t) >= 13


async def resolve_card(pool: PgPool, crypto: IssuerCrypto | None, ref: str) -> int:
    """The one resolver of a card reference for every card command (and later the API and console)."""
    pan_hash = None
    if needs_hsm(ref):
        if crypto is None:
            raise CatalogError("a PAN is looked up through the HSM: it is not available to this command")
        pan_hash = await crypto.pan_hash(ref.strip())
    return await pool.run(card_by_ref, ref, pan_hash)


async def set_card_label(conn: Any, card_id: int, label: str | None) -> str | None:
    """Give a card its label (None removes it); returns the label it had."""
    if label is not None and (problem := label_problem(label)):
        raise CatalogError(problem)
    async with conn.transaction():
        row = await conn.fetchrow("SELECT label FROM cards WHERE id = $1 FOR UPDATE", card_id)
        if row is None:
            raise CatalogError(f"no card {card_id} ({NOT_FOUND_HINT})")
        if label is not None:
            other = await conn.fetchval("SELECT id FROM cards WHERE label = $1 AND id <> $2", label, card_id)
            if other is not None:
                raise CatalogError(f"label {label} is card {other}'s: `card label {other} --clear` frees it")
        await conn.execute("UPDATE cards SET label = $2, updated_at = now() WHERE id = $1", card_id, label)
    old: str | None = row["label"]
    return old


# -- merchants, stores, terminals ------------------------------------------------------------------------
_MERCHANTS = """
SELECT m.id, m.merchant_id, m.name, m.mcc, m.group_code, m.acquirer_id, m.currency, m.fee_rate_bps,
       m.state, m.created_at,
       (SELECT count(*) FROM stores s WHERE s.merchant_id = m.id) AS stores,
       (SELECT count(*) FROM terminals t WHERE t.merchant_id = m.id) AS terminals
FROM merchants m
"""


async def list_merchants(
    conn: Any,
    *,
    state: str | None = None,
    group: str | None = None,
    mcc: str | None = None,
    acquirer: str | None = None,
    name: str | None = None,
    merchant_id: str | None = None,
    after: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> Page:
    """A keyset page of merchants; ``merchant_id`` (a DE42) keeps that one only (a merchant-bound API
    key lists its own merchant)."""
    w = _Where()
    if merchant_id is not None:
        w.add("x.merchant_id = {}", merchant_id)
    if state is not None:
        w.add("x.state = {}", state)
    if group is not None:
        w.add("x.group_code = {}", group)
    if mcc is not None:
        w.add("x.mcc = {}", mcc)
    if acquirer is not None:
        w.add("x.acquirer_id = {}", acquirer)
    if name is not None:
        w.add(
            "x.name ILIKE {}", "%" + name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        )
    return await _page(conn, _MERCHANTS, w.clauses, w.args, after=_int_cursor(after), limit=limit)


async def show_merchant(conn: Any, merchant_id: str) -> dict[str, Any]:
    row = await conn.fetchrow(f"SELECT * FROM ({_MERCHANTS}) x WHERE x.merchant_id = $1", merchant_id)
    if row is None:
        raise CatalogError(f"no merchant {merchant_id} (`payswitch merchant list` shows them)")
    out = dict(row)
    out["payable"] = int(
        await conn.fetchval(
            """SELECT coalesce(sum(credits_posted - debits_posted), 0) FROM accounts
               WHERE merchant_id = $1 AND kind = 'merchant'""",
            out["id"],
        )
    )
    out["store_codes"] = [
        r["code"]
        for r in await conn.fetch("SELECT code FROM stores WHERE merchant_id = $1 ORDER BY code", out["id"])
    ]
    return out


_STORES = """
SELECT s.id, m.merchant_id, s.code, s.name, s.address, s.created_at,
       (SELECT count(*) FROM terminals t WHERE t.store_id = s.id) AS terminals
FROM stores s JOIN merchants m ON m.id = s.merchant_id
"""


async def list_stores(
    conn: Any, *, merchant: str | None = None, after: str | None = None, limit: int = DEFAULT_LIMIT
) -> Page:
    w = _Where()
    if merchant is not None:
        w.add("x.merchant_id = {}", merchant)
    return await _page(conn, _STORES, w.clauses, w.args, after=_int_cursor(after), limit=limit)


async def show_store(conn: Any, merchant_id: str, code: str) -> dict[str, Any]:
    row = await conn.fetchrow(
        f"SELECT * FROM ({_STORES}) x WHERE x.merchant_id = $1 AND x.code = $2", merchant_id, code
    )
    if row is None:
        raise CatalogError(f"no store {code} at merchant {merchant_id} (`payswitch store list` shows them)")
    return dict(row)


_TERMINALS = """
SELECT t.id, t.terminal_id, m.merchant_id, s.code AS store, t.scheme, t.state,
       left(t.tmk_check, 6) AS tmk_check,
       m.state AS merchant_state, t.created_at
FROM terminals t JOIN merchants m ON m.id = t.merchant_id LEFT JOIN stores s ON s.id = t.store_id
"""


async def list_terminals(
    conn: Any,
    *,
    merchant: str | None = None,
    store: str | None = None,
    state: str | None = None,
    scheme: str | None = None,
    after: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> Page:
    w = _Where()
    if merchant is not None:
        w.add("x.merchant_id = {}", merchant)
    if store is not None:
        w.add("x.store = {}", store)
    if state is not None:
        w.add("x.state = {}", state)
    if scheme is not None:
        w.add("x.scheme = {}", scheme)
    return await _page(conn, _TERMINALS, w.clauses, w.args, after=_int_cursor(after), limit=limit)


async def terminal_ref(conn: Any, terminal_id: str, merchant_id: str | None = None) -> int:
    """terminals.id of a DE41 (at ``merchant_id``, which is needed when several merchants use that id)."""
    rows = await conn.fetch(
        """SELECT t.id, m.merchant_id FROM terminals t JOIN merchants m ON m.id = t.merchant_id
           WHERE t.terminal_id = $1 AND ($2::text IS NULL OR m.merchant_id = $2) ORDER BY m.merchant_id""",
        terminal_id,
        merchant_id,
    )
    if not rows:
        where = f" at merchant {merchant_id}" if merchant_id else ""
        raise CatalogError(f"no terminal {terminal_id}{where} (`payswitch terminal list` shows them)")
    if len(rows) > 1:
        names = ", ".join(r["merchant_id"] for r in rows)
        raise CatalogError(f"terminal {terminal_id} is at several merchants ({names}): give --merchant")
    return int(rows[0]["id"])


async def show_terminal(conn: Any, terminal_id: str, merchant_id: str | None = None) -> dict[str, Any]:
    ref = await terminal_ref(conn, terminal_id, merchant_id)
    row = await conn.fetchrow(f"SELECT * FROM ({_TERMINALS}) x WHERE x.id = $1", ref)
    return dict(row)


# -- acquirers -----------------------------------------------------------------------------------------
# An acquirer is an institution id the host knows from any of three places: the acquirers register
# (a name), merchants (acquirer_id, whose payouts it is paid) and links (the DE32/DE33 that may send).
_ACQUIRERS = """
SELECT i.institution_id, coalesce(a.name, '') AS name,
       (SELECT count(*) FROM merchants m WHERE m.acquirer_id = i.institution_id) AS merchants,
       l.profile AS link_profile,
       CASE WHEN l.institution_id IS NULL THEN NULL WHEN l.zak IS NOT NULL THEN 'mac'
            WHEN l.no_mac THEN 'no_mac' ELSE 'undeclared' END AS link_mac,
       a.created_at
FROM (SELECT institution_id FROM acquirers
      UNION SELECT acquirer_id FROM merchants WHERE acquirer_id <> ''
      UNION SELECT institution_id FROM links) i
LEFT JOIN acquirers a ON a.institution_id = i.institution_id
LEFT JOIN links l ON l.institution_id = i.institution_id
"""


async def list_acquirers(conn: Any, *, after: str | None = None, limit: int = DEFAULT_LIMIT) -> Page:
    return await _page(conn, _ACQUIRERS, [], [], key="institution_id", after=after, limit=limit)


async def show_acquirer(conn: Any, institution_id: str) -> dict[str, Any]:
    row = await conn.fetchrow(f"SELECT * FROM ({_ACQUIRERS}) x WHERE x.institution_id = $1", institution_id)
    if row is None:
        raise CatalogError(f"no acquirer {institution_id} (`payswitch acquirer list` shows them)")
    out = dict(row)
    out["merchant_ids"] = [
        r["merchant_id"]
        for r in await conn.fetch(
            "SELECT merchant_id FROM merchants WHERE acquirer_id = $1 ORDER BY merchant_id LIMIT 100",
            institution_id,
        )
    ]
    return out


async def add_acquirer(conn: Any, institution_id: str, name: str) -> bool:
    """Register (or rename) an acquirer; True when it is new."""
    if not re.fullmatch(r"[0-9]{1,11}", institution_id):
        raise CatalogError(f"acquirer {institution_id!r}: an institution id is 1 to 11 digits")
    new: bool = await conn.fetchval(
        """INSERT INTO acquirers (institution_id, name) VALUES ($1, $2)
           ON CONFLICT (institution_id) DO UPDATE SET name = EXCLUDED.name RETURNING xmax = 0""",
        institution_id,
        name,
    )
    return new
