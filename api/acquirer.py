"""The API's H2H link to the switch (issue 17: money moves only through the authorization path).

Placeholder interface, built out by the payments work: ``SwitchLink.up``; ``await link.request(msg)``
returns the answer or raises ``LinkDown`` (nothing was sent) / ``LinkTimeout`` (sent, outcome unknown).
``run(state)`` is the background task that opens the link once its keys are set.
"""

from __future__ import annotations

from typing import Any


class LinkDown(Exception):
    """No signed-on connection to the switch: nothing was sent."""


class LinkTimeout(Exception):
    """Sent, and no answer came in time: the outcome is unknown."""


class SwitchLink:
    up: bool = False

    async def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        raise LinkDown("the API's link to the switch is not built yet")
