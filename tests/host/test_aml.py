"""AML screening (issue 16 item 3): a synthetic watch list imported through the CLI, cardholders screened
by ``host.aml.screen`` (transliterated, reordered, punctuated, alias, different people, a different
birth year), the threshold from the configuration, import refusals, re-import, the review queue and the
operator's decisions (confirm freezes the cards). Real PostgreSQL; properties of the normalisation with
hypothesis."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from rapidfuzz import fuzz

from host import aml
from ops.config import ConfigError, load
from tests.host.helpers import cli_env, ok, programme, run

T = TypeVar("T")

# Invented people (no real person is meant): a Chinese name in characters, a Cyrillic one, one with
# diacritics and aliases, one with a full date of birth, one with a year only.
LIST_A = """name,aliases,date_of_birth,list,reference
王小明,Wang Hsiao-ming,1975,TESTLIST,TL-001
Иван Петрович Сидоров,Ivan Sidorov;Vanya Sidorov,1960-03-04,TESTLIST,TL-002
José Müller-Lüdenscheidt,Pepe Muller,,TESTLIST,TL-003
Oksana Quillfeather,The Quill;O. Quillfeather,1982,TESTLIST,TL-004
Barnabus Okonkwo-Fairweather,,1955-07-30,TESTLIST,TL-005
"""


def _db(db_url: str, work: Callable[[Any], Awaitable[T]]) -> T:
    async def go() -> T:
        conn = await asyncpg.connect(db_url)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(go())


def _sql(db_url: str, sql: str, *args: Any) -> list[Any]:
    return _db(db_url, lambda conn: conn.fetch(sql, *args))


def _cardholder(db_url: str, name: str, birth: dt.date | None = None) -> int:
    """A cardholder row made by SQL (registration is host.cardholders'; screening needs only the row)."""
    return int(
        _sql(
            db_url,
            "INSERT INTO cardholders (name, name_key, birth_date) VALUES ($1, lower($1), $2) RETURNING id",
            name,
            birth,
        )[0]["id"]
    )


def _screen(
    db_url: str, cid: int, name: str, birth: dt.date | None = None, threshold: int = 88
) -> list[aml.Hit]:
    return _db(db_url, lambda conn: aml.screen(conn, cid, name, birth, threshold=threshold))


def _status(db_url: str, cid: int) -> str:
    return str(_sql(db_url, "SELECT aml_status FROM cardholders WHERE id = $1", cid)[0]["aml_status"])


@pytest.fixture(scope="module")
def env(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("aml")
    e = cli_env(root, db_url, {})
    listfile = root / "list_a.csv"
    listfile.write_text(LIST_A)
    out = ok(e, "aml", "list", "import", str(listfile))
    assert out["imports"][0]["entries"] == 5 and out["imports"][0]["list"] == "TESTLIST"
    return e


# -- matching against the list --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("Wang Xiaoming", "TL-001"),  # pinyin against characters
        ("Xiaoming Wang", "TL-001"),  # reordered
        ("WANG Xiao-Ming", "TL-001"),  # case, hyphen
        ("Wang Xiao Ming", "TL-001"),  # syllables apart
        ("王小明", "TL-001"),  # the same characters
        ("Ivan Sidorov", "TL-002"),  # an alias (and the Cyrillic name transliterated)
        ("SIDOROV, Ivan Petrovich", "TL-002"),  # reordered, punctuation
        ("Ivan P. Sidorov", "TL-002"),  # a middle name shortened: token_set, two shared tokens
        ("Jose Muller-Ludenscheidt", "TL-003"),  # diacritics dropped
        ("josé müller lüdenscheidt", "TL-003"),
        ("The Quill", "TL-004"),  # alias
        ("Barnabus Okonkwo Fairweather", "TL-005"),
    ],
)
def test_hits(env: dict[str, str], db_url: str, name: str, reference: str) -> None:
    cid = _cardholder(db_url, name)
    hits = _screen(db_url, cid, name)
    assert [h.reference for h in hits] == [reference], hits
    assert hits[0].score >= 88
    assert _status(db_url, cid) == "review"
    [row] = _sql(
        db_url,
        "SELECT list_name, reference, decision, screened_name FROM aml_hits WHERE cardholder_id = $1",
        cid,
    )
    assert (row["list_name"], row["reference"], row["decision"], row["screened_name"]) == (
        "TESTLIST",
        reference,
        "pending",
        name,
    )


@pytest.mark.parametrize(
    "name",
    ["Li Xiaohong", "Zhang Wei", "Ivan Ivanov", "Maria Garcia", "Wang", "Sidorov Petr", "Barnabus Smith"],
)
def test_different_people_are_no_hit(env: dict[str, str], db_url: str, name: str) -> None:
    cid = _cardholder(db_url, name)
    assert _screen(db_url, cid, name) == []
    assert _status(db_url, cid) == "clear"
    [s] = _sql(db_url, "SELECT entries, hits, threshold FROM aml_screenings WHERE cardholder_id = $1", cid)
    assert (s["entries"], s["hits"], s["threshold"]) == (5, 0, 88)


def test_date_of_birth_decides_when_both_have_one(env: dict[str, str], db_url: str) -> None:
    # the list gives 1975 for TL-001: another year is no hit whatever the name score
    other = _cardholder(db_url, "Wang Xiaoming", dt.date(1990, 5, 1))
    assert _screen(db_url, other, "Wang Xiaoming", dt.date(1990, 5, 1)) == []
    assert _status(db_url, other) == "clear"
    same = _cardholder(db_url, "Wang Xiaoming", dt.date(1975, 11, 2))
    assert [h.reference for h in _screen(db_url, same, "Wang Xiaoming", dt.date(1975, 11, 2))] == ["TL-001"]
    # a full date on both sides: the date must be the same, not just the year
    apart = _cardholder(db_url, "Ivan Sidorov", dt.date(1960, 3, 5))
    assert _screen(db_url, apart, "Ivan Sidorov", dt.date(1960, 3, 5)) == []
    born = _cardholder(db_url, "Ivan Sidorov", dt.date(1960, 3, 4))
    assert [h.reference for h in _screen(db_url, born, "Ivan Sidorov", dt.date(1960, 3, 4))] == ["TL-002"]
    # no date on the list (TL-003): the name decides
    nodate = _cardholder(db_url, "Jose Muller Ludenscheidt", dt.date(2001, 1, 1))
    assert [
        h.reference for h in _screen(db_url, nodate, "Jose Muller Ludenscheidt", dt.date(2001, 1, 1))
    ] == ["TL-003"]


def test_threshold_changes_the_outcome(env: dict[str, str], db_url: str) -> None:
    near = "Oksana Quilfeather"  # one letter short: about 97
    cid = _cardholder(db_url, near)
    assert _screen(db_url, cid, near, threshold=100) == []
    assert [h.reference for h in _screen(db_url, cid, near, threshold=90)] == ["TL-004"]
    # through the configuration: `aml rescreen` uses aml.threshold
    far = _cardholder(db_url, "Oksanna Quilfeathers")
    strict = {**env, "PAYSWITCH_AML_THRESHOLD": "99"}
    ok(strict, "aml", "rescreen")
    assert _status(db_url, far) == "clear"
    ok({**env, "PAYSWITCH_AML_THRESHOLD": "85"}, "aml", "rescreen")
    assert _status(db_url, far) == "review"
    with pytest.raises(ConfigError, match=r"aml.threshold = '101': expected an integer from 0 to 100"):
        load(env={**env, "PAYSWITCH_AML_THRESHOLD": "101"})


def test_confirmed_is_never_lowered_by_screening(env: dict[str, str], db_url: str) -> None:
    cid = _cardholder(db_url, "Barnabus Okonkwo-Fairweather")
    _screen(db_url, cid, "Barnabus Okonkwo-Fairweather")
    ok(env, "aml", "confirm", str(cid), "--reason", "same passport")
    assert _status(db_url, cid) == "confirmed"
    _screen(db_url, cid, "Barnabus Okonkwo-Fairweather")
    assert _status(db_url, cid) == "confirmed"


# -- import -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "line", "why"),
    [
        ("name,aliases,date_of_birth,list,reference\nA B,,1970-02-30,L,1\n", "line 2", "not a date"),
        ("name,aliases,date_of_birth,list,reference\nA B,,,L,1\nC D,,19x0,L,2\n", "line 3", "date_of_birth"),
        ("name,aliases,date_of_birth,list,reference\nA B,,,L,1\n,,,L,2\n", "line 3", "name is empty"),
        ("name,aliases,date_of_birth,list,reference\nA B,,,L,1\nC D,,,L,1\n", "line 3", "also on line 2"),
        ("name,aliases,date_of_birth,list,reference\nA B,,,,1\n", "line 2", "list is empty"),
        ("name,aliases,date_of_birth,list,reference\nA B,,,L\n", "line 2", "4 fields"),
        ("name,aliases,dob,list,reference\nA B,,,L,1\n", "line 1", "header"),
        ("name,aliases,date_of_birth,list,reference\nA B,,,L,\n", "line 2", "reference"),
        ("name,aliases,date_of_birth,list,reference\n", "", "no entries"),
        ("name,aliases,date_of_birth,list,reference\n!!!,,,L,1\n", "line 2", "no letters"),
    ],
)
def test_a_bad_file_is_refused_whole_in_one_line(
    env: dict[str, str], db_url: str, tmp_path: Path, body: str, line: str, why: str
) -> None:
    before = _sql(db_url, "SELECT count(*) AS n FROM aml_imports")[0]["n"]
    f = tmp_path / "bad.csv"
    f.write_text(body)
    result = run(env, "aml", "list", "import", str(f))
    assert result.exit_code == 1, result.output
    [message] = result.output.strip().splitlines()
    assert line in message and why in message and "Traceback" not in message, message
    assert _sql(db_url, "SELECT count(*) AS n FROM aml_imports")[0]["n"] == before


def test_not_utf8_and_wrong_list(env: dict[str, str], tmp_path: Path) -> None:
    f = tmp_path / "latin1.csv"
    f.write_bytes("name,aliases,date_of_birth,list,reference\nJosé,,,L,1\n".encode("latin-1"))
    result = run(env, "aml", "list", "import", str(f))
    assert result.exit_code == 1 and "line 2: not UTF-8" in result.output
    g = tmp_path / "other.csv"
    g.write_text("name,aliases,date_of_birth,list,reference\nA B,,,OTHER,1\n")
    result = run(env, "aml", "list", "import", str(g), "--list", "MINE")
    assert result.exit_code == 1 and "line 2" in result.output and "--list MINE" in result.output


def test_reimport_replaces_the_list_and_is_recorded(env: dict[str, str], db_url: str, tmp_path: Path) -> None:
    f = tmp_path / "second.csv"
    f.write_text(
        "name,aliases,date_of_birth,list,reference\nZebedee Thornquist,,,,S-1\nYolanda Brightwater,,,,S-2\n"
    )
    _cardholder(db_url, "Bystander Quillfeather")  # someone to re-screen, whichever tests ran before
    first = ok(env, "aml", "list", "import", str(f), "--list", "SECOND")
    assert first["imports"][0]["entries"] == 2 and first["imports"][0]["replaced"] == 0
    assert "rescreen" in first and first["rescreen"]["screened"] >= 1
    cid = _cardholder(db_url, "Zebedee Thornquist")
    assert [h.reference for h in _screen(db_url, cid, "Zebedee Thornquist")] == ["S-1"]
    f.write_text("name,aliases,date_of_birth,list,reference\nYolanda Brightwater,,,,S-2\n")
    again = ok(env, "aml", "list", "import", str(f), "--list", "SECOND")
    assert again["imports"][0]["replaced"] == 2 and again["imports"][0]["entries"] == 1
    refs = [
        r["reference"] for r in _sql(db_url, "SELECT reference FROM aml_entries WHERE list_name = 'SECOND'")
    ]
    assert refs == ["S-2"]
    late = _cardholder(db_url, "Zebedee Thornquist")
    assert _screen(db_url, late, "Zebedee Thornquist") == []  # the entry is gone
    # the other list is untouched; both imports are recorded with the file's hash and who
    shown = {r["list"]: r for r in ok(env, "aml", "list", "show")["lists"]}
    assert shown["TESTLIST"]["entries"] == 5 and shown["SECOND"]["entries"] == 1
    assert shown["SECOND"]["imports"] == 2 and shown["SECOND"]["actor"].startswith("cli:")
    assert len(shown["SECOND"]["file_sha256"]) == 64
    human = run(env, "aml", "list", "show")
    assert human.exit_code == 0 and "SECOND" in human.output and "TESTLIST" in human.output


def test_import_rescreens_everyone_and_says_so(env: dict[str, str], db_url: str, tmp_path: Path) -> None:
    cid = _cardholder(db_url, "Quentin Marblethorpe")
    _screen(db_url, cid, "Quentin Marblethorpe")
    assert _status(db_url, cid) == "clear"
    f = tmp_path / "third.csv"
    f.write_text("name,aliases,date_of_birth,list,reference\nMarblethorpe Quentin,,,THIRD,Q-1\n")
    result = run(env, "aml", "list", "import", str(f))
    assert result.exit_code == 0, result.output
    assert "re-screened" in result.output and "list THIRD: 1 entries" in result.output
    assert _status(db_url, cid) == "review"


# -- review and decisions ------------------------------------------------------------------------------
def test_review_then_clear(env: dict[str, str], db_url: str) -> None:
    cid = _cardholder(db_url, "Vanya Sidorov")
    _screen(db_url, cid, "Vanya Sidorov")
    queue = {p["cardholder_id"]: p for p in ok(env, "aml", "review", "--limit", "1000")["review"]}
    assert [h["reference"] for h in queue[cid]["hits"]] == ["TL-002"]
    assert queue[cid]["hits"][0]["list"] == "TESTLIST" and queue[cid]["hits"][0]["score"] >= 88
    assert "TL-002" in run(env, "aml", "review", "--limit", "1000").output
    missing = run(env, "aml", "clear", str(cid))
    assert missing.exit_code == 2  # --reason is required
    out = ok(env, "aml", "clear", str(cid), "--reason", "different person: born 1991, other ID")
    assert out == {"cardholder_id": cid, "aml_status": "clear", "hits": 1, "frozen_cards": []}
    assert _status(db_url, cid) == "clear"
    [h] = ok(env, "aml", "hits", str(cid))["hits"]
    assert (
        h["decision"] == "cleared"
        and h["decided_by"].startswith("cli:")
        and h["reason"].startswith("different")
    )
    # a re-screen of the same name against the same entry does not raise the cleared hit again
    _screen(db_url, cid, "Vanya Sidorov")
    assert _status(db_url, cid) == "clear"
    # clearing again: nothing in review
    again = run(env, "aml", "clear", str(cid), "--reason", "x")
    assert again.exit_code == 1 and "not in review" in again.output
    assert run(env, "aml", "clear", "999999999", "--reason", "x").exit_code == 1
    assert run(env, "aml", "confirm", "nobody", "--reason", "x").exit_code == 1


def test_review_then_confirm_freezes_the_cards(env: dict[str, str], db_url: str) -> None:
    pans = _db(db_url, lambda conn: programme(conn, cards=3, code="AMLP"))
    cid = _cardholder(db_url, "Pepe Muller")
    ids = [r["id"] for r in _sql(db_url, "SELECT id FROM cards ORDER BY id DESC LIMIT $1", len(pans))]
    _sql(db_url, "UPDATE cards SET cardholder_id = $1 WHERE id = ANY($2::bigint[])", cid, ids)
    _sql(db_url, "UPDATE cards SET state = 'lost' WHERE id = $1", ids[0])  # not live: stays lost
    assert [h.reference for h in _screen(db_url, cid, "Pepe Muller")] == ["TL-003"]
    out = ok(env, "aml", "confirm", str(cid), "--reason", "matches the list's passport")
    assert out["aml_status"] == "confirmed" and sorted(out["frozen_cards"]) == sorted(ids[1:])
    states = {
        r["id"]: r["state"] for r in _sql(db_url, "SELECT id, state FROM cards WHERE cardholder_id = $1", cid)
    }
    assert states == {ids[0]: "lost", ids[1]: "frozen", ids[2]: "frozen"}
    events = _sql(
        db_url,
        "SELECT card_id, action, actor, reason FROM card_events WHERE to_state = 'frozen' AND"
        " card_id = ANY($1::bigint[]) ORDER BY card_id",
        ids,
    )
    assert [e["card_id"] for e in events] == sorted(ids[1:])
    assert all(e["actor"].startswith("cli:") and "AML match confirmed" in e["reason"] for e in events)
    assert _status(db_url, cid) == "confirmed"
    refused = run(env, "aml", "clear", str(cid), "--reason", "oops")
    assert refused.exit_code == 1 and "confirmed" in refused.output
    assert cid not in {p["cardholder_id"] for p in ok(env, "aml", "review", "--limit", "1000")["review"]}


# -- properties -----------------------------------------------------------------------------------------
NAMES = st.text(
    alphabet=st.characters(codec="utf-8", categories=("L", "M", "N", "P", "Zs")), min_size=0, max_size=40
)


@given(NAMES)
def test_normalisation_is_idempotent(name: str) -> None:
    once = aml.normalise(name)
    assert aml.normalise(once) == once
    assert once == once.strip() and "  " not in once and all(ch.isascii() for ch in once)


TOKENS = st.lists(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyzéüИвн王小明", min_size=1, max_size=8), min_size=1, max_size=4
)


@given(TOKENS, st.randoms(use_true_random=False), st.text(alphabet="abcdefghij ", max_size=20))
def test_token_order_does_not_change_the_score(tokens: list[str], rnd: Any, other: str) -> None:
    shuffled = tokens[:]
    rnd.shuffle(shuffled)
    a, b = " ".join(tokens), " ".join(shuffled)
    # the sorted form (what token_sort compares) is the same whatever the order...
    assert aml.forms(a)[0] == aml.forms(b)[0]
    # ...so its score against any name is the same, and it is rapidfuzz's token_sort_ratio
    target = aml.forms(other)[0] if aml.forms(other) else ""
    assert fuzz.ratio(aml.forms(a)[0], target) == fuzz.ratio(aml.forms(b)[0], target)
    assert fuzz.ratio(aml.forms(a)[0], target) == pytest.approx(
        fuzz.token_sort_ratio(aml.normalise(a), aml.normalise(other))
    )
    # and a list entry written in one order is a full hit for the name in any other order
    wl = aml.Watchlist.build((0,), [_entry(a)])
    if aml.normalise(a):
        assert [h.score for h in aml.match(wl, b, None, 100)] == [100.0]


def _entry(name: str) -> dict[str, Any]:
    fs = aml.forms(name) or ["x"]
    return {
        "id": 1,
        "import_id": 0,
        "list_name": "P",
        "reference": "1",
        "name": name,
        "aliases": [],
        "birth_year": None,
        "birth_date": None,
        "forms": fs,
        "form_names": [0] * len(fs),
        "fingerprint": "",
    }


def test_registration_and_name_change_are_screened(
    db_url: str, hsm_server: Any, tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]
) -> None:
    """Through host.cardholders (`cardholder add` / `update`, real HSM): the hit is in the answer."""
    e = cli_env(tmp_path_factory.mktemp("amlreg"), db_url, hsm_server.env)
    added = run(e, "--json", "cardholder", "add", "--name", "Xiaoming WANG", "--birth-date", "1975-06-01")
    assert added.exit_code == 0, added.output
    cid = int(json.loads(added.output)["cardholder_id"])
    assert _status(db_url, cid) == "review"
    clean = run(e, "--json", "cardholder", "add", "--name", "Henrietta Plumtree")
    assert clean.exit_code == 0, clean.output
    other = int(json.loads(clean.output)["cardholder_id"])
    assert _status(db_url, other) == "clear"
    renamed = run(e, "--json", "cardholder", "update", str(other), "--name", "Oksana Quillfeather")
    assert renamed.exit_code == 0, renamed.output
    assert _status(db_url, other) == "review"
    assert [h["reference"] for h in ok(e, "aml", "hits", str(other))["hits"]] == ["TL-004"]
