"""`payswitch product add|update --chip ...` and `product chip-key` end to end: real database, real HSM."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.pg import query
from tests.host.chip_helpers import IMK_3DES, IMK_SM4
from tests.host.helpers import cli_env, ok, run


@pytest.fixture(scope="module")
def env(db_url: str, hsm_server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return cli_env(tmp_path_factory.mktemp("chipcli"), db_url, hsm_server.env)


def test_chip_options_and_key(env: dict[str, str], db_url: str) -> None:
    added = ok(env, "product", "add", "EMV", "--kind", "reloadable", "--bin", "622670", "--chip", "sm4",
               "--chip-fallback", "flag", "--no-cvm-limit", "200.00", "--no-cvm-cumulative-limit", "500.00")
    assert len(added["imk_ac_check_value"]) == 6  # generated in the HSM; only its check value shown
    row = query(db_url, "SELECT chip, imk_ac, chip_fallback, no_cvm_limit, no_cvm_cumulative_limit"
                        " FROM products WHERE code = 'EMV'")[0]
    assert (row["chip"], row["chip_fallback"], row["no_cvm_limit"], row["no_cvm_cumulative_limit"]) == (
        "sm4", "flag", 20_000, 50_000)
    assert row["imk_ac"].startswith("S")
    assert row["imk_ac"][1:] not in run(env, "product", "show", "EMV").output
    shown = ok(env, "product", "show", "EMV")
    assert shown["chip"] == "sm4" and shown["imk_ac_check_value"] == added["imk_ac_check_value"]
    assert shown["no_cvm_limit_minor"] == 20_000
    formed = ok(env, "product", "chip-key", "EMV", "--component", IMK_SM4[0], "--component", IMK_SM4[1])
    assert formed["chip"] == "sm4" and formed["imk_ac_check_value"] != added["imk_ac_check_value"]
    # the same components give the same key: the check value is the custodians' confirmation
    again = ok(env, "product", "chip-key", "EMV", "--component", IMK_SM4[0], "--component", IMK_SM4[1])
    assert again["imk_ac_check_value"] == formed["imk_ac_check_value"]
    changed = ok(env, "product", "update", "EMV", "--chip", "3des")
    assert "chip" in changed["changed"] and "imk_ac" not in changed["changed"]
    assert query(db_url, "SELECT imk_ac FROM products WHERE code = 'EMV'")[0]["imk_ac"].startswith("U")
    ok(env, "product", "chip-key", "EMV", "--component", IMK_3DES[0], "--component", IMK_3DES[1])
    ok(env, "product", "update", "EMV", "--chip", "none")
    assert query(db_url, "SELECT imk_ac FROM products WHERE code = 'EMV'")[0]["imk_ac"] is None
    refused = run(env, "product", "chip-key", "EMV", "--component", IMK_3DES[0], "--component", IMK_3DES[1])
    assert refused.exit_code == 1 and "has no chip" in refused.output
    bad = run(env, "product", "chip-key", "NOPE", "--component", "00")
    assert bad.exit_code == 1 and "Traceback" not in bad.output
    plain = ok(env, "product", "add", "MAG", "--kind", "reloadable", "--bin", "622671")
    assert "imk_ac_check_value" not in plain
    # the components never reach the audit log
    audit = query(db_url, "SELECT after::text AS a FROM audit_log WHERE action LIKE '%chip-key%'")
    assert audit and all(IMK_SM4[0] not in r["a"] and IMK_3DES[0] not in r["a"] for r in audit)
