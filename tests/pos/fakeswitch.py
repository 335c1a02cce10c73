"""A minimal switch stand-in for the terminal's own tests: the POS side of the contract only.

It signs terminals on (working keys under their TMK, batch number), checks request MACs (A0 with
the re-sign-on nibble when wrong), approves everything else with an RRN and auth id, answers
balance inquiries, compares 0500 totals with what it approved, and can be told to stay silent for
given STANs (to exercise the terminal's timeout reversal). It runs in a thread with its own trio loop
so click's CliRunner can drive the real CLI against it.
"""

from __future__ import annotations

import itertools
import os
import threading
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from pos.crypto import KeyCipher, Scheme, check_value
from specs import catalogue
from specs.codec import codec_for
from specs.framing import PosFrame, frame, pos_splitter


@dataclass
class FakeSwitch:
    scheme: Scheme
    tmks: dict[str, bytes]
    batch: str = "000001"
    silent: set[tuple[str, str]] = field(default_factory=set)  # (MTI, STAN) left unanswered
    hang_up: set[tuple[str, str]] = field(default_factory=set)  # (MTI, STAN) answered by closing (*)
    refuse: dict[tuple[str, str], str] = field(default_factory=dict)  # (MTI, STAN) answered once with this
    # code and no MAC, as the switch answers what it could not act on (96: its HSM is away)
    seen: list[dict[str, Any]] = field(default_factory=list)
    floor_table: str = ""  # DE48 of the 0810 (specs.catalogue.floor_table_de48); "" sends none
    approved_totals: dict[str, int] = field(default_factory=lambda: {"debit": 0, "credit": 0})
    port: int = 0
    _mak: dict[str, KeyCipher] = field(default_factory=dict)
    _rrn: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _ready: threading.Event = field(default_factory=threading.Event)
    _stop: trio.Event | None = None
    _token: Any = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> FakeSwitch:
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def stop(self) -> None:
        if self._token is not None and self._stop is not None:
            self._token.run_sync_soon(self._stop.set)
        self._thread.join(5)

    async def _main(self) -> None:
        self._stop = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        self._ready.set()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._serve, listeners)
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    async def _serve(self, stream: trio.SocketStream) -> None:
        splitter = pos_splitter()
        users: set[str] = set()  # terminals that sent on this connection
        leaving: set[str] = set()  # those of them whose hang-up request came
        try:
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                for data in splitter.feed(chunk):
                    if self._hang_up_request(data, users, leaving):
                        if leaving == users:
                            await stream.aclose()
                            return
                        continue
                    reply = self.handle(data)
                    if reply is not None:
                        await stream.send_all(frame(reply))
        except trio.BrokenResourceError:
            return

    def _hang_up_request(self, data: bytes, users: set[str], leaving: set[str]) -> bool:
        """Whether ``data`` is a hang-up request (never answered).

        (*) The connection closes once every terminal on it has sent its hang-up request: terminals
        sharing a connection may be a request apart, and the ones behind get their answers till then.
        """
        if not self.hang_up:
            return False
        msg = codec_for("pos", self.scheme).decode(PosFrame.parse(data).message)
        users.add(str(msg["41"]))
        if (msg["t"], msg.get("11")) not in self.hang_up:
            return False
        self.seen.append(msg)
        leaving.add(str(msg["41"]))
        return True

    # -- the POS side ----------------------------------------------------------------------------
    def handle(self, data: bytes) -> bytes | None:
        request = PosFrame.parse(data)
        body = request.message
        codec = codec_for("pos", self.scheme)
        msg = codec.decode(body)
        self.seen.append(msg)
        if (msg["t"], msg.get("11")) in self.silent:
            return None
        tid = str(msg["41"]).strip()
        out: dict[str, Any] = {
            "t": catalogue.response_mti(msg["t"]),
            "11": msg["11"],
            "41": msg["41"],
            "42": msg["42"],
            "12": "101010",
            "13": "1125",
        }
        nibble = 0
        refused = self.refuse.pop((msg["t"], str(msg.get("11"))), None)
        if refused is not None:
            out.update({"39": refused, "60": msg["60"]})
        elif msg["t"] == "0800":
            out.update({"39": "00", "60": self._with_batch(msg["60"]), "62": self._keys(tid)})
            if self.floor_table:
                out["48"] = self.floor_table
        elif msg["t"] == "0820":
            out.update({"39": "00", "60": msg["60"]})
        elif msg["t"] == "0320":
            if msg["60"].endswith("202"):  # end of the upload: the batch closes
                self.batch = f"{int(self.batch) + 1:06d}"
            out.update({"39": "00", "60": self._with_batch(msg["60"])})
        elif msg["t"] == "0500":
            domestic, foreign = catalogue.parse_batch_totals(str(msg["48"]))
            balanced = (
                domestic.debit_amount == self.approved_totals["debit"]
                and domestic.credit_amount == self.approved_totals["credit"]
            )
            if balanced:
                self.batch = f"{int(self.batch) + 1:06d}"  # the batch closes, the next number is issued
            domestic = replace(domestic, result="1" if balanced else "2")
            out.update(
                {
                    "39": "00",
                    "60": self._with_batch(msg["60"]),
                    "48": catalogue.batch_totals_de48(domestic, foreign),
                }
            )
        else:
            mak = self._mak.get(tid)
            if mak is None or mak.pos_mac(body[:-8]) != msg["64"]:
                out.update({"39": "A0", "60": msg["60"]})
                nibble = 3
            else:
                out.update({k: msg[k] for k in ("2", "3", "4", "25", "49", "60", "61") if k in msg})
                out.update({"39": "00", "32": "48880000", "37": f"{next(self._rrn):012d}", "38": "A12345"})
                kind = (msg["t"], msg["3"], msg.get("25"))
                amount = int(msg.get("4", "0"))
                if kind == ("0200", "000000", "00") or kind == ("0200", "000000", "06"):
                    self.approved_totals["debit"] += amount
                elif kind == ("0200", "200000", "00"):  # a void takes its purchase out of the batch
                    self.approved_totals["debit"] -= amount
                elif catalogue.is_offline_advice(msg["t"], msg["3"], msg.get("60")):
                    self.approved_totals["debit"] += amount  # an offline sale's advice: a debit
                elif kind[0] == "0220":
                    self.approved_totals["credit"] += amount
                if msg["3"] == "310000":
                    out["54"] = catalogue.balance_de54(98_766)
                out["64"] = bytes(8)
                raw = codec.encode(out)
                return request.response_prefix(nibble) + raw[:-8] + mak.pos_mac(raw[:-8])
        return request.response_prefix(nibble) + codec.encode(out)

    def _with_batch(self, de60: str) -> str:
        """The request's DE60 with 60.2 set to the switch's current batch."""
        return str(replace(catalogue.De60.parse(de60), batch=self.batch))

    def _keys(self, tid: str) -> bytes:
        tmk = KeyCipher(self.scheme, self.tmks[tid])
        pik, tdk = os.urandom(16), os.urandom(16)
        mak = os.urandom(8 if self.scheme == "3des" else 16)
        self._mak[tid] = KeyCipher(self.scheme, mak)
        return catalogue.WorkingKeys(
            tmk.encrypt(pik),
            check_value(self.scheme, pik),
            tmk.encrypt(mak),
            check_value(self.scheme, mak),
            tmk.encrypt(tdk),
            check_value(self.scheme, tdk),
        ).build(self.scheme)
