"""AML screening (issue 16 item 3): watch lists, fuzzy name matching, the review queue.

* **Watch lists** (``import_list``): a CSV ``name,aliases,date_of_birth,list,reference`` (aliases
  separated by ``;``, a date of birth ``YYYY-MM-DD``, ``YYYY`` or empty). Every row is checked before
  anything is written; the first bad line refuses the whole file (``AmlError`` naming the line). An
  import replaces the named list's entries in one transaction and is recorded (file SHA-256, rows,
  who, when: ``aml_imports``). Names on a watch list are not our cardholders' personal data: stored in
  clear, with their precomputed match forms (``forms``).
* **Matching** (``match``): both sides are normalised the same way (``normalise``: NFKD, combining
  marks out, ``anyascii`` transliteration, lower case, ``'`` and ``-`` joined, other punctuation a
  space; a run of Chinese characters becomes surname + given name, ``王小明`` -> ``wang xiaoming``), and
  every name and alias is compared through its forms (``forms``: the tokens sorted, and the tokens
  joined without spaces), so ``Xiaoming Wang``, ``WANG Xiao-Ming``, ``Wang Xiao Ming`` and ``王小明``
  all meet. Scorers: ``token_sort`` (rapidfuzz Indel ratio of the sorted tokens, the same number as
  ``fuzz.token_sort_ratio``, run as ``fuzz.ratio`` over the stored pre-sorted forms so a list of tens
  of thousands of entries costs a few milliseconds per name); ``token_set`` (``fuzz.token_set_ratio``:
  one name's tokens inside the other's, a missing middle name) only when the two share at least two
  tokens of two letters or more, because token_set scores 100 for any one shared token (``Wang`` would
  hit every Wang). WRatio is not used: its partial ratios score short names against long ones high.
  A score at or above ``aml.threshold`` (0-100) is a match. The date of birth then decides: when both
  sides have one, a different year (or a different date, when both are full dates) is no hit, whatever
  the score; missing on either side, the name decides.
* **Hits** (``aml_hits``): pending until an operator decides. A hit puts the cardholder in ``review``
  (``cardholders.aml_status``; a ``confirmed`` cardholder stays confirmed); the ledger treats a
  cardholder not ``clear`` as anonymous for limits (host.kyc). ``clear`` clears every pending hit and
  the status; ``confirm`` confirms them and freezes every active card of the cardholder. A hit an
  operator cleared is not raised again for the same entry (same content) and the same screened name
  and date of birth, so a re-screen does not undo the decision.
"""

from __future__ import annotations

import bisect
import csv
import datetime
import hashlib
import io
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from anyascii import anyascii
from rapidfuzz import fuzz, process

from host import catalog
from host import events as host_events

HEADER = ("name", "aliases", "date_of_birth", "list", "reference")
MAX_NAME = 200
MAX_ALIASES = 50
LIST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.:-]{0,63}")
REFERENCE = re.compile(r"[^\x00-\x1f\x7f]{1,100}")
SCORERS = ("token_sort", "token_set")
DECISIONS = ("pending", "cleared", "confirmed")


class AmlError(Exception):
    """An operator's mistake (a bad watch-list file, no such cardholder, a decision that cannot be
    made); str() is the one line to show."""


# -- normalisation -----------------------------------------------------------------------------------
# CJK unified ideographs (base, extension A, compatibility, extensions B-F): a run of them is a Chinese
# name written in characters, transliterated one character (one syllable) at a time.
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]+")
# Two-character surnames: with them, the given name starts at the third character.
_COMPOUND_SURNAMES = frozenset(
    (
        "欧阳",
        "歐陽",
        "司马",
        "司馬",
        "上官",
        "诸葛",
        "諸葛",
        "东方",
        "東方",
        "皇甫",
        "尉迟",
        "尉遲",
        "公孙",
        "公孫",
        "慕容",
        "长孙",
        "長孫",
        "宇文",
        "司徒",
        "夏侯",
        "令狐",
        "澹台",
        "轩辕",
        "軒轅",
        "独孤",
        "獨孤",
        "南宫",
        "南宮",
        "西门",
        "西門",
        "端木",
        "百里",
        "呼延",
        "万俟",
        "萬俟",
        "申屠",
        "太史",
        "闻人",
        "聞人",
    )
)
_JOINED = re.compile(r"['\u2019`\-\u2010\u2011\u2012\u2013]")  # O'Brien, Xiao-Ming: one word
_NOT_ALNUM = re.compile(r"[^a-z0-9]+")


def _chinese(run: str, alone: bool) -> str:
    """A run of Chinese characters as pinyin words: ``王小明`` -> ``wang xiaoming`` when it is the whole
    name (surname, then the given name as one word, as a passport spells it); otherwise one word (a
    transliterated foreign name between ``·`` separators: ``穆罕默德`` -> ``muhanmode``)."""
    syllables = [anyascii(ch) for ch in run]
    if alone and 2 <= len(run) <= 4:
        cut = 2 if run[:2] in _COMPOUND_SURNAMES and len(run) > 2 else 1
        return f" {''.join(syllables[:cut])} {''.join(syllables[cut:])} "
    return f" {''.join(syllables)} "


def normalise(name: str) -> str:
    """The canonical form of a name: lower-case ASCII tokens separated by one space (idempotent)."""
    text = unicodedata.normalize("NFKD", name)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    runs = _CJK.findall(text)
    alone = len(runs) == 1 and not _CJK.sub("", text).strip(" \u00b7\u30fb.")
    text = _CJK.sub(lambda m: _chinese(m.group(0), alone), text)
    text = anyascii(text).lower()
    text = _JOINED.sub("", text)
    return " ".join(_NOT_ALNUM.sub(" ", text).split())


def forms(name: str) -> list[str]:
    """The strings a name is compared by: its tokens sorted (order does not count) and, when it has
    several, its tokens joined in their order (``Wang Xiao Ming`` meets ``Wang Xiaoming``)."""
    canonical = normalise(name)
    tokens = canonical.split()
    out = [" ".join(sorted(tokens))]
    if len(tokens) > 1:
        out.append("".join(tokens))
    return [f for f in out if f]


# -- watch lists: the file ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One row of a watch list, checked."""

    list_name: str
    reference: str
    name: str
    aliases: tuple[str, ...]
    birth_year: int | None
    birth_date: datetime.date | None
    line: int = 0

    def names(self) -> list[str]:
        return [self.name, *self.aliases]

    def birth_text(self) -> str | None:
        if self.birth_date is not None:
            return self.birth_date.isoformat()
        return None if self.birth_year is None else f"{self.birth_year:04d}"

    def fingerprint(self) -> str:
        """What the entry says, hashed: a re-import of the same entry keeps an operator's clearing."""
        text = "\x1f".join(
            [self.list_name, self.reference, *(normalise(n) for n in self.names()), self.birth_text() or ""]
        )
        return hashlib.sha256(text.encode()).hexdigest()


def _birth(text: str) -> tuple[int | None, datetime.date | None, str | None]:
    """(year, full date, problem) of a date_of_birth cell."""
    if not text:
        return None, None, None
    if re.fullmatch(r"[0-9]{4}", text):
        year = int(text)
        return (year, None, None) if 1850 <= year <= 2200 else (None, None, f"year {text} is not plausible")
    if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
        try:
            day = datetime.date.fromisoformat(text)
        except ValueError:
            return None, None, f"{text} is not a date"
        if not 1850 <= day.year <= 2200:
            return None, None, f"year {day.year} is not plausible"
        return day.year, day, None
    return None, None, f"date_of_birth {text!r}: expected YYYY-MM-DD, YYYY or empty"


def parse_list(data: bytes, list_name: str | None = None) -> list[Entry]:
    """Every row of a watch-list file, checked; AmlError names the first bad line and why.

    ``list_name`` (``--list``): the list the file is; a row with an empty list cell belongs to it and a
    row naming another list is refused. Without it, every row names its list (a file may hold several).
    """
    if list_name is not None and not LIST_NAME.fullmatch(list_name):
        raise AmlError(f"--list {list_name!r}: 1 to 64 letters, digits, spaces, '_', '.', ':' or '-'")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise AmlError(f"line {line}: not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise AmlError(f"line 1: not CSV ({exc})") from None
    if header is None:
        raise AmlError("the file is empty: expected the header " + ",".join(HEADER))
    if tuple(h.strip().lower() for h in header) != HEADER:
        raise AmlError(f"line 1: the header must be {','.join(HEADER)}")
    entries: list[Entry] = []
    seen: dict[tuple[str, str], int] = {}
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader, None)
        except csv.Error as exc:
            raise AmlError(f"line {start}: not CSV ({exc})") from None
        if row is None:
            break
        if not any(cell.strip() for cell in row):
            continue  # blank line
        entry = _entry(row, start, list_name)
        key = (entry.list_name, entry.reference)
        if key in seen:
            raise AmlError(
                f"line {start}: reference {entry.reference!r} of list {entry.list_name!r} is also on "
                f"line {seen[key]}"
            )
        seen[key] = start
        entries.append(entry)
    if not entries:
        raise AmlError("the file has no entries after its header")
    return entries


def _entry(row: list[str], line: int, list_name: str | None) -> Entry:
    if len(row) != len(HEADER):
        raise AmlError(f"line {line}: {len(row)} fields, expected {len(HEADER)} ({','.join(HEADER)})")
    name, aliases_cell, birth_cell, list_cell, reference = (cell.strip() for cell in row)

    def bad(why: str) -> AmlError:
        return AmlError(f"line {line}: {why}")

    for label, value in (("name", name), ("an alias", aliases_cell)):
        if any(unicodedata.category(ch) == "Cc" for ch in value):
            raise bad(f"{label} has a control character")
    if not name:
        raise bad("name is empty")
    if len(name) > MAX_NAME:
        raise bad(f"name is longer than {MAX_NAME} characters")
    if not normalise(name):
        raise bad(f"name {name!r} has no letters or digits")
    aliases = tuple(a.strip() for a in aliases_cell.split(";") if a.strip()) if aliases_cell else ()
    if len(aliases) > MAX_ALIASES:
        raise bad(f"more than {MAX_ALIASES} aliases")
    for alias in aliases:
        if len(alias) > MAX_NAME or not normalise(alias):
            raise bad(f"alias {alias!r} is empty after normalising or longer than {MAX_NAME} characters")
    year, day, problem = _birth(birth_cell)
    if problem:
        raise bad(problem)
    if list_name is not None:
        if list_cell and list_cell != list_name:
            raise bad(f"list {list_cell!r}, but --list {list_name} was given")
        list_cell = list_name
    if not list_cell:
        raise bad("list is empty (or give --list NAME)")
    if not LIST_NAME.fullmatch(list_cell):
        raise bad(f"list {list_cell!r}: 1 to 64 letters, digits, spaces, '_', '.', ':' or '-'")
    if not REFERENCE.fullmatch(reference):
        raise bad("reference is empty or longer than 100 characters")
    return Entry(list_cell, reference, name, aliases, year, day, line)


# -- watch lists: the database -----------------------------------------------------------------------
@dataclass(frozen=True)
class Imported:
    """One list of an import: its import id and entry count."""

    list_name: str
    import_id: int
    rows: int
    replaced: int


async def import_list(
    conn: Any, data: bytes, *, file_name: str, actor: str, list_name: str | None = None
) -> list[Imported]:
    """Check the whole file, then replace each list it holds in one transaction; the imports done."""
    entries = parse_list(data, list_name)
    digest = hashlib.sha256(data).hexdigest()
    by_list: dict[str, list[Entry]] = {}
    for e in entries:
        by_list.setdefault(e.list_name, []).append(e)
    done = []
    async with conn.transaction():
        for name in sorted(by_list):  # one order, so two imports of the same lists never deadlock
            rows = by_list[name]
            import_id = await conn.fetchval(
                "INSERT INTO aml_imports (list_name, file_name, file_sha256, rows, actor)"
                " VALUES ($1, $2, $3, $4, $5) RETURNING id",
                name,
                file_name[:200],
                digest,
                len(rows),
                actor,
            )
            await conn.execute(  # the list's row, locked until commit: imports of one list queue here
                "INSERT INTO aml_lists (name, import_id) VALUES ($1, $2)"
                " ON CONFLICT (name) DO UPDATE SET import_id = EXCLUDED.import_id",
                name,
                import_id,
            )
            replaced = await conn.fetchval(
                "WITH gone AS (DELETE FROM aml_entries WHERE list_name = $1 RETURNING 1)"
                " SELECT count(*) FROM gone",
                name,
            )
            records = []
            for e in rows:
                fs: list[str] = []
                owners: list[int] = []
                for i, n in enumerate(e.names()):
                    for f in forms(n):
                        fs.append(f)
                        owners.append(i)
                records.append(
                    (
                        import_id,
                        name,
                        e.reference,
                        e.name,
                        list(e.aliases),
                        e.birth_year,
                        e.birth_date,
                        fs,
                        owners,
                        e.fingerprint(),
                    )
                )
            await conn.copy_records_to_table(
                "aml_entries",
                records=records,
                columns=[
                    "import_id",
                    "list_name",
                    "reference",
                    "name",
                    "aliases",
                    "birth_year",
                    "birth_date",
                    "forms",
                    "form_names",
                    "fingerprint",
                ],
            )
            done.append(Imported(name, import_id, len(rows), int(replaced)))
    return done


async def lists(conn: Any) -> list[dict[str, Any]]:
    """Every watch list: entries now, the import in force (when, by whom, the file's SHA-256)."""
    rows = await conn.fetch(
        """SELECT l.name AS list, i.id AS import_id, i.rows AS entries, i.imported_at, i.actor,
                  i.file_name, i.file_sha256,
                  (SELECT count(*) FROM aml_imports p WHERE p.list_name = l.name) AS imports
           FROM aml_lists l JOIN aml_imports i ON i.id = l.import_id ORDER BY l.name"""
    )
    return [dict(r) for r in rows]


# -- matching ----------------------------------------------------------------------------------------
@dataclass
class Watchlist:
    """The lists in force, prepared for matching: every form of every name of every entry, flat."""

    key: tuple[int, ...]
    entries: list[dict[str, Any]] = field(default_factory=list)
    choices: list[str] = field(default_factory=list)  # shortest first (``window``)
    owner: list[tuple[int, int]] = field(default_factory=list)  # (entry index, name index) per choice
    lengths: list[int] = field(default_factory=list)  # len() of each choice, ascending
    tokens: dict[str, list[int]] = field(default_factory=dict)  # token -> choices with it (sorted forms)

    @classmethod
    def build(cls, key: tuple[int, ...], entries: list[dict[str, Any]]) -> Watchlist:
        """From entries with their stored ``forms`` and ``form_names`` (aml_entries rows)."""
        flat = sorted(
            (
                (f, (i, n))
                for i, e in enumerate(entries)
                for f, n in zip(e["forms"], e["form_names"], strict=True)
            ),
            key=lambda item: len(item[0]),
        )
        wl = cls(key, entries, [f for f, _ in flat], [o for _, o in flat], [len(f) for f, _ in flat])
        for idx, f in enumerate(wl.choices):
            if " " in f:  # the sorted form of a name of several tokens: what token_set compares
                for t in set(f.split()):
                    wl.tokens.setdefault(t, []).append(idx)
        return wl

    def window(self, length: int, threshold: int) -> tuple[int, int]:
        """The choices whose length lets them reach ``threshold`` against a string of ``length``: the
        Indel ratio is at most 200 * min / (m + n), so only lengths in [m t / (200 - t), m (200 - t) / t]
        can score t. This halves the work or better; the scorer decides within the window."""
        if threshold <= 0:
            return 0, len(self.choices)
        low = length * threshold / (200 - threshold)
        high = length * (200 - threshold) / threshold
        return bisect.bisect_left(self.lengths, math.floor(low)), bisect.bisect_right(
            self.lengths, math.ceil(high)
        )


_cache: dict[tuple[int, ...], Watchlist] = {}


async def watchlist(conn: Any) -> Watchlist:
    """The prepared lists, read again only when an import changed them (the cache is per process, keyed
    by the import ids in force)."""
    key = tuple(r["import_id"] for r in await conn.fetch("SELECT import_id FROM aml_lists ORDER BY name"))
    cached = _cache.get(key)
    if cached is not None:
        return cached
    rows = await conn.fetch(
        "SELECT id, import_id, list_name, reference, name, aliases, birth_year, birth_date, forms,"
        " form_names, fingerprint FROM aml_entries WHERE import_id = ANY($1::bigint[]) ORDER BY id",
        list(key),
    )
    wl = Watchlist.build(key, [dict(r) for r in rows])
    _cache.clear()
    _cache[key] = wl
    return wl


@dataclass(frozen=True)
class Hit:
    """One watch-list entry a cardholder's name matched (after the date-of-birth rule)."""

    entry_id: int
    list_name: str
    reference: str
    matched_name: str
    score: float
    scorer: str = "token_sort"
    entry_name: str = ""
    entry_birth: str | None = None
    import_id: int = 0
    fingerprint: str = ""


def _born_apart(entry: dict[str, Any], birth_date: datetime.date | None) -> bool:
    """True when both dates of birth are known and differ (a full date when both are full, else the year)."""
    if birth_date is None or entry["birth_year"] is None:
        return False
    if entry["birth_date"] is not None:
        return bool(entry["birth_date"] != birth_date)
    return bool(entry["birth_year"] != birth_date.year)


def match(wl: Watchlist, name: str, birth_date: datetime.date | None, threshold: int) -> list[Hit]:
    """The entries ``name`` matches at ``threshold`` or above, best first, one hit per entry."""
    best: dict[int, tuple[float, str, int]] = {}  # entry index -> (score, scorer, name index)

    def note(choice: int, score: float, scorer: str) -> None:
        entry, name_index = wl.owner[choice]
        if entry not in best or score > best[entry][0]:
            best[entry] = (score, scorer, name_index)

    own = forms(name)
    if not own or not wl.choices:
        return []
    for f in own:
        lo, hi = wl.window(len(f), threshold)
        for _choice, score, idx in process.extract(
            f, wl.choices[lo:hi], scorer=fuzz.ratio, processor=None, score_cutoff=threshold, limit=None
        ):
            note(lo + idx, score, "token_sort")
    spaced = own[0]
    mine = {t for t in spaced.split() if len(t) >= 2}
    if len(mine) >= 2:
        shared: Counter[int] = Counter()
        for t in mine:
            shared.update(wl.tokens.get(t, ()))
        for idx, n in shared.items():
            if n >= 2:
                score = fuzz.token_set_ratio(spaced, wl.choices[idx], processor=None)
                if score >= threshold:
                    note(idx, score, "token_set")
    hits = []
    for entry_index, (score, scorer, name_index) in best.items():
        e = wl.entries[entry_index]
        if _born_apart(e, birth_date):
            continue
        matched = e["name"] if name_index == 0 else e["aliases"][name_index - 1]
        birth = (
            e["birth_date"].isoformat()
            if e["birth_date"]
            else (f"{e['birth_year']:04d}" if e["birth_year"] is not None else None)
        )
        hits.append(
            Hit(
                e["id"],
                e["list_name"],
                e["reference"],
                matched,
                round(float(score), 1),
                scorer,
                e["name"],
                birth,
                e["import_id"],
                e["fingerprint"],
            )
        )
    hits.sort(key=lambda h: (-h.score, h.list_name, h.reference))
    return hits


# -- screening ---------------------------------------------------------------------------------------
# Who a screening's own change of AML status names (it runs on behalf of a registration or an update).
SCREENING_ACTOR = "host:aml-screening"


async def screen(
    conn: Any,
    cardholder_id: int,
    name: str,
    birth_date: datetime.date | None,
    *,
    threshold: int,
) -> list[Hit]:
    """Screen a cardholder against every watch list and record it (``aml_screenings``); each new hit is
    an ``aml_hits`` row pending a decision and puts the cardholder in ``review`` (a ``confirmed`` one
    stays confirmed). Returns the hits found (also those already pending or cleared before).

    Called after every registration and every change of name or date of birth (host.cardholders), in
    the caller's transaction when it has one. ``threshold``: the configuration's ``aml.threshold``
    (the caller's: a domain function reads no configuration of its own)."""
    limit = threshold
    wl = await watchlist(conn)
    hits = match(wl, name, birth_date, limit)
    async with conn.transaction():
        screening = await conn.fetchval(
            "INSERT INTO aml_screenings (cardholder_id, threshold, imports, entries, hits)"
            " VALUES ($1, $2, $3, $4, $5) RETURNING id",
            cardholder_id,
            limit,
            list(wl.key),
            len(wl.entries),
            len(hits),
        )
        raised = 0
        for h in hits:
            if await _cleared_before(conn, cardholder_id, h, name, birth_date):
                continue
            status = await conn.execute(
                """INSERT INTO aml_hits (cardholder_id, screening_id, import_id, list_name, reference,
                       entry_name, matched_name, entry_birth, fingerprint, screened_name,
                       screened_birth_date, score, scorer)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                   ON CONFLICT (cardholder_id, list_name, reference) WHERE decision = 'pending'
                   DO NOTHING""",
                cardholder_id,
                screening,
                h.import_id,
                h.list_name,
                h.reference,
                h.entry_name,
                h.matched_name,
                h.entry_birth,
                h.fingerprint,
                name,
                birth_date,
                h.score,
                h.scorer,
            )
            raised += status.endswith(" 1")
        if raised or await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM aml_hits WHERE cardholder_id = $1 AND decision = 'pending')",
            cardholder_id,
        ):
            moved = await conn.execute(
                "UPDATE cardholders SET aml_status = 'review', updated_at = now()"
                " WHERE id = $1 AND aml_status = 'clear'",
                cardholder_id,
            )
            if moved.endswith(" 1"):  # clear -> review: the outbox's cardholder.kyc_changed (host.events)
                await host_events.kyc_changed(
                    conn, cardholder_id, "aml_review", SCREENING_ACTOR, from_aml="clear"
                )
    return hits


async def _cleared_before(
    conn: Any, cardholder_id: int, hit: Hit, name: str, birth_date: datetime.date | None
) -> bool:
    return bool(
        await conn.fetchval(
            """SELECT EXISTS (SELECT 1 FROM aml_hits WHERE cardholder_id = $1 AND decision = 'cleared'
                   AND list_name = $2 AND reference = $3 AND fingerprint = $4 AND screened_name = $5
                   AND screened_birth_date IS NOT DISTINCT FROM $6)""",
            cardholder_id,
            hit.list_name,
            hit.reference,
            hit.fingerprint,
            name,
            birth_date,
        )
    )


@dataclass(frozen=True)
class Rescreened:
    screened: int
    with_hits: int
    new_hits: int
    in_review: int
    entries: int


async def rescreen(conn: Any, *, threshold: int) -> Rescreened:
    """Screen every active cardholder again (after a list import) at ``threshold`` (aml.threshold):
    one short transaction each."""
    limit = threshold
    people = await conn.fetch(
        "SELECT id, name, birth_date FROM cardholders WHERE state = 'active' ORDER BY id"
    )
    before = await _pending(conn)
    with_hits = 0
    for p in people:
        hits = await screen(conn, p["id"], p["name"], p["birth_date"], threshold=limit)
        with_hits += bool(hits)
    in_review = await conn.fetchval("SELECT count(*) FROM cardholders WHERE aml_status = 'review'")
    wl = await watchlist(conn)
    return Rescreened(len(people), with_hits, await _pending(conn) - before, int(in_review), len(wl.entries))


async def _pending(conn: Any) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM aml_hits WHERE decision = 'pending'"))


# -- the review queue and decisions ------------------------------------------------------------------
async def review_queue(conn: Any, limit: int = 100) -> list[dict[str, Any]]:
    """Cardholders in review, oldest pending hit first, each with its pending hits (best score first)."""
    people = await conn.fetch(
        """SELECT c.id AS cardholder_id, c.name, c.kyc_level, min(h.found_at) AS since
           FROM cardholders c JOIN aml_hits h ON h.cardholder_id = c.id AND h.decision = 'pending'
           WHERE c.aml_status = 'review'
           GROUP BY c.id ORDER BY since, c.id LIMIT $1""",
        limit,
    )
    hits = await conn.fetch(
        """SELECT id AS hit_id, cardholder_id, list_name AS list, reference, entry_name, matched_name,
                  entry_birth, score, scorer, found_at
           FROM aml_hits WHERE decision = 'pending' AND cardholder_id = ANY($1::bigint[])
           ORDER BY score DESC, id""",
        [p["cardholder_id"] for p in people],
    )
    out = []
    for p in people:
        mine = [dict(h) for h in hits if h["cardholder_id"] == p["cardholder_id"]]
        for h in mine:
            h.pop("cardholder_id")
            h["score"] = float(h["score"])
        out.append({**dict(p), "hits": mine})
    return out


async def hits_of(conn: Any, cardholder_id: int) -> list[dict[str, Any]]:
    """Every hit of a cardholder, newest first, with its decision."""
    rows = await conn.fetch(
        """SELECT id AS hit_id, list_name AS list, reference, entry_name, matched_name, entry_birth, score,
                  scorer, found_at, decision, decided_by, decided_at, reason
           FROM aml_hits WHERE cardholder_id = $1 ORDER BY id DESC""",
        cardholder_id,
    )
    return [{**dict(r), "score": float(r["score"])} for r in rows]


@dataclass(frozen=True)
class Decided:
    cardholder_id: int
    aml_status: str
    hits: int
    frozen_cards: list[int]


async def _locked_status(conn: Any, cardholder_id: int) -> str:
    status = await conn.fetchval("SELECT aml_status FROM cardholders WHERE id = $1 FOR UPDATE", cardholder_id)
    if status is None:
        raise AmlError(f"no cardholder {cardholder_id} (`payswitch aml review` lists those in review)")
    return str(status)


def _reason(reason: str) -> str:
    text = reason.strip()
    if not text or len(text) > 500 or any(unicodedata.category(ch) == "Cc" for ch in text):
        raise AmlError("--reason: 1 to 500 characters of text saying why")
    return text


async def clear(conn: Any, cardholder_id: int, *, actor: str, reason: str) -> Decided:
    """An operator found the hits are someone else: every pending hit cleared, aml_status ``clear``."""
    why = _reason(reason)
    async with conn.transaction():
        status = await _locked_status(conn, cardholder_id)
        if status == "confirmed":
            raise AmlError(f"cardholder {cardholder_id} is confirmed: a confirmed match is not cleared")
        if status != "review":
            raise AmlError(f"cardholder {cardholder_id} is not in review (aml status {status})")
        n = await _decide(conn, cardholder_id, "cleared", actor, why)
        await conn.execute(
            "UPDATE cardholders SET aml_status = 'clear', updated_at = now() WHERE id = $1", cardholder_id
        )
        await host_events.kyc_changed(conn, cardholder_id, "aml_cleared", actor, from_aml=status)
    return Decided(cardholder_id, "clear", n, [])


async def confirm(conn: Any, cardholder_id: int, *, actor: str, reason: str) -> Decided:
    """An operator confirmed the match: pending hits confirmed, aml_status ``confirmed``, every active
    card of the cardholder frozen (host.catalog.set_card_state, so the card's audit has it)."""
    why = _reason(reason)
    async with conn.transaction():
        status = await _locked_status(conn, cardholder_id)
        if status != "review":
            raise AmlError(f"cardholder {cardholder_id} is not in review (aml status {status})")
        n = await _decide(conn, cardholder_id, "confirmed", actor, why)
        await conn.execute(
            "UPDATE cardholders SET aml_status = 'confirmed', updated_at = now() WHERE id = $1",
            cardholder_id,
        )
        await host_events.kyc_changed(conn, cardholder_id, "aml_confirmed", actor, from_aml=status)
        cards = await conn.fetch(
            "SELECT id FROM cards WHERE cardholder_id = $1 AND state = 'active' ORDER BY id", cardholder_id
        )
        frozen = []
        for c in cards:
            await _freeze(conn, c["id"], actor, why)
            frozen.append(int(c["id"]))
    return Decided(cardholder_id, "confirmed", n, frozen)


async def _freeze(conn: Any, card_id: int, actor: str, reason: str) -> None:
    await catalog.set_card_state(
        conn, card_id, "frozen", actor=actor, reason=f"AML match confirmed: {reason}"
    )


async def _decide(conn: Any, cardholder_id: int, decision: str, actor: str, reason: str) -> int:
    status = await conn.execute(
        "UPDATE aml_hits SET decision = $2, decided_by = $3, decided_at = clock_timestamp(), reason = $4"
        " WHERE cardholder_id = $1 AND decision = 'pending'",
        cardholder_id,
        decision,
        actor,
        reason,
    )
    return int(status.split()[-1])


def summary(hits: Sequence[Hit] | Iterable[Hit]) -> str:
    """Hits in one line for people: ``LIST/REF (matched name, score)``."""
    return ", ".join(f"{h.list_name}/{h.reference} ({h.matched_name}, {h.score:g})" for h in hits)
