"""Every list's cursor and every id, given digits that are not ASCII 0-9 or too many of them, is a 4xx
problem, never a 500: "¹".isdigit() is True and int("¹") raises, "٣" is 3 to int(), and a 19-digit
number overflows a bigint parameter. (Schemathesis found GET /v1/cards?cursor=%C2%B9 answering 500.)"""

from __future__ import annotations

from typing import Any

from pos.demo import MERCHANT_ID

ALL_SCOPES = ["cards:read", "cards:write", "cardholders:write", "payments:write", "loads:write",
              "webhooks:write"]
NOT_DIGITS = ["¹", "1²", "٣", "１２", "9" * 19, "-1", " 1"]
LISTS = ["/v1/cardholders", "/v1/cards", "/v1/merchants", f"/v1/merchants/{MERCHANT_ID}/stores",
         f"/v1/merchants/{MERCHANT_ID}/terminals", "/v1/payments", "/v1/webhooks", "/v1/events"]


def test_a_cursor_of_other_digits_is_a_422_problem(make_client: Any) -> None:
    c = make_client(ALL_SCOPES)
    for path in LISTS:
        assert c.get(path).status_code == 200, path
        for cursor in NOT_DIGITS:
            r = c.get(path, params={"cursor": cursor})
            assert r.status_code == 422, (path, cursor, r.status_code, r.text)
            assert r.headers["content-type"].startswith("application/problem+json"), (path, cursor)


def test_an_id_of_other_digits_is_a_404_problem(make_client: Any) -> None:
    c = make_client(ALL_SCOPES)
    for path in ("/v1/cards/card_{}", "/v1/cardholders/ch_{}", "/v1/webhooks/whk_{}"):
        for digits in NOT_DIGITS:
            r = c.get(path.format(digits))
            assert r.status_code == 404, (path, digits, r.status_code, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
