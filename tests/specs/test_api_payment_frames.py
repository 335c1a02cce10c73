"""The API's worked examples (specs/README.md, "API payments and loads" [project convention]) built byte
for byte by api.payments.build_message on the H2H contract's example link (DE128 with pycryptodome): a
card-not-present purchase (entry mode 812) and a programme-funded load (DE3 210000, DE102 = its funding
reference), both from the API's acquirer id; and how the host reads them (host.h2h.parse)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from api.payments import CNP_ENTRY_MODE, LOAD_TERMINAL, build_message, rrn_of
from host import h2h
from host.model import Txn
from specs.codec import codec_for
from tests.specs.macref import x919_mac

ZAK = "0123456789ABCDEFFEDCBA9876543210"  # h2h-dialect.md worked example link key
PAN = "6212345678901234567"
API = "48889999"  # api.institution_id (default)
LOCAL = dt.datetime(2025, 11, 25, 10, 10, 10, tzinfo=dt.UTC).astimezone(ZoneInfo("Asia/Shanghai"))

CNP_FRAME = (  # after the 2-byte length 00AE
    "0200" "F23C048108C08000" "0000000000000001" "19" "6212345678901234567" "000000" "000000002500"
    "1125101010" "000780" "181010" "1125" "3012" "812" "00" "08" "48889999" "532918000780" "T0000001"
    "898330160120001" "156" "252997014CC85322"
)
LOAD_FRAME = (  # after the 2-byte length 00B1
    "0200" "F238048108808000" "0000000004000001" "19" "6212345678901234567" "210000" "000000050000"
    "1125101011" "000781" "181010" "1125" "812" "00" "08" "48889999" "532918000781" "APILOAD1" "156"
    "20" "wire-2025-11-25-0042" "AC2365DB4FD46A47"
)


def _signed(msg: dict[str, object]) -> bytes:
    codec = codec_for("h2h", "3des")
    raw = codec.encode({**msg, "128": bytes(8)})
    return codec.with_mac(raw, x919_mac(bytes.fromhex(ZAK), codec.mac_block(raw)))


def test_card_not_present_purchase_byte_for_byte() -> None:
    msg = build_message(mti="0200", de3="000000", pan=PAN, amount=2500, currency="156", de7="1125101010",
                        stan="000780", local=LOCAL, entry_mode=CNP_ENTRY_MODE, terminal_id="T0000001",
                        merchant_id="898330160120001", rrn=rrn_of("000780", LOCAL), institution_id=API,
                        expiry="3012")
    raw = _signed(msg)
    assert raw.decode() == CNP_FRAME and len(raw) == 0xAE
    parsed = h2h.parse(codec_for("h2h", "3des").decode(raw), API)
    assert parsed.request is not None and parsed.request.card_not_present
    assert parsed.request.txn is Txn.PURCHASE and parsed.request.expiry == "3012"
    # the same message from any other acquirer is an ordinary keyed purchase: the product's PIN rule holds
    other = h2h.parse({**msg, "32": "48880000"}, API)
    assert other.request is not None and not other.request.card_not_present


def test_programme_load_byte_for_byte() -> None:
    msg = build_message(mti="0200", de3="210000", pan=PAN, amount=50000, currency="156", de7="1125101011",
                        stan="000781", local=LOCAL, entry_mode=CNP_ENTRY_MODE, terminal_id=LOAD_TERMINAL,
                        merchant_id="", rrn=rrn_of("000781", LOCAL), institution_id=API,
                        original_rrn="wire-2025-11-25-0042")
    raw = _signed(msg)
    assert raw.decode() == LOAD_FRAME and len(raw) == 0xB1
    parsed = h2h.parse(codec_for("h2h", "3des").decode(raw), API)
    assert parsed.request is not None
    assert parsed.request.txn is Txn.ADMIN_LOAD and parsed.request.reference == "wire-2025-11-25-0042"
    assert parsed.request.original_rrn is None
    # a top-up from a merchant's acquirer stays a merchant-funded cash top-up
    cash = h2h.parse({**msg, "32": "48880000", "42": "898330160120001"}, API)
    assert cash.request is not None and cash.request.txn is Txn.TOPUP and cash.request.reference is None
