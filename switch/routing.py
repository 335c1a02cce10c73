"""BIN-range routing: which upstream link serves a PAN.

A route is ``[bin_low, bin_high] -> link`` where both bounds have the same number of digits; a PAN
matches when its first ``len(bin_low)`` digits fall inside. When several routes match, the one with the
longest bounds wins, then the narrowest range, so an operator can carve a sub-range out of a wide one.
Routes with the same bounds to several links make one group (``links_for``): the switch spreads that
range's requests round-robin over the group's links that are up (host processes sharing one ledger).
The table is immutable: reloading builds a new one and swaps it in.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Route:
    bin_low: str
    bin_high: str
    link: str
    id: int = field(default=0, compare=False)  # switch_routes.id, for the operator's views

    def __post_init__(self) -> None:
        if not (self.bin_low.isdigit() and self.bin_high.isdigit()):
            raise ValueError(f"route {self.bin_low}-{self.bin_high}: bounds must be digits")
        if len(self.bin_low) != len(self.bin_high):
            raise ValueError(f"route {self.bin_low}-{self.bin_high}: bounds must have the same length")
        if self.bin_low > self.bin_high:
            raise ValueError(f"route {self.bin_low}-{self.bin_high}: low bound above high bound")

    def matches(self, pan: str) -> bool:
        prefix = pan[: len(self.bin_low)]
        return len(prefix) == len(self.bin_low) and self.bin_low <= prefix <= self.bin_high

    @property
    def width(self) -> int:
        return int(self.bin_high) - int(self.bin_low)

    def covers(self, other: Route) -> bool:
        """Every PAN ``other`` matches, this route matches too (it serves them once ``other`` is gone)."""
        n = len(self.bin_low)
        inside = self.bin_low <= other.bin_low[:n] and other.bin_high[:n] <= self.bin_high
        return n <= len(other.bin_low) and inside

    def overlaps(self, other: Route) -> bool:
        """Some PAN matches both routes (which one it takes: :meth:`RoutingTable.route`)."""
        n = min(len(self.bin_low), len(other.bin_low))
        return self.bin_low[:n] <= other.bin_high[:n] and other.bin_low[:n] <= self.bin_high[:n]


class RoutingTable:
    def __init__(self, routes: list[Route]) -> None:
        # Most specific first: longer prefixes, then narrower ranges. Tables are small (tens of rows)
        # and a linear scan of a few prefix comparisons is cheaper than anything cleverer here.
        self._routes = sorted(routes, key=lambda r: (-len(r.bin_low), r.width, r.bin_low))
        self._cache: dict[str, str | None] = {}
        self._groups: dict[str, tuple[str, ...]] = {}
        self._longest = max((len(r.bin_low) for r in routes), default=0)

    def __len__(self) -> int:
        return len(self._routes)

    @property
    def routes(self) -> list[Route]:
        return list(self._routes)

    def lookup(self, pan: str) -> str | None:
        """The link name for ``pan``, or None when no route covers it."""
        # Only the first `longest` digits can influence the answer, so they are the cache key.
        key = pan[: self._longest]
        try:
            return self._cache[key]
        except KeyError:
            pass
        route = self.route(pan)
        found = None if route is None else route.link
        if len(self._cache) < 100_000:
            self._cache[key] = found
        return found

    def links_for(self, pan: str) -> tuple[str, ...]:
        """Every link serving ``pan``'s route: the links of the routes with the same bounds as the one
        :meth:`lookup` takes (several host processes behind one BIN range: the switch spreads requests
        over them, switch.upstream), in route order; empty when no route covers it."""
        key = pan[: self._longest]
        try:
            return self._groups[key]
        except KeyError:
            pass
        route = self.route(pan)
        found: tuple[str, ...] = () if route is None else tuple(
            r.link for r in self._routes if r.bin_low == route.bin_low and r.bin_high == route.bin_high
        )
        if len(self._groups) < 100_000:
            self._groups[key] = found
        return found

    def siblings(self, link: str) -> tuple[str, ...]:
        """The other links of every route group ``link`` belongs to (routes with the same bounds), in
        route order: where a reversal advice for ``link`` may go while it is down (switch.saf)."""
        bounds = {(r.bin_low, r.bin_high) for r in self._routes if r.link == link}
        out: list[str] = []
        for r in self._routes:
            if (r.bin_low, r.bin_high) in bounds and r.link != link and r.link not in out:
                out.append(r.link)
        return tuple(out)

    def route(self, pan: str) -> Route | None:
        """The route ``pan`` takes (the rule of :meth:`lookup`, uncached), or None."""
        return next((route for route in self._routes if route.matches(pan)), None)

    def candidates(self, pan: str) -> list[Route]:
        """Every route that matches ``pan``, in the order the switch tries them (the first one wins)."""
        return [route for route in self._routes if route.matches(pan)]
