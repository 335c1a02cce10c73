"""Offline advices at the issuer (issue 19 item 4, host.offline): real PostgreSQL, the real HSM process
and the host over a real H2H socket."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from host import h2h
from host.admin import admin_load
from host.check import receivables, run_checks
from host.client import H2HClient
from host.model import TOMBSTONE, Txn
from host.offline import advice_key
from tests.host.harness import MERCHANT, TERMINAL, Harness, message, programme, reversal, running_host

BATCH = "000001"


def run(db_url: str, hsm_server: Any, body: Callable[[Harness], Awaitable[None]]) -> None:
    async def main() -> None:
        async with running_host(db_url, hsm_server) as h:
            await body(h)
            failed = [r for r in await h.pool.run(run_checks) if not r.ok]
            assert not failed, failed

    trio.run(main)


def advice(
    c: H2HClient, pan: str, amount: int, sale_stan: str, *, approval: str = "OFF123"
) -> dict[str, Any]:
    """H2H 0220 of an offline sale as the switch forwards it: DE60 = POS DE60 + "/" + POS DE61."""
    return message(
        c,
        pan,
        amount,
        mti="0220",
        proc="000000",
        cond="00",
        **{"60": f"36{BATCH}000/{BATCH}{sale_stan}1125", "38": approval, "22": "051"},
    )


async def balance(h: Harness, pan: str) -> tuple[int, int]:
    """(card's available balance, what its offline receivable is owed), fen."""

    async def q(conn: Any) -> tuple[int, int]:
        row = await conn.fetchrow(
            """SELECT a.credits_posted - a.debits_posted - a.debits_pending AS available,
                      coalesce(r.debits_posted - r.credits_posted, 0) AS owed
               FROM cards c JOIN accounts a ON a.id = c.account_id
               LEFT JOIN accounts r ON r.id = c.offline_receivable_id
               WHERE c.pan_masked = $1""",
            pan[:6] + "*" * (len(pan) - 10) + pan[-4:],
        )
        return int(row["available"]), int(row["owed"])

    return await h.pool.run(q)


def masked(pan: str) -> str:
    return pan[:6] + "*" * (len(pan) - 10) + pan[-4:]


async def offline_transfers(h: Harness, *pans: str) -> list[tuple[str, str, int]]:
    """The offline transfers of the cards (the module's database is shared by its tests)."""

    async def q(conn: Any) -> list[tuple[str, str, int]]:
        rows = await conn.fetch(
            """SELECT t.key, t.code, t.amount FROM transfers t JOIN cards c ON c.id = t.card_id
               WHERE t.code LIKE 'offline%' AND c.pan_masked = ANY($1::text[]) ORDER BY t.id""",
            [masked(p) for p in pans],
        )
        return [(r["key"], r["code"], r["amount"]) for r in rows]

    return await h.pool.run(q)


def test_advice_within_balance_posts_card_to_merchant(db_url: str, hsm_server: Any) -> None:
    async def body(h: Harness) -> None:
        (pan,) = await programme(h, "OFFA", cards=1, load=10_000, offline_floor_limit=5_000)
        c = h.client
        answer = await c.request(advice(c, pan, 3_000, "000101"))
        assert answer["t"] == "0230" and answer["39"] == "00"
        assert answer["38"] == "OFF123"  # the terminal's own approval code stays the sale's
        assert await balance(h, pan) == (7_000, 0)
        key = advice_key(MERCHANT, TERMINAL, BATCH, "000101")
        assert await offline_transfers(h, pan) == [(key, "offline", 3_000)]

        async def cleared(conn: Any) -> Any:
            return await conn.fetchrow(
                "SELECT txn_type, sign, amount, auth_id, local_time FROM clearing_postings WHERE rrn <> ''"
                " AND txn_type = 'PURCHASE'"
            )

        row = await h.pool.run(cleared)
        assert (row["txn_type"], row["sign"], row["amount"], row["auth_id"]) == (
            "PURCHASE",
            "D",
            3_000,
            "OFF123",
        )
        assert row["local_time"] == "1125101010"  # the sale's local time (DE13 + DE12)

    run(db_url, hsm_server, body)


def test_shortfall_goes_to_the_receivable_blocks_online_until_topped_up(db_url: str, hsm_server: Any) -> None:
    async def body(h: Harness) -> None:
        pan, other = await programme(
            h, "OFFB", bin_prefix="621235", cards=2, load=1_000, offline_floor_limit=5_000
        )
        c = h.client
        assert (await c.request(advice(c, pan, 3_000, "000201")))["39"] == "00"
        assert await balance(h, pan) == (0, 2_000)
        owing = await h.pool.run(receivables)
        assert [(o.pan_masked[-4:], o.owed) for o in owing] == [(pan[-4:], 2_000)]
        assert "owes 20.00 yuan" in owing[0].line() and pan not in owing[0].line()
        buy = await c.request(message(c, pan, 100))
        assert buy["39"] == "51"
        assert (await c.request(message(c, other, 100)))["39"] == "00"  # another card is not blocked

        async def reason(conn: Any) -> str:
            return str(
                await conn.fetchval(
                    "SELECT reason FROM auth_requests WHERE stan = $1 AND txn = 'purchase'", buy["11"]
                )
            )

        assert await h.pool.run(reason) == "offline_receivable_due"
        # a top-up repays first; part of it is not enough to lift the block
        assert (await c.request(message(c, pan, 1_500, proc="210000")))["39"] == "00"
        assert await balance(h, pan) == (0, 500)
        assert (await c.request(message(c, pan, 100)))["39"] == "51"
        assert (await c.request(message(c, pan, 2_500, proc="210000")))["39"] == "00"
        assert await balance(h, pan) == (2_000, 0)
        assert await h.pool.run(receivables) == []
        assert (await c.request(message(c, pan, 100)))["39"] == "00"
        assert await balance(h, pan) == (1_900, 0)
        codes = [(code, amount) for _key, code, amount in await offline_transfers(h, pan)]
        assert sorted(codes) == [
            ("offline", 3_000),
            ("offline_repay", 500),
            ("offline_repay", 1_500),
            ("offline_shortfall", 2_000),
        ]

    run(db_url, hsm_server, body)


def test_reversing_a_top_up_that_repaid_owes_the_debt_again(db_url: str, hsm_server: Any) -> None:
    """A top-up that went to the receivable is reversed (its answer was lost): the card gives back only
    what it kept, the receivable lends the rest again, so the debt and the block are as before."""

    async def body(h: Harness) -> None:
        (pan,) = await programme(
            h, "OFFR", bin_prefix="621251", cards=1, load=1_000, offline_floor_limit=5_000
        )
        c = h.client
        assert (await c.request(advice(c, pan, 3_000, "000451")))["39"] == "00"
        assert await balance(h, pan) == (0, 2_000)
        all_repaid = message(c, pan, 1_500, proc="210000")  # all of it repays: the card keeps nothing
        assert (await c.request(all_repaid))["39"] == "00"
        assert await balance(h, pan) == (0, 500)
        assert (await c.request(reversal(c, all_repaid)))["39"] == "00"
        assert await balance(h, pan) == (0, 2_000)
        part = message(c, pan, 3_000, proc="210000")  # repays 2,000, the card keeps 1,000
        assert (await c.request(part))["39"] == "00"
        assert await balance(h, pan) == (1_000, 0)
        assert (await c.request(reversal(c, part)))["39"] == "00"
        assert await balance(h, pan) == (0, 2_000)
        assert (await c.request(reversal(c, part)))["39"] == "00"  # never undone twice
        assert await balance(h, pan) == (0, 2_000)
        assert (await c.request(message(c, pan, 100)))["39"] == "51"  # blocked again

    run(db_url, hsm_server, body)


def test_card_load_repays_and_above_floor_limit_still_posts(db_url: str, hsm_server: Any) -> None:
    async def body(h: Harness) -> None:
        (pan,) = await programme(h, "OFFC", bin_prefix="621236", cards=1, load=500, offline_floor_limit=1_000)
        c = h.client
        assert (await c.request(advice(c, pan, 4_000, "000301")))["39"] == "00"  # above the floor: posted
        assert await balance(h, pan) == (0, 3_500)

        async def card_id(conn: Any) -> int:
            key = advice_key(MERCHANT, TERMINAL, BATCH, "000301")
            return int(await conn.fetchval("SELECT card_id FROM auth_requests WHERE key = $1", key))

        d = await admin_load(h.pool, await h.pool.run(card_id), 5_000)
        assert d.code == "00"
        assert await balance(h, pan) == (1_500, 0)

    run(db_url, hsm_server, body)


def test_duplicate_advice_posts_once_and_is_never_reversed(db_url: str, hsm_server: Any) -> None:
    async def body(h: Harness) -> None:
        (pan,) = await programme(
            h, "OFFD", bin_prefix="621237", cards=1, load=2_000, offline_floor_limit=5_000
        )
        c = h.client
        first = advice(c, pan, 1_200, "000401")
        again = advice(c, pan, 1_200, "000401")  # its own DE7/DE11: the same sale sent again
        assert first["11"] != again["11"]
        assert (await c.request(first))["39"] == "00"
        repeat = await c.request({**again, "t": "0221"})
        assert repeat["39"] == "00" and repeat["38"] == "OFF123"
        assert await balance(h, pan) == (800, 0)
        assert len(await offline_transfers(h, pan)) == 1
        assert (await c.request(reversal(c, first, mti="0420")))["39"] == "00"  # nothing undone
        assert await balance(h, pan) == (800, 0)
        # a later sale of the same terminal (another STAN) is another advice
        assert (await c.request(advice(c, pan, 300, "000402")))["39"] == "00"
        assert await balance(h, pan) == (500, 0)

        async def tombstones(conn: Any) -> int:
            return int(await conn.fetchval("SELECT count(*) FROM auth_requests WHERE txn = $1", TOMBSTONE))

        assert await h.pool.run(tombstones) == 0  # the reversal left no tombstone either

    run(db_url, hsm_server, body)


def test_fifty_concurrent_advices_some_repeated_post_once_each(db_url: str, hsm_server: Any) -> None:
    async def body(h: Harness) -> None:
        pans = await programme(h, "OFFE", bin_prefix="621238", cards=5, load=3_000, offline_floor_limit=5_000)
        clients = [h.client, *[await h.connect() for _ in range(4)]]
        sales = [(pans[i % 5], 100 + i * 10, f"{500 + i:06d}") for i in range(40)]
        sends = sales + sales[:10]  # ten of them twice, over other connections
        answers: list[str] = []

        async def send(n: int, sale: tuple[str, int, str]) -> None:
            c = clients[n % len(clients)]
            answers.append((await c.request(advice(c, *sale)))["39"])

        async with trio.open_nursery() as nursery:
            for n, sale in enumerate(sends):
                nursery.start_soon(send, n, sale)
        assert answers == ["00"] * 50
        posted = [(k, a) for k, code, a in await offline_transfers(h, *pans) if code == "offline"]
        assert len(posted) == 40 and len({k for k, _ in posted}) == 40
        assert sum(a for _, a in posted) == sum(a for _, a, _ in sales)
        for i, pan in enumerate(pans):
            spent = sum(a for p, a, _ in sales if p == pan)
            available, owed = await balance(h, pan)
            assert available - owed == 3_000 - spent, i
            assert available >= 0 and owed >= 0

    run(db_url, hsm_server, body)


def test_advice_refused_when_it_names_no_sale() -> None:
    def parse(**fields: Any) -> str:
        msg = {
            "t": "0220",
            "3": "000000",
            "4": "000000000100",
            "7": "1125101010",
            "11": "000001",
            "25": "00",
            "32": "48880000",
            "41": TERMINAL,
            "42": MERCHANT,
            "2": "6212340000000000001",
            "38": "OFF123",
            "60": f"36{BATCH}000/{BATCH}0001011125",
            **fields,
        }
        msg = {k: v for k, v in msg.items() if v is not None}
        try:
            parsed = h2h.parse(msg)
        except h2h.BadRequest as exc:
            return exc.code
        assert parsed.request is not None and parsed.request.txn is Txn.OFFLINE
        assert parsed.request.key == advice_key(MERCHANT, TERMINAL, BATCH, "000101")
        return "ok"

    assert parse() == "ok"
    assert parse(**{"60": f"22{BATCH}000/{BATCH}0001011125"}) == "12"  # no 60.1 36: not an advice
    assert parse(**{"60": f"36{BATCH}000"}) == "30"  # no POS DE61 after '/'
    assert parse(**{"60": f"36{BATCH}000/{BATCH}00A1011125"}) == "30"
    assert parse(**{"38": None}) == "30"
    assert parse(**{"4": "000000000000"}) == "30"


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.text(max_size=40), st.text(max_size=8))
def test_advice_parse_never_crashes(de60: str, de38: str) -> None:
    msg = {
        "t": "0220",
        "3": "000000",
        "4": "000000000100",
        "7": "1125101010",
        "11": "000001",
        "25": "00",
        "32": "48880000",
        "41": TERMINAL,
        "42": MERCHANT,
        "2": "6212340000000000001",
        "38": de38,
        "60": de60,
    }
    try:
        parsed = h2h.parse(msg)
    except h2h.BadRequest as exc:
        assert exc.code in ("12", "30")
    else:
        assert parsed.request is not None and parsed.request.key.startswith("offline:")


def test_ledger_check_names_the_cards_owing_and_the_floor_limit_option(
    db_url: str, hsm_server: Any, tmp_path: Path
) -> None:
    from tests.host.helpers import cli_env, ok
    from tests.host.helpers import run as cli

    env = cli_env(tmp_path, db_url, hsm_server.env)
    ok(
        env,
        "product",
        "add",
        "OFFG",
        "--kind",
        "reloadable",
        "--bin",
        "621239",
        "--offline-floor-limit",
        "50.00",
    )
    ok(env, "product", "update", "OFFG", "--offline-floor-limit", "20.00")

    async def floor(conn: Any) -> int:
        return int(await conn.fetchval("SELECT offline_floor_limit FROM products WHERE code = 'OFFG'"))

    pans: list[str] = []

    async def body(h: Harness) -> None:
        assert await h.pool.run(floor) == 2_000
        pans.extend(
            await programme(h, "OFFH", bin_prefix="621240", cards=1, load=100, offline_floor_limit=2_000)
        )
        assert (await h.client.request(advice(h.client, pans[0], 1_350, "000601")))["39"] == "00"

    run(db_url, hsm_server, body)
    human = cli(env, "ledger", "check")
    assert human.exit_code == 0, human.output
    line = f"offline receivable: card {{}} {masked(pans[0])} owes 12.50 yuan"
    assert any(
        ln.startswith("offline receivable: card ") and ln.endswith(f"{masked(pans[0])} owes 12.50 yuan")
        for ln in human.output.splitlines()
    ), (line, human.output)
    assert "OK     offline_receivables" in human.output and pans[0] not in human.output
    data = ok(env, "ledger", "check")
    assert {(o["pan_masked"], o["owed"]) for o in data["offline_receivables"]} >= {(masked(pans[0]), 1_250)}


# -- the ledger's invariants under random sequences (the posting engine on a real PostgreSQL) ---------
_OPS = st.lists(
    st.tuples(
        st.sampled_from(["advice", "advice_again", "purchase", "topup", "refund"]),
        st.integers(min_value=1, max_value=6_000),
        st.integers(min_value=0, max_value=2),  # batch size of the step (1-3 requests, some repeated)
    ),
    min_size=1,
    max_size=12,
)
_SEQ = iter(range(10**6))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(ops=_OPS)
def test_offline_invariants_under_random_sequences(db_url: str, ops: list[tuple[str, int, int]]) -> None:
    """card balance >= 0, receivable >= 0 and what it owes = shortfalls - repayments, every transfer set
    sums to zero, each advice posted once, and a purchase is declined exactly while something is owed."""
    import asyncio

    import asyncpg

    from host.ledger import Ledger
    from tests.host.helpers import programme as db_programme
    from tests.host.helpers import req

    n = next(_SEQ)

    async def main() -> None:
        conn = await asyncpg.connect(db_url)
        try:
            code = f"OFFP{n}"
            (pan,) = await db_programme(conn, cards=1, code=code, max_balance=1_000_000)
            ledger = Ledger()
            sent: list[Any] = []
            balance, owed, posted = 0, 0, 0
            for op, amount, extra in ops:
                if op in ("advice", "advice_again"):
                    if op == "advice_again" and sent:
                        r = sent[-1]
                    else:
                        r = req(Txn.OFFLINE, pan, amount, mti="0220")
                        r.key = advice_key(MERCHANT, TERMINAL, f"{n % 10**6:06d}", r.stan)
                        r.offline_auth_id = "OFF001"
                        sent.append(r)
                    ds = await ledger.post_batch(conn, [r] * (1 + extra))
                    assert {d.code for d in ds} == {"00"}
                    if not ds[0].duplicate:
                        posted += 1
                        short = max(0, r.amount - balance)
                        owed += short
                        balance = balance + short - r.amount
                elif op == "topup":
                    ds = await ledger.post_batch(conn, [req(Txn.TOPUP, pan, amount)])
                    assert ds[0].code == "00"
                    repaid = min(owed, amount)
                    owed -= repaid
                    balance += amount - repaid
                elif op == "refund" and sent:
                    o = sent[0]
                    ds = await ledger.post_batch(conn, [req(Txn.REFUND, pan, 1, rrn=o.rrn, mti="0220")])
                    if ds[0].code == "00":
                        balance += 1
                else:
                    ds = await ledger.post_batch(conn, [req(Txn.PURCHASE, pan, amount)])
                    expect = "51" if owed or amount > balance else "00"
                    assert ds[0].code == expect, (ds[0], balance, owed)
                    if expect == "00":
                        balance -= amount
                row = await conn.fetchrow(
                    """SELECT a.credits_posted - a.debits_posted AS balance,
                              coalesce(r.debits_posted - r.credits_posted, 0) AS owed
                       FROM cards c JOIN accounts a ON a.id = c.account_id
                       LEFT JOIN accounts r ON r.id = c.offline_receivable_id
                       JOIN products p ON p.id = c.product_id WHERE p.code = $1""",
                    code,
                )
                assert (row["balance"], row["owed"]) == (balance, owed)
                assert balance >= 0 and owed >= 0
            failed = [x for x in await run_checks(conn) if not x.ok]
            assert not failed, failed
            count = await conn.fetchval(
                "SELECT count(*) FROM transfers t JOIN cards c ON c.id = t.card_id JOIN products p"
                " ON p.id = c.product_id WHERE p.code = $1 AND t.code = 'offline'",
                code,
            )
            assert count == posted
        finally:
            await conn.close()

    asyncio.run(main())
