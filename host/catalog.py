"""Reference data and card records: the database side of the admin commands (asyncpg, one connection).

Nothing here talks to the HSM: callers pass PAN hashes, encrypted PANs and PVVs already computed by
host.keys, so no clear PAN or PIN ever reaches these functions.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from host import card_events
from host.kyc import card_named
from host.rules import TRANSITIONS, yymm
from ops.actor import cli_actor
from ops.digits import is_digits
from ops.money import format_money


class CatalogError(Exception):
    """An operator request that cannot be done; str() is one line saying why."""


@dataclass(frozen=True)
class ProductSpec:
    code: str
    kind: str
    currency: str = "156"
    name: str = ""
    max_balance: int = 500_000
    initial_amount: int = 0
    uses: int | None = None
    per_txn_limit: int = 100_000
    daily_amount_limit: int = 300_000
    daily_count_limit: int = 50
    validity_months: int = 36
    pin_required: bool = True
    pin_scheme: str = "3des"
    allowed_mccs: list[str] | None = None
    allowed_groups: list[str] | None = None
    # KYC (issue 16 item 2): the tier a cardholder needs for a card to be issued to them, and the most a
    # card of each tier holds; None: the PBOC default (TIER_DEFAULTS) capped by max_balance.
    issue_tier: str = "anonymous"
    max_balance_anonymous: int | None = None
    max_balance_named: int | None = None
    max_balance_verified: int | None = None
    # Digital cards (issue 16 item 7): the form of the product's cards, physical or virtual (issued to a
    # cardholder and active at once, no PIN mailer; they pay by payment code, host.payment_codes).
    form: str = "physical"
    # Chip (issue 19, host.chip, host migration 0026): the chip's algorithm and its IMK-AC under the LMK
    # (key type 109: U+32H for 3des, S+32H for sm4) with its check value; a swipe or keyed sale of its
    # cards is declined or flagged; the contactless no-CVM limits (fen).
    chip: str = "none"
    imk_ac: str | None = None
    imk_ac_check: str | None = None
    chip_fallback: str = "decline"
    no_cvm_limit: int = 30_000
    no_cvm_cumulative_limit: int = 100_000
    # Offline sales (issue 19, host.offline): the most a terminal approves offline, fen (0 = never).
    offline_floor_limit: int = 0


# The PBOC prepaid-card rules: an unnamed card holds at most 1,000 yuan, a named one 5,000 yuan.
TIER_DEFAULTS = {"anonymous": 100_000, "named": 500_000, "verified": 500_000}
TIER_COLUMNS = tuple(f"max_balance_{t}" for t in TIER_DEFAULTS)


def tier_caps(spec: ProductSpec) -> dict[str, int]:
    """The product's max_balance_<tier> columns: given values (refused above max_balance, which caps
    them anyway), else the PBOC default capped by max_balance."""
    if spec.issue_tier not in TIER_DEFAULTS:
        raise CatalogError(
            f"product {spec.code}: issue tier {spec.issue_tier!r}: one of {', '.join(TIER_DEFAULTS)}"
        )
    out = {}
    for tier, default in TIER_DEFAULTS.items():
        given: int | None = getattr(spec, f"max_balance_{tier}")
        if given is not None and not 0 < given <= spec.max_balance:
            raise CatalogError(
                f"product {spec.code}: the {tier} maximum balance must be above 0 and at most the"
                " product's max balance"
            )
        out[f"max_balance_{tier}"] = given if given is not None else min(default, spec.max_balance)
    _check_face_value(spec.code, spec.kind, spec.initial_amount, spec.currency, spec.issue_tier, out)
    return out


def _check_face_value(
    code: str, kind: str, face: int, currency: str, issue_tier: str, caps: dict[str, Any]
) -> None:
    """A gift (fixed-amount) card is loaded with its face value at activation, past the top-up rules, so
    the product itself must keep that value within the maximum of the tier its cards are issued at
    (PBOC: an unnamed card holds at most 1,000 yuan unless the product says otherwise)."""
    cap = caps[f"max_balance_{issue_tier}"]
    if kind == "fixed_amount" and face > cap:
        raise CatalogError(
            f"product {code}: the face value {format_money(face, currency)} is above the {issue_tier}"
            f" maximum balance {format_money(cap, currency)}: give --max-balance-{issue_tier}"
            " (or a higher --issue-tier)"
        )


async def partitions(conn: Any) -> int:
    value: int = await conn.fetchval("SELECT partitions FROM ledger_settings")
    return value


async def add_product(conn: Any, spec: ProductSpec, bin_prefix: str, pan_length: int = 19) -> int:
    async with conn.transaction():
        try:
            pid: int = await conn.fetchval(
                """INSERT INTO products (code, name, kind, currency, max_balance, initial_amount, uses,
                       per_txn_limit, daily_amount_limit, daily_count_limit, validity_months, pin_required,
                       pin_scheme, allowed_mccs, allowed_groups)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) RETURNING id""",
                spec.code,
                spec.name,
                spec.kind,
                spec.currency,
                spec.max_balance,
                spec.initial_amount,
                spec.uses,
                spec.per_txn_limit,
                spec.daily_amount_limit,
                spec.daily_count_limit,
                spec.validity_months,
                spec.pin_required,
                spec.pin_scheme,
                spec.allowed_mccs,
                spec.allowed_groups,
            )
            await conn.execute(
                "INSERT INTO bin_ranges (bin, pan_length, product_id) VALUES ($1, $2, $3)",
                bin_prefix,
                pan_length,
                pid,
            )
            await _set_tiers(conn, pid, spec)
            await _set_chip(conn, pid, spec)
            if spec.offline_floor_limit:  # own statement, as the chip options (host.offline)
                await conn.execute(
                    "UPDATE products SET offline_floor_limit = $2 WHERE id = $1",
                    pid,
                    spec.offline_floor_limit,
                )
            if spec.form != "physical":
                await conn.execute("UPDATE products SET form = $2 WHERE id = $1", pid, spec.form)
        except CatalogError:
            raise
        except Exception as exc:
            raise CatalogError(f"product {spec.code}: {_reason(exc)}") from None
        return pid


async def _set_tiers(conn: Any, product_id: int, spec: ProductSpec) -> None:
    """The new product's issue tier and per-tier maximum balances (its own statement: the INSERT above
    keeps the columns every product has had)."""
    caps = tier_caps(spec)
    await conn.execute(
        "UPDATE products SET issue_tier = $2, max_balance_anonymous = $3, max_balance_named = $4,"
        " max_balance_verified = $5 WHERE id = $1",
        product_id,
        spec.issue_tier,
        caps["max_balance_anonymous"],
        caps["max_balance_named"],
        caps["max_balance_verified"],
    )


IMK_AC_TYPE = "109"  # payShield's MK-AC (LMK pair 28-29, variant 1): hsm_sim's KW takes this type
CHIPS = ("none", "3des", "sm4")
CHIP_FALLBACKS = ("decline", "flag")
CHIP_COLUMNS = ("chip", "chip_fallback", "no_cvm_limit", "no_cvm_cumulative_limit")


def check_chip_key(code: str, chip: str, imk_ac: str | None) -> None:
    """A chip product's IMK-AC is a key of the chip's algorithm (U for 3des, S for sm4); none without."""
    if chip not in CHIPS:
        raise CatalogError(f"product {code}: chip {chip!r}: one of {', '.join(CHIPS)}")
    if imk_ac is not None and imk_ac[:1] != {"3des": "U", "sm4": "S"}.get(chip):
        raise CatalogError(f"product {code}: its IMK-AC is not a key for a {chip} chip")


async def _set_chip(conn: Any, product_id: int, spec: ProductSpec) -> None:
    """The new product's chip options (own statement, as the tiers): only when not the defaults."""
    defaults = ProductSpec(code=spec.code, kind=spec.kind)
    if all(getattr(spec, k) == getattr(defaults, k) for k in (*CHIP_COLUMNS, "imk_ac")):
        return
    check_chip_key(spec.code, spec.chip, spec.imk_ac)
    if spec.chip_fallback not in CHIP_FALLBACKS:
        raise CatalogError(f"product {spec.code}: chip fallback: one of {', '.join(CHIP_FALLBACKS)}")
    await conn.execute(
        "UPDATE products SET chip = $2, imk_ac = $3, imk_ac_check = $4, chip_fallback = $5,"
        " no_cvm_limit = $6, no_cvm_cumulative_limit = $7 WHERE id = $1",
        product_id,
        spec.chip,
        spec.imk_ac if spec.chip != "none" else None,
        spec.imk_ac_check if spec.chip != "none" else None,
        spec.chip_fallback,
        spec.no_cvm_limit,
        spec.no_cvm_cumulative_limit,
    )


async def set_chip_key(conn: Any, code: str, imk_ac: str, check_value: str) -> str:
    """`product chip-key`: the product's IMK-AC (formed in the HSM from clear components), replacing any
    before; returns the product's chip algorithm. A product without a chip gets no key."""
    async with conn.transaction():
        chip = await conn.fetchval("SELECT chip FROM products WHERE code = $1 FOR UPDATE", code)
        if chip is None:
            raise CatalogError(f"no product {code} (`payswitch product list` shows them)")
        if chip == "none":
            raise CatalogError(f"product {code} has no chip: give it one first (product update --chip)")
        check_chip_key(code, chip, imk_ac)
        await conn.execute(
            "UPDATE products SET imk_ac = $2, imk_ac_check = $3 WHERE code = $1", code, imk_ac, check_value
        )
    return str(chip)


async def product(conn: Any, code: str) -> dict[str, Any]:
    row = await conn.fetchrow(
        """SELECT p.*, b.bin, b.pan_length FROM products p LEFT JOIN bin_ranges b ON b.product_id = p.id
           WHERE p.code = $1 ORDER BY b.bin LIMIT 1""",
        code,
    )
    if row is None:
        raise CatalogError(f"no product {code!r}")
    return dict(row)


async def list_products(conn: Any) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT p.code, p.kind, p.currency, p.max_balance, p.per_txn_limit, p.pin_required,
                  (SELECT string_agg(bin, ',') FROM bin_ranges WHERE product_id = p.id) AS bins,
                  (SELECT count(*) FROM cards WHERE product_id = p.id) AS cards
           FROM products p ORDER BY p.code"""
    )
    return [dict(r) for r in rows]


async def add_merchant(
    conn: Any,
    merchant_id: str,
    name: str,
    mcc: str,
    group: str | None = None,
    acquirer_id: str = "",
    currency: str = "156",
    fee_rate_bps: int = 0,
) -> int:
    """A merchant and its payable sub-accounts, one per ledger partition."""
    async with conn.transaction():
        try:
            if group is not None:
                await conn.execute(
                    "INSERT INTO merchant_groups (code) VALUES ($1) ON CONFLICT DO NOTHING", group
                )
            await conn.execute("INSERT INTO mcc (code) VALUES ($1) ON CONFLICT DO NOTHING", mcc)
            mid: int = await conn.fetchval(
                """INSERT INTO merchants
                       (merchant_id, name, mcc, group_code, acquirer_id, currency, fee_rate_bps)
                   VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id""",
                merchant_id,
                name,
                mcc,
                group,
                acquirer_id,
                currency,
                fee_rate_bps,
            )
            await conn.execute(
                """INSERT INTO accounts (kind, currency, part, merchant_id, no_overdraft)
                   SELECT 'merchant', $1, p, $2, false FROM generate_series(0, $3 - 1) AS p""",
                currency,
                mid,
                await partitions(conn),
            )
        except Exception as exc:
            raise CatalogError(f"merchant {merchant_id}: {_reason(exc)}") from None
        return mid


async def merchant_ref(conn: Any, merchant_id: str) -> int:
    mid = await conn.fetchval("SELECT id FROM merchants WHERE merchant_id = $1", merchant_id)
    if mid is None:
        raise CatalogError(f"no merchant {merchant_id!r}")
    return int(mid)


async def add_store(conn: Any, merchant_id: str, code: str, name: str = "", address: str = "") -> int:
    mref = await merchant_ref(conn, merchant_id)
    try:
        sid: int = await conn.fetchval(
            "INSERT INTO stores (merchant_id, code, name, address) VALUES ($1, $2, $3, $4) RETURNING id",
            mref,
            code,
            name,
            address,
        )
    except Exception as exc:
        raise CatalogError(f"store {code}: {_reason(exc)}") from None
    return sid


async def add_terminal(
    conn: Any,
    terminal_id: str,
    merchant_id: str,
    scheme: str,
    tmk: str,
    tmk_check: str,
    store: str | None = None,
) -> int:
    mref = await merchant_ref(conn, merchant_id)
    store_ref = None
    if store is not None:
        store_ref = await conn.fetchval(
            "SELECT id FROM stores WHERE merchant_id = $1 AND code = $2", mref, store
        )
        if store_ref is None:
            raise CatalogError(f"no store {store!r} at merchant {merchant_id!r}")
    try:
        tid: int = await conn.fetchval(
            """INSERT INTO terminals (terminal_id, merchant_id, store_id, scheme, tmk, tmk_check)
               VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
            terminal_id,
            mref,
            store_ref,
            scheme,
            tmk,
            tmk_check,
        )
    except Exception as exc:
        raise CatalogError(f"terminal {terminal_id}: {_reason(exc)}") from None
    return tid


@dataclass(frozen=True)
class NewCard:
    pan_hash: str
    pan_enc: str
    pan_masked: str
    pvv: str
    part: int
    pin_lmk: str | None = None  # the PIN under the LMK (JA / BA): a renewal keeps the PIN (host.replace)


def expiry_for(today: dt.date, validity_months: int) -> str:
    months = today.year * 12 + today.month - 1 + validity_months
    return f"{(months // 12) % 100:02d}{months % 12 + 1:02d}"


async def insert_cards(
    conn: Any,
    product_code: str,
    cards: list[NewCard],
    batch: str = "",
    state: str = "inventory",
    today: dt.date | None = None,
    actor: str | None = None,
    form: str = "physical",
) -> list[int]:
    """Card rows and their accounts in one transaction. Fixed-amount cards are loaded at activation.
    Each card's issue is its first card_events row (NULL -> ``state``), by ``actor`` (default: the CLI's).
    ``form``: physical or virtual (cards.form)."""
    p = await product(conn, product_code)
    expiry = expiry_for(today or dt.datetime.now(dt.UTC).date(), p["validity_months"])
    async with conn.transaction():
        accounts = await conn.fetch(
            """INSERT INTO accounts (kind, currency, part, no_overdraft)
               SELECT 'card', $1, part, true FROM unnest($2::smallint[]) WITH ORDINALITY AS u(part, n)
               ORDER BY n RETURNING id""",
            p["currency"],
            [c.part for c in cards],
        )
        try:
            rows = await conn.fetch(
                """INSERT INTO cards (product_id, account_id, pan_hash, pan_enc, pan_masked, expiry, pvv,
                       state,
                       part, uses_left, issue_batch, pin_lmk, form)
                   SELECT $1, a, h, e, m, $2, v, $3, pt, $4, $5, pl, $13
                   FROM unnest($6::bigint[], $7::text[], $8::text[], $9::text[], $10::text[], $11::smallint[],
                               $12::text[])
                        AS u(a, h, e, m, v, pt, pl)
                   RETURNING id""",
                p["id"],
                expiry,
                state,
                p["uses"],
                batch,
                [a["id"] for a in accounts],
                [c.pan_hash for c in cards],
                [c.pan_enc for c in cards],
                [c.pan_masked for c in cards],
                [c.pvv for c in cards],
                [c.part for c in cards],
                [c.pin_lmk for c in cards],
                form,
            )
        except Exception as exc:
            raise CatalogError(f"cards: {_reason(exc)}") from None
        await conn.execute(  # the inventory audit's first event of each card (host.card_events)
            "INSERT INTO card_events (card_id, from_state, to_state, action, actor)"
            " SELECT unnest($1::bigint[]), NULL, $2, 'issue', $3",
            [r["id"] for r in rows],
            state,
            actor or cli_actor(),
        )
    return [r["id"] for r in rows]


async def card_by_hash(conn: Any, pan_hash: str) -> int:
    cid = await conn.fetchval("SELECT id FROM cards WHERE pan_hash = $1", pan_hash)
    if cid is None:
        raise CatalogError("no card with that PAN")
    return int(cid)


async def card_info(conn: Any, card_id: int) -> dict[str, Any]:
    row = await conn.fetchrow(
        """SELECT c.id, c.pan_masked, c.expiry, c.state, c.part, c.uses_left, c.pin_tries, c.issue_batch,
                  c.issued_at, p.code AS product, p.kind, a.id AS account_id, a.currency,
                  a.credits_posted - a.debits_posted AS balance,
                  a.credits_posted - a.debits_posted - a.debits_pending AS available,
                  a.debits_pending AS held
           FROM cards c JOIN products p ON p.id = c.product_id JOIN accounts a ON a.id = c.account_id
           WHERE c.id = $1""",
        card_id,
    )
    if row is None:
        raise CatalogError(f"no card {card_id}")
    return dict(row)


# What an operator's `activate` / `unfreeze` asks of the card before it becomes active: the state it
# must be in, the words when it is not, and that it is not past its expiry month (it would only answer
# 54). Checked under the card's row lock, in the transaction that changes the state.
_MAKES_ACTIVE = {
    "activate": (
        "inventory", "card {card} is {old}: only an inventory card can be activated", "be activated"
    ),
    "unfreeze": ("frozen", "card {card} is {old}, not frozen", "be unfrozen"),
}


# The card_events action of a state change with no named ``action`` (host.card_events).
_EVENT_OF = {"active": "activate", "frozen": "freeze", "lost": "lost", "stolen": "stolen",
             "expired": "expire", "closed": "close"}


async def set_card_state(
    conn: Any,
    card_id: int,
    new_state: str,
    *,
    action: str | None = None,
    today: dt.date | None = None,
    actor: str | None = None,
    reason: str = "",
) -> tuple[str, str]:
    """Move a card along its state machine (host.rules.TRANSITIONS); returns (old, new).

    ``action`` ("activate" or "unfreeze", with the business date ``today``): the operator's command,
    whose preconditions (_MAKES_ACTIVE) are checked under the same row lock. The change is a
    card_events row in the same transaction, by ``actor`` (default: the CLI's) with ``reason``.
    An unnamed card (host.kyc.card_named: no named or verified cardholder) cannot be reported lost or
    stolen (PBOC: an unnamed card cannot be reported lost or replaced; nobody can prove it is theirs);
    a named one can, even while its cardholder is under AML review."""
    async with conn.transaction():
        row = await conn.fetchrow("SELECT state, expiry FROM cards WHERE id = $1 FOR UPDATE", card_id)
        if row is None:
            raise CatalogError(f"no card {card_id}")
        old = row["state"]
        if action is not None:
            required, refusal, verb = _MAKES_ACTIVE[action]
            if old != required:
                raise CatalogError(refusal.format(card=card_id, old=old))
            if today is not None and row["expiry"] < yymm(today):
                raise CatalogError(f"card {card_id} is past its expiry {row['expiry']}: it cannot {verb}")
        if new_state not in TRANSITIONS[old]:
            raise CatalogError(f"card {card_id} is {old}: cannot become {new_state}")
        if new_state in ("lost", "stolen") and not await card_named(conn, card_id):
            raise CatalogError(
                f"card {card_id} is anonymous (no named cardholder): an unnamed card cannot be reported"
                f" {new_state} or replaced; freeze it instead"
            )
        await conn.execute(
            "UPDATE cards SET state = $2, updated_at = now() WHERE id = $1", card_id, new_state
        )
        await card_events.record(
            conn, card_id, old, new_state, action or _EVENT_OF[new_state], actor=actor, reason=reason
        )
    return old, new_state


async def reset_pin_tries(conn: Any, card_id: int) -> int:
    """After 75 (PIN tries exceeded) only an operator gives the card its tries back; returns the old count."""
    old = await conn.fetchval("SELECT pin_tries FROM cards WHERE id = $1 FOR UPDATE", card_id)
    if old is None:
        raise CatalogError(f"no card {card_id}")
    await conn.execute("UPDATE cards SET pin_tries = 0, updated_at = now() WHERE id = $1", card_id)
    return int(old)


# A card's history: its requests (auth_requests), the hold expiries and the balance a replacement
# brought it, newest first. `src` and `key` make the order total (two rows may share a time), so a page
# ends at a cursor (the last row's time, src and key) and the next starts strictly after it.
_HISTORY = """
SELECT r.received_at AS at, r.txn, r.mti, r.amount, r.response_code AS rc, r.auth_id, r.rrn,
       r.terminal_id, r.merchant_id, t.id AS posting_id, t.phase, r.reason, 0 AS src, r.key,
       r.reference,  -- a programme load's funding reference (the API's loads)
       (SELECT f.flags FROM auth_flags f WHERE f.key = r.key) AS flags  -- chip_fallback (host.chip)
FROM auth_requests r LEFT JOIN transfers t ON t.key = r.key
WHERE r.card_id = $1
UNION ALL
SELECT t.created_at, t.code, '', t.amount, '00', '', '', '', '', t.id, t.phase, NULL, 1, t.key, NULL,
       NULL::text[]
FROM transfers t WHERE t.card_id = $1 AND t.code = 'expiry'
UNION ALL  -- the new card of a replacement: the balance it received (host.replace)
SELECT t.created_at, t.code, '', t.amount, '00', '', '', '', '', t.id, t.phase, NULL, 2, t.key, NULL,
       NULL::text[]
FROM transfers t JOIN cards n ON n.account_id = t.credit_account_id
WHERE n.id = $1 AND t.code = 'replacement'
"""


def _history_cursor(row: Any) -> str:
    raw = json.dumps([row["at"].isoformat(), row["src"], row["key"]], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _history_after(cursor: str) -> tuple[dt.datetime, int, str]:
    try:
        at, src, key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        when = dt.datetime.fromisoformat(at)
        if when.tzinfo is None or src not in (0, 1, 2) or not isinstance(key, str):
            raise ValueError(cursor)
        return when, src, key
    except (ValueError, TypeError, OverflowError) as exc:
        raise CatalogError("that history cursor is not one a page of this history gave") from exc


async def card_history_page(
    conn: Any,
    card_id: int,
    limit: int = 100,
    *,
    after: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    types: list[str] | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the card's history, newest first: at most ``limit`` rows after the cursor ``after``
    (a page's next cursor), received at or after ``since`` and before ``until``, of the ``types``
    (auth_requests.txn, or ``expiry`` / ``replacement``) when given; and the next page's cursor (None:
    this is the last)."""
    where: list[str] = ["true"]
    args: list[Any] = [card_id]
    if after is not None:
        at, src, key = _history_after(after)
        args += [at, src, key]
        where.append(f"(x.at, x.src, x.key) < (${len(args) - 2}, ${len(args) - 1}, ${len(args)})")
    if since is not None:
        args.append(since)
        where.append(f"x.at >= ${len(args)}")
    if until is not None:
        args.append(until)
        where.append(f"x.at < ${len(args)}")
    if types:
        args.append(list(types))
        where.append(f"x.txn = ANY(${len(args)}::text[])")
    rows = [
        dict(r)
        for r in await conn.fetch(
            f"SELECT * FROM ({_HISTORY}) x WHERE {' AND '.join(where)}"
            f" ORDER BY x.at DESC, x.src DESC, x.key DESC LIMIT {int(limit) + 1}",
            *args,
        )
    ]
    nxt = _history_cursor(rows[limit - 1]) if len(rows) > limit else None
    for r in rows:
        del r["src"], r["key"]
    return rows[:limit], nxt


async def card_history(conn: Any, card_id: int, limit: int = 100) -> list[dict[str, Any]]:
    """The newest ``limit`` rows of the card's history (`card history`; pages: card_history_page)."""
    rows, _ = await card_history_page(conn, card_id, limit)
    return rows


async def get_key(conn: Any, name: str) -> tuple[str, str] | None:
    row = await conn.fetchrow("SELECT key_lmk, check_value FROM host_keys WHERE name = $1", name)
    return None if row is None else (row["key_lmk"], row["check_value"])


async def put_key(conn: Any, name: str, key_lmk: str, check_value: str) -> None:
    await conn.execute(
        "INSERT INTO host_keys (name, key_lmk, check_value) VALUES ($1, $2, $3)"
        " ON CONFLICT (name) DO NOTHING",
        name,
        key_lmk,
        check_value,
    )


async def set_link(
    conn: Any,
    institution_id: str,
    profile: str,
    zmk: str | None = None,
    zpk: str | None = None,
    zpk_check: str | None = None,
    zak: str | None = None,
    no_mac: bool | None = None,
) -> None:
    """Create or change a link; a key given as None keeps the stored one ("" removes the ZAK).

    A link has a MAC key or is declared without one (``no_mac``), never neither: the host refuses an
    undeclared link without a ZAK at request time, so saving one would only make a link that answers
    03. A ZAK clears the declaration; ``no_mac=True`` removes the ZAK."""
    if no_mac and zak:
        raise CatalogError(f"link {institution_id}: --no-mac and --zak exclude each other")
    if no_mac:
        zak = ""
    elif zak:
        no_mac = False
    async with conn.transaction():
        declared = await conn.fetchval(
            """INSERT INTO links (institution_id, profile, zmk, zpk, zpk_check, zak, no_mac)
               VALUES ($1, $2, $3, $4, $5, nullif($6, ''), coalesce($7, false))
               ON CONFLICT (institution_id) DO UPDATE SET profile = EXCLUDED.profile,
                   zmk = coalesce(EXCLUDED.zmk, links.zmk), zpk = coalesce(EXCLUDED.zpk, links.zpk),
                   zpk_check = coalesce(EXCLUDED.zpk_check, links.zpk_check),
                   zak = CASE WHEN $6::text IS NULL THEN links.zak ELSE nullif($6, '') END,
                   no_mac = coalesce($7, links.no_mac),
                   updated_at = now()
               RETURNING zak IS NOT NULL OR no_mac""",
            institution_id,
            profile,
            zmk,
            zpk,
            zpk_check,
            zak,
            no_mac,
        )
        if not declared:  # raised inside the transaction: nothing is saved
            raise CatalogError(
                f"link {institution_id} has no MAC key: give --zak, or --no-mac for a link without DE128"
            )


async def catalog_version(conn: Any) -> int:
    """host_catalog.version: moves with every change of merchants, terminals, products (migration 0009)."""
    value = await conn.fetchval("SELECT version FROM host_catalog WHERE id")
    return int(value or 0)


# -- existence checks and updates (issue 15: product update, merchant/terminal state, store update) ------
async def product_exists(conn: Any, code: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM products WHERE code = $1", code))


async def merchant_exists(conn: Any, merchant_id: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM merchants WHERE merchant_id = $1", merchant_id))


async def store_exists(conn: Any, merchant_id: str, code: str) -> bool:
    return bool(
        await conn.fetchval(
            """SELECT 1 FROM stores s JOIN merchants m ON m.id = s.merchant_id
               WHERE m.merchant_id = $1 AND s.code = $2""",
            merchant_id,
            code,
        )
    )


async def terminal_exists(conn: Any, merchant_id: str, terminal_id: str) -> bool:
    return bool(
        await conn.fetchval(
            """SELECT 1 FROM terminals t JOIN merchants m ON m.id = t.merchant_id
               WHERE m.merchant_id = $1 AND t.terminal_id = $2""",
            merchant_id,
            terminal_id,
        )
    )


async def producer_exists(conn: Any, name: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM card_producers WHERE name = $1", name))


# What `product update` may change; the rest (code, kind, currency, BIN, PIN scheme) is fixed at issue.
PRODUCT_UPDATABLE = (
    "name",
    "max_balance",
    "per_txn_limit",
    "daily_amount_limit",
    "daily_count_limit",
    "validity_months",
    "pin_required",
    "allowed_mccs",
    "allowed_groups",
    "issue_tier",
    "max_balance_anonymous",
    "max_balance_named",
    "max_balance_verified",
    "form",  # of the cards issued from now on
    # chip (host.chip): a new algorithm comes with its new IMK-AC (the CLI generates it in the HSM)
    "chip",
    "imk_ac",
    "imk_ac_check",
    "chip_fallback",
    "no_cvm_limit",
    "no_cvm_cumulative_limit",
    "offline_floor_limit",  # offline sales (host.offline): the terminals learn it at sign-on
)


async def update_product(conn: Any, code: str, changes: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Change a product's limits and restrictions; returns {column: (old, new)} of what changed.

    The host reads a card's product with every posting batch (host/ledger.py, _READ_SQL), so a change
    is in force from the next request of a running host. ``allowed_mccs``/``allowed_groups`` of [] mean
    "any" (NULL). validity_months applies to cards issued from now on (an expiry is printed on a card)."""
    unknown = sorted(set(changes) - set(PRODUCT_UPDATABLE))
    if unknown:
        raise CatalogError(f"product {code}: cannot change {', '.join(unknown)}")
    values = {k: (v or None) if k in ("allowed_mccs", "allowed_groups") else v for k, v in changes.items()}
    for mcc in values.get("allowed_mccs") or []:
        if not (len(mcc) == 4 and is_digits(mcc)):
            raise CatalogError(f"product {code}: MCC {mcc!r} is 4 digits")
    async with conn.transaction():
        row = await conn.fetchrow("SELECT * FROM products WHERE code = $1 FOR UPDATE", code)
        if row is None:
            raise CatalogError(f"no product {code} (`payswitch product list` shows them)")
        _check_tier_changes(code, row, values)
        if "chip" in values or "imk_ac" in values:
            check_chip_key(code, values.get("chip", row["chip"]), values.get("imk_ac", row["imk_ac"]))
        if values.get("chip_fallback", "decline") not in CHIP_FALLBACKS:
            raise CatalogError(f"product {code}: chip fallback: one of {', '.join(CHIP_FALLBACKS)}")
        changed = {k: (row[k], v) for k, v in values.items() if row[k] != v}
        if not changed:
            return {}
        sets = ", ".join(f"{k} = ${i + 2}" for i, k in enumerate(changed))
        try:
            await conn.execute(
                f"UPDATE products SET {sets} WHERE code = $1", code, *(new for _old, new in changed.values())
            )
        except Exception as exc:
            raise CatalogError(f"product {code}: {_reason(exc)}") from None
    return changed


def _check_tier_changes(code: str, row: Any, values: dict[str, Any]) -> None:
    """A KYC change of `product update`: a known issue tier, a tier maximum above 0 and not above the
    product's max balance (as it will be after the update)."""
    tier = values.get("issue_tier")
    if tier is not None and tier not in TIER_DEFAULTS:
        raise CatalogError(f"product {code}: issue tier {tier!r}: one of {', '.join(TIER_DEFAULTS)}")
    cap = values.get("max_balance", row["max_balance"])
    for col in TIER_COLUMNS:
        if col in values and not 0 < values[col] <= cap:
            raise CatalogError(
                f"product {code}: --{col.replace('_', '-')} must be above 0 and at most the product's"
                " max balance"
            )
    after = {col: values.get(col, row[col]) for col in TIER_COLUMNS}
    tier = values.get("issue_tier", row["issue_tier"])
    _check_face_value(code, row["kind"], row["initial_amount"], row["currency"], tier, after)


# Merchant states: active <-> suspended, either -> closed; a closed merchant never reopens. The host
# answers a purchase at a merchant that is not active 03 (host/ledger.py), the switch refuses its
# terminals' sign-on (58).
MERCHANT_TRANSITIONS: dict[str, tuple[str, ...]] = {
    "active": ("suspended", "closed"),
    "suspended": ("active", "closed"),
    "closed": (),
}


async def set_merchant_state(conn: Any, merchant_id: str, new_state: str) -> tuple[str, str]:
    async with conn.transaction():
        old = await conn.fetchval(
            "SELECT state FROM merchants WHERE merchant_id = $1 FOR UPDATE", merchant_id
        )
        if old is None:
            raise CatalogError(f"no merchant {merchant_id} (`payswitch merchant list` shows them)")
        if old == new_state:
            raise CatalogError(f"merchant {merchant_id} is {old} already")
        if new_state not in MERCHANT_TRANSITIONS[old]:
            why = "a closed merchant never reopens" if old == "closed" else f"it is {old}"
            raise CatalogError(f"merchant {merchant_id} cannot become {new_state}: {why}")
        await conn.execute("UPDATE merchants SET state = $2 WHERE merchant_id = $1", merchant_id, new_state)
    return old, new_state


async def set_terminal_state(conn: Any, terminal_ref: int, new_state: str) -> tuple[str, str]:
    """``terminal_ref`` is terminals.id (host.directory.terminal_ref finds it from DE41 [+ DE42])."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT terminal_id, state FROM terminals WHERE id = $1 FOR UPDATE", terminal_ref
        )
        if row is None:
            raise CatalogError(f"no terminal {terminal_ref}")
        if row["state"] == new_state:
            raise CatalogError(f"terminal {row['terminal_id']} is {new_state} already")
        await conn.execute("UPDATE terminals SET state = $2 WHERE id = $1", terminal_ref, new_state)
    return row["state"], new_state


async def update_store(
    conn: Any, merchant_id: str, code: str, name: str | None = None, address: str | None = None
) -> dict[str, Any]:
    """Rename a store or change its address (None keeps the value); returns the store row."""
    mref = await merchant_ref(conn, merchant_id)
    row = await conn.fetchrow(
        """UPDATE stores SET name = coalesce($3, name), address = coalesce($4, address)
           WHERE merchant_id = $1 AND code = $2 RETURNING id, code, name, address""",
        mref,
        code,
        name,
        address,
    )
    if row is None:
        raise CatalogError(f"no store {code} at merchant {merchant_id} (`payswitch store list` shows them)")
    return dict(row)


def _reason(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text


async def decided(conn: Any, key: str) -> dict[str, Any] | None:
    """How the host decided the request under ``key`` (host.model.request_key): its response code, the
    reason kept with a decline (host.rules.REASONS) and the card's available balance now, or None."""
    row = await conn.fetchrow(
        """SELECT r.response_code, r.reason, p.currency,
                  a.credits_posted - a.debits_posted - a.debits_pending AS available
           FROM auth_requests r LEFT JOIN cards c ON c.id = r.card_id
           LEFT JOIN accounts a ON a.id = c.account_id LEFT JOIN products p ON p.id = c.product_id
           WHERE r.key = $1""",
        key,
    )
    return None if row is None else dict(row)
