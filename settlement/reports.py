"""Run outputs, rebuilt from the database: per-merchant CSV and HTML, a store CSV, the payout file.

Written to ``<output_dir>/run_<id>/``, each file under a temporary name then renamed, so a reader
never sees half a report and writing them again gives the same bytes:

- ``payouts_<id>.csv``: the payout instruction file, one line per merchant (reference, account, amount;
  payee type ``merchant``) and one per cash-out to a cardholder (the unload's reference, no merchant,
  ``settlement.cashouts.payee``): a **cardholder payout** to their bank account (payee type
  ``cardholder_bank_account``, bank name, masked account, holder's name and the account number as the
  host stores it: HSM ciphertext that the bank gateway's HSM decrypts; no clear account number in any
  file) or one paid at the programme's desk (``cardholder_desk``, bank columns empty);
- ``cashouts_<id>.csv``: the run's cash-outs (reference, card, masked PAN, currency, amount, unloaded at,
  and the same payee columns), when it paid any;
- ``stores_<id>.csv``: every merchant x store x business date paid in the run;
- ``merchant_<merchant>.csv`` and ``.html``: that merchant's stores and dates with totals, and a bar
  chart (inline SVG) of net per store.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from host import chain as ledger_chain
from ops.audit import GENESIS
from ops.files import write_text_atomic
from ops.localtime import format_local
from ops.money import format_amount as money  # minor units for people; files keep integers
from settlement.cashouts import PaidCashOut, payee_type, run_cash_outs

# Appended after the payout file's first five columns (readers of those keep working): empty on a
# merchant's line and on a cash-out paid at the desk.
PAYEE_COLUMNS = ["payee_type", "bank_name", "account_masked", "account_holder", "account_enc"]


def _payee_cells(c: PaidCashOut) -> list[Any]:
    return [payee_type(c.payee), c.bank_name or "", c.account_masked or "", c.account_holder or "",
            c.account_enc or ""]


@dataclass(frozen=True)
class StoreLine:
    merchant_id: str
    store_id: str
    business_date: str
    txn_count: int
    sales: int
    returns: int
    topups: int  # cash top-ups taken at the merchant's terminals
    fee: int

    @property
    def gross(self) -> int:
        return self.sales - self.returns - self.topups

    @property
    def net(self) -> int:
        return self.gross - self.fee


def safe_name(merchant_id: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9_-]", "_", merchant_id)
    if clean != merchant_id:
        clean += "-" + hashlib.sha256(merchant_id.encode()).hexdigest()[:8]
    return clean


def _csv(rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerows(rows)
    return buf.getvalue()


async def write_run_outputs(
    conn: Any, run_id: int, output_dir: str | Path, *, timezone: str = "UTC"
) -> list[Path]:
    """The run's files; ``timezone`` (clearing.timezone) is the zone the HTML shows the run's time in."""
    run = await conn.fetchrow("SELECT id, as_of, started_at FROM settlement_runs WHERE id = $1", run_id)
    if run is None:
        raise LookupError(f"no settlement run {run_id}")
    payouts = await conn.fetch(
        "SELECT id, run_id, merchant_id, payout_account, reference, gross, fee, net FROM settlement_payouts "
        "WHERE run_id = $1 ORDER BY merchant_id", run_id)
    lines = [
        StoreLine(r["merchant_id"], r["store_id"], str(r["business_date"]), r["txn_count"], r["sales"],
                  r["returns"], r["topups"], r["fee"])
        for r in await conn.fetch(
            "SELECT merchant_id, store_id, business_date, sum(txn_count)::bigint AS txn_count, "
            "sum(sales)::bigint AS sales, sum(returns)::bigint AS returns, sum(topups)::bigint AS topups, "
            "sum(fee)::bigint AS fee "
            "FROM settlement_accruals WHERE run_id = $1 "
            "GROUP BY merchant_id, store_id, business_date ORDER BY merchant_id, store_id, business_date",
            run_id)
    ]
    heads = await chain_heads(conn, run["started_at"])
    folder = Path(output_dir) / f"run_{run_id}"
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    payout_rows: list[list[Any]] = [
        ["reference", "merchant_id", "payout_account", "amount", "value_date", *PAYEE_COLUMNS]]
    payout_rows += [[p["reference"], p["merchant_id"], p["payout_account"], p["net"], run["as_of"],
                     "merchant", "", "", "", ""] for p in payouts]
    cash_outs = await run_cash_outs(conn, run_id)  # to cardholders: the unload's reference, no merchant
    payout_rows += [[c.reference, "", c.payout_account, c.amount, run["as_of"], *_payee_cells(c)]
                    for c in cash_outs]
    written.append(folder / f"payouts_{run_id}.csv")
    write_text_atomic(written[-1], _csv(payout_rows))
    if cash_outs:
        written.append(folder / f"cashouts_{run_id}.csv")
        write_text_atomic(written[-1], _csv(
            [["reference", "card_id", "pan_masked", "currency", "amount", "unloaded_at", *PAYEE_COLUMNS]]
            + [[c.reference, c.card_id, c.pan_masked, c.currency, c.amount, c.unloaded_at.isoformat(),
                *_payee_cells(c)] for c in cash_outs]))

    header = ["merchant_id", "store_id", "business_date", "txn_count", "sales", "returns", "topups", "gross",
              "fee", "net"]
    written.append(folder / f"stores_{run_id}.csv")
    write_text_atomic(written[-1], _csv([header] + [_row(x) for x in lines]))

    by_merchant: dict[str, list[StoreLine]] = defaultdict(list)
    for x in lines:
        by_merchant[x.merchant_id].append(x)
    for p in payouts:
        mine = by_merchant[p["merchant_id"]]
        stem = folder / f"merchant_{safe_name(p['merchant_id'])}"
        totals = _totals(p["merchant_id"], "TOTAL", mine)
        write_text_atomic(stem.with_suffix(".csv"), _csv([header] + [_row(x) for x in mine] + [_row(totals)]))
        ran = format_local(run["started_at"], timezone)
        write_text_atomic(stem.with_suffix(".html"),
                          merchant_html(p, run["as_of"], mine, totals, ran=ran, heads=heads))
        written += [stem.with_suffix(".csv"), stem.with_suffix(".html")]
    return written


async def chain_heads(conn: Any, at: Any) -> list[tuple[str, str]]:
    """The chain heads as of the run's start (issue 18 item 4): each ledger chain's last batch
    (host.chain) and the audit chain's last row (ops.audit) committed by then, as (label, hash) lines.
    Printed in the merchant's report, so a later edit of the ledger or of the audit contradicts a
    document already sent out; taken as of the run's time, so writing the report again gives the same
    bytes."""
    out = [(f"ledger chain {h.chain}, batch {h.seq}", h.hash) for h in await ledger_chain.heads(conn, at)]
    audit = await conn.fetchrow("SELECT id, hash FROM audit_log WHERE at <= $1 ORDER BY id DESC LIMIT 1", at)
    out.append((f"audit row {audit['id']}", str(audit["hash"])) if audit is not None
               else ("audit row 0", GENESIS))
    return out


def report_files(run_id: int, merchant_ids: list[str], *, cash_outs: bool) -> list[str]:
    """The names of a run's files (``write_run_outputs`` writes these, in its folder ``run_<id>``): what
    the outbox's ``settlement.report_ready`` lists."""
    names = [f"payouts_{run_id}.csv"] + ([f"cashouts_{run_id}.csv"] if cash_outs else [])
    names.append(f"stores_{run_id}.csv")
    for m in sorted(merchant_ids):
        names += [f"merchant_{safe_name(m)}.csv", f"merchant_{safe_name(m)}.html"]
    return names


def _dates(lines: list[StoreLine]) -> str:
    """The business dates a payout covers (programme's dates: clearing.timezone and cut-over)."""
    dates = sorted({x.business_date for x in lines if x.business_date})
    if not dates:
        return ""
    span = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    return f"Business date{'s' if len(dates) > 1 else ''} {html.escape(span)}."


def _row(x: StoreLine) -> list[Any]:
    return [x.merchant_id, x.store_id, x.business_date, x.txn_count, x.sales, x.returns, x.topups, x.gross,
            x.fee, x.net]


def _totals(merchant: str, label: str, xs: list[StoreLine]) -> StoreLine:
    return StoreLine(merchant, label, "", sum(x.txn_count for x in xs), sum(x.sales for x in xs),
                     sum(x.returns for x in xs), sum(x.topups for x in xs), sum(x.fee for x in xs))


def bar_chart(values: list[tuple[str, int]], width: int = 480, bar: int = 22) -> str:
    """A horizontal bar chart as inline SVG (no scripts, no external files)."""
    if not values:
        return ""
    label_w = 110
    top = max(max(abs(v) for _, v in values), 1)
    height = bar * len(values) + 8
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="net by store">']
    for i, (label, v) in enumerate(values):
        y = 4 + i * bar
        w = max(1, (width - label_w - 90) * abs(v) // top)
        colour = "#2f7d4f" if v >= 0 else "#b23b3b"
        parts.append(f'<text x="0" y="{y + bar * 0.7:.0f}" font-size="12">{html.escape(label)}</text>'
                     f'<rect x="{label_w}" y="{y + 2}" width="{w}" height="{bar - 6}" fill="{colour}"/>'
                     f'<text x="{label_w + w + 4}" y="{y + bar * 0.7:.0f}" font-size="12">{money(v)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def merchant_html(p: Any, as_of: Any, lines: list[StoreLine], totals: StoreLine, *, ran: str = "",
                  heads: list[tuple[str, str]] | None = None) -> str:
    """``ran``: when the run was made, programme local time with its offset (ops.localtime); ``heads``:
    the chain heads as of the run (``chain_heads``)."""
    store_totals: dict[str, list[StoreLine]] = defaultdict(list)
    for x in lines:
        store_totals[x.store_id].append(x)
    per_store = [_totals(totals.merchant_id, s or "(no store)", xs) for s, xs in sorted(store_totals.items())]
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(x.store_id)}</td><td>{e(x.business_date)}</td><td>{x.txn_count}</td>"
        f"<td>{money(x.sales)}</td><td>{money(x.returns)}</td><td>{money(x.topups)}</td><td>{money(x.fee)}</td>"
        f"<td>{money(x.net)}</td></tr>"
        for x in lines
    )
    store_rows = "".join(
        f"<tr><td>{e(x.store_id)}</td><td>{x.txn_count}</td><td>{money(x.sales)}</td>"
        f"<td>{money(x.returns)}</td><td>{money(x.topups)}</td><td>{money(x.fee)}</td><td>{money(x.net)}</td></tr>"
        for x in per_store
    )
    chart = bar_chart([(x.store_id, x.net) for x in per_store])
    run_line = f" Settlement run {e(str(p['run_id']))} of {e(ran)}." if ran else ""
    head_rows = "".join(f"<tr><td>{e(label)}</td><td><code>{e(h)}</code></td></tr>"
                        for label, h in heads or [])
    chain = (f"""<h2>Chain heads</h2>
<p>The ledger's and the audit record's chain heads when this run was made (SM3, hex):
<code>payswitch ledger verify</code> and <code>payswitch audit verify</code> reproduce them.</p>
<table class="heads"><tr><th>Chain</th><th>Head</th></tr>
{head_rows}</table>
""" if heads else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Settlement {e(p['reference'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}
.total{{font-weight:bold}}</style></head><body>
<h1>Settlement for merchant {e(p['merchant_id'])}</h1>
<p>Reference <b>{e(p['reference'])}</b>, value date {e(str(as_of))}, paid to account
{e(p['payout_account'] or '(not set)')}.{run_line}
{_dates(lines)}</p>
<table><tr><th>Sales</th><th>Returns</th><th>Top-ups taken</th><th>Gross</th><th>Fee</th><th>Net paid</th>
<th>Transactions</th></tr>
<tr class="total"><td>{money(totals.sales)}</td><td>{money(totals.returns)}</td>
<td>{money(totals.topups)}</td><td>{money(totals.gross)}</td>
<td>{money(totals.fee)}</td><td>{money(totals.net)}</td><td>{totals.txn_count}</td></tr></table>
<h2>Net by store</h2>
{chart}
<table><tr><th>Store</th><th>Transactions</th><th>Sales</th><th>Returns</th><th>Top-ups</th><th>Fee</th>
<th>Net</th></tr>
{store_rows}</table>
<h2>By store and business date</h2>
<table><tr><th>Store</th><th>Business date</th><th>Transactions</th><th>Sales</th><th>Returns</th>
<th>Top-ups</th><th>Fee</th><th>Net</th></tr>
{rows}</table>
<p>Amounts in the file currency's main unit; the CSV beside this page has them in minor units.</p>
{chain}</body></html>
"""
