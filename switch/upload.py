"""The batch upload that posts (issue 19 item 5; specs/README.md, "Batch upload").

On an unbalanced 0500 the terminal uploads its batch with 0320s. Each record (terminal STAN, PAN,
amount) is judged against the switch journal of that terminal and batch, which mirrors what the host
answered (``judge``): matched; a record the host never saw that the switch can justify is posted
upstream as an advice (H2H 0220 in the offline-advice form, so the host's natural key posts it once);
a repeat is a duplicate; anything else is reported, never posted on the terminal's word alone (0320
carries no MAC). At the end of the upload (60.3 202) the journal's approvals the terminal did not
upload are reported too (``terminal_lacks``). Every outcome is kept in ``switch_upload_results``
(switch migration 0010) for the reconciliation report (``batch_report``).

The judging and the frames are pure; the database functions at the end take an asyncpg connection
(``PgPool.run`` / ``ops.db.with_connection`` callers).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ops.logs import mask_pan
from specs.catalogue import OFFLINE_TYPE_CODE, UploadRecord
from switch.mapping import Message, original_data
from switch.sessions import Entry

# DE38 of an advice the upload posts: the host's offline advice must carry the terminal's approval
# code (an6), which the 0320 record does not have; this one says where the approval came from.
UPLOAD_APPROVAL = "UPLOAD"


class Result(StrEnum):
    MATCHED = "matched"
    POSTED = "posted"
    DUPLICATE = "duplicate"
    NOT_POSTED = "not_posted"
    TERMINAL_LACKS = "terminal_lacks"  # a journal approval absent from the upload: no 0330 digit

    @property
    def digit(self) -> str:
        """The record's result digit in the 0330's DE48."""
        return _DIGITS[self]


_DIGITS = {
    Result.MATCHED: "0",
    Result.POSTED: "1",
    Result.DUPLICATE: "2",
    Result.NOT_POSTED: "3",
    Result.TERMINAL_LACKS: "4",
}

# Why a record came out as it did (switch_upload_results.detail; the report prints the text).
DETAILS = {
    "journal_approved": "approved online, in the journal",
    "lost_approval": "sent upstream, unanswered (98), reversed upstream: posted as an advice",
    "within_floor_limit": "not seen by the switch, within the product's offline floor limit: posted",
    "repeated": "the same STAN earlier in this upload",
    "already_posted": "already posted by an earlier upload of this batch",
    "host_had_it": "the host had already posted it (its offline advice came first)",
    "amount_differs": "the journal has another amount for this STAN",
    "card_differs": "the journal has another card for this STAN",
    "journal_declined": "the switch answered it with a decline",
    "journal_reversed": "reversed or voided in the journal",
    "reversal_pending": "unanswered upstream; its reversal advice is not done yet: not posted",
    "unknown_to_switch": "not seen by the switch and above the offline floor limit: not posted",
    "not_a_sale": "the journal has it as another kind of request",
    "host_declined": "the host declined the advice",
    "advice_unanswered": "the advice got no answer (not posted; the host's natural key keeps a retry safe)",
    "no_route": "no link for the card's BIN",
    "not_uploaded": "approved in the journal, not in the terminal's upload",
}

# Kinds whose approvals count in a batch (pos-dialect.md totals) and so belong in an upload.
_UPLOADED_KINDS = frozenset({"purchase", "completion", "refund", "offline"})


@dataclass(frozen=True, slots=True)
class Verdict:
    result: Result
    detail: str
    advice: bool = False  # to be sent upstream: the result then follows the host's answer

    @property
    def text(self) -> str:
        return DETAILS.get(self.detail, self.detail)


def judge(
    record: UploadRecord,
    entry: Entry | None,
    *,
    repeated: bool,
    posted_before: bool,
    floor_limit: int | None,
    reversal_done: bool,
) -> Verdict:
    """What to do with one uploaded record. ``entry``: the journal's request of this terminal and batch
    with the record's STAN (``Terminal.find_original``); ``repeated``: the STAN came earlier in this
    upload; ``posted_before``: an earlier upload of this batch posted it; ``floor_limit``: the card
    product's offline floor limit in fen (None: unknown BIN); ``reversal_done``: the switch's reversal
    advice of the entry's upstream request is acknowledged (the host's net effect of it is nil).

    Posted only (``advice``) what the switch can justify without trusting the terminal: (a) a sale the
    terminal really sent (MAC'd, journaled) that went upstream unanswered (98) and that the switch has
    reversed upstream since: the host no longer holds it, the terminal says it was approved (EMV:
    "unable to go online", approved by the card); or (b) a sale the switch never saw, of an amount the
    terminal was allowed to approve offline. Anything else is reported."""
    if repeated:
        return Verdict(Result.DUPLICATE, "repeated")
    if posted_before:
        return Verdict(Result.DUPLICATE, "already_posted")
    if entry is None:
        if floor_limit is not None and 0 < record.amount <= floor_limit:
            return Verdict(Result.POSTED, "within_floor_limit", advice=True)
        return Verdict(Result.NOT_POSTED, "unknown_to_switch")
    if entry.kind not in _UPLOADED_KINDS:
        return Verdict(Result.NOT_POSTED, "not_a_sale")
    if entry.amount != record.amount:
        return Verdict(Result.NOT_POSTED, "amount_differs")
    if entry.pan_masked is not None and entry.pan_masked != mask_pan(record.pan):
        return Verdict(Result.NOT_POSTED, "card_differs")
    if entry.reversed or entry.voided:
        return Verdict(Result.NOT_POSTED, "journal_reversed")
    if entry.code == "00":
        return Verdict(Result.MATCHED, "journal_approved")
    if entry.code == "98" and entry.mti == "0200" and entry.kind == "purchase" and entry.link_stan:
        if reversal_done:
            return Verdict(Result.POSTED, "lost_approval", advice=True)
        return Verdict(Result.NOT_POSTED, "reversal_pending")
    return Verdict(Result.NOT_POSTED, "journal_declined")


def terminal_lacks(entries: Iterable[Entry], uploaded: set[str]) -> list[Entry]:
    """The batch's approvals (counted in its totals) whose STAN the terminal did not upload."""
    return [
        e
        for e in entries
        if e.code == "00"
        and e.kind in _UPLOADED_KINDS
        and not (e.reversed or e.voided)
        and e.stan not in uploaded
    ]


@dataclass(frozen=True, slots=True)
class Counts:
    """The outcome of a whole upload, carried by the final 0330 (60.3 202) and the report."""

    records: int = 0
    matched: int = 0
    posted: int = 0
    duplicate: int = 0
    not_posted: int = 0
    terminal_lacks: int = 0

    def __str__(self) -> str:
        return "".join(
            f"{min(n, 9999):04d}"
            for n in (
                self.records,
                self.matched,
                self.posted,
                self.duplicate,
                self.not_posted,
                self.terminal_lacks,
            )
        )

    @classmethod
    def of(cls, results: Iterable[Result]) -> Counts:
        tally = dict.fromkeys(Result, 0)
        for r in results:
            tally[r] += 1
        records = sum(n for r, n in tally.items() if r is not Result.TERMINAL_LACKS)
        return cls(
            records,
            tally[Result.MATCHED],
            tally[Result.POSTED],
            tally[Result.DUPLICATE],
            tally[Result.NOT_POSTED],
            tally[Result.TERMINAL_LACKS],
        )


def answer_de48(results: Sequence[Result], counts: Counts | None = None) -> str:
    """The 0330's DE48 (n..322): count n2, one result digit per record of the 0320 in its order (0
    matched, 1 posted as an advice, 2 duplicate, 3 not posted: reported), then on the final 0330 the
    upload's counts (records, matched, posted, duplicate, not posted, terminal lacks: n4 each)."""
    text = f"{len(results):02d}" + "".join(r.digit for r in results)
    return text if counts is None else text + str(counts)


def parse_answer_de48(de48: str) -> tuple[list[str], Counts | None]:
    """(per-record result digits, counts or None) of a 0330's DE48; ValueError when it is not one."""
    if not de48.isdigit() or len(de48) < 2:
        raise ValueError("0330 DE48 is a count n2, the result digits, then optionally 6 counts n4")
    n = int(de48[:2])
    digits, rest = list(de48[2 : 2 + n]), de48[2 + n :]
    if len(digits) != n or len(rest) not in (0, 24) or any(d not in "0123" for d in digits):
        raise ValueError("0330 DE48 is a count n2, the result digits, then optionally 6 counts n4")
    if not rest:
        return digits, None
    return digits, Counts(*(int(rest[i : i + 4]) for i in range(0, 24, 4)))


# --- the advice ---------------------------------------------------------------------------------------


def upload_advice(
    record: UploadRecord,
    *,
    terminal_id: str,
    merchant_id: str,
    batch: int,
    stan: int,
    de7: str,
    local: tuple[str, str],
    rrn_value: str,
    acquirer_id: str,
    mcc: str | None = None,
    merchant_name: str | None = None,
    currency: str = "156",
) -> Message:
    """The H2H 0220 that posts an uploaded record: the offline advice's form (common convention 5), so
    the host's natural key (DE42, DE41, POS batch, terminal STAN) posts it once, also when the
    terminal's own offline advice for the sale comes too. DE60 = POS DE60 of an advice (60.1 36, the
    batch, 60.3 000) + "/" + batch + the record's STAN + MMDD. ``local``: (DE12, DE13) of the sale
    when known, else now. DE22 000: the upload does not say how the card was read. DE38
    ``UPLOAD_APPROVAL``: the terminal's approval code is not in the upload."""
    de12, de13 = local
    out: Message = {
        "t": "0220",
        "2": record.pan,
        "3": "000000",
        "4": f"{record.amount:012d}",
        "7": de7,
        "11": f"{stan:06d}",
        "12": de12,
        "13": de13,
    }
    if mcc:
        out["18"] = mcc
    out.update({"22": "000", "25": "00", "32": acquirer_id, "37": rrn_value, "38": UPLOAD_APPROVAL})
    out["41"] = terminal_id
    out["42"] = merchant_id
    if merchant_name:
        out["43"] = merchant_name[:40]
    out["49"] = currency
    out["60"] = f"{OFFLINE_TYPE_CODE}{batch:06d}000/{batch:06d}{record.stan:0>6}{de13}"
    return out


def advice_key(merchant_id: str, terminal_id: str, batch: int, stan: str) -> str:
    """The host's natural key of an offline advice, its auth_requests key (host.offline.advice_key,
    asserted equal by the tests: the switch does not import the host, it reads its tables as it reads
    the terminal registry)."""
    return f"offline:{merchant_id.strip()}:{terminal_id.strip()}:{batch:06d}:{stan:0>6}"


def reversal_de90(entry: Entry) -> str | None:
    """DE90 of the switch's reversal advice of ``entry``'s upstream request (switch/saf.py)."""
    if not (entry.link_mti and entry.link_stan and entry.link_de7 and entry.link_de32):
        return None
    return original_data(entry.link_mti, entry.link_stan, entry.link_de7, entry.link_de32)


# --- the database -------------------------------------------------------------------------------------

RESULT_COLUMNS = (
    "terminal_id",
    "merchant_id",
    "batch_no",
    "stan",
    "pan_masked",
    "amount",
    "result",
    "detail",
    "link",
    "link_stan",
    "link_de7",
)


async def save_results(conn: Any, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert outcomes (RESULT_COLUMNS). A second 'posted' row for a record is refused by the unique
    index: it cannot happen (the terminal lock and ``posted_stans`` come first), so it raises."""
    if rows:
        await conn.copy_records_to_table("switch_upload_results", records=rows, columns=RESULT_COLUMNS)


async def posted_stans(conn: Any, terminal_id: str, merchant_id: str, batch: int) -> set[str]:
    rows = await conn.fetch(
        "SELECT stan FROM switch_upload_results WHERE terminal_id = $1 AND merchant_id = $2 "
        "AND batch_no = $3 AND result = 'posted'",
        terminal_id,
        merchant_id,
        batch,
    )
    return {r[0] for r in rows}


async def reversal_done(conn: Any, link: str, de90: str) -> bool:
    """Whether the switch's reversal advice naming ``de90`` on ``link`` was acknowledged (switch_saf)."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM switch_saf WHERE link = $1 AND message->>'90' = $2 "
            "AND done_at IS NOT NULL)",
            link,
            de90,
        )
    )


async def floor_limit(conn: Any, pan: str) -> int | None:
    """The offline floor limit (fen) of the product of ``pan``'s BIN range (the longest BIN that is a
    prefix; host tables, read as the terminal registry is); None for a BIN the host does not have.
    Before host migration 0027 (``products.offline_floor_limit``) every limit is 0."""
    try:
        value = await conn.fetchval(
            "SELECT p.offline_floor_limit FROM bin_ranges b JOIN products p ON p.id = b.product_id "
            "WHERE $1 LIKE b.bin || '%' ORDER BY length(b.bin) DESC LIMIT 1",
            pan,
        )
    except Exception as exc:  # asyncpg.UndefinedColumnError before migration 0027
        if type(exc).__name__ != "UndefinedColumnError":
            raise
        found = await conn.fetchval("SELECT 1 FROM bin_ranges WHERE $1 LIKE bin || '%' LIMIT 1", pan)
        return None if found is None else 0
    return None if value is None else int(value)


async def posted_by(conn: Any, key: str, de7: str, stan: str) -> bool:
    """Whether the host posted the advice of natural key ``key`` for the request of this DE7 and DE11:
    the host's row keeps the first request's; a later copy is answered 00 and posts nothing
    (host/offline.py), so a row of another DE7/DE11 means an earlier advice posted the sale."""
    row = await conn.fetchrow("SELECT posted, transmitted, stan FROM auth_requests WHERE key = $1", key)
    return row is not None and bool(row[0]) and row[1] == de7 and row[2] == stan


async def batch_results(conn: Any, terminal_id: str, batch: int | None = None) -> list[dict[str, Any]]:
    """The outcomes of a terminal's upload of ``batch`` (default: its latest uploaded batch)."""
    if batch is None:
        batch = await conn.fetchval(
            "SELECT max(batch_no) FROM switch_upload_results WHERE terminal_id = $1", terminal_id
        )
        if batch is None:
            return []
    rows = await conn.fetch(
        "SELECT id, created_at, terminal_id, merchant_id, batch_no, stan, pan_masked, amount, result, "
        "detail, link, link_stan, link_de7 FROM switch_upload_results "
        "WHERE terminal_id = $1 AND batch_no = $2 ORDER BY id",
        terminal_id,
        batch,
    )
    return [dict(r) for r in rows]


def batch_report(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The reconciliation report of one uploaded batch: counts, the postings it made, and its report
    lines (what an operator must look at: duplicates, records not posted, approvals the terminal
    lacks). Matched records are only counted."""
    counts = Counts.of(Result(r["result"]) for r in rows)
    posted = [r for r in rows if r["result"] == Result.POSTED]
    lines = [r for r in rows if r["result"] not in (Result.MATCHED, Result.POSTED)]
    first = rows[0] if rows else {}

    def shown(r: dict[str, Any]) -> dict[str, Any]:
        return {**r, "text": DETAILS.get(str(r["detail"]), str(r["detail"]))}

    return {
        "terminal_id": first.get("terminal_id"),
        "merchant_id": first.get("merchant_id"),
        "batch_no": first.get("batch_no"),
        "counts": {
            "records": counts.records,
            "matched": counts.matched,
            "posted": counts.posted,
            "duplicate": counts.duplicate,
            "not_posted": counts.not_posted,
            "terminal_lacks": counts.terminal_lacks,
        },
        "postings": [shown(r) for r in posted],
        "lines": [shown(r) for r in lines],
    }
