"""The Local Master Keys: the variant 3DES LMK (20 pairs), the SM4 LMK set, key types, and keys under LMK.

3DES (payShield variant LMK, hsm-commands.md "LMK and keys"): key type ``vPP`` selects LMK pair PP's
slot and key-type variant v. A key part i (8 bytes) is encrypted ECB with two-key 3DES
(left', right'_i, left') where left' = left with the key-type variant XORed into its first byte and
right'_i = right with scheme variant i XORed into its first byte (U: A6, 5A; T: 6A, DE, 2B; Z: none).

SM4 [project convention]: ``S``+32H = SM4-ECB under the pair's SM4 LMK with the key-type variant XORed
into its first byte. The test SM4 LMK of a pair is its 16 test bytes (left ‖ right).

LMK file: JSON, created with mode 0600 by ``create_file`` (O_CREAT|O_EXCL: never overwritten).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from hsm_sim import crypto
from hsm_sim.crypto import BlockCipher
from hsm_sim.errors import INVALID_KEY_TYPE, HsmFault

PAIRS = 20

TEST_LMK_3DES: tuple[tuple[str, str], ...] = (
    ("0101010101010101", "7902CD1FD36EF8BA"),
    ("2020202020202020", "3131313131313131"),
    ("4040404040404040", "5151515151515151"),
    ("6161616161616161", "7070707070707070"),
    ("8080808080808080", "9191919191919191"),
    ("A1A1A1A1A1A1A1A1", "B0B0B0B0B0B0B0B0"),
    ("C1C1010101010101", "D0D0010101010101"),
    ("E0E0010101010101", "F1F1010101010101"),
    ("1C587F1C13924FEF", "0101010101010101"),
    ("0101010101010101", "0101010101010101"),
    ("0202020202020202", "0404040404040404"),
    ("0707070707070707", "1010101010101010"),
    ("1313131313131313", "1515151515151515"),
    ("1616161616161616", "1919191919191919"),
    ("1A1A1A1A1A1A1A1A", "1C1C1C1C1C1C1C1C"),
    ("2323232323232323", "2525252525252525"),
    ("2626262626262626", "2929292929292929"),
    ("2A2A2A2A2A2A2A2A", "2C2C2C2C2C2C2C2C"),
    ("2F2F2F2F2F2F2F2F", "3131313131313131"),
    ("0101010101010101", "0101010101010101"),
)

# Last two digits of a key type → LMK pair index (pair 04-05 is index 2).
_PAIR_OF = {
    "00": 2,
    "01": 3,
    "02": 7,
    "03": 8,
    "04": 9,
    "05": 10,
    "06": 11,
    "07": 12,
    "08": 13,
    "09": 14,
    "0A": 15,
    "0B": 16,
    "0C": 17,
    "0D": 18,
    "0E": 19,
}
_KEY_TYPE_VARIANT = (0x00, 0xA6, 0x5A, 0x6A, 0xDE, 0x2B, 0x50, 0x74, 0x9C, 0xFA)
SCHEME_VARIANTS: dict[str, tuple[int, ...]] = {"Z": (0,), "U": (0xA6, 0x5A), "T": (0x6A, 0xDE, 0x2B)}
SCHEME_LENGTH = {"Z": 8, "U": 16, "T": 24, "S": 16}

PIN_PAIR = 1  # pair 02-03 encrypts PINs under LMK


@dataclass(frozen=True, slots=True)
class KeyType:
    code: str  # e.g. "001", "00A", "402"
    pair: int
    variant: int


def key_type(code: str) -> KeyType:
    """Parse a 3-character key type code; an unknown one is error 04."""
    code = code.upper()
    if len(code) != 3 or not code[0].isdigit() or code[1:] not in _PAIR_OF:
        raise HsmFault(INVALID_KEY_TYPE)
    return KeyType(code, _PAIR_OF[code[1:]], _KEY_TYPE_VARIANT[int(code[0])])


def key_type_from_pair_code(code2: str) -> KeyType:
    """BU's 2-character code: the last two digits of a key type, variant 0."""
    return key_type("0" + code2)


class Lmk:
    """An LMK set. Ciphers per (pair, variants) are built once; decrypted keys are cached by token."""

    def __init__(self, pairs_3des: list[tuple[bytes, bytes]], sm4_keys: list[bytes], test: bool) -> None:
        if len(pairs_3des) != PAIRS or len(sm4_keys) != PAIRS:
            raise ValueError(f"an LMK set has {PAIRS} pairs")
        for left, right in pairs_3des:
            if len(left) != 8 or len(right) != 8:
                raise ValueError("LMK 3DES keys are 8 bytes each")
        if any(len(k) != 16 for k in sm4_keys):
            raise ValueError("SM4 LMKs are 16 bytes each")
        self.pairs = [(bytes(a), bytes(b)) for a, b in pairs_3des]
        self.sm4_keys = [bytes(k) for k in sm4_keys]
        self.test = test
        self._ciphers: dict[tuple[int, int, int], BlockCipher] = {}
        self._sm4_ciphers: dict[tuple[int, int], BlockCipher] = {}
        self._pin = crypto.des(self.pairs[PIN_PAIR][0] + self.pairs[PIN_PAIR][1])

    # -- identity ----------------------------------------------------------------------------------
    @classmethod
    def test_set(cls) -> Lmk:
        pairs = [(bytes.fromhex(a), bytes.fromhex(b)) for a, b in TEST_LMK_3DES]
        return cls(pairs, [a + b for a, b in pairs], test=True)

    @classmethod
    def generate(cls) -> Lmk:
        pairs = []
        for _ in range(PAIRS):
            key = crypto.random_des_key(16)
            pairs.append((key[:8], key[8:]))
        return cls(pairs, [crypto.random_sm4_key() for _ in range(PAIRS)], test=False)

    def check_value(self) -> bytes:
        """The LMK check value: the 3DES check value of pair 00-01."""
        left, right = self.pairs[0]
        return crypto.des_check_value(left + right)

    def sm4_check_value(self) -> bytes:
        return crypto.sm4_check_value(self.sm4_keys[0])

    # -- 3DES keys under LMK ----------------------------------------------------------------------
    def _cipher(self, kt: KeyType, scheme_variant: int) -> BlockCipher:
        slot = (kt.pair, kt.variant, scheme_variant)
        cipher = self._ciphers.get(slot)
        if cipher is None:
            left, right = self.pairs[kt.pair]
            left = bytes([left[0] ^ kt.variant]) + left[1:]
            right = bytes([right[0] ^ scheme_variant]) + right[1:]
            cipher = self._ciphers[slot] = crypto.des(left + right)
        return cipher

    def encrypt_des_key(self, kt: KeyType, scheme: str, clear: bytes) -> bytes:
        variants = SCHEME_VARIANTS[scheme]
        assert len(clear) == 8 * len(variants)
        return b"".join(self._cipher(kt, v).encrypt(clear[8 * i : 8 * i + 8]) for i, v in enumerate(variants))

    def decrypt_des_key(self, kt: KeyType, scheme: str, encrypted: bytes) -> bytes:
        variants = SCHEME_VARIANTS[scheme]
        return b"".join(
            self._cipher(kt, v).decrypt(encrypted[8 * i : 8 * i + 8]) for i, v in enumerate(variants)
        )

    # -- SM4 keys under LMK -----------------------------------------------------------------------
    def _sm4_cipher(self, kt: KeyType) -> BlockCipher:
        slot = (kt.pair, kt.variant)
        cipher = self._sm4_ciphers.get(slot)
        if cipher is None:
            key = self.sm4_keys[kt.pair]
            cipher = self._sm4_ciphers[slot] = crypto.sm4(bytes([key[0] ^ kt.variant]) + key[1:])
        return cipher

    def encrypt_sm4_key(self, kt: KeyType, clear: bytes) -> bytes:
        return self._sm4_cipher(kt).encrypt(clear)

    def decrypt_sm4_key(self, kt: KeyType, encrypted: bytes) -> bytes:
        return self._sm4_cipher(kt).decrypt(encrypted)

    # -- PINs under LMK ---------------------------------------------------------------------------
    def encrypt_pin(self, block16: bytes) -> bytes:
        return self._pin.encrypt(block16)

    def decrypt_pin(self, encrypted: bytes) -> bytes:
        return self._pin.decrypt(encrypted)

    # -- file -------------------------------------------------------------------------------------
    def to_json(self) -> str:
        return (
            json.dumps(
                {
                    "format": "payswitch-lmk/1",
                    "test": self.test,
                    "lmk_3des": [[a.hex().upper(), b.hex().upper()] for a, b in self.pairs],
                    "lmk_sm4": [k.hex().upper() for k in self.sm4_keys],
                    "check_value": self.check_value().hex().upper(),
                    "sm4_check_value": self.sm4_check_value().hex().upper(),
                },
                indent=2,
            )
            + "\n"
        )

    @classmethod
    def from_json(cls, text: str) -> Lmk:
        data = json.loads(text)
        if data.get("format") != "payswitch-lmk/1":
            raise ValueError("not a payswitch LMK file")
        pairs = [(bytes.fromhex(a), bytes.fromhex(b)) for a, b in data["lmk_3des"]]
        lmk = cls(pairs, [bytes.fromhex(k) for k in data["lmk_sm4"]], test=bool(data.get("test", False)))
        if lmk.check_value().hex().upper() != data.get("check_value", "").upper():
            raise ValueError("LMK check value does not match the file's keys")
        return lmk


class LmkFileError(Exception):
    """The LMK file cannot be created or read; str() is one line for the operator."""


def create_file(path: str | Path, lmk: Lmk) -> None:
    """Write ``lmk`` to a new file with mode 0600; refuses to overwrite an existing file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise LmkFileError(f"LMK file {path} already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise LmkFileError(f"LMK file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(lmk.to_json())


def load_file(path: str | Path) -> Lmk:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise LmkFileError(f"LMK file {path} not found; create it with `payswitch hsm init`") from None
    except OSError as exc:
        raise LmkFileError(f"LMK file {path}: {exc.strerror}") from None
    try:
        return Lmk.from_json(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise LmkFileError(f"LMK file {path} is not valid: {exc}") from None


def file_mode(path: str | Path) -> int:
    return os.stat(path).st_mode & 0o777


def file_is_private(path: str | Path) -> bool:
    return (file_mode(path) & 0o077) == 0
