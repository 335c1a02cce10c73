"""Chip cards on the test side: products with a known IMK-AC, and the DE55 a card would make (its ARQC
computed here with hsm_sim.emv from the clear key, as the pos simulator's card does)."""

from __future__ import annotations

from typing import Any

from host import catalog
from hsm_sim import emv
from specs import tlv
from tests.host.harness import Harness, programme

# Known IMK-AC components (custodian entry in the tests): the clear key is their XOR.
IMK_3DES = ["0123456789ABCDEFFEDCBA9876543210", "0" * 32]
IMK_SM4 = ["00112233445566778899AABBCCDDEEFF", "0" * 32]
PSN = "01"


def clear_imk(components: list[str]) -> bytes:
    out = bytes(16)
    for c in components:
        out = bytes(a ^ b for a, b in zip(out, bytes.fromhex(c), strict=True))
    return out


async def chip_programme(
    h: Harness, code: str, alg: str, bin_prefix: str, **spec: Any
) -> list[str]:
    """A chip product whose IMK-AC is formed in the HSM from the known components, with its cards."""
    components = IMK_3DES if alg == "3des" else IMK_SM4
    if alg == "sm4":
        key = await h.crypto.hsm.form_sm4_key(catalog.IMK_AC_TYPE, components)
    else:
        key = await h.crypto.hsm.form_key(catalog.IMK_AC_TYPE, components, "U")
    return await programme(
        h, code, bin_prefix=bin_prefix, chip=alg, imk_ac=key.under_lmk, imk_ac_check=key.check_value, **spec
    )


def session(alg: str, pan: str, atc: int, psn: str = PSN) -> bytes:
    a: emv.Algorithm = "sm4" if alg == "sm4" else "3des"
    imk = clear_imk(IMK_SM4 if a == "sm4" else IMK_3DES)
    return emv.session_key(a, emv.card_master_key(a, imk, pan, psn), atc.to_bytes(2, "big"))


def card_tags(
    alg: str, pan: str, amount: int, atc: int, *, psn: str = PSN, wrong: bool = False
) -> dict[str, bytes]:
    """The card's chip data for a purchase of ``amount`` fen: ARQC_TAGS, 9F26 (ARQC), 9F27 80, 5F34."""
    tags: dict[str, bytes] = {
        "9F02": bytes.fromhex(f"{amount:012d}"),
        "9F03": bytes(6),
        "9F1A": bytes.fromhex("0156"),
        "95": bytes(5),
        "5F2A": bytes.fromhex("0156"),
        "9A": bytes.fromhex("261125"),
        "9C": b"\x00",
        "9F37": bytes.fromhex("1A2B3C4D"),
        "82": bytes.fromhex("7C00"),
        "9F36": atc.to_bytes(2, "big"),
        "9F10": bytes.fromhex("07010103A00000"),
    }
    a: emv.Algorithm = "sm4" if alg == "sm4" else "3des"
    arqc = emv.arqc(a, session(alg, pan, atc, psn), tlv.arqc_data(tags))
    if wrong:
        arqc = bytes([arqc[0] ^ 0x01]) + arqc[1:]
    tags.update({"9F26": arqc, "9F27": b"\x80", "5F34": bytes.fromhex(psn)})
    return tags


def de48(tags: dict[str, bytes]) -> str:
    """H2H DE48 of a chip request: the terminal's DE55 as upper-case hex (specs/README.md)."""
    return tlv.encode(tags).hex().upper()


def chip_fields(alg: str, pan: str, amount: int, atc: int, *, mode: str = "051", **kw: Any) -> dict[str, Any]:
    """The H2H fields of a chip purchase besides DE2 (the harness's message sets it): DE22, DE48."""
    return {"22": mode, "48": de48(card_tags(alg, pan, amount, atc, **kw))}


def issuer_data(answer: dict[str, Any]) -> dict[str, bytes]:
    """The response's chip data (H2H DE48 hex of TLV 91, 8A) as a dict."""
    return tlv.as_dict(tlv.decode(bytes.fromhex(answer["48"])))


def expected_arpc(alg: str, pan: str, atc: int, tags: dict[str, bytes], arc: bytes) -> bytes:
    a: emv.Algorithm = "sm4" if alg == "sm4" else "3des"
    return emv.arpc(a, session(alg, pan, atc), tags["9F26"], arc)
