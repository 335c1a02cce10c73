"""One unit for money in front of people (issue 15, item 6), audited over the commands that show money.

Against a real seeded system (PostgreSQL, HSM, host, switch, the demo programme and its tour), each
command runs twice: with `--json` and without. In the JSON, every amount is an integer `*_minor` field
with a `currency` beside it (in the same object or one around it), and no other field that names money
holds a number or an amount as text. In the human text, every amount is yuan with two decimals and
thousands grouped, followed by ` CNY` unless a header names it ("amount (CNY)"), and every `*_minor` amount of
the JSON is there in that form (a raw 50000 for 500.00 CNY fails). Money typed in is yuan with up to
two decimals, everywhere: the money options take `1,234.5` and refuse `1.234` in one line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from ops.money import format_amount
from pos.demo import MERCHANT_ID
from pos.sealed import read_sealed
from pos.system import System

# A JSON key that names money; counts, rates, ids, times and the like that share a word are not money.
MONEY_KEY = re.compile(r"amount|balance|fee|limit|total|net|gross|payable|face_value|payout|hold|sum")
NOT_MONEY_KEY = re.compile(r"count|bps|_bp\b|bp$|rate|uses|days|months|tries|pct|percent|_id$|_at$|"
                           r"seconds|share|rule|version|date|cycle|file|reference|limit_kind|kind|"
                           r"^us_|^ms_|_us$|_ms$")  # durations
# A decimal number in text: not part of a dotted address/version, not a rate, a time or a size.
DECIMAL = re.compile(r"(?<![\d.,:/A-Za-z_])(\d[\d,]*\.\d+)(?![\d.]|\s*(?:%|ms\b|s\b|bps\b|MB\b|KB\b|x\b))")
MONEY_TEXT = re.compile(r"\d{1,3}(,\d{3})*\.\d{2}")


TOUR: list[str] = []


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    # `card load 1,234.5` shows the grouping: above the four-eyes amount, so that amount is raised here
    with System(settings={"console.four_eyes_minor": "10000000"}) as s:
        s.start(seed=("--load-terminals", "1", "--load-cards", "1"))
        TOUR.append(s.cli("demo", "tour").stdout)
        yield s


def _looks_like_amount(item: Any) -> bool:
    if isinstance(item, bool):
        return False
    return isinstance(item, (int, float)) or (
        isinstance(item, str) and re.fullmatch(r"-?[\d,]+(\.\d+)?( [A-Z]{3})?", item) is not None
    )


def _json_problems(value: Any, path: str = "", currency_around: bool = False) -> list[str]:
    problems: list[str] = []
    if isinstance(value, list):
        for i, item in enumerate(value):
            problems += _json_problems(item, f"{path}[{i}]", currency_around)
        return problems
    if not isinstance(value, dict):
        return problems
    currency_here = currency_around or "currency" in value
    for key, item in value.items():
        where = f"{path}.{key}" if path else key
        if key.endswith("_minor"):
            if not (item is None or (isinstance(item, int) and not isinstance(item, bool))):
                problems.append(f"{where} = {item!r} is not an integer")
            if not currency_here:
                problems.append(f"{where} has no currency beside it")
        elif (
            MONEY_KEY.search(key)
            and not NOT_MONEY_KEY.search(key)
            and _looks_like_amount(item)
        ):
            problems.append(f"{where} = {item!r}: an amount in JSON is {key}_minor plus currency")
        problems += _json_problems(item, where, currency_here)
    return problems


def _minor_values(value: Any) -> list[int]:
    if isinstance(value, list):
        return [v for item in value for v in _minor_values(item)]
    if isinstance(value, dict):
        found = [v for k, v in value.items() if k.endswith("_minor") and isinstance(v, int)]
        return found + [v for item in value.values() for v in _minor_values(item)]
    return []


def _human_problems(text: str, minors: list[int]) -> list[str]:
    problems = []
    # a table whose header names the currency ("amount (CNY)") may show bare amounts below it
    header_names_cny = re.search(r"\((CNY|in CNY)\)", text) is not None
    for m in DECIMAL.finditer(text):
        number = m.group(1)
        follows = text[m.end() : m.end() + 4]
        line = text[text.rfind("\n", 0, m.start()) + 1 : text.find("\n", m.end()) % (len(text) + 1)]
        if not MONEY_TEXT.fullmatch(number):
            problems.append(f"{number!r} is not yuan with two decimals, in: {line.strip()}")
        elif follows != " CNY" and not header_names_cny:
            problems.append(f"{number!r} has no currency (and no header names CNY), in: {line.strip()}")
    for minor in set(minors) - {0}:  # a zero may be left out (no face value, nothing held)
        shown = format_amount(minor)
        if not re.search(rf"(?<![\d,.]){re.escape(shown)}(?![\d,])", text):
            problems.append(f"the JSON's {minor} minor is not shown as {shown} (CNY)")
    return problems


def _audit(
    system: System,
    *args: str,
    json_args: tuple[str, ...] | None = None,
    not_money: str | None = None,
    exit_code: int = 0,
) -> dict[str, Any]:
    """Run ``args`` for people and ``json_args`` (default ``args``) with --json; the JSON document.
    ``not_money``: a pattern of the human text that is no amount (a column of durations)."""
    human = system.cli(*args, check=False)
    assert human.returncode == exit_code, f"payswitch {' '.join(args)}: {human.stderr or human.stdout}"
    as_json = system.cli("--json", *(json_args or args), check=False)
    assert as_json.returncode == exit_code, f"payswitch --json {' '.join(args)}: {as_json.stderr}"
    data = json.loads(as_json.stdout)
    problems = _json_problems(data)
    # the same command run again for JSON moves the figures (a load, a purchase): compare what is shown
    # with its own run only where the second run cannot differ
    minors = _minor_values(data) if json_args is None else []
    problems += _human_problems(re.sub(not_money, " ", human.stdout) if not_money else human.stdout, minors)
    assert not problems, f"payswitch {' '.join(args)}:\n  " + "\n  ".join(problems) + f"\n{human.stdout}"
    return dict(data) if isinstance(data, dict) else {"items": data}


@pytest.fixture(scope="module")
def alice(system: System) -> dict[str, Any]:
    cards = read_sealed(system.root / "var/pos/demo-cards.json", system.seal_key)["cards"]
    return dict(next(c for c in cards if c["name"] == "alice"))


def test_card_commands(system: System, alice: dict[str, Any]) -> None:
    pan = alice["pan"]
    _audit(system, "card", "show", pan)
    _audit(
        system,
        *("card", "load", pan, "--amount", "1,234.5", "--reference", "money-audit-1"),
        json_args=("card", "load", pan, "--amount", "0.05", "--reference", "money-audit-2"),
    )
    _audit(system, "card", "history", pan)
    _audit(system, "card", "show", "alice")  # a demo card's label, as pos takes it
    _audit(system, "card", "list", "--product", "CAMPUS")
    _audit(
        system,
        *("card", "unload", "bob", "--amount", "1.50", "--reference", "money-audit-3"),
        json_args=("card", "unload", "bob", "--amount", "0.50", "--reference", "money-audit-4"),
    )


def test_catalogue_commands(system: System) -> None:
    _audit(system, "product", "list")
    _audit(system, "product", "show", "CAMPUS")
    _audit(system, "merchant", "list")
    _audit(system, "merchant", "show", MERCHANT_ID)


def test_pos_receipts(system: System) -> None:
    _audit(system, "pos", "balance", "--card", "alice")
    _audit(
        system,
        *("pos", "purchase", "12.34", "--card", "alice"),
        json_args=("pos", "purchase", "0.07", "--card", "alice"),
    )
    # a decline (61, over the per-purchase limit) shows its amount alike; exit 3 is "declined"
    _audit(system, "pos", "purchase", "99,999.00", "--card", "carol", exit_code=3)


def test_fee_commands(system: System) -> None:
    _audit(
        system,
        *("settlement", "fee-add", MERCHANT_ID, "audit-1", "--from", "2026-01-01", "--rate-bp", "60"),
        *("--fixed", "0.50", "--min", "1", "--max", "1,000.00"),
        json_args=(
            *("settlement", "fee-add", MERCHANT_ID, "audit-2", "--from", "2026-01-02", "--rate-bp", "60"),
            *("--fixed", "0.25", "--min", "0.10"),
        ),
    )
    _audit(system, "settlement", "fees")


def test_clearing_and_settlement(system: System) -> None:
    """The day closed early (helper G's `clearing close-day`), its file, the settlement and its runs."""
    system.cli("clearing", "close-day")
    emitted = _audit(system, "clearing", "emit")
    files = [str(f.get("file") or f.get("path")) for f in emitted.get("files", [])] or [
        str(emitted.get("file") or emitted.get("path"))
    ]
    _audit(system, "settle", *files, json_args=("settle", *files))
    for file in files:
        _audit(system, "settlement", "reconcile", file)
    _audit(system, "settlement", "check")
    runs = _audit(system, "settlement", "run", "list")
    for run in runs.get("runs", runs.get("items", []))[:1]:
        _audit(system, "settlement", "run", "show", str(run["run_id"]))


def test_the_tour_and_its_payout(system: System) -> None:
    """`demo tour` (= make demo): every receipt and the payout it ends with."""
    (tour,) = TOUR
    assert "is paid" in tour and "payout file" in tour, tour[-600:]
    problems = _human_problems(tour, [])
    assert not problems, "payswitch demo tour:\n  " + "\n  ".join(problems)


def test_more_commands_that_may_show_money(system: System) -> None:
    _audit(system, "card", "expire", "--dry-run")
    _audit(system, "switch", "saf", "list", "--all")
    _audit(system, "store", "list")
    _audit(system, "terminal", "list")


def test_switch_journal(system: System) -> None:
    # its "total ms" column is the time the switch took (one decimal, in milliseconds)
    _audit(system, "switch", "journal", "show", "--limit", "20", not_money=r"(?<= )\d+\.\d(?=  )")


@pytest.mark.parametrize(
    "args",
    [
        ("card", "load", "1", "--amount"),
        ("product", "add", "MONEYIN", "--kind", "reloadable", "--bin", "621298", "--max-balance"),
        ("product", "add", "MONEYIN", "--kind", "reloadable", "--bin", "621298", "--per-txn-limit"),
        ("product", "add", "MONEYIN", "--kind", "reloadable", "--bin", "621298", "--daily-amount-limit"),
        ("product", "add", "MONEYIN", "--kind", "fixed_amount", "--bin", "621298", "--face-value"),
        ("product", "update", "CAMPUS", "--max-balance"),
        ("card", "unload", "1", "--amount"),
        ("settlement", "fee-add", "*", "v-in", "--from", "2026-01-01", "--rate-bp", "1", "--fixed"),
        ("settlement", "fee-add", "*", "v-in", "--from", "2026-01-01", "--rate-bp", "1", "--min"),
        ("settlement", "fee-add", "*", "v-in", "--from", "2026-01-01", "--rate-bp", "1", "--max"),
        ("pos", "purchase", "--card", "alice", "--amount"),
        ("pos", "preauth", "--card", "alice"),
        ("load", "-c", "1", "--amount"),
    ],
    ids=lambda a: f"{a[0]} {a[1]} {a[-1]}",
)
def test_money_inputs_are_yuan_with_two_decimals(system: System, args: tuple[str, ...]) -> None:
    """Three decimals is refused in one line naming the rule, never taken as minor units or rounded."""
    r = system.cli(*args, "1.234", check=False)
    out = r.stderr + r.stdout
    assert r.returncode in (1, 2) and "Traceback" not in out, out
    assert "1.234" in out and "decimals" in out, out
