"""In-process access to the HSM engine for known-answer tests (the service tests use the real process)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from Crypto.Cipher import DES, DES3

from hsm_sim.engine import Engine
from hsm_sim.lmk import Lmk

TMK = "0123456789ABCDEFFEDCBA9876543210"
ZERO32 = "0" * 32


@dataclass(frozen=True)
class Answer:
    code: str
    error: str
    fields: str


class Hsm:
    """Send a command (text after the header) to an in-process engine with the test LMK."""

    def __init__(self, header_length: int = 4) -> None:
        self.engine = Engine(Lmk.test_set(), header_length)
        self.header = b"H" * header_length

    def raw(self, request: bytes) -> bytes:
        out, _label, _err = self.engine.execute(self.header + request)
        assert out.startswith(self.header)
        return out[len(self.header) :]

    def __call__(self, request: str | bytes) -> Answer:
        data = request.encode("latin-1") if isinstance(request, str) else request
        out = self.raw(data)
        return Answer(out[:2].decode(), out[2:4].decode(), out[4:].decode("latin-1"))

    def ok(self, request: str | bytes) -> str:
        answer = self(request)
        assert answer.error == "00", answer
        return answer.fields

    def form(self, key_type: str, clear: str) -> str:
        """A 3DES key (32H or 48H clear) under the LMK, formed with A4 from clear + zero component."""
        scheme = "U" if len(clear) == 32 else "T"
        out = self.ok(f"A42{key_type}{scheme}{clear}{'0' * len(clear)}")
        return out[: 1 + len(clear)]

    def form_sm4(self, key_type: str, clear: str) -> str:
        return self.ok(f"WK2{key_type}{clear}{ZERO32}")[:33]

    def import_z(self, key_type: str, kek: str, under: str, tmk: bool = True) -> str:
        """A single-length (scheme Z) key from under a TMK/ZMK."""
        return self.ok(f"A6{key_type}{kek}{under}Z{';1' if tmk else ''}")[:16]


def ecb(key_hex: str) -> Any:
    """Independent DES/3DES (pycryptodome) ECB cipher for cross-checks."""
    key = bytes.fromhex(key_hex)
    return DES.new(key, DES.MODE_ECB) if len(key) == 8 else DES3.new(key, DES3.MODE_ECB)


def gm_sm4(key: bytes, data: bytes, decrypt: bool = False) -> bytes:
    """Independent SM4-ECB (gmssl, pure Python), no padding."""
    from gmssl.sm4 import SM4_DECRYPT, SM4_ENCRYPT, CryptSM4

    sm4 = CryptSM4(padding_mode=-1)  # neither PKCS7 (0) nor ZERO (1): raw blocks
    sm4.set_key(key, SM4_DECRYPT if decrypt else SM4_ENCRYPT)
    out: bytes = sm4.crypt_ecb(data)
    return out
