"""Terminal sessions: who a terminal is, its working keys, its open batch and what it sent in it.

A terminal's state is loaded from the database on first contact after start (host registry + switch
session + open batch + that batch's journal) and then kept in memory. Several switch nodes may share the
database (switch/README.md, "Several switch nodes"): a terminal that signed on or transacted at another
node since leaves this node's copy stale, so it is read again (:meth:`Registry.refresh`) when it cannot
explain a request (a MAC that fails, another batch, not signed on, a reversal's original not found, a
settlement) -- never per request. The journal entries of the open batch give
duplicate detection (same MTI + STAN within the batch: the first answer again, nothing upstream twice),
finding the original of a reversal, and the batch totals for settlement.
"""

from __future__ import annotations

import dataclasses
import json
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from specs.catalogue import UploadRecord
from switch.mapping import Message, is_credit, is_debit
from switch.reversals import Fingerprint
from switch.store import SessionRow, TerminalRecord


@dataclass(slots=True)
class Entry:
    """One request of the open batch and what became of it."""

    mti: str
    stan: str
    kind: str
    amount: int
    pan_masked: str | None = None
    code: str | None = None  # None while in flight
    response: Message | None = None  # replayable fields of the POS answer
    done: trio.Event = field(default_factory=trio.Event)
    committed: trio.Event | None = None  # set once its journal row is committed (None: loaded from it)
    link: str | None = None
    link_mti: str | None = None
    link_stan: str | None = None
    link_de7: str | None = None
    link_de32: str | None = None
    rrn: str | None = None
    auth_id: str | None = None
    original: str | None = None  # for reversals/voids: "MTI/STAN" of the original
    reversed: bool = False  # a reversal (terminal 0400 or store-and-forward) was accepted for it
    voided: bool = False
    saf_queued: bool = False
    # amount, DE3 and PAN: a retransmission that differs is answered 94 (switch/reversals.py)
    fingerprint: Fingerprint | None = None

    def finish(self, code: str, response: Message | None) -> None:
        self.code = code
        self.response = response
        self.done.set()


def connection_open(conn: trio.SocketStream | None) -> bool:
    """Whether ``conn`` is a connection that has not closed (None: none known, as after a restart)."""
    return conn is not None and conn.socket.fileno() >= 0


@dataclass
class Terminal:
    """A terminal in memory. Its session follows the rule of specs/README.md, "Terminal sessions":
    ``session`` holds the current working keys and ``conn`` the connection that signed them on; a
    sign-on from another connection while ``conn`` is open leaves them alone and its keys wait in
    ``pending`` (with ``pending_conn``) until a MAC'd request proves them."""

    record: TerminalRecord
    batch_no: int
    session: SessionRow | None
    entries: dict[tuple[str, str], Entry] = field(default_factory=dict)
    lock: trio.Lock = field(default_factory=trio.Lock)
    upload: list[UploadRecord] = field(default_factory=list)  # 0320 records of the batch being reconciled
    conn: trio.SocketStream | None = None
    pending: SessionRow | None = None
    pending_conn: trio.SocketStream | None = None
    signons: deque[float] = field(default_factory=deque)  # times of the sign-ons of the last minute
    generation: int = 0  # +1 at every refresh from the database: concurrent refreshes make one read
    refreshing: trio.Lock = field(default_factory=trio.Lock)

    @property
    def terminal_id(self) -> str:
        return self.record.terminal_id

    @property
    def merchant_id(self) -> str:
        return self.record.merchant_id

    @property
    def signed_on(self) -> bool:
        return self.session is not None and self.session.signed_on

    def held_elsewhere(self, conn: trio.SocketStream | None) -> bool:
        """Whether the current session belongs to an open connection other than ``conn``: then a
        sign-on or sign-off from ``conn`` must not end it. None (a caller without connections) never
        is elsewhere."""
        return conn is not None and self.signed_on and self.conn is not conn and connection_open(self.conn)

    def start_session(self, keys: SessionRow, conn: trio.SocketStream | None) -> None:
        """``keys`` become current on ``conn``; nothing stays pending."""
        self.session, self.conn = keys, conn
        self.pending = self.pending_conn = None

    def sign_on_allowed(self, now: float, per_minute: int) -> bool:
        """Count a sign-on against the per-terminal limit; False once ``per_minute`` were accepted in
        the last 60 s (refused ones are not counted, so a flood does not lock the terminal out longer)."""
        window = self.signons
        while window and now - window[0] >= 60.0:
            window.popleft()
        if len(window) >= per_minute:
            return False
        window.append(now)
        return True

    def find_original(self, stan: str) -> Entry | None:
        """The financial request of this batch with terminal STAN ``stan``."""
        for mti in ("0200", "0100", "0220"):
            entry = self.entries.get((mti, stan))
            if entry is not None:
                return entry
        return None

    def refresh(self, session: SessionRow | None, batch_no: int, rows: list[Any]) -> None:
        """Take what the database holds now (another node may have written it): the session (keys
        changed elsewhere: no connection here holds them), the open batch and its journal entries.
        Entries this node holds stay (one in flight here is newer than the database)."""
        if _keys(session) != _keys(self.session):
            self.session, self.conn, self.pending_conn = session, None, None
            self.pending = session.pending if session is not None else None
        if batch_no != self.batch_no:
            self.new_batch(batch_no)
        for row in rows:
            entry = entry_from_row(row)
            self.entries.setdefault((entry.mti, entry.stan), entry)
        for entry in list(self.entries.values()):
            _apply_links(self, entry)
        self.generation += 1

    def new_batch(self, batch_no: int) -> None:
        self.batch_no = batch_no
        self.entries = {}
        self.upload = []

    def totals(self) -> tuple[int, int, int, int]:
        """(debit amount, debit count, credit amount, credit count) of the batch per pos-dialect.md:
        approved purchases and completions / refunds; voids and reversed or voided ones excluded."""
        debit_amount = debit_count = credit_amount = credit_count = 0
        for entry in self.entries.values():
            if entry.code != "00" or entry.reversed or entry.voided:
                continue
            if is_debit(entry.kind):  # offline advices too (specs/README.md, "Offline sales")
                debit_amount += entry.amount
                debit_count += 1
            elif is_credit(entry.kind):
                credit_amount += entry.amount
                credit_count += 1
        return debit_amount, debit_count, credit_amount, credit_count


def entry_from_row(row: Any) -> Entry:
    response = row["response"]
    if isinstance(response, str):
        response = json.loads(response)
    entry = Entry(
        mti=row["mti"],
        stan=row["stan"],
        kind=row["txn_type"],
        amount=row["amount"] or 0,
        pan_masked=row["pan_masked"],
        link=row["link"],
        link_mti=row["link_mti"],
        link_stan=row["link_stan"],
        link_de7=row["link_de7"],
        link_de32=row["link_de32"],
        rrn=row["rrn"],
        auth_id=row["auth_id"],
        original=row["original"],
        fingerprint=Fingerprint(row["amount"], row["proc_code"], row["pan_masked"]),
    )
    entry.finish(row["response_code"], response or None)
    return entry


Loader = Callable[[str, str], Awaitable[tuple[TerminalRecord | None, SessionRow | None, int, list[Any]]]]


class Registry:
    """Terminals in memory, each loaded once; concurrent first requests share one load."""

    def __init__(self, load: Loader) -> None:
        self._load = load
        self._terminals: dict[tuple[str, str], Terminal] = {}
        self._loading: dict[tuple[str, str], trio.Event] = {}
        self._unknown: dict[str, TerminalRecord | None] = {}

    def __len__(self) -> int:
        return len(self._terminals)

    async def get(self, terminal_id: str, merchant_id: str) -> tuple[Terminal | None, TerminalRecord | None]:
        """(terminal, record): terminal None when the host does not know the pair (record None: unknown
        terminal, 97; record with another merchant: 03). Unknown answers are not cached: a terminal the
        host registers later works at once."""
        key = (terminal_id, merchant_id)
        while True:
            terminal = self._terminals.get(key)
            if terminal is not None:
                return terminal, terminal.record
            loading = self._loading.get(key)
            if loading is None:
                break
            await loading.wait()
        event = self._loading[key] = trio.Event()
        try:
            record, session, batch_no, rows = await self._load(terminal_id, merchant_id)
            if record is None or record.merchant_id != merchant_id:
                return None, record
            terminal = Terminal(record=record, batch_no=batch_no, session=session)
            if session is not None:  # unproven keys of before a restart: no connection holds them now
                terminal.pending = session.pending
            for row in rows:
                entry = entry_from_row(row)
                terminal.entries[(entry.mti, entry.stan)] = entry
            for entry in list(terminal.entries.values()):
                _apply_links(terminal, entry)
            self._terminals[key] = terminal
            return terminal, record
        finally:
            del self._loading[key]
            event.set()

    async def refresh(self, terminal: Terminal) -> None:
        """Read ``terminal``'s session, open batch and journal again (see the module docstring); requests
        that wait while another refreshes it share that read."""
        seen = terminal.generation
        async with terminal.refreshing:
            if terminal.generation != seen:
                return
            record, session, batch_no, rows = await self._load(terminal.terminal_id, terminal.merchant_id)
            if record is not None and record.merchant_id == terminal.merchant_id:
                terminal.record = record
                terminal.refresh(session, batch_no, rows)

    def forget(self, terminal_id: str, merchant_id: str) -> None:
        self._terminals.pop((terminal_id, merchant_id), None)

    def loaded(self) -> list[Terminal]:
        """The terminals in memory (for the catalogue poll: their host state is read again)."""
        return list(self._terminals.values())

    def set_disabled(self, disabled: dict[tuple[str, str], bool]) -> int:
        """Take the host's terminal state (``terminal disable|enable``) into the records in memory; a
        terminal not in ``disabled`` is no longer registered (disabled). Returns how many changed."""
        changed = 0
        for key, terminal in list(self._terminals.items()):
            now = disabled.get(key, True)
            if terminal.record.disabled != now:
                terminal.record = dataclasses.replace(terminal.record, disabled=now)
                changed += 1
        return changed


def _keys(session: SessionRow | None) -> tuple[str, str, str, str, bool] | None:
    if session is None:
        return None
    return session.scheme, session.pik, session.mak, session.tdk, session.signed_on


def _apply_links(terminal: Terminal, entry: Entry) -> None:
    """Re-derive reversed/voided flags of originals from reversal and void entries after a reload."""
    if entry.original is None or entry.code != "00":
        return
    mti, _, stan = entry.original.partition("/")
    original = terminal.entries.get((mti, stan))
    if original is None:
        return
    if entry.kind == "reversal":
        original.reversed = True
    elif entry.kind == "void":
        original.voided = True
