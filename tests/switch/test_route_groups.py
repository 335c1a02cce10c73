"""Routes with the same bounds to several links: one group the switch spreads requests over (issue 20)."""

from __future__ import annotations

from specs.codec import codec_for
from switch.links import LinkConfig, OutboundLink
from switch.routing import Route, RoutingTable
from switch.upstream import Upstream


def test_routes_with_the_same_bounds_form_a_group() -> None:
    """Several links on one BIN range: the switch spreads over them (switch.upstream.Upstream.route)."""
    table = RoutingTable([
        Route("621255", "621255", "host-a"),
        Route("621255", "621255", "host-b"),
        Route("62", "62", "wide"),
        Route("6212550", "6212559", "narrow"),
    ])
    assert table.links_for("6212551234567890123") == ("narrow",)
    assert table.links_for("6212540000000000000") == ("wide",)
    assert table.links_for("6212559999999999999") == ("narrow",)
    assert table.links_for("6212560000000000000") == ("wide",)
    only = RoutingTable([Route("621255", "621255", "host-a"), Route("621255", "621255", "host-b")])
    assert only.links_for("6212551234") == ("host-a", "host-b")
    assert only.lookup("6212551234") == "host-a"  # the first of the group, as before
    assert only.links_for("5") == ()


def test_upstream_spreads_over_the_links_that_are_up() -> None:
    """Round-robin over the group's links that are up; one down gets nothing new; none up: one of them
    (its request then fails as link down, 91, as with one link). The links are real OutboundLinks not
    connected; their ``up`` flag is what their connections set (switch.links._connection_changed)."""
    links = {
        name: OutboundLink(
            LinkConfig(name, "out", "127.0.0.1", 1, 1, "48880000", "3des", "Z" * 32, None),
            codec_for("h2h", "3des"), "48880000",
        )
        for name in ("host-a", "host-b", "host-c")
    }
    table = RoutingTable([Route("621255", "621255", name) for name in links])
    up = Upstream(links, table, None, acquirer_id="48880000", timeout=1.0)  # type: ignore[arg-type]
    pan = "6212551234567890123"
    assert up.route(pan) in links.values()  # none up: a link that is down (the request answers 91)
    for link in links.values():
        link.up = True
    picked = [up.route(pan) for _ in range(6)]
    assert {id(x) for x in picked} == {id(x) for x in links.values()}
    assert all(picked[i] is not picked[i + 1] for i in range(5))
    links["host-b"].up = False
    assert links["host-b"] not in [up.route(pan) for _ in range(6)]
    assert up.route("5999") is None


def test_a_reversal_advice_goes_over_another_link_of_its_group_while_its_own_is_down() -> None:
    """A host killed: the reversal advices queued for its link go over another up link of the same route
    group (hosts sharing one ledger: any of them can undo the original), never over an unrelated link;
    with none up they wait (switch.saf.SafQueue._deliverer)."""
    from switch.saf import SafQueue

    links = {
        name: OutboundLink(
            LinkConfig(name, "out", "127.0.0.1", 1, 1, "48880000", "3des", "Z" * 32, None),
            codec_for("h2h", "3des"), "48880000",
        )
        for name in ("host-a", "host-b", "other")
    }
    table = RoutingTable([Route("621255", "621255", "host-a"), Route("621255", "621255", "host-b"),
                          Route("621299", "621299", "other")])  # fmt: skip
    assert table.siblings("host-a") == ("host-b",) and table.siblings("other") == ()
    saf = SafQueue(None, links, retry_seconds=1.0, timeout=1.0)  # type: ignore[arg-type]
    saf.siblings = table.siblings
    assert saf._deliverer("host-a") is None  # nothing up: it waits
    links["other"].up = True
    assert saf._deliverer("host-a") is None  # not over a link of another range
    links["host-b"].up = True
    assert saf._deliverer("host-a") is links["host-b"]  # its own down, its group's other host up
    links["host-a"].up = True
    assert saf._deliverer("host-a") is links["host-a"]  # its own link first when up
