"""WC (PIN change, project convention: specs/hsm-conventions.md) against an independent computation:
PIN blocks, the Visa PVV and the PIN under the LMK made with pycryptodome (3DES) and gmssl (SM4),
never with hsm_sim's own crypto. The worked example of the conventions file is checked literally."""

from __future__ import annotations

import pytest
from Crypto.Cipher import DES3

from tests.hsm_sim.helpers import Hsm, ecb, gm_sm4

# The worked example (specs/hsm-conventions.md, "WC"): the contract's example keys and card.
ZPK = "0123456789ABCDEFFEDCBA9876543210"
PVK = "1023456789ABCDEF0123456789ABCDE0"
PAN = "6212345678901234567"
ACCOUNT = "567890123456"  # 12 rightmost PAN digits without the check digit
OLD, NEW, PVKI = "123456", "654321", "1"
TEST_LMK_PIN_PAIR = "2020202020202020" "3131313131313131"  # test LMK pair 02-03 (PINs under the LMK)

# What the conventions file shows, byte for byte.
EXAMPLE_OLD_BLOCK = "84615C0FB761528E"
EXAMPLE_REQUEST_3DES_TAIL = "84615C0FB761528E" "C781CE93B6AB4BA0" "567890123456" "1" "2678"
EXAMPLE_ANSWER_3DES = "00" "8754" "LD27D838AA9CB998BC234ABFAA98A528D"


def _clear_block(p: str, account: str = ACCOUNT) -> bytes:
    """ISO 9564 format 0, computed here from its definition."""
    field = int(f"0{len(p):X}{p}".ljust(16, "F"), 16)
    return (field ^ int("0000" + account, 16)).to_bytes(8, "big")


def _des_block(key: str, p: str) -> str:
    out: bytes = ecb(key).encrypt(_clear_block(p))
    return out.hex().upper()


def _sm4_block(key: str, p: str) -> str:
    return gm_sm4(bytes.fromhex(key), _clear_block(p) + b"\xff" * 8).hex().upper()


def _pvv(p: str) -> str:
    out = ecb(PVK).encrypt(bytes.fromhex(ACCOUNT[1:] + PVKI + p[:4])).hex().upper()
    digits = [c for c in out if c.isdigit()] + [str("ABCDEF".index(c)) for c in out if not c.isdigit()]
    return "".join(digits[:4])


def _pin_under_lmk(p: str) -> str:
    pair = bytes.fromhex(TEST_LMK_PIN_PAIR)
    cipher = DES3.new(pair + pair[:8], DES3.MODE_ECB)  # two-key 3DES (left, right, left)
    return "L" + cipher.encrypt(bytes.fromhex(p.ljust(32, "F"))).hex().upper()


@pytest.fixture(scope="module")
def hsm() -> Hsm:
    return Hsm()


@pytest.fixture(scope="module")
def keys(hsm: Hsm) -> dict[str, str]:
    return {"zpk": hsm.form("001", ZPK), "s_zpk": hsm.form_sm4("001", ZPK), "pvk": hsm.form("002", PVK)}


def test_worked_example_matches_the_oracle(keys: dict[str, str]) -> None:
    assert (keys["zpk"], keys["s_zpk"], keys["pvk"]) == (
        "U063A0E7C0F2124E56192A4510F395ED7", "S47A0A446584BBF1C9E55C3A5C7393259",
        "U2CD99450AE653BF185238C4869E5967E",
    )
    assert (_sm4_block(ZPK, OLD), _sm4_block(ZPK, NEW)) == (
        "80F59C123CC8FDB898581FADAF2B69CB", "C29F32F3B0976818575BAAF5F53A92A9"
    )
    assert _des_block(ZPK, OLD) == EXAMPLE_OLD_BLOCK  # the H2H contract's worked-example PIN block
    assert (
        _des_block(ZPK, OLD) + _des_block(ZPK, NEW) + ACCOUNT + PVKI + _pvv(OLD)
    ) == EXAMPLE_REQUEST_3DES_TAIL
    assert "00" + _pvv(NEW) + _pin_under_lmk(NEW) == EXAMPLE_ANSWER_3DES


@pytest.mark.parametrize("alg", ["1", "2"])
def test_wc_verifies_the_old_pin_and_gives_the_new_pvv_and_lmk_pin(
    hsm: Hsm, keys: dict[str, str], alg: str
) -> None:
    zpk, block = (keys["zpk"], _des_block) if alg == "1" else (keys["s_zpk"], _sm4_block)
    request = f"WC{alg}{zpk}{keys['pvk']}{block(ZPK, OLD)}{block(ZPK, NEW)}{ACCOUNT}{PVKI}{_pvv(OLD)}"
    answer = hsm(request)
    assert (answer.code, answer.error) == ("WD", "00")
    assert answer.fields == _pvv(NEW) + _pin_under_lmk(NEW)
    if alg == "1":
        assert request.endswith(EXAMPLE_REQUEST_3DES_TAIL)
        assert answer.error + answer.fields == EXAMPLE_ANSWER_3DES
    # DG of the new PIN under the LMK gives the same PVV: the host's cards.pin_lmk stays usable
    assert hsm.ok(f"DG{keys['pvk']}{_pin_under_lmk(NEW)}{ACCOUNT}{PVKI}") == _pvv(NEW)


@pytest.mark.parametrize("alg", ["1", "2"])
def test_wc_wrong_old_pin_is_01_with_nothing_generated(hsm: Hsm, keys: dict[str, str], alg: str) -> None:
    zpk, block = (keys["zpk"], _des_block) if alg == "1" else (keys["s_zpk"], _sm4_block)
    answer = hsm(f"WC{alg}{zpk}{keys['pvk']}{block(ZPK, '999999')}{block(ZPK, NEW)}{ACCOUNT}1{_pvv(OLD)}")
    assert (answer.code, answer.error, answer.fields) == ("WD", "01", "")


def test_wc_refusals(hsm: Hsm, keys: dict[str, str]) -> None:
    zpk, s_zpk, pvk, pvv = keys["zpk"], keys["s_zpk"], keys["pvk"], _pvv(OLD)
    old, new = _des_block(ZPK, OLD), _des_block(ZPK, NEW)
    bad = ecb(ZPK).encrypt(bytes.fromhex("1" + "0" * 15)).hex().upper()  # not a format-0 block
    two = (int("0212".ljust(16, "F"), 16) ^ int("0000" + ACCOUNT, 16)).to_bytes(8, "big")
    short = ecb(ZPK).encrypt(two).hex().upper()  # a 2-digit PIN
    cases = {
        f"WC1{zpk}{pvk}{old}{bad}{ACCOUNT}1{pvv}": "20",  # a malformed new block: before any verification
        f"WC1{zpk}{pvk}{bad}{new}{ACCOUNT}1{pvv}": "20",
        f"WC1{zpk}{pvk}{old}{short}{ACCOUNT}1{pvv}": "24",
        f"WC2{zpk}{pvk}{old}{new}{ACCOUNT}1{pvv}": "26",  # algorithm 2 with a 3DES ZPK
        f"WC1{s_zpk}{pvk}{old}{new}{ACCOUNT}1{pvv}": "26",
        f"WC3{zpk}{pvk}{old}{new}{ACCOUNT}1{pvv}": "15",
        f"WC1{zpk}{pvk}{old}{new}{ACCOUNT}1{pvv}0": "15",  # a byte too many
        f"WC1{zpk}{pvk}{old}{new}{ACCOUNT[:-1]}": "15",
        f"WC1{pvk}{zpk}{old}{new}{ACCOUNT}1{pvv}": "10",  # a PVK given as the ZPK: wrong key type
    }
    for request, code in cases.items():
        answer = hsm(request)
        assert (answer.error, answer.fields if answer.error != "00" else "") == (code, ""), request
