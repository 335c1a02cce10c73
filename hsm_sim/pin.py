"""PIN blocks (ISO 9564 formats 0, 1, 3 and the SM4 16-byte form) and the Visa PVV.

Clear PINs exist only inside these functions' frames; nothing here logs. Invalid blocks raise
``HsmFault`` with the contract's code: 20 bad values, 23 unknown format, 24 PIN length out of 4..12.
"""

from __future__ import annotations

import secrets

from hsm_sim.crypto import BlockCipher
from hsm_sim.errors import PIN_BLOCK_FORMAT, PIN_BLOCK_INVALID, PIN_LENGTH, HsmFault

# payShield PIN block format codes
FORMAT_ISO0 = "01"
FORMAT_ISO1 = "05"
FORMAT_ISO3 = "47"
FORMATS = (FORMAT_ISO0, FORMAT_ISO1, FORMAT_ISO3)

_SM4_PAD = b"\xff" * 8


def account_from_pan(pan: str) -> str:
    """The 12 rightmost PAN digits excluding the check digit, left-padded with 0 (the 12N account)."""
    return pan[:-1][-12:].rjust(12, "0")


def account_field(account: str) -> bytes:
    """``0000`` + the 12 account digits, as 8 bytes."""
    return bytes.fromhex("0000" + account)


def check_format(code: str) -> None:
    if code not in FORMATS:
        raise HsmFault(PIN_BLOCK_FORMAT)


def encode(pin: str, account: str, fmt: str = FORMAT_ISO0) -> bytes:
    """Clear 8-byte PIN block of ``pin`` in format ``fmt``."""
    n = len(pin)
    if not 4 <= n <= 12:
        raise HsmFault(PIN_LENGTH)
    if fmt == FORMAT_ISO0:
        field = f"0{n:X}{pin}".ljust(16, "F")
        return _xor8(bytes.fromhex(field), account_field(account))
    if fmt == FORMAT_ISO1:
        fill = secrets.token_hex(8).upper()
        return bytes.fromhex((f"1{n:X}{pin}" + fill)[:16])
    if fmt == FORMAT_ISO3:
        fill = "".join("ABCDEF"[secrets.randbelow(6)] for _ in range(14))
        return _xor8(bytes.fromhex((f"3{n:X}{pin}" + fill)[:16]), account_field(account))
    raise HsmFault(PIN_BLOCK_FORMAT)


def decode(block: bytes, account: str, fmt: str = FORMAT_ISO0) -> str:
    """The PIN in a clear 8-byte block; raises 20/23/24 on a block that is not well formed."""
    if fmt in (FORMAT_ISO0, FORMAT_ISO3):
        nibbles = _xor8(block, account_field(account)).hex().upper()
        control = "0" if fmt == FORMAT_ISO0 else "3"
        fill_ok = "F" if fmt == FORMAT_ISO0 else "ABCDEF"
    elif fmt == FORMAT_ISO1:
        nibbles = block.hex().upper()
        control, fill_ok = "1", "0123456789ABCDEF"
    else:
        raise HsmFault(PIN_BLOCK_FORMAT)
    if nibbles[0] != control:
        raise HsmFault(PIN_BLOCK_INVALID)
    n = int(nibbles[1], 16)
    if not 4 <= n <= 12:
        raise HsmFault(PIN_LENGTH)
    pin = nibbles[2 : 2 + n]
    if not pin.isdigit() or any(c not in fill_ok for c in nibbles[2 + n :]):
        raise HsmFault(PIN_BLOCK_INVALID)
    return pin


def sm4_encode(pin: str, account: str) -> bytes:
    """16-byte SM4 PIN block: format-0 block then 8 bytes FF."""
    return encode(pin, account, FORMAT_ISO0) + _SM4_PAD


def sm4_decode(block: bytes, account: str) -> str:
    if block[8:] != _SM4_PAD:
        raise HsmFault(PIN_BLOCK_INVALID)
    return decode(block[:8], account, FORMAT_ISO0)


def _xor8(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(8, "big")


def visa_pvv(pvk: BlockCipher, account: str, pvki: str, pin: str) -> str:
    """Visa PVV: TSP = 11 rightmost account digits (the check digit already excluded) + PVKI + the
    4 leftmost PIN digits, 3DES-encrypted; the first 4 decimal digits of the result, scanning again
    with A-F decimalised (A→0 … F→5) when there are fewer than 4."""
    tsp = account[-11:] + pvki + pin[:4]
    out = pvk.encrypt(bytes.fromhex(tsp)).hex().upper()
    digits = [c for c in out if c.isdigit()]
    if len(digits) < 4:
        digits += [str(int(c, 16) - 10) for c in out if not c.isdigit()]
    return "".join(digits[:4])


def random_pin(length: int) -> str:
    if not 4 <= length <= 12:
        raise HsmFault(PIN_LENGTH)
    return "".join(str(secrets.randbelow(10)) for _ in range(length))


def lmk_pin_block(pin: str) -> bytes:
    """The 16-byte clear form of a PIN under LMK [project convention]: PIN digits, then F to 32 nibbles."""
    return bytes.fromhex(pin.ljust(32, "F"))


def lmk_pin_decode(block: bytes) -> str:
    text = block.hex().upper()
    pin = text.rstrip("F")
    if not pin.isdigit():
        raise HsmFault(PIN_BLOCK_INVALID)
    if not 4 <= len(pin) <= 12:
        raise HsmFault(PIN_LENGTH)
    return pin
