"""Four eyes (issue 18 item 2): changes one operator requests and a supervisor other than them approves.

Kinds (host migration 0024), each made on approval by the host function that makes it without four eyes:

- ``load`` (target ``card:<id>``, params ``amount``): host.admin.admin_load, reference ``approval:<id>``;
- ``unload`` (``card:<id>``, ``amount`` or none for all available, ``to``): host.admin.admin_unload,
  reference ``approval:<id>``;
- ``forfeit`` (``card:<id>``): host.admin.close_card with ``forfeit`` (the balance to breakage income);
- ``limits`` (``card:<id>``, ``limits`` {key: value} and ``clear`` [keys]): host.controls.set_card_limits;
- ``tier`` (``cardholder:<id>``, ``decision`` approve|reject|downgrade, ``to_level``): host.kyc.decide;
- ``merchant_fee`` (``merchant:<DE42>``, ``fee_rate_bps``): ``set_merchant_fee`` below (the rate and its
  version, which clearing prints with every fee).

Loads and unloads need approval above ``console.four_eyes_minor``; the other kinds always
(``needs_approval``). Money moves only through host.admin (double entry); nothing here touches a balance.

Rules: the requester never approves (``decided_by <> requested_by``, also a CHECK in the table); an
approver is a supervisor, an admin or the CLI (``cli:<unix user>``, an admin tool). ``approve`` first
claims the request, so two approvers at once make the change once; a retry of an approved request does
nothing and answers the decided row. A load or unload is keyed by the approval's id, so even a retry after
a crash between the posting and the decision's record moves the money once. Each step writes an audit row
(ops.audit; actions approval.request, approval.approve, approval.reject, approval.expire; outcome
requested, approved, failed, rejected, refused) whose before/after name the requester and the approver;
params hold masked values only (a card's masked PAN, never the PAN).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from host import catalog, controls, kyc
from host.admin import admin_load, admin_unload, close_card, load_refusal
from host.business_day import business_date_now
from host.catalog import CatalogError
from ops import audit
from ops.config import Config, ConsoleConfig
from ops.digits import is_digits, row_number
from ops.money import format_money

KINDS: tuple[str, ...] = ("load", "unload", "limits", "tier", "forfeit", "merchant_fee")
STATES: tuple[str, ...] = ("requested", "approved", "rejected", "failed", "expired")
APPROVER_ROLES: tuple[str, ...] = ("supervisor", "admin", "cli")
TARGET_OF: dict[str, str] = {"load": "card", "unload": "card", "limits": "card", "forfeit": "card",
                             "tier": "cardholder", "merchant_fee": "merchant"}
CLAIM_SECONDS = 300  # a claim older than this (an approver that crashed) may be taken again
LABELS: dict[str, str] = {"load": "Load", "unload": "Unload", "limits": "Limit change", "tier": "Tier change",
                          "forfeit": "Forfeit (close, balance to breakage)", "merchant_fee": "Merchant fee"}

_COLUMNS = """id, kind, target, params::text AS params, requested_by, requested_role, requested_at, reason,
              state, claimed_by, claimed_at, decided_by, decided_role, decided_at, decision_reason,
              result::text AS result"""


class ApprovalError(CatalogError):
    """A request, approval or rejection that may not be made; str() is the one line for the operator."""


class NoApproval(ApprovalError):
    """No approval has that id."""


@dataclass(frozen=True)
class Who:
    """Who acts: their name (an operator's, ``cli:<user>``), role and client address ('' for the CLI)."""

    actor: str
    role: str
    source: str = ""


def needs_approval(kind: str, amount: int | None, config: ConsoleConfig) -> bool:
    """Whether ``kind`` (of ``amount`` minor units, for a load or an unload) needs a second person.

    An unload of everything (``amount`` None) needs approval: its amount is not known in advance."""
    if kind not in KINDS:
        raise ApprovalError(f"kind {kind!r}: one of {', '.join(KINDS)}")
    if kind in ("load", "unload"):
        return amount is None or amount > config.four_eyes_minor
    return True


def _row(r: Any) -> dict[str, Any]:
    d = dict(r)
    d["params"] = json.loads(d["params"]) if d["params"] else {}
    d["result"] = json.loads(d["result"]) if d["result"] else None
    return d


def _target_id(kind: str, target: str) -> str:
    prefix, _, ident = target.partition(":")
    if prefix != TARGET_OF[kind] or not ident:
        raise ApprovalError(f"a {kind} request's target is {TARGET_OF[kind]}:<id>, not {target!r}")
    if prefix != "merchant" and not is_digits(ident):
        raise ApprovalError(f"target {target!r}: {prefix}:<number>")
    return ident


def _reason(reason: str) -> str:
    reason = " ".join(reason.split())
    if not reason:
        raise ApprovalError("reason: say why (it is kept with the request)")
    if len(reason) > 500:
        raise ApprovalError("reason: at most 500 characters")
    return reason


def _amount(value: Any, what: str = "amount") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ApprovalError(f"{what}: a positive amount in minor units")
    return value


async def _check(conn: Any, kind: str, ident: str, params: dict[str, Any]) -> dict[str, Any]:
    """The request's params, checked and reduced to what is kept (plus masked facts for people)."""
    if TARGET_OF[kind] == "card":
        info = await catalog.card_info(conn, int(ident))
        shown = {"pan_masked": info["pan_masked"], "currency": info["currency"]}
        if kind == "load":
            return {"amount": _amount(params.get("amount")), **shown}
        if kind == "unload":
            amount = params.get("amount")
            to = params.get("to")
            if to not in (None, "bank", "desk"):
                raise ApprovalError("to: bank or desk")
            return {"amount": None if amount is None else _amount(amount), "to": to, **shown}
        if kind == "forfeit":
            return {"balance": int(info["balance"]), **shown}
        limits = params.get("limits") or {}
        clear = list(params.get("clear") or [])
        if not isinstance(limits, dict) or not isinstance(clear, list):
            raise ApprovalError("limits: {key: value}; clear: [key, ...]")
        for key in [*limits, *clear]:
            if key not in controls.CARD_KEYS:
                raise ApprovalError(f"limit {key!r}: one of {', '.join(controls.CARD_KEYS)}")
        for key, value in limits.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ApprovalError(f"{controls.LABEL[key]}: a whole number (minor units or a count), >= 0")
        if not limits and not clear:
            raise ApprovalError("a limit change changes or clears at least one limit")
        return {"limits": limits, "clear": sorted(clear), **shown}
    if kind == "tier":
        exists = await conn.fetchval("SELECT kyc_level FROM cardholders WHERE id = $1", int(ident))
        if exists is None:
            raise ApprovalError(f"no cardholder {ident}")
        decision = params.get("decision") or ("approve" if params.get("to_level") == "verified"
                                              else "downgrade")
        if decision not in kyc.DECISIONS:
            raise ApprovalError(f"decision {decision!r}: one of {', '.join(kyc.DECISIONS)}")
        to_level = params.get("to_level")
        if to_level is not None:
            kyc.tier_rank(str(to_level))
        if decision == "downgrade" and to_level is None:
            raise ApprovalError("a downgrade names the level it goes to (to_level)")
        return {"decision": decision, "to_level": to_level, "from_level": str(exists)}
    # merchant_fee
    if not await catalog.merchant_exists(conn, ident):
        raise ApprovalError(f"no merchant {ident} (`payswitch merchant list` shows them)")
    bps = params.get("fee_rate_bps")
    if isinstance(bps, bool) or not isinstance(bps, int) or not 0 <= bps <= 10_000:
        raise ApprovalError("fee_rate_bps: 0 to 10000 basis points")
    old = await conn.fetchval("SELECT fee_rate_bps FROM merchants WHERE merchant_id = $1", ident)
    return {"fee_rate_bps": bps, "from_bps": int(old)}


def describe(row: dict[str, Any]) -> str:
    """One line for people: what the request changes."""
    p, kind = row["params"], row["kind"]
    cur = p.get("currency", "156")
    card = f"card {row['target'].partition(':')[2]} ({p.get('pan_masked', '')})"
    if kind == "load":
        return f"load {format_money(p['amount'], cur)} onto {card}"
    if kind == "unload":
        what = "everything available" if p.get("amount") is None else format_money(p["amount"], cur)
        return f"unload {what} from {card}" + (f" to the {p['to']}" if p.get("to") else "")
    if kind == "forfeit":
        return f"close {card} and forfeit its balance ({format_money(p.get('balance', 0), cur)} when asked)"
    if kind == "limits":
        parts = [f"{controls.LABEL[k]} {_limit_text(k, v, cur)}"
                 for k, v in sorted(p.get("limits", {}).items())]
        parts += [f"clear {controls.LABEL[k]}" for k in p.get("clear", [])]
        return f"{card}: " + ", ".join(parts)
    if kind == "tier":
        to = p.get("to_level") or ("verified" if p["decision"] == "approve" else p.get("from_level"))
        who = row["target"].partition(":")[2]
        return f"cardholder {who}: KYC {p['decision']} ({p.get('from_level')} -> {to})"
    return (f"merchant {row['target'].partition(':')[2]}: fee {p.get('from_bps')} -> {p['fee_rate_bps']} bps")


def _limit_text(key: str, value: int, currency: str) -> str:
    return str(value) if key.endswith("count") else format_money(value, currency)


# -- request ----------------------------------------------------------------------------------------
async def request(conn: Any, kind: str, target: str, params: dict[str, Any], actor: str, role: str,
                  reason: str, source: str = "") -> dict[str, Any]:
    """Record a request (state ``requested``) and its audit row, in one transaction; the new row."""
    if kind not in KINDS:
        raise ApprovalError(f"kind {kind!r}: one of {', '.join(KINDS)}")
    ident = _target_id(kind, target)
    reason = _reason(reason)
    async with conn.transaction():
        kept = await _check(conn, kind, ident, params)
        row = await conn.fetchrow(
            f"""INSERT INTO approvals (kind, target, params, requested_by, requested_role, reason)
                VALUES ($1, $2, $3::jsonb, $4, $5, $6) RETURNING {_COLUMNS}""",
            kind, target, json.dumps(kept), actor, role, reason)
        out = _row(row)
        await audit.record(conn, actor=actor, role=role, source=source, action="approval.request",
                           target=target, before=None, after=_view(out), reason=reason, outcome="requested")
    return out


def _view(row: dict[str, Any]) -> dict[str, Any]:
    """What the audit rows keep of a request: both names, its state, params and result."""
    view = {"approval": row["id"], "kind": row["kind"], "state": row["state"], "params": row["params"],
            "requested_by": row["requested_by"]}
    if row.get("decided_by"):
        view["approved_by" if row["state"] in ("approved", "failed") else "decided_by"] = row["decided_by"]
    if row.get("result") is not None:
        view["result"] = row["result"]
    return view


# -- approve ----------------------------------------------------------------------------------------
async def _claim(conn: Any, approval_id: int, who: Who) -> tuple[str, dict[str, Any]]:
    """("claimed" | "decided" | "busy" | "self" | "role", the row), under the row's lock."""
    async with conn.transaction():
        r = await conn.fetchrow(f"SELECT {_COLUMNS} FROM approvals WHERE id = $1 FOR UPDATE", approval_id)
        if r is None:
            raise NoApproval(f"no approval {approval_id} (`payswitch approval list` shows them)")
        row = _row(r)
        if row["state"] != "requested":
            return "decided", row
        if who.role not in APPROVER_ROLES:
            return "role", row
        if row["requested_by"] == who.actor:
            return "self", row
        now = await conn.fetchval("SELECT now()")
        if (row["claimed_by"] not in (None, who.actor) and row["claimed_at"] is not None
                and now - row["claimed_at"] < dt.timedelta(seconds=CLAIM_SECONDS)):
            return "busy", row
        await conn.execute("UPDATE approvals SET claimed_by = $2, claimed_at = now() WHERE id = $1",
                           approval_id, who.actor)
        row["claimed_by"] = who.actor
        return "claimed", row


async def _refused(conn: Any, row: dict[str, Any], who: Who, why: str) -> None:
    await audit.record(conn, actor=who.actor, role=who.role, source=who.source, action="approval.approve",
                       target=row["target"], before=_view(row), after=None, reason=why, outcome="refused")


async def _decide(conn: Any, approval_id: int, who: Who, state: str, result: dict[str, Any], reason: str,
                  apply: Any = None) -> dict[str, Any]:
    """Record the decision (and, for the kinds made on a connection, make the change first, in the same
    transaction) if the request is still requested and claimed by ``who``; the row as it is then."""
    async with conn.transaction():
        r = await conn.fetchrow(f"SELECT {_COLUMNS} FROM approvals WHERE id = $1 FOR UPDATE", approval_id)
        before = _row(r)
        if before["state"] != "requested" or before["claimed_by"] != who.actor:
            return before  # decided meanwhile (a retry, or a claim taken over after it went stale)
        if apply is not None:
            try:
                async with conn.transaction():  # a savepoint: a refused change leaves the decision
                    result = await apply(conn, before)
            except (CatalogError, kyc.KycError) as exc:
                state, result = "failed", {"error": str(exc)}
        r = await conn.fetchrow(
            f"""UPDATE approvals SET state = $2, decided_by = $3, decided_role = $4, decided_at = now(),
                       decision_reason = $5, result = $6::jsonb WHERE id = $1 RETURNING {_COLUMNS}""",
            approval_id, state, who.actor, who.role, reason, json.dumps(result, default=str))
        after = _row(r)
        await audit.record(conn, actor=who.actor, role=who.role, source=who.source, action="approval.approve",
                           target=after["target"], before=_view(before), after=_view(after),
                           reason=reason or before["reason"], outcome=state)
    return after


async def set_merchant_fee(conn: Any, merchant_id: str, fee_rate_bps: int) -> dict[str, int]:
    """A merchant's flat fee (basis points of each purchase), its version moved on: {from_bps, to_bps,
    version}. Clearing takes the rate at posting and names its version (host.clearing)."""
    if not 0 <= fee_rate_bps <= 10_000:
        raise CatalogError("fee_rate_bps: 0 to 10000 basis points")
    async with conn.transaction():
        old = await conn.fetchrow(
            "SELECT fee_rate_bps, fee_rate_version FROM merchants WHERE merchant_id = $1 FOR UPDATE",
            merchant_id)
        if old is None:
            raise CatalogError(f"no merchant {merchant_id}")
        version = int(old["fee_rate_version"])
        if old["fee_rate_bps"] != fee_rate_bps:
            version += 1
            await conn.execute("UPDATE merchants SET fee_rate_bps = $2, fee_rate_version = $3"
                               " WHERE merchant_id = $1", merchant_id, fee_rate_bps, version)
    return {"from_bps": int(old["fee_rate_bps"]), "to_bps": fee_rate_bps, "version": version}


def _applier(kind: str, who: Who, today: dt.date | None) -> Any:
    """The change of a kind made on a connection (limits, tier, merchant fee), as ``apply(conn, row)``."""

    async def limits(conn: Any, row: dict[str, Any]) -> dict[str, Any]:
        p = row["params"]
        changes = controls.Changes(limits=dict(p.get("limits", {})), clear=frozenset(p.get("clear", [])))
        assert today is not None
        await controls.set_card_limits(conn, int(row["target"].partition(":")[2]), changes, today)
        return {"limits": p.get("limits", {}), "clear": p.get("clear", [])}

    async def tier(conn: Any, row: dict[str, Any]) -> dict[str, Any]:
        p = row["params"]
        d = await kyc.decide(conn, int(row["target"].partition(":")[2]), p["decision"],
                             reason=f"{row['reason']} (requested by {row['requested_by']}, approved by"
                                    f" {who.actor})",
                             actor=who.actor, to_level=p.get("to_level"))
        return {"from_level": d.from_level, "to_level": d.to_level}

    async def fee(conn: Any, row: dict[str, Any]) -> dict[str, Any]:
        return dict(await set_merchant_fee(conn, row["target"].partition(":")[2],
                                           int(row["params"]["fee_rate_bps"])))

    return {"limits": limits, "tier": tier, "merchant_fee": fee}[kind]


async def _money_change(pool: Any, row: dict[str, Any], who: Who) -> tuple[str, dict[str, Any]]:
    """Make a load, unload or forfeit through host.admin: (state, result)."""
    card_id = int(row["target"].partition(":")[2])
    p = row["params"]
    reference = f"approval:{row['id']}"
    try:
        if row["kind"] == "load":
            d = await admin_load(pool, card_id, int(p["amount"]), reference)
            if d.code != "00":
                return "failed", {"error": f"load refused: {await load_refusal(pool, card_id, d)}",
                                  "code": d.code}
            info = await pool.run(catalog.card_info, card_id)
            return "approved", {"loaded": int(p["amount"]), "balance": int(info["balance"]),
                                "currency": info["currency"], "duplicate": d.duplicate,
                                "reference": reference}
        if row["kind"] == "unload":
            u = await admin_unload(pool, card_id, reference, p.get("amount"), to=p.get("to"))
            return "approved", {"unloaded": u.amount, "balance": u.balance, "currency": u.currency,
                                "duplicate": u.duplicate, "reference": reference}
        c = await close_card(pool, card_id, forfeit=True, actor=who.actor)
        return "approved", {"forfeited": c.forfeited, "from_state": c.from_state, "currency": c.currency}
    except CatalogError as exc:
        return "failed", {"error": str(exc)}


async def approve(pool: Any, config: Config, approval_id: int, actor: str, role: str, source: str = "",
                  reason: str = "") -> dict[str, Any]:
    """Approve a request and make its change; the decided row (state ``approved``, or ``failed`` with
    ``result.error`` when the change was refused). Refused (ApprovalError, an audit row ``refused``) for
    the requester, a role that may not approve, or while another approver holds it. A request already
    decided is answered as it is: nothing is done twice."""
    who = Who(actor, role, source)
    claimed: tuple[str, dict[str, Any]] = await pool.run(_claim, approval_id, who)
    status, row = claimed
    if status == "decided":
        return row
    if status != "claimed":
        why = {"self": f"{actor} requested approval {approval_id}: a supervisor other than the requester"
                       " must approve it",
               "role": f"role {role} may not approve (a supervisor or an admin may)",
               "busy": f"approval {approval_id} is being approved by {row['claimed_by']} right now"}[status]
        await pool.run(_refused, row, who, why)
        raise ApprovalError(why)
    if row["kind"] in ("load", "unload", "forfeit"):
        state, result = await _money_change(pool, row, who)
        decided: dict[str, Any] = await pool.run(_decide, approval_id, who, state, result, reason)
        return decided
    today = await pool.run(business_date_now, config) if row["kind"] == "limits" else None
    decided = await pool.run(_decide, approval_id, who, "approved", {}, reason,
                             _applier(row["kind"], who, today))
    return decided


# -- reject, expire ---------------------------------------------------------------------------------
async def reject(conn: Any, approval_id: int, actor: str, role: str, reason: str,
                 source: str = "") -> dict[str, Any]:
    """Reject a request (nothing changes); the decided row. The requester may withdraw their own request
    this way; anyone else must be an approver. A request decided already is refused."""
    reason = _reason(reason)
    async with conn.transaction():
        r = await conn.fetchrow(f"SELECT {_COLUMNS} FROM approvals WHERE id = $1 FOR UPDATE", approval_id)
        if r is None:
            raise NoApproval(f"no approval {approval_id} (`payswitch approval list` shows them)")
        before = _row(r)
        if before["state"] != "requested":
            raise ApprovalError(f"approval {approval_id} is {before['state']} already")
        if before["requested_by"] == actor:
            # withdrawn by its requester: decided_by may not be the requester (the table's CHECK)
            state_by, withdrawn = None, True
        elif role in APPROVER_ROLES:
            state_by, withdrawn = actor, False
        else:
            raise ApprovalError(f"role {role} may not reject (a supervisor or an admin may)")
        r = await conn.fetchrow(
            f"""UPDATE approvals SET state = 'rejected', decided_by = $2, decided_role = $3,
                       decided_at = now(), decision_reason = $4, result = $5::jsonb
                WHERE id = $1 RETURNING {_COLUMNS}""",
            approval_id, state_by, role, reason, json.dumps({"withdrawn": True} if withdrawn else {}))
        after = _row(r)
        view = _view(after)
        view["rejected_by"] = actor
        await audit.record(conn, actor=actor, role=role, source=source, action="approval.reject",
                           target=after["target"], before=_view(before), after=view, reason=reason,
                           outcome="rejected")
    return after


async def expire(conn: Any, older_than: dt.timedelta, actor: str) -> int:
    """Requests waiting longer than ``older_than`` become ``expired`` (each with an audit row); how many."""
    n = 0
    async with conn.transaction():
        rows = await conn.fetch(
            f"""UPDATE approvals SET state = 'expired', decided_at = now(),
                       decision_reason = 'not decided in time'
                WHERE state = 'requested' AND requested_at < now() - $1::interval RETURNING {_COLUMNS}""",
            older_than)
        for r in rows:
            row = _row(r)
            await audit.record(conn, actor=actor, role="system", action="approval.expire",
                               target=row["target"], before=None, after=_view(row),
                               reason="not decided in time", outcome="failed")
            n += 1
    return n


# -- read -------------------------------------------------------------------------------------------
async def show(conn: Any, approval_id: int) -> dict[str, Any]:
    r = await conn.fetchrow(f"SELECT {_COLUMNS} FROM approvals WHERE id = $1", approval_id)
    if r is None:
        raise NoApproval(f"no approval {approval_id} (`payswitch approval list` shows them)")
    return _row(r)


async def list_(
    conn: Any, state: str | None = None, cursor: str | None = None, limit: int = 50, *,
    kind: str | None = None, target: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Requests, newest first, filtered by state, kind and target: (rows, the next page's cursor or None)."""
    if state is not None and state not in STATES:
        raise ApprovalError(f"state {state!r}: one of {', '.join(STATES)}")
    if kind is not None and kind not in KINDS:
        raise ApprovalError(f"kind {kind!r}: one of {', '.join(KINDS)}")
    if cursor is not None and row_number(cursor) is None:
        raise ApprovalError("cursor: the number a previous page gave")
    limit = max(1, min(limit, 500))
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM approvals
            WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR kind = $2)
              AND ($3::text IS NULL OR target = $3) AND ($4::bigint IS NULL OR id < $4)
            ORDER BY id DESC LIMIT $5""",
        state, kind, target, None if cursor is None else int(cursor), limit + 1)
    out = [_row(r) for r in rows[:limit]]
    return out, (str(out[-1]["id"]) if len(rows) > limit else None)
