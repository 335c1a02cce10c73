"""The batch upload's worked examples (specs/README.md, "Batch upload" [project convention]) built byte
for byte: the terminal's 0320 (end of upload, 60.3 202) with three records, the switch's 0330 saying
which per record with the upload's counts, and the H2H 0220 advice that posts the lost approval, on
the H2H contract's example link (DE128 cross-checked with pycryptodome's DES, independently of the
code that builds the frames)."""

from __future__ import annotations

import datetime as dt

from pos import messages
from specs.catalogue import UploadRecord, is_offline_advice, parse_upload_de48
from specs.codec import codec_for
from specs.framing import DEFAULT_HEADER, DEFAULT_TPDU, pos_frame, response_header, swap_tpdu
from switch import mapping
from switch.upload import Counts, Result, answer_de48, parse_answer_de48, upload_advice
from tests.specs.macref import x919_mac

PAN = "6212345678901234567"
ZAK = "0123456789ABCDEFFEDCBA9876543210"  # h2h-dialect.md worked example link key
MATCHED = UploadRecord("000011", PAN, 300)
LOST = UploadRecord("000012", PAN, 900)
RECORDS = [MATCHED, LOST, LOST]  # the lost approval uploaded twice: the second is a duplicate

# fmt: off
POS_0320 = (
    "0076" "6000010000" "603100000000" "0320" "0020000000C10010" "000020" "5430303030303031"
    "383938333330313630313230303031" "0122" "03" "00" "000011" "06212345678901234567" "000000000300"
    "00" "000012" "06212345678901234567" "000000000900" "00" "000012" "06212345678901234567"
    "000000000900" "0011" "000000012020"
)
POS_0330 = (
    "0054" "6000000001" "603100000000" "0330" "0038000102C10010" "000020" "181010" "1125" "08" "48880000"
    "3030" "5430303030303031" "383938333330313630313230303031" "0029" "03" "012"
    "0003" "0001" "0001" "0001" "0000" "0001" "0" "0011" "000000022020"  # 29 digits: one pad nibble
)
H2H_0220 = (  # after the 2-byte length
    "0220" "F23844810CE08010" "0000000000000001" "19" "6212345678901234567" "000000" "000000000900"
    "1125101010" "000779" "180500" "1125" "5812" "000" "00" "08" "48880000" "533010000779" "UPLOAD"
    "T0000001" "898330160120001" "Campus Canteen                          " "156"
    "028" "36000001000/0000010000121125" "CD8AD86B14205A6E"
)
# fmt: on
NOW = dt.datetime(2025, 11, 25, 10, 10, 10, tzinfo=dt.UTC).timestamp()


def test_the_terminal_0320_byte_for_byte() -> None:
    msg = messages.batch_upload("000020", "000001", "T0000001", "898330160120001", RECORDS, last=True)
    frame = pos_frame(codec_for("pos", "3des").encode(msg))
    assert frame.hex().upper() == POS_0320
    assert pos_frame(codec_for("pos", "sm4").encode(msg)) == frame  # no PIN or MAC: both profiles alike
    assert parse_upload_de48(msg["48"]) == RECORDS and msg["60"] == "00000001202"


def test_the_switch_0330_byte_for_byte() -> None:
    request = messages.batch_upload("000020", "000001", "T0000001", "898330160120001", RECORDS, last=True)
    mapping.set_local_zone("Asia/Shanghai")
    try:
        answer = mapping.pos_response(request, code="00", acquirer_id="48880000", now=NOW)
    finally:
        mapping.set_local_zone(None)
    counts = Counts(records=3, matched=1, posted=1, duplicate=1, not_posted=0, terminal_lacks=1)
    answer["48"] = answer_de48([Result.MATCHED, Result.POSTED, Result.DUPLICATE], counts)
    answer["60"] = mapping.de60("00", 2, "202")  # the batch closed: the next one is 000002
    body = codec_for("pos", "3des").encode(answer)
    assert codec_for("pos", "sm4").encode(answer) == body  # both profiles alike
    frame = pos_frame(body, tpdu=swap_tpdu(DEFAULT_TPDU), header=response_header(DEFAULT_HEADER))
    assert frame.hex().upper() == POS_0330
    assert parse_answer_de48(answer["48"]) == (["0", "1", "2"], counts)


def test_the_advice_that_posts_the_lost_approval_byte_for_byte() -> None:
    mapping.set_local_zone("Asia/Shanghai")
    try:
        advice = upload_advice(
            LOST,
            terminal_id="T0000001",
            merchant_id="898330160120001",
            batch=1,
            stan=779,
            de7=mapping.transmission_time(NOW),
            # the sale's local time: that of the timed-out 0200's DE7 (10:05:00 UTC, 18:05 in Shanghai)
            local=mapping.local_time_of("1125100500", NOW) or ("", ""),
            rrn_value="533010000779",
            acquirer_id="48880000",
            mcc="5812",
            merchant_name="Campus Canteen",
        )
    finally:
        mapping.set_local_zone(None)
    codec = codec_for("h2h", "3des")
    raw = codec.encode({**advice, "128": bytes(8)})
    raw = codec.with_mac(raw, x919_mac(bytes.fromhex(ZAK), codec.mac_block(raw)))
    assert raw.decode() == H2H_0220
    assert is_offline_advice("0220", advice["3"], advice["60"])
    # the host's natural key: DE42, DE41, and after the "/" the POS batch and the record's STAN
    assert advice["60"].split("/")[1][:12] == "000001" + LOST.stan
