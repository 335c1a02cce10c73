"""A POS terminal for the switch tests: clear keys (as a terminal holds them), frames built with
specs.codec, MACs and PIN blocks computed with hsm_sim's pure crypto (tests only)."""

from __future__ import annotations

import itertools
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from hsm_sim import pin as pinlib
from hsm_sim.crypto import BlockCipher, des, sm4
from hsm_sim.mac import cup_ecb_mac
from specs.codec import codec_for
from specs.framing import pos_frame

TMK_HEX = "0123456789ABCDEFFEDCBA9876543210"
_STANS = itertools.count(int(time.time() * 10) % 900_000)


def cipher(scheme: str, key: bytes) -> BlockCipher:
    return sm4(key) if scheme == "sm4" else des(key)


@dataclass
class Response:
    header: bytes
    tpdu: bytes
    msg: dict[str, Any]
    raw: bytes

    @property
    def code(self) -> str:
        return str(self.msg.get("39", ""))

    @property
    def resign(self) -> bool:
        return (self.header[2] & 0x0F) == 3


@dataclass
class Terminal:
    scheme: str
    terminal_id: str
    merchant_id: str
    tmk: bytes = field(default_factory=lambda: bytes.fromhex(TMK_HEX))
    pik: bytes | None = None
    mak: bytes | None = None
    tdk: bytes | None = None
    batch: int = 1
    stan: int = 0
    sock: socket.socket | None = None

    @property
    def codec(self) -> Any:
        return codec_for("pos", self.scheme)

    def connect(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def next_stan(self) -> str:
        # STANs unique across Terminal objects of a test run: the switch treats a repeated
        # MTI + STAN in the same batch as a retransmission.
        return f"{next(_STANS) % 999_999 + 1:06d}"

    # -- wire ------------------------------------------------------------------------------------
    def send_raw(self, data: bytes) -> None:
        assert self.sock is not None
        self.sock.sendall(data)

    def recv(self) -> Response | None:
        assert self.sock is not None
        head = _recv_exact(self.sock, 2)
        if head is None:
            return None
        n = int.from_bytes(head, "big")
        body = _recv_exact(self.sock, n)
        assert body is not None
        raw = body[11:]
        return Response(header=body[5:11], tpdu=body[:5], msg=self.codec.decode(raw), raw=raw)

    def exchange(self, msg: dict[str, Any], *, mac: bool = True, bad_mac: bool = False) -> Response:
        self.send_raw(self.frame(msg, mac=mac, bad_mac=bad_mac))
        response = self.recv()
        assert response is not None, "switch closed the connection"
        return response

    def frame(self, msg: dict[str, Any], *, mac: bool = True, bad_mac: bool = False) -> bytes:
        if mac:
            assert self.mak is not None
            raw = self.codec.encode({**msg, "64": bytes(8)})
            value = cup_ecb_mac(cipher(self.scheme, self.mak), self.codec.mac_block(raw))
            if bad_mac:
                value = b"00000000" if value != b"00000000" else b"11111111"
            raw = self.codec.with_mac(raw, value)
        else:
            raw = self.codec.encode(msg)
        return pos_frame(raw, tpdu=bytes.fromhex("6000010002"), header=bytes.fromhex("603100000102"))

    def verify_mac(self, response: Response) -> bool:
        assert self.mak is not None
        mac = response.msg.get("64")
        return mac == cup_ecb_mac(cipher(self.scheme, self.mak), self.codec.mac_block(response.raw))

    # -- messages --------------------------------------------------------------------------------
    def sign_on_msg(self) -> dict[str, Any]:
        return {
            "t": "0800",
            "11": self.next_stan(),
            "41": self.terminal_id,
            "42": self.merchant_id,
            "60": f"00{self.batch:06d}{'004' if self.scheme == '3des' else '005'}",
            "63": "01 ",
        }

    def sign_on(self) -> Response:
        response = self.exchange(self.sign_on_msg(), mac=False)
        if response.code == "00":
            self.take_keys(response.msg["62"])
            self.batch = int(response.msg["60"][2:8])
        return response

    def take_keys(self, de62: bytes) -> None:
        c = cipher(self.scheme, self.tmk)
        if self.scheme == "3des":
            parts = [(de62[0:16], de62[16:20]), (de62[20:28], de62[36:40]), (de62[40:56], de62[56:60])]
            assert de62[28:36] == bytes(8)
        else:
            parts = [(de62[0:16], de62[16:20]), (de62[20:36], de62[36:40]), (de62[40:56], de62[56:60])]
        keys = []
        for enc, cv in parts:
            key = c.decrypt(enc)
            zero = bytes(16 if self.scheme == "sm4" else 8)
            assert cipher(self.scheme, key).encrypt(zero)[:4] == cv, "check value mismatch"
            keys.append(key)
        self.pik, self.mak, self.tdk = keys

    def pin_block(self, pin: str, pan: str) -> bytes:
        assert self.pik is not None
        account = pan[:-1][-12:].rjust(12, "0")
        clear = pinlib.sm4_encode(pin, account) if self.scheme == "sm4" else pinlib.encode(pin, account)
        return cipher(self.scheme, self.pik).encrypt(clear)

    def purchase_msg(
        self, pan: str, amount: int, pin: str | None = None, stan: str | None = None, expiry: str = "3012"
    ) -> dict[str, Any]:
        msg: dict[str, Any] = {
            "t": "0200",
            "2": pan,
            "3": "000000",
            "4": f"{amount:012d}",
            "11": stan or self.next_stan(),
            "14": expiry,
            "22": "011" if pin else "012",
            "25": "00",
            "41": self.terminal_id,
            "42": self.merchant_id,
            "49": "156",
            "60": f"22{self.batch:06d}000",
        }
        if pin is not None:
            msg["26"] = "12"
            msg["52"] = self.pin_block(pin, pan)
            msg["53"] = ("26" if self.scheme == "3des" else "24") + "0" * 14
        return msg

    def reversal_msg(self, original: dict[str, Any], reason: str = "98") -> dict[str, Any]:
        msg = {k: v for k, v in original.items() if k not in ("26", "52", "53", "35", "36", "64")}
        msg["t"] = "0400"
        msg["39"] = reason
        return msg


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except ConnectionResetError:  # closed by the switch with unread data: a reset
            return None
        if not chunk:
            return data or None
        data += chunk
    return data
